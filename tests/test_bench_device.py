"""edge-bench against the emulated ARM board (../shared/tools/emulated-device.sh): a real aarch64
userland (Debian arm64 under qemu-user, Cortex-A72) reached over a real SSH server and a real adbd on
loopback. Its results are real ARM results; its latencies are not (emulation): none is asserted.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import assert_int8_outputs_agree, board_scratch_dirs

TINY = ["--quick", "--min-runs", "3", "--min-seconds", "0", "--warmup-seconds", "0", "--eval-count", "12",
        "--threads", "1"]
pytestmark = pytest.mark.device


def _ssh_args(env):
    return ["--device", "pi", "--host", env["EDGE_EMU_SSH_HOST"], "--ssh-config", env["EDGE_EMU_SSH_CONFIG"]]


def _remote(env, command: str) -> str:
    return subprocess.run(["ssh", "-F", env["EDGE_EMU_SSH_CONFIG"], env["EDGE_EMU_SSH_HOST"], command],
                          capture_output=True, text=True, timeout=60).stdout


def _bench(run_cli, artifacts, extra, results):
    return run_cli("bench", *artifacts, *TINY, *extra, "--output", results)


def _descendants_running(root: int, program: str, *needles: str) -> list[int]:
    """PIDs of the processes below ``root`` (which this test started) whose argv[0] is ``program``
    and whose command line contains every one of ``needles``: read from /proc, so nothing else is touched."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(argv)
        if Path(argv[0].decode()).name == program and all(n.encode() in line for n in needles):
            found.append(pid)
    return found


def test_pi_over_ssh_matches_local(bench_artifacts, pi, run_cli, tmp_path):
    files = [bench_artifacts / f"mobilenet_v1_0.25_32.{s}" for s in ("fp32.tflite", "int8.tflite")]
    local, board = tmp_path / "local.json", tmp_path / "pi.json"
    scratch_before = board_scratch_dirs(pi)
    assert _bench(run_cli, files, ["--device", "local"], local).returncode == 0
    result = _bench(run_cli, files, _ssh_args(pi), board)
    assert result.returncode == 0, result.stderr
    assert "EMULATED" in result.stderr
    on_pi = {r["format"]: r for r in json.loads(board.read_text())["runs"]}
    on_host = {r["format"]: r for r in json.loads(local.read_text())["runs"]}
    for run in on_pi.values():
        assert run["device"]["machine"] == "aarch64" and run["device"]["cpu_part"] == "0xd08"
        assert run["runtime"]["xnnpack"] is True and run["emulated"] is True
        assert run["transport"] == "ssh"
    assert_int8_outputs_agree(on_pi["int8"], on_host["int8"])
    assert on_pi["fp32"]["accuracy"]["top1"] == on_host["fp32"]["accuracy"]["top1"]
    assert on_pi["int8"]["accuracy"]["agreement_with_float"] is not None
    assert on_pi["int8"]["accuracy"]["delta_top1_vs_float"] is not None
    assert board_scratch_dirs(pi) <= scratch_before  # this run's scratch removed


def test_detector_on_the_pi_gives_the_local_map(detector_artifacts, pi, run_cli, tmp_path):
    """The four outputs of the post-processing op come back from the ARM board and score as on this host."""
    files = [detector_artifacts / f"ssdlite_mobilenet_v2_0.35_64.{s}" for s in ("fp32.tflite", "int8.tflite")]
    local, board = tmp_path / "local.json", tmp_path / "pi.json"
    assert _bench(run_cli, files, ["--device", "local"], local).returncode == 0
    result = _bench(run_cli, files, _ssh_args(pi), board)
    assert result.returncode == 0, result.stderr
    on_pi = {r["format"]: r for r in json.loads(board.read_text())["runs"]}
    on_host = {r["format"]: r for r in json.loads(local.read_text())["runs"]}
    for fmt, run in on_pi.items():
        assert run["device"]["machine"] == "aarch64" and run["task"] == "detection"
        assert run["runtime"]["partitions"] == 1 and run["runtime"]["ops_outside"] == {"TFLite_Detection_PostProcess": 1}
        assert run["accuracy"]["images"] == on_host[fmt]["accuracy"]["images"] == 3
        for metric in ("map", "map50"):
            assert abs(run["accuracy"][metric] - on_host[fmt]["accuracy"][metric]) <= 0.01, (run, on_host[fmt])


