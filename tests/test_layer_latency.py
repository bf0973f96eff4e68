"""Per-layer latency (edge-bench profile, bench --profile): real ONNX Runtime traces, real layer names."""

import argparse
import json

import numpy as np
import pytest

from edge_mobilenet.contracts.manifest import read_manifest
from edge_mobilenet.contracts.records import RunRecord, Where
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.runtimes import device_runner
from edge_mobilenet.runtimes.profiling import BETWEEN_NODES, block_of, layer_of, layer_table, onnx_node_layers

INT8_ONNX = "mobilenet_v1_0.25_32.int8.onnx"


def _runner_args(**overrides):
    args = dict(threads=1, runtime="auto", warmup_runs=3, profile_runs=7)
    return argparse.Namespace(**{**args, **overrides})


def _keras_layer_names(bench_artifacts) -> set[str]:
    import keras

    entry = next(e for e in read_manifest(bench_artifacts / "manifest.json").entries if e.file == INT8_ONNX)
    return {layer.name for layer in keras.models.load_model(entry.source_file, compile=False).layers}


@pytest.fixture(scope="module")
def int8_profile(bench_artifacts):
    inputs = np.zeros((1, 32, 32, 3), np.float32)
    return device_runner.profile_onnx(str(bench_artifacts / INT8_ONNX), inputs, _runner_args())


def test_a_real_trace_is_summarised_per_node_without_the_warm_up(int8_profile):
    assert int8_profile["method"] == "onnxruntime session profiling"
    assert int8_profile["runs"] == 7  # the 3 warm-up runs are left out
    nodes = int8_profile["nodes"]
    assert len({n["node"] for n in nodes}) == len(nodes) > 20
    assert {"QLinearConv", "QuantizeLinear"} <= {n["op"] for n in nodes}
    assert all(n["ms"] > 0 for n in nodes)
    assert 0 < int8_profile["nodes_total_ms"] <= int8_profile["run_p50_ms"] * 1.5


def test_trace_summary_counts_only_runs_after_the_warm_up():
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 50, "args": {"op_name": "Conv"}},
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 40},
              {"cat": "Node", "name": "a_kernel_time", "ts": 210, "dur": 20, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "b_kernel_time", "ts": 230, "dur": 10, "args": {"op_name": "Relu"}},
              {"cat": "Node", "name": "b_fence_before", "ts": 229, "dur": 0}]
    summary = device_runner.summarize_ort_trace(events, skip_runs=1)
    assert summary["runs"] == 1 and summary["run_p50_ms"] == 0.04
    assert summary["nodes"] == [{"node": "a", "op": "Conv", "ms": 0.02}, {"node": "b", "op": "Relu", "ms": 0.01}]
    with pytest.raises(ValueError, match="no model_run"):
        device_runner.summarize_ort_trace(events, skip_runs=2)


def test_nodes_map_to_the_keras_layers_of_the_source(int8_profile, bench_artifacts):
    names = _keras_layer_names(bench_artifacts)
    node_layers = onnx_node_layers(bench_artifacts / INT8_ONNX)
    layers = [layer_of(n["node"], node_layers) for n in int8_profile["nodes"]]
    model_layers = {l for l in layers if not l.startswith("(runtime)")}
    assert model_layers <= names, model_layers - names
    assert {f"conv_{kind}_{i}" for kind in ("dw", "pw") for i in range(1, 14)} <= model_layers
    runtime_ops = {n["op"] for n, layer in zip(int8_profile["nodes"], layers) if layer.startswith("(runtime)")}
    assert runtime_ops == {"QuantizeLinear", "DequantizeLinear", "Transpose"}  # the model's I/O and layout
    assert block_of("conv_dw_3_bn") == block_of("conv_pw_3") == "conv_dw_pw_3"
    assert block_of("block_12_expand_relu") == "block_12" and block_of("expanded_conv_depthwise") == "expanded_conv"
    assert block_of("expanded_conv_10_project_bn") == "expanded_conv_10" and block_of("logits") == "logits"


def test_the_table_adds_up_to_the_profiled_run(int8_profile, bench_artifacts):
    table = layer_table(int8_profile, int8_profile["run_p50_ms"] / 2, onnx_node_layers(bench_artifacts / INT8_ONNX))
    for rows in (table["layers"], table["blocks"]):
        assert sum(r["ms"] for r in rows) == pytest.approx(table["total_ms"], rel=1e-3)
        assert rows[-1]["layer"] == BETWEEN_NODES
        assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-3)
    assert len(table["blocks"]) < len(table["layers"])
    assert table["profiled_vs_timed"] == pytest.approx(2.0, rel=1e-3)


