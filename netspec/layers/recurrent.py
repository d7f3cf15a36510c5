"""Recurrent layers with Caffe's semantics: LSTMUnit, RNN and LSTM.

Caffe builds RNN and LSTM as an unrolled internal net; here they loop over the
T time steps directly (every step is vectorised over the N streams), with the
same equations, blob layouts and parameter order, so .caffemodel weights load:

    RNN   params W_xh (H, D), b_h (H), [W_xh_static (H, Ds)], W_hh (H, H), W_ho (H, H), b_o (H)
          h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
          o_t = tanh(W_ho h_t + b_o)                               top: o (T, N, H)
    LSTM  params W_xc (4H, D), b_c (4H), [W_xc_static (4H, Ds)], W_hc (4H, H)
          gates = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
          (i, f, o, g) = (sigmoid, sigmoid, sigmoid, tanh) of the four H-wide slices
          c_t = cont_t f c_{t-1} + i g,   h_t = o tanh(c_t)        top: h (T, N, H)

Bottoms: x (T, N, ...), cont (T, N), optionally x_static (N, ...), then with
`expose_hidden` the initial states (RNN h_0; LSTM h_0, c_0, each (1, N, H)); with
`expose_hidden` the final states follow the output as extra tops (RNN h_T; LSTM h_T, c_T).
Without `expose_hidden` the final state of one forward is the initial state of the
next (Caffe's behaviour; cont_t = 0 at a sequence start cuts it), starting from zeros;
no gradient crosses from one forward to the next (truncated backpropagation).

Differences from Caffe, both deliberate: the number of time steps may change between
forwards, and with `expose_hidden` gradients do reach the initial-state bottoms and do
flow back from the final-state tops (Caffe's unrolled net drops both).
"""
import numpy as np

from .. import fillers
from .base import Layer, prod, register
from .neuron import sigmoid


# ---------------------------------------------------------------- the LSTM cell, shared by LSTMUnit and LSTM
def lstm_cell_forward(gates, c_prev, cont, acts, c, tanh_c, h):
    """One step for N streams: gates (N, 4H) pre-activations, c_prev (N, H), cont (N,).

    Fills acts (N, 4H) with the activated i, f, o, g (f before the cont factor),
    c, tanh_c and h (N, H).
    """
    hid = c_prev.shape[1]
    sigmoid(gates[:, :3 * hid], acts[:, :3 * hid])
    np.tanh(gates[:, 3 * hid:], out=acts[:, 3 * hid:])
    i, f, o, g = (acts[:, k * hid:(k + 1) * hid] for k in range(4))
    # Caffe: f = 0 where cont is 0, else cont * sigmoid.
    np.multiply(f, c_prev, out=c)
    c *= cont[:, None]
    c += i * g
    np.tanh(c, out=tanh_c)
    np.multiply(o, tanh_c, out=h)


def lstm_cell_backward(acts, c_prev, cont, tanh_c, dc, dh, dgates):
    """Gradients of one step: dc, dh (N, H) arriving at c_t and h_t.

    Fills dgates (N, 4H) with the gradient of the pre-activations and returns the
    gradient reaching c_prev.
    """
    hid = c_prev.shape[1]
    i, f, o, g = (acts[:, k * hid:(k + 1) * hid] for k in range(4))
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
    cf = cont[:, None]
    dgates[:, :hid] = dc_total * g * i * (1 - i)
    dgates[:, hid:2 * hid] = dc_total * c_prev * cf * f * (1 - f)
    dgates[:, 2 * hid:3 * hid] = dh * tanh_c * o * (1 - o)
    dgates[:, 3 * hid:] = dc_total * i * (1 - g * g)
    return dc_total * f * cf


