"""SSDLite on MobileNet backbones, as data (one row per backbone family) and one builder.

SSDLite (MobileNetV2 paper, section 6.2) is SSD with every convolution of the added layers and of the
predictors made depthwise separable. Six feature maps:
  * two taps of the backbone, built by :func:`builder.build` with ``include_top=False`` so that the
    backbone keeps the classification models' layer names and its weights load by name from a
    classification ``.keras`` of the same family and alpha: C4 (output stride 16) and C5 (stride 32,
    the last layer before pooling);
  * four extra layers on C5, each a 1x1 conv to depth/2, a 3x3 depthwise conv of stride 2 and a 1x1
    conv to depth (512, 256, 256, 128), BatchNormalization + ReLU6 after each (the TF Object
    Detection API's ``multi_resolution_feature_maps`` with ``insert_1x1_conv`` and ``use_depthwise``;
    depths scaled by alpha, at least 16, as there).

On every feature map a box predictor and a class predictor, each a 3x3 depthwise conv + BN + ReLU6
then a 1x1 conv with bias (the API's ``ConvolutionalBoxPredictor`` with ``use_depthwise``), predict
per anchor 4 box codes (:class:`anchors.CenterSizeBoxCoder`) and classes + 1 logits (index 0 is the
background). Outputs, concatenated over feature maps in anchor order (:func:`anchors.generate_anchors`):
``box_encodings`` [batch, N, 4] and ``class_predictions`` [batch, N, classes + 1], N anchors.

Optionally (``DetectorConfig.stride8_map``) a third backbone tap comes first: the expansion of the first
stride-16 block, at output stride 8 (as the API's SSD FPN variants start at level 3). The papers' COCO
detectors have none; at small inputs it decides whether small objects get anchors: on the synthetic
digits set at 96 px, 34% of the boxes have an anchor of IoU >= 0.5 with the two paper taps (204 anchors),
78% with the stride-8 map (744 anchors).

Layer names, k the feature map (0 and 1: the backbone taps, then the extra layers; with the stride-8
map, 0-2 the taps)::

    extra_{k}_reduce, extra_{k}_depthwise, extra_{k}_pointwise   (each + _bn, _relu6)
    box_predictor_{k}_depthwise (+ _bn, _relu6), box_predictor_{k}_conv, box_predictor_{k}_reshape
    class_predictor_{k}_...  (the same), box_encodings, class_predictions
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.models.anchors import SSD_ANCHORS, AnchorSpec, anchors_per_location, generate_anchors
from edge_mobilenet.models.builder import BuildConfig, build
from edge_mobilenet.models.specs import FAMILIES, FamilySpec

MIN_DEPTH = 16
BOX_CODE_SIZE = 4
CLASS_BIAS_INIT = -4.6  # the API's class_prediction_bias_init: sigmoid(-4.6) = 0.01 at the start
HEAD_BN_MOMENTUM = 0.97  # the API's SSD configs (batch_norm decay 0.97, epsilon 0.001)
HEAD_PREFIXES = ("extra_", "box_predictor_", "class_predictor_", "box_encodings", "class_predictions")


@dataclass(frozen=True)
class SSDLiteSpec:
    """What SSDLite takes from one backbone family, and what it adds.

    ``taps``: the backbone layers whose outputs are the first two feature maps (C4 at stride 16,
    C5 at stride 32). ``stride8_tap``: the layer an optional stride-8 map taps (the expansion of the
    first stride-16 block). ``reduced_tail_block``: the block whose expansion layer is C4; in the V3
    paper's reduced variant that block's output and all later layers up to C5 have half the
    channels. ``extra_depths``: output depth of each extra layer.
    """

    backbone: str  # key in specs.FAMILIES
    taps: tuple[str, str]
    stride8_tap: str
    extra_depths: tuple[int, ...] = (512, 256, 256, 128)
    reduced_tail_block: int | None = None
    anchors: AnchorSpec = SSD_ANCHORS


# Taps by the papers: V2 section 6.2 (the expansion of block 13, 576 channels, and the last 1x1 conv,
# 1280); V3 section 6.2 (C4: the expansion layer of the 13th bottleneck of Large, the 9th of Small;
# C5: the layer before pooling); V1 as in the API's SSD MobileNetV1 (Conv2d_11 and Conv2d_13
# pointwise). The API names them layer_15/expansion_output, layer_14/..., layer_10/..., Conv2d_11.
SSDLITE_SPECS: dict[str, SSDLiteSpec] = {
    "mobilenet_v1": SSDLiteSpec("mobilenet_v1", ("conv_pw_11_relu", "conv_pw_13_relu"), "conv_pw_5_relu"),
    "mobilenet_v2": SSDLiteSpec("mobilenet_v2", ("block_13_expand_relu", "out_relu"), "block_6_expand_relu"),
    "mobilenet_v3_large": SSDLiteSpec("mobilenet_v3_large", ("expanded_conv_12_expand_act", "conv_1_act"),
                                      "expanded_conv_6_expand_act", reduced_tail_block=12),
    "mobilenet_v3_small": SSDLiteSpec("mobilenet_v3_small", ("expanded_conv_8_expand_act", "conv_1_act"),
                                      "expanded_conv_3_expand_act", reduced_tail_block=8),
}


@dataclass(frozen=True)
class DetectorConfig:
    """A validated detector build (see ``registry.make_detector_config``).

    ``backbone`` is the classification builder's config (``include_top=False``); ``classes`` counts
    object classes without the background; ``reduced_tail`` builds the V3 paper's variant with the
    layers after C4 halved (its backbone weights then load only up to C4); ``stride8_map`` adds the
    spec's stride-8 tap as the first feature map.
    """

    backbone: BuildConfig
    classes: int
    reduced_tail: bool = False
    stride8_map: bool = False
    name: str = "ssdlite"

    @property
    def head_bn_momentum(self) -> float:
        return HEAD_BN_MOMENTUM if self.backbone.bn_momentum is None else self.backbone.bn_momentum


def reduced_tail(family: FamilySpec, block: int) -> FamilySpec:
    """``family`` with the output of ``block`` and every later block (and so the last conv) halved.

    As the API's ``V3_LARGE_DETECTION`` / ``V3_SMALL_DETECTION``: the expansion of ``block`` (C4)
    keeps its width; later blocks keep their expansion factor on the halved input.
    """
    rows = list(family.blocks)
    for index in range(block, len(rows)):
        row = rows[index]
        expanded = row.expanded if index == block else row.expanded // 2
        rows[index] = replace(row, filters=row.filters // 2, expanded=expanded)
    return replace(family, blocks=tuple(rows))


def build_detector(spec: SSDLiteSpec, config: DetectorConfig, backbone_weights: str | Path | None = None):
    """The SSDLite Keras model; backbone weights copied by name from a classification model file."""
    import keras

    family = FAMILIES[spec.backbone]
    if config.reduced_tail:
        family = reduced_tail(family, spec.reduced_tail_block)
    backbone = build(family, config.backbone)
    head = _Head(keras.layers, config)
    taps = ((spec.stride8_tap,) if config.stride8_map else ()) + spec.taps
    features = [backbone.get_layer(name).output for name in taps]
    for index, depth in enumerate(spec.extra_depths, start=len(taps)):
        features.append(head.extra_layer(features[-1], depth, index))
    boxes, classes = [], []
    counts = anchors_per_location(spec.anchors, len(features))
    for index, (feature, count) in enumerate(zip(features, counts)):
        boxes.append(head.predictor(feature, count, BOX_CODE_SIZE, f"box_predictor_{index}"))
        classes.append(head.predictor(feature, count, config.classes + 1, f"class_predictor_{index}"))
    L = keras.layers
    outputs = [L.Concatenate(axis=1, name="box_encodings")(boxes),
               L.Concatenate(axis=1, name="class_predictions")(classes)]
    model = keras.Model(backbone.input, outputs, name=config.name)
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights, allow_missing=config.reduced_tail)
    return model


class _Head:
    """The extra layers and predictors, bound to one config (widths, BN momentum)."""

    def __init__(self, layers, config: DetectorConfig):
        self.layers = layers
        self.config = config

    def _conv_bn_relu6(self, x, layer, name: str):
        L = self.layers
        x = layer(x)
        x = L.BatchNormalization(epsilon=1e-3, momentum=self.config.head_bn_momentum, name=f"{name}_bn")(x)
        return L.ReLU(6.0, name=f"{name}_relu6")(x)

    def _depth(self, depth: float) -> int:
        return max(int(depth * self.config.backbone.alpha), MIN_DEPTH)

    def extra_layer(self, x, depth: int, index: int):
        L, name = self.layers, f"extra_{index}"
        x = self._conv_bn_relu6(x, L.Conv2D(self._depth(depth / 2), 1, use_bias=False,
                                            kernel_initializer=_kernel_init(), name=f"{name}_reduce"),
                                f"{name}_reduce")
        x = self._conv_bn_relu6(x, L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False,
                                                     depthwise_initializer=_kernel_init(),
                                                     name=f"{name}_depthwise"), f"{name}_depthwise")
        return self._conv_bn_relu6(x, L.Conv2D(self._depth(depth), 1, use_bias=False,
                                               kernel_initializer=_kernel_init(), name=f"{name}_pointwise"),
                                   f"{name}_pointwise")

    def predictor(self, x, anchors: int, per_anchor: int, name: str):
        """3x3 depthwise + BN + ReLU6, 1x1 conv to anchors * per_anchor, reshaped to [batch, H*W*anchors,
        per_anchor]: row by row, the anchors of one location adjacent (the anchor generator's order)."""
        L = self.layers
        height, width = int(x.shape[1]), int(x.shape[2])
        x = self._conv_bn_relu6(x, L.DepthwiseConv2D(3, padding="same", use_bias=False,
                                                     depthwise_initializer=_kernel_init(),
                                                     name=f"{name}_depthwise"), f"{name}_depthwise")
        bias = CLASS_BIAS_INIT if name.startswith("class_") else 0.0
        x = L.Conv2D(anchors * per_anchor, 1, kernel_initializer=_kernel_init(),
                     bias_initializer=_constant(bias), name=f"{name}_conv")(x)
        return L.Reshape((height * width * anchors, per_anchor), name=f"{name}_reshape")(x)


def _kernel_init():
    import keras

    return keras.initializers.TruncatedNormal(stddev=0.03)  # the API's SSD conv_hyperparams


def _constant(value: float):
    import keras

    return keras.initializers.Constant(value)


def feature_map_sizes(model) -> list[tuple[int, int]]:
    """(height, width) of each feature map of a built detector, from its box predictors."""
    sizes, index = [], 0
    names = {layer.name for layer in model.layers}
    while f"box_predictor_{index}_depthwise" in names:
        shape = model.get_layer(f"box_predictor_{index}_depthwise").output.shape
        sizes.append((int(shape[1]), int(shape[2])))
        index += 1
    if not sizes:
        raise EdgeError(f"{model.name}: not an SSDLite detector (no box_predictor_0_depthwise layer)")
    return sizes


def detector_anchors(model, spec: AnchorSpec = SSD_ANCHORS):
    """The anchors [N, 4] (ycenter, xcenter, h, w) of a built detector, matching its outputs' order."""
    height, width = (int(d) for d in model.input.shape[1:3])
    anchors = generate_anchors(feature_map_sizes(model), spec, image_size=(height, width))
    predicted = int(model.get_layer("box_encodings").output.shape[1])
    if len(anchors) != predicted:
        raise EdgeError(f"{model.name}: {predicted} box predictions but {len(anchors)} anchors "
                        "(another anchor spec than the detector was built with?)")
    return anchors


def detector_summary(model) -> dict:
    """Feature maps ([height, width, anchors per location]), anchor count and classes of a detector."""
    maps = []
    for index, (height, width) in enumerate(feature_map_sizes(model)):
        per_location = model.get_layer(f"box_predictor_{index}_conv").filters // BOX_CODE_SIZE
        maps.append([height, width, per_location])
    return {"feature_maps": maps, "anchors": sum(h * w * a for h, w, a in maps),
            "classes": int(model.get_layer("class_predictions").output.shape[-1]) - 1,
            "background_class": 0}


def backbone_layers(model) -> list:
    """The layers of a detector that hold weights and belong to the backbone (not the SSD head)."""
    return [layer for layer in model.layers if layer.weights and not layer.name.startswith(HEAD_PREFIXES)]


def load_backbone_weights(model, path: str | Path, *, allow_missing: bool = False) -> int:
    """Copy the weights of same-named, same-shaped layers of the model in ``path`` into the backbone.

    Every backbone layer must find its match unless ``allow_missing`` (the reduced tail); returns how
    many layers were copied.
    """
    source = _load_keras(Path(path))
    by_name = {layer.name: layer for layer in source.layers}
    copied, missing = 0, []
    for layer in backbone_layers(model):
        other = by_name.get(layer.name)
        weights = other.get_weights() if other is not None else None
        if weights is None or [w.shape for w in weights] != [tuple(w.shape) for w in layer.weights]:
            missing.append(layer.name)
            continue
        layer.set_weights(weights)
        copied += 1
    if copied == 0 or (missing and not allow_missing):
        raise EdgeError(f"{path}: {len(missing)} of {copied + len(missing)} backbone layers of {model.name} "
                        f"have no same-named, same-shaped layer there (first: {', '.join(missing[:3])}); "
                        "expected a classification model of the same family and alpha")
    return copied


def _load_keras(path: Path):
    import keras

    if not path.is_file():
        raise EdgeError(f"{path}: backbone weights file does not exist")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file
        reason = str(error).splitlines()[0][:160]
        raise EdgeError(f"{path}: cannot be loaded as a Keras model ({reason})") from None
