"""Loss layers (scalar top, loss weight read from top[0].diff as in Caffe) and Accuracy."""
import numpy as np
from google.protobuf.message import DecodeError

from ..errors import NetspecError
from ..proto import caffe_pb2
from ..schema import read_binary_payload
from ..weights import blob_to_array
from .base import FLT_MIN, Layer, nbytes, register, scratch
from .common import softmax, split_at_axis


Norm = caffe_pb2.LossParameter
LOG_THRESHOLD = 1e-20    # Caffe clamps probabilities here before log (MultinomialLogistic, Infogain)


def loss_normalization(layer, default):
    """loss_param.normalization, else the legacy `normalize` flag (true VALID, false BATCH_SIZE), else default."""
    p = layer.layer_param.loss_param
    if p.HasField("normalization"):
        return p.normalization
    if p.HasField("normalize"):
        return Norm.VALID if p.normalize else Norm.BATCH_SIZE
    return default


def normalizer(mode, outer, inner, valid_count):
    n = {Norm.FULL: outer * inner, Norm.VALID: valid_count, Norm.BATCH_SIZE: outer}.get(mode, 1)
    # Caffe's max(1, .): a batch whose labels are all ignored gives loss 0, not NaN.
    return max(1.0, float(n))


class LabelMixin:
    """Integer labels (Caffe's static_cast<int>) with ignore_label and a range check."""

    def check_label_count(self, pred, label, outer, inner, axis):
        if outer * inner != label.count:
            raise self.error(
                f"number of labels ({label.count}, {self.bottom_name(1)} shape {label.shape}) must match the "
                f"number of predictions ({outer * inner}: {self.bottom_name(0)} shape {pred.shape} without axis "
                f"{axis}); e.g. predictions (N, C, H, W) with axis 1 need N*H*W labels in 0..C-1")

    def read_labels(self, label, outer, inner, num_classes, ignore=None):
        """Labels as int64 (outer, inner) with ignored ones replaced by 0, and the mask of valid ones."""
        values = label.data.reshape(outer, inner)
        finite = np.isfinite(values)
        if not finite.all():
            # Caught before the int cast, which would turn a NaN into -9223372036854775808 (and warn).
            raise self.error(f"label value {values[~finite][0]} in bottom {self.bottom_name(1)} is not a number")
        lab = values.astype(np.int64)
        valid = np.ones(lab.shape, bool) if ignore is None else lab != ignore
        bad = valid & ((lab < 0) | (lab >= num_classes))
        if bad.any():
            raise self.error(f"label value {lab[bad][0]} in bottom {self.bottom_name(1)} is out of range for the "
                             f"{num_classes} classes of bottom {self.bottom_name(0)} "
                             f"(expected 0..{num_classes - 1}" + ("" if ignore is None else f" or ignore_label {ignore}")
                             + ")")
        return np.where(valid, lab, 0), valid

    def refuse_backward(self, propagate_down, indices, what):
        if any(i < len(propagate_down) and propagate_down[i] for i in indices):
            raise self.error(f"cannot backpropagate to {what} inputs")


class LossLayer(LabelMixin, Layer):
    is_loss = True
    num_bottoms = 2
    num_tops = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1   # labels get no gradient

    def reshape(self, bottom, top):
        a, b = bottom[0].shape, bottom[1].shape
        if a[:1] != b[:1]:
            raise self.error(f"batch size mismatch: {self.bottom_name(0)} has shape {a} but {self.bottom_name(1)} "
                             f"has shape {b} (their first dimensions must match)")
        top[0].reshape(())

    @staticmethod
    def loss_weight(top):
        return top[0].diff.flat[0]

    def ignore_label(self):
        p = self.layer_param.loss_param
        return p.ignore_label if p.HasField("ignore_label") else None


