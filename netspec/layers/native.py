"""The compiled kernels of netspec/_native.c (here `kernels`) and the 2-D convolution on them.

pip builds the extension when the machine has a C compiler; without it, or with
NETSPEC_NATIVE=0 in the environment, every layer keeps its numpy path (im2col.py,
window_pool.py), which the tests hold the compiled one to.

Compiled convolution keeps Caffe's column layout, one row per (channel, kernel offset),
with the samples side by side: (C*kh*kw, N*P). im2col reads NCHW directly and col2im
writes it, so the only layout moves left are the GEMM output's (M, N, P) -> (N, M, P).
"""
import os

import numpy as np

from .base import scratch
from .im2col import add_weight_grad

try:
    from .. import _native as kernels
    if getattr(kernels, "ABI", None) != 3:     # a stale build from older sources
        kernels = None
except ImportError:
    kernels = None

# Read by layers when they are shaped; tests switch it off to run the numpy paths.
ENABLED = kernels is not None and os.environ.get("NETSPEC_NATIVE", "1") != "0"
# Largest column array (elements) for one GEMM; past it the batch goes in parts of samples,
# and backward builds each part's columns again instead of keeping them.
COLUMN_BUDGET = 1 << 25


def usable(dtype):
    return ENABLED and np.dtype(dtype) in (np.float32, np.float64)


def window_geometry(channels, size, kernel, stride, pad, dilation, out):
    """The geometry tuple the kernels take: (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)."""
    return tuple(int(v) for v in (channels, *size, *kernel, *stride, *pad, *dilation, *out))


def channel_affine(x, y, a, b, standardise):
    """y = (x - a[c]) / b[c] if standardise else x * a[c] + b[c], over x and y of shape (outer, C, inner)."""
    outer, channels, inner = x.shape
    kernels.channel_affine(x, y, a, b, outer, channels, inner, standardise)


def channel_sums(dy, x):
    """(sum of dy, sum of dy * x) per channel of (outer, C, inner) arrays, as float64 arrays."""
    outer, channels, inner = dy.shape
    sums = np.empty((2, channels))
    kernels.channel_sums(dy, x, sums[0], sums[1], outer, channels, inner)
    return sums


class ColumnConv:
    """One 2-D convolution's im2col + GEMM, forward and backward, over NCHW arrays.

    `fold_bias`: the columns carry a ones row and the weights a bias column (group 1 only),
    so the bias rides in the GEMM, as in the numpy path.
    """

    def __init__(self, num, channels, spatial, kernel, stride, pad, dilation, out, num_output, group, fold_bias):
        self.num, self.channels, self.num_output, self.group = num, channels, num_output, group
        self.geom = window_geometry(channels, spatial, kernel, stride, pad, dilation, out)
        self.positions = int(out[0] * out[1])
        self.rows = channels * int(kernel[0] * kernel[1])
        self.fold_bias = fold_bias
        width = self.rows + (1 if fold_bias else 0)
        step = max(1, COLUMN_BUDGET // (width * self.positions))
        self.parts = [(n, min(num, n + step)) for n in range(0, num, step)]

    @property
    def whole_batch(self):
        return len(self.parts) == 1

    def _columns(self, owner, name, x, n0, n1):
        """The columns of samples [n0, n1) of x, with the ones row when the bias is folded;
        kept on `owner` as `name`, or (owner None) in the shared work pool."""
        rows = self.rows + (1 if self.fold_bias else 0)
        shape = (rows, (n1 - n0) * self.positions)
        col = scratch(owner, name, shape, x.dtype)
        kernels.im2col(x, col, self.geom, n0, n1, shape[1], self.positions)
        if self.fold_bias:
            col[-1] = 1
        return col

    def _grouped(self, a):
        return a.reshape(self.group, a.shape[0] // self.group, a.shape[1])

    def forward(self, owner, name, x, w, y, keep):
        """y (N, M, P) = w (G, M/G, K/G [+1]) * columns of x (N, C, H, W); returns the columns
        when `keep` and the batch is one part (backward then reuses them), else None."""
        keep = keep and self.whole_batch
        for n0, n1 in self.parts:
            col = self._columns(owner, name, x, n0, n1) if keep else self._columns(None, "conv_cols", x, n0, n1)
            out = scratch(None, "conv_out", (self.num_output, col.shape[1]), x.dtype)
            np.matmul(w, self._grouped(col), out=self._grouped(out))
            np.copyto(y[n0:n1], out.reshape(self.num_output, n1 - n0, self.positions).transpose(1, 0, 2))
        return col if keep else None

    def backward(self, x, w, dy, weight_grad, dx, col=None):
        """weight_grad (G, M/G, K/G [+1]) += dy x columns^T; dx (if not None) = col2im(w^T dy).

        `w` is without the bias column; `col` is what forward kept, if anything.
        """
        wt = w.transpose(0, 2, 1)
        for n0, n1 in self.parts:
            if col is None or not self.whole_batch:
                col = self._columns(None, "conv_cols", x, n0, n1)
            dt = scratch(None, "conv_dtop", (self.num_output, col.shape[1]), dy.dtype)
            np.copyto(dt.reshape(self.num_output, n1 - n0, self.positions), dy[n0:n1].transpose(1, 0, 2))
            dt_g = self._grouped(dt)
            add_weight_grad(dt_g, self._grouped(col), weight_grad)
            if dx is not None:
                dcol = scratch(None, "conv_dcol", (self.rows, col.shape[1]), dy.dtype)
                np.matmul(wt, dt_g, out=self._grouped(dcol))
                kernels.col2im(dcol, dx, self.geom, n0, n1, col.shape[1], self.positions)
