"""Run artifacts on a device and store what they did, one artifact at a time.

For each artifact the host prepares an input batch in the artifact's own input type (images
preprocessed and, for int8/uint8 inputs, quantized with the artifact's scale and zero point), copies the
model and the batch to the device's scratch directory, runs the device runner there under a timeout,
and turns its outputs into accuracy against the labels and against the float baseline of the same
source model. Each result is appended to the results file at once, so a dropped connection loses at
most the artifact in flight.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_mobilenet.bench import device_runner
from edge_mobilenet.bench.transports import AdbTransport, Transport
from edge_mobilenet.convert.formats import format_of_file
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file, write_json_atomic

RUNNER_FILE = Path(device_runner.__file__)


@dataclass(frozen=True)
class BenchSettings:
    threads: int = 1
    runtime: str = "auto"
    cpus: str | None = None
    warmup_runs: int = 1
    warmup_seconds: float = 0.5
    min_runs: int = 50
    min_seconds: float = 1.0
    max_seconds: float = 150.0
    timeout_s: float = 600.0
    eval_dir: str | None = None
    eval_count: int = 200
    benchmark_binary: str | None = None

    def runner_args(self) -> list[str]:
        args = ["--threads", str(self.threads), "--runtime", self.runtime,
                "--warmup-runs", str(self.warmup_runs), "--warmup-seconds", str(self.warmup_seconds),
                "--min-runs", str(self.min_runs), "--min-seconds", str(self.min_seconds),
                "--max-seconds", str(self.max_seconds)]
        return args + (["--cpus", self.cpus] if self.cpus else [])


QUICK = dict(warmup_runs=1, warmup_seconds=0.1, min_runs=10, min_seconds=0.2, max_seconds=10.0, eval_count=50)


@dataclass
class Artifact:
    path: Path
    entry: dict  # the manifest entry, or one inferred from the file


def _infer_entry(path: Path) -> dict:
    """A manifest-like entry for a bare .tflite/.onnx: spec from the file, accuracy n/a."""
    fmt = format_of_file(path.name)
    runtime = "onnx" if path.suffix == ".onnx" else "tflite"
    if runtime == "tflite":
        from edge_mobilenet.convert.tflite import io_spec, make_interpreter

        try:
            in_spec, out_spec = io_spec(make_interpreter(path))
        except (ValueError, RuntimeError) as error:
            raise EdgeError(f"{path}: not a loadable TFLite model ({str(error).splitlines()[0][:120]})") from None
    else:
        from edge_mobilenet.convert.onnx_convert import onnx_io_spec

        spec = onnx_io_spec(path)
        in_spec, out_spec = spec["input"], spec["output"]
    in_spec["preprocessing"] = {"name": "symmetric", "mean": 127.5, "std": 127.5, "crop_fraction": 0.875}
    return {"file": path.name, "format": fmt.name if fmt else ("int8" if in_spec["scale"] else "fp32"),
            "runtime": runtime, "baseline": fmt.baseline if fmt else "fp32", "sha256": sha256_file(path),
            "size_bytes": path.stat().st_size, "source": {"sha256": None}, "trained_weights": False,
            "input": in_spec, "output": out_spec, "params": None, "macs": None, "dataset": None}


def resolve_artifacts(paths: list[str]) -> list[Artifact]:
    """Folders (with a manifest.json), manifest files, or .tflite/.onnx files; baselines first."""
    found: list[Artifact] = []
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise EdgeError(f"{path}: does not exist")
        manifest = path / "manifest.json" if path.is_dir() else (path if path.name == "manifest.json" else None)
        if manifest is not None:
            if not manifest.is_file():
                raise EdgeError(f"{path}: folder has no manifest.json (run edge-bench quantize, or list files)")
            data = json.loads(manifest.read_text())
            found += [Artifact(manifest.parent / e["file"], e) for e in data.get("artifacts", [])]
            continue
        if path.suffix not in (".tflite", ".onnx"):
            raise EdgeError(f"{path}: not a .tflite or .onnx artifact")
        sibling = path.parent / "manifest.json"
        entries = json.loads(sibling.read_text()).get("artifacts", []) if sibling.is_file() else []
        entry = next((e for e in entries if e["file"] == path.name), None)
        found.append(Artifact(path, entry or _infer_entry(path)))
    for artifact in found:
        if not artifact.path.is_file():
            raise EdgeError(f"{artifact.path}: listed in the manifest but missing")
    baseline_first = sorted(found, key=lambda a: (a.entry.get("source", {}).get("sha256") or "",
                                                  a.entry["format"] != a.entry.get("baseline", "fp32"),
                                                  a.entry["runtime"] != "tflite"))
    return baseline_first


def _eval_pixels(entry: dict, settings: BenchSettings, cache: dict):
    """(uint8 pixels, labels or None, label offset) for the artifact's input size, or None."""
    from edge_mobilenet.data.images import load_folder

    shape = entry["input"]["shape"]
    size = (int(shape[1]), int(shape[2]))
    crop = entry["input"].get("preprocessing", {}).get("crop_fraction", 0.875)
    dataset = entry.get("dataset")
    key = (size, crop, settings.eval_dir, json.dumps(dataset, sort_keys=True))
    if key in cache:
        return cache[key]
    result = None
    if settings.eval_dir:
        images = load_folder(settings.eval_dir, size, crop_fraction=crop)
        images = images.subset(np.arange(min(len(images), settings.eval_count)))
        labelled = images.class_names and (images.labels >= 0).all()
        result = (images.pixels, images.labels if labelled else None, len(images.class_names))
    elif dataset:
        from edge_mobilenet.train import load_dataset

        images, _, val_idx = load_dataset(dataset, crop_fraction=crop)
        images = images.subset(val_idx[:settings.eval_count])
        result = (images.pixels, images.labels, len(images.class_names))
    cache[key] = result
    return result


