"""Same Keras models, two fresh processes: byte-identical float and int8 QDQ ONNX files.

tf2onnx names the constants it merges (Relu6's 0 and 6, equal batch-norm factors, hard-swish's 3 and
1/6) after whichever copy it met first, numbers its names in an order that varies between processes
(``canonical_names`` fixes both) and leaves a varying number of layout round trips (no-op Reshapes)
in MobileNetV3 (``drop_layout_round_trips``). Each conversion runs in its own ``python -c``. V1's QDQ
file loses its shared constants (Clip and batch norm fold into the convolutions); V3's keeps some.
"""

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_mobilenet.convert import onnx_convert

# key: (model, alpha, weights). "fresh": as built (every batch norm alike, so tf2onnx merges their
# factors too); "varied": random batch-norm statistics and biases, like a trained model (V3's all-zero
# fresh biases make tf2onnx's transpose optimizer give up, leaving no Reshapes to drop)
MODELS = {"v1": ("mobilenet_v1", 0.25, "fresh"), "v3": ("mobilenet_v3_small", 0.5, "varied")}
SIZE = 32

BUILD = textwrap.dedent("""
    import sys, keras, numpy as np
    from edge_mobilenet.models.registry import build_model
    for key, name, alpha, weights in zip(*[iter(sys.argv[2:])] * 4):
        keras.utils.set_random_seed(7)
        model = build_model(name, alpha=float(alpha), size=int(sys.argv[1]), classes=3)
        rng = np.random.default_rng(7)
        for layer in model.layers if weights == "varied" else ():
            values = layer.get_weights()
            if isinstance(layer, keras.layers.BatchNormalization):
                values = [rng.uniform(0.5, 1.5, values[0].shape), rng.normal(0, 0.1, values[1].shape),
                          rng.normal(0, 0.1, values[2].shape), rng.uniform(0.5, 1.5, values[3].shape)]
            elif getattr(layer, "use_bias", False):
                values[-1] = rng.normal(0, 0.1, values[-1].shape)
            layer.set_weights(values)
        model.save(f"{key}.keras")
""")

# canonical float + QDQ through the project's functions; raw = tf2onnx's own proto, saved unchanged
CONVERT = textwrap.dedent("""
    import sys, keras, numpy as np, onnx, tensorflow as tf, tf2onnx
    from edge_mobilenet.convert import onnx_convert as oc
    size, run = int(sys.argv[1]), sys.argv[2]
    calibration = np.random.default_rng(0).uniform(-1, 1, (8, size, size, 3)).astype(np.float32)
    signature = (tf.TensorSpec((1, size, size, 3), tf.float32, name=oc.INPUT_NAME),)
    for key in sys.argv[3:]:
        model, out = keras.saving.load_model(f"{key}.keras"), f"{run}.{key}"
        oc.convert_onnx(model, out + ".onnx")
        oc.quantize_onnx(out + ".onnx", out + ".int8.onnx", calibration)
        raw, _ = tf2onnx.convert.from_keras(model, input_signature=signature)
        onnx.save(raw, out + ".raw.onnx")
        oc.quantize_onnx(out + ".raw.onnx", out + ".raw.int8.onnx", calibration)
""")

FILES = [(key, suffix) for key in MODELS for suffix in (".onnx", ".int8.onnx")]


def _python(folder, script: str, *args) -> None:
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=folder,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Runs ``a`` and ``b``: the same models converted and quantized in two fresh processes."""
    folder = tmp_path_factory.mktemp("onnx-determinism")
    _python(folder, BUILD, SIZE, *[v for key, spec in MODELS.items() for v in (key, *spec)])
    for run in ("a", "b"):
        _python(folder, CONVERT, SIZE, run, *MODELS)
    return folder


@pytest.mark.parametrize("key, suffix", FILES)
def test_two_processes_write_the_same_bytes(folder, key, suffix):
    first = (folder / f"a.{key}{suffix}").read_bytes()
    assert first == (folder / f"b.{key}{suffix}").read_bytes()


def _run(path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {feed: row[None]})[0] for row in inputs])


@pytest.mark.parametrize("key, suffix", FILES)
def test_canonical_model_gives_the_raw_outputs_exactly(folder, key, suffix):
    """Renaming and dropping no-op Reshapes are exact: the raw tf2onnx model's outputs bit for bit."""
    inputs = np.random.default_rng(1).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    canonical = _run(folder / f"a.{key}{suffix}", inputs)
    raw = _run(folder / f"a.{key}.raw{suffix}", inputs)
    assert canonical.shape == (4, 3) and np.all(np.isfinite(canonical))
    assert float(np.max(np.abs(canonical - raw))) == 0.0


def test_shared_constants_are_named_by_content(folder):
    """Relu6's clip bounds, read by every Relu6, get a content name, not one layer's."""
    model = onnx.load(str(folder / "a.v1.onnx"))
    clips = [node for node in model.graph.node if node.op_type == "Clip"]
    assert len(clips) > 2
    bounds = {name for node in clips for name in node.input[1:]}
    assert len(bounds) == 2 and all(name.startswith("shared_") for name in bounds)
    names = [t.name for t in model.graph.initializer]
    assert len(set(names)) == len(names)


def test_layout_round_trips_are_dropped(folder):
    """V3's squeeze-excite convolutions read the pooled [1, C, 1, 1] tensor without a Reshape."""
    raw = onnx.load(str(folder / "a.v3.raw.onnx"))
    reshapes = sum(node.op_type == "Reshape" for node in raw.graph.node)
    dropped = onnx_convert.drop_layout_round_trips(raw)
    assert dropped > 0 and sum(node.op_type == "Reshape" for node in raw.graph.node) == reshapes - dropped
    onnx.checker.check_model(raw)
    assert onnx_convert.drop_layout_round_trips(onnx.load(str(folder / "a.v3.onnx"))) == 0


@pytest.mark.parametrize("key", MODELS)
def test_canonicalising_again_changes_nothing(folder, key):
    path = str(folder / f"a.{key}.onnx")
    model = onnx.load(path)
    assert onnx_convert.drop_layout_round_trips(model) == 0
    onnx_convert.canonical_names(model.graph)
    assert model.SerializeToString() == onnx.load(path).SerializeToString()
