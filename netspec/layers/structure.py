"""Blob plumbing: layers that route, split, join or re-view blobs without arithmetic on values.

Split, Flatten, Reshape, Concat, Slice, Crop, Tile, Silence, Parameter, Filter,
BatchReindex, ArgMax, Reduction, Embed. Caffe's semantics; each class keeps its
forward and backward side by side.
"""
import numpy as np

from ..fillers import fill
from ..proto import caffe_pb2
from .base import Layer, register


def canonical_axis(layer, axis, shape, what="axis"):
    """Caffe's CanonicalAxisIndex: -n..n-1 -> 0..n-1, anything else is the user's error."""
    n = len(shape)
    if not -n <= axis < n:
        raise layer.error(f"{what} {axis} is out of range for a bottom of shape {tuple(shape)}")
    return axis % n


def bottom_name(layer, i):
    names = layer.layer_param.bottom
    return f"'{names[i]}'" if i < len(names) else f"#{i}"


def prod(dims):
    return int(np.prod(dims, dtype=np.int64))


def read_indices(layer, blob, limit, which):
    """Float-coded indices in a bottom -> int64 array, each checked to be an integer in [0, limit)."""
    values = blob.data.reshape(-1)
    idx = values.astype(np.int64)
    bad = (idx != values) | (idx < 0) | (idx >= limit)
    if bad.any():
        v = values[np.flatnonzero(bad)[0]]
        raise layer.error(f"bottom {bottom_name(layer, which)} holds index {v:g}, "
                          f"which is not an integer in [0, {limit})")
    return idx


@register("Split")
class Split(Layer):
    """One bottom to several tops sharing its data; backward sums the top diffs."""
    num_bottoms = 1
    num_tops = (1, None)

    def reshape(self, bottom, top):
        for t in top:
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        diff = bottom[0].diff
        diff[...] = top[0].diff
        for t in top[1:]:
            diff += t.diff


class _View(Layer):
    """Top is the bottom under another shape: data and diff shared, nothing to compute."""
    num_bottoms = 1
    num_tops = 1

    def reshape(self, bottom, top):
        top[0].reshape(self.top_shape(bottom[0].shape))
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


@register("Flatten")
class Flatten(_View):
    """Axes axis..end_axis (inclusive) merged into one."""

    def top_shape(self, shape):
        p = self.layer_param.flatten_param
        start = canonical_axis(self, p.axis, shape)
        end = canonical_axis(self, p.end_axis, shape, "end_axis")
        if end < start:
            raise self.error(f"end_axis {p.end_axis} comes before axis {p.axis} for bottom shape {shape}")
        return shape[:start] + (prod(shape[start:end + 1]),) + shape[end + 1:]


@register("Reshape")
class Reshape(_View):
    """reshape_param.shape replaces bottom axes [axis, axis + num_axes); 0 copies a dim, -1 is inferred."""

    def setup(self, bottom, top):
        dims = list(self.layer_param.reshape_param.shape.dim)
        if any(d < -1 for d in dims) or dims.count(-1) > 1:
            raise self.error(f"reshape_param shape {dims}: dims must be >= -1, with at most one -1")

    def top_shape(self, shape):
        p = self.layer_param.reshape_param
        n, count = len(shape), prod(shape)
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        end = n if p.num_axes == -1 else start + p.num_axes
        if not 0 <= start <= n or p.num_axes < -1 or end > n:
            raise self.error(f"axis {p.axis} / num_axes {p.num_axes} do not fit bottom shape {shape}")
        dims = []
        for i, d in enumerate(p.shape.dim):
            if d == 0 and start + i >= n:
                raise self.error(f"shape dim {i} is 0 (copy) but bottom shape {shape} has no axis {start + i}")
            dims.append(shape[start + i] if d == 0 else int(d))
        new = list(shape[:start]) + dims + list(shape[end:])
        if -1 in new:
            known = prod([d for d in new if d != -1])
            if known == 0 or count % known:
                raise self.error(f"cannot infer the -1 dim: bottom {bottom_name(self, 0)} shape {shape} "
                                 f"({count} elements) does not divide into {tuple(new)}")
            new[new.index(-1)] = count // known
        if prod(new) != count:
            raise self.error(f"cannot reshape bottom {bottom_name(self, 0)} of shape {shape} ({count} elements) "
                             f"to {tuple(new)} ({prod(new)} elements)")
        return tuple(new)


