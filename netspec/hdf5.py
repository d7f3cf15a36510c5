"""Caffe's HDF5 files through h5py: datasets as Caffe's util/hdf5.cpp reads and writes them.

Layouts (group and dataset paths inside the file):

    .caffemodel.h5     data/<layer>/<i>   param i of each layer (float32, the blob's shape);
                       diff/<layer>/<i>   the same for the gradients, with snapshot_diff
                       (one group per layer, parameters or not; shared params saved by their owner)
    .solverstate.h5    iter, current_step (int32, shape (1,)), learned_net (a scalar
                       NUL-terminated string), history/<i> (float32 blobs)
    HDF5Data input     one dataset per top, named as the top, first axis = rows

Caffe reads float or integer datasets and converts them to float; so does netspec.

HDF5 checksums its metadata at best, never the values, so a flipped byte in a weight reads
back as another weight. The files netspec writes carry one more root attribute,
`netspec_sha256` (see `digest`), over every dataset's name, type, shape and bytes; Caffe's
reader never looks at attributes. netspec checks it whenever it is there, and a file
without it (written by Caffe) is read as before.
"""
import hashlib
import io
import os

import numpy as np

from . import glog
from .errors import NetspecError
from . import durable
from .reading import open_regular

SIGNATURE = b"\x89HDF\r\n\x1a\n"


def h5py_module():
    """h5py, imported on first use (it costs import time, and only HDF5 work needs it)."""
    try:
        import h5py
    except ImportError:
        raise NetspecError("reading or writing HDF5 files needs the h5py package: pip install h5py "
                           "(a dependency of netspec; `pip install -e .` from the checkout installs it)") from None
    return h5py


def has_signature(data):
    """Whether bytes start with HDF5's signature (at 0, or after a user block of 512 * 2^k bytes)."""
    offset = 0
    while offset + len(SIGNATURE) <= len(data):
        if data[offset:offset + len(SIGNATURE)] == SIGNATURE:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def is_hdf5(path):
    """Whether the file starts with HDF5's signature (at 0, or after a user block of 512 * 2^k bytes)."""
    try:
        with open_regular(path) as f:       # a FIFO or device is no HDF5 file (and must not block here)
            size = os.fstat(f.fileno()).st_size
            offset = 0
            while offset + len(SIGNATURE) <= size:
                f.seek(offset)
                if f.read(len(SIGNATURE)) == SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except (OSError, NetspecError):
        return False
    return False


DIGEST_ATTRIBUTE = "netspec_sha256"
_DIGEST_PREFIX = "netspec-sha256:"


def digest(f):
    """sha256 over every dataset in the file, in name order: its path, dtype, shape and bytes, and
    the number of datasets, so that a dataset or group removed, added or changed shows."""
    h5py = h5py_module()
    found = []
    f.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) else None)
    h = hashlib.sha256(b"%d\0" % len(found))
    for name in sorted(found):
        ds = f[name]
        value = ds[()]
        raw = value if isinstance(value, bytes) else np.ascontiguousarray(value).tobytes()
        h.update(f"{name}\0{ds.dtype.str}\0{tuple(ds.shape)}\0{len(raw)}\0".encode("utf-8"))
        h.update(raw)
    return _DIGEST_PREFIX + h.hexdigest()


def _check_digest(f, path):
    """NetspecError unless the file's contents still match the digest netspec wrote (if it wrote one)."""
    recorded = f.attrs.get(DIGEST_ATTRIBUTE)
    if recorded is None:
        return                      # not written by netspec (Caffe's files have no such attribute)
    if isinstance(recorded, bytes):
        recorded = recorded.decode("ascii", "replace")
    try:
        actual = digest(f)
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise NetspecError(f"{path}: the HDF5 file is damaged: a dataset cannot be read ({e})") from None
    if actual != recorded:
        raise NetspecError(f"{path}: the file is corrupted: its datasets do not match the sha256 netspec "
                           "recorded when writing it (a damaged copy, or edited since?)")


