"""Loss layers and Accuracy: forward against naive formulas, gradient checks, loss weights, errors."""
import numpy as np
import pytest

from gradcheck import build, check_layer, forward
from netspec.blob import precision
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from netspec.weights import array_to_blob

R = np.random.default_rng(5)


def loss_of(text, bottoms, num_tops=1):
    return float(forward(text, bottoms, num_tops)[0])


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def naive_softmax_loss(x, labels, ignore=None, mode="VALID"):
    """-log p[label] summed over positions (N, H, W...), divided per the normalization mode."""
    p = softmax(x, 1)
    n, c = x.shape[:2]
    p = p.reshape(n, c, -1)
    labels = labels.reshape(n, -1)
    total, valid = 0.0, 0
    for i in range(n):
        for j in range(labels.shape[1]):
            if labels[i, j] == ignore:
                continue
            total -= np.log(p[i, int(labels[i, j]), j])
            valid += 1
    norm = {"FULL": labels.size, "VALID": valid, "BATCH_SIZE": n, "NONE": 1}[mode]
    return total / max(norm, 1)


# ---------------------------------------------------------------- SoftmaxWithLoss

X4 = R.standard_normal((3, 4, 2, 2))             # N=3, C=4, H=W=2
L4 = R.integers(0, 4, (3, 1, 2, 2)).astype(float)
L4_IGNORE = L4.copy()
L4_IGNORE[0, 0, 0, :] = 255
L4_IGNORE[2, 0, 1, 1] = 255


def test_softmax_loss_by_hand():
    x = np.log([[1.0, 3.0], [2.0, 2.0]])         # p(label) = 3/4 and 1/2
    loss = loss_of('type: "SoftmaxWithLoss"', [x, np.array([1.0, 0.0])])
    assert loss == pytest.approx(-(np.log(0.75) + np.log(0.5)) / 2, rel=1e-12)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_softmax_loss_normalization_modes(mode):
    text = f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: 255 normalization: {mode} }}'
    assert loss_of(text, [X4, L4_IGNORE]) == pytest.approx(naive_softmax_loss(X4, L4_IGNORE, 255, mode), rel=1e-12)
    check_layer(text, [X4, L4_IGNORE], check_bottoms=[0])


@pytest.mark.parametrize("flag,mode", [("true", "VALID"), ("false", "BATCH_SIZE")])
def test_softmax_loss_legacy_normalize_flag(flag, mode):
    text = f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: 255 normalize: {flag} }}'
    assert loss_of(text, [X4, L4_IGNORE]) == pytest.approx(naive_softmax_loss(X4, L4_IGNORE, 255, mode), rel=1e-12)
    check_layer(text, [X4, L4_IGNORE], check_bottoms=[0])


def test_softmax_loss_default_is_valid_and_without_ignore_counts_all():
    assert loss_of('type: "SoftmaxWithLoss"', [X4, L4]) == pytest.approx(naive_softmax_loss(X4, L4), rel=1e-12)
    check_layer('type: "SoftmaxWithLoss"', [X4, L4], check_bottoms=[0])


def test_softmax_loss_other_axis():
    x = R.standard_normal((2, 3, 5))              # classes on axis 2
    labels = R.integers(0, 5, (2, 3)).astype(float)
    text = 'type: "SoftmaxWithLoss" softmax_param { axis: 2 }'
    expected = naive_softmax_loss(np.moveaxis(x, 2, 1), labels)
    assert loss_of(text, [x, labels]) == pytest.approx(expected, rel=1e-12)
    check_layer(text, [x, labels], check_bottoms=[0])


def test_softmax_loss_weight_scales_gradient():
    text = 'type: "SoftmaxWithLoss"'
    _, b1, _ = check_layer(text, [X4, L4], check_bottoms=[0], top_weights=[np.array(1.0)])
    _, b2, _ = check_layer(text, [X4, L4], check_bottoms=[0], top_weights=[np.array(2.0)])
    np.testing.assert_allclose(b2[0].diff, 2.0 * b1[0].diff, rtol=1e-14)
    assert np.abs(b1[0].diff).max() > 0


