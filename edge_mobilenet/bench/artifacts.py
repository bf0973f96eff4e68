"""What ``bench`` runs: artifacts from manifests (validated, never trusted) or bare .tflite/.onnx files.

A manifest entry's file must be a plain name inside the manifest's folder and its bytes must match the
entry's sha256 before anything is pushed to a device. A file that did not come from ``quantize`` (a
downloaded model) gets a full entry too: its tensor specs from the file, its preprocessing from
``--preprocessing`` (or mean/std), and accuracy whenever ``--eval`` gives labelled images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_mobilenet.contracts.formats import format_of_file
from edge_mobilenet.contracts.manifest import read_manifest
from edge_mobilenet.contracts.records import ArtifactEntry
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file

PREPROCESSING_PRESETS = {"symmetric": (127.5, 127.5), "raw": (0.0, 1.0), "unit": (0.0, 255.0)}


@dataclass(frozen=True)
class Artifact:
    path: Path
    entry: ArtifactEntry


def preprocessing_from(name: str | None = None, mean: float | None = None, std: float | None = None,
                       crop_fraction: float = 0.875) -> dict:
    """``--preprocessing NAME`` or ``--mean/--std`` for bare artifacts (default: symmetric [-1, 1])."""
    if name is not None and name not in PREPROCESSING_PRESETS:
        raise EdgeError(f"--preprocessing must be one of {', '.join(PREPROCESSING_PRESETS)}; received {name!r}")
    preset_mean, preset_std = PREPROCESSING_PRESETS[name or "symmetric"]
    mean, std = preset_mean if mean is None else mean, preset_std if std is None else std
    if std == 0:
        raise EdgeError("--std must not be 0")
    label = name or ("symmetric" if (mean, std) == PREPROCESSING_PRESETS["symmetric"] else "custom")
    return {"name": label, "mean": float(mean), "std": float(std), "crop_fraction": crop_fraction}


def infer_entry(path: Path, preprocessing: dict) -> ArtifactEntry:
    """An entry for a .tflite/.onnx file without a manifest: specs read from the file itself."""
    from edge_mobilenet.runtimes.sessions import artifact_specs

    fmt = format_of_file(path.name)
    runtime = "onnx" if path.suffix == ".onnx" else "tflite"
    input_spec, output_specs = artifact_specs(path)
    name = fmt.name if fmt else ("int8" if input_spec.quantized else ("onnx" if runtime == "onnx" else "fp32"))
    return ArtifactEntry(file=path.name, format=name, runtime=runtime,
                         baseline=fmt.baseline if fmt else ("onnx" if runtime == "onnx" else "fp32"),
                         sha256=sha256_file(path), size_bytes=path.stat().st_size, input=input_spec,
                         preprocessing=preprocessing, outputs=output_specs, trained_weights=True,
                         facts={"inferred": True})


def _checked(manifest, entry: ArtifactEntry) -> Artifact:
    path = manifest.artifact_path(entry)
    if not path.is_file():
        raise EdgeError(f"{path}: listed in {manifest.path} but missing")
    if sha256_file(path) != entry.sha256:
        raise EdgeError(f"{path}: its sha256 differs from {manifest.path}'s entry (the file was replaced "
                        "or modified after quantize); re-run edge-bench quantize")
    return Artifact(path, entry)


def resolve_artifacts(paths: list[str], preprocessing: dict | None = None) -> list[Artifact]:
    """Folders (with a manifest.json), manifest files, or .tflite/.onnx files; baselines first."""
    found: list[Artifact] = []
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise EdgeError(f"{path}: does not exist")
        if path.is_dir() or path.name == "manifest.json":
            if path.is_dir() and not (path / "manifest.json").is_file():
                raise EdgeError(f"{path}: folder has no manifest.json (run edge-bench quantize, or list files)")
            manifest = read_manifest(path)
            found += [_checked(manifest, e) for e in manifest.entries]
            continue
        if path.suffix not in (".tflite", ".onnx"):
            raise EdgeError(f"{path}: not a .tflite or .onnx artifact")
        sibling = path.parent / "manifest.json"
        manifest = read_manifest(sibling, require_artifacts=False) if sibling.is_file() else None
        entry = manifest.entry(path.name) if manifest else None
        found.append(_checked(manifest, entry) if entry else Artifact(path, infer_entry(path, preprocessing
                                                                                        or preprocessing_from())))
    return sorted(found, key=lambda a: (a.entry.source_sha256 or "", not a.entry.is_baseline,
                                        a.entry.runtime != "tflite"))
