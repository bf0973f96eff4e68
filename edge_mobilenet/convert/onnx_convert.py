"""Keras -> ONNX float32 (tf2onnx) and ONNX Runtime static int8 quantization (QDQ).

The float model is exported with the batch fixed (1 by default) and the input named ``input``.
Quantization runs ``quant_pre_process`` (shape inference + graph optimisation) first, then
``quantize_static`` in QDQ format with per-channel int8 weights, calibrated on already
preprocessed float32 images (N x H x W x 3). QDQ models keep float32 inputs and outputs.

Default activation type, measured on this x86 machine (Xeon with AVX-512 VNNI, 2 cores, ORT 1.31,
224x224, batch 1, random weights, 1 thread, median ms; fp32 / U8S8 / S8S8): MobileNetV1 11.6 / 4.2 /
4.2, V2 7.6 / 3.5 / 5.8, V3-Small 2.7 / 2.4 / 6.8, V3-Large 7.4 / 5.2 / 14.1. With uint8 activations
and int8 weights (U8S8) every convolution becomes a QLinearConv; with int8 activations (S8S8) the x86
CPU provider leaves 15 of 52 V2 convolutions, 25 of 54 V3-Small and 33 of 64 V3-Large ones as
DequantizeLinear -> float Conv -> QuantizeLinear, so U8S8 is the default. On x86 without VNNI, U8S8
can saturate: use ``reduce_range=True`` there. Two threads on this shared 2-core machine were no
faster than one.

Only ``onnx`` and ``onnxruntime`` are needed to quantize, check and run; ``tf2onnx`` (and
TensorFlow) only to convert.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import atomic_path

INPUT_NAME = "input"
ACTIVATION_TYPES = ("uint8", "int8")
WEIGHT_TYPES = ("int8", "uint8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")

DEFAULT_ACTIVATION_REASON = (
    "uint8 activations (U8S8): ONNX Runtime's x86 CPU provider fuses every QDQ convolution into "
    "QLinearConv and beats float (V2 224: 3.5 vs 7.6 ms); with int8 activations (S8S8) it leaves many "
    "convolutions in float and runs slower than float for V3 (V3-Large: 14.1 vs 7.4 ms; ORT 1.31, 1 thread)")


@dataclass(frozen=True)
class OnnxQuantOptions:
    """ONNX Runtime static quantization settings (QDQ format).

    Attributes:
        per_channel: one weight scale per output channel (per tensor otherwise).
        activation_type: ``uint8`` (U8S8 with int8 weights, the x86 default) or ``int8`` (S8S8).
        weight_type: ``int8`` or ``uint8``.
        method: calibration method: ``minmax``, ``entropy`` or ``percentile``.
        nodes_to_exclude: ONNX node names left in float.
        reduce_range: 7-bit weights, for x86 CPUs without VNNI where U8S8 can saturate.
    """

    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    method: str = "minmax"
    nodes_to_exclude: tuple[str, ...] = ()
    reduce_range: bool = False

    def __post_init__(self):
        for field, value, allowed in (("activation_type", self.activation_type, ACTIVATION_TYPES),
                                      ("weight_type", self.weight_type, WEIGHT_TYPES),
                                      ("method", self.method, CALIBRATION_METHODS)):
            if value not in allowed:
                raise EdgeError(f"ONNX quantization: {field} must be one of {', '.join(allowed)}; "
                                f"received {field}={value!r}")
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))

    @property
    def scheme(self) -> str:
        """``U8S8``-style name: activation type, then weight type."""
        letter = {"uint8": "U8", "int8": "S8"}
        return letter[self.activation_type] + letter[self.weight_type]


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
        raise EdgeError(f"{name}: ONNX Runtime can't load it: {_first_line(error)}") from None


def run_onnx(model, inputs: np.ndarray, threads: int = 1) -> np.ndarray:
    """Float inputs [N, H, W, C] -> outputs [N, ...], run in chunks of the model's fixed batch."""
    session = model if hasattr(model, "run") else make_session(model, threads)
    feed = session.get_inputs()[0]
    batch = feed.shape[0] if isinstance(feed.shape[0], int) else len(inputs)
    if len(inputs) % batch:
        raise EdgeError(f"{len(inputs)} inputs is not a multiple of the model's batch {batch}")
    chunks = [session.run(None, {feed.name: inputs[i:i + batch].astype(np.float32)})[0]
              for i in range(0, len(inputs), batch)]
    return np.concatenate(chunks)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def load_onnx(path: str | Path):
    """The ONNX model at ``path``; a missing or non-ONNX file is an EdgeError."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf DecodeError and friends
        raise EdgeError(f"{path}: not an ONNX model ({_first_line(error)})") from None
    if not model.graph.node:
        raise EdgeError(f"{path}: not an ONNX model (no graph nodes)")
    return model


def _value_spec(value) -> dict:
    import onnx.helper

    tensor_type = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    return {"name": value.name, "shape": dims, "dtype": dtype, "scale": None, "zero_point": None}


def opset_of(model) -> int:
    """The default-domain (ai.onnx) opset the model imports."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


