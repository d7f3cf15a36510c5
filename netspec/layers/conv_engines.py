"""Convolution's engines: one per column layout, each with its own forward and backward.

Convolution.reshape picks one per shape (`choose_engine`); forward and backward then
delegate to it. All do one grouped GEMM over the batch on im2col columns:

    ColumnConv      compiled im2col, samples side by side (C*K, N*P): 2-D small maps (native.py)
    BatchInnerConv  numpy's batch-inner layout (C*K, P*N): small maps, other cases
    PointwiseConv   1x1 kernel, stride 1, no pad: the stacked columns are the bottom itself
    DepthwiseConv   group == input channels (MobileNet): no columns and no GEMM, a direct sum
                    over the kernel taps per plane, compiled (2-D) or numpy's shifted views
    StackedConv     stacked (N, C*K, P), a part of the samples at a time; im2col/col2im by
                    the compiled kernels for 2-D when they are built (`window`), else numpy's

What forward leaves for backward is one thing in every engine: `kept_columns[i]`, the
columns of bottom i, kept when backward will run (`runs_backward`) and they fit
COLUMN_BUDGET; None means backward builds them again.
"""
import math

import numpy as np

from . import native
from ..threads import parallel_for, spans
from .base import scratch
from .im2col import COLUMN_BUDGET, add_weight_grad


def choose_engine(layer, dtype):
    """The engine for the layer's current geometry (layer.geom), kernel and dtype."""
    g = layer.geom
    compiled = layer.num_spatial == 2 and native.usable(dtype)
    if layer.depthwise:
        return DepthwiseConv(layer, compiled and native.has_depthwise())
    if g.batch_inner:
        return ColumnConv(layer) if compiled else BatchInnerConv(layer)
    if layer.pointwise:
        return PointwiseConv(layer)
    return StackedConv(layer, compiled)


class ConvEngine:
    """The loop over bottoms, and the bias: folded into the GEMM as a weight column (the columns
    then carry a ones row), or added to the top and summed from the top's diff."""

    def __init__(self, layer):
        self.layer, self.geom = layer, layer.geom
        self.fold_bias = layer.fold_bias
        self.kept_columns = {}

    def forward(self, bottom, top):
        layer, g = self.layer, self.geom
        w = layer.grouped_weights()
        bias = layer.blobs[1].data if layer.bias_term else None
        if self.fold_bias:
            w_ext = scratch(layer, "w_ext", (1, layer.num_output, g.rows + 1), bottom[0].data.dtype)
            w_ext[0, :, :-1] = w[0]
            w_ext[0, :, -1] = bias
            w, bias = w_ext, None
        for i, (b, t) in enumerate(zip(bottom, top)):
            y = t.data.reshape(g.num, layer.num_output, g.out_count)
            self.kept_columns[i] = self.forward_one(i, b, w, bias, y)

    def backward(self, top, propagate_down, bottom):
        layer, g = self.layer, self.geom
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy = t.diff.reshape(g.num, layer.num_output, g.out_count)
            if self.fold_bias:
                acc = scratch(layer, "w_ext_grad", (1, layer.num_output, g.rows + 1), dy.dtype)
                acc.fill(0)
            else:
                acc = layer.grouped_weight_diff()
                if layer.bias_term:
                    layer.blobs[1].diff += dy.sum(axis=(0, 2))
            dx = b.diff.reshape((g.num, g.channels) + g.spatial)
            self.backward_one(b, dy, acc, dx if propagate_down[i] else None, self.kept_columns.get(i))
            if self.fold_bias:
                layer.grouped_weight_diff()[0] += acc[0, :, :-1]
                layer.blobs[1].diff += acc[0, :, -1]

    def forward_one(self, i, b, w, bias, y):
        """y (N, M, P) <- w x columns of bottom b (plus bias, unless folded); returns the columns to keep."""
        raise NotImplementedError

    def backward_one(self, b, dy, weight_grad, dx, col):
        """weight_grad += dy x columns^T; dx (unless None) <- col2im(w^T dy). `col`: kept_columns or None."""
        raise NotImplementedError

    # -- numpy's column arrays (im2col.py) --
    def keeps_columns(self):
        return self.layer.runs_backward and self.geom.keeps_columns(self.geom.rows + 1)

    def col_buffer(self, name, num, dtype, shared=False):
        """Columns for `num` samples, with the ones row when the bias is folded; `shared`: from
        the pool all layers share (see scratch), for columns not kept past this call."""
        g = self.geom
        rows = g.rows + (1 if self.fold_bias else 0)
        shape = (rows, g.out_count * num) if g.batch_inner else (num, rows, g.out_count)
        if not shared:
            # The ones row is written once, when the buffer is made; im2col fills the rows above it.
            return scratch(self.layer, name, shape, dtype, fill=1)
        col = scratch(None, "conv_cols", shape, dtype)
        if self.fold_bias:
            if g.batch_inner:
                col[g.rows] = 1
            else:
                col[:, g.rows] = 1
        return col

    def im2col(self, image, col):
        g = self.geom
        g.im2col(image, col[:g.rows] if g.batch_inner else col[:, :g.rows])

    def bottom_image(self, b):
        g = self.geom
        return g.load_image(self.layer, "image", b.data.reshape((g.num, g.channels) + g.spatial))


