"""Is int8 MobileNetV3 faster than float on LiteRT, with and without the hard-swish rewrite?

For V3-Small and V3-Large at 224, alpha 1.0 (and the minimalistic variants beside them), on this
machine ("local"), LiteRT with its default XNNPACK delegate, 1 and 2 threads, all artifacts of a model
interleaved run by run (so drift hits all alike), ``--runs`` timed invokes each after 10 warm-ups:

* ``fp32``           stock graph (Activation hard_swish -> TFLite HARD_SWISH, which XNNPACK takes in float)
* ``fp32-decomposed`` the builder's ``hard_swish="decomposed"`` form in float
* ``int8``           stock graph, full-integer (int8 HARD_SWISH is not taken by XNNPACK: graph split)
* ``int8-decomposed`` the builder's decomposed form: (x / 6) * relu6(x + 3)
* ``int8-rewritten``  ``convert.rewrite.rewrite_hard_swish`` of the stock model: x * relu6(x + 3), the 1/6
  deferred into the next BatchNormalization (folded by the converter) or onto pooled tensors

Weights are random (no pretrained V3 is available offline) with every BatchNormalization's moving
statistics set from 32 real images, so activations have trained-like ranges; int8 calibration uses
50 other images; "agree" is the int8 top-1 agreement with its float model on 100 further images and
"rel. err" the RMS int8-vs-float output error over the RMS float output (both before softmax).
ONNX Runtime: fp32 (tf2onnx) against U8S8 QDQ per-channel static int8 of the stock and rewritten
graphs (``--onnx``). Prints Markdown (also written to benchmarks/results/v3_hardswish.md).

    .venv/bin/python benchmarks/v3_hardswish.py [--runs 300] [--onnx] [--models small,large,...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from edge_mobilenet.train import calibrate_batch_norm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
SIZE = 224
MODELS = {"small": "mobilenet_v3_small", "large": "mobilenet_v3_large",
          "small_minimalistic": "mobilenet_v3_small_minimalistic",
          "large_minimalistic": "mobilenet_v3_large_minimalistic"}


def images(shared: Path, count: int) -> np.ndarray:
    """Real photos (0..255 float) when ../shared/data is present, else seeded uniform noise."""
    sample = shared / "imagenet-sample"
    if not sample.is_dir():
        return np.random.default_rng(0).uniform(0, 255, (count, SIZE, SIZE, 3)).astype(np.float32)
    from edge_mobilenet.data.images import load_folder

    chosen = load_folder(sample, (SIZE, SIZE))
    order = np.random.default_rng(0).permutation(len(chosen.pixels))[:count]
    return chosen.pixels[order].astype(np.float32)


def keras_variants(name: str, pixels: np.ndarray) -> dict:
    """{label: logits-output Keras model}, all with the same weights."""
    import keras

    from edge_mobilenet.convert.rewrite import rewrite_hard_swish
    from edge_mobilenet.models import build_model

    keras.utils.set_random_seed(0)
    stock = build_model(name, size=SIZE, dropout=0.0, classifier_activation=None)
    calibrate_batch_norm(stock, pixels[:32])
    variants = {"stock": stock}
    if "minimalistic" not in name:
        decomposed = build_model(name, size=SIZE, dropout=0.0, classifier_activation=None,
                                 hard_swish="decomposed")
        decomposed.set_weights(stock.get_weights())
        variants["decomposed"] = decomposed
        variants["rewritten"], report = rewrite_hard_swish(stock)
        assert not report["left"], report
    return variants


def tflite_artifacts(variants: dict, pixels: np.ndarray) -> dict[str, bytes]:
    from edge_mobilenet.convert.tflite import convert_keras

    plan = {"stock": ["fp32", "int8"], "decomposed": ["fp32", "int8"], "rewritten": ["int8"]}
    artifacts = {}
    for label, model in variants.items():
        for fmt, (flatbuffer, _) in convert_keras(model, plan[label], pixels[32:82]).items():
            artifacts[fmt if label == "stock" else f"{fmt}-{label}"] = flatbuffer
    return artifacts


def time_interleaved(sessions: dict, runs: int) -> dict[str, np.ndarray]:
    """{label: latencies in ms}; ``sessions`` maps label -> a zero-argument run callable."""
    for run in sessions.values():
        for _ in range(10):
            run()
    times = {label: [] for label in sessions}
    for _ in range(runs):
        for label, run in sessions.items():
            started = time.perf_counter()
            run()
            times[label].append((time.perf_counter() - started) * 1e3)
    return {label: np.asarray(values) for label, values in times.items()}


def litert_session(flatbuffer: bytes, threads: int):
    from edge_mobilenet.runtimes.tflite import make_interpreter

    interpreter = make_interpreter(flatbuffer, threads)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    return interpreter, interpreter.invoke


def quality(flatbuffer: bytes, reference: np.ndarray, pixels: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement with the float logits, RMS error / RMS float)."""
    from edge_mobilenet.runtimes.tflite import make_interpreter, run_tflite

    logits = run_tflite(make_interpreter(flatbuffer), pixels)
    agree = float(np.mean(np.argmax(logits, 1) == np.argmax(reference, 1)))
    error = float(np.sqrt(np.mean((logits - reference) ** 2)) / np.sqrt(np.mean(reference ** 2)))
    return agree, error


