"""The float source of a set of artifacts and the held-out images they are validated on.

A model source is a ``.keras``/``.h5`` file (a ``NAME.metrics.json`` beside it, written by
``edge-bench train``, supplies its preprocessing, classes and held-out split) or a registry name
(built with random weights: accuracy is then n/a).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_mobilenet.contracts.formats import Format
from edge_mobilenet.convert.settings import QuantizeSettings
from edge_mobilenet.data.preprocess import Preprocessing, get_preprocessing
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import read_json, sha256_file


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
    _exports: dict = None

    def model_for(self, fmt: Format):
        """Integer formats take the rewritten graph; float formats keep the stock one (faster in float)."""
        return self.int8_model if fmt.integer and self.int8_model is not None else self.model

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
        metrics = read_json(metrics_path, "training metrics file") if metrics_path.is_file() else {}
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
