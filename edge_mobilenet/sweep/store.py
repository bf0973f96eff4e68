"""A sweep's folder, written by the driver alone::

    OUTPUT/models/      float sources (trained or random weights) + sources.json (variant key -> file, sha256)
    OUTPUT/artifacts/   converted artifacts + manifest.json (the same manifest ``quantize`` writes)
    OUTPUT/results.json the results file (``edge-bench report`` reads it): one run per finished cell,
                        each with ``extra.sweep`` = its cell, content key and attempts
    OUTPUT/.sweep.lock  held while a driver runs: a second driver on the same folder is refused

Every write is atomic and made as a cell finishes, so a killed driver loses at most the cells in flight.
A cell's result replaces a failed result of the same key (a failure is not kept as the cell's answer).
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from edge_mobilenet.contracts.records import RunRecord, Where, check
from edge_mobilenet.contracts.results import SCHEMA, read_results
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import read_json, sha256_file, signals_deferred, write_bytes_atomic, write_json_atomic


def cell_key(run: RunRecord) -> str | None:
    sweep = run.extra.get("sweep") if isinstance(run.extra, dict) else None
    return sweep.get("key") if isinstance(sweep, dict) else None


class SweepStore:
    def __init__(self, output: str | Path):
        self.folder = Path(output)
        self.models = self.folder / "models"
        self.artifacts = self.folder / "artifacts"
        self.results_path = self.folder / "results.json"
        self.sources_path = self.models / "sources.json"
        if self.folder.exists() and not self.folder.is_dir():
            raise EdgeError(f"{self.folder}: sweep output is a file; give a folder")
        self.runs: list[RunRecord] = read_results(self.results_path) if self.results_path.exists() else []
        self.sources: dict[str, dict] = self._read_sources()
        self._lock = None

    # -- the driver's lock -------------------------------------------------------------------------
    def acquire(self) -> None:
        """Hold the folder for this driver (released at exit, also when the process is killed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / ".sweep.lock", "a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise EdgeError(f"{self.folder}: another sweep is running on this folder") from None
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- sources -----------------------------------------------------------------------------------
    def _read_sources(self) -> dict[str, dict]:
        if not self.sources_path.is_file():
            return {}
        where = Where(self.sources_path)
        data = check(read_json(self.sources_path, "sweep sources index"), where, (dict,))
        for key, value in data.items():
            check(value, where / key, (dict,))
            check(value.get("model"), where / key / "model", (str,))
            check(value.get("sha256"), where / key / "sha256", (dict,))
        return data

    def source(self, key: str) -> Path | None:
        """The model file of a variant if it was built from the same inputs and is intact."""
        record = self.sources.get(key)
        if record is None:
            return None
        for name, sha in record["sha256"].items():
            path = self.models / name
            if not path.is_file() or sha256_file(path) != sha:
                return None
        return self.models / record["model"]

    def save_source(self, key: str, built: dict) -> Path:
        """Write a built source's files (``{"model", "files": {name: bytes}}``) and index them."""
        self.models.mkdir(parents=True, exist_ok=True)
        for name, data in built["files"].items():
            if Path(name).name != name:
                raise EdgeError(f"source file name {name!r} is not a plain file name")
            write_bytes_atomic(self.models / name, data)
        shas = {name: sha256_file(self.models / name) for name in built["files"]}
        self.sources[key] = {"model": built["model"], "sha256": shas}
        with signals_deferred():
            write_json_atomic(self.sources_path, self.sources)
        return self.models / built["model"]

    # -- results -----------------------------------------------------------------------------------
    def done(self, key: str) -> RunRecord | None:
        """The finished (ok) run of a cell, or None."""
        return next((r for r in self.runs if cell_key(r) == key and r.ok), None)

    def failed_before(self, key: str) -> RunRecord | None:
        return next((r for r in self.runs if cell_key(r) == key and not r.ok), None)

    def record(self, run: RunRecord) -> None:
        """Add a cell's run, replacing an earlier failed run of the same cell; written at once."""
        key = cell_key(run)
        self.runs = [r for r in self.runs if not (key is not None and cell_key(r) == key)] + [run]
        self.folder.mkdir(parents=True, exist_ok=True)
        with signals_deferred():
            write_json_atomic(self.results_path, {"schema": SCHEMA, "runs": [r.to_json() for r in self.runs]})
