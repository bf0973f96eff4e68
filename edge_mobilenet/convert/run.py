"""``edge-bench quantize``: for each model, reuse what is current, convert the rest, log each artifact."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge_mobilenet.convert.formats import FORMATS
from edge_mobilenet.convert.manifest import Manifest
from edge_mobilenet.convert.pipeline import QuantizeSettings, build_artifact, cache_key
from edge_mobilenet.data.calibration import choose_files, content_hash, load_calibration
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file


@dataclass(frozen=True)
class ModelRequest:
    source: str
    formats: tuple[str, ...]
    alpha: float = 1.0
    size: int = 224
    classes: int = 1000


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _source_file(request: ModelRequest, output_dir: Path) -> Path | None:
    """The float model file if it exists already (registry builds are saved under the output folder)."""
    from edge_mobilenet.models.registry import REGISTRY

    path = Path(request.source)
    if path.exists():
        return path
    if request.source in REGISTRY:
        built = output_dir / f"{request.source}_{request.alpha:g}_{request.size}_random.keras"
        return built if built.exists() else None
    raise EdgeError(f"{request.source}: model file does not exist (and it is not a registered model name)")


def _keys(request: ModelRequest, settings: QuantizeSettings, source: Path) -> dict[str, str]:
    metrics = source.with_name(f"{source.stem}.metrics.json")
    metrics_sha = sha256_file(metrics) if metrics.is_file() else None
    calibration_sha = None
    if any(FORMATS[f].calibrated for f in request.formats):
        files = choose_files(settings.calibration)
        calibration_sha = content_hash(files, Path(settings.calibration.folder))
    source_sha = sha256_file(source)
    return {f: cache_key(source_sha, metrics_sha, FORMATS[f], settings, calibration_sha)
            for f in request.formats}


def _line(entry: dict, status: str) -> str:
    validation = entry.get("validation", {})
    agreement = validation.get("top1_agreement_with_float")
    top1 = validation.get("top1")
    return (f"  {entry['format']:9s} {status:6s} {entry['size_bytes'] / 1024:9.1f} KiB"
            f"  {entry.get('convert_seconds', 0):6.1f} s"
            + (f"  top-1 agreement {agreement:.4f}" if agreement is not None else "")
            + (f"  top-1 {top1:.4f}" if top1 is not None else "")
            + f"  {entry['file']}")


def quantize_model(request: ModelRequest, settings: QuantizeSettings, manifest: Manifest) -> list[dict]:
    """Convert one model into every requested format (reusing current artifacts)."""
    from edge_mobilenet.convert.recipe import load_eval_set, load_float_model

    output_dir = Path(settings.output_dir)
    source = _source_file(request, output_dir)
    keys = _keys(request, settings, source) if source is not None else {}
    stem = source.stem if source is not None else None
    cached = {f: manifest.cached(f"{stem}{FORMATS[f].suffix}", keys[f]) for f in keys}
    todo = [f for f in request.formats if cached.get(f) is None]
    entries = [cached[f] for f in request.formats if cached.get(f) is not None]
    _log(f"{request.source}: {len(entries)} current, {len(todo)} to build")
    for entry in entries:
        _log(_line(entry, "cached"))
    if not todo:
        return entries
    float_model = load_float_model(request.source, alpha=request.alpha, size=request.size,
                                   classes=request.classes, output_dir=output_dir)
    keys = _keys(request, settings, float_model.path)
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
    for request in requests:
        quantize_model(request, settings, manifest)
    manifest.write()
    _log(f"manifest: {manifest.path} ({len(manifest.data['artifacts'])} artifacts, "
         f"{time.perf_counter() - started:.1f} s)")
    return manifest
