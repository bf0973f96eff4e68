"""The host's one timing loop (the device runner keeps its own: it travels alone)."""

from __future__ import annotations

import time


def median_ms(invoke, runs: int = 50, warmup_runs: int = 1) -> float:
    """Median wall time of ``invoke()`` in milliseconds after ``warmup_runs`` untimed calls."""
    import numpy as np

    for _ in range(warmup_runs):
        invoke()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        invoke()
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def tflite_latency_ms_p50(model, runs: int = 50, threads: int = 1, warmup_runs: int = 1) -> float:
    """Median bare LiteRT ``invoke()`` time of a model (bytes or path) on this machine."""
    from edge_mobilenet.runtimes.tflite import tflite_invoker

    return median_ms(tflite_invoker(model, threads), runs, warmup_runs)


def onnx_latency_ms_p50(model, runs: int = 50, threads: int = 1, warmup_runs: int = 1) -> float:
    """Median ONNX Runtime run time of a model (bytes or path) on this machine."""
    from edge_mobilenet.runtimes.onnx import onnx_invoker

    return median_ms(onnx_invoker(model, threads), runs, warmup_runs)
