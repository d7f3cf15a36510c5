"""convert_imageset: records as Caffe's tool writes them, worked out here byte by byte."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest

from netspec import glog
from netspec.datasets.imageset import BoostMT19937, caffe_shuffle, convert_imageset
from netspec.errors import NetspecError
from test_fork_schema import varint
from test_image_datasets import opencv_linear_rule, smooth_rgb
from test_lmdb_io import read_all

Image = pytest.importorskip("PIL.Image")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wire(field, value):
    """One protobuf field: varint for ints and bools, length-delimited for bytes."""
    if isinstance(value, bytes):
        return varint(field << 3 | 2) + varint(len(value)) + value
    return varint(field << 3) + varint(int(value))


def caffe_raw_record(bgr, label):
    """CVMatToDatum + set_label: channels, height, width, data (C x H x W), label, encoded=false."""
    c, h, w = bgr.shape
    return wire(1, c) + wire(2, h) + wire(3, w) + wire(4, bgr.tobytes()) + wire(5, label) + wire(7, 0)


def caffe_encoded_record(data, label):
    """ReadFileToDatum: data = the file's bytes, label, encoded=true (no shape fields)."""
    return wire(4, data) + wire(5, label) + wire(7, 1)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "cats").mkdir(parents=True)
    images = {"cats/a.png": smooth_rgb(0, 10, 12), "cats/b.jpg": smooth_rgb(1, 9, 7),
              "c.png": smooth_rgb(2, 16, 16)}
    for name, rgb in images.items():
        Image.fromarray(rgb).save(root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    lines = [("cats/a.png", 3), ("broken.jpg", 1), ("cats/b.jpg", 0), ("missing.png", 2), ("c.png", 5)]
    (tmp_path / "list.txt").write_text("".join(f"{n} {lab}\n" for n, lab in lines))
    return tmp_path, images, lines


def decoded_bgr(path):
    return np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1].transpose(2, 0, 1)


@pytest.fixture
def log():
    stream = io.StringIO()
    glog.configure(stream)
    yield stream
    glog.configure()


def test_raw_records_are_caffes_bytes_and_unreadable_images_are_skipped(folder, log):
    tmp, images, lines = folder
    count, skipped = convert_imageset(f"{tmp}/images/", str(tmp / "list.txt"), str(tmp / "db"))
    assert (count, skipped) == (3, 2)
    expected = [(f"{i:08d}_{name}".encode(), caffe_raw_record(decoded_bgr(tmp / "images" / name), label))
                for i, (name, label) in enumerate(lines) if name in images]
    assert read_all(tmp / "db") == expected                       # keys keep the line index: 0, 2, 4
    err = log.getvalue()
    assert err.count("Could not open or find file") == 2
    assert f"Could not open or find file {tmp}/images/missing.png: No such file or directory" in err
    assert "Processed 3 files." in err and "Skipped 2 of 5 images" in err


def test_resize_and_gray(folder):
    tmp, images, lines = folder
    convert_imageset(f"{tmp}/images/", str(tmp / "list.txt"), str(tmp / "db"), resize_height=8,
                     resize_width=6, gray=True)
    records = read_all(tmp / "db")
    png = tmp / "images" / "cats" / "a.png"
    rgb = np.asarray(Image.open(png)).astype(int)
    # Grey as libpng makes it, then resized by OpenCV's rule.
    rc, gc = 29900 * 32768 // 100000, 58700 * 32768 // 100000
    grey = (rgb[..., 0] * rc + rgb[..., 1] * gc + rgb[..., 2] * (32768 - rc - gc)) >> 15
    grey = np.where((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2]), rgb[..., 0], grey)
    expected = opencv_linear_rule(grey.astype(np.uint8)[None], 8, 6)
    assert records[0] == (b"00000000_cats/a.png", caffe_raw_record(expected, 3))


