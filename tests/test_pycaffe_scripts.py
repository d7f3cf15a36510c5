"""pycaffe-style scripts run end to end, each in its own Python process with `import caffe`.

Each script is written here the way pycaffe users write theirs (classify.py-like
inference, draw_net, a Python layer with its own parameter trained by SGD, an FCN
built with coord_map); the checks compare their output with values worked out
independently in the test.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import netspec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(folder, name, source, *args):
    path = folder / name
    path.write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + str(folder), GLOG_minloglevel="1")
    result = subprocess.run([sys.executable, str(path), *map(str, args)], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result


# ---------------------------------------------------------------- classify.py-like

DEPLOY = """
name: 'tiny'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.3 } } }
layer { name: 'pool' type: 'Pooling' bottom: 'conv' top: 'pool' pooling_param { pool: AVE kernel_size: 4 } }
layer { name: 'fc' type: 'InnerProduct' bottom: 'pool' top: 'fc'
        inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'fc' top: 'prob' }
"""

CLASSIFY = """
import argparse, glob, sys
import numpy as np
import caffe

parser = argparse.ArgumentParser()
parser.add_argument("input_dir"); parser.add_argument("output_file")
parser.add_argument("--model_def"); parser.add_argument("--pretrained_model")
parser.add_argument("--center_only", action="store_true")
args = parser.parse_args()

caffe.set_mode_cpu()
classifier = caffe.Classifier(args.model_def, args.pretrained_model, image_dims=[8, 8],
                              mean=np.array([0.25, 0.5, 0.75]), raw_scale=2.0, channel_swap=[2, 1, 0])
inputs = [caffe.io.load_image(f) for f in sorted(glob.glob(args.input_dir + "/*.png"))]
print("Classifying %d inputs." % len(inputs))
predictions = classifier.predict(inputs, not args.center_only)
np.save(args.output_file, predictions)
"""


def _write_png(path, array):
    from PIL import Image
    Image.fromarray(array).save(path)


def test_classify_script(tmp_path):
    pytest.importorskip("PIL")
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    net = netspec.Net(str(deploy), netspec.TEST)
    weights = tmp_path / "tiny.caffemodel"
    net.save(str(weights))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(3)]
    for i, p in enumerate(pixels):
        _write_png(images / f"im{i}.png", p)

    result = run_script(tmp_path, "classify.py", CLASSIFY, images, tmp_path / "center.npy", "--model_def", deploy,
                        "--pretrained_model", weights, "--center_only")
    assert "Classifying 3 inputs." in result.stdout
    run_script(tmp_path, "classify.py", CLASSIFY, images, tmp_path / "over.npy", "--model_def", deploy,
               "--pretrained_model", weights)
    center, over = np.load(tmp_path / "center.npy"), np.load(tmp_path / "over.npy")
    assert center.shape == over.shape == (3, 5)
    np.testing.assert_allclose(over.sum(axis=1), 1, rtol=1e-5)

    def net_input(crop):
        # Preprocessing worked out by hand: [0, 1] image, RGB -> BGR, x2, minus the (BGR) mean, C x H x W.
        bgr = crop.astype(np.float64)[:, :, ::-1] / 255.0
        return (bgr * 2.0 - np.array([0.25, 0.5, 0.75])).transpose(2, 0, 1)

    def scores(crop):
        net.blobs["data"].data[0] = net_input(crop)
        return net.forward()["prob"][0].copy()

    expected_center = [scores(p[1:7, 1:7]) for p in pixels]
    np.testing.assert_allclose(center, expected_center, rtol=1e-4, atol=1e-6)
    corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    expected_over = []
    for p in pixels:
        crops = [p[y:y + 6, x:x + 6] for y, x in corners]
        crops += [c[:, ::-1] for c in crops]
        expected_over.append(np.mean([scores(c) for c in crops], axis=0))
    np.testing.assert_allclose(over, expected_over, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- draw_net.py-like

DRAW_NET = """
import sys
from google.protobuf import text_format
import caffe
import caffe.draw
from caffe.proto import caffe_pb2

net = caffe_pb2.NetParameter()
text_format.Merge(open(sys.argv[1]).read(), net)
phase = {"TRAIN": caffe.TRAIN, "TEST": caffe.TEST, "ALL": None}[sys.argv[3]]
print("Drawing net to %s" % sys.argv[2])
caffe.draw.draw_net_to_file(net, sys.argv[2], "LR", phase, True)
"""


def test_draw_net_script(tmp_path):
    lenet = os.path.join(REPO, "models", "lenet", "lenet_train_test.prototxt")
    out = tmp_path / "lenet.dot"
    result = run_script(tmp_path, "draw_net.py", DRAW_NET, lenet, out, "TEST")
    assert result.stdout == f"Drawing net to {out}\n"
    text = out.read_text()
    assert text.startswith('digraph "LeNet"')
    assert "lr mult: 1, 2" in text                    # lenet's conv/ip layers: lr_mult 1 (weights), 2 (bias)
    assert "Batch 100" in text and 'label="20"' in text     # edge labels: test batch, conv1's outputs
    assert "Batch 64" not in text                           # the TRAIN data layer is not drawn
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed")
    for ext, magic in (("png", b"\x89PNG"), ("jpg", b"\xff\xd8\xff")):
        image = tmp_path / f"lenet.{ext}"
        run_script(tmp_path, "draw_net.py", DRAW_NET, lenet, image, "ALL")
        assert image.read_bytes().startswith(magic)


def test_get_pydot_graph():
    pydot = pytest.importorskip("pydot")
    import caffe.draw
    from google.protobuf import text_format
    from caffe.proto import caffe_pb2
    with open(os.path.join(REPO, "models", "lenet", "lenet_train_test.prototxt")) as f:
        net = text_format.Parse(f.read(), caffe_pb2.NetParameter())
    graph = caffe.draw.get_pydot_graph(net, "TB", phase=caffe.TRAIN)
    assert isinstance(graph, pydot.Dot)
    labels = {node.get_label().strip('"').split("\\n")[0] for node in graph.get_nodes() if node.get_label()}
    assert {"conv1", "pool1", "ip2", "loss"} <= {label.split(" ")[0] for label in labels}
    assert caffe.draw.get_pooling_types_dict()[0] == "MAX"
    assert caffe.draw.get_layer_label(net.layer[2], "TB").startswith("conv1 (Convolution) ")


# ---------------------------------------------------------------- a Python layer with its own parameter

SCALE_LAYER = """
import caffe
import numpy as np


