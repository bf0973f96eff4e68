"""``edge-bench compare OLD NEW --fail-on p50:10%``: regressions between two results files.

Runs are matched by (device, artifact file name, runtime kind, threads); when a file holds several runs of
one key, its latest counts. Latency thresholds are relative (``p50:10%``: p50 more than 10 % slower);
accuracy thresholds are absolute drops in percentage points (``top1:0.5pt``; detectors: ``map:1pt``,
``map50:1pt``, COCO mAP in percent). Latencies measured under
emulation or while the device throttled are shown but never checked, nor is top-1 measured on different
image sets. A run that was ok in OLD and failed in NEW is a regression whenever a threshold is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_mobilenet.contracts.records import RunRecord
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.report import results as res
from edge_mobilenet.text import text_table


def _detection(run: RunRecord, key: str) -> float | None:
    """A detection run's COCO mAP (``map``: @[.5:.95], ``map50``) in percent, or None."""
    value = (run.accuracy or {}).get(key) if run.status == "ok" else None
    return None if value is None else 100 * float(value)


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # "%": relative increase is worse; "pt": absolute drop (in points) is worse
    value: Callable[[dict], float | None]
    header: str


METRICS = {m.name: m for m in (
    Metric("p50", "%", res.p50_ms, "p50 ms"),
    Metric("p90", "%", res.p90_ms, "p90 ms"),
    Metric("p99", "%", lambda run: res.latency_ms(run, "p99_ms"), "p99 ms"),
    Metric("mean", "%", lambda run: res.latency_ms(run, "mean_ms"), "mean ms"),
    Metric("top1", "pt", lambda run: None if res.top1(run) is None else 100 * res.top1(run), "top-1 %"),
    Metric("map", "pt", lambda run: _detection(run, "map"), "mAP %"),
    Metric("map50", "pt", lambda run: _detection(run, "map50"), "mAP@0.5 %"),
)}
SHOWN_METRICS = ("p50", "p90", "top1")


@dataclass(frozen=True)
class Threshold:
    """``p50:10%`` -> Threshold(METRICS["p50"], 10.0)."""

    metric: Metric
    limit: float

    def __str__(self) -> str:
        return f"{self.metric.name}:{self.limit:g}{self.metric.unit}"


def parse_fail_on(spec: str) -> Threshold:
    match = re.fullmatch(r"\s*([a-z0-9]+):([0-9]*\.?[0-9]+)\s*(%|pt)\s*", spec)
    if not match or match.group(1) not in METRICS:
        raise EdgeError(f"--fail-on {spec!r}: expected METRIC:LIMIT such as p50:10% or top1:0.5pt "
                        f"(metrics: {', '.join(METRICS)})")
    metric = METRICS[match.group(1)]
    if match.group(3) != metric.unit:
        raise EdgeError(f"--fail-on {spec!r}: {metric.name} takes a limit in {metric.unit} "
                        f"(latencies in %, {'/'.join(m.name for m in METRICS.values() if m.unit == 'pt')} "
                        "in points: pt)")
    return Threshold(metric, float(match.group(2)))


def change(metric: Metric, old: float | None, new: float | None) -> float | None:
    """Relative change in % for latencies, difference in points for accuracy; None when unknown."""
    if old is None or new is None:
        return None
    if metric.unit == "pt":
        return new - old
    return 100 * (new - old) / old if old else None


def crossed(threshold: Threshold, old_run: RunRecord, new_run: RunRecord) -> str | None:
    """A description of the regression, or None."""
    metric = threshold.metric
    delta = change(metric, metric.value(old_run), metric.value(new_run))
    if delta is None:
        return None
    if metric.unit == "pt":
        return f"{metric.name} {delta:+.2f}pt < -{threshold.limit:g}pt" if -delta > threshold.limit else None
    return f"{metric.name} {delta:+.1f}% > {threshold.limit:g}%" if delta > threshold.limit else None


