"""SmoothL1Loss (Fast/Faster R-CNN, rbgirshick/caffe-fast-rcnn), bounding-box regression loss.

    d = w_in * (pred - target)
    f(d) = 0.5 * sigma^2 * d^2   if |d| < 1 / sigma^2
           |d| - 0.5 / sigma^2   otherwise
    loss = sum |w_out * f(d)| / N          (N = pred's first axis; Caffe sums with asum)

Bottoms: pred, target, and optionally the inside and outside weights (all four or two).
Gradients go to pred and target (with opposite signs), not to the weights.
"""
import numpy as np

from .base import register
from .loss import LossLayer


@register("SmoothL1Loss")
class SmoothL1Loss(LossLayer):
    num_bottoms = (2, 4)

    def setup(self, bottom, top):
        sigma = self.layer_param.smooth_l1_loss_param.sigma
        self.sigma2 = sigma * sigma
        if self.sigma2 == 0:
            raise self.error("smooth_l1_loss_param.sigma must be nonzero")
        if len(bottom) == 3:
            raise self.error("takes 2 bottoms (pred, target) or 4 (pred, target, inside weights, "
                             "outside weights), got 3")

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        shape = bottom[0].shape
        for i in range(1, len(bottom)):
            if bottom[i].shape[1:] != shape[1:] or bottom[i].count != bottom[0].count:
                raise self.error(f"bottom {self.bottom_name(i)} has shape {bottom[i].shape}, "
                                 f"{self.bottom_name(0)} has shape {shape} (they must match)")

    def forward(self, bottom, top):
        d = bottom[0].data - bottom[1].data
        if len(bottom) == 4:
            d *= bottom[2].data
        self._d = d
        small = np.abs(d) < 1 / self.sigma2
        errors = np.where(small, 0.5 * self.sigma2 * d * d, np.abs(d) - 0.5 / self.sigma2)
        if len(bottom) == 4:
            errors *= bottom[3].data
        top[0].data[...] = np.abs(errors).sum() / bottom[0].shape[0]

    def backward(self, top, propagate_down, bottom):
        d = self._d
        grad = np.where(np.abs(d) < 1 / self.sigma2, self.sigma2 * d, np.sign(d))
        if len(bottom) == 4:
            grad *= bottom[2].data
            grad *= bottom[3].data
        scale = self.loss_weight(top) / bottom[0].shape[0]
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                np.multiply(grad, sign * scale, out=bottom[i].diff)
        for i in range(2, len(bottom)):
            if propagate_down[i]:       # the weights get no gradient (Caffe writes none)
                bottom[i].diff[...] = 0
