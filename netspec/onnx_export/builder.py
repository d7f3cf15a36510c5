"""GraphBuilder: the ONNX graph under construction, and the helpers every layer mapping shares.

A mapping function sees its layer's bottoms and tops as Values: the ONNX value name, the
static shape netspec computed, and `dims`, the same shape with None where the dimension
follows the batch size (only with --dynamic-batch). Nodes it adds are named after the
layer; intermediate values get `<layer>/<what>` names, made unique against every Caffe
blob name so they can never shadow one.
"""
from collections import namedtuple

import numpy as np

from ..errors import NetspecError


class ExportError(NetspecError):
    """A net (or one layer of it) that has no faithful ONNX form, or a bad export request."""


Value = namedtuple("Value", "name shape dims")


def onnx_modules():
    """The `onnx` package's modules, or one clear error when it is missing."""
    try:
        import onnx
        from onnx import helper, numpy_helper, TensorProto
    except ImportError:
        raise ExportError("ONNX export needs the 'onnx' package: pip install onnx "
                          "(or pip install -e '.[onnx]' from the netspec checkout)") from None
    return onnx, helper, numpy_helper, TensorProto


class GraphBuilder:
    def __init__(self, opset, reserved_names):
        self.onnx, self.helper, self.numpy_helper, self.TensorProto = onnx_modules()
        self.opset = opset
        self.nodes, self.initializers = [], []
        self.used = set(reserved_names)       # Caffe blob names, then every name handed out
        self.layer = None                     # the layer being mapped (for names and errors)
        self._consts = {}

    # ---- names and errors
    def fresh(self, hint):
        """A value or node name not used yet, from `hint`."""
        name, k = hint, 1
        while name in self.used:
            name, k = f"{hint}_{k}", k + 1
        self.used.add(name)
        return name

    def refuse(self, why):
        lp = self.layer.layer_param
        return ExportError(f"layer '{lp.name}' ({lp.type}): no faithful ONNX form: {why}")

    # ---- nodes and constants
    def node(self, op, inputs, outputs=None, **attrs):
        """Add one node; `outputs` are names, a count of fresh ones, or None for one. Returns the name(s)."""
        prefix = self.layer.layer_param.name if self.layer is not None else "netspec"
        single = outputs is None or (not isinstance(outputs, int) and len(outputs) == 1)
        if outputs is None or isinstance(outputs, int):
            outputs = [self.fresh(f"{prefix}/{op}") for _ in range(1 if outputs is None else outputs)]
        self.nodes.append(self.helper.make_node(op, list(inputs), outputs, name=self.fresh(f"{prefix}:{op}"),
                                                **attrs))
        return outputs[0] if single else outputs

    def const(self, array, hint=None, dtype=np.float32):
        """An initializer holding `array` (float32 unless told); small equal constants are shared."""
        array = np.asarray(array, dtype=dtype)
        key = None
        if array.size <= 16:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._consts:
                return self._consts[key]
        prefix = self.layer.layer_param.name if self.layer is not None else "netspec"
        name = self.fresh(hint if hint else f"{prefix}/const")
        self.initializers.append(self.numpy_helper.from_array(array, name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values):
        return self.const(np.asarray(values, np.int64), dtype=np.int64)

    def scalar(self, value):
        return self.const(np.float32(value))

    # ---- shape helpers
    def reshape(self, x, dims, output=None):
        """Reshape to `dims`; a None dim (it follows the batch) becomes Reshape's -1."""
        dims = list(dims)
        if dims.count(None) > 1:
            raise self.refuse(f"--dynamic-batch: the reshape to {dims} has more than one dimension that "
                              "follows the batch size")
        target = [-1 if d is None else int(d) for d in dims]
        return self.node("Reshape", [x, self.ints(target)], None if output is None else [output])

    def reduce(self, op, x, axes, keepdims, output=None):
        """Reduce* over `axes`: axes are an attribute before opset 18 (13 for ReduceSum), an input after."""
        as_input = self.opset >= (13 if op == "ReduceSum" else 18)
        outputs = None if output is None else [output]
        if as_input:
            return self.node(op, [x, self.ints(list(axes))], outputs, keepdims=int(keepdims))
        return self.node(op, [x], outputs, axes=list(axes), keepdims=int(keepdims))

    def identity(self, x, output):
        return self.node("Identity", [x], [output])
