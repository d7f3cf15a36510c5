"""The non-SSD fork nets of ../shared/caffe-forks build and run forward at batch 1 with finite
outputs: Faster R-CNN (VGG16, ZF), PSPNet (ResNet-50 ADE20K, ResNet-101 VOC), SegNet (full and
basic) and ShuffleNet (v1 g3, v2). Faster R-CNN's train nets parse and say what they need.

Weights stand in for trained ones: every convolution and inner product gets He-scaled gaussian
weights and zero biases, BatchNorm statistics mean 0 / variance 1, PSPNet's BN slope 1, SegNet's
BN scale 1 (the nets' own fillers leave most weights 0, which would make the runs trivial).

Sizes: ShuffleNet and ZF run at the files' 224x224; the nets that are heavy on 2 cores run in the
default suite at a reduced input with the size-bound fields rescaled to match (PSPNet 89x89:
pyramid pooling kernels and Interp sizes for a 12x12 map instead of 473x473's 60x60; SegNet
40x64 images: its fixed upsample sizes follow), and at the files' full sizes under `-m slow`
(PSPNet 473x473, SegNet 360x480, VGG16 at the file's 224x224).
"""
import os

import numpy as np
import pytest

import netspec
from conftest import SHARED
from netspec.errors import NetspecError
from netspec.schema import read_net

FORKS = os.path.join(SHARED, "caffe-forks")
FASTER = "rbgirshick-py-faster-rcnn/models/pascal_voc/{}/faster_rcnn_end2end/{}.prototxt"
PSPNET = {"pspnet50": "hszhao-PSPNet/evaluation/prototxt/pspnet50_ADE20K_473.prototxt",
          "pspnet101": "hszhao-PSPNet/evaluation/prototxt/pspnet101_VOC2012_473.prototxt"}
SEGNET = {"segnet": "alexgkendall-SegNet-Tutorial/Models/segnet_inference.prototxt",
          "segnet_basic": "alexgkendall-SegNet-Tutorial/Models/segnet_basic_inference.prototxt"}
SHUFFLENET = ["farmingyard-ShuffleNet/shufflenet_1x_g3_deploy.prototxt",
              "farmingyard-ShuffleNet/shufflenet_v2_1x_deploy.prototxt"]

pytestmark = pytest.mark.skipif(not os.path.isdir(FORKS), reason="../shared/caffe-forks not present")


def fork_net(rel):
    """The file's NetParameter without weight fillers: stand_in_weights sets every weight, and
    filling VGG16's or PSPNet-101's tens of millions of weights first would double the run."""
    param = read_net(os.path.join(FORKS, rel))
    for layer in param.layer:
        for field in ("convolution_param", "inner_product_param"):
            if layer.HasField(field):
                getattr(layer, field).ClearField("weight_filler")
    return param


def stand_in_weights(net, seed=0):
    """He-scaled weights, cut from one pool of gaussian draws (drawing PSPNet-101's 68M weights
    afresh would take longer than its reduced forward)."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(1 << 20, dtype=np.float32)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type in ("Convolution", "ConvolutionDepthwise", "InnerProduct"):
            w = blobs[0].data
            flat, start = w.reshape(-1), int(rng.integers(pool.size))
            for at in range(0, flat.size, pool.size):
                part = flat[at:at + pool.size]
                part[...] = np.roll(pool, -start)[:part.size]
                start = (start + 7919) % pool.size
            w *= np.float32(np.sqrt(2.0 / w[0].size))
            for b in blobs[1:]:
                b.data[...] = 0
        elif layer.type == "BatchNorm":
            blobs[0].data[...], blobs[1].data[...], blobs[2].data[...] = 0, 1, 1
        elif layer.type == "BN":
            blobs[0].data[...] = 1
            blobs[1].data[...] = 0
            if len(blobs) == 4:                      # PSPNet's: running mean 0, variance 1
                blobs[2].data[...], blobs[3].data[...] = 0, 1


def run(net, seed=1):
    rng = np.random.default_rng(seed)
    stand_in_weights(net)
    for name in net.inputs:
        blob = net.blobs[name]
        if name == "im_info":
            blob.data[...] = [net.blobs["data"].shape[2], net.blobs["data"].shape[3], 1.0]
        else:
            blob.data[...] = rng.uniform(-1, 1, blob.shape)
    outputs = net.forward()
    for name, value in outputs.items():
        assert value.size and np.isfinite(value).all(), f"output {name} {value.shape} is not finite"
    return outputs


# ---------------------------------------------------------------- Faster R-CNN
def check_faster_rcnn(net):
    out = run(net)
    rois = net.blobs["rois"].data
    assert rois.ndim == 2 and rois.shape[1] == 5 and 0 < len(rois) <= 300      # TEST: post_nms_topN 300
    assert (rois[:, 0] == 0).all()
    h, w = net.blobs["data"].shape[2:]
    assert (rois[:, 1:] >= 0).all() and (rois[:, [1, 3]] <= w - 1).all() and (rois[:, [2, 4]] <= h - 1).all()
    assert out["cls_prob"].shape == (len(rois), 21)
    assert out["bbox_pred"].shape == (len(rois), 84)
    np.testing.assert_allclose(out["cls_prob"].sum(axis=1), 1, rtol=1e-5)


def test_faster_rcnn_zf_test_net():
    net = netspec.Net(fork_net(FASTER.format("ZF", "test")), netspec.TEST)
    assert type(net.layer_dict["proposal"]).__name__ == "Proposal"      # rpn.proposal_layer, built in
    check_faster_rcnn(net)


@pytest.mark.slow
def test_faster_rcnn_vgg16_test_net():
    check_faster_rcnn(netspec.Net(fork_net(FASTER.format("VGG16", "test")), netspec.TEST))


@pytest.mark.parametrize("model", ["VGG16", "ZF"])
def test_faster_rcnn_train_nets_parse_and_name_what_they_need(model):
    param = fork_net(FASTER.format(model, "train"))
    by_name = {layer.name: layer for layer in param.layer}
    assert by_name["rpn_loss_bbox"].smooth_l1_loss_param.sigma == 3
    assert by_name["roi_pool5" if model == "VGG16" else "roi_pool_conv5"].roi_pooling_param.pooled_w == (
        7 if model == "VGG16" else 6)
    with pytest.raises(NetspecError) as e:
        netspec.Net(param, netspec.TRAIN)
    message = str(e.value)
    assert "roi_data_layer.layer" in message and "py-faster-rcnn" in message
    assert "\n" not in message


# ---------------------------------------------------------------- PSPNet
def reduced_pspnet(rel, size=89):
    """The net at `size` x `size`: the pyramid's pooling kernels and the Interp sizes are the
    file's values for its 60x60 map (473 / 8) scaled to the smaller map ((size - 1) / 8 + 1)."""
    param = fork_net(rel)
    shape = param.layer[0].input_param.shape[0]          # the file's input_dim, upgraded to an Input layer
    assert list(shape.dim) == [1, 3, 473, 473]
    shape.dim[2:] = [size, size]
    feature = (size - 1) // 8 + 1
    for layer in param.layer:
        if layer.type == "Pooling" and layer.pooling_param.kernel_size >= 10:
            bins = 60 // layer.pooling_param.kernel_size
            layer.pooling_param.kernel_size = layer.pooling_param.stride = feature // bins
        if layer.type == "Interp" and layer.interp_param.height == 60:
            layer.interp_param.height = layer.interp_param.width = feature
    return param


