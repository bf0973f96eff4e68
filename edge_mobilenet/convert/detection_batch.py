"""``edge-bench quantize`` for detectors: a trained SSDLite ``.keras`` into every requested format with
the post-processing in the graph (:mod:`convert.detection`), each artifact validated by COCO mAP on
held-out images and recorded in the manifest with the same atomic commit as a classifier's.

What tells a detector: its ``NAME.metrics.json`` (written by ``edge-bench train``) says
``"task": "detection"`` and records what conversion needs and cannot read off the model: the anchor
settings, the box coder, the category names, the preprocessing and the COCO folder it trained on.

  * calibration: images of that folder's ``train/`` split (or ``--calibration`` naming a COCO folder),
    ``--count`` of them drawn by ``--seed``, resized whole as in training;
  * validation: its ``val/`` split (or ``--eval``, a COCO folder), at most ``--eval-count`` images.
    Each artifact's four outputs are read on its runtime and scored with pycocotools
    (``metrics``: map, map50, map75); ``float_metrics`` are the Keras model's raw outputs decoded on the
    host the way the artifact's graph does (one class per anchor, class-agnostic NMS, the same
    thresholds and D), so fp32 artifacts match them and a drop is the format's own;
    ``agreement_with_float``: the share of the float model's detections scoring >= 0.5 that the artifact
    also finds (same class, IoU >= 0.5); ``max_abs_diff_vs_float``: the largest score difference among
    those matched.
  * ``--detection-outputs raw``: the artifacts (``NAME_raw.*``) end at the box encodings and sigmoid class
    scores (no post-processing in the graph); they are validated by decoding those on the host with the
    same settings, and the manifest records the feature maps the anchors are generated from.
  * ``--target-accuracy`` (int8 TFLite): the fewest layers kept in float for the mAP target
    (:mod:`convert.detection_target`); post-training methods are classification-only for now: int8 is
    plain min/max calibration (per-channel weights), recorded as such.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_mobilenet.contracts.formats import FORMATS, Format
from edge_mobilenet.contracts.manifest import Manifest, build_environment, tool_versions
from edge_mobilenet.contracts.records import ArtifactEntry, CalibrationRecord, TensorSpec, Validation, Where, check, get
from edge_mobilenet.convert.settings import QuantizeSettings
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import read_json, sha256_file

TASK = "detection"
MATCH_SCORE = 0.5  # float detections this confident must be found again by the artifact (agreement)
MATCH_IOU = 0.5
DEFAULT_CALIBRATION_COUNT = 200
EXPORT_VERSION = 4  # bumped when convert/detection.py writes other graphs (2: box codes clipped in ONNX
# too; 3: TFLite clips through the same cloned convs as ONNX; 4: class logits clipped too)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def detection_record(model_path: Path) -> dict | None:
    """The metrics file beside ``model_path`` if it describes a detector, else None (a classifier)."""
    metrics_path = model_path.with_name(f"{model_path.stem}.metrics.json")
    if not metrics_path.is_file():
        return None
    record = read_json(metrics_path, "training metrics file")
    return record if isinstance(record, dict) and record.get("task") == TASK else None


@dataclass(eq=False)
class DetectorSource:
    """A trained detector and what its metrics file says about it (validated)."""

    path: Path
    sha256: str
    metrics_sha256: str
    model: object
    anchors: np.ndarray
    anchor_spec: dict
    preprocessing: object
    class_names: list[str]
    dataset_folder: Path | None
    dataset: dict
    model_name: str | None
    params: int | None = None
    macs: int | None = None

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def size(self) -> int:
        return int(self.model.input.shape[1])


def load_detector_source(path: Path, record: dict) -> DetectorSource:
    """Load the model and check its metrics record; one line naming the file and the key when wrong."""
    from edge_mobilenet.data.preprocess import Preprocessing
    from edge_mobilenet.models.anchors import BOX_CODER, AnchorSpec
    from edge_mobilenet.models.detection import detector_anchors, feature_map_sizes
    from edge_mobilenet.train import load_keras_model

    metrics_path = path.with_name(f"{path.stem}.metrics.json")
    where = Where(str(metrics_path))
    anchors = get(record, "anchors", where, (dict,))
    try:
        spec = AnchorSpec.from_json(anchors)
    except TypeError as error:
        raise (where / "anchors").fail(f"is not an anchor spec ({error})") from None
    coder = get(record, "box_coder", where, (dict,))
    if list(get(coder, "scale_factors", where / "box_coder", (list,))) != list(BOX_CODER.scale_factors):
        raise (where / "box_coder" / "scale_factors").fail(
            f"is {coder['scale_factors']}; the exports decode with {list(BOX_CODER.scale_factors)}")
    names = get(record, "class_names", where, (list,))
    if not names or not all(isinstance(name, str) for name in names):
        raise (where / "class_names").fail("must be a non-empty list of strings")
    pre = get(record, "preprocessing", where, (dict,))
    try:
        preprocessing = Preprocessing(**pre)
    except TypeError as error:
        raise (where / "preprocessing").fail(f"is not a preprocessing record ({error})") from None
    dataset = get(record, "dataset", where, (dict,), {})
    folder = dataset.get("path")
    model = load_keras_model(path)
    try:
        anchor_array = detector_anchors(model, spec)
    except EdgeError as error:
        raise EdgeError(f"{path}: {error}") from None
    classes = int(model.outputs[1].shape[-1]) - 1
    if classes != len(names):
        raise (where / "class_names").fail(f"lists {len(names)} names; the model predicts {classes} classes")
    from edge_mobilenet.models.profile import layer_costs

    rows = layer_costs(model)
    maps = [list(size) for size in feature_map_sizes(model)]
    return DetectorSource(path, sha256_file(path), sha256_file(metrics_path), model, anchor_array,
                          {**asdict(spec), "count": int(len(anchor_array)), "feature_maps": maps,
                           "image_size": [int(model.input.shape[1]), int(model.input.shape[2])]},
                          preprocessing, list(names),
                          Path(folder) if isinstance(folder, str) else None, dataset,
                          check(record.get("model"), where / "model", (str, type(None))),
                          sum(r.params for r in rows), sum(r.macs for r in rows))


# -- images ---------------------------------------------------------------------------------------------

@dataclass(eq=False)
class DetectionImages:
    inputs: np.ndarray  # preprocessed float32 [M, H, W, 3]
    coco: object  # data.detection.CocoSet, its images cut to the ones used
    files: list[str]
    description: str


def _split(source: DetectorSource, given: str | None, split: str, option: str) -> Path:
    """The COCO folder of ``split``: ``given`` (an option) or the training set's split folder."""
    if given is not None:
        folder = Path(given)
        if not (folder / "instances.json").is_file() and not folder.suffix == ".json":
            raise EdgeError(f"{option} {given}: a detector needs a COCO folder (instances.json and images/)")
        return folder
    if source.dataset_folder is None:
        raise EdgeError(f"{source.path}: its metrics file names no dataset folder; give {option} (a COCO folder)")
    folder = source.dataset_folder / split
    if not (folder / "instances.json").is_file():
        raise EdgeError(f"{folder}: the {split} split of the set {source.path.name} was trained on is missing "
                        f"(give {option}, a COCO folder, or re-create the set)")
    return folder


