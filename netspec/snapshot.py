"""Snapshot files: `<prefix>_iter_<N>.caffemodel` and `<prefix>_iter_<N>.solverstate`,
or with `snapshot_format: HDF5` `<prefix>_iter_<N>.caffemodel.h5` and `.solverstate.h5`.

Both are Caffe's formats, so Caffe reads netspec's snapshots and the other way
round. For exact resume netspec also needs the RNG state, the data cursors and
the smoothed-loss window. They ride along inside the .solverstate as one extra
length-delimited field (number 1000, JSON) that Caffe's parser skips as an
unknown field, so the file stays a valid caffe.SolverState; in a .solverstate.h5
they are one more string dataset (hdf5.RESUME_DATASET), which Caffe never opens.
A solver state is read as HDF5 whenever the file is one, whatever its name.
"""
import atexit
import fcntl
import json
import os
import time

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from . import hdf5
from .errors import NetspecError
from .proto import caffe_pb2
from . import glog
from .durable import remove_stale_temps, write_file
from .integrity import seal
from .schema import parse_binary, read_binary_payload
from .weights import array_to_blob, blob_to_array

RESUME_FIELD = 1000


def _resume_message_class():
    # A one-field message read from the same bytes: it sees field 1000 and ignores Caffe's fields.
    fdp = descriptor_pb2.FileDescriptorProto(name="netspec_resume.proto", package="netspec", syntax="proto2")
    msg = fdp.message_type.add(name="ResumeState")
    msg.field.add(name="netspec_resume", number=RESUME_FIELD,
                  type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("netspec.ResumeState"))


ResumeState = _resume_message_class()


def snapshot_paths(prefix, iteration, hdf5_format=False):
    base = f"{prefix}_iter_{iteration}"
    suffix = ".h5" if hdf5_format else ""
    return base + ".caffemodel" + suffix, base + ".solverstate" + suffix


def write_solverstate(path, state, resume=None, hdf5_format=None):
    """Write a caffe.SolverState, with netspec's resume payload (and, in the binary format, the
    integrity record); as HDF5 when `hdf5_format` (None: when the path ends in .h5)."""
    if hdf5_format is None:
        hdf5_format = os.fspath(path).endswith(".h5")
    if hdf5_format:
        hdf5.write_solverstate(path, state.iter, state.learned_net, state.current_step,
                               [blob_to_array(bp) for bp in state.history],
                               None if resume is None else json.dumps(resume))
        return
    data = state.SerializeToString()
    if resume is not None:
        data += ResumeState(netspec_resume=json.dumps(resume).encode("utf-8")).SerializeToString()
    write_file(path, seal(data))


def read_solverstate(path):
    """(caffe.SolverState, resume dict or None) from a .solverstate written by Caffe or netspec."""
    path = os.fspath(path)
    if path.endswith((".caffemodel", ".caffemodel.h5")):
        raise NetspecError(f"{path}: --snapshot takes a .solverstate file; a .caffemodel holds only weights "
                           "(use --weights to start from it)")
    if hdf5.is_hdf5(path):
        return _read_solverstate_hdf5(path)
    data = read_binary_payload(path, "a solver state (.solverstate)")
    state = parse_binary(path, data, caffe_pb2.SolverState())
    if isinstance(state.learned_net, bytes):
        # protobuf hands back bytes for a string field that is not valid UTF-8
        raise NetspecError(f"{path}: the weights file name it records is not valid UTF-8 (corrupted file?)")
    extra = ResumeState()
    try:
        extra.ParseFromString(data)
    except Exception:  # noqa: BLE001 - the SolverState parsed; a bad extra just means no exact resume
        return state, None
    if not extra.HasField("netspec_resume"):
        return state, None
    try:
        resume = json.loads(extra.netspec_resume.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return state, None
    return state, resume if isinstance(resume, dict) else None


def _read_solverstate_hdf5(path):
    iteration, learned_net, current_step, histories, resume = hdf5.read_solverstate(path)
    state = caffe_pb2.SolverState(iter=iteration, learned_net=learned_net, current_step=current_step)
    for array in histories:
        array_to_blob(array, state.history.add())
    try:
        return state, (json.loads(resume) if resume is not None else None)
    except json.JSONDecodeError:
        return state, None


def resolve_learned_net(state_path, learned_net):
    """The .caffemodel a .solverstate names; the one beside it when the recorded path is gone."""
    if learned_net and os.path.exists(learned_net):
        return learned_net, None
    beside = os.path.join(os.path.dirname(os.path.abspath(state_path)), os.path.basename(learned_net or ""))
    if learned_net and os.path.exists(beside):
        return beside, (f"{learned_net} (recorded in {state_path}) does not exist; "
                        f"using {beside} beside the solver state instead")
    if not learned_net:
        stem, h5 = os.fspath(state_path), ""
        if stem.endswith(".h5"):
            stem, h5 = stem[:-3], ".h5"
        guess = stem[: -len(".solverstate")] + ".caffemodel" + h5
        if os.path.exists(guess):
            return guess, f"{state_path} names no .caffemodel; using {guess}"
    raise NetspecError(f"{state_path}: the weights file '{learned_net}' it records does not exist, "
                       "nor does a file of that name beside it")


# ------------------------------------------------------------------ one training per prefix

_HELD_LOCKS = {}        # lock file's real path -> [fd, holders in this process]


def lock_prefix(prefix, source="solver"):
    """Hold an exclusive lock on `<prefix>.lock` for a training that snapshots to `prefix`.

    fcntl.flock: the OS drops it when the process ends, however it ends, so a
    killed run never leaves a stale lock. A second process on the same prefix is
    refused with one line naming the prefix and the holder's pid. Solvers in
    one process share the lock (theirs to coordinate). Then the stale temp files
    of earlier, killed snapshot writes beside the prefix are removed: holding the
    lock, none of them can still be in use. Returns the lock file's path, for
    release_prefix, which (like a normal exit) also removes the lock file; a killed
    run leaves it, unlocked and harmless.
    """
    path = os.path.realpath(f"{prefix}.lock")
    held = _HELD_LOCKS.get(path)
    if held is not None:
        held[1] += 1
        return path
    while True:
        fd = _open_lock_file(path, prefix, source)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise NetspecError(f"{source}: snapshot_prefix '{prefix}' is in use by another training (pid {holder}, "
                               f"holding {path}); two runs on one prefix would overwrite each other's snapshots: "
                               "give this run its own snapshot_prefix") from None
        except OSError as e:        # a filesystem without flock (some NFS): train, but say so
            glog.warning(f"cannot lock {path} ({e.strerror}): another training on the same snapshot_prefix "
                         "would not be noticed", "solver.cpp:60")
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)                # the holder removed the file as we locked it: lock the new one
    started = time.time()
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _HELD_LOCKS[path] = [fd, 1]
    folder, base = os.path.split(os.fspath(prefix))
    removed = remove_stale_temps(folder, f"{base}_iter_", older_than=started)
    if removed:
        glog.info(f"Removed {len(removed)} temp file(s) left beside '{prefix}' by interrupted snapshot writes",
                  "solver.cpp:60")
    return path


