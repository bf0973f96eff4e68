"""Post-training int8 methods vs plain min/max on the ImageNet MobileNetV1 0.25/128 and V2 1.0/224.

Each model is quantized (TFLite int8 and ONNX int8, PTQ only: no layer left in float) with
`edge-bench quantize --ptq P` for P in none (plain min/max), each method alone, and auto (every method
tried on held-out calibration images, the best kept), calibrated on 200 images of
../shared/data/imagenet-sample and validated on the other 800. Per artifact: the paired comparison
with the float model on those 800 images (output SNR, KL, top-1 agreement, delta top-1 with its 95%
paired-bootstrap CI), top-1 as a share of float top-1, and the seconds quantize took (post-training
methods included). Writes benchmarks/results/ptq_methods.md.

    .venv/bin/python benchmarks/ptq_methods.py [--models v1,v2] [--ptq none,bias-correction,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"v1": ("MobileNetV1 0.25/128", "mobilenet_v1_0.25_128_from_quant.keras"),
          "v2": ("MobileNetV2 1.0/224", "mobilenet_v2_1.0_224_from_ptq.keras")}
PTQ = "none,equalization,bias-correction,adaround,ranges-percentile,ranges-mse,auto"


def quantize(model: Path, ptq: str, output: Path, sample: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--quiet", "--model", str(model),
                    "--formats", "int8,onnx-int8", "--ptq", ptq, "--calibration", str(sample), "--count", "200",
                    "--eval", str(sample), "--eval-count", "800", "--output", str(output)], check=True, cwd=REPO)
    return time.perf_counter() - started


def row(label: str, ptq: str, entry, seconds: float) -> str:
    paired, validation = entry.validation.paired or {}, entry.validation
    top1, float_top1 = validation.metrics.get("top1"), validation.float_metrics.get("top1")
    low, high = (100 * v for v in paired.get("delta_ci") or (float("nan"), float("nan")))
    record = entry.facts.get("recipe", {}).get("ptq", {})
    kept = ", ".join(record.get("applied") or []) or "-"
    return (f"| {label} | {entry.format} | {ptq} | {kept} | {float(paired.get('snr_db', 'nan')):.2f} | "
            f"{float(paired.get('kl', 'nan')):.4f} | {100 * paired.get('agreement', float('nan')):.1f} | "
            f"{top1:.4f} ({100 * top1 / float_top1:.1f}%) | {low:+.1f} to {high:+.1f} | {record.get('seconds', 0):.0f} | "
            f"{seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--output", default=str(REPO / "build" / "bench-ptq"))
    parser.add_argument("--models", default="v1,v2")
    parser.add_argument("--ptq", default=PTQ)
    args = parser.parse_args()
    from edge_mobilenet.contracts.manifest import read_manifest

    shared, out = Path(args.shared), Path(args.output)
    rows = []
    for key in args.models.split(","):
        label, file = MODELS[key]
        model = shared / "models" / file
        if not model.is_file():
            raise SystemExit(f"{model}: absent (this benchmark needs ../shared/data)")
        for ptq in args.ptq.split(","):
            folder = out / key / ptq.replace(",", "+")
            seconds = quantize(model, ptq, folder, shared / "imagenet-sample")
            for entry in read_manifest(folder).entries:
                rows.append(row(label, ptq, entry, seconds))
                print(rows[-1], flush=True)
    command = f"- `{' '.join(sys.argv)}` ({time.strftime('%Y-%m-%d')})"
    rows, runs = _merged(rows, args.models.split(","), args.ptq.split(","), command)
    lines = ["# Post-training int8 methods vs plain min/max", "",
             "Calibrated on 200 imagenet-sample images, paired with float on the other "
             "800; TFLite via LiteRT 2.3, ONNX via ONNX Runtime 1.31 (U8S8 QDQ, 7-bit per-channel weights); "
             "2-core x86 VM. `kept`: what `--ptq auto` kept after its held-out contest (named methods are applied "
             "as asked). `ptq s`: the post-training methods' own seconds for that artifact (held-out contest or "
             "named methods); `run s`: the whole quantize run for both formats (load, calibrate, methods, "
             "convert, validate on 800 images).", "", *runs, "",
             "| model | format | --ptq | kept | SNR dB | KL | agreement % | top-1 (of float) | Δ top-1 95% CI (pt) "
             "| ptq s | run s |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows]
    report = "\n".join(lines) + "\n"
    print(report)
    (REPO / "benchmarks" / "results" / "ptq_methods.md").write_text(report)


def _merged(rows: list[str], models: list[str], ptqs: list[str], command: str) -> tuple[list[str], list[str]]:
    """The committed table's rows with those of this run's models x --ptq values replaced (so one method
    can be re-run alone), in model then PTQ order; and the runs that produced them (the committed ones
    whose rows are all replaced are dropped)."""
    path = REPO / "benchmarks" / "results" / "ptq_methods.md"
    text = path.read_text() if path.is_file() else ""
    key = lambda line: tuple(cell.strip() for cell in line.strip("|").split("|")[:3])  # model, format, ptq
    labels = {MODELS[m][0] for m in models}
    old = [line for line in text.splitlines() if line.startswith("| MobileNet")
           and not (key(line)[0] in labels and key(line)[2] in ptqs)]
    order = {label: i for i, (label, _) in enumerate(MODELS.values())}
    methods = PTQ.split(",")
    rank = lambda line: (order.get(key(line)[0], 99), methods.index(key(line)[2]) if key(line)[2] in methods else 99,
                         key(line)[1])
    runs = [line.strip() for line in text.splitlines() if line.startswith("- `")] if old else []
    return sorted(old + rows, key=rank), [*runs, command]


if __name__ == "__main__":
    main()
