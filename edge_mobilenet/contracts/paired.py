"""Paired fidelity: every int8 figure is measured against the float model on the *same* images.

Two models scored on the same images make paired observations, so their difference is far less noisy
than two independent accuracies: an image both get right (or both get wrong) says nothing about the
difference, only the discordant images do. Hence

* label-free measures of how closely the int8 outputs follow the float ones: top-1 ``agreement``,
  ``snr_db`` (float output energy over the energy of the int8 error) and ``kl`` (mean KL divergence
  of the int8 class distribution from the float one);
* with labels, the top-1 change ``delta_top1`` with a paired bootstrap confidence interval and the
  exact McNemar test on the discordant counts.

Outputs are [N, classes(+1)] scores; ``label_offset`` is 1 when output 0 is a background class
(see ``metrics.label_offset``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from edge_mobilenet.errors import EdgeError

EPS = 1e-8  # probabilities are clipped at EPS before taking logs, so an int8 zero is not log(0)
PROBABILITY_TOLERANCE = 1e-3  # float rows summing to 1 within this are taken as probabilities
_BOOTSTRAP_CELLS = 4_000_000  # resampled indices drawn per chunk (bounds memory for large N)


@dataclass(frozen=True)
class PairedFidelity:
    """How an int8 model's outputs compare with the float model's on the same ``count`` images.

    The label fields are None when no labels were given. ``within_noise`` is True when the
    ``confidence`` interval of ``delta_top1`` contains 0: the top-1 change is not distinguishable
    from resampling noise on this many images (``mcnemar_p`` gives the same verdict as a p-value).
    Non-finite int8 outputs mean no fidelity at all: ``snr_db`` is -inf and ``kl`` inf.
    """

    count: int
    agreement: float
    snr_db: float
    kl: float
    confidence: float = 0.95
    float_top1: float | None = None
    quant_top1: float | None = None
    delta_top1: float | None = None
    delta_ci: tuple[float, float] | None = None
    mcnemar_p: float | None = None
    discordant: tuple[int, int] | None = None
    within_noise: bool | None = None

    def to_dict(self) -> dict:
        """JSON-ready (strict JSON): non-finite numbers become "inf", "-inf" or "nan" (``float()``
        reads them back); shares to 4 decimals, dB to 2, KL and p to 4 significant figures."""
        return {
            "count": self.count, "agreement": _round(self.agreement, 4), "snr_db": _round(self.snr_db, 2),
            "kl": _significant(self.kl), "confidence": self.confidence,
            "float_top1": _round(self.float_top1, 4), "quant_top1": _round(self.quant_top1, 4),
            "delta_top1": _round(self.delta_top1, 4),
            "delta_ci": None if self.delta_ci is None else [_round(v, 4) for v in self.delta_ci],
            "mcnemar_p": _significant(self.mcnemar_p),
            "discordant": None if self.discordant is None else list(self.discordant),
            "within_noise": self.within_noise,
        }


def paired_fidelity(float_outputs, quant_outputs, labels=None, label_offset: int = 0, *,
                    bootstrap: int = 2000, seed: int = 0, confidence: float = 0.95) -> PairedFidelity:
    """Paired comparison of ``quant_outputs`` with ``float_outputs`` (both [N, classes], logits or
    probabilities); with ``labels`` ([N] class indices) also the paired top-1 statistics.

    ``bootstrap`` resamples of the images (fixed ``seed``: deterministic) give the ``confidence``
    interval of the top-1 change. Raises EdgeError when shapes, counts or options don't fit.
    """
    ref, quant, labels = _checked(float_outputs, quant_outputs, labels, label_offset, bootstrap, confidence)
    float_pred, quant_pred = _top1(ref), _top1(quant)
    finite = bool(np.isfinite(quant).all())
    fidelity = PairedFidelity(
        count=len(ref), agreement=float(np.mean(float_pred == quant_pred)), confidence=confidence,
        snr_db=_snr_db(ref, quant) if finite else -math.inf, kl=_kl(ref, quant) if finite else math.inf)
    if labels is None:
        return fidelity
    float_right = float_pred - label_offset == labels
    quant_right = quant_pred - label_offset == labels
    b, c = int(np.sum(float_right & ~quant_right)), int(np.sum(~float_right & quant_right))
    low, high = _paired_bootstrap(quant_right.astype(np.float64) - float_right, bootstrap, seed, confidence)
    return replace(fidelity, float_top1=float(np.mean(float_right)), quant_top1=float(np.mean(quant_right)),
                   delta_top1=(c - b) / len(labels), delta_ci=(low, high), mcnemar_p=mcnemar_exact_p(b, c),
                   discordant=(b, c), within_noise=bool(low <= 0.0 <= high))


def describe(fidelity: PairedFidelity) -> str:
    """One line for reports, e.g. ``agreement 99.1% on 800 images, SNR 31.2 dB, KL 0.0021; top-1
    -0.25 pt (95% CI -0.88 to +0.38, McNemar p=0.62: within noise)``."""
    line = (f"agreement {100 * fidelity.agreement:.1f}% on {fidelity.count} images, "
            f"SNR {fidelity.snr_db:.1f} dB, KL {fidelity.kl:.2g}")
    if fidelity.delta_top1 is None:
        return line
    low, high = fidelity.delta_ci
    verdict = "within noise" if fidelity.within_noise else "beyond noise"
    return (f"{line}; top-1 {100 * fidelity.delta_top1:+.2f} pt ({100 * fidelity.confidence:g}% CI "
            f"{100 * low:+.2f} to {100 * high:+.2f}, McNemar p={fidelity.mcnemar_p:.2g}: {verdict})")


def better(a: PairedFidelity, b: PairedFidelity, min_gain_db: float = 0.0) -> bool:
    """Whether ``a`` follows the float model more closely than ``b`` (e.g. two quantization methods
    scored on the same held-out calibration images, no labels needed): higher ``snr_db``, and when
    that ties as reported (to 0.01 dB) lower ``kl``. With ``min_gain_db``, ``a`` must instead add at
    least that much SNR without a higher ``kl`` (a margin against what few images can't resolve).
    Both must be measured on the same images."""
    if a.count != b.count:
        raise EdgeError(f"paired fidelity: can't compare results on {a.count} and {b.count} images")
    if min_gain_db > 0:
        return a.snr_db >= b.snr_db + min_gain_db and a.kl <= b.kl
    snr_a, snr_b = round(a.snr_db, 2), round(b.snr_db, 2)
    return snr_a > snr_b or (snr_a == snr_b and a.kl < b.kl)


def snr_gain_db(reference, candidate, incumbent, *, bootstrap: int = 2000, seed: int = 0,
                confidence: float = 0.90) -> tuple[float, float, float]:
    """(gain, low, high): the output SNR ``candidate`` adds over ``incumbent`` (dB; both [N, ...] outputs
    of models paired with the float ``reference`` on the same N images) and the ``confidence``
    percentile interval of that gain over ``bootstrap`` resamples of the images (one index set per
    round for both, so the pairing holds). A gain carried by one or two images has a wide interval:
    aggregate SNR is dominated by the images with the largest error."""
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    noise = [np.sum(np.square(np.asarray(o, np.float64).reshape(len(reference), -1) - reference), axis=1)
             for o in (candidate, incumbent)]
    if len(noise[0]) != len(noise[1]) or not len(reference):
        raise EdgeError("snr gain: the outputs must pair with the reference, image for image")

    def gain(a, b):
        a, b = np.maximum(a, 1e-300), np.maximum(b, 1e-300)
        return 10 * np.log10(b / a)

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(reference), size=(bootstrap, len(reference)))
    resampled = gain(noise[0][picks].sum(axis=1), noise[1][picks].sum(axis=1))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return float(gain(noise[0].sum(), noise[1].sum())), float(low), float(high)


def paired_or_none(float_outputs, quant_outputs, labels=None, label_offset: int = 0) -> PairedFidelity | None:
    """:func:`paired_fidelity` of outputs of any shape [N, ...], or None when the float outputs are not
    finite (nothing to pair with)."""
    float_outputs, quant_outputs = np.asarray(float_outputs), np.asarray(quant_outputs)
    try:
        return paired_fidelity(float_outputs.reshape(len(float_outputs), -1),
                               quant_outputs.reshape(len(quant_outputs), -1), labels, label_offset)
    except EdgeError:
        return None


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` images only the float model gets right and ``c``
    only the int8 model does: under "no difference" each discordant image is a fair coin, so
    p = 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1; 1 when there are none.
    Exact integer arithmetic up to 1000 discordant images, log-space beyond."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    if n <= 1000:
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    else:
        logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                for i in range(k + 1)]
        top = max(logs)
        tail = math.exp(top + math.log(sum(math.exp(v - top) for v in logs)))
    return min(1.0, 2.0 * tail)


def _paired_bootstrap(diff: np.ndarray, rounds: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile interval of mean(``diff``) (per image: quant right - float right) over ``rounds``
    resamples of the images with replacement; one index set per round serves both models, which is
    what keeps the pairing (images both models get right or wrong contribute 0 either way)."""
    rng = np.random.default_rng(seed)
    n = len(diff)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    means = np.concatenate([diff[rng.integers(0, n, size=(min(chunk, rounds - start), n))].mean(axis=1)
                            for start in range(0, rounds, chunk)])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _snr_db(ref: np.ndarray, quant: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - quant)^2): inf when identical, -inf when ref is all zero."""
    noise = float(np.sum((ref - quant) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


def _kl(ref: np.ndarray, quant: np.ndarray) -> float:
    """Mean over images of KL(p_float || p_quant) = sum p_float (log p_float - log p_quant), in nats.

    Probabilities when every value of both is non-negative and the float rows sum to 1 (int8 softmax
    rows only roughly do, so each row is clipped at EPS and renormalised); logits otherwise."""
    probabilities = bool((ref >= 0).all() and (quant >= 0).all()
                         and np.allclose(ref.sum(axis=1), 1.0, rtol=0, atol=PROBABILITY_TOLERANCE))
    log_p, log_q = _log_probs(ref, probabilities), _log_probs(quant, probabilities)
    return max(0.0, float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1))))


def _log_probs(outputs: np.ndarray, probabilities: bool) -> np.ndarray:
    """Row-wise log-probabilities: of clipped, renormalised probabilities, or a stable log-softmax."""
    if probabilities:
        clipped = np.clip(outputs, EPS, None)
        return np.log(clipped) - np.log(clipped.sum(axis=1, keepdims=True))
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _round(value: float | None, digits: int) -> float | str | None:
    """``value`` to ``digits`` decimals; "inf", "-inf" or "nan" when not finite (strict JSON)."""
    if value is None:
        return None
    return round(float(value), digits) if math.isfinite(value) else str(float(value))


def _significant(value: float | None, figures: int = 4) -> float | str | None:
    """``value`` to ``figures`` significant figures (KL and p can be tiny); strings when not finite."""
    if value is None or not math.isfinite(value):
        return _round(value, 0)
    return float(f"{value:.{figures}g}")


def _top1(outputs: np.ndarray) -> np.ndarray:
    """Best class per row; -1 for a row holding a non-finite value (matches no class or label)."""
    predicted = np.argmax(np.nan_to_num(outputs, nan=-np.inf), axis=1)
    return np.where(np.isfinite(outputs).all(axis=1), predicted, -1)


def _checked(ref, quant, labels, offset: int, bootstrap: int, confidence: float) -> tuple:
    """Both outputs as float64 [N, classes] and the labels as int64 [N] (or None), or EdgeError."""
    ref, quant = np.asarray(ref, dtype=np.float64), np.asarray(quant, dtype=np.float64)
    if ref.shape != quant.shape:
        raise EdgeError(f"paired fidelity: float outputs have shape {list(ref.shape)} "
                        f"but int8 outputs have {list(quant.shape)}")
    if ref.ndim < 2 or len(ref) == 0:
        raise EdgeError(f"paired fidelity: outputs must be [N, classes] with N >= 1, not {list(ref.shape)}")
    ref, quant = ref.reshape(len(ref), -1), quant.reshape(len(quant), -1)
    if not np.isfinite(ref).all():
        raise EdgeError("paired fidelity: the float outputs hold a value that is not finite")
    if isinstance(offset, bool) or offset not in (0, 1):
        raise EdgeError(f"paired fidelity: label_offset must be 0 or 1, not {offset!r}")
    if labels is not None:
        if bootstrap < 1 or not 0.0 < confidence < 1.0:
            raise EdgeError(f"paired fidelity: need bootstrap >= 1 and 0 < confidence < 1, "
                            f"not {bootstrap} and {confidence}")
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(ref):
            raise EdgeError(f"paired fidelity: {len(labels)} labels for {len(ref)} images")
        if labels.size and not np.array_equal(labels, np.round(labels.astype(np.float64))):
            raise EdgeError(f"paired fidelity: labels must be class indices (found {labels[:5].tolist()})")
        labels = labels.astype(np.int64)
    return ref, quant, labels
