"""The depthwise convolution engine (group == input channels: MobileNet's 3x3 layers)."""
import numpy as np

from ..threads import parallel_for, spans
from . import native
from .conv_engines import ConvEngine


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
