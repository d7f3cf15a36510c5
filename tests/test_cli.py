"""The `netspec` command: Caffe's flags and log lines, exit codes, signals."""
import os
import signal
import subprocess
import sys
import time

import pytest

from netspec.proto import caffe_pb2

NET = """
name: "tiny"
layer { name: "x" type: "DummyData" top: "x" top: "label"
        dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 }
                           data_filler { type: "gaussian" } data_filler { type: "constant" value: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 4
        weight_filler { type: "xavier" } } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

SOLVER = """
net: "net.prototxt"
test_iter: 3
test_interval: 10
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
display: 5
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "snap/tiny"
random_seed: 5
"""


def netspec(args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "netspec", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER.format(max_iter=20, snapshot=10))
    return tmp_path


def test_train_writes_caffe_log_lines_and_snapshots(workdir):
    r = netspec(["train", "-solver", "solver.prototxt"], workdir)      # gflags-style single dash
    assert r.returncode == 0, r.stderr
    log = r.stderr
    for line in ("Solving tiny", "Iteration 5 (", "Train net output #0: loss = ", "Iteration 5, lr = 0.01",
                 "Iteration 10, Testing net (#0)", "Test net output #0: accuracy = ",
                 "Snapshotting to binary proto file snap/tiny_iter_10.caffemodel",
                 "Snapshotting solver state to binary proto file snap/tiny_iter_10.solverstate",
                 "Optimization Done."):
        assert line in log, line
    assert "\x1b[K" not in log                                       # no progress line in a pipe
    assert (workdir / "snap" / "tiny_iter_20.caffemodel").exists()
    state = caffe_pb2.SolverState.FromString((workdir / "snap" / "tiny_iter_20.solverstate").read_bytes())
    assert state.iter == 20


def test_resume_and_finetune_flags(workdir):
    assert netspec(["train", "--solver=solver.prototxt"], workdir).returncode == 0
    (workdir / "solver40.prototxt").write_text(SOLVER.format(max_iter=30, snapshot=10))
    r = netspec(["train", "--solver=solver40.prototxt", "--snapshot=snap/tiny_iter_20.solverstate"], workdir)
    assert r.returncode == 0 and "Restoring previous solver status from snap/tiny_iter_20.solverstate" in r.stderr
    assert "Iteration 25 (" in r.stderr and "Iteration 5 (" not in r.stderr
    r = netspec(["train", "--solver=solver.prototxt", "--weights=snap/tiny_iter_20.caffemodel"], workdir)
    assert r.returncode == 0 and "Finetuning from snap/tiny_iter_20.caffemodel" in r.stderr


@pytest.mark.parametrize("args, code, message", [
    (["train", "--solver=solver.prototxt", "--snapshot=a.solverstate", "--weights=b.caffemodel"], 2,
     "give either --snapshot (resume) or --weights (fine-tune), not both"),
    (["train", "--solver=solver.prototxt", "--gpu=0"], 2, "netspec runs on the CPU only"),
    (["train"], 2, "Missing option '--solver'"),
    (["train", "--solver=nope.prototxt"], 1, "netspec: error: nope.prototxt: no such file"),
    (["train", "--solver=solver.prototxt", "--snapshot=snap/x.caffemodel"], 1,
     "--snapshot takes a .solverstate file"),
])
def test_errors_are_one_line_with_exit_codes(workdir, args, code, message):
    r = netspec(args, workdir)
    assert r.returncode == code
    assert message in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr


def test_test_command_prints_batches_and_means(workdir):
    assert netspec(["train", "--solver=solver.prototxt"], workdir).returncode == 0
    r = netspec(["test", "--model=net.prototxt", "--weights=snap/tiny_iter_20.caffemodel", "--iterations=3"],
                workdir)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Batch 2, accuracy = ") == 1 and "Loss: " in r.stderr
    assert [line for line in r.stderr.splitlines() if "] accuracy = " in line]


def test_time_command_prints_caffes_summary(workdir):
    r = netspec(["time", "--model=net.prototxt", "--iterations=3"], workdir)
    assert r.returncode == 0, r.stderr
    for line in ("ip\tforward: ", "ip\tbackward: ", "Average Forward pass: ", "Average Backward pass: ",
                 "Average Forward-Backward: ", "*** Benchmark ends ***"):
        assert line in r.stderr, line


def test_device_query(workdir):
    r = netspec(["device_query"], workdir)
    assert r.returncode == 0 and "Cores: " in r.stderr and "BLAS: " in r.stderr


def _start_training(workdir, max_iter=100000):
    (workdir / "long.prototxt").write_text(SOLVER.format(max_iter=max_iter, snapshot=0).replace(
        "display: 5", "display: 1"))
    proc = subprocess.Popen([sys.executable, "-m", "netspec", "train", "--solver=long.prototxt",
                             "--sighup_effect=snapshot"], cwd=workdir, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "Iteration 30 (" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("training did not start: " + "".join(lines[-5:]))


def test_sigint_stops_with_a_snapshot(workdir):
    proc, lines = _start_training(workdir)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert "Optimization stopped early." in rest and "Snapshotting to binary proto file" in rest
    snaps = sorted(p.name for p in (workdir / "snap").glob("*.solverstate"))
    assert len(snaps) == 1


def test_sighup_snapshots_and_continues(workdir):
    proc, lines = _start_training(workdir)
    proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 60
    seen = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if "Snapshotting solver state" in line:
            break
    # Still training afterwards.
    more = [proc.stderr.readline() for _ in range(10)]
    proc.kill()
    proc.wait()
    assert any("Snapshotting solver state" in line for line in seen)
    assert any("Iteration" in line for line in more)
