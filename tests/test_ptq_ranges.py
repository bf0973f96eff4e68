"""Activation range estimators for TFLite int8 (convert/quant/ranges.py): real calibration and MLIR
quantization of a tiny random-weight MobileNetV2 (0.25/32, 10 classes, BatchNorm statistics from the
digits), LiteRT runs; the estimators themselves on constructed values."""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from edge_mobilenet.convert.quant import ranges as R

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "calibration_data" / "digits")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(SavedModel folder, SelectiveQuantizer, calibration inputs, held-out inputs)."""
    from edge_mobilenet.convert.quant.tflite_debug import SelectiveQuantizer
    from edge_mobilenet.convert.sources import load_float_model
    from edge_mobilenet.convert.tflite import export_saved_model
    from edge_mobilenet.data.calibration import CalibrationSource, load_calibration

    folder = tmp_path_factory.mktemp("ranges")
    source = load_float_model("mobilenet_v2", alpha=0.25, size=32, classes=10, output_dir=folder / "models",
                              calibration=CalibrationSource(DIGITS, count=20))
    calibration = load_calibration(CalibrationSource(DIGITS, count=32, seed=1), (32, 32),
                                   source.preprocessing)
    held_out = load_calibration(CalibrationSource(DIGITS, count=64, seed=2), (32, 32), source.preprocessing,
                                exclude=set(calibration.images.files))
    saved_model = str(folder / "saved_model")
    export_saved_model(source.model, saved_model)
    inputs = calibration.inputs(source.preprocessing)
    return saved_model, SelectiveQuantizer(saved_model, inputs), inputs, held_out.inputs(source.preprocessing)


def _quantize(quantizer, calibrated: bytes) -> bytes:
    """The quantizer's int8 model from another calibrated flatbuffer (same io type, nothing in float)."""
    other = copy.copy(quantizer)
    other.calibrated = calibrated
    return other.quantize([])


def _graph(flatbuffer: bytes):
    model = R.read_model(flatbuffer)
    return model, model.subgraphs[0], R._op_names(model)


def _conv_fed_signed_tensor(calibrated: bytes) -> tuple[str, int]:
    """A signed activation (a linear bottleneck's projection) that is the input of a CONV_2D."""
    model, graph, ops = _graph(calibrated)
    for op in graph.operators:
        tensor = graph.tensors[op.inputs[0]]
        stats = R._stats(tensor)
        if ops[op.opcodeIndex] == "CONV_2D" and stats and stats[0] < 0 < stats[1]:
            return R._name(tensor), int(op.inputs[0])
    raise AssertionError("no CONV_2D fed by a signed activation")


def _tflite_rule(lo: float, hi: float) -> tuple[float, int]:
    """The converter's arithmetic, written out: float32 scale from the float32 range, zero point from
    the min side, rounded half away from zero (here never half-way nor clamped)."""
    scale = (np.float32(hi) - np.float32(lo)) / np.float32(255)
    zero_point = np.float32(-128 - float(np.float32(lo)) / float(scale))
    return float(scale), int(np.sign(zero_point) * np.floor(abs(zero_point) + 0.5))


def test_unchanged_ranges_give_the_converters_bytes(setup):
    _, quantizer, inputs, _ = setup
    plain = quantizer.quantize([])
    calibrated = quantizer.calibrated
    stored = R.calibrated_ranges(calibrated)
    assert _quantize(quantizer, R.with_ranges(calibrated, {})) == plain
    assert _quantize(quantizer, R.with_ranges(calibrated, stored)) == plain
    assert R.estimate_ranges(calibrated, inputs, "minmax") == stored
    assert len(stored) > 60 and all(lo <= hi for lo, hi in stored.values())


