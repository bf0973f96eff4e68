"""One way to run any artifact on the host: ``artifact_specs`` reads its I/O, ``run_artifact`` runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_mobilenet.contracts.records import TensorSpec
from edge_mobilenet.errors import EdgeError


def artifact_specs(path: str | Path) -> tuple[TensorSpec, tuple[TensorSpec, ...]]:
    """(input spec, output specs) of a .tflite or .onnx file; an unloadable file is an EdgeError."""
    path = Path(path)
    if path.suffix == ".onnx":
        from edge_mobilenet.runtimes.onnx import onnx_io_spec

        spec = onnx_io_spec(path)
        return spec["input"], spec["outputs"]
    from edge_mobilenet.runtimes.tflite import io_specs, make_interpreter

    try:
        return io_specs(make_interpreter(path))
    except (ValueError, RuntimeError) as error:
        raise EdgeError(f"{path}: not a loadable TFLite model ({str(error).splitlines()[0][:120]})") from None


def run_artifact(model, runtime: str, inputs: np.ndarray) -> np.ndarray:
    """Float inputs -> dequantized first outputs [N, ...] of a model (path or bytes) on ``runtime``."""
    if runtime == "onnx":
        from edge_mobilenet.runtimes.onnx import run_onnx

        return run_onnx(model, inputs)
    from edge_mobilenet.runtimes.tflite import make_interpreter, run_tflite

    return run_tflite(make_interpreter(model), inputs)
