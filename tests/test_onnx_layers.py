"""ONNX export, layer by layer: each Caffe semantic edge as a small net, run by ONNX Runtime and
held to netspec's forward (1e-5, max |onnx - netspec| / max |netspec| over every blob), plus
hand-worked cases where ONNX's own rule would differ from Caffe's (pooling's last window,
AVE's divisor at the border), names of in-place values, and refusals.
"""
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import netspec  # noqa: E402
from netspec.errors import NetspecError  # noqa: E402
from netspec.onnx_export import ExportError, export_onnx  # noqa: E402
from netspec.onnx_export.check import compare, ort_session  # noqa: E402
from netspec.proto import caffe_pb2  # noqa: E402
from netspec.schema import parse_prototxt  # noqa: E402

TOL = 1e-5


def net_of(layers, shapes, phase=netspec.TEST, seed=0):
    """A net with one Input per named shape and the given layer text; every parameter random."""
    inputs = "".join(f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                     + " ".join(f"dim: {d}" for d in s) + " } } }\n" for n, s in shapes.items())
    net = netspec.Net(parse_prototxt(inputs + layers, caffe_pb2.NetParameter()), phase)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for blob in layer.blobs:
            blob.data[...] = rng.standard_normal(blob.shape).astype(np.float32)
        # Variances (and BatchNorm's scale factor) positive.
        for j in {"BatchNorm": (1, 2), "BN": (3,) if len(layer.blobs) == 4 else ()}.get(layer.type, ()):
            layer.blobs[j].data[...] = rng.uniform(0.5, 2, layer.blobs[j].shape)
    return net


def check(net, opset=None, feeds=None, tol=TOL):
    model = export_onnx(net, opset=opset)
    diffs = compare(net, model, feeds=feeds, every_blob=True, threads=1)
    assert diffs and max(diffs.values()) <= tol, diffs
    for name, blob in net.blobs.items():        # a NaN on both sides would agree: none allowed
        assert np.isfinite(blob.data).all(), f"netspec's '{name}' is not finite: the test's input is wrong"
    return model, diffs


def run_onnx(model, feeds):
    session = ort_session(model, threads=1)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


# ---------------------------------------------------------------- pooling: Caffe's windows
POOL_GEOMETRIES = [
    # (input H, W), kernel, stride, pad, round_mode
    ((7, 7), (3, 3), (2, 2), (0, 0), "CEIL"),       # windows fit exactly
    ((8, 8), (3, 3), (2, 2), (0, 0), "CEIL"),       # last window partial (clipped)
    ((6, 6), (3, 3), (2, 2), (1, 1), "CEIL"),
    ((5, 5), (2, 2), (2, 2), (1, 1), "CEIL"),       # a last window starting in the padding is dropped
    ((9, 7), (3, 3), (1, 1), (2, 2), "CEIL"),       # pad larger than half the kernel
    ((10, 11), (4, 4), (3, 3), (3, 3), "CEIL"),     # pad = kernel - 1
    ((13, 9), (3, 2), (2, 3), (2, 1), "CEIL"),      # rectangular kernel, stride and pad
    ((11, 11), (3, 3), (2, 2), (1, 1), "FLOOR"),
    ((10, 12), (5, 3), (3, 2), (2, 2), "FLOOR"),
    ((14, 14), (3, 3), (3, 3), (0, 0), "CEIL"),
]


def _pool_text(method, kernel, stride, pad, mode, tops=("pool",)):
    return (f'layer {{ name: "pool" type: "Pooling" bottom: "data" '
            + "".join(f'top: "{t}" ' for t in tops)
            + f"pooling_param {{ pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} "
            f"stride_h: {stride[0]} stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} round_mode: {mode} }} }}")


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("size,kernel,stride,pad,mode", POOL_GEOMETRIES)
def test_pooling_matches_caffe_windows(method, size, kernel, stride, pad, mode):
    net = net_of(_pool_text(method, kernel, stride, pad, mode), {"data": (2, 3) + size})
    check(net)


