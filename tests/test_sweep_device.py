"""edge-bench sweep with the emulated ARM board as a second device: its SSH connection cut mid-run (the
cell is retried and the local cells are unaffected), and both devices benchmarking at once. The board's
latencies mean nothing (emulation); only what ran where, and when, is asserted."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import assert_int8_outputs_agree

from test_sweep import _kill_session, _runs, _start, _sweep_file, _titled, sweep_model  # noqa: F401

pytestmark = pytest.mark.device
pytest.importorskip("ray")


def _board_profile(tmp_path, pi) -> str:
    path = tmp_path / "board.toml"
    path.write_text(f'transport = "ssh"\nhost = "{pi["EDGE_EMU_SSH_HOST"]}"\n'
                    f'ssh_config = "{pi["EDGE_EMU_SSH_CONFIG"]}"\n')
    return str(path)


def _ssh_running(sid: int, needle: str = "--exit-on-stdin-eof") -> list[int]:
    """ssh clients of this test's sweep whose command line contains ``needle``: by default the runner's
    benchmark run (only it has --exit-on-stdin-eof; the ssh that copies device_runner.py there is brief)."""
    found = []
    for pid in _titled(sid, "ssh"):
        try:
            if needle.encode() in (open(f"/proc/{pid}/cmdline", "rb").read()):
                found.append(pid)
        except OSError:
            pass
    return found


def test_connection_cut_mid_run_is_retried_and_other_devices_go_on(tmp_path, pi, sweep_model):
    board = _board_profile(tmp_path, pi)
    sweep = _sweep_file(tmp_path, sweep_model, formats=("int8",), devices=("local", board), threads=(1,),
                        extra="")
    text = sweep.read_text().replace("min_seconds = 0\n", "min_seconds = 8\n").replace("max_seconds = 5", "max_seconds = 30")
    sweep.write_text(text)
    process = _start(sweep, "--workers", "2")
    try:
        deadline, cut = time.time() + 900, []
        while time.time() < deadline and not cut and process.poll() is None:
            cut = _ssh_running(process.pid)
            time.sleep(0.3)
        assert cut, "the board's runner was never seen running"
        time.sleep(2)
        for pid in cut:
            os.kill(pid, signal.SIGKILL)
        out, err = process.communicate(timeout=1200)
    finally:
        _kill_session(process.pid)
    assert process.returncode == 0, err[-3000:]
    runs = {r["device_name"]: r for r in _runs(tmp_path / "out")}
    assert runs["local"]["status"] == "ok" and runs["board"]["status"] == "ok"
    assert runs["board"]["sweep"]["attempts"] == 2 and runs["local"]["sweep"]["attempts"] == 1
    assert runs["board"]["device"]["machine"] == "aarch64"
    assert_int8_outputs_agree(runs["board"], runs["local"])
    assert "(attempt 2)" in err


def _local_runner(sid: int) -> list[int]:
    """Local device runners of this test's sweep (a python running device_runner.py, not over ssh)."""
    found = []
    for pid in _titled(sid, ""):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"python" in os.path.basename(argv[0]) and any(a.endswith(b"device_runner.py") for a in argv):
            found.append(pid)
    return found


def test_two_devices_benchmark_at_once(tmp_path, pi, sweep_model):
    board = _board_profile(tmp_path, pi)
    sweep = _sweep_file(tmp_path, sweep_model, formats=("fp32", "int8"), devices=("local", board), threads=(1,))
    sweep.write_text(sweep.read_text().replace("min_seconds = 0\n", "min_seconds = 4\n"))
    process = _start(sweep, "--workers", "2")
    together = False
    try:
        while process.poll() is None:
            together = together or bool(_local_runner(process.pid) and _ssh_running(process.pid))
            time.sleep(0.2)
        out, err = process.communicate(timeout=60)
    finally:
        _kill_session(process.pid)
    assert process.returncode == 0, err[-3000:]
    runs = _runs(tmp_path / "out")
    assert sorted((r["device_name"], r["format"]) for r in runs) == [("board", "fp32"), ("board", "int8"),
                                                                    ("local", "fp32"), ("local", "int8")]
    assert together, "the local and the board's runners never ran at the same time"
