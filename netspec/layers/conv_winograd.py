"""The Winograd engine: F(2x2, 3x3) for 3x3, stride-1 convolutions that run no backward.

Winograd's minimal filtering computes each 2x2 block of outputs (a tile) from the 4x4 input
patch under it with 16 multiplications per channel pair instead of 36: the GEMMs do 2.25x
fewer operations than im2col's, on the transformed weights U (16, K, C) and transformed input
tiles V (16, C, tiles) (the transforms: _winograd_body.h); with groups, 16 x groups GEMMs, each
group's channels in its own. Results differ from the GEMM's by
rounding only (float32: about 1e-6 of the output's scale), as cuDNN's Winograd differs from
Caffe's GEMM, so nets that train keep the GEMM engines: this one serves forward-only nets
(deploy nets, `runs_backward` False). A backward that a script runs anyway gets StackedConv's,
with the columns built again.
"""
import threading

import numpy as np

from ..threads import even_count, parallel_for, spans
from . import native
from .base import scratch
from .conv_engines import CHUNKS, StackedConv

# Tiles per block: each block's V and M are a thread's work, its GEMMs 16 products of this
# width (np.matmul (16, K, C) x (16, C, tiles) at 1 thread: 64-128 tiles reach 50-60 GF/s).
BLOCK_TILES = 128


# G g G^T for a 3x3 kernel g as one linear map of its 9 taps (row-major) to the 16 entries of U:
# what the compiled winograd_weights works out (the tests' reference).
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
WEIGHT_MAP = np.einsum("ia,jb->ijab", _G, _G).reshape(16, 9)

# Fewest tiles in the batch for Winograd to pay: below, the 16 GEMMs are too narrow for BLAS
# and transforming the weights costs more than it saves. One layer at batch 1, 1 thread,
# Winograd / GEMM time: 14x14 maps (49 tiles) 0.72-0.92, 7x7 maps (16 tiles) 1.31-1.83.
MIN_TILES = 32


# Fewest input channels per group, the GEMMs' inner dimension: below, the transforms outweigh
# what the GEMMs save (SqueezeNet's expand3x3 at batch 10, Winograd / GEMM time: 16 channels
# 1.13, 32 channels 0.79).
MIN_GROUP_CHANNELS = 32


