"""Convolution's engines: one per column layout, each with its own forward and backward.

Convolution.reshape picks one per shape (conv.choose_engine); forward and backward then
delegate to it. All but the depthwise one do one grouped GEMM over the batch on im2col columns:

    StackedConv     stacked (N, C*K, P), a part of the samples at a time; im2col/col2im by
                    the compiled kernels for 2-D when they are built (`window`), else numpy's
    PointwiseConv   1x1 kernel, stride 1, no pad: the stacked columns are the bottom itself
    ColumnConv, BatchInnerConv (conv_columns.py)  small maps: the samples side by side
    DepthwiseConv (conv_depthwise.py)  group == input channels (MobileNet): no columns and no
                    GEMM, a direct sum over the kernel taps per plane
    WinogradConv (conv_winograd.py)  3x3 stride 1 in nets that run no backward: Winograd's
                    F(2x2, 3x3), 16 GEMMs on transformed tiles (2.25x fewer operations)

This file holds their base (the loop over bottoms, the bias, the epilogue) and the stacked ones.
The compiled engines (and PointwiseConv) share each layer call among netspec's threads
(threads.py): StackedConv by chunks of samples, each summing its own weight-gradient part,
added up in chunk order; ColumnConv by blocks of output rows (forward and weight gradient,
so no partial sums) and chunks of samples (columns and data gradient).

What forward leaves for backward is one thing in every engine: `kept_columns[i]`, the
columns of bottom i, kept when backward will run (`runs_backward`) and they fit
im2col.COLUMN_BUDGET; None means backward builds them again.
"""
import math

import numpy as np

from ..threads import even_count, parallel_for, spans
from . import native
from .base import scratch
from .im2col import add_weight_grad

# Work is cut into about this many chunks (of samples, or of output rows), whatever the thread
# count, so that results do not depend on it and a descheduled thread holds up little.
CHUNKS = 8
# Fewest output rows in one chunk of a GEMM cut by rows: thinner products lose BLAS speed
# (one sample's GEMMs of SqueezeNet, GoogLeNet and ResNet-50 at 1 thread: uncut 171 ms, cut
# into blocks of >= 16 rows 215 ms, >= 64 rows 181 ms; one GEMM of 512 x 512 x 196, MobileNet's
# at batch 1, in 4 blocks 1.26 ms, in 8 blocks 1.36). A product of at least 2 * HALF_CHUNK_ROWS
# rows is still cut in two, so that two cores share it.
MIN_CHUNK_ROWS = 128
HALF_CHUNK_ROWS = 32
# Fewest multiply-adds in one sample's forward product for the threads to cut it by rows: handing
# a chunk to a worker (its wake-up, the GIL passed back and forth) costs 30-50 us on the 2-core
# machine, and two threads only gained from about 8M (batch-1 GEMMs at 2 threads cut in two, over
# one thread whole: 64 x 480 x 196 0.135 / 0.126 ms, 96 x 192 x 784 0.224 / 0.283 ms). SqueezeNet's
# expand1x1 layers (1.5-3.2M) had run 0.10-0.14 ms at 1 thread and 0.14-0.21 ms at 2.
MIN_CUT_PRODUCT = 1 << 23
# Fewest column elements per chunk of one sample's im2col/col2im cut by channels (a power-of-two
# count of chunks, at most CHUNKS). At batch 1, 2 threads, GoogLeNet's 5x5 layers (78-200K
# elements) had gone in 8 chunks and run slower than at 1 thread; alternated forward by forward,
# 64K against about the old rule (4K, 8 chunks from 32K): GoogLeNet 0.968, ResNet-50 0.991,
# CaffeNet 0.989, SqueezeNet 0.995, GoogLeNet batch 10 0.999; 256K against 64K 1.00-1.02.
IM2COL_CHUNK = 1 << 16
# Below this many samples, stacked convolutions cut each sample's work by rows and channels.
SMALL_BATCH = 4


