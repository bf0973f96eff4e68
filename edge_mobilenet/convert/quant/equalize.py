"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and
Bias Correction", sec. 4.1) for pairs of convolutions joined by a ReLU.

For a convolution W1 (output channel i) followed by a positively homogeneous activation and a
convolution W2 (input channel i), ``relu(x / s) = relu(x) / s`` for s > 0, so channel i of W1 and its
bias can be divided by s_i and channel i of W2's input multiplied by it without changing the
function. With s_i = sqrt(r1_i / r2_i) (r = the channel's largest |weight| in each layer), both
channels end with the range sqrt(r1_i r2_i): a channel with a tiny range next to large ones no longer
wastes its share of the int8 grid. Pairs handled: Conv2D / DepthwiseConv2D (depth multiplier 1,
linear, after BN folding) -> ReLU -> [ZeroPadding2D ...] -> Conv2D / DepthwiseConv2D, where each
intermediate tensor has that one consumer. Chains (W1 -> W2 -> W3) are swept until the scales settle.

ReLU6 (MobileNet V1 and V2 everywhere, V3's hard-swish gates) is not scale-equivariant: relu6(x / s) * s
clips at 6 s instead of 6. AIMET replaces ReLU6 with ReLU, which changes the float model. Here a
ReLU6 pair is equalized only where the calibration data allow it exactly: channels whose
pre-activation reaches the clip on the calibration images keep s = 1; for the others s is bounded
below so that the largest value seen stays under the clip by ``CLIP_HEADROOM`` (s >= headroom * max / 6).
On the calibration images the function is then unchanged; an input driving such a channel further
than ever seen could clip where the original model would not (the post-training contest, paired
with the *original* float model on held-out images, keeps equalization only where it helps).

With per-channel int8 weights (TFLite and our ONNX Runtime QDQ) the weight ranges were never shared
across channels, so the gain is smaller than the paper's per-tensor case; what changes is the
per-tensor activation range between the two layers and the weight grids after rescaling.
"""

from __future__ import annotations

import numpy as np

from edge_mobilenet.convert.quant import weights as W

CLIP_HEADROOM = 1.5
SWEEPS = 8
SETTLED = 1e-3  # a sweep whose every |log s| is below this ends the iteration


def _channel_op(layer) -> bool:
    kind = W._kind(layer)
    return kind == "Conv2D" or (kind == "DepthwiseConv2D" and layer.depth_multiplier == 1)


def _relu_clip(layer) -> float | None:
    """The clip of a plain ReLU layer (inf for no clip), or None when ``layer`` is not one."""
    import keras

    if not isinstance(layer, keras.layers.ReLU) or float(layer.negative_slope) != 0 or float(layer.threshold) != 0:
        return None
    return np.inf if layer.max_value is None else float(layer.max_value)


def _single_user(node, users: dict, outputs: set):
    tensor = node.outputs[0]
    following = users.get(id(tensor), [])
    return following[0] if len(following) == 1 and len(node.outputs) == 1 and id(tensor) not in outputs else None


def equalizable_pairs(graph) -> list[tuple[object, object, float]]:
    """(first layer, second layer, clip of the ReLU between) for every pair this module handles."""
    import keras

    users, outputs, pairs = W._consumers(graph), {id(t) for t in graph.outputs}, []
    for node in W._nodes(graph):
        first = node.operation
        if not _channel_op(first) or not W._is_linear(first) or not first.use_bias:
            continue
        act = _single_user(node, users, outputs)
        clip = _relu_clip(act.operation) if act is not None else None
        following = _single_user(act, users, outputs) if clip is not None else None
        while following is not None and isinstance(following.operation, keras.layers.ZeroPadding2D):
            following = _single_user(following, users, outputs)
        if following is not None and _channel_op(following.operation):
            pairs.append((first, following.operation, clip))
    return pairs


def _out_range(layer) -> np.ndarray:
    """Per output channel, the largest |weight| (Conv2D [h,w,in,out]; depthwise [h,w,channel,1])."""
    axes = (0, 1, 2) if W._kind(layer) == "Conv2D" else (0, 1, 3)
    return np.max(np.abs(np.asarray(layer.kernel)), axis=axes)


def _in_range(layer) -> np.ndarray:
    """Per input channel, the largest |weight| (both kinds: axis 2 of the kernel)."""
    return np.max(np.abs(np.asarray(layer.kernel)), axis=(0, 1, 3))


def _rescale(first, second, scale: np.ndarray) -> None:
    """first's output channel i and bias / s_i, second's input channel i * s_i."""
    kernel = np.asarray(first.kernel, np.float64)
    shape = (1, 1, -1, 1) if W._kind(first) == "DepthwiseConv2D" else (1, 1, 1, -1)
    first.kernel.assign((kernel / scale.reshape(shape)).astype(np.float32))
    first.bias.assign((np.asarray(first.bias, np.float64) / scale).astype(np.float32))
    second.kernel.assign((np.asarray(second.kernel, np.float64) * scale.reshape(1, 1, -1, 1)).astype(np.float32))


def _peaks(graph, layers: list, images: np.ndarray) -> dict[str, np.ndarray]:
    """Per layer in ``layers``: each output channel's largest value on ``images``."""
    names, peaks = {layer.name for layer in layers}, {}

    def visit(node, calls):
        out = [node.operation(*args, **kwargs) for args, kwargs in calls]
        if node.operation.name in names:
            values = np.asarray(out[0])
            peaks[node.operation.name] = values.reshape(-1, values.shape[-1]).max(axis=0).astype(np.float64)
        return out

    W._run(graph, np.asarray(images, np.float32), 1, visit)
    return peaks


def _scales(first, second, clip: float, peak: np.ndarray | None) -> np.ndarray:
    r1, r2 = _out_range(first).astype(np.float64), _in_range(second).astype(np.float64)
    scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1)), 1.0)
    if np.isfinite(clip):  # ReLU6: exact on the calibration images only (module docstring)
        scale = np.where(peak >= clip, 1.0, np.maximum(scale, CLIP_HEADROOM * np.maximum(peak, 0) / clip))
    return scale


