"""Caffe's update rules, one small class each: turn a parameter's gradient into its step.

Every rule works in place on float32 arrays: `diff` holds the regularised
gradient on entry and the value to subtract from the weights on exit (Caffe's
ComputeUpdateValue), `history` is the list of state arrays the rule keeps per
parameter (what a .solverstate stores).
"""
import numpy as np

from .errors import NetspecError


class SGD:
    """history = momentum * history + lr * grad; step = history."""
    num_histories = 1

    def __init__(self, param):
        self.param = param

    def update(self, diff, history, rate, it):
        # In place, no temporaries: CaffeNet's 61M weights would otherwise allocate 244 MB per step.
        h = history[0]
        diff *= rate
        h *= self.param.momentum
        h += diff
        diff[...] = h


class Nesterov(SGD):
    """step = (1 + momentum) * history_new - momentum * history_old."""

    def update(self, diff, history, rate, it):
        h = history[0]
        momentum = self.param.momentum
        old = h.copy()
        h *= momentum
        h += rate * diff
        np.multiply(h, 1 + momentum, out=diff)
        diff -= momentum * old


class AdaGrad(SGD):
    """history += grad^2; step = lr * grad / (sqrt(history) + delta)."""

    def update(self, diff, history, rate, it):
        h = history[0]
        h += diff * diff
        diff *= rate / (np.sqrt(h) + self.param.delta)


class RMSProp(SGD):
    """history = d * history + (1 - d) grad^2; step = lr * grad / (sqrt(history) + delta)."""

    def update(self, diff, history, rate, it):
        h = history[0]
        d = self.param.rms_decay
        h *= d
        h += (1 - d) * diff * diff
        diff *= rate / (np.sqrt(h) + self.param.delta)


class AdaDelta:
    """Two histories: squared gradients and squared updates, both decayed by momentum."""
    num_histories = 2

    def __init__(self, param):
        self.param = param

    def update(self, diff, history, rate, it):
        grad_sq, update_sq = history
        m, delta = self.param.momentum, self.param.delta
        grad_sq *= m
        grad_sq += (1 - m) * diff * diff
        diff *= np.sqrt(update_sq + delta) / np.sqrt(grad_sq + delta)
        update_sq *= m
        update_sq += (1 - m) * diff * diff
        diff *= rate


class Adam:
    """Moments m, v with momentum / momentum2; bias correction sqrt(1-b2^t) / (1-b1^t)."""
    num_histories = 2

    def __init__(self, param):
        self.param = param

    def update(self, diff, history, rate, it):
        m, v = history
        b1, b2 = self.param.momentum, self.param.momentum2
        t = it + 1
        m *= b1
        m += (1 - b1) * diff
        v *= b2
        v += (1 - b2) * diff * diff
        correction = np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        np.divide(m, np.sqrt(v) + self.param.delta, out=diff)
        diff *= rate * correction


RULES = {"SGD": SGD, "Nesterov": Nesterov, "AdaGrad": AdaGrad, "RMSProp": RMSProp,
         "AdaDelta": AdaDelta, "Adam": Adam}


def make_rule(param, where="solver"):
    kind = param.type
    if kind not in RULES:
        raise NetspecError(f"{where}: unknown solver type '{kind}' (one of: {', '.join(RULES)})")
    if kind == "AdaGrad" and param.momentum != 0:
        raise NetspecError(f"{where}: AdaGrad takes no momentum (Caffe requires momentum 0), got {param.momentum:g}")
    return RULES[kind](param)
