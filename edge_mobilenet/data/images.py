"""Image folders and bundled datasets as uint8 RGB arrays at a model's input size.

Three layouts are read:
  * a class folder: ``ROOT/<class>/*.jpg`` (one sub-folder per class, sorted names = class indices);
  * an ImageNet-style labelled folder: ``ROOT/labels.csv`` with ``file,class_index`` columns and the
    images in ``ROOT/images/`` (or ROOT itself), e.g. ``../shared/data/imagenet-sample``;
  * a flat folder of images without labels (calibration sets).
Decoding honours EXIF orientation and converts greyscale, RGBA and palette images to RGB.

Bad inputs raise :class:`EdgeError` with one line naming the file: decompression bombs (a header
declaring more than PIL's ``MAX_IMAGE_PIXELS``), dangling or looping symlinks, folders, FIFOs and
devices where an image is expected, names too long for the OS, and labels.csv rows whose class_index
is not a valid class. Names that are not valid UTF-8 (or hold control characters) are shown in
``repr()`` form so the message always prints.
"""

from __future__ import annotations

import csv
import errno
import os
import stat
import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_mobilenet.errors import EdgeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Files a dataset folder may hold besides images.
IGNORED_NAMES = ("manifest.json", "labels.csv", "readme", "readme.md", "license", "licence",
                 "license.txt", "licence.txt", "notice")
# A labels.csv class_index at or above this (when the class count is not given) is a typo, not a class.
MAX_CLASSES = 100_000
# Serialises the brief lift of PIL's own bomb check around Image.open (see _open_header).
_PIL_LIMIT_LOCK = threading.Lock()


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
    """Decode, EXIF-rotate, convert to RGB, resize the short side and centre-crop to ``size``.

    The file is checked first (a regular file, not a broken symlink) and its header next: more
    pixels than PIL's ``MAX_IMAGE_PIXELS`` (before or after the resize) is an error, raised before
    any pixel data is decoded. PIL's DecompressionBombWarning is never shown.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    problem = _file_problem(path, "an image file")
    if problem:
        raise EdgeError(f"{_shown(path)}: {problem}")
    errors = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
              struct.error, Image.DecompressionBombError)  # what PIL raises on malformed files
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image, limit = _open_header(path)
            with image:
                _check_pixels(path, image.size, size, crop_fraction, limit)
                image.load()
                image = ImageOps.exif_transpose(image)
                if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                    image = image.convert("RGBA")
                    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(background, image)
                image = image.convert("RGB")
    except errors as error:
        raise EdgeError(f"{_shown(path)}: not a decodable image ({_short(error)})") from None
    height, width = size
    resized = image.resize(_resized_size(image.size, size, crop_fraction), Image.BILINEAR)
    left = (resized.size[0] - width) // 2
    top = (resized.size[1] - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.uint8)


def _open_header(path: Path):
    """``(Image.open(path), limit)``: the header only (lazy), with PIL's own bomb check lifted.

    PIL raises DecompressionBombError inside Image.open above twice its limit, which hides the
    declared size; lifting it (under a lock, restored at once) lets ``_check_pixels`` report it.
    ``limit`` is PIL's ``MAX_IMAGE_PIXELS`` as the user left it (None: no limit).
    """
    from PIL import Image

    with _PIL_LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path), limit
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _resized_size(image_size: tuple[int, int], size: tuple[int, int],
                  crop_fraction: float) -> tuple[int, int]:
    """(width, height) of ``image_size`` with its short side resized for a ``size`` centre crop."""
    height, width = size
    scale = max(height, width) / crop_fraction / min(image_size)
    return max(width, round(image_size[0] * scale)), max(height, round(image_size[1] * scale))


def _check_pixels(path: Path, image_size, size, crop_fraction, limit) -> None:
    """EdgeError if a header's size is empty, or it or its resize is over ``limit`` pixels."""
    width, height = image_size
    if width < 1 or height < 1:
        raise EdgeError(f"{_shown(path)}: declares {width}x{height} pixels (an empty image)")
    if limit is not None and width * height > limit:
        raise EdgeError(f"{_shown(path)}: declares {width}x{height} pixels, over the limit {limit} "
                        "(a possible decompression bomb)")
    resized = _resized_size(image_size, size, crop_fraction)
    if limit is not None and resized[0] * resized[1] > limit:
        raise EdgeError(f"{_shown(path)}: declares {width}x{height} pixels, too elongated to resize: "
                        f"{resized[0]}x{resized[1]} is over the limit {limit}")


