"""Benchmark results -> Markdown table, CSV and PNG plots; and comparison of two results files.

Per device: format, runtime, size, top-1, Δ top-1 vs float, p50, p90, speed-up vs float (float p50 /
p50) and GMAC/s (the manifest's MACs / p50). Emulated devices are labelled (latencies meaningless),
runs the device throttled in are marked invalid, and graphs split by the delegate are flagged.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import atomic_path, write_text_atomic
from edge_mobilenet.report.tables import markdown_table

COLUMNS = ["device", "artifact", "format", "runtime", "size KiB", "top-1", "Δ top-1 vs float", "agreement",
           "p50 ms", "p90 ms", "speed-up vs float", "GMAC/s", "XNNPACK", "notes"]


def load_results(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{path}: results file does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EdgeError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise EdgeError(f"{path}: not an edge-bench results file (no 'runs' list)")
    return data["runs"]


def _baseline(run: dict, runs: list[dict]) -> dict | None:
    same = [r for r in runs if r["status"] == "ok" and r["device_name"] == run["device_name"]
            and r.get("source_sha256") == run.get("source_sha256") and r.get("source_sha256")]
    exact = [r for r in same if r["format"] == run.get("baseline_format") and r["runtime_kind"] == run["runtime_kind"]]
    fallback = [r for r in same if r["format"] == "fp32"]
    chosen = (exact or fallback)
    return chosen[-1] if chosen else None


def _row(run: dict, runs: list[dict]) -> dict:
    row = dict.fromkeys(COLUMNS)
    runtime = run.get("runtime") or {}
    row.update({"device": run["device_name"], "artifact": run["artifact"], "format": run["format"],
                "runtime": f"{runtime.get('name', '?')} {runtime.get('version') or ''}".strip(),
                "size KiB": round(run["size_bytes"] / 1024, 1) if run.get("size_bytes") else None})
    notes = []
    if run["status"] != "ok":
        row["notes"] = f"FAILED: {run.get('error')}"
        return row
    latency, accuracy = run["latency"], run.get("accuracy") or {}
    row.update({"top-1": accuracy.get("top1"), "Δ top-1 vs float": accuracy.get("delta_top1_vs_float"),
                "agreement": accuracy.get("agreement_with_float"), "p50 ms": latency.get("p50_ms"),
                "p90 ms": latency.get("p90_ms")})
    baseline = _baseline(run, runs)
    if baseline and latency.get("p50_ms"):
        row["speed-up vs float"] = round(baseline["latency"]["p50_ms"] / latency["p50_ms"], 2)
    if run.get("macs") and latency.get("p50_ms"):
        row["GMAC/s"] = round(run["macs"] / (latency["p50_ms"] / 1e3) / 1e9, 2)
    if runtime.get("nodes_total"):
        row["XNNPACK"] = f"{runtime['nodes_delegated']}/{runtime['nodes_total']} ({runtime['partitions']})"
    if runtime.get("split"):
        notes.append("⚠ split: " + ", ".join(f"{op}×{n}" for op, n in runtime.get("ops_outside", {}).items()))
    if runtime.get("xnnpack") is False and run["runtime_kind"] == "tflite":
        notes.append("not delegated to XNNPACK")
    if run.get("emulated"):
        notes.append("EMULATED: latency meaningless")
    if not run.get("valid", True):
        notes.append("INVALID: throttled")
    row["notes"] = "; ".join(notes)
    return row


def rows(runs: list[dict]) -> list[dict]:
    return [_row(run, runs) for run in runs]


def device_header(run: dict) -> str:
    device = run.get("device") or {}
    governors = ", ".join(device.get("governors") or []) or "n/a"
    text = (f"## {run['device_name']} ({run['transport']}): {device.get('machine', '?')}, "
            f"CPU part {device.get('cpu_part') or 'n/a'}, asimddp {device.get('asimddp')}, "
            f"{device.get('cores')} cores, governor {governors}")
    if device.get("emulated"):
        text += "\n\n**EMULATED device**: results are real ARM results; latencies are meaningless."
    warnings = sorted({w for w in run.get("warnings", []) if "governor" in w})
    return text + ("".join(f"\n\n> {w}" for w in warnings))


def markdown(runs: list[dict]) -> str:
    parts, table = ["# Benchmark results", ""], rows(runs)
    for device in dict.fromkeys(r["device_name"] for r in runs):
        first = next(r for r in runs if r["device_name"] == device)
        body = [[row[c] for c in COLUMNS[1:]] for row in table if row["device"] == device]
        commit = (first.get("commit") or {}).get("sha") or "unknown"
        parts += [device_header(first), "", f"commit {commit[:12]}, threads "
                  f"{(first.get('settings') or {}).get('threads')}", "", markdown_table(COLUMNS[1:], body), ""]
    return "\n".join(parts)


def write_csv(path: Path, runs: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS + ["machine", "cpu_part", "emulated", "timestamp_utc"])
    writer.writeheader()
    for run, row in zip(runs, rows(runs)):
        device = run.get("device") or {}
        writer.writerow({**row, "machine": device.get("machine"), "cpu_part": device.get("cpu_part"),
                         "emulated": run.get("emulated"), "timestamp_utc": run.get("timestamp_utc")})
    write_text_atomic(path, buffer.getvalue())


def _model_of(artifact: str) -> str:
    return re.sub(r"\.(fp32|fp16|dynamic|int8)?\.?(tflite|onnx)$", "", artifact)


def plot(prefix: Path, runs: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [(run, row) for run, row in zip(runs, rows(runs)) if run["status"] == "ok"]
    written = []
    figure, axis = plt.subplots(figsize=(8, 5))
    with_accuracy = [(run, row) for run, row in ok if row["top-1"] is not None]
    points = with_accuracy or ok
    groups = list(dict.fromkeys(f"{row['device']}: {_model_of(run['artifact'])}" for run, row in points))
    colours = {group: f"C{i % 10}" for i, group in enumerate(groups)}
    for run, row in points:
        x = row["p50 ms"]
        y = row["top-1"] if with_accuracy else row["size KiB"]
        group = f"{row['device']}: {_model_of(run['artifact'])}"
        axis.scatter(x, y, color=colours[group], marker="o" if run["runtime_kind"] == "tflite" else "s",
                     label=group if group not in axis.get_legend_handles_labels()[1] else None)
        axis.annotate(row["format"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    axis.legend(fontsize=7, title="circle: TFLite, square: ONNX", title_fontsize=7)
    axis.set_xscale("log")
    axis.set_xlabel("latency p50 (ms, log scale)")
    axis.set_ylabel("top-1" if with_accuracy else "size (KiB)")
    axis.set_title("latency vs accuracy" if with_accuracy else "latency vs size (no accuracy: random weights)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    written.append(_save(figure, prefix.with_name(prefix.name + "_latency_vs_accuracy.png")))
    models = list(dict.fromkeys(_model_of(r["artifact"]) for r, _ in ok))
    figure, axes = plt.subplots(len(models), 1, figsize=(9, 2.2 + 1.6 * len(models)), squeeze=False)
    for axis, model in zip(axes[:, 0], models):
        mine = [(run, row) for run, row in ok if _model_of(run["artifact"]) == model]
        labels = [f"{row['device']}\n{row['format']}/{row['runtime'].split()[0]}" for _, row in mine]
        axis.bar(range(len(mine)), [row["p50 ms"] for _, row in mine],
                 color=["tab:gray" if run["format"] in ("fp32", "onnx") else "tab:blue" for run, _ in mine])
        axis.set_xticks(range(len(mine)), labels, fontsize=7)
        axis.set_ylabel("p50 ms")
        axis.set_title(f"{model} (grey: float baseline)", fontsize=9)
    figure.tight_layout()
    written.append(_save(figure, prefix.with_name(prefix.name + "_formats.png")))
    return written


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)
    return path


def write_report(results: str | Path, prefix: str | Path | None = None) -> tuple[str, list[Path]]:
    runs = load_results(results)
    prefix = Path(prefix) if prefix else Path(str(results)).with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(runs)
    write_text_atomic(prefix.with_suffix(".md"), text)
    write_csv(prefix.with_suffix(".csv"), runs)
    pngs = plot(prefix, runs) if any(r["status"] == "ok" for r in runs) else []
    return text, [prefix.with_suffix(".md"), prefix.with_suffix(".csv"), *pngs]


def parse_fail_on(spec: str) -> tuple[str, float, str]:
    match = re.fullmatch(r"(p50|p90|p99|mean|top1):([0-9.]+)(%|pt)", spec.strip())
    if not match:
        raise EdgeError(f"--fail-on must look like p50:10% or top1:0.5pt. Received {spec!r}")
    metric, value, unit = match.groups()
    if (metric == "top1") != (unit == "pt"):
        raise EdgeError(f"--fail-on {spec}: latency thresholds are in %, top1 in points (pt)")
    return metric, float(value), unit


def _key(run: dict) -> tuple:
    return (run["device_name"], run["artifact"], run["runtime_kind"], (run.get("settings") or {}).get("threads"))


def compare(old_path, new_path, fail_on: list[str]) -> tuple[str, bool]:
    """Runs matched by (device, artifact, runtime, threads): old -> new, flagged against thresholds."""
    rules = [parse_fail_on(s) for s in fail_on]
    old = {_key(r): r for r in load_results(old_path) if r["status"] == "ok"}
    new = {_key(r): r for r in load_results(new_path) if r["status"] == "ok"}
    table, regressed = [], False
    for key in [k for k in new if k in old]:
        a, b = old[key], new[key]
        cells, flags = [key[0], key[1]], []
        for metric in ("p50", "p90"):
            before, after = a["latency"].get(f"{metric}_ms"), b["latency"].get(f"{metric}_ms")
            change = 100 * (after - before) / before if before and after else None
            cells.append(f"{before:.3f} → {after:.3f} ({change:+.1f}%)" if change is not None else "n/a")
            flags += [f"{metric} +{change:.1f}% > {v}%" for m, v, _ in rules if m == metric and change and change > v]
        top1_a, top1_b = (a.get("accuracy") or {}).get("top1"), (b.get("accuracy") or {}).get("top1")
        drop = 100 * (top1_a - top1_b) if top1_a is not None and top1_b is not None else None
        cells.append(f"{top1_a} → {top1_b}" if drop is not None else "n/a")
        flags += [f"top-1 -{drop:.2f}pt > {v}pt" for m, v, _ in rules if m == "top1" and drop and drop > v]
        regressed |= bool(flags)
        table.append(cells + ["REGRESSION: " + "; ".join(flags) if flags else "ok"])
    text = markdown_table(["device", "artifact", "p50 ms", "p90 ms", "top-1", "verdict"], table)
    unmatched = sorted(set(old) ^ set(new))
    if unmatched:
        text += "\n\nunmatched: " + ", ".join(f"{k[0]}/{k[1]}" for k in unmatched)
    return text, regressed
