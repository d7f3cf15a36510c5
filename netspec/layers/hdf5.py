"""HDF5Data and HDF5Output: rows of HDF5 datasets into a net, blobs out to an HDF5 file (Caffe's layers)."""
import os
import weakref

import numpy as np

from .. import glog, hdf5
from ..errors import NetspecError
from ..reading import refuse_special
from ..rng import c_rand
from .base import Layer, register, shape_str


def read_file_list(source, where):
    """[(path, line number)] from an HDF5Data source: whitespace-separated file names, as Caffe reads it.

    A name is taken as given (relative to the working directory, as in Caffe) or, when no such
    file exists there, relative to the list's own folder.
    """
    refuse_special(source, "an HDF5 file list")
    try:
        with open(source, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise NetspecError(f"{where}: cannot read the HDF5 file list '{source}' ({e.strerror})") from None
    folder = os.path.dirname(source)
    files = []
    for number, line in enumerate(lines, 1):
        for name in line.split():
            if not os.path.exists(name) and os.path.exists(os.path.join(folder, name)):
                name = os.path.join(folder, name)
            files.append((name, number))
    if not files:
        raise NetspecError(f"{where}: the HDF5 file list '{source}' names no files")
    return files


@register("HDF5Data")
class HDF5Data(Layer):
    """Rows of HDF5 datasets, one per top (the dataset named as the top), from the files a list names.

    Caffe's order: the files in list order, rows in file order; a batch runs on into the next
    file when one ends, and after the last file the first comes again. With `shuffle` the file
    order is shuffled at setup and at every wrap, a file's rows each time it is loaded and
    again each time its rows run out, all by std::random_shuffle over the process's rand()
    (rng.c_rand), as in Caffe. One file is in memory at a time, as float32.
    """
    num_bottoms = 0
    num_tops = (1, None)
    is_data = True

    def setup(self, bottom, top):
        p = self.layer_param.hdf5_data_param
        if self.layer_param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param (Caffe refuses it too)")
        if not p.source:
            raise self.error("hdf5_data_param has no source (a text file listing .h5 files)")
        if p.batch_size <= 0:
            raise self.error("hdf5_data_param batch_size must be positive")
        self.batch_size, self.shuffle = p.batch_size, p.shuffle
        self.tops = list(self.layer_param.top)
        listed = read_file_list(p.source, f"layer '{self.name}' ({self.type})")
        self.files = [path for path, _ in listed]
        self.row_shapes = self._check_files(listed, p.source)
        self.file_order = list(range(len(self.files)))
        if self.shuffle:
            c_rand.random_shuffle(self.file_order)
        self.current_file = 0
        self._load(self.file_order[0])
        self.current_row = 0

    def _check_files(self, listed, source):
        """Every listed file opens and has each top's dataset, all with one row count and the first
        file's row shapes: checked from the metadata up front, so no run fails hours in."""
        row_shapes = None
        for path, line in listed:
            where = f"{source}:{line}: HDF5 file '{path}'"
            if not os.path.exists(path):
                raise self.error(f"{source}:{line}: HDF5 file '{path}' does not exist (names in the list are "
                                 "relative to the working directory, or to the list's folder)")
            try:
                with hdf5.open_file(path) as f:
                    shapes = [tuple(hdf5.dataset(f, name, path).shape) for name in self.tops]
                    for name in self.tops:
                        hdf5.check_numeric(f[name], path)
            except NetspecError as e:
                raise self.error(str(e)) from None
            for name, shape in zip(self.tops, shapes):
                if not shape:
                    raise self.error(f"{path}: dataset '{name}' is a scalar; HDF5Data needs at least 1 axis "
                                     "(rows first)")
                if shape[0] != shapes[0][0]:
                    raise self.error(f"{path}: dataset '{name}' has {shape[0]} rows (shape {shape_str(shape)}) but "
                                     f"'{self.tops[0]}' has {shapes[0][0]} (shape {shape_str(shapes[0])}); "
                                     "every dataset needs one row per item")
            if shapes[0][0] == 0:
                raise self.error(f"{where} holds no rows")
            rows = [s[1:] for s in shapes]
            if row_shapes is None:
                row_shapes, first = rows, path
            for name, mine, theirs in zip(self.tops, rows, row_shapes):
                if mine != theirs:
                    raise self.error(f"{path}: dataset '{name}' has rows of shape {shape_str(mine)}, the first "
                                     f"file {first} has {shape_str(theirs)}")
        return row_shapes

    def _load(self, index):
        """Caffe's LoadHDF5FileData: the file's datasets in memory; rows in order, or shuffled."""
        path = self.files[index]
        try:
            with hdf5.open_file(path) as f:
                self.data = [hdf5.load_nd_dataset(f, name, path, min_dim=1) for name in self.tops]
        except NetspecError as e:
            raise self.error(str(e)) from None
        for name, array, shape in zip(self.tops, self.data, self.row_shapes):
            if array.shape[1:] != shape or len(array) != len(self.data[0]):
                raise self.error(f"{path}: dataset '{name}' changed since setup (shape {shape_str(array.shape)})")
        self.row_order = list(range(len(self.data[0])))
        if self.shuffle:
            c_rand.random_shuffle(self.row_order)
        self._row_index = np.array(self.row_order)

    def _rows_consumed(self, count):
        """Caffe's Next(), `count` times within the current file (count <= rows left)."""
        self.current_row += count
        if self.current_row < len(self.row_order):
            return
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    c_rand.random_shuffle(self.file_order)
            self._load(self.file_order[self.current_file])
        self.current_row = 0
        if self.shuffle:
            c_rand.random_shuffle(self.row_order)
            self._row_index = np.array(self.row_order)

    def reshape(self, bottom, top):
        for t, shape in zip(top, self.row_shapes):
            t.reshape((self.batch_size,) + shape)

    def forward(self, bottom, top):
        filled = 0
        while filled < self.batch_size:
            take = min(self.batch_size - filled, len(self.row_order) - self.current_row)
            rows = self._row_index[self.current_row:self.current_row + take]
            for t, array in zip(top, self.data):
                np.take(array, rows, axis=0, out=t.data[filled:filled + take])
            filled += take
            self._rows_consumed(take)

    def get_resume_state(self):
        return {"file_order": list(self.file_order), "current_file": self.current_file,
                "current_row": self.current_row, "c_rand": c_rand.get_state(),
                "row_order": list(self.row_order) if self.shuffle else None}

    def set_resume_state(self, state):
        file_order, current_file, current_row = state["file_order"], state["current_file"], state["current_row"]
        if sorted(file_order) != list(range(len(self.files))) or not 0 <= current_file < len(self.files):
            raise ValueError(f"layer '{self.name}': the saved file order does not fit the {len(self.files)} files")
        c_rand.set_state(state["c_rand"])
        self.file_order, self.current_file = list(file_order), current_file
        shuffle, self.shuffle = self.shuffle, False
        try:
            self._load(file_order[current_file])
        finally:
            self.shuffle = shuffle
        rows = len(self.row_order)
        if state["row_order"] is not None:
            if sorted(state["row_order"]) != list(range(rows)):
                raise ValueError(f"layer '{self.name}': the saved row order does not fit the file's {rows} rows")
            self.row_order = list(state["row_order"])
            self._row_index = np.array(self.row_order)
        if not 0 <= current_row < rows:
            raise ValueError(f"layer '{self.name}': saved row {current_row} is outside the file's {rows} rows")
        self.current_row = current_row


def _close_writer(writer):
    if writer is not None and writer.get("file") is not None:
        writer["file"].close()
        writer["file"] = None
        try:
            with open(writer["tmp"], "rb+") as f:
                os.fsync(f.fileno())
            os.replace(writer["tmp"], writer["path"])
        except OSError as e:
            glog.warning(f"{writer['path']}: cannot write ({e.strerror}); the rows are left in {writer['tmp']}",
                         "hdf5_output_layer.cpp:25")


@register("HDF5Output")
class HDF5Output(Layer):
    """Writes its two bottoms to `file_name` as datasets "data" and "label", shaped as Caffe's
    4-axis (num, channels, height, width) blobs.

    Caffe writes one forward's batch (a second forward fails there: the datasets exist); here
    every forward appends its rows. They go to a file beside file_name, which takes its name
    when the net is closed (Net.close, or the layer freed), so the final name never holds half
    a file.
    """
    num_bottoms = 2
    num_tops = 0

    def setup(self, bottom, top):
        self.path = self.layer_param.hdf5_output_param.file_name
        if not self.path:
            raise self.error("hdf5_output_param has no file_name")
        hdf5.h5py_module()
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise self.error(f"cannot write '{self.path}': folder {folder} does not exist")
        self._writer = {"path": self.path, "tmp": None, "file": None}
        self._finalizer = weakref.finalize(self, _close_writer, self._writer)

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom):
            if len(b.shape) > 4:
                raise self.error(f"bottom {self.bottom_name(i)} has shape {shape_str(b.shape)}; Caffe's HDF5 "
                                 "output takes blobs of at most 4 axes")
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error(f"data {shape_str(bottom[0].shape)} and label {shape_str(bottom[1].shape)} must have "
                             "the same number of items (first axis)")

    @staticmethod
    def _legacy(shape):
        """Caffe's num/channels/height/width view of a blob of at most 4 axes."""
        shape = tuple(shape) if shape else (1,)
        return shape + (1,) * (4 - len(shape))

    def forward(self, bottom, top):
        writer = self._writer
        if writer["file"] is None:
            h5py = hdf5.h5py_module()
            folder, base = os.path.split(os.path.abspath(self.path))
            writer["tmp"] = os.path.join(folder, f".{base}.{os.getpid()}.tmp")
            writer["file"] = h5py.File(writer["tmp"], "w")
        f = writer["file"]
        for name, blob in (("data", bottom[0]), ("label", bottom[1])):
            rows = blob.data.reshape(self._legacy(blob.shape)).astype("<f4")
            if name not in f:
                f.create_dataset(name, data=rows, maxshape=(None,) + rows.shape[1:], chunks=True)
                continue
            ds = f[name]
            if ds.shape[1:] != rows.shape[1:]:
                raise self.error(f"bottom '{name}' changed shape to {shape_str(blob.shape)}; the rows already "
                                 f"written have {shape_str(ds.shape[1:])}")
            ds.resize(len(ds) + len(rows), axis=0)
            ds[-len(rows):] = rows
        f.flush()
        glog.info(f"Successfully saved {len(bottom[0].data)} rows", "hdf5_output_layer.cpp:39")

    def close(self):
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
