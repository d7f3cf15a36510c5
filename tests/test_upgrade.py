"""Upgrading old Caffe nets and solvers (netspec/upgrade.py)."""
from pathlib import Path

import numpy as np
import pytest

from netspec import schema
from netspec.convert import read_message, upgrade_file
from netspec.errors import NetspecError, ParseError
from netspec.proto import caffe_pb2
from netspec.upgrade import upgrade_needed, upgrade_net, upgrade_reasons, upgrade_solver

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "caffe-corpus"
MALFORMED = "BVLC-caffe-v1-format/examples/mnist/mnist_autoencoder.prototxt"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"Caffe corpus not found at {CORPUS}")


def corpus_files():
    if not CORPUS.is_dir():
        return []
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.prototxt"))


def net(text):
    return schema.parse_prototxt(text, caffe_pb2.NetParameter())


# ------------------------------------------------------------------ the corpus

@needs_corpus
def test_corpus_is_complete():
    assert len(corpus_files()) == 81


@needs_corpus
@pytest.mark.parametrize("rel", [f for f in corpus_files() if f != MALFORMED])
def test_corpus_file_loads(rel):
    path = CORPUS / rel
    kind, raw = read_message(path)
    assert kind == ("solver" if "solver" in rel else "net")
    if kind == "solver":
        solver = schema.read_solver(path)
        assert not solver.HasField("solver_type")
        assert solver.net or solver.train_net or solver.HasField("net_param")
        return
    loaded = schema.read_net(path)
    assert len(loaded.layer) > 0 and len(loaded.layers) == 0
    assert not (loaded.input or loaded.input_dim or loaded.input_shape)
    assert not upgrade_needed(loaded)
    # Upgrading an up-to-date net changes nothing.
    again = caffe_pb2.NetParameter()
    again.CopyFrom(loaded)
    assert upgrade_net(again, str(path)) == loaded
    if raw.layers:  # a V1 file keeps its layer names, order and blob wiring
        assert [l.name for l in loaded.layer if l.type != "Input"] == [l.name for l in raw.layers]
        assert [list(l.bottom) for l in loaded.layer if l.type != "Input"] == [list(l.bottom) for l in raw.layers]


@needs_corpus
def test_malformed_corpus_file_is_rejected_with_its_position():
    path = CORPUS / MALFORMED
    with pytest.raises(ParseError) as info:
        schema.read_net(path)
    message = str(info.value)
    assert message.startswith(f"{path}:41:")
    assert "transform_param" in message
    assert info.value.line == 41


@needs_corpus
def test_v1_lenet_upgrades_to_the_v2_lenet():
    old = schema.read_net(CORPUS / "BVLC-caffe-v1-format/examples/mnist/lenet_train_test.prototxt")
    new = schema.read_net(CORPUS / "BVLC-caffe/examples/mnist/lenet_train_test.prototxt")
    assert [(l.name, l.type) for l in old.layer] == [(l.name, l.type) for l in new.layer]
    assert old.layer[2].type == "Convolution" and [p.lr_mult for p in old.layer[2].param] == [1, 2]
    assert old.layer[0].transform_param.scale == pytest.approx(0.00390625)
    # Nothing else differs either: the whole upgraded message equals the hand-written V2 file.
    assert old == new


@needs_corpus
def test_v1_deploy_nets_differ_from_v2_only_in_the_input_layer_name():
    # Caffe names the layer made from `input:` fields "input"; the V2 files were
    # rewritten by hand with an Input layer named after its blob, "data".
    for rel in ("examples/mnist/lenet.prototxt", "models/bvlc_reference_caffenet/deploy.prototxt"):
        old = schema.read_net(CORPUS / "BVLC-caffe-v1-format" / rel)
        new = schema.read_net(CORPUS / "BVLC-caffe" / rel)
        assert (old.layer[0].name, new.layer[0].name) == ("input", "data")
        old.layer[0].name = "data"
        assert old == new, rel


