"""What a device is, which runtime wheels exist for it, and ``edge-bench device setup``.

Probing runs two commands over the device's own transport: one shell script (uname, /proc/cpuinfo,
cpufreq, thermal zone, ``vcgencmd``, ``getprop``, glibc, the Python interpreters it can find) and one
stdlib-only Python snippet per interpreter (version, pointer size, C library, installed package
versions read from their metadata, without importing them). Nothing here needs numpy on the device.

Setup creates ``<cache>/edge-mobilenet/venvs/<runtime>-<version>-cp<XY>`` on the device (the device
user's ``$XDG_CACHE_HOME`` or ``~/.cache``) and installs numpy and the runtime there: with the device's
own pip, or (``--offline``) from wheels the host downloads for the device's platform tags and Python
version (``pip download --platform ... --python-version ... --only-binary=:all:``), pushes into the
transport's scratch folder and installs with ``--no-index``. The host remembers the environment in
``~/.cache/edge-mobilenet/devices/NAME.json``; :func:`device_python` is what ``bench`` reads.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import write_json_atomic

STATE_SCHEMA = 1
# `--runtime` names (as for bench) -> the distribution on PyPI and the module that proves it loads
RUNTIMES = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime", "onnxruntime": "onnxruntime"}
RUNTIME_FLAGS = {dist: flag for flag, dist in RUNTIMES.items()}
IMPORTS = {"ai-edge-litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter",
           "onnxruntime": "onnxruntime"}
PACKAGES = ("numpy", "ai-edge-litert", "tflite-runtime", "onnxruntime", "pip")
MIN_PYTHON = (3, 9)  # the device runner's floor


@dataclass(frozen=True)
class Wheel:
    """One published wheel family: ``runtime==version`` for these machines, Pythons and glibc floor."""

    runtime: str
    version: str
    machines: tuple[str, ...]
    glibc: tuple[int, int]
    pythons: tuple[str, ...]
    numpy: str = "numpy"  # the numpy requirement installed beside it

    @property
    def requirement(self) -> str:
        return f"{self.runtime}=={self.version}"

    def platform_tag(self, machine: str) -> str:
        if self.glibc == (2, 17):
            return f"manylinux2014_{machine}"
        return f"manylinux_{self.glibc[0]}_{self.glibc[1]}_{machine}"


# Linux ARM wheels on PyPI, newest first per runtime, as `pip index versions NAME --only-binary=:all:
# --python-version X.Y --platform ...` and `pip download --no-deps` listed them when this table was
# written (ai-edge-litert 2.3.0, tflite-runtime 2.14.0 and onnxruntime 1.32.0 the newest). Notable:
# ai-edge-litert and onnxruntime publish no 32-bit ARM wheels at all; tflite-runtime 2.14.0 does
# (armv7l, cp38-cp311, glibc >= 2.34) and 2.13.0 is the last for glibc < 2.34 (cp38-cp310);
# tflite-runtime is built against numpy 1.x (numpy 2 breaks it). x86_64 is not tabulated.
PUBLISHED_WHEELS = (
    Wheel("ai-edge-litert", "2.3.0", ("aarch64",), (2, 27), ("3.10", "3.11", "3.12", "3.13", "3.14")),
    Wheel("ai-edge-litert", "2.1.0", ("aarch64",), (2, 27), ("3.9",)),
    Wheel("ai-edge-litert", "1.4.0", ("aarch64",), (2, 17), ("3.9", "3.10", "3.11", "3.12")),
    Wheel("tflite-runtime", "2.14.0", ("aarch64", "armv7l"), (2, 34), ("3.8", "3.9", "3.10", "3.11"), "numpy<2"),
    Wheel("tflite-runtime", "2.13.0", ("aarch64", "armv7l"), (2, 17), ("3.8", "3.9", "3.10"), "numpy<2"),
    Wheel("onnxruntime", "1.32.0", ("aarch64",), (2, 28), ("3.11", "3.12", "3.13", "3.14")),
    Wheel("onnxruntime", "1.28.0", ("aarch64",), (2, 27), ("3.11", "3.12", "3.13", "3.14")),
    Wheel("onnxruntime", "1.23.2", ("aarch64",), (2, 27), ("3.10",)),
    Wheel("onnxruntime", "1.19.2", ("aarch64",), (2, 27), ("3.8", "3.9")),
    Wheel("onnxruntime", "1.16.3", ("aarch64",), (2, 17), ("3.8", "3.9", "3.10", "3.11")),
)

TABULATED_MACHINES = ("aarch64", "armv7l", "armv6l")

# ARM's MIDR part numbers (implementer 0x41), as in Linux arch/arm64/include/asm/cputype.h
CPU_PARTS = {"0xb76": "ARM1176", "0xc07": "Cortex-A7", "0xd03": "Cortex-A53", "0xd04": "Cortex-A35",
             "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd09": "Cortex-A73",
             "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78",
             "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
             "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720",
             "0xd82": "Cortex-X4"}
ANDROID_ABIS = {"aarch64": "arm64-v8a", "armv7l": "armeabi-v7a", "armv8l": "armeabi-v7a",
                "x86_64": "x86_64", "i686": "x86"}

# The shell half of the probe: POSIX sh (also Android's mksh); one "@@name" line before each answer.
SECTIONS = ("uname_s", "uname_r", "uname_m", "os_release", "android_release", "android_sdk", "android_abi",
            "android_model", "cpuinfo", "cores", "governors", "temperature", "throttled", "model", "glibc",
            "home", "cache_home", "user", "qemu", "pythons")
SYSTEM_PROBE = r"""
echo @@uname_s; uname -s; echo @@uname_r; uname -r; echo @@uname_m; uname -m
echo @@os_release; cat /etc/os-release 2>/dev/null
echo @@android_release; getprop ro.build.version.release 2>/dev/null
echo @@android_sdk; getprop ro.build.version.sdk 2>/dev/null
echo @@android_abi; getprop ro.product.cpu.abi 2>/dev/null
echo @@android_model; getprop ro.product.model 2>/dev/null
echo @@cpuinfo; cat /proc/cpuinfo 2>/dev/null
echo @@cores; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null
echo @@governors; cat /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor 2>/dev/null
echo @@temperature; cat /sys/class/thermal/thermal_zone0/temp 2>/dev/null
echo @@throttled; vcgencmd get_throttled 2>/dev/null
echo @@model; cat /proc/device-tree/model 2>/dev/null | tr -d '\000'; echo
echo @@glibc; getconf GNU_LIBC_VERSION 2>/dev/null || ldd --version 2>/dev/null | head -n 1
echo @@home; echo "$HOME"; echo @@cache_home; echo "${XDG_CACHE_HOME:-}"
echo @@user; id -un 2>/dev/null
echo @@qemu; env | grep '^QEMU_' | cut -d= -f1
echo @@pythons
C="${XDG_CACHE_HOME:-$HOME/.cache}"
for p in python3 /usr/bin/python3 /usr/local/bin/python3 /opt/*/bin/python3 "$HOME"/*/bin/python3 \
    "$HOME"/.venv*/bin/python3 "$HOME"/.virtualenvs/*/bin/python3 "$C"/edge-mobilenet/venvs/*/bin/python3 \
    /data/data/com.termux/files/usr/bin/python3; do command -v "$p" 2>/dev/null; done
