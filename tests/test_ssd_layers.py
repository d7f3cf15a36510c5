"""SSD's inference layers: PriorBox, Normalize, Permute, DetectionOutput, and the box arithmetic."""
import math

import numpy as np
import pytest

from gradcheck import check_layer, forward
from netspec import bbox
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2

RNG = np.random.default_rng(7)


# ---------------------------------------------------------------- PriorBox

def test_prior_box_3x3_by_hand():
    text = ('type: "PriorBox" prior_box_param { min_size: 100 max_size: 200 aspect_ratio: 2 flip: true '
            'variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }')
    out, = forward(text, [np.zeros((1, 8, 3, 3)), np.zeros((1, 3, 300, 300))])
    assert out.shape == (1, 2, 3 * 3 * 4 * 4)
    boxes = out[0, 0].reshape(3, 3, 4, 4)          # rows, columns, priors, corners
    # Step 300 / 3 = 100, centres 50, 150, 250. Per cell: the 100 square, the sqrt(100 * 200)
    # square, then 100 sqrt(2) x 100 / sqrt(2) and its flip.
    half_big = math.sqrt(100 * 200) / 2             # 70.71
    wide, tall = 100 * math.sqrt(2) / 2, 100 / math.sqrt(2) / 2
    cx, cy = 50, 50
    expected = np.array([
        [cx - 50, cy - 50, cx + 50, cy + 50],
        [cx - half_big, cy - half_big, cx + half_big, cy + half_big],
        [cx - wide, cy - tall, cx + wide, cy + tall],
        [cx - tall, cy - wide, cx + tall, cy + wide]]) / 300
    np.testing.assert_allclose(boxes[0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(boxes[1, 2, 0], [2 / 3, 1 / 3, 1, 2 / 3], atol=1e-6)   # row 1, column 2
    np.testing.assert_allclose(boxes[0, 0, 1], [-0.0690356, -0.0690356, 0.4023689, 0.4023689], atol=1e-6)
    np.testing.assert_allclose(out[0, 1].reshape(-1, 4), np.tile([0.1, 0.1, 0.2, 0.2], (36, 1)), atol=1e-7)


def test_prior_box_clip_step_offset_int_sizes_and_default_variance():
    text = ('type: "PriorBox" prior_box_param { min_size: 35.84 clip: true step: 64 offset: 0.25 '
            'img_size: 192 aspect_ratio: 1.0 aspect_ratio: 3 flip: false }')
    out, = forward(text, [np.zeros((1, 1, 3, 3)), np.zeros((1, 3, 10, 10))])
    boxes = out[0, 0].reshape(3, 3, 2, 4)
    # Centre of cell (0, 0) at 0.25 * 64 = 16; min_size acts as 35 (the fork's int).
    np.testing.assert_allclose(boxes[0, 0, 0], [0, 0, (16 + 17.5) / 192, (16 + 17.5) / 192], atol=1e-6)
    w, h = 35 * math.sqrt(3) / 2, 35 / math.sqrt(3) / 2
    c = 2.25 * 64                                       # cell (2, 2)
    np.testing.assert_allclose(boxes[2, 2, 1], [(c - w) / 192, (c - h) / 192, min(1, (c + w) / 192),
                                                (c + h) / 192], atol=1e-6)
    assert out[0, 1].min() == out[0, 1].max() == pytest.approx(0.1)


@pytest.mark.parametrize("param, message", [
    ("", "needs at least one min_size"),
    ("min_size: 30 max_size: 20", "greater than its min_size"),
    ("min_size: 30 variance: 0.1 variance: 0.2", "variance takes 1 or 4 values"),
    ("min_size: 30 max_size: 60 max_size: 90", "one value per min_size"),
])
def test_prior_box_refuses(param, message):
    with pytest.raises(NetspecError, match=message):
        forward(f'type: "PriorBox" prior_box_param {{ {param} }}', [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 8, 8))])


# ---------------------------------------------------------------- Normalize, Permute

