"""The SSD fork's deploy nets from ../shared/caffe-forks build and run forward at batch 1."""
import os

import numpy as np
import pytest

import netspec
from conftest import SHARED
from netspec import schema

FORKS = os.path.join(SHARED, "caffe-forks")
pytestmark = pytest.mark.skipif(not os.path.isdir(FORKS), reason="../shared/caffe-forks is not beside the checkout")

MOBILENET_SSD = "chuanqi305-MobileNet-SSD/voc/MobileNetSSD_deploy.prototxt"
MOBILENET_SSD_BN = "chuanqi305-MobileNet-SSD/deploy.prototxt"
SSDLITE = "chuanqi305-MobileNetv2-SSDLite/ssdlite/voc/deploy.prototxt"
SSD300 = "xzgz-caffe-ssd/models/VGGNet/VOC0712/SSD_300x300/deploy.prototxt"


def run_deploy(relative, confidence_threshold=None):
    """Forward the net once with random weights scaled by fan-in (finite activations) on a random image."""
    param = schema.read_net(os.path.join(FORKS, relative))
    for layer in param.layer:
        if layer.type == "DetectionOutput" and confidence_threshold is not None:
            layer.detection_output_param.confidence_threshold = confidence_threshold
    net = netspec.Net(param, netspec.TEST)
    rng = np.random.default_rng(0)
    for name, blobs in net.params.items():
        batch_norm = net.layer_dict[name].type == "BatchNorm"
        for b in blobs:
            fan = int(np.prod(b.data.shape[1:])) if b.data.ndim > 1 else 0
            if batch_norm:
                b.data[...] = 1.0          # mean, variance and their scale factor
            else:
                b.data[...] = rng.standard_normal(b.data.shape) / np.sqrt(fan) if fan else 1.0
    data = net.inputs[0]
    assert net.blobs[data].data.shape == (1, 3, 300, 300)
    net.blobs[data].data[...] = rng.uniform(-1, 1, net.blobs[data].data.shape)
    out = net.forward()
    return param, out["detection_out"]


def check_rows(rows, param):
    """Rows of one image: labels ascending, scores descending within a label, above the threshold."""
    p = [l for l in param.layer if l.type == "DetectionOutput"][0].detection_output_param
    assert np.isfinite(rows).all()
    assert (rows[:, 0] == 0).all()
    labels, scores = rows[:, 1], rows[:, 2]
    assert (np.diff(labels) >= 0).all() and (labels >= 1).all() and (labels < p.num_classes).all()
    for label in np.unique(labels):
        assert (np.diff(scores[labels == label]) <= 0).all()
    assert (scores > p.confidence_threshold).all()
    if p.keep_top_k > -1:
        assert len(rows) <= p.keep_top_k


@pytest.mark.parametrize("relative", [MOBILENET_SSD, MOBILENET_SSD_BN])
def test_mobilenet_ssd_deploy(relative):
    # Random weights give near-equal class scores: a low threshold so that there are rows to check.
    param, out = run_deploy(relative, confidence_threshold=0.01)
    assert out.shape[:2] == (1, 1) and out.shape[3] == 7 and out.shape[2] > 1
    check_rows(out[0, 0], param)


def test_ssdlite_deploy():
    if "ReLU6" not in netspec.layer_type_list():
        pytest.skip("ReLU6 (rcnn's) not in this tree yet")
    param, out = run_deploy(SSDLITE, confidence_threshold=0.01)
    assert out.shape[2] > 1
    check_rows(out[0, 0], param)


@pytest.mark.slow
def test_vgg_ssd300_deploy(tmp_path, monkeypatch):
    # save_output_param names directories and label files on its author's disk: from a scratch
    # folder without them, forward must still run (and write nothing).
    monkeypatch.chdir(tmp_path)
    param, out = run_deploy(SSD300)
    assert [l for l in param.layer if l.type == "DetectionOutput"][0].detection_output_param.HasField(
        "save_output_param")
    assert out.shape[2] > 1
    check_rows(out[0, 0], param)
    assert os.listdir(tmp_path) == []
