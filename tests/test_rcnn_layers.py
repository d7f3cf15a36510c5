"""Faster R-CNN's layers: ROIPooling, Proposal (py-faster-rcnn's rpn.proposal_layer built in),
SmoothL1Loss. Forward cases worked out by hand, float64 gradient checks."""
import sys
import textwrap

import numpy as np
import pytest

import netspec
from gradcheck import build, check_layer, forward
from netspec.errors import NetspecError
from netspec.layers import native, roi_pooling
from netspec.layers.proposal import decode_boxes, generate_anchors, nms, shifted_anchors
from netspec.proto import caffe_pb2

R = np.random.default_rng(19)


def roi_pool(pooled_h, pooled_w, scale=1.0):
    return (f'type: "ROIPooling" roi_pooling_param {{ pooled_h: {pooled_h} pooled_w: {pooled_w} '
            f'spatial_scale: {scale} }}')


GRID = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)     # x[h, w] = 4h + w
NATIVE = pytest.mark.skipif(getattr(native.kernels, "roi_pool", None) is None,
                            reason="compiled kernels (netspec._native) not built")


@pytest.fixture(params=["numpy", pytest.param("native", marks=NATIVE)])
def roi_path(request, monkeypatch):
    """Run the test with ROIPooling's numpy scan, then with the compiled one."""
    monkeypatch.setattr(native, "ENABLED", request.param == "native")
    return request.param


# ---------------------------------------------------------------- ROIPooling
def test_roi_pooling_whole_map_into_quarters(roi_path):
    top, = forward(roi_pool(2, 2), [GRID, [[0, 0, 0, 3, 3]]])
    np.testing.assert_array_equal(top[0, 0], [[5, 7], [13, 15]])


def test_roi_pooling_rounds_halves_away_from_zero(roi_path):
    # 1 * 0.5 and 5 * 0.5 round to 1 and 3 (numpy's round would give 0 and 2): a 3x3 roi at
    # (1, 1) whose 2x2 bins overlap: rows floor(0)..ceil(1.5) = 1..2, floor(1.5)..ceil(3) = 2..3.
    top, = forward(roi_pool(2, 2, 0.5), [GRID, [[0, 1, 1, 5, 5]]])
    np.testing.assert_array_equal(top[0, 0], [[10, 11], [14, 15]])
    # -0.5 rounds to -1: the roi starts off the map, spans 3 cells, and is clipped to rows/cols 0..1.
    top, = forward(roi_pool(1, 1, 0.5), [GRID, [[0, -1, -1, 1, 1]]])
    assert top[0, 0, 0, 0] == 5


def test_roi_pooling_empty_bins_negative_maps_and_batch_index(roi_path):
    x = np.stack([GRID[0], -1 - GRID[0]])                            # image 1 is all negative
    top, = forward(roi_pool(2, 2), [x, [[0, 10, 10, 12, 12], [1, 0, 0, 1, 1]]])
    np.testing.assert_array_equal(top[0, 0], np.zeros((2, 2)))       # off the map: empty, 0
    # image 1, cells (0..1, 0..1), one cell per bin: the values themselves, negative
    np.testing.assert_array_equal(top[1, 0], [[-1, -2], [-5, -6]])


def test_roi_pooling_ties_take_the_first_cell_and_backward_routes_there(roi_path):
    layer, bottom, top = build(roi_pool(1, 1), [np.ones((1, 1, 3, 3)), [[0, 0, 0, 2, 2]]])
    layer.forward(bottom, top)
    assert layer.argmax_[0, 0, 0, 0] == 0
    top[0].diff[...] = 2.5
    layer.backward(top, [True, False], bottom)
    expected = np.zeros((3, 3))
    expected[0, 0] = 2.5
    np.testing.assert_array_equal(bottom[0].diff[0, 0], expected)


