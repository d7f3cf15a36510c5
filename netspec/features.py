"""extract_features: blobs of a trained net, batch after batch, saved as float Datums (Caffe's tool).

As tools/extract_features.cpp: the net runs in TEST phase with the weights copied in; for
each forward and each named blob, every item n becomes Datum(channels, height, width of the
blob's legacy 4-D shape, float_data = item n's values) under the key "%010d" (its running
index), one database per blob.
"""
import queue
import threading

import numpy as np

from . import glog
from .datasets.db import write_db_atomically
from .errors import NetspecError
from .proto import caffe_pb2

_DONE = object()


def _legacy_shape(shape, where):
    """(channels, height, width) as Blob::channels()/height()/width(): missing axes count as 1."""
    if len(shape) > 4:
        raise NetspecError(f"{where} has {len(shape)} axes {tuple(shape)}; a Datum holds at most 4")
    dims = tuple(shape) + (1,) * (4 - len(shape))
    return dims[1], dims[2], dims[3]


class _DatabaseFeed:
    """One output database written by a thread from a bounded queue, so that all of them fill at once."""

    def __init__(self, dest, backend):
        self.dest, self.queue, self.error, self.count = dest, queue.Queue(maxsize=2000), None, 0
        self.thread = threading.Thread(target=self._write, args=(backend,), name="netspec-features", daemon=True)
        self.thread.start()

    def _records(self):
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _write(self, backend):
        try:
            self.count = write_db_atomically(self.dest, self._records(), backend)
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def put(self, key, value):
        while self.thread.is_alive():
            try:
                self.queue.put((key, value), timeout=0.1)
                return
            except queue.Full:
                continue
        raise self.error or NetspecError(f"writing {self.dest} stopped")

    def finish(self, failure=None):
        """End the database: renamed in when failure is None, discarded otherwise."""
        if self.thread.is_alive():
            self.queue.put(_DONE if failure is None else failure)
        self.thread.join()
        if self.error is not None and self.error is not failure:
            raise self.error


def extract_features(weights, model, blob_names, db_names, num_mini_batches, backend="lmdb"):
    """Run num_mini_batches forwards and store the named blobs; return {blob: items written}."""
    from .net import Net
    if len(blob_names) != len(db_names):
        raise NetspecError(f"{len(blob_names)} blob names but {len(db_names)} database names "
                           "(give one database per blob)")
    net = Net(model, caffe_pb2.TEST)
    try:
        for w in weights.split(","):
            net.copy_from(w)
        for name in blob_names:
            if name not in net.blobs:
                raise NetspecError(f"Unknown feature blob name {name} in the network {model}")
        glog.info("Extracting Features", "extract_features.cpp:124")
        feeds = [_DatabaseFeed(db, backend) for db in db_names]
        try:
            counts = _run(net, blob_names, feeds, num_mini_batches)
        except BaseException as e:
            for feed in feeds:
                feed.finish(failure=e)
            raise
        for feed in feeds:
            feed.finish()
    finally:
        net.close()
    for name in blob_names:
        glog.info(f"Extracted features of {counts[name]} query images for feature blob {name}",
                  "extract_features.cpp:171")
    glog.info("Successfully extracted the features!", "extract_features.cpp:176")
    return counts


def _run(net, blob_names, feeds, num_mini_batches):
    counts = dict.fromkeys(blob_names, 0)
    datum = caffe_pb2.Datum()
    for _ in range(num_mini_batches):
        net.forward()
        for name, feed in zip(blob_names, feeds):
            values = net.blobs[name].data
            datum.channels, datum.height, datum.width = _legacy_shape(values.shape, f"blob '{name}'")
            for item in np.asarray(values, np.float32).reshape(len(values), -1):
                del datum.float_data[:]
                datum.float_data.extend(item.tolist())
                feed.put(b"%010d" % counts[name], datum.SerializeToString())
                counts[name] += 1
                if counts[name] % 1000 == 0:
                    glog.info(f"Extracted features of {counts[name]} query images for feature blob {name}",
                              "extract_features.cpp:162")
    return counts
