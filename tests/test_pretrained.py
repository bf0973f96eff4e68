"""Our builders load real ImageNet-trained weights and reproduce the published models' outputs."""

import numpy as np
import pytest

from edge_mobilenet.data.images import load_folder
from edge_mobilenet.data.preprocess import get_preprocessing
from edge_mobilenet.models import build_model
from edge_mobilenet.train import copy_weights_by_name, load_keras_model


@pytest.mark.parametrize("file,name,alpha,size", [
    ("mobilenet_v2_1.0_224_from_ptq.keras", "mobilenet_v2", 1.0, 224),
    ("mobilenet_v1_0.25_128_from_quant.keras", "mobilenet_v1", 0.25, 128),
])
def test_pretrained_weights_load_and_outputs_match(shared_data, tmp_path, file, name, alpha, size):
    reference = load_keras_model(shared_data / "models" / file)
    model = build_model(name, alpha=alpha, size=size, classes=1001)
    assert copy_weights_by_name(reference, model) == len([l for l in model.layers if l.weights])
    # 8 real photos with their labels (class_index 0..999; these models have background at 0)
    sample = tmp_path / "sample"
    (sample / "images").mkdir(parents=True)
    lines = (shared_data / "imagenet-sample" / "labels.csv").read_text().splitlines()
    (sample / "labels.csv").write_text("\n".join([lines[0]] + lines[1:400:50]) + "\n")
    for line in lines[1:400:50]:
        image = line.split(",")[0]
        (sample / "images" / image).symlink_to(shared_data / "imagenet-sample" / "images" / image)
    images = load_folder(sample, (size, size))
    batch = get_preprocessing("symmetric").apply(images.pixels)
    ours, theirs = model.predict(batch, verbose=0), reference.predict(batch, verbose=0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    if name == "mobilenet_v2":  # the full-size model recognises most of these photos
        assert np.mean(np.argmax(ours, axis=1) - 1 == images.labels) >= 0.5


def test_a_published_int8_model_gets_accuracy_with_eval(shared_data, tmp_path, run_cli):
    """A .tflite that did not come from our quantize: specs from the file, 1001 outputs on 1000-class
    labels (background first), preprocessing given as a flag, top-1 measured from --eval."""
    import json

    results = tmp_path / "r.json"
    result = run_cli("bench", shared_data / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite", "--device", "local",
                     "--quick", "--eval", shared_data / "imagenet-sample", "--eval-count", 60,
                     "--preprocessing", "symmetric", "--output", results)
    assert result.returncode == 0, result.stderr
    run = json.loads(results.read_text())["runs"][0]
    assert run["format"] == "int8" and run["accuracy"]["images"] == 60
    assert run["accuracy"]["top1"] >= 0.6 and run["accuracy"]["top5"] >= run["accuracy"]["top1"]