def test_a_chosen_range_is_exactly_what_the_int8_file_carries(setup):
    _, quantizer, _, _ = setup
    calibrated = quantizer.calibrated
    name, index = _conv_fed_signed_tensor(calibrated)
    low, high = R.calibrated_ranges(calibrated)[name]
    lo, hi = float(np.float32(0.7 * low)), float(np.float32(0.55 * high))
    int8 = _quantize(quantizer, R.with_ranges(calibrated, {name: (lo, hi)}))
    scale, zero_point = R.int8_activation_params(int8)[name]
    assert (scale, zero_point) == _tflite_rule(lo, hi)
    assert zero_point == round(-128 - lo / scale)
    assert (scale, zero_point) == tuple(v.item() for v in R.tflite_int8_params(lo, hi))
    assert scale != R.int8_activation_params(quantizer.quantize([]))[name][0]
    # the consumer's bias scales: input scale x weight scale (per channel), as the quantizer derives them
    _, graph, ops = _graph(int8)
    consumer = next(op for op in graph.operators
                    if ops[op.opcodeIndex] == "CONV_2D" and R._name(graph.tensors[op.inputs[0]]) == name)
    weight_scales = np.asarray(graph.tensors[consumer.inputs[1]].quantization.scale, np.float64)
    bias_scales = np.asarray(graph.tensors[consumer.inputs[2]].quantization.scale, np.float32)
    assert len(bias_scales) == len(weight_scales) > 1
    np.testing.assert_array_equal(bias_scales, (np.float64(scale) * weight_scales).astype(np.float32))


def test_the_rule_holds_for_every_rewritten_tensor_but_quantizer_constrained_ones(setup):
    """Random ranges on every estimable tensor: each one's int8 parameters follow tflite_int8_params,
    except a RESHAPE's output (the quantizer gives it its input's); a SOFTMAX output keeps 1/256."""
    _, quantizer, _, _ = setup
    calibrated = quantizer.calibrated
    stored, rng = R.calibrated_ranges(calibrated), np.random.default_rng(0)
    chosen = {name: (float(np.float32(stored[name][0] * rng.uniform(0.1, 1))),
                     float(np.float32(stored[name][1] * rng.uniform(0.1, 1))))
              for name in R.estimable_tensors(calibrated)}
    _, graph, ops = _graph(calibrated)
    softmax = R._name(graph.tensors[next(op.outputs[0] for op in graph.operators
                                         if ops[op.opcodeIndex] == "SOFTMAX")])
    reshaped = {R._name(graph.tensors[op.outputs[0]]) for op in graph.operators
                if ops[op.opcodeIndex] == "RESHAPE"}
    params = R.int8_activation_params(_quantize(quantizer, R.with_ranges(calibrated, {**chosen,
                                                                                      softmax: (0.0, 0.5)})))
    differing = {name for name, (lo, hi) in chosen.items()
                 if params[name] != tuple(v.item() for v in R.tflite_int8_params(lo, hi))}
    assert differing <= reshaped and len(chosen) - len(differing) > 50
    assert params[softmax] == (1 / 256, -128)


def test_percentile_and_mse_stay_within_min_max(setup):
    _, quantizer, inputs, _ = setup
    calibrated = quantizer.calibrated
    stored, estimable = R.calibrated_ranges(calibrated), R.estimable_tensors(calibrated)
    _, graph, _ = _graph(calibrated)
    skipped = set(stored) - set(estimable)
    assert {R._name(graph.tensors[i]) for i in (*graph.inputs, *graph.outputs)} <= skipped
    for method, params in (("percentile", {"lower": 0.1, "upper": 99.9}), ("mse", {})):
        ranges = R.estimate_ranges(calibrated, inputs, method, **params)
        assert ranges.keys() == stored.keys()
        assert all(ranges[name] == stored[name] for name in skipped)
        for name in estimable:
            (lo, hi), (low, high) = ranges[name], stored[name]
            assert low <= lo <= 0 <= hi <= high, (method, name)
            assert lo == float(np.float32(lo)) and hi == float(np.float32(hi))
        shrunk = sum(ranges[n] != stored[n] for n in estimable)
        assert shrunk > len(estimable) // 2, (method, shrunk)
    samples = R.collect_activations(calibrated, inputs, estimable)  # what mse minimised its error on
    for name in estimable:
        error = R.quantization_mse(samples[name], *ranges[name])
        assert error <= R.quantization_mse(samples[name], *stored[name]) * (1 + 1e-9), name
    first = R.estimate_ranges(calibrated, inputs[:4], "mse")
    assert first == R.estimate_ranges(calibrated, inputs[:4], "mse")  # deterministic


