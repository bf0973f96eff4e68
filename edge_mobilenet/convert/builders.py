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
    from edge_mobilenet.contracts.metrics import top1
    from edge_mobilenet.runtimes.sessions import run_artifact

    return lambda model: top1(run_artifact(model, runtime, evaluation.inputs), evaluation.labels,
                              evaluation.label_offset)


class TFLiteBuilder:
    """fp32, fp16, dynamic-range and full-integer int8 through TFLiteConverter."""

    def recipe(self, fmt: Format, settings: QuantizeSettings, float_nodes=()) -> dict:
        return {"io": settings.io} if fmt.integer else {}

    def convert(self, float_model: FloatModel, fmt: Format, calibration, settings: QuantizeSettings,
                target: Path) -> dict:
        from edge_mobilenet.convert.tflite import TFLiteOptions, convert_tflite
        from edge_mobilenet.fileio import write_bytes_atomic

        flatbuffer, seconds = convert_tflite(float_model.saved_model_dir(fmt), fmt.name, calibration,
                                             TFLiteOptions(io=settings.io))
        write_bytes_atomic(target, flatbuffer)
        return {"convert_seconds": round(seconds, 2)}

    def selective(self, float_model: FloatModel, fmt: Format, calibration: np.ndarray,
                  settings: QuantizeSettings, evaluation: EvalSet):
        from edge_mobilenet.convert.quant.tflite_debug import SelectiveQuantizer, layer_errors
        from edge_mobilenet.runtimes.timing import tflite_latency_ms_p50

        exported = float_model.saved_model_dir(fmt)
        layer_names = {l.name for l in float_model.model_for(fmt).layers}
        ranking = layer_errors(exported, calibration, calibration[:32], layer_names)
        return (SelectiveQuantizer(exported, calibration, settings.io), ranking,
                _labelled_score("tflite", evaluation), tflite_latency_ms_p50)


class OnnxExportBuilder:
    """Float32 ONNX through tf2onnx."""

    def recipe(self, fmt: Format, settings: QuantizeSettings, float_nodes=()) -> dict:
        return {}

    def convert(self, float_model: FloatModel, fmt: Format, calibration, settings: QuantizeSettings,
                target: Path) -> dict:
        from edge_mobilenet.convert.onnx_convert import convert_onnx

        started = time.perf_counter()
        facts = convert_onnx(float_model.model, target)
        return {"convert_seconds": round(time.perf_counter() - started, 2), "onnx": facts}


class OnnxQdqBuilder:
    """Int8 QDQ ONNX through ONNX Runtime's static quantizer, from the float ONNX export."""

    @staticmethod
    def options(settings: QuantizeSettings, float_nodes=()):
        from edge_mobilenet.convert.onnx_convert import OnnxQuantOptions

        return OnnxQuantOptions(activation_type=settings.onnx_activation_type,
                                method=settings.onnx_calibration_method, nodes_to_exclude=tuple(float_nodes))

    def recipe(self, fmt: Format, settings: QuantizeSettings, float_nodes=()) -> dict:
        options = asdict(self.options(settings))
        return {**options, "nodes_to_exclude": list(float_nodes)} if float_nodes else options

    def convert(self, float_model: FloatModel, fmt: Format, calibration, settings: QuantizeSettings,
                target: Path) -> dict:
        from edge_mobilenet.convert.onnx_convert import quantize_onnx

        started = time.perf_counter()
        facts = quantize_onnx(float_model.float_onnx(fmt), target, calibration, self.options(settings))
        return {"convert_seconds": round(time.perf_counter() - started, 2), "onnx": facts}

    def selective(self, float_model: FloatModel, fmt: Format, calibration: np.ndarray,
                  settings: QuantizeSettings, evaluation: EvalSet):
        from edge_mobilenet.convert.quant import onnx_debug
        from edge_mobilenet.runtimes.timing import onnx_latency_ms_p50

        layer_names = {l.name for l in float_model.model_for(fmt).layers}
        float_path = float_model.float_onnx(fmt)
        quantizer = onnx_debug.OnnxSelectiveQuantizer(float_path, calibration, self.options(settings))
        with tempfile.TemporaryDirectory(prefix="edge-onnx-rank-") as folder:
            plain = Path(folder) / "plain.onnx"
            plain.write_bytes(quantizer.quantize([]))
            ranking = onnx_debug.onnx_layer_errors(float_path, plain, calibration[:32], layer_names=layer_names)
        return quantizer, ranking, _labelled_score("onnx", evaluation), onnx_latency_ms_p50


BUILDERS = {"tflite": TFLiteBuilder(), "onnx-export": OnnxExportBuilder(), "onnx-qdq": OnnxQdqBuilder()}
