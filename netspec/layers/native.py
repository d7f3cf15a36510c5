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


try:
    from .. import _native as kernels
    if getattr(kernels, "ABI", None) != 3:     # a stale build from older sources
        kernels = None
except ImportError:
    kernels = None

# Read by layers when they are shaped; tests switch it off to run the numpy paths.
ENABLED = kernels is not None and os.environ.get("NETSPEC_NATIVE", "1") != "0"


def usable(dtype):
    return ENABLED and np.dtype(dtype) in (np.float32, np.float64)


def has_depthwise():
    """Whether the build has the depthwise kernels (a build from older sources may not)."""
    return hasattr(kernels, "depthwise_forward")


def window_geometry(channels, size, kernel, stride, pad, dilation, out):
    """The geometry tuple the kernels take: (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)."""
    return tuple(int(v) for v in (channels, *size, *kernel, *stride, *pad, *dilation, *out))


def channel_affine(x, y, a, b, standardise):
    """y = (x - a[c]) / b[c] if standardise else x * a[c] + b[c], over x and y of shape (outer, C, inner)."""
    outer, channels, inner = x.shape
    kernels.channel_affine(x, y, a, b, outer, channels, inner, standardise)


def channel_sums(dy, x):
    """(sum of dy, sum of dy * x) per channel of (outer, C, inner) arrays, as float64 arrays."""
    outer, channels, inner = dy.shape
    sums = np.empty((2, channels))
    kernels.channel_sums(dy, x, sums[0], sums[1], outer, channels, inner)
    return sums