def load_images(source: DetectorSource, folder: Path, count: int, seed: int | None) -> DetectionImages:
    """``count`` images of a COCO folder (all if fewer; drawn by ``seed``, else the first) preprocessed
    for ``source``; their categories must be the model's."""
    from dataclasses import replace

    from edge_mobilenet.data.detection import load_coco
    from edge_mobilenet.train_detection import image_pixels

    coco = load_coco(folder)
    if coco.class_names != source.class_names:
        raise EdgeError(f"{coco.annotation_file}: categories {coco.class_names[:5]}... are not the ones "
                        f"{source.path.name} was trained on ({source.class_names[:5]}...)")
    order = np.arange(len(coco.images))
    if seed is not None:
        order = np.sort(np.random.default_rng(seed).permutation(len(order))[:count])
    images = tuple(coco.images[i] for i in order[:count])
    inputs = source.preprocessing.apply(image_pixels(images, source.size)).astype(np.float32)
    return DetectionImages(inputs, replace(coco, images=images), [image.path for image in images],
                           f"{folder} ({len(images)} images)")


def _files_hash(files: list[str]) -> str:
    """The calibration sets' content hash (relative names + bytes) of the images used."""
    import os

    from edge_mobilenet.data.calibration import content_hash

    paths = [Path(name) for name in files]
    return content_hash(paths, Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent)


