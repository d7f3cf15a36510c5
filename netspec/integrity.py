"""The integrity record of the binary files netspec writes (.caffemodel, .solverstate, .binaryproto).

A protobuf file truncated at a message boundary still parses: a .caffemodel cut
after its third layer reads as a valid net of three layers. So netspec starts
each binary file it writes with one extra length-delimited field (number 1001,
unused by NetParameter, SolverState and BlobProto) holding

    b"netspec-sha256:<length>:<hex sha256>"

of every byte after the record. Caffe's parser skips the unknown field, so the
file stays a valid Caffe file; netspec reads the record back, refuses a file
whose length or digest differs, and hands the parser the bytes after it (so
the record never reaches a message that could write it out again, stale).
Files without the record (written by Caffe) are read as before.
"""
import hashlib

from .errors import NetspecError
from .weights import varint

FIELD = 1001
_MAGIC = b"netspec-sha256:"


_TAG = varint(FIELD << 3 | 2)


def seal(payload):
    """The bytes to write: the integrity record, then `payload` (a serialized message)."""
    record = _MAGIC + b"%d:%s" % (len(payload), hashlib.sha256(payload).hexdigest().encode("ascii"))
    return _TAG + varint(len(record)) + record + payload


def _read_varint(data, pos):
    value, shift = 0, 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos


def unseal(data, where):
    """(payload, sealed): the bytes after a valid record, or `data` itself when it has none.

    NetspecError when the record is there but the rest is shorter, longer or different.
    """
    if not data.startswith(_TAG):
        return data, False
    # Field 1001 first: netspec wrote it (Caffe writes no such field), so the record must be whole.
    length, pos = _read_varint(data, len(_TAG))
    record = bytes(data[pos:pos + length]) if length is not None and length <= 200 else b""
    try:
        if not record.startswith(_MAGIC) or pos + length > len(data):
            raise ValueError
        size_text, digest = record[len(_MAGIC):].split(b":")
        size = int(size_text)
    except ValueError:
        raise NetspecError(f"{where}: the file is corrupted: the integrity record netspec wrote at its start "
                           "is damaged") from None
    payload = data[pos + length:]
    if len(payload) != size:
        how = "truncated" if len(payload) < size else "has bytes appended"
        raise NetspecError(f"{where}: the file is {how}: netspec wrote {size} bytes after its integrity "
                           f"record and {len(payload)} are there (an interrupted copy?)")
    if hashlib.sha256(payload).hexdigest().encode("ascii") != digest:
        raise NetspecError(f"{where}: the file is corrupted: its contents do not match the sha256 netspec "
                           "recorded when writing it")
    return payload, True
