"""Which models to quantize and how: model sources, held-out evaluation sets, and TOML recipes.

A model source is a ``.keras``/``.h5`` file (a ``NAME.metrics.json`` beside it, written by
``edge-bench train``, supplies its preprocessing, classes and held-out split) or a registry name
(built with random weights: accuracy is then n/a). A recipe (``converters/default.toml``) lists
models, formats and the calibration set; a model with a ``train`` table is first trained on the
default task into ``build/models`` (cached: retrained only when its settings change).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from edge_mobilenet.convert.formats import DEFAULT_FORMATS, parse_formats
from edge_mobilenet.convert.pipeline import EvalSet, FloatModel, QuantizeSettings, validate_input_shape
from edge_mobilenet.data.calibration import CalibrationSource
from edge_mobilenet.data.preprocess import get_preprocessing
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class ModelRecipe:
    source: str  # file path or registry name
    alpha: float = 1.0
    size: int = 224
    classes: int = 1000
    train: dict | None = None
    formats: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Recipe:
    models: tuple[ModelRecipe, ...]
    settings: QuantizeSettings
    models_dir: str = "build/models"
    extra: dict = field(default_factory=dict)


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
                     output_dir: Path) -> FloatModel:
    """Resolve a file or a registry name into a FloatModel (registry builds are saved beside the artifacts)."""
    from edge_mobilenet.models.profile import layer_costs
    from edge_mobilenet.models.registry import REGISTRY, build_model
    from edge_mobilenet.train import load_keras_model

    path = Path(source)
    if source in REGISTRY and not path.exists():
        model = build_model(source, alpha=alpha, size=size, classes=classes)
        stem = f"{source}_{alpha:g}_{size}_random"
        path = output_dir / f"{stem}.keras"
        if not path.is_file():
            from edge_mobilenet.fileio import atomic_path

            with atomic_path(path, suffix=".keras") as tmp:
                model.save(tmp)
        metrics = {"model": source}
        trained = False
    else:
        if not path.exists() and "/" not in source and not path.suffix:
            raise EdgeError(f"unknown model {source!r}: not a file, and not a registered name "
                            f"({', '.join(REGISTRY)})")
        model = load_keras_model(path)
        stem = path.stem
        metrics_path = path.with_name(f"{path.stem}.metrics.json")
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        trained = metrics.get("trained_weights", True)
    if "preprocessing" in metrics:
        preprocessing = get_preprocessing(metrics["preprocessing"]["name"])
        preprocessing = replace(preprocessing, crop_fraction=metrics["preprocessing"]["crop_fraction"])
    else:
        preprocessing = get_preprocessing(infer_preprocessing_name(model))
    classes_out = int(model.output.shape[-1])
    rows = layer_costs(model)
    float_model = FloatModel(stem=stem, path=path, model=model,
                             model_name=metrics.get("model") or _infer_model_name(model),
                             preprocessing=preprocessing, trained_weights=bool(trained),
                             class_names=metrics.get("class_names") or [str(i) for i in range(classes_out)],
                             dataset=metrics.get("dataset"), sha256=sha256_file(path),
                             params=sum(r.params for r in rows), macs=sum(r.macs for r in rows))
    validate_input_shape(float_model)
    return float_model


def load_eval_set(float_model: FloatModel, settings: QuantizeSettings,
                  exclude: set[str] = frozenset()) -> EvalSet | None:
    """Held-out images: the training run's validation split, else --eval DIR, else none."""
    from edge_mobilenet.data.images import load_folder
    from edge_mobilenet.train import load_dataset

    if settings.eval_dir:
        images = load_folder(settings.eval_dir, float_model.size,
                             crop_fraction=float_model.preprocessing.crop_fraction,
                             progress=settings.progress)
        keep = [i for i, f in enumerate(images.files) if f not in exclude][:settings.eval_count]
        if not keep:
            raise EdgeError(f"{settings.eval_dir}: no evaluation images left after removing "
                            "the calibration images")
        images = images.subset(keep)
        description = f"{settings.eval_dir} ({len(images)} images not used for calibration)"
    elif float_model.dataset:
        data, _, val_idx = load_dataset(float_model.dataset,
                                        crop_fraction=float_model.preprocessing.crop_fraction)
        images = data.subset(val_idx[:settings.eval_count])
        description = f"validation split of {float_model.dataset['source']} ({len(images)} images)"
    else:
        return None
    inputs = float_model.preprocessing.apply(images.pixels)
    labels = images.labels if (images.labels >= 0).all() and images.class_names else None
    offset = 0
    if labels is not None:
        classes_out, classes_in = int(float_model.model.output.shape[-1]), len(images.class_names)
        if classes_out == classes_in + 1:
            offset = 1
        elif classes_out < classes_in:
            raise EdgeError(f"{settings.eval_dir or description}: {classes_in} classes, but "
                            f"{float_model.path} outputs {classes_out}")
    outputs = float_model.model.predict(inputs, batch_size=64, verbose=0)
    return EvalSet(inputs, labels, outputs, description, offset)


