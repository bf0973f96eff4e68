"""Issue-13 targets for `edge-bench sweep` on Ray, measured on this machine; prints a Markdown report.

1. Conversion cells of the default sweep (benchmarks/sweeps/default.toml: 3 models x 4 formats = 12
   cells, here from random-weight sources so nothing is trained) on a local Ray instance with 2 CPUs vs 1:
   throughput ratio (target >= 1.6x). The two configurations alternate, ROUNDS rounds each, in this one
   process; medians with their spread. Each round starts a fresh Ray instance; its workers' start-up
   (a Python process importing TensorFlow, once per worker and sweep) is timed apart, then the cells.
2. Ray's scheduling overhead per cell: the 1-CPU round's wall time (warm worker) minus the time spent
   inside the cells (measured in the task), per cell, as a share of a typical cell (target <= 5%); and a
   no-op task's round trip for reference.
3. (with --pi-host and --pi-ssh-config: the emulated board from ../shared/tools/emulated-device.sh) bench
   cells on local alone, pi alone and both at once (artifacts already converted): wall time of both vs the
   sum of the two alone (target < 0.7x).

    python benchmarks/sweep_scaling.py [--rounds 3] [--pi-host H --pi-ssh-config F] > benchmarks/results/sweep.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_mobilenet.pipeline_stages import STAGES  # noqa: E402
from edge_mobilenet.sweep.spec import load_sweep  # noqa: E402

DEFAULT = REPO / "benchmarks" / "sweeps" / "default.toml"


def timed_convert(source, fmt, settings, calibration_sha):
    """A conversion cell, timed inside the worker."""
    started = time.perf_counter()
    result = STAGES.convert(source, fmt, settings, calibration_sha)
    return time.perf_counter() - started, len(result["data"])


def warm_worker() -> int:
    """What a worker does once before its first cell: import TensorFlow and the conversion stages."""
    import tensorflow  # noqa: F401

    from edge_mobilenet.convert import cell  # noqa: F401
    time.sleep(1.0)  # held, so that each of the round's workers gets one
    return os.getpid()


def _sources(sweep) -> list[dict]:
    """The default sweep's sources with random weights (nothing trained: conversions cost the same)."""
    return [STAGES.build_source({k: v for k, v in variant.row().items() if k != "train"}, sweep.quantize_settings)
            for variant in sweep.variants]


def _round(ray, cpus: int, sources: list[dict], sweep, calibration_sha: str) -> dict:
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        task = ray.remote(num_cpus=1)(timed_convert)
        refs = [ray.put(s) for s in sources]
        started = time.perf_counter()
        workers = ray.get([ray.remote(num_cpus=1)(warm_worker).remote() for _ in range(cpus)])
        startup = time.perf_counter() - started
        assert len(set(workers)) == cpus, workers
        started = time.perf_counter()
        pending = [task.remote(ref, fmt, sweep.quantize_settings, calibration_sha)
                   for ref, variant in zip(refs, sweep.variants) for fmt in variant.formats]
        inside = [seconds for seconds, _ in ray.get(pending)]
        wall = time.perf_counter() - started
        noop = ray.remote(num_cpus=1)(lambda: None)
        ray.get(noop.remote())
        t0 = time.perf_counter()
        ray.get([noop.remote() for _ in range(200)])
        noop_ms = (time.perf_counter() - t0) / 200 * 1000
    finally:
        ray.shutdown()
    return {"cells": len(inside), "wall": wall, "startup": startup, "inside": sum(inside), "median_cell": statistics.median(inside),
            "noop_ms": noop_ms}


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def conversion_scaling(rounds: int) -> list[str]:
    import ray

    sweep = load_sweep(DEFAULT, STAGES)
    calibration_sha = STAGES.calibration_hash(sweep.quantize_settings)
    sources = _sources(sweep)
    results = {1: [], 2: []}
    for i in range(rounds):
        for cpus in ((1, 2) if i % 2 == 0 else (2, 1)):
            results[cpus].append(_round(ray, cpus, sources, sweep, calibration_sha))
            print(f"round {i + 1} cpus {cpus}: {results[cpus][-1]}", file=sys.stderr)
    cells = results[1][0]["cells"]
    ratio = [one["wall"] / two["wall"] for one, two in zip(results[1], results[2])]
    ratio_cold = [(one["wall"] + one["startup"]) / (two["wall"] + two["startup"])
                  for one, two in zip(results[1], results[2])]
    overhead = [(r["wall"] - r["inside"]) / r["cells"] for r in results[1]]
    share = [o / r["median_cell"] * 100 for o, r in zip(overhead, results[1])]
    return [
        f"## Conversion cells of the default sweep ({cells} cells, {rounds} alternating rounds)", "",
        "| Ray CPUs | workers' start-up s | cells wall s | cells / min | median cell s |", "|---|---|---|---|---|",
        *[f"| {c} | {_spread([r['startup'] for r in results[c]])} | {_spread([r['wall'] for r in results[c]])} | "
          f"{_spread([r['cells'] / r['wall'] * 60 for r in results[c]])} | "
          f"{_spread([r['median_cell'] for r in results[c]])} |" for c in (1, 2)], "",
        f"- throughput 2 CPUs / 1 CPU (cells wall): **{_spread(ratio)}x** (target >= 1.6x); with the start-up "
        f"included: {_spread(ratio_cold)}x",
        f"- scheduling overhead per cell (1 CPU: (wall - time inside the cells) / cells): "
        f"{_spread(overhead)} s = **{_spread(share)} %** of a median cell (target <= 5 %); "
        f"a no-op task's round trip: {_spread([r['noop_ms'] for r in results[1]])} ms", ""]


