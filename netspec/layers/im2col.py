"""im2col/col2im for (de)convolution: the column layouts and the kernels that fill and fold them.

Convolution is one GEMM over the whole batch on a column array with one row per
(channel, kernel offset) and one column per (sample, output position), in one of two
layouts, picked per layer shape by ConvGeometry:

    batch-inner  (C*K, P*N)   image buffer (C, *padded, N)   copy runs of out_w*N elements
    stacked      (N, C*K, P)  image buffer (N, C, *padded)   copy runs of out_w elements

numpy pays a fixed cost per innermost run, so small feature maps (LeNet's 8x8) go
batch-inner: one 2-D GEMM, at the price of moving the batch axis in and out. Big maps
go stacked: np.matmul over the sample axis reads and writes NCHW directly, no transposes.
Pooling's kernels are in window_pool.py.
"""
import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..threads import spans
from .base import scratch

# Below this output width, batch-inner columns are used (see the module docstring).
BATCH_INNER_MAX_WIDTH = 16
# Largest column array (elements) kept from forward for backward; past it (stacked only)
# columns are built one part at a time, in forward and again in backward, as Caffe does.
COLUMN_BUDGET = 1 << 25
# Elements of dcol produced and folded back at a time in the data gradient (8 MB of float32):
# bounds the buffer; smaller parts bought nothing measurable in cache locality.
COL2IM_PART = 1 << 21
# Rows per block when moving the batch axis to the front: keeps the strided reads in L1.
_TRANSPOSE_BLOCK = 64


