"""SSD's box arithmetic (weiliu89/caffe's bbox_util), on (..., 4) arrays [xmin, ymin, xmax, ymax].

Boxes are normalised (fractions of the image), so sizes are width * height with no
+1. The fork computes in float32; so do these functions (float32 in, float32 out).
"""
import numpy as np

from .proto import caffe_pb2

CORNER = caffe_pb2.PriorBoxParameter.CORNER
CENTER_SIZE = caffe_pb2.PriorBoxParameter.CENTER_SIZE
CORNER_SIZE = caffe_pb2.PriorBoxParameter.CORNER_SIZE
_F = np.float32


def box_size(boxes):
    """width * height, 0 for a box whose max is below its min (the fork's BBoxSize)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return np.where((w < 0) | (h < 0), _F(0), w * h)


def jaccard(a, b):
    """IoU of every box in a (A, 4) with every box in b (B, 4): (A, B), 0 where they do not overlap."""
    a = a[:, None, :]
    b = b[None, :, :]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = iw * ih
    union = box_size(a) + box_size(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((iw > 0) & (ih > 0), iou, _F(0)).astype(_F)


def coverage(a, b):
    """Part of each box a covered by the matching box b (the fork's BBoxCoverage), elementwise."""
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    size = box_size(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where((iw > 0) & (ih > 0) & (size > 0), iw * ih / size, 0)
    return out.astype(_F)


def _prior_geometry(priors):
    width = priors[..., 2] - priors[..., 0]
    height = priors[..., 3] - priors[..., 1]
    return width, height, (priors[..., 0] + priors[..., 2]) / 2, (priors[..., 1] + priors[..., 3]) / 2


def decode(priors, variances, code, code_type, variance_in_target):
    """Boxes from the predictions `code` (N, 4) relative to `priors` (N, 4) (the fork's DecodeBBox).

    CORNER: prior corners + offsets; CENTER_SIZE: centre offsets in prior sizes and log sizes;
    CORNER_SIZE: corner offsets in prior sizes. Each offset is first times its variance
    unless the variance is already in the target.
    """
    code = code.astype(_F, copy=False)
    if not variance_in_target:
        code = code * variances
    if code_type == CORNER:
        return (priors + code).astype(_F)
    width, height, cx, cy = _prior_geometry(priors)
    if code_type == CORNER_SIZE:
        scale = np.stack([width, height, width, height], axis=-1)
        return (priors + code * scale).astype(_F)
    if code_type != CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    center_x = code[:, 0] * width + cx
    center_y = code[:, 1] * height + cy
    with np.errstate(over="ignore"):      # untrained nets: inf boxes, as in the fork
        half_w = np.exp(code[:, 2]) * width / _F(2)
        half_h = np.exp(code[:, 3]) * height / _F(2)
    return np.stack([center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], -1).astype(_F)


def encode(priors, variances, boxes, code_type, variance_in_target):
    """The predictions that decode to `boxes` (the fork's EncodeBBox), the inverse of decode."""
    boxes = boxes.astype(_F, copy=False)
    if code_type == CORNER:
        code = boxes - priors
    else:
        width, height, cx, cy = _prior_geometry(priors)
        if code_type == CORNER_SIZE:
            code = (boxes - priors) / np.stack([width, height, width, height], axis=-1)
        elif code_type == CENTER_SIZE:
            bw, bh, bx, by = _prior_geometry(boxes)
            code = np.stack([(bx - cx) / width, (by - cy) / height, np.log(bw / width), np.log(bh / height)], -1)
        else:
            raise ValueError(f"unknown code_type {code_type}")
    if not variance_in_target:
        code = code / variances
    return code.astype(_F)


def max_score_order(scores, threshold, top_k):
    """Indices of scores above threshold, highest first, ties in index order, at most top_k (-1: all)."""
    candidates = np.flatnonzero(scores > threshold)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    return order[:top_k] if top_k > -1 else order


def nms(boxes, scores, score_threshold, nms_threshold, eta=1.0, top_k=-1):
    """The fork's ApplyNMSFast: greedy, highest score first, keep a box whose IoU with every
    kept box is <= the threshold; with eta < 1 the threshold shrinks by eta after each kept
    box while above 0.5. Returns the kept indices, best first."""
    order = max_score_order(scores, score_threshold, top_k)
    if len(order) == 0:
        return order
    iou = jaccard(boxes[order], boxes[order])
    threshold = np.float32(nms_threshold)
    kept = []
    for i in range(len(order)):
        if not kept or iou[i, kept].max() <= threshold:
            kept.append(i)
            if eta < 1 and threshold > 0.5:
                threshold = np.float32(threshold * eta)
    return order[kept]


def match(gt, priors, match_type, overlap_threshold, ignore_cross_boundary=False):
    """The fork's MatchBBox of ground truth boxes (G, 4) to priors (P, 4).

    Bipartite first: repeatedly the highest-IoU (prior, gt) pair among unmatched priors and
    unused ground truths (ties: lowest prior, then lowest gt). Then, for PER_PREDICTION, each
    other prior takes its best gt if that IoU >= overlap_threshold. Returns (indices, overlaps):
    indices (P,) the matched gt or -1 (-2: crossing the image border, ignored), overlaps (P,)
    the matched IoU or, unmatched, the prior's best IoU.
    """
    num_priors = len(priors)
    indices = np.full(num_priors, -1, np.int64)
    if len(gt) == 0:
        return indices, np.zeros(num_priors, _F)
    iou = jaccard(priors, gt)
    if ignore_cross_boundary:
        crossing = ((priors < 0) | (priors > 1)).any(axis=1)
        indices[crossing] = -2
        iou[crossing] = 0
    iou = np.where(iou > 1e-6, iou, _F(0))
    overlaps = iou.max(axis=1)
    free = iou.copy()
    for _ in range(len(gt)):
        free[indices != -1] = -1
        flat = int(np.argmax(free))
        p, g = divmod(flat, len(gt))
        if free[p, g] <= 0:
            break
        indices[p] = g
        overlaps[p] = free[p, g]
        free[:, g] = -1
    if match_type == caffe_pb2.MultiBoxLossParameter.PER_PREDICTION:
        rest = np.flatnonzero(indices == -1)
        candidates = np.where(iou[rest] >= overlap_threshold, iou[rest], _F(-1))
        best = np.argmax(candidates, axis=1)
        ok = candidates[np.arange(len(rest)), best] > 0
        indices[rest[ok]] = best[ok]
        overlaps[rest[ok]] = candidates[np.arange(len(rest)), best][ok]
    return indices, overlaps