@register("LSTMUnit")
class LSTMUnit(Layer):
    """One LSTM step: bottoms c_prev (1, N, H), gates (1, N, 4H), cont (1, N); tops c, h (1, N, H)."""
    num_bottoms = 3
    num_tops = 2

    def reshape(self, bottom, top):
        label = [self.bottom_name(i) for i in range(3)]
        c_shape, x_shape, cont_shape = bottom[0].shape, bottom[1].shape, bottom[2].shape
        if len(c_shape) != 3 or c_shape[0] != 1:
            raise self.error(f"bottom {label[0]} (c_prev) must have shape (1, N, H), got {c_shape}")
        n, hid = c_shape[1], c_shape[2]
        if x_shape != (1, n, 4 * hid):
            raise self.error(f"bottom {label[1]} (gate inputs) must have shape (1, {n}, {4 * hid}) to match "
                             f"c_prev {c_shape}, got {x_shape}")
        if cont_shape != (1, n):
            raise self.error(f"bottom {label[2]} (cont) must have shape (1, {n}) to match c_prev {c_shape}, "
                             f"got {cont_shape}")
        self.acts = np.empty((n, 4 * hid), bottom[1].data.dtype)
        self.tanh_c = np.empty((n, hid), bottom[1].data.dtype)
        top[0].reshape(c_shape)
        top[1].reshape(c_shape)

    def forward(self, bottom, top):
        n, hid = bottom[0].shape[1:]
        lstm_cell_forward(bottom[1].data.reshape(n, 4 * hid), bottom[0].data.reshape(n, hid),
                          bottom[2].data.reshape(n), self.acts, top[0].data.reshape(n, hid),
                          self.tanh_c, top[1].data.reshape(n, hid))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise self.error("cannot backpropagate to the sequence continuation indicators (bottom 2)")
        if not (propagate_down[0] or propagate_down[1]):
            return
        n, hid = bottom[0].shape[1:]
        dgates = np.empty((n, 4 * hid), bottom[1].data.dtype)
        dc_prev = lstm_cell_backward(self.acts, bottom[0].data.reshape(n, hid), bottom[2].data.reshape(n),
                                     self.tanh_c, top[0].diff.reshape(n, hid), top[1].diff.reshape(n, hid),
                                     dgates)
        if propagate_down[0]:
            bottom[0].diff[...] = dc_prev.reshape(bottom[0].shape)
        if propagate_down[1]:
            bottom[1].diff[...] = dgates.reshape(bottom[1].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2


# ---------------------------------------------------------------- RNN and LSTM
class _Recurrent(Layer):
    """What RNN and LSTM share: bottoms and tops, shapes, parameters, carried state, input transforms."""
    state_names = ()        # initial-state bottoms, in Caffe's order
    gate_factor = 1         # gate rows per hidden unit (LSTM: 4)

    def __init__(self, layer_param, phase=None):
        super().__init__(layer_param, phase)
        self.expose_hidden = layer_param.recurrent_param.expose_hidden
        exposed = len(self.state_names) if self.expose_hidden else 0
        self.num_bottoms = (2 + exposed, 3 + exposed)
        self.num_tops = 1 + exposed

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    # --- setup and shapes
    def setup(self, bottom, top):
        p = self.layer_param.recurrent_param
        if p.num_output <= 0:
            raise self.error("recurrent_param.num_output must be set to a positive number")
        self.hidden = int(p.num_output)
        exposed = len(self.state_names) if self.expose_hidden else 0
        self.static = len(bottom) > 2 + exposed
        self._check_shapes(bottom)
        self.input_dim = prod(bottom[0].shape[2:])
        rows = self.gate_factor * self.hidden
        self.static_dim = prod(bottom[2].shape[1:]) if self.static else 0
        self.make_params(p, rows)
        self.carry = None

    def _weight(self, p, shape):
        return fillers.fill(p.weight_filler, self.add_param_blob(shape).data)

    def _bias(self, p, shape):
        return fillers.fill(p.bias_filler, self.add_param_blob(shape).data)

    def _check_shapes(self, bottom):
        x, cont = bottom[0].shape, bottom[1].shape
        if len(x) < 2:
            raise self.error(f"bottom {self.bottom_name(0)} must have at least 2 axes (T time steps, N streams, ...), "
                             f"got shape {x}")
        t, n = x[0], x[1]
        if cont != (t, n):
            raise self.error(f"bottom {self.bottom_name(1)} (cont) must have shape (T, N) = ({t}, {n}) to match "
                             f"{self.bottom_name(0)} {x}, got {cont}")
        if self.static:
            s = bottom[2].shape
            if len(s) < 1 or s[0] != n:
                raise self.error(f"bottom {self.bottom_name(2)} (static input) must have N = {n} items on axis 0 "
                                 f"to match {self.bottom_name(0)} {x}, got {s}")
        if self.expose_hidden:
            want = (1, n, self.hidden) if hasattr(self, "hidden") else None
            first = 2 + self.static
            for j, name in enumerate(self.state_names):
                shape = bottom[first + j].shape
                if want and shape != want:
                    raise self.error(f"bottom {self.bottom_name(first + j)} ({name}) must have shape {want}, got {shape}")
        return t, n

    def reshape(self, bottom, top):
        t, n = self._check_shapes(bottom)
        if prod(bottom[0].shape[2:]) != self.input_dim:
            raise self.error(f"bottom {self.bottom_name(0)} shape {bottom[0].shape} has {prod(bottom[0].shape[2:])} "
                             f"features per step; the weights were set up for {self.input_dim}")
        if self.static and prod(bottom[2].shape[1:]) != self.static_dim:
            raise self.error(f"bottom {self.bottom_name(2)} shape {bottom[2].shape} has {prod(bottom[2].shape[1:])} "
                             f"features; the weights were set up for {self.static_dim}")
        self.T, self.N = t, n
        top[0].reshape(t, n, self.hidden)
        for k in range(1, len(top)):
            top[k].reshape(1, n, self.hidden)
        dtype = bottom[0].data.dtype
        if self.carry is None or self.carry[0].shape != (n, self.hidden) or self.carry[0].dtype != dtype:
            # Fresh (or resized) carried state starts at zero.
            self.carry = [np.zeros((n, self.hidden), dtype) for _ in self.state_names]

    def reset(self):
        """Zero the state carried from one forward to the next (Caffe's RecurrentLayer::Reset)."""
        if self.carry is not None:
            for state in self.carry:
                state[...] = 0

    def initial_states(self, bottom):
        if self.expose_hidden:
            first = 2 + self.static
            return [bottom[first + j].data.reshape(self.N, self.hidden) for j in range(len(self.state_names))]
        return self.carry

    # --- the input transforms common to both: gates_x = W x_t + b (+ W_static x_static)
    def input_transform(self, bottom, w, b, w_static):
        x = bottom[0].data.reshape(self.T * self.N, self.input_dim)
        pre = (x @ w.T).reshape(self.T, self.N, -1)
        pre += b
        if self.static:
            pre += bottom[2].data.reshape(self.N, self.static_dim) @ w_static.T
        return pre

    def input_transform_backward(self, bottom, propagate_down, dpre, w_blob, b_blob, ws_blob):
        """dpre (T, N, rows): gradient of the pre-activations; add param grads, write bottom diffs."""
        flat = dpre.reshape(self.T * self.N, -1)
        x = bottom[0].data.reshape(self.T * self.N, self.input_dim)
        w_blob.diff += flat.T @ x
        b_blob.diff += flat.sum(axis=0)
        if propagate_down[0]:
            np.matmul(flat, w_blob.data, out=bottom[0].diff.reshape(self.T * self.N, self.input_dim))
        if self.static:
            summed = dpre.sum(axis=0)
            xs = bottom[2].data.reshape(self.N, self.static_dim)
            ws_blob.diff += summed.T @ xs
            if propagate_down[2]:
                np.matmul(summed, ws_blob.data, out=bottom[2].diff.reshape(self.N, self.static_dim))

    def write_initial_state_diffs(self, bottom, propagate_down, diffs):
        if not self.expose_hidden:
            return
        first = 2 + self.static
        for j, d in enumerate(diffs):
            if propagate_down[first + j]:
                bottom[first + j].diff[...] = d.reshape(bottom[first + j].shape)

    def check_cont_backward(self, propagate_down):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the sequence continuation indicators (bottom 1)")


@register("RNN")
class RNN(_Recurrent):
    """Elman RNN with a tanh hidden layer and a tanh output layer (Caffe's RNNLayer)."""
    state_names = ("h_0",)

    def make_params(self, p, rows):
        h = self.hidden
        self._weight(p, (h, self.input_dim))        # W_xh
        self._bias(p, (h,))                         # b_h
        if self.static:
            self._weight(p, (h, self.static_dim))   # W_xh_static
        self._weight(p, (h, h))                     # W_hh
        self._weight(p, (h, h))                     # W_ho
        self._bias(p, (h,))                         # b_o

    def _params(self):
        b = self.blobs
        return (b[0], b[1], b[2], b[3], b[4], b[5]) if self.static else (b[0], b[1], None, b[2], b[3], b[4])

    def forward(self, bottom, top):
        w_xh, b_h, w_s, w_hh, w_ho, b_o = self._params()
        T, N, H = self.T, self.N, self.hidden
        cont = bottom[1].data
        pre = self.input_transform(bottom, w_xh.data, b_h.data, w_s.data if w_s else None)
        hs = np.empty((T + 1, N, H), pre.dtype)           # h_0 .. h_T
        conted = np.empty((T, N, H), pre.dtype)           # cont_t * h_{t-1}
        hs[0] = self.initial_states(bottom)[0]
        for t in range(T):
            np.multiply(hs[t], cont[t][:, None], out=conted[t])
            np.matmul(conted[t], w_hh.data.T, out=hs[t + 1])
            hs[t + 1] += pre[t]
            np.tanh(hs[t + 1], out=hs[t + 1])
        out = top[0].data.reshape(T * N, H)
        np.matmul(hs[1:].reshape(T * N, H), w_ho.data.T, out=out)
        out += b_o.data
        np.tanh(out, out=out)
        self.hs, self.conted = hs, conted
        if self.expose_hidden:
            top[1].data[...] = hs[T].reshape(top[1].shape)
        else:
            self.carry[0][...] = hs[T]

    def backward(self, top, propagate_down, bottom):
        self.check_cont_backward(propagate_down)
        w_xh, b_h, w_s, w_hh, w_ho, b_o = self._params()
        T, N, H = self.T, self.N, self.hidden
        cont, hs = bottom[1].data, self.hs
        o = top[0].data.reshape(T * N, H)
        do = top[0].diff.reshape(T * N, H) * (1 - o * o)
        h_flat = hs[1:].reshape(T * N, H)
        w_ho.diff += do.T @ h_flat
        b_o.diff += do.sum(axis=0)
        dh_out = (do @ w_ho.data).reshape(T, N, H)
        da = np.empty((T, N, H), hs.dtype)
        dh_next = top[1].diff.reshape(N, H).copy() if self.expose_hidden else np.zeros((N, H), hs.dtype)
        for t in reversed(range(T)):
            dh = dh_out[t] + dh_next
            np.multiply(dh, 1 - hs[t + 1] * hs[t + 1], out=da[t])
            dh_next = (da[t] @ w_hh.data) * cont[t][:, None]
        w_hh.diff += da.reshape(T * N, H).T @ self.conted.reshape(T * N, H)
        self.input_transform_backward(bottom, propagate_down, da, w_xh, b_h, w_s)
        self.write_initial_state_diffs(bottom, propagate_down, [dh_next])


@register("LSTM")
class LSTM(_Recurrent):
    """Long short-term memory (Caffe's LSTMLayer): gate order i, f, o, g; output h."""
    state_names = ("h_0", "c_0")
    gate_factor = 4

    def make_params(self, p, rows):
        self._weight(p, (rows, self.input_dim))        # W_xc
        self._bias(p, (rows,))                         # b_c
        if self.static:
            self._weight(p, (rows, self.static_dim))   # W_xc_static
        self._weight(p, (rows, self.hidden))           # W_hc

    def _params(self):
        b = self.blobs
        return (b[0], b[1], b[2], b[3]) if self.static else (b[0], b[1], None, b[2])

    def forward(self, bottom, top):
        w_xc, b_c, w_s, w_hc = self._params()
        T, N, H = self.T, self.N, self.hidden
        cont = bottom[1].data
        gates = self.input_transform(bottom, w_xc.data, b_c.data, w_s.data if w_s else None)
        dtype = gates.dtype
        hs = np.empty((T + 1, N, H), dtype)
        cs = np.empty((T + 1, N, H), dtype)
        conted = np.empty((T, N, H), dtype)
        acts = np.empty((T, N, 4 * H), dtype)
        tanh_c = np.empty((T, N, H), dtype)
        h0, c0 = self.initial_states(bottom)
        hs[0], cs[0] = h0, c0
        for t in range(T):
            np.multiply(hs[t], cont[t][:, None], out=conted[t])
            gates[t] += conted[t] @ w_hc.data.T
            lstm_cell_forward(gates[t], cs[t], cont[t], acts[t], cs[t + 1], tanh_c[t], hs[t + 1])
        top[0].data[...] = hs[1:]
        self.hs, self.cs, self.conted, self.acts, self.tanh_c = hs, cs, conted, acts, tanh_c
        if self.expose_hidden:
            top[1].data[...] = hs[T].reshape(top[1].shape)
            top[2].data[...] = cs[T].reshape(top[2].shape)
        else:
            self.carry[0][...] = hs[T]
            self.carry[1][...] = cs[T]

    def backward(self, top, propagate_down, bottom):
        self.check_cont_backward(propagate_down)
        w_xc, b_c, w_s, w_hc = self._params()
        T, N, H = self.T, self.N, self.hidden
        cont, dtype = bottom[1].data, self.hs.dtype
        dh_top = top[0].diff
        dgates = np.empty((T, N, 4 * H), dtype)
        if self.expose_hidden:
            dh_next = top[1].diff.reshape(N, H).copy()
            dc_next = top[2].diff.reshape(N, H).copy()
        else:
            dh_next, dc_next = np.zeros((N, H), dtype), np.zeros((N, H), dtype)
        for t in reversed(range(T)):
            dc_next = lstm_cell_backward(self.acts[t], self.cs[t], cont[t], self.tanh_c[t], dc_next,
                                         dh_top[t] + dh_next, dgates[t])
            dh_next = (dgates[t] @ w_hc.data) * cont[t][:, None]
        w_hc.diff += dgates.reshape(T * N, 4 * H).T @ self.conted.reshape(T * N, H)
        self.input_transform_backward(bottom, propagate_down, dgates, w_xc, b_c, w_s)
        self.write_initial_state_diffs(bottom, propagate_down, [dh_next, dc_next])
