"""Convolution engines for small maps, with the samples side by side in one column matrix,
so that one GEMM covers the batch (conv_engines.py holds the base and the stacked engines):

    ColumnConv      compiled im2col, (C*K, N*P): 2-D small maps (native.py)
    BatchInnerConv  numpy's batch-inner layout (C*K, P*N): small maps, other cases
"""
import math

import numpy as np

from ..threads import even_count, parallel_for, spans
from . import native
from .base import scratch
from .conv_engines import CHUNKS, ConvEngine, add_in_order, row_blocks
from .im2col import COLUMN_BUDGET, add_weight_grad

# Fewest columns (samples x output positions) in one chunk of a convolution cut by samples. LeNet's
# conv2 (50 x 501 by 64 x 64 columns) goes in 8 chunks of 512, each built and multiplied by one
# thread. Alternated run by run in one process, 512 against 1024: LeNet's forward 0.977 (1 thread)
# and 0.974 (2 threads), its training step 0.993 and 0.989; 2048 against 1024: forward 1.025 and 1.044.
SAMPLE_CHUNK_COLUMNS = 512


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


class ColumnConv(ConvEngine):
    """Compiled columns with the samples side by side, (C*K [+1], N*P): im2col reads NCHW and
    col2im writes it, so the only layout move left is the GEMM output's (M, N, P) -> (N, M, P).
    Past `part_budget` elements of columns the batch goes in parts of samples, and backward
    builds each part's columns again."""

    blockwise_epilogue = True

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
        kept on `owner` as `name`, or (owner None) in the shared work pool. Built by chunks
        of samples in parallel, each writing its own column range."""
        g = self.geom
        shape = (g.rows + (1 if self.fold_bias else 0), (n1 - n0) * g.out_count)
        col = scratch(owner, name, shape, x.dtype)
        flat, P = col.reshape(-1), g.out_count
        chunks = spans(n1 - n0, CHUNKS)

        def chunk(k):
            a, b = chunks[k]
            # A flat view from sample a's first column: rows stay shape[1] apart.
            native.kernels.im2col(x, flat[a * P:], self.window, n0 + a, n0 + b, shape[1], P)

        parallel_for(len(chunks), chunk)
        if self.fold_bias:
            col[-1] = 1
        return col

    def _grouped(self, a):
        group = self.layer.group
        return a.reshape(group, a.shape[0] // group, a.shape[1])

    def sample_chunks(self, n0, n1):
        """[(first, stop)] samples of part [n0, n1), relative to n0, for the threads to take whole
        (columns, GEMM and all), or None: cut by output rows instead (row_blocks). By samples when
        there are too few rows to cut (one row block: LeNet's conv2, 50 rows), in a power-of-two
        count of chunks of at least SAMPLE_CHUNK_COLUMNS columns, so that two threads share evenly."""
        columns = (n1 - n0) * self.geom.out_count
        most = min(CHUNKS, columns // SAMPLE_CHUNK_COLUMNS)
        if len(row_blocks(self.layer)) > 1 or most < 2:
            return None
        return spans(n1 - n0, even_count(most))

    def forward_by_samples(self, x, w, bias, y, col, n0, chunks):
        """Samples [n0, n0 + len) in `chunks`, each built, multiplied and moved into y in one go by
        one thread. `col`: the kept columns of the part (each chunk writes its own column range),
        or None for each thread's own buffer."""
        g, num_output, P = self.geom, self.layer.num_output, self.geom.out_count
        rows = g.rows + (1 if self.fold_bias else 0)

        def chunk(k):
            a, b = chunks[k]
            width = (b - a) * P
            if col is not None:
                cols, flat, ld = col[:, a * P:b * P], col.reshape(-1)[a * P:], col.shape[1]
            else:
                cols = scratch(None, "conv_cols", (rows, width), x.dtype)
                flat, ld = cols.reshape(-1), width
                if self.fold_bias:
                    cols[-1] = 1
            # From the chunk's first column, rows `ld` apart.
            native.kernels.im2col(x, flat, self.window, n0 + a, n0 + b, ld, P)
            out = scratch(None, "conv_out", (num_output, width), x.dtype)
            np.matmul(w[0], cols, out=out)
            target = y[n0 + a:n0 + b]
            np.copyto(target, out.reshape(num_output, b - a, P).transpose(1, 0, 2))
            if bias is not None:
                target += bias[:, None]
            self.finish_planes((n0 + a) * num_output, (n0 + b) * num_output)

        parallel_for(len(chunks), chunk)

    def forward_one(self, i, b, w, bias, y):
        g, num_output = self.geom, self.layer.num_output
        x = b.data.reshape((g.num, g.channels) + g.spatial)
        keep = self.layer.runs_backward and len(self.parts) == 1
        if self.sample_chunks(*self.parts[0]) is not None:
            col = None
            if keep:        # one part: the whole batch's columns
                col = scratch(self.layer, f"col{i}", (g.rows + (1 if self.fold_bias else 0), g.num * g.out_count),
                              x.dtype)
                if self.fold_bias:
                    col[-1] = 1
            for n0, n1 in self.parts:
                self.forward_by_samples(x, w, bias, y, col, n0, self.sample_chunks(n0, n1))
            return col
        blocks = row_blocks(self.layer)
        rows_per_group = num_output // self.layer.group
        for n0, n1 in self.parts:
            col = self._columns(self.layer, f"col{i}", x, n0, n1) if keep else \
                self._columns(None, "conv_cols", x, n0, n1)
            out = scratch(None, "conv_out", (num_output, col.shape[1]), x.dtype)
            col_g, out_g = self._grouped(col), self._grouped(out)
            y_g = y[n0:n1].reshape(n1 - n0, self.layer.group, rows_per_group, g.out_count)

            def chunk(k):
                gs, rs = blocks[k]
                o = out_g[gs, rs]
                np.matmul(w[gs, rs], col_g[gs], out=o)
                # (groups, rows, samples * P) -> y's (samples, groups, rows, P)
                target = y_g[:, gs, rs]
                np.copyto(target, o.reshape(o.shape[:2] + (n1 - n0, g.out_count)).transpose(2, 0, 1, 3))
                if bias is not None:
                    target += bias.reshape(self.layer.group, rows_per_group)[gs, rs, None]
                self.finish_rows(range(n0, n1), blocks[k])

            parallel_for(len(blocks), chunk)
        return col if keep else None

    def backward_one(self, b, dy, acc, dx, col):
        g, num_output = self.geom, self.layer.num_output
        x = b.data.reshape((g.num, g.channels) + g.spatial)
        wt = self.layer.grouped_weights().transpose(0, 2, 1)
        blocks = row_blocks(self.layer)
        group, rows_per_group, P = self.layer.group, num_output // self.layer.group, g.out_count
        for n0, n1 in self.parts:
            if col is None or len(self.parts) > 1:
                col = self._columns(None, "conv_cols", x, n0, n1)
            chunks = self.sample_chunks(n0, n1)
            if chunks is not None:
                self.backward_by_samples(dy, acc, dx, col, n0, chunks, wt[0])
                continue
            dt = scratch(None, "conv_dtop", (num_output, col.shape[1]), dy.dtype)
            dt_g, col_g = self._grouped(dt), self._grouped(col)
            dy_g = dy[n0:n1].reshape(n1 - n0, group, rows_per_group, P)

            def weight_chunk(k):
                # dtop's rows for this block, then their weight gradient: each block its own rows of acc.
                gs, rs = blocks[k]
                d = dt_g[gs, rs]
                np.copyto(d.reshape(d.shape[:2] + (n1 - n0, P)), dy_g[:, gs, rs].transpose(1, 2, 0, 3))
                add_weight_grad(d, col_g if self.fold_bias else col_g[gs], acc[gs, rs])

            parallel_for(len(blocks), weight_chunk)
            if dx is None:
                continue
            samples = spans(n1 - n0, CHUNKS)

            def data_chunk(k):
                a, b_ = samples[k]
                dcol = scratch(None, "conv_dcol", (g.rows, (b_ - a) * P), dy.dtype)
                np.matmul(wt, dt_g[:, :, a * P:b_ * P], out=self._grouped(dcol))
                native.kernels.col2im(dcol, dx, self.window, n0 + a, n0 + b_, dcol.shape[1], P)

            parallel_for(len(samples), data_chunk)

    def backward_by_samples(self, dy, acc, dx, col, n0, chunks, wt):
        """backward_one for samples [n0, ...) in `chunks` (one group), a chunk per thread: its dtop
        columns, its part of the weight gradient (the parts added to acc in chunk order, so the
        same bytes for any thread count) and, unless dx is None, its data gradient."""
        g, num_output, P = self.geom, self.layer.num_output, self.geom.out_count
        partials = scratch(self.layer, "weight_grad_parts", (len(chunks),) + acc.shape, dy.dtype)

        def chunk(k):
            a, b = chunks[k]
            width = (b - a) * P
            d = scratch(None, "conv_dtop", (num_output, width), dy.dtype)
            np.copyto(d.reshape(num_output, b - a, P), dy[n0 + a:n0 + b].transpose(1, 0, 2))
            cols = col[:, a * P:b * P]
            # (cols dtop^T)^T, the faster orientation (see add_weight_grad).
            part = scratch(None, "conv_weight_grad", (cols.shape[0], num_output), dy.dtype)
            np.matmul(cols, d.T, out=part)
            np.copyto(partials[k, 0], part.T)
            if dx is not None:
                dcol = scratch(None, "conv_dcol", (g.rows, width), dy.dtype)
                np.matmul(wt, d, out=dcol)
                native.kernels.col2im(dcol, dx, self.window, n0 + a, n0 + b, width, P)

        parallel_for(len(chunks), chunk)
        add_in_order(acc, partials)