class ConvEngine:
    """The loop over bottoms, and the bias: folded into the GEMM as a weight column (the columns
    then carry a ones row), or added to the top and summed from the top's diff."""

    # Whether forward_one runs the epilogue on each block it writes (else forward runs it once, after).
    blockwise_epilogue = False

    def __init__(self, layer):
        self.layer, self.geom = layer, layer.geom
        self.fold_bias = layer.fold_bias
        self.kept_columns = {}
        self.epilogue = None

    def forward(self, bottom, top):
        layer, g = self.layer, self.geom
        epilogue = layer.epilogue
        if epilogue is not None and len(top) == 1 and epilogue.prepare(g.num, layer.num_output):
            self.epilogue = epilogue
        w = layer.grouped_weights()
        bias = layer.blobs[1].data if layer.bias_term else None
        if self.fold_bias:
            # Rewritten from the weights on every call and dead once it returns, so from the pool
            # all layers share: the net holds the largest layer's copy, not one per layer (a
            # second copy of every folded convolution's weights: GoogLeNet's 24 MB).
            w_ext = scratch(None, "w_ext", (1, layer.num_output, g.rows + 1), bottom[0].data.dtype)
            w_ext[0, :, :-1] = w[0]
            w_ext[0, :, -1] = bias
            w, bias = w_ext, None
        try:
            for i, (b, t) in enumerate(zip(bottom, top)):
                y = t.data.reshape(g.num, layer.num_output, g.out_count)
                self.kept_columns[i] = self.forward_one(i, b, w, bias, y)
            if self.epilogue is not None:
                if not self.blockwise_epilogue:
                    self.epilogue.run_prepared()
                self.epilogue.applied = True
        finally:
            self.epilogue = None

    def finish_planes(self, start, stop):
        """The epilogue (fusion.Chain) over top planes [start, stop) = sample * num_output + channel."""
        if self.epilogue is not None:
            self.epilogue.planes_pass(start, stop)

    def finish_rows(self, samples, block):
        """The epilogue over output channels `block` (row_blocks' (groups, rows) slices) of each sample."""
        if self.epilogue is None:
            return
        gs, rs = block
        rows_per_group = self.layer.num_output // self.layer.group
        c0 = gs.start * rows_per_group + (rs.start or 0)
        c1 = gs.stop * rows_per_group if rs.stop is None else gs.start * rows_per_group + rs.stop
        for n in samples:
            self.epilogue.planes_pass(n * self.layer.num_output + c0, n * self.layer.num_output + c1)

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