class _SoftmaxLabelLoss(LossLayer):
    """Shared by SoftmaxWithLoss and InfogainLoss: softmax along an axis, labels on the other axes."""
    num_tops = (1, 2)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        shape = bottom[0].shape
        self.axis = self.canonical_axis(self.softmax_axis(), shape)
        self.outer, self.C, self.inner = split_at_axis(shape, self.axis)
        self.check_label_count(bottom[0], bottom[1], self.outer, self.inner, self.axis)
        if len(top) > 1:
            top[1].reshape(shape)

    def forward_probs(self, bottom, top):
        x = bottom[0].data
        self._prob = prob = softmax(x, self.axis, scratch(self, "prob", x.shape, x.dtype))
        if len(top) > 1:
            np.copyto(top[1].data, prob)
        self._lab, self._valid = self.read_labels(bottom[1], self.outer, self.inner, self.C, self.ignore)
        self._count = int(self._valid.sum())
        return prob.reshape(self.outer, self.C, self.inner)


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(_SoftmaxLabelLoss):
    """-log softmax(x)[label], summed and divided by the normalizer; top[1] (optional) is the softmax."""

    def work_bytes(self, bottom, top):
        return nbytes(bottom[0])              # the softmax probabilities, kept for backward

    def setup(self, bottom, top):
        self.ignore = self.ignore_label()
        self.mode = loss_normalization(self, Norm.VALID)

    def softmax_axis(self):
        return self.layer_param.softmax_param.axis

    def forward(self, bottom, top):
        prob = self.forward_probs(bottom, top)
        p = np.take_along_axis(prob, self._lab[:, None, :], axis=1)[:, 0, :]
        loss = -np.log(np.maximum(p[self._valid], FLT_MIN)).sum()
        top[0].data[...] = loss / normalizer(self.mode, self.outer, self.inner, self._count)

    def backward(self, top, propagate_down, bottom):
        self.refuse_backward(propagate_down, [1], "label")
        if not propagate_down[0]:
            return
        grad = self._prob.reshape(self.outer, self.C, self.inner) * self._valid[:, None, :]
        rows, cols = np.nonzero(self._valid)
        grad[rows, self._lab[rows, cols], cols] -= 1
        grad *= self.loss_weight(top) / normalizer(self.mode, self.outer, self.inner, self._count)
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)


@register("InfogainLoss")
class InfogainLoss(_SoftmaxLabelLoss):
    """-sum_l H[label, l] * log softmax(x)[l]; H from infogain_loss_param.source or a third bottom."""
    num_bottoms = (2, 3)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def setup(self, bottom, top):
        self.ignore = self.ignore_label()
        if self.layer_param.loss_param.HasField("normalize"):
            raise self.error("loss_param.normalize is not supported by InfogainLoss (as in Caffe); "
                             "use loss_param.normalization")
        self.mode = self.layer_param.loss_param.normalization
        self._h_file = None
        if len(bottom) < 3:
            self._h_file = self._read_matrix(self.layer_param.infogain_loss_param.source)

    def _read_matrix(self, path):
        if not path:
            raise self.error("needs infogain_loss_param.source (a BlobProto .binaryproto) or a third bottom with H")
        bp = caffe_pb2.BlobProto()
        try:
            bp.ParseFromString(read_binary_payload(path, "an infogain matrix (.binaryproto)"))
        except NetspecError as e:
            raise self.error(f"cannot read infogain matrix '{path}': {e}") from None
        except DecodeError:
            raise self.error(f"infogain matrix '{path}' is not a BlobProto (.binaryproto) file") from None
        return blob_to_array(bp)

    def softmax_axis(self):
        return self.layer_param.infogain_loss_param.axis

    def _matrix(self, bottom):
        h = bottom[2].data if len(bottom) > 2 else self._h_file
        return np.asarray(h, bottom[0].data.dtype).reshape(self.C, self.C)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        h = bottom[2].data if len(bottom) > 2 else self._h_file
        if h.size != self.C * self.C:
            raise self.error(f"infogain matrix H has shape {h.shape} ({h.size} values); "
                             f"{self.C} classes need {self.C}x{self.C}")

    def forward(self, bottom, top):
        prob = self.forward_probs(bottom, top)
        h_rows = self._matrix(bottom)[self._lab].transpose(0, 2, 1)     # (outer, C, inner): row H[label]
        terms = h_rows * np.log(np.maximum(prob, LOG_THRESHOLD))
        loss = -(terms * self._valid[:, None, :]).sum()
        top[0].data[...] = loss / normalizer(self.mode, self.outer, self.inner, self._count)

    def backward(self, top, propagate_down, bottom):
        self.refuse_backward(propagate_down, [1], "label")
        self.refuse_backward(propagate_down, [2], "infogain matrix")
        if not propagate_down[0]:
            return
        h = self._matrix(bottom)
        prob = self._prob.reshape(self.outer, self.C, self.inner)
        row_sums = h.sum(axis=1)[self._lab]                                # (outer, inner)
        grad = prob * row_sums[:, None, :] - h[self._lab].transpose(0, 2, 1)
        grad *= self._valid[:, None, :]
        grad *= self.loss_weight(top) / normalizer(self.mode, self.outer, self.inner, self._count)
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossLayer):
    """-log p[label] / N on probabilities (N, C, ...): everything after axis 0 counts as a class."""

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.N = bottom[0].shape[0]
        self.dim = bottom[0].count // max(self.N, 1)
        self.check_label_count(bottom[0], bottom[1], self.N, 1, 1)

    def forward(self, bottom, top):
        lab, _ = self.read_labels(bottom[1], self.N, 1, self.dim)
        self._lab = lab[:, 0]
        p = bottom[0].data.reshape(self.N, self.dim)[np.arange(self.N), self._lab]
        self._p = np.maximum(p, LOG_THRESHOLD)
        top[0].data[...] = -np.log(self._p).sum() / self.N

    def backward(self, top, propagate_down, bottom):
        self.refuse_backward(propagate_down, [1], "label")
        if not propagate_down[0]:
            return
        grad = np.zeros((self.N, self.dim), bottom[0].diff.dtype)
        grad[np.arange(self.N), self._lab] = -self.loss_weight(top) / self.N / self._p
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)


