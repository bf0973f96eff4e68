"""Which layers each post-training method fixed: per-layer effects, measured on held-out images.

* Weight methods (bias correction, AdaRound, both): the float model and one model per method (plain:
  every kernel rounded to nearest on the runtime's grid) run side by side, activations in float, on
  the held-out calibration images; at each kernel layer's output, the SNR in dB of that model's values
  against the float model's. Weight quantization error accumulates through the network, so a layer's
  SNR shows the error at that point; a method "fixed" a layer where it raised that SNR over plain by
  ``FIXED_GAIN_DB`` or more. Cross-layer equalization rescales the output channels of the first layer
  of each pair (the next layer undoes it), so those layers have no entry for it.
* Activation ranges (TFLite: percentile, MSE): per activation tensor of the calibrated model, the
  SNR of its held-out float values through the int8 grid of the calibrated min/max and of the
  estimator's range (rounding and clipping error); "fixed" as above.

ONNX Runtime's percentile calibration is not broken down per tensor (its ranges live inside the
quantizer); its weight methods are, on the same grid the ONNX artifact uses.
"""

from __future__ import annotations

import math

import numpy as np

FIXED_GAIN_DB = 1.0


def _db(signal: float, noise: float) -> float | None:
    """10 log10(signal / noise) to 2 decimals; None when there is no error at all (or no signal)."""
    return round(10 * math.log10(signal / noise), 2) if noise > 0 and signal > 0 else None


def _snr_db(reference: np.ndarray, values: np.ndarray) -> float | None:
    reference = np.asarray(reference, np.float64)
    return _db(float(np.sum(np.square(reference))),
               float(np.sum(np.square(np.asarray(values, np.float64) - reference))))


def weight_effects(base, calibration: np.ndarray, qmax: int, methods: dict[str, tuple[str, ...]],
                   built: dict | None = None) -> list[dict]:
    """Per kernel layer (graph order): ``{"layer", "plain": SNR dB, <method name>: SNR dB, ...}`` for
    ``methods`` (name -> weight methods, as in ``ptq.weight_model``), fit on the calibrating part of
    ``calibration`` and measured on its held-out part (``ptq.split``). ``built``: name -> a model
    those methods already made on the same split (not made again)."""
    import keras

    from edge_mobilenet.convert.quant import ptq, weights

    calibrating, held = ptq.split(np.asarray(calibration, np.float32))
    reference = weights.fold_batch_norms(base)
    plain = weights.fold_batch_norms(reference)
    for layer in weights._graph(plain).layers:
        if weights._kind(layer):
            weights.snap_to_grid(layer, qmax)
    built = built or {}
    models = {"plain": plain, **{name: built[name] if name in built else
                                 ptq.weight_model(base, method, calibrating, qmax)[0]
                                 for name, method in methods.items()}}
    layers = {name: {layer.name: layer for layer in weights._graph(model).layers} for name, model in models.items()}
    rescaled = _rescaled_layers(reference) if any(ptq.EQUALIZATION in m for m in methods.values()) else set()
    rows: list[dict] = []

    def visit(node, calls):
        op = node.operation
        if not isinstance(op, keras.layers.Layer):
            return None
        outputs = [op(*calls[0][0], **calls[0][1])]
        outputs += [layers[name][op.name](*args, **kwargs) for name, (args, kwargs) in zip(models, calls[1:])]
        if weights._kind(op):
            row = {"layer": op.name}
            row.update({name: _snr_db(outputs[0], out) for name, out in zip(models, outputs[1:])
                        if not (op.name in rescaled and ptq.EQUALIZATION in methods.get(name, ()))})
            rows.append(row)
        return outputs

    weights._run(weights._graph(reference), held, 1 + len(models), visit)
    return rows


def _rescaled_layers(folded) -> set[str]:
    """Layers whose output channels equalization rescales (compared with float only after the next one)."""
    from edge_mobilenet.convert.quant import weights
    from edge_mobilenet.convert.quant.equalize import equalizable_pairs

    return {first.name for first, _, _ in equalizable_pairs(weights._graph(folded))}


def range_effects(saved_model_dir: str, calibration: np.ndarray, methods: dict[str, str], io: str,
                  layer_names: set[str]) -> list[dict]:
    """Per activation tensor whose range the estimators set: ``{"tensor", "layer" (the Keras layer of
    ``layer_names`` it belongs to), "minmax": SNR dB, <method name>: SNR dB, ...}`` of the held-out values through each int8 grid; ``methods``: name ->
    estimator (``percentile``, ``mse``); calibrated and estimated on the calibrating part as ``ptq`` does."""
    from edge_mobilenet.convert.quant import ptq, ranges
    from edge_mobilenet.convert.quant.tflite_debug import SelectiveQuantizer, keras_layer_of

    calibrating, held = ptq.split(np.asarray(calibration, np.float32))
    calibrated = SelectiveQuantizer(saved_model_dir, calibrating, io).calibrated
    tensors = ranges.estimable_tensors(calibrated)
    estimates = {name: ranges.estimate_ranges(calibrated, calibrating, method) for name, method in methods.items()}
    estimates = {"minmax": ranges.calibrated_ranges(calibrated), **estimates}
    values = ranges.collect_activations(calibrated, held, tensors)
    rows = []
    for tensor, samples in values.items():
        energy = float(np.mean(np.square(samples.astype(np.float64))))
        rows.append({"tensor": tensor, "layer": keras_layer_of(tensor, layer_names), **{name: _db(energy, float(ranges.quantization_mse(samples, *found[tensor])))
                                          for name, found in estimates.items()}})
    return rows


def _gain(row: dict, method: str, baseline: str) -> float:
    """dB ``method`` adds over ``baseline`` in ``row`` (None, no error at all, counts as infinite)."""
    value, base = (math.inf if row[k] is None else row[k] for k in (method, baseline))
    return 0.0 if value == base else value - base


def fixed(rows: list[dict], baseline: str, key: str) -> dict[str, list[str]]:
    """method -> the layers (or tensors) whose SNR it raised over ``baseline`` by ``FIXED_GAIN_DB``."""
    widest = max(rows, key=len) if rows else {}
    methods = [m for m in dict.fromkeys([*widest, *(k for r in rows for k in r)]) if m not in ("layer", "tensor", baseline)]
    return {m: [r[key] for r in rows if m in r and _gain(r, m, baseline) >= FIXED_GAIN_DB] for m in methods}
