"""Convolution, Deconvolution, Pooling, SPP: forward against naive loops and hand-worked numbers,
Caffe's shape rules, float64 gradient checks (both column layouts), errors."""
import itertools
import math

import numpy as np
import pytest

from gradcheck import build, check_layer, forward
from netspec.blob import Blob, precision
from netspec.errors import NetspecError
from netspec.layers import conv as conv_module
from netspec.layers import conv_columns, conv_depthwise, conv_engines, im2col, native
from netspec.proto import caffe_pb2

R = np.random.default_rng(5)
GAUSS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


NATIVE = pytest.mark.skipif(native.kernels is None, reason="compiled kernels (netspec._native) not built")


@pytest.fixture(params=["batch_inner", "stacked", "stacked_rebuilt"] + [
    pytest.param(p, marks=NATIVE) for p in ("native", "native_parts", "native_samples", "native_stacked",
                                         "native_stacked_rebuilt")])
def layout(request, monkeypatch):
    """Run the test with every convolution in one column layout, worked in many small parts;
    *rebuilt keeps no columns from forward (as for layers too big to keep them). native* are
    the compiled kernels: side-by-side columns (native_parts: one sample per part, rebuilt;
    native_samples: the threads' chunks of samples even for these few columns),
    or numpy's stacked layout filled and folded by them."""
    name = request.param
    monkeypatch.setattr(native, "ENABLED", name.startswith("native"))
    small_maps = name in ("batch_inner", "native", "native_parts", "native_samples")
    monkeypatch.setattr(im2col, "BATCH_INNER_MAX_WIDTH", 10 ** 9 if small_maps else 0)
    # 1x1 kernels: small maps take the columns of their layout, others run on the bottom itself.
    monkeypatch.setattr(conv_module, "POINTWISE_MIN_POSITIONS", 10 ** 9 if small_maps else 0)
    monkeypatch.setattr(im2col, "COL2IM_PART", 50)
    if name.endswith("stacked_rebuilt"):
        monkeypatch.setattr(im2col, "COLUMN_BUDGET", 0)
    if name == "native_parts":
        monkeypatch.setattr(conv_columns.ColumnConv, "part_budget", 0)
    if name == "native_samples":
        monkeypatch.setattr(conv_columns, "SAMPLE_CHUNK_COLUMNS", 1)
    return name


@pytest.fixture(params=["numpy", pytest.param("native", marks=NATIVE)])
def pool_path(request, monkeypatch):
    """Run the test with pooling's numpy passes, then with the compiled kernels."""
    monkeypatch.setattr(native, "ENABLED", request.param == "native")
    return request.param


def conv(params, kind="Convolution"):
    return f'name: "c" type: "{kind}" convolution_param {{ {params} {GAUSS} }}'


def pool(params):
    return f'name: "p" type: "Pooling" pooling_param {{ {params} }}'


def distinct(shape, scale=0.1):
    """Inputs with no ties (max pooling has a kink at ties)."""
    return R.permutation(math.prod(shape)).reshape(shape) * scale - 1.0


# ---------------------------------------------------------------- naive references (Caffe's loops)

def naive_conv(x, w, b, stride, pad, dilation, group):
    num, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    outputs, kernel = w.shape[0], w.shape[2:]
    out = [(s + 2 * p - (d * (k - 1) + 1)) // t + 1 for s, k, t, p, d in zip(spatial, kernel, stride, pad, dilation)]
    cg, mg = channels // group, outputs // group
    y = np.zeros((num, outputs) + tuple(out))
    for n, m in itertools.product(range(num), range(outputs)):
        g = m // mg
        for opos in itertools.product(*map(range, out)):
            acc = 0.0 if b is None else b[m]
            for c in range(cg):
                for kpos in itertools.product(*map(range, kernel)):
                    ipos = [o * t - p + k * d for o, t, p, k, d in zip(opos, stride, pad, kpos, dilation)]
                    if all(0 <= i < s for i, s in zip(ipos, spatial)):
                        acc += x[(n, g * cg + c) + tuple(ipos)] * w[(m, c) + kpos]
            y[(n, m) + opos] = acc
    return y


def naive_deconv(x, w, b, stride, pad, dilation, group):
    num, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    mg, kernel = w.shape[1], w.shape[2:]
    outputs, cg = mg * group, channels // group
    out = [t * (s - 1) + d * (k - 1) + 1 - 2 * p for s, k, t, p, d in zip(spatial, kernel, stride, pad, dilation)]
    y = np.zeros((num, outputs) + tuple(out))
    for n, c in itertools.product(range(num), range(channels)):
        g = c // cg
        for ipos in itertools.product(*map(range, spatial)):
            for mm in range(mg):
                for kpos in itertools.product(*map(range, kernel)):
                    opos = [i * t - p + k * d for i, t, p, k, d in zip(ipos, stride, pad, kpos, dilation)]
                    if all(0 <= o < s for o, s in zip(opos, out)):
                        y[(n, g * mg + mm) + tuple(opos)] += x[(n, c) + ipos] * w[(c, mm) + kpos]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(spatial))
    return y


def caffe_pooled(size, k, s, p, ceil=True):
    n = int(math.ceil((size + 2 * p - k) / s) if ceil else math.floor((size + 2 * p - k) / s)) + 1
    if p and (n - 1) * s >= size + p:
        n -= 1
    return n


