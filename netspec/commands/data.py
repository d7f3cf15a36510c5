"""Datasets: `netspec convert_mnist`, `get_mnist`, `compute_image_mean`, `convert_imageset`,
`extract_features` and SSD's `convert_annoset`, as Caffe's tools."""
import os

import click

from ..datasets.db import BACKENDS
from ..datasets.image_mean import compute_image_mean
from ..datasets.imageset import convert_imageset
from ..datasets.mnist import MNIST_FILES, convert_mnist, download_mnist, md5_check, prepare_mnist_lmdbs
from .base import command


@command("convert_mnist")
@click.argument("input_image_file", type=click.Path())
@click.argument("input_label_file", type=click.Path())
@click.argument("output_db_file", type=click.Path())
@click.option("--backend", type=click.Choice(BACKENDS), default="lmdb", show_default=True,
              help="Database type.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output database.")
def convert_mnist_command(input_image_file, input_label_file, output_db_file, backend, overwrite):
    """Convert MNIST IDX files (raw or .gz) to a Caffe LMDB or LevelDB, as convert_mnist_data does."""
    convert_mnist(input_image_file, input_label_file, output_db_file, overwrite=overwrite, backend=backend)


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
@click.option("--backend", type=click.Choice(BACKENDS), default="lmdb", show_default=True,
              help="Database type.")
def compute_image_mean_command(input_db, output_file, backend):
    """Per-pixel mean of a database's images, written as a .binaryproto (as Caffe's tool does)."""
    compute_image_mean(input_db, output_file, backend)


@command("convert_imageset")
@click.argument("root_folder")
@click.argument("listfile", type=click.Path(dir_okay=False))
@click.argument("db_name", type=click.Path())
@click.option("--gray", is_flag=True, help="Treat images as grey ones.")
@click.option("--shuffle", is_flag=True, help="Randomly shuffle the order of images and their labels.")
@click.option("--seed", type=click.IntRange(0, 2 ** 32 - 1), default=None,
              help="Seed of the shuffle (netspec's addition; Caffe seeds it from /dev/urandom each run).")
@click.option("--backend", type=click.Choice(BACKENDS), default="lmdb", show_default=True,
              help="The backend for storing the result.")
@click.option("--resize_width", type=int, default=0, help="Width images are resized to.")
@click.option("--resize_height", type=int, default=0, help="Height images are resized to.")
@click.option("--check_size", is_flag=True, help="Check that all the datums have the same size.")
@click.option("--encoded", is_flag=True, help="Store the encoded image in the datum.")
@click.option("--encode_type", default="", help="Encoding of the stored images ('png', 'jpg', ...).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output database.")
def convert_imageset_command(root_folder, listfile, db_name, gray, shuffle, seed, backend, resize_width,
                             resize_height, check_size, encoded, encode_type, overwrite):
    """Convert a set of images to a Caffe LMDB/LevelDB (as Caffe's convert_imageset).

    ROOT_FOLDER is prefixed to each name in LISTFILE as it stands (give it a trailing /);
    LISTFILE lines are `subfolder1/file1.JPEG 7`.
    """
    convert_imageset(root_folder, listfile, db_name, gray=gray, shuffle=shuffle, backend=backend,
                     resize_width=resize_width, resize_height=resize_height, check_size=check_size,
                     encoded=encoded, encode_type=encode_type, seed=seed, overwrite=overwrite)


@command("extract_features")
@click.argument("pretrained_weights")
@click.argument("net", type=click.Path(dir_okay=False))
@click.argument("blob_names")
@click.argument("db_names")
@click.argument("num_mini_batches", type=click.IntRange(min=0))
@click.argument("db_type", required=False, type=click.Choice(BACKENDS))
@click.argument("device", required=False, nargs=-1)
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Database type (also accepted as the positional DB_TYPE, as Caffe takes it).")
def extract_features_command(pretrained_weights, net, blob_names, db_names, num_mini_batches, db_type,
                             device, backend):
    """Save the named blobs of NET, for NUM_MINI_BATCHES forwards, as float Datums (Caffe's extract_features).

    BLOB_NAMES and DB_NAMES are comma-separated, one database per blob; an optional trailing CPU
    is accepted (GPU is refused: netspec runs on the CPU).
    """
    if device and device[0].upper() == "GPU":
        raise click.UsageError("GPU: netspec runs on the CPU only; drop the GPU argument")
    if db_type and backend and db_type != backend:
        raise click.UsageError(f"DB_TYPE {db_type} and --backend={backend} disagree")
    from ..features import extract_features
    extract_features(pretrained_weights, net, [b for b in blob_names.split(",") if b],
                     [d for d in db_names.split(",") if d], num_mini_batches, backend or db_type or "lmdb")


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