@register("Accuracy")
class Accuracy(LabelMixin, Layer):
    """Fraction of items whose true class is among the top_k scores (ties count against);
    optional top[1] holds the accuracy per class. Not a loss; no backward."""
    num_bottoms = 2
    num_tops = (1, 2)

    def setup(self, bottom, top):
        p = self.layer_param.accuracy_param
        self.top_k = p.top_k
        self.ignore = p.ignore_label if p.HasField("ignore_label") else None

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.axis = self.canonical_axis(self.layer_param.accuracy_param.axis, shape)
        self.outer, self.C, self.inner = split_at_axis(shape, self.axis)
        if self.top_k > self.C:
            raise self.error(f"top_k ({self.top_k}) must not exceed the number of classes ({self.C})")
        self.check_label_count(bottom[0], bottom[1], self.outer, self.inner, self.axis)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.C,))

    def forward(self, bottom, top):
        scores = bottom[0].data.reshape(self.outer, self.C, self.inner)
        lab, valid = self.read_labels(bottom[1], self.outer, self.inner, self.C, self.ignore)
        true_score = np.take_along_axis(scores, lab[:, None, :], axis=1)
        better = (scores >= true_score).sum(axis=1) - 1      # the true class itself is not "better"
        correct = (better < self.top_k) & valid
        count = int(valid.sum())
        top[0].data[...] = correct.sum() / count if count else 0
        if len(top) > 1:
            totals = np.bincount(lab[valid], minlength=self.C)
            hits = np.bincount(lab[valid], weights=correct[valid], minlength=self.C)
            top[1].data[...] = np.divide(hits, totals, out=np.zeros(self.C), where=totals > 0)

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("has no backward pass (Accuracy is a metric, not a loss)")


@register("EuclideanLoss")
class EuclideanLoss(LossLayer):
    """sum((a - b)^2) / (2N); both bottoms get gradients."""

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        a, b = bottom[0], bottom[1]
        if a.count != b.count:
            raise self.error(f"inputs must have the same number of values: {self.bottom_name(0)} has shape "
                             f"{a.shape}, {self.bottom_name(1)} has shape {b.shape}")

    def forward(self, bottom, top):
        self._diff = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        n = bottom[0].shape[0]
        top[0].data[...] = np.vdot(self._diff, self._diff) / n / 2

    def backward(self, top, propagate_down, bottom):
        n = bottom[0].shape[0]
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                np.multiply(self._diff.reshape(bottom[i].shape), sign * self.loss_weight(top) / n,
                            out=bottom[i].diff)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(LossLayer):
    """Cross entropy of sigmoid(x) against targets t in [0, 1], computed from x without overflow."""

    def setup(self, bottom, top):
        self.ignore = self.ignore_label()
        self.mode = loss_normalization(self, Norm.BATCH_SIZE)   # Caffe's default for this layer

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error(f"inputs must have the same count: {self.bottom_name(0)} has shape {bottom[0].shape}, "
                             f"{self.bottom_name(1)} has shape {bottom[1].shape}")
        self.outer = bottom[0].shape[0]
        self.inner = bottom[0].count // max(self.outer, 1)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(-1)
        t = bottom[1].data.reshape(-1)
        # -[t log s + (1-t) log(1-s)] = log(1 + exp(-|x|)) - x (t - [x >= 0])
        terms = np.log1p(np.exp(-np.abs(x))) - x * (t - (x >= 0))
        self._valid = None if self.ignore is None else t.astype(np.int64) != self.ignore
        if self._valid is None:
            loss, count = terms.sum(), x.size
        else:
            loss, count = terms[self._valid].sum(), int(self._valid.sum())
        self._norm = normalizer(self.mode, self.outer, self.inner, count)
        top[0].data[...] = loss / self._norm

    def backward(self, top, propagate_down, bottom):
        self.refuse_backward(propagate_down, [1], "target")
        if not propagate_down[0]:
            return
        x = bottom[0].data.reshape(-1)
        grad = 0.5 * np.tanh(0.5 * x) + 0.5 - bottom[1].data.reshape(-1)
        if self._valid is not None:
            grad *= self._valid
        grad *= self.loss_weight(top) / self._norm
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)


