"""``edge-bench device doctor`` / ``device setup`` and bench's pre-flight load check (issue 14).

Device tests run against the emulated ARM board (../shared/tools/emulated-device.sh): a real aarch64
userland (Python 3.11, ai-edge-litert in /opt/edge, tflite-runtime 2.14 in /opt/tfl) reached over real
SSH and adb. It has no network, which makes it the real test of ``setup --offline``. Its latencies
mean nothing: none is asserted. If the board was already running when a test module started (another
run uses it), it is left running.

The 32-bit device is NOT a recording from hardware: tests/fixtures/device_32bit holds a hand-assembled
answer of a Raspberry Pi 4 on Raspberry Pi OS 32-bit (see its SOURCE.txt), replayed through a
transport that answers only the probe's two commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import board_scratch_dirs

from edge_mobilenet.bench import doctor, provision
from edge_mobilenet.bench.devices import load_profile, make_transport, with_overrides
from edge_mobilenet.bench.transports import CommandResult, Transport
from edge_mobilenet.errors import EdgeError

REPO = Path(__file__).resolve().parents[1]
FIXTURE_32 = Path(__file__).parent / "fixtures" / "device_32bit"
TINY = ["--quick", "--min-runs", "3", "--min-seconds", "0", "--warmup-seconds", "0", "--eval-count", "4",
        "--threads", "1"]
# The host "without network" for pip: no config files (no local find-links / extra indexes), an index
# on a closed loopback port, no retries, no cache.
NO_NETWORK = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple/", "PIP_RETRIES": "0",
              "PIP_TIMEOUT": "3", "PIP_NO_CACHE_DIR": "1"}


# -- helpers -------------------------------------------------------------------------------------------

def _cli(*args, cache: Path, no_network: bool = False, timeout: float = 1800) -> subprocess.CompletedProcess:
    """edge-bench in a subprocess, with the host's cache (device state files) under ``cache``."""
    environment = {k: v for k, v in os.environ.items()
                   if not (no_network and k in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"))}
    environment.update({"XDG_CACHE_HOME": str(cache), **(NO_NETWORK if no_network else {})})
    return subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=timeout, env=environment)


class Recorded(Transport):
    """A device answered from recorded text: the system probe and the Python probe; nothing else."""

    name = "ssh"

    def __init__(self, system: str, pythons: str):
        super().__init__("python3")
        self.system, self.pythons, self.commands = system, pythons, []

    def open(self) -> str:
        self.scratch = "/tmp/edge-bench.recorded"
        return self.scratch

    def shell(self, command: str, timeout: float, keep_stdin_open: bool = False) -> CommandResult:
        self.commands.append(command)
        if "@@uname_m" in command:
            return CommandResult(0, self.system, "")
        if "EDGE_PY" in command:
            return CommandResult(0, self.pythons, "")
        return CommandResult(0, "", "")

    def push(self, local: Path, name: str) -> str:
        self.commands.append(f"push {name}")
        return self.remote(name)

    def close(self) -> None:
        self.scratch = None

    def describe(self) -> str:
        return "ssh recorded-pi4-armhf"


def _recorded_32bit(**sections: str) -> Recorded:
    answers = {p.stem: p.read_text() for p in sorted(FIXTURE_32.glob("*.txt")) if p.stem in provision.SECTIONS}
    answers.update(sections)
    return Recorded("".join(f"@@{name}\n{text}" for name, text in answers.items()),
                    (FIXTURE_32 / "python.txt").read_text())


def _artifact(path: Path):
    """An artifact with the compatibility record quantize writes (convert.pipeline._compatibility)."""
    from edge_mobilenet.bench.artifacts import Artifact, infer_entry, preprocessing_from
    from edge_mobilenet.runtimes.compat import check_compat

    record = {}
    for spec in ("tflite-runtime==2.14", "ai-edge-litert==2.3"):
        result = check_compat(path, spec)
        record[spec] = {"loads": result.ok, "problems": result.problems}
    entry = infer_entry(path, preprocessing_from())
    return Artifact(path, replace(entry, facts={**entry.facts, "compatibility": record}))


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory):
    """A plain int8 CONV_2D model, and an fp32 one declaring CONV_2D v8 (LiteRT 2.3 loads it, 2.14 not)."""
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny_int8.tflite").write_bytes(doctor.tiny_conv_model(True))
    (folder / "conv_v8.tflite").write_bytes(doctor.tiny_conv_model(False, conv_version=8))
    return [_artifact(folder / "tiny_int8.tflite"), _artifact(folder / "conv_v8.tflite")]


