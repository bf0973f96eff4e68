"""One builder that decodes the spec tables into Keras models.

Layer names follow keras.applications exactly for every layer that holds weights (``conv_dw_3``,
``block_5_expand_BN``, ``expanded_conv_4_squeeze_excite_conv``), so pretrained keras.applications
weights load by name; weightless layers get fixed, patterned names too (``expanded_conv_4_expand_act``),
which TFLite tensor names and quantization recipes rely on.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_mobilenet.models.specs import (FamilySpec, InvertedResidualRow, SeparableRow,
                                         make_divisible)

HARD_SWISH_FORMS = ("fused", "decomposed")


@dataclass(frozen=True)
class BuildConfig:
    """Everything the builder needs besides the family table (validated by the registry)."""

    alpha: float = 1.0
    size: tuple[int, int] = (224, 224)
    classes: int = 1000
    include_top: bool = True
    pooling: str | None = None
    dropout: float = 0.0
    depth_multiplier: int = 1
    bn_momentum: float | None = None  # None: the family's keras.applications value
    include_preprocessing: bool = True
    classifier_activation: str | None = "softmax"
    hard_swish: str = "fused"
    name: str = "mobilenet"


class _Blocks:
    """Layer helpers bound to one config (momentum, activation forms)."""

    def __init__(self, config: BuildConfig, default_momentum: float):
        import keras

        self.layers = keras.layers
        self.config = config
        self.momentum = default_momentum if config.bn_momentum is None else config.bn_momentum

    def bn(self, x, name: str):
        return self.layers.BatchNormalization(axis=-1, epsilon=1e-3, momentum=self.momentum, name=name)(x)

    def act(self, x, kind: str, name: str):
        L = self.layers
        if kind == "relu":
            return L.ReLU(name=name)(x)
        if kind == "relu6":
            return L.ReLU(6.0, name=name)(x)
        if kind == "hard_swish":
            if self.config.hard_swish == "fused":
                return L.Activation("hard_swish", name=name)(x)
            return self.hard_swish_decomposed(x, name)
        raise ValueError(f"unknown activation {kind!r}")

    def relu6_shifted(self, x, name: str):
        """relu6(x + 3): one int8 ADD with a fused RELU6 after conversion."""
        L = self.layers
        x = L.Rescaling(scale=1.0, offset=3.0, name=name + "_shift")(x)
        return L.ReLU(6.0, name=name + "_relu6")(x)

    def hard_swish_decomposed(self, x, name: str):
        """(x / 6) * relu6(x + 3): ADD+RELU6, MUL by a constant, MUL; all taken by XNNPACK in int8.

        The 1/6 scales ``x`` rather than the product: TFLite's converter folds
        ``x * relu6(x + 3) * (1/6)`` and ``x * (relu6(x + 3) * (1/6))`` back into HARD_SWISH.
        """
        L = self.layers
        gate = self.relu6_shifted(x, name)
        scaled = L.Rescaling(scale=1.0 / 6.0, name=name + "_scale")(x)
        return L.Multiply(name=name)([scaled, gate])

    def hard_sigmoid(self, x, name: str):
        """relu6(x + 3) / 6; decomposed: ADD+RELU6 then a constant MUL (on the small SE tensor)."""
        L = self.layers
        if self.config.hard_swish == "fused":
            return L.Activation("hard_sigmoid", name=name)(x)
        return L.Rescaling(scale=1.0 / 6.0, name=name)(self.relu6_shifted(x, name))

    def pad_for_stride2(self, x, kernel: int, name: str):
        height, width = x.shape[1], x.shape[2]
        pads = []
        for dim in (height, width):
            adjust = 1 - dim % 2 if dim is not None else 1
            pads.append((kernel // 2 - adjust, kernel // 2))
        return self.layers.ZeroPadding2D(padding=tuple(pads), name=name)(x)


def build(spec: FamilySpec, config: BuildConfig):
    """Build a Keras Functional model from a family spec and a validated config."""
    import keras

    blocks = _Blocks(config, 0.99 if spec.family == "v1" else 0.999)
    inputs = keras.Input(shape=(*config.size, 3), name="input")
    builders = {"v1": _build_v1, "v2": _build_v2, "v3": _build_v3}
    outputs = builders[spec.family](blocks, spec, inputs)
    return keras.Model(inputs, outputs, name=config.name)


def _build_v1(b: _Blocks, spec: FamilySpec, inputs):
    L, c = b.layers, b.config
    x = L.Conv2D(int(spec.stem_filters * c.alpha), 3, strides=2, padding="same", use_bias=False,
                 name="conv1")(inputs)
    x = b.act(b.bn(x, "conv1_bn"), "relu6", "conv1_relu")
    for block_id, row in enumerate(spec.blocks, start=1):
        assert isinstance(row, SeparableRow)
        if row.stride != 1:
            x = L.ZeroPadding2D(((0, 1), (0, 1)), name=f"conv_pad_{block_id}")(x)
        x = L.DepthwiseConv2D(3, strides=row.stride, padding="same" if row.stride == 1 else "valid",
                              depth_multiplier=c.depth_multiplier, use_bias=False,
                              name=f"conv_dw_{block_id}")(x)
        x = b.act(b.bn(x, f"conv_dw_{block_id}_bn"), "relu6", f"conv_dw_{block_id}_relu")
        x = L.Conv2D(int(row.filters * c.alpha), 1, padding="same", use_bias=False,
                     name=f"conv_pw_{block_id}")(x)
        x = b.act(b.bn(x, f"conv_pw_{block_id}_bn"), "relu6", f"conv_pw_{block_id}_relu")
    if not c.include_top:
        return _pool(b, x)
    x = L.GlobalAveragePooling2D(keepdims=True, name="global_average_pooling2d")(x)
    x = L.Dropout(c.dropout, name="dropout")(x)
    x = L.Conv2D(c.classes, 1, padding="same", name="conv_preds")(x)
    x = L.Reshape((c.classes,), name="reshape_2")(x)
    return L.Activation(c.classifier_activation, name="predictions")(x)


def _inverted_residual(b: _Blocks, x, row: InvertedResidualRow, expansion: float, filters: int,
                       block_id: int, family: str):
    L = b.layers
    v2 = family == "v2"
    prefix = ("expanded_conv_" if block_id == 0 else
              (f"block_{block_id}_" if v2 else f"expanded_conv_{block_id}_"))
    bn_suffix = "BN" if v2 else "bn"
    act_suffix = "relu" if v2 else "act"
    shortcut, in_channels = x, x.shape[-1]
    expanded = make_divisible(in_channels * expansion)
    if block_id:
        x = L.Conv2D(expanded, 1, padding="same", use_bias=False, name=f"{prefix}expand")(x)
        x = b.act(b.bn(x, f"{prefix}expand_{bn_suffix}"), row.activation, f"{prefix}expand_{act_suffix}")
    if row.stride == 2:
        x = b.pad_for_stride2(x, row.kernel, f"{prefix}pad" if v2 else f"{prefix}depthwise_pad")
    x = L.DepthwiseConv2D(row.kernel, strides=row.stride, padding="same" if row.stride == 1 else "valid",
                          use_bias=False, name=f"{prefix}depthwise")(x)
    x = b.act(b.bn(x, f"{prefix}depthwise_{bn_suffix}"), row.activation,
              f"{prefix}depthwise_{act_suffix}")
    if row.se:
        x = _squeeze_excite(b, x, expanded, prefix)
    x = L.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = b.bn(x, f"{prefix}project_{bn_suffix}")
    if row.stride == 1 and in_channels == filters:
        x = L.Add(name=f"{prefix}add")([shortcut, x])
    return x


def _squeeze_excite(b: _Blocks, inputs, channels: int, prefix: str):
    L = b.layers
    x = L.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}squeeze_excite_avg_pool")(inputs)
    x = L.Conv2D(make_divisible(channels * 0.25), 1, padding="same",
                 name=f"{prefix}squeeze_excite_conv")(x)
    x = L.ReLU(name=f"{prefix}squeeze_excite_relu")(x)
    x = L.Conv2D(channels, 1, padding="same", name=f"{prefix}squeeze_excite_conv_1")(x)
    x = b.hard_sigmoid(x, f"{prefix}squeeze_excite_hsigmoid")
    return L.Multiply(name=f"{prefix}squeeze_excite_mul")([inputs, x])


def _stack(b: _Blocks, spec: FamilySpec, x, width):
    in_unscaled = spec.stem_filters
    for block_id, row in enumerate(spec.blocks):
        assert isinstance(row, InvertedResidualRow)
        expansion = row.expanded / in_unscaled
        x = _inverted_residual(b, x, row, expansion, width(row.filters), block_id, spec.family)
        in_unscaled = row.filters
    return x


def _build_v2(b: _Blocks, spec: FamilySpec, inputs):
    L, c = b.layers, b.config
    x = L.Conv2D(make_divisible(spec.stem_filters * c.alpha), 3, strides=2, padding="same",
                 use_bias=False, name="Conv1")(inputs)
    x = b.act(b.bn(x, "bn_Conv1"), spec.stem_activation, "Conv1_relu")
    x = _stack(b, spec, x, lambda f: make_divisible(int(f * c.alpha)))
    head = make_divisible(spec.head_filters * c.alpha) if c.alpha > 1.0 else spec.head_filters
    x = L.Conv2D(head, 1, use_bias=False, name="Conv_1")(x)
    x = b.act(b.bn(x, "Conv_1_bn"), spec.head_activation, "out_relu")
    if not c.include_top:
        return _pool(b, x)
    x = L.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    if c.dropout > 0:
        x = L.Dropout(c.dropout, name="dropout")(x)
    return L.Dense(c.classes, activation=c.classifier_activation, name="predictions")(x)


def _build_v3(b: _Blocks, spec: FamilySpec, inputs):
    L, c = b.layers, b.config
    x = inputs
    if c.include_preprocessing:
        x = L.Rescaling(scale=1.0 / 127.5, offset=-1.0, name="rescaling")(x)
    x = L.Conv2D(spec.stem_filters, 3, strides=2, padding="same", use_bias=False, name="conv")(x)
    x = b.act(b.bn(x, "conv_bn"), spec.stem_activation, "conv_act")
    x = _stack(b, spec, x, lambda f: make_divisible(f * c.alpha))
    x = L.Conv2D(make_divisible(x.shape[-1] * 6), 1, padding="same", use_bias=False, name="conv_1")(x)
    x = b.act(b.bn(x, "conv_1_bn"), spec.head_activation, "conv_1_act")
    if not c.include_top:
        return _pool(b, x)
    last_point = make_divisible(spec.head_filters * c.alpha) if c.alpha > 1.0 else spec.head_filters
    x = L.GlobalAveragePooling2D(keepdims=True, name="global_average_pooling2d")(x)
    x = L.Conv2D(last_point, 1, padding="same", use_bias=True, name="conv_2")(x)
    x = b.act(x, spec.head_activation, "conv_2_act")
    if c.dropout > 0:
        x = L.Dropout(c.dropout, name="dropout")(x)
    x = L.Conv2D(c.classes, 1, padding="same", name="logits")(x)
    x = L.Flatten(name="flatten")(x)
    return L.Activation(c.classifier_activation, name="predictions")(x)


def _pool(b: _Blocks, x):
    if b.config.pooling == "avg":
        return b.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if b.config.pooling == "max":
        return b.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x
