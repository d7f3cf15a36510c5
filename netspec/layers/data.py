"""Layers that bring data into a net: Input, DummyData, Data (LMDB), MemoryData, ImageData."""
import os
import queue
import threading

import numpy as np

from ..datasets.lmdb_io import LMDBCursor, datum_to_array, parse_datum
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
        item = self.queue.get()
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


@register("Data")
class Data(Layer):
    """Batches of Caffe Datum records from an LMDB, transformed, prepared in a background thread.

    Records are read in key order and wrap around at the end, as in Caffe. The
    cursor and the transformer's random state after each consumed batch are
    what `get_resume_state` reports, so a resumed run sees the same batches.
    """
    num_bottoms = 0
    num_tops = (1, 2)
    is_data = True
    _stride = 1          # MPI data parallelism (set_stride): rank r of N reads records r, r+N, r+2N, ...

    def setup(self, bottom, top):
        p = self.layer_param.data_param
        if p.backend != caffe_pb2.DataParameter.LMDB:
            raise self.error("backend LEVELDB is not supported; convert the database to LMDB "
                             "(set data_param { backend: LMDB })")
        if not p.source:
            raise self.error("data_param has no source")
        if p.batch_size <= 0:
            raise self.error("data_param batch_size must be positive")
        self.batch_size = p.batch_size
        if not os.path.exists(p.source):
            raise self.error(f"LMDB '{p.source}' does not exist (data_param.source is relative to the working "
                             "directory)")
        try:
            self.cursor = LMDBCursor(p.source)
            first = datum_to_array(parse_datum(self.cursor.peek(), f"{p.source} record 0"),
                                   f"{p.source} record 0")
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
        """Read, check and transform one batch (runs in the prefetch thread)."""
        src = self.layer_param.data_param.source
        start, stride = self.cursor.position, self._stride
        try:
            datums = [parse_datum(v, f"{src} record {(start + i * stride) % len(self.cursor)}")
                      for i, v in enumerate(self._read_values())]
        except NetspecError as e:
            raise self.error(str(e)) from None
        c, h, w = self.datum_shape
        size = c * h * w
        for i, d in enumerate(datums):
            if d.encoded:
                raise self.error(f"{src} record {(start + i * stride) % len(self.cursor)} is encoded (JPEG/PNG); "
                                 "netspec reads raw Datum pixels only")
            if (d.channels, d.height, d.width) != self.datum_shape or (len(d.data) or len(d.float_data)) != size:
                raise self.error(f"{src} record {(start + i * stride) % len(self.cursor)} has shape "
                                 f"({d.channels}, {d.height}, {d.width}) with "
                                 f"{len(d.data) or len(d.float_data)} values; the first record has "
                                 f"{self.datum_shape}")
        if datums[0].data:
            raw = np.frombuffer(b"".join(d.data for d in datums), np.uint8)
        else:
            raw = np.concatenate([np.asarray(d.float_data, np.float32) for d in datums])
        images = np.empty(self.out_shape, np.float32)
        self.transformer(raw.reshape((self.batch_size,) + self.datum_shape), images)
        labels = np.fromiter((d.label for d in datums), np.float32, self.batch_size)
        return images, labels, self._state()

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
        cursor = getattr(self, "cursor", None)
        if cursor is not None:
            cursor.close()

    def set_resume_state(self, state):
        self._prefetcher.stop()
        self.cursor.seek(state["position"])
        self.transformer.set_state(state["rng"])
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
        top[1].reshape(self.shape[:1])

    def forward(self, bottom, top):
        if self.data is None:
            raise self.error("no data: call net.set_input_arrays(data, labels) before forward")
        n = self.shape[0]
        top[0].data[...] = self.data[self.pos:self.pos + n]
        top[1].data[...] = self.labels[self.pos:self.pos + n]
        self.pos = (self.pos + n) % len(self.data)


def _load_image(path, color, new_height, new_width):
    try:
        from PIL import Image
    except ImportError:
        raise NetspecError("ImageData needs an image library: pip install pillow") from None
    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if color else "L")
            if new_height and new_width:
                img = img.resize((new_width, new_height), Image.BILINEAR)
            arr = np.asarray(img, np.uint8)
    except OSError as e:
        raise NetspecError(f"cannot read image {path}: {e}") from None
    # Caffe (OpenCV) stores colour images as BGR, channel-major.
    return arr[None] if arr.ndim == 2 else arr[:, :, ::-1].transpose(2, 0, 1)


@register("ImageData")
class ImageData(Layer):
    """Images listed in a text file (`path label` per line), read with Pillow, as Caffe's ImageData."""
    num_bottoms = 0
    num_tops = (1, 2)
    is_data = True

    def setup(self, bottom, top):
        p = self.layer_param.image_data_param
        try:
            with open(p.source) as f:
                lines = [line.rsplit(None, 1) for line in f if line.strip()]
        except OSError as e:
            raise self.error(f"cannot read image list {p.source}: {e.strerror}") from None
        try:
            self.items = [(os.path.join(p.root_folder, name), int(label)) for name, label in lines]
        except ValueError:
            raise self.error(f"{p.source}: each line must be `path label` with an integer label") from None
        if not self.items:
            raise self.error(f"image list {p.source} is empty")
        self.rng = np.random.default_rng(int(get_rng().integers(2 ** 63)))
        if p.shuffle:
            self.rng.shuffle(self.items)
        self.pos = int(get_rng().integers(p.rand_skip)) % len(self.items) if p.rand_skip else 0
        first = _load_image(self.items[0][0], p.is_color, p.new_height, p.new_width)
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase,
                                       seed=int(get_rng().integers(2 ** 63)),
                                       where=f"layer '{self.name}' ({self.type})")
        self.transformer.check(*first.shape)
        self.image_shape = first.shape
        self.shape = (p.batch_size,) + self.transformer.output_shape(*first.shape)

    def reshape(self, bottom, top):
        top[0].reshape(self.shape)
        if len(top) > 1:
            top[1].reshape(self.shape[:1])

    def forward(self, bottom, top):
        p = self.layer_param.image_data_param
        batch = np.empty((self.shape[0],) + self.image_shape, np.uint8)
        labels = np.empty(self.shape[0], np.float32)
        for i in range(self.shape[0]):
            path, label = self.items[self.pos]
            img = _load_image(path, p.is_color, p.new_height, p.new_width)
            if img.shape != self.image_shape:
                raise self.error(f"image {path} has shape {img.shape}, the first image has {self.image_shape} "
                                 "(set new_height and new_width to resize)")
            batch[i], labels[i] = img, label
            self.pos += 1
            if self.pos == len(self.items):
                self.pos = 0
                if p.shuffle:
                    self.rng.shuffle(self.items)
        self.transformer(batch, top[0].data)
        if len(top) > 1:
            top[1].data[...] = labels
