"""durable.py: every file netspec writes appears whole or not at all, with the umask's permissions,
and replacing a directory output touches only the files it made."""
import errno
import os
import stat
import time

import numpy as np
import pytest

import netspec as caffe
from netspec import durable
from netspec.datasets.lmdb_io import LMDB_FILES, array_to_datum, open_lmdb_readonly, write_lmdb_atomically
from netspec.errors import NetspecError

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
"""


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_and_replaced_files_follow_the_umask(tmp_path, umask022):
    target = tmp_path / "out.bin"
    durable.write_file(target, b"one")
    assert mode(target) == 0o644
    os.chmod(target, 0o644)
    durable.write_file(target, b"two")
    assert target.read_bytes() == b"two" and mode(target) == 0o644
    os.umask(0o077)
    durable.write_file(tmp_path / "private.bin", b"x")
    assert mode(tmp_path / "private.bin") == 0o600


def test_snapshot_caffemodel_dot_and_mean_files_are_0644(tmp_path, umask022):
    (tmp_path / "net.prototxt").write_text(NET)
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    from netspec.draw import draw_net_to_file
    draw_net_to_file(net.param, tmp_path / "net.dot")
    db = tmp_path / "db"
    write_lmdb_atomically(str(db), [(b"0", array_to_datum(np.zeros((1, 2, 2), np.uint8), 0).SerializeToString())])
    from netspec.datasets.image_mean import compute_image_mean
    compute_image_mean(str(db), str(tmp_path / "mean.binaryproto"))
    for name in ("w.caffemodel", "net.dot", "mean.binaryproto", "db/data.mdb"):
        assert mode(tmp_path / name) == 0o644, name
    assert mode(db) == 0o755


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    target.write_bytes(b"old")

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(NetspecError, match=r"keep.txt: cannot write \(No space left on device\); any previous"):
        durable.write_file(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_an_exception_inside_open_for_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with durable.open_for_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["t.csv"]


def test_temp_names_are_recognisable_and_only_ours_are_cleaned(tmp_path):
    tmp = durable.temp_name_for(tmp_path / "snap_iter_5.caffemodel")
    name = os.path.basename(tmp)
    assert durable.is_temp_name(name, "snap_iter_5.caffemodel") and f".{os.getpid()}." in name
    old, fresh = tmp_path / name, tmp_path / os.path.basename(durable.temp_name_for(tmp_path / "snap_iter_6.caffemodel"))
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 100, time.time() - 100))
    others = [".snap_iter_5.caffemodel.user", "snap_iter_5.caffemodel", ".other.netspec-tmp.1.ab"]
    for other in others:
        (tmp_path / other).write_bytes(b"z")
        os.utime(tmp_path / other, (time.time() - 100, time.time() - 100))
    removed = durable.remove_stale_temps(str(tmp_path), "snap_iter_", older_than=time.time() - 50)
    assert removed == [old.name]
    assert sorted(os.listdir(tmp_path)) == sorted(others + [fresh.name])


def test_refuses_to_write_over_a_fifo_or_directory(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NetspecError, match="not a regular file"):
        durable.write_file(tmp_path / "fifo", b"x")
    with pytest.raises(NetspecError, match="is a directory"):
        durable.write_file(tmp_path, b"x")


def _records(n, value):
    return [(f"{i:08d}", array_to_datum(np.full((1, 2, 2), value, np.uint8), 0).SerializeToString())
            for i in range(n)]


def _first_value(path):
    with open_lmdb_readonly(str(path)) as db, db.begin() as txn:
        return txn.stat()["entries"], bytes(next(iter(txn.cursor()))[1])


def test_overwriting_an_lmdb_with_the_users_files_in_it_replaces_only_data_and_lock(tmp_path):
    db = tmp_path / "db"
    write_lmdb_atomically(str(db), _records(3, 1))
    (db / "README").write_text("mine")
    (db / "notes").mkdir()
    write_lmdb_atomically(str(db), _records(5, 2), overwrite=True)
    assert sorted(os.listdir(db)) == ["README", "data.mdb", "lock.mdb", "notes"]
    assert (db / "README").read_text() == "mine"
    count, value = _first_value(db)
    assert count == 5 and value == _records(1, 2)[0][1]
    assert [n for n in os.listdir(tmp_path) if n != "db"] == []


def test_overwriting_a_leveldb_with_the_users_files_in_it_replaces_only_leveldb_files(tmp_path):
    pytest.importorskip("plyvel")
    from netspec.datasets.db import open_cursor, write_db_atomically
    db = tmp_path / "db"
    write_db_atomically(str(db), _records(3, 1), backend="leveldb")
    (db / "README").write_text("mine")
    write_db_atomically(str(db), _records(5, 2), backend="leveldb", overwrite=True)
    assert (db / "README").read_text() == "mine"
    assert all(n == "README" or n in ("CURRENT", "LOCK", "LOG") or "MANIFEST-" in n or n[0].isdigit()
               for n in os.listdir(db))
    with open_cursor(str(db), "leveldb") as cursor:
        assert len(cursor) == 5
    assert [n for n in os.listdir(tmp_path) if n != "db"] == []


def test_overwriting_a_plain_lmdb_swaps_it_in_whole(tmp_path):
    db = tmp_path / "db"
    write_lmdb_atomically(str(db), _records(3, 1))
    write_lmdb_atomically(str(db), _records(4, 3), overwrite=True)
    assert sorted(os.listdir(db)) == sorted(LMDB_FILES)
    assert _first_value(db)[0] == 4
    assert os.listdir(tmp_path) == ["db"]


def test_a_failed_lmdb_build_leaves_the_old_one_and_no_debris(tmp_path):
    db = tmp_path / "db"
    write_lmdb_atomically(str(db), _records(3, 1))

    def broken():
        yield _records(1, 5)[0]
        raise NetspecError("source ran dry")
    with pytest.raises(NetspecError, match="ran dry"):
        write_lmdb_atomically(str(db), broken(), overwrite=True)
    assert _first_value(db)[0] == 3 and os.listdir(tmp_path) == ["db"]


def test_convert_mnist_overwrite_keeps_other_files_of_the_folder(tmp_path):
    from netspec.datasets.mnist import convert_mnist
    images = tmp_path / "img"
    labels = tmp_path / "lab"
    images.write_bytes((2051).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big")
                       + (2).to_bytes(4, "big") + bytes(range(8)))
    labels.write_bytes((2049).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes([1, 2]))
    out = tmp_path / "out_lmdb"
    convert_mnist(str(images), str(labels), str(out), show_progress=False)
    (out / "keep.txt").write_text("keep")
    convert_mnist(str(images), str(labels), str(out), overwrite=True, show_progress=False)
    assert (out / "keep.txt").read_text() == "keep"
    assert _first_value(out)[0] == 2