def test_normalize_forward_by_hand():
    x = np.array([[[[3.0]], [[4.0]]]])           # (1, 2, 1, 1): norm 5
    out, = forward('type: "Normalize" norm_param { channel_shared: false scale_filler { type: "constant" '
                   'value: 20 } }', [x])
    np.testing.assert_allclose(out.reshape(-1), [12, 16], rtol=1e-9)
    x = np.array([[[[1.0, 0.0]], [[0.0, 2.0]]]])   # per pixel norms 1 and 2
    out, = forward('type: "Normalize" norm_param { across_spatial: false eps: 0 }', [x])
    np.testing.assert_allclose(out.reshape(2, 2), [[1, 0], [0, 1]], rtol=1e-9)


def test_normalize_scale_blob_shapes():
    from gradcheck import build
    layer, _, _ = build('type: "Normalize"', [np.ones((2, 3, 4, 4))])
    assert layer.blobs[0].shape == () and float(layer.blobs[0].data) == 1
    layer, _, _ = build('type: "Normalize" norm_param { channel_shared: false }', [np.ones((2, 3, 4, 4))])
    assert layer.blobs[0].shape == (3,)


@pytest.mark.parametrize("param", ["", "across_spatial: false", "channel_shared: false",
                                   "across_spatial: false channel_shared: false"])
def test_normalize_gradient(param):
    check_layer(f'type: "Normalize" norm_param {{ {param} scale_filler {{ type: "gaussian" std: 1 }} }}',
                [RNG.standard_normal((2, 3, 2, 3))])


def test_permute_forward_and_gradient():
    x = np.arange(24.0).reshape(1, 2, 3, 4)
    out, = forward('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', [x])
    assert out.shape == (1, 3, 4, 2) and out[0, 2, 1, 1] == x[0, 1, 2, 1]
    out, = forward('type: "Permute" permute_param { order: 2 }', [x])    # unlisted axes follow in order
    assert out.shape == (3, 1, 2, 4) and out[1, 0, 1, 3] == x[0, 1, 1, 3]
    check_layer('type: "Permute" permute_param { order: 0 order: 3 order: 1 order: 2 }',
                [RNG.standard_normal((2, 3, 2, 4))])
    with pytest.raises(NetspecError, match="distinct axes"):
        forward('type: "Permute" permute_param { order: 0 order: 0 }', [x])


# ---------------------------------------------------------------- box arithmetic

PRIOR = np.array([[0.1, 0.2, 0.5, 0.6]], np.float32)     # 0.4 x 0.4, centre (0.3, 0.4)
VAR = np.array([[0.1, 0.1, 0.2, 0.2]], np.float32)
CODE = np.array([[1.0, -1.0, 0.5, 0.0]], np.float32)


@pytest.mark.parametrize("code_type, in_target, expected", [
    (bbox.CORNER, False, [0.2, 0.1, 0.6, 0.6]),
    (bbox.CORNER_SIZE, False, [0.14, 0.16, 0.54, 0.6]),
    # centre (0.3 + 0.1 * 0.4, 0.4 - 0.1 * 0.4), size (0.4 e^0.1, 0.4)
    (bbox.CENTER_SIZE, False, [0.34 - 0.2 * math.exp(0.1), 0.16, 0.34 + 0.2 * math.exp(0.1), 0.56]),
    (bbox.CENTER_SIZE, True, [0.7 - 0.2 * math.exp(0.5), -0.2, 0.7 + 0.2 * math.exp(0.5), 0.2]),
    (bbox.CORNER, True, [1.1, -0.8, 1.0, 0.6]),
])
def test_decode_by_hand(code_type, in_target, expected):
    got = bbox.decode(PRIOR, VAR, CODE, code_type, in_target)
    np.testing.assert_allclose(got[0], expected, atol=1e-6)
    np.testing.assert_allclose(bbox.encode(PRIOR, VAR, got, code_type, in_target), CODE, atol=1e-5)


