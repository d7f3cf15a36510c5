"""pycaffe parity: the `caffe` package, pycaffe 1.0's names and the behaviour pycaffe users rely on."""
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import caffe
import netspec
from netspec import NetspecError, glog, pycaffe
from netspec.proto import caffe_pb2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, cwd, env=None, path=()):
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(list(path) + [REPO])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


# ---------------------------------------------------------------- the caffe package

def test_caffe_names_are_netspecs_objects():
    import caffe.draw
    import caffe.proto.caffe_pb2
    from caffe import layers as L, params as P
    from caffe.coord_map import crop
    from caffe.io import Transformer
    from caffe.proto import caffe_pb2 as pb2
    assert caffe.Net is netspec.Net and caffe.Layer is netspec.Layer
    assert pb2 is caffe_pb2 and caffe.proto.caffe_pb2 is caffe_pb2
    assert caffe.draw is netspec.draw and Transformer is netspec.io.Transformer
    assert crop is netspec.coord_map.crop and L is netspec.net_spec.layers and P is netspec.net_spec.params
    assert caffe.TRAIN == caffe_pb2.TRAIN and caffe.TEST == caffe_pb2.TEST
    for name in ("SGDSolver", "AdamSolver", "get_solver", "Classifier", "Detector", "NetSpec", "to_proto",
                 "Timer", "init_log", "log", "has_nccl", "NCCL", "solver_count", "set_solver_count",
                 "solver_rank", "set_solver_rank", "set_multiprocess", "set_mode_cpu", "set_device",
                 "layer_type_list", "set_random_seed", "__version__"):
        assert hasattr(caffe, name), name
    assert caffe.Blob is netspec.Blob          # anything else netspec has, by the same name


def fake_real_caffe(folder):
    pkg = folder / "caffe"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("REAL = True\nfrom . import helper\n")
    (pkg / "helper.py").write_text("VALUE = 42\n")
    (pkg / "_caffe.so").write_bytes(b"")
    return str(folder)


def test_steps_aside_for_a_real_caffe(tmp_path):
    # netspec's caffe is found first (the checkout on sys.path), a real Caffe later in the path.
    real = fake_real_caffe(tmp_path / "real")
    os.makedirs(tmp_path / "work")
    code = f"""
        import sys
        sys.path.insert(0, {REPO!r}); sys.path.append({real!r})
        import caffe, caffe.helper
        print(getattr(caffe, 'REAL', False), caffe.helper.VALUE, caffe.__file__.startswith({real!r}))
    """
    result = run_python(code, tmp_path / "work")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "42", "True"]
    kept = run_python(f"""
        import sys
        sys.path.insert(0, {REPO!r}); sys.path.append({real!r})
        import caffe
        print(getattr(caffe, 'REAL', False), caffe.__file__.startswith({real!r}))
    """, tmp_path / "work", env={"NETSPEC_CAFFE": "netspec"})
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.split() == ["False", "False"]


