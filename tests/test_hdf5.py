"""HDF5: the HDF5Data and HDF5Output layers, Caffe's .caffemodel.h5 / .solverstate.h5 layouts,
snapshot_format: HDF5 with exact resume, and pycaffe's Net.save_hdf5 / load_hdf5.

Every HDF5 file here is written by the test itself with h5py; expected batches are computed by
a row-at-a-time model of Caffe's HDF5DataLayer (Forward/Next/LoadHDF5FileData) written below,
with the shuffles drawn from the C library's own rand() through ctypes.
"""
import ctypes
import ctypes.util
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

import netspec as caffe
from netspec import rng
from netspec.errors import NetspecError
from netspec.solver import Solver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value
    return str(path)


def data_net(tmp_path, files, batch, shuffle=False, tops=("data", "label"), extra=""):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    net = tmp_path / "net.prototxt"
    top_lines = " ".join(f'top: "{t}"' for t in tops)
    net.write_text(f'layer {{ name: "h5" type: "HDF5Data" {top_lines} {extra}\n'
                   f'  hdf5_data_param {{ source: "{listing}" batch_size: {batch} '
                   f'shuffle: {"true" if shuffle else "false"} }} }}\n')
    return str(net)


def two_files(tmp_path):
    a = write_h5(tmp_path / "a.h5", data=np.arange(5 * 3, dtype=np.float64).reshape(5, 3),
                 label=np.arange(5, dtype=np.int32))
    b = write_h5(tmp_path / "b.h5", data=100 + np.arange(3 * 3, dtype=np.float32).reshape(3, 3),
                 label=10 + np.arange(3, dtype=np.int64))
    return a, b


# ---------------------------------------------------------------- HDF5Data order
def test_rows_in_file_order_batches_straddle_files_and_wrap(tmp_path):
    net = caffe.Net(data_net(tmp_path, two_files(tmp_path), batch=3), caffe.TRAIN)
    assert net.blobs["data"].shape == (3, 3) and net.blobs["label"].shape == (3,)
    labels = [list(net.forward()["label"]) for _ in range(4)]
    # a.h5 rows 0-4 (labels 0..4), then b.h5 (labels 10..12), then a.h5 again
    assert labels == [[0, 1, 2], [3, 4, 10], [11, 12, 0], [1, 2, 3]]
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, [[12, 13, 14], [100, 101, 102], [103, 104, 105]])
    assert net.blobs["data"].data.dtype == np.float32


class CaffeHDF5Order:
    """Caffe's HDF5DataLayer, one row per Next(), shuffling with the C library's rand()."""

    def __init__(self, sizes, shuffle, libc):
        self.sizes, self.shuffle, self.libc = sizes, shuffle, libc
        self.files = list(range(len(sizes)))
        if shuffle:
            self.random_shuffle(self.files)
        self.current_file = 0
        self.load()
        self.row = 0

    def random_shuffle(self, v):        # libstdc++: for i in [1, n): swap(v[i], v[rand() % (i + 1)])
        for i in range(1, len(v)):
            j = self.libc.rand() % (i + 1)
            v[i], v[j] = v[j], v[i]

    def load(self):
        self.perm = list(range(self.sizes[self.files[self.current_file]]))
        if self.shuffle:
            self.random_shuffle(self.perm)

    def next_row(self):
        item = (self.files[self.current_file], self.perm[self.row])
        self.row += 1
        if self.row == len(self.perm):
            if len(self.sizes) > 1:
                self.current_file += 1
                if self.current_file == len(self.sizes):
                    self.current_file = 0
                    if self.shuffle:
                        self.random_shuffle(self.files)
                self.load()
            self.row = 0
            if self.shuffle:
                self.random_shuffle(self.perm)
        return item


def libc_or_skip():
    name = ctypes.util.find_library("c")
    if not name or "libc.so" not in name:
        pytest.skip("needs glibc's rand() to compare with")
    return ctypes.CDLL(name)


