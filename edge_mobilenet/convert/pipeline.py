"""calibrate -> convert -> validate, for every model and format, into a folder with a manifest.

Each artifact is written to a temporary name and renamed, then recorded in the manifest at once, so
a failure half way keeps every artifact already finished. An artifact whose inputs (float model
bytes, format options, calibration images, tool versions) are unchanged is reused, not rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_mobilenet.convert.formats import Format
from edge_mobilenet.convert.manifest import Manifest, tool_versions
from edge_mobilenet.data.calibration import CalibrationSource
from edge_mobilenet.data.preprocess import Preprocessing
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file, write_bytes_atomic


# Bumped when the manifest facts an artifact carries change, so older entries are rebuilt.
PIPELINE_VERSION = 3

# Runtimes every artifact is checked against (from its operator versions / opset) in the manifest.
TFLITE_RUNTIMES_CHECKED = ("tflite-runtime==2.14", "ai-edge-litert==2.3")
ONNX_RUNTIMES_CHECKED = ("onnxruntime==1.16", "onnxruntime")


@dataclass(frozen=True)
class QuantizeSettings:
    formats: tuple[str, ...]
    calibration: CalibrationSource
    output_dir: str
    io: str = "int8"
    eval_dir: str | None = None
    eval_count: int = 500
    onnx_activation_type: str = "uint8"
    onnx_calibration_method: str = "minmax"
    target_accuracy: str | None = None  # e.g. "99%" or "0.5pt": accuracy-aware int8
    rewrite_hard_swish: bool = True  # express hard-swish with ops XNNPACK's int8 kernels take
    progress: bool = True


@dataclass
class FloatModel:
    """The float source of a set of artifacts, with what the manifest says about it."""

    stem: str
    path: Path
    model: object
    model_name: str | None
    preprocessing: Preprocessing
    trained_weights: bool
    class_names: list[str]
    dataset: dict | None
    sha256: str = ""
    params: int = 0
    macs: int = 0
    hard_swish_rewrite: dict | None = None

    def apply_hard_swish_rewrite(self, enabled: bool, check_batch: np.ndarray | None = None) -> None:
        """Swap in the int8-friendly hard-swish form (same outputs, checked) before any conversion."""
        if not enabled:
            self.hard_swish_rewrite = {"enabled": False}
            return
        from edge_mobilenet.convert.rewrite import rewrite_hard_swish

        rewritten, report = rewrite_hard_swish(self.model, check_batch=check_batch)
        self.int8_model = rewritten if report["rewritten"] else None
        self.hard_swish_rewrite = {"enabled": True, "rewritten": len(report["rewritten"]),
                                   "left": report["left"],
                                   "max_abs_diff": report.get("max_abs_diff")}

    int8_model: object = None  # the model int8 formats convert: hard-swish rewritten where it applies
    _exports: dict = None

    def model_for(self, fmt: Format):
        """Integer formats take the rewritten graph; float formats keep the stock one (faster in float)."""
        integer = fmt.name in ("int8", "onnx-int8")
        return self.int8_model if integer and self.int8_model is not None else self.model

    def _export(self, fmt: Format, kind: str, write) -> Path:
        """``write(model, folder)`` once per (model, kind) into a temporary folder removed by close()."""
        import tempfile

        model = self.model_for(fmt)
        self._exports = self._exports if self._exports is not None else {}
        key = (id(model), kind)
        if key not in self._exports:
            folder = tempfile.TemporaryDirectory(prefix=f"edge-{kind}-")
            write(model, Path(folder.name))
            self._exports[key] = folder
        return Path(self._exports[key].name)

    def saved_model_dir(self, fmt: Format) -> str:
        """The model for ``fmt`` exported once (batch 1) for every TFLite conversion."""
        from edge_mobilenet.convert.tflite import export_saved_model

        return str(self._export(fmt, "savedmodel", lambda m, folder: export_saved_model(m, str(folder))))

    def float_onnx(self, fmt: Format) -> Path:
        """A float ONNX export of the model for ``fmt``: the input of ONNX Runtime's quantizer."""
        from edge_mobilenet.convert.onnx_convert import convert_onnx

        return self._export(fmt, "onnx", lambda m, folder: convert_onnx(m, folder / "float.onnx")) / "float.onnx"

    def close(self) -> None:
        for folder in (self._exports or {}).values():
            folder.cleanup()
        self._exports = None

    @property
    def size(self) -> tuple[int, int]:
        shape = self.model.input.shape
        return int(shape[1]), int(shape[2])


