"""edge-bench report and compare on results files built by hand after the schema `edge-bench bench` writes."""

from __future__ import annotations

import csv
from dataclasses import replace
import json
import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from edge_mobilenet.cli import _Group
from edge_mobilenet.contracts.records import RunRecord
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.report import results as res
from edge_mobilenet.report.commands import compare as compare_command
from edge_mobilenet.report.commands import report as report_command
from edge_mobilenet.report.compare import compare, parse_fail_on
from edge_mobilenet.report.markdown import write_report

MACS = 300_000_000
SUFFIXES = {"fp32": ".fp32.tflite", "fp16": ".fp16.tflite", "int8": ".int8.tflite", "dynamic": ".dynamic.tflite", "onnx": ".onnx",
            "onnx-int8": ".int8.onnx"}


def _run(fmt, p50_ms, top1=None, delta=None, device="board", emulated=False, status="ok", split=False,
         valid=True, size_bytes=2048, images=200):
    runtime_kind = "onnx" if fmt.startswith("onnx") else "tflite"
    run = {"timestamp_utc": "2026-11-22T10:00:00+00:00", "status": status,
           "artifact": "mobilenet_v1_0.25_32" + SUFFIXES[fmt], "format": fmt, "runtime_kind": runtime_kind,
           "baseline_format": "onnx" if runtime_kind == "onnx" else "fp32", "source_sha256": "abc" * 21 + "a",
           "sha256": fmt, "size_bytes": size_bytes, "params": 200_000, "macs": MACS, "device_name": device,
           "transport": "ssh" if device == "pi" else "local", "emulated": emulated, "valid": valid,
           "device": {"machine": "aarch64", "cpu_implementer": "0x41", "cpu_part": "0xd08", "asimddp": False,
                      "cores": 4, "governors": ["ondemand"], "emulated": emulated, "throttling": None},
           "runtime": ({"name": "onnxruntime", "version": "1.31.1", "xnnpack": False} if runtime_kind == "onnx"
                       else {"name": "litert", "version": "2.3.0", "xnnpack": True, "nodes_total": 110,
                             "nodes_delegated": 90 if split else 110, "partitions": 20 if split else 1,
                             "ops_outside": {"HARD_SWISH": 19} if split else {}, "split": split}),
           "latency": {"p50_ms": p50_ms, "p90_ms": p50_ms * 1.1, "count": 100},
           "accuracy": None if top1 is None else {"images": images, "top1": top1, "top5": 1.0,
                                                  "delta_top1_vs_float": delta, "agreement_with_float": 0.98},
           "settings": {"threads": 1, "eval_dir": None},
           "warnings": ["CPU governor is ondemand, not performance: latency may vary"],
           "commit": {"sha": "f" * 40, "dirty": False}}
    if emulated:
        run["warnings"].append("EMULATED device: results are real ARM results, latencies are meaningless")
    if status != "ok":
        run.update(latency=None, accuracy=None, runtime=None, valid=False, error="load_failed: boom")
    return RunRecord(**{**run, "warnings": tuple(run["warnings"])})


def _runs():
    return [_run("fp32", 20.0, 0.90, 0.0),  # an earlier sweep: superseded by the next run
            _run("fp32", 10.0, 0.90, 0.0), _run("int8", 4.0, 0.89, -0.01, split=True),
            _run("onnx", 12.0, 0.90, 0.0), _run("onnx-int8", 6.0, None),  # random weights: accuracy n/a
            _run("dynamic", 0, status="failed"),
            _run("fp32", 900.0, 0.90, device="pi", emulated=True),
            _run("int8", 500.0, 0.88, device="pi", emulated=True, valid=False),  # throttled
            _run("onnx-int8", 300.0, 0.90, device="pi", emulated=True)]  # no ONNX float run on pi


def _write(path, runs):
    path.write_text(json.dumps({"schema": 1, "runs": [r.to_json() if isinstance(r, RunRecord) else r
                                                      for r in runs]}))
    return path


@pytest.fixture
def results(tmp_path):
    return _write(tmp_path / "results.json", _runs())


@pytest.fixture
def cli_group():
    """A group like edge-bench's (EdgeError -> one line, exit 2) holding the two commands."""
    @click.group(cls=_Group)
    def group():
        pass

    group.add_command(report_command)
    group.add_command(compare_command)
    return group


def _rows(path):
    return {(r.run.device_name, r.run.format): r for r in res.analyse(res.load_results(path)) if r.latest}