@pytest.mark.parametrize("size,kernel,stride,pad,mode", POOL_GEOMETRIES[:6])
def test_max_pooling_mask_top(size, kernel, stride, pad, mode):
    net = net_of(_pool_text("MAX", kernel, stride, pad, mode, tops=("pool", "mask")), {"data": (2, 3) + size})
    check(net)


def test_ave_pooling_divisor_at_the_border_by_hand():
    """Ones 4x4, AVE 3x3 stride 2 pad 1 (ceil): windows start at -1, 1, 3 and end at min(start + 3, 5);
    Caffe divides by that padded extent (3, 3, 2) and sums the rows inside the image (2, 3, 1), so each
    axis gives [2/3, 1, 1/2] and the output is their outer product. (AveragePool with pads 1 and
    count_include_pad=0 would divide by the part inside the image and give 1 everywhere.)"""
    net = net_of(_pool_text("AVE", (3, 3), (2, 2), (1, 1), "CEIL"), {"data": (1, 1, 4, 4)})
    model = export_onnx(net)
    out = run_onnx(model, {"data": np.ones((1, 1, 4, 4), np.float32)})["pool"][0, 0]
    a = np.array([2 / 3, 1, 1 / 2])
    np.testing.assert_allclose(out, np.outer(a, a), rtol=1e-6)


def test_max_pooling_last_window_clipped_by_hand():
    """arange 5x5, MAX 2x2 stride 2 (ceil): 3 windows per axis, the last one a single row/column."""
    net = net_of(_pool_text("MAX", (2, 2), (2, 2), (0, 0), "CEIL"), {"data": (1, 1, 5, 5)})
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    out = run_onnx(export_onnx(net), {"data": x})["pool"][0, 0]
    np.testing.assert_array_equal(out, [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method):
    net = net_of(f'layer {{ name: "g" type: "Pooling" bottom: "data" top: "g" '
                 f"pooling_param {{ pool: {method} global_pooling: true }} }}", {"data": (2, 4, 5, 7)})
    check(net)


def test_stochastic_pooling_at_test():
    net = net_of('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                 "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }", {"data": (2, 3, 8, 8)})
    x = np.random.default_rng(1).uniform(0.1, 1, (2, 3, 8, 8)).astype(np.float32)
    check(net, feeds={"data": x})


def test_spp():
    net = net_of('layer { name: "s" type: "SPP" bottom: "data" top: "s" spp_param { pyramid_height: 3 } }'
                 'layer { name: "t" type: "SPP" bottom: "data" top: "t" spp_param { pyramid_height: 2 pool: AVE } }',
                 {"data": (2, 3, 7, 9)})
    check(net)


# ---------------------------------------------------------------- convolution
@pytest.mark.parametrize("param", [
    "num_output: 6 kernel_size: 3",
    "num_output: 6 kernel_size: 3 stride: 2 pad: 2 group: 3",
    "num_output: 4 kernel_h: 3 kernel_w: 1 stride_h: 2 pad_w: 1 pad_h: 0 stride_w: 1 dilation: 2 bias_term: false",
    "num_output: 3 kernel_size: 1 group: 3",
])
def test_convolution(param):
    check(net_of(f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param {{ {param} }} }}',
                 {"data": (2, 3, 9, 8)}))


def test_convolution_3d_and_several_bottoms():
    check(net_of('layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                 "convolution_param { num_output: 2 kernel_size: 2 kernel_size: 3 kernel_size: 1 pad: 1 } }",
                 {"data": (1, 3, 4, 5, 6)}))
    check(net_of('layer { name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ca" top: "cb" '
                 "convolution_param { num_output: 2 kernel_size: 3 } }", {"a": (1, 2, 5, 5), "b": (1, 2, 5, 5)}))


