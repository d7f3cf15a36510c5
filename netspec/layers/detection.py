"""SSD's detection layers (weiliu89/caffe): PriorBox, DetectionOutput, DetectionEvaluate.

Boxes are normalised [xmin, ymin, xmax, ymax]; the box arithmetic is netspec/bbox.py.
"""
import math

import numpy as np

from .. import bbox
from .base import Layer, register


@register("PriorBox")
class PriorBox(Layer):
    """Default boxes for every cell of bottom[0]'s map, in an image of bottom[1]'s size.

    Per cell, for each min_size: the min_size square, the sqrt(min_size * max_size) square,
    then min_size * sqrt(ar) by min_size / sqrt(ar) per aspect ratio other than 1. Top
    (1, 2, H * W * num_priors * 4): the boxes, then their variances.
    """
    num_bottoms = 2
    num_tops = 1

    def setup(self, bottom, top):
        p = self.layer_param.prior_box_param
        if not p.min_size:
            raise self.error("prior_box_param needs at least one min_size")
        # The fork keeps the sizes in ints: 35.84 acts as 35.
        self.min_sizes = [int(s) for s in p.min_size]
        self.max_sizes = [int(s) for s in p.max_size]
        if any(s <= 0 for s in self.min_sizes):
            raise self.error(f"min_size must be positive, got {list(p.min_size)}")
        if self.max_sizes:
            if len(self.max_sizes) != len(self.min_sizes):
                raise self.error(f"max_size needs one value per min_size ({len(self.min_sizes)}), "
                                 f"got {len(self.max_sizes)}")
            if any(mx <= mn for mn, mx in zip(self.min_sizes, self.max_sizes)):
                raise self.error("each max_size must be greater than its min_size")
        ratios = [1.0]
        for ar in p.aspect_ratio:
            if any(abs(ar - r) < 1e-6 for r in ratios):
                continue
            ratios.append(ar)
            if p.flip:
                ratios.append(1.0 / ar)
        self.aspect_ratios = ratios
        self.num_priors = len(ratios) * len(self.min_sizes) + len(self.max_sizes)
        if len(p.variance) > 1 and len(p.variance) != 4:
            raise self.error(f"variance takes 1 or 4 values, got {len(p.variance)}")
        if any(v <= 0 for v in p.variance):
            raise self.error("variance values must be positive")
        self.variance = list(p.variance) or [0.1]
        if p.HasField("img_size") and (p.HasField("img_h") or p.HasField("img_w")):
            raise self.error("give img_size or img_h/img_w, not both")
        self.img_h = p.img_size if p.HasField("img_size") else p.img_h
        self.img_w = p.img_size if p.HasField("img_size") else p.img_w
        if p.HasField("step") and (p.HasField("step_h") or p.HasField("step_w")):
            raise self.error("give step or step_h/step_w, not both")
        self.step_h = p.step if p.HasField("step") else p.step_h
        self.step_w = p.step if p.HasField("step") else p.step_w
        self.offset, self.clip = p.offset, p.clip

    def reshape(self, bottom, top):
        h, w = bottom[0].shape[-2:]
        top[0].reshape((1, 2, h * w * self.num_priors * 4))

    def _shapes(self):
        """(width, height) of the priors of one cell, in pixels, in the fork's order."""
        shapes = []
        for k, size in enumerate(self.min_sizes):
            shapes.append((size, size))
            if self.max_sizes:
                side = math.sqrt(size * self.max_sizes[k])
                shapes.append((side, side))
            for ar in self.aspect_ratios:
                if abs(ar - 1.0) < 1e-6:
                    continue
                shapes.append((size * math.sqrt(ar), size / math.sqrt(ar)))
        return np.array(shapes)

    def forward(self, bottom, top):
        layer_h, layer_w = bottom[0].shape[-2:]
        img_h = self.img_h or bottom[1].shape[-2]
        img_w = self.img_w or bottom[1].shape[-1]
        step_h = self.step_h or np.float32(img_h) / np.float32(layer_h)
        step_w = self.step_w or np.float32(img_w) / np.float32(layer_w)
        cy = ((np.arange(layer_h, dtype=np.float32) + np.float32(self.offset)) * np.float32(step_h)).astype(np.float64)
        cx = ((np.arange(layer_w, dtype=np.float32) + np.float32(self.offset)) * np.float32(step_w)).astype(np.float64)
        half = self._shapes() / 2                                  # (num_priors, 2)
        cy, cx = cy[:, None, None], cx[None, :, None]
        boxes = np.stack(np.broadcast_arrays((cx - half[:, 0]) / img_w, (cy - half[:, 1]) / img_h,
                                             (cx + half[:, 0]) / img_w, (cy + half[:, 1]) / img_h), axis=-1)
        out = top[0].data
        out[0, 0] = boxes.reshape(-1)
        if self.clip:
            np.clip(out[0, 0], 0, 1, out=out[0, 0])
        out[0, 1].reshape(-1, len(self.variance))[...] = self.variance