true
"""

# The Python half: stdlib only, runs on any Python 3 (no f-strings), never imports a runtime.
PYTHON_PROBE = r"""
import json, platform, struct, sys
def version(name):
    try:
        from importlib import metadata
    except ImportError:
        return None
    for candidate in (name, name.replace("-", "_")):
        try:
            return metadata.version(candidate)
        except Exception:
            pass
    return None
def has(module):
    try:
        import importlib.util
        return importlib.util.find_spec(module) is not None
    except Exception:
        return False
print("EDGE_PY " + json.dumps({"requested": sys.argv[1], "executable": sys.executable, "prefix": sys.prefix,
    "base_prefix": getattr(sys, "base_prefix", sys.prefix), "version": platform.python_version(),
    "bits": struct.calcsize("P") * 8, "machine": platform.machine(), "libc": list(platform.libc_ver()),
    "packages": dict((n, version(n)) for n in sys.argv[2].split(",")),
    "venv": has("venv"), "ensurepip": has("ensurepip")}))
"""


@dataclass(frozen=True)
class SystemFacts:
    """What the shell half of the probe found (no Python needed)."""

    kernel: str | None
    machine: str | None
    os_name: str | None
    android: dict | None
    model: str | None
    cpus: tuple[str, ...]
    cpu_part: str | None
    features: tuple[str, ...]
    asimddp: bool
    cores: int | None
    governors: tuple[str, ...]
    temperature_c: float | None
    throttling: dict | None
    glibc: str | None
    home: str | None
    cache_home: str | None
    user: str | None
    emulation: tuple[str, ...]
    pythons: tuple[str, ...]


@dataclass(frozen=True)
class PythonEnv:
    """One Python interpreter on the device and what is installed in it."""

    requested: str
    executable: str
    prefix: str
    base_prefix: str
    version: str
    bits: int
    machine: str
    libc: tuple[str, str]
    packages: dict = field(default_factory=dict)
    venv: bool = True
    ensurepip: bool = True

    @property
    def xy(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def tag(self) -> str:
        return "cp" + self.xy.replace(".", "")

    @property
    def supported(self) -> bool:
        return tuple(int(p) for p in self.xy.split(".")) >= MIN_PYTHON

    @property
    def userland(self) -> str:
        """The machine wheels must be built for: a 32-bit Python on a 64-bit kernel is armv7l."""
        if self.bits == 32:
            return {"aarch64": "armv7l", "armv8l": "armv7l", "x86_64": "i686"}.get(self.machine, self.machine)
        return self.machine


def _sections(text: str) -> dict[str, str]:
    found, name = {}, None
    for line in text.splitlines():
        if line.startswith("@@") and line[2:].strip() in SECTIONS:
            name = line[2:].strip()
            found[name] = []
        elif name is not None:
            found[name].append(line)
    return {k: "\n".join(v).strip() for k, v in found.items()}


def _cpuinfo(text: str) -> tuple[dict, list[str]]:
    """The first value of each /proc/cpuinfo key, and the CPU part of every processor."""
    fields, parts = {}, []
    for line in text.splitlines():
        if ":" in line:
            key, value = (p.strip() for p in line.split(":", 1))
            fields.setdefault(key, value)
            if key == "CPU part":
                parts.append(value)
    return fields, parts


def _cpu_names(parts: list[str]) -> tuple[str, ...]:
    """``("Cortex-A55 x4", "Cortex-A76 x4")`` for a big.LITTLE phone; one entry for a Pi."""
    counts: dict[str, int] = {}
    for part in parts:
        name = CPU_PARTS.get(part.lower(), f"part {part}")
        counts[name] = counts.get(name, 0) + 1
    return tuple(f"{name} x{count}" for name, count in counts.items())


def _throttling(text: str) -> dict | None:
    from edge_mobilenet.runtimes.device_runner import THROTTLE_BITS

    match = re.search(r"throttled=(0x[0-9a-fA-F]+)", text or "")
    if not match:
        return None
    value = int(match.group(1), 16)
    return {"raw": hex(value), "now": [n for bit, n in THROTTLE_BITS.items() if value >> bit & 1],
            "since_boot": [n for bit, n in THROTTLE_BITS.items() if value >> (bit + 16) & 1]}


def _os_name(sections: dict) -> str | None:
    if sections.get("android_release"):
        return f"Android {sections['android_release']} (SDK {sections.get('android_sdk') or '?'})"
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', sections.get("os_release", ""), re.M)
    return match.group(1) if match else None


def parse_system(text: str) -> SystemFacts:
    """SystemFacts from the shell probe's output (``@@name`` sections)."""
    s = _sections(text)
    cpu, parts = _cpuinfo(s.get("cpuinfo", ""))
    features = tuple((cpu.get("Features") or cpu.get("flags") or "").split())
    glibc = re.search(r"(\d+\.\d+)\s*$", (s.get("glibc") or "").splitlines()[0] if s.get("glibc") else "")
    temp = s.get("temperature", "")
    cores = s.get("cores", "").split()
    android = ({"release": s.get("android_release"), "sdk": s.get("android_sdk"), "abi": s.get("android_abi"),
                "model": s.get("android_model")} if s.get("android_release") else None)
    return SystemFacts(
        kernel=" ".join(x for x in (s.get("uname_s"), s.get("uname_r")) if x) or None,
        machine=s.get("uname_m") or None, os_name=_os_name(s), android=android,
        model=s.get("model") or cpu.get("Model") or cpu.get("Hardware"),
        cpus=_cpu_names(parts) or tuple(x for x in [cpu.get("model name")] if x), cpu_part=cpu.get("CPU part"),
        features=features,
        asimddp="asimddp" in features, cores=int(cores[0]) if cores and cores[0].isdigit() else None,
        governors=tuple(sorted(set(s.get("governors", "").split()))),
        temperature_c=round(int(temp) / 1000, 1) if temp.lstrip("-").isdigit() else None,
        throttling=_throttling(s.get("throttled", "")), glibc=glibc.group(1) if glibc else None,
        home=s.get("home") or None, cache_home=s.get("cache_home") or None, user=s.get("user") or None,
        emulation=tuple(f"environment sets {v}" for v in s.get("qemu", "").split()),
        pythons=tuple(dict.fromkeys(p for p in s.get("pythons", "").splitlines() if p.startswith("/"))))


