"""Accuracy-aware int8: keep the fewest, most sensitive layers in float until a top-1 target is met.

Layers are ranked by their own quantization error (rmse/scale, :mod:`quant_debug`); the search keeps
the top-k of that ranking in float, doubling k until the target is met and then bisecting for the
smallest such k. Every candidate is a real LiteRT model evaluated on the labelled held-out images.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from edge_mobilenet.errors import EdgeError


@dataclass(frozen=True)
class AccuracyTarget:
    """``99%`` of float top-1 (relative) or ``0.5pt`` below it (points)."""

    text: str
    relative: float | None = None
    points: float | None = None

    def threshold(self, float_top1: float) -> float:
        if self.relative is not None:
            return float_top1 * self.relative
        return float_top1 - self.points / 100.0


def parse_target(text: str) -> AccuracyTarget:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%|pt|points?)\s*", text or "")
    if not match:
        raise EdgeError(f"target accuracy must look like 99% (of float top-1) or 0.5pt (points below "
                        f"float). Received {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        if not 0 < value <= 100:
            raise EdgeError(f"target accuracy must be in (0%, 100%]. Received {text!r}")
        return AccuracyTarget(text, relative=value / 100.0)
    return AccuracyTarget(text, points=value)


def top1(model_bytes: bytes, inputs: np.ndarray, labels: np.ndarray, offset: int) -> float:
    from edge_mobilenet.convert.tflite import make_interpreter, run_tflite

    outputs = run_tflite(make_interpreter(model_bytes), inputs)
    return float(np.mean(np.argmax(outputs, axis=1) - offset == labels))


def latency_ms_p50(model, runs: int = 50, threads: int = 1, warmup_runs: int = 1) -> float:
    """Median bare LiteRT ``invoke()`` time of a model (bytes or path) on this machine."""
    from edge_mobilenet.convert.tflite import make_interpreter

    interpreter = make_interpreter(model, threads)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    for _ in range(warmup_runs):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def search(quantizer, ranking: list, score, float_top1: float, target: AccuracyTarget,
           log=lambda message: None) -> dict:
    """Smallest k such that keeping ranking[:k] in float meets the target; returns the search record.

    ``quantizer.quantize(nodes)`` makes a model with ``nodes`` in float; ``score(model)`` is its top-1.
    """
    threshold = target.threshold(float_top1)
    steps, cache = [], {}

    def evaluate(k: int) -> float:
        if k not in cache:
            model = quantizer.quantize([r.node for r in ranking[:k]])
            cache[k] = (score(model), model)
            steps.append({"float_layers": k, "top1": round(cache[k][0], 4)})
            log(f"    {k:3d} layer(s) in float: top-1 {cache[k][0]:.4f} (target {threshold:.4f})")
        return cache[k][0]

    low, high, k = 0, None, 0
    while True:
        if evaluate(k) >= threshold:
            high = k
            break
        low = k
        if k == len(ranking):
            break
        k = 1 if k == 0 else min(2 * k, len(ranking))
    if high is None:
        best = max(cache, key=lambda key: cache[key][0])
        return {"met": False, "threshold": threshold, "chosen": best, "top1": cache[best][0],
                "model": cache[best][1], "steps": steps}
    while high - low > 1:
        middle = (low + high) // 2
        if evaluate(middle) >= threshold:
            high = middle
        else:
            low = middle
    return {"met": True, "threshold": threshold, "chosen": high, "top1": cache[high][0],
            "model": cache[high][1], "steps": steps}