def equalize(model, calibration_inputs: np.ndarray):
    """``(model, report)``: a folded copy of ``model`` (:func:`weights.fold_batch_norms`) with every
    pair of :func:`equalizable_pairs` equalized; ``calibration_inputs`` bound the ReLU6 pairs.
    report: ``{first layer: {"second", "activation", "scaled_channels", "held_at_clip",
    "range_spread_before", "range_spread_after"}}`` (spread: max / median of the first layer's
    per-channel weight ranges)."""
    new = W.fold_batch_norms(model)
    graph = W._graph(new)
    pairs = equalizable_pairs(graph)
    clipped = [first for first, _, clip in pairs if np.isfinite(clip)]
    peaks = _peaks(graph, clipped, calibration_inputs) if clipped else {}
    spread = lambda r: float(np.max(r) / max(np.median(r), 1e-30))  # noqa: E731
    report = {first.name: {"second": second.name, "activation": "relu" if np.isinf(clip) else f"relu{clip:g}",
                           "range_spread_before": round(spread(_out_range(first)), 2), "scaled_channels": 0,
                           "held_at_clip": int(np.sum(peaks[first.name] >= clip)) if first.name in peaks else 0}
              for first, second, clip in pairs}
    for _ in range(SWEEPS):
        largest = 0.0
        for first, second, clip in pairs:
            scale = _scales(first, second, clip, peaks.get(first.name))
            _rescale(first, second, scale)
            if first.name in peaks:
                peaks[first.name] = peaks[first.name] / scale
            report[first.name]["scaled_channels"] = max(report[first.name]["scaled_channels"],
                                                        int(np.sum(np.abs(np.log(scale)) > SETTLED)))
            largest = max(largest, float(np.max(np.abs(np.log(scale)))) if scale.size else 0.0)
        if largest < SETTLED:
            break
    for first, _, _ in pairs:
        report[first.name]["range_spread_after"] = round(spread(_out_range(first)), 2)
    return new, report
