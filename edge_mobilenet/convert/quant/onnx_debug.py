"""Per-layer int8 error of ONNX QDQ models, and QDQ models with chosen nodes left in float.

Error is measured the way TFLite's QuantizationDebugger does, per layer rather than accumulated: for
every activation the QDQ model quantizes, the float model's ops that compute it are copied into the
QDQ graph and run on the QDQ model's own dequantized inputs with the float weights; that float
reference is compared with the tensor's dequantized int8 value (what the next layer reads). A layer's
figure is then its output rounding plus its weight and bias error, not what it inherited.
``rmse/scale`` near 0.289 (1/sqrt(12)) is ideal rounding (scale: the tensor's QuantizeLinear
``y_scale``); SNR is in dB over the float reference.

ONNX Runtime's own ``qdq_loss_debug`` reports ``qdq_err`` (pre- vs post-QDQ value of one tensor: output
rounding and clipping only, blind to weight error) and ``xmodel_err`` (accumulated from the input), so
neither alone is TFLite's figure.

Selective quantization re-runs ``quantize_onnx`` with ``nodes_to_exclude``: about a second for
MobileNetV1 0.25/128 calibrated on 200 images.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_mobilenet.convert.onnx_convert import OnnxQuantOptions, quantize_onnx
from edge_mobilenet.convert.quant.tflite_debug import LayerError, keras_layer_of
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.runtimes.onnx import checked_images, error_line, load_onnx, make_session, onnx_io_spec

QUANT_INPUT_SUFFIX = "_QuantizeLinear_Input"  # ORT renames a graph output it quantizes
REFERENCE_TAG = "__float_reference"
MAX_REFERENCE_NODES = 8  # float ops copied per tensor (Conv -> Clip, Conv -> Mul -> Add, ...)
WEIGHT_TOLERANCE_STEPS = 0.51  # |dequantized - float weight| <= half a step, plus float slack


@dataclass(frozen=True)
class _Probe:
    """One quantized activation: where its int8 value and its float reference can be read."""

    tensor: str  # the tensor's name in the float model
    node: str  # the QDQ node that produces it
    op: str
    quantized_output: str  # DequantizeLinear output: the value consumers read
    reference_output: str
    scale: float
    names: tuple[str, ...] = ()  # tensor, weight and node names: where tf2onnx left the Keras layer path


class _Graph:
    """Producers, initializers and names of one ONNX graph."""

    def __init__(self, model):
        self.model = model
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producers = {out: node for node in model.graph.node for out in node.output if out}
        self.order = {id(node): index for index, node in enumerate(model.graph.node)}

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.initializers[name])


def onnx_layer_errors(float_path: str | Path, qdq_path: str | Path, inputs: np.ndarray, *,
                      layer_names: Iterable[str] = frozenset()) -> list[LayerError]:
    """Per-layer error of each quantized activation of ``qdq_path``, worst (highest rmse/scale) first.

    Args:
        float_path: the float ONNX model the QDQ model was quantized from (``quantize_onnx``
            pre-processes it first; the report does the same to find the tensors it quantized).
        qdq_path: the QDQ int8 model.
        inputs: preprocessed float32 images (N x H x W x 3), a multiple of the model's batch.
        layer_names: Keras layer names, to name each row's ``layer``; without them the layer is read
            from tf2onnx's tensor path (``model/conv_pw_3_relu_1/Relu6:0`` -> ``conv_pw_3_relu``).
    """
    qdq_graph = _Graph(load_onnx(qdq_path))
    float_spec, qdq_spec = onnx_io_spec(float_path), onnx_io_spec(qdq_path)
    if float_spec["input"].shape != qdq_spec["input"].shape:
        raise EdgeError(f"{qdq_path}: input {list(qdq_spec['input'].shape)} does not match the float model "
                        f"{float_path} ({list(float_spec['input'].shape)})")
    float_graphs = [_Graph(prepare_float(float_path)), _Graph(load_onnx(float_path))]
    _check_weights(float_graphs, qdq_graph, float_path, qdq_path)
    probes, augmented = _augment(float_graphs, qdq_graph)
    if not probes:
        raise EdgeError(f"{qdq_path}: no quantized activation matches a tensor of {float_path}; is it a "
                        "QDQ model quantized from that float model?")
    totals = _measure(augmented, probes, inputs, qdq_path)
    layer_names = set(layer_names)
    rows = [_row(probe, totals[probe.tensor], layer_names) for probe in probes]
    return sorted(rows, key=lambda r: (-r.rmse_over_scale, r.node))


def prepare_float(float_path: str | Path):
    """The float model as ``quantize_onnx`` quantizes it: after ``quant_pre_process`` (shape
    inference, BatchNorm/Mul folding, Transpose removal: tensors may be renamed)."""
    import tempfile

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edge-onnx-debug-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        try:
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            return onnx.load(str(prepared))
        except Exception as error:  # ORT's optimizer raises many types
            raise EdgeError(f"{float_path}: ONNX Runtime pre-processing failed: {error_line(error)}") from None


def _row(probe: _Probe, total: dict, layer_names: set[str]) -> LayerError:
    import math

    mse = total["error_sq"] / max(total["count"], 1)
    noise, signal = total["error_sq"], total["signal_sq"]
    snr_db = float("inf") if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
    return LayerError(layer=keras_layer(probe, layer_names), node=probe.node, op=probe.op,
                      rmse_over_scale=math.sqrt(mse) / probe.scale, snr_db=snr_db,
                      max_abs_error=total["max_abs"], scale=probe.scale)


def keras_layer(probe: _Probe, layer_names: set[str]) -> str:
    """The Keras layer named in the tf2onnx path of the tensor, the node or its weights, else the node."""
    names = probe.names or (probe.tensor, probe.node)
    for name in names:
        found = keras_layer_of(name, layer_names)
        if found in layer_names:
            return found
    for name in names:
        parts = re.sub(r"(:\d+)?(__[tn]\d+)?$", "", name).split("/")
        if len(parts) >= 3:  # model/layer/op
            return re.sub(r"_\d+$", "", parts[1])
    return probe.node


def _check_weights(float_graphs: list[_Graph], qdq_graph: _Graph, float_path, qdq_path) -> None:
    """Every quantized constant found in the float model must round to its int8 value."""
    for node in qdq_graph.model.graph.node:
        source = node.input[0] if node.op_type == "DequantizeLinear" else ""
        if source not in qdq_graph.initializers or not source.endswith("_quantized"):
            continue
        float_name = source[:-len("_quantized")]
        float_graph = next((g for g in float_graphs if float_name in g.initializers), None)
        if float_graph is None:
            continue
        weights = float_graph.array(float_name).astype(np.float64)
        scale = _per_axis(qdq_graph.array(node.input[1]), node, weights.ndim)
        zero = (_per_axis(qdq_graph.array(node.input[2]), node, weights.ndim) if len(node.input) > 2
                and node.input[2] else 0)
        dequantized = (qdq_graph.array(source).astype(np.float64) - zero) * scale
        if dequantized.shape != weights.shape or np.any(
                np.abs(dequantized - weights) > WEIGHT_TOLERANCE_STEPS * scale + 1e-6 * np.abs(weights)):
            raise EdgeError(f"{qdq_path}: weight {float_name} does not match the float model {float_path} "
                            "(more than half a quantization step apart); was it quantized from it?")


def _per_axis(values: np.ndarray, node, ndim: int) -> np.ndarray:
    values = values.astype(np.float64)
    if values.size == 1:
        return values.reshape(())
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % ndim
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def _float_name(name: str) -> str:
    return name[:-len(QUANT_INPUT_SUFFIX)] if name.endswith(QUANT_INPUT_SUFFIX) else name


def _quantized_activations(qdq_graph: _Graph):
    """(tensor, producer, dequantized output, scale) for each activation a QuantizeLinear quantizes."""
    dequantizers = {}
    for node in qdq_graph.model.graph.node:
        if node.op_type == "DequantizeLinear":
            dequantizers.setdefault(node.input[0], node)
    for node in qdq_graph.model.graph.node:
        tensor = node.input[0] if node.op_type == "QuantizeLinear" else ""
        producer = qdq_graph.producers.get(tensor)
        dequantizer = dequantizers.get(node.output[0])
        if (producer is None or producer.op_type in ("QuantizeLinear", "DequantizeLinear")
                or dequantizer is None or node.input[1] not in qdq_graph.initializers):
            continue
        scale = qdq_graph.array(node.input[1])
        if scale.size == 1:
            yield tensor, producer, dequantizer.output[0], float(scale.reshape(()))


def _input_mapping(node, qdq_graph: _Graph) -> dict[str, str]:
    """Float-model tensor name -> the QDQ tensor ``node`` reads for it (dequantized if quantized)."""
    mapping = {}
    for name in node.input:
        if not name or name in qdq_graph.initializers:
            continue
        producer = qdq_graph.producers.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            source = producer.input[0]
            quantizer = qdq_graph.producers.get(source)
            if source in qdq_graph.initializers or quantizer is None or quantizer.op_type != "QuantizeLinear":
                continue  # a quantized weight: its float original is used instead
            mapping[_float_name(quantizer.input[0])] = name
        else:
            mapping[_float_name(name)] = name
    return mapping


def _reference_nodes(float_graph: _Graph, tensor: str, mapping: dict[str, str]):
    """The float nodes computing ``tensor`` from ``mapping``'s tensors and initializers, in order."""
    nodes, initializers, needed = {}, set(), [tensor]
    while needed:
        name = needed.pop()
        if name in mapping or not name:
            continue
        if name in float_graph.initializers:
            initializers.add(name)
            continue
        producer = float_graph.producers.get(name)
        if producer is None:
            return None  # a graph input the QDQ node does not read: not the same computation
        if id(producer) not in nodes:
            nodes[id(producer)] = producer
            if len(nodes) > MAX_REFERENCE_NODES:
                return None
            needed.extend(producer.input)
    return sorted(nodes.values(), key=lambda n: float_graph.order[id(n)]), initializers


