"""``edge-bench quant-report``: per-layer int8 error of an artifact against its float model."""

from __future__ import annotations

import json
from pathlib import Path

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import atomic_path, write_json_atomic
from edge_mobilenet.report.tables import text_table

WORTH_KEEPING_FLOAT = 0.7


def check_artifact_matches(artifact: Path, float_model) -> None:
    """The artifact must take the float model's input and give its number of outputs."""
    if artifact.suffix == ".onnx":
        from edge_mobilenet.convert.onnx_convert import onnx_io_spec

        spec = onnx_io_spec(artifact)
        in_spec, out_spec = spec["input"], spec["output"]
    else:
        from edge_mobilenet.convert.tflite import io_spec, make_interpreter

        in_spec, out_spec = io_spec(make_interpreter(artifact))
    model_in = [int(d) for d in float_model.input.shape[1:]]
    model_out = int(float_model.output.shape[-1])
    if in_spec["shape"][1:] != model_in or out_spec["shape"][-1] != model_out:
        raise EdgeError(f"{artifact}: does not match the float model (artifact input {in_spec['shape']}, "
                        f"{out_spec['shape'][-1]} outputs; float model input {model_in}, {model_out} outputs)")


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


def manifest_entry(artifact: Path) -> dict | None:
    """The artifact's entry in the manifest beside it (calibration used, hard-swish rewrite), if any."""
    manifest = artifact.parent / "manifest.json"
    if not manifest.is_file():
        return None
    return next((a for a in json.loads(manifest.read_text()).get("artifacts", [])
                 if a.get("file") == artifact.name), None)