def test_encoded_keeps_the_files_bytes_or_reencodes(folder):
    tmp, images, lines = folder
    convert_imageset(f"{tmp}/images/", str(tmp / "list.txt"), str(tmp / "db"), encoded=True)
    records = dict(read_all(tmp / "db"))
    for i, (name, label) in enumerate(lines):
        if name in images:
            data = (tmp / "images" / name).read_bytes()
            assert records[f"{i:08d}_{name}".encode()] == caffe_encoded_record(data, label)
    # --encode_type=png on a JPEG: decoded and stored as a PNG of the same pixels.
    convert_imageset(f"{tmp}/images/", str(tmp / "list.txt"), str(tmp / "png_db"), encode_type="png")
    from netspec.proto import caffe_pb2
    datum = caffe_pb2.Datum.FromString(dict(read_all(tmp / "png_db"))[b"00000002_cats/b.jpg"])
    assert datum.encoded and datum.data[:8] == b"\x89PNG\r\n\x1a\n"
    back = np.asarray(Image.open(io.BytesIO(datum.data)))[:, :, ::-1].transpose(2, 0, 1)
    np.testing.assert_array_equal(back, decoded_bgr(tmp / "images" / "cats" / "b.jpg"))


def test_leveldb_holds_the_same_records(folder):
    plyvel = pytest.importorskip("plyvel")
    tmp, _, _ = folder
    convert_imageset(f"{tmp}/images/", str(tmp / "list.txt"), str(tmp / "lmdb"))
    convert_imageset(f"{tmp}/images/", str(tmp / "list.txt"), str(tmp / "ldb"), backend="leveldb")
    db = plyvel.DB(str(tmp / "ldb"))
    assert list(db.iterator()) == read_all(tmp / "lmdb")
    db.close()


def test_check_size_refuses_and_leaves_no_database(folder):
    tmp, _, _ = folder
    with pytest.raises(NetspecError, match=r"cats/b.jpg: 189 bytes of pixels, the first image has 360 \(--check_size\)"):
        convert_imageset(f"{tmp}/images/", str(tmp / "list.txt"), str(tmp / "db"), check_size=True)
    assert sorted(os.listdir(tmp)) == ["images", "list.txt"]       # nothing under the name, no temp left


def test_list_errors_name_the_line(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 1\nb.png one\n")
    with pytest.raises(NetspecError, match=r"list.txt:2:1: expected `<image path> <integer label>`"):
        convert_imageset(f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"))


class ReferenceMT19937:
    """The Mersenne Twister as published (Matsumoto & Nishimura), in plain Python."""

    def __init__(self, seed):
        self.mt = [seed & 0xFFFFFFFF]
        for i in range(1, 624):
            self.mt.append((1812433253 * (self.mt[-1] ^ (self.mt[-1] >> 30)) + i) & 0xFFFFFFFF)
        self.index = 624

    def __call__(self):
        if self.index == 624:
            for i in range(624):
                y = (self.mt[i] & 0x80000000) | (self.mt[(i + 1) % 624] & 0x7FFFFFFF)
                self.mt[i] = self.mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            self.index = 0
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)


def test_shuffle_is_caffes_on_boost_mt19937():
    word, reference = BoostMT19937(5489), ReferenceMT19937(5489)
    words = [word() for _ in range(10000)]
    assert words[-1] == 4123659995                 # the C++ standard's check value for mt19937
    assert words[:50] == [reference() for _ in range(50)]
    # caffe::shuffle: for i from the back, swap with boost::uniform_int(0, i): the 32-bit word divided
    # by floor((2^32 - 1) / (i + 1)) (+1 when the remainder is i), redrawn when the result exceeds i.
    reference = ReferenceMT19937(1234)
    items = list(range(20))
    for i in range(19, 0, -1):
        bucket = 0xFFFFFFFF // (i + 1) + (1 if 0xFFFFFFFF % (i + 1) == i else 0)
        while (j := reference() // bucket) > i:
            pass
        items[i], items[j] = items[j], items[i]
    assert caffe_shuffle(range(20), 1234) == items


def test_cli_shuffles_with_a_seed_and_logs_plainly_off_a_terminal(folder):
    tmp, images, lines = folder
    args = [sys.executable, "-m", "netspec", "convert_imageset", "--shuffle", "--seed=7", f"{tmp}/images/",
            str(tmp / "list.txt"), str(tmp / "db")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    order = caffe_shuffle(lines, 7)
    keys = [k.decode() for k, _ in read_all(tmp / "db")]
    assert keys == [f"{i:08d}_{n}" for i, (n, _) in enumerate(order) if n in images]
    assert "Shuffling data" in done.stderr and "Processed 3 files." in done.stderr
    assert "\r" not in done.stderr                                   # no progress bar in a pipe
    again = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1].endswith("db' already exists; remove it first (or use --overwrite)")