# -- running and scoring --------------------------------------------------------------------------------

def run_detector_artifact(path: Path, runtime: str, inputs: np.ndarray, raw_decode=None) -> list:
    """The outputs of a detection artifact on each input -> one ImageDetections per image.

    ``raw_decode``: for raw artifacts, ``(anchors, host NmsSettings)`` to decode the box encodings and
    class scores with (dequantized first when the outputs are integers)."""
    from edge_mobilenet.convert.detection import OUTPUT_NAMES, RAW_OUTPUT_NAMES

    if runtime == "onnx":
        from edge_mobilenet.runtimes.onnx import make_session

        session = make_session(path)
        feed = session.get_inputs()[0].name
        run = lambda image: dict(zip([o.name for o in session.get_outputs()],  # noqa: E731
                                     session.run(None, {feed: image[None]})))
    else:
        from edge_mobilenet.runtimes.tflite import dequantize_output, make_interpreter, quantize_input, tensor_spec

        runner = make_interpreter(path).get_signature_runner()
        (name, detail), = runner.get_input_details().items()
        spec = tensor_spec(detail)
        specs = {key: tensor_spec(value) for key, value in runner.get_output_details().items()}
        run = lambda image: {key: dequantize_output(value, specs[key])  # noqa: E731
                             for key, value in runner(**{name: quantize_input(image[None], spec)}).items()}
    wanted = RAW_OUTPUT_NAMES if raw_decode is not None else OUTPUT_NAMES
    found = []
    for image in inputs:
        outputs = run(image)
        missing = [name for name in wanted if name not in outputs]
        if missing:
            raise EdgeError(f"{path}: not a detection artifact with {'raw outputs' if raw_decode else 'post-processing'} "
                            f"(no output {missing[0]})")
        found += raw_detections(outputs, raw_decode) if raw_decode is not None else [postprocessed(outputs)]
    return found


def postprocessed(outputs: dict):
    """The four post-processed outputs of one image -> ImageDetections (boxes clipped to [0, 1])."""
    from edge_mobilenet.contracts.detection_metrics import ImageDetections

    count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    boxes = np.clip(np.asarray(outputs["detection_boxes"], np.float32)[0, :count], 0.0, 1.0)
    return ImageDetections(boxes, np.asarray(outputs["detection_classes"])[0, :count].astype(np.int64),
                           np.asarray(outputs["detection_scores"], np.float32)[0, :count])


def raw_detections(outputs: dict, raw_decode) -> list:
    """Raw outputs (float box encodings, sigmoid class scores) -> ImageDetections, decoded on the host."""
    from edge_mobilenet.runtimes.detection import decode_detections

    anchors, host = raw_decode
    return decode_detections(np.asarray(outputs["box_encodings"], np.float32),
                             np.asarray(outputs["class_scores"], np.float32), anchors, settings=host,
                             scores_are_logits=False)


def float_detections(source: DetectorSource, inputs: np.ndarray, nms, clipped: bool = True) -> list:
    """The Keras model's raw outputs decoded on the host as the exported graphs do (``nms``: the export's
    settings: best class per anchor, class-agnostic NMS)."""
    from edge_mobilenet.runtimes.detection import decode_detections

    host = host_nms(nms)
    found = []
    for start in range(0, len(inputs), 64):
        codes, logits = (np.asarray(t) for t in source.model(inputs[start:start + 64], training=False))
        if clipped and nms.box_code_limit is not None:  # as the graphs clip them (convert.detection._clipped_parts)
            codes = np.clip(codes, -nms.box_code_limit, nms.box_code_limit)
        if clipped and nms.class_logit_limit is not None:
            logits = np.clip(logits, -nms.class_logit_limit, nms.class_logit_limit)
        found += decode_detections(codes, logits, source.anchors, settings=host)
    return found


