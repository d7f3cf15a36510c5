"""Inference memory: blobs whose values no later layer reads share their buffers (Net(reuse_memory=True)).

Caffe gives every blob its own memory for the life of the net, so a deploy ResNet-50 at batch
10 holds every intermediate it ever computed. When no backward will run, a blob is dead once
the last layer reading it has run, and a later top can take its buffer. The plan walks the
layers in run order: each layer's new tops take the best-fitting free buffer (a buffer is sized
for the largest blob it ever holds), then the blobs whose last reader was this layer free theirs.
A top is never given the buffer of a blob its own layer still reads.

A blob that is a view of another (Split, Flatten, Reshape, one-bottom Concat share data) belongs
with the blob it views: their group lives until the last reader of any of them. Some blobs keep
their own memory: the net's inputs and outputs, data layers' tops (a prefetch thread may fill
them), blobs viewing memory that is no blob's (Parameter), and the blobs named in `keep`.

The price is that an intermediate's `data` read after forward holds whatever a later layer put
there, which is why it is an option: Net.forward(blobs=[...]) keeps what it is asked for, and a
forward from a layer other than the first drops the plan first (see Net).
"""
import numpy as np


def _address_range(array):
    """[low, high) bytes of a C-contiguous array (blob data always is: a reshaped slice)."""
    low = array.__array_interface__["data"][0]
    return low, low + array.nbytes


def _storage_groups(blobs):
    """{id(blob): id(owner)}: the blob whose own buffer each blob's data lies in; None for a blob
    viewing memory that is no blob's own buffer."""
    owners = {}
    ranges = [(_address_range(b._data), id(b)) for b in blobs if b._data.size]
    for b in blobs:
        if not b.data.size:
            owners[id(b)] = id(b)
            continue
        low, high = _address_range(b.data)
        inside = [owner for (a, z), owner in ranges if a <= low and high <= z]
        owners[id(b)] = id(b) if id(b) in inside else (inside[0] if inside else None)
    return owners


class ReusePlan:
    """Which blobs share which buffers; `apply()` points their memory there, `release()` undoes it."""

    def __init__(self, net, keep=(), owner=None):
        self.net, self.keep = net, frozenset(keep)
        records = net.records
        blobs = list(net.blobs.values())
        by_id = {id(b): b for b in blobs}
        # Storage groups can only be found on unshared memory (shared buffers overlap); `replan` passes them on.
        self.owner = owner = _storage_groups(blobs) if owner is None else owner
        fixed = set()                   # owners whose buffers are never shared
        for name in list(net.inputs) + list(net.outputs) + list(keep):
            if name in net.blobs:
                fixed.add(owner[id(net.blobs[name])])
        for record in records:
            if record.layer.is_data:
                fixed.update(owner[id(t)] for t in record.tops)
        fixed.update(id(b) for b in blobs if owner[id(b)] is None)
        born, last = {}, {}
        for i, record in enumerate(records):
            for b in record.tops:
                born.setdefault(owner[id(b)], i)
            for b in list(record.bottoms) + list(record.tops):
                last[owner[id(b)]] = i
        planned = sorted((o for o in born if o is not None and o not in fixed and by_id[o]._data.size),
                         key=lambda o: born[o])
        self.slots, self.sizes, self.dtypes = {}, [], []     # owner id -> buffer index; buffer elements
        free = []
        ending = {}
        for o in planned:
            ending.setdefault(last[o], []).append(o)
        starting = {}
        for o in planned:
            starting.setdefault(born[o], []).append(o)
        for i in range(len(records)):
            for o in starting.get(i, ()):
                self.slots[o] = self._take(free, by_id[o])
            for o in ending.get(i, ()):
                free.append(self.slots[o])
        self.owners = {o: by_id[o] for o in planned}
        self.applied = False

    def _take(self, free, blob):
        """The free buffer of blob's dtype that fits best (else the largest, grown), or a new one."""
        need, dtype = blob._data.size, np.dtype(blob.dtype)
        same = [k for k in free if self.dtypes[k] == dtype]
        fits = [k for k in same if self.sizes[k] >= need]
        if fits:
            k = min(fits, key=lambda k: self.sizes[k])
        elif same:
            k = max(same, key=lambda k: self.sizes[k])
        else:
            self.sizes.append(need)
            self.dtypes.append(dtype)
            return len(self.sizes) - 1
        free.remove(k)
        self.sizes[k] = max(self.sizes[k], need)
        return k

    def shared_bytes(self):
        """Bytes of the shared buffers, against what the planned blobs held on their own."""
        shared = sum(n * d.itemsize for n, d in zip(self.sizes, self.dtypes))
        own = sum(b._data.size * np.dtype(b.dtype).itemsize for b in self.owners.values())
        return shared, own

    def apply(self):
        buffers = [np.zeros(n, d) for n, d in zip(self.sizes, self.dtypes)]
        for o, blob in self.owners.items():
            blob._data = buffers[self.slots[o]][:blob._data.size]
        self.applied = True
        self.net._reshape_layers()      # re-views every blob, and views of views, onto the new memory

    def replan(self, keep):
        """The plan for `keep`, applied in this one's place. Blobs the new plan does not share get
        memory of their own, holding their value; the rest move straight from this plan's buffers
        to the new ones (their values were dead), so the net never holds every blob at once."""
        plan = ReusePlan(self.net, keep, self.owner)
        for o, blob in self.owners.items():
            if o not in plan.owners:
                blob._data = blob._data.copy()
        self.applied = False
        plan.apply()
        return plan

    def release(self):
        """Every planned blob back on memory of its own, holding the value it holds now."""
        if not self.applied:
            return
        for blob in self.owners.values():
            blob._data = blob._data.copy()
        self.applied = False
        self.net._reshape_layers()
