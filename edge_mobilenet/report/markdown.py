"""``edge-bench report``: a results file -> PREFIX.md, PREFIX.csv and two PNG plots.

Per device: the device facts (machine, CPU, features, cores, governor, runtimes), an EMULATED label when
the board runs under emulation (its latencies are meaningless), warnings, invalid and failed runs; then one
table of the latest run of each artifact and, with more than one configuration, its Pareto front, the
fastest run within an accuracy loss and the thread counts to use (``report/pareto.py``). The CSV holds
every run, with the device fields.
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
from edge_mobilenet.report.pareto import (DEFAULT_ACCURACY_LOSS_PT, SLOWER_NOISE_PCT, DeviceSummary,
                                          config_label, summarise)
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


def paired_note(run: RunRecord) -> str:
    """``Δ top-1 within noise (95% CI -0.9 to +0.4 pt, 800 images)`` from the paired comparison."""
    paired = (run.accuracy or {}).get("paired") if run.status == "ok" and run.format != run.baseline_format \
        else None
    if not isinstance(paired, dict) or not isinstance(paired.get("delta_ci"), (list, tuple)):
        return ""
    low, high = (100 * float(v) for v in paired["delta_ci"])
    verdict = "within noise" if paired.get("within_noise") else "beyond noise"
    return (f"Δ top-1 {verdict} ({100 * paired.get('confidence', 0.95):.0f}% CI {low:+.1f} to {high:+.1f} pt, "
            f"{paired.get('count')} images)")


def detection_note(run: RunRecord) -> str:
    """``mAP 0.642, mAP@0.5 0.759 (Δ -0.3 pt vs float, 400 images)`` for a detection run."""
    accuracy = run.accuracy or {}
    if run.task != "detection" or "map" not in accuracy:
        return ""
    delta = accuracy.get("delta_map_vs_float")
    return (f"mAP {accuracy['map']:.3f}, mAP@0.5 {accuracy['map50']:.3f} ("
            + (f"Δ {100 * delta:+.1f} pt vs float, " if delta is not None else "") + f"{accuracy['images']} images)")


def notes(row: RunRow) -> str:
    run = row.run
    if run.status != "ok":
        return f"FAILED: {run.error or 'no error recorded'}"
    ratio = res.interleaved_ratio(run)
    interleaved = (f"interleaved {ratio['median']:.2f}× float time (IQR {ratio['q1']:.2f}–{ratio['q3']:.2f})"
                   if ratio and ratio["baseline"] != run.artifact else "")
    found = [detection_note(run), split_flag(run), row.baseline_note or "", interleaved, paired_note(run)]
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

THREADS_COLUMN = Column("threads", lambda r: res.threads_of(r.run), lambda v: "n/a" if v is None else str(v))


def table_columns(rows: list[RunRow]) -> tuple[Column, ...]:
    """``COLUMNS``, with the thread count after the format when the runs differ in it (a sweep)."""
    if len({res.threads_of(r.run) for r in rows}) < 2:
        return COLUMNS
    return COLUMNS[:2] + (THREADS_COLUMN,) + COLUMNS[2:]


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


def markdown_rows(rows: list[RunRow], columns: tuple[Column, ...] = COLUMNS) -> list[list[str]]:
    return [[_cell(column.shown(column.value(row))) for column in columns] for row in rows]


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


def markdown_text(source: Path, rows: list[RunRow],
                  accuracy_loss_pt: float = DEFAULT_ACCURACY_LOSS_PT) -> str:
    parts = [f"# Benchmark report: {source.name}", "",
             "Speed-up vs float = float p50 / p50 (float: TFLite fp32 for TFLite formats, ONNX float for ONNX "
             "formats); GMAC/s = MACs / p50. Accuracy n/a: random weights or no labelled images.", ""]
    summaries = summarise(rows, accuracy_loss_pt)
    for device, device_rows in res.by_device(rows).items():
        shown = [r for r in device_rows if r.latest]
        columns = table_columns(shown)
        parts += device_header(device, shown) + ["", markdown_table([c.header for c in columns],
                                                                    markdown_rows(shown, columns)), ""]
        superseded = len(device_rows) - len(shown)
        if superseded:
            parts += [f"{superseded} earlier run(s) of the same artifacts are in the CSV only.", ""]
        parts += int8_section(shown)
        if device in summaries:
            parts += sweep_sections(summaries[device], accuracy_loss_pt)
    return "\n".join(parts)


def int8_section(rows: list[RunRow]) -> list[str]:
    """``### int8 on this device``: per integer artifact, whether it beats its float baseline here."""
    from edge_mobilenet.report.int8_verdict import verdicts

    found = verdicts(rows)
    if not found:
        return []
    return ["### int8 on this device", ""] + [f"- {_cell(str(v))}" for v in found] + [""]


FRONT_HEADERS = ["p50 ms", "top-1 %", "size KiB", "configuration"]


def sweep_sections(summary: DeviceSummary, accuracy_loss_pt: float) -> list[str]:
    """Pareto front, Fastest within X pt and Threads for a device with more than one configuration."""
    if len(summary.runs) < 2:
        return []
    return _front_section(summary) + _within_section(summary, accuracy_loss_pt) + _threads_section(summary)


