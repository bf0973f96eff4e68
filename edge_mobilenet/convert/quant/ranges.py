"""Activation range estimators for TFLite int8: min/max, percentile and MSE-optimal clipping.

TFLite's converter only calibrates activations with min/max. Here the calibrated model that
:class:`~edge_mobilenet.convert.quant.tflite_debug.SelectiveQuantizer` makes (a float flatbuffer whose
activation tensors carry the calibrated ``min``/``max`` in their quantization parameters) has those
statistics rewritten before TFLite's MLIR quantizer runs, so the quantizer itself still derives every
scale and zero point: bias scales (input scale x weight scale), same-scale constraints (RESHAPE, CONCAT,
pooling), the fixed ranges of SOFTMAX/LOGISTIC outputs, and its scale and zero-point arithmetic
(:func:`tflite_int8_params`, checked bit for bit against the converter's output).

Estimators, per tensor, on values the calibrated model computes for the given images (a fixed-size random
subsample per image, the same positions for tensors of the same size, so a RESHAPE's input and output get
the same range):

* ``minmax``: the calibrated statistics unchanged (the converter's own result, byte for byte);
* ``percentile``: the ``lower``/``upper`` percentiles (default 0.01 and 99.99);
* ``mse``: the clipping range [lo, hi] that minimises the mean squared error of the int8 grid TFLite
  will build from it (256 levels, nudged zero point), clipping error included, found by a coordinate
  search over shrink factors of the calibrated max and min.

Every estimate is kept inside the calibrated [min, max] (never wider) and contains 0. Left at their
calibrated min/max: the model's inputs and outputs (``skip_io``: the input range is the preprocessing's,
e.g. [-1, 1], which the deployed app quantizes with; clipping output logits would clip the very values
that decide top-1), and outputs of ops whose int8 range the quantizer fixes whatever the statistics say
(:data:`FIXED_RANGE_OPS`). Only the main subgraph and its first input are handled (single-input
models, as the converter's representative dataset here feeds them).

Memory while estimating: tensors x images x ``samples_per_image`` float32 values (MobileNetV2 at 224
pixels, 200 images, 1024 samples: about 100 x 200 x 1024 x 4 B = 80 MB).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from edge_mobilenet.quiet import native_noise_filtered

METHODS = ("minmax", "percentile", "mse")
FIXED_RANGE_OPS = frozenset({"SOFTMAX", "LOGISTIC", "TANH", "LOG_SOFTMAX"})
QMIN, QMAX = -128, 127

log = logging.getLogger(__name__)


# -- the flatbuffer --------------------------------------------------------------------------------------

def read_model(flatbuffer: bytes):
    """The TFLite flatbuffer as a mutable schema object (``ModelT``)."""
    try:
        from tensorflow.lite.tools import flatbuffer_utils
        return flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    except ImportError:  # older or trimmed TensorFlow: the schema module alone
        from tensorflow.lite.python import schema_py_generated as schema
        return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))


def write_model(model) -> bytes:
    """Serialize a ``ModelT`` back to flatbuffer bytes (file identifier ``TFL3``)."""
    try:
        from tensorflow.lite.tools import flatbuffer_utils
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    except ImportError:
        import flatbuffers

        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def _op_names(model) -> list[str]:
    from tensorflow.lite.python import schema_py_generated as schema

    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    return [names.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in model.operatorCodes]


def _stats(tensor) -> tuple[float, float] | None:
    q = tensor.quantization
    if q is None or q.min is None or q.max is None or len(q.min) != 1 or len(q.max) != 1:
        return None
    return float(q.min[0]), float(q.max[0])


def calibrated_ranges(calibrated: bytes) -> dict[str, tuple[float, float]]:
    """Every tensor of the main subgraph that carries calibrated statistics: name -> (min, max)."""
    ranges = {}
    for tensor in read_model(calibrated).subgraphs[0].tensors:
        stats = _stats(tensor)
        if stats is not None:
            if _name(tensor) in ranges:  # names are what ranges are keyed by
                raise ValueError(f"{_name(tensor)!r}: two calibrated tensors carry this name")
            ranges[_name(tensor)] = stats
    return ranges


def estimable_tensors(calibrated: bytes, skip_io: bool = True) -> dict[str, int]:
    """name -> tensor index of the statistics the estimators rewrite (see the module docstring for the
    tensors left at min/max)."""
    model = read_model(calibrated)
    graph, ops = model.subgraphs[0], _op_names(model)
    kept = set()
    if skip_io:
        kept |= {int(i) for i in graph.inputs} | {int(i) for i in graph.outputs}
    for op in graph.operators:
        if ops[op.opcodeIndex] in FIXED_RANGE_OPS:
            kept |= {int(i) for i in op.outputs}
    return {_name(t): i for i, t in enumerate(graph.tensors)
            if i not in kept and _stats(t) is not None and _stats(t)[0] < _stats(t)[1]}


def with_ranges(calibrated: bytes, ranges: dict[str, tuple[float, float]]) -> bytes:
    """The calibrated model with the statistics of the named tensors replaced by ``(min, max)`` (stored
    as float32, as the converter stores them); others unchanged. Only tensors that already carry
    statistics can be given one."""
    model = read_model(calibrated)
    tensors = {_name(t): t for t in model.subgraphs[0].tensors if _stats(t) is not None}
    for name, (lo, hi) in ranges.items():
        tensor = tensors.get(name)
        if tensor is None:
            raise KeyError(f"{name!r}: no calibrated activation tensor of that name")
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"{name!r}: invalid range [{lo}, {hi}]")
        tensor.quantization.min = np.array([lo], np.float32)
        tensor.quantization.max = np.array([hi], np.float32)
    return write_model(model)


def int8_activation_params(tflite: bytes) -> dict[str, tuple[float, int]]:
    """name -> (scale, zero_point) of every per-tensor quantized int8/uint8 activation (a tensor
    without constant data) of a quantized model's main subgraph."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = read_model(tflite)
    params = {}
    for tensor in model.subgraphs[0].tensors:
        q, data = tensor.quantization, model.buffers[tensor.buffer].data
        if (tensor.type in (schema.TensorType.INT8, schema.TensorType.UINT8) and q is not None
                and q.scale is not None and len(q.scale) == 1 and (data is None or len(data) == 0)):
            params[_name(tensor)] = (float(q.scale[0]), int(q.zeroPoint[0]))
    return params


