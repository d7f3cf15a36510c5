"""Crash safety: SIGKILL at random moments, full or unwritable snapshot folders, readers during writes,
several processes on one LMDB, nets too large for memory."""
import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import netspec as caffe
from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from netspec.solver import Solver

NET = """
name: "mlp"
layer { name: "d" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.01 crop_size: 6 mirror: true }
        data_param { source: "db" batch_size: 8 backend: LMDB } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = """
net: "net.prototxt"
base_lr: 0.05
momentum: 0.9
lr_policy: "fixed"
display: 10
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 7
"""


@pytest.fixture
def workdir(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (37, 1, 8, 8)).astype(np.uint8)
    labels = rng.integers(0, 4, 37)
    write_lmdb_atomically(str(tmp_path / "db"), ((f"{i:08d}", array_to_datum(x, y).SerializeToString())
                                                 for i, (x, y) in enumerate(zip(images, labels))))
    (tmp_path / "net.prototxt").write_text(NET)
    return tmp_path


def solver_file(workdir, name, max_iter=200, snapshot=2, prefix="snap/mlp"):
    path = workdir / name
    path.write_text(SOLVER.format(max_iter=max_iter, snapshot=snapshot, prefix=prefix))
    return path.name


def final_weights(path):
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    return {l.name: [np.asarray(b.data, np.float32) for b in l.blobs] for l in net.layer if l.blobs}


def latest_state(folder):
    states = sorted(folder.glob("*.solverstate"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return states[-1] if states else None


def check_every_snapshot_loads(folder, solver_path, workdir, checked):
    """Restore every snapshot not checked before (a torn file could only be a recent one)."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        s = Solver(solver_path)
        for state in sorted(set(folder.glob("*.solverstate")) - checked):
            s.restore(str(state))                       # parses state, history and its caffemodel
            assert s.iter == int(state.stem.rsplit("_", 1)[1])
            checked.add(state)
    finally:
        os.chdir(cwd)


def run(workdir, args, watch=False):
    """Start `netspec train`; its log goes to train.log unless `watch` asks for a pipe to read."""
    log = subprocess.PIPE if watch else open(workdir / "train.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "netspec", "train", *args], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    if not watch:
        log.close()
    return proc


def log_tail(workdir):
    return (workdir / "train.log").read_text()[-2000:]


MAX_ITER = 1000


def test_sigkill_at_random_moments_then_resume_is_bit_identical(workdir):
    # A snapshot every iteration: many kills land in the middle of a snapshot write. The kills
    # come within 50 ms of training starting, so that even a fast machine cannot finish
    # MAX_ITER iterations before the sixth kill (CI once did at 300 iterations and 300 ms).
    reference = run(workdir, ["--solver=" + solver_file(workdir, "ref.prototxt", max_iter=MAX_ITER, snapshot=1,
                                                         prefix="ref/mlp")])
    assert reference.wait(timeout=300) == 0, log_tail(workdir)
    expected = final_weights(workdir / "ref" / f"mlp_iter_{MAX_ITER}.caffemodel")

    solver = solver_file(workdir, "solver.prototxt", max_iter=MAX_ITER, snapshot=1)
    chooser = random.Random(1234)
    kills = 0
    checked = set()
    while kills < 6:
        state = latest_state(workdir / "snap") if (workdir / "snap").exists() else None
        args = ["--solver=" + solver] + (["--snapshot=snap/" + state.name] if state else [])
        proc = run(workdir, args, watch=True)
        for line in proc.stderr:                    # wait until training runs, then kill at random
            if "Iteration" in line:
                break
        time.sleep(chooser.random() * 0.05)
        if proc.poll() is not None:
            break                                   # finished before the kill: fine, nothing to resume
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        check_every_snapshot_loads(workdir / "snap", solver, workdir, checked)
    assert kills >= 5
    state = latest_state(workdir / "snap")
    final = run(workdir, ["--solver=" + solver] + (["--snapshot=snap/" + state.name] if state else []))
    assert final.wait(timeout=300) == 0, log_tail(workdir)
    got = final_weights(workdir / "snap" / f"mlp_iter_{MAX_ITER}.caffemodel")
    for name in expected:
        for a, b in zip(expected[name], got[name]):
            np.testing.assert_array_equal(a, b)


def test_unwritable_snapshot_prefix_fails_before_training(workdir, monkeypatch):
    (workdir / "afile").write_text("not a folder")
    monkeypatch.chdir(workdir)
    with pytest.raises(NetspecError, match="cannot write snapshots to prefix 'afile/mlp'"):
        Solver(solver_file(workdir, "s.prototxt", prefix="afile/mlp"))


def test_disk_full_at_a_snapshot_write_keeps_the_previous_snapshot(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    s = Solver(solver_file(workdir, "s.prototxt", max_iter=4, snapshot=2))
    s.step(2)
    before = (workdir / "snap" / "mlp_iter_2.caffemodel").read_bytes()
    real_replace = os.replace

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(NetspecError, match=r"mlp_iter_4.caffemodel: cannot write \(No space left on device\)"):
        s.step(2)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (workdir / "snap" / "mlp_iter_2.caffemodel").read_bytes() == before
    assert not (workdir / "snap" / "mlp_iter_4.caffemodel").exists()
    assert [p for p in (workdir / "snap").iterdir() if p.name.endswith(".tmp")] == []


def test_reader_never_sees_a_torn_snapshot(workdir):
    """A process reading the newest snapshot while training rewrites it every iteration."""
    solver = solver_file(workdir, "s.prototxt", max_iter=150, snapshot=1)
    (workdir / "snap").mkdir()
    proc = run(workdir, ["--solver=" + solver])
    reads, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            for path in list((workdir / "snap").glob("*.caffemodel")):
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                net = caffe_pb2.NetParameter.FromString(data)
                sizes = [len(b.data) for l in net.layer for b in l.blobs]
                assert sizes == [16 * 36, 16, 4 * 16, 4], sizes
                reads.append(path.name)
    t = threading.Thread(target=reader)
    t.start()
    assert proc.wait(timeout=300) == 0, log_tail(workdir)
    stop.set()
    t.join()
    assert len(reads) > 20


def test_two_processes_train_from_one_lmdb_at_once(workdir):
    a = run(workdir, ["--solver=" + solver_file(workdir, "a.prototxt", max_iter=60, prefix="a/mlp")])
    b = run(workdir, ["--solver=" + solver_file(workdir, "b.prototxt", max_iter=60, prefix="b/mlp")])
    assert a.wait(timeout=300) == 0, log_tail(workdir)
    assert b.wait(timeout=300) == 0, log_tail(workdir)
    assert sorted(os.listdir(workdir / "db")) == ["data.mdb", "lock.mdb"]    # readers added nothing
    assert final_weights(workdir / "a" / "mlp_iter_60.caffemodel").keys() == {"ip1", "ip2"}


def test_net_too_large_for_memory_is_an_error_with_an_estimate(tmp_path):
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 512 dim: 3 dim: 512 dim: 512 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4096 kernel_size: 3 pad: 1 } }
    """
    path = tmp_path / "huge.prototxt"
    path.write_text(text)
    with pytest.raises(NetspecError, match=r"layer 'conv' \(Convolution\): blob of shape \(512, 4096, 512, 512\) "
                                           r"needs .* GiB .* Memory required for data up to this layer: \d+ bytes"):
        caffe.Net(str(path), caffe.TEST)
