"""Training on the bundled digits and on image folders; bad datasets fail with one clear line."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_mobilenet.data.images import load_digits, load_folder, stratified_split
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.train import TrainSettings, train_model


def _make_class_folder(root: Path, per_class: int = 12) -> Path:
    """Two visually distinct real-image classes: bright blobs top-left vs bottom-right."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(["left", "right"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            corner = slice(0, 20) if index == 0 else slice(20, 40)
            pixels[corner, corner] = 255
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_digits_are_real_rgb_images_with_stratified_split():
    images = load_digits((32, 32))
    assert images.pixels.shape == (1797, 32, 32, 3) and images.pixels.dtype == np.uint8
    assert images.pixels.max() == 255 and set(images.labels) == set(range(10))
    train, held = stratified_split(images.labels, 0.2, seed=0)
    assert len(set(train) & set(held)) == 0 and len(train) + len(held) == 1797
    assert abs(len(held) - 360) <= 10
    again = stratified_split(images.labels, 0.2, seed=0)
    assert np.array_equal(held, again[1])


def test_training_from_scratch_learns_digits(tmp_path):
    """A short run already beats chance (10%) by far; the full default run is in benchmarks/."""
    metrics = train_model(TrainSettings(epochs=4, output_dir=str(tmp_path), progress=False))
    assert metrics["val_accuracy"] > 0.5
    saved = json.loads((tmp_path / "mobilenet_v1_0.25_32.metrics.json").read_text())
    assert saved["val_accuracy"] == metrics["val_accuracy"]
    assert saved["preprocessing"]["name"] == "symmetric"
    assert (tmp_path / "mobilenet_v1_0.25_32.keras").is_file()
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_fine_tuning_a_folder_dataset_with_frozen_base(tmp_path):
    base = train_model(TrainSettings(epochs=1, output_dir=str(tmp_path / "base"), progress=False))
    data = _make_class_folder(tmp_path / "folder")
    tuned = train_model(TrainSettings(data_dir=str(data), weights=base["model_path"], freeze_base=True,
                                      epochs=8, learning_rate=1e-2, validation_split=0.25,
                                      output_dir=str(tmp_path / "tuned"), progress=False))
    assert tuned["classes"] == 2 and tuned["class_names"] == ["left", "right"]
    import keras

    model = keras.models.load_model(tuned["model_path"])
    frozen_source = keras.models.load_model(base["model_path"])
    np.testing.assert_array_equal(model.get_layer("conv_pw_5").get_weights()[0],
                                  frozen_source.get_layer("conv_pw_5").get_weights()[0])


def test_folder_loader_handles_exif_greyscale_rgba_palette(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    Image.new("L", (50, 40), 128).save(folder / "grey.png")
    Image.new("RGBA", (40, 50), (255, 0, 0, 0)).save(folder / "clear.png")
    Image.new("P", (40, 40)).save(folder / "palette.bmp")
    tall = Image.new("RGB", (60, 30), (0, 0, 255))
    exif = tall.getexif()
    exif[0x0112] = 6  # rotate 90 on display
    tall.save(folder / "rotated.jpg", exif=exif)
    images = load_folder(folder, (24, 24))
    assert images.pixels.shape == (4, 24, 24, 3)
    assert images.labels.tolist() == [-1] * 4


@pytest.mark.parametrize("case", ["missing", "empty", "non_image", "corrupt", "empty_class"])
def test_bad_dataset_folders_fail_with_one_clear_line(tmp_path, case):
    root = tmp_path / "data"
    if case != "missing":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
    if case in ("non_image", "corrupt", "empty_class"):
        Image.new("RGB", (8, 8)).save(root / "a" / "ok.png")
    if case == "non_image":
        (root / "b" / "notes.txt").write_text("hello")
    if case == "corrupt":
        (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    expected = {"missing": "does not exist", "empty": "holds no images", "non_image": "notes.txt: not an image",
                "corrupt": "broken.jpg: not a decodable image", "empty_class": "b: class folder holds no images"}
    with pytest.raises(EdgeError, match=expected[case]):
        train_model(TrainSettings(data_dir=str(root), epochs=1, output_dir=str(tmp_path / "out"),
                                  progress=False))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


_WEIGHTS_OF_A_RUN = """
import hashlib, sys
import numpy as np
from edge_mobilenet.train import TrainSettings, train_model, load_keras_model
m = train_model(TrainSettings(epochs=2, output_dir=sys.argv[1], progress=False))
weights = load_keras_model(m["model_path"]).get_weights()
print(hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in weights)).hexdigest())
"""


def test_training_gives_the_same_weights_in_separate_processes(tmp_path):
    """Seeds + oneDNN capped at AVX2 (edge_mobilenet/__init__.py): the recipe, not the process or the
    CPU's wider vector units, decides the weights. ONEDNN_MAX_CPU_ISA changes them (so the cap acts)."""
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}  # the package's default

    def run(name, **env):
        result = subprocess.run([sys.executable, "-c", _WEIGHTS_OF_A_RUN, str(tmp_path / name)], capture_output=True,
                                text=True, env={**base, **env}, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.split()[-1]

    first = run("a")
    assert run("b") == first
    assert run("c", ONEDNN_MAX_CPU_ISA="SSE41") != first
