"""Convolution, Deconvolution and Im2col, with Caffe's parameters and shape rules.

Each convolution is one grouped GEMM over the whole batch on im2col columns: the compiled
columns of native.py for 2-D convolution over small maps when the extension is built,
else the numpy layouts of im2col.py.
"""
import math

import numpy as np

from .. import fillers
from ..proto import caffe_pb2
from . import native
from .base import Layer, register, scratch, shape_str
from .im2col import ConvGeometry, add_weight_grad


class _ConvBase(Layer):
    """What Convolution and Deconvolution share: parameters, checks, weights, geometry."""
    num_bottoms = (1, None)
    num_tops = (1, None)
    transposed = False          # Deconvolution: the image side of im2col is the top

    def setup(self, bottom, top):
        p = self.layer_param.convolution_param
        if len(top) != len(bottom):
            raise self.error(f"needs as many tops as bottoms (bottom i -> top i), got {len(bottom)} bottoms "
                             f"and {len(top)} tops")
        self._read_geometry(bottom[0].shape)
        shape = bottom[0].shape
        self.channels = shape[self.axis]
        self.num_output = p.num_output
        self.group = p.group
        if self.num_output <= 0:
            raise self.error("num_output must be given and positive")
        if self.group <= 0:
            raise self.error("group must be positive")
        if self.channels % self.group:
            raise self.error(f"group {self.group} does not divide the {self.channels} input channels "
                             f"(bottom shape {shape_str(shape)})")
        if self.num_output % self.group:
            raise self.error(f"group {self.group} does not divide num_output {self.num_output}")
        # Caffe's weight layout: (out, in / group, *kernel), with in/out swapped for Deconvolution.
        conv_out, conv_in = ((self.channels, self.num_output) if self.transposed
                             else (self.num_output, self.channels))
        self.add_param_blob((conv_out, conv_in // self.group) + tuple(self.kernel))
        fillers.fill(p.weight_filler, self.blobs[0].data)
        self.bias_term = p.bias_term
        if self.bias_term:
            self.add_param_blob((self.num_output,))
            fillers.fill(p.bias_filler, self.blobs[1].data)
        self.geom = None
        self._saved = {}

    def _read_geometry(self, shape):
        """Channel axis, spatial axes and kernel/stride/pad/dilation per spatial axis, checked."""
        p = self.layer_param.convolution_param
        ndim = len(shape)
        if not -ndim <= p.axis < ndim:
            raise self.error(f"axis {p.axis} is out of range for bottom shape {shape_str(shape)}")
        self.axis = p.axis % ndim
        self.num_spatial = ndim - self.axis - 1
        if self.num_spatial < 1:
            raise self.error(f"bottom shape {shape_str(shape)} has no spatial axes after the channel axis "
                             f"{self.axis}; use InnerProduct for that")
        self.kernel = self._per_axis(p, "kernel_size", "kernel_h", "kernel_w", None)
        self.stride = self._per_axis(p, "stride", "stride_h", "stride_w", 1)
        self.pad = self._per_axis(p, "pad", "pad_h", "pad_w", 0)
        self.dilation = self._per_axis(p, "dilation", None, None, 1)
        for name, values in (("kernel size", self.kernel), ("stride", self.stride), ("dilation", self.dilation)):
            if min(values) <= 0:
                raise self.error(f"{name} must be nonzero, got {tuple(values)}")

    def _per_axis(self, p, name, h_name, w_name, default):
        """Caffe's per-spatial-axis values: `name` once or once per axis, or the 2-D _h/_w spellings."""
        values = list(getattr(p, name))
        if h_name and (p.HasField(h_name) or p.HasField(w_name)):
            if self.num_spatial != 2:
                raise self.error(f"{h_name}/{w_name} can only be used for 2-D convolution; the bottom has "
                                 f"{self.num_spatial} spatial axes")
            if values:
                raise self.error(f"give either {name} or {h_name}/{w_name}, not both")
            if default is None and not (p.HasField(h_name) and p.HasField(w_name)):
                raise self.error(f"{h_name} and {w_name} must be given together")
            return [getattr(p, h_name), getattr(p, w_name)]
        if not values:
            if default is None:
                raise self.error(f"{name} is required (or {h_name} and {w_name})")
            return [default] * self.num_spatial
        if len(values) not in (1, self.num_spatial):
            raise self.error(f"{name} must be given once or once per spatial axis ({self.num_spatial}), "
                             f"got {len(values)} values")
        return values * self.num_spatial if len(values) == 1 else values

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.error(f"bottom shape {shape_str(shape)} has {len(shape)} axes; the layer was set up "
                             f"for {self.axis + 1 + self.num_spatial}")
        if shape[self.axis] != self.channels:
            raise self.error(f"bottom shape {shape_str(shape)} has {shape[self.axis]} channels on axis "
                             f"{self.axis}; the weights expect {self.channels}")
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != shape:
                raise self.error(f"all bottoms must have one shape: bottom[0] {shape_str(shape)} vs "
                                 f"bottom[{i}] {shape_str(b.shape)}")
        self.num = math.prod(shape[:self.axis])
        spatial = shape[self.axis + 1:]
        geometry = (self.kernel, self.stride, self.pad, self.dilation)
        for a, size in enumerate(spatial):
            extent = self.dilation[a] * (self.kernel[a] - 1) + 1
            if not self.transposed and extent > size + 2 * self.pad[a]:
                raise self.error(
                    f"kernel extent {extent} (kernel {self.kernel[a]}, dilation {self.dilation[a]}) is larger "
                    f"than the padded input {size + 2 * self.pad[a]} (size {size} + 2 * pad {self.pad[a]}) on "
                    f"spatial axis {a} of bottom shape {shape_str(shape)}")
        if self.transposed:
            out = tuple(s * (n - 1) + d * (k - 1) + 1 - 2 * p
                        for n, k, s, p, d in zip(spatial, *geometry))
            if min(out) <= 0:
                raise self.error(f"output shape {out} is empty for bottom shape {shape_str(shape)} "
                                 f"(kernel {tuple(self.kernel)}, stride {tuple(self.stride)}, pad {tuple(self.pad)})")
            self.geom = ConvGeometry(self.num, self.num_output, out, *geometry)
            self.in_spatial = tuple(spatial)
        else:
            self.geom = ConvGeometry(self.num, self.channels, spatial, *geometry)
            out = self.geom.out
        # Compiled columns for 2-D convolution (native.py): over small maps the side-by-side
        # ColumnConv replaces numpy's batch-inner layout; over wide maps the stacked layout
        # stays, its im2col/col2im done by the compiled kernels (stacked_window).
        self.columns = self.stacked_window = None
        if not self.transposed and self.num_spatial == 2 and native.usable(bottom[0].data.dtype):
            if self.geom.batch_inner:
                self.columns = native.ColumnConv(self.num, self.channels, spatial, *geometry, out,
                                                 self.num_output, self.group, self._fold_bias)
            elif not self._pointwise:
                self.stacked_window = native.window_geometry(self.channels, spatial, *geometry, out)
        top_shape = shape[:self.axis] + (self.num_output,) + tuple(out)
        for t in top:
            t.reshape(top_shape)

    def _weights(self):
        # Read the blob every time: the net may have swapped in a shared Blob.
        w = self.blobs[0].data
        return w.reshape(self.group, w.shape[0] // self.group, -1)

    def _weight_diff(self):
        d = self.blobs[0].diff
        return d.reshape(self.group, d.shape[0] // self.group, -1)


@register("Convolution")
class Convolution(_ConvBase):
    """Caffe's Convolution: im2col + (grouped) GEMM over the whole batch per bottom.

    Without groups the bias rides in the GEMM: the columns carry a constant row of ones
    and the weights a bias column, so the bias costs no pass of its own, and its gradient
    comes out of the weight-gradient GEMM.
    """

    def setup(self, bottom, top):
        super().setup(bottom, top)
        # A 1x1 kernel with stride 1 and no pad: the stacked columns are the bottom itself.
        self._pointwise = (max(self.kernel) == 1 and max(self.stride) == 1 and max(self.pad) == 0)
        self._fold_bias = self.bias_term and self.group == 1 and not self._pointwise

    def _col_buffer(self, name, num, dtype, shared=False):
        """Columns for `num` samples, with the ones row when the bias is folded; `shared`: from
        the pool all layers share (see scratch), for columns not kept past this call."""
        g = self.geom
        rows = g.rows + (1 if self._fold_bias else 0)
        shape = (rows, g.out_count * num) if g.batch_inner else (num, rows, g.out_count)
        if not shared:
            # The ones row is written once, when the buffer is made; im2col fills the rows above it.
            return scratch(self, name, shape, dtype, fill=1)
        col = scratch(None, "conv_cols", shape, dtype)
        if self._fold_bias:
            if g.batch_inner:
                col[g.rows] = 1
            else:
                col[:, g.rows] = 1
        return col

    def _im2col(self, image, col):
        g = self.geom
        g.im2col(image, col[:g.rows] if g.batch_inner else col[:, :g.rows])

    def _stacked_im2col(self, b, image, cols, part):
        """cols (samples, rows [+1], positions) <- the columns of the samples in `part`: compiled,
        straight from the unpadded bottom (image None), or numpy's from the image buffer."""
        g = self.geom
        if image is None:
            x = b.data.reshape((g.num, g.channels) + g.spatial)
            native.kernels.im2col(x, cols, self.stacked_window, part.start, part.stop, g.out_count,
                          cols.shape[1] * g.out_count)
        else:
            self._im2col(image[part], cols)

    def _bottom_image(self, b):
        g = self.geom
        return g.load_image(self, "image", b.data.reshape((g.num, g.channels) + g.spatial))

    def forward(self, bottom, top):
        g = self.geom
        dtype = bottom[0].data.dtype
        w = self._weights()
        bias = self.blobs[1].data if self.bias_term else None
        if self._fold_bias:
            w_ext = scratch(self, "w_ext", (1, self.num_output, g.rows + 1), dtype)
            w_ext[0, :, :-1] = w[0]
            w_ext[0, :, -1] = bias
            w, bias = w_ext, None
        # Columns are kept for backward in training only (a test net rarely runs backward, which
        # then builds them again), and only when they fit the budget.
        if self.columns is not None:
            keep = self.phase == caffe_pb2.TRAIN
            for i, (b, t) in enumerate(zip(bottom, top)):
                y = t.data.reshape(g.num, self.num_output, g.out_count)
                x = b.data.reshape((g.num, g.channels) + g.spatial)
                self._saved[i] = self.columns.forward(self, f"col{i}", x, w, y, keep)
                if bias is not None:
                    y += bias[:, None]
            return
        keep = self.phase == caffe_pb2.TRAIN and g.keeps_columns(g.rows + 1)
        for i, (b, t) in enumerate(zip(bottom, top)):
            image = self._bottom_image(b) if self.stacked_window is None else None
            y = t.data.reshape(g.num, self.num_output, g.out_count)
            if g.batch_inner:
                col = self._col_buffer(f"col{i}", g.num, dtype, shared=not keep)
                self._im2col(image, col)
                out = g.out_cols(None, "conv_out", y)
                np.matmul(w, g.grouped(col, self.group), out=g.grouped(out, self.group))
                g.finish_cols(out, y, bias)
            elif self._pointwise:
                col = image.reshape(g.num, g.channels, g.out_count)
                np.matmul(w, g.grouped(col, self.group), out=g.grouped(y, self.group))
                if bias is not None:
                    y += bias[:, None]
            else:
                # Part by part (samples), so each part's columns are still in cache for its GEMM.
                parts = g.sample_parts()
                col = self._col_buffer(f"col{i}", g.num if keep else parts[0].stop, dtype, shared=not keep)
                for part in parts:
                    cols = col[part] if keep else col[:part.stop - part.start]
                    self._stacked_im2col(b, image, cols, part)
                    np.matmul(w, g.grouped(cols, self.group), out=g.grouped(y[part], self.group))
                if bias is not None:
                    y += bias[:, None]
            # Backward reuses these columns (stacked pointwise: they are the bottom itself).
            self._saved[i] = col if keep or (self._pointwise and not g.batch_inner) else None

    def backward(self, top, propagate_down, bottom):
        g = self.geom
        dtype = top[0].diff.dtype
        fold = self._fold_bias
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy = t.diff.reshape(g.num, self.num_output, g.out_count)
            if fold:
                acc = scratch(self, "w_ext_grad", (1, self.num_output, g.rows + 1), dtype)
                acc.fill(0)
            else:
                acc = self._weight_diff()
                if self.bias_term:
                    self.blobs[1].diff += dy.sum(axis=(0, 2))
            dx = b.diff.reshape((g.num, g.channels) + g.spatial)
            if self.columns is not None:
                x = b.data.reshape((g.num, g.channels) + g.spatial)
                self.columns.backward(x, self._weights(), dy, acc, dx if propagate_down[i] else None,
                                      self._saved.get(i))
            else:
                self._backward_layouts(i, b, dy, acc, dx if propagate_down[i] else None)
            if fold:
                self._weight_diff()[0] += acc[0, :, :-1]
                self.blobs[1].diff += acc[0, :, -1]

    def _backward_layouts(self, i, b, dy, acc, dx):
        """One bottom's backward on im2col.py's column layouts (the stacked one's im2col/col2im
        compiled when stacked_window is set)."""
        g = self.geom
        dtype = dy.dtype
        fold = self._fold_bias
        compiled = self.stacked_window is not None      # col2im straight into dx
        dimage = g.grad_image(None, "conv_dimage", dx) if dx is not None and not compiled else None
        col = self._saved.get(i)
        if g.batch_inner:
            if col is None:   # columns not kept (test phase), or backward without a forward
                col = self._col_buffer(f"col{i}", g.num, dtype, shared=True)
                self._im2col(self._bottom_image(b), col)
            dt = g.grouped(g.as_cols(None, "conv_dtop", dy), self.group)
            add_weight_grad(dt, g.grouped(col, 1 if fold else self.group), acc)
            if dimage is not None:
                self._data_grad_batch_inner(dt, dimage, dtype)
        else:
            if col is None and self._pointwise:
                col = self._bottom_image(b).reshape(g.num, g.channels, g.out_count)
            rebuild = col is None       # columns not kept: build each part's again
            image = self._bottom_image(b) if rebuild and not compiled else None
            parts = g.sample_parts()
            if dimage is not None:
                dimage.fill(0)
            if dx is not None:
                wt = self._weights().transpose(0, 2, 1)     # (G, Kg, M/G)
                dcol = scratch(None, "conv_dcol", (parts[0].stop, g.rows, g.out_count), dtype)
            for part in parts:
                if rebuild:
                    cols = self._col_buffer(None, parts[0].stop, dtype, shared=True)[:part.stop - part.start]
                    self._stacked_im2col(b, image, cols, part)
                else:
                    cols = col[part]
                dt = g.grouped(dy[part], self.group)
                add_weight_grad(dt, g.grouped(cols, 1 if fold else self.group), acc)
                if dx is not None:
                    d = dcol[:part.stop - part.start]
                    np.matmul(wt, dt, out=g.grouped(d, self.group))
                    if compiled:
                        native.kernels.col2im(d, dx, self.stacked_window, part.start, part.stop, g.out_count,
                                      g.rows * g.out_count)
                    else:
                        g.add_windows(d, dimage[part])
        if dimage is not None:
            g.store_image(dimage, dx)

    def _data_grad_batch_inner(self, dt, dimage, dtype):
        """dimage <- col2im(W^T dtop), a block of channels at a time so each block's columns stay in cache."""
        g = self.geom
        wt = self._weights().transpose(0, 2, 1)         # (G, Kg, M/G)
        parts = g.channel_parts(self.group)
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


@register("Deconvolution")
class Deconvolution(_ConvBase):
    """Caffe's Deconvolution: the transpose of Convolution (its forward is convolution's backward)."""
    transposed = True

    def forward(self, bottom, top):
        g = self.geom
        dtype = bottom[0].data.dtype
        w = self._weights()
        dcol = scratch(None, "conv_dcol", g.cols_shape(g.rows, g.out_count), dtype)
        for i, (b, t) in enumerate(zip(bottom, top)):
            xc = g.as_cols(self, f"xcols{i}", b.data.reshape(g.num, self.channels, g.out_count))
            self._saved[i] = xc
            np.matmul(w.transpose(0, 2, 1), g.grouped(xc, self.group), out=g.grouped(dcol, self.group))
            y = t.data.reshape((g.num, self.num_output) + g.spatial)
            image = g.grad_image(None, "conv_dimage", y)
            g.col2im(dcol, image)
            g.store_image(image, y)
            if self.bias_term:
                y3 = y.reshape(g.num, self.num_output, -1)
                y3 += self.blobs[1].data[:, None]

    def backward(self, top, propagate_down, bottom):
        g = self.geom
        dtype = top[0].diff.dtype
        col = scratch(None, "conv_cols", g.cols_shape(g.rows, g.out_count), dtype)
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy = t.diff.reshape((g.num, self.num_output) + g.spatial)
            if self.bias_term:
                self.blobs[1].diff += dy.reshape(g.num, self.num_output, -1).sum(axis=(0, 2))
            g.im2col(g.load_image(self, "dimage", dy), col)
            xc = self._saved.get(i)
            if xc is None:
                xc = g.as_cols(self, f"xcols{i}", b.data.reshape(g.num, self.channels, g.out_count))
            col_g = g.grouped(col, self.group)
            add_weight_grad(g.grouped(xc, self.group), col_g, self._weight_diff())
            if propagate_down[i]:
                dx = b.diff.reshape(g.num, self.channels, g.out_count)
                out = g.out_cols(None, "conv_out", dx)
                np.matmul(self._weights(), col_g, out=g.grouped(out, self.group))
                g.finish_cols(out, dx)


@register("Im2col")
class Im2col(_ConvBase):
    """Caffe's Im2col: the convolution's columns as a blob, (N, C * prod(kernel), *out); backward is col2im.

    Row c * prod(kernel) + k of sample n holds channel c seen at kernel offset k from every
    output position: top[n, c*K + k, p] = padded bottom[n, c, p * stride + k * dilation].
    """
    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom, top):
        self._read_geometry(bottom[0].shape)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.error(f"bottom shape {shape_str(shape)} has {len(shape)} axes; the layer was set up "
                             f"for {self.axis + 1 + self.num_spatial}")
        spatial = shape[self.axis + 1:]
        self.geom = ConvGeometry(math.prod(shape[:self.axis]), shape[self.axis], spatial, self.kernel,
                                 self.stride, self.pad, self.dilation, batch_inner=False)
        if min(self.geom.out) <= 0:
            raise self.error(f"kernel {tuple(self.kernel)} (dilation {tuple(self.dilation)}) does not fit the "
                             f"padded input of bottom shape {shape_str(shape)} (pad {tuple(self.pad)})")
        top[0].reshape(shape[:self.axis] + (self.geom.rows,) + self.geom.out)

    def forward(self, bottom, top):
        g = self.geom
        image = g.load_image(self, "image", bottom[0].data.reshape((g.num, g.channels) + g.spatial))
        g.im2col(image, top[0].data.reshape(g.num, g.rows, g.out_count))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = self.geom
        dx = bottom[0].diff.reshape((g.num, g.channels) + g.spatial)
        image = g.grad_image(self, "dimage", dx)
        g.col2im(top[0].diff.reshape(g.num, g.rows, g.out_count), image)
        g.store_image(image, dx)
