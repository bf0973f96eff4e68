"""SSDLite detectors: sizes against the papers, anchors, the box coder, backbone weights by name."""

import json
import math

import numpy as np
import pytest

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.models.anchors import (BOX_CODER, SSD_ANCHORS, anchors_per_location, box_specs,
                                           center_size_to_corners, generate_anchors)
from edge_mobilenet.models.registry import (DETECTORS, REGISTRY, build_detector, build_model, get_entry,
                                            make_detector_config, model_names)

# MobileNetV2 paper, Table 6 (COCO, 320x320): millions of params, billions of multiply-adds. The TF
# Object Detection API configs behind it have num_classes 90, so 91 class outputs with the background.
PAPER_TABLE_6 = {"ssdlite_mobilenet_v2": (4.3, 0.8), "ssdlite_mobilenet_v1": (5.1, 1.3)}
SIZES_320 = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


@pytest.mark.parametrize("name", sorted(PAPER_TABLE_6))
def test_describe_totals_match_the_v2_paper_table_6(cli, name):
    """Measured: V2 4.475M params (+4.1%), 0.804B MACs (+0.5%); V1 5.228M (+2.5%), 1.322B (+1.7%).
    Neither the BN-folded biases (kernels alone: 4.447M / 5.207M) nor the background class (16k params
    a class) explains V2's params gap; the table gives two digits and no per-layer counts."""
    result = cli("describe", name, "--size", "320", "--classes", "90", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    params_m, macs_b = PAPER_TABLE_6[name]
    assert report["params"] / 1e6 == pytest.approx(params_m, rel=0.05)
    assert report["macs"] / 1e9 == pytest.approx(macs_b, rel=0.05)
    assert report["detection"] == {"feature_maps": [[h, w, a] for (h, w), a in
                                                    zip(SIZES_320, [3, 6, 6, 6, 6, 6])],
                                   "anchors": 2034, "classes": 90, "background_class": 0}
    assert report["outputs"] == [{"name": "box_encodings", "shape": [None, 2034, 4]},
                                 {"name": "class_predictions", "shape": [None, 2034, 91]}]
    pairs = {s["depthwise"]: s["pointwise"] for s in report["separable_blocks"]}
    assert pairs["box_predictor_3_depthwise"] == "box_predictor_3_conv"
    assert pairs["extra_2_depthwise"] == "extra_2_pointwise"


def test_anchors_at_320_count_shape_and_scales():
    assert anchors_per_location(SSD_ANCHORS, 6) == [3, 6, 6, 6, 6, 6]
    anchors = generate_anchors(SIZES_320)
    assert anchors.shape == (2034, 4) and anchors.dtype == np.float32
    centers, sizes = anchors[:, :2], anchors[:, 2:]
    assert centers.min() == pytest.approx(0.5 / 20) and centers.max() == pytest.approx(19.5 / 20)
    scales = np.sqrt(sizes[:, 0] * sizes[:, 1])  # sqrt(h * w) is the anchor's scale whatever its ratio
    assert scales.min() == pytest.approx(0.1) and scales.max() == pytest.approx(math.sqrt(0.95))
    assert sizes[:, 0].max() == pytest.approx(0.95 * math.sqrt(3), rel=1e-6)  # scale 0.95, ratio 1/3
    layer_scales = [sorted({round(s, 6) for s, _ in boxes}) for boxes in box_specs(SSD_ANCHORS, 6)]
    assert layer_scales[0] == [0.1, 0.2]
    assert layer_scales[1] == [0.35, round(math.sqrt(0.35 * 0.5), 6)]


def test_anchors_follow_the_built_model_at_a_small_size():
    from edge_mobilenet.models.detection import detector_anchors, feature_map_sizes

    model = build_detector("ssdlite_mobilenet_v2", alpha=0.35, size=64, classes=2)
    assert feature_map_sizes(model) == [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1), (1, 1)]
    anchors = detector_anchors(model)
    assert anchors.shape == (4 * 4 * 3 + 2 * 2 * 6 + 4 * 6, 4)
    assert model.get_layer("box_encodings").output.shape[1] == len(anchors)


