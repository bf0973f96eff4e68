"""ONNX Runtime sessions on the host: loading, tensor specs, batch runs (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_mobilenet.contracts.records import TensorSpec
from edge_mobilenet.errors import EdgeError


def error_line(error: Exception) -> str:
    """The first line of an exception's message (ORT and protobuf messages run to pages)."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def make_session(path: str | Path | bytes, threads: int = 1, source: str | None = None):
    """An ONNX Runtime CPU session on a file or serialized model; with several threads, workers sleep
    instead of spinning. ``source`` names the model in errors (default: the path)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if threads > 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = path if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
        name = source or (path if not isinstance(path, bytes) else "ONNX model")
        raise EdgeError(f"{name}: ONNX Runtime can't load it: {error_line(error)}") from None


def run_onnx(model, inputs: np.ndarray, threads: int = 1) -> np.ndarray:
    """Float inputs [N, H, W, C] -> outputs [N, ...] of a session, path or serialized model, run in
    chunks of the model's fixed batch."""
    session = model if hasattr(model, "run") else make_session(model, threads)
    feed = session.get_inputs()[0]
    batch = feed.shape[0] if isinstance(feed.shape[0], int) else len(inputs)
    if len(inputs) % batch:
        raise EdgeError(f"{len(inputs)} inputs is not a multiple of the model's batch {batch}")
    chunks = [session.run(None, {feed.name: inputs[i:i + batch].astype(np.float32)})[0]
              for i in range(0, len(inputs), batch)]
    return np.concatenate(chunks)


def onnx_invoker(model, threads: int = 1):
    """A zero-argument callable running one inference of ``model`` (bytes or path) on zeros."""
    session = make_session(model, threads)
    feed = session.get_inputs()[0]
    batch = np.zeros([d if isinstance(d, int) else 1 for d in feed.shape], np.float32)
    return lambda: session.run(None, {feed.name: batch})


def load_onnx(path: str | Path):
    """The ONNX model at ``path``; a missing or non-ONNX file is an EdgeError."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf DecodeError and friends
        raise EdgeError(f"{path}: not an ONNX model ({error_line(error)})") from None
    if not model.graph.node:
        raise EdgeError(f"{path}: not an ONNX model (no graph nodes)")
    return model


def value_spec(value) -> TensorSpec:
    import onnx.helper

    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    return TensorSpec(value.name, dims, dtype)


def opset_of(model) -> int:
    """The default-domain (ai.onnx) opset the model imports."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


def onnx_io_spec(path: str | Path) -> dict:
    """``{"input": TensorSpec, "outputs": (TensorSpec, ...), "opset", "ir_version"}``.

    QDQ models quantize inside the graph, so their I/O stays float32 with no scale/zero point.
    """
    model = load_onnx(path)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) < 1:
        raise EdgeError(f"{path}: expected one image input, found {len(inputs)} inputs")
    return {"input": value_spec(inputs[0]), "outputs": tuple(value_spec(o) for o in model.graph.output),
            "opset": opset_of(model), "ir_version": int(model.ir_version)}


def checked_images(inputs, shape, batch: int, source, purpose: str) -> np.ndarray:
    """``inputs`` as a contiguous float32 N x H x W x C batch that fits a model taking ``shape`` in
    chunks of ``batch``; one line naming ``purpose`` ("calibration", "the error report") otherwise."""
    if not isinstance(inputs, np.ndarray) or inputs.ndim != 4 or len(inputs) == 0:
        raise EdgeError(f"{purpose} needs a non-empty N x H x W x C float array; "
                        f"received shape {getattr(inputs, 'shape', None)}")
    expected = list(shape[1:])
    if list(inputs.shape[1:]) != expected:
        raise EdgeError(f"{source}: {purpose} images are {list(inputs.shape[1:])} but the model takes {expected}")
    if len(inputs) % batch:
        raise EdgeError(f"{len(inputs)} {purpose} images is not a multiple of the model's batch {batch}")
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if not np.all(np.isfinite(inputs)):
        raise EdgeError(f"{purpose} images contain NaN or infinite values")
    return inputs