@pytest.mark.parametrize("param", [
    "num_output: 4 kernel_size: 4 stride: 2 pad: 1",
    "num_output: 6 kernel_size: 3 stride: 3 group: 2 bias_term: false",
    "num_output: 2 kernel_size: 3 dilation: 2 pad: 2",
])
def test_deconvolution(param):
    check(net_of(f'layer {{ name: "d" type: "Deconvolution" bottom: "data" top: "d" convolution_param {{ {param} }} }}',
                 {"data": (2, 2, 5, 6)}))


# ---------------------------------------------------------------- normalisation
@pytest.mark.parametrize("factor", [1.0, 0.25, 7.5, 0.0])
def test_batch_norm_scale_factor(factor):
    net = net_of('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" batch_norm_param { eps: 0.001 } }',
                 {"data": (2, 4, 3, 3)})
    rng = np.random.default_rng(3)
    bn = net.layer_dict["bn"]
    bn.blobs[0].data[...] = rng.standard_normal(4) * 3
    bn.blobs[1].data[...] = rng.uniform(0.5, 4, 4)
    bn.blobs[2].data[...] = factor
    model, _ = check(net)
    # Independently: mean and var divided by the factor (0 means 0), then standardised.
    x = np.random.default_rng(5).standard_normal((2, 4, 3, 3)).astype(np.float32)
    f = 0 if factor == 0 else 1 / factor
    mean, var = (b.data.astype(np.float64) * f for b in bn.blobs[:2])
    want = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 0.001)
    np.testing.assert_allclose(run_onnx(model, {"data": x})["data/bn"], want, rtol=1e-5, atol=1e-5)


def test_batch_norm_with_batch_statistics():
    check(net_of('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" '
                 "batch_norm_param { use_global_stats: false } }", {"data": (3, 4, 2, 5)}))


@pytest.mark.parametrize("param", [
    "local_size: 5 alpha: 0.0001 beta: 0.75",
    "local_size: 3 alpha: 0.5 beta: 0.6 k: 2",
    "local_size: 3 alpha: 0.3 beta: 0.75 norm_region: WITHIN_CHANNEL",
    "local_size: 5 alpha: 2 beta: 1.5 norm_region: WITHIN_CHANNEL",
])
def test_lrn(param):
    check(net_of(f'layer {{ name: "n" type: "LRN" bottom: "data" top: "n" lrn_param {{ {param} }} }}',
                 {"data": (2, 7, 6, 5)}))


def test_lrn_within_channel_by_hand():
    """Ones 3x3, local_size 3: the 3x3 zero-padded sum of squares is 4 at corners, 6 at edges, 9 in the
    middle, always divided by 9: y = (1 + alpha * sum / 9) ^ -beta."""
    net = net_of('layer { name: "n" type: "LRN" bottom: "data" top: "n" '
                 "lrn_param { local_size: 3 alpha: 0.9 beta: 0.5 norm_region: WITHIN_CHANNEL } }",
                 {"data": (1, 1, 3, 3)})
    out = run_onnx(export_onnx(net), {"data": np.ones((1, 1, 3, 3), np.float32)})["n"][0, 0]
    sums = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    np.testing.assert_allclose(out, (1 + 0.9 * sums / 9) ** -0.5, rtol=1e-6)


def test_mvn():
    check(net_of('layer { name: "a" type: "MVN" bottom: "data" top: "a" }'
                 'layer { name: "b" type: "MVN" bottom: "data" top: "b" mvn_param { across_channels: true } }'
                 'layer { name: "c" type: "MVN" bottom: "data" top: "c" mvn_param { normalize_variance: false } }',
                 {"data": (2, 3, 4, 5)}))


