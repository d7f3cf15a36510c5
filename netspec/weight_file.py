"""Reading a .caffemodel's floats straight from the file into a net's parameter arrays.

Parsing a whole .caffemodel with protobuf holds the file's bytes and the parsed
message (each as large as the weights) next to the net's own arrays: CaffeNet's
233 MB of weights peaked at three times that. Here protobuf parses only the
small parts of the file, while the float data stays in the file until it is
read into the net's arrays:

  - a short walk over the protobuf wire format, on a read-only mmap of the file,
    finds the top-level `layer` records (NetParameter field 100), in each its
    `blobs` (LayerParameter field 7), and in each blob its packed `data`
    (BlobProto field 5); walking touches only the few pages with the tags;
  - everything else (names, types, layer settings, blob shapes) is copied into a
    "skeleton" NetParameter that protobuf parses as usual;
  - copy_layer_blobs then reads each blob's data from the file into its array.

Anything the walk does not expect (old V0/V1 layers, a Caffe fork's schema, a
net that needs upgrading, unpacked or double-precision floats, damaged bytes)
makes open_weights return None, and the caller reads the file the old way,
with the old errors. A sealed file (integrity.py) has its sha256 checked first,
in chunks, before anything is copied.
"""
import mmap
import os

import numpy as np
from google.protobuf.message import DecodeError

from . import dialects
from .errors import NetspecError
from .integrity import verify_file
from .proto import caffe_pb2
from .reading import MAX_BINARY_BYTES, open_regular
from .upgrade import upgrade_reasons
from .weights import proto_shape, read_varint, varint

# Field numbers in caffe.proto.
NET_LAYER, NET_V1_LAYERS = 100, 2
LAYER_BLOBS = 7
BLOB_DATA, BLOB_DIFF, BLOB_DOUBLE_DATA, BLOB_DOUBLE_DIFF = 5, 6, 8, 9
WIRE_VARINT, WIRE_FIXED64, WIRE_BYTES, WIRE_FIXED32 = 0, 1, 2, 5
_FLOAT = np.dtype("<f4")


class Irregular(Exception):
    """The file is not one the walk reads (the caller falls back to protobuf's whole-file parse)."""


def _varint(buf, pos, end):
    """weights.read_varint, a varint that runs past its message being Irregular."""
    value, pos = read_varint(buf, pos, end)
    if value is None:
        raise Irregular("a varint runs past its message")
    return value, pos


def fields(buf, start, end):
    """The fields of the message in buf[start:end], in order: (number, wire type, tag start,
    value start, value end). Only the tags and lengths are read, never the values."""
    pos = start
    while pos < end:
        tag_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise Irregular("field number 0")
        if wire == WIRE_VARINT:
            value_end = _varint(buf, pos, end)[1]
        elif wire == WIRE_FIXED64:
            value_end = pos + 8
        elif wire == WIRE_BYTES:
            length, pos = _varint(buf, pos, end)
            value_end = pos + length
        elif wire == WIRE_FIXED32:
            value_end = pos + 4
        else:                           # groups: caffe.proto has none
            raise Irregular(f"wire type {wire}")
        if value_end > end:
            raise Irregular("a field runs past its message")
        yield number, wire, tag_start, pos, value_end
        pos = value_end


def _wrapped(number, body):
    """`body` as a length-delimited field `number` again."""
    return varint(number << 3 | WIRE_BYTES) + varint(len(body)) + body


def _read_exactly(f, view, offset):
    """Fill `view` from file `f` at `offset` (one read may return less than asked)."""
    while len(view):
        n = os.preadv(f.fileno(), [view], offset)
        if not n:
            raise NetspecError(f"{f.name}: the file shrank while its weights were being read")
        view, offset = view[n:], offset + n


class StoredBlob:
    """One BlobProto of the file: its header (the BlobProto without data) parsed, its floats
    left in the file as (offset, byte count) chunks until copy_into reads them."""

    def __init__(self, f, header, chunks):
        self._file, self.header, self._chunks = f, header, chunks
        self.count = sum(n for _, n in chunks) // _FLOAT.itemsize

    def shape(self):
        return proto_shape(self.header, self.count)

    def copy_into(self, out):
        """Read the floats into `out` (an array of `count` elements), in place."""
        expected = int(np.prod(self.shape()))
        if self.count != expected:       # blob_to_array's check, in its words
            raise NetspecError(f"blob with shape {self.shape()} holds {self.count} values, expected {expected}")
        direct = out.dtype == _FLOAT and out.flags.c_contiguous
        target = out if direct else np.empty(out.shape, _FLOAT)     # float64 nets: read, then convert
        raw = memoryview(target.reshape(-1)).cast("B")
        done = 0
        for offset, n in self._chunks:
            _read_exactly(self._file, raw[done:done + n], offset)
            done += n
        if not direct:
            out[...] = target


