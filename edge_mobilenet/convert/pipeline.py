"""One artifact: convert (the format's builder) -> read its facts on its runtime -> record it.

Each artifact is written to a temporary name and renamed, then recorded in the manifest at once, so
a failure half way keeps every artifact already finished. An artifact whose inputs (float model
bytes, the options its format takes, calibration images, tool versions) are unchanged is reused.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge_mobilenet.contracts.formats import Format
from edge_mobilenet.contracts.manifest import Manifest, build_environment, tool_versions
from edge_mobilenet.contracts.records import ArtifactEntry, TensorSpec, Validation
from edge_mobilenet.convert.builders import BUILDERS
from edge_mobilenet.convert.settings import QuantizeSettings
from edge_mobilenet.convert.sources import EvalSet, FloatModel
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file

# Bumped when the manifest facts an artifact carries change, so older entries are rebuilt.
PIPELINE_VERSION = 9  # 8: cross-layer equalization among the ptq methods; 9: no model methods with --target-accuracy, Bonferroni-wide contest intervals; 4: ONNX graphs canonicalised (same bytes in every process); 5: batch_norm_statistics;
# 6: tf2onnx transpose optimizer no longer gives up on V3 (scalar Add); 7: post-training methods (ptq)

# Runtimes every artifact is checked against (from its operator versions / opset) in the manifest.
RUNTIMES_CHECKED = {"tflite": ("tflite-runtime==2.14", "ai-edge-litert==2.3"),
                    "onnx": ("onnxruntime==1.16", "onnxruntime")}


def cache_key(source_sha: str, metrics_sha: str | None, fmt: Format, settings: QuantizeSettings,
              calibration_sha: str | None) -> str:
    """Everything an artifact's bytes depend on (the options its format takes, from the format table);
    computable without loading TensorFlow."""
    options = {"format": fmt.name, "options": settings.options_for(fmt),
               "source": source_sha, "metrics": metrics_sha,
               "calibration": calibration_sha if fmt.calibrated else None,
               "eval": [settings.eval_dir, settings.eval_count], "tools": tool_versions(),
               "hard_swish_rewrite": settings.rewrite_hard_swish, "pipeline": PIPELINE_VERSION}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def _validation(outputs: np.ndarray, evaluation: EvalSet, float_model: FloatModel) -> Validation:
    from edge_mobilenet.contracts import metrics

    measured, baseline = {}, {}
    if evaluation.labels is not None and float_model.trained_weights:
        measured = metrics.classification_metrics(outputs, evaluation.labels, evaluation.label_offset)
        baseline = metrics.classification_metrics(evaluation.float_outputs, evaluation.labels,
                                                  evaluation.label_offset)
    return Validation(int(len(outputs)), evaluation.description,
                      round(metrics.agreement(outputs, evaluation.float_outputs), 4),
                      float(np.max(np.abs(outputs - evaluation.float_outputs))), measured, baseline,
                      _paired(outputs, evaluation, float_model))


def _paired(outputs: np.ndarray, evaluation: EvalSet, float_model: FloatModel) -> dict | None:
    """Paired with float on the same images: SNR, KL, agreement and, with labels, delta top-1 with its CI."""
    from edge_mobilenet.contracts.paired import paired_or_none

    labelled = evaluation.labels is not None and float_model.trained_weights
    paired = paired_or_none(evaluation.float_outputs, outputs, evaluation.labels if labelled else None,
                            evaluation.label_offset)
    return paired.to_dict() if paired is not None else None


def _compatibility(path: Path, runtime: str) -> dict:
    from edge_mobilenet.runtimes.compat import check_compat

    return {spec: {"loads": result.ok, "problems": result.problems}
            for spec, result in ((s, check_compat(path, s)) for s in RUNTIMES_CHECKED[runtime])}


def runtime_facts(path: Path, fmt: Format) -> tuple[TensorSpec, tuple[TensorSpec, ...], dict]:
    """(input spec, output specs, facts) of a written artifact, read on its own runtime."""
    from edge_mobilenet.runtimes.sessions import artifact_specs

    input_spec, output_specs = artifact_specs(path)
    facts = {"compatibility": _compatibility(path, fmt.runtime)}
    if fmt.runtime == "tflite":
        from edge_mobilenet.runtimes.compat import required_ops
        from edge_mobilenet.runtimes.delegation import delegation_stats
        from edge_mobilenet.runtimes.tflite import make_interpreter

        facts.update(ops=required_ops(path), delegation=delegation_stats(make_interpreter(path)))
    else:
        from edge_mobilenet.runtimes.onnx import onnx_io_spec

        facts["opset"] = onnx_io_spec(path)["opset"]
    return input_spec, output_specs, facts


class TargetNotMet(EdgeError):
    """The target was missed even with every ranked layer in float; the best artifact was kept."""

    def __init__(self, record: dict):
        self.record = record
        metric = record.get("metric", "top1")  # detectors search on mAP (convert/detection_target.py)
        label = {"top1": "top-1", "map": "mAP"}.get(metric, metric)
        super().__init__(f"target {record['target']} ({label} >= {record[f'threshold_{metric}']}) not met even "
                         f"with {len(record['float_layers'])} layers in float: best {label} {record[metric]} "
                         f"vs float {record[f'float_{metric}']}; kept the best artifact")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_accuracy_aware(float_model: FloatModel, evaluation: EvalSet | None) -> None:
    if evaluation is None or evaluation.labels is None:
        raise EdgeError("--target-accuracy needs labelled evaluation images (--eval DIR with one "
                        "sub-folder per class or a labels.csv, or a model trained by edge-bench train)")
    if not float_model.trained_weights:
        raise EdgeError(f"{float_model.path}: random weights have no accuracy to keep; train it first")


def _build_accuracy_aware(float_model: FloatModel, fmt: Format, calibration: np.ndarray,
                          settings: QuantizeSettings, evaluation: EvalSet | None, target: Path) -> dict:
    """Keep the fewest sensitive layers in float until top-1 meets --target-accuracy (any runtime)."""
    from edge_mobilenet.contracts.metrics import top1
    from edge_mobilenet.convert.quant import accuracy_aware
    from edge_mobilenet.fileio import write_bytes_atomic

    _check_accuracy_aware(float_model, evaluation)
    goal, started = settings.target_accuracy, time.perf_counter()
    quantizer, candidates, score, latency = BUILDERS[fmt.builder].selective(
        float_model, fmt, calibration, settings, evaluation)
    latency_aware = None
    if settings.latency_profile:
        costs = accuracy_aware.block_costs(settings.latency_profile, float_model.stem, fmt)
        candidates = accuracy_aware.latency_ranked(candidates, costs)
        latency_aware = {"profile": settings.latency_profile, "block_cost_ms": costs}
        _log(f"  {fmt.name}: layers ranked by int8 error per ms their float form costs on the profiled device")
    float_top1 = top1(evaluation.float_outputs, evaluation.labels, evaluation.label_offset)
    _log(f"  {fmt.name}: accuracy-aware search, target {goal.text} of float top-1 {float_top1:.4f}")
    found = accuracy_aware.search(quantizer, candidates, score, float_top1, goal, log=_log)
    write_bytes_atomic(target, found["model"])
    full_int8 = quantizer.quantize([])
    return {"target": goal.text, "applied": True, "met": found["met"],
            "threshold_top1": round(found["threshold"], 4), "float_top1": round(float_top1, 4),
            "full_int8_top1": found["steps"][0]["top1"], "top1": round(found["top1"], 4),
            "float_layers": [r.layer for r in candidates[:found["chosen"]]],
            "float_nodes": [r.node for r in candidates[:found["chosen"]]], "steps": found["steps"],
            "verdict": found["verdict"],
            "latency_ms_p50_local": {"full_int8": round(latency(full_int8), 3),
                                     "selective": round(latency(found["model"]), 3)},
            "search_seconds": round(time.perf_counter() - started, 1), "latency_aware": latency_aware}


def _choose_ptq(float_model: FloatModel, fmt: Format, calibration: np.ndarray, settings: QuantizeSettings) -> dict:
    """Post-training methods for one integer format (``quant/ptq.py``), tried on held-out calibration
    images on the format's runtime; the choice is kept on ``float_model`` for the conversion. Returns
    the manifest record."""
    from edge_mobilenet.convert.quant import ptq

    builder = BUILDERS[fmt.builder]
    if settings.ptq != ("none",):
        _log(f"  {fmt.name}: post-training methods ({','.join(settings.ptq)}) on held-out calibration images")
    cache: dict = {}  # per candidate model: what its trials share (calibration, export); dropped after
    choice = ptq.choose(float_model.integer_base(), fmt.runtime, calibration, settings,
                        lambda model, ranges, images: builder.ptq_trial(model, ranges, images, settings, cache),
                        builder.qmax, builder.range_methods)
    float_model.ptq = {**(float_model.ptq or {}), fmt.name: choice}
    if settings.ptq != ("none",):
        _log(f"  {fmt.name}: post-training methods kept: {', '.join(choice.record['applied']) or 'none (plain min/max)'}")
    return choice.record


def build_artifact(float_model: FloatModel, fmt: Format, settings: QuantizeSettings,
                   manifest: Manifest, calibration_set, evaluation: EvalSet | None, key: str) -> ArtifactEntry:
    """Convert one artifact with its format's builder, validate it and record it in the manifest.

    A missed accuracy target still records the best artifact (without a cache key: it is rebuilt on
    the next run) before the error is raised."""
    builder = BUILDERS[fmt.builder]
    name = f"{float_model.stem}{fmt.suffix}"
    staged = Path(settings.output_dir) / f".{float_model.stem}.partial{fmt.suffix}"  # same suffix: same runtime
    calibration = (calibration_set.inputs(float_model.preprocessing)
                   if fmt.calibrated and calibration_set is not None else None)
    try:
        ptq = _choose_ptq(float_model, fmt, calibration, settings) if fmt.integer and calibration is not None \
            else None
        if fmt.integer and settings.target_accuracy is not None:
            record = _build_accuracy_aware(float_model, fmt, calibration, settings, evaluation, staged)
            built = {"convert_seconds": record["search_seconds"],
                     "recipe": {**builder.recipe(fmt, settings, record["float_nodes"], float_model.ptq_ranges(fmt)),
                                "accuracy_aware": record}}
        else:
            record = None
            built = {**builder.convert(float_model, fmt, calibration, settings, staged),
                     "recipe": builder.recipe(fmt, settings, ranges=float_model.ptq_ranges(fmt))}
        if ptq is not None:
            built["recipe"]["ptq"] = ptq
        met = record is None or record["met"]
        entry = _entry(float_model, fmt, staged, name, calibration_set, key if met else None, built, evaluation)
        manifest.commit(staged, entry)
    finally:
        staged.unlink(missing_ok=True)
    if not met:
        raise TargetNotMet(record)
    return entry


def _entry(float_model: FloatModel, fmt: Format, target: Path, name: str, calibration_set, key: str | None,
           built: dict, evaluation: EvalSet | None) -> ArtifactEntry:
    from edge_mobilenet.runtimes.sessions import run_artifact

    input_spec, output_specs, facts = runtime_facts(target, fmt)
    validation = None
    if evaluation is not None:
        validation = _validation(run_artifact(target, fmt.runtime, evaluation.inputs), evaluation, float_model)
        if fmt.builder == "onnx-export":
            facts["max_abs_diff_vs_keras"] = validation.max_abs_diff_vs_float
    return ArtifactEntry(
        file=name, format=fmt.name, runtime=fmt.runtime, baseline=fmt.baseline,
        sha256=sha256_file(target), size_bytes=target.stat().st_size, input=input_spec,
        preprocessing=asdict(float_model.preprocessing), outputs=output_specs, model=float_model.model_name,
        source_file=str(float_model.path), source_sha256=float_model.sha256,
        trained_weights=float_model.trained_weights, class_names=tuple(float_model.class_names),
        label_offset=evaluation.label_offset if evaluation is not None else 0, dataset=float_model.dataset,
        params=float_model.params, macs=float_model.macs,
        calibration=calibration_set.record() if fmt.calibrated and calibration_set is not None else None,
        validation=validation,
        facts={"tool_versions": tool_versions(), "build_environment": build_environment(), "cache_key": key,
               "hard_swish_rewrite": float_model.hard_swish_rewrite, **_random_source_facts(float_model),
               **built, **facts})


def _random_source_facts(float_model: FloatModel) -> dict:
    """Random weights: where their BatchNormalization statistics came from (the source's metrics file)."""
    if float_model.batch_norm_statistics is None:
        return {}
    return {"batch_norm_statistics": float_model.batch_norm_statistics}
