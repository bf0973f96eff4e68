"""Paired int8-vs-float fidelity on constructed outputs: the exact McNemar p, the paired bootstrap
interval, SNR and KL against hand computations, label offsets and input validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge_mobilenet.contracts.paired import (PairedFidelity, better, describe, mcnemar_exact_p,
                                              paired_fidelity)
from edge_mobilenet.errors import EdgeError

CLASSES = 5


def scores(predicted, classes: int = CLASSES) -> np.ndarray:
    """Logits whose best class per row is ``predicted``."""
    return np.eye(classes)[np.asarray(predicted)] * 3.0 - 1.0


def discordant_case(b: int, c: int, n: int = 200):
    """Outputs and labels (all class 0) with exactly ``b`` images only float gets right and ``c`` only
    int8 gets right; float is right on the first 3/4 of the images."""
    float_pred = np.where(np.arange(n) < 3 * n // 4, 0, 1)
    quant_pred = float_pred.copy()
    quant_pred[:b] = 2                          # float right, int8 wrong
    quant_pred[3 * n // 4:3 * n // 4 + c] = 0   # float wrong, int8 right
    return scores(float_pred), scores(quant_pred), np.zeros(n, dtype=np.int64)


def test_identical_outputs_are_perfect_and_within_noise():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, CLASSES))
    labels = rng.integers(0, CLASSES, size=50)
    fid = paired_fidelity(logits, logits.copy(), labels)
    assert fid.count == 50 and fid.agreement == 1.0
    assert fid.snr_db == math.inf and fid.kl == 0.0
    assert fid.delta_top1 == 0.0 and fid.delta_ci == (0.0, 0.0) and fid.float_top1 == fid.quant_top1
    assert fid.mcnemar_p == 1.0 and fid.discordant == (0, 0) and fid.within_noise is True
    data = json.loads(json.dumps(fid.to_dict(), allow_nan=False))
    assert data["snr_db"] == "inf" and float(data["snr_db"]) == math.inf and data["delta_ci"] == [0.0, 0.0]


def test_ten_one_sided_discordant_images_are_beyond_noise():
    fid = paired_fidelity(*discordant_case(b=10, c=0))
    assert fid.discordant == (10, 0)
    assert fid.float_top1 == 0.75 and fid.quant_top1 == 0.70 and fid.delta_top1 == pytest.approx(-0.05)
    assert fid.mcnemar_p == pytest.approx(2 * 0.5 ** 10, rel=1e-12)
    low, high = fid.delta_ci
    assert low <= -0.05 <= high < 0 and fid.within_noise is False
    assert fid.agreement == pytest.approx(190 / 200)
    assert "beyond noise" in describe(fid)


def test_three_against_two_is_within_noise():
    fid = paired_fidelity(*discordant_case(b=3, c=2))
    assert fid.discordant == (3, 2) and fid.delta_top1 == pytest.approx(-1 / 200)
    assert fid.mcnemar_p == 1.0  # 2 * P(X <= 2), X ~ Bin(5, 1/2) = 2 * 16/32
    assert fid.delta_ci[0] < 0 < fid.delta_ci[1] and fid.within_noise is True


def test_mcnemar_matches_exact_binomial_small_and_large():
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(4, 4) == 1.0
    assert mcnemar_exact_p(1, 7) == pytest.approx(2 * (1 + 8) / 2 ** 8, rel=1e-12)
    assert mcnemar_exact_p(7, 1) == mcnemar_exact_p(1, 7)
    exact = 2 * sum(math.comb(1100, i) for i in range(501)) / 2 ** 1100  # log-space branch (n > 1000)
    assert mcnemar_exact_p(600, 500) == pytest.approx(exact, rel=1e-9)
    assert 0.0 <= mcnemar_exact_p(5000, 3000) < 1e-100


def test_bootstrap_is_deterministic_given_seed():
    case = discordant_case(b=20, c=12)
    first = paired_fidelity(*case, seed=7)
    assert paired_fidelity(*case, seed=7) == first
    others = {paired_fidelity(*case, seed=s).delta_ci for s in range(5)}
    assert len(others) > 1  # the seed is honoured
    narrow = paired_fidelity(*case, confidence=0.5)
    assert first.delta_ci[0] <= narrow.delta_ci[0] <= narrow.delta_ci[1] <= first.delta_ci[1]


def test_snr_matches_formula():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(100, 10))
    noise = rng.normal(scale=0.01, size=ref.shape)
    fid = paired_fidelity(ref, ref + noise)
    assert fid.snr_db == pytest.approx(10 * math.log10(np.sum(ref ** 2) / np.sum(noise ** 2)), rel=1e-6)
    assert 35 < fid.snr_db < 45 and fid.delta_top1 is None and fid.within_noise is None


def test_kl_matches_hand_computation_for_probabilities_and_logits():
    p = np.array([[0.5, 0.5], [0.8, 0.2]])
    q = np.array([[0.9, 0.1], [0.6, 0.4]])
    by_hand = (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
               + 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)) / 2
    assert paired_fidelity(p, q).kl == pytest.approx(by_hand, rel=1e-6)
    assert paired_fidelity(np.log(p) + 3.0, np.log(q) - 2.0).kl == pytest.approx(by_hand, rel=1e-9)


def test_int8_rounded_probabilities_are_still_probabilities():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(10), size=20)
    q = np.round(p * 256) / 256  # int8 softmax: rows no longer sum to exactly 1, some zeros
    fid = paired_fidelity(p, q)
    assert 0 < fid.kl < 0.05 and math.isfinite(fid.kl)


def test_label_offset_compares_prediction_minus_offset():
    labels = np.arange(20) % 10
    outputs = scores(labels + 1, classes=11)  # 1001-style: output 0 is background
    assert paired_fidelity(outputs, outputs, labels, label_offset=1).float_top1 == 1.0
    assert paired_fidelity(outputs, outputs, labels, label_offset=0).float_top1 == 0.0


def test_non_finite_int8_outputs_mean_no_fidelity():
    ref = scores([0, 1, 2, 3])
    quant = ref.copy()
    quant[1, 2] = np.nan
    fid = paired_fidelity(ref, quant, [0, 1, 2, 3])
    assert fid.snr_db == -math.inf and fid.kl == math.inf
    assert fid.agreement == 0.75 and fid.discordant == (1, 0)
    assert json.dumps(fid.to_dict(), allow_nan=False)


@pytest.mark.parametrize("quant, labels, kwargs, message", [
    (np.zeros((4, 6)), None, {}, r"float outputs have shape \[4, 5\] but int8 outputs have \[4, 6\]"),
    (np.zeros((3, 5)), None, {}, r"shape \[4, 5\] but int8 outputs have \[3, 5\]"),
    (np.zeros((4, 5)), [0, 1, 2], {}, "3 labels for 4 images"),
    (np.zeros((4, 5)), [0.5, 1, 2, 3], {}, "labels must be class indices"),
    (np.zeros((4, 5)), None, {"label_offset": 2}, "label_offset must be 0 or 1"),
    (np.zeros((4, 5)), [0, 1, 2, 3], {"confidence": 1.5}, "0 < confidence < 1"),
])
def test_bad_inputs_raise_one_line(quant, labels, kwargs, message):
    with pytest.raises(EdgeError, match=message) as error:
        paired_fidelity(np.zeros((4, 5)), quant, labels, **kwargs)
    assert "\n" not in str(error.value)


def test_non_finite_float_outputs_are_refused():
    ref = np.zeros((2, 3))
    ref[0, 0] = np.inf
    with pytest.raises(EdgeError, match="float outputs hold a value that is not finite"):
        paired_fidelity(ref, np.zeros((2, 3)))


def test_describe_is_one_report_line():
    line = describe(paired_fidelity(*discordant_case(b=3, c=2)))
    assert line.startswith("agreement 97.5% on 200 images, SNR ")
    assert "; top-1 -0.50 pt (95% CI " in line and "McNemar p=1: within noise)" in line
    unlabelled = describe(paired_fidelity(*discordant_case(b=3, c=2)[:2]))
    assert "top-1" not in unlabelled and "\n" not in unlabelled


def test_better_prefers_higher_snr_then_lower_kl():
    def fid(snr, kl):
        return PairedFidelity(count=100, agreement=0.99, snr_db=snr, kl=kl)

    assert better(fid(30.0, 0.01), fid(25.0, 0.001)) and not better(fid(25.0, 0.001), fid(30.0, 0.01))
    assert better(fid(30.001, 0.001), fid(30.0, 0.002)) and not better(fid(30.0, 0.002), fid(30.001, 0.001))
    assert better(fid(math.inf, 0.0), fid(60.0, 0.0)) and not better(fid(30.0, 0.01), fid(30.0, 0.01))
    with pytest.raises(EdgeError, match="100 and 50 images"):
        better(fid(30.0, 0.01), PairedFidelity(count=50, agreement=1.0, snr_db=20.0, kl=0.1))


def test_snr_gain_needs_more_than_one_image():
    """A gain spread over the images has an interval above 0; the same total gain carried by one image
    (the others slightly worse) does not."""
    from edge_mobilenet.contracts.paired import snr_gain_db

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 10))
    noise = rng.normal(size=(50, 10))
    incumbent = reference + 0.1 * noise
    everywhere = reference + 0.05 * noise
    gain, low, high = snr_gain_db(reference, everywhere, incumbent)
    assert abs(gain - 20 * np.log10(2)) < 1e-9 and 0 < low <= gain <= high
    outlier = incumbent.copy()
    outlier[0] += 3 * noise[0]  # one bad image dominates the incumbent's error
    one_image = incumbent * 1.0
    one_image[1:] = reference[1:] + 0.11 * noise[1:]
    gain, low, high = snr_gain_db(reference, one_image, outlier)
    assert gain > 3 and low < 0 < high
