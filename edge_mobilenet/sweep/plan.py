"""A sweep's cells, each keyed by content, and what is already done (``--dry-run`` prints it).

A bench cell's key is a digest of everything its result depends on: the variant (model row, the source's
own key: calibration images, training settings, oneDNN code path, or a model file's bytes), the format
and the options it takes, the device's settings, the thread count, the bench settings and the tool
versions. It is known before any source is built, so a re-run skips finished cells without work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_mobilenet.contracts.manifest import tool_versions
from edge_mobilenet.fileio import sha256_file
from edge_mobilenet.sweep.spec import Device, Sweep, Variant, digest
from edge_mobilenet.sweep.store import SweepStore


@dataclass(frozen=True)
class BenchCell:
    variant: Variant
    fmt: str
    device: Device
    threads: int
    key: str

    @property
    def label(self) -> str:
        return f"{self.variant.label} / {self.fmt} / {self.device.name} / {self.threads}t"

    def info(self, sweep: Sweep, attempts: int) -> dict:
        """What the results file keeps of the cell (``extra.sweep``)."""
        v = self.variant
        shape = {} if v.is_file else {"alpha": v.alpha, "size": v.size, "classes": None if v.train else v.classes}
        return {"sweep": sweep.name, "cell": self.label, "key": self.key,
                "model": Path(v.source).stem if v.is_file else v.source, **shape, "trained": bool(v.train) or v.is_file,
                "format": self.fmt, "device": self.device.name, "threads": self.threads, "attempts": attempts}


@dataclass
class Plan:
    sweep: Sweep
    calibration_sha: str | None
    source_keys: dict[Variant, str]
    cells: list[BenchCell]


def _needs_calibration(sweep: Sweep, stages) -> bool:
    from edge_mobilenet.contracts.formats import FORMATS

    random = any(not v.train and not v.is_file for v in sweep.variants)
    return random or any(FORMATS[f].calibrated for v in sweep.variants for f in v.formats)


def source_key(variant: Variant, sweep: Sweep, stages, calibration_sha: str | None) -> str:
    if variant.is_file:
        path = Path(variant.source)
        metrics = path.with_name(f"{path.stem}.metrics.json")
        return digest({"file": sha256_file(path), "metrics": sha256_file(metrics) if metrics.is_file() else None})
    return stages.source_key(variant.row(), sweep.quantize_settings, None if variant.train else calibration_sha)


def make_plan(sweep: Sweep, stages) -> Plan:
    """Every bench cell of the grid with its key (hashes the calibration images once)."""
    calibration_sha = stages.calibration_hash(sweep.quantize_settings) if _needs_calibration(sweep, stages) else None
    keys = {v: source_key(v, sweep, stages, calibration_sha) for v in sweep.variants}
    versions = tool_versions()
    cells = []
    for variant, fmt, device, threads in sweep.bench_cells():
        key = digest({"source": keys[variant], "row": variant.row(), "format": fmt,
                      "quantize": sweep.quantize, "calibration": calibration_sha, "device": device.settings,
                      "threads": threads, "bench": sweep.bench_for(device), "tools": versions})
        cells.append(BenchCell(variant, fmt, device, threads, key))
    return Plan(sweep, calibration_sha, keys, cells)


def describe(plan: Plan, store: SweepStore) -> list[str]:
    """Lines for ``--dry-run``: each variant's source, each cell's state, and the totals."""
    lines, done, failed = [], 0, 0
    for variant in plan.sweep.variants:
        source = store.source(plan.source_keys[variant]) if not variant.is_file else Path(variant.source)
        how = "model file" if variant.is_file else ("train" if variant.train else "random weights")
        lines.append(f"{variant.label}: source {'current' if source else 'to build'} ({how})")
        for cell in (c for c in plan.cells if c.variant == variant):
            state = "to run"
            if store.done(cell.key):
                state, done = "done", done + 1
            elif (before := store.failed_before(cell.key)) is not None:
                state, failed = f"to re-run (failed before: {before.error})", failed + 1
            lines.append(f"  {cell.fmt:9s} {cell.device.name:10s} {cell.threads}t  {state}")
    total = len(plan.cells)
    lines.append(f"{total} cells: {done} done, {total - done} to run ({failed} failed before); "
                 f"results -> {store.results_path}")
    return lines
