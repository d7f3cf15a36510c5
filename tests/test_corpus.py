"""Conformance on the corpus of real Caffe files in ../shared/caffe-corpus (see its README.md).

Every file parses (V1 files after upgrade) except the one malformed original, which must be
rejected with its path and line 41. Nets are the non-solver files plus the nets embedded in
solver files (net_param, train_net_param, test_net_param).

Every net whose layer types are all registered builds in TRAIN and in TEST (in TEST once per
stage its rules name, as a solver's test_state would select) at Caffe's own batch sizes, and in
TEST runs forward at batch 1 with random weights, every output finite (TRAIN differs only in
Dropout and BatchNorm statistics, covered by the layer tests; skipping its forward keeps the run
inside its time budget). Weight fillers are dropped before building (filling AlexNet's 60M
weights twice per phase would dominate the run). The data the corpus names is not here, so:

  Data, ImageData and MemoryData layers (no bottoms, registered here, but reading sources that
  are absent) become DummyData layers with the same name, tops and rules, whose tops have the
  shapes Caffe's layer would produce: (batch_size, C, H, W) and a label (batch_size,), where
  batch_size is the layer's own, H x W is crop_size when set, else the image size (ImageData:
  new_height x new_width when set), and C x H x W before cropping is the data set's known shape,
  told by the source path: MNIST pairs 2x28x28 ("siamese"), MNIST 1x28x28, CIFAR-10 3x32x32,
  anything else ImageNet-style 3x256x256 (3 channels unless ImageData says is_color: false).
  Images are uniform in [0, 1), labels 0 (a valid class for every loss).

For the forward the net is rebuilt with batch 1 in those DummyData layers and in every Input
layer; fully convolutional nets (those with a Crop layer, which crops the upsampled scores back
to the input's size) also get their Input images shrunk to 64x64 to keep the run short.

HDF5Data layers run for real, on HDF5 files written here in place of the absent ones: each top a
dataset of 2 x batch_size rows, "data" rows 4 floats in [0, 1) (the 4-vectors of Caffe's
hdf5_classification example, the corpus's only HDF5 nets), other tops zeros.

WindowData layers run for real too: their window file becomes one written here, listing one
100x80 PNG with foreground windows of classes 1..3 and background windows, and a mean_file a
3x256x256 mean (ImageNet's size).

`type: "Python"` layers need their module: those nets must fail with ONE NetspecError naming
every unsupported type in the net, or the missing module. No other refusal is allowed.
"""
import atexit
import functools
import os
import shutil
import tempfile
import time

import numpy as np
import pytest

from conftest import SHARED
from netspec.errors import NetspecError, ParseError
from netspec.layers import LAYER_REGISTRY
from netspec.net import Net
from netspec.proto import caffe_pb2
from netspec.schema import read_net, read_solver
from test_models import random_weights

CORPUS = os.path.join(SHARED, "caffe-corpus")
if not os.path.isdir(CORPUS):
    pytest.skip(f"the Caffe corpus is not at {CORPUS}", allow_module_level=True)

FILES = sorted(os.path.relpath(os.path.join(d, f), CORPUS) for d, _, names in os.walk(CORPUS)
               for f in names if f != "README.md")
MALFORMED = "BVLC-caffe-v1-format/examples/mnist/mnist_autoencoder.prototxt"
REPLACED_DATA = ("Data", "ImageData", "MemoryData")
SMALL_FCN_INPUT = 64

# What the corpus holds, checked below so that a change in any outcome is noticed.
EXPECTED_FILES = 81
EXPECTED_PARSED = 80                 # all but MALFORMED
EXPECTED_NETS = 51                   # 50 net files that parse + 1 net embedded in a solver
EXPECTED_REFUSED = {
    "missing Python module": 6,
}


def is_solver(rel):
    return "solver" in os.path.basename(rel)


# ---------------------------------------------------------------- reading
@functools.lru_cache(maxsize=None)
def parsed(rel):
    """(kind, message) for a corpus file: 'net' NetParameter or 'solver' SolverParameter."""
    path = os.path.join(CORPUS, rel)
    if is_solver(rel):
        return "solver", read_solver(path)
    return "net", read_net(path)


