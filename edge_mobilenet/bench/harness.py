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
import math
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_mobilenet.bench.artifacts import Artifact
from edge_mobilenet.bench.transports import AdbTransport, Transport
from edge_mobilenet.contracts.records import ArtifactEntry, RunRecord
from edge_mobilenet.contracts.results import ResultsFile
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.runtimes import device_runner

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
    rounds: int = 0  # > 0: the artifacts of one source are timed in this many alternating rounds
    round_runs: int = 20
    profile_runs: int = 0  # > 0: also a per-layer profile over this many invokes (runtimes.profiling)

    def __post_init__(self):
        """Checked on the host before any device time."""
        if self.threads < 1:
            raise EdgeError(f"--threads must be >= 1; received {self.threads}")
        for name in ("warmup_runs", "min_runs"):
            if getattr(self, name) < 0:
                raise EdgeError(f"--{name.replace('_', '-')} must be >= 0; received {getattr(self, name)}")
        for name in ("warmup_seconds", "min_seconds", "max_seconds", "timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                flag = "--timeout" if name == "timeout_s" else f"--{name.replace('_', '-')}"
                raise EdgeError(f"{flag} must be a finite number >= 0; received {value}")
        if self.max_seconds < self.min_seconds:
            raise EdgeError(f"--max-seconds ({self.max_seconds}) is below --min-seconds ({self.min_seconds})")
        if self.timeout_s <= 0:
            raise EdgeError(f"--timeout must be > 0 seconds; received {self.timeout_s}")
        if self.eval_count < 1:
            raise EdgeError(f"--eval-count must be >= 1; received {self.eval_count}")
        if self.profile_runs < 0:
            raise EdgeError(f"--profile must be >= 0 runs; received {self.profile_runs}")
        if self.rounds < 0 or self.round_runs < 1:
            raise EdgeError(f"--rounds must be >= 0 and --round-runs >= 1; received {self.rounds}, {self.round_runs}")
        if self.cpus is not None:
            try:
                device_runner._cpu_list(self.cpus)
            except ValueError:
                raise EdgeError(f"--cpus {self.cpus!r} is not a CPU list such as 0-3 or 4,5") from None

    def runner_args(self) -> list[str]:
        args = ["--threads", str(self.threads), "--runtime", self.runtime,
                "--warmup-runs", str(self.warmup_runs), "--warmup-seconds", str(self.warmup_seconds),
                "--min-runs", str(self.min_runs), "--min-seconds", str(self.min_seconds),
                "--max-seconds", str(self.max_seconds)]
        args += ["--rounds", str(self.rounds), "--round-runs", str(self.round_runs)] if self.rounds else []
        args += ["--profile-runs", str(self.profile_runs)] if self.profile_runs else []
        return args + (["--cpus", self.cpus] if self.cpus else [])


QUICK = dict(warmup_runs=1, warmup_seconds=0.1, min_runs=10, min_seconds=0.2, max_seconds=10.0, eval_count=50)


def _eval_images(entry: ArtifactEntry, settings: BenchSettings, cache: dict):
    """Labelled held-out images at the artifact's input size (``--eval`` or its training split), or None."""
    from edge_mobilenet.data.datasets import load_eval_images

    if entry.task == "detection":
        from edge_mobilenet.bench.detection import load_eval

        key = ("detection", settings.eval_dir, json.dumps(entry.dataset, sort_keys=True), entry.input.shape)
        if key not in cache:
            cache[key] = load_eval(entry, settings.eval_dir, settings.eval_count)
        return cache[key]
    size = (int(entry.input.shape[1]), int(entry.input.shape[2]))
    crop = entry.preprocessing.get("crop_fraction", 0.875)
    key = (size, crop, settings.eval_dir, json.dumps(entry.dataset, sort_keys=True))
    if key not in cache:
        cache[key] = load_eval_images(size, crop, eval_dir=settings.eval_dir, count=settings.eval_count,
                                      dataset=entry.dataset)
    return cache[key]


def input_batch(entry: ArtifactEntry, pixels: np.ndarray | None) -> np.ndarray:
    """Preprocess (and quantize) pixels into the artifact's input type; one seeded image if none."""
    from edge_mobilenet.data.preprocess import Preprocessing
    from edge_mobilenet.runtimes.tflite import quantize_input

    if pixels is None:
        shape = [1, *[int(d) for d in entry.input.shape[1:]]]
        pixels = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    return quantize_input(Preprocessing(**entry.preprocessing).apply(pixels), entry.input)


def decode_outputs(result: dict, entry: ArtifactEntry) -> np.ndarray | None:
    """Dequantized outputs [N, classes]; records the raw outputs' sha256 in ``result`` (to compare devices)."""
    import hashlib

    from edge_mobilenet.runtimes.tflite import dequantize_output

    if "outputs_npz_b64" not in result:
        return None
    with np.load(io.BytesIO(base64.b64decode(result["outputs_npz_b64"]))) as data:
        outputs = data["outputs"]
    result["outputs_sha256"] = hashlib.sha256(np.ascontiguousarray(outputs).tobytes()).hexdigest()
    return dequantize_output(outputs.reshape(len(outputs), -1), entry.output)


def accuracy(outputs: np.ndarray | None, labels: np.ndarray | None, offset: int,
             baseline: np.ndarray | None) -> dict | None:
    """Metrics against the labels (top-1/top-5), agreement and output SNR vs the float baseline."""
    from edge_mobilenet.contracts import metrics

    if outputs is None or labels is None:
        return None
    record = {"images": int(len(outputs)), **metrics.classification_metrics(outputs, labels, offset)}
    if baseline is not None and baseline.shape == outputs.shape:
        from edge_mobilenet.contracts.paired import paired_or_none

        base_top1 = metrics.top1(baseline, labels, offset)
        paired = paired_or_none(baseline, outputs, labels, offset)  # delta top-1 CI, McNemar, SNR, KL
        snr = paired.snr_db if paired is not None and np.isfinite(paired.snr_db) else None
        record.update(float_top1=round(base_top1, 4),
                      delta_top1_vs_float=round(record["top1"] - base_top1, 4),
                      agreement_with_float=round(metrics.agreement(outputs, baseline), 4),
                      output_snr_db=round(snr, 2) if snr is not None else None,
                      paired=paired.to_dict() if paired is not None else None)
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
    profile = result.get("profile") or {}
    if profile.get("error"):
        notes.append(f"no per-layer profile: {profile['error']}")
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
    if transport.name == "ssh" and (result.returncode == 255 or result.returncode < 0):
        # ssh's own failure (255) or our ssh client killed: the connection, not the model (a runner that
        # crashes on the device gives its own exit status through ssh); a transport error, retried by sweeps
        how = "ssh failed" if result.returncode == 255 else f"ssh client killed (signal {-result.returncode})"
        detail = [l for l in stderr.splitlines() if l.strip()][-1:]
        raise EdgeError(f"{transport.describe()}: connection lost during the run: {how}"
                        + (f": {detail[0][:200]}" if detail else ""))
    if result.returncode == 127 or "not found" in stderr:
        raise EdgeError(f"{transport.describe()}: no {transport.python} on the device: install Python 3.9+ "
                        "with numpy, then `pip install ai-edge-litert` (or tflite-runtime / onnxruntime)")
    if "No module named 'numpy'" in stderr:
        raise EdgeError(f"{transport.describe()}: the device's {transport.python} has no numpy: "
                        "`pip install numpy ai-edge-litert`")
    last = [l for l in stderr.splitlines() if l.strip()][-1:] or ["no output"]
    return {"ok": False, "error_kind": "runner_failed", "error": last[0][:300]}


def _push(transport: Transport, artifact: Artifact, index: int, batch: np.ndarray) -> tuple[str, str]:
    """Copy the model and its input batch to the device's scratch folder; their names there."""
    with tempfile.TemporaryDirectory(prefix="edge-bench-batch-") as folder:
        npz = Path(folder) / "inputs.npz"
        np.savez(npz, inputs=batch)
        model_name = f"model_{index}{''.join(artifact.path.suffixes[-1:])}"
        inputs_name = f"inputs_{index}.npz"
        transport.push(artifact.path, model_name)
        transport.push(npz, inputs_name)
    return model_name, inputs_name


def _run_runner(transport: Transport, pushed: list[tuple[str, str]], settings: BenchSettings) -> dict:
    """One runner process over the pushed models (several: interleaved rounds); its parsed result."""
    argv = [transport.python, transport.remote("device_runner.py")]
    for model_name, inputs_name in pushed:
        argv += ["--model", transport.remote(model_name), "--inputs", transport.remote(inputs_name)]
    argv += settings.runner_args()
    if transport.name == "ssh":
        argv.append("--exit-on-stdin-eof")
    result = transport.run_in_scratch(argv, timeout=settings.timeout_s * len(pushed),
                                      keep_stdin_open=transport.name == "ssh")
    names = [transport.remote(n) for pair in pushed for n in pair]
    transport.shell("rm -f " + " ".join(shlex.quote(n) for n in names), timeout=60)
    return parse_runner_output(result, transport)


def _run_one(transport: Transport, artifact: Artifact, index: int, batch: np.ndarray,
             settings: BenchSettings) -> dict:
    return _run_runner(transport, [_push(transport, artifact, index, batch)], settings)


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
               settings: BenchSettings, accuracy_record: dict | None) -> RunRecord:
    from edge_mobilenet.contracts.manifest import tool_versions

    entry = artifact.entry
    error = None
    if not result.get("ok"):
        error = f"{result.get('error_kind')}: {result.get('error')}"
        if result.get("error_kind") == "no_runtime":
            error += (f" -- install one on the device: `{transport.python} -m pip install "
                      "ai-edge-litert` (or tflite-runtime; onnxruntime for .onnx)")
    return RunRecord(
        timestamp_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        status="ok" if result.get("ok") else "failed", artifact=artifact.path.name, format=entry.format,
        runtime_kind=entry.runtime, baseline_format=entry.baseline, task=entry.task,
        source_sha256=entry.source_sha256, sha256=entry.sha256, size_bytes=entry.size_bytes,
        params=entry.params, macs=entry.macs, device_name=device_name, transport=transport.name,
        device=result.get("device"), runtime=result.get("runtime"), latency=result.get("latency"),
        memory=result.get("memory"), accuracy=accuracy_record,
        settings={k: v for k, v in asdict(settings).items() if k != "benchmark_binary"},
        emulated=bool((result.get("device") or {}).get("emulated")),
        valid=bool(result.get("ok", False)) and not result.get("throttled_during_run", False),
        warnings=tuple(_warnings(result)), commit=commit_info(), tool_versions=tool_versions(),
        error=error, outputs_sha256=result.get("outputs_sha256"), profile=_profile_of(result, artifact.path))