def host_nms(nms):
    """The host-side NMS settings that decode as an export with ``nms`` (convert.detection.NmsSettings) does."""
    from edge_mobilenet.runtimes.detection import NmsSettings

    return NmsSettings(score_threshold=nms.score_threshold, iou_threshold=nms.iou_threshold,
                       max_detections=nms.max_detections, regular_nms=nms.use_regular_nms)


def agreement(reference: list, other: list) -> tuple[float, float]:
    """(share of the reference's detections scoring >= MATCH_SCORE that ``other`` finds with the same class
    and IoU >= MATCH_IOU, the largest score difference among them); (1.0, 0.0) when there are none."""
    from edge_mobilenet.runtimes.detection import iou_one_to_many

    wanted = found = 0
    worst = 0.0
    for ref, oth in zip(reference, other, strict=True):
        for box, label, score in zip(ref.boxes, ref.classes, ref.scores):
            if score < MATCH_SCORE:
                continue
            wanted += 1
            same = np.flatnonzero(oth.classes == label)
            if not same.size:
                continue
            overlaps = iou_one_to_many(box, oth.boxes[same])
            best = int(np.argmax(overlaps))
            if overlaps[best] >= MATCH_IOU:
                found += 1
                worst = max(worst, abs(float(oth.scores[same[best]]) - float(score)))
    return (found / wanted if wanted else 1.0), worst


# -- building ---------------------------------------------------------------------------------------------

def export_settings():
    """The post-processing the artifacts carry (convert.detection.NmsSettings defaults: the TF Object
    Detection API's TFLite export; boxes not clipped, as its op does not)."""
    from edge_mobilenet.convert.detection import NmsSettings

    return NmsSettings()


def _check_settings(settings: QuantizeSettings, formats: tuple[str, ...]) -> None:
    if settings.target_accuracy is None:
        return
    others = [f for f in formats if FORMATS[f].integer and FORMATS[f].runtime != "tflite"]
    if others:
        raise EdgeError(f"--target-accuracy for detectors searches int8 TFLite only (on mAP); drop "
                        f"{', '.join(others)} from --formats or quantize it without a target")
    if settings.latency_profile is not None:
        raise EdgeError("--latency-profile is not available for detectors yet; give --target-accuracy alone")


def detection_cache_key(source: DetectorSource, fmt: Format, settings: QuantizeSettings,
                        calibration_sha: str | None, eval_sha: str) -> str:
    import json

    from edge_mobilenet.convert.pipeline import PIPELINE_VERSION

    options = {"task": TASK, "format": fmt.name, "source": source.sha256, "metrics": source.metrics_sha256,
               "calibration": calibration_sha if fmt.calibrated else None, "eval": eval_sha,
               "onnx": [settings.onnx_activation_type, settings.onnx_calibration_method],
               "nms": asdict(export_settings()), "tools": tool_versions(), "pipeline": PIPELINE_VERSION,
               "export": EXPORT_VERSION, "outputs": settings.detection_outputs,
               "target": settings.target_accuracy.text if fmt.integer and settings.target_accuracy else None}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def _convert(source: DetectorSource, fmt: Format, calibration: np.ndarray | None, settings: QuantizeSettings,
             target: Path) -> dict:
    from edge_mobilenet.convert.detection import export_onnx_detector, export_tflite_detector
    from edge_mobilenet.convert.onnx_convert import OnnxQuantOptions

    nms, raw = export_settings(), settings.detection_outputs == "raw"
    if fmt.runtime == "tflite":
        return export_tflite_detector(source.model, source.anchors, target, fmt=fmt.name,
                                      calibration=calibration, nms=nms, raw=raw)
    options = OnnxQuantOptions(activation_type=settings.onnx_activation_type,
                               method=settings.onnx_calibration_method)
    return export_onnx_detector(source.model, source.anchors, target, int8=fmt.integer, calibration=calibration,
                                nms=nms, raw=raw, quant_options=options)


def artifact_name(source: DetectorSource, fmt: Format, settings: QuantizeSettings) -> str:
    """``STEM.SUFFIX``, or ``STEM_raw.SUFFIX`` for raw outputs (both kinds can share a folder)."""
    return f"{source.stem}{'_raw' if settings.detection_outputs == 'raw' else ''}{fmt.suffix}"


