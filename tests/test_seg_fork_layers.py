"""The segmentation and mobile forks' layers: Interp, Upsample, BN (PSPNet's and SegNet's),
ReLU6, ShuffleChannel, ConvolutionDepthwise, DenseImageData. Hand-worked forward cases and
float64 gradient checks."""
import numpy as np
import pytest

from gradcheck import build, check_layer, forward
from netspec.errors import NetspecError
from netspec.layers.resize import interp_axis
from netspec.proto import caffe_pb2

R = np.random.default_rng(23)


def interp(params):
    return f'type: "Interp" interp_param {{ {params} }}'


# ---------------------------------------------------------------- Interp
def test_interp_zoom_aligns_corners():
    x = np.array([[[[0., 1], [2, 3]]]])
    top, = forward(interp("zoom_factor: 2"), [x])        # 2 + (2 - 1)(2 - 1) = 3
    np.testing.assert_allclose(top[0, 0], [[0, .5, 1], [1, 1.5, 2], [2, 2.5, 3]])


def test_interp_shrink_picks_every_other_cell():
    x = R.standard_normal((1, 2, 5, 5))
    top, = forward(interp("shrink_factor: 2"), [x])      # (5 - 1) / 2 + 1 = 3, ratio exactly 2
    np.testing.assert_allclose(top, x[:, :, ::2, ::2], rtol=1e-6)


@pytest.mark.parametrize("params, size_in, size_out", [
    ("zoom_factor: 8", (60, 60), (473, 473)),                     # PSPNet's final Interp
    ("shrink_factor: 3", (10, 7), (4, 3)),
    ("shrink_factor: 2 zoom_factor: 3", (9, 9), (13, 13)),         # shrink to 5, then zoom
    ("height: 60 width: 60", (1, 1), (60, 60)),
    ("zoom_factor: 2 pad_beg: -1 pad_end: -1", (6, 5), (7, 5)),    # effective 4 x 3
])
def test_interp_output_sizes(params, size_in, size_out):
    layer, bottom, top = build(interp(params), [np.zeros((1, 1) + size_in)])
    assert top[0].shape == (1, 1) + size_out


def test_interp_crops_by_pad_beg_and_pad_end_then_resizes():
    x = R.standard_normal((1, 1, 5, 5))
    top, = forward(interp("pad_beg: -1 pad_end: -2 height: 2 width: 2"), [x])
    inner = x[0, 0, 1:3, 1:3]                                       # rows/cols 1..2: the corners
    np.testing.assert_allclose(top[0, 0], inner)


