"""edge-bench bench on --device local: the real runner, real LiteRT and ONNX Runtime."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edge_mobilenet.runtimes import device_runner
from edge_mobilenet.bench.harness import parse_benchmark_model
from edge_mobilenet.fileio import sha256_file

QUICK = ["--quick", "--min-runs", "5", "--eval-count", "40"]


def test_runner_prints_exactly_one_json_object(bench_artifacts, tmp_path, run_cli):
    batch = tmp_path / "batch.npz"
    np.savez(batch, inputs=np.zeros((3, 32, 32, 3), np.int8))
    result = subprocess.run([sys.executable, device_runner.__file__, "--model",
                             bench_artifacts / "mobilenet_v1_0.25_32.int8.tflite", "--inputs", batch,
                             "--min-runs", "7", "--min-seconds", "0", "--warmup-seconds", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["ok"] and report["runtime"]["name"] == "litert" and report["runtime"]["xnnpack"]
    assert report["runtime"]["partitions"] == 1 and report["runtime"]["ops_outside"] == {"SOFTMAX": 1}
    latency = report["latency"]
    assert latency["count"] >= 7
    assert latency["min_ms"] <= latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert report["outputs_count"] == 3 and report["memory"]["peak_rss_kb"] > 0
    assert report["device"]["emulated"] is False


def test_runner_reports_a_missing_runtime_as_json(bench_artifacts, tmp_path, run_cli):
    batch = tmp_path / "batch.npz"
    np.savez(batch, inputs=np.zeros((1, 32, 32, 3), np.int8))
    result = subprocess.run([sys.executable, device_runner.__file__, "--runtime", "tflite-runtime",
                             "--model", bench_artifacts / "mobilenet_v1_0.25_32.int8.tflite", "--inputs", batch],
                            capture_output=True, text=True)
    report = json.loads(result.stdout)
    assert result.returncode == 3 and not report["ok"] and report["error_kind"] == "no_runtime"


def test_bench_local_measures_and_compares_with_float(bench_artifacts, tmp_path, run_cli):
    results = tmp_path / "local.json"
    result = run_cli("bench", bench_artifacts, "--device", "local", *QUICK, "--output", results)
    assert result.returncode == 0, result.stderr
    runs = {r["format"]: r for r in json.loads(results.read_text())["runs"]}
    assert set(runs) == {"fp32", "int8", "onnx", "onnx-int8"}
    assert runs["fp32"]["accuracy"]["agreement_with_float"] == 1.0
    assert runs["fp32"]["accuracy"]["delta_top1_vs_float"] == 0.0
    int8 = runs["int8"]
    assert int8["accuracy"]["images"] == 40 and int8["accuracy"]["agreement_with_float"] >= 0.85
    assert int8["accuracy"]["top1"] == pytest.approx(runs["fp32"]["accuracy"]["top1"]
                                                     + int8["accuracy"]["delta_top1_vs_float"], abs=1e-4)
    assert int8["accuracy"]["output_snr_db"] > 5
    assert runs["onnx-int8"]["runtime"]["name"] == "onnxruntime"
    assert int8["commit"]["sha"] and "ai-edge-litert" in int8["tool_versions"]
    assert int8["latency"]["p50_ms"] > 0 and int8["valid"]


def test_random_weights_report_accuracy_na(tmp_path, run_cli):
    output = tmp_path / "art"
    subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--quiet", "--model", "mobilenet_v1",
                    "--alpha", "0.25", "--size", "32", "--classes", "10", "--formats", "fp32", "--output", output],
                   check=True, capture_output=True)
    results = tmp_path / "r.json"
    assert run_cli("bench", output, *QUICK, "--output", results).returncode == 0
    run = json.loads(results.read_text())["runs"][0]
    assert run["status"] == "ok" and run["accuracy"] is None


def test_a_failing_artifact_keeps_what_was_measured(bench_artifacts, tmp_path, run_cli):
    import shutil

    folder = tmp_path / "artifacts"
    shutil.copytree(bench_artifacts, folder)
    broken = folder / "mobilenet_v1_0.25_32.int8.tflite"
    broken.write_bytes(b"TFL3 corrupted" * 100)
    results = tmp_path / "r.json"
    # a swapped file is refused before anything runs: its bytes are not the manifest's
    swapped = run_cli("bench", folder, *QUICK, "--output", results)
    assert swapped.returncode == 2 and "sha256 differs" in swapped.stderr and not results.exists()
    # recorded as it is (a broken conversion): it fails on the device, the others are kept
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = next(e for e in manifest["artifacts"] if e["file"] == broken.name)
    entry.update(sha256=sha256_file(broken), size_bytes=broken.stat().st_size)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("bench", folder, *QUICK, "--output", results)
    assert result.returncode == 1 and "1 failed" in result.stderr and "last failure" in result.stderr
    runs = {r["format"]: r for r in json.loads(results.read_text())["runs"]}
    assert runs["int8"]["status"] == "failed" and "load_failed" in runs["int8"]["error"]
    assert all(runs[f]["status"] == "ok" for f in ("fp32", "onnx", "onnx-int8"))


def test_a_corrupt_file_given_alone_is_one_clear_line(tmp_path, run_cli):
    broken = tmp_path / "broken.int8.tflite"
    broken.write_bytes(b"TFL3 not really a flatbuffer" * 10)
    result = run_cli("bench", broken, *QUICK, "--output", tmp_path / "r.json")
    assert result.returncode != 0 and "broken.int8.tflite: not a loadable TFLite model" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["/no/such/artifacts"], "does not exist"),
    (["--device", "toaster"], "no such device profile"),
])
def test_bad_input(args, message, tmp_path, run_cli):
    result = run_cli("bench", *args, "--output", tmp_path / "r.json")
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_parse_benchmark_model_output():
    """Text as TFLite's benchmark_model prints it (a recorded sample; no binary runs here)."""
    text = """Initialized session in 12.3ms.
count=37 first=24567 curr=13226 min=12957 max=24567 avg=13585.4 std=1842
count=76 first=13223 curr=13138 min=12886 max=14296 avg=13171.3 std=232 p5=12944 median=13146 p95=13417
Inference timings in us: Init: 12345, First inference: 24567, Warmup (avg): 13585.4, Inference (avg): 13171.3
"""
    latency = parse_benchmark_model(text)
    assert latency["p50_ms"] == pytest.approx(13.146) and latency["mean_ms"] == pytest.approx(13.1713)
    assert latency["init_ms"] == pytest.approx(12.345) and latency["count"] == 76
    assert latency["min_ms"] == pytest.approx(12.886) and latency["p90_ms"] is None


