"""edge-bench quantize: real TFLite conversion and LiteRT inference of a trained tiny model."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_mobilenet.contracts.manifest import read_manifest
from edge_mobilenet.train import TrainSettings, train_model

TFLITE_FORMATS = "fp32,fp16,dynamic,int8"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """mobilenet_v1 0.25/32 trained briefly on the digits (about 85-90% validation accuracy)."""
    folder = tmp_path_factory.mktemp("models")
    metrics = train_model(TrainSettings(epochs=10, output_dir=str(folder), progress=False))
    return Path(metrics["model_path"])


@pytest.fixture(scope="module")
def artifacts(trained, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("artifacts")
    _quantize("--model", trained, "--formats", TFLITE_FORMATS, "--count", 100, "--output", output)
    return output


def _quantize(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--quiet",
                             *[str(a) for a in args]], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _entries(folder):
    return {e.format: e for e in read_manifest(folder).entries}


def test_manifest_describes_every_artifact(artifacts, trained):
    entries = _entries(artifacts)
    assert set(entries) == set(TFLITE_FORMATS.split(","))
    import hashlib

    for entry in entries.values():
        data = (artifacts / entry.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256 and len(data) == entry.size_bytes
        assert entry.source_sha256 == hashlib.sha256(trained.read_bytes()).hexdigest()
        assert entry.input.shape == (1, 32, 32, 3) and entry.task == "classification"
        assert entry.preprocessing["name"] == "symmetric"
        assert entry.params > 0 and entry.macs > 0 and entry.num_classes == 10 and entry.label_offset == 0
        assert "tensorflow-cpu" in entry.facts["tool_versions"] or "tensorflow" in entry.facts["tool_versions"]
        assert set(entry.validation.metrics) == {"top1", "top5"}
    int8 = entries["int8"]
    assert int8.input.dtype == "int8" and int8.output.dtype == "int8"
    assert int8.input.scale == pytest.approx(1 / 127.5, rel=1e-3)
    assert int8.calibration.count == 100 and len(int8.calibration.sha256) == 64
    assert int8.validation.agreement_with_float >= 0.9
    assert entries["fp32"].validation.agreement_with_float == 1.0
    # int8 file is about a quarter of float32
    assert entries["int8"].size_bytes < 0.45 * entries["fp32"].size_bytes


def test_int8_artifact_runs_in_litert_like_the_manifest_says(artifacts):
    from ai_edge_litert.interpreter import Interpreter

    entry = _entries(artifacts)["int8"]
    interpreter = Interpreter(model_path=str(artifacts / entry.file))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.int8
    assert detail["quantization"][0] == pytest.approx(entry.input.scale)
    assert list(detail["shape"]) == [1, 32, 32, 3]  # batch fixed at 1


def test_second_run_reuses_artifacts(artifacts, trained):
    before = {p.name: p.stat().st_mtime_ns for p in artifacts.glob("*.tflite")}
    result = _quantize("--model", trained, "--formats", TFLITE_FORMATS, "--count", 100, "--output", artifacts)
    assert result.stderr.count("cached") == 4
    assert before == {p.name: p.stat().st_mtime_ns for p in artifacts.glob("*.tflite")}


def test_changed_calibration_rebuilds_only_calibrated_formats(artifacts, trained, tmp_path):
    import shutil

    output = tmp_path / "copy"
    shutil.copytree(artifacts, output)
    result = _quantize("--model", trained, "--formats", TFLITE_FORMATS, "--count", 60, "--output", output)
    assert result.stderr.count("cached") == 3 and "int8      built" in result.stderr


def test_uint8_io_option(trained, tmp_path):
    _quantize("--model", trained, "--formats", "int8", "--io", "uint8", "--count", 30, "--output", tmp_path)
    entry = _entries(tmp_path)["int8"]
    assert entry.input.dtype == "uint8" and entry.facts["recipe"]["io"] == "uint8"


def test_corrupt_calibration_image_fails_or_is_skipped_and_counted(trained, tmp_path):
    calibration = tmp_path / "calib"
    calibration.mkdir()
    for i in range(5):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(calibration / f"{i}.png")
    (calibration / "bad.jpg").write_bytes(b"garbage")
    failed = _quantize("--model", trained, "--formats", "int8", "--calibration", calibration,
                       "--output", tmp_path / "out", check=False)
    assert failed.returncode != 0 and "bad.jpg: not a decodable image" in failed.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tflite"))
    _quantize("--model", trained, "--formats", "int8", "--calibration", calibration, "--skip-corrupt",
              "--output", tmp_path / "out")
    entry = _entries(tmp_path / "out")["int8"]
    assert entry.calibration.count == 5 and entry.calibration.skipped_corrupt[0].endswith("bad.jpg")


def _bad_keras_file(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"PK\x03\x04 not a real archive")
    return path


def _two_d_model(tmp_path):
    import keras

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    path = tmp_path / "dynamic.keras"
    model.save(path)
    return path


@pytest.mark.parametrize("case,message", [
    ("missing_model", "does not exist"),
    ("not_keras", "corrupt or truncated .keras file (not a zip archive)"),
    ("text_model", "not a Keras model file"),
    ("missing_calibration", "calibration folder does not exist"),
    ("empty_calibration", "calibration folder holds no images"),
    ("unknown_format", "unknown format 'int4'"),
    ("dynamic_input", "can't be fed images"),
])
def test_bad_input_one_line_nonzero_nothing_written(trained, tmp_path, case, message):
    model, calibration, formats = trained, "calibration_data/digits", "int8"
    if case == "missing_model":
        model = tmp_path / "nope.keras"
    elif case == "not_keras":
        model = _bad_keras_file(tmp_path)
    elif case == "text_model":
        model = tmp_path / "model.txt"
        model.write_text("hello")
    elif case == "missing_calibration":
        calibration = tmp_path / "nowhere"
    elif case == "empty_calibration":
        calibration = tmp_path / "empty"
        calibration.mkdir()
    elif case == "unknown_format":
        formats = "fp32,int4"
    elif case == "dynamic_input":
        model = _two_d_model(tmp_path)
    output = tmp_path / "out"
    result = _quantize("--model", model, "--formats", formats, "--calibration", calibration,
                       "--output", output, check=False)
    assert result.returncode != 0
    errors = [l for l in result.stderr.splitlines() if l.startswith("edge-bench: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists() or not [p for p in output.iterdir() if p.suffix in (".tflite", ".onnx", ".tmp")]


def test_same_inputs_give_the_same_artifact_bytes(trained, tmp_path):
    """Deterministic for a given seed, across separate processes: calibration choice, TFLite int8,
    tf2onnx float ONNX (canonicalised) and ONNX Runtime QDQ."""
    for name in ("a", "b"):
        _quantize("--model", trained, "--formats", "int8,onnx,onnx-int8", "--count", 40, "--seed", 3,
                  "--output", tmp_path / name)
    for suffix in (".int8.tflite", ".onnx", ".int8.onnx"):
        first = (tmp_path / "a" / f"{trained.stem}{suffix}").read_bytes()
        assert first == (tmp_path / "b" / f"{trained.stem}{suffix}").read_bytes(), suffix