def test_interp_taps_by_hand():
    # 3 -> 5: positions 0, .5, 1, 1.5, 2; the last cell reads cell 2 alone (hi = lo there).
    lo, hi, w_lo, w_hi = interp_axis(3, 5)
    np.testing.assert_array_equal(lo, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(hi, [1, 1, 2, 2, 2])
    np.testing.assert_allclose(w_hi, [0, .5, 0, .5, 0])
    np.testing.assert_array_equal(interp_axis(4, 1)[0], [0])


def test_interp_rounds_as_the_fork_in_float32():
    """Columns, then rows, in float32: h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d)."""
    x = R.standard_normal((1, 1, 4, 5)).astype(np.float32)
    layer, bottom, top = build(interp("height: 7 width: 9"), [x])
    bottom[0].data[...] = x
    layer.forward(bottom, top)
    want = np.empty((7, 9), np.float32)
    rh, rw = np.float32(3 / 6), np.float32(4 / 8)
    for i in range(7):
        for j in range(9):
            hr, wr = rh * np.float32(i), rw * np.float32(j)
            h, w = int(hr), int(wr)
            hp, wp = int(h < 3), int(w < 4)
            h1, w1 = hr - np.float32(h), wr - np.float32(w)
            h0, w0 = np.float32(1) - h1, np.float32(1) - w1
            a = x[0, 0]
            want[i, j] = h0 * (w0 * a[h, w] + w1 * a[h, w + wp]) + h1 * (w0 * a[h + hp, w] + w1 * a[h + hp, w + wp])
    np.testing.assert_array_equal(top[0].data[0, 0], want)


@pytest.mark.parametrize("params", ["zoom_factor: 3", "height: 4 width: 7", "shrink_factor: 2",
                                    "zoom_factor: 2 pad_beg: -1 pad_end: -1", "height: 1 width: 1"])
def test_interp_gradient(params):
    check_layer(interp(params), [R.standard_normal((2, 2, 5, 4))])


def test_interp_errors():
    with pytest.raises(NetspecError, match="needs zoom_factor, shrink_factor, or both height and width"):
        build('type: "Interp"', [np.zeros((1, 1, 3, 3))])
    with pytest.raises(NetspecError, match="must be <= 0"):
        build(interp("zoom_factor: 2 pad_beg: 1"), [np.zeros((1, 1, 3, 3))])
    with pytest.raises(NetspecError, match="to nothing"):
        build(interp("zoom_factor: 2 pad_beg: -2 pad_end: -1"), [np.zeros((1, 1, 3, 3))])


# ---------------------------------------------------------------- Upsample
def test_upsample_puts_each_value_at_its_mask_index():
    x = np.array([[[[1., 2], [3, 4]]]])
    mask = np.array([[[[5., 2], [8, 15]]]])
    top, = forward('type: "Upsample" upsample_param { scale: 2 }', [x, mask])
    expected = np.zeros(16)
    expected[[5, 2, 8, 15]] = [1, 2, 3, 4]
    np.testing.assert_array_equal(top[0, 0], expected.reshape(4, 4))


def test_upsample_sizes():
    x = np.zeros((1, 1, 2, 2))
    for params, size in [("scale: 2", (4, 4)), ("scale_h: 2 scale_w: 3", (4, 6)),
                         ("scale: 2 pad_out_h: true", (3, 4)), ("scale: 2 upsample_h: 3 upsample_w: 5", (3, 5))]:
        layer, bottom, top = build(f'type: "Upsample" upsample_param {{ {params} }}', [x, x])
        assert top[0].shape[2:] == size, params


def test_unpooling_after_max_pooling_by_hand():
    """Pooling's mask top feeds Upsample: each window's maximum returns to its place."""
    x = np.array([[[[1., 9, 0, 2], [3, 4, 8, 5], [7, 0, 0, 6], [0, 1, 2, 0]]]])
    pooled, mask = forward('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }', [x], 2)
    top, = forward('type: "Upsample" upsample_param { scale: 2 }', [pooled, mask])
    np.testing.assert_array_equal(top[0, 0], [[0, 9, 0, 0], [0, 0, 8, 0], [7, 0, 0, 6], [0, 0, 0, 0]])


def test_upsample_gradient():
    n, c, h, w = 2, 3, 3, 2
    # one distinct index per bottom cell in its 2x2 output window
    rows = np.arange(h)[:, None] * 2 + R.integers(0, 2, (n, c, h, w))
    cols = np.arange(w)[None, :] * 2 + R.integers(0, 2, (n, c, h, w))
    mask = (rows * (2 * w) + cols).astype(float)
    check_layer('type: "Upsample" upsample_param { scale: 2 }', [R.standard_normal((n, c, h, w)), mask],
                check_bottoms=[0])


def test_upsample_nearest_without_a_mask():
    top, = forward('type: "Upsample" upsample_param { scale: 2 }', [[[[[1., 2]]]]])
    np.testing.assert_array_equal(top[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2]])
    check_layer('type: "Upsample" upsample_param { scale_h: 2 scale_w: 3 }', [R.standard_normal((1, 2, 3, 2))])


def test_upsample_errors():
    x = np.zeros((1, 1, 2, 2))
    with pytest.raises(NetspecError, match="outside the 4x4 output plane"):
        forward('type: "Upsample" upsample_param { scale: 2 }', [x, np.full((1, 1, 2, 2), 16.)])
    with pytest.raises(NetspecError, match="both upsample_h and upsample_w"):
        build('type: "Upsample" upsample_param { upsample_h: 4 }', [x, x])
    with pytest.raises(NetspecError, match="must match"):
        build('type: "Upsample" upsample_param { scale: 2 }', [x, np.zeros((1, 1, 2, 3))])
    with pytest.raises(NetspecError, match="pad_out_h needs scale_h 2"):
        build('type: "Upsample" upsample_param { scale: 3 pad_out_h: true }', [x, x])


# ---------------------------------------------------------------- BN (PSPNet's)
PSP_BN = 'type: "BN" bn_param {{ slope_filler {{ type: "constant" value: 1 }} {} }}'


def test_pspnet_bn_uses_running_statistics_at_test_and_when_frozen():
    for params, phase in (("", caffe_pb2.TEST), ("frozen: true", caffe_pb2.TRAIN)):
        layer, bottom, top = build(PSP_BN.format(params + " eps: 1"), [np.full((1, 2, 1, 2), 5.0)], phase=phase)
        for blob, value in zip(layer.blobs, ([2, 1], [1, 0], [3, 1], [3, 8])):
            blob.data[...] = np.reshape(value, (1, 2, 1, 1))
        layer.forward(bottom, top)
        # channel 0: 2 * (5 - 3) / sqrt(3 + 1) + 1 = 3; channel 1: 1 * (5 - 1) / 3 + 0
        np.testing.assert_allclose(top[0].data[0, :, 0, 0], [3, 4 / 3])


