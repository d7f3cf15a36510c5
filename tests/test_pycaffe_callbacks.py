"""pycaffe's Solver.add_callback(on_start, on_gradients_ready) as pycaffe scripts use it (beyond
tests/test_solver_callbacks.py): several callbacks in the order added, the update that follows,
and a script that records the loss with a callback.

Caffe calls every on_start at the start of each iteration (after a scheduled test, before
forward/backward) and every on_gradients_ready once the iteration's gradients are in the
params' diffs, before the update, in the order the callbacks were added.
"""
import json

import numpy as np
import pytest

import caffe
from test_pycaffe import REGRESSION, write
from test_pycaffe_scripts import run_script


@pytest.fixture
def solver(tmp_path):
    net_file = write(tmp_path / "net.prototxt", REGRESSION)
    return caffe.SGDSolver(write(tmp_path / "solver.prototxt", f"""
        net: '{net_file}' base_lr: 0.1 lr_policy: 'fixed' max_iter: 5 display: 0
        snapshot_after_train: false"""))


def test_callbacks_run_once_per_iteration_in_order(solver):
    events = []
    solver.add_callback(lambda: events.append(("start", solver.iter)), lambda: events.append(("ready", solver.iter)))
    solver.add_callback(lambda: events.append(("start2", solver.iter)), lambda: events.append(("ready2", solver.iter)))
    solver.step(2)
    assert events == [("start", 0), ("start2", 0), ("ready", 0), ("ready2", 0),
                      ("start", 1), ("start2", 1), ("ready", 1), ("ready2", 1)]
    solver.solve()                                          # the remaining 3 iterations of max_iter 5
    assert [e for e in events if e[0] == "ready"] == [("ready", i) for i in range(5)]


def test_gradients_are_ready_and_the_update_follows(solver):
    w = solver.net.params["ip"][0]
    seen = []

    def on_gradients_ready():
        # By hand: x = 1 (3 features), y = 2, loss = sum((w.x + b - y)^2) / (2 N) over N = 4 rows,
        # so dL/dw_k = mean over rows of (w.x + b - y) * x_k = w.x + b - 2.
        error = w.data.sum() + solver.net.params["ip"][1].data[0] - 2
        seen.append((w.data.copy(), w.diff.copy(), error))

    solver.add_callback(lambda: None, on_gradients_ready)
    solver.step(3)
    for (before, diff, error), (after, _, _) in zip(seen, seen[1:]):
        np.testing.assert_allclose(diff, np.full((1, 3), error), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(after, before - 0.1 * diff, rtol=1e-5, atol=1e-7)


LOSS_RECORDER = """
import json
import caffe

solver = caffe.SGDSolver("solver.prototxt")
losses, iters = [], []
solver.add_callback(lambda: iters.append(solver.iter),
                    lambda: losses.append(float(solver.net.blobs["loss"].data)))
solver.step(3)
json.dump({"losses": losses, "iters": iters, "w": solver.net.params["ip"][0].data.tolist()},
          open("losses.json", "w"))
"""


def test_script_records_losses_with_a_callback(tmp_path):
    write(tmp_path / "net.prototxt", REGRESSION)
    write(tmp_path / "solver.prototxt", """
        net: 'net.prototxt' base_lr: 0.1 lr_policy: 'fixed' max_iter: 5 display: 0 snapshot_after_train: false""")
    run_script(tmp_path, "record.py", LOSS_RECORDER)
    out = json.loads((tmp_path / "losses.json").read_text())
    # By hand: w = 0, b = 0 at first; every row has error e = 3w + b - 2 (x = 1, y = 2), loss = e^2 / 2,
    # gradients e for each w_k and for b: e' = e - 0.1 * e * (3 + 1) = 0.6 e.
    errors = [-2 * 0.6 ** k for k in range(3)]
    assert out["iters"] == [0, 1, 2]
    np.testing.assert_allclose(out["losses"], [e * e / 2 for e in errors], rtol=1e-5)
    np.testing.assert_allclose(out["w"], [[-0.1 * sum(errors)] * 3], rtol=1e-5)
