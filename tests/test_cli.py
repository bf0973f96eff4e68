"""The edge-bench command line: describe, train, and one-line errors with a non-zero exit."""

import json
import subprocess
import sys

import pytest


def test_describe_json(cli):
    result = cli("describe", "mobilenet_v2", "--alpha", "0.35", "--size", "96", "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["model"] == "mobilenet_v2" and report["alpha"] == 0.35 and report["size"] == 96
    assert 11e6 <= report["macs"] <= 12e6
    assert report["layers"][0]["name"] == "Conv1"


def test_describe_table_shows_totals_and_separable_ratio(cli):
    result = cli("describe", "mobilenet_v1", "--alpha", "1.0", "--size", "224")
    assert result.exit_code == 0
    assert "568,740,352 MACs" in result.output or "568.7 M" in result.output
    assert "standard conv MACs" in result.output and "conv_dw_13" in result.output


@pytest.mark.parametrize("args,message", [
    (["describe", "mobilenet_v9"], "unknown model 'mobilenet_v9'"),
    (["describe", "mobilenet_v1", "--alpha", "-0.5"], "alpha=-0.5"),
    (["describe", "mobilenet_v3_small", "--size", "20"], "size=20"),
    (["describe", "mobilenet_v2", "--classes", "0"], "classes=0"),
    (["train", "--data", "/nonexistent/folder", "--epochs", "1"], "/nonexistent/folder: folder does not exist"),
    (["train", "--model", "ssdlite_mobilenet_v2", "--freeze-base"], "--freeze-base applies to classifiers only"),
    (["train", "--model", "ssdlite_mobilenet_v2", "--images", "1"], "--images"),
    (["train", "--model", "ssdlite_mobilenet_v2", "--data", "/nonexistent"], "/nonexistent: expected a COCO folder"),
    (["train", "--images", "50"], "--images applies to detectors only"),
])
def test_bad_input_is_one_line_and_nonzero(args, message):
    """Run the installed console script: exit status, stderr and no traceback as a user sees them."""
    result = subprocess.run([sys.executable, "-m", "edge_mobilenet.cli", *args], capture_output=True, text=True)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("edge-bench: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr


def test_help_does_not_import_tensorflow():
    code = ("import sys; from edge_mobilenet.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
