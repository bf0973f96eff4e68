"""``edge-bench quant-report``: per-layer int8 error of an artifact against its float model."""

from __future__ import annotations

from pathlib import Path

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import atomic_path, write_json_atomic
from edge_mobilenet.text import text_table

WORTH_KEEPING_FLOAT = 0.7


def check_artifact_matches(artifact: Path, float_model) -> None:
    """The artifact must take the float model's input and give its number of outputs."""
    from edge_mobilenet.runtimes.sessions import artifact_specs

    in_spec, out_specs = artifact_specs(artifact)
    model_in = [int(d) for d in float_model.input.shape[1:]]
    model_out = int(float_model.output.shape[-1])
    if list(in_spec.shape[1:]) != model_in or out_specs[0].shape[-1] != model_out:
        raise EdgeError(f"{artifact}: does not match the float model (artifact input {list(in_spec.shape)}, "
                        f"{out_specs[0].shape[-1]} outputs; float model input {model_in}, {model_out} outputs)")


def table(rows: list[dict], limit: int = 25) -> str:
    body = [[i + 1, r["layer"], r["op"], round(r["rmse_over_scale"], 3), round(r["snr_db"], 1),
             "keep float?" if r["rmse_over_scale"] > WORTH_KEEPING_FLOAT else ""]
            for i, r in enumerate(rows[:limit])]
    return text_table(["rank", "layer", "op", "rmse/scale", "SNR dB", ""], body, "rllrrl")


def plot(rows_in_model_order: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [r["rmse_over_scale"] for r in rows_in_model_order]
    figure, axis = plt.subplots(figsize=(max(8, len(values) * 0.12), 4.5))
    colours = ["tab:red" if v > WORTH_KEEPING_FLOAT else "tab:blue" for v in values]
    axis.bar(range(len(values)), values, color=colours)
    axis.axhline(1 / 12 ** 0.5, color="green", linestyle="--", label="ideal rounding (0.289)")
    axis.axhline(WORTH_KEEPING_FLOAT, color="red", linestyle=":", label="worth keeping in float (0.7)")
    worst = sorted(range(len(values)), key=lambda i: -values[i])[:8]
    for i in worst:
        axis.annotate(rows_in_model_order[i]["layer"], (i, values[i]), rotation=60, fontsize=7,
                      xytext=(0, 4), textcoords="offset points")
    axis.set_xlabel("quantized layer (model order)")
    axis.set_ylabel("RMSE / quantization scale")
    axis.set_title(title)
    axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)


def write_report(rows: list, model_order: list, artifact: Path, output_dir: Path, extra: dict) -> dict:
    rows_dicts = [r.to_dict() for r in rows]
    report = {"artifact": str(artifact), "metric": "rmse/scale per quantized layer (each op on "
              "dequantized int8 inputs vs the int8 op), SNR in dB", **extra, "layers": rows_dicts}
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = artifact.name.replace(".", "_")
    write_json_atomic(output_dir / f"{stem}.quant_report.json", report)
    plot([r.to_dict() for r in model_order], output_dir / f"{stem}.quant_report.png",
         f"{artifact.name}: per-layer int8 error")
    report["files"] = [str(output_dir / f"{stem}.quant_report.json"),
                       str(output_dir / f"{stem}.quant_report.png")]
    return report


def manifest_entry(artifact: Path):
    """The artifact's entry in the manifest beside it (calibration used, hard-swish rewrite), if any."""
    from edge_mobilenet.contracts.manifest import read_manifest

    if not (artifact.parent / "manifest.json").is_file():
        return None
    return read_manifest(artifact.parent, require_artifacts=False).entry(artifact.name)


MIN_AGREEMENT_WITH_SOURCE = 0.5


