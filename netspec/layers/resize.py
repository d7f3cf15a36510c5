"""Resampling layers of the segmentation forks: Interp (PSPNet / DeepLab) and Upsample (SegNet)."""
import numpy as np

from .base import Layer, register, shape_str


def interp_axis(size_in, size_out):
    """The fork's align-corners bilinear taps along one axis: output cell o reads input
    o * r with r = (in - 1) / (out - 1) (0 for a single output), split between lo = floor(o * r)
    and hi = lo + 1 (lo itself at the last cell) with weights 1 - f and f. The position and
    its fraction are computed in float32, as the fork does. Returns (lo, hi, 1 - f, f)."""
    ratio = np.float32((size_in - 1) / (size_out - 1)) if size_out > 1 else np.float32(0)
    pos = ratio * np.arange(size_out, dtype=np.float32)
    lo = pos.astype(np.int64)
    frac = pos - lo.astype(np.float32)
    return lo, lo + (lo < size_in - 1), 1 - frac, frac


def _taps(x, taps, axis, out=None):
    """Interpolate along `axis` (-1 or -2): x[lo] * (1 - f) + x[hi] * f, into `out` if given."""
    lo, hi, w_lo, w_hi = taps
    shape = (-1, 1) if axis == -2 else (-1,)
    low = np.take(x, lo, axis=axis)
    high = np.take(x, hi, axis=axis)
    out = np.multiply(low, w_lo.astype(x.dtype).reshape(shape), out=out)
    high *= w_hi.astype(x.dtype).reshape(shape)
    out += high
    return out


def _taps_matrix(taps, size_in, dtype):
    """The taps as a dense (out, in) matrix: backward's transpose is then one GEMM per axis."""
    lo, hi, w_lo, w_hi = taps
    matrix = np.zeros((len(lo), size_in), dtype)
    rows = np.arange(len(lo))
    np.add.at(matrix, (rows, lo), w_lo.astype(dtype))
    np.add.at(matrix, (rows, hi), w_hi.astype(dtype))
    return matrix