def test_interleaved_rounds_give_per_round_ratios_to_float(bench_artifacts, tmp_path, run_cli):
    """--rounds: every format of a source in one runner process, alternating rounds (real LiteRT + ORT)."""
    results = tmp_path / "r.json"
    result = run_cli("bench", bench_artifacts, *QUICK, "--rounds", 6, "--round-runs", 5, "--output", results)
    assert result.returncode == 0, result.stderr
    runs = {r["format"]: r for r in json.loads(results.read_text())["runs"]}
    assert set(runs) == {"fp32", "int8", "onnx", "onnx-int8"}
    for fmt, run in runs.items():
        rounds = run["latency"]["rounds"]
        assert rounds["count"] == 6 and rounds["runs_per_round"] == 5 and len(rounds["p50_ms"]) == 6
        assert run["latency"]["count"] == 30 and run["accuracy"]["top1"] is not None
    ratio = runs["int8"]["latency"]["rounds"]["ratio_vs_baseline"]
    assert ratio["baseline"] == runs["fp32"]["artifact"] and ratio["q1"] <= ratio["median"] <= ratio["q3"]
    assert runs["onnx-int8"]["latency"]["rounds"]["ratio_vs_baseline"]["baseline"] == runs["onnx"]["artifact"]
    assert "x float (IQR" in result.stderr


def test_runner_needs_rounds_for_several_models(tmp_path):
    result = subprocess.run([sys.executable, device_runner.__file__, "--model", "a.tflite", "--inputs", "a.npz",
                             "--model", "b.tflite", "--inputs", "b.npz"], capture_output=True, text=True)
    assert result.returncode == 2 and "several models need --rounds" in result.stderr