def onnx_io_spec(path: str | Path) -> dict:
    """Input/output spec in the manifest's form, plus opset and IR version.

    QDQ models quantize inside the graph, so their I/O stays float32 with null scale/zero_point.
    """
    model = load_onnx(path)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) < 1:
        raise EdgeError(f"{path}: expected one image input, found {len(inputs)} inputs")
    return {"input": _value_spec(inputs[0]), "output": _value_spec(model.graph.output[0]),
            "opset": opset_of(model), "ir_version": int(model.ir_version)}


def _check_keras_input(model, batch: int) -> tuple[int, ...]:
    shape = tuple(model.input.shape)
    if len(shape) != 4 or shape[3] != 3 or None in shape[1:]:
        raise EdgeError(f"ONNX export needs a (batch, height, width, 3) input with fixed height and "
                        f"width; received input shape {shape}")
    if batch < 1:
        raise EdgeError(f"ONNX export: batch must be >= 1; received batch={batch}")
    return (batch, *(int(d) for d in shape[1:]))


@contextlib.contextmanager
def _quiet_tf2onnx():
    """tf2onnx logs a traceback when an optional graph optimiser gives up (V3's hard-swish adds);
    the conversion still succeeds, so only errors are shown."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def convert_onnx(model, output_path: str | Path, *, batch: int = 1, opset: int | None = None) -> dict:
    """Keras 3 model -> float32 ONNX file (batch fixed, input named ``input``), written atomically.

    Returns facts for the manifest: input/output name and shape, dtype, opset, IR version,
    tf2onnx version and conversion seconds.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    shape = _check_keras_input(model, batch)
    started = time.perf_counter()
    signature = (tf.TensorSpec(shape, tf.float32, name=INPUT_NAME),)
    try:
        with _quiet_tf2onnx():
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    except Exception as error:  # tf2onnx raises many types with long messages
        raise EdgeError(f"ONNX conversion failed: {_first_line(error)}") from None
    seconds = time.perf_counter() - started
    canonical_names(proto.graph)
    with atomic_path(output_path, suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
    spec = onnx_io_spec(output_path)
    return {"input_name": spec["input"]["name"], "input_shape": spec["input"]["shape"],
            "output_name": spec["output"]["name"], "output_shape": spec["output"]["shape"],
            "dtype": spec["input"]["dtype"], "opset": spec["opset"], "ir_version": spec["ir_version"],
            "tf2onnx": tf2onnx.__version__, "convert_seconds": round(seconds, 2)}


def _sort_initializers(path: Path) -> None:
    """The quantizer lists initializers in an order that varies between processes: fix it by name."""
    import onnx

    model = onnx.load(str(path))
    ordered = sorted(model.graph.initializer, key=lambda t: t.name)
    del model.graph.initializer[:]
    model.graph.initializer.extend(ordered)
    onnx.save(model, str(path))


def canonical_names(graph) -> None:
    """Rename nodes and inner tensors by position, so the same model always serializes to the same bytes.

    tf2onnx numbers the names it makes in an order that depends on Python's per-process string hashing;
    the graph itself (op order, weights) is the same every time. Graph inputs and outputs keep their names.
    """
    import re

    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def stable(name: str) -> str:  # keeps the Keras layer path tf2onnx put in the name
        return re.sub(r"__\d+", "", name)

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"{stable(name)}__t{len(names)}")

    for index, node in enumerate(graph.node):
        node.name = f"{stable(node.name) or node.op_type}__n{index}"
        for field in (node.input, node.output):
            for position, name in enumerate(field):
                field[position] = rename(name)
    initializers = sorted(graph.initializer, key=lambda t: int(rename(t.name).rsplit("__t", 1)[1])
                          if rename(t.name) not in keep else -1)
    for tensor in initializers:
        tensor.name = rename(tensor.name)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    infos = sorted(graph.value_info, key=lambda v: rename(v.name))  # unique names: a total order
    for info in infos:
        info.name = rename(info.name)
    del graph.value_info[:]
    graph.value_info.extend(infos)