def input_batch(entry: dict, pixels: np.ndarray | None) -> np.ndarray:
    """Preprocess (and quantize) pixels into the artifact's input type; one seeded image if none."""
    from edge_mobilenet.convert.tflite import quantize_input
    from edge_mobilenet.data.preprocess import Preprocessing

    spec = entry["input"]
    if pixels is None:
        shape = [1, *[int(d) for d in spec["shape"][1:]]]
        pixels = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    preprocessing = Preprocessing(**spec["preprocessing"])
    return quantize_input(preprocessing.apply(pixels), spec)


def decode_outputs(result: dict, entry: dict) -> np.ndarray | None:
    """Dequantized outputs [N, classes]; records the raw outputs' sha256 in ``result`` (to compare devices)."""
    import hashlib

    from edge_mobilenet.convert.tflite import dequantize_output

    if "outputs_npz_b64" not in result:
        return None
    with np.load(io.BytesIO(base64.b64decode(result["outputs_npz_b64"]))) as data:
        outputs = data["outputs"]
    result["outputs_sha256"] = hashlib.sha256(np.ascontiguousarray(outputs).tobytes()).hexdigest()
    return dequantize_output(outputs.reshape(len(outputs), -1), entry["output"])


def accuracy(outputs: np.ndarray, labels: np.ndarray | None, classes: int, trained: bool,
             baseline: np.ndarray | None) -> dict | None:
    """top-1/top-5 (labels), agreement and output SNR vs the float baseline; None for random weights."""
    if outputs is None or not trained or labels is None:
        return None
    offset = 1 if outputs.shape[1] == classes + 1 else 0
    order = np.argsort(-outputs, axis=1)[:, :5] - offset
    record = {"images": int(len(outputs)), "top1": round(float(np.mean(order[:, 0] == labels)), 4),
              "top5": round(float(np.mean((order == labels[:, None]).any(axis=1))), 4)}
    if baseline is not None and baseline.shape == outputs.shape:
        base_top1 = float(np.mean(np.argmax(baseline, axis=1) - offset == labels))
        noise = float(np.sum((outputs - baseline) ** 2))
        record.update(float_top1=round(base_top1, 4),
                      delta_top1_vs_float=round(record["top1"] - base_top1, 4),
                      agreement_with_float=round(float(np.mean(np.argmax(outputs, 1) == np.argmax(baseline, 1))), 4),
                      output_snr_db=round(10 * np.log10(float(np.sum(baseline ** 2)) / noise), 2) if noise > 0 else None)
    return record