def corpus_nets():
    """[(label, NetParameter)] for every net file that parses and every net inside a solver."""
    nets = []
    for rel in FILES:
        if rel == MALFORMED:
            continue
        kind, message = parsed(rel)
        if kind == "net":
            nets.append((rel, message))
            continue
        for field in ("net_param", "train_net_param"):
            if message.HasField(field):
                nets.append((f"{rel} ({field})", getattr(message, field)))
        for i, net in enumerate(message.test_net_param):
            nets.append((f"{rel} (test_net_param[{i}])", net))
    return nets


# ---------------------------------------------------------------- data-layer replacement
def dataset_shape(source, layer):
    s = source.lower()
    if "siamese" in s:
        return (2, 28, 28)
    if "mnist" in s:
        return (1, 28, 28)
    if "cifar" in s:
        return (3, 32, 32)
    channels = 1 if layer.type == "ImageData" and not layer.image_data_param.is_color else 3
    return (channels, 256, 256)


def replacement_shapes(layer):
    """The top shapes Caffe's data layer would produce: [(N, C, H, W), (N,)]."""
    if layer.type == "MemoryData":
        p = layer.memory_data_param
        return [(p.batch_size, p.channels, p.height, p.width), (p.batch_size, 1, 1, 1)]
    p = layer.data_param if layer.type == "Data" else layer.image_data_param
    c, h, w = dataset_shape(p.source, layer)
    if layer.type == "ImageData" and p.new_height and p.new_width:
        h, w = p.new_height, p.new_width
    crop = layer.transform_param.crop_size
    if crop:
        h = w = crop
    return [(p.batch_size, c, h, w), (p.batch_size,)]


def prepared(net_param, batch=None):
    """A copy of the net with its data layers replaced and fillers dropped (and, with `batch`, batch
    and FCN input sizes set)."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    fully_convolutional = any(layer.type == "Crop" for layer in net.layer)
    for layer in net.layer:
        strip_fillers(layer)
        if layer.type in REPLACED_DATA and not layer.bottom:
            shapes = replacement_shapes(layer)[:len(layer.top)]
            for field in ("data_param", "image_data_param", "memory_data_param", "transform_param"):
                layer.ClearField(field)
            layer.type = "DummyData"
            p = layer.dummy_data_param
            for k, shape in enumerate(shapes):
                p.shape.add().dim.extend((batch or shape[0],) + tuple(shape[1:]))
                if k == 0 and batch:
                    p.data_filler.add(type="uniform", min=0, max=1)
                else:      # labels; and images at Caffe's batch size, where only shapes matter
                    p.data_filler.add(type="constant", value=0)
        elif layer.type == "HDF5Data":
            layer.hdf5_data_param.source = hdf5_source(layer)
            if batch:
                layer.hdf5_data_param.batch_size = batch
        elif layer.type == "WindowData":
            source, mean_file = window_fixtures()
            layer.window_data_param.source, layer.window_data_param.root_folder = source, ""
            if layer.transform_param.mean_file:
                layer.transform_param.mean_file = mean_file
            if batch:
                layer.window_data_param.batch_size = batch
        elif layer.type == "Input" and batch:
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
                if fully_convolutional and len(shape.dim) == 4:
                    shape.dim[2] = shape.dim[3] = SMALL_FCN_INPUT
    return net


HDF5_FEATURES = 4
_fixtures = {}


def hdf5_source(layer):
    """A file list naming one HDF5 file with a dataset per top (written once per layer setting)."""
    import h5py
    p = layer.hdf5_data_param
    key = (p.source, p.batch_size, tuple(layer.top))
    if key not in _fixtures:
        stem = os.path.join(fixture_dir(), f"source{len(_fixtures)}")
        rows = 2 * max(1, p.batch_size)
        with h5py.File(stem + ".h5", "w") as f:
            for top in layer.top:
                f[top] = (np.random.default_rng(0).random((rows, HDF5_FEATURES), np.float32) if top == "data"
                          else np.zeros(rows, np.float32))
        with open(stem + ".txt", "w") as f:
            f.write(stem + ".h5\n")
        _fixtures[key] = stem + ".txt"
    return _fixtures[key]


def fixture_dir():
    if "dir" not in _fixtures:
        _fixtures["dir"] = tempfile.mkdtemp(prefix="corpus-data-")
        atexit.register(shutil.rmtree, _fixtures["dir"], True)
    return _fixtures["dir"]


def window_fixtures():
    """(window file, mean file) standing in for a WindowData layer's absent ones."""
    if "window" not in _fixtures:
        from PIL import Image
        folder = fixture_dir()
        image = os.path.join(folder, "window.png")
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 100, 3), np.uint8)).save(image)
        windows = [(1, 0.9, 10, 10, 50, 40), (2, 0.7, 30, 5, 90, 70), (3, 0.6, 0, 0, 99, 79),
                   (0, 0.1, 60, 40, 95, 75), (0, 0.3, 5, 50, 40, 79)]
        source = os.path.join(folder, "windows.txt")
        with open(source, "w") as f:
            f.write(f"# 0\n{image}\n3\n80\n100\n{len(windows)}\n")
            f.writelines(" ".join(map(str, w)) + "\n" for w in windows)
        mean = caffe_pb2.BlobProto(num=1, channels=3, height=256, width=256)
        mean.data.extend(np.full(3 * 256 * 256, 100, np.float32))
        mean_file = os.path.join(folder, "mean.binaryproto")
        with open(mean_file, "wb") as f:
            f.write(mean.SerializeToString())
        _fixtures["window"] = (source, mean_file)
    return _fixtures["window"]


