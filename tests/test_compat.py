"""Runtime compatibility from operator versions: real TF conversions, checked against real runtimes."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_mobilenet.convert import op_probe
from edge_mobilenet.convert.check_command import check
from edge_mobilenet.runtimes.compat import check_compat, parse_runtime, required_ops
from edge_mobilenet.runtimes.runtime_ops import TFLITE_MAX_VERSIONS
from edge_mobilenet.runtimes.tflite_ops import OPERATOR_CODES, operator_name
from edge_mobilenet.errors import EdgeError


@pytest.fixture(scope="module")
def dynamic_models(tmp_path_factory):
    """A tiny MobileNetV2 (it has a Dense classifier) converted in dynamic-range mode twice: TF 2.21's
    default (per-channel dense -> FULLY_CONNECTED v12) and with per-channel dense quantization off."""
    import tensorflow as tf

    from edge_mobilenet.models.registry import build_model

    folder = tmp_path_factory.mktemp("compat")
    model = build_model("mobilenet_v2", alpha=0.35, size=32, classes=10)
    model.export(str(folder / "saved"), verbose=False)
    paths = {}
    for name, per_tensor_dense in (("default", False), ("per_tensor_dense", True)):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(folder / "saved"))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel_quantization_for_dense_layers = per_tensor_dense
        paths[name] = folder / f"{name}.dynamic.tflite"
        paths[name].write_bytes(converter.convert())
    return paths


def _reference_ops(path: Path) -> list[dict]:
    """Operator codes read with the flatbuffers object API generated from TFLite's schema."""
    import ai_edge_litert

    schema_file = Path(ai_edge_litert.__file__).parent / "schema_py_generated.py"
    spec = importlib.util.spec_from_file_location("tflite_schema", schema_file)
    schema = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(schema)
    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    return [{"op": operator_name(max(c.builtinCode, c.deprecatedBuiltinCode)), "version": c.version}
            for c in model.operatorCodes]


def test_required_ops_match_the_schema_reader(dynamic_models):
    for path in dynamic_models.values():
        assert required_ops(path) == _reference_ops(path)
    versions = {o["op"]: o["version"] for o in required_ops(dynamic_models["default"])}
    assert versions["FULLY_CONNECTED"] == 12
    assert versions["CONV_2D"] == 5  # hybrid (int8 weights, float activations) convolution


def test_dynamic_default_is_refused_by_tflite_runtime_2_14(dynamic_models):
    result = check_compat(dynamic_models["default"], "tflite-runtime==2.14")
    assert not result.ok
    assert result.problems == ["FULLY_CONNECTED v12 > 2.14's max v10"]
    assert "REFUSES" in result.verdict()
    assert check_compat(dynamic_models["default"], "ai-edge-litert").ok
    assert check_compat(dynamic_models["default"], "ai-edge-litert==2.3").ok


def test_per_tensor_dense_quantization_loads_on_2_14(dynamic_models):
    versions = {o["op"]: o["version"] for o in required_ops(dynamic_models["per_tensor_dense"])}
    assert versions["FULLY_CONNECTED"] <= 10
    assert check_compat(dynamic_models["per_tensor_dense"], "tflite-runtime==2.14.0").ok


def test_verdicts_agree_with_the_installed_runtime(dynamic_models):
    from ai_edge_litert.interpreter import Interpreter

    for path in dynamic_models.values():
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], np.float32))
        interpreter.invoke()


def test_probe_matches_the_table_of_the_installed_litert():
    result = op_probe.probe(codes=range(len(OPERATOR_CODES) + 2))
    if not (result["version"] or "").startswith("2.3."):
        pytest.skip(f"installed ai-edge-litert is {result['version']}, the table is for 2.3")
    measured = {operator_name(int(code)): max(versions) for code, versions in result["resolved"].items()}
    assert measured == TFLITE_MAX_VERSIONS["ai-edge-litert==2.3"]
    assert not [k for k in result["other_errors"] if not k.startswith(f"{OPERATOR_CODES['CUSTOM']}:")]


def _onnx_file(path: Path, opset: int, ir_version: int) -> Path:
    import onnx
    import onnx.helper as helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


def test_onnx_opset_and_ir_version_against_onnxruntime_releases(tmp_path):
    old = _onnx_file(tmp_path / "old.onnx", 15, 8)
    new = _onnx_file(tmp_path / "new.onnx", 21, 10)
    assert check_compat(old, "onnxruntime==1.10").ok
    refused = check_compat(new, "onnxruntime==1.16.3")
    assert refused.problems == ["opset 21 > onnxruntime 1.16's max opset 19",
                                "IR version 10 > onnxruntime 1.16's max IR 9"]
    assert check_compat(new, "onnxruntime").ok


def test_bad_input_is_one_line_error(tmp_path, dynamic_models):
    with pytest.raises(EdgeError, match="no such file"):
        required_ops(tmp_path / "missing.tflite")
    text = tmp_path / "notes.tflite"
    text.write_text("not a flatbuffer at all")
    with pytest.raises(EdgeError, match="not a TFLite model"):
        required_ops(text)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(dynamic_models["default"].read_bytes()[:64])
    with pytest.raises(EdgeError, match="corrupt"):
        required_ops(truncated)
    with pytest.raises(EdgeError, match="unknown runtime"):
        parse_runtime("tensorflow==2.14")
    with pytest.raises(EdgeError, match="no operator table"):
        parse_runtime("tflite-runtime==2.10")
    with pytest.raises(EdgeError, match="can't run on onnxruntime"):
        check_compat(dynamic_models["default"], "onnxruntime")


def _cli(*args):
    from edge_mobilenet.cli import _Group

    group = _Group(commands={"check": check})
    return CliRunner().invoke(group, ["check", *[str(a) for a in args]], catch_exceptions=False)


def test_check_command_verdicts_and_exit_status(dynamic_models):
    refused = _cli(dynamic_models["default"], "--runtime", "tflite-runtime==2.14",
                   "--runtime", "ai-edge-litert")
    assert refused.exit_code == 1
    lines = refused.output.splitlines()
    assert lines[0].startswith("tflite-runtime==2.14: REFUSES") and "FULLY_CONNECTED v12" in lines[0]
    assert lines[1].startswith("ai-edge-litert==2.3: loads")
    loads = _cli(dynamic_models["per_tensor_dense"])
    assert loads.exit_code == 0, loads.output
    report = json.loads(_cli(dynamic_models["default"], "--json").output)
    assert report["loads_everywhere"] is False
    assert {r["runtime"]: r["loads"] for r in report["results"]} == {"tflite-runtime==2.14": False,
                                                                    "ai-edge-litert==2.3": True}
    assert {"op": "FULLY_CONNECTED", "version": 12} in report["ops"]


def test_check_command_bad_runtime_exits_2(dynamic_models):
    result = _cli(dynamic_models["default"], "--runtime", "tflite-runtime==1.0")
    assert result.exit_code == 2
    assert "edge-bench: error: no operator table for 'tflite-runtime==1.0'" in result.output
