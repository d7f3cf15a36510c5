"""Recurrent layers: LSTMUnit, RNN, LSTM against scalar references and finite differences."""
import math

import numpy as np
import pytest
from google.protobuf import text_format

from gradcheck import build, check_layer, forward
from netspec.blob import precision
from netspec.errors import NetspecError
from netspec.net import Net
from netspec.proto import caffe_pb2

rng = np.random.default_rng(6)


def sig(v):
    return 1.0 / (1.0 + math.exp(-v))


# ---------------------------------------------------------------- scalar references (one number at a time)
def ref_lstm_step(gates, c_prev, cont):
    """gates: list of 4H numbers for one stream; returns (c, h) lists."""
    hid = len(c_prev)
    c, h = [], []
    for d in range(hid):
        i, f = sig(gates[d]), sig(gates[hid + d])
        o, g = sig(gates[2 * hid + d]), math.tanh(gates[3 * hid + d])
        cd = cont * f * c_prev[d] + i * g
        c.append(cd)
        h.append(o * math.tanh(cd))
    return c, h


def matvec(w, v):
    return [sum(w[r][k] * v[k] for k in range(len(v))) for r in range(len(w))]


def ref_rnn(x, cont, params, h0, static=None):
    """x (T, N, D) nested lists; params in Caffe's order; returns o (T, N, H) and h_T (N, H)."""
    if static is None:
        w_xh, b_h, w_hh, w_ho, b_o = params
    else:
        w_xh, b_h, w_s, w_hh, w_ho, b_o = params
    T, N = len(x), len(x[0])
    out = [[None] * N for _ in range(T)]
    h_last = []
    for n in range(N):
        h = list(h0[n])
        for t in range(T):
            hc = [cont[t][n] * v for v in h]
            a = [p + q + b for p, q, b in zip(matvec(w_hh, hc), matvec(w_xh, x[t][n]), b_h)]
            if static is not None:
                a = [p + q for p, q in zip(a, matvec(w_s, static[n]))]
            h = [math.tanh(v) for v in a]
            out[t][n] = [math.tanh(p + b) for p, b in zip(matvec(w_ho, h), b_o)]
        h_last.append(h)
    return np.array(out), np.array(h_last)


def ref_lstm(x, cont, params, h0, c0, static=None):
    if static is None:
        w_xc, b_c, w_hc = params
    else:
        w_xc, b_c, w_s, w_hc = params
    T, N = len(x), len(x[0])
    out = [[None] * N for _ in range(T)]
    h_last, c_last = [], []
    for n in range(N):
        h, c = list(h0[n]), list(c0[n])
        for t in range(T):
            hc = [cont[t][n] * v for v in h]
            g = [p + q + b for p, q, b in zip(matvec(w_hc, hc), matvec(w_xc, x[t][n]), b_c)]
            if static is not None:
                g = [p + q for p, q in zip(g, matvec(w_s, static[n]))]
            c, h = ref_lstm_step(g, c, cont[t][n])
            out[t][n] = h
        h_last.append(h)
        c_last.append(c)
    return np.array(out), np.array(h_last), np.array(c_last)


FILLERS = 'weight_filler { type: "uniform" min: -0.6 max: 0.6 } bias_filler { type: "uniform" min: -0.3 max: 0.3 }'


def rnn_text(kind, hidden, expose=False):
    extra = " expose_hidden: true" if expose else ""
    return f'type: "{kind}" recurrent_param {{ num_output: {hidden} {FILLERS}{extra} }}'


# Sequences of 5 steps for 3 streams; stream 1 restarts at step 3, stream 2 at step 2.
CONT = np.array([[0, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1]], float)


