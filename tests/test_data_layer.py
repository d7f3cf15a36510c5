"""The Data layer and Caffe's transforms: batches match the source records, transforms by hand."""
import gzip
import os
import textwrap

import numpy as np
import pytest

import netspec as caffe
from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from netspec.schema import parse_prototxt
from netspec.transform import DataTransformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, "data", "mnist")


def make_lmdb(path, images, labels):
    records = ((f"{i:08d}", array_to_datum(img, lab).SerializeToString())
               for i, (img, lab) in enumerate(zip(images, labels)))
    write_lmdb_atomically(str(path), records)
    return str(path)


def data_net(source, batch, phase=caffe.TRAIN, transform="", tops=('top: "data"', 'top: "label"')):
    text = f"""
    layer {{ name: "d" type: "Data" {' '.join(tops)}
             transform_param {{ {transform} }}
             data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}
    """
    return caffe.Net(parse_prototxt(textwrap.dedent(text), caffe_pb2.NetParameter()), phase)


def test_batches_follow_the_records_and_wrap_around(tmp_path):
    images = np.arange(7 * 2 * 3 * 3, dtype=np.uint8).reshape(7, 2, 3, 3)
    labels = np.arange(7) * 10
    net = data_net(make_lmdb(tmp_path / "db", images, labels), batch=3)
    seen = []
    for _ in range(4):                      # 12 records from a set of 7: wraps once
        net.forward()
        seen.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    order = [i % 7 for i in range(12)]
    np.testing.assert_array_equal(np.concatenate([d for d, _ in seen]), images[order].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([l for _, l in seen]), labels[order])


