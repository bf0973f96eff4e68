"""Hard-swish in an int8-friendly form: float-equal to the stock form, delegated whole to XNNPACK.

Random weights shrink activations layer by layer until int8 scales fall outside what XNNPACK's int8
ADD accepts, which would split the graph for a reason unrelated to hard-swish; the tests therefore
set every BatchNormalization's moving statistics to those of a batch first (as trained weights have).
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_mobilenet.train import calibrate_batch_norm

SIZE = 64


def _batch(count: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, SIZE, SIZE, 3)).astype(np.float32)


def _v3(name: str, form: str, activation: str | None = None):
    import keras

    from edge_mobilenet.models import build_model

    keras.utils.set_random_seed(1)
    return build_model(name, alpha=0.5, size=SIZE, classes=10, hard_swish=form, dropout=0.0,
                       classifier_activation=activation)


def _int8(model):
    from edge_mobilenet.convert.tflite import convert_keras
    from edge_mobilenet.runtimes.tflite import make_interpreter

    flatbuffer = convert_keras(model, ["int8"], _batch(16, seed=2))["int8"][0]
    return flatbuffer, make_interpreter(flatbuffer)


def _op_names(interpreter) -> set[str]:
    return {detail["op_name"] for detail in interpreter._get_ops_details()}


@pytest.fixture(scope="module")
def fused_small():
    model = _v3("mobilenet_v3_small", "fused", "softmax")
    calibrate_batch_norm(model, _batch())
    return model


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_decomposed_equals_fused_in_float(name, tmp_path):
    import keras

    fused, decomposed = _v3(name, "fused"), _v3(name, "decomposed")
    calibrate_batch_norm(fused, _batch())
    assert [w.path for w in fused.weights] == [w.path for w in decomposed.weights]
    decomposed.set_weights(fused.get_weights())
    assert "HARD_SWISH" not in str([type(layer).__name__ for layer in decomposed.layers])
    logits = fused.predict(_batch(), verbose=0)
    assert np.abs(logits).max() > 0.05
    np.testing.assert_allclose(decomposed.predict(_batch(), verbose=0), logits, atol=1e-5)
    decomposed.save(tmp_path / "decomposed.keras")
    reloaded = keras.models.load_model(tmp_path / "decomposed.keras")
    np.testing.assert_allclose(reloaded.predict(_batch(), verbose=0), logits, atol=1e-5)


def test_decomposed_int8_is_one_xnnpack_partition():
    from edge_mobilenet.runtimes.delegation import delegation_stats

    model = _v3("mobilenet_v3_small", "decomposed", "softmax")
    calibrate_batch_norm(model, _batch())
    _, interpreter = _int8(model)
    stats = delegation_stats(interpreter)
    assert "HARD_SWISH" not in _op_names(interpreter)
    assert stats["partitions"] == 1
    assert stats["ops_outside"] == {"SOFTMAX": 1}
    assert stats["nodes_delegated"] == stats["nodes_total"] - 1
    assert stats["split"] is False


def test_stock_int8_is_split_at_every_hard_swish(fused_small):
    from edge_mobilenet.runtimes.delegation import delegation_stats

    _, interpreter = _int8(fused_small)
    stats = delegation_stats(interpreter)
    hard_swish_count = sum(d["op_name"] == "HARD_SWISH" for d in interpreter._get_ops_details())
    assert hard_swish_count > 10
    assert stats["ops_outside"] == {"HARD_SWISH": hard_swish_count, "SOFTMAX": 1}
    assert stats["partitions"] > 10 and stats["split"] is True


def test_rewrite_of_fused_model_matches_and_is_delegated_whole(fused_small, tmp_path):
    import keras

    from edge_mobilenet.runtimes.delegation import delegation_stats
    from edge_mobilenet.convert.rewrite import rewrite_hard_swish

    rewritten, report = rewrite_hard_swish(fused_small)
    activations = [layer.name for layer in fused_small.layers
                   if isinstance(layer, keras.layers.Activation) and "hard" in layer.get_config()["activation"]]
    assert sorted(report["rewritten"]) == sorted(activations) and report["left"] == []
    assert not any(isinstance(layer, keras.layers.Activation) and "hard" in layer.get_config()["activation"]
                   for layer in rewritten.layers)
    np.testing.assert_allclose(rewritten.predict(_batch(), verbose=0),
                               fused_small.predict(_batch(), verbose=0), atol=1e-6)
    rewritten.save(tmp_path / "rewritten.keras")
    keras.models.load_model(tmp_path / "rewritten.keras")
    _, interpreter = _int8(rewritten)
    assert "HARD_SWISH" not in _op_names(interpreter)
    stats = delegation_stats(interpreter)
    assert (stats["partitions"], stats["ops_outside"]) == (1, {"SOFTMAX": 1})


def test_rewrite_handles_keras_applications_hard_sigmoid():
    import keras

    from edge_mobilenet.convert.rewrite import rewrite_hard_swish

    keras.utils.set_random_seed(3)
    model = keras.applications.MobileNetV3Small(input_shape=(SIZE, SIZE, 3), weights=None, alpha=0.75,
                                                classes=10, classifier_activation=None)
    calibrate_batch_norm(model, _batch())
    rewritten, report = rewrite_hard_swish(model)
    squeeze_excite = sum("squeeze_excite_mul" in layer.name for layer in model.layers)
    hard_swish = sum(isinstance(layer, keras.layers.Activation) for layer in model.layers) - 1
    assert len(report["rewritten"]) == squeeze_excite + hard_swish and report["left"] == []
    logits = model.predict(_batch(), verbose=0)
    assert np.abs(logits).max() > 0.05
    np.testing.assert_allclose(rewritten.predict(_batch(), verbose=0), logits, atol=1e-5)


def test_model_without_hard_swish_is_left_as_is():
    from edge_mobilenet.convert.rewrite import rewrite_hard_swish
    from edge_mobilenet.models import build_model

    model = build_model("mobilenet_v3_small_minimalistic", alpha=0.5, size=SIZE, classes=10)
    same, report = rewrite_hard_swish(model)
    assert same is model and report == {"rewritten": [], "left": []}


def test_hard_swish_inside_a_conv_is_left_and_said_why():
    import keras

    from edge_mobilenet.convert.rewrite import rewrite_hard_swish

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="hard_swish", name="conv_hs")(inputs)
    x = keras.layers.Activation("hard_swish", name="act_hs")(x)
    model = keras.Model(inputs, x)
    rewritten, report = rewrite_hard_swish(model)
    assert report["rewritten"] == ["act_hs"]
    assert [entry["layer"] for entry in report["left"]] == ["conv_hs"]
    assert "Conv2D" in report["left"][0]["reason"]
    batch = np.random.default_rng(0).uniform(-4, 4, (2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(rewritten(batch), model(batch), atol=1e-6)
