"""edge-bench report and compare on hand-built results files (the schema edge-bench bench writes)."""

import json

import pytest

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.report.bench_report import compare, load_results, rows, write_report


def _run(fmt, runtime_kind, p50, top1=None, device="local", emulated=False, status="ok", split=False,
         valid=True, baseline="fp32"):
    run = {"status": status, "artifact": f"m.{fmt}.{'onnx' if runtime_kind == 'onnx' else 'tflite'}",
           "format": fmt, "runtime_kind": runtime_kind, "baseline_format": baseline, "source_sha256": "abc",
           "size_bytes": 2048, "macs": 300_000_000, "device_name": device, "transport": "local",
           "device": {"machine": "aarch64", "cpu_part": "0xd08", "cores": 4, "governors": ["ondemand"],
                      "emulated": emulated},
           "runtime": {"name": "litert", "version": "2.3.0", "xnnpack": True, "nodes_total": 30,
                       "nodes_delegated": 10 if split else 30, "partitions": 20 if split else 1,
                       "ops_outside": {"HARD_SWISH": 19} if split else {}, "split": split},
           "latency": {"p50_ms": p50, "p90_ms": p50 * 1.1},
           "accuracy": None if top1 is None else {"top1": top1, "delta_top1_vs_float": None,
                                                  "agreement_with_float": 1.0},
           "settings": {"threads": 1}, "emulated": emulated, "valid": valid,
           "warnings": ["CPU governor is ondemand, not performance: latency may vary"], "commit": {"sha": "f" * 40}}
    if status != "ok":
        run["error"] = "load_failed: boom"
    return run


@pytest.fixture
def results(tmp_path):
    runs = [_run("fp32", "tflite", 10.0, 0.90), _run("int8", "tflite", 4.0, 0.89),
            _run("onnx", "onnx", 12.0, 0.90, baseline="onnx"), _run("onnx-int8", "onnx", 6.0, None, baseline="onnx"),
            _run("fp32", "tflite", 900.0, 0.90, device="pi", emulated=True),
            _run("int8", "tflite", 500.0, 0.89, device="pi", emulated=True, split=True, valid=False),
            _run("dynamic", "tflite", 0, status="failed")]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": 1, "runs": runs}))
    return path


def test_speed_up_gmacs_and_flags(results):
    table = {(r["device"], r["format"]): r for r in rows(load_results(results))}
    assert table[("local", "int8")]["speed-up vs float"] == 2.5
    assert table[("local", "int8")]["GMAC/s"] == pytest.approx(75.0)
    assert table[("local", "onnx-int8")]["speed-up vs float"] == 2.0  # against the ONNX float run
    assert table[("local", "onnx-int8")]["top-1"] is None
    assert "split: HARD_SWISH×19" in table[("pi", "int8")]["notes"]
    assert "EMULATED" in table[("pi", "int8")]["notes"] and "INVALID" in table[("pi", "int8")]["notes"]
    assert table[("local", "dynamic")]["notes"].startswith("FAILED")


def test_report_files(results, tmp_path):
    text, files = write_report(results, tmp_path / "out" / "report")
    assert "**EMULATED device**" in text and "governor ondemand" in text and "n/a" in text
    csv_lines = (tmp_path / "out" / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 8 and csv_lines[0].startswith("device,artifact,format")
    pngs = [f for f in files if f.suffix == ".png"]
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_compare_flags_a_regression(results, tmp_path):
    data = json.loads(results.read_text())
    data["runs"][1]["latency"]["p50_ms"] = 4.8  # int8 20% slower
    newer = tmp_path / "new.json"
    newer.write_text(json.dumps(data))
    text, regressed = compare(results, newer, ["p50:10%"])
    assert regressed and "REGRESSION: p50 +20.0% > 10.0%" in text
    assert not compare(results, newer, ["p50:30%"])[1]


def test_compare_command_exit_status(results, tmp_path, cli):
    data = json.loads(results.read_text())
    data["runs"][0]["latency"]["p50_ms"] = 20.0
    newer = tmp_path / "new.json"
    newer.write_text(json.dumps(data))
    from click.testing import CliRunner

    from edge_mobilenet.cli import main

    outcome = CliRunner().invoke(main, ["compare", str(results), str(newer), "--fail-on", "p50:10%"])
    assert outcome.exit_code == 1 and "REGRESSION" in outcome.output
    outcome = CliRunner().invoke(main, ["compare", str(results), str(results), "--fail-on", "p50:10%"])
    assert outcome.exit_code == 0


@pytest.mark.parametrize("content,message", [(None, "does not exist"), ("{", "not valid JSON"),
                                             ("[]", "not an edge-bench results file")])
def test_bad_results_files(tmp_path, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(EdgeError, match=message):
        load_results(path)


def test_bad_fail_on_spec(results):
    with pytest.raises(EdgeError, match="must look like p50:10%"):
        compare(results, results, ["p50:ten"])
    with pytest.raises(EdgeError, match="top1 in points"):
        compare(results, results, ["top1:1%"])