def check_made_from(artifact: Path, entry, float_model, inputs) -> None:
    """Refuse a --float that is not the model the artifact was converted from: the manifest's source
    sha256 when there is one, else the artifact's and the float model's predictions on the images."""
    from edge_mobilenet.contracts.metrics import agreement
    from edge_mobilenet.runtimes.sessions import run_artifact

    if entry is not None and entry.source_sha256 and entry.source_sha256 != float_model.sha256:
        raise EdgeError(f"{artifact}: was made from {entry.source_file} (sha256 {entry.source_sha256[:12]}), "
                        f"not from {float_model.path} (sha256 {float_model.sha256[:12]})")
    sample = inputs[:32]
    runtime = "onnx" if artifact.suffix == ".onnx" else "tflite"
    share = agreement(run_artifact(artifact, runtime, sample), float_model.model.predict(sample, verbose=0))
    if share < MIN_AGREEMENT_WITH_SOURCE:
        raise EdgeError(f"{artifact}: agrees with {float_model.path} on {share:.0%} of {len(sample)} images; "
                        "it was not converted from that float model")


def _replay_ptq(artifact: Path, entry, float_model, inputs) -> None:
    """The post-training weight methods the manifest records, applied again (the artifact's float twin)."""
    from edge_mobilenet.contracts.formats import format_of_file
    from edge_mobilenet.convert.builders import BUILDERS
    from edge_mobilenet.convert.quant import ptq

    fmt = format_of_file(artifact.name)
    record = (entry.facts.get("recipe") or {}).get("ptq") if entry is not None else None
    if fmt is None or not fmt.integer or not record:
        return
    builder = BUILDERS[fmt.builder]
    choice = ptq.replay(float_model.integer_base(), record, inputs, builder.qmax, builder.range_methods)
    if choice is not None:
        float_model.ptq = {fmt.name: choice}


PTQ_LAYERS = ("recorded", "all", "none")


def ptq_layer_effects(artifact: Path, entry, float_model, inputs, which: str, io: str) -> dict | None:
    """Per layer, what each post-training method did (``quant/ptq_layers.py``): the methods the manifest
    records for the artifact (``recorded``) or every one its runtime has (``all``), on the artifact's
    runtime grid, fit and measured on the calibration split ``ptq`` uses. None when there is nothing to show."""
    from edge_mobilenet.contracts.formats import format_of_file
    from edge_mobilenet.convert.builders import BUILDERS
    from edge_mobilenet.convert.quant import ptq, ptq_layers
    from edge_mobilenet.convert.settings import PTQ_METHODS

    fmt = format_of_file(artifact.name)
    record = (entry.facts.get("recipe") or {}).get("ptq") if entry is not None else None
    wanted = PTQ_METHODS if which == "all" else tuple((record or {}).get("applied") or ())
    if which == "none" or not wanted or ptq.split(inputs) is None:
        return None
    builder = BUILDERS[fmt.builder]
    applied = tuple(m for m in ptq.MODEL_METHODS if m in wanted)
    weight_methods = {ptq.label(applied): applied} if applied else {}
    if which == "all":  # each alone, and all together
        weight_methods = {**{m: (m,) for m in ptq.MODEL_METHODS}, **weight_methods}
    found = {"methods": list(wanted), "fixed_gain_db": ptq_layers.FIXED_GAIN_DB}
    if weight_methods:
        replayed = (float_model.ptq or {}).get(fmt.name)  # the recorded methods' model, made by _replay_ptq
        recorded = tuple(m for m in ptq.MODEL_METHODS if m in ((record or {}).get("applied") or ()))
        built = {ptq.label(recorded): replayed.model} if replayed is not None and replayed.model is not None else {}
        rows = ptq_layers.weight_effects(float_model.integer_base(), inputs, builder.qmax, weight_methods, built)
        found["weights"] = {"layers": rows, "fixed": ptq_layers.fixed(rows, "plain", "layer")}
    range_methods = {name: builder.range_methods[name] for name in wanted if name in builder.range_methods}
    if range_methods and fmt.runtime == "tflite":
        layers = {layer.name for layer in float_model.model_for(fmt).layers}
        rows = ptq_layers.range_effects(float_model.saved_model_dir(fmt), inputs, range_methods, io, layers)
        found["ranges"] = {"tensors": rows, "fixed": ptq_layers.fixed(rows, "minmax", "layer")}
    elif range_methods:
        found["ranges"] = {"note": "ONNX Runtime's calibrated ranges are not broken down per tensor"}
    return found


