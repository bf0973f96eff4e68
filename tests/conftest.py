"""Shared fixtures: the shared data folder and the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGE_SHARED_DATA", REPO.parent / "shared" / "data"))


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


def _run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_cli():
    """Run the installed CLI in a subprocess (exit status and stderr as a user sees them)."""
    return _run_cli
