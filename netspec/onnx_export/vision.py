"""Convolution, Deconvolution, Pooling and SPP as ONNX Conv, ConvTranspose and pooling nodes.

Caffe's pooling windows differ from ONNX's at the bottom/right edge, so every pooling gets
explicit end padding: Caffe's output count (ceil or floor, less a last window that would
start in the padding) is computed by netspec, and the end pad is exactly what makes ONNX's
floor-mode count and window positions equal it. ceil_mode is never used.

  MAX  windows clipped to the image: MaxPool ignores its pads, so pads [p, end] do it.
  AVE  Caffe divides by the window clipped to the *padded* border [-p, size + p), never by
       the part beyond it: an explicit zero Pad of p each side, then AveragePool with only
       the end pad and count_include_pad=0 divides by exactly that. When no window reaches
       past the padded border every divisor is the full kernel and one AveragePool with
       pads [p, p] and count_include_pad=1 is the same.
"""
import numpy as np

from ..layers.base import FLT_MIN
from ..proto import caffe_pb2
from .registry import exports



def _conv_attrs(layer):
    return dict(kernel_shape=list(layer.kernel), strides=list(layer.stride), pads=list(layer.pad) * 2,
                dilations=list(layer.dilation), group=layer.group)


def _check_channel_axis(g, layer, x):
    if layer.axis != 1:
        raise g.refuse(f"channel axis {layer.axis}: ONNX convolutions take channels on axis 1")


@exports("Convolution")
def convolution(g, layer, bottoms, tops):
    _check_channel_axis(g, layer, bottoms[0])
    params = [g.const(layer.blobs[0].data, f"{layer.name}/weight")]
    if layer.bias_term:
        params.append(g.const(layer.blobs[1].data, f"{layer.name}/bias"))
    for x, y in zip(bottoms, tops):           # bottom i -> top i, one set of weights
        g.node("Conv", [x.name] + params, [y.name], **_conv_attrs(layer))


@exports("Deconvolution")
def deconvolution(g, layer, bottoms, tops):
    """Caffe's deconvolution weights (in, out / group, k...) are ConvTranspose's layout, and its
    output size s(n - 1) + d(k - 1) + 1 - 2p is ConvTranspose's with no output_padding."""
    _check_channel_axis(g, layer, bottoms[0])
    params = [g.const(layer.blobs[0].data, f"{layer.name}/weight")]
    if layer.bias_term:
        params.append(g.const(layer.blobs[1].data, f"{layer.name}/bias"))
    for x, y in zip(bottoms, tops):
        g.node("ConvTranspose", [x.name] + params, [y.name], **_conv_attrs(layer))


@exports("Im2col")
def im2col(g, layer, bottoms, tops):
    """The columns as a depthwise convolution with one-hot kernels: output channel c * K + k copies
    channel c at kernel offset k (a product by 1 plus zeros: exact)."""
    _check_channel_axis(g, layer, bottoms[0])
    x = bottoms[0]
    channels, taps = x.shape[1], int(np.prod(layer.kernel))
    onehot = np.zeros((channels * taps, 1, taps), np.float32)
    onehot[np.arange(channels * taps), 0, np.tile(np.arange(taps), channels)] = 1
    weight = g.const(onehot.reshape((channels * taps, 1) + tuple(layer.kernel)), f"{layer.name}/onehot")
    attrs = dict(kernel_shape=list(layer.kernel), strides=list(layer.stride), pads=list(layer.pad) * 2,
                 dilations=list(layer.dilation), group=channels)
    g.node("Conv", [x.name, weight], [tops[0].name], **attrs)


def _end_pads(size, kernel, stride, pad, out):
    """Per axis: how far the last of `out` windows reaches past the unpadded input's end."""
    return [(o - 1) * s + k - n - p for n, k, s, p, o in zip(size, kernel, stride, pad, out)]


