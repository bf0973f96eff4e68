"""The synthetic COCO-format detection set, the validating COCO reader and COCO mAP (pycocotools).

The set is checked against its own provenance: each image's background is recomputed from the recorded
photo crop, so pixels outside the boxes must equal it exactly (PNG) and the pixels inside must follow the
recorded digit scan. Bad COCO files are real files, one problem each.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_mobilenet.contracts.detection_metrics import GroundTruthImage, ImageDetections, coco_map
from edge_mobilenet.data.calibration import content_hash
from edge_mobilenet.data.detection import (SPLITS, crop_background, load_coco, sample_photo,
                                           write_detection_set)
from edge_mobilenet.errors import EdgeError

COUNT, SIZE = 24, 64


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(EdgeError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.isprintable(), message
    return message


def _file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("detection") / "digits-det"
    write_detection_set(folder, count=COUNT, seed=3, size=SIZE)
    return folder


# -- the synthetic set -------------------------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_other_bytes(synthetic, tmp_path):
    again = tmp_path / synthetic.name  # the manifest records the folder's name
    write_detection_set(again, count=COUNT, seed=3, size=SIZE)
    assert _file_hashes(again) == _file_hashes(synthetic)
    other = tmp_path / "other"
    manifest = write_detection_set(other, count=COUNT, seed=4, size=SIZE)
    original = json.loads((synthetic / "manifest.json").read_text())
    assert manifest["sha256"] != original["sha256"]
    assert (other / "train" / "instances.json").read_bytes() != (synthetic / "train" / "instances.json").read_bytes()


def test_layout_splits_and_manifest(synthetic):
    assert sorted(p.name for p in synthetic.iterdir()) == ["manifest.json", "train", "val"]
    manifest = json.loads((synthetic / "manifest.json").read_text())
    assert manifest["count"] == COUNT and manifest["seed"] == 3 and manifest["size"] == [SIZE, SIZE]
    assert "digits" in manifest["source"] and "CC BY" in manifest["licence"]
    assert manifest["generated_by"] == "edge-bench detection-set" and manifest["task"] == "detection"
    files = sorted(p for p in synthetic.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert manifest["sha256"] == content_hash(files, synthetic)
    ids = {}
    for split in SPLITS:
        data = json.loads((synthetic / split / "instances.json").read_text())
        record = manifest["splits"][split]
        assert record["images"] == len(data["images"]) and record["annotations"] == len(data["annotations"])
        assert [c["id"] for c in data["categories"]] == list(range(1, 11))
        assert [c["name"] for c in data["categories"]] == [str(d) for d in range(10)]
        assert all((synthetic / split / "images" / i["file_name"]).is_file() for i in data["images"])
        assert all(a["iscrowd"] == 0 and a["area"] == a["bbox"][2] * a["bbox"][3] for a in data["annotations"])
        ids[split] = ({i["id"] for i in data["images"]}, {a["id"] for a in data["annotations"]})
    assert len(ids["val"][0]) == round(COUNT * 0.2) and len(ids["train"][0]) + len(ids["val"][0]) == COUNT
    assert not ids["train"][0] & ids["val"][0] and not ids["train"][1] & ids["val"][1]


def _visible(box, later) -> np.ndarray:
    """Mask of ``box`` (x, y, w, h) not covered by any of the ``later`` boxes (drawn on top of it)."""
    x, y, w, h = box
    visible = np.ones((h, w), bool)
    for lx, ly, lw, lh in later:
        visible[max(0, ly - y):max(0, ly + lh - y), max(0, lx - x):max(0, lx + lw - x)] = False
    return visible


def test_boxes_lie_inside_the_images_and_frame_the_pasted_digits(synthetic):
    from sklearn.datasets import load_digits

    digits = load_digits()
    photos = {name: sample_photo(name) for name in ("china.jpg", "flower.jpg")}
    overlapping, small, correlations = 0, 0, []
    for split in SPLITS:
        data = json.loads((synthetic / split / "instances.json").read_text())
        for image in data["images"]:
            boxes = [a for a in data["annotations"] if a["image_id"] == image["id"]]
            pixels = np.asarray(Image.open(synthetic / split / "images" / image["file_name"]), np.float64)
            background = crop_background(photos[image["source"]["photo"]], image["source"]["crop"], SIZE)
            covered = np.zeros((SIZE, SIZE), bool)
            for index, annotation in enumerate(boxes):
                x, y, w, h = annotation["bbox"]
                assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= SIZE and y + h <= SIZE
                assert digits.target[annotation["digit_index"]] == annotation["category_id"] - 1
                visible = _visible((x, y, w, h), [a["bbox"] for a in boxes[index + 1:]])
                region = pixels[y:y + h, x:x + w]
                assert np.abs(region - background[y:y + h, x:x + w]).mean(-1)[visible].mean() > 20
                if visible.all():
                    scan = (digits.images[annotation["digit_index"]] * (255 / 16)).astype(np.uint8)
                    ink = np.asarray(Image.fromarray(scan).resize((w, h), Image.BILINEAR), np.float64)
                    correlations.append(np.corrcoef(region.mean(-1).ravel(), ink.ravel())[0, 1])
                else:
                    overlapping += 1
                small += max(w, h) < 0.2 * SIZE
                covered[y:y + h, x:x + w] = True
            assert (pixels[~covered] == background[~covered]).all(), image["file_name"]
    assert min(correlations) > 0.8 and overlapping > 0 and small > 0


def test_load_coco_round_trips_the_set(synthetic):
    for split in SPLITS:
        data = json.loads((synthetic / split / "instances.json").read_text())
        coco = load_coco(synthetic / split)
        assert coco.class_names == [str(d) for d in range(10)] and coco.skipped.total == 0
        assert [i.image_id for i in coco.images] == [i["id"] for i in data["images"]]
        assert coco.num_boxes == len(data["annotations"])
        for image in coco.images:
            assert (image.width, image.height) == (SIZE, SIZE) and Path(image.path).is_file()
            expected = [a for a in data["annotations"] if a["image_id"] == image.image_id]
            want = [[y / SIZE, x / SIZE, (y + h) / SIZE, (x + w) / SIZE]
                    for x, y, w, h in (a["bbox"] for a in expected)]
            np.testing.assert_allclose(image.boxes.reshape(-1, 4), np.reshape(want, (-1, 4)), atol=1e-6)
            assert image.classes.tolist() == [a["category_id"] - 1 for a in expected]
        truth = coco.ground_truth()
        perfect = [ImageDetections(t.boxes, t.classes, np.ones(len(t.boxes))) for t in truth]
        assert coco_map(truth, perfect) == {"map": 1.0, "map50": 1.0, "map75": 1.0}
    assert load_coco(synthetic / "val" / "instances.json").num_boxes == load_coco(synthetic / "val").num_boxes
    assert "holds the splits train, val" in _error(load_coco, synthetic)


def test_jpeg_sets_load_too(tmp_path):
    manifest = write_detection_set(tmp_path / "jpeg", count=3, seed=0, size=48, image_format="jpeg")
    coco = load_coco(tmp_path / "jpeg" / "train")
    assert manifest["splits"]["train"]["images"] == len(coco.images) == 2
    assert all(image.path.endswith(".jpg") for image in coco.images)


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import edge_mobilenet.data.detection as detection

    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(*args)

    original = detection._draw_image
    monkeypatch.setattr(detection, "_draw_image", failing)
    with pytest.raises(OSError):
        write_detection_set(tmp_path / "set", count=6, size=32)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs,message", [
    ({"count": 1}, "count >= 2 (at least one image per split). Received count=1"),
    ({"size": 8}, "size must be an integer number of pixels in 32..1024. Received size=8"),
    ({"seed": -1}, "Received seed=-1"),
    ({"image_format": "gif"}, "image_format must be one of png, jpeg"),
])
def test_bad_settings_are_one_line(tmp_path, kwargs, message):
    assert message in _error(write_detection_set, tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


# -- load_coco on bad input -----------------------------------------------------------------------------

def _coco_folder(folder: Path) -> dict:
    """A valid 2-image COCO folder (40x30 and 20x20 PNGs, 3 boxes, categories 1 and 2); returns its JSON."""
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (40, 30), (90, 20, 20)).save(folder / "images" / "a.png")
    Image.new("RGB", (20, 20), (20, 90, 20)).save(folder / "images" / "b.png")
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 5, 15, 20], "area": 300, "iscrowd": 0},
                        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def _write(folder: Path, data) -> Path:
    path = folder / "instances.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return folder


def test_a_valid_coco_folder_loads(tmp_path):
    coco = load_coco(_write(tmp_path, _coco_folder(tmp_path)))
    first, second = coco.images
    np.testing.assert_allclose(first.boxes, [[0.1, 0.05, 0.5, 0.3], [5 / 30, 0.5, 25 / 30, 35 / 40]], atol=1e-6)
    assert first.classes.tolist() == [0, 1] and second.classes.tolist() == [1] and coco.class_names == ["cat", "dog"]


def _annotation(index, **change):
    def apply(data):
        data["annotations"][index].update(change)
    return apply


def _pop(kind, index, key):
    def apply(data):
        data[kind][index].pop(key)
    return apply


# (change, the one line's text, the kind skip_bad counts, how many entries it skips)
BAD_ENTRIES = [
    (_annotation(1, bbox=[30, 5, 0, 9]),
     "instances.json: annotations[1] (id 2, image 1): box [30, 5, 0, 9] has zero area", "annotations", 1),
    (_annotation(1, bbox=[30, 5, -4, 9]), "annotations[1] (id 2, image 1): box [30, 5, -4, 9] has a negative width",
     "annotations", 1),
    (_annotation(1, bbox=[30, 5, 15, 9]),
     "annotations[1] (id 2, image 1): box [30, 5, 15, 9] lies outside the 40x30 image", "annotations", 1),
    (_annotation(0, bbox=[-3, 0, 5, 5]), "box [-3, 0, 5, 5] lies outside the 40x30 image", "annotations", 1),
    (_annotation(1, bbox=[1, 2, 3]), "annotations[1].bbox must be [x, y, width, height], not 3 numbers",
     "annotations", 1),
    (_annotation(1, bbox=[1, "2", 3, 4]), "annotations[1].bbox[1] must be a number, not a string '2'",
     "annotations", 1),
    (_pop("annotations", 2, "bbox"), "annotations[2].bbox is missing", "annotations", 1),
    (_annotation(2, category_id=11), "annotations[2] (id 3, image 2): category_id 11 is not in categories (1, 2)",
     "annotations", 1),
    (_annotation(2, image_id=7), "annotations[2] (id 3, image 7): image_id 7 is not in images", "annotations", 1),
    (_annotation(2, id=1), "annotations[2] (id 1, image 2): duplicate id (also annotations[0])", "annotations", 1),
    (_annotation(2, iscrowd=2), "iscrowd must be 0 or 1, not 2", "annotations", 1),
    (lambda d: d["images"][1].update(file_name="gone.png"), "images[1] (id 2): file ", "images", 1),
    (lambda d: d["images"][1].update(width=21), "images[1] (id 2): declares 21x20 pixels but b.png is 20x20",
     "images", 1),
    (lambda d: d["images"][1].update(id=1), "images[1] (id 1): duplicate id (also images[0])", "images", 1),
    (lambda d: d["images"][1].update(file_name="../b.png"), "is not a path inside the image folder", "images", 1),
    (lambda d: d["images"][1].update(width=0), "declares 0x20 pixels", "images", 1),
    (_pop("images", 1, "file_name"), "images[1].file_name is missing", "images", 1),
    (lambda d: d["categories"][1].update(id=1), "categories[1] (id 1): duplicate id (also categories[0])",
     "categories", 1),
    (lambda d: d["categories"][1].update(name=None), "categories[1].name must be a string, not null", "categories", 1),
    (lambda d: d["annotations"].append("box"), "annotations[3] must be an object, not a string 'box'",
     "annotations", 1),
]


@pytest.mark.parametrize("change,message,kind,skipped", BAD_ENTRIES)
def test_each_bad_entry_is_one_line_or_skipped_and_counted(tmp_path, change, message, kind, skipped):
    data = _coco_folder(tmp_path)
    change(data)
    _write(tmp_path, data)
    assert message in _error(load_coco, tmp_path)
    coco = load_coco(tmp_path, skip_bad=True)
    assert getattr(coco.skipped, kind) == skipped and coco.skipped.total >= skipped
    assert len(coco.skipped.problems) == coco.skipped.total and message.split(": ", 1)[-1] in coco.skipped.problems[0]


def test_skipping_an_image_skips_its_boxes_and_says_why(tmp_path):
    data = _coco_folder(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    coco = load_coco(_write(tmp_path, data), skip_bad=True)
    assert [i.image_id for i in coco.images] == [1] and coco.num_boxes == 2
    assert (coco.skipped.images, coco.skipped.annotations) == (1, 1)
    assert "b.png does not exist" in coco.skipped.problems[0]
    assert "annotations[2] (id 3, image 2): image 2 was skipped" in coco.skipped.problems[1]
    assert coco.skipped.to_json()["annotations"] == 1


def test_skipping_a_category_skips_its_boxes(tmp_path):
    data = _coco_folder(tmp_path)
    data["categories"][1].pop("name")
    coco = load_coco(_write(tmp_path, data), skip_bad=True)
    assert coco.class_names == ["cat"] and coco.num_boxes == 1
    assert (coco.skipped.categories, coco.skipped.annotations) == (1, 2)
    assert "category 2 was skipped" in coco.skipped.problems[1]


@pytest.mark.parametrize("content,message", [
    ("{", "not valid JSON"), ("", "is empty"), ("[]", "must be an object, not a list"),
    ('{"images": [], "categories": []}', "annotations is missing"),
    ('{"images": {}, "annotations": [], "categories": []}', "images must be a list, not an object"),
])
def test_unreadable_files_fail_even_with_skip_bad(tmp_path, content, message):
    _coco_folder(tmp_path)
    _write(tmp_path, content)
    assert message in _error(load_coco, tmp_path)
    assert message in _error(load_coco, tmp_path, skip_bad=True)


def test_nothing_usable_left_is_an_error(tmp_path):
    data = _coco_folder(tmp_path)
    for image in data["images"]:
        image["width"] = 99
    assert "no usable images (5 bad entries skipped)" in _error(load_coco, _write(tmp_path, data), skip_bad=True)
    assert "does not exist" in _error(load_coco, tmp_path / "nowhere")
    assert "no instances.json" in _error(load_coco, tmp_path / "images")


# -- COCO mAP ---------------------------------------------------------------------------------------------

def _hand_case(false_positive_score: float):
    """Two images, three ground-truth boxes of one class, three detections.

    Image A (100x100): gt1 = x 10..60, y 10..60; gt2 = x 60..90, y 60..90 (never detected).
    Image B (200x100): gt3 = x 100..180, y 20..80.
    Detections: d1 = gt1 exactly (score 0.9, IoU 1); d2 on gt3 shifted right by 18 px (score 0.8):
    x 118..198, IoU = 62*60 / (4800 + 4800 - 3720) = 3720/5880 = 0.633 (0.6 exactly would tie with the
    0.60 threshold in floating point); d3 a false positive in image A overlapping nothing (score given).
    """
    truth = [GroundTruthImage(100, 100, np.array([[.1, .1, .6, .6], [.6, .6, .9, .9]]), np.array([0, 0])),
             GroundTruthImage(200, 100, np.array([[.2, .5, .8, .9]]), np.array([0]))]
    found = [ImageDetections(np.array([[.1, .1, .6, .6], [0, .7, .2, .95]]), np.array([0, 0]),
                             np.array([.9, false_positive_score])),
             ImageDetections(np.array([[.2, .59, .8, .99]]), np.array([0]), np.array([.8]))]
    return truth, found


def test_coco_map_on_a_hand_checked_case():
    """COCO AP = mean over 101 recall points 0, .01, .., 1 of the interpolated precision (the best
    precision at that recall or beyond); 3 ground-truth boxes.

    FP scored 0.7, below both hits. At IoU thresholds .50, .55, .60 (d2 matches, 0.633 >= t):
    ranking d1 TP, d2 TP, d3 FP: recall 1/3, 2/3, 2/3 at precision 1, 1, 2/3, so precision is 1 up to
    recall 2/3: the 67 points 0 .. .66 -> AP = 67/101 = 0.6634. At .65 .. .95 (7 thresholds) d2 is a
    miss: recall 1/3 at precision 1: 34 points 0 .. .33 -> AP = 34/101 = 0.3366.
    mAP@[.5:.95] = (3 * 67 + 7 * 34) / (10 * 101) = 439/1010 = 0.4347; AP75 = 0.3366.

    FP scored 0.85, between the hits: d1 TP (R 1/3, P 1), d3 FP (R 1/3, P 1/2), d2 TP (R 2/3, P 2/3):
    interpolated precision 1 for recall <= 1/3 (34 points), 2/3 for .34 .. .66 (33 points), so
    AP50 = (34 + 33 * 2/3) / 101 = 56/101 = 0.5545; high thresholds as before: 34/101.
    mAP = (3 * 56 + 7 * 34) / 1010 = 406/1010 = 0.4020.
    """
    assert coco_map(*_hand_case(0.7)) == {"map": round(439 / 1010, 4), "map50": round(67 / 101, 4),
                                          "map75": round(34 / 101, 4)}
    assert coco_map(*_hand_case(0.85)) == {"map": round(406 / 1010, 4), "map50": round(56 / 101, 4),
                                           "map75": round(34 / 101, 4)}


def test_coco_map_without_detections_is_zero_and_prints_nothing(capsys):
    truth, _ = _hand_case(0.7)
    assert coco_map(truth, [ImageDetections.empty(), ImageDetections.empty()]) == {
        "map": 0.0, "map50": 0.0, "map75": 0.0}
    coco_map(*_hand_case(0.7))
    assert capsys.readouterr().out == ""


def test_coco_map_detections_of_the_wrong_class_do_not_match():
    truth, found = _hand_case(0.7)
    wrong = [ImageDetections(d.boxes, d.classes + 1, d.scores) for d in found]
    assert coco_map(truth, wrong)["map50"] == 0.0


@pytest.mark.parametrize("change,message", [
    (lambda t, d: (t, d[:1]), "detections cover 1 images, the ground truth 2"),
    (lambda t, d: (t, [ImageDetections(np.zeros((2, 3)), np.zeros(2), np.zeros(2)), d[1]]),
     "detections[0].boxes must have shape [K, 4]"),
    (lambda t, d: (t, [ImageDetections(d[0].boxes, np.array([0, -1]), d[0].scores), d[1]]),
     "detections[0].classes must hold class indices"),
    (lambda t, d: (t, [ImageDetections(d[0].boxes, d[0].classes, np.array([np.nan, 1])), d[1]]),
     "detections[0].scores holds a value that is not finite"),
    (lambda t, d: (t, [ImageDetections(d[0].boxes, d[0].classes, np.ones(3)), d[1]]),
     "detections[0].scores has 3 entries for 2 boxes"),
    (lambda t, d: ([GroundTruthImage(0, 10, np.zeros((0, 4)), np.zeros(0))] * 2, d),
     "ground_truth[0].width must be a positive integer"),
    (lambda t, d: ([GroundTruthImage(10, 10, np.zeros((0, 4)), np.zeros(0))] * 2, d),
     "mAP is undefined: the ground truth of 2 images holds no (non-crowd) box"),
])
def test_coco_map_bad_inputs_are_one_line(change, message):
    truth, found = change(*_hand_case(0.7))
    assert message in _error(coco_map, truth, found)


# -- the command -------------------------------------------------------------------------------------------

@pytest.fixture
def invoke():
    """``edge-bench detection-set ...`` through the CLI group's error handling (one line, exit 2)."""
    from click.testing import CliRunner

    from edge_mobilenet.cli import _Group, main
    from edge_mobilenet.data.detection_commands import detection_set

    group = main if "detection-set" in main.commands else _Group("edge-bench", commands=[detection_set])
    runner = CliRunner()
    return lambda *args: runner.invoke(group, ["detection-set", *map(str, args)], catch_exceptions=False)