def _priors(blob, num_priors):
    data = blob.data.reshape(2, num_priors, 4)
    return data[0].astype(np.float32), data[1].astype(np.float32)


@register("DetectionOutput")
class DetectionOutput(Layer):
    """Decoded, per-class NMS'd detections: top (1, 1, K, 7) of [image, label, score, xmin, ymin, xmax, ymax].

    Per image and class (background skipped): scores > confidence_threshold, best first
    (stable), at most nms top_k, greedy NMS; then the keep_top_k best over all classes.
    Rows by image, label ascending, score descending. No detection at all: one row
    [image, -1, ...] per image. save_output_param's files are not written: forward never
    depends on them.
    """
    num_bottoms = (3, 4)
    num_tops = 1

    def setup(self, bottom, top):
        p = self.layer_param.detection_output_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.error("detection_output_param needs num_classes")
        self.num_classes = p.num_classes
        self.share_location = p.share_location
        self.num_loc_classes = 1 if p.share_location else p.num_classes
        self.background = p.background_label_id
        self.code_type = p.code_type
        self.variance_in_target = p.variance_encoded_in_target
        self.keep_top_k = p.keep_top_k
        self.confidence_threshold = p.confidence_threshold if p.HasField("confidence_threshold") \
            else -np.finfo(np.float32).max
        nms = p.nms_param
        self.nms_threshold, self.eta = nms.nms_threshold, nms.eta
        self.top_k = nms.top_k if nms.HasField("top_k") else -1
        if not 0 <= self.nms_threshold:
            raise self.error(f"nms_threshold must be non-negative, got {self.nms_threshold:g}")
        if not 0 < self.eta <= 1:
            raise self.error(f"eta must be in (0, 1], got {self.eta:g}")

    def reshape(self, bottom, top):
        self.num_priors = bottom[2].shape[-1] // 4
        num = bottom[0].shape[0]
        loc_per_item = bottom[0].count // num
        if loc_per_item != self.num_priors * self.num_loc_classes * 4:
            raise self.error(f"bottom {self.bottom_name(0)} has {loc_per_item} location values per image "
                             f"(shape {bottom[0].shape}); {self.num_priors} priors need "
                             f"{self.num_priors * self.num_loc_classes * 4}")
        conf_per_item = bottom[1].count // bottom[1].shape[0]
        if conf_per_item != self.num_priors * self.num_classes:
            raise self.error(f"bottom {self.bottom_name(1)} has {conf_per_item} scores per image "
                             f"(shape {bottom[1].shape}); {self.num_priors} priors x {self.num_classes} "
                             f"classes need {self.num_priors * self.num_classes}")
        # The row count is known only after forward; until then one row per image.
        top[0].reshape((1, 1, num, 7))

    def detect(self, loc, conf, priors, variances):
        """(label, score, box) arrays of one image's kept detections, in output order."""
        boxes = {}
        for c in range(self.num_loc_classes):
            # (The fork skips label -1 too when background_label_id is -1, then aborts for want of boxes.)
            label = -1 if self.share_location else c
            if not self.share_location and c == self.background:
                continue
            boxes[label] = bbox.decode(priors, variances, loc[:, c], self.code_type, self.variance_in_target)
        kept = []          # (label, index into the priors)
        for c in range(self.num_classes):
            if c == self.background:
                continue
            scores = conf[:, c]
            indices = bbox.nms(boxes[-1 if self.share_location else c], scores, self.confidence_threshold,
                               self.nms_threshold, self.eta, self.top_k)
            kept += [(c, i) for i in indices]
        if self.keep_top_k > -1 and len(kept) > self.keep_top_k:
            scores = np.array([conf[i, c] for c, i in kept])
            best = np.argsort(-scores, kind="stable")[:self.keep_top_k]
            # Back to label order; within a label, score order (the order they were kept in).
            kept = [kept[j] for j in sorted(best, key=lambda j: (kept[j][0], -scores[j], j))]
        labels = np.array([c for c, _ in kept], np.int64)
        index = np.array([i for _, i in kept], np.int64)
        scores = conf[index, labels] if kept else np.zeros(0, np.float32)
        located = np.array([boxes[-1 if self.share_location else c][i] for c, i in kept]).reshape(-1, 4)
        return labels, scores, located

    def forward(self, bottom, top):
        num = bottom[0].shape[0]
        loc = bottom[0].data.reshape(num, self.num_priors, self.num_loc_classes, 4)
        conf = bottom[1].data.reshape(num, self.num_priors, self.num_classes)
        priors, variances = _priors(bottom[2], self.num_priors)
        rows = []
        for n in range(num):
            labels, scores, boxes = self.detect(loc[n].astype(np.float32), conf[n].astype(np.float32),
                                                priors, variances)
            if len(labels):
                rows.append(np.column_stack([np.full(len(labels), n), labels, scores, boxes]))
        if rows:
            out = np.concatenate(rows)
        else:
            out = np.full((num, 7), -1.0)
            out[:, 0] = np.arange(num)
        top[0].reshape((1, 1, len(out), 7))
        top[0].data[0, 0] = out