def build_detection_artifact(source: DetectorSource, fmt: Format, settings: QuantizeSettings, manifest: Manifest,
                             calibration: DetectionImages | None, calibration_record: CalibrationRecord | None,
                             evaluation: DetectionImages, float_found: list, float_metrics: dict,
                             key: str) -> ArtifactEntry:
    """Convert, score and commit one artifact (file and manifest entry together)."""
    from edge_mobilenet.contracts.detection_metrics import coco_map
    from edge_mobilenet.convert.detection import OUTPUT_NAMES, POSTPROCESS_OP, RAW_OUTPUT_NAMES
    from edge_mobilenet.convert.pipeline import runtime_facts
    from edge_mobilenet.models.anchors import BOX_CODER

    name = artifact_name(source, fmt, settings)
    raw = settings.detection_outputs == "raw"
    staged = Path(settings.output_dir) / f".{Path(name).stem}.partial{fmt.suffix}"
    raw_decode = (source.anchors, host_nms(export_settings())) if raw else None
    aware = None
    try:
        started = time.perf_counter()
        if fmt.integer and settings.target_accuracy is not None:
            aware, built = _accuracy_aware(source, fmt, settings, calibration, evaluation, float_metrics, staged,
                                           raw_decode)
        else:
            built = _convert(source, fmt, calibration.inputs if fmt.calibrated else None, settings, staged)
        seconds = time.perf_counter() - started
        input_spec, _, facts = runtime_facts(staged, fmt)
        outputs = tuple(TensorSpec(o["name"], tuple(int(d) for d in o["shape"]), o["dtype"], o.get("scale"),
                                   o.get("zero_point")) for o in built.pop("outputs"))
        found = run_detector_artifact(staged, fmt.runtime, evaluation.inputs, raw_decode)
        share, worst = agreement(float_found, found)
        validation = Validation(len(evaluation.inputs), evaluation.description, round(share, 4), round(worst, 6),
                                coco_map(evaluation.coco.ground_truth(), found), dict(float_metrics))
        nms = built.pop("nms")
        detection = {"anchors": source.anchor_spec,
                     "box_coder": {"name": "center_size", "scale_factors": list(BOX_CODER.scale_factors)},
                     "nms": nms, "score_conversion": built.pop("score_conversion"),
                     "postprocess": None if raw else POSTPROCESS_OP if fmt.runtime == "tflite"
                     else "ONNX NonMaxSuppression (class-agnostic)",
                     "outputs": list(RAW_OUTPUT_NAMES if raw else OUTPUT_NAMES), "background_class": 0}
        built.pop("anchors", None)
        built.pop("input", None)
        recipe = {"ptq": "none: plain min/max calibration (post-training methods are classification-only)"} \
            if fmt.integer else {}
        if aware is not None:
            recipe["accuracy_aware"] = aware
            key = key if aware["met"] else None  # a missed target is rebuilt on the next run
        entry = ArtifactEntry(
            file=name, format=fmt.name, runtime=fmt.runtime, baseline=fmt.baseline, task=TASK,
            sha256=sha256_file(staged), size_bytes=staged.stat().st_size, input=input_spec,
            preprocessing=asdict(source.preprocessing), outputs=outputs, model=source.model_name,
            source_file=str(source.path), source_sha256=source.sha256, trained_weights=True,
            class_names=tuple(source.class_names), dataset=source.dataset, params=source.params, macs=source.macs,
            calibration=calibration_record if fmt.calibrated else None, validation=validation,
            facts={"tool_versions": tool_versions(), "build_environment": build_environment(), "cache_key": key,
                   "convert_seconds": round(seconds, 2), "detection": detection, "recipe": recipe,
                   "export": built, **facts})
        manifest.commit(staged, entry)
    finally:
        staged.unlink(missing_ok=True)
    if aware is not None and not aware["met"]:
        from edge_mobilenet.convert.pipeline import TargetNotMet

        raise TargetNotMet(aware)
    return entry