def _axis_with_legacy(layer, p, legacy, shape):
    """Concat's concat_dim / Slice's slice_dim: an older spelling of `axis` (non-negative only)."""
    if p.HasField(legacy) and p.HasField("axis"):
        raise layer.error(f"give either axis or {legacy}, not both")
    if p.HasField(legacy):
        return canonical_axis(layer, getattr(p, legacy), shape, legacy)
    return canonical_axis(layer, p.axis, shape)


def _slicer(axis, start, stop):
    return (slice(None),) * axis + (slice(start, stop),)


@register("Concat")
class Concat(Layer):
    """Bottoms joined along one axis; all other dims must agree."""
    num_bottoms = (1, None)
    num_tops = 1

    def reshape(self, bottom, top):
        ref = bottom[0].shape
        self.axis = axis = _axis_with_legacy(self, self.layer_param.concat_param, "concat_dim", ref)
        total = 0
        for i, b in enumerate(bottom):
            s = b.shape
            if len(s) != len(ref) or s[:axis] != ref[:axis] or s[axis + 1:] != ref[axis + 1:]:
                raise self.error(f"bottom {bottom_name(self, i)} has shape {s} but bottom {bottom_name(self, 0)} "
                                 f"has shape {ref}: they must match except on concat axis {axis}")
            total += s[axis]
        top[0].reshape(ref[:axis] + (total,) + ref[axis + 1:])
        if len(bottom) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(bottom) > 1:
            np.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        start = 0
        for b, down in zip(bottom, propagate_down):
            stop = start + b.shape[self.axis]
            if down:
                b.diff[...] = top[0].diff[_slicer(self.axis, start, stop)]
            start = stop


