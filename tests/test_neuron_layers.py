"""Elementwise (neuron) layers: worked-out forward values, gradient checks, in-place equivalence."""
import numpy as np
import pytest

from gradcheck import build, check_layer, forward, make_layer_param
from netspec import rng as netspec_rng
from netspec.blob import Blob, precision
from netspec.errors import NetspecError
from netspec.layers import LAYER_REGISTRY
from netspec.proto import caffe_pb2

R = np.random.default_rng(7)


def fwd(text, x, phase=caffe_pb2.TRAIN):
    return forward(text, [np.asarray(x, float)], phase=phase)[0]


# ---------------------------------------------------------------- forward values worked out by hand

def test_relu_forward():
    x = [-2.0, -0.5, 0.0, 1.5]
    np.testing.assert_allclose(fwd('type: "ReLU"', x), [0, 0, 0, 1.5])
    np.testing.assert_allclose(fwd('type: "ReLU" relu_param { negative_slope: 0.1 }', x), [-0.2, -0.05, 0, 1.5])


def test_sigmoid_tanh_forward():
    x = [0.0, np.log(3.0), -np.log(3.0), 800.0, -800.0]
    np.testing.assert_allclose(fwd('type: "Sigmoid"', x), [0.5, 0.75, 0.25, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(fwd('type: "TanH"', [0.0, np.log(2.0), -np.log(2.0)]), [0, 0.6, -0.6], atol=1e-12)


def test_elu_absval_bnll_forward():
    x = [-np.log(2.0), 0.0, 2.0]
    np.testing.assert_allclose(fwd('type: "ELU" elu_param { alpha: 0.5 }', x), [-0.25, 0, 2], atol=1e-12)
    np.testing.assert_allclose(fwd('type: "AbsVal"', [-3.0, 0.0, 2.5]), [3, 0, 2.5])
    y = fwd('type: "BNLL"', [0.0, np.log(3.0), 100.0, -100.0])
    np.testing.assert_allclose(y, [np.log(2.0), np.log(4.0), 100.0, np.exp(-100.0)], rtol=1e-12)


def test_power_exp_log_forward():
    np.testing.assert_allclose(fwd('type: "Power" power_param { power: 2 scale: 3 shift: 1 }', [1.0, -1.0]), [16, 4])
    np.testing.assert_allclose(fwd('type: "Power" power_param { power: 0 }', [5.0, -2.0]), [1, 1])
    np.testing.assert_allclose(fwd('type: "Exp" exp_param { base: 2 shift: 1 }', [2.0, -1.0]), [8, 1])
    np.testing.assert_allclose(fwd('type: "Exp" exp_param { scale: 2 }', [1.0]), [np.e ** 2])
    np.testing.assert_allclose(fwd('type: "Log" log_param { base: 10 scale: 2 }', [50.0, 0.05]), [2, -1])
    np.testing.assert_allclose(fwd('type: "Log" log_param { shift: 1 }', [np.e - 1]), [1])


def test_threshold_clip_swish_forward():
    np.testing.assert_array_equal(fwd('type: "Threshold" threshold_param { threshold: 0.5 }', [0.2, 0.5, 0.7]),
                                  [0, 0, 1])
    np.testing.assert_allclose(fwd('type: "Clip" clip_param { min: -1 max: 2 }', [-3.0, 0.5, 5.0]), [-1, 0.5, 2])
    x = np.log(3.0) / 2                       # sigmoid(2x) = 0.75
    np.testing.assert_allclose(fwd('type: "Swish" swish_param { beta: 2 }', [x, 0.0]), [0.75 * x, 0])


def test_prelu_forward_and_param_shapes():
    x = np.array([[[-2.0, 3.0], [-4.0, 1.0]]])       # N=1, C=2, W=2
    with precision(np.float64):
        layer, bottom, top = build('type: "PReLU"', [x])
        assert layer.blobs[0].shape == (2,)
        np.testing.assert_array_equal(layer.blobs[0].data, [0.25, 0.25])   # Caffe's default filler
        layer.blobs[0].data[...] = [0.5, -1.0]
        layer.forward(bottom, top)
        np.testing.assert_allclose(top[0].data, [[[-1.0, 3.0], [4.0, 1.0]]])
        shared, bottom, top = build('type: "PReLU" prelu_param { channel_shared: true '
                                    'filler { type: "constant" value: 0.1 } }', [x])
        assert shared.blobs[0].shape == ()                                    # Caffe: a 0-axis blob
        shared.forward(bottom, top)
        np.testing.assert_allclose(top[0].data, [[[-0.2, 3.0], [-0.4, 1.0]]])


def test_prelu_needs_two_axes():
    with pytest.raises(NetspecError, match="at least 2 axes"):
        build('type: "PReLU"', [np.ones(3)])


def test_dropout_test_phase_is_identity():
    x = R.standard_normal((3, 4))
    np.testing.assert_array_equal(fwd('type: "Dropout" dropout_param { dropout_ratio: 0.7 }', x, caffe_pb2.TEST), x)


def test_dropout_train_mask_ratio_and_scale():
    y = fwd('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', np.ones(200000))
    dropped = np.mean(y == 0)
    assert abs(dropped - 0.3) < 0.01
    np.testing.assert_allclose(y[y != 0], 1 / 0.7)
    # Backward applies the same mask and scale.
    with precision(np.float64):
        layer, bottom, top = build('type: "Dropout"', [np.ones((4, 50))])
        layer.forward(bottom, top)
        top[0].diff[...] = 3.0
        layer.backward(top, [True], bottom)
        np.testing.assert_array_equal(bottom[0].diff, np.where(top[0].data == 0, 0, 6.0))


def test_dropout_ratio_must_be_below_one():
    with pytest.raises(NetspecError, match="dropout_ratio"):
        build('type: "Dropout" dropout_param { dropout_ratio: 1 }', [np.ones(3)])


def test_threshold_has_no_backward():
    with precision(np.float64):
        layer, bottom, top = build('type: "Threshold"', [np.ones(3)])
        layer.forward(bottom, top)
        layer.backward(top, [False], bottom)          # nothing requested: fine
        with pytest.raises(NetspecError, match="no backward"):
            layer.backward(top, [True], bottom)


# ---------------------------------------------------------------- gradients

def _away_from(x, points, gap=1e-3):
    """Nudge values off kinks (finite differences straddling a kink are meaningless)."""
    for p in points:
        close = np.abs(x - p) < gap
        x[close] = p + 2 * gap
    return x


GRAD_CASES = [
    ('type: "ReLU"', None),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', None),
    ('type: "ReLU" relu_param { negative_slope: -0.5 }', None),
    ('type: "Sigmoid"', None),
    ('type: "TanH"', None),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', None),
    ('type: "PReLU"', None),
    ('type: "PReLU" prelu_param { channel_shared: true }', None),
    ('type: "PReLU" prelu_param { filler { type: "uniform" min: -1 max: 1 } }', None),
    ('type: "ELU"', None),
    ('type: "ELU" elu_param { alpha: 0.3 }', None),
    ('type: "AbsVal"', None),
    ('type: "BNLL"', None),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', None),
    ('type: "Power" power_param { power: 0.37 scale: 0.5 shift: 3 }', None),   # base stays positive
    ('type: "Power" power_param { power: 1 scale: -2 shift: 1 }', None),
    ('type: "Exp"', None),
    ('type: "Exp" exp_param { base: 3 scale: 0.5 shift: -1 }', None),
    ('type: "Log" log_param { shift: 4 }', None),
    ('type: "Log" log_param { base: 2 scale: 0.5 shift: 3 }', None),
    ('type: "Clip" clip_param { min: -0.5 max: 0.8 }', (-0.5, 0.8)),
    ('type: "Swish"', None),
    ('type: "Swish" swish_param { beta: 1.7 }', None),
]


def _input(kinks=None):
    x = R.standard_normal((2, 3, 4, 5))
    return _away_from(x, (0.0,) + tuple(kinks or ()))


@pytest.mark.parametrize("text,kinks", GRAD_CASES)
def test_gradient(text, kinks):
    check_layer(text, [_input(kinks)])


def _run(text, x, in_place, dy, seed=99):
    """Forward + backward in float64, either out of place or with top == bottom."""
    with precision(np.float64):
        lp = make_layer_param(text)
        netspec_rng.set_seed(seed)
        layer = LAYER_REGISTRY[lp.type](lp)
        bottom = Blob(x.shape)
        bottom.data[...] = x
        top = bottom if in_place else Blob()
        layer.setup([bottom], [top])
        for blob in layer.blobs:                  # same params whatever the run
            blob.data[...] = np.random.default_rng(3).uniform(-0.9, 0.9, blob.shape)
        layer.reshape([bottom], [top])
        netspec_rng.set_seed(seed + 1)
        layer.forward([bottom], [top])
        y = top.data.copy()
        top.diff[...] = dy
        layer.backward([top], [True], [bottom])
        return y, bottom.diff.copy(), [b.diff.copy() for b in layer.blobs]


@pytest.mark.parametrize("text,kinks", GRAD_CASES)
def test_in_place_matches_out_of_place(text, kinks):
    x = _input(kinks)
    dy = R.standard_normal(x.shape)
    y1, dx1, p1 = _run(text, x, False, dy)
    y2, dx2, p2 = _run(text, x, True, dy)
    np.testing.assert_allclose(y2, y1, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(dx2, dx1, rtol=1e-14, atol=1e-14)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(b, a, rtol=1e-14, atol=1e-14)


def test_prelu_param_gradient_accumulates():
    x = _input()
    with precision(np.float64):
        layer, bottom, top = build('type: "PReLU"', [x])
        layer.forward(bottom, top)
        top[0].diff[...] = 1.0
        layer.blobs[0].diff[...] = 5.0
        layer.backward(top, [False], bottom)
        expected = 5.0 + np.sum(np.minimum(x, 0), axis=(0, 2, 3))
        np.testing.assert_allclose(layer.blobs[0].diff, expected)
