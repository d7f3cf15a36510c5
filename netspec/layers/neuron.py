"""Elementwise activations ("neuron" layers): one bottom, one top of the same shape, in place allowed.

Each layer defines `compute(x, out)` and `gradient(x, y, dy, dx)` side by side. When the
layer runs in place (top is bottom) the input is overwritten by the output, so a layer whose
derivative needs the input sets `keeps_input` and the base keeps a copy during forward.
`compute` must tolerate `out is x` and `gradient` must tolerate `dx is dy`.
"""
import numpy as np

from .. import fillers
from ..proto import caffe_pb2
from ..rng import get_rng
from ..threads import parallel_flat
from .base import Layer, nbytes, register, scratch, training


def sigmoid(x, out=None):
    """1 / (1 + exp(-x)), in the tanh form: no overflow for large |x| (Caffe's CPU formula too)."""
    out = np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


class Neuron(Layer):
    num_bottoms = 1
    num_tops = 1
    keeps_input = False

    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def work_bytes(self, bottom, top):
        # Training in place, a layer whose gradient needs its input keeps a copy of it.
        return nbytes(bottom[0]) if self.keeps_input and top[0] is bottom[0] and training(self) else 0

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.keeps_input and top[0] is bottom[0] and self.runs_backward:
            saved = getattr(self, "_saved_input", None)
            if saved is None or saved.shape != x.shape or saved.dtype != x.dtype:
                saved = self._saved_input = np.empty_like(x)
            np.copyto(saved, x)
        self.compute(x, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self._saved_input if (self.keeps_input and top[0] is bottom[0]) else bottom[0].data
        self.gradient(x, top[0].data, top[0].diff, bottom[0].diff)


@register("ReLU")
class ReLU(Neuron):
    """y = max(x, 0) + negative_slope * min(x, 0)."""

    def setup(self, bottom, top):
        self.slope = self.layer_param.relu_param.negative_slope
        # With slope >= 0 the sign of y is the sign of x, so backward can read the top.
        self.keeps_input = self.slope < 0

    def work_bytes(self, bottom, top):
        mask = nbytes(bottom[0], 1) if training(self) else 0           # backward's sign mask (bool)
        return super().work_bytes(bottom, top) + mask

    def compute(self, x, out):
        parallel_flat(self._compute, x, out)

    def _compute(self, x, out):
        if self.slope == 0:
            np.maximum(x, 0, out=out)
        else:
            out[...] = np.where(x > 0, x, x * self.slope)

    def gradient(self, x, y, dy, dx):
        positive = scratch(self, "positive", x.shape, np.bool_)
        parallel_flat(self._gradient, x if self.keeps_input else y, dy, dx, positive)

    def _gradient(self, sign_of, dy, dx, positive):
        np.greater(sign_of, 0, out=positive)
        if self.slope == 0:
            # Caffe's dy * (x > 0): one multiply by the mask, no temporaries (0 * inf is NaN in both).
            np.multiply(dy, positive, out=dx)
        else:
            dx[...] = np.where(positive, dy, dy * self.slope)


@register("Sigmoid")
class Sigmoid(Neuron):
    def compute(self, x, out):
        sigmoid(x, out)

    def gradient(self, x, y, dy, dx):
        dx[...] = dy * y * (1 - y)


@register("TanH")
class TanH(Neuron):
    def compute(self, x, out):
        np.tanh(x, out=out)

    def gradient(self, x, y, dy, dx):
        dx[...] = dy * (1 - y * y)


@register("Dropout")
class Dropout(Neuron):
    """TRAIN: zero each element with probability p, scale survivors by 1/(1-p). TEST: identity."""

    def setup(self, bottom, top):
        self.ratio = self.layer_param.dropout_param.dropout_ratio
        if not 0 <= self.ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio:g}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self.training = self.phase == caffe_pb2.TRAIN

    def work_bytes(self, bottom, top):
        # TRAIN: the kept mask (the blob's type), made from float32 random draws.
        return nbytes(bottom[0]) + nbytes(bottom[0], 4) if self.training else 0

    def compute(self, x, out):
        if not self.training:
            if out is not x:
                np.copyto(out, x)
            return
        keep = get_rng().random(x.shape, dtype=np.float32) >= self.ratio
        self._mask = keep.astype(x.dtype)
        self._mask *= self.scale
        np.multiply(x, self._mask, out=out)

    def gradient(self, x, y, dy, dx):
        if self.training:
            np.multiply(dy, self._mask, out=dx)
        elif dx is not dy:
            np.copyto(dx, dy)


@register("PReLU")
class PReLU(Neuron):
    """ReLU with a learned negative slope per channel (axis 1), or one shared slope."""
    keeps_input = True

    def setup(self, bottom, top):
        p = self.layer_param.prelu_param
        if len(bottom[0].shape) < 2:
            raise self.error(f"bottom needs at least 2 axes (N, C, ...), got shape {bottom[0].shape}")
        self.channel_shared = p.channel_shared
        # Caffe: a 0-axis blob when shared, (C,) otherwise.
        shape = () if self.channel_shared else (bottom[0].shape[1],)
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
        fillers.fill(filler, self.add_param_blob(shape).data)

    def _slope(self, ndim):
        a = self.blobs[0].data
        return a if self.channel_shared else a.reshape((1, -1) + (1,) * (ndim - 2))

    def compute(self, x, out):
        a = self._slope(x.ndim)
        out[...] = np.where(x > 0, x, x * a)

    def backward(self, top, propagate_down, bottom):
        # The slope gradient is needed even when the bottom needs none.
        x = self._saved_input if top[0] is bottom[0] else bottom[0].data
        dy = top[0].diff
        negative = x <= 0
        contrib = dy * x * negative
        if self.channel_shared:
            self.blobs[0].diff += contrib.sum()
        else:
            self.blobs[0].diff += contrib.sum(axis=(0,) + tuple(range(2, x.ndim)))
        if propagate_down[0]:
            bottom[0].diff[...] = dy * np.where(negative, self._slope(x.ndim), 1.0)