def probe_system(transport) -> SystemFacts:
    result = transport.shell(SYSTEM_PROBE, timeout=120)
    if "@@uname_m" not in result.stdout:
        raise EdgeError(f"{transport.describe()}: the device's shell did not answer the probe: "
                        f"{(result.stderr or 'no output').strip().splitlines()[-1][:200]}")
    return parse_system(result.stdout)


def parse_pythons(text: str) -> list[PythonEnv]:
    envs = []
    for line in text.splitlines():
        if line.startswith("EDGE_PY {"):
            try:
                data = json.loads(line[len("EDGE_PY "):])
                data["libc"] = tuple(data.get("libc") or ("", ""))
                envs.append(PythonEnv(**data))
            except (ValueError, TypeError):
                continue  # a garbled line (e.g. another program's output): that interpreter is skipped
    return envs


def probe_pythons(transport, candidates: list[str], limit: int = 12) -> list[PythonEnv]:
    """The interpreters among ``candidates`` that run, one per environment (sys.prefix), in order."""
    wanted = list(dict.fromkeys(c for c in candidates if c))[:limit]
    if not wanted:
        return []
    quoted = " ".join(shlex.quote(c) for c in wanted)
    command = (f"for p in {quoted}; do command -v \"$p\" >/dev/null 2>&1 && "
               f"\"$p\" -c {shlex.quote(PYTHON_PROBE)} \"$p\" {','.join(PACKAGES)} 2>/dev/null; done; true")
    envs, seen = [], set()
    for env in parse_pythons(transport.shell(command, timeout=60 + 30 * len(wanted)).stdout):
        if env.prefix not in seen:
            seen.add(env.prefix)
            envs.append(env)
    return envs


