"""Latency-aware vs error-only accuracy-aware int8, on the ImageNet MobileNetV1 0.25/128.

The case of `benchmarks/accuracy_aware.py`: calibrated on 200 images of ../shared/data/imagenet-sample,
top-1 on the other 800. Steps:
1. plain int8 and the float baselines (`edge-bench quantize`), TFLite and ONNX;
2. their per-block latency on this machine (`edge-bench profile ... --device local`): profile.json;
3. for each target, the accuracy-aware search twice: layers ranked by their int8 error alone, and by
   error recovered per ms of float cost (`--latency-profile profile.json`);
4. every resulting int8 file and its float baseline timed in alternating rounds in one process (1 thread),
   each reported as the median per-round ratio to float with its IQR.
Target: each search that meets the accuracy target, met with no more latency than the error-only one.

    .venv/bin/python benchmarks/latency_aware.py [--targets 99.5%,100%] [--rounds 30]
Writes benchmarks/results/latency_aware.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STEM = "mobilenet_v1_0.25_128_from_quant"
KINDS = (("TFLite", "int8", ".int8.tflite", ".fp32.tflite"), ("ONNX Runtime", "onnx-int8", ".int8.onnx", ".onnx"))


def edge(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", *args], check=True, cwd=REPO)


def quantize(model: Path, output: Path, formats: str, imagenet: list[str], *extra: str) -> None:
    edge("quantize", "--quiet", "--model", str(model), "--formats", formats, "--output", str(output),
         *imagenet, *extra)


def search_record(folder: Path, fmt: str) -> dict:
    from edge_mobilenet.contracts.manifest import read_manifest

    entry = next(e for e in read_manifest(folder).entries if e.format == fmt)
    return {**entry.facts.get("recipe", {}).get("accuracy_aware", {}), "file": folder / entry.file}


def interleave(paths: list[Path], rounds: int, runs: int, threads: int = 1) -> list[list[float]]:
    """Per path (.tflite or .onnx, loaded as the device runner loads them), its p50 in each of ``rounds``
    alternating rounds of ``runs`` invokes, the order rotating every round, all in this process."""
    from edge_mobilenet.quiet import native_noise_filtered
    from edge_mobilenet.runtimes import device_runner

    args = device_runner.parse_args(["--model", "x", "--inputs", "x", "--threads", str(threads)])
    models = []
    for path in paths:
        with native_noise_filtered():
            model, failure = device_runner._load(str(path), args)
        if failure:
            raise SystemExit(f"{path}: {failure[1]}")
        model.set_input(_input_for(model))
        device_runner._time_runs(model, 20, 0.0, 1e9, 20)
        models.append(model)
    p50s = [[] for _ in paths]
    for index in range(rounds):
        order = list(range(len(paths)))
        order = order[index % len(order):] + order[:index % len(order)]
        for i in order:
            p50s[i].append(float(np.median(device_runner._time_runs(models[i], runs, 0.0, 1e9, runs))))
    return p50s


def _input_for(model) -> np.ndarray:
    if hasattr(model, "interpreter"):
        shape, dtype = model.input["shape"], model.input["dtype"]
    else:
        meta = model.session.get_inputs()[0]
        dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}[meta.type]
        shape = [d if isinstance(d, int) else 1 for d in meta.shape]
    return np.random.RandomState(0).uniform(-1, 1, shape).astype(dtype)


def ratio_text(int8: list[float], float_: list[float]) -> str:
    ratios = np.asarray(int8) / np.asarray(float_)
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return f"{np.median(int8):.3f} ms, {median:.3f}× float (IQR {q1:.3f}-{q3:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--output", default=str(REPO / "build" / "bench-latency-aware"))
    parser.add_argument("--targets", default="99.5%,100%")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--round-runs", type=int, default=100)
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.output)
    model = shared / "models" / f"{STEM}.keras"
    if not model.is_file():
        raise SystemExit(f"{model}: absent (this benchmark needs ../shared/data)")
    sample = shared / "imagenet-sample"
    imagenet = ["--calibration", str(sample), "--count", "200", "--eval", str(sample), "--eval-count", "800"]
    quantize(model, out / "plain", "fp32,int8,onnx,onnx-int8", imagenet)
    profile = out / "profile"
    edge("profile", *(str(out / "plain" / (STEM + s)) for _, _, q, f in KINDS for s in (q, f)),
         "--device", "local", "--threads", "1", "--by", "block", "--top", "5", "--output", str(profile))
    started, searches = time.perf_counter(), []
    for target in args.targets.split(","):
        for label, extra in (("error only", ()), ("latency-aware", ("--latency-profile", str(profile / "profile.json")))):
            folder = out / f"{label.split()[0]}_{target.rstrip('%')}"
            quantize(model, folder, "int8,onnx-int8", imagenet, "--target-accuracy", target, *extra)
            searches.append((target, label, folder))
    print(f"searches: {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for runtime, fmt, int8_suffix, float_suffix in KINDS:
        records = [(t, l, search_record(f, fmt)) for t, l, f in searches]
        paths = [out / "plain" / (STEM + float_suffix), out / "plain" / (STEM + int8_suffix)] + [r["file"] for *_, r in records]
        p50s = interleave(paths, args.rounds, args.round_runs)
        rows.append(f"| {runtime} | plain int8 | - | - | - | {ratio_text(p50s[1], p50s[0])} |")
        for (target, label, record), timed in zip(records, p50s[2:]):
            layers = record.get("float_layers", [])
            rows.append(f"| {runtime} | {label} | {target} | {record.get('top1', float('nan')):.4f} "
                        f"({'met' if record.get('met') else 'NOT met'}) | {len(layers)}"
                        f"{': ' + ', '.join(layers[:4]) if layers else ''} | {ratio_text(timed, p50s[0])} |")
    lines = ["# Latency-aware vs error-only accuracy-aware int8", "", f"`{' '.join(sys.argv)}`; MobileNetV1 "
             "0.25/128 (ImageNet), calibrated on 200 imagenet-sample images, top-1 on the other 800; local "
             f"x86 (2-core VM), 1 thread; {args.rounds} alternating rounds of {args.round_runs} invokes per "
             "runtime, in one process.", "",
             "| runtime | search | target | top-1 | layers kept float | int8 p50, ratio to float |",
             "|---|---|---|---|---|---|", *rows]
    report = "\n".join(lines) + "\n"
    print(report)
    (REPO / "benchmarks" / "results" / "latency_aware.md").write_text(report)


if __name__ == "__main__":
    main()
