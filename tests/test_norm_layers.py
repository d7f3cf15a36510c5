"""Normalisation layers: forward against hand-worked cases, backward against finite differences."""
import numpy as np
import pytest
from google.protobuf import text_format

from gradcheck import build, check_layer, forward
from netspec.blob import Blob, precision
from netspec.errors import NetspecError
from netspec.layers import native
from netspec.proto import caffe_pb2

rng = np.random.default_rng(16)


@pytest.fixture(autouse=True, params=["numpy", pytest.param("native", marks=pytest.mark.skipif(
    native.kernels is None, reason="compiled kernels not built"))])
def kernels(request, monkeypatch):
    """Every test twice: BatchNorm's and Scale's numpy passes, then their compiled one-pass form."""
    monkeypatch.setattr(native, "ENABLED", request.param == "native")
    return request.param


def randn(*shape):
    return rng.standard_normal(shape)


def finite_difference(layer, bottom, top, eps=1e-6):
    """d sum(top * w) / d bottom[0] by central differences, with the layer as it stands."""
    w = np.random.default_rng(3).standard_normal(top[0].shape)
    flat = bottom[0].data.reshape(-1)
    grad = np.empty(flat.size)
    for k in range(flat.size):
        old = flat[k]
        values = []
        for x in (old + eps, old - eps):
            flat[k] = x
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            values.append(np.sum(top[0].data * w))
        flat[k] = old
        grad[k] = (values[0] - values[1]) / (2 * eps)
    return w, grad.reshape(bottom[0].shape)


# ---------------------------------------------------------------- BatchNorm
def test_batchnorm_train_forward_uses_batch_statistics():
    x = np.array([[[1.0, 3.0], [10.0, 10.0]], [[5.0, 7.0], [20.0, 0.0]]])  # (N=2, C=2, S=2)
    (y,) = forward('type: "BatchNorm" batch_norm_param { eps: 0 }', [x])
    # channel 0: values 1 3 5 7 -> mean 4, var 5; channel 1: 10 10 20 0 -> mean 10, var 50
    assert np.allclose(y[:, 0], (x[:, 0] - 4) / np.sqrt(5))
    assert np.allclose(y[:, 1], (x[:, 1] - 10) / np.sqrt(50))


def test_batchnorm_running_averages_and_test_mode():
    f = 0.9
    batches = [randn(3, 2, 4) * s + s for s in (1.0, 2.0, 3.0)]
    with precision(np.float64):
        layer, bottom, top = build(f'type: "BatchNorm" batch_norm_param {{ moving_average_fraction: {f} }}',
                                   [batches[0]])
        for xb in batches:
            bottom[0].data[...] = xb
            layer.forward(bottom, top)
        # hand recurrence: blobs hold sums weighted by powers of f, blob 2 the matching weight
        m = 3 * 4
        means = [xb.transpose(1, 0, 2).reshape(2, -1).mean(axis=1) for xb in batches]
        variances = [xb.transpose(1, 0, 2).reshape(2, -1).var(axis=1) * m / (m - 1) for xb in batches]
        expect_mean = f * f * means[0] + f * means[1] + means[2]
        expect_var = f * f * variances[0] + f * variances[1] + variances[2]
        expect_factor = f * f + f + 1
        assert np.allclose(layer.blobs[0].data, expect_mean)
        assert np.allclose(layer.blobs[1].data, expect_var)
        assert np.allclose(layer.blobs[2].data, [expect_factor])

        # switch to global statistics: (x - mean/factor) / sqrt(var/factor + eps), an affine map
        layer.use_global_stats = True
        x = randn(2, 2, 4)
        bottom[0].reshape(x.shape)
        bottom[0].data[...] = x
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        mu, var = expect_mean / expect_factor, expect_var / expect_factor
        std = np.sqrt(var + layer.eps)
        assert np.allclose(top[0].data, (x - mu[:, None]) / std[:, None])
        before = layer.blobs[0].data.copy()
        w, numeric = finite_difference(layer, bottom, top)
        assert np.array_equal(layer.blobs[0].data, before)  # global stats are not updated
        top[0].diff[...] = w
        layer.backward(top, [True], bottom)
        assert np.allclose(bottom[0].diff, numeric, rtol=1e-6, atol=1e-8)
        assert np.allclose(bottom[0].diff, w / std[:, None])


