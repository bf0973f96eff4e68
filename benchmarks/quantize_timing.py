"""`make quantize` cold and warm: conversion seconds per model and format, sizes, int8/fp32 ratios.

Cold = empty build/artifacts (the trained models in build/models are kept; pass --retrain to time the
training too); warm = the same command again with nothing changed. Writes benchmarks/results/quantize.md.

    .venv/bin/python benchmarks/quantize_timing.py [--retrain]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_make() -> float:
    started = time.perf_counter()
    subprocess.run(["make", "-s", "quantize"], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="also delete build/models (cold training)")
    args = parser.parse_args()
    shutil.rmtree(REPO / "build" / "artifacts", ignore_errors=True)
    if args.retrain:
        shutil.rmtree(REPO / "build" / "models", ignore_errors=True)
    cold = run_make()
    warm = run_make()
    from edge_mobilenet.contracts.manifest import read_manifest

    models: dict[str, dict] = {}
    for entry in read_manifest(REPO / "build" / "artifacts").entries:
        models.setdefault(Path(entry.source_file).stem, {})[entry.format] = entry
    lines = ["# make quantize: timing and sizes", "",
             f"`{' '.join(sys.argv)}` on this machine (2 cores): cold {cold:.0f} s "
             f"({'training included' if args.retrain else 'trained models cached'}), warm {warm:.1f} s.", "",
             "| model | format | size KiB | size / float | convert s | top-1 | top-1 agreement with float | "
             "XNNPACK nodes (partitions) | tflite-runtime 2.14 loads |", "|---|---|---|---|---|---|---|---|---|"]
    for stem, formats in models.items():
        for name, entry in formats.items():
            base = formats[entry.baseline].size_bytes
            delegation = entry.facts.get("delegation")
            delegated = (f"{delegation['nodes_delegated']}/{delegation['nodes_total']} "
                         f"({delegation['partitions']})" if delegation else "n/a")
            loads = entry.facts.get("compatibility", {}).get("tflite-runtime==2.14", {}).get("loads", "n/a")
            validation = entry.validation
            lines.append(f"| {stem} | {name} | {entry.size_bytes / 1024:.0f} | {entry.size_bytes / base:.2f} | "
                         f"{entry.facts.get('convert_seconds')} | {validation.metrics.get('top1') if validation else None} | "
                         f"{validation.agreement_with_float if validation else None} | {delegated} | {loads} |")
    report = "\n".join(lines) + "\n"
    print(report)
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "results" / "quantize.md").write_text(report)


if __name__ == "__main__":
    main()
