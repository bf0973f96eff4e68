"""Post-training int8 weight methods whose result survives TFLite conversion exactly.

TFLite's full-integer converter folds each BatchNormalization into the convolution before it and
then rounds every kernel to nearest on a symmetric int8 grid (zero-point 0, per output channel,
scale = max|w| / 127, q in [-127, 127]; verified on TF 2.21 for CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED, see :func:`tflite_weight_grid`). To choose the int8 weights ourselves we therefore

1. fold the batch norms in Keras (:func:`fold_batch_norms`), so that we own the kernels the
   converter quantizes;
2. set a kernel to exactly ``s * q`` (float32) with integer ``q`` and the per-channel maximum kept at
   ``±127 * s``: the converter recomputes the same scale ``s`` and its ``round(w / s)`` gives back
   ``q`` (:func:`weights_on_grid` checks this on the converted file).

On top of that, two methods pick or compensate the rounding with calibration data:

* :func:`bias_correct`: empirical bias correction (Nagel et al. 2019, "Data-Free Quantization
  Through Weight Equalization and Bias Correction", sec. 4.2).
* :func:`adaround`: learned up/down rounding (Nagel et al. 2020, "Up or Down? Adaptive Rounding
  for Post-Training Quantization").

Models must be functional (or built Sequential) Keras models, channels-last. Kernel layers handled:
``Conv2D`` (groups 1), ``DepthwiseConv2D`` and ``Dense`` (its input flattened to rows). Calibration
activations are held in memory for the whole batch (a few dozen to a few hundred images).

Limit: the converter widens a channel's weight scale where its int32 bias would overflow half the
range, |b| / (s_input * s_weight) > 2^31 / 2 (QuantizationDriver::SetBiasParamsWithAdjustments); b is
the bias after the converter's own fusions (e.g. hard-sigmoid's +3 folded into the SE convolution's
bias). That happens with a tiny calibrated input range, e.g. the SE blocks of an untrained V3, and
then that layer's file weights are not the q chosen; :func:`weights_on_grid` reports it as False.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_mobilenet.errors import EdgeError

QMAX = 127
ZETA, GAMMA = 1.1, -0.1  # AdaRound's rectified sigmoid stretch (Nagel et al. 2020, eq. 23)
KERNEL_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")
ON_GRID_TOLERANCE = 1e-4  # in grid steps: a kernel this close to s * q everywhere is already on its grid


# -- the functional graph ---------------------------------------------------------------------------

def _graph(model):
    import keras

    graph = model._functional if isinstance(model, keras.Sequential) else model
    if not hasattr(graph, "_nodes_by_depth"):
        raise EdgeError(f"{model.name}: not a functional Keras model; its graph can't be walked")
    return graph


def _nodes(graph):
    """Every node, producers before consumers."""
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        yield from graph._nodes_by_depth[depth]


def _consumers(graph) -> dict[int, list]:
    users: dict[int, list] = {}
    for node in _nodes(graph):
        for tensor in node.input_tensors:
            users.setdefault(id(tensor), []).append(node)
    return users


def _producer(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def _kind(layer) -> str | None:
    """'Conv2D' / 'DepthwiseConv2D' / 'Dense' for a kernel layer this module handles, else None."""
    kind = type(layer).__name__
    if kind not in KERNEL_LAYERS or type(layer).__module__.split(".")[0] != "keras":
        return None
    if kind != "Dense" and (layer.data_format != "channels_last" or getattr(layer, "groups", 1) != 1):
        return None
    return kind if len(layer._inbound_nodes) == 1 else None


def _is_linear(layer) -> bool:
    return getattr(layer.activation, "__name__", "") == "linear"


def _fold_pairs(graph) -> dict[int, object]:
    """{id(conv node): its BatchNormalization node} for every BN that can be folded."""
    import keras

    pairs, users, outputs = {}, _consumers(graph), {id(t) for t in graph.outputs}
    for node in _nodes(graph):
        bn = node.operation
        if not isinstance(bn, keras.layers.BatchNormalization) or len(node.input_tensors) != 1:
            continue
        source = node.input_tensors[0]
        conv = _producer(source)
        rank = len(source.shape)
        if (_kind(conv.operation) is None or not _is_linear(conv.operation) or bn.axis not in (-1, rank - 1)
                or len(users.get(id(source), [])) != 1 or id(source) in outputs
                or len(bn._inbound_nodes) != 1 or node.arguments.kwargs.get("training")):
            continue
        pairs[id(conv)] = node
    return pairs


def _folded_weights(conv, bn) -> list[np.ndarray]:
    """W * gamma / sqrt(var + eps) per output channel; b' = (b - mean) * that + beta (float64 math)."""
    get = lambda v: np.asarray(v, np.float64)  # noqa: E731
    kernel = get(conv.kernel)
    factor = get(bn.moving_variance) + bn.epsilon
    factor = (get(bn.gamma) if bn.scale else 1.0) / np.sqrt(factor)
    bias = get(conv.bias) if conv.use_bias else 0.0
    bias = (bias - get(bn.moving_mean)) * factor + (get(bn.beta) if bn.center else 0.0)
    kernel = kernel * factor.reshape(kernel.shape[-2:] if _kind(conv) == "DepthwiseConv2D" else -1)
    return [kernel.astype(np.float32), bias.astype(np.float32)]


