"""MNIST: read IDX files, convert them to Caffe LMDBs, check and fetch the originals.

convert_mnist writes what Caffe's convert_mnist_data writes: keys "%08d" from 0,
values Datum(channels=1, height=rows, width=cols, data=the uint8 pixels, label).
"""
import contextlib
import gzip
import hashlib
import math
import os
import sys
import urllib.error
import urllib.request
import zlib

import click
import numpy as np

from .. import glog
from ..durable import temp_name_for
from ..errors import NetspecError
from ..reading import open_regular
from ..proto import caffe_pb2
from .db import write_db_atomically
from .lmdb_io import open_lmdb_readonly

GZIP_MAGIC = b"\x1f\x8b"
IDX_KINDS = {"images": (2051, 3), "labels": (2049, 1)}   # magic number, number of dimensions

# md5 of the uncompressed originals (data/mnist/README.md) and their record counts.
MNIST_FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 60000),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 60000),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 10000),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 10000),
}
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
# MNIST's training images are 47 MB; an IDX file past 8 GiB is refused before it is read.
MAX_IDX_BYTES = int(os.environ.get("NETSPEC_MAX_IDX_BYTES", 8 << 30))
LMDB_NAMES = {"train": "mnist_train_lmdb", "t10k": "mnist_test_lmdb"}


def _open_contents(path):
    """A binary stream of a regular file's contents, gunzipped (as it is read) when it starts with the gzip magic."""
    path = os.fspath(path)
    raw = open_regular(path, "an IDX file")
    compressed = raw.read(2) == GZIP_MAGIC
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw, raw


def _read_exactly(stream, path, n):
    try:
        return stream.read(n)
    except (EOFError, OSError, zlib.error) as e:
        raise NetspecError(f"{path}: the gzip data is truncated or corrupt ({e})") from None


def read_idx(path, kind):
    """An IDX file ('images': N x rows x cols, 'labels': N) as a uint8 array, fully checked.

    The header is read and checked first, and then only the bytes it promises (plus
    one, to see extra data): a gzip bomb or a header promising terabytes is refused
    before anything large is decompressed or allocated.
    """
    magic_expected, ndims = IDX_KINDS[kind]
    stream, raw = _open_contents(path)
    with raw, stream:
        header = _read_exactly(stream, path, 4 + 4 * ndims)
        _check_idx_header(path, kind, header, magic_expected, ndims)
        dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndims)]
        body_size = math.prod(dims)       # Python ints: a header of 4 billion x 4 billion cannot wrap
        what = f"{dims[0]} images of {dims[1]}x{dims[2]}" if kind == "images" else f"{dims[0]} labels"
        expected = len(header) + body_size
        size = os.fstat(raw.fileno()).st_size
        if stream is raw and size < expected:           # uncompressed: the file's size tells at once
            raise NetspecError(f"{path}: truncated IDX file: the header promises {what}, which needs "
                               f"{expected} bytes; the file has {size} bytes (uncompressed)")
        if body_size > MAX_IDX_BYTES:
            raise NetspecError(f"{path}: the header promises {what} ({expected} bytes), more than netspec "
                               f"reads from an IDX file ({MAX_IDX_BYTES} bytes)")
        body = _read_exactly(stream, path, body_size + 1)
    found = len(header) + len(body)
    if len(body) < body_size:
        raise NetspecError(f"{path}: truncated IDX file: the header promises {what}, which needs "
                           f"{expected} bytes; the file has {found} bytes (uncompressed)")
    if len(body) > body_size:
        raise NetspecError(f"{path}: the header promises {what} ({expected} bytes) but the file has more "
                           "bytes (uncompressed); extra data after the last record")
    return np.frombuffer(body, np.uint8).reshape(dims)


def _check_idx_header(path, kind, header, magic_expected, ndims):
    if len(header) < 4:
        raise NetspecError(f"{path}: truncated IDX file: {len(header)} bytes, too short for a header")
    magic = int.from_bytes(header[:4], "big")
    if magic != magic_expected:
        other = [k for k, (m, _) in IDX_KINDS.items() if m == magic]
        hint = f"; this looks like an IDX {other[0]} file" if other else ""
        raise NetspecError(f"{path}: wrong magic number {magic} (expected {magic_expected} for an "
                           f"IDX {kind} file{hint})")
    if len(header) < 4 + 4 * ndims:
        raise NetspecError(f"{path}: truncated IDX file: the header needs {4 + 4 * ndims} bytes, "
                           f"the file has {len(header)}")
    dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndims)]
    if kind == "images" and (dims[1] == 0 or dims[2] == 0):
        raise NetspecError(f"{path}: the header gives images of {dims[1]}x{dims[2]} pixels")


def _datum_records(images, labels):
    n, rows, cols = images.shape
    datum = caffe_pb2.Datum(channels=1, height=rows, width=cols)
    # Caffe reads each label into a (signed) char, so bytes above 127 become negative labels.
    signed_labels = labels.view(np.int8)
    for i in range(n):
        datum.data = images[i].tobytes()
        datum.label = int(signed_labels[i])
        yield b"%08d" % i, datum.SerializeToString()


