"""Keras -> TFLite: float32, float16, dynamic-range and full-integer int8.

Conversion goes through a SavedModel with the batch fixed (1 by default: tflite-runtime 2.14 skips
XNNPACK on a dynamic batch), then ``TFLiteConverter.from_saved_model``; from_concrete_functions
silently yields NaN models with Keras 3.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import numpy as np

from edge_mobilenet.errors import EdgeError

IO_TYPES = ("int8", "uint8", "float")


@dataclass(frozen=True)
class TFLiteOptions:
    """How to convert: ``io`` is the int8 model's input/output type; the rest are converter switches."""

    io: str = "int8"
    batch: int = 1
    # Keeps dense layers per-tensor in dynamic-range models: FULLY_CONNECTED stays at version 9,
    # which tflite-runtime 2.14 (max 10) loads; TF 2.21 otherwise emits version 12.
    dynamic_per_tensor_dense: bool = True


def export_saved_model(model, folder: str, batch: int = 1) -> None:
    import keras

    shape = (batch, *model.input.shape[1:])
    model.export(folder, format="tf_saved_model", verbose=False,
                 input_signature=[keras.InputSpec(shape=shape, dtype="float32")])


def _representative(inputs: np.ndarray):
    def generate():
        for row in inputs:
            yield [row[None].astype(np.float32)]
    return generate


def _converter(saved_model_dir: str, fmt: str, calibration: np.ndarray | None, options: TFLiteOptions):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "fp32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "dynamic":
        if options.dynamic_per_tensor_dense and hasattr(
                converter, "_experimental_disable_per_channel_quantization_for_dense_layers"):
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    elif fmt == "int8":
        if calibration is None or len(calibration) == 0:
            raise EdgeError("int8 conversion needs calibration images")
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_dtype = {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}[options.io]
        converter.inference_input_type = io_dtype
        converter.inference_output_type = io_dtype
    else:
        raise EdgeError(f"not a TFLite format: {fmt}")
    return converter


def convert_tflite(saved_model_dir: str, fmt: str, calibration: np.ndarray | None = None,
                   options: TFLiteOptions = TFLiteOptions()) -> tuple[bytes, float]:
    """Convert one format; returns (flatbuffer bytes, seconds)."""
    started = time.perf_counter()
    converter = _converter(saved_model_dir, fmt, calibration, options)
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # the converter raises many types with long messages
        raise EdgeError(f"TFLite conversion to {fmt} failed: {str(error).splitlines()[0][:200]}") from None
    return flatbuffer, time.perf_counter() - started


def convert_keras(model, formats: list[str], calibration: np.ndarray | None,
                  options: TFLiteOptions = TFLiteOptions()) -> dict[str, tuple[bytes, float]]:
    """Export once, convert to each TFLite format."""
    with tempfile.TemporaryDirectory(prefix="edge-savedmodel-") as folder:
        export_saved_model(model, folder, options.batch)
        return {fmt: convert_tflite(folder, fmt, calibration, options) for fmt in formats}


def _tensor_spec(detail: dict) -> dict:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantized = np.dtype(detail["dtype"]) in (np.int8, np.uint8, np.int16) and scale != 0
    return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale) if quantized else None,
            "zero_point": int(zero_point) if quantized else None}


def make_interpreter(model_path_or_bytes, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model_path_or_bytes, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(model_path_or_bytes), num_threads=threads)
    else:
        interpreter = Interpreter(model_path=str(model_path_or_bytes), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def io_spec(interpreter) -> tuple[dict, dict]:
    return (_tensor_spec(interpreter.get_input_details()[0]),
            _tensor_spec(interpreter.get_output_details()[0]))


def quantize_input(batch: np.ndarray, spec: dict) -> np.ndarray:
    """Float model inputs -> the artifact's input dtype (identity for float inputs)."""
    if spec["scale"] is None:
        return batch.astype(np.float32)
    info = np.iinfo(np.dtype(spec["dtype"]))
    q = np.round(batch / spec["scale"] + spec["zero_point"])
    return np.clip(q, info.min, info.max).astype(spec["dtype"])


def dequantize_output(values: np.ndarray, spec: dict) -> np.ndarray:
    if spec["scale"] is None:
        return values.astype(np.float32)
    return (values.astype(np.float32) - spec["zero_point"]) * spec["scale"]


def run_tflite(interpreter, inputs: np.ndarray) -> np.ndarray:
    """Float inputs [N, ...] -> dequantized outputs [N, classes], one invoke per row (batch 1)."""
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    in_spec, out_spec = io_spec(interpreter)
    outputs = []
    for row in inputs:
        interpreter.set_tensor(input_detail["index"], quantize_input(row[None], in_spec))
        interpreter.invoke()
        outputs.append(dequantize_output(interpreter.get_tensor(output_detail["index"]), out_spec)[0])
    return np.stack(outputs)
