"""Post-training int8 methods beyond min/max, chosen per artifact on held-out calibration images.

The calibration images are split: the first part calibrates (and feeds the weight methods), the last
``HELD_OUT_SHARE`` is held out. Each candidate is a real int8 artifact on its own runtime (LiteRT or
ONNX Runtime) whose outputs on the held-out images are paired with the float model's on the same images
(``contracts/paired.py``: output SNR, then KL). With ``--ptq auto``:

0. cross-layer equalization (``quant/equalize.py``; ReLU pairs, ReLU6 pairs where the calibration data
   allow it) against plain, when the model has such pairs; the weight methods build on it if it wins;
1. weights: plain (round to nearest), bias correction, AdaRound + bias correction (AdaRound alone
   when bias correction is not wanted) (``quant/weights.py``; the kernels put exactly on the runtime's int8 grid, so the converter keeps
   them); the best by paired fidelity is kept;
2. activation ranges on those weights: min/max, percentile, MSE-optimal (TFLite: our estimates written
   into the calibrated model, ``quant/ranges.py``; ONNX: ONNX Runtime's percentile calibration, no MSE);
a method is kept only when it beats what it would replace by ``MIN_GAIN_DB`` of SNR without a higher KL
and the paired-bootstrap interval of its SNR gain (widened for the number of candidates) lies above 0 dB;
when nothing does, the artifact is the plain one, byte for byte. Naming methods (``--ptq bias-correction,ranges-mse``) applies them without the
contest; ``--ptq none`` is plain min/max. Every trial's fidelity goes into the manifest.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from edge_mobilenet.convert.settings import MODEL_PTQ_METHODS, PTQ_METHODS, QuantizeSettings

HELD_OUT_SHARE = 0.25
MIN_HELD_OUT = 8
MIN_CALIBRATION = 8  # fewer calibration images than this: nothing to hold out, plain min/max
MIN_GAIN_DB = 0.5  # output SNR a method must add on the held-out images to be kept
FAMILY_ALPHA = 0.05  # one-sided chance, over all candidates of a contest, of keeping a method for noise
MODEL_METHODS = MODEL_PTQ_METHODS  # methods that change the float model, in the order applied
EQUALIZATION, WEIGHT_METHODS = MODEL_METHODS[0], MODEL_METHODS[1:]  # "equalization"; bias-correction, adaround
RANGE_METHODS = {"ranges-percentile": "percentile", "ranges-mse": "mse"}


@dataclass
class PtqChoice:
    """What one integer format is built with: a replacement float model (None: the usual one), the
    activation range estimator (None: min/max) and the record for the manifest."""

    model: object | None = None
    ranges: str | None = None
    record: dict = field(default_factory=dict)

    @property
    def plain(self) -> bool:
        return self.model is None and self.ranges is None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def split(calibration: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(calibrating, held out) images, or None when there are too few to hold any out."""
    held = max(MIN_HELD_OUT, int(round(len(calibration) * HELD_OUT_SHARE)))
    if len(calibration) - held < MIN_CALIBRATION:
        return None
    return calibration[:-held], calibration[-held:]


def label(methods: tuple[str, ...]) -> str:
    """The contest's name for a set of model methods, e.g. equalization+adaround+bias-correction."""
    order = (EQUALIZATION, "adaround", "bias-correction")
    return "+".join(m for m in order if m in methods)


def weight_model(base, method: tuple[str, ...], images: np.ndarray, qmax: int):
    """``base`` with the model methods applied (folded; cross-layer equalization first, then the
    weight methods, kernels on the int8 grid), and the last one's report."""
    from edge_mobilenet.convert.quant import weights

    if EQUALIZATION in method:
        from edge_mobilenet.convert.quant.equalize import equalize

        base, report = equalize(base, images)
        method = tuple(m for m in method if m != EQUALIZATION)
        if not method:
            return base, report
    if "adaround" in method:
        return weights.adaround(base, images, bias_correction="bias-correction" in method, qmax=qmax)
    return weights.bias_correct(base, images, qmax=qmax)


