"""InnerProduct and Softmax: worked-out forward values, gradient checks, errors."""
import numpy as np
import pytest

from gradcheck import build, check_layer, forward, make_layer_param
from isa import on_every_isa
from netspec.blob import Blob, precision
from netspec.errors import NetspecError
from netspec.layers import LAYER_REGISTRY

R = np.random.default_rng(11)
GAUSS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def ip(extra=""):
    return f'name: "ip1" type: "InnerProduct" inner_product_param {{ num_output: 3 {GAUSS} {extra} }}'


# ---------------------------------------------------------------- InnerProduct
from netspec.layers import common, native  # noqa: E402

NATIVE = pytest.mark.skipif(native.kernels is None or not hasattr(native.kernels, "rows_dot"),
                            reason="compiled kernels (netspec._native) not built")


@NATIVE
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(10, 300, 37), (1, 7, 5), (3, 8, 4), (16, 1031, 9), (4, 64, 130)])
def test_rows_dot_is_the_product_in_any_split_and_instruction_set(dtype, m, k, n):
    """The compiled small-batch product against float64's, and the same bytes whatever range of
    output columns a call takes and on every instruction set the CPU runs."""
    r = np.random.default_rng(0)
    x, w = r.standard_normal((m, k)).astype(dtype), r.standard_normal((n, k)).astype(dtype)

    def product():
        whole, split = np.full((m, n), np.nan, dtype), np.full((m, n), np.nan, dtype)
        native.kernels.rows_dot(x, w, whole, m, k, n, 0, n)
        for a, b in ((0, 1), (1, n // 2), (n // 2, n)):
            native.kernels.rows_dot(x, w, split, m, k, n, a, b)
        assert whole.tobytes() == split.tobytes()
        return whole

    results = on_every_isa(product)
    want = x.astype(np.float64) @ w.astype(np.float64).T
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    assert np.abs(results[0] - want).max() <= tolerance * np.abs(want).max() * np.sqrt(k)
    assert all(other.tobytes() == results[0].tobytes() for other in results[1:])


@NATIVE
def test_small_batches_stream_the_weights_large_ones_use_the_gemm(monkeypatch):
    calls, original = [], native.kernels.rows_dot
    monkeypatch.setattr(native.kernels, "rows_dot", lambda *a: calls.append(a[3]) or original(*a))
    rows_dot = common.ROWS_DOT_ROWS
    for rows in (rows_dot.start - 1, rows_dot.start, rows_dot.stop - 1, rows_dot.stop):
        x = np.random.default_rng(rows).standard_normal((rows, 6))
        layer, bottom, top = build(ip(), [x])
        layer.forward(bottom, top)
        want = x @ layer.blobs[0].data.T + layer.blobs[1].data
        np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-5)
    assert calls == [rows_dot.start, rows_dot.stop - 1]

def test_inner_product_forward_by_hand():
    x = np.array([[1.0, 2.0], [0.0, -1.0]])
    with precision(np.float64):
        layer, bottom, top = build(ip(), [x])
        assert [b.shape for b in layer.blobs] == [(3, 2), (3,)]
        layer.blobs[0].data[...] = [[1, 0], [0, 1], [1, 1]]
        layer.blobs[1].data[...] = [10, 20, 30]
        layer.forward(bottom, top)
        np.testing.assert_allclose(top[0].data, [[11, 22, 33], [10, 19, 29]])


def test_inner_product_default_fillers_are_zero():
    y = forward('type: "InnerProduct" inner_product_param { num_output: 2 }', [np.ones((2, 3))])[0]
    np.testing.assert_array_equal(y, np.zeros((2, 2)))


def _naive_ip(x, w, b, axis, transpose):
    m = int(np.prod(x.shape[:axis]))
    flat = x.reshape(m, -1)
    n = w.shape[1] if transpose else w.shape[0]
    out = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            for k in range(flat.shape[1]):
                out[i, j] += flat[i, k] * (w[k, j] if transpose else w[j, k])
            out[i, j] += 0 if b is None else b[j]
    return out.reshape(x.shape[:axis] + (n,))


@pytest.mark.parametrize("extra,axis", [("", 1), ("axis: 2", 2), ("axis: -1", 3), ("transpose: true", 1),
                                        ("bias_term: false", 1), ("transpose: true bias_term: false axis: 2", 2)])
def test_inner_product_against_naive_and_gradients(extra, axis):
    x = R.standard_normal((2, 3, 2, 2))
    with precision(np.float64):
        layer, bottom, top = build(ip(extra), [x])
        k = int(np.prod(x.shape[axis:]))
        transpose = "transpose" in extra
        assert layer.blobs[0].shape == ((k, 3) if transpose else (3, k))
        assert len(layer.blobs) == (1 if "bias_term" in extra else 2)
        layer.forward(bottom, top)
        b = layer.blobs[1].data if len(layer.blobs) > 1 else None
        np.testing.assert_allclose(top[0].data, _naive_ip(x, layer.blobs[0].data, b, axis, transpose), rtol=1e-12)
    check_layer(ip(extra), [x])


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_param_gradients_accumulate(transpose):
    x = R.standard_normal((4, 5))
    with precision(np.float64):
        layer, bottom, top = build(ip("transpose: true" if transpose else ""), [x])
        layer.forward(bottom, top)
        top[0].diff[...] = 1.0
        for blob in layer.blobs:
            blob.diff[...] = 7.0
        layer.backward(top, [False], bottom)
        grad = np.tile(x.sum(axis=0), (3, 1))                 # d(sum y)/dW[j, k] = sum_i x[i, k]
        np.testing.assert_allclose(layer.blobs[0].diff, 7.0 + (grad.T if transpose else grad))
        np.testing.assert_allclose(layer.blobs[1].diff, 7.0 + 4.0)


def test_inner_product_input_size_change_is_an_error():
    with precision(np.float64):
        layer, bottom, top = build(ip(), [np.ones((2, 3, 4))])
        bottom[0].reshape(5, 3, 4)            # new batch size: fine
        layer.reshape(bottom, top)
        assert top[0].shape == (5, 3)
        bottom[0].reshape(2, 5, 4)
        with pytest.raises(NetspecError, match=r"layer 'ip1' \(InnerProduct\): input size changed from 12 to 20"):
            layer.reshape(bottom, top)


def test_inner_product_needs_num_output():
    with pytest.raises(NetspecError, match="num_output"):
        build('type: "InnerProduct"', [np.ones((2, 3))])


# ---------------------------------------------------------------- Softmax

def test_softmax_forward_by_hand():
    x = np.log([[1.0, 2.0, 3.0], [1.0, 1.0, 2.0]])
    np.testing.assert_allclose(forward('type: "Softmax"', [x])[0], [[1 / 6, 2 / 6, 3 / 6], [0.25, 0.25, 0.5]])


def test_softmax_is_numerically_stable():
    y = forward('type: "Softmax"', [np.array([[1000.0, 1000.0], [-1000.0, -1001.0]])])[0]
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [[0.5, 0.5], [1 / (1 + np.exp(-1)), 1 - 1 / (1 + np.exp(-1))]])


