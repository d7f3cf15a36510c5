"""Blob-plumbing layers: forward against hand-worked cases, backward against finite differences."""
import numpy as np
import pytest

from gradcheck import build, check_layer, forward
from netspec.blob import Blob
from netspec.errors import NetspecError

rng = np.random.default_rng(6)


def randn(*shape):
    return rng.standard_normal(shape)


def arange(*shape):
    return np.arange(np.prod(shape), dtype=np.float64).reshape(shape)


# ---------------------------------------------------------------- Flatten / Reshape
@pytest.mark.parametrize("params, shape", [
    ("", (2, 60)),
    ("flatten_param { axis: 2 }", (2, 3, 20)),
    ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
    ("flatten_param { axis: -3 end_axis: -2 }", (2, 12, 5)),
    ("flatten_param { axis: 0 end_axis: 0 }", (2, 3, 4, 5)),
])
def test_flatten_shapes_and_values(params, shape):
    x = arange(2, 3, 4, 5)
    (y,) = forward(f'type: "Flatten" {params}', [x])
    assert y.shape == shape
    assert np.array_equal(y.reshape(-1), x.reshape(-1))
    check_layer(f'type: "Flatten" {params}', [randn(2, 3, 4, 5)])


def test_flatten_shares_data_and_diff():
    layer, bottom, top = build('type: "Flatten"', [arange(2, 3, 2)])
    layer.forward(bottom, top)
    assert np.shares_memory(top[0].data, bottom[0].data)
    top[0].diff[...] = 7
    assert np.all(bottom[0].diff == 7)
    # a reshape of a bigger batch reallocates the bottom: the top must follow it
    bottom[0].reshape(5, 3, 2)
    bottom[0].data[...] = 1
    layer.reshape(bottom, top)
    assert top[0].shape == (5, 6) and np.all(top[0].data == 1)


@pytest.mark.parametrize("params, shape", [
    ("shape { dim: 0 dim: -1 }", (2, 60)),
    ("shape { dim: -1 dim: 5 dim: 0 }", (6, 5, 4)),
    ("shape { dim: 6 dim: 20 }", (6, 20)),
    ("shape { dim: 0 dim: 0 dim: 2 dim: -1 }", (2, 3, 2, 10)),
    ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 12, 5)),
    ("axis: -1 shape { dim: 1 dim: 1 }", (2, 3, 4, 5, 1, 1)),
    ("axis: 2 num_axes: 0 shape { dim: 1 }", (2, 3, 1, 4, 5)),
    ("axis: 0 num_axes: 1 shape { dim: 1 dim: -1 }", (1, 2, 3, 4, 5)),
])
def test_reshape_copy_infer_axis_num_axes(params, shape):
    x = arange(2, 3, 4, 5)
    text = f'type: "Reshape" reshape_param {{ {params} }}'
    (y,) = forward(text, [x])
    assert y.shape == shape
    assert np.array_equal(y.reshape(-1), x.reshape(-1))
    layer, bottom, top = check_layer(text, [randn(2, 3, 4, 5)])
    assert np.shares_memory(top[0].data, bottom[0].data)
    assert np.shares_memory(top[0].diff, bottom[0].diff)


@pytest.mark.parametrize("params, message", [
    ("shape { dim: 7 dim: -1 }", "cannot infer"),
    ("shape { dim: 0 dim: 7 }", "cannot reshape bottom 'x' of shape \\(2, 3, 4, 5\\)"),
    ("shape { dim: -1 dim: -1 }", "at most one -1"),
    ("axis: 3 shape { dim: 0 dim: 0 }", "no axis 4"),
    ("axis: 2 num_axes: 3 shape { dim: 1 }", "do not fit"),
])
def test_reshape_errors(params, message):
    with pytest.raises(NetspecError, match=message):
        build(f'name: "r" type: "Reshape" bottom: "x" reshape_param {{ {params} }}', [arange(2, 3, 4, 5)])


# ---------------------------------------------------------------- Concat / Slice
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_axes(axis):
    shapes = {0: [(1, 3, 4), (2, 3, 4), (3, 3, 4)], 1: [(2, 1, 4), (2, 2, 4), (2, 3, 4)],
              -1: [(2, 3, 1), (2, 3, 2), (2, 3, 5)]}[axis]
    parts = [randn(*s) for s in shapes]
    (y,) = forward(f'type: "Concat" concat_param {{ axis: {axis} }}', parts)
    expect = np.concatenate(parts, axis=axis)
    assert np.array_equal(y, expect)
    check_layer(f'type: "Concat" concat_param {{ axis: {axis} }}', parts)