def test_profile_command_on_local_writes_the_tables(bench_artifacts, tmp_path, run_cli):
    out = tmp_path / "profiles"
    result = run_cli("profile", bench_artifacts / INT8_ONNX, bench_artifacts / "mobilenet_v1_0.25_32.onnx",
                     "--device", "local", "--runs", "20", "--quick", "--by", "block", "--top", "5",
                     "--output", out)
    assert result.returncode == 0, result.stderr
    assert "profiled / unprofiled" in result.stdout and "conv_dw_pw_" in result.stdout
    written = json.loads((out / "profile.json").read_text())["profiles"]
    assert sorted(p["artifact"] for p in written) == ["mobilenet_v1_0.25_32.int8.onnx", "mobilenet_v1_0.25_32.onnx"]
    for found in written:
        profile = found["profile"]
        assert profile["runs"] == 20 and profile["timed_p50_ms"] > 0
        assert sum(r["ms"] for r in profile["layers"]) == pytest.approx(profile["total_ms"], rel=1e-3)
    assert "| conv_dw_pw_1 |" in (out / "profile.md").read_text()
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert all(RunRecord.from_json(r, Where("results")).profile["layers"] for r in runs)


def test_bad_profile_values_are_one_line(bench_artifacts, tmp_path, run_cli):
    result = run_cli("bench", bench_artifacts / INT8_ONNX, "--profile", "-1", "--output", tmp_path / "r.json")
    assert result.returncode == 2 and "--profile must be >= 0 runs; received -1" in result.stderr
    (tmp_path / "file").write_text("x")
    result = run_cli("profile", bench_artifacts / INT8_ONNX, "--output", tmp_path / "file")
    assert result.returncode == 2 and "is a file; give a folder" in result.stderr
    with pytest.raises(EdgeError, match="profile must be an object"):
        RunRecord.from_json({"status": "failed", "artifact": "a", "format": "onnx", "runtime_kind": "onnx",
                             "device_name": "local", "profile": "fast"}, Where("results.json") / "runs" / 0)


def _profiled_int8_and_float(bench_artifacts, tmp_path, run_cli):
    """`edge-bench profile` of the int8 ONNX artifact and its float baseline; (folder, int8 entry)."""
    profiles = tmp_path / "profiles"
    result = run_cli("profile", bench_artifacts / INT8_ONNX, bench_artifacts / "mobilenet_v1_0.25_32.onnx",
                     "--runs", "10", "--quick", "--output", profiles)
    assert result.returncode == 0, result.stderr
    entry = next(e for e in read_manifest(bench_artifacts / "manifest.json").entries if e.file == INT8_ONNX)
    return profiles, entry


def test_quant_report_joins_each_block_s_error_with_its_int8_and_float_ms(bench_artifacts, tmp_path, run_cli):
    profiles, entry = _profiled_int8_and_float(bench_artifacts, tmp_path, run_cli)
    result = run_cli("quant-report", bench_artifacts / INT8_ONNX, "--float", entry.source_file,
                     "--latency", profiles / "profile.json", "--output", tmp_path / "qr", "--json")
    assert result.returncode == 0, result.stderr
    join = json.loads(result.stdout)["latency"]
    assert join["float_artifact"] == "mobilenet_v1_0.25_32.onnx" and join["int8_total_ms"] > 0
    blocks = {b["block"]: b for b in join["blocks"]}
    assert {f"conv_dw_pw_{i}" for i in range(1, 14)} <= set(blocks)
    for i in range(1, 14):
        block = blocks[f"conv_dw_pw_{i}"]
        assert block["int8_ms"] > 0 and block["float_ms"] > 0 and block["rmse_over_scale"] > 0
        assert block["worst_layer"].startswith(("conv_dw_", "conv_pw_"))


def test_a_bad_profile_file_is_one_line_before_the_float_model_loads(bench_artifacts, tmp_path, run_cli):
    bad = tmp_path / "profile.json"
    bad.write_text(json.dumps({"schema": 1, "profiles": [{"artifact": INT8_ONNX, "profile": {"layers": [
        {"layer": "conv1", "ms": "slow"}]}}]}))
    result = run_cli("quant-report", bench_artifacts / INT8_ONNX, "--float", "nowhere.keras", "--latency", bad)
    assert result.returncode == 2
    assert "profile.json: profiles[0].profile.layers[0].ms must be a number" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name, inside, cut", [
    ("mobilenet_v2", "block_2_expand_relu", "block_2_add"),        # a residual block is cut after its add
    ("mobilenet_v3_small", "expanded_conv_squeeze_excite_mul", "expanded_conv_project_bn"),
])
def test_prefixes_cut_only_where_no_branch_crosses(name, inside, cut):
    from edge_mobilenet.convert.prefixes import cut_points
    from edge_mobilenet.models.registry import build_model

    cuts = cut_points(build_model(name, alpha=0.35 if name == "mobilenet_v2" else 0.5, size=32, classes=10))
    layers = [layer for _, layer in cuts]
    assert cut in layers and inside not in layers
    assert layers[-1] == "predictions" and len({block for block, _ in cuts}) == len(cuts)