def _augment(float_graphs: list[_Graph], qdq_graph: _Graph):
    """A copy of the QDQ model that also outputs each activation's int8 value and float reference.

    Each tensor's reference is sought in the first of ``float_graphs`` that computes it.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq_graph.model)
    graph, probes, copied = model.graph, {}, set()
    outputs = {v.name for v in graph.output}
    for tensor, producer, quantized, scale in _quantized_activations(qdq_graph):
        float_tensor = _float_name(tensor)
        mapping = _input_mapping(producer, qdq_graph)
        for index, float_graph in enumerate(float_graphs):
            found = None if float_tensor in probes else _reference_nodes(float_graph, float_tensor, mapping)
            if found is not None and producer.op_type in {n.op_type for n in found[0]}:
                break
        else:
            continue
        tag = f"{REFERENCE_TAG}{len(probes)}"
        rename = dict(mapping)
        for name in found[1]:
            rename[name] = f"{name}{REFERENCE_TAG}_g{index}"
            if rename[name] not in copied:
                copied.add(rename[name])
                graph.initializer.append(_renamed(float_graph.initializers[name], rename[name]))
        for node in found[0]:
            clone = onnx.NodeProto()
            clone.CopyFrom(node)
            clone.name = f"{node.name}{tag}"
            for field in (clone.input, clone.output):
                for position, name in enumerate(field):
                    if name:
                        field[position] = rename.setdefault(name, f"{name}{tag}")
            graph.node.append(clone)
        probe = _Probe(float_tensor, producer.name, producer.op_type, quantized, rename[float_tensor], scale,
                       (float_tensor, *(i for i in producer.input if i and i not in mapping.values()),
                        producer.name))
        for name in (probe.quantized_output, probe.reference_output):
            if name not in outputs:
                outputs.add(name)
                graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        probes[float_tensor] = probe
    return list(probes.values()), model


def _renamed(tensor, name: str):
    import onnx

    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def _measure(model, probes: list[_Probe], inputs: np.ndarray, source) -> dict[str, dict]:
    """Squared error, squared signal, count and max |error| per probe over ``inputs``."""
    session = make_session(model.SerializeToString(), source=str(source))
    feed = session.get_inputs()[0]
    batch = feed.shape[0] if isinstance(feed.shape[0], int) else 1
    inputs = checked_images(inputs, feed.shape, batch, source, "the quantization error report")
    names = [name for probe in probes for name in (probe.quantized_output, probe.reference_output)]
    totals = {p.tensor: {"error_sq": 0.0, "signal_sq": 0.0, "count": 0, "max_abs": 0.0} for p in probes}
    for start in range(0, len(inputs), batch):
        try:
            values = session.run(names, {feed.name: inputs[start:start + batch]})
        except Exception as error:  # ORT's own exception types
            raise EdgeError(f"{source}: running the error probes failed: {error_line(error)}") from None
        for index, probe in enumerate(probes):
            quantized = values[2 * index].astype(np.float64)
            reference = values[2 * index + 1].astype(np.float64)
            if quantized.shape != reference.shape:
                raise EdgeError(f"{source}: tensor {probe.tensor} has shape {quantized.shape} in the QDQ "
                                f"model but {reference.shape} in the float model")
            error = quantized - reference
            total = totals[probe.tensor]
            total["error_sq"] += float(np.sum(error * error))
            total["signal_sq"] += float(np.sum(reference * reference))
            total["count"] += error.size
            total["max_abs"] = max(total["max_abs"], float(np.max(np.abs(error), initial=0.0)))
    return totals


class OnnxSelectiveQuantizer:
    """QDQ int8 models of one float ONNX model with any set of nodes left in float.

    Each call re-runs ``quantize_onnx`` (pre-processing, calibration, quantization: its API takes a
    path, so nothing is cached between calls) and returns the model's bytes; ``facts`` holds the last
    call's manifest facts.
    """

    def __init__(self, float_path: str | Path, calibration_inputs: np.ndarray,
                 options: OnnxQuantOptions | None = None, workdir: str | Path | None = None):
        self.float_path = Path(float_path)
        self.node_names = {node.name for model in (load_onnx(self.float_path), prepare_float(self.float_path))
                           for node in model.graph.node}
        self.calibration_inputs = calibration_inputs
        self.options = options or OnnxQuantOptions()
        self.workdir = Path(workdir) if workdir is not None else None
        self.facts: dict | None = None

    def quantize(self, nodes: Iterable[str] = ()) -> bytes:
        import tempfile

        nodes = tuple(dict.fromkeys((*self.options.nodes_to_exclude, *nodes)))
        unknown = [name for name in nodes if name not in self.node_names]
        if unknown:
            raise EdgeError(f"{self.float_path}: no node named {unknown[0]!r} to keep in float")
        options = replace(self.options, nodes_to_exclude=nodes)
        with tempfile.TemporaryDirectory(prefix="edge-onnx-selective-", dir=self.workdir) as folder:
            target = Path(folder) / "candidate.onnx"
            self.facts = quantize_onnx(self.float_path, target, self.calibration_inputs, options)
            return target.read_bytes()
