"""weight_file: a .caffemodel's floats read straight into the net's arrays (Net.copy_from).

The reference throughout is the whole-file protobuf parse copy_from used before (and still
uses for the files the walk leaves to it): every net must get the same bytes either way,
and every refused file the same error.
"""
import os
import textwrap
import tracemalloc

import numpy as np
import pytest

import netspec as caffe
from netspec import weight_file
from netspec.errors import NetspecError
from netspec.integrity import seal
from netspec.proto import caffe_pb2
from netspec.schema import parse_prototxt, read_binary_message
from netspec.upgrade import upgrade_net
from netspec.weights import copy_layer_blobs, varint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = textwrap.dedent("""
    name: "small"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
    layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 5 } }
    layer { name: "ip2" type: "InnerProduct" bottom: "ip" top: "ip2"
            inner_product_param { num_output: 3 bias_term: false } }
""")


def small_net():
    return caffe.Net(parse_prototxt(SMALL, caffe_pb2.NetParameter()), caffe.TEST)


def randomised(net, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for blob in layer.blobs:
            blob.data[...] = rng.standard_normal(blob.shape)
    return net


def params(net):
    return {name: [b.data.copy() for b in layer.blobs] for name, layer in net.layer_dict.items() if layer.blobs}


def old_path(net, path):
    """copy_from as it read every file before weight_file."""
    trained = upgrade_net(read_binary_message(path, caffe_pb2.NetParameter()), path)
    copy_layer_blobs(net, trained, path)
    return net


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


@pytest.mark.parametrize("model", ["models/lenet/lenet.prototxt",
                                   "models/cifar10/cifar10_quick.prototxt",
                                   "models/mnist_siamese/mnist_siamese.prototxt",
                                   "models/squeezenet/squeezenet_v1.1_deploy.prototxt",
                                   "models/mobilenet/mobilenet_deploy.prototxt", None])
def test_stored_weights_equal_the_whole_file_parse(tmp_path, model):
    def build():
        if model is None:
            return small_net()
        path = os.path.join(REPO, model)
        if not os.path.exists(path):
            pytest.skip(f"{model} is not in the repository")
        return caffe.Net(path, caffe.TEST)

    path = str(tmp_path / "w.caffemodel")
    randomised(build()).save(path)
    with weight_file.open_weights(path) as stored:     # the walk reads this file (not the fallback)
        assert stored.layer
    new = build()
    new.copy_from(path)
    assert_same_params(params(new), params(old_path(build(), path)))
    assert any(np.any(b) for blobs in params(new).values() for b in blobs)


def test_float64_nets_get_the_float32_values_converted(tmp_path):
    path = str(tmp_path / "w.caffemodel")
    source = randomised(small_net())
    source.save(path)
    with caffe.blob.precision(np.float64):
        net = small_net()
    net.copy_from(path)
    for name, blobs in params(net).items():
        for got, want in zip(blobs, params(source)[name]):
            assert got.dtype == np.float64 and np.array_equal(got, want.astype(np.float64))


def write_layers(path, layers, legacy=False, sealed=False):
    """A NetParameter of InnerProduct layers: (name, [blob arrays]); V1 `layers` when legacy."""
    param = caffe_pb2.NetParameter(name="handmade")
    for name, arrays in layers:
        if legacy:
            lp = param.layers.add(name=name, type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
        else:
            lp = param.layer.add(name=name, type="InnerProduct")
        for a in arrays:
            bp = lp.blobs.add()
            if legacy:                  # the old num/channels/height/width form, no `shape`
                bp.num, bp.channels, bp.height, bp.width = (1,) * (4 - a.ndim) + a.shape
            else:
                bp.shape.dim.extend(a.shape)
            bp.data.extend(a.ravel().tolist())
    data = param.SerializeToString()
    with open(path, "wb") as f:
        f.write(seal(data) if sealed else data)


IP_NET = textwrap.dedent("""
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 4 } }
""")


def ip_net():
    return caffe.Net(parse_prototxt(IP_NET, caffe_pb2.NetParameter()), caffe.TEST)


def ip_blobs(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]


@pytest.mark.parametrize("legacy", [False, True])
def test_handwritten_files_modern_and_v1_load_the_same(tmp_path, legacy):
    path = str(tmp_path / "w.caffemodel")
    blobs = ip_blobs()
    write_layers(path, [("ip", blobs), ("unused", [blobs[1]])], legacy=legacy)
    stored = weight_file.open_weights(path)
    assert (stored is None) == legacy           # V1 layers go to upgrade_net's whole-file path
    if stored is not None:
        stored.close()
    net = ip_net()
    net.copy_from(path)
    assert np.array_equal(net.params["ip"][0].data, blobs[0])
    assert np.array_equal(net.params["ip"][1].data, blobs[1])


def length_delimited(number, body):
    return varint(number << 3 | 2) + varint(len(body)) + body


def test_double_data_and_unpacked_floats_fall_back_to_protobuf(tmp_path):
    blobs = ip_blobs()
    weights = caffe_pb2.BlobProto()
    weights.shape.dim.extend([4, 6])
    weights.double_data.extend(blobs[0].ravel().tolist())
    bias = caffe_pb2.BlobProto()
    bias.shape.dim.extend([4])
    # The bias as unpacked floats (tag: field 5, wire type 5, before each value): protobuf reads them too.
    unpacked = b"".join(b"\x2d" + v.tobytes() for v in blobs[1].astype("<f4"))
    layer = (caffe_pb2.LayerParameter(name="ip", type="InnerProduct").SerializeToString()
             + length_delimited(7, weights.SerializeToString())
             + length_delimited(7, bias.SerializeToString() + unpacked))
    path = str(tmp_path / "w.caffemodel")
    with open(path, "wb") as f:
        f.write(length_delimited(100, layer))
    assert weight_file.open_weights(path) is None
    net = ip_net()
    net.copy_from(path)
    assert np.array_equal(net.params["ip"][0].data, blobs[0])
    assert np.array_equal(net.params["ip"][1].data, blobs[1])


def error_of(load):
    """The NetspecError's text, or None when `load` succeeds."""
    try:
        load()
    except NetspecError as e:
        return str(e)
    return None


@pytest.mark.parametrize("sealed", [False, True])
def test_damaged_files_are_refused_with_the_old_errors(tmp_path, sealed):
    build = small_net if sealed else ip_net
    path = str(tmp_path / "w.caffemodel")
    if sealed:
        randomised(small_net()).save(path)
    else:
        write_layers(path, [("ip", ip_blobs())])
    whole = open(path, "rb").read()
    damaged = {"truncated": whole[:len(whole) * 2 // 3], "appended": whole + b"\x00\x01",
               "flipped": whole[:-9] + bytes([whole[-9] ^ 0x40]) + whole[-8:],
               "cut in a tag": whole[:len(whole) - 1], "garbage": b"\xff" * 40}
    refused = 0
    for how, data in damaged.items():
        bad = str(tmp_path / f"{how}.caffemodel")
        with open(bad, "wb") as f:
            f.write(data)
        net = build()
        before = params(net)
        old = error_of(lambda: old_path(build(), bad))
        assert error_of(lambda: net.copy_from(bad)) == old, how
        if old is not None:
            refused += 1
            if sealed:                  # refused before anything was copied
                assert_same_params(params(net), before)
    assert refused >= (5 if sealed else 3)


def test_sealed_refusals_name_the_damage(tmp_path):
    path = str(tmp_path / "w.caffemodel")
    randomised(small_net()).save(path)
    whole = open(path, "rb").read()
    for data, words in ((whole[:-100], "truncated"), (whole + b"x", "has bytes appended"),
                        (whole[:-5] + b"XXXXX", "corrupted")):
        with open(path, "wb") as f:
            f.write(data)
        assert words in error_of(lambda: small_net().copy_from(path))


def test_shape_and_count_errors_match(tmp_path):
    path = str(tmp_path / "w.caffemodel")
    net = ip_net()
    # A 3 x 6 weight where the net has 4 x 6; then a blob whose values do not fill its shape.
    write_layers(path, [("ip", [np.zeros((3, 6), np.float32), np.zeros(4, np.float32)])])
    assert "shape mismatch" in error_of(lambda: net.copy_from(path))
    assert error_of(lambda: net.copy_from(path)) == error_of(lambda: old_path(ip_net(), path))
    param = caffe_pb2.NetParameter()
    lp = param.layer.add(name="ip", type="InnerProduct")
    for shape, n in (([4, 6], 23), ([4], 4)):
        bp = lp.blobs.add()
        bp.shape.dim.extend(shape)
        bp.data.extend([0.5] * n)
    with open(path, "wb") as f:
        f.write(param.SerializeToString())
    assert "holds 23 values, expected 24" in error_of(lambda: ip_net().copy_from(path))
    assert error_of(lambda: ip_net().copy_from(path)) == error_of(lambda: old_path(ip_net(), path))


def test_snapshot_strictness_is_unchanged(tmp_path):
    path = str(tmp_path / "w.caffemodel")
    write_layers(path, [("other", ip_blobs())])
    net = ip_net()
    net.copy_from(path)                             # lenient: nothing copied, no error
    message = error_of(lambda: ip_net().copy_from(path, require_all=True))
    assert "holds no weights for layer(s) 'ip'" in message


def test_loading_allocates_far_less_than_the_weights(tmp_path):
    # The whole-file parse held the file's bytes (a traced Python bytes object as large as the
    # weights) and the arrays blob_to_array made; reading into the net's arrays needs neither.
    text = IP_NET.replace("dim: 6", "dim: 2000").replace("num_output: 4", "num_output: 2000")
    build = lambda: caffe.Net(parse_prototxt(text, caffe_pb2.NetParameter()), caffe.TEST)  # noqa: E731
    path = str(tmp_path / "w.caffemodel")
    randomised(build()).save(path)
    net = build()
    weights = sum(b.data.nbytes for blobs in net.params.values() for b in blobs)
    tracemalloc.start()
    try:
        net.copy_from(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.2 * weights, f"{peak} bytes traced loading {weights} bytes of weights"


def test_a_file_that_cannot_be_mapped_is_read_whole(tmp_path, monkeypatch):
    # Under a tight `ulimit -v` the map can fail: the whole-file parse still loads the weights.
    path = str(tmp_path / "w.caffemodel")
    source = randomised(small_net())
    source.save(path)

    def no_map(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(weight_file.mmap, "mmap", no_map)
    assert weight_file.open_weights(path) is None
    net = small_net()
    net.copy_from(path)
    assert_same_params(params(net), params(source))


def test_a_file_cut_while_being_read_is_an_error_not_short_weights(tmp_path):
    path = str(tmp_path / "w.caffemodel")
    randomised(small_net()).save(path)
    with weight_file.open_weights(path) as stored:
        os.truncate(path, os.path.getsize(path) // 2)
        message = error_of(lambda: copy_layer_blobs(small_net(), stored, path))
    assert message is not None and "shrank while its weights were being read" in message
