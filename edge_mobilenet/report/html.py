"""``PREFIX.html``: one self-contained page (no external script, font or image; nothing is fetched).

The table of the latest runs is rendered here, so the page shows it with JavaScript off; the page's script
only sorts it (click a header; again to reverse; numbers numerically, n/a last) and draws the Pareto chart
(top-1 vs p50 per device, or size vs p50 when no run on the device has top-1) as inline SVG from the JSON
embedded in the page. The fronts are computed once, in ``report/pareto.py``. Every text taken from the
results is escaped, and the JSON cannot close its script element (``<``, ``>`` and ``&`` are escaped).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path

from edge_mobilenet.contracts.formats import FORMATS
from edge_mobilenet.fileio import write_text_atomic
from edge_mobilenet.report import results as res
from edge_mobilenet.report.markdown import notes
from edge_mobilenet.report.pareto import (DEFAULT_ACCURACY_LOSS_PT, SLOWER_NOISE_PCT, DeviceSummary,
                                          config_label, summarise, sweep_info, top1_pct)
from edge_mobilenet.report.results import RunRow

# matplotlib's tableau palette (``formats.FORMATS[...].colour`` names), as hex for the page.
TAB_COLOURS = {"tab:blue": "#1f77b4", "tab:orange": "#ff7f0e", "tab:green": "#2ca02c", "tab:red": "#d62728",
               "tab:purple": "#9467bd", "tab:brown": "#8c564b", "tab:pink": "#e377c2", "tab:gray": "#7f7f7f",
               "tab:grey": "#7f7f7f", "tab:olive": "#bcbd22", "tab:cyan": "#17becf"}
LATENCY_FRONT_MARK = "★ top-1/p50"


@dataclass(frozen=True)
class Column:
    """A table column: its key in the run records, its header, and a number format (numeric sort)."""

    key: str
    header: str
    digits: str | None = None


COLUMNS = (
    Column("device", "device"), Column("model", "model"), Column("alpha", "alpha", "g"),
    Column("size", "size", "g"), Column("format", "format"), Column("threads", "threads", "g"),
    Column("p50_ms", "p50 ms", ".4g"), Column("p90_ms", "p90 ms", ".4g"),
    Column("top1_pct", "top-1 %", ".2f"),
    Column("delta_top1_pt", "Δ top-1 vs float (pt)", "+.2f"), Column("size_kib", "size KiB", ".1f"),
    Column("pareto", "Pareto front"), Column("notes", "notes"), Column("artifact", "artifact"),
)


def colour_hex(name: str) -> str:
    """``tab:blue`` -> ``#1f77b4``; a hex colour as is; anything else grey."""
    return name if name.startswith("#") else TAB_COLOURS.get(name, TAB_COLOURS["tab:gray"])


def format_colour(fmt: str) -> str:
    return colour_hex(FORMATS[fmt].colour if fmt in FORMATS else "tab:gray")