class StackedConv(ConvEngine):
    """Stacked columns (N, C*K, P): np.matmul over the samples reads and writes NCHW directly,
    a part of the samples at a time so each part's columns are still in cache for its GEMM.
    `window` (2-D, kernels built): im2col straight from the bottom and col2im straight into
    its diff by the compiled kernels, with no padded image buffer."""

    blockwise_epilogue = True

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

    def by_rows(self):
        """Fewer samples than SMALL_BATCH (and compiled, or 1x1): the threads split each sample's
        GEMMs by output rows, and its im2col/col2im by channels, instead of taking samples."""
        return 0 < self.geom.num < SMALL_BATCH and (self.window is not None or self.layer.pointwise)

    def channel_chunks(self, part):
        """[(sample, first channel, end channel)] over the samples of `part`: im2col/col2im work items."""
        g = self.geom
        blocks = spans(g.channels, even_count(min(CHUNKS, g.rows * g.out_count // IM2COL_CHUNK)))
        return [(n, c0, c1) for n in range(part.start, part.stop) for c0, c1 in blocks]

    def sub_window(self, channels):
        return (channels,) + self.window[1:]

    def forward_one(self, i, b, w, bias, y):
        g, group = self.geom, self.layer.group
        keep = self.keeps_columns()
        col = self.col_buffer(f"col{i}", g.num, y.dtype) if keep else None
        if self.by_rows():
            self.forward_by_rows(b, w, bias, y, col)
            return col
        image = self.bottom_image(b) if self.window is None else None
        parts = g.sample_parts(CHUNKS)

        def multiply(samples, cols):
            self.stacked_im2col(b, image, cols, samples)
            out = y[samples]
            np.matmul(w, g.grouped(cols, group), out=g.grouped(out, group))
            if bias is not None:
                out += bias[:, None]

        def chunk(k):
            part = parts[k]
            if keep:
                multiply(part, col[part])
            else:
                # This thread's own buffer, a sample at a time (the same GEMMs: np.matmul runs one
                # per sample), not a part's: GoogLeNet's conv1 at batch 10 took 14 MiB for a part's
                # two samples in each thread, 7 now.
                cols = self.col_buffer(None, 1, y.dtype, shared=True)
                for n in range(part.start, part.stop):
                    multiply(slice(n, n + 1), cols)
            self.finish_planes(part.start * y.shape[1], part.stop * y.shape[1])

        parallel_for(len(parts), chunk)
        return col

    def part_columns(self, b, part, col, dtype, build):
        """By rows: the columns of the samples in `part`, in `col` (kept ones) or this thread's
        buffer, built (`build`) by channel blocks in parallel; for 1x1, the bottom itself."""
        g = self.geom
        if self.layer.pointwise:
            return b.data.reshape(g.num, g.channels, g.out_count)[part]
        cols = col[part] if col is not None else self.col_buffer(None, part.stop - part.start, dtype, shared=True)
        if not build:
            return cols
        x = b.data.reshape(g.num, -1)
        items = self.channel_chunks(part)
        K, P, HW = g.kernel_count, g.out_count, math.prod(g.spatial)

        def chunk(k):
            n, c0, c1 = items[k]
            rows = (c1 - c0) * K
            native.kernels.im2col(x[n, c0 * HW:], cols[n - part.start].reshape(-1)[c0 * K * P:],
                                  self.sub_window(c1 - c0), 0, 1, P, rows * P)

        parallel_for(len(items), chunk)
        return cols

    def forward_by_rows(self, b, w, bias, y, col):
        g, group = self.geom, self.layer.group
        # A sample's product too small to pay for a hand-off among the threads stays whole.
        blocks = row_blocks(self.layer) if w.size * g.out_count >= MIN_CUT_PRODUCT else [(slice(0, group), slice(None))]
        rows_per_group = self.layer.num_output // group
        for part in g.sample_parts():
            cols_g = g.grouped(self.part_columns(b, part, col, y.dtype, build=True), group)
            y_g = y[part].reshape(part.stop - part.start, group, rows_per_group, g.out_count)

            def chunk(k):
                gs, rs = blocks[k]
                out = y_g[:, gs, rs]
                np.matmul(w[gs, rs], cols_g[:, gs], out=out)
                if bias is not None:
                    out += bias.reshape(group, rows_per_group)[gs, rs, None]
                self.finish_rows(range(part.start, part.stop), blocks[k])

            parallel_for(len(blocks), chunk)

    def backward_by_rows(self, b, dy, acc, dx, col):
        """Each part's weight gradient by row blocks (added to acc part after part, in order), and
        its data gradient by channel blocks: dcol rows, then col2im (or, for 1x1, dx itself)."""
        g, group = self.geom, self.layer.group
        blocks = row_blocks(self.layer)
        K, P, HW = g.kernel_count, g.out_count, math.prod(g.spatial)
        wt = self.layer.grouped_weights().transpose(0, 2, 1) if dx is not None else None
        for part in g.sample_parts():
            cols = self.part_columns(b, part, col, dy.dtype, build=col is None)
            cols_g = g.grouped(cols, 1 if self.fold_bias else group)
            dt = g.grouped(dy[part], group)

            def weight_chunk(k):
                gs, rs = blocks[k]
                add_weight_grad(dt[:, gs, rs], cols_g if self.fold_bias else cols_g[:, gs], acc[gs, rs])

            parallel_for(len(blocks), weight_chunk)
            if dx is None:
                continue
            if group > 1:       # dcol by channel blocks needs one group: each sample whole
                self.data_grad_samples(wt, dt, dx, part)
                continue
            items = self.channel_chunks(part)
            flat_dx = dx.reshape(g.num, -1)

            def data_chunk(k):
                n, c0, c1 = items[k]
                d = dt[n - part.start, 0]
                if self.layer.pointwise:
                    np.matmul(wt[0, c0:c1], d, out=flat_dx[n, c0 * P:c1 * P].reshape(c1 - c0, P))
                    return
                rows = (c1 - c0) * K
                dcol = scratch(None, "conv_dcol", (rows, P), dy.dtype)
                np.matmul(wt[0, c0 * K:c1 * K], d, out=dcol)
                native.kernels.col2im(dcol, flat_dx[n, c0 * HW:], self.sub_window(c1 - c0), 0, 1, P, rows * P)

            parallel_for(len(items), data_chunk)

    def data_grad_samples(self, wt, dt, dx, part):
        g = self.geom
        for n in range(part.start, part.stop):
            d = scratch(None, "conv_dcol", (1, g.rows, g.out_count), dt.dtype)
            np.matmul(wt, dt[n - part.start:n - part.start + 1], out=g.grouped(d, self.layer.group))
            if self.layer.pointwise:
                np.copyto(dx[n].reshape(d.shape[1:]), d[0])
            else:
                native.kernels.col2im(d, dx, self.window, n, n + 1, g.out_count, g.rows * g.out_count)

    def backward_one(self, b, dy, acc, dx, col):
        if self.by_rows():
            return self.backward_by_rows(b, dy, acc, dx, col)
        g, group = self.geom, self.layer.group
        dtype = dy.dtype
        compiled = self.window is not None      # col2im straight into dx
        direct_dx = self.layer.pointwise        # 1x1: the GEMM writes dx, nothing to fold back
        dimage = g.grad_image(None, "conv_dimage", dx) if dx is not None and not (compiled or direct_dx) else None
        rebuild = col is None       # columns not kept: build each part's again
        image = self.bottom_image(b) if rebuild and not compiled else None
        parts = g.sample_parts(CHUNKS)
        biggest = parts[0].stop - parts[0].start
        if dimage is not None:
            dimage.fill(0)
        wt = self.layer.grouped_weights().transpose(0, 2, 1) if dx is not None else None    # (G, Kg, M/G)
        # One weight-gradient part per chunk, summed in chunk order: the same bytes for any thread count.
        partials = scratch(self.layer, "weight_grad_parts", (len(parts),) + acc.shape, dtype)

        def chunk(k):
            part = parts[k]
            if rebuild:
                cols = self.col_buffer(None, biggest, dtype, shared=True)[:part.stop - part.start]
                self.stacked_im2col(b, image, cols, part)
            else:
                cols = col[part]
            dt = g.grouped(dy[part], group)
            partials[k].fill(0)
            add_weight_grad(dt, g.grouped(cols, 1 if self.fold_bias else group), partials[k])
            if dx is not None and direct_dx:
                np.matmul(wt, dt, out=g.grouped(dx[part].reshape(-1, g.channels, g.out_count), group))
            elif dx is not None:
                d = scratch(None, "conv_dcol", (biggest, g.rows, g.out_count), dtype)[:part.stop - part.start]
                np.matmul(wt, dt, out=g.grouped(d, group))
                if compiled:
                    native.kernels.col2im(d, dx, self.window, part.start, part.stop, g.out_count,
                                          g.rows * g.out_count)
                else:
                    g.add_windows(d, dimage[part])

        parallel_for(len(parts), chunk)
        add_in_order(acc, partials)
        if dimage is not None:
            g.store_image(dimage, dx)


def row_blocks(layer):
    """[(groups slice, rows slice)]: the output rows cut for the GEMMs, by groups when there
    are many, else each group's rows in a power-of-two count of blocks of at least MIN_CHUNK_ROWS."""
    group, rows = layer.group, layer.num_output // layer.group
    if group >= CHUNKS:
        return [(slice(a, b), slice(None)) for a, b in spans(group, CHUNKS)]
    most = min(-(-CHUNKS // group), rows // MIN_CHUNK_ROWS)
    # A power of two, so that two (or four) threads get equal shares.
    per_group = max(min(2, rows // HALF_CHUNK_ROWS), even_count(most))
    return [(slice(gi, gi + 1), slice(a, b)) for gi in range(group) for a, b in spans(rows, per_group)]


def add_in_order(acc, partials):
    """acc += partials[0] + partials[1] + ..., in that order, over element blocks in parallel."""
    flat = acc.reshape(-1)
    assert np.shares_memory(flat, acc), "acc must be contiguous"
    parts = partials.reshape(len(partials), -1)
    blocks = spans(flat.size, min(CHUNKS, max(1, flat.size >> 15)))

    def chunk(k):
        lo, hi = blocks[k]
        for p in parts:
            flat[lo:hi] += p[lo:hi]

    parallel_for(len(blocks), chunk)


class PointwiseConv(StackedConv):
    """1x1 kernel, stride 1, no pad: the stacked columns are the bottom itself, never built or kept."""

    def __init__(self, layer):
        super().__init__(layer, compiled=False)

    def columns(self, b):
        g = self.geom
        return self.bottom_image(b).reshape(g.num, g.channels, g.out_count)

    def forward_one(self, i, b, w, bias, y):
        if self.by_rows():
            self.forward_by_rows(b, w, bias, y, None)
            return None
        g, group = self.geom, self.layer.group
        x = self.columns(b)
        parts = g.sample_parts(CHUNKS)

        def chunk(k):
            out = y[parts[k]]
            np.matmul(w, g.grouped(x[parts[k]], group), out=g.grouped(out, group))
            if bias is not None:
                out += bias[:, None]
            self.finish_planes(parts[k].start * y.shape[1], parts[k].stop * y.shape[1])

        parallel_for(len(parts), chunk)
        return None

    def backward_one(self, b, dy, acc, dx, col):
        # StackedConv's threaded backward on the bottom as columns; the data gradient's columns
        # are dx itself, written by the GEMM (see `direct_dx`).
        super().backward_one(b, dy, acc, dx, self.columns(b))
