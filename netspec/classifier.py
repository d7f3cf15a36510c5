"""pycaffe's caffe.Classifier: a TEST net that takes H x W x K images and returns class scores.

    clf = Classifier('deploy.prototxt', 'weights.caffemodel', image_dims=(256, 256),
                     mean=np.array([104, 117, 123]), raw_scale=255, channel_swap=(2, 1, 0))
    scores = clf.predict([caffe.io.load_image('cat.jpg')])      # N x classes

Images are resized to image_dims, then cropped to the net's input size: ten crops
(corners, centre, mirrored) averaged with oversample=True, the centre alone otherwise.
"""
import numpy as np

from . import io
from .net import Net, TEST


def configure_transformer(net, mean, input_scale, raw_scale, channel_swap):
    """The Transformer pycaffe's Classifier and Detector set up for the net's first input."""
    in_ = net.inputs[0]
    transformer = io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        self.transformer = configure_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None else self.crop_dims)

    def predict(self, inputs, oversample=True):
        """Scores (N x outputs of the net's first output) for N H x W x K images."""
        in_ = self.inputs[0]
        h, w = (int(d) for d in self.image_dims)
        images = np.stack([io.resize_image(np.asarray(im, np.float32), (h, w)) for im in inputs])
        if oversample:
            crops = io.oversample(images, self.crop_dims)
        else:
            ch, cw = (int(d) for d in self.crop_dims)
            top, left = int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)
            crops = images[:, top:top + ch, left:left + cw, :]
        batch = np.stack([self.transformer.preprocess(in_, crop) for crop in crops])
        scores = self.forward_all(**{in_: batch})[self.outputs[0]]
        if oversample:
            scores = scores.reshape((len(scores) // 10, 10, -1)).mean(axis=1)
        return scores
