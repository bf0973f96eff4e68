"""The float source of a set of artifacts and the held-out images they are validated on.

A model source is a ``.keras``/``.h5`` file (a ``NAME.metrics.json`` beside it, written by
``edge-bench train``, supplies its preprocessing, classes and held-out split) or a registry name: built
with seeded random weights (accuracy is then n/a) and BatchNormalization statistics from calibration
images, so its int8 graph is the one a trained model would have, and kept as a file beside the artifacts
(:func:`prepare_random_source`).
"""

from __future__ import annotations

import contextlib
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from edge_mobilenet.contracts.formats import Format
from edge_mobilenet.convert.settings import QuantizeSettings
from edge_mobilenet.data.calibration import CalibrationSource, choose_files, content_hash
from edge_mobilenet.data.preprocess import Preprocessing, get_preprocessing
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import atomic_path, locked, read_json, sha256_file, write_json_atomic

BATCH_NORM_IMAGES = 32  # calibration images a random-weight model's BatchNormalization statistics come from
RANDOM_SOURCE_VERSION = 1  # bumped when the way a random source is built changes (saved ones are rebuilt)


@dataclass
class FloatModel:
    """The float source of a set of artifacts, with what the manifest says about it."""

    stem: str
    path: Path
    model: object
    model_name: str | None
    preprocessing: Preprocessing
    trained_weights: bool
    class_names: list[str]
    dataset: dict | None
    sha256: str = ""
    params: int = 0
    macs: int = 0
    hard_swish_rewrite: dict | None = None
    batch_norm_statistics: dict | None = None  # random weights: where their BatchNormalization statistics are from

    def apply_hard_swish_rewrite(self, enabled: bool, check_batch: np.ndarray | None = None) -> None:
        """Swap in the int8-friendly hard-swish form (same outputs, checked) before any conversion."""
        if not enabled:
            self.hard_swish_rewrite = {"enabled": False}
            return
        from edge_mobilenet.convert.rewrite import rewrite_hard_swish

        rewritten, report = rewrite_hard_swish(self.model, check_batch=check_batch)
        self.int8_model = rewritten if report["rewritten"] else None
        self.hard_swish_rewrite = {"enabled": True, "rewritten": len(report["rewritten"]),
                                   "left": report["left"],
                                   "max_abs_diff": report.get("max_abs_diff")}

    int8_model: object = None  # the model int8 formats convert: hard-swish rewritten where it applies
    ptq: dict = None  # format name -> quant.ptq.PtqChoice: the post-training methods it is built with
    _exports: dict = None

    def model_for(self, fmt: Format):
        """Integer formats take the rewritten graph (with their post-training weight methods applied, if
        any); float formats keep the stock one (faster in float)."""
        choice = (self.ptq or {}).get(fmt.name)
        if choice is not None and choice.model is not None:
            return choice.model
        return self.int8_model if fmt.integer and self.int8_model is not None else self.model

    def integer_base(self):
        """The model integer formats convert before any post-training method."""
        return self.int8_model if self.int8_model is not None else self.model

    def ptq_ranges(self, fmt: Format) -> str | None:
        """The activation range estimator chosen for ``fmt`` (None: min/max)."""
        choice = (self.ptq or {}).get(fmt.name)
        return choice.ranges if choice is not None else None

    def _export(self, fmt: Format, kind: str, write) -> Path:
        """``write(model, folder)`` once per (model, kind) into a temporary folder removed by close()."""
        import tempfile

        model = self.model_for(fmt)
        self._exports = self._exports if self._exports is not None else {}
        key = (id(model), kind)
        if key not in self._exports:
            folder = tempfile.TemporaryDirectory(prefix=f"edge-{kind}-")
            write(model, Path(folder.name))
            self._exports[key] = folder
        return Path(self._exports[key].name)

    def saved_model_dir(self, fmt: Format) -> str:
        """The model for ``fmt`` exported once (batch 1) for every TFLite conversion."""
        from edge_mobilenet.convert.tflite import export_saved_model

        return str(self._export(fmt, "savedmodel", lambda m, folder: export_saved_model(m, str(folder))))

    def float_onnx(self, fmt: Format) -> Path:
        """A float ONNX export of the model for ``fmt``: the input of ONNX Runtime's quantizer."""
        from edge_mobilenet.convert.onnx_convert import convert_onnx

        return self._export(fmt, "onnx", lambda m, folder: convert_onnx(m, folder / "float.onnx")) / "float.onnx"

    def close(self) -> None:
        for folder in (self._exports or {}).values():
            folder.cleanup()
        self._exports = None

    @property
    def size(self) -> tuple[int, int]:
        shape = self.model.input.shape
        return int(shape[1]), int(shape[2])


