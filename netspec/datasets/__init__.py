"""Dataset tools: Caffe LMDBs, MNIST conversion and image means.

The click commands (convert_mnist_command, compute_image_mean_command,
get_mnist_command) raise NetspecError; the `netspec` CLI mounts them, and the
scripts in tools/ run them through netspec.cli.run: one line on stderr, exit 1.
"""
from .lmdb_io import (  # noqa: F401
    LMDBCursor, array_to_datum, datum_to_array, open_lmdb_readonly, parse_datum,
    write_lmdb_atomically)
from .mnist import convert_mnist, md5_check, prepare_mnist_lmdbs, read_idx  # noqa: F401
from .image_mean import compute_image_mean, load_mean_binaryproto  # noqa: F401