def test_roi_pooling_matches_a_naive_scan(roi_path):
    x = R.standard_normal((2, 3, 9, 11))
    rois = np.array([[0, 3, 2, 40, 30], [1, -20, 5, 90, 120], [1, 17, 17, 17, 17], [0, 0, 0, 175, 143]], float)
    top, = forward(roi_pool(3, 2, 1 / 16), [x, rois])
    for i, (b, *coords) in enumerate(rois):
        x1, y1, x2, y2 = (int(np.floor(abs(c / 16) + 0.5) * np.sign(c)) for c in coords)
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        for ph in range(3):
            for pw in range(2):
                h0 = min(max(int(np.floor(ph * rh / 3)) + y1, 0), 9)
                h1 = min(max(int(np.ceil((ph + 1) * rh / 3)) + y1, 0), 9)
                w0 = min(max(int(np.floor(pw * rw / 2)) + x1, 0), 11)
                w1 = min(max(int(np.ceil((pw + 1) * rw / 2)) + x1, 0), 11)
                want = x[int(b), :, h0:h1, w0:w1].max(axis=(1, 2)) if h1 > h0 and w1 > w0 else 0
                np.testing.assert_allclose(top[i, :, ph, pw], want)


@NATIVE
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_pooling_compiled_scan_equals_numpy(dtype, monkeypatch):
    x = R.integers(-3, 4, (2, 5, 13, 17)).astype(dtype)            # many ties
    rois = np.column_stack([R.integers(0, 2, 40), R.uniform(-60, 300, (40, 4))])
    rois[:, 3:] = np.maximum(rois[:, 3:], rois[:, 1:3] - 20)         # some empty, some inverted
    monkeypatch.setattr(native, "ENABLED", True)
    fast = roi_pooling.roi_pool_forward(x, rois, 1 / 16, 6, 4)
    monkeypatch.setattr(native, "ENABLED", False)
    slow = roi_pooling.roi_pool_forward(x, rois, 1 / 16, 6, 4)
    assert (slow[1] == -1).any() and (slow[1] >= 0).any()
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])


def test_roi_pooling_gradient(roi_path):
    x = R.permutation(2 * 3 * 8 * 8).reshape(2, 3, 8, 8) * 0.1     # distinct: no ties at the argmax
    rois = [[0, 0, 0, 7, 7], [1, 2, 1, 6, 7], [0, 3, 3, 5, 4], [1, 1, 1, 2, 2]]
    check_layer(roi_pool(3, 3), [x, rois], check_bottoms=[0])


def test_roi_pooling_errors(roi_path):
    with pytest.raises(NetspecError, match="pooled_h and pooled_w must be positive"):
        build('type: "ROIPooling"', [GRID, [[0, 0, 0, 1, 1]]])
    with pytest.raises(NetspecError, match=r"must hold rois as \(R, 5\)"):
        build(roi_pool(2, 2), [GRID, [[0, 0, 0, 1]]])
    with pytest.raises(NetspecError, match="roi 1 has batch index 3"):
        forward(roi_pool(2, 2), [GRID, [[0, 0, 0, 1, 1], [3, 0, 0, 1, 1]]])
    with pytest.raises(NetspecError, match="roi 0 is not finite"):
        forward(roi_pool(2, 2), [GRID, [[0, np.nan, 0, 1, 1]]])


# ---------------------------------------------------------------- Proposal
def test_anchors_for_the_16_pixel_base_box():
    # Per ratio 0.5, 1, 2: w = round(sqrt(256 / r)) = 23, 16, 11; h = round(w * r) = 12 (11.5 to
    # even), 16, 22; centred at 7.5 and times 8, 16, 32: x1 = 7.5 - (w * s - 1) / 2.
    expected = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]
    np.testing.assert_array_equal(generate_anchors(), expected)


def test_anchors_shift_by_feat_stride_anchor_fastest_then_x_then_y():
    base = generate_anchors()
    shifted = shifted_anchors(base, 2, 3, 16)
    assert shifted.shape == (2 * 3 * 9, 4)
    np.testing.assert_array_equal(shifted[:9], base)
    np.testing.assert_array_equal(shifted[9 + 4], base[4] + [16, 0, 16, 0])          # (y 0, x 1)
    np.testing.assert_array_equal(shifted[3 * 9 + 8], base[8] + [0, 16, 0, 16])      # (y 1, x 0)
    np.testing.assert_array_equal(shifted[-1], base[8] + [32, 16, 32, 16])


