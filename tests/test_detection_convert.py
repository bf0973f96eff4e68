"""Detector conversion (convert/detection.py): TFLite with TFLite_Detection_PostProcess, ONNX with
NonMaxSuppression, checked against decoding + NMS of the Keras outputs in numpy.

A tiny random-weight SSDLite (V2 0.35, 96 px, 10 classes), batch norm statistics from synthetic
detection images; the class bias of object class 3 on feature map 3 (one location, 6 anchors with one
centre) is raised so that 6 confident, heavily overlapping boxes exist and NMS has work to do.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_mobilenet.models.anchors import BOX_CODER

NAME = "ssdlite_mobilenet_v2"
CLASSES = 10
BOOSTED_CLASS = 3
SCORE_THRESHOLD = 0.05
TFLITE_FORMATS = ("fp32", "fp16", "dynamic", "int8")


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    import keras
    from PIL import Image

    from edge_mobilenet.data.detection import write_detection_set
    from edge_mobilenet.data.preprocess import get_preprocessing
    from edge_mobilenet.models.detection import detector_anchors
    from edge_mobilenet.models.registry import build_detector, get_detector
    from edge_mobilenet.train import calibrate_batch_norm

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("detset") / "set"
    write_detection_set(folder, count=10, size=96)
    files = sorted(folder.glob("*/images/*.png"))
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
    images = get_preprocessing(get_detector(NAME).preprocessing).apply(pixels).astype(np.float32)
    model = build_detector(NAME, alpha=0.35, size=96, classes=CLASSES)
    calibrate_batch_norm(model, images)
    conv = model.get_layer("class_predictor_3_conv")
    kernel, bias = conv.get_weights()
    bias[BOOSTED_CLASS + 1::CLASSES + 1] += 7.0
    conv.set_weights([kernel, bias])
    return model, detector_anchors(model), images


@pytest.fixture(scope="module")
def nms():
    from edge_mobilenet.convert.detection import NmsSettings

    return NmsSettings(score_threshold=SCORE_THRESHOLD, iou_threshold=0.5, max_detections=10)


@pytest.fixture(scope="module")
def artifacts(detector, nms, tmp_path_factory):
    from dataclasses import replace

    from edge_mobilenet.convert.detection import export_onnx_detector, export_tflite_detector

    model, anchors, images = detector
    folder = tmp_path_factory.mktemp("artifacts")
    files, facts = {}, {}
    for fmt in TFLITE_FORMATS:
        files[fmt] = folder / f"{fmt}.tflite"
        settings = replace(nms, clip_boxes=True) if fmt == "fp16" else nms  # clipping in a float graph
        facts[fmt] = export_tflite_detector(model, anchors, files[fmt], fmt=fmt, calibration=images, nms=settings)
    files["raw"] = folder / "raw.tflite"
    facts["raw"] = export_tflite_detector(model, anchors, files["raw"], fmt="fp32", nms=nms, raw=True)
    for name, int8 in (("onnx_fp32", False), ("onnx_int8", True)):
        files[name] = folder / f"{name}.onnx"
        facts[name] = export_onnx_detector(model, anchors, files[name], int8=int8, calibration=images,
                                           nms=replace(nms, clip_boxes=True))
    return files, facts


def run_tflite(path, image):
    from edge_mobilenet.runtimes.tflite import make_interpreter, quantize_input, tensor_spec

    interpreter = make_interpreter(path)
    runner = interpreter.get_signature_runner()
    spec = tensor_spec(runner.get_input_details()["input"])
    return {name: np.asarray(value) for name, value in runner(input=quantize_input(image[None], spec)).items()}


def run_onnx(path, image):
    from edge_mobilenet.runtimes.onnx import make_session

    session = make_session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": image[None]})))


def iou(a, b) -> float:
    top, left = np.maximum(a[:2], b[:2])
    bottom, right = np.minimum(a[2:], b[2:])
    inter = max(bottom - top, 0) * max(right - left, 0)
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


def numpy_detections(model, anchors, image, nms):
    """Decode + best object class + greedy class-agnostic NMS on the Keras outputs: (boxes, classes, scores)."""
    codes, logits = (np.asarray(t)[0] for t in model(image[None], training=False))
    boxes = BOX_CODER.decode(codes, anchors)
    objects = 1 / (1 + np.exp(-logits[:, 1:]))
    best, label = objects.max(axis=1), objects.argmax(axis=1)
    kept = []
    for index in np.argsort(-best, kind="stable"):
        if best[index] <= nms.score_threshold or len(kept) == nms.max_detections:
            break
        if all(iou(boxes[index], boxes[k]) <= nms.iou_threshold for k in kept):
            kept.append(index)
    kept = np.array(kept, dtype=int)
    return boxes[kept], label[kept], best[kept], int((best > nms.score_threshold).sum())


def check_four_outputs(outputs, max_detections, clipped):
    boxes, classes = outputs["detection_boxes"], outputs["detection_classes"]
    scores, count = outputs["detection_scores"], outputs["num_detections"]
    assert boxes.shape == (1, max_detections, 4) and classes.shape == scores.shape == (1, max_detections)
    assert count.shape == (1,)
    assert {a.dtype for a in (boxes, classes, scores, count)} == {np.dtype(np.float32)}
    n = int(count[0])
    assert 1 <= n <= max_detections
    assert np.all(boxes[0, :n, 0] <= boxes[0, :n, 2]) and np.all(boxes[0, :n, 1] <= boxes[0, :n, 3])
    if clipped:  # rows past num_detections are unspecified (the TFLite op leaves them uninitialised: NaN seen)
        assert np.all((boxes[0, :n] >= 0) & (boxes[0, :n] <= 1))
    assert np.all(np.diff(scores[0, :n]) <= 1e-6)
    assert np.all((classes[0, :n] >= 0) & (classes[0, :n] < CLASSES))
    return n


@pytest.mark.parametrize("fmt", TFLITE_FORMATS)
def test_tflite_formats_give_the_four_outputs(artifacts, detector, nms, fmt):
    files, facts = artifacts
    assert [o["name"] for o in facts[fmt]["outputs"]] == ["detection_boxes", "detection_classes",
                                                          "detection_scores", "num_detections"]
    assert facts[fmt]["ops"]["TFLite_Detection_PostProcess"] == 1
    outputs = run_tflite(files[fmt], detector[2][0])
    n = check_four_outputs(outputs, nms.max_detections, clipped=fmt == "fp16")
    assert outputs["detection_classes"][0, 0] == BOOSTED_CLASS and outputs["detection_scores"][0, 0] > 0.5
    assert n < 6  # the 6 boosted anchors share a centre: NMS suppresses some


def test_fp32_tflite_matches_numpy_decode_and_nms(artifacts, detector, nms):
    model, anchors, images = detector
    for image in images[:3]:
        outputs = run_tflite(artifacts[0]["fp32"], image)
        boxes, labels, scores, _ = numpy_detections(model, anchors, image, nms)
        n = int(outputs["num_detections"][0])
        assert n == len(boxes)
        np.testing.assert_allclose(outputs["detection_boxes"][0, :n], boxes, atol=1e-4)
        np.testing.assert_allclose(outputs["detection_scores"][0, :n], scores, atol=1e-5)
        np.testing.assert_array_equal(outputs["detection_classes"][0, :n], labels)


@pytest.mark.parametrize("fmt", ["int8", "fp16", "dynamic"])
def test_quantized_top_box_close_to_fp32(artifacts, detector, fmt):
    for image in detector[2][:3]:
        reference, other = run_tflite(artifacts[0]["fp32"], image), run_tflite(artifacts[0][fmt], image)
        assert other["detection_classes"][0, 0] == reference["detection_classes"][0, 0]
        # the 6 boosted anchors score nearly alike, so the top may be another of them: match it to the
        # fp32 model's decoded box of any anchor
        codes = run_tflite(artifacts[0]["raw"], image)["box_encodings"][0]
        decoded = BOX_CODER.decode(codes, detector[1])
        assert max(iou(other["detection_boxes"][0, 0], box) for box in decoded) > 0.8


def test_raw_outputs_are_the_keras_encodings_and_sigmoid_scores(artifacts, detector):
    model, anchors, images = detector
    files, facts = artifacts
    assert [(o["name"], o["shape"]) for o in facts["raw"]["outputs"]] == [
        ("box_encodings", [1, len(anchors), 4]), ("class_scores", [1, len(anchors), CLASSES + 1])]
    outputs = run_tflite(files["raw"], images[0])
    codes, logits = (np.asarray(t) for t in model(images[:1], training=False))
    np.testing.assert_allclose(outputs["box_encodings"], codes, atol=1e-4)
    np.testing.assert_allclose(outputs["class_scores"], 1 / (1 + np.exp(-logits)), atol=1e-5)


@pytest.mark.parametrize("fmt", ["fp32", "int8", "raw"])
def test_xnnpack_takes_everything_but_the_postprocess_op(artifacts, fmt):
    delegation = artifacts[1][fmt]["delegation"]
    assert delegation["partitions"] == 1
    expected = {} if fmt == "raw" else {"TFLite_Detection_PostProcess": 1}
    assert delegation["ops_outside"] == expected


def test_int8_tflite_keeps_io_int8_and_postprocess_float(artifacts):
    facts = artifacts[1]["int8"]
    assert facts["input"]["dtype"] == "int8"
    assert facts["ops"]["DEQUANTIZE"] == 2  # box encodings and scores, before the float custom op
    assert {o["dtype"] for o in facts["outputs"]} == {"float32"}


@pytest.mark.parametrize("name", ["onnx_fp32", "onnx_int8"])
def test_onnx_nms_matches_numpy(artifacts, detector, nms, name):
    model, anchors, images = detector
    files, facts = artifacts
    assert facts[name]["ops"]["NonMaxSuppression"] == 1
    for image in images[:3]:
        outputs = run_onnx(files[name], image)
        n = check_four_outputs(outputs, nms.max_detections, clipped=True)
        boxes, labels, scores, above = numpy_detections(model, anchors, image, nms)
        assert above > n  # overlapping confident boxes were suppressed
        if name == "onnx_fp32":
            assert n == len(boxes)
            np.testing.assert_allclose(outputs["detection_boxes"][0, :n], np.clip(boxes, 0, 1), atol=1e-4)
            np.testing.assert_allclose(outputs["detection_scores"][0, :n], scores, atol=1e-5)
            np.testing.assert_array_equal(outputs["detection_classes"][0, :n], labels)
            assert np.all(outputs["detection_scores"][0, n:] == 0)
        else:
            assert outputs["detection_classes"][0, 0] == labels[0]
            decoded = np.clip(BOX_CODER.decode(np.asarray(model(image[None])[0])[0], anchors), 0, 1)
            assert max(iou(outputs["detection_boxes"][0, 0], box) for box in decoded) > 0.8  # near-tied tops


def test_onnx_int8_quantizes_only_backbone_and_heads(artifacts):
    facts = artifacts[1]["onnx_int8"]
    assert facts["quantization"]["scheme"] == "U8S8" and facts["ops"]["QuantizeLinear"] > 0
    import onnx

    graph = onnx.load(str(artifacts[0]["onnx_int8"])).graph
    post = [node for node in graph.node if node.name.startswith("postprocess/")]
    assert post and not any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in post)