@pytest.mark.parametrize("text,shapes", [
    ('layer { name: "s" type: "Scale" bottom: "data" top: "s" scale_param { bias_term: true } }', {"data": (2, 3, 4, 4)}),
    ('layer { name: "s" type: "Scale" bottom: "data" top: "s" scale_param { axis: 2 num_axes: 2 } }', {"data": (2, 3, 4, 5)}),
    ('layer { name: "s" type: "Scale" bottom: "data" top: "s" scale_param { num_axes: 0 } }', {"data": (2, 3, 4)}),
    ('layer { name: "s" type: "Scale" bottom: "data" bottom: "w" top: "s" scale_param { axis: 0 } }',
     {"data": (2, 3, 4, 4), "w": (2, 3)}),
    ('layer { name: "s" type: "Scale" bottom: "data" bottom: "w" top: "s" scale_param { bias_term: true } }',
     {"data": (2, 3, 4, 4), "w": (3, 4)}),
    ('layer { name: "b" type: "Bias" bottom: "data" top: "b" }', {"data": (2, 3, 4, 4)}),
    ('layer { name: "b" type: "Bias" bottom: "data" bottom: "w" top: "b" bias_param { axis: 2 } }',
     {"data": (2, 3, 4, 5), "w": (4, 5)}),
])
def test_scale_and_bias(text, shapes):
    check(net_of(text, shapes))


# ---------------------------------------------------------------- elementwise and neurons
@pytest.mark.parametrize("param", ["operation: SUM coeff: 0.5 coeff: -2 coeff: 3", "operation: SUM",
                                   "operation: PROD", "operation: MAX"])
def test_eltwise(param):
    net = net_of(f'layer {{ name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "e" '
                 f"eltwise_param {{ {param} }} }}", {"a": (2, 3, 4), "b": (2, 3, 4), "c": (2, 3, 4)})
    model, _ = check(net)
    if "coeff" in param:
        feeds = {k: np.random.default_rng(i).standard_normal((2, 3, 4)).astype(np.float32)
                 for i, k in enumerate("abc")}
        want = 0.5 * feeds["a"] - 2 * feeds["b"] + 3 * feeds["c"]
        np.testing.assert_allclose(run_onnx(model, feeds)["e"], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("text", [
    'type: "ReLU"', 'type: "ReLU" relu_param { negative_slope: 0.1 }', 'type: "PReLU"',
    'type: "PReLU" prelu_param { channel_shared: true }', 'type: "ELU" elu_param { alpha: 0.7 }',
    'type: "Sigmoid"', 'type: "TanH"', 'type: "AbsVal"', 'type: "BNLL"',
    'type: "Power" power_param { power: 2 scale: 0.5 shift: 3 }', 'type: "Power" power_param { power: 0 }',
    'type: "Power" power_param { scale: -2 }', 'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }',
    'type: "Exp"', 'type: "Clip" clip_param { min: -0.5 max: 0.8 }', 'type: "Swish" swish_param { beta: 1.5 }',
    'type: "Threshold" threshold_param { threshold: 0.2 }', 'type: "Dropout"',
    'type: "Softmax"', 'type: "Softmax" softmax_param { axis: 2 }',
])
def test_neuron_layers_in_place(text):
    check(net_of(f'layer {{ name: "n" {text} bottom: "data" top: "data" }}', {"data": (2, 3, 4, 5)}))


@pytest.mark.parametrize("param", ["base: 10 scale: 2 shift: 5", "shift: 6"])
def test_log(param):
    net = net_of(f'layer {{ name: "n" type: "Log" bottom: "data" top: "y" log_param {{ {param} }} }}',
                 {"data": (2, 3)})
    check(net, feeds={"data": np.random.default_rng(0).uniform(0, 2, (2, 3)).astype(np.float32)})


def test_bnll_large_inputs_stay_finite():
    net = net_of('layer { name: "n" type: "BNLL" bottom: "data" top: "y" }', {"data": (1, 4)})
    check(net, feeds={"data": np.array([[-100, -3, 30, 100]], np.float32)})


# ---------------------------------------------------------------- structure
@pytest.mark.parametrize("param,shape", [
    ("shape { dim: 0 dim: -1 }", (2, 3, 4, 5)),
    ("shape { dim: 0 dim: 2 dim: -1 dim: 5 }", (2, 6, 4, 5)),
    ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 3, 4, 5)),
    ("axis: 2 shape { dim: 2 dim: 0 dim: -1 }", (2, 3, 4, 6)),
    ("axis: -1 shape { dim: 1 dim: 1 }", (2, 3)),
    ("axis: 0 num_axes: 0 shape { dim: 1 }", (2, 3)),
])
def test_reshape(param, shape):
    check(net_of(f'layer {{ name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param {{ {param} }} }}',
                 {"data": shape}))


