"""TOML recipes (``converters/default.toml``): which models to quantize, and setting overrides.

A recipe is validated whole before anything runs: an unknown key is an error naming the closest known
one, a wrong type names the key and the type it takes. Its settings become overrides that
:func:`edge_mobilenet.convert.settings.merge` applies (command-line flags win over the recipe).
A model with a ``train`` table is first trained on the default task into ``models_dir`` (cached:
retrained only when its settings change): a classifier on the bundled digits (``train.TrainSettings``),
a detector (``ssdlite_*``) on the synthetic digits detection set (``train_detection.DetectionTrainSettings``;
``images`` is its size, ``weights = "auto"`` the family's digits classifier in ``models_dir``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path

from edge_mobilenet.contracts.formats import parse_formats
from edge_mobilenet.contracts.records import Where, check, check_keys, get
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import read_json, read_toml

TOP_KEYS = {"output": (str,), "formats": (list,), "io": (str,), "onnx_activation_type": (str,),
            "onnx_calibration_method": (str,), "target_accuracy": (str,), "detection_outputs": (str,), "models_dir": (str,), "ptq": (str,),
            "calibration": (dict,), "model": (list,), "eval": (str,), "eval_count": (int,)}
CALIBRATION_KEYS = {"folder": (str,), "count": (int,), "seed": (int,), "skip_corrupt": (bool,)}
MODEL_KEYS = {"name": (str,), "file": (str,), "alpha": (float,), "size": (int,), "classes": (int,),
              "train": (dict,), "formats": (list,)}
# train table keys: TrainSettings fields a recipe may set, with their types
TRAIN_KEYS = {"data_dir": (str,), "epochs": (int,), "batch_size": (int,), "learning_rate": (float,),
              "validation_split": (float,), "seed": (int,), "weights": (str,), "freeze_base": (bool,),
              "bn_momentum": (float,)}
# a detector's train table: DetectionTrainSettings fields (``images`` = synthetic_count)
DETECTOR_TRAIN_KEYS = {"data_dir": (str,), "epochs": (int,), "batch_size": (int,), "learning_rate": (float,),
                       "seed": (int,), "weights": (str,), "bn_momentum": (float,), "images": (int,),
                       "stride8_map": (bool,)}


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
    overrides: dict  # QuantizeSettings overrides, for settings.merge
    models_dir: str = "build/models"


def model_recipe(row, where: Where) -> ModelRecipe:
    """One ``[[model]]`` row, validated (a sweep's model rows are read the same way)."""
    row = check(row, where, (dict,))
    check_keys(row, MODEL_KEYS, where, "a recipe key")
    if ("name" in row) == ("file" in row):
        raise where.fail("needs exactly one of name (a registered model) or file (a .keras/.h5 path)")
    train = row.get("train")
    detector = _is_detector(row.get("name"))
    if detector and "classes" in row:
        raise (where / "classes").fail("is not a detector key: a detector's classes are its training set's "
                                       "categories")
    if train is not None:
        check_keys(train, DETECTOR_TRAIN_KEYS if detector else TRAIN_KEYS, where / "train", "a recipe key")
        for key in ("epochs", "batch_size", "images"):
            if key in train and train[key] < 1:
                raise (where / "train" / key).fail(f"must be >= 1; received {train[key]}")
        if "learning_rate" in train and not train["learning_rate"] > 0:
            raise (where / "train" / "learning_rate").fail(f"must be > 0; received {train['learning_rate']}")
    elif detector:
        raise where.fail(f"{row['name']} is a detector: it needs a train table (it is converted from a trained "
                         "model; random weights give no detections to validate)")
    formats = _formats(row, where) if "formats" in row else None
    return ModelRecipe(source=row.get("file") or row["name"], alpha=float(row.get("alpha", 1.0)),
                       size=row.get("size", 224), classes=row.get("classes", 1000), train=train,
                       formats=formats)


def _is_detector(name) -> bool:
    from edge_mobilenet.models.registry import DETECTORS

    return isinstance(name, str) and name in DETECTORS


def _formats(table: dict, where: Where) -> tuple[str, ...]:
    names = [check(f, where / "formats" / i, (str,)) for i, f in enumerate(table["formats"])]
    try:
        return tuple(f.name for f in parse_formats(",".join(names)))
    except EdgeError as error:
        raise (where / "formats").fail(str(error)) from None


def load_recipe(path: str | Path) -> Recipe:
    """The recipe at ``path``, validated; EdgeError naming the file and key otherwise."""
    path = Path(path)
    data = read_toml(path, "recipe file")
    where = Where(path)
    if isinstance(data.get("model"), dict):
        raise (where / "model").fail("must be [[model]] tables (an array), not one [model] table")
    check_keys(data, TOP_KEYS, where, "a recipe key")
    if not data.get("model"):
        raise where.fail("has no [[model]] tables")
    models = tuple(model_recipe(row, where / "model" / i) for i, row in enumerate(data["model"]))
    calibration = data.get("calibration", {})
    check_keys(calibration, CALIBRATION_KEYS, where / "calibration", "a recipe key")
    overrides = {key: data.get(key) for key in ("io", "onnx_activation_type", "onnx_calibration_method",
                                                "target_accuracy", "eval_count", "ptq", "detection_outputs")}
    overrides.update(output_dir=data.get("output"), eval_dir=data.get("eval"),
                     formats=_formats(data, where) if "formats" in data else None,
                     **{k: calibration.get(v) for k, v in (("calibration", "folder"), ("count", "count"),
                                                            ("seed", "seed"), ("skip_corrupt", "skip_corrupt"))})
    from edge_mobilenet.convert.settings import QuantizeSettings, merge

    try:  # the values, checked as the settings they become, before anything runs
        merge(QuantizeSettings(), overrides)
    except EdgeError as error:
        raise EdgeError(f"{path}: {error}") from None
    return Recipe(models, overrides, get(data, "models_dir", where, (str,), "build/models"))


def ensure_trained(recipe: ModelRecipe, models_dir: Path, progress: bool) -> str:
    """Train a recipe model on the default task unless an identical run is already saved."""
    import json
    import os

    if _is_detector(recipe.source):
        return ensure_trained_detector(recipe, models_dir, progress)
    from edge_mobilenet.train import TrainSettings, train_model

    settings = TrainSettings(model=recipe.source, alpha=recipe.alpha, size=recipe.size,
                             output_dir=str(models_dir), progress=progress, **recipe.train)
    stem = f"{settings.model}_{settings.alpha:g}_{settings.size}"
    model_path = models_dir / f"{stem}.keras"
    metrics_path = models_dir / f"{stem}.metrics.json"
    wanted = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name != "progress"}
    if model_path.is_file() and metrics_path.is_file():
        saved = read_json(metrics_path, "training metrics file")
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA")  # oneDNN's code path decides the weights too
        if isinstance(saved, dict) and saved.get("onednn_max_cpu_isa") == isa \
                and saved.get("settings") == json.loads(json.dumps(wanted)):
            return str(model_path)
    print(f"training {stem} on {settings.data_dir or 'the bundled digits'} "
          f"({settings.epochs} epochs)", file=sys.stderr)
    metrics = train_model(settings)
    print(f"  {stem}: validation accuracy {metrics['val_accuracy']:.4f} in {metrics['seconds']} s",
          file=sys.stderr)
    return metrics["model_path"]


