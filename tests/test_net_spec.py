"""NetSpec: pycaffe-style net building reproduces the shipped LeNet files field for field."""
import os

import numpy as np
import pytest
from google.protobuf import text_format

import netspec
from netspec import NetSpec, NetspecError, layers as L, params as P, to_proto
from netspec.proto import caffe_pb2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET_TRAIN_TEST = os.path.join(REPO, "models", "lenet", "lenet_train_test.prototxt")
LENET_DEPLOY = os.path.join(REPO, "models", "lenet", "lenet.prototxt")

LEARN = [dict(lr_mult=1), dict(lr_mult=2)]
FILLERS = dict(weight_filler=dict(type="xavier"), bias_filler=dict(type="constant"))


def read_prototxt(path):
    with open(path) as f:
        return text_format.Parse(f.read(), caffe_pb2.NetParameter())


def lenet_body(n, bottom):
    n.conv1 = L.Convolution(bottom, param=LEARN, num_output=20, kernel_size=5, stride=1, **FILLERS)
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, param=LEARN, num_output=50, kernel_size=5, stride=1, **FILLERS)
    n.pool2 = L.Pooling(n.conv2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.ip1 = L.InnerProduct(n.pool2, param=LEARN, num_output=500, **FILLERS)
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, param=LEARN, num_output=10, **FILLERS)
    return n.ip2


def mnist_data(phase, source, batch_size, **extra):
    return L.Data(name="mnist", ntop=2, include=dict(phase=phase), transform_param=dict(scale=1. / 256),
                  source=source, batch_size=batch_size, backend=P.Data.LMDB, **extra)


def lenet_train_test():
    n = NetSpec()
    n.data, n.label = mnist_data(netspec.TRAIN, "data/mnist/mnist_train_lmdb", 64)
    # Same tops as the TRAIN layer; top= names them, the attribute names only keep them in order.
    n.test_data, n.test_label = mnist_data(netspec.TEST, "data/mnist/mnist_test_lmdb", 100,
                                           top=["data", "label"])
    ip2 = lenet_body(n, n.data)
    n.accuracy = L.Accuracy(ip2, n.label, include=dict(phase=netspec.TEST))
    n.loss = L.SoftmaxWithLoss(ip2, n.label)
    net = n.to_proto()
    net.name = "LeNet"
    return net


def lenet_deploy():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[64, 1, 28, 28]))
    n.prob = L.Softmax(lenet_body(n, n.data))
    net = n.to_proto()
    net.name = "LeNet"
    return net


def assert_same_net(built, expected):
    # The text comparison shows a readable diff on failure; == is the field-for-field check.
    assert text_format.MessageToString(built) == text_format.MessageToString(expected)
    assert built == expected


def test_lenet_train_test_matches_shipped_file():
    assert_same_net(lenet_train_test(), read_prototxt(LENET_TRAIN_TEST))


def test_lenet_train_test_by_splicing_two_netspecs():
    # The plain pycaffe way (no top=): build the TEST data layer on its own and splice it in.
    test_only = NetSpec()
    test_only.data, test_only.label = mnist_data(netspec.TEST, "data/mnist/mnist_test_lmdb", 100)
    n = NetSpec()
    n.data, n.label = mnist_data(netspec.TRAIN, "data/mnist/mnist_train_lmdb", 64)
    ip2 = lenet_body(n, n.data)
    n.accuracy = L.Accuracy(ip2, n.label, include=dict(phase=netspec.TEST))
    n.loss = L.SoftmaxWithLoss(ip2, n.label)
    layers = list(n.to_proto().layer)
    layers.insert(1, test_only.to_proto().layer[0])
    net = caffe_pb2.NetParameter(name="LeNet", layer=layers)
    assert_same_net(net, read_prototxt(LENET_TRAIN_TEST))


def test_lenet_deploy_matches_shipped_file():
    assert_same_net(lenet_deploy(), read_prototxt(LENET_DEPLOY))


def _blob_shapes(net):
    # Split outputs the net inserts for fan-out are not part of the written net.
    return {name: blob.shape for name, blob in net.blobs.items() if "_split_" not in name}


def test_lenet_deploy_text_loads_into_net(tmp_path):
    needed = {"Input", "Convolution", "Pooling", "InnerProduct", "ReLU", "Softmax"}
    missing = needed - set(netspec.LAYER_REGISTRY)
    if missing:
        pytest.skip(f"layer types not implemented yet: {sorted(missing)}")
    path = tmp_path / "deploy.prototxt"
    path.write_text(str(lenet_deploy()))
    built = netspec.Net(str(path), netspec.TEST)
    shipped = netspec.Net(LENET_DEPLOY, netspec.TEST)
    assert _blob_shapes(built) == _blob_shapes(shipped)
    assert built.blobs["conv1"].shape == (64, 20, 24, 24)
    assert built.blobs["prob"].shape == (64, 10)