def test_no_real_caffe_means_netspec(tmp_path):
    (tmp_path / "caffe").mkdir()           # a `caffe` folder without _caffe (e.g. a source checkout's docs)
    (tmp_path / "caffe" / "__init__.py").write_text("REAL = True\n")
    result = run_python(f"""
        import sys; sys.path.insert(0, {REPO!r}); sys.path.append({str(tmp_path)!r})
        import caffe; print(getattr(caffe, 'REAL', False), caffe.Net.__module__)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "netspec.net"]


# ---------------------------------------------------------------- Python layers

PY_NET = """
name: 'py' force_backward: true
input: 'data' input_shape { dim: 2 dim: 3 }
layer { type: 'Python' name: 'user' bottom: 'data' top: 'out'
        python_param { module: '%s' layer: '%s' } }
"""


def python_net(tmp_path, module, layer, source):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    return write(tmp_path / "net.prototxt", PY_NET % (module, layer))


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("user_mod")]:
        del sys.modules[name]


def test_python_layer_module_importing_caffe(on_path):
    net_file = python_net(on_path, "user_mod_ok", "Twice", """
        import caffe
        from caffe.proto import caffe_pb2

        class Twice(caffe.Layer):
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                top[0].data[...] = 2 * bottom[0].data
    """)
    net = netspec.Net(net_file, netspec.TEST)
    net.blobs["data"].data[...] = 3
    assert np.all(net.forward()["out"] == 6)


def test_failing_import_inside_a_layer_module_says_what_failed(on_path):
    net_file = python_net(on_path, "user_mod_broken", "Layer", """
        import numpy
        import no_such_dependency_xyz
    """)
    with pytest.raises(NetspecError) as info:
        netspec.Net(net_file, netspec.TEST)
    message = str(info.value)
    assert "importing 'user_mod_broken' raised ModuleNotFoundError: No module named 'no_such_dependency_xyz'" \
        in message
    assert "user_mod_broken.py:3" in message and "PYTHONPATH" not in message
    # The module itself missing is still the PYTHONPATH hint.
    with pytest.raises(NetspecError, match="cannot import module 'user_mod_absent'.*PYTHONPATH"):
        netspec.Net(write(on_path / "n2.prototxt", PY_NET % ("user_mod_absent", "X")), netspec.TEST)


def test_failing_python_layer_raises_runtime_error_of_its_own_kind_too(on_path):
    net_file = python_net(on_path, "user_mod_raises", "Bad", """
        import caffe

        class Bad(caffe.Layer):
            def setup(self, bottom, top):
                raise ValueError("threshold must be positive")
    """)
    with pytest.raises(RuntimeError) as info:
        netspec.Net(net_file, netspec.TEST)
    error = info.value
    assert isinstance(error, NetspecError) and isinstance(error, ValueError)
    assert str(error).startswith(f"{net_file}: layer 'user' (Python user_mod_raises.Bad): setup raised "
                                 "ValueError: threshold must be positive (at ")


def test_add_blob_makes_a_learnable_parameter(on_path, tmp_path):
    net_file = python_net(on_path, "user_mod_param", "Scale", """
        import caffe

        class Scale(caffe.Layer):
            def setup(self, bottom, top):
                self.blobs.add_blob(1)
                self.blobs.add_blob(2, 3)
                self.blobs[0].data[...] = 1.5

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

            def backward(self, top, propagate_down, bottom):
                self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
    """)
    net = netspec.Net(net_file, netspec.TRAIN)
    layer = net.layer_dict["user"]
    assert [b.shape for b in layer.blobs] == [(1,), (2, 3)]
    assert [b.shape for b, _, _ in net.learnable_params] == [(1,), (2, 3)]
    with pytest.raises(TypeError):
        layer.blobs.add_blob(2, bad=1)
    saved = str(tmp_path / "w.caffemodel")
    net.save(saved)
    layer.blobs[0].data[...] = 0
    net.copy_from(saved)
    assert layer.blobs[0].data[0] == 1.5


# ---------------------------------------------------------------- module-level functions

def test_timer_measures_between_start_and_stop():
    t = caffe.Timer()
    assert t.ms == 0.0
    t.start()
    total = sum(range(20000))
    t.stop()
    first = t.ms
    assert total and first > 0
    assert t.ms == first                       # stopped: it no longer moves
    t.start()
    assert t.ms < first * 1000 + 1000


def test_log_and_init_log(capsys):
    try:
        caffe.init_log()
        caffe.log("hello from python")
        err = capsys.readouterr().err
        assert err.startswith("I") and err.rstrip().endswith("_caffe.cpp:68] hello from python")
        caffe.init_log(2)                      # ERROR and above only
        caffe.log("quiet")
        glog.warning("also quiet")
        glog.error("loud")
        err = capsys.readouterr().err
        assert "quiet" not in err and err.startswith("E") and err.rstrip().endswith("loud")
    finally:
        glog.configure(level=glog.default_level())


def test_nccl_is_absent():
    assert caffe.has_nccl() is False
    with pytest.raises(NetspecError, match="mpirun"):
        caffe.NCCL(None, "")


def test_solver_count_and_rank_follow_mpi_then_setters(monkeypatch):
    monkeypatch.setattr(pycaffe, "_solver_state", {"count": None, "rank": None, "multiprocess": False})
    for var in ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert (caffe.solver_count(), caffe.solver_rank()) == (1, 0)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    assert (caffe.solver_count(), caffe.solver_rank()) == (4, 2)
    caffe.set_solver_count(3)
    caffe.set_solver_rank(1)
    caffe.set_multiprocess(True)
    assert (caffe.solver_count(), caffe.solver_rank(), pycaffe.multiprocess()) == (3, 1, True)
    with pytest.raises(NetspecError):
        caffe.set_solver_count(0)


def test_netspec_type_error_is_pycaffes():
    from caffe import layers as L
    data = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)


def test_assign_proto_and_param_name_dict():
    from caffe.net_spec import assign_proto, param_name_dict
    names = param_name_dict()
    assert names["Convolution"] == "convolution" and names["InnerProduct"] == "inner_product"
    assert names["Pooling"] == "pooling" and "Deconvolution" not in names     # pycaffe's: from the schema
    layer = caffe_pb2.LayerParameter()
    assign_proto(layer, "convolution_param", dict(num_output=4, kernel_size=[3], weight_filler=dict(type="xavier")))
    assign_proto(layer, "param", [dict(lr_mult=1), dict(lr_mult=2)])
    assign_proto(layer, "top", "x")
    assert layer.convolution_param.num_output == 4 and list(layer.convolution_param.kernel_size) == [3]
    assert layer.convolution_param.weight_filler.type == "xavier"
    assert [p.lr_mult for p in layer.param] == [1, 2] and list(layer.top) == ["x"]


# ---------------------------------------------------------------- nets: hooks, batches, outputs

IP_NET = """
name: 'ip' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
        inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'ip' top: 'ip' }