def _ground_truth(rows, skip_difficult=False):
    """{image: {label: [(box, difficult)]}} from (G, 8) rows [image, label, instance, box, difficult]."""
    out = {}
    for row in rows:
        if row[0] == -1 or (skip_difficult and row[7]):
            continue
        out.setdefault(int(row[0]), {}).setdefault(int(row[1]), []).append((row[3:7], bool(row[7])))
    return out


@register("DetectionEvaluate")
class DetectionEvaluate(Layer):
    """SSD's per-detection true/false positive marks, for mAP: top (1, 1, classes + detections, 5).

    First one row per class [-1, label, number of ground truths, -1, -1], then per detection
    (by image, label, score descending) [image, label, score, tp, fp]: a true positive when its
    best-IoU ground truth of the label has IoU >= overlap_threshold and was not taken by a
    better detection; a detection matched to a difficult ground truth counts neither way unless
    evaluate_difficult_gt. Boxes are compared in normalised coordinates; the fork's
    name_size_file (original image sizes, pixel areas with +1) is not read.
    """
    num_bottoms = 2
    num_tops = 1

    def setup(self, bottom, top):
        p = self.layer_param.detection_evaluate_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.error("detection_evaluate_param needs num_classes")
        self.num_classes, self.background = p.num_classes, p.background_label_id
        self.threshold, self.with_difficult = p.overlap_threshold, p.evaluate_difficult_gt

    def reshape(self, bottom, top):
        if bottom[0].shape[-1] != 7 or bottom[1].shape[-1] != 8:
            raise self.error(f"bottoms must be detections (1, 1, N, 7) and ground truth (1, 1, G, 8), got "
                             f"{bottom[0].shape} and {bottom[1].shape}")
        detections = bottom[0].data.reshape(-1, 7)
        valid = int(np.sum((detections[:, 0] != -1) & (detections[:, 1] != -1)))
        classes = self.num_classes - (1 if 0 <= self.background < self.num_classes else 0)
        top[0].reshape((1, 1, classes + valid, 5))

    def forward(self, bottom, top):
        truth = _ground_truth(bottom[1].data.reshape(-1, 8))
        rows = []
        for c in range(self.num_classes):
            if c == self.background:
                continue
            count = sum(1 for labels in truth.values() for _, difficult in labels.get(c, ())
                        if self.with_difficult or not difficult)
            rows.append([-1, c, count, -1, -1])
        found = {}
        for row in bottom[0].data.reshape(-1, 7):
            if row[0] != -1 and row[1] != -1:
                found.setdefault(int(row[0]), {}).setdefault(int(row[1]), []).append(row)
        for image in sorted(found):
            for label in sorted(found[image]):
                dets = found[image][label]
                dets = [dets[k] for k in np.argsort([-d[2] for d in dets], kind="stable")]
                gts = truth.get(image, {}).get(label, [])
                taken = [False] * len(gts)
                boxes = np.array([b for b, _ in gts], np.float32).reshape(-1, 4)
                for det in dets:
                    tp_fp = [0, 1]
                    if gts:
                        iou = bbox.jaccard(det[None, 3:7].astype(np.float32), boxes)[0]
                        best = int(np.argmax(iou))
                        if iou[best] >= self.threshold:
                            if self.with_difficult or not gts[best][1]:
                                tp_fp = [0, 1] if taken[best] else [1, 0]
                                taken[best] = True
                            else:
                                tp_fp = [0, 0]
                    rows.append([image, label, det[2]] + tp_fp)
        top[0].data[0, 0] = np.array(rows, np.float64).reshape(-1, 5)