def test_concat_hand_case_and_legacy_concat_dim():
    a = np.array([[1.0, 2.0]])
    b = np.array([[3.0, 4.0], [5.0, 6.0]])
    (y,) = forward('type: "Concat" concat_param { concat_dim: 0 }', [a, b])
    assert np.array_equal(y, [[1, 2], [3, 4], [5, 6]])
    (y,) = forward('type: "Concat"', [a, a * 10])  # default axis 1
    assert np.array_equal(y, [[1, 2, 10, 20]])
    with pytest.raises(NetspecError, match="either axis or concat_dim"):
        build('type: "Concat" concat_param { axis: 0 concat_dim: 0 }', [a, b])


def test_concat_single_bottom_shares():
    layer, bottom, top = build('type: "Concat"', [arange(2, 3)])
    assert np.shares_memory(top[0].data, bottom[0].data)
    assert np.shares_memory(top[0].diff, bottom[0].diff)


def test_concat_mismatch_names_layer_bottoms_and_shapes():
    text = 'name: "cat" type: "Concat" bottom: "left" bottom: "right" concat_param { axis: 1 }'
    with pytest.raises(NetspecError) as err:
        build(text, [np.zeros((2, 3, 4)), np.zeros((2, 5, 6))])
    msg = str(err.value)
    for part in ("'cat'", "Concat", "'left'", "'right'", "(2, 3, 4)", "(2, 5, 6)"):
        assert part in msg
    assert "\n" not in msg
    with pytest.raises(NetspecError, match="\\(2, 3\\)"):
        build(text, [np.zeros((2, 3, 4)), np.zeros((2, 3))])


@pytest.mark.parametrize("axis, points, sizes", [
    (0, [1, 3], [1, 2, 3]),
    (1, [2, 3], [2, 1, 3]),
    (-1, [1, 2], [1, 1, 4]),
])
def test_slice_points(axis, points, sizes):
    shape = [6, 6, 6]
    x = randn(*shape)
    pts = " ".join(f"slice_point: {p}" for p in points)
    text = f'type: "Slice" slice_param {{ axis: {axis} {pts} }}'
    tops = forward(text, [x], num_tops=3)
    bounds = np.cumsum([0] + sizes)
    for t, a, b in zip(tops, bounds[:-1], bounds[1:]):
        assert t.shape[axis] == b - a
        assert np.array_equal(t, np.take(x, np.arange(a, b), axis=axis))
    check_layer(text, [x], num_tops=3)


def test_slice_equal_split_and_legacy_slice_dim():
    x = arange(2, 4)
    tops = forward('type: "Slice"', [x], num_tops=2)
    assert np.array_equal(tops[0], [[0, 1], [4, 5]]) and np.array_equal(tops[1], [[2, 3], [6, 7]])
    tops = forward('type: "Slice" slice_param { slice_dim: 0 }', [x], num_tops=2)
    assert np.array_equal(tops[0], [[0, 1, 2, 3]]) and np.array_equal(tops[1], [[4, 5, 6, 7]])
    check_layer('type: "Slice" slice_param { axis: 1 }', [randn(3, 4, 2)], num_tops=4)


@pytest.mark.parametrize("params, tops, message", [
    ("slice_point: 2 slice_point: 6", 3, "strictly inside \\(0, 5\\)"),
    ("slice_point: 3 slice_point: 2", 3, "strictly"),
    ("slice_point: 0", 2, "strictly"),
    ("slice_point: 5", 2, "strictly"),
    ("slice_point: 2", 3, "1 slice_point\\(s\\) for 3 tops"),
    ("", 2, "does not split evenly"),
    ("axis: 3", 2, "axis 3 is out of range"),
])
def test_slice_errors(params, tops, message):
    with pytest.raises(NetspecError, match=message):
        build(f'name: "s" type: "Slice" slice_param {{ {params} }}', [np.zeros((2, 5, 3))], num_tops=tops)