def _accuracy_aware(source: DetectorSource, fmt: Format, settings: QuantizeSettings, calibration, evaluation,
                    float_metrics: dict, staged: Path, raw_decode) -> tuple[dict, dict]:
    """int8 TFLite with the fewest layers in float that meet the mAP target (:mod:`convert.detection_target`):
    (the search record, the conversion facts as :func:`convert.detection.export_tflite_detector` gives)."""
    from edge_mobilenet.convert.detection import POSTPROCESS_OP, SCORE_CONVERSION, tflite_facts
    from edge_mobilenet.convert.detection_target import build_accuracy_aware

    nms = export_settings()
    record = build_accuracy_aware(source, settings, calibration.inputs, evaluation, float_metrics["map"], staged,
                                  raw_decode, _log)
    facts = {"format": fmt.name, "raw": raw_decode is not None, "nms": asdict(nms),
             "score_conversion": SCORE_CONVERSION, "postprocess": None if raw_decode else POSTPROCESS_OP,
             "anchors": int(len(source.anchors)), "calibration_count": int(len(calibration.inputs)),
             **tflite_facts(staged.read_bytes())}
    return record, facts


def _line(entry: ArtifactEntry, status: str) -> str:
    metrics = entry.validation.metrics if entry.validation else {}
    return (f"  {entry.format:9s} {status:6s} {entry.size_bytes / 1024:9.1f} KiB"
            f"  {entry.facts.get('convert_seconds', 0):6.1f} s"
            + (f"  mAP {metrics['map']:.4f}  mAP@0.5 {metrics['map50']:.4f}" if "map" in metrics else "")
            + (f"  float {entry.validation.float_metrics['map']:.4f}"
               if entry.validation and "map" in entry.validation.float_metrics else "")
            + f"  {entry.file}")


def quantize_detector(model_path: Path, record: dict, formats: tuple[str, ...], settings: QuantizeSettings,
                      manifest: Manifest) -> list[ArtifactEntry]:
    """Every requested format of one trained detector (current artifacts reused)."""
    from edge_mobilenet.quiet import native_noise_filtered

    _check_settings(settings, formats)
    with native_noise_filtered():
        source = load_detector_source(model_path, record)
    default_calibration = settings.calibration.folder == type(settings)().calibration.folder
    calibration_folder = _split(source, None if default_calibration else settings.calibration.folder,
                                "train", "--calibration")
    eval_folder = _split(source, settings.eval_dir, "val", "--eval")
    evaluation = load_images(source, eval_folder, settings.eval_count, None)
    eval_sha = _files_hash(evaluation.files)
    calibration = calibration_record = calibration_sha = None
    if any(FORMATS[f].calibrated for f in formats):
        count = settings.calibration.count or DEFAULT_CALIBRATION_COUNT
        calibration = load_images(source, calibration_folder, count, settings.calibration.seed)
        calibration_sha = _files_hash(calibration.files)
        calibration_record = CalibrationRecord(str(calibration_folder), len(calibration.files),
                                               settings.calibration.seed, calibration_sha, count,
                                               source=source.dataset.get("source"),
                                               licence=source.dataset.get("licence"))
    keys = {f: detection_cache_key(source, FORMATS[f], settings, calibration_sha, eval_sha) for f in formats}
    entries, todo = [], []
    for f in formats:
        cached = manifest.cached(artifact_name(source, FORMATS[f], settings), keys[f])
        (entries.append(cached) if cached is not None else todo.append(f))
    _log(f"{model_path}: detector, {len(entries)} current, {len(todo)} to build "
         f"(validation: {evaluation.description})")
    for entry in entries:
        _log(_line(entry, "cached"))
    if not todo:
        return entries
    float_found = float_detections(source, evaluation.inputs, export_settings(),
                                   clipped=settings.detection_outputs != "raw")
    from edge_mobilenet.contracts.detection_metrics import coco_map

    float_metrics = coco_map(evaluation.coco.ground_truth(), float_found)
    for fmt in todo:
        started = time.perf_counter()
        entry = build_detection_artifact(source, FORMATS[fmt], settings, manifest, calibration, calibration_record,
                                         evaluation, float_found, float_metrics, keys[fmt])
        _log(_line(entry, "built") + f"  ({time.perf_counter() - started:.1f} s with validation)")
        entries.append(entry)
    return entries