@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_softmax_axis_against_naive(axis):
    x = R.standard_normal((2, 3, 4))
    y = forward(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x])[0]
    e = np.exp(x)
    np.testing.assert_allclose(y, e / e.sum(axis=axis, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("axis", [1, 2])
def test_softmax_gradient(axis):
    check_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [R.standard_normal((2, 3, 4, 2))])


def test_softmax_in_place_matches_out_of_place():
    x = R.standard_normal((3, 5))
    dy = R.standard_normal((3, 5))
    results = []
    with precision(np.float64):
        for in_place in (False, True):
            layer = LAYER_REGISTRY["Softmax"](make_layer_param('type: "Softmax"'))
            bottom = Blob(x.shape)
            bottom.data[...] = x
            top = bottom if in_place else Blob()
            layer.setup([bottom], [top])
            layer.reshape([bottom], [top])
            layer.forward([bottom], [top])
            y = top.data.copy()
            top.diff[...] = dy
            layer.backward([top], [True], [bottom])
            results.append((y, bottom.diff.copy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-14)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-13, atol=1e-15)


def test_softmax_bad_axis():
    with pytest.raises(NetspecError, match="axis 3 is out of range"):
        build('type: "Softmax" softmax_param { axis: 3 }', [np.ones((2, 3))])


# ------------------------------------------------------------------ Eltwise

ELT = 'type: "Eltwise" eltwise_param {{ operation: {op} {coeff} }}'


def test_eltwise_forward_by_hand():
    a, b = np.array([[1.0, -2.0, 3.0]]), np.array([[4.0, 5.0, -6.0]])
    (s,) = forward(ELT.format(op="SUM", coeff="coeff: 1 coeff: -0.5"), [a, b])
    np.testing.assert_allclose(s, [[-1.0, -4.5, 6.0]])
    (p,) = forward(ELT.format(op="PROD", coeff=""), [a, b])
    np.testing.assert_allclose(p, [[4.0, -10.0, -18.0]])
    (m,) = forward(ELT.format(op="MAX", coeff=""), [a, b])
    np.testing.assert_allclose(m, [[4.0, 5.0, 3.0]])


@pytest.mark.parametrize("op, coeff", [("SUM", ""), ("SUM", "coeff: 2 coeff: -1 coeff: 0.5"),
                                       ("PROD", ""), ("MAX", "")])
def test_eltwise_gradients(op, coeff):
    rng = np.random.default_rng(4)
    # Distinct values keep MAX away from ties; a zero checks PROD's stable gradient.
    xs = [rng.permutation(24).reshape(2, 3, 4) * 0.1 + k for k in range(3)]
    xs[0][0, 0, 0] = 0.0
    check_layer(ELT.format(op=op, coeff=coeff), xs)


def test_eltwise_errors():
    with pytest.raises(NetspecError, match=r"bottom 'b1' has shape \(2, 3\), bottom 'b0' has \(2, 4\)"):
        lp = 'type: "Eltwise" bottom: "b0" bottom: "b1"'
        build(lp, [np.zeros((2, 4)), np.zeros((2, 3))])
    with pytest.raises(NetspecError, match="coeff is only allowed with operation SUM"):
        build(ELT.format(op="MAX", coeff="coeff: 1 coeff: 1"), [np.zeros(2), np.zeros(2)])