# ---------------------------------------------------------------- LSTMUnit
def test_lstm_unit_forward_worked_by_hand():
    # H = 1, two streams; with cont 0 the old cell is forgotten.
    gates = np.array([[[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.5]]])
    c_prev = np.array([[[2.0], [3.0]]])
    cont = np.array([[1.0, 0.0]])
    c, h = forward('type: "LSTMUnit"', [c_prev, gates, cont], num_tops=2)
    # stream 0: i = f = o = 1/2, g = 0 -> c = 1/2 * 2 = 1, h = 1/2 tanh(1)
    assert np.allclose(c[0, 0], [1.0])
    assert np.allclose(h[0, 0], [0.5 * math.tanh(1.0)])
    # stream 1: cont 0 -> c = sigmoid(1) tanh(0.5), h = sigmoid(2) tanh(c)
    c1 = sig(1.0) * math.tanh(0.5)
    assert np.allclose(c[0, 1], [c1])
    assert np.allclose(h[0, 1], [sig(2.0) * math.tanh(c1)])


def test_lstm_unit_matches_reference_and_gradients():
    hid, n = 3, 4
    gates = rng.standard_normal((1, n, 4 * hid))
    c_prev = rng.standard_normal((1, n, hid))
    cont = np.array([[1.0, 0.0, 1.0, 0.0]])
    c, h = forward('type: "LSTMUnit"', [c_prev, gates, cont], num_tops=2)
    for k in range(n):
        rc, rh = ref_lstm_step(list(gates[0, k]), list(c_prev[0, k]), cont[0, k])
        assert np.allclose(c[0, k], rc) and np.allclose(h[0, k], rh)
    check_layer('type: "LSTMUnit"', [c_prev, gates, cont], num_tops=2, check_bottoms=[0, 1])


def test_lstm_unit_shape_errors():
    with pytest.raises(NetspecError, match=r"gate inputs\) must have shape \(1, 2, 12\).*got \(1, 2, 8\)"):
        build('type: "LSTMUnit" bottom: "c" bottom: "x" bottom: "cont"',
              [np.zeros((1, 2, 3)), np.zeros((1, 2, 8)), np.zeros((1, 2))], num_tops=2)
    with pytest.raises(NetspecError, match=r"cont\) must have shape \(1, 2\)"):
        build('type: "LSTMUnit"', [np.zeros((1, 2, 3)), np.zeros((1, 2, 12)), np.zeros((2,))], num_tops=2)


def test_lstm_unit_refuses_gradient_to_cont():
    with precision(np.float64):
        layer, bottom, top = build('type: "LSTMUnit"', [np.zeros((1, 1, 1)), np.zeros((1, 1, 4)),
                                                       np.ones((1, 1))], num_tops=2)
        layer.forward(bottom, top)
        with pytest.raises(NetspecError, match="sequence continuation"):
            layer.backward(top, [True, True, True], bottom)


# ---------------------------------------------------------------- RNN
def params_of(layer):
    return [p.data.tolist() for p in layer.blobs]


@pytest.mark.parametrize("static", [False, True])
def test_rnn_forward_matches_scalar_reference(static):
    T, N, D, H = 5, 3, 2, 4
    x = rng.standard_normal((T, N, D))
    bottoms = [x, CONT]
    xs = rng.standard_normal((N, 3)) if static else None
    if static:
        bottoms.append(xs)
    with precision(np.float64):
        layer, bottom, top = build(rnn_text("RNN", H), bottoms)
        layer.forward(bottom, top)
        shapes = [p.shape for p in layer.blobs]
        want = [(H, D), (H,)] + ([(H, 3)] if static else []) + [(H, H), (H, H), (H,)]
        assert shapes == want
        expect, _ = ref_rnn(x.tolist(), CONT.tolist(), params_of(layer), np.zeros((N, H)).tolist(),
                            xs.tolist() if static else None)
        assert np.allclose(top[0].data, expect)


def test_rnn_gradients_with_resets():
    check_layer(rnn_text("RNN", 4), [rng.standard_normal((5, 3, 2)), CONT], check_bottoms=[0])


def test_rnn_gradients_with_static_input():
    check_layer(rnn_text("RNN", 3), [rng.standard_normal((5, 3, 2, 2)), CONT, rng.standard_normal((3, 4))],
                check_bottoms=[0, 2])


