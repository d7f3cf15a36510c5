"""ONNX export of whole nets: every net in models/ and every corpus net that builds, random weights
and random input, ONNX Runtime against netspec's forward within 1e-5 on every blob the graph
names (max |onnx - netspec| / max |netspec| per blob); dynamic batch; the command line.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import netspec  # noqa: E402
from netspec.onnx_export import export_onnx  # noqa: E402
from netspec.onnx_export.check import compare, random_inputs, ort_session  # noqa: E402
from test_models import DEPLOY, random_weights, repo  # noqa: E402

TOL = 1e-5
# The big ImageNet nets take seconds each (netspec's forward and ORT's, at batch 1): slow.
BIG = {"models/googlenet/deploy.prototxt", "models/resnet50/ResNet-50-deploy.prototxt",
       "models/caffenet/deploy.prototxt"}
MODELS = ["models/lenet/lenet.prototxt"] + DEPLOY
SLOW_AT_4 = {"models/squeezenet/squeezenet_v1.1_deploy.prototxt", "models/mobilenet/mobilenet_deploy.prototxt"}


def at_batch(path, batch):
    """The deploy net's NetParameter with its Input batch set (the shipped files say 10 or 64)."""
    from netspec.schema import read_net
    param = read_net(repo(path))
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    return param


def assert_close(diffs, label, outputs=()):
    worst = max(diffs, key=diffs.get)
    # Shown with -s: the figures the report quotes.
    print(f"\n{label}: " + ", ".join(f"{o} {diffs[o]:.3g}" for o in outputs)
          + f"; worst blob {worst} {diffs[worst]:.3g} (of {len(diffs)})")
    assert diffs[worst] <= TOL, f"{label}: blob '{worst}' differs by {diffs[worst]:.3g} relative"


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p in BIG else p for p in MODELS])
def test_model_zoo_net_matches_netspec(path):
    net = netspec.Net(at_batch(path, 1), netspec.TEST)
    random_weights(net)
    model = export_onnx(net)
    assert [o.name for o in model.graph.output] == net.outputs
    assert_close(compare(net, model, every_blob=True), path, net.outputs)


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p in BIG | SLOW_AT_4 else p
                                  for p in MODELS])
def test_dynamic_batch_exported_at_1_runs_at_4(path):
    net = netspec.Net(at_batch(path, 1), netspec.TEST)
    random_weights(net)
    model = export_onnx(net, dynamic_batch=True)
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert first.dim_param == "batch"
    feeds = random_inputs(net, model, seed=3, batch=4)
    assert_close(compare(net, model, feeds=feeds, every_blob=True), path)
    assert next(iter(net.blobs.values())).shape[0] == 4


