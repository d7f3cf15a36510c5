"""Convert the CIFAR-10 binary batches to Caffe LMDBs, as Caffe's convert_cifar_data does.

    python models/cifar10/convert_cifar_data.py path/to/cifar-10-batches-bin data/cifar10

reads data_batch_1.bin .. data_batch_5.bin and test_batch.bin (each 10,000 records of one
label byte and 3072 pixel bytes, the red, green and blue 32x32 planes) and writes
cifar10_train_lmdb (50,000 records) and cifar10_test_lmdb (10,000), keys "%05d", Datums of
3x32x32 uint8 pixels in the files' RGB order (Caffe keeps that order for CIFAR-10 too).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically  # noqa: E402
from netspec.errors import NetspecError  # noqa: E402

RECORD = 1 + 3 * 32 * 32
BATCH = 10000
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]


def read_batches(folder, names):
    """(images N x 3 x 32 x 32 uint8, labels N) from the named batch files."""
    parts = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                raw = np.frombuffer(f.read(), np.uint8)
        except OSError as e:
            raise NetspecError(f"{path}: cannot read ({e.strerror})") from None
        if raw.size == 0 or raw.size % RECORD:
            raise NetspecError(f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records")
        parts.append(raw.reshape(-1, RECORD))
    records = np.concatenate(parts)
    labels = records[:, 0]
    if labels.max() > 9:
        raise NetspecError(f"{folder}: label {labels.max()} found; CIFAR-10 labels are 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def write_lmdb(images, labels, dest, overwrite=False):
    records = ((b"%05d" % i, array_to_datum(img, lab).SerializeToString())
               for i, (img, lab) in enumerate(zip(images, labels)))
    return write_lmdb_atomically(dest, records, overwrite=overwrite)


def convert_cifar(folder, out_dir, overwrite=False):
    """Write cifar10_train_lmdb and cifar10_test_lmdb into out_dir; return their record counts."""
    counts = []
    for names, lmdb_name in ((TRAIN_FILES, "cifar10_train_lmdb"), (TEST_FILES, "cifar10_test_lmdb")):
        images, labels = read_batches(folder, names)
        counts.append(write_lmdb(images, labels, os.path.join(out_dir, lmdb_name), overwrite))
    return counts


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: convert_cifar_data.py CIFAR_BIN_FOLDER OUTPUT_FOLDER")
    try:
        train, test = convert_cifar(sys.argv[1], sys.argv[2])
    except NetspecError as e:
        sys.exit(f"convert_cifar_data: error: {e}")
    print(f"wrote {train} training and {test} test records to {sys.argv[2]}")
