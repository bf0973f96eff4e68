"""Parameters and multiply-accumulates per layer of a Keras model.

Counting convention (the papers' and TFLite's deployed form):
  * MACs: one per multiply-add of Conv2D, DepthwiseConv2D and Dense (a.k.a. mult-adds, MAdds);
    bias additions, BatchNormalization, activations, pooling, element-wise ops count zero.
  * params ("deployed"): BatchNormalization folded into the preceding convolution, so each
    conv/dense layer counts its kernel plus one bias per output channel (its own bias, or the one
    BN folding creates). ``keras_params`` is Keras' own count (BN gamma/beta/mean/variance included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerCost:
    name: str
    type: str
    output_shape: list
    params: int
    macs: int


@dataclass(frozen=True)
class SeparableCost:
    """A depthwise + pointwise pair against the standard convolution it replaces."""

    depthwise: str
    pointwise: str
    macs: int
    standard_conv_macs: int

    @property
    def ratio(self) -> float:
        return self.macs / self.standard_conv_macs


def _shape(tensor_shape) -> list:
    return [None if d is None else int(d) for d in tensor_shape]


def _next_is_bn(model, index: int) -> bool:
    layer = model.layers[index]
    consumers = [n.operation for n in layer._outbound_nodes]
    return len(consumers) == 1 and type(consumers[0]).__name__ == "BatchNormalization"


def layer_costs(model) -> list[LayerCost]:
    """Per-layer output shape, deployed params and MACs, in model order (inputs excluded)."""
    rows = []
    for index, layer in enumerate(model.layers):
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        out = _shape(layer.output.shape)
        params = macs = 0
        if kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
            kernel = layer.kernel.shape
            kernel_size = 1
            for d in kernel:
                kernel_size *= int(d)
            out_channels = out[-1]
            has_bias = layer.use_bias or _next_is_bn(model, index)
            params = kernel_size + (out_channels if has_bias else 0)
            spatial = 1
            for d in out[1:-1]:
                spatial *= d
            macs = spatial * kernel_size  # each kernel weight is used once per output position
        rows.append(LayerCost(layer.name, kind, out, params, macs))
    return rows


_WEIGHTED = ("Conv2D", "DepthwiseConv2D", "Dense")


def _next_convolution(layer):
    """The first Conv2D downstream of ``layer`` through weightless layers (BN, activations, the SE
    multiply), squeeze-excite convs skipped; None if another weighted layer comes first."""
    frontier, seen = [layer], {id(layer)}
    while frontier:
        following = []
        for current in frontier:
            for node in current._outbound_nodes:
                consumer = node.operation
                if id(consumer) in seen or "squeeze_excite" in consumer.name:
                    continue
                seen.add(id(consumer))
                kind = type(consumer).__name__
                if kind == "Conv2D":
                    return consumer
                if kind not in _WEIGHTED:
                    following.append(consumer)
        frontier = following
    return None


def separable_costs(model) -> list[SeparableCost]:
    """Each DepthwiseConv2D whose output feeds (after BN/activation/SE) a 1x1 Conv2D."""
    layers = {l.name: l for l in model.layers}
    costs = {row.name: row for row in layer_costs(model)}
    pairs = []
    for layer in model.layers:
        if type(layer).__name__ != "DepthwiseConv2D":
            continue
        pointwise = _next_convolution(layer)
        if pointwise is None or tuple(pointwise.kernel_size) != (1, 1):
            continue
        kh, kw = layers[layer.name].kernel_size
        dw_out = costs[layer.name].output_shape
        c_in = int(layer.input.shape[-1])
        c_out = costs[pointwise.name].output_shape[-1]
        standard = dw_out[1] * dw_out[2] * kh * kw * c_in * c_out
        pairs.append(SeparableCost(layer.name, pointwise.name,
                                   costs[layer.name].macs + costs[pointwise.name].macs, standard))
    return pairs


def describe(model, *, model_name: str, alpha: float, size) -> dict:
    """The ``edge-bench describe --json`` object."""
    rows = layer_costs(model)
    separable = separable_costs(model)
    return {
        "model": model_name,
        "alpha": alpha,
        "size": size,
        "input_shape": _shape(model.input.shape),
        "params": sum(r.params for r in rows),
        "macs": sum(r.macs for r in rows),
        "keras_params": int(model.count_params()),
        "outputs": [{"name": name, "shape": _shape(tensor.shape)}
                    for name, tensor in zip(model.output_names, model.outputs)],
        "convention": ("MACs: multiply-accumulates of Conv2D/DepthwiseConv2D/Dense; params: "
                       "BatchNormalization folded into the preceding convolution as deployed"),
        "layers": [asdict(r) for r in rows],
        "separable_blocks": [dict(asdict(s), ratio=round(s.ratio, 4)) for s in separable],
    }


def describe_registered(name: str, *, alpha: float = 1.0, size: int | None = None, classes: int | None = None,
                        depth_multiplier: int = 1) -> dict:
    """``describe`` of a registered classifier or detector built at these options (None: its default:
    224 px / 1000 classes; detectors 320 px / 90 object classes), with a ``detection`` key for detectors."""
    from edge_mobilenet.errors import EdgeError
    from edge_mobilenet.models.registry import DETECTORS, build_detector, build_model

    if name not in DETECTORS:
        size = 224 if size is None else size
        model = build_model(name, alpha=alpha, size=size, classes=1000 if classes is None else classes,
                            depth_multiplier=depth_multiplier)
        return describe(model, model_name=name, alpha=alpha, size=size)
    if depth_multiplier != 1:
        raise EdgeError(f"{name}: depth_multiplier applies to the mobilenet_v1 classifier only. "
                        f"Received depth_multiplier={depth_multiplier}")
    from edge_mobilenet.models.detection import detector_summary

    model = build_detector(name, alpha=alpha, size=size, classes=classes)
    size = DETECTORS[name].size if size is None else size
    return {**describe(model, model_name=name, alpha=alpha, size=size), "detection": detector_summary(model)}