def _profile_of(result: dict, path: Path) -> dict | None:
    """The runner's per-node profile as per-layer rows (or why there is none)."""
    from edge_mobilenet.runtimes.profiling import layer_table, onnx_node_layers

    profile = result.get("profile") if result.get("ok") else None
    if not profile or not profile.get("nodes"):
        return profile
    return layer_table(profile, (result.get("latency") or {}).get("p50_ms"), onnx_node_layers(path))


def _prepare(transport: Transport, settings: BenchSettings) -> bool:
    """Open the device's scratch folder and copy the runner (or benchmark_model) there; True when the
    device has no Python and runs TFLite's benchmark_model."""
    transport.open()
    use_binary = isinstance(transport, AdbTransport) and not transport.has_python()
    if use_binary and not settings.benchmark_binary:
        raise EdgeError(f"{transport.describe()}: the device has no {transport.python}; give TFLite's "
                        "benchmark_model binary with --benchmark-binary (latency only, accuracy n/a)")
    if use_binary:
        transport.push(Path(settings.benchmark_binary), "benchmark_model")
        transport.shell(f"chmod 755 {shlex.quote(transport.remote('benchmark_model'))}", timeout=60)
    else:
        transport.push(RUNNER_FILE, "device_runner.py")
    return use_binary


class _Baselines:
    """Float outputs per (source model, runtime), to compare each quantized artifact with."""

    def __init__(self):
        self.outputs = {}

    def for_entry(self, entry: ArtifactEntry, outputs: np.ndarray | None) -> np.ndarray | None:
        key = (entry.source_sha256, entry.runtime)
        if entry.is_baseline:
            if outputs is not None:
                self.outputs[key] = outputs
            return outputs
        found = self.outputs.get(key)
        return found if found is not None else self.outputs.get((key[0], "tflite"))