def test_softmax_loss_second_top_is_probabilities():
    out = forward('type: "SoftmaxWithLoss"', [X4, L4], num_tops=2)
    np.testing.assert_allclose(out[1], softmax(X4, 1), rtol=1e-12)
    check_layer('type: "SoftmaxWithLoss"', [X4, L4], num_tops=2, check_bottoms=[0],
                top_weights=[np.array(1.5), np.zeros(X4.shape)])


def test_softmax_loss_all_ignored_gives_zero():
    labels = np.full((3, 1, 2, 2), 7.0)
    assert loss_of('type: "SoftmaxWithLoss" loss_param { ignore_label: 7 }', [X4, labels]) == 0.0


def test_softmax_loss_label_out_of_range():
    labels = L4.copy()
    labels[1, 0, 0, 1] = 4
    with pytest.raises(NetspecError, match=r"layer 'lossy' \(SoftmaxWithLoss\): label value 4 in bottom bottom\[1\] "
                                           r"is out of range for the 4 classes of bottom bottom\[0\] \(expected 0\.\.3\)"):
        forward('name: "lossy" type: "SoftmaxWithLoss"', [X4, labels])


def test_softmax_loss_batch_size_mismatch():
    with pytest.raises(NetspecError, match=r"batch size mismatch.*\(2, 3\).*\(3,\)"):
        forward('type: "SoftmaxWithLoss"', [np.ones((2, 3)), np.zeros(3)])
    with pytest.raises(NetspecError, match=r"number of labels \(6.*must match.*\(2, 4, 2\)"):
        forward('type: "SoftmaxWithLoss"', [np.ones((2, 4, 2)), np.zeros((2, 3))])


# ---------------------------------------------------------------- Accuracy

SCORES = np.array([[0.1, 0.7, 0.2],     # label 1: top-1 right
                   [0.5, 0.3, 0.2],     # label 1: top-2 right only
                   [0.2, 0.2, 0.6],     # label 0: tie with class 1 counts against -> top-2 wrong too
                   [0.3, 0.3, 0.4]])    # label 2: top-1 right
LABELS = np.array([1.0, 1.0, 0.0, 2.0])


def test_accuracy_top1_topk_and_ties():
    assert loss_of('type: "Accuracy"', [SCORES, LABELS]) == pytest.approx(2 / 4)
    assert loss_of('type: "Accuracy" accuracy_param { top_k: 2 }', [SCORES, LABELS]) == pytest.approx(3 / 4)
    assert loss_of('type: "Accuracy" accuracy_param { top_k: 3 }', [SCORES, LABELS]) == pytest.approx(1.0)


def test_accuracy_ignore_label_and_per_class():
    labels = np.array([1.0, -1.0, 0.0, 2.0])
    acc, per_class = forward('type: "Accuracy" accuracy_param { ignore_label: -1 }', [SCORES, labels], num_tops=2)
    assert float(acc) == pytest.approx(2 / 3)
    np.testing.assert_allclose(per_class, [0.0, 1.0, 1.0])
    _, per_class = forward('type: "Accuracy"', [SCORES, LABELS], num_tops=2)
    np.testing.assert_allclose(per_class, [0.0, 0.5, 1.0])
    _, per_class = forward('type: "Accuracy"', [SCORES, np.array([1.0, 1.0, 1.0, 1.0])], num_tops=2)
    np.testing.assert_allclose(per_class, [0.0, 0.25, 0.0])       # classes never seen report 0


def test_accuracy_spatial_axis():
    x = R.standard_normal((2, 3, 4))
    labels = R.integers(0, 3, (2, 4)).astype(float)
    expected = np.mean(np.argmax(x, axis=1) == labels)
    assert loss_of('type: "Accuracy"', [x, labels]) == pytest.approx(expected)
    x2 = np.moveaxis(x, 1, 2)                      # classes last
    assert loss_of('type: "Accuracy" accuracy_param { axis: -1 }', [x2, labels]) == pytest.approx(expected)