def test_pspnet_bn_train_uses_the_batch_and_updates_the_running_statistics():
    x = np.array([1., 3, 5, 7]).reshape(2, 1, 1, 2)                # mean 4, biased variance 5
    layer, bottom, top = build(PSP_BN.format("momentum: 0.9 eps: 0"), [x])
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data.ravel(), (x.ravel() - 4) / np.sqrt(5))
    assert layer.blobs[2].data.ravel()[0] == pytest.approx(0.1 * 4)
    assert layer.blobs[3].data.ravel()[0] == pytest.approx(0.1 * 5)
    specs = layer.layer_param.param
    assert [s.lr_mult for s in specs] == [1, 1, 0, 0]


@pytest.mark.parametrize("params, phase", [("", caffe_pb2.TRAIN), ("", caffe_pb2.TEST),
                                           ("frozen: true", caffe_pb2.TRAIN)])
def test_pspnet_bn_gradient(params, phase):
    text = 'type: "BN" bn_param { slope_filler { type: "gaussian" } bias_filler { type: "gaussian" } %s }' % params
    x = R.standard_normal((2, 3, 2, 3))
    # slope and bias; the running statistics are not learnt (their fillers: mean 0, variance 0 or 1)
    check_layer(text, [x], phase=phase, check_params=[0, 1])


# ---------------------------------------------------------------- BN (SegNet's)
SEG_BN = ('type: "BN" segnet_bn_param {{ bn_mode: {} scale_filler {{ type: "constant" value: 2 }} '
          'shift_filler {{ type: "constant" value: 0.5 }} }}')


def test_segnet_bn_inference_is_scale_and_shift():
    top, = forward(SEG_BN.format("INFERENCE"), [np.array([1., -3]).reshape(1, 1, 1, 2)])
    np.testing.assert_allclose(top.ravel(), [2.5, -5.5])


def test_segnet_bn_learn_normalises_over_the_batch():
    x = np.array([1., 3, 5, 7]).reshape(2, 1, 2, 1)                # E[x^2] - E[x]^2 = 21 - 16 = 5
    top, = forward(SEG_BN.format("LEARN"), [x])
    np.testing.assert_allclose(top.ravel(), 2 * (x.ravel() - 4) / np.sqrt(5 + 1e-9) + 0.5)


@pytest.mark.parametrize("mode", ["LEARN", "INFERENCE"])
def test_segnet_bn_gradient(mode):
    check_layer(SEG_BN.format(mode), [R.standard_normal((2, 3, 2, 2))])


def test_bn_blobs_follow_the_fork():
    x = np.zeros((1, 4, 2, 2))
    psp, _, _ = build(PSP_BN.format(""), [x])
    seg, _, _ = build(SEG_BN.format("INFERENCE"), [x])
    assert [b.shape for b in psp.blobs] == [(1, 4, 1, 1)] * 4
    assert [b.shape for b in seg.blobs] == [(1, 4, 1, 1)] * 2
    frozen, _, _ = build(PSP_BN.format("frozen: true"), [x])
    np.testing.assert_array_equal(frozen.blobs[3].data, 1)          # the fork starts a frozen variance at 1


# ---------------------------------------------------------------- ReLU6, ShuffleChannel
def test_relu6():
    top, = forward('type: "ReLU6"', [[-1., 0, 3, 6, 7]])
    np.testing.assert_array_equal(top, [0, 0, 3, 6, 6])
    x = np.array([-2., -0.5, 0.5, 3, 5.5, 6.5, 9]).reshape(1, 7)    # away from the kinks at 0 and 6
    layer, bottom, top = check_layer('type: "ReLU6"', [x])
    np.testing.assert_array_equal(bottom[0].diff != 0, (x > 0) & (x < 6))


@pytest.mark.parametrize("group, order", [(2, [0, 3, 1, 4, 2, 5]), (3, [0, 2, 4, 1, 3, 5]), (1, range(6))])
def test_shuffle_channel_order(group, order):
    x = R.standard_normal((2, 6, 2, 3))
    top, = forward(f'type: "ShuffleChannel" shuffle_channel_param {{ group: {group} }}', [x])
    np.testing.assert_array_equal(top, x[:, list(order)])


def test_shuffle_channel_gradient_and_errors():
    check_layer('type: "ShuffleChannel" shuffle_channel_param { group: 3 }', [R.standard_normal((2, 6, 2, 2))])
    with pytest.raises(NetspecError, match="group 4 does not divide"):
        build('type: "ShuffleChannel" shuffle_channel_param { group: 4 }', [np.zeros((1, 6, 2, 2))])