def test_speed_up_gmacs_and_delta_top1(results):
    rows = _rows(results)
    assert rows[("board", "fp32")].speed_up_vs_float == pytest.approx(1.0)
    assert rows[("board", "int8")].speed_up_vs_float == pytest.approx(2.5)  # latest fp32 (10 ms), not 20 ms
    assert rows[("board", "fp32")].gmac_per_s == pytest.approx(30.0)  # 3e8 MACs in 10 ms
    assert rows[("board", "int8")].gmac_per_s == pytest.approx(75.0)
    assert rows[("board", "onnx-int8")].speed_up_vs_float == pytest.approx(2.0)  # vs the ONNX float run
    assert rows[("board", "onnx-int8")].baseline.format == "onnx"
    assert rows[("board", "int8")].delta_top1_vs_float_pt == pytest.approx(-1.0)  # stored by bench
    assert rows[("pi", "int8")].delta_top1_vs_float_pt == pytest.approx(-2.0)  # computed from the fp32 run
    assert rows[("board", "onnx-int8")].delta_top1_vs_float_pt is None
    fallback = rows[("pi", "onnx-int8")]
    assert fallback.baseline.format == "fp32" and fallback.speed_up_vs_float == pytest.approx(3.0)
    assert fallback.baseline_note == "vs TFLite fp32: no onnx run"
    assert rows[("board", "dynamic")].speed_up_vs_float is None and rows[("board", "dynamic")].baseline is None


