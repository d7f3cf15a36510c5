"""InnerProduct, Softmax, Eltwise, and the index/reduce layers: ArgMax, Reduction, Embed, BatchReindex."""
from ..proto import caffe_pb2
from .registry import exports

_ELT = caffe_pb2.EltwiseParameter
_RED = caffe_pb2.ReductionParameter
_INT64_MIN = -(1 << 63)


@exports("InnerProduct")
def inner_product(g, layer, bottoms, tops):
    """axis 1: Flatten + Gemm. Other axes: x viewed as shape[:axis] + (K,), MatMul by W^T, + b
    (Reshape's 0s copy the leading dims, so a symbolic batch passes through)."""
    x, y = bottoms[0], tops[0]
    w = layer.blobs[0].data
    weight = g.const(w, f"{layer.name}/weight")
    params = [g.const(layer.blobs[1].data, f"{layer.name}/bias")] if layer.bias_term else []
    if layer.axis == 1:
        flat = x.name if len(x.shape) == 2 else g.node("Flatten", [x.name], axis=1)
        g.node("Gemm", [flat, weight] + params, [y.name], transB=0 if layer.transpose else 1)
        return
    if not layer.transpose:         # MatMul wants (K, N)
        weight = g.const(w.T.copy(), f"{layer.name}/weight_t")
    rows = g.node("Reshape", [x.name, g.ints([0] * layer.axis + [-1])])
    product = g.node("MatMul", [rows, weight], None if params else [y.name])
    if params:
        g.node("Add", [product] + params, [y.name])


@exports("Softmax")
def softmax(g, layer, bottoms, tops):
    g.node("Softmax", [bottoms[0].name], [tops[0].name], axis=int(layer.axis))


@exports("Eltwise")
def eltwise(g, layer, bottoms, tops):
    """SUM: c0 x0 + c1 x1 + ... added left to right as netspec does; PROD; MAX."""
    op, names, y = layer.layer_param.eltwise_param.operation, [b.name for b in bottoms], tops[0].name
    if op == _ELT.MAX:
        g.node("Max", names, [y])
        return
    if op == _ELT.SUM:
        names = [n if c == 1 else g.node("Mul", [n, g.scalar(c)]) for n, c in zip(names, layer.coeff)]
    binary = "Add" if op == _ELT.SUM else "Mul"
    acc = names[0]
    for k, n in enumerate(names[1:], 2):
        acc = g.node(binary, [acc, n], [y] if k == len(names) else None)


@exports("ArgMax")
def argmax(g, layer, bottoms, tops):
    """Caffe ranks (value, index) pairs descending, so among equal values the larger index comes
    first; ONNX TopK puts the smaller index first. TopK runs on the axis reversed, and the index is
    mapped back (dim - 1 - i). The result is a float blob, as in Caffe."""
    x, y = bottoms[0], tops[0]
    p = layer.layer_param.argmax_param
    if layer.has_axis:
        axis, values_in = layer.canonical_axis(p.axis, x.shape), x.name
    else:                           # per item, over everything after axis 0
        axis, values_in = 1, g.node("Flatten", [x.name], axis=1)
    dim = layer.dim
    reversed_ = g.node("Slice", [values_in, g.ints([-1]), g.ints([_INT64_MIN]), g.ints([axis]), g.ints([-1])])
    values, index = g.node("TopK", [reversed_, g.ints([layer.k])], 2, axis=axis, largest=1, sorted=1)
    index = g.node("Cast", [g.node("Sub", [g.ints(dim - 1), index])], to=g.TensorProto.FLOAT)
    if layer.has_axis:
        g.identity(values if p.out_max_val else index, y.name)
        return
    pair = index
    if p.out_max_val:               # (N, 2, k): indices then values
        pair = g.node("Concat", [g.node("Unsqueeze", [v, g.ints([1])]) for v in (index, values)], axis=1)
    g.reshape(pair, y.dims, y.name)


@exports("Reduction")
def reduction(g, layer, bottoms, tops):
    """SUM / ASUM / SUMSQ / MEAN over every axis from `axis` on, times coeff."""
    x, y = bottoms[0], tops[0]
    p = layer.layer_param.reduction_param
    axis = layer.canonical_axis(p.axis, x.shape)
    op = {_RED.SUM: "ReduceSum", _RED.ASUM: "ReduceL1", _RED.SUMSQ: "ReduceSumSquare",
          _RED.MEAN: "ReduceMean"}[p.operation]
    axes = list(range(axis, len(x.shape)))
    if p.coeff == 1:
        g.reduce(op, x.name, axes, keepdims=False, output=y.name)
    else:
        g.node("Mul", [g.reduce(op, x.name, axes, keepdims=False), g.scalar(p.coeff)], [y.name])


@exports("Embed")
def embed(g, layer, bottoms, tops):
    """Row lookup: indices arrive as floats (Caffe's convention) and are cast to int64."""
    p = layer.layer_param.embed_param
    index = g.node("Cast", [bottoms[0].name], to=g.TensorProto.INT64)
    table = g.const(layer.blobs[0].data, f"{layer.name}/weight")
    rows = g.node("Gather", [table, index], None if p.bias_term else [tops[0].name], axis=0)
    if p.bias_term:
        g.node("Add", [rows, g.const(layer.blobs[1].data, f"{layer.name}/bias")], [tops[0].name])


@exports("BatchReindex")
def batch_reindex(g, layer, bottoms, tops):
    index = g.node("Cast", [bottoms[1].name], to=g.TensorProto.INT64)
    g.node("Gather", [bottoms[0].name, index], [tops[0].name], axis=0)
