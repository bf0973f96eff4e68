#!/usr/bin/env python3
"""edge-mobilenet device runner: time one model on this device's CPU and print ONE JSON object.

This single file is copied to the device (a Raspberry Pi over SSH, a phone over adb, or run locally).
It needs only Python 3.9+, numpy (1.x or 2.x) and one runtime: ai-edge-litert or tflite-runtime for
.tflite, onnxruntime for .onnx. Nothing but the JSON object is printed on stdout.

Measurement follows TFLite's benchmark_model: init time (load + allocate), first inference, warm-up by
count and minimum seconds, then timed runs until both a minimum count and a minimum time are met,
stopping at a maximum time. Latency is measured on the first row of the input batch; afterwards every
row is run once to return the outputs the host needs for accuracy.

Conditions that change latency are reported, not fixed: the CPU governor (warn unless `performance`),
temperature and Raspberry Pi throttling (`vcgencmd get_throttled`, before and after the run), and
whether the process runs under emulation (qemu-user: then latencies are meaningless).

Interleaved (``--rounds R`` with several ``--model``/``--inputs`` pairs): every model is loaded and
warmed up once, then timed in R rounds of ``--round-runs`` invokes, the models taking turns (the order
rotates every round), all in this one process, so the device's drift (DVFS, heat, other load) falls
on every model alike and the per-round ratios between them are what to compare.

    python3 device_runner.py --model m.tflite --inputs batch.npz [--threads 1] [--min-runs 50] ...
    python3 device_runner.py --model a.tflite --inputs a.npz --model b.tflite --inputs b.npz --rounds 25
"""

import argparse
import base64
import glob
import io
import json
import os
import platform
import resource
import sys
import threading
import time

import numpy as np

EXPECTED_OUTSIDE = ({"SOFTMAX": 1}, {"TFLite_Detection_PostProcess": 1})
RUNNER_VERSION = 3  # 3: named outputs of multi-output models (detectors)
THROTTLE_BITS = {0: "under_voltage", 1: "frequency_capped", 2: "throttled", 3: "soft_temperature_limit"}


def _read(path, default=None):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def _cpuinfo():
    fields = {}
    for line in (_read("/proc/cpuinfo", "") or "").splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            fields.setdefault(key, value)
    return fields


def _emulation():
    """qemu-user is visible as the interpreter of our parent (not intercepted) or in QEMU_* variables."""
    hints = []
    try:
        parent = os.readlink("/proc/%d/exe" % os.getppid())
        if "qemu" in parent:
            hints.append("parent process runs under " + os.path.basename(parent))
    except OSError:
        pass
    hints += ["environment sets " + k for k in sorted(os.environ) if k.startswith("QEMU_")]
    return hints


def throttling():
    """Raspberry Pi firmware throttling state, or None where vcgencmd is absent."""
    import shutil
    import subprocess

    if not shutil.which("vcgencmd"):
        return None
    try:
        text = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
        value = int(text.strip().split("=")[1], 16)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
    return {"raw": hex(value), "now": [name for bit, name in THROTTLE_BITS.items() if value >> bit & 1],
            "since_boot": [name for bit, name in THROTTLE_BITS.items() if value >> (bit + 16) & 1]}


def temperature_c():
    value = _read("/sys/class/thermal/thermal_zone0/temp")
    return round(int(value) / 1000.0, 1) if value and value.lstrip("-").isdigit() else None


