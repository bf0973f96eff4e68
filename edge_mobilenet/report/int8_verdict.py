"""Does int8 pay on this device? One plain verdict per integer artifact, and the fastest format instead.

Thin MobileNets can run slower in int8 than in float on some CPUs, though fully delegated (measured on
a 2-core x86 VM: V1 0.25/64 1.2x, the 32-px defaults ~2x the float time), while wide ones run at a
third of it; ARM cores with dot-product instructions differ again. So a report states, per integer run:
its time against its float baseline, whether that is a gain, a loss or within noise, and which format
of the same source model ran fastest on that device with the same threads.

Noise: with interleaved rounds (``bench --rounds``) the verdict is read from the per-round ratios'
interquartile range (a gain when the whole IQR is below 1, a loss when above); without them, from the
two p50s with a ``BLOCK_NOISE`` band, since separately timed blocks drift by tens of percent on shared
machines. Emulated boards get no verdict (their times are meaningless). Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_mobilenet.contracts.formats import FORMATS
from edge_mobilenet.report import results as res
from edge_mobilenet.report.results import RunRow

BLOCK_NOISE = 0.10  # p50s timed in separate blocks: a ratio within 1 +- this is not called either way


@dataclass(frozen=True)
class Int8Verdict:
    row: RunRow
    ratio: float  # int8 time / float time
    spread: tuple[float, float] | None  # per-round IQR of the ratio (interleaved), else None
    fastest: RunRow  # the fastest format of the same source model on this device, same threads

    @property
    def pays(self) -> bool | None:
        """True: faster than float; False: slower; None: within noise (or emulated)."""
        if self.row.run.emulated:
            return None
        low, high = self.spread or (self.ratio * (1 - BLOCK_NOISE), self.ratio * (1 + BLOCK_NOISE))
        return True if high < 1 else False if low > 1 else None

    def __str__(self) -> str:
        run = self.row.run
        spread = (f" (interleaved, IQR {self.spread[0]:.2f}–{self.spread[1]:.2f})" if self.spread
                  else " (timed in separate blocks)")
        head = f"{self.row.model} {run.format}: {self.ratio:.2f}× the float time{spread}"
        if run.emulated:
            return head + ": no verdict, the board is emulated"
        fastest = self.fastest.run
        instead = (f"; fastest here: {fastest.format} ({res.p50_ms(fastest):.4g} ms)"
                   if self.fastest is not self.row else "; it is the fastest format here")
        verdict = {True: "int8 pays", False: "**int8 does not pay on this device**",
                   None: "no clear difference from float"}[self.pays]
        return f"{head}: {verdict}{instead}"


def verdicts(rows: list[RunRow]) -> list[Int8Verdict]:
    """One verdict per latest ok integer-format run that has a float baseline with a p50."""
    latest = [r for r in rows if r.latest and r.run.status == "ok" and res.p50_ms(r.run)]
    found = []
    for row in latest:
        fmt = FORMATS.get(row.run.format)
        if not (fmt and fmt.integer and row.baseline and res.p50_ms(row.baseline)):
            continue
        interleaved = res.interleaved_ratio(row.run)
        if interleaved and interleaved["baseline"] == row.baseline.artifact:
            ratio, spread = interleaved["median"], (interleaved["q1"], interleaved["q3"])
        else:
            ratio, spread = res.p50_ms(row.run) / res.p50_ms(row.baseline), None
        siblings = [r for r in latest if r.model == row.model and r.run.device_name == row.run.device_name
                    and res.threads_of(r.run) == res.threads_of(row.run)]
        found.append(Int8Verdict(row, ratio, spread, min(siblings, key=lambda r: res.p50_ms(r.run))))
    return found