@register("HingeLoss")
class HingeLoss(LossLayer):
    """One-vs-all hinge on scores (N, C...): sum max(0, 1 - s_label) + sum_other max(0, 1 + s) / N; L2 squares."""

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.N = bottom[0].shape[0]
        self.dim = bottom[0].count // max(self.N, 1)
        self.check_label_count(bottom[0], bottom[1], self.N, 1, 1)

    def _flip_label_column(self, m):
        m[np.arange(self.N), self._lab] *= -1

    def forward(self, bottom, top):
        self._lab = self.read_labels(bottom[1], self.N, 1, self.dim)[0][:, 0]
        m = bottom[0].data.reshape(self.N, self.dim).copy()
        self._flip_label_column(m)
        m += 1
        np.maximum(m, 0, out=m)
        self._margins = m
        l2 = self.layer_param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2
        top[0].data[...] = (np.vdot(m, m) if l2 else m.sum()) / self.N

    def backward(self, top, propagate_down, bottom):
        self.refuse_backward(propagate_down, [1], "label")
        if not propagate_down[0]:
            return
        grad = self._margins.copy()
        self._flip_label_column(grad)
        if self.layer_param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
            grad *= 2
        else:
            np.sign(grad, out=grad)
        grad *= self.loss_weight(top) / self.N
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)


@register("ContrastiveLoss")
class ContrastiveLoss(LossLayer):
    """Pairs (a, b) with y = 1 similar, 0 dissimilar: sum[y d^2 + (1-y) max(margin - d, 0)^2] / (2N);
    legacy_version uses max(margin - d^2, 0) for dissimilar pairs."""
    num_bottoms = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        a, b, y = bottom
        self.N = a.shape[0]
        if a.count != b.count:
            raise self.error(f"the two inputs must have the same shape: {a.shape} vs {b.shape}")
        if y.count != self.N:
            raise self.error(f"similarity label {self.bottom_name(2)} must hold one value per pair: "
                             f"shape {y.shape} for {self.N} pairs")

    def forward(self, bottom, top):
        p = self.layer_param.contrastive_loss_param
        self._diff = (bottom[0].data - bottom[1].data.reshape(bottom[0].shape)).reshape(self.N, -1)
        self._dist_sq = np.einsum("ij,ij->i", self._diff, self._diff)
        self._similar = bottom[2].data.reshape(-1).astype(np.int64) != 0
        if p.legacy_version:
            apart = np.maximum(p.margin - self._dist_sq, 0)
        else:
            apart = np.maximum(p.margin - np.sqrt(self._dist_sq), 0) ** 2
        top[0].data[...] = np.where(self._similar, self._dist_sq, apart).sum() / self.N / 2

    def backward(self, top, propagate_down, bottom):
        self.refuse_backward(propagate_down, [2], "similarity label")
        p = self.layer_param.contrastive_loss_param
        alpha = self.loss_weight(top) / self.N
        if p.legacy_version:
            active = p.margin - self._dist_sq > 0
            beta = np.full(self.N, -alpha)
        else:
            dist = np.sqrt(self._dist_sq)
            active = p.margin - dist > 0
            beta = -alpha * (p.margin - dist) / (dist + 1e-4)   # Caffe's 1e-4 keeps d = 0 finite
        coef = np.where(self._similar, alpha, np.where(active, beta, 0.0)).astype(self._diff.dtype)
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                bottom[i].diff[...] = (sign * coef[:, None] * self._diff).reshape(bottom[i].shape)