def test_rnn_exposed_hidden_forward_and_gradients():
    T, N, D, H = 5, 3, 2, 3
    cont = CONT.copy()
    cont[0] = [1, 0, 1]       # streams 0 and 2 continue from the given h_0
    x, h0 = rng.standard_normal((T, N, D)), rng.standard_normal((1, N, H))
    with precision(np.float64):
        layer, bottom, top = build(rnn_text("RNN", H, expose=True), [x, cont, h0], num_tops=2)
        layer.forward(bottom, top)
        expect, h_last = ref_rnn(x.tolist(), cont.tolist(), params_of(layer), h0[0].tolist())
        assert np.allclose(top[0].data, expect)
        assert top[1].shape == (1, N, H) and np.allclose(top[1].data[0], h_last)
    check_layer(rnn_text("RNN", H, expose=True), [x, cont, h0], num_tops=2, check_bottoms=[0, 2])


def test_rnn_exposed_hidden_with_static_input_gradients():
    cont = CONT.copy()
    cont[0] = 1
    check_layer(rnn_text("RNN", 2, expose=True),
                [rng.standard_normal((5, 3, 2)), cont, rng.standard_normal((3, 2)), rng.standard_normal((1, 3, 2))],
                num_tops=2, check_bottoms=[0, 2, 3])


# ---------------------------------------------------------------- LSTM
@pytest.mark.parametrize("static", [False, True])
def test_lstm_forward_matches_scalar_reference(static):
    T, N, D, H = 5, 3, 2, 3
    x = rng.standard_normal((T, N, D))
    bottoms = [x, CONT] + ([rng.standard_normal((N, 2))] if static else [])
    with precision(np.float64):
        layer, bottom, top = build(rnn_text("LSTM", H), bottoms)
        layer.forward(bottom, top)
        want = [(4 * H, D), (4 * H,)] + ([(4 * H, 2)] if static else []) + [(4 * H, H)]
        assert [p.shape for p in layer.blobs] == want
        zeros = np.zeros((N, H)).tolist()
        expect, _, _ = ref_lstm(x.tolist(), CONT.tolist(), params_of(layer), zeros, zeros,
                                bottoms[2].tolist() if static else None)
        assert top[0].shape == (T, N, H)
        assert np.allclose(top[0].data, expect)


def test_lstm_gradients_with_resets():
    check_layer(rnn_text("LSTM", 3), [rng.standard_normal((5, 3, 2)), CONT], check_bottoms=[0])


def test_lstm_gradients_with_static_input():
    check_layer(rnn_text("LSTM", 2), [rng.standard_normal((4, 3, 3)), CONT[:4], rng.standard_normal((3, 2, 2))],
                check_bottoms=[0, 2])


def test_lstm_exposed_hidden_forward_and_gradients():
    T, N, D, H = 5, 3, 2, 2
    cont = CONT.copy()
    cont[0] = [1, 1, 0]
    x = rng.standard_normal((T, N, D))
    h0, c0 = rng.standard_normal((1, N, H)), rng.standard_normal((1, N, H))
    text = rnn_text("LSTM", H, expose=True)
    with precision(np.float64):
        layer, bottom, top = build(text, [x, cont, h0, c0], num_tops=3)
        layer.forward(bottom, top)
        expect, h_last, c_last = ref_lstm(x.tolist(), cont.tolist(), params_of(layer), h0[0].tolist(),
                                          c0[0].tolist())
        assert np.allclose(top[0].data, expect)
        assert np.allclose(top[1].data[0], h_last) and np.allclose(top[2].data[0], c_last)
    check_layer(text, [x, cont, h0, c0], num_tops=3, check_bottoms=[0, 2, 3])


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_state_carries_across_forwards(kind):
    """Without expose_hidden, a forward continues from the previous one's final state: two halves
    with cont 1 at the cut give the same outputs as one forward over the whole sequence."""
    T, N, D, H = 6, 2, 3, 3
    x = rng.standard_normal((T, N, D))
    cont = np.ones((T, N))
    cont[0] = 0
    with precision(np.float64):
        whole, wb, wt = build(rnn_text(kind, H), [x, cont])
        whole.forward(wb, wt)
        halves, hb, ht = build(rnn_text(kind, H), [x[:3], cont[:3]])   # same seed -> same weights
        halves.forward(hb, ht)
        first = ht[0].data.copy()
        hb[0].data[...] = x[3:]
        hb[1].data[...] = cont[3:]
        halves.forward(hb, ht)
        assert np.allclose(np.concatenate([first, ht[0].data]), wt[0].data)
        # cont 0 at the cut starts afresh instead; reset() forgets the carried state too.
        halves.reset()
        halves.forward(hb, ht)
        fresh, fb, ft = build(rnn_text(kind, H), [x[3:], np.vstack([np.zeros((1, N)), cont[4:]])])
        fresh.forward(fb, ft)
        assert np.allclose(ht[0].data, ft[0].data)


