"""The report's PNG plots (matplotlib, Agg): latency vs accuracy, p50 per format per model, and the
Pareto front of top-1 vs p50.

One panel per device: latencies of different devices are not comparable (an emulated board is 100-400x
slower), so they never share an axis.
"""

from __future__ import annotations

from pathlib import Path

from edge_mobilenet.contracts.formats import FORMATS
from edge_mobilenet.fileio import atomic_path
from edge_mobilenet.report import results as res
from edge_mobilenet.report.pareto import DeviceSummary, summarise
from edge_mobilenet.report.results import RunRow

FLOAT_FORMATS = tuple(f.name for f in FORMATS.values() if f.is_baseline)


def _colour(fmt: str) -> str:
    return FORMATS[fmt].colour if fmt in FORMATS else "tab:gray"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(prefix: Path, rows: list[RunRow]) -> list[Path]:
    """PREFIX_latency_vs_accuracy.png and PREFIX_formats.png from the rows with a latency."""
    timed = [r for r in rows if res.p50_ms(r.run) is not None]
    devices = res.by_device(timed)
    if not devices:
        return []
    return [latency_vs_accuracy(prefix.with_name(prefix.name + "_latency_vs_accuracy.png"), devices),
            formats_bars(prefix.with_name(prefix.name + "_formats.png"), devices)]


def _short(model: str) -> str:
    return model.replace("mobilenet_", "")


def _device_title(name: str, rows: list[RunRow]) -> str:
    return name + (" — EMULATED: latencies meaningless" if any(r.run.emulated for r in rows) else "")


MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LABEL_OFFSETS_PT = ((7, 0), (-7, 0), (0, 8), (0, -9), (7, 8), (-7, 8), (7, -9), (-7, -9)) + tuple(
    (dx * step, dy * step) for step in (2, 3, 4)
    for dx, dy in ((0, 8), (0, -9), (8, 7), (-8, 7), (8, -8), (-8, -8)))


def latency_vs_accuracy(path: Path, devices: dict[str, list[RunRow]]) -> Path:
    """p50 (log x) vs top-1, one labelled marker per artifact (colour: format, shape: model), per device."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(devices), figsize=(7.5 * len(devices), 5.8), squeeze=False)
    models = list(dict.fromkeys(r.model for rows in devices.values() for r in rows))
    labels, any_accuracy = [], False
    for axis, (device, rows) in zip(axes[0], devices.items()):
        with_accuracy = [r for r in rows if res.top1(r.run) is not None]
        any_accuracy |= bool(with_accuracy)
        for row in with_accuracy or rows:
            run = row.run
            y = 100 * res.top1(run) if with_accuracy else (run.size_bytes or 0) / 1024
            marker = MODEL_MARKERS[models.index(row.model) % len(MODEL_MARKERS)]
            axis.scatter(res.p50_ms(run), y, s=50, color=_colour(run.format), marker=marker, alpha=0.85,
                         edgecolors="black", linewidths=0.4, zorder=3)
            labels.append((axis, res.p50_ms(run), y, run.format))
        axis.set_xscale("log")
        _plain_log_ticks(axis.xaxis, [res.p50_ms(r.run) for r in with_accuracy or rows])
        axis.set_xlabel("latency p50 (ms, log scale)")
        axis.set_ylabel("top-1 accuracy (%)" if with_accuracy else "artifact size (KiB)")
        title = _device_title(device, rows)
        if not with_accuracy:
            title += "\nno accuracy (random weights or no labels): p50 vs size instead"
        elif len(with_accuracy) < len(rows):
            title += f"\n{len(rows) - len(with_accuracy)} run(s) without accuracy not shown"
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3, which="both")
        axis.margins(x=0.15, y=0.15)
    _legend(figure, {r.run.format: r.run.runtime_kind for rows in devices.values() for r in rows},
            models)
    figure.suptitle("Latency vs accuracy (upper left is best)" if any_accuracy else
                    "Latency vs size: no accuracy (random weights or no labels)", fontsize=11)
    figure.tight_layout(rect=(0, 0.15, 1, 1))
    _place_labels(figure, labels)
    return _save(figure, path)


def _plain_log_ticks(axis, values: list[float]) -> None:
    """Plain numbers on a log axis (0.02, 0.05, 0.1) instead of 2x10^-2; over a wide range, minor labels
    at 2 and 5 only."""
    from matplotlib.ticker import FuncFormatter

    digits = "23456789" if max(values) / min(values) < 8 else "25"
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_tick_params(which="both", length=3.5)
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in digits else ""))


def _place_labels(figure, labels: list[tuple]) -> None:
    """Put each label at the first nearby spot that overlaps no marker and no other label."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    taken = {}
    for axis, x, y, _ in labels:
        px, py = axis.transData.transform((x, y))
        taken.setdefault(axis, []).append(_box(px - 7, py - 7, px + 7, py + 7))
    for axis, x, y, text in labels:
        frame = axis.get_window_extent(renderer)
        for dx, dy in LABEL_OFFSETS_PT:
            style = {"xytext": (dx, dy), "textcoords": "offset points", "fontsize": 6.5, "color": "0.2",
                     "ha": "center" if dx == 0 else ("left" if dx > 0 else "right"), "va": "center"}
            note = axis.annotate(text, (x, y), **style)
            box = note.get_window_extent(renderer)
            if _inside(box, frame) and not any(box.overlaps(other) for other in taken[axis]):
                taken[axis].append(box)
                if abs(dx) > 10 or abs(dy) > 10:  # far from its marker: draw a leader line
                    note.remove()
                    axis.annotate(text, (x, y), arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5,
                                                            "shrinkA": 1, "shrinkB": 4}, **style)
                break
            note.remove()


