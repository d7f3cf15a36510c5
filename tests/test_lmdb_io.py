"""netspec.datasets.lmdb_io: read-only opening, the wrapping cursor, atomic writes, Datum helpers."""
import os

import lmdb
import numpy as np
import pytest

from netspec.datasets import lmdb_io
from netspec.datasets.lmdb_io import (
    LMDBCursor, array_to_datum, datum_to_array, open_lmdb_readonly, write_lmdb_atomically)
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2


def records(n, size=16):
    return [(b"%08d" % i, bytes([i % 256]) * size) for i in range(n)]


@pytest.fixture
def small_lmdb(tmp_path):
    path = tmp_path / "db"
    write_lmdb_atomically(path, records(5))
    return str(path)


# ---- opening ---------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(NetspecError, match=r"LMDB '.*nowhere' does not exist"):
        open_lmdb_readonly(tmp_path / "nowhere")


def test_directory_without_data_mdb(tmp_path):
    with pytest.raises(NetspecError, match="is not an LMDB: the directory has no data.mdb"):
        open_lmdb_readonly(tmp_path)


def test_garbage_file_and_garbage_data_mdb(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"this is not an lmdb" * 500)
    with pytest.raises(NetspecError, match="is not an LMDB"):
        open_lmdb_readonly(garbage)
    folder = tmp_path / "fake_lmdb"
    folder.mkdir()
    (folder / "data.mdb").write_bytes(b"\x00junk" * 2000)
    with pytest.raises(NetspecError, match="is not an LMDB"):
        open_lmdb_readonly(folder)


def test_empty_lmdb(tmp_path):
    path = tmp_path / "empty"
    lmdb.open(str(path), map_size=1 << 20).close()
    with pytest.raises(NetspecError) as info:
        open_lmdb_readonly(path)
    assert str(info.value) == f"LMDB '{path}' has no records"


def test_read_only_open_creates_no_files(small_lmdb):
    os.remove(os.path.join(small_lmdb, "lock.mdb"))
    before = sorted(os.listdir(small_lmdb))
    with LMDBCursor(small_lmdb) as cursor:
        assert [k for k, _ in (next(cursor) for _ in range(7))][-1] == b"00000001"
    assert sorted(os.listdir(small_lmdb)) == before == ["data.mdb"]


def test_two_readers_of_one_lmdb_at_once(small_lmdb):
    # The train and test nets may read the same LMDB in one process.
    a, b = LMDBCursor(small_lmdb), LMDBCursor(small_lmdb)
    assert next(a)[0] == b"00000000"
    assert [next(b)[0] for _ in range(3)] == [b"00000000", b"00000001", b"00000002"]
    a.close()
    assert next(b) == (b"00000003", bytes([3]) * 16)
    b.close()
    b.close()                                        # closing twice is harmless
    assert os.path.realpath(small_lmdb) not in lmdb_io._SHARED_ENVS   # the last reader closed it


# ---- cursor ----------------------------------------------------------------------------------

def test_cursor_order_wrap_and_len(tmp_path):
    path = tmp_path / "db"
    # Written out of order: the cursor must still walk in key order.
    write_lmdb_atomically(path, [(b"b", b"2"), (b"c", b"3"), (b"a", b"1")])
    with LMDBCursor(path) as cursor:
        assert len(cursor) == 3
        seen = [next(cursor) for _ in range(7)]
    assert seen == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3"),
                    (b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"a", b"1")]


def test_cursor_reopens_to_release_pages_without_losing_its_place(tmp_path, monkeypatch):
    path = tmp_path / "db"
    write_lmdb_atomically(path, records(7))
    monkeypatch.setattr(LMDBCursor, "REMAP_EVERY", 3)
    with LMDBCursor(path) as cursor:
        first_env = lmdb_io._SHARED_ENVS[os.path.realpath(path)][0]
        seen = [next(cursor)[0] for _ in range(17)]
        assert lmdb_io._SHARED_ENVS[os.path.realpath(path)][0] is not first_env   # reopened
        assert cursor.position == 17 % 7
        cursor.seek(5)
        assert cursor.next_values(3) == [bytes([i]) * 16 for i in (5, 6, 0)]
    assert seen == [b"%08d" % (i % 7) for i in range(17)]
    # A reader that shares the environment keeps it: no reopen under its feet.
    with LMDBCursor(path) as a, LMDBCursor(path) as b:
        env = lmdb_io._SHARED_ENVS[os.path.realpath(path)][0]
        assert [next(a)[0] for _ in range(8)] == [b"%08d" % (i % 7) for i in range(8)]
        assert lmdb_io._SHARED_ENVS[os.path.realpath(path)][0] is env
        assert next(b)[0] == b"%08d" % 0


