"""Layers that bring data into a net: Input, DummyData, Data (LMDB/LevelDB), MemoryData.

ImageData (image files from a list) is in image_data.py; it shares the prefetcher here."""
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..datasets.db import SHOWN, backend_name, open_cursor
from ..datasets.images import decode_threads
from ..datasets.lmdb_io import datum_to_array, parse_datum
from ..errors import NetspecError
from ..fillers import fill
from ..proto import caffe_pb2
from ..rng import get_rng
from ..transform import DataTransformer
from .base import Layer, register


@register("Input")
class Input(Layer):
    """Tops of fixed shape that the caller fills (pycaffe's `net.blobs['data'].data[...] = x`)."""
    num_bottoms = 0
    is_data = True

    def setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (1, len(top)):
            raise self.error(f"input_param has {len(shapes)} shapes for {len(top)} tops (give 1 or one per top)")
        for i, t in enumerate(top):
            t.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def forward(self, bottom, top):
        pass


@register("DummyData")
class DummyData(Layer):
    """Tops filled by fillers (constant 0 by default); refilled each forward unless constant."""
    num_bottoms = 0
    is_data = True

    def setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        if p.shape:
            shapes = [tuple(s.dim) for s in p.shape]
        else:
            legacy = [p.num, p.channels, p.height, p.width]
            shapes = [tuple(int(field[i if len(field) > 1 else 0]) for field in legacy) for i in range(len(p.num))]
        if len(shapes) not in (1, len(top)):
            raise self.error(f"dummy_data_param has {len(shapes)} shapes for {len(top)} tops")
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0)]
        if len(fillers) not in (1, len(top)):
            raise self.error(f"dummy_data_param has {len(fillers)} data_fillers for {len(top)} tops")
        self.shapes = [shapes[0 if len(shapes) == 1 else i] for i in range(len(top))]
        self.fillers = [fillers[0 if len(fillers) == 1 else i] for i in range(len(top))]
        # Constant fillers are applied once; random ones refresh every forward (Caffe's refill_).
        self.refill = [f.type != "constant" for f in self.fillers]
        for t, shape, f in zip(top, self.shapes, self.fillers):
            t.reshape(shape)
            fill(f, t.data)

    def reshape(self, bottom, top):
        for t, shape in zip(top, self.shapes):
            t.reshape(shape)

    def forward(self, bottom, top):
        for t, f, refill in zip(top, self.fillers, self.refill):
            if refill:
                fill(f, t.data)


class _Prefetcher:
    """Runs `produce` in a background thread, keeping up to `depth` results ready (Caffe's prefetch)."""

    def __init__(self, produce, depth):
        self.produce = produce
        self.queue = queue.Queue(maxsize=max(1, depth))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="netspec-prefetch", daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                item = self.produce()
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it
                item = e
            while not self.stopping.is_set():
                try:
                    self.queue.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def get(self):
        while True:
            try:
                item = self.queue.get(timeout=0.5)
                break
            except queue.Empty:
                # Never wait for a thread that is gone (stopped, or killed with its queue empty).
                if not self.thread.is_alive() and self.queue.empty():
                    raise NetspecError("the data prefetch thread has stopped; no more batches will come") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self):
        self.stopping.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        while not self.queue.empty():
            self.queue.get_nowait()


def decoded_color(layer):
    """force_color / force_gray as the decode mode: True (3 channels), False (grey), None (as stored)."""
    t = layer.layer_param.transform_param
    if t.force_color and t.force_gray:
        raise layer.error("transform_param sets both force_color and force_gray; use one")
    if t.force_color or layer.layer_param.data_param.force_encoded_color:
        return True
    return False if t.force_gray else None


def transform_images(transformer, pixels, where, shape, out):
    """Transform decoded images into `out` (N, C, h, w): all at once when they all have `shape`,
    else one by one, which crop_size allows (Caffe crops each image on its own)."""
    if all(a.shape == shape for a in pixels):
        transformer(np.stack(pixels), out)
        return
    crop = transformer.param.crop_size
    for i, a in enumerate(pixels):
        if a.shape[0] != shape[0] or (not crop and a.shape != shape):
            raise NetspecError(f"{where[i]} has shape {a.shape}; the first one has {shape}"
                               + ("" if crop else " (set crop_size, or resize the images to one size)"))
        try:
            transformer.check(*a.shape)
        except NetspecError as e:
            raise NetspecError(f"{where[i]}: {e}") from None
        transformer(a[None], out[i:i + 1])


