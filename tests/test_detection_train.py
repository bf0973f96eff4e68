"""Detection training and host-side post-processing: matching, loss, NMS, decoding, the saved record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.models.anchors import BOX_CODER, center_size_to_corners
from edge_mobilenet.runtimes.detection import NmsSettings, decode_boxes, decode_detections
from edge_mobilenet.train_detection import (IGNORED, NEGATIVE, AugmentSettings, DetectionTrainSettings,
                                            anchor_targets, match_anchors, zoom_and_shift)

ANCHORS = np.array([[0.25, 0.25, 0.5, 0.5],    # exactly the box below
                    [0.30, 0.25, 0.5, 0.5],    # shifted: IoU 0.82 -> positive
                    [0.25, 0.25, 0.5, 0.3],    # IoU 0.6 -> positive
                    [0.25, 0.25, 0.5, 0.22],   # IoU 0.44 -> ignored
                    [0.75, 0.75, 0.5, 0.5],    # far -> negative
                    [0.80, 0.80, 0.1, 0.1],    # the best anchor of the small box (IoU < 0.4): forced
                    [0.10, 0.90, 0.1, 0.1]], np.float32)
BOXES = np.array([[0.0, 0.0, 0.5, 0.5], [0.76, 0.76, 0.9, 0.9]], np.float32)


def test_matching_thresholds_and_forced_best_anchor():
    matches = match_anchors(BOXES, ANCHORS)
    assert matches.tolist() == [0, 0, 0, IGNORED, NEGATIVE, 1, NEGATIVE]
    codes, labels = anchor_targets(BOXES, np.array([3, 7]), ANCHORS)
    assert labels.tolist() == [4, 4, 4, -1, 0, 8, 0]
    np.testing.assert_allclose(codes[0], 0, atol=1e-5)
    np.testing.assert_allclose(BOX_CODER.decode(codes[5], ANCHORS[5]), BOXES[1], atol=1e-5)
    assert (codes[[3, 4, 6]] == 0).all()
    assert (match_anchors(np.zeros((0, 4)), ANCHORS) == NEGATIVE).all()


def test_decoding_inverts_encoding():
    rng = np.random.default_rng(0)
    anchors = np.column_stack([rng.uniform(0.2, 0.8, (50, 2)), rng.uniform(0.1, 0.6, (50, 2))])
    boxes = center_size_to_corners(np.column_stack([rng.uniform(0.2, 0.8, (50, 2)), rng.uniform(0.05, 0.5, (50, 2))]))
    codes = BOX_CODER.encode(boxes, anchors)
    np.testing.assert_allclose(decode_boxes(codes, anchors), boxes, atol=1e-6)
    np.testing.assert_allclose(decode_boxes(codes, anchors), BOX_CODER.decode(codes, anchors), atol=1e-6)


def test_zoom_and_shift_moves_pixels_with_boxes_and_keeps_boxes_whole():
    rng = np.random.default_rng(0)
    image = np.zeros((96, 96, 3), np.float32)
    image[24:48, 48:72] = 1.0  # the box below, in pixels
    for _ in range(20):
        pixels, (box,) = zoom_and_shift(image, np.array([[0.25, 0.5, 0.5, 0.75]], np.float32), rng, (0.75, 1.33))
        rows, columns = np.nonzero(pixels[..., 0] > 0.5)
        np.testing.assert_allclose([rows.min(), columns.min(), rows.max() + 1, columns.max() + 1], box * 96, atol=1.0)
    spread = np.array([[0.0, 0.0, 0.3, 0.3], [0.7, 0.6, 1.0, 1.0]], np.float32)  # no room to zoom in
    for _ in range(200):
        _, boxes = zoom_and_shift(image, spread, rng, (0.75, 1.33))
        assert boxes.min() >= -1e-6 and boxes.max() <= 1 + 1e-6
    assert zoom_and_shift(image, np.zeros((0, 4), np.float32), rng, (0.75, 1.33))[0].shape == image.shape


def _logits(scores):
    """Per-anchor class scores [N, C] -> logits [N, C + 1] whose sigmoid is those scores."""
    scores = np.clip(np.asarray(scores, np.float64), 1e-6, 1 - 1e-6)
    return np.column_stack([np.full(len(scores), -10.0), np.log(scores / (1 - scores))])


def test_nms_per_class_and_threshold():
    anchors = np.array([[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])
    codes = np.zeros((4, 4))
    scores = [[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.05, 0.0]]  # 0 and 1 overlap (class 0), 2 is class 1
    (found,) = decode_detections(codes, _logits(scores), anchors, score_threshold=0.1)
    assert found.classes.tolist() == [0, 1] and np.allclose(found.scores, [0.9, 0.7])
    np.testing.assert_allclose(found.boxes[0], [0.2, 0.2, 0.4, 0.4], atol=1e-6)
    (low,) = decode_detections(codes, _logits(scores), anchors, score_threshold=0.01)
    assert np.allclose(sorted(low.scores), [0.05, 0.7, 0.9], atol=1e-6)
    (fast,) = decode_detections(codes, _logits(scores), anchors,
                                settings=NmsSettings(score_threshold=0.1, regular_nms=False))
    assert fast.classes.tolist() == [0]  # class-agnostic: the class-1 box at the same place is suppressed
    (clipped,) = decode_detections(np.zeros((1, 4)), _logits([[0.9]]), np.array([[0.95, 0.95, 0.3, 0.3]]))
    assert clipped.boxes.max() <= 1.0


def test_bad_settings_are_one_line_errors(tmp_path):
    for options, text in (({"model": "mobilenet_v2"}, "not a detector"), ({"epochs": 0}, "--epochs"),
                          ({"alpha": -1.0}, "alpha"), ({"data_dir": str(tmp_path)}, "train/ and val/"),
                          ({"learning_rate": float("nan")}, "--learning-rate"),
                          ({"augment": AugmentSettings(zoom=(1.2, 1.5))}, "augment.zoom")):
        with pytest.raises(EdgeError, match=text) as caught:
            DetectionTrainSettings(**options)
        assert "\n" not in str(caught.value)
    with pytest.raises(EdgeError, match="score_threshold"):
        NmsSettings(score_threshold=1.5)


def test_loss_decreases_and_training_saves_a_reloadable_model(tmp_path, cli):
    import keras

    from edge_mobilenet.models.detection import detector_anchors
    from edge_mobilenet.train_detection import _build, _make_step, dataset_folder, load_split
    from edge_mobilenet.data.preprocess import get_preprocessing

    settings = DetectionTrainSettings(alpha=0.35, size=64, synthetic_count=8, epochs=1, batch_size=4,
                                      weights=None, output_dir=str(tmp_path), progress=False)
    keras.utils.set_random_seed(0)
    folder, _ = dataset_folder(settings)
    model = _build(settings, 10)
    anchors = detector_anchors(model)
    train = load_split(folder / "train", 64, get_preprocessing("symmetric"), anchors, settings.matcher)
    step = _make_step(model, keras.optimizers.Adam(3e-3), settings.loss)
    losses = [float(step(train.images, train.box_targets, train.class_targets)[0]) for _ in range(10)]
    assert losses[-1] < losses[0] * 0.8 and all(np.diff(losses) < 0), losses

    result = cli("train", "--model", "ssdlite_mobilenet_v2", "--alpha", "0.35", "--size", "64", "--images", "8",
                 "--epochs", "1", "--batch-size", "4", "--weights", "none", "--output", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert set(record) >= {"model_path", "map", "map50", "map75", "seconds"}
    saved = json.loads((tmp_path / f"{settings.stem}.metrics.json").read_text())
    assert saved["task"] == "detection" and set(saved["metrics"]) >= {"map", "map50", "map75"}
    assert saved["classes"] == 10 and saved["box_coder"]["scale_factors"] == [10.0, 10.0, 5.0, 5.0]
    assert saved["nms"]["iou_threshold"] == 0.6 and saved["dataset"]["count"] == 8
    assert saved["settings"]["stride8_map"] and saved["settings"]["bn_momentum"] == 0.9
    assert saved["backbone_weights"] == {"path": None, "sha256": None}
    reloaded = keras.models.load_model(record["model_path"], compile=False)
    boxes, logits = reloaded(train.images[:1], training=False)
    assert boxes.shape == (1, len(anchors), 4) and logits.shape == (1, len(anchors), 11)


def test_quantize_writes_detection_artifacts_with_four_outputs_and_map(trained_detector, tmp_path, cli):
    from edge_mobilenet.contracts.manifest import Manifest
    from edge_mobilenet.convert.detection import OUTPUT_NAMES

    args = ("quantize", "--model", trained_detector, "--output", tmp_path, "--formats", "fp32,int8,onnx-int8")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    entries = {entry.format: entry for entry in Manifest(tmp_path).entries}  # read back through validation
    assert set(entries) == {"fp32", "int8", "onnx-int8"}
    for entry in entries.values():
        assert entry.task == "detection" and [o.name for o in entry.outputs] == list(OUTPUT_NAMES)
        assert entry.outputs[0].shape == (1, 10, 4) and entry.outputs[3].shape == (1,)
        assert set(entry.validation.metrics) == set(entry.validation.float_metrics) == {"map", "map50", "map75"}
        assert entry.validation.eval_images == 3  # the val split of 16 images
        detection = entry.facts["detection"]
        assert detection["box_coder"]["scale_factors"] == [10.0, 10.0, 5.0, 5.0]
        assert detection["nms"]["max_detections"] == 10 and detection["anchors"]["count"] == 8 * 8 * 3 + 4 * 4 * 6 + 2 * 2 * 6 + 4 * 6  # stride 8 to 1x1
    assert entries["fp32"].validation.metrics == entries["fp32"].validation.float_metrics
    assert entries["int8"].input.dtype == "int8" and entries["int8"].calibration.count == 13
    assert entries["int8"].facts["delegation"]["ops_outside"] == {"TFLite_Detection_PostProcess": 1}
    assert entries["onnx-int8"].facts["export"]["ops"]["NonMaxSuppression"] == 1
    again = cli(*args)
    assert again.exit_code == 0 and again.output.count(" cached ") == 3


def test_quantize_detector_bad_input_is_one_line(trained_detector, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quantize", *map(str, args)],
                                capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("edge-bench: error:")]
        assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        return errors[0]

    assert "--target-accuracy for detectors searches int8 TFLite only (on mAP); drop onnx-int8" in run(
        "--model", trained_detector, "--output", tmp_path, "--formats", "int8,onnx-int8", "--target-accuracy", "99%")
    copy = tmp_path / "copy"
    copy.mkdir()
    model = Path(trained_detector)
    for name in (model.name, f"{model.stem}.metrics.json"):
        shutil.copy(model.with_name(name), copy / name)
    record = json.loads((copy / f"{model.stem}.metrics.json").read_text())
    record["dataset"]["path"] = str(tmp_path / "gone")
    (copy / f"{model.stem}.metrics.json").write_text(json.dumps(record))
    assert f"{tmp_path / 'gone' / 'train'}: the train split" in run("--model", copy / model.name, "--output", tmp_path)
    record["box_coder"]["scale_factors"] = [1, 1, 1, 1]
    (copy / f"{model.stem}.metrics.json").write_text(json.dumps(record))
    assert "box_coder.scale_factors" in run("--model", copy / model.name, "--output", tmp_path)


def test_bench_local_scores_detection_artifacts_by_map(detector_artifacts, tmp_path):
    import subprocess
    import sys

    results = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "bench", str(detector_artifacts), "--device",
                          "local", "--quick", "--min-runs", "3", "--output", str(results)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    runs = {r["format"]: r for r in json.loads(results.read_text())["runs"]}
    assert set(runs) == {"fp32", "int8", "onnx-int8"}
    for record in runs.values():
        assert record["task"] == "detection" and record["accuracy"]["images"] == 3
        assert set(record["accuracy"]) >= {"map", "map50", "map75"}
    assert runs["int8"]["accuracy"]["float_map"] == runs["fp32"]["accuracy"]["map"]
    assert "delta_map_vs_float" in runs["onnx-int8"]["accuracy"] and "mAP" in run.stderr
    manifest = {a["format"]: a for a in json.loads((detector_artifacts / "manifest.json").read_text())["artifacts"]}
    assert runs["fp32"]["accuracy"]["map"] == manifest["fp32"]["validation"]["metrics"]["map"]  # same images
    for name, value in (("old.json", 0.5), ("new.json", 0.45)):  # a 5-point mAP drop between two files
        data = json.loads(results.read_text())
        for record in data["runs"]:
            record["accuracy"]["map"] = value
        (tmp_path / name).write_text(json.dumps(data))
    compare = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "compare", str(tmp_path / "old.json"),
                              str(tmp_path / "new.json"), "--fail-on", "map:1pt"], capture_output=True, text=True)
    assert compare.returncode != 0 and "map -5.00pt" in compare.stdout + compare.stderr, compare.stdout
    same = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "compare", str(tmp_path / "old.json"),
                           str(tmp_path / "old.json"), "--fail-on", "map:1pt"], capture_output=True, text=True)
    assert same.returncode == 0, same.stderr


def test_auto_backbone_weights_are_the_family_classifier_in_the_output_folder(tmp_path):
    from edge_mobilenet.models.registry import build_model
    from edge_mobilenet.train_detection import backbone_weights

    path = tmp_path / "mobilenet_v2_0.35_32.keras"
    build_model("mobilenet_v2", alpha=0.35, size=32, classes=10).save(path)
    settings = DetectionTrainSettings(alpha=0.35, size=64, output_dir=str(tmp_path))
    assert settings.weights == "auto" and backbone_weights(settings) == str(path)  # found, not retrained
    assert backbone_weights(DetectionTrainSettings(weights=None)) is None
    given = DetectionTrainSettings(weights=str(tmp_path / "other.keras"))
    assert backbone_weights(given) == str(tmp_path / "other.keras")


def test_bad_coco_entry_in_training_data_is_one_line_or_skipped_with_skip_bad(tmp_path, cli):
    import subprocess
    import sys

    from edge_mobilenet.data.detection import write_detection_set

    folder = tmp_path / "set"
    write_detection_set(folder, count=10, size=64)
    instances = folder / "train" / "instances.json"
    data = json.loads(instances.read_text())
    data["annotations"][1]["bbox"] = [3, 4, 0, 5]  # zero width
    instances.write_text(json.dumps(data))
    args = ["train", "--model", "ssdlite_mobilenet_v2", "--alpha", "0.35", "--size", "64", "--data", str(folder),
            "--epochs", "1", "--batch-size", "4", "--weights", "none", "--output", str(tmp_path / "out"), "--quiet"]
    failed = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", *args], capture_output=True, text=True)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("edge-bench: error:")]
    assert failed.returncode != 0 and len(errors) == 1 and "Traceback" not in failed.stderr
    assert f"{instances}: annotations[1]" in errors[0] and "zero area" in errors[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.keras"))  # nothing written
    result = cli(*args, "--skip-bad")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "ssdlite_mobilenet_v2_0.35_64.metrics.json").read_text())
    assert saved["skipped_bad_entries"]["train"]["annotations"] == 1
    assert saved["skipped_bad_entries"]["val"]["annotations"] == 0


@pytest.mark.parametrize("suffix", ["int8.tflite", "int8.onnx"])
def test_quant_report_gives_the_per_layer_error_of_a_detectors_int8_part(trained_detector, detector_artifacts,
                                                                        tmp_path, suffix):
    """The backbone and heads of an int8 detector, layer by layer, named by the Keras model's layers (the
    clipped box predictor convs as the artifact has them), calibrated on the images its manifest records."""
    import subprocess
    import sys

    import keras

    artifact = next(detector_artifacts.glob(f"*.{suffix}"))
    result = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quant-report", str(artifact), "--float",
                             trained_detector, "--output", str(tmp_path), "--debug-count", "4", "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "oneDNN" not in result.stderr and "Created TensorFlow Lite XNNPACK" not in result.stderr
    report = json.loads(result.stdout)
    layers = {layer.name for layer in keras.models.load_model(trained_detector, compile=False).layers}
    named = {row["layer"] for row in report["layers"]}
    assert report["task"] == "detection" and report["calibration"]["count"] == 13  # the train split
    assert len(named & layers) >= 20 and all(np.isfinite(row["rmse_over_scale"]) for row in report["layers"])
    assert any(name.startswith("block_") for name in named) and any("class_predictor" in n for n in named)
    assert any(name.startswith("box_predictor_") for name in named)
    assert all(Path(f).is_file() for f in report["files"])


def test_a_recipe_trains_a_detector_once_and_quantizes_it(tmp_path, cli):
    """A detector row of a recipe (as converters/default.toml has) is trained on the synthetic set, converted,
    validated and recorded; a second run neither retrains nor rebuilds."""
    from edge_mobilenet.contracts.manifest import Manifest

    recipe = tmp_path / "recipe.toml"
    artifacts, models = tmp_path / "artifacts", tmp_path / "models"
    recipe.write_text(f'output = "{artifacts}"\nmodels_dir = "{models}"\n'
                      'formats = ["fp32", "int8"]\n[[model]]\nname = "ssdlite_mobilenet_v2"\nalpha = 0.35\n'
                      'size = 64\ntrain = { epochs = 1, images = 16, batch_size = 4, weights = "none" }\n')
    first = cli("quantize", "--recipe", recipe, "--quiet")
    assert first.exit_code == 0, first.output
    assert "training ssdlite_mobilenet_v2_0.35_64 on the synthetic digits detection set" in first.output
    model = models / "ssdlite_mobilenet_v2_0.35_64.keras"
    saved = json.loads(model.with_name(f"{model.stem}.metrics.json").read_text())
    assert saved["train_images"] + saved["val_images"] == 16 and saved["settings"]["epochs"] == 1
    entries = {entry.format: entry for entry in Manifest(artifacts).entries}
    assert set(entries) == {"fp32", "int8"} and {e.task for e in entries.values()} == {"detection"}
    stamp = model.stat().st_mtime_ns
    again = cli("quantize", "--recipe", recipe, "--quiet")
    assert again.exit_code == 0 and "training ssdlite" not in again.output and again.output.count(" cached ") == 2
    assert model.stat().st_mtime_ns == stamp


def test_raw_outputs_quantize_validate_and_bench_decoded_on_the_host(trained_detector, tmp_path, cli):
    """--detection-outputs raw: box encodings + class scores (int8 ones dequantized by their specs), decoded on
    the host with the anchors the manifest records; fp32 scores what the Keras model decoded the same way."""
    import subprocess
    import sys

    from edge_mobilenet.contracts.manifest import Manifest

    result = cli("quantize", "--model", trained_detector, "--output", tmp_path, "--formats", "fp32,int8",
                 "--detection-outputs", "raw", "--quiet")
    assert result.exit_code == 0, result.output
    entries = {entry.format: entry for entry in Manifest(tmp_path).entries}
    assert {e.file for e in entries.values()} == {"ssdlite_mobilenet_v2_0.35_64_raw.fp32.tflite",
                                                  "ssdlite_mobilenet_v2_0.35_64_raw.int8.tflite"}
    for entry in entries.values():
        assert [o.name for o in entry.outputs] == ["box_encodings", "class_scores"]
        assert entry.facts["detection"]["postprocess"] is None
        assert entry.facts["detection"]["anchors"]["feature_maps"] == [[8, 8], [4, 4], [2, 2]] + [[1, 1]] * 4
    assert entries["int8"].outputs[0].dtype == "int8" and entries["int8"].outputs[0].scale > 0
    fp32 = entries["fp32"].validation
    for name, value in fp32.metrics.items():
        assert abs(value - fp32.float_metrics[name]) < 1e-3, (name, value, fp32.float_metrics)
    results = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "bench", str(tmp_path), "--device", "local",
                          "--quick", "--min-runs", "3", "--output", str(results)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    runs = {r["format"]: r for r in json.loads(results.read_text())["runs"]}
    for fmt, entry in entries.items():  # the device's raw outputs decoded on the host = quantize's validation
        assert runs[fmt]["accuracy"]["map"] == pytest.approx(entry.validation.metrics["map"], abs=1e-4)


def test_target_accuracy_searches_int8_tflite_on_map(trained_detector, tmp_path, cli):
    """--target-accuracy for a detector: the mAP search is recorded; layers it keeps in float are float in the
    artifact (a denylisted layer's kernel is stored in float: the file grows)."""
    from edge_mobilenet.contracts.manifest import Manifest
    from edge_mobilenet.convert.detection_batch import (detection_record, export_settings, load_detector_source,
                                                        load_images)
    from edge_mobilenet.convert.detection_target import DetectorQuantizer, ranking

    result = cli("quantize", "--model", trained_detector, "--output", tmp_path, "--formats", "int8",
                 "--target-accuracy", "99%", "--quiet")
    assert result.exit_code == 0, result.output
    assert "accuracy-aware search on mAP" in result.output
    entry, = Manifest(tmp_path).entries
    record = entry.facts["recipe"]["accuracy_aware"]
    assert record["metric"] == "map" and record["met"] and record["target"] == "99%"
    assert record["float_map"] == entry.validation.float_metrics["map"]
    assert record["steps"][0]["float_layers"] == 0 and record["threshold_map"] <= record["map"]
    source = load_detector_source(Path(trained_detector), detection_record(Path(trained_detector)))
    images = load_images(source, source.dataset_folder / "train", 8, 0).inputs
    ranked = ranking(source, images, export_settings(), raw=False)
    assert ranked and ranked[0].rmse_over_scale >= ranked[-1].rmse_over_scale
    quantizer = DetectorQuantizer(source, images, export_settings(), raw=False)
    plain, kept = quantizer.quantize([]), quantizer.quantize([r.node for r in ranked[:20]])
    assert len(kept) > len(plain)