def litert_rows(key: str, pixels: np.ndarray, runs: int) -> list[str]:
    from edge_mobilenet.runtimes.delegation import delegation_stats

    name = MODELS[key]
    variants = keras_variants(name, pixels)
    artifacts = tflite_artifacts(variants, pixels)
    evaluation = pixels[82:182]
    reference = variants["stock"].predict(evaluation, verbose=0)
    latency, stats = {}, {}
    for threads in (1, 2):
        sessions = {label: litert_session(flat, threads) for label, flat in artifacts.items()}
        stats = {label: delegation_stats(interpreter) for label, (interpreter, _) in sessions.items()}
        measured = time_interleaved({label: run for label, (_, run) in sessions.items()}, runs)
        latency[threads] = {label: float(np.median(values)) for label, values in measured.items()}
    rows = []
    for label, flat in artifacts.items():
        agree, error = quality(flat, reference, evaluation) if label.startswith("int8") else (1.0, 0.0)
        outside = ", ".join(f"{op} {n}" for op, n in stats[label]["ops_outside"].items()) or "-"
        cells = [f"{latency[t][label]:.2f} | {latency[t][label] / latency[t]['fp32']:.2f}" for t in (1, 2)]
        rows.append(f"| {name} | {label} | {stats[label]['partitions']} | {outside} | {cells[0]} | "
                    f"{cells[1]} | {agree:.2f} | {error:.3f} |")
    return rows


def onnx_rows(key: str, pixels: np.ndarray, runs: int, folder: Path) -> list[str]:
    """fp32 ONNX (tf2onnx) vs U8S8 QDQ per-channel int8 of the stock and the rewritten graph."""
    from edge_mobilenet.convert.onnx_convert import convert_onnx, quantize_onnx
    from edge_mobilenet.runtimes.onnx import make_session, run_onnx

    name = MODELS[key]
    variants = keras_variants(name, pixels)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for label in ("stock", "rewritten"):
        float_path = folder / f"{name}_{label}.onnx"
        convert_onnx(variants[label], float_path)
        if label == "stock":
            paths["fp32"] = float_path
        paths["int8" if label == "stock" else "int8-rewritten"] = folder / f"{name}_{label}_int8.onnx"
        quantize_onnx(float_path, paths["int8" if label == "stock" else "int8-rewritten"], pixels[32:82])
    evaluation = pixels[82:182]
    reference = variants["stock"].predict(evaluation, verbose=0)
    latency = {}
    for threads in (1, 2):
        sessions = {label: make_session(path, threads) for label, path in paths.items()}
        feeds = {label: {s.get_inputs()[0].name: pixels[:1]} for label, s in sessions.items()}
        runners = {label: (lambda s=s, f=feeds[label]: s.run(None, f)) for label, s in sessions.items()}
        measured = time_interleaved(runners, runs)
        latency[threads] = {label: float(np.median(values)) for label, values in measured.items()}
    rows = []
    for label, path in paths.items():
        logits = run_onnx(path, evaluation)
        agree = float(np.mean(np.argmax(logits, 1) == np.argmax(reference, 1)))
        error = float(np.sqrt(np.mean((logits - reference) ** 2)) / np.sqrt(np.mean(reference ** 2)))
        cells = [f"{latency[t][label]:.2f} | {latency[t][label] / latency[t]['fp32']:.2f}" for t in (1, 2)]
        rows.append(f"| {name} | {label} | {cells[0]} | {cells[1]} | {agree:.2f} | {error:.3f} |")
    return rows


def header(runs: int) -> list[str]:
    from importlib import metadata

    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("ai-edge-litert", "tensorflow-cpu", "keras"))
    return [f"# int8 vs float MobileNetV3 at {SIZE}, alpha 1.0: the hard-swish rewrite", "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}; "
            f"{versions}. LiteRT + XNNPACK, p50 of {runs} interleaved runs, batch 1. "
            f"Command: `.venv/bin/python benchmarks/v3_hardswish.py {' '.join(sys.argv[1:])}`.", "",
            "| model | artifact | XNNPACK partitions | ops outside | p50 ms 1 thread | x fp32 | "
            "p50 ms 2 threads | x fp32 | int8 top-1 agree | rel. err |",
            "|---|---|---|---|---|---|---|---|---|---|"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--onnx", action="store_true", help="also ONNX Runtime fp32 vs QDQ int8")
    parser.add_argument("--onnx-only", action="store_true", help="skip LiteRT")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "v3_hardswish.md"))
    args = parser.parse_args()
    pixels = images(Path(args.shared), 182)
    lines = header(args.runs)
    for key in ([] if args.onnx_only else args.models.split(",")):
        rows = litert_rows(key, pixels, args.runs)
        print("\n".join(rows), file=sys.stderr, flush=True)
        lines += rows
    if args.onnx or args.onnx_only:
        lines += ["", "## ONNX Runtime (CPU EP, U8S8 QDQ per-channel, MinMax on the same 50 images)", "",
                  "| model | artifact | p50 ms 1 thread | x fp32 | p50 ms 2 threads | x fp32 | "
                  "int8 top-1 agree | rel. err |", "|---|---|---|---|---|---|---|---|"]
        for key in [k for k in args.models.split(",") if "minimalistic" not in k]:
            lines += onnx_rows(key, pixels, args.runs, REPO / "build" / "v3_hardswish_onnx")
    text = "\n".join(lines) + "\n"
    print(text)
    from edge_mobilenet.fileio import write_text_atomic

    write_text_atomic(args.output, text)


if __name__ == "__main__":
    main()