def _box(x0, y0, x1, y1):
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])


def _inside(box, frame) -> bool:
    return box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1


def _legend(figure, formats: dict[str, str], models: list[str] | None = None) -> None:
    from matplotlib.lines import Line2D

    ordered = sorted(formats, key=lambda f: res.order_index(res.FORMAT_ORDER, f))
    handles = [Line2D([], [], linestyle="", marker="s", color=_colour(f), markeredgecolor="black",
                      markeredgewidth=0.4, markersize=8, label=f"{f} ({formats[f]})") for f in ordered]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
                  title="format (runtime)", title_fontsize=8, bbox_to_anchor=(0.5, 0.065 if models else 0))
    if models:
        shapes = [Line2D([], [], linestyle="", marker=MODEL_MARKERS[i % len(MODEL_MARKERS)], color="0.5",
                         markeredgecolor="black", markeredgewidth=0.4, markersize=7, label=_short(m))
                  for i, m in enumerate(models)]
        figure.legend(handles=shapes, loc="lower center", ncol=len(shapes), fontsize=8, frameon=False,
                      bbox_to_anchor=(0.5, 0), title="model", title_fontsize=8)


def formats_bars(path: Path, devices: dict[str, list[RunRow]]) -> Path:
    """Grouped bars of p50 per format for each model, per device; dashed lines mark the float baselines."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(devices), 1, figsize=(11, 4.2 * len(devices)), squeeze=False)
    for axis, (device, rows) in zip(axes[:, 0], devices.items()):
        models = list(dict.fromkeys(r.model for r in rows))
        formats = sorted({r.run.format for r in rows}, key=lambda f: res.order_index(res.FORMAT_ORDER, f))
        width = 0.8 / len(formats)
        for group, model in enumerate(models):
            mine = {r.run.format: r for r in rows if r.model == model}
            for slot, fmt in enumerate(formats):
                if fmt in mine:
                    _bar(axis, group - 0.4 + width * (slot + 0.5), width, mine[fmt])
            for fmt in FLOAT_FORMATS:
                if fmt in mine:
                    axis.hlines(res.p50_ms(mine[fmt].run), group - 0.42, group + 0.42, colors=_colour(fmt),
                                linestyles="dashed", linewidth=1, zorder=3)
        axis.set_xticks(range(len(models)), [_short(m) for m in models], fontsize=9)
        axis.set_ylabel("latency p50 (ms)")
        axis.set_ylim(0, axis.get_ylim()[1] * 1.12)
        axis.set_title(_device_title(device, rows) + "  (label: speed-up vs float; dashed: float p50)",
                       fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    _legend(figure, {r.run.format: r.run.runtime_kind for rows in devices.values() for r in rows})
    figure.suptitle("p50 latency per format", fontsize=11)
    return _save(figure, path, rect=(0, 0.07 if len(devices) == 1 else 0.04, 1, 1))


def write_pareto_plot(prefix: Path, rows: list[RunRow]) -> list[Path]:
    """PREFIX_pareto.png from the latest runs with a latency; [] when there are none."""
    summaries = summarise(rows)
    if not summaries:
        return []
    return [pareto_plot(prefix.with_name(prefix.name + "_pareto.png"), summaries)]


def pareto_plot(path: Path, summaries: dict[str, DeviceSummary]) -> Path:
    """Top-1 vs p50 (log x) per device, colour by format, the front as a line; size vs p50 without top-1."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(summaries), figsize=(7.5 * len(summaries), 5.4), squeeze=False)
    for axis, summary in zip(axes[0], summaries.values()):
        y = _pareto_y(summary)
        shown = [r for r in summary.runs if y(r) is not None]
        front = summary.latency_front if summary.has_accuracy else summary.size_latency_front
        axis.plot([res.p50_ms(r.run) for r in front], [y(r) for r in front], color="0.25", linewidth=1.2,
                  marker="o", markersize=11, markerfacecolor="none", markeredgecolor="0.25", zorder=2,
                  label="Pareto front")
        for row in shown:
            axis.scatter(res.p50_ms(row.run), y(row), s=40, color=_colour(row.run.format), alpha=0.9,
                         edgecolors="black", linewidths=0.4, zorder=3)
        axis.set_xscale("log")
        _plain_log_ticks(axis.xaxis, [res.p50_ms(r.run) for r in summary.runs])
        axis.set_xlabel("latency p50 (ms, log scale)")
        axis.set_ylabel("top-1 accuracy (%)" if summary.has_accuracy else "artifact size (KiB)")
        title = _device_title(summary.device, list(summary.runs))
        title += f": {len(front)} of {len(shown)} on the front"
        if not summary.has_accuracy:
            title += "\nno accuracy (random weights or no labels): size vs p50 instead"
        elif summary.without_accuracy:
            title += f"\n{summary.without_accuracy} run(s) without accuracy not shown"
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3, which="both")
        axis.margins(x=0.12, y=0.12)
        axis.legend(loc="lower right", fontsize=8, frameon=False)
    _legend(figure, {r.run.format: r.run.runtime_kind for s in summaries.values() for r in s.runs})
    figure.suptitle("Pareto front: no other run is both faster and better (more accurate, or smaller)",
                    fontsize=11)
    return _save(figure, path, rect=(0, 0.08, 1, 1))


def _pareto_y(summary: DeviceSummary):
    if summary.has_accuracy:
        return lambda row: None if res.top1(row.run) is None else 100 * res.top1(row.run)
    return lambda row: None if row.run.size_bytes is None else row.run.size_bytes / 1024


def _bar(axis, x: float, width: float, row: RunRow) -> None:
    run = row.run
    invalid = run.valid is False
    axis.bar(x, res.p50_ms(run), width, color=_colour(run.format), edgecolor="black", linewidth=0.4,
             hatch="//" if invalid else None)
    if row.speed_up_vs_float is not None:
        label = f"{row.speed_up_vs_float:.2f}×" + (" invalid" if invalid else "")
        axis.annotate(label, (x, res.p50_ms(run)), xytext=(0, 2), textcoords="offset points", ha="center",
                      va="bottom", fontsize=6.5, rotation=90, zorder=4,
                      bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3, "alpha": 0.8})


def _save(figure, path: Path, rect: tuple | None = None) -> Path:
    plt = _pyplot()
    if rect is not None:
        figure.tight_layout(rect=rect)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)
    return path
