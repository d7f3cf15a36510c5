"""ROIPooling (Fast/Faster R-CNN, rbgirshick/caffe-fast-rcnn): max pooling of each region of
interest into a fixed pooled_h x pooled_w grid.

Caffe's arithmetic, in the blob's dtype: each roi coordinate times spatial_scale is rounded
half away from zero (C's round), the roi spans max(end - start + 1, 1) cells, bin (ph, pw)
covers rows floor(ph * h / pooled_h) .. ceil((ph + 1) * h / pooled_h) from the roi start,
clipped to the map. A bin's value is its maximum (the first one in row-major order among
ties), or 0 for an empty bin; backward routes each top diff to that argmax (`argmax_`).
"""
import numpy as np

from . import native
from .base import Layer, register, shape_str


def c_round(x):
    """C's round(): halves away from zero (numpy's round goes to the even neighbour)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def roi_bins(rois, spatial_scale, pooled_h, pooled_w, height, width, dtype):
    """Per roi: batch index and the clipped [start, end) rows and columns of every bin.

    Returns (batch (R,), hstart, hend (R, pooled_h), wstart, wend (R, pooled_w)), all int.
    """
    rois = np.asarray(rois, dtype)
    scale = dtype(spatial_scale)
    batch = rois[:, 0].astype(np.int64)
    x1, y1, x2, y2 = (c_round(rois[:, k] * scale).astype(np.int64) for k in range(1, 5))
    roi_h = np.maximum(y2 - y1 + 1, 1).astype(dtype)
    roi_w = np.maximum(x2 - x1 + 1, 1).astype(dtype)

    def edges(size, pooled, start, limit):
        step = (size / dtype(pooled))[:, None]
        cells = np.arange(pooled, dtype=dtype)[None]
        lo = np.floor(cells * step).astype(np.int64) + start[:, None]
        hi = np.ceil((cells + 1) * step).astype(np.int64) + start[:, None]
        return np.clip(lo, 0, limit), np.clip(hi, 0, limit)

    hstart, hend = edges(roi_h, pooled_h, y1, height)
    wstart, wend = edges(roi_w, pooled_w, x1, width)
    return batch, hstart, hend, wstart, wend


def roi_pool_forward(x, rois, spatial_scale, pooled_h, pooled_w):
    """x (N, C, H, W), rois (R, 5) -> (top (R, C, pooled_h, pooled_w), argmax flat h * W + w, -1 if empty).

    The bins come from roi_bins; the scan over them is the compiled kernel when built (one
    pass over each bin), else numpy passes per roi (roi_pool_numpy).
    """
    n, c, height, width = x.shape
    bins = roi_bins(rois, spatial_scale, pooled_h, pooled_w, height, width, x.dtype.type)
    kernel = getattr(native.kernels, "roi_pool", None)
    if not (native.usable(x.dtype) and kernel and x.flags.c_contiguous):
        return roi_pool_numpy(x, bins, pooled_h, pooled_w)
    packed = np.concatenate([bins[0][:, None]] + list(bins[1:]), axis=1).astype(np.int32)
    top = np.empty((len(packed), c, pooled_h, pooled_w), x.dtype)
    argmax = np.empty(top.shape, np.int32)
    kernel(x, top, argmax, packed, len(packed), c, height, width, pooled_h, pooled_w)
    return top, argmax


def roi_pool_numpy(x, bins, pooled_h, pooled_w):
    n, c, height, width = x.shape
    batch, hstart, hend, wstart, wend = bins
    r = len(batch)
    top = np.zeros((r, c, pooled_h, pooled_w), x.dtype)
    argmax = np.full((r, c, pooled_h, pooled_w), -1, np.int64)
    for i in range(r):
        plane = x[batch[i]]
        # Columns first: per bin column the max (and its first column) over every row of the
        # roi's span; then per bin row the first row holding the max. Together: the first
        # maximum in row-major order, as Caffe's scan with a strict `>` finds it.
        rows = slice(hstart[i, 0], hend[i, -1]) if hend[i, -1] > hstart[i, 0] else slice(0, 0)
        col_max = np.empty((c, rows.stop - rows.start, pooled_w), x.dtype)
        col_arg = np.zeros((c, rows.stop - rows.start, pooled_w), np.int64)
        col_ok = wend[i] > wstart[i]
        for pw in np.flatnonzero(col_ok):
            block = plane[:, rows, wstart[i, pw]:wend[i, pw]]
            col_arg[:, :, pw] = block.argmax(axis=2) + wstart[i, pw]
            col_max[:, :, pw] = block.max(axis=2)
        for ph in range(pooled_h):
            h0, h1 = hstart[i, ph] - rows.start, hend[i, ph] - rows.start
            if h1 <= h0:
                continue
            block = col_max[:, h0:h1][:, :, col_ok]
            best = block.argmax(axis=1)
            top[i, :, ph, col_ok] = np.take_along_axis(block, best[:, None], axis=1)[:, 0].T
            cols = np.take_along_axis(col_arg[:, h0:h1][:, :, col_ok], best[:, None], axis=1)[:, 0]
            argmax[i, :, ph, col_ok] = ((best + hstart[i, ph]) * width + cols).T
    return top, argmax


def roi_pool_backward(dtop, argmax, rois_batch, x_shape):
    """Sum each top diff into its argmax cell of the roi's image (empty bins add nothing)."""
    n, c, height, width = x_shape
    plane = height * width
    offset = (rois_batch[:, None] * c + np.arange(c)[None]) * plane      # (R, C): start of each map
    flat = argmax + offset[:, :, None, None]
    valid = argmax >= 0
    summed = np.bincount(flat[valid], weights=dtop[valid], minlength=n * c * plane)
    return summed.reshape(x_shape)


