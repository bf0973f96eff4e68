"""``edge-bench report``: a results file -> PREFIX.md, PREFIX.csv and two PNG plots.

Per device: the device facts (machine, CPU, features, cores, governor, runtimes), an EMULATED label when
the board runs under emulation (its latencies are meaningless), warnings, invalid and failed runs; then one
table of the latest run of each artifact. The CSV holds every run, with the device fields.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_mobilenet.contracts.records import RunRecord
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import write_text_atomic
from edge_mobilenet.report import results as res
from edge_mobilenet.report.results import RunRow
from edge_mobilenet.text import markdown_table


@dataclass(frozen=True)
class Column:
    """A report column: its header, its value (a number for the CSV) and how Markdown shows it."""

    header: str
    value: Callable[[RunRow], object]
    shown: Callable[[object], str] = str


def _number(spec: str) -> Callable[[object], str]:
    return lambda v: "n/a" if v is None else format(v, spec)


def _runtime(row: RunRow) -> str | None:
    runtime = row.run.runtime or {}
    name = runtime.get("name") or row.run.runtime_kind
    return f"{name} {runtime['version']}" if runtime.get("version") else name


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 4)


def _xnnpack(row: RunRow) -> str | None:
    runtime = row.run.runtime or {}
    if not runtime.get("nodes_total"):
        return "off" if runtime.get("xnnpack") is False and row.run.runtime_kind == "tflite" else None
    return f"{runtime['nodes_delegated']}/{runtime['nodes_total']} ({runtime.get('partitions')})"


def split_flag(run: RunRecord) -> str:
    """``⚠ split: HARD_SWISH×19, SOFTMAX×1`` when the delegate split the graph, else empty."""
    runtime = run.runtime or {}
    if not runtime.get("split"):
        return ""
    outside = ", ".join(f"{op}×{count}" for op, count in (runtime.get("ops_outside") or {}).items())
    return f"⚠ split: {outside or str(runtime.get('partitions')) + ' partitions'}"


def notes(row: RunRow) -> str:
    run = row.run
    if run.status != "ok":
        return f"FAILED: {run.error or 'no error recorded'}"
    ratio = res.interleaved_ratio(run)
    interleaved = (f"interleaved {ratio['median']:.2f}× float time (IQR {ratio['q1']:.2f}–{ratio['q3']:.2f})"
                   if ratio and ratio["baseline"] != run.artifact else "")
    found = [split_flag(run), row.baseline_note or "", interleaved]
    if run.valid is False:
        found.append("INVALID: the device throttled during the run")
    return "; ".join(n for n in found if n)


COLUMNS = (
    Column("model", lambda r: r.model),
    Column("format", lambda r: r.run.format),
    Column("runtime", _runtime),
    Column("size KiB", lambda r: round(r.run.size_bytes / 1024, 2) if r.run.size_bytes else None,
           _number(".1f")),
    Column("top-1 %", lambda r: _percent(res.top1(r.run)), _number(".2f")),
    Column("Δ top-1 vs float (pt)", lambda r: r.delta_top1_vs_float_pt, _number("+.2f")),
    Column("agreement %", lambda r: _percent((r.run.accuracy or {}).get("agreement_with_float")
                                             if r.run.status == "ok" else None), _number(".1f")),
    Column("p50 ms", lambda r: res.p50_ms(r.run), _number(".4g")),
    Column("p90 ms", lambda r: res.p90_ms(r.run), _number(".4g")),
    Column("speed-up vs float", lambda r: r.speed_up_vs_float,
           lambda v: "n/a" if v is None else f"{v:.2f}×"),
    Column("GMAC/s", lambda r: r.gmac_per_s, _number(".3g")),
    Column("XNNPACK delegated/total (partitions)", _xnnpack, lambda v: "n/a" if v is None else v),
    Column("notes", notes),
)

DEVICE_COLUMNS = (
    ("device_name", lambda run, dev: run.device_name), ("transport", lambda run, dev: run.transport),
    ("emulated", lambda run, dev: bool(run.emulated)), ("valid", lambda run, dev: run.valid),
    ("status", lambda run, dev: run.status), ("machine", lambda run, dev: dev.get("machine")),
    ("cpu_part", lambda run, dev: dev.get("cpu_part")), ("asimddp", lambda run, dev: dev.get("asimddp")),
    ("cores", lambda run, dev: dev.get("cores")),
    ("governors", lambda run, dev: " ".join(dev.get("governors") or [])),
    ("threads", lambda run, dev: res.threads_of(run)), ("artifact", lambda run, dev: run.artifact),
    ("timestamp_utc", lambda run, dev: run.timestamp_utc),
    ("commit", lambda run, dev: (run.commit or {}).get("sha")),
)


def markdown_rows(rows: list[RunRow]) -> list[list[str]]:
    return [[_cell(column.shown(column.value(row))) for column in COLUMNS] for row in rows]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def csv_text(rows: list[RunRow]) -> str:
    """One row per run (superseded runs too, ``latest`` false), the table columns plus device fields."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _ in DEVICE_COLUMNS] + [c.header for c in COLUMNS[1:]]
                    + ["latest", "baseline_artifact"])
    for row in rows:
        device = row.run.device or {}
        writer.writerow([_csv_value(get(row.run, device)) for _, get in DEVICE_COLUMNS]
                        + [_csv_value(c.value(row)) for c in COLUMNS[1:]]
                        + [row.latest, row.baseline.artifact if row.baseline else ""])
    return buffer.getvalue()