def _front_row(row: RunRow) -> list[str]:
    run = row.run
    accuracy = res.top1(run)
    return [f"{res.p50_ms(run):.4g}", "n/a" if accuracy is None else f"{100 * accuracy:.2f}",
            "n/a" if run.size_bytes is None else f"{run.size_bytes / 1024:.1f}", _cell(config_label(run))]


def _front_section(summary: DeviceSummary) -> list[str]:
    lines = ["### Pareto front", ""]
    if any(r.run.emulated for r in summary.runs):
        lines += ["EMULATED: the latencies, and so these fronts, are meaningless.", ""]
    if not summary.has_accuracy:
        table = markdown_table(FRONT_HEADERS, [_front_row(r) for r in summary.size_latency_front])
        return lines + ["No run on this device has top-1 (random weights or no labels): the front is size vs "
                        "p50 (no other run both smaller and faster).", "", table, ""]
    text = "Top-1 vs p50: no other run is at least as fast and as accurate, and better at one."
    if summary.without_accuracy:
        text += (f" {summary.without_accuracy} run(s) without top-1 (random weights or no labels) are left "
                 f"out of the accuracy fronts.")
    on_size = {id(r.run) for r in summary.size_front}
    rows = [_front_row(r) + ["yes" if id(r.run) in on_size else "no"] for r in summary.latency_front]
    by_size = ", ".join(f"{_cell(config_label(r.run))} ({r.run.size_bytes / 1024:.1f} KiB, "
                        f"{100 * res.top1(r.run):.2f} %)" for r in summary.size_front)
    return lines + [text, "", markdown_table(FRONT_HEADERS + ["on the top-1 vs size front"], rows), "",
                    f"Top-1 vs size: {by_size}.", ""]


def _within_section(summary: DeviceSummary, loss_pt: float) -> list[str]:
    within = summary.within_loss
    text = (f"Top-1 at most {loss_pt:g} pt below the most accurate run on this device: "
            f"{_cell(str(within))}." if within
            else "n/a: no run on this device has top-1 (random weights or no labels).")
    return [f"### Fastest within {loss_pt:g} pt", "", text, ""]


def _threads_section(summary: DeviceSummary) -> list[str]:
    if not summary.threads:
        return []
    rows = [[str(a), _cell(f"{a.model} {a.format}"),
             ", ".join(f"{t}: {p:.4g}" for t, p in a.p50_ms_by_threads.items())] for a in summary.threads]
    return ["### Threads", "",
            "The thread count with the lowest p50; flagged: more threads slower than fewer "
            f"(by more than {SLOWER_NOISE_PCT:g} %).", "",
            markdown_table(["threads", "configuration", "p50 ms by threads"], rows), ""]


def write_report(results_path: str | Path, output_prefix: str | Path | None = None,
                 accuracy_loss_pt: float = DEFAULT_ACCURACY_LOSS_PT) -> list[Path]:
    """Write PREFIX.md, PREFIX.csv, PREFIX_latency_vs_accuracy.png and PREFIX_formats.png.

    Args:
        results_path: a results file written by ``edge-bench bench``.
        output_prefix: where to write; default the results path without ``.json``.
        accuracy_loss_pt: top-1 points the "Fastest within" section may give up.

    Returns:
        The files written, Markdown first.
    """
    results_path, prefix, rows = _analysed(results_path, output_prefix)
    return _write_tables_and_plots(results_path, prefix, rows, accuracy_loss_pt)


def write_full_report(results_path: str | Path, output_prefix: str | Path | None = None,
                      accuracy_loss_pt: float = DEFAULT_ACCURACY_LOSS_PT) -> list[Path]:
    """What ``edge-bench report`` writes: :func:`write_report`'s files, PREFIX_pareto.png and PREFIX.html."""
    from edge_mobilenet.report.html import write_html
    from edge_mobilenet.report.plots import write_pareto_plot

    results_path, prefix, rows = _analysed(results_path, output_prefix)
    files = _write_tables_and_plots(results_path, prefix, rows, accuracy_loss_pt)
    files += write_pareto_plot(prefix, rows)
    return files + [write_html(_with_suffix(prefix, ".html"), results_path.name, rows, accuracy_loss_pt)]


def _analysed(results_path: str | Path, output_prefix: str | Path | None) -> tuple[Path, Path, list[RunRow]]:
    results_path = Path(results_path)
    runs = res.load_results(results_path)
    if not runs:
        raise EdgeError(f"{results_path}: holds no runs yet")
    prefix = Path(output_prefix) if output_prefix else results_path.with_suffix("")
    return results_path, prefix, res.analyse(runs)


def _write_tables_and_plots(results_path: Path, prefix: Path, rows: list[RunRow],
                            accuracy_loss_pt: float) -> list[Path]:
    from edge_mobilenet.report.plots import write_plots

    markdown_path, csv_path = _with_suffix(prefix, ".md"), _with_suffix(prefix, ".csv")
    write_text_atomic(markdown_path, markdown_text(results_path, rows, accuracy_loss_pt))
    write_text_atomic(csv_path, csv_text(rows))
    return [markdown_path, csv_path, *write_plots(prefix, [r for r in rows if r.latest])]


def _with_suffix(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)
