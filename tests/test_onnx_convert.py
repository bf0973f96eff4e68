"""Keras -> ONNX (tf2onnx) and ONNX Runtime int8 QDQ quantization, with real ORT inference."""

from pathlib import Path

import numpy as np
import pytest

from edge_mobilenet.convert import onnx_convert
from edge_mobilenet.convert.onnx_convert import OnnxQuantOptions
from edge_mobilenet.data.images import load_digits
from edge_mobilenet.data.preprocess import get_preprocessing
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file
from edge_mobilenet.runtimes import onnx as onnx_runtime
from edge_mobilenet.train import TrainSettings, load_keras_model, train_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """mobilenet_v1 0.25/32 trained on the digits (random weights give flat outputs; 3 epochs give a
    52%-accurate, unconfident model whose top-1 flips under int8; 10 give ~86%)."""
    folder = tmp_path_factory.mktemp("onnx-model")
    metrics = train_model(TrainSettings(epochs=10, output_dir=str(folder), progress=False))
    return load_keras_model(metrics["model_path"])


@pytest.fixture(scope="module")
def digits():
    """96 real digit images, preprocessed as the model expects ([-1, 1])."""
    images = load_digits((32, 32))
    return get_preprocessing("symmetric").apply(images.pixels[:96])


@pytest.fixture(scope="module")
def float_onnx(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    facts = onnx_convert.convert_onnx(trained, path)
    return path, facts


@pytest.fixture(scope="module")
def int8_onnx(float_onnx, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx-int8") / "tiny.int8.onnx"
    facts = onnx_convert.quantize_onnx(float_onnx[0], path, digits)
    return path, facts


def test_float_export_has_fixed_batch_and_stable_input_name(float_onnx):
    path, facts = float_onnx
    assert facts["input_name"] == "input"
    assert facts["input_shape"] == [1, 32, 32, 3]
    assert facts["output_shape"] == [1, 10]
    assert facts["dtype"] == "float32"
    assert facts["opset"] >= 13 and facts["ir_version"] <= 8  # loads on onnxruntime >= 1.10
    spec = onnx_runtime.onnx_io_spec(path)
    assert spec["input"].to_json() == {"name": "input", "shape": [1, 32, 32, 3], "dtype": "float32",
                             "scale": None, "zero_point": None}
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def test_float_onnx_matches_keras(float_onnx, trained, digits):
    outputs = trained.predict(digits[:16], verbose=0)
    assert outputs.max() > 0.5  # trained: not the flat 0.1 of random weights
    assert onnx_convert.verify_onnx(float_onnx[0], trained, digits[:16]) < 1e-4


def test_int8_qdq_agrees_with_float_and_keeps_float_io(float_onnx, int8_onnx, digits):
    path, facts = int8_onnx
    assert facts["scheme"] == "U8S8" and facts["quant_format"] == "QDQ"
    assert facts["calibration_count"] == 96
    assert facts["op_counts"]["QuantizeLinear"] > 0 and facts["op_counts"]["DequantizeLinear"] > 0
    spec = onnx_runtime.onnx_io_spec(path)
    assert spec["input"].dtype == "float32" and spec["input"].scale is None
    float_top1 = onnx_runtime.run_onnx(float_onnx[0], digits).argmax(1)
    int8_top1 = onnx_runtime.run_onnx(path, digits).argmax(1)
    assert np.mean(float_top1 == int8_top1) >= 0.95


def test_int8_quantization_is_deterministic(float_onnx, int8_onnx, digits, tmp_path):
    again = tmp_path / "again.int8.onnx"
    facts = onnx_convert.quantize_onnx(float_onnx[0], again, digits)
    assert sha256_file(again) == sha256_file(int8_onnx[0])
    assert facts["calibration_inputs_sha256"] == int8_onnx[1]["calibration_inputs_sha256"]


def test_s8s8_and_options_by_keyword(float_onnx, digits, tmp_path):
    facts = onnx_convert.quantize_onnx(float_onnx[0], tmp_path / "s8.onnx", digits[:16],
                                       activation_type="int8", method="percentile")
    assert facts["scheme"] == "S8S8"
    assert facts["options"]["method"] == "percentile"
    outputs = onnx_runtime.run_onnx(tmp_path / "s8.onnx", digits[:4], threads=2)
    assert outputs.shape == (4, 10)


def test_options_are_validated():
    with pytest.raises(EdgeError, match="activation_type"):
        OnnxQuantOptions(activation_type="int4")
    with pytest.raises(EdgeError, match="method"):
        OnnxQuantOptions(method="distribution-ish")
    assert OnnxQuantOptions().scheme == "U8S8"


def test_bad_inputs_are_one_line_errors(float_onnx, digits, tmp_path):
    with pytest.raises(EdgeError, match="no such ONNX file"):
        onnx_convert.quantize_onnx(tmp_path / "missing.onnx", tmp_path / "out.onnx", digits)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    with pytest.raises(EdgeError, match="not an ONNX model"):
        onnx_runtime.onnx_io_spec(junk)
    with pytest.raises(EdgeError, match="non-empty"):
        onnx_convert.quantize_onnx(float_onnx[0], tmp_path / "out.onnx", np.zeros((0, 32, 32, 3), np.float32))
    with pytest.raises(EdgeError, match="calibration images are"):
        onnx_convert.quantize_onnx(float_onnx[0], tmp_path / "out.onnx", np.zeros((4, 16, 16, 3), np.float32))
    assert not (tmp_path / "out.onnx").exists()
    assert not [p for p in Path(tmp_path).iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_v3_keeps_no_layout_transposes_and_pools_globally(name, tmp_path):
    """tf2onnx's transpose optimizer used to give up on V3 (a scalar Add after a bias-less Conv), leaving
    ~100 NHWC<->NCHW Transposes and squeeze-excite ReduceMeans that ONNX Runtime runs in float."""
    import collections

    import keras

    from edge_mobilenet.models.registry import build_model

    keras.utils.set_random_seed(0)
    model = build_model(name, alpha=0.5, size=32, classes=10)
    path = tmp_path / "v3.onnx"
    onnx_convert.convert_onnx(model, path)
    ops = collections.Counter(node.op_type for node in onnx_runtime.load_onnx(path).graph.node)
    assert ops["Transpose"] <= 1 and ops["ReduceMean"] == 0 and ops["GlobalAveragePool"] >= 9, ops
    images = np.random.RandomState(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    assert onnx_convert.verify_onnx(path, model, images) < 1e-4
    int8 = tmp_path / "v3.int8.onnx"
    onnx_convert.quantize_onnx(path, int8, images)
    assert onnx_runtime.run_onnx(int8, images).shape == (8, 10)
