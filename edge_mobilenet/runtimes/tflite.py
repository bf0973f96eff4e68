"""LiteRT (ai-edge-litert) interpreters on the host: tensor specs, (de)quantization, batch runs."""

from __future__ import annotations

import numpy as np

from edge_mobilenet.contracts.records import TensorSpec


def tensor_spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantized = np.dtype(detail["dtype"]) in (np.int8, np.uint8, np.int16) and scale != 0
    return TensorSpec(detail["name"], tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).name,
                      float(scale) if quantized else None, int(zero_point) if quantized else None)


def make_interpreter(model_path_or_bytes, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    from edge_mobilenet.quiet import native_noise_filtered

    with native_noise_filtered():
        if isinstance(model_path_or_bytes, (bytes, bytearray)):
            interpreter = Interpreter(model_content=bytes(model_path_or_bytes), num_threads=threads)
        else:
            interpreter = Interpreter(model_path=str(model_path_or_bytes), num_threads=threads)
        interpreter.allocate_tensors()
    return interpreter


def io_specs(interpreter) -> tuple[TensorSpec, tuple[TensorSpec, ...]]:
    """(the input spec, every output's spec)."""
    return (tensor_spec(interpreter.get_input_details()[0]),
            tuple(tensor_spec(d) for d in interpreter.get_output_details()))


def quantize_input(batch: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float model inputs -> the artifact's input dtype (identity for float inputs)."""
    if spec.scale is None:
        return batch.astype(np.float32)
    info = np.iinfo(np.dtype(spec.dtype))
    q = np.round(batch / spec.scale + spec.zero_point)
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize_output(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.scale is None:
        return values.astype(np.float32)
    return (values.astype(np.float32) - spec.zero_point) * spec.scale


def run_tflite(interpreter, inputs: np.ndarray) -> np.ndarray:
    """Float inputs [N, ...] -> dequantized first outputs [N, ...], one invoke per row (batch 1)."""
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    in_spec, out_specs = io_specs(interpreter)
    outputs = []
    for row in inputs:
        interpreter.set_tensor(input_detail["index"], quantize_input(row[None], in_spec))
        interpreter.invoke()
        outputs.append(dequantize_output(interpreter.get_tensor(output_detail["index"]), out_specs[0])[0])
    return np.stack(outputs)


def tflite_invoker(model, threads: int = 1):
    """A zero-argument callable running one inference of ``model`` (bytes or path) on zeros."""
    interpreter = make_interpreter(model, threads)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    return interpreter.invoke