def test_cursor_position_seek_skip_and_resume(small_lmdb):
    with LMDBCursor(small_lmdb) as cursor:
        assert cursor.position == 0
        for _ in range(7):
            next(cursor)
        assert cursor.position == 2                 # 7 reads of 5 records: wrapped once
        saved = cursor.position
        expected = [next(cursor)[0] for _ in range(4)]
    with LMDBCursor(small_lmdb) as resumed:
        resumed.seek(saved)
        assert [next(resumed)[0] for _ in range(4)] == expected == \
            [b"00000002", b"00000003", b"00000004", b"00000000"]
        resumed.seek(4)
        resumed.skip(3)                              # 4 -> 7 = 2 (mod 5)
        assert resumed.position == 2 and next(resumed)[0] == b"00000002"
        resumed.skip(11)                             # 3 + 11 = 14 = 4 (mod 5)
        assert resumed.position == 4 and next(resumed)[0] == b"00000004"
        assert resumed.next_values(3) == [bytes([0]) * 16, bytes([1]) * 16, bytes([2]) * 16]
        assert resumed.position == 3
        with pytest.raises(NetspecError, match="cannot seek to record 5; it has 5 records"):
            resumed.seek(5)


# ---- atomic writing --------------------------------------------------------------------------

def read_all(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        out = list(txn.cursor())
    env.close()
    return out


def test_write_and_progress(tmp_path):
    calls = []
    count = write_lmdb_atomically(tmp_path / "db", records(2500), progress=calls.append)
    assert count == 2500
    assert calls == [1000, 2000, 2500]
    assert read_all(tmp_path / "db") == records(2500)


def test_interrupted_write_leaves_nothing(tmp_path):
    def failing():
        yield from records(1500)                     # one chunk committed, half of the next buffered
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_lmdb_atomically(tmp_path / "db", failing())
    assert os.listdir(tmp_path) == []


def test_interrupt_keeps_existing_lmdb_on_overwrite(small_lmdb):
    def failing():
        yield b"x", b"y"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_lmdb_atomically(small_lmdb, failing(), overwrite=True)
    assert read_all(small_lmdb) == records(5)
    assert os.listdir(os.path.dirname(small_lmdb)) == ["db"]


def test_refuses_to_overwrite_then_swaps(small_lmdb):
    with pytest.raises(NetspecError, match="already exists"):
        write_lmdb_atomically(small_lmdb, records(2))
    assert read_all(small_lmdb) == records(5)
    write_lmdb_atomically(small_lmdb, records(3, size=4), overwrite=True)
    assert read_all(small_lmdb) == records(3, size=4)
    assert os.listdir(os.path.dirname(small_lmdb)) == ["db"]    # no backup or temp left
    precious = os.path.join(os.path.dirname(small_lmdb), "precious")
    os.mkdir(precious)
    with pytest.raises(NetspecError, match="refusing to replace '.*precious': it is not an LMDB"):
        write_lmdb_atomically(precious, records(1), overwrite=True)
    assert os.path.isdir(precious)


def test_map_grows_when_full(tmp_path):
    data = records(3000, size=700)                   # ~2 MB into a 64 KiB starting map
    assert write_lmdb_atomically(tmp_path / "db", data, map_size=1 << 16) == 3000
    assert read_all(tmp_path / "db") == data


# ---- Datum helpers ---------------------------------------------------------------------------

def test_uint8_datum_round_trip():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum = array_to_datum(arr, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (2, 3, 4, 7)
    assert datum.data == bytes(range(24)) and len(datum.float_data) == 0
    back = datum_to_array(datum.SerializeToString())
    assert back.dtype == np.uint8 and np.array_equal(back, arr)


def test_float_datum_round_trip():
    arr = np.linspace(-1, 1, 12).reshape(3, 2, 2)
    datum = array_to_datum(arr)
    assert not datum.data and not datum.HasField("label")
    assert np.allclose(list(datum.float_data), arr.ravel())
    back = datum_to_array(datum)
    assert back.dtype == np.float32 and np.allclose(back, arr)


def test_bad_datums():
    encoded = caffe_pb2.Datum(channels=3, height=2, width=2, data=b"\xff\xd8jpeg", encoded=True)
    with pytest.raises(NetspecError, match=r"cannot decode the image: its 6 bytes are not in an image format"):
        datum_to_array(encoded)
    short = caffe_pb2.Datum(channels=1, height=2, width=2, data=b"abc")
    with pytest.raises(NetspecError, match="holds 3 values but channels x height x width = 1x2x2 = 4"):
        datum_to_array(short)
    with pytest.raises(NetspecError, match="not a serialized Datum"):
        datum_to_array(b"\xff\xff\xff")
    with pytest.raises(NetspecError, match="C x H x W"):
        array_to_datum(np.zeros((2, 2), np.uint8))
