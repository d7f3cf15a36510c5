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


def build(text=NET, phase=caffe_pb2.TEST):
    rng.set_seed(11)
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)
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
    # c1's and c3's chains run inside their convolutions (on the convolution's own top, in
    # place), bn2-r2 (out of place) and bn4-s4 as passes of their own.
    assert len(runs) == 2
    assert {fused.records[i].name: chain.applied for i, chain in fused._epilogues.items()} == \
        {"c1": True, "c3": True}
    for name in ("c1", "c2", "b2", "c3"):
        np.testing.assert_array_equal(fused.blobs[name].data, plain.blobs[name].data)
    assert (fused.blobs["c1"].data == 0).any() and (fused.blobs["c1"].data > 0).any()


def test_no_chain_where_a_range_cuts_it():
    fused, plain = build(), build()
    plain.after_forward(lambda i: None)
    start = [r.name for r in fused.records].index("s1")     # from the middle of the first chain
    for net in (fused, plain):
        net.forward(end="c1")
    for net in (fused, plain):
        net.forward(start="s1")
    np.testing.assert_array_equal(fused.blobs["c3"].data, plain.blobs["c3"].data)
    assert start == 3


def conv_net(batch, channels, size, conv_param, after):
    """Input -> one Convolution -> `after` (layer texts in place on its top) -> a second conv reading it."""
    layers = "".join(f'layer {{ name: "e{k}" bottom: "c" top: "c" {text} }}\n' for k, text in enumerate(after))
    return f"""
name: "epilogue"
layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: {batch} dim: {channels} dim: {size} dim: {size} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "c" convolution_param {{ {conv_param}
  weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
{layers}layer {{ name: "next" type: "Convolution" bottom: "c" top: "d" convolution_param {{ num_output: 2 kernel_size: 1
  weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
"""


BN, RELU = 'type: "BatchNorm"', 'type: "ReLU"'
# (batch, channels, size, convolution_param): each convolution engine (conv.choose_engine), and both ways
# StackedConv cuts its work (by samples; by output rows below SMALL_BATCH samples, for products of at
# least MIN_CUT_PRODUCT multiply-adds).
ENGINES = {
    "stacked by samples": (10, 3, 20, "num_output: 80 kernel_size: 5 pad: 2"),
    "stacked by rows": (1, 8, 24, "num_output: 80 kernel_size: 5 pad: 2"),
    "stacked by rows, groups": (2, 32, 28, "num_output: 96 kernel_size: 3 group: 2"),
    "columns side by side": (6, 3, 5, "num_output: 70 kernel_size: 3 pad: 1 stride: 2"),
    "pointwise": (5, 6, 13, "num_output: 70 kernel_size: 1"),
    "pointwise by rows": (1, 128, 28, "num_output: 96 kernel_size: 1"),
    "depthwise": (3, 8, 9, "num_output: 8 kernel_size: 3 pad: 1 group: 8"),
    "winograd": (3, 32, 12, "num_output: 40 kernel_size: 3 pad: 1"),
}
AFTER = {"relu": [RELU], "bn+scale+relu": [BN, SCALE, RELU], "bn": [BN], "scale+relu": [SCALE, RELU]}


@NATIVE
@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("after", sorted(AFTER))
def test_convolution_epilogue_gives_the_bytes_of_the_separate_layers(engine, after):
    text = conv_net(*ENGINES[engine], AFTER[after])
    fused, plain = build(text), build(text)
    assert list(fused._epilogues) == [1]
    plain.after_forward(lambda i: None)     # a hook: every layer runs on its own
    fused.forward()
    plain.forward()
    assert fused._epilogues[1].applied
    for name in ("c", "d"):
        np.testing.assert_array_equal(fused.blobs[name].data, plain.blobs[name].data)
    if "relu" in after:
        assert (fused.blobs["c"].data == 0).any() and (fused.blobs["c"].data > 0).any()


@NATIVE
def test_convolution_epilogue_engines_are_the_ones_named():
    kinds = {}
    for engine, shape in ENGINES.items():
        net = build(conv_net(*shape, [RELU]))
        net.forward()       # the engine the forward ran (the Net settles runs_backward after setup)
        conv = net.layers[1]
        kinds[engine] = (type(conv.engine).__name__, conv.engine.by_rows() if hasattr(conv.engine, "by_rows") else None)
    assert kinds == {"stacked by samples": ("StackedConv", False), "stacked by rows": ("StackedConv", True),
                     "stacked by rows, groups": ("StackedConv", True), "columns side by side": ("ColumnConv", None),
                     "pointwise": ("PointwiseConv", False), "pointwise by rows": ("PointwiseConv", True),
                     "depthwise": ("DepthwiseConv", None), "winograd": ("WinogradConv", True)}