def test_command_writes_replaces_and_refuses(invoke, tmp_path):
    folder = tmp_path / "set"
    result = invoke(folder, "--count", 5, "--size", 32, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {folder}: 5 images 32x32 (train 4, val 1)")
    assert result.stdout.count("\n") == 1
    assert len(list((folder / "train" / "images").iterdir())) == 4
    again = invoke(folder, "--count", 3, "--size", 32, "--quiet")  # a previous set is replaced whole
    assert again.exit_code == 0 and len(list((folder / "train" / "images").iterdir())) == 2
    assert json.loads((folder / "manifest.json").read_text())["count"] == 3
    (folder / "notes.txt").write_text("mine")
    refused = invoke(folder, "--quiet")
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert "a detection set with other files in it (notes.txt)" in refused.stderr
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("setup,args,message", [
    (lambda p: (p / "x").mkdir() or (p / "x" / "photo.jpg").write_bytes(b"1"), ["x"],
     "not empty and not a detection set"),
    (lambda p: (p / "x").write_text("file"), ["x"], "exists and is not a folder"),
    (lambda p: None, ["x", "--count", "1"], "Received count=1"),
    (lambda p: None, ["x", "--size", "4096"], "Received size=4096"),
])
def test_command_errors_are_one_line(invoke, tmp_path, setup, args, message):
    setup(tmp_path)
    before = _file_hashes(tmp_path)
    result = invoke(*[tmp_path / args[0], *args[1:]], "--quiet")
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith("edge-bench: error: ") and _file_hashes(tmp_path) == before
