"""Float vs plain int8 vs accuracy-aware int8, on the ImageNet MobileNets and the trained V3s.

For each model: the ImageNet MobileNetV2 1.0/224 and MobileNetV1 0.25/128 from ../shared/data/models,
calibrated on 200 images of ../shared/data/imagenet-sample and evaluated on the other 800; and the
MobileNetV3-Small/Large that `make quantize` trains on the default task (validation split). Plain
int8 is full-integer PTQ; accuracy-aware int8 is `--target-accuracy` (99.5% for V1/V2, 99% for V3).
Writes benchmarks/results/accuracy_aware.md. Reproduce: `make accuracy-report`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quantize(model: Path, output: Path, target: str | None, extra: list[str]) -> dict:
    args = [sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--quiet", "--model", str(model),
            "--formats", "fp32,int8,onnx,onnx-int8", "--output", str(output), *extra]
    if target:
        args += ["--target-accuracy", target]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True)
    sys.stderr.write("".join(l + "\n" for l in result.stderr.splitlines() if "layer(s) in float" in l
                             or " built " in l or "error" in l))
    from edge_mobilenet.contracts.manifest import read_manifest

    entries = {e.format: e for e in read_manifest(output).entries if e.file.startswith(model.stem)}
    entries["_seconds"] = time.perf_counter() - started
    entries["_status"] = result.returncode
    return entries


def row(label: str, plain: dict, aware: dict, target: str) -> list[str]:
    top1 = lambda entry: entry.validation.metrics["top1"]
    fp32_top1 = plain["fp32"].validation.float_metrics["top1"]
    record = aware["int8"].facts.get("recipe", {}).get("accuracy_aware", {})
    onnx_top1 = top1(plain["onnx"])
    onnx_aware = aware["onnx-int8"].facts.get("recipe", {}).get("accuracy_aware", {})
    share = lambda v, f: f"{v:.4f} ({100 * v / f:.1f}%)" if f else "n/a"
    latency = record.get("latency_ms_p50_local", {})
    return [label, f"{fp32_top1:.4f}", share(top1(plain["int8"]), fp32_top1),
            share(record.get("top1", float("nan")), fp32_top1), target,
            str(len(record.get("float_layers", []))) + (" (" + ", ".join(record["float_layers"][:4]) + ")"
                                                         if record.get("float_layers") else ""),
            f"{latency.get('full_int8', float('nan')):.2f} / {latency.get('selective', float('nan')):.2f}",
            f"{onnx_top1:.4f}", share(top1(plain["onnx-int8"]), onnx_top1),
            share(onnx_aware.get("top1", float("nan")), onnx_top1)
            + f" [{len(onnx_aware.get('float_layers', []))} float: {', '.join(onnx_aware.get('float_layers', [])[:3])}]"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--output", default=str(REPO / "build" / "bench-accuracy-aware"))
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.output)
    sample = shared / "imagenet-sample"
    imagenet = ["--calibration", str(sample), "--count", "200", "--eval", str(sample), "--eval-count", "800"]
    jobs = [("MobileNetV2 1.0/224 (ImageNet)", shared / "models" / "mobilenet_v2_1.0_224_from_ptq.keras",
             "99.5%", imagenet),
            ("MobileNetV1 0.25/128 (ImageNet)", shared / "models" / "mobilenet_v1_0.25_128_from_quant.keras",
             "99.5%", imagenet),
            ("MobileNetV3-Small 0.5/32 (digits)", REPO / "build" / "models" / "mobilenet_v3_small_0.5_32.keras",
             "99%", []),
            ("MobileNetV3-Large 0.5/32 (digits)", REPO / "build" / "models" / "mobilenet_v3_large_0.5_32.keras",
             "99%", [])]
    rows = []
    for label, model, target, extra in jobs:
        if not model.is_file():
            print(f"skipping {label}: {model} is absent", file=sys.stderr)
            continue
        plain = quantize(model, out / "plain", None, extra)
        aware = quantize(model, out / "aware", target, extra)
        rows.append(row(label, plain, aware, target))
    headers = ["model", "float top-1", "plain int8 top-1 (of float)", "accuracy-aware int8 top-1",
               "target", "layers kept float", "p50 ms full/selective (local)", "ONNX fp32 top-1",
               "ONNX int8 top-1 (of float)", "ONNX accuracy-aware int8 top-1 [layers kept float]"]
    lines = ["# Accuracy-aware int8", "", f"`{' '.join(sys.argv)}`; TFLite via LiteRT 2.3, ONNX via ONNX "
             "Runtime (U8S8 QDQ, per-channel, MinMax). ImageNet rows: calibrated on 200 images of "
             "imagenet-sample, evaluated on the other 800.", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    report = "\n".join(lines) + "\n"
    print(report)
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "results" / "accuracy_aware.md").write_text(report)


if __name__ == "__main__":
    main()