BOXES = np.array([[0.0, 0.0, 0.4, 0.4],      # A 0.9
                  [0.0, 0.0, 0.4, 0.36],     # B 0.8, IoU(A) = 0.144 / 0.16 = 0.9
                  [0.2, 0.2, 0.6, 0.6],      # C 0.7, IoU(A) = 0.04 / 0.28
                  [0.6, 0.6, 1.0, 1.0],      # D 0.6, touches C only
                  [0.61, 0.61, 1.0, 1.0]],   # E 0.6 (tie with D), IoU(D) = 0.1521 / 0.16
                 np.float32)
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.6], np.float32)


def test_jaccard_by_hand():
    iou = bbox.jaccard(BOXES, BOXES)
    np.testing.assert_allclose([iou[0, 1], iou[0, 2], iou[2, 3], iou[3, 4]], [0.9, 1 / 7, 0, 0.950625], atol=1e-6)


@pytest.mark.parametrize("threshold, eta, top_k, score_min, kept", [
    (0.45, 1.0, -1, 0.0, [0, 2, 3]),          # B under A, E under D (D first: the tie keeps index order)
    (0.96, 1.0, -1, 0.0, [0, 1, 2, 3, 4]),
    (0.96, 0.5, -1, 0.0, [0, 2, 3]),          # after A the threshold is 0.48, and stays (not above 0.5)
    (0.45, 1.0, 2, 0.0, [0]),
    (0.45, 1.0, -1, 0.65, [0, 2]),            # scores must be above 0.65
])
def test_nms_by_hand(threshold, eta, top_k, score_min, kept):
    assert list(bbox.nms(BOXES, SCORES, score_min, threshold, eta, top_k)) == kept


def test_match_bipartite_then_per_prediction():
    priors = np.array([[0, 0, .4, .4], [0, 0, .4, .36], [.2, .2, .6, .6], [.6, .6, 1, 1]], np.float32)
    gt = np.array([[0, 0, .4, .38], [.6, .6, 1, .9]], np.float32)
    P = caffe_pb2.MultiBoxLossParameter
    # IoU: prior 0 / gt 0 = 0.95, prior 1 / gt 0 = 0.36/0.38 = 0.947, prior 3 / gt 1 = 0.75.
    idx, ov = bbox.match(gt, priors, P.BIPARTITE, 0.5)
    assert list(idx) == [0, -1, -1, 1]
    np.testing.assert_allclose(ov, [0.95, 0.36 / 0.38, 0.036 / (0.16 + 0.152 - 0.036), 0.75], atol=1e-6)
    idx, _ = bbox.match(gt, priors, P.PER_PREDICTION, 0.5)
    assert list(idx) == [0, 0, -1, 1]
    idx, _ = bbox.match(gt, priors, P.PER_PREDICTION, 0.96)
    assert list(idx) == [0, -1, -1, 1]           # bipartite matches ignore the threshold


# ---------------------------------------------------------------- DetectionOutput

PRIORS3 = np.array([[0, 0, .4, .4], [0, 0, .4, .36], [.6, .6, 1, 1]])
CONF3 = np.array([[.1, .8, .1], [.2, .7, .1], [.3, .1, .6]])


def detection_output(conf, param, num=1, loc=None, background=0):
    priors = np.concatenate([PRIORS3.reshape(-1), np.tile([.1, .1, .2, .2], 3)]).reshape(1, 2, 12)
    loc = np.zeros((num, 12)) if loc is None else loc
    text = ('type: "DetectionOutput" detection_output_param { num_classes: 3 share_location: true '
            f'background_label_id: {background} nms_param {{ nms_threshold: 0.45 }} code_type: CORNER {param} }}')
    out, = forward(text, [loc, np.asarray(conf).reshape(num, 9), priors])
    return out[0, 0]


