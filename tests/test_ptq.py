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
    return _entries(plain), _entries(auto), log, plain, auto


def test_auto_tries_every_method_and_keeps_only_what_lowers_the_error(plain_and_auto):
    plain, auto, log, _, _ = plain_and_auto
    for fmt in ("int8", "onnx-int8"):
        record = auto[fmt].facts["recipe"]["ptq"]
        assert record["requested"] == ["auto"] and record["held_out_images"] == 16
        assert record["calibration_images"] == 48
        names = [t["methods"] for t in record["trials"]]
        assert names[:2] == ["plain", "equalization"]  # V2's ReLU6 pairs, bounded by the calibration data
        assert [n.removeprefix("equalization+") for n in names[2:4]] == ["bias-correction", "adaround+bias-correction"]
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


@pytest.mark.parametrize("value, extra, message", [
    ("adaroud", (), "ptq 'adaroud' is not a post-training method; choose auto, none, or one or more of"),
    ("auto,adaround", (), "ptq 'auto,adaround': auto and none stand alone"),
    ("bias-correction,ranges-mse", ("--target-accuracy", "1pt"),
     "--ptq bias-correction changes the float model's weights; --target-accuracy keeps layers in float"),
])
def test_bad_ptq_values_are_one_line(tmp_path, value, extra, message):
    result = _quantize(tmp_path, "--model", "mobilenet_v1", "--ptq", value, *extra, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "manifest.json").exists()


def _quant_report(artifact, float_model, output, *args):
    result = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quant-report", str(artifact), "--float",
                             str(float_model), "--output", str(output), "--json", *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import json

    return json.loads(result.stdout)


def test_quant_report_shows_per_layer_what_each_method_fixed(trained, plain_and_auto, tmp_path):
    """--ptq-layers all on a plain int8 TFLite file: per kernel layer the SNR of plain rounding and of each
    weight method, per activation tensor min/max and each range estimator, and the layers each fixed."""
    plain, auto, _, plain_dir, auto_dir = plain_and_auto
    found = _quant_report(plain_dir / plain["int8"].file, trained, tmp_path, "--ptq-layers", "all")["ptq_layers"]
    weights = found["weights"]
    everything = {"layer", "plain", "equalization", "bias-correction", "adaround",
                  "equalization+adaround+bias-correction"}
    assert set(max(weights["layers"], key=len)) == everything
    # Conv1 is the first layer of an equalized pair: its outputs are rescaled, so no equalization entries
    assert set(weights["layers"][0]) == {"layer", "plain", "bias-correction", "adaround"}
    assert len(weights["layers"]) > 20 and weights["layers"][0]["layer"] == "Conv1"
    assert weights["fixed"]["adaround"]  # learned rounding beats nearest on some layers, held out
    for method, names in weights["fixed"].items():
        rows = {r["layer"]: r for r in weights["layers"]}
        assert all(rows[n][method] is None or rows[n]["plain"] is not None and rows[n][method] >= rows[n]["plain"] + 1
                   for n in names)
    ranges = found["ranges"]
    assert {"tensor", "layer", "minmax", "ranges-percentile", "ranges-mse"} == set(ranges["tensors"][0])
    assert set(ranges["fixed"]) == {"ranges-percentile", "ranges-mse"}
    # recorded (the default): exactly the methods auto kept for that artifact, nothing when it kept none
    recorded = _quant_report(auto_dir / auto["onnx-int8"].file, trained, tmp_path / "onnx")
    applied = auto["onnx-int8"].facts["recipe"]["ptq"]["applied"]
    assert ("ptq_layers" in recorded) == bool(applied)
    if applied:
        assert recorded["ptq_layers"]["methods"] == applied


def test_fixed_layers_need_the_stated_gain():
    from edge_mobilenet.convert.quant.ptq_layers import FIXED_GAIN_DB, fixed

    rows = [{"layer": "a", "plain": 10.0, "m": 10.0 + FIXED_GAIN_DB}, {"layer": "b", "plain": 10.0, "m": 10.9},
            {"layer": "c", "plain": 10.0, "m": None}, {"layer": "d", "plain": None, "m": None}]
    assert fixed(rows, "plain", "layer") == {"m": ["a", "c"]}  # None: no error at all