# ---------------------------------------------------------------- Crop / Tile
def test_crop_single_offset_and_per_axis_offsets():
    x = arange(2, 3, 5, 6)
    ref = np.zeros((1, 1, 3, 2))
    (y,) = forward('type: "Crop" crop_param { offset: 1 }', [x, ref])
    assert np.array_equal(y, x[:, :, 1:4, 1:3])
    (y,) = forward('type: "Crop" crop_param { offset: 2 offset: 4 }', [x, ref])
    assert np.array_equal(y, x[:, :, 2:5, 4:6])
    (y,) = forward('type: "Crop" crop_param { axis: 1 offset: 1 offset: 0 offset: 3 }', [x, ref])
    assert np.array_equal(y, x[:, 1:2, 0:3, 3:5])
    (y,) = forward('type: "Crop" crop_param { axis: -1 }', [x, ref])
    assert np.array_equal(y, x[:, :, :, 0:2])
    check_layer('type: "Crop" crop_param { offset: 1 offset: 3 }', [randn(2, 3, 5, 6), ref], check_bottoms=[0])
    check_layer('type: "Crop" crop_param { axis: 0 offset: 0 offset: 1 offset: 2 offset: 2 }',
                [randn(2, 3, 5, 6), ref], check_bottoms=[0])


@pytest.mark.parametrize("params, ref_shape, message", [
    ("offset: 3", (1, 1, 3, 2), "cannot crop axis 2 to size 3 at offset 3"),
    ("", (1, 1, 6, 2), "cannot crop axis 2 to size 6"),
    ("offset: 1 offset: 2 offset: 3", (1, 1, 3, 2), "3 offsets given; need 1 or 2"),
])
def test_crop_errors(params, ref_shape, message):
    with pytest.raises(NetspecError, match=message) as err:
        build(f'name: "c" type: "Crop" bottom: "big" bottom: "ref" crop_param {{ {params} }}',
              [np.zeros((2, 3, 5, 6)), np.zeros(ref_shape)])
    assert "'c' (Crop)" in str(err.value)


def test_tile():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    (y,) = forward('type: "Tile" tile_param { tiles: 3 }', [x])
    assert np.array_equal(y, [[1, 2, 1, 2, 1, 2], [3, 4, 3, 4, 3, 4]])
    (y,) = forward('type: "Tile" tile_param { axis: 0 tiles: 2 }', [x])
    assert np.array_equal(y, [[1, 2], [3, 4], [1, 2], [3, 4]])
    x3 = arange(2, 2, 2)
    (y,) = forward('type: "Tile" tile_param { axis: 1 tiles: 2 }', [x3])
    assert np.array_equal(y[:, 2:], x3) and np.array_equal(y[:, :2], x3)
    for axis in (0, 1, -1):
        check_layer(f'type: "Tile" tile_param {{ axis: {axis} tiles: 3 }}', [randn(2, 3, 4)])
    with pytest.raises(NetspecError, match="tiles must be positive"):
        build('type: "Tile"', [x])


# ---------------------------------------------------------------- Silence / Parameter
def test_silence_zeroes_gradient():
    layer, bottom, top = build('type: "Silence"', [randn(2, 3), randn(4)], num_tops=0)
    layer.forward(bottom, top)
    for b in bottom:
        b.diff[...] = 5
    layer.backward(top, [True, False], bottom)
    assert np.all(bottom[0].diff == 0) and np.all(bottom[1].diff == 5)


def test_parameter_exposes_its_blob():
    layer, bottom, top = build('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', [])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (2, 3)
    layer.blobs[0].data[...] = arange(2, 3)
    layer.forward(bottom, top)
    assert np.array_equal(top[0].data, arange(2, 3))
    # a shared blob swapped in by the net is what the top shows
    swapped = Blob((2, 3))
    swapped.data[...] = 9
    layer.blobs[0] = swapped
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert np.all(top[0].data == 9)
    # gradients accumulate
    top[0].diff[...] = 1
    layer.backward(top, [], bottom)
    layer.backward(top, [], bottom)
    assert np.all(swapped.diff == 2)
    check_layer('type: "Parameter" parameter_param { shape { dim: 3 dim: 1 dim: 2 } }', [])


