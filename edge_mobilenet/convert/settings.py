"""What ``quantize`` is asked to do, parsed once at the edge into validated frozen dataclasses.

Defaults live here only. A recipe (``recipe.py``) and command-line flags both become overrides merged
by :func:`merge`; everything downstream takes a ``QuantizeSettings`` whose values are already checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from edge_mobilenet.contracts.formats import DEFAULT_FORMATS, FORMATS, Format, parse_formats
from edge_mobilenet.data.calibration import CalibrationSource
from edge_mobilenet.errors import EdgeError

IO_TYPES = ("int8", "uint8", "float")
ONNX_ACTIVATION_TYPES = ("uint8", "int8")
ONNX_CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Detectors: the four post-processed outputs (boxes, classes, scores, count) or the raw box encodings and
# class scores for users who decode and run NMS themselves.
DETECTION_OUTPUTS = ("postprocessed", "raw")
# Post-training methods beyond min/max (convert/quant/ptq.py): "auto" tries them on held-out calibration
# images and keeps what lowers the int8 error; "none" is plain min/max; or name the ones to apply.
PTQ_METHODS = ("equalization", "bias-correction", "adaround", "ranges-percentile", "ranges-mse")
PTQ_MODES = ("auto", "none")
# Methods that change the float model's kernels and biases (the rest only choose activation ranges).
MODEL_PTQ_METHODS = ("equalization", "bias-correction", "adaround")
DEFAULT_CALIBRATION = "calibration_data/digits"
_BUNDLED_CALIBRATION = Path(__file__).resolve().parents[2] / DEFAULT_CALIBRATION


def default_calibration() -> str:
    """The bundled digits set: relative to the working folder (as recorded so far), else the checkout's."""
    return DEFAULT_CALIBRATION if Path(DEFAULT_CALIBRATION).is_dir() or not _BUNDLED_CALIBRATION.is_dir() \
        else str(_BUNDLED_CALIBRATION)
DEFAULT_OUTPUT = "build/artifacts"


@dataclass(frozen=True)
class AccuracyTarget:
    """``99%`` of float top-1 (relative) or ``0.5pt`` below it (points); ``text`` is canonical, so
    "99%" and "99.0%" are one target (one cache key)."""

    text: str
    relative: float | None = None
    points: float | None = None

    def threshold(self, float_top1: float) -> float:
        if self.relative is not None:
            return float_top1 * self.relative
        return float_top1 - self.points / 100.0


