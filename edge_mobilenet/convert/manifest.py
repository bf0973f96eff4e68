"""The artifacts manifest: one entry per file, rewritten atomically after every artifact."""

from __future__ import annotations

import datetime as _dt
import json
from importlib import metadata
from pathlib import Path

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file, write_json_atomic

SCHEMA = 1
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


class Manifest:
    """``DIR/manifest.json``: ``{"schema", "created_utc", "tool_versions", "artifacts": [...]}``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / "manifest.json"
        self.data = {"schema": SCHEMA, "created_utc": None, "tool_versions": tool_versions(),
                     "artifacts": []}
        if self.path.is_file():
            try:
                existing = json.loads(self.path.read_text())
            except json.JSONDecodeError as error:
                raise EdgeError(f"{self.path}: not valid JSON ({error.msg} at line {error.lineno})") from None
            if existing.get("schema") == SCHEMA:
                self.data["artifacts"] = existing.get("artifacts", [])

    def entry(self, file_name: str) -> dict | None:
        return next((a for a in self.data["artifacts"] if a["file"] == file_name), None)

    def cached(self, file_name: str, cache_key: str) -> dict | None:
        """The entry for ``file_name`` if it was made from the same inputs and the file is intact."""
        entry = self.entry(file_name)
        path = self.folder / file_name
        if (entry and entry.get("cache_key") == cache_key and path.is_file()
                and entry.get("sha256") == sha256_file(path)):
            return entry
        return None

    def upsert(self, entry: dict) -> None:
        self.data["artifacts"] = [a for a in self.data["artifacts"] if a["file"] != entry["file"]]
        self.data["artifacts"].append(entry)
        self.write()

    def write(self) -> None:
        self.data["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(self.path, self.data)


def load_manifest(path: str | Path) -> dict:
    """Read a manifest file (or the manifest.json of a folder) for tools downstream."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise EdgeError(f"{path}: manifest does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EdgeError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, dict) or "artifacts" not in data:
        raise EdgeError(f"{path}: not an edge-mobilenet manifest (no 'artifacts' list)")
    return data