def conv_out_size(size, kernel, stride, pad, dilation):
    """Caffe's convolution output length: (size + 2p - (d(k-1)+1)) / s + 1, rounded down."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


# ---- convolution ---------------------------------------------------------------------------

def add_weight_grad(dy, x, acc):
    """acc (G, A, B) += dy (.., G, A, L) x (.., G, B, L)^T, summed over any leading sample axis."""
    if dy.ndim == 3:
        # One GEMM; (x dy^T)^T is the faster orientation for these shapes (LeNet's conv2
        # weight gradient: 1.3 vs 1.8 ms).
        acc += np.matmul(x, dy.transpose(0, 2, 1)).transpose(0, 2, 1)
    elif dy.shape[1] == 1 and dy.shape[-1] < 256:
        # Few positions per sample (ResNet's 7x7 maps): one GEMM over (sample, position) pairs
        # beats a GEMM per sample and their sum (res5's 1x1 convolutions: 5.3 vs 14.5 ms).
        acc[0] += np.tensordot(dy[:, 0], x[:, 0], axes=([0, 2], [0, 2]))
    else:
        # A GEMM per sample, each added to acc in sample order, as (x dy^T)^T:
        # 77 -> 93 GF/s on ResNet-50's 56x56 3x3 layer (dy 64 x 3136, x 576 x 3136), 68 -> 74 on
        # its conv1, and no (samples, G, A, B) temporary.
        part = None
        for s in range(dy.shape[0]):
            part = np.matmul(x[s], dy[s].transpose(0, 2, 1), out=part)
            acc += part.transpose(0, 2, 1)


def batch_last_to_first(src, dst):
    """dst (N, R) = src (R, N).T, blocked: a plain strided copy thrashes the cache when R is large."""
    rows, num = src.shape
    if rows * num < 65536:
        np.copyto(dst, src.T)
        return
    for r in range(0, rows, _TRANSPOSE_BLOCK):
        np.copyto(dst[:, r:r + _TRANSPOSE_BLOCK], src[r:r + _TRANSPOSE_BLOCK].T)


class ConvGeometry:
    """One im2col problem: an image (N, C, *spatial) seen through kernel/stride/pad/dilation.

    For Convolution the image is the bottom; for Deconvolution it is the top. Column
    arrays ("cols") hold one row per channel (or channel x kernel offset) and one column
    per (sample, position): (C, L) batch-inner, (N, C, P) stacked.
    """

    def __init__(self, num, channels, spatial, kernel, stride, pad, dilation, batch_inner=None):
        self.num, self.channels = int(num), int(channels)
        self.spatial, self.kernel = tuple(spatial), tuple(kernel)
        self.stride, self.pad, self.dilation = tuple(stride), tuple(pad), tuple(dilation)
        self.out = tuple(conv_out_size(*a) for a in zip(spatial, kernel, stride, pad, dilation))
        self.padded = tuple(s + 2 * p for s, p in zip(spatial, pad))
        self.kernel_count = math.prod(self.kernel)
        self.out_count = math.prod(self.out)
        self.rows = self.channels * self.kernel_count
        if batch_inner is None:
            batch_inner = (self.num > 1 and self.out[-1] < BATCH_INNER_MAX_WIDTH
                           and self.rows * self.out_count * self.num <= COLUMN_BUDGET)
        self.batch_inner = batch_inner
        self.has_pad = any(self.pad)
        self.offsets = list(itertools.product(*(range(k) for k in self.kernel)))

    # -- column arrays --
    def cols_shape(self, rows, positions):
        return (rows, positions * self.num) if self.batch_inner else (self.num, rows, positions)

    def grouped(self, cols, groups):
        """cols split by row groups: (G, R/G, L) or (N, G, R/G, P), ready for np.matmul with (G, ., .) weights."""
        if self.batch_inner:
            return cols.reshape(groups, cols.shape[0] // groups, cols.shape[1])
        return cols.reshape(cols.shape[0], groups, cols.shape[1] // groups, cols.shape[2])

    def as_cols(self, owner, name, x):
        """NCHW-like x (N, C, P) as a column array: x itself when stacked, else a transposed copy."""
        if not self.batch_inner:
            return x
        num, rows, positions = x.shape
        cols = scratch(owner, name, self.cols_shape(rows, positions), x.dtype)
        np.copyto(cols.reshape(rows * positions, num), x.reshape(num, -1).T)
        return cols

    def out_cols(self, owner, name, y):
        """Where a GEMM should write the column array of NCHW-like y (N, C, P); then call finish_cols."""
        if not self.batch_inner:
            return y
        return scratch(owner, name, self.cols_shape(y.shape[1], y.shape[2]), y.dtype)

    def finish_cols(self, cols, y, bias=None):
        """Move a column array into y (N, C, P), adding bias[c] (cols may be modified)."""
        if bias is not None:
            cols += bias[:, None] if self.batch_inner else bias[None, :, None]
        if self.batch_inner:
            batch_last_to_first(cols.reshape(-1, self.num), y.reshape(self.num, -1))

    # -- images --
    @property
    def image_shape(self):
        if self.batch_inner:
            return (self.channels,) + self.padded + (self.num,)
        return (self.num, self.channels) + self.padded

    def _spatial_index(self, spatial_slices):
        if self.batch_inner:
            return (slice(None),) + tuple(spatial_slices) + (slice(None),)
        return (slice(None), slice(None)) + tuple(spatial_slices)

    def interior(self, image):
        """The unpadded part of an image buffer (a view)."""
        return image[self._spatial_index(slice(p, p + s) for p, s in zip(self.pad, self.spatial))]

    def window(self, image, offset):
        """The image positions kernel offset `offset` touches, one per output position (a view)."""
        return image[self._spatial_index(
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offset, self.dilation, self.stride, self.out))]

    def load_image(self, owner, name, x):
        """The image for NCHW-like x (N, C, *spatial): x itself when no copy is needed, else a buffer."""
        if not self.batch_inner and not self.has_pad:
            return x
        image = scratch(owner, name, self.image_shape, x.dtype, fill=0)
        if not self.batch_inner:
            np.copyto(self.interior(image), x)
        elif not self.has_pad:
            np.copyto(image.reshape(-1, self.num), x.reshape(self.num, -1).T)
        else:
            np.copyto(self.interior(image), np.moveaxis(x, 0, -1))
        return image

    def grad_image(self, owner, name, dx):
        """Where col2im should write the gradient of x: dx itself when the layouts agree."""
        if not self.batch_inner and not self.has_pad:
            return dx
        return scratch(owner, name, self.image_shape, dx.dtype)

    def store_image(self, image, out):
        """Write the interior of an image buffer into NCHW-like out (N, C, *spatial)."""
        if image is out:
            return
        if not self.batch_inner:
            np.copyto(out, self.interior(image))
        elif not self.has_pad:
            batch_last_to_first(image.reshape(-1, self.num), out.reshape(self.num, -1))
        else:
            inner = self.interior(image)
            for c in range(self.channels):
                np.copyto(out[:, c], np.moveaxis(inner[c], -1, 0))

    # -- im2col / col2im --
    def col_view(self, image):
        """image as (C, *kernel, *out, N) or (N, C, *kernel, *out), without copying."""
        st = image.strides
        if self.batch_inner:
            s_c, s_sp, s_n = st[0], st[1:-1], st[-1]
        else:
            s_n, s_c, s_sp = st[0], st[1], st[2:]
        k_strides = tuple(d * s for d, s in zip(self.dilation, s_sp))
        o_strides = tuple(t * s for t, s in zip(self.stride, s_sp))
        if self.batch_inner:
            shape = (self.channels,) + self.kernel + self.out + (image.shape[-1],)
            strides = (s_c,) + k_strides + o_strides + (s_n,)
        else:   # image may be a slice of the samples
            shape = (image.shape[0], self.channels) + self.kernel + self.out
            strides = (s_n, s_c) + k_strides + o_strides
        return as_strided(image, shape, strides, writeable=False)

    def im2col(self, image, col):
        """col (column array with C*prod(kernel) rows, possibly a row slice) <- every kernel window of image."""
        view = self.col_view(image)
        target = col.reshape(view.shape)       # only splits axes, so always a view of col
        assert np.may_share_memory(target, col)
        np.copyto(target, view)

    def col2im(self, col, image):
        """image <- the columns added back at their windows (image is overwritten)."""
        image.fill(0)
        self.add_windows(col, image)

    def add_windows(self, col, image):
        """image += col put back at its windows: one strided add per kernel offset over the whole batch.

        `image` may be a leading slice of the image (channels batch-inner, samples stacked)
        with `col` the matching rows.
        """
        if self.batch_inner:
            blocks = col.reshape((image.shape[0], self.kernel_count) + self.out + (self.num,))
        else:
            blocks = col.reshape((image.shape[0], self.channels, self.kernel_count) + self.out)
        for k, offset in enumerate(self.offsets):
            window = self.window(image, offset)
            window += blocks[:, k] if self.batch_inner else blocks[:, :, k]

    def channel_parts(self, groups):
        """Batch-inner: channel slices whose columns hold about COL2IM_PART elements, so a GEMM
        can produce them and add_windows fold them back while they are in cache."""
        if groups != 1:
            return [slice(None)]
        step = max(1, COL2IM_PART // (self.kernel_count * self.num * self.out_count))
        return [slice(c, min(self.channels, c + step)) for c in range(0, self.channels, step)]

    def sample_parts(self, at_least=1):
        """Stacked: even sample slices whose columns hold at most about COL2IM_PART elements (kept
        in cache), and at least `at_least` of them (as the batch allows), the first the largest;
        one empty slice for an empty batch, so callers always have a first part to size by."""
        step = max(1, COL2IM_PART // max(1, self.rows * self.out_count))
        count = max(-(-self.num // step), min(self.num, at_least))
        return [slice(a, b) for a, b in spans(self.num, count)]

    def keeps_columns(self, rows):
        """Whether the whole batch's columns (rows x positions x samples) fit COLUMN_BUDGET;
        if not (stacked only), they are built part by part, again in backward."""
        return self.batch_inner or self.num * rows * self.out_count <= COLUMN_BUDGET
