"""Task metrics, computed one way everywhere (quantize validation, accuracy-aware search, bench).

Classification outputs are [N, classes(+1)] scores; ``offset`` is 1 when output 0 is a background
class (1001-output models on 1000-class labels). Metric names are the keys records carry.
"""

from __future__ import annotations

import numpy as np

from edge_mobilenet.errors import EdgeError



def label_offset(outputs: int, classes: int, source: str = "the model") -> int:
    """1 when ``outputs`` has one more entry than there are ``classes`` (background first), else 0."""
    if outputs == classes + 1:
        return 1
    if outputs < classes:
        raise EdgeError(f"{source}: the labels have {classes} classes, but the model outputs {outputs}")
    return 0


def predictions(outputs: np.ndarray, offset: int = 0, k: int = 1) -> np.ndarray:
    """The ``k`` best class indices per row, in label space ([N, k])."""
    flat = outputs.reshape(len(outputs), -1)
    return np.argsort(-flat, axis=1, kind="stable")[:, :k] - offset


def top1(outputs: np.ndarray, labels: np.ndarray, offset: int = 0) -> float:
    return float(np.mean(np.argmax(outputs.reshape(len(outputs), -1), axis=1) - offset == labels))


def topk(outputs: np.ndarray, labels: np.ndarray, offset: int = 0, k: int = 5) -> float:
    return float(np.mean((predictions(outputs, offset, k) == labels[:, None]).any(axis=1)))


def agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Share of rows whose best class equals the reference's (e.g. int8 vs float)."""
    return float(np.mean(np.argmax(outputs.reshape(len(outputs), -1), 1)
                         == np.argmax(reference.reshape(len(reference), -1), 1)))


def classification_metrics(outputs: np.ndarray, labels: np.ndarray, offset: int = 0) -> dict[str, float]:
    return {"top1": round(top1(outputs, labels, offset), 4), "top5": round(topk(outputs, labels, offset), 4)}