@needs_corpus
def test_v1_cifar10_differs_from_v2_only_in_the_data_source():
    # Between the two Caffe commits the CIFAR-10 example moved from LevelDB to LMDB.
    rel = "examples/cifar10/cifar10_quick_train_test.prototxt"
    old = schema.read_net(CORPUS / "BVLC-caffe-v1-format" / rel)
    new = schema.read_net(CORPUS / "BVLC-caffe" / rel)
    assert old != new
    for layer in old.layer[:2]:
        layer.data_param.source = layer.data_param.source.replace("leveldb", "lmdb")
        layer.data_param.backend = caffe_pb2.DataParameter.LMDB
    assert old == new


# ------------------------------------------------------------------ V1 -> V2 by hand

V1_NET = """
name: "old"
input: "extra"
input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5
layers {
  name: "data" type: DATA top: "data" top: "label"
  data_param { source: "db" batch_size: 8 scale: 0.5 mean_file: "mean.binaryproto" crop_size: 3 mirror: true }
  include { phase: TRAIN }
}
layers {
  name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  param: "w_shared" param: "b_shared" blob_share_mode: PERMISSIVE
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } }
  exclude { phase: TEST stage: "deploy" }
}
layers { name: "relu" type: RELU bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "conv" bottom: "label" top: "loss" loss_weight: 2
         loss_param { ignore_label: 3 } }
"""


def test_v1_net_upgrades_types_params_and_transform():
    upgraded = upgrade_net(net(V1_NET), "old.prototxt")
    assert len(upgraded.layers) == 0
    assert [(l.name, l.type) for l in upgraded.layer] == [
        ("input", "Input"), ("data", "Data"), ("conv", "Convolution"), ("relu", "ReLU"),
        ("loss", "SoftmaxWithLoss")]
    data, conv, relu, loss = upgraded.layer[1:]
    # Transformation fields left data_param for transform_param.
    assert data.transform_param.scale == 0.5
    assert data.transform_param.mean_file == "mean.binaryproto"
    assert data.transform_param.crop_size == 3 and data.transform_param.mirror
    for field in ("scale", "mean_file", "crop_size", "mirror"):
        assert not data.data_param.HasField(field)
    assert (data.data_param.source, data.data_param.batch_size) == ("db", 8)
    assert list(data.top) == ["data", "label"] and data.include[0].phase == caffe_pb2.TRAIN
    # blobs_lr / weight_decay / param / blob_share_mode folded into param specs.
    assert [(p.name, p.lr_mult, p.decay_mult) for p in conv.param] == [("w_shared", 1, 1), ("b_shared", 2, 0)]
    assert conv.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not conv.param[1].HasField("share_mode")
    assert conv.convolution_param.num_output == 4 and list(conv.convolution_param.kernel_size) == [3]
    assert conv.convolution_param.weight_filler.type == "xavier"
    assert conv.exclude[0].phase == caffe_pb2.TEST and list(conv.exclude[0].stage) == ["deploy"]
    assert relu.relu_param.negative_slope == pytest.approx(0.1)
    assert list(relu.bottom) == ["conv"] and list(relu.top) == ["conv"]
    assert list(loss.loss_weight) == [2] and loss.loss_param.ignore_label == 3
    # The net-level input became the first layer.
    inp = upgraded.layer[0]
    assert list(inp.top) == ["extra"] and list(inp.input_param.shape[0].dim) == [2, 3, 4, 5]
    assert not (upgraded.input or upgraded.input_dim or upgraded.input_shape)
    assert not upgrade_needed(upgraded)


# Written out here rather than taken from netspec, as Caffe's UpgradeV1LayerType spells them.
CAFFE_V1_NAMES = """ABSVAL AbsVal ACCURACY Accuracy ARGMAX ArgMax BNLL BNLL CONCAT Concat
CONTRASTIVE_LOSS ContrastiveLoss CONVOLUTION Convolution DATA Data DECONVOLUTION Deconvolution
DROPOUT Dropout DUMMY_DATA DummyData EUCLIDEAN_LOSS EuclideanLoss ELTWISE Eltwise EXP Exp
FLATTEN Flatten HDF5_DATA HDF5Data HDF5_OUTPUT HDF5Output HINGE_LOSS HingeLoss IM2COL Im2col
IMAGE_DATA ImageData INFOGAIN_LOSS InfogainLoss INNER_PRODUCT InnerProduct LRN LRN
MEMORY_DATA MemoryData MULTINOMIAL_LOGISTIC_LOSS MultinomialLogisticLoss MVN MVN POOLING Pooling
POWER Power RELU ReLU SIGMOID Sigmoid SIGMOID_CROSS_ENTROPY_LOSS SigmoidCrossEntropyLoss
SILENCE Silence SOFTMAX Softmax SOFTMAX_LOSS SoftmaxWithLoss SPLIT Split SLICE Slice TANH TanH
WINDOW_DATA WindowData THRESHOLD Threshold""".split()


def test_every_v1_type_gets_caffes_name():
    expected = dict(zip(CAFFE_V1_NAMES[::2], CAFFE_V1_NAMES[1::2]))
    enum = caffe_pb2.V1LayerParameter.LayerType
    assert set(expected) == set(enum.keys()) - {"NONE"}
    old = caffe_pb2.NetParameter()
    for name in expected:
        old.layers.add(name=name.lower(), type=enum.Value(name))
    upgraded = upgrade_net(old)
    assert [l.type for l in upgraded.layer] == list(expected.values())


def test_every_v1_param_message_is_carried_over():
    old = caffe_pb2.NetParameter()
    v1 = old.layers.add(name="x", type=caffe_pb2.V1LayerParameter.POWER)
    messages = [f.name for f in v1.DESCRIPTOR.fields if f.name.endswith("_param")]
    assert len(messages) == 30
    for name in messages:
        getattr(v1, name).SetInParent()
    v1.power_param.power = 3
    v1.window_data_param.crop_mode = "square"
    layer = upgrade_net(old).layer[0]
    for name in messages:
        assert layer.HasField(name), name
    assert layer.power_param.power == 3 and layer.window_data_param.crop_mode == "square"


