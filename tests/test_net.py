"""Net construction and execution: shapes, phases, splits, sharing, loss weights, pycaffe API, errors."""
import textwrap

import numpy as np
import pytest

import netspec as caffe
from netspec.blob import precision
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from netspec.schema import parse_prototxt


def net_from(text, phase=caffe.TRAIN, **kw):
    param = parse_prototxt(textwrap.dedent(text), caffe_pb2.NetParameter())
    return caffe.Net(param, phase, **kw)


def numeric_net_gradient(net, blob, eps=1e-6, count=20, seed=0):
    """Central differences of the net's loss w.r.t. a random subset of `blob`'s elements."""
    flat = blob.data.reshape(-1)
    idx = np.random.default_rng(seed).choice(flat.size, min(count, flat.size), replace=False)
    grads = []
    for k in idx:
        old = flat[k]
        flat[k] = old + eps
        plus = net.forward_prefilled()
        flat[k] = old - eps
        minus = net.forward_prefilled()
        flat[k] = old
        grads.append((plus - minus) / (2 * eps))
    return idx, np.array(grads)


def check_net_gradients(net, blobs):
    net.clear_param_diffs()
    net.forward_prefilled()
    net.backward_from_to()
    analytic = [b.diff.copy() for b in blobs]
    for blob, grad in zip(blobs, analytic):
        idx, numeric = numeric_net_gradient(net, blob)
        np.testing.assert_allclose(grad.reshape(-1)[idx], numeric, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------ shapes

def test_lenet_deploy_shapes_match_caffe():
    net = caffe.Net("models/lenet/lenet.prototxt", caffe.TEST)
    expected = {"data": (64, 1, 28, 28), "conv1": (64, 20, 24, 24), "pool1": (64, 20, 12, 12),
                "conv2": (64, 50, 8, 8), "pool2": (64, 50, 4, 4), "ip1": (64, 500), "ip2": (64, 10),
                "prob": (64, 10)}
    assert {k: v.shape for k, v in net.blobs.items()} == expected
    assert [p.shape for p in net.params["conv2"]] == [(50, 20, 5, 5), (50,)]
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    net.blobs["data"].data[...] = np.random.default_rng(0).random((64, 1, 28, 28))
    prob = net.forward()["prob"]
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)
    diffs = net.backward(prob=np.ones_like(prob))
    assert diffs["data"].shape == (64, 1, 28, 28)


MLP = """
name: "mlp"
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" } } }
layer { name: "act" type: "TanH" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "out"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "y" top: "loss" }
"""


def filled(net, seed=0):
    rng = np.random.default_rng(seed)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].shape)
    return net


def test_in_place_net_gradients_match_finite_differences():
    with precision(np.float64):
        net = filled(net_from(MLP))
        check_net_gradients(net, [net.blobs["x"]] + [p for ps in net.params.values() for p in ps])


def test_fan_out_inserts_split_and_sums_gradients():
    text = MLP.replace('layer { name: "loss"', '''
layer { name: "ip3" type: "InnerProduct" bottom: "h" top: "out2"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss2" type: "EuclideanLoss" bottom: "out2" bottom: "y" top: "loss2" }
layer { name: "loss"''')
    with precision(np.float64):
        net = filled(net_from(text))
        split_layers = [l for l in net.layers if l.type == "Split"]
        # h feeds ip2 and ip3; y feeds both losses.
        assert {l.name for l in split_layers} == {"h_act_0_split", "y_in_1_split"}
        assert "h_act_0_split_1" in net.blobs
        check_net_gradients(net, [net.blobs["x"]] + net.params["ip1"])


def test_three_way_split_sums_all_three_gradients():
    extra = "".join(f'''
layer {{ name: "ip{k}" type: "InnerProduct" bottom: "h" top: "out{k}"
        inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "loss{k}" type: "EuclideanLoss" bottom: "out{k}" bottom: "y" top: "loss{k}" }}''' for k in (3, 4))
    text = MLP.replace('layer { name: "loss"', extra + '\nlayer { name: "loss"')
    with precision(np.float64):
        net = filled(net_from(text))
        assert [len(r.tops) for r in net.records if r.name == "h_act_0_split"] == [3]
        check_net_gradients(net, [net.blobs["x"]] + net.params["ip1"])


def test_shared_params_by_name_accumulate_both_gradients():
    text = """
    force_backward: true
    layer { name: "in" type: "Input" top: "a" top: "b" top: "y"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
    layer { name: "ipa" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "ipb" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "sum" type: "Eltwise" bottom: "fa" bottom: "fb" top: "f" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "f" bottom: "y" top: "loss" }
    """
    with precision(np.float64):
        net = filled(net_from(text))
        assert net.params["ipa"][0] is net.params["ipb"][0]
        assert len(net.learnable_params) == 2
        check_net_gradients(net, net.params["ipa"])


def test_loss_weight_scales_loss_and_gradients():
    with precision(np.float64):
        base = filled(net_from(MLP))
        heavy = filled(net_from(MLP.replace('top: "loss" }', 'top: "loss" loss_weight: 2.5 }')))
        for name in base.params:                     # exact float64 copy (a caffemodel rounds to float32)
            for src, dst in zip(base.params[name], heavy.params[name]):
                dst.data[...] = src.data
        l1, l2 = base.forward_prefilled(), heavy.forward_prefilled()
        assert l2 == pytest.approx(2.5 * l1)
        for n in (base, heavy):
            n.clear_param_diffs()
            n.backward_from_to()
        np.testing.assert_allclose(heavy.params["ip1"][0].diff, 2.5 * base.params["ip1"][0].diff)
        assert heavy.blob_loss_weights["loss"] == 2.5 and heavy.blob_loss_weights["out"] == 0


def test_backward_is_skipped_where_no_gradient_is_needed():
    text = MLP.replace("force_backward: true", "") + """
    layer { name: "side" type: "InnerProduct" bottom: "x" top: "side" inner_product_param { num_output: 2 } }
    """
    net = filled(net_from(text))
    need = dict(zip(net._layer_names, net._layer_need_backward))
    assert need["in"] is False and need["side"] is False and need["ip1"] is True
    # ip1's bottom is an Input: no gradient computed into it without force_backward.
    assert net._bottom_need_backward[net._layer_names.index("ip1")] == [False]
    net.forward_prefilled()
    net.blobs["x"].diff[...] = 7
    net.backward_from_to()
    assert np.all(net.blobs["x"].diff == 7)


