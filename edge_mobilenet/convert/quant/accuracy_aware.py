"""Accuracy-aware int8: keep the fewest, most sensitive layers in float until a top-1 target is met.

Layers are ranked by their own quantization error (rmse/scale, :mod:`quant_debug`); the search keeps
the top-k of that ranking in float, doubling k until the target is met and then bisecting for the
smallest such k. Every candidate is a real model on its own runtime (LiteRT or ONNX Runtime) evaluated on the labelled held-out images.

Each candidate is paired with the float model on the same images (``contracts/paired.py``): the step
records top-1 agreement, output SNR and the top-1 change with its 95% paired-bootstrap interval, and a
verdict on the target: ``met`` or ``missed`` when the whole interval lies on one side of the allowed
loss, ``within noise`` when it straddles it (these images cannot tell; more would). The search moves
on the paired point estimate (the same images for every candidate, so its steps are comparable); a
search that stops on a ``within noise`` candidate says so rather than pretending to precision.
"""

from __future__ import annotations

from edge_mobilenet.convert.settings import AccuracyTarget
from edge_mobilenet.errors import EdgeError

IDEAL_RMSE_OVER_SCALE = 1 / 12 ** 0.5
MIN_COST_MS = 1e-3  # a layer whose float form costs nothing still ranks by its error


def block_costs(profile_path, stem: str, fmt) -> dict[str, float]:
    """ms that keeping each block in float costs on the profiled device: float ms - int8 ms, from the
    profiles of ``STEM<int8 suffix>`` and of its float baseline in ``profile_path``."""
    from edge_mobilenet.contracts.formats import FORMATS
    from edge_mobilenet.runtimes.profiling import block_ms, read_profiles

    profiles = read_profiles(profile_path)
    names = (f"{stem}{fmt.suffix}", f"{stem}{FORMATS[fmt.baseline].suffix}")
    missing = [n for n in names if n not in profiles]
    if missing:
        raise EdgeError(f"{profile_path}: has no profile of {', '.join(missing)}; profile the plain int8 "
                        f"artifact and its float baseline on the device: `edge-bench profile {' '.join(names)} "
                        "--device NAME`")
    int8_ms, float_ms = block_ms(profiles[names[0]]), block_ms(profiles[names[1]])
    return {block: round(float_ms.get(block, 0.0) - ms, 5) for block, ms in int8_ms.items()}


def latency_ranked(ranking: list, costs: dict[str, float]) -> list:
    """``ranking`` re-ordered by error recovered per millisecond lost: a layer's excess over ideal
    rounding error, over its share of its block's float-minus-int8 cost (never below MIN_COST_MS)."""
    import collections

    from edge_mobilenet.runtimes.profiling import block_of

    per_block = collections.Counter(block_of(r.layer) for r in ranking)

    def cost_ms(row) -> float:
        block = block_of(row.layer)
        return max(costs.get(block, 0.0), 0.0) / per_block[block]

    return sorted(ranking, key=lambda r: (-max(r.rmse_over_scale - IDEAL_RMSE_OVER_SCALE, 1e-6)
                                          / (cost_ms(r) + MIN_COST_MS), r.node))


def verdict(fidelity, float_top1: float, threshold: float) -> str:
    """``met`` / ``missed`` when the paired interval of the top-1 change lies wholly above / below the
    allowed loss (threshold - float top-1), else ``within noise``."""
    low, high = fidelity.delta_ci
    allowed = threshold - float_top1 - 1e-12
    return "met" if low >= allowed else "missed" if high < allowed else "within noise"


def _step(k: int, result, float_top1: float, threshold: float) -> dict:
    """The search record of one candidate: ``result`` is its PairedFidelity (or a bare top-1)."""
    if not hasattr(result, "quant_top1"):
        return {"float_layers": k, "top1": round(float(result), 4)}
    return {"float_layers": k, "top1": round(result.quant_top1, 4), "agreement": round(result.agreement, 4),
            "snr_db": result.to_dict()["snr_db"], "delta_top1": round(result.delta_top1, 4),
            "delta_ci": [round(v, 4) for v in result.delta_ci], "images": result.count,
            "verdict": verdict(result, float_top1, threshold)}


def search(quantizer, ranking: list, score, float_top1: float, target: AccuracyTarget,
           log=lambda message: None, metric: str = "top-1") -> dict:
    """Smallest k such that keeping ranking[:k] in float meets the target; returns the search record.

    ``quantizer.quantize(nodes)`` makes a model with ``nodes`` in float; ``score(model)`` is its
    PairedFidelity against the float model on the labelled images (or just its top-1, or for detectors
    its mAP: ``metric`` names it in the log; the record keeps the key ``top1``).
    """
    threshold = target.threshold(float_top1)
    steps, cache = [], {}

    def evaluate(k: int) -> float:
        if k not in cache:
            model = quantizer.quantize([r.node for r in ranking[:k]])
            result = score(model)
            steps.append(_step(k, result, float_top1, threshold))
            value = float(result.quant_top1 if hasattr(result, "quant_top1") else result)  # unrounded
            cache[k] = (value, model, steps[-1])
            paired = (f", agreement {steps[-1]['agreement']:.3f}, delta {100 * steps[-1]['delta_top1']:+.1f} pt "
                      f"(95% CI {100 * steps[-1]['delta_ci'][0]:+.1f} to {100 * steps[-1]['delta_ci'][1]:+.1f}): "
                      f"{steps[-1]['verdict']}" if "verdict" in steps[-1] else "")
            log(f"    {k:3d} layer(s) in float: {metric} {cache[k][0]:.4f} (target {threshold:.4f}){paired}")
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
                "model": cache[best][1], "steps": steps, "verdict": cache[best][2].get("verdict")}
    while high - low > 1:
        middle = (low + high) // 2
        if evaluate(middle) >= threshold:
            high = middle
        else:
            low = middle
    return {"met": True, "threshold": threshold, "chosen": high, "top1": cache[high][0],
            "model": cache[high][1], "steps": steps, "verdict": cache[high][2].get("verdict")}
