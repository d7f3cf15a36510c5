"""Faster R-CNN's region proposal layer (py-faster-rcnn's `rpn.proposal_layer.ProposalLayer`), built in.

py-faster-rcnn ships it as a Python 2 `type: "Python"` layer that needs its compiled NMS, so
netspec supplies the same computation: where a net names python_param { module:
'rpn.proposal_layer' layer: 'ProposalLayer' } and that module cannot be imported, the Python
layer is this class (python.py asks BUILTIN_PYTHON_LAYERS). A user module that imports wins.

Bottoms: rpn_cls_prob_reshape (1, 2A, H, W), rpn_bbox_pred (1, 4A, H, W), im_info (1, 3)
[height, width, scale]. Tops: rois (R, 5) [0, x1, y1, x2, y2], optional scores (R, 1); R
varies per image, so the tops are resized in forward (as py-faster-rcnn does).

param_str is YAML: 'feat_stride' (required, as in py-faster-rcnn), 'scales' (default
[8, 16, 32]); netspec also reads 'ratios' (default [0.5, 1, 2]) and the settings
py-faster-rcnn takes from its config, by phase unless given: pre_nms_topN (TRAIN 12000,
TEST 6000), post_nms_topN (2000, 300), nms_thresh (0.7), min_size (16).
"""
import numpy as np
import yaml

from ..proto import caffe_pb2
from .base import Layer, register

# py-faster-rcnn's fast_rcnn/config.py: cfg.TRAIN / cfg.TEST RPN_* values.
PHASE_DEFAULTS = {
    caffe_pb2.TRAIN: {"pre_nms_topN": 12000, "post_nms_topN": 2000, "nms_thresh": 0.7, "min_size": 16},
    caffe_pb2.TEST: {"pre_nms_topN": 6000, "post_nms_topN": 300, "nms_thresh": 0.7, "min_size": 16},
}


class _ParamLoader(yaml.SafeLoader):
    """Safe YAML plus `!!python/tuple`, which py-faster-rcnn's param_str use for scales."""


_ParamLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                             lambda loader, node: tuple(loader.construct_sequence(node)))


def generate_anchors(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)):
    """(len(ratios) * len(scales), 4) boxes [x1, y1, x2, y2] around the centre of the
    (0, 0, base_size - 1, base_size - 1) box: per ratio r, w = round(sqrt(area / r)),
    h = round(w * r) (numpy's round: halves to even), then each scaled; ratio-major order."""
    centre = 0.5 * (base_size - 1)
    ratios, scales = np.asarray(ratios, np.float64), np.asarray(scales, np.float64)
    w = np.round(np.sqrt(base_size * base_size / ratios))
    h = np.round(w * ratios)
    ws, hs = (w[:, None] * scales[None]).ravel(), (h[:, None] * scales[None]).ravel()
    return np.stack([centre - 0.5 * (ws - 1), centre - 0.5 * (hs - 1),
                     centre + 0.5 * (ws - 1), centre + 0.5 * (hs - 1)], axis=1)


def shifted_anchors(anchors, height, width, feat_stride):
    """All anchors over an H x W map, (H * W * A, 4): anchor fastest, then x, then y."""
    sx, sy = np.meshgrid(np.arange(width) * feat_stride, np.arange(height) * feat_stride)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    return (shifts[:, None, :] + anchors[None]).reshape(-1, 4)


def decode_boxes(boxes, deltas):
    """py-faster-rcnn's bbox_transform_inv, in the deltas' dtype: widths x2 - x1 + 1, centres
    x1 + 0.5 w; the box is centre -/+ 0.5 * w * exp(dw) (x2 without the - 1)."""
    boxes = boxes.astype(deltas.dtype, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    cx = boxes[:, 0] + 0.5 * widths + deltas[:, 0] * widths
    cy = boxes[:, 1] + 0.5 * heights + deltas[:, 1] * heights
    half_w = 0.5 * np.exp(deltas[:, 2]) * widths
    half_h = 0.5 * np.exp(deltas[:, 3]) * heights
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)


def clip_boxes(boxes, height, width):
    """Into [0, width - 1] x [0, height - 1]."""
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height - 1)
    return boxes


def nms(boxes, scores, threshold, max_keep=0):
    """Greedy NMS as py-faster-rcnn's py_cpu_nms: order by score (argsort reversed), keep the
    best, drop the others whose IoU with it exceeds `threshold`; areas (x2 - x1 + 1)(y2 - y1 + 1).
    max_keep > 0 stops after that many (the first ones kept do not depend on the rest)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size and (max_keep <= 0 or len(keep) < max_keep):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, np.int64)


def propose(scores, deltas, im_info, anchors, feat_stride, pre_nms_topN, post_nms_topN, nms_thresh, min_size):
    """One image's proposals: scores (A, H, W) foreground, deltas (4A, H, W) -> (boxes (R, 4), scores (R,))."""
    num_anchors, height, width = scores.shape
    boxes = decode_boxes(shifted_anchors(anchors, height, width, feat_stride),
                         deltas.transpose(1, 2, 0).reshape(-1, 4))
    scores = scores.transpose(1, 2, 0).reshape(-1)
    clip_boxes(boxes, im_info[0], im_info[1])
    smallest = min_size * im_info[2]
    keep = np.flatnonzero((boxes[:, 2] - boxes[:, 0] + 1 >= smallest) & (boxes[:, 3] - boxes[:, 1] + 1 >= smallest))
    boxes, scores = boxes[keep], scores[keep]
    order = scores.argsort()[::-1]
    if pre_nms_topN > 0:
        order = order[:pre_nms_topN]
    boxes, scores = boxes[order], scores[order]
    keep = nms(boxes, scores, nms_thresh, max_keep=post_nms_topN)
    return boxes[keep], scores[keep]