def _number(value) -> float | int | None:
    """``value`` if it is a finite number (sweep fields and settings are not validated), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def pareto_marks(summary: DeviceSummary) -> dict[int, str]:
    """``id(run)`` -> which fronts of its device it is on, e.g. ``★ top-1/p50, top-1/size``."""
    fronts = (((LATENCY_FRONT_MARK, summary.latency_front), ("top-1/size", summary.size_front))
              if summary.has_accuracy else (("size/p50", summary.size_latency_front),))
    marks: dict[int, list[str]] = {}
    for mark, front in fronts:
        for row in front:
            marks.setdefault(id(row.run), []).append(mark)
    return {key: ", ".join(found) for key, found in marks.items()}


def run_record(row: RunRow, pareto: str) -> dict:
    """One table row as a JSON object keyed like ``COLUMNS``."""
    run = row.run
    info = sweep_info(run)
    found = [notes(row), "EMULATED: latency meaningless" if run.emulated else ""]
    return {"device": run.device_name, "model": str(info.get("model") or row.model),
            "alpha": _number(info.get("alpha")), "size": _number(info.get("size")), "format": run.format,
            "threads": _number(res.threads_of(run)), "p50_ms": res.p50_ms(run), "p90_ms": res.p90_ms(run),
            "top1_pct": top1_pct(run), "delta_top1_pt": row.delta_top1_vs_float_pt,
            "size_kib": None if run.size_bytes is None else run.size_bytes / 1024, "pareto": pareto,
            "notes": "; ".join(n for n in found if n), "artifact": run.artifact}


def chart_data(summary: DeviceSummary) -> dict:
    """One device's points (p50, top-1 % or size KiB), its front and the note above its chart."""
    accuracy = summary.has_accuracy

    def y(row: RunRow) -> float | None:
        if accuracy:
            return top1_pct(row.run)
        return None if row.run.size_bytes is None else row.run.size_bytes / 1024

    front = summary.latency_front if accuracy else summary.size_latency_front
    on_front = {id(r.run) for r in front}
    points = [{"label": config_label(r.run), "artifact": r.run.artifact, "format": r.run.format,
               "colour": format_colour(r.run.format), "x": res.p50_ms(r.run), "y": y(r),
               "front": id(r.run) in on_front} for r in summary.runs if y(r) is not None]
    notes_shown = []
    if any(r.run.emulated for r in summary.runs):
        notes_shown.append("EMULATED: the latencies, and so this front, are meaningless.")
    if not accuracy:
        notes_shown.append(f"No run on {summary.device} has top-1 (random weights or no labels): "
                           f"size vs p50 instead; lower left is best.")
    elif summary.without_accuracy:
        notes_shown.append(f"{summary.without_accuracy} run(s) without top-1 (random weights or no labels) "
                           f"not shown.")
    return {"device": summary.device, "y_label": "top-1 accuracy (%)" if accuracy else "artifact size (KiB)",
            "points": points, "front": [[res.p50_ms(r.run), y(r)] for r in front],
            "note": " ".join(notes_shown)}


def page_data(rows: list[RunRow], summaries: dict[str, DeviceSummary]) -> dict:
    """Everything the page's script reads: the table records and one chart per device."""
    marks = {k: v for s in summaries.values() for k, v in pareto_marks(s).items()}
    columns = [{"key": c.key, "header": c.header, "numeric": c.digits is not None} for c in COLUMNS]
    return {"columns": columns, "runs": [run_record(r, marks.get(id(r.run), "")) for r in rows],
            "charts": [chart_data(s) for s in summaries.values()],
            "formats": {name: format_colour(name) for name in FORMATS}}