def test_box_decoding():
    # width 16, centre 8: dx 0.5 moves the centre to 16, dw log 2 doubles the width to 32;
    # x2 is centre + 0.5 w (no - 1), as py-faster-rcnn's bbox_transform_inv.
    boxes = decode_boxes(np.array([[0., 0, 15, 15]]), np.array([[0.5, 0, np.log(2), 0]]))
    np.testing.assert_allclose(boxes, [[0, 0, 32, 16]])


def test_nms_keeps_boxes_whose_overlap_is_at_most_the_threshold():
    boxes = np.array([[0., 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29]])
    scores = np.array([0.8, 0.9, 0.7])
    # IoU of the first two: 9 * 9 / (100 + 100 - 81) = 0.68
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [1, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.7), [1, 0, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, max_keep=1), [1])


ONE_ANCHOR = """type: "Proposal" python_param { param_str: "'feat_stride': 16, 'scales': [1], 'ratios': [1]%s" }"""


def rpn_inputs(scores, deltas=None, im_info=(32, 32, 1)):
    """One anchor over a 2x2 map: prob (1, 2, 2, 2) with the foreground scores in channel 1."""
    scores = np.asarray(scores, float).reshape(1, 1, 2, 2)
    prob = np.concatenate([1 - scores, scores], axis=1)
    deltas = np.zeros((1, 4, 2, 2)) if deltas is None else deltas
    return [prob, deltas, np.array([im_info], float)]


def test_proposals_sorted_by_score():
    # The anchor (0, 0, 15, 15) at the four cells; zero deltas decode it to (0, 0, 16, 16)
    # (x2 = centre 8 + half width 8), clipped to the 32x32 image.
    rois, scores = forward(ONE_ANCHOR % "", rpn_inputs([[0.1, 0.4], [0.3, 0.2]]), num_tops=2,
                           phase=caffe_pb2.TEST)
    np.testing.assert_array_equal(rois, [[0, 16, 0, 31, 16], [0, 0, 16, 16, 31], [0, 16, 16, 31, 31],
                                         [0, 0, 0, 16, 16]])
    np.testing.assert_allclose(scores[:, 0], [0.4, 0.3, 0.2, 0.1])
    rois, = forward(ONE_ANCHOR % ", 'post_nms_topN': 2", rpn_inputs([[0.1, 0.4], [0.3, 0.2]]))
    assert rois.shape == (2, 5)


def test_proposals_decode_clip_nms_and_min_size():
    deltas = np.zeros((1, 4, 2, 2))
    deltas[0, 0, 0, 1] = -1.0          # the (y 0, x 1) box moves 16 left: onto the (0, 0) box
    deltas[0, 2:, 1, 1] = np.log(4)    # the (1, 1) box grows to 64x64 around (24, 24): clipped to 0..31
    rois, = forward(ONE_ANCHOR % "", rpn_inputs([[0.1, 0.4], [0.3, 0.2]], deltas), phase=caffe_pb2.TEST)
    # (0, 1) is now (0, 0, 16, 16) with score 0.4 and suppresses the (0, 0) box (IoU 1); the big
    # box overlaps the others by 289 / 1024 and 272 / 1024 <= 0.7.
    np.testing.assert_allclose(rois, [[0, 0, 0, 16, 16], [0, 0, 16, 16, 31], [0, 0, 0, 31, 31]])
    # min_size 16 is scaled by im_info[2]: at scale 2 only the 32x32 box is big enough.
    rois, = forward(ONE_ANCHOR % "", rpn_inputs([[0.1, 0.4], [0.3, 0.2]], deltas, (32, 32, 2)))
    np.testing.assert_array_equal(rois, [[0, 0, 0, 31, 31]])
    rois, = forward(ONE_ANCHOR % "", rpn_inputs([[0.1, 0.4], [0.3, 0.2]], None, (32, 32, 4)))
    assert rois.shape == (0, 5)


def test_param_str_as_py_faster_rcnn_writes_it():
    text = r"""type: "Proposal" python_param { param_str: "'feat_stride': 16\n'scales': !!python/tuple [1]\n'ratios': [1]" }"""
    rois, = forward(text, rpn_inputs([[0.1, 0.4], [0.3, 0.2]]), phase=caffe_pb2.TEST)
    assert rois.shape == (4, 5)


