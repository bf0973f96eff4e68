"""Which configurations are worth running: Pareto fronts, the fastest run within an accuracy loss, and
the thread count to use, per device (latencies of different devices are never compared).

Inputs are the rows of ``results.analyse``; only the latest ok run of each artifact with a p50 counts.
A run is on a front when no other run is at least as good on both axes and better on one (top-1: higher is
better; p50 and size: lower is better); equal points are all on it, ordered as the input. Runs without
top-1 (random weights, no labels) are left out of the accuracy fronts. Pure functions: no TensorFlow, no
matplotlib.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from edge_mobilenet.contracts.records import RunRecord
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.report import results as res
from edge_mobilenet.report.results import RunRow

DEFAULT_ACCURACY_LOSS_PT = 1.0
SLOWER_NOISE_PCT = 1.0  # more threads this much slower or less is not flagged: timing noise
_TOLERANCE = 1e-9  # top-1 in points is 100 * a fraction: 89.5 may come out as 89.49999999999999


@dataclass(frozen=True)
class WithinLoss:
    """The fastest run whose top-1 is at most ``loss_pt`` points below the most accurate run's."""

    best: RunRow
    fastest: RunRow
    loss_pt: float

    def __str__(self) -> str:
        best, fastest = self.best.run, self.fastest.run
        if self.fastest is self.best:
            return (f"{config_label(best)} ({_point(best)}): the most accurate run is also the fastest "
                    f"within {self.loss_pt:g} pt")
        times = res.p50_ms(best) / res.p50_ms(fastest)
        drop = top1_pct(fastest) - top1_pct(best)
        return (f"{config_label(fastest)} ({_point(fastest)}): {times:.2f}× faster than the most accurate "
                f"run, {config_label(best)} ({_point(best)}), {drop:+.2f} pt")


@dataclass(frozen=True)
class Slowdown:
    """``threads`` ran ``slower_pct`` % slower than the fastest run with fewer threads, ``than_threads``."""

    threads: int
    than_threads: int
    slower_pct: float


@dataclass(frozen=True)
class ThreadAdvice:
    """The thread counts one artifact ran with on one device, the fastest of them, and the slowdowns."""

    model: str
    format: str
    p50_ms_by_threads: dict[int, float]
    best_threads: int
    slower: tuple[Slowdown, ...]

    def __str__(self) -> str:
        """``3 threads: 4 is 12% slower``."""
        flags = [f"{s.threads} is {s.slower_pct:.0f}% slower"
                 + ("" if s.than_threads == self.best_threads else f" than {s.than_threads}")
                 for s in self.slower]
        return f"{self.best_threads} thread{'s' if self.best_threads != 1 else ''}" + (": " + "; ".join(flags) if flags else "")


@dataclass(frozen=True)
class DeviceSummary:
    """One device's candidates (latest ok runs with a p50, in input order) and what they show.

    Attributes:
        latency_front: top-1 vs p50, by p50.
        size_front: top-1 vs size in bytes, by size, over one run per artifact (its fastest thread count).
        size_latency_front: size vs p50, by p50 (what is left to compare when no run has top-1).
        without_accuracy: how many candidates have no top-1 (left out of the accuracy fronts).
        within_loss: the fastest run within the accuracy loss, None when no run has top-1.
        threads: one entry per artifact run with several thread counts.
    """

    device: str
    runs: tuple[RunRow, ...]
    latency_front: tuple[RunRow, ...]
    size_front: tuple[RunRow, ...]
    size_latency_front: tuple[RunRow, ...]
    without_accuracy: int
    within_loss: WithinLoss | None
    threads: tuple[ThreadAdvice, ...]

    @property
    def has_accuracy(self) -> bool:
        return self.without_accuracy < len(self.runs)