@pytest.mark.parametrize("param", ["", "flatten_param { axis: 2 }", "flatten_param { axis: 1 end_axis: 2 }",
                                   "flatten_param { axis: 0 end_axis: -2 }"])
def test_flatten(param):
    check(net_of(f'layer {{ name: "f" type: "Flatten" bottom: "data" top: "f" {param} }}', {"data": (2, 3, 4, 5)}))


@pytest.mark.parametrize("param", ["axis: 2 offset: 1", "axis: 2 offset: 2 offset: 1", "axis: 1 offset: 1 offset: 0 offset: 3",
                                   "axis: 3 offset: 4", ""])
def test_crop_offsets(param):
    net = net_of(f'layer {{ name: "c" type: "Crop" bottom: "data" bottom: "ref" top: "c" crop_param {{ {param} }} }}',
                 {"data": (2, 4, 9, 8), "ref": (2, 3, 5, 4)} if "axis: 1" in param else
                 {"data": (2, 3, 9, 8), "ref": (2, 3, 5, 4)})
    model, _ = check(net)
    if param == "axis: 2 offset: 2 offset: 1":
        x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
        out = run_onnx(model, {"data": x, "ref": np.zeros((2, 3, 5, 4), np.float32)})["c"]
        np.testing.assert_array_equal(out, x[:, :, 2:7, 1:5])


@pytest.mark.parametrize("param,tops", [("axis: 1 slice_point: 1 slice_point: 3", 3), ("axis: 2", 2),
                                        ("slice_dim: 1", 1), ("axis: -1 slice_point: 4", 2)])
def test_slice(param, tops):
    names = " ".join(f'top: "s{i}"' for i in range(tops))
    check(net_of(f'layer {{ name: "s" type: "Slice" bottom: "data" {names} slice_param {{ {param} }} }}',
                 {"data": (2, 5, 4, 6)}))


def test_concat_tile_split_and_parameter():
    check(net_of('layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" concat_param { axis: 2 } }'
                 'layer { name: "t" type: "Tile" bottom: "c" top: "t" tile_param { axis: 1 tiles: 3 } }'
                 'layer { name: "t2" type: "Tile" bottom: "a" top: "t2" tile_param { axis: -1 tiles: 2 } }'
                 'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 dim: 7 } } }'
                 'layer { name: "sum" type: "Eltwise" bottom: "c" bottom: "p" top: "sum" }',
                 {"a": (2, 3, 3), "b": (2, 3, 4)}))


