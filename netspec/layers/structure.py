"""Blob plumbing: layers that route, split, join or re-view blobs without arithmetic on values.

Split, Flatten, Reshape, Concat, Slice, Crop, Tile, Permute (SSD), ShuffleChannel, Silence, Parameter.
Caffe's semantics; each class keeps its forward and backward side by side. Layers that
select by index or reduce (Filter, ArgMax, Embed, ...) are in indexing.py.
"""
import numpy as np

from ..threads import parallel_flat, parallel_for, spans
from .base import Layer, prod, register

# Samples are cut into at most this many chunks for Concat's copies (threads.py).
SAMPLE_CHUNKS = 8


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
        parallel_flat(self._sum, bottom[0].diff, *(t.diff for t in top))

    @staticmethod
    def _sum(diff, *top_diffs):
        if len(top_diffs) == 1:
            np.copyto(diff, top_diffs[0])
            return
        np.add(top_diffs[0], top_diffs[1], out=diff)    # the copy and the first add in one pass
        for d in top_diffs[2:]:
            diff += d


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
        start = self.canonical_axis(p.axis, shape)
        end = self.canonical_axis(p.end_axis, shape, "end_axis")
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
                raise self.error(f"cannot infer the -1 dim: bottom {self.bottom_name(0)} shape {shape} "
                                 f"({count} elements) does not divide into {tuple(new)}")
            new[new.index(-1)] = count // known
        if prod(new) != count:
            raise self.error(f"cannot reshape bottom {self.bottom_name(0)} of shape {shape} ({count} elements) "
                             f"to {tuple(new)} ({prod(new)} elements)")
        return tuple(new)


def _axis_with_legacy(layer, p, legacy, shape):
    """Concat's concat_dim / Slice's slice_dim: an older spelling of `axis` (non-negative only)."""
    if p.HasField(legacy) and p.HasField("axis"):
        raise layer.error(f"give either axis or {legacy}, not both")
    if p.HasField(legacy):
        return layer.canonical_axis(getattr(p, legacy), shape, legacy)
    return layer.canonical_axis(p.axis, shape)


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
                raise self.error(f"bottom {self.bottom_name(i)} has shape {s} but bottom {self.bottom_name(0)} "
                                 f"has shape {ref}: they must match except on concat axis {axis}")
            total += s[axis]
        top[0].reshape(ref[:axis] + (total,) + ref[axis + 1:])
        if len(bottom) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def _sample_chunks(self, top):
        """Concatenation past axis 0 copies each sample's parts alone: chunks of samples, in parallel."""
        shape = top[0].shape
        if self.axis == 0 or not shape:
            return [(None, None)]
        return spans(shape[0], min(SAMPLE_CHUNKS, top[0].count // (1 << 16)))

    def forward(self, bottom, top):
        if len(bottom) == 1:
            return
        chunks = self._sample_chunks(top)

        def chunk(k):
            a, b_ = chunks[k]
            np.concatenate([b.data[a:b_] for b in bottom], axis=self.axis, out=top[0].data[a:b_])

        parallel_for(len(chunks), chunk)

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        chunks = self._sample_chunks(top)

        def chunk(k):
            a, b_ = chunks[k]
            diff = top[0].diff[a:b_]
            start = 0
            for b, down in zip(bottom, propagate_down):
                stop = start + b.shape[self.axis]
                if down:
                    b.diff[a:b_] = diff[_slicer(self.axis, start, stop)]
                start = stop

        parallel_for(len(chunks), chunk)


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
            raise self.error(f"bottom {self.bottom_name(0)} shape {big} and bottom {self.bottom_name(1)} "
                             f"shape {ref} have different numbers of axes")
        start = self.canonical_axis(self.layer_param.crop_param.axis, big)
        offsets = list(self.layer_param.crop_param.offset)
        if len(offsets) > 1 and len(offsets) != len(big) - start:
            raise self.error(f"{len(offsets)} offsets given; need 1 or {len(big) - start} "
                             f"(one per axis from {start} of shape {big})")
        window = [slice(None)] * start
        for i in range(start, len(big)):
            off = 0 if not offsets else offsets[0 if len(offsets) == 1 else i - start]
            if off + ref[i] > big[i]:
                raise self.error(f"cannot crop axis {i} to size {ref[i]} at offset {off}: bottom "
                                 f"{self.bottom_name(0)} shape {big} is too small for {self.bottom_name(1)} "
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
        axis = self.canonical_axis(self.layer_param.tile_param.axis, shape)
        self.tiles = self.layer_param.tile_param.tiles
        self.outer, self.inner = prod(shape[:axis]), prod(shape[axis:])
        top[0].reshape(shape[:axis] + (shape[axis] * self.tiles,) + shape[axis + 1:])

    def forward(self, bottom, top):
        top[0].data.reshape(self.outer, self.tiles, self.inner)[...] = bottom[0].data.reshape(self.outer, 1, -1)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            np.sum(top[0].diff.reshape(self.outer, self.tiles, self.inner), axis=1,
                   out=bottom[0].diff.reshape(self.outer, self.inner))


@register("Permute")
class Permute(Layer):
    """SSD's transpose: top axes in `order`; axes not listed follow in their original order."""
    num_bottoms = 1
    num_tops = 1

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        order = list(self.layer_param.permute_param.order)
        if len(set(order)) != len(order) or any(a >= len(shape) for a in order):
            raise self.error(f"permute_param order {order} must list distinct axes of bottom "
                             f"{self.bottom_name(0)} shape {shape}")
        self.order = order + [a for a in range(len(shape)) if a not in order]
        self.inverse = list(np.argsort(self.order))
        top[0].reshape(tuple(shape[a] for a in self.order))

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.transpose(self.order)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.transpose(self.inverse)


@register("ShuffleChannel")
class ShuffleChannel(Layer):
    """ShuffleNet's channel shuffle: channels viewed as (group, C / group), transposed to
    (C / group, group); backward applies the inverse transpose. In place allowed."""
    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom, top):
        self.group = self.layer_param.shuffle_channel_param.group
        if self.group < 1:
            raise self.error(f"shuffle_channel_param.group must be positive, got {self.group}")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2 or shape[1] % self.group:
            raise self.error(f"group {self.group} does not divide the channels of bottom shape {shape}")
        self.view = (shape[0], self.group, shape[1] // self.group, prod(shape[2:]))
        if top[0] is not bottom[0]:
            top[0].reshape(shape)

    def _permute(self, src, dst, view):
        moved = src.reshape(view).transpose(0, 2, 1, 3)
        dst.reshape(moved.shape)[...] = moved.copy() if dst is src else moved

    def forward(self, bottom, top):
        self._permute(bottom[0].data, top[0].data, self.view)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            n, g, k, rest = self.view
            self._permute(top[0].diff, bottom[0].diff, (n, k, g, rest))


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
