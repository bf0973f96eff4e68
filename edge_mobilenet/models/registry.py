"""Registered model names: each maps to a family table, its defaults and its input preprocessing."""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.models import detection
from edge_mobilenet.models.builder import HARD_SWISH_FORMS, BuildConfig, build
from edge_mobilenet.models.detection import SSDLITE_SPECS, DetectorConfig, SSDLiteSpec
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

    @property
    def task(self) -> str:
        return "classification"


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




@dataclass(frozen=True)
class DetectorEntry:
    """A registered detector: its SSDLite spec, default width, input size and object classes (the
    background not counted), preprocessing as its backbone's."""

    name: str
    spec: SSDLiteSpec
    alpha: float
    size: int
    classes: int
    summary: str

    @property
    def preprocessing(self) -> str:
        return FAMILIES[self.spec.backbone].preprocessing

    @property
    def task(self) -> str:
        return "detection"


# Detectors live apart from REGISTRY (classification models), whose users build classifiers by name.
# Defaults: the papers' COCO setting, 320x320 and 90 classes (+ background).
DETECTORS: dict[str, DetectorEntry] = {
    "ssdlite_mobilenet_v2": DetectorEntry("ssdlite_mobilenet_v2", SSDLITE_SPECS["mobilenet_v2"], 1.0, 320,
                                          90, "SSDLite on MobileNetV2, V2 paper Table 6"),
    "ssdlite_mobilenet_v3_large": DetectorEntry(
        "ssdlite_mobilenet_v3_large", SSDLITE_SPECS["mobilenet_v3_large"], 1.0, 320, 90,
        "SSDLite on MobileNetV3-Large, V3 paper Table 6"),
    "ssdlite_mobilenet_v3_small": DetectorEntry(
        "ssdlite_mobilenet_v3_small", SSDLITE_SPECS["mobilenet_v3_small"], 1.0, 320, 90,
        "SSDLite on MobileNetV3-Small, V3 paper Table 6"),
    "ssdlite_mobilenet_v1": DetectorEntry("ssdlite_mobilenet_v1", SSDLITE_SPECS["mobilenet_v1"], 1.0, 320,
                                          90, "SSDLite on MobileNetV1, V2 paper Table 6"),
}


def model_names() -> list[str]:
    """Registered classification models (detectors: :func:`detector_names`)."""
    return list(REGISTRY)


def detector_names() -> list[str]:
    return list(DETECTORS)


def get_entry(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        if name in DETECTORS:
            raise EdgeError(f"{name} is a detection model; this needs a classification model: "
                            f"{', '.join(REGISTRY)}") from None
        raise EdgeError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def get_detector(name: str) -> DetectorEntry:
    try:
        return DETECTORS[name]
    except KeyError:
        raise EdgeError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTORS)}") from None


def _checked_size(name: str, alpha, size, spec: FamilySpec) -> tuple[int, int]:
    """Alpha and input size, refused with the value received; returns (height, width)."""
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise EdgeError(f"{name}: alpha must be a positive number. Received alpha={alpha}")
    if alpha > 4:
        raise EdgeError(f"{name}: alpha above 4 is not supported. Received alpha={alpha}")
    if spec.family == "v1" and int(spec.stem_filters * alpha) < 1:
        raise EdgeError(f"{name}: alpha is too small for a channel to remain. Received alpha={alpha}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not all(isinstance(v, int) and v >= MIN_SIZE for v in (height, width)):
        raise EdgeError(f"{name}: input size must be an integer of at least {MIN_SIZE} pixels. "
                        f"Received size={size}")
    return height, width


def _check_options(name: str, classes, bn_momentum, hard_swish) -> None:
    if not isinstance(classes, int) or classes < 1:
        raise EdgeError(f"{name}: classes must be an integer >= 1. Received classes={classes}")
    if bn_momentum is not None and not 0 < bn_momentum < 1:
        raise EdgeError(f"{name}: bn_momentum must be in (0, 1). Received bn_momentum={bn_momentum}")
    if hard_swish not in HARD_SWISH_FORMS:
        raise EdgeError(f"{name}: hard_swish must be one of {', '.join(HARD_SWISH_FORMS)}. "
                        f"Received hard_swish={hard_swish}")


def make_config(name: str, *, alpha: float = 1.0, size: int | tuple[int, int] = 224,
                classes: int = 1000, include_top: bool = True, pooling: str | None = None,
                dropout: float | None = None, depth_multiplier: int = 1,
                bn_momentum: float | None = None, include_preprocessing: bool = True,
                classifier_activation: str | None = "softmax",
                hard_swish: str = "fused") -> BuildConfig:
    """Validate arguments for model ``name``; every error names the value it refuses."""
    entry = get_entry(name)
    height, width = _checked_size(name, alpha, size, entry.spec)
    _check_options(name, classes, bn_momentum, hard_swish)
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


def make_detector_config(name: str, *, alpha: float | None = None, size: int | tuple[int, int] | None = None,
                         classes: int | None = None, reduced_tail: bool = False, stride8_map: bool = False,
                         bn_momentum: float | None = None, include_preprocessing: bool = True,
                         hard_swish: str = "fused") -> DetectorConfig:
    """Validate arguments for detector ``name`` (None: the entry's default); errors name the value."""
    entry = get_detector(name)
    alpha = entry.alpha if alpha is None else alpha
    size = entry.size if size is None else size
    classes = entry.classes if classes is None else classes
    height, width = _checked_size(name, alpha, size, FAMILIES[entry.spec.backbone])
    _check_options(name, classes, bn_momentum, hard_swish)
    if reduced_tail and entry.spec.reduced_tail_block is None:
        raise EdgeError(f"{name}: the reduced tail is defined for MobileNetV3 backbones only. "
                        f"Received reduced_tail={reduced_tail}")
    backbone = BuildConfig(alpha=float(alpha), size=(height, width), include_top=False,
                           bn_momentum=None if bn_momentum is None else float(bn_momentum),
                           include_preprocessing=include_preprocessing, hard_swish=hard_swish,
                           name=entry.spec.backbone)
    suffix = ("_reduced" if reduced_tail else "") + ("_s8" if stride8_map else "")
    return DetectorConfig(backbone=backbone, classes=classes, reduced_tail=bool(reduced_tail),
                          stride8_map=bool(stride8_map), name=f"{name}{suffix}_{alpha:g}_{height}")


def build_detector(name: str, *, backbone_weights=None, **options):
    """Build registered detector ``name``; options as in :func:`make_detector_config`.

    ``backbone_weights``: a classification model file of the same family and alpha whose layers'
    weights are copied by name into the backbone.
    """
    config = make_detector_config(name, **options)
    return detection.build_detector(get_detector(name).spec, config, backbone_weights)
