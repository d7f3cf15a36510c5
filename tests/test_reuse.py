"""Net(reuse_memory=True): inference with blobs sharing buffers gives the same outputs, and shares."""
import numpy as np
import pytest

from netspec.net import Net
from netspec.proto import caffe_pb2
from google.protobuf import text_format

from netspec import rng

# Views (Split from two readers, Flatten, Reshape), in-place ReLU, Concat, Eltwise, a Parameter:
# every way a top can share memory with another blob.
NET = """
name: "reuse"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c3" type: "Convolution" bottom: "c1" top: "c3"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 4 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "c2" bottom: "c3" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "cat" type: "Concat" bottom: "pool" bottom: "pool2" top: "cat" }
layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" }
layer { name: "shape" type: "Reshape" bottom: "flat" top: "shaped" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "shaped" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bias" type: "Parameter" top: "bias" parameter_param { shape { dim: 2 dim: 5 } } }
layer { name: "out" type: "Eltwise" bottom: "ip" bottom: "bias" top: "out" }
layer { name: "prob" type: "Softmax" bottom: "out" top: "prob" }
"""


def build(reuse, force_backward=False):
    text = NET.replace('layer { name: "cat" type: "Concat" bottom: "pool" bottom: "pool2" top: "cat" }',
                       'layer { name: "pool2" type: "Pooling" bottom: "sum" top: "pool2" '
                       'pooling_param { pool: AVE kernel_size: 2 stride: 2 } }\n'
                       'layer { name: "cat" type: "Concat" bottom: "pool" bottom: "pool2" top: "cat" }')
    if force_backward:
        text = "force_backward: true\n" + text
    rng.set_seed(7)
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST, reuse_memory=reuse)
    net.params["bias"][0].data[...] = np.arange(10.0).reshape(2, 5) / 10
    return net


def data():
    return np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)


def test_outputs_are_those_of_a_net_without_reuse_and_buffers_are_shared():
    plain, shared = build(False), build(True)
    assert shared.reuses_memory and not plain.reuses_memory
    for _ in range(2):      # the second pass runs on buffers the first one left dirty
        want = plain.forward(data=data())["prob"].copy()
        got = shared.forward(data=data())["prob"].copy()
        np.testing.assert_array_equal(got, want)
    used, own = shared._reuse.shared_bytes()
    assert used < own
    # Some intermediate really holds another blob's memory now.
    assert any(np.shares_memory(shared.blobs[a].data, shared.blobs[b].data)
               for a in ("c1", "c2", "c3") for b in ("sum", "pool", "pool2", "cat", "ip", "out"))
    # Inputs, outputs and views of foreign memory keep their own.
    for name in ("data", "prob"):
        others = [b for n, b in shared.blobs.items() if n != name]
        assert not any(np.shares_memory(shared.blobs[name].data, b.data) for b in others)


def test_blobs_asked_of_forward_hold_their_values():
    plain, shared = build(False), build(True)
    want = plain.forward(blobs=["c2", "sum", "flat"], data=data())
    got = shared.forward(blobs=["c2", "sum", "flat"], data=data())
    shared.forward(data=data())             # and still after a later forward
    for name in ("c2", "sum", "flat"):
        np.testing.assert_array_equal(shared.blobs[name].data, want[name])
        np.testing.assert_array_equal(got[name], want[name])


def test_kept_blobs_hold_their_values():
    plain, shared = build(False), build(True)
    shared.keep_blobs(["c3", "pool"])
    plain.forward(data=data())
    shared.forward(data=data())
    for name in ("c3", "pool"):
        np.testing.assert_array_equal(shared.blobs[name].data, plain.blobs[name].data)
    assert shared.reuses_memory


def test_keeping_more_blobs_later_replans_without_giving_every_blob_its_own_memory():
    plain, shared = build(False), build(True)
    plain.forward(data=data())
    shared.forward(data=data())
    pool_now = shared.blobs["pool"].data.copy()
    first = shared._reuse
    shared.keep_blobs(["pool"])                 # a replan while the first plan's buffers are in use
    second = shared._reuse
    assert second is not first and "pool" in second.keep
    np.testing.assert_array_equal(shared.blobs["pool"].data, pool_now)    # the kept blob keeps its value
    # The other intermediates move straight onto the new shared buffers.
    assert second.shared_bytes()[0] < second.shared_bytes()[1]
    assert any(np.shares_memory(shared.blobs[a].data, shared.blobs[b].data)
               for a in ("c1", "c2", "c3") for b in ("sum", "pool2", "cat", "ip", "out"))
    others = [b for n, b in shared.blobs.items() if n != "pool"]
    assert not any(np.shares_memory(shared.blobs["pool"].data, b.data) for b in others)
    np.testing.assert_array_equal(shared.forward(data=data())["prob"], plain.forward(data=data())["prob"])
    np.testing.assert_array_equal(shared.blobs["pool"].data, plain.blobs["pool"].data)


def test_a_forward_from_a_later_layer_gives_blobs_their_own_memory():
    plain, shared = build(False), build(True)
    plain.forward(data=data())
    shared.forward(data=data())
    x = np.random.default_rng(5).standard_normal(plain.blobs["sum"].shape).astype(np.float32)
    for net in (plain, shared):
        net.blobs["sum"].data[...] = x
    want = plain.forward(start="pool")["prob"].copy()
    got = shared.forward(start="pool")["prob"]
    assert not shared.reuses_memory
    np.testing.assert_array_equal(got, want)


def test_a_net_that_runs_backward_shares_nothing():
    net = build(True, force_backward=True)
    assert any(r.need_backward for r in net.records) and not net.reuses_memory
