"""Blob: a float32 array and its gradient, as in Caffe and pycaffe."""
import math
from contextlib import contextmanager

import numpy as np

from .errors import NetspecError

# Blobs are float32, as in Caffe; the gradient checker switches to float64 so
# that finite differences are exact enough to compare against.
_dtype = [np.float32]


@contextmanager
def precision(dtype):
    """Create blobs of `dtype` inside the block (tests use float64)."""
    _dtype.append(np.dtype(dtype).type)
    try:
        yield
    finally:
        _dtype.pop()


def available_memory():
    """Bytes a new allocation can still get (MemAvailable, or RLIMIT_AS's headroom if smaller), or None."""
    from .memory import budget
    return budget()[0]


MAX_BLOB_AXES = 32            # Caffe's kMaxBlobAxes
MAX_BLOB_COUNT = 2 ** 62      # far beyond any memory; an int64 product past it could wrap


class BadBlobShape(NetspecError, ValueError):
    """A shape no blob can take (negative, too many axes, too many elements); the net names the layer."""


def check_shape(shape):
    """The element count of `shape` (Python ints: no int64 wrap-around), or BadBlobShape."""
    if len(shape) > MAX_BLOB_AXES:
        raise BadBlobShape(f"blob shape has {len(shape)} axes; at most {MAX_BLOB_AXES} are allowed "
                           "(Caffe's kMaxBlobAxes)")
    if shape and min(shape) < 0:
        raise BadBlobShape(f"negative dimension in blob shape {shape}")
    count = math.prod(shape)
    if count > MAX_BLOB_COUNT:
        raise BadBlobShape(f"blob shape {shape} has {count} elements, more than any memory holds")
    return count


class BlobTooLarge(NetspecError):
    """A blob would not fit in memory; the net turns this into an error naming the layer."""

    def __init__(self, shape, needed, available, blob=None):
        self.shape, self.needed, self.available, self.blob = shape, needed, available, blob
        super().__init__(f"blob of shape {shape} needs {needed / 2**30:.2f} GiB for data and diff, "
                         f"but only {available / 2**30:.2f} GiB of memory is available")


_EMPTY = {}                   # dtype -> a zero-length array, what a blob holds before its first shape


class Blob:
    """Holds `data` and `diff`, two arrays of one shape (float32 unless under `precision`).

    Both arrays are plain numpy arrays that callers may write in place
    (pycaffe's `net.blobs['data'].data[...] = x`). `reshape` reallocates only
    when the element count grows, so steady-state training allocates nothing.
    """

    def __init__(self, shape=()):
        self.dtype = dtype = _dtype[-1]
        empty = _EMPTY.get(dtype)
        if empty is None:
            empty = _EMPTY[dtype] = np.zeros(0, dtype)
        self._data = self._diff = self.data = self.diff = empty    # no element to write: safe to share
        self._views = None          # (_data, _diff, data, diff) as the last reshape made them
        self.reshape(shape)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = tuple(map(int, shape))
        views = self._views
        if (views is not None and views[2].shape == shape and views[0] is self._data and views[1] is self._diff
                and views[2] is self.data and views[3] is self.diff):
            return      # the Net reshapes every blob every forward: mostly to the shape it has
        count = check_shape(shape)
        if count > self._data.size:
            self._allocate(shape, count)
        # Re-view (unless the views are this very shape's of this memory, above): this also undoes
        # an earlier share_data/share_diff or an assignment to data or diff, and follows memory
        # that reuse.py moved the blob to.
        self.data = self._data[:count].reshape(shape)
        self.diff = self._diff[:count].reshape(shape)
        self._views = (self._data, self._diff, self.data, self.diff)

    def _allocate(self, shape, count):
        # Refuse up front what would not fit: numpy's lazily zeroed pages would otherwise end in
        # an out-of-memory kill at first touch instead of an error.
        needed = 2 * count * np.dtype(self.dtype).itemsize
        available = available_memory() if needed > 2**28 else None
        if available is not None and needed > available:
            raise BlobTooLarge(shape, needed, available, self)
        try:
            self._data = np.zeros(count, self.dtype)
            self._diff = np.zeros(count, self.dtype)
        except MemoryError:
            raise BlobTooLarge(shape, needed, available or 0, self) from None

    def share_data(self, other):
        """View another blob's data in this blob's shape (Split, Flatten, Reshape): no copy."""
        self.data = other.data.reshape(self.data.shape)

    def share_diff(self, other):
        self.diff = other.diff.reshape(self.diff.shape)

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def count(self):
        return int(self.data.size)

    def _legacy(self, axis):
        # Caffe's num/channels/height/width: dimension 0..3, 1 where absent.
        return self.data.shape[axis] if self.data.ndim > axis else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def __repr__(self):
        return f"Blob{self.shape}"