# -- without a device ----------------------------------------------------------------------------------

def test_32bit_raspberry_pi_os_from_a_hand_assembled_answer(tmp_path, monkeypatch):
    """Not recorded from hardware (see fixtures/device_32bit/SOURCE.txt): armhf Pi 4, Python 3.11, no numpy."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    transport = _recorded_32bit()
    report = doctor.diagnose(load_profile("pi"), transport, None, "--device pi")
    system = report.system
    assert system.machine == "armv7l" and system.cpus == ("Cortex-A72 x4",) and system.cpu_part == "0xd08"
    assert system.asimddp is False and system.cores == 4 and system.glibc == "2.36"
    assert system.model == "Raspberry Pi 4 Model B Rev 1.4" and system.temperature_c == 48.7
    assert system.governors == ("ondemand",) and system.throttling["since_boot"] == ["under_voltage", "throttled"]
    assert [(e.executable, e.bits, e.userland) for e in report.pythons] == [("/usr/bin/python3", 32, "armv7l")]
    verdicts = {v.runtime: v for v in report.verdicts}
    litert = verdicts["ai-edge-litert"]
    assert litert.status == "unavailable" and "no armv7l wheels" in litert.detail
    assert verdicts["onnxruntime"].status == "unavailable"
    assert verdicts["tflite-runtime"].status == "installable"
    assert "2.14.0 (cp311, manylinux_2_34_armv7l)" in verdicts["tflite-runtime"].wheel
    setup = "edge-bench device setup --device pi --runtime tflite-runtime --offline"
    assert verdicts["tflite-runtime"].next_command == setup
    assert verdicts["ai-edge-litert"].next_command == setup  # the runtime that has 32-bit wheels
    assert not report.can_bench and not report.emulated
    assert not any(c.startswith("push") for c in transport.commands)  # no numpy: nothing to measure
    notes = " ".join(report.notes)
    assert "ondemand, not performance" in notes and "under_voltage" in notes
    assert "armv7l kernel, armv7l userland (32-bit Python)" in doctor.doctor_table(report)


def test_64bit_kernel_with_32bit_userland_needs_armv7l_wheels(tmp_path, monkeypatch):
    """The same hand-assembled answer with Raspberry Pi OS 32-bit's default 64-bit kernel."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    transport = _recorded_32bit(uname_m="aarch64\n")
    transport.pythons = transport.pythons.replace('"machine": "armv7l"', '"machine": "aarch64"')
    report = doctor.diagnose(load_profile("pi"), transport, None, "--device pi")
    assert report.system.machine == "aarch64" and report.pythons[0].userland == "armv7l"
    assert {v.runtime: v.status for v in report.verdicts}["ai-edge-litert"] == "unavailable"
    assert any("64-bit kernel with a 32-bit userland" in n for n in report.notes)


