"""Caffe LMDBs: read-only opening, a wrapping cursor, atomic writing, Datum <-> array.

A Caffe LMDB is a directory holding data.mdb (and usually lock.mdb) whose
records are (key, serialized caffe_pb2.Datum), read in key order.
"""
import os
import threading

import lmdb
import numpy as np
from google.protobuf.message import DecodeError

from ..durable import building_directory
from ..errors import NetspecError
from ..reading import check_regular
from ..proto import caffe_pb2

COMMIT_EVERY = 1000              # records per write transaction, as Caffe's converters commit
DEFAULT_MAP_SIZE = 1 << 28       # 256 MiB to start; doubled whenever LMDB reports the map is full
LMDB_FILES = ("data.mdb", "lock.mdb")   # all an LMDB directory holds: what --overwrite may replace


# py-lmdb refuses to open one environment twice in a process, yet the train and test nets (and
# any other reader) may read the same LMDB: readers of one path share an Environment, counted.
_SHARED_ENVS = {}
_SHARED_LOCK = threading.Lock()


class ReadOnlyLMDB:
    """A read-only handle on an LMDB; close() releases it (the last one closes the Environment)."""

    def __init__(self, path, key):
        self.path, self._key = path, key

    @property
    def env(self):
        if self._key is None:
            raise NetspecError(f"LMDB '{self.path}' is closed")
        return _SHARED_ENVS[self._key][0]

    def begin(self, **kwargs):
        return self.env.begin(**kwargs)

    def stat(self):
        return self.env.stat()

    def close(self):
        with _SHARED_LOCK:
            if self._key is None:
                return
            entry = _SHARED_ENVS[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                entry[0].close()
                del _SHARED_ENVS[self._key]
            self._key = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_lmdb_readonly(path):
    """Open an existing LMDB for reading without writing anything beside it; a ReadOnlyLMDB.

    lock=False: no lock.mdb is created or touched, so a read-only mount, several
    processes and the train and test nets can all read one LMDB at once.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise NetspecError(f"LMDB '{path}' does not exist")
    is_dir = os.path.isdir(path)
    if is_dir and not os.path.lexists(os.path.join(path, "data.mdb")):
        raise NetspecError(f"'{path}' is not an LMDB: the directory has no data.mdb")
    # A FIFO or device in its place would block or read without end.
    check_regular(os.path.join(path, "data.mdb") if is_dir else path, "an LMDB")
    key = os.path.realpath(path)
    with _SHARED_LOCK:
        if key not in _SHARED_ENVS:
            try:
                env = lmdb.open(path, subdir=is_dir, readonly=True, lock=False, readahead=False,
                                create=False)
            except lmdb.Error as e:
                raise NetspecError(f"'{path}' is not an LMDB ({_lmdb_reason(e)})") from None
            if env.stat()["entries"] == 0:
                env.close()
                raise NetspecError(f"LMDB '{path}' has no records")
            _SHARED_ENVS[key] = [env, 0]
        _SHARED_ENVS[key][1] += 1
    return ReadOnlyLMDB(path, key)


def _lmdb_reason(error):
    # py-lmdb messages look like "/path: MDB_INVALID: File is not an LMDB file"; keep the reason.
    return str(error).split(": ", 1)[-1]


class LMDBCursor:
    """Records of an LMDB in key order, wrapping to the first after the last (as Caffe's readers do).

    `position` is the index of the record the next call returns; pass it back to
    `seek` to resume exactly where a run stopped. One read transaction and one
    cursor live as long as this object.
    """

    # Every record read maps its pages into the process, and they stay mapped (and count as
    # resident) while the environment is open: a LeNet run would end holding the whole 47 MB
    # training set. Reopening after this many records releases them (when no one else shares it).
    REMAP_EVERY = 10000

    def __init__(self, path):
        self.path = os.fspath(path)
        self._open()
        self._count = self._txn.stat()["entries"]
        self._cursor.first()
        self.position = 0

    def _open(self):
        self._db = open_lmdb_readonly(self.path)
        self._txn = self._db.begin(buffers=False)
        self._cursor = self._txn.cursor()
        self._since_open = 0

    def _remap(self):
        """Close and reopen the environment at the same record, unmapping the pages read so far."""
        self._since_open = 0
        with _SHARED_LOCK:
            shared = _SHARED_ENVS[self._db._key][1] > 1
        if shared:
            return
        key = self._cursor.key()
        self._txn.abort()
        self._db.close()
        self._open()
        if not self._cursor.set_key(key):
            raise NetspecError(f"LMDB '{self.path}' changed while being read: record {key!r} is gone")

    def __len__(self):
        return self._count

    def __iter__(self):
        return self

    def __next__(self):
        key, value = self._cursor.item()
        self._advance()
        return key, value

    def _advance(self):
        if not self._cursor.next():
            self._cursor.first()
        self.position = (self.position + 1) % self._count
        self._since_open += 1
        if self._since_open >= self.REMAP_EVERY:
            self._remap()

    def peek(self):
        """The value of the record the next call returns, without moving."""
        return self._cursor.value()

    def next_values(self, n):
        """The next n values (keys dropped), wrapping as needed: what a data layer's batch needs."""
        values = []
        for _ in range(n):
            values.append(self._cursor.value())
            self._advance()
        return values

    def skip(self, n):
        """Move n records forward (wrapping), without reading the values."""
        steps = int(n) % self._count
        if self.position + steps >= self._count:
            # Past the end: restart from the first record instead of walking around.
            steps = self.position + steps - self._count
            self._cursor.first()
            self.position = 0
        for _ in range(steps):
            self._advance()

    def seek(self, position):
        """Make `position` (as saved from .position) the next record returned."""
        position = int(position)
        if not 0 <= position < self._count:
            raise NetspecError(f"LMDB '{self.path}': cannot seek to record {position}; "
                               f"it has {self._count} records")
        self._cursor.first()
        self.position = 0
        self.skip(position)

    def close(self):
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_lmdb_atomically(dest, records, map_size=None, progress=None, overwrite=False):
    """Write (key, value) byte pairs to a new LMDB at `dest`; return the number written.

    The records go to a directory beside dest that is moved in only when complete
    (durable.building_directory), so an interrupted write never leaves a half LMDB
    at dest, and --overwrite replaces only data.mdb and lock.mdb, never other files
    of the folder. `progress(n)` is called after each commit with the records so far.
    """
    shown = os.fspath(dest)
    if overwrite and os.path.lexists(shown) and not os.path.isfile(os.path.join(shown, "data.mdb")):
        # --overwrite must never replace a folder or file that merely has the wrong name.
        raise NetspecError(f"refusing to replace '{shown}': it is not an LMDB directory")
    with building_directory(shown, LMDB_FILES, overwrite=overwrite) as tmp:
        return _write_records(tmp, records, map_size or DEFAULT_MAP_SIZE, progress)


def _write_records(directory, records, map_size, progress):
    env = lmdb.open(directory, map_size=map_size, subdir=True, meminit=False, sync=False)
    try:
        count, chunk = 0, []
        for key, value in records:
            chunk.append((key.encode("ascii") if isinstance(key, str) else key, value))
            if len(chunk) == COMMIT_EVERY:
                count += _commit_chunk(env, chunk)
                chunk = []
                if progress:
                    progress(count)
        if chunk:
            count += _commit_chunk(env, chunk)
            if progress:
                progress(count)
        env.sync(True)
        return count
    finally:
        env.close()


def _commit_chunk(env, chunk):
    # A full map aborts the transaction; double the map and retry the same chunk.
    while True:
        try:
            with env.begin(write=True) as txn:
                txn.cursor().putmulti(chunk)
            return len(chunk)
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)
        except lmdb.Error as e:
            raise NetspecError(f"cannot write LMDB record: {_lmdb_reason(e)}") from None


def parse_datum(value, where="LMDB record"):
    """A caffe_pb2.Datum from serialized bytes, with a clear error for anything else."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError:
        raise NetspecError(f"{where} is not a serialized Datum") from None
    return datum


def datum_to_array(datum, where="Datum", color=None):
    """C x H x W array: uint8 from `data` (decoded first when `encoded`), float32 from `float_data`.

    `color` applies to encoded Datums, as Caffe's force_color/force_gray: None keeps the image's
    own channels, True decodes to 3 (BGR), False to 1.
    """
    if isinstance(datum, (bytes, bytearray, memoryview)):
        datum = parse_datum(bytes(datum), where)
    if datum.encoded:
        from .images import decode_image
        return decode_image(datum.data, color, where)
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) < 1:
        raise NetspecError(f"{where}: the Datum has channels x height x width = {shape[0]}x{shape[1]}x{shape[2]}; "
                           "each must be at least 1")
    size = shape[0] * shape[1] * shape[2]
    if datum.data:
        flat, found = np.frombuffer(datum.data, np.uint8), len(datum.data)
    elif len(datum.float_data):
        flat, found = np.asarray(datum.float_data, np.float32), len(datum.float_data)
    else:
        raise NetspecError(f"{where}: the Datum holds no data (neither data nor float_data is set)")
    if found != size or size == 0:
        raise NetspecError(f"{where}: the Datum holds {found} values but channels x height x width = "
                           f"{shape[0]}x{shape[1]}x{shape[2]} = {size}")
    return flat.reshape(shape)


def array_to_datum(arr, label=None):
    """A Datum holding a C x H x W array: uint8 as bytes in `data`, anything else as float_data."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise NetspecError(f"array_to_datum needs a C x H x W array; got shape {arr.shape}")
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum
