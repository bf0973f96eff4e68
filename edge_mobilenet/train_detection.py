"""Training SSDLite detectors, and their host-side evaluation (COCO mAP on the val split).

Choices, as the TF Object Detection API's SSDLite configs make them:
  * matching: the argmax matcher on IoU. An anchor whose best ground-truth IoU is >= 0.5 is positive
    (that box), < 0.4 negative (background), between ignored; every ground-truth box is also forced
    onto its best anchor (``force_match_for_each_row``), so a small box never goes unmatched.
  * targets: matched boxes encoded against their anchors with the centre-size coder (10, 10, 5, 5).
  * loss: Huber (delta 1, the API's ``weighted_smooth_l1``) on the box codes of positives, plus sigmoid
    focal loss (gamma 2, alpha 0.25; RetinaNet, and the SSDLite MobileNetV3 configs) over every
    not-ignored anchor and every column, background included (one-hot targets, background = column 0);
    both summed and divided by the batch's number of positives. Focal loss rather than softmax with 3:1
    hard-negative mining: the head's class bias starts at -4.6 (a sigmoid prior of 0.01, which is what
    focal loss assumes), it needs no sort per batch and no mining ratio to tune, and the scores it trains
    are the sigmoid scores TFLite's post-process op and :mod:`runtimes.detection` decode.
  * augmentation (``augment``, on by default): each training image zoomed by a random factor in 0.75..1.33
    and shifted at random, every box kept whole inside (:func:`zoom_and_shift`), anchor targets matched
    anew per batch. Without it the model memorises the 400 training images (on the default synthetic
    set: train-split mAP@0.5 0.88, val 0.03); with it train and val agree (0.13, 0.11). No flips: they
    would mirror digits into other shapes (or other digits).
  * feature maps and length (measured on 2,000 synthetic images at 96 px, the V2 0.35 digits classifier as
    backbone): the paper's taps give 204 anchors and only 34% of the boxes (sides 0.14-0.40 of the
    image) an anchor of IoU >= 0.5; the stride-8 map (``stride8_map``, default) 744 anchors and 78%.
    15 epochs: val mAP@0.5 0.073 (paper taps) vs 0.098 (stride-8), the train split alike (underfitting);
    with BN momentum 0.9: 30 epochs 0.338, 60 epochs 0.759 (mAP 0.640), so 100 epochs by default
    (benchmarks/results/detection.md has the default run). About 11 s per epoch on 2 cores.

Data are numpy arrays in memory: every image resized (whole, no crop: boxes are normalised) to the
model's input and given its preprocessing. BatchNormalization uses momentum 0.9 everywhere unless
``--bn-momentum`` says otherwise, from scratch (see ``train.py``) and from a classifier's backbone alike:
the backbone's statistics come from other images at another size, and with the classifiers' 0.999 the
moving averages lag the training statistics by hundreds of steps (measured, 15 epochs on 2,000
images: val mAP@0.5 0.10 evaluated with the moving statistics, 0.19 with the batch's own).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import atomic_path, sha256_file, write_json_atomic
from edge_mobilenet.runtimes.detection import NmsSettings, decode_detections

SYNTHETIC_FOLDER = "detection-set"
AUTO_WEIGHTS = "auto"
BACKBONE_SIZE = 32  # the default classifiers' input (converters/default.toml)
BACKBONE_EPOCHS = 20  # as converters/default.toml trains them


@dataclass(frozen=True)
class MatcherSettings:
    """The API's ``argmax_matcher`` (IoU similarity)."""

    matched_threshold: float = 0.5
    unmatched_threshold: float = 0.4
    force_match_for_each_row: bool = True


@dataclass(frozen=True)
class LossSettings:
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    huber_delta: float = 1.0
    localization_weight: float = 1.0
    classification_weight: float = 1.0


@dataclass(frozen=True)
class AugmentSettings:
    """Random zoom and shift of every training image, drawn anew each epoch (:func:`zoom_and_shift`)."""

    zoom: tuple[float, float] = (0.75, 1.33)  # scale factor range (log-uniform), capped so every box fits