DYNAMIC_EDGES = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 5 } } }
layer { name: "ref" type: "Input" top: "ref" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 } } }
layer { name: "label2" type: "Input" top: "label2" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 4 axis: 2 } }
layer { name: "r" type: "Reshape" bottom: "ip" top: "r" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "f" type: "Flatten" bottom: "data" top: "f" flatten_param { axis: 0 } }
layer { name: "w" type: "InnerProduct" bottom: "data" top: "w" inner_product_param { num_output: 3 } }
layer { name: "s" type: "Scale" bottom: "data" bottom: "w" top: "s" scale_param { axis: 0 } }
layer { name: "c" type: "Crop" bottom: "data" bottom: "ref" top: "c" crop_param { axis: 2 offset: 1 } }
layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { top_k: 2 out_max_val: true } }
layer { name: "sl" type: "Slice" bottom: "data" top: "s0" top: "s1" slice_param { axis: 1 slice_point: 1 } }
layer { name: "t" type: "Tile" bottom: "s0" top: "t" tile_param { axis: 1 tiles: 2 } }
layer { name: "red" type: "Reduction" bottom: "s1" top: "red" reduction_param { axis: 1 operation: ASUM } }
layer { name: "sil" type: "Silence" bottom: "red" }
layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "m" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u" upsample_param { scale: 2 } }
layer { name: "sh" type: "ShuffleChannel" bottom: "data" top: "sh" shuffle_channel_param { group: 3 } }
layer { name: "acc" type: "Accuracy" bottom: "w" bottom: "label" top: "acc" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label2" top: "loss" loss_param { normalization: BATCH_SIZE } }
"""


def test_dynamic_batch_through_reshapes_crops_and_broadcasts():
    from netspec.proto import caffe_pb2
    from netspec.schema import parse_prototxt
    net = netspec.Net(parse_prototxt(DYNAMIC_EDGES, caffe_pb2.NetParameter()), netspec.TEST)
    random_weights(net)
    model = export_onnx(net, dynamic_batch=True)
    assert_close(compare(net, model, feeds=random_inputs(net, model, seed=1, batch=4), every_blob=True), "edges")
    # The same file still runs at batch 1.
    assert_close(compare(net, model, feeds=random_inputs(net, model, seed=2, batch=1), every_blob=True), "edges")


def test_dynamic_batch_refuses_a_net_fixed_to_its_batch():
    from netspec.onnx_export import ExportError
    from netspec.proto import caffe_pb2
    from netspec.schema import parse_prototxt
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }'
            'layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 3 dim: 4 } } }')
    net = netspec.Net(parse_prototxt(text, caffe_pb2.NetParameter()), netspec.TEST)
    with pytest.raises(ExportError, match="--dynamic-batch: the net does not run at another batch size: layer 'r'"):
        export_onnx(net, dynamic_batch=True)
    assert net.blobs["r"].shape == (3, 4)          # the net is put back as it was


# ---------------------------------------------------------------- the corpus
SMALL_INPUT = 32 * 32     # MNIST and CIFAR nets run by default; ImageNet-sized ones under -m slow


def _input_area(net_param):
    import test_corpus
    areas = [int(np.prod(s.dim[2:])) for layer in test_corpus.prepared(net_param, batch=1).layer
             if layer.type in ("Input", "DummyData")
             for s in (layer.input_param.shape if layer.type == "Input" else layer.dummy_data_param.shape)
             if len(s.dim) > 2]
    return max(areas, default=0)


def corpus_cases():
    try:
        import test_corpus
    except pytest.skip.Exception:
        return []
    cases = []
    for label, n in test_corpus.corpus_nets():
        if test_corpus.unsupported_types(n) or test_corpus.python_modules(n):
            continue
        marks = [pytest.mark.slow] if _input_area(n) > SMALL_INPUT else []
        cases.append(pytest.param(label, marks=marks))
    return cases


@pytest.mark.parametrize("label", corpus_cases())
def test_corpus_net_matches_netspec(label):
    """The TEST net (once per stage its rules name, as the corpus test builds it) at batch 1."""
    import test_corpus
    param = dict(test_corpus.corpus_nets())[label]
    for phase, stages in test_corpus.states(param):
        if phase != "TEST":
            continue
        net = netspec.Net(test_corpus.prepared(param, batch=1), netspec.TEST, stages=stages)
        random_weights(net)
        model = export_onnx(net)
        assert_close(compare(net, model, every_blob=True), f"{label} {stages}", [o.name for o in model.graph.output])


# ---------------------------------------------------------------- the command
def run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=repo())
    return subprocess.run([sys.executable, "-m", "netspec", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_export_command_writes_and_checks(tmp_path):
    net = netspec.Net(repo("models/lenet/lenet.prototxt"), netspec.TEST)
    random_weights(net)
    net.save(str(tmp_path / "w.caffemodel"))
    out = tmp_path / "lenet.onnx"
    proc = run_cli("export", "--format", "onnx", "--model", repo("models/lenet/lenet.prototxt"),
                   "--weights", str(tmp_path / "w.caffemodel"), "--output", str(out), "--check", "--dynamic-batch",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"wrote {out}: opset 21, 9 nodes, inputs data batchx1x28x28; outputs prob batchx10"
    assert lines[1].startswith("check: ONNX Runtime ")
    name, value = lines[2].split(":")
    assert name.strip() == "prob" and 0 <= float(value) <= TOL
    # The file holds the weights given: ORT on it equals netspec with them.
    session = ort_session(__import__("onnx").load(str(out)))
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    net.blobs["data"].reshape(3, 1, 28, 28)
    net.reshape()
    want = net.forward(data=x)["prob"]
    np.testing.assert_allclose(session.run(None, {"data": x})[0], want, rtol=1e-5, atol=1e-7)


def test_export_command_errors_are_one_line(tmp_path):
    bad = tmp_path / "py.prototxt"
    bad.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
                   'layer { name: "d" type: "Dropout" bottom: "data" top: "y" }\n')
    proc = run_cli("export", "--model", str(bad), "--output", str(tmp_path / "o.onnx"), "--phase", "TRAIN",
                   cwd=tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("netspec: error: layer 'd' (Dropout): no faithful ONNX form: TRAIN-phase Dropout is random; "
                    "export the TEST net (where it is the identity)"), proc.stderr[-1000:]
    assert not (tmp_path / "o.onnx").exists()
    proc = run_cli("export", "--model", str(bad), "--output", str(tmp_path / "o.onnx"), "--opset", "7", cwd=tmp_path)
    assert proc.returncode == 1 and "netspec: error: --opset 7: netspec exports opsets 13 to" in proc.stderr