def commit_info() -> dict:
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha or None, "dirty": dirty}


class ResultsFile:
    """``{"schema": 1, "runs": [...]}``, rewritten atomically after every artifact."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data = {"schema": 1, "runs": []}
        if self.path.is_file():
            try:
                existing = json.loads(self.path.read_text())
            except json.JSONDecodeError as error:
                raise EdgeError(f"{self.path}: not valid JSON ({error.msg}); move it away or choose "
                                "another --output") from None
            if isinstance(existing, dict) and isinstance(existing.get("runs"), list):
                self.data = existing

    def append(self, run: dict) -> None:
        self.data["runs"].append(run)
        write_json_atomic(self.path, self.data)


def _warnings(result: dict) -> list[str]:
    device = result.get("device", {})
    notes = []
    governors = device.get("governors") or []
    if governors and governors != ["performance"]:
        notes.append(f"CPU governor is {', '.join(governors)}, not performance: latency may vary")
    if device.get("emulated"):
        notes.append("EMULATED device: results are real ARM results, latencies are meaningless")
    if result.get("throttled_during_run"):
        notes.append("the device throttled during the run: latencies invalid")
    runtime = result.get("runtime", {})
    if runtime.get("split"):
        outside = ", ".join(f"{op}x{n}" for op, n in runtime.get("ops_outside", {}).items())
        notes.append(f"graph split into {runtime.get('partitions')} XNNPACK partitions ({outside} outside)")
    return notes


def parse_runner_output(result, transport: Transport) -> dict:
    """The runner's JSON object, or an EdgeError that says what the device lacks."""
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    stderr = result.stderr or ""
    if result.timed_out:
        return {"ok": False, "error_kind": "timeout", "error": "timed out"}
    if result.returncode == 124:
        return {"ok": False, "error_kind": "timeout", "error": "timed out on the device"}
    if result.returncode == 127 or "not found" in stderr:
        raise EdgeError(f"{transport.describe()}: no {transport.python} on the device: install Python 3.9+ "
                        "with numpy, then `pip install ai-edge-litert` (or tflite-runtime / onnxruntime)")
    if "No module named 'numpy'" in stderr:
        raise EdgeError(f"{transport.describe()}: the device's {transport.python} has no numpy: "
                        "`pip install numpy ai-edge-litert`")
    last = [l for l in stderr.splitlines() if l.strip()][-1:] or ["no output"]
    return {"ok": False, "error_kind": "runner_failed", "error": last[0][:300]}


def _run_one(transport: Transport, artifact: Artifact, index: int, batch: np.ndarray,
             settings: BenchSettings) -> dict:
    with tempfile.TemporaryDirectory(prefix="edge-bench-batch-") as folder:
        npz = Path(folder) / "inputs.npz"
        np.savez(npz, inputs=batch)
        model_name = f"model_{index}{''.join(artifact.path.suffixes[-1:])}"
        inputs_name = f"inputs_{index}.npz"
        transport.push(artifact.path, model_name)
        transport.push(npz, inputs_name)
    argv = [transport.python, transport.remote("device_runner.py"), "--model", transport.remote(model_name),
            "--inputs", transport.remote(inputs_name), *settings.runner_args()]
    if transport.name == "ssh":
        argv.append("--exit-on-stdin-eof")
    result = transport.run_in_scratch(argv, timeout=settings.timeout_s,
                                      keep_stdin_open=transport.name == "ssh")
    transport.shell("rm -f " + " ".join(shlex.quote(transport.remote(n)) for n in (model_name, inputs_name)),
                    timeout=60)
    return parse_runner_output(result, transport)


