"""Caffe's two database backends behind one door: which one a path holds, a cursor over it, writing one.

Caffe's DataParameter defaults to LEVELDB when `backend:` is absent, yet most datasets in use are
LMDBs. netspec opens what the directory actually holds, and says so in the log when that is not
the backend named (Caffe would fail to open it).
"""
import os

from .. import glog
from ..errors import NetspecError
from ..proto import caffe_pb2
from ..durable import building_directory
from . import leveldb_io, lmdb_io

BACKENDS = ("lmdb", "leveldb")
SHOWN = {"lmdb": "LMDB", "leveldb": "LevelDB"}


def backend_name(value):
    """'lmdb' or 'leveldb' from a DataParameter.DB value or a command-line spelling."""
    if isinstance(value, int):
        return "lmdb" if value == caffe_pb2.DataParameter.LMDB else "leveldb"
    name = str(value).lower()
    if name not in BACKENDS:
        raise NetspecError(f"unknown database backend '{value}' (use lmdb or leveldb)")
    return name


def detect_backend(path):
    """'lmdb', 'leveldb' or None for what the directory (or LMDB file) at path holds."""
    if os.path.isfile(os.path.join(path, "data.mdb")) or os.path.isfile(path):
        return "lmdb"
    if leveldb_io.is_leveldb(path):
        return "leveldb"
    return None


def open_cursor(path, backend="lmdb"):
    """A wrapping cursor (LMDBCursor or LevelDBCursor) over the records of the database at path."""
    path = os.fspath(path)
    named = backend_name(backend)
    if not os.path.exists(path):
        raise NetspecError(f"{SHOWN[named]} '{path}' does not exist")
    actual = detect_backend(path) or named
    if actual != named:
        glog.warning(f"{path} holds {'an' if actual == 'lmdb' else 'a'} {SHOWN[actual]} database, not the {SHOWN[named]} that the backend "
                     f"names (LEVELDB is Caffe's default when backend is absent); reading it as "
                     f"{SHOWN[actual]}", "db.cpp:0")
    return lmdb_io.LMDBCursor(path) if actual == "lmdb" else leveldb_io.LevelDBCursor(path)


def write_db_atomically(dest, records, backend="lmdb", map_size=None, progress=None, overwrite=False):
    """Write (key, value) pairs to a new database at dest, built beside it and renamed in; the count."""
    if backend_name(backend) == "lmdb":
        return lmdb_io.write_lmdb_atomically(dest, records, map_size=map_size, progress=progress,
                                             overwrite=overwrite)
    shown = os.fspath(dest)
    if overwrite and os.path.lexists(shown) and not leveldb_io.is_leveldb(shown):
        # --overwrite must never replace a folder or file that merely has the wrong name.
        raise NetspecError(f"refusing to replace '{shown}': it is not a LevelDB directory")
    with building_directory(shown, leveldb_io.is_leveldb_file, overwrite=overwrite) as tmp:
        return leveldb_io.write_leveldb(tmp, records, progress)
