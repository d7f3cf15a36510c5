"""Make the MNIST pair LMDBs the siamese example trains on (Caffe's convert_mnist_siamese_data).

    python models/mnist_siamese/create_mnist_siamese.py data/mnist data/mnist

Each record stacks two randomly drawn MNIST images as the two channels of one 2x28x28 Datum,
with label 1 when they show the same digit and 0 otherwise; as many pairs as images. Caffe
drew the pairs with its own RNG and wrote LevelDB; here the pairs come from a seeded numpy
generator and the output is LMDB (mnist_siamese_train_lmdb, mnist_siamese_test_lmdb).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically  # noqa: E402
from netspec.datasets.mnist import find_mnist_file, read_idx  # noqa: E402
from netspec.errors import NetspecError  # noqa: E402

SPLITS = {"train": "mnist_siamese_train_lmdb", "t10k": "mnist_siamese_test_lmdb"}


def make_pairs(images, labels, count=None, seed=0):
    """(pairs count x 2 x H x W uint8, same-digit labels) from images N x H x W and labels N."""
    rng = np.random.default_rng(seed)
    count = len(images) if count is None else count
    first = rng.integers(0, len(images), count)
    second = rng.integers(0, len(images), count)
    pairs = np.stack([images[first], images[second]], axis=1)
    return pairs, (labels[first] == labels[second]).astype(np.uint8)


def write_pairs(pairs, same, dest, overwrite=False):
    records = ((b"%08d" % i, array_to_datum(p, s).SerializeToString()) for i, (p, s) in enumerate(zip(pairs, same)))
    return write_lmdb_atomically(dest, records, overwrite=overwrite)


def create_siamese_lmdbs(mnist_dir, out_dir, seed=0, overwrite=False):
    written = {}
    for prefix, lmdb_name in SPLITS.items():
        found = [find_mnist_file(mnist_dir, f"{prefix}-{kind}-idx{n}-ubyte") for kind, n in (("images", 3), ("labels", 1))]
        if None in found:
            raise NetspecError(f"{mnist_dir}: the MNIST {prefix} files are missing (netspec get_mnist fetches them)")
        images, labels = read_idx(found[0], "images"), read_idx(found[1], "labels")
        pairs, same = make_pairs(images, labels, seed=seed)
        dest = os.path.join(out_dir, lmdb_name)
        written[dest] = write_pairs(pairs, same, dest, overwrite)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: create_mnist_siamese.py MNIST_FOLDER OUTPUT_FOLDER")
    try:
        for path, n in create_siamese_lmdbs(sys.argv[1], sys.argv[2]).items():
            print(f"wrote {n} pairs to {path}")
    except NetspecError as e:
        sys.exit(f"create_mnist_siamese: error: {e}")