def test_no_epilogue_where_a_range_cuts_it_or_the_chain_is_out_of_place():
    text = conv_net(*ENGINES["stacked by samples"], [RELU])
    assert [c.trains for c in build("force_backward: true\n" + text)._epilogues.values()] == [True]
    assert build(text.replace('bottom: "c" top: "c" type: "ReLU"', 'bottom: "c" top: "r" type: "ReLU"')
                 .replace('bottom: "c" top: "d"', 'bottom: "r" top: "d"'))._epilogues == {}
    fused, plain = build(text), build(text)
    plain.after_forward(lambda i: None)
    for net in (fused, plain):
        net.forward(end="conv")        # the range ends before the ReLU: the convolution alone
    assert not fused._epilogues[1].applied
    np.testing.assert_array_equal(fused.blobs["c"].data, plain.blobs["c"].data)
    assert (fused.blobs["c"].data < 0).any()


@NATIVE
def test_a_fork_depthwise_convolution_takes_an_epilogue_too():
    text = conv_net(3, 8, 9, "num_output: 8 kernel_size: 3 pad: 1", [BN, SCALE, RELU])
    text = text.replace('name: "conv" type: "Convolution"', 'name: "conv" type: "ConvolutionDepthwise"')
    fused, plain = build(text), build(text)
    plain.after_forward(lambda i: None)
    fused.forward()
    plain.forward()
    assert fused._epilogues[1].applied
    np.testing.assert_array_equal(fused.blobs["d"].data, plain.blobs["d"].data)


RESIDUAL = """
name: "residual"
layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: 3 dim: 4 dim: 30 dim: 30 }} }} }}
layer {{ name: "a" bottom: "data" top: "a" {conv} }}
layer {{ name: "b" bottom: "data" top: "b" {conv} }}
layer {{ name: "bn_b" type: "BatchNorm" bottom: "b" top: "b" }}
layer {{ name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" eltwise_param {{ {eltwise} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "s" top: "s" }}
layer {{ name: "next" bottom: "s" top: "d" {conv} }}
"""


@NATIVE
@pytest.mark.parametrize("eltwise", ["operation: SUM", "operation: SUM coeff: 2 coeff: -1", "operation: PROD"])
def test_eltwise_epilogue_gives_the_bytes_of_the_separate_layers(eltwise):
    text = RESIDUAL.format(conv=CONV.replace("kernel_size: 3 pad: 1", "kernel_size: 1"), eltwise=eltwise)
    fused, plain = build(text), build(text)
    plain.after_forward(lambda i: None)     # a hook: every layer runs on its own
    fused.forward()
    plain.forward()
    names = [r.name for r in fused.records]
    assert {names[i]: chain.applied for i, chain in fused._epilogues.items()} == {"b": True, "sum": True}
    for name in ("s", "d"):
        np.testing.assert_array_equal(fused.blobs[name].data, plain.blobs[name].data)
    assert (fused.blobs["s"].data == 0).any() and (fused.blobs["s"].data > 0).any()


# Training: the same chains, every layer running backward (BatchNorm on stored statistics, as when
# fine-tuning a ResNet; with batch statistics BatchNorm stays out and Scale-ReLU chains remain).
TRAINED = "force_backward: true\n" + NET.replace('type: "BatchNorm"', 'type: "BatchNorm" batch_norm_param { use_global_stats: true }')
BATCH = "force_backward: true\n" + NET         # in TRAIN, BatchNorm normalises by the batch's statistics


def test_training_chains_found_and_kept_apart_from_inference_ones():
    net = build(TRAINED, caffe_pb2.TRAIN)
    assert chain_kinds(net) == chain_kinds(build()) and all(c.trains for c in net._chains.values())
    assert sorted(net.records[c.last].name for c in net._backward_chains.values()) == ["r1", "r2", "r3", "s4"]
    assert not any(c.trains for c in build()._chains.values()) and build()._backward_chains == {}
    batch = build(BATCH, caffe_pb2.TRAIN)      # batch statistics: the same chains, none inside c1 or c3
    assert chain_kinds(batch) == chain_kinds(net)
    assert [c.batch_statistics for c in batch._chains.values()] == ["bn" in c.members for c in batch._chains.values()]
    assert sorted(batch.records[i].name for i in batch._epilogues) == ["c3"]       # s3-r3


def train_once(net, seed=3):
    net.forward()
    r = np.random.default_rng(seed)
    top = net.blobs["c3"]
    top.diff[...] = r.standard_normal(top.shape)
    for layer in net.layers:
        for b in layer.blobs:
            b.diff[...] = 0
    net.backward()


