"""Layers that select or gather by index, or reduce: Filter, BatchReindex, ArgMax, Reduction, Embed.

Indices arrive as float blobs (Caffe's convention); read_indices checks each is a
whole number in range before it is used, so a bad label names the layer and value.
"""
import numpy as np

from ..fillers import fill
from ..proto import caffe_pb2
from .base import Layer, prod, register


def read_indices(layer, blob, limit, which):
    """Float-coded indices in a bottom -> int64 array, each checked to be an integer in [0, limit)."""
    values = blob.data.reshape(-1)
    idx = values.astype(np.int64)
    bad = (idx != values) | (idx < 0) | (idx >= limit)
    if bad.any():
        v = values[np.flatnonzero(bad)[0]]
        raise layer.error(f"bottom {layer.bottom_name(which)} holds index {v:g}, "
                          f"which is not an integer in [0, {limit})")
    return idx


@register("Filter")
class Filter(Layer):
    """Keeps the items (first-axis entries) whose selector, the last bottom, is nonzero."""
    num_bottoms = (2, None)
    num_tops = (1, None)

    def setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise self.error(f"needs one top per filtered bottom: {len(bottom) - 1} bottoms, {len(top)} tops")
        self.first_reshape = True

    def reshape(self, bottom, top):
        sel = bottom[-1]
        if sel.data.ndim < 1 or any(d != 1 for d in sel.shape[1:]):
            raise self.error(f"selector bottom {self.bottom_name(len(bottom) - 1)} must have shape (N,) or "
                             f"(N, 1, ...), got {sel.shape}")
        for i, b in enumerate(bottom[:-1]):
            if b.data.ndim < 1 or b.shape[0] != sel.shape[0]:
                raise self.error(f"bottom {self.bottom_name(i)} shape {b.shape} and selector shape {sel.shape} "
                                 f"differ on the first axis")
        self.keep = np.flatnonzero(sel.data.reshape(-1))
        # Like Caffe, the set-up reshape keeps every item (the selector is not filled yet).
        n = sel.shape[0] if self.first_reshape else len(self.keep)
        self.first_reshape = False
        for t, b in zip(top, bottom):
            t.reshape((n,) + b.shape[1:])

    def forward(self, bottom, top):
        for t, b in zip(top, bottom):
            t.data[:len(self.keep)] = b.data[self.keep]

    def backward(self, top, propagate_down, bottom):
        for t, b, down in zip(top, bottom, propagate_down):
            if down:
                b.diff[...] = 0
                b.diff[self.keep] = t.diff[:len(self.keep)]
        if propagate_down[-1]:
            bottom[-1].diff[...] = 0  # no gradient flows into the selector

    def allow_force_backward(self, bottom_index):
        return bottom_index != len(self.layer_param.bottom) - 1


