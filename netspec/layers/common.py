"""InnerProduct, Softmax and Eltwise, plus the axis and softmax helpers other families share."""
import numpy as np

from .. import fillers
from ..proto import caffe_pb2
from .base import Layer, register


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

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.num_output)
        w = self.blobs[0].data
        np.matmul(x, w if self.transpose else w.T, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.M, self.num_output)
        x = bottom[0].data.reshape(self.M, self.K)
        w = self.blobs[0].data
        if self.transpose:
            self.blobs[0].diff += x.T @ dy
        else:
            self.blobs[0].diff += dy.T @ x
        if self.bias_term:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.M, self.K)
            np.matmul(dy, w.T if self.transpose else w, out=dx)


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
        op, out = self.layer_param.eltwise_param.operation, top[0].data
        if op == self.Op.SUM:
            if self.coeff[0] == 1 and self.coeff[1] == 1:     # x * 1 is x: one pass fewer
                np.add(bottom[0].data, bottom[1].data, out=out)
                rest = 2
            else:
                np.multiply(bottom[0].data, self.coeff[0], out=out)
                rest = 1
            for c, b in zip(self.coeff[rest:], bottom[rest:]):
                out += c * b.data if c != 1 else b.data
        elif op == self.Op.PROD:
            np.multiply(bottom[0].data, bottom[1].data, out=out)
            for b in bottom[2:]:
                out *= b.data
        else:
            # The first bottom holding the maximum wins ties, as in Caffe (strictly greater replaces).
            stacked = np.stack([b.data for b in bottom])
            self.argmax = stacked.argmax(axis=0)
            np.max(stacked, axis=0, out=out)

    def backward(self, top, propagate_down, bottom):
        p = self.layer_param.eltwise_param
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
