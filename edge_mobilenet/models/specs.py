"""MobileNet architectures as data: one table per family, rows parsed into typed records.

The rows follow the papers' tables (V1 Table 1, V2 Table 2, V3 Tables 1 and 2); the builder in
``builder.py`` decodes them. Channel counts here are for width multiplier 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

Activation = Literal["relu", "relu6", "hard_swish"]


@dataclass(frozen=True)
class SeparableRow:
    """MobileNetV1 depthwise separable block: 3x3 depthwise + 1x1 pointwise, BN + ReLU6 after each."""

    filters: int
    stride: int


@dataclass(frozen=True)
class InvertedResidualRow:
    """MobileNetV2/V3 bottleneck: 1x1 expand, kxk depthwise, optional squeeze-excite, linear 1x1 project.

    ``expanded`` is the absolute expansion width of the paper's table (V2: t * input channels),
    ``se`` adds squeeze-and-excite, ``activation`` applies after expand and depthwise.
    """

    kernel: int
    expanded: int
    filters: int
    stride: int
    se: bool
    activation: Activation


Row = Union[SeparableRow, InvertedResidualRow]


@dataclass(frozen=True)
class FamilySpec:
    """Stem, blocks and head of one architecture."""

    family: Literal["v1", "v2", "v3"]
    stem_filters: int
    stem_activation: Activation
    blocks: tuple[Row, ...]
    head_filters: int  # V2: last 1x1 conv; V3: the pooled 1x1 conv ("last point"); V1: unused
    head_activation: Activation
    preprocessing: str  # key in data.preprocess.PREPROCESSING


def _v1_rows() -> tuple[SeparableRow, ...]:
    table = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [
        (1024, 2), (1024, 1)]
    return tuple(SeparableRow(filters, stride) for filters, stride in table)


def _v2_rows() -> tuple[InvertedResidualRow, ...]:
    # Paper Table 2: expansion t, output channels c, repeats n, first stride s.
    stages = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]
    rows, in_channels = [], 32
    for expansion, filters, repeats, first_stride in stages:
        for index in range(repeats):
            rows.append(InvertedResidualRow(3, expansion * in_channels, filters,
                                            first_stride if index == 0 else 1, False, "relu6"))
            in_channels = filters
    return tuple(rows)


def _v3_rows(table) -> tuple[InvertedResidualRow, ...]:
    return tuple(InvertedResidualRow(k, exp, out, s, bool(se), "hard_swish" if nl == "HS" else "relu")
                 for k, exp, out, se, nl, s in table)


# Paper Table 1 (Large) and Table 2 (Small): kernel, exp size, #out, SE, NL, stride.
V3_LARGE_TABLE = [
    (3, 16, 16, 0, "RE", 1), (3, 64, 24, 0, "RE", 2), (3, 72, 24, 0, "RE", 1),
    (5, 72, 40, 1, "RE", 2), (5, 120, 40, 1, "RE", 1), (5, 120, 40, 1, "RE", 1),
    (3, 240, 80, 0, "HS", 2), (3, 200, 80, 0, "HS", 1), (3, 184, 80, 0, "HS", 1),
    (3, 184, 80, 0, "HS", 1), (3, 480, 112, 1, "HS", 1), (3, 672, 112, 1, "HS", 1),
    (5, 672, 160, 1, "HS", 2), (5, 960, 160, 1, "HS", 1), (5, 960, 160, 1, "HS", 1),
]
V3_SMALL_TABLE = [
    (3, 16, 16, 1, "RE", 2), (3, 72, 24, 0, "RE", 2), (3, 88, 24, 0, "RE", 1),
    (5, 96, 40, 1, "HS", 2), (5, 240, 40, 1, "HS", 1), (5, 240, 40, 1, "HS", 1),
    (5, 120, 48, 1, "HS", 1), (5, 144, 48, 1, "HS", 1), (5, 288, 96, 1, "HS", 2),
    (5, 576, 96, 1, "HS", 1), (5, 576, 96, 1, "HS", 1),
]

FAMILIES: dict[str, FamilySpec] = {
    "mobilenet_v1": FamilySpec("v1", 32, "relu6", _v1_rows(), 0, "relu6", "symmetric"),
    "mobilenet_v2": FamilySpec("v2", 32, "relu6", _v2_rows(), 1280, "relu6", "symmetric"),
    "mobilenet_v3_large": FamilySpec("v3", 16, "hard_swish", _v3_rows(V3_LARGE_TABLE), 1280,
                                     "hard_swish", "raw"),
    "mobilenet_v3_small": FamilySpec("v3", 16, "hard_swish", _v3_rows(V3_SMALL_TABLE), 1024,
                                     "hard_swish", "raw"),
}


def minimalistic(spec: FamilySpec) -> FamilySpec:
    """V3 without squeeze-excite, hard-swish or 5x5 kernels (the paper's "minimalistic" models)."""
    rows = tuple(InvertedResidualRow(3, r.expanded, r.filters, r.stride, False,
                                     "relu" if r.activation == "hard_swish" else r.activation)
                 for r in spec.blocks)
    return FamilySpec(spec.family, spec.stem_filters, "relu", rows, spec.head_filters, "relu",
                      spec.preprocessing)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10%."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded
