"""Loss layers and Accuracy, so that a train/test net exports whole (its TEST net: scores, loss
and accuracy from the same graph). Each top is the unweighted loss, as in Caffe's blob; labels
arrive as floats and are cast to int64 (truncation, Caffe's static_cast<int>).

Normalizers follow loss_param: VALID counts labels that are not ignore_label, FULL is
outer * inner, BATCH_SIZE outer, NONE 1, always at least 1. With --dynamic-batch, counts that
follow the batch are taken from the tensors' sizes at run time.
"""
import numpy as np

from ..layers.base import FLT_MIN
from ..proto import caffe_pb2
from .registry import exports

Norm = caffe_pb2.LossParameter
LOG_THRESHOLD = 1e-20     # MultinomialLogisticLoss clamps probabilities here before the log (FLT_MIN elsewhere)

# Graph inputs these layers read as labels, for random test input: {type: {bottom index: kind}}.
LABEL_BOTTOMS = {"SoftmaxWithLoss": {1: "class"}, "Accuracy": {1: "class"}, "HingeLoss": {1: "class"},
                 "MultinomialLogisticLoss": {1: "class"},
                 "ContrastiveLoss": {2: "binary"}, "SigmoidCrossEntropyLoss": {1: "unit"}}


def _three_axes(g, x, axis):
    """x viewed as (outer, C, inner) around `axis` (outer None when it follows the batch)."""
    shape, dims = x.shape, x.dims
    outer = None if None in dims[:axis] else int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return g.reshape(x.name, [outer, shape[axis], inner]), outer, inner


def _labels(g, label, outer, inner, ignore):
    """Labels as int64 (outer, 1, inner), ignored ones replaced by 0, and the float mask of valid ones."""
    lab = g.reshape(g.node("Cast", [label.name], to=g.TensorProto.INT64), [outer, 1, inner])
    if ignore is None:
        return lab, None
    valid = g.node("Not", [g.node("Equal", [lab, g.ints(ignore)])])
    lab = g.node("Where", [valid, lab, g.ints(0)])
    return lab, g.node("Cast", [valid], to=g.TensorProto.FLOAT)


def _count(g, like, static):
    """The element count of `like` as a float scalar: a constant unless it follows the batch."""
    if static is not None:
        return g.scalar(static)
    return g.node("Cast", [g.node("Size", [like])], to=g.TensorProto.FLOAT)


def _normalizer(g, mode, terms, outer, inner, valid):
    """max(1, n) for loss_param's normalization mode."""
    if mode == Norm.NONE:
        return g.scalar(1)
    if mode == Norm.VALID and valid is not None:
        n = g.reduce("ReduceSum", valid, [0, 1, 2], keepdims=False)
    elif mode in (Norm.FULL, Norm.VALID):
        n = _count(g, terms, None if outer is None else outer * inner)
    else:                                           # BATCH_SIZE
        n = _count(g, terms, outer)
        if outer is None:
            n = g.node("Div", [n, g.scalar(inner)])
    return g.node("Max", [n, g.scalar(1)])


def _sum_all(g, x, rank):
    return g.reduce("ReduceSum", x, list(range(rank)), keepdims=False)


@exports("SoftmaxWithLoss")
def softmax_with_loss(g, layer, bottoms, tops):
    """-sum log(max(softmax(x)[label], FLT_MIN)) over valid labels / normalizer; top[1] the softmax."""
    scores, outer, inner = _three_axes(g, bottoms[0], layer.axis)
    prob = g.node("Softmax", [scores], axis=1)
    if len(tops) > 1:
        g.reshape(prob, tops[1].dims, tops[1].name)
    lab, valid = _labels(g, bottoms[1], outer, inner, layer.ignore)
    picked = g.node("GatherElements", [prob, lab], axis=1)
    terms = g.node("Neg", [g.node("Log", [g.node("Max", [picked, g.scalar(FLT_MIN)])])])
    if valid is not None:
        terms = g.node("Mul", [terms, valid])
    total = _sum_all(g, terms, 3)
    g.node("Div", [total, _normalizer(g, layer.mode, terms, outer, inner, valid)], [tops[0].name])


@exports("Accuracy")
def accuracy(g, layer, bottoms, tops):
    """An item is correct when fewer than top_k classes score >= its true class's score (itself
    excluded); accuracy = correct / valid labels (0 when none). top[1]: the same per true class."""
    scores, outer, inner = _three_axes(g, bottoms[0], layer.axis)
    lab, valid = _labels(g, bottoms[1], outer, inner, layer.ignore)
    true_score = g.node("GatherElements", [scores, lab], axis=1)
    at_least = g.node("Cast", [g.node("GreaterOrEqual", [scores, true_score])], to=g.TensorProto.FLOAT)
    better = g.node("Sub", [g.reduce("ReduceSum", at_least, [1], keepdims=True), g.scalar(1)])
    correct = g.node("Cast", [g.node("Less", [better, g.scalar(layer.top_k)])], to=g.TensorProto.FLOAT)
    if valid is not None:
        correct = g.node("Mul", [correct, valid])
        count = g.reduce("ReduceSum", valid, [0, 1, 2], keepdims=False)
    else:
        count = _count(g, correct, None if outer is None else outer * inner)
    _ratio(g, _sum_all(g, correct, 3), count, tops[0].name)
    if len(tops) > 1:                                # per class: one-hot of the true class
        onehot = g.node("OneHot", [g.reshape(lab, [outer, inner]), g.ints(layer.C), g.const([0, 1])], axis=1)
        weight = valid if valid is not None else g.scalar(1)
        totals = g.reduce("ReduceSum", g.node("Mul", [onehot, g.reshape(weight, [outer, 1, inner])
                                                      if valid is not None else weight]), [0, 2], keepdims=False)
        hits = g.reduce("ReduceSum", g.node("Mul", [onehot, g.reshape(correct, [outer, 1, inner])]), [0, 2],
                        keepdims=False)
        _ratio(g, hits, totals, tops[1].name)


def _ratio(g, num, den, output):
    """num / den, 0 where den is 0."""
    safe = g.node("Max", [den, g.scalar(1)])
    positive = g.node("Greater", [den, g.scalar(0)])
    g.node("Where", [positive, g.node("Div", [num, safe]), g.scalar(0)], [output])


def _batch_count(g, x):
    """x's first dimension as a float scalar (constant unless it follows the batch)."""
    if x.dims[0] is not None:
        return g.scalar(x.shape[0])
    first = g.node("Gather", [g.node("Shape", [x.name]), g.ints(0)], axis=0)
    return g.node("Cast", [first], to=g.TensorProto.FLOAT)


def _difference(g, a, b):
    """a - b with b viewed in a's shape (Caffe only asks for equal counts)."""
    other = b.name if tuple(b.shape) == tuple(a.shape) else g.reshape(b.name, a.dims)
    return g.node("Sub", [a.name, other])


@exports("EuclideanLoss")
def euclidean_loss(g, layer, bottoms, tops):
    """sum((a - b)^2) / N / 2."""
    a = bottoms[0]
    squares = g.reduce("ReduceSumSquare", _difference(g, a, bottoms[1]), list(range(len(a.shape))), keepdims=False)
    g.node("Div", [g.node("Div", [squares, _batch_count(g, a)]), g.scalar(2)], [tops[0].name])


@exports("SigmoidCrossEntropyLoss")
def sigmoid_cross_entropy_loss(g, layer, bottoms, tops):
    """sum of log(1 + e^-|x|) - x (t - [x >= 0]) over valid targets / normalizer (default BATCH_SIZE)."""
    x, t = bottoms
    outer = x.shape[0] if x.dims[0] is not None else None
    inner = int(np.prod(x.shape[1:], dtype=np.int64))
    xs = g.reshape(x.name, [outer, 1, inner])
    ts = g.reshape(t.name, [outer, 1, inner])
    softplus = g.node("Softplus", [g.node("Neg", [g.node("Abs", [xs])])])
    step = g.node("Cast", [g.node("GreaterOrEqual", [xs, g.scalar(0)])], to=g.TensorProto.FLOAT)
    terms = g.node("Sub", [softplus, g.node("Mul", [xs, g.node("Sub", [ts, step])])])
    valid = None
    if layer.ignore is not None:
        target = g.node("Cast", [ts], to=g.TensorProto.INT64)
        valid = g.node("Cast", [g.node("Not", [g.node("Equal", [target, g.ints(layer.ignore)])])],
                       to=g.TensorProto.FLOAT)
        terms = g.node("Mul", [terms, valid])
    total = _sum_all(g, terms, 3)
    g.node("Div", [total, _normalizer(g, layer.mode, terms, outer, inner, valid)], [tops[0].name])


@exports("ContrastiveLoss")
def contrastive_loss(g, layer, bottoms, tops):
    """sum[y d^2 + (1 - y) max(margin - d, 0)^2] / N / 2 (legacy: max(margin - d^2, 0))."""
    a, b, y = bottoms
    p = layer.layer_param.contrastive_loss_param
    n = None if a.dims[0] is None else a.shape[0]
    diff = g.reshape(_difference(g, a, b), [n, int(np.prod(a.shape[1:], dtype=np.int64))])
    dist_sq = g.reduce("ReduceSumSquare", diff, [1], keepdims=False)
    if p.legacy_version:
        apart = g.node("Max", [g.node("Sub", [g.scalar(p.margin), dist_sq]), g.scalar(0)])
    else:
        gap = g.node("Max", [g.node("Sub", [g.scalar(p.margin), g.node("Sqrt", [dist_sq])]), g.scalar(0)])
        apart = g.node("Mul", [gap, gap])
    label = g.reshape(g.node("Cast", [y.name], to=g.TensorProto.INT64), [n])
    similar = g.node("Not", [g.node("Equal", [label, g.ints(0)])])
    total = _sum_all(g, g.node("Where", [similar, dist_sq, apart]), 1)
    g.node("Div", [g.node("Div", [total, _batch_count(g, a)]), g.scalar(2)], [tops[0].name])



@exports("SmoothL1Loss")
def smooth_l1_loss(g, layer, bottoms, tops):
    """d = w_in (pred - target); f = 0.5 s^2 d^2 where |d| < 1/s^2, else |d| - 0.5/s^2;
    loss = sum |w_out f| / N."""
    pred = bottoms[0]
    d = g.node("Sub", [pred.name, bottoms[1].name])
    if len(bottoms) == 4:
        d = g.node("Mul", [d, bottoms[2].name])
    s2 = layer.sigma2
    size = g.node("Abs", [d])
    quadratic = g.node("Mul", [g.node("Mul", [d, d]), g.scalar(0.5 * s2)])
    linear = g.node("Sub", [size, g.scalar(0.5 / s2)])
    errors = g.node("Where", [g.node("Less", [size, g.scalar(1 / s2)]), quadratic, linear])
    if len(bottoms) == 4:
        errors = g.node("Mul", [errors, bottoms[3].name])
    total = g.reduce("ReduceL1", errors, list(range(len(pred.shape))), keepdims=False)
    g.node("Div", [total, _batch_count(g, pred)], [tops[0].name])


@exports("MultinomialLogisticLoss")
def multinomial_logistic_loss(g, layer, bottoms, tops):
    """-sum log(max(p[label], 1e-20)) / N on probabilities, everything after axis 0 a class."""
    p, label = bottoms
    n = None if p.dims[0] is None else p.shape[0]
    probs = g.reshape(p.name, [n, layer.dim])
    lab = g.reshape(g.node("Cast", [label.name], to=g.TensorProto.INT64), [n, 1])
    picked = g.node("Max", [g.node("GatherElements", [probs, lab], axis=1), g.scalar(LOG_THRESHOLD)])
    total = g.node("Neg", [_sum_all(g, g.node("Log", [picked]), 2)])
    g.node("Div", [total, _batch_count(g, p)], [tops[0].name])


@exports("HingeLoss")
def hinge_loss(g, layer, bottoms, tops):
    """sum max(0, 1 + s * (-1 at the label, else 1)) / N (L1), or the squares' sum (L2)."""
    s, label = bottoms
    n = None if s.dims[0] is None else s.shape[0]
    scores = g.reshape(s.name, [n, layer.dim])
    lab = g.reshape(g.node("Cast", [label.name], to=g.TensorProto.INT64), [n])
    sign = g.node("OneHot", [lab, g.ints(layer.dim), g.const([1, -1])], axis=1)
    margins = g.node("Relu", [g.node("Add", [g.node("Mul", [scores, sign]), g.scalar(1)])])
    l2 = layer.layer_param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2
    op = "ReduceSumSquare" if l2 else "ReduceSum"
    total = g.reduce(op, margins, [0, 1], keepdims=False)
    g.node("Div", [total, _batch_count(g, s)], [tops[0].name])
