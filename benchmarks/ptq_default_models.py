"""Post-training methods on the default (32-px, digits) models: `--ptq auto` vs plain min/max.

Runs `edge-bench quantize --recipe converters/default.toml --formats int8,onnx-int8` twice, with
`--ptq none` and `--ptq auto` (the default), into build/bench-ptq/defaults/{none,auto}; the models
come from the recipe's cached training (build/models). Per model and integer format: what auto kept,
the paired comparison with float on the validation images (output SNR, agreement, top-1), whether
the file is plain min/max's very bytes when nothing was kept, and the seconds the methods took.
Writes benchmarks/results/ptq_default_models.md.

    .venv/bin/python benchmarks/ptq_default_models.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quantize(ptq: str, output: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--quiet", "--recipe",
                    "converters/default.toml", "--formats", "int8,onnx-int8", "--ptq", ptq, "--output", str(output)],
                   check=True, cwd=REPO)
    return time.perf_counter() - started


def stem(entry) -> str:
    return entry.file.rsplit(".", 2)[0]  # mobilenet_v1_0.25_32.int8.tflite -> mobilenet_v1_0.25_32


def _paired(entry) -> tuple[float, float, float]:
    paired = entry.validation.paired or {}
    return float(paired.get("snr_db", "nan")), float(paired.get("agreement", "nan")), entry.validation.metrics["top1"]


def row(plain, auto) -> str:
    record = auto.facts["recipe"]["ptq"]
    kept = ", ".join(record["applied"]) or "-"
    (snr0, agree0, top0), (snr1, agree1, top1) = _paired(plain), _paired(auto)
    same = "yes" if plain.sha256 == auto.sha256 else "no"
    float_top1 = auto.validation.float_metrics["top1"]
    return (f"| {stem(auto)} | {auto.format} | {kept} | {snr0:.2f} | {snr1:.2f} | {100 * agree0:.1f} | "
            f"{100 * agree1:.1f} | {top0:.4f} | {top1:.4f} | {float_top1:.4f} | {same} | {record['seconds']:.0f} |")


def main() -> None:
    from edge_mobilenet.contracts.manifest import read_manifest

    out = REPO / "build" / "bench-ptq" / "defaults"
    seconds = {ptq: quantize(ptq, out / ptq) for ptq in ("none", "auto")}
    plain = {(stem(e), e.format): e for e in read_manifest(out / "none").entries}
    rows = [row(plain[(stem(e), e.format)], e) for e in read_manifest(out / "auto").entries]
    lines = ["# Post-training methods on the default models: --ptq auto vs none", "",
             "`.venv/bin/python benchmarks/ptq_default_models.py`: `edge-bench quantize --recipe "
             "converters/default.toml --formats int8,onnx-int8` with `--ptq none` and `--ptq auto`; paired with "
             "float on the recipe's validation images. `same bytes`: the auto file is plain min/max's file. "
             "`ptq s`: the seconds the held-out contest took for that artifact.", "",
             "| model | format | auto kept | SNR none | SNR auto | agreement none % | agreement auto % | "
             "top-1 none | top-1 auto | top-1 float | same bytes | ptq s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
             f"Whole runs (4 models, both formats, validation included): none {seconds['none']:.0f} s, "
             f"auto {seconds['auto']:.0f} s, on a 2-core x86 VM.", "",
             "Reading: the contest judges methods on the held-out quarter of the calibration folder. The default "
             "calibration folder holds training-split digits, which the 32-px models fit closely (held-out SNR "
             "27-47 dB), while the validation split is harder (SNR 19-34 dB); a method that wins on the former "
             "can lose on the latter (clipped activation ranges most of all: with a 90% gain interval V1's TFLite "
             "kept ranges-mse, +2.9 dB held out, -1.9 dB on validation; the interval is now Bonferroni-wide for "
             "the five candidates, 98%, and that file is plain). Calibrate on images like the ones "
             "the model will see; `--ptq none` gives plain min/max. Each artifact's record "
             "(`facts.recipe.ptq.trials`) gives every trial's held-out SNR and its gain interval."]
    report = "\n".join(lines) + "\n"
    print(report)
    (REPO / "benchmarks" / "results" / "ptq_default_models.md").write_text(report)


if __name__ == "__main__":
    main()
