"""``--target-accuracy`` for detectors: the accuracy-aware search of :mod:`convert.quant.accuracy_aware`
on COCO mAP instead of top-1 (int8 TFLite).

The int8 part of a detector (backbone and heads; the post-processing op stays float) is ranked layer by
layer with TFLite's quantization debugger on the graph the conversion quantizes (box codes clipped as the
artifact clips them: :func:`convert.detection.export_detector_saved_model` with ``raw=True,
clipped=True``). Candidates are the full artifact (post-processing in the graph) calibrated once and
quantized with the ranked layers left in float (``mlir_quantize``'s denylist, as the classifiers'
:class:`~convert.quant.tflite_debug.SelectiveQuantizer`), each scored by mAP on the validation images on
LiteRT. The target is relative to the float mAP the validation reports (``99%``: mAP >= 0.99 x float;
``1pt``: at most 0.01 below it).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np



class DetectorQuantizer:
    """Calibrate a detector export once; int8 TFLite models with any set of nodes kept in float."""

    def __init__(self, source, calibration: np.ndarray, nms, raw: bool):
        import tensorflow as tf

        from edge_mobilenet.convert.detection import export_detector_saved_model, tflite_converter
        from edge_mobilenet.quiet import native_noise_filtered

        with tempfile.TemporaryDirectory(prefix="edge-detector-selective-") as folder:
            export_detector_saved_model(source.model, source.anchors, folder, nms, raw)
            converter = tflite_converter(folder, "int8", calibration, raw)  # as the plain int8 artifact
            converter._experimental_calibrate_only = True
            with native_noise_filtered():
                self.calibrated = converter.convert()
        self.output_dtype = tf.int8 if raw else tf.float32  # as convert.detection's int8 converter
        self.input_dtype = tf.int8

    def quantize(self, float_nodes=()) -> bytes:
        from tensorflow.lite.python import convert

        from edge_mobilenet.quiet import native_noise_filtered

        with native_noise_filtered():
            return convert.mlir_quantize(self.calibrated, fully_quantize=False, input_data_type=self.input_dtype,
                                         output_data_type=self.output_dtype, denylisted_nodes=list(float_nodes))


def ranking(source, calibration: np.ndarray, nms, raw: bool) -> list:
    """The int8 part's layers, worst quantization error first (what quant-report measures)."""
    from edge_mobilenet.convert.quant.detection_report import tflite_layer_errors

    return tflite_layer_errors(source, calibration, calibration[:32], nms, clipped=not raw)


def build_accuracy_aware(source, settings, calibration: np.ndarray, evaluation, float_map: float,
                         target: Path, raw_decode, log) -> dict:
    """Search, write the chosen model to ``target``; the manifest's ``accuracy_aware`` record."""
    from edge_mobilenet.contracts.detection_metrics import coco_map
    from edge_mobilenet.convert.detection_batch import export_settings, run_detector_artifact
    from edge_mobilenet.convert.quant import accuracy_aware
    from edge_mobilenet.fileio import write_bytes_atomic

    goal, started, nms = settings.target_accuracy, time.perf_counter(), export_settings()
    raw = raw_decode is not None
    quantizer = DetectorQuantizer(source, calibration, nms, raw)
    candidates = ranking(source, calibration, nms, raw)
    truth = evaluation.coco.ground_truth()

    def score(model: bytes) -> float:
        with tempfile.TemporaryDirectory(prefix="edge-detector-candidate-") as folder:
            path = Path(folder) / "candidate.tflite"
            path.write_bytes(model)
            return coco_map(truth, run_detector_artifact(path, "tflite", evaluation.inputs, raw_decode))["map"]

    log(f"  int8: accuracy-aware search on mAP, target {goal.text} of float mAP {float_map:.4f} "
        f"({len(candidates)} ranked tensors)")
    found = accuracy_aware.search(quantizer, candidates, score, float_map, goal, log=log, metric="mAP")
    write_bytes_atomic(target, found["model"])
    return {"target": goal.text, "applied": True, "met": found["met"], "metric": "map",
            "threshold_map": round(found["threshold"], 4), "float_map": round(float_map, 4),
            "full_int8_map": found["steps"][0]["top1"], "map": round(found["top1"], 4),
            "float_layers": [r.layer for r in candidates[:found["chosen"]]],
            "float_nodes": [r.node for r in candidates[:found["chosen"]]],
            "steps": [{"float_layers": step["float_layers"], "map": step["top1"]} for step in found["steps"]],
            "search_seconds": round(time.perf_counter() - started, 1)}
