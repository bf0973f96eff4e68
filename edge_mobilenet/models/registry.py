"""Registered model names: each maps to a family table, its defaults and its input preprocessing."""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.models.builder import HARD_SWISH_FORMS, BuildConfig, build
from edge_mobilenet.models.specs import FAMILIES, FamilySpec, minimalistic

MIN_SIZE = 32


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its architecture, default dropout and input preprocessing."""

    name: str
    spec: FamilySpec
    default_dropout: float
    summary: str

    @property
    def preprocessing(self) -> str:
        return self.spec.preprocessing


REGISTRY: dict[str, ModelEntry] = {
    "mobilenet_v1": ModelEntry("mobilenet_v1", FAMILIES["mobilenet_v1"], 1e-3,
                               "MobileNetV1: depthwise separable convolutions"),
    "mobilenet_v2": ModelEntry("mobilenet_v2", FAMILIES["mobilenet_v2"], 0.0,
                               "MobileNetV2: inverted residuals, linear bottlenecks"),
    "mobilenet_v3_small": ModelEntry("mobilenet_v3_small", FAMILIES["mobilenet_v3_small"], 0.2,
                                     "MobileNetV3-Small: SE + hard-swish"),
    "mobilenet_v3_large": ModelEntry("mobilenet_v3_large", FAMILIES["mobilenet_v3_large"], 0.2,
                                     "MobileNetV3-Large: SE + hard-swish"),
    "mobilenet_v3_small_minimalistic": ModelEntry(
        "mobilenet_v3_small_minimalistic", minimalistic(FAMILIES["mobilenet_v3_small"]), 0.2,
        "MobileNetV3-Small without SE, hard-swish or 5x5 kernels"),
    "mobilenet_v3_large_minimalistic": ModelEntry(
        "mobilenet_v3_large_minimalistic", minimalistic(FAMILIES["mobilenet_v3_large"]), 0.2,
        "MobileNetV3-Large without SE, hard-swish or 5x5 kernels"),
}


def model_names() -> list[str]:
    return list(REGISTRY)


def get_entry(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise EdgeError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def make_config(name: str, *, alpha: float = 1.0, size: int | tuple[int, int] = 224,
                classes: int = 1000, include_top: bool = True, pooling: str | None = None,
                dropout: float | None = None, depth_multiplier: int = 1,
                bn_momentum: float | None = None, include_preprocessing: bool = True,
                classifier_activation: str | None = "softmax",
                hard_swish: str = "fused") -> BuildConfig:
    """Validate arguments for model ``name``; every error names the value it refuses."""
    entry = get_entry(name)
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise EdgeError(f"{name}: alpha must be a positive number. Received alpha={alpha}")
    if alpha > 4:
        raise EdgeError(f"{name}: alpha above 4 is not supported. Received alpha={alpha}")
    if entry.spec.family == "v1" and int(entry.spec.stem_filters * alpha) < 1:
        raise EdgeError(f"{name}: alpha is too small for a channel to remain. Received alpha={alpha}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not all(isinstance(v, int) and v >= MIN_SIZE for v in (height, width)):
        raise EdgeError(f"{name}: input size must be an integer of at least {MIN_SIZE} pixels. "
                        f"Received size={size}")
    if not isinstance(classes, int) or classes < 1:
        raise EdgeError(f"{name}: classes must be an integer >= 1. Received classes={classes}")
    if pooling not in (None, "avg", "max"):
        raise EdgeError(f"{name}: pooling must be avg, max or none. Received pooling={pooling}")
    dropout = entry.default_dropout if dropout is None else dropout
    if not 0 <= dropout < 1:
        raise EdgeError(f"{name}: dropout must be in [0, 1). Received dropout={dropout}")
    if depth_multiplier != 1 and entry.spec.family != "v1":
        raise EdgeError(f"{name}: depth_multiplier applies to mobilenet_v1 only. "
                        f"Received depth_multiplier={depth_multiplier}")
    if not isinstance(depth_multiplier, int) or depth_multiplier < 1:
        raise EdgeError(f"{name}: depth_multiplier must be an integer >= 1. "
                        f"Received depth_multiplier={depth_multiplier}")
    if bn_momentum is not None and not 0 < bn_momentum < 1:
        raise EdgeError(f"{name}: bn_momentum must be in (0, 1). Received bn_momentum={bn_momentum}")
    if hard_swish not in HARD_SWISH_FORMS:
        raise EdgeError(f"{name}: hard_swish must be one of {', '.join(HARD_SWISH_FORMS)}. "
                        f"Received hard_swish={hard_swish}")
    alpha_text = f"{alpha:g}"
    return BuildConfig(alpha=float(alpha), size=(height, width), classes=classes,
                       include_top=include_top, pooling=pooling, dropout=float(dropout),
                       depth_multiplier=depth_multiplier,
                       bn_momentum=None if bn_momentum is None else float(bn_momentum),
                       include_preprocessing=include_preprocessing,
                       classifier_activation=classifier_activation, hard_swish=hard_swish,
                       name=f"{name}_{alpha_text}_{height}")


def build_model(name: str, **options):
    """Build registered model ``name``; options as in :func:`make_config`."""
    config = make_config(name, **options)
    return build(get_entry(name).spec, config)