FILLER_FIELDS = ("weight_filler", "bias_filler", "filler")


def strip_fillers(layer):
    """Drop weight fillers (parameters start at Caffe's default constant 0): filling AlexNet's 60M
    weights with Gaussians twice per phase would dominate the run; random_weights fills them later."""
    for field, value in layer.ListFields():
        if field.message_type is not None and not field.is_repeated:
            for name in FILLER_FIELDS:
                if name in value.DESCRIPTOR.fields_by_name:
                    value.ClearField(name)


def states(net_param):
    """(phase name, stages) pairs to build: TRAIN, and TEST once per stage the rules name."""
    stages = sorted({s for layer in net_param.layer for rule in list(layer.include) + list(layer.exclude)
                     for s in rule.stage})
    return [("TRAIN", [])] + ([("TEST", [s]) for s in stages] if stages else [("TEST", [])])


# ---------------------------------------------------------------- outcomes
def unsupported_types(net_param):
    return sorted({layer.type for layer in net_param.layer if layer.type not in LAYER_REGISTRY})


def python_modules(net_param):
    return sorted({layer.python_param.module for layer in net_param.layer if layer.type == "Python"})


@functools.lru_cache(maxsize=None)
def outcome(label):
    """('built', seconds, {phase: {blob: shape}}) or ('refused', reason, message) for one corpus net."""
    net_param = dict(corpus_nets())[label]
    start = time.perf_counter()
    shapes = {}
    try:
        for phase, stages in states(net_param):
            net = Net(prepared(net_param), phase, stages=stages)          # Caffe's batch sizes and shapes
            shapes.setdefault(phase, {}).update((name, blob.shape) for name, blob in net.blobs.items())
            net.close()                   # a WindowData layer's prefetch thread
            del net
            if phase != "TEST":
                continue
            net = Net(prepared(net_param, batch=1), phase, stages=stages)
            random_weights(net)
            net.forward()
            net.close()
            for name in net.outputs:
                assert np.all(np.isfinite(net.blobs[name].data)), f"{label} {phase}: output '{name}' not finite"
    except NetspecError as e:
        message = str(e)
        missing = unsupported_types(net_param)
        if missing:
            reason = ", ".join(f"unknown layer type '{t}'" for t in missing)
        elif python_modules(net_param) and "cannot import module" in message:
            reason = "missing Python module"
        else:
            reason = "other"
        return ("refused", reason, message)
    return ("built", time.perf_counter() - start, shapes)


# ---------------------------------------------------------------- tests
def test_corpus_file_count():
    assert len(FILES) == EXPECTED_FILES


@pytest.mark.parametrize("rel", FILES)
def test_file_parses(rel):
    if rel == MALFORMED:
        with pytest.raises(ParseError) as info:
            parsed(rel)
        message = str(info.value)
        assert message.startswith(f"{os.path.join(CORPUS, rel)}:41:"), message
        assert "transform_param" in message and "\n" not in message
        return
    kind, message = parsed(rel)
    if kind == "net":
        assert len(message.layer) > 0 and len(message.layers) == 0      # V1 entries upgraded
        assert not message.input_dim and not message.input
    else:
        assert not message.HasField("solver_type")


def net_labels():
    return [label for label, _ in corpus_nets()]