def find_wheel(runtime: str, machine: str | None, glibc: str | None, python: str | None) -> tuple[Wheel | None, str]:
    """The newest published wheel of ``runtime`` this device can install, or (None, why not)."""
    rows = [w for w in PUBLISHED_WHEELS if w.runtime == runtime]
    if machine not in TABULATED_MACHINES:
        return None, f"{machine or 'unknown architecture'} is not in the wheel table (it lists ARM Linux wheels)"
    if machine not in {m for w in rows for m in w.machines}:
        known = "/".join(sorted({m for w in rows for m in w.machines}))
        return None, f"no {machine or 'unknown-architecture'} wheels ({runtime} publishes {known} only)"
    if glibc is None:
        return None, "the device's C library is not glibc (no manylinux wheel applies)"
    if python is None:
        return None, "no Python on the device"
    libc = tuple(int(p) for p in glibc.split("."))
    for wheel in rows:
        if machine in wheel.machines and python in wheel.pythons and libc >= wheel.glibc:
            return wheel, f"{wheel.version} (cp{python.replace('.', '')}, {wheel.platform_tag(machine)})"
    pythons = sorted({p for w in rows if machine in w.machines for p in w.pythons}, key=lambda v: int(v.split(".")[1]))
    if python not in pythons:
        return None, f"no wheel for Python {python} ({runtime} publishes {pythons[0]}-{pythons[-1]})"
    floor = min(w.glibc for w in rows if machine in w.machines and python in w.pythons)
    return None, f"needs glibc >= {floor[0]}.{floor[1]} (the device has {glibc})"