# ---------------------------------------------------------------- Filter / BatchReindex
def filter_forward(bottoms, num_tops=1):
    layer, bottom, top = build('type: "Filter"', bottoms, num_tops=num_tops)
    # As in Caffe, the set-up reshape keeps every item; the per-forward reshape filters.
    assert all(t.shape[0] == bottoms[0].shape[0] for t in top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return [t.data for t in top]


def test_filter_keeps_selected_items():
    a, b = arange(4, 2), arange(4, 1, 3) + 100
    sel = np.array([0.0, 1.0, 0.0, 2.0])
    ya, yb = filter_forward([a, b, sel], num_tops=2)
    assert np.array_equal(ya, a[[1, 3]]) and np.array_equal(yb, b[[1, 3]])
    (y,) = filter_forward([a, sel.reshape(4, 1)])
    assert np.array_equal(y, a[[1, 3]])
    (y,) = filter_forward([a, np.zeros(4)])
    assert y.shape == (0, 2)
    # Every item kept: shapes do not change between set-up and forward, so check_layer applies.
    check_layer('type: "Filter"', [randn(4, 2, 3), randn(4, 5), np.ones(4)], num_tops=2, check_bottoms=[0, 1])
    # Some items dropped: the gradient is the exact scatter of the top diffs (the map is a selection).
    layer, bottom, top = build('type: "Filter"', [randn(4, 2, 3), randn(4, 5), sel], num_tops=2)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    for t in top:
        t.diff[...] = randn(*t.shape)
    for b in bottom:
        b.diff[...] = 9
    layer.backward(top, [True, True, False], bottom)
    for b, t in zip(bottom, top):
        assert np.all(b.diff[[0, 2]] == 0) and np.array_equal(b.diff[[1, 3]], t.diff)
    assert np.all(bottom[2].diff == 9)


def test_filter_errors():
    with pytest.raises(NetspecError, match="selector bottom 'sel' must have shape"):
        build('type: "Filter" bottom: "a" bottom: "sel"', [np.zeros((4, 2)), np.zeros((4, 2))])
    with pytest.raises(NetspecError, match="differ on the first axis"):
        build('type: "Filter"', [np.zeros((3, 2)), np.zeros(4)])
    with pytest.raises(NetspecError, match="one top per filtered bottom"):
        build('type: "Filter"', [np.zeros((4, 2)), np.zeros(4)], num_tops=2)


def test_batch_reindex_forward_and_accumulating_backward():
    x = arange(3, 2)
    idx = np.array([2.0, 0.0, 2.0, 2.0])
    (y,) = forward('type: "BatchReindex"', [x, idx])
    assert np.array_equal(y, [[4, 5], [0, 1], [4, 5], [4, 5]])
    layer, bottom, top = check_layer('type: "BatchReindex"', [randn(3, 2, 2), idx], check_bottoms=[0])
    assert np.allclose(bottom[0].diff[1], 0)
    assert np.allclose(bottom[0].diff[2], top[0].diff[[0, 2, 3]].sum(axis=0))


@pytest.mark.parametrize("idx", [[0.0, 3.0], [-1.0], [0.5]])
def test_batch_reindex_bad_index(idx):
    layer, bottom, top = build('name: "ri" type: "BatchReindex" bottom: "x" bottom: "i"',
                               [np.zeros((3, 2)), np.array(idx)])
    with pytest.raises(NetspecError, match="bottom 'i' holds index .* not an integer in \\[0, 3\\)"):
        layer.forward(bottom, top)


# ---------------------------------------------------------------- ArgMax
def test_argmax_without_axis():
    x = np.array([[1.0, 3.0, 3.0, 0.0], [5.0, -1.0, 2.0, 4.0]])
    (y,) = forward('type: "ArgMax"', [x])
    assert y.shape == (2, 1, 1)
    assert np.array_equal(y.reshape(-1), [2, 0])  # tie 3/3: the larger index, as Caffe's pair ordering
    (y,) = forward('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', [x])
    assert y.shape == (2, 2, 3)
    assert np.array_equal(y[0], [[2, 1, 0], [3, 3, 1]])
    assert np.array_equal(y[1], [[0, 3, 2], [5, 4, 2]])
    (y,) = forward('type: "ArgMax" argmax_param { top_k: 2 }', [x.reshape(2, 1, 2, 2)])
    assert y.shape == (2, 1, 2, 1) and np.array_equal(y[:, 0, :, 0], [[2, 1], [0, 3]])


def test_argmax_with_axis():
    x = np.array([[[1.0, 9.0], [7.0, 2.0], [4.0, 5.0]]])  # (1, 3, 2)
    (y,) = forward('type: "ArgMax" argmax_param { axis: 1 }', [x])
    assert y.shape == (1, 1, 2) and np.array_equal(y[0, 0], [1, 0])
    (y,) = forward('type: "ArgMax" argmax_param { axis: 1 top_k: 2 out_max_val: true }', [x])
    assert y.shape == (1, 2, 2) and np.array_equal(y[0], [[7, 9], [4, 5]])
    (y,) = forward('type: "ArgMax" argmax_param { axis: -1 }', [x])
    assert y.shape == (1, 3, 1) and np.array_equal(y.reshape(-1), [1, 0, 1])
    with pytest.raises(NetspecError, match="top_k 4 must be between 1 and 3"):
        build('type: "ArgMax" argmax_param { axis: 1 top_k: 4 }', [x])


# ---------------------------------------------------------------- Reduction
@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction(op, axis):
    x = np.array([[[1.0, -2.0], [3.0, 0.5]], [[-1.0, 4.0], [2.0, -3.0]]])  # (2, 2, 2)
    text = f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: -1.5 }}'
    (y,) = forward(text, [x])
    keep = axis % 3
    flat = x.reshape(int(np.prod(x.shape[:keep])), -1)
    terms = {"SUM": flat, "ASUM": abs(flat), "SUMSQ": flat ** 2, "MEAN": flat / flat.shape[1]}[op]
    assert y.shape == x.shape[:keep]
    assert np.allclose(y.reshape(-1), -1.5 * terms.sum(axis=1))
    check_layer(text, [randn(2, 3, 4)])


