"""Harness overhead and int8/fp32 latency ratios on this machine (--device local), interleaved.

1. Overhead: the harness's timing path (the device runner's loaded model and its timed-invoke loop, as
   ``edge-bench bench`` runs it) against a bare ``Interpreter.invoke()`` loop on its own interpreter of
   the same file, alternating rounds in one process; per round the ratio of the two p50s, reported as
   the median with its IQR. Target: <= 2%.
2. int8/fp32 ratios for MobileNetV1, V2, V3-Small and V3-Large at 224 (alpha 1.0), LiteRT (XNNPACK)
   and ONNX Runtime (U8S8 QDQ), 1 thread, as `edge-bench quantize` makes them (V3 hard-swish
   rewritten, plain min/max: `--ptq none`, latency only): `edge-bench bench --rounds R` times the artifacts of each source model in alternating
   rounds in one process and reports each artifact's median per-round ratio to its float baseline with
   the IQR. Done ``--repeats`` times in a row; target: every ratio agrees within 0.05 between runs.
   No pretrained V3 exists offline: weights are random, with every BatchNormalization's statistics set
   from 32 real images (without that, activations shrink layer by layer until int8 scale ratios fall
   outside what XNNPACK accepts and the graph splits for reasons no trained model has).

Conditions: 2-core x86-64 VM shared with other work, governor not settable.
Writes benchmarks/results/bench_latency.md; the artifacts stay in build/bench-latency (re-runs reuse them).

    .venv/bin/python benchmarks/bench_latency.py [--rounds 25] [--round-runs 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]
RUNTIMES = (("LiteRT", ".fp32.tflite", ".int8.tflite"), ("ONNX Runtime", ".onnx", ".int8.onnx"))


def calibration_folder() -> Path:
    """../shared/data/imagenet-sample if present, else the digits: the calibration images, whose first 32
    also give the random-weight models their BatchNormalization statistics (``edge-bench quantize``)."""
    sample = REPO.parent / "shared" / "data" / "imagenet-sample"
    return sample if sample.is_dir() else REPO / "calibration_data" / "digits"


def make_artifacts(folder: Path) -> None:
    for model in MODELS:
        subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--quiet", "--model", model,
                        "--size", "224", "--formats", "fp32,int8,onnx,onnx-int8",
                        "--calibration", str(calibration_folder()), "--count", "64", "--ptq", "none",
                        "--output", str(folder)],
                       check=True, cwd=REPO)


def quartiles(values) -> tuple[float, float, float]:
    q1, median, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(median), float(q1), float(q3)


def overhead(path: Path, rounds: int, runs: int) -> str:
    """The runner's loaded model and timing loop vs a bare invoke() loop, alternating rounds."""
    from ai_edge_litert.interpreter import Interpreter

    from edge_mobilenet.quiet import native_noise_filtered
    from edge_mobilenet.runtimes import device_runner

    args = device_runner.parse_args(["--model", str(path), "--inputs", "unused.npz", "--threads", "1"])
    with native_noise_filtered():
        harness, failure = device_runner._load(str(path), args)
        bare = Interpreter(model_path=str(path), num_threads=1)
    if failure:
        raise SystemExit(f"{path}: {failure[1]}")
    bare.allocate_tensors()
    detail = bare.get_input_details()[0]
    data = np.random.default_rng(0).uniform(-1, 1, detail["shape"]).astype(detail["dtype"])
    harness.set_input(data)
    bare.set_tensor(detail["index"], data)

    def bare_loop() -> list[float]:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            bare.invoke()
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    for _ in range(20):  # warm both
        harness.invoke(), bare.invoke()
    ratios, harness_p50, bare_p50 = [], [], []
    for index in range(rounds):
        pair = [lambda: device_runner._time_runs(harness, runs, 0.0, 1e9, runs), bare_loop]
        first, second = pair if index % 2 == 0 else pair[::-1]
        a, b = first(), second()
        h, r = (a, b) if index % 2 == 0 else (b, a)
        harness_p50.append(float(np.median(h)))
        bare_p50.append(float(np.median(r)))
        ratios.append(harness_p50[-1] / bare_p50[-1])
    median, q1, q3 = quartiles(ratios)
    return (f"{path.name}, {rounds} alternating rounds of {runs} invokes: harness p50 "
            f"{np.median(harness_p50):.3f} ms, bare loop p50 {np.median(bare_p50):.3f} ms; per-round "
            f"harness/bare {median:.4f} (IQR {q1:.4f}-{q3:.4f}): overhead {100 * (median - 1):+.2f}% "
            f"({'meets' if abs(median - 1) <= 0.02 else 'misses'} <= 2%)")


