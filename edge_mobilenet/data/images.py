"""Image folders and bundled datasets as uint8 RGB arrays at a model's input size.

Three layouts are read:
  * a class folder: ``ROOT/<class>/*.jpg`` (one sub-folder per class, sorted names = class indices);
  * an ImageNet-style labelled folder: ``ROOT/labels.csv`` with ``file,class_index`` columns and the
    images in ``ROOT/images/`` (or ROOT itself), e.g. ``../shared/data/imagenet-sample``;
  * a flat folder of images without labels (calibration sets).
Decoding honours EXIF orientation and converts greyscale, RGBA and palette images to RGB.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_mobilenet.errors import EdgeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Files a dataset folder may hold besides images.
IGNORED_NAMES = ("manifest.json", "labels.csv", "readme", "readme.md", "license", "licence",
                 "license.txt", "licence.txt", "notice")


@dataclass
class ImageSet:
    """Images as uint8 [N, H, W, 3], their labels (or -1) and provenance."""

    pixels: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    files: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pixels)

    def subset(self, indices) -> "ImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(self.pixels[indices], self.labels[indices], self.class_names,
                        [self.files[i] for i in indices])


def decode_image(path: Path, size: tuple[int, int], crop_fraction: float = 0.875) -> np.ndarray:
    """Decode, EXIF-rotate, convert to RGB, resize the short side and centre-crop to ``size``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image)
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise EdgeError(f"{path}: not a decodable image ({_short(error)})") from None
    height, width = size
    scale = max(height, width) / crop_fraction / min(image.size)
    resized = image.resize((max(width, round(image.size[0] * scale)),
                            max(height, round(image.size[1] * scale))), Image.BILINEAR)
    left = (resized.size[0] - width) // 2
    top = (resized.size[1] - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.uint8)


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__


def _is_ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in IGNORED_NAMES


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``; any other file (besides manifests, licences) is an error."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_dir() or _is_ignored(path):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise EdgeError(f"{path}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
        files.append(path)
    return files


def _require_folder(root: Path) -> None:
    if not root.exists():
        raise EdgeError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise EdgeError(f"{root}: not a folder")


def _decode_all(files: list[Path], size, crop_fraction, skip_corrupt: bool, progress: bool,
                what: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    from tqdm import tqdm

    kept, kept_index, skipped = [], [], []
    for index, path in enumerate(tqdm(files, desc=f"decoding {what}", unit="img",
                                      disable=not progress, leave=False)):
        try:
            kept.append(decode_image(path, size, crop_fraction))
            kept_index.append(index)
        except EdgeError:
            if not skip_corrupt:
                raise
            skipped.append(str(path))
    return kept, kept_index, skipped


def load_folder(root: str | Path, size: tuple[int, int], *, crop_fraction: float = 0.875,
                skip_corrupt: bool = False, progress: bool = False,
                require_labels: bool = False) -> ImageSet:
    """Load any of the three layouts (see module doc); labels are -1 for a flat folder."""
    root = Path(root)
    _require_folder(root)
    if (root / "labels.csv").is_file():
        files, labels, names = _labels_csv(root)
    else:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if class_dirs:
            files, labels = [], []
            for index, class_dir in enumerate(class_dirs):
                class_files = list_images(class_dir)
                if not class_files:
                    raise EdgeError(f"{class_dir}: class folder holds no images")
                files += class_files
                labels += [index] * len(class_files)
            names = [p.name for p in class_dirs]
        else:
            files = list_images(root)
            labels, names = [-1] * len(files), []
    if not files:
        raise EdgeError(f"{root}: no images found (expected {', '.join(IMAGE_SUFFIXES)})")
    if require_labels and not names:
        raise EdgeError(f"{root}: no labels (expected one sub-folder per class or a labels.csv)")
    pixels, kept, skipped = _decode_all(files, size, crop_fraction, skip_corrupt, progress, root.name)
    if not pixels:
        raise EdgeError(f"{root}: none of the {len(files)} images could be decoded")
    return ImageSet(np.stack(pixels), np.asarray([labels[i] for i in kept], dtype=np.int64), names,
                    [str(files[i]) for i in kept], skipped)


def _labels_csv(root: Path) -> tuple[list[Path], list[int], list[str]]:
    table = root / "labels.csv"
    image_dir = root / "images" if (root / "images").is_dir() else root
    files, labels, names = [], [], {}
    with open(table, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "class_index"} <= set(reader.fieldnames):
            raise EdgeError(f"{table}: needs the columns file,class_index (found {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            try:
                label = int(row["class_index"])
            except (TypeError, ValueError):
                raise EdgeError(f"{table}:{line}: class_index {row['class_index']!r} is not an integer") from None
            path = image_dir / row["file"]
            if not path.is_file():
                raise EdgeError(f"{table}:{line}: image {path} does not exist")
            files.append(path)
            labels.append(label)
            names[label] = row.get("name") or str(label)
    if not files:
        return [], [], []
    class_names = [names.get(i, str(i)) for i in range(max(names) + 1)]
    return files, labels, class_names


def load_digits(size: tuple[int, int]) -> ImageSet:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images), upscaled to RGB ``size``."""
    from PIL import Image
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    pixels = []
    for image in digits.images:
        grey = Image.fromarray((image * (255.0 / 16.0)).astype(np.uint8), mode="L")
        pixels.append(np.asarray(grey.resize(size[::-1], Image.BILINEAR).convert("RGB")))
    files = [f"sklearn-digits#{i}" for i in range(len(pixels))]
    return ImageSet(np.stack(pixels), digits.target.astype(np.int64),
                    [str(i) for i in range(10)], files)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out) with ``fraction`` of each class held out, shuffled by ``seed``."""
    if not 0 < fraction < 1:
        raise EdgeError(f"validation split must be in (0, 1). Received {fraction}")
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = max(1, int(round(len(members) * fraction))) if len(members) > 1 else 0
        held.extend(members[:count])
        train.extend(members[count:])
    return rng.permutation(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(held, dtype=np.int64))