@register("Slice")
class Slice(Layer):
    """One bottom cut along an axis at slice_point (or into equal parts), one top per piece."""
    num_bottoms = 1
    num_tops = (1, None)

    def reshape(self, bottom, top):
        p = self.layer_param.slice_param
        shape = bottom[0].shape
        self.axis = axis = _axis_with_legacy(self, p, "slice_dim", shape)
        size = shape[axis]
        points = list(p.slice_point)
        if points:
            if len(points) != len(top) - 1:
                raise self.error(f"{len(points)} slice_point(s) for {len(top)} tops (need {len(top) - 1})")
            if any(b <= a for a, b in zip([0] + points, points + [size])):
                raise self.error(f"slice_point {points} must increase strictly inside (0, {size}) "
                                 f"for axis {axis} of bottom shape {shape}")
        else:
            if size % len(top):
                raise self.error(f"axis {axis} of bottom shape {shape} (size {size}) does not split "
                                 f"evenly into {len(top)} tops")
            points = [size // len(top) * i for i in range(1, len(top))]
        self.bounds = list(zip([0] + points, points + [size]))
        for t, (a, b) in zip(top, self.bounds):
            t.reshape(shape[:axis] + (b - a,) + shape[axis + 1:])
        if len(top) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(top) > 1:
            for t, (a, b) in zip(top, self.bounds):
                t.data[...] = bottom[0].data[_slicer(self.axis, a, b)]

    def backward(self, top, propagate_down, bottom):
        if len(top) > 1 and propagate_down[0]:
            for t, (a, b) in zip(top, self.bounds):
                bottom[0].diff[_slicer(self.axis, a, b)] = t.diff


@register("Crop")
class Crop(Layer):
    """bottom[0] cut to bottom[1]'s shape on axes >= axis, at `offset` (one for all, or one per axis)."""
    num_bottoms = 2
    num_tops = 1

    def reshape(self, bottom, top):
        big, ref = bottom[0].shape, bottom[1].shape
        if len(big) != len(ref):
            raise self.error(f"bottom {bottom_name(self, 0)} shape {big} and bottom {bottom_name(self, 1)} "
                             f"shape {ref} have different numbers of axes")
        start = canonical_axis(self, self.layer_param.crop_param.axis, big)
        offsets = list(self.layer_param.crop_param.offset)
        if len(offsets) > 1 and len(offsets) != len(big) - start:
            raise self.error(f"{len(offsets)} offsets given; need 1 or {len(big) - start} "
                             f"(one per axis from {start} of shape {big})")
        window = [slice(None)] * start
        for i in range(start, len(big)):
            off = 0 if not offsets else offsets[0 if len(offsets) == 1 else i - start]
            if off + ref[i] > big[i]:
                raise self.error(f"cannot crop axis {i} to size {ref[i]} at offset {off}: bottom "
                                 f"{bottom_name(self, 0)} shape {big} is too small for {bottom_name(self, 1)} "
                                 f"shape {ref}")
            window.append(slice(off, off + ref[i]))
        self.window = tuple(window)
        top[0].reshape(big[:start] + ref[start:])

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.window]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            bottom[0].diff[self.window] = top[0].diff
        if propagate_down[1]:
            bottom[1].diff[...] = 0  # only its shape is used

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("Tile")
class Tile(Layer):
    """Repeat the block of axes >= axis `tiles` times along axis."""
    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom, top):
        if self.layer_param.tile_param.tiles < 1:
            raise self.error(f"tile_param.tiles must be positive, got {self.layer_param.tile_param.tiles}")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = canonical_axis(self, self.layer_param.tile_param.axis, shape)
        self.tiles = self.layer_param.tile_param.tiles
        self.outer, self.inner = prod(shape[:axis]), prod(shape[axis:])
        top[0].reshape(shape[:axis] + (shape[axis] * self.tiles,) + shape[axis + 1:])

    def forward(self, bottom, top):
        top[0].data.reshape(self.outer, self.tiles, self.inner)[...] = bottom[0].data.reshape(self.outer, 1, -1)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            np.sum(top[0].diff.reshape(self.outer, self.tiles, self.inner), axis=1,
                   out=bottom[0].diff.reshape(self.outer, self.inner))


@register("Silence")
class Silence(Layer):
    """Swallows its bottoms (so they are not net outputs); their gradient is zero."""
    num_bottoms = (1, None)
    num_tops = 0

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0


@register("Parameter")
class Parameter(Layer):
    """Exposes one learnable blob (parameter_param.shape) as its top."""
    num_bottoms = 0
    num_tops = 1

    def setup(self, bottom, top):
        self.add_param_blob(tuple(self.layer_param.parameter_param.shape.dim))

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)
        top[0].share_data(self.blobs[0])

    def forward(self, bottom, top):
        top[0].share_data(self.blobs[0])  # the net may have swapped in a shared blob

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff += top[0].diff


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
            raise self.error(f"selector bottom {bottom_name(self, len(bottom) - 1)} must have shape (N,) or "
                             f"(N, 1, ...), got {sel.shape}")
        for i, b in enumerate(bottom[:-1]):
            if b.data.ndim < 1 or b.shape[0] != sel.shape[0]:
                raise self.error(f"bottom {bottom_name(self, i)} shape {b.shape} and selector shape {sel.shape} "
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
            raise self.error(f"index bottom {bottom_name(self, 1)} must be 1-D, got shape {bottom[1].shape}")
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
            axis = canonical_axis(self, p.axis, shape)
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
        axis = canonical_axis(self, self.layer_param.reduction_param.axis, shape)
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
