"""The one table of deployable formats: it drives CLI choices, the converters, cache keys, the benchmark
loop, reports, plots and CI. A new format is one row here plus its converter in ``convert/build.py``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    """A deployable artifact kind.

    Attributes:
        name: the CLI name (``--formats int8,onnx``).
        suffix: file name ending, e.g. ``.int8.tflite``.
        runtime: ``tflite`` (ai-edge-litert / tflite-runtime) or ``onnx`` (onnxruntime).
        quantized: whether weights are stored below 32 bits.
        calibrated: whether conversion needs calibration images.
        baseline: the float format this one is compared against in reports.
        description: one line for ``--help`` and reports.
        integer: whether the graph computes in integers (takes the int8-friendly hard-swish graph,
            accuracy-aware search applies).
        options: the ``QuantizeSettings`` fields the artifact's bytes depend on (its cache key).
        colour: its colour in plots.
        builder: the converter that makes it (``convert.builders.BUILDERS``).
    """

    name: str
    suffix: str
    runtime: str
    quantized: bool
    calibrated: bool
    baseline: str
    description: str
    integer: bool = False
    options: tuple[str, ...] = ()
    colour: str = "tab:gray"
    builder: str = "tflite"

    @property
    def is_baseline(self) -> bool:
        return self.name == self.baseline


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("fp32", ".fp32.tflite", "tflite", False, False, "fp32", "TFLite float32", colour="tab:blue"),
    Format("fp16", ".fp16.tflite", "tflite", True, False, "fp32",
           "TFLite float16 weights (dequantized to float32 at load on CPU)", colour="tab:cyan"),
    Format("dynamic", ".dynamic.tflite", "tflite", True, False, "fp32",
           "TFLite dynamic-range: int8 weights, float activations", colour="tab:purple"),
    Format("int8", ".int8.tflite", "tflite", True, True, "fp32",
           "TFLite full-integer int8 (per-channel weights, calibrated activations)", integer=True,
           options=("io", "ptq", "target_accuracy", "latency_profile"), colour="tab:red"),
    Format("onnx", ".onnx", "onnx", False, False, "onnx", "ONNX float32 (tf2onnx)", colour="tab:green",
           builder="onnx-export"),
    Format("onnx-int8", ".int8.onnx", "onnx", True, True, "onnx",
           "ONNX int8 QDQ (ONNX Runtime static quantization, per-channel)", integer=True,
           options=("onnx_activation_type", "onnx_calibration_method", "ptq", "target_accuracy",
                    "latency_profile"),
           colour="tab:orange", builder="onnx-qdq"),
)}

DEFAULT_FORMATS = tuple(FORMATS)


def parse_formats(text: str) -> tuple[Format, ...]:
    """``"fp32,int8"`` -> formats; an unknown name is an EdgeError listing the known ones."""
    from edge_mobilenet.errors import EdgeError

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise EdgeError("no format given; choose from: " + ", ".join(FORMATS))
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise EdgeError(f"unknown format {unknown[0]!r}; choose from: {', '.join(FORMATS)}")
    return tuple(FORMATS[n] for n in dict.fromkeys(names))


def format_of_file(path: str) -> Format | None:
    """The format whose suffix ``path`` ends with (longest suffix wins)."""
    matches = [f for f in FORMATS.values() if str(path).endswith(f.suffix)]
    return max(matches, key=lambda f: len(f.suffix)) if matches else None