# ---------------------------------------------------------------- ConvolutionDepthwise
DW = ('convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 stride: 2 {} '
      'weight_filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }}')


def test_depthwise_is_a_convolution_grouped_by_channel():
    x = R.standard_normal((2, 4, 5, 5))
    dw, bottom, top = build('type: "ConvolutionDepthwise" ' + DW.format(""), [x])
    assert dw.blobs[0].shape == (4, 1, 3, 3)
    dw.forward(bottom, top)
    # each output channel is its own channel's 3x3 correlation, worked out directly
    w, b = dw.blobs[0].data, dw.blobs[1].data
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.empty((2, 4, 3, 3))
    for i in range(3):
        for j in range(3):
            want[:, :, i, j] = (padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3] * w[None, :, 0]).sum(axis=(2, 3)) + b
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-6)
    assert not dw.layer_param.convolution_param.HasField("group")    # the net's own param is unchanged


def test_depthwise_gradient_and_group_conflict():
    check_layer('type: "ConvolutionDepthwise" ' + DW.format(""), [R.standard_normal((1, 4, 5, 5))])
    with pytest.raises(NetspecError, match="group 2 conflicts"):
        build('type: "ConvolutionDepthwise" ' + DW.format("group: 2"), [np.zeros((1, 4, 5, 5))])


# ---------------------------------------------------------------- DenseImageData
def write_pairs(tmp_path, sizes):
    from PIL import Image
    lines = []
    for k, (h, w) in enumerate(sizes):
        rgb = (np.arange(h * w * 3).reshape(h, w, 3) + k) % 256
        label = (np.arange(h * w).reshape(h, w) + k) % 11
        Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / f"img{k}.png")
        Image.fromarray(label.astype(np.uint8)).save(tmp_path / f"lab{k}.png")
        lines.append(f"img{k}.png lab{k}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


def dense(tmp_path, source, params="", transform=""):
    return (f'type: "DenseImageData" dense_image_data_param {{ source: "{source}" root_folder: "{tmp_path}/" '
            f'{params} }} {transform}')


def test_dense_image_data_reads_bgr_images_and_labels(tmp_path):
    source = write_pairs(tmp_path, [(3, 4), (3, 4)])
    data, label = forward(dense(tmp_path, source, "batch_size: 2", 'transform_param { mean_value: 1 }'), [],
                          num_tops=2, phase=caffe_pb2.TEST)
    assert data.shape == (2, 3, 3, 4) and label.shape == (2, 1, 3, 4)
    rgb = np.arange(36).reshape(3, 4, 3)
    np.testing.assert_array_equal(data[0], rgb[:, :, ::-1].transpose(2, 0, 1) - 1)   # BGR, mean 1 off
    np.testing.assert_array_equal(label[1, 0], (np.arange(12).reshape(3, 4) + 1) % 11)


def test_dense_image_data_single_images_keep_their_size_and_resize_is_nearest_for_labels(tmp_path):
    source = write_pairs(tmp_path, [(3, 4), (5, 2)])
    layer, bottom, top = build(dense(tmp_path, source, "batch_size: 1"), [], num_tops=2)
    shapes = []
    for _ in range(3):
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        shapes.append(top[0].shape)
    assert shapes == [(1, 3, 3, 4), (1, 3, 5, 2), (1, 3, 3, 4)]
    layer, bottom, top = build(dense(tmp_path, source, "batch_size: 1 new_height: 6 new_width: 3"), [], 2)
    layer.forward(bottom, top)
    assert top[0].shape == (1, 3, 6, 3)
    # nearest, as cv::resize: output row o reads floor(o * 3 / 6), column o reads floor(o * 4 / 3)
    label = (np.arange(12).reshape(3, 4)) % 11
    np.testing.assert_array_equal(top[1].data[0, 0], label[[0, 0, 1, 1, 2, 2]][:, [0, 1, 2]])


def test_dense_image_data_errors(tmp_path):
    source = write_pairs(tmp_path, [(3, 4)])
    with pytest.raises(NetspecError, match="crop_size and mirror are not supported"):
        build(dense(tmp_path, source, "batch_size: 1", "transform_param { crop_size: 2 }"), [], 2)
    (tmp_path / "bad.txt").write_text("img0.png\n")
    with pytest.raises(NetspecError, match=r"bad.txt:1: expected `image label`"):
        build(dense(tmp_path, tmp_path / "bad.txt", "batch_size: 1"), [], 2)
    with pytest.raises(NetspecError, match="cannot read image list"):
        build(dense(tmp_path, tmp_path / "missing.txt", "batch_size: 1"), [], 2)