def test_batchnorm_test_phase_defaults_to_global_stats():
    layer, bottom, top = build('type: "BatchNorm"', [randn(2, 3)], phase=caffe_pb2.TEST)
    assert layer.use_global_stats
    layer.blobs[0].data[...] = [2.0, 4.0, 6.0]
    layer.blobs[1].data[...] = [8.0, 8.0, 8.0]
    layer.blobs[2].data[...] = 2.0
    bottom[0].data[...] = 1.0
    layer.forward(bottom, top)
    assert np.allclose(top[0].data, (1.0 - np.array([1.0, 2.0, 3.0])) / np.sqrt(4.0 + 1e-5), rtol=1e-6)
    layer, *_ = build('type: "BatchNorm" batch_norm_param { use_global_stats: false }', [randn(2, 3)],
                      phase=caffe_pb2.TEST)
    assert not layer.use_global_stats


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 2, 3), (6,)])
def test_batchnorm_gradients(shape):
    check_layer('type: "BatchNorm"', [randn(*shape) * 2 + 1], check_params=False)
    check_layer('type: "BatchNorm" batch_norm_param { eps: 0.5 }', [randn(*shape)], check_params=False)
    check_layer('type: "BatchNorm"', [randn(*shape)], check_params=False, phase=caffe_pb2.TEST)


def test_batchnorm_masks_statistics_from_the_solver():
    layer, *_ = build('type: "BatchNorm"', [randn(2, 3, 2)])
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]
    assert [(s.lr_mult, s.decay_mult) for s in layer.layer_param.param] == [(0, 0)] * 3
    layer, *_ = build('type: "BatchNorm" param { lr_mult: 0 }', [randn(2, 3, 2)])
    assert len(layer.layer_param.param) == 3
    with pytest.raises(NetspecError, match="param 1 has lr_mult 1.*not learnable"):
        build('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }', [randn(2, 3)])


def test_batchnorm_scale_in_place_matches_separate_blobs():
    x, dy = randn(4, 3, 2), randn(4, 3, 2)
    results = []
    for in_place in (False, True):
        with precision(np.float64):
            bn, b_bottom, b_top = build('type: "BatchNorm"', [x])
            sc, _, _ = build('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } '
                             'bias_filler { type: "gaussian" } }', [x])
            if in_place:
                b_top, s_top = b_bottom, b_bottom
            else:
                s_top = [Blob(x.shape)]
            for layer, bot, top in ((bn, b_bottom, b_top), (sc, b_top, s_top)):
                layer.reshape(bot, top)
                layer.forward(bot, top)
            out = s_top[0].data.copy()
            s_top[0].diff[...] = dy
            sc.backward(s_top, [True], b_top)
            bn.backward(b_top, [True], b_bottom)
            results.append((out, b_bottom[0].diff.copy(), sc.blobs[0].diff.copy(), sc.blobs[1].diff.copy()))
    for a, b in zip(*results):
        assert np.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_batchnorm_in_a_net_is_not_learnable():
    from netspec.net import Net
    param = text_format.Parse('''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }
        layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }
    ''', caffe_pb2.NetParameter())
    net = Net(param, caffe_pb2.TRAIN)
    assert [lr for _, lr, _ in net.learnable_params] == [0, 0, 0, 1, 1]


# ---------------------------------------------------------------- Scale / Bias
SCALE_CASES = [
    # (params, bottom shape, learned-param shape)
    ("", (2, 3, 4), (3,)),
    ("axis: 0 num_axes: 2", (2, 3, 4), (2, 3)),
    ("axis: -1", (2, 3, 4), (4,)),
    ("axis: 1 num_axes: -1", (2, 3, 4), (3, 4)),
    ("num_axes: 0", (2, 3, 4), ()),
    ("axis: -2 num_axes: 2", (2, 3, 4, 2), (4, 2)),
]


