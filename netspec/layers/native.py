"""The compiled kernels of netspec/_native.c (here `kernels`) and the 2-D convolution on them.

pip builds the extension when the machine has a C compiler; without it, or with
NETSPEC_NATIVE=0 in the environment, every layer keeps its numpy path (im2col.py,
window_pool.py), which the tests hold the compiled one to.

Compiled convolution keeps Caffe's column layout, one row per (channel, kernel offset),
with the samples side by side: (C*kh*kw, N*P). im2col reads NCHW directly and col2im
writes it, so the only layout moves left are the GEMM output's (M, N, P) -> (N, M, P).
"""
import os

import numpy as np

from ..threads import FLAT_CHUNK, parallel_for, spans

# The per-channel kernels run over at most this many chunks at once (threads.py).
CHUNKS = 8


try:
    from .. import _native as kernels
    if getattr(kernels, "ABI", None) != 5:     # a stale build from older sources
        kernels = None
except ImportError:
    kernels = None

# The kernels run their AVX2 copy where the CPU has it (the same bits as the baseline copy);
# NETSPEC_NATIVE_ISA=baseline forces the SSE2 one, to rule the copy out when chasing a difference.
_isa = os.environ.get("NETSPEC_NATIVE_ISA")
if _isa and kernels is not None and hasattr(kernels, "set_isa"):
    try:
        kernels.set_isa(_isa)
    except ValueError as e:
        import warnings
        warnings.warn("NETSPEC_NATIVE_ISA: %s; running %s" % (e, kernels.isa()))

# Read by layers when they are shaped; tests switch it off to run the numpy paths.
ENABLED = kernels is not None and os.environ.get("NETSPEC_NATIVE", "1") != "0"


def usable(dtype):
    return ENABLED and np.dtype(dtype) in (np.float32, np.float64)


def has_depthwise():
    """Whether the build has the depthwise kernels (a build from older sources may not)."""
    return hasattr(kernels, "depthwise_forward")


def has_winograd():
    """Whether the build has the Winograd transforms (a build from older sources may not)."""
    return hasattr(kernels, "winograd_input") and hasattr(kernels, "winograd_weights")


def has_sgd_step(dtype):
    """Whether the compiled SGD step serves parameters of `dtype` (a build from older sources may lack it)."""
    return usable(dtype) and hasattr(kernels, "sgd_step")


def has_lrn():
    """Whether the build has the LRN kernel (a build from older sources may not)."""
    return hasattr(kernels, "lrn_across")


def window_geometry(channels, size, kernel, stride, pad, dilation, out):
    """The geometry tuple the kernels take: (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)."""
    return tuple(int(v) for v in (channels, *size, *kernel, *stride, *pad, *dilation, *out))


def _outer_chunks(outer, channels, inner):
    """How the per-channel kernels cut (outer, C, inner) data for the threads (by shape alone):
    [(outer slice, channel slice)], by outer index (samples) when there are several, else by channel."""
    size = outer * channels * inner
    count = min(CHUNKS, size // FLAT_CHUNK)
    if outer > 1:
        return [(slice(a, b), slice(None)) for a, b in spans(outer, count)]
    return [(slice(None), slice(a, b)) for a, b in spans(channels, count)]


def channel_affine(x, y, a, b, standardise):
    """y = (x - a[c]) / b[c] if standardise else x * a[c] + b[c], over x and y of shape (outer, C, inner)."""
    a, b = a.reshape(-1), b.reshape(-1)
    chunks = _outer_chunks(*x.shape)

    def chunk(k):
        o, c = chunks[k]
        xs = x[o, c]
        kernels.channel_affine(xs, y[o, c], a[c], b[c], *xs.shape, standardise)

    parallel_for(len(chunks), chunk)


def channel_sums(dy, x):
    """(sum of dy, sum of dy * x) per channel of (outer, C, inner) arrays, as float64 arrays."""
    return _summed_by_chunks(dy.shape, 2, lambda o, c, sums: kernels.channel_sums(dy[o, c], x[o, c], *sums,
                                                                                 *dy[o, c].shape))


def chain_backward(dy, y, x, a, std, dx, relu, batch_sums=False):
    """A training chain's backward (fusion.py) over (outer, C, inner) arrays: dx from dy (dx may be
    dy), and per channel the sums of g, ReLU's gradient, and of g * x, as channel_sums gives them
    (rows 0, 1); with batch_sums also those of g * a and g * a * x (rows 2, 3), as channel_sums
    gives them from Scale's dx. std None: dx = g * a, no division."""
    a = a.reshape(-1)

    def chunk(o, c, sums):
        d = dy[o, c]
        kernels.chain_backward(d, y[o, c], x[o, c], a[c], None if std is None else std.reshape(-1)[c], dx[o, c],
                               *sums[:2], *(sums[2:] if batch_sums else (None, None)), *d.shape, relu,
                               std is not None)
    return _summed_by_chunks(dy.shape, 4 if batch_sums else 2, chunk)


def _summed_by_chunks(shape, rows, run):
    """Per-channel float64 sums (rows, C) from run(outer slice, channel slice, [row] * rows) over the chunks.

    With several samples each chunk of them sums into its own rows, and the rows are added in
    chunk order: the same bytes whatever the thread count."""
    outer, channels, inner = shape
    chunks = _outer_chunks(outer, channels, inner)
    parts = np.empty((len(chunks), rows, channels))

    def chunk(k):
        o, c = chunks[k]
        run(o, c, [parts[k, r, c] for r in range(rows)])

    parallel_for(len(chunks), chunk)
    if outer <= 1:      # chunks by channel: each row holds its channels' sums alone
        return np.concatenate([parts[k][:, c] for k, (_, c) in enumerate(chunks)], axis=1)
    sums = parts[0]
    for p in parts[1:]:
        sums += p
    return sums


def batch_norm_grad(dy, y, mean_dy, mean_dyy, std, dx):
    """dx = (dy - mean_dy[c] - y * mean_dyy[c]) / std[c] over (outer, C, inner) arrays; dx may be dy."""
    mean_dy, mean_dyy, std = mean_dy.reshape(-1), mean_dyy.reshape(-1), std.reshape(-1)
    chunks = _outer_chunks(*dy.shape)

    def chunk(k):
        o, c = chunks[k]
        d = dy[o, c]
        kernels.batch_norm_grad(d, y[o, c], mean_dy[c], mean_dyy[c], std[c], dx[o, c], *d.shape)

    parallel_for(len(chunks), chunk)
