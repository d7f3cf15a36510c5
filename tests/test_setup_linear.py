"""Parsing and building a net costs the same per layer at any size (issue 13, item 10), counted, not timed.

The work is counted as the Python lines executed and the calls into built-ins while a net is
read from prototxt and built (with its log lines written), for nets of N, 2N and 4N layers. With
linear setup the extra work from 2N to 4N layers is exactly twice the extra from N to 2N; any
per-layer scan of the layers so far (the quadratic setup this guards against) makes it four
times. benchmarks/bench_setup.py gives the seconds.
"""
import io
import sys

from netspec import glog
from netspec.net import Net
from netspec.proto import caffe_pb2
from netspec.schema import parse_prototxt


def net_text(n):
    """Input, then n ReLUs in a chain; every 10th also feeds an Eltwise (so Splits are inserted), every
    50th an InnerProduct (parameters, fillers)."""
    lines = ['name: "chain"',
             'layer { name: "in" type: "Input" top: "b0" input_param { shape { dim: 1 dim: 1 } } }']
    for i in range(1, n + 1):
        lines.append(f'layer {{ name: "r{i}" type: "ReLU" bottom: "b{i - 1}" top: "b{i}" }}')
        if i % 10 == 0:
            lines.append(f'layer {{ name: "e{i}" type: "Eltwise" bottom: "b{i - 1}" bottom: "b{i}" top: "e{i}" }}')
        if i % 50 == 0:
            lines.append(f'layer {{ name: "ip{i}" type: "InnerProduct" bottom: "b{i}" top: "ip{i}" '
                         'inner_product_param { num_output: 1 weight_filler { type: "xavier" } } }')
    return "\n".join(lines) + "\n"


def work(n):
    """(lines executed, built-in calls) to parse and build the n-layer net."""
    text = net_text(n)
    counts = {"line": 0, "c_call": 0}

    def trace(frame, event, arg):
        if event == "line":
            counts["line"] += 1
        return trace

    def profile(frame, event, arg):
        if event == "c_call":
            counts["c_call"] += 1

    glog.configure(io.StringIO())
    sys.settrace(trace)
    sys.setprofile(profile)
    try:
        param = parse_prototxt(text, caffe_pb2.NetParameter())
        net = Net(param, caffe_pb2.TEST)
    finally:
        sys.setprofile(None)
        sys.settrace(None)
        glog.configure()
    assert len(net.layers) > n
    net.close()
    return counts["line"], counts["c_call"]


def test_setup_work_per_layer_stays_constant():
    n = 400
    work(20)        # first: what runs once per process (lazy imports, caches), not per layer
    w1, w2, w4 = work(n), work(2 * n), work(4 * n)
    for what, a, b, c in zip(("lines executed", "built-in calls"), w1, w2, w4):
        first, second = b - a, c - b
        ratio = second / first
        # 2.0 when linear; a scan of the layers so far per layer would give ~3.3 at these sizes.
        assert 1.9 < ratio < 2.1, f"{what}: {a}, {b}, {c} for {n}, {2 * n}, {4 * n} layers (ratio {ratio:.2f})"