class BatchInnerConv(ConvEngine):
    """numpy's batch-inner columns (C*K, P*N): one 2-D GEMM, the batch axis moved in and out."""

    def forward_one(self, i, b, w, bias, y):
        g, group = self.geom, self.layer.group
        keep = self.keeps_columns()
        col = self.col_buffer(f"col{i}", g.num, y.dtype, shared=not keep)
        self.im2col(self.bottom_image(b), col)
        out = g.out_cols(None, "conv_out", y)
        np.matmul(w, g.grouped(col, group), out=g.grouped(out, group))
        g.finish_cols(out, y, bias)
        return col if keep else None

    def backward_one(self, b, dy, acc, dx, col):
        g, group = self.geom, self.layer.group
        if col is None:   # columns not kept (no backward expected), or backward without a forward
            col = self.col_buffer(None, g.num, dy.dtype, shared=True)
            self.im2col(self.bottom_image(b), col)
        dt = g.grouped(g.as_cols(None, "conv_dtop", dy), group)
        add_weight_grad(dt, g.grouped(col, 1 if self.fold_bias else group), acc)
        if dx is not None:
            dimage = g.grad_image(None, "conv_dimage", dx)
            self._data_grad(dt, dimage, dy.dtype)
            g.store_image(dimage, dx)

    def _data_grad(self, dt, dimage, dtype):
        """dimage <- col2im(W^T dtop), a block of channels at a time so each block's columns stay in cache."""
        g = self.geom
        wt = self.layer.grouped_weights().transpose(0, 2, 1)        # (G, Kg, M/G)
        parts = g.channel_parts(self.layer.group)
        dimage.fill(0)
        for part in parts:
            if part != slice(None):                     # one group: rows of a block of channels
                wt_part = wt[:, part.start * g.kernel_count:part.stop * g.kernel_count]
            else:
                wt_part = wt
            shape = wt_part.shape[:2] + (dt.shape[-1],)
            if part is parts[0]:
                buf = scratch(None, "conv_dcol", (math.prod(shape),), dtype)
            dcol = buf[:math.prod(shape)].reshape(shape)
            np.matmul(wt_part, dt, out=dcol)
            g.add_windows(dcol, dimage[part])


class StackedConv(ConvEngine):
    """Stacked columns (N, C*K, P): np.matmul over the samples reads and writes NCHW directly,
    a part of the samples at a time so each part's columns are still in cache for its GEMM.
    `window` (2-D, kernels built): im2col straight from the bottom and col2im straight into
    its diff by the compiled kernels, with no padded image buffer."""

    def __init__(self, layer, compiled):
        super().__init__(layer)
        g = self.geom
        self.window = native.window_geometry(g.channels, g.spatial, g.kernel, g.stride, g.pad, g.dilation,
                                             g.out) if compiled else None

    def stacked_im2col(self, b, image, cols, part):
        """cols (samples, rows [+1], positions) <- the columns of the samples in `part`: compiled,
        straight from the unpadded bottom (image None), or numpy's from the image buffer."""
        g = self.geom
        if image is None:
            x = b.data.reshape((g.num, g.channels) + g.spatial)
            native.kernels.im2col(x, cols, self.window, part.start, part.stop, g.out_count,
                                  cols.shape[1] * g.out_count)
        else:
            self.im2col(image[part], cols)

    def forward_one(self, i, b, w, bias, y):
        g, group = self.geom, self.layer.group
        keep = self.keeps_columns()
        image = self.bottom_image(b) if self.window is None else None
        parts = g.sample_parts()
        col = self.col_buffer(f"col{i}", g.num if keep else parts[0].stop, y.dtype, shared=not keep)
        for part in parts:
            cols = col[part] if keep else col[:part.stop - part.start]
            self.stacked_im2col(b, image, cols, part)
            np.matmul(w, g.grouped(cols, group), out=g.grouped(y[part], group))
        if bias is not None:
            y += bias[:, None]
        return col if keep else None

    def backward_one(self, b, dy, acc, dx, col):
        g, group = self.geom, self.layer.group
        dtype = dy.dtype
        compiled = self.window is not None      # col2im straight into dx
        dimage = g.grad_image(None, "conv_dimage", dx) if dx is not None and not compiled else None
        rebuild = col is None       # columns not kept: build each part's again
        image = self.bottom_image(b) if rebuild and not compiled else None
        parts = g.sample_parts()
        if dimage is not None:
            dimage.fill(0)
        if dx is not None:
            wt = self.layer.grouped_weights().transpose(0, 2, 1)     # (G, Kg, M/G)
            dcol = scratch(None, "conv_dcol", (parts[0].stop, g.rows, g.out_count), dtype)
        for part in parts:
            if rebuild:
                cols = self.col_buffer(None, parts[0].stop, dtype, shared=True)[:part.stop - part.start]
                self.stacked_im2col(b, image, cols, part)
            else:
                cols = col[part]
            dt = g.grouped(dy[part], group)
            add_weight_grad(dt, g.grouped(cols, 1 if self.fold_bias else group), acc)
            if dx is not None:
                d = dcol[:part.stop - part.start]
                np.matmul(wt, dt, out=g.grouped(d, group))
                if compiled:
                    native.kernels.col2im(d, dx, self.window, part.start, part.stop, g.out_count,
                                          g.rows * g.out_count)
                else:
                    g.add_windows(d, dimage[part])
        if dimage is not None:
            g.store_image(dimage, dx)


