"""Settings, recipes and device profiles are validated before anything runs: one line naming the
option, key or file, exit status 2, no traceback, nothing loaded, trained or benchmarked."""

from __future__ import annotations

import json

import pytest

RECIPE_MODEL = '[[model]]\nname = "mobilenet_v1"\nalpha = 0.25\nsize = 32\n'
DETECTOR_MODEL = '[[model]]\nname = "ssdlite_mobilenet_v2"\nalpha = 0.35\nsize = 64\n'


def _one_line(result, message):
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("edge-bench: error:"), result.output
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("recipe,message", [
    ('formts = ["fp32"]\n' + RECIPE_MODEL, "formts is not a recipe key; did you mean 'formats'?"),
    ('io = "int4"\n' + RECIPE_MODEL, "io must be one of int8, uint8, float; received 'int4'"),
    ('formats = "fp32"\n' + RECIPE_MODEL, "formats must be a list, not a string 'fp32'"),
    ('[model]\nname = "mobilenet_v1"\n', "model must be [[model]] tables (an array), not one [model] table"),
    ('[calibration]\nfolder = "x"\ncuont = 3\n' + RECIPE_MODEL, "calibration.cuont is not a recipe key; did you mean 'count'?"),
    ('[calibration]\ncount = "many"\n' + RECIPE_MODEL, "calibration.count must be an integer, not a string"),
    (RECIPE_MODEL + "train = { epochs = -3 }\n", "model[0].train.epochs must be >= 1; received -3"),
    (RECIPE_MODEL + "train = { epoch = 3 }\n", "model[0].train.epoch is not a recipe key; did you mean 'epochs'?"),
    (RECIPE_MODEL + 'size = "big"\n', "not valid TOML"),  # a key given twice
    ('[[model]]\nalpha = 0.5\n', "model[0] needs exactly one of name"),
    ('formats = ["fp32", "int4"]\n' + RECIPE_MODEL, "formats unknown format 'int4'"),
    ("", "the recipe file is empty"),
    (DETECTOR_MODEL + "train = { validation_split = 0.1 }\n", "model[0].train.validation_split is not a recipe key"),
    (DETECTOR_MODEL + "train = { images = 0 }\n", "model[0].train.images must be >= 1; received 0"),
    (DETECTOR_MODEL + "classes = 90\ntrain = { epochs = 1 }\n", "model[0].classes is not a detector key"),
    (DETECTOR_MODEL, "model[0] ssdlite_mobilenet_v2 is a detector: it needs a train table"),
    (RECIPE_MODEL + "train = { images = 100 }\n", "model[0].train.images is not a recipe key"),
])
def test_bad_recipes(cli, tmp_path, recipe, message):
    path = tmp_path / "recipe.toml"
    path.write_text(recipe)
    result = cli("quantize", "--recipe", path, "--output", tmp_path / "out")
    _one_line(result, message)
    assert str(path) in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--count", "0"], "Invalid value for '--count'"),
    (["--eval-count", "0"], "Invalid value for '--eval-count'"),
    (["--seed", "-1"], "Invalid value for '--seed'"),
    (["--target-accuracy", "lots"], "target accuracy must look like 99%"),
    (["--formats", "fp32,int4"], "unknown format 'int4'"),
])
def test_bad_quantize_options(cli, tmp_path, args, message):
    result = cli("quantize", "--model", "mobilenet_v1", *args, "--output", tmp_path / "out")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--min-seconds", "inf"], "--min-seconds must be a finite number >= 0; received inf"),
    (["--max-seconds", "nan"], "--max-seconds must be a finite number >= 0; received nan"),
    (["--threads", "0"], "--threads must be >= 1; received 0"),
    (["--cpus", "a-b"], "--cpus 'a-b' is not a CPU list"),
    (["--min-seconds", "5", "--max-seconds", "1"], "--max-seconds (1.0) is below --min-seconds (5.0)"),
    (["--eval-count", "0"], "--eval-count must be >= 1; received 0"),
])
def test_bad_bench_settings_are_refused_on_the_host(cli, tmp_path, args, message):
    result = cli("bench", tmp_path, *args, "--output", tmp_path / "r.json")
    _one_line(result, message)
    assert not (tmp_path / "r.json").exists()


