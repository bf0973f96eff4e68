"""Bench for detection artifacts: held-out COCO images in, the device's four outputs back, COCO mAP
(pycocotools) on the host, and the change against the float artifact of the same source.

The images are the val split of the set the detector trained on (recorded in the manifest entry's
``dataset``) or ``--eval`` naming a COCO folder, resized whole as in training. The device runner returns
every output of a multi-output model (``named/NAME`` in its outputs file); nothing is decoded on the
device beyond what the artifact's own post-processing does. Raw artifacts (``--detection-outputs raw``:
box encodings and class scores) are decoded on the host as quantize validated them: anchors regenerated
from the feature maps their manifest entry records, outputs dequantized by their specs, the same NMS.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_mobilenet.contracts.records import ArtifactEntry
from edge_mobilenet.errors import EdgeError

OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
RAW_OUTPUTS = ("box_encodings", "class_scores")


@dataclass(eq=False)
class DetectionEval:
    pixels: np.ndarray  # uint8 [M, H, W, 3]
    truth: list  # GroundTruthImage per image
    description: str
    labels = None  # no class labels: the classification paths skip it


def eval_folder(entry: ArtifactEntry, eval_dir: str | None) -> Path:
    if eval_dir is not None:
        folder = Path(eval_dir)
        if not (folder / "instances.json").is_file():
            raise EdgeError(f"--eval {eval_dir}: a detection artifact needs a COCO folder (instances.json, images/)")
        return folder
    path = (entry.dataset or {}).get("path")
    if not isinstance(path, str):
        raise EdgeError(f"{entry.file}: its manifest entry names no dataset folder; give --eval (a COCO folder)")
    folder = Path(path) / "val"
    if not (folder / "instances.json").is_file():
        raise EdgeError(f"{folder}: the val split {entry.file} was validated on is missing; give --eval "
                        "(a COCO folder) or re-create the set")
    return folder


def load_eval(entry: ArtifactEntry, eval_dir: str | None, count: int) -> DetectionEval:
    """At most ``count`` images of the COCO folder, resized to the artifact's input."""
    from edge_mobilenet.data.detection import load_coco
    from edge_mobilenet.train_detection import image_pixels

    folder = eval_folder(entry, eval_dir)
    coco = load_coco(folder)
    if list(entry.class_names) and coco.class_names != list(entry.class_names):
        raise EdgeError(f"{coco.annotation_file}: its categories are not those of {entry.file}")
    images = coco.images[:count]
    pixels = image_pixels(images, int(entry.input.shape[1]))
    truth = coco.ground_truth()[:count]
    return DetectionEval(pixels, truth, f"{folder} ({len(images)} images)")


def detections(result: dict, entry: ArtifactEntry) -> list | None:
    """The device's outputs -> one ImageDetections per image (None when the run failed)."""
    from edge_mobilenet.contracts.detection_metrics import ImageDetections

    if not result.get("ok") or "outputs_npz_b64" not in result:
        return None
    with np.load(io.BytesIO(base64.b64decode(result["outputs_npz_b64"]))) as data:
        named = {key[len("named/"):]: data[key] for key in data.files if key.startswith("named/")}
    detection = entry.facts.get("detection") or {}
    raw = detection.get("outputs") == list(RAW_OUTPUTS)
    wanted = RAW_OUTPUTS if raw else OUTPUTS
    missing = [name for name in wanted if name not in named]
    if missing:
        raise EdgeError(f"{entry.file}: the device returned no {missing[0]} output (outputs: "
                        f"{', '.join(sorted(named)) or 'one only'}); is the runner current?")
    if raw:
        return _decoded(named, entry, detection)
    found = []
    for boxes, classes, scores, count in zip(*(named[name] for name in OUTPUTS)):
        n = int(np.asarray(count).reshape(-1)[0])
        found.append(ImageDetections(np.clip(boxes[:n].astype(np.float32), 0, 1), classes[:n].astype(np.int64),
                                     scores[:n].astype(np.float32)))
    return found


def _decoded(named: dict, entry: ArtifactEntry, detection: dict) -> list:
    """Raw outputs of a batch -> detections, decoded as quantize validated the artifact."""
    from edge_mobilenet.models.anchors import AnchorSpec, generate_anchors
    from edge_mobilenet.runtimes.detection import NmsSettings, decode_detections

    spec, nms = detection.get("anchors") or {}, detection.get("nms") or {}
    try:
        anchors = generate_anchors([tuple(size) for size in spec["feature_maps"]],
                                   AnchorSpec.from_json(spec),
                                   image_size=tuple(spec["image_size"]))
        host = NmsSettings(score_threshold=nms["score_threshold"], iou_threshold=nms["iou_threshold"],
                           max_detections=nms["max_detections"], regular_nms=nms["use_regular_nms"])
    except (KeyError, TypeError, ValueError) as error:
        raise EdgeError(f"{entry.file}: its manifest entry's detection.anchors/nms can't decode raw outputs "
                        f"({type(error).__name__}: {error})") from None
    specs = {spec.name: spec for spec in entry.outputs}
    values = []
    for name in RAW_OUTPUTS:
        array, out = named[name].astype(np.float32), specs.get(name)
        if out is not None and out.scale is not None:
            array = (array - out.zero_point) * out.scale
        values.append(array.reshape(array.shape[0], -1, array.shape[-1]))
    return decode_detections(*values, anchors, settings=host, scores_are_logits=False)


def score(found: list | None, evaluation: DetectionEval, baseline: dict | None) -> dict | None:
    """mAP record of one artifact; with the float artifact's record, the change in points."""
    from edge_mobilenet.contracts.detection_metrics import coco_map

    if found is None:
        return None
    record = {"images": len(found), **coco_map(evaluation.truth, found)}
    if baseline is not None:
        record.update(float_map=baseline["map"], float_map50=baseline["map50"],
                      delta_map_vs_float=round(record["map"] - baseline["map"], 4),
                      delta_map50_vs_float=round(record["map50"] - baseline["map50"], 4))
    return record