@pytest.mark.parametrize("runtime, machine, glibc, python, expected", [
    ("ai-edge-litert", "aarch64", "2.36", "3.11", "2.3.0"),
    ("ai-edge-litert", "aarch64", "2.31", "3.9", "2.1.0"),
    ("ai-edge-litert", "aarch64", "2.24", "3.11", "1.4.0"),
    ("tflite-runtime", "aarch64", "2.36", "3.11", "2.14.0"),
    ("tflite-runtime", "aarch64", "2.31", "3.9", "2.13.0"),  # Bullseye: glibc 2.31 < 2.34
    ("tflite-runtime", "aarch64", "2.31", "3.11", "needs glibc >= 2.34"),
    ("tflite-runtime", "aarch64", "2.36", "3.12", "no wheel for Python 3.12"),
    ("tflite-runtime", "armv7l", "2.36", "3.11", "2.14.0"),
    ("onnxruntime", "aarch64", "2.36", "3.11", "1.32.0"),
    ("onnxruntime", "aarch64", "2.27", "3.11", "1.28.0"),
    ("onnxruntime", "armv7l", "2.36", "3.11", "no armv7l wheels"),
    ("ai-edge-litert", "aarch64", None, "3.11", "not glibc"),
    ("ai-edge-litert", "x86_64", "2.36", "3.11", "not in the wheel table"),
    ("ai-edge-litert", "armv6l", "2.36", "3.11", "no armv6l wheels"),
])
def test_published_wheel_table(runtime, machine, glibc, python, expected):
    wheel, why = provision.find_wheel(runtime, machine, glibc, python)
    if expected[0].isdigit():
        assert wheel is not None and wheel.version == expected, why
    else:
        assert wheel is None and expected in why


def test_platform_tags_cover_every_glibc_down_to_manylinux2014():
    tags = provision.platform_tags("aarch64", "2.36")
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags
    assert tags[-2:] == ["manylinux2014_aarch64", "linux_aarch64"]


def test_tiny_models_load_on_the_host_and_declare_their_operator_versions(tiny_artifacts):
    from edge_mobilenet.runtimes.compat import required_ops
    from edge_mobilenet.runtimes.device_runner import TFLiteModel

    int8, conv_v8 = tiny_artifacts
    assert required_ops(int8.path) == [{"op": "CONV_2D", "version": 3}]
    assert required_ops(conv_v8.path) == [{"op": "CONV_2D", "version": 8}]
    model = TFLiteModel(str(int8.path), 1, "litert")
    assert model.input["dtype"].__name__ == "int8" and model.facts()["nodes_total"] == 1


def test_recorded_verdict_reasons_from_older_and_newer_releases():
    record = {"tflite-runtime==2.14": {"loads": False, "problems": ["CONV_2D v8 > 2.14's max v7"]},
              "ai-edge-litert==2.3": {"loads": True, "problems": []},
              "onnxruntime==1.16": {"loads": True, "problems": []}, "onnxruntime": {"loads": True}}
    assert doctor.recorded_verdict(record, "tflite-runtime", "2.14.0") == (
        False, "tflite-runtime==2.14", ["CONV_2D v8 > 2.14's max v7"])
    assert doctor.recorded_verdict(record, "tflite-runtime", "2.13.0")[0] is False  # older loads less
    assert doctor.recorded_verdict(record, "tflite-runtime", "2.15.0") is None  # not decided
    assert doctor.recorded_verdict(record, "ai-edge-litert", "2.4.1")[0] is True  # newer loads more
    assert doctor.recorded_verdict(record, "ai-edge-litert", "2.2.0") is None
    assert doctor.recorded_verdict(record, "onnxruntime", "1.31.1")[0] is True


def test_preflight_refuses_what_the_recorded_runtime_cannot_load(tiny_artifacts):
    tfl = Recorded("", 'EDGE_PY {"requested": "python3", "executable": "/opt/tfl/bin/python3", "prefix": "/opt/tfl", '
                   '"base_prefix": "/usr", "version": "3.11.2", "bits": 64, "machine": "aarch64", "libc": ["glibc", '
                   '"2.36"], "packages": {"numpy": "1.26.4", "tflite-runtime": "2.14.0"}}\n')
    with pytest.raises(EdgeError) as refused:
        doctor.refuse_unloadable(tiny_artifacts, tfl, "auto", "--device pi")
    message = str(refused.value)
    assert message.startswith("conv_v8.tflite: the device's tflite-runtime 2.14.0 (/opt/tfl/bin/python3) cannot load")
    assert "CONV_2D v8 > 2.14's max v7" in message and "\n" not in message
    assert "ai-edge-litert loads it: `edge-bench device setup --device pi --runtime litert --offline`" in message
    doctor.refuse_unloadable(tiny_artifacts[:1], tfl, "auto", "--device pi")  # the plain one passes
    litert = Recorded("", tfl.pythons.replace('"tflite-runtime": "2.14.0"', '"ai-edge-litert": "2.3.0"'))
    doctor.refuse_unloadable(tiny_artifacts, litert, "auto", "--device pi")