def test_first_anchors_by_hand():
    anchors = generate_anchors([(2, 2)] + [(1, 1)] * 5)
    root2 = math.sqrt(2)
    expected = [
        (0.25, 0.25, 0.1, 0.1),                    # lowest layer: scale 0.1, ratio 1
        (0.25, 0.25, 0.2 / root2, 0.2 * root2),    # scale 0.2, ratio 2 (width / height)
        (0.25, 0.25, 0.2 * root2, 0.2 / root2),    # scale 0.2, ratio 0.5
        (0.25, 0.75, 0.1, 0.1),                    # next location along x
    ]
    np.testing.assert_allclose(anchors[:4], expected, rtol=1e-6)
    second = 2 * 2 * 3  # layer 1, 1x1 grid: scale 0.35 at ratios 1, 2, 0.5, 3, 1/3, then sqrt(0.35 * 0.5)
    np.testing.assert_allclose(anchors[second], (0.5, 0.5, 0.35, 0.35), rtol=1e-6)
    np.testing.assert_allclose(anchors[second + 3], (0.5, 0.5, 0.35 / math.sqrt(3), 0.35 * math.sqrt(3)),
                               rtol=1e-6)
    interpolated = math.sqrt(0.35 * 0.5)
    np.testing.assert_allclose(anchors[second + 5], (0.5, 0.5, interpolated, interpolated), rtol=1e-6)
    np.testing.assert_allclose(anchors[-1], (0.5, 0.5, math.sqrt(0.95), math.sqrt(0.95)), rtol=1e-6)


def test_anchors_stay_square_in_pixels_on_a_wide_image():
    anchors = generate_anchors([(2, 4)] + [(1, 2)] * 5, image_size=(300, 600))
    assert tuple(anchors[0]) == pytest.approx((0.25, 0.125, 0.1, 0.05))  # 30 x 30 pixels


def test_box_coder_round_trip_and_known_codes():
    rng = np.random.default_rng(0)
    anchors = generate_anchors(SIZES_320)
    ymin, xmin = rng.uniform(0, 0.8, (2, len(anchors)))
    height, width = rng.uniform(0.01, 0.2, (2, len(anchors)))
    boxes = np.stack([ymin, xmin, ymin + height, xmin + width], axis=-1)
    codes = BOX_CODER.encode(boxes, anchors)
    assert codes.shape == boxes.shape
    np.testing.assert_allclose(BOX_CODER.decode(codes, anchors), boxes, atol=1e-5)
    np.testing.assert_allclose(BOX_CODER.encode(center_size_to_corners(anchors), anchors), 0, atol=1e-5)
    anchor = np.array([[0.5, 0.5, 0.2, 0.4]])
    box = center_size_to_corners([[0.52, 0.46, 0.2 * math.e, 0.4]])
    np.testing.assert_allclose(BOX_CODER.encode(box, anchor), [[1.0, -1.0, 5.0, 0.0]], atol=1e-6)


