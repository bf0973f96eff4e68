"""Registry names (random weights) as float sources: one seeded file per name/alpha/size/classes, its
BatchNormalization statistics from calibration images (so int8 MobileNetV3 is not split into ~20 XNNPACK
partitions by ranges no trained model has), reused while it matches, rebuilt with one line when it does
not, recorded in the manifest. Real Keras, TFLite and LiteRT at tiny sizes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_mobilenet.contracts.manifest import read_manifest
from edge_mobilenet.convert.batch import ModelRequest, quantize
from edge_mobilenet.convert.settings import QuantizeSettings
from edge_mobilenet.convert.sources import (BATCH_NORM_IMAGES, batch_norm_images, current_random_source,
                                            load_float_model, prepare_random_source, random_source_stem)
from edge_mobilenet.data.calibration import CalibrationSource, choose_files, content_hash
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file

REPO = Path(__file__).resolve().parents[1]
DIGITS = CalibrationSource(str(REPO / "calibration_data" / "digits"), count=20)
TINY = {"alpha": 0.25, "size": 32, "classes": 10}


def _prepare(folder: Path, name: str = "mobilenet_v1", calibration=DIGITS, **shape) -> Path:
    return prepare_random_source(name, **{**TINY, **shape}, output_dir=folder, calibration=calibration)


def _metrics(path: Path) -> dict:
    return json.loads(path.with_name(f"{path.stem}.metrics.json").read_text())


def test_stem_names_classes_unless_1000():
    assert random_source_stem("mobilenet_v1", alpha=0.25, size=32, classes=1000) == "mobilenet_v1_0.25_32_random"
    assert random_source_stem("mobilenet_v1", alpha=0.25, size=32, classes=10) == \
        "mobilenet_v1_0.25_32_10classes_random"


def test_same_settings_reuse_the_file_and_record_its_hash(tmp_path):
    python_state, numpy_state = random.getstate(), np.random.get_state()
    first = _prepare(tmp_path)
    assert random.getstate() == python_state, "the global Python RNG was left changed"
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    written = first.stat()
    second = _prepare(tmp_path)
    assert second == first and second.stat().st_mtime_ns == written.st_mtime_ns
    assert second.stat().st_ino == written.st_ino
    metrics = _metrics(first)
    chosen = choose_files(batch_norm_images(DIGITS))
    assert metrics["trained_weights"] is False and metrics["seed"] == 0 and metrics["classes"] == 10
    assert metrics["batch_norm_statistics"] == {
        "source": "calibration", "folder": DIGITS.folder, "seed": 0, "images": BATCH_NORM_IMAGES,
        "sha256": content_hash(chosen, Path(DIGITS.folder))}
    assert metrics["keras_sha256"] == sha256_file(first)
    loaded = [load_float_model("mobilenet_v1", **TINY, output_dir=tmp_path, calibration=DIGITS) for _ in "ab"]
    assert [m.sha256 for m in loaded] == [sha256_file(first)] * 2 and loaded[0].path == first
    assert not loaded[0].trained_weights and loaded[0].batch_norm_statistics == metrics["batch_norm_statistics"]
    # the calibration count does not choose the statistics' images: still current
    assert current_random_source("mobilenet_v1", **TINY, output_dir=tmp_path,
                                 calibration=replace(DIGITS, count=200)) == first


def test_weights_are_seeded_and_classes_give_another_file(tmp_path):
    a, b = _prepare(tmp_path / "a"), _prepare(tmp_path / "b")
    other = _prepare(tmp_path / "a", classes=7)
    assert other.name == "mobilenet_v1_0.25_32_7classes_random.keras" and a.is_file()
    models = [load_float_model(str(p), output_dir=tmp_path).model for p in (a, b, other)]
    for x, y in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_array_equal(x, y)
    assert int(models[2].output.shape[-1]) == 7


def test_untouched_statistics_differ_and_replace_the_file(tmp_path, capsys):
    calibrated = _prepare(tmp_path)
    moving_mean = _moving_mean(calibrated, tmp_path)
    untouched = _prepare(tmp_path, calibration=None)
    assert untouched == calibrated and _metrics(untouched)["batch_norm_statistics"] == {"source": "untouched"}
    assert not np.any(_moving_mean(untouched, tmp_path)) and np.any(moving_mean)
    assert capsys.readouterr().err.count("rebuilding") == 1


def _moving_mean(path: Path, folder: Path) -> np.ndarray:
    model = load_float_model(str(path), output_dir=folder).model
    layer = next(l for l in model.layers if type(l).__name__ == "BatchNormalization")
    return np.asarray(layer.moving_mean)


@pytest.mark.parametrize("damage,reason", [
    (lambda keras, metrics: keras.write_bytes(b"PK\x03\x04 not a model"), "bytes are not those"),
    (lambda keras, metrics: metrics.write_text("{half"), "not valid JSON"),
    (lambda keras, metrics: metrics.unlink(), "does not exist"),
    (lambda keras, metrics: metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "seed": 3})),
     "seed is 3, wanted 0"),
])
def test_a_damaged_or_mismatched_file_is_rebuilt_with_one_line(tmp_path, capsys, damage, reason):
    path = _prepare(tmp_path)
    damage(path, path.with_name(f"{path.stem}.metrics.json"))
    capsys.readouterr()
    assert current_random_source("mobilenet_v1", **TINY, output_dir=tmp_path, calibration=DIGITS) is None
    float_model = load_float_model("mobilenet_v1", **TINY, output_dir=tmp_path, calibration=DIGITS)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rebuilding {path}: ") and reason in lines[0], lines
    assert float_model.sha256 == sha256_file(path) == _metrics(path)["keras_sha256"]


def test_a_registry_name_without_calibration_images_is_one_line(tmp_path):
    with pytest.raises(EdgeError, match="need calibration images for their BatchNormalization statistics"):
        load_float_model("mobilenet_v1", **TINY, output_dir=tmp_path)
    with pytest.raises(EdgeError, match=r"^random weights take .* calibration folder does not exist"):
        _prepare(tmp_path, calibration=CalibrationSource(str(tmp_path / "missing")))


def test_other_calibration_images_rebuild_the_source_and_its_float_artifact(tmp_path):
    settings = QuantizeSettings(formats=("fp32",), calibration=DIGITS, output_dir=str(tmp_path), progress=False)
    first = quantize([ModelRequest("mobilenet_v1", ("fp32",), **TINY)], settings).entries[0]
    again = quantize([ModelRequest("mobilenet_v1", ("fp32",), **TINY)], settings).entries[0]
    assert again == first  # reused, same source hash
    reseeded = replace(settings, calibration=replace(DIGITS, seed=1))
    rebuilt = quantize([ModelRequest("mobilenet_v1", ("fp32",), **TINY)], reseeded).entries[0]
    assert again.source_sha256 == first.source_sha256 != rebuilt.source_sha256
    assert rebuilt.source_sha256 == sha256_file(tmp_path / "mobilenet_v1_0.25_32_10classes_random.keras")
    assert rebuilt.facts["batch_norm_statistics"]["seed"] == 1


def test_int8_v3_small_is_one_xnnpack_partition_with_statistics_set(tmp_path):
    """Untouched statistics: activations collapse layer by layer and the residual ADDs fall outside."""
    shape = {"alpha": 0.5, "size": 64, "classes": 10}
    delegation, statistics = {}, {}
    for calibrate in (True, False):
        folder = tmp_path / str(calibrate)
        settings = QuantizeSettings(formats=("int8",), calibration=DIGITS, output_dir=str(folder),
                                    progress=False)
        request = ModelRequest("mobilenet_v3_small", ("int8",), **shape, calibrate_batch_norm=calibrate)
        entry = quantize([request], settings).entries[0]
        assert list(read_manifest(folder).entries) == [entry]
        delegation[calibrate] = entry.facts["delegation"]
        statistics[calibrate] = entry.facts["batch_norm_statistics"]
    assert statistics[True]["source"] == "calibration" and statistics[True]["images"] == BATCH_NORM_IMAGES
    assert statistics[False] == {"source": "untouched"}
    assert delegation[True]["partitions"] == 1 and delegation[True]["ops_outside"] == {"SOFTMAX": 1}
    assert delegation[False]["partitions"] >= 10, delegation
    assert delegation[False]["ops_outside"].get("ADD", 0) >= 10, delegation


CONCURRENT = """
import sys
from pathlib import Path
from edge_mobilenet.convert.sources import prepare_random_source
from edge_mobilenet.data.calibration import CalibrationSource
from edge_mobilenet.fileio import sha256_file
path = prepare_random_source("mobilenet_v1", alpha=0.25, size=32, classes=10, output_dir=Path(sys.argv[1]),
                             calibration=CalibrationSource(sys.argv[2], count=20))
print(sha256_file(path))
"""


def test_two_processes_preparing_one_stem_at_once_agree(tmp_path):
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(tmp_path), DIGITS.folder],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    path = tmp_path / "mobilenet_v1_0.25_32_10classes_random.keras"
    hashes = {out.strip() for out, _ in outputs}
    assert hashes == {sha256_file(path)} == {_metrics(path)["keras_sha256"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no temporary file left
        ".mobilenet_v1_0.25_32_10classes_random.lock", "mobilenet_v1_0.25_32_10classes_random.keras",
        "mobilenet_v1_0.25_32_10classes_random.metrics.json"]
