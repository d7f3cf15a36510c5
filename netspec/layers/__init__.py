"""Layers by family, one module each; importing this package fills LAYER_REGISTRY.

    data.py       Input, DummyData, Data (LMDB, LevelDB), MemoryData
    image_data.py ImageData (image files named in a list)
    hdf5.py       HDF5Data, HDF5Output
    window_data.py WindowData (R-CNN's windows cut from image files)
    conv.py       Convolution, Deconvolution (columns: im2col.py, or native.py's compiled ones)
    pooling.py    Pooling, SPP (windows: window_pool.py)
    common.py     InnerProduct, Softmax, Eltwise (and the axis/softmax helpers)
    neuron.py     elementwise activations: ReLU, Sigmoid, TanH, Dropout, PReLU, ...
    loss.py       SoftmaxWithLoss, Accuracy, EuclideanLoss, ... (and the label/normalization helpers)
    structure.py  blob plumbing: Split, Concat, Slice, Flatten, Reshape, Crop, Permute, ...
    indexing.py   select, gather or reduce by index: Filter, BatchReindex, ArgMax, Reduction, Embed
    norm.py       BatchNorm, Scale, Bias, LRN, MVN, Normalize (SSD)
    detection.py  SSD's PriorBox, DetectionOutput, DetectionEvaluate (box arithmetic: ../bbox.py)
    multibox.py   SSD's MultiBoxLoss
    annotated_data.py  SSD's AnnotatedData (augmentation: ../datasets/annotated.py)
    python.py     user layers (`type: "Python"`)
    recurrent.py  LSTMUnit, RNN, LSTM
  Caffe forks' layers:
    roi_pooling.py       ROIPooling (Fast/Faster R-CNN)
    proposal.py          Proposal: py-faster-rcnn's rpn.proposal_layer, built in
    smooth_l1_loss.py    SmoothL1Loss (Fast/Faster R-CNN)
    resize.py            Interp (PSPNet/DeepLab), Upsample (SegNet)
    fork_bn.py           BN: PSPNet's and SegNet's
    depthwise.py         ConvolutionDepthwise (ShuffleNet)
    dense_image_data.py  DenseImageData (SegNet)
  (ReLU6 is in neuron.py, ShuffleChannel in structure.py.)
"""
from .base import LAYER_REGISTRY, Layer, register  # noqa: F401
from . import data, image_data, hdf5, window_data, conv, pooling, common, neuron, loss, structure, indexing, norm, python, recurrent  # noqa: F401,E402
from . import detection, multibox, annotated_data  # noqa: F401,E402
from . import (roi_pooling, proposal, smooth_l1_loss, resize, fork_bn, depthwise,  # noqa: F401,E402
               dense_image_data)
from .. import net_spec


def __getattr__(name):
    # `from netspec import layers as L; L.Convolution(...)` is pycaffe's NetSpec idiom: unknown
    # capitalised names here are layer factories from the NetSpec builder.
    if name[:1].isupper():
        return getattr(net_spec.layers, name)
    raise AttributeError(f"module 'netspec.layers' has no attribute {name!r}")
