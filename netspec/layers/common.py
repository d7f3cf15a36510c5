"""InnerProduct, Softmax and Eltwise, plus the axis and softmax helpers other families share."""
import numpy as np

from .. import fillers
from ..proto import caffe_pb2
from ..threads import FLAT_CHUNK, FLAT_CHUNKS, even_count, parallel_flat, parallel_for, spans
from . import native
from .base import Layer, register


# GEMMs are cut into at most this many blocks for the threads (threads.py), by shape alone.
CHUNKS = 8
# From 2 to 12 rows (the batch), InnerProduct's forward streams its weights through the compiled
# rows_dot rather than a BLAS GEMM, which packs all of them on every call (CaffeNet's fc6, 1 thread,
# weights from memory, rows_dot / GEMM time: 2 rows 0.39, 3 rows 0.21, 10 rows 0.56; at 16 rows
# little gain). One row is a BLAS matrix-vector product, which packs nothing (rows_dot 1.17 of it).
ROWS_DOT_ROWS = range(2, 13)
# Fewest output units (or input columns) in one block of an InnerProduct GEMM cut for the threads:
# LeNet's ip1 (64 x 800 by 500 outputs) at 1 thread took 0.69 ms whole, 0.71 ms in 2 blocks,
# 0.76 in 4 and 0.81 in the 7 blocks of 64 or more it was cut into before (4 to one thread, 3 to the other).
MIN_BLOCK = 128


def split_at_axis(shape, axis):
    """(outer, channels, inner): the element counts before, at and after `axis`."""
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, int(shape[axis]), inner