@pytest.mark.parametrize("params, shape, pshape", SCALE_CASES)
def test_scale_learned(params, shape, pshape):
    text = f'type: "Scale" scale_param {{ {params} filler {{ type: "gaussian" }} }}'
    x = randn(*shape)
    layer, bottom, top = build(text, [x])
    assert layer.blobs[0].shape == pshape
    s = np.asarray(layer.blobs[0].data, np.float64)
    layer.forward(bottom, top)
    axis = {"": 1, "axis: 0 num_axes: 2": 0, "axis: -1": 2, "axis: 1 num_axes: -1": 1, "num_axes: 0": 0,
            "axis: -2 num_axes: 2": 2}[params]
    expand = s.reshape(s.shape + (1,) * (len(shape) - axis - s.ndim))
    assert np.allclose(top[0].data, x * expand, rtol=1e-5)
    check_layer(text, [x])
    layer, *_ = check_layer(f'type: "Scale" scale_param {{ {params} bias_term: true '
                            f'filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }}', [x])
    assert [b.shape for b in layer.blobs] == [pshape, pshape]


def test_scale_default_fillers():
    layer, bottom, top = build('type: "Scale" scale_param { bias_term: true }', [randn(2, 3)])
    assert np.all(layer.blobs[0].data == 1) and np.all(layer.blobs[1].data == 0)
    layer.forward(bottom, top)
    assert np.allclose(top[0].data, bottom[0].data)


@pytest.mark.parametrize("params, shape, sshape", [
    ("", (2, 3, 4), (3,)),
    ("axis: 0", (2, 3, 4), (2, 3)),
    ("axis: -1", (2, 3, 4), (4,)),
    ("", (2, 3, 4), ()),
    ("axis: 1", (2, 3, 4, 2), (3, 4, 2)),
])
def test_scale_and_bias_from_second_bottom(params, shape, sshape):
    x, s = randn(*shape), randn(*sshape)
    axis = 0 if not sshape else {"": 1, "axis: 0": 0, "axis: -1": 2, "axis: 1": 1}[params]
    expand = s.reshape(s.shape + (1,) * (len(shape) - axis - s.ndim))
    (y,) = forward(f'type: "Scale" scale_param {{ {params} }}', [x, s])
    assert np.allclose(y, x * expand)
    (y,) = forward(f'type: "Bias" bias_param {{ {params} }}', [x, s])
    assert np.allclose(y, x + expand)
    layer, *_ = check_layer(f'type: "Scale" scale_param {{ {params} }}', [x, s])
    assert layer.blobs == []
    layer, *_ = check_layer(f'type: "Scale" scale_param {{ {params} bias_term: true '
                            f'bias_filler {{ type: "gaussian" }} }}', [x, s])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == sshape
    check_layer(f'type: "Bias" bias_param {{ {params} }}', [x, s])


@pytest.mark.parametrize("params, shape, pshape", SCALE_CASES)
def test_bias_learned(params, shape, pshape):
    text = f'type: "Bias" bias_param {{ {params} filler {{ type: "gaussian" }} }}'
    layer, *_ = check_layer(text, [randn(*shape)])
    assert layer.blobs[0].shape == pshape
    layer, bottom, top = build('type: "Bias"', [randn(2, 3)])
    assert np.all(layer.blobs[0].data == 0)


def test_scale_shape_errors():
    with pytest.raises(NetspecError, match="bottom 's' has shape \\(4,\\).*shape \\(2, 3, 4\\) from axis 1"):
        build('name: "sc" type: "Scale" bottom: "x" bottom: "s"', [np.zeros((2, 3, 4)), np.zeros(4)])
    with pytest.raises(NetspecError, match="num_axes 3 from axis 1 does not fit"):
        build('type: "Bias" bias_param { num_axes: 3 }', [np.zeros((2, 3, 4))])


