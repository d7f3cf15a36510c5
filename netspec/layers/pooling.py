"""Pooling and SPP, with Caffe's parameters and shape rules; the window arithmetic is in
window_pool.py (compiled loops from native.py when built, else strided numpy passes)."""
import numpy as np

from ..proto import caffe_pb2
from ..rng import get_rng
from .base import Layer, nbytes, register, scratch, shape_str
from .window_pool import WindowPool

_POOL = caffe_pb2.PoolingParameter
_METHODS = {_POOL.MAX: "max", _POOL.AVE: "ave", _POOL.STOCHASTIC: "stochastic"}


def pooled_size(size, kernel, stride, pad, ceil_mode, padded=None):
    """Caffe's pooled length: ceil (or floor) of (size + 2p - k) / s, plus 1; when the layer
    has any padding (`padded`, in either dimension; default: this one's), a last window starting
    in the bottom/right padding or past it is dropped. Without padding a ceil-mode window may
    start past the image: MAX gives it -FLT_MAX (argmax -1), AVE 0."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if (pad if padded is None else padded) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _check_pool_geometry(layer, method, kernel, stride, pad, where=""):
    if min(kernel) <= 0:
        raise layer.error(f"{where}kernel size must be nonzero, got {tuple(kernel)}")
    if min(stride) <= 0:
        raise layer.error(f"{where}stride must be nonzero, got {tuple(stride)}")
    if any(pad):
        if method == "stochastic":
            raise layer.error(f"{where}padding is implemented only for MAX and AVE pooling, got pad {tuple(pad)}")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise layer.error(f"{where}pad {tuple(pad)} must be smaller than the kernel {tuple(kernel)}")


def _make_pool(layer, method, shape, kernel, stride, pad, ceil_mode, dtype, where=""):
    out = tuple(pooled_size(s, k, t, p, ceil_mode, any(pad)) for s, k, t, p in zip(shape[2:], kernel, stride, pad))
    if min(out) <= 0:
        raise layer.error(f"{where}pooling output is empty: bottom shape {shape_str(shape)}, kernel "
                          f"{tuple(kernel)}, stride {tuple(stride)}, pad {tuple(pad)}")
    return WindowPool(method, shape, kernel, stride, pad, out, dtype)


@register("Pooling")
class Pooling(Layer):
    """Caffe's Pooling: MAX (optional second top: the argmax as h * W + w), AVE, STOCHASTIC."""
    num_bottoms = 1
    num_tops = (1, 2)

    def setup(self, bottom, top):
        p = self.layer_param.pooling_param
        self.method = _METHODS[p.pool]
        if len(top) > 1 and self.method != "max":
            raise self.error("a second top (the argmax mask) is only produced by MAX pooling")
        self.global_pooling = p.global_pooling
        has_k, has_kh, has_kw = p.HasField("kernel_size"), p.HasField("kernel_h"), p.HasField("kernel_w")
        if self.global_pooling:
            if has_k or has_kh or has_kw:
                raise self.error("global_pooling takes the kernel from the bottom; do not give kernel_size")
        else:
            if has_k and (has_kh or has_kw):
                raise self.error("give either kernel_size or kernel_h/kernel_w, not both")
            if not has_k and not (has_kh and has_kw):
                raise self.error("kernel_size (or both kernel_h and kernel_w) is required")
        self.kernel = [p.kernel_size] * 2 if has_k else [p.kernel_h, p.kernel_w]
        self.pad = self._pair(p, "pad", [p.pad] * 2, [p.pad_h, p.pad_w])
        self.stride = self._pair(p, "stride", [p.stride] * 2, [p.stride_h, p.stride_w])
        if self.global_pooling and (any(self.pad) or self.stride != [1, 1]):
            raise self.error(f"global_pooling needs pad 0 and stride 1, got pad {tuple(self.pad)} "
                             f"stride {tuple(self.stride)}")
        self.ceil_mode = p.round_mode == _POOL.CEIL
        self.pool = None

    def _pair(self, p, name, single, pair):
        has_h, has_w = p.HasField(name + "_h"), p.HasField(name + "_w")
        if has_h or has_w:
            if p.HasField(name) or not (has_h and has_w):
                raise self.error(f"give either {name} or both {name}_h and {name}_w")
            return pair
        return single

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"bottom must have 4 axes (num, channels, height, width), got shape {shape_str(shape)}")
        kernel = list(shape[2:]) if self.global_pooling else self.kernel
        _check_pool_geometry(self, self.method, kernel, self.stride, self.pad)
        dtype = bottom[0].data.dtype
        pool = self.pool
        if pool is None or (pool.num, pool.channels, pool.height, pool.width) != shape or pool.dtype != dtype:
            self.pool = _make_pool(self, self.method, shape, kernel, self.stride, self.pad, self.ceil_mode, dtype)
        for t in top:
            t.reshape(shape[:2] + (self.pool.oh, self.pool.ow))

    def work_bytes(self, bottom, top):
        """MAX keeps its winners for backward: int32 argmax indices per output (compiled loops), or
        per-row and per-output byte indices and masks (numpy passes); counted as both."""
        if self.method != "max":
            return 0
        n, c, h, _ = bottom[0].shape
        return nbytes(top[0], 4) + 2 * nbytes(top[0], 1) + 2 * n * c * h * self.pool.ow

    def forward(self, bottom, top):
        mask = top[1].data if len(top) > 1 else None
        self.pool.forward(bottom[0].data, top[0].data, mask, train=self.phase == caffe_pb2.TRAIN, rng=get_rng(),
                          backward=self.runs_backward)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.pool.backward(top[0].diff, bottom[0].diff, train=self.phase == caffe_pb2.TRAIN)