def test_c_rand_is_glibc_rand():
    libc = libc_or_skip()
    for seed in (1, 0, 12345):
        libc.srand(seed)
        ours = rng.CRand(seed)
        assert [ours.rand() for _ in range(2000)] == [libc.rand() for _ in range(2000)]


def test_shuffled_order_is_caffes(tmp_path):
    libc = libc_or_skip()
    sizes = (7, 4, 9)
    files = []
    for k, n in enumerate(sizes):
        files.append(write_h5(tmp_path / f"f{k}.h5", data=np.arange(n, dtype=np.float32)[:, None] + 100 * k,
                              label=np.full(n, k, np.float32)))
    rng.c_rand.seed(1)
    libc.srand(1)
    net = caffe.Net(data_net(tmp_path, files, batch=5, shuffle=True), caffe.TRAIN)
    model = CaffeHDF5Order(sizes, True, libc)
    for _ in range(20):                                   # 100 rows: several epochs, reshuffled files
        expected = [model.next_row() for _ in range(5)]
        net.forward()
        got = [(int(lab), int(d) % 100) for lab, d in zip(net.blobs["label"].data, net.blobs["data"].data[:, 0])]
        assert got == expected
    rows = [tuple(model.next_row()) for _ in range(sum(sizes))]
    assert len(set(rows)) > 1


def test_one_file_reshuffles_at_each_epoch(tmp_path):
    libc = libc_or_skip()
    path = write_h5(tmp_path / "one.h5", data=np.arange(6, dtype=np.float32)[:, None], label=np.zeros(6))
    rng.c_rand.seed(1)
    libc.srand(1)
    net = caffe.Net(data_net(tmp_path, [path], batch=4, shuffle=True), caffe.TRAIN)
    model = CaffeHDF5Order((6,), True, libc)
    seen = []
    for _ in range(6):
        net.forward()
        seen += [int(v) for v in net.blobs["data"].data[:, 0]]
    assert seen == [model.next_row()[1] for _ in range(24)]
    assert sorted(seen[:6]) == list(range(6)) and seen[:6] != seen[6:12]


def test_any_numeric_type_becomes_float_and_rows_keep_their_shape(tmp_path):
    path = write_h5(tmp_path / "x.h5", data=np.arange(4 * 2 * 3 * 2, dtype=np.uint8).reshape(4, 2, 3, 2),
                    label=np.array([[0.1], [0.2], [0.3], [0.4]], np.float64))
    net = caffe.Net(data_net(tmp_path, [path], batch=2), caffe.TEST)
    assert net.blobs["data"].shape == (2, 2, 3, 2) and net.blobs["label"].shape == (2, 1)
    net.forward()
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data.ravel(), np.arange(24, 48))
    assert net.blobs["label"].data[1, 0] == np.float32(0.4)


def test_a_single_top(tmp_path):
    path = write_h5(tmp_path / "x.h5", feat=np.arange(3, dtype=np.float32))
    net = caffe.Net(data_net(tmp_path, [path], batch=2, tops=("feat",)), caffe.TEST)
    assert list(net.forward()["feat"]) == [0, 1]
    assert list(net.forward()["feat"]) == [2, 0]


# ---------------------------------------------------------------- HDF5Data bad input
def refusal(tmp_path, files, **kw):
    with pytest.raises(NetspecError) as e:
        caffe.Net(data_net(tmp_path, files, batch=2, **kw), caffe.TRAIN)
    message = str(e.value)
    assert "\n" not in message and "layer 'h5' (HDF5Data)" in message
    return message


def test_missing_dataset_names_file_and_dataset(tmp_path):
    path = write_h5(tmp_path / "x.h5", data=np.zeros((3, 2)), labels=np.zeros(3))
    message = refusal(tmp_path, [path])
    assert f"{path}: dataset 'label' does not exist (it holds 'data', 'labels')" in message


def test_scalar_dataset_is_the_wrong_rank(tmp_path):
    path = write_h5(tmp_path / "x.h5", data=np.zeros((3, 2)), label=np.float32(1))
    assert f"{path}: dataset 'label' is a scalar; HDF5Data needs at least 1 axis" in refusal(tmp_path, [path])


def test_rank_that_differs_between_files(tmp_path):
    a = write_h5(tmp_path / "a.h5", data=np.zeros((3, 2)), label=np.zeros(3))
    b = write_h5(tmp_path / "b.h5", data=np.zeros((3, 2)), label=np.zeros((3, 1)))
    message = refusal(tmp_path, [a, b])
    assert f"{b}: dataset 'label' has rows of shape (1), the first file {a} has ()" in message


def test_mismatched_first_dimensions(tmp_path):
    path = write_h5(tmp_path / "x.h5", data=np.zeros((4, 2)), label=np.zeros(3))
    message = refusal(tmp_path, [path])
    assert f"{path}: dataset 'label' has 3 rows (shape (3)) but 'data' has 4 (shape (4, 2))" in message


def test_missing_file_in_the_list(tmp_path):
    a = write_h5(tmp_path / "a.h5", data=np.zeros((3, 2)), label=np.zeros(3))
    message = refusal(tmp_path, [a, tmp_path / "gone.h5"])
    assert f"list.txt:2: HDF5 file '{tmp_path / 'gone.h5'}' does not exist" in message


def test_a_file_that_is_not_hdf5(tmp_path):
    fake = tmp_path / "fake.h5"
    fake.write_text("not hdf5")
    assert f"{fake}: not an HDF5 file" in refusal(tmp_path, [fake])


def test_string_dataset(tmp_path):
    path = write_h5(tmp_path / "x.h5", data=np.array([b"a", b"b"]), label=np.zeros(2))
    assert "dataset 'data' holds |S1 values; Caffe reads float or integer datasets only" in refusal(tmp_path, [path])


def test_transform_param_and_empty_list(tmp_path):
    a = write_h5(tmp_path / "a.h5", data=np.zeros((3, 2)), label=np.zeros(3))
    assert "does not transform data" in refusal(tmp_path, [a], extra="transform_param { scale: 2 }")
    assert "names no files" in refusal(tmp_path, [])