def interleaved(folder: Path, rounds: int, round_runs: int, output: Path) -> dict[str, dict]:
    paths = sorted(folder.glob("*_224_*.tflite")) + sorted(folder.glob("*_224_*.onnx"))
    output.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "bench", *map(str, paths), "--device", "local",
                    "--threads", "1", "--rounds", str(rounds), "--round-runs", str(round_runs),
                    "--eval-count", "1", "--output", str(output)], check=True, capture_output=True, cwd=REPO)
    return {r["artifact"]: r for r in json.loads(output.read_text())["runs"]}


def ratio_rows(runs: list[dict[str, dict]]) -> tuple[list[str], float]:
    rows, worst = [], 0.0
    for model in MODELS:
        stem = f"{model}_1_224_random"
        for runtime, float_file, int8_file in RUNTIMES:
            cells, medians = [], []
            for results in runs:
                q, f = results[stem + int8_file], results[stem + float_file]
                ratio = q["latency"]["rounds"]["ratio_vs_baseline"]
                medians.append(ratio["median"])
                cells.append(f"{f['latency']['p50_ms']:.3f} / {q['latency']['p50_ms']:.3f}: **{ratio['median']:.2f}** "
                             f"({ratio['q1']:.2f}-{ratio['q3']:.2f})")
            spread = max(medians) - min(medians)
            worst = max(worst, spread)
            parts = runs[0][stem + int8_file]["runtime"].get("partitions", "n/a")
            rows.append(f"| {model} | {runtime} | " + " | ".join(cells) + f" | {spread:.3f} | {parts} |")
    return rows, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--round-runs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "build" / "bench-latency"))
    args = parser.parse_args()
    folder = Path(args.output)
    make_artifacts(folder)
    lines = ["# Latency on --device local", "", f"`{' '.join(sys.argv)}`; " + __doc__.split("Conditions:")[1]
             .split("Writes")[0].strip(), "", "## Harness overhead", ""]
    runs = []
    for repeat in range(args.repeats):
        lines.append(f"- run {repeat + 1}: " + overhead(folder / "mobilenet_v2_1_224_random.fp32.tflite",
                                                        args.rounds, args.round_runs))
        print(lines[-1], flush=True)
        runs.append(interleaved(folder, args.rounds, args.round_runs, folder / f"interleaved_{repeat}.json"))
    rows, worst = ratio_rows(runs)
    lines += ["", "## int8 / fp32, interleaved", "",
              f"Each cell: fp32 p50 / int8 p50 ms: **median per-round int8/fp32 ratio** (IQR), {args.rounds} "
              f"rounds of {args.round_runs} invokes, one process per source model.", "",
              "| model | runtime | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
              + " | max-min of the medians | int8 XNNPACK partitions |",
              "|---|---|" + "---|" * len(runs) + "---|---|", *rows, "",
              f"Largest disagreement between runs: {worst:.3f} "
              f"({'meets' if worst <= 0.05 else 'misses'} the 0.05 target)."]
    report = "\n".join(lines) + "\n"
    print(report)
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "results" / "bench_latency.md").write_text(report)


if __name__ == "__main__":
    main()
