"""Shared fixtures: the shared data folder and the CLI runner."""

from __future__ import annotations

import os
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