def test_phase_level_and_stage_filtering():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
    layer { name: "train_only" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
    layer { name: "test_only" type: "ReLU" bottom: "x" top: "a" include { phase: TEST } }
    layer { name: "deep" type: "ReLU" bottom: "x" top: "b" include { min_level: 2 } }
    layer { name: "staged" type: "ReLU" bottom: "x" top: "c" include { stage: "deploy" } }
    layer { name: "not_staged" type: "ReLU" bottom: "x" top: "d" exclude { stage: "deploy" } }
    """
    names = lambda n: n._layer_names  # noqa: E731
    assert "train_only" in names(net_from(text, caffe.TRAIN))
    assert "test_only" in names(net_from(text, caffe.TEST))
    assert "deep" not in names(net_from(text)) and "deep" in names(net_from(text, level=2))
    staged = net_from(text, stages=["deploy"])
    assert "staged" in names(staged) and "not_staged" not in names(staged)
    assert "not_staged" in names(net_from(text))


def test_reshape_propagates_new_input_shapes():
    net = filled(net_from(MLP))
    net.blobs["x"].reshape(7, 3)
    net.blobs["y"].reshape(7, 2)
    net.reshape()
    assert net.blobs["out"].shape == (7, 2)
    out = net.forward(x=np.ones((7, 3)), y=np.zeros((7, 2)))
    assert out["loss"].size == 1 and np.isfinite(out["loss"]).all()


def test_save_and_copy_from_round_trip(tmp_path):
    a = filled(net_from(MLP))
    path = tmp_path / "mlp.caffemodel"
    a.save(str(path))
    parsed = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert [l.name for l in parsed.layer if l.blobs] == ["ip1", "ip2"]
    b = net_from(MLP)
    b.copy_from(str(path))
    for name in a.params:
        for pa, pb in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(pa.data, pb.data)
    assert Net3(str(path)).params["ip1"][0].data.shape == (5, 3)


def Net3(weights):
    param = parse_prototxt(MLP, caffe_pb2.NetParameter())
    return caffe.Net(param, weights, caffe.TEST)


def test_copy_from_shape_mismatch_names_layer_and_shapes(tmp_path):
    a = net_from(MLP)
    path = tmp_path / "mlp.caffemodel"
    a.save(str(path))
    b = net_from(MLP.replace("num_output: 5", "num_output: 6"))
    with pytest.raises(NetspecError, match=r"layer 'ip1'.*\(5, 3\).*\(6, 3\)"):
        b.copy_from(str(path))


def test_forward_all_batches_larger_inputs():
    net = net_from(MLP, caffe.TEST)
    x = np.random.default_rng(1).standard_normal((10, 3)).astype(np.float32)
    out = net.forward_all(blobs=["out"], x=x, y=np.zeros((10, 2)))
    assert out["out"].shape == (10, 2)
    single = net.forward(x=x[4:8], y=np.zeros((4, 2)), blobs=["out"])["out"]
    np.testing.assert_allclose(out["out"][4:8], single, rtol=1e-6)


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("text, message", [
    ('layer { name: "a" type: "Bogus" top: "x" }', r"layer 'a': unknown layer type 'Bogus' \(registered types: .*Convolution"),
    ('layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }', r"layer 'r' \(ReLU\): unknown bottom blob 'nope'"),
    ('layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
     'layer { name: "b" type: "Input" top: "x" input_param { shape { dim: 1 } } }',
     r"layer 'b' \(Input\): top blob 'x' is already produced by layer 'a' \(only an in-place layer"),
    ('layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'
     'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }\n'
     'layer { name: "ip" type: "InnerProduct" bottom: "y" top: "z" inner_product_param { num_output: 2 } }',
     r"duplicate layer name 'ip': layers with parameters must have unique names"),
    ('layer { name: "a" type: "Input" top: "x" include { phase: TRAIN } exclude { phase: TEST } '
     'input_param { shape { dim: 1 } } }', r"layer 'a' \(Input\): specify either include rules or exclude"),
])
def test_net_errors_name_the_layer(text, message):
    with pytest.raises(NetspecError, match=message):
        net_from(text)


def test_malformed_prototxt_gives_path_line_col(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  bottoms: "b"\n}\n')
    with pytest.raises(NetspecError) as err:
        caffe.Net(str(path), caffe.TEST)
    assert str(err.value).startswith(f"{path}:4:3:")
    assert 'no field named "bottoms"' in str(err.value) and "caffe.LayerParameter" in str(err.value)


# ------------------------------------------------------------------ Python layers

PY_NET = """
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "double" type: "Python" bottom: "x" top: "y"
        python_param { module: "%s" layer: "%s" param_str: "2.0" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "x" top: "loss" }
"""


def write_module(tmp_path, monkeypatch, source, name="user_layers"):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_python_layer_runs_with_the_builtin_interface(tmp_path, monkeypatch):
    module = write_module(tmp_path, monkeypatch, """
        import netspec as caffe
        class Scale(caffe.Layer):
            def setup(self, bottom, top):
                self.k = float(self.param_str)
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)
            def forward(self, bottom, top):
                top[0].data[...] = self.k * bottom[0].data
            def backward(self, top, propagate_down, bottom):
                if propagate_down[0]:
                    bottom[0].diff[...] = self.k * top[0].diff
        """)
    with precision(np.float64):
        net = filled(net_from(PY_NET % (module, "Scale")))
        assert net.layer_dict["double"].type == "Python"
        np.testing.assert_allclose(net.forward()["loss"], 0.5 * np.sum(net.blobs["x"].data ** 2) / 2)


def test_python_layer_import_error_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(NetspecError, match=r"layer 'double' \(Python\): cannot import module 'no_such_mod'"):
        net_from(PY_NET % ("no_such_mod", "X"))


def test_python_layer_exception_names_the_layer(tmp_path, monkeypatch):
    module = write_module(tmp_path, monkeypatch, """
        import netspec as caffe
        class Broken(caffe.Layer):
            def setup(self, bottom, top):
                raise ValueError("bad param_str")
        """, name="broken_layers")
    with pytest.raises(NetspecError, match=r"layer 'double' \(Python broken_layers.Broken\): setup raised "
                                           r"ValueError: bad param_str"):
        net_from(PY_NET % (module, "Broken"))


def test_loss_layer_without_a_top_gets_an_anonymous_one():
    """Caffe's AutoTopBlobs (R-CNN's pascal_finetune net): the loss counts, though no blob is named."""
    net = net_from("""
        force_backward: true
        layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "x" bottom: "y" }
        """)
    net.blobs["x"].data[...] = [[1, 2, 3], [0, 0, 0]]
    net.blobs["y"].data[...] = 0
    assert net.outputs == [] and net.forward_backward() == pytest.approx(14 / 4)
    np.testing.assert_allclose(net.blobs["x"].diff, [[0.5, 1, 1.5], [0, 0, 0]])


# Every type BVLC Caffe registers (REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR in its src/, master).
CAFFE_LAYER_TYPES = """AbsVal Accuracy ArgMax BNLL BatchNorm BatchReindex Bias Clip Concat ContrastiveLoss Convolution
Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter Flatten
HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input LRN LSTM LSTMUnit
Log MVN MemoryData MultinomialLogisticLoss PReLU Parameter Pooling Power Python RNN ReLU Reduction
Reshape SPP Scale Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax SoftmaxWithLoss Split Swish
TanH Threshold Tile WindowData""".split()


def test_every_caffe_layer_type_is_registered():
    from netspec.layers import LAYER_REGISTRY
    assert len(CAFFE_LAYER_TYPES) == 61
    assert [t for t in CAFFE_LAYER_TYPES if t not in LAYER_REGISTRY] == []


def test_blob_reshape_to_its_shape_keeps_its_views_unless_they_moved():
    from netspec.blob import Blob
    a, b = Blob((2, 3)), Blob((2, 3))
    data = a.data
    a.reshape(2, 3)
    assert a.data is data                                  # nothing to do: the same views
    a.share_data(b)
    a.reshape(2, 3)
    assert a.data is not b.data and not np.shares_memory(a.data, b.data)     # sharing undone
    a._data = np.arange(6, dtype=a.dtype)                  # as reuse.py moves a blob's memory
    a.reshape(2, 3)
    assert np.shares_memory(a.data, a._data) and a.data[1, 2] == 5
    a.reshape(3, 2)
    assert a.data.shape == a.diff.shape == (3, 2)