def test_mlp_with_in_place_relu_loads_into_net(tmp_path):
    needed = {"Input", "InnerProduct", "ReLU", "Softmax"}
    if needed - set(netspec.LAYER_REGISTRY):
        pytest.skip(f"layer types not implemented yet: {sorted(needed - set(netspec.LAYER_REGISTRY))}")
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[4, 1, 3, 3]))
    n.ip1 = L.InnerProduct(n.data, param=LEARN, num_output=6, **FILLERS)
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=2, **FILLERS)
    n.prob = L.Softmax(n.ip2)
    path = tmp_path / "mlp.prototxt"
    path.write_text(str(n.to_proto()))
    net = netspec.Net(str(path), netspec.TEST)
    assert _blob_shapes(net) == {"data": (4, 1, 3, 3), "ip1": (4, 6), "ip2": (4, 2), "prob": (4, 2)}
    assert [p.data.shape for p in net.params["ip1"]] == [(6, 9), (6,)]
    net.blobs["data"].data[...] = np.linspace(-1, 1, 36, dtype=np.float32).reshape(4, 1, 3, 3)
    net.forward()
    w1, b1 = (p.data for p in net.params["ip1"])
    w2, b2 = (p.data for p in net.params["ip2"])
    hidden = np.maximum(net.blobs["data"].data.reshape(4, 9) @ w1.T + b1, 0)
    logits = hidden @ w2.T + b2
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(net.blobs["prob"].data, expected / expected.sum(1, keepdims=True), rtol=1e-5)


def test_text_form_loads_into_net_with_expected_shapes(tmp_path):
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 4, 5]))
    n.first, n.rest = L.Slice(n.data, ntop=2, axis=1, slice_point=[1])
    n.flat = L.Flatten(n.rest)
    n.tiled = L.Tile(n.first, axis=1, tiles=3)
    n.joined = L.Concat(n.tiled, n.rest, axis=1)
    path = tmp_path / "net.prototxt"
    path.write_text(text_format.MessageToString(n.to_proto()))
    net = netspec.Net(str(path), netspec.TEST)
    assert _blob_shapes(net) == {"data": (2, 3, 4, 5), "first": (2, 1, 4, 5), "rest": (2, 2, 4, 5),
                                 "flat": (2, 40), "tiled": (2, 3, 4, 5), "joined": (2, 5, 4, 5)}
    net.blobs["data"].data[...] = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    net.forward()
    np.testing.assert_array_equal(net.blobs["flat"].data, net.blobs["data"].data[:, 1:].reshape(2, 40))


def test_ntop_tuple_and_zero():
    a, b, c = L.Slice(L.DummyData(shape=dict(dim=[3, 6])), ntop=3, slice_point=[1, 3])
    silence = L.Silence(a, b, c, ntop=0)
    assert not hasattr(silence, "n")          # ntop=0 gives the call itself, not a top
    net = to_proto(silence)
    assert [layer.type for layer in net.layer] == ["DummyData", "Slice", "Silence"]
    assert list(net.layer[1].top) == ["Slice1", "Slice2", "Slice3"]
    assert net.layer[1].name == "Slice1"
    assert list(net.layer[2].bottom) == ["Slice1", "Slice2", "Slice3"]
    assert list(net.layer[2].top) == [] and net.layer[2].name == "Silence1"
    n = NetSpec()
    n.data = L.DummyData(shape=dict(dim=[1]))
    n.quiet = L.Silence(n.data, ntop=0)
    assert n.to_proto().layer[1].name == "quiet"


def test_in_place_top_is_bottom_and_names():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n.act = L.ReLU(n.data, in_place=True)
    n.drop = L.Dropout(n.act, in_place=True, dropout_ratio=0.25)
    n.out = L.Softmax(n.drop)
    layers = n.to_proto().layer
    assert [(l.name, list(l.bottom), list(l.top)) for l in layers] == [
        ("data", [], ["data"]), ("act", ["data"], ["data"]), ("drop", ["data"], ["data"]),
        ("out", ["data"], ["out"])]
    assert layers[2].dropout_param.dropout_ratio == 0.25
    # Unnamed in-place layer: pycaffe names it after its (would-be) first top.
    net = to_proto(L.ReLU(L.Input(shape=dict(dim=[1])), in_place=True))
    assert [(l.name, list(l.top)) for l in net.layer] == [("Input1", ["Input1"]), ("ReLU1", ["Input1"])]


def test_automatic_names_count_per_type():
    x = L.Input(shape=dict(dim=[1, 4]))
    y = L.InnerProduct(L.InnerProduct(x, num_output=3), num_output=2)
    net = to_proto(L.Softmax(y))
    assert [(l.name, list(l.bottom), list(l.top)) for l in net.layer] == [
        ("Input1", [], ["Input1"]),
        ("InnerProduct1", ["Input1"], ["InnerProduct1"]),
        ("InnerProduct2", ["InnerProduct1"], ["InnerProduct2"]),
        ("Softmax1", ["InnerProduct2"], ["Softmax1"])]
    # Top.to_proto is to_proto(top); NetSpec names only what it was given.
    assert y.to_proto() == to_proto(y)
    n = NetSpec()
    n.out = L.Softmax(y)
    assert [l.name for l in n.to_proto().layer] == ["Input1", "InnerProduct1", "InnerProduct2", "out"]


