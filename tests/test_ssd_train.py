"""MobileNet-SSD's train net and solver from the fork corpus train on a tiny AnnotatedDatum LMDB."""
import os

import numpy as np
import pytest

import netspec
from conftest import SHARED
from netspec import schema
from ssd_data import write_annotated_lmdb

VOC = os.path.join(SHARED, "caffe-forks", "chuanqi305-MobileNet-SSD", "voc")
pytestmark = pytest.mark.skipif(not os.path.isdir(VOC), reason="../shared/caffe-forks is not beside the checkout")


def mobilenet_ssd_solver(source, size, iterations):
    """The fork's solver.prototxt and MobileNetSSD_train.prototxt unchanged but for the data source,
    the batch (2) and the input size (WARP resize to size x size; 300 in the file), without testing."""
    net = schema.read_net(os.path.join(VOC, "MobileNetSSD_train.prototxt"))
    data = net.layer[0]
    assert data.type == "AnnotatedData" and len(data.annotated_data_param.batch_sampler) == 7
    data.data_param.source, data.data_param.batch_size = source, 2
    data.transform_param.resize_param.height = data.transform_param.resize_param.width = size
    solver = schema.read_solver(os.path.join(VOC, "solver.prototxt"))
    assert (solver.type, solver.eval_type, solver.ap_version) == ("RMSProp", "detection", "11point")
    for field in ("train_net", "test_net", "test_iter", "test_interval"):
        solver.ClearField(field)
    solver.train_net_param.CopyFrom(net)
    solver.max_iter, solver.display, solver.average_loss = iterations, 1, 1
    solver.snapshot, solver.snapshot_after_train, solver.random_seed = 0, False, 1
    return solver


def test_mobilenet_ssd_trains_with_falling_loss(tmp_path):
    source = write_annotated_lmdb(str(tmp_path / "voc_lmdb"), height=96, width=128)
    solver = netspec.get_solver(mobilenet_ssd_solver(source, size=128, iterations=5))
    losses = []
    for _ in range(5):
        solver.step(1)
        losses.append(float(solver.net.blobs["mbox_loss"].data))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses
    assert max(losses[2:]) < losses[0], losses


def test_mobilenet_ssd_test_net_evaluates(tmp_path):
    source = write_annotated_lmdb(str(tmp_path / "voc_lmdb"), height=96, width=128)
    param = schema.read_net(os.path.join(VOC, "MobileNetSSD_test.prototxt"))
    data = param.layer[0]
    data.data_param.source, data.data_param.batch_size = source, 2
    data.transform_param.resize_param.height = data.transform_param.resize_param.width = 128
    net = netspec.Net(param, netspec.TEST)
    for name, blobs in net.params.items():
        if net.layer_dict[name].type == "BatchNorm":    # untrained: unit variance, not 0
            for b in blobs:
                b.data[...] = 1
    out = net.forward()
    rows = out["detection_eval"][0, 0]
    # One row per class (20, background excluded) with its number of ground truths, then the detections.
    assert list(rows[:20, 0]) == [-1] * 20 and list(rows[:20, 1]) == list(range(1, 21))
    assert rows[0, 2] == 1 and rows[1, 2] == 2       # images 0 and 1 hold one box of label 1, two of label 2
    marks = rows[20:, 3:5]
    assert ((marks == [1, 0]) | (marks == [0, 1]) | (marks == [0, 0])).all(axis=1).all()


@pytest.mark.slow
def test_vgg_ssd300_train_net_steps(tmp_path):
    """weiliu89's VGG SSD300 train net (xzgz's copy) at its own 300 x 300 input: two SGD steps, finite loss."""
    folder = os.path.join(SHARED, "caffe-forks", "xzgz-caffe-ssd", "models", "VGGNet", "VOC0712", "SSD_300x300")
    net = schema.read_net(os.path.join(folder, "train.prototxt"))
    net.layer[0].data_param.source = write_annotated_lmdb(str(tmp_path / "lmdb"), height=150, width=200)
    net.layer[0].data_param.batch_size = 1
    solver = schema.read_solver(os.path.join(folder, "solver.prototxt"))
    for field in ("train_net", "test_net", "test_iter", "test_interval"):
        solver.ClearField(field)
    solver.train_net_param.CopyFrom(net)
    solver.max_iter, solver.display, solver.snapshot, solver.snapshot_after_train = 2, 1, 0, False
    solver.random_seed = 1
    sgd = netspec.get_solver(solver)
    sgd.step(2)
    assert np.isfinite(float(sgd.net.blobs["mbox_loss"].data))
