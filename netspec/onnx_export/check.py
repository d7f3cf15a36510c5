"""Run an exported model with ONNX Runtime and compare it with netspec's forward.

The measure, per output (or per blob): max |onnx - netspec| / max |netspec| over the whole
tensor, the infinity-norm relative difference. Elementwise relative differences are not
used: outputs near zero after cancellation (a convolution's or a sum's) carry float32
rounding that is large relative to themselves yet tiny next to the tensor's scale; scaling
by the tensor's largest magnitude measures the error at the scale the output lives at.
An all-zero netspec output falls back to the absolute difference.
"""
import json

import numpy as np

from .builder import ExportError
from .export import OUTPUT_BLOBS
from .losses import LABEL_BOTTOMS


def relative_difference(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if not want.size:
        return 0.0
    scale = np.abs(want).max()
    both_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(both_nan, 0.0, np.abs(got - want))
    if np.isnan(diff).any():
        return float("inf")
    return float(diff.max() / scale) if scale > 0 else float(diff.max())


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("--check needs ONNX Runtime: pip install onnxruntime "
                          "(or pip install -e '.[test]' from the netspec checkout)") from None
    return onnxruntime


def runtime_version():
    return _onnxruntime().__version__


def ort_session(model, threads=None):
    ort = _onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:           # ORT's own error types; one line for the user
        raise ExportError(f"ONNX Runtime could not load the exported model: {' '.join(str(e).split())}") from None


def random_inputs(net, model, seed=0, batch=None):
    """Random data for each graph input at the net's shapes (or another batch size): standard
    normal, except labels (class indices in range, 0/1 similarity, targets in [0, 1])."""
    rng = np.random.default_rng(seed)
    kinds = label_inputs(net)
    feeds = {}
    for value in model.graph.input:
        shape = list(net.blobs[value.name].shape)
        if batch is not None and shape:
            shape[0] = batch
        kind, classes = kinds.get(value.name, (None, None))
        if kind == "class":
            data = rng.integers(0, classes, shape)
        elif kind == "binary":
            data = rng.integers(0, 2, shape)
        elif kind == "unit":
            data = rng.uniform(0, 1, shape)
        else:
            data = rng.standard_normal(shape)
        feeds[value.name] = data.astype(np.float32)
    return feeds


def label_inputs(net):
    """{input blob: (kind, classes)} for the blobs loss layers and Accuracy read as labels."""
    source = {}                     # a Split's top -> the blob it copies
    kinds = {}
    for layer in net.layers:
        lp = layer.layer_param
        if layer.type == "Split":
            for t in lp.top:
                source[t] = source.get(lp.bottom[0], lp.bottom[0])
        for index, kind in LABEL_BOTTOMS.get(layer.type, {}).items():
            if index < len(lp.bottom):
                classes = getattr(layer, "C", None) or getattr(layer, "dim", None)
                kinds[source.get(lp.bottom[index], lp.bottom[index])] = (kind, classes)
    return kinds


def netspec_forward(net, feeds):
    """The net's forward with its data tops set to `feeds` (data layers themselves do not run)."""
    for name, array in feeds.items():
        blob = net.blobs[name]
        if blob.shape != array.shape:
            blob.reshape(array.shape)
    net_reshape_skipping_data(net)
    for name, array in feeds.items():
        net.blobs[name].data[...] = array
    for i, layer in enumerate(net.layers):
        if not (layer.is_data and not layer.layer_param.bottom):
            net.forward_prefilled(i, i)


def net_reshape_skipping_data(net):
    for record in net.records:       # the record's blobs: a loss may have an anonymous top
        if not (record.layer.is_data and not record.bottom_names):
            record.layer.reshape(record.bottoms, record.tops)


def compare(net, model, feeds=None, every_blob=False, seed=0, threads=None):
    """{name: relative difference} for each graph output (with every_blob, for every Caffe blob
    that is an ONNX value too), ONNX Runtime against netspec on the same random input."""
    from .builder import onnx_modules
    _, helper, _, TensorProto = onnx_modules()
    feeds = random_inputs(net, model, seed) if feeds is None else feeds
    names = [o.name for o in model.graph.output]
    props = {p.key: p.value for p in model.metadata_props}
    blob_of = json.loads(props.get(OUTPUT_BLOBS, "{}"))
    if every_blob:
        produced = {out for node in model.graph.node for out in node.output}
        extra = [n for n in net.blobs if n in produced and n not in names]
        model = _with_outputs(model, extra, helper, TensorProto)
        names += extra
    session = ort_session(model, threads)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    netspec_forward(net, feeds)
    return {name: relative_difference(got[name], net.blobs[blob_of.get(name, name)].data) for name in names}


def _with_outputs(model, extra, helper, TensorProto):
    copy = type(model)()
    copy.CopyFrom(model)
    for name in extra:
        copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy
