"""The bench stage as sweep cells: one artifact on one device at one thread count, in a worker.

The artifact arrives as bytes with its manifest entry (Ray's object store carries them to the node that
holds the device) and is written into a node-local cache keyed by its sha256. A transport failure (the
connection refused or cut, a copy failing) is retried with exponential backoff; after the last attempt
the cell is a failed run that says why. A failure of the model itself (the runner fails, times out) is
not retried: the same bytes would fail the same way.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from edge_mobilenet.contracts.records import ArtifactEntry, RunRecord, Where
from edge_mobilenet.errors import EdgeError

# Transport errors no retry can mend: they need the user.
PERMANENT = ("host key", "permission denied", "no such device profile", "command not found",
             "cannot resolve the host name", "has no numpy", "install Python")


def check_device(spec: str) -> dict:
    """A sweep's device (a profile name or a .toml path): ``{"name", "transport", "settings"}``."""
    from edge_mobilenet.bench.devices import load_profile

    profile = load_profile(spec)
    settings = {k: v for k, v in asdict(profile).items() if k != "description"}
    return {"name": profile.name, "transport": profile.transport, "settings": settings}


def check_bench(overrides: dict, where: str) -> None:
    from edge_mobilenet.bench.harness import BenchSettings

    try:
        BenchSettings(**overrides)
    except EdgeError as error:
        raise EdgeError(f"{where}: bench: {error}") from None


def _materialise(entry_json: dict, data: bytes) -> Path:
    """The artifact in this node's cache (``$TMPDIR/edge-sweep-artifacts/SHA/``) with a one-entry manifest."""
    from edge_mobilenet.contracts.manifest import Manifest
    from edge_mobilenet.fileio import locked, sha256_file, write_bytes_atomic

    entry = ArtifactEntry.from_json(entry_json, Where("bench cell"))
    folder = Path(tempfile.gettempdir()) / "edge-sweep-artifacts" / entry.sha256
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / entry.file
    with locked(folder / ".lock"):
        if not (path.is_file() and sha256_file(path) == entry.sha256):
            staged = folder / f".{entry.file}.partial"
            write_bytes_atomic(staged, data)
            if sha256_file(staged) != entry.sha256:
                staged.unlink()
                raise EdgeError(f"{entry.file}: bytes received do not match the manifest's sha256")
            Manifest(folder).commit(staged, entry)
    return path


def _profile(device: str):
    from edge_mobilenet.bench.devices import load_profile
    from edge_mobilenet.bench.provision import device_python

    profile = load_profile(device)
    python = profile.python or device_python(profile)
    return replace(profile, python=python) if python else profile


def _failed(entry: ArtifactEntry, device: str, error: str, settings: dict) -> RunRecord:
    return RunRecord(status="failed", artifact=entry.file, format=entry.format, runtime_kind=entry.runtime,
                     device_name=device, baseline_format=entry.baseline, task=entry.task,
                     timestamp_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     source_sha256=entry.source_sha256, sha256=entry.sha256, size_bytes=entry.size_bytes,
                     params=entry.params, macs=entry.macs, settings=settings, error=error)


def _permanent(error: str) -> bool:
    return any(p.lower() in error.lower() for p in PERMANENT)


def bench(entry_json: dict, data: bytes, device: str, threads: int, overrides: dict, attempts: int = 3,
          backoff_seconds: float = 2.0) -> dict:
    """Run one artifact on ``device``; ``{"run": RunRecord JSON, "attempts": n, "errors": [...]}``."""
    from edge_mobilenet.bench.artifacts import resolve_artifacts
    from edge_mobilenet.bench.devices import make_transport
    from edge_mobilenet.bench.harness import BenchSettings, bench as run_bench
    from edge_mobilenet.contracts.results import ResultsFile

    path = _materialise(entry_json, data)
    artifacts = resolve_artifacts([str(path)])
    profile = _profile(device)
    settings = BenchSettings(**{"threads": threads, "runtime": profile.runtime, "cpus": profile.cpus,
                                **overrides})
    errors: list[str] = []
    for attempt in range(1, attempts + 1):
        with tempfile.TemporaryDirectory(prefix="edge-sweep-bench-") as folder:
            try:
                records = run_bench(artifacts, make_transport(profile), profile.name, settings,
                                    ResultsFile(Path(folder) / "run.json"), log=lambda line: None)
                return {"run": records[0].to_json(), "attempts": attempt, "errors": errors}
            except EdgeError as error:
                errors.append(str(error))
        if _permanent(errors[-1]) or attempt == attempts:
            break
        time.sleep(backoff_seconds * 2 ** (attempt - 1))
    reason = f"transport: {errors[-1]} (after {len(errors)} attempt{'s' if len(errors) > 1 else ''})"
    settings_json = {k: v for k, v in asdict(settings).items() if k != "benchmark_binary"}
    return {"run": _failed(artifacts[0].entry, profile.name, reason, settings_json).to_json(),
            "attempts": len(errors), "errors": errors}
