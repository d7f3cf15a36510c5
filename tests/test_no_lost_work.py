"""No lost work: one training per snapshot prefix, stale temp files cleaned, SIGTERM snapshots,
resume restores every weight or refuses, and netspec's files carry an integrity record."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from netspec import durable
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from netspec.snapshot import lock_prefix, release_prefix
from netspec.solver import Solver
from test_crash_safety import final_weights, solver_file, workdir  # noqa: F401  (fixture)


def start(workdir, solver, *flags):
    return subprocess.Popen([sys.executable, "-m", "netspec", "train", "--solver=" + solver, *flags],
                            cwd=workdir, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def wait_for(proc, text, timeout=60):
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if text in line:
            return lines
    proc.kill()
    raise AssertionError(f"never saw {text!r}: " + "".join(lines[-5:]))


# ---------------------------------------------------------------- one training per prefix
def test_a_second_run_on_the_same_prefix_is_refused_naming_the_holder(workdir):
    solver = solver_file(workdir, "s.prototxt", max_iter=100000, snapshot=50)
    first = start(workdir, solver)
    try:
        wait_for(first, "Iteration")
        second = subprocess.run([sys.executable, "-m", "netspec", "train", "--solver=" + solver], cwd=workdir,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("netspec: error: s.prototxt: snapshot_prefix 'snap/mlp' is in use by another "
                               f"training (pid {first.pid}"), last
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    # The OS dropped the killed run's lock: a new run on the prefix starts at once.
    third = subprocess.run([sys.executable, "-m", "netspec", "train", "--solver="
                            + solver_file(workdir, "t.prototxt", max_iter=4, snapshot=2)],
                           cwd=workdir, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr[-2000:]


def test_solvers_in_one_process_share_the_lock_and_release_it(tmp_path):
    prefix = str(tmp_path / "p")
    a = lock_prefix(prefix)
    assert lock_prefix(prefix) == a
    probe = [sys.executable, "-c", "import sys; from netspec.snapshot import lock_prefix; lock_prefix(sys.argv[1])",
             prefix]
    held = subprocess.run(probe, capture_output=True, text=True)
    assert held.returncode != 0 and f"pid {os.getpid()}" in held.stderr
    release_prefix(a)
    release_prefix(a)
    assert subprocess.run(probe, capture_output=True, text=True).returncode == 0


def test_stale_temp_files_of_killed_writes_are_removed_at_start(workdir):
    snap = workdir / "snap"
    snap.mkdir()
    old = time.time() - 3600
    stale = [".mlp_iter_3.caffemodel.netspec-tmp.4242.0a1b2c3d", ".mlp_iter_3.solverstate.netspec-tmp.4242.ffff0000",
             ".mlp_iter_9.caffemodel.k2j4_x9a.tmp"]          # the last: the pre-durable.py mkstemp name
    kept = [".mlp_notes", "mlp_iter_3.caffemodel.netspec-tmp.1.a", ".other_iter_3.caffemodel.netspec-tmp.1.ab"]
    for name in stale + kept:
        (snap / name).write_bytes(b"x" * 100)
        os.utime(snap / name, (old, old))
    r = subprocess.run([sys.executable, "-m", "netspec", "train",
                        "--solver=" + solver_file(workdir, "s.prototxt", max_iter=2, snapshot=2)],
                       cwd=workdir, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Removed 3 temp file(s) left beside 'snap/mlp'" in r.stderr
    names = set(os.listdir(snap))
    assert not names & set(stale) and set(kept) <= names
    assert "mlp.lock" not in names                  # a run that ends normally takes its lock file away


# ---------------------------------------------------------------- SIGTERM
def test_sigterm_snapshots_then_stops_even_without_snapshot_after_train(workdir):
    (workdir / "s.prototxt").write_text((workdir / solver_file(workdir, "base.prototxt", max_iter=100000,
                                                               snapshot=0)).read_text()
                                        + "snapshot_after_train: false\n")
    proc = start(workdir, "s.prototxt")
    wait_for(proc, "Iteration 10,")
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, rest[-2000:]
    assert "SIGTERM received: stopping after this iteration (a snapshot is written)" in rest
    assert "Optimization stopped early." in rest
    states = list((workdir / "snap").glob("*.solverstate"))
    assert len(states) == 1
    release_prefix(lock_prefix(str(workdir / "snap" / "mlp")))      # the lock went with the process


def test_sigterm_effect_none_keeps_training(workdir):
    proc = start(workdir, solver_file(workdir, "s.prototxt", max_iter=100000, snapshot=0), "--sigterm_effect=none")
    try:
        wait_for(proc, "Iteration 10,")
        proc.send_signal(signal.SIGTERM)
        wait_for(proc, "Iteration 40,")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


SLOW_LAYER = '''
import time
import netspec
class Stuck(netspec.Layer):
    def setup(self, bottom, top):
        pass
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        if self.phase == 0 and getattr(self, "calls", 0) > 3:
            print("stuck now", flush=True)
            while True:
                time.sleep(1000)
        self.calls = getattr(self, "calls", 0) + 1
        top[0].data[...] = bottom[0].data
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''


def test_a_second_sigint_ends_a_run_that_is_stuck(workdir):
    (workdir / "stuck.py").write_text(SLOW_LAYER)
    net = (workdir / "net.prototxt").read_text().replace(
        'layer { name: "loss"',
        'layer { name: "stuck" type: "Python" bottom: "ip2" top: "ip2s" python_param { module: "stuck" layer: "Stuck" } }\n'
        'layer { name: "loss"').replace('bottom: "ip2" bottom: "label"', 'bottom: "ip2s" bottom: "label"')
    (workdir / "net.prototxt").write_text(net)
    proc = subprocess.Popen([sys.executable, "-m", "netspec", "train", "--solver="
                             + solver_file(workdir, "s.prototxt", max_iter=100, snapshot=0)],
                            cwd=workdir, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(workdir) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert proc.stdout.readline().strip() == "stuck now"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None                       # the first one waits for the iteration to end
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    err = proc.stderr.read()
    assert "netspec: interrupted" in err and "Traceback" not in err


# ---------------------------------------------------------------- integrity record and complete resume
def _trained(workdir, monkeypatch, iters=2):
    monkeypatch.chdir(workdir)
    s = Solver(solver_file(workdir, "s.prototxt", max_iter=iters, snapshot=iters))
    s.step(iters)
    s.close()
    return workdir / "snap" / f"mlp_iter_{iters}.caffemodel", workdir / "snap" / f"mlp_iter_{iters}.solverstate"


def _layer_boundary_cut(path, keep_layers):
    """A .caffemodel cut exactly after its first `keep_layers` layers, Caffe-style (no integrity record)."""
    from netspec.integrity import unseal
    full = caffe_pb2.NetParameter.FromString(unseal(path.read_bytes(), path)[0])
    cut = caffe_pb2.NetParameter()
    cut.CopyFrom(full)
    del cut.layer[keep_layers:]
    return full, cut


def test_netspec_files_carry_a_record_caffe_ignores_and_netspec_checks(workdir, monkeypatch):
    model, state = _trained(workdir, monkeypatch)
    data = model.read_bytes()
    from netspec.integrity import FIELD, unseal
    parsed = caffe_pb2.NetParameter.FromString(data)          # what Caffe's parser sees: the same net
    assert [l.name for l in parsed.layer if l.blobs] == ["ip1", "ip2"]
    assert data[:2] == bytes([FIELD << 3 & 0x7F | 0x80 | 2, FIELD >> 4])   # field 1001, length-delimited
    assert unseal(data, "m")[1]
    # A cut exactly at a layer boundary still parses as protobuf; the record gives it away.
    payload = unseal(data, "m")[0]
    boundary = len(payload) - len(caffe_pb2.NetParameter(layer=[parsed.layer[-1]]).SerializeToString())
    model.write_bytes(data[:len(data) - len(payload) + boundary])
    caffe_pb2.NetParameter.FromString(model.read_bytes())    # valid protobuf ...
    s = Solver("s.prototxt")
    with pytest.raises(NetspecError, match=r"mlp_iter_2.caffemodel: the file is truncated: netspec wrote \d+ bytes"):
        s.restore(str(state))
    s.close()


def test_resume_refuses_a_caffemodel_missing_layers_and_names_them(workdir, monkeypatch):
    model, state = _trained(workdir, monkeypatch)
    full, cut = _layer_boundary_cut(model, keep_layers=2)     # keeps d and ip1, drops ip2's weights
    model.write_bytes(cut.SerializeToString())
    s = Solver("s.prototxt")
    with pytest.raises(NetspecError, match=r"mlp_iter_2.caffemodel: holds no weights for layer\(s\) 'ip2' of the net"):
        s.restore(str(state))
    s.close()


def test_weights_stay_lenient_but_log_both_directions(workdir, monkeypatch, caplog):
    model, _ = _trained(workdir, monkeypatch)
    full, cut = _layer_boundary_cut(model, keep_layers=2)
    extra = cut.layer.add()
    extra.CopyFrom(full.layer[1])
    extra.name = "old_head"
    (workdir / "cut.caffemodel").write_bytes(cut.SerializeToString())
    s = Solver("s.prototxt")
    with caplog.at_level("INFO", logger="netspec"):
        s.net.copy_from(str(workdir / "cut.caffemodel"))
    s.close()
    messages = [r.getMessage() for r in caplog.records]
    assert "Ignoring source layer old_head" in messages
    assert any(m.startswith("Layer ip2 got no weights from") for m in messages)
    assert not any(m.startswith("Layer ip1 got no weights") for m in messages)


def test_a_solverstate_without_learned_net_is_refused(workdir, monkeypatch):
    model, state = _trained(workdir, monkeypatch)
    from netspec.snapshot import read_solverstate, write_solverstate
    st, resume = read_solverstate(str(state))
    st.ClearField("learned_net")
    write_solverstate(str(state), st, resume)
    s = Solver("s.prototxt")
    with pytest.raises(NetspecError, match="records no weights file .its learned_net is empty."):
        s.restore(str(state))
    s.close()


# ---------------------------------------------------------------- MPI ranks must run the same training
class _FakeWorld:
    """Just enough of an MPI communicator for check_agreement's bcast/gather, ranks as threads."""

    def __init__(self, size):
        import threading
        self.size, self.barrier, self.slot, self.slots = size, threading.Barrier(size, timeout=30), None, [None] * size

    def comm(self, rank):
        world = self

        class Comm:
            def bcast(self, obj, root=0):
                if rank == root:
                    world.slot = obj
                world.barrier.wait()
                value = world.slot
                world.barrier.wait()
                return value

            def gather(self, obj, root=0):
                world.slots[rank] = obj
                world.barrier.wait()
                value = list(world.slots) if rank == root else None
                world.barrier.wait()
                return value

            def Barrier(self):
                pass
        return Comm()


