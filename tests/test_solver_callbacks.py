"""Solver callbacks (netspec/callbacks.py): pycaffe's add_callback(on_start, on_gradients_ready) is called
where Caffe's Solver::Callback is, SolverCallback hooks can change what is logged and written, and a
solver's rank decides seeding and who tests."""
import numpy as np
import pytest

from netspec.callbacks import SolverCallback
from netspec.solver import Solver

TINY = """
net_param {{
  name: "tiny"
  layer {{ name: "x" type: "DummyData" top: "x" top: "y"
          dummy_data_param {{ shape {{ dim: 4 dim: 3 }} shape {{ dim: 4 dim: 2 }}
                             data_filler {{ type: "uniform" min: -1 max: 1 }} data_filler {{ type: "constant" value: 1 }} }} }}
  layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "out"
          inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.3 }}
                                bias_filler {{ type: "constant" value: 0.1 }} }} }}
  layer {{ name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "y" top: "loss" }}
}}
base_lr: 0.1
lr_policy: "fixed"
max_iter: 3
random_seed: {seed}
snapshot_after_train: false
{extra}
"""


def tiny(tmp_path, extra="", seed=3, rank=0, name="tiny.prototxt"):
    path = tmp_path / name
    path.write_text(TINY.format(extra=extra, seed=seed))
    return Solver(str(path), rank=rank)


def euclidean_gradients(x, y, w, b):
    """Worked out by hand: out = x W^T + b, loss = |out - y|^2 / (2N)."""
    d_out = (x @ w.T + b - y) / len(x)
    return d_out.T @ x, d_out.sum(axis=0)


def test_pycaffe_callbacks_run_at_caffes_points(tmp_path):
    s = tiny(tmp_path)
    w, b = s.net.params["ip"]
    seen = []

    def on_start():
        # After ClearParamDiffs, before forward/backward: no gradient yet.
        seen.append(("start", s.iter))
        assert not w.diff.any() and not b.diff.any()

    def on_gradients_ready():
        # After backward, before the update: the diffs are this iteration's gradients of the weights as they are.
        seen.append(("gradients", s.iter))
        x, y = s.net.blobs["x"].data.astype(np.float64), s.net.blobs["y"].data.astype(np.float64)
        gw, gb = euclidean_gradients(x, y, w.data.astype(np.float64), b.data.astype(np.float64))
        np.testing.assert_allclose(w.diff, gw, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b.diff, gb, rtol=1e-5, atol=1e-7)

    s.add_callback(on_start, on_gradients_ready)
    s.solve()
    assert seen == [("start", 0), ("gradients", 0), ("start", 1), ("gradients", 1), ("start", 2), ("gradients", 2)]


def test_on_gradients_ready_comes_before_the_update(tmp_path):
    s = tiny(tmp_path)
    before = [p.data.copy() for p in s.net.params["ip"]]

    def zero_gradients():
        for p in s.net.params["ip"]:
            p.diff[...] = 0

    s.add_callback(lambda: None, zero_gradients)
    s.step(2)
    assert s.iter == 2
    for p, old in zip(s.net.params["ip"], before):
        np.testing.assert_array_equal(p.data, old)          # no momentum, no decay: zero gradient, no step


def test_add_callback_refuses_what_cannot_be_called(tmp_path):
    s = tiny(tmp_path)
    with pytest.raises(TypeError, match="on_gradients_ready must be a function"):
        s.add_callback(lambda: None, 3)
    with pytest.raises(TypeError, match="on_start must be a function"):
        s.add_callback("start", lambda: None)


class Recorder(SolverCallback):
    def __init__(self, write=True):
        self.events, self.write = [], write

    def on_solve(self, solver, resume_file):
        self.events.append(("solve", solver.iter, resume_file))

    def on_gradients_ready(self, solver, loss):
        self.events.append(("gradients", solver.iter))
        return 2.0 * loss                                    # what is logged and smoothed

    def on_snapshot(self, solver, resume):
        self.events.append(("snapshot", solver.iter))
        return resume if self.write else None


def test_solver_callback_hooks_see_solve_gradients_and_snapshots(tmp_path):
    plain = tiny(tmp_path)                                   # each build reseeds the shared rng: one at a time
    plain.step(3)
    doubled = tiny(tmp_path, name="doubled.prototxt")
    recorder = Recorder(write=False)
    doubled.add_callback(recorder)
    doubled.solve()
    assert recorder.events[0] == ("solve", 0, None)
    assert [e for e in recorder.events if e[0] == "gradients"] == [("gradients", i) for i in range(3)]
    assert doubled._smoothed_loss > 0 and plain._smoothed_loss > 0
    # The same three iterations in both (the window holds the last loss): doubled by the callback alone.
    assert doubled._losses[0] == pytest.approx(2.0 * plain._losses[0])

    # on_snapshot returning None: this process writes nothing.
    s = tiny(tmp_path, extra=f'snapshot: 1 snapshot_prefix: "{tmp_path}/snaps/t"', name="snap.prototxt")
    silent = Recorder(write=False)
    s.add_callback(silent)
    assert s.snapshot() is None
    assert ("snapshot", 0) in silent.events and not list((tmp_path / "snaps").iterdir())
    writing = tiny(tmp_path, extra=f'snapshot: 1 snapshot_prefix: "{tmp_path}/snaps/t"', name="snap2.prototxt")
    writing.add_callback(Recorder(write=True))
    model, state = writing.snapshot()
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["t_iter_0.caffemodel", "t_iter_0.solverstate"]


def test_rank_seeds_with_random_seed_plus_rank_and_only_the_root_tests(tmp_path):
    extra = "test_iter: 1 test_interval: 2"
    second_rank = tiny(tmp_path, extra, seed=3, rank=1)
    root_seeded_4 = tiny(tmp_path, extra, seed=4, rank=0, name="four.prototxt")
    root_seeded_3 = tiny(tmp_path, extra, seed=3, rank=0, name="three.prototxt")
    w1, w4, w3 = (s.net.params["ip"][0].data for s in (second_rank, root_seeded_4, root_seeded_3))
    np.testing.assert_array_equal(w1, w4)                   # rank 1 draws as seed 3 + 1
    assert not np.array_equal(w1, w3)
    assert second_rank.test_nets == [] and len(root_seeded_3.test_nets) == 1
    assert second_rank.param.random_seed == 3               # the file's value: the Solver alone writes param