def softmax(x, axis, out):
    """Numerically stable softmax of `x` along `axis` into `out` (which may be `x` itself)."""
    peak = x.max(axis=axis, keepdims=True)
    np.subtract(x, peak, out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


@register("InnerProduct")
class InnerProduct(Layer):
    """Fully connected: top = bottom (flattened from `axis` into K) x W^T + b, one GEMM over the batch.

    Weights are (num_output, K), or (K, num_output) with `transpose: true`; bias is (num_output,).
    """
    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        if not p.HasField("num_output") or p.num_output == 0:
            raise self.error("inner_product_param.num_output must be set to a positive number")
        self.num_output = int(p.num_output)
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        self.axis = self.canonical_axis(p.axis, bottom[0].shape)
        self.K = int(np.prod(bottom[0].shape[self.axis:], dtype=np.int64))
        shape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
        fillers.fill(p.weight_filler, self.add_param_blob(shape).data)
        if self.bias_term:
            fillers.fill(p.bias_filler, self.add_param_blob((self.num_output,)).data)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = self.canonical_axis(self.layer_param.inner_product_param.axis, shape)
        k = int(np.prod(shape[axis:], dtype=np.int64))
        if k != self.K:
            raise self.error(f"input size changed from {self.K} to {k} (bottom shape {shape} flattened from "
                             f"axis {axis}); the weights were set up for {self.K} inputs per item")
        self.axis = axis
        self.M = int(np.prod(shape[:axis], dtype=np.int64))
        top[0].reshape(shape[:axis] + (self.num_output,))

    def _blocks(self, n):
        """[(start, stop)] over n output units (or input columns): the GEMMs cut by the shape alone,
        for the threads, into a power-of-two count of blocks (two threads get equal shares) of at
        least MIN_BLOCK; one block when the product is small."""
        if self.M * self.K * self.num_output < (1 << 21):
            return [(0, n)]
        return spans(n, even_count(min(CHUNKS, n // MIN_BLOCK)))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.num_output)
        w = self.blobs[0].data
        bias = self.blobs[1].data if self.bias_term else None
        blocks = self._blocks(self.num_output)
        streamed = (not self.transpose and self.M in ROWS_DOT_ROWS and native.usable(x.dtype)
                    and hasattr(native.kernels, "rows_dot"))

        def chunk(k):
            a, b = blocks[k]
            out = y[:, a:b]
            if streamed:
                native.kernels.rows_dot(x, w, y, self.M, self.K, self.num_output, a, b)
            else:
                np.matmul(x, w[:, a:b] if self.transpose else w[a:b].T, out=out)
            if bias is not None:
                out += bias[a:b]

        parallel_for(len(blocks), chunk)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.M, self.num_output)
        x = bottom[0].data.reshape(self.M, self.K)
        w, w_diff = self.blobs[0].data, self.blobs[0].diff
        if self.bias_term:
            self.blobs[1].diff += dy.sum(axis=0)
        # The weight gradient by blocks of outputs and the data gradient by blocks of input columns,
        # one list of work for one parallel_for (one hand-off to the threads, not two).
        items = [("weight", a, b) for a, b in self._blocks(self.num_output)]
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.M, self.K)
            items += [("data", a, b) for a, b in self._blocks(self.K)]

        def chunk(k):
            what, a, b = items[k]
            if what == "data":
                np.matmul(dy, w[a:b].T if self.transpose else w[:, a:b], out=dx[:, a:b])
            elif self.transpose:
                w_diff[:, a:b] += x.T @ dy[:, a:b]
            else:
                w_diff[a:b] += dy[:, a:b].T @ x

        parallel_for(len(items), chunk)


@register("Softmax")
class Softmax(Layer):
    """Softmax along softmax_param.axis (default 1); works in place (backward needs only the top)."""
    num_bottoms = 1
    num_tops = 1

    def reshape(self, bottom, top):
        self.axis = self.canonical_axis(self.layer_param.softmax_param.axis, bottom[0].shape)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        softmax(bottom[0].data, self.axis, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff
        # dx = y * (dy - <dy, y>) along the axis; the dot comes first so dx may alias dy.
        dot = (dy * y).sum(axis=self.axis, keepdims=True)
        np.subtract(dy, dot, out=dx)
        dx *= y


@register("Eltwise")
class Eltwise(Layer):
    """Elementwise PROD, SUM (with per-bottom coeff) or MAX of bottoms of one shape."""
    num_bottoms = (2, None)
    num_tops = 1
    Op = caffe_pb2.EltwiseParameter
    # A fusion.Chain (ResNet's ReLU after the residual sum) that the Net hands over for one forward,
    # run on each block of the top as SUM or PROD writes it; its `applied` says whether it was.
    epilogue = None

    def setup(self, bottom, top):
        p = self.layer_param.eltwise_param
        if len(p.coeff) and p.operation != self.Op.SUM:
            raise self.error("coeff is only allowed with operation SUM")
        if len(p.coeff) not in (0, len(bottom)):
            raise self.error(f"{len(p.coeff)} coeff values for {len(bottom)} bottoms (give one per bottom)")
        self.coeff = list(p.coeff) or [1.0] * len(bottom)

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise self.error(f"bottom '{self.layer_param.bottom[i]}' has shape {b.shape}, bottom "
                                 f"'{self.layer_param.bottom[0]}' has {bottom[0].shape}; they must match")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        op = self.layer_param.eltwise_param.operation
        if op in (self.Op.SUM, self.Op.PROD):
            y = top[0].data
            epilogue = self.epilogue
            if epilogue is not None and y.ndim >= 2 and y.size and epilogue.prepare(y.shape[0], y.shape[1]):
                self._with_epilogue(epilogue, y, [b.data for b in bottom])
            else:
                parallel_flat(self._sum_or_product, y, *(b.data for b in bottom))
        else:
            # The first bottom holding the maximum wins ties, as in Caffe (strictly greater replaces).
            stacked = np.stack([b.data for b in bottom])
            self.argmax = stacked.argmax(axis=0)
            np.max(stacked, axis=0, out=top[0].data)

    def _with_epilogue(self, epilogue, y, inputs):
        """SUM or PROD by blocks of planes (sample x channel), each block's epilogue right after it,
        while the block is still in cache: one pass over the top instead of two."""
        planes = y.shape[0] * y.shape[1]
        inner = y.size // planes
        blocks = spans(planes, min(FLAT_CHUNKS, y.size // FLAT_CHUNK))
        flats = [a.reshape(-1) for a in [y] + inputs]

        def block(k):
            p0, p1 = blocks[k]
            self._sum_or_product(*(f[p0 * inner:p1 * inner] for f in flats))
            epilogue.planes_pass(p0, p1)

        parallel_for(len(blocks), block)
        epilogue.applied = True

    def _sum_or_product(self, out, *inputs):
        if self.layer_param.eltwise_param.operation == self.Op.SUM:
            if self.coeff[0] == 1 and self.coeff[1] == 1:     # x * 1 is x: one pass fewer
                np.add(inputs[0], inputs[1], out=out)
                rest = 2
            else:
                np.multiply(inputs[0], self.coeff[0], out=out)
                rest = 1
            for c, x in zip(self.coeff[rest:], inputs[rest:]):
                out += c * x if c != 1 else x
        else:
            np.multiply(inputs[0], inputs[1], out=out)
            for x in inputs[2:]:
                out *= x

    def backward(self, top, propagate_down, bottom):
        p = self.layer_param.eltwise_param
        if p.operation == self.Op.SUM:
            for i, b in enumerate(bottom):
                if propagate_down[i]:
                    parallel_flat(lambda dy, dx, c=self.coeff[i]: np.multiply(dy, c, out=dx), top[0].diff, b.diff)
            return
        dy = top[0].diff
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            if p.operation == self.Op.SUM:
                np.multiply(dy, self.coeff[i], out=b.diff)
            elif p.operation == self.Op.PROD:
                others = [o.data for j, o in enumerate(bottom) if j != i]
                # Always the product of the other bottoms (Caffe's stable_prod_grad): the
                # division form top/bottom is wrong wherever this bottom is zero.
                np.multiply(dy, others[0], out=b.diff)
                for o in others[1:]:
                    b.diff *= o
            else:
                np.multiply(dy, self.argmax == i, out=b.diff)
