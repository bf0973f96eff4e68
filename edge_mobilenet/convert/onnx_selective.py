"""Accuracy-aware ONNX int8: keep the most sensitive convolutions out of QDQ (``nodes_to_exclude``).

Sensitivity comes from the TFLite per-layer error of the same Keras model (:mod:`quant_debug`), so
both runtimes rank layers the same way. Layers are matched to ONNX nodes by position: in a MobileNet
every convolution lies on the one chain the data flows through (squeeze-excite convolutions feed the
projection that follows them), so the k-th Conv/Gemm/MatMul node of tf2onnx's topologically ordered
graph is the k-th Conv2D/DepthwiseConv2D/Dense layer of the Keras model. When the counts differ the
mapping is refused rather than guessed.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_mobilenet.errors import EdgeError

WEIGHT_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


def layer_to_node(model, onnx_path: Path) -> dict[str, str]:
    """Keras weight layer name -> ONNX node name, by position along the graph."""
    import onnx

    layers = [l.name for l in model.layers if type(l).__name__ in WEIGHT_LAYERS]
    nodes = [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type in WEIGHT_OPS]
    if len(layers) != len(nodes):
        raise EdgeError(f"{onnx_path}: {len(nodes)} ONNX weight nodes for {len(layers)} Keras layers; "
                        "cannot tell which node is which layer")
    return dict(zip(layers, nodes))


def weight_layer_of(tflite_node: str, layer_names: set[str]) -> str | None:
    """The Conv2D/DepthwiseConv2D/Dense layer a (fused) TFLite op computes, from its tensor name."""
    for part in re.split(r"[;/]", tflite_node):
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in layer_names:
                return candidate
    return None


def onnx_ranking(tflite_ranking: list, model, onnx_path: Path) -> list:
    """TFLite layer errors (worst first) turned into ONNX nodes to exclude, worst first, no repeats."""
    mapping = layer_to_node(model, onnx_path)
    ranked, seen = [], set()
    for row in tflite_ranking:
        layer = weight_layer_of(row.node, set(mapping))
        if layer and layer not in seen:
            seen.add(layer)
            ranked.append(replace(row, layer=layer, node=mapping[layer]))
    return ranked


class OnnxSelectiveQuantizer:
    """ONNX Runtime static quantization with chosen nodes left in float; returns the model bytes."""

    def __init__(self, float_path: Path, calibration: np.ndarray, options):
        self.float_path, self.calibration, self.options = Path(float_path), calibration, options

    def quantize(self, nodes) -> bytes:
        from edge_mobilenet.convert.onnx_convert import quantize_onnx

        with tempfile.TemporaryDirectory(prefix="edge-onnx-selective-") as folder:
            target = Path(folder) / "selective.onnx"
            quantize_onnx(self.float_path, target, self.calibration,
                          replace(self.options, nodes_to_exclude=tuple(nodes)))
            return target.read_bytes()


def onnx_top1(model_bytes: bytes, inputs: np.ndarray, labels: np.ndarray, offset: int) -> float:
    from edge_mobilenet.convert.onnx_convert import make_session, run_onnx

    with tempfile.TemporaryDirectory(prefix="edge-onnx-score-") as folder:
        path = Path(folder) / "candidate.onnx"
        path.write_bytes(model_bytes)
        outputs = run_onnx(make_session(path), inputs)
    return float(np.mean(np.argmax(outputs.reshape(len(outputs), -1), axis=1) - offset == labels))


def onnx_latency_ms_p50(model_bytes: bytes, runs: int = 50) -> float:
    """Median ONNX Runtime run time of a model on this machine (1 thread; a cost estimate)."""
    import time

    from edge_mobilenet.convert.onnx_convert import make_session

    with tempfile.TemporaryDirectory(prefix="edge-onnx-latency-") as folder:
        path = Path(folder) / "candidate.onnx"
        path.write_bytes(model_bytes)
        session = make_session(path)
    feed = session.get_inputs()[0]
    batch = np.zeros([d if isinstance(d, int) else 1 for d in feed.shape], np.float32)
    session.run(None, {feed.name: batch})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {feed.name: batch})
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))
