"""conv_winograd.py and _winograd_body.h: F(2x2, 3x3) against a direct 3x3 correlation worked out
here, on awkward sizes, in float64 (the algebra, to rounding) and in a float32 net (the engine)."""
import numpy as np
import pytest
from google.protobuf import text_format

import netspec
from isa import on_every_isa
from netspec import rng
from netspec.layers import conv_winograd, native
from netspec.layers.conv_engines import StackedConv
from netspec.net import Net
from netspec.proto import caffe_pb2

pytestmark = pytest.mark.skipif(native.kernels is None or not native.has_winograd(),
                                reason="compiled kernels (netspec._native) not built")


def correlate3x3(x, w, bias, pad):
    """y[n, k, i, j] = bias[k] + sum over c, a, b of w[k, c, a, b] x_padded[n, c, i + a, j + b]."""
    (ph, pw), (h, wd) = pad, x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = h + 2 * ph - 2, wd + 2 * pw - 2
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for a in range(3):
        for b in range(3):
            y += np.einsum("kc,nchw->nkhw", w[:, :, a, b], xp[:, :, a:a + oh, b:b + ow])
    return y + bias[None, :, None, None]


def winograd(x, w, bias, pad, cuts):
    """The three kernels and numpy's GEMMs over tile blocks ending at `cuts` (the last is the total)."""
    (n, c, h, wd), k = x.shape, w.shape[0]
    oh, ow = h + 2 * pad[0] - 2, wd + 2 * pad[1] - 2
    tiles = ((oh + 1) // 2, (ow + 1) // 2)
    geom = (c, h, wd, pad[0], pad[1], oh, ow) + tiles
    u = np.empty((16, k, c), x.dtype)
    conv_winograd.transform_weights(w, u, 0, k // 2)      # by output channel blocks, as the engine
    conv_winograd.transform_weights(w, u, k // 2, k)
    y = np.full((n, k, oh, ow), np.nan, x.dtype)
    t0 = 0
    for t1 in cuts:
        v = np.empty((16, c, t1 - t0), x.dtype)
        native.kernels.winograd_input(x, v, geom, n, t0, t1)
        native.kernels.winograd_output(np.matmul(u, v), y, bias, (k,) + geom[1:], n, t0, t1)
        t0 = t1
    return y


@pytest.mark.parametrize("n, c, h, w, k, pad, cuts", [
    (2, 3, 5, 7, 4, (1, 1), None),       # odd output sizes: the last tiles half outside
    (1, 5, 6, 6, 3, (0, 0), None),       # no padding
    (3, 2, 9, 4, 5, (1, 0), None),       # padding in one dimension only
    (2, 4, 1, 8, 2, (1, 1), None),       # one input row
    (1, 1, 3, 3, 1, (0, 0), None),       # a single output
    (2, 3, 8, 11, 6, (2, 2), None),      # padding wider than the kernel's reach
    (2, 6, 10, 10, 7, (1, 1), (7, 13, 50, 61)),     # blocks that start and end inside tile rows
])
def test_kernels_match_direct_correlation(n, c, h, w, k, pad, cuts):
    r = np.random.default_rng(0)
    x, wt, b = r.standard_normal((n, c, h, w)), r.standard_normal((k, c, 3, 3)), r.standard_normal(k)
    total = n * ((h + 2 * pad[0] - 1) // 2) * ((w + 2 * pad[1] - 1) // 2)
    cuts = [t for t in (cuts or ()) if t < total] + [total]
    got = winograd(x, wt, b, pad, cuts)
    want = correlate3x3(x, wt, b, pad)
    assert np.abs(got - want).max() < 1e-12 * np.abs(want).max()


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-15), (np.float32, 1e-6)])
def test_weight_transform_is_g_g_gt_on_its_output_channels_only(dtype, tolerance):
    r = np.random.default_rng(1)
    k, c = 7, 5
    w = r.standard_normal((k, c, 3, 3)).astype(dtype)
    u = np.full((16, k, c), np.nan, dtype)
    conv_winograd.transform_weights(w, u, 2, 6)
    want = (conv_winograd.WEIGHT_MAP @ w.astype(np.float64).reshape(-1, 9).T).reshape(16, k, c)
    assert np.isnan(u[:, :2]).all() and np.isnan(u[:, 6:]).all()       # the other channels untouched
    assert np.abs(u[:, 2:6] - want[:, 2:6]).max() < tolerance * np.abs(want).max()
    big = r.standard_normal((300, 2, 3, 3)).astype(dtype)            # more kernels than one chunk
    u = np.empty((16, 300, 2), dtype)
    conv_winograd.transform_weights(big, u, 0, 300)
    want = (conv_winograd.WEIGHT_MAP @ big.astype(np.float64).reshape(-1, 9).T).reshape(16, 300, 2)
    assert np.abs(u - want).max() < tolerance * np.abs(want).max()


def test_weight_transform_refuses_bad_ranges():
    w, u = np.zeros((4, 2, 3, 3), np.float32), np.zeros((16, 4, 2), np.float32)
    with pytest.raises(ValueError):
        native.kernels.winograd_weights(w, u, 0, 9)          # past the 8 kernels
    with pytest.raises(ValueError):
        native.kernels.winograd_weights(w, u[:8], 0, 8)      # U too small
    with pytest.raises(ValueError):
        native.kernels.winograd_weights(w.reshape(-1)[:70], u, 0, 7)       # not whole kernels


def test_kernels_refuse_bad_geometry():
    x, v = np.zeros((1, 2, 6, 6), np.float32), np.zeros((16, 2, 9), np.float32)
    with pytest.raises(ValueError):      # 6x6 padded by 1 gives 6x6 out, not 5x5
        native.kernels.winograd_input(x, v, (2, 6, 6, 1, 1, 5, 5, 3, 3), 1, 0, 9)
    with pytest.raises(ValueError):      # tiles past the batch
        native.kernels.winograd_input(x, v, (2, 6, 6, 1, 1, 6, 6, 3, 3), 1, 0, 10)
    with pytest.raises(ValueError):      # V too small for the range
        native.kernels.winograd_input(x, v[:, :, :4], (2, 6, 6, 1, 1, 6, 6, 3, 3), 1, 0, 9)


NET = """
name: "w"
layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: {n} dim: 32 dim: {h} dim: {w} }} }} }}
layer {{ name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param {{ num_output: 32 kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.3 }}
                       bias_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "c1" top: "c1" }}
layer {{ name: "r1" type: "ReLU" bottom: "c1" top: "c1" }}
layer {{ name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param {{ num_output: 5 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
"""


def build(n=2, h=17, w=20, phase=caffe_pb2.TEST, extra=""):
    rng.set_seed(3)
    net = Net(text_format.Parse(NET.format(n=n, h=h, w=w) + extra, caffe_pb2.NetParameter()), phase)
    r = np.random.default_rng(4)
    bn = net.layer_dict["bn"]
    bn.blobs[0].data[...] = r.standard_normal(32)
    bn.blobs[1].data[...] = r.uniform(0.5, 2, 32)
    bn.blobs[2].data[...] = 1
    net.blobs["data"].data[...] = r.standard_normal(net.blobs["data"].shape)
    return net


def reference(net):
    """c2 worked out in float64 from the net's own weights: correlation, BatchNorm, ReLU, correlation."""
    x = net.blobs["data"].data.astype(np.float64)
    c1, c2, bn = (net.layer_dict[name] for name in ("c1", "c2", "bn"))
    y = correlate3x3(x, c1.blobs[0].data, c1.blobs[1].data, (1, 1))
    mean, var = bn.blobs[0].data, bn.blobs[1].data
    y = np.maximum((y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5), 0)
    return correlate3x3(y, c2.blobs[0].data, c2.blobs[1].data, (0, 0))


def test_deploy_net_runs_winograd_with_its_epilogue():
    net = build()
    net.forward()
    assert all(isinstance(net.layer_dict[name].engine, conv_winograd.WinogradConv) for name in ("c1", "c2"))
    want = reference(net)
    assert np.abs(net.blobs["c2"].data - want).max() < 1e-5 * np.abs(want).max()


def test_same_bytes_for_any_thread_count():
    tops, before = [], netspec.get_threads()
    for threads in (1, 2):
        netspec.set_threads(threads)
        try:
            net = build(n=3, h=30, w=31)
            net.forward()
            tops.append(net.blobs["c2"].data.copy())
        finally:
            netspec.set_threads(before)
    assert len(conv_winograd.WinogradConv(net.layer_dict["c1"]).blocks) > 2
    assert np.array_equal(tops[0], tops[1])


def test_weights_changed_in_place_are_used():
    net = build()
    net.forward()
    net.layer_dict["c2"].blobs[0].data[...] *= -2       # as a pycaffe script may, between forwards
    net.forward()
    want = reference(net)
    assert np.abs(net.blobs["c2"].data - want).max() < 1e-5 * np.abs(want).max()


def test_training_small_batches_and_few_channels_keep_the_gemm():
    loss = ('layer { name: "t" type: "Input" top: "target" input_param { shape { dim: 2 dim: 5 dim: 15 dim: 18 } } }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "c2" bottom: "target" top: "loss" }')
    net = build(phase=caffe_pb2.TRAIN, extra=loss)
    net.forward()
    assert type(net.layer_dict["c2"].engine) is StackedConv       # backward runs: Caffe's GEMM bytes
    assert conv_winograd.tile_count(1, (9, 9)) < conv_winograd.MIN_TILES
    net = build(n=1, h=9, w=9)
    net.forward()
    assert not isinstance(net.layer_dict["c1"].engine, conv_winograd.WinogradConv)
    few = NET.format(n=2, h=17, w=20).replace("dim: 32", "dim: 16")     # below MIN_GROUP_CHANNELS
    net = Net(text_format.Parse(few, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    net.forward()
    assert not isinstance(net.layer_dict["c1"].engine, conv_winograd.WinogradConv)
    assert isinstance(net.layer_dict["c2"].engine, conv_winograd.WinogradConv)       # its 32 channels


@pytest.mark.skipif(not hasattr(native.kernels, "set_isa"), reason="a build without ISA dispatch")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_instruction_set_gives_the_same_bits(dtype):
    r = np.random.default_rng(5)
    x, w, b = (r.standard_normal(s).astype(dtype) for s in ((2, 5, 13, 11), (7, 5, 3, 3), (7,)))
    results = on_every_isa(lambda: winograd(x, w, b, (1, 1), [17, 60, 84]))
    assert all(got.tobytes() == results[0].tobytes() for got in results[1:])


def test_engine_kept_while_the_shape_stays_and_rebuilt_when_it_changes():
    net = build()
    net.forward()
    engine = net.layer_dict["c1"].engine
    net.forward()
    assert net.layer_dict["c1"].engine is engine          # same bottoms: geometry and engine kept
    assert conv_winograd.tile_count(1, (9, 11)) < conv_winograd.MIN_TILES     # the GEMM engine
    net.blobs["data"].reshape(1, 32, 9, 11)
    net.reshape()
    net.blobs["data"].data[...] = np.random.default_rng(6).standard_normal((1, 32, 9, 11))
    net.forward()
    c1 = net.layer_dict["c1"]
    assert c1.engine is not engine and not isinstance(c1.engine, conv_winograd.WinogradConv)
    assert net.blobs["c2"].shape == (1, 5, 7, 9)
    want = reference(net)
    assert np.abs(net.blobs["c2"].data - want).max() < 1e-5 * np.abs(want).max()


def test_grouped_convolution_runs_one_gemm_per_group_and_entry():
    text = """
name: "g"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 64 dim: 13 dim: 13 } } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 6 group: 2 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" std: 0.3 } } }
"""
    rng.set_seed(5)
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    x = np.random.default_rng(9).standard_normal((2, 64, 13, 13))
    net.blobs["data"].data[...] = x
    net.forward()
    layer = net.layer_dict["c"]
    assert isinstance(layer.engine, conv_winograd.WinogradConv)
    w, b = layer.blobs[0].data.astype(np.float64), layer.blobs[1].data.astype(np.float64)
    want = np.concatenate([correlate3x3(x[:, 32 * g:32 * g + 32], w[3 * g:3 * g + 3], b[3 * g:3 * g + 3], (1, 1))
                           for g in range(2)], axis=1)
    assert np.abs(net.blobs["c"].data - want).max() < 1e-5 * np.abs(want).max()


ONE_LAYER = """
name: "one"
layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: {c} dim: 14 dim: 13 }} }} }}
layer {{ name: "c" type: "Convolution" bottom: "data" top: "c"
  convolution_param {{ num_output: {k} group: {group} kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.3 }}
                       bias_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "r" type: "ReLU" bottom: "c" top: "c" }}
"""


def one_layer(c, k, group):
    """A deploy net of one 3x3 convolution (and its ReLU) at batch 1 on a 14x13 map: 49 tiles, one block."""
    rng.set_seed(7)
    net = Net(text_format.Parse(ONE_LAYER.format(c=c, k=k, group=group), caffe_pb2.NetParameter()), caffe_pb2.TEST)
    net.blobs["data"].data[...] = np.random.default_rng(8).standard_normal(net.blobs["data"].shape)
    return net


def one_layer_reference(net, group):
    layer = net.layer_dict["c"]
    x = net.blobs["data"].data.astype(np.float64)
    w, b = layer.blobs[0].data.astype(np.float64), layer.blobs[1].data.astype(np.float64)
    c, k = x.shape[1] // group, w.shape[0] // group
    y = np.concatenate([correlate3x3(x[:, c * g:c * (g + 1)], w[k * g:k * (g + 1)], b[k * g:k * (g + 1)], (1, 1))
                        for g in range(group)], axis=1)
    return np.maximum(y, 0)


@pytest.mark.parametrize("c, k, group", [(32, 32, 1), (64, 96, 1), (48, 160, 1), (32, 256, 1), (64, 128, 2)])
def test_batch_one_splits_one_tile_block_by_output_channels(c, k, group):
    before = netspec.get_threads()
    tops = {}
    try:
        for threads in (1, 2):
            netspec.set_threads(threads)
            for by_channels in (True, False):
                net = one_layer(c, k, group)
                net.reshape()
                engine = net.layer_dict["c"].engine
                assert isinstance(engine, conv_winograd.WinogradConv) and len(engine.blocks) == 1
                assert engine.by_channels
                engine.by_channels = by_channels        # False: the tile blocks' path, to compare with
                net.forward()
                tops[threads, by_channels] = net.blobs["c"].data.copy()
    finally:
        netspec.set_threads(before)
    blocks = conv_winograd.channel_blocks(k, group)
    assert len(blocks) == group * {32: 1, 48: 1, 64: 2, 96: 2, 128: 4, 160: 4, 256: 4}[k // group]   # powers of two
    assert [b[1:] for b in blocks] == [(k * j // len(blocks), k * (j + 1) // len(blocks)) for j in range(len(blocks))]
    assert np.array_equal(tops[1, True], tops[2, True])      # the same bytes for any thread count
    assert np.array_equal(tops[1, False], tops[2, False])
    want = one_layer_reference(net, group)
    scale = np.abs(want).max()
    assert np.abs(tops[1, True] - tops[1, False]).max() < 1e-6 * scale     # the GEMMs' rounding alone
    assert np.abs(tops[1, True] - want).max() < 1e-5 * scale


def test_batch_one_follows_weights_changed_in_place():
    # Each channel block transforms its own weights on every forward: nothing is cached.
    net = one_layer(32, 128, 1)
    net.forward()
    assert net.layer_dict["c"].engine.by_channels
    net.layer_dict["c"].blobs[0].data[64:] *= -2
    net.forward()
    want = one_layer_reference(net, 1)
    assert np.abs(net.blobs["c"].data - want).max() < 1e-5 * np.abs(want).max()


def test_batch_one_without_the_kernels_keeps_numpys_path(monkeypatch):
    monkeypatch.setattr(native, "ENABLED", False)       # as NETSPEC_NATIVE=0
    net = one_layer(32, 64, 1)
    net.forward()
    assert not isinstance(net.layer_dict["c"].engine, conv_winograd.WinogradConv)
    want = one_layer_reference(net, 1)
    assert np.abs(net.blobs["c"].data - want).max() < 1e-5 * np.abs(want).max()
