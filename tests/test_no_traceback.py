"""No traceback where a clear error is due: Python layers (sys.exit, non-classes, the user's own
TypeError), lr policies that overflow, shapes and records out of range."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import netspec as caffe
from netspec.errors import NetspecError
from test_crash_safety import solver_file, workdir  # noqa: F401  (fixture)

PY_NET = """
layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "user" type: "Python" bottom: "x" top: "y" python_param {{ module: "{module}" layer: "{layer}" }} }}
"""


def py_net(tmp_path, monkeypatch, module, layer, source=None):
    if source is not None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        sys.modules.pop(module, None)
    (tmp_path / "net.prototxt").write_text(PY_NET.format(module=module, layer=layer))
    monkeypatch.chdir(tmp_path)
    return str(tmp_path / "net.prototxt")


@pytest.mark.parametrize("module,layer,message", [
    ("os", "system", r"'os.system' is a builtin_function_or_method, not a class; python_param.layer must name a "
                     r"class that subclasses caffe.Layer"),
    ("collections", "OrderedDict", r"'collections.OrderedDict' is a class; python_param.layer must name a class "
                                   r"that subclasses caffe.Layer"),
])
def test_a_layer_that_is_not_a_layer_class_gets_one_line(tmp_path, monkeypatch, module, layer, message):
    with pytest.raises(NetspecError, match=r"layer 'user' \(Python\): " + message):
        caffe.Net(py_net(tmp_path, monkeypatch, module, layer), caffe.TEST)


def test_the_users_own_typeerror_in_init_surfaces(tmp_path, monkeypatch):
    path = py_net(tmp_path, monkeypatch, "typo_layer", "Typo", """
        import netspec
        class Typo(netspec.Layer):
            def __init__(self, p):
                super().__init__(p)
                self.size = len(5)
    """)
    with pytest.raises(NetspecError, match=r"layer 'user' \(Python typo_layer.Typo\): __init__ raised TypeError: "
                                           r"object of type 'int' has no len\(\) \(at .*typo_layer.py:6\)"):
        caffe.Net(path, caffe.TEST)


def test_a_no_argument_init_still_runs(tmp_path, monkeypatch):
    path = py_net(tmp_path, monkeypatch, "noarg_layer", "NoArg", """
        import netspec
        class NoArg(netspec.Layer):
            def __init__(self):
                self.scale = 3.0
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)
            def forward(self, bottom, top):
                top[0].data[...] = bottom[0].data * self.scale
    """)
    net = caffe.Net(path, caffe.TEST)
    out = net.forward(x=np.ones((2, 3), np.float32))["y"]
    np.testing.assert_array_equal(out, np.full((2, 3), 3.0))


def test_sys_exit_on_import_is_an_error(tmp_path, monkeypatch):
    path = py_net(tmp_path, monkeypatch, "exits", "Never", "import sys\nsys.exit(0)\n")
    with pytest.raises(NetspecError, match=r"importing 'exits' called sys.exit\(0\); a layer must raise"):
        caffe.Net(path, caffe.TEST)


EXIT_LAYER = """
import sys
import netspec
class ExitLater(netspec.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        self.calls = getattr(self, "calls", 0) + 1
        if self.phase == 0 and self.calls == 5:
            sys.exit(0)
        top[0].data[...] = bottom[0].data
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
"""


def test_sys_exit_mid_training_exits_non_zero_with_a_snapshot(workdir):
    (workdir / "exit_later.py").write_text(EXIT_LAYER)
    net = (workdir / "net.prototxt").read_text().replace(
        'layer { name: "loss"',
        'layer { name: "quit" type: "Python" bottom: "ip2" top: "ip2q" '
        'python_param { module: "exit_later" layer: "ExitLater" } }\nlayer { name: "loss"').replace(
        'bottom: "ip2" bottom: "label"', 'bottom: "ip2q" bottom: "label"')
    (workdir / "net.prototxt").write_text(net)
    r = subprocess.run([sys.executable, "-m", "netspec", "train", "--solver="
                        + solver_file(workdir, "s.prototxt", max_iter=100, snapshot=0)], cwd=workdir,
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(workdir) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("netspec: error: ") and "forward called sys.exit(0)" in last, last
    assert "Traceback" not in r.stderr
    assert os.path.exists(workdir / "snap" / "mlp_iter_4.caffemodel")     # four iterations were done


def test_a_batch_of_zero_through_convolution_is_no_traceback(tmp_path):
    (tmp_path / "b0.prototxt").write_text("""
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 0 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { kernel_size: 2 stride: 2 } }
    layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 2 } }
    """)
    net = caffe.Net(str(tmp_path / "b0.prototxt"), caffe.TRAIN)
    net.forward()
    net.backward()
    assert net.blobs["ip"].data.shape == (0, 2)


def test_records_out_of_range_get_one_line(tmp_path):
    from netspec.datasets.lmdb_io import array_to_datum, datum_to_array, write_lmdb_atomically
    from netspec.proto import caffe_pb2
    bad = caffe_pb2.Datum(channels=-1, height=-2, width=4, data=bytes(8))
    with pytest.raises(NetspecError, match=r"the Datum has channels x height x width = -1x-2x4; each must be at least 1"):
        datum_to_array(bad, "record 7")
    ints = array_to_datum(np.zeros((1, 2, 2), np.uint8), 0).SerializeToString()
    floats = array_to_datum(np.zeros((1, 2, 2), np.float32), 0).SerializeToString()
    write_lmdb_atomically(str(tmp_path / "mixed"), [(f"{i:08d}", floats if i == 2 else ints) for i in range(4)])
    (tmp_path / "net.prototxt").write_text(f"""
    layer {{ name: "d" type: "Data" top: "x" top: "y" data_param {{ source: "{tmp_path / 'mixed'}" batch_size: 4 backend: LMDB }} }}
    """)
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN)
    try:
        with pytest.raises(NetspecError, match=r"layer 'd' \(Data\): .*mixed record 2 holds float_data, the batch's "
                                               r"first record uint8 data"):
            net.forward()
    finally:
        net.close()
