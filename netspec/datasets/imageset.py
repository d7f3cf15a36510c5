"""convert_imageset: a folder of images and a list file `name label` become a Caffe LMDB or LevelDB.

What Caffe's tools/convert_imageset.cpp writes: one Datum per readable image under the key
`%08d_<name>` (the line's index after shuffling), raw BGR pixels channel-major with
`encoded: false` set, or with --encoded the file's own bytes (re-encoded only when resized or
of another type), commits every 1000 records. Unreadable images are skipped with one line each.
"""
import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import glog
from ..errors import NetspecError
from ..reading import refuse_special
from ..proto import caffe_pb2
from .db import write_db_atomically
from .images import decode_threads, encode_image, read_image

CHUNK = 64                      # images read and converted together by the thread pool


def read_image_list(listfile):
    """[(name, label)] from a list file; like Caffe, the label follows the line's last space."""
    refuse_special(listfile, "an image list")
    try:
        with open(listfile, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise NetspecError(f"cannot read the image list {listfile}: {e.strerror}") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, _, label = line.rstrip().rpartition(" ")
        try:
            items.append((name, int(label)))
        except ValueError:
            raise NetspecError(f"{listfile}:{number}:1: expected `<image path> <integer label>`, "
                               f"got {line!r}") from None
        if not name:
            raise NetspecError(f"{listfile}:{number}:1: expected `<image path> <integer label>`, got {line!r}")
    return items


class BoostMT19937:
    """32-bit words of boost::mt19937 seeded with `seed` (Mersenne Twister, init_genrand seeding)."""

    def __init__(self, seed):
        legacy = np.random.RandomState(seed & 0xFFFFFFFF).get_state(legacy=False)
        self.bitgen = np.random.MT19937()
        self.bitgen.state = {"bit_generator": "MT19937", "state": legacy["state"]}
        self.words, self.next = np.empty(0, np.uint64), 0

    def __call__(self):
        if self.next == len(self.words):
            self.words, self.next = self.bitgen.random_raw(4096), 0
        self.next += 1
        return int(self.words[self.next - 1])


def boost_uniform_int(word, high):
    """boost::uniform_int<>(0, high)(gen): a word divided into equal buckets, out-of-range buckets redrawn."""
    buckets = high + 1
    size = 0xFFFFFFFF // buckets + (1 if 0xFFFFFFFF % buckets == high else 0)
    while True:
        value = word() // size
        if value <= high:
            return value


def caffe_shuffle(items, seed):
    """caffe::shuffle: Fisher-Yates from the back, j = uniform_int(0, i), on boost::mt19937(seed)."""
    word = BoostMT19937(seed)
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
        j = boost_uniform_int(word, i)
        items[i], items[j] = items[j], items[i]
    return items


def _matches_extension(name, encoding):
    ext = name.rpartition(".")[2].lower()
    encoding = encoding.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def image_datum(path, label, height, width, color, encoding):
    """Caffe's ReadImageToDatum: the Datum of one image file (NetspecError when it cannot be read)."""
    pixels = read_image(path, color, height, width)
    if encoding:
        if not (height and width) and _matches_extension(path, encoding):
            with open(path, "rb") as f:
                data = f.read()
        else:
            data = encode_image(pixels, encoding)
        return caffe_pb2.Datum(data=data, label=label, encoded=True)
    c, h, w = pixels.shape
    return caffe_pb2.Datum(channels=c, height=h, width=w, data=pixels.tobytes(), label=label, encoded=False)


def convert_imageset(root_folder, listfile, db_name, gray=False, shuffle=False, backend="lmdb",
                     resize_width=0, resize_height=0, check_size=False, encoded=False, encode_type="",
                     seed=None, show_progress=None, overwrite=False):
    """Build the database; return (records written, images skipped)."""
    items = read_image_list(listfile)
    if shuffle:
        glog.info("Shuffling data", "convert_imageset.cpp:87")
        items = caffe_shuffle(items, int.from_bytes(os.urandom(4), "little") if seed is None else seed)
    glog.info(f"A total of {len(items)} images.", "convert_imageset.cpp:90")
    if encode_type and not encoded:
        glog.info("encode_type specified, assuming encoded=true.", "convert_imageset.cpp:93")
    height, width = max(0, resize_height), max(0, resize_width)
    if os.path.lexists(db_name) and not overwrite:
        raise NetspecError(f"'{db_name}' already exists; remove it first (or use --overwrite)")
    skipped = []

    def convert(line_id):
        name, label = items[line_id]
        encoding = encode_type
        if encoded and not encoding:
            encoding = name.rpartition(".")[2].lower()      # guessed from the file name, as Caffe does
        path = root_folder + name
        try:
            return image_datum(path, label, height, width, not gray, encoding)
        except NetspecError as e:
            return e

    def records(progress):
        first_size = None
        with ThreadPoolExecutor(decode_threads(), thread_name_prefix="netspec-convert") as pool:
            for start in range(0, len(items), CHUNK):
                ids = range(start, min(start + CHUNK, len(items)))
                for line_id, datum in zip(ids, pool.map(convert, ids)):
                    progress(line_id + 1)
                    if isinstance(datum, NetspecError):
                        glog.error(f"Could not open or find file {datum}", "io.cpp:80")
                        skipped.append(line_id)
                        continue
                    if check_size and not datum.encoded:
                        if first_size is None:
                            first_size = len(datum.data)
                        elif len(datum.data) != first_size:
                            raise NetspecError(f"{root_folder + items[line_id][0]}: {len(datum.data)} bytes of "
                                               f"pixels, the first image has {first_size} (--check_size)")
                    key = f"{line_id:08d}_{items[line_id][0]}".encode("utf-8", "surrogateescape")
                    yield key, datum.SerializeToString()

    if show_progress is None:
        show_progress = sys.stderr.isatty()
    with _progress(len(items), show_progress) as progress:
        count = write_db_atomically(db_name, records(progress), backend, overwrite=overwrite,
                                    progress=None if show_progress else _log_processed)
    glog.info(f"Processed {count} files.", "convert_imageset.cpp:150")
    if skipped:
        glog.warning(f"Skipped {len(skipped)} of {len(items)} images that could not be read", "convert_imageset.cpp:0")
    return count, len(skipped)


def _log_processed(count):
    if count % 1000 == 0:
        glog.info(f"Processed {count} files.", "convert_imageset.cpp:143")


@contextlib.contextmanager
def _progress(total, show):
    """A callable taking the number of list lines done: a click progress bar in a terminal, else nothing."""
    if not show:
        yield lambda done: None
        return
    import click
    with click.progressbar(length=total, label="Converting images", file=sys.stderr) as bar:
        yield lambda done: bar.update(done - bar.pos)
