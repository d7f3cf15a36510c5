"""BatchNorm/Scale/ReLU chains on one blob, run as one pass forward (and in training backward).

ResNet's and MobileNet's every convolution is followed by BatchNorm, Scale and ReLU, each in place
on the convolution's top and each a pass over it that only streams memory. One compiled pass
computes what the three would, with their roundings: ((x - mean) / std) * gamma + beta, then
max(., 0). The chain's layers are consecutive and all but the first in place, so no other blob
sees an intermediate value, and the blob holds the same bytes as after the separate layers. The
Net runs a chain only when the forward range holds all of it and no per-layer hooks or debug
output want to see the layers one by one.

Right after a convolution, on its top, the chain (a lone ReLU too) goes further: the convolution
runs it on each block of output planes as soon as its GEMM has written them, while they are still
in cache (find_epilogues, Convolution.epilogue), instead of one more pass over the whole top;
not where BatchNorm normalises by the batch's statistics, which need the whole top first.

In training the pass also writes, beside the top, what the layers' backward reads (Scale's
input, which in place it otherwise copies, and BatchNorm's normalised output: the same values,
kept once); and backward is one pass (Chain.backward): ReLU's mask, Scale's parameter sums and
its and BatchNorm's divisions together (with batch statistics, one more pass for BatchNorm's
gradient), with the layers' roundings, every sum summed as the layer's own backward sums it.
"""
import numpy as np

from .layers import native
from .threads import parallel_for, spans

# Elements per chunk handed to the threads (by the shape alone, so any thread count gives the same bytes).
CHUNK_ELEMENTS = 1 << 18


def _is_bn(layer):
    return layer.type == "BatchNorm" and hasattr(layer, "statistics")


def _batch_statistics(members):
    """Whether the chain's BatchNorm (if any) normalises by the batch's own statistics; members: {kind: record}."""
    bn = members.get("bn")
    return bn is not None and not bn.layer.use_global_stats


def _is_scale(layer, bottoms):
    return layer.type == "Scale" and len(bottoms) == 1 and layer.bias_index is not None


def _is_relu(layer):
    return layer.type == "ReLU" and layer.slope == 0


def _members_at(records, i):
    """[(kind, record)]: the BatchNorm?, Scale?, ReLU? run starting at record i, each past the
    first in place on the run's blob, either none running backward or all of them (training)."""
    members, j = [], i
    for kind, test in (("bn", lambda r: _is_bn(r.layer)), ("scale", lambda r: _is_scale(r.layer, r.bottoms)),
                       ("relu", lambda r: _is_relu(r.layer))):
        if j >= len(records):
            break
        r = records[j]
        if not test(r) or len(r.bottoms) != 1 or len(r.tops) != 1 or r.loss_weights:
            continue
        if members and not (r.bottoms[0] is r.tops[0] is members[-1][1].tops[0]):
            break      # past the first, each works in place on the chain's blob
        if members and r.need_backward != members[0][1].need_backward:
            break
        members.append((kind, r))
        j += 1
    return members


def find_chains(records):
    """{first record index: Chain} for every run of BatchNorm?, Scale?, ReLU? (two or more) on one blob."""
    chains, i = {}, 0
    while i < len(records):
        members = _members_at(records, i)
        if len(members) >= 2:
            chains[i] = Chain(i, dict(members))
            i += len(members)
        else:
            i += 1
    return chains


def find_epilogues(records):
    """{record index: Chain} where the run right after a convolution, or an Eltwise (ResNet's
    residual sum), works in place on its only top (one member is enough): the layer applies it
    to each block of its output as it writes it, while the block is still in cache
    (Convolution.epilogue, Eltwise.epilogue)."""
    found = {}
    for i, r in enumerate(records[:-1]):
        # Convolution and its forks' subclasses (ConvolutionDepthwise), and Eltwise, take an epilogue.
        # The layer's backward reads its bottoms, never its top, so training is no obstacle.
        if not hasattr(r.layer, "epilogue") or len(r.tops) != 1:
            continue
        members = _members_at(records, i + 1)
        # Batch statistics need the whole top first: such a chain runs after the layer instead.
        if members and members[0][1].bottoms[0] is members[0][1].tops[0] is r.tops[0] and \
                not _batch_statistics(dict(members)):
            found[i] = Chain(i + 1, dict(members))
    return found


