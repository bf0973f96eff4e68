"""Shared fixtures: the shared data folder and the CLI runner."""

from __future__ import annotations

import os
import json
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGE_SHARED_DATA", REPO.parent / "shared" / "data"))
EMULATED_DEVICE = Path(os.environ.get("EDGE_EMU_SCRIPT", REPO.parent / "shared" / "tools" / "emulated-device.sh"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $EDGE_SHARED_DATA): real ImageNet images and pretrained MobileNets."""
    if not (SHARED_DATA / "models").is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (set EDGE_SHARED_DATA to use it)")
    return SHARED_DATA


@pytest.fixture
def cli():
    """Invoke ``edge-bench`` in-process; returns click's Result (exit_code, output, stderr)."""
    from click.testing import CliRunner

    from edge_mobilenet.cli import main

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke



@pytest.fixture(scope="session")
def bench_artifacts(tmp_path_factory) -> Path:
    """A build/artifacts-like folder with a manifest: mobilenet_v1 0.25/32 trained 6 epochs on digits."""
    models = tmp_path_factory.mktemp("bench-models")
    from edge_mobilenet.train import TrainSettings, train_model

    model = train_model(TrainSettings(epochs=6, output_dir=str(models), progress=False))["model_path"]
    output = tmp_path_factory.mktemp("bench-artifacts")
    subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--quiet", "--model", model,
                    "--formats", "fp32,int8,onnx,onnx-int8", "--count", "50", "--output", str(output)],
                   check=True, capture_output=True)
    return output


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory) -> str:
    """A 1-epoch SSDLite V2 0.35 at 64 px on a 16-image synthetic set (13 train, 3 val), trained by the CLI."""
    folder = tmp_path_factory.mktemp("detector")
    result = _run_cli("train", "--model", "ssdlite_mobilenet_v2", "--alpha", "0.35", "--size", "64", "--images",
                      "16", "--epochs", "1", "--batch-size", "4", "--weights", "none", "--output", folder, "--quiet")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])["model_path"]


@pytest.fixture(scope="session")
def detector_artifacts(trained_detector, tmp_path_factory) -> Path:
    """``trained_detector`` quantized to fp32, int8 and ONNX int8 (with a manifest)."""
    output = tmp_path_factory.mktemp("detector-artifacts")
    result = _run_cli("quantize", "--quiet", "--model", trained_detector, "--formats", "fp32,int8,onnx-int8",
                      "--output", output)
    assert result.returncode == 0, result.stderr
    return output


def _run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_cli():
    """Run the installed CLI in a subprocess (exit status and stderr as a user sees them)."""
    return _run_cli


# -- the emulated ARM board (../shared/tools/emulated-device.sh) ------------------------------------------

def _board_script(action: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(EMULATED_DEVICE), action], capture_output=True, text=True, timeout=1200)


def _board_env() -> dict:
    return dict(line.split("=", 1) for line in _board_script("env").stdout.split() if "=" in line)


def _board_answers(kind: str, env: dict) -> bool:
    """Whether the board already runs (started by another test run): then it is not stopped here."""
    try:
        if kind == "ssh":
            return Path(env["EDGE_EMU_SSH_CONFIG"]).is_file() and subprocess.run(
                ["ssh", "-F", env["EDGE_EMU_SSH_CONFIG"], "-o", "ConnectTimeout=5", env["EDGE_EMU_SSH_HOST"], "true"],
                capture_output=True, timeout=30).returncode == 0
        adb = [env["EDGE_EMU_ADB"], "-s", env["EDGE_EMU_ADB_SERIAL"]]
        if not Path(adb[0]).is_file():
            return False
        subprocess.run([adb[0], "connect", env["EDGE_EMU_ADB_SERIAL"]], capture_output=True, timeout=30)
        return subprocess.run([*adb, "shell", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired, KeyError):
        return False


def emulated_board(kind: str):
    """Yield how to reach the board's ``ssh`` or ``adb`` side (its env lines as a dict); skip with the
    reason where this machine can't host it; stop it afterwards only if this started it."""
    if not EMULATED_DEVICE.is_file():
        pytest.skip(f"emulated device script {EMULATED_DEVICE} is absent")
    env = _board_env()
    if _board_answers(kind, env):
        yield env
        return
    ensure = _board_script("ensure")
    if ensure.returncode == 3:
        pytest.skip(f"this machine can't host the emulated device: {ensure.stderr.strip()[-200:]}")
    assert ensure.returncode == 0, ensure.stderr[-2000:]
    started = _board_script(f"start-{kind}")
    if started.returncode == 3:
        pytest.skip(f"this machine can't host the emulated {kind} fixture")
    assert started.returncode == 0, started.stderr[-2000:]
    yield _board_env()
    _board_script(f"stop-{kind}")


@pytest.fixture(scope="module")
def pi():
    """The emulated board over real SSH."""
    yield from emulated_board("ssh")


@pytest.fixture(scope="module")
def android():
    """The emulated board over real adb."""
    yield from emulated_board("adb")


def board_scratch_dirs(env: dict) -> set[str]:
    """The benchmark scratch folders now on the board. The board outlives a test session (and is shared
    with whatever else used it), so a test compares this set before and after its own run."""
    listing = subprocess.run(["ssh", "-F", env["EDGE_EMU_SSH_CONFIG"], env["EDGE_EMU_SSH_HOST"],
                              "ls -d /tmp/edge-bench.* 2>/dev/null; true"],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr[-500:]
    return set(listing.stdout.split())


def assert_int8_outputs_agree(on_board: dict, on_host: dict) -> None:
    """The same int8 artifact on the (emulated) ARM board and on this x86 host: XNNPACK's int8 kernels of
    the two architectures round differently in rare cases (measured on V1 0.25/32: 4 of 3000 outputs one
    quantization step apart, no top-1 changed), so the runs agree to one image, not bit for bit."""
    board, host = on_board["accuracy"], on_host["accuracy"]
    assert board["images"] == host["images"]
    step = 1 / board["images"] + 1e-9
    assert abs(board["top1"] - host["top1"]) <= step, (board, host)
    if host.get("agreement_with_float") is not None:
        assert abs(board["agreement_with_float"] - host["agreement_with_float"]) <= step, (board, host)
        assert abs(board["output_snr_db"] - host["output_snr_db"]) < 1.0, (board, host)
