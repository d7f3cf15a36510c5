"""Inference chains: BatchNorm (stored statistics), Scale (with a bias) and ReLU on one blob, in one pass.

ResNet's and MobileNet's every convolution is followed by BatchNorm, Scale and ReLU, each in place
on the convolution's top and each a pass over it that only streams memory. When none of them runs
backward (nothing is kept for it), one compiled pass computes what the three would, with their
roundings: ((x - mean) / std) * gamma + beta, then max(., 0). The chain's layers are consecutive
and all but the first in place, so no other blob sees an intermediate value, and the blob holds
the same bytes as after the separate layers. The Net runs a chain only when the forward range
holds all of it and no per-layer hooks or debug output want to see the layers one by one.

Right after a convolution, on its top, the chain (a lone ReLU too) goes further: the convolution
runs it on each block of output planes as soon as its GEMM has written them, while they are still
in cache (find_epilogues, Convolution.epilogue), instead of one more pass over the whole top.
"""
from .layers import native
from .threads import parallel_for, spans

# Elements per chunk handed to the threads (by the shape alone, so any thread count gives the same bytes).
CHUNK_ELEMENTS = 1 << 18


def _is_bn(layer):
    return layer.type == "BatchNorm" and layer.use_global_stats and hasattr(layer, "stored_statistics")


def _is_scale(layer, bottoms):
    return layer.type == "Scale" and len(bottoms) == 1 and layer.bias_index is not None


def _is_relu(layer):
    return layer.type == "ReLU" and layer.slope == 0


def _members_at(records, i):
    """[(kind, record)]: the BatchNorm?, Scale?, ReLU? run starting at record i, each past the
    first in place on the run's blob, none running backward."""
    members, j = [], i
    for kind, test in (("bn", lambda r: _is_bn(r.layer)), ("scale", lambda r: _is_scale(r.layer, r.bottoms)),
                       ("relu", lambda r: _is_relu(r.layer))):
        if j >= len(records):
            break
        r = records[j]
        if not test(r) or len(r.bottoms) != 1 or len(r.tops) != 1 or r.need_backward or r.loss_weights:
            continue
        if members and not (r.bottoms[0] is r.tops[0] is members[-1][1].tops[0]):
            break      # past the first, each works in place on the chain's blob
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
        if not hasattr(r.layer, "epilogue") or len(r.tops) != 1 or r.need_backward:
            continue
        members = _members_at(records, i + 1)
        if members and members[0][1].bottoms[0] is members[0][1].tops[0] is r.tops[0]:
            found[i] = Chain(i + 1, dict(members))
    return found


class Chain:
    """Consecutive records [first, last] forming one BatchNorm/Scale/ReLU chain."""

    def __init__(self, first, members):
        self.first, self.members = first, members
        self.records = list(members.values())
        self.last = first + len(self.records) - 1
        self.applied = False        # as a layer's epilogue: whether its last forward ran it

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
            mean, std = bn.layer.stored_statistics(x.dtype)
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
        self.planes = outer * channels
        self.args = (x, y, mean, std, a, b, outer, channels, inner, bn is not None, scale is not None,
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