def _open_lock_file(path, prefix, source):
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise NetspecError(f"{source}: cannot write snapshots to prefix '{prefix}' ({e.strerror}); "
                           "make sure the directory exists and is writable") from None


def release_prefix(path, all_holders=False):
    """Give back a lock_prefix lock; the last holder in the process removes the file and unlocks.

    Removed while still locked: a run that opened the old file and locks it after us sees
    that the path no longer names it (lock_prefix's inode check) and locks afresh.
    """
    held = _HELD_LOCKS.get(path)
    if held is None:
        return
    held[1] = 0 if all_holders else held[1] - 1
    if held[1] == 0:
        del _HELD_LOCKS[path]
        try:
            if os.stat(path).st_ino == os.fstat(held[0]).st_ino:
                os.unlink(path)
        except OSError:
            pass
        os.close(held[0])          # closing the only descriptor releases the flock


@atexit.register
def _release_all():
    """A normal exit (sys.exit included) leaves no lock files; a kill leaves them unlocked."""
    for path in list(_HELD_LOCKS):
        release_prefix(path, all_holders=True)


# ------------------------------------------------------------------ the resume record's types

def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_rng_state(state, where):
    """Raise ValueError unless `state` is a numpy bit generator state netspec could have saved."""
    import numpy as np
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ValueError(f"{where}: not a PCG64 random state")
    try:
        np.random.PCG64().state = state           # numpy checks every field; a scratch generator takes it
    except (TypeError, ValueError, OverflowError, KeyError) as e:
        raise ValueError(f"{where}: {e}") from None


def check_layer_state(state, where):
    if not isinstance(state, dict):
        raise ValueError(f"{where}: not a mapping")
    if "position" in state and not _integer(state["position"]):
        raise ValueError(f"{where}: position {state['position']!r} is not an integer")
    if "rng" in state:
        check_rng_state(state["rng"], f"{where} rng")


def check_resume_record(resume):
    """Check the types of a whole resume record before any of it is used; ValueError names the first bad field.

    (The record is netspec's own JSON, but a damaged or hand-edited file can hold anything.)
    """
    check_rng_state(resume.get("rng"), "rng")
    layers = resume.get("layers", {})
    if not isinstance(layers, dict):
        raise ValueError("layers: not a mapping")
    for key, value in layers.items():
        check_layer_state(value, f"layer {key}")
    losses = resume.get("losses", [])
    if not isinstance(losses, list) or not all(_number(v) for v in losses):
        raise ValueError(f"losses: {str(losses)[:60]} is not a list of numbers")
    if not _number(resume.get("smoothed_loss", 0.0)):
        raise ValueError(f"smoothed_loss: {resume.get('smoothed_loss')!r} is not a number")
    if not _integer(resume.get("loss_index_base", 0)):
        raise ValueError(f"loss_index_base: {resume.get('loss_index_base')!r} is not an integer")
    ranks = resume.get("mpi_ranks")
    if ranks is not None:
        if not isinstance(ranks, list):
            raise ValueError("mpi_ranks: not a list")
        for r, rank in enumerate(ranks):
            if not isinstance(rank, dict):
                raise ValueError(f"mpi_ranks[{r}]: not a mapping")
            check_rng_state(rank.get("rng"), f"mpi_ranks[{r}] rng")
            for key, value in (rank.get("layers") or {}).items():
                check_layer_state(value, f"mpi_ranks[{r}] layer {key}")
