"""A built Net as an ONNX model with Caffe's numbers.

Value names are Caffe's blob names: the ONNX value `X` holds what `net.blobs['X'].data`
holds after a forward. A blob that in-place layers rewrite (conv1 -> ReLU relu1 -> conv1)
has one ONNX value per state; the last state keeps the blob's name and each earlier one is
named `<blob>/<layer that wrote it>` (`conv1/conv1` for the convolution's output, before
relu1 rewrote it); a graph input keeps its name, so all its in-place rewrites are named so.
Split layers (netspec's, inserted where a blob feeds several layers) add
no node: their tops are the bottom's value. Data layers (Input, DummyData, Data, ...) become
graph inputs of the shapes they produce; the net's outputs (blobs no layer consumes) are the
graph outputs. Parameters are initializers named `<layer>/weight`, `<layer>/bias`, ...
"""
import json

from ..errors import NetspecError
from . import common, forks, losses, neuron, norm, structure, vision  # noqa: F401  (fill the registry)
from .builder import ExportError, GraphBuilder, Value, onnx_modules
from .registry import EXPORTERS

DEFAULT_OPSET = 21       # ONNX 1.16's opset: ONNX Runtime >= 1.18, TensorRT 10, OpenCV 5 read it
MIN_OPSET = 13           # Softmax on one axis, Split/ReduceSum/Squeeze taking their sizes as inputs
OUTPUT_BLOBS = "netspec.output_blobs"   # metadata: {output value: Caffe blob}
BATCH = "batch"          # the symbolic batch dimension's name (--dynamic-batch)

_NOT_EXPORTED = {
    "Python": "a Python layer's forward is arbitrary user code",
    "HDF5Output": "it writes its bottoms to an HDF5 file: a side effect, not a value to compute",
    "Proposal": "its anchors, clipping and non-maximum suppression (a data-dependent number of boxes) "
                "have no ONNX form held to netspec's",
    "DetectionOutput": "its non-maximum suppression and top-k keep a data-dependent number of boxes; "
                       "ONNX NonMaxSuppression is not held to SSD's rules here",
    "MultiBoxLoss": "not exported: its matching of priors to ground truth and hard-negative mining are "
                    "training-time steps (export the deploy net, which ends in DetectionOutput or the scores)",
    "DetectionEvaluate": "not exported: an evaluation step over ground truth, not part of an inference graph",
    "InfogainLoss": "not exported yet (its H matrix from a file or a third bottom)",
    "Filter": "the number of items it keeps depends on the data, so its top has no fixed shape here",
    "RNN": "recurrent layers are not exported (their unrolled time steps with sequence markers)",
    "LSTM": "recurrent layers are not exported (their unrolled time steps with sequence markers)",
    "LSTMUnit": "recurrent layers are not exported (their unrolled time steps with sequence markers)",
}


def _opset_range():
    onnx = onnx_modules()[0]
    return MIN_OPSET, onnx.defs.onnx_opset_version()


def is_input_layer(layer):
    """A data layer (Input, DummyData, Data, ...): its tops become graph inputs."""
    return layer.is_data and not layer.layer_param.bottom


def _layer_blobs(net, layer):
    lp = layer.layer_param
    return [net.blobs[n] for n in lp.bottom], [net.blobs[n] for n in lp.top]


def batch_dims(net):
    """{blob: dims} with None for every dimension that changes with the batch size: the net is
    reshaped at batch N + 1 (its data tops grown on axis 0), compared, and put back."""
    shapes = {name: blob.shape for name, blob in net.blobs.items()}
    data_tops = [(name, net.blobs[name]) for layer in net.layers if is_input_layer(layer)
                 for name in layer.layer_param.top]
    saved = {name: blob.data.copy() for name, blob in data_tops}

    def reshape_all(grow):
        for name, blob in data_tops:
            shape = shapes[name]
            blob.reshape((shape[0] + grow,) + tuple(shape[1:]) if shape else shape)
        for layer in net.layers:
            if not is_input_layer(layer):
                layer.reshape(*_layer_blobs(net, layer))

    try:
        reshape_all(1)
        grown = {name: blob.shape for name, blob in net.blobs.items()}
    except NetspecError as e:
        reshape_all(0)
        raise ExportError(f"--dynamic-batch: the net does not run at another batch size: {e}") from None
    reshape_all(0)
    for name, data in saved.items():
        net.blobs[name].data[...] = data
    dims = {}
    for name, shape in shapes.items():
        other = grown[name]
        if len(other) != len(shape):
            raise ExportError(f"--dynamic-batch: blob '{name}' changes rank with the batch size")
        dims[name] = tuple(None if a != b else a for a, b in zip(shape, other))
    return dims


