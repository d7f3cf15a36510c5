"""Caffe LevelDBs (Caffe's default backend) through plyvel: a wrapping cursor like LMDBCursor, and writing.

A Caffe LevelDB is a directory (CURRENT, MANIFEST-*, *.ldb, LOG, LOCK) whose records are
(key, serialized Datum) in bytewise key order, the same order as LMDB's.
"""
import os
import re
import threading

from ..errors import NetspecError

COMMIT_EVERY = 1000                       # records per write batch, as Caffe's converters commit
# Caffe's db_leveldb.cpp opens with these (bigger blocks and write buffer than LevelDB's defaults).
CAFFE_OPTIONS = {"block_size": 65536, "write_buffer_size": 268435456, "max_open_files": 100}

# LevelDB lets one process open a database once: every reader of a path shares one handle.
_SHARED = {}
_SHARED_LOCK = threading.Lock()


def plyvel_module():
    try:
        import plyvel
    except ImportError:
        raise NetspecError("LevelDB needs the plyvel package (pip install plyvel; it has wheels for "
                           "Python 3.10-3.12, elsewhere it builds against libleveldb-dev), or convert "
                           "the database to LMDB") from None
    return plyvel


# The files LevelDB makes: what convert_imageset --overwrite may replace in a folder (nothing else).
_LEVELDB_FILE = re.compile(r"(CURRENT|LOCK|LOG(\.old)?|MANIFEST-\d+|\d+\.(log|ldb|sst|dbtmp))")


def is_leveldb_file(name):
    return _LEVELDB_FILE.fullmatch(name) is not None


def is_leveldb(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "CURRENT"))


def _open_error(path, error):
    text = str(error)
    if "lock" in text.lower():
        return NetspecError(f"LevelDB '{path}' is locked by another process (its LOCK file is held): "
                            "stop the other reader or writer, or copy the database")
    return NetspecError(f"'{path}' is not a readable LevelDB ({text})")


def _acquire(path):
    plyvel = plyvel_module()
    if not os.path.exists(path):
        raise NetspecError(f"LevelDB '{path}' does not exist")
    if not is_leveldb(path):
        raise NetspecError(f"'{path}' is not a LevelDB: the directory has no CURRENT file")
    key = os.path.realpath(path)
    with _SHARED_LOCK:
        if key not in _SHARED:
            try:
                db = plyvel.DB(path, create_if_missing=False, max_open_files=100)
            except (plyvel.Error, OSError) as e:
                raise _open_error(path, e) from None
            _SHARED[key] = [db, 0]
        _SHARED[key][1] += 1
        return key, _SHARED[key][0]


def _release(key):
    with _SHARED_LOCK:
        entry = _SHARED[key]
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].close()
            del _SHARED[key]


class LevelDBCursor:
    """Records of a LevelDB in key order, wrapping after the last: LMDBCursor's interface."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._key, db = _acquire(self.path)
        try:
            self._it = db.raw_iterator()
            self._count = sum(1 for _ in db.iterator(include_value=False))
        except Exception as e:
            _release(self._key)
            raise NetspecError(f"LevelDB '{self.path}' cannot be read ({e})") from None
        if self._count == 0:
            self.close()
            raise NetspecError(f"LevelDB '{self.path}' has no records")
        self._it.seek_to_first()
        self.position = 0

    def __len__(self):
        return self._count

    def __iter__(self):
        return self

    def __next__(self):
        key, value = self._it.key(), self._it.value()
        self._advance()
        return key, value

    def _advance(self):
        self._it.next()
        if not self._it.valid():
            self._it.seek_to_first()
        self.position = (self.position + 1) % self._count

    def peek(self):
        return self._it.value()

    def next_values(self, n):
        values = []
        for _ in range(n):
            values.append(self._it.value())
            self._advance()
        return values

    def skip(self, n):
        for _ in range(int(n) % self._count):
            self._advance()

    def seek(self, position):
        position = int(position)
        if not 0 <= position < self._count:
            raise NetspecError(f"LevelDB '{self.path}': cannot seek to record {position}; "
                               f"it has {self._count} records")
        self._it.seek_to_first()
        self.position = 0
        self.skip(position)

    def close(self):
        if self._key is not None:
            self._it.close()
            _release(self._key)
            self._key = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_leveldb(directory, records, progress=None):
    """Write (key, value) pairs into a new LevelDB in `directory` (which must not hold one); the count."""
    plyvel = plyvel_module()
    try:
        db = plyvel.DB(directory, create_if_missing=True, error_if_exists=True, **CAFFE_OPTIONS)
    except (plyvel.Error, OSError) as e:
        raise _open_error(directory, e) from None
    try:
        count, batch = 0, db.write_batch()
        for key, value in records:
            batch.put(key.encode("ascii") if isinstance(key, str) else key, value)
            count += 1
            if count % COMMIT_EVERY == 0:
                batch.write()
                batch = db.write_batch()
                if progress:
                    progress(count)
        batch.write()
        if progress and count % COMMIT_EVERY:
            progress(count)
        return count
    finally:
        db.close()