def _accuracy_of(artifact: Artifact, result: dict, evaluation, baselines: _Baselines) -> dict | None:
    """Decode the runner's outputs and score them against the labels and the float baseline."""
    from edge_mobilenet.contracts.metrics import label_offset

    entry = artifact.entry
    if entry.task == "detection":
        return _detection_accuracy(artifact, result, evaluation, baselines)
    outputs = decode_outputs(result, entry) if result.get("ok") else None
    baseline = baselines.for_entry(entry, outputs)
    if evaluation is None or evaluation.labels is None:
        return None
    offset = label_offset(int(entry.output.shape[-1]), evaluation.classes, str(artifact.path))
    return accuracy(outputs, evaluation.labels, offset, baseline)


def _detection_accuracy(artifact: Artifact, result: dict, evaluation, baselines: _Baselines) -> dict | None:
    """mAP of a detection artifact's outputs on the host; the float artifact's record is the baseline."""
    from edge_mobilenet.bench import detection

    entry = artifact.entry
    if result.get("ok"):
        decode_outputs(result, entry)  # records the outputs' sha256
    found = detection.detections(result, entry) if evaluation is not None else None
    if found is None:
        return None
    own = detection.score(found, evaluation, None)
    baseline = baselines.for_entry(entry, own)
    return own if entry.is_baseline or baseline is None else detection.score(found, evaluation, baseline)


