"""`netspec convert` and `netspec upgrade`: rewriting nets and solvers between formats.

Formats go by file extension: .yaml/.yml is YAML; .prototxt/.pt/.txt is prototxt
(an input with any other extension is read as prototxt); .caffemodel/.binaryproto
is binary protobuf (upgrade only, for old trained weights).

Net or solver? Unless --net/--solver says which, a file whose name contains
"solver" is read as a SolverParameter and anything else as a NetParameter. If
that first reading stops at a top-level field the other message has and the
first lacks (e.g. `base_lr` in a file read as a net, `layer` in one read as a
solver), the file is read as the other kind instead. Otherwise the first
reading's error is the one reported.
"""
import os
import re

from . import schema
from .errors import NetspecError, ParseError
from .proto import caffe_pb2
from .upgrade import solver_upgrade_reasons, upgrade_net, upgrade_reasons, upgrade_solver

TEXT_SUFFIXES = (".prototxt", ".pt", ".txt")
YAML_SUFFIXES = schema.YAML_SUFFIXES
BINARY_SUFFIXES = (".caffemodel", ".binaryproto")
KINDS = {"net": caffe_pb2.NetParameter, "solver": caffe_pb2.SolverParameter}

_NO_FIELD = re.compile(r'Message type "caffe\.(NetParameter|SolverParameter)" has no field named "(\w+)"')


def path_has_suffix(path, suffixes):
    return os.fspath(path).lower().endswith(suffixes)


def guess_kind(path):
    """The first guess for a file's kind, from its name alone."""
    return "solver" if "solver" in os.path.basename(os.fspath(path)).lower() else "net"


def read_message(path, kind=None):
    """(kind, message) for a prototxt/YAML net or solver, parsed but not upgraded."""
    path = os.fspath(path)
    if kind is not None:
        return kind, schema.read_text_message(path, KINDS[kind]())
    first = guess_kind(path)
    other = "net" if first == "solver" else "solver"
    try:
        return first, schema.read_text_message(path, KINDS[first]())
    except ParseError as e:
        m = _NO_FIELD.search(str(e))
        # Only a top-level field that belongs to the other kind switches the reading.
        if not (m and m.group(1) == KINDS[first].DESCRIPTOR.name
                and m.group(2) in KINDS[other].DESCRIPTOR.fields_by_name):
            raise
    return other, schema.read_text_message(path, KINDS[other]())


def _check_text_output(dst):
    if not path_has_suffix(dst, TEXT_SUFFIXES + YAML_SUFFIXES):
        raise NetspecError(f"{dst}: cannot tell the output format from the extension; use "
                           ".prototxt/.pt/.txt for prototxt or .yaml/.yml for YAML")


def convert_file(src, dst, kind=None):
    """Rewrite net or solver `src` as `dst` (format by extension); returns the kind."""
    _check_text_output(dst)
    kind, message = read_message(src, kind)
    schema.write_text_message(dst, message)
    return kind


def upgrade_file(src, dst, kind=None):
    """Write the upgraded form of `src` to `dst` (Caffe's upgrade_net_proto_text/_binary).

    Returns (kind, reasons); reasons is empty when `src` was already current.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if path_has_suffix(src, BINARY_SUFFIXES):
        if kind == "solver":
            raise NetspecError(f"{src}: a binary file holds trained weights (a net), not a solver")
        kind, message = "net", schema.read_binary_message(src, caffe_pb2.NetParameter())
    else:
        kind, message = read_message(src, kind)
    if path_has_suffix(dst, BINARY_SUFFIXES):
        if kind != "net":
            raise NetspecError(f"{dst}: only nets can be written as binary files")
    else:
        _check_text_output(dst)
    if kind == "net":
        reasons = upgrade_reasons(message)
        upgrade_net(message, src)
    else:
        reasons = solver_upgrade_reasons(message)
        upgrade_solver(message, src)
    if path_has_suffix(dst, BINARY_SUFFIXES):
        schema.write_binary_message(dst, message)
    else:
        schema.write_text_message(dst, message)
    return kind, reasons
