"""One builder per kind of conversion, found by the format table's ``builder`` name.

A builder ``convert``s a float model into one artifact file (returning facts for the manifest), says
which conversion ``recipe`` the manifest records, and, for integer formats, gives the accuracy-aware
search its ``selective`` strategy (a quantizer that leaves chosen layers in float, the layers ranked
worst first, a top-1 scorer and a local latency estimate) on its own runtime.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge_mobilenet.contracts.formats import Format
from edge_mobilenet.convert.settings import QuantizeSettings
from edge_mobilenet.convert.sources import EvalSet, FloatModel


def _labelled_score(runtime: str, evaluation: EvalSet):
    """model -> its PairedFidelity against the float model on the labelled evaluation images."""
    from edge_mobilenet.contracts.paired import paired_fidelity
    from edge_mobilenet.runtimes.sessions import run_artifact

    return lambda model: paired_fidelity(evaluation.float_outputs, run_artifact(model, runtime, evaluation.inputs),
                                         evaluation.labels, evaluation.label_offset)


class TFLiteBuilder:
    """fp32, fp16, dynamic-range and full-integer int8 through TFLiteConverter."""

    def recipe(self, fmt: Format, settings: QuantizeSettings, float_nodes=(), ranges: str | None = None) -> dict:
        if not fmt.integer:
            return {}
        return {"io": settings.io, "activation_ranges": ranges or "minmax"}

    # post-training methods (quant/ptq.py): the converter's int8 weight grid and our range estimators
    qmax = 127
    range_methods = {"ranges-percentile": "percentile", "ranges-mse": "mse"}

    def convert(self, float_model: FloatModel, fmt: Format, calibration, settings: QuantizeSettings,
                target: Path) -> dict:
        from edge_mobilenet.convert.tflite import TFLiteOptions, convert_tflite
        from edge_mobilenet.fileio import write_bytes_atomic

        ranges = float_model.ptq_ranges(fmt)
        if ranges is not None:  # estimated ranges go in between calibration and quantization
            from edge_mobilenet.convert.quant.tflite_debug import SelectiveQuantizer

            started = time.perf_counter()
            flatbuffer = SelectiveQuantizer(float_model.saved_model_dir(fmt), calibration, settings.io,
                                            ranges).quantize([])
            seconds = time.perf_counter() - started
        else:
            flatbuffer, seconds = convert_tflite(float_model.saved_model_dir(fmt), fmt.name, calibration,
                                                 TFLiteOptions(io=settings.io))
        write_bytes_atomic(target, flatbuffer)
        return {"convert_seconds": round(seconds, 2)}

    def ptq_trial(self, model, ranges: str | None, images: np.ndarray, settings: QuantizeSettings,
                  cache: dict) -> bytes:
        """One post-training candidate as an int8 flatbuffer (calibrated on ``images``). ``cache`` keeps
        each model's calibrated form for the contest, so range estimators don't export and calibrate again."""
        from edge_mobilenet.convert.quant.tflite_debug import SelectiveQuantizer
        from edge_mobilenet.convert.tflite import export_saved_model

        if id(model) not in cache:
            with tempfile.TemporaryDirectory(prefix="edge-ptq-") as folder:
                export_saved_model(model, folder)
                cache[id(model)] = (model, SelectiveQuantizer(folder, images, settings.io))
        quantizer = cache[id(model)][1]
        return (quantizer.ranged(images, ranges) if ranges else quantizer).quantize([])

    def selective(self, float_model: FloatModel, fmt: Format, calibration: np.ndarray,
                  settings: QuantizeSettings, evaluation: EvalSet):
        from edge_mobilenet.convert.quant.tflite_debug import SelectiveQuantizer, layer_errors
        from edge_mobilenet.runtimes.timing import tflite_latency_ms_p50

        exported = float_model.saved_model_dir(fmt)
        layer_names = {l.name for l in float_model.model_for(fmt).layers}
        ranking = layer_errors(exported, calibration, calibration[:32], layer_names)
        return (SelectiveQuantizer(exported, calibration, settings.io, float_model.ptq_ranges(fmt)), ranking,
                _labelled_score("tflite", evaluation), tflite_latency_ms_p50)


class OnnxExportBuilder:
    """Float32 ONNX through tf2onnx."""

    def recipe(self, fmt: Format, settings: QuantizeSettings, float_nodes=(), ranges: str | None = None) -> dict:
        return {}

    def convert(self, float_model: FloatModel, fmt: Format, calibration, settings: QuantizeSettings,
                target: Path) -> dict:
        from edge_mobilenet.convert.onnx_convert import convert_onnx

        started = time.perf_counter()
        facts = convert_onnx(float_model.model, target)
        return {"convert_seconds": round(time.perf_counter() - started, 2), "onnx": facts}


class OnnxQdqBuilder:
    """Int8 QDQ ONNX through ONNX Runtime's static quantizer, from the float ONNX export."""

    # post-training methods (quant/ptq.py): ONNX Runtime's weight grid with reduce_range (q in [-64, 64],
    # scale max|w|/64) and its percentile calibration for the activation ranges. No MSE estimator here:
    # ONNX Runtime 1.31's entropy calibration wrote minmax's very bytes (checked on V1 and V2), so
    # ranges-mse is TFLite only.
    qmax = 64
    range_methods = {"ranges-percentile": "percentile"}

    @staticmethod
    def options(settings: QuantizeSettings, float_nodes=(), ranges: str | None = None):
        from edge_mobilenet.convert.onnx_convert import OnnxQuantOptions

        return OnnxQuantOptions(activation_type=settings.onnx_activation_type,
                                method=ranges or settings.onnx_calibration_method,
                                nodes_to_exclude=tuple(float_nodes))

    def recipe(self, fmt: Format, settings: QuantizeSettings, float_nodes=(), ranges: str | None = None) -> dict:
        options = asdict(self.options(settings, ranges=ranges))
        return {**options, "nodes_to_exclude": list(float_nodes)} if float_nodes else options

    def convert(self, float_model: FloatModel, fmt: Format, calibration, settings: QuantizeSettings,
                target: Path) -> dict:
        from edge_mobilenet.convert.onnx_convert import quantize_onnx

        started = time.perf_counter()
        facts = quantize_onnx(float_model.float_onnx(fmt), target, calibration,
                              self.options(settings, ranges=float_model.ptq_ranges(fmt)))
        return {"convert_seconds": round(time.perf_counter() - started, 2), "onnx": facts}

    def ptq_trial(self, model, ranges: str | None, images: np.ndarray, settings: QuantizeSettings,
                  cache: dict) -> bytes:
        """One post-training candidate as int8 ONNX bytes (calibrated on ``images``); ``cache`` keeps
        each model's float export for the contest."""
        from edge_mobilenet.convert.onnx_convert import convert_onnx, quantize_onnx

        with tempfile.TemporaryDirectory(prefix="edge-ptq-onnx-") as folder:
            exported = Path(folder) / "float.onnx"
            if id(model) not in cache:
                convert_onnx(model, exported)
                cache[id(model)] = (model, exported.read_bytes())
            exported.write_bytes(cache[id(model)][1])
            quantize_onnx(exported, Path(folder) / "int8.onnx", images, self.options(settings, ranges=ranges))
            return (Path(folder) / "int8.onnx").read_bytes()

    def selective(self, float_model: FloatModel, fmt: Format, calibration: np.ndarray,
                  settings: QuantizeSettings, evaluation: EvalSet):
        from edge_mobilenet.convert.quant import onnx_debug
        from edge_mobilenet.runtimes.timing import onnx_latency_ms_p50

        layer_names = {l.name for l in float_model.model_for(fmt).layers}
        float_path = float_model.float_onnx(fmt)
        quantizer = onnx_debug.OnnxSelectiveQuantizer(float_path, calibration,
                                                      self.options(settings, ranges=float_model.ptq_ranges(fmt)))
        with tempfile.TemporaryDirectory(prefix="edge-onnx-rank-") as folder:
            plain = Path(folder) / "plain.onnx"
            plain.write_bytes(quantizer.quantize([]))
            ranking = onnx_debug.onnx_layer_errors(float_path, plain, calibration[:32], layer_names=layer_names)
        return quantizer, ranking, _labelled_score("onnx", evaluation), onnx_latency_ms_p50


BUILDERS = {"tflite": TFLiteBuilder(), "onnx-export": OnnxExportBuilder(), "onnx-qdq": OnnxQdqBuilder()}