@pytest.mark.parametrize("name", sorted(PSPNET))
def test_pspnet_reduced(name):
    net = netspec.Net(reduced_pspnet(PSPNET[name], 89), netspec.TEST)
    out = run(net)
    classes = 150 if name == "pspnet50" else 21
    assert out["conv6_interp"].shape == (1, classes, 89, 89)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PSPNET))
def test_pspnet_full_size(name):
    out = run(netspec.Net(fork_net(PSPNET[name]), netspec.TEST))
    assert out["conv6_interp"].shape[2:] == (473, 473)


# ---------------------------------------------------------------- SegNet
def write_camvid_like(tmp_path, height, width, count=2):
    from PIL import Image
    rng = np.random.default_rng(3)
    lines = []
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 11, (height, width), dtype=np.uint8)).save(tmp_path / f"{k}_L.png")
        lines.append(f"{tmp_path}/{k}.png {tmp_path}/{k}_L.png")
    (tmp_path / "test.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "test.txt")


def segnet(rel, tmp_path, height, width):
    """The inference net reading generated CamVid-like pairs (its source is its author's path);
    fixed upsample sizes are set to the sizes its poolings see at this image size."""
    param = fork_net(rel)
    data = param.layer[0]
    assert data.type == "DenseImageData" and data.dense_image_data_param.source == "/SegNet/CamVid/test.txt"
    data.dense_image_data_param.source = write_camvid_like(tmp_path, height, width)
    sizes = [(height, width)]
    for _ in range(5):
        sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
    for layer in param.layer:
        if layer.type == "Upsample" and layer.upsample_param.HasField("upsample_h"):
            level = int(layer.bottom[1][len("pool"):-len("_mask")])     # pool<k>_mask: pool k's input size
            layer.upsample_param.upsample_h, layer.upsample_param.upsample_w = sizes[level - 1]
    return netspec.Net(param, netspec.TEST)


@pytest.mark.parametrize("name", sorted(SEGNET))
def test_segnet_reduced(name, tmp_path):
    # 40 rows: 20, 10, 5, 3 after four poolings, so SegNet-basic's pad_out_h upsampling of
    # pool4 (3 * 2 - 1 = 5) lands on pool3's 5 rows, as 360 rows (45 -> 23 -> 45) do.
    net = segnet(SEGNET[name], tmp_path, 40, 64)
    assert type(net.layers[0]).__name__ == "DenseImageData"
    out = run(net)
    assert out["prob"].shape == (1, 11, 40, 64)
    np.testing.assert_allclose(out["prob"].sum(axis=1), 1, rtol=1e-5)
    assert net.blobs["label"].shape == (1, 1, 40, 64)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SEGNET))
def test_segnet_full_size(name, tmp_path):
    net = segnet(SEGNET[name], tmp_path, 360, 480)
    if name == "segnet":                       # the file's own upsample sizes are CamVid's
        by_name = {layer.name: layer for layer in fork_net(SEGNET[name]).layer}
        assert (by_name["upsample5"].upsample_param.upsample_h, by_name["upsample5"].upsample_param.upsample_w) == (23, 30)
    assert run(net)["prob"].shape == (1, 11, 360, 480)


# ---------------------------------------------------------------- ShuffleNet
@pytest.mark.parametrize("rel", SHUFFLENET)
def test_shufflenet(rel):
    out = run(netspec.Net(fork_net(rel), netspec.TEST))
    assert out["fc1000"].shape == (1, 1000, 1, 1)


def test_fork_layer_types_are_listed():
    listed = set(netspec.layer_type_list())
    assert {"ROIPooling", "Proposal", "SmoothL1Loss", "Interp", "Upsample", "ReLU6", "ShuffleChannel",
            "BN", "ConvolutionDepthwise", "DenseImageData"} <= listed
