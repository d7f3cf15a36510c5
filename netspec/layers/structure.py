"""Blob plumbing: layers that route, split, join or re-view blobs without arithmetic on values."""
from .base import Layer, register


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