def _shown(path) -> str:
    """``path`` as one printable line: ``repr()`` form if it holds undecodable bytes or control characters."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    if len(text) > 300:  # e.g. a name the OS refused as too long
        text = f"{text[:200]}...{text[-60:]} ({len(text)} characters)"
    return text if text.isprintable() else repr(text)


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0][:120] if str(error).strip() else type(error).__name__
    return text if text.isprintable() else repr(text)[1:-1]


def _os_problem(path: Path, error: OSError | ValueError) -> str:
    """What an OSError from stat()/listdir() means for ``path``, in a few words."""
    if isinstance(error, ValueError):  # e.g. an embedded NUL in a labels.csv name
        return f"not a usable file name ({_short(error)})"
    if error.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if error.errno == errno.ENAMETOOLONG:
        return "file name too long for the operating system"
    if error.errno == errno.ENOENT and os.path.islink(path):
        try:
            target = _shown(os.readlink(path))
        except OSError:
            target = "?"
        return f"dangling symlink (its target {target} does not exist)"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "does not exist"
    return error.strerror or type(error).__name__


def _file_problem(path: Path, what: str) -> str | None:
    """Why ``path`` can't be read as ``what`` (a regular file), or None if it can."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as error:
        return _os_problem(path, error)
    if stat.S_ISDIR(mode):
        return f"is a folder, not {what}"
    if not stat.S_ISREG(mode):
        return f"not a regular file (a FIFO, socket or device), expected {what}"
    return None


def _is_dir(path: Path) -> bool:
    return os.path.isdir(path)  # unlike Path.is_dir (Python < 3.12), False on any OSError


def _entries(folder: Path) -> list[Path]:
    """Sorted entries of ``folder``; an unreadable folder is one EdgeError."""
    try:
        return sorted(folder.iterdir())
    except OSError as error:
        raise EdgeError(f"{_shown(folder)}: cannot list the folder ({_os_problem(folder, error)})") from None


