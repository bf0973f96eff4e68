"""Interleaved latency of ONNX files in one process: p50 per file and the per-round ratio to the first.

Each file gets its own ONNX Runtime CPU session (1 thread unless --threads), a warm-up, then --rounds
rounds of --runs invokes with the files taking turns (the order rotates every round), so the machine's
drift falls on every file alike; the ratio column is the median of the per-round p50 ratios to the
first file, with its interquartile range.

    python benchmarks/onnx_interleaved.py BASELINE.onnx OTHER.onnx ... [--rounds 40] [--runs 40]
"""

from __future__ import annotations

import argparse

import numpy as np


def interleaved(paths: list[str], rounds: int, runs: int, threads: int) -> dict[str, list[float]]:
    """Per file, its p50 in each round (``benchmarks/latency_aware.interleave``: one timing loop for all)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from latency_aware import interleave

    return dict(zip(paths, interleave([Path(p) for p in paths], rounds, runs, threads)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    p50s = interleaved(args.paths, args.rounds, args.runs, args.threads)
    base = np.asarray(p50s[args.paths[0]])
    print("| file | p50 ms | ratio to the first (IQR) |\n|---|---|---|")
    for path in args.paths:
        ratio = np.asarray(p50s[path]) / base
        print(f"| {path} | {np.median(p50s[path]):.3f} | {np.median(ratio):.3f} "
              f"({np.percentile(ratio, 25):.3f}-{np.percentile(ratio, 75):.3f}) |")


if __name__ == "__main__":
    main()