@pytest.mark.parametrize("label", net_labels())
def test_net_builds_or_is_refused_clearly(label):
    net_param = dict(corpus_nets())[label]
    result = outcome(label)
    missing, modules = unsupported_types(net_param), python_modules(net_param)
    if not missing and not (modules and any(m not in _importable() for m in modules)):
        assert result[0] == "built", f"{label}: should build but was refused: {result[2]}"
        return
    assert result[0] == "refused", f"{label} uses {missing or modules} yet built"
    _, reason, message = result
    assert reason != "other", f"{label}: refused for an unexpected reason: {message}"
    assert "\n" not in message
    for t in missing:
        assert f"unknown layer type '{t}'" in message, message
    if not missing:
        assert any(f"cannot import module '{m}'" in message for m in modules), message


@functools.lru_cache(maxsize=None)
def _importable():
    import importlib.util
    return {m for _, n in corpus_nets() for m in python_modules(n) if importlib.util.find_spec(m) is not None}


# Caffe's shapes for a few blobs of nets built at their own batch sizes.
KNOWN_SHAPES = [
    ("BVLC-caffe/models/bvlc_alexnet/train_val.prototxt", "TRAIN", "fc8", (256, 1000)),
    ("BVLC-caffe/models/bvlc_alexnet/train_val.prototxt", "TEST", "fc8", (50, 1000)),
    ("BVLC-caffe-v1-format/models/bvlc_reference_caffenet/train_val.prototxt", "TRAIN", "pool5", (256, 256, 6, 6)),
    ("BVLC-caffe/models/bvlc_googlenet/train_val.prototxt", "TRAIN", "loss1/fc", (32, 1024)),
    ("BVLC-caffe/models/finetune_flickr_style/train_val.prototxt", "TRAIN", "fc8_flickr", (50, 20)),
    ("BVLC-caffe-v1-format/examples/siamese/mnist_siamese_train_test.prototxt", "TRAIN", "feat_p", (64, 2)),
    ("BVLC-caffe-v1-format/examples/cifar10/cifar10_quick_train_test.prototxt", "TEST", "ip2", (100, 10)),
    ("BVLC-caffe/examples/net_surgery/bvlc_caffenet_full_conv.prototxt", "TEST", "fc8-conv", (1, 1000, 8, 8)),
    ("shelhamer-fcn.berkeleyvision.org/voc-fcn8s/deploy.prototxt", "TEST", "score", (1, 21, 500, 500)),
    ("KaimingHe-deep-residual-networks/prototxt/ResNet-152-deploy.prototxt", "TEST", "res5c", (1, 2048, 7, 7)),
    ("forresti-SqueezeNet/SqueezeNet_v1.0/train_val.prototxt", "TRAIN", "fire9/concat", (32, 512, 13, 13)),
    ("shicai-MobileNet-Caffe/mobilenet_v2_deploy.prototxt", "TEST", "pool6", (1, 1280, 1, 1)),
]


@pytest.mark.parametrize("rel,phase,blob,shape", KNOWN_SHAPES)
def test_known_shapes_at_caffe_batch_sizes(rel, phase, blob, shape):
    result = outcome(rel)
    assert result[0] == "built", result
    assert result[2][phase][blob] == shape


def test_corpus_counts():
    nets = corpus_nets()
    parsed_count = 0
    for rel in FILES:
        try:
            parsed(rel)
            parsed_count += 1
        except ParseError:
            assert rel == MALFORMED
    results = {label: outcome(label) for label, _ in nets}
    built = sorted(label for label, r in results.items() if r[0] == "built")
    refused = {}
    for label, r in results.items():
        if r[0] == "refused":
            refused.setdefault(r[1], []).append(label)
    print(f"\ncorpus: {len(FILES)} files, {parsed_count} parsed, {len(nets)} nets, {len(built)} built "
          f"(TRAIN and TEST at Caffe's batch sizes, TEST forward at batch 1), {sum(map(len, refused.values()))} refused")
    for reason, labels in sorted(refused.items()):
        print(f"  refused ({reason}): {len(labels)}: {', '.join(labels)}")
    slowest = sorted(((r[1], label) for label, r in results.items() if r[0] == "built"), reverse=True)[:5]
    print("  slowest: " + ", ".join(f"{label} {s:.1f}s" for s, label in slowest))
    assert parsed_count == EXPECTED_PARSED
    assert len(nets) == EXPECTED_NETS
    assert {reason: len(labels) for reason, labels in refused.items()} == EXPECTED_REFUSED
    assert len(built) == EXPECTED_NETS - sum(EXPECTED_REFUSED.values())