def tile_count(num, out):
    """2x2 output tiles over the batch: num x ceil(oh / 2) x ceil(ow / 2)."""
    return num * ((out[0] + 1) // 2) * ((out[1] + 1) // 2)


def applies(layer):
    """Whether F(2x2, 3x3) suits the layer at its bottom's shape (layer.num, layer.spatial_shape):
    2-D, 3x3, stride 1, no dilation, at least MIN_GROUP_CHANNELS input channels per group (AlexNet's
    two groups, not depthwise layers), and at least MIN_TILES tiles."""
    if not (layer.num_spatial == 2 and tuple(layer.kernel) == (3, 3) and tuple(layer.stride) == (1, 1)
            and tuple(layer.dilation) == (1, 1) and layer.channels // layer.group >= MIN_GROUP_CHANNELS):
        return False
    out = [size + 2 * pad - 2 for size, pad in zip(layer.spatial_shape, layer.pad)]
    return tile_count(layer.num, out) >= MIN_TILES


def transform_weights(w, u, k0, k1):
    """u[:, k0:k1] <- U = G g G^T of each 3x3 kernel g of w[k0:k1], for w (K, C, 3, 3) and u
    (16, K, C), both whole and contiguous. Compiled (winograd_weights): 2.1-2.5x the speed of the
    GEMM by WEIGHT_MAP it replaces (OpenBLAS's (16 x 9) x (9 x K*C): 0.76 ms for 256 x 256
    kernels, the compiled 0.36), and rounded as closely."""
    per_channel = w[0].size // 9
    native.kernels.winograd_weights(w, u, k0 * per_channel, k1 * per_channel)
    return u


# With one tile block (a sample of under 64 tiles: the 13x13 and 14x14 maps at batch 1) the
# threads split the work by output channels instead, in a power-of-two count of blocks per group
# (two threads get equal shares), at most CHANNEL_BLOCKS of at least MIN_BLOCK_CHANNELS each.
CHANNEL_BLOCKS = 4
MIN_BLOCK_CHANNELS = 32


def channel_blocks(channels, group):
    """[(group, first channel, end channel)]: the output channels of each group cut into blocks.
    By shape alone, so the bytes do not depend on the thread count."""
    per_group = channels // group
    count = even_count(min(CHANNEL_BLOCKS, per_group // MIN_BLOCK_CHANNELS))
    return [(gi, gi * per_group + a, gi * per_group + b) for gi in range(group) for a, b in spans(per_group, count)]


def block_count(tiles):
    """Blocks of at most BLOCK_TILES tiles, in a power-of-two count (two threads get equal shares),
    at least two from 64 tiles. By shape alone, so the bytes do not depend on the thread count."""
    count = max(2 if tiles >= 64 else 1, -(-tiles // BLOCK_TILES))
    return 1 << (count - 1).bit_length()


class WinogradConv(StackedConv):
    """Forward by F(2x2, 3x3) in blocks of BLOCK_TILES tiles, the threads taking blocks: each
    block's input transform, 16 GEMMs and output transform (with the bias) run back to back,
    so its V and M stay in cache. The epilogue runs on each sample's planes as soon as the last
    block touching the sample is done, in that block's thread. At batch 1 under 64 tiles (one
    block) the threads take blocks of output channels instead (forward_by_channels)."""

    blockwise_epilogue = True

    def __init__(self, layer):
        super().__init__(layer, compiled=True)
        self.fold_bias = False      # the bias is added by the output transform
        g = self.geom
        (oh, ow), (h, w), (ph, pw) = g.out, g.spatial, g.pad
        self.tiles = (oh + 1) // 2, (ow + 1) // 2
        self.total = tile_count(g.num, g.out)
        self.shape_in = (g.channels, h, w, ph, pw, oh, ow) + self.tiles
        self.shape_out = (layer.num_output,) + self.shape_in[1:]
        self.blocks = spans(self.total, block_count(self.total))
        # One sample in one block: output-channel blocks are each the threads' share (see
        # channel_blocks); a block of several samples keeps them whole.
        self.by_channels = g.num == 1 and len(self.blocks) == 1
        self.channel_blocks = channel_blocks(layer.num_output, layer.group)

    def forward_one(self, i, b, w, bias, y):
        if self.by_channels:
            return self.forward_by_channels(b, bias, y)
        g, layer = self.geom, self.layer
        dtype = y.dtype
        group = layer.group
        u = self.transformed_weights(dtype).reshape(16, group, layer.num_output // group, -1)
        x = b.data
        widest = max(t1 - t0 for t0, t1 in self.blocks)

        def by_group(a):
            """(16, rows, tiles) as (16, groups, rows / groups, tiles): a view."""
            return a.reshape(16, group, a.shape[1] // group, a.shape[2])

        def work(name, rows, width):
            """This thread's (16, rows, width) array, contiguous, from a buffer sized for the widest block."""
            return scratch(None, name, (16 * rows * widest,), dtype)[:16 * rows * width].reshape(16, rows, width)

        per_image = self.tiles[0] * self.tiles[1]
        samples = [range(t0 // per_image, (t1 - 1) // per_image + 1) for t0, t1 in self.blocks]
        blocks_left = [0] * g.num           # per sample, blocks not yet done
        for block_samples in samples:
            for n in block_samples:
                blocks_left[n] += 1
        lock = threading.Lock()

        def block(k):
            t0, t1 = self.blocks[k]
            v = work("winograd_v", g.channels, t1 - t0)
            m = work("winograd_m", layer.num_output, t1 - t0)
            native.kernels.winograd_input(x, v, self.shape_in, g.num, t0, t1)
            np.matmul(u, by_group(v), out=by_group(m))
            native.kernels.winograd_output(m, y, bias, self.shape_out, g.num, t0, t1)
            if self.epilogue is None:
                return
            with lock:
                for n in samples[k]:
                    blocks_left[n] -= 1
                finished = [n for n in samples[k] if blocks_left[n] == 0]
            for n in finished:
                self.finish_planes(n * layer.num_output, (n + 1) * layer.num_output)

        parallel_for(len(self.blocks), block)
        return None

    def forward_by_channels(self, b, bias, y):
        """One sample's tiles: V once, in this thread; then each output-channel block transforms
        its own weights, runs its 16 GEMMs (its rows of U) and its output transform, on the threads.
        The transforms do the one-block path's arithmetic; BLAS may round the GEMMs' thinner
        products differently (float32: about 1e-7 of the output)."""
        layer, dtype = self.layer, y.dtype
        group, channels, k = layer.group, self.geom.channels, layer.num_output
        tiles = self.total
        v = scratch(None, "winograd_v", (16, channels, tiles), dtype)
        native.kernels.winograd_input(b.data, v, self.shape_in, 1, 0, tiles)
        v_g = v.reshape(16, group, channels // group, tiles)
        u = scratch(None, "conv_cols", (16, k, channels // group), dtype)     # as transformed_weights
        w = layer.blobs[0].data

        def block(j):
            gi, k0, k1 = self.channel_blocks[j]
            transform_weights(w, u, k0, k1)
            m = scratch(None, "winograd_m", (16, k1 - k0, tiles), dtype)
            np.matmul(u[:, k0:k1], v_g[:, gi], out=m)
            native.kernels.winograd_output(m, y[0, k0:k1], None if bias is None else bias[k0:k1],
                                           (k1 - k0,) + self.shape_out[1:], 1, 0, tiles)
            self.finish_planes(k0, k1)

        parallel_for(len(self.channel_blocks), block)
        return None

    def transformed_weights(self, dtype):
        """U (16, K, C / groups), from the weights as they are now (a script may have changed them),
        by blocks of output channels among the threads."""
        k, c = self.layer.num_output, self.geom.channels // self.layer.group
        # In the calling thread's im2col buffer: nothing builds columns while this layer runs, and
        # the net then holds no separate buffer for U (GoogLeNet's largest: 4.5 MB).
        u = scratch(None, "conv_cols", (16, k, c), dtype)
        w = self.layer.blobs[0].data
        parts = spans(k, min(CHUNKS, max(1, k * c >> 14)))
        parallel_for(len(parts), lambda i: transform_weights(w, u, *parts[i]))
        return u
