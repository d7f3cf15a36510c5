"""The layer interface shared by built-in layers and user `type: "Python"` layers.

A layer sees lists of Blobs. `setup` runs once (read parameters, create
`self.blobs`, the learnable parameters in Caffe's order), `reshape` sizes the
tops from the bottoms and runs before every forward, `forward` fills
`top[i].data`, and `backward` fills `bottom[i].diff` for every i with
`propagate_down[i]` true and *adds* parameter gradients into `self.blobs[j].diff`
(so shared parameters and `iter_size` accumulate, as in Caffe).

Bottom diffs are overwritten, never accumulated: the net inserts Split layers
where one blob feeds several layers, exactly as Caffe does. A layer whose top
is its bottom (in place) must read what it needs for backward from the top.
"""
import math
import threading

import numpy as np

from ..blob import Blob
from ..errors import NetspecError
from ..proto import caffe_pb2

FLT_MIN = float(np.finfo(np.float32).tiny)   # Caffe's FLT_MIN: the floor before a log or a division

# Caffe type name -> layer class. Filled by the @register decorator in each family module.
LAYER_REGISTRY = {}


def register(*type_names):
    """Class decorator: make a layer available under one or more Caffe type names."""
    def add(cls):
        for name in type_names:
            LAYER_REGISTRY[name] = cls
        return cls
    return add


class BlobVec(list):
    """A layer's parameter blobs: a list, plus pycaffe's `add_blob(*shape)` for Python layers."""

    def add_blob(self, *shape):
        self.append(Blob(shape))


class Layer:
    """Base class for every layer; pycaffe's `caffe.Layer`."""

    # Number of bottoms/tops the layer accepts: exact count, or (min, max) with None for unbounded.
    num_bottoms = None
    num_tops = None
    # Loss layers get loss_weight 1 on their first top when the net file names none.
    is_loss = False
    # Data-producing layers: backward never runs and no gradient flows into them.
    is_data = False
    # False when the net will never call backward (Caffe's pruning: no loss reached and no
    # force_backward), so forward need not keep what only backward reads. Set by Net.
    runs_backward = True

    def __init__(self, layer_param, phase=None):
        self.layer_param = layer_param
        self.name = layer_param.name
        self.type = layer_param.type
        self.phase = layer_param.phase if phase is None else phase
        self.param_str = layer_param.python_param.param_str
        self.blobs = BlobVec()

    # --- the interface -------------------------------------------------------
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, top, propagate_down, bottom):
        pass

    def close(self):
        """Release threads or files the layer holds (a Data layer's prefetch thread and LMDB)."""

    def work_bytes(self, bottom, top):
        """Bytes of the work arrays this layer keeps of its own beside its blobs (masks, saved inputs,
        argmax indices, ...), once set up: the net adds them to its memory estimate before the
        first forward allocates them. 0 unless a layer says otherwise."""
        return 0

    # --- helpers for subclasses ----------------------------------------------
    def error(self, message):
        """A NetspecError that names this layer: `layer 'conv1' (Convolution): ...`."""
        return NetspecError(f"layer '{self.name}' ({self.type}): {message}")

    def bottom_name(self, i):
        """How messages name bottom i: its blob name quoted, or `bottom[i]` for a layer built alone."""
        names = self.layer_param.bottom
        return f"'{names[i]}'" if i < len(names) else f"bottom[{i}]"

    def canonical_axis(self, axis, shape, what="axis"):
        """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
        ndim = len(shape)
        if not -ndim <= axis < ndim:
            raise self.error(f"{what} {axis} is out of range for a blob of shape {tuple(shape)} ({ndim} axes)")
        return axis % ndim

    def add_param_blob(self, shape):
        blob = Blob(shape)
        self.blobs.append(blob)
        return blob

    def allow_force_backward(self, bottom_index):
        """Whether force_backward may request a gradient for this bottom (labels: no)."""
        return True


def prod(dims):
    """Element count of a shape, as a Python int (np.prod of () is 1, as Caffe's count())."""
    return math.prod(map(int, dims))


_shared = threading.local()


def scratch(owner, name, shape, dtype, fill=None):
    """A work array cached on `owner` and reused while shape and dtype stay the same.

    `fill` initialises a fresh array (padded buffers whose borders are never written again).
    With owner None the array comes from a per-thread pool shared by all layers, one buffer
    per name grown to the largest request: for work whose contents are dead once the layer
    call that wrote it returns (nothing kept for backward, no fill). The nets then hold the
    largest such buffer rather than one per layer, test nets included.
    """
    shape = tuple(int(d) for d in shape)
    if owner is None:
        assert fill is None, "shared work arrays have no lasting contents to fill"
        pool = _shared.__dict__.setdefault("buffers", {})
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        buf = pool.get(name)
        if buf is None or buf.nbytes < nbytes:
            buf = pool[name] = np.empty(nbytes, np.uint8)
        return buf[:nbytes].view(dtype).reshape(shape)
    cache = owner.__dict__.setdefault("_scratch", {})
    buf = cache.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)
        cache[name] = buf
    return buf


def training(layer):
    """Whether the layer is in a TRAIN net: what only backward keeps is counted there alone (a TEST
    net runs no backward unless a script asks)."""
    return layer.phase == caffe_pb2.TRAIN


def nbytes(blob, itemsize=None):
    """A blob's data size in bytes (of `itemsize`-byte elements if given: masks, indices)."""
    return blob.count * (blob.data.itemsize if itemsize is None else itemsize)


def shape_str(shape):
    """A shape as errors print it: (64, 20, 24, 24)."""
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_blob_counts(layer, bottom, top):
    """Raise a clear error when a layer gets the wrong number of bottoms or tops."""
    for what, blobs, want in (("bottom", bottom, layer.num_bottoms), ("top", top, layer.num_tops)):
        if want is None:
            continue
        lo, hi = (want, want) if isinstance(want, int) else want
        n = len(blobs)
        if n < lo or (hi is not None and n > hi):
            if lo == hi:
                expected = f"exactly {lo}"
            elif hi is None:
                expected = f"at least {lo}"
            else:
                expected = f"{lo} to {hi}"
            raise layer.error(f"takes {expected} {what} blob(s), got {n}")
