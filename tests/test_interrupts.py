"""Nothing half-recorded: real `quantize` processes interrupted by real signals at chosen moments, and two
real runs writing one folder at once. After any of it, every artifact file in the folder is listed in
the manifest with its sha256, no staging file or temporary folder is left, and no entry is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_mobilenet.fileio import sha256_file

REPO = Path(__file__).resolve().parents[1]
TINY = ["--alpha", "0.25", "--size", "32", "--classes", "10", "--count", "10", "--quiet",
        "--calibration", str(REPO / "calibration_data" / "digits")]


def _quantize(output: Path, tmp: Path, model: str = "mobilenet_v1", formats: str = "fp32,int8,onnx"):
    tmp.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "edge_mobilenet.cli", "quantize", "--model", model, *TINY,
                             "--formats", formats, "--output", str(output)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp)})


def _consistent(folder: Path) -> list[str]:
    """Artifact files on disk == manifest entries, bytes matching; no staging files."""
    entries = {}
    if (folder / "manifest.json").is_file():
        entries = {e["file"]: e for e in json.loads((folder / "manifest.json").read_text())["artifacts"]}
    files = {p.name for p in folder.iterdir() if p.suffix in (".tflite", ".onnx")}
    assert not [p.name for p in folder.iterdir() if ".partial" in p.name], "a staging file was left"
    assert set(entries) == files, (sorted(entries), sorted(files))
    for name, entry in entries.items():
        assert sha256_file(folder / name) == entry["sha256"], name
    return sorted(files)


def _wait_for(predicate, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_between_writing_and_recording_leaves_the_folder_consistent(tmp_path, signum):
    output, scratch = tmp_path / "out", tmp_path / "tmp"
    process = _quantize(output, scratch)
    # the moment a converted file is staged but not yet recorded
    staged = _wait_for(lambda: output.is_dir() and any(".partial" in p.name for p in output.iterdir()), process)
    assert staged, process.communicate()[1][-2000:]
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == (130 if signum == signal.SIGINT else 143), stderr[-2000:]
    assert "Traceback" not in stderr
    _consistent(output)
    assert not list(scratch.iterdir()), f"temporary files left: {list(scratch.iterdir())}"


def test_sigterm_after_the_first_artifact_keeps_it(tmp_path):
    output, scratch = tmp_path / "out", tmp_path / "tmp"
    process = _quantize(output, scratch)
    assert _wait_for(lambda: (output / "manifest.json").is_file(), process), process.communicate()[1][-2000:]
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode in (143, 0)  # 0: it finished before the signal landed
    assert _consistent(output)
    assert not list(scratch.iterdir())


def test_two_runs_into_one_folder_both_recorded(tmp_path):
    output = tmp_path / "out"
    first = _quantize(output, tmp_path / "t1", "mobilenet_v1", "fp32,onnx")
    second = _quantize(output, tmp_path / "t2", "mobilenet_v2", "fp32,onnx")
    for process in (first, second):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
    files = _consistent(output)
    assert files == sorted(f"{m}_10classes_random.{s}" for m in ("mobilenet_v1_0.25_32", "mobilenet_v2_0.25_32")
                           for s in ("fp32.tflite", "onnx"))