def test_tflite_runtime_214_fallback(bench_artifacts, pi, run_cli, tmp_path):
    """The board's /opt/tfl has tflite-runtime 2.14 (numpy < 2), as many Pis do."""
    results = tmp_path / "r.json"
    files = [bench_artifacts / f"mobilenet_v1_0.25_32.{s}" for s in ("fp32.tflite", "int8.tflite")]
    result = _bench(run_cli, files, _ssh_args(pi) + ["--python", "/opt/tfl/bin/python3"], results)
    assert result.returncode == 0, result.stderr
    runs = {r["format"]: r for r in json.loads(results.read_text())["runs"]}
    assert {r["runtime"]["name"] for r in runs.values()} == {"tflite-runtime"}
    assert runs["fp32"]["runtime"]["version"] == "2.14.0" and runs["fp32"]["device"]["numpy"].startswith("1.")
    assert runs["fp32"]["runtime"]["xnnpack"] is True
    # 2.14 does not hand int8 graphs to XNNPACK by default: the report must say so, not assume it
    assert runs["int8"]["runtime"]["xnnpack"] is False and runs["int8"]["runtime"]["nodes_delegated"] == 0
    assert runs["int8"]["accuracy"]["agreement_with_float"] >= 0.75


def test_device_without_the_runtime_says_what_to_install(bench_artifacts, pi, run_cli, tmp_path):
    results = tmp_path / "r.json"
    result = _bench(run_cli, [bench_artifacts / "mobilenet_v1_0.25_32.int8.tflite"],
                    _ssh_args(pi) + ["--runtime", "tflite-runtime"], results)
    assert result.returncode == 1
    run = json.loads(results.read_text())["runs"][0]
    assert run["status"] == "failed" and "no_runtime" in run["error"] and "pip install" in run["error"]


def test_device_without_python_says_what_to_install(bench_artifacts, pi, run_cli, tmp_path):
    result = _bench(run_cli, [bench_artifacts / "mobilenet_v1_0.25_32.int8.tflite"],
                    _ssh_args(pi) + ["--python", "/usr/bin/python-nonexistent"], tmp_path / "r.json")
    assert result.returncode != 0
    assert "edge-bench: error:" in result.stderr and "install Python" in result.stderr


def test_timeout_kills_the_remote_run(bench_artifacts, pi, run_cli, tmp_path):
    results = tmp_path / "r.json"
    result = run_cli("bench", bench_artifacts / "mobilenet_v1_0.25_32.fp32.tflite", *_ssh_args(pi),
                     "--min-seconds", "120", "--max-seconds", "120", "--timeout", "8", "--eval-count", "2",
                     "--output", results)
    assert result.returncode == 1
    run = json.loads(results.read_text())["runs"][0]
    assert run["status"] == "failed" and "timeout" in run["error"]
    assert "device_runner" not in _remote(pi, "ps -eo args")


def test_unknown_host_key_is_refused(bench_artifacts, pi, run_cli, tmp_path):
    config = tmp_path / "ssh_config"
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    text = Path(pi["EDGE_EMU_SSH_CONFIG"]).read_text()
    lines = [l for l in text.splitlines() if "UserKnownHostsFile" not in l and "StrictHostKeyChecking" not in l]
    config.write_text("\n".join(lines + [f"  UserKnownHostsFile {empty_known_hosts}",
                                         "  StrictHostKeyChecking accept-new"]) + "\n")
    result = run_cli("bench", bench_artifacts / "mobilenet_v1_0.25_32.int8.tflite", "--device", "pi",
                     "--host", pi["EDGE_EMU_SSH_HOST"], "--ssh-config", config, *TINY,
                     "--output", tmp_path / "r.json")
    assert result.returncode != 0 and "host key" in result.stderr
    assert empty_known_hosts.read_text() == ""  # nothing was accepted, even with accept-new in the config