# ---------------------------------------------------------------- inner product, index and reduce layers
@pytest.mark.parametrize("param,shape", [
    ("num_output: 5", (2, 3, 4, 4)),
    ("num_output: 5 axis: 2", (2, 3, 4, 6)),
    ("num_output: 5 axis: 2 transpose: true bias_term: false", (2, 3, 4, 6)),
    ("num_output: 5 transpose: true", (3, 7)),
    ("num_output: 4 axis: -1", (2, 3, 6)),
])
def test_inner_product(param, shape):
    check(net_of(f'layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                 f"inner_product_param {{ {param} }} }}", {"data": shape}))


@pytest.mark.parametrize("param", ["", "top_k: 3", "top_k: 2 out_max_val: true", "axis: 1 top_k: 2",
                                   "axis: 2 out_max_val: true", "axis: -1 top_k: 4"])
def test_argmax(param):
    check(net_of(f'layer {{ name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param {{ {param} }} }}',
                 {"data": (2, 5, 3, 4)}))


def test_argmax_ties_take_the_larger_index():
    net = net_of('layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { top_k: 3 } }',
                 {"data": (1, 5)})
    x = np.array([[1, 3, 0, 3, 1]], np.float32)
    out = run_onnx(export_onnx(net), {"data": x})["a"]
    np.testing.assert_array_equal(out.ravel(), [3, 1, 4])      # Caffe's (value, index) descending order
    check(net, feeds={"data": x})


@pytest.mark.parametrize("param", ["", "operation: ASUM axis: 1", "operation: SUMSQ axis: 2 coeff: 0.5",
                                   "operation: MEAN axis: -1 coeff: -2", "operation: MEAN axis: 0"])
def test_reduction(param):
    check(net_of(f'layer {{ name: "r" type: "Reduction" bottom: "data" top: "r" reduction_param {{ {param} }} }}',
                 {"data": (2, 3, 4)}))


def test_embed_and_batch_reindex():
    net = net_of('layer { name: "e" type: "Embed" bottom: "i" top: "e" embed_param { num_output: 3 input_dim: 5 } }'
                 'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "j" top: "r" }',
                 {"i": (2, 4), "x": (3, 2), "j": (4,)})
    feeds = {"i": np.array([[0, 4, 2, 2], [1, 3, 0, 4]], np.float32), "x": np.arange(6, dtype=np.float32).reshape(3, 2),
             "j": np.array([2, 0, 0, 1], np.float32)}
    check(net, feeds=feeds)


# ---------------------------------------------------------------- opsets, names, refusals
LRN_BN_NET = ('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { use_global_stats: false } }'
              'layer { name: "m" type: "MVN" bottom: "bn" top: "m" }'
              'layer { name: "r" type: "Reduction" bottom: "m" top: "r" reduction_param { operation: SUMSQ axis: 1 } }'
              'layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { norm_region: WITHIN_CHANNEL } }')


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_opsets(opset):
    model, _ = check(net_of(LRN_BN_NET + _pool_text("AVE", (3, 3), (2, 2), (1, 1), "CEIL"), {"data": (2, 3, 6, 6)}),
                     opset=opset)
    assert model.opset_import[0].version == opset


def test_opset_out_of_range_is_refused():
    net = net_of(_pool_text("MAX", (2, 2), (2, 2), (0, 0), "CEIL"), {"data": (1, 1, 4, 4)})
    with pytest.raises(ExportError, match="--opset 9: netspec exports opsets 13 to"):
        export_onnx(net, opset=9)


def test_in_place_values_are_named_blob_slash_layer():
    net = net_of('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
                 "convolution_param { num_output: 2 kernel_size: 3 } }"
                 'layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }'
                 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }'
                 'layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool" pooling_param { kernel_size: 2 } }',
                 {"data": (1, 2, 6, 6)})
    model, diffs = check(net)
    produced = [out for node in model.graph.node for out in node.output]
    assert {"conv1/conv1", "conv1/bn1", "conv1", "pool"} <= set(produced)
    assert "conv1" in diffs                  # the final state: what net.blobs['conv1'] holds
    feeds = {"data": np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)}
    from netspec.onnx_export.check import _with_outputs
    from onnx import helper, TensorProto
    out = run_onnx(_with_outputs(model, ["conv1/conv1", "conv1/bn1", "conv1"], helper, TensorProto), feeds)
    assert (out["conv1/bn1"] < 0).any() and (out["conv1"] >= 0).all()
    np.testing.assert_allclose(out["conv1"], np.maximum(out["conv1/bn1"], 0), rtol=0, atol=0)