"""


@pytest.fixture
def ip_net(tmp_path):
    net = netspec.Net(write(tmp_path / "ip.prototxt", IP_NET), netspec.TEST)
    net.params["ip"][1].data[...] = [0.5, -0.25]
    return net


def test_net_hooks_run_around_each_layer_in_order(ip_net):
    calls = []
    for name in ("before_forward", "after_forward", "before_backward", "after_backward"):
        getattr(ip_net, name)(lambda i, name=name: calls.append((name, i)))
    ip_net.forward()
    assert calls == [("before_forward", 0), ("after_forward", 0), ("before_forward", 1), ("after_forward", 1),
                     ("before_forward", 2), ("after_forward", 2)]
    del calls[:]
    ip_net.backward()
    assert calls == [("before_backward", 2), ("after_backward", 2), ("before_backward", 1),
                     ("after_backward", 1), ("before_backward", 0), ("after_backward", 0)]


def test_hook_sees_the_layer_output(ip_net):
    seen = []
    ip_net.after_forward(lambda i: seen.append(ip_net.blobs["ip"].data.copy()) if i == 1 else None)
    ip_net.blobs["data"].data[...] = 1
    ip_net.forward()
    w, b = ip_net.params["ip"][0].data, ip_net.params["ip"][1].data
    np.testing.assert_allclose(seen[0], np.ones((2, 3)) @ w.T + b, rtol=1e-5, atol=1e-6)     # before the ReLU


def test_forward_backward_all_batches_and_trims(ip_net):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    top_diff = rng.normal(size=(5, 2)).astype(np.float32)
    outs, diffs = ip_net.forward_backward_all(data=x, ip=top_diff)
    w, b = ip_net.params["ip"][0].data.astype(np.float64), ip_net.params["ip"][1].data
    pre = x @ w.T + b
    assert set(outs) == {"ip"} and set(diffs) == {"data"}
    np.testing.assert_allclose(outs["ip"], np.maximum(pre, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diffs["data"], (top_diff * (pre > 0)) @ w, rtol=1e-5, atol=1e-6)
    assert outs["ip"].shape == (5, 2) and diffs["data"].shape == (5, 3)


LOSS_FIRST = """
name: 'order'
layer { name: 'data' type: 'DummyData' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
    data_filler { type: 'gaussian' } data_filler { type: 'constant' value: 1 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
        inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
layer { name: 'accuracy' type: 'Accuracy' bottom: 'ip' bottom: 'label' top: 'accuracy' include { phase: TEST } }
"""


def test_outputs_in_name_order_like_caffes_std_set(tmp_path, capsys):
    net_file = write(tmp_path / "order.prototxt", LOSS_FIRST)
    net = netspec.Net(net_file, netspec.TEST)
    assert net.outputs == ["accuracy", "loss"]
    assert list(net.forward()) == ["accuracy", "loss"]
    solver_file = write(tmp_path / "solver.prototxt", f"""
        net: '{net_file}' base_lr: 0.01 lr_policy: 'fixed' max_iter: 2 display: 1
        test_iter: 1 test_interval: 2 snapshot_after_train: false
    """)
    capsys.readouterr()
    solver = netspec.SGDSolver(solver_file)
    solver.solve()
    err = capsys.readouterr().err
    assert "Test net output #0: accuracy = " in err and "Test net output #1: loss = " in err
    from netspec.logparse import parse_log
    log = tmp_path / "train.log"
    log.write_text(err)
    parsed = parse_log(str(log))
    assert list(parsed.test[0])[3:] == ["accuracy", "loss"]


# ---------------------------------------------------------------- solver: lr, divergence

def test_solver_lr_follows_the_policy(tmp_path):
    net_file = write(tmp_path / "order.prototxt", LOSS_FIRST)
    solver = netspec.SGDSolver(write(tmp_path / "s.prototxt", f"""
        net: '{net_file}' base_lr: 0.1 lr_policy: 'step' gamma: 0.5 stepsize: 2 max_iter: 10
        snapshot_after_train: false"""))
    assert solver.lr == pytest.approx(0.1)
    solver.step(2)
    assert solver.lr == pytest.approx(0.05)
    solver.step(2)
    assert solver.lr == pytest.approx(0.025)


REGRESSION = """
name: 'regression'
layer { name: 'data' type: 'DummyData' top: 'x' top: 'y'
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 }
    data_filler { type: 'constant' value: 1 } data_filler { type: 'constant' value: 2 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'ip' inner_product_param { num_output: 1 } }
layer { name: 'loss' type: 'EuclideanLoss' bottom: 'ip' bottom: 'y' top: 'loss' }
"""


def diverging_solver(tmp_path, prefix="snaps/run"):
    # Each step multiplies the error by about 1 - lr * 4: with lr 1e10 it overflows within a few steps.
    net_file = write(tmp_path / "regression.prototxt", REGRESSION)
    return write(tmp_path / "s.prototxt", f"""
        net: '{net_file}' base_lr: 1e10 lr_policy: 'fixed' max_iter: 20 display: 1
        snapshot_after_train: false snapshot_prefix: '{tmp_path / prefix}'""")


def test_divergence_stops_with_a_marked_snapshot(tmp_path):
    solver = netspec.SGDSolver(diverging_solver(tmp_path))
    with pytest.raises(NetspecError, match=r"training diverged at iteration (\d+).*\.caffemodel\.diverged"):
        solver.step(20)
    files = sorted(os.listdir(tmp_path / "snaps"))
    it = solver.iter
    assert files == [f"run_iter_{it}.caffemodel.diverged", f"run_iter_{it}.solverstate.diverged"]
    # The weights in it are the ones that gave the bad loss: a net loading them gives it again.
    net = netspec.Net(str(tmp_path / "regression.prototxt"), netspec.TRAIN,
                      weights=str(tmp_path / "snaps" / files[0]))
    assert not np.isfinite(net.forward()["loss"])


def test_divergence_continue_trains_on_like_caffe(tmp_path, capsys):
    solver = netspec.SGDSolver(diverging_solver(tmp_path))
    solver.on_divergence = "continue"
    solver.step(20)
    assert solver.iter == 20
    assert not os.path.exists(tmp_path / "snaps") or not os.listdir(tmp_path / "snaps")
    err = capsys.readouterr().err
    assert "loss = nan" in err and "training goes on (on_divergence=continue)" in err


def test_process_wide_divergence_setting(tmp_path):
    from netspec.solver import set_on_divergence
    try:
        set_on_divergence("continue")
        assert netspec.SGDSolver(diverging_solver(tmp_path)).on_divergence == "continue"
    finally:
        set_on_divergence("stop")
    with pytest.raises(NetspecError, match="on_divergence must be one of stop, continue"):
        set_on_divergence("ignore")


# ---------------------------------------------------------------- logging by default

def test_python_api_logs_to_stderr_by_default(tmp_path):
    net_file = write(tmp_path / "ip.prototxt", IP_NET)
    code = f"import caffe; caffe.Net({net_file!r}, caffe.TEST)"
    loud = run_python(code, tmp_path, env={"GLOG_minloglevel": "0"})
    assert loud.returncode == 0, loud.stderr
    assert "net.cpp:84] Creating Layer ip" in loud.stderr and loud.stdout == ""
    quiet = run_python(code, tmp_path, env={"GLOG_minloglevel": "2"})
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_level_from_glog():
    assert [glog.level_from_glog(n) for n in (0, 1, 2, 3, 9)] == [
        logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL, logging.CRITICAL]


# ---------------------------------------------------------------- coord_map, Detector, draw_net

def test_coord_map_dilation_rect_pooling_and_errors():
    from caffe import layers as L, params as P
    from caffe.coord_map import coord_map_from_to, crop
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 40, 40]))
    n.dil = L.Convolution(n.data, num_output=1, kernel_size=3, dilation=2, pad=1)    # extent 5
    ax, a, b = coord_map_from_to(n.dil, n.data)
    assert ax == 1 and np.all(a == 1) and np.all(b == 1)       # x_data = x_dil + (5 - 1) / 2 - 1
    n.pool = L.Pooling(n.data, pool=P.Pooling.MAX, kernel_h=2, kernel_w=4, stride_h=2, stride_w=4)
    ax, a, b = coord_map_from_to(n.pool, n.data)
    np.testing.assert_allclose(a, [2, 4])
    np.testing.assert_allclose(b, [0.5, 1.5])                  # centre of the first window
    with pytest.raises(RuntimeError, match="no common input"):
        coord_map_from_to(n.pool, L.Input(shape=dict(dim=[1])))
    with pytest.raises(AssertionError, match="different scales"):
        crop(n.pool, n.data)
    up = L.Deconvolution(n.pool, convolution_param=dict(num_output=1, kernel_size=4, stride=2))
    with pytest.raises(AssertionError):
        crop(up, n.data)


DETECT_DEPLOY = """
name: 'det'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: 'fc' type: 'InnerProduct' bottom: 'data' top: 'fc'
        inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.2 } } }