def test_enum_by_name_number_and_P():
    by_name = to_proto(L.Pooling(L.Input(), pool="AVE", include=dict(phase="TEST")))
    by_number = to_proto(L.Pooling(L.Input(), pool=1, include=dict(phase=1)))
    by_p = to_proto(L.Pooling(L.Input(), pool=P.Pooling.AVE, include=dict(phase=P.Phase.TEST)))
    assert by_name == by_number == by_p
    assert by_name.layer[1].pooling_param.pool == caffe_pb2.PoolingParameter.AVE == 1
    assert by_name.layer[1].include[0].phase == caffe_pb2.TEST
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Eltwise.PROD == caffe_pb2.EltwiseParameter.PROD
    with pytest.raises(NetspecError, match="unknown value 'MEDIAN'.*MAX, AVE, STOCHASTIC"):
        L.Pooling(L.Input(), pool="MEDIAN")
    with pytest.raises(NetspecError, match="invalid value 7"):
        L.Pooling(L.Input(), pool=7)
    with pytest.raises(AttributeError, match="no value 'MEDIAN'"):
        P.Pooling.MEDIAN
    with pytest.raises(AttributeError):
        P.NoSuchThing.X


def test_repeated_fields_and_sub_messages():
    top = L.Convolution(L.Input(), kernel_size=[3, 5], pad=np.int64(1), num_output=4,
                        param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                        loss_weight=[0.5], propagate_down=[False],
                        weight_filler=dict(type="gaussian", std=0.01))
    layer = to_proto(top).layer[1]
    assert list(layer.convolution_param.kernel_size) == [3, 5]
    assert list(layer.convolution_param.pad) == [1]            # one value into a repeated field
    assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1), (2, 0)]
    assert list(layer.loss_weight) == [0.5] and list(layer.propagate_down) == [False]
    assert layer.convolution_param.weight_filler.type == "gaussian"
    assert layer.convolution_param.weight_filler.std == pytest.approx(0.01)
    shapes = to_proto(L.DummyData(shape=[dict(dim=[1, 2]), dict(dim=[3])], ntop=2)[0]).layer[0]
    assert [list(s.dim) for s in shapes.dummy_data_param.shape] == [[1, 2], [3]]
    # An empty dict still marks the sub-message present, and a message object is merged in.
    drop = to_proto(L.Dropout(L.Input(), dropout_param=dict())).layer[1]
    assert drop.HasField("dropout_param")
    filler = caffe_pb2.FillerParameter(type="constant", value=2)
    assert to_proto(L.Scale(L.Input(), filler=filler)).layer[1].scale_param.filler == filler


def test_keyword_routing_beyond_own_param():
    loss = to_proto(L.SoftmaxWithLoss(L.Input(), L.Input(), axis=2, ignore_label=-1,
                                      normalization="VALID")).layer[2]
    assert loss.softmax_param.axis == 2
    assert loss.loss_param.ignore_label == -1
    assert loss.loss_param.normalization == caffe_pb2.LossParameter.VALID
    deconv = to_proto(L.Deconvolution(L.Input(), num_output=3, kernel_size=2)).layer[1]
    assert deconv.convolution_param.num_output == 3
    named = to_proto(L.ReLU(L.Input(), name="act", negative_slope=0.1)).layer[1]
    assert named.name == "act" and named.relu_param.negative_slope == pytest.approx(0.1)


def test_errors_are_one_line():
    with pytest.raises(NetspecError, match="L.Convolution: unknown argument 'kernal_size'.*convolution_param"):
        L.Convolution(L.Input(), kernal_size=3)
    with pytest.raises(NetspecError, match="not repeated"):
        L.InnerProduct(L.Input(), num_output=[1, 2])
    with pytest.raises(TypeError, match=r"^ReLU input 0 is not a Top \(type is <class 'str'>\)$") as info:
        L.ReLU("data")
    assert isinstance(info.value, NetspecError)
    with pytest.raises(NetspecError, match="expected a dict"):
        L.Convolution(L.Input(), weight_filler="xavier")
    with pytest.raises(NetspecError, match="cannot take 'many'"):
        L.InnerProduct(L.Input(), num_output="many")
    with pytest.raises(NetspecError, match="several tops returns a tuple"):
        NetSpec().pair = L.Slice(L.Input(), ntop=2)
    with pytest.raises(AttributeError, match="no top named 'missing'"):
        NetSpec().missing


def test_netspec_mapping_interface_and_package_forwarding():
    import netspec.layers as registry_package
    assert registry_package.Convolution.__name__ == "Convolution"
    n = NetSpec()
    n["data"] = L.Input(shape=dict(dim=[1]))
    n.update("act", L.ReLU(n["data"]))
    assert n.keys() == ["data", "act"] and "act" in n and n.vals()[0] is n.data
    del n["act"]
    assert [l.name for l in n.to_proto().layer] == ["data"]
    assert netspec.NetSpec is NetSpec and netspec.params is P