def _agree(sections_per_rank):
    import threading
    from netspec.parallel import DataParallel
    world, errors = _FakeWorld(len(sections_per_rank)), {}

    def rank_main(rank):
        dp = DataParallel.__new__(DataParallel)     # no MPI, no logging changes: just the check
        dp.comm, dp.rank, dp.size = world.comm(rank), rank, world.size
        try:
            dp.check_agreement(sections_per_rank[rank])
        except NetspecError as e:
            errors[rank] = str(e)
    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world.size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_ranks_with_another_solver_or_net_end_the_job_naming_rank_and_line(workdir, monkeypatch):
    from netspec.parallel import run_sections
    monkeypatch.chdir(workdir)
    base = solver_file(workdir, "a.prototxt", max_iter=10, snapshot=0)
    (workdir / "b.prototxt").write_text((workdir / base).read_text().replace("base_lr: 0.05", "base_lr: 0.01"))
    (workdir / "net_c.prototxt").write_text((workdir / "net.prototxt").read_text().replace("num_output: 16",
                                                                                          "num_output: 17"))
    (workdir / "c.prototxt").write_text((workdir / base).read_text().replace('net: "net.prototxt"',
                                                                              'net: "net_c.prototxt"'))
    solvers = {name: Solver(name) for name in ("a.prototxt", "b.prototxt", "c.prototxt")}
    try:
        a, b, c = (run_sections(solvers[n]) for n in ("a.prototxt", "b.prototxt", "c.prototxt"))
        # Rank 0 alone tests: its test settings are no difference.
        shifted = Solver("a.prototxt")
        shifted.param.test_interval = 0
        shifted.param.ClearField("test_iter")
        assert _agree([a, run_sections(shifted)]) == {}
        shifted.close()
        assert _agree([a, a, a]) == {}
        errors = _agree([a, a, b])
        assert list(errors) == [0]
        assert errors[0] == ("the MPI ranks do not run the same training: rank 2's solver differs from rank 0's: "
                             "line 1: 'base_lr: 0.01' where rank 0 has 'base_lr: 0.05'")
        errors = _agree([a, c])
        assert errors[0].startswith("the MPI ranks do not run the same training: rank 1's solver differs")
        assert _agree([a, dict(c, solver=a["solver"])])[0].startswith(
            "the MPI ranks do not run the same training: rank 1's net differs from rank 0's: line ")
    finally:
        for s in solvers.values():
            s.close()