def parse_accuracy_loss(text: str) -> float:
    """``"1pt"`` -> 1.0 (top-1 percentage points, 0 to 100); a one-line EdgeError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*pt\s*", text)
    if not match or float(match.group(1)) > 100:
        raise EdgeError(f"--accuracy-loss {text!r}: expected top-1 percentage points from 0 to 100, "
                        f"such as 1pt or 0.5pt")
    return float(match.group(1))


def top1_pct(run: RunRecord) -> float | None:
    value = res.top1(run)
    return None if value is None else 100 * value


def sweep_info(run: RunRecord) -> dict:
    """``run.extra["sweep"]`` (written by ``edge-bench sweep``), or {}."""
    info = run.extra.get("sweep")
    return info if isinstance(info, dict) else {}


def model_label(run: RunRecord) -> str:
    """``mobilenet_v1 a0.25 s32 c10`` from the sweep fields, else the artifact name without its suffix."""
    info = sweep_info(run)
    if not info.get("model"):
        return res.model_of(run)
    parts = [str(info["model"])] + [f"{tag}{info[key]:g}" for tag, key in (("a", "alpha"), ("s", "size"),
                                                                           ("c", "classes"))
                                    if isinstance(info.get(key), (int, float))]
    return " ".join(parts)


def config_label(run: RunRecord) -> str:
    """``mobilenet_v1 a0.25 s32 c10 int8 2t``: what tells the runs on one device apart."""
    threads = res.threads_of(run)
    return f"{model_label(run)} {run.format} {'?' if threads is None else threads}t"


def _point(run: RunRecord) -> str:
    accuracy = top1_pct(run)
    return f"{res.p50_ms(run):.4g} ms, " + ("top-1 n/a" if accuracy is None else f"{accuracy:.2f} %")


def candidates(rows: list[RunRow]) -> list[RunRow]:
    """The latest ok runs with a p50, in input order."""
    return [r for r in rows if r.latest and res.p50_ms(r.run) is not None]


def pareto_front(rows: list[RunRow], cost: Callable[[RunRow], float | None],
                 value: Callable[[RunRow], float | None]) -> list[RunRow]:
    """The rows no other row beats (lower ``cost``, higher ``value``), by cost; rows lacking either are out.

    Equal points are all kept (neither beats the other), in input order.
    """
    scored = [(cost(r), value(r), i, r) for i, r in enumerate(rows)]
    scored = sorted((s for s in scored if s[0] is not None and s[1] is not None),
                    key=lambda s: (s[0], -s[1], s[2]))
    front: list[RunRow] = []
    last = None
    for x, y, _, row in scored:
        if last is None or y > last[1] or (x, y) == last:
            front.append(row)
            last = (x, y)
    return front


def _p50(row: RunRow) -> float | None:
    return res.p50_ms(row.run)


def _top1(row: RunRow) -> float | None:
    return top1_pct(row.run)


def _minus_size(row: RunRow) -> float | None:
    return None if row.run.size_bytes is None else -row.run.size_bytes


def latency_front(rows: list[RunRow]) -> list[RunRow]:
    """Top-1 vs p50."""
    return pareto_front(rows, _p50, _top1)


def size_front(rows: list[RunRow]) -> list[RunRow]:
    """Top-1 vs size in bytes, over :func:`fastest_per_artifact` (the thread count changes neither)."""
    return pareto_front(fastest_per_artifact(rows), lambda r: r.run.size_bytes, _top1)


def fastest_per_artifact(rows: list[RunRow]) -> list[RunRow]:
    """One row per (device, source model, format): the lowest p50 (equal: fewer threads), in input order."""
    best: dict[tuple, RunRow] = {}
    for row in rows:
        key = (row.run.device_name, res.source_key(row.run), row.run.format)
        if key not in best or _speed_key(row) < _speed_key(best[key]):
            best[key] = row
    kept = {id(r) for r in best.values()}
    return [r for r in rows if id(r) in kept]


def _speed_key(row: RunRow) -> tuple:
    threads = res.threads_of(row.run)
    return _p50(row), threads if isinstance(threads, int) else 0


def size_latency_front(rows: list[RunRow]) -> list[RunRow]:
    """Size vs p50 (both lower is better)."""
    return pareto_front(rows, _p50, _minus_size)


def fastest_within(rows: list[RunRow], loss_pt: float = DEFAULT_ACCURACY_LOSS_PT) -> WithinLoss | None:
    """The fastest row within ``loss_pt`` top-1 points of the most accurate row; None without top-1.

    Ties: the most accurate is the faster one; the fastest is the more accurate one; then input order.
    """
    rated = [r for r in rows if _top1(r) is not None and _p50(r) is not None]
    if not rated:
        return None
    best = min(rated, key=lambda r: (-_top1(r), _p50(r)))
    within = [r for r in rated if _top1(r) >= _top1(best) - loss_pt - _TOLERANCE]
    return WithinLoss(best, min(within, key=lambda r: (_p50(r), -_top1(r))), loss_pt)


def thread_advice(rows: list[RunRow]) -> list[ThreadAdvice]:
    """Per (source model, format) run with two or more thread counts: the fastest count and the slowdowns.

    ``rows`` are one device's candidates. A count is flagged when it is more than ``SLOWER_NOISE_PCT`` slower
    than the fastest run with fewer threads. Equal p50: the fewer threads win.
    """
    groups: dict[tuple, dict[int, RunRow]] = {}
    for row in rows:
        threads = res.threads_of(row.run)
        if isinstance(threads, int) and _p50(row) is not None:
            groups.setdefault((res.source_key(row.run), row.run.format), {})[threads] = row
    advice = []
    for by_threads in groups.values():
        if len(by_threads) < 2:
            continue
        p50 = {t: _p50(by_threads[t]) for t in sorted(by_threads)}
        counts = list(p50)
        slower = []
        for i, threads in enumerate(counts[1:], start=1):
            fewer = min(counts[:i], key=lambda t: (p50[t], t))
            pct = 100 * (p50[threads] / p50[fewer] - 1)
            if pct > SLOWER_NOISE_PCT:
                slower.append(Slowdown(threads, fewer, pct))
        run = by_threads[counts[0]].run
        best = min(counts, key=lambda t: (p50[t], t))
        advice.append(ThreadAdvice(model_label(run), run.format, p50, best, tuple(slower)))
    return advice


def summarise(rows: list[RunRow],
              accuracy_loss_pt: float = DEFAULT_ACCURACY_LOSS_PT) -> dict[str, DeviceSummary]:
    """Per device (in input order): fronts, the fastest run within the loss and the thread advice."""
    summaries = {}
    for device, device_rows in res.by_device(candidates(rows)).items():
        summaries[device] = DeviceSummary(
            device=device, runs=tuple(device_rows), latency_front=tuple(latency_front(device_rows)),
            size_front=tuple(size_front(device_rows)),
            size_latency_front=tuple(size_latency_front(device_rows)),
            without_accuracy=sum(_top1(r) is None for r in device_rows),
            within_loss=fastest_within(device_rows, accuracy_loss_pt),
            threads=tuple(thread_advice(device_rows)))
    return summaries
