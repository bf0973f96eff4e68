"""Calibration sets: a folder of images, a sample count, a seed, and a content hash of what was used.

A set is any folder of JPEG/PNG/BMP images (flat, class sub-folders, or labels.csv + images/). The
images chosen are ``count`` files drawn by ``seed`` from the sorted file list; the hash covers the
chosen files' names and bytes, so the manifest says exactly which images calibrated an artifact.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_mobilenet.contracts.records import CalibrationRecord
from edge_mobilenet.data.images import IMAGE_SUFFIXES, ImageSet, decode_image, list_images
from edge_mobilenet.data.preprocess import Preprocessing
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import read_json


@dataclass(frozen=True)
class CalibrationSource:
    folder: str
    count: int = 200
    seed: int = 0
    skip_corrupt: bool = False


@dataclass
class CalibrationSet:
    """Chosen images (uint8) plus provenance for the manifest."""

    source: CalibrationSource
    images: ImageSet
    sha256: str
    set_manifest: dict

    def inputs(self, preprocessing: Preprocessing) -> np.ndarray:
        return preprocessing.apply(self.images.pixels)

    def record(self) -> CalibrationRecord:
        return CalibrationRecord(self.source.folder, len(self.images), self.source.seed, self.sha256,
                                 self.source.count, tuple(self.images.skipped), self.set_manifest.get("source"),
                                 self.set_manifest.get("licence"))


def _candidate_files(folder: Path) -> list[Path]:
    if not folder.exists():
        raise EdgeError(f"{folder}: calibration folder does not exist")
    if not folder.is_dir():
        raise EdgeError(f"{folder}: calibration path is not a folder")
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    files = list_images(image_dir)
    for sub in sorted(p for p in image_dir.iterdir() if p.is_dir() and p != folder / "images"):
        files += list_images(sub)
    if not files:
        raise EdgeError(f"{folder}: calibration folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(files)


def choose_files(source: CalibrationSource) -> list[Path]:
    """``count`` files drawn by ``seed`` (all of them if the folder holds fewer)."""
    if source.count < 1:
        raise EdgeError(f"calibration count must be >= 1. Received count={source.count}")
    files = _candidate_files(Path(source.folder))
    order = np.random.default_rng(source.seed).permutation(len(files))
    return sorted(files[i] for i in order[:source.count])


def content_hash(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.fsencode(path.relative_to(root)))  # non-UTF-8 names hash too
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load_calibration(source: CalibrationSource, size: tuple[int, int], preprocessing: Preprocessing,
                     *, progress: bool = False, exclude: set[str] = frozenset()) -> CalibrationSet:
    """Decode the chosen images at ``size`` with the model's crop; corrupt files fail or are skipped."""
    from tqdm import tqdm

    folder = Path(source.folder)
    files = [f for f in choose_files(source) if str(f) not in exclude]
    pixels, kept, skipped = [], [], []
    for path in tqdm(files, desc="calibration images", unit="img", disable=not progress, leave=False):
        try:
            pixels.append(decode_image(path, size, preprocessing.crop_fraction))
            kept.append(path)
        except EdgeError as error:
            if not source.skip_corrupt:
                raise EdgeError(f"{error} (use --skip-corrupt to skip and count such files)") from None
            skipped.append(str(path))
    if not pixels:
        raise EdgeError(f"{folder}: none of the {len(files)} calibration images could be decoded")
    images = ImageSet(np.stack(pixels), np.full(len(kept), -1, dtype=np.int64), [],
                      [str(p) for p in kept], skipped)
    manifest_path = folder / "manifest.json"
    set_manifest = read_json(manifest_path, "calibration set manifest") if manifest_path.is_file() else {}
    if not isinstance(set_manifest, dict):
        raise EdgeError(f"{manifest_path}: not a calibration set manifest (expected an object)")
    return CalibrationSet(source, images, content_hash(kept, folder), set_manifest)


def write_digits_set(folder: str | Path, count: int = 200, seed: int = 0) -> dict:
    """Write the default set: ``count`` scikit-learn digits from the default training split, as PNGs.

    The images are the original 8x8 greyscale scans (the loader resizes them like training does).
    Only training-split images are used, so the validation split stays held out for accuracy.
    """
    from PIL import Image
    from sklearn.datasets import load_digits as sklearn_digits

    from edge_mobilenet.data.images import stratified_split
    from edge_mobilenet.fileio import write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = sklearn_digits()
    train_idx, _ = stratified_split(digits.target, 0.2, seed)
    chosen = sorted(np.random.default_rng(seed).choice(train_idx, size=count, replace=False))
    files = []
    for index in chosen:
        path = folder / f"digit_{index:04d}_label{digits.target[index]}.png"
        Image.fromarray((digits.images[index] * (255.0 / 16.0)).astype(np.uint8), mode="L").save(path)
        files.append(path)
    manifest = {
        "name": folder.name,
        "source": "scikit-learn bundled digits (UCI Optical Recognition of Handwritten Digits), "
                  f"training split of validation_split=0.2 seed={seed}",
        "licence": "CC BY 4.0 (UCI ML Repository); scikit-learn BSD-3-Clause",
        "count": len(files),
        "sha256": content_hash(files, folder),
        "generated_by": "edge-bench calibration-set digits",
    }
    write_json_atomic(folder / "manifest.json", manifest)
    return manifest