def _rebuild(graph, pairs: dict[int, object]):
    """A new functional model of fresh layers (same names, configs and weights); each conv node in
    ``pairs`` becomes a conv with bias carrying the folded BN, and the BN node is dropped."""
    import keras

    values, clones = {}, {}
    dropped = {id(bn) for bn in pairs.values()}
    for node in _nodes(graph):
        op = node.operation
        if node.is_input:
            tensor = node.outputs[0]
            values[id(tensor)] = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=op.name)
            continue
        if id(node) in dropped:
            continue
        args, kwargs = node.arguments.fill_in(values)
        if id(node) in pairs:
            config = op.get_config() | {"use_bias": True}
            clone = clones[id(op)] = op.__class__.from_config(config)
            out = clone(*args, **kwargs)
            clone.set_weights(_folded_weights(op, pairs[id(node)].operation))
            values[id(pairs[id(node)].outputs[0])] = out
        else:
            out = _call_clone(op, args, kwargs, clones)
        for old, new in zip(node.outputs, keras.tree.flatten(out)):
            values[id(old)] = new
    inputs = keras.tree.map_structure(lambda t: values[id(t)], graph._inputs_struct)
    outputs = keras.tree.map_structure(lambda t: values[id(t)], graph._outputs_struct)
    return keras.Model(inputs, outputs, name=graph.name)


def _call_clone(op, args, kwargs, clones):
    """Call a copy of layer ``op`` (same config and weights; raw ops are reused as they are)."""
    import keras

    if not isinstance(op, keras.layers.Layer):
        return op(*args, **kwargs)
    first = id(op) not in clones
    if first:
        clones[id(op)] = op.__class__.from_config(op.get_config())
    out = clones[id(op)](*args, **kwargs)
    if first and op.weights:
        clones[id(op)].set_weights(op.get_weights())
    return out


def fold_batch_norms(model):
    """A numerically equivalent functional model with every BatchNormalization (inference statistics)
    that directly follows a linear Conv2D / DepthwiseConv2D / Dense (its only consumer) folded into
    it: W' = W * gamma / sqrt(var + eps) per output channel (depthwise: per channel, any depth
    multiplier), b' = (b - mean) * gamma / sqrt(var + eps) + beta. The convolutions keep their names;
    every other layer is copied unchanged (a nested model counts as one layer: BNs inside it stay).
    The original model is not modified; a model without foldable BNs comes back as a copy. This is the folding TFLite's converter does before it
    quantizes, done here so that the folded kernels can be put on the int8 grid ourselves."""
    graph = _graph(model)
    return _rebuild(graph, _fold_pairs(graph))


# -- the int8 grid ----------------------------------------------------------------------------------

def _columns(layer, kernel) -> np.ndarray:
    """The kernel as [reduction, output channel]: conv [h,w,in,out] -> [h*w*in, out]; depthwise
    [h,w,in,m] -> [h*w, in*m] (TFLite's channel order in*m); dense [in,out]."""
    keep = 2 if _kind(layer) == "DepthwiseConv2D" else 1
    kernel = np.asarray(kernel)
    return kernel.reshape(math.prod(kernel.shape[:-keep]), -1)


