"""The compiled max and average pooling (netspec/_native_body.h) against numpy references.

Max, with and without the argmax: the maxima-alone loop that test-phase layers take must give
the same top, and both must keep Caffe's clipping and tie rule (the first maximum in row-major
order) on every window shape the kernel has a special case for (3x3 and 2x2, stride 1 and 2,
rows cut by the padding or the ceil-mode overhang) and on the general loop. Average: the same
bytes as adding each window's image elements in row-major order, over Caffe's divisor."""
import itertools

import numpy as np
import pytest

from netspec.layers import native
from netspec.layers.pooling import pooled_size
from netspec.layers.window_pool import WindowPool

pytestmark = pytest.mark.skipif(native.kernels is None, reason="compiled kernels not built")
R = np.random.default_rng(17)


def reference_max_pool(x, kernel, stride, pad, out):
    """(maxima, argmax as h * W + w) of x (planes, H, W) by window offset, in row-major order:
    each window starts from its first element inside the image, and an offset wins only where
    it is strictly larger, so ties stay with the first maximum (and a NaN first element stays,
    a later NaN never wins)."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, pad, out
    planes, height, width = x.shape
    rows, cols = np.arange(oh) * sh - ph, np.arange(ow) * sw - pw
    first = np.maximum(rows, 0)[:, None] * width + np.maximum(cols, 0)[None, :]
    best = x.reshape(planes, -1)[:, first]
    argmax = np.broadcast_to(first, best.shape).astype(np.int32)
    for i, j in itertools.product(range(kh), range(kw)):
        r, c = rows + i, cols + j
        inside = ((r >= 0) & (r < height))[:, None] & ((c >= 0) & (c < width))[None, :]
        v = x[:, np.clip(r, 0, height - 1)][:, :, np.clip(c, 0, width - 1)]
        wins = inside & (v > best)
        best = np.where(wins, v, best)
        argmax = np.where(wins, (r[:, None] * width + c[None, :]).astype(np.int32), argmax)
    return best, argmax


CASES = [  # (H, W, kernel, stride, pad, ceil)
    (14, 14, 3, 1, 1, True),     # GoogLeNet's inception pools
    (7, 7, 3, 1, 1, True),
    (28, 27, 3, 2, 0, True),     # GoogLeNet and SqueezeNet: 3x3 stride 2, the last window cut
    (11, 12, 3, 2, 1, True),
    (10, 9, 3, 2, 0, False),
    (12, 12, 2, 2, 0, True),
    (9, 11, 2, 2, 1, True),      # 2x2 with rows cut to one by the padding
    (8, 7, 2, 1, 0, True),       # the general loop from here on
    (15, 16, 7, 1, 3, True),
    (13, 13, 7, 2, 2, False),
    (9, 8, 3, 3, 1, True),
    (5, 6, 4, 2, 1, True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("height, width, k, s, p, ceil", CASES)
def test_max_pool_with_and_without_argmax_matches_the_reference(dtype, height, width, k, s, p, ceil):
    planes = 5
    # Few distinct values: windows full of ties; -inf and NaN entries too.
    x = R.integers(0, 4, (planes, height, width)).astype(dtype)
    x[R.random(x.shape) < 0.05] = -np.inf
    x[R.random(x.shape) < 0.05] = np.nan
    x[0] = -np.inf                                  # every window of a plane -inf: its first element
    out = (pooled_size(height, k, s, p, ceil), pooled_size(width, k, s, p, ceil))
    geom = native.window_geometry(planes, (height, width), (k, k), (s, s), (p, p), (1, 1), out)
    want, want_argmax = reference_max_pool(x, (k, k), (s, s), (p, p), out)

    y = np.empty((planes,) + out, dtype)
    argmax = np.empty((planes,) + out, np.int32)
    native.kernels.max_pool(x, y, argmax, geom, planes)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(argmax, want_argmax)

    alone = np.full((planes,) + out, np.nan, dtype)
    native.kernels.max_pool(x, alone, None, geom, planes)
    np.testing.assert_array_equal(alone, want)


@pytest.mark.parametrize("k, s, p", [(3, 1, 1), (3, 2, 0), (2, 2, 1), (7, 1, 3)])
def test_window_pool_without_backward_gives_the_same_top_and_gradient(k, s, p):
    """WindowPool.forward(backward=False) takes the maxima-alone kernel; its top is the argmax
    path's, and a backward that comes anyway still routes the gradient to the first maxima."""
    shape = (2, 3, 12, 11)
    x = R.integers(0, 3, shape).astype(np.float32)
    out = (pooled_size(12, k, s, p, True), pooled_size(11, k, s, p, True))
    tops, grads = [], []
    dy = R.standard_normal(shape[:2] + out).astype(np.float32)
    for backward in (True, False):
        pool = WindowPool("max", shape, (k, k), (s, s), (p, p), out, np.float32)
        assert pool.window is not None
        top = np.empty(shape[:2] + out, np.float32)
        pool.forward(x, top, backward=backward)
        assert (pool.state.argmax is None) == (not backward)
        dx = np.empty(shape, np.float32)
        pool.backward(dy, dx)
        tops.append(top)
        grads.append(dx)
    np.testing.assert_array_equal(tops[0], tops[1])
    np.testing.assert_array_equal(grads[0], grads[1])
    want, _ = reference_max_pool(x.reshape(-1, 12, 11), (k, k), (s, s), (p, p), out)
    np.testing.assert_array_equal(tops[1].reshape(want.shape), want)


def reference_ave_pool(x, kernel, stride, pad, out):
    """Caffe's average of x (planes, H, W): each window's image elements added in row-major
    order from +0 (adding +0 for a position outside changes no such sum), over the window's
    size clipped to the padded image."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, pad, out
    planes, height, width = x.shape
    rows, cols = np.arange(oh) * sh - ph, np.arange(ow) * sw - pw
    total = np.zeros((planes, oh, ow), x.dtype)
    for i, j in itertools.product(range(kh), range(kw)):
        r, c = rows + i, cols + j
        inside = ((r >= 0) & (r < height))[:, None] & ((c >= 0) & (c < width))[None, :]
        total += np.where(inside, x[:, np.clip(r, 0, height - 1)][:, :, np.clip(c, 0, width - 1)], 0)
    size = (np.minimum(rows + kh, height + ph) - rows)[:, None] * (np.minimum(cols + kw, width + pw) - cols)[None, :]
    return total / size.astype(x.dtype)


AVE_CASES = CASES + [(14, 14, 5, 3, 0, True), (9, 9, 3, 2, 2, True)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("height, width, k, s, p, ceil", AVE_CASES)
def test_ave_pool_matches_the_reference_to_the_byte(dtype, height, width, k, s, p, ceil):
    planes = 4
    x = R.standard_normal((planes, height, width)).astype(dtype)
    x[R.random(x.shape) < 0.3] = -0.0              # a window of -0 alone must still give +0
    x[1, ::3] = -0.0
    x[2, R.integers(height), R.integers(width)] = np.inf
    x[3, R.integers(height), R.integers(width)] = np.nan
    out = (pooled_size(height, k, s, p, ceil), pooled_size(width, k, s, p, ceil))
    geom = native.window_geometry(planes, (height, width), (k, k), (s, s), (p, p), (1, 1), out)
    y = np.full((planes,) + out, 7, dtype)
    native.kernels.ave_pool(x, y, geom, planes)
    assert y.tobytes() == reference_ave_pool(x, (k, k), (s, s), (p, p), out).tobytes()