def platform_tags(machine: str, glibc: str) -> list[str]:
    """pip ``--platform`` values for a glibc Linux device, newest first (pip does not expand them)."""
    major, minor = (int(p) for p in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 16, -1)]
    return tags + [f"manylinux2014_{machine}", f"linux_{machine}"]


# -- the host's record of what setup made ---------------------------------------------------------

def state_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-mobilenet" / "devices"


def state_path(device_name: str) -> Path:
    return state_dir() / f"{device_name}.json"


def read_state(device_name: str) -> dict | None:
    """The setup record for this device, or None (missing or unreadable: setup has not run)."""
    try:
        data = json.loads(state_path(device_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == STATE_SCHEMA else None


def target_of(profile) -> str:
    from edge_mobilenet.bench.devices import make_transport

    return make_transport(profile).describe()


def device_python(profile) -> str | None:
    """The Python that ``device setup`` made for this profile's device, or None.

    Only when the record is for the same target (ssh host/user/port or adb serial): a profile pointed
    at another board does not inherit it.
    """
    state = read_state(profile.name)
    if state is None or state.get("target") != target_of(profile):
        return None
    return state.get("python")


CONNECTION_FLAGS = ("host", "user", "port", "identity", "ssh_config", "serial", "adb")


def device_args(device: str, overrides: dict) -> str:
    """``--device pi --host pi-emu ...``: the flags that reach this device, for commands we print
    (``overrides`` may be bench's whole profile-override dict: only connection flags are kept)."""
    args = ["--device", device]
    for key in CONNECTION_FLAGS:
        if overrides.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(overrides[key])]
    return shlex.join(args)


# -- setup ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SetupRequest:
    runtime: str | None = None  # a --runtime name; None: the best this device has wheels for
    offline: bool = False
    wheels_dir: str | None = None  # wheels put there by hand (implies offline)
    root: str | None = None  # device folder holding the environments

    def __post_init__(self):
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise EdgeError(f"--runtime must be one of {', '.join(RUNTIMES)}; received {self.runtime!r}")
        if self.wheels_dir is not None and not Path(self.wheels_dir).is_dir():
            raise EdgeError(f"--wheels {self.wheels_dir}: no such folder")
        if self.root is not None and not self.root.startswith("/"):
            raise EdgeError(f"--root must be an absolute path on the device; received {self.root!r}")


@dataclass(frozen=True)
class SetupResult:
    device: str
    target: str
    python: str
    runtime: str
    runtime_version: str
    numpy: str | None
    action: str  # "created", "completed" (an interrupted environment finished) or "none"
    mode: str  # "online", "offline" or "checked"
    wheels: int = 0
    bytes_pushed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        what = (f"{self.runtime} {self.runtime_version}, numpy {self.numpy}")
        if self.action == "none":
            return f"already set up: {self.python} ({what}); nothing to do ({self.seconds:.1f} s)"
        pushed = f", {self.wheels} wheels / {self.bytes_pushed / 1e6:.1f} MB pushed" if self.mode == "offline" else ""
        return (f"ready: {self.python} ({what}), {self.mode}{pushed}, {self.seconds:.1f} s; "
                f"bench on {self.device} uses it")


def choose_wheel(runtime_flag: str | None, system: SystemFacts, base: PythonEnv) -> Wheel:
    machine, glibc = base.userland, system.glibc or (base.libc[1] if base.libc[0] == "glibc" else None)
    names = [RUNTIMES[runtime_flag]] if runtime_flag else ["ai-edge-litert", "tflite-runtime"]
    reasons = []
    for name in names:
        wheel, why = find_wheel(name, machine, glibc, base.xy)
        if wheel is not None:
            return wheel
        reasons.append(f"{name}: {why}")
    raise EdgeError(f"no runtime wheel for this device (Python {base.xy}, {machine}, glibc {glibc}): "
                    + "; ".join(reasons))


def venv_root(system: SystemFacts, transport, root: str | None) -> str:
    if root:
        return root.rstrip("/")
    home = system.home if system.home not in (None, "", "/") else None
    if home is None and transport.name == "adb":
        home = "/data/local/tmp"
    if home is None:
        raise EdgeError(f"{transport.describe()}: the device user has no home folder; give --root DIR")
    return f"{system.cache_home or home + '/.cache'}/edge-mobilenet/venvs"


def _last_line(text: str) -> str:
    lines = [l.strip() for l in (text or "").splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1][:300]


def _base_python(transport, python: str) -> PythonEnv:
    envs = probe_pythons(transport, [python])
    if not envs:
        raise EdgeError(f"{transport.describe()}: no {python} on the device: install Python 3.9+ with venv "
                        "(Debian / Raspberry Pi OS: `sudo apt install python3 python3-venv`)")
    base = envs[0]
    if not base.supported:
        raise EdgeError(f"{transport.describe()}: {base.executable} is Python {base.version}; the runner "
                        "needs 3.9 or newer")
    return base


def _installed(transport, python: str, wheel: Wheel) -> PythonEnv | None:
    """The environment at ``python`` when it already holds ``wheel`` and numpy, else None."""
    envs = probe_pythons(transport, [python])
    if envs and envs[0].packages.get(wheel.runtime) == wheel.version and envs[0].packages.get("numpy"):
        return envs[0]
    return None


def _create_venv(transport, base: PythonEnv, venv: str) -> None:
    if not (base.venv and base.ensurepip):
        raise EdgeError(f"{transport.describe()}: {base.executable} cannot create virtual environments (no "
                        "venv/ensurepip; Debian / Raspberry Pi OS: `sudo apt install python3-venv`)")
    result = transport.shell(f"mkdir -p {shlex.quote(os.path.dirname(venv))} && "
                             f"{shlex.quote(base.executable)} -m venv {shlex.quote(venv)}", timeout=900)
    if result.returncode != 0:
        raise EdgeError(f"{transport.describe()}: `python3 -m venv {venv}` failed: {_last_line(result.stderr)}")


NETWORK_HINTS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                 "Network is unreachable", "No matching distribution found", "Could not fetch URL",
                 "Name or service not known", "Connection refused", "timed out")


