"""Cross-layer equalization (quant/equalize.py) on a small real Keras model: the function is kept, the
ReLU pair's channel ranges are equalized, ReLU6 channels that reach the clip are left alone."""

import numpy as np
import pytest

from edge_mobilenet.convert.quant import equalize as E
from edge_mobilenet.convert.quant import weights as W


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="first")(inputs)
    x = keras.layers.BatchNormalization(name="first_bn")(x)
    x = keras.layers.ReLU(name="first_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pad")(x)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="depthwise_bn")(x)
    x = keras.layers.ReLU(6.0, name="depthwise_relu6")(x)
    x = keras.layers.Conv2D(4, 1, name="project")(x)
    net = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    first = net.get_layer("first")
    kernel = first.kernel.numpy() * np.geomspace(0.05, 5, 8).astype(np.float32)  # uneven channel ranges
    first.kernel.assign(kernel)
    bn = net.get_layer("depthwise_bn")
    bn.gamma.assign(np.array([0.2, 0.3, 0.5, 1, 2, 4, 8, 16], np.float32))  # some channels clip at 6
    return net


def test_pairs_through_relu_padding_and_relu6(model):
    pairs = [(a.name, b.name, clip) for a, b, clip in E.equalizable_pairs(W._graph(W.fold_batch_norms(model)))]
    assert pairs == [("first", "depthwise", np.inf), ("depthwise", "project", 6.0)]


def test_equalization_keeps_the_function_and_evens_the_ranges(model):
    images = np.random.default_rng(1).uniform(-1, 1, (16, 12, 12, 3)).astype(np.float32)
    new, report = E.equalize(model, images)
    np.testing.assert_allclose(new.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)
    relu = report["first"]
    assert relu["activation"] == "relu" and relu["scaled_channels"] == 8
    assert relu["range_spread_after"] < relu["range_spread_before"]
    # the ReLU pair ends equalized: each channel's range in the first layer equals its range in the next
    ratio = E._out_range(new.get_layer("first")) / E._in_range(new.get_layer("depthwise"))
    np.testing.assert_allclose(ratio, 1.0, rtol=0.05)
    relu6 = report["depthwise"]
    assert relu6["activation"] == "relu6" and relu6["held_at_clip"] >= 1
    # a channel that reaches the clip keeps its scale: its pre-activation values are unchanged
    folded = W.fold_batch_norms(model)
    peaks = E._peaks(W._graph(folded), [folded.get_layer("depthwise")], images)["depthwise"]
    after = E._peaks(W._graph(new), [new.get_layer("depthwise")], images)["depthwise"]
    clipped = peaks >= 6
    np.testing.assert_allclose(after[clipped], peaks[clipped], rtol=1e-5)
    assert np.all(after[~clipped] <= 6 / E.CLIP_HEADROOM + 1e-5)
