"""Export to ONNX with Caffe's numbers: `export_onnx(net, path)` and `netspec export --format onnx`.

    export.py     the driver: walks the built Net, names values, makes and checks the model
    registry.py   Caffe type name -> mapping function (one per type, like the layer registry)
    builder.py    GraphBuilder: nodes, constants, reshapes, reductions; ExportError
    vision.py     Convolution, Deconvolution, Pooling, SPP
    neuron.py     elementwise activations
    norm.py       BatchNorm, Scale, Bias, LRN, MVN
    common.py     InnerProduct, Softmax, Eltwise, ArgMax, Reduction, Embed, BatchReindex
    structure.py  Concat, Slice, Flatten, Reshape, Crop, Tile, Parameter
    check.py      ONNX Runtime against netspec's forward (the relative difference used)

The `netspec export` command is netspec/commands/export.py. The `onnx` package is needed to export (optional extra `onnx`), ONNX Runtime to check.
"""
from .builder import ExportError  # noqa: F401
from .export import DEFAULT_OPSET, export_onnx, to_onnx  # noqa: F401
from .registry import EXPORTERS  # noqa: F401