def test_bias_in_place():
    x = randn(2, 3, 2)
    layer, bottom, top = build('type: "Bias" bias_param { filler { type: "gaussian" } }', [x])
    layer.reshape(bottom, bottom)
    layer.forward(bottom, bottom)
    assert np.allclose(bottom[0].data, x + layer.blobs[0].data.reshape(3, 1), rtol=1e-6)
    bottom[0].diff[...] = 1
    layer.backward(bottom, [True], bottom)
    assert np.all(bottom[0].diff == 1) and np.allclose(layer.blobs[0].diff, 4)


# ---------------------------------------------------------------- LRN
def lrn_reference(x, size, alpha, beta, k, within):
    """Direct loops, the textbook definition (and Caffe's pooling-based WITHIN_CHANNEL)."""
    n, c, h, w = x.shape
    half = (size - 1) // 2
    scale = np.empty_like(x)
    for i in range(c):
        for r in range(h):
            for q in range(w):
                if within:
                    win = x[:, i, max(r - half, 0):r + half + 1, max(q - half, 0):q + half + 1]
                    scale[:, i, r, q] = 1 + alpha / size ** 2 * (win ** 2).sum(axis=(1, 2))
                else:
                    win = x[:, max(i - half, 0):i + half + 1, r, q]
                    scale[:, i, r, q] = k + alpha / size * (win ** 2).sum(axis=1)
    return x * scale ** -beta


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("size", [3, 5])
def test_lrn(region, size):
    x = randn(2, 6, 4, 5)
    # values exact in float32, the proto's type
    text = f'type: "LRN" lrn_param {{ local_size: {size} alpha: 0.75 beta: 0.625 k: 2 norm_region: {region} }}'
    (y,) = forward(text, [x])
    assert np.allclose(y, lrn_reference(x, size, 0.75, 0.625, 2.0, region == "WITHIN_CHANNEL"), rtol=1e-12)
    check_layer(text, [x])


def test_lrn_defaults_and_float32():
    x = randn(1, 7, 2, 2).astype(np.float32)
    layer, bottom, top = build('type: "LRN"', [x])
    layer.forward(bottom, top)
    assert top[0].data.dtype == np.float32
    assert np.allclose(top[0].data, lrn_reference(x.astype(np.float64), 5, 1.0, 0.75, 1.0, False), rtol=1e-5)


def test_lrn_cuts_one_sample_by_rows_across_channels_with_the_same_bytes(monkeypatch):
    from netspec.layers import norm
    x = np.random.default_rng(3).standard_normal((1, 16, 128, 128)).astype(np.float32)
    dy = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    results = []
    for chunks in (norm.SAMPLE_CHUNKS, 1):
        monkeypatch.setattr(norm, "SAMPLE_CHUNKS", chunks)
        layer, bottom, top = build('type: "LRN" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2 }', [x])
        layer.runs_backward = True
        results.append((len(layer._blocks(x)), forward_backward(layer, bottom, top, dy)))
    (blocks, (y, dx)), (one, (y1, dx1)) = results
    assert (blocks, one) == (8, 1)
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(dx, dx1)
    corner = lrn_reference(x[:, :, :3, :3].astype(np.float64), 5, 0.5, 0.75, 2.0, False)
    assert np.allclose(y[:, :, :3, :3], corner, rtol=1e-5)


def forward_backward(layer, bottom, top, dy):
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    return top[0].data.copy(), bottom[0].diff.copy()


def test_lrn_errors():
    with pytest.raises(NetspecError, match="local_size must be odd"):
        build('type: "LRN" lrn_param { local_size: 4 }', [np.zeros((1, 3, 2, 2))])
    with pytest.raises(NetspecError, match="must be 4-D"):
        build('type: "LRN"', [np.zeros((3, 2))])


