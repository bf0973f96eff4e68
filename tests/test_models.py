"""Builders for every family: shapes, options, fixed names, and agreement with keras.applications."""

import numpy as np
import pytest

from edge_mobilenet.errors import EdgeError
from edge_mobilenet.models import build_model, model_names

SMALL = dict(alpha=0.25, size=32, classes=7)


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_builds_and_runs(name):
    model = build_model(name, **SMALL)
    batch = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    out = model.predict(batch, verbose=0)
    assert out.shape == (2, 7)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"])
def test_include_top_false_with_pooling(name):
    features = build_model(name, alpha=0.5, size=64, include_top=False, pooling="avg")
    assert len(features.output.shape) == 2
    spatial = build_model(name, alpha=0.5, size=64, include_top=False)
    assert tuple(spatial.output.shape[1:3]) == (2, 2)


def test_width_multiplier_and_resolution_change_the_model():
    wide = build_model("mobilenet_v1", alpha=1.0, size=128)
    narrow = build_model("mobilenet_v1", alpha=0.5, size=128)
    assert wide.get_layer("conv_pw_13").output.shape[-1] == 1024
    assert narrow.get_layer("conv_pw_13").output.shape[-1] == 512
    assert build_model("mobilenet_v1", alpha=0.5, size=96).get_layer("conv_pw_13").output.shape[1] == 3


def test_dropout_option_is_used():
    model = build_model("mobilenet_v3_small", alpha=0.5, size=32, classes=3, dropout=0.35)
    assert model.get_layer("dropout").rate == pytest.approx(0.35)


def test_layer_names_are_fixed_and_patterned():
    v2 = build_model("mobilenet_v2", **SMALL)
    names = {l.name for l in v2.layers}
    assert {"Conv1", "bn_Conv1", "expanded_conv_depthwise", "block_1_expand", "block_16_project_BN",
            "block_2_add", "Conv_1", "predictions"} <= names
    v3 = build_model("mobilenet_v3_large", **SMALL)
    names = {l.name for l in v3.layers}
    assert {"rescaling", "conv", "expanded_conv_3_squeeze_excite_conv", "expanded_conv_14_add",
            "expanded_conv_14_project_bn", "conv_2", "logits"} <= names
    # building twice gives the same names (no auto-numbered layers)
    again = build_model("mobilenet_v3_large", **SMALL)
    assert [l.name for l in v3.layers] == [l.name for l in again.layers]


@pytest.mark.parametrize("ours,theirs,kwargs", [
    ("mobilenet_v1", "MobileNet", dict(alpha=0.5)),
    ("mobilenet_v2", "MobileNetV2", dict(alpha=0.35)),
    ("mobilenet_v3_small", "MobileNetV3Small", dict(alpha=0.75)),
    ("mobilenet_v3_large_minimalistic", "MobileNetV3Large", dict(alpha=1.0, minimalistic=True)),
])
def test_matches_keras_applications_topology(ours, theirs, kwargs):
    """Same weights by name -> same outputs as keras.applications with random init."""
    import keras

    from edge_mobilenet.train import copy_weights_by_name

    reference = getattr(keras.applications, theirs)(weights=None, input_shape=(96, 96, 3),
                                                    classes=10, **kwargs)
    model = build_model(ours, alpha=kwargs["alpha"], size=96, classes=10)
    assert model.count_params() == reference.count_params()
    weighted = [l for l in model.layers if l.weights]
    assert copy_weights_by_name(reference, model) == len(weighted)
    scale = 255.0 if "v3" in ours else 1.0
    batch = np.random.default_rng(1).uniform(0, scale, (2, 96, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(batch, verbose=0), reference.predict(batch, verbose=0),
                               atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(alpha=0), "alpha=0"),
    (dict(alpha=-1.0), "alpha=-1.0"),
    (dict(size=16), "size=16"),
    (dict(classes=0), "classes=0"),
    (dict(pooling="median"), "pooling=median"),
    (dict(dropout=1.5), "dropout=1.5"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(EdgeError, match=message):
        build_model("mobilenet_v2", **kwargs)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(EdgeError, match="unknown model 'mobilenet_v4'.*mobilenet_v1"):
        build_model("mobilenet_v4")
