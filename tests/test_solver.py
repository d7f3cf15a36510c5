"""Training: solver loop, snapshots in Caffe's format, exact resume, regularisation, clipping, logs."""
import gzip
import io
import logging
import os
import re
import shutil

import numpy as np
import pytest

import netspec as caffe
from netspec import glog
from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from netspec.solver import Solver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mnist_subset(tmp_path_factory):
    """Small train/test LMDBs from the first MNIST records (read independently of netspec)."""
    folder = tmp_path_factory.mktemp("mnist")
    with gzip.open(os.path.join(REPO, "data/mnist/train-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16, count=700 * 784).reshape(700, 1, 28, 28)
    with gzip.open(os.path.join(REPO, "data/mnist/train-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8, count=700)
    for name, sl in (("train", slice(0, 500)), ("test", slice(500, 700))):
        recs = ((f"{i:08d}", array_to_datum(img, lab).SerializeToString())
                for i, (img, lab) in enumerate(zip(images[sl], labels[sl])))
        write_lmdb_atomically(str(folder / f"{name}_lmdb"), recs)
    return folder


NET = """
name: "mlp"
layer {{ name: "mnist" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ scale: 0.00390625 crop_size: 26 mirror: true }}
        data_param {{ source: "{root}/train_lmdb" batch_size: 16 backend: LMDB }} }}
layer {{ name: "mnist" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ scale: 0.00390625 crop_size: 26 }}
        data_param {{ source: "{root}/test_lmdb" batch_size: 50 backend: LMDB }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
        inner_product_param {{ num_output: 32 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param {{ dropout_ratio: 0.3 }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""

SOLVER = """
net: "{net}"
test_iter: 2
test_interval: 20
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 10
average_loss: 5
max_iter: {max_iter}
snapshot: 20
snapshot_prefix: "{prefix}"
random_seed: 1701
{extra}
"""


def write_solver(tmp_path, root, max_iter=60, extra="", name="solver.prototxt"):
    net = tmp_path / "net.prototxt"
    net.write_text(NET.format(root=root))
    path = tmp_path / name
    path.write_text(SOLVER.format(net=net, max_iter=max_iter, prefix=tmp_path / "snap" / "mlp", extra=extra))
    return str(path)


class LogCapture:
    def __enter__(self):
        self.stream = io.StringIO()
        glog.configure(self.stream)
        return self

    def __exit__(self, *exc):
        glog.configure()

    @property
    def text(self):
        return self.stream.getvalue()


def weights(net):
    return {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


def displayed_losses(log):
    return re.findall(r"Iteration (\d+) \(.*\), loss = (\S+)", log)


def test_training_reduces_loss_and_tests(tmp_path, mnist_subset):
    with LogCapture() as cap:
        s = caffe.SGDSolver(write_solver(tmp_path, mnist_subset, max_iter=100))
        s.solve()
    losses = [float(v) for _, v in displayed_losses(cap.text)]
    assert losses[-1] < 0.6 * losses[0]
    acc = re.findall(r"Test net output #0: accuracy = (\S+)", cap.text)
    assert len(acc) == 6 and float(acc[-1]) > 0.4        # iterations 0, 20, ..., 100; chance is 0.1
    assert "Optimization Done." in cap.text and s.iter == 100


def test_exact_resume_is_bit_identical(tmp_path, mnist_subset):
    with LogCapture() as full_log:
        full = Solver(write_solver(tmp_path, mnist_subset))
        full.solve()
    reference = weights(full.net)
    for k in (20, 40):
        state = tmp_path / "snap" / f"mlp_iter_{k}.solverstate"
        with LogCapture() as resumed_log:
            resumed = Solver(write_solver(tmp_path, mnist_subset, name=f"resume{k}.prototxt"))
            resumed.solve(str(state))
        for name in reference:
            for a, b in zip(reference[name], resumed.net.params[name]):
                np.testing.assert_array_equal(a, b.data)
        after = [(i, v) for i, v in displayed_losses(full_log.text) if int(i) >= k]
        assert displayed_losses(resumed_log.text) == after


def test_snapshot_files_are_caffe_messages(tmp_path, mnist_subset):
    s = Solver(write_solver(tmp_path, mnist_subset, max_iter=20))
    s.solve()
    model = caffe_pb2.NetParameter.FromString((tmp_path / "snap" / "mlp_iter_20.caffemodel").read_bytes())
    assert [l.name for l in model.layer if l.blobs] == ["ip1", "ip2"]
    assert list(model.layer[[l.name for l in model.layer].index("ip1")].blobs[0].shape.dim) == [32, 676]
    state = caffe_pb2.SolverState.FromString((tmp_path / "snap" / "mlp_iter_20.solverstate").read_bytes())
    assert state.iter == 20 and state.learned_net.endswith("mlp_iter_20.caffemodel")
    assert len(state.history) == 4                     # SGD: one momentum blob per param
    assert list(state.history[0].shape.dim) == [32, 676]


def test_moved_snapshot_falls_back_to_the_caffemodel_beside_it(tmp_path, mnist_subset):
    s = Solver(write_solver(tmp_path, mnist_subset, max_iter=20))
    s.solve()
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "snap", moved)
    shutil.rmtree(tmp_path / "snap")
    with LogCapture() as cap:
        r = Solver(write_solver(tmp_path, mnist_subset, max_iter=20, name="again.prototxt"))
        r.restore(str(moved / "mlp_iter_20.solverstate"))
    assert "beside the solver state" in cap.text
    np.testing.assert_array_equal(r.net.params["ip1"][0].data, s.net.params["ip1"][0].data)


def test_restore_rejects_history_of_another_solver_type(tmp_path, mnist_subset):
    s = Solver(write_solver(tmp_path, mnist_subset, max_iter=20))
    s.solve()
    adam = Solver(write_solver(tmp_path, mnist_subset, extra='type: "Adam"', name="adam.prototxt"))
    with pytest.raises(NetspecError, match="holds 4 history blobs, but a Adam solver for this net needs 8"):
        adam.restore(str(tmp_path / "snap" / "mlp_iter_20.solverstate"))


TINY = """
net_param {{
  name: "tiny"
  force_backward: true
  layer {{ name: "x" type: "DummyData" top: "x" top: "y"
          dummy_data_param {{ shape {{ dim: 4 dim: 3 }} shape {{ dim: 4 dim: 2 }}
                             data_filler {{ type: "constant" value: 0.5 }} data_filler {{ type: "constant" value: 1 }} }} }}
  layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "out" param {{ lr_mult: 1 decay_mult: 1 }}
          param {{ lr_mult: 2 decay_mult: 0 }}
          inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.3 }}
                                bias_filler {{ type: "constant" value: 0.1 }} }} }}
  layer {{ name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "y" top: "loss" }}
}}
base_lr: 0.1
lr_policy: "fixed"
max_iter: 3
random_seed: 3
snapshot_after_train: false
{extra}
"""


def tiny(tmp_path, extra="", name="tiny.prototxt"):
    path = tmp_path / name
    path.write_text(TINY.format(extra=extra))
    return Solver(str(path))


@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_one_update_with_decay_and_lr_mult(tmp_path, reg):
    s = tiny(tmp_path, f'weight_decay: 0.01 regularization_type: "{reg}"')
    w, b = (p.data.copy() for p in s.net.params["ip"])
    s.net.clear_param_diffs()
    s.net.forward_backward()
    gw, gb = (p.diff.copy() for p in s.net.params["ip"])
    s.apply_update()
    decay = 0.01 * (w if reg == "L2" else np.sign(w))
    np.testing.assert_allclose(s.net.params["ip"][0].data, w - 0.1 * (gw + decay), rtol=1e-6)
    np.testing.assert_allclose(s.net.params["ip"][1].data, b - 0.2 * gb, rtol=1e-6)   # lr_mult 2, no decay


def test_clip_gradients_scales_to_the_global_norm(tmp_path):
    s = tiny(tmp_path, "clip_gradients: 0.01")
    before = [p.data.copy() for p in s.net.params["ip"]]
    s.net.clear_param_diffs()
    s.net.forward_backward()
    grads = [p.diff.copy() for p in s.net.params["ip"]]
    norm = np.sqrt(sum(float((g ** 2).sum()) for g in grads))
    assert norm > 0.01
    s.apply_update()
    steps = [(b - p.data) / m for b, p, m in zip(before, s.net.params["ip"], (0.1, 0.2))]
    np.testing.assert_allclose(np.sqrt(sum(float((x ** 2).sum()) for x in steps)), 0.01, rtol=1e-4)


def test_iter_size_accumulates_then_averages(tmp_path):
    # DummyData gives the same batch every time, so iter_size 2 must equal iter_size 1.
    one, two = tiny(tmp_path), tiny(tmp_path, "iter_size: 2", name="two.prototxt")
    one.step(3)
    two.step(3)
    for a, b in zip(one.net.params["ip"], two.net.params["ip"]):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6)


def test_legacy_solver_type_selects_the_rule(tmp_path):
    s = tiny(tmp_path, "solver_type: NESTEROV momentum: 0.9")
    assert s.param.type == "Nesterov" and type(s.rule).__name__ == "Nesterov"


def test_divergence_names_the_iteration_and_layer(tmp_path):
    s = tiny(tmp_path)
    s.param.base_lr = 1e30
    with pytest.raises(NetspecError, match=r"training diverged at iteration \d+: loss is (inf|nan); first non-finite .* of layer '\w+'"):
        s.step(5)


@pytest.mark.parametrize("extra, message", [
    ("base_lr: -1", "base_lr must be positive"),
    ('lr_policy: "wiggle"', "unknown lr_policy 'wiggle'"),
    ('lr_policy: "step" gamma: 0.1', "lr_policy 'step' needs 'stepsize'"),
    ("test_iter: 5", "test nets are defined but test_interval is 0"),
])
def test_solver_errors(tmp_path, extra, message):
    text = TINY.format(extra="").replace("base_lr: 0.1\n", "").replace('lr_policy: "fixed"\n', "")
    defaults = {"base_lr": "base_lr: 0.1", "lr_policy": 'lr_policy: "fixed"'}
    for key, line in defaults.items():
        if not extra.startswith(key):
            text += line + "\n"
    path = tmp_path / "s.prototxt"
    path.write_text(text + extra + "\n")
    with pytest.raises(NetspecError, match=message):
        Solver(str(path))


def test_test_iter_without_a_test_net(tmp_path):
    net = tmp_path / "n.prototxt"
    net.write_text(TINY.format(extra="").split("net_param {")[1].rsplit("}", 1)[0])
    path = tmp_path / "s.prototxt"
    path.write_text(f'train_net: "{net}"\ntest_iter: 5\ntest_interval: 10\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    with pytest.raises(NetspecError, match="test_iter is set but there is no test net"):
        Solver(str(path))


def test_log_parses_with_caffes_regular_expressions(tmp_path, mnist_subset):
    """The regexes of Caffe's tools/extra/parse_log.py recover what the solver printed."""
    with LogCapture() as cap:
        s = Solver(write_solver(tmp_path, mnist_subset, max_iter=40))
        s.solve()
    regex_iteration = re.compile(r"Iteration (\d+)")
    regex_train_output = re.compile(r"Train net output #(\d+): (\S+) = ([.\deE+-]+)")
    regex_test_output = re.compile(r"Test net output #(\d+): (\S+) = ([.\deE+-]+)")
    regex_learning_rate = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
    iteration, train, test, rates = -1, [], [], []
    for line in cap.text.splitlines():
        m = regex_iteration.search(line)
        if m:
            iteration = int(m.group(1))
        m = regex_learning_rate.search(line)
        if m:
            rates.append((iteration, float(m.group(1))))
        m = regex_train_output.search(line)
        if m:
            train.append((iteration, m.group(2), float(m.group(3))))
        m = regex_test_output.search(line)
        if m:
            test.append((iteration, m.group(2), float(m.group(3))))
    assert [i for i, _ in rates] == [0, 10, 20, 30]
    assert rates[1][1] == pytest.approx(0.05 * (1 + 0.0001 * 10) ** -0.75, rel=1e-5)
    assert [(i, n) for i, n, _ in train] == [(i, "loss") for i in (0, 10, 20, 30)]
    assert [(i, n) for i, n, _ in test] == [(i, n) for i in (0, 20, 40) for n in ("accuracy", "loss")]


@pytest.mark.parametrize("extra", ['weight_decay: 0.01 momentum: 0.9', 'iter_size: 2 momentum: 0.5',
                                   'weight_decay: 0.002 type: "Nesterov" momentum: 0.9'])
def test_compiled_sgd_step_follows_the_numpy_steps_bit_for_bit(tmp_path, monkeypatch, extra):
    from netspec.layers import native
    if not native.has_sgd_step(np.float32):
        pytest.skip("compiled kernels not built")
    compiled = tiny(tmp_path, extra)
    compiled.step(4)
    monkeypatch.setattr(native, "has_sgd_step", lambda dtype: False)
    plain = tiny(tmp_path, extra, name="plain.prototxt")
    plain.step(4)
    for a, b in zip(compiled.net.params["ip"], plain.net.params["ip"]):
        np.testing.assert_array_equal(a.data, b.data)
    for a, b in zip(compiled._histories, plain._histories):
        np.testing.assert_array_equal(a[0], b[0])
