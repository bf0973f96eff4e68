"""``edge-bench quantize`` as a batch: for each model, reuse what is current, convert the rest, log each
artifact. :func:`run_quantize` is the whole command (recipe + flags merged once, then the batch)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge_mobilenet.contracts.formats import FORMATS
from edge_mobilenet.contracts.manifest import Manifest
from edge_mobilenet.contracts.records import ArtifactEntry
from edge_mobilenet.convert.pipeline import build_artifact, cache_key
from edge_mobilenet.convert.settings import QuantizeSettings
from edge_mobilenet.data.calibration import choose_files, content_hash, load_calibration
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file
from edge_mobilenet.quiet import native_noise_filtered


@dataclass(frozen=True)
class ModelRequest:
    source: str
    formats: tuple[str, ...]
    alpha: float = 1.0
    size: int = 224
    classes: int = 1000
    calibrate_batch_norm: bool = True  # a registry name: BatchNormalization statistics from calibration images


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _batch_norm_calibration(request: ModelRequest, settings: QuantizeSettings):
    return settings.calibration if request.calibrate_batch_norm else None


def _source_file(request: ModelRequest, settings: QuantizeSettings) -> Path | None:
    """The float model file if it exists already (registry builds are saved under the output folder,
    and count only while they match the request and the calibration images)."""
    from edge_mobilenet.models.registry import REGISTRY
    from edge_mobilenet.train import checked_model_path

    if request.source in REGISTRY and not Path(request.source).exists():
        from edge_mobilenet.convert.sources import current_random_source

        return current_random_source(request.source, alpha=request.alpha, size=request.size,
                                     classes=request.classes, output_dir=Path(settings.output_dir),
                                     calibration=_batch_norm_calibration(request, settings))
    try:
        return checked_model_path(request.source)
    except EdgeError as error:
        if "does not exist" in str(error):
            raise EdgeError(f"{request.source}: model file does not exist (and it is not a registered model "
                            "name)") from None
        raise


def _keys(request: ModelRequest, settings: QuantizeSettings, source: Path,
          calibration_sha: str | None) -> dict[str, str]:
    metrics = source.with_name(f"{source.stem}.metrics.json")
    metrics_sha = sha256_file(metrics) if metrics.is_file() else None
    source_sha = sha256_file(source)
    return {f: cache_key(source_sha, metrics_sha, FORMATS[f], settings, calibration_sha)
            for f in request.formats}


def calibration_hash(settings: QuantizeSettings) -> str:
    """The content hash of the calibration images chosen (listed and hashed once per run)."""
    return content_hash(choose_files(settings.calibration), Path(settings.calibration.folder))


def _line(entry: ArtifactEntry, status: str) -> str:
    validation = entry.validation
    agreement = validation.agreement_with_float if validation else None
    top1 = validation.metrics.get("top1") if validation else None
    snr = (validation.paired or {}).get("snr_db") if validation and entry.format not in ("fp32", "onnx") else None
    return (f"  {entry.format:9s} {status:6s} {entry.size_bytes / 1024:9.1f} KiB"
            f"  {entry.facts.get('convert_seconds', 0):6.1f} s"
            + (f"  top-1 agreement {agreement:.4f}" if agreement is not None else "")
            + (f"  SNR {float(snr):.1f} dB" if isinstance(snr, (int, float)) else "")
            + (f"  top-1 {top1:.4f}" if top1 is not None else "")
            + f"  {entry.file}")


def quantize_model(request: ModelRequest, settings: QuantizeSettings, manifest: Manifest,
                   calibration_sha: str | None = None) -> list[ArtifactEntry]:
    """Convert one model into every requested format (reusing current artifacts)."""
    from edge_mobilenet.convert.sources import load_eval_set, load_float_model

    output_dir = Path(settings.output_dir)
    source = _source_file(request, settings)
    if source is not None:
        from edge_mobilenet.convert.detection_batch import detection_record, quantize_detector

        record = detection_record(source)
        if record is not None:
            return quantize_detector(source, record, request.formats, settings, manifest)
    keys = _keys(request, settings, source, calibration_sha) if source is not None else {}
    stem = source.stem if source is not None else None
    cached = {f: manifest.cached(f"{stem}{FORMATS[f].suffix}", keys[f]) for f in keys}
    todo = [f for f in request.formats if cached.get(f) is None]
    entries = [cached[f] for f in request.formats if cached.get(f) is not None]
    _log(f"{request.source}: {len(entries)} current, {len(todo)} to build")
    for entry in entries:
        _log(_line(entry, "cached"))
    if not todo:
        return entries
    with native_noise_filtered():  # TensorFlow's import notices
        float_model = load_float_model(request.source, alpha=request.alpha, size=request.size,
                                       classes=request.classes, output_dir=output_dir,
                                       calibration=_batch_norm_calibration(request, settings),
                                       calibrate_batch_norm=request.calibrate_batch_norm)
    keys = _keys(request, settings, float_model.path, calibration_sha)
    calibration = None
    if any(FORMATS[f].calibrated for f in todo):
        calibration = load_calibration(settings.calibration, float_model.size, float_model.preprocessing,
                                       progress=settings.progress)
    float_model.apply_hard_swish_rewrite(
        settings.rewrite_hard_swish,
        calibration.inputs(float_model.preprocessing)[:8] if calibration is not None else None)
    if float_model.hard_swish_rewrite.get("rewritten"):
        _log(f"  hard-swish: {float_model.hard_swish_rewrite['rewritten']} activation(s) rewritten for int8 "
             f"kernels (max abs output difference {float_model.hard_swish_rewrite['max_abs_diff']:.2g})")
    for left in float_model.hard_swish_rewrite.get("left", []):
        _log(f"  hard-swish left as is in {left['layer']}: {left['reason']}")
    exclude = set(calibration.images.files) if calibration is not None else set()
    evaluation = load_eval_set(float_model, settings, exclude)
    try:
        for fmt in todo:
            started = time.perf_counter()
            entry = build_artifact(float_model, FORMATS[fmt], settings, manifest, calibration,
                                   evaluation, keys[fmt])
            _log(_line(entry, "built") + f"  ({time.perf_counter() - started:.1f} s with validation)")
            entries.append(entry)
    finally:
        float_model.close()
    return entries


def quantize(requests: list[ModelRequest], settings: QuantizeSettings) -> Manifest:
    manifest = Manifest(settings.output_dir)
    started = time.perf_counter()
    calibrated = any(FORMATS[f].calibrated for r in requests for f in r.formats)
    calibration_sha = calibration_hash(settings) if calibrated else None
    for request in requests:
        quantize_model(request, settings, manifest, calibration_sha)
    manifest.write()
    _log(f"manifest: {manifest.path} ({len(manifest.entries)} artifacts, "
         f"{time.perf_counter() - started:.1f} s)")
    return manifest


def run_quantize(models: tuple[str, ...], recipe_path: str | None, overrides: dict,
                 shape: tuple[float, int, int]) -> Manifest:
    """The quantize command: ``models`` (files or registry names built at ``shape`` = alpha, size,
    classes) or a recipe, with command-line ``overrides`` merged over the recipe and the defaults."""
    from edge_mobilenet.convert.recipe import ensure_trained, load_recipe
    from edge_mobilenet.convert.settings import merge

    if bool(models) == bool(recipe_path):
        raise EdgeError("give either --model (one or more) or --recipe")
    if recipe_path:
        recipe = load_recipe(recipe_path)
        settings = merge(merge(QuantizeSettings(), recipe.overrides), overrides)
        requests = [ModelRequest(ensure_trained(m, Path(recipe.models_dir), settings.progress)
                                 if m.train is not None else m.source,
                                 m.formats or settings.formats, m.alpha, m.size, m.classes)
                    for m in recipe.models]
    else:
        settings = merge(QuantizeSettings(), overrides)
        requests = [ModelRequest(m, settings.formats, *shape) for m in models]
    return quantize(requests, settings)