def test_detection_output_by_hand():
    rows = detection_output(CONF3, "confidence_threshold: 0.05")
    # class 1: P0 (0.8) kept, P1 under it (IoU 0.9), P2 (0.1) kept; class 2: P2 (0.6), then
    # P0 and P1 tie at 0.1: P0 first, P1 under it.
    expected = [[0, 1, .8, *PRIORS3[0]], [0, 1, .1, *PRIORS3[2]], [0, 2, .6, *PRIORS3[2]], [0, 2, .1, *PRIORS3[0]]]
    np.testing.assert_allclose(rows, expected, atol=1e-6)


def test_detection_output_keep_top_k_and_none_found():
    rows = detection_output(CONF3, "confidence_threshold: 0.05 keep_top_k: 2")
    np.testing.assert_allclose(rows, [[0, 1, .8, *PRIORS3[0]], [0, 2, .6, *PRIORS3[2]]], atol=1e-6)
    rows = detection_output(CONF3, "confidence_threshold: 0.9")
    np.testing.assert_allclose(rows, [[0, -1, -1, -1, -1, -1, -1]])
    rows = detection_output(np.stack([CONF3, CONF3 * 0.1]), "confidence_threshold: 0.5", num=2,
                            loc=np.zeros((2, 12)))
    np.testing.assert_allclose(rows, [[0, 1, .8, *PRIORS3[0]], [0, 2, .6, *PRIORS3[2]]], atol=1e-6)
    rows = detection_output(np.stack([CONF3, CONF3]), "confidence_threshold: 0.95", num=2)
    np.testing.assert_allclose(rows, [[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]])


def test_detection_output_decodes_and_keeps_unclipped_boxes():
    loc = np.zeros((1, 12))
    loc[0, 8:12] = [1, 1, 1, 1]          # prior 2 moved by its variances (CORNER): +0.1, +0.1, +0.2, +0.2
    rows = detection_output(CONF3, "confidence_threshold: 0.5", loc=loc)
    np.testing.assert_allclose(rows[-1], [0, 2, .6, .7, .7, 1.2, 1.2], atol=1e-6)


def test_detection_output_background_minus_one_scores_every_class():
    rows = detection_output(CONF3, "confidence_threshold: 0.25", background=-1)
    np.testing.assert_allclose(rows, [[0, 0, .3, *PRIORS3[2]], [0, 1, .8, *PRIORS3[0]], [0, 2, .6, *PRIORS3[2]]],
                               atol=1e-6)


# ---------------------------------------------------------------- DetectionEvaluate

GT = np.array([[0, 1, 0, 0, 0, .4, .4, 0], [0, 1, 1, .6, .6, 1, 1, 1], [1, 2, 0, .2, .2, .6, .6, 0]])
DETS = np.array([[0, 1, .8, 0, 0, .4, .4],       # same box as the first gt, but a better one took it: FP
                 [0, 1, .9, 0, 0, .4, .38],      # IoU 0.95: TP
                 [0, 1, .7, .6, .6, 1, 1],       # the difficult gt: neither, unless difficult ones count
                 [0, 2, .5, 0, 0, .1, .1],       # no label-2 gt in image 0: FP
                 [1, 2, .6, .2, .2, .6, .6]])    # TP


@pytest.mark.parametrize("difficult, count1, mark", [("false", 1, [0, 0]), ("true", 2, [1, 0])])
def test_detection_evaluate_by_hand(difficult, count1, mark):
    text = ('type: "DetectionEvaluate" detection_evaluate_param { num_classes: 3 background_label_id: 0 '
            f'overlap_threshold: 0.5 evaluate_difficult_gt: {difficult} }}')
    out, = forward(text, [DETS.reshape(1, 1, 5, 7), GT.reshape(1, 1, 3, 8)])
    expected = [[-1, 1, count1, -1, -1], [-1, 2, 1, -1, -1],
                [0, 1, .9, 1, 0], [0, 1, .8, 0, 1], [0, 1, .7, *mark], [0, 2, .5, 0, 1], [1, 2, .6, 1, 0]]
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-7)


def test_ssd_types_listed():
    import netspec
    assert {"Normalize", "Permute", "PriorBox", "DetectionOutput", "DetectionEvaluate"} <= set(
        netspec.layer_type_list())