def test_cli_prints_one_line(tmp_path):
    path = write_h5(tmp_path / "x.h5", data=np.zeros((4, 2)), label=np.zeros(3))
    net = data_net(tmp_path, [path], batch=2)
    proc = subprocess.run([sys.executable, "-m", "netspec", "time", f"--model={net}", "--iterations=1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(r"^netspec: error: .*dataset 'label' has 3 rows", proc.stderr.splitlines()[-1])


# ---------------------------------------------------------------- HDF5Output
OUTPUT_NET = """
layer {{ name: "in" type: "Input" top: "x" top: "y"
        input_param {{ shape {{ dim: 3 dim: 2 }} shape {{ dim: 3 }} }} }}
layer {{ name: "out" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param {{ file_name: "{path}" }} }}
"""


def test_output_appends_each_forward_and_appears_on_close(tmp_path):
    target = tmp_path / "out.h5"
    target.write_bytes(b"old")
    model = tmp_path / "out.prototxt"
    model.write_text(OUTPUT_NET.format(path=target))
    net = caffe.Net(str(model), caffe.TEST)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    net.forward(x=x, y=np.array([1, 2, 3]))
    net.forward(x=x + 10, y=np.array([4, 5, 6]))
    assert target.read_bytes() == b"old"             # the old file stands until the rows are complete
    net.close()
    with h5py.File(target, "r") as f:
        assert f["data"].shape == (6, 2, 1, 1) and f["label"].shape == (6, 1, 1, 1)
        assert f["data"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][:, :, 0, 0], np.concatenate([x, x + 10]))
        np.testing.assert_array_equal(f["label"][:].ravel(), [1, 2, 3, 4, 5, 6])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_then_data_round_trip(tmp_path):
    target = tmp_path / "rt.h5"
    model = tmp_path / "out.prototxt"
    model.write_text(OUTPUT_NET.format(path=target))
    net = caffe.Net(str(model), caffe.TEST)
    x = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    net.forward(x=x, y=np.array([7, 8, 9]))
    del net                                          # freeing the net closes the file, as in Caffe
    back = caffe.Net(data_net(tmp_path, [target], batch=3), caffe.TEST)
    back.forward()
    np.testing.assert_array_equal(back.blobs["data"].data[:, :, 0, 0], x)


def test_output_batch_mismatch(tmp_path):
    model = tmp_path / "bad.prototxt"
    model.write_text(OUTPUT_NET.format(path=tmp_path / "o.h5").replace("shape {{ dim: 3 }}".format(), "shape { dim: 2 }"))
    with pytest.raises(NetspecError, match=r"data \(3, 2\) and label \(2\) must have the same number of items"):
        caffe.Net(str(model), caffe.TEST)


# ---------------------------------------------------------------- weights: .caffemodel.h5
SHARED_NET = """
name: "shared"
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "a" top: "a" }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 3 } }
layer { name: "c" type: "InnerProduct" bottom: "b" top: "c"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
"""


@pytest.fixture
def shared_net(tmp_path):
    model = tmp_path / "shared.prototxt"
    model.write_text(SHARED_NET)
    return str(model)


def test_save_hdf5_layout_dataset_by_dataset(tmp_path, shared_net):
    net = caffe.Net(shared_net, caffe.TRAIN)
    net.forward(x=np.ones((2, 3)))
    net.backward(c=np.ones((2, 2)))
    path = tmp_path / "w.caffemodel.h5"
    net.save_hdf5(str(path))
    with h5py.File(path, "r") as f:
        assert list(f) == ["data"]
        assert sorted(f["data"]) == ["a", "b", "c", "in", "relu"]      # one group per layer
        assert sorted(f["data/a"]) == ["0", "1"] and len(f["data/b"]) == 0 and len(f["data/relu"]) == 0
        assert sorted(f["data/c"]) == ["0", "1"]
        for layer, j in (("a", 0), ("a", 1), ("c", 0), ("c", 1)):
            ds = f[f"data/{layer}/{j}"]
            assert ds.dtype == np.dtype("<f4") and ds.shape == net.params[layer][j].shape
            assert ds.chunks is None                                    # contiguous, as H5LTmake_dataset
            np.testing.assert_array_equal(ds[()], net.params[layer][j].data)
    net.save_hdf5(str(tmp_path / "d.caffemodel.h5"), write_diff=True)
    with h5py.File(tmp_path / "d.caffemodel.h5", "r") as f:
        assert sorted(f) == ["data", "diff"] and sorted(f["diff/b"]) == ["0", "1"]   # diffs of shared ones too
        np.testing.assert_array_equal(f["diff/c/0"][()], net.params["c"][0].diff)
        assert np.any(f["diff/c/0"][()] != 0)


def test_load_hdf5_round_trip_and_copy_from_detects_hdf5(tmp_path, shared_net):
    net = caffe.Net(shared_net, caffe.TEST)
    path = str(tmp_path / "weights.caffemodel")           # an HDF5 file whatever its name, as Caffe checks
    net.save_hdf5(path)
    for other in (caffe.Net(shared_net, caffe.TEST, weights=path), caffe.Net(shared_net, caffe.TEST)):
        if not np.array_equal(other.params["c"][0].data, net.params["c"][0].data):
            other.load_hdf5(path)
        for name in net.params:
            for mine, theirs in zip(net.params[name], other.params[name]):
                np.testing.assert_array_equal(mine.data, theirs.data)
        assert other.params["b"][0] is other.params["a"][0]          # still shared


def test_loads_a_caffe_layout_file_built_here(tmp_path, shared_net):
    w = np.arange(9, dtype=np.float32).reshape(3, 3)
    with h5py.File(tmp_path / "caffe.caffemodel.h5", "w") as f:
        f["data/a/0"] = w
        f["data/a/1"] = np.array([1, 2, 3], np.float64)          # Caffe converts on read
        f.create_group("data/relu")
        f["data/gone/0"] = np.zeros(4, np.float32)              # a layer this net lacks: ignored
        f["data/c/0"] = np.ones((2, 3), np.float32)
        f["data/c/1"] = np.ones(2, np.float32)
    net = caffe.Net(shared_net, caffe.TEST)
    net.copy_from(str(tmp_path / "caffe.caffemodel.h5"))
    np.testing.assert_array_equal(net.params["b"][0].data, w)
    assert list(net.params["a"][1].data) == [1, 2, 3]


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.__setitem__("data/c/0", np.ones((3, 2), np.float32)),
     "cannot copy param 0 of layer 'c': shape mismatch, weights file has (3, 2), net has (2, 3)"),
    (lambda f: f.__delitem__("data/c/1"), "layer 'c' has no parameter blob 1 (data/c/1)"),
    (lambda f: f.__setitem__("data/c/2", np.ones(2, np.float32)), "layer 'c' has 3 parameter blobs"),
    (lambda f: f.__delitem__("data"), "without the 'data' group"),
])
def test_weight_file_errors(tmp_path, shared_net, edit, message):
    net = caffe.Net(shared_net, caffe.TEST)
    path = tmp_path / "w.caffemodel.h5"
    net.save_hdf5(str(path))
    with h5py.File(path, "a") as f:
        if "data/c/0" in f and "shape mismatch" in message:
            del f["data/c/0"]
        edit(f)
        del f.attrs["netspec_sha256"]     # as Caffe writes it (netspec's own digest would refuse the edit first)
    with pytest.raises(NetspecError, match=re.escape(message)):
        net.copy_from(str(path))


