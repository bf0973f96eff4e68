"""``edge-bench quant-report`` for detectors: per-layer int8 error of a detection artifact's quantized part.

An int8 detector artifact is the backbone and heads in int8 followed by float post-processing (TFLite's
custom op; ONNX's decoding + NonMaxSuppression). The report measures that int8 part as the artifact was
made from its float model (``--float``, a trained ``.keras`` with its ``.metrics.json``): TFLite with the
quantization debugger on the same graph the conversion quantizes (box codes clipped as the artifact clips
them, unless it is a raw artifact), calibrated on the images the manifest records; ONNX by comparing the
QDQ artifact's quantized activations with the float export they were quantized from. Rows and the joined
latency profile are those of the classifiers' report (:mod:`convert.quant.report`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edge_mobilenet.errors import EdgeError


def _calibration_images(source, entry, calibration: str | None, count: int | None, seed: int | None):
    """The images the artifact was calibrated on (the manifest's record; flags override)."""
    from edge_mobilenet.convert.detection_batch import DEFAULT_CALIBRATION_COUNT, _split, load_images

    recorded = entry.calibration if entry is not None else None
    folder = _split(source, calibration or (recorded.folder if recorded else None), "train", "--calibration")
    count = count or (recorded.count if recorded else None) or DEFAULT_CALIBRATION_COUNT
    seed = (recorded.seed if recorded else 0) if seed is None else seed
    return load_images(source, folder, count, seed)


def _raw(entry) -> bool:
    detection = (entry.facts.get("detection") or {}) if entry is not None else {}
    return detection.get("postprocess", "") is None


def tflite_layer_errors(source, calibration, debug_inputs, nms, clipped: bool) -> list:
    """Per-layer error (:func:`tflite_debug.layer_errors`) of the detector's int8 part as the conversion
    quantizes it: raw outputs, box codes and class logits clipped unless ``clipped`` is False (raw artifacts);
    rows name the Keras layers, the clipped predictor convs by their clones (``NAME_clipped``)."""
    from edge_mobilenet.convert.detection import export_detector_saved_model
    from edge_mobilenet.convert.quant.tflite_debug import layer_errors

    convs = [layer.name for layer in source.model.layers
             if layer.name.startswith(("box_predictor_", "class_predictor_")) and layer.name.endswith("_conv")]
    names = {layer.name for layer in source.model.layers} | {f"{name}_clipped" for name in convs}
    with tempfile.TemporaryDirectory(prefix="edge-detector-report-") as folder:
        export_detector_saved_model(source.model, source.anchors, folder, nms, raw=True, clipped=clipped)
        return layer_errors(folder, calibration, debug_inputs, names)


def _rows(artifact: Path, fmt, source, entry, inputs, debug_count: int) -> list:
    from edge_mobilenet.convert.detection import clipped_model, export_raw_onnx
    from edge_mobilenet.convert.detection_batch import export_settings

    nms, clipped = export_settings(), not _raw(entry)
    if fmt.runtime == "tflite":
        return tflite_layer_errors(source, inputs, inputs[:debug_count], nms, clipped)
    from edge_mobilenet.convert.quant.onnx_debug import onnx_layer_errors

    with tempfile.TemporaryDirectory(prefix="edge-detector-report-") as folder:
        float_onnx = Path(folder) / "raw.onnx"
        model = clipped_model(source.model, nms) if clipped else source.model
        export_raw_onnx(model, float_onnx)
        return onnx_layer_errors(float_onnx, artifact, inputs[:debug_count],
                                 layer_names=[layer.name for layer in model.layers])


def run_detection_quant_report(artifact: Path, float_path: Path, record: dict, *, calibration, count, seed,
                               debug_count: int, output: Path, latency) -> dict:
    """The per-layer report of an int8 detection artifact (see the module doc)."""
    from edge_mobilenet.contracts.formats import format_of_file
    from edge_mobilenet.convert.detection_batch import load_detector_source
    from edge_mobilenet.convert.quant.report import join_latency, manifest_entry, write_report
    from edge_mobilenet.quiet import native_noise_filtered

    fmt = format_of_file(artifact.name)
    if fmt is None or not fmt.integer:
        raise EdgeError(f"{artifact}: quant-report reads int8 .tflite or QDQ .onnx artifacts")
    entry = manifest_entry(artifact)
    if entry is not None and entry.task != "detection":
        raise EdgeError(f"{artifact}: its manifest entry is a {entry.task} artifact; --float {float_path} is a "
                        "detector")
    with native_noise_filtered():
        source = load_detector_source(float_path, record)
    if entry is not None and entry.source_sha256 and entry.source_sha256 != source.sha256:
        raise EdgeError(f"{artifact}: was made from {entry.source_file} (sha256 {entry.source_sha256[:12]}), "
                        f"not from {float_path} (sha256 {source.sha256[:12]})")
    images = _calibration_images(source, entry, calibration, count, seed)
    rows = _rows(artifact, fmt, source, entry, images.inputs, debug_count)
    order = [layer.name for layer in source.model.layers]
    position = {name: index for index, name in enumerate(order)}
    model_order = sorted(rows, key=lambda r: position.get(r.layer.removesuffix("_clipped"), len(order)))
    extra = {"float_model": str(float_path), "task": "detection",
             "calibration": {"folder": images.description, "count": len(images.files)},
             "quantized_part": "backbone and heads (box codes and class logits clipped as in the artifact)" if not _raw(entry)
             else "backbone and heads (raw outputs)",
             "ptq": "none: detectors are plain min/max (post-training methods are classification-only)"}
    if latency is not None:
        extra["latency"] = join_latency(model_order, artifact, entry, latency)
    return write_report(rows, model_order, artifact, Path(output), extra)
