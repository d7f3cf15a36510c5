"""Gradient checking for layers: analytic backward vs central finite differences in float64.

    check_layer(
        'type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 }',
        bottoms=[rng.standard_normal((2, 4, 7, 7))])

The objective is sum_i <top_i, W_i> with fixed random W_i, so every element of
every top is exercised. The layer runs in float64 (netspec.blob.precision),
the RNG is reseeded before every forward so random layers (Dropout) repeat.
"""
import numpy as np
from google.protobuf import text_format

from netspec import rng as netspec_rng
from netspec.blob import Blob, precision
from netspec.layers import LAYER_REGISTRY
from netspec.proto import caffe_pb2


def make_layer_param(text, phase=caffe_pb2.TRAIN):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    if not lp.name:
        lp.name = "under_test"
    lp.phase = phase
    return lp


def build(text, bottoms, num_tops=1, phase=caffe_pb2.TRAIN, seed=1701):
    """Create the layer and its blobs in float64 and run setup + reshape."""
    lp = make_layer_param(text, phase)
    netspec_rng.set_seed(seed)
    layer = LAYER_REGISTRY[lp.type](lp)
    bottom = []
    for b in bottoms:
        blob = Blob(np.shape(b))
        blob.data[...] = b
        bottom.append(blob)
    top = [Blob() for _ in range(num_tops)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    return layer, bottom, top


def _objective(layer, bottom, top, weights, seed):
    netspec_rng.set_seed(seed)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return sum(float(np.sum(t.data * w)) for t, w in zip(top, weights))


def check_layer(text, bottoms, num_tops=1, check_bottoms=None, check_params=True, phase=caffe_pb2.TRAIN,
                eps=1e-6, rtol=1e-5, atol=1e-7, seed=1701, max_checks=400, top_weights=None):
    """Assert that backward matches finite differences for bottoms and params.

    check_bottoms: indices of bottoms to check (default all); labels etc. are excluded by the caller.
    check_params: True (every parameter blob), False, or a list of parameter blob indices.
    max_checks: per array, a random subset of at most this many elements is probed.
    Returns (layer, bottom, top) for further assertions.
    """
    with precision(np.float64):
        layer, bottom, top = build(text, [np.asarray(b, np.float64) for b in bottoms], num_tops, phase, seed)
        probe = np.random.default_rng(seed + 1)
        netspec_rng.set_seed(seed + 2)
        layer.reshape(bottom, top)      # top shapes may change between setup and forward (Filter)
        _objective(layer, bottom, top, [np.zeros(t.shape) for t in top], seed + 2)
        weights = top_weights or [probe.standard_normal(t.shape) for t in top]
        if check_bottoms is None:
            check_bottoms = list(range(len(bottom)))
        _objective(layer, bottom, top, weights, seed + 2)
        for t, w in zip(top, weights):
            t.diff[...] = w
        for p in layer.blobs:
            p.diff[...] = 0
        propagate = [i in check_bottoms for i in range(len(bottom))]
        layer.backward(top, propagate, bottom)
        analytic = [bottom[i].diff.copy() for i in check_bottoms]
        targets = [bottom[i] for i in check_bottoms]
        if check_params:
            # True: every parameter blob; a list: those indices (e.g. not running statistics)
            params = layer.blobs if check_params is True else [layer.blobs[j] for j in check_params]
            analytic += [p.diff.copy() for p in params]
            targets += list(params)
        for blob, grad in zip(targets, analytic):
            flat = blob.data.reshape(-1)
            idx = np.arange(flat.size)
            if flat.size > max_checks:
                idx = probe.choice(flat.size, max_checks, replace=False)
            numeric = np.empty(len(idx))
            for n, k in enumerate(idx):
                old = flat[k]
                flat[k] = old + eps
                f_plus = _objective(layer, bottom, top, weights, seed + 2)
                flat[k] = old - eps
                f_minus = _objective(layer, bottom, top, weights, seed + 2)
                flat[k] = old
                numeric[n] = (f_plus - f_minus) / (2 * eps)
            got = grad.reshape(-1)[idx]
            scale = max(1.0, float(np.max(np.abs(numeric))))
            np.testing.assert_allclose(got, numeric, rtol=rtol, atol=atol * scale + 1e-9,
                                       err_msg=f"gradient mismatch for {'param' if blob in layer.blobs else 'bottom'} "
                                               f"of shape {blob.shape} in layer {layer.type}")
        return layer, bottom, top


def forward(text, bottoms, num_tops=1, phase=caffe_pb2.TRAIN, seed=1701):
    """Run one float64 forward and return the top arrays (for worked-out forward checks)."""
    with precision(np.float64):
        layer, bottom, top = build(text, [np.asarray(b, np.float64) for b in bottoms], num_tops, phase, seed)
        netspec_rng.set_seed(seed)
        layer.forward(bottom, top)
        return [t.data.copy() for t in top]