def naive_proposals(prob, deltas, im_info, stride, pre, post, thresh, min_size):
    """The README's description, one box at a time: anchor a of cell (y, x) reads score channel
    A + a and delta channels 4a .. 4a + 3."""
    anchors = generate_anchors()
    a_count, (height, width) = len(anchors), prob.shape[2:]
    found = []
    for y in range(height):
        for x in range(width):
            for a in range(a_count):
                x1, y1, x2, y2 = anchors[a] + [x * stride, y * stride, x * stride, y * stride]
                w, h = x2 - x1 + 1, y2 - y1 + 1
                dx, dy, dw, dh = deltas[0, 4 * a:4 * a + 4, y, x]
                cx, cy = x1 + 0.5 * w + dx * w, y1 + 0.5 * h + dy * h
                pw, ph = np.exp(dw) * w, np.exp(dh) * h
                box = [min(max(v, 0), limit - 1) for v, limit in
                       ((cx - pw / 2, im_info[1]), (cy - ph / 2, im_info[0]),
                        (cx + pw / 2, im_info[1]), (cy + ph / 2, im_info[0]))]
                if box[2] - box[0] + 1 >= min_size * im_info[2] and box[3] - box[1] + 1 >= min_size * im_info[2]:
                    found.append((prob[0, a_count + a, y, x], box))
    found.sort(key=lambda item: -item[0])
    kept = []
    for score, box in found[:pre]:
        def iou(other):
            iw = max(0, min(box[2], other[2]) - max(box[0], other[0]) + 1)
            ih = max(0, min(box[3], other[3]) - max(box[1], other[1]) + 1)
            area = lambda b: (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
            return iw * ih / (area(box) + area(other) - iw * ih)
        if all(iou(other) <= thresh for _, other in kept):
            kept.append((score, box))
    return np.array([[0] + box for _, box in kept[:post]])


def test_proposals_match_a_box_by_box_reading_of_the_rules():
    rng = np.random.default_rng(7)
    prob = rng.uniform(0, 1, (1, 18, 5, 6))
    deltas = rng.normal(0, 0.3, (1, 36, 5, 6))
    im_info = np.array([[80, 96, 0.6]])
    text = ('type: "Proposal" python_param { param_str: "\'feat_stride\': 16, \'pre_nms_topN\': 150, '
            '\'post_nms_topN\': 40, \'nms_thresh\': 0.6" }')
    rois, = forward(text, [prob, deltas, im_info], phase=caffe_pb2.TEST)
    want = naive_proposals(prob, deltas, im_info[0], 16, 150, 40, 0.6, 16)
    assert len(want) > 10
    np.testing.assert_allclose(rois, want, rtol=1e-10, atol=1e-9)


def test_proposal_settings_follow_the_phase():
    text = 'type: "Proposal" python_param { param_str: "\'feat_stride\': 16" }'
    prob = np.full((1, 18, 3, 3), 0.5)
    inputs = [prob, np.zeros((1, 36, 3, 3)), np.array([[48, 48, 1.0]])]
    train, _, _ = build(text, inputs, phase=caffe_pb2.TRAIN)
    test, _, _ = build(text, inputs, phase=caffe_pb2.TEST)
    assert (train.pre_nms_topN, train.post_nms_topN) == (12000, 2000)
    assert (test.pre_nms_topN, test.post_nms_topN, test.nms_thresh, test.min_size) == (6000, 300, 0.7, 16)


def test_proposal_errors():
    inputs = rpn_inputs([[0.1, 0.4], [0.3, 0.2]])
    with pytest.raises(NetspecError, match="param_str must give 'feat_stride'"):
        build('type: "Proposal"', inputs)
    with pytest.raises(NetspecError, match="unknown key.*'feat_strid'"):
        build('type: "Proposal" python_param { param_str: "\'feat_strid\': 16, \'feat_stride\': 16" }', inputs)
    with pytest.raises(NetspecError, match=r"must be \(1, 18, H, W\) for 9 anchors"):
        build('type: "Proposal" python_param { param_str: "\'feat_stride\': 16" }', inputs)


PROPOSAL_NET = """
input: "prob" input_shape { dim: 1 dim: 2 dim: 2 dim: 2 }
input: "deltas" input_shape { dim: 1 dim: 4 dim: 2 dim: 2 }
input: "im_info" input_shape { dim: 1 dim: 3 }
layer { name: "proposal" type: "Python" bottom: "prob" bottom: "deltas" bottom: "im_info" top: "rois"
  python_param { module: "rpn.proposal_layer" layer: "ProposalLayer"
                 param_str: "'feat_stride': 16, 'scales': [1], 'ratios': [1]" } }
"""


def run_proposal_net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(PROPOSAL_NET)
    net = netspec.Net(str(path), netspec.TEST)
    for name, value in zip(("prob", "deltas", "im_info"), rpn_inputs([[0.1, 0.4], [0.3, 0.2]])):
        net.blobs[name].data[...] = value
    return net, net.forward()["rois"]


@pytest.fixture
def clean_rpn_modules():
    yield
    for name in [m for m in sys.modules if m == "rpn" or m.startswith("rpn.")]:
        del sys.modules[name]


def test_python_proposal_layer_is_built_in_when_the_module_does_not_import(tmp_path, clean_rpn_modules):
    net, rois = run_proposal_net(tmp_path)
    assert type(net.layers[-1]).__name__ == "Proposal"
    assert rois.shape == (4, 5)


def test_python_2_proposal_module_falls_back_to_the_built_in(tmp_path, monkeypatch, clean_rpn_modules):
    (tmp_path / "rpn").mkdir()
    (tmp_path / "rpn" / "__init__.py").write_text("")
    (tmp_path / "rpn" / "proposal_layer.py").write_text("print 'py-faster-rcnn is Python 2'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net, rois = run_proposal_net(tmp_path)
    assert type(net.layers[-1]).__name__ == "Proposal"


def test_an_importable_user_proposal_module_wins(tmp_path, monkeypatch, clean_rpn_modules):
    (tmp_path / "rpn").mkdir()
    (tmp_path / "rpn" / "__init__.py").write_text("")
    (tmp_path / "rpn" / "proposal_layer.py").write_text(textwrap.dedent("""
        import netspec
        class ProposalLayer(netspec.Layer):
            def setup(self, bottom, top):
                pass
            def reshape(self, bottom, top):
                top[0].reshape(1, 5)
            def forward(self, bottom, top):
                top[0].data[...] = 7
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    net, rois = run_proposal_net(tmp_path)
    np.testing.assert_array_equal(rois, np.full((1, 5), 7))


# ---------------------------------------------------------------- SmoothL1Loss
def test_smooth_l1_by_hand():
    # sigma 1: |d| < 1 -> 0.5 d^2, else |d| - 0.5: 0.125 + 1.5 + 2.5, over N = 2 items
    pred = np.array([[0.5, 2.0, -3.0], [0.0, 0.0, 0.0]])
    loss, = forward('type: "SmoothL1Loss"', [pred, np.zeros((2, 3))])
    assert loss == pytest.approx(4.125 / 2)
    # sigma 3 (threshold 1/9), inside weight 2 turns d = 0.1 into 0.2 > 1/9: 0.2 - 0.5/9,
    # outside weight 0.5; d = 0.05 stays quadratic: 0.5 * 9 * 0.0025
    text = 'type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 3 }'
    loss, = forward(text, [[[0.1, 0.05]], [[0.0, 0.0]], [[2.0, 1.0]], [[0.5, 1.0]]])
    assert loss == pytest.approx(0.5 * (0.2 - 0.5 / 9) + 0.5 * 9 * 0.0025)


@pytest.mark.parametrize("weights", [0, 2])
def test_smooth_l1_gradient(weights):
    shape = (2, 8, 3, 3)
    pred = R.standard_normal(shape)
    target = R.standard_normal(shape)
    extra = [R.uniform(0.5, 2, shape) for _ in range(weights)]
    check_layer('type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 3 }', [pred, target] + extra,
                check_bottoms=[0, 1], top_weights=[np.array(1.7)])


def test_smooth_l1_errors():
    with pytest.raises(NetspecError, match="got 3"):
        build('type: "SmoothL1Loss"', [np.zeros((1, 4)), np.zeros((1, 4)), np.ones((1, 4))])
    with pytest.raises(NetspecError, match="must match"):
        build('type: "SmoothL1Loss"', [np.zeros((1, 4)), np.zeros((1, 5))])
