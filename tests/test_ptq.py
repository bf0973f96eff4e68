"""quantize --ptq: post-training methods tried on held-out calibration images, kept only where they lower
the int8 error (paired against float), recorded in the manifest; real conversion and real runtimes."""

import subprocess
import sys
from pathlib import Path

import pytest

from edge_mobilenet.contracts.manifest import read_manifest
from edge_mobilenet.train import TrainSettings, train_model

FORMATS = "int8,onnx-int8"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """mobilenet_v2 0.35/32 trained briefly on the digits."""
    folder = tmp_path_factory.mktemp("models")
    metrics = train_model(TrainSettings(model="mobilenet_v2", alpha=0.35, epochs=4, output_dir=str(folder),
                                        progress=False))
    return Path(metrics["model_path"])


def _quantize(output, *args, check=True):
    result = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--quiet",
                             "--formats", FORMATS, "--count", "64", "--eval-count", "100", "--output", str(output),
                             *[str(a) for a in args]], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _entries(folder):
    return {e.format: e for e in read_manifest(folder).entries}


@pytest.fixture(scope="module")
def plain_and_auto(trained, tmp_path_factory):
    plain, auto = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("auto")
    _quantize(plain, "--model", trained, "--ptq", "none")
    log = _quantize(auto, "--model", trained).stderr  # --ptq auto is the default
    return _entries(plain), _entries(auto), log


def test_auto_tries_every_method_and_keeps_only_what_lowers_the_error(plain_and_auto):
    plain, auto, log = plain_and_auto
    for fmt in ("int8", "onnx-int8"):
        record = auto[fmt].facts["recipe"]["ptq"]
        assert record["requested"] == ["auto"] and record["held_out_images"] == 16
        assert record["calibration_images"] == 48
        names = [t["methods"] for t in record["trials"]]
        assert names[:4] == ["plain", "bias-correction", "adaround", "adaround+bias-correction"]
        assert any("ranges-percentile" in n for n in names)
        assert any("ranges-mse" in n for n in names) == (fmt == "int8")  # TFLite only
        for trial in record["trials"]:
            assert trial["count"] == 16 and 0 <= trial["agreement"] <= 1 and "snr_db" in trial
        snr = {t["methods"]: float(t["snr_db"]) for t in record["trials"]}
        if record["applied"]:  # what was kept beat plain min/max on the held-out images
            assert snr["+".join(record["applied"])] > snr["plain"]
        else:  # nothing helped: the very bytes of plain min/max
            assert auto[fmt].sha256 == plain[fmt].sha256
        assert f"{fmt}: post-training methods kept:" in log
    assert plain["int8"].facts["recipe"]["ptq"]["applied"] == []
    assert plain["int8"].facts["recipe"]["activation_ranges"] == "minmax"


def test_named_methods_are_applied_and_recorded(trained, tmp_path):
    _quantize(tmp_path, "--model", trained, "--ptq", "bias-correction,ranges-mse")
    entries = _entries(tmp_path)
    tflite, onnx = entries["int8"].facts["recipe"], entries["onnx-int8"].facts["recipe"]
    assert tflite["ptq"]["applied"] == ["bias-correction", "ranges-mse"] and tflite["activation_ranges"] == "mse"
    assert onnx["ptq"]["applied"] == ["bias-correction"] and onnx["method"] == "minmax"  # no MSE ranges on ONNX
    assert onnx["ptq"]["unavailable"] == ["ranges-mse"] and onnx["ptq"]["requested"] == ["bias-correction", "ranges-mse"]
    assert [t["methods"] for t in tflite["ptq"]["trials"]] == ["plain", "bias-correction+ranges-mse"]
    assert entries["int8"].validation.agreement_with_float > 0.8


@pytest.mark.parametrize("value, message", [
    ("adaroud", "ptq 'adaroud' is not a post-training method; choose auto, none, or one or more of"),
    ("auto,adaround", "ptq 'auto,adaround': auto and none stand alone"),
])
def test_bad_ptq_values_are_one_line(tmp_path, value, message):
    result = _quantize(tmp_path, "--model", "mobilenet_v1", "--ptq", value, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "manifest.json").exists()
