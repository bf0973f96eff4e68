"""Training and fine-tuning with plain Keras ``fit``.

From scratch on small data, BatchNormalization's default momentum (0.999 in V2/V3) makes the moving
statistics lag the weights for thousands of steps and validation sits at chance; training from
scratch therefore uses momentum 0.9 unless told otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.data.datasets import dataset_crop_fraction, dataset_description, load_dataset
from edge_mobilenet.fileio import atomic_path, write_json_atomic

SCRATCH_BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class TrainSettings:
    model: str = "mobilenet_v1"
    alpha: float = 0.25
    size: int = 32
    data_dir: str | None = None  # None: scikit-learn digits
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    validation_split: float = 0.2
    seed: int = 0
    weights: str | None = None
    freeze_base: bool = False
    bn_momentum: float | None = None
    output_dir: str = "build/models"
    progress: bool = True
    name: str | None = None  # output file stem; default derived from model/alpha/size

    def __post_init__(self):
        """Checked before any data is loaded: one line naming the option."""
        import math

        for option, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EdgeError(f"{option} must be an integer >= 1; received {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise EdgeError(f"--learning-rate must be a finite number > 0; received {self.learning_rate!r}")
        if not 0 < self.validation_split < 1:
            raise EdgeError(f"--validation-split must be between 0 and 1; received {self.validation_split!r}")
        if self.bn_momentum is not None and not 0 <= self.bn_momentum < 1:
            raise EdgeError(f"--bn-momentum must be in [0, 1); received {self.bn_momentum!r}")
        if self.seed < 0:
            raise EdgeError(f"--seed must be >= 0; received {self.seed}")


def _progress_callback(epochs: int, enabled: bool):
    import keras
    from tqdm import tqdm

    class EpochBar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=epochs, desc="training", unit="epoch", disable=not enabled)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.bar.set_postfix(loss=f"{logs.get('loss', 0):.3f}",
                                 acc=f"{logs.get('accuracy', 0):.3f}",
                                 val_acc=f"{logs.get('val_accuracy', 0):.3f}")
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()

    return EpochBar()


def _initial_model(settings: TrainSettings, classes: int):
    import keras

    from edge_mobilenet.models.registry import build_model

    momentum = settings.bn_momentum
    if momentum is None and settings.weights is None:
        momentum = SCRATCH_BN_MOMENTUM
    model = build_model(settings.model, alpha=settings.alpha, size=settings.size, classes=classes,
                        bn_momentum=momentum)
    if settings.weights is None:
        return model
    source = load_keras_model(settings.weights)
    loaded = copy_weights_by_name(source, model)
    if loaded == 0:
        raise EdgeError(f"{settings.weights}: no layer matches {settings.model} "
                        f"alpha={settings.alpha} size={settings.size} by name and shape")
    if settings.freeze_base:
        head = _head_layer_names(model)
        for layer in model.layers:
            layer.trainable = layer.name in head
    del keras
    return model


def _head_layer_names(model) -> set[str]:
    """Layers after the last global pooling: the classifier that fine-tuning trains."""
    names = [layer.name for layer in model.layers]
    pool = max(i for i, layer in enumerate(model.layers) if "GlobalAveragePooling" in type(layer).__name__
               and "squeeze_excite" not in layer.name)
    return set(names[pool:])


def copy_weights_by_name(source, target) -> int:
    """Copy weights of same-named, same-shaped layers; returns how many layers were copied."""
    copied = 0
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        other = by_name.get(layer.name)
        if other is None or not layer.weights:
            continue
        weights = other.get_weights()
        if [w.shape for w in weights] != [tuple(w.shape) for w in layer.weights]:
            continue
        layer.set_weights(weights)
        copied += 1
    return copied


def load_keras_model(path: str | Path):
    """Load a .keras/.h5 model for inference, with one clear error for a bad file."""
    from edge_mobilenet.quiet import native_noise_filtered

    with native_noise_filtered():  # TensorFlow's import notices (oneDNN, CPU features)
        import keras

    path = checked_model_path(path)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file
        if path.suffix == ".h5":
            try:
                return _load_legacy_h5(path)
            except Exception:
                pass
        raise EdgeError(f"{path}: cannot be loaded as a Keras model ({str(error).splitlines()[0][:160]})") from None


def calibrate_batch_norm(model, batch: np.ndarray) -> None:
    """Set every BatchNormalization layer's moving statistics to those of ``batch`` (one forward pass
    in training mode with momentum 0). Random weights with untouched statistics give collapsing
    activation ranges (int8 MobileNetV3 then splits into ~20 XNNPACK partitions); real images fix it."""
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(batch, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


def checked_model_path(path: str | Path) -> Path:
    """``path`` if it can be a Keras model file; one line saying what is wrong otherwise (missing, a
    folder, a name too long, empty, not a .keras zip archive)."""
    import zipfile

    path = Path(path)
    try:
        if path.is_dir():
            raise EdgeError(f"{path}: is a folder, not a Keras model file")
        if not path.is_file():
            raise EdgeError(f"{path}: model file does not exist")
        size = path.stat().st_size
    except OSError as error:
        raise EdgeError(f"{str(path)[:120]}...: {error.strerror or error}") from None
    if path.suffix not in (".keras", ".h5"):
        raise EdgeError(f"{path}: not a Keras model file (expected .keras or .h5)")
    if size == 0:
        raise EdgeError(f"{path}: corrupt model file (empty)")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise EdgeError(f"{path}: corrupt or truncated .keras file (not a zip archive)")
    return path


def _load_legacy_h5(path: Path):
    """Old .h5 files store DepthwiseConv2D with a ``groups`` argument Keras 3 refuses."""
    import keras

    class LegacyDepthwiseConv2D(keras.layers.DepthwiseConv2D):
        def __init__(self, *args, groups=None, **kwargs):
            super().__init__(*args, **kwargs)

    return keras.models.load_model(path, compile=False,
                                   custom_objects={"DepthwiseConv2D": LegacyDepthwiseConv2D})


def train_model(settings: TrainSettings) -> dict:
    """Train, save ``<output>/<name>.keras`` and ``<name>.metrics.json``; return the metrics."""
    from edge_mobilenet.quiet import native_noise_filtered

    with native_noise_filtered():  # TensorFlow's import notices (oneDNN, CPU features)
        import keras

    from edge_mobilenet.data.preprocess import get_preprocessing
    from edge_mobilenet.models.registry import get_entry

    entry = get_entry(settings.model)
    description = dataset_description(settings)
    preprocessing = get_preprocessing(entry.preprocessing)
    preprocessing = replace(preprocessing,
                            crop_fraction=dataset_crop_fraction(description, preprocessing))
    images, train_idx, val_idx = load_dataset(description, crop_fraction=preprocessing.crop_fraction,
                                              progress=settings.progress)
    keras.utils.set_random_seed(settings.seed)
    model = _initial_model(settings, len(images.class_names))
    x_train = preprocessing.apply(images.pixels[train_idx])
    x_val = preprocessing.apply(images.pixels[val_idx])
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    history = model.fit(x_train, images.labels[train_idx], batch_size=settings.batch_size,
                        epochs=settings.epochs, validation_data=(x_val, images.labels[val_idx]),
                        verbose=0, shuffle=True,
                        callbacks=[_progress_callback(settings.epochs, settings.progress),
                                   keras.callbacks.TerminateOnNaN()])
    seconds = time.perf_counter() - started
    losses = history.history.get("loss") or [float("nan")]
    if len(losses) < settings.epochs or not np.isfinite(losses[-1]):
        raise EdgeError(f"training {settings.model} diverged: the loss became NaN/inf at epoch {len(losses)} "
                        f"(learning rate {settings.learning_rate}); try a lower --learning-rate")
    probabilities = model.predict(x_val, batch_size=256, verbose=0)
    val_accuracy = float(np.mean(np.argmax(probabilities, axis=1) == images.labels[val_idx]))
    name = settings.name or f"{settings.model}_{settings.alpha:g}_{settings.size}"
    output = Path(settings.output_dir)
    model_path = output / f"{name}.keras"
    with atomic_path(model_path, suffix=".keras") as tmp:
        model.save(tmp)
    metrics = {
        "model_path": str(model_path), "model": settings.model, "alpha": settings.alpha,
        "size": settings.size, "classes": len(images.class_names), "class_names": images.class_names,
        "preprocessing": preprocessing.to_dict(), "dataset": description,
        "train_images": int(len(train_idx)), "val_images": int(len(val_idx)),
        "val_accuracy": val_accuracy,
        "train_accuracy": float(history.history["accuracy"][-1]),
        "seconds": round(seconds, 1), "trained_weights": True,
        "settings": {k: v for k, v in asdict(settings).items() if k != "progress"},
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),  # decides the weights too
        "history": {k: [round(float(v), 4) for v in vs] for k, vs in history.history.items()},
    }
    write_json_atomic(output / f"{name}.metrics.json", metrics)
    return metrics
