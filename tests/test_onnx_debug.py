"""Per-layer error of ONNX QDQ models and nodes kept in float, on a real trained model with ONNX Runtime."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge_mobilenet.convert.onnx_convert import OnnxQuantOptions, convert_onnx, quantize_onnx
from edge_mobilenet.runtimes.onnx import run_onnx
from edge_mobilenet.convert.quant.onnx_debug import OnnxSelectiveQuantizer, onnx_layer_errors
from edge_mobilenet.errors import EdgeError


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """A mobilenet_v1 0.25/32 trained 10 epochs on digits: float ONNX, U8S8 QDQ, images."""
    import keras

    from edge_mobilenet.data.images import load_digits
    from edge_mobilenet.train import TrainSettings, train_model

    folder = tmp_path_factory.mktemp("onnx-debug")
    keras_path = train_model(TrainSettings(epochs=10, output_dir=str(folder), progress=False))["model_path"]
    float_path, qdq_path = folder / "float.onnx", folder / "qdq.onnx"
    convert_onnx(keras.models.load_model(keras_path), float_path)
    digits = load_digits((32, 32))
    images = (digits.pixels / 127.5 - 1).astype(np.float32)
    quantize_onnx(float_path, qdq_path, images[:64])
    return {"folder": folder, "float": float_path, "qdq": qdq_path, "images": images}


def test_layer_errors_rank_every_quantized_activation(models):
    rows = onnx_layer_errors(models["float"], models["qdq"], models["images"][:16])
    values = [r.rmse_over_scale for r in rows]
    assert values == sorted(values, reverse=True) and len(rows) >= 28
    # a well-behaved int8 layer sits near ideal rounding error (1/sqrt(12) = 0.289)
    assert 0.15 < float(np.median(values)) < 0.6
    qdq = onnx.load(str(models["qdq"]))
    producers = {out: node for node in qdq.graph.node for out in node.output}
    scales = {t.name: float(numpy_helper.to_array(t).reshape(-1)[0]) for t in qdq.graph.initializer}
    assert {r.node for r in rows} <= {node.name for node in qdq.graph.node}
    for row in rows:  # the scale is the one the node's output is quantized with
        node = next(n for n in qdq.graph.node if n.name == row.node)
        quantizer = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear"
                         and producers.get(n.input[0]) is node)
        assert row.scale == pytest.approx(scales[quantizer.input[1]]) and row.op == node.op_type
    assert {"conv1_relu", "conv_pw_13_relu", "conv_preds"} <= {r.layer for r in rows}
    convs = [r for r in rows if r.op == "Conv"]
    assert len(convs) == 28 and all(20 < r.snr_db < 80 and r.max_abs_error > 0 for r in convs)


def test_excluding_the_worst_conv_keeps_it_in_float(models):
    rows = onnx_layer_errors(models["float"], models["qdq"], models["images"][:16])
    worst = next(r for r in rows if r.op == "Conv")
    quantizer = OnnxSelectiveQuantizer(models["float"], models["images"][:64], OnnxQuantOptions(),
                                       workdir=models["folder"])
    model = onnx.load_from_string(quantizer.quantize([worst.node]))
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}

    def weight_of(node):
        return node.input[1] if node.input[1] in initializers else producers[node.input[1]].op_type

    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    weight = initializers[weight_of(convs.pop(worst.node))]
    assert weight.data_type == onnx.TensorProto.FLOAT
    assert {weight_of(node) for node in convs.values()} == {"DequantizeLinear"}
    assert quantizer.facts["op_counts"]["DequantizeLinear"] < _op_count(models["qdq"], "DequantizeLinear")
    images = models["images"][:64]
    selective = run_onnx(model.SerializeToString(), images)
    reference = run_onnx(models["float"], images)
    assert selective.shape == reference.shape and np.all(np.isfinite(selective))
    assert np.mean(selective.argmax(1) == reference.argmax(1)) > 0.9
    with pytest.raises(EdgeError, match="no node named 'Conv__nope'"):
        quantizer.quantize(["Conv__nope"])


def _op_count(path: Path, op: str) -> int:
    return sum(node.op_type == op for node in onnx.load(str(path)).graph.node)


def test_bad_input_is_one_clear_error(models, tmp_path):
    from edge_mobilenet.models import build_model

    images = models["images"][:4]
    with pytest.raises(EdgeError, match="no such ONNX file"):
        onnx_layer_errors(tmp_path / "missing.onnx", models["qdq"], images)
    with pytest.raises(EdgeError, match="no quantized activation"):
        onnx_layer_errors(models["float"], models["float"], images)
    untrained = tmp_path / "untrained.onnx"  # same graph and names, other weights
    convert_onnx(build_model("mobilenet_v1", alpha=0.25, size=32, classes=10), untrained)
    with pytest.raises(EdgeError, match="does not match the float model"):
        onnx_layer_errors(untrained, models["qdq"], images)
    larger = tmp_path / "larger.onnx"
    convert_onnx(build_model("mobilenet_v1", alpha=0.25, size=48, classes=10), larger)
    with pytest.raises(EdgeError, match="does not match the float model"):
        onnx_layer_errors(larger, models["qdq"], images)
    with pytest.raises(EdgeError, match=r"images are \[48, 48, 3\] but the model takes \[32, 32, 3\]"):
        onnx_layer_errors(models["float"], models["qdq"], np.zeros((2, 48, 48, 3), np.float32))
