"""netspec/proto/caffe_pb2.py must be exactly what protos/caffe.proto compiles to."""
import importlib.util
import os

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor as FD

from netspec.proto import caffe_pb2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(REPO, "protos")

try:
    from grpc_tools import protoc
except ImportError:
    protoc = None


def load_gen_proto():
    """tools/gen_proto.py, for its canonical() (tools/ is not a package)."""
    path = os.path.join(REPO, "tools", "gen_proto.py")
    spec = importlib.util.spec_from_file_location("gen_proto", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(protoc is None, reason="grpc_tools (grpcio-tools) is not installed, cannot run protoc")
def test_generated_module_matches_proto(tmp_path):
    out = tmp_path / "caffe.desc"
    status = protoc.main(["protoc", "-I" + PROTO_DIR, "--descriptor_set_out=%s" % out,
                          os.path.join(PROTO_DIR, "caffe.proto")])
    assert status == 0, "protoc failed on protos/caffe.proto"
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(caffe_pb2.DESCRIPTOR.serialized_pb)
    canonical = load_gen_proto().canonical
    assert len(compiled.message_type) > 60
    assert canonical(compiled) == canonical(committed), "caffe_pb2.py is stale: run tools/gen_proto.py"


# A few of upstream Caffe's wire facts, pinned so a "fix" copied from a fork's
# schema (several reuse these numbers for other fields) is caught here.
@pytest.mark.parametrize("message, field, number, ftype", [
    ("NetParameter", "layer", 100, FD.TYPE_MESSAGE),
    ("NetParameter", "layers", 2, FD.TYPE_MESSAGE),
    ("BlobShape", "dim", 1, FD.TYPE_INT64),
    ("BlobProto", "num", 1, FD.TYPE_INT32),
    ("Datum", "label", 5, FD.TYPE_INT32),
    ("SolverParameter", "layer_wise_reduce", 41, FD.TYPE_BOOL),
    ("SolverParameter", "weights", 42, FD.TYPE_STRING),
    ("SolverParameter", "test_iter", 3, FD.TYPE_INT32),
    ("LayerParameter", "swish_param", 147, FD.TYPE_MESSAGE),
    ("LayerParameter", "clip_param", 148, FD.TYPE_MESSAGE),
    ("ConvolutionParameter", "num_output", 1, FD.TYPE_UINT32),
    ("PoolingParameter", "round_mode", 13, FD.TYPE_ENUM),
])
def test_upstream_field_numbers(message, field, number, ftype):
    desc = caffe_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name[field]
    assert (desc.number, desc.type) == (number, ftype)
