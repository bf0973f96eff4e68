"""Datasets rebuilt from their description, and the held-out images quantize and bench evaluate on.

A trained model's metrics JSON carries ``dataset`` (:func:`dataset_description`): its source, size,
validation split and seed, from which the exact train/validation split is rebuilt. Evaluation images are
``--eval DIR`` when given, else that validation split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_mobilenet.errors import EdgeError


def dataset_description(settings) -> dict:
    """How to rebuild the exact train/validation split (stored in the metrics JSON)."""
    return {"source": settings.data_dir or "sklearn-digits", "size": settings.size,
            "validation_split": settings.validation_split, "seed": settings.seed}


def dataset_crop_fraction(description: dict, preprocessing) -> float:
    """Digits are whole 8x8 images resized as they are; photo folders are centre-cropped."""
    return 1.0 if description["source"] == "sklearn-digits" else preprocessing.crop_fraction


def load_dataset(description: dict, *, crop_fraction: float = 0.875, progress: bool = False):
    """Rebuild (images, train indices, validation indices) from :func:`dataset_description`."""
    from edge_mobilenet.data.images import load_digits, load_folder, stratified_split

    size = (description["size"], description["size"])
    if description["source"] == "sklearn-digits":
        images = load_digits(size)
    else:
        images = load_folder(description["source"], size, crop_fraction=crop_fraction,
                             progress=progress, require_labels=True)
    if len(images.class_names) < 2:
        raise EdgeError(f"{description['source']}: training needs at least 2 classes")
    train_idx, val_idx = stratified_split(images.labels, description["validation_split"],
                                          description["seed"])
    return images, train_idx, val_idx


@dataclass(frozen=True)
class EvalImages:
    """Held-out uint8 pixels, their labels (None when unlabelled) and the number of classes."""

    pixels: np.ndarray
    labels: np.ndarray | None
    classes: int
    description: str
    files: tuple[str, ...] = ()


def load_eval_images(size: tuple[int, int], crop_fraction: float, *, eval_dir: str | None,
                     count: int, dataset: dict | None, exclude=frozenset(),
                     progress: bool = False) -> EvalImages | None:
    """``--eval DIR`` (minus ``exclude``: the calibration images), else the dataset's validation split,
    else None. Labels count only when every image has one."""
    from edge_mobilenet.data.images import load_folder

    if eval_dir:
        images = load_folder(eval_dir, size, crop_fraction=crop_fraction, progress=progress)
        keep = [i for i, f in enumerate(images.files) if f not in exclude][:count]
        if not keep:
            raise EdgeError(f"{eval_dir}: no evaluation images left after removing the calibration images")
        images = images.subset(keep)
        description = (f"{eval_dir} ({len(images)} images not used for calibration)" if exclude
                       else f"{eval_dir} ({len(images)} images)")
    elif dataset:
        data, _, val_idx = load_dataset(dataset, crop_fraction=crop_fraction)
        images = data.subset(val_idx[:count])
        description = f"validation split of {dataset['source']} ({len(images)} images)"
    else:
        return None
    labelled = bool(images.class_names) and bool((images.labels >= 0).all())
    return EvalImages(images.pixels, images.labels if labelled else None, len(images.class_names),
                      description, tuple(images.files))
