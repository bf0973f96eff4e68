"""Detection targets of issue 11: mAP of every format on the default task, and int8 vs fp32 latency of
SSDLite-MobileNetV2 1.0 at 320 on LiteRT.

Part 1, default task (``--skip-map`` to leave out): the default detector trained as ``edge-bench train
--model ssdlite_mobilenet_v2`` does (synthetic digits set, 96 px, stride-8 map; reused when its
``.keras`` exists in ``--models``), then ``edge-bench quantize`` into every format; each format's COCO
mAP@[.5:.95] and mAP@0.5 on the val split (pycocotools), against the Keras model decoded as the graphs
do, and the share of float mAP kept.

Part 2, latency (``--skip-latency``): SSDLite-MobileNetV2 1.0/320, 90 classes, random weights with every
BatchNormalization's statistics from 32 synthetic detection images at 320 px, converted to fp32 and int8
TFLite (the post-processing op in both; int8 calibrated on 64 other images). Both interpreters live in one
process, 1 thread, XNNPACK on; ``--rounds`` alternating rounds of ``--runs`` invokes each (the order
flips every round). Reported: each p50 over all invokes, the median per-round ratio int8/fp32 with its
IQR, and what XNNPACK took (the post-process op is expected outside). Random weights time like trained
ones (same graph, same kernels); their mAP is meaningless and not reported.

Prints Markdown and writes it to benchmarks/results/detection.md.

    .venv/bin/python benchmarks/detection.py [--epochs 100] [--rounds 25 --runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]


def default_task(args) -> list[str]:
    from edge_mobilenet.contracts.manifest import Manifest
    from edge_mobilenet.convert.batch import ModelRequest, quantize
    from edge_mobilenet.convert.settings import QuantizeSettings
    from edge_mobilenet.train_detection import DetectionTrainSettings, train_detector

    settings = DetectionTrainSettings(epochs=args.epochs, output_dir=str(args.models), progress=True)
    model_path = Path(args.models) / f"{settings.stem}.keras"
    metrics_path = model_path.with_name(f"{settings.stem}.metrics.json")
    if not (model_path.is_file() and metrics_path.is_file()):
        train_detector(settings)
    record = json.loads(metrics_path.read_text())
    output = Path(args.artifacts)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    quantize([ModelRequest(str(model_path), ("fp32", "fp16", "dynamic", "int8", "onnx", "onnx-int8"))],
             QuantizeSettings(output_dir=str(output), progress=False))
    seconds = time.perf_counter() - started
    entries = [e for e in Manifest(output).entries if e.source_file == str(model_path)]
    validation = entries[0].validation
    lines = [f"## Default task: {record['model']} {record['alpha']:g}/{record['size']}, "
             f"{record['anchors']['count']} anchors",
             "",
             f"Trained {record['settings']['epochs']} epochs on {record['train_images']} synthetic images "
             f"({record['train_boxes']} boxes) in {record['seconds']:.0f} s; evaluated on {validation.eval_set}. "
             f"Keras float (decoded on the host as the "
             f"graphs do: best class per anchor, class-agnostic NMS IoU 0.6, 10 detections): "
             f"mAP {validation.float_metrics['map']:.4f}, mAP@0.5 {validation.float_metrics['map50']:.4f} "
             f"(host evaluation with per-class NMS and 100 detections, from training: mAP "
             f"{record['metrics']['map']:.4f}, mAP@0.5 {record['metrics']['map50']:.4f}). "
             f"Conversion of the six formats with validation: {seconds:.0f} s.",
             "",
             "| format | size KiB | mAP | mAP@0.5 | mAP % of float | float detections (score >= 0.5) found |",
             "|---|---|---|---|---|---|"]
    for entry in entries:
        v = entry.validation
        kept = 100 * v.metrics["map"] / v.float_metrics["map"] if v.float_metrics["map"] else float("nan")
        lines.append(f"| {entry.format} | {entry.size_bytes / 1024:.0f} | {v.metrics['map']:.4f} | "
                     f"{v.metrics['map50']:.4f} | {kept:.1f} | {100 * v.agreement_with_float:.1f}% |")
    return lines + [""]


def _invoker(flatbuffer: bytes):
    from edge_mobilenet.runtimes.tflite import make_interpreter

    interpreter = make_interpreter(flatbuffer, threads=1)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    return interpreter.invoke


def latency(args) -> list[str]:
    from edge_mobilenet.convert.detection import export_tflite_detector
    from edge_mobilenet.data.detection import write_detection_set
    from edge_mobilenet.data.preprocess import get_preprocessing
    from edge_mobilenet.models.detection import detector_anchors
    from edge_mobilenet.models.registry import build_detector, get_detector
    from edge_mobilenet.train import calibrate_batch_norm
    from edge_mobilenet.train_detection import image_pixels

    name, size = "ssdlite_mobilenet_v2", 320
    # raw: the same graph without the post-processing op, to see what it costs
    with tempfile.TemporaryDirectory(prefix="edge-det-bench-") as folder:
        write_detection_set(Path(folder) / "set", count=96, seed=1, size=size, progress=False)
        from edge_mobilenet.data.detection import load_coco

        images = load_coco(Path(folder) / "set" / "train").images + load_coco(Path(folder) / "set" / "val").images
        pixels = image_pixels(images, size)
        inputs = get_preprocessing(get_detector(name).preprocessing).apply(pixels)
        model = build_detector(name, alpha=1.0, size=size, classes=90)
        calibrate_batch_norm(model, inputs[:32])
        anchors = detector_anchors(model)
        facts, flatbuffers = {}, {}
        for fmt, raw in (("fp32", False), ("int8", False), ("fp32 raw", True), ("int8 raw", True)):
            target = Path(folder) / f"{fmt.replace(' ', '_')}.tflite"
            facts[fmt] = export_tflite_detector(model, anchors, target, fmt=fmt.split()[0], raw=raw,
                                                calibration=inputs[32:96])
            flatbuffers[fmt] = target.read_bytes()
    invokers = {fmt: _invoker(data) for fmt, data in flatbuffers.items()}
    for invoke in invokers.values():
        for _ in range(5):
            invoke()
    times = {fmt: [] for fmt in invokers}
    for index in range(args.rounds):
        order = list(invokers) if index % 2 == 0 else list(invokers)[::-1]
        for fmt in order:
            invoke, round_times = invokers[fmt], []
            for _ in range(args.runs):
                started = time.perf_counter()
                invoke()
                round_times.append((time.perf_counter() - started) * 1e3)
            times[fmt].append(round_times)
    p50 = {fmt: float(np.median(np.concatenate(rounds))) for fmt, rounds in times.items()}

    def ratio(a: str, b: str) -> tuple:
        return tuple(np.percentile([np.median(x) / np.median(y) for x, y in zip(times[a], times[b])], [25, 50, 75]))

    q1, median, q3 = ratio("int8", "fp32")
    raw_q1, raw_median, raw_q3 = ratio("int8 raw", "fp32 raw")
    lines = [f"## Latency: {name} 1.0/{size}, 90 classes, {len(anchors)} anchors, LiteRT, 1 thread",
             "",
             f"{args.rounds} alternating rounds of {args.runs} invokes each, in one process; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.",
             "",
             "| format | p50 ms | XNNPACK nodes delegated/total (partitions) | ops outside |",
             "|---|---|---|---|"]
    for fmt in times:
        d = facts[fmt]["delegation"]
        lines.append(f"| {fmt} | {p50[fmt]:.2f} | {d['nodes_delegated']}/{d['nodes_total']} ({d['partitions']}) "
                     f"| {', '.join(f'{k}×{v}' for k, v in d['ops_outside'].items()) or 'none'} |")
    post = {fmt: p50[fmt] - p50[f"{fmt} raw"] for fmt in ("fp32", "int8")}
    lines += ["", f"int8 / fp32, median per-round ratio: **{median:.3f}** (IQR {q1:.3f}-{q3:.3f}); without the "
              f"post-processing (``raw``: box encodings and sigmoid scores out): {raw_median:.3f} "
              f"(IQR {raw_q1:.3f}-{raw_q3:.3f}). The post-processing op (float in both, outside XNNPACK) "
              f"costs about {post['fp32']:.2f} ms (fp32 graph) / {post['int8']:.2f} ms (int8 graph, with the "
              "dequantization of 2034x91 scores before it) of each p50.", ""]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the CLI's)")
    parser.add_argument("--models", default=str(REPO / "build" / "models"))
    parser.add_argument("--artifacts", default=str(REPO / "build" / "artifacts-detection"))
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--skip-map", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "detection.md"))
    args = parser.parse_args(argv)
    if args.epochs is None:
        from edge_mobilenet.train_detection import DetectionTrainSettings

        args.epochs = DetectionTrainSettings().epochs
    lines = ["# Detection (issue 11)", "", f"`{' '.join(['benchmarks/detection.py', *sys.argv[1:]])}`", ""]
    if not args.skip_map:
        lines += default_task(args)
    if not args.skip_latency:
        lines += latency(args)
    text = "\n".join(lines)
    print(text)
    Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