def _pip_install(transport, venv: str, wheel: Wheel, find_links: str | None) -> None:
    python = shlex.quote(f"{venv}/bin/python3")
    source = f"--no-index --find-links {shlex.quote(find_links)}" if find_links else ""
    result = transport.shell(f"{python} -m pip install --disable-pip-version-check --no-input --progress-bar off "
                             f"{source} {shlex.quote(wheel.requirement)} {shlex.quote(wheel.numpy)}", timeout=3600)
    if result.returncode == 0:
        return
    reason = _last_line(result.stderr or result.stdout)
    if find_links is None and any(h in (result.stderr + result.stdout) for h in NETWORK_HINTS):
        raise EdgeError(f"{transport.describe()}: the device's pip could not download {wheel.requirement} "
                        f"({reason}); run again with --offline: the host downloads the wheels and pushes them")
    raise EdgeError(f"{transport.describe()}: pip install {wheel.requirement} failed on the device: {reason}")


def download_wheels(wheel: Wheel, base: PythonEnv, glibc: str, dest: Path, wheels_dir: str | None) -> list[Path]:
    """The host's pip fetches ``wheel`` + numpy (and their dependencies) for the device's tags into
    ``dest``: from the package index, or only from ``wheels_dir`` when given (no network)."""
    machine = base.userland
    tags = platform_tags(machine, glibc)
    argv = [sys.executable, "-m", "pip", "download", "--dest", str(dest), "--only-binary=:all:",
            "--python-version", base.xy, "--implementation", "cp", "--disable-pip-version-check",
            "--no-input", "--progress-bar", "off", *[a for t in tags for a in ("--platform", t)],
            wheel.requirement, wheel.numpy]
    if wheels_dir:
        argv[4:4] = ["--no-index", "--find-links", str(Path(wheels_dir).resolve())]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        result = subprocess.CompletedProcess(argv, 1, "", "ERROR: pip download timed out after 1800 s")
    if result.returncode != 0:
        raise EdgeError(_download_problem(wheel, base, glibc, wheels_dir, _last_line(result.stderr)))
    return sorted(dest.glob("*.whl"))