def _round(values: np.ndarray) -> np.ndarray:
    """Round half away from zero (the converter's std::round; exact ties don't occur in practice)."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def tflite_weight_grid(layer, kernel=None, qmax: int = QMAX) -> tuple[np.ndarray, int | tuple[int, int]]:
    """(scale, axis): the int8 grid TFLite's full-integer converter puts ``layer``'s kernel on
    (``kernel`` instead of the layer's own if given; pass a folded kernel, the converter folds BN).

    Symmetric, zero-point 0, q in [-127, 127], one scale per output channel = max|w| / 127 over
    that channel. ``axis`` is the Keras kernel axis the scales run along: Conv2D 3 (kernel
    [h,w,in,out]), Dense 1 ([in,out]; FULLY_CONNECTED is per-channel too in full int8 since TF 2.16+,
    checked on 2.21), DepthwiseConv2D 2 ([h,w,in,1]) or (2, 3) with a depth multiplier (channel
    in * m + j, as TFLite orders them). ``scale`` has one entry per output channel, computed in
    float32 as the converter does (float32(max|w|) / 127, the value stored in the file).
    ``qmax`` 64: ONNX Runtime's per-channel int8 weights with reduce_range (q in [-64, 64], scale
    max|w| / 64), the grid of our ONNX int8 artifacts.
    """
    kind = _kind(layer)
    if kind is None:
        raise EdgeError(f"{layer.name}: not a Conv2D / DepthwiseConv2D / Dense layer this module handles")
    columns = _columns(layer, layer.kernel if kernel is None else kernel).astype(np.float32)
    scale = (np.max(np.abs(columns), axis=0) / np.float32(qmax)).astype(np.float64)
    if kind == "Conv2D":
        return scale, 3
    if kind == "Dense":
        return scale, 1
    return scale, 2 if layer.depth_multiplier == 1 else (2, 3)


def _nearest_q(layer, kernel=None, qmax: int = QMAX) -> tuple[np.ndarray, np.ndarray]:
    """(q columns [K, O], scale [O]): what the converter makes of the kernel. Its arithmetic is
    float32, w * (1 / s) (checked weight by weight: plain float64 w / s differs on weights a hair
    from a half step)."""
    columns = _columns(layer, layer.kernel if kernel is None else kernel).astype(np.float32)
    scale, _ = tflite_weight_grid(layer, kernel, qmax)
    inverse = np.float32(1) / np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(_round((columns * inverse).astype(np.float64)), -qmax, qmax), scale


def _set_kernel(layer, q: np.ndarray, scale: np.ndarray) -> None:
    """Kernel := s * q exactly (float32), in the layer's own kernel shape."""
    layer.kernel.assign((q * scale).astype(np.float32).reshape(tuple(layer.kernel.shape)))


def snap_to_grid(layer, qmax: int = QMAX) -> None:
    """Put ``layer``'s kernel on its int8 grid (round to nearest): what the converter will do anyway."""
    _set_kernel(layer, *_nearest_q(layer, qmax=qmax))


# -- reading the converted file ---------------------------------------------------------------------

TFLITE_KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _tflite_columns(op_name: str, weights: np.ndarray) -> np.ndarray:
    """TFLite weights as [reduction, output channel] in Keras order: CONV_2D [out,h,w,in],
    DEPTHWISE_CONV_2D [1,h,w,out], FULLY_CONNECTED [out,in]."""
    if op_name == "CONV_2D":
        return weights.transpose(1, 2, 3, 0).reshape(-1, weights.shape[0])
    if op_name == "DEPTHWISE_CONV_2D":
        return weights.reshape(-1, weights.shape[-1])
    return weights.T