@register("ROIPooling")
class ROIPooling(Layer):
    """bottom[0]: feature map (N, C, H, W); bottom[1]: rois (R, 5) [batch index, x1, y1, x2, y2]
    in image pixels. top: (R, C, pooled_h, pooled_w)."""
    num_bottoms = 2
    num_tops = 1

    def setup(self, bottom, top):
        p = self.layer_param.roi_pooling_param
        self.pooled_h, self.pooled_w, self.spatial_scale = p.pooled_h, p.pooled_w, p.spatial_scale
        if self.pooled_h <= 0 or self.pooled_w <= 0:
            raise self.error(f"pooled_h and pooled_w must be positive, got {self.pooled_h} x {self.pooled_w}")
        self.argmax_ = None

    def reshape(self, bottom, top):
        x, rois = bottom[0].shape, bottom[1].shape
        if len(x) != 4:
            raise self.error(f"bottom {self.bottom_name(0)} must be (N, C, H, W), got {shape_str(x)}")
        if len(rois) < 2 or rois[-1] != 5 or np.prod(rois[1:]) != 5:
            raise self.error(f"bottom {self.bottom_name(1)} must hold rois as (R, 5) [batch, x1, y1, x2, y2], "
                             f"got {shape_str(rois)}")
        top[0].reshape((rois[0], x[1], self.pooled_h, self.pooled_w))

    def forward(self, bottom, top):
        rois = bottom[1].data.reshape(-1, 5)
        batch = rois[:, 0]
        if not np.isfinite(rois).all():
            i = int(np.flatnonzero(~np.isfinite(rois).all(axis=1))[0])
            raise self.error(f"roi {i} is not finite: {rois[i].tolist()}")
        bad = (batch < 0) | (batch >= bottom[0].shape[0]) | (batch != np.floor(batch))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise self.error(f"roi {i} has batch index {batch[i]:g}; bottom {self.bottom_name(0)} holds "
                             f"{bottom[0].shape[0]} images")
        top[0].data[...], self.argmax_ = roi_pool_forward(bottom[0].data, rois, self.spatial_scale,
                                                          self.pooled_h, self.pooled_w)
        self._batch = batch.astype(np.int64)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = roi_pool_backward(top[0].diff, self.argmax_, self._batch, bottom[0].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0        # rois are coordinates, not differentiable here (Caffe: no backward)