def value_names(net):
    """(layer index, top index) -> ONNX value name, by the in-place rule in the module docstring."""
    last = {}
    for i, layer in enumerate(net.layers):
        for name in layer.layer_param.top:
            if name in last and is_input_layer(net.layers[last[name]]):
                continue            # a graph input keeps its name; every rewrite of it is <blob>/<layer>
            last[name] = i
    used = set(net.blobs)
    names = {}
    for i, layer in enumerate(net.layers):
        for j, name in enumerate(layer.layer_param.top):
            if last[name] == i:
                names[(i, j)] = name
                continue
            hint = candidate = f"{name}/{layer.layer_param.name}"
            k = 1
            while candidate in used:
                candidate, k = f"{hint}_{k}", k + 1
            used.add(candidate)
            names[(i, j)] = candidate
    return names


def to_onnx(net, opset=None, dynamic_batch=False, producer="netspec"):
    """The ONNX ModelProto of a built netspec Net (its current weights), checked by onnx's checker."""
    onnx, helper, _, TensorProto = onnx_modules()
    opset = DEFAULT_OPSET if opset is None else int(opset)
    lo, hi = _opset_range()
    if not lo <= opset <= hi:
        raise ExportError(f"--opset {opset}: netspec exports opsets {lo} to {hi} (the installed onnx package's "
                          "newest)")
    dims = batch_dims(net) if dynamic_batch else {n: b.shape for n, b in net.blobs.items()}
    names = value_names(net)
    g = GraphBuilder(opset, set(net.blobs) | set(names.values()))
    current = {}                    # Caffe blob name -> the Value holding it now
    inputs = []
    for i, layer in enumerate(net.layers):
        lp = layer.layer_param
        tops = [Value(names[(i, j)], net.blobs[t].shape, dims[t]) for j, t in enumerate(lp.top)]
        if layer.type == "Split":
            for t in lp.top:
                current[t] = current[lp.bottom[0]]
            continue
        if layer.type == "Silence" or (layer.is_loss and not lp.top):
            continue        # a loss without a top (Caffe's anonymous one) has nothing to output
        if is_input_layer(layer):
            for t, v in zip(lp.top, tops):
                inputs.append(v)
                current[t] = v
            continue
        g.layer = layer
        fn = EXPORTERS.get(layer.type)
        if fn is None:
            why = _NOT_EXPORTED.get(layer.type, "netspec has no ONNX mapping for this layer type")
            raise g.refuse(why)
        fn(g, layer, [current[b] for b in lp.bottom], tops)
        for t, v in zip(lp.top, tops):
            current[t] = v
    g.layer = None

    input_names = {v.name for v in inputs}
    outputs, output_blobs = [], {}
    for name in net.outputs:
        v = current[name]
        if v.name in input_names:
            continue                # an input nothing reads (a label in a deploy net): not an output
        if v.name != name and name not in input_names:    # a Split's top: give its value the blob's name
            g.identity(v.name, name)
            v = Value(name, v.shape, v.dims)
        outputs.append(v)
        output_blobs[v.name] = name
    info = [_tensor_info(helper, TensorProto, v, inputs) for v in current.values()
            if v.name not in input_names and v not in outputs]
    graph = helper.make_graph(
        g.nodes, net.name or "net",
        [_tensor_info(helper, TensorProto, v, inputs) for v in inputs],
        [_tensor_info(helper, TensorProto, v, inputs) for v in outputs],
        g.initializers, value_info=_unique(info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
    model.ir_version = min(model.ir_version, _ir_version_for(onnx, opset))
    # Which Caffe blob each output is (they differ only for an input rewritten in place).
    helper.set_model_props(model, {OUTPUT_BLOBS: json.dumps(output_blobs)})
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported graph failed onnx's checker (a netspec bug): "
                          f"{' '.join(str(e).split())}") from None
    return model


def _unique(infos):
    seen, out = set(), []
    for info in infos:
        if info.name not in seen:
            seen.add(info.name)
            out.append(info)
    return out


def _tensor_info(helper, TensorProto, value, inputs):
    """Shape of a value; a dim that follows the batch is `batch` where it equals the inputs' batch, else unnamed."""
    batch = inputs[0].shape[0] if inputs and inputs[0].shape else None
    shape = [d if d is not None else (BATCH if s == batch else None) for s, d in zip(value.shape, value.dims)]
    return helper.make_tensor_value_info(value.name, TensorProto.FLOAT, shape)


def _ir_version_for(onnx, opset):
    """The IR version that goes with an opset (so older runtimes accept the file)."""
    table = getattr(onnx.helper, "VERSION_TABLE", [])
    for _, ir, ai_onnx, *_ in table:
        if ai_onnx == opset:
            return ir
    return onnx.IR_VERSION


def save(model, path):
    from ..schema import write_atomically
    write_atomically(path, model.SerializeToString())


def export_onnx(net, path=None, opset=None, dynamic_batch=False):
    """Export a built Net to ONNX; writes `path` (atomically) when given. Returns the ModelProto."""
    model = to_onnx(net, opset, dynamic_batch)
    if path is not None:
        save(model, path)
    return model