def unchecked_reason(unit: str, old_run: RunRecord, new_run: RunRecord) -> str | None:
    """Why thresholds in ``unit`` (% latency, pt accuracy) can't be checked for this pair, or None."""
    if unit == "%":
        if old_run.emulated or new_run.emulated:
            return "latency not checked: emulated"
        if old_run.valid is False or new_run.valid is False:
            return "latency not checked: invalid run (throttled)"
        return None
    old_set, new_set = _eval_set(old_run), _eval_set(new_run)
    if old_set != new_set:
        return f"top-1 not checked: different images ({old_set[1]} vs {new_set[1]})"
    return None


def _eval_set(run: RunRecord) -> tuple:
    return (run.settings or {}).get("eval_dir"), (run.accuracy or {}).get("images")


def verdict(old_run: RunRecord, new_run: RunRecord, thresholds: list[Threshold]) -> tuple[str, bool]:
    """(text for the verdict column, whether it is a regression)."""
    if new_run.status != "ok":
        failed = f"FAILED in new: {new_run.error or 'no error recorded'}"
        return (f"REGRESSION: {failed}", True) if old_run.status == "ok" and thresholds else (failed, False)
    if old_run.status != "ok":
        return "fixed: failed in old", False
    reasons = {unit: unchecked_reason(unit, old_run, new_run) for unit in {t.metric.unit for t in thresholds}}
    checked = [t for t in thresholds if reasons[t.metric.unit] is None]
    found = [text for t in checked if (text := crossed(t, old_run, new_run))]
    notes = [reason for reason in reasons.values() if reason]
    if found:
        return "REGRESSION: " + "; ".join(found + notes), True
    return "; ".join(["ok"] + notes), False


def _cell(metric: Metric, old_run: RunRecord, new_run: RunRecord) -> str:
    old, new = metric.value(old_run), metric.value(new_run)
    if old is None and new is None:
        return "n/a"
    digits = ".2f" if metric.unit == "pt" else ".4g"
    shown = ["n/a" if value is None else format(value, digits) for value in (old, new)]
    text = f"{shown[0]} → {shown[1]}"
    delta = change(metric, old, new)
    if delta is not None:
        text += f" ({delta:+.2f}pt)" if metric.unit == "pt" else f" ({delta:+.1f}%)"
    return text


def _describe(key: tuple) -> str:
    device, artifact, runtime_kind, threads = key
    return f"{device}/{artifact} ({runtime_kind}, threads {threads if threads is not None else 'n/a'})"


def compare(old_path: str | Path, new_path: str | Path, fail_on: list[str]) -> tuple[str, bool]:
    """A table of OLD → NEW per matched run, with regressions marked, and the unmatched runs.

    Returns:
        (text to print, whether any ``fail_on`` threshold was crossed).
    """
    thresholds = [parse_fail_on(spec) for spec in fail_on]
    old = {res.run_key(r): r for r in res.latest_runs(res.load_results(old_path))}
    new = {res.run_key(r): r for r in res.latest_runs(res.load_results(new_path))}
    matched = [key for key in new if key in old]
    rows, regressions = [], 0
    for key in matched:
        text, regressed = verdict(old[key], new[key], thresholds)
        regressions += regressed
        rows.append([key[0], key[1], key[2], "n/a" if key[3] is None else str(key[3])]
                    + [_cell(METRICS[m], old[key], new[key]) for m in SHOWN_METRICS] + [text])
    headers = ["device", "artifact", "runtime", "threads"] + [METRICS[m].header for m in SHOWN_METRICS]
    lines = [f"old: {old_path} ({len(old)} runs)   new: {new_path} ({len(new)} runs)", ""]
    lines.append(text_table(headers + ["verdict"], rows, "l" * (len(headers) + 1)) if rows
                 else "no run matched (device, artifact, runtime, threads)")
    for label, only in (("only in old", [k for k in old if k not in new]),
                        ("only in new", [k for k in new if k not in old])):
        lines += [""] + [f"{label}: {_describe(k)}" for k in only] if only else []
    limits = ", ".join(str(t) for t in thresholds) or "none given (--fail-on): nothing is flagged"
    lines += ["", f"{len(matched)} matched, {regressions} regression(s); thresholds: {limits}"]
    if thresholds and not matched:
        lines.append("nothing was compared: no run of NEW matches a run of OLD, so --fail-on cannot pass")
        return "\n".join(lines), True
    return "\n".join(lines), regressions > 0