@register("Interp")
class Interp(Layer):
    """Bilinear resize with corners aligned over the input cropped by pad_beg/pad_end (both <= 0;
    the crop starts at -pad_beg on both axes). Output size from the effective input size E:
    shrink_factor s: (E - 1) / s + 1; zoom_factor z: E + (E - 1)(z - 1); height and width;
    both factors: shrink, then zoom. Columns are interpolated first, then rows, which repeats
    the fork's arithmetic h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d) operation for operation;
    backward multiplies by the transposed tap matrices.
    """
    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom, top):
        p = self.layer_param.interp_param
        self.zoom = p.zoom_factor if p.HasField("zoom_factor") else None
        self.shrink = p.shrink_factor if p.HasField("shrink_factor") else None
        self.size = (p.height, p.width) if p.HasField("height") and p.HasField("width") else None
        if self.zoom is None and self.shrink is None and self.size is None:
            raise self.error("interp_param needs zoom_factor, shrink_factor, or both height and width")
        if (self.zoom is not None and self.zoom < 1) or (self.shrink is not None and self.shrink < 1):
            raise self.error(f"zoom_factor and shrink_factor must be >= 1, got zoom {self.zoom}, "
                             f"shrink {self.shrink}")
        self.pad_beg, self.pad_end = p.pad_beg, p.pad_end
        if self.pad_beg > 0 or self.pad_end > 0:
            raise self.error(f"pad_beg and pad_end must be <= 0 (they crop), got {self.pad_beg}, {self.pad_end}")
        self._taps_key = None

    def out_size(self, eff):
        if self.shrink is not None and self.zoom is None:
            return (eff - 1) // self.shrink + 1
        if self.zoom is not None and self.shrink is None:
            return eff + (eff - 1) * (self.zoom - 1)
        if self.size is not None and (self.zoom is None or self.shrink is None):
            return None
        shrunk = (eff - 1) // self.shrink + 1
        return shrunk + (shrunk - 1) * (self.zoom - 1)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"bottom must be (N, C, H, W), got {shape_str(shape)}")
        eff = (shape[2] + self.pad_beg + self.pad_end, shape[3] + self.pad_beg + self.pad_end)
        if min(eff) <= 0:
            raise self.error(f"pad_beg {self.pad_beg} and pad_end {self.pad_end} crop bottom "
                             f"{shape_str(shape)} to nothing")
        out = tuple(self.out_size(e) for e in eff)
        if out[0] is None:
            out = self.size
        if min(out) <= 0:
            raise self.error(f"output size {out} must be positive (bottom {shape_str(shape)})")
        self.eff, self.out = eff, out
        key = (eff, out, bottom[0].data.dtype)
        if key != self._taps_key:
            self._taps_key = key
            self.rows, self.cols = interp_axis(eff[0], out[0]), interp_axis(eff[1], out[1])
            self.row_matrix = _taps_matrix(self.rows, eff[0], bottom[0].data.dtype)
            self.col_matrix = _taps_matrix(self.cols, eff[1], bottom[0].data.dtype)
        top[0].reshape(shape[:2] + out)

    def _crop(self, x):
        b = -self.pad_beg
        return x[:, :, b:b + self.eff[0], b:b + self.eff[1]]

    def forward(self, bottom, top):
        x = self._crop(bottom[0].data)
        if self.eff == self.out:
            top[0].data[...] = x
        else:
            _taps(_taps(x, self.cols, -1), self.rows, -2, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if self.eff != bottom[0].shape[2:]:
            dx[...] = 0
        dy = top[0].diff
        if self.eff == self.out:
            self._crop(dx)[...] = dy
        else:
            self._crop(dx)[...] = self.row_matrix.T @ dy @ self.col_matrix


@register("Upsample")
class Upsample(Layer):
    """SegNet's max-unpooling: bottoms (map, MAX-pooling mask); the top is zeros with each value
    at its mask index (h * W_out + w in its plane); backward gathers from those indices.
    Output size upsample_h/upsample_w, else scale (scale_h/scale_w) times the input, minus 1
    where pad_out_h/pad_out_w. With a single bottom (the YOLO forks' Upsample): nearest
    neighbour by the scale.
    """
    num_bottoms = (1, 2)
    num_tops = 1

    def setup(self, bottom, top):
        p = self.layer_param.upsample_param
        has_h, has_w = p.HasField("upsample_h"), p.HasField("upsample_w")
        if has_h != has_w:
            raise self.error("give both upsample_h and upsample_w, or neither")
        if p.HasField("scale_h") != p.HasField("scale_w"):
            raise self.error("give both scale_h and scale_w, or neither (or scale)")
        self.fixed = (p.upsample_h, p.upsample_w) if has_h else None
        if self.fixed is not None and min(self.fixed) <= 1:
            raise self.error(f"upsample_h and upsample_w must be > 1, got {self.fixed}")
        self.scale = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
        if self.fixed is None and min(self.scale) <= 1:
            raise self.error(f"scale must be > 1, got {self.scale}")
        self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
        for pad, s, axis in zip(self.pad_out, self.scale, "hw"):
            if pad and s != 2:
                raise self.error(f"pad_out_{axis} needs scale_{axis} 2 (the output size is ill-defined "
                                 f"otherwise), got {s}")
        if len(bottom) == 1 and (self.fixed is not None or any(self.pad_out)):
            raise self.error("without a mask bottom (nearest-neighbour upsampling) only scale applies; "
                             "upsample_h/upsample_w and pad_out need the pooling mask as bottom[1]")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"bottom {self.bottom_name(0)} must be (N, C, H, W), got {shape_str(shape)}")
        if len(bottom) > 1 and bottom[1].shape != shape:
            raise self.error(f"mask {self.bottom_name(1)} has shape {shape_str(bottom[1].shape)}, "
                             f"{self.bottom_name(0)} has {shape_str(shape)} (they must match)")
        out = self.fixed or tuple(s * n - pad for s, n, pad in zip(self.scale, shape[2:], self.pad_out))
        top[0].reshape(shape[:2] + tuple(out))

    def _indices(self, bottom, top):
        """Flat indices into the top of every bottom element, checked against the plane."""
        n, c, h, w = bottom[0].shape
        plane = top[0].shape[2] * top[0].shape[3]
        mask = bottom[1].data.reshape(n * c, h * w)
        idx = mask.astype(np.int64)
        bad = (idx < 0) | (idx >= plane)
        if bad.any():
            k = int(np.flatnonzero(bad.ravel())[0])
            raise self.error(f"mask index {mask.flat[k]:g} is outside the {top[0].shape[2]}x{top[0].shape[3]} "
                             "output plane; the scale or upsample_h/w must match the pooling that made the mask")
        return (idx + plane * np.arange(n * c)[:, None]).ravel()

    def forward(self, bottom, top):
        if len(bottom) == 1:
            sh, sw = self.scale
            top[0].data[...] = bottom[0].data.repeat(sh, axis=2).repeat(sw, axis=3)
            return
        self._idx = self._indices(bottom, top)
        y = top[0].data.reshape(-1)
        y[...] = 0
        y[self._idx] = bottom[0].data.reshape(-1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if len(bottom) == 1:
            n, c, h, w = bottom[0].shape
            sh, sw = self.scale
            bottom[0].diff[...] = top[0].diff.reshape(n, c, h, sh, w, sw).sum(axis=(3, 5))
            return
        bottom[0].diff.reshape(-1)[...] = top[0].diff.reshape(-1)[self._idx]

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0