def test_bench_output_that_is_a_folder_or_not_results_is_refused_before_running(cli, tmp_path):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "manifest.json").write_text(json.dumps({"schema": 2, "artifacts": []}))
    _one_line(cli("bench", artifacts, "--output", artifacts), "lists no artifacts")
    other = tmp_path / "notes.json"
    other.write_text('{"hello": 1}')
    from edge_mobilenet.contracts.results import ResultsFile
    from edge_mobilenet.errors import EdgeError

    with pytest.raises(EdgeError, match="notes.json: not an edge-bench results file"):
        ResultsFile(other)
    assert json.loads(other.read_text()) == {"hello": 1}


@pytest.mark.parametrize("profile,message", [
    ('transport = "ssh"\nhots = "pi.local"\n', "unknown setting 'hots' (did you mean 'host'?)"),
    ('transport = "ssh"\nport = "22"\n', "port must be an integer, not a string '22'"),
    ('transport = "carrier-pigeon"\n', "transport must be one of local, ssh, adb"),
    ('threads = 0\n', "threads must be >= 1; received 0"),
])
def test_bad_device_profiles(cli, tmp_path, profile, message):
    path = tmp_path / "board.toml"
    path.write_text(profile)
    _one_line(cli("bench", tmp_path, "--device", path, "--output", tmp_path / "r.json"), message)


@pytest.mark.parametrize("kwargs,message", [
    ({"epochs": 0}, "--epochs must be an integer >= 1; received 0"),
    ({"batch_size": 0}, "--batch-size must be an integer >= 1; received 0"),
    ({"learning_rate": float("nan")}, "--learning-rate must be a finite number > 0; received nan"),
    ({"learning_rate": -1.0}, "--learning-rate must be a finite number > 0; received -1.0"),
    ({"validation_split": 1.5}, "--validation-split must be between 0 and 1"),
])
def test_bad_train_settings(kwargs, message):
    from edge_mobilenet.errors import EdgeError
    from edge_mobilenet.train import TrainSettings

    with pytest.raises(EdgeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainSettings(**kwargs)


def test_a_nan_loss_stops_training_with_an_error(tmp_path):
    from edge_mobilenet.errors import EdgeError
    from edge_mobilenet.train import TrainSettings, train_model

    with pytest.raises(EdgeError, match="diverged: the loss became NaN/inf"):
        train_model(TrainSettings(epochs=3, learning_rate=1e30, output_dir=str(tmp_path), progress=False))
    assert not list(tmp_path.glob("*.keras"))


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b""), "corrupt model file (empty)"),
    (lambda p: p.write_bytes(b"PK\x03\x04 half a zip"), "corrupt or truncated .keras file (not a zip archive)"),
    (lambda p: p.mkdir(), "is a folder, not a Keras model file"),
])
def test_bad_model_files(cli, tmp_path, make, message):
    path = tmp_path / "x.keras"
    make(path)
    _one_line(cli("quantize", "--model", path, "--formats", "fp32", "--output", tmp_path / "out"), message)


def test_a_model_name_too_long_is_one_line(cli, tmp_path):
    path = tmp_path / ("m" * 300 + ".keras")
    _one_line(cli("quantize", "--model", path, "--formats", "fp32", "--output", tmp_path / "out"),
              "File name too long")


def test_a_runtime_that_cannot_run_the_artifact_is_refused(cli, tmp_path):
    import shutil
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures" / "before_records"
    for name in ("manifest.json", "mobilenet_v1_0.25_32_random.int8.tflite"):
        shutil.copy(fixtures / name, tmp_path / name)
    _one_line(cli("bench", tmp_path, "--runtime", "onnxruntime", "--output", tmp_path / "r.json"),
              "--runtime onnxruntime runs onnx artifacts only; mobilenet_v1_0.25_32_random.int8.tflite is a TFLite")


def test_shipped_device_profiles_load():
    from edge_mobilenet.bench.devices import PROFILE_DIR, load_profile

    for path in sorted(PROFILE_DIR.glob("*.toml")):
        assert load_profile(path.stem).name == path.stem


def test_every_shipped_recipe_is_valid():
    from pathlib import Path

    from edge_mobilenet.convert.recipe import load_recipe

    recipes = sorted((Path(__file__).resolve().parents[1] / "converters").glob("*.toml"))
    assert len(recipes) >= 2
    for path in recipes:
        assert load_recipe(path).models, path