def convert_mnist(images, labels, dest_lmdb, overwrite=False, show_progress=None, backend="lmdb"):
    """Convert an IDX image file and label file into a Caffe LMDB (or LevelDB); return the record count.

    show_progress=None draws a progress bar only when stderr is a terminal.
    """
    if os.path.lexists(dest_lmdb) and not overwrite:   # fail before reading 50 MB for nothing
        raise NetspecError(f"'{os.fspath(dest_lmdb)}' already exists; remove it first (or use --overwrite)")
    pixels = read_idx(images, "images")
    targets = read_idx(labels, "labels")
    if len(pixels) != len(targets):
        raise NetspecError(f"{images} has {len(pixels)} images but {labels} has {len(targets)} labels")
    n, rows, cols = pixels.shape
    glog.info(f"A total of {n} items.", "convert_mnist_data.cpp:0")
    glog.info(f"Rows: {rows} Cols: {cols}", "convert_mnist_data.cpp:0")
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    bar = (click.progressbar(length=n, label=f"Converting {os.path.basename(os.fspath(images))}",
                             file=sys.stderr) if show_progress else contextlib.nullcontext())
    with bar:
        progress = (lambda done: bar.update(done - bar.pos)) if show_progress else None
        # A serialized MNIST Datum is rows*cols plus ~16 bytes; LMDB pages add a little more.
        map_size = 2 * n * (rows * cols + 64) + (1 << 20)
        count = write_db_atomically(dest_lmdb, _datum_records(pixels, targets), backend, map_size=map_size,
                                    progress=progress, overwrite=overwrite)
    glog.info(f"Processed {count} files.", "convert_mnist_data.cpp:0")
    return count


def find_mnist_file(folder, name):
    """The raw file `name` in folder, else `name.gz`, else None."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def md5_of_contents(path):
    """md5 of the uncompressed contents (gzip detected by its magic)."""
    digest = hashlib.md5()
    stream, raw = _open_contents(path)
    with raw, stream:
        try:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        except (EOFError, OSError, zlib.error) as e:
            raise NetspecError(f"{path}: the gzip data is truncated or corrupt ({e})") from None
    return digest.hexdigest()


def md5_check(folder):
    """Check the four MNIST files in folder; return {name: path}, or raise listing every problem."""
    found, problems = {}, []
    for name, (md5, _) in MNIST_FILES.items():
        path = find_mnist_file(folder, name)
        if path is None:
            problems.append(f"{name}(.gz) is missing")
            continue
        actual = md5_of_contents(path)
        if actual != md5:
            problems.append(f"{os.path.basename(path)} has md5 {actual}, expected {md5}")
        found[name] = path
    if problems:
        raise NetspecError(f"MNIST check of {folder} failed: " + "; ".join(problems))
    return found


def prepare_mnist_lmdbs(mnist_dir, out_dir, show_progress=None):
    """Create mnist_train_lmdb and mnist_test_lmdb in out_dir unless present; return their paths."""
    paths = {}
    for prefix, lmdb_name in LMDB_NAMES.items():
        dest = os.path.join(out_dir, lmdb_name)
        paths["train" if prefix == "train" else "test"] = dest
        if os.path.exists(dest):
            open_lmdb_readonly(dest).close()   # an unreadable leftover is an error, not "done"
            continue
        sources = []
        for kind, dims in (("images", 3), ("labels", 1)):
            name = f"{prefix}-{kind}-idx{dims}-ubyte"
            path = find_mnist_file(mnist_dir, name)
            if path is None:
                raise NetspecError(f"{mnist_dir}: {name}(.gz) is missing; run tools/get_mnist.py")
            sources.append(path)
        convert_mnist(sources[0], sources[1], dest, show_progress=show_progress)
    return paths


def download_mnist(dest_dir, mirrors=None, timeout=20):
    """Fetch the four .gz files into dest_dir from the first mirror that serves a correct copy."""
    os.makedirs(dest_dir, exist_ok=True)
    for name, (md5, _) in MNIST_FILES.items():
        target = os.path.join(dest_dir, name + ".gz")
        if os.path.isfile(target) and md5_of_contents(target) == md5:
            continue
        failures = []
        for base in mirrors or MNIST_MIRRORS:
            url = base + name + ".gz"
            failure = _fetch_checked(url, target, md5, timeout)
            if failure is None:
                break
            failures.append(f"{url}: {failure}")
        else:
            raise NetspecError(f"could not download {name}.gz (no internet connection?): "
                               + "; ".join(failures)
                               + f". Copy the four MNIST .gz files into {dest_dir} by hand")


def _fetch_checked(url, target, md5, timeout):
    """Download url to target if its contents have the given md5; return None or why it failed."""
    tmp = temp_name_for(target)      # netspec's temp pattern: cleaned up if left by a kill
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        actual = md5_of_contents(tmp)
        if actual != md5:
            return f"md5 of the contents is {actual}, expected {md5}"
        os.replace(tmp, target)
        return None
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except urllib.error.URLError as e:
        return str(e.reason)
    except (OSError, NetspecError) as e:
        return str(e)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
