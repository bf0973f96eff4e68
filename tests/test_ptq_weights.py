"""Post-training int8 weight methods (convert/quant/weights.py) against real full-int8 TFLite conversion:
BN folding, the converter's weight grid, bias correction and AdaRound on tiny MobileNets (alpha 0.25,
32x32 px, 10 classes) with non-trivial BN statistics."""

from __future__ import annotations

import numpy as np
import pytest

from edge_mobilenet.convert.quant import weights as W

NAMES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small")
SEED = 0


def _tiny(name: str):
    """Built with a fixed seed, logits out, BN statistics and affine terms random (not identity)."""
    import keras

    from edge_mobilenet.models.registry import build_model

    keras.utils.set_random_seed(SEED)
    model = build_model(name, alpha=0.25, size=32, classes=10, classifier_activation=None)
    rng = np.random.default_rng(SEED)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n),
                               rng.normal(0, 0.5, n), rng.uniform(0.5, 2.0, n)])
    return model


def _images(name: str, count: int, seed: int) -> np.ndarray:
    """Smooth random images (8x8 noise upsampled: neighbouring pixels correlate, as in photos; white
    noise would make nearest rounding optimal for the first layer) in the model's input range (V3 takes
    pixels and rescales itself)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    low, high = (0.0, 255.0) if name.startswith("mobilenet_v3") else (-1.0, 1.0)
    coarse = rng.uniform(low, high, (count, 8, 8, 3)).astype(np.float32)
    return tf.image.resize(coarse, (32, 32), method="bilinear").numpy()


def _convert(model, calibration) -> bytes:
    from edge_mobilenet.convert.tflite import convert_keras

    return convert_keras(model, ["int8"], calibration)["int8"][0]


def _layer_inputs(model, names, images) -> dict[str, np.ndarray]:
    import keras

    probe = keras.Model(model.input, [model.get_layer(n).input for n in names])
    return {name: np.asarray(x) for name, x in zip(names, probe(images, training=False))}


@pytest.fixture(scope="module")
def prepared():
    """Per model name, built once: the float model, its folded copy, calibration and held-out images,
    the AdaRound result and its full-int8 TFLite file."""
    cache = {}

    def get(name):
        if name not in cache:
            model = _tiny(name)
            calibration, held_out = _images(name, 16, 1), _images(name, 8, 2)
            rounded, report = W.adaround(model, calibration, iterations=300)
            cache[name] = {"model": model, "folded": W.fold_batch_norms(model), "calibration": calibration,
                           "held_out": held_out, "rounded": rounded, "report": report,
                           "tflite": _convert(rounded, calibration)}
        return cache[name]

    return get


# -- BN folding ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_fold_batch_norms_keeps_outputs(name, prepared):
    import keras

    entry = prepared(name)
    model, folded = entry["model"], entry["folded"]
    bns = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert {layer.name for layer in folded.layers} == {layer.name for layer in model.layers} - set(bns)
    images = entry["held_out"]
    expected, got = (np.asarray(m(images, training=False)) for m in (model, folded))
    assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected)) + 1e-7
    for bn in bns:  # every conv that fed a BN now carries its shift in a bias
        conv = model.get_layer(bn)._inbound_nodes[0].input_tensors[0]._keras_history.operation
        assert not conv.use_bias and folded.get_layer(conv.name).use_bias


def test_fold_batch_norms_per_channel_math():
    """Depthwise (per channel) and pointwise (per output channel) kernels and biases by the formula."""
    model = _tiny("mobilenet_v1")
    folded = W.fold_batch_norms(model)
    for conv_name in ("conv_dw_3", "conv_pw_3"):
        conv, bn = model.get_layer(conv_name), model.get_layer(conv_name + "_bn")
        gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
        factor = gamma / np.sqrt(var + bn.epsilon)
        kernel = np.asarray(conv.kernel, np.float64)
        expected = kernel * (factor[:, None] if conv_name.startswith("conv_dw") else factor)
        new = folded.get_layer(conv_name)
        np.testing.assert_allclose(new.kernel.numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(new.bias.numpy(), beta - mean * factor, rtol=1e-5, atol=1e-6)
    assert model.get_layer("conv_pw_3").kernel.shape == folded.get_layer("conv_pw_3").kernel.shape


# -- the converter's grid ------------------------------------------------------------------------------

def test_converter_grid_is_per_output_channel_for_every_kernel_op(prepared):
    """V2 (conv, depthwise and Dense) converted as it is, BNs and all: every int8 kernel in the file is
    round(w / s) of our folded kernel, s = max|w| / 127 per output channel, zero-points 0, as
    tflite_weight_grid says; FULLY_CONNECTED is per-channel too (TF 2.21 full int8). The converter folds
    in float32, so a weight within a float32 hair of a half step may round the other way (why we fold
    ourselves before choosing weights)."""
    entry = prepared("mobilenet_v2")
    folded = entry["folded"]
    found = W.tflite_weights(_convert(entry["model"], entry["calibration"]), folded)
    assert set(found) == {layer.name for layer in folded.layers if W._kind(layer)}
    axes = {(found[n]["op"], found[n]["axis"]) for n in found}
    assert axes == {("CONV_2D", 0), ("DEPTHWISE_CONV_2D", 3), ("FULLY_CONNECTED", 0)}
    assert found["predictions"]["scale"].shape == (10,)
    assert W.tflite_weight_grid(folded.get_layer("predictions"))[1] == 1
    flipped = 0
    for name, weights in found.items():
        layer = folded.get_layer(name)
        q, scale = W._nearest_q(layer)
        np.testing.assert_allclose(weights["scale"], scale, rtol=1e-6, err_msg=name)
        assert not np.any(weights["zero_point"])
        steps = W._columns(layer, layer.kernel.numpy()) / scale
        differ = weights["q"] != q
        assert np.all(np.abs(np.abs(steps[differ] % 1) - 0.5) < 1e-5), name
        assert np.all(np.abs(weights["q"] - q) <= 1), name
        flipped += int(differ.sum())
    assert flipped <= 5


def test_grid_axes_follow_the_keras_kernel():
    model = _tiny("mobilenet_v1")
    folded = W.fold_batch_norms(model)
    conv, depthwise = folded.get_layer("conv_pw_2"), folded.get_layer("conv_dw_2")
    scale, axis = W.tflite_weight_grid(conv)
    assert axis == 3
    np.testing.assert_allclose(scale, np.max(np.abs(conv.kernel.numpy()), axis=(0, 1, 2)) / 127, rtol=1e-6)
    scale, axis = W.tflite_weight_grid(depthwise)
    assert axis == 2
    np.testing.assert_allclose(scale, np.max(np.abs(depthwise.kernel.numpy()), axis=(0, 1, 3)) / 127,
                               rtol=1e-6)


# -- AdaRound ------------------------------------------------------------------------------------------

def test_patches_reproduce_the_layer(prepared):
    """The sampled patches (all of them here) times the kernel columns are the layer's own output, for a
    3x3 stride-2 'same' conv, a 'valid' stride-2 depthwise after padding, a 1x1 conv and the Dense."""
    entry = prepared("mobilenet_v2")
    folded, images = entry["folded"], entry["held_out"][:2]
    names = ["Conv1", "block_1_depthwise", "block_3_project", "predictions"]
    for name, x in _layer_inputs(folded, names, images).items():
        layer = folded.get_layer(name)
        patches = W._patches(layer, x, 10 ** 6, np.random.default_rng(0))
        columns = W._columns(layer, layer.kernel.numpy())
        if patches.ndim == 3:
            got = np.einsum("pkc,kc->pc", patches, columns)
        else:
            got = patches @ columns
        expected = W._linear(layer, x, layer.kernel.numpy())
        np.testing.assert_allclose(got, expected.reshape(-1, columns.shape[1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["Conv2D", "DepthwiseConv2D"])
@pytest.mark.parametrize("kernel, strides, dilation, padding", [
    ((3, 3), (2, 2), (1, 1), "same"), ((2, 2), (2, 2), (1, 1), "same"), ((3, 3), (1, 1), (2, 2), "same"),
    ((5, 3), (2, 1), (1, 1), "valid")])
def test_sampled_patches_are_tensorflows_patches(kind, kernel, strides, dilation, padding):
    """The gathered windows equal tf.image.extract_patches' (zeros outside the image), same sampling."""
    import keras
    import tensorflow as tf

    x = np.random.default_rng(1).normal(size=(5, 13, 11, 6)).astype(np.float32)
    options = {"filters": 4} if kind == "Conv2D" else {}
    layer = getattr(keras.layers, kind)(kernel_size=kernel, strides=strides, dilation_rate=dilation,
                                        padding=padding, **options)
    layer(keras.Input(x.shape[1:]))
    every = tf.image.extract_patches(x, sizes=[1, *kernel, 1], strides=[1, *strides, 1],
                                     rates=[1, *dilation, 1], padding=padding.upper()).numpy()
    every = every.reshape(len(x), -1, every.shape[-1])
    for count in (10, 10 ** 4):
        rng, take = np.random.default_rng(0), min(-(-count // len(x)), every.shape[1])
        expected = np.concatenate([image[np.sort(rng.choice(len(image), take, replace=False))] for image in every])
        if kind == "DepthwiseConv2D":
            expected = expected.reshape(len(expected), kernel[0] * kernel[1], -1)
        np.testing.assert_array_equal(W._patches(layer, x, count, np.random.default_rng(0)), expected)


def test_adaround_leaves_kernels_already_on_the_grid(prepared):
    """A model whose kernels are on the int8 grid (as one dequantized from an int8 file) has nothing to
    learn: the same kernels come back, reported as on the grid."""
    entry = prepared("mobilenet_v2")
    rounded, report = W.adaround(entry["rounded"], entry["held_out"][:4], iterations=5)
    assert all(r.get("on_grid") and r["changed"] == 0 for r in report.values())
    for name in report:
        np.testing.assert_array_equal(rounded.get_layer(name).kernel.numpy(),
                                      entry["rounded"].get_layer(name).kernel.numpy())


def test_adaround_puts_kernels_exactly_on_the_grid(prepared):
    entry = prepared("mobilenet_v2")
    rounded, folded = entry["rounded"], entry["folded"]
    assert set(entry["report"]) == {layer.name for layer in folded.layers if W._kind(layer)}
    for name in entry["report"]:
        layer = rounded.get_layer(name)
        scale, _ = W.tflite_weight_grid(folded.get_layer(name))
        np.testing.assert_allclose(W.tflite_weight_grid(layer)[0], scale, rtol=1e-6)  # the grid stays
        q = W._columns(layer, layer.kernel.numpy()) / scale
        np.testing.assert_allclose(q, np.round(q), atol=1e-4)
        assert np.all(np.abs(np.round(q)).max(axis=0) == 127)
        np.testing.assert_array_equal(layer.bias.numpy(), folded.get_layer(name).bias.numpy())


def test_adaround_lowers_reconstruction_error(prepared):
    """On the calibration patches (the report) and on held-out images, layer by layer."""
    entry = prepared("mobilenet_v2")
    report = entry["report"]
    ratios = {n: r["mse_adaround"] / r["mse_nearest"] for n, r in report.items() if r["mse_nearest"] > 0}
    assert all(r <= 1.0 for r in ratios.values())
    assert np.mean(list(ratios.values())) < 0.7, ratios
    assert np.mean([r["changed"] for r in report.values()]) > 0.01
    folded, rounded = entry["folded"], entry["rounded"]
    names = ["Conv1", "block_2_depthwise", "block_5_expand", "block_12_project", "Conv_1"]
    held_out = []
    for name, x in _layer_inputs(folded, names, entry["held_out"]).items():
        float_layer, learned = folded.get_layer(name), rounded.get_layer(name)
        q, scale = W._nearest_q(float_layer)
        nearest = (q * scale).reshape(float_layer.kernel.shape)
        target = W._linear(float_layer, x, float_layer.kernel.numpy())
        errors = [np.mean((W._linear(float_layer, x, kernel) - target) ** 2)
                  for kernel in (nearest, learned.kernel.numpy())]
        held_out.append(errors[1] / errors[0])
    assert max(held_out) < 1.0 and np.mean(held_out) < 0.8, dict(zip(names, held_out))


@pytest.mark.parametrize("name", NAMES)
def test_tflite_carries_the_adarounded_weights(name, prepared):
    """Real full-int8 conversion: every adarounded layer's int8 weights in the file are exactly the q
    chosen, with the same scales (zero-points 0); the choice is not nearest rounding of the float
    kernel for a share of weights."""
    entry = prepared(name)
    rounded, folded = entry["rounded"], entry["folded"]
    found = W.tflite_weights(entry["tflite"], rounded)
    assert set(found) == set(entry["report"])
    assert all(W.weights_on_grid(entry["tflite"], rounded).values())
    changed = 0
    for layer_name in entry["report"]:
        layer = rounded.get_layer(layer_name)
        scale, _ = W.tflite_weight_grid(layer)
        chosen = np.round(W._columns(layer, layer.kernel.numpy()) / scale).astype(np.int32)
        np.testing.assert_array_equal(found[layer_name]["q"], chosen, err_msg=layer_name)
        np.testing.assert_allclose(found[layer_name]["scale"], scale, rtol=1e-6, err_msg=layer_name)
        assert not np.any(found[layer_name]["zero_point"])
        changed += int(np.sum(chosen != W._nearest_q(folded.get_layer(layer_name))[0]))
    assert changed > 0


# -- bias correction -----------------------------------------------------------------------------------

def _biased_layer(model, name: str, rng) -> None:
    """Weights at q + 0.55 steps: each rounds up by 0.45 of a step, a per-channel systematic error;
    the first weight of each channel sits at 127 steps, fixing the grid."""
    layer = model.get_layer(name)
    kernel = layer.kernel.numpy()
    columns = W._columns(layer, kernel)
    scale = rng.uniform(0.5, 1.5, columns.shape[1]) * 0.02
    steps = rng.integers(-100, 100, columns.shape) + 0.55
    steps[0] = 127
    layer.kernel.assign((steps * scale).astype(np.float32).reshape(kernel.shape))


def _channel_mean_error(model, reference, name: str, images) -> np.ndarray:
    import keras

    outputs = [np.asarray(keras.Model(m.input, m.get_layer(name).output)(images, training=False))
               for m in (model, reference)]
    error = outputs[0].astype(np.float64) - outputs[1]
    return error.reshape(-1, error.shape[-1]).mean(axis=0)


@pytest.fixture(scope="module")
def injected():
    """Tiny V1, folded, with conv_pw_4's weights biased; its int8-weight model uncorrected and corrected."""
    name, layer = "mobilenet_v1", "conv_pw_4"
    folded = W.fold_batch_norms(_tiny(name))
    _biased_layer(folded, layer, np.random.default_rng(3))
    calibration, held_out = _images(name, 32, 1), _images(name, 16, 2)
    quantized, report = W.bias_correct(folded, calibration, layers=[])  # int8 weights, no correction
    assert report == {}
    corrected, report = W.bias_correct(folded, calibration, layers=[layer])
    return {"layer": layer, "folded": folded, "quantized": quantized, "corrected": corrected,
            "report": report, "calibration": calibration, "held_out": held_out}


def test_bias_correction_removes_an_injected_shift(injected):
    layer, folded = injected["layer"], injected["folded"]
    quantized, corrected = injected["quantized"], injected["corrected"]
    assert set(injected["report"]) == {layer} and injected["report"][layer]["mean_abs_shift"] > 0
    before = _channel_mean_error(quantized, folded, layer, injected["calibration"])
    after = _channel_mean_error(corrected, folded, layer, injected["calibration"])
    assert np.all(before > 0)  # the injected error: every channel shifted up (its inputs are >= 0)
    assert np.max(np.abs(after)) < 1e-3 * np.max(np.abs(before))
    before = _channel_mean_error(quantized, folded, layer, injected["held_out"])
    after = _channel_mean_error(corrected, folded, layer, injected["held_out"])
    assert np.mean(np.abs(after)) < 0.1 * np.mean(np.abs(before))
    # only the bias moved; the kernel is the same int8 grid point as uncorrected
    np.testing.assert_array_equal(corrected.get_layer(layer).kernel.numpy(),
                                  quantized.get_layer(layer).kernel.numpy())


def _tflite_output_of(tflite: bytes, layer: str, images: np.ndarray) -> np.ndarray:
    """The dequantized output of the int8 op computing ``layer`` (with its fused activation)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": it is
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_content=tflite, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    [index] = [op["outputs"][0] for op in interpreter._get_ops_details()
               if op["op_name"] in W.TFLITE_KERNEL_OPS and f"/{layer}_1/" in details[op["inputs"][1]]["name"]]
    source = interpreter.get_input_details()[0]
    scale, zero = source["quantization"]
    outputs = []
    for image in images:
        interpreter.set_tensor(source["index"], np.clip(np.round(image / scale + zero), -128, 127)
                               .astype(np.int8)[None])
        interpreter.invoke()
        scale_out, zero_out = details[index]["quantization"]
        outputs.append((interpreter.get_tensor(index).astype(np.float32) - zero_out) * scale_out)
    return np.concatenate(outputs)


def test_bias_correction_survives_int8_conversion(injected):
    """Real full-int8 models (activations quantized too): the corrected layer's mean output error per
    channel against float drops well below the uncorrected one's, and the int8 weights are the ones
    chosen."""
    import keras

    layer, folded, held_out = injected["layer"], injected["folded"], injected["held_out"]
    relu = keras.Model(folded.input, folded.get_layer(layer + "_relu").output)
    expected = np.asarray(relu(held_out, training=False))
    errors = []
    for model in (injected["quantized"], injected["corrected"]):
        tflite = _convert(model, injected["calibration"])
        assert all(W.weights_on_grid(tflite, model).values())
        error = _tflite_output_of(tflite, layer, held_out) - expected
        errors.append(np.mean(np.abs(error.reshape(-1, error.shape[-1]).mean(axis=0))))
    assert errors[1] < 0.2 * errors[0], errors


def test_bias_correction_is_sequential_over_all_layers(prepared):
    """Every layer corrected: each layer's mean output per channel matches float on the calibration set,
    including the shift it inherits from the earlier int8-weight layers (V3: SE branches, hard-swish)."""
    entry = prepared("mobilenet_v3_small")
    folded, calibration = entry["folded"], entry["calibration"]
    quantized, _ = W.bias_correct(entry["model"], calibration, layers=[])
    corrected, report = W.bias_correct(entry["model"], calibration)
    assert set(report) == {layer.name for layer in folded.layers if W._kind(layer)}
    for name in ("expanded_conv_3_depthwise", "expanded_conv_6_squeeze_excite_conv_1", "conv_1", "logits"):
        before = _channel_mean_error(quantized, folded, name, calibration)
        after = _channel_mean_error(corrected, folded, name, calibration)
        assert np.max(np.abs(after)) < 1e-3 * np.max(np.abs(before)), name


def test_adaround_with_bias_correction_and_unknown_layers(prepared):
    from edge_mobilenet.errors import EdgeError

    entry = prepared("mobilenet_v1")
    names = ["conv_pw_2", "conv_dw_5", "conv_preds"]
    rounded, report = W.adaround(entry["model"], entry["calibration"], layers=names, iterations=100,
                                 bias_correction=True)
    assert set(report) == set(names)
    assert all("bias_correction" in report[n] for n in names)
    # bias correction measured the int8-weight model: other kernels are put where the converter rounds them
    float_layer = entry["folded"].get_layer("conv_pw_3")
    q, scale = W._nearest_q(float_layer)
    np.testing.assert_array_equal(rounded.get_layer("conv_pw_3").kernel.numpy(),
                                  (q * scale).astype(np.float32).reshape(float_layer.kernel.shape))
    np.testing.assert_array_equal(rounded.get_layer("conv_pw_3").bias.numpy(), float_layer.bias.numpy())
    assert not np.array_equal(rounded.get_layer("conv_pw_2").bias.numpy(),
                              entry["folded"].get_layer("conv_pw_2").bias.numpy())
    with pytest.raises(EdgeError, match="conv_pw_2_bn"):
        W.adaround(entry["model"], entry["calibration"], layers=["conv_pw_2_bn"])
