"""Detection post-processing on the host, numpy only: raw SSD outputs -> boxes, classes, scores.

The detector's raw outputs (``box_encodings`` [B, N, 4], ``class_predictions`` [B, N, C + 1] with index 0
the background) become one :class:`ImageDetections` per image, as TFLite's ``TFLite_Detection_PostProcess``
computes them:
  * box codes decoded against the anchors with the centre-size coder (the TF Object Detection API's
    ``FasterRcnnBoxCoder``, scale factors 10, 10, 5, 5; the same math as
    ``models.anchors.CenterSizeBoxCoder.decode``, written again here because runtimes sit below models),
    then clipped to [0, 1];
  * scores: sigmoid (the SSDLite configs and our training) or softmax of the logits, background dropped;
  * non-maximum suppression, one of the op's two modes:
      - ``regular_nms=True`` (default, ``use_regular_nms=true``): per class, greedy NMS over the anchors
        scoring above the threshold, at most ``max_detections_per_class`` kept per class, then the best
        ``max_detections`` over all classes. An anchor may be reported for several classes. This is what
        evaluation uses (the API's ``batch_non_max_suppression``).
      - ``regular_nms=False`` (the op's default, "fast"): each anchor keeps only its best class, then
        one class-agnostic greedy NMS; boxes of different classes may suppress each other.

Output classes are 0 .. C-1 (background removed); boxes are normalised ymin, xmin, ymax, xmax.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edge_mobilenet.contracts.detection_metrics import ImageDetections
from edge_mobilenet.errors import EdgeError

SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
SCORE_CONVERTERS = ("sigmoid", "softmax")
# The SSDLite COCO configs' post_processing: score 1e-8, IoU 0.6, 100 per class, 100 in all.
DEFAULT_SCORE_THRESHOLD = 1e-8
DEFAULT_IOU_THRESHOLD = 0.6
DEFAULT_MAX_DETECTIONS = 100


@dataclass(frozen=True)
class NmsSettings:
    """How raw outputs become detections (recorded with every evaluation that used them)."""

    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    max_detections: int = DEFAULT_MAX_DETECTIONS
    max_detections_per_class: int | None = None  # None: max_detections
    regular_nms: bool = True
    score_converter: str = "sigmoid"
    scale_factors: tuple[float, float, float, float] = SCALE_FACTORS

    def __post_init__(self):
        if not 0 <= self.score_threshold < 1:
            raise EdgeError(f"score_threshold must be in [0, 1). Received score_threshold={self.score_threshold!r}")
        if not 0 < self.iou_threshold <= 1:
            raise EdgeError(f"iou_threshold must be in (0, 1]. Received iou_threshold={self.iou_threshold!r}")
        for name in ("max_detections", "max_detections_per_class"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EdgeError(f"{name} must be an integer >= 1. Received {name}={value!r}")
        if self.score_converter not in SCORE_CONVERTERS:
            raise EdgeError(f"score_converter must be one of {', '.join(SCORE_CONVERTERS)}. "
                            f"Received score_converter={self.score_converter!r}")

    @property
    def per_class(self) -> int:
        return self.max_detections if self.max_detections_per_class is None else self.max_detections_per_class

    def to_json(self) -> dict:
        return {**asdict(self), "scale_factors": list(self.scale_factors)}


def decode_boxes(box_encodings: np.ndarray, anchors: np.ndarray,
                 scale_factors: tuple[float, float, float, float] = SCALE_FACTORS) -> np.ndarray:
    """Codes [..., 4] (ty, tx, th, tw) against anchors [N, 4] (ycenter, xcenter, h, w) -> boxes [..., 4]
    (ymin, xmin, ymax, xmax), not clipped."""
    ty, tx, th, tw = np.moveaxis(np.asarray(box_encodings, dtype=np.float64), -1, 0)
    ya, xa, ha, wa = np.moveaxis(np.asarray(anchors, dtype=np.float64), -1, 0)
    sy, sx, sh, sw = scale_factors
    y, x = ty / sy * ha + ya, tx / sx * wa + xa
    h, w = np.exp(th / sh) * ha, np.exp(tw / sw) * wa
    return np.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], axis=-1)


def class_scores(class_predictions: np.ndarray, score_converter: str = "sigmoid",
                 scores_are_logits: bool = True) -> np.ndarray:
    """Per-anchor object-class scores [..., C] from [..., C + 1] predictions (background column dropped)."""
    values = np.asarray(class_predictions, dtype=np.float64)
    if scores_are_logits:
        if score_converter == "softmax":
            shifted = np.exp(values - values.max(axis=-1, keepdims=True))
            values = shifted / shifted.sum(axis=-1, keepdims=True)
        else:
            values = 1.0 / (1.0 + np.exp(-values))
    return values[..., 1:]


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one corner box [4] with boxes [K, 4] (ymin, xmin, ymax, xmax)."""
    ymin = np.maximum(box[0], boxes[:, 0])
    xmin = np.maximum(box[1], boxes[:, 1])
    ymax = np.minimum(box[2], boxes[:, 2])
    xmax = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ymax - ymin, 0, None) * np.clip(xmax - xmin, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best score first: a box is dropped when its IoU with a
    kept one exceeds ``iou_threshold`` (TFLite's and tf.image.non_max_suppression's rule)."""
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size and len(kept) < limit:
        best = order[0]
        kept.append(best)
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(kept, dtype=np.int64)


def decode_detections(box_encodings, class_logits_or_scores, anchors, *,
                      score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                      iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                      max_detections: int = DEFAULT_MAX_DETECTIONS,
                      scores_are_logits: bool = True, settings: NmsSettings | None = None) -> list[ImageDetections]:
    """Raw detector outputs -> one :class:`ImageDetections` per image (module doc).

    Args:
        box_encodings: [B, N, 4] or [N, 4] box codes.
        class_logits_or_scores: [B, N, C + 1] or [N, C + 1], index 0 the background.
        anchors: [N, 4] (ycenter, xcenter, h, w), normalised, in the outputs' order.
        settings: all post-processing settings at once (then the keywords before it are ignored).
    """
    if settings is None:
        settings = NmsSettings(score_threshold=score_threshold, iou_threshold=iou_threshold,
                               max_detections=max_detections)
    codes, predictions = np.asarray(box_encodings), np.asarray(class_logits_or_scores)
    if codes.ndim == 2:
        codes, predictions = codes[None], predictions[None]
    anchors = np.asarray(anchors)
    if codes.ndim != 3 or codes.shape[-1] != 4 or predictions.ndim != 3 or predictions.shape[:2] != codes.shape[:2] \
            or predictions.shape[-1] < 2 or anchors.shape != (codes.shape[1], 4):
        raise EdgeError(f"detector outputs do not fit: box_encodings {list(codes.shape)}, class predictions "
                        f"{list(predictions.shape)}, anchors {list(anchors.shape)} (expected [B, N, 4], "
                        "[B, N, C + 1], [N, 4])")
    boxes = np.clip(decode_boxes(codes, anchors, settings.scale_factors), 0.0, 1.0)
    scores = class_scores(predictions, settings.score_converter, scores_are_logits)
    select = _regular_nms if settings.regular_nms else _fast_nms
    return [select(image_boxes, image_scores, settings) for image_boxes, image_scores in zip(boxes, scores)]


def _regular_nms(boxes: np.ndarray, scores: np.ndarray, settings: NmsSettings) -> ImageDetections:
    found_boxes, found_classes, found_scores = [], [], []
    for label in range(scores.shape[1]):
        candidates = np.flatnonzero(scores[:, label] > settings.score_threshold)
        if not candidates.size:
            continue
        kept = candidates[greedy_nms(boxes[candidates], scores[candidates, label], settings.iou_threshold,
                                     settings.per_class)]
        found_boxes.append(boxes[kept])
        found_classes.append(np.full(len(kept), label, np.int64))
        found_scores.append(scores[kept, label])
    return _best(found_boxes, found_classes, found_scores, settings.max_detections)


def _fast_nms(boxes: np.ndarray, scores: np.ndarray, settings: NmsSettings) -> ImageDetections:
    labels = np.argmax(scores, axis=1)
    best = scores[np.arange(len(scores)), labels]
    candidates = np.flatnonzero(best > settings.score_threshold)
    kept = candidates[greedy_nms(boxes[candidates], best[candidates], settings.iou_threshold,
                                 settings.max_detections)]
    return _best([boxes[kept]], [labels[kept]], [best[kept]], settings.max_detections)


def _best(boxes: list, classes: list, scores: list, limit: int) -> ImageDetections:
    if not boxes:
        return ImageDetections.empty()
    all_scores = np.concatenate(scores)
    order = np.argsort(-all_scores, kind="stable")[:limit]
    return ImageDetections(np.concatenate(boxes)[order].astype(np.float32),
                           np.concatenate(classes)[order].astype(np.int64), all_scores[order].astype(np.float32))