@register("Proposal")
class Proposal(Layer):
    """The proposal layer under its own type name too (settings from python_param.param_str)."""
    num_bottoms = 3
    num_tops = (1, 2)

    def setup(self, bottom, top):
        params = self._read_param_str()
        if not isinstance(params, dict) or "feat_stride" not in params:
            raise self.error(f"param_str must give 'feat_stride' (e.g. \"'feat_stride': 16\"), got {self.param_str!r}")
        known = {"feat_stride", "scales", "ratios", *PHASE_DEFAULTS[caffe_pb2.TEST]}
        unknown = sorted(set(params) - known)
        if unknown:
            raise self.error(f"param_str has unknown key(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(sorted(known))}")
        settings = dict(PHASE_DEFAULTS[self.phase if self.phase in PHASE_DEFAULTS else caffe_pb2.TEST])
        settings.update({k: params[k] for k in settings if k in params})
        self.pre_nms_topN, self.post_nms_topN = int(settings["pre_nms_topN"]), int(settings["post_nms_topN"])
        self.nms_thresh, self.min_size = float(settings["nms_thresh"]), float(settings["min_size"])
        self.feat_stride = params["feat_stride"]
        try:
            self.anchors = generate_anchors(ratios=tuple(params.get("ratios", (0.5, 1, 2))),
                                            scales=tuple(params.get("scales", (8, 16, 32))))
        except (TypeError, ValueError):
            raise self.error("param_str 'scales' and 'ratios' must be lists of numbers") from None
        if not isinstance(self.feat_stride, (int, float)) or self.feat_stride <= 0:
            raise self.error(f"feat_stride must be a positive number, got {self.feat_stride!r}")
        top[0].reshape((1, 5))
        if len(top) > 1:
            top[1].reshape((1, 1, 1, 1))

    def _read_param_str(self):
        """param_str as py-faster-rcnn reads it (YAML, one key per line, `!!python/tuple` allowed);
        `'a': 1, 'b': 2` on one line is read as a YAML flow mapping too."""
        text = self.param_str.strip()
        if not text:
            return {}
        first_error = None
        for candidate in (text, "{" + text + "}"):
            try:
                params = yaml.load(candidate, Loader=_ParamLoader)
            except yaml.YAMLError as e:
                first_error = first_error or e
                continue
            if isinstance(params, dict):
                return params
        reason = str(first_error).splitlines()[0] if first_error else "not a mapping of keys to values"
        raise self.error(f"param_str {self.param_str!r} is not YAML: {reason}")

    def reshape(self, bottom, top):
        a = len(self.anchors)
        prob, deltas, info = bottom[0].shape, bottom[1].shape, bottom[2].shape
        if len(prob) != 4 or prob[0] != 1 or prob[1] != 2 * a:
            raise self.error(f"bottom {self.bottom_name(0)} must be (1, {2 * a}, H, W) for {a} anchors "
                             f"(one image per batch, as py-faster-rcnn), got {prob}")
        if deltas != (1, 4 * a) + prob[2:]:
            raise self.error(f"bottom {self.bottom_name(1)} must be (1, {4 * a}, {prob[2]}, {prob[3]}) to match "
                             f"{self.bottom_name(0)} {prob}, got {deltas}")
        if int(np.prod(info)) < 3:
            raise self.error(f"bottom {self.bottom_name(2)} must hold im_info [height, width, scale], got {info}")

    def forward(self, bottom, top):
        a = len(self.anchors)
        boxes, scores = propose(bottom[0].data[0, a:], bottom[1].data[0], bottom[2].data.reshape(-1)[:3],
                                self.anchors, self.feat_stride, self.pre_nms_topN, self.post_nms_topN,
                                self.nms_thresh, self.min_size)
        top[0].reshape((len(boxes), 5))
        top[0].data[:, 0] = 0
        top[0].data[:, 1:] = boxes
        if len(top) > 1:
            top[1].reshape((len(scores), 1))
            top[1].data[:, 0] = scores

    def backward(self, top, propagate_down, bottom):
        # No gradient through the proposals (py-faster-rcnn's layer has none either).
        for go, b in zip(propagate_down, bottom):
            if go:
                b.diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return False


# python_param (module, layer) -> the built-in class used when that module cannot be imported.
BUILTIN_PYTHON_LAYERS = {("rpn.proposal_layer", "ProposalLayer"): Proposal}

# py-faster-rcnn's training layers, which netspec does not build in: what each one is.
PY_FASTER_RCNN_TRAINING_LAYERS = {
    ("roi_data_layer.layer", "RoIDataLayer"): "training data layer (images, im_info and ground-truth boxes "
                                              "from its roidb)",
    ("rpn.anchor_target_layer", "AnchorTargetLayer"): "RPN training targets (anchor labels and box targets)",
    ("rpn.proposal_target_layer", "ProposalTargetLayer"): "Fast R-CNN training targets (sampled rois, labels, "
                                                          "box targets)",
}


def missing_module_hint(module, layer):
    """What to tell a user whose Python layer module did not import, when netspec knows the layer."""
    what = PY_FASTER_RCNN_TRAINING_LAYERS.get((module, layer))
    if what is None:
        return ""
    return (f"; {module}.{layer} is py-faster-rcnn's {what}, Python 2 code in its lib/ that netspec does "
            "not supply (only rpn.proposal_layer is built in): put a Python 3 port of py-faster-rcnn's "
            "lib/ on PYTHONPATH")