@register("BatchReindex")
class BatchReindex(Layer):
    """top[i] = bottom[0][bottom[1][i]]; backward accumulates repeated indices."""
    num_bottoms = 2
    num_tops = 1

    def reshape(self, bottom, top):
        if bottom[1].data.ndim != 1:
            raise self.error(f"index bottom {self.bottom_name(1)} must be 1-D, got shape {bottom[1].shape}")
        top[0].reshape((bottom[1].shape[0],) + bottom[0].shape[1:])

    def forward(self, bottom, top):
        self.idx = read_indices(self, bottom[1], bottom[0].shape[0], 1)
        np.take(bottom[0].data, self.idx, axis=0, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            np.add.at(bottom[0].diff, self.idx, top[0].diff)
        if propagate_down[1]:
            bottom[1].diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("ArgMax")
class ArgMax(Layer):
    """Indices (or values) of the top_k largest entries per item, or along `axis`. No backward."""
    num_bottoms = 1
    num_tops = 1

    def reshape(self, bottom, top):
        p = self.layer_param.argmax_param
        shape = bottom[0].shape
        self.k, self.has_axis = p.top_k, p.HasField("axis")
        if self.has_axis:
            axis = self.canonical_axis(p.axis, shape)
            self.outer, self.dim, self.inner = prod(shape[:axis]), shape[axis], prod(shape[axis + 1:])
            top_shape = shape[:axis] + (self.k,) + shape[axis + 1:]
        else:
            self.outer, self.dim, self.inner = shape[0], prod(shape[1:]), 1
            top_shape = [shape[0], 2 if p.out_max_val else 1, self.k] + [1] * (len(shape) - 3)
        if not 1 <= self.k <= self.dim:
            raise self.error(f"top_k {self.k} must be between 1 and {self.dim} for bottom shape {shape}")
        top[0].reshape(tuple(top_shape))

    def forward(self, bottom, top):
        # Caffe orders (value, index) pairs descending: among equal values the larger index wins.
        x = bottom[0].data.reshape(self.outer, self.dim, self.inner)[:, ::-1]
        order = np.argsort(-x, axis=1, kind="stable")[:, :self.k]
        values = np.take_along_axis(x, order, axis=1)
        index = self.dim - 1 - order
        out_max = self.layer_param.argmax_param.out_max_val
        if self.has_axis:
            top[0].data.reshape(self.outer, self.k, self.inner)[...] = values if out_max else index
        elif out_max:
            pairs = top[0].data.reshape(self.outer, 2, self.k)
            pairs[:, 0] = index[:, :, 0]
            pairs[:, 1] = values[:, :, 0]
        else:
            top[0].data.reshape(self.outer, self.k)[...] = index[:, :, 0]


_RED = caffe_pb2.ReductionParameter


@register("Reduction")
class Reduction(Layer):
    """SUM / ASUM / SUMSQ / MEAN over all axes from `axis` on, times coeff."""
    num_bottoms = 1
    num_tops = 1

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = self.canonical_axis(self.layer_param.reduction_param.axis, shape)
        self.num, self.dim = prod(shape[:axis]), prod(shape[axis:])
        top[0].reshape(shape[:axis])

    def forward(self, bottom, top):
        p = self.layer_param.reduction_param
        x = bottom[0].data.reshape(self.num, self.dim)
        if p.operation == _RED.ASUM:
            x = np.abs(x)
        elif p.operation == _RED.SUMSQ:
            x = x * x
        out = top[0].data.reshape(self.num)
        np.sum(x, axis=1, out=out)
        out *= p.coeff / self.dim if p.operation == _RED.MEAN else p.coeff

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        p = self.layer_param.reduction_param
        g = top[0].diff.reshape(self.num, 1) * p.coeff
        x = bottom[0].data.reshape(self.num, self.dim)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        if p.operation == _RED.ASUM:
            np.multiply(np.sign(x), g, out=dx)
        elif p.operation == _RED.SUMSQ:
            np.multiply(x, 2 * g, out=dx)
        else:
            dx[...] = g / self.dim if p.operation == _RED.MEAN else g


@register("Embed")
class Embed(Layer):
    """Lookup table: each bottom value is a row index into weight (input_dim, num_output), plus bias."""
    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom, top):
        p = self.layer_param.embed_param
        if p.num_output < 1 or p.input_dim < 1:
            raise self.error(f"embed_param needs positive num_output and input_dim, got {p.num_output}, {p.input_dim}")
        fill(p.weight_filler, self.add_param_blob((p.input_dim, p.num_output)).data)
        if p.bias_term:
            fill(p.bias_filler, self.add_param_blob((p.num_output,)).data)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.layer_param.embed_param.num_output,))

    def forward(self, bottom, top):
        p = self.layer_param.embed_param
        self.idx = read_indices(self, bottom[0], p.input_dim, 0)
        out = top[0].data.reshape(-1, p.num_output)
        np.take(self.blobs[0].data, self.idx, axis=0, out=out)
        if p.bias_term:
            out += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        p = self.layer_param.embed_param
        dy = top[0].diff.reshape(-1, p.num_output)
        np.add.at(self.blobs[0].diff, self.idx, dy)
        if p.bias_term:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = 0  # indices have no gradient

    def allow_force_backward(self, bottom_index):
        return False
