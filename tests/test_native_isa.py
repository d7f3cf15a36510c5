"""The compiled kernels' two copies (netspec/_native.c: SSE2 baseline and AVX2, chosen by the
CPU at import) give the same bits on every kernel, on sizes that leave vector tails: widths not
a multiple of 8, odd channel counts, strides 2, padding, dilation, ceil-mode overhangs.

And the depthwise forward kernel equals, to the bit, the numpy sum over taps it replaces
(tests/test_vision_layers.py compares it with naive loops only to a tolerance).
"""
import numpy as np
import pytest

from isa import isas, on_every_isa
from netspec.layers import native

kernels = native.kernels
pytestmark = pytest.mark.skipif(kernels is None or not hasattr(kernels, "set_isa"),
                                reason="compiled kernels not built, or built without ISA dispatch")


ISAS = isas()


def test_the_widest_copy_the_cpu_runs_is_the_default():
    import os
    if os.environ.get("NETSPEC_NATIVE_ISA"):
        pytest.skip("NETSPEC_NATIVE_ISA chose the copy")
    assert kernels.isa() == ISAS[-1]
    with pytest.raises(ValueError):
        kernels.set_isa("avx512")


def _data(rng, shape, dtype):
    """Values with ties (multiples of 1/4), zeros of both signs and ordinary noise."""
    x = rng.integers(-8, 9, shape) / 4 + (rng.random(shape) < 0.5) * rng.standard_normal(shape)
    x[rng.random(shape) < 0.05] = -0.0
    return x.astype(dtype)


def _same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def _on_every_isa(run):
    """run() (fresh outputs each call) under each instruction set; each result's arrays the same bytes."""
    if len(ISAS) < 2:
        pytest.skip("this CPU runs only the baseline copy")
    results = on_every_isa(run)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            _same_bits(a, b)