def test_recurrent_shape_errors():
    with pytest.raises(NetspecError, match=r"\(cont\) must have shape \(T, N\) = \(5, 3\).*got \(5, 2\)"):
        build(rnn_text("LSTM", 2), [np.zeros((5, 3, 2)), np.zeros((5, 2))])
    with pytest.raises(NetspecError, match="num_output must be set"):
        build('type: "RNN"', [np.zeros((5, 3, 2)), np.zeros((5, 3))])
    with pytest.raises(NetspecError, match=r"\(h_0\) must have shape \(1, 3, 2\), got \(1, 3, 4\)"):
        build(rnn_text("RNN", 2, expose=True), [np.zeros((5, 3, 2)), np.zeros((5, 3)), np.zeros((1, 3, 4))],
              num_tops=2)
    with pytest.raises(NetspecError, match="static input.*N = 3"):
        build(rnn_text("RNN", 2), [np.zeros((5, 3, 2)), np.zeros((5, 3)), np.zeros((2, 4))])


NET = """
name: "seq"
layer { name: "in" type: "Input" top: "x" top: "cont" top: "label"
        input_param { shape { dim: 4 dim: 2 dim: 3 } shape { dim: 4 dim: 2 } shape { dim: 4 dim: 2 } } }
layer { name: "lstm1" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        recurrent_param { num_output: 5 weight_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "h" top: "score"
        inner_product_param { num_output: 3 axis: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
        softmax_param { axis: 2 } }
"""


def test_lstm_in_a_net_loads_caffe_ordered_weights_and_trains():
    net = Net(text_format.Parse(NET, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    assert [b.shape for b in net.params["lstm1"]] == [(20, 3), (20,), (20, 5)]
    # A .caffemodel-like NetParameter with the blobs in Caffe's order loads by layer name.
    trained = caffe_pb2.NetParameter()
    layer = trained.layer.add(name="lstm1", type="LSTM")
    values = [rng.standard_normal(s).astype(np.float32) for s in [(20, 3), (20,), (20, 5)]]
    for v in values:
        blob = layer.blobs.add()
        blob.shape.dim.extend(v.shape)
        blob.data.extend(v.ravel())
    net.copy_from(trained)
    for blob, v in zip(net.params["lstm1"], values):
        assert np.array_equal(blob.data, v)
    # cont is never given a gradient; the loss falls under plain gradient steps.
    x = rng.standard_normal((4, 2, 3))
    label = (x.sum(axis=2) > 0).astype(np.float32)
    cont = np.ones((4, 2))
    cont[0] = 0
    net.blobs["x"].data[...] = x
    net.blobs["cont"].data[...] = cont
    net.blobs["label"].data[...] = label
    losses = []
    for _ in range(60):
        net.clear_param_diffs()
        losses.append(net.forward_backward())
        for blob, _, _ in net.learnable_params:
            blob.data -= 0.5 * blob.diff
    assert losses[-1] < 0.5 * losses[0]