def embedded_json(data) -> str:
    """JSON inert inside a ``<script>`` element: no ``<``, ``>`` or ``&`` (so no ``</script>``, ``<!--``)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def _cell(column: Column, value) -> str:
    if value is None or value == "":
        shown, sort_value = ("n/a" if column.digits else ""), ""
    elif column.digits:
        shown, sort_value = format(value, column.digits), repr(float(value))
    else:
        shown, sort_value = str(value), str(value)
    kind = ' class="num"' if column.digits else ""
    return f'<td{kind} data-v="{escape(sort_value)}">{escape(shown)}</td>'


def table_html(records: list[dict]) -> str:
    """The runs table, rendered server-side (it is complete without JavaScript)."""
    head = "".join(f'<th data-type="{"num" if c.digits else "text"}" scope="col">{escape(c.header)}</th>'
                   for c in COLUMNS)
    rows = []
    for index, record in enumerate(records):
        front = ' class="front"' if LATENCY_FRONT_MARK in record["pareto"] else ""
        cells = "".join(_cell(c, record[c.key]) for c in COLUMNS)
        rows.append(f'<tr data-index="{index}"{front}>{cells}</tr>')
    body = "\n".join(rows)
    return f'<table id="runs">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def summary_html(summaries: dict[str, DeviceSummary], loss_pt: float, rows: list[RunRow] = ()) -> str:
    """Per device: the fastest run within the accuracy loss, the thread advice and whether int8 pays."""
    from edge_mobilenet.report.int8_verdict import verdicts

    items = []
    for device, summary in summaries.items():
        within = summary.within_loss
        lines = [f"fastest within {loss_pt:g} pt of the most accurate: "
                 + (str(within) if within else "n/a (no run has top-1)")]
        lines += [f"threads, {a.model} {a.format}: {a}" for a in summary.threads]
        lines += [str(v).replace("**", "") for v in verdicts([r for r in rows if r.run.device_name == device])]
        items.append(f"<li><b>{escape(device)}</b><ul>"
                     + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul></li>")
    return '<ul id="summary">' + "".join(items) + "</ul>"


def page_html(title: str, rows: list[RunRow], loss_pt: float = DEFAULT_ACCURACY_LOSS_PT) -> str:
    """The whole page for the latest runs among ``rows`` (the rows of ``results.analyse``)."""
    latest = [r for r in rows if r.latest]
    summaries = summarise(latest, loss_pt)
    data = page_data(latest, summaries)
    no_chart = "" if summaries else "<p>No run finished with a latency: there is nothing to chart.</p>\n"
    return PAGE.format(
        title=escape(title), table=table_html(data["runs"]),
        summary=no_chart + summary_html(summaries, loss_pt, latest),
        noise=f"{SLOWER_NOISE_PCT:g}", style=STYLE, data=embedded_json(data), script=SCRIPT)


def write_html(path: Path, results_name: str, rows: list[RunRow],
               loss_pt: float = DEFAULT_ACCURACY_LOSS_PT) -> Path:
    """Write :func:`page_html` for the results file named ``results_name`` to ``path``."""
    write_text_atomic(path, page_html(f"Benchmark report: {results_name}", rows, loss_pt))
    return path


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<p>A run is on the Pareto front when no other run on the same device is at least as fast and as accurate
(or as small), and better at one. ★: on the top-1 vs p50 front. Runs without top-1 (random weights, no
labels) are left out of the accuracy fronts. Threads: the count with the lowest p50; more threads slower
than fewer (by more than {noise} %) is flagged.</p>
<h2>Pareto front</h2>
<noscript><p>The chart needs JavaScript; the table below is complete without it.</p></noscript>
<div id="chart" hidden>
<label id="device-choice">device <select id="device"></select></label>
<p id="chart-note"></p>
<div id="chart-area"></div>
</div>
{summary}
<h2>Runs</h2>
<p>The latest run of each artifact per device and thread count. Click a header to sort, again to reverse.</p>
{table}
<script type="application/json" id="report-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; }
th { background: #f0f0f0; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.front td { background: #fffbe6; }
#chart-note { color: #a33; min-height: 1em; }
#chart svg text { font-size: 11px; fill: #333; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var SVG_NS = "http://www.w3.org/2000/svg";
  var W = 780, H = 460, M = {left: 64, right: 170, top: 16, bottom: 48};

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG_NS, name);
    Object.keys(attrs).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    parent.appendChild(node);
    return node;
  }

  function label(parent, x, y, value, attrs) {
    var node = el("text", Object.assign({x: x, y: y}, attrs || {}), parent);
    node.textContent = value;
    return node;
  }

  function sortRows(table, column, numeric, direction) {
    var body = table.tBodies[0];
    var keyed = Array.prototype.map.call(body.rows, function (row) {
      var raw = row.cells[column].getAttribute("data-v");
      return {row: row, index: Number(row.getAttribute("data-index")),
              value: raw === "" ? null : (numeric ? parseFloat(raw) : raw)};
    });
    keyed.sort(function (a, b) {
      if (a.value === null || b.value === null) {
        return a.value === b.value ? a.index - b.index : (a.value === null ? 1 : -1);
      }
      if (a.value < b.value) { return -direction; }
      if (a.value > b.value) { return direction; }
      return a.index - b.index;
    });
    keyed.forEach(function (k) { body.appendChild(k.row); });
  }

  function sortable(table) {
    var headers = table.tHead.rows[0].cells, state = {column: -1, direction: 1};
    Array.prototype.forEach.call(headers, function (th, column) {
      th.addEventListener("click", function () {
        state.direction = state.column === column ? -state.direction : 1;
        state.column = column;
        sortRows(table, column, th.getAttribute("data-type") === "num", state.direction);
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", state.direction > 0 ? "ascending" : "descending");
      });
    });
  }

  function extent(values) {
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    var pad = (hi - lo) * 0.08 || Math.max(Math.abs(hi) * 0.05, 0.05);
    return [lo - pad, hi + pad];
  }

  function logTicks(lo, hi) {
    var sets = [[1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]], ticks = [];
    for (var s = 0; s < sets.length && ticks.length < 3; s++) {
      ticks = [];
      for (var e = Math.floor(lo) - 1; e <= Math.ceil(hi); e++) {
        sets[s].forEach(function (m) {
          var v = m * Math.pow(10, e);
          if (Math.log10(v) >= lo && Math.log10(v) <= hi) { ticks.push(v); }
        });
      }
    }
    return ticks.length >= 2 ? ticks : [Math.pow(10, lo), Math.pow(10, hi)];
  }

  function linearTicks(lo, hi) {
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / 5))), ticks = [];
    [1, 2, 5, 10].some(function (m) {
      if ((hi - lo) / (step * m) > 7) { return false; }
      step *= m;
      return true;
    });
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) { ticks.push(v); }
    return ticks;
  }

  function shown(v) { return String(Number(v.toPrecision(3))); }

  function axes(svg, chart, x, y, xr, yr) {
    var plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;
    el("rect", {x: M.left, y: M.top, width: plotW, height: plotH, fill: "none", stroke: "#888"}, svg);
    logTicks(xr[0], xr[1]).forEach(function (v) {
      el("line", {x1: x(v), x2: x(v), y1: M.top, y2: M.top + plotH, stroke: "#e4e4e4"}, svg);
      label(svg, x(v), M.top + plotH + 16, shown(v), {"text-anchor": "middle"});
    });
    linearTicks(yr[0], yr[1]).forEach(function (v) {
      el("line", {x1: M.left, x2: M.left + plotW, y1: y(v), y2: y(v), stroke: "#e4e4e4"}, svg);
      label(svg, M.left - 6, y(v) + 4, shown(v), {"text-anchor": "end"});
    });
    label(svg, M.left + plotW / 2, H - 10, "latency p50 (ms, log scale)", {"text-anchor": "middle"});
    label(svg, 16, M.top + plotH / 2, chart.y_label,
          {"text-anchor": "middle", transform: "rotate(-90 16 " + (M.top + plotH / 2) + ")"});
  }

  function legend(svg, chart) {
    var formats = [], left = W - M.right + 16, top = M.top + 8;
    chart.points.forEach(function (p) { if (formats.indexOf(p.format) < 0) { formats.push(p.format); } });
    el("path", {d: "M" + left + " " + top + " h18", stroke: "#333", "stroke-width": 1.5, fill: "none"}, svg);
    label(svg, left + 24, top + 4, "Pareto front");
    formats.forEach(function (f, i) {
      el("circle", {cx: left + 9, cy: top + 20 * (i + 1), r: 5, fill: data.formats[f] || "#7f7f7f",
                    stroke: "#000", "stroke-width": 0.5}, svg);
      label(svg, left + 24, top + 20 * (i + 1) + 4, f);
    });
  }

  function draw(chart) {
    var area = document.getElementById("chart-area");
    area.textContent = "";
    document.getElementById("chart-note").textContent = chart.note;
    if (!chart.points.length) { return; }
    var svg = el("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img"}, area);
    el("rect", {x: 0, y: 0, width: W, height: H, fill: "#ffffff"}, svg);
    var xr = extent(chart.points.map(function (p) { return Math.log10(p.x); }));
    var yr = extent(chart.points.map(function (p) { return p.y; }));
    var x = function (v) {
      return M.left + (Math.log10(v) - xr[0]) / (xr[1] - xr[0]) * (W - M.left - M.right);
    };
    var y = function (v) { return H - M.bottom - (v - yr[0]) / (yr[1] - yr[0]) * (H - M.top - M.bottom); };
    axes(svg, chart, x, y, xr, yr);
    var d = chart.front.map(function (p, i) {
      return (i ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1);
    });
    el("path", {"class": "front", d: d.join(" "), fill: "none", stroke: "#333", "stroke-width": 1.5}, svg);
    chart.points.forEach(function (p) {
      var dot = el("circle", {"class": p.front ? "point on-front" : "point", cx: x(p.x).toFixed(1),
                              cy: y(p.y).toFixed(1), r: p.front ? 6 : 4.5, fill: p.colour,
                              stroke: "#000", "stroke-width": p.front ? 1.5 : 0.5}, svg);
      var tip = el("title", {}, dot);
      tip.textContent = p.label + " (" + p.artifact + "): p50 " + shown(p.x) + " ms, " + shown(p.y);
    });
    legend(svg, chart);
  }

  function chooser() {
    var select = document.getElementById("device");
    data.charts.forEach(function (chart, i) {
      var option = document.createElement("option");
      option.value = String(i);
      option.textContent = chart.device;
      select.appendChild(option);
    });
    select.addEventListener("change", function () { draw(data.charts[Number(select.value)]); });
    document.getElementById("device-choice").hidden = data.charts.length < 2;
  }

  sortable(document.getElementById("runs"));
  if (data.charts.length) {
    document.getElementById("chart").hidden = false;
    chooser();
    draw(data.charts[0]);
  }
})();
"""
