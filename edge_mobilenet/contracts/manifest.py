"""The artifacts manifest ``DIR/manifest.json``: the one writer (``Manifest``) and the one reader
(``read_manifest``) of ``{"schema", "created_utc", "tool_versions", "artifacts": [entry, ...]}``.

Entries are ``ArtifactEntry`` records. Schema 1 files (written before entries became task-generic)
load through ``records.migrate_entry``.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edge_mobilenet.contracts.records import ArtifactEntry, Where, check, get
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import locked, read_json, sha256_file, signals_deferred, write_json_atomic

SCHEMA = 2
READABLE_SCHEMAS = (1, 2)
TOOL_PACKAGES = ("edge-mobilenet", "tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "onnx",
                 "onnxruntime", "tf2onnx", "numpy")


def tool_versions() -> dict:
    versions = {}
    for package in TOOL_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


# CPU features whose presence changes which kernels oneDNN / XNNPACK / ONNX Runtime pick (so the
# floating-point rounding of training and calibration, hence the artifact bytes).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm")


def build_environment() -> dict:
    """What an artifact's bytes depend on besides its inputs: the CPU's ISA (oneDNN, used for
    training and calibration, is capped at ``onednn_max_cpu_isa``; LiteRT's and ONNX Runtime's own
    kernels still follow the host's), the oneDNN switches and the Python; with ``tool_versions`` this
    says where the same commit gives the same bytes."""
    import os
    import platform

    flags = set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "python": platform.python_version(),
            "cpu_isa": [f for f in ISA_FLAGS if f in flags],
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "host")}


@dataclass(frozen=True)
class ManifestFile:
    """A manifest as read: its path, folder, schema and entries."""

    path: Path
    schema: int
    entries: tuple[ArtifactEntry, ...]

    @property
    def folder(self) -> Path:
        return self.path.parent

    def entry(self, file_name: str) -> ArtifactEntry | None:
        return next((e for e in self.entries if e.file == file_name), None)

    def artifact_path(self, entry: ArtifactEntry) -> Path:
        """The entry's file inside the manifest's folder; a name reaching outside it is refused."""
        name = Path(entry.file)
        if name.is_absolute() or len(name.parts) != 1 or name.name in ("", ".", ".."):
            raise EdgeError(f"{self.path}: artifact file {entry.file!r} is not a plain file name in "
                            f"{self.folder} (refusing paths that leave the manifest's folder)")
        path = self.folder / name
        if path.is_symlink() and path.resolve().parent != self.folder.resolve():
            raise EdgeError(f"{self.path}: artifact {entry.file} is a symlink out of {self.folder}; refused")
        return path


def read_manifest(path: str | Path, require_artifacts: bool = True) -> ManifestFile:
    """A manifest file (or the manifest.json of a folder), validated entry by entry."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    data = check(read_json(path, "manifest", "(write one with `edge-bench quantize`)"), Where(path),
                 (dict,))
    where = Where(path)
    schema = get(data, "schema", where, (int,), 1)
    if schema not in READABLE_SCHEMAS:
        raise (where / "schema").fail(f"is {schema}; this edge-bench reads schemas "
                                      f"{', '.join(map(str, READABLE_SCHEMAS))} (upgrade edge-mobilenet)")
    artifacts = get(data, "artifacts", where, (list,))
    entries = tuple(ArtifactEntry.from_json(e, where / "artifacts" / i) for i, e in enumerate(artifacts))
    files = [e.file for e in entries]
    if len(set(files)) != len(files):
        raise (where / "artifacts").fail("lists a file twice")
    if require_artifacts and not entries:
        raise where.fail("lists no artifacts")
    return ManifestFile(path, schema, entries)


class Manifest:
    """The writer: entries keyed by file name, rewritten atomically after every artifact.

    Several ``quantize`` runs may write one folder at once: every change is a read-modify-write of
    the file on disk under a lock (``.manifest.lock``), so no run drops another's entries. An artifact
    is moved into place and recorded in one step that SIGINT/SIGTERM cannot split (:meth:`commit`).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / "manifest.json"
        self.lock_path = self.folder / ".manifest.lock"
        self.entries: list[ArtifactEntry] = self._read()

    def _read(self) -> list[ArtifactEntry]:
        return list(read_manifest(self.path, require_artifacts=False).entries) if self.path.is_file() else []

    def commit(self, staged: Path, entry: ArtifactEntry) -> None:
        """Move the finished file ``staged`` onto its name and record ``entry``, as one step."""
        with locked(self.lock_path), signals_deferred():
            os.replace(staged, self.folder / entry.file)
            self._upsert_locked(entry)

    def _upsert_locked(self, entry: ArtifactEntry) -> None:
        self.entries = [e for e in self._read() if e.file != entry.file] + [entry]
        self._write_locked()

    def entry(self, file_name: str) -> ArtifactEntry | None:
        return next((e for e in self.entries if e.file == file_name), None)

    def cached(self, file_name: str, cache_key: str) -> ArtifactEntry | None:
        """The entry for ``file_name`` if it was made from the same inputs and the file is intact."""
        entry = self.entry(file_name)
        path = self.folder / file_name
        if (entry and entry.facts.get("cache_key") == cache_key and path.is_file()
                and entry.sha256 == sha256_file(path)):
            return entry
        return None

    def upsert(self, entry: ArtifactEntry) -> None:
        with locked(self.lock_path), signals_deferred():
            self._upsert_locked(entry)

    def write(self) -> None:
        """Rewrite the file with what is on disk now (other runs' entries included)."""
        with locked(self.lock_path), signals_deferred():
            self.entries = self._read()
            self._write_locked()

    def _write_locked(self) -> None:
        write_json_atomic(self.path, {
            "schema": SCHEMA,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tool_versions": tool_versions(), "artifacts": [e.to_json() for e in self.entries]})