@pytest.mark.parametrize("text,message", [
    ('layer { name: "py" type: "Python" bottom: "data" top: "y" python_param { module: "netspec.layers.python" '
     'layer: "Layer" } }', None),
    ('layer { name: "d" type: "Dropout" bottom: "data" top: "y" }', "layer 'd' (Dropout): no faithful ONNX form: "
     "TRAIN-phase Dropout is random"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "y" convolution_param { num_output: 2 '
     "kernel_size: 1 axis: 2 } }", "layer 'c' (Convolution): no faithful ONNX form: channel axis 2"),
])
def test_refusals_are_one_line_naming_the_layer(text, message):
    phase = caffe_pb2.TRAIN if "Dropout" in text else caffe_pb2.TEST
    try:
        net = net_of(text, {"data": (1, 3, 4, 4)}, phase=phase)
    except NetspecError:
        pytest.skip("the layer itself does not build here")
    with pytest.raises(ExportError) as info:
        export_onnx(net)
    text = str(info.value)
    assert "\n" not in text and "no faithful ONNX form" in text
    if message:
        assert text.startswith(message), text


def test_missing_onnx_package_is_one_clear_line(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)
    net = net_of(_pool_text("MAX", (2, 2), (2, 2), (0, 0), "CEIL"), {"data": (1, 1, 4, 4)})
    with pytest.raises(ExportError, match=r"needs the 'onnx' package: pip install onnx \(or pip install -e '\.\[onnx\]'"):
        export_onnx(net)


# ---------------------------------------------------------------- fork layers
@pytest.mark.parametrize("text,shapes,phase", [
    ('layer { name: "r" type: "ReLU6" bottom: "data" top: "data" }', {"data": (2, 3, 4, 4)}, "TEST"),
    ('layer { name: "c" type: "ConvolutionDepthwise" bottom: "data" top: "c" '
     "convolution_param { num_output: 3 kernel_size: 3 stride: 2 pad: 1 } }", {"data": (2, 3, 7, 7)}, "TEST"),
    ('layer { name: "s" type: "ShuffleChannel" bottom: "data" top: "data" shuffle_channel_param { group: 3 } }',
     {"data": (2, 6, 3, 4)}, "TEST"),
    ('layer { name: "bn" type: "BN" bottom: "data" top: "data" bn_param { eps: 0.001 } }', {"data": (2, 3, 4, 4)}, "TEST"),
    ('layer { name: "bn" type: "BN" bottom: "data" top: "bn" bn_param { eps: 0.001 } }', {"data": (2, 3, 4, 4)}, "TRAIN"),
    ('layer { name: "bn" type: "BN" bottom: "data" top: "data" segnet_bn_param { bn_mode: INFERENCE } }',
     {"data": (2, 3, 4, 4)}, "TEST"),
    ('layer { name: "bn" type: "BN" bottom: "data" top: "bn" segnet_bn_param { bn_mode: LEARN } }',
     {"data": (2, 3, 4, 4)}, "TEST"),
    ('layer { name: "i" type: "Interp" bottom: "data" top: "i" interp_param { zoom_factor: 3 } }',
     {"data": (2, 3, 4, 5)}, "TEST"),
    ('layer { name: "i" type: "Interp" bottom: "data" top: "i" interp_param { shrink_factor: 2 pad_beg: -1 pad_end: -1 } }',
     {"data": (1, 2, 9, 8)}, "TEST"),
    ('layer { name: "i" type: "Interp" bottom: "data" top: "i" interp_param { height: 1 width: 6 } }',
     {"data": (1, 2, 5, 4)}, "TEST"),
])
def test_fork_layers(text, shapes, phase):
    check(net_of(text, shapes, phase=caffe_pb2.Phase.Value(phase)))


def test_im2col():
    check(net_of('layer { name: "i" type: "Im2col" bottom: "data" top: "i" '
                 "convolution_param { kernel_size: 3 stride: 2 pad: 1 dilation: 1 } }", {"data": (2, 3, 7, 6)}))
    check(net_of('layer { name: "i" type: "Im2col" bottom: "data" top: "i" '
                 "convolution_param { kernel_h: 2 kernel_w: 3 stride: 1 pad_h: 0 pad_w: 2 } }", {"data": (1, 2, 5, 5)}))


def test_upsample_with_mask_and_nearest():
    net = net_of('layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "m" '
                 "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }"
                 'layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u" upsample_param { scale: 2 } }'
                 'layer { name: "v" type: "Upsample" bottom: "p" top: "v" upsample_param { scale: 3 } }',
                 {"data": (2, 3, 6, 8)})
    check(net)


def test_roi_pooling():
    net = net_of('layer { name: "r" type: "ROIPooling" bottom: "data" bottom: "rois" top: "r" '
                 "roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 } }",
                 {"data": (2, 3, 9, 11), "rois": (4, 5)})
    rois = np.array([[0, 0, 0, 40, 30], [1, 5, 6, 17, 13], [1, 10, 2, 10, 2], [0, 30, 20, 60, 50]], np.float32)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 11)).astype(np.float32)
    check(net, feeds={"data": x, "rois": rois})


