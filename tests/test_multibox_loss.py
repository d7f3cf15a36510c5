"""SSD's MultiBoxLoss: a case worked out by hand, the mining and normalisation modes, gradients."""
import math
import re

import numpy as np
import pytest

from gradcheck import check_layer, forward
from netspec.errors import NetspecError

PRIORS = np.array([[0, 0, .4, .4], [0, 0, .4, .36], [.2, .2, .6, .6], [.6, .6, 1, 1]])
VARIANCE = [.1, .1, .2, .2]


def prior_blob(priors=PRIORS):
    return np.concatenate([priors.reshape(-1), np.tile(VARIANCE, len(priors))]).reshape(1, 2, -1)


def gt_rows(*rows):
    return np.array(rows, float).reshape(1, 1, len(rows), 8)


DEFAULTS = {"num_classes": 2, "overlap_threshold": 0.5, "neg_overlap": 0.5, "code_type": "CENTER_SIZE",
            "match_type": "PER_PREDICTION", "mining_type": "MAX_NEGATIVE"}


def loss_text(params="", loss_param="normalization: VALID"):
    """The train nets' MultiBoxLoss; `params` ("key: value ...") override DEFAULTS or add fields."""
    fields = dict(DEFAULTS, **dict(re.findall(r"(\w+):\s*(\S+)", params)))
    body = " ".join(f"{k}: {v}" for k, v in fields.items())
    return ('type: "MultiBoxLoss" propagate_down: true propagate_down: true propagate_down: false '
            f'propagate_down: false loss_param {{ {loss_param} }} multibox_loss_param {{ {body} }}')


# One image, one box g = [0, 0, 0.4, 0.38] of label 1. IoU with the priors: 0.95 (bipartite match),
# 0.947 (a per-prediction match), 0.13 and 0 (unmatched, eligible negatives).
GT = gt_rows([0, 1, 0, 0, 0, .4, .38, 0])
CONF = np.array([[0, 1], [0, 0], [2, 0], [0, 1]], float).reshape(1, 8)   # background loss: P2 0.127, P3 1.313
LOC = np.zeros((1, 16))


def hand_loss(num_negatives):
    def sl1(d):
        return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5
    # CENTER_SIZE targets, divided by the variances: P0 (centre 0.2, 0.2, 0.4 x 0.4), P1 (0.2, 0.18, 0.4 x 0.36)
    t0 = [0, (.19 - .2) / .4 / .1, 0, math.log(.38 / .4) / .2]
    t1 = [0, (.19 - .18) / .36 / .1, 0, math.log(.38 / .36) / .2]
    loc = sum(sl1(-t) for t in t0 + t1)
    conf = math.log(1 + math.exp(-1)) + math.log(2)                       # P0, P1 as label 1
    negatives = [math.log(1 + math.exp(1)), math.log(1 + math.exp(-2))]   # P3 first: the higher loss
    conf += sum(negatives[:num_negatives])
    return loc, conf


@pytest.mark.parametrize("ratio, negatives", [(3, 2), (0.5, 1), (0.4, 0)])
def test_forward_by_hand(ratio, negatives):
    out, = forward(loss_text(f"neg_pos_ratio: {ratio}"), [LOC, CONF, prior_blob(), GT])
    loc, conf = hand_loss(negatives)
    assert float(out) == pytest.approx((loc + conf) / 2, rel=1e-5)     # VALID: 2 matches


@pytest.mark.parametrize("loss_param, divisor", [("normalization: FULL", 4), ("normalization: BATCH_SIZE", 1),
                                                 ("normalization: NONE", 1), ("normalize: false", 1)])
def test_normalization_modes(loss_param, divisor):
    out, = forward(loss_text("neg_pos_ratio: 0.5 loc_weight: 2", loss_param), [LOC, CONF, prior_blob(), GT])
    loc, conf = hand_loss(1)
    assert float(out) == pytest.approx((2 * loc + conf) / divisor, rel=1e-5)


def test_bipartite_only_and_no_mining():
    out, = forward(loss_text("match_type: BIPARTITE neg_pos_ratio: 1", "normalization: NONE"),
                   [LOC, CONF, prior_blob(), GT])
    t0 = [(.19 - .2) / .4 / .1, math.log(.38 / .4) / .2]
    loc = sum(0.5 * t * t for t in t0)
    conf = math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))      # P0 positive, P3 the one negative
    assert float(out) == pytest.approx(loc + conf, rel=1e-5)
    # No mining: every prior counts, the unmatched ones as background.
    out, = forward(loss_text("mining_type: NONE", "normalization: NONE"), [LOC, CONF, prior_blob(), GT])
    loc, conf = hand_loss(2)
    assert float(out) == pytest.approx(loc + conf, rel=1e-5)


def test_images_without_ground_truth_and_difficult_boxes():
    gt = gt_rows([1, 1, 0, 0, 0, .4, .38, 1])          # image 1 only, and difficult
    conf = np.concatenate([CONF, CONF])
    out, = forward(loss_text("neg_pos_ratio: 0.5"), [np.zeros((2, 16)), conf, prior_blob(), gt])
    loc, c = hand_loss(1)
    assert float(out) == pytest.approx((loc + c) / 2, rel=1e-5)
    out, = forward(loss_text("neg_pos_ratio: 0.5 use_difficult_gt: false"), [np.zeros((2, 16)), conf, prior_blob(), gt])
    assert float(out) == 0
    empty = gt_rows([-1, -1, -1, -1, -1, -1, -1, -1])     # AnnotatedData's row for a batch with no box
    out, = forward(loss_text(), [np.zeros((2, 16)), conf, prior_blob(), empty])
    assert float(out) == 0


@pytest.mark.parametrize("params", ["neg_pos_ratio: 3", "mining_type: NONE", "loc_loss_type: L2 loc_weight: 0.7",
                                    "encode_variance_in_target: true", "code_type: CORNER bp_inside: true",
                                    "code_type: CORNER_SIZE match_type: BIPARTITE"])
def test_gradient(params):
    rng = np.random.default_rng(3)
    # A 3 x 3 map of 0.3 squares and 0.45 x 0.2 boxes, some crossing the border; 3 images, one without boxes.
    centres = [(x, y) for y in (.15, .5, .85) for x in (.15, .5, .85)]
    priors = np.array([[x - w / 2, y - h / 2, x + w / 2, y + h / 2] for x, y in centres
                       for w, h in ((.3, .3), (.45, .2))])
    gt = gt_rows([0, 1, 0, .1, .1, .45, .4, 0], [0, 2, 1, .5, .55, .95, .9, 0], [2, 2, 0, .3, .2, .7, .5, 0])
    num_priors = len(priors)
    loc = rng.standard_normal((3, num_priors * 4)) * 0.5
    conf = rng.standard_normal((3, num_priors * 3))
    text = loss_text(params + " num_classes: 3")
    check_layer(text, [loc, conf, prior_blob(priors), gt], check_bottoms=[0, 1], max_checks=80)


@pytest.mark.parametrize("params, message", [
    ("share_location: false", "share_location: false is not supported"),
    ("mining_type: HARD_EXAMPLE", "HARD_EXAMPLE is not supported"),
    ("do_neg_mining: false", "do_neg_mining contradicts"),
])
def test_refusals(params, message):
    with pytest.raises(NetspecError, match=message):
        forward(loss_text(params), [LOC, CONF, prior_blob(), GT])


def test_background_label_in_ground_truth_is_an_error():
    with pytest.raises(NetspecError, match="background label 0"):
        forward(loss_text(), [LOC, CONF, prior_blob(), gt_rows([0, 0, 0, 0, 0, .4, .38, 0])])