def ensure_trained_detector(recipe: ModelRecipe, models_dir: Path, progress: bool) -> str:
    """:func:`ensure_trained` for a detector: the saved run is reused when its settings, its backbone's
    bytes and oneDNN's code path are the ones this run would use."""
    import os

    from edge_mobilenet.fileio import sha256_file
    from edge_mobilenet.train_detection import (AUTO_WEIGHTS, DetectionTrainSettings, backbone_weights,
                                                settings_json, train_detector)

    options = dict(recipe.train)
    if "images" in options:
        options["synthetic_count"] = options.pop("images")
    if str(options.get("weights", AUTO_WEIGHTS)).lower() == "none":
        options["weights"] = None
    settings = DetectionTrainSettings(model=recipe.source, alpha=recipe.alpha, size=recipe.size,
                                      output_dir=str(models_dir), progress=progress, **options)
    model_path = models_dir / f"{settings.stem}.keras"
    metrics_path = models_dir / f"{settings.stem}.metrics.json"
    weights = backbone_weights(settings)  # trains the family's digits classifier first when "auto" lacks it
    if model_path.is_file() and metrics_path.is_file():
        saved = read_json(metrics_path, "training metrics file")
        backbone = saved.get("backbone_weights") if isinstance(saved, dict) else None
        if isinstance(saved, dict) and saved.get("onednn_max_cpu_isa") == os.environ.get("ONEDNN_MAX_CPU_ISA") \
                and saved.get("settings") == settings_json(settings) and isinstance(backbone, dict) \
                and backbone.get("sha256") == (sha256_file(weights) if weights else None):
            return str(model_path)
    print(f"training {settings.stem} on {settings.data_dir or 'the synthetic digits detection set'} "
          f"({settings.synthetic_count} images, {settings.epochs} epochs)", file=sys.stderr)
    record = train_detector(settings)
    metrics = record["metrics"]
    print(f"  {settings.stem}: validation mAP {metrics['map']:.4f}, mAP@0.5 {metrics['map50']:.4f} "
          f"in {record['seconds']} s", file=sys.stderr)
    return record["model_path"]
