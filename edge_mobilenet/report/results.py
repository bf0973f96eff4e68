"""Benchmark results files (written by ``edge-bench bench``): loading, baselines, derived figures.

A results file is ``{"schema": 1, "runs": [...]}``, one run per artifact benchmarked, appended as each
finishes, so one file can hold several sweeps of the same artifacts. Each run is compared with its float
baseline: the run of the same source model on the same device whose format is the run's
``baseline_format`` (``fp32`` for TFLite formats, ``onnx`` for ONNX ones). An ONNX run with no ONNX float
run falls back to the TFLite fp32 run of the same source, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_mobilenet.contracts.formats import FORMATS, format_of_file
from edge_mobilenet.contracts.records import RunRecord
from edge_mobilenet.contracts.results import read_results

RUNTIME_ORDER = ("tflite", "onnx")
FORMAT_ORDER = tuple(FORMATS)


@dataclass(frozen=True)
class RunRow:
    """One run with the figures a report derives from it.

    Attributes:
        run: the run as stored in the results file.
        model: the source model's name (the artifact name without its format suffix).
        baseline: the float run it is compared with, or None.
        baseline_note: how the baseline was chosen when it is not the usual one, else None.
        speed_up_vs_float: baseline p50 / this run's p50 (1.0 for the baseline itself); with interleaved
            rounds, 1 / the median per-round ratio (drift cancels).
        gmac_per_s: MACs / p50 seconds / 1e9.
        delta_top1_vs_float_pt: top-1 minus the float top-1, in percentage points.
        latest: False when a later run of the same artifact (same device, runtime, threads) exists.
    """

    run: RunRecord
    model: str
    baseline: RunRecord | None
    baseline_note: str | None
    speed_up_vs_float: float | None
    gmac_per_s: float | None
    delta_top1_vs_float_pt: float | None
    latest: bool


def load_results(path: str | Path) -> list[RunRecord]:
    """The runs of a results file, validated (one reader: ``contracts.results.read_results``)."""
    return read_results(path)


def model_of(run: RunRecord) -> str:
    """``mobilenet_v1_0.25_32.int8.tflite`` -> ``mobilenet_v1_0.25_32``."""
    name = run.artifact
    fmt = format_of_file(name)
    if fmt is not None:
        return name[: -len(fmt.suffix)]
    return name.rsplit(".", 1)[0]


def source_key(run: RunRecord) -> str:
    """What identifies the source model: its SHA-256, or its name for bare artifacts without one."""
    return run.source_sha256 or model_of(run)


def threads_of(run: RunRecord) -> int | None:
    return (run.settings or {}).get("threads")


def run_key(run: RunRecord) -> tuple:
    """(device, artifact file, runtime kind, threads): runs with equal keys measure the same thing."""
    return run.device_name, run.artifact, run.runtime_kind, threads_of(run)


def p50_ms(run: RunRecord) -> float | None:
    return latency_ms(run, "p50_ms")


def p90_ms(run: RunRecord) -> float | None:
    return latency_ms(run, "p90_ms")


def latency_ms(run: RunRecord, key: str) -> float | None:
    if run.status != "ok":
        return None
    value = (run.latency or {}).get(key)
    return value if isinstance(value, (int, float)) and value > 0 else None


def top1(run: RunRecord) -> float | None:
    """Top-1 as a fraction, or None (random weights, no labels, failed run)."""
    return (run.accuracy or {}).get("top1") if run.status == "ok" else None


def find_baseline(run: RunRecord, runs: list[RunRecord]) -> tuple[RunRecord | None, str | None]:
    """The float run ``run`` is compared with, and a note when it is a fall-back.

    Among several candidates (a file with several sweeps), the one with the same thread count that is
    nearest to ``run`` in the file wins.
    """
    same_source = [r for r in runs if r.status == "ok" and r.device_name == run.device_name
                   and source_key(r) == source_key(run)]
    wanted = run.baseline_format or "fp32"
    exact = [r for r in same_source if r.format == wanted]
    if exact:
        return _nearest(run, exact, runs), None
    if run.runtime_kind == "onnx":
        tflite_float = [r for r in same_source if r.format == "fp32" and r.runtime_kind == "tflite"]
        if tflite_float:
            return _nearest(run, tflite_float, runs), f"vs TFLite fp32: no {wanted} run"
    return None, f"no {wanted} run on this device"


def _nearest(run: RunRecord, candidates: list[RunRecord], runs: list[RunRecord]) -> RunRecord:
    same_threads = [r for r in candidates if threads_of(r) == threads_of(run)] or candidates
    position = _index(run, runs)
    return min(same_threads, key=lambda r: abs(_index(r, runs) - position))


def _index(run: RunRecord, runs: list[RunRecord]) -> int:
    return next(i for i, r in enumerate(runs) if r is run)


def interleaved_ratio(run: RunRecord) -> dict | None:
    """``{"median", "q1", "q3", "baseline"}``: per-round p50 ratio to the float baseline measured in
    alternating rounds in one process (``bench --rounds``), or None."""
    return ((run.latency or {}).get("rounds") or {}).get("ratio_vs_baseline") if run.ok else None


def speed_up(baseline_p50_ms: float | None, run_p50_ms: float | None) -> float | None:
    """How many times faster than the baseline (> 1 is faster)."""
    if not baseline_p50_ms or not run_p50_ms:
        return None
    return baseline_p50_ms / run_p50_ms


def gmac_per_s(macs: int | None, run_p50_ms: float | None) -> float | None:
    """Multiply-accumulates per second at the median latency, in billions."""
    if not macs or not run_p50_ms:
        return None
    return macs / (run_p50_ms / 1e3) / 1e9


def delta_top1_pt(run: RunRecord, baseline: RunRecord | None) -> float | None:
    """Top-1 change vs float in percentage points: the stored figure, else computed from the baseline."""
    if top1(run) is None:
        return None
    stored = (run.accuracy or {}).get("delta_top1_vs_float")
    if isinstance(stored, (int, float)):
        return 100 * stored
    if baseline is not None and top1(baseline) is not None:
        return 100 * (top1(run) - top1(baseline))
    return None


def analyse(runs: list[RunRecord]) -> list[RunRow]:
    """Every run with its baseline and derived figures, ordered by device, model, runtime and format."""
    latest_ids = {id(r) for r in latest_runs(runs)}
    rows = []
    for run in runs:
        baseline, note = find_baseline(run, runs) if run.status == "ok" else (None, None)
        rows.append(RunRow(
            run=run, model=model_of(run), baseline=baseline, baseline_note=note,
            speed_up_vs_float=(1 / interleaved_ratio(run)["median"] if interleaved_ratio(run) else
                               speed_up(p50_ms(baseline) if baseline else None, p50_ms(run))),
            gmac_per_s=gmac_per_s(run.macs, p50_ms(run)),
            delta_top1_vs_float_pt=delta_top1_pt(run, baseline), latest=id(run) in latest_ids))
    return sorted(rows, key=_order(runs))


def latest_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """The last run of each :func:`run_key` (later in the file wins), in file order."""
    last = {run_key(r): r for r in runs}
    kept = {id(r) for r in last.values()}
    return [r for r in runs if id(r) in kept]


def _order(runs: list[RunRecord]):
    devices = list(dict.fromkeys(r.device_name for r in runs))
    models = list(dict.fromkeys(model_of(r) for r in runs))

    def key(row: RunRow) -> tuple:
        run = row.run
        return (devices.index(run.device_name), models.index(row.model),
                order_index(RUNTIME_ORDER, run.runtime_kind), order_index(FORMAT_ORDER, run.format),
                threads_of(run) or 0, _index(run, runs))

    return key


def order_index(order: tuple, value) -> int:
    return order.index(value) if value in order else len(order)


def by_device(rows: list[RunRow]) -> dict[str, list[RunRow]]:
    grouped: dict[str, list[RunRow]] = {}
    for row in rows:
        grouped.setdefault(row.run.device_name, []).append(row)
    return grouped
