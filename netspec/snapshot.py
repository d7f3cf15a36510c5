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
import json
import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from . import hdf5
from .errors import NetspecError
from .proto import caffe_pb2
from .schema import read_binary_message, write_atomically
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
    """Write a caffe.SolverState, with netspec's resume payload; as HDF5 when `hdf5_format`
    (None: when the path ends in .h5)."""
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
    write_atomically(path, data)


def read_solverstate(path):
    """(caffe.SolverState, resume dict or None) from a .solverstate written by Caffe or netspec."""
    path = os.fspath(path)
    if path.endswith((".caffemodel", ".caffemodel.h5")):
        raise NetspecError(f"{path}: --snapshot takes a .solverstate file; a .caffemodel holds only weights "
                           "(use --weights to start from it)")
    if hdf5.is_hdf5(path):
        return _read_solverstate_hdf5(path)
    state = read_binary_message(path, caffe_pb2.SolverState())
    if isinstance(state.learned_net, bytes):
        # protobuf hands back bytes for a string field that is not valid UTF-8
        raise NetspecError(f"{path}: the weights file name it records is not valid UTF-8 (corrupted file?)")
    with open(path, "rb") as f:
        extra = ResumeState()
        try:
            extra.ParseFromString(f.read())
        except Exception:  # noqa: BLE001 - the SolverState parsed; a bad extra just means no exact resume
            return state, None
    if not extra.HasField("netspec_resume"):
        return state, None
    try:
        return state, json.loads(extra.netspec_resume.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return state, None


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