@NATIVE
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("text", [TRAINED, BATCH], ids=["stored statistics", "batch statistics"])
def test_training_chains_give_the_bytes_of_the_separate_layers(dtype, text):
    with precision(dtype):
        fused, plain = build(text, caffe_pb2.TRAIN), build(text, caffe_pb2.TRAIN)
    plain.after_forward(lambda i: None)
    plain.after_backward(lambda i: None)
    ran = []

    def counted(original, name):
        def backward():
            done = original()
            if done:
                ran.append(name)
            return done
        return backward

    for chain in fused._backward_chains.values():
        chain.backward = counted(chain.backward, fused.records[chain.first].name)
    for _ in range(2):       # the second time on the buffers the first left
        train_once(fused)
        train_once(plain)
    # bn2-r2 runs layer by layer: out of place, b2's diff must hold ReLU's gradient.
    assert sorted(ran) == ["bn1", "bn1", "bn4", "bn4", "s3", "s3"]
    for name in ("data", "c1", "c2", "b2", "c3"):
        np.testing.assert_array_equal(fused.blobs[name].data, plain.blobs[name].data)
        np.testing.assert_array_equal(fused.blobs[name].diff, plain.blobs[name].diff)
    for a, b in zip(fused.layers, plain.layers):
        for pa, pb in zip(a.blobs, b.blobs):
            np.testing.assert_array_equal(pa.data, pb.data)     # BatchNorm's stored sums too
            np.testing.assert_array_equal(pa.diff, pb.diff)
    assert (fused.blobs["data"].diff != 0).all()
    assert (fused.layers[3].blobs[0].diff != 0).all()       # s1's scale gradient


@NATIVE
@pytest.mark.parametrize("stored", [True, False])
def test_training_chain_backward_against_finite_differences(stored):
    # conv -> BatchNorm -> Scale -> ReLU as one pass, forward and backward, float64.
    text = "force_backward: true\n" + conv_net(2, 3, 5, "num_output: 3 kernel_size: 3 pad: 1", [
        f'type: "BatchNorm" batch_norm_param {{ use_global_stats: {str(stored).lower()} }}', SCALE, RELU])
    with precision(np.float64):
        net = build(text, caffe_pb2.TRAIN)
    assert [tuple(c.members) for c in net._backward_chains.values()] == [("bn", "scale", "relu")]
    r = np.random.default_rng(5)
    weights = r.standard_normal(net.blobs["d"].shape)

    def loss():
        net.forward()
        return float((net.blobs["d"].data * weights).sum())

    loss()
    net.blobs["d"].diff[...] = weights
    for layer in net.layers:
        for b in layer.blobs:
            b.diff[...] = 0
    net.backward()
    scale = net.layers[3]
    for blob in (net.blobs["data"], scale.blobs[0], scale.blobs[1]):
        grad, flat = blob.diff.copy().reshape(-1), blob.data.reshape(-1)
        for k in range(0, flat.size, max(1, flat.size // 7)):
            keep = flat[k]
            flat[k] = keep + 1e-6
            up = loss()
            flat[k] = keep - 1e-6
            down = loss()
            flat[k] = keep
            assert abs((up - down) / 2e-6 - grad[k]) < 1e-5 * max(1, abs(grad[k]))


@NATIVE
@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("after", ["bn+scale+relu", "scale+relu", "relu"])
@pytest.mark.parametrize("stored", [True, False])
def test_training_epilogue_and_chain_backward_give_the_bytes_of_the_separate_layers(engine, after, stored):
    if not stored and "bn" not in after:
        pytest.skip("no BatchNorm")
    layers = [t.replace(BN, BN + " batch_norm_param { use_global_stats: true }") if stored else t
              for t in AFTER[after]]
    text = "force_backward: true\n" + conv_net(*ENGINES[engine], layers)
    fused, plain = build(text, caffe_pb2.TRAIN), build(text, caffe_pb2.TRAIN)
    plain.after_forward(lambda i: None)
    plain.after_backward(lambda i: None)
    for net in (fused, plain):
        net.forward()
        net.blobs["d"].diff[...] = np.random.default_rng(4).standard_normal(net.blobs["d"].shape)
        net.backward()
    # Batch statistics: no epilogue, the chain runs after the convolution.
    assert fused._epilogues[1].applied if stored else (1 not in fused._epilogues and fused._chains)
    for name in ("data", "c", "d"):
        np.testing.assert_array_equal(fused.blobs[name].data, plain.blobs[name].data)
        np.testing.assert_array_equal(fused.blobs[name].diff, plain.blobs[name].diff)
    for a, b in zip(fused.layers, plain.layers):
        for pa, pb in zip(a.blobs, b.blobs):
            np.testing.assert_array_equal(pa.data, pb.data)
            np.testing.assert_array_equal(pa.diff, pb.diff)