def _evaluation(artifact: Artifact, settings: BenchSettings, eval_cache: dict):
    return _eval_images(artifact.entry, settings, eval_cache) if artifact.entry.trained_weights else None


def _measure(transport: Transport, artifact: Artifact, index: int, settings: BenchSettings,
             use_binary: bool, eval_cache: dict, baselines: _Baselines) -> tuple[dict, dict | None]:
    """Run one artifact; (the runner's result, accuracy record or None)."""
    evaluation = _evaluation(artifact, settings, eval_cache)
    pixels = evaluation.pixels if evaluation is not None else None
    result = (_run_benchmark_model(transport, artifact, index, settings) if use_binary else
              _run_one(transport, artifact, index, input_batch(artifact.entry, pixels), settings))
    return result, _accuracy_of(artifact, result, evaluation, baselines)


def _split(combined: dict, count: int) -> list[dict]:
    """The interleaved runner's one result -> one result per model (device facts shared)."""
    if not combined.get("ok"):
        return [dict(combined) for _ in range(count)]
    shared = {k: combined.get(k) for k in ("device", "memory", "throttled_during_run")}
    return [{**shared, **entry} for entry in combined["results"]]


def _round_ratios(members: list[Artifact], results: list[dict]) -> None:
    """Per artifact, the median per-round p50 ratio to its float baseline (same process, alternating
    rounds) with its interquartile range, stored under latency.rounds.ratio_vs_baseline."""
    def rounds_of(result):
        return ((result.get("latency") or {}).get("rounds") or {}).get("p50_ms") if result.get("ok") else None

    pairs = list(zip(members, results))
    for artifact, result in pairs:
        entry = artifact.entry
        candidates = [(a, r) for a, r in pairs if a.entry.is_baseline and rounds_of(r)]
        same_runtime = [(a, r) for a, r in candidates if a.entry.runtime == entry.runtime]
        if not (same_runtime or candidates) or not rounds_of(result):
            continue
        base_artifact, base = (same_runtime or candidates)[0]
        ratios = np.asarray(rounds_of(result)) / np.asarray(rounds_of(base))
        result["latency"]["rounds"]["ratio_vs_baseline"] = {
            "baseline": base_artifact.path.name, "median": round(float(np.median(ratios)), 4),
            "q1": round(float(np.percentile(ratios, 25)), 4), "q3": round(float(np.percentile(ratios, 75)), 4)}


def _measure_group(transport: Transport, members: list[tuple[int, Artifact]], settings: BenchSettings,
                   eval_cache: dict, baselines: _Baselines) -> list[tuple[Artifact, dict, dict | None]]:
    """The artifacts of one source in one interleaved runner process."""
    evaluations = [_evaluation(a, settings, eval_cache) for _, a in members]
    pushed = [_push(transport, a, i, input_batch(a.entry, e.pixels if e is not None else None))
              for (i, a), e in zip(members, evaluations)]
    results = _split(_run_runner(transport, pushed, settings), len(members))
    _round_ratios([a for _, a in members], results)
    return [(a, r, _accuracy_of(a, r, e, baselines)) for (_, a), r, e in zip(members, results, evaluations)]


def _measured(transport: Transport, artifacts: list[Artifact], settings: BenchSettings, use_binary: bool):
    """Yield (artifact, runner result, accuracy) as each artifact (or, with --rounds, each source's group
    of artifacts) finishes."""
    eval_cache, baselines = {}, _Baselines()
    if settings.rounds and not use_binary:
        groups: dict = {}
        for index, artifact in enumerate(artifacts):
            groups.setdefault(artifact.entry.source_sha256, []).append((index, artifact))
        for members in groups.values():
            yield from _measure_group(transport, members, settings, eval_cache, baselines)
        return
    for index, artifact in enumerate(artifacts):
        yield (artifact, *_measure(transport, artifact, index, settings, use_binary, eval_cache, baselines))


def bench(artifacts: list[Artifact], transport: Transport, device_name: str, settings: BenchSettings,
          results: ResultsFile, log=None) -> list[RunRecord]:
    """Run every artifact; append each result as it finishes; always clean the device up."""
    from tqdm import tqdm

    records = []
    try:
        use_binary = _prepare(transport, settings)
        progress = tqdm(total=len(artifacts), desc=f"bench on {device_name}", unit="model", leave=False)
        for artifact, result, accuracy_record in _measured(transport, artifacts, settings, use_binary):
            record = run_record(artifact, result, device_name, transport, settings, accuracy_record)
            results.append(record)
            records.append(record)
            progress.update(1)
            progress.write(summary_line(record), file=sys.stderr) if log is None else log(summary_line(record))
    except BaseException:
        try:
            transport.close()
        except EdgeError:
            pass  # the first error is the one to report
        raise
    transport.close()
    return records