def parse_target(text: str) -> AccuracyTarget:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%|pt|points?)\s*", text or "")
    if not match:
        raise EdgeError(f"target accuracy must look like 99% (of float top-1) or 0.5pt (points below "
                        f"float). Received {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        if not 0 < value <= 100:
            raise EdgeError(f"target accuracy must be in (0%, 100%]. Received {text!r}")
        return AccuracyTarget(f"{value:g}%", relative=value / 100.0)
    return AccuracyTarget(f"{value:g}pt", points=value)


def _one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise EdgeError(f"{name} must be one of {', '.join(allowed)}; received {value!r}")


@dataclass(frozen=True)
class QuantizeSettings:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    calibration: CalibrationSource = field(default_factory=lambda: CalibrationSource(default_calibration()))
    output_dir: str = DEFAULT_OUTPUT
    io: str = "int8"
    eval_dir: str | None = None
    eval_count: int = 500
    onnx_activation_type: str = "uint8"
    onnx_calibration_method: str = "minmax"
    target_accuracy: AccuracyTarget | None = None  # accuracy-aware int8
    latency_profile: str | None = None  # profile.json of `edge-bench profile`: rank layers by error per ms
    rewrite_hard_swish: bool = True  # express hard-swish with ops XNNPACK's int8 kernels take
    ptq: tuple[str, ...] = ("auto",)  # post-training methods: ("auto",), ("none",) or PTQ_METHODS members
    detection_outputs: str = "postprocessed"  # detectors only: DETECTION_OUTPUTS
    progress: bool = True

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise EdgeError(f"unknown format {unknown[0] if unknown else ''!r}; choose from: {', '.join(FORMATS)}")
        _one_of("io", self.io, IO_TYPES)
        _one_of("onnx_activation_type", self.onnx_activation_type, ONNX_ACTIVATION_TYPES)
        _one_of("onnx_calibration_method", self.onnx_calibration_method, ONNX_CALIBRATION_METHODS)
        _one_of("detection_outputs", self.detection_outputs, DETECTION_OUTPUTS)
        if self.eval_count < 1:
            raise EdgeError(f"--eval-count must be >= 1; received {self.eval_count}")
        if self.calibration.count < 1:
            raise EdgeError(f"--count (calibration images) must be >= 1; received {self.calibration.count}")
        if self.calibration.seed < 0:
            raise EdgeError(f"--seed must be >= 0; received {self.calibration.seed}")
        _check_ptq(self.ptq)
        changing = [m for m in self.ptq if m in MODEL_PTQ_METHODS]
        if changing and self.target_accuracy is not None:
            raise EdgeError(f"--ptq {','.join(changing)} changes the float model's weights; --target-accuracy "
                            "keeps layers in float as the float model has them: use range methods or auto")
        if self.latency_profile is not None:
            if self.target_accuracy is None:
                raise EdgeError("--latency-profile ranks the layers of the accuracy-aware search: give "
                                "--target-accuracy too")
            if not Path(self.latency_profile).is_file():
                raise EdgeError(f"--latency-profile {self.latency_profile}: no such file (write one with "
                                "`edge-bench profile INT8 FLOAT --device NAME`)")
            from edge_mobilenet.runtimes.profiling import read_profiles

            read_profiles(self.latency_profile)  # a bad file is one line before any model loads

    def options_for(self, fmt: Format) -> dict:
        """The settings ``fmt``'s bytes depend on (the format table names them), JSON-ready."""
        values = {name: getattr(self, name) for name in fmt.options}
        if values.get("target_accuracy") is not None:
            values["target_accuracy"] = values["target_accuracy"].text
        if values.get("latency_profile") is not None:  # its content, not its path, decides the bytes
            from edge_mobilenet.fileio import sha256_file

            values["latency_profile"] = sha256_file(values["latency_profile"])
        return values


def parse_ptq(text: str) -> tuple[str, ...]:
    """``"auto"``, ``"none"`` or methods (``"bias-correction,adaround"``) -> a checked tuple."""
    names = tuple(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    _check_ptq(names)
    return names


def _check_ptq(names: tuple[str, ...]) -> None:
    allowed = PTQ_MODES + PTQ_METHODS
    unknown = [n for n in names if n not in allowed]
    if not names or unknown:
        raise EdgeError(f"ptq {unknown[0] if unknown else ''!r} is not a post-training method; choose auto, "
                        f"none, or one or more of {', '.join(PTQ_METHODS)} (comma-separated)")
    if len(names) > 1 and set(names) & set(PTQ_MODES):
        raise EdgeError(f"ptq {','.join(names)!r}: auto and none stand alone; list methods without them")


# Override keys that are not QuantizeSettings fields: they set the calibration source's parts.
CALIBRATION_KEYS = {"calibration": "folder", "count": "count", "seed": "seed", "skip_corrupt": "skip_corrupt"}


def merge(base: QuantizeSettings, overrides: dict) -> QuantizeSettings:
    """``base`` with every override that is not None applied (flags over recipe over defaults).

    ``formats`` may be text (``"fp32,int8"``), ``target_accuracy`` text (``"99%"``); the calibration
    source's ``calibration``/``count``/``seed``/``skip_corrupt`` are given flat.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    source = replace(base.calibration, **{CALIBRATION_KEYS[k]: given.pop(k) for k in list(given)
                                          if k in CALIBRATION_KEYS})
    if isinstance(given.get("formats"), str):
        given["formats"] = tuple(f.name for f in parse_formats(given["formats"]))
    if isinstance(given.get("ptq"), str):
        given["ptq"] = parse_ptq(given["ptq"])
    if isinstance(given.get("target_accuracy"), str):
        given["target_accuracy"] = parse_target(given["target_accuracy"])
    return replace(base, calibration=source, **given)