def _is_ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in IGNORED_NAMES


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``; any other file (besides manifests, licences) is an error.

    Sub-folders are left out. A broken entry with an image suffix (dangling or looping symlink,
    FIFO) is kept so that decoding names the problem, and skip-corrupt can skip it.
    """
    files = []
    for path in _entries(folder):
        if _is_ignored(path) or _is_dir(path):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            problem = _file_problem(path, "an image file")
            expected = ", ".join(IMAGE_SUFFIXES)
            raise EdgeError(f"{_shown(path)}: {problem or f'not an image file (expected {expected})'}")
        files.append(path)
    return files


def _require_folder(root: Path) -> None:
    try:
        mode = os.stat(root).st_mode
    except (OSError, ValueError) as error:
        problem = _os_problem(root, error)
        raise EdgeError(f"{_shown(root)}: folder {problem}" if problem == "does not exist"
                        else f"{_shown(root)}: {problem}") from None
    if not stat.S_ISDIR(mode):
        raise EdgeError(f"{_shown(root)}: not a folder")


def _decode_all(files: list[Path], size, crop_fraction, skip_corrupt: bool, progress: bool,
                what: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    from tqdm import tqdm

    kept, kept_index, skipped = [], [], []
    for index, path in enumerate(tqdm(files, desc=f"decoding {_shown(what)}", unit="img",
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
                require_labels: bool = False, classes: int | None = None) -> ImageSet:
    """Load any of the three layouts (see module doc); labels are -1 for a flat folder.

    ``skip_corrupt`` skips (and lists in ``skipped``) images that can't be decoded: corrupt files,
    decompression bombs, broken symlinks. ``classes``, when known (e.g. a model's output count),
    bounds labels.csv class indices: each must be in ``0 .. classes - 1``.
    """
    root = Path(root)
    _require_folder(root)
    if os.path.lexists(root / "labels.csv"):
        files, labels, names = _labels_csv(root, classes)
    else:
        class_dirs = [p for p in _entries(root) if _is_dir(p) and not p.name.startswith(".")]
        if class_dirs:
            files, labels = [], []
            for index, class_dir in enumerate(class_dirs):
                class_files = list_images(class_dir)
                if not class_files:
                    raise EdgeError(f"{_shown(class_dir)}: class folder holds no images")
                files += class_files
                labels += [index] * len(class_files)
            names = [p.name for p in class_dirs]
        else:
            files = list_images(root)
            labels, names = [-1] * len(files), []
    if not files:
        raise EdgeError(f"{_shown(root)}: no images found (expected {', '.join(IMAGE_SUFFIXES)})")
    if require_labels and not names:
        raise EdgeError(f"{_shown(root)}: no labels (expected one sub-folder per class or a labels.csv)")
    pixels, kept, skipped = _decode_all(files, size, crop_fraction, skip_corrupt, progress, root.name)
    if not pixels:
        raise EdgeError(f"{_shown(root)}: none of the {len(files)} images could be decoded")
    return ImageSet(np.stack(pixels), np.asarray([labels[i] for i in kept], dtype=np.int64), names,
                    [str(files[i]) for i in kept], skipped)


def _csv_rows(table: Path):
    """Yield ``(line number, row)`` from labels.csv; unreadable or malformed text is one EdgeError."""
    shown, reader = _shown(table), None
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"file", "class_index"} <= set(reader.fieldnames):
                raise EdgeError(f"{shown}: needs the columns file,class_index (found {reader.fieldnames})")
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError:
        raise EdgeError(f"{shown}: not UTF-8 text") from None
    except csv.Error as error:
        raise EdgeError(f"{shown}:{reader.line_num + 1}: malformed CSV ({_short(error)})") from None
    except OSError as error:
        raise EdgeError(f"{shown}: cannot read ({_os_problem(table, error)})") from None


def _class_index(where: str, value: str | None, classes: int | None) -> int:
    """labels.csv's class_index cell as an int in ``0 .. classes - 1`` (``where`` is ``file:line``)."""
    if value is None:
        raise EdgeError(f"{where}: no class_index (the row has too few columns)")
    try:
        label = int(value)
    except ValueError:
        shown = repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} characters)"
        raise EdgeError(f"{where}: class_index {shown} is not an integer") from None
    if label < 0:
        raise EdgeError(f"{where}: class_index {label} is negative (class indices start at 0; "
                        "unlabelled images go in a folder without labels.csv)")
    if classes is not None and label >= classes:
        raise EdgeError(f"{where}: class_index {label} is out of range for {classes} classes "
                        f"(0..{classes - 1})")
    if label >= MAX_CLASSES:
        raise EdgeError(f"{where}: class_index {label} is out of range (over {MAX_CLASSES} classes)")
    return label


def _labels_csv(root: Path, classes: int | None = None) -> tuple[list[Path], list[int], list[str]]:
    table = root / "labels.csv"
    problem = _file_problem(table, "a CSV file")
    if problem:
        raise EdgeError(f"{_shown(table)}: {problem}")
    image_dir = root / "images" if _is_dir(root / "images") else root
    files, labels, names = [], [], {}
    for line, row in _csv_rows(table):
        where = f"{_shown(table)}:{line}"
        label = _class_index(where, row["class_index"], classes)
        if not row["file"]:
            raise EdgeError(f"{where}: the file cell is empty")
        path = image_dir / row["file"]
        problem = _file_problem(path, "an image file")
        if problem == "does not exist":
            raise EdgeError(f"{where}: image {_shown(path)} does not exist")
        if problem:
            raise EdgeError(f"{where}: image {_shown(path)}: {problem}")
        files.append(path)
        labels.append(label)
        names[label] = row.get("name") or str(label)
    if not files:
        return [], [], []
    count = classes if classes is not None else max(names) + 1
    return files, labels, [names.get(i, str(i)) for i in range(count)]


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