def open_file(path, what="HDF5 file"):
    """An h5py.File opened read-only (its integrity record checked), or a one-line NetspecError."""
    h5py = h5py_module()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise NetspecError(f"{path}: no such {what}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        if not is_hdf5(path):
            reason = "not an HDF5 file"
        elif "truncated file" in str(e):
            reason = f"the HDF5 file is truncated (an interrupted copy?): {e}"
        else:
            reason = f"unreadable HDF5 file ({e})"
        raise NetspecError(f"{path}: {reason}") from None
    try:
        _check_digest(f, path)
    except BaseException:
        f.close()
        raise
    return f


def dataset(group, name, where):
    """group[name] when it is a dataset; else an error listing what the file holds."""
    h5py = h5py_module()
    item = group.get(name)
    if isinstance(item, h5py.Dataset):
        return item
    held = sorted(k for k, v in group.items() if isinstance(v, h5py.Dataset))
    have = f"it holds {', '.join(repr(k) for k in held)}" if held else "it holds no datasets"
    kind = "is a group, not a dataset" if item is not None else "does not exist"
    raise NetspecError(f"{where}: dataset '{name}' {kind} ({have})")


def check_numeric(ds, where):
    """Caffe's hdf5_load_nd_dataset accepts the float and integer classes only."""
    if ds.dtype.kind not in "fiu" or ds.dtype.names:
        raise NetspecError(f"{where}: dataset '{ds.name.lstrip('/')}' holds {ds.dtype} values; "
                           "Caffe reads float or integer datasets only")


def load_nd_dataset(group, name, where, min_dim=0, max_dim=32):
    """A dataset as float32, with Caffe's checks: it exists, holds numbers, has min_dim..max_dim axes."""
    ds = dataset(group, name, where)
    check_numeric(ds, where)
    if not min_dim <= ds.ndim <= max_dim:
        span = f"at least {min_dim}" if max_dim >= 32 else f"{min_dim} to {max_dim}"
        raise NetspecError(f"{where}: dataset '{name}' has {ds.ndim} axes (shape {tuple(ds.shape)}); "
                           f"it needs {span}")
    out = np.empty(ds.shape, np.float32)
    if out.size:
        ds.read_direct(out)          # HDF5 converts to float, as Caffe's H5LTread_dataset_float
    return out


def save_nd_dataset(group, name, array):
    """A float32 dataset of the array's shape (Caffe's H5LTmake_dataset_float: contiguous layout)."""
    group.create_dataset(name, data=np.ascontiguousarray(array, "<f4"))


def save_int(group, name, value):
    """Caffe's hdf5_save_int: an int32 dataset of shape (1,)."""
    group.create_dataset(name, data=np.array([value], "<i4"))


def load_int(group, name, where):
    ds = dataset(group, name, where)
    if ds.dtype.kind not in "iu" or ds.size != 1:
        raise NetspecError(f"{where}: dataset '{name}' must hold one integer, it holds {ds.dtype} of shape "
                           f"{tuple(ds.shape)}")
    return int(np.asarray(ds[()]).reshape(-1)[0])


def save_string(group, name, text):
    """Caffe's hdf5_save_string (H5LTmake_dataset_string): a scalar fixed-size C string, NUL included."""
    h5py = h5py_module()
    raw = os.fsencode(text)
    string_type = h5py.h5t.C_S1.copy()
    string_type.set_size(len(raw) + 1)
    string_type.set_strpad(h5py.h5t.STR_NULLTERM)
    ds = h5py.h5d.create(group.id, name.encode(), string_type, h5py.h5s.create(h5py.h5s.SCALAR))
    ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, f"S{len(raw) + 1}"), mtype=string_type)


def load_string(group, name, where):
    ds = dataset(group, name, where)
    value = ds[()]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes):
        raise NetspecError(f"{where}: dataset '{name}' must hold a string, it holds {ds.dtype} of shape "
                           f"{tuple(ds.shape)}")
    return os.fsdecode(value.split(b"\0", 1)[0])


def write_file(path, fill):
    """Build an HDF5 file in memory with fill(h5py.File), then write it beside `path` and rename."""
    h5py = h5py_module()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
        f.attrs[DIGEST_ATTRIBUTE] = digest(f)
    durable.write_file(path, buffer.getvalue())


def layer_groups(group, prefix=""):
    """{layer name: group} under data/ or diff/: groups that hold datasets, nested names joined by '/'
    (a layer named 'inception_3a/1x1' is the group inception_3a/1x1, as HDF5 reads the name)."""
    h5py = h5py_module()
    found = {}
    for key, item in group.items():
        if not isinstance(item, h5py.Group):
            continue
        name = prefix + key
        if not item.keys() or any(isinstance(v, h5py.Dataset) for v in item.values()):
            found[name] = item
        found.update(layer_groups(item, name + "/"))
    return found


# ---- weights: Net::ToHDF5 and Net::CopyTrainedLayersFromHDF5 --------------------------------

def _owns(net, layer_name, layer_param, j):
    """Whether param j of the layer is its own (not shared from an earlier layer's ParamSpec name)."""
    spec_name = layer_param.param[j].name if j < len(layer_param.param) else ""
    owner = net._param_owner.get(spec_name) if spec_name else None
    return owner is None or owner[:2] == (layer_name, j)