@register("ELU")
class ELU(Neuron):
    """y = x for x > 0, alpha * (exp(x) - 1) otherwise."""

    def setup(self, bottom, top):
        self.alpha = self.layer_param.elu_param.alpha
        self.keeps_input = self.alpha < 0

    def compute(self, x, out):
        out[...] = np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))

    def gradient(self, x, y, dy, dx):
        positive = (x > 0) if self.keeps_input else (y > 0)
        dx[...] = dy * np.where(positive, 1.0, y + self.alpha)


@register("AbsVal")
class AbsVal(Neuron):
    keeps_input = True

    def compute(self, x, out):
        np.abs(x, out=out)

    def gradient(self, x, y, dy, dx):
        dx[...] = dy * np.sign(x)


@register("BNLL")
class BNLL(Neuron):
    """Binomial normal log likelihood: y = log(1 + exp(x)), computed without overflow."""
    keeps_input = True

    def compute(self, x, out):
        np.logaddexp(0, x, out=out)

    def gradient(self, x, y, dy, dx):
        dx[...] = dy * sigmoid(x)


@register("Power")
class Power(Neuron):
    """y = (shift + scale * x) ^ power."""

    def setup(self, bottom, top):
        p = self.layer_param.power_param
        self.power, self.scale, self.shift = p.power, p.scale, p.shift
        self.diff_scale = self.power * self.scale
        # The derivative is constant when power is 1 or the whole slope is 0.
        self.keeps_input = not (self.diff_scale == 0 or self.power == 1)

    def compute(self, x, out):
        if self.power == 0:
            out[...] = 1
            return
        base = x * self.scale + self.shift
        if self.power == 1:
            np.copyto(out, base)
        else:
            np.power(base, self.power, out=out)

    def gradient(self, x, y, dy, dx):
        if not self.keeps_input:
            np.multiply(dy, self.diff_scale, out=dx)
            return
        base = x * self.scale + self.shift
        dx[...] = dy * (self.diff_scale * np.power(base, self.power - 1))


def _log_base(layer, base):
    if base != -1 and base <= 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base:g}")
    return 1.0 if base == -1 else float(np.log(base))


@register("Exp")
class Exp(Neuron):
    """y = base ^ (shift + scale * x); base -1 means e."""

    def setup(self, bottom, top):
        p = self.layer_param.exp_param
        self.inner_scale = _log_base(self, p.base) * p.scale
        self.outer_scale = 1.0 if p.shift == 0 else float(np.exp(_log_base(self, p.base) * p.shift))

    def compute(self, x, out):
        np.multiply(x, self.inner_scale, out=out)
        np.exp(out, out=out)
        if self.outer_scale != 1:
            out *= self.outer_scale

    def gradient(self, x, y, dy, dx):
        dx[...] = dy * y * self.inner_scale


@register("Log")
class Log(Neuron):
    """y = log_base(shift + scale * x); base -1 means e."""
    keeps_input = True

    def setup(self, bottom, top):
        p = self.layer_param.log_param
        self.base_scale = 1.0 / _log_base(self, p.base)
        self.scale, self.shift = p.scale, p.shift

    def compute(self, x, out):
        out[...] = np.log(x * self.scale + self.shift) * self.base_scale

    def gradient(self, x, y, dy, dx):
        dx[...] = dy * (self.scale * self.base_scale) / (x * self.scale + self.shift)


@register("Threshold")
class Threshold(Neuron):
    """y = 1 where x > threshold, else 0. No backward (Caffe has none)."""

    def setup(self, bottom, top):
        self.threshold = self.layer_param.threshold_param.threshold

    def compute(self, x, out):
        out[...] = x > self.threshold

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("has no backward pass (a step function); set propagate_down: false "
                             "or keep it off the path to the loss")


@register("Clip")
class Clip(Neuron):
    """y = min(max(x, min), max); the gradient passes where min <= x <= max."""
    keeps_input = True

    def setup(self, bottom, top):
        p = self.layer_param.clip_param
        self.lo, self.hi = p.min, p.max
        if self.lo > self.hi:
            raise self.error(f"clip_param.min ({self.lo:g}) is greater than max ({self.hi:g})")

    def compute(self, x, out):
        np.clip(x, self.lo, self.hi, out=out)

    def gradient(self, x, y, dy, dx):
        dx[...] = dy * ((x >= self.lo) & (x <= self.hi))


@register("Swish")
class Swish(Neuron):
    """y = x * sigmoid(beta * x); the sigmoid is kept for backward."""

    def setup(self, bottom, top):
        self.beta = self.layer_param.swish_param.beta

    def compute(self, x, out):
        self._sig = sigmoid(x * self.beta)
        np.multiply(x, self._sig, out=out)

    def gradient(self, x, y, dy, dx):
        s, by = self._sig, self.beta * y
        dx[...] = dy * (by + s * (1 - by))


@register("ReLU6")
class ReLU6(Neuron):
    """y = min(max(x, 0), 6) (MobileNet's clipped ReLU); the gradient passes where 0 < x < 6,
    which the top shows as 0 < y < 6, so in place needs no copy."""

    def compute(self, x, out):
        np.clip(x, 0, 6, out=out)

    def gradient(self, x, y, dy, dx):
        dx[...] = dy * ((y > 0) & (y < 6))
