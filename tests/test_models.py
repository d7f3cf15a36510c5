"""The shipped models: each builds in both phases with Caffe's shapes, and the small ones train.

Nets that read LMDBs are pointed at data made here: random CIFAR-shaped images for CIFAR-10
(the data set is not shipped), subsets of the shipped MNIST for the autoencoder and the siamese
net. Everything else in the shipped files is used as written; the training tests override only
the iteration counts, test settings and snapshot paths of the shipped solvers (and the batch size
or learning rate where the test says why).
"""
import gzip
import importlib.util
import os

import numpy as np
import pytest

import netspec
from netspec.datasets.image_mean import compute_image_mean
from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically
from netspec.proto import caffe_pb2
from netspec.schema import read_net, read_solver, write_text_message
from netspec.solver import Solver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def repo(*parts):
    return os.path.join(REPO, *parts)


DEPLOY = [
    "models/caffenet/deploy.prototxt",
    "models/googlenet/deploy.prototxt",
    "models/resnet50/ResNet-50-deploy.prototxt",
    "models/squeezenet/squeezenet_v1.1_deploy.prototxt",
    "models/mobilenet/mobilenet_deploy.prototxt",
    "models/cifar10/cifar10_quick.prototxt",
    "models/cifar10/cifar10_full.prototxt",
    "models/mnist_siamese/mnist_siamese.prototxt",
]
TRAIN_TEST = [
    "models/caffenet/train_val.prototxt",
    "models/cifar10/cifar10_quick_train_test.prototxt",
    "models/cifar10/cifar10_full_train_test.prototxt",
    "models/mnist_autoencoder/mnist_autoencoder.prototxt",
    "models/mnist_siamese/mnist_siamese_train_test.prototxt",
]
SOLVERS = {
    "solvers/caffenet_solver.prototxt": "models/caffenet/train_val.prototxt",
    "solvers/cifar10_quick_solver.prototxt": "models/cifar10/cifar10_quick_train_test.prototxt",
    "solvers/cifar10_quick_solver_lr1.prototxt": "models/cifar10/cifar10_quick_train_test.prototxt",
    "solvers/cifar10_full_solver.prototxt": "models/cifar10/cifar10_full_train_test.prototxt",
    "solvers/cifar10_full_solver_lr1.prototxt": "models/cifar10/cifar10_full_train_test.prototxt",
    "solvers/cifar10_full_solver_lr2.prototxt": "models/cifar10/cifar10_full_train_test.prototxt",
    "solvers/mnist_autoencoder_solver.prototxt": "models/mnist_autoencoder/mnist_autoencoder.prototxt",
    "solvers/mnist_autoencoder_solver_nesterov.prototxt": "models/mnist_autoencoder/mnist_autoencoder.prototxt",
    "solvers/mnist_autoencoder_solver_adagrad.prototxt": "models/mnist_autoencoder/mnist_autoencoder.prototxt",
    "solvers/mnist_autoencoder_solver_adadelta.prototxt": "models/mnist_autoencoder/mnist_autoencoder.prototxt",
    "solvers/mnist_siamese_solver.prototxt": "models/mnist_siamese/mnist_siamese_train_test.prototxt",
}


