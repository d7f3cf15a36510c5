"""Elementwise activations: one ONNX op where ONNX has Caffe's exact function, else a few."""
import numpy as np

from .registry import exports


def _unary(op, **attrs):
    def export(g, layer, bottoms, tops):
        g.node(op, [bottoms[0].name], [tops[0].name], **attrs)
    return export


for _caffe, _onnx in (("Sigmoid", "Sigmoid"), ("TanH", "Tanh"), ("AbsVal", "Abs"),
                      ("BNLL", "Softplus")):       # BNLL: log(1 + e^x); ORT's Softplus is overflow-safe
    exports(_caffe)(_unary(_onnx))


@exports("ReLU")
def relu(g, layer, bottoms, tops):
    """x > 0 ? x : slope * x: Relu, or LeakyRelu (whose x >= 0 branch agrees at 0)."""
    if layer.slope == 0:
        g.node("Relu", [bottoms[0].name], [tops[0].name])
    else:
        g.node("LeakyRelu", [bottoms[0].name], [tops[0].name], alpha=float(layer.slope))


@exports("PReLU")
def prelu(g, layer, bottoms, tops):
    """PRelu broadcasts its slope from the right: per channel it is shaped (C, 1, ...)."""
    x = bottoms[0]
    slope = layer.blobs[0].data
    shape = (1,) if layer.channel_shared else (x.shape[1],) + (1,) * (len(x.shape) - 2)
    g.node("PRelu", [x.name, g.const(slope.reshape(shape), f"{layer.name}/slope")], [tops[0].name])


@exports("ELU")
def elu(g, layer, bottoms, tops):
    g.node("Elu", [bottoms[0].name], [tops[0].name], alpha=float(layer.alpha))


@exports("Dropout")
def dropout(g, layer, bottoms, tops):
    if layer.training:
        raise g.refuse("TRAIN-phase Dropout is random; export the TEST net (where it is the identity)")
    g.identity(bottoms[0].name, tops[0].name)


def _affine(g, x, scale, shift):
    """scale * x + shift, skipping the identity parts."""
    if scale != 1:
        x = g.node("Mul", [x, g.scalar(scale)])
    if shift != 0:
        x = g.node("Add", [x, g.scalar(shift)])
    return x


def _finish(g, x, value, output):
    """Make `value` (the last node's output, or `x` itself) the value named `output`."""
    if value == x:
        g.identity(value, output)
    else:
        assert g.nodes[-1].output[0] == value
        g.nodes[-1].output[0] = output
        g.used.add(output)


@exports("Power")
def power(g, layer, bottoms, tops):
    """(shift + scale * x) ^ power; power 0 is 1 everywhere (as in Caffe, even where the base is 0)."""
    x, y = bottoms[0].name, tops[0].name
    if layer.power == 0:
        g.node("ConstantOfShape", [g.node("Shape", [x])], [y],
               value=g.numpy_helper.from_array(np.ones(1, np.float32)))
        return
    value = _affine(g, x, layer.scale, layer.shift)
    if layer.power != 1:
        value = g.node("Pow", [value, g.scalar(layer.power)])
    _finish(g, x, value, y)


@exports("Exp")
def exp(g, layer, bottoms, tops):
    """base ^ (shift + scale * x) as netspec computes it: e^(ln(base) scale x) * base^shift."""
    x = bottoms[0].name
    value = g.node("Exp", [_affine(g, x, layer.inner_scale, 0)])
    _finish(g, x, _affine(g, value, layer.outer_scale, 0), tops[0].name)


@exports("Log")
def log(g, layer, bottoms, tops):
    """log_base(shift + scale * x) = ln(shift + scale * x) / ln(base)."""
    x = bottoms[0].name
    value = g.node("Log", [_affine(g, x, layer.scale, layer.shift)])
    _finish(g, x, _affine(g, value, layer.base_scale, 0), tops[0].name)


@exports("Clip")
def clip(g, layer, bottoms, tops):
    g.node("Clip", [bottoms[0].name, g.scalar(layer.lo), g.scalar(layer.hi)], [tops[0].name])


@exports("Swish")
def swish(g, layer, bottoms, tops):
    """x * sigmoid(beta x)."""
    x = bottoms[0].name
    g.node("Mul", [x, g.node("Sigmoid", [_affine(g, x, layer.beta, 0)])], [tops[0].name])


@exports("Threshold")
def threshold(g, layer, bottoms, tops):
    """1 where x > threshold, else 0."""
    above = g.node("Greater", [bottoms[0].name, g.scalar(layer.threshold)])
    g.node("Cast", [above], [tops[0].name], to=g.TensorProto.FLOAT)