def naive_pool(x, method, k, s, p, ceil=True):
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    num, channels, height, width = x.shape
    oh, ow = caffe_pooled(height, kh, sh, ph, ceil), caffe_pooled(width, kw, sw, pw, ceil)
    y = np.zeros((num, channels, oh, ow))
    mask = np.full(y.shape, -1.0)
    for n, c, i, j in itertools.product(range(num), range(channels), range(oh), range(ow)):
        hs, ws = i * sh - ph, j * sw - pw
        he, we = min(hs + kh, height + ph), min(ws + kw, width + pw)
        size = (he - hs) * (we - ws)
        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, height), min(we, width)
        if method == "MAX":
            best = -np.inf
            for h, w in itertools.product(range(hs, he), range(ws, we)):
                if x[n, c, h, w] > best:
                    best, mask[n, c, i, j] = x[n, c, h, w], h * width + w
            y[n, c, i, j] = best
        else:
            y[n, c, i, j] = x[n, c, hs:he, ws:we].sum() / size
    return y, mask


def params_of(layer):
    return [b.data.copy() for b in layer.blobs]


# ---------------------------------------------------------------- Convolution forward

def test_convolution_forward_by_hand():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    with precision(np.float64):
        layer, bottom, top = build(conv("num_output: 2 kernel_size: 2"), [x])
        layer.blobs[0].data[...] = [[[[1, 1], [1, 1]]], [[[1, 0], [0, -1]]]]
        layer.blobs[1].data[...] = [0.5, 10]
        layer.forward(bottom, top)
    # window sums 0+1+3+4=8 ...; second filter x[h,w] - x[h+1,w+1] = -4 everywhere.
    np.testing.assert_allclose(top[0].data[0, 0], [[8.5, 12.5], [20.5, 24.5]])
    np.testing.assert_allclose(top[0].data[0, 1], np.full((2, 2), 6.0))


