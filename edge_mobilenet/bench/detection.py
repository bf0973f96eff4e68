"""Bench for detection artifacts: held-out COCO images in, the device's four outputs back, COCO mAP
(pycocotools) on the host, and the change against the float artifact of the same source.

The images are the val split of the set the detector trained on (recorded in the manifest entry's
``dataset``) or ``--eval`` naming a COCO folder, resized whole as in training. The device runner returns
every output of a multi-output model (``named/NAME`` in its outputs file); nothing is decoded on the
device beyond what the artifact's own post-processing does.
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
    missing = [name for name in OUTPUTS if name not in named]
    if missing:
        raise EdgeError(f"{entry.file}: the device returned no {missing[0]} output (outputs: "
                        f"{', '.join(sorted(named)) or 'one only'}); is the runner current?")
    found = []
    for boxes, classes, scores, count in zip(*(named[name] for name in OUTPUTS)):
        n = int(np.asarray(count).reshape(-1)[0])
        found.append(ImageDetections(np.clip(boxes[:n].astype(np.float32), 0, 1), classes[:n].astype(np.int64),
                                     scores[:n].astype(np.float32)))
    return found


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