def _download_problem(wheel: Wheel, base: PythonEnv, glibc: str, wheels_dir: str | None, reason: str) -> str:
    machine = base.userland
    wanted = f"{wheel.requirement} and {wheel.numpy} for Python {base.xy} on {machine} (glibc {glibc})"
    if wheels_dir:
        return f"--wheels {wheels_dir}: it lacks a wheel needed for {wanted}: {reason}; add it there"
    hint = [f"manylinux2014_{machine}", wheel.platform_tag(machine)]
    if tuple(int(p) for p in glibc.split(".")) >= (2, 28) and "manylinux_2_28" not in hint[1]:
        hint.append(f"manylinux_2_28_{machine}")
    command = shlex.join(["pip", "download", "--dest", "DIR", "--only-binary=:all:", "--python-version", base.xy,
                          *[a for t in hint for a in ("--platform", t)], wheel.requirement, wheel.numpy])
    return (f"could not download {wanted} from the package index on this host ({reason}); "
            f"fetch them where there is network (`{command}`), then give --wheels DIR")


def _push_wheels(transport, wheels: list[Path], log) -> tuple[str, int]:
    folder = transport.remote("wheels")
    transport.shell(f"mkdir -p {shlex.quote(folder)}", timeout=60)
    total = sum(w.stat().st_size for w in wheels)
    log(f"pushing {len(wheels)} wheels ({total / 1e6:.1f} MB) to {transport.describe()}")
    for path in wheels:
        transport.push(path, f"wheels/{path.name}")
    return folder, total


def _verify(transport, venv: str, wheel: Wheel) -> PythonEnv:
    python = f"{venv}/bin/python3"
    result = transport.shell(f"{shlex.quote(python)} -c {shlex.quote(f'import numpy, {IMPORTS[wheel.runtime]}')}",
                             timeout=600)
    if result.returncode != 0:
        raise EdgeError(f"{transport.describe()}: {wheel.requirement} is installed in {venv} but "
                        f"`import {IMPORTS[wheel.runtime]}` fails there: {_last_line(result.stderr)}")
    env = _installed(transport, python, wheel)
    if env is None:
        raise EdgeError(f"{transport.describe()}: {venv} does not list {wheel.requirement} after installing it")
    return env


