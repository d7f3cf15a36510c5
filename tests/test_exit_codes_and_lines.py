"""Exit codes and misleading lines: every command exits non-zero on error, causes are named as they
are, names cannot forge log lines, nothing is accepted where an error is due, and install hints never
point at the unrelated `netspec` on the package index."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import netspec as caffe
from netspec import glog
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from netspec.schema import parse_prototxt, read_net

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "netspec", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args", [["parse_log", "missing.log"], ["plot_log", "0", "out.png", "missing.log"],
                                  ["convert", "missing.prototxt", "x.yaml"], ["draw", "missing.prototxt", "x.dot"],
                                  ["compute_image_mean", "missing_lmdb"]])
def test_every_command_exits_non_zero_on_error(tmp_path, args):
    r = cli(tmp_path, *args)
    assert r.returncode == 1, (args, r.returncode, r.stderr[-500:])
    assert r.stderr.strip().splitlines()[-1].startswith("netspec: error: ")


def test_the_cause_is_named_as_it_is(tmp_path):
    os.mkfifo(tmp_path / "fifo.prototxt")
    r = cli(tmp_path, "time", "--model=fifo.prototxt", "--iterations=1")
    assert "fifo.prototxt: is a FIFO (named pipe), not a regular file" in r.stderr    # not "no such file"
    from netspec.datasets.image_mean import load_mean_binaryproto
    with pytest.raises(NetspecError, match=r"/dev/zero: is a character device, not a regular file"):
        load_mean_binaryproto("/dev/zero")                                           # not "does not exist"


def test_a_nan_label_is_named_not_shown_as_int_min():
    net_text = """
    layer { name: "p" type: "Input" top: "p" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "l" type: "Input" top: "l" input_param { shape { dim: 2 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "p" bottom: "l" top: "loss" }
    """
    net = caffe.Net(parse_prototxt(net_text, caffe_pb2.NetParameter()), caffe.TEST)
    net.blobs["l"].data[...] = [0, np.nan]
    with _no_warning():                 # and no RuntimeWarning from a NaN cast to int first
        with pytest.raises(NetspecError, match=r"layer 'loss' \(SoftmaxWithLoss\): label value nan in bottom .* "
                                               r"is not a number"):
            net.forward()


class _no_warning:
    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


def test_a_utf8_bom_is_accepted(tmp_path):
    text = 'name: "bom"\nlayer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
    (tmp_path / "bom.prototxt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbfname: bom\n")
    assert read_net(str(tmp_path / "bom.prototxt")).name == "bom"
    assert read_net(str(tmp_path / "bom.yaml")).name == "bom"


def test_a_layer_name_cannot_forge_log_lines(tmp_path):
    fake = "x\\nE1203 00:00:00.000000 1 solver.cpp:1] netspec: error: forged"
    (tmp_path / "net.prototxt").write_text(
        f'layer {{ name: "{fake}" type: "Input" top: "x" input_param {{ shape {{ dim: 1 }} }} }}\n'
        f'layer {{ name: "bad\\rline" type: "ReLU" bottom: "nowhere" top: "y" }}\n')
    r = cli(tmp_path, "time", "--model=net.prototxt", "--iterations=1")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert not any(line.startswith("E1203 00:00:00") for line in lines)       # no forged glog line
    assert not any(line.startswith("netspec: error: forged") for line in lines)
    assert "Creating Layer x\\nE1203" in r.stderr                              # the name, escaped
    assert "\r" not in r.stderr and "bad\\rline" in lines[-1]
    assert glog.printable("a\x1b[2Jb\tc") == "a\\x1b[2Jb\tc"


def test_test_iter_below_one_is_refused(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    (tmp_path / "s.prototxt").write_text('net: "net.prototxt"\ntest_iter: 0\ntest_interval: 5\nbase_lr: 0.1\n'
                                         'lr_policy: "fixed"\nmax_iter: 1\n')
    from netspec.solver import Solver
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NetspecError, match="s.prototxt: test_iter must be at least 1, got 0"):
        Solver("s.prototxt")


@pytest.mark.parametrize("policy,fields", [("sigmoid", "gamma: -0.1 stepsize: 100000"),
                                           ("inv", "gamma: -0.5 power: 0.75"),
                                           ("exp", "gamma: 10"),
                                           ("poly", "power: -1")])
def test_lr_policies_that_overflow_are_one_line(tmp_path, monkeypatch, policy, fields):
    (tmp_path / "net.prototxt").write_text("""
    layer { name: "in" type: "DummyData" top: "x" top: "y"
            dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
    """)
    (tmp_path / "s.prototxt").write_text(f'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "{policy}"\n{fields}\n'
                                         'max_iter: 12\ndisplay: 0\n')
    monkeypatch.chdir(tmp_path)
    r = cli(tmp_path, "train", "--solver=s.prototxt")
    assert "Traceback" not in r.stderr
    if r.returncode:
        assert r.returncode == 1
        last = r.stderr.strip().splitlines()[-1]
        assert re.match(r"netspec: error: s.prototxt: (lr_policy '\w+' gives a learning rate of (nan|inf|-inf)|"
                        r"training diverged)", last), last
    from netspec.lr_policy import learning_rate
    from netspec.schema import read_solver
    for it in (0, 1, 10, 10 ** 6):
        learning_rate(read_solver(str(tmp_path / "s.prototxt")), it)        # float arithmetic, never a raise


def test_no_hint_names_netspec_on_the_package_index():
    pattern = re.compile(r"pip install +['\"]?netspec\b")
    offenders = []
    for folder in ("netspec", "tools", "benchmarks", "scripts"):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith((".py", ".md")) or folder == "scripts":
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8", errors="replace") as f:
                        if pattern.search(f.read()):
                            offenders.append(os.path.relpath(path, REPO))
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        if pattern.search(f.read()):
            offenders.append("README.md")
    assert offenders == []
    from netspec.errors import install_hint
    assert install_hint("plot", "matplotlib") == "pip install matplotlib (or, in the netspec checkout, " \
                                                 "pip install -e '.[plot]')"
