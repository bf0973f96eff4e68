"""MobileNet V1/V2/V3 builders, registry and cost profile."""

from edge_mobilenet.models.registry import (REGISTRY, build_model, get_entry, make_config,
                                            model_names)

__all__ = ["REGISTRY", "build_model", "get_entry", "make_config", "model_names"]