def test_accuracy_errors_and_no_backward():
    with pytest.raises(NetspecError, match=r"label value 3 in bottom bottom\[1\] is out of range for the 3 classes .*\(expected 0\.\.2\)"):
        forward('type: "Accuracy"', [SCORES, np.array([0.0, 3.0, 1.0, 1.0])])
    with pytest.raises(NetspecError, match="top_k"):
        forward('type: "Accuracy" accuracy_param { top_k: 4 }', [SCORES, LABELS])
    with precision(np.float64):
        layer, bottom, top = build('type: "Accuracy"', [SCORES, LABELS])
        assert not layer.is_loss and not layer.allow_force_backward(0)
        with pytest.raises(NetspecError, match="no backward"):
            layer.backward(top, [True, False], bottom)


# ---------------------------------------------------------------- Euclidean, sigmoid cross entropy

def test_euclidean_by_hand_and_gradient():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[0.0, 2.0], [1.0, 1.0]])
    assert loss_of('type: "EuclideanLoss"', [a, b]) == pytest.approx((1 + 0 + 4 + 9) / 2 / 2)
    check_layer('type: "EuclideanLoss"', [R.standard_normal((3, 4, 2)), R.standard_normal((3, 8))])
    with pytest.raises(NetspecError, match="same number of values"):
        forward('type: "EuclideanLoss"', [np.ones((2, 3)), np.ones((2, 4))])


def naive_sigmoid_ce(x, t, ignore=None, mode="BATCH_SIZE"):
    s = 1 / (1 + np.exp(-x))
    keep = np.ones(x.shape, bool) if ignore is None else t != ignore
    terms = -(t * np.log(s) + (1 - t) * np.log(1 - s))
    norm = {"FULL": x.size, "VALID": keep.sum(), "BATCH_SIZE": x.shape[0], "NONE": 1}[mode]
    return terms[keep].sum() / max(norm, 1)


def test_sigmoid_cross_entropy_values():
    x = R.standard_normal((3, 5))
    t = R.uniform(0, 1, (3, 5))                    # soft targets are allowed
    assert loss_of('type: "SigmoidCrossEntropyLoss"', [x, t]) == pytest.approx(naive_sigmoid_ce(x, t), rel=1e-12)
    # Large |x| must stay finite: log(1 + exp(-|x|)) - x (t - [x >= 0]).
    big = loss_of('type: "SigmoidCrossEntropyLoss"', [np.array([[100.0, -100.0]]), np.array([[0.0, 1.0]])])
    assert big == pytest.approx(200.0)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_sigmoid_cross_entropy_ignore_and_modes(mode):
    x = R.standard_normal((4, 3))
    t = R.integers(0, 2, (4, 3)).astype(float)
    t[0, 1] = t[2, 2] = -1
    text = f'type: "SigmoidCrossEntropyLoss" loss_param {{ ignore_label: -1 normalization: {mode} }}'
    assert loss_of(text, [x, t]) == pytest.approx(naive_sigmoid_ce(x, t, -1, mode), rel=1e-12)
    check_layer(text, [x, t], check_bottoms=[0])


def test_sigmoid_cross_entropy_gradient_default_and_legacy():
    x, t = R.standard_normal((3, 2, 2)), R.uniform(0, 1, (3, 2, 2))
    check_layer('type: "SigmoidCrossEntropyLoss"', [x, t], check_bottoms=[0])
    text = 'type: "SigmoidCrossEntropyLoss" loss_param { normalize: true }'
    assert loss_of(text, [x, t]) == pytest.approx(naive_sigmoid_ce(x, t, None, "VALID"), rel=1e-12)


# ---------------------------------------------------------------- hinge, multinomial logistic

def naive_hinge(x, labels, power):
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            sign = -1 if j == labels[i] else 1
            total += max(0.0, 1 + sign * x[i, j]) ** power
    return total / x.shape[0]


@pytest.mark.parametrize("norm,power", [("L1", 1), ("L2", 2)])
def test_hinge(norm, power):
    x = R.standard_normal((4, 5)) * 2
    labels = R.integers(0, 5, 4).astype(float)
    text = f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}'
    assert loss_of(text, [x, labels]) == pytest.approx(naive_hinge(x, labels, power), rel=1e-12)
    for kink in (-1.0, 1.0):                        # keep finite differences off the hinge
        x[np.abs(x - kink) < 1e-3] = kink + 0.01
    check_layer(text, [x, labels], check_bottoms=[0])
    with pytest.raises(NetspecError, match=r"label value 5 in bottom bottom\[1\] is out of range for the 5 classes .*\(expected 0\.\.4\)"):
        forward(text, [x, np.array([0.0, 1.0, 5.0, 2.0])])


def test_multinomial_logistic():
    p = softmax(R.standard_normal((4, 3)), 1)
    labels = np.array([0.0, 2.0, 1.0, 1.0])
    expected = -np.mean(np.log(p[np.arange(4), labels.astype(int)]))
    assert loss_of('type: "MultinomialLogisticLoss"', [p, labels]) == pytest.approx(expected, rel=1e-12)
    check_layer('type: "MultinomialLogisticLoss"', [p, labels], check_bottoms=[0])
    # Zero probability is clamped to 1e-20, not -inf.
    assert loss_of('type: "MultinomialLogisticLoss"', [np.array([[0.0, 1.0]]), np.array([0.0])]) == \
        pytest.approx(-np.log(1e-20))


# ---------------------------------------------------------------- contrastive

def naive_contrastive(a, b, y, margin, legacy):
    total = 0.0
    for i in range(a.shape[0]):
        d2 = np.sum((a[i] - b[i]) ** 2)
        if y[i]:
            total += d2
        elif legacy:
            total += max(margin - d2, 0.0)
        else:
            total += max(margin - np.sqrt(d2), 0.0) ** 2
    return total / a.shape[0] / 2


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("margin", [1.0, 2.5])
def test_contrastive(legacy, margin):
    a = R.uniform(-0.6, 0.6, (6, 3, 1, 1))
    b = R.uniform(-0.6, 0.6, (6, 3, 1, 1))
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]).reshape(6, 1, 1, 1)
    text = (f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: {margin} '
            f'legacy_version: {str(legacy).lower()} }}')
    assert loss_of(text, [a, b, y]) == pytest.approx(naive_contrastive(a, b, y.ravel(), margin, legacy), rel=1e-12)
    # Caffe divides by (d + 1e-4) in the non-legacy gradient, so it is exact only up to ~1e-4 / d.
    rtol = 1e-5 if legacy else 2e-3
    layer, bottom, top = check_layer(text, [a, b, y], check_bottoms=[0, 1], rtol=rtol)
    np.testing.assert_allclose(bottom[1].diff, -bottom[0].diff)


def test_contrastive_non_legacy_gradient_matches_caffe_formula():
    a = np.array([[0.3, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[0.0, 0.4], [1.0, 0.0], [5.0, 0.0]])
    y = np.array([0.0, 1.0, 0.0])
    with precision(np.float64):
        layer, bottom, top = build('type: "ContrastiveLoss"', [a, b, y])
        layer.forward(bottom, top)
        top[0].diff[...] = 2.0
        layer.backward(top, [True, False, False], bottom)
    alpha = 2.0 / 3
    expected = np.array([-alpha * (1 - 0.5) / (0.5 + 1e-4) * np.array([0.3, -0.4]),   # dissimilar, d = 0.5
                         alpha * np.array([0.0, 1.0]),                               # similar
                         [0.0, 0.0]])                                                # dissimilar beyond margin
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-12)


def test_contrastive_shape_errors():
    with pytest.raises(NetspecError, match="one value per pair"):
        forward('type: "ContrastiveLoss"', [np.ones((2, 3)), np.ones((2, 3)), np.ones(3)])


# ---------------------------------------------------------------- infogain

def write_matrix(tmp_path, h):
    path = tmp_path / "H.binaryproto"
    path.write_bytes(array_to_blob(np.asarray(h).reshape(1, 1, *h.shape), caffe_pb2.BlobProto()).SerializeToString())
    return str(path)


def naive_infogain(x, labels, h, axis=1):
    p = softmax(x, axis)
    p = np.moveaxis(p, axis, -1).reshape(-1, x.shape[axis])
    labels = labels.reshape(-1).astype(int)
    total = -sum(np.dot(h[labels[i]], np.log(p[i])) for i in range(len(labels)))
    return total / len(labels)


def test_infogain_identity_equals_multinomial_logistic_on_softmax(tmp_path):
    x = R.standard_normal((5, 4))
    labels = R.integers(0, 4, 5).astype(float)
    text = f'type: "InfogainLoss" infogain_loss_param {{ source: "{write_matrix(tmp_path, np.eye(4))}" }}'
    expected = loss_of('type: "MultinomialLogisticLoss"', [softmax(x, 1), labels])
    assert loss_of(text, [x, labels]) == pytest.approx(expected, rel=1e-12)
    assert loss_of(text, [x, labels]) == pytest.approx(loss_of('type: "SoftmaxWithLoss"', [x, labels]), rel=1e-12)
    check_layer(text, [x, labels], check_bottoms=[0])


def test_infogain_random_matrix_from_file_and_bottom(tmp_path):
    x = R.standard_normal((3, 4, 2))
    labels = R.integers(0, 4, (3, 2)).astype(float)
    h = R.uniform(0, 1, (4, 4))
    text = f'type: "InfogainLoss" infogain_loss_param {{ source: "{write_matrix(tmp_path, h)}" }}'
    h32 = h.astype(np.float32).astype(float)          # the file stores float32
    assert loss_of(text, [x, labels]) == pytest.approx(naive_infogain(x, labels, h32), rel=1e-12)
    check_layer(text, [x, labels], check_bottoms=[0])
    assert loss_of('type: "InfogainLoss"', [x, labels, h]) == pytest.approx(naive_infogain(x, labels, h), rel=1e-12)
    check_layer('type: "InfogainLoss"', [x, labels, h], check_bottoms=[0], num_tops=2,
                top_weights=[np.array(2.0), np.zeros(x.shape)])


def test_infogain_axis_and_ignore_label():
    x = R.standard_normal((2, 3, 4))                  # classes on axis 2
    labels = R.integers(0, 4, (2, 3)).astype(float)
    labels[1, 2] = 9
    h = R.uniform(0, 1, (4, 4))
    text = 'type: "InfogainLoss" infogain_loss_param { axis: 2 } loss_param { ignore_label: 9 }'
    keep = labels.reshape(-1) != 9
    p = softmax(x, 2).reshape(-1, 4)[keep]
    lab = labels.reshape(-1)[keep].astype(int)
    expected = -sum(np.dot(h[lab[i]], np.log(p[i])) for i in range(len(lab))) / keep.sum()
    assert loss_of(text, [x, labels, h]) == pytest.approx(expected, rel=1e-12)
    check_layer(text, [x, labels, h], check_bottoms=[0])


def test_infogain_errors(tmp_path):
    x, labels = np.ones((2, 3)), np.zeros(2)
    with pytest.raises(NetspecError, match="cannot read infogain matrix"):
        forward(f'type: "InfogainLoss" infogain_loss_param {{ source: "{tmp_path}/missing.binaryproto" }}',
                [x, labels])
    with pytest.raises(NetspecError, match="needs infogain_loss_param.source"):
        forward('type: "InfogainLoss"', [x, labels])
    with pytest.raises(NetspecError, match="3 classes need 3x3"):
        forward('type: "InfogainLoss"', [x, labels, np.eye(2)])
    with pytest.raises(NetspecError, match=r"label value -2 in bottom bottom\[1\] is out of range for the 3 classes"):
        forward('type: "InfogainLoss"', [x, np.array([0.0, -2.0]), np.eye(3)])