@dataclass
class EvalSet:
    """Held-out float inputs, their labels (or None) and the float model's outputs on them."""

    inputs: np.ndarray
    labels: np.ndarray | None
    float_outputs: np.ndarray
    description: str
    label_offset: int = 0  # 1 for 1001-class models (index 0 = background) on 1000-class labels


def cache_key(source_sha: str, metrics_sha: str | None, fmt: Format, settings: QuantizeSettings,
              calibration_sha: str | None) -> str:
    """Everything an artifact's bytes depend on; computable without loading TensorFlow."""
    options = {"format": fmt.name, "io": settings.io if fmt.name == "int8" else None,
               "target": settings.target_accuracy if fmt.name in ("int8", "onnx-int8") else None,
               "onnx": [settings.onnx_activation_type, settings.onnx_calibration_method]
               if fmt.name == "onnx-int8" else None,
               "source": source_sha, "metrics": metrics_sha,
               "calibration": calibration_sha if fmt.calibrated else None,
               "eval": [settings.eval_dir, settings.eval_count], "tools": tool_versions(),
               "hard_swish_rewrite": settings.rewrite_hard_swish,
               "pipeline": PIPELINE_VERSION}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def validate_input_shape(float_model: FloatModel) -> None:
    shape = tuple(float_model.model.input.shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise EdgeError(f"{float_model.path}: input shape {shape} can't be fed images; "
                        "expected (batch, height, width, 3) with a fixed height and width")


def _top1(outputs: np.ndarray) -> np.ndarray:
    return np.argmax(outputs, axis=-1)


def _metrics(outputs: np.ndarray, evaluation: EvalSet, float_model: FloatModel) -> dict:
    agreement = float(np.mean(_top1(outputs) == _top1(evaluation.float_outputs)))
    metrics = {"eval_images": int(len(outputs)), "eval_set": evaluation.description,
               "top1_agreement_with_float": round(agreement, 4),
               "max_abs_diff_vs_float": float(np.max(np.abs(outputs - evaluation.float_outputs)))}
    if evaluation.labels is not None and float_model.trained_weights:
        offset = evaluation.label_offset
        metrics["top1"] = round(float(np.mean(_top1(outputs) - offset == evaluation.labels)), 4)
        metrics["float_top1"] = round(float(np.mean(_top1(evaluation.float_outputs) - offset
                                                    == evaluation.labels)), 4)
    return metrics


def _tflite_facts(path: Path, evaluation: EvalSet | None, float_model: FloatModel) -> dict:
    from edge_mobilenet.convert.tflite import io_spec, make_interpreter, run_tflite

    interpreter = make_interpreter(path)
    in_spec, out_spec = io_spec(interpreter)
    facts = {"input": {**in_spec, "preprocessing": asdict(float_model.preprocessing)}, "output": out_spec}
    facts.update(_op_facts(path, interpreter))
    if evaluation is not None:
        facts["validation"] = _metrics(run_tflite(interpreter, evaluation.inputs), evaluation, float_model)
    return facts


def _op_facts(path: Path, interpreter) -> dict:
    facts = {}
    try:
        from edge_mobilenet.convert.compat import check_compat, required_ops

        facts["ops"] = required_ops(path)
        facts["compatibility"] = {runtime: _compat_record(check_compat(path, runtime))
                                  for runtime in TFLITE_RUNTIMES_CHECKED}
    except ImportError:
        pass
    try:
        from edge_mobilenet.convert.delegation import delegation_stats

        facts["delegation"] = delegation_stats(interpreter)
    except ImportError:
        pass
    return facts


def _compat_record(result) -> dict:
    return {"loads": result.ok, "problems": result.problems}


def _onnx_facts(path: Path, evaluation: EvalSet | None, float_model: FloatModel) -> dict:
    from edge_mobilenet.convert.onnx_convert import onnx_io_spec, run_onnx

    from edge_mobilenet.convert.compat import check_compat

    spec = onnx_io_spec(path)
    facts = {"input": {**spec["input"], "preprocessing": asdict(float_model.preprocessing)},
             "output": spec["output"], "opset": spec.get("opset"),
             "compatibility": {runtime: _compat_record(check_compat(path, runtime))
                               for runtime in ONNX_RUNTIMES_CHECKED}}
    if evaluation is not None:
        facts["validation"] = _metrics(run_onnx(path, evaluation.inputs), evaluation, float_model)
    return facts


def _selective_strategy(float_model: FloatModel, fmt: Format, calibration: np.ndarray,
                        settings: QuantizeSettings, evaluation: EvalSet):
    """(quantizer, layers ranked worst first, score, latency) for the runtime of ``fmt``; each runtime
    ranks its own quantized graph (TFLite: QuantizationDebugger; ONNX: the same per-layer measure)."""
    from edge_mobilenet.convert import accuracy_aware

    labelled = (evaluation.inputs, evaluation.labels, evaluation.label_offset)
    layer_names = {l.name for l in float_model.model_for(fmt).layers}
    if fmt.runtime == "tflite":
        from edge_mobilenet.convert.quant_debug import SelectiveQuantizer, layer_errors

        exported = float_model.saved_model_dir(fmt)
        ranking = layer_errors(exported, calibration, calibration[:32], layer_names)
        quantizer = SelectiveQuantizer(exported, calibration, settings.io)
        return (quantizer, ranking, lambda model: accuracy_aware.top1(model, *labelled),
                accuracy_aware.latency_ms_p50)
    import tempfile

    from edge_mobilenet.convert import onnx_debug

    float_path = float_model.float_onnx(fmt)
    quantizer = onnx_debug.OnnxSelectiveQuantizer(float_path, calibration, _onnx_options(settings))
    with tempfile.TemporaryDirectory(prefix="edge-onnx-rank-") as folder:
        plain = Path(folder) / "plain.onnx"
        plain.write_bytes(quantizer.quantize([]))
        ranking = onnx_debug.onnx_layer_errors(float_path, plain, calibration[:32], layer_names=layer_names)
    return (quantizer, ranking, lambda model: onnx_debug.onnx_top1(model, *labelled),
            onnx_debug.onnx_latency_ms_p50)


def _build_accuracy_aware(float_model: FloatModel, fmt: Format, calibration: np.ndarray,
                          settings: QuantizeSettings, evaluation: EvalSet | None, target: Path) -> dict:
    """Keep the fewest sensitive layers in float until top-1 meets --target-accuracy (TFLite or ONNX)."""
    from edge_mobilenet.convert import accuracy_aware

    goal = accuracy_aware.parse_target(settings.target_accuracy)
    if evaluation is None or evaluation.labels is None:
        raise EdgeError("--target-accuracy needs labelled evaluation images (--eval DIR with one "
                        "sub-folder per class or a labels.csv, or a model trained by edge-bench train)")
    if not float_model.trained_weights:
        raise EdgeError(f"{float_model.path}: random weights have no accuracy to keep; train it first")
    started = time.perf_counter()
    quantizer, candidates, score, latency = _selective_strategy(float_model, fmt, calibration, settings,
                                                                evaluation)
    float_top1 = float(np.mean(_top1(evaluation.float_outputs) - evaluation.label_offset == evaluation.labels))
    _log(f"  {fmt.name}: accuracy-aware search, target {goal.text} of float top-1 {float_top1:.4f}")
    found = accuracy_aware.search(quantizer, candidates, score, float_top1, goal, log=_log)
    write_bytes_atomic(target, found["model"])
    full_int8 = quantizer.quantize([])
    record = {"target": goal.text, "applied": True, "met": found["met"],
              "threshold_top1": round(found["threshold"], 4), "float_top1": round(float_top1, 4),
              "full_int8_top1": found["steps"][0]["top1"], "top1": round(found["top1"], 4),
              "float_layers": [r.layer for r in candidates[:found["chosen"]]],
              "float_nodes": [r.node for r in candidates[:found["chosen"]]], "steps": found["steps"],
              "latency_ms_p50_local": {"full_int8": round(latency(full_int8), 3),
                                       "selective": round(latency(found["model"]), 3)},
              "search_seconds": round(time.perf_counter() - started, 1)}
    if not found["met"]:
        raise TargetNotMet(record)
    return {"convert_seconds": record["search_seconds"], "accuracy_aware": record}


def _onnx_options(settings: QuantizeSettings):
    from edge_mobilenet.convert.onnx_convert import OnnxQuantOptions

    return OnnxQuantOptions(activation_type=settings.onnx_activation_type,
                            method=settings.onnx_calibration_method)


class TargetNotMet(EdgeError):
    """The target was missed even with every ranked layer in float; the best artifact was kept."""

    def __init__(self, record: dict):
        self.record = record
        super().__init__(f"target {record['target']} (top-1 >= {record['threshold_top1']}) not met even "
                         f"with {len(record['float_layers'])} layers in float: best top-1 {record['top1']} "
                         f"vs float {record['float_top1']}; kept the best artifact")


def _log(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def _build_tflite(float_model: FloatModel, fmt: Format, calibration: np.ndarray | None,
                  settings: QuantizeSettings, target: Path, evaluation: EvalSet | None = None) -> dict:
    from edge_mobilenet.convert.tflite import TFLiteOptions, convert_tflite

    if fmt.name == "int8" and settings.target_accuracy:
        built = _build_accuracy_aware(float_model, fmt, calibration, settings, evaluation, target)
        return {"convert_seconds": built["convert_seconds"],
                "recipe": {"io": settings.io, "accuracy_aware": built["accuracy_aware"]}}

    flatbuffer, seconds = convert_tflite(float_model.saved_model_dir(fmt), fmt.name, calibration,
                                         TFLiteOptions(io=settings.io))
    write_bytes_atomic(target, flatbuffer)
    return {"convert_seconds": round(seconds, 2),
            "recipe": {"io": settings.io} if fmt.name == "int8" else {}}


def _build_onnx(float_model: FloatModel, fmt: Format, calibration: np.ndarray | None,
                settings: QuantizeSettings, target: Path, evaluation: EvalSet | None = None) -> dict:
    from edge_mobilenet.convert import onnx_convert

    started = time.perf_counter()
    if fmt.name == "onnx":
        facts = onnx_convert.convert_onnx(float_model.model, target)
        return {"convert_seconds": round(time.perf_counter() - started, 2), "recipe": {}, "onnx": facts}
    options = _onnx_options(settings)
    if settings.target_accuracy:
        built = _build_accuracy_aware(float_model, fmt, calibration, settings, evaluation, target)
        record = built["accuracy_aware"]
        return {"convert_seconds": built["convert_seconds"],
                "recipe": {**asdict(options), "nodes_to_exclude": record["float_nodes"], "accuracy_aware": record}}
    facts = onnx_convert.quantize_onnx(float_model.float_onnx(fmt), target, calibration, options)
    return {"convert_seconds": round(time.perf_counter() - started, 2), "recipe": asdict(options), "onnx": facts}


def build_artifact(float_model: FloatModel, fmt: Format, settings: QuantizeSettings,
                   manifest: Manifest, calibration_set, evaluation: EvalSet | None, key: str) -> dict:
    """Convert one artifact, validate it and record it in the manifest."""
    file_name = f"{float_model.stem}{fmt.suffix}"
    target = Path(settings.output_dir) / file_name
    calibration = (calibration_set.inputs(float_model.preprocessing)
                   if fmt.calibrated and calibration_set is not None else None)
    if fmt.runtime == "tflite":
        try:
            built = _build_tflite(float_model, fmt, calibration, settings, target, evaluation)
        except TargetNotMet as missed:
            built = {"recipe": {"io": settings.io, "accuracy_aware": missed.record}}
            _record(float_model, fmt, target, calibration_set, None, built,
                    _tflite_facts(target, evaluation, float_model), manifest)
            raise
        facts = _tflite_facts(target, evaluation, float_model)
    else:
        try:
            built = _build_onnx(float_model, fmt, calibration, settings, target, evaluation)
        except TargetNotMet as missed:
            built = {"recipe": {**asdict(_onnx_options(settings)), "accuracy_aware": missed.record}}
            _record(float_model, fmt, target, calibration_set, None, built,
                    _onnx_facts(target, evaluation, float_model), manifest)
            raise
        facts = _onnx_facts(target, evaluation, float_model)
    return _record(float_model, fmt, target, calibration_set, key, built, facts, manifest)


def _record(float_model: FloatModel, fmt: Format, target: Path, calibration_set, key: str,
            built: dict, facts: dict, manifest: Manifest) -> dict:
    entry = {
        "file": target.name, "format": fmt.name, "runtime": fmt.runtime, "baseline": fmt.baseline,
        "sha256": sha256_file(target), "size_bytes": target.stat().st_size,
        "model": float_model.model_name, "source": {"file": str(float_model.path), "sha256": float_model.sha256},
        "trained_weights": float_model.trained_weights, "class_names": float_model.class_names,
        "dataset": float_model.dataset, "params": float_model.params, "macs": float_model.macs,
        "calibration": calibration_set.record() if fmt.calibrated and calibration_set is not None else None,
        "tool_versions": tool_versions(), "cache_key": key,
        "hard_swish_rewrite": float_model.hard_swish_rewrite, **built, **facts,
    }
    if fmt.name == "onnx" and "validation" in facts:
        entry["max_abs_diff_vs_keras"] = entry["validation"]["max_abs_diff_vs_float"]
    manifest.upsert(entry)
    return entry
