"""edge-bench sweep against a real local Ray instance: cells keyed by content, resumed, retried, recorded.

Every sweep runs in a subprocess in its own session (Ray's processes are its descendants); whatever a
test leaves of that session is killed by PID at the end, nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("ray")

BENCH = """
[bench]
warmup_runs = 1
warmup_seconds = 0
min_runs = 5
min_seconds = 0
max_seconds = 5
eval_count = 40
"""


@pytest.fixture(scope="module")
def sweep_model(tmp_path_factory) -> Path:
    """mobilenet_v1 0.25/32 trained 2 epochs on the digits (a model file: the sweep trains nothing)."""
    from edge_mobilenet.train import TrainSettings, train_model

    folder = tmp_path_factory.mktemp("sweep-model")
    return Path(train_model(TrainSettings(epochs=2, output_dir=str(folder), progress=False))["model_path"])


def _sweep_file(tmp_path: Path, model: Path, *, formats=("fp32", "int8"), devices=("local",), threads=(1, 2),
                extra: str = "") -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(f"""
name = "t"
output = "{tmp_path / 'out'}"
formats = {json.dumps(list(formats))}
devices = {json.dumps(list(devices))}
threads = {json.dumps(list(threads))}
[calibration]
folder = "{REPO / 'calibration_data' / 'digits'}"
count = 20
[retry]
attempts = 2
backoff_seconds = 0.2
{BENCH}
{extra}
[[model]]
file = "{model}"
""")
    return path


def _start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge_mobilenet.cli", "sweep", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})


def _session_pids(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def _kill_session(sid: int) -> None:
    """Kill what is left of the session this test started (Ray agents outlive a killed driver)."""
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run(*args, timeout=900, env=None) -> subprocess.CompletedProcess:
    process = _start(*args, env=env)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        _kill_session(process.pid)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _runs(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["runs"]


def _titled(sid: int, prefix: str) -> list[int]:
    found = []
    for pid in _session_pids(sid):
        try:
            if (Path("/proc") / str(pid) / "cmdline").read_bytes().startswith(prefix.encode()):
                found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("text, message", [
    ("name = [", "sweep.toml: not valid TOML"),
    ("threads = [0]\n[[model]]\nname = 'mobilenet_v1'", "threads must be >= 1"),
    ("formatz = ['fp32']\n[[model]]\nname = 'mobilenet_v1'", "did you mean 'formats'?"),
    ("formats = ['fp64']\n[[model]]\nname = 'mobilenet_v1'", "unknown format 'fp64'"),
    ("devices = ['nosuchboard']\n[[model]]\nname = 'mobilenet_v1'", "no such device profile"),
    ("devices = ['local', 'local']\n[[model]]\nname = 'mobilenet_v1'", "lists a value twice"),
    ("[[model]]\nname = 'mobilenet_v9'", "'mobilenet_v9' is not a registered model"),
    ("[[model]]\nfile = 'missing.keras'", "model file does not exist"),
    ("[[model]]\nname = 'mobilenet_v1'\nalphas = []", "alphas is an empty list"),
    ("[[model]]\nname = 'mobilenet_v1'\nalpha = 'wide'", "alpha must be a number"),
    ("[[model]]\nname = 'mobilenet_v1'\ntrain = { epoch = 3 }", "did you mean 'epochs'?"),
    ("[bench]\nmin_seconds = -1\n[[model]]\nname = 'mobilenet_v1'", "--min-seconds must be a finite number >= 0"),
    ("[calibration]\nfolder = 'nowhere'\n[[model]]\nname = 'mobilenet_v1'", "nowhere"),
    ("name = 'x'", "has no [[model]] tables"),
    ("[bench.device.pi]\nmin_seconds = 1\n[[model]]\nname = 'mobilenet_v1'",
     "bench.device names 'pi', which is not one of the sweep's devices (local)"),
    ("[bench.device.local]\nmin_secs = 1\n[[model]]\nname = 'mobilenet_v1'", "did you mean 'min_seconds'?"),
    ("[bench.device.local]\nmin_seconds = -2\n[[model]]\nname = 'mobilenet_v1'",
     "bench.device.local: bench: --min-seconds must be a finite number >= 0"),
    ("[bench]\ndevice = 3\n[[model]]\nname = 'mobilenet_v1'", "bench.device must be an object"),
])
def test_bad_sweep_files_are_refused_before_anything_runs(tmp_path, run_cli, text, message):
    path = tmp_path / "sweep.toml"
    path.write_text(f"output = '{tmp_path / 'out'}'\n" + text if not text.startswith("name = [") else text)
    result = run_cli("sweep", path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_per_device_bench_settings_override_the_sweep_s_and_key_its_cells(tmp_path):
    from edge_mobilenet.pipeline_stages import STAGES
    from edge_mobilenet.sweep.spec import load_sweep

    path = tmp_path / "sweep.toml"
    path.write_text("devices = ['local', 'pi']\n[bench]\nmin_seconds = 2.0\nmin_runs = 10\n"
                    "[bench.device.pi]\nmin_seconds = 0.5\n[[model]]\nname = 'mobilenet_v1'\n")
    sweep = load_sweep(path, STAGES)
    local, pi = sweep.devices
    assert sweep.bench_for(local) == {"min_seconds": 2.0, "min_runs": 10}
    assert sweep.bench_for(pi) == {"min_seconds": 0.5, "min_runs": 10}


def test_sweep_runs_every_cell_then_resumes_without_work(tmp_path, sweep_model, run_cli):
    sweep = _sweep_file(tmp_path, sweep_model)
    dry = run_cli("sweep", sweep, "--dry-run")
    assert dry.returncode == 0 and "4 cells: 0 done, 4 to run" in dry.stdout, dry.stdout + dry.stderr
    result = _run(sweep, "--workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _runs(tmp_path / "out")
    assert sorted((r["format"], r["settings"]["threads"]) for r in runs) == [("fp32", 1), ("fp32", 2),
                                                                            ("int8", 1), ("int8", 2)]
    assert all(r["status"] == "ok" and r["accuracy"]["top1"] > 0 for r in runs)
    assert len({r["sweep"]["key"] for r in runs}) == 4
    assert "4/4" in result.stderr and "ok     " in result.stderr  # the bar and a line per cell
    manifest = json.loads((tmp_path / "out" / "artifacts" / "manifest.json").read_text())
    assert sorted(e["format"] for e in manifest["artifacts"]) == ["fp32", "int8"]
    again = run_cli("sweep", sweep)
    assert again.returncode == 0 and "4 were done already" not in again.stderr  # nothing to start
    assert "4 cells (4 done)" in again.stderr
    assert _runs(tmp_path / "out") == runs
    assert "4 cells: 4 done, 0 to run" in run_cli("sweep", sweep, "--dry-run").stdout
    report = run_cli("report", tmp_path / "out" / "results.json", "--output", tmp_path / "rep")
    assert report.returncode == 0 and (tmp_path / "rep.html").is_file(), report.stderr


def test_a_worker_killed_mid_conversion_is_retried(tmp_path, sweep_model):
    sweep = _sweep_file(tmp_path, sweep_model, formats=("fp32",), threads=(1,))
    process = _start(sweep, "--workers", "1")
    try:
        deadline, killed = time.time() + 600, []
        while time.time() < deadline and not killed and process.poll() is None:
            killed = _titled(process.pid, "ray::convert")
            time.sleep(0.2)
        assert killed, "no conversion task was seen running"
        time.sleep(1.0)  # well inside the conversion (TensorFlow's import alone takes seconds)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        out, err = process.communicate(timeout=900)
    finally:
        _kill_session(process.pid)
    assert process.returncode == 0, err[-3000:]
    runs = _runs(tmp_path / "out")
    assert [r["status"] for r in runs] == ["ok"]


def test_driver_killed_mid_sweep_reruns_only_unfinished_cells(tmp_path, sweep_model):
    sweep = _sweep_file(tmp_path, sweep_model, formats=("fp32", "int8"), threads=(1, 2))
    results = tmp_path / "out" / "results.json"
    process = _start(sweep, "--workers", "1")
    try:
        deadline = time.time() + 600
        while time.time() < deadline and process.poll() is None and not (results.exists() and _runs(tmp_path / "out")):
            time.sleep(0.2)
        assert results.exists(), process.communicate()[1][-3000:]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        _kill_session(process.pid)
    first = _runs(tmp_path / "out")
    assert 1 <= len(first) < 4 and all(r["status"] == "ok" for r in first)
    again = _run(sweep, "--workers", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"4 cells ({len(first)} done)" in again.stderr
    runs = _runs(tmp_path / "out")
    keys = [r["sweep"]["key"] for r in runs]
    assert len(runs) == 4 and len(set(keys)) == 4 and runs[:len(first)] == first
    assert not list((tmp_path / "out").rglob("*.partial*"))


def test_an_unreachable_device_is_retried_then_recorded_failed_and_the_sweep_goes_on(tmp_path, sweep_model):
    board = tmp_path / "closed.toml"
    board.write_text('transport = "ssh"\nhost = "127.0.0.1"\nport = 9\n'
                     'description = "nothing listens on port 9"\n')
    sweep = _sweep_file(tmp_path, sweep_model, formats=("int8",), devices=("local", str(board)), threads=(1,))
    result = _run(sweep, "--workers", "2")
    assert result.returncode == 1, result.stderr[-3000:]
    runs = {r["device_name"]: r for r in _runs(tmp_path / "out")}
    assert runs["local"]["status"] == "ok"
    failed = runs["closed"]
    assert failed["status"] == "failed" and "connection refused" in failed["error"]
    assert "after 2 attempts" in failed["error"] and failed["sweep"]["device"] == "closed"
    assert "1 failed" in result.stderr.splitlines()[-1]
    # a re-run tries the failed cell again (a failure is not an answer) and leaves the finished one
    dry = _run(sweep, "--dry-run")
    assert "to re-run (failed before: transport:" in dry.stdout and "1 done" in dry.stdout


def test_a_second_driver_on_the_same_folder_is_refused(tmp_path, sweep_model, run_cli):
    from edge_mobilenet.sweep.store import SweepStore

    sweep = _sweep_file(tmp_path, sweep_model, formats=("fp32",), threads=(1,))
    holder = SweepStore(tmp_path / "out")
    holder.acquire()
    try:
        result = run_cli("sweep", sweep)
    finally:
        holder.release()
    assert result.returncode == 2 and "another sweep is running on this folder" in result.stderr


def test_random_weight_cells_get_batch_norm_statistics_from_the_calibration_images(tmp_path, sweep_model):
    """A registry model without training: built in a worker with seeded weights and BatchNormalization
    statistics from the calibration images, so int8 V3 is one XNNPACK partition (not ~20)."""
    sweep = _sweep_file(tmp_path, sweep_model, formats=("int8",), threads=(1,))
    text = sweep.read_text().split("[[model]]")[0] + '[[model]]\nname = "mobilenet_v3_small"\nalpha = 0.5\nsize = 64\n'
    sweep.write_text(text)
    result = _run(sweep, "--workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = _runs(tmp_path / "out")
    assert run["status"] == "ok" and run["runtime"]["partitions"] == 1, run["runtime"]
    assert run["accuracy"] is None and run["sweep"]["trained"] is False
    [entry] = json.loads((tmp_path / "out" / "artifacts" / "manifest.json").read_text())["artifacts"]
    statistics = entry["batch_norm_statistics"]
    assert statistics["source"] == "calibration" and statistics["images"] >= 20 and statistics["sha256"]
