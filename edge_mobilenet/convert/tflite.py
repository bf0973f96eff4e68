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


def representative_dataset(inputs: np.ndarray):
    """TFLiteConverter's calibration feed: one float32 row at a time (batch 1)."""
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
        converter.representative_dataset = representative_dataset(calibration)
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
    from edge_mobilenet.quiet import native_noise_filtered

    started = time.perf_counter()
    converter = _converter(saved_model_dir, fmt, calibration, options)
    try:
        with native_noise_filtered():
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
