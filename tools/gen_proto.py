"""Regenerate netspec/proto/caffe_pb2.py from protos/caffe.proto.

    python tools/gen_proto.py           # rewrite the generated module
    python tools/gen_proto.py --check   # exit 1 if the module is stale

--check compares descriptors (FileDescriptorProto), not generated text, so a
different protoc version producing differently formatted code is not a failure.
"""
import argparse
import importlib.util
import os
import struct
import sys
import tempfile

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(REPO, "protos")
PROTO = os.path.join(PROTO_DIR, "caffe.proto")
OUT_DIR = os.path.join(REPO, "netspec", "proto")
MODULE = os.path.join(OUT_DIR, "caffe_pb2.py")
FLOAT = descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT
DOUBLE = descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE


def run_protoc(*out_args):
    status = protoc.main(["protoc", "-I" + PROTO_DIR, *out_args, PROTO])
    if status != 0:
        sys.exit("gen_proto: protoc failed on %s (status %d)" % (PROTO, status))


def canonical(file_proto):
    """Drop what differs between equal schemas, in place, and return file_proto.

    protoc's descriptor sets carry json_name (the Python module's do not), and
    the upb backend re-prints float defaults (1e-08 comes back 9.99999994e-09);
    neither changes the schema, so compare float defaults by value.
    """
    def walk(messages):
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
                if field.HasField("default_value") and field.type in (FLOAT, DOUBLE):
                    value = float(field.default_value)
                    if field.type == FLOAT:
                        value = struct.unpack("<f", struct.pack("<f", value))[0]
                    field.default_value = repr(value)
            walk(message.nested_type)
    walk(file_proto.message_type)
    return file_proto


def descriptor_from_proto():
    """The FileDescriptorProto protoc builds from protos/caffe.proto."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "caffe.desc")
        run_protoc("--descriptor_set_out=" + out)
        files = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as handle:
            files.ParseFromString(handle.read())
    return files.file[0]


def descriptor_from_module():
    """The FileDescriptorProto embedded in the committed caffe_pb2.py."""
    # Loaded under a private name so an already-imported caffe_pb2 is not reused.
    spec = importlib.util.spec_from_file_location("_gen_proto_committed", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)


def check():
    expected = canonical(descriptor_from_proto())
    try:
        committed = canonical(descriptor_from_module())
    except Exception as exc:  # a broken module is just another kind of stale
        print("gen_proto: cannot load %s: %s" % (MODULE, exc))
        return 1
    if committed != expected:
        print("gen_proto: %s is stale; run: python tools/gen_proto.py" % MODULE)
        return 1
    print("gen_proto: %s matches %s" % (MODULE, PROTO))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit non-zero if the module is stale")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    run_protoc("--python_out=" + OUT_DIR)
    print("gen_proto: wrote %s" % MODULE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