def _layer_named(names: list[str], candidates: dict[str, tuple]) -> str | None:
    """The candidate layer the TFLite tensor names point at whose kernel shape matches.

    Name scopes carry a ``_N`` suffix (``conv_1/convolution`` is layer ``conv``), so a suffix-stripped
    name is preferred; the shape check settles ``conv`` vs ``conv_1``-style clashes."""
    found = []
    for part in (p for name in names for p in re.split(r"[;/]", name)):
        stripped = re.sub(r"_\d+$", "", part)
        found += [c for c in (stripped, part) if c in candidates and c not in found]
    return found[0] if found else None


def tflite_weights(tflite, model) -> dict[str, dict]:
    """Per Keras kernel layer of ``model`` found in the TFLite file (bytes or path): its int8 weights
    as columns [reduction, output channel] (``q``), ``scale``, ``zero_point``, the ``axis`` the
    scales run along in TFLite's own tensor layout, and the ``op``."""
    from ai_edge_litert.interpreter import Interpreter

    shapes = {layer.name: _columns(layer, layer.kernel).shape
              for layer in _graph(model).layers if _kind(layer)}
    content = tflite if isinstance(tflite, (bytes, bytearray)) else Path(tflite).read_bytes()
    interpreter = Interpreter(model_content=bytes(content))
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    found = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] not in TFLITE_KERNEL_OPS:
            continue
        weight, output = details[op["inputs"][1]], details[op["outputs"][0]]
        if weight["dtype"] != np.int8:
            continue
        columns = _tflite_columns(op["op_name"], interpreter.get_tensor(weight["index"]))
        matching = {n: s for n, s in shapes.items() if s == columns.shape}
        name = _layer_named([weight["name"], output["name"]], matching)
        if name is not None:
            params = weight["quantization_parameters"]
            found[name] = {"q": columns.astype(np.int32), "scale": params["scales"].astype(np.float64),
                           "zero_point": params["zero_points"], "axis": params["quantized_dimension"],
                           "op": op["op_name"]}
    return found


def weights_on_grid(tflite, model, rtol: float = 1e-6) -> dict[str, bool]:
    """Per kernel layer of ``model`` (BNs folded first, as the converter does) found in the TFLite
    file: whether its int8 weights there equal round(w / s) of the Keras kernel, with the scales
    equal to :func:`tflite_weight_grid`'s within ``rtol`` and zero-points 0. Exact for kernels put on
    the grid (:func:`adaround`, :func:`bias_correct`); for others, a float rounding difference
    between the converter's fold and ours could in principle flip a weight lying on a half step."""
    folded = _graph(fold_batch_norms(model))
    layers = {layer.name: layer for layer in folded.layers if _kind(layer)}
    result = {}
    for name, found in tflite_weights(tflite, folded).items():
        q, scale = _nearest_q(layers[name])
        result[name] = bool(np.array_equal(found["q"], q) and found["scale"].shape == scale.shape
                            and np.allclose(found["scale"], scale, rtol=rtol, atol=0)
                            and not np.any(found["zero_point"]))
    return result


# -- running the graph on calibration data -----------------------------------------------------------

def _run(graph, inputs: np.ndarray, streams: int, visit) -> None:
    """Evaluate the graph node by node, eagerly, on ``streams`` copies of the inputs (the float model
    and the model being changed). ``visit(node, calls)`` gets, per stream, ``(args, kwargs)`` filled
    in with that stream's values and returns the outputs per stream, or None: call the node's own
    operation. Values are freed after their last use, so at most a few activations are held."""
    import keras

    users = {key: len(nodes) for key, nodes in _consumers(graph).items()}
    keep = {id(t) for t in graph.outputs}
    values = [{id(t): inputs for t in graph.inputs} for _ in range(streams)]
    for node in _nodes(graph):
        if node.is_input:
            continue
        calls = [node.arguments.fill_in(v) for v in values]
        outputs = visit(node, calls)
        if outputs is None:
            outputs = [node.operation(*args, **kwargs) for args, kwargs in calls]
        for stream, out in zip(values, outputs):
            stream.update({id(t): o for t, o in zip(node.outputs, keras.tree.flatten(out))})
        for tensor in node.input_tensors:
            users[id(tensor)] -= 1
            if users[id(tensor)] == 0 and id(tensor) not in keep:
                for stream in values:
                    stream.pop(id(tensor), None)


