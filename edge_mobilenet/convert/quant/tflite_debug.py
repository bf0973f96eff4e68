"""Per-layer int8 error and selective quantization for TFLite.

Error per quantized layer is measured the way TFLite's QuantizationDebugger does: each op runs on the
dequantized int8 inputs in float and its output is compared with the int8 op's dequantized output, so
a layer's figure is its own error, not what it inherited. ``rmse/scale`` near 0.289 (1/sqrt(12)) is
ideal rounding; well above ~0.7 marks a layer worth keeping in float. SNR is in dB over the layer's
float output.

Selective quantization calibrates once and then re-quantizes the calibrated model with chosen nodes
left in float (TFLite's MLIR quantizer denylist), which takes tens of milliseconds per candidate.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from edge_mobilenet.convert.tflite import representative_dataset
from edge_mobilenet.quiet import native_noise_filtered

IDEAL_RMSE_OVER_SCALE = 1 / math.sqrt(12)


@dataclass(frozen=True)
class LayerError:
    layer: str  # the Keras layer the op computes (from the tensor name), or the tensor name
    node: str  # the TFLite tensor name: what the denylist takes
    op: str
    rmse_over_scale: float
    snr_db: float
    max_abs_error: float
    scale: float

    def to_dict(self) -> dict:
        return asdict(self)


def _snr_db(float_tensors, quant_tensors, scale, zero_point) -> float:
    with np.errstate(all="ignore"):
        return _snr_db_unchecked(float_tensors, quant_tensors, scale, zero_point)


def _snr_db_unchecked(float_tensors, quant_tensors, scale, zero_point) -> float:
    signal = sum(float(np.sum(np.square(np.asarray(f, np.float64)))) for f in float_tensors)
    noise = sum(float(np.sum(np.square(np.asarray(f, np.float64)
                                       - (np.asarray(q, np.float64) - zero_point) * scale)))
                for f, q in zip(float_tensors, quant_tensors))
    if not (math.isfinite(signal) and math.isfinite(noise)):
        return float("nan")
    return float("inf") if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


def keras_layer_of(tensor_name: str, layer_names: set[str]) -> str:
    """``model_1/conv_pw_3_relu_1/Relu6;...`` -> ``conv_pw_3_relu`` (the first known layer named)."""
    for part in re.split(r"[;/]", tensor_name):
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in layer_names:
                return candidate
    return tensor_name.split(";")[0]


def _int8_converter(saved_model_dir: str, calibration: np.ndarray):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(calibration)
    return converter


def layer_errors(saved_model_dir: str, calibration: np.ndarray, debug_inputs: np.ndarray,
                 layer_names: set[str]) -> list[LayerError]:
    """Per-layer error of full-int8 quantization, worst (highest rmse/scale) first."""
    import tensorflow as tf

    import warnings

    # it converts ("fully_quantize: 0, ...") and runs TF's own (deprecated) interpreter: keep both quiet
    with warnings.catch_warnings(), native_noise_filtered():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=_int8_converter(saved_model_dir, calibration),
            debug_dataset=representative_dataset(debug_inputs),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                layer_direct_compare_metrics={"snr_db": _snr_db}))
        debugger.run()
    import csv
    import io

    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = []
    for stats in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale = float(stats.get("scale") or 0.0)
        if scale <= 0:
            continue
        node = stats["tensor_name"]
        rows.append(LayerError(layer=keras_layer_of(node, layer_names), node=node, op=stats["op_name"],
                               rmse_over_scale=math.sqrt(float(stats["mean_squared_error"])) / scale,
                               snr_db=float(stats.get("snr_db") or "nan"),
                               max_abs_error=float(stats["max_abs_error"]), scale=scale))
    return sorted(rows, key=lambda r: -r.rmse_over_scale)


class SelectiveQuantizer:
    """Calibrate once; produce int8 models with any set of nodes kept in float."""

    def __init__(self, saved_model_dir: str, calibration: np.ndarray, io: str = "int8", ranges: str | None = None):
        """``ranges``: an activation range estimator of ``quant/ranges.py`` (percentile, mse) whose
        estimates on ``calibration`` replace the calibrated min/max before quantizing; None keeps them."""
        import tensorflow as tf

        converter = _int8_converter(saved_model_dir, calibration)
        converter._experimental_calibrate_only = True
        with native_noise_filtered():
            self.calibrated = converter.convert()
        self.io_dtype = {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}[io]
        if ranges is not None:
            self.calibrated = self.ranged(calibration, ranges).calibrated

    def ranged(self, images: np.ndarray, method: str, **params) -> "SelectiveQuantizer":
        """A copy whose calibrated min/max are ``method``'s estimates on ``images`` (quant/ranges.py);
        this one keeps its own, so several estimators share one calibration."""
        import copy

        from edge_mobilenet.convert.quant.ranges import estimate_ranges, with_ranges

        other = copy.copy(self)
        other.calibrated = with_ranges(self.calibrated, estimate_ranges(self.calibrated, images, method, **params))
        return other

    def quantize(self, float_nodes=()) -> bytes:
        from tensorflow.lite.python import convert

        with native_noise_filtered():
            # as TFLiteConverter itself calls it: fully_quantize=True would force int8 inputs and
            # outputs whatever the io type asked for (and quantize the input of a model whose
            # every layer is denylisted, so that it could never match float)
            return convert.mlir_quantize(self.calibrated, fully_quantize=False,
                                         input_data_type=self.io_dtype, output_data_type=self.io_dtype,
                                         denylisted_nodes=list(float_nodes))
