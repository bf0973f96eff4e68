"""The convert stage as sweep cells: a float source, then one artifact per task, in a worker's own folder.

Workers share no disk with the driver: inputs arrive as bytes and outputs go back as bytes (Ray's object
store carries them), so a cell runs the same on the driver's machine or on any node of a cluster. The
driver alone writes the sweep's folder (:func:`commit_artifact`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

from edge_mobilenet.contracts.formats import FORMATS
from edge_mobilenet.contracts.manifest import Manifest, read_manifest
from edge_mobilenet.contracts.records import ArtifactEntry, Where
from edge_mobilenet.convert.settings import QuantizeSettings, merge
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file


def check_model(row: dict, where: Where) -> None:
    """A sweep's model row, checked as a recipe row (known name or a model file, train table)."""
    from edge_mobilenet.convert.recipe import model_recipe
    from edge_mobilenet.models.registry import REGISTRY

    recipe = model_recipe(row, where)
    if "file" in row:
        from edge_mobilenet.train import checked_model_path

        try:
            checked_model_path(recipe.source)
        except EdgeError as error:
            raise where.fail(str(error)) from None
    elif recipe.source not in REGISTRY:
        raise (where / "name").fail(f"{recipe.source!r} is not a registered model ({', '.join(REGISTRY)})")


def check_quantize(overrides: dict, where: str) -> QuantizeSettings:
    try:
        return merge(QuantizeSettings(progress=False), overrides)
    except EdgeError as error:
        raise EdgeError(f"{where}: {error}") from None


def calibration_hash(settings: QuantizeSettings) -> str:
    from edge_mobilenet.convert.batch import calibration_hash as hash_of

    return hash_of(settings)


def source_key(row: dict, settings: QuantizeSettings, calibration_sha: str) -> str:
    """What a registry source's bytes depend on: the row, the calibration images (random weights take
    their batch-norm statistics from them) and oneDNN's code path (it decides trained weights)."""
    import hashlib
    import json

    from edge_mobilenet.convert.pipeline import PIPELINE_VERSION

    key = {"row": row, "calibration": calibration_sha, "pipeline": PIPELINE_VERSION,
           "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _collect(model: Path) -> dict[str, bytes]:
    metrics = model.with_name(f"{model.stem}.metrics.json")
    return {p.name: p.read_bytes() for p in (model, metrics) if p.is_file()}


def build_source(row: dict, settings: QuantizeSettings) -> dict:
    """Train a registry model on the default task (``row["train"]``) or build it with random weights
    (batch-norm statistics from the calibration images); ``{"model": file name, "files": {name: bytes}}``."""
    from edge_mobilenet.convert.recipe import model_recipe
    from edge_mobilenet.quiet import native_noise_filtered

    recipe = model_recipe(row, Where("sweep"))
    with tempfile.TemporaryDirectory(prefix="edge-sweep-source-") as folder, native_noise_filtered():
        if recipe.train is not None:
            from edge_mobilenet.convert.recipe import ensure_trained

            model = Path(ensure_trained(recipe, Path(folder), progress=False))
        else:
            from edge_mobilenet.convert.sources import prepare_random_source

            model = prepare_random_source(recipe.source, alpha=recipe.alpha, size=recipe.size,
                                          classes=recipe.classes, output_dir=Path(folder),
                                          calibration=settings.calibration)
        return {"model": model.name, "files": _collect(model)}


def file_source(path: str) -> dict:
    """A model file of the sweep as a source: its bytes and its metrics JSON's, read on the driver."""
    return {"model": Path(path).name, "files": _collect(Path(path))}


def artifact_name(model_file: str, fmt: str) -> str:
    return f"{Path(model_file).stem}{FORMATS[fmt].suffix}"


def artifact_key(model_path: Path, fmt: str, settings: QuantizeSettings, calibration_sha: str | None) -> str:
    """The artifact's cache key (as ``quantize`` computes it), without TensorFlow."""
    from edge_mobilenet.convert.pipeline import cache_key

    metrics = model_path.with_name(f"{model_path.stem}.metrics.json")
    return cache_key(sha256_file(model_path), sha256_file(metrics) if metrics.is_file() else None,
                     FORMATS[fmt], settings, calibration_sha)


def convert(source: dict, fmt: str, settings: QuantizeSettings, calibration_sha: str | None) -> dict:
    """One artifact from a source's bytes: ``{"entry": manifest entry JSON, "data": bytes}``."""
    import contextlib
    import io

    from edge_mobilenet.convert.batch import ModelRequest, quantize_model
    from edge_mobilenet.quiet import native_noise_filtered

    with tempfile.TemporaryDirectory(prefix="edge-sweep-convert-") as folder:
        sources, out = Path(folder) / "source", Path(folder) / "artifacts"
        sources.mkdir()
        for name, data in source["files"].items():
            (sources / name).write_bytes(data)
        settings = replace(settings, output_dir=str(out), progress=False, formats=(fmt,))
        log = io.StringIO()
        with contextlib.redirect_stderr(log), native_noise_filtered():
            entries = quantize_model(ModelRequest(str(sources / source["model"]), (fmt,)), settings,
                                     Manifest(out), calibration_sha)
        entry = entries[0]
        return {"entry": entry.to_json(), "data": (out / entry.file).read_bytes()}


def cached_artifact(folder: Path, name: str, key: str) -> dict | None:
    """The manifest entry JSON of ``folder/name`` if it was made from the same inputs and is intact."""
    if not (folder / "manifest.json").is_file():
        return None
    entry = Manifest(folder).cached(name, key)
    return entry.to_json() if entry is not None else None


def commit_artifact(folder: Path, result: dict, source_path: Path) -> dict:
    """Write a converted cell's artifact into the sweep's folder and record it (one step)."""
    from edge_mobilenet.fileio import write_bytes_atomic

    entry = ArtifactEntry.from_json(result["entry"], Where("convert cell"))
    entry = replace(entry, source_file=str(source_path))
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f".{entry.file}.partial"
    write_bytes_atomic(staged, result["data"])
    if sha256_file(staged) != entry.sha256:
        staged.unlink()
        raise EdgeError(f"{entry.file}: bytes received from the convert cell do not match its sha256")
    Manifest(folder).commit(staged, entry)
    return entry.to_json()


def manifest_entries(folder: Path) -> dict[str, dict]:
    if not (folder / "manifest.json").is_file():
        return {}
    return {e.file: e.to_json() for e in read_manifest(folder / "manifest.json", require_artifacts=False).entries}