# ---------------------------------------------------------------- MVN
@pytest.mark.parametrize("normalize", ["true", "false"])
@pytest.mark.parametrize("across", ["true", "false"])
def test_mvn(normalize, across):
    x = randn(2, 3, 4, 2) * 3 + 1
    text = f'type: "MVN" mvn_param {{ normalize_variance: {normalize} across_channels: {across} eps: 0.01 }}'
    (y,) = forward(text, [x])
    groups = x.reshape(2, -1) if across == "true" else x.reshape(6, -1)
    expect = groups - groups.mean(axis=1, keepdims=True)
    if normalize == "true":
        expect = expect / (np.sqrt((expect ** 2).mean(axis=1, keepdims=True)) + 0.01)  # eps on the std
    assert np.allclose(y, expect.reshape(x.shape), rtol=1e-12)
    check_layer(text, [x])
    check_layer(text.replace("eps: 0.01", ""), [randn(3, 2, 5)])


def test_mvn_hand_case_and_constant_input():
    (y,) = forward('type: "MVN"', [np.array([[[1.0, 3.0]], [[2.0, 2.0]]])])
    assert np.allclose(y[0, 0], [-1, 1])
    assert np.all(y[1, 0] == 0)  # std 0: 0 / (0 + eps)
    layer, bottom, top = build('type: "MVN"', [np.ones((2, 2, 3))])
    layer.forward(bottom, top)
    top[0].diff[...] = randn(2, 2, 3)
    layer.backward(top, [True], bottom)
    assert np.all(np.isfinite(bottom[0].diff))


@pytest.mark.parametrize("text, bottoms", [
    ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } }', [(2, 3, 4)]),
    ('type: "Scale" scale_param { bias_term: true }', [(2, 3, 4), (3,)]),
    ('type: "Bias"', [(2, 3, 4)]),
])
def test_param_gradients_accumulate(text, bottoms):
    layer, bottom, top = build(text, [randn(*s) for s in bottoms])
    layer.forward(bottom, top)
    top[0].diff[...] = randn(*top[0].shape)
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True] * len(bottom), bottom)
    once = [p.diff.copy() for p in layer.blobs]
    layer.backward(top, [True] * len(bottom), bottom)
    for p, g in zip(layer.blobs, once):
        assert np.any(g != 0) and np.allclose(p.diff, 2 * g)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_without_backward_gives_the_same_bytes_a_sample_at_a_time(region):
    x = np.random.default_rng(8).standard_normal((3, 7, 5, 4))
    text = f'type: "LRN" lrn_param {{ local_size: 5 alpha: 0.75 beta: 0.625 k: 2 norm_region: {region} }}'
    tops = []
    for runs_backward in (True, False):
        with precision(np.float32):
            layer, bottom, top = build(text, [x])
        layer.runs_backward = runs_backward
        layer.forward(bottom, top)
        tops.append(top[0].data.copy())
    np.testing.assert_array_equal(tops[0], tops[1])
    assert layer.scale is None


def _padded_window_sum(a, axis, size):
    # The window sum LRN used before (zero-padded cumulative sums, both ends taken by index).
    n, half = a.shape[axis], (size - 1) // 2
    csum = np.cumsum(a, axis=axis)
    zero = np.zeros(a.shape[:axis] + (1,) + a.shape[axis + 1:], a.dtype)
    csum = np.concatenate([zero, csum], axis=axis)
    pos = np.arange(n)
    hi, lo = np.minimum(pos + half + 1, n), np.maximum(pos - half, 0)
    return np.take(csum, hi, axis=axis) - np.take(csum, lo, axis=axis)


