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
DequantizeLinear -> float Conv -> QuantizeLinear, so U8S8 is the default. Weights are 7-bit
(``reduce_range``) by default: on x86 without VNNI (AVX2 only, e.g. an AMD EPYC of this kind) ONNX Runtime's
U8S8 kernels (VPMADDUBSW) saturate with 8-bit weights. Measured on the default V1 0.25/32 trained on the
digits, on such a CPU: top-1 agreement with float 0.755 with 8-bit weights, 0.989 with 7-bit; the artifact
must run correctly on whatever CPU it lands on, and ARM and VNNI CPUs lose next to nothing. Two threads on
this shared 2-core machine were no faster than one.

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
from edge_mobilenet.runtimes.onnx import checked_images, error_line, load_onnx, onnx_io_spec, run_onnx

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
        reduce_range: 7-bit weights (default): U8S8 saturates with 8-bit weights on x86 CPUs without VNNI.
    """

    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    method: str = "minmax"
    nodes_to_exclude: tuple[str, ...] = ()
    reduce_range: bool = True

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


@contextlib.contextmanager
def _scalar_add_transposes_fixed():
    """tf2onnx 1.17's transpose optimizer gives up on the whole graph at an Add of a scalar constant
    after a bias-less Conv (``bias_size = max(numpy_val.shape)`` of a 0-d array: MobileNetV3's hard-swish
    ``x + 3``), leaving every NHWC<->NCHW Transpose in place (V3-Small: 106 of them). ONNX Runtime then
    keeps the squeeze-excite ReduceMeans over NHWC axes, in float between DequantizeLinear/QuantizeLinear
    in the int8 graph, and wraps the float convolutions in layout reorders. A scalar can't become a Conv
    bias: such an Add is handled as the optimizer handles any other Add it can't merge."""
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    original = TransposeOptimizer._add_handler

    def add_handler(self, trans, node):
        if node.inputs[1].is_const() and node.inputs[1].get_tensor_value(as_list=False).ndim == 0:
            return self._handle_node_having_branches(trans, node)
        return original(self, trans, node)

    TransposeOptimizer._add_handler = add_handler
    try:
        yield
    finally:
        TransposeOptimizer._add_handler = original


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
        with _quiet_tf2onnx(), _scalar_add_transposes_fixed():
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    except Exception as error:  # tf2onnx raises many types with long messages
        raise EdgeError(f"ONNX conversion failed: {error_line(error)}") from None
    seconds = time.perf_counter() - started
    drop_layout_round_trips(proto)
    canonical_names(proto.graph)
    with atomic_path(output_path, suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
    spec = onnx_io_spec(output_path)
    return {"input_name": spec["input"].name, "input_shape": list(spec["input"].shape),
            "output_name": spec["outputs"][0].name, "output_shape": list(spec["outputs"][0].shape),
            "dtype": spec["input"].dtype, "opset": spec["opset"], "ir_version": spec["ir_version"],
            "tf2onnx": tf2onnx.__version__, "convert_seconds": round(seconds, 2)}


def _sort_initializers(path: Path) -> None:
    """The quantizer lists initializers in an order that varies between processes: fix it by name."""
    import onnx

    model = onnx.load(str(path))
    ordered = sorted(model.graph.initializer, key=lambda t: t.name)
    del model.graph.initializer[:]
    model.graph.initializer.extend(ordered)
    onnx.save(model, str(path))


def _static_shapes(model) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, for every tensor ONNX shape inference gives fully static dims."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def _is_layout_only(node, shapes: dict) -> bool:
    """A Reshape, or a Transpose that only moves size-1 dims: the two forms tf2onnx's transpose
    optimizer leaves for NHWC <-> NCHW round trips; both keep element order. (Squeeze and friends
    are left alone: ORT fuses more once those go, which moves results by a rounding step.)"""
    if node.op_type == "Reshape":
        return True
    shape = shapes.get(node.input[0]) if node.op_type == "Transpose" else None
    if shape is None:
        return False
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    kept = [axis for axis in (perm or reversed(range(len(shape)))) if shape[axis] != 1]
    return kept == sorted(kept)


def drop_layout_round_trips(model) -> int:
    """Bypass chains of layout-only ops (see _is_layout_only) that end in their start's shape: exact,
    since such ops keep element order. Returns how many nodes were removed.

    tf2onnx turns Transposes that only move size-1 dims into Reshapes ([1, C, 1, 1] -> [1, C, 1, 1] before
    MobileNetV3's squeeze-excite and head convolutions) and removes some of them again, how many
    depending on the process's node order (V3-Large 0.5/32: 285 or 286 nodes, about evenly), and now
    and then leaves a Reshape -> Transpose round trip. Graph outputs keep their producer.
    """
    graph = model.graph
    shapes = _static_shapes(model)
    outputs = {v.name for v in graph.output}
    root: dict[str, str] = {}  # output of a layout-only chain -> the tensor the chain starts from
    alias: dict[str, str] = {}
    for node in graph.node:
        if len(node.output) != 1 or not _is_layout_only(node, shapes):
            continue
        start = root.get(node.input[0], node.input[0])
        root[node.output[0]] = start
        if node.output[0] not in outputs and shapes.get(start) is not None \
                and shapes.get(start) == shapes.get(node.output[0]):
            alias[node.output[0]] = start
    if not alias:
        return 0
    for node in graph.node:
        for position, name in enumerate(node.input):
            node.input[position] = alias.get(name, name)
    return _drop_unused(graph, set(root))


def _drop_unused(graph, removable: set[str]) -> int:
    """Remove nodes producing only ``removable`` tensors nobody reads, then unread initializers
    those nodes read; value_info of removed tensors goes too. Returns how many nodes went."""
    before = {name for node in graph.node for name in node.input}
    needed = {v.name for v in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed or out not in removable for out in node.output):
            kept.append(node)
            needed.update(node.input)
    removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    for tensor in [t for t in graph.initializer if t.name in before and t.name not in needed]:
        graph.initializer.remove(tensor)
    gone = removable - needed
    for info in [v for v in graph.value_info if v.name in gone]:
        graph.value_info.remove(info)
    return removed


def _tensor_digest(tensor) -> str:
    """sha256 of an initializer's dtype, shape and values (not its name or storage field)."""
    from onnx import numpy_helper

    array = np.ascontiguousarray(numpy_helper.to_array(tensor))
    digest = hashlib.sha256(f"{tensor.data_type}:{list(tensor.dims)}:".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _content_names(graph, keep: set[str]) -> dict[str, str]:
    """Base names for initializers that several node inputs read, taken from their content.

    tf2onnx merges equal constants (Relu6's 0 and 6, equal batch-norm factors, pads, shapes) into one
    and keeps the name of whichever copy it met first, which varies between processes
    (``conv_pw_13_relu_1/Relu6_max`` in one run, ``conv_dw_5_relu_1/Relu6_max`` in the next). An
    initializer read once keeps the name of the layer that reads it.
    """
    import collections

    reads = collections.Counter(name for node in graph.node for name in node.input)
    return {t.name: f"shared_{_tensor_digest(t)[:16]}" for t in graph.initializer
            if reads[t.name] > 1 and t.name not in keep}


def canonical_names(graph) -> None:
    """Rename nodes and inner tensors by position, so the same model always serializes to the same bytes.

    tf2onnx numbers the names it makes (``__17``) in an order that varies between processes, even with
    a fixed PYTHONHASHSEED, and names merged constants after an arbitrary copy (see _content_names);
    the graph itself (op order, weights) is the same every time once drop_layout_round_trips has run.
    Names become the tf2onnx name without its number (shared initializers: a content hash) plus
    ``__n<node index>`` or ``__t<first use>``; initializers are listed in first-use order. Graph
    inputs and outputs keep their names.
    """
    import re

    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    bases = _content_names(graph, keep)
    names: dict[str, str] = {}

    def stable(name: str) -> str:  # keeps the Keras layer path tf2onnx put in the name
        return re.sub(r"__[nt]?\d+", "", name)  # __n/__t: ours, so a second pass changes nothing

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"{bases.get(name) or stable(name)}__t{len(names)}")

    for index, node in enumerate(graph.node):
        node.name = f"{stable(node.name) or node.op_type}__n{index}"
        for field in (node.input, node.output):
            for position, name in enumerate(field):
                field[position] = rename(name)
    unread = sorted((t for t in graph.initializer if t.name not in names),  # none from tf2onnx
                    key=lambda t: (stable(t.name), _tensor_digest(t)))
    for tensor in unread:
        rename(tensor.name)

    def order(tensor) -> tuple[int, str]:  # kept names (initializers that are graph inputs) first
        name = rename(tensor.name)
        return (-1, name) if name in keep else (int(name.rsplit("__t", 1)[1]), "")

    initializers = sorted(graph.initializer, key=order)
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
    inputs = checked_images(calibration_inputs, spec["input"].shape, batch, float_path, "ONNX calibration")
    activation, weight, method = _quant_types(options)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge-onnx-quant-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        try:
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            with atomic_path(output_path, suffix=".onnx") as tmp, \
                    contextlib.redirect_stdout(io.StringIO()):  # entropy/percentile print progress
                reader = _calibration_reader(spec["input"].name, inputs, batch)
                quantize_static(str(prepared), str(tmp), reader,
                                quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
                                reduce_range=options.reduce_range, activation_type=activation,
                                weight_type=weight, calibrate_method=method,
                                nodes_to_exclude=list(options.nodes_to_exclude) or None)
                _sort_initializers(tmp)
        except EdgeError:
            raise
        except Exception as error:  # ORT's quantizer raises many types
            raise EdgeError(f"{float_path}: ONNX Runtime quantization failed: {error_line(error)}") from None
    return {"scheme": options.scheme, "quant_format": "QDQ", "options": asdict(options),
            "default_activation_reason": DEFAULT_ACTIVATION_REASON,
            "calibration_count": int(len(inputs)),
            "calibration_inputs_sha256": hashlib.sha256(inputs.tobytes()).hexdigest(),
            "op_counts": _op_counts(Path(output_path)), "onnxruntime": ort_version,
            "quantize_seconds": round(time.perf_counter() - started, 2)}