@pytest.mark.parametrize("text,shapes", [
    ('layer { name: "l" type: "SmoothL1Loss" bottom: "a" bottom: "b" top: "l" smooth_l1_loss_param { sigma: 2 } }',
     {"a": (3, 8), "b": (3, 8)}),
    ('layer { name: "l" type: "SmoothL1Loss" bottom: "a" bottom: "b" bottom: "c" bottom: "d" top: "l" }',
     {"a": (3, 4, 2), "b": (3, 4, 2), "c": (3, 4, 2), "d": (3, 4, 2)}),
    ('layer { name: "s" type: "Softmax" bottom: "a" top: "p" }'
     'layer { name: "l" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "l" }',
     {"a": (4, 5), "label": (4,)}),
    ('layer { name: "l" type: "HingeLoss" bottom: "a" bottom: "label" top: "l" }', {"a": (4, 5), "label": (4,)}),
    ('layer { name: "l" type: "HingeLoss" bottom: "a" bottom: "label" top: "l" hinge_loss_param { norm: L2 } }',
     {"a": (4, 5, 1), "label": (4,)}),
    ('layer { name: "l" type: "SoftmaxWithLoss" bottom: "a" bottom: "label" top: "l" top: "prob" '
     "loss_param { ignore_label: 2 normalization: VALID } softmax_param { axis: 1 } }", {"a": (3, 4, 5), "label": (3, 5)}),
    ('layer { name: "l" type: "SoftmaxWithLoss" bottom: "a" bottom: "label" top: "l" loss_param { normalization: FULL } }',
     {"a": (3, 4, 2), "label": (3, 2)}),
    ('layer { name: "acc" type: "Accuracy" bottom: "a" bottom: "label" top: "acc" top: "per_class" '
     "accuracy_param { top_k: 2 ignore_label: 1 } }", {"a": (6, 4), "label": (6,)}),
    ('layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "a" bottom: "t" top: "l" loss_param { ignore_label: 0 } }',
     {"a": (3, 4), "t": (3, 4)}),
    ('layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" }', {"a": (3, 4), "b": (3, 2, 2)}),
    ('layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "l" '
     "contrastive_loss_param { margin: 3 legacy_version: true } }", {"a": (5, 3), "b": (5, 3), "y": (5,)}),
])
def test_loss_layers(text, shapes):
    net = net_of(text, shapes)
    model, diffs = check(net)
    # Random labels keep valid classes (and some ignored ones).
    assert all(name in diffs for name in net.outputs if name not in shapes)


@pytest.mark.parametrize("text,shapes", [
    ('layer { name: "p" type: "Permute" bottom: "data" top: "p" permute_param { order: 0 order: 2 order: 3 order: 1 } }',
     {"data": (2, 3, 4, 5)}),
    ('layer { name: "n" type: "Normalize" bottom: "data" top: "n" norm_param { across_spatial: false } }',
     {"data": (2, 3, 4, 5)}),
    ('layer { name: "n" type: "Normalize" bottom: "data" top: "n" norm_param { across_spatial: true channel_shared: true } }',
     {"data": (2, 3, 4, 5)}),
    ('layer { name: "pb" type: "PriorBox" bottom: "data" bottom: "image" top: "pb" prior_box_param { min_size: 30 '
     "max_size: 60 aspect_ratio: 2 flip: true clip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }",
     {"data": (2, 3, 4, 5), "image": (2, 3, 40, 50)}),
])
def test_ssd_layers(text, shapes):
    check(net_of(text, shapes))
