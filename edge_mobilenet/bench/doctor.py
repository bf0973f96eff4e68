"""``edge-bench device doctor``: what a device is and what it can run, over its real transport.

The device is probed (:mod:`edge_mobilenet.bench.provision`: shell facts, every Python interpreter it
has), then each environment holding numpy and a runtime loads two one-operator CONV_2D models (fp32
and int8, built here without TensorFlow) with the device runner's own loader and runs them once: the
XNNPACK delegation reported is the one measured there, not assumed from the version. The wheel table
in ``provision`` says what could be installed; each runtime gets a verdict and the exact next command.

The same facts let ``bench`` refuse, before any device time, an artifact whose manifest says the
device's runtime release cannot load it (:func:`refuse_unloadable`).
"""

from __future__ import annotations

import json
import shlex
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_mobilenet.bench import provision
from edge_mobilenet.bench.provision import PythonEnv, SystemFacts
from edge_mobilenet.errors import EdgeError

TFLITE_RUNTIMES = ("ai-edge-litert", "tflite-runtime")  # the runner's "auto" order for .tflite
RUNNER_NAMES = {"ai-edge-litert": "litert", "tflite-runtime": "tflite-runtime", "onnxruntime": "onnxruntime"}

# Runs in the scratch folder next to device_runner.py and the two tiny models; prints one line.
MEASURE = r"""
import json, sys
sys.path.insert(0, ".")
import numpy as np
import device_runner as runner
def failure(error):
    return {"error": ("%s: %s" % (type(error).__name__, error)).strip().splitlines()[0][:200]}
result = {"device": runner.device_facts(), "tflite": {}, "onnxruntime": None}
for name in sys.argv[1].split(","):
    if name == "onnxruntime":
        try:
            import onnxruntime
            result["onnxruntime"] = {"version": onnxruntime.__version__,
                                     "providers": onnxruntime.get_available_providers()}
        except Exception as error:
            result["onnxruntime"] = failure(error)
        continue
    for kind in ("fp32", "int8"):
        try:
            model = runner.TFLiteModel("tiny_%s.tflite" % kind, 1, name)
            model.set_input(np.zeros(model.input["shape"], model.input["dtype"]))
            model.invoke()
            facts = model.facts()
        except Exception as error:
            facts = failure(error)
        result["tflite"].setdefault(name, {})[kind] = facts
print("EDGE_MEASURE " + json.dumps(result))
"""


# -- the tiny models ---------------------------------------------------------------------------------

def _vector(builder, flags, size: int, values, alignment: int | None = None) -> int:
    builder.StartVector(size, len(values), alignment or size)
    for value in reversed(list(values)):
        builder.Prepend(flags, value)
    return builder.EndVector()


