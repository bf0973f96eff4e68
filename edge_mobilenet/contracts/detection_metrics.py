"""Detection metrics: COCO mAP as pycocotools' ``COCOeval`` computes it (the field's reference evaluator).

Boxes everywhere in edge-mobilenet are normalised ``ymin, xmin, ymax, xmax`` (the TFLite detection
post-process layout) with class indices ``0 .. C-1``. :func:`coco_map` scales them to each image's pixels,
writes them as COCO records (``bbox`` = x, y, width, height in pixels; category id = class index + 1) and
lets ``COCOeval`` match and accumulate them: 101-point interpolated precision, IoU thresholds
0.50:0.05:0.95, at most 100 detections per image, crowd boxes ignored rather than counted as misses.
Detections of a class with no ground-truth box do not count (COCO's rule). Ground truth and detections
are paired by position: ``detections[i]`` are the detections on the image ``ground_truth[i]`` describes.

No TensorFlow here; pycocotools is imported inside :func:`coco_map` and its progress prints are silenced.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge_mobilenet.errors import EdgeError

DETECTION_METRICS = ("map", "map50", "map75")
# Index of each metric in COCOeval.stats (summarize's order: AP, AP50, AP75, APs, APm, APl, AR1, ...).
_STATS_INDEX = {"map": 0, "map50": 1, "map75": 2}


@dataclass(frozen=True, eq=False)
class GroundTruthImage:
    """The labelled boxes of one image.

    Attributes:
        width: image width in pixels (normalised boxes are scaled by it).
        height: image height in pixels.
        boxes: float [K, 4], normalised ymin, xmin, ymax, xmax.
        classes: int [K], class indices 0 .. C-1.
        crowd: bool [K] or None (no crowd boxes); COCOeval ignores detections matched to a crowd box.
    """

    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray
    crowd: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """A model's detections on one image: float [K, 4] normalised ymin, xmin, ymax, xmax (clipped to
    the image), int [K] class indices and float [K] scores."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> "ImageDetections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))


def coco_map(ground_truth: Sequence[GroundTruthImage], detections: Sequence[ImageDetections]) -> dict[str, float]:
    """``{"map": mAP@[.5:.95], "map50": mAP@0.5, "map75": mAP@0.75}`` by pycocotools' COCOeval.

    No detections at all gives 0.0 for each metric. Ground truth without a single (non-crowd) box has no
    mAP: an EdgeError, as are mismatched lengths, misshapen arrays, negative classes and non-finite values.
    """
    if len(ground_truth) != len(detections):
        raise EdgeError(f"detections cover {len(detections)} images, the ground truth {len(ground_truth)}")
    truth = [_checked_truth(image, f"ground_truth[{i}]") for i, image in enumerate(ground_truth)]
    found = [_checked_detections(image, f"detections[{i}]") for i, image in enumerate(detections)]
    if not any((~crowd).any() for _, _, _, _, crowd in truth):
        raise EdgeError(f"mAP is undefined: the ground truth of {len(truth)} images holds no (non-crowd) box")
    classes = 1 + max([int(c.max()) for _, _, _, c, _ in truth if c.size]
                      + [int(c.max()) for _, c, _ in found if c.size])
    dataset = _coco_dataset(truth, classes)
    results = _coco_results(truth, found)
    if not results:
        return {name: 0.0 for name in DETECTION_METRICS}
    return {name: round(value, 4) for name, value in _evaluate(dataset, results).items()}


def _evaluate(dataset: dict, results: list[dict]) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):  # COCO, loadRes and COCOeval print their progress
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: max(0.0, float(evaluation.stats[index])) for name, index in _STATS_INDEX.items()}


def _pixel_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised ymin, xmin, ymax, xmax -> pixel x, y, width, height (clipped to the image)."""
    clipped = np.clip(boxes.astype(np.float64), 0.0, 1.0)
    x0, x1 = clipped[:, 1] * width, clipped[:, 3] * width
    y0, y1 = clipped[:, 0] * height, clipped[:, 2] * height
    return np.stack([x0, y0, np.maximum(x1 - x0, 0.0), np.maximum(y1 - y0, 0.0)], axis=1)


def _coco_dataset(truth: list, classes: int) -> dict:
    images, annotations = [], []
    for image_id, (width, height, boxes, labels, crowd) in enumerate(truth, start=1):
        images.append({"id": image_id, "width": width, "height": height})
        for box, label, is_crowd in zip(_pixel_boxes(boxes, width, height), labels, crowd):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                                "iscrowd": int(is_crowd)})
    categories = [{"id": index + 1, "name": str(index)} for index in range(classes)]
    return {"info": {}, "images": images, "annotations": annotations, "categories": categories}


def _coco_results(truth: list, found: list) -> list[dict]:
    results = []
    for image_id, ((width, height, *_), (boxes, labels, scores)) in enumerate(zip(truth, found), start=1):
        for box, label, score in zip(_pixel_boxes(boxes, width, height), labels, scores):
            results.append({"image_id": image_id, "category_id": int(label) + 1,
                            "bbox": [float(v) for v in box], "score": float(score)})
    return results


def _checked_truth(image: GroundTruthImage, where: str) -> tuple:
    for name in ("width", "height"):
        value = getattr(image, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise EdgeError(f"{where}.{name} must be a positive integer, not {value!r}")
    boxes = _boxes(image.boxes, f"{where}.boxes")
    classes = _classes(image.classes, len(boxes), f"{where}.classes")
    crowd = (np.zeros(len(boxes), bool) if image.crowd is None
             else _vector(image.crowd, len(boxes), f"{where}.crowd").astype(bool))
    return int(image.width), int(image.height), boxes, classes, crowd


def _checked_detections(image: ImageDetections, where: str) -> tuple:
    boxes = _boxes(image.boxes, f"{where}.boxes")
    scores = _vector(image.scores, len(boxes), f"{where}.scores").astype(np.float64)
    if not np.isfinite(scores).all():
        raise EdgeError(f"{where}.scores holds a value that is not finite")
    return boxes, _classes(image.classes, len(boxes), f"{where}.classes"), scores


def _boxes(boxes, where: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise EdgeError(f"{where} must have shape [K, 4] (ymin, xmin, ymax, xmax), not {list(array.shape)}")
    if not np.isfinite(array).all():
        raise EdgeError(f"{where} holds a value that is not finite")
    return array


def _vector(values, length: int, where: str) -> np.ndarray:
    array = np.asarray(values).reshape(-1) if np.size(values) else np.zeros(0)
    if len(array) != length:
        raise EdgeError(f"{where} has {len(array)} entries for {length} boxes")
    return array


def _classes(classes, length: int, where: str) -> np.ndarray:
    array = _vector(classes, length, where)
    if array.size and (not np.all(np.isfinite(array.astype(np.float64)))
                       or not np.all(array == np.round(array)) or array.min() < 0):
        raise EdgeError(f"{where} must hold class indices 0, 1, ... (found {array[:5].tolist()})")
    return array.astype(np.int64)
