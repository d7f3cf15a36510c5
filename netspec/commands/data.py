"""Datasets: `netspec convert_mnist`, `get_mnist`, `compute_image_mean` and SSD's `convert_annoset`, as Caffe's tools."""
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


@command("convert_annoset")
@click.argument("root_folder", type=click.Path(file_okay=False))
@click.argument("list_file", type=click.Path(dir_okay=False))
@click.argument("db_name", type=click.Path())
@click.option("--label_map_file", required=True, type=click.Path(dir_okay=False),
              help="LabelMap prototxt naming the classes (SSD's labelmap_voc.prototxt).")
@click.option("--anno_type", default="detection", show_default=True, help="detection only.")
@click.option("--label_type", default="xml", show_default=True, help="xml (VOC) only.")
@click.option("--encoded/--no-encoded", default=True, show_default=True,
              help="Store the image files' own bytes (the only way supported).")
@click.option("--encode_type", default="", help="Accepted for SSD's scripts; the files are stored as they are.")
@click.option("--shuffle", is_flag=True, help="Shuffle the list first.")
@click.option("--backend", default="lmdb", show_default=True, help="Database type (lmdb only).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output database.")
def convert_annoset_command(root_folder, list_file, db_name, label_map_file, anno_type, label_type, encoded,
                            encode_type, shuffle, backend, overwrite):
    """Images and VOC XML boxes to an LMDB of AnnotatedDatum records, as SSD's convert_annoset."""
    from ..datasets.annoset import convert_annoset
    for given, supported, flag in ((anno_type, "detection", "anno_type"), (label_type, "xml", "label_type"),
                                   (backend, "lmdb", "backend")):
        if given != supported:
            raise NetspecError(f"--{flag}={given} is not supported (use --{flag}={supported})")
    if not encoded:
        raise NetspecError("--no-encoded is not supported: records keep the image files' own bytes")
    count = convert_annoset(root_folder, list_file, db_name, label_map_file, shuffle=shuffle, overwrite=overwrite)
    click.echo(f"Processed {count} files.")