def test_estimators_on_values_with_outliers():
    """Two million values (one 224-pixel activation's worth) and three outliers: mse clips them, since
    their clipping error costs less than the coarser grid would on every other value."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 2_000_000), [40.0, 35.0, -30.0]]).astype(np.float32)
    wide = (float(values.min()), float(values.max()))
    lo, hi = R.mse_range(values, *wide)
    assert -10 < lo < -3 and 3 < hi < 20
    assert R.quantization_mse(values, lo, hi) < R.quantization_mse(values, *wide) / 3
    assert R.percentile_range(values, *wide, lower=1, upper=99) == pytest.approx((-2.33, 2.33), abs=0.02)
    relu = np.concatenate([np.maximum(rng.normal(0, 1, 2_000_000), 0), [50.0]]).astype(np.float32)
    lo, hi = R.mse_range(relu, 0.0, 50.0)
    assert lo == 0.0 and hi < 30
    assert R.quantization_mse(relu, lo, hi) < R.quantization_mse(relu, 0.0, 50.0) / 2
    # on few values, exact: the sorted-sample estimate is quantization_mse itself
    few = values[:50_000]
    estimate = R._mse_estimate(few, 65536)  # fewer values than max_samples
    for candidate in ((-4.0, 4.0), (-1.0, 2.0), (-0.5, 0.25)):
        assert estimate(*candidate)[0] == pytest.approx(R.quantization_mse(few, *candidate), rel=1e-9)
    assert R.mse_range(values, *wide, steps=1) == R.bounded(*wide, wide)  # factor 1 only: min/max
    with pytest.raises(ValueError, match="unknown range method"):
        R.estimate_ranges(b"", values, "kl")


def test_with_ranges_refuses_unknown_tensors_and_bad_ranges(setup):
    _, quantizer, _, _ = setup
    name = next(iter(R.estimable_tensors(quantizer.calibrated)))
    with pytest.raises(KeyError, match="no calibrated activation"):
        R.with_ranges(quantizer.calibrated, {"nope": (-1.0, 1.0)})
    with pytest.raises(ValueError, match="invalid range"):
        R.with_ranges(quantizer.calibrated, {name: (1.0, -1.0)})


def test_mse_model_runs_in_litert_and_its_output_snr_is_reported(setup, caplog, record_property):
    from edge_mobilenet.runtimes.tflite import make_interpreter, run_tflite

    saved_model, quantizer, inputs, held_out = setup
    with caplog.at_level(logging.INFO, logger=R.__name__):
        int8 = R.quantize_with_ranges(saved_model, inputs, "mse", held_out=held_out)
    # the convenience function is the same pipeline as the steps above (calibration is deterministic)
    assert int8 == _quantize(quantizer, R.with_ranges(quantizer.calibrated, R.estimate_ranges(
        quantizer.calibrated, inputs, "mse")))
    interpreter = make_interpreter(int8)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    outputs = run_tflite(interpreter, held_out)
    assert outputs.shape == (len(held_out), 10) and np.all(np.isfinite(outputs))
    logged = dict(re.findall(r"(\w+) (-?[\d.]+) dB", caplog.text))
    assert set(logged) == {"mse", "minmax"}, caplog.text
    models = {m: _quantize(quantizer, R.with_ranges(quantizer.calibrated, R.estimate_ranges(
        quantizer.calibrated, inputs, m))) for m in R.METHODS}
    snr = R.held_out_snr_db(quantizer.calibrated, models, held_out)
    assert snr["mse"] == pytest.approx(float(logged["mse"]), abs=0.01)
    assert snr["minmax"] == pytest.approx(float(logged["minmax"]), abs=0.01)
    for method, value in snr.items():
        record_property(f"output_snr_db_{method}", round(value, 2))
    print(f"\noutput SNR vs float on {len(held_out)} held-out images: "
          + ", ".join(f"{m} {v:.2f} dB" for m, v in snr.items()))
    # random weights make a poor int8 subject (measured here: about 3-5 dB for every method, minmax
    # highest), so only sanity is asserted: the output is mostly signal
    assert all(np.isfinite(v) and v > 1 for v in snr.values()), snr