CONV_CASES = [
    ("num_output: 4 kernel_size: 3", (2, 3, 6, 7), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2", (2, 3, 7, 6), (2, 2), (1, 1), (1, 1), 1),
    ("num_output: 4 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 0 stride_h: 1 stride_w: 3", (2, 2, 5, 8),
     (1, 3), (2, 0), (1, 1), 1),
    ("num_output: 6 kernel_size: 3 dilation: 2 pad: 1 group: 3", (2, 6, 7, 7), (1, 1), (1, 1), (2, 2), 3),
    ("num_output: 4 kernel_size: 2 kernel_size: 3 dilation: 1 dilation: 2 stride: 2 stride: 1 group: 2 "
     "bias_term: false", (3, 4, 6, 8), (2, 1), (0, 0), (1, 2), 2),
    ("num_output: 3 kernel_size: 3 group: 3 pad: 1", (2, 3, 5, 5), (1, 1), (1, 1), (1, 1), 3),   # depthwise
    ("num_output: 4 kernel_size: 3 group: 4 pad: 1 stride: 2", (2, 4, 7, 6), (2, 2), (1, 1), (1, 1), 4),
    ("num_output: 6 kernel_h: 3 kernel_w: 2 group: 3 pad_h: 2 pad_w: 1 stride_h: 1 stride_w: 3", (2, 3, 5, 8),
     (1, 3), (2, 1), (1, 1), 3),                                          # depthwise, 2 outputs per channel
    ("num_output: 2 kernel_size: 3 group: 2 dilation: 2 pad: 1 bias_term: false", (3, 2, 7, 7), (1, 1), (1, 1),
     (2, 2), 2),
    ("num_output: 4 kernel_size: 1", (2, 3, 5, 6), (1, 1), (0, 0), (1, 1), 1),                   # pointwise
    ("num_output: 4 kernel_size: 1 group: 2 bias_term: false", (2, 4, 3, 5), (1, 1), (0, 0), (1, 1), 2),
]


@pytest.mark.parametrize("params, shape, stride, pad, dilation, group", CONV_CASES)
def test_convolution_matches_naive_loops(layout, params, shape, stride, pad, dilation, group):
    x = R.standard_normal(shape)
    with precision(np.float64):
        layer, bottom, top = build(conv(params), [x])
        layer.forward(bottom, top)
        w = layer.blobs[0].data
        b = layer.blobs[1].data if len(layer.blobs) > 1 else None
    np.testing.assert_allclose(top[0].data, naive_conv(x, w, b, stride, pad, dilation, group), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("params, shape, stride, pad, dilation, group", CONV_CASES)
def test_convolution_gradients(layout, params, shape, stride, pad, dilation, group):
    layer, _, _ = check_layer(conv(params), [R.standard_normal(shape)], max_checks=120)
    pointwise = "kernel_size: 1 " in params + " "
    depthwise = group == shape[1] and group > 1
    assert isinstance(layer.engine, conv_depthwise.DepthwiseConv) == depthwise
    if depthwise:
        assert (layer.engine.window is not None) == layout.startswith("native")
        return
    small_maps = layout in ("batch_inner", "native", "native_parts", "native_samples")
    assert isinstance(layer.engine, conv_engines.PointwiseConv) == (pointwise and not small_maps)
    assert isinstance(layer.engine, conv_columns.ColumnConv) == (layout in ("native", "native_parts", "native_samples"))
    if layout == "native_samples":      # one group: by samples (row_blocks would give one block)
        assert (layer.engine.sample_chunks(0, shape[0]) is not None) == (group == 1)
    compiled_stacked = isinstance(layer.engine, conv_engines.StackedConv) and layer.engine.window is not None
    assert compiled_stacked == (layout.startswith("native_stacked") and not pointwise)


@pytest.mark.parametrize("params, shape, stride, pad, dilation", [
    ("num_output: 6 kernel_size: 3 group: 3 pad: 1 stride: 2", (2, 3, 9), (2,), (1,), (1,)),
    ("num_output: 2 kernel_size: 2 group: 2 pad: 1", (2, 2, 3, 4, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
])
def test_depthwise_convolution_in_1d_and_3d(params, shape, stride, pad, dilation):
    """Not 2-D: the depthwise engine's numpy sums over shifted views, against loops and differences."""
    x = R.standard_normal(shape)
    with precision(np.float64):
        layer, bottom, top = build(conv(params), [x])
        assert isinstance(layer.engine, conv_depthwise.DepthwiseConv) and layer.engine.window is None
        layer.forward(bottom, top)
        w, b = layer.blobs[0].data, layer.blobs[1].data
    np.testing.assert_allclose(top[0].data, naive_conv(x, w, b, stride, pad, dilation, shape[1]), rtol=1e-10,
                               atol=1e-10)
    check_layer(conv(params), [x], max_checks=80)


@NATIVE
def test_depthwise_kernel_ranges_split_the_work():
    """Forward, data and weight gradients over ranges of planes/channels add up to the whole call."""
    x = R.standard_normal((3, 4, 6, 5)).astype(np.float32)
    with precision(np.float32):
        layer, bottom, top = build(conv("num_output: 8 kernel_size: 3 group: 4 pad: 1 stride: 2"), [x])
    eng = layer.engine
    w = layer.blobs[0].data.reshape(8, 9)
    whole = np.empty(top[0].shape, np.float32)
    native.kernels.depthwise_forward(x, w, layer.blobs[1].data, whole, eng.window, 2, 3, 0, 24)
    split = np.empty_like(whole)
    for start, stop in ((0, 5), (5, 17), (17, 24)):
        native.kernels.depthwise_forward(x, w, layer.blobs[1].data, split, eng.window, 2, 3, start, stop)
    np.testing.assert_array_equal(split, whole)
    dy = R.standard_normal(whole.shape).astype(np.float32)
    dx_whole, dx_split = np.empty_like(x), np.empty_like(x)
    native.kernels.depthwise_backward_data(dy, w, None, dx_whole, eng.window, 2, 3, 0, 12)
    for start, stop in ((0, 7), (7, 12)):
        native.kernels.depthwise_backward_data(dy, w, None, dx_split, eng.window, 2, 3, start, stop)
    np.testing.assert_array_equal(dx_split, dx_whole)
    dw_whole, dw_split = np.zeros_like(w), np.zeros_like(w)
    native.kernels.depthwise_backward_weights(dy, x, None, dw_whole, eng.window, 2, 3, 0, 8)
    for start, stop in ((0, 3), (3, 8)):
        native.kernels.depthwise_backward_weights(dy, x, None, dw_split, eng.window, 2, 3, start, stop)
    np.testing.assert_array_equal(dw_split, dw_whole)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=NATIVE)])
def test_depthwise_convolution_gives_the_same_bytes_on_any_thread_count(compiled, monkeypatch):
    from netspec import threads
    monkeypatch.setattr(native, "ENABLED", compiled)
    monkeypatch.setattr(conv_depthwise.DepthwiseConv, "chunk_work", 1)     # many chunks
    x = R.standard_normal((3, 4, 9, 8))
    dy = R.standard_normal((3, 8, 5, 4))
    before = threads.get_threads()
    results = []
    try:
        for n in (1, 2, 3):
            threads.set_threads(n)
            layer, bottom, top = build(conv("num_output: 8 kernel_size: 3 group: 4 pad: 1 stride: 2"), [x])
            layer.forward(bottom, top)
            top[0].diff[...] = dy
            layer.backward(top, [True], bottom)
            results.append([top[0].data.copy(), bottom[0].diff.copy(), layer.blobs[0].diff.copy()])
    finally:
        threads.set_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@NATIVE
@pytest.mark.parametrize("params, shape", [
    ("num_output: 6 kernel_size: 3 group: 6 pad: 1", (2, 6, 9, 13)),               # MobileNet's stride 1
    ("num_output: 6 kernel_size: 3 group: 6", (2, 6, 7, 6)),                       # no padding
    ("num_output: 4 kernel_size: 5 group: 4 pad: 2", (1, 4, 11, 17)),              # wider kernel
    ("num_output: 4 kernel_h: 3 kernel_w: 1 group: 4 pad_h: 1", (2, 4, 6, 9)),     # one dimension
    ("num_output: 6 kernel_size: 3 group: 6 pad: 1 stride: 2", (2, 6, 12, 11)),    # stride 2
    ("num_output: 12 kernel_size: 3 group: 6 pad: 1", (2, 6, 8, 9)),               # two outputs per channel
])
def test_depthwise_compiled_gradients_match_the_numpy_sums(params, shape, monkeypatch):
    """The compiled backward (weights: eight lanes per tap; data at stride 1: the forward kernel
    on the top diff with the kernels turned) against the engine's numpy sums over shifted views,
    in float64; with a NaN weight, NaN where the numpy sums (and Caffe's col2im) put it, no more."""
    x = R.standard_normal(shape)
    grads = {}
    for compiled in (False, True):
        monkeypatch.setattr(native, "ENABLED", compiled)
        with precision(np.float64):
            layer, bottom, top = build(conv(params), [x])
            for nan in (False, True):
                if nan:
                    layer.blobs[0].data[1, 0, 0, 0] = np.nan
                layer.forward(bottom, top)
                top[0].diff[...] = np.random.default_rng(8).standard_normal(top[0].shape)
                layer.blobs[0].diff[...] = 0
                layer.backward(top, [True], bottom)
                assert (layer.engine.window is not None) == compiled
                grads[compiled, nan] = bottom[0].diff.copy(), layer.blobs[0].diff.copy()
    for nan in (False, True):
        for got, want in zip(grads[True, nan], grads[False, nan]):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12, atol=1e-12)
    assert np.isnan(grads[True, True][0]).any() and not np.isnan(grads[True, True][0]).all()


