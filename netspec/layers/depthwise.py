"""ConvolutionDepthwise (the ShuffleNet and MobileNet forks' depthwise layer): a Convolution
whose group is the number of input channels, with convolution_param read as Convolution's."""
from ..proto import caffe_pb2
from .base import register
from .conv import Convolution


@register("ConvolutionDepthwise", "DepthwiseConvolution")
class ConvolutionDepthwise(Convolution):
    def setup(self, bottom, top):
        p = self.layer_param.convolution_param
        axis = p.axis % max(len(bottom[0].shape), 1)
        channels = bottom[0].shape[axis] if bottom[0].shape else 0
        if p.group not in (1, channels):
            raise self.error(f"group {p.group} conflicts with the depthwise group, the {channels} input "
                             "channels (leave group out)")
        declared = self.layer_param
        grouped = caffe_pb2.LayerParameter()
        grouped.CopyFrom(declared)
        grouped.convolution_param.group = channels
        self.layer_param = grouped       # Convolution's setup reads the group from here
        try:
            super().setup(bottom, top)
        finally:
            self.layer_param = declared