def summary_line(record: RunRecord) -> str:
    if not record.ok:
        return f"  {record.artifact:44s} FAILED  {record.error}"
    latency, acc, runtime = record.latency, record.accuracy or {}, record.runtime or {}
    top1 = f"top-1 {acc['top1']:.4f}" if "top1" in acc else "top-1 n/a"
    if "map" in acc:
        top1 = f"mAP {acc['map']:.4f} mAP@.5 {acc['map50']:.4f}" + (
            f" ({acc['delta_map_vs_float'] * 100:+.1f} pt vs float)" if "delta_map_vs_float" in acc else "")
    delegated = (f"  XNNPACK {runtime['nodes_delegated']}/{runtime['nodes_total']} in {runtime['partitions']}"
                 if runtime.get("nodes_total") else "")
    flag = "  EMULATED" if record.emulated else ""
    ratio = (latency.get("rounds") or {}).get("ratio_vs_baseline")
    if ratio and not record.artifact == ratio["baseline"]:
        flag = f"  {ratio['median']:.2f}x float (IQR {ratio['q1']:.2f}-{ratio['q3']:.2f})" + flag
    p90 = latency.get("p90_ms")
    return (f"  {record.artifact:44s} {runtime.get('name', '?'):14s} p50 {latency['p50_ms']:9.3f} ms  "
            f"p90 {p90 if p90 is not None else float('nan'):9.3f} ms  {top1}{delegated}{flag}")


RUNTIME_KINDS = {"litert": "tflite", "tflite-runtime": "tflite", "onnxruntime": "onnx"}


def _check_runtime(runtime: str, artifacts: list[Artifact]) -> None:
    """``--runtime`` must be able to run every artifact (auto picks one per artifact)."""
    kind = RUNTIME_KINDS.get(runtime)
    wrong = [a.path.name for a in artifacts if kind is not None and a.entry.runtime != kind]
    if wrong:
        raise EdgeError(f"--runtime {runtime} runs {kind} artifacts only; {wrong[0]} is a "
                        f"{'ONNX' if kind == 'tflite' else 'TFLite'} model (use --runtime auto)")


def run_bench_command(paths: list[str], device: str, profile_overrides: dict, overrides: dict, *,
                      quick: bool, output: str | None, preprocessing: tuple, echo) -> list[RunRecord]:
    """The bench command: everything checked on the host first (profile, settings, artifacts, the
    output file), then the runs; returns their records (the last line says why any failed)."""
    from dataclasses import replace

    from edge_mobilenet.bench.artifacts import preprocessing_from, resolve_artifacts
    from edge_mobilenet.bench.devices import load_profile, make_transport, with_overrides

    from edge_mobilenet.bench.doctor import refuse_unloadable
    from edge_mobilenet.bench.provision import device_args, device_python

    profile = with_overrides(load_profile(device), **profile_overrides)
    if profile_overrides.get("python") is None and (setup_python := device_python(profile)):
        profile = replace(profile, python=setup_python)  # the environment `device setup` made
    settings = replace(BenchSettings(threads=profile.threads, runtime=profile.runtime, cpus=profile.cpus,
                                     benchmark_binary=profile.benchmark_binary),
                       **{**(QUICK if quick else {}), **{k: v for k, v in overrides.items() if v is not None}})
    found = resolve_artifacts(paths, preprocessing_from(*preprocessing))
    _check_runtime(settings.runtime, found)
    results = ResultsFile(output or f"build/results/{profile.name}.json")
    transport = make_transport(profile)
    refuse_unloadable(found, transport, settings.runtime, device_args(device, profile_overrides))
    echo(f"{len(found)} artifact(s) on {profile.name} ({transport.describe()}), "
         f"{settings.threads} thread(s); results -> {results.path}", err=True)
    records = bench(found, transport, profile.name, settings, results)
    for warning in sorted({w for r in records for w in r.warnings if not w.startswith("graph split")}):
        echo(f"warning: {warning}", err=True)
    failed = [r for r in records if not r.ok]
    echo(f"{len(records) - len(failed)} ok, {len(failed)} failed; results in {results.path}"
         + (f" (last failure: {failed[-1].artifact}: {failed[-1].error})" if failed else ""), err=True)
    return records