def verify_onnx(onnx_path: str | Path, keras_model, inputs: np.ndarray) -> float:
    """Max absolute difference between ONNX Runtime's and Keras's outputs on ``inputs``."""
    inputs = np.asarray(inputs, dtype=np.float32)
    if inputs.ndim != 4 or len(inputs) == 0:
        raise EdgeError(f"verification needs a non-empty N x H x W x C array; received shape {inputs.shape}")
    expected = np.asarray(keras_model.predict(inputs, batch_size=32, verbose=0), dtype=np.float32)
    actual = run_onnx(onnx_path, inputs)
    return float(np.max(np.abs(actual.reshape(expected.shape) - expected)))


def _calibration_reader(input_name: str, inputs: np.ndarray, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayCalibrationReader(CalibrationDataReader):
        """Feeds ``inputs`` in order, ``batch`` rows at a time; rewind() starts again."""

        def __init__(self):
            self.position = 0

        def get_next(self):
            if self.position >= len(inputs):
                return None
            rows = inputs[self.position:self.position + batch]
            self.position += batch
            return {input_name: rows}

        def rewind(self):
            self.position = 0

    return ArrayCalibrationReader()


def _check_calibration(inputs, spec: dict, batch: int, source: Path) -> np.ndarray:
    if not isinstance(inputs, np.ndarray) or inputs.ndim != 4 or len(inputs) == 0:
        shape = getattr(inputs, "shape", None)
        raise EdgeError("ONNX calibration needs a non-empty N x H x W x C float array; "
                        f"received shape {shape}")
    expected = spec["input"]["shape"][1:]
    if list(inputs.shape[1:]) != expected:
        raise EdgeError(f"{source}: calibration images are {list(inputs.shape[1:])} but the model "
                        f"takes {expected}")
    if len(inputs) % batch:
        raise EdgeError(f"{len(inputs)} calibration images is not a multiple of batch {batch}")
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if not np.all(np.isfinite(inputs)):
        raise EdgeError("ONNX calibration images contain NaN or infinite values")
    return inputs


def _quant_types(options: OnnxQuantOptions):
    from onnxruntime.quantization import CalibrationMethod, QuantType

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    return types[options.activation_type], types[options.weight_type], methods[options.method]


def _op_counts(path: Path) -> dict:
    import collections

    counts = collections.Counter(node.op_type for node in load_onnx(path).graph.node)
    return {op: counts[op] for op in ("QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MatMul")}


def quantize_onnx(float_path: str | Path, output_path: str | Path, calibration_inputs: np.ndarray,
                  options: OnnxQuantOptions | None = None, *, batch: int = 1, **overrides) -> dict:
    """Static int8 quantization (QDQ) of a float ONNX model, written atomically to ``output_path``.

    ``calibration_inputs`` are preprocessed float32 images (N x H x W x 3) fed ``batch`` at a time in
    order, so a given input always yields the same file. Keyword overrides replace fields of
    ``options`` (``per_channel=False``, ``method="entropy"``, ...). Returns facts for the manifest.
    """
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = replace(options or OnnxQuantOptions(), **overrides)
    float_path = Path(float_path)
    spec = onnx_io_spec(float_path)
    inputs = _check_calibration(calibration_inputs, spec, batch, float_path)
    activation, weight, method = _quant_types(options)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge-onnx-quant-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        try:
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            with atomic_path(output_path, suffix=".onnx") as tmp, \
                    contextlib.redirect_stdout(io.StringIO()):  # entropy/percentile print progress
                reader = _calibration_reader(spec["input"]["name"], inputs, batch)
                quantize_static(str(prepared), str(tmp), reader,
                                quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
                                reduce_range=options.reduce_range, activation_type=activation,
                                weight_type=weight, calibrate_method=method,
                                nodes_to_exclude=list(options.nodes_to_exclude) or None)
                _sort_initializers(tmp)
        except EdgeError:
            raise
        except Exception as error:  # ORT's quantizer raises many types
            raise EdgeError(f"{float_path}: ONNX Runtime quantization failed: {_first_line(error)}") from None
    return {"scheme": options.scheme, "quant_format": "QDQ", "options": asdict(options),
            "default_activation_reason": DEFAULT_ACTIVATION_REASON,
            "calibration_count": int(len(inputs)),
            "calibration_inputs_sha256": hashlib.sha256(inputs.tobytes()).hexdigest(),
            "op_counts": _op_counts(Path(output_path)), "onnxruntime": ort_version,
            "quantize_seconds": round(time.perf_counter() - started, 2)}