@dataclass(frozen=True)
class DetectionTrainSettings:
    """What :func:`train_detector` does; checked on construction (one-line EdgeError naming the option)."""

    model: str = "ssdlite_mobilenet_v2"
    alpha: float = 0.35
    size: int = 96
    data_dir: str | None = None  # a COCO folder holding train/ and val/; None: the synthetic set
    synthetic_count: int = 2000  # images of the synthetic set (train + val), when data_dir is None
    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 3e-3
    seed: int = 0
    # a classification .keras of the same backbone and alpha; "auto": the digits classifier edge-bench
    # trains (BACKBONE_SIZE px), trained first when missing; None: from scratch
    weights: str | None = AUTO_WEIGHTS
    bn_momentum: float = 0.9
    skip_bad: bool = False  # bad COCO entries skipped and counted (in the metrics file) instead of failing
    stride8_map: bool = True  # a feature map at output stride 8 (models/detection.py); False: the paper's
    output_dir: str = "build/models"
    progress: bool = True
    name: str | None = None  # output file stem; default derived from model/alpha/size
    matcher: MatcherSettings = MatcherSettings()
    loss: LossSettings = LossSettings()
    augment: AugmentSettings | None = AugmentSettings()  # None: the images as they are
    nms: NmsSettings = NmsSettings()

    def __post_init__(self):
        from edge_mobilenet.models.registry import DETECTORS, make_detector_config

        if self.model not in DETECTORS:
            raise EdgeError(f"--model {self.model!r} is not a detector; choose one of: {', '.join(DETECTORS)}")
        for option, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size),
                              ("--images", self.synthetic_count)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EdgeError(f"{option} must be an integer >= 1; received {value!r}")
        if self.synthetic_count < 2:
            raise EdgeError(f"--images must be >= 2 (one image per split); received {self.synthetic_count}")
        if self.augment is not None and not 0 < self.augment.zoom[0] <= 1 <= self.augment.zoom[1]:
            raise EdgeError("augment.zoom must be (low, high) with 0 < low <= 1 <= high; "
                            f"received {self.augment.zoom!r}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise EdgeError(f"--learning-rate must be a finite number > 0; received {self.learning_rate!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise EdgeError(f"--seed must be an integer >= 0; received {self.seed!r}")
        if not 0 < self.bn_momentum < 1:
            raise EdgeError(f"--bn-momentum must be in (0, 1); received {self.bn_momentum!r}")
        if not 0 < self.matcher.unmatched_threshold <= self.matcher.matched_threshold <= 1:
            raise EdgeError("matcher thresholds must satisfy 0 < unmatched <= matched <= 1; received "
                            f"{self.matcher.unmatched_threshold}, {self.matcher.matched_threshold}")
        if self.data_dir is not None:
            for split in ("train", "val"):
                if not (Path(self.data_dir) / split).is_dir():
                    raise EdgeError(f"--data {self.data_dir}: expected a COCO folder with train/ and val/ "
                                    f"sub-folders (no {split}/)")
        make_detector_config(self.model, alpha=self.alpha, size=self.size, classes=1)  # alpha, size

    @property
    def stem(self) -> str:
        return self.name or f"{self.model}_{self.alpha:g}_{self.size}"


# -- matching and targets (numpy) ---------------------------------------------------------------------

def iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU [K, N] of corner boxes [K, 4] with corner boxes [N, 4] (ymin, xmin, ymax, xmax)."""
    a, b = np.asarray(boxes, np.float64)[:, None, :], np.asarray(others, np.float64)[None, :, :]
    height = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    width = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = height * width
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


NEGATIVE, IGNORED = -1, -2


def match_anchors(boxes: np.ndarray, anchors: np.ndarray, matcher: MatcherSettings = MatcherSettings()) -> np.ndarray:
    """Per anchor: the index of its ground-truth box, ``NEGATIVE`` (-1) or ``IGNORED`` (-2).

    Args:
        boxes: [K, 4] ground truth (ymin, xmin, ymax, xmax), normalised.
        anchors: [N, 4] (ycenter, xcenter, h, w), normalised.
    """
    from edge_mobilenet.models.anchors import center_size_to_corners

    matches = np.full(len(anchors), NEGATIVE, np.int64)
    if len(boxes) == 0:
        return matches
    iou = iou_matrix(boxes, center_size_to_corners(anchors))
    best_box, best_iou = iou.argmax(axis=0), iou.max(axis=0)
    matches = np.where(best_iou >= matcher.matched_threshold, best_box,
                       np.where(best_iou < matcher.unmatched_threshold, NEGATIVE, IGNORED))
    if matcher.force_match_for_each_row:
        for box, anchor in enumerate(iou.argmax(axis=1)):
            matches[anchor] = box
    return matches


def anchor_targets(boxes: np.ndarray, classes: np.ndarray, anchors: np.ndarray,
                   matcher: MatcherSettings = MatcherSettings()) -> tuple[np.ndarray, np.ndarray]:
    """(box codes [N, 4] float32, class targets [N] int32): 0 background, c + 1 a box of class c, -1 ignored."""
    from edge_mobilenet.models.anchors import BOX_CODER

    matches = match_anchors(boxes, anchors, matcher)
    positive = matches >= 0
    codes = np.zeros((len(anchors), 4), np.float32)
    if positive.any():
        codes[positive] = BOX_CODER.encode(np.asarray(boxes, np.float32)[matches[positive]], anchors[positive])
    labels = np.where(matches == IGNORED, -1, 0).astype(np.int32)
    labels[positive] = np.asarray(classes, np.int64)[matches[positive]] + 1
    return codes, labels


# -- loss (TensorFlow) --------------------------------------------------------------------------------

def detection_loss(box_targets, class_targets, box_predictions, class_logits, loss: LossSettings = LossSettings()):
    """(total, localisation, classification) losses of a batch, each divided by its number of positives."""
    import tensorflow as tf

    positive = tf.cast(class_targets > 0, tf.float32)
    weight = tf.cast(class_targets >= 0, tf.float32)
    positives = tf.maximum(tf.reduce_sum(positive), 1.0)
    error = tf.abs(box_predictions - box_targets)
    delta = loss.huber_delta
    huber = tf.where(error < delta, 0.5 * error ** 2, delta * (error - 0.5 * delta))
    localization = tf.reduce_sum(tf.reduce_sum(huber, axis=-1) * positive) / positives
    onehot = tf.one_hot(tf.maximum(class_targets, 0), tf.shape(class_logits)[-1], dtype=tf.float32)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=class_logits)
    probability = tf.sigmoid(class_logits)
    p_t = onehot * probability + (1 - onehot) * (1 - probability)
    alpha_t = onehot * loss.focal_alpha + (1 - onehot) * (1 - loss.focal_alpha)
    focal = alpha_t * tf.pow(1 - p_t, loss.focal_gamma) * cross_entropy
    classification = tf.reduce_sum(tf.reduce_sum(focal, axis=-1) * weight) / positives
    total = loss.localization_weight * localization + loss.classification_weight * classification
    return total, localization, classification


# -- data -----------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DetectionArrays:
    """One split in memory: preprocessed images [M, H, W, 3] float32 and the anchor targets."""

    images: np.ndarray
    box_targets: np.ndarray
    class_targets: np.ndarray
    coco: object  # the CocoSet (ground truth for evaluation)


def dataset_folder(settings: DetectionTrainSettings) -> tuple[Path, dict]:
    """The COCO folder to train on and how to describe it; writes the synthetic set when needed (reused
    when its manifest says it has the same count, seed and size)."""
    from edge_mobilenet.data.detection import write_detection_set

    if settings.data_dir is not None:
        return Path(settings.data_dir), {"source": "folder", "path": str(settings.data_dir)}
    folder = Path(settings.output_dir) / f"{SYNTHETIC_FOLDER}-{settings.synthetic_count}-{settings.size}-s{settings.seed}"
    manifest = _existing_manifest(folder)
    if not (manifest and manifest.get("count") == settings.synthetic_count and manifest.get("seed") == settings.seed
            and manifest.get("size") == [settings.size, settings.size]):
        manifest = write_detection_set(folder, count=settings.synthetic_count, seed=settings.seed,
                                       size=settings.size)
    keys = ("source", "licence", "count", "seed", "size", "splits", "sha256", "generated_by")
    return folder, {"path": str(folder), **{key: manifest.get(key) for key in keys}}


def _existing_manifest(folder: Path) -> dict | None:
    import json

    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def load_split(folder: Path, size: int, preprocessing, anchors: np.ndarray, matcher: MatcherSettings,
               skip_bad: bool = False, coco=None) -> DetectionArrays:
    """A COCO folder as arrays: images resized to ``size`` with the model's preprocessing, and targets.
    ``coco``: the folder's CocoSet when it was read already."""
    from edge_mobilenet.data.detection import load_coco

    coco = coco if coco is not None else load_coco(folder, skip_bad=skip_bad)
    pixels = image_pixels(coco.images, size)
    targets = [anchor_targets(image.boxes[~image.crowd], image.classes[~image.crowd], anchors, matcher)
               for image in coco.images]
    return DetectionArrays(preprocessing.apply(pixels), np.stack([t[0] for t in targets]),
                           np.stack([t[1] for t in targets]), coco)


def image_pixels(images, size: int) -> np.ndarray:
    """The images of a COCO set as uint8 [M, size, size, 3]: whole, resized bilinearly (boxes stay
    normalised)."""
    from PIL import Image

    pixels = np.zeros((len(images), size, size, 3), np.uint8)
    for index, image in enumerate(images):
        with Image.open(image.path) as opened:
            rgb = opened.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            pixels[index] = np.asarray(rgb)
    return pixels


def zoom_and_shift(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                   zoom: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``image`` [H, W, C] (preprocessed) scaled by a log-uniform factor in ``zoom`` and shifted at
    random, with its boxes [K, 4]: the factor is capped and the shift drawn so that every box stays whole
    inside the image (a cut digit may read as another). Uncovered pixels are 0 (mid-grey once
    preprocessed)."""
    from scipy.ndimage import affine_transform

    if len(boxes):
        first, last = boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)  # (ymin, xmin), (ymax, xmax)
    else:
        first = last = np.full(2, 0.5)
    low, high = zoom
    high = min(high, 1.0 / max(float((last - first).max()), 1e-6))
    scale = math.exp(rng.uniform(math.log(low), math.log(high)))
    shift = rng.uniform(-first * scale, 1.0 - last * scale)  # normalised (y, x): new = old * scale + shift
    size = np.array(image.shape[:2])
    offset = (0.5 - shift * size) / scale - 0.5  # input pixel = output pixel / scale + offset
    pixels = affine_transform(image, [1 / scale, 1 / scale, 1], offset=[*offset, 0], order=1, mode="constant")
    return pixels, (boxes * scale + np.tile(shift, 2)).astype(np.float32)


def augmented_batch(split: DetectionArrays, indices: np.ndarray, anchors: np.ndarray,
                    settings: DetectionTrainSettings, rng: np.random.Generator):
    """(images, box targets, class targets) of ``indices`` after :func:`zoom_and_shift`."""
    images, box_targets, class_targets = [], [], []
    for index in indices:
        image = split.coco.images[index]
        keep = ~image.crowd
        pixels, boxes = zoom_and_shift(split.images[index], image.boxes[keep], rng, settings.augment.zoom)
        codes, labels = anchor_targets(boxes, image.classes[keep], anchors, settings.matcher)
        images.append(pixels)
        box_targets.append(codes)
        class_targets.append(labels)
    return np.stack(images), np.stack(box_targets), np.stack(class_targets)


# -- training ------------------------------------------------------------------------------------------

def backbone_weights(settings: DetectionTrainSettings) -> str | None:
    """The classification model the backbone starts from: ``settings.weights``, or with "auto" the
    digits classifier of the same family and alpha in the output folder (trained first when missing,
    ``BACKBONE_EPOCHS`` epochs at ``BACKBONE_SIZE`` px, as ``make quantize`` trains it)."""
    import sys

    from edge_mobilenet.models.registry import get_detector

    if settings.weights != AUTO_WEIGHTS:
        return settings.weights
    family = get_detector(settings.model).spec.backbone
    path = Path(settings.output_dir) / f"{family}_{settings.alpha:g}_{BACKBONE_SIZE}.keras"
    if not path.is_file():
        from edge_mobilenet.train import TrainSettings, train_model

        print(f"backbone: training the {family} {settings.alpha:g} classifier on the bundled digits first "
              f"({BACKBONE_EPOCHS} epochs at {BACKBONE_SIZE} px; --weights none trains from scratch)",
              file=sys.stderr)
        train_model(TrainSettings(model=family, alpha=settings.alpha, size=BACKBONE_SIZE, epochs=BACKBONE_EPOCHS,
                                  output_dir=settings.output_dir, progress=settings.progress))
    return str(path)


def _build(settings: DetectionTrainSettings, classes: int, weights: str | None = None):
    from edge_mobilenet.models.registry import build_detector

    return build_detector(settings.model, alpha=settings.alpha, size=settings.size, classes=classes,
                          bn_momentum=settings.bn_momentum, stride8_map=settings.stride8_map,
                          backbone_weights=weights)


def _make_step(model, optimizer, loss: LossSettings):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def step(images, box_targets, class_targets):
        with tf.GradientTape() as tape:
            box_predictions, class_logits = model(images, training=True)
            total, localization, classification = detection_loss(box_targets, class_targets, box_predictions,
                                                                 class_logits, loss)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        return total, localization, classification

    return step


def fit_detector(model, train: DetectionArrays, anchors: np.ndarray, settings: DetectionTrainSettings) -> dict:
    """Adam with cosine decay over all steps; returns the per-epoch mean losses."""
    import keras
    from tqdm import tqdm

    count = len(train.images)
    steps_per_epoch = max(1, math.ceil(count / settings.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(settings.learning_rate, steps_per_epoch * settings.epochs,
                                                      alpha=0.01)
    step = _make_step(model, keras.optimizers.Adam(schedule), settings.loss)
    order_rng = np.random.default_rng(settings.seed)
    history = {"loss": [], "localization_loss": [], "classification_loss": []}
    bar = tqdm(total=settings.epochs, desc="training detector", unit="epoch", disable=not settings.progress)
    try:
        for _ in range(settings.epochs):
            order = order_rng.permutation(count)
            sums = np.zeros(3)
            for start in range(0, count, settings.batch_size):
                batch = order[start:start + settings.batch_size]
                if settings.augment is None:
                    values = step(train.images[batch], train.box_targets[batch], train.class_targets[batch])
                else:
                    values = step(*augmented_batch(train, batch, anchors, settings, order_rng))
                sums += [float(v) for v in values]
            means = sums / steps_per_epoch
            if not np.all(np.isfinite(means)):
                raise EdgeError(f"training {settings.model} diverged: the loss became NaN/inf at epoch "
                                f"{len(history['loss']) + 1} (learning rate {settings.learning_rate}); "
                                "try a lower --learning-rate")
            for key, value in zip(history, means):
                history[key].append(round(float(value), 4))
            bar.set_postfix(loss=f"{means[0]:.3f}", loc=f"{means[1]:.3f}", cls=f"{means[2]:.3f}")
            bar.update(1)
    finally:
        bar.close()
    return history


def evaluate_detector(model, split: DetectionArrays, anchors: np.ndarray, nms: NmsSettings,
                      batch_size: int = 64) -> dict[str, float]:
    """COCO mAP (map, map50, map75) of ``model`` on ``split``, its raw outputs post-processed on the host."""
    from edge_mobilenet.contracts.detection_metrics import coco_map

    detections = []
    for start in range(0, len(split.images), batch_size):
        boxes, logits = model(split.images[start:start + batch_size], training=False)
        detections += decode_detections(np.asarray(boxes), np.asarray(logits), anchors, settings=nms)
    return coco_map(split.coco.ground_truth(), detections)


def train_detector(settings: DetectionTrainSettings) -> dict:
    """Train, evaluate on val, save ``{stem}.keras`` and ``{stem}.metrics.json``; return the metrics."""
    from edge_mobilenet.quiet import native_noise_filtered

    with native_noise_filtered():  # TensorFlow's import notices (oneDNN, CPU features)
        import keras
        import tensorflow as tf

    from edge_mobilenet.data.preprocess import get_preprocessing
    from edge_mobilenet.models.anchors import BOX_CODER, SSD_ANCHORS
    from edge_mobilenet.models.detection import detector_anchors
    from edge_mobilenet.models.registry import get_detector

    entry = get_detector(settings.model)
    folder, dataset = dataset_folder(settings)
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    from edge_mobilenet.data.detection import load_coco

    val_coco = load_coco(folder / "val", skip_bad=settings.skip_bad)  # its classes size the model
    class_names = val_coco.class_names
    weights = backbone_weights(settings)
    model = _build(settings, len(class_names), weights)
    anchors = detector_anchors(model)
    preprocessing = replace(get_preprocessing(entry.preprocessing), crop_fraction=1.0)
    train = load_split(folder / "train", settings.size, preprocessing, anchors, settings.matcher, settings.skip_bad)
    val = load_split(folder / "val", settings.size, preprocessing, anchors, settings.matcher, coco=val_coco)
    if train.coco.class_names != class_names:
        raise EdgeError(f"{folder}: train/ and val/ have different categories")
    started = time.perf_counter()
    history = fit_detector(model, train, anchors, settings)
    seconds = time.perf_counter() - started
    metrics = evaluate_detector(model, val, anchors, settings.nms)
    output = Path(settings.output_dir)
    model_path = output / f"{settings.stem}.keras"
    with atomic_path(model_path, suffix=".keras") as tmp:
        model.save(tmp)
    record = {
        "model_path": str(model_path), "task": "detection", "model": settings.model, "alpha": settings.alpha,
        "size": settings.size, "classes": len(class_names), "class_names": class_names, "background_class": 0,
        "preprocessing": preprocessing.to_dict(), "resize": "whole image, bilinear (no crop)",
        "outputs": ["box_encodings", "class_predictions"],
        "anchors": {**asdict(SSD_ANCHORS), "count": int(len(anchors))},
        "box_coder": {"name": "center_size", "scale_factors": list(BOX_CODER.scale_factors)},
        "matcher": asdict(settings.matcher), "loss": {"classification": "sigmoid_focal",
                                                      "localization": "huber", **asdict(settings.loss)},
        "nms": settings.nms.to_json(), "dataset": dataset,
        "train_images": len(train.images), "val_images": len(val.images),
        "train_boxes": train.coco.num_boxes, "val_boxes": val.coco.num_boxes,
        "skipped_bad_entries": {"train": train.coco.skipped.to_json(), "val": val.coco.skipped.to_json()},
        "metrics": metrics, "seconds": round(seconds, 1), "trained_weights": True,
        "backbone_weights": {"path": weights, "sha256": sha256_file(weights) if weights else None},
        "settings": settings_json(settings),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "history": history,
    }
    write_json_atomic(output / f"{settings.stem}.metrics.json", record)
    return record


def settings_json(settings: DetectionTrainSettings) -> dict:
    """The settings as the metrics file records them (JSON types; progress left out)."""
    import json

    values = {key: value for key, value in asdict(settings).items() if key not in ("progress", "nms")}
    return json.loads(json.dumps({**values, "nms": settings.nms.to_json()}))