def test_convolution_output_shapes_and_weight_layout():
    cases = [  # (params, bottom shape, top shape, weight shape)
        ("num_output: 5 kernel_size: 3", (2, 3, 10, 9), (2, 5, 8, 7), (5, 3, 3, 3)),
        ("num_output: 5 kernel_size: 3 dilation: 2", (2, 3, 10, 9), (2, 5, 6, 5), (5, 3, 3, 3)),
        ("num_output: 4 kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 8), (1, 4, 4, 4), (4, 2, 3, 3)),
        ("num_output: 6 kernel_size: 1 group: 2", (1, 4, 3, 3), (1, 6, 3, 3), (6, 2, 1, 1)),
        ("num_output: 2 kernel_h: 1 kernel_w: 3", (1, 1, 4, 5), (1, 2, 4, 3), (2, 1, 1, 3)),
    ]
    for params, bshape, tshape, wshape in cases:
        layer, bottom, top = build(conv(params), [np.zeros(bshape)])
        assert top[0].shape == tshape, params
        assert layer.blobs[0].shape == wshape and layer.blobs[1].shape == (tshape[1],)


def test_convolution_1d_and_3d_and_channel_axis(layout):
    x1 = R.standard_normal((2, 3, 9))
    with precision(np.float64):
        layer, bottom, top = build(conv("num_output: 2 kernel_size: 3 stride: 2 pad: 1"), [x1])
        layer.forward(bottom, top)
        ref = naive_conv(x1, layer.blobs[0].data, layer.blobs[1].data, (2,), (1,), (1,), 1)
    np.testing.assert_allclose(top[0].data, ref, atol=1e-10)
    x3 = R.standard_normal((2, 2, 4, 5, 3))
    params3 = "num_output: 2 kernel_size: 2 kernel_size: 3 kernel_size: 2 pad: 1 stride: 2 stride: 1 stride: 1"
    with precision(np.float64):
        layer, bottom, top = build(conv(params3), [x3])
        layer.forward(bottom, top)
        ref = naive_conv(x3, layer.blobs[0].data, layer.blobs[1].data, (2, 1, 1), (1, 1, 1), (1, 1, 1), 1)
    np.testing.assert_allclose(top[0].data, ref, atol=1e-10)
    check_layer(conv(params3), [x3], max_checks=80)
    # axis 2: dims before it are all "num"; the top keeps them.
    x = R.standard_normal((2, 3, 2, 5, 5))
    with precision(np.float64):
        layer, bottom, top = build(conv("num_output: 4 kernel_size: 3 axis: 2"), [x])
        layer.forward(bottom, top)
        assert top[0].shape == (2, 3, 4, 3, 3)
        ref = naive_conv(x.reshape(6, 2, 5, 5), layer.blobs[0].data, layer.blobs[1].data, (1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(top[0].data.reshape(6, 4, 3, 3), ref, atol=1e-10)


def test_convolution_two_bottoms_share_weights_and_accumulate():
    xs = [R.standard_normal((2, 2, 5, 5)) for _ in range(2)]
    layer, bottom, top = check_layer(conv("num_output: 3 kernel_size: 3"), xs, num_tops=2, max_checks=60)
    layer.forward(bottom, top)        # the checker leaves the last perturbed forward in the tops
    w, b = params_of(layer)
    for x, t in zip(xs, top):
        np.testing.assert_allclose(t.data, naive_conv(x, w, b, (1, 1), (0, 0), (1, 1), 1), atol=1e-10)


def test_convolution_skips_bottom_gradient_and_adds_param_gradients():
    with precision(np.float64):
        layer, bottom, top = build(conv("num_output: 2 kernel_size: 3"), [R.standard_normal((2, 1, 6, 6))])
        layer.forward(bottom, top)
        top[0].diff[...] = R.standard_normal(top[0].shape)
        bottom[0].diff[...] = 7.0
        for p in layer.blobs:
            p.diff[...] = 0
        layer.backward(top, [False], bottom)
        once = [p.diff.copy() for p in layer.blobs]
        layer.backward(top, [False], bottom)
    assert np.all(bottom[0].diff == 7.0)
    assert np.abs(once[0]).sum() > 0
    for p, g in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * g)


@pytest.mark.parametrize("params", ["num_output: 3 kernel_size: 3 pad: 1", "num_output: 3 kernel_size: 1"])
def test_convolution_backward_without_forward(layout, params):
    text = conv(params)
    x, dy = R.standard_normal((2, 2, 5, 5)), R.standard_normal((2, 3, 5, 5))
    grads = []
    for run_forward in (True, False):
        with precision(np.float64):
            layer, bottom, top = build(text, [x])
            if run_forward:
                layer.forward(bottom, top)
            top[0].diff[...] = dy
            layer.backward(top, [True], bottom)
        grads.append([bottom[0].diff.copy()] + [p.diff.copy() for p in layer.blobs])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_convolution_reads_replaced_weight_blob():
    x = R.standard_normal((1, 1, 4, 4))
    with precision(np.float64):
        layer, bottom, top = build(conv("num_output: 1 kernel_size: 2 bias_term: false"), [x])
        shared = Blob((1, 1, 2, 2))
        shared.data[...] = 1.0
        layer.blobs[0] = shared
        layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data[0, 0], x[0, 0, :-1, :-1] + x[0, 0, 1:, :-1] + x[0, 0, :-1, 1:] + x[0, 0, 1:, 1:])


def test_convolution_runs_in_float32():
    layer, bottom, top = build(conv("num_output: 3 kernel_size: 3 pad: 1"), [R.standard_normal((4, 2, 6, 6))])
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert top[0].data.dtype == np.float32 and bottom[0].diff.dtype == np.float32
    ref = naive_conv(bottom[0].data.astype(np.float64), *[p.astype(np.float64) for p in params_of(layer)],
                     (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- Deconvolution

DECONV_CASES = [
    ("num_output: 3 kernel_size: 3", (2, 2, 4, 5), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 2 kernel_size: 3 stride: 2 pad: 1", (2, 3, 4, 3), (2, 2), (1, 1), (1, 1), 1),
    ("num_output: 4 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1 group: 2", (2, 4, 3, 4),
     (2, 1), (0, 1), (1, 1), 2),
    ("num_output: 2 kernel_size: 2 dilation: 2 bias_term: false", (1, 2, 3, 3), (1, 1), (0, 0), (2, 2), 1),
]


@pytest.mark.parametrize("params, shape, stride, pad, dilation, group", DECONV_CASES)
def test_deconvolution_matches_naive_loops_and_gradients(layout, params, shape, stride, pad, dilation, group):
    x = R.standard_normal(shape)
    text = conv(params, "Deconvolution")
    with precision(np.float64):
        layer, bottom, top = build(text, [x])
        layer.forward(bottom, top)
        w = layer.blobs[0].data
        b = layer.blobs[1].data if len(layer.blobs) > 1 else None
        assert w.shape[:2] == (shape[1], layer.num_output // group)
    np.testing.assert_allclose(top[0].data, naive_deconv(x, w, b, stride, pad, dilation, group), atol=1e-10)
    check_layer(text, [x], max_checks=120)


def test_deconvolution_output_size():
    # s(H-1) + d(k-1)+1 - 2p: 2*3 + 3 - 2 = 7 and 1*4 + 2*2+1 - 0 = 9
    _, _, top = build(conv("num_output: 5 kernel_size: 3 stride: 2 pad: 1", "Deconvolution"), [np.zeros((1, 2, 4, 4))])
    assert top[0].shape == (1, 5, 7, 7)
    _, _, top = build(conv("num_output: 1 kernel_size: 3 dilation: 2", "Deconvolution"), [np.zeros((1, 1, 5, 5))])
    assert top[0].shape == (1, 1, 9, 9)


def test_deconvolution_is_convolution_transposed():
    # <conv(x), y> == <x, deconv(y)> with the same weights (no bias).
    x, y = R.standard_normal((2, 3, 7, 7)), R.standard_normal((2, 4, 4, 4))
    params = "num_output: {} kernel_size: 3 stride: 2 pad: 1 bias_term: false"
    c = forward(conv(params.format(4)), [x])[0]
    # Both layers draw the same gaussian weights from the same seed: shapes (4,3,3,3) and (4,3,3,3).
    d = forward(conv(params.format(3), "Deconvolution"), [y])[0]
    assert d.shape == x.shape
    np.testing.assert_allclose(np.sum(c * y), np.sum(x * d), rtol=1e-10)


# ---------------------------------------------------------------- Pooling

def test_pooling_by_hand_with_pad_and_ceil(pool_path):
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    # ceil((3+2-2)/2)+1 = 3, but the last window would start at 4 >= 3+1: dropped -> 2x2.
    y, mask = forward(pool("pool: MAX kernel_size: 2 stride: 2 pad: 1"), [x], num_tops=2)
    np.testing.assert_array_equal(y[0, 0], [[1, 3], [7, 9]])
    np.testing.assert_array_equal(mask[0, 0], [[0, 2], [6, 8]])
    y = forward(pool("pool: AVE kernel_size: 2 stride: 2 pad: 1"), [x])[0]
    np.testing.assert_allclose(y[0, 0], [[1 / 4, 5 / 4], [11 / 4, 28 / 4]])   # padding counts in the divisor
    y = forward(pool("pool: MAX kernel_size: 2 stride: 1"), [x])[0]
    np.testing.assert_array_equal(y[0, 0], [[5, 6], [8, 9]])
    # Ceil mode without pad: the last window is cut to the input and divides by its clipped size.
    x5 = np.arange(5.0).reshape(1, 1, 1, 5)
    y = forward(pool("pool: AVE kernel_h: 1 kernel_w: 2 stride: 2"), [x5])[0]
    np.testing.assert_allclose(y[0, 0, 0], [0.5, 2.5, 4.0])


POOL_CASES = [  # (params, shape, kernel, stride, pad, ceil)
    ("kernel_size: 2 stride: 2", (2, 3, 8, 6), (2, 2), (2, 2), (0, 0), True),
    ("kernel_size: 3 stride: 2", (2, 2, 7, 8), (3, 3), (2, 2), (0, 0), True),
    ("kernel_size: 3 stride: 2 pad: 1", (2, 2, 6, 7), (3, 3), (2, 2), (1, 1), True),
    ("kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 4), (2, 2), (2, 2), (1, 1), True),
    ("kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 3 pad_h: 1 pad_w: 1", (2, 2, 5, 7), (3, 2), (1, 3), (1, 1), True),
    ("kernel_size: 2 stride: 3", (1, 2, 7, 8), (2, 2), (3, 3), (0, 0), True),
    ("kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 2, 8, 8), (3, 3), (2, 2), (0, 0), False),
    ("kernel_size: 1 stride: 2", (1, 1, 5, 5), (1, 1), (2, 2), (0, 0), True),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("params, shape, kernel, stride, pad, ceil", POOL_CASES)
def test_pooling_matches_naive_loops_and_gradients(pool_path, method, params, shape, kernel, stride, pad, ceil):
    x = distinct(shape)
    text = pool(f"pool: {method} {params}")
    tops = 2 if method == "MAX" else 1
    got = forward(text, [x], num_tops=tops)
    want, mask = naive_pool(x, method, kernel, stride, pad, ceil)
    np.testing.assert_allclose(got[0], want, rtol=1e-12)
    if method == "MAX":
        np.testing.assert_array_equal(got[1], mask)
    layer, _, _ = check_layer(text, [x], num_tops=1, max_checks=150)
    assert (layer.pool.window is not None) == (pool_path == "native")


@pytest.mark.parametrize("params, shape, kernel, pad", [("kernel_size: 2 stride: 2", (2, 2, 6, 4), 2, 0),
                                                       ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 6), 3, 1)])
def test_max_pooling_in_test_phase(pool_path, params, shape, kernel, pad):
    # The test-phase forward skips the argmax; a backward (or a mask top) still gets Caffe's.
    x = distinct(shape)
    text = pool(f"pool: MAX {params}")
    want, mask = naive_pool(x, "MAX", (kernel, kernel), (2, 2), (pad, pad))
    got = forward(text, [x], num_tops=2, phase=caffe_pb2.TEST)
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[1], mask)
    np.testing.assert_array_equal(forward(text, [x], phase=caffe_pb2.TEST)[0], want)
    check_layer(text, [x], phase=caffe_pb2.TEST)


def test_pooling_output_shapes():
    cases = [  # (params, bottom, top)
        ("kernel_size: 3 stride: 2", (1, 1, 7, 7), (1, 1, 3, 3)),
        ("kernel_size: 3 stride: 2", (1, 1, 8, 8), (1, 1, 4, 4)),          # ceil: partial last window
        ("kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 1, 8, 8), (1, 1, 3, 3)),
        ("kernel_size: 2 stride: 2 pad: 1", (1, 1, 4, 4), (1, 1, 3, 3)),
        ("kernel_size: 2 stride: 2 pad: 1", (1, 1, 3, 3), (1, 1, 2, 2)),  # last window dropped
        ("kernel_size: 3 stride: 3 pad: 2", (1, 1, 4, 4), (1, 1, 2, 2)),  # ceil gives 3, start 6 >= 4+2: dropped
        ("global_pooling: true", (2, 3, 5, 7), (2, 3, 1, 1)),
        ("kernel_size: 5 stride: 2", (1, 1, 4, 4), (1, 1, 1, 1)),         # Caffe: ceil(-1/2)+1 = 1
    ]
    for params, bshape, tshape in cases:
        _, _, top = build(pool(params), [np.zeros(bshape)])
        assert top[0].shape == tshape, params


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(pool_path, method):
    x = distinct((2, 3, 4, 5))
    got = forward(pool(f"pool: {method} global_pooling: true"), [x], num_tops=2 if method == "MAX" else 1)
    want, mask = naive_pool(x, method, (4, 5), (1, 1), (0, 0))
    np.testing.assert_allclose(got[0], want, rtol=1e-12)
    if method == "MAX":
        np.testing.assert_array_equal(got[1], mask)
    check_layer(pool(f"pool: {method} global_pooling: true"), [x])


def test_max_pooling_ties_go_to_the_first_maximum(pool_path):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 3, 3] = -1.0
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 2.0          # two equal maxima in the first window
    with precision(np.float64):
        layer, bottom, top = build(pool("pool: MAX kernel_size: 2 stride: 2"), [x], num_tops=2)
        layer.forward(bottom, top)
        np.testing.assert_array_equal(top[1].data[0, 0], [[1, 2], [8, 10]])
        top[0].diff[...] = [[[[1, 2], [3, 4]]]]
        layer.backward(top, [True], bottom)
    want = np.zeros((4, 4))
    want[0, 1], want[0, 2], want[2, 0], want[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(bottom[0].diff[0, 0], want)
    # Overlapping windows: each output still sends its gradient to one input; shared inputs sum.
    with precision(np.float64):
        layer, bottom, top = build(pool("pool: MAX kernel_size: 3 stride: 1"), [np.zeros((1, 1, 4, 4))])
        layer.forward(bottom, top)
        top[0].diff[...] = 1
        layer.backward(top, [True], bottom)
    want = np.zeros((4, 4))
    want[0, 0], want[0, 1], want[1, 0], want[1, 1] = 1, 1, 1, 1
    np.testing.assert_array_equal(bottom[0].diff[0, 0], want)


def test_stochastic_pooling():
    x = R.uniform(0.1, 1.0, (2, 2, 6, 5))
    text = pool("pool: STOCHASTIC kernel_size: 3 stride: 2")
    y = forward(text, [x], phase=caffe_pb2.TEST)[0]
    oh, ow = caffe_pooled(6, 3, 2, 0), caffe_pooled(5, 3, 2, 0)
    want = np.zeros((2, 2, oh, ow))
    for i, j in itertools.product(range(oh), range(ow)):
        win = x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
        want[:, :, i, j] = (win ** 2).sum(axis=(2, 3)) / win.sum(axis=(2, 3))
    np.testing.assert_allclose(y, want, rtol=1e-12)
    check_layer(text, [x], phase=caffe_pb2.TEST)
    # Train: every output is one of its window's inputs; the gradient goes back to that input only.
    y = forward(text, [x])[0]
    for i, j in itertools.product(range(oh), range(ow)):
        win = x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(2, 2, -1)
        assert np.all(np.any(win == y[:, :, i, j, None], axis=2))
    assert len(np.unique(y)) > oh * ow         # sampled, not always the same position
    check_layer(text, [x])
    # The draw follows the activations: a window with one nonzero input always picks it.
    z = np.zeros((1, 1, 2, 2))
    z[0, 0, 1, 0] = 3.0
    assert forward(pool("pool: STOCHASTIC kernel_size: 2"), [z])[0].item() == 3.0
    # Test phase on an all-zero window: Caffe's FLT_MIN in the denominator gives 0, not NaN.
    assert forward(pool("pool: STOCHASTIC kernel_size: 2"), [np.zeros((1, 1, 2, 2))], phase=caffe_pb2.TEST)[0].item() == 0


# ---------------------------------------------------------------- SPP

@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_spp_concatenates_pyramid_levels(pool_path, method):
    x = distinct((2, 3, 7, 6))
    text = f'name: "s" type: "SPP" spp_param {{ pyramid_height: 3 pool: {method} }}'
    y = forward(text, [x])[0]
    parts = []
    for level in range(3):
        bins = 2 ** level
        k = [-(-s // bins) for s in (7, 6)]
        p = [(kk * bins - s + 1) // 2 for kk, s in zip(k, (7, 6))]
        parts.append(naive_pool(x, method, k, k, p)[0].reshape(2, -1))
    want = np.concatenate(parts, axis=1)
    assert y.shape == (2, 3 * (1 + 4 + 16))
    np.testing.assert_allclose(y, want, rtol=1e-12)
    check_layer(text, [x], max_checks=150)


def test_spp_height_one_is_plain_pooling(pool_path):
    x = distinct((2, 3, 4, 4))
    y = forward('type: "SPP" spp_param { pyramid_height: 1 }', [x])[0]
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y[:, :, 0, 0], x.max(axis=(2, 3)))


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("text, shape, message", [
    (conv("num_output: 2 kernel_size: 5"), (1, 1, 4, 6), r"kernel extent 5 .* padded input 4 .*\(1, 1, 4, 6\)"),
    (conv("num_output: 2 kernel_size: 3 dilation: 3"), (1, 1, 6, 6), r"kernel extent 7 .*padded input 6"),
    (conv("num_output: 2 kernel_size: 3 stride: 0"), (1, 1, 5, 5), "stride must be nonzero"),
    (conv("num_output: 2 kernel_size: 0"), (1, 1, 5, 5), "kernel size must be nonzero"),
    (conv("num_output: 2"), (1, 1, 5, 5), "kernel_size is required"),
    (conv("num_output: 0 kernel_size: 3"), (1, 1, 5, 5), "num_output"),
    (conv("num_output: 4 kernel_size: 3 group: 2"), (1, 3, 5, 5), r"group 2 does not divide the 3 input channels"),
    (conv("num_output: 3 kernel_size: 3 group: 2"), (1, 4, 5, 5), "group 2 does not divide num_output 3"),
    (conv("num_output: 2 kernel_size: 3 pad: 1 pad_h: 1"), (1, 1, 5, 5), "either pad or pad_h/pad_w"),
    (conv("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3"), (1, 1, 5, 5), "either kernel_size or kernel_h"),
    (conv("num_output: 2 kernel_h: 3 kernel_w: 3"), (1, 1, 5, 5, 5), "only be used for 2-D"),
    (conv("num_output: 2 kernel_size: 3 kernel_size: 3"), (1, 1, 5, 5, 5), "once per spatial axis"),
    (conv("num_output: 2 kernel_size: 3"), (4, 3), "no spatial axes"),
    (conv("num_output: 2 kernel_size: 3 axis: 4"), (1, 1, 5, 5), "axis 4 is out of range"),
    (pool("kernel_size: 2"), (1, 4, 4), r"4 axes .*\(1, 4, 4\)"),
    (pool("kernel_size: 2 pad: 2"), (1, 1, 4, 4), "smaller than the kernel"),
    (pool("kernel_size: 2 kernel_h: 2 kernel_w: 2"), (1, 1, 4, 4), "not both"),
    (pool("kernel_h: 2"), (1, 1, 4, 4), "kernel_h and kernel_w"),
    (pool("stride: 2"), (1, 1, 4, 4), "kernel_size"),
    (pool("kernel_size: 2 stride: 0"), (1, 1, 4, 4), "stride must be nonzero"),
    (pool("kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1"), (1, 1, 4, 4), "either pad or both"),
    (pool("global_pooling: true kernel_size: 2"), (1, 1, 4, 4), "global_pooling"),
    (pool("global_pooling: true stride: 2"), (1, 1, 4, 4), "pad 0 and stride 1"),
    (pool("pool: STOCHASTIC kernel_size: 3 pad: 1"), (1, 1, 4, 4), "only for MAX and AVE"),
    (pool("kernel_size: 6 stride: 1"), (1, 1, 4, 4), r"output is empty: bottom shape \(1, 1, 4, 4\)"),
    ('type: "SPP" spp_param { pyramid_height: 3 }', (1, 1, 2, 2), r"pyramid level 2 .*smaller than the kernel"),
    ('type: "SPP" spp_param { }', (1, 1, 2, 2), "pyramid_height"),
])
def test_bad_settings_are_clear_errors(text, shape, message):
    with pytest.raises(NetspecError, match=message) as err:
        build(text, [np.zeros(shape)])
    assert "\n" not in str(err.value) and "layer '" in str(err.value)


def test_mask_top_only_for_max_and_bottom_changes_checked(pool_path):
    with pytest.raises(NetspecError, match="only produced by MAX"):
        build(pool("pool: AVE kernel_size: 2"), [np.zeros((1, 1, 4, 4))], num_tops=2)
    layer, bottom, top = build(conv("num_output: 2 kernel_size: 3"), [np.zeros((1, 2, 5, 5))])
    bottom[0].reshape(1, 3, 5, 5)
    with pytest.raises(NetspecError, match=r"3 channels .* expect 2"):
        layer.reshape(bottom, top)
    bottom[0].reshape(1, 2, 5, 5, 1)
    with pytest.raises(NetspecError, match="5 axes"):
        layer.reshape(bottom, top)
    layer, bottom, top = build(conv("num_output: 2 kernel_size: 3"), [np.zeros((1, 2, 5, 5))] * 2, num_tops=2)
    bottom[1].reshape(1, 2, 6, 5)
    with pytest.raises(NetspecError, match=r"bottom\[0\] \(1, 2, 5, 5\) vs bottom\[1\] \(1, 2, 6, 5\)"):
        layer.reshape(bottom, top)


def test_max_pooling_without_backward_keeps_no_winners_and_backward_still_works(pool_path):
    """A TEST layer (runs_backward False) keeps no argmax of its own; a backward that comes anyway
    routes the gradient as the layer that kept them does."""
    x = distinct((2, 3, 7, 6))
    dy = R.standard_normal((2, 3, 3, 3))
    results = []
    for runs_backward in (True, False):
        with precision(np.float64):
            layer, bottom, top = build(pool("pool: MAX kernel_size: 3 stride: 2"), [x])
        layer.runs_backward = runs_backward
        layer.forward(bottom, top)
        kept = "argmax" in layer.pool.__dict__.get("_scratch", {})
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), bottom[0].diff.copy(), kept))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    if pool_path == "native":
        assert results[0][2] and not results[1][2]


def _pool(text, x, compiled, monkeypatch, backward_dtop=None):
    from netspec.net import Net
    from google.protobuf import text_format as tf
    with monkeypatch.context() as m:
        if not compiled:
            m.setattr(native, "usable", lambda dtype: False)
        net = Net(tf.Parse(f'''force_backward: true
            layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 dim: {x.shape[0]} dim: {x.shape[1]} }} }} }}
            layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" top: "mask" pooling_param {{ {text} }} }}''',
            caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
        net.blobs["data"].data[0, 0] = x
        net.forward()
        net.blobs["p"].diff[...] = 1
        net.backward()
        return net.blobs["p"].data[0, 0].copy(), net.blobs["mask"].data[0, 0].copy(), net.blobs["data"].diff[0, 0].copy()


@pytest.mark.parametrize("compiled", [True, False] if native.kernels is not None else [False])
def test_max_pool_window_past_the_image_is_caffes_empty_window(compiled, monkeypatch):
    # kernel 1, stride 3 on 5 x 5, ceil mode, no pad: the third window starts at 6, past the image.
    x = np.arange(25, dtype=np.float32).reshape(5, 5)
    top, mask, dx = _pool("pool: MAX kernel_size: 1 stride: 3", x, compiled, monkeypatch)
    low = np.float32(-np.finfo(np.float32).max)
    np.testing.assert_array_equal(top, [[0, 3, low], [15, 18, low], [low, low, low]])
    np.testing.assert_array_equal(mask, [[0, 3, -1], [15, 18, -1], [-1, -1, -1]])
    expected = np.zeros((5, 5), np.float32)
    expected[[0, 0, 3, 3], [0, 3, 0, 3]] = 1
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("compiled", [True, False] if native.kernels is not None else [False])
def test_pooled_size_drops_the_overhang_in_both_dimensions_when_either_is_padded(compiled, monkeypatch):
    # Caffe: `if (pad_h_ || pad_w_)` drops a last window starting past the image + pad, in both
    # dimensions: here width 5, kernel_w 1, stride 3, pad_w 0 gives 2 columns, not 3.
    x = np.arange(25, dtype=np.float32).reshape(5, 5)
    top, mask, _ = _pool("pool: MAX kernel_h: 2 kernel_w: 1 stride: 3 pad_h: 1 pad_w: 0", x, compiled, monkeypatch)
    assert top.shape == (2, 2)
    # rows: windows [-1, 1) and [2, 4); columns 0 and 3
    np.testing.assert_array_equal(top, [[0, 3], [15, 18]])
    np.testing.assert_array_equal(mask, [[0, 3], [15, 18]])