class LearnedScale(caffe.Layer):
    \"\"\"top = w * bottom, with w a parameter of the layer (pycaffe's add_blob).\"\"\"

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str or 1)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff
"""

TRAIN_SCALE = """
import json, sys
import caffe

caffe.set_random_seed(3)
solver = caffe.SGDSolver("solver.prototxt")
history = [float(solver.net.params["scale"][0].data[0])]
for _ in range(4):
    solver.step(1)
    history.append(float(solver.net.params["scale"][0].data[0]))
solver.snapshot()
net = caffe.Net("net.prototxt", caffe.TEST, weights="scale_iter_4.caffemodel")
json.dump({"history": history, "reloaded": float(net.params["scale"][0].data[0]),
           "loss": float(solver.net.blobs["loss"].data)}, open("out.json", "w"))
"""


def test_python_layer_with_add_blob_trains(tmp_path):
    (tmp_path / "scale_layer.py").write_text(textwrap.dedent(SCALE_LAYER))
    (tmp_path / "net.prototxt").write_text("""
        name: 'scale'
        layer { name: 'data' type: 'DummyData' top: 'x' top: 'y'
          dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 }
            data_filler { type: 'constant' value: 1.5 } data_filler { type: 'constant' value: 6 } } }
        layer { name: 'scale' type: 'Python' bottom: 'x' top: 'wx'
                python_param { module: 'scale_layer' layer: 'LearnedScale' param_str: '0.5' } }
        layer { name: 'loss' type: 'EuclideanLoss' bottom: 'wx' bottom: 'y' top: 'loss' }
    """)
    (tmp_path / "solver.prototxt").write_text("""
        net: 'net.prototxt' base_lr: 0.1 momentum: 0.5 lr_policy: 'fixed' max_iter: 10
        display: 0 snapshot_prefix: 'scale' snapshot_after_train: false
    """)
    run_script(tmp_path, "train_scale.py", TRAIN_SCALE)
    out = json.loads((tmp_path / "out.json").read_text())
    # By hand: loss = sum((w x - y)^2) / (2 N) over 6 values, N = 2, so dL/dw = 6 x (w x - y) / N;
    # SGD with momentum: v = 0.5 v + lr dL/dw, w -= v.
    w, v, expected = 0.5, 0.0, [0.5]
    for _ in range(4):
        grad = 6 * 1.5 * (w * 1.5 - 6) / 2
        v = 0.5 * v + 0.1 * grad
        w -= v
        expected.append(w)
    np.testing.assert_allclose(out["history"], expected, rtol=1e-5)
    assert out["reloaded"] == pytest.approx(expected[-1], rel=1e-6)


# ---------------------------------------------------------------- FCN with coord_map

FCN = """
import json
import numpy as np
import caffe
from caffe import layers as L, params as P
from caffe.coord_map import crop

n = caffe.NetSpec()
n.data = L.Input(shape=dict(dim=[1, 3, 20, 24]))
n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=100, weight_filler=dict(type='xavier'))
n.relu1 = L.ReLU(n.conv1, in_place=True)
n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
n.score = L.Convolution(n.pool1, num_output=2, kernel_size=1, weight_filler=dict(type='xavier'))
n.upscore = L.Deconvolution(n.score, convolution_param=dict(num_output=2, kernel_size=4, stride=2,
                                                            bias_term=False))
n.score_crop = crop(n.upscore, n.data)
proto = n.to_proto()
open("fcn.prototxt", "w").write(str(proto))
net = caffe.Net("fcn.prototxt", caffe.TEST)
net.blobs["data"].data[...] = np.random.rand(*net.blobs["data"].data.shape)
out = net.forward()["score_crop"]
crop_layer = [l for l in proto.layer if l.type == "Crop"][0]
print(json.dumps({"offset": list(crop_layer.crop_param.offset), "axis": crop_layer.crop_param.axis,
                  "out": list(out.shape), "upscore": list(net.blobs["upscore"].data.shape)}))
"""


def test_fcn_built_with_coord_map(tmp_path):
    out = json.loads(run_script(tmp_path, "fcn.py", FCN).stdout)
    # By hand: conv (k 3, pad 100) maps x -> x + 99, pool (k 2, s 2) x -> x / 2 - 1/4, the 1x1 score
    # conv is the identity, deconv (k 4, s 2) x -> 2 x + 3/2: data -> upscore is x -> x + 100.
    assert out["offset"] == [100] and out["axis"] == 2
    assert out["out"] == [1, 2, 20, 24]                 # cropped back to the input's size
    assert out["upscore"] == [1, 2, 220, 224]           # conv 218 x 222 -> pool 109 x 111 -> deconv 220 x 224