# -- TFLite's int8 grid ----------------------------------------------------------------------------------

NEAR_ZERO = 1.0e-6  # TFLite's kNearZeroTolerance


def _round_half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def tflite_int8_params(lo, hi):
    """(scale, zero_point) TFLite's MLIR quantizer derives from calibrated statistics (arrays
    broadcast), as its ``ConvertStatsToQDQs`` and ``DownCastScale`` (the converter's legacy float scale)
    do: the range is widened to contain 0; one narrower than 1e-6 is widened by 1e-6 on both sides;
    scale = (float32(max) - float32(min)) / 255 in float32; zero point = -128 - min / scale (double,
    then float32), clamped to [-128, 127], else rounded half away from zero."""
    rmin = np.minimum(np.asarray(lo, np.float64), 0.0)
    rmax = np.maximum(np.asarray(hi, np.float64), 0.0)
    narrow = np.abs(rmax - rmin) < NEAR_ZERO
    rmin, rmax = np.where(narrow, rmin - NEAR_ZERO, rmin), np.where(narrow, rmax + NEAR_ZERO, rmax)
    scale = (rmax.astype(np.float32) - rmin.astype(np.float32)) / np.float32(QMAX - QMIN)
    from_min = (QMIN - rmin / scale.astype(np.float64)).astype(np.float32)
    zero_point = np.where(from_min < QMIN, QMIN, np.where(from_min > QMAX, QMAX, _round_half_away(from_min)))
    return scale, zero_point.astype(np.int64)


def quantization_mse(values: np.ndarray, lo, hi) -> np.ndarray:
    """Mean squared error of ``values`` through TFLite's int8 grid for [lo, hi] (arrays of ranges give
    one error per range), clipping error included."""
    scale, zero_point = tflite_int8_params(lo, hi)
    scale = np.asarray(scale, np.float64)[..., None]
    zero_point = np.asarray(zero_point, np.float64)[..., None]
    x = np.asarray(values, np.float64).ravel()
    q = np.clip(np.round(x / scale) + zero_point, QMIN, QMAX)
    return np.mean(np.square((q - zero_point) * scale - x), axis=-1)


# -- estimators --------------------------------------------------------------------------------------------

def bounded(lo: float, hi: float, calibrated: tuple[float, float]) -> tuple[float, float]:
    """[lo, hi] clamped into the calibrated range, then widened to contain 0, as float32 values."""
    lo, hi = max(lo, calibrated[0]), min(hi, calibrated[1])
    return float(np.float32(min(lo, 0.0))), float(np.float32(max(hi, 0.0)))


