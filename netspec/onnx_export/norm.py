"""BatchNorm, Scale, Bias, LRN and MVN.

BatchNorm with stored statistics is ONNX BatchNormalization with Caffe's statistics
unscaled first: mean = blob0 / factor, var = blob1 / factor, and a factor of 0 gives 0 for
both (Caffe's rule), computed in float32 as netspec does. Batch statistics (TRAIN, or
use_global_stats false) are built from reductions.

LRN ACROSS_CHANNELS is ONNX LRN: both compute x / (k + alpha/n * sum of x^2 over the n
channels centred on c)^beta, the window cut at the first and last channel. WITHIN_CHANNEL
has no ONNX op: Caffe's own construction is rebuilt, an n x n average of x^2 whose divisor
is always n^2 (pad (n-1)/2, stride 1: no window reaches past the padded border), so
y = x * (1 + alpha * average)^-beta.
"""
import numpy as np

from .registry import exports


@exports("BatchNorm")
def batch_norm(g, layer, bottoms, tops):
    x, y = bottoms[0], tops[0]
    if len(x.shape) < 2:
        raise g.refuse(f"a bottom of shape {tuple(x.shape)}: ONNX BatchNormalization needs (N, C, ...)")
    if not layer.use_global_stats:
        batch_statistics(g, x, layer.eps, output=y.name)
        return
    factor = layer.blobs[2].data[0]
    factor = np.float32(0 if factor == 0 else 1 / factor)
    mean = factor * layer.blobs[0].data
    var = factor * layer.blobs[1].data
    channels = x.shape[1]
    g.node("BatchNormalization",
           [x.name, g.const(np.ones(channels), f"{layer.name}/scale"), g.const(np.zeros(channels), f"{layer.name}/shift"),
            g.const(mean, f"{layer.name}/mean"), g.const(var, f"{layer.name}/var")],
           [y.name], epsilon=float(layer.eps))


def batch_statistics(g, x, eps, moments=False, output=None):
    """(x - mean) / sqrt(var + eps) with the (biased) batch statistics over every axis but the
    channel's; `moments`: var as E[x^2] - E[x]^2 (SegNet's BN) instead of E[(x - mean)^2]."""
    axes = [0] + list(range(2, len(x.shape)))
    mean = g.reduce("ReduceMean", x.name, axes, keepdims=True)
    centred = g.node("Sub", [x.name, mean])
    if moments:
        var = g.node("Sub", [g.reduce("ReduceMean", g.node("Mul", [x.name, x.name]), axes, keepdims=True),
                             g.node("Mul", [mean, mean])])
    else:
        var = g.reduce("ReduceMean", g.node("Mul", [centred, centred]), axes, keepdims=True)
    std = g.node("Sqrt", [g.node("Add", [var, g.scalar(eps)])])
    return g.node("Div", [centred, std], None if output is None else [output])


def _operand(g, layer, bottoms, blob, what):
    """Scale's or Bias's operand (a parameter blob, or bottom[1] when blob is None), shaped with
    trailing 1s so that ONNX's right-aligned broadcasting lines it up with its axis."""
    x = bottoms[0]
    shape = tuple(blob.shape) if blob is not None else tuple(bottoms[1].shape)
    axis = 0 if not shape else layer.canonical_axis(layer.params.axis, x.shape)   # netspec's rule
    trailing = (1,) * (len(x.shape) - axis - len(shape))
    if blob is not None:
        return g.const(blob.data.reshape(shape + trailing), f"{layer.name}/{what}")
    if not trailing:
        return bottoms[1].name
    return g.node("Reshape", [bottoms[1].name, g.ints([0] * len(shape) + list(trailing))])


@exports("Scale")
def scale(g, layer, bottoms, tops):
    blob = layer.blobs[0] if len(bottoms) == 1 else None
    product = [bottoms[0].name, _operand(g, layer, bottoms, blob, "scale")]
    if layer.bias_index is None:
        g.node("Mul", product, [tops[0].name])
        return
    shift = _operand(g, layer, bottoms, layer.blobs[layer.bias_index], "bias")
    g.node("Add", [g.node("Mul", product), shift], [tops[0].name])


@exports("Bias")
def bias(g, layer, bottoms, tops):
    blob = layer.blobs[0] if len(bottoms) == 1 else None
    g.node("Add", [bottoms[0].name, _operand(g, layer, bottoms, blob, "bias")], [tops[0].name])


@exports("LRN")
def lrn(g, layer, bottoms, tops):
    x, y = bottoms[0].name, tops[0].name
    if not layer.within:
        g.node("LRN", [x], [y], size=int(layer.size), alpha=float(layer.alpha), beta=float(layer.beta),
               bias=float(layer.k))
        return
    n, half = layer.size, (layer.size - 1) // 2
    mean_square = g.node("AveragePool", [g.node("Mul", [x, x])], kernel_shape=[n, n], strides=[1, 1],
                         pads=[half] * 4, count_include_pad=1)
    base = g.node("Add", [g.node("Mul", [mean_square, g.scalar(layer.alpha)]), g.scalar(1.0)])
    g.node("Mul", [x, g.node("Pow", [base, g.scalar(-layer.beta)])], [y])


@exports("MVN")
def mvn(g, layer, bottoms, tops):
    """(x - mean) [/ (std + eps)] per item and channel (axes 2..), or per item (axes 1..)."""
    x, y = bottoms[0], tops[0]
    p = layer.layer_param.mvn_param
    first = 1 if p.across_channels else 2
    axes = list(range(first, len(x.shape)))
    if not axes:
        raise g.refuse(f"a bottom of shape {tuple(x.shape)} has no axes to normalise over")
    centred = g.node("Sub", [x.name, g.reduce("ReduceMean", x.name, axes, keepdims=True)],
                     None if p.normalize_variance else [y.name])
    if p.normalize_variance:
        std = g.node("Sqrt", [g.reduce("ReduceMean", g.node("Mul", [centred, centred]), axes, keepdims=True)])
        g.node("Div", [centred, g.node("Add", [std, g.scalar(p.eps)])], [y.name])