def test_v1_caffemodel_keeps_its_blobs(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    ip = rng.standard_normal((10, 36)).astype(np.float32)
    old = caffe_pb2.NetParameter(name="trained")
    conv = old.layers.add(name="conv1", type=caffe_pb2.V1LayerParameter.CONVOLUTION,
                          bottom=["data"], top=["conv1"], blobs_lr=[1, 2])
    for array in (weights, bias.reshape(1, 1, 1, 4)):  # the old 4-D blob header
        blob = conv.blobs.add(num=array.shape[0], channels=array.shape[1],
                              height=array.shape[2], width=array.shape[3])
        blob.data.extend(array.ravel().tolist())
    fc = old.layers.add(name="ip1", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT,
                        bottom=["conv1"], top=["ip1"])
    fc.blobs.add(num=1, channels=1, height=10, width=36).data.extend(ip.ravel().tolist())
    path = tmp_path / "old.caffemodel"
    path.write_bytes(old.SerializeToString())

    loaded = upgrade_net(schema.read_binary_message(path, caffe_pb2.NetParameter()), str(path))
    assert [(l.name, l.type, len(l.blobs)) for l in loaded.layer] == [
        ("conv1", "Convolution", 2), ("ip1", "InnerProduct", 1)]
    got = loaded.layer[0].blobs[0]
    assert (got.num, got.channels, got.height, got.width) == (4, 1, 3, 3)
    np.testing.assert_array_equal(np.array(got.data, np.float32).reshape(4, 1, 3, 3), weights)
    np.testing.assert_array_equal(np.array(loaded.layer[0].blobs[1].data, np.float32), bias)
    np.testing.assert_array_equal(np.array(loaded.layer[1].blobs[0].data, np.float32), ip.ravel())
    assert [p.lr_mult for p in loaded.layer[0].param] == [1, 2]

    # The same through `netspec upgrade`, binary in and binary out.
    out = tmp_path / "new.caffemodel"
    kind, reasons = upgrade_file(path, out)
    assert kind == "net" and reasons and "V1" in reasons[0]
    rewritten = schema.read_binary_message(out, caffe_pb2.NetParameter())
    assert rewritten == loaded and not upgrade_needed(rewritten)


# ------------------------------------------------------------------ V0 -> V1 -> V2

V0_NET = """
name: "ancient"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 6 kernelsize: 5 stride: 1 group: 1
                 biasterm: false weight_filler { type: "gaussian" std: 0.01 }
                 blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 } bottom: "pool1" top: "norm1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "norm1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 } bottom: "norm1" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""


def test_v0_net_upgrades_with_padding_folded():
    upgraded = upgrade_net(net(V0_NET), "ancient.prototxt")
    assert [(l.name, l.type) for l in upgraded.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("pool1", "Pooling"), ("norm1", "LRN"),
        ("drop", "Dropout"), ("fc", "InnerProduct"), ("prob", "Softmax")]
    conv = upgraded.layer[1]
    # The padding layer is gone: conv1 reads its input directly and pads by itself.
    assert list(conv.bottom) == ["data"] and list(conv.convolution_param.pad) == [2]
    cp = conv.convolution_param
    assert (cp.num_output, list(cp.kernel_size), list(cp.stride), cp.group, cp.bias_term) == (6, [5], [1], 1, False)
    assert cp.weight_filler.type == "gaussian" and cp.weight_filler.std == pytest.approx(0.01)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    pool = upgraded.layer[2].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride) == (caffe_pb2.PoolingParameter.AVE, 3, 2)
    lrn = upgraded.layer[3].lrn_param
    assert lrn.local_size == 3 and lrn.alpha == pytest.approx(1e-4) and lrn.beta == 0.75
    assert upgraded.layer[4].dropout_param.dropout_ratio == pytest.approx(0.3)
    assert upgraded.layer[5].inner_product_param.num_output == 10
    assert list(upgraded.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    assert upgrade_reasons(net(V0_NET))[0].startswith("V0")


def test_v0_data_layer_fields():
    old = net('layers { layer { name: "d" type: "data" source: "train_db" batchsize: 16 scale: 0.25 '
              'meanfile: "m.binaryproto" cropsize: 7 mirror: true rand_skip: 4 } top: "data" }')
    layer = upgrade_net(old).layer[0]
    assert layer.type == "Data"
    assert (layer.data_param.source, layer.data_param.batch_size, layer.data_param.rand_skip) == ("train_db", 16, 4)
    t = layer.transform_param
    assert (t.scale, t.mean_file, t.crop_size, t.mirror) == (0.25, "m.binaryproto", 7, True)


def test_v0_field_without_a_home_is_dropped_like_caffe():
    # Caffe logs "Unknown parameter ... for layer type" and carries on without the value.
    upgraded = upgrade_net(net('layers { layer { name: "r" type: "relu" num_output: 5 } top: "r" }'))
    assert upgraded.layer[0].type == "ReLU"
    assert not upgraded.layer[0].HasField("convolution_param")
    assert not upgraded.layer[0].HasField("inner_product_param")


def test_v0_errors():
    with pytest.raises(NetspecError, match=r"^v0\.prototxt: V0 layer 'x' has unknown type 'warp'"):
        upgrade_net(net('layers { layer { name: "x" type: "warp" } }'), "v0.prototxt")
    with pytest.raises(NetspecError, match="reads blob 'nowhere'"):
        upgrade_net(net('layers { layer { name: "x" type: "relu" } bottom: "nowhere" top: "y" }'), "v0.prototxt")
    padded_relu = ('input: "data" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "data" top: "p" } '
                   'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }')
    with pytest.raises(NetspecError, match="only conv and pool layers can absorb padding"):
        upgrade_net(net(padded_relu), "v0.prototxt")
    with pytest.raises(NetspecError, match="mixes V0 entries"):
        upgrade_net(net('layers { layer { name: "a" type: "relu" } } layers { name: "b" type: RELU }'), "v0.prototxt")


# ------------------------------------------------------------------ errors

def test_mixing_layer_and_layers_names_the_file():
    mixed = net('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }')
    with pytest.raises(NetspecError) as info:
        upgrade_net(mixed, "models/mixed.prototxt")
    assert str(info.value).startswith("models/mixed.prototxt: ")
    assert "'layer'" in str(info.value) and "'layers'" in str(info.value)


def test_mixing_through_read_net_names_the_file(tmp_path):
    path = tmp_path / "mixed.prototxt"
    path.write_text('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }\n')
    with pytest.raises(NetspecError, match=f"^{path}: the net mixes"):
        schema.read_net(path)


def test_unknown_v1_type_is_a_clear_error():
    # Field 2 (layers) holding a V1 layer with name "odd" (field 4) and type 99 (field 5),
    # a type number no Caffe version defined: only a binary file can say this.
    inner = b"\x22\x03odd" + b"\x28\x63"
    data = b"\x12" + bytes([len(inner)]) + inner
    old = caffe_pb2.NetParameter.FromString(data)
    assert len(old.layers) == 1
    with pytest.raises(NetspecError, match=r"^w\.caffemodel: V1 layer 'odd' \(entry 1 of 'layers'\) has no type"):
        upgrade_net(old, "w.caffemodel")
    with pytest.raises(NetspecError, match="has type NONE, which is not a layer type"):
        upgrade_net(net('layers { name: "n" type: NONE }'), "n.prototxt")


# ------------------------------------------------------------------ data transformation, inputs, BatchNorm

def test_transformation_fields_move_in_current_format_layers_too():
    new = net('layer { name: "img" type: "ImageData" top: "data" '
              'image_data_param { source: "list.txt" scale: 0.5 mirror: true } '
              'transform_param { crop_size: 9 } }'
              'layer { name: "win" type: "WindowData" top: "w" window_data_param { mean_file: "m" } }'
              'layer { name: "other" type: "ReLU" bottom: "w" top: "w" }')
    assert upgrade_needed(new)
    upgraded = upgrade_net(new)
    img, win, other = upgraded.layer
    assert (img.transform_param.scale, img.transform_param.mirror, img.transform_param.crop_size) == (0.5, True, 9)
    assert img.image_data_param.source == "list.txt" and not img.image_data_param.HasField("scale")
    assert win.transform_param.mean_file == "m" and not win.window_data_param.HasField("mean_file")
    assert not other.HasField("transform_param")
    # A data layer without deprecated fields is left alone (no empty transform_param appears).
    plain = net('layer { name: "d" type: "Data" top: "d" data_param { source: "s" } }')
    assert not upgrade_needed(plain)
    assert not upgrade_net(plain).layer[0].HasField("transform_param")


def test_input_shape_and_bare_input():
    shaped = net('input: "a" input: "b" input_shape { dim: 1 dim: 2 } input_shape { dim: 3 } '
                 'layer { name: "r" type: "ReLU" bottom: "a" top: "r" }')
    upgraded = upgrade_net(shaped)
    assert [(l.name, l.type) for l in upgraded.layer] == [("input", "Input"), ("r", "ReLU")]
    assert list(upgraded.layer[0].top) == ["a", "b"]
    assert [list(s.dim) for s in upgraded.layer[0].input_param.shape] == [[1, 2], [3]]
    # Names without shapes (old .caffemodel files): the names are just dropped.
    bare = upgrade_net(net('input: "data" layer { name: "r" type: "ReLU" }'))
    assert [l.name for l in bare.layer] == ["r"] and not bare.input


@pytest.mark.parametrize("text, expected", [
    ('input: "a" input_dim: 1 input_dim: 2 input_dim: 3', "need 4 input_dim values"),
    ('input: "a" input: "b" input_shape { dim: 1 }', "2 input blob(s) but 1 input_shape"),
    ('input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4', "without any 'input' blob names"),
    ('input: "a" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1 input_shape { dim: 1 }', "not both"),
])
def test_bad_input_fields(text, expected):
    with pytest.raises(NetspecError, match=r"^bad\.prototxt: ") as info:
        upgrade_net(net(text), "bad.prototxt")
    assert expected in str(info.value)


def test_batch_norm_param_specs():
    bn = net('layer { name: "bn" type: "BatchNorm" param { lr_mult: 0 name: "m" } param { lr_mult: 1 decay_mult: 1 } '
             'param { } batch_norm_param { use_global_stats: false } }'
             'layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }'
             'layer { name: "conv" type: "Convolution" param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }')
    assert upgrade_reasons(bn) == ["BatchNorm param specs with learning rate or decay"]
    upgraded = upgrade_net(bn)
    specs = upgraded.layer[0].param
    assert [(p.name, p.lr_mult, p.decay_mult) for p in specs] == [("m", 0, 0), ("", 0, 0), ("", 0, 0)]
    assert all(p.HasField("lr_mult") and p.HasField("decay_mult") for p in specs)
    assert not upgraded.layer[0].batch_norm_param.use_global_stats
    # Caffe only touches BatchNorm layers declaring exactly three specs.
    assert upgraded.layer[1].param[0].lr_mult == 1
    assert [p.lr_mult for p in upgraded.layer[2].param] == [1, 1, 1]
    assert not upgrade_needed(upgraded)


def test_upgrade_is_idempotent_and_current_nets_are_untouched():
    once = upgrade_net(net(V1_NET))
    twice = caffe_pb2.NetParameter()
    twice.CopyFrom(once)
    assert upgrade_net(twice) == once
    current = net('name: "n" layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 1 } } }')
    before = caffe_pb2.NetParameter()
    before.CopyFrom(current)
    assert upgrade_reasons(current) == [] and upgrade_net(current) == before


# ------------------------------------------------------------------ solvers

@pytest.mark.parametrize("enum_name, type_name", [
    ("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
    ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_becomes_type(enum_name, type_name):
    solver = schema.parse_prototxt(f"base_lr: 0.1 solver_type: {enum_name}", caffe_pb2.SolverParameter())
    upgraded = upgrade_solver(solver, "s.prototxt")
    assert upgraded.type == type_name and upgraded.HasField("type")
    assert not upgraded.HasField("solver_type") and upgraded.base_lr == pytest.approx(0.1)


def test_solver_type_and_type_together():
    agree = schema.parse_prototxt('solver_type: ADAM type: "Adam"', caffe_pb2.SolverParameter())
    assert upgrade_solver(agree).type == "Adam" and not agree.HasField("solver_type")
    clash = schema.parse_prototxt('solver_type: ADAM type: "SGD"', caffe_pb2.SolverParameter())
    with pytest.raises(NetspecError, match=r"^s\.prototxt: solver_type: ADAM .* disagree"):
        upgrade_solver(clash, "s.prototxt")
    plain = schema.parse_prototxt('type: "Nesterov"', caffe_pb2.SolverParameter())
    assert upgrade_solver(plain).type == "Nesterov"


def test_solver_embedded_v1_nets_are_upgraded():
    solver = schema.parse_prototxt(
        'solver_type: NESTEROV net_param { layers { name: "r" type: RELU } } '
        'test_net_param { input: "x" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1 }',
        caffe_pb2.SolverParameter())
    upgraded = upgrade_solver(solver)
    assert upgraded.type == "Nesterov"
    assert [(l.name, l.type) for l in upgraded.net_param.layer] == [("r", "ReLU")]
    assert upgraded.test_net_param[0].layer[0].type == "Input"


def test_read_solver_upgrades(tmp_path):
    path = tmp_path / "old_solver.prototxt"
    path.write_text('net: "n.prototxt"\nbase_lr: 0.01\nsolver_type: ADAGRAD\n')
    solver = schema.read_solver(path)
    assert solver.type == "AdaGrad" and not solver.HasField("solver_type")