@register("Data")
class Data(Layer):
    """Batches of Caffe Datum records from an LMDB or LevelDB, transformed, prepared in a background thread.

    Records are read in key order and wrap around at the end, as in Caffe. Encoded
    (JPEG/PNG) Datums are decoded by a small pool of threads inside the prefetch
    thread; with crop_size they may differ in size, each image being cropped. The
    cursor and the transformer's random state after each consumed batch are what
    `get_resume_state` reports, so a resumed run sees the same batches.
    """
    num_bottoms = 0
    num_tops = (1, 2)
    is_data = True
    _stride = 1          # MPI data parallelism (set_stride): rank r of N reads records r, r+N, r+2N, ...
    _decoders = None     # ThreadPoolExecutor, made when the first encoded batch arrives

    def setup(self, bottom, top):
        p = self.layer_param.data_param
        if not p.source:
            raise self.error("data_param has no source")
        if p.batch_size <= 0:
            raise self.error("data_param batch_size must be positive")
        self.batch_size = p.batch_size
        self.color = decoded_color(self)
        if not os.path.exists(p.source):
            raise self.error(f"{SHOWN[backend_name(p.backend)]} '{p.source}' does not exist (data_param.source is relative to the working "
                             "directory)")
        try:
            self.cursor = open_cursor(p.source, p.backend)
            first = datum_to_array(parse_datum(self.cursor.peek(), f"{p.source} record 0"),
                                   f"{p.source} record 0", self.color)
        except NetspecError as e:
            raise self.error(str(e)) from None
        self.datum_shape = first.shape
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase,
                                       seed=int(get_rng().integers(2 ** 63)),
                                       where=f"layer '{self.name}' ({self.type})")
        self.transformer.check(*self.datum_shape)
        if p.rand_skip:
            skip = int(get_rng().integers(p.rand_skip))
            self.cursor.skip(skip)
        self.out_shape = (self.batch_size,) + self.transformer.output_shape(*self.datum_shape)
        self.has_label = len(top) > 1
        self._consumed = self._state()
        self._prefetcher = _Prefetcher(self._next_batch, p.prefetch)

    def _state(self):
        return {"position": self.cursor.position, "rng": self.transformer.get_state()}

    def _next_batch(self):
        """Read, check, decode and transform one batch (runs in the prefetch thread)."""
        src = self.layer_param.data_param.source
        start, stride, count = self.cursor.position, self._stride, len(self.cursor)
        where = [f"{src} record {(start + i * stride) % count}" for i in range(self.batch_size)]
        try:
            datums = [parse_datum(v, where[i]) for i, v in enumerate(self._read_values())]
            images = np.empty(self.out_shape, np.float32)
            if any(d.encoded for d in datums):
                self._transform_decoded(datums, where, images)
            else:
                self._transform_raw(datums, where, images)
        except NetspecError as e:
            raise self.error(str(e)) from None
        labels = np.fromiter((d.label for d in datums), np.float32, self.batch_size)
        return images, labels, self._state()

    def _transform_raw(self, datums, where, images):
        c, h, w = self.datum_shape
        size = c * h * w
        for d, at in zip(datums, where):
            if (d.channels, d.height, d.width) != self.datum_shape or (len(d.data) or len(d.float_data)) != size:
                raise NetspecError(f"{at} has shape ({d.channels}, {d.height}, {d.width}) with "
                                   f"{len(d.data) or len(d.float_data)} values; the first record has "
                                   f"{self.datum_shape}")
        kinds = [bool(d.data) for d in datums]
        if any(k != kinds[0] for k in kinds):
            i = kinds.index(not kinds[0])
            raise NetspecError(f"{where[i]} holds {'uint8 data' if kinds[i] else 'float_data'}, the batch's first "
                               f"record {'uint8 data' if kinds[0] else 'float_data'}; an LMDB must use one of the two")
        if datums[0].data:
            raw = np.frombuffer(b"".join(d.data for d in datums), np.uint8)
        else:
            raw = np.concatenate([np.asarray(d.float_data, np.float32) for d in datums])
        self.transformer(raw.reshape((self.batch_size,) + self.datum_shape), images)

    def _transform_decoded(self, datums, where, images):
        if self._decoders is None:
            self._decoders = ThreadPoolExecutor(decode_threads(), thread_name_prefix="netspec-decode")
        pixels = list(self._decoders.map(lambda i: datum_to_array(datums[i], where[i], self.color),
                                         range(len(datums))))
        transform_images(self.transformer, pixels, where, self.datum_shape, images)

    def reshape(self, bottom, top):
        top[0].reshape(self.out_shape)
        if self.has_label:
            top[1].reshape((self.batch_size,))

    def forward(self, bottom, top):
        images, labels, state = self._prefetcher.get()
        top[0].data[...] = images
        if self.has_label:
            top[1].data[...] = labels
        self._consumed = state

    def get_resume_state(self):
        return self._consumed

    def close(self):
        prefetcher = getattr(self, "_prefetcher", None)
        if prefetcher is not None:
            prefetcher.stop()
        if self._decoders is not None:
            self._decoders.shutdown()
            self._decoders = None
        cursor = getattr(self, "cursor", None)
        if cursor is not None:
            cursor.close()

    def set_resume_state(self, state):
        """Go on from a get_resume_state() dict; on a bad one, raise with the prefetch thread running again."""
        self._prefetcher.stop()
        try:
            self.cursor.seek(state["position"])
            self.transformer.set_state(state["rng"])
        finally:
            # Whatever failed above, the next forward must find a thread filling the queue.
            self._consumed = self._state()
            self._prefetcher = _Prefetcher(self._next_batch, self.layer_param.data_param.prefetch)

    # --- MPI data parallelism (netspec.parallel) ---
    def _read_values(self):
        if self._stride == 1:
            return self.cursor.next_values(self.batch_size)
        values = []
        for _ in range(self.batch_size):
            values += self.cursor.next_values(1)
            self.cursor.skip(self._stride - 1)
        return values

    def set_stride(self, stride, state):
        """Read every `stride`-th record from now on, resuming from `state` (a get_resume_state() dict).

        With N ranks, rank r starts at the shared position + r, so in each iteration
        the ranks together read the N x batch_size records one process would.
        """
        self._stride = int(stride)
        self.set_resume_state(state)
    # --- end MPI ---


