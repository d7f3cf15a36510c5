"""The forks' `BN` layers: two different layers under one type name.

PSPNet's (hszhao/PSPNet, `bn_param`): blobs slope, bias, running mean, running variance,
each (1, C, 1, 1). At TEST or with `frozen`: y = slope * (x - mean) / sqrt(var + eps) + bias.
In TRAIN otherwise the batch's mean and (biased) variance, and each running statistic
becomes (1 - momentum) * batch + momentum * running. The statistics get lr_mult 0 (all four
blobs when frozen).

SegNet's (alexgkendall/caffe-segnet; its files spell `bn_param`, netspec's schema holds it as
`segnet_bn_param`): blobs scale, shift, each (1, C, 1, 1). LEARN: y = scale * x_norm + shift
over the batch's statistics (variance E[x^2] - E[x]^2, eps 1e-9); INFERENCE: y = scale * x +
shift (SegNet folds the statistics into scale and shift offline).

Statistics are per channel over (N, H, W). Both run in place; what backward reads is kept.
"""
import numpy as np

from .. import fillers
from ..proto import caffe_pb2
from .base import Layer, register


def _per_channel(v):
    return v.reshape(1, -1, 1)


class _ForkBN(Layer):
    num_bottoms = 1
    num_tops = 1

    def add_channel_blob(self, channels, filler=None, value=0.0):
        blob = self.add_param_blob((1, channels, 1, 1))
        if filler is not None:
            fillers.fill(filler, blob.data)
        else:
            blob.data[...] = value
        return blob

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2 or shape[1] != self.channels:
            raise self.error(f"bottom {self.bottom_name(0)} shape {shape} must have {self.channels} channels "
                             f"on axis 1 (the layer's blobs are (1, {self.channels}, 1, 1))")
        if top[0] is not bottom[0]:
            top[0].reshape(shape)
        self.view = (shape[0], self.channels, -1)

    def normalise(self, x, mean, inv_std, gain, offset, y):
        """y = gain * (x - mean) * inv_std + offset, per channel; returns x_norm when backward needs it."""
        x_norm = (x - _per_channel(mean)) * _per_channel(inv_std)
        np.multiply(x_norm, _per_channel(gain), out=y)
        y += _per_channel(offset)
        return x_norm if self.runs_backward else None

    def batch_norm_backward(self, dy, x_norm, gain, inv_std, dx, gain_diff, offset_diff):
        """Backward through batch statistics: dx = gain * inv_std * (dy - mean(dy) - x_norm *
        mean(dy * x_norm)); gain += sum(dy * x_norm), offset += sum(dy) (per channel)."""
        sum_dy = dy.sum(axis=(0, 2))
        sum_dy_xn = (dy * x_norm).sum(axis=(0, 2))
        gain_diff += sum_dy_xn.reshape(gain_diff.shape)
        offset_diff += sum_dy.reshape(offset_diff.shape)
        if dx is not None:
            m = dy.shape[0] * dy.shape[2]
            g = _per_channel(gain * inv_std)
            dx[...] = g * (dy - _per_channel(sum_dy / m) - x_norm * _per_channel(sum_dy_xn / m))


class PSPNetBN(_ForkBN):
    def setup(self, bottom, top):
        p = self.layer_param.bn_param
        self.channels = bottom[0].shape[1]
        self.frozen, self.momentum, self.eps = p.frozen, p.momentum, p.eps
        self.use_running = self.frozen or self.phase == caffe_pb2.TEST
        self.add_channel_blob(self.channels, p.slope_filler)
        self.add_channel_blob(self.channels, p.bias_filler)
        self.add_channel_blob(self.channels, value=0.0)
        self.add_channel_blob(self.channels, value=1.0 if self.frozen else 0.0)
        specs = self.layer_param.param
        while len(specs) < 4:
            specs.add()
        for i in (0, 1, 2, 3) if self.frozen else (2, 3):
            specs[i].lr_mult, specs[i].decay_mult = 0, 0

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        slope, bias, mean_blob, var_blob = (b.data.reshape(-1) for b in self.blobs)
        if self.use_running:
            mean, var = mean_blob, var_blob
        else:
            mean = x.mean(axis=(0, 2))
            var = np.square(x - _per_channel(mean)).mean(axis=(0, 2))
            mean_blob[...] = (1 - self.momentum) * mean + self.momentum * mean_blob
            var_blob[...] = (1 - self.momentum) * var + self.momentum * var_blob
        self.inv_std = (1 / np.sqrt(var + self.eps)).astype(x.dtype)
        self.x_norm = self.normalise(x, mean.astype(x.dtype), self.inv_std, slope, bias,
                                     top[0].data.reshape(self.view))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.view)
        dx = bottom[0].diff.reshape(self.view) if propagate_down[0] else None
        slope = self.blobs[0].data.reshape(-1)
        slope_diff, bias_diff = self.blobs[0].diff, self.blobs[1].diff
        if not self.use_running:
            self.batch_norm_backward(dy, self.x_norm, slope, self.inv_std, dx, slope_diff, bias_diff)
            return
        slope_diff += (dy * self.x_norm).sum(axis=(0, 2)).reshape(slope_diff.shape)
        bias_diff += dy.sum(axis=(0, 2)).reshape(bias_diff.shape)
        if dx is not None:
            np.multiply(dy, _per_channel(slope * self.inv_std), out=dx)


class SegNetBN(_ForkBN):
    VAR_EPS = 1e-9          # the fork's fixed var_eps_

    def setup(self, bottom, top):
        p = self.layer_param.segnet_bn_param
        self.channels = bottom[0].shape[1]
        self.learn = p.bn_mode == caffe_pb2.SegNetBNParameter.LEARN
        self.add_channel_blob(self.channels, p.scale_filler)
        self.add_channel_blob(self.channels, p.shift_filler)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        scale, shift = (b.data.reshape(-1) for b in self.blobs)
        y = top[0].data.reshape(self.view)
        if self.learn:
            mean = x.mean(axis=(0, 2))
            var = np.square(x).mean(axis=(0, 2)) - np.square(mean)
            self.inv_std = (1 / np.sqrt(var + self.VAR_EPS)).astype(x.dtype)
            self.x_norm = self.normalise(x, mean.astype(x.dtype), self.inv_std, scale, shift, y)
            return
        # y = scale * x + shift; backward's scale gradient needs x, which in place y overwrites.
        self.x_kept = x.copy() if self.runs_backward else None
        np.multiply(x, _per_channel(scale), out=y)
        y += _per_channel(shift)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.view)
        dx = bottom[0].diff.reshape(self.view) if propagate_down[0] else None
        scale = self.blobs[0].data.reshape(-1)
        scale_diff, shift_diff = self.blobs[0].diff, self.blobs[1].diff
        if self.learn:
            self.batch_norm_backward(dy, self.x_norm, scale, self.inv_std, dx, scale_diff, shift_diff)
            return
        scale_diff += (dy * self.x_kept).sum(axis=(0, 2)).reshape(scale_diff.shape)
        shift_diff += dy.sum(axis=(0, 2)).reshape(shift_diff.shape)
        if dx is not None:
            np.multiply(dy, _per_channel(scale), out=dx)


@register("BN")
class BN(Layer):
    """Chooses the fork's layer by its parameters: segnet_bn_param (SegNet's files, read in the
    SegNet dialect) or else bn_param (PSPNet's)."""

    def __new__(cls, layer_param, phase=None):
        chosen = SegNetBN if layer_param.HasField("segnet_bn_param") else PSPNetBN
        return chosen(layer_param, phase)
