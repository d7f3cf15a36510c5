"""extract_features: float Datums of the named blobs, keyed %010d, as Caffe's tool writes them."""
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import netspec as caffe
from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically
from netspec.errors import NetspecError
from netspec.features import extract_features
from test_lmdb_io import read_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = """
name: "feat"
layer { name: "data" type: "Data" top: "data" top: "label"
        data_param { source: "SOURCE" batch_size: 2 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "act" }
"""


def float_datum_bytes(values, channels, height, width):
    """Datum with channels, height, width (varints) and float_data (field 6, one fixed32 each)."""
    out = bytes([0x08, channels, 0x10, height, 0x18, width])
    return out + b"".join(b"\x35" + struct.pack("<f", v) for v in values)


def assert_float_datums(records, rows, channels, height, width):
    """records [(key, Datum bytes)] are rows (keyed %010d from 0) as float_datum_bytes writes them: keys,
    shape and field layout to the byte, the floats to float32 rounding (the product's order of
    additions is the BLAS's, or at a small batch netspec's own, not numpy's)."""
    assert [key for key, _ in records] == [b"%010d" % k for k in range(len(rows))]
    for (_, got), row in zip(records, rows):
        want = float_datum_bytes(row, channels, height, width)
        assert len(got) == len(want) and got[:6] == want[:6] and got[6::5] == want[6::5]   # headers, tags
        values = [struct.unpack("<f", got[i + 1:i + 5])[0] for i in range(6, len(got), 5)]
        np.testing.assert_allclose(values, row, rtol=1e-6, atol=1e-6)


@pytest.fixture
def setup(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 2, 2), dtype=np.uint8)
    write_lmdb_atomically(str(tmp_path / "src"), ((f"{i:08d}", array_to_datum(im, i).SerializeToString())
                                                  for i, im in enumerate(images)))
    (tmp_path / "net.prototxt").write_text(textwrap.dedent(NET).replace("SOURCE", str(tmp_path / "src")))
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 100 - 0.05
    net.params["ip"][0].data[...] = w
    net.params["ip"][1].data[...] = [0.5, -40, 1]
    net.save(str(tmp_path / "w.caffemodel"))
    net.close()
    return tmp_path, images, w, np.array([0.5, -40, 1], np.float32)


def test_features_are_float_datums_in_order(setup):
    tmp, images, w, b = setup
    counts = extract_features(str(tmp / "w.caffemodel"), str(tmp / "net.prototxt"), ["ip", "data"],
                              [str(tmp / "ip_db"), str(tmp / "data_db")], 3)
    assert counts == {"ip": 6, "data": 6}
    order = [0, 1, 2, 3, 4, 0]                                        # 3 batches of 2 wrap the 5 records
    flat = images.reshape(5, 4).astype(np.float32)
    ip = flat @ w.T + b
    assert_float_datums(read_all(tmp / "ip_db"), ip[order], 3, 1, 1)
    assert read_all(tmp / "data_db") == [(b"%010d" % k, float_datum_bytes(flat[i], 1, 2, 2))
                                          for k, i in enumerate(order)]


def test_cli_with_leveldb_and_bad_blob(setup):
    plyvel = pytest.importorskip("plyvel")
    tmp, images, w, b = setup
    base = [sys.executable, "-m", "netspec", "extract_features", str(tmp / "w.caffemodel"), str(tmp / "net.prototxt")]
    done = subprocess.run(base + ["act", str(tmp / "act_ldb"), "2", "leveldb", "CPU"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "Successfully extracted the features!" in done.stderr
    act = np.maximum(images.reshape(5, 4).astype(np.float32) @ w.T + b, 0)
    db = plyvel.DB(str(tmp / "act_ldb"))
    assert_float_datums(list(db.iterator()), act[:4], 3, 1, 1)
    db.close()
    bad = subprocess.run(base + ["ip,nope", f"{tmp}/a,{tmp}/b", "1", "--backend=lmdb"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (f"netspec: error: Unknown feature blob name nope in the "
                                                   f"network {tmp}/net.prototxt")
    assert not os.path.exists(tmp / "a") and not os.path.exists(tmp / "b")


def test_a_failure_midway_leaves_no_database(setup, monkeypatch):
    tmp, _, _, _ = setup
    from netspec import features
    calls = []

    def failing_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise NetspecError("disk on fire")
        return original(self, *args, **kwargs)
    original = caffe.Net.forward
    monkeypatch.setattr(caffe.Net, "forward", failing_forward)
    with pytest.raises(NetspecError, match="disk on fire"):
        features.extract_features(str(tmp / "w.caffemodel"), str(tmp / "net.prototxt"), ["ip"],
                                  [str(tmp / "ip_db")], 3)
    assert sorted(os.listdir(tmp)) == ["net.prototxt", "src", "w.caffemodel"]
