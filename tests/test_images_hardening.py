"""Hostile image folders fail with one printable EdgeError line (or are skipped), never a traceback or hang.

Every case uses real files: PNG/JPEG written by PIL (bombs are real files whose header declares a
huge size), real symlinks, FIFOs and byte-string (non-UTF-8) names.
"""

import os
import signal
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_mobilenet.data.images import MAX_CLASSES, decode_image, list_images, load_folder
from edge_mobilenet.errors import EdgeError

SIZE = (16, 16)


def _error(call, *args, **kwargs) -> str:
    """The EdgeError message of ``call``: one line, printable, encodable as strict UTF-8."""
    with pytest.raises(EdgeError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message and message.isprintable(), message
    message.encode("utf-8")  # would raise on a lone surrogate from a non-UTF-8 file name
    return message


def _png(path: Path, colour=(200, 30, 30), size=(20, 12)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A real PIL-written PNG whose IHDR is rewritten (valid CRC) to declare ``width`` x ``height``."""
    _png(path, size=(4, 4))
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _jpeg_declaring(path: Path, width: int, height: int) -> Path:
    """A real PIL-written baseline JPEG whose SOF0 segment declares ``width`` x ``height``."""
    Image.new("RGB", (8, 8), (10, 120, 10)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def _flat(tmp_path: Path, name: str = "set") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    _png(folder / "ok.png")
    return folder


# 1. decompression bombs ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind,width,height", [("png", 50000, 50000), ("jpg", 60000, 60000),
                                               ("png", 10000, 10000)])  # 10000^2: PIL only warns
def test_decompression_bomb_is_named_with_its_size_and_no_warning(tmp_path, kind, width, height):
    folder = _flat(tmp_path)
    maker = _png_declaring if kind == "png" else _jpeg_declaring
    bomb = maker(folder / f"bomb.{kind}", width, height)
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        message = _error(load_folder, folder, SIZE)
        assert message == (f"{bomb}: declares {width}x{height} pixels, over the limit {limit} "
                           "(a possible decompression bomb)")
        loaded = load_folder(folder, SIZE, skip_corrupt=True)
    assert loaded.skipped == [str(bomb)] and loaded.files == [str(folder / "ok.png")]
    assert loaded.pixels.shape == (1, *SIZE, 3)
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's own limit is left as it was


def test_bomb_limit_follows_pil_setting(tmp_path, monkeypatch):
    image = _png(tmp_path / "forty.png", size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert _error(decode_image, image, SIZE).endswith("declares 40x40 pixels, over the limit 1000 "
                                                      "(a possible decompression bomb)")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user switched the check off
    assert decode_image(image, SIZE).shape == (*SIZE, 3)


def test_elongated_image_that_would_explode_on_resize_is_refused(tmp_path):
    strip = _png_declaring(tmp_path / "strip.png", 80_000_000, 1)  # under the limit, 1 pixel tall
    message = _error(decode_image, strip, SIZE)
    assert message.startswith(f"{strip}: declares 80000000x1 pixels, too elongated to resize: ")


# 2. symlinks and non-UTF-8 names ------------------------------------------------------------------

def test_dangling_and_looping_symlinks_are_named_or_skipped(tmp_path):
    folder = _flat(tmp_path)
    (folder / "gone.jpg").symlink_to("missing.jpg")
    (folder / "a.png").symlink_to("b.png")
    (folder / "b.png").symlink_to("a.png")
    assert _error(load_folder, folder, SIZE) == (
        f"{folder / 'a.png'}: symlink loop (too many levels of symbolic links)")
    assert _error(decode_image, folder / "gone.jpg", SIZE) == (
        f"{folder / 'gone.jpg'}: dangling symlink (its target missing.jpg does not exist)")
    loaded = load_folder(folder, SIZE, skip_corrupt=True)
    assert loaded.skipped == [str(folder / n) for n in ("a.png", "b.png", "gone.jpg")]
    assert loaded.files == [str(folder / "ok.png")]


def test_looping_entry_without_image_suffix_and_looping_class_folder(tmp_path):
    folder = _flat(tmp_path)
    (folder / "self").symlink_to("self")
    assert _error(load_folder, folder, SIZE) == (
        f"{folder / 'self'}: symlink loop (too many levels of symbolic links)")
    classes = tmp_path / "classes"
    for name in ("cat", "dog"):
        _png((classes / name).mkdir(parents=True) or classes / name / "1.png")
    (classes / "cat" / "up").symlink_to("..")  # a folder loop: not walked into, no hang
    loaded = load_folder(classes, SIZE)
    assert loaded.class_names == ["cat", "dog"] and loaded.labels.tolist() == [0, 1]


def test_non_utf8_file_names_load_and_errors_stay_printable(tmp_path):
    folder = _flat(tmp_path)
    good = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1 bytes, not UTF-8
    Image.new("RGB", (12, 12), (0, 0, 255)).save(os.fsdecode(good))
    assert len(load_folder(folder, SIZE)) == 2
    bad = os.fsencode(folder) + b"/bad\xff\xfe.jpg"
    with open(bad, "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    message = _error(load_folder, folder, SIZE)
    assert message.startswith(repr(os.fsdecode(bad)) + ": not a decodable image (")
    assert "\\udcff\\udcfe" in message
    assert load_folder(folder, SIZE, skip_corrupt=True).skipped == [os.fsdecode(bad)]


def test_newline_in_a_file_name_keeps_the_error_on_one_line(tmp_path):
    folder = _flat(tmp_path)
    (folder / "two\nlines.png").write_bytes(b"junk")
    assert _error(load_folder, folder, SIZE).startswith(repr(str(folder / "two\nlines.png")))


# 3. labels.csv class indices ----------------------------------------------------------------------

def _labelled(tmp_path: Path, rows: str, header: str = "file,class_index") -> Path:
    root = tmp_path / "labelled"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        _png(root / "images" / f"{i}.png", colour=(80 * i, 0, 0))
    (root / "labels.csv").write_text(f"{header}\n{rows}")
    return root


@pytest.mark.parametrize("value,classes,expected", [
    ("-1", None, "class_index -1 is negative (class indices start at 0; unlabelled images go in a "
                 "folder without labels.csv)"),
    ("-7", 10, "class_index -7 is negative"),
    ("3", 3, "class_index 3 is out of range for 3 classes (0..2)"),
    (str(10 ** 12), None, f"class_index {10 ** 12} is out of range (over {MAX_CLASSES} classes)"),
    ("", None, "class_index '' is not an integer"),
    ("two", None, "class_index 'two' is not an integer"),
    ("9" * 5000, None, f"class_index {'9' * 40!r}... (5000 characters) is not an integer"),
])
def test_bad_class_index_names_file_line_and_value(tmp_path, value, classes, expected):
    root = _labelled(tmp_path, f"0.png,0\n1.png,{value}\n2.png,1\n")
    message = _error(load_folder, root, SIZE, classes=classes)
    assert message.startswith(f"{root / 'labels.csv'}:3: {expected}")


def test_valid_labels_csv_with_known_class_count(tmp_path):
    root = _labelled(tmp_path, "0.png,0,zero\n1.png,2,two\n2.png,2,two\n", header="file,class_index,name")
    loaded = load_folder(root, SIZE, classes=4)
    assert loaded.labels.tolist() == [0, 2, 2] and loaded.class_names == ["zero", "1", "two", "3"]
    assert load_folder(root, SIZE).class_names == ["zero", "1", "two"]  # count unknown: max + 1


@pytest.mark.parametrize("content,expected", [
    (b"file,class_index\n0.png\n", ":2: no class_index (the row has too few columns)"),
    (b"file,class_index\n,1\n", ":2: the file cell is empty"),
    (b"file,class_index\n0.png,1\n\xff\xfe.png,1\n", ": not UTF-8 text"),
    (b"file,class_index\n0.png,1\n1.png,\x001\n", ":3: class_index '\\x001' is not an integer"),
    (b"file,class_index\n0.png,1\n" + b"y" * 200_000 + b",1\n", ":3: malformed CSV (field larger than"),
    (b"\xef\xbb\xbffile,class_index\n0.png,1\n", None),  # a spreadsheet's UTF-8 BOM is fine
])
def test_malformed_labels_csv_is_one_line(tmp_path, content, expected):
    root = _labelled(tmp_path, "")
    (root / "labels.csv").write_bytes(content)
    if expected is None:
        assert load_folder(root, SIZE).labels.tolist() == [1]
    else:
        assert _error(load_folder, root, SIZE).startswith(f"{root / 'labels.csv'}{expected}")


# 4. names too long, folders and FIFOs where a file is expected ------------------------------------

def test_file_name_too_long_is_one_line(tmp_path):
    long_name = "x" * 300 + ".png"
    root = _labelled(tmp_path, f"{long_name},1\n")
    message = _error(load_folder, root, SIZE)
    assert message.startswith(f"{root / 'labels.csv'}:2: image {root / 'images'}/xxx")
    assert message.endswith(".png (" f"{len(str(root / 'images' / long_name))} characters): "
                            "file name too long for the operating system")
    assert len(message) < 500  # the 300-character name is shortened
    assert _error(load_folder, tmp_path / ("y" * 300), SIZE).endswith(
        "file name too long for the operating system")


def test_folder_where_a_file_is_expected(tmp_path):
    root = _labelled(tmp_path, "0.png,0\nsub.png,1\n")
    (root / "images" / "sub.png").mkdir()
    assert _error(load_folder, root, SIZE) == (
        f"{root / 'labels.csv'}:3: image {root / 'images' / 'sub.png'}: is a folder, not an image file")
    assert _error(decode_image, root / "images", SIZE) == f"{root / 'images'}: is a folder, not an image file"
    (root / "labels.csv").unlink()
    (root / "labels.csv").mkdir()
    assert _error(load_folder, root, SIZE) == f"{root / 'labels.csv'}: is a folder, not a CSV file"
    (root / "labels.csv").rmdir()
    (root / "labels.csv").symlink_to("nowhere.csv")
    assert _error(load_folder, root, SIZE) == (
        f"{root / 'labels.csv'}: dangling symlink (its target nowhere.csv does not exist)")
    assert _error(load_folder, root / "images" / "0.png", SIZE) == f"{root / 'images' / '0.png'}: not a folder"


def test_fifo_named_like_an_image_does_not_hang(tmp_path):
    folder = _flat(tmp_path)
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(folder / "pipe")

    def _timeout(signum, frame):
        raise TimeoutError("decoding a FIFO blocked")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(10)
    try:
        assert _error(list_images, folder) == (
            f"{folder / 'pipe'}: not a regular file (a FIFO, socket or device), expected an image file")
        os.unlink(folder / "pipe")
        assert _error(load_folder, folder, SIZE) == (
            f"{folder / 'pipe.jpg'}: not a regular file (a FIFO, socket or device), expected an image file")
        assert load_folder(folder, SIZE, skip_corrupt=True).skipped == [str(folder / "pipe.jpg")]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_good_images_still_decode_the_same(tmp_path):
    """The checks change nothing for ordinary images: same pixels as a plain PIL resize and crop."""
    image = _png(tmp_path / "plain.png", size=(40, 20))
    pixels = decode_image(image, (16, 16), crop_fraction=1.0)
    expected = np.asarray(Image.open(image).convert("RGB").resize((32, 16), Image.BILINEAR).crop((8, 0, 24, 16)))
    np.testing.assert_array_equal(pixels, expected)