@register("SPP")
class SPP(Layer):
    """Spatial pyramid pooling: level l pools into 2^l x 2^l bins; outputs flattened and concatenated.

    With pyramid_height 1 the top is the single pooling output (N, C, 1, 1), as in Caffe.
    """
    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom, top):
        p = self.layer_param.spp_param
        self.height = p.pyramid_height
        if self.height <= 0:
            raise self.error("pyramid_height must be given and positive")
        self.method = _METHODS[p.pool]
        self.levels = []
        self.key = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"bottom must have 4 axes (num, channels, height, width), got shape {shape_str(shape)}")
        dtype = bottom[0].data.dtype
        if self.key != (shape, dtype):
            self.levels = []
            for level in range(self.height):
                bins = 2 ** level
                kernel = [-(-size // bins) for size in shape[2:]]
                pad = [(k * bins - size + 1) // 2 for k, size in zip(kernel, shape[2:])]
                where = f"pyramid level {level} ({bins}x{bins} bins over {shape[2]}x{shape[3]}): "
                _check_pool_geometry(self, self.method, kernel, kernel, pad, where)
                self.levels.append(_make_pool(self, self.method, shape, kernel, kernel, pad, True, dtype, where))
            self.key = (shape, dtype)
        if self.height == 1:
            top[0].reshape(shape[:2] + (self.levels[0].oh, self.levels[0].ow))
        else:
            top[0].reshape(shape[0], sum(shape[1] * lv.oh * lv.ow for lv in self.levels))

    def _slices(self, top_array):
        num, start = top_array.shape[0], 0
        for lv in self.levels:
            width = lv.channels * lv.oh * lv.ow
            yield lv, top_array.reshape(num, -1)[:, start:start + width]
            start += width

    def forward(self, bottom, top):
        train = self.phase == caffe_pb2.TRAIN
        for k, (lv, part) in enumerate(self._slices(top[0].data)):
            out = scratch(self, f"out{k}", (lv.num, lv.channels, lv.oh, lv.ow), bottom[0].data.dtype)
            lv.forward(bottom[0].data, out, train=train, rng=get_rng(), backward=self.runs_backward)
            np.copyto(part, out.reshape(lv.num, -1))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        train = self.phase == caffe_pb2.TRAIN
        dx = bottom[0].diff
        dtype = dx.dtype
        for k, (lv, part) in enumerate(self._slices(top[0].diff)):
            dtop = scratch(self, f"dtop{k}", (lv.num, lv.channels, lv.oh, lv.ow), dtype)
            np.copyto(dtop.reshape(lv.num, -1), part)
            if k == 0:
                lv.backward(dtop, dx, train=train)
            else:
                tmp = scratch(self, "dx_level", dx.shape, dtype)
                lv.backward(dtop, tmp, train=train)
                dx += tmp