BENCHMARK_MODEL_PATTERNS = {
    "init_ms": r"Init: ([0-9.]+)", "first_inference_ms": r"First inference: ([0-9.]+)",
    "warmup_mean_ms": r"Warmup \(avg\): ([0-9.]+)", "mean_ms": r"Inference \(avg\): ([0-9.]+)",
}


def parse_benchmark_model(text: str) -> dict:
    """Latency from TFLite benchmark_model's text output (microseconds -> ms); accuracy is n/a."""
    import re

    latency = {}
    for key, pattern in BENCHMARK_MODEL_PATTERNS.items():
        match = re.search(pattern, text)
        if match:
            latency[key] = round(float(match.group(1)) / 1000, 4)
    steady = [line for line in text.splitlines() if line.startswith("count=")][-1:]
    if steady:
        fields = dict(re.findall(r"(\w+)=([0-9.]+)", steady[0]))
        for ours, theirs in (("min_ms", "min"), ("max_ms", "max"), ("std_ms", "std"), ("p50_ms", "median")):
            if theirs in fields:
                latency[ours] = round(float(fields[theirs]) / 1000, 4)
        latency["count"] = int(fields.get("count", 0))
        latency.setdefault("p50_ms", latency.get("mean_ms"))
    if "mean_ms" not in latency:
        raise EdgeError("benchmark_model printed no 'Inference timings' line; is it a TFLite benchmark_model?")
    latency.setdefault("p90_ms", None)
    latency.setdefault("p99_ms", None)
    latency["warmup"] = {"mean_ms": latency.pop("warmup_mean_ms", None)}
    return latency


def _run_benchmark_model(transport: Transport, artifact: Artifact, index: int, settings: BenchSettings) -> dict:
    """A device without Python (a stock phone): TFLite's own benchmark_model binary, latency only."""
    if artifact.path.suffix != ".tflite":
        return {"ok": False, "error_kind": "no_python", "error": "ONNX artifacts need Python + onnxruntime on the device"}
    model_name = f"model_{index}.tflite"
    transport.push(artifact.path, model_name)
    argv = ["./benchmark_model", f"--graph={model_name}", f"--num_threads={settings.threads}",
            f"--warmup_runs={settings.warmup_runs}", f"--warmup_min_secs={settings.warmup_seconds}",
            f"--num_runs={settings.min_runs}", f"--min_secs={settings.min_seconds}",
            f"--max_secs={settings.max_seconds}"]
    if settings.cpus:
        argv = ["taskset", _cpu_mask(settings.cpus), *argv]
    result = transport.run_in_scratch(argv, timeout=settings.timeout_s)
    if result.returncode != 0:
        return {"ok": False, "error_kind": "benchmark_model_failed",
                "error": ([l for l in (result.stderr + result.stdout).splitlines() if l.strip()] or ["no output"])[-1][:300]}
    return {"ok": True, "latency": parse_benchmark_model(result.stdout + result.stderr),
            "runtime": {"name": "benchmark_model", "version": None, "xnnpack": None},
            "device": {"emulated": False, "note": "device facts need the Python runner"}}


def _cpu_mask(cpus: str) -> str:
    mask = 0
    for cpu in device_runner._cpu_list(cpus):
        mask |= 1 << cpu
    return format(mask, "x")


def run_record(artifact: Artifact, result: dict, device_name: str, transport: Transport,
               settings: BenchSettings, accuracy_record: dict | None) -> dict:
    from edge_mobilenet.convert.manifest import tool_versions

    entry = artifact.entry
    record = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "ok" if result.get("ok") else "failed",
        "artifact": artifact.path.name, "format": entry["format"], "runtime_kind": entry["runtime"],
        "baseline_format": entry.get("baseline", "fp32"), "source_sha256": entry.get("source", {}).get("sha256"),
        "sha256": entry.get("sha256"), "size_bytes": entry.get("size_bytes"), "params": entry.get("params"),
        "macs": entry.get("macs"), "device_name": device_name, "transport": transport.name,
        "device": result.get("device"), "runtime": result.get("runtime"), "latency": result.get("latency"),
        "memory": result.get("memory"), "accuracy": accuracy_record,
        "settings": {k: v for k, v in asdict(settings).items() if k != "benchmark_binary"},
        "emulated": bool((result.get("device") or {}).get("emulated")),
        "valid": result.get("ok", False) and not result.get("throttled_during_run", False),
        "warnings": _warnings(result), "commit": commit_info(), "tool_versions": tool_versions(),
    }
    if outputs_sha256 := result.get("outputs_sha256"):
        record["outputs_sha256"] = outputs_sha256
    if not result.get("ok"):
        record["error"] = f"{result.get('error_kind')}: {result.get('error')}"
        if result.get("error_kind") == "no_runtime":
            record["error"] += (f" -- install one on the device: `{transport.python} -m pip install "
                                "ai-edge-litert` (or tflite-runtime; onnxruntime for .onnx)")
    return record


