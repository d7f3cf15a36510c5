"""Convolution, Deconvolution and Im2col, with Caffe's parameters and shape rules.

Each convolution is one grouped GEMM over the whole batch on im2col columns, run by the
engine (conv_engines.py, conv_columns.py, conv_depthwise.py, conv_winograd.py) that
Convolution.reshape picks for the shape (choose_engine): the compiled columns of native.py
for 2-D convolution over small maps when the extension is built, else the numpy layouts of
im2col.py; direct sums for depthwise layers; Winograd's transformed tiles for 3x3 layers of
nets that run no backward.
"""
import math

import numpy as np

from .. import fillers
from . import native
from .base import Layer, register, scratch, shape_str
from .conv_columns import BatchInnerConv, ColumnConv
from .conv_depthwise import DepthwiseConv
from .conv_engines import PointwiseConv, StackedConv
from .conv_winograd import WinogradConv, applies as winograd_applies
from .im2col import ConvGeometry, add_weight_grad

# Output positions per map from which a 1x1 convolution runs one GEMM per sample on the bottom
# itself (PointwiseConv) rather than one over the batch's columns (interleaved A/B at batch 10:
# 13x13 and 14x14 maps 0.64-0.97x the column path's time, 7x7 1.09-1.15x).
POINTWISE_MIN_POSITIONS = 144


def choose_engine(layer, dtype):
    """The engine for the layer's current geometry (layer.geom), kernel and dtype."""
    g = layer.geom
    compiled = layer.num_spatial == 2 and native.usable(dtype)
    if layer.depthwise:
        return DepthwiseConv(layer, compiled and native.has_depthwise())
    if layer.uses_winograd(dtype):
        return WinogradConv(layer)
    if g.batch_inner:
        return ColumnConv(layer) if compiled else BatchInnerConv(layer)
    if layer.pointwise:
        return PointwiseConv(layer)
    return StackedConv(layer, compiled)