def _csv_value(value) -> object:
    if value is None:
        return ""
    return round(value, 6) if isinstance(value, float) else value


def device_header(name: str, rows: list[RunRow]) -> list[str]:
    """The facts about one device, from its latest successful run, and what to distrust."""
    runs = [r.run for r in rows]
    facts_run = next((r for r in reversed(runs) if r.status == "ok" and r.device), runs[-1])
    device = facts_run.device or {}
    emulated = any(r.emulated for r in runs)
    lines = [f"## {name} ({facts_run.transport or '?'}){' — EMULATED' if emulated else ''}", ""]
    if emulated:
        lines += ["**EMULATED**: the board runs under emulation (" + (
            ", ".join(device.get("emulation_hints") or []) or "qemu") + "). Outputs and accuracy are real "
            "ARM results; latencies, speed-ups and GMAC/s are meaningless.", ""]
    lines += [f"- {_machine(device)}", f"- governor: {_governor(device)}",
              f"- runtimes: {_runtimes(runs)}", f"- threads: {_distinct(res.threads_of(r) for r in runs)}; "
              f"commit {_commits(runs)}"]
    warnings = list(dict.fromkeys(w for r in runs for w in r.warnings or []
                                  if not w.startswith(("graph split", "EMULATED"))))
    lines += [f"- warning: {w}" for w in warnings]
    invalid = [r.artifact for r in runs if r.status == "ok" and r.valid is False]
    if invalid:
        lines.append(f"- **INVALID** (the device throttled during the run): {', '.join(invalid)}")
    failed = [r.artifact for r in runs if r.status != "ok"]
    if failed:
        lines.append(f"- **FAILED**: {', '.join(failed)}")
    return lines


def _machine(device: dict) -> str:
    cpu = device.get("model") or "CPU"
    part = device.get("cpu_part")
    ident = f" (implementer {device.get('cpu_implementer')}, part {part})" if part else " (part n/a)"
    asimddp = {True: "yes", False: "no"}.get(device.get("asimddp"), "n/a")
    return (f"machine {device.get('machine') or 'n/a'}, {cpu}{ident}, asimddp (int8 dot product): {asimddp}, "
            f"{device.get('cores') or 'n/a'} cores")


def _governor(device: dict) -> str:
    governors = ", ".join(dict.fromkeys(device.get("governors") or []))
    if not governors:
        return "n/a (not exposed)"
    return governors if governors == "performance" else f"{governors} (not performance: latency may vary)"


def _runtimes(runs: list[dict]) -> str:
    found = dict.fromkeys(_runtime_text(r.runtime or {}) for r in runs if r.runtime)
    return ", ".join(found) or "n/a"


def _runtime_text(runtime: dict) -> str:
    text = f"{runtime.get('name', '?')} {runtime.get('version') or ''}".strip()
    return text + {True: " (XNNPACK on)", False: ""}.get(runtime.get("xnnpack"), "")


def _distinct(values) -> str:
    found = [str(v) for v in dict.fromkeys(values)]
    return ", ".join(found) or "n/a"


def _commits(runs: list[dict]) -> str:
    commits = dict.fromkeys(f"{(c.get('sha') or 'unknown')[:12]}{' (dirty)' if c.get('dirty') else ''}"
                            for c in (r.commit or {} for r in runs))
    return ", ".join(commits) or "unknown"


def markdown_text(source: Path, rows: list[RunRow]) -> str:
    parts = [f"# Benchmark report: {source.name}", "",
             "Speed-up vs float = float p50 / p50 (float: TFLite fp32 for TFLite formats, ONNX float for ONNX "
             "formats); GMAC/s = MACs / p50. Accuracy n/a: random weights or no labelled images.", ""]
    for device, device_rows in res.by_device(rows).items():
        shown = [r for r in device_rows if r.latest]
        parts += device_header(device, shown) + ["", markdown_table([c.header for c in COLUMNS],
                                                                    markdown_rows(shown)), ""]
        superseded = len(device_rows) - len(shown)
        if superseded:
            parts += [f"{superseded} earlier run(s) of the same artifacts are in the CSV only.", ""]
    return "\n".join(parts)


def write_report(results_path: str | Path, output_prefix: str | Path | None = None) -> list[Path]:
    """Write PREFIX.md, PREFIX.csv, PREFIX_latency_vs_accuracy.png and PREFIX_formats.png.

    Args:
        results_path: a results file written by ``edge-bench bench``.
        output_prefix: where to write; default the results path without ``.json``.

    Returns:
        The files written, Markdown first.
    """
    from edge_mobilenet.report.plots import write_plots

    results_path = Path(results_path)
    runs = res.load_results(results_path)
    if not runs:
        raise EdgeError(f"{results_path}: holds no runs yet")
    prefix = Path(output_prefix) if output_prefix else results_path.with_suffix("")
    rows = res.analyse(runs)
    markdown_path, csv_path = _with_suffix(prefix, ".md"), _with_suffix(prefix, ".csv")
    write_text_atomic(markdown_path, markdown_text(results_path, rows))
    write_text_atomic(csv_path, csv_text(rows))
    return [markdown_path, csv_path, *write_plots(prefix, [r for r in rows if r.latest])]


def _with_suffix(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)
