"""SSD anchors and the centre-size box coder, in pure numpy.

Both follow the TensorFlow Object Detection API, so boxes decoded here, by the API or by TFLite's
``TFLite_Detection_PostProcess`` agree:
  * anchors: ``ssd_anchor_generator`` (``create_ssd_anchors`` + ``MultipleGridAnchorGenerator``):
    scales linear from ``min_scale`` to ``max_scale`` over the feature maps, one anchor per (scale,
    aspect ratio) plus one at the geometric mean of this and the next scale for ratio 1, and the
    lowest layer reduced to 3 anchors (scale 0.1 ratio 1, then ratios 2 and 0.5);
  * coder: ``FasterRcnnBoxCoder`` with scale factors (10, 10, 5, 5).

Coordinates are normalised to the image (0..1). Anchors are (ycenter, xcenter, height, width), row
by row over each feature map, the anchors of one location adjacent, feature maps in order: the order
in which the detector concatenates its predictions. Boxes are (ymin, xmin, ymax, xmax); box codes
are (ty, tx, th, tw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class AnchorSpec:
    """The API's ``ssd_anchor_generator`` settings (defaults: the SSDLite COCO configs).

    ``aspect_ratios`` are width / height. The config files write 1/3 as 0.3333; the exact third is
    used here (anchor sizes differ by 3e-5 relative).
    """

    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
    interpolated_scale_aspect_ratio: float = 1.0  # 0 for none
    reduce_boxes_in_lowest_layer: bool = True
    lowest_layer_scale: float = 0.1  # the reduced lowest layer: this scale at ratio 1, then its own
    lowest_layer_aspect_ratios: tuple[float, ...] = (2.0, 0.5)  # scale at these ratios
    base_anchor_size: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def from_json(cls, record: dict) -> "AnchorSpec":
        """The spec of a recorded ``anchors`` object (lists as tuples; other keys such as ``count`` or
        ``feature_maps`` ignored). TypeError when a value or key is not one of the spec's."""
        from dataclasses import fields

        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in known})


SSD_ANCHORS = AnchorSpec()


def layer_scales(spec: AnchorSpec, num_layers: int) -> list[float]:
    """The scale of each feature map's anchors, ``min_scale`` to ``max_scale`` evenly."""
    if num_layers == 1:
        return [spec.min_scale]
    step = (spec.max_scale - spec.min_scale) / (num_layers - 1)
    return [spec.min_scale + step * layer for layer in range(num_layers)]


def box_specs(spec: AnchorSpec, num_layers: int) -> list[list[tuple[float, float]]]:
    """Per feature map, the (scale, aspect ratio) of each anchor at one location."""
    scales = layer_scales(spec, num_layers) + [1.0]  # the 1.0 only feeds the last interpolated scale
    layers = []
    for layer in range(num_layers):
        scale, scale_next = scales[layer], scales[layer + 1]
        if layer == 0 and spec.reduce_boxes_in_lowest_layer:
            layers.append([(spec.lowest_layer_scale, 1.0)]
                          + [(scale, ratio) for ratio in spec.lowest_layer_aspect_ratios])
            continue
        boxes = [(scale, ratio) for ratio in spec.aspect_ratios]
        if spec.interpolated_scale_aspect_ratio > 0:
            boxes.append((math.sqrt(scale * scale_next), spec.interpolated_scale_aspect_ratio))
        layers.append(boxes)
    return layers


def anchors_per_location(spec: AnchorSpec, num_layers: int) -> list[int]:
    """How many anchors each feature map predicts at every location (SSDLite: 3, 6, 6, 6, 6, 6)."""
    return [len(boxes) for boxes in box_specs(spec, num_layers)]


