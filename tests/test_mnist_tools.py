"""MNIST IDX reading and conversion, md5 checks and download, image means, and the tool CLIs."""
import gzip
import os
import shutil
import subprocess
import sys

import lmdb
import numpy as np
import pytest

from conftest import REPO
from netspec import glog
from netspec.commands import data as data_commands
from netspec.commands.base import run as run_command
from netspec.datasets import image_mean, mnist
from netspec.datasets.image_mean import compute_image_mean, load_mean_binaryproto
from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically
from netspec.datasets.mnist import convert_mnist, md5_check, prepare_mnist_lmdbs, read_idx
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2

MNIST_DIR = os.path.join(REPO, "data", "mnist")


def write_idx(path, array, magic, compress=False, cut=0, extra=b""):
    """An IDX file written by hand: big-endian magic, dimensions, then the uint8 payload."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes() + extra
    payload = payload[:len(payload) - cut]
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    labels = np.array([3, 0, 9, 200, 1], np.uint8)     # 200 shows Caffe's signed-char label
    return (images, labels,
            write_idx(tmp_path / "img.gz", images, 2051, compress=True),
            write_idx(tmp_path / "lab", labels, 2049))


def lmdb_items(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    return items


@pytest.fixture(autouse=True)
def restore_glog():
    handlers = list(glog.logger.handlers)
    yield
    glog.logger.handlers[:] = handlers


# ---- conversion ------------------------------------------------------------------------------

def test_convert_synthetic(tiny, tmp_path):
    images, labels, image_file, label_file = tiny
    assert convert_mnist(image_file, label_file, tmp_path / "db") == 5
    items = lmdb_items(tmp_path / "db")
    assert [k for k, _ in items] == [b"00000000", b"00000001", b"00000002", b"00000003", b"00000004"]
    for i, (_, value) in enumerate(items):
        datum = caffe_pb2.Datum.FromString(value)
        assert (datum.channels, datum.height, datum.width) == (1, 4, 3)
        assert datum.data == images[i].tobytes() and not datum.encoded and len(datum.float_data) == 0
        assert datum.label == [3, 0, 9, -56, 1][i]


def test_convert_real_t10k(tmp_path):
    images_path = os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")
    labels_path = os.path.join(MNIST_DIR, "t10k-labels-idx1-ubyte.gz")
    assert convert_mnist(images_path, labels_path, tmp_path / "mnist_test_lmdb") == 10000
    with gzip.open(images_path) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10000, 784)
    with gzip.open(labels_path) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    items = lmdb_items(tmp_path / "mnist_test_lmdb")
    assert [k for k, _ in items] == [b"%08d" % i for i in range(10000)]
    # The exact bytes Caffe's convert_mnist_data stores: channels=1 (field 1), height=28 (2),
    # width=28 (3), data (4, length 784 = varint 90 06), label (5).
    for i in (0, 1, 4321, 9999):
        expected = (b"\x08\x01\x10\x1c\x18\x1c\x22\x90\x06" + pixels[i].tobytes()
                    + b"\x28" + bytes([labels[i]]))
        assert items[i][1] == expected
    datums = [caffe_pb2.Datum.FromString(v) for _, v in items]
    stored = np.frombuffer(b"".join(d.data for d in datums), np.uint8).reshape(10000, 784)
    assert np.array_equal(stored, pixels)
    assert [d.label for d in datums] == labels.tolist()
    assert labels[0] == 7 and np.bincount(labels).tolist()[:2] == [980, 1135]


def test_wrong_magic(tmp_path, tiny):
    _, _, _, label_file = tiny
    with pytest.raises(NetspecError, match=r"lab: wrong magic number 2049 \(expected 2051 for an IDX "
                                           r"images file; this looks like an IDX labels file\)"):
        read_idx(label_file, "images")
    bogus = write_idx(tmp_path / "bogus", np.zeros(3, np.uint8), 1234)
    with pytest.raises(NetspecError, match="wrong magic number 1234 .expected 2049"):
        read_idx(bogus, "labels")


def test_truncated_and_oversized_files(tmp_path):
    images = np.zeros((3, 2, 2), np.uint8)
    cut = write_idx(tmp_path / "cut", images, 2051, cut=5)
    with pytest.raises(NetspecError) as info:
        read_idx(cut, "images")
    assert str(info.value) == (f"{cut}: truncated IDX file: the header promises 3 images of 2x2, which "
                               "needs 28 bytes; the file has 23 bytes (uncompressed)")
    with pytest.raises(NetspecError, match="too short for a header"):
        read_idx(write_idx(tmp_path / "tiny", images, 2051, cut=25), "images")
    with pytest.raises(NetspecError, match="extra data after the last record"):
        read_idx(write_idx(tmp_path / "long", images, 2051, extra=b"x"), "images")
    whole = write_idx(tmp_path / "whole.gz", images, 2051, compress=True)
    data = open(whole, "rb").read()
    broken = tmp_path / "broken.gz"
    broken.write_bytes(data[:len(data) - 10])
    with pytest.raises(NetspecError, match="broken.gz: the gzip data is truncated or corrupt"):
        read_idx(broken, "images")
    with pytest.raises(NetspecError, match="nothing: no such file"):
        read_idx(tmp_path / "nothing", "images")


def test_count_mismatch(tmp_path, tiny):
    _, _, image_file, _ = tiny
    labels = write_idx(tmp_path / "four", np.zeros(4, np.uint8), 2049)
    with pytest.raises(NetspecError, match=r"img.gz has 5 images but .*four has 4 labels"):
        convert_mnist(image_file, labels, tmp_path / "db")
    assert not os.path.exists(tmp_path / "db")


def test_prepare_creates_missing_lmdbs_once(tmp_path):
    src = tmp_path / "mnist"
    src.mkdir()
    for prefix, n in (("train", 3), ("t10k", 2)):
        write_idx(src / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), n, np.uint8), 2051, True)
        write_idx(src / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8), 2049)
    out = tmp_path / "out"
    paths = prepare_mnist_lmdbs(src, out)
    assert paths == {"train": str(out / "mnist_train_lmdb"), "test": str(out / "mnist_test_lmdb")}
    assert len(lmdb_items(paths["train"])) == 3 and len(lmdb_items(paths["test"])) == 2
    stamp = os.stat(os.path.join(paths["train"], "data.mdb")).st_mtime_ns
    assert prepare_mnist_lmdbs(src, out) == paths
    assert os.stat(os.path.join(paths["train"], "data.mdb")).st_mtime_ns == stamp
    with pytest.raises(NetspecError,
                       match=r"empty: train-images-idx3-ubyte\(\.gz\) is missing; run tools/get_mnist.py"):
        prepare_mnist_lmdbs(tmp_path / "empty", tmp_path / "out2")


# ---- md5 check and download ------------------------------------------------------------------

def test_md5_check_of_shipped_files_and_of_a_damaged_copy(tmp_path):
    found = md5_check(MNIST_DIR)
    assert sorted(found) == sorted(mnist.MNIST_FILES)
    for name in mnist.MNIST_FILES:
        if name.startswith("t10k"):
            shutil.copy(os.path.join(MNIST_DIR, name + ".gz"), tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + b"\x00" * 10)
    with pytest.raises(NetspecError) as info:
        md5_check(tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte(.gz) is missing" in message
    assert "t10k-labels-idx1-ubyte.gz has md5" in message and "expected 27ae3e4e" in message
    assert "t10k-images" not in message and "\n" not in message


def test_download_tries_mirrors_in_order(tmp_path, monkeypatch):
    bad = tmp_path / "bad_mirror"
    bad.mkdir()
    for name in mnist.MNIST_FILES:                    # a mirror serving wrong contents is skipped
        with gzip.open(bad / (name + ".gz"), "wb") as f:
            f.write(b"wrong")
    monkeypatch.setattr(mnist, "MNIST_MIRRORS",
                        [f"file://{tmp_path}/missing/", f"file://{bad}/", f"file://{MNIST_DIR}/"])
    dest = tmp_path / "dl"
    with pytest.raises(SystemExit) as info:
        run_command(data_commands.get_mnist_command, ["--download", str(dest)])
    assert info.value.code == 0
    assert sorted(os.listdir(dest)) == sorted(n + ".gz" for n in mnist.MNIST_FILES)


def test_download_without_internet_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", ["http://127.0.0.1:9/", f"file://{tmp_path}/none/"])
    with pytest.raises(SystemExit) as info:
        run_command(data_commands.get_mnist_command, ["--download", str(tmp_path / "dl")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netspec: error: could not download "
                                                   "train-images-idx3-ubyte.gz (no internet connection?)")
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in err
    assert os.listdir(tmp_path / "dl") == []            # no partial download left


# ---- image mean ------------------------------------------------------------------------------

def make_lmdb(path, arrays):
    write_lmdb_atomically(path, [(b"%08d" % i, array_to_datum(a, 0).SerializeToString())
                                 for i, a in enumerate(arrays)])
    return str(path)


def test_mean_of_tiny_lmdb_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(image_mean, "CHUNK", 2)         # three datums: a full chunk and a partial one
    db = make_lmdb(tmp_path / "db", [np.array([[[0, 10]], [[20, 255]]], np.uint8),
                                     np.array([[[3, 10]], [[20, 0]]], np.uint8),
                                     np.array([[[0, 10]], [[21, 1]]], np.uint8)])
    out = tmp_path / "mean.binaryproto"
    blob = compute_image_mean(db, out)
    # Sums 3, 30, 61, 256 over 3 images.
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 2, 1, 2)
    assert not blob.HasField("shape")
    np.testing.assert_allclose(list(blob.data), [1, 10, 61 / 3, 256 / 3], rtol=1e-7)
    on_disk = caffe_pb2.BlobProto.FromString(out.read_bytes())
    on_disk.DiscardUnknownFields()             # netspec's integrity record (integrity.py)
    assert on_disk == blob
    loaded = load_mean_binaryproto(out)
    assert loaded.dtype == np.float32 and loaded.shape == (2, 1, 2)
    np.testing.assert_allclose(loaded.ravel(), [1, 10, 61 / 3, 256 / 3], rtol=1e-7)
    assert sorted(os.listdir(tmp_path)) == ["db", "mean.binaryproto"]    # no temp file left


def test_mean_of_float_datums_and_mismatched_sizes(tmp_path):
    db = make_lmdb(tmp_path / "f", [np.array([[[0.5, -1]]]), np.array([[[1.5, 3]]])])
    np.testing.assert_allclose(list(compute_image_mean(db).data), [1, 1])
    bad = make_lmdb(tmp_path / "bad", [np.zeros((1, 2, 2), np.uint8), np.zeros((1, 3, 3), np.uint8)])
    with pytest.raises(NetspecError, match="record '00000001': the Datum holds 9 values, the first "
                                           "one held 1x2x2 = 4"):
        compute_image_mean(bad)


def test_mean_of_real_t10k_matches_numpy(tmp_path):
    convert_mnist(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz"),
                  os.path.join(MNIST_DIR, "t10k-labels-idx1-ubyte.gz"), tmp_path / "db")
    pixels = read_idx(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz"), "images")
    blob = compute_image_mean(tmp_path / "db")
    assert (blob.channels, blob.height, blob.width) == (1, 28, 28)
    np.testing.assert_allclose(list(blob.data), pixels.reshape(10000, -1).mean(axis=0), rtol=1e-6)


def test_load_mean_errors(tmp_path):
    with pytest.raises(NetspecError, match="mean file '.*absent' does not exist"):
        load_mean_binaryproto(tmp_path / "absent")
    garbage = tmp_path / "garbage.binaryproto"
    garbage.write_bytes(b"\xff\xff\xff\xff\x07")
    with pytest.raises(NetspecError, match="is not a BlobProto"):
        load_mean_binaryproto(garbage)
    wrong = tmp_path / "wrong.binaryproto"
    wrong.write_bytes(caffe_pb2.BlobProto(num=1, channels=1, height=2, width=2,
                                          data=[1, 2, 3]).SerializeToString())
    with pytest.raises(NetspecError, match="shape 1x2x2, 3 values"):
        load_mean_binaryproto(wrong)
    shaped = tmp_path / "shaped.binaryproto"
    blob = caffe_pb2.BlobProto(data=[1, 2, 3, 4, 5, 6])
    blob.shape.dim.extend([1, 3, 1, 2])
    shaped.write_bytes(blob.SerializeToString())
    assert load_mean_binaryproto(shaped).tolist() == [[[1, 2]], [[3, 4]], [[5, 6]]]


# ---- command lines ---------------------------------------------------------------------------

def test_convert_cli_writes_leveldb_with_the_lmdb_records(tiny, tmp_path):
    plyvel = pytest.importorskip("plyvel")
    _, _, image_file, label_file = tiny
    tool = os.path.join(REPO, "tools", "convert_mnist.py")
    for backend in ("lmdb", "leveldb"):
        done = subprocess.run([sys.executable, tool, image_file, label_file, str(tmp_path / backend),
                               f"--backend={backend}"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    env = lmdb.open(str(tmp_path / "lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        from_lmdb = list(txn.cursor())
    env.close()
    db = plyvel.DB(str(tmp_path / "leveldb"))
    from_leveldb = list(db.iterator())
    db.close()
    assert from_leveldb == from_lmdb and len(from_lmdb) == 5


def test_convert_and_mean_cli(tiny, tmp_path, capsys):
    images, _, image_file, label_file = tiny
    with pytest.raises(SystemExit) as info:
        run_command(data_commands.convert_mnist_command, [image_file, label_file, str(tmp_path / "db")])
    assert info.value.code == 0
    assert "Processed 5 files." in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run_command(data_commands.convert_mnist_command, [image_file, label_file, str(tmp_path / "db")])
    assert info.value.code == 1
    assert capsys.readouterr().err == (f"netspec: error: '{tmp_path / 'db'}' already exists; remove "
                                       "it first (or use --overwrite)\n")
    with pytest.raises(SystemExit) as info:
        run_command(data_commands.compute_image_mean_command, [str(tmp_path / "db"),
                                                            str(tmp_path / "m.binaryproto")])
    assert info.value.code == 0
    np.testing.assert_allclose(load_mean_binaryproto(tmp_path / "m.binaryproto")[0],
                               images.mean(axis=0), rtol=1e-6)
    with pytest.raises(SystemExit) as info:
        run_command(data_commands.compute_image_mean_command, [str(tmp_path / "nope")])
    assert info.value.code == 1
    assert capsys.readouterr().err.endswith(f"netspec: error: LMDB '{tmp_path / 'nope'}' does not exist\n")
