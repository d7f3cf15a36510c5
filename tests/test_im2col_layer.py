"""The Im2col layer: Caffe's convolution columns as a blob, backward by col2im."""
import numpy as np
import pytest

from gradcheck import build, check_layer, forward
from netspec.errors import NetspecError


def columns_by_loops(x, k, s, p, d):
    """top[n, c*kh*kw + i*kw + j, oy, ox] = padded x[n, c, oy*s + i*d, ox*s + j*d], written out."""
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2 * p, w + 2 * p))
    padded[:, :, p:p + h, p:p + w] = x
    oh, ow = (h + 2 * p - (d * (k - 1) + 1)) // s + 1, (w + 2 * p - (d * (k - 1) + 1)) // s + 1
    out = np.zeros((n, c * k * k, oh, ow))
    for b in range(n):
        for ch in range(c):
            for i in range(k):
                for j in range(k):
                    for oy in range(oh):
                        for ox in range(ow):
                            out[b, ch * k * k + i * k + j, oy, ox] = padded[b, ch, oy * s + i * d, ox * s + j * d]
    return out


def test_hand_worked_columns():
    # One 3x3 channel, 2x2 kernel, stride 1, no pad: four output positions, each a window.
    x = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    top = forward('type: "Im2col" convolution_param { kernel_size: 2 }', [x])[0]
    assert top.shape == (1, 4, 2, 2)
    #  row k = kernel offset (0,0) (0,1) (1,0) (1,1); columns = output positions in raster order
    np.testing.assert_array_equal(top.reshape(4, 4), [[1, 2, 4, 5], [2, 3, 5, 6], [4, 5, 7, 8], [5, 6, 8, 9]])


@pytest.mark.parametrize("k, s, p, d", [(3, 1, 1, 1), (3, 2, 0, 1), (2, 1, 2, 2), (1, 1, 0, 1)])
def test_columns_match_loops(k, s, p, d):
    x = np.random.default_rng(k + s + p).standard_normal((2, 3, 6, 7))
    spec = f'type: "Im2col" convolution_param {{ kernel_size: {k} stride: {s} pad: {p} dilation: {d} }}'
    np.testing.assert_array_equal(forward(spec, [x])[0], columns_by_loops(x, k, s, p, d))


def test_rectangular_kernel_and_channel_axis():
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 6))
    top = forward('type: "Im2col" convolution_param { kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 }', [x])[0]
    assert top.shape == (2, 2 * 6, 4, 2)
    assert top[1, 6 + 1 * 3 + 2, 3, 1] == x[1, 1, 3 + 1, 1 * 2 + 2]


@pytest.mark.parametrize("spec", [
    "kernel_size: 3 pad: 1",
    "kernel_size: 2 stride: 2",
    "kernel_size: 3 dilation: 2 pad: 2 stride: 2",
])
def test_gradient(spec):
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 5))
    check_layer(f'type: "Im2col" convolution_param {{ {spec} }}', [x])


def test_kernel_larger_than_input():
    with pytest.raises(NetspecError, match=r"kernel \(5, 5\) .* does not fit the padded input of bottom shape \(1, 1, 3, 3\)"):
        build('type: "Im2col" convolution_param { kernel_size: 5 }', [np.zeros((1, 1, 3, 3))])