def generate_anchors(feature_map_sizes: Sequence[tuple[int, int]], spec: AnchorSpec = SSD_ANCHORS,
                     image_size: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Anchors [N, 4] float32 as (ycenter, xcenter, height, width), normalised to the image.

    Args:
        feature_map_sizes: (height, width) of each feature map, lowest (finest) first.
        spec: anchor settings.
        image_size: (height, width) of the input; only its aspect ratio matters: on a non-square
            image the API keeps anchors square in pixels by shrinking the longer side's base size.
    """
    image_height, image_width = image_size
    shortest = min(image_height, image_width)
    base_height = spec.base_anchor_size[0] * shortest / image_height
    base_width = spec.base_anchor_size[1] * shortest / image_width
    tiles = []
    for (grid_height, grid_width), boxes in zip(feature_map_sizes,
                                                box_specs(spec, len(feature_map_sizes)), strict=True):
        scales = np.array([s for s, _ in boxes], dtype=np.float64)
        ratio_roots = np.sqrt(np.array([r for _, r in boxes], dtype=np.float64))
        heights = scales / ratio_roots * base_height
        widths = scales * ratio_roots * base_width
        y_centers = (np.arange(grid_height, dtype=np.float64) + 0.5) / grid_height
        x_centers = (np.arange(grid_width, dtype=np.float64) + 0.5) / grid_width
        y, x, a = np.meshgrid(y_centers, x_centers, np.arange(len(boxes)), indexing="ij")
        tiles.append(np.stack([y, x, heights[a], widths[a]], axis=-1).reshape(-1, 4))
    return np.concatenate(tiles).astype(np.float32)


def corners_to_center_size(boxes: np.ndarray) -> np.ndarray:
    """(ymin, xmin, ymax, xmax) -> (ycenter, xcenter, height, width), along the last axis."""
    boxes = np.asarray(boxes, dtype=np.float64)
    ymin, xmin, ymax, xmax = np.moveaxis(boxes, -1, 0)
    return np.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=-1)


def center_size_to_corners(boxes: np.ndarray) -> np.ndarray:
    """(ycenter, xcenter, height, width) -> (ymin, xmin, ymax, xmax), along the last axis."""
    boxes = np.asarray(boxes, dtype=np.float64)
    y, x, h, w = np.moveaxis(boxes, -1, 0)
    return np.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], axis=-1)


@dataclass(frozen=True)
class CenterSizeBoxCoder:
    """The API's ``FasterRcnnBoxCoder``: offsets of the centre in anchor sizes, log of the size ratio.

    ``ty = (y - ya) / ha * sy``, ``tx = (x - xa) / wa * sx``, ``th = log(h / ha) * sh``,
    ``tw = log(w / wa) * sw`` with (sy, sx, sh, sw) = ``scale_factors``. As in the API, encode adds
    ``epsilon`` to heights and widths (no log of zero) and decode does not, as TFLite's
    post-processing op does not: a round trip is exact to about ``epsilon`` / box size.
    """

    scale_factors: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    epsilon: float = 1e-8

    def encode(self, boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Boxes [..., 4] (ymin, xmin, ymax, xmax) against anchors [..., 4] (ycenter, xcenter, h, w)
        -> codes [..., 4] (ty, tx, th, tw)."""
        y, x, h, w = np.moveaxis(corners_to_center_size(boxes), -1, 0)
        ya, xa, ha, wa = np.moveaxis(np.asarray(anchors, dtype=np.float64), -1, 0)
        ha, wa, h, w = ha + self.epsilon, wa + self.epsilon, h + self.epsilon, w + self.epsilon
        sy, sx, sh, sw = self.scale_factors
        codes = np.stack([(y - ya) / ha * sy, (x - xa) / wa * sx, np.log(h / ha) * sh,
                          np.log(w / wa) * sw], axis=-1)
        return codes.astype(_float_type(boxes, anchors))

    def decode(self, codes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Codes [..., 4] (ty, tx, th, tw) against anchors [..., 4] -> boxes (ymin, xmin, ymax, xmax)."""
        ty, tx, th, tw = np.moveaxis(np.asarray(codes, dtype=np.float64), -1, 0)
        ya, xa, ha, wa = np.moveaxis(np.asarray(anchors, dtype=np.float64), -1, 0)
        sy, sx, sh, sw = self.scale_factors
        center_size = np.stack([ty / sy * ha + ya, tx / sx * wa + xa, np.exp(th / sh) * ha,
                                np.exp(tw / sw) * wa], axis=-1)
        return center_size_to_corners(center_size).astype(_float_type(codes, anchors))


BOX_CODER = CenterSizeBoxCoder()


def _float_type(*arrays) -> np.dtype:
    """float32 unless an input is float64 (the model's and TFLite's float32 by default)."""
    return np.result_type(np.float32, *[np.asarray(a).dtype for a in arrays
                                        if np.issubdtype(np.asarray(a).dtype, np.floating)])