class PointwiseConv(StackedConv):
    """1x1 kernel, stride 1, no pad: the stacked columns are the bottom itself, never built or kept."""

    def __init__(self, layer):
        super().__init__(layer, compiled=False)

    def columns(self, b):
        g = self.geom
        return self.bottom_image(b).reshape(g.num, g.channels, g.out_count)

    def forward_one(self, i, b, w, bias, y):
        group = self.layer.group
        np.matmul(w, self.geom.grouped(self.columns(b), group), out=self.geom.grouped(y, group))
        if bias is not None:
            y += bias[:, None]
        return None

    def backward_one(self, b, dy, acc, dx, col):
        g, group = self.geom, self.layer.group
        dt = g.grouped(dy, group)
        add_weight_grad(dt, g.grouped(self.columns(b), group), acc)
        if dx is not None:      # the data gradient's columns are dx itself: written by the GEMM
            wt = self.layer.grouped_weights().transpose(0, 2, 1)
            np.matmul(wt, dt, out=g.grouped(dx.reshape(g.num, g.channels, g.out_count), group))


class ColumnConv(ConvEngine):
    """Compiled columns with the samples side by side, (C*K [+1], N*P): im2col reads NCHW and
    col2im writes it, so the only layout move left is the GEMM output's (M, N, P) -> (N, M, P).
    Past `part_budget` elements of columns the batch goes in parts of samples, and backward
    builds each part's columns again."""

    part_budget = COLUMN_BUDGET

    def __init__(self, layer):
        super().__init__(layer)
        g = self.geom
        self.window = native.window_geometry(g.channels, g.spatial, g.kernel, g.stride, g.pad, g.dilation, g.out)
        width = g.rows + (1 if self.fold_bias else 0)
        step = max(1, self.part_budget // (width * g.out_count))
        self.parts = [(n, min(g.num, n + step)) for n in range(0, g.num, step)]

    def _columns(self, owner, name, x, n0, n1):
        """The columns of samples [n0, n1) of x, with the ones row when the bias is folded;
        kept on `owner` as `name`, or (owner None) in the shared work pool."""
        g = self.geom
        shape = (g.rows + (1 if self.fold_bias else 0), (n1 - n0) * g.out_count)
        col = scratch(owner, name, shape, x.dtype)
        native.kernels.im2col(x, col, self.window, n0, n1, shape[1], g.out_count)
        if self.fold_bias:
            col[-1] = 1
        return col

    def _grouped(self, a):
        group = self.layer.group
        return a.reshape(group, a.shape[0] // group, a.shape[1])

    def forward_one(self, i, b, w, bias, y):
        g, num_output = self.geom, self.layer.num_output
        x = b.data.reshape((g.num, g.channels) + g.spatial)
        keep = self.layer.runs_backward and len(self.parts) == 1
        for n0, n1 in self.parts:
            col = self._columns(self.layer, f"col{i}", x, n0, n1) if keep else \
                self._columns(None, "conv_cols", x, n0, n1)
            out = scratch(None, "conv_out", (num_output, col.shape[1]), x.dtype)
            np.matmul(w, self._grouped(col), out=self._grouped(out))
            np.copyto(y[n0:n1], out.reshape(num_output, n1 - n0, g.out_count).transpose(1, 0, 2))
        if bias is not None:
            y += bias[:, None]
        return col if keep else None

    def backward_one(self, b, dy, acc, dx, col):
        g, num_output = self.geom, self.layer.num_output
        x = b.data.reshape((g.num, g.channels) + g.spatial)
        wt = self.layer.grouped_weights().transpose(0, 2, 1)
        for n0, n1 in self.parts:
            if col is None or len(self.parts) > 1:
                col = self._columns(None, "conv_cols", x, n0, n1)
            dt = scratch(None, "conv_dtop", (num_output, col.shape[1]), dy.dtype)
            np.copyto(dt.reshape(num_output, n1 - n0, g.out_count), dy[n0:n1].transpose(1, 0, 2))
            dt_g = self._grouped(dt)
            add_weight_grad(dt_g, self._grouped(col), acc)
            if dx is not None:
                dcol = scratch(None, "conv_dcol", (g.rows, col.shape[1]), dy.dtype)
                np.matmul(wt, dt_g, out=self._grouped(dcol))
                native.kernels.col2im(dcol, dx, self.window, n0, n1, col.shape[1], g.out_count)


class DepthwiseConv(ConvEngine):
    """group == input channels: output channel o is input channel o // m (m = num_output / channels)
    convolved with its own kernel. As a grouped GEMM that is C GEMMs of one row each over im2col
    columns; summed directly over the taps it reads the bottom once per tap and builds nothing.
    The sum runs over the taps in row-major order, padding skipped, then adds the bias, as
    Caffe's GEMM does up to its own order of the K terms. Nothing is kept for backward."""

    def __init__(self, layer, compiled):
        super().__init__(layer)
        g = self.geom
        self.multiplier = layer.num_output // g.channels
        self.window = native.window_geometry(g.channels, g.spatial, g.kernel, g.stride, g.pad, g.dilation,
                                             g.out) if compiled else None

    def _flat_weights(self, w):
        return w.reshape(self.layer.num_output, self.geom.kernel_count)

    # Elements of work (outputs x taps) per chunk handed to the threads: enough that a chunk's
    # cost dwarfs its dispatch, by the shape alone. Every item's result is independent of the
    # chunking (planes and channels are whole), so any thread count gives the same bytes.
    chunk_work = 1 << 18

    def _split(self, kernel, items, *args):
        """kernel(*args, start, stop) over [0, items) in chunks, on netspec's threads."""
        g = self.geom
        work = g.num * self.layer.num_output * g.out_count * g.kernel_count
        parts = spans(items, min(64, max(1, work // self.chunk_work)))
        parallel_for(len(parts), lambda k: kernel(*args, *parts[k]))

    def forward_one(self, i, b, w, bias, y):
        g = self.geom
        if self.window is not None:
            self._split(native.kernels.depthwise_forward, g.num * self.layer.num_output, b.data,
                        self._flat_weights(w), bias, y, self.window, self.multiplier, g.num)
            return None
        image = self._input_per_output(self.bottom_image(b))
        taps = self._flat_weights(w)
        out = y.reshape((g.num, self.layer.num_output) + g.out)
        out.fill(0)
        for t, offset in enumerate(g.offsets):
            out += taps[:, t].reshape((-1,) + (1,) * len(g.spatial)) * g.window(image, offset)
        if bias is not None:
            y += bias[:, None]
        return None

    def backward_one(self, b, dy, acc, dx, col):
        g, num_output = self.geom, self.layer.num_output
        w = self._flat_weights(self.layer.grouped_weights())
        dw = acc.reshape(num_output, g.kernel_count)
        if self.window is not None:
            self._split(native.kernels.depthwise_backward_weights, num_output, dy, b.data, None, dw, self.window,
                        self.multiplier, g.num)
            if dx is not None:
                self._split(native.kernels.depthwise_backward_data, g.num * g.channels, dy, w, None, dx, self.window,
                            self.multiplier, g.num)
            return
        image = self._input_per_output(self.bottom_image(b))
        grad = dy.reshape((g.num, num_output) + g.out)
        per_tap = (1,) * len(g.spatial)
        for t, offset in enumerate(g.offsets):
            dw[:, t] += (grad * g.window(image, offset)).sum(axis=(0,) + tuple(range(2, 2 + len(g.spatial))),
                                                             dtype=np.float64).astype(dw.dtype)
        if dx is None:
            return
        dimage = g.grad_image(None, "conv_dimage", dx)
        dimage.fill(0)
        m = self.multiplier
        for t, offset in enumerate(g.offsets):
            part = w[:, t].reshape((-1,) + per_tap) * grad            # (N, C * m, *out)
            if m > 1:
                part = part.reshape((g.num, g.channels, m) + g.out).sum(axis=2)
            g.window(dimage, offset)[...] += part
        g.store_image(dimage, dx)

    def _input_per_output(self, image):
        """The (padded) bottom with each input channel repeated for its m outputs."""
        return image if self.multiplier == 1 else np.repeat(image, self.multiplier, axis=1)