def test_slash_in_layer_names_nests_groups(tmp_path):
    model = tmp_path / "g.prototxt"
    model.write_text(SHARED_NET.replace('name: "c"', 'name: "inception_3a/1x1"'))
    net = caffe.Net(str(model), caffe.TEST)
    net.save_hdf5(str(tmp_path / "g.h5"))
    with h5py.File(tmp_path / "g.h5", "r") as f:
        assert f["data/inception_3a/1x1/0"].shape == (2, 3)
    again = caffe.Net(str(model), caffe.TEST)
    again.load_hdf5(str(tmp_path / "g.h5"))
    np.testing.assert_array_equal(again.params["inception_3a/1x1"][0].data, net.params["inception_3a/1x1"][0].data)


# ---------------------------------------------------------------- snapshot_format: HDF5
TRAIN_NET = """
name: "h5mlp"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TRAIN }}
        hdf5_data_param {{ source: "{root}/train.txt" batch_size: 8 shuffle: true }} }}
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TEST }}
        hdf5_data_param {{ source: "{root}/test.txt" batch_size: 10 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param {{ num_output: 16 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param {{ dropout_ratio: 0.2 }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""

SOLVER = """
net: "{root}/net.prototxt"
test_iter: 2
test_interval: 10
base_lr: 0.05
momentum: 0.9
lr_policy: "step"
gamma: 0.5
stepsize: 15
display: 5
max_iter: 40
snapshot: 10
snapshot_prefix: "{root}/snap/h5mlp"
random_seed: 7
type: "{type}"
{extra}
"""


@pytest.fixture
def h5_training(tmp_path):
    g = np.random.default_rng(3)
    names = []
    for k, n in enumerate((37, 23)):
        x = g.standard_normal((n, 6)).astype(np.float32)
        write_h5(tmp_path / f"train{k}.h5", data=x, label=(x[:, 0] > 0).astype(np.float32) + (x[:, 1] > 1))
        names.append(str(tmp_path / f"train{k}.h5"))
    (tmp_path / "train.txt").write_text("\n".join(names) + "\n")
    x = g.standard_normal((20, 6)).astype(np.float32)
    write_h5(tmp_path / "test0.h5", data=x, label=(x[:, 0] > 0).astype(np.float32))
    (tmp_path / "test.txt").write_text(f"{tmp_path / 'test0.h5'}\n")
    (tmp_path / "net.prototxt").write_text(TRAIN_NET.format(root=tmp_path))
    return tmp_path


def solver_file(root, name="solver.prototxt", type="SGD", extra='snapshot_format: HDF5'):
    path = root / name
    path.write_text(SOLVER.format(root=root, type=type, extra=extra))
    return str(path)


def losses(log):
    return re.findall(r"Iteration (\d+) \(.*\), loss = (\S+)", log)


def run(solver, resume=None):
    stream = __import__("io").StringIO()
    caffe.glog.configure(stream)
    try:
        solver.solve(resume)
    finally:
        caffe.glog.configure()
    return stream.getvalue()


@pytest.mark.parametrize("solver_type, fmt", [("SGD", "HDF5"), ("Adam", "HDF5"), ("SGD", "BINARYPROTO")])
def test_resume_is_bit_identical(h5_training, solver_type, fmt):
    root = h5_training
    rng.c_rand.seed(1)
    full = Solver(solver_file(root, type=solver_type, extra=f"snapshot_format: {fmt}"))
    full_log = run(full)
    suffix = ".h5" if fmt == "HDF5" else ""
    assert f"Snapshotting to {'HDF5' if suffix else 'binary proto'} file {root}/snap/h5mlp_iter_10.caffemodel{suffix}" \
        in full_log
    for k in (10, 30):
        state = root / "snap" / f"h5mlp_iter_{k}.solverstate{suffix}"
        assert state.exists() and (root / "snap" / f"h5mlp_iter_{k}.caffemodel{suffix}").exists()
        rng.c_rand.seed(999)                           # the snapshot carries the rand() stream too
        resumed = Solver(solver_file(root, f"resume{k}.prototxt", solver_type, f"snapshot_format: {fmt}"))
        resumed_log = run(resumed, str(state))
        for name in full.net.params:
            for a, b in zip(full.net.params[name], resumed.net.params[name]):
                np.testing.assert_array_equal(a.data, b.data)
        assert losses(resumed_log) == [(i, v) for i, v in losses(full_log) if int(i) >= k]
    full.close()


def test_solverstate_h5_is_caffes_layout(h5_training):
    root = h5_training
    s = Solver(solver_file(root, type="Adam", extra="snapshot_format: HDF5\nsnapshot_diff: true"))
    s.step(10)
    state, model = root / "snap/h5mlp_iter_10.solverstate.h5", root / "snap/h5mlp_iter_10.caffemodel.h5"
    with h5py.File(state, "r") as f:
        assert sorted(f) == ["current_step", "history", "iter", "learned_net", "netspec_resume"]
        for name, value in (("iter", 10), ("current_step", 0)):
            assert f[name].dtype == np.dtype("<i4") and f[name].shape == (1,) and f[name][0] == value
        string_type = f["learned_net"].id.get_type()
        assert f["learned_net"].shape == () and string_type.get_strpad() == h5py.h5t.STR_NULLTERM
        assert string_type.get_size() == len(str(model)) + 1 and f["learned_net"][()] == str(model).encode()
        params = [b for name in ("ip1", "ip2") for b in s.net.params[name]]
        assert sorted(f["history"], key=int) == [str(i) for i in range(2 * len(params))]   # m for all, then v
        for i, blob in enumerate(params + params):
            assert f[f"history/{i}"].shape == blob.shape and f[f"history/{i}"].dtype == np.dtype("<f4")
        np.testing.assert_array_equal(f["history/0"][()], s._histories[0][0])
        np.testing.assert_array_equal(f[f"history/{len(params)}"][()], s._histories[0][1])
    with h5py.File(model, "r") as f:
        assert sorted(f) == ["data", "diff"]
        np.testing.assert_array_equal(f["data/ip2/0"][()], s.net.params["ip2"][0].data)
    s.close()


def test_resumes_a_caffe_written_solverstate_h5(h5_training):
    """A .solverstate.h5 as Caffe writes it (no netspec record): weights, history, iter, step restored."""
    root = h5_training
    s = Solver(solver_file(root, extra=""))
    params = [b for name in ("ip1", "ip2") for b in s.net.params[name]]
    g = np.random.default_rng(5)
    with h5py.File(root / "caffe.caffemodel.h5", "w") as f:
        for name in ("ip1", "ip2"):
            for j, b in enumerate(s.net.params[name]):
                f[f"data/{name}/{j}"] = g.standard_normal(b.shape).astype(np.float32)
        for name in ("data", "relu1", "drop1", "loss"):
            f.create_group(f"data/{name}")
        weights = {name: [f[f"data/{name}/{j}"][()] for j in range(2)] for name in ("ip1", "ip2")}
    history = [g.standard_normal(b.shape).astype(np.float32) for b in params]
    with h5py.File(root / "caffe.solverstate.h5", "w") as f:
        f["iter"] = np.array([17], np.int32)
        f["current_step"] = np.array([1], np.int32)
        f["learned_net"] = np.bytes_(str(root / "caffe.caffemodel.h5"))
        for i, h in enumerate(history):
            f[f"history/{i}"] = h
    s.restore(str(root / "caffe.solverstate.h5"))
    assert s.iter == 17 and s.current_step == 1
    for name in ("ip1", "ip2"):
        for j in range(2):
            np.testing.assert_array_equal(s.net.params[name][j].data, weights[name][j])
    for (h,), want in zip(s._histories, history):
        np.testing.assert_array_equal(h, want)
    s.step(3)                                           # and trains on from there
    assert s.iter == 20
    s.close()


def test_h5_snapshot_errors(h5_training):
    root = h5_training
    s = Solver(solver_file(root))
    s.step(10)
    model = str(root / "snap/h5mlp_iter_10.caffemodel.h5")
    with pytest.raises(NetspecError, match="--snapshot takes a .solverstate file"):
        s.restore(model)
    renamed = root / "model_named.solverstate"
    renamed.write_bytes(open(model, "rb").read())
    with pytest.raises(NetspecError, match="without the iter and history of a Caffe .solverstate.h5"):
        s.restore(str(renamed))
    state = root / "snap/h5mlp_iter_10.solverstate.h5"
    plain = root / "plain.solverstate"                  # a .solverstate.h5 under a binary name: still HDF5
    plain.write_bytes(state.read_bytes())
    s.restore(str(plain))
    assert s.iter == 10
    with h5py.File(state, "a") as f:
        del f["history/3"]
    with pytest.raises(NetspecError, match="the file is corrupted: its datasets do not match the sha256"):
        s.restore(str(state))
    with h5py.File(state, "a") as f:
        del f.attrs["netspec_sha256"]                   # as Caffe would have written it
    with pytest.raises(NetspecError, match="holds 3 history blobs, but a SGD solver for this net needs 4"):
        s.restore(str(state))
    s.close()


def test_hdf5_where_a_binary_proto_is_read_is_named_not_corrupted(tmp_path, shared_net):
    net = caffe.Net(shared_net, caffe.TEST)
    path = tmp_path / "w.caffemodel.h5"
    net.save_hdf5(str(path))
    from netspec.schema import read_binary_message
    from netspec.proto import caffe_pb2
    with pytest.raises(NetspecError) as e:
        read_binary_message(str(path), caffe_pb2.NetParameter())
    assert "an HDF5 file, not a binary NetParameter (.caffemodel)" in str(e.value) and "corrupt" not in str(e.value)
    proc = subprocess.run([sys.executable, "-m", "netspec", "upgrade", str(path), str(tmp_path / "out.caffemodel")],
                          capture_output=True, text=True)
    assert "corrupt" not in proc.stderr and "Traceback" not in proc.stderr and proc.returncode != 0


def test_a_diverged_snapshot_is_hdf5_too(h5_training):
    root = h5_training
    s = Solver(solver_file(root))
    s.param.base_lr = 1e30
    with pytest.raises(NetspecError, match="training diverged"):
        s.step(10)
    written = sorted(p.name for p in (root / "snap").iterdir())
    assert written and all(n.endswith(".h5.diverged") for n in written)
    assert all(h5py.is_hdf5(root / "snap" / n) for n in written)
    s.close()
