"""Coordinate maps between the tops of a NetSpec (pycaffe's caffe.coord_map), for FCN-style crops.

Each spatial layer maps a coordinate of its bottom to one of its top by an
affine map per spatial axis, x_top = a * x_bottom + b:

    Convolution, Pooling, Im2col:  a = 1 / stride,  b = (pad - (k - 1) / 2) / stride
    Deconvolution:                 a = stride,      b = (k - 1) / 2 - pad
    Crop:                          a = 1,           b = -offset
    pass-through layers (ReLU...): a = 1,           b = 0

with k the dilated kernel extent (dilation * (kernel - 1) + 1). Maps compose along
a path, and `coord_map_from_to(top_from, top_to)` joins the two tops through
their nearest common ancestor, giving (axis, a, b) with x_to = a * x_from + b.
`crop(top_from, top_to)` builds the Crop layer that aligns top_from to top_to:
it needs a == 1 (same scale) and b <= 0 (top_from covers top_to).

    n.upscore = L.Deconvolution(n.score, convolution_param=dict(num_output=21, kernel_size=64, stride=32))
    n.score_crop = crop(n.upscore, n.data)
"""
import numpy as np

from .errors import NetspecError
from .net_spec import Top

# Layers that keep every spatial coordinate where it was.
PASS_THROUGH_LAYERS = frozenset([
    "AbsVal", "BatchNorm", "Bias", "BNLL", "Clip", "Dropout", "Eltwise", "ELU", "Exp", "Log", "LRN", "MVN",
    "Power", "PReLU", "ReLU", "Scale", "Sigmoid", "Softmax", "Split", "Swish", "TanH", "Threshold",
])


class UndefinedMapException(NetspecError):
    """The layer has no coordinate map (it is not spatial, e.g. InnerProduct)."""


class CoordMapError(NetspecError, RuntimeError):
    """The two tops are not joined by spatial layers (pycaffe raises RuntimeError)."""


class CropError(NetspecError, AssertionError):
    """crop() cannot align the tops (pycaffe asserts; this is an AssertionError too, even under -O)."""


def _values(message, field, default):
    """A repeated (or single) numeric field of a parameter message as an array, `default` when unset."""
    value = getattr(message, field)
    if hasattr(value, "__len__"):
        return np.array(list(value) or [default], dtype=np.float64)
    return np.array([value if message.HasField(field) else default], dtype=np.float64)


def conv_params(fn):
    """(axis, stride, dilated kernel extent, pad) of a Convolution/Deconvolution/Pooling/Im2col call."""
    layer = fn.template
    if fn.type_name == "Pooling":
        p = layer.pooling_param
        if p.global_pooling:
            raise UndefinedMapException("L.Pooling: global pooling has no coordinate map")
        two = lambda h, w, one, default: (np.array([getattr(p, h), getattr(p, w)], np.float64)  # noqa: E731
                                          if p.HasField(h) else _values(p, one, default))
        return 1, two("stride_h", "stride_w", "stride", 1), two("kernel_h", "kernel_w", "kernel_size", 1), \
            two("pad_h", "pad_w", "pad", 0)
    p = layer.convolution_param
    if p.HasField("kernel_h"):
        kernel = np.array([p.kernel_h, p.kernel_w], np.float64)
    else:
        kernel = _values(p, "kernel_size", 1)
    stride = np.array([p.stride_h, p.stride_w], np.float64) if p.HasField("stride_h") else _values(p, "stride", 1)
    pad = np.array([p.pad_h, p.pad_w], np.float64) if p.HasField("pad_h") else _values(p, "pad", 0)
    dilation = _values(p, "dilation", 1)
    return p.axis, stride, dilation * (kernel - 1) + 1, pad


def crop_params(fn):
    """(axis, offsets) of a Crop call; axis 2 and offset 0 unless given."""
    p = fn.template.crop_param
    axis = p.axis if p.HasField("axis") else 2
    return axis, _values(p, "offset", 0)


def coord_map(fn):
    """(axis, a, b) of one layer call, x_top = a * x_bottom + b; axis None for pass-through layers.

    The axis is the one before the first spatial axis (1 for N x C x H x W), as pycaffe numbers it.
    """
    t = fn.type_name
    if t in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if t == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if t == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, np.ones_like(offset), -offset
    if t in PASS_THROUGH_LAYERS or (t == "Concat" and _concat_on_channels(fn)):
        return None, 1, 0
    raise UndefinedMapException(f"L.{t} has no coordinate map")


def _concat_on_channels(fn):
    p = fn.template.concat_param
    return (p.axis if p.HasField("axis") else 1) == 1 and not p.HasField("concat_dim")


def compose(base, extra):
    """The map `extra` applied after `base`."""
    ax1, a1, b1 = base
    ax2, a2, b2 = extra
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise CoordMapError(f"cannot compose coordinate maps of axes {ax1} and {ax2}")
    return (ax1 if ax1 is not None else ax2), a2 * a1, a2 * b1 + b2


def inverse(coord):
    ax, a, b = coord
    return ax, 1 / a, -b / a


def _mapped_bottoms(fn, top):
    """The bottoms whose coordinates `top` depends on (pairs of top i and bottom i for a
    several-bottom Convolution; the cropped bottom alone for Crop)."""
    if fn.type_name == "Crop":
        return fn.inputs[:1]
    if fn.type_name in ("Convolution", "Deconvolution") and len(fn.inputs) == len(fn.tops) > 1:
        return (fn.inputs[top.n],)
    return fn.inputs


def _ancestors(top):
    """{Top: map from that ancestor to `top`} for every ancestor reached through spatial layers."""
    found = {top: (None, 1, 0)}
    frontier = [top]
    while frontier:
        current = frontier.pop(0)          # breadth first: the nearest ancestors first
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(current.fn, current):
            if bottom not in found:
                found[bottom] = compose(step, found[current])
                frontier.append(bottom)
    return found


def coord_map_from_to(top_from, top_to):
    """(axis, a, b) with x_to = a * x_from + b, through the nearest common ancestor of the two tops."""
    for top in (top_from, top_to):
        if not isinstance(top, Top):
            raise TypeError(f"coord_map_from_to takes NetSpec tops, got {type(top).__name__}")
    from_maps, to_maps = _ancestors(top_from), _ancestors(top_to)
    for ancestor, ancestor_to_from in from_maps.items():
        if ancestor in to_maps:
            return compose(inverse(ancestor_to_from), to_maps[ancestor])
    raise CoordMapError(f"could not compute a coordinate map from L.{top_from.fn.type_name} to "
                        f"L.{top_to.fn.type_name}: no common input through spatial layers "
                        "(are they connected by convolution, pooling, crop or pass-through layers?)")


def crop(top_from, top_to):
    """L.Crop(top_from, top_to) with the axis and offsets that align top_from's coordinates to top_to's."""
    from .net_spec import layers as L
    ax, a, b = coord_map_from_to(top_from, top_to)
    if not np.all(np.asarray(a) == 1):
        raise CropError(f"crop: the tops are at different scales (a = {np.asarray(a).tolist()}); "
                        "only tops with the same stride can be cropped to each other")
    if not np.all(np.asarray(b) <= 0):
        raise CropError(f"crop: the top to crop would need negative offsets ({(-np.asarray(b)).tolist()}): "
                        "it is smaller than the reference top")
    offset = [int(v) for v in np.round(-np.atleast_1d(b))]
    return L.Crop(top_from, top_to, crop_param=dict(axis=(ax if ax is not None else 1) + 1, offset=offset))
