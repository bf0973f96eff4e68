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


def separable_costs(model) -> list[SeparableCost]:
    """Each DepthwiseConv2D followed (after BN/activation/SE) by a 1x1 Conv2D."""
    layers = {l.name: l for l in model.layers}
    costs = {row.name: row for row in layer_costs(model)}
    pairs = []
    order = [l for l in model.layers if type(l).__name__ in ("DepthwiseConv2D", "Conv2D")]
    for position, layer in enumerate(order):
        if type(layer).__name__ != "DepthwiseConv2D":
            continue
        pointwise = next((l for l in order[position + 1:] if type(l).__name__ == "Conv2D"
                          and "squeeze_excite" not in l.name), None)
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
        "convention": ("MACs: multiply-accumulates of Conv2D/DepthwiseConv2D/Dense; params: "
                       "BatchNormalization folded into the preceding convolution as deployed"),
        "layers": [asdict(r) for r in rows],
        "separable_blocks": [dict(asdict(s), ratio=round(s.ratio, 4)) for s in separable],
    }
