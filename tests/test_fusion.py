"""fusion.py: BatchNorm/Scale/ReLU chains run as one pass give the separate layers' bytes."""
import numpy as np
import pytest
from google.protobuf import text_format

from netspec import rng
from netspec.blob import precision
from netspec.layers import native
from netspec.net import Net
from netspec.proto import caffe_pb2

NATIVE = pytest.mark.skipif(native.kernels is None, reason="compiled kernels (netspec._native) not built")

CONV = ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 '
        'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }')
SCALE = 'type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }'
NET = f"""
name: "chains"
layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 5 dim: 6 }} }} }}
layer {{ name: "c1" bottom: "data" top: "c1" {CONV} }}
layer {{ name: "bn1" type: "BatchNorm" bottom: "c1" top: "c1" }}
layer {{ name: "s1" bottom: "c1" top: "c1" {SCALE} }}
layer {{ name: "r1" type: "ReLU" bottom: "c1" top: "c1" }}
layer {{ name: "c2" bottom: "c1" top: "c2" {CONV} }}
layer {{ name: "bn2" type: "BatchNorm" bottom: "c2" top: "b2" }}
layer {{ name: "r2" type: "ReLU" bottom: "b2" top: "b2" }}
layer {{ name: "c3" bottom: "b2" top: "c3" {CONV} }}
layer {{ name: "s3" bottom: "c3" top: "c3" {SCALE} }}
layer {{ name: "r3" type: "ReLU" bottom: "c3" top: "c3" }}
layer {{ name: "bn4" type: "BatchNorm" bottom: "c3" top: "c3" }}
layer {{ name: "s4" bottom: "c3" top: "c3" {SCALE} }}
layer {{ name: "r4" type: "ReLU" bottom: "c3" top: "c3" relu_param {{ negative_slope: 0.1 }} }}
"""


def build(text=NET):
    rng.set_seed(11)
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    r = np.random.default_rng(2)
    for layer in net.layers:
        if layer.type == "BatchNorm":       # stored sums and a factor that is not 1
            c = layer.blobs[0].shape[0]
            layer.blobs[0].data[...] = r.standard_normal(c) * 3
            layer.blobs[1].data[...] = r.uniform(0.5, 2, c) * 3
            layer.blobs[2].data[...] = 3
    net.blobs["data"].data[...] = r.standard_normal(net.blobs["data"].shape)
    return net


def chain_kinds(net):
    return sorted(tuple(chain.members) for chain in net._chains.values())


def test_chains_found():
    net = build()
    # bn1-s1-r1; bn2 (out of place)-r2; s3-r3; bn4-s4 (r4 has a slope: not fused).
    assert chain_kinds(net) == sorted([("bn", "scale", "relu"), ("bn", "relu"), ("scale", "relu"), ("bn", "scale")])


@NATIVE
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_chains_give_the_bytes_of_the_separate_layers(dtype):
    with precision(dtype):
        fused, plain = build(), build()
    plain.after_forward(lambda i: None)     # a hook: every layer runs on its own
    runs = []
    for chain in fused._chains.values():
        original = chain.run
        chain.run = lambda original=original: runs.append(1) or original()
    fused.forward()
    plain.forward()
    assert len(runs) == 4
    for name in ("c1", "c2", "b2", "c3"):
        np.testing.assert_array_equal(fused.blobs[name].data, plain.blobs[name].data)
    assert (fused.blobs["c1"].data == 0).any() and (fused.blobs["c1"].data > 0).any()


def test_no_chain_where_backward_runs_or_a_range_cuts_it():
    net = build("force_backward: true\n" + NET)
    assert net._chains == {}
    fused, plain = build(), build()
    plain.after_forward(lambda i: None)
    start = [r.name for r in fused.records].index("s1")     # from the middle of the first chain
    for net in (fused, plain):
        net.forward(end="c1")
    for net in (fused, plain):
        net.forward(start="s1")
    np.testing.assert_array_equal(fused.blobs["c3"].data, plain.blobs["c3"].data)
    assert start == 3
