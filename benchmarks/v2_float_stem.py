"""MobileNetV2 1.0/224 int8 with its first blocks kept in float (selective quantization), timed interleaved
with the fp32 file and plain int8 (30 rounds of 40 invokes, one process). Needs build/bench-latency from
benchmarks/bench_latency.py and ../shared/data/imagenet-sample.

    .venv/bin/python benchmarks/v2_float_stem.py
"""
import sys, tempfile, numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_aware import interleave
from edge_mobilenet.quiet import native_noise_filtered
with native_noise_filtered():
    import keras
    from edge_mobilenet.convert.sources import load_float_model
    from edge_mobilenet.convert.tflite import export_saved_model
    from edge_mobilenet.convert.quant.tflite_debug import SelectiveQuantizer
    from edge_mobilenet.data.calibration import CalibrationSource, load_calibration
folder = Path("build/bench-latency")
fm = load_float_model(str(folder / "mobilenet_v2_1_224_random.keras"), output_dir=folder)
cal = load_calibration(CalibrationSource(str(Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"), 64, 0), fm.size, fm.preprocessing, progress=False).inputs(fm.preprocessing)
out = Path("build/v2_float_stem"); out.mkdir(exist_ok=True)
with tempfile.TemporaryDirectory() as d:
    export_saved_model(fm.model, d)
    q = SelectiveQuantizer(d, cal, "int8")
    import re
    from edge_mobilenet.convert.quant.tflite_debug import layer_errors
    names = {l.name for l in fm.model.layers}
    rows = layer_errors(d, cal, cal[:4], names)
    nodes = lambda prefixes: [r.node for r in rows if any(r.layer.startswith(p) for p in prefixes)]
    variants = {"plain": [], "stem": nodes(["Conv1", "bn_Conv1"]),
                "stem+expanded_conv": nodes(["Conv1", "bn_Conv1", "expanded_conv"]),
                "stem..block_2": nodes(["Conv1", "bn_Conv1", "expanded_conv", "block_1_", "block_2_"])}
    paths = [folder / "mobilenet_v2_1_224_random.fp32.tflite"]
    for name, ns in variants.items():
        p = out / f"{name}.tflite"; p.write_bytes(q.quantize(ns)); paths.append(p)
        print(name, len(ns), "nodes in float", flush=True)
p50s = interleave(paths, 30, 40)
for p, t in zip(paths, p50s):
    r = np.asarray(t) / np.asarray(p50s[0])
    print(f"{p.name:28s} p50 {np.median(t):.3f} ms  ratio {np.median(r):.3f} (IQR {np.percentile(r,25):.3f}-{np.percentile(r,75):.3f})")