def bench(artifacts: list[Artifact], transport: Transport, device_name: str, settings: BenchSettings,
          results: ResultsFile, log=None) -> list[dict]:
    """Run every artifact; append each result as it finishes; always clean the device up."""
    from tqdm import tqdm

    records, outputs_by_source, eval_cache = [], {}, {}
    transport.open()
    try:
        use_binary = isinstance(transport, AdbTransport) and not transport.has_python()
        if use_binary and not settings.benchmark_binary:
            raise EdgeError(f"{transport.describe()}: the device has no {transport.python}; give TFLite's "
                            "benchmark_model binary with --benchmark-binary (latency only, accuracy n/a)")
        if use_binary:
            transport.push(Path(settings.benchmark_binary), "benchmark_model")
            transport.shell(f"chmod 755 {shlex.quote(transport.remote('benchmark_model'))}", timeout=60)
        else:
            transport.push(RUNNER_FILE, "device_runner.py")
        progress = tqdm(artifacts, desc=f"bench on {device_name}", unit="model", leave=False)
        for index, artifact in enumerate(progress):
            entry = artifact.entry
            evaluation = _eval_pixels(entry, settings, eval_cache) if entry.get("trained_weights") else None
            pixels, labels, classes = evaluation if evaluation else (None, None, 0)
            result = (_run_benchmark_model(transport, artifact, index, settings) if use_binary else
                      _run_one(transport, artifact, index, input_batch(entry, pixels), settings))
            outputs = decode_outputs(result, entry) if result.get("ok") else None
            key = (entry.get("source", {}).get("sha256"), entry["runtime"])
            baseline = outputs_by_source.get(key)
            if baseline is None:
                baseline = outputs_by_source.get((key[0], "tflite"))
            if outputs is not None and entry["format"] == entry.get("baseline", "fp32"):
                outputs_by_source[key] = outputs
            record = run_record(artifact, result, device_name, transport, settings,
                                accuracy(outputs, labels, classes, bool(entry.get("trained_weights")),
                                         baseline if entry["format"] != entry.get("baseline") else outputs))
            results.append(record)
            records.append(record)
            progress.write(summary_line(record), file=sys.stderr) if log is None else log(summary_line(record))
    except BaseException:
        try:
            transport.close()
        except EdgeError:
            pass  # the first error is the one to report
        raise
    transport.close()
    return records


def summary_line(record: dict) -> str:
    if record["status"] != "ok":
        return f"  {record['artifact']:44s} FAILED  {record.get('error')}"
    latency, acc = record["latency"], record.get("accuracy") or {}
    runtime = record.get("runtime") or {}
    top1 = f"top-1 {acc['top1']:.4f}" if "top1" in acc else "top-1 n/a"
    delegated = (f"  XNNPACK {runtime['nodes_delegated']}/{runtime['nodes_total']} in {runtime['partitions']}"
                 if runtime.get("nodes_total") else "")
    flag = "  EMULATED" if record["emulated"] else ""
    return (f"  {record['artifact']:44s} {runtime.get('name', '?'):14s} p50 {latency['p50_ms']:9.3f} ms  "
            f"p90 {latency['p90_ms']:9.3f} ms  {top1}{delegated}{flag}")