@register("MemoryData")
class MemoryData(Layer):
    """Batches from arrays handed over from Python (pycaffe's `net.set_input_arrays(data, labels)`)."""
    num_bottoms = 0
    num_tops = 2
    is_data = True

    def setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        if p.batch_size <= 0:
            raise self.error("memory_data_param batch_size must be positive")
        self.shape = (p.batch_size, p.channels, p.height, p.width)
        self.data, self.labels, self.pos = None, None, 0

    def reset(self, data, labels):
        data = np.ascontiguousarray(data, np.float32)
        labels = np.asarray(labels, np.float32).reshape(len(labels))
        if data.ndim != 4 or data.shape[1:] != self.shape[1:]:
            raise self.error(f"input arrays have shape {data.shape}; the layer expects (N, {self.shape[1]}, "
                             f"{self.shape[2]}, {self.shape[3]})")
        if len(data) != len(labels):
            raise self.error(f"{len(data)} data items but {len(labels)} labels")
        if len(data) % self.shape[0]:
            raise self.error(f"the number of items ({len(data)}) must be a multiple of batch_size "
                             f"({self.shape[0]})")
        self.data, self.labels, self.pos = data, labels, 0

    def reshape(self, bottom, top):
        top[0].reshape(self.shape)
        top[1].reshape(self.shape[:1] + (1, 1, 1))        # Caffe's added_label_ is N x 1 x 1 x 1

    def forward(self, bottom, top):
        if self.data is None:
            raise self.error("no data: call net.set_input_arrays(data, labels) before forward")
        n = self.shape[0]
        top[0].data[...] = self.data[self.pos:self.pos + n]
        top[1].data[...] = self.labels[self.pos:self.pos + n].reshape(-1, 1, 1, 1)
        self.pos = (self.pos + n) % len(self.data)
