"""The per-pixel mean of an LMDB's Datums as a Caffe mean .binaryproto, and loading one back.

Like Caffe's compute_image_mean, the BlobProto carries num=1, channels, height,
width (the legacy 4-D fields) and `data` = the mean in C x H x W order.
"""
import os

import numpy as np
from google.protobuf.message import DecodeError

from .. import glog
from ..errors import NetspecError
from ..proto import caffe_pb2
from ..schema import read_binary_payload, write_binary_message
from .db import open_cursor
from .lmdb_io import datum_to_array, parse_datum

CHUNK = 1024   # Datums summed per numpy call


def compute_image_mean(db_path, out_binaryproto=None, backend="lmdb"):
    """Mean of every Datum in the database as a caffe_pb2.BlobProto; written to out_binaryproto if given.

    Encoded Datums are decoded with their own channels (Caffe's DecodeDatumNative).
    """
    with open_cursor(db_path, backend) as cursor:
        total, count, shape = _sum_datums(db_path, (next(cursor) for _ in range(len(cursor))))
    # Caffe sums in float32 and divides in float32; for 8-bit images the float64 sum is exact, and
    # (while it stays below 2**24) rounding it to float32 first gives Caffe's quotient bit for bit.
    mean = total.astype(np.float32) / np.float32(count)
    blob = caffe_pb2.BlobProto(num=1, channels=shape[0], height=shape[1], width=shape[2])
    blob.data.extend(mean.tolist())
    per_channel = mean.reshape(shape[0], -1).mean(axis=1)
    glog.info(f"Number of channels: {shape[0]}", "compute_image_mean.cpp:0")
    for c, value in enumerate(per_channel):
        glog.info(f"mean_value channel [{c}]: {value:g}", "compute_image_mean.cpp:0")
    if out_binaryproto is not None:
        glog.info(f"Write to {out_binaryproto}", "compute_image_mean.cpp:0")
        write_binary_message(out_binaryproto, blob)
    return blob


def _sum_datums(db_path, records):
    """float64 per-pixel sum over all Datums, their count, and (C, H, W) from the first one."""
    shape = size = total = None
    count = 0
    raw_chunk = []

    def flush():
        # One frombuffer + sum for the whole chunk of uint8 images.
        if raw_chunk:
            stacked = np.frombuffer(b"".join(raw_chunk), np.uint8).reshape(len(raw_chunk), size)
            total[:] += stacked.sum(axis=0, dtype=np.uint64)
            raw_chunk.clear()

    for key, value in records:
        where = f"'{db_path}' record {key.decode('utf-8', 'replace')!r}"
        datum = parse_datum(value, where)
        if datum.encoded:
            pixels = datum_to_array(datum, where)
            datum = caffe_pb2.Datum(channels=pixels.shape[0], height=pixels.shape[1], width=pixels.shape[2],
                                    data=pixels.tobytes())
        if shape is None:
            shape = (datum.channels, datum.height, datum.width)
            size = shape[0] * shape[1] * shape[2]
            if size == 0:
                raise NetspecError(f"{where}: the Datum has shape {shape[0]}x{shape[1]}x{shape[2]}")
            total = np.zeros(size, np.float64)
        found = len(datum.data) or len(datum.float_data)
        if found != size:
            raise NetspecError(f"{where}: the Datum holds {found} values, the first one held "
                               f"{shape[0]}x{shape[1]}x{shape[2]} = {size}")
        if datum.data:
            raw_chunk.append(datum.data)
            if len(raw_chunk) == CHUNK:
                flush()
        else:
            total += np.asarray(datum.float_data, np.float64)
        count += 1
    flush()
    return total, count, shape


def load_mean_binaryproto(path):
    """A mean .binaryproto as a float32 C x H x W array."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise NetspecError(f"mean file '{path}' does not exist")
    payload = read_binary_payload(path, "a mean file (.binaryproto)")
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(payload)
    except DecodeError:
        raise NetspecError(f"mean file '{path}' is not a BlobProto (corrupted?)") from None
    if blob.HasField("shape"):
        dims = list(blob.shape.dim)
    else:
        dims = [blob.num, blob.channels, blob.height, blob.width]
    values = blob.data if len(blob.data) else blob.double_data
    if len(dims) == 4 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) != 3 or min(dims) <= 0 or len(values) != int(np.prod(dims)):
        shape = "x".join(str(d) for d in dims) or "none"
        raise NetspecError(f"mean file '{path}' is not a 1xCxHxW mean (corrupted?): shape {shape}, "
                           f"{len(values)} values")
    return np.asarray(values, np.float32).reshape(dims)
