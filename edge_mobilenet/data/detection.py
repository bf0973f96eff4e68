"""COCO-format detection sets: a seeded synthetic set built from bundled images, and a validating reader.

The synthetic set (:func:`write_detection_set`) needs nothing downloaded: scikit-learn's 8x8 handwritten
digits (10 categories, COCO ids 1..10 named "0".."9") are upscaled and pasted, several per image, at
random positions and scales onto random crops of scikit-learn's two sample photographs (china.jpg,
flower.jpg). Each digit is drawn as light ink on a darkened patch of the photo, and its box is that patch:
tight, visible at every scale, so a small detector can learn it. Later digits may cover part of earlier
ones (at most ``max_occluded`` of an earlier box). Train images use digits from the training part of a
stratified split of the 1,797 scans, val images the held-out part. Same settings and seed, same bytes.

Layout (each split is a COCO folder on its own, so ``load_coco(DIR / "val")`` reads one)::

    DIR/manifest.json            source, licence, count, seed, size, layout, per-split counts, sha256
    DIR/train/instances.json     COCO: images, annotations (bbox [x, y, w, h] in pixels), categories
    DIR/train/images/000001.png
    DIR/val/instances.json
    DIR/val/images/000401.png

Image ids run 1..count over both splits (train first). Besides COCO's keys, an image entry records its
background (``"source": {"photo": "china.jpg", "crop": [x, y, w, h]}``, see :func:`crop_background`) and
an annotation the scan it shows (``"digit_index"`` into scikit-learn's digits).

:func:`load_coco` reads and validates any COCO-format folder (or annotation file): each bad entry is one
EdgeError line naming the file and the entry, or, with ``skip_bad``, skipped and counted.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_mobilenet.contracts.detection_metrics import GroundTruthImage
from edge_mobilenet.contracts.records import Where, check, get
from edge_mobilenet.errors import EdgeError

ANNOTATION_FILE = "instances.json"
IMAGE_FOLDER = "images"
SPLITS = ("train", "val")
GENERATOR = "edge-bench detection-set"
PHOTOS = ("china.jpg", "flower.jpg")
IMAGE_FORMATS = {"png": ("PNG", ".png", {}), "jpeg": ("JPEG", ".jpg", {"quality": 95})}
DEFAULT_COUNT = 500
DEFAULT_SIZE = 128
SIZE_RANGE_PX = (32, 1024)
# A box may overhang its image by this much (rounding in real annotation files); it is clipped.
OVERHANG_TOLERANCE_PX = 1.0
SOURCE = ("synthetic: scikit-learn bundled digits (UCI Optical Recognition of Handwritten Digits) pasted "
          "onto random crops of scikit-learn's sample photographs china.jpg and flower.jpg")
LICENCE = ("digits: CC BY 4.0 (UCI ML Repository); china.jpg (danielbuechele) and flower.jpg (vultilion): "
           "CC BY 2.0, via Flickr (see sklearn/datasets/images/README.txt); scikit-learn BSD-3-Clause")


@dataclass(frozen=True)
class SyntheticLayout:
    """How the synthetic images are drawn (recorded in the manifest). Ranges are (low, high)."""

    objects_per_image: tuple[int, int] = (1, 4)
    object_side_fraction: tuple[float, float] = (0.14, 0.40)  # of the image side, log-uniform
    min_object_px: int = 8
    aspect_ratio: tuple[float, float] = (0.8, 1.25)  # width / height
    max_occluded: float = 0.2  # share of an earlier box a later digit may cover
    placement_attempts: int = 30
    crop_fraction: tuple[float, float] = (0.35, 1.0)  # background crop side / photo's short side
    patch_brightness: tuple[float, float] = (0.2, 0.45)  # the photo under a digit, darkened by this factor
    ink_level: tuple[float, float] = (190.0, 255.0)  # per channel


@dataclass(frozen=True)
class DetectionSetSettings:
    """What :func:`write_detection_set` writes; validated on construction (one-line EdgeError)."""

    count: int = DEFAULT_COUNT
    seed: int = 0
    size: int = DEFAULT_SIZE
    val_fraction: float = 0.2
    image_format: str = "png"
    layout: SyntheticLayout = field(default_factory=SyntheticLayout)

    def __post_init__(self):
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 2:
            raise EdgeError(f"a detection set needs count >= 2 (at least one image per split). "
                            f"Received count={self.count!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise EdgeError(f"seed must be an integer >= 0. Received seed={self.seed!r}")
        low, high = SIZE_RANGE_PX
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not low <= self.size <= high:
            raise EdgeError(f"size must be an integer number of pixels in {low}..{high}. Received size={self.size!r}")
        if not 0 < self.val_fraction < 1:
            raise EdgeError(f"val_fraction must be in (0, 1). Received val_fraction={self.val_fraction!r}")
        if self.image_format not in IMAGE_FORMATS:
            raise EdgeError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}. "
                            f"Received image_format={self.image_format!r}")

    @property
    def val_count(self) -> int:
        return min(self.count - 1, max(1, round(self.count * self.val_fraction)))


# -- the validated record ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CocoCategory:
    id: int
    name: str


@dataclass(frozen=True, eq=False)
class CocoImage:
    """One image and its boxes: float32 [K, 4] normalised ymin, xmin, ymax, xmax; int64 [K] class indices
    (position in :attr:`CocoSet.categories`); bool [K] crowd flags. ``width``/``height`` are the stored
    pixel grid (COCO's convention: no EXIF rotation)."""

    image_id: int
    file_name: str
    path: str
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray
    crowd: np.ndarray


@dataclass(frozen=True)
class SkippedEntries:
    """Entries ``load_coco(skip_bad=True)`` left out, counted per kind, with one line each."""

    images: int = 0
    annotations: int = 0
    categories: int = 0
    problems: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.images + self.annotations + self.categories

    def to_json(self) -> dict:
        return {"images": self.images, "annotations": self.annotations, "categories": self.categories,
                "problems": list(self.problems)}


@dataclass(frozen=True, eq=False)
class CocoSet:
    """A validated COCO-format set; ``categories`` are sorted by id, and a class index is a position there."""

    annotation_file: str
    image_root: str
    images: tuple[CocoImage, ...]
    categories: tuple[CocoCategory, ...]
    skipped: SkippedEntries

    @property
    def class_names(self) -> list[str]:
        return [category.name for category in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def num_boxes(self) -> int:
        return sum(len(image.boxes) for image in self.images)

    def ground_truth(self) -> list[GroundTruthImage]:
        """The boxes as :func:`edge_mobilenet.contracts.detection_metrics.coco_map` takes them."""
        return [GroundTruthImage(i.width, i.height, i.boxes, i.classes, i.crowd) for i in self.images]


# -- reading and validating -----------------------------------------------------------------------------

def load_coco(folder_or_json: str | Path, *, skip_bad: bool = False,
              image_root: str | Path | None = None) -> CocoSet:
    """Read and validate a COCO-format set: a folder holding ``instances.json`` (images in its ``images/``
    sub-folder, else beside it), or an annotation file (images likewise relative to its folder, or in
    ``image_root``).

    Checked: the JSON itself, its ``images``/``annotations``/``categories`` lists, each entry's keys and
    types, duplicate ids, category ids not in ``categories``, images missing on disk or of another size
    than declared, boxes of zero or negative size or outside their image (more than
    ``OVERHANG_TOLERANCE_PX``). A bad entry is one EdgeError line (``FILE: annotations[12] (id 40, image 7):
    box [30, 5, 0, 9] has zero area``); with ``skip_bad`` it is left out (an image with its boxes) and
    counted in ``skipped``. A file that can't be read as COCO at all is an error either way.
    """
    from edge_mobilenet.fileio import read_json

    json_path, root = _locate(Path(folder_or_json), image_root)
    shown = str(json_path)
    data = read_json(json_path, "COCO annotation file")
    where = Where(shown)
    data = check(data, where, (dict,))
    raw = {key: get(data, key, where, (list,)) for key in ("images", "annotations", "categories")}
    entries = _Entries(shown, skip_bad)
    categories = entries.categories(raw["categories"])
    images = entries.images(raw["images"], root)
    boxes = entries.annotations(raw["annotations"], images, categories)
    if not categories:
        raise EdgeError(f"{shown}: no usable categories" + entries.note())
    if not images:
        raise EdgeError(f"{shown}: no usable images" + entries.note())
    index_of = {category_id: index for index, category_id in enumerate(sorted(categories))}
    records = tuple(_image_record(image, boxes.get(image["id"], []), index_of) for image in images.values())
    ordered = tuple(CocoCategory(i, categories[i]) for i in sorted(categories))
    return CocoSet(shown, str(root), records, ordered, entries.skipped())


def _locate(path: Path, image_root) -> tuple[Path, Path]:
    """(annotation file, image folder) for a folder or an annotation file."""
    if not os.path.lexists(path):
        raise EdgeError(f"{path}: does not exist (expected a COCO folder or its {ANNOTATION_FILE})")
    if path.is_dir():
        json_path = path / ANNOTATION_FILE
        if not json_path.exists():
            splits = [s for s in SPLITS if (path / s / ANNOTATION_FILE).is_file()]
            hint = (f"; it holds the splits {', '.join(splits)}: pass {path / splits[0]}" if splits
                    else " (a COCO folder holds instances.json and its images)")
            raise EdgeError(f"{path}: no {ANNOTATION_FILE}{hint}")
    else:
        json_path = path
    base = json_path.parent
    root = Path(image_root) if image_root is not None else (
        base / IMAGE_FOLDER if (base / IMAGE_FOLDER).is_dir() else base)
    if not root.is_dir():
        raise EdgeError(f"{root}: image folder does not exist")
    return json_path, root


def _image_record(image: dict, boxes: list, index_of: dict) -> CocoImage:
    width, height = image["width"], image["height"]
    normalised = np.zeros((len(boxes), 4), np.float32)
    for row, (x, y, w, h, _, _) in enumerate(boxes):
        normalised[row] = (y / height, x / width, (y + h) / height, (x + w) / width)
    classes = np.asarray([index_of[b[4]] for b in boxes], np.int64)
    crowd = np.asarray([b[5] for b in boxes], bool)
    return CocoImage(image["id"], image["file_name"], image["path"], width, height, normalised, classes, crowd)


class _Entry:
    """Names one entry in error messages: ``FILE: annotations[12] (id 40, image 7): PROBLEM``."""

    def __init__(self, text: str):
        self.text = text

    def fail(self, problem: str) -> EdgeError:
        return EdgeError(f"{self.text}: {problem}")


class _Entries:
    """Validates entries one by one; a bad one raises, or (skip_bad) is recorded and left out."""

    def __init__(self, shown: str, skip_bad: bool):
        self.shown, self.skip_bad = shown, skip_bad
        self.counts = {"images": 0, "annotations": 0, "categories": 0}
        self.problems: list[str] = []
        self.skipped_images: set[int] = set()
        self.skipped_categories: set[int] = set()

    def bad(self, kind: str, error: EdgeError) -> None:
        if not self.skip_bad:
            raise error
        self.counts[kind] += 1
        self.problems.append(str(error))

    def note(self) -> str:
        return f" ({sum(self.counts.values())} bad entries skipped)" if self.problems else ""

    def skipped(self) -> SkippedEntries:
        return SkippedEntries(**self.counts, problems=tuple(self.problems))

    def label(self, kind: str, index: int, entry, *keys: str) -> "_Entry":
        """``FILE: images[3] (id 4)``: the entry, with the ids it carries that are integers."""
        shown = [f"{k.replace('_id', '')} {entry[k]}" for k in keys
                 if isinstance(entry, dict) and _is_int(entry.get(k))]
        return _Entry(f"{self.shown}: {kind}[{index}]" + (f" ({', '.join(shown)})" if shown else ""))

    def categories(self, raw: list) -> dict[int, str]:
        names, first = {}, {}
        for index, entry in enumerate(raw):
            where = self.label("categories", index, entry, "id")
            try:
                keyed = Where(self.shown, f"categories[{index}]")
                entry = check(entry, keyed, (dict,))
                category_id, name = get(entry, "id", keyed, (int,)), get(entry, "name", keyed, (str,))
                if category_id in first:
                    raise where.fail(f"duplicate id (also categories[{first[category_id]}])")
            except EdgeError as error:
                self.bad("categories", error)
                if isinstance(entry, dict) and _is_int(entry.get("id")) and entry["id"] not in names:
                    self.skipped_categories.add(entry["id"])
                continue
            first[category_id], names[category_id] = index, name
        return names

    def images(self, raw: list, root: Path) -> dict[int, dict]:
        images, first, files = {}, {}, {}
        for index, entry in enumerate(raw):
            where = self.label("images", index, entry, "id")
            try:
                image = _checked_image(entry, Where(self.shown, f"images[{index}]"), where, root)
                if image["id"] in first:
                    raise where.fail(f"duplicate id (also images[{first[image['id']]}])")
                if image["file_name"] in files:
                    earlier = files[image["file_name"]]
                    raise where.fail(f"file {image['file_name']} is listed twice (also images[{earlier}])")
            except EdgeError as error:
                self.bad("images", error)
                if isinstance(entry, dict) and _is_int(entry.get("id")) and entry["id"] not in images:
                    self.skipped_images.add(entry["id"])
                continue
            first[image["id"]], files[image["file_name"]], images[image["id"]] = index, index, image
        return images

    def annotations(self, raw: list, images: dict, categories: dict) -> dict[int, list]:
        boxes: dict[int, list] = {}
        seen: dict[int, int] = {}
        for index, entry in enumerate(raw):
            where = self.label("annotations", index, entry, "id", "image_id")
            try:
                box = self._annotation(entry, index, where, images, categories)
                if box[0] in seen:
                    raise where.fail(f"duplicate id (also annotations[{seen[box[0]]}])")
            except EdgeError as error:
                self.bad("annotations", error)
                continue
            seen[box[0]] = index
            boxes.setdefault(box[1], []).append(box[2:])
        return boxes

    def _annotation(self, entry, index: int, where: _Entry, images: dict, categories: dict) -> tuple:
        keyed = Where(self.shown, f"annotations[{index}]")
        entry = check(entry, keyed, (dict,))
        annotation_id = get(entry, "id", keyed, (int,))
        image_id = get(entry, "image_id", keyed, (int,))
        category_id = get(entry, "category_id", keyed, (int,))
        bbox = get(entry, "bbox", keyed, (list,))
        crowd = get(entry, "iscrowd", keyed, (int,), 0)
        if crowd not in (0, 1):
            raise where.fail(f"iscrowd must be 0 or 1, not {crowd}")
        if image_id not in images:
            raise where.fail(f"image {image_id} was skipped (a bad images entry)" if image_id in self.skipped_images
                             else f"image_id {image_id} is not in images")
        if category_id not in categories:
            raise where.fail(f"category {category_id} was skipped (a bad categories entry)"
                             if category_id in self.skipped_categories
                             else f"category_id {category_id} is not in categories ({_id_list(categories)})")
        x, y, w, h = _checked_box(bbox, keyed / "bbox", where, images[image_id])
        return annotation_id, image_id, x, y, w, h, category_id, bool(crowd)


def _checked_image(entry, keyed: Where, where: _Entry, root: Path) -> dict:
    entry = check(entry, keyed, (dict,))
    image_id = get(entry, "id", keyed, (int,))
    file_name = get(entry, "file_name", keyed, (str,))
    width, height = get(entry, "width", keyed, (int,)), get(entry, "height", keyed, (int,))
    if width < 1 or height < 1:
        raise where.fail(f"declares {width}x{height} pixels (width and height must be >= 1)")
    relative = Path(file_name)
    if not file_name or relative.is_absolute() or ".." in relative.parts:
        raise where.fail(f"file_name {file_name!r} is not a path inside the image folder {root}")
    path = root / relative
    stored = _stored_size(path, where)
    if stored != (width, height):
        raise where.fail(f"declares {width}x{height} pixels but {file_name} is {stored[0]}x{stored[1]}")
    return {"id": image_id, "file_name": file_name, "path": str(path), "width": width, "height": height}


def _stored_size(path: Path, where: _Entry) -> tuple[int, int]:
    """(width, height) from the image's header (no pixel data is decoded)."""
    from PIL import Image, UnidentifiedImageError

    from edge_mobilenet.data.images import _file_problem

    problem = _file_problem(path, "an image file")
    if problem:
        raise where.fail(f"file {path.name}: {problem}" if problem != "does not exist"
                         else f"file {path} does not exist")
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise where.fail(f"file {path.name} is not a readable image ({str(error).splitlines()[0][:80]})") from None


def _checked_box(bbox: list, keyed: Where, where: _Entry, image: dict) -> tuple[float, float, float, float]:
    """``bbox`` [x, y, w, h] checked against its image; an overhang within the tolerance is clipped."""
    if len(bbox) != 4:
        raise keyed.fail(f"must be [x, y, width, height], not {len(bbox)} numbers")
    x, y, w, h = (float(check(v, keyed / i, (float,))) for i, v in enumerate(bbox))
    shown = "[" + ", ".join(_number(v) for v in bbox) + "]"
    if w == 0 or h == 0:
        raise where.fail(f"box {shown} has zero area")
    if w < 0 or h < 0:
        raise where.fail(f"box {shown} has a negative {'width' if w < 0 else 'height'}")
    width, height, slack = image["width"], image["height"], OVERHANG_TOLERANCE_PX
    if x < -slack or y < -slack or x + w > width + slack or y + h > height + slack:
        raise where.fail(f"box {shown} lies outside the {width}x{height} image (x {_number(x)}..{_number(x + w)}, "
                         f"y {_number(y)}..{_number(y + h)})")
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 <= x0 or y1 <= y0:
        raise where.fail(f"box {shown} has zero area inside the {width}x{height} image")
    return x0, y0, x1 - x0, y1 - y0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _id_list(ids) -> str:
    ordered = sorted(ids)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{ordered[0]}..{ordered[-1]}"
    return ", ".join(map(str, ordered[:12])) + (", ..." if len(ordered) > 12 else "")


# -- writing the synthetic set ------------------------------------------------------------------------

def write_detection_set(folder: str | Path, count: int = DEFAULT_COUNT, seed: int = 0, size: int = DEFAULT_SIZE,
                        *, val_fraction: float = 0.2, image_format: str = "png",
                        progress: bool = False) -> dict:
    """Write the synthetic COCO-format set (module doc) into ``folder``; returns its manifest.

    The set is built in a hidden folder beside ``folder`` and moved into place whole, so ``folder`` never
    holds half a set. ``folder`` must be new, empty or a set this function wrote before (it is replaced);
    anything else is refused. ``size`` is the side of the square images in pixels.
    """
    settings = DetectionSetSettings(count, seed, size, val_fraction, image_format)
    folder = Path(folder)
    _check_target(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    sources = _Sources.load(settings)
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        splits = _write_splits(staging, settings, sources, progress)
        manifest = _manifest(folder.name, settings, splits, staging)
        from edge_mobilenet.fileio import write_json_atomic

        write_json_atomic(staging / "manifest.json", manifest)
        _move_into_place(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _check_target(folder: Path) -> None:
    """EdgeError unless ``folder`` is new, empty or a previous detection set (and nothing else)."""
    if not os.path.lexists(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        raise EdgeError(f"{folder}: exists and is not a folder; choose a new or empty folder")
    try:
        names = sorted(entry.name for entry in folder.iterdir())
    except OSError as error:
        raise EdgeError(f"{folder}: cannot list the folder ({error.strerror or error})") from None
    if not names:
        return
    if not _is_detection_set(folder):
        raise EdgeError(f"{folder}: not empty and not a detection set written by {GENERATOR} "
                        "(no such manifest.json); choose a new or empty folder")
    others = [name for name in names if name not in ("manifest.json", *SPLITS)]
    if others:
        raise EdgeError(f"{folder}: a detection set with other files in it ({', '.join(others[:3])}"
                        f"{', ...' if len(others) > 3 else ''}); not replacing it")


def _is_detection_set(folder: Path) -> bool:
    from edge_mobilenet.fileio import read_json

    if not (folder / "manifest.json").is_file():
        return False
    try:
        manifest = read_json(folder / "manifest.json", "detection set manifest")
    except EdgeError:
        return False
    return isinstance(manifest, dict) and manifest.get("generated_by") == GENERATOR


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename ``staging`` onto ``folder``; a previous set there is moved aside first, then removed."""
    from edge_mobilenet.fileio import signals_deferred

    old = None
    with signals_deferred():
        if os.path.lexists(folder):
            old = folder.parent / f".{folder.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(folder, old)
        os.rename(staging, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True, eq=False)
class _Sources:
    """The bundled images: digit scans (0..255 grey), their labels, per-split pools, the photographs."""

    digits: np.ndarray
    labels: np.ndarray
    pools: dict
    photos: dict

    @classmethod
    def load(cls, settings: DetectionSetSettings) -> "_Sources":
        from sklearn.datasets import load_digits as sklearn_digits

        from edge_mobilenet.data.images import stratified_split

        digits = sklearn_digits()
        train_pool, val_pool = stratified_split(digits.target, settings.val_fraction, settings.seed)
        scans = (digits.images * (255.0 / 16.0)).astype(np.uint8)
        return cls(scans, digits.target.astype(np.int64), {"train": np.sort(train_pool), "val": val_pool},
                   {name: sample_photo(name) for name in PHOTOS})


def sample_photo(name: str) -> np.ndarray:
    """One of scikit-learn's bundled sample photographs (``china.jpg``, ``flower.jpg``) as uint8 RGB."""
    from sklearn.datasets import load_sample_image

    if name not in PHOTOS:
        raise EdgeError(f"photo must be one of {', '.join(PHOTOS)}. Received photo={name!r}")
    return np.asarray(load_sample_image(name), dtype=np.uint8)


def crop_background(photo: np.ndarray, crop_xywh, size: int) -> np.ndarray:
    """The ``crop_xywh`` region of ``photo`` resized (bilinear) to ``size`` x ``size``: an image's
    background before its digits were drawn (the ``source`` entry of each image in the set)."""
    from PIL import Image

    x, y, w, h = (int(v) for v in crop_xywh)
    region = Image.fromarray(np.ascontiguousarray(photo[y:y + h, x:x + w]))
    return np.asarray(region.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _write_splits(staging: Path, settings: DetectionSetSettings, sources: _Sources, progress: bool) -> dict:
    from tqdm import tqdm

    train_count = settings.count - settings.val_count
    ranges = {"train": range(train_count), "val": range(train_count, settings.count)}
    summary, first_annotation_id = {}, 1
    with tqdm(total=settings.count, desc="detection set", unit="img", disable=not progress, leave=False) as bar:
        for split in SPLITS:
            summary[split] = _write_split(staging / split, split, ranges[split], first_annotation_id,
                                          settings, sources, bar)
            first_annotation_id += summary[split]["annotations"]
    return summary


def _write_split(folder: Path, split: str, indices: range, first_annotation_id: int,
                 settings: DetectionSetSettings, sources: _Sources, bar) -> dict:
    """One split's images and instances.json; annotation ids start at ``first_annotation_id``."""
    from edge_mobilenet.data.calibration import content_hash
    from edge_mobilenet.fileio import write_bytes_atomic, write_json_atomic

    pil_format, suffix, options = IMAGE_FORMATS[settings.image_format]
    (folder / IMAGE_FOLDER).mkdir(parents=True)
    images, annotations, files = [], [], []
    for index in indices:
        pixels, source, objects = _draw_image(index, split, settings, sources)
        image_id = index + 1
        file_name = f"{image_id:06d}{suffix}"
        files.append(folder / IMAGE_FOLDER / file_name)
        write_bytes_atomic(files[-1], _encoded(pixels, pil_format, options))
        images.append({"id": image_id, "file_name": file_name, "width": settings.size,
                       "height": settings.size, "source": source})
        for x, y, w, h, digit in objects:
            annotations.append({"id": first_annotation_id + len(annotations), "image_id": image_id,
                                "category_id": int(sources.labels[digit]) + 1, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0, "digit_index": int(digit)})
        bar.update(1)
    categories = [{"id": digit + 1, "name": str(digit), "supercategory": "digit"} for digit in range(10)]
    write_json_atomic(folder / ANNOTATION_FILE, {
        "info": {"description": f"{SOURCE}; split {split}", "version": "1"},
        "licenses": [], "images": images, "annotations": annotations, "categories": categories})
    files.append(folder / ANNOTATION_FILE)
    return {"images": len(images), "annotations": len(annotations), "sha256": content_hash(sorted(files), folder)}


def _encoded(pixels: np.ndarray, pil_format: str, options: dict) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _draw_image(index: int, split: str, settings: DetectionSetSettings, sources: _Sources):
    """(uint8 [size, size, 3], background source, [(x, y, w, h, digit_index)]) for image ``index``.

    Each image has its own generator seeded by (seed, index): image k is the same whatever the count.
    """
    layout, size = settings.layout, settings.size
    rng = np.random.default_rng([settings.seed, index])
    photo_name = PHOTOS[int(rng.integers(len(PHOTOS)))]
    photo = sources.photos[photo_name]
    side = int(round(min(photo.shape[:2]) * rng.uniform(*layout.crop_fraction)))
    crop = [int(rng.integers(photo.shape[1] - side + 1)), int(rng.integers(photo.shape[0] - side + 1)), side, side]
    canvas = crop_background(photo, crop, size).astype(np.float64)
    objects = []
    for _ in range(int(rng.integers(layout.objects_per_image[0], layout.objects_per_image[1] + 1))):
        box = _place(rng, [o[:4] for o in objects], layout, size)
        if box is None:
            continue
        digit = int(rng.choice(sources.pools[split]))
        _paste(canvas, box, sources.digits[digit], rng, layout)
        objects.append((*box, digit))
    pixels = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return pixels, {"photo": photo_name, "crop": crop}, objects


def _place(rng, earlier: list, layout: SyntheticLayout, size: int):
    """A box (x, y, w, h) inside the image covering at most ``max_occluded`` of each earlier box, or None."""
    low, high = (max(layout.min_object_px, f * size) for f in layout.object_side_fraction)
    for _ in range(layout.placement_attempts):
        side = math.exp(rng.uniform(math.log(low), math.log(max(low, high))))
        aspect = math.sqrt(rng.uniform(*layout.aspect_ratio))
        w = int(min(size, max(layout.min_object_px, round(side * aspect))))
        h = int(min(size, max(layout.min_object_px, round(side / aspect))))
        x, y = int(rng.integers(size - w + 1)), int(rng.integers(size - h + 1))
        if all(_overlap((x, y, w, h), other) <= layout.max_occluded * other[2] * other[3] for other in earlier):
            return x, y, w, h
    return None


def _overlap(a, b) -> int:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0, width) * max(0, height)


def _paste(canvas: np.ndarray, box, scan: np.ndarray, rng, layout: SyntheticLayout) -> None:
    """Light ink (the upscaled scan as alpha) over a darkened patch of the canvas, in place."""
    from PIL import Image

    x, y, w, h = box
    ink = np.asarray(Image.fromarray(scan, mode="L").resize((w, h), Image.BILINEAR), np.float64)[..., None] / 255.0
    colour = rng.uniform(*layout.ink_level, size=3)
    patch = canvas[y:y + h, x:x + w] * rng.uniform(*layout.patch_brightness)
    canvas[y:y + h, x:x + w] = patch * (1.0 - ink) + colour * ink


def _manifest(name: str, settings: DetectionSetSettings, splits: dict, staging: Path) -> dict:
    from importlib.metadata import version

    from edge_mobilenet.data.calibration import content_hash

    files = sorted(p for split in SPLITS for p in (staging / split).rglob("*") if p.is_file())
    return {
        "name": name,
        "task": "detection",
        "format": "coco",
        "source": SOURCE,
        "licence": LICENCE,
        "count": settings.count,
        "seed": settings.seed,
        "size": [settings.size, settings.size],
        "image_format": settings.image_format,
        "val_fraction": settings.val_fraction,
        "categories": [str(d) for d in range(10)],
        "splits": splits,
        "layout": asdict(settings.layout),
        "sha256": content_hash(files, staging),
        "tool_versions": {p: version(p) for p in ("numpy", "pillow", "scikit-learn")},
        "generated_by": GENERATOR,
    }