def test_reduction_default_is_total_sum_scalar_top():
    (y,) = forward('type: "Reduction"', [arange(2, 3)])
    assert y.shape == () and y == 15


# ---------------------------------------------------------------- Embed
def test_embed_forward_and_gradients():
    text = ('type: "Embed" embed_param { num_output: 3 input_dim: 4 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    idx = np.array([[3.0, 0.0], [3.0, 1.0]])
    layer, bottom, top = build(text, [idx])
    assert layer.blobs[0].shape == (4, 3) and layer.blobs[1].shape == (3,)
    layer.forward(bottom, top)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert top[0].shape == (2, 2, 3)
    assert np.allclose(top[0].data[1, 0], w[3] + b) and np.allclose(top[0].data[0, 1], w[0] + b)
    layer, bottom, top = check_layer(text, [idx], check_bottoms=[])
    assert np.all(layer.blobs[0].diff[2] == 0)  # row never looked up
    check_layer('type: "Embed" embed_param { num_output: 2 input_dim: 3 bias_term: false '
                'weight_filler { type: "uniform" } }', [np.array([2.0, 2.0, 0.0])], check_bottoms=[])


@pytest.mark.parametrize("bad", [4.0, -1.0, 1.5])
def test_embed_index_out_of_range(bad):
    layer, bottom, top = build('name: "emb" type: "Embed" bottom: "words" '
                               'embed_param { num_output: 3 input_dim: 4 }', [np.array([0.0, bad])])
    with pytest.raises(NetspecError, match="layer 'emb' \\(Embed\\): bottom 'words' holds index .* \\[0, 4\\)"):
        layer.forward(bottom, top)


def test_embed_needs_sizes():
    with pytest.raises(NetspecError, match="positive num_output and input_dim"):
        build('type: "Embed" embed_param { num_output: 3 }', [np.zeros(2)])


def test_embed_param_gradients_accumulate():
    layer, bottom, top = build('type: "Embed" embed_param { num_output: 2 input_dim: 3 }', [np.array([1.0, 1.0])])
    layer.forward(bottom, top)
    top[0].diff[...] = [[1.0, 2.0], [3.0, 4.0]]
    layer.backward(top, [False], bottom)
    layer.backward(top, [False], bottom)
    assert np.array_equal(layer.blobs[0].diff, [[0, 0], [8, 12], [0, 0]])
    assert np.array_equal(layer.blobs[1].diff, [8, 12])