class Contest:
    """Runs candidates through ``trial(model, ranges, images) -> int8 artifact`` and scores them on the
    held-out images against the float outputs."""

    def __init__(self, trial, runtime: str, base, calibrating: np.ndarray, held: np.ndarray):
        self.trial, self.runtime, self.base = trial, runtime, base
        self.calibrating, self.held = calibrating, held
        self.reference = np.asarray(base.predict(held, batch_size=32, verbose=0))
        self.trials: list[dict] = []
        self.outputs: dict[str, np.ndarray] = {}  # per trial name: its outputs on the held-out images

    def score(self, name: str, model, ranges: str | None):
        from edge_mobilenet.contracts.paired import paired_fidelity
        from edge_mobilenet.runtimes.sessions import run_artifact

        started = time.perf_counter()
        artifact = self.trial(model if model is not None else self.base, ranges, self.calibrating)
        self.outputs[name] = run_artifact(artifact, self.runtime, self.held)
        fidelity = paired_fidelity(self.reference, self.outputs[name])
        self.trials.append({"methods": name, **fidelity.to_dict(), "seconds": round(time.perf_counter() - started, 2)})
        _log(f"    ptq {name:32s} held-out SNR {fidelity.snr_db:6.2f} dB, KL {fidelity.kl:.4g}, "
             f"agreement {fidelity.agreement:.3f}")
        return fidelity


def _best(contest: Contest, scored: list[tuple[str, object, object]]):
    """The (name, payload, fidelity) that wins on paired fidelity: a later (more elaborate) candidate
    replaces the incumbent only when (1) it adds ``MIN_GAIN_DB`` of output SNR without a higher KL and
    (2) the lower end of the paired-bootstrap interval of that gain is above 0 dB, so a method is not
    kept for a difference a few dozen held-out images can't tell from noise, nor for one carried by an
    image or two (the SNR of a set is dominated by its worst images). The interval is Bonferroni-wide
    for the number of candidates (one-sided ``FAMILY_ALPHA`` over the whole contest: 90% for one
    candidate, 98% for five), since trying more methods gives more chances to keep a lucky one. Each
    comparison is recorded in the candidate's trial (``gain_db_vs``)."""
    from edge_mobilenet.contracts.paired import better, snr_gain_db

    best = scored[0]
    confidence = 1.0 - 2.0 * FAMILY_ALPHA / max(1, len(scored) - 1)
    for candidate in scored[1:]:
        gain, low, high = snr_gain_db(contest.reference, contest.outputs[candidate[0]], contest.outputs[best[0]],
                                      confidence=confidence)
        trial = next(t for t in contest.trials if t["methods"] == candidate[0])
        trial["gain_db_vs"] = {"incumbent": best[0], "gain": round(gain, 2), "confidence": round(confidence, 3),
                               "interval": [round(low, 2), round(high, 2)]}
        if better(candidate[2], best[2], MIN_GAIN_DB) and low > 0:
            best = candidate
    return best


def choose(base, runtime: str, calibration: np.ndarray, settings: QuantizeSettings, trial, qmax: int,
           range_methods: dict[str, str]) -> PtqChoice:
    """The PtqChoice for one integer format (see the module docstring). ``trial(model, ranges, images)``
    converts a candidate; ``range_methods`` maps our method names to the runtime's estimators.

    With ``--target-accuracy`` only the range estimators take part: the accuracy-aware search keeps
    layers in float, which must be the original float layers (the model methods change every kernel
    and bias, so with all layers in float the model would still not be the float model)."""
    wanted = PTQ_METHODS if settings.ptq == ("auto",) else settings.ptq
    removed = [m for m in wanted if m in MODEL_METHODS] if settings.target_accuracy is not None else []
    if removed:
        wanted = tuple(m for m in wanted if m not in MODEL_METHODS)
        _log(f"    ptq {', '.join(removed)}: not combined with --target-accuracy (layers kept in float must be "
             "the float model's own)")
    choice = _choose(base, runtime, calibration, settings, trial, qmax, range_methods, wanted)
    if removed:
        choice.record["not_combined_with_target_accuracy"] = removed
    return choice


