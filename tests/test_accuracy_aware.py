"""Per-layer error and accuracy-aware int8 on a real trained model with real LiteRT evaluation."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_mobilenet.contracts.manifest import read_manifest
from edge_mobilenet.convert.quant.accuracy_aware import search
from edge_mobilenet.convert.settings import AccuracyTarget, parse_target
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.train import TrainSettings, train_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("aa-models")
    return Path(train_model(TrainSettings(epochs=6, output_dir=str(folder), progress=False))["model_path"])


def _cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", *[str(a) for a in args]],
                            capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_parse_target():
    assert parse_target("99%").threshold(0.8) == pytest.approx(0.792)
    assert parse_target("0.5pt").threshold(0.8) == pytest.approx(0.795)
    for bad in ("abc", "120%", "", "99"):
        with pytest.raises(EdgeError, match="target accuracy"):
            parse_target(bad)


def test_quant_report_ranks_layers_and_writes_json_and_png(trained, tmp_path):
    _cli("quantize", "--quiet", "--model", trained, "--formats", "int8", "--count", 64, "--output", tmp_path)
    artifact = tmp_path / "mobilenet_v1_0.25_32.int8.tflite"
    result = _cli("quant-report", artifact, "--float", trained, "--output", tmp_path / "qr", "--json")
    report = json.loads(result.stdout)
    values = [l["rmse_over_scale"] for l in report["layers"]]
    assert values == sorted(values, reverse=True) and len(values) >= 27
    assert {"conv1_relu", "conv_pw_13_relu", "conv_preds"} <= {l["layer"] for l in report["layers"]}
    # a well-behaved int8 layer sits near ideal rounding error (1/sqrt(12) = 0.289)
    assert 0.15 < float(np.median(values)) < 0.6
    assert report["calibration"]["count"] == 64  # taken from the artifact's manifest
    png = Path(report["files"][1])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quant_report_refuses_a_float_model_that_does_not_match(trained, tmp_path):
    _cli("quantize", "--quiet", "--model", trained, "--formats", "int8", "--count", 16, "--output", tmp_path)
    other = tmp_path / "other.keras"
    from edge_mobilenet.models import build_model

    build_model("mobilenet_v1", alpha=0.25, size=48, classes=10).save(other)
    result = _cli("quant-report", tmp_path / "mobilenet_v1_0.25_32.int8.tflite", "--float", other, check=False)
    assert result.returncode != 0 and "does not match the float model" in result.stderr
    # same shapes, other weights: refused by the manifest's source sha256, and without a manifest by
    # the predictions
    same_shape = tmp_path / "same_shape.keras"
    build_model("mobilenet_v1", alpha=0.25, size=32, classes=10).save(same_shape)
    artifact = tmp_path / "mobilenet_v1_0.25_32.int8.tflite"
    result = _cli("quant-report", artifact, "--float", same_shape, check=False)
    assert result.returncode == 2 and "was made from" in result.stderr and "not from" in result.stderr
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / artifact.name).write_bytes(artifact.read_bytes())
    result = _cli("quant-report", alone / artifact.name, "--float", same_shape, check=False)
    assert result.returncode == 2 and "it was not converted from that float model" in result.stderr


def test_target_reaching_float_keeps_layers_in_float(trained, tmp_path):
    """0pt: int8 must be as accurate as float; the search keeps sensitive layers in float as needed."""
    _cli("quantize", "--quiet", "--model", trained, "--formats", "int8", "--count", 64,
         "--target-accuracy", "0pt", "--output", tmp_path)
    entry = read_manifest(tmp_path).entries[0]
    record = entry.facts["recipe"]["accuracy_aware"]
    assert record["met"] and record["top1"] >= record["float_top1"]
    assert entry.validation.metrics["top1"] == pytest.approx(record["top1"], abs=1e-4)
    if record["full_int8_top1"] < record["float_top1"]:
        assert record["float_layers"], "a missed target must have moved layers to float"
    assert set(record["latency_ms_p50_local"]) == {"full_int8", "selective"}


class _ScriptedQuantizer:
    """Stands in for the TFLite quantizer only to drive the search through a target nobody meets."""

    def __init__(self, accuracies):
        self.accuracies = accuracies

    def quantize(self, nodes):
        return len(nodes)


def test_search_reports_the_best_when_the_target_cannot_be_met():
    ranking = [type("R", (), {"node": f"n{i}"})() for i in range(3)]
    found = search(_ScriptedQuantizer(None), ranking, lambda k: [0.5, 0.6, 0.7, 0.65][k], 0.9,
                   AccuracyTarget("99%", relative=0.99))
    assert not found["met"] and found["chosen"] == 2 and found["top1"] == 0.7
    found = search(_ScriptedQuantizer(None), ranking, lambda k: [0.5, 0.6, 0.9, 0.95][k], 0.9,
                   AccuracyTarget("0pt", points=0.0))
    assert found["met"] and found["chosen"] == 2


def test_onnx_target_keeps_convolutions_out_of_qdq(trained, tmp_path):
    """ONNX Runtime: the same ranking, applied through quantize_static's nodes_to_exclude."""
    import onnx

    _cli("quantize", "--quiet", "--model", trained, "--formats", "onnx-int8", "--count", 64,
         "--target-accuracy", "0pt", "--output", tmp_path)
    entry = read_manifest(tmp_path).entries[0]
    record = entry.facts["recipe"]["accuracy_aware"]
    assert record["applied"] and record["met"] and record["top1"] >= record["float_top1"]
    assert entry.facts["recipe"]["nodes_to_exclude"] == record["float_nodes"]
    # layers kept in float are the float model's own: no weight methods under a target
    assert "bias-correction" in entry.facts["recipe"]["ptq"]["not_combined_with_target_accuracy"]
    graph = onnx.load(str(tmp_path / entry.file)).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    float_nodes = [next(n for n in graph.node if n.name == name) for name in record["float_nodes"]]
    for node in float_nodes:  # a layer kept in float keeps float weights (activations have none)
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            assert producers.get(node.input[1]) != "DequantizeLinear", f"{node.name} weights still quantized"


