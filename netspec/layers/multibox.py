"""SSD's training loss (weiliu89/caffe's MultiBoxLoss).

Bottoms: locations (N, P * 4), class scores (N, P * C), the priors (1, 2, P * 4) and the
ground truth (1, 1, G, 8) rows [image, label, instance, xmin, ymin, xmax, ymax, difficult].
"""
import numpy as np

from .. import bbox
from ..proto import caffe_pb2
from .base import FLT_MIN, Layer, register
from .loss import Norm, loss_normalization, normalizer

P = caffe_pb2.MultiBoxLossParameter


def _smooth_l1(d):
    """SSD's SmoothL1Loss per element and its derivative: 0.5 d^2 where |d| < 1, else |d| - 0.5."""
    small = np.abs(d) < 1
    return np.where(small, 0.5 * d * d, np.abs(d) - 0.5), np.where(small, d, np.sign(d))


def _l2(d):
    """EuclideanLoss on one row: 0.5 d^2."""
    return 0.5 * d * d, d


@register("MultiBoxLoss")
class MultiBoxLoss(Layer):
    """(loc_weight * localisation + confidence) / normaliser, over matched priors and mined negatives.

    Matching (on the priors): bipartite, then for PER_PREDICTION every other prior with a
    ground truth at IoU >= overlap_threshold. Localisation: smooth L1 (or L2) between the
    predictions and the ground truth encoded against the matched priors. Confidence: softmax
    cross-entropy of the matched priors (their labels) and, with MAX_NEGATIVE mining, per image
    the int(num_pos * neg_pos_ratio) unmatched priors of max IoU < neg_overlap with the highest
    background loss (background label). Normaliser: loss_param.normalization (VALID: the matches).
    """
    is_loss = True
    num_bottoms = 4
    num_tops = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def setup(self, bottom, top):
        p = self.layer_param.multibox_loss_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.error("multibox_loss_param needs num_classes")
        unsupported = [(not p.share_location, "share_location: false"),
                       (not p.use_prior_for_matching, "use_prior_for_matching: false"),
                       (p.conf_loss_type != P.SOFTMAX, "conf_loss_type: LOGISTIC"),
                       (p.mining_type == P.HARD_EXAMPLE, "mining_type: HARD_EXAMPLE"),
                       (p.map_object_to_agnostic, "map_object_to_agnostic: true")]
        for bad, what in unsupported:
            if bad:
                raise self.error(f"{what} is not supported (netspec runs SSD's published configuration: "
                                 "shared locations matched on the priors, softmax scores, MAX_NEGATIVE or NONE mining)")
        if p.HasField("do_neg_mining") and p.do_neg_mining != (p.mining_type != P.NONE):
            raise self.error("do_neg_mining contradicts mining_type (do_neg_mining is deprecated; use mining_type)")
        self.p = p
        self.num_classes = p.num_classes
        self.loc_loss = _smooth_l1 if p.loc_loss_type == P.SMOOTH_L1 else _l2
        self.mode = loss_normalization(self, Norm.VALID)
        # The fork adds a term only where the prototxt's propagate_down allows it (absent: both).
        down = list(self.layer_param.propagate_down)
        self.use_loc = down[0] if down else True
        self.use_conf = down[1] if len(down) > 1 else True

    def reshape(self, bottom, top):
        self.num = bottom[0].shape[0]
        self.num_priors = bottom[2].shape[-1] // 4
        if bottom[0].count != self.num * self.num_priors * 4:
            raise self.error(f"bottom {self.bottom_name(0)} shape {bottom[0].shape} does not hold 4 location "
                             f"values for each of the {self.num_priors} priors of bottom {self.bottom_name(2)}")
        if bottom[1].count != self.num * self.num_priors * self.num_classes:
            raise self.error(f"bottom {self.bottom_name(1)} shape {bottom[1].shape} does not hold "
                             f"{self.num_classes} scores for each of the {self.num_priors} priors")
        if bottom[3].shape[-1] != 8:
            raise self.error(f"bottom {self.bottom_name(3)} shape {bottom[3].shape}: ground truth rows have 8 values")
        top[0].reshape(())

    def ground_truth(self, rows):
        """{image: (boxes (G, 4), labels (G,))}, difficult ones dropped unless use_difficult_gt."""
        per_image = {}
        for row in rows:
            if row[0] == -1:
                continue
            label = int(row[1])
            if label == self.p.background_label_id:
                raise self.error(f"ground truth of image {int(row[0])} has the background label {label}")
            if not 0 <= label < self.num_classes:
                raise self.error(f"ground truth label {label} is outside [0, {self.num_classes})")
            if row[7] and not self.p.use_difficult_gt:
                continue
            per_image.setdefault(int(row[0]), []).append((row[3:7], label))
        return {n: (np.array([b for b, _ in g], np.float32), np.array([l for _, l in g])) for n, g in per_image.items()}

    def forward(self, bottom, top):
        p = self.p
        priors, variances = (a.astype(np.float32) for a in bottom[2].data.reshape(2, self.num_priors, 4))
        loc = bottom[0].data.reshape(self.num, self.num_priors, 4)
        conf = bottom[1].data.reshape(self.num, self.num_priors, self.num_classes)
        peak = conf.max(axis=2, keepdims=True)
        self.prob = np.exp(conf - peak)
        self.prob /= self.prob.sum(axis=2, keepdims=True)
        truth = self.ground_truth(bottom[3].data.reshape(-1, 8))
        background = p.background_label_id
        # Per image: matched (prior, gt) pairs, then the confidence rows (prior, label).
        self.matched, conf_rows = [], []
        for n in range(self.num):
            if n not in truth:
                if p.mining_type == P.NONE:
                    conf_rows += [(n, j, background) for j in range(self.num_priors)]
                continue
            boxes, labels = truth[n]
            index, overlap = bbox.match(boxes, priors, p.match_type, p.overlap_threshold, p.ignore_cross_boundary_bbox)
            pos = np.flatnonzero(index > -1)
            self.matched += [(n, j, boxes[index[j]]) for j in pos]
            if p.mining_type == P.NONE:
                target = np.where(index > -1, labels[np.maximum(index, 0)], background)
                conf_rows += [(n, j, int(target[j])) for j in range(self.num_priors)]
                continue
            conf_rows += [(n, j, int(labels[index[j]])) for j in pos]
            eligible = np.flatnonzero((index == -1) & (overlap < p.neg_overlap))
            count = min(int(len(pos) * p.neg_pos_ratio), len(eligible))
            loss = -np.log(np.maximum(self.prob[n, eligible, background], FLT_MIN))
            hardest = eligible[np.argsort(-loss, kind="stable")[:count]]
            conf_rows += [(n, j, background) for j in np.sort(hardest)]
        self.norm = normalizer(self.mode, self.num, self.num_priors, len(self.matched))
        total = 0.0
        if self.matched:
            img, prior, gt = (np.array(x) for x in zip(*self.matched))
            self.loc_at = (img, prior)
            pred = loc[img, prior].astype(np.float64)
            target = bbox.encode(priors[prior], variances[prior], gt.reshape(-1, 4), p.code_type,
                                 p.encode_variance_in_target).astype(np.float64)
            self.loc_scale = np.ones_like(pred)
            if p.bp_inside:      # coordinates of priors outside the image: the target, so no gradient
                outside = (priors[prior] < 0) | (priors[prior] > 1)
                pred = np.where(outside, target, pred)
                self.loc_scale = np.where(outside, 0.0, 1.0)
            if p.encode_variance_in_target:
                pred, target = pred / variances[prior], target / variances[prior]
                self.loc_scale = self.loc_scale / variances[prior]
            values, self.loc_grad = self.loc_loss(pred - target)
            if self.use_loc:
                total += p.loc_weight * values.sum()
        self.conf_rows = np.array(conf_rows, np.int64).reshape(-1, 3)
        if len(self.conf_rows) and self.use_conf:
            n, j, label = self.conf_rows.T
            total += -np.log(np.maximum(self.prob[n, j, label], FLT_MIN)).sum()
        top[0].data[...] = total / self.norm

    def backward(self, top, propagate_down, bottom):
        scale = float(top[0].diff.flat[0]) / self.norm
        if propagate_down[0]:
            diff = bottom[0].diff.reshape(self.num, self.num_priors, 4)
            diff[...] = 0
            if self.matched:
                diff[self.loc_at] = self.p.loc_weight * scale * self.loc_grad * self.loc_scale
        if propagate_down[1]:
            diff = bottom[1].diff.reshape(self.num, self.num_priors, self.num_classes)
            diff[...] = 0
            if len(self.conf_rows):
                n, j, label = self.conf_rows.T
                grad = self.prob[n, j].copy()
                grad[np.arange(len(label)), label] -= 1
                diff[n, j] = grad * scale