def _make(transport, venv: str, wheel: Wheel, base: PythonEnv, system: SystemFacts, request: SetupRequest,
          log) -> tuple[str, str, int, int]:
    """Create (or finish) the environment: (action, mode, wheels pushed, bytes pushed). Offline, the
    host downloads first, so a failed download leaves the device as it was."""
    offline = request.offline or bool(request.wheels_dir)
    with tempfile.TemporaryDirectory(prefix="edge-wheels-") as stage:
        wheels = []
        if offline:
            log(f"downloading {wheel.requirement} and {wheel.numpy} for {base.tag} {base.userland} on the host"
                + (f" from {request.wheels_dir}" if request.wheels_dir else ""))
            wheels = download_wheels(wheel, base, system.glibc or base.libc[1], Path(stage), request.wheels_dir)
        exists = transport.shell(f"test -x {shlex.quote(venv + '/bin/python3')}", timeout=60).returncode == 0
        if not exists:
            log(f"creating {venv} with {base.executable} (Python {base.version})")
            _create_venv(transport, base, venv)
        total = 0
        if offline:
            folder, total = _push_wheels(transport, wheels, log)
            log(f"installing {len(wheels)} wheels on the device (pip --no-index)")
            _pip_install(transport, venv, wheel, folder)
        else:
            log(f"installing {wheel.requirement} and {wheel.numpy} with the device's pip")
            _pip_install(transport, venv, wheel, None)
    return ("completed" if exists else "created"), ("offline" if offline else "online"), len(wheels), total


def setup_device(profile, transport, request: SetupRequest, log=lambda message: None) -> SetupResult:
    """Make (or check) the environment; record it for bench. Idempotent: an environment that already
    holds the runtime and numpy is left as it is."""
    started = time.monotonic()
    transport.open()
    try:
        system = probe_system(transport)
        base = _base_python(transport, transport.python)
        wheel = choose_wheel(request.runtime, system, base)
        venv = f"{venv_root(system, transport, request.root)}/{wheel.runtime}-{wheel.version}-{base.tag}"
        env = _installed(transport, f"{venv}/bin/python3", wheel)
        outcome = ("none", "checked", 0, 0)
        if env is None:
            outcome = _make(transport, venv, wheel, base, system, request, log)
            env = _verify(transport, venv, wheel)
            _write_marker(transport, venv, env, wheel)
    finally:
        transport.close()
    result = SetupResult(profile.name, transport.describe(), f"{venv}/bin/python3", wheel.runtime, wheel.version,
                         env.packages.get("numpy"), *outcome, round(time.monotonic() - started, 1))
    write_state(result, env)
    return result


def _write_marker(transport, venv: str, env: PythonEnv, wheel: Wheel) -> None:
    """``VENV/edge-mobilenet.json`` on the device says what the environment holds and who made it."""
    marker = json.dumps({"made_by": "edge-bench device setup", "runtime": wheel.runtime,
                         "runtime_version": wheel.version, "numpy": env.packages.get("numpy"),
                         "python": env.version})
    transport.shell(f"printf '%s\\n' {shlex.quote(marker)} > {shlex.quote(venv + '/edge-mobilenet.json')}",
                    timeout=60)


STATE_KEYS = ("device", "target", "python", "runtime", "runtime_version", "numpy")


def write_state(result: SetupResult, env: PythonEnv) -> None:
    """Record the environment for bench (atomically); unchanged records are not rewritten."""
    state = {"schema": STATE_SCHEMA, **{k: getattr(result, k) for k in STATE_KEYS},
             "python_version": env.version, "machine": env.userland}
    previous = read_state(result.device) or {}
    if all(previous.get(k) == v for k, v in state.items()):
        return
    state["installed_with"] = result.mode if result.action != "none" else previous.get("installed_with", "unknown")
    state["recorded_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(state_path(result.device), state)


def run_setup_command(device: str, connection: dict, request: SetupRequest, log) -> SetupResult:
    """``edge-bench device setup``: the profile and flags as for bench; progress lines go to ``log``."""
    from edge_mobilenet.bench.devices import load_profile, make_transport, with_overrides

    profile = with_overrides(load_profile(device), **connection)
    if profile.transport == "local":
        raise EdgeError("device setup prepares a remote device (ssh or adb); for this machine use "
                        "`pip install -e .[device]`")
    return setup_device(profile, make_transport(profile), request, log)