def test_prefix_table_differences_rounds_and_states_its_noise():
    from edge_mobilenet.runtimes.profiling import prefix_table

    prefixes = [[1.0, 1.2, 1.1], [3.0, 3.2, 3.3], [3.5, 3.6, 3.9]]
    table = prefix_table(["a", "b", "c"], prefixes, [3.4, 3.6, 3.8])
    assert [r["ms"] for r in table["layers"]] == [1.1, 2.0, 0.5]
    assert table["total_ms"] == 3.6 and table["timed_p50_ms"] == 3.6 and table["profiled_vs_timed"] == 1.0
    assert table["layers"][1]["q1_ms"] == 2.0 and table["layers"][1]["q3_ms"] == 2.1
    assert table["noise_iqr_ms_median"] == pytest.approx(0.1)


def test_a_tflite_artifact_is_profiled_by_its_prefixes(bench_artifacts, tmp_path, run_cli):
    out = tmp_path / "p"
    result = run_cli("profile", bench_artifacts / "mobilenet_v1_0.25_32.int8.tflite", "--device", "local",
                     "--runs", "100", "--quick", "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "truncated prefixes, differenced, 20 interleaved rounds" in result.stdout
    assert "Traceback" not in result.stderr and "W0000" not in result.stderr
    profile = json.loads((out / "profile.json").read_text())["profiles"][0]["profile"]
    blocks = [r["layer"] for r in profile["layers"]]
    assert blocks[:2] == ["conv1", "conv_dw_pw_1"] and blocks[-1] == "predictions" and len(blocks) == 17
    assert all(r["q1_ms"] <= r["ms"] <= r["q3_ms"] for r in profile["layers"])
    assert sum(r["ms"] for r in profile["layers"]) == pytest.approx(profile["nodes_total_ms"], abs=1e-4)
    assert profile["total_ms"] > 0 and profile["timed_p50_ms"] > 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["artifact"] for r in runs] == ["mobilenet_v1_0.25_32.int8.tflite"]  # not the prefixes


def test_a_bare_tflite_file_says_why_it_has_no_profile(bench_artifacts, tmp_path, run_cli):
    bare = tmp_path / "downloaded.int8.tflite"
    bare.write_bytes((bench_artifacts / "mobilenet_v1_0.25_32.int8.tflite").read_bytes())
    result = run_cli("profile", bare, "--device", "local", "--runs", "5", "--quick", "--output", tmp_path / "p")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no profile: no per-op timing from LiteRT's Python API (tensorflow#59095), and no float source" \
        in result.stdout


def test_latency_ranking_prefers_error_recovered_per_millisecond():
    from collections import namedtuple

    from edge_mobilenet.convert.quant.accuracy_aware import latency_ranked

    Row = namedtuple("Row", "layer node rmse_over_scale")
    ranking = [Row("conv_pw_1", "a", 2.0), Row("conv_pw_2", "b", 1.0), Row("conv_pw_3", "c", 0.2)]
    costs = {"conv_dw_pw_1": 1.0, "conv_dw_pw_2": -0.5, "conv_dw_pw_3": 0.0}  # float faster in block 2
    assert [r.node for r in latency_ranked(ranking, costs)] == ["b", "a", "c"]  # c: at ideal rounding
    assert [r.node for r in latency_ranked(ranking, {})] == ["a", "b", "c"]  # no costs: by error


def test_quantize_latency_aware_records_the_device_costs_it_ranked_by(bench_artifacts, tmp_path, run_cli):
    profiles, entry = _profiled_int8_and_float(bench_artifacts, tmp_path, run_cli)
    out = tmp_path / "out"
    result = run_cli("quantize", "--quiet", "--model", entry.source_file, "--formats", "onnx-int8", "--count", "50",
                     "--target-accuracy", "0pt", "--latency-profile", profiles / "profile.json", "--output", out)
    assert result.returncode in (0, 1), result.stderr  # 1: the target missed, the best artifact kept
    assert "ranked by int8 error per ms" in result.stderr
    found = next(e for e in read_manifest(out / "manifest.json", require_artifacts=False).entries)
    aware = found.facts["recipe"]["accuracy_aware"]
    assert aware["latency_aware"]["profile"] == str(profiles / "profile.json")
    assert {f"conv_dw_pw_{i}" for i in range(1, 14)} <= set(aware["latency_aware"]["block_cost_ms"])
    assert aware["steps"]


@pytest.mark.parametrize("text, message", [
    ("[]", "profile.json: must be an object"),
    ('{"schema": 1, "profiles": []}', None),
])
def test_latency_profile_is_checked_before_any_model_loads(tmp_path, run_cli, text, message):
    path = tmp_path / "profile.json"
    path.write_text(text)
    result = run_cli("quantize", "--model", "nowhere.keras", "--formats", "int8", "--target-accuracy", "1pt",
                     "--latency-profile", path, "--output", tmp_path / "o")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert (message or "nowhere.keras") in result.stderr