class StoredLayer:
    __slots__ = ("name", "blobs")

    def __init__(self, name, blobs):
        self.name, self.blobs = name, blobs


class StoredWeights:
    """An open weights file: `layer` lists its layers (name and StoredBlobs), as a NetParameter's
    `layer` does, for copy_layer_blobs. Close it (or use `with`) when the copy is done."""

    def __init__(self, f, layers):
        self._file, self.layer = f, layers

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _walk_blob(buf, start, end):
    """(header bytes, data chunks) of the BlobProto in buf[start:end]."""
    header, chunks = bytearray(), []
    for number, wire, tag_start, value_start, value_end in fields(buf, start, end):
        if number in (BLOB_DATA, BLOB_DIFF):
            # Packed floats: whole float32s. The diff is not needed to copy weights.
            if wire != WIRE_BYTES or (value_end - value_start) % _FLOAT.itemsize:
                raise Irregular("unpacked or partial floats")
            if number == BLOB_DATA:
                chunks.append((value_start, value_end - value_start))
        elif number in (BLOB_DOUBLE_DATA, BLOB_DOUBLE_DIFF):
            raise Irregular("double-precision blob")
        else:
            header += buf[tag_start:value_end]
    return bytes(header), chunks


def _walk_layer(buf, start, end):
    """(LayerParameter bytes without its blobs, [(blob header bytes, chunks)]) of buf[start:end]."""
    skeleton, blobs = bytearray(), []
    for number, wire, tag_start, value_start, value_end in fields(buf, start, end):
        if number == LAYER_BLOBS and wire == WIRE_BYTES:
            blobs.append(_walk_blob(buf, value_start, value_end))
        else:
            skeleton += buf[tag_start:value_end]
    return bytes(skeleton), blobs


def _walk_net(buf, start, end):
    """(NetParameter bytes without blob data, [[(blob header bytes, chunks)] per layer record])."""
    skeleton, layers = bytearray(), []
    for number, wire, tag_start, value_start, value_end in fields(buf, start, end):
        if number == NET_V1_LAYERS:
            raise Irregular("V0/V1 layers")          # upgrade_net rebuilds these: the whole-file path
        if number == NET_LAYER and wire == WIRE_BYTES:
            layer, blobs = _walk_layer(buf, value_start, value_end)
            skeleton += _wrapped(NET_LAYER, layer)
            layers.append(blobs)
        else:
            skeleton += buf[tag_start:value_end]
    return bytes(skeleton), layers


def _parse(message, data):
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise Irregular(str(e)) from None
    return message


def _stored_layers(f, buf, start, end):
    skeleton, walked = _walk_net(buf, start, end)
    net = _parse(caffe_pb2.NetParameter(), skeleton)
    # What upgrade_net or a fork's schema would change is left to the whole-file path.
    if upgrade_reasons(net) or dialects.detect_binary_dialect(net) is not None:
        raise Irregular("needs upgrading or a fork's schema")
    return [StoredLayer(lp.name, [StoredBlob(f, _parse(caffe_pb2.BlobProto(), header), chunks)
                                  for header, chunks in blobs])
            for lp, blobs in zip(net.layer, walked)]


def _mapped(f):
    """A read-only map of the file: only the pages the walk reads are ever loaded."""
    try:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:      # no address space left for it (ulimit -v), say
        raise Irregular(f"cannot map the file: {e}") from None


def open_weights(path):
    """StoredWeights of a binary .caffemodel, or None when it needs protobuf's whole-file parse
    (then that parse gives the errors, as before). NetspecError for a sealed file that fails
    its integrity check."""
    f = open_regular(path, "a binary NetParameter (.caffemodel)")
    try:
        size = os.fstat(f.fileno()).st_size
        if not 0 < size <= MAX_BINARY_BYTES:
            raise Irregular("empty or too large")
        start = verify_file(f, path)
        with _mapped(f) as buf:
            layers = _stored_layers(f, buf, start, size)
    except Irregular:
        f.close()
        return None
    except BaseException:
        f.close()
        raise
    return StoredWeights(f, layers)
