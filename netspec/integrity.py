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
import os

from .errors import NetspecError
from .weights import read_varint, varint

FIELD = 1001
_MAGIC = b"netspec-sha256:"


_TAG = varint(FIELD << 3 | 2)


def seal(payload):
    """The bytes to write: the integrity record, then `payload` (a serialized message)."""
    record = _MAGIC + b"%d:%s" % (len(payload), hashlib.sha256(payload).hexdigest().encode("ascii"))
    return _TAG + varint(len(record)) + record + payload


def _record(data, where):
    """(payload start, payload size, hex digest) of the record at the start of `data`; None when
    there is none. `data` need only hold the file's first few hundred bytes.

    NetspecError when the record is there but damaged.
    """
    if not data.startswith(_TAG):
        return None
    # Field 1001 first: netspec wrote it (Caffe writes no such field), so the record must be whole.
    length, pos = read_varint(data, len(_TAG))
    record = bytes(data[pos:pos + length]) if length is not None and length <= 200 else b""
    try:
        if not record.startswith(_MAGIC) or pos + length > len(data):
            raise ValueError
        size_text, digest = record[len(_MAGIC):].split(b":")
        size = int(size_text)
    except ValueError:
        raise NetspecError(f"{where}: the file is corrupted: the integrity record netspec wrote at its start "
                           "is damaged") from None
    return pos + length, size, digest


def _check(where, size, digest, payload_size, payload_digest):
    if payload_size != size:
        how = "truncated" if payload_size < size else "has bytes appended"
        raise NetspecError(f"{where}: the file is {how}: netspec wrote {size} bytes after its integrity "
                           f"record and {payload_size} are there (an interrupted copy?)")
    if payload_digest() != digest:
        raise NetspecError(f"{where}: the file is corrupted: its contents do not match the sha256 netspec "
                           "recorded when writing it")


def unseal(data, where):
    """(payload, sealed): the bytes after a valid record, or `data` itself when it has none.

    NetspecError when the record is there but the rest is shorter, longer or different.
    """
    found = _record(data, where)
    if found is None:
        return data, False
    start, size, digest = found
    payload = data[start:]
    _check(where, size, digest, len(payload),
           lambda: hashlib.sha256(payload).hexdigest().encode("ascii"))
    return payload, True


_HEAD_BYTES = 256               # enough for the tag, the length and the longest record netspec writes
_CHUNK = 1 << 20


def verify_file(f, where):
    """The offset where the payload of open file `f` starts: after a valid record, else 0.

    The same checks and errors as unseal, but the file is hashed in chunks, so a file of
    hundreds of megabytes is checked without holding it in memory (Net.copy_from's
    weight_file reads the floats straight into the net's arrays afterwards).
    """
    head = os.pread(f.fileno(), _HEAD_BYTES, 0)
    found = _record(head, where)
    if found is None:
        return 0
    start, size, digest = found
    payload_size = os.fstat(f.fileno()).st_size - start

    def payload_digest():
        sha, buffer, offset = hashlib.sha256(), bytearray(_CHUNK), start
        while True:
            n = os.preadv(f.fileno(), [buffer], offset)
            if not n:
                return sha.hexdigest().encode("ascii")
            sha.update(memoryview(buffer)[:n])
            offset += n

    _check(where, size, digest, payload_size, payload_digest)
    return start