@dataclass
class EvalSet:
    """Held-out float inputs, their labels (or None) and the float model's outputs on them."""

    inputs: np.ndarray
    labels: np.ndarray | None
    float_outputs: np.ndarray
    description: str
    label_offset: int = 0  # 1 for 1001-class models (index 0 = background) on 1000-class labels


def validate_input_shape(float_model: FloatModel) -> None:
    shape = tuple(float_model.model.input.shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise EdgeError(f"{float_model.path}: input shape {shape} can't be fed images; "
                        "expected (batch, height, width, 3) with a fixed height and width")


def infer_preprocessing_name(model) -> str:
    """V3 models carry their own Rescaling layer (raw 0-255 input); V1/V2 take [-1, 1]."""
    first = [l for l in model.layers if type(l).__name__ != "InputLayer"][:1]
    return "raw" if first and type(first[0]).__name__ == "Rescaling" else "symmetric"


def _infer_model_name(model) -> str | None:
    names = {l.name for l in model.layers}
    if "conv_dw_1" in names:
        return "mobilenet_v1"
    if "block_1_expand" in names:
        return "mobilenet_v2"
    if "expanded_conv_1_expand" in names:
        return "mobilenet_v3"
    return None


def load_float_model(source: str, *, alpha: float = 1.0, size: int = 224, classes: int = 1000,
                     output_dir: Path, calibration: CalibrationSource | None = None,
                     calibrate_batch_norm: bool = True) -> FloatModel:
    """Resolve a file or a registry name into a FloatModel.

    A registry name becomes the file :func:`prepare_random_source` keeps in ``output_dir`` (its
    BatchNormalization statistics from ``calibration``, required unless ``calibrate_batch_norm`` is
    False); that file, loaded under its lock, is what is converted and recorded."""
    from edge_mobilenet.models.profile import layer_costs
    from edge_mobilenet.models.registry import REGISTRY

    path = Path(source)
    if source in REGISTRY and not path.exists():
        if calibrate_batch_norm and calibration is None:
            raise EdgeError(f"{source}: random weights need calibration images for their BatchNormalization "
                            "statistics (or calibrate_batch_norm=False for untouched statistics)")
        shape = RandomShape(source, alpha, size, classes)
        with _random_source(shape, Path(output_dir), calibration if calibrate_batch_norm else None, 0) as path:
            model, metrics, sha256 = _load_with_metrics(path)
    else:
        if not path.exists() and "/" not in source and not path.suffix:
            raise EdgeError(f"unknown model {source!r}: not a file, and not a registered name "
                            f"({', '.join(REGISTRY)})")
        model, metrics, sha256 = _load_with_metrics(path)
    if "preprocessing" in metrics:
        preprocessing = get_preprocessing(metrics["preprocessing"]["name"])
        preprocessing = replace(preprocessing, crop_fraction=metrics["preprocessing"]["crop_fraction"])
    else:
        preprocessing = get_preprocessing(infer_preprocessing_name(model))
    if len(model.outputs) != 1:
        raise EdgeError(f"{path}: a model with {len(model.outputs)} outputs (a detector?); this command takes "
                        "classifiers (`edge-bench quantize` converts and validates detectors)")
    classes_out = int(model.output.shape[-1])
    rows = layer_costs(model)
    float_model = FloatModel(stem=path.stem, path=path, model=model,
                             model_name=metrics.get("model") or _infer_model_name(model),
                             preprocessing=preprocessing,
                             trained_weights=bool(metrics.get("trained_weights", True)),
                             class_names=metrics.get("class_names") or [str(i) for i in range(classes_out)],
                             dataset=metrics.get("dataset"), sha256=sha256,
                             params=sum(r.params for r in rows), macs=sum(r.macs for r in rows),
                             batch_norm_statistics=metrics.get("batch_norm_statistics"))
    validate_input_shape(float_model)
    return float_model


def _load_with_metrics(path: Path) -> tuple[object, dict, str]:
    """(Keras model, the ``NAME.metrics.json`` beside it or {}, sha256 of the file loaded)."""
    from edge_mobilenet.train import load_keras_model

    model = load_keras_model(path)
    metrics_path = path.with_name(f"{path.stem}.metrics.json")
    metrics = read_json(metrics_path, "training metrics file") if metrics_path.is_file() else {}
    if not isinstance(metrics, dict):
        raise EdgeError(f"{metrics_path}: not a metrics file (expected a JSON object)")
    return model, metrics, sha256_file(path)


@dataclass(frozen=True)
class RandomShape:
    """A registry model built with random weights: what its file name says."""

    name: str
    alpha: float
    size: int
    classes: int

    @property
    def stem(self) -> str:
        """``{name}_{alpha}_{size}_random``; ``_{classes}classes`` before ``_random`` unless 1000."""
        shape = f"{self.name}_{self.alpha:g}_{self.size}"
        return f"{shape}_random" if self.classes == 1000 else f"{shape}_{self.classes}classes_random"


def random_source_stem(name: str, *, alpha: float, size: int, classes: int) -> str:
    return RandomShape(name, alpha, size, classes).stem


def batch_norm_images(calibration: CalibrationSource) -> CalibrationSource:
    """The images a random-weight model's BatchNormalization statistics come from: the first
    ``BATCH_NORM_IMAGES`` of the calibration seed's draw (independent of the calibration count)."""
    return replace(calibration, count=BATCH_NORM_IMAGES)


def _batch_norm_plan(calibration: CalibrationSource | None) -> dict:
    """What the metrics file records about the statistics, before any image is decoded (TF-free)."""
    if calibration is None:
        return {"source": "untouched"}
    try:
        chosen = choose_files(batch_norm_images(calibration))
    except EdgeError as error:
        raise EdgeError(f"random weights take their BatchNormalization statistics from the calibration "
                        f"images: {error} (give --calibration DIR)") from None
    return {"source": "calibration", "folder": calibration.folder, "seed": calibration.seed,
            "images": len(chosen), "sha256": content_hash(chosen, Path(calibration.folder))}


def _wanted(shape: RandomShape, calibration: CalibrationSource | None, seed: int) -> dict:
    return {"model": shape.name, "alpha": shape.alpha, "size": shape.size, "classes": shape.classes,
            "trained_weights": False, "seed": seed, "random_source_version": RANDOM_SOURCE_VERSION,
            "batch_norm_statistics": _batch_norm_plan(calibration)}


def _identity(statistics) -> object:
    return {k: statistics.get(k) for k in ("source", "sha256")} if isinstance(statistics, dict) else statistics


def _stale(model_path: Path, metrics_path: Path, wanted: dict) -> str | None:
    """Why the saved random source can't be reused (None: it can); one line."""
    if not model_path.is_file() and not metrics_path.is_file():
        return "not built yet"
    try:
        saved = read_json(metrics_path, "random-weight source metrics file")
    except EdgeError as error:
        return str(error)
    if not isinstance(saved, dict):
        return f"{metrics_path}: not a metrics object"
    for key, value in wanted.items():
        got = saved.get(key)
        if key == "batch_norm_statistics":  # the images' content decides, not how the folder was spelled
            got = _identity(got)
            value = _identity(value)
        if got != value:
            return f"{metrics_path.name}: {key} is {got!r}, wanted {value!r}"
    if not model_path.is_file() or sha256_file(model_path) != saved.get("keras_sha256"):
        return f"{model_path.name}: missing, or its bytes are not those {metrics_path.name} records"
    return None


def current_random_source(name: str, *, alpha: float, size: int, classes: int, output_dir: Path,
                          calibration: CalibrationSource | None, seed: int = 0) -> Path | None:
    """The saved random source for these settings if it is current, else None (TF-free, no lock)."""
    shape = RandomShape(name, alpha, size, classes)
    path = Path(output_dir) / f"{shape.stem}.keras"
    wanted = _wanted(shape, calibration, seed)
    return path if _stale(path, path.with_name(f"{shape.stem}.metrics.json"), wanted) is None else None


def prepare_random_source(name: str, *, alpha: float, size: int, classes: int, output_dir: Path,
                          calibration: CalibrationSource | None, seed: int = 0) -> Path:
    """``output_dir/{stem}.keras`` (+ ``{stem}.metrics.json``): registry model ``name`` with weights drawn
    from ``seed`` and, unless ``calibration`` is None, every BatchNormalization's moving statistics set
    from ``BATCH_NORM_IMAGES`` calibration images (see :func:`batch_norm_images`) preprocessed as the
    model expects. Reused when the saved pair matches these settings and images, rebuilt otherwise;
    built under a lock file, written atomically (safe for several processes)."""
    with _random_source(RandomShape(name, alpha, size, classes), Path(output_dir), calibration, seed) as path:
        return path


@contextlib.contextmanager
def _random_source(shape: RandomShape, output_dir: Path, calibration: CalibrationSource | None,
                   seed: int) -> Iterator[Path]:
    """The current random source's path, held under its lock for the block."""
    model_path = output_dir / f"{shape.stem}.keras"
    metrics_path = output_dir / f"{shape.stem}.metrics.json"
    with locked(output_dir / f".{shape.stem}.lock"):
        wanted = _wanted(shape, calibration, seed)
        reason = _stale(model_path, metrics_path, wanted)
        if reason is not None:
            if reason != "not built yet":
                print(f"rebuilding {model_path}: {reason}", file=sys.stderr, flush=True)
            _build_random_source(shape, calibration, wanted, model_path, metrics_path)
        yield model_path


def _build_random_source(shape: RandomShape, calibration: CalibrationSource | None, wanted: dict,
                         model_path: Path, metrics_path: Path) -> None:
    from edge_mobilenet.data.calibration import load_calibration
    from edge_mobilenet.models.registry import build_model
    from edge_mobilenet.train import calibrate_batch_norm

    with _seeded(wanted["seed"]):
        model = build_model(shape.name, alpha=shape.alpha, size=shape.size, classes=shape.classes)
    preprocessing = get_preprocessing(infer_preprocessing_name(model))
    statistics = dict(wanted["batch_norm_statistics"])
    if calibration is not None:
        images = load_calibration(batch_norm_images(calibration), (shape.size, shape.size), preprocessing)
        calibrate_batch_norm(model, images.inputs(preprocessing))
        statistics["images"] = len(images.images)
        if images.images.skipped:
            statistics["skipped"] = list(images.images.skipped)
    with atomic_path(model_path, suffix=".keras") as tmp:
        model.save(tmp)
        keras_sha256 = sha256_file(tmp)
    write_json_atomic(metrics_path, {**wanted, "batch_norm_statistics": statistics,
                                     "preprocessing": preprocessing.to_dict(), "keras_sha256": keras_sha256})


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Python's and NumPy's global generators seeded for the block (Keras draws initializer seeds from
    Python's ``random``), then put back as they were."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def load_eval_set(float_model: FloatModel, settings: QuantizeSettings,
                  exclude: set[str] = frozenset()) -> EvalSet | None:
    """Held-out images (``--eval DIR`` minus the calibration images, else the training run's
    validation split) with the float model's outputs on them, or None."""
    from edge_mobilenet.contracts.metrics import label_offset
    from edge_mobilenet.data.datasets import load_eval_images

    images = load_eval_images(float_model.size, float_model.preprocessing.crop_fraction,
                              eval_dir=settings.eval_dir, count=settings.eval_count,
                              dataset=float_model.dataset, exclude=exclude, progress=settings.progress)
    if images is None:
        return None
    inputs = float_model.preprocessing.apply(images.pixels)
    offset = 0
    if images.labels is not None:
        offset = label_offset(int(float_model.model.output.shape[-1]), images.classes,
                              f"{settings.eval_dir or images.description} / {float_model.path}")
    outputs = float_model.model.predict(inputs, batch_size=64, verbose=0)
    return EvalSet(inputs, images.labels, outputs, images.description, offset)