def ptq_summary(found: dict) -> str:
    """Lines: per method, how many layers (tensors) it fixed and the first few of them."""
    lines = [f"post-training methods per layer (fixed: >= {found['fixed_gain_db']:g} dB more SNR on held-out "
             "calibration images):"]
    for part, baseline, unit in (("weights", "nearest rounding", "kernel layers"), ("ranges", "min/max", "activation tensors")):
        section = found.get(part) or {}
        if "note" in section:
            lines.append(f"  {part}: {section['note']}")
        total = len(section.get("layers") or section.get("tensors") or [])
        for method, names in (section.get("fixed") or {}).items():
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            lines.append(f"  {method}: {len(names)} of {total} {unit} fixed vs {baseline}" + (f": {shown}" if names else ""))
    return "\n".join(lines)


def _io_of(entry) -> str:
    """The TFLite input/output type the artifact was converted with (the manifest's recipe; int8 if unknown)."""
    return ((entry.facts.get("recipe") or {}).get("io") if entry is not None else None) or "int8"


def _layer_rows(artifact: Path, float_model, inputs, debug_count: int):
    """Per-layer errors of ``artifact`` (int8 TFLite or QDQ ONNX) and the Keras layer order."""
    from edge_mobilenet.contracts.formats import format_of_file

    fmt = format_of_file(artifact.name)
    if fmt is None or not fmt.integer:
        raise EdgeError(f"{artifact}: quant-report reads int8 .tflite or QDQ .onnx artifacts")
    layers = [l.name for l in float_model.model_for(fmt).layers]
    if fmt.runtime == "tflite":
        from edge_mobilenet.convert.quant.tflite_debug import layer_errors

        rows = layer_errors(float_model.saved_model_dir(fmt), inputs, inputs[:debug_count], set(layers))
    else:
        from edge_mobilenet.convert.quant.onnx_debug import onnx_layer_errors

        rows = onnx_layer_errors(float_model.float_onnx(fmt), artifact, inputs[:debug_count], layer_names=layers)
    return rows, sorted(rows, key=lambda r: layers.index(r.layer) if r.layer in layers else len(layers))


def _float_twin(artifact: Path, entry, profiles: dict) -> str | None:
    """The profiled float artifact of the same source and runtime (from the manifest beside ARTIFACT)."""
    from edge_mobilenet.contracts.manifest import read_manifest

    if entry is None:
        return None
    for other in read_manifest(artifact.parent, require_artifacts=False).entries:
        if other.is_baseline and other.runtime == entry.runtime and other.source_sha256 == entry.source_sha256 \
                and other.file in profiles:
            return other.file
    return None


def join_latency(rows_in_model_order: list, artifact: Path, entry, profile_path: str | Path) -> dict:
    """Per block: the worst int8 error of its layers, its int8 ms and its float ms on the profiled device
    (``edge-bench profile`` of the artifact and, if profiled too, its float baseline)."""
    from edge_mobilenet.runtimes.profiling import block_ms, block_of, read_profiles

    profiles = read_profiles(profile_path)
    if artifact.name not in profiles:
        raise EdgeError(f"{profile_path}: has no profile of {artifact.name} (profiled: "
                        f"{', '.join(sorted(profiles)) or 'none'}); run `edge-bench profile {artifact}`")
    twin = _float_twin(artifact, entry, profiles)
    int8_ms, float_ms = block_ms(profiles[artifact.name]), block_ms(profiles[twin]) if twin else {}
    blocks: dict[str, dict] = {}
    for row in rows_in_model_order:
        block = blocks.setdefault(block_of(row.layer), {"block": block_of(row.layer), "worst_layer": row.layer,
                                                         "rmse_over_scale": row.rmse_over_scale, "layers": 0})
        block["layers"] += 1
        if row.rmse_over_scale > block["rmse_over_scale"]:
            block.update(worst_layer=row.layer, rmse_over_scale=row.rmse_over_scale)
    for name, block in blocks.items():
        block.update(int8_ms=int8_ms.get(name), float_ms=float_ms.get(name))
    return {"profile_file": str(profile_path), "float_artifact": twin,
            "int8_total_ms": profiles[artifact.name]["total_ms"],
            "float_total_ms": profiles[twin]["total_ms"] if twin else None, "blocks": list(blocks.values())}