def device_facts():
    cpu = _cpuinfo()
    governors = sorted({_read(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")}
                       - {None})
    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    features = (cpu.get("Features") or cpu.get("flags") or "").split()
    emulation = _emulation()
    return {
        "machine": platform.machine(), "system": platform.system(), "release": platform.release(),
        "python": platform.python_version(), "numpy": np.__version__,
        "model": _read("/proc/device-tree/model", cpu.get("Model")) or cpu.get("model name"),
        "cpu_implementer": cpu.get("CPU implementer"), "cpu_part": cpu.get("CPU part"),
        "features": features if cpu.get("CPU implementer") else [f for f in features if f in ("avx2", "avx512f", "avx512_vnni", "avxvnni")],
        "asimddp": "asimddp" in features, "cores": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "governors": governors, "cur_freq_khz": int(freq) if freq and freq.isdigit() else None,
        "temperature_c": temperature_c(), "throttling": throttling(),
        "emulated": bool(emulation), "emulation_hints": emulation,
    }


def _load_tflite(model, threads, runtime):
    errors = []
    candidates = {"auto": ["litert", "tflite-runtime"], "litert": ["litert"],
                  "tflite-runtime": ["tflite-runtime"]}[runtime]
    for name in candidates:
        try:
            if name == "litert":
                from ai_edge_litert import interpreter as module
                version = _dist_version("ai-edge-litert")
            else:
                from tflite_runtime import interpreter as module
                version = getattr(__import__("tflite_runtime"), "__version__", None)
        except ImportError as error:
            errors.append("%s: %s" % (name, error))
            continue
        return name, version, module.Interpreter(model_path=model, num_threads=threads)
    raise RuntimeError("no TFLite runtime: " + "; ".join(errors))


def _dist_version(name):
    try:
        from importlib import metadata
        return metadata.version(name)
    except Exception:
        return None


def delegation(interpreter):
    """XNNPACK coverage: one DELEGATE node per partition; covered nodes traced back from its outputs."""
    try:
        details = interpreter._get_ops_details()
    except Exception:
        return None
    nodes = [{"op": d["op_name"], "inputs": [int(t) for t in d["inputs"] if t >= 0],
              "outputs": [int(t) for t in d["outputs"] if t >= 0]} for d in details]
    original = [i for i, n in enumerate(nodes) if n["op"] != "DELEGATE"]
    producer = {t: i for i in original for t in nodes[i]["outputs"]}
    delegated = set()
    partitions = [n for n in nodes if n["op"] == "DELEGATE"]
    for part in partitions:
        boundary, pending, seen = set(part["inputs"]), list(part["outputs"]), set()
        while pending:
            tensor = pending.pop()
            if tensor in seen or tensor in boundary or tensor not in producer:
                continue
            seen.add(tensor)
            delegated.add(producer[tensor])
            pending.extend(nodes[producer[tensor]]["inputs"])
    outside = {}
    for i in original:
        if i not in delegated:
            outside[nodes[i]["op"]] = outside.get(nodes[i]["op"], 0) + 1
    # expected outside: a final SOFTMAX (classifiers) or the SSD post-processing op (detectors)
    split = len(partitions) > 1 or (bool(partitions) and bool(outside) and outside not in EXPECTED_OUTSIDE)
    return {"xnnpack": bool(partitions), "nodes_total": len(original), "nodes_delegated": len(delegated),
            "partitions": len(partitions), "ops_outside": outside, "split": split}


class TFLiteModel:
    def __init__(self, path, threads, runtime):
        self.runtime, self.version, self.interpreter = _load_tflite(path, threads, runtime)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def set_input(self, row):
        self.interpreter.set_tensor(self.input["index"], row)

    def invoke(self):
        self.interpreter.invoke()

    def get_output(self):
        return self.interpreter.get_tensor(self.output["index"]).copy()

    def named_outputs(self):
        """(signature name, array) of every output (detectors: boxes, classes, scores, count)."""
        details = self.interpreter.get_output_details()
        indices = [(d["name"], d["index"]) for d in details]
        try:  # tensor names are StatefulPartitionedCall:N; the signature keeps the exported names
            signature = self.interpreter._get_full_signature_list()
            outputs = signature[sorted(signature)[0]]["outputs"] if signature else {}
            if len(outputs) == len(details):
                indices = sorted(outputs.items(), key=lambda item: item[1])
        except (AttributeError, KeyError, IndexError, TypeError):
            pass
        return [(name, self.interpreter.get_tensor(index).copy()) for name, index in indices]

    def facts(self):
        facts = {"name": self.runtime, "version": self.version}
        facts.update(delegation(self.interpreter) or {"xnnpack": None})
        return facts


class OnnxModel:
    def __init__(self, path, threads, runtime, profile_prefix=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if threads > 1:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        self.input_name = self.session.get_inputs()[0].name
        self.feed, self.result = None, None

    def set_input(self, row):
        self.feed = {self.input_name: row}

    def invoke(self):
        self.result = self.session.run(None, self.feed)

    def get_output(self):
        return np.array(self.result[0], copy=True)

    def named_outputs(self):
        return [(o.name, np.array(v, copy=True)) for o, v in zip(self.session.get_outputs(), self.result)]

    def facts(self):
        return {"name": "onnxruntime", "version": self.version, "xnnpack": False,
                "providers": self.session.get_providers()}


def summarize_ort_trace(events, skip_runs=0):
    """ONNX Runtime's profiling trace (Chrome trace events) -> per-node kernel ms per run.

    Runs are the ``model_run`` events; the first ``skip_runs`` (warm-up) are left out, and a node event
    counts for the run whose interval holds it. Nodes keep their order of execution. A node's ms is its
    mean over the runs scaled by p50 / mean run: means add up (each run's nodes fit in it) and medians do
    not, so the nodes and the time between them add up to the p50 run even when a few slow runs (a loaded
    machine) raise every mean above the median.
    """
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[skip_runs:]
    if not runs:
        raise ValueError("the trace holds no model_run event after the warm-up")
    windows = [(r["ts"], r["ts"] + r["dur"]) for r in runs]
    totals, ops = {}, {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        if not any(low <= event["ts"] <= high for low, high in windows):
            continue
        node = name[:-len("_kernel_time")]
        totals[node] = totals.get(node, 0.0) + event["dur"]
        ops.setdefault(node, (event.get("args") or {}).get("op_name"))
    count = len(runs)
    durations = [r["dur"] for r in runs]
    p50, mean = float(np.median(durations)), float(np.mean(durations))
    scale = p50 / mean / count / 1e3 if mean > 0 else 1.0 / count / 1e3
    nodes = [{"node": n, "op": ops[n], "ms": round(totals[n] * scale, 5)} for n in totals]
    return {"method": "onnxruntime session profiling", "runs": count, "run_p50_ms": round(p50 / 1e3, 5),
            "run_mean_ms": round(mean / 1e3, 5), "nodes_total_ms": round(sum(totals.values()) * scale, 5),
            "nodes": nodes}


def profile_onnx(path, inputs, args):
    """Per-node times from a profiled session of its own (the timed session stays unprofiled): warm-up,
    then ``--profile-runs`` invokes; the trace file is read here and removed."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="edge-profile-")
    try:
        model = OnnxModel(path, args.threads, args.runtime, profile_prefix=os.path.join(folder, "ort"))
        model.set_input(inputs[0:1])
        warmup = max(1, args.warmup_runs)
        for _ in range(warmup + args.profile_runs):
            model.invoke()
        with open(model.session.end_profiling()) as handle:
            events = json.load(handle)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return summarize_ort_trace(events, skip_runs=warmup)


def _profile(path, inputs, args):
    if not args.profile_runs:
        return None
    if not (path.endswith(".onnx") or args.runtime == "onnxruntime"):
        return {"method": None, "error": "no per-op timing from LiteRT's Python API (tensorflow#59095): "
                                          "`edge-bench profile` times TFLite files by truncated prefixes"}
    try:
        return profile_onnx(path, inputs, args)
    except Exception as error:
        return {"method": None, "error": ("%s: %s" % (type(error).__name__, error)).splitlines()[0][:300]}


def _percentile(sorted_values, q):
    return float(np.percentile(np.asarray(sorted_values), q))


def _time_runs(model, min_runs, min_seconds, max_seconds, max_runs=None):
    times, started = [], time.perf_counter()
    while True:
        elapsed = time.perf_counter() - started
        if len(times) >= min_runs and elapsed >= min_seconds:
            break
        if elapsed >= max_seconds or (max_runs and len(times) >= max_runs):
            break
        t0 = time.perf_counter()
        model.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure(model, inputs, args):
    model.set_input(inputs[0:1])
    t0 = time.perf_counter()
    model.invoke()
    first_ms = (time.perf_counter() - t0) * 1e3
    warmup = _time_runs(model, args.warmup_runs, args.warmup_seconds, args.max_seconds)
    timed = _time_runs(model, args.min_runs, args.min_seconds, args.max_seconds, args.max_runs)
    return {"first_inference_ms": round(first_ms, 4),
            "warmup": {"count": len(warmup), "mean_ms": round(float(np.mean(warmup)), 4) if warmup else None},
            **_stats(timed)}


def outputs_of(model, inputs):
    """Per input row, the first output (``outputs``); a model with several outputs (a detector) also
    gives each under ``named/NAME``, rows stacked."""
    rows, named = [], {}
    for index in range(len(inputs)):
        model.set_input(inputs[index:index + 1])
        model.invoke()
        rows.append(model.get_output()[0])
        outputs = model.named_outputs()
        if len(outputs) > 1:
            for name, value in outputs:
                named.setdefault("named/" + name, []).append(value[0])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, outputs=np.stack(rows), **{k: np.stack(v) for k, v in named.items()})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _watch_stdin():
    """Exit at once when stdin closes: the SSH/adb connection dropped, so nobody reads our result."""
    def watch():
        try:
            while sys.stdin.buffer.read(1):
                pass
        except (OSError, ValueError):
            pass
        os._exit(4)
    threading.Thread(target=watch, daemon=True).start()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Time one model; print one JSON object.")
    parser.add_argument("--model", required=True, action="append", help="repeat with --rounds to interleave")
    parser.add_argument("--inputs", required=True, action="append",
                        help=".npz with an 'inputs' array in the model's dtype (one per --model)")
    parser.add_argument("--rounds", type=int, default=0, help="interleave the models in this many rounds")
    parser.add_argument("--round-runs", type=int, default=20, help="timed invokes per model per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtime", default="auto", choices=["auto", "litert", "tflite-runtime", "onnxruntime"])
    parser.add_argument("--warmup-runs", type=int, default=1)
    parser.add_argument("--warmup-seconds", type=float, default=0.5)
    parser.add_argument("--min-runs", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=150.0)
    parser.add_argument("--max-runs", type=int, default=None)
    parser.add_argument("--cpus", default=None, help="CPU list to pin to, e.g. 4-7 or 0,2")
    parser.add_argument("--no-outputs", action="store_true", help="skip the per-row outputs")
    parser.add_argument("--profile-runs", type=int, default=0,
                        help="also profile per node over this many invokes (ONNX Runtime)")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    args = parser.parse_args(argv)
    if len(args.model) != len(args.inputs):
        parser.error("give one --inputs per --model")
    if len(args.model) > 1 and args.rounds < 1:
        parser.error("several models need --rounds N (interleaved timing)")
    return args


def _cpu_list(text):
    cpus = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def _load(path, args):
    """(model, None) or (None, (error_kind, error)) for one artifact."""
    onnx = path.endswith(".onnx") or args.runtime == "onnxruntime"
    try:
        return (OnnxModel(path, args.threads, args.runtime) if onnx else
                TFLiteModel(path, args.threads, args.runtime)), None
    except ImportError as error:
        return None, ("no_runtime", "no onnxruntime: %s" % error)
    except RuntimeError as error:
        kind = "no_runtime" if str(error).startswith("no TFLite runtime") else "load_failed"
        return None, (kind, str(error).splitlines()[0][:300])
    except Exception as error:
        return None, ("load_failed", ("%s" % error).splitlines()[0][:300])


def _finish(result, args, throttle_before, baseline_kb):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["memory"] = {"peak_rss_kb": int(peak_kb), "before_model_rss_kb": int(baseline_kb),
                        "model_rss_kb": int(peak_kb - baseline_kb)}
    result["device"]["temperature_after_c"] = temperature_c()
    throttle_after = throttling()
    result["device"]["throttling_after"] = throttle_after
    result["throttled_during_run"] = bool(throttle_after and (throttle_after["now"] or (
        throttle_before is not None and throttle_after["since_boot"] != throttle_before["since_boot"])))
    return result


def run(args):
    if args.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, _cpu_list(args.cpus))
    result = {"runner_version": RUNNER_VERSION, "ok": False, "model": os.path.basename(args.model[0]),
              "settings": {k: v for k, v in vars(args).items() if k not in ("model", "inputs")}}
    result["device"] = device_facts()
    throttle_before = result["device"]["throttling"]
    if args.rounds > 0:
        return run_interleaved(args, result, throttle_before)
    inputs = np.load(args.inputs[0])["inputs"]
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    model, failure = _load(args.model[0], args)
    if failure:
        result.update(error_kind=failure[0], error=failure[1])
        return result
    init_ms = (time.perf_counter() - started) * 1e3
    result["runtime"] = model.facts()
    latency = measure(model, inputs, args)
    latency["init_ms"] = round(init_ms, 3)
    result["latency"] = latency
    profile = _profile(args.model[0], inputs, args)
    if profile is not None:
        result["profile"] = profile
    if not args.no_outputs:
        result["outputs_npz_b64"] = outputs_of(model, inputs)
        result["outputs_count"] = int(len(inputs))
    result["ok"] = True
    return _finish(result, args, throttle_before, baseline_kb)


def _stats(times):
    timed = sorted(times)
    return {"count": len(timed), "min_ms": round(timed[0], 4), "max_ms": round(timed[-1], 4),
            "mean_ms": round(float(np.mean(timed)), 4), "std_ms": round(float(np.std(timed)), 4),
            "p50_ms": round(_percentile(timed, 50), 4), "p90_ms": round(_percentile(timed, 90), 4),
            "p99_ms": round(_percentile(timed, 99), 4)}


def run_interleaved(args, result, throttle_before):
    """Load every model, warm each up, then time them in alternating rounds; one result per model."""
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    entries = []
    for path, inputs_path in zip(args.model, args.inputs):
        inputs = np.load(inputs_path)["inputs"]
        started = time.perf_counter()
        model, failure = _load(path, args)
        entry = {"model": os.path.basename(path), "ok": failure is None}
        if failure:
            entry.update(error_kind=failure[0], error=failure[1])
        else:
            entry.update(runtime=model.facts(), init_ms=round((time.perf_counter() - started) * 1e3, 3))
            model.set_input(inputs[0:1])
            t0 = time.perf_counter()
            model.invoke()
            entry["first_inference_ms"] = round((time.perf_counter() - t0) * 1e3, 4)
            entry["warmup"] = len(_time_runs(model, args.warmup_runs, args.warmup_seconds, args.max_seconds))
        entries.append((entry, model, inputs, []))
    loaded = [e for e in entries if e[1] is not None]
    for round_index in range(args.rounds):
        shift = round_index % max(1, len(loaded))
        for entry, model, inputs, rounds in loaded[shift:] + loaded[:shift]:
            model.set_input(inputs[0:1])
            rounds.append(_time_runs(model, args.round_runs, 0.0, args.max_seconds, args.round_runs))
    result["results"] = [_interleaved_entry(path, *parts, args) for path, parts in zip(args.model, entries)]
    result["ok"] = True
    return _finish(result, args, throttle_before, baseline_kb)


def _interleaved_entry(path, entry, model, inputs, rounds, args):
    if model is None:
        return entry
    latency = _stats([t for r in rounds for t in r])
    latency.update(init_ms=entry.pop("init_ms"), first_inference_ms=entry.pop("first_inference_ms"),
                   warmup={"count": entry.pop("warmup"), "mean_ms": None},
                   rounds={"count": len(rounds), "runs_per_round": args.round_runs,
                           "p50_ms": [round(_percentile(sorted(r), 50), 4) for r in rounds]})
    entry["latency"] = latency
    profile = _profile(path, inputs, args)
    if profile is not None:
        entry["profile"] = profile
    if not args.no_outputs:
        model.set_input(inputs[0:1])
        entry["outputs_npz_b64"] = outputs_of(model, inputs)
        entry["outputs_count"] = int(len(inputs))
    return entry


def main(argv=None):
    args = parse_args(argv)
    if args.exit_on_stdin_eof:
        _watch_stdin()
    try:
        result = run(args)
    except Exception as error:  # report, never a traceback on stdout
        result = {"runner_version": RUNNER_VERSION, "ok": False, "error_kind": "runner_error",
                  "error": ("%s: %s" % (type(error).__name__, error)).splitlines()[0][:300]}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    code = 0 if result.get("ok") else 3
    if args.exit_on_stdin_eof:
        os._exit(code)  # the stdin watcher thread must not block interpreter shutdown
    return code


if __name__ == "__main__":
    sys.exit(main())