class Chain:
    """Consecutive records [first, last] forming one BatchNorm/Scale/ReLU chain."""

    def __init__(self, first, members):
        self.first, self.members = first, members
        self.records = list(members.values())
        self.last = first + len(self.records) - 1
        self.applied = False        # as a layer's epilogue: whether its last forward ran it
        self.trains = self.records[0].need_backward
        scale = members.get("scale")
        self.batch_statistics = _batch_statistics(members)
        # In training an in-place Scale keeps its input, and BatchNorm on batch statistics its
        # output (the same values, where both are in the chain): the pass writes them there.
        self.keeps_scale_input = self.trains and scale is not None and scale.bottoms[0] is scale.tops[0]
        self.keeps = self.keeps_scale_input or (self.trains and self.batch_statistics)

    def prepare(self, outer=None, channels=None):
        """Reshape the chain's layers and set up the compiled pass: False when it cannot run
        (no kernel, another dtype, Scale over other axes). `outer, channels`: the blob's
        (N, C), needed only when neither BatchNorm nor Scale gives them (a lone ReLU)."""
        for r in self.records:
            r.layer.reshape(r.bottoms, r.tops)
        head = self.records[0]
        x = head.bottoms[0].data
        if native.kernels is None or not native.usable(x.dtype) or not hasattr(native.kernels, "channel_chain"):
            return False
        y = head.tops[0].data
        bn, scale = self.members.get("bn"), self.members.get("scale")
        mean = std = a = b = None
        if bn is not None:
            outer, channels = bn.layer.view[:2]
        elif scale is not None:
            outer, channels = scale.layer.view[:2]
        if outer is None or not x.size or x.size % (outer * channels):
            return False
        inner = x.size // (outer * channels)
        if scale is not None:
            if tuple(scale.layer.view) != (outer, channels, inner):
                return False        # Scale over other axes than BatchNorm's channels
            a = scale.layer.operand(scale.bottoms).reshape(-1)
            b = scale.layer.blobs[scale.layer.bias_index].data.reshape(-1)
            if a.dtype != x.dtype:
                return False
        # Last, once nothing can refuse: batch statistics also go into BatchNorm's stored sums.
        if bn is not None:
            mean, std = bn.layer.statistics(x.reshape(outer, channels, inner))
        keep = None
        if self.keeps:
            kept = scale.layer._x if scale is not None else bn.layer._x_norm
            if kept is None or kept.size != x.size or kept.dtype != x.dtype:
                kept = np.empty((outer, channels, inner), x.dtype)
            keep = kept.reshape(outer, channels, inner)
            if self.keeps_scale_input:
                scale.layer._x = keep
            if self.batch_statistics:
                bn.layer._x_norm = keep
        self.planes = outer * channels
        self.args = (x, y, mean, std, a, b, keep, outer, channels, inner, bn is not None, scale is not None,
                     "relu" in self.members)
        return True

    def planes_pass(self, start, stop):
        """The chain over planes [start, stop) (plane = sample * channels + channel), in this thread."""
        native.kernels.channel_chain(*self.args, (start, stop))

    def run(self):
        """Reshape and run the chain as one pass; False (nothing run) when the compiled kernel cannot."""
        if not self.prepare():
            return False
        self.run_prepared()
        return True

    def run_prepared(self):
        """The whole pass, shared among the threads (after prepare)."""
        parts = spans(self.planes, min(64, max(1, self.args[0].size // CHUNK_ELEMENTS)))
        parallel_for(len(parts), lambda k: self.planes_pass(*parts[k]))

    def backward(self):
        """The chain's backward as one pass; False (nothing run) where the compiled kernel cannot:
        a head out of place, a member whose bottom needs no gradient, another dtype, no kernel."""
        head, top = self.records[0], self.records[-1].tops[0]
        # Out of place, the head's top diff would be left as the layers after it leave it, which
        # the one pass does not write.
        if not self.trains or not hasattr(native.kernels, "chain_backward") or head.bottoms[0] is not top or \
                not all(r.bottom_need_backward[0] for r in self.records):
            return False
        bn, scale = self.members.get("bn"), self.members.get("scale")
        if not native.usable(top.diff.dtype):
            return False
        if scale is not None:
            view = scale.layer.view
            x = scale.layer._x if self.keeps_scale_input else scale.bottoms[0].data.reshape(view)
            a = scale.layer.operand(scale.bottoms)
            if x is None or a.dtype != top.diff.dtype or (bn is not None and tuple(bn.layer.view[:2]) != view[:2]):
                return False
        else:
            view = bn.layer.view
            x = bn.layer._x_norm if self.batch_statistics else None
            a = np.ones(view[1], top.diff.dtype)        # g * 1 rounds to g: BatchNorm's gradient alone
        if self.batch_statistics and x is None:
            return False
        shape = (view[0], view[1], -1)
        dy, y = top.diff.reshape(shape), top.data.reshape(shape)
        dx = head.bottoms[0].diff.reshape(shape)
        # Stored statistics: BatchNorm's division in the pass. Batch statistics: the pass leaves
        # Scale's dx and the sums BatchNorm's gradient needs, which batch_norm_grad then finishes.
        divide = bn is not None and not self.batch_statistics
        sums = native.chain_backward(dy, y, y if x is None else x, a, bn.layer.std if divide else None, dx,
                                     "relu" in self.members, batch_sums=self.batch_statistics)
        if scale is not None:       # Scale's parameter gradients, as its backward adds them
            sum_g, sum_gx = sums[:2].astype(dy.dtype)
            bias = scale.layer.blobs[scale.layer.bias_index]
            bias.diff += sum_g.reshape(bias.shape)
            scale.layer.blobs[0].diff += sum_gx.reshape(scale.layer.blobs[0].shape)
        if self.batch_statistics:   # as BatchNorm's backward: the means of dx and dx * x_norm
            means = (sums[2:] / (x.shape[0] * x.shape[2])).astype(dy.dtype)
            native.batch_norm_grad(dx, x, means[0], means[1], bn.layer.std, dx)
        return True