def latency_table(join: dict) -> str:
    body = [[b["block"], b["worst_layer"], round(b["rmse_over_scale"], 3), b["int8_ms"], b["float_ms"],
             round(b["float_ms"] - b["int8_ms"], 4) if b["int8_ms"] is not None and b["float_ms"] is not None
             else None] for b in join["blocks"]]
    return text_table(["block", "worst layer", "rmse/scale", "int8 ms", "float ms", "float - int8 ms"], body,
                      "llrrrr")


def run_quant_report(artifact: str | Path, float_path: str | Path, *, calibration: str | None = None,
                     count: int | None = None, seed: int | None = None, debug_count: int = 32,
                     output: str | Path = "build/quant-report", latency: str | Path | None = None,
                     ptq_layers: str = "recorded") -> dict:
    """The quant-report command: per-layer error of ``artifact`` against the float model it came from,
    calibrated and rewritten as the manifest records (flags override), written as JSON + PNG; with
    ``ptq_layers`` (recorded, all, none), what each post-training method did per layer."""
    from edge_mobilenet.convert.settings import DEFAULT_CALIBRATION
    from edge_mobilenet.convert.sources import load_float_model
    from edge_mobilenet.data.calibration import CalibrationSource, load_calibration

    from edge_mobilenet.runtimes.profiling import read_profiles

    artifact = Path(artifact)
    if not artifact.is_file():
        raise EdgeError(f"{artifact}: artifact does not exist")
    if artifact.suffix not in (".tflite", ".onnx"):
        raise EdgeError(f"{artifact}: quant-report reads int8 .tflite or QDQ .onnx artifacts")
    if ptq_layers not in PTQ_LAYERS:
        raise EdgeError(f"--ptq-layers {ptq_layers!r}: choose one of {', '.join(PTQ_LAYERS)}")
    if latency is not None:
        read_profiles(latency)  # a bad file is refused before the float model is loaded
    from edge_mobilenet.convert.detection_batch import detection_record

    record = detection_record(Path(float_path)) if Path(float_path).is_file() else None
    if record is not None:
        from edge_mobilenet.convert.quant.detection_report import run_detection_quant_report

        return run_detection_quant_report(artifact, Path(float_path), record, calibration=calibration, count=count,
                                          seed=seed, debug_count=debug_count, output=Path(output), latency=latency)
    entry = manifest_entry(artifact)
    recorded = entry.calibration.to_json() if entry and entry.calibration else {}
    rewrite = ((entry.facts.get("hard_swish_rewrite") if entry else None) or {"enabled": True}).get("enabled", True)
    source = CalibrationSource(calibration or recorded.get("folder") or DEFAULT_CALIBRATION,
                               count or recorded.get("count") or 200, recorded.get("seed", 0) if seed is None else seed)
    float_model = load_float_model(str(float_path), output_dir=Path(output))
    check_artifact_matches(artifact, float_model.model)
    images = load_calibration(source, float_model.size, float_model.preprocessing)
    inputs = images.inputs(float_model.preprocessing)
    check_made_from(artifact, entry, float_model, inputs)
    float_model.apply_hard_swish_rewrite(rewrite, inputs[:8])  # as the artifact was made
    extra = {"float_model": str(float_path), "calibration": images.record().to_json()}
    try:
        _replay_ptq(artifact, entry, float_model, inputs)  # the artifact's float twin, shared with the effects
        effects = ptq_layer_effects(artifact, entry, float_model, inputs, ptq_layers, _io_of(entry))
        if effects is not None:
            extra["ptq_layers"] = effects
        rows, model_order = _layer_rows(artifact, float_model, inputs, debug_count)
    finally:
        float_model.close()
    if latency is not None:
        extra["latency"] = join_latency(model_order, artifact, entry, latency)
    return write_report(rows, model_order, artifact, Path(output), extra)
