"""Layers from Caffe's forks: ReLU6, depthwise convolution, ShuffleChannel, the forks' BN, Interp.

Interp is bilinear with corners aligned on the input cropped by pad_beg/pad_end: a Slice for
the crop, then columns and then rows as two taps each (Gather, Mul, Add) with netspec's own
float32 positions and weights: the fork's arithmetic operation for operation (Resize's
align_corners would recompute the positions its own way).
"""
import numpy as np

from ..layers.fork_bn import PSPNetBN
from .norm import batch_statistics
from .registry import exports
from .vision import convolution

exports("ConvolutionDepthwise", "DepthwiseConvolution")(convolution)   # group = channels, set by the layer


@exports("ReLU6")
def relu6(g, layer, bottoms, tops):
    g.node("Clip", [bottoms[0].name, g.scalar(0), g.scalar(6)], [tops[0].name])


@exports("ShuffleChannel")
def shuffle_channel(g, layer, bottoms, tops):
    """Channels viewed as (group, C / group), transposed to (C / group, group), viewed back."""
    x = bottoms[0]
    n = None if x.dims[0] is None else x.shape[0]
    rest = int(np.prod(x.shape[2:], dtype=np.int64))
    grouped = g.reshape(x.name, [n, layer.group, x.shape[1] // layer.group, rest])
    g.reshape(g.node("Transpose", [grouped], perm=[0, 2, 1, 3]), x.dims, tops[0].name)


def _channel(g, layer, blob, what):
    return g.const(blob.data.reshape(-1), f"{layer.name}/{what}")


@exports("BN")
def fork_bn(g, layer, bottoms, tops):
    """PSPNet's: slope * (x - mean) / sqrt(var + eps) + bias (stored statistics at TEST or frozen,
    else the batch's, biased). SegNet's: INFERENCE scale * x + shift; LEARN over the batch's
    statistics with variance E[x^2] - E[x]^2 and eps 1e-9."""
    x, y = bottoms[0], tops[0]
    gain, offset = (_channel(g, layer, b, w) for b, w in zip(layer.blobs[:2], ("scale", "shift")))
    if isinstance(layer, PSPNetBN) and layer.use_running:
        g.node("BatchNormalization", [x.name, gain, offset, _channel(g, layer, layer.blobs[2], "mean"),
                                      _channel(g, layer, layer.blobs[3], "var")], [y.name], epsilon=float(layer.eps))
        return
    if isinstance(layer, PSPNetBN):
        normed = batch_statistics(g, x, layer.eps)
    elif layer.learn:
        normed = batch_statistics(g, x, layer.VAR_EPS, moments=True)
    else:
        normed = x.name
    shape = (x.shape[1],) + (1,) * (len(x.shape) - 2)
    gain, offset = (g.reshape(v, shape) for v in (gain, offset))
    g.node("Add", [g.node("Mul", [normed, gain]), offset], [y.name])


@exports("Interp")
def interp(g, layer, bottoms, tops):
    x, y = bottoms[0], tops[0]
    begin = -layer.pad_beg
    value = x.name
    if (begin, layer.eff) != (0, tuple(x.shape[2:])):
        value = g.node("Slice", [value, g.ints([begin, begin]), g.ints([begin + e for e in layer.eff]),
                                 g.ints([2, 3])])
    if layer.eff == layer.out:
        g.identity(value, y.name)
        return
    columns = _taps(g, layer, value, layer.cols, 3)
    _taps(g, layer, columns, layer.rows, 2, y.name)


def _taps(g, layer, x, taps, axis, output=None):
    """x[lo] * (1 - f) + x[hi] * f along `axis`: netspec's (and the fork's) arithmetic, step for step."""
    lo, hi, w_lo, w_hi = taps
    shape = (-1, 1) if axis == 2 else (-1,)
    low = g.node("Gather", [x, g.ints(lo)], axis=axis)
    high = g.node("Gather", [x, g.ints(hi)], axis=axis)
    low = g.node("Mul", [low, g.const(np.asarray(w_lo, np.float32).reshape(shape))])
    high = g.node("Mul", [high, g.const(np.asarray(w_hi, np.float32).reshape(shape))])
    return g.node("Add", [low, high], None if output is None else [output])


@exports("Upsample")
def upsample(g, layer, bottoms, tops):
    """With a mask (SegNet): each value scattered to its mask index h * W_out + w of its plane in a
    zero top (ScatterElements over (N * C, plane): a later duplicate index wins, as netspec's
    assignment does). Without (YOLO): nearest neighbour by the integer scale."""
    x, y = bottoms[0], tops[0]
    if len(bottoms) == 1:
        scales = g.const([1, 1] + [float(s) for s in layer.scale])
        g.node("Resize", [x.name, "", scales], [y.name], mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return
    planes = None if x.dims[0] is None else x.shape[0] * x.shape[1]
    plane_out = y.shape[2] * y.shape[3]
    values = g.reshape(x.name, [planes, x.shape[2] * x.shape[3]])
    index = g.reshape(g.node("Cast", [bottoms[1].name], to=g.TensorProto.INT64), [planes, x.shape[2] * x.shape[3]])
    if planes is not None:
        zeros = g.const(np.zeros((planes, plane_out), np.float32), f"{layer.name}/zeros")
    else:
        rows = g.node("Slice", [g.node("Shape", [values]), g.ints([0]), g.ints([1])])
        size = g.node("Concat", [rows, g.ints([plane_out])], axis=0)
        zeros = g.node("ConstantOfShape", [size], value=g.numpy_helper.from_array(np.zeros(1, np.float32)))
    scattered = g.node("ScatterElements", [zeros, index, values], axis=1)
    g.reshape(scattered, y.dims, y.name)


@exports("ROIPooling")
def roi_pooling(g, layer, bottoms, tops):
    """ONNX MaxRoiPool is Fast R-CNN's ROIPooling: rois (R, 5) [batch, x1, y1, x2, y2], coordinates
    times spatial_scale rounded, bins floor/ceil of the roi's size over the pooled size, empty bins 0."""
    rois = bottoms[1].name if len(bottoms[1].shape) == 2 else g.reshape(bottoms[1].name, [bottoms[1].dims[0], 5])
    g.node("MaxRoiPool", [bottoms[0].name, rois], [tops[0].name], pooled_shape=[layer.pooled_h, layer.pooled_w],
           spatial_scale=float(layer.spatial_scale))


@exports("Permute")
def permute(g, layer, bottoms, tops):
    g.node("Transpose", [bottoms[0].name], [tops[0].name], perm=[int(a) for a in layer.order])


@exports("Normalize")
def normalize(g, layer, bottoms, tops):
    """SSD's y = s * x / sqrt(sum x^2 + eps), the sum over C, H, W (across_spatial) or over C."""
    x = bottoms[0]
    axes = list(range(1, len(x.shape))) if len(layer.axes) == 2 else [1]
    norm = g.node("Sqrt", [g.node("Add", [g.reduce("ReduceSumSquare", x.name, axes, keepdims=True),
                                          g.scalar(layer.eps)])])
    scale = layer.blobs[0].data
    shape = (1,) if layer.shared else (x.shape[1],) + (1,) * (len(x.shape) - 2)
    g.node("Mul", [g.node("Div", [x.name, norm]), g.const(scale.reshape(shape), f"{layer.name}/scale")],
           [tops[0].name])


@exports("PriorBox")
def prior_box(g, layer, bottoms, tops):
    """The default boxes depend on the two bottoms' shapes only: netspec's own output, as a constant
    (the same at every batch size)."""
    if any(d is None for d in tops[0].dims):
        raise g.refuse("--dynamic-batch: its output follows the batch size")
    layer.forward([_Shaped(b.shape) for b in bottoms], [_Out(tops[0].shape)])
    g.identity(g.const(_Out.last, f"{layer.name}/boxes"), tops[0].name)


class _Shaped:
    """A stand-in bottom: PriorBox reads only its shape."""
    def __init__(self, shape):
        self.shape = tuple(shape)
        self.data = np.zeros(self.shape, np.float32)
        self.num, self.channels = (self.shape + (1, 1))[:2]
        self.height, self.width = (self.shape[2:] + (1, 1))[:2]


class _Out(_Shaped):
    last = None

    def __init__(self, shape):
        super().__init__(shape)
        _Out.last = self.data
