"""Accuracy-aware int8: keep the fewest, most sensitive layers in float until a top-1 target is met.

Layers are ranked by their own quantization error (rmse/scale, :mod:`quant_debug`); the search keeps
the top-k of that ranking in float, doubling k until the target is met and then bisecting for the
smallest such k. Every candidate is a real model on its own runtime (LiteRT or ONNX Runtime) evaluated on the labelled held-out images.
"""

from __future__ import annotations

from edge_mobilenet.convert.settings import AccuracyTarget


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