"""


def test_detector_windows_and_context_crop(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    deploy = write(tmp_path / "deploy.prototxt", DETECT_DEPLOY)
    weights = str(tmp_path / "det.caffemodel")
    plain = netspec.Net(deploy, netspec.TEST)
    plain.save(weights)
    pixels = np.random.default_rng(2).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "im.png")
    image = pixels.astype(np.float64) / 255
    mean = np.array([0.1, 0.2, 0.3])
    det = caffe.Detector(deploy, weights, mean=mean, raw_scale=2.0, channel_swap=(2, 1, 0))

    def by_hand(crop):
        plain.blobs["data"].data[0] = (crop[:, :, ::-1] * 2.0 - mean).transpose(2, 0, 1)
        return plain.forward()["fc"][0].copy()

    windows = np.array([[2, 3, 8, 9], [0, 0, 6, 6]])
    found = det.detect_windows([(str(tmp_path / "im.png"), windows)])
    assert [d["filename"] for d in found] == [str(tmp_path / "im.png")] * 2
    for d, (y0, x0, y1, x1) in zip(found, windows):
        np.testing.assert_allclose(d["prediction"], by_hand(image[y0:y1, x0:x1]), rtol=1e-4, atol=1e-6)

    det.configure_crop(1)            # 1 pixel of context on each side of a 6-pixel input: windows grow x1.5
    np.testing.assert_allclose(det.crop_mean[0, 0], [0.15, 0.1, 0.05], rtol=1e-6, atol=1e-7)   # mean in image space
    np.testing.assert_allclose(det.crop(image, [2, 2, 5, 5]), image[1:7, 1:7], rtol=1e-6, atol=1e-7)
    edge = det.crop(image, [0, 0, 3, 3])             # widened box (-1, -1, 5, 5): one row/column off the image
    np.testing.assert_allclose(edge[1:, 1:], image[0:5, 0:5], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(edge[0], np.tile([0.15, 0.1, 0.05], (6, 1)), rtol=1e-6, atol=1e-7)


def test_draw_net_returns_rendered_bytes():
    import caffe.draw
    from google.protobuf import text_format
    with open(os.path.join(REPO, "models", "lenet", "lenet_train_test.prototxt")) as f:
        net = text_format.Parse(f.read(), caffe_pb2.NetParameter())
    dot = caffe.draw.draw_net(net, "LR", ext="dot", display_lrm=True).decode()
    assert "lr mult: 1, 2" in dot and "Batch 64" in dot
    assert "lr mult" not in caffe.draw.draw_net(net, "LR", ext="dot").decode()
    with pytest.raises(NetspecError, match="unknown output format 'xyz'"):
        caffe.draw.draw_net(net, "LR", ext="xyz")
    if shutil.which("dot") is not None:
        assert caffe.draw.draw_net(net, "TB", ext="png", phase=caffe.TEST).startswith(b"\x89PNG")


def test_index_views_of_the_cpp_net(ip_net):
    assert ip_net._blob_names == ["data", "ip"] and ip_net._blobs[1] is ip_net.blobs["ip"]
    assert ip_net._inputs == [0] and ip_net._outputs == [1]
    assert ip_net._bottom_ids(1) == [0] and ip_net._top_ids(1) == [1] and ip_net._top_ids(2) == [1]
    assert ip_net._blob_loss_weights == [0.0, 0.0]
    ip_net.blobs["data"].data[...] = 1
    ip_net._forward(0, 1)                         # stops before the ReLU
    w, b = ip_net.params["ip"][0].data, ip_net.params["ip"][1].data
    np.testing.assert_allclose(ip_net.blobs["ip"].data, np.ones((2, 3)) @ w.T + b, rtol=1e-5, atol=1e-6)
    ip_net.blobs["ip"].diff[...] = 1
    ip_net._backward(1, 1)
    np.testing.assert_allclose(ip_net.blobs["data"].diff, np.ones((2, 2)) @ w, rtol=1e-5, atol=1e-6)


def test_python_layers_get_netspecs_caffe_even_beside_a_real_one(tmp_path):
    real = fake_real_caffe(tmp_path / "real")
    (tmp_path / "layer_mod.py").write_text(textwrap.dedent("""
        import caffe

        class Plus(caffe.Layer):
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                top[0].data[...] = bottom[0].data + 1
    """))
    net_file = write(tmp_path / "net.prototxt", PY_NET % ("layer_mod", "Plus"))
    # The real Caffe comes first on the path: a plain `import caffe` would load it.
    result = run_python(f"""
        import netspec
        net = netspec.Net({net_file!r}, netspec.TEST)
        import caffe
        print(float(net.forward()["out"].sum()), caffe.Layer is netspec.Layer, hasattr(caffe, "REAL"))
    """, tmp_path, path=[real, str(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["6.0", "True", "False"]
