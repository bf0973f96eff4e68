"""Quantize the ImageNet MobileNetV2 1.0/224 from ../shared/data and measure int8 against float.

Calibrates on 200 images of ../shared/data/imagenet-sample (seeded choice) and evaluates every artifact
on the other 800: top-1 of float and int8, int8 top-1 agreement with float, size ratio, and the same
for the published per-channel PTQ model (tf2_mobilenet_v2_1.0_224_ptq.tflite, uint8 I/O) on the same
images. Prints a Markdown report (also written to benchmarks/results/quantize_imagenet.md).

    .venv/bin/python benchmarks/quantize_imagenet.py [--shared ../shared/data] [--formats ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def published_top1(shared: Path, eval_files: list[str], labels: np.ndarray) -> float:
    from edge_mobilenet.runtimes.tflite import make_interpreter
    from edge_mobilenet.data.images import decode_image

    interpreter = make_interpreter(shared / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite")
    detail, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    correct = 0
    for file, label in zip(eval_files, labels):
        pixels = decode_image(Path(file), (224, 224), 0.875)  # uint8 input: the model maps 0..255 to [-1, 1]
        interpreter.set_tensor(detail["index"], pixels[None].astype(detail["dtype"]))
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(out["index"])[0]) - 1 == label)
    return correct / len(eval_files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--formats", default="fp32,fp16,dynamic,int8,onnx,onnx-int8")
    parser.add_argument("--output", default=str(REPO / "build" / "bench-imagenet"))
    args = parser.parse_args()
    shared = Path(args.shared)
    sample = shared / "imagenet-sample"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--quiet",
                    "--model", str(shared / "models" / "mobilenet_v2_1.0_224_from_ptq.keras"),
                    "--calibration", str(sample), "--count", "200", "--eval", str(sample),
                    "--eval-count", "800", "--formats", args.formats, "--output", args.output], check=True)
    seconds = time.perf_counter() - started
    from edge_mobilenet.contracts.manifest import read_manifest

    entries = [e for e in read_manifest(args.output).entries if e.file.startswith("mobilenet_v2_1.0_224_from_ptq")]
    fp32 = next(e for e in entries if e.format == "fp32")
    from edge_mobilenet.data.calibration import CalibrationSource, choose_files

    chosen = {str(p) for p in choose_files(CalibrationSource(str(sample), 200, 0))}
    table = [line.split(",") for line in (sample / "labels.csv").read_text().splitlines()[1:]]
    held = [(str(sample / "images" / f), int(c)) for f, c, *_ in table if str(sample / "images" / f) not in chosen]
    published = published_top1(shared, [f for f, _ in held], np.array([c for _, c in held]))
    lines = ["# ImageNet MobileNetV2 1.0/224: float vs quantized", "",
             f"Calibration: 200 images of imagenet-sample (seed 0); evaluation: the other {len(held)}. "
             f"Conversion + validation of all formats: {seconds:.0f} s (`{' '.join(sys.argv)}`).", "",
             "| format | size KiB | size / fp32 | top-1 | float top-1 | top-1 agreement with float | convert s |",
             "|---|---|---|---|---|---|---|"]
    for e in entries:
        v = e.validation
        lines.append(f"| {e.format} | {e.size_bytes / 1024:.0f} | {e.size_bytes / fp32.size_bytes:.2f} | "
                     f"{v.metrics.get('top1', 'n/a') if v else 'n/a'} | {v.float_metrics.get('top1', 'n/a') if v else 'n/a'} | "
                     f"{v.agreement_with_float if v else 'n/a'} | {e.facts.get('convert_seconds')} |")
    lines += ["", f"Published per-channel PTQ model (tf2_mobilenet_v2_1.0_224_ptq.tflite) on the same "
              f"{len(held)} images: top-1 {published:.4f}", ""]
    report = "\n".join(lines)
    print(report)
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "results" / "quantize_imagenet.md").write_text(report)


if __name__ == "__main__":
    main()