def _check_count(g, size, kernel, stride, begin, end, out):
    got = [(n + b + e - k) // s + 1 for n, k, s, b, e in zip(size, kernel, stride, begin, end)]
    if got != list(out):          # cannot happen for Caffe's geometry; a guard against a wrong graph
        raise g.refuse(f"ONNX pooling would give {got} windows where Caffe gives {list(out)}")


def window_pool(g, x, size, method, kernel, stride, pad, out, output=None):
    """One Caffe pooling of value `x` (spatial `size`) with `out` windows per axis; returns the value."""
    outputs = None if output is None else [output]
    end = _end_pads(size, kernel, stride, pad, out)
    attrs = dict(kernel_shape=list(kernel), strides=list(stride))
    if method == "max":
        begin, end = list(pad), [max(0, e) for e in end]
        _check_count(g, size, kernel, stride, begin, end, out)
        return g.node("MaxPool", [x], outputs, pads=begin + end, **attrs)
    if method == "ave":
        beyond = [e - p for e, p in zip(end, pad)]         # reach past the padded border
        if max(beyond) <= 0:
            _check_count(g, size, kernel, stride, pad, pad, out)
            return g.node("AveragePool", [x], outputs, pads=list(pad) * 2, count_include_pad=1, **attrs)
        if any(pad):
            x = g.node("Pad", [x, g.ints([0, 0] + list(pad) + [0, 0] + list(pad))], mode="constant")
            size = [n + 2 * p for n, p in zip(size, pad)]
        beyond = [max(0, b) for b in beyond]
        _check_count(g, size, kernel, stride, [0] * len(size), beyond, out)
        return g.node("AveragePool", [x], outputs, pads=[0] * len(size) + beyond, count_include_pad=0, **attrs)
    raise AssertionError(method)


def stochastic_test_pool(g, x, channels, size, kernel, stride, out, output):
    """Caffe's TEST-phase stochastic pooling: sum(x^2) / (FLT_MIN + sum(x)) over each window
    (no padding), the window sums as a depthwise convolution with a kernel of ones."""
    end = [max(0, e) for e in _end_pads(size, kernel, stride, [0, 0], out)]
    _check_count(g, size, kernel, stride, [0, 0], end, out)
    ones = g.const(np.ones((channels, 1) + tuple(kernel), np.float32))
    attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=[0, 0] + end, group=channels)
    squares = g.node("Conv", [g.node("Mul", [x, x]), ones], **attrs)
    sums = g.node("Add", [g.node("Conv", [x, ones], **attrs), g.scalar(FLT_MIN)])
    return g.node("Div", [squares, sums], [output])


@exports("Pooling")
def pooling(g, layer, bottoms, tops):
    x, y = bottoms[0], tops[0]
    size, out = x.shape[2:], y.shape[2:]
    kernel = list(size) if layer.global_pooling else layer.kernel
    if layer.method == "stochastic":
        if layer.phase == caffe_pb2.TRAIN:
            raise g.refuse("TRAIN-phase stochastic pooling samples at random; export the TEST net")
        return stochastic_test_pool(g, x.name, x.shape[1], size, kernel, layer.stride, out, y.name)
    if len(tops) == 2:
        return _max_with_mask(g, x, size, kernel, layer, out, tops)
    if layer.global_pooling:
        g.node("GlobalMaxPool" if layer.method == "max" else "GlobalAveragePool", [x.name], [y.name])
        return
    window_pool(g, x.name, size, layer.method, kernel, layer.stride, layer.pad, out, y.name)


def _max_with_mask(g, x, size, kernel, layer, out, tops):
    """MAX with Caffe's second top: the argmax as h * W + w within its plane, as a float. MaxPool's
    Indices count over the whole (N, C, H, W) tensor, so the plane's offset is taken off by Mod."""
    end = [max(0, e) for e in _end_pads(size, kernel, layer.stride, layer.pad, out)]
    _check_count(g, size, kernel, layer.stride, layer.pad, end, out)
    _, indices = g.node("MaxPool", [x.name], [tops[0].name, g.fresh(f"{layer.name}/indices")],
                        kernel_shape=list(kernel), strides=list(layer.stride), pads=list(layer.pad) + end)
    plane = g.ints(int(size[0] * size[1]))
    g.node("Cast", [g.node("Mod", [indices, plane])], [tops[1].name], to=g.TensorProto.FLOAT)


@exports("SPP")
def spp(g, layer, bottoms, tops):
    """Each pyramid level is a ceil-mode pooling (netspec's level geometry), flattened, then concatenated."""
    x = bottoms[0]
    if layer.method == "stochastic" and layer.phase == caffe_pb2.TRAIN:
        raise g.refuse("TRAIN-phase stochastic pooling samples at random; export the TEST net")
    if layer.height == 1:
        return _spp_level(g, x, layer.levels[0], tops[0].name)
    parts = [g.node("Flatten", [_spp_level(g, x, lv)], axis=1) for lv in layer.levels]
    g.node("Concat", parts, [tops[0].name], axis=1)


def _spp_level(g, x, lv, output=None):
    kernel, stride, pad = (lv.kh, lv.kw), (lv.sh, lv.sw), (lv.ph, lv.pw)
    out = (lv.oh, lv.ow)
    if lv.method == "stochastic":
        return stochastic_test_pool(g, x.name, x.shape[1], x.shape[2:], kernel, stride, out,
                                    output or g.fresh("spp/level"))
    return window_pool(g, x.name, x.shape[2:], lv.method, kernel, stride, pad, out, output)