def test_preflight_checks_a_bare_file_without_a_manifest_too(tiny_artifacts):
    """A downloaded .tflite has no compatibility record: its operators are checked against the device's
    runtime release before anything runs."""
    from edge_mobilenet.bench.artifacts import Artifact, infer_entry, preprocessing_from

    bare = [Artifact(a.path, infer_entry(a.path, preprocessing_from())) for a in tiny_artifacts]
    assert "compatibility" not in bare[1].entry.facts
    tfl = Recorded("", 'EDGE_PY {"requested": "python3", "executable": "/opt/tfl/bin/python3", "prefix": "/opt/tfl", '
                   '"base_prefix": "/usr", "version": "3.11.2", "bits": 64, "machine": "aarch64", "libc": ["glibc", '
                   '"2.36"], "packages": {"numpy": "1.26.4", "tflite-runtime": "2.14.0"}}\n')
    with pytest.raises(EdgeError, match="conv_v8.tflite: the device's tflite-runtime 2.14.0 .* cannot load it"):
        doctor.refuse_unloadable(bare, tfl, "auto", "--device pi")
    doctor.refuse_unloadable(bare[:1], tfl, "auto", "--device pi")


def test_state_file_is_what_bench_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    profile = with_overrides(load_profile("pi"), host="board-a")
    env = provision.parse_pythons((FIXTURE_32 / "python.txt").read_text())[0]
    result = provision.SetupResult("pi", provision.target_of(profile), "/v/bin/python3", "ai-edge-litert", "2.3.0",
                                   "2.4.6", "created", "offline", 8, 31_000_000, 50.0)
    assert provision.device_python(profile) is None
    provision.write_state(result, env)
    path = provision.state_path("pi")
    assert json.loads(path.read_text())["python"] == "/v/bin/python3"
    assert provision.device_python(profile) == "/v/bin/python3"
    assert provision.device_python(replace(profile, host="board-b")) is None  # another board
    before = path.stat().st_mtime_ns
    provision.write_state(replace(result, action="none", mode="checked"), env)
    assert path.stat().st_mtime_ns == before and json.loads(path.read_text())["installed_with"] == "offline"


def test_setup_flags_are_checked_before_any_connection(cli, tmp_path):
    result = cli("device", "setup", "--device", "pi", "--root", "relative/venvs")
    assert result.exit_code == 2
    assert "--root must be an absolute path on the device; received 'relative/venvs'" in result.output
    result = cli("device", "setup", "--device", "pi", "--wheels", tmp_path / "absent")
    assert result.exit_code == 2 and f"--wheels {tmp_path / 'absent'}: no such folder" in result.output


# -- on the emulated board -----------------------------------------------------------------------------

def _ssh(env: dict) -> list[str]:
    return ["--device", "pi", "--host", env["EDGE_EMU_SSH_HOST"], "--ssh-config", env["EDGE_EMU_SSH_CONFIG"]]


def _remote(env: dict, command: str) -> str:
    return subprocess.run(["ssh", "-F", env["EDGE_EMU_SSH_CONFIG"], env["EDGE_EMU_SSH_HOST"], command],
                          capture_output=True, text=True, timeout=120).stdout


@pytest.fixture(scope="module")
def device_root(pi):
    """A folder of this module's own on the board, removed afterwards (the board is shared)."""
    root = f"/home/pi/.cache/edge-test-{uuid.uuid4().hex[:8]}"
    yield root
    _remote(pi, f"rm -rf {shlex.quote(root)}")