def test_quant_report_on_an_onnx_int8_artifact(trained, tmp_path):
    _cli("quantize", "--quiet", "--model", trained, "--formats", "onnx-int8", "--count", 32, "--output", tmp_path)
    result = _cli("quant-report", tmp_path / "mobilenet_v1_0.25_32.int8.onnx", "--float", trained,
                  "--output", tmp_path / "qr", "--json")
    report = json.loads(result.stdout)
    values = [l["rmse_over_scale"] for l in report["layers"]]
    assert values == sorted(values, reverse=True) and len(values) >= 20
    assert 0.15 < float(np.median(values)) < 0.6
    assert Path(report["files"][1]).read_bytes()[:4] == b"\x89PNG"


def test_target_needs_labelled_images_that_match_the_model(trained, tmp_path):
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(flat / f"{i}.png")
    result = _cli("quantize", "--quiet", "--model", trained, "--formats", "int8", "--count", 8, "--eval", flat,
                  "--target-accuracy", "99%", "--output", tmp_path / "a", check=False)
    assert result.returncode != 0 and "needs labelled evaluation images" in result.stderr
    many = tmp_path / "many"
    for i in range(12):
        (many / f"class{i:02d}").mkdir(parents=True)
        Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(many / f"class{i:02d}" / "x.png")
    result = _cli("quantize", "--quiet", "--model", trained, "--formats", "int8", "--count", 8, "--eval", many,
                  "--target-accuracy", "99%", "--output", tmp_path / "b", check=False)
    assert result.returncode != 0 and "12 classes" in result.stderr and "outputs 10" in result.stderr


def test_one_target_one_cache_key():
    """The target is parsed once at the edge: "99%" and "99.0%" are one target and one artifact."""
    from edge_mobilenet.contracts.formats import FORMATS
    from edge_mobilenet.convert.pipeline import cache_key
    from edge_mobilenet.convert.settings import QuantizeSettings, merge

    keys = {cache_key("s", None, FORMATS["int8"], merge(QuantizeSettings(), {"target_accuracy": text}), "c")
            for text in ("99%", "99.0%", " 99 %")}
    assert len(keys) == 1 and parse_target("99.0%").text == "99%"
    plain = cache_key("s", None, FORMATS["fp32"], QuantizeSettings(), "c")
    assert plain == cache_key("s", None, FORMATS["fp32"], merge(QuantizeSettings(), {"target_accuracy": "99%",
                                                                                     "io": "uint8"}), "c")


def test_search_steps_carry_the_paired_verdict():
    """Each step is paired with float on the same images; a target met only by the point estimate, with
    the allowed loss inside the 95% interval, is reported as within noise."""
    import numpy as np

    from edge_mobilenet.contracts.paired import paired_fidelity

    labels = np.arange(400) % 10
    float_outputs = 5 * np.eye(10)[labels]

    def flipped(count):  # the first ``count`` images turned wrong
        outputs = float_outputs.copy()
        outputs[:count] = np.roll(outputs[:count], 1, axis=1)
        return paired_fidelity(float_outputs, outputs, labels)

    scores = [flipped(40), flipped(4), flipped(0)]
    ranking = [type("R", (), {"node": f"n{i}"})() for i in range(2)]
    found = search(_ScriptedQuantizer(None), ranking, lambda k: scores[k], 1.0, AccuracyTarget("99%", relative=0.99))
    assert found["met"] and found["chosen"] == 1 and found["verdict"] == "within noise"
    assert [s["verdict"] for s in found["steps"]] == ["missed", "within noise"]
    assert found["steps"][0]["delta_top1"] == -0.1 and found["steps"][1]["images"] == 400