class _ConvBase(Layer):
    """What Convolution and Deconvolution share: parameters, checks, weights, geometry."""
    num_bottoms = (1, None)
    num_tops = (1, None)
    transposed = False          # Deconvolution: the image side of im2col is the top

    def shared_work_bytes(self, bottom, top):
        """The im2col columns and their gradient (float32), at most: from the pool the layers share
        (memory.py counts the largest once)."""
        if not self.blobs or not bottom:
            return 0
        kernel = math.prod(self.blobs[0].shape[1:])            # input channels per group x kernel area
        spatial = max(math.prod(t.shape[2:]) for t in top) if top else 0
        batch = bottom[0].shape[0] if bottom[0].shape else 1
        return 2 * kernel * self.group * spatial * batch * 4

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
        self.spatial_shape = tuple(spatial)
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
            self.geom = ConvGeometry(self.num, self.channels, spatial, *geometry,
                                     batch_inner=False if self.stacked_only(bottom[0].data.dtype) else None)
            out = self.geom.out
        top_shape = shape[:self.axis] + (self.num_output,) + tuple(out)
        for t in top:
            t.reshape(top_shape)

    def stacked_only(self, dtype):
        """Whether the engine for this layer reads the bottom as stacked NCHW (no batch-inner columns)."""
        return False

    def grouped_weights(self):
        """The weights as (group, out / group, in / group * kernel)."""
        # Read the blob every time: the net may have swapped in a shared Blob.
        w = self.blobs[0].data
        return w.reshape(self.group, w.shape[0] // self.group, -1)

    def grouped_weight_diff(self):
        d = self.blobs[0].diff
        return d.reshape(self.group, d.shape[0] // self.group, -1)


@register("Convolution")
class Convolution(_ConvBase):
    """Caffe's Convolution: im2col + (grouped) GEMM over the whole batch per bottom.

    Without groups the bias rides in the GEMM: the columns carry a constant row of ones
    and the weights a bias column, so the bias costs no pass of its own, and its gradient
    comes out of the weight-gradient GEMM.
    """
    # A fusion.Chain that the Net hands over for one forward, to run on the top as it is written;
    # the engine sets its `applied` when it did.
    epilogue = None

    def setup(self, bottom, top):
        super().setup(bottom, top)
        # A 1x1 kernel with stride 1 and no pad: the stacked columns are the bottom itself.
        self.pointwise = (max(self.kernel) == 1 and max(self.stride) == 1 and max(self.pad) == 0)
        # group == input channels (MobileNet's 3x3): the direct depthwise engine, no GEMM.
        self.depthwise = self.group > 1 and self.group == self.channels
        self.fold_bias = self.bias_term and self.group == 1 and not self.pointwise
        self.engine = None          # chosen in reshape, for the shape (choose_engine)
        self._shaped_for = None     # what reshape last built the geometry and engine for

    def uses_winograd(self, dtype):
        """Whether forward runs Winograd's F(2x2, 3x3) (conv_winograd.py): float32 with the
        kernels built, a 3x3 stride-1 geometry, and no backward to run."""
        return (dtype == np.float32 and not self.runs_backward and winograd_applies(self)
                and native.usable(dtype) and native.has_winograd())

    def stacked_only(self, dtype):
        # Neither builds columns: PointwiseConv's are the bottom itself, DepthwiseConv sums taps.
        # Below POINTWISE_MIN_POSITIONS per map (ResNet's and MobileNet's 7x7) one GEMM over the
        # batch side by side beats one per sample by more than its two copies cost.
        # (A 1x1, stride 1, unpadded kernel's output map is the bottom's own.)
        pointwise = self.pointwise and math.prod(self.spatial_shape) >= POINTWISE_MIN_POSITIONS
        return pointwise or self.depthwise or self.uses_winograd(dtype)

    def reshape(self, bottom, top):
        # The Net reshapes every layer on every forward, as Caffe does; the geometry and the engine
        # depend only on the bottoms' shapes and dtype and on whether backward runs, so they are
        # kept while those stay (checking and rebuilding them cost 50 us a layer: a tenth of
        # SqueezeNet's forward at batch 1).
        key = (tuple(b.shape for b in bottom), bottom[0].data.dtype, self.runs_backward)
        if key == self._shaped_for:
            for t in top:
                t.reshape(self._top_shape)
            return
        super().reshape(bottom, top)
        self.engine = choose_engine(self, bottom[0].data.dtype)
        self._shaped_for, self._top_shape = key, top[0].shape

    def forward(self, bottom, top):
        self.engine.forward(bottom, top)

    def backward(self, top, propagate_down, bottom):
        self.engine.backward(top, propagate_down, bottom)


@register("Deconvolution")
class Deconvolution(_ConvBase):
    """Caffe's Deconvolution: the transpose of Convolution (its forward is convolution's backward)."""
    transposed = True

    def setup(self, bottom, top):
        super().setup(bottom, top)
        self._bottom_cols = {}

    def forward(self, bottom, top):
        g = self.geom
        dtype = bottom[0].data.dtype
        w = self.grouped_weights()
        dcol = scratch(None, "conv_dcol", g.cols_shape(g.rows, g.out_count), dtype)
        for i, (b, t) in enumerate(zip(bottom, top)):
            xc = g.as_cols(self, f"xcols{i}", b.data.reshape(g.num, self.channels, g.out_count))
            self._bottom_cols[i] = xc         # backward's weight gradient reads them again
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
            xc = self._bottom_cols.get(i)
            if xc is None:
                xc = g.as_cols(self, f"xcols{i}", b.data.reshape(g.num, self.channels, g.out_count))
            col_g = g.grouped(col, self.group)
            add_weight_grad(g.grouped(xc, self.group), col_g, self.grouped_weight_diff())
            if propagate_down[i]:
                dx = b.diff.reshape(g.num, self.channels, g.out_count)
                out = g.out_cols(None, "conv_out", dx)
                np.matmul(self.grouped_weights(), col_g, out=g.grouped(out, self.group))
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
