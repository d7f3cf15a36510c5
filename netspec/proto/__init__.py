"""Caffe's protobuf schema as Python classes (`from netspec.proto import caffe_pb2`)."""