def save_net(net, path, write_diff=False):
    """Caffe's Net::ToHDF5: data/<layer>/<i> for every param a layer owns; diff/<layer>/<i> for all."""
    def fill(f):
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for record in net.records:
            name, layer = record.name, record.layer
            layer_data = data.require_group(name)
            layer_diff = diff.require_group(name) if write_diff else None
            for j, blob in enumerate(layer.blobs):
                if _owns(net, name, layer.layer_param, j):
                    save_nd_dataset(layer_data, str(j), blob.data)
                if write_diff:
                    save_nd_dataset(layer_diff, str(j), blob.diff)
    write_file(path, fill)


def copy_trained_layers(net, path, require_all=False):
    """Caffe's CopyTrainedLayersFromHDF5: by layer name; unknown layers are skipped, shapes must match.

    As for binary weights (weights.copy_layer_blobs): with require_all (resume, --snapshot) every
    net layer with parameters of its own must find them in the file, else NetspecError naming
    those missing; otherwise each such layer is logged as keeping its initialisation.
    """
    path = os.fspath(path)
    filled = set()
    with open_file(path, "weights file") as f:
        if "data" not in f:
            raise NetspecError(f"{path}: an HDF5 file without the 'data' group of a Caffe .caffemodel.h5 "
                               "(is it an HDF5Data input file, or a .solverstate.h5?)")
        for name, group in sorted(layer_groups(f["data"]).items()):
            layer = net.layer_dict.get(name)
            if layer is None:
                glog.info(f"Ignoring source layer {name}", "net.cpp:800")
                continue
            if len(group) > len(layer.blobs):
                raise NetspecError(f"{path}: layer '{name}' has {len(group)} parameter blobs, the net's layer "
                                   f"has {len(layer.blobs)}")
            for j, blob in enumerate(layer.blobs):
                if str(j) not in group:
                    if _owns(net, name, layer.layer_param, j):
                        raise NetspecError(f"{path}: layer '{name}' has no parameter blob {j} (data/{name}/{j}); "
                                           f"the net's layer has {len(layer.blobs)}")
                    continue         # shared in this net: its owner's copy is loaded
                ds = dataset(group, str(j), path)
                if tuple(ds.shape) != blob.shape:
                    raise NetspecError(f"{path}: cannot copy param {j} of layer '{name}': shape mismatch, "
                                       f"weights file has {tuple(ds.shape)}, net has {blob.shape} "
                                       "(rename the layer to learn it from scratch)")
                blob.data[...] = load_nd_dataset(group, str(j), path)
            filled.add(name)
    missing = []
    for record in net.records:
        layer = record.layer
        if record.name not in filled and any(_owns(net, record.name, layer.layer_param, j)
                                             for j in range(len(layer.blobs))):
            missing.append(record.name)
    if missing and require_all:
        shown = ", ".join(f"'{n}'" for n in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise NetspecError(f"{path}: holds no weights for layer(s) {shown} of the net, so resuming would leave "
                           "them at their random initialisation (a truncated or foreign .caffemodel.h5?)")
    for name in missing:
        glog.info(f"Layer {name} got no weights from {path}: it keeps its initialisation", "net.cpp:1079")


# ---- solver state: SGDSolver::SnapshotSolverStateToHDF5 / RestoreSolverStateFromHDF5 ---------

RESUME_DATASET = "netspec_resume"     # netspec's exact-resume record; Caffe reads only its own names


def write_solverstate(path, iteration, learned_net, current_step, histories, resume_json=None):
    def fill(f):
        save_int(f, "iter", iteration)
        save_string(f, "learned_net", learned_net)
        save_int(f, "current_step", current_step)
        history = f.create_group("history")
        for i, array in enumerate(histories):
            save_nd_dataset(history, str(i), array)
        if resume_json is not None:
            save_string(f, RESUME_DATASET, resume_json)
    write_file(path, fill)


def read_solverstate(path):
    """(iter, learned_net or '', current_step, [history arrays], resume JSON text or None)."""
    path = os.fspath(path)
    with open_file(path, "solver state") as f:
        if "history" not in f or "iter" not in f:
            raise NetspecError(f"{path}: an HDF5 file without the iter and history of a Caffe .solverstate.h5 "
                               "(is it a .caffemodel.h5? those go to --weights)")
        iteration = load_int(f, "iter", path)
        current_step = load_int(f, "current_step", path) if "current_step" in f else 0
        learned_net = load_string(f, "learned_net", path) if "learned_net" in f else ""
        history = f["history"]
        names = sorted(history, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
        expected = [str(i) for i in range(len(names))]
        if names != expected:
            raise NetspecError(f"{path}: history/ must hold datasets 0..{len(names) - 1}, it holds "
                               f"{', '.join(names)}")
        arrays = [load_nd_dataset(history, k, path) for k in names]
        resume = load_string(f, RESUME_DATASET, path) if RESUME_DATASET in f else None
    return iteration, learned_net, current_step, arrays, resume
