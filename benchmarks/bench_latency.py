"""Harness overhead and int8/fp32 latency ratios on this machine (--device local).

1. Overhead: for one model, the p50 the harness reports (edge-bench bench, through the device runner)
   against a bare ``invoke()`` loop on the same model in the same process run, interleaved in rounds.
   Target: <= 2%.
2. int8/fp32 p50 ratio for MobileNetV1, V2, V3-Small and V3-Large at 224 (alpha 1.0), LiteRT (XNNPACK)
   and ONNX Runtime (U8S8 QDQ), 1 thread, as `edge-bench quantize` makes them (V3 hard-swish rewritten).
   No pretrained V3 exists offline: weights are random, with every BatchNormalization's statistics set
   from 32 real images (without that, activations shrink layer by layer until int8 scale ratios fall
   outside what XNNPACK accepts and the graph splits for reasons no trained model has).

Conditions: 2-core x86-64 VM shared with other work, governor not settable; p50 of >= 200 runs.
Writes benchmarks/results/bench_latency.md.

    .venv/bin/python benchmarks/bench_latency.py [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]


def bare_p50(path: Path, runs: int) -> float:
    from edge_mobilenet.runtimes.timing import tflite_latency_ms_p50 as latency_ms_p50

    return latency_ms_p50(path, runs=runs, warmup_runs=20)


def harness_runs(paths: list[Path], runs: int, output: Path) -> dict[str, dict]:
    subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "bench", *map(str, paths), "--device", "local",
                    "--threads", "1", "--min-runs", str(runs), "--min-seconds", "1", "--eval-count", "1",
                    "--output", str(output)], check=True, capture_output=True)
    return {r["artifact"]: r for r in json.loads(output.read_text())["runs"]}


def overhead(folder: Path, runs: int, rounds: int = 5) -> list[str]:
    path = folder / "mobilenet_v2_1_224_random.fp32.tflite"
    harness, bare = [], []
    for index in range(rounds):
        results = harness_runs([path], runs, folder / f"overhead_{index}.json")
        harness.append(results[path.name]["latency"]["p50_ms"])
        bare.append(bare_p50(path, runs))
    h, b = float(np.median(harness)), float(np.median(bare))
    return [f"Harness overhead on {path.name} ({rounds} interleaved rounds of {runs} runs): harness p50 "
            f"{h:.3f} ms, bare invoke() loop p50 {b:.3f} ms: {100 * (h - b) / b:+.1f}% (target <= 2%)"]


def calibration_folder() -> Path:
    """../shared/data/imagenet-sample if present, else the digits: the calibration images, whose first 32
    also give the random-weight models their BatchNormalization statistics (``edge-bench quantize``)."""
    sample = REPO.parent / "shared" / "data" / "imagenet-sample"
    return sample if sample.is_dir() else REPO / "calibration_data" / "digits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-bench-latency-") as tmp:
        folder = Path(tmp)
        for model in MODELS:
            subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--quiet", "--model", model,
                            "--size", "224", "--formats", "fp32,int8,onnx,onnx-int8",
                            "--calibration", str(calibration_folder()), "--count", "64", "--output", str(folder)],
                           check=True, capture_output=True, cwd=REPO)
        lines = ["# Latency on --device local", "", f"`{' '.join(sys.argv)}`; " + __doc__.split("Conditions:")[1]
                 .split("Writes")[0].strip(), ""]
        lines += overhead(folder, args.runs) + [""]
        results = harness_runs(sorted(folder.glob("*.tflite")) + sorted(folder.glob("*.onnx")), args.runs,
                               folder / "ratios.json")
        lines += ["| model | runtime | fp32 p50 ms | int8 p50 ms | int8/fp32 | int8 XNNPACK partitions |",
                  "|---|---|---|---|---|---|"]
        for model in MODELS:
            stem = f"{model}_1_224_random"
            for runtime, float_file, int8_file in (("LiteRT", ".fp32.tflite", ".int8.tflite"),
                                                   ("ONNX Runtime", ".onnx", ".int8.onnx")):
                f, q = results[stem + float_file], results[stem + int8_file]
                fp, qp = f["latency"]["p50_ms"], q["latency"]["p50_ms"]
                parts = q["runtime"].get("partitions", "n/a")
                lines.append(f"| {model} | {runtime} | {fp:.3f} | {qp:.3f} | {qp / fp:.2f} | {parts} |")
    report = "\n".join(lines) + "\n"
    print(report)
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "results" / "bench_latency.md").write_text(report)


if __name__ == "__main__":
    main()