def test_backbone_weights_load_by_name_from_a_classifier(tmp_path):
    classifier = build_model("mobilenet_v2", alpha=0.35, size=96, classes=10)
    rng = np.random.default_rng(1)
    classifier.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in classifier.get_weights()])
    path = tmp_path / "classifier.keras"
    classifier.save(path)
    detector = build_detector("ssdlite_mobilenet_v2", alpha=0.35, size=96, classes=3, backbone_weights=path)
    for name in ("Conv1", "block_13_expand", "block_13_expand_BN", "Conv_1"):
        ours, theirs = detector.get_layer(name).get_weights(), classifier.get_layer(name).get_weights()
        assert len(ours) == len(theirs) > 0
        for mine, source in zip(ours, theirs):
            np.testing.assert_array_equal(mine, source)
    with pytest.raises(EdgeError, match="same family and alpha"):
        build_detector("ssdlite_mobilenet_v2", alpha=0.5, size=96, classes=3, backbone_weights=path)
    with pytest.raises(EdgeError, match="does not exist"):
        build_detector("ssdlite_mobilenet_v2", alpha=0.35, size=96, backbone_weights=tmp_path / "no.keras")


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_forward_pass_shapes_at_96(name):
    from edge_mobilenet.models.detection import detector_anchors

    model = build_detector(name, alpha=0.5, size=96, classes=3)
    n = 6 * 6 * 3 + 3 * 3 * 6 + 2 * 2 * 6 + 3 * 6
    assert len(detector_anchors(model)) == n
    batch = np.random.default_rng(0).uniform(0, 1, (1, 96, 96, 3)).astype(np.float32)
    boxes, classes = model.predict(batch, verbose=0)
    assert boxes.shape == (1, n, 4) and classes.shape == (1, n, 4)
    assert model.output_names == ["box_encodings", "class_predictions"]
    names = {layer.name for layer in model.layers}
    assert {"extra_2_reduce", "extra_5_pointwise_relu6", "box_predictor_0_depthwise_bn",
            "class_predictor_5_conv", *DETECTORS[name].spec.taps} <= names


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_stride8_map_taps_the_expansion_of_the_first_stride16_block(name):
    from edge_mobilenet.models.detection import detector_anchors, feature_map_sizes

    plain = build_detector(name, alpha=0.5, size=96, classes=3)
    model = build_detector(name, alpha=0.5, size=96, classes=3, stride8_map=True)
    assert model.name.endswith("_s8_0.5_96")
    tap = DETECTORS[name].spec.stride8_tap
    assert tuple(model.get_layer(tap).output.shape[1:3]) == (12, 12)  # 96 / 8
    assert feature_map_sizes(model) == [(12, 12)] + feature_map_sizes(plain)
    # the stride-8 map takes the reduced lowest layer's 3 anchors; the former first map gets 6
    assert len(detector_anchors(model)) == 12 * 12 * 3 + 6 * 6 * 6 + 3 * 3 * 6 + 2 * 2 * 6 + 3 * 6
    assert model.count_params() > plain.count_params()


def test_reduced_tail_halves_the_layers_after_c4(tmp_path):
    from edge_mobilenet.models.detection import load_backbone_weights

    full = build_detector("ssdlite_mobilenet_v3_small", size=64, classes=2)
    reduced = build_detector("ssdlite_mobilenet_v3_small", size=64, classes=2, reduced_tail=True)
    for model, c5 in ((full, 576), (reduced, 288)):
        assert model.get_layer("expanded_conv_8_expand_act").output.shape[-1] == 288  # C4 keeps its width
        assert model.get_layer("conv_1_act").output.shape[-1] == c5
    assert reduced.name == "ssdlite_mobilenet_v3_small_reduced_1_64"
    path = tmp_path / "v3_small.keras"
    build_model("mobilenet_v3_small", size=64, classes=5).save(path)
    copied = load_backbone_weights(reduced, path, allow_missing=True)  # up to C4's block
    assert 0 < copied < load_backbone_weights(full, path)
    np.testing.assert_array_equal(reduced.get_layer("expanded_conv_8_expand").get_weights()[0],
                                  full.get_layer("expanded_conv_8_expand").get_weights()[0])
    with pytest.raises(EdgeError, match="backbone layers"):
        load_backbone_weights(reduced, path)


def test_registry_keeps_detectors_apart_from_classifiers():
    assert not set(DETECTORS) & set(REGISTRY) and model_names() == list(REGISTRY)
    entry = DETECTORS["ssdlite_mobilenet_v3_large"]
    assert (entry.task, entry.preprocessing, entry.alpha, entry.size, entry.classes) == (
        "detection", "raw", 1.0, 320, 90)
    assert REGISTRY["mobilenet_v2"].task == "classification"
    assert DETECTORS["ssdlite_mobilenet_v1"].preprocessing == "symmetric"
    with pytest.raises(EdgeError, match="is a detection model"):
        get_entry("ssdlite_mobilenet_v2")
    with pytest.raises(EdgeError, match="classes=0"):
        make_detector_config("ssdlite_mobilenet_v2", classes=0)
    with pytest.raises(EdgeError, match="size=20"):
        make_detector_config("ssdlite_mobilenet_v1", size=20)
    with pytest.raises(EdgeError, match="reduced_tail=True"):
        make_detector_config("ssdlite_mobilenet_v2", reduced_tail=True)
    with pytest.raises(EdgeError, match="unknown detector"):
        make_detector_config("ssdlite_mobilenet_v9")
