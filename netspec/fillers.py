"""Weight initialisation: Caffe's fillers, by FillerParameter.type."""
import numpy as np

from .errors import NetspecError
from .proto import caffe_pb2
from .rng import get_rng

_VN = caffe_pb2.FillerParameter


def _fans(shape):
    # Caffe: fan_in = count / shape[0], fan_out = count / shape[1].
    count = int(np.prod(shape))
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _variance_n(param, shape):
    fan_in, fan_out = _fans(shape)
    if param.variance_norm == _VN.FAN_OUT:
        return fan_out
    if param.variance_norm == _VN.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def _constant(p, shape, rng):
    # One value, broadcast by fill: an np.full array would be a float64 copy of the blob
    # (for CaffeNet's fc6 weights, whose deploy file names no filler, 302 MB at once).
    return np.float64(p.value)


def _uniform(p, shape, rng):
    return rng.uniform(p.min, p.max, shape)


def _gaussian(p, shape, rng):
    x = rng.normal(p.mean, p.std, shape)
    if p.sparse >= 0:
        # Each weight survives with probability sparse / num_outputs (Caffe's rule).
        if len(shape) < 1:
            raise NetspecError("sparse gaussian filler needs a blob with at least one axis")
        keep = p.sparse / float(shape[0])
        x *= rng.random(shape) < keep
    return x


def _positive_unitball(p, shape, rng):
    x = rng.random(shape)
    rows = x.reshape(shape[0], -1) if shape else x.reshape(1, -1)
    rows /= rows.sum(axis=1, keepdims=True)
    return x


def _xavier(p, shape, rng):
    scale = np.sqrt(3.0 / _variance_n(p, shape))
    return rng.uniform(-scale, scale, shape)


def _msra(p, shape, rng):
    return rng.normal(0.0, np.sqrt(2.0 / _variance_n(p, shape)), shape)


def _bilinear(p, shape, rng):
    # Upsampling kernel for Deconvolution; needs square kernels (Caffe's check).
    if len(shape) != 4 or shape[2] != shape[3]:
        raise NetspecError(f"bilinear filler needs a 4-D blob with square kernels, got shape {tuple(shape)}")
    k = shape[3]
    f = np.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - np.abs(np.arange(k) / f - c)
    return np.broadcast_to(np.outer(ramp, ramp), shape).copy()


FILLERS = {
    "constant": _constant, "uniform": _uniform, "gaussian": _gaussian,
    "positive_unitball": _positive_unitball, "xavier": _xavier, "msra": _msra,
    "bilinear": _bilinear,
}


def fill(param, array):
    """Fill `array` (float32, in place) as the FillerParameter `param` says."""
    kind = param.type
    if kind not in FILLERS:
        raise NetspecError(f"unknown filler type '{kind}' (known: {', '.join(sorted(FILLERS))})")
    array[...] = FILLERS[kind](param, tuple(array.shape), get_rng())
    return array