def _linear(layer, x, kernel) -> np.ndarray:
    """The layer's linear part (no bias, no activation) on ``x`` with ``kernel``, by the backend's op."""
    from keras import ops

    kernel = ops.convert_to_tensor(np.asarray(kernel, np.float32))
    kind = _kind(layer)
    if kind == "Dense":
        return ops.convert_to_numpy(ops.matmul(x, kernel))
    conv = ops.depthwise_conv if kind == "DepthwiseConv2D" else ops.conv
    return ops.convert_to_numpy(conv(x, kernel, strides=layer.strides, padding=layer.padding,
                                     data_format="channels_last", dilation_rate=layer.dilation_rate))


def _targets(graph, layers) -> list:
    """The kernel layers to work on: ``layers`` (names) or every one this module handles."""
    handled = {layer.name: layer for layer in graph.layers if _kind(layer)}
    if layers is None:
        return list(handled.values())
    layers = [layers] if isinstance(layers, str) else list(layers)
    unknown = [name for name in layers if name not in handled]
    if unknown:
        raise EdgeError(f"not Conv2D / DepthwiseConv2D / Dense layers of {graph.name} (or not "
                        f"channels-last, grouped, shared): {', '.join(unknown)}")
    return [handled[name] for name in layers]


# -- bias correction ---------------------------------------------------------------------------------

def bias_correct(model, calibration_inputs: np.ndarray, layers=None, reference=None, qmax: int = QMAX):
    """Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", sec. 4.2): returns
    ``(model, report)``.

    The model is folded (:func:`fold_batch_norms`) and every kernel put on its int8 grid (round to
    nearest, which the converter would do anyway; kernels already on the grid, e.g. from
    :func:`adaround`, stay as they are). Then, sequentially in graph order, for each corrected layer
    the per-output-channel mean of its output over the calibration inputs is measured in two models:
    the float ``reference`` (default: ``model`` itself, folded) and the int8-weight model with every
    earlier layer already corrected; the bias absorbs the difference, b' = b + E[W x] - E[Wq xq].
    So each layer's shift is the one its weight rounding causes, E[(Wq - W) x], plus the mean shift
    it inherits from the earlier quantized layers (the sequential variant): E[output] of the int8-weight
    model matches float on the calibration data, layer by layer. Activations stay float (the
    converter quantizes them afterwards). Layers without a bias are left alone (reported).

    report: ``{layer: {"mean_abs_shift", "max_abs_shift"}}`` of the correction (or ``{"skipped"}``).
    ``qmax``: the grid (see :func:`tflite_weight_grid`).
    """
    import keras

    float_model = fold_batch_norms(model if reference is None else reference)
    new = fold_batch_norms(model)
    graph, new_graph = _graph(float_model), _graph(new)
    by_name = {layer.name: layer for layer in new_graph.layers}
    for layer in new_graph.layers:
        if _kind(layer):
            snap_to_grid(layer, qmax)
    targets = {layer.name for layer in _targets(new_graph, layers)}
    report = {}

    def visit(node, calls):
        op = node.operation
        is_layer = isinstance(op, keras.layers.Layer)
        quant_op = by_name[op.name] if is_layer else op
        (float_args, float_kwargs), (quant_args, quant_kwargs) = calls
        if is_layer and op.name in targets:
            report[op.name] = _correct_bias(op, by_name[op.name], float_args[0], quant_args[0])
        return [op(*float_args, **float_kwargs), quant_op(*quant_args, **quant_kwargs)]

    _run(graph, np.asarray(calibration_inputs, np.float32), 2, visit)
    return new, report


def _correct_bias(reference, layer, x_float, x_quant) -> dict:
    """layer.bias := reference.bias + E[W x_float] - E[Wq x_quant], per output channel."""
    if not layer.use_bias or not reference.use_bias:
        return {"skipped": "no bias"}
    axes = lambda y: tuple(range(y.ndim - 1))  # noqa: E731
    float_mean = _linear(reference, x_float, reference.kernel).astype(np.float64)
    quant_mean = _linear(layer, x_quant, layer.kernel).astype(np.float64)
    shift = quant_mean.mean(axis=axes(quant_mean)) - float_mean.mean(axis=axes(float_mean))
    layer.bias.assign((np.asarray(reference.bias, np.float64) - shift).astype(np.float32))
    return {"mean_abs_shift": float(np.mean(np.abs(shift))), "max_abs_shift": float(np.max(np.abs(shift)))}