def test_mnist_lmdb_matches_the_idx_files(tmp_path):
    from netspec.datasets.mnist import convert_mnist
    # Read the IDX files independently of netspec's reader: 16- and 8-byte headers.
    with gzip.open(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10000, 28, 28)
    with gzip.open(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    db = str(tmp_path / "t10k_lmdb")
    convert_mnist(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz"),
                  os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz"), db)
    net = data_net(db, batch=100, phase=caffe.TEST, transform="scale: 0.00390625")
    for b in range(101):                    # the whole set, then the first batch again
        net.forward()
        idx = [(b * 100 + i) % 10000 for i in range(100)]
        np.testing.assert_allclose(net.blobs["data"].data[:, 0], images[idx] * np.float32(0.00390625))
        np.testing.assert_array_equal(net.blobs["label"].data, labels[idx])


def transformer(phase=caffe.TRAIN, seed=0, **fields):
    p = caffe_pb2.TransformationParameter()
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(p, k).extend(v)
        else:
            setattr(p, k, v)
    return DataTransformer(p, phase, seed)


def run(t, batch):
    out = np.empty((batch.shape[0],) + t.output_shape(*batch.shape[1:]), np.float32)
    return t(batch, out)


def test_scale_and_mean_values():
    batch = np.array([[[[10, 20]], [[30, 40]]]], np.uint8)        # 1 x 2 x 1 x 2
    out = run(transformer(scale=0.5, mean_value=[10, 20]), batch)
    np.testing.assert_allclose(out, [[[[0, 5]], [[5, 10]]]])
    out = run(transformer(mean_value=[5]), batch)
    np.testing.assert_allclose(out, [[[[5, 15]], [[25, 35]]]])


def test_mean_file_is_taken_at_the_crop_window(tmp_path):
    from netspec.weights import array_to_blob
    mean = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    path = tmp_path / "mean.binaryproto"
    bp = caffe_pb2.BlobProto()
    array_to_blob(mean[None], bp)
    path.write_bytes(bp.SerializeToString())
    batch = np.full((1, 1, 4, 4), 100, np.uint8)
    # TEST crop 2 of 4: centre window rows 1..2, cols 1..2.
    out = run(transformer(phase=caffe.TEST, crop_size=2, mean_file=str(path)), batch)
    np.testing.assert_allclose(out[0, 0], 100 - np.array([[5, 6], [9, 10]]))


def test_centre_crop_in_test_and_random_crop_in_train():
    img = np.arange(25, dtype=np.uint8).reshape(1, 1, 5, 5)
    out = run(transformer(phase=caffe.TEST, crop_size=3), img)
    np.testing.assert_array_equal(out[0, 0], img[0, 0, 1:4, 1:4])
    batch = np.repeat(img, 200, axis=0)
    out = run(transformer(phase=caffe.TRAIN, crop_size=3, seed=3), batch)
    corners = {(int(o[0, 0, 0]) // 5, int(o[0, 0, 0]) % 5) for o in out}
    assert corners == {(r, c) for r in range(3) for c in range(3)}    # every offset occurs
    for o in out:                                                     # each is a real 3x3 window
        r, c = int(o[0, 0, 0]) // 5, int(o[0, 0, 0]) % 5
        np.testing.assert_array_equal(o[0], img[0, 0, r:r + 3, c:c + 3])


def test_mirror_flips_some_images_in_train_only():
    img = np.arange(6, dtype=np.uint8).reshape(1, 1, 2, 3)
    batch = np.repeat(img, 100, axis=0)
    out = run(transformer(phase=caffe.TRAIN, mirror=True, seed=5), batch)
    flipped = [bool(np.array_equal(o[0], img[0, 0, :, ::-1])) for o in out]
    plain = [bool(np.array_equal(o[0], img[0, 0])) for o in out]
    assert all(f or p for f, p in zip(flipped, plain)) and 20 < sum(flipped) < 80
    out = run(transformer(phase=caffe.TEST, mirror=True, seed=5), batch)
    assert all(np.array_equal(o[0], img[0, 0]) for o in out)


def test_seeded_transforms_repeat():
    batch = np.random.default_rng(0).integers(0, 255, (8, 1, 6, 6)).astype(np.uint8)
    a = run(transformer(crop_size=4, mirror=True, seed=9), batch)
    b = run(transformer(crop_size=4, mirror=True, seed=9), batch)
    np.testing.assert_array_equal(a, b)


def test_resume_state_replays_the_same_batches(tmp_path):
    images = np.random.default_rng(1).integers(0, 255, (10, 1, 4, 4)).astype(np.uint8)
    source = make_lmdb(tmp_path / "db", images, np.arange(10))
    net = data_net(source, batch=3, transform="crop_size: 3 mirror: true")
    net.forward()
    state = net.layer_dict["d"].get_resume_state()
    expected = [net.forward()["data"].copy() for _ in range(3)]
    net.layer_dict["d"].set_resume_state(state)
    replay = [net.forward()["data"].copy() for _ in range(3)]
    for e, r in zip(expected, replay):
        np.testing.assert_array_equal(e, r)


def test_bad_data_errors(tmp_path):
    with pytest.raises(NetspecError, match="does not exist"):
        data_net(str(tmp_path / "missing"), 2)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(NetspecError, match="not an LMDB"):
        data_net(str(tmp_path / "empty_dir"), 2)
    images = [np.zeros((1, 2, 2), np.uint8)] * 3 + [np.zeros((1, 3, 3), np.uint8)]
    source = make_lmdb(tmp_path / "mixed", images, [0, 1, 2, 3])
    net = data_net(source, batch=4)
    with pytest.raises(NetspecError, match=r"record 3 has shape \(1, 3, 3\).*first record has \(1, 2, 2\)"):
        net.forward()
    with pytest.raises(NetspecError, match="crop_size 5 is larger than the images"):
        data_net(make_lmdb(tmp_path / "small", images[:1], [0]), 1, transform="crop_size: 5")


def test_memory_data_serves_arrays_in_batches():
    text = 'layer { name: "m" type: "MemoryData" top: "data" top: "label" ' \
           'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }'
    net = caffe.Net(parse_prototxt(text, caffe_pb2.NetParameter()), caffe.TEST)
    with pytest.raises(NetspecError, match="call net.set_input_arrays"):
        net.forward()
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(data, np.array([1, 2, 3, 4]))
    net.forward()
    net.forward()
    out = net.forward()
    np.testing.assert_array_equal(out["data"], data[:2])      # wrapped after 4 items
    assert out["label"].shape == (2, 1, 1, 1)                   # Caffe's label blob is N x 1 x 1 x 1
    np.testing.assert_array_equal(out["label"].ravel(), [1, 2])
    with pytest.raises(NetspecError, match="multiple of batch_size"):
        net.set_input_arrays(data[:3], np.arange(3))


def test_memory_data_labels_feed_the_loss_layers():
    text = """layer { name: "m" type: "MemoryData" top: "data" top: "label"
                      memory_data_param { batch_size: 3 channels: 4 height: 1 width: 1 } }
              layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" }
              layer { name: "acc" type: "Accuracy" bottom: "data" bottom: "label" top: "acc" }"""
    net = caffe.Net(parse_prototxt(text, caffe_pb2.NetParameter()), caffe.TEST)
    scores = np.log(np.array([[1, 2, 3, 4], [4, 3, 2, 1], [1, 1, 6, 2]], np.float32)).reshape(3, 4, 1, 1)
    labels = np.array([3, 1, 2])
    net.set_input_arrays(scores, labels)
    out = net.forward()
    # Softmax of log(x) is x / sum(x): the loss is the mean of -log(x[label] / sum(x)).
    expected = -np.mean(np.log([4 / 10, 3 / 10, 6 / 10]))
    assert abs(float(out["loss"]) - expected) < 1e-5
    assert abs(float(out["acc"]) - 2 / 3) < 1e-6


def test_image_data_reads_a_list_of_images(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0] = 200                                          # red
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., ::-1].copy()).save(tmp_path / "b.png")   # blue
    (tmp_path / "list.txt").write_text("a.png 3\nb.png 7\n")
    text = f'''layer {{ name: "im" type: "ImageData" top: "data" top: "label"
        image_data_param {{ source: "{tmp_path / 'list.txt'}" root_folder: "{tmp_path}/" batch_size: 2 }} }}'''
    net = caffe.Net(parse_prototxt(text, caffe_pb2.NetParameter()), caffe.TEST)
    out = net.forward()
    assert out["data"].shape == (2, 3, 3, 4)
    # BGR order as in Caffe: a red image has its values in channel 2, a blue one in channel 0.
    assert out["data"][0, 2].max() == 200 and out["data"][0, 0].max() == 0
    assert out["data"][1, 0].max() == 200
    np.testing.assert_array_equal(out["label"], [3, 7])


def prefetch_threads():
    import threading
    return [t for t in threading.enumerate() if t.name == "netspec-prefetch" and t.is_alive()]


def test_a_net_that_fails_to_build_stops_its_prefetch_thread(tmp_path):
    source = make_lmdb(tmp_path / "db", np.zeros((4, 1, 3, 3), np.uint8), np.zeros(4))
    before = len(prefetch_threads())
    text = f"""
    layer {{ name: "d" type: "Data" top: "data" top: "label"
             data_param {{ source: "{source}" batch_size: 2 backend: LMDB }} }}
    layer {{ name: "oops" type: "Convolution" bottom: "data" top: "c"
             convolution_param {{ num_output: 1 kernel_size: 9 }} }}
    """
    with pytest.raises(NetspecError, match="oops"):
        caffe.Net(parse_prototxt(textwrap.dedent(text), caffe_pb2.NetParameter()), caffe.TRAIN)
    assert len(prefetch_threads()) == before
    with data_net(source, batch=2) as net:          # Net.close (also its context exit) stops the thread
        net.forward()
        assert len(prefetch_threads()) == before + 1
    assert len(prefetch_threads()) == before
