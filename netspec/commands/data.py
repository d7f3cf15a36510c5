"""Datasets: `netspec convert_mnist`, `get_mnist` and `compute_image_mean`, as Caffe's tools."""
import os

import click

from ..datasets.image_mean import compute_image_mean
from ..datasets.mnist import MNIST_FILES, convert_mnist, download_mnist, md5_check, prepare_mnist_lmdbs
from ..errors import NetspecError
from .base import command


@command("convert_mnist")
@click.argument("input_image_file", type=click.Path())
@click.argument("input_label_file", type=click.Path())
@click.argument("output_db_file", type=click.Path())
@click.option("--backend", default="lmdb", show_default=True, help="Database type (lmdb only).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output database.")
def convert_mnist_command(input_image_file, input_label_file, output_db_file, backend, overwrite):
    """Convert MNIST IDX files (raw or .gz) to a Caffe LMDB, as convert_mnist_data does."""
    if backend != "lmdb":
        raise NetspecError(f"--backend={backend} is not supported: netspec reads and writes LMDB only "
                           "(use --backend=lmdb)")
    convert_mnist(input_image_file, input_label_file, output_db_file, overwrite=overwrite)


@command("get_mnist")
@click.option("--dir", "folder", default=os.path.join("data", "mnist"), show_default=True,
              type=click.Path(file_okay=False), help="Folder holding the four MNIST files.")
@click.option("--download", "download_dir", type=click.Path(file_okay=False), default=None,
              help="Download the four .gz files into this folder first, then check them.")
@click.option("--lmdb", "make_lmdbs", is_flag=True,
              help="Also build mnist_train_lmdb and mnist_test_lmdb in the folder when missing.")
def get_mnist_command(folder, download_dir, make_lmdbs):
    """Check the MNIST files' md5 (of the uncompressed contents); optionally download them."""
    if download_dir:
        download_mnist(download_dir)
        folder = download_dir
    found = md5_check(folder)
    for name, path in found.items():
        click.echo(f"{path}: OK ({MNIST_FILES[name][1]} records, md5 {MNIST_FILES[name][0]})")
    if make_lmdbs:
        for kind, path in prepare_mnist_lmdbs(folder, folder).items():
            click.echo(f"{path}: {kind} LMDB ready")


@command("compute_image_mean")
@click.argument("input_db", type=click.Path())
@click.argument("output_file", type=click.Path(dir_okay=False), required=False)
@click.option("--backend", default="lmdb", show_default=True, help="Database type (lmdb only).")
def compute_image_mean_command(input_db, output_file, backend):
    """Per-pixel mean of an LMDB's images, written as a .binaryproto (as Caffe's tool does)."""
    if backend != "lmdb":
        raise NetspecError(f"--backend={backend} is not supported: netspec reads LMDB only "
                           "(use --backend=lmdb)")
    compute_image_mean(input_db, output_file)
