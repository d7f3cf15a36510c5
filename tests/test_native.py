"""The compiled kernels (netspec/_native.c): built where a compiler is, equal to the numpy
paths on whole nets, and refusing bad buffers with an exception instead of a crash.

Layer by layer, tests/test_vision_layers.py runs every convolution and pooling case
through both paths against naive loops and finite differences.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from netspec.layers import native
from netspec.layers.conv_columns import ColumnConv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_native = pytest.mark.skipif(native.kernels is None, reason="compiled kernels not built")


def test_kernels_are_built_where_a_compiler_is():
    # CI and the README's install run on machines with gcc: there the compiled path must be
    # what the tests exercise, not silently skipped.
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    assert native.kernels is not None, "pip did not build netspec._native (see setup.py)"
    assert native.ENABLED or os.environ.get("NETSPEC_NATIVE") == "0"


def test_environment_switch_turns_the_kernels_off():
    code = "from netspec.layers import native; print(native.ENABLED)"
    env = dict(os.environ, NETSPEC_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


LENET_LIKE = """
name: "small"
input: "data" input_shape { dim: 6 dim: 2 dim: 13 dim: 12 }
input: "label" input_shape { dim: 6 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 7 kernel_size: 2 stride: 1 group: 1 weight_filler { type: "xavier" } } }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
  convolution_param { num_output: 7 kernel_size: 3 pad: 1 group: 7 bias_term: false weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv3" top: "conv3" }
layer { name: "scale" type: "Scale" bottom: "conv3" top: "conv3" scale_param { bias_term: true
  filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "gaussian" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv3" top: "pool2" pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool2" top: "ip" inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _run_net(tmp_path, enabled, monkeypatch):
    import netspec as caffe
    from netspec import rng
    monkeypatch.setattr(native, "ENABLED", enabled)
    path = tmp_path / "net.prototxt"
    path.write_text(LENET_LIKE)
    rng.set_seed(3)
    net = caffe.Net(str(path), caffe.TRAIN)
    data = np.random.default_rng(4)
    net.blobs["data"].data[...] = data.standard_normal(net.blobs["data"].data.shape)
    net.blobs["label"].data[...] = data.integers(0, 4, 6)
    loss = float(net.forward()["loss"])
    net.backward()
    used = [isinstance(net.layer_dict[n].engine, ColumnConv) for n in ("conv1", "conv2")]
    used += [net.layer_dict["conv3"].engine.window is not None]     # depthwise: DepthwiseConv's kernels
    used += [net.layer_dict[n].pool.window is not None for n in ("pool1", "pool2")]
    used += [net.layer_dict[n].fused for n in ("bn", "scale")]
    grads = {name: [p.diff.copy() for p in params] for name, params in net.params.items()}
    return loss, grads, used


@needs_native
def test_a_net_gives_the_same_loss_and_gradients_on_both_paths(tmp_path, monkeypatch):
    loss_c, grads_c, used_c = _run_net(tmp_path, True, monkeypatch)
    loss_n, grads_n, used_n = _run_net(tmp_path, False, monkeypatch)
    # Small maps (all here) take the compiled convolution; every pooling layer is compiled.
    assert used_c == [True] * 7 and used_n == [False] * 7
    assert np.isclose(loss_c, loss_n, rtol=1e-6)
    for name in grads_c:
        for a, b in zip(grads_c[name], grads_n[name]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)


GEOM = (2, 5, 5, 2, 2, 2, 2, 0, 0, 1, 1, 2, 2)     # 2 channels of 5x5, 2x2 windows, stride 2


@needs_native
@pytest.mark.parametrize("call, error", [
    # a float64 image with float32 columns
    (lambda k: k.im2col(np.zeros((1, 2, 5, 5)), np.zeros((8, 4), np.float32), GEOM, 0, 1, 4, 4), TypeError),
    # columns too small for the rows asked for
    (lambda k: k.im2col(np.zeros((1, 2, 5, 5)), np.zeros((7, 4)), GEOM, 0, 1, 4, 4), ValueError),
    # rows and samples overlapping in the column array
    (lambda k: k.im2col(np.zeros((1, 2, 5, 5)), np.zeros((8, 4)), GEOM, 0, 1, 2, 2), ValueError),
    # more samples than the image holds
    (lambda k: k.col2im(np.zeros((8, 8)), np.zeros((1, 2, 5, 5)), GEOM, 0, 2, 8, 4), ValueError),
    # a strided (non-contiguous) view
    (lambda k: k.max_pool(np.zeros((2, 5, 10))[:, :, ::2], np.zeros((2, 2, 2)), np.zeros((2, 2, 2), np.int32),
                          GEOM, 2), (ValueError, BufferError)),
    # an argmax pointing outside its plane
    (lambda k: k.max_unpool(np.zeros(8), np.full(8, 25, np.int32), np.zeros(50), GEOM, 2), ValueError),
    # a read-only output
    (lambda k: k.ave_pool(np.zeros(50), np.frombuffer(bytes(64)), GEOM, 2), (ValueError, BufferError)),
    # per-channel sums asked into float32 arrays (they are float64)
    (lambda k: k.channel_sums(np.zeros(12), np.zeros(12), np.zeros(3, np.float32), np.zeros(3, np.float32),
                              2, 3, 2), TypeError),
    # a BatchNorm gradient output smaller than the data
    (lambda k: k.batch_norm_grad(np.zeros(12), np.zeros(12), np.zeros(3), np.zeros(3), np.ones(3), np.zeros(11),
                                 2, 3, 2), ValueError),
    # a negative shape
    (lambda k: k.channel_affine(np.zeros(12), np.zeros(12), np.zeros(3), np.zeros(3), 2, -3, 2, False), ValueError),
    # depthwise: a top smaller than its planes, a range past the planes, a float32 bias for float64 data
    (lambda k: k.depthwise_forward(np.zeros(50), np.zeros(8), None, np.zeros(7), GEOM, 1, 1, 0, 2), ValueError),
    (lambda k: k.depthwise_forward(np.zeros(50), np.zeros(8), None, np.zeros(8), GEOM, 1, 1, 0, 3), ValueError),
    (lambda k: k.depthwise_forward(np.zeros(50), np.zeros(8), np.zeros(2, np.float32), np.zeros(8), GEOM, 1, 1,
                                   0, 2), TypeError),
    (lambda k: k.depthwise_backward_weights(np.zeros(8), np.zeros(50), None, np.zeros(7), GEOM, 1, 1, 0, 2),
     ValueError),
    (lambda k: k.depthwise_backward_data(np.zeros(8), np.zeros(8), None, np.zeros(50), GEOM, 0, 1, 0, 2),
     ValueError),
    # a geometry with a zero stride
    (lambda k: k.ave_pool(np.zeros(50), np.zeros(8), GEOM[:5] + (0,) + GEOM[6:], 2), ValueError),
])
def test_bad_buffers_raise_instead_of_writing_out_of_bounds(call, error):
    with pytest.raises(error):
        call(native.kernels)


@needs_native
@pytest.mark.parametrize("shape, kernel, stride, pad, dilation", [
    ((3, 2, 7, 6), (3, 3), (1, 1), (0, 0), (1, 1)),
    ((2, 3, 9, 8), (3, 2), (2, 3), (1, 2), (1, 1)),
    ((2, 1, 8, 9), (2, 3), (1, 2), (2, 0), (2, 2)),
])
def test_columns_match_numpy_in_both_layouts(shape, kernel, stride, pad, dilation):
    from netspec.layers.im2col import ConvGeometry
    num, channels = shape[:2]
    g = ConvGeometry(num, channels, shape[2:], kernel, stride, pad, dilation, batch_inner=False)
    geom = native.window_geometry(channels, shape[2:], kernel, stride, pad, dilation, g.out)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    want = np.empty((num, g.rows, g.out_count))           # numpy's stacked columns
    owner = type("Owner", (), {})()                         # holds the padded image buffer
    g.im2col(g.load_image(owner, "img", x), want)
    P = g.out_count
    stacked = np.full((num, g.rows + 1, P), 5.0)            # a spare row per sample stays untouched
    native.kernels.im2col(x, stacked, geom, 0, num, P, (g.rows + 1) * P)
    np.testing.assert_array_equal(stacked[:, :-1], want)
    assert np.all(stacked[:, -1] == 5.0)
    side = np.empty((g.rows, num * P))
    native.kernels.im2col(x, side, geom, 0, num, num * P, P)
    np.testing.assert_array_equal(side.reshape(g.rows, num, P).transpose(1, 0, 2), want)
    # col2im: the adjoint of im2col, <im2col(x), c> = <x, col2im(c)>, and numpy's add_windows.
    c = rng.standard_normal(side.shape)
    back = np.empty_like(x)
    native.kernels.col2im(c, back, geom, 0, num, num * P, P)
    assert np.isclose(np.sum(side * c), np.sum(x * back))
    image = np.zeros(g.image_shape)
    g.add_windows(np.ascontiguousarray(c.reshape(g.rows, num, P).transpose(1, 0, 2)), image)
    np.testing.assert_allclose(back, g.interior(image), rtol=1e-12, atol=1e-12)
