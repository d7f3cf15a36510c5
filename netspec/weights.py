"""Moving parameters between Blobs and BlobProtos (.caffemodel, .solverstate, .binaryproto)."""
import numpy as np

from .errors import NetspecError
from .proto import caffe_pb2


def proto_shape(bp, count=None):
    """A BlobProto's shape: `shape.dim` if set, else the legacy num/channels/height/width, else
    its value count (`count` when the values are not in `bp`: weight_file.StoredBlob)."""
    if bp.HasField("shape"):
        return tuple(int(d) for d in bp.shape.dim)
    legacy = (bp.num, bp.channels, bp.height, bp.width)
    if any(legacy):
        return tuple(legacy)
    return (len(bp.data) or len(bp.double_data),) if count is None else (count,)


def blob_to_array(bp, diff=False):
    """A BlobProto's data (or diff) as a float32 array of the blob's shape."""
    shape = proto_shape(bp)
    if diff:
        values = bp.double_diff if len(bp.double_diff) else bp.diff
    else:
        values = bp.double_data if len(bp.double_data) else bp.data
    arr = np.asarray(values, dtype=np.float32)
    if arr.size != int(np.prod(shape)):
        what = "diff values" if diff else "values"
        raise NetspecError(f"blob with shape {shape} holds {arr.size} {what}, expected {int(np.prod(shape))}")
    return arr.reshape(shape)


def varint(n):
    """Protobuf's base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data, pos, end=None):
    """(value, position after it) of the varint at data[pos], which must end before `end` (default
    the end of data); (None, pos) when it does not (or runs past 64 bits)."""
    end = len(data) if end is None else end
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return None, pos


def _packed_floats(field_number, array):
    """The wire form of a packed `repeated float` field: tag, byte length, little-endian float32s."""
    raw = np.ascontiguousarray(array, "<f4").tobytes()
    return varint(field_number << 3 | 2) + varint(len(raw)) + raw


def array_to_blob(array, bp, diff=None):
    """Fill BlobProto `bp` with `array` (and optionally its diff), Caffe's modern layout.

    The floats go in as packed wire bytes (BlobProto.data is field 5, diff field 6) rather than
    through a Python list: for CaffeNet's 61M weights a list would cost seconds and gigabytes.
    """
    bp.Clear()
    bp.shape.dim.extend(int(d) for d in array.shape)
    fields = _packed_floats(5, array) + (b"" if diff is None else _packed_floats(6, diff))
    bp.MergeFromString(fields)
    return bp


def _legacy_match(target_shape, source_shape):
    # Caffe accepts a legacy 4-D blob when the target, padded to 4-D with leading 1s, matches.
    padded = (1,) * (4 - len(target_shape)) + tuple(target_shape) if len(target_shape) <= 4 else None
    return padded == tuple(source_shape)


class _MessageBlob:
    """A parsed BlobProto with weight_file.StoredBlob's interface, so copy_layer_blobs reads both."""

    def __init__(self, bp):
        self.header = bp

    def shape(self):
        return proto_shape(self.header)

    def copy_into(self, out):
        out[...] = blob_to_array(self.header).reshape(out.shape)


def _source_blobs(source):
    return [_MessageBlob(bp) if isinstance(bp, caffe_pb2.BlobProto) else bp for bp in source.blobs]


def copy_layer_blobs(net, trained, where, require_all=False):
    """Caffe's CopyTrainedLayersFrom: copy blobs by layer name.

    `trained` is a NetParameter or a weight_file.StoredWeights (its floats still in the file).
    Lenient (fine-tuning, --weights): a source layer the net lacks is logged as
    ignored (as Caffe does), and so is each net layer with parameters that got
    nothing from the file. require_all (resume, --snapshot): every net layer with
    parameters must get them all, else NetspecError naming the layers missing.
    """
    from . import glog
    filled = set()
    for source in trained.layer:
        layer = net.layer_dict.get(source.name)
        if layer is None or not source.blobs:
            if layer is None and not require_all:
                glog.info(f"Ignoring source layer {source.name}", "net.cpp:1079")
            continue
        if len(source.blobs) != len(layer.blobs):
            raise NetspecError(f"{where}: layer '{source.name}' has {len(source.blobs)} parameter blobs, "
                               f"the net's layer has {len(layer.blobs)}")
        for j, (stored, blob) in enumerate(zip(_source_blobs(source), layer.blobs)):
            shape = stored.shape()
            if shape != blob.shape and not (not stored.header.HasField("shape") and _legacy_match(blob.shape, shape)):
                raise NetspecError(
                    f"{where}: cannot copy param {j} of layer '{source.name}': shape mismatch, "
                    f"weights file has {shape}, net has {blob.shape} "
                    "(rename the layer to learn it from scratch)")
            stored.copy_into(blob.data)
        filled.add(source.name)
    missing = [name for name, layer in net.layer_dict.items() if layer.blobs and name not in filled]
    if missing and require_all:
        shown = ", ".join(f"'{n}'" for n in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise NetspecError(f"{where}: holds no weights for layer(s) {shown} of the net, so resuming would leave "
                           "them at their random initialisation (a truncated or foreign .caffemodel?)")
    for name in missing:
        glog.info(f"Layer {name} got no weights from {where}: it keeps its initialisation",
                  "net.cpp:1079")