# -- AdaRound ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdaRoundSettings:
    """AdaRound's knobs (defaults after Nagel et al. 2020 sec. 5: beta 20 -> 2, warm-up 20%)."""

    iterations: int = 500
    patches: int = 4096  # input patches (rows for Dense) sampled per layer from the calibration set
    # lambda. Far above the paper's 0.01 because here the reconstruction term is normalised by nearest
    # rounding's error and the regulariser is a mean over weights; on ImageNet MobileNets (V1 0.25/128,
    # V2 1.0/224, 500 iterations) the mean per-layer error ratio to nearest was ~0.98 at 0.01, 0.53 at 1,
    # 0.26-0.29 at 10-100 (too weak a term leaves h at frac(w / s), which hardens into nearest rounding)
    reg_weight: float = 30.0
    learning_rate: float = 0.05  # Adam on V
    warmup: float = 0.2  # share of iterations without the rounding regulariser
    beta: tuple[float, float] = (20.0, 2.0)
    seed: int = 0
    qmax: int = QMAX  # the grid's largest q (64: ONNX Runtime's reduce_range weights)


def _patches(layer, x, count: int, rng) -> np.ndarray:
    """Up to ``count`` input patches of the layer, sampled evenly over the images: rows [P, K] in
    the kernel's column order (Conv2D: h, w, in; Dense: in), or [P, h*w, channels] for depthwise.
    Only the sampled windows are gathered (zeros where 'same' padding reaches outside the image), as
    ``tf.image.extract_patches`` would give them."""
    x = np.asarray(x, np.float32)
    if _kind(layer) == "Dense":
        rows = x.reshape(-1, x.shape[-1])
        return rows[np.sort(rng.choice(len(rows), min(count, len(rows)), replace=False))]
    (kh, kw), per_image = layer.kernel_size, -(-count // len(x))
    rows_y, top = _window_axis(x.shape[1], kh, layer.strides[0], layer.dilation_rate[0], layer.padding)
    rows_x, left = _window_axis(x.shape[2], kw, layer.strides[1], layer.dilation_rate[1], layer.padding)
    positions = rows_y * rows_x
    take = min(per_image, positions)
    where = np.stack([np.sort(rng.choice(positions, take, replace=False)) for _ in range(len(x))])
    image = np.repeat(np.arange(len(x)), take)
    ys = (where.reshape(-1) // rows_x) * layer.strides[0] - top
    xs = (where.reshape(-1) % rows_x) * layer.strides[1] - left
    ys = ys[:, None] + np.arange(kh) * layer.dilation_rate[0]  # [P, kh]
    xs = xs[:, None] + np.arange(kw) * layer.dilation_rate[1]  # [P, kw]
    inside = ((ys >= 0) & (ys < x.shape[1]))[:, :, None] & ((xs >= 0) & (xs < x.shape[2]))[:, None, :]
    windows = x[image[:, None, None], np.clip(ys, 0, x.shape[1] - 1)[:, :, None],
                np.clip(xs, 0, x.shape[2] - 1)[:, None, :]]  # [P, kh, kw, C]
    windows *= inside[..., None]
    if _kind(layer) == "DepthwiseConv2D":
        return windows.reshape(len(windows), kh * kw, -1)
    return windows.reshape(len(windows), -1)


def _window_axis(size: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """(output positions, padding before) along one spatial axis, as TensorFlow pads."""
    span = (kernel - 1) * dilation + 1
    if padding.lower() == "valid":
        return (size - span) // stride + 1, 0
    out = -(-size // stride)
    return out, max((out - 1) * stride + span - size, 0) // 2


class _Gram:
    """Second moments of a layer's input patches, so that the mean squared output error of a kernel
    change D [K, O] is sum_o d_o' C_o d_o / O, exactly over the sampled patches, without touching
    them again: one C = X'X/P for Conv2D / Dense (or X itself when there are fewer rows than K),
    one C per channel for depthwise (repeated over a depth multiplier)."""

    def __init__(self, layer, patches: np.ndarray):
        patches = patches.astype(np.float64)
        self.rows = self.matrix = None
        if patches.ndim == 3:  # depthwise: [P, h*w, channels]
            matrix = np.einsum("pkc,plc->ckl", patches, patches) / len(patches)
            self.matrix = np.repeat(matrix, layer.depth_multiplier, axis=0).astype(np.float32)
        elif len(patches) < patches.shape[1]:
            self.rows = (patches / math.sqrt(len(patches))).astype(np.float32)
        else:
            self.matrix = (patches.T @ patches / len(patches)).astype(np.float32)

    def apply(self, change: np.ndarray) -> np.ndarray:
        if self.rows is not None:
            return self.rows.T @ (self.rows @ change)
        if self.matrix.ndim == 3:
            return np.einsum("okl,lo->ko", self.matrix, change)
        return self.matrix @ change

    def mse(self, change: np.ndarray) -> float:
        change = np.asarray(change, np.float64)
        return float(np.sum(change * self.apply(change)) / change.shape[1])


def _learned_rounding(weights, q_near, scale, gram: _Gram, settings: AdaRoundSettings) -> np.ndarray:
    """AdaRound on one layer's columns [K, O] (Nagel et al. 2020, eqs. 21-25): q = floor(w / s) + h
    with h = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1), V initialised so that h = frac(w / s),
    minimising ||W x - W~ x||^2 / (the same for nearest rounding) + lambda * mean(1 - |2h - 1|^beta)
    with Adam, beta annealed linearly after a warm-up without the regulariser; finally h >= 0.5.
    Each column's largest |w| keeps q = ±127, so the converter's scale max|w| / 127 stays s.
    float32 numpy, gradients by hand."""
    fixed = (np.abs(weights) >= np.max(np.abs(weights), axis=0)) | (scale == 0)
    ratio = weights / np.where(scale > 0, scale, 1.0)
    base = np.clip(np.floor(ratio), -settings.qmax, settings.qmax - 1)
    start = (np.clip(ratio - base, 0, 1) - GAMMA) / (ZETA - GAMMA)
    v = np.log(start / (1 - start)).astype(np.float32)
    offset = (weights - np.where(fixed, q_near, base) * scale).astype(np.float32)  # W - s * floor
    step_scale = np.where(fixed, 0, scale).astype(np.float32)  # change = offset - s * h (h frozen: 0)
    norm = max(gram.mse(weights - q_near * scale), 1e-30) * weights.shape[1]
    rec_coef = (-2 * (ZETA - GAMMA) / norm * step_scale).astype(np.float32)
    adam = _Adam(v.shape, settings.learning_rate)
    warm = int(settings.warmup * settings.iterations)
    for step in range(settings.iterations):
        sigmoid = 1 / (1 + np.exp(-v))
        h = np.clip(sigmoid * np.float32(ZETA - GAMMA) + np.float32(GAMMA), 0, 1)
        grad = gram.apply(offset - step_scale * h).astype(np.float32, copy=False) * rec_coef
        if step >= warm:
            progress = (step - warm) / max(settings.iterations - warm, 1)
            beta = settings.beta[1] + (settings.beta[0] - settings.beta[1]) * (1 - progress)
            centred = 2 * h - 1
            reg = np.copysign(np.abs(centred) ** np.float32(beta - 1), centred)
            grad -= np.float32(settings.reg_weight * 2 * beta * (ZETA - GAMMA) / h.size) * reg
        grad *= sigmoid * (1 - sigmoid) * ((h > 0) & (h < 1))  # d h / d V, zero where clipped
        v -= adam.step(grad)
    h = np.clip(1 / (1 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0, 1)
    return np.where(fixed, q_near, base + (h >= 0.5))


class _Adam:
    """Adam's update (Kingma & Ba 2015), default moments."""

    def __init__(self, shape, learning_rate: float):
        self.moment = np.zeros(shape, np.float32)
        self.second = np.zeros(shape, np.float32)
        self.rate, self.count = learning_rate, 0

    def step(self, grad: np.ndarray) -> np.ndarray:
        self.count += 1
        self.moment *= 0.9
        self.moment += 0.1 * grad
        self.second *= 0.999
        self.second += 0.001 * grad * grad
        rate = self.rate * math.sqrt(1 - 0.999 ** self.count) / (1 - 0.9 ** self.count)
        return rate * self.moment / (np.sqrt(self.second) + 1e-12)


def _one_blas_thread():
    """Small matrix products run several times faster on one BLAS thread than on two fighting over a
    busy 2-core machine; threadpoolctl is optional (no limit without it)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _adaround_layer(reference, layer, x, settings: AdaRoundSettings, rng) -> dict:
    """Learn ``reference``'s rounding on its float inputs ``x``; put ``layer``'s kernel at s * q.
    A kernel already on the grid (e.g. a model dequantized from an int8 file) has nothing to learn."""
    started = time.perf_counter()
    weights = _columns(reference, reference.kernel).astype(np.float64)
    q_near, scale = _nearest_q(reference, qmax=settings.qmax)
    if np.all(np.abs(weights - q_near * scale) <= ON_GRID_TOLERANCE * scale):
        _set_kernel(layer, q_near, scale)
        return {"on_grid": True, "changed": 0.0, "seconds": time.perf_counter() - started}
    patches = _patches(reference, x, settings.patches, rng)
    gram = _Gram(reference, patches)
    with _one_blas_thread():
        q = _learned_rounding(weights, q_near, scale, gram, settings)
    nearest, learned = (gram.mse(weights - candidate * scale) for candidate in (q_near, q))
    if learned > nearest:  # not seen in practice; never hand back something worse than nearest
        q, learned = q_near, nearest
    _set_kernel(layer, q, scale)
    return {"mse_nearest": nearest, "mse_adaround": learned, "changed": float(np.mean(q != q_near)),
            "patches": len(patches), "seconds": time.perf_counter() - started}


def adaround(model, calibration_inputs: np.ndarray, layers=None, iterations: int = 500,
             bias_correction: bool = False, **options):
    """AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"):
    returns ``(model, report)``, the model folded (:func:`fold_batch_norms`) with each chosen layer's
    kernel set to exactly s * q (float32), q integers in [-127, 127] on the grid of
    :func:`tflite_weight_grid`, so that TFLite's full-integer converter stores exactly q.

    Per layer, independently, on patches of its float inputs from the float model (the per-layer
    variant, not the paper's asymmetric one), q chooses floor or ceil of w / s to minimise the layer's
    output reconstruction error ||W x - Wq x||^2 (linear part, before bias and activation); see
    :func:`_learned_rounding`. The scales stay the converter's own. Layers not chosen keep float
    kernels (the converter rounds them to nearest). ``bias_correction``: then apply
    :func:`bias_correct` to the chosen layers against the float model (which also puts the other
    kernels on their nearest grid points, as the converter would).

    options: fields of :class:`AdaRoundSettings` (patches, reg_weight, learning_rate, warmup, beta,
    seed). report: ``{layer: {"mse_nearest", "mse_adaround", "changed", "seconds", ...}}``, errors
    as mean squared output error per output element over the sampled calibration patches.
    Check the converted file with :func:`weights_on_grid` (see the module's limits).
    """
    import keras

    settings = AdaRoundSettings(iterations=iterations, **options)
    inputs = np.asarray(calibration_inputs, np.float32)
    folded = fold_batch_norms(model)
    new, graph = fold_batch_norms(folded), _graph(folded)
    by_name = {layer.name: layer for layer in _graph(new).layers}
    targets = {layer.name for layer in _targets(graph, layers)}
    rng, report = np.random.default_rng(settings.seed), {}

    def visit(node, calls):
        op = node.operation
        if isinstance(op, keras.layers.Layer) and op.name in targets:
            report[op.name] = _adaround_layer(op, by_name[op.name], calls[0][0][0], settings, rng)
        return None

    _run(graph, inputs, 1, visit)
    if bias_correction:
        new, corrected = bias_correct(new, inputs, sorted(targets), reference=folded, qmax=settings.qmax)
        for name, entry in corrected.items():
            report[name]["bias_correction"] = entry
    return new, report