def _out(size, kernel, stride, pad, dilation=1, ceil=False):
    span = dilation * (kernel - 1) + 1
    return -(-(size + 2 * pad - span) // stride) + 1 if ceil else (size + 2 * pad - span) // stride + 1


def _geom(channels, h, w, kernel, stride, pad, dilation=(1, 1), ceil=False):
    out = [_out(s, k, st, p, d, ceil) for s, k, st, p, d in zip((h, w), kernel, stride, pad, dilation)]
    return native.window_geometry(channels, (h, w), kernel, stride, pad, dilation, out)


DTYPES = [np.float32, np.float64]

# (channels, h, w), kernel, stride, pad, dilation
CONV_CASES = [
    ((3, 7, 13), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((5, 11, 17), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 9, 31), (3, 3), (1, 1), (0, 0), (1, 1)),
    ((3, 6, 9), (5, 5), (1, 1), (2, 2), (1, 1)),
    ((2, 10, 19), (1, 3), (1, 2), (0, 1), (1, 2)),
    ((3, 14, 14), (3, 3), (2, 2), (0, 1), (2, 1)),
    ((7, 4, 3), (3, 3), (1, 1), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, stride, pad, dilation", CONV_CASES)
def test_columns_are_the_same_bits_on_every_isa(dtype, shape, kernel, stride, pad, dilation):
    rng = np.random.default_rng(1)
    num = 2
    g = _geom(*shape, kernel, stride, pad, dilation)
    x = _data(rng, (num,) + shape, dtype)
    rows, P = shape[0] * kernel[0] * kernel[1], g[11] * g[12]
    c = _data(rng, (rows, num * P), dtype)

    def run():
        cols, image = np.empty((rows, num * P), dtype), np.empty_like(x)
        kernels.im2col(x, cols, g, 0, num, num * P, P)
        kernels.col2im(c, image, g, 0, num, num * P, P)
        return cols, image

    _on_every_isa(run)


# (planes, h, w), kernel, stride, pad, ceil
POOL_CASES = [
    ((3, 13, 13), (3, 3), (2, 2), (0, 0), True),
    ((5, 14, 14), (3, 3), (1, 1), (1, 1), False),
    ((3, 7, 7), (2, 2), (2, 2), (0, 0), True),
    ((2, 15, 9), (3, 3), (2, 2), (1, 1), True),
    ((3, 17, 11), (5, 5), (3, 3), (1, 2), False),
    ((1, 6, 6), (4, 3), (3, 2), (0, 0), True),
    ((2, 12, 12), (7, 7), (1, 1), (0, 0), False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, stride, pad, ceil", POOL_CASES)
def test_pooling_is_the_same_bits_on_every_isa(dtype, shape, kernel, stride, pad, ceil):
    rng = np.random.default_rng(2)
    planes = shape[0]
    g = _geom(1, *shape[1:], kernel, stride, pad, ceil=ceil)
    x = _data(rng, shape, dtype)
    pooled = (planes, g[11], g[12])
    dy = _data(rng, pooled, dtype)

    def run():
        y, arg, y_only, ave = np.empty(pooled, dtype), np.empty(pooled, np.int32), np.empty(pooled, dtype), \
            np.empty(pooled, dtype)
        kernels.max_pool(x, y, arg, g, planes)
        kernels.max_pool(x, y_only, None, g, planes)
        kernels.ave_pool(x, ave, g, planes)
        dx_max, dx_ave = np.empty_like(x), np.empty_like(x)
        kernels.max_unpool(dy, arg, dx_max, g, planes)
        kernels.ave_unpool(dy, dx_ave, g, planes)
        return y, arg, y_only, ave, dx_max, dx_ave

    _on_every_isa(run)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer, channels, inner", [(2, 3, 13), (1, 5, 1031), (3, 1, 7)])
def test_per_channel_kernels_are_the_same_bits_on_every_isa(dtype, outer, channels, inner):
    rng = np.random.default_rng(3)
    shape = (outer, channels, inner)
    x, dy = _data(rng, shape, dtype), _data(rng, shape, dtype)
    m, a, b = (_data(rng, channels, dtype) for _ in range(3))
    s = (rng.random(channels) + 0.5).astype(dtype)

    def run():
        out = []
        for standardise in (True, False):
            y = np.empty_like(x)
            kernels.channel_affine(x, y, m, s, outer, channels, inner, standardise)
            out.append(y)
        for flags in [(1, 1, 1), (1, 0, 1), (0, 1, 1), (1, 1, 0), (0, 0, 1)]:
            for keep in (None, np.empty_like(x)):
                y = np.empty_like(x)
                kernels.channel_chain(x, y, m, s, a, b, keep, outer, channels, inner, *map(bool, flags),
                                      (0, outer * channels))
                out += [y] if keep is None else [y, keep]
        sums, sums_x = np.empty(channels), np.empty(channels)
        kernels.channel_sums(dy, x, sums, sums_x, outer, channels, inner)
        dx = np.empty_like(x)
        kernels.batch_norm_grad(dy, x, m, a, s, dx, outer, channels, inner)
        out += [sums, sums_x, dx]
        if hasattr(kernels, "chain_backward"):
            for relu, standardise, batch in ((1, 1, 0), (0, 1, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)):
                dx, g, gx, ga, gax = np.empty_like(x), *(np.empty(channels) for _ in range(4))
                kernels.chain_backward(dy, x - a.mean(), dy * 0.5, a, s, dx, g, gx, *((ga, gax) if batch else
                                       (None, None)), outer, channels, inner, relu, standardise)
                out += [dx, g, gx] + ([ga, gax] if batch else [])
        return out

    _on_every_isa(run)


def _depthwise_cases():
    for shape, kernel, stride, pad, dilation in CONV_CASES:
        for multiplier in (1, 2):
            yield shape, kernel, stride, pad, dilation, multiplier
    yield (4, 56, 56), (3, 3), (1, 1), (1, 1), (1, 1), 1      # MobileNet's shapes, whole vectors wide
    yield (2, 28, 28), (3, 3), (2, 2), (1, 1), (1, 1), 1


def _depthwise_arrays(dtype, shape, kernel, stride, pad, dilation, multiplier, num=2):
    rng = np.random.default_rng(4)
    g = _geom(*shape, kernel, stride, pad, dilation)
    outputs = shape[0] * multiplier
    x = _data(rng, (num,) + shape, dtype)
    w = _data(rng, (outputs, kernel[0] * kernel[1]), dtype)
    bias = _data(rng, outputs, dtype)
    dy = _data(rng, (num, outputs, g[11], g[12]), dtype)
    return g, x, w, bias, dy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, stride, pad, dilation, multiplier", list(_depthwise_cases()))
def test_depthwise_kernels_are_the_same_bits_on_every_isa(dtype, shape, kernel, stride, pad, dilation, multiplier):
    num = 2
    g, x, w, bias, dy = _depthwise_arrays(dtype, shape, kernel, stride, pad, dilation, multiplier, num)
    outputs = shape[0] * multiplier

    def run():
        y, y_bias = np.empty_like(dy), np.empty_like(dy)
        kernels.depthwise_forward(x, w, None, y, g, multiplier, num, 0, num * outputs)
        kernels.depthwise_forward(x, w, bias, y_bias, g, multiplier, num, 0, num * outputs)
        dx, dw = np.empty_like(x), np.zeros_like(w)
        kernels.depthwise_backward_data(dy, w, None, dx, g, multiplier, num, 0, num * shape[0])
        kernels.depthwise_backward_weights(dy, x, None, dw, g, multiplier, num, 0, outputs)
        return y, y_bias, dx, dw

    _on_every_isa(run)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, stride, pad, dilation, multiplier", list(_depthwise_cases()))
def test_depthwise_forward_is_the_bits_of_the_numpy_sum_over_taps(dtype, shape, kernel, stride, pad, dilation,
                                                                  multiplier):
    num = 2
    g, x, w, bias, dy = _depthwise_arrays(dtype, shape, kernel, stride, pad, dilation, multiplier, num)
    oh, ow = g[11], g[12]
    # As DepthwiseConv's numpy path: from zero, each tap's product added in row-major order, then the bias.
    padded = np.zeros((num, shape[0], shape[1] + 2 * pad[0], shape[2] + 2 * pad[1]), dtype)
    padded[:, :, pad[0]:pad[0] + shape[1], pad[1]:pad[1] + shape[2]] = x
    padded = np.repeat(padded, multiplier, axis=1)
    want = np.zeros_like(dy)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, c = i * dilation[0], j * dilation[1]
            window = padded[:, :, r:r + stride[0] * (oh - 1) + 1:stride[0], c:c + stride[1] * (ow - 1) + 1:stride[1]]
            want += w[:, i * kernel[1] + j][:, None, None] * window
    want_bias = want + bias[:, None, None]
    default = kernels.isa()
    for isa in ISAS:
        kernels.set_isa(isa)
        try:
            y, y_bias = np.empty_like(dy), np.empty_like(dy)
            kernels.depthwise_forward(x, w, None, y, g, multiplier, num, 0, num * shape[0] * multiplier)
            kernels.depthwise_forward(x, w, bias, y_bias, g, multiplier, num, 0, num * shape[0] * multiplier)
        finally:
            kernels.set_isa(default)
        _same_bits(y, want)
        _same_bits(y_bias, want_bias)


# Depthwise backward cases: (channels, h, w), kernel, stride, pad, dilation, multiplier. Widths off
# and on whole vectors of 8 (1, 7, 14, 16, 23, 40), 1xN and Nx1 maps, pad 0-2, strides 1-3, dilation.
BACKWARD_CASES = [
    ((3, 7, 9), (3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((2, 14, 14), (3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((2, 9, 32), (3, 3), (2, 2), (1, 1), (1, 1), 1),      # rows of whole vectors, written in place
    ((2, 15, 23), (3, 3), (2, 2), (0, 0), (1, 1), 1),
    ((1, 16, 16), (3, 3), (2, 2), (2, 2), (1, 1), 2),
    ((2, 11, 40), (3, 3), (2, 2), (1, 1), (2, 2), 1),
    ((3, 9, 13), (3, 3), (3, 3), (1, 1), (1, 1), 1),
    ((2, 1, 17), (1, 3), (1, 2), (0, 1), (1, 1), 1),
    ((2, 13, 1), (3, 1), (2, 1), (1, 0), (1, 1), 2),
    ((1, 1, 1), (1, 1), (1, 1), (0, 0), (1, 1), 3),
    ((2, 12, 19), (5, 5), (2, 2), (2, 2), (1, 1), 1),
    ((2, 10, 21), (2, 4), (1, 2), (1, 2), (1, 3), 1),
    ((3, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1),       # data as a forward correlation
    ((2, 14, 14), (3, 3), (1, 1), (2, 2), (1, 1), 1),     # stride 1, pad not below the kernel
    ((2, 9, 23), (3, 3), (1, 1), (1, 1), (2, 2), 2),      # stride 1, dilation, multiplier
    ((1, 9, 31), (4, 4), (1, 3), (1, 2), (1, 1), 1),      # 16 taps: the weight gradient by nines
]


def _windows(a, kernel, stride, dilation, out):
    """{(i, j): the view of the padded planes `a` that tap (i, j) reads for each output}."""
    (oh, ow), views = out, {}
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, c = i * dilation[0], j * dilation[1]
            views[i, j] = a[:, :, r:r + stride[0] * (oh - 1) + 1:stride[0], c:c + stride[1] * (ow - 1) + 1:stride[1]]
    return views


def _padded(shape, pad, dtype, num):
    return np.zeros((num, shape[0], shape[1] + 2 * pad[0], shape[2] + 2 * pad[1]), dtype)


def _weights_in_kernel_order(x, dy, dw, kernel, stride, pad, dilation, multiplier):
    """dw + the weight gradient summed as depthwise_backward_weights documents: per tap and plane,
    eight lanes (k mod 8 along each row, rows in turn, from +0), the lanes added pairwise, and
    the planes' sums added in double."""
    num, outputs = dy.shape[:2]
    padded = _padded(x.shape[1:], pad, x.dtype, num)
    padded[:, :, pad[0]:pad[0] + x.shape[2], pad[1]:pad[1] + x.shape[3]] = x
    views = _windows(np.repeat(padded, multiplier, axis=1), kernel, stride, dilation, dy.shape[2:])
    out = dw.copy()
    for t, view in enumerate(views.values()):
        terms = dy * view
        lane = [np.add.accumulate(np.concatenate([np.zeros((num, outputs, 1), x.dtype),
                                                  terms[..., l::8].reshape(num, outputs, -1)], axis=2), axis=2)[..., -1]
                for l in range(8)]
        planes = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]))
        acc = np.zeros(outputs)
        for n in range(num):
            acc = acc + planes[n].astype(np.float64)
        out[:, t] += acc.astype(x.dtype)
    return out


def _data_in_kernel_order(dy, w, shape, kernel, stride, pad, dilation, multiplier, columns_descending):
    """The data gradient summed as depthwise_backward_data documents: each input element from +0
    over its outputs in order of channel, then output row; within a row, kernel columns ascending
    (the direct kernel) or descending (as a forward correlation of the flipped kernels)."""
    num = dy.shape[0]
    padded = _padded(shape, pad, dy.dtype, num)
    views = _windows(padded, kernel, stride, dilation, dy.shape[2:])
    grads = dy.reshape((num, shape[0], multiplier) + dy.shape[2:])
    taps = w.reshape(shape[0], multiplier, kernel[0], kernel[1])
    columns = range(kernel[1])[::-1] if columns_descending else range(kernel[1])
    for q in range(multiplier):
        for i in reversed(range(kernel[0])):            # output rows ascending
            for j in columns:
                views[i, j][...] += taps[:, q, i, j][:, None, None] * grads[:, :, q]
    return padded[:, :, pad[0]:pad[0] + shape[1], pad[1]:pad[1] + shape[2]]


def _as_forward(kernel, stride, pad, dilation, multiplier, w):
    """Whether the data gradient runs as a forward correlation (transposed_geom in _native.c)."""
    return (stride == (1, 1) and dilation == (1, 1) and multiplier == 1 and pad[0] < kernel[0]
            and pad[1] < kernel[1] and np.isfinite(w).all())


def _canonical(a):
    """a with every NaN the same NaN: the sign and payload a NaN keeps depend on operand order."""
    a = a.copy()
    a[np.isnan(a)] = np.nan
    return a


@pytest.mark.parametrize("special", [False, True], ids=["finite", "inf-nan"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, stride, pad, dilation, multiplier", BACKWARD_CASES)
def test_depthwise_backward_is_the_bits_of_its_documented_order(dtype, shape, kernel, stride, pad, dilation,
                                                                multiplier, special):
    num = 2
    g, x, w, _, dy = _depthwise_arrays(dtype, shape, kernel, stride, pad, dilation, multiplier, num)
    if special:     # infinities and NaNs in the bottom, the top diff and one kernel
        rng = np.random.default_rng(7)
        for a in (x, dy):
            a[rng.random(a.shape) < 0.02] = np.inf
            a[rng.random(a.shape) < 0.02] = -np.inf
            a[rng.random(a.shape) < 0.01] = np.nan
        w[0, -1] = np.inf
    dw0 = _data(np.random.default_rng(5), w.shape, dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        want_dw = _weights_in_kernel_order(x, dy, dw0, kernel, stride, pad, dilation, multiplier)
        want_dx = _data_in_kernel_order(dy, w, shape, kernel, stride, pad, dilation, multiplier,
                                        _as_forward(kernel, stride, pad, dilation, multiplier, w))

    def run():
        dx, dw = np.full_like(x, 7.0), dw0.copy()
        kernels.depthwise_backward_data(dy, w, None, dx, g, multiplier, num, 0, num * shape[0])
        kernels.depthwise_backward_weights(dy, x, None, dw, g, multiplier, num, 0, shape[0] * multiplier)
        return dx, dw

    for dx, dw in on_every_isa(run):
        _same_bits(_canonical(dx), _canonical(want_dx))
        _same_bits(_canonical(dw), _canonical(want_dw))


@pytest.mark.skipif(not hasattr(kernels, "sgd_step"), reason="build without the SGD step")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale, decay, momentum", [(1.0, 5e-4, 0.9), (0.5, 0.0, 0.9), (1 / 3, 1e-3, 0.0)])
def test_sgd_step_rounds_as_numpy_steps(dtype, scale, decay, momentum):
    # 1003 elements: vector tails on both copies. The expected values are the solver's numpy
    # steps, each operation rounded to `dtype` (scalars cast to it first, as numpy 2 does).
    rng = np.random.default_rng(7)
    data, diff, history = (rng.standard_normal(1003).astype(dtype) for _ in range(3))
    rate = 0.01 * 1.7
    t = dtype
    g = diff * t(scale) if scale != 1 else diff.copy()
    if decay:
        g = g + data * t(decay)
    h = history * t(momentum) + g * t(rate)
    expected = (data - h, h)

    def run():
        d, g_, hist = data.copy(), diff.copy(), history.copy()
        kernels.sgd_step(d, g_, hist, scale, decay, rate, momentum)
        np.testing.assert_array_equal(g_, hist)      # the step left in diff is the new history
        return d, hist

    for got in on_every_isa(run):
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.skipif(not hasattr(kernels, "sgd_step"), reason="build without the SGD step")
def test_sgd_step_refuses_mismatched_arrays():
    a, b = np.zeros(8, np.float32), np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="need 8"):
        kernels.sgd_step(a, a.copy(), b, 1.0, 0.0, 0.1, 0.9)
    with pytest.raises(TypeError, match="element type"):
        kernels.sgd_step(a, a.copy(), np.zeros(8), 1.0, 0.0, 0.1, 0.9)