@pytest.mark.device
def test_doctor_on_the_emulated_pi(pi, tmp_path):
    scratch_before = board_scratch_dirs(pi)
    result = _cli("device", "doctor", *_ssh(pi), "--json", cache=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    system = report["system"]
    assert system["machine"] == "aarch64" and system["cpu_part"] == "0xd08" and system["cpus"] == ["Cortex-A72 x2"]
    assert system["asimddp"] is False and system["cores"] == 2 and system["glibc"] == "2.36"
    assert report["emulated"] is True and report["bench_python"] == "/opt/edge/bin/python3"
    pythons = {e["executable"]: e for e in report["pythons"]}
    assert {"/opt/edge/bin/python3", "/opt/tfl/bin/python3", "/usr/bin/python3"} <= set(pythons)
    assert all(e["version"].startswith("3.11.") and e["userland"] == "aarch64" for e in pythons.values())
    found = {(f["runtime"], f["python"]): f for f in report["runtimes"]}
    litert, tfl = found[("ai-edge-litert", "/opt/edge/bin/python3")], found[("tflite-runtime", "/opt/tfl/bin/python3")]
    assert (litert["version"], litert["fp32_xnnpack"], litert["int8_xnnpack"]) == ("2.3.0", True, True)
    # measured: tflite-runtime 2.14's wheel does not hand int8 to XNNPACK
    assert (tfl["version"], tfl["fp32_xnnpack"], tfl["int8_xnnpack"]) == ("2.14.0", True, False)
    assert tfl["int8_nodes"] == "0/1" and litert["int8_nodes"] == "1/1"
    verdicts = {v["runtime"]: v for v in report["verdicts"]}
    assert verdicts["ai-edge-litert"]["status"] == "ready"
    assert "manylinux_2_27_aarch64" in verdicts["ai-edge-litert"]["wheel"]
    assert verdicts["tflite-runtime"]["status"] == "installed"
    assert "int8 is NOT delegated" in verdicts["tflite-runtime"]["detail"]
    assert verdicts["tflite-runtime"]["next_command"].endswith("--python /opt/tfl/bin/python3")
    assert verdicts["onnxruntime"]["status"] == "ready"
    assert board_scratch_dirs(pi) <= scratch_before  # this run's scratch removed


@pytest.mark.device
def test_doctor_with_no_runtime_says_what_to_do(pi, tmp_path):
    result = _cli("device", "doctor", *_ssh(pi), "--python", "/usr/bin/python3", cache=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "* /usr/bin/python3" in result.stdout and "no runtime" in result.stdout
    assert f"next: edge-bench device setup {shlex.join(_ssh(pi))} --runtime litert --offline" in result.stdout


@pytest.mark.device
def test_doctor_over_adb_without_python_says_what_benchmark_binary_needs(android, tmp_path):
    result = _cli("device", "doctor", "--device", "android", "--adb", android["EDGE_EMU_ADB"], "--serial",
                  android["EDGE_EMU_ADB_SERIAL"], "--python", "/nonexistent/python3", cache=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    out = result.stdout
    assert "no Python on the device" in out and "benchmark_model built for arm64-v8a" in out
    assert "--benchmark-binary PATH/TO/benchmark_model" in out
    assert "Cortex-A76 x2" in out and "asimddp (int8 dot product): yes" in out


@pytest.mark.device
def test_setup_offline_from_bare_python_then_bench_then_noop(pi, device_root, tmp_path, monkeypatch,
                                                             tiny_artifacts):
    cache, root = tmp_path / "cache", f"{device_root}/litert"
    args = [*_ssh(pi), "--python", "/usr/bin/python3", "--root", root]
    first = _cli("device", "setup", *args, "--offline", "--json", cache=cache)
    assert first.returncode == 0, first.stderr[-2000:]
    made = json.loads(first.stdout)
    assert (made["action"], made["mode"], made["runtime"]) == ("created", "offline", "ai-edge-litert")
    assert made["python"] == f"{root}/ai-edge-litert-2.3.0-cp311/bin/python3"
    assert made["wheels"] >= 2 and made["bytes_pushed"] > 10_000_000
    print(f"\nsetup --offline: {made['seconds']} s, {made['wheels']} wheels, {made['bytes_pushed']} bytes pushed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    profile = with_overrides(load_profile("pi"), host=pi["EDGE_EMU_SSH_HOST"], ssh_config=pi["EDGE_EMU_SSH_CONFIG"])
    assert provision.device_python(profile) == made["python"]  # what bench reads
    results = tmp_path / "r.json"
    ran = _cli("bench", tiny_artifacts[0].path, *_ssh(pi), "--python", provision.device_python(profile), *TINY,
               "--output", results, cache=cache)
    assert ran.returncode == 0, ran.stderr[-2000:]
    run = json.loads(results.read_text())["runs"][0]
    assert (run["runtime"]["name"], run["runtime"]["version"], run["runtime"]["xnnpack"]) == ("litert", "2.3.0", True)
    state = provision.state_path("pi")
    before = state.stat().st_mtime_ns
    again = _cli("device", "setup", *args, "--offline", "--json", cache=cache)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["action"] == "none" and state.stat().st_mtime_ns == before
    doctor_report = json.loads(_cli("device", "doctor", *_ssh(pi), "--json", cache=cache).stdout)
    assert doctor_report["bench_python"] == made["python"]  # the doctor sees what bench will use


@pytest.mark.device
def test_setup_offline_without_network_on_the_host(pi, device_root, tmp_path):
    cache, root = tmp_path / "cache", f"{device_root}/nonet"
    args = [*_ssh(pi), "--python", "/usr/bin/python3", "--root", root, "--runtime", "tflite-runtime"]
    failed = _cli("device", "setup", *args, "--offline", cache=cache, no_network=True)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("edge-bench: error: could not download tflite-runtime==2.14.0 and numpy<2 for "
                            "Python 3.11 on aarch64 (glibc 2.36) from the package index on this host")
    assert error.endswith("then give --wheels DIR")
    assert not _remote(pi, f"ls -d {shlex.quote(root)} 2>/dev/null").strip()  # the device is untouched
    # the advice works: its pip command, run where there is network, fills DIR; --wheels installs offline
    command = shlex.split(re.search(r"`(pip download [^`]*)`", error).group(1))
    wheels = tmp_path / "wheels"
    command[command.index("DIR")] = str(wheels)
    fetched = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=1800)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    done = _cli("device", "setup", *args, "--wheels", wheels, "--json", cache=cache, no_network=True)
    assert done.returncode == 0, done.stderr[-2000:]
    made = json.loads(done.stdout)
    assert (made["runtime"], made["runtime_version"], made["mode"]) == ("tflite-runtime", "2.14.0", "offline")
    assert made["numpy"].startswith("1.")


@pytest.mark.device
def test_preflight_on_the_board_refuses_what_its_runtime_cannot_load(pi, tiny_artifacts):
    profile = with_overrides(load_profile("pi"), host=pi["EDGE_EMU_SSH_HOST"], ssh_config=pi["EDGE_EMU_SSH_CONFIG"])
    args = provision.device_args("pi", {"host": pi["EDGE_EMU_SSH_HOST"], "ssh_config": pi["EDGE_EMU_SSH_CONFIG"]})
    with pytest.raises(EdgeError, match=r"conv_v8.tflite: the device's tflite-runtime 2.14.0 .*CONV_2D v8 > "
                                        r"2.14's max v7.*--runtime litert"):
        doctor.refuse_unloadable(tiny_artifacts, make_transport(replace(profile, python="/opt/tfl/bin/python3")),
                                 "auto", args)
    doctor.refuse_unloadable(tiny_artifacts, make_transport(replace(profile, python="/opt/edge/bin/python3")),
                             "auto", args)