def _tables(builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _tensor(b, n, name: str, shape: list[int], dtype: int, buffer: int, scale: float | None) -> int:
    name_at, shape_at = b.CreateString(name), _vector(b, n.Int32Flags, 4, shape)
    quantization = None
    if scale is not None:  # QuantizationParameters: scale (2), zero_point (3)
        scale_at, zero_at = _vector(b, n.Float32Flags, 4, [scale]), _vector(b, n.Int64Flags, 8, [0])
        b.StartObject(7)
        b.PrependUOffsetTRelativeSlot(2, scale_at, 0)
        b.PrependUOffsetTRelativeSlot(3, zero_at, 0)
        quantization = b.EndObject()
    b.StartObject(5)  # Tensor: shape (0), type (1), buffer (2), name (3), quantization (4)
    b.PrependUOffsetTRelativeSlot(0, shape_at, 0)
    b.PrependInt8Slot(1, dtype, 0)
    b.PrependUint32Slot(2, buffer, 0)
    b.PrependUOffsetTRelativeSlot(3, name_at, 0)
    if quantization is not None:
        b.PrependUOffsetTRelativeSlot(4, quantization, 0)
    return b.EndObject()


def _conv_subgraph(b, n, int8: bool) -> int:
    """One CONV_2D 1x1, [1,8,8,3] -> [1,8,8,4]; weights in buffer 1, bias in buffer 2."""
    act, bias = (9, 2) if int8 else (0, 0)  # TensorType INT8 / INT32 / FLOAT32
    scales = (0.05, 0.02, 0.001, 0.1) if int8 else (None,) * 4
    tensors = [_tensor(b, n, "input", [1, 8, 8, 3], act, 0, scales[0]),
               _tensor(b, n, "weights", [4, 1, 1, 3], act, 1, scales[1]),
               _tensor(b, n, "bias", [4], bias, 2, scales[2]),
               _tensor(b, n, "output", [1, 8, 8, 4], act, 0, scales[3])]
    b.StartObject(4)  # Conv2DOptions: padding SAME (0), stride_w (1), stride_h (2)
    b.PrependInt32Slot(1, 1, 0)
    b.PrependInt32Slot(2, 1, 0)
    options = b.EndObject()
    inputs, outputs = _vector(b, n.Int32Flags, 4, [0, 1, 2]), _vector(b, n.Int32Flags, 4, [3])
    b.StartObject(5)  # Operator: opcode_index (0), inputs (1), outputs (2), options type (3), options (4)
    b.PrependUOffsetTRelativeSlot(1, inputs, 0)
    b.PrependUOffsetTRelativeSlot(2, outputs, 0)
    b.PrependUint8Slot(3, 1, 0)  # BuiltinOptions.Conv2DOptions
    b.PrependUOffsetTRelativeSlot(4, options, 0)
    operator = b.EndObject()
    tensors_at, operators_at = _tables(b, tensors), _tables(b, [operator])
    graph_in, graph_out = _vector(b, n.Int32Flags, 4, [0]), _vector(b, n.Int32Flags, 4, [3])
    b.StartObject(4)  # SubGraph: tensors (0), inputs (1), outputs (2), operators (3)
    for slot, offset in enumerate((tensors_at, graph_in, graph_out, operators_at)):
        b.PrependUOffsetTRelativeSlot(slot, offset, 0)
    return b.EndObject()


def tiny_conv_model(int8: bool, conv_version: int | None = None) -> bytes:
    """A one-operator .tflite (tensorflow/lite/schema/schema.fbs written with ``flatbuffers``, no
    TensorFlow): enough for a runtime to show whether XNNPACK takes fp32 / int8 convolutions.

    ``conv_version`` overrides the CONV_2D operator version (1 for fp32, 3 for int8 by default).
    """
    import numpy as np

    try:
        import flatbuffers
        from flatbuffers import number_types as n
    except ImportError:
        raise EdgeError("the doctor builds its test models with the `flatbuffers` package, which this host "
                        "lacks (it comes with ai-edge-litert): pip install flatbuffers") from None

    rng = np.random.default_rng(0)
    weights = (rng.integers(-127, 128, (4, 1, 1, 3)).astype(np.int8) if int8
               else rng.standard_normal((4, 1, 1, 3)).astype(np.float32))
    bias = np.zeros(4, np.int32 if int8 else np.float32)
    b = flatbuffers.Builder(2048)
    buffers = []
    for data in (b"", weights.tobytes(), bias.tobytes()):
        at = _vector(b, n.Uint8Flags, 1, data, 16) if data else None
        b.StartObject(1)  # Buffer: data (0)
        if at is not None:
            b.PrependUOffsetTRelativeSlot(0, at, 0)
        buffers.append(b.EndObject())
    subgraph = _conv_subgraph(b, n, int8)
    b.StartObject(4)  # OperatorCode: deprecated_builtin_code (0), version (2), builtin_code (3)
    b.PrependInt8Slot(0, 3, 0)  # CONV_2D
    b.PrependInt32Slot(2, conv_version or (3 if int8 else 1), 1)
    b.PrependInt32Slot(3, 3, 0)
    code = b.EndObject()
    codes_at, graphs_at, buffers_at = _tables(b, [code]), _tables(b, [subgraph]), _tables(b, buffers)
    b.StartObject(5)  # Model: version (0), operator_codes (1), subgraphs (2), buffers (4)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, codes_at, 0)
    b.PrependUOffsetTRelativeSlot(2, graphs_at, 0)
    b.PrependUOffsetTRelativeSlot(4, buffers_at, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


# -- measuring -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RuntimeFinding:
    """One runtime in one environment, as measured there (``loads`` None: not measured)."""

    runtime: str
    version: str
    python: str
    bench_python: bool
    loads: bool | None
    fp32_xnnpack: bool | None = None
    int8_xnnpack: bool | None = None
    fp32_nodes: str | None = None
    int8_nodes: str | None = None
    error: str | None = None
    note: str | None = None


def _measurable(env: PythonEnv) -> list[str]:
    return [RUNNER_NAMES[d] for d in (*TFLITE_RUNTIMES, "onnxruntime") if env.packages.get(d)]


def measure(transport, envs: list[PythonEnv]) -> dict[str, dict]:
    """Load the tiny models in every environment that has numpy and a runtime; {prefix: result}."""
    from edge_mobilenet.runtimes import device_runner

    todo = [e for e in envs if e.packages.get("numpy") and e.supported and _measurable(e)]
    if not todo:
        return {}
    transport.push(Path(device_runner.__file__), "device_runner.py")
    with tempfile.TemporaryDirectory(prefix="edge-doctor-") as folder:
        for kind in ("fp32", "int8"):
            path = Path(folder) / f"tiny_{kind}.tflite"
            path.write_bytes(tiny_conv_model(kind == "int8"))
            transport.push(path, path.name)
    results = {}
    for env in todo:
        answer = transport.run_in_scratch([env.executable, "-c", MEASURE, ",".join(_measurable(env))], timeout=600)
        results[env.prefix] = _measured(answer)
    return results


def _measured(answer) -> dict:
    lines = [l for l in answer.stdout.splitlines() if l.startswith("EDGE_MEASURE ")]
    try:
        return json.loads(lines[-1][len("EDGE_MEASURE "):])
    except (IndexError, ValueError):
        return {"error": "timed out" if answer.timed_out else provision._last_line(answer.stderr)}


def _nodes(facts: dict) -> str | None:
    return f"{facts['nodes_delegated']}/{facts['nodes_total']}" if "nodes_total" in facts else None


def _tflite_finding(dist: str, env: PythonEnv, bench: bool, measured: dict | None) -> RuntimeFinding:
    version = env.packages[dist]
    if not env.packages.get("numpy") or not env.supported:
        why = "no numpy in this environment" if env.supported else f"Python {env.version} < 3.9"
        return RuntimeFinding(dist, version, env.executable, bench, None, note=f"not measured: {why}")
    if measured is None or "error" in measured:
        error = (measured or {}).get("error", "not measured")
        return RuntimeFinding(dist, version, env.executable, bench, False, error=error)
    per_model = (measured.get("tflite") or {}).get(RUNNER_NAMES[dist], {})
    fp32, int8 = per_model.get("fp32", {}), per_model.get("int8", {})
    error = fp32.get("error") or int8.get("error")
    return RuntimeFinding(dist, version, env.executable, bench, error is None, fp32.get("xnnpack"),
                          int8.get("xnnpack"), _nodes(fp32), _nodes(int8), error)


def _onnx_finding(env: PythonEnv, bench: bool, measured: dict | None) -> RuntimeFinding:
    version = env.packages["onnxruntime"]
    answer = (measured or {}).get("onnxruntime") or {"error": (measured or {}).get("error", "not measured")}
    if not env.packages.get("numpy") or not env.supported:
        return RuntimeFinding("onnxruntime", version, env.executable, bench, None,
                              note="not measured: no numpy in this environment")
    if "error" in answer:
        return RuntimeFinding("onnxruntime", version, env.executable, bench, False, error=answer["error"])
    providers = answer.get("providers") or []
    note = ("XnnpackExecutionProvider available, " if "XnnpackExecutionProvider" in providers else
            "no XnnpackExecutionProvider in this build; ") + "bench runs CPUExecutionProvider"
    return RuntimeFinding("onnxruntime", answer.get("version") or version, env.executable, bench, True,
                          False, False, note=note)


def findings(envs: list[PythonEnv], measured: dict, bench_env: PythonEnv | None) -> list[RuntimeFinding]:
    found = []
    for env in envs:
        bench = bench_env is not None and env.prefix == bench_env.prefix
        for dist in TFLITE_RUNTIMES:
            if env.packages.get(dist):
                found.append(_tflite_finding(dist, env, bench, measured.get(env.prefix)))
        if env.packages.get("onnxruntime"):
            found.append(_onnx_finding(env, bench, measured.get(env.prefix)))
    return sorted(found, key=lambda f: (f.runtime, not f.bench_python))


# -- verdicts ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    runtime: str
    status: str  # ready | installed | broken | installable | unavailable | no-python
    detail: str
    next_command: str
    wheel: str = ""  # the newest published wheel this device can install, or why there is none


def _int8_note(finding: RuntimeFinding) -> str:
    if finding.int8_xnnpack is False and finding.runtime != "onnxruntime":
        return "; int8 is NOT delegated to XNNPACK here (slow reference kernels): use ai-edge-litert for int8"
    return ""


def _bench_command(args: str, finding: RuntimeFinding, packages: dict) -> str:
    extra = [] if finding.bench_python else ["--python", finding.python]
    if finding.runtime == "tflite-runtime" and packages.get("ai-edge-litert"):
        extra += ["--runtime", "tflite-runtime"]  # auto would pick ai-edge-litert
    target = "ARTIFACT.onnx" if finding.runtime == "onnxruntime" else "ARTIFACTS"
    return " ".join(["edge-bench bench", target, args, *([shlex.join(extra)] if extra else [])])


def _no_python_verdict(runtime: str, system: SystemFacts, transport_name: str, args: str) -> Verdict:
    if transport_name == "adb":
        abi = (system.android or {}).get("abi") or provision.ANDROID_ABIS.get(system.machine or "", system.machine)
        binary = {"arm64-v8a": "android_aarch64_benchmark_model", "armeabi-v7a": "android_arm_benchmark_model"}
        return Verdict(runtime, "no-python", f"no Python on the device: bench needs TFLite's benchmark_model "
                       f"built for {abi} (e.g. {binary.get(abi, 'benchmark_model')}; latency only, no accuracy)",
                       f"edge-bench bench ARTIFACT.tflite {args} --benchmark-binary PATH/TO/benchmark_model")
    return Verdict(runtime, "no-python", "no Python on the device: install Python 3.9+ with venv "
                   "(Debian / Raspberry Pi OS: `sudo apt install python3 python3-venv`)",
                   f"edge-bench device setup {args} --runtime {provision.RUNTIME_FLAGS[runtime]} --offline")


def _verdict(runtime: str, system: SystemFacts, base: PythonEnv | None, found: list[RuntimeFinding],
             envs: list[PythonEnv], args: str) -> Verdict:
    machine, python = (base.userland, base.xy) if base else (system.machine, None)
    wheel, why = provision.find_wheel(runtime, machine, system.glibc, python)
    wheel_text = f"wheel {why}" if wheel else f"no wheel: {why}"
    mine = [f for f in found if f.runtime == runtime]
    usable = sorted((f for f in mine if f.loads), key=lambda f: not f.bench_python)
    if usable:
        f = usable[0]
        env = next(e for e in envs if e.executable == f.python)
        where = "bench's Python" if f.bench_python else "another environment (not bench's Python)"
        return Verdict(runtime, "ready" if f.bench_python else "installed", f"{f.version} in {where} "
                       f"{f.python}{_int8_note(f)}", _bench_command(args, f, env.packages), wheel_text)
    broken = next((f for f in mine if f.loads is False), None)
    unmeasured = next((f for f in mine if f.loads is None), None)
    if wheel is not None:
        detail = (f"{broken.version} in {broken.python} fails ({broken.error}); " if broken else
                  f"{unmeasured.version} in {unmeasured.python} is unusable ({unmeasured.note}); " if unmeasured
                  else "") + "not installed here"
        return Verdict(runtime, "broken" if broken else "installable", detail,
                       f"edge-bench device setup {args} --runtime {provision.RUNTIME_FLAGS[runtime]} --offline",
                       wheel_text)
    others = [r for r in provision.RUNTIME_FLAGS if r != runtime
              and provision.find_wheel(r, machine, system.glibc, python)[0]]
    alternative = (f"edge-bench device setup {args} --runtime {provision.RUNTIME_FLAGS[others[0]]} --offline"
                   if others else "none: no published wheel fits; a 64-bit OS with Python 3.11 has them all"
                   if machine in provision.TABULATED_MACHINES else
                   f"not tabulated for {machine}: `pip install {runtime}` in bench's Python if PyPI has it")
    return Verdict(runtime, "unavailable", f"not installable: {why}", alternative, wheel_text)


# -- the report ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DoctorReport:
    device: str
    target: str
    transport: str
    emulated: bool
    emulation: list[str]
    system: SystemFacts
    pythons: list[PythonEnv]
    bench_python: str | None
    runtimes: list[RuntimeFinding]
    verdicts: list[Verdict]
    notes: list[str] = field(default_factory=list)

    @property
    def can_bench(self) -> bool:
        return any(v.status in ("ready", "installed") for v in self.verdicts)

    def to_json(self) -> dict:
        data = asdict(self)
        data["pythons"] = [{**asdict(e), "userland": e.userland, "tag": e.tag} for e in self.pythons]
        data["can_bench"] = self.can_bench
        return data


def _notes(system: SystemFacts, base: PythonEnv | None, emulated: bool, state: dict | None) -> list[str]:
    notes = []
    if emulated:
        notes.append("EMULATED device (qemu-user): results are real ARM results, latencies are meaningless")
    if system.governors and system.governors != ("performance",):
        notes.append(f"CPU governor is {', '.join(system.governors)}, not performance: latency may vary "
                     "(`echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor`)")
    if system.throttling and (system.throttling["now"] or system.throttling["since_boot"]):
        notes.append(f"throttling: now {system.throttling['now'] or 'none'}, since boot "
                     f"{system.throttling['since_boot'] or 'none'}: cool the board, check the power supply")
    if base is not None and base.bits == 32 and system.machine in ("aarch64", "arm64"):
        notes.append("64-bit kernel with a 32-bit userland: wheels must be armv7l (a 64-bit OS gets aarch64 ones)")
    if state is not None:
        notes.append(f"device setup made {state.get('python')} ({state.get('runtime')} "
                     f"{state.get('runtime_version')}) on {state.get('recorded_utc')}")
    return notes


def diagnose(profile, transport, python_flag: str | None, args: str) -> DoctorReport:
    """Probe, measure and judge the device behind ``transport`` (opened and closed here)."""
    state = provision.read_state(profile.name)
    setup_python = provision.device_python(profile)
    bench = python_flag or setup_python or transport.python
    transport.open()
    try:
        system = provision.probe_system(transport)
        envs = provision.probe_pythons(transport, [bench] if python_flag else [bench, *system.pythons])
        bench_env = next((e for e in envs if bench in (e.requested, e.executable)), None)
        measured = measure(transport, envs)
    finally:
        transport.close()
    hints = list(system.emulation) + [h for m in measured.values() for h in (m.get("device") or {}).get(
        "emulation_hints", [])]
    found = findings(envs, measured, bench_env)
    base = bench_env or (envs[0] if envs else None)
    verdicts = [(_verdict(r, system, base, found, envs, args) if envs else
                 _no_python_verdict(r, system, transport.name, args)) for r in provision.RUNTIME_FLAGS]
    emulated = bool(hints)
    return DoctorReport(profile.name, transport.describe(), transport.name, emulated, sorted(set(hints)), system,
                        envs, bench_env.executable if bench_env else None, found, verdicts,
                        _notes(system, base, emulated, state if setup_python else None))


def _yes_no(value: bool | None, nodes: str | None, onnx: bool = False) -> str:
    text = {True: "yes", False: "NO", None: "n/a"}[value]
    return "no (CPU EP)" if onnx and value is False else f"{text} ({nodes})" if nodes else text


X86_FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def _shown_features(system: SystemFacts) -> list[str]:
    """ARM: every feature (few, all relevant); x86: the ones that change inference kernels."""
    if system.cpu_part or system.machine not in ("x86_64", "i686"):
        return list(system.features)
    return [f for f in system.features if f in X86_FEATURES]


def _system_lines(report: DoctorReport) -> list[str]:
    s, base = report.system, next((e for e in report.pythons if e.executable == report.bench_python), None)
    userland = f"{base.userland} userland ({base.bits}-bit Python)" if base else "userland unknown (no Python)"
    throttling = ("n/a (no vcgencmd)" if s.throttling is None else
                  f"{s.throttling['raw']} now {s.throttling['now'] or 'none'}")
    return [f"  os            {s.os_name or 'unknown'}; {s.kernel or 'unknown kernel'}",
            f"  architecture  {s.machine or 'unknown'} kernel, {userland}",
            f"  board         {s.model or 'unknown'}",
            f"  cpu           {', '.join(s.cpus) or 'unknown'} (CPU part {s.cpu_part or '?'}); {s.cores or '?'} "
            f"cores; asimddp (int8 dot product): {'yes' if s.asimddp else 'no'}",
            f"  features      {' '.join(_shown_features(s)) or 'unknown'}",
            f"  governor      {', '.join(s.governors) or 'n/a (no cpufreq)'}; temperature "
            f"{f'{s.temperature_c} C' if s.temperature_c is not None else 'n/a'}; throttling {throttling}",
            f"  glibc         {s.glibc or 'none (not a glibc system)'}"]


def doctor_table(report: DoctorReport) -> str:
    """The human-readable report: system, Python environments, measured runtimes, verdicts."""
    lines = [f"device {report.device} ({report.target})", *_system_lines(report), "Python environments"]
    for env in report.pythons:
        runtimes = ", ".join(f"{d} {env.packages[d]}" for d in (*TFLITE_RUNTIMES, "onnxruntime")
                             if env.packages.get(d)) or "no runtime"
        mark = "*" if env.executable == report.bench_python else " "
        lines.append(f"  {mark} {env.executable:34s} Python {env.version} ({env.bits}-bit)  "
                     f"numpy {env.packages.get('numpy') or '-':8s} {runtimes}")
    if not report.pythons:
        lines.append("    none found")
    lines.append("Runtimes (measured on one-operator CONV_2D models; * = bench's Python)")
    lines.append(f"    {'runtime':15s} {'version':9s} {'fp32 XNNPACK':13s} {'int8 XNNPACK':13s} python")
    for f in report.runtimes:
        onnx = f.runtime == "onnxruntime"
        state = f"  {f.error or f.note}" if (f.error or f.note) else ""
        fp32, int8 = _yes_no(f.fp32_xnnpack, f.fp32_nodes, onnx), _yes_no(f.int8_xnnpack, f.int8_nodes, onnx)
        lines.append(f"  {'*' if f.bench_python else ' '} {f.runtime:15s} {f.version:9s} {fp32:13s} {int8:13s} "
                     f"{f.python}{state}")
    if not report.runtimes:
        lines.append("    none installed")
    lines.append("Verdicts (wheels: published tags in edge_mobilenet.bench.provision.PUBLISHED_WHEELS)")
    if report.verdicts and all(v.status == "no-python" for v in report.verdicts):
        v = report.verdicts[0]
        lines += [f"  {'any runtime':15s} {v.status:12s} {v.detail}", f"  {'':15s} next: {v.next_command}"]
    else:
        for v in report.verdicts:
            wheel = [] if v.status == "unavailable" else [f"  {'':15s} {v.wheel}"]
            lines += [f"  {v.runtime:15s} {v.status:12s} {v.detail}", *wheel, f"  {'':15s} next: {v.next_command}"]
    return "\n".join(lines + [f"note: {n}" for n in report.notes])


def run_doctor_command(device: str, connection: dict, as_json: bool) -> tuple[str, int]:
    """``edge-bench device doctor``: (text to print, exit status: 1 when nothing can run bench yet)."""
    from edge_mobilenet.bench.devices import load_profile, make_transport, with_overrides

    profile = with_overrides(load_profile(device), **connection)
    report = diagnose(profile, make_transport(profile), connection.get("python"),
                      provision.device_args(device, connection))
    text = json.dumps(report.to_json(), indent=2) if as_json else doctor_table(report)
    return text, 0 if report.can_bench else 1


# -- bench's pre-flight check ----------------------------------------------------------------------------

def _spec_version(key: str) -> tuple[str, tuple[int, ...] | None]:
    name, _, version = key.partition("==")
    try:
        return name, tuple(int(p) for p in version.split(".")) if version else None
    except ValueError:
        return name, None


def recorded_verdict(compatibility: dict, runtime: str, version: str) -> tuple[bool, str, list[str]] | None:
    """(loads, release checked, problems) for ``runtime==version`` from a manifest's compatibility
    record, or None when no recorded release decides it. A newer release loads what an older one
    loads (operator versions only grow): a recorded release <= the device's that loads decides yes,
    one >= the device's that refuses decides no."""
    try:
        mine = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return None
    recorded = []
    for key, verdict in compatibility.items():
        name, release = _spec_version(key)
        if name == runtime and release is not None and isinstance(verdict, dict):
            recorded.append((release[:2], key, bool(verdict.get("loads")), list(verdict.get("problems") or [])))
    for release, key, loads, problems in sorted(recorded, reverse=True):
        if loads and release <= mine:
            return True, key, []
    for release, key, loads, problems in sorted(recorded):
        if not loads and release >= mine:
            return False, key, problems
    return None


def _device_runtime(kind: str, runtime: str, packages: dict) -> str | None:
    """The distribution the runner would use for an artifact of ``kind`` (tflite / onnx)."""
    if kind == "onnx":
        return "onnxruntime" if packages.get("onnxruntime") else None
    chosen = TFLITE_RUNTIMES if runtime == "auto" else [provision.RUNTIMES.get(runtime)]
    return next((d for d in chosen if d in TFLITE_RUNTIMES and packages.get(d)), None)


def _check_now(path, dist: str | None, packages: dict) -> dict:
    """A compatibility record for a file without one (not from quantize): its operator versions
    against the device's runtime release, when the tables know that release."""
    from edge_mobilenet.runtimes.compat import check_compat

    if dist is None:
        return {}
    spec = f"{dist}=={packages[dist]}"
    try:
        result = check_compat(path, spec)
    except EdgeError:
        return {}
    return {spec: {"loads": result.ok, "problems": result.problems}}


def refuse_unloadable(artifacts, transport, runtime: str, args: str) -> None:
    """Raise EdgeError (before any device time) for the first artifact that the runtime the device would
    use cannot load (its manifest's compatibility record, or for a bare file its operators checked now),
    with the doctor's advice. Devices without Python or without the runtime pass: bench reports those."""
    envs = provision.probe_pythons(transport, [transport.python])
    if not envs:
        return
    packages = envs[0].packages
    for artifact in artifacts:
        dist = _device_runtime(artifact.entry.runtime, runtime, packages)
        compatibility = artifact.entry.facts.get("compatibility") or _check_now(artifact.path, dist, packages)
        verdict = recorded_verdict(compatibility, dist, packages[dist]) if dist else None
        if verdict is None or verdict[0]:
            continue
        loaders = [k.partition("==")[0] for k, v in compatibility.items()
                   if isinstance(v, dict) and v.get("loads") and k.partition("==")[0] in provision.RUNTIME_FLAGS]
        advice = (f"{loaders[0]} loads it: `edge-bench device setup {args} --runtime "
                  f"{provision.RUNTIME_FLAGS[loaders[0]]} --offline`" if loaders and loaders[0] != dist else
                  "no recorded runtime release loads it: re-convert it")
        raise EdgeError(f"{artifact.path.name}: the device's {dist} {packages[dist]} ({envs[0].executable}) "
                        f"cannot load it ({'; '.join(verdict[2][:2]) or 'refused'}, as {verdict[1]}); {advice} "
                        f"(`edge-bench device doctor {args}` shows what the device has)")