TWO_DEVICES = """
name = "two-devices"
formats = ["fp32", "int8"]
devices = DEVICES
threads = [1]
[calibration]
folder = "{calibration}"
count = 50
[bench]
warmup_runs = 2
min_runs = 20
min_seconds = {min_seconds}
max_seconds = {max_seconds}
eval_count = 50
LOCAL_OVERRIDE
[[model]]
name = "mobilenet_v1"
alphas = [0.25, 0.5]
size = 32
"""


def _sweep_wall(output: Path, devices: list[str], env: dict, min_seconds: float,
                local_min_seconds: float | None = None) -> float:
    """Wall time of one sweep over ``devices`` whose sources and artifacts exist (bench cells only)."""
    (output / "results.json").unlink(missing_ok=True)
    path = output.parent / "two.toml"
    override = ("" if local_min_seconds is None or "local" not in devices else
                f"[bench.device.local]\nmin_seconds = {local_min_seconds}\nmax_seconds = {2 * local_min_seconds + 10}")
    path.write_text(TWO_DEVICES.replace("DEVICES", json.dumps(devices)).replace("LOCAL_OVERRIDE", override)
                    .format(calibration=REPO / "calibration_data" / "digits", min_seconds=min_seconds,
                           max_seconds=max(10, 2 * min_seconds)))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "sweep", str(path), "--output", str(output)],
                   check=True, capture_output=True, env=env, cwd=REPO)
    return time.perf_counter() - started


def two_devices(host: str, ssh_config: str, rounds: int, min_seconds: float,
                local_min_seconds: float | None = None) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="edge-sweep-bench-"))
    board = folder / "pi.toml"
    board.write_text(f'transport = "ssh"\nhost = "{host}"\nssh_config = "{ssh_config}"\n')
    output = folder / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    _sweep_wall(output, ["local"], env, min_seconds)  # sources and artifacts, once
    walls = {"local": [], "pi": [], "both": []}
    for _ in range(rounds):
        walls["local"].append(_sweep_wall(output, ["local"], env, min_seconds, local_min_seconds))
        walls["pi"].append(_sweep_wall(output, [str(board)], env, min_seconds, local_min_seconds))
        walls["both"].append(_sweep_wall(output, ["local", str(board)], env, min_seconds, local_min_seconds))
    ratio = [b / (l + p) for l, p, b in zip(walls["local"], walls["pi"], walls["both"])]
    bound = [max(l, p) / (l + p) for l, p in zip(walls["local"], walls["pi"])]
    overlap = [b / max(l, p) for l, p, b in zip(walls["local"], walls["pi"], walls["both"])]
    shutil.rmtree(folder, ignore_errors=True)
    local = "" if local_min_seconds is None else f", local's cells {local_min_seconds:g} (bench.device.local)"
    return [f"## Two devices at once (bench cells only: 4 per device, min_seconds {min_seconds:g}{local}; the "
            "emulated Pi over real SSH)", "",
            "| devices | sweep wall s |", "|---|---|",
            *[f"| {k} | {_spread(v)} |" for k, v in walls.items()], "",
            f"- both / (local + pi): **{_spread(ratio)}** (target < 0.7); the best any scheduler can do is "
            f"max / (local + pi) = {_spread(bound)}: the devices' balance sets it",
            f"- both / the slower device alone: {_spread(overlap)} (1.0: the two ran wholly at once)", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pi-host")
    parser.add_argument("--pi-ssh-config")
    parser.add_argument("--skip-conversions", action="store_true")
    parser.add_argument("--min-seconds", type=float, action="append",
                        help="the two-device sweeps' bench min_seconds (repeat for several; default 2)")
    parser.add_argument("--local-min-seconds", type=float,
                        help="min_seconds of the local device's cells alone ([bench.device.local]), to balance "
                             "the two devices' work")
    args = parser.parse_args()
    lines = ["# edge-bench sweep on Ray: scaling and overhead", "",
             f"`python benchmarks/sweep_scaling.py --rounds {args.rounds}"
             + (" --skip-conversions" if args.skip_conversions else "")
             + (" --pi-host H --pi-ssh-config F" if args.pi_host else "")
             + "".join(f" --min-seconds {m:g}" for m in args.min_seconds or [])
             + (f" --local-min-seconds {args.local_min_seconds:g}" if args.local_min_seconds is not None else "")
             + f"` on this machine "
             f"({os.cpu_count()} cores, x86-64), {time.strftime('%Y-%m-%d')}.", ""]
    if not args.skip_conversions:
        lines += conversion_scaling(args.rounds)
    if args.pi_host:
        for min_seconds in args.min_seconds or [2.0]:
            lines += two_devices(args.pi_host, args.pi_ssh_config, args.rounds, min_seconds,
                                 args.local_min_seconds)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