def _ensure_trained(recipe: ModelRecipe, models_dir: Path, progress: bool) -> str:
    """Train a recipe model on the default task unless an identical run is already saved."""
    from edge_mobilenet.train import TrainSettings, train_model

    settings = TrainSettings(model=recipe.source, alpha=recipe.alpha, size=recipe.size,
                             output_dir=str(models_dir), progress=progress, **recipe.train)
    stem = f"{settings.model}_{settings.alpha:g}_{settings.size}"
    model_path = models_dir / f"{stem}.keras"
    metrics_path = models_dir / f"{stem}.metrics.json"
    wanted = {k: v for k, v in settings.__dict__.items() if k not in ("progress",)}
    if model_path.is_file() and metrics_path.is_file():
        if json.loads(metrics_path.read_text()).get("settings") == json.loads(json.dumps(wanted)):
            return str(model_path)
    print(f"training {stem} on {settings.data_dir or 'the bundled digits'} "
          f"({settings.epochs} epochs)", file=sys.stderr)
    metrics = train_model(settings)
    print(f"  {stem}: validation accuracy {metrics['val_accuracy']:.4f} in {metrics['seconds']} s",
          file=sys.stderr)
    return metrics["model_path"]


def load_recipe(path: str | Path, *, output_dir: str | None = None, progress: bool = True) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{path}: recipe file does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise EdgeError(f"{path}: not valid TOML ({error})") from None
    if not data.get("model"):
        raise EdgeError(f"{path}: no [[model]] tables")
    calibration = data.get("calibration", {})
    settings = QuantizeSettings(
        formats=tuple(f.name for f in parse_formats(",".join(data.get("formats", DEFAULT_FORMATS)))),
        calibration=CalibrationSource(calibration.get("folder", "calibration_data/digits"),
                                      int(calibration.get("count", 200)), int(calibration.get("seed", 0))),
        output_dir=output_dir or data.get("output", "build/artifacts"), io=data.get("io", "int8"),
        onnx_activation_type=data.get("onnx_activation_type", "uint8"),
        onnx_calibration_method=data.get("onnx_calibration_method", "minmax"), progress=progress)
    models = []
    for index, row in enumerate(data["model"]):
        if "name" not in row and "file" not in row:
            raise EdgeError(f"{path}: [[model]] number {index + 1} needs a name or a file")
        formats = tuple(f.name for f in parse_formats(",".join(row["formats"]))) if "formats" in row else None
        models.append(ModelRecipe(source=row.get("file") or row["name"], alpha=float(row.get("alpha", 1.0)),
                                  size=int(row.get("size", 224)), classes=int(row.get("classes", 1000)),
                                  train=row.get("train"), formats=formats))
    return Recipe(tuple(models), settings, data.get("models_dir", "build/models"))


def resolve_recipe_sources(recipe: Recipe) -> list[tuple[ModelRecipe, str]]:
    """Each recipe model with the source to convert (training it first where the recipe says so)."""
    resolved = []
    for model in recipe.models:
        source = (_ensure_trained(model, Path(recipe.models_dir), recipe.settings.progress)
                  if model.train is not None else model.source)
        resolved.append((model, source))
    return resolved