def test_markdown_csv_and_plots(results, tmp_path):
    files = write_report(results, tmp_path / "out" / "bench")
    assert [f.name for f in files] == ["bench.md", "bench.csv", "bench_latency_vs_accuracy.png",
                                       "bench_formats.png"]
    text = files[0].read_text()
    board, pi = text.split("\n## board")[1].split("\n## pi")
    assert "EMULATED" not in board and "## pi (ssh) — EMULATED" in text and "latencies, speed-ups" in pi
    assert "governor: ondemand (not performance" in board and "part 0xd08" in board
    assert "litert 2.3.0 (XNNPACK on), onnxruntime 1.31.1" in board
    table = {line.split(" | ")[1]: line for line in board.splitlines() if line.startswith("| mobilenet")}
    assert "| 2.50× | 75 | 90/110 (20) | ⚠ split: HARD_SWISH×19 |" in table["int8"]
    assert "| 89.00 | -1.00 | 98.0 | 4 | 4.4 |" in table["int8"]
    assert "| onnxruntime 1.31.1 | 2.0 | n/a | n/a | n/a | 6 |" in table["onnx-int8"]
    assert "FAILED: load_failed: boom" in table["dynamic"] and "**FAILED**: mobilenet_v1_0.25_32.dynamic" in board
    assert "1 earlier run(s) of the same artifacts are in the CSV only" in board
    assert "**INVALID** (the device throttled during the run): mobilenet_v1_0.25_32.int8.tflite" in pi
    assert "vs TFLite fp32: no onnx run" in pi
    with open(files[1], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(_runs())
    assert list(rows[0])[:6] == ["device_name", "transport", "emulated", "valid", "status", "machine"]
    assert {"p50 ms", "speed-up vs float", "GMAC/s", "latest", "baseline_artifact"} <= set(rows[0])
    assert [r["latest"] for r in rows].count("False") == 1
    int8 = next(r for r in rows if r["device_name"] == "board" and r["format"] == "int8")
    assert float(int8["speed-up vs float"]) == 2.5 and int8["top-1 %"] == "89.0"
    for png in files[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def _interleaved(run, median, q1, q3):
    latency = {**run.latency, "rounds": {"count": 25, "ratio_vs_baseline": {
        "baseline": "mobilenet_v1_0.25_32.fp32.tflite", "median": median, "q1": q1, "q3": q3}}}
    return replace(run, latency=latency)


@pytest.mark.parametrize("int8, expected", [
    (_run("int8", 4.0), "int8 pays; it is the fastest format here"),  # 0.40x, block timing
    (_run("int8", 19.5), "**int8 does not pay on this device**; fastest here: fp16 (7 ms)"),
    (_run("int8", 10.5), "no clear difference from float"),  # 1.05x: inside the block-timing noise
    (_interleaved(_run("int8", 10.5), 1.05, 1.03, 1.07), "**int8 does not pay"),  # the IQR says slower
    (_interleaved(_run("int8", 9.0), 0.9, 0.85, 1.02), "no clear difference"),  # IQR straddles 1
])
def test_reports_say_whether_int8_pays(tmp_path, int8, expected):
    runs = [_run("fp32", 10.0), _run("fp16", 7.0), int8]
    text = write_report(_write(tmp_path / "r.json", runs), tmp_path / "out")[0].read_text()
    section = text.split("### int8 on this device")[1]
    line = next(l for l in section.splitlines() if l.startswith("- mobilenet_v1_0.25_32 int8:"))
    assert expected in line, line
    if int8.latency.get("rounds"):
        assert "(interleaved, IQR" in line
    if "does not pay" in expected:
        assert "fastest here: fp16 (7 ms)" in line


def test_reports_say_whether_the_top1_change_is_within_noise(tmp_path):
    """bench pairs each int8 run with float on the same images; the report carries the verdict."""
    def paired(run, low, high):
        return replace(run, accuracy={**run.accuracy, "paired": {
            "count": 800, "confidence": 0.95, "delta_ci": [low, high], "within_noise": low <= 0 <= high}})

    runs = [_run("fp32", 10.0, 0.90, 0.0), paired(_run("int8", 4.0, 0.895, -0.005), -0.011, 0.002),
            paired(_run("onnx", 12.0, 0.90, 0.0), 0.0, 0.0), paired(_run("onnx-int8", 6.0, 0.87, -0.03), -0.045, -0.015)]
    text = write_report(_write(tmp_path / "r.json", runs), tmp_path / "out")[0].read_text()
    table = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| mobilenet")}
    assert "Δ top-1 within noise (95% CI -1.1 to +0.2 pt, 800 images)" in table["int8"]
    assert "Δ top-1 beyond noise (95% CI -4.5 to -1.5 pt, 800 images)" in table["onnx-int8"]
    assert "Δ top-1" not in table["onnx"]  # a float baseline is not compared with itself


def test_no_int8_verdict_on_an_emulated_board(results, tmp_path):
    text = write_report(results, tmp_path / "out")[0].read_text()
    pi = text.split("\n## pi")[1]
    assert "int8: 0.56× the float time (timed in separate blocks): no verdict, the board is emulated" in pi
    assert "int8 pays" not in pi


def test_report_without_accuracy_and_default_prefix(tmp_path, cli_group):
    runs = [_run("fp32", 10.0), _run("int8", 5.0, size_bytes=1024)]
    path = _write(tmp_path / "random.json", runs)
    outcome = CliRunner().invoke(cli_group, ["report", str(path)])
    assert outcome.exit_code == 0, outcome.output
    assert "| n/a | n/a | n/a | 5 |" in outcome.output and "2.00×" in outcome.output
    for name in ("random.md", "random.csv", "random_latency_vs_accuracy.png", "random_formats.png"):
        assert (tmp_path / name).is_file() and str(tmp_path / name) in outcome.output


def _regressed(results, tmp_path, change):
    runs = _runs()
    change(runs)
    return _write(tmp_path / "new.json", runs)


def test_compare_flags_p50_regression_by_threshold(results, tmp_path):
    def slower(runs):
        runs[2].latency["p50_ms"] = 4.8  # board int8: 20 % slower
        runs[7].latency["p50_ms"] = 900.0  # pi int8 much slower, but emulated (and throttled)
        runs[8].latency["p50_ms"] = 600.0  # pi onnx-int8: emulated
    newer = _regressed(results, tmp_path, slower)
    text, regressed = compare(results, newer, ["p50:10%"])
    assert regressed
    line = next(l for l in text.splitlines() if l.startswith("board") and ".int8.tflite" in l)
    assert "4 → 4.8 (+20.0%)" in line and "REGRESSION: p50 +20.0% > 10%" in line
    pi_line = next(l for l in text.splitlines() if l.startswith("pi") and ".int8.onnx" in l)
    assert "(+100.0%)" in pi_line and "ok; latency not checked: emulated" in pi_line
    assert "8 matched, 1 regression(s); thresholds: p50:10%" in text
    assert not compare(results, newer, ["p50:30%"])[1]
    assert not compare(results, newer, [])[1]


def test_compare_accuracy_failure_and_unmatched(results, tmp_path):
    def worse(runs):
        runs[1].accuracy["top1"] = 0.89  # board fp32: -1 point
        runs[3].accuracy.update(top1=0.80, images=50)  # board onnx: other image set, not checked
        runs[4] = replace(runs[4], status="failed", error="runner_failed: killed")
        del runs[6]  # pi fp32 gone
        runs.append(_run("fp32", 10.0, 0.9, device="pc"))
    newer = _regressed(results, tmp_path, worse)
    text, regressed = compare(results, newer, ["top1:0.5pt"])
    assert regressed
    lines = {l.split()[1]: l for l in text.splitlines() if l.startswith("board")}
    assert "90.00 → 89.00 (-1.00pt)" in lines["mobilenet_v1_0.25_32.fp32.tflite"]
    assert "REGRESSION: top1 -1.00pt < -0.5pt" in lines["mobilenet_v1_0.25_32.fp32.tflite"]
    assert "top-1 not checked: different images (200 vs 50)" in lines["mobilenet_v1_0.25_32.onnx"]
    assert "REGRESSION: FAILED in new: runner_failed: killed" in lines["mobilenet_v1_0.25_32.int8.onnx"]
    assert "only in old: pi/mobilenet_v1_0.25_32.fp32.tflite (tflite, threads 1)" in text
    assert "only in new: pc/mobilenet_v1_0.25_32.fp32.tflite (tflite, threads 1)" in text
    assert compare(results, newer, ["top1:2pt"])[1]  # the run that now fails still regresses


def test_compare_command_exit_status(results, tmp_path, cli_group):
    newer = _regressed(results, tmp_path, lambda runs: runs[2].latency.update(p50_ms=4.8))
    outcome = CliRunner().invoke(cli_group, ["compare", str(results), str(newer), "--fail-on", "p50:10%"])
    assert outcome.exit_code == 1 and "REGRESSION: p50 +20.0% > 10%" in outcome.output
    outcome = CliRunner().invoke(cli_group, ["compare", str(results), str(newer), "--fail-on", "p50:30%",
                                             "--fail-on", "top1:0.5pt"])
    assert outcome.exit_code == 0 and "thresholds: p50:30%, top1:0.5pt" in outcome.output
    outcome = CliRunner().invoke(cli_group, ["compare", str(results), str(newer), "--fail-on", "p50:10"])
    assert outcome.exit_code == 2
    assert outcome.output.strip() == ("edge-bench: error: --fail-on 'p50:10': expected METRIC:LIMIT such as "
                                      "p50:10% or top1:0.5pt (metrics: p50, p90, p99, mean, top1, map, map50)")


@pytest.mark.parametrize("content,message", [
    (None, "results file does not exist"), ("{", "not valid JSON (Expecting property name"),
    ("[]", "not an edge-bench results file"), ('{"runs": [{"status": "ok"}]}', "runs[0].artifact is missing"),
    ("", "the results file is empty"), (b"\xff\xfe{}", "not a results file (not UTF-8 text)"),
    ('{"runs": "x"}', "runs must be a list, not a string 'x'"),
    ('{"runs": [{"status": "ok", "artifact": "a", "format": "fp32", "runtime_kind": "tflite", '
     '"device_name": "d", "latency": "fast"}]}', "runs[0].latency must be an object or null, not a string"),
    ('{"runs": [{"status": "failed", "artifact": "a", "format": "fp32", "runtime_kind": "tflite", '
     '"device_name": "d", "settings": "x"}]}', "runs[0].settings must be an object, not a string"),
    ('{"runs": [{"status": "done", "artifact": "a", "format": "fp32", "runtime_kind": "tflite", '
     '"device_name": "d"}]}', "runs[0].status is 'done', not one of ok, failed"),
])
def test_bad_results_files(tmp_path, cli_group, content, message):
    path = tmp_path / "r.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(EdgeError, match="^" + re.escape(f"{path}: {message}")):
        res.load_results(path)
    outcome = CliRunner().invoke(cli_group, ["report", str(path)])
    assert outcome.exit_code == 2 and outcome.output.count("\n") == 1 and str(path) in outcome.output


@pytest.mark.parametrize("spec,message", [("p50:ten%", "expected METRIC:LIMIT"), ("latency:5%", "expected"),
                                          ("top1:1%", "top1 takes a limit in pt"),
                                          ("p90:1pt", "p90 takes a limit in %")])
def test_bad_fail_on(spec, message):
    with pytest.raises(EdgeError, match=message):
        parse_fail_on(spec)


def test_empty_results_file(tmp_path):
    with pytest.raises(EdgeError, match="holds no runs yet"):
        write_report(_write(tmp_path / "empty.json", []), tmp_path / "x")


def test_commands_do_not_import_tensorflow(results, tmp_path):
    code = ("import sys; from edge_mobilenet.report import commands, compare, markdown; "
            f"compare.compare({str(results)!r}, {str(results)!r}, ['p50:10%']); "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