@pytest.mark.parametrize("shape", [(2, 7, 5, 6), (1, 1, 3, 3), (3, 2, 1, 9), (1, 12, 4, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_window_sum_gives_the_padded_cumsum_bytes(shape, dtype):
    # The slice form holds two arrays instead of four; it must not move a single bit.
    from netspec.layers.norm import _window_sum
    a = np.random.default_rng(0).standard_normal(shape).astype(dtype) ** 2
    for axis in (1, 2, 3):
        for size in (1, 3, 5, 9, 25, 31):          # windows wider than the axis too
            assert _window_sum(a, axis, size).tobytes() == _padded_window_sum(a, axis, size).tobytes()


# The compiled LRN (ACROSS_CHANNELS, _native_body.h lrn_across) on shapes that reach its edges:
# fewer channels than the window, one channel, plane sizes past and not a multiple of its
# 256-position blocks, and beta 0.75 (its square-root form) beside another beta (pow).
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 3, 3), (2, 9, 17, 19), (1, 12, 1, 600)])
@pytest.mark.parametrize("beta", [0.75, 0.625])
def test_compiled_lrn_across_channels_against_the_definition(kernels, shape, beta):
    if kernels != "native" or not native.has_lrn():
        pytest.skip("the compiled LRN")
    x = np.random.default_rng(5).standard_normal(shape)
    for size in (1, 3, 5, 7):
        y, scale = np.full_like(x, np.nan), np.full_like(x, np.nan)
        n, c, h, w = shape
        native.kernels.lrn_across(x, y, scale, n, c, h * w, 0, n, 0, h * w, size, 0.5 / size, 2.0, beta)
        want = lrn_reference(x, size, 0.5, beta, 2.0, False)
        assert np.allclose(y, want, rtol=1e-14, atol=0)
        assert np.allclose(scale, (x / want) ** (1 / beta), rtol=1e-12)


def test_compiled_lrn_runs_in_the_layer_and_any_cut_gives_the_same_bits(kernels):
    if kernels != "native" or not native.has_lrn():
        pytest.skip("the compiled LRN")
    x = np.random.default_rng(6).standard_normal((3, 10, 7, 40)).astype(np.float32)
    n, c, h, w = x.shape
    whole = np.empty_like(x)
    native.kernels.lrn_across(x, whole, None, n, c, h * w, 0, n, 0, h * w, 5, 0.1, 1.0, 0.75)
    pieces = np.full_like(x, np.nan)
    for n0, n1, p0, p1 in [(0, 1, 0, 280), (1, 3, 0, 13), (1, 3, 13, 271), (1, 3, 271, 280)]:
        native.kernels.lrn_across(x, pieces, None, n, c, h * w, n0, n1, p0, p1, 5, 0.1, 1.0, 0.75)
    np.testing.assert_array_equal(pieces, whole)
    layer, bottom, top = build('type: "LRN" lrn_param { local_size: 5 alpha: 0.5 }', [x])
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, whole)      # the layer runs the kernel
    assert np.allclose(whole, lrn_reference(x.astype(np.float64), 5, 0.5, 0.75, 1.0, False), rtol=1e-6)


def test_compiled_lrn_gives_the_same_bits_on_every_instruction_set(kernels):
    if kernels != "native" or not native.has_lrn():
        pytest.skip("the compiled LRN")
    from isa import on_every_isa
    x = np.random.default_rng(7).standard_normal((2, 8, 9, 31)).astype(np.float32)

    def run():
        y = np.empty_like(x)
        native.kernels.lrn_across(x, y, None, 2, 8, 9 * 31, 0, 2, 0, 9 * 31, 5, 0.2, 1.0, 0.75)
        return y.tobytes()

    results = on_every_isa(run)
    assert len(set(results)) == 1 and len(results) >= 1


def test_compiled_lrn_refuses_bad_ranges(kernels):
    if kernels != "native" or not native.has_lrn():
        pytest.skip("the compiled LRN")
    x = np.zeros((2, 3, 4, 4), np.float32)
    for args in [(0, 3, 0, 16, 5), (0, 2, 0, 17, 5), (1, 0, 0, 16, 5), (0, 2, 0, 16, 4)]:
        with pytest.raises(ValueError):
            native.kernels.lrn_across(x, np.empty_like(x), None, 2, 3, 16, *args, 0.1, 1.0, 0.75)
