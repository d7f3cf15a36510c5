"""Caffe type name -> the function that writes that layer as ONNX nodes.

A mapping function is `fn(g, layer, bottoms, tops)`: `g` the GraphBuilder, `layer` the built
netspec layer (its parameters already read and checked), `bottoms`/`tops` lists of Values.
It must produce every top under `tops[i].name`, or raise `g.refuse(why)`.
"""

EXPORTERS = {}


def exports(*type_names):
    def add(fn):
        for name in type_names:
            EXPORTERS[name] = fn
        return fn
    return add