def percentile_range(values: np.ndarray, lo: float, hi: float, *, lower: float = 0.01,
                     upper: float = 99.99) -> tuple[float, float]:
    """The ``lower``/``upper`` percentiles (in percent) of ``values``, inside the calibrated [lo, hi]."""
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100; got {lower}, {upper}")
    low, high = np.percentile(np.asarray(values, np.float64), [lower, upper])
    return bounded(float(low), float(high), (lo, hi))


def _mse_estimate(values: np.ndarray, max_samples: int):
    """A function (los, his) -> quantization MSE of ``values`` per candidate range: the clipping error
    exactly over all values (sorted, prefix sums), the rounding error of the values inside the grid on
    an evenly strided sample of the sorted values (all of them when at most ``max_samples``), so a few
    outliers among millions of values weigh exactly what they should."""
    xs = np.sort(np.asarray(values, np.float64).ravel())
    n, sample = xs.size, xs[:: max(1, math.ceil(xs.size / max_samples))]
    sums = np.concatenate([[0.0], np.cumsum(xs)]), np.concatenate([[0.0], np.cumsum(xs * xs)])

    def estimate(los, his) -> np.ndarray:
        scale, zero_point = tflite_int8_params(*np.broadcast_arrays(los, his))
        scale = np.atleast_1d(scale.astype(np.float64))
        zero_point = np.atleast_1d(zero_point)
        qlo, qhi = (QMIN - zero_point) * scale, (QMAX - zero_point) * scale
        below, above = np.searchsorted(xs, qlo, "left"), np.searchsorted(xs, qhi, "right")
        clipped = (sums[1][below] - 2 * qlo * sums[0][below] + below * qlo ** 2
                   + (sums[1][n] - sums[1][above]) - 2 * qhi * (sums[0][n] - sums[0][above])
                   + (n - above) * qhi ** 2)
        x, s, z = sample[None, :], scale[:, None], zero_point[:, None]
        inside = (x >= qlo[:, None]) & (x <= qhi[:, None])
        rounding = np.where(inside, np.square((np.clip(np.round(x / s) + z, QMIN, QMAX) - z) * s - x), 0.0)
        return rounding.mean(axis=1) + np.maximum(clipped, 0.0) / n

    return estimate


def _best_bound(error, bound: float, factors: np.ndarray) -> float:
    """``bound * f`` with the least ``error``: f from the descending ``factors``, then refined on 17
    points between the best one's neighbours; ties keep the wider (the first minimum)."""
    k = int(np.argmin(error(bound * factors)))
    fine = np.linspace(factors[max(k - 1, 0)], factors[min(k + 1, len(factors) - 1)], 17)
    fine = np.unique(np.append(fine, factors[k]))[::-1]
    return float(bound * fine[int(np.argmin(error(bound * fine)))])


def mse_range(values: np.ndarray, lo: float, hi: float, *, steps: int = 48, min_shrink: float = 0.02,
              rounds: int = 2, max_samples: int = 32768) -> tuple[float, float]:
    """The [lo', hi'] (lo' = lo * a, hi' = hi * b, shrink factors a, b from 1 down to ``min_shrink``,
    ``steps`` of them geometrically spaced, then refined) with the least quantization MSE on ``values``
    (clipping exact, rounding on ``max_samples`` of them: see :func:`_mse_estimate`). Coordinate search:
    ``rounds`` times the best hi for the current lo, then the best lo for it. Factor 1 is a candidate,
    so the result is not worse than [lo, hi] on these values (up to the rounding sample)."""
    error = _mse_estimate(values, max_samples)
    factors = np.geomspace(1.0, min_shrink, steps)
    best_lo, best_hi = min(lo, 0.0), max(hi, 0.0)
    for _ in range(rounds):
        if best_hi > 0:
            best_hi = _best_bound(lambda his: error(best_lo, his), max(hi, 0.0), factors)
        if best_lo < 0:
            best_lo = _best_bound(lambda los: error(los, best_hi), min(lo, 0.0), factors)
    return bounded(best_lo, best_hi, (lo, hi))


ESTIMATORS = {"percentile": percentile_range, "mse": mse_range}


# -- statistics of the calibrated model ---------------------------------------------------------------------

def _interpreter(flatbuffer: bytes):
    """An interpreter keeping every intermediate tensor (which also keeps the default delegate off)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    import warnings

    with native_noise_filtered(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is intended for debugging": it is
        interpreter = Interpreter(model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
    return interpreter


def collect_activations(calibrated: bytes, inputs: np.ndarray, tensors: dict[str, int],
                        samples_per_image: int = 1024, seed: int = 0) -> dict[str, np.ndarray]:
    """Run the calibrated float model on each row of ``inputs`` (batch 1) and keep, per tensor, at most
    ``samples_per_image`` values per image (random positions, drawn once per image and tensor size, so
    equal-sized tensors are sampled at the same flat positions). Memory: tensors x images x samples."""
    interpreter = _interpreter(calibrated)
    detail = interpreter.get_input_details()[0]
    if detail["shape"][0] != 1:  # exported with a fixed batch: fed one image at a time here
        interpreter.resize_tensor_input(detail["index"], [1, *detail["shape"][1:]])
        interpreter.allocate_tensors()
    kept: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
    for image, row in enumerate(np.asarray(inputs, np.float32)):
        interpreter.set_tensor(detail["index"], row[None].astype(detail["dtype"]))
        interpreter.invoke()
        rng, positions = np.random.default_rng([seed, image]), {}
        for name, index in tensors.items():
            values = interpreter.get_tensor(index).ravel()
            if values.size > samples_per_image:
                if values.size not in positions:
                    positions[values.size] = rng.integers(0, values.size, samples_per_image)
                values = values[positions[values.size]]
            kept[name].append(np.array(values, np.float32))
    return {name: np.concatenate(parts) for name, parts in kept.items()}


def estimate_ranges(calibrated: bytes, inputs: np.ndarray, method: str, *, skip_io: bool = True,
                    samples_per_image: int = 1024, seed: int = 0,
                    **params) -> dict[str, tuple[float, float]]:
    """name -> (min, max) for every calibrated tensor: ``method``'s estimate on ``inputs`` (preprocessed
    images, [N, H, W, C]) for the tensors :func:`estimable_tensors` names, the calibrated statistics
    for the rest. ``params`` go to the estimator (:func:`percentile_range`, :func:`mse_range`)."""
    if method not in METHODS:
        raise ValueError(f"unknown range method {method!r}; choose one of: {', '.join(METHODS)}")
    ranges = calibrated_ranges(calibrated)
    if method == "minmax":
        if params:
            raise TypeError(f"minmax takes no parameters; got {', '.join(params)}")
        return ranges
    tensors = estimable_tensors(calibrated, skip_io)
    samples = collect_activations(calibrated, inputs, tensors, samples_per_image, seed)
    for name in tensors:
        ranges[name] = ESTIMATORS[method](samples[name], *ranges[name], **params)
    return ranges


# -- end to end -----------------------------------------------------------------------------------------

def quantize_with_ranges(saved_model_dir: str, calibration: np.ndarray, method: str, io: str = "int8",
                         held_out: np.ndarray | None = None, float_nodes=(), **params) -> bytes:
    """The int8 flatbuffer of a SavedModel with activation ranges from ``method`` estimated on the
    ``calibration`` images (which TFLite also calibrates min/max on). ``float_nodes``: kept in float
    as in :meth:`SelectiveQuantizer.quantize`. With ``held_out`` images, the output SNR against the
    float model, of this model and of plain min/max, is logged (INFO)."""
    from edge_mobilenet.convert.quant.tflite_debug import SelectiveQuantizer

    quantizer = SelectiveQuantizer(saved_model_dir, calibration, io=io)
    result = quantizer.ranged(calibration, method, **params).quantize(float_nodes)
    if held_out is not None:
        snr = held_out_snr_db(quantizer.calibrated, {method: result, "minmax": quantizer.quantize(float_nodes)},
                              held_out)
        log.info("output SNR on %d held-out images: %s", len(held_out),
                 ", ".join(f"{name} {value:.2f} dB" for name, value in snr.items()))
    return result


def held_out_snr_db(float_model: bytes, models: dict[str, bytes], images: np.ndarray) -> dict[str, float]:
    """name -> output SNR (dB) of each TFLite model against ``float_model`` on ``images`` (LiteRT)."""
    from edge_mobilenet.contracts.paired import paired_fidelity
    from edge_mobilenet.runtimes.tflite import make_interpreter, run_tflite

    reference = run_tflite(make_interpreter(float_model), images)
    return {name: paired_fidelity(reference, run_tflite(make_interpreter(model), images)).snr_db
            for name, model in models.items()}