# ---------------------------------------------------------------- data made for the tests
def read_mnist(count):
    """The first `count` shipped MNIST training images (N x 28 x 28 uint8) and labels, read directly."""
    with gzip.open(repo("data/mnist/train-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16, count=count * 784).reshape(count, 28, 28)
    with gzip.open(repo("data/mnist/train-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8, count=count)
    return images, labels


def write_images(path, images, labels):
    records = ((b"%08d" % i, array_to_datum(img, lab).SerializeToString()) for i, (img, lab) in
               enumerate(zip(images, labels)))
    write_lmdb_atomically(str(path), records)
    return str(path)


def cifar_like(count, seed):
    """Random 3x32x32 uint8 images whose class (0..9) is a fixed random colour pattern under noise."""
    templates = np.random.default_rng(10).uniform(0, 255, (10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)
    r = np.random.default_rng(seed)
    labels = r.integers(0, 10, count)
    images = 0.6 * templates[labels] + 0.4 * r.uniform(0, 255, (count, 3, 32, 32))
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Shipped data path -> a path under tmp holding data of the same kind."""
    root = tmp_path_factory.mktemp("model_data")
    paths = {}
    images, labels = cifar_like(600, seed=1)
    paths["data/cifar10/cifar10_train_lmdb"] = write_images(root / "cifar_train", images[:500], labels[:500])
    paths["data/cifar10/cifar10_test_lmdb"] = write_images(root / "cifar_test", images[500:], labels[500:])
    mean = root / "cifar_mean.binaryproto"
    compute_image_mean(paths["data/cifar10/cifar10_train_lmdb"], str(mean))
    paths["data/cifar10/mean.binaryproto"] = str(mean)
    digits, digit_labels = read_mnist(1200)
    paths["data/mnist/mnist_train_lmdb"] = write_images(root / "mnist_train", digits[:1000, None],
                                                        digit_labels[:1000])
    paths["data/mnist/mnist_test_lmdb"] = write_images(root / "mnist_test", digits[1000:, None], digit_labels[1000:])
    pairs_tool = load_pairs_tool()
    for name, sl in (("train", slice(0, 1000)), ("test", slice(1000, 1200))):
        pairs, same = pairs_tool.make_pairs(digits[sl], digit_labels[sl], seed=3)
        dest = str(root / f"siamese_{name}")
        pairs_tool.write_pairs(pairs, same, dest)
        paths[f"data/mnist/mnist_siamese_{name}_lmdb"] = dest
    imagenet_style(root, paths)
    paths["root"] = root
    return paths


def imagenet_style(root, paths):
    """The README's data section on a tiny ImageNet-style folder: JPEGs in class folders and list
    files, convert_imageset (resized to 256x256, encoded, shuffled) and compute_image_mean."""
    from PIL import Image
    from netspec.datasets.imageset import convert_imageset
    rng = np.random.default_rng(4)
    for split, count in (("train", 6), ("val", 2)):
        lines = []
        for i in range(count):
            name = f"n0{i % 3}/{split}_{i}.JPEG"
            (root / "images" / split / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (60 + i, 80, 3), dtype=np.uint8)).save(
                root / "images" / split / name)
            lines.append(f"{name} {i % 3}\n")
        (root / "images" / f"{split}.txt").write_text("".join(lines))
        db = str(root / f"images_{split}_lmdb")
        assert convert_imageset(f"{root}/images/{split}/", str(root / "images" / f"{split}.txt"), db,
                                shuffle=True, resize_height=256, resize_width=256, encoded=True,
                                show_progress=False) == (count, 0)
        paths[f"data/images_{split}_lmdb"] = db
    compute_image_mean(paths["data/images_train_lmdb"], str(root / "images_mean.binaryproto"))
    paths["data/images_mean.binaryproto"] = str(root / "images_mean.binaryproto")


def load_pairs_tool():
    spec = importlib.util.spec_from_file_location("create_mnist_siamese",
                                                  repo("models/mnist_siamese/create_mnist_siamese.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def localized(model, data, batch=None):
    """The shipped net with its data paths (and optionally its batch sizes) swapped; a NetParameter."""
    net = read_net(repo(model))
    for layer in net.layer:
        if layer.type != "Data":
            continue
        source = layer.data_param.source
        assert source in data, f"{model}: layer '{layer.name}' reads {source}, which the tests do not provide"
        layer.data_param.source = data[source]
        if layer.transform_param.mean_file:
            layer.transform_param.mean_file = data[layer.transform_param.mean_file]
        if batch:
            layer.data_param.batch_size = batch
    return net


def random_weights(net, seed=0):
    """Weights that keep activations in range: N(0, 1/fan_in) weights, zero biases, identity norms.

    Large blobs repeat one block of 2**20 normal draws: cheap, and random enough for a forward."""
    pool = np.random.default_rng(seed).standard_normal(1 << 20, dtype=np.float32)
    for layer in net.layers:
        for j, blob in enumerate(layer.blobs):
            if layer.type == "BatchNorm":
                blob.data[...] = 0.0 if j == 0 else 1.0          # mean 0, variance 1, scale factor 1
            elif layer.type == "Scale":
                blob.data[...] = 1.0 if j == 0 else 0.0
            elif layer.type == "PReLU":
                blob.data[...] = 0.25
            elif blob.data.ndim >= 2:
                fan_in = max(1, blob.count // blob.shape[0])
                blob.data[...] = np.resize(pool, blob.shape) * np.float32(1 / np.sqrt(fan_in))
            else:
                blob.data[...] = 0.0


# ---------------------------------------------------------------- every model builds
def test_model_list_is_complete():
    # Relative paths first: the checkout's own path may hold "/lenet/" (a worktree named so).
    found = (os.path.relpath(os.path.join(d, f), REPO) for d, _, files in os.walk(repo("models"))
             for f in files if f.endswith(".prototxt"))
    shipped = sorted(p for p in found if not p.startswith("models/lenet/"))
    assert shipped == sorted(DEPLOY + TRAIN_TEST)


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("model", DEPLOY)
def test_deploy_model_builds(model, phase):
    net = netspec.Net(repo(model), phase)
    data = net.blobs["data"]
    assert net.inputs == ["data"] and len(data.shape) == 4
    assert net.outputs, model


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("model", TRAIN_TEST)
def test_train_test_model_builds(model, phase, data):
    stages = [["test-on-train"], ["test-on-test"]] if "autoencoder" in model and phase == "TEST" else [[]]
    for stage in stages:
        net = netspec.Net(localized(model, data, batch=2 if "caffenet" in model else None), phase, stages=stage)
        assert net.outputs
        if phase == "TRAIN":
            assert "accuracy" not in net.blobs


@pytest.mark.parametrize("solver_file,model", sorted(SOLVERS.items()))
def test_solvers_point_at_shipped_models(solver_file, model):
    param = read_solver(repo(solver_file))
    assert param.net == model
    assert os.path.isfile(repo(param.net))
    assert param.snapshot_prefix.startswith("snapshots/")
    assert len(param.test_iter) == (2 if "autoencoder" in model else 1)


# Shapes worked out by hand from the architectures (out = floor or, for pooling, ceil of
# (in + 2 pad - kernel) / stride, + 1).
SHAPES = {
    "models/caffenet/deploy.prototxt": {
        "conv1": (10, 96, 55, 55), "pool1": (10, 96, 27, 27), "conv2": (10, 256, 27, 27),
        "pool2": (10, 256, 13, 13), "conv5": (10, 256, 13, 13), "pool5": (10, 256, 6, 6),
        "fc6": (10, 4096), "fc8": (10, 1000), "prob": (10, 1000)},
    "models/googlenet/deploy.prototxt": {
        "conv1/7x7_s2": (10, 64, 112, 112), "pool1/3x3_s2": (10, 64, 56, 56), "pool2/3x3_s2": (10, 192, 28, 28),
        "inception_3a/output": (10, 256, 28, 28), "inception_3b/output": (10, 480, 28, 28),
        "inception_4a/output": (10, 512, 14, 14), "inception_4e/output": (10, 832, 14, 14),
        "inception_5b/output": (10, 1024, 7, 7), "pool5/7x7_s1": (10, 1024, 1, 1),
        "loss3/classifier": (10, 1000), "prob": (10, 1000)},
    "models/resnet50/ResNet-50-deploy.prototxt": {
        "conv1": (1, 64, 112, 112), "pool1": (1, 64, 56, 56), "res2c": (1, 256, 56, 56),
        "res3d": (1, 512, 28, 28), "res4f": (1, 1024, 14, 14), "res5c": (1, 2048, 7, 7),
        "pool5": (1, 2048, 1, 1), "fc1000": (1, 1000), "prob": (1, 1000)},
    "models/squeezenet/squeezenet_v1.1_deploy.prototxt": {
        "conv1": (10, 64, 113, 113), "pool1": (10, 64, 56, 56), "fire2/concat": (10, 128, 56, 56),
        "pool3": (10, 128, 28, 28), "pool5": (10, 256, 14, 14), "fire9/concat": (10, 512, 14, 14),
        "conv10": (10, 1000, 14, 14), "pool10": (10, 1000, 1, 1), "prob": (10, 1000, 1, 1)},
    "models/mobilenet/mobilenet_deploy.prototxt": {
        "conv1": (1, 32, 112, 112), "conv2_1/dw": (1, 32, 112, 112), "conv2_2/dw": (1, 64, 56, 56),
        "conv5_6/sep": (1, 1024, 7, 7), "conv6/sep": (1, 1024, 7, 7), "pool6": (1, 1024, 1, 1),
        "fc7": (1, 1000, 1, 1), "prob": (1, 1000, 1, 1)},
    "models/cifar10/cifar10_quick.prototxt": {
        "conv1": (1, 32, 32, 32), "pool1": (1, 32, 16, 16), "pool2": (1, 32, 8, 8), "pool3": (1, 64, 4, 4),
        "ip1": (1, 64), "prob": (1, 10)},
    "models/cifar10/cifar10_full.prototxt": {
        "pool1": (1, 32, 16, 16), "norm2": (1, 32, 8, 8), "pool3": (1, 64, 4, 4), "prob": (1, 10)},
    "models/mnist_siamese/mnist_siamese.prototxt": {
        "conv1": (100, 20, 24, 24), "pool2": (100, 50, 4, 4), "ip1": (100, 500), "feat": (100, 2)},
}


@pytest.mark.parametrize("model", sorted(SHAPES))
def test_deploy_shapes(model):
    net = netspec.Net(repo(model), netspec.TEST)
    for blob, shape in SHAPES[model].items():
        assert net.blobs[blob].shape == shape, f"{model}: {blob}"


def test_imagenet_parameter_shapes_match_caffe_models():
    """The blob shapes real .caffemodel files carry for a few layers of each net."""
    expect = {
        "models/caffenet/deploy.prototxt": {"conv2": [(256, 48, 5, 5), (256,)], "fc6": [(4096, 9216), (4096,)]},
        "models/googlenet/deploy.prototxt": {"inception_3a/3x3": [(128, 96, 3, 3), (128,)],
                                             "loss3/classifier": [(1000, 1024), (1000,)]},
        "models/resnet50/ResNet-50-deploy.prototxt": {
            "conv1": [(64, 3, 7, 7), (64,)], "bn_conv1": [(64,), (64,), (1,)], "scale_conv1": [(64,), (64,)],
            "res2a_branch2a": [(64, 64, 1, 1)], "fc1000": [(1000, 2048), (1000,)]},
        "models/squeezenet/squeezenet_v1.1_deploy.prototxt": {"fire2/expand3x3": [(64, 16, 3, 3), (64,)],
                                                              "conv10": [(1000, 512, 1, 1), (1000,)]},
        "models/mobilenet/mobilenet_deploy.prototxt": {"conv2_1/dw": [(32, 1, 3, 3)],
                                                       "conv6/sep": [(1024, 1024, 1, 1)],
                                                       "fc7": [(1000, 1024, 1, 1), (1000,)]},
    }
    for model, layers in expect.items():
        net = netspec.Net(repo(model), netspec.TEST)
        for name, shapes in layers.items():
            assert [b.shape for b in net.params[name]] == shapes, f"{model}: {name}"


def test_resnet50_runs_at_batch_1():
    net = netspec.Net(repo("models/resnet50/ResNet-50-deploy.prototxt"), netspec.TEST)
    random_weights(net, seed=5)
    out = net.forward(data=np.random.default_rng(5).standard_normal((1, 3, 224, 224)))
    assert net.blobs["pool5"].shape == (1, 2048, 1, 1)
    # pool5 is the mean of res5c over its 7x7 window.
    res5c = net.blobs["res5c"].data[0]
    assert np.abs(res5c).max() > 0
    assert np.allclose(net.blobs["pool5"].data[0, :, 0, 0], res5c.mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)
    prob = out["prob"]
    assert prob.shape == (1, 1000) and np.isclose(prob.sum(), 1.0, atol=1e-4) and np.all(prob >= 0)


def test_siamese_branches_share_every_weight(data):
    net = netspec.Net(localized("models/mnist_siamese/mnist_siamese_train_test.prototxt", data), netspec.TRAIN)
    for name in ("conv1", "conv2", "ip1", "ip2", "feat"):
        for a, b in zip(net.params[name], net.params[name + "_p"]):
            assert a is b
    assert len(net.learnable_params) == 10       # five weight/bias pairs, counted once
    # Deploy weights come from the training net by layer name.
    deploy = netspec.Net(repo("models/mnist_siamese/mnist_siamese.prototxt"), netspec.TEST)
    deploy.copy_from(net.to_proto())
    assert np.array_equal(deploy.params["feat"][0].data, net.params["feat_p"][0].data)


# ---------------------------------------------------------------- training
def make_solver(tmp_path, solver_file, model, data, iters, batch=None, **overrides):
    net_path = tmp_path / "net.prototxt"
    write_text_message(str(net_path), localized(model, data, batch))
    param = read_solver(repo(solver_file))
    param.net = str(net_path)
    param.max_iter = iters
    param.snapshot = 0
    param.snapshot_prefix = str(tmp_path / "snap")
    param.display = 0
    param.test_interval = iters + 1          # the tests call solver.test themselves
    param.ClearField("test_iter")
    param.test_iter.extend([2] * (2 if len(param.test_state) else 1))
    param.random_seed = 1701
    for key, value in overrides.items():
        setattr(param, key, value)
    path = tmp_path / "solver.prototxt"
    write_text_message(str(path), param)
    return Solver(str(path))


def train(solver, iters, loss_blob="loss"):
    losses = []
    for _ in range(iters):
        solver.step(1)
        losses.append(float(solver.net.blobs[loss_blob].data))
    return np.array(losses)


def falls(losses, factor):
    k = max(3, len(losses) // 10)
    first, last = losses[:k].mean(), losses[-k:].mean()
    assert last < factor * first, f"loss went from {first:.4f} to {last:.4f}"
    return first, last


def test_caffenet_trains_from_the_readme_lmdb(tmp_path, data):
    # The README's ImageNet-style pipeline end to end: encoded JPEG LMDB, mean file, Caffe's solver
    # (batch 2 instead of 256 and 50 to fit the test budget).
    solver = make_solver(tmp_path, "solvers/caffenet_solver.prototxt", "models/caffenet/train_val.prototxt",
                         data, 2, batch=2)
    assert solver.net.blobs["data"].shape == (2, 3, 227, 227)
    losses = train(solver, 2)
    assert np.all(np.isfinite(losses)) and abs(losses[0] - np.log(1000)) < 0.5    # chance over 1000 classes
    assert 0 <= solver.test()["accuracy"] <= 1


def test_cifar10_quick_trains(tmp_path, data):
    # Caffe's solver settings; batch 10 instead of 100 to fit the test budget.
    solver = make_solver(tmp_path, "solvers/cifar10_quick_solver.prototxt",
                         "models/cifar10/cifar10_quick_train_test.prototxt", data, 40, batch=10)
    losses = train(solver, 40)
    assert abs(losses[0] - np.log(10)) < 0.05       # tiny conv1 weights: chance level at the start
    falls(losses, 0.5)
    assert solver.test()["accuracy"] > 0.8


@pytest.mark.slow
def test_cifar10_quick_trains_with_caffe_settings(tmp_path, data):
    solver = make_solver(tmp_path, "solvers/cifar10_quick_solver.prototxt",
                         "models/cifar10/cifar10_quick_train_test.prototxt", data, 200)
    falls(train(solver, 200), 0.5)
    assert solver.test()["accuracy"] > 0.8


@pytest.mark.slow
def test_cifar10_full_trains(tmp_path, data):
    solver = make_solver(tmp_path, "solvers/cifar10_full_solver.prototxt",
                         "models/cifar10/cifar10_full_train_test.prototxt", data, 200, batch=50, base_lr=0.01)
    falls(train(solver, 200), 0.7)


AUTOENCODER = "models/mnist_autoencoder/mnist_autoencoder.prototxt"


@pytest.mark.parametrize("solver_file,iters", [
    ("solvers/mnist_autoencoder_solver.prototxt", 40),
    ("solvers/mnist_autoencoder_solver_adagrad.prototxt", 40),
    ("solvers/mnist_autoencoder_solver_nesterov.prototxt", 40),
    ("solvers/mnist_autoencoder_solver_adadelta.prototxt", 40),
])
def test_mnist_autoencoder_trains(tmp_path, data, solver_file, iters):
    solver = make_solver(tmp_path, solver_file, AUTOENCODER, data, iters, batch=32)
    assert [n.name for n in solver.test_nets] == ["MNISTAutoencoder"] * 2
    before = [solver.test(i)["l2_error"] for i in range(2)]
    losses = train(solver, iters, "cross_entropy_loss")
    falls(losses, 0.9)
    after = [solver.test(i)["l2_error"] for i in range(2)]
    # Both test nets (training and test images) reconstruct better than at the start.
    assert after[0] < before[0] and after[1] < before[1]


@pytest.mark.slow
def test_mnist_autoencoder_trains_a_few_hundred_iterations(tmp_path, data):
    solver = make_solver(tmp_path, "solvers/mnist_autoencoder_solver.prototxt", AUTOENCODER, data, 300)
    falls(train(solver, 300, "cross_entropy_loss"), 0.8)


def test_mnist_siamese_trains(tmp_path, data):
    # Batch 32 instead of 64 to fit the test budget.
    solver = make_solver(tmp_path, "solvers/mnist_siamese_solver.prototxt",
                         "models/mnist_siamese/mnist_siamese_train_test.prototxt", data, 60, batch=32)
    losses = train(solver, 60)
    falls(losses, 0.8)
    # Same-digit pairs end up closer in the embedding than different-digit pairs.
    net = solver.test_nets[0]
    net.forward_prefilled()
    dist = np.sum((net.blobs["feat"].data - net.blobs["feat_p"].data) ** 2, axis=1)
    same = net.blobs["sim"].data.astype(bool)
    assert same.any() and (~same).any()
    assert dist[same].mean() < dist[~same].mean()


@pytest.mark.slow
def test_mnist_siamese_trains_a_few_hundred_iterations(tmp_path, data):
    solver = make_solver(tmp_path, "solvers/mnist_siamese_solver.prototxt",
                         "models/mnist_siamese/mnist_siamese_train_test.prototxt", data, 400)
    falls(train(solver, 400), 0.6)


# ---------------------------------------------------------------- the data tools beside the models
def test_siamese_pairs_tool(tmp_path):
    tool = load_pairs_tool()
    images = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    labels = np.array([0, 1, 0, 2, 1], np.uint8)
    pairs, same = tool.make_pairs(images, labels, count=50, seed=2)
    assert pairs.shape == (50, 2, 4, 4)
    for p, s in zip(pairs, same):
        i, j = p[0, 0, 0] // 16, p[1, 0, 0] // 16     # which image each channel came from
        assert np.array_equal(p[0], images[i]) and np.array_equal(p[1], images[j])
        assert s == (labels[i] == labels[j])
    assert tool.write_pairs(pairs, same, str(tmp_path / "pairs")) == 50


def test_cifar_converter(tmp_path):
    spec = importlib.util.spec_from_file_location("convert_cifar_data", repo("models/cifar10/convert_cifar_data.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    r = np.random.default_rng(0)
    src = tmp_path / "bin"
    src.mkdir()
    everything = {}
    for name in tool.TRAIN_FILES + tool.TEST_FILES:
        records = r.integers(0, 256, (3, tool.RECORD), dtype=np.uint8)
        records[:, 0] %= 10
        (src / name).write_bytes(records.tobytes())
        everything[name] = records
    assert tool.convert_cifar(str(src), str(tmp_path / "out")) == [15, 3]
    net_param = caffe_pb2.NetParameter()
    layer = net_param.layer.add(name="d", type="Data", top=["data", "label"])
    layer.data_param.source = str(tmp_path / "out" / "cifar10_train_lmdb")
    layer.data_param.batch_size = 15
    layer.data_param.backend = caffe_pb2.DataParameter.LMDB
    net = netspec.Net(net_param, netspec.TEST)
    net.forward()
    train_records = np.concatenate([everything[n] for n in tool.TRAIN_FILES])
    assert np.array_equal(net.blobs["label"].data, train_records[:, 0])
    # Pixels stay in the file's plane order: the red plane is channel 0.
    assert np.array_equal(net.blobs["data"].data, train_records[:, 1:].reshape(15, 3, 32, 32))
    (src / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(netspec.NetspecError, match="not a whole number of 3073-byte"):
        tool.convert_cifar(str(src), str(tmp_path / "out2"))