def test_connection_cut_mid_run_keeps_results_and_leaves_nothing_running(bench_artifacts, pi, tmp_path):
    results = tmp_path / "r.json"
    args = ["bench", str(bench_artifacts / "mobilenet_v1_0.25_32.int8.tflite"),
            str(bench_artifacts / "mobilenet_v1_0.25_32.fp32.tflite"), *_ssh_args(pi), "--min-runs", "3",
            "--min-seconds", "10", "--max-seconds", "60", "--warmup-seconds", "0", "--eval-count", "4",
            "--output", str(results)]
    process = subprocess.Popen([os.sys.executable, "-m", "edge_mobilenet.cli", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait for the first artifact (the fp32 baseline runs first) to be stored
    deadline = time.time() + 240
    while time.time() < deadline and not (results.exists() and json.loads(results.read_text())["runs"]):
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.5)
    assert results.exists(), "the first artifact never finished"
    # wait until the runner for the second artifact is running on the device (its --min-seconds 10
    # keeps it there), then cut that session by killing our own ssh client by PID
    # (the brief `cat > model_1.tflite` that copies it there is not the runner)
    def runner_on_board() -> bool:
        return any("device_runner" in line and "model_1." in line for line in _remote(pi, "ps -eo args").splitlines())

    deadline = time.time() + 120
    while time.time() < deadline and not runner_on_board():
        time.sleep(0.5)
    assert runner_on_board(), "the second artifact's runner never started"
    clients = _descendants_running(process.pid, "ssh", "model_1.", "--exit-on-stdin-eof")
    assert clients, "no ssh client of this bench runs the second artifact"
    for pid in clients:
        os.kill(pid, signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "connection lost during the run: ssh client killed" in err, err[-2000:]
    runs = json.loads(results.read_text())["runs"]
    assert len(runs) >= 1 and runs[0]["status"] == "ok"
    time.sleep(2)
    assert "device_runner" not in _remote(pi, "ps -eo args")


def test_android_over_adb(bench_artifacts, android, run_cli, tmp_path):
    results = tmp_path / "r.json"
    files = [bench_artifacts / f"mobilenet_v1_0.25_32.{s}" for s in ("fp32.tflite", "int8.onnx")]
    result = _bench(run_cli, files, ["--device", "android", "--adb", android["EDGE_EMU_ADB"],
                                     "--serial", android["EDGE_EMU_ADB_SERIAL"], "--cpus", "0-1"], results)
    assert result.returncode == 0, result.stderr
    runs = {r["format"]: r for r in json.loads(results.read_text())["runs"]}
    assert runs["fp32"]["device"]["machine"] == "aarch64" and runs["fp32"]["transport"] == "adb"
    assert runs["fp32"]["runtime"]["xnnpack"] and runs["onnx-int8"]["runtime"]["name"] == "onnxruntime"
    assert runs["onnx-int8"]["accuracy"]["top1"] is not None


def test_profile_on_the_emulated_pi_lists_real_arm_ops_and_says_times_are_meaningless(bench_artifacts, pi,
                                                                                      run_cli, tmp_path):
    scratch_before = board_scratch_dirs(pi)
    result = run_cli("profile", bench_artifacts / "mobilenet_v1_0.25_32.int8.onnx", *_ssh_args(pi),
                     "--runs", "3", "--quick", "--eval-count", "12", "--by", "block", "--output", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "EMULATED device: the op list is real, the times are meaningless" in result.stdout
    found = json.loads((tmp_path / "profile.json").read_text())["profiles"][0]
    assert found["emulated"] and found["profile"]["runs"] == 3
    assert {"QLinearConv"} <= {n["op"] for n in found["profile"]["nodes"]}
    assert any(row["layer"] == "conv_dw_pw_13" for row in found["profile"]["blocks"])
    assert board_scratch_dirs(pi) <= scratch_before
