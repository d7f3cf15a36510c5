"""No hang: damaged resume state never deadlocks the data thread, FIFOs and devices are refused
wherever a path is read, and net setup is linear in the number of layers."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import netspec as caffe
from netspec import reading
from netspec.errors import NetspecError
from netspec.layers.data import _Prefetcher
from netspec.snapshot import read_solverstate, write_solverstate
from netspec.solver import Solver
from test_crash_safety import solver_file, workdir  # noqa: F401  (fixture)


def cli(workdir, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "netspec", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def last_line(result):
    return result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- damaged resume state
def damage_resume_record(workdir, monkeypatch, change):
    """Train 2 iterations, then rewrite the snapshot's resume record through change(record)."""
    monkeypatch.chdir(workdir)
    s = Solver(solver_file(workdir, "s.prototxt", max_iter=4, snapshot=2))
    s.step(2)
    s.close()
    path = str(workdir / "snap" / "mlp_iter_2.solverstate")
    state, resume = read_solverstate(path)
    change(resume)
    write_solverstate(path, state, resume)
    return path


@pytest.mark.parametrize("damage", [
    {"position": 10 ** 9},                    # past the LMDB's end: the seek fails after the thread stopped
    {"position": "12"},                       # a string where a number belongs
    {"rng": {"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}, "has_uint32": 0, "uinteger": 0}},
])
def test_damaged_data_layer_state_warns_and_training_goes_on(workdir, monkeypatch, damage):
    damage_resume_record(workdir, monkeypatch, lambda record: record["layers"]["train/d"].update(damage))
    r = cli(workdir, "train", "--solver=s.prototxt", "--snapshot=snap/mlp_iter_2.solverstate")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "its netspec resume data is damaged" in r.stderr and "Optimization Done." in r.stderr


@pytest.mark.parametrize("field,value", [("losses", ["a", "b"]), ("loss_index_base", "7"), ("smoothed_loss", [1]),
                                         ("layers", [1, 2]), ("rng", "none")])
def test_resume_record_types_are_checked_before_use(workdir, monkeypatch, caplog, field, value):
    path = damage_resume_record(workdir, monkeypatch, lambda record: record.__setitem__(field, value))
    s = Solver("s.prototxt")
    with caplog.at_level("WARNING", logger="netspec"):
        s.restore(path)
        s.step(2)                              # trains on: no TypeError, no hang
    s.close()
    assert any("resume data is damaged (ValueError: " in r.getMessage() and field in r.getMessage()
               for r in caplog.records)


def test_a_prefetcher_whose_thread_is_gone_raises_instead_of_waiting():
    p = _Prefetcher(lambda: time.sleep(0.01) or 1, depth=1)
    p.stop()
    with pytest.raises(NetspecError, match="prefetch thread has stopped"):
        p.get()


# ---------------------------------------------------------------- FIFOs and devices
@pytest.fixture
def fifo(workdir):
    path = workdir / "pipe"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("args,expected", [
    (["time", "--model=pipe", "--iterations=1"], "pipe: is a FIFO (named pipe), not a regular file"),
    (["train", "--solver=pipe"], "pipe: is a FIFO (named pipe), not a regular file"),
    (["test", "--model=net.prototxt", "--weights=pipe", "--iterations=1"],
     "pipe: is a FIFO (named pipe), not a regular file"),
    (["train", "--solver=s.prototxt", "--snapshot=pipe"], "pipe: is a FIFO (named pipe), not a regular file"),
    (["time", "--model=/dev/zero", "--iterations=1"], "/dev/zero: is a character device, not a regular file"),
    (["test", "--model=net.prototxt", "--weights=/dev/urandom", "--iterations=1"],
     "/dev/urandom: is a character device, not a regular file"),
    (["convert_mnist", "pipe", "pipe", "out_lmdb"], "pipe: is a FIFO (named pipe), not a regular file"),
    (["compute_image_mean", "pipe", "m.binaryproto"], "pipe: is a FIFO (named pipe), not a regular file"),
])
def test_fifos_and_devices_are_refused_at_once(workdir, fifo, args, expected):
    solver_file(workdir, "s.prototxt", max_iter=2, snapshot=0)
    r = cli(workdir, *args, timeout=60)
    assert r.returncode == 1, r.stderr[-1000:]
    assert expected in last_line(r) and "Traceback" not in r.stderr


@pytest.mark.parametrize("field", ["source", "mean_file", "learned_net"])
def test_fifo_inside_a_net_or_solverstate_is_refused(workdir, fifo, monkeypatch, field):
    monkeypatch.chdir(workdir)
    net = (workdir / "net.prototxt").read_text()
    if field == "source":
        (workdir / "net.prototxt").write_text(net.replace('source: "db"', 'source: "pipe"'))
    elif field == "mean_file":
        (workdir / "net.prototxt").write_text(net.replace("scale: 0.01", 'scale: 0.01 mean_file: "pipe"'))
    if field == "learned_net":
        s = Solver(solver_file(workdir, "s.prototxt", max_iter=2, snapshot=2))
        s.step(2)
        s.close()
        path = str(workdir / "snap" / "mlp_iter_2.solverstate")
        state, resume = read_solverstate(path)
        state.learned_net = "pipe"
        write_solverstate(path, state, resume)
        r = cli(workdir, "train", "--solver=s.prototxt", "--snapshot=" + path)
    else:
        r = cli(workdir, "train", "--solver=" + solver_file(workdir, "s.prototxt", max_iter=2, snapshot=0))
    assert r.returncode == 1 and "pipe: is a FIFO (named pipe), not a regular file" in last_line(r), r.stderr[-800:]


def test_dev_stdin_is_allowed_for_a_net_deliberately(workdir):
    text = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'
    r = subprocess.run([sys.executable, "-m", "netspec", "time", "--model=/dev/stdin", "--iterations=1"],
                       cwd=workdir, input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-800:]


def test_read_bytes_bounds_what_it_reads(tmp_path):
    path = tmp_path / "big.prototxt"
    path.write_bytes(b"#" * 1000)
    with pytest.raises(NetspecError, match=r"big.prototxt: 1000 bytes, more than netspec reads for a file \(999 bytes\)"):
        reading.read_bytes(path, "a file", limit=999)
    assert reading.read_bytes(path, "a file", limit=1000) == b"#" * 1000


@pytest.mark.parametrize("layer", [
    'type: "ImageData" image_data_param { source: "pipe" batch_size: 1 }',
    'type: "DenseImageData" dense_image_data_param { source: "pipe" batch_size: 1 }',
    'type: "WindowData" window_data_param { source: "pipe" batch_size: 1 } transform_param { crop_size: 8 }',
    'type: "HDF5Data" hdf5_data_param { source: "pipe" batch_size: 1 }',
])
def test_a_fifo_as_a_list_file_is_refused(workdir, fifo, layer):
    (workdir / "lists.prototxt").write_text(f'layer {{ name: "d" {layer} top: "a" top: "b" }}\n')
    r = cli(workdir, "time", "--model=lists.prototxt", "--iterations=1", timeout=60)
    assert r.returncode == 1 and "pipe: is a FIFO (named pipe), not a regular file" in last_line(r), r.stderr[-800:]
