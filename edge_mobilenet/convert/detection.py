"""SSDLite detector -> TFLite (with ``TFLite_Detection_PostProcess``) and ONNX (with ``NonMaxSuppression``).

Standalone from the classification pipeline for now. Both exports give the four outputs of TFLite's
detection apps, in this order:

  * ``detection_boxes`` [1, D, 4] float32, (ymin, xmin, ymax, xmax) normalised to the image;
  * ``detection_classes`` [1, D] float32, the object class index counted WITHOUT the background
    (logit column c + 1 of ``class_predictions`` is class c);
  * ``detection_scores`` [1, D] float32, sorted high to low;
  * ``num_detections`` [1] float32; rows past it are padding;

D = ``NmsSettings.max_detections``.

Scores are ``sigmoid(logits)`` (the SSDLite configs' ``score_converter: SIGMOID``, and why the class
bias starts at -4.6): one independent probability per class, background column included. The TFLite
op gets all ``classes + 1`` columns with its ``num_classes`` attribute set to ``classes``: it skips the
first ``columns - num_classes`` (= 1, the background) and numbers the rest from 0.

TFLite: the Keras model, the sigmoid and an empty ``tf.function`` whose ``experimental_implements``
names ``TFLite_Detection_PostProcess`` and its attributes (as the TF Object Detection API's
``export_tflite_graph_lib_tf2``) go through a SavedModel written by ``keras.export.ExportArchive``
(tracks the Keras 3 variables so they freeze into constants; a plain ``tf.saved_model.save`` of a
``tf.Module`` leaves 400 VAR_HANDLE/READ_VARIABLE ops and unfolded batch norms that XNNPACK refuses),
then ``TFLiteConverter.from_saved_model`` with ``allow_custom_ops``. The converter's MLIR legalizes
the function into the custom op, anchors as its constant third input. LiteRT registers the op as a
builtin custom op: no extra registration needed. Boxes are decoded by the op and not clipped there;
with ``clip_boxes`` a MINIMUM/MAXIMUM pair after it clips them to [0, 1].

Box codes are clipped to +-``NmsSettings.box_code_limit`` and class logits to +-``class_logit_limit``
before the post-processing (``BOX_CODE_LIMIT``, ``CLASS_LOGIT_LIMIT``: why and what it buys int8), one way
for both exports (:func:`_clipped_parts`).

ONNX: tf2onnx converts the Keras model (box encodings and logits), a ``Sigmoid`` node is appended
(the raw model), int8 QDQ quantizes that raw model, and then the decoding (centre-size coder with
the anchors as constants), a class-agnostic ``NonMaxSuppression`` on the best object class of each
anchor (as the TFLite op's fast NMS, ``use_regular_nms=False``) and padding to D are appended with
``onnx.helper``: the post-processing stays float and out of quantization by construction.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import atomic_path, write_bytes_atomic
from edge_mobilenet.models.anchors import BOX_CODER

TFLITE_FORMATS = ("fp32", "fp16", "dynamic", "int8")
POSTPROCESS_OP = "TFLite_Detection_PostProcess"
OUTPUT_NAMES = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
RAW_OUTPUT_NAMES = ("box_encodings", "class_scores")
SCORE_CONVERSION = "sigmoid"
# Box codes of anchors matched to real boxes stay within about +-3.5 with the (10, 10, 5, 5) coder (IoU >= 0.5
# with an anchor of its size allows a centre offset of 1/3 of it, ty = 3.3, and a size ratio of 2, th = 3.5);
# anchors far from any object predict codes up to +-44 (measured on the default detector), which set the
# int8 range of the box outputs: a step of 0.3, 6% of a box's size. Clipped to +-4 the step is 0.03. On
# the default task (benchmarks/results/detection.md) fp32 mAP is unchanged and int8 keeps 99.2% of it
# (96.6% unclipped; +-8: 97.7%, +-5: 99.0%). ``raw`` outputs are not clipped.
BOX_CODE_LIMIT = 4.0
# Class logits: the background column reaches +93 and the object columns -189 (measured on a detector trained
# 30 epochs on the default task), so the int8 range of the concatenated logits had a step of 1.1, which
# reorders detections by score: simulated on the float outputs, mAP 0.097 -> 0.052 (the int8 artifact
# lost the same: 0.068). Clipped to +-8 (scores 0.0003 to 0.9997) fp32 mAP is unchanged and the simulated
# int8 logits keep it (0.0986); +-4: 0.0969, +-12: 0.0982.
CLASS_LOGIT_LIMIT = 8.0


@dataclass(frozen=True)
class NmsSettings:
    """Post-processing settings (defaults: the TF Object Detection API's SSDLite TFLite export).

    ``score_threshold``: detections need a score above it; ``iou_threshold``: a box overlapping a
    kept one by more is suppressed; ``max_detections``: D, the outputs' padded length. The TFLite op
    also takes ``max_classes_per_detection``, ``detections_per_class`` and ``use_regular_nms``
    (False: one class-agnostic NMS on each anchor's best class; the ONNX graph does the same).
    """

    score_threshold: float = 1e-8
    iou_threshold: float = 0.6
    max_detections: int = 10
    max_classes_per_detection: int = 1
    detections_per_class: int = 100
    use_regular_nms: bool = False
    clip_boxes: bool = False
    box_code_limit: float | None = BOX_CODE_LIMIT  # box codes clipped to +-this before post-processing
    class_logit_limit: float | None = CLASS_LOGIT_LIMIT  # class logits clipped to +-this before the sigmoid

    def __post_init__(self):
        if not 0.0 <= self.score_threshold < 1.0:
            raise EdgeError(f"NMS score threshold must be in [0, 1); received score_threshold={self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise EdgeError(f"NMS IoU threshold must be in (0, 1]; received iou_threshold={self.iou_threshold}")
        if self.max_detections < 1 or self.max_classes_per_detection < 1 or self.detections_per_class < 1:
            raise EdgeError(f"NMS counts must be >= 1; received max_detections={self.max_detections}")
        for name in ("box_code_limit", "class_logit_limit"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise EdgeError(f"{name} must be > 0 or None; received {name}={value}")
        if self.max_classes_per_detection != 1:
            raise EdgeError("only max_classes_per_detection=1 is supported (the ONNX graph keeps one class "
                            f"per box); received max_classes_per_detection={self.max_classes_per_detection}")


def postprocess_signature(nms: NmsSettings, classes: int) -> str:
    """The ``experimental_implements`` string: the op's name and attributes as a NameAttrList proto."""
    sy, sx, sh, sw = BOX_CODER.scale_factors
    attrs = [("max_detections", "i", nms.max_detections),
             ("max_classes_per_detection", "i", nms.max_classes_per_detection),
             ("detections_per_class", "i", nms.detections_per_class),
             ("use_regular_nms", "b", str(nms.use_regular_nms).lower()),
             ("nms_score_threshold", "f", repr(float(nms.score_threshold))),
             ("nms_iou_threshold", "f", repr(float(nms.iou_threshold))),
             ("y_scale", "f", sy), ("x_scale", "f", sx), ("h_scale", "f", sh), ("w_scale", "f", sw),
             ("num_classes", "i", classes)]
    return " ".join([f'name: "{POSTPROCESS_OP}"']
                    + [f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}' for key, kind, value in attrs])


def _checked(model, anchors) -> tuple[tuple[int, ...], np.ndarray, int]:
    """(input shape at batch 1, anchors float32 [N, 4], object classes) or one line saying what's wrong."""
    names = [getattr(t, "name", "") for t in model.outputs]
    if len(model.outputs) != 2:
        raise EdgeError(f"{model.name}: a detector has 2 outputs (box_encodings, class_predictions); "
                        f"received {len(model.outputs)}")
    boxes_shape, classes_shape = (tuple(t.shape) for t in model.outputs)
    anchors = np.asarray(anchors, dtype=np.float32)
    if anchors.shape != (boxes_shape[1], 4):
        raise EdgeError(f"{model.name}: {boxes_shape[1]} box predictions need anchors [{boxes_shape[1]}, 4]; "
                        f"received anchors of shape {anchors.shape} (outputs {names})")
    shape = tuple(model.input.shape)
    if len(shape) != 4 or None in shape[1:]:
        raise EdgeError(f"{model.name}: needs a fixed (batch, height, width, channels) input; received {shape}")
    return (1, *(int(d) for d in shape[1:])), anchors, int(classes_shape[-1]) - 1


def _concat_tree(parts, limit: int = 4):
    """Concatenate along axis 1 in groups of at most ``limit``: XNNPACK takes CONCATENATION of up to
    4 inputs (LiteRT 2.3) and leaves SSDLite's 6-input ones on the CPU, splitting the graph."""
    import tensorflow as tf

    parts = list(parts)
    while len(parts) > limit:
        parts = [tf.concat(parts[i:i + limit], axis=1) if len(parts[i:i + limit]) > 1 else parts[i]
                 for i in range(0, len(parts), limit)]
    return tf.concat(parts, axis=1)


def prediction_parts(model, box_code_limit: float | None = None, class_logit_limit: float | None = None):
    """A Keras model sharing the detector's layers whose outputs are the per-feature-map predictions
    ([box parts], [class parts]) that the detector concatenates into its two outputs; with a limit, those
    parts are in the clipped form of :func:`_clipped_parts`."""
    import keras

    boxes, classes = (list(model.get_layer(name).input) if limit is None else _clipped_parts(model, name, limit)
                      for name, limit in (("box_encodings", box_code_limit), ("class_predictions", class_logit_limit)))
    return keras.Model(model.input, [boxes, classes], name=f"{model.name}_parts")


def _clipped_parts(model, output: str, limit: float) -> list:
    """Per feature map, the predictions feeding ``output`` (box codes or class logits) clipped to
    [-limit, limit] in the form relu6(x * s + 3), s = 3 / limit (undone by :func:`_unclipped` after the
    concatenation): each predictor conv is cloned with s and the offset folded into its weights, and a
    ReLU6 follows it, which TFLite fuses into the conv and ONNX Runtime's QDQ quantizer quantizes with it
    (Conv + Clip). The int8 conv outputs then span the values that matter instead of the far larger ones
    of anchors nowhere near an object (``BOX_CODE_LIMIT``, ``CLASS_LOGIT_LIMIT``)."""
    import keras

    L, scale = keras.layers, 3.0 / limit
    inputs = model.get_layer(output).input
    by_output = {id(layer.output): layer for layer in model.layers}
    parts = []
    for reshape in (by_output[id(tensor)] for tensor in inputs):
        conv = model.get_layer(reshape.name.replace("_reshape", "_conv"))
        kernel, bias = conv.get_weights()
        clone = L.Conv2D(conv.filters, conv.kernel_size, padding=conv.padding, name=f"{conv.name}_clipped")
        x = clone(conv.input)
        clone.set_weights([kernel * scale, bias * scale + 3.0])
        x = L.ReLU(6.0, name=f"{conv.name}_clipped_relu6")(x)
        parts.append(L.Reshape(reshape.target_shape, name=f"{reshape.name}_clipped")(x))
    return parts


def _unclipped(parts, limit: float | None):
    """Parts (of :func:`prediction_parts` with the same ``limit``) -> their concatenation [1, N, K]."""
    if limit is None:
        return _concat_tree(parts)
    scale = 3.0 / limit
    return (_concat_tree(parts) - 3.0) / scale


def _serving_fn(heads, anchors: np.ndarray, classes: int, nms: NmsSettings, raw: bool, limit: float | None,
                class_limit: float | None):
    import tensorflow as tf

    anchors_constant = tf.constant(anchors, name="anchors")

    @tf.function(experimental_implements=postprocess_signature(nms, classes))
    def postprocess(box_encodings, class_scores, anchors):  # replaced by the custom op
        del box_encodings, class_scores, anchors
        return tuple(tf.constant(0.0, name=name) for name in ("boxes", "classes", "scores", "count"))

    def serve(images):
        box_parts, class_parts = heads(images, training=False)
        box_encodings = _unclipped(box_parts, limit)
        logits = _unclipped(class_parts, class_limit)
        scores = tf.sigmoid(logits)
        if raw:
            return dict(zip(RAW_OUTPUT_NAMES, (box_encodings, scores)))
        boxes, labels, best, count = postprocess(box_encodings, scores, anchors_constant)
        if nms.clip_boxes:
            boxes = tf.clip_by_value(boxes, 0.0, 1.0)
        return dict(zip(OUTPUT_NAMES, (boxes, labels, best, count)))

    return serve


def export_detector_saved_model(model, anchors, folder: str, nms: NmsSettings = NmsSettings(),
                                raw: bool = False, clipped: bool | None = None) -> None:
    """Write the detector + sigmoid (+ post-processing unless ``raw``) as a batch-1 SavedModel.

    ``clipped``: box codes and class logits clipped to ``nms``'s limits (default: unless ``raw``);
    ``raw=True, clipped=True`` is the part of a post-processed artifact that int8 quantizes (its per-layer
    report)."""
    import keras
    import tensorflow as tf

    shape, anchors, classes = _checked(model, anchors)
    clip = not raw if clipped is None else clipped
    limit, class_limit = (nms.box_code_limit, nms.class_logit_limit) if clip else (None, None)
    heads = prediction_parts(model, limit, class_limit)
    archive = keras.export.ExportArchive()
    archive.track(heads)
    archive.add_endpoint("serve", _serving_fn(heads, anchors, classes, nms, raw, limit, class_limit),
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    archive.write_out(folder, verbose=False)


def tflite_converter(folder: str, fmt: str, calibration, raw: bool):
    """The TFLiteConverter of a detector SavedModel for ``fmt`` (the custom post-process op allowed)."""
    import tensorflow as tf

    from edge_mobilenet.convert.tflite import representative_dataset

    converter = tf.lite.TFLiteConverter.from_saved_model(folder)
    converter.allow_custom_ops = True
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "fp32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "int8":
        if calibration is None or len(calibration) == 0:
            raise EdgeError("int8 detector conversion needs calibration images; received calibration=None")
        converter.representative_dataset = representative_dataset(np.asarray(calibration, np.float32))
        # BUILTINS too: the custom op and the float box clipping after it are not int8 builtins.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.inference_input_type = tf.int8
        if raw:
            converter.inference_output_type = tf.int8  # otherwise the post-process outputs stay float
    return converter


def tflite_facts(flatbuffer: bytes) -> dict:
    """Outputs (signature name, shape, dtype, quantization), op counts and XNNPACK delegation on LiteRT."""
    import collections

    from edge_mobilenet.runtimes.delegation import delegation_stats
    from edge_mobilenet.runtimes.tflite import make_interpreter

    interpreter = make_interpreter(flatbuffer)
    details = interpreter.get_signature_runner().get_output_details()
    outputs = []
    for name in signature_outputs(interpreter):
        detail = details[name]
        scale, zero_point = detail["quantization"]
        outputs.append({"name": name, "shape": [int(d) for d in detail["shape"]],
                        "dtype": np.dtype(detail["dtype"]).name,
                        **({"scale": float(scale), "zero_point": int(zero_point)} if scale else {})})
    detail = interpreter.get_input_details()[0]
    ops = collections.Counter(op["op_name"] for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE")
    return {"input": {"shape": [int(d) for d in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name},
            "outputs": outputs, "ops": dict(sorted(ops.items())), "delegation": delegation_stats(interpreter)}


def signature_outputs(interpreter) -> list[str]:
    """Output names in OUTPUT_NAMES / RAW_OUTPUT_NAMES order (the signature lists them sorted)."""
    names = interpreter.get_signature_list()["serving_default"]["outputs"]
    order = OUTPUT_NAMES if set(names) == set(OUTPUT_NAMES) else RAW_OUTPUT_NAMES
    return [name for name in order if name in names]


def export_tflite_detector(model, anchors, out_path, *, fmt: str = "fp32", calibration=None,
                           nms: NmsSettings = NmsSettings(), raw: bool = False) -> dict:
    """Convert a detector to one TFLite file (written atomically); returns facts for the manifest.

    Args:
        model: an SSDLite Keras model (``registry.build_detector``).
        anchors: [N, 4] (ycenter, xcenter, h, w), ``detection.detector_anchors(model)``.
        out_path: the .tflite file.
        fmt: ``fp32``, ``fp16``, ``dynamic`` or ``int8`` (int8 weights per channel and activations,
            int8 input; the post-processing op and so the four outputs stay float32).
        calibration: int8 only: preprocessed float images [n, H, W, 3].
        nms: post-processing settings.
        raw: outputs ``box_encodings`` [1, N, 4] and ``class_scores`` [1, N, classes + 1] (sigmoid)
            instead, no post-processing (int8: int8 outputs).
    """
    from edge_mobilenet.quiet import native_noise_filtered

    if fmt not in TFLITE_FORMATS:
        raise EdgeError(f"TFLite detector format must be one of {', '.join(TFLITE_FORMATS)}; received fmt={fmt!r}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge-detector-savedmodel-") as folder:
        export_detector_saved_model(model, anchors, folder, nms, raw)
        converter = tflite_converter(folder, fmt, calibration, raw)
        try:
            with native_noise_filtered():
                flatbuffer = converter.convert()
        except Exception as error:  # the converter raises many types with long messages
            raise EdgeError(f"TFLite detector conversion to {fmt} failed: {str(error).splitlines()[0][:200]}") from None
    seconds = time.perf_counter() - started
    write_bytes_atomic(out_path, flatbuffer)
    return {"format": fmt, "raw": raw, "nms": asdict(nms), "score_conversion": SCORE_CONVERSION,
            "postprocess": None if raw else POSTPROCESS_OP, "anchors": int(len(anchors)),
            "calibration_count": int(len(calibration)) if fmt == "int8" else 0,
            **tflite_facts(flatbuffer), "convert_seconds": round(seconds, 2)}


# ---------------------------------------------------------------- ONNX


def _add_sigmoid(proto) -> None:
    """Raw graph: rename the model's outputs to RAW_OUTPUT_NAMES, the class logits through a Sigmoid."""
    import onnx.helper as oh

    graph = proto.graph
    boxes, logits = graph.output
    for node in graph.node:
        for position, name in enumerate(node.output):
            if name == boxes.name:
                node.output[position] = RAW_OUTPUT_NAMES[0]
    graph.node.append(oh.make_node("Sigmoid", [logits.name], [RAW_OUTPUT_NAMES[1]], name="class_scores_sigmoid"))
    boxes.name = RAW_OUTPUT_NAMES[0]
    logits.name = RAW_OUTPUT_NAMES[1]


def _const(name: str, value) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name=name)


def _postprocess_constants(anchors: np.ndarray, classes: int, nms: NmsSettings) -> list:
    """The initializers the post-processing nodes read (anchors, box-coder scales, NMS settings, shapes)."""
    sy, sx, sh, sw = BOX_CODER.scale_factors
    anchors = anchors.astype(np.float32)
    d = nms.max_detections
    inits = [_const("pp_anchor_center", anchors[None, :, :2]),
             _const("pp_center_scale", (anchors[:, 2:] / np.array([sy, sx], np.float32))[None]),
             _const("pp_anchor_size", anchors[None, :, 2:]),
             _const("pp_size_scale", np.array([1 / sh, 1 / sw], np.float32)),
             _const("pp_half", np.float32(0.5)), _const("pp_zero", np.float32(0.0)),
             _const("pp_one", np.float32(1.0)),
             _const("pp_s0", np.array([0], np.int64)), _const("pp_s2", np.array([2], np.int64)),
             _const("pp_s4", np.array([4], np.int64)), _const("pp_s1", np.array([1], np.int64)),
             _const("pp_cend", np.array([classes + 1], np.int64)),
             _const("pp_max_out", np.array([d], np.int64)),
             _const("pp_iou", np.array([nms.iou_threshold], np.float32)),
             _const("pp_score", np.array([nms.score_threshold], np.float32)),
             _const("pp_pad_head", np.array([0, 0], np.int64)),
             _const("pp_pad_zero", np.array([0], np.int64)),
             _const("pp_box_index", np.array([2], np.int64)),
             _const("pp_flat", np.array([-1], np.int64)),
             _const("pp_shape_boxes", np.array([1, d, 4], np.int64)),
             _const("pp_shape_row", np.array([1, d], np.int64))]
    return inits


def _decode_nms_nodes() -> list:
    """Raw outputs -> decoded boxes, best class per anchor, and the indices NMS keeps."""
    import onnx.helper as oh

    enc, scores = RAW_OUTPUT_NAMES
    n = oh.make_node
    return [
        n("Slice", [enc, "pp_s0", "pp_s2", "pp_s2"], ["pp_t_center"]),  # (ty, tx), axis 2
        n("Slice", [enc, "pp_s2", "pp_s4", "pp_s2"], ["pp_t_size"]),  # (th, tw)
        n("Mul", ["pp_t_center", "pp_center_scale"], ["pp_c0"]),
        n("Add", ["pp_c0", "pp_anchor_center"], ["pp_center"]),
        n("Mul", ["pp_t_size", "pp_size_scale"], ["pp_l0"]),
        n("Exp", ["pp_l0"], ["pp_l1"]),
        n("Mul", ["pp_l1", "pp_anchor_size"], ["pp_size"]),
        n("Mul", ["pp_size", "pp_half"], ["pp_half_size"]),
        n("Sub", ["pp_center", "pp_half_size"], ["pp_mins"]),
        n("Add", ["pp_center", "pp_half_size"], ["pp_maxs"]),
        n("Concat", ["pp_mins", "pp_maxs"], ["pp_decoded"], axis=2),  # [1, N, 4] ymin xmin ymax xmax
        n("Slice", [scores, "pp_s1", "pp_cend", "pp_s2"], ["pp_objects"]),  # drop the background column
        n("ReduceMax", ["pp_objects"], ["pp_best"], axes=[2], keepdims=0),  # [1, N]
        n("ArgMax", ["pp_objects"], ["pp_label"], axis=2, keepdims=0),  # [1, N]
        n("Unsqueeze", ["pp_best", "pp_s1"], ["pp_nms_scores"]),  # [1, 1, N]
        n("NonMaxSuppression", ["pp_decoded", "pp_nms_scores", "pp_max_out", "pp_iou", "pp_score"],
          ["pp_selected"], center_point_box=0),  # [K, 3], by score, high first
        n("Gather", ["pp_selected", "pp_box_index"], ["pp_idx2"], axis=1),
        n("Reshape", ["pp_idx2", "pp_flat"], ["pp_idx"]),  # [K]
    ]


def _gather_pad_nodes(clip_boxes: bool) -> list:
    """The kept boxes, scores and classes gathered and padded to max_detections: OUTPUT_NAMES."""
    import onnx.helper as oh

    n = oh.make_node
    nodes = [
        n("Squeeze", ["pp_decoded", "pp_s0"], ["pp_decoded_n"]),
        n("Reshape", ["pp_best", "pp_flat"], ["pp_best_n"]),
        n("Reshape", ["pp_label", "pp_flat"], ["pp_label_n"]),
        n("Gather", ["pp_decoded_n", "pp_idx"], ["pp_sel_boxes"], axis=0),
        n("Gather", ["pp_best_n", "pp_idx"], ["pp_sel_scores"], axis=0),
        n("Gather", ["pp_label_n", "pp_idx"], ["pp_sel_label"], axis=0),
        n("Cast", ["pp_sel_label"], ["pp_sel_classes"], to=1),
        n("Shape", ["pp_idx"], ["pp_k"]),
        n("Sub", ["pp_max_out", "pp_k"], ["pp_missing"]),
        n("Concat", ["pp_pad_zero", "pp_pad_zero", "pp_missing", "pp_pad_zero"], ["pp_pads_boxes"], axis=0),
        n("Concat", ["pp_pad_zero", "pp_missing"], ["pp_pads_row"], axis=0),
        n("Pad", ["pp_sel_boxes", "pp_pads_boxes", "pp_zero"], ["pp_boxes_padded"]),
        n("Pad", ["pp_sel_scores", "pp_pads_row", "pp_zero"], ["pp_scores_padded"]),
        n("Pad", ["pp_sel_classes", "pp_pads_row", "pp_zero"], ["pp_classes_padded"]),
        n("Reshape", ["pp_boxes_padded", "pp_shape_boxes"], ["pp_boxes_unclipped"]),
        n("Reshape", ["pp_classes_padded", "pp_shape_row"], [OUTPUT_NAMES[1]]),
        n("Reshape", ["pp_scores_padded", "pp_shape_row"], [OUTPUT_NAMES[2]]),
        n("Cast", ["pp_k"], [OUTPUT_NAMES[3]], to=1),
    ]
    if clip_boxes:
        nodes.append(n("Clip", ["pp_boxes_unclipped", "pp_zero", "pp_one"], [OUTPUT_NAMES[0]]))
    else:
        nodes.append(n("Identity", ["pp_boxes_unclipped"], [OUTPUT_NAMES[0]]))
    return nodes


def postprocess_nodes(anchors: np.ndarray, classes: int, nms: NmsSettings):
    """(nodes, initializers) turning RAW_OUTPUT_NAMES into OUTPUT_NAMES: decode, best class, NMS, pad."""
    inits = _postprocess_constants(anchors, classes, nms)
    nodes = _decode_nms_nodes() + _gather_pad_nodes(nms.clip_boxes)
    for node in nodes:
        node.name = f"postprocess/{node.output[0]}"
    return nodes, inits


def append_postprocess(raw_path: Path, out_path: Path, anchors: np.ndarray, classes: int, nms: NmsSettings) -> None:
    """A raw detector ONNX file (outputs RAW_OUTPUT_NAMES) + float post-processing -> ``out_path``."""
    import onnx
    import onnx.helper as oh

    from edge_mobilenet.runtimes.onnx import load_onnx, opset_of

    proto = load_onnx(raw_path)
    if opset_of(proto) < 13:
        raise EdgeError(f"{raw_path}: post-processing needs ONNX opset >= 13; the model imports {opset_of(proto)}")
    nodes, inits = postprocess_nodes(anchors, classes, nms)
    graph = proto.graph
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    d = nms.max_detections
    del graph.output[:]
    graph.output.extend([oh.make_tensor_value_info(OUTPUT_NAMES[0], onnx.TensorProto.FLOAT, [1, d, 4]),
                         oh.make_tensor_value_info(OUTPUT_NAMES[1], onnx.TensorProto.FLOAT, [1, d]),
                         oh.make_tensor_value_info(OUTPUT_NAMES[2], onnx.TensorProto.FLOAT, [1, d]),
                         oh.make_tensor_value_info(OUTPUT_NAMES[3], onnx.TensorProto.FLOAT, [1])])
    onnx.checker.check_model(proto)
    with atomic_path(out_path, suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))


def clipped_model(model, nms: NmsSettings):
    """The detector with its box codes and class logits clipped as the TFLite graph clips them
    (:func:`_clipped_parts`), for the ONNX export."""
    import keras

    L, outputs = keras.layers, []
    for name, limit in (("box_encodings", nms.box_code_limit), ("class_predictions", nms.class_logit_limit)):
        if limit is None:
            outputs.append(model.get_layer(name).output)
            continue
        x = L.Concatenate(axis=1, name=f"{name}_clipped")(_clipped_parts(model, name, limit))
        outputs.append(L.Rescaling(limit / 3.0, offset=-limit, name=name)(x))
    return keras.Model(model.input, outputs, name=model.name)


def export_raw_onnx(model, out_path) -> dict:
    """tf2onnx float export of the detector with a Sigmoid on the logits: outputs RAW_OUTPUT_NAMES."""
    import onnx

    from edge_mobilenet.convert.onnx_convert import convert_onnx

    with tempfile.TemporaryDirectory(prefix="edge-detector-onnx-") as folder:
        plain = Path(folder) / "plain.onnx"
        facts = convert_onnx(model, plain)
        proto = onnx.load(str(plain))
        _add_sigmoid(proto)
        with atomic_path(out_path, suffix=".onnx") as tmp:
            onnx.save(proto, str(tmp))
    return facts


def onnx_facts(path: Path) -> dict:
    import collections

    from edge_mobilenet.runtimes.onnx import load_onnx, onnx_io_spec

    spec = onnx_io_spec(path)
    ops = collections.Counter(node.op_type for node in load_onnx(path).graph.node)
    return {"outputs": [{"name": o.name, "shape": list(o.shape), "dtype": o.dtype} for o in spec["outputs"]],
            "opset": spec["opset"], "ops": {op: ops[op] for op in ("QuantizeLinear", "DequantizeLinear", "Conv",
                                                                   "NonMaxSuppression")}}


def export_onnx_detector(model, anchors, out_path, *, int8: bool = False, calibration=None,
                         nms: NmsSettings = NmsSettings(), raw: bool = False, quant_options=None) -> dict:
    """Convert a detector to ONNX (float32, or int8 QDQ U8S8 per-channel on the backbone and heads).

    The post-processing (decode + NonMaxSuppression + padding, float32) is appended after quantization,
    so it is never quantized; ``raw`` skips it. ``quant_options``: an ``OnnxQuantOptions`` (default:
    the classification pipeline's U8S8, per-channel, min-max). Returns facts for the manifest.
    """
    from edge_mobilenet.convert.onnx_convert import OnnxQuantOptions, quantize_onnx

    _, anchors, classes = _checked(model, anchors)
    if int8 and (calibration is None or len(calibration) == 0):
        raise EdgeError("int8 ONNX detector conversion needs calibration images; received calibration=None")
    started = time.perf_counter()
    facts: dict = {"int8": int8, "raw": raw, "nms": asdict(nms), "score_conversion": SCORE_CONVERSION}
    with tempfile.TemporaryDirectory(prefix="edge-detector-onnx-") as folder:
        raw_path = Path(folder) / "raw.onnx"
        facts["tf2onnx"] = export_raw_onnx(model if raw else clipped_model(model, nms), raw_path)
        if int8:
            quantized = Path(folder) / "raw_int8.onnx"
            facts["quantization"] = quantize_onnx(raw_path, quantized, np.asarray(calibration, np.float32),
                                                  quant_options or OnnxQuantOptions())
            raw_path = quantized
        if raw:
            with atomic_path(out_path, suffix=".onnx") as tmp:
                tmp.write_bytes(raw_path.read_bytes())
        else:
            append_postprocess(raw_path, Path(out_path), anchors, classes, nms)
    facts.update(onnx_facts(Path(out_path)), convert_seconds=round(time.perf_counter() - started, 2))
    return facts