def _choose(base, runtime: str, calibration: np.ndarray, settings: QuantizeSettings, trial, qmax: int,
            range_methods: dict[str, str], wanted: tuple[str, ...]) -> PtqChoice:
    parts = split(calibration)
    if settings.ptq == ("none",) or parts is None:
        reason = "--ptq none" if parts else f"{len(calibration)} calibration images: too few to hold any out"
        return PtqChoice(record={"requested": list(settings.ptq), "applied": [], "note": reason})
    started = time.perf_counter()
    contest = Contest(trial, runtime, base, *parts)
    if settings.ptq != ("auto",):
        return _forced(contest, wanted, qmax, range_methods, started)
    scored = [("plain", None, contest.score("plain", None, None))]
    prefix = _equalization_trial(contest, wanted, qmax, scored)
    for name, method in weight_options(wanted):
        label, method = "+".join(prefix + (name,)), prefix + method
        model = weight_model(base, method, contest.calibrating, qmax)[0]
        scored.append((label, model, contest.score(label, model, None)))
    weights_name, model, fidelity = _best(contest, scored)
    scored = [(weights_name, None, fidelity)]
    for name, estimator in range_methods.items():
        if name in wanted:
            label = f"{name}" if weights_name == "plain" else f"{weights_name}+{name}"
            scored.append((label, estimator, contest.score(label, model, estimator)))
    label, ranges, fidelity = _best(contest, scored)
    applied = [] if label == "plain" else label.split("+")
    return PtqChoice(model, ranges, _record(list(settings.ptq), applied, contest, started))


def _equalization_trial(contest: "Contest", wanted, qmax: int, scored: list) -> tuple[str, ...]:
    """Score cross-layer equalization (plain rounding) against plain when wanted and the model has
    pairs to equalize; ``(EQUALIZATION,)`` when it wins (the weight methods then build on it), else ()."""
    if EQUALIZATION not in wanted:
        return ()
    model, pairs = weight_model(contest.base, (EQUALIZATION,), contest.calibrating, qmax)
    if not pairs:
        _log("    ptq equalization: no convolution pairs joined by a ReLU; not tried")
        return ()
    scored.append((EQUALIZATION, model, contest.score(EQUALIZATION, model, None)))
    return (EQUALIZATION,) if _best(contest, scored)[0] == EQUALIZATION else ()


def replay(base, record: dict | None, calibration: np.ndarray, qmax: int,
           range_methods: dict[str, str]) -> PtqChoice | None:
    """The choice a manifest's ``recipe.ptq`` record describes, rebuilt from the same calibration images
    (same split, same methods; the weight methods are deterministic), or None when nothing was applied.
    ``quant-report`` needs it: the artifact's float twin is the model the methods made."""
    applied = (record or {}).get("applied") or []
    parts = split(calibration)
    if not applied or parts is None:
        return None
    method = tuple(m for m in MODEL_METHODS if m in applied)
    model = weight_model(base, method, parts[0], qmax)[0] if method else None
    ranges = next((range_methods[m] for m in applied if m in range_methods), None)
    return PtqChoice(model, ranges, dict(record))


def weight_options(wanted: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """The weight candidates after plain. With both methods wanted, AdaRound is tried with bias
    correction only: alone it never beat the pair (V1 0.25/128 and V2 1.0/224, both runtimes,
    benchmarks/results/ptq_methods.md), and each AdaRound costs the most of the methods."""
    if all(m in wanted for m in WEIGHT_METHODS):
        return [("bias-correction", ("bias-correction",)), ("adaround+bias-correction", WEIGHT_METHODS)]
    return [(m, (m,)) for m in WEIGHT_METHODS if m in wanted]


def _forced(contest: Contest, wanted, qmax: int, range_methods: dict[str, str], started: float) -> PtqChoice:
    """Apply the named methods (no contest); plain and the result are both scored for the record."""
    method = tuple(m for m in MODEL_METHODS if m in wanted)
    model = weight_model(contest.base, method, contest.calibrating, qmax)[0] if method else None
    ranges = next((range_methods[m] for m in wanted if m in range_methods), None)
    applied = [m for m in wanted if m in MODEL_METHODS or m in range_methods]
    contest.score("plain", None, None)
    if applied:
        contest.score("+".join(applied), model, ranges)
    record = _record(list(wanted), applied, contest, started)
    unavailable = [m for m in wanted if m not in applied]
    if unavailable:  # e.g. ranges-mse on ONNX Runtime
        record["unavailable"] = unavailable
        _log(f"    ptq {', '.join(unavailable)}: not available on {contest.runtime}; not applied")
    return PtqChoice(model, ranges, record)


def _record(requested: list[str], applied: list[str], contest: Contest, started: float) -> dict:
    return {"requested": requested, "applied": applied,
            "held_out_images": int(len(contest.held)), "calibration_images": int(len(contest.calibrating)),
            "trials": contest.trials, "seconds": round(time.perf_counter() - started, 1)}
