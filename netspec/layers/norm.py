"""Normalisation layers: BatchNorm, Scale, Bias, LRN, MVN (Caffe's semantics), Normalize (SSD's).

Parameters are read from self.blobs[j].data at call time (the net may swap in
shared blobs); parameter gradients are added, bottom gradients overwritten.
Layers that may run in place keep what backward needs from forward.
"""
import numpy as np

from ..fillers import fill
from ..proto import caffe_pb2
from ..threads import FLAT_CHUNK, parallel_flat, parallel_for, spans
from . import native
from .base import Layer, nbytes, prod, register, training

# LRN's work is cut into at most this many chunks for the threads (threads.py): samples, then rows.
SAMPLE_CHUNKS = 8
# LRN's forward works on bands of rows of about this many elements (256 KB of float32), in cache.
BAND_ELEMENTS = 1 << 16


def _keep(cache, array):
    """Copy `array` into a reusable buffer (allocates only when the shape changes)."""
    if cache is None or cache.shape != array.shape or cache.dtype != array.dtype:
        cache = np.empty_like(array)
    parallel_flat(np.copyto, cache, array)
    return cache


@register("BatchNorm")
class BatchNorm(Layer):
    """Per-channel standardisation with batch statistics (TRAIN) or stored running ones.

    Blobs are Caffe's: running mean SUM, running variance SUM, and the scale
    factor they are divided by. Each TRAIN forward does factor = f*factor + 1,
    mean = f*mean + batch_mean, var = f*var + m/(m-1) * batch_var.
    No learnable affine (that is Scale); the three blobs get lr_mult 0.
    """
    num_bottoms = 1
    num_tops = 1

    def work_bytes(self, bottom, top):
        return nbytes(bottom[0]) if training(self) else 0      # the normalised input, kept for backward

    def setup(self, bottom, top):
        p = self.layer_param.batch_norm_param
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else \
            self.phase == caffe_pb2.TEST
        self.fraction, self.eps = p.moving_average_fraction, p.eps
        self.channels = 1 if bottom[0].data.ndim == 1 else bottom[0].shape[1]
        for shape in ((self.channels,), (self.channels,), (1,)):
            self.add_param_blob(shape)
        # Caffe masks the statistics from the solver: missing specs get lr_mult 0, given ones must be 0.
        specs = self.layer_param.param
        for i in range(len(self.blobs)):
            if i == len(specs):
                specs.add(lr_mult=0, decay_mult=0)
            elif specs[i].lr_mult != 0:
                raise self.error(f"param {i} has lr_mult {specs[i].lr_mult:g}: batch norm statistics "
                                 f"are not learnable (use lr_mult 0 or omit param)")
        self._x_norm = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) > 1 and shape[1] != self.channels:
            raise self.error(f"bottom {self.bottom_name(0)} shape {shape} has {shape[1]} channels, "
                             f"set up for {self.channels}")
        top[0].reshape(shape)
        self.view = (shape[0], self.channels, -1)
        self.fused = native.usable(bottom[0].data.dtype)

    def _stored_mean_var(self):
        """The stored statistics, scaled by 1 / the stored factor (Caffe's moving-average sums)."""
        factor = self.blobs[2].data[0]
        factor = 0 if factor == 0 else 1 / factor
        return factor * self.blobs[0].data, factor * self.blobs[1].data

    def statistics(self, x):
        """(mean, std) per channel for a forward over x (N, C, inner), in x's dtype: the stored
        statistics, or the batch's, which also go into the stored sums. Keeps std for backward
        (fusion.py runs BatchNorm through these too)."""
        if self.use_global_stats:
            mean, var = self._stored_mean_var()
        else:
            mean, var = self._batch_statistics(x)
            f, m = self.fraction, x.size // self.channels
            self.blobs[2].data *= f
            self.blobs[2].data += 1
            self.blobs[0].data[...] = f * self.blobs[0].data + mean
            self.blobs[1].data[...] = f * self.blobs[1].data + (m / (m - 1) if m > 1 else 1) * var
        self.std = np.sqrt(var + self.eps).astype(x.dtype)[:, None]
        return mean.astype(x.dtype), self.std.reshape(-1)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        mean, _ = self.statistics(x)
        y = top[0].data.reshape(self.view)
        if self.fused:
            native.channel_affine(x, y, mean, self.std, standardise=True)
        else:
            np.subtract(x, mean[:, None], out=y)
            y /= self.std
        # Kept because a later in-place layer (Scale, ReLU) may overwrite the top; the
        # global-statistics backward does not read it.
        if self.runs_backward and not self.use_global_stats:
            self._x_norm = _keep(self._x_norm, y)

    def _batch_statistics(self, x):
        """Per-channel mean and (biased) variance of x (N, C, inner), by blocks of channels on the
        threads: each channel's sums are its own, and the blocks are cut by the shape alone."""
        channels = x.shape[1]
        mean, var = np.empty(channels, x.dtype), np.empty(channels, x.dtype)
        blocks = spans(channels, min(SAMPLE_CHUNKS, x.size // FLAT_CHUNK))

        def chunk(k):
            c = slice(*blocks[k])
            xs = x[:, c]
            mean[c] = xs.mean(axis=(0, 2))
            centred = xs - mean[c, None]
            var[c] = np.mean(centred * centred, axis=(0, 2))

        parallel_for(len(blocks), chunk)
        return mean, var

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.view)
        dx = bottom[0].diff.reshape(self.view)     # may be dy itself (in place)
        if self.use_global_stats:
            np.divide(dy, self.std, out=dx)
        elif self.fused:
            y = self._x_norm
            count = y.shape[0] * y.shape[2]
            means = (native.channel_sums(dy, y) / count).astype(dy.dtype)
            native.batch_norm_grad(dy, y, means[0], means[1], self.std, dx)
        else:
            y = self._x_norm
            grad = dy - dy.mean(axis=(0, 2))[:, None] - y * np.mean(dy * y, axis=(0, 2))[:, None]
            np.divide(grad, self.std, out=dx)


class _Broadcast(Layer):
    """Shared shape logic of Scale and Bias: a blob of shape bottom[0].shape[axis:axis+k], taken
    from bottom[1] or learned, broadcast over the outer and inner dims."""
    num_bottoms = (1, 2)
    num_tops = 1

    def param_shape(self, bottom, p):
        shape = bottom[0].shape
        axis = self.canonical_axis(p.axis, shape)
        if p.num_axes < -1 or (p.num_axes >= 0 and axis + p.num_axes > len(shape)):
            raise self.error(f"num_axes {p.num_axes} from axis {axis} does not fit bottom shape {shape}")
        return shape[axis:] if p.num_axes == -1 else shape[axis:axis + p.num_axes]

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        other = bottom[1].shape if len(bottom) > 1 else self.blobs[0].shape
        axis = 0 if not other else self.canonical_axis(self.params.axis, shape)
        if shape[axis:axis + len(other)] != other:
            what = f"bottom {self.bottom_name(1)}" if len(bottom) > 1 else "the parameter"
            raise self.error(f"{what} has shape {other}, which does not match bottom {self.bottom_name(0)} "
                             f"shape {shape} from axis {axis}")
        self.view = (prod(shape[:axis]), prod(other), prod(shape[axis + len(other):]))
        top[0].reshape(shape)
        self.fused = native.usable(bottom[0].data.dtype)

    def operand(self, bottom):
        blob = bottom[1] if len(bottom) > 1 else self.blobs[0]
        return blob.data.reshape(1, -1, 1)

    def reduce(self, a):
        """Sum over the outer and inner dims: the gradient of a broadcast blob."""
        return a.sum(axis=(0, 2))


@register("Bias")
class Bias(_Broadcast):
    """top = bottom[0] + b, b from bottom[1] or a learned blob (filler default constant 0)."""

    def setup(self, bottom, top):
        self.params = p = self.layer_param.bias_param
        if len(bottom) == 1:
            fill(p.filler, self.add_param_blob(self.param_shape(bottom, p)).data)

    def forward(self, bottom, top):
        np.add(bottom[0].data.reshape(self.view), self.operand(bottom), out=top[0].data.reshape(self.view))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.view)
        if len(bottom) == 1:
            self.blobs[0].diff += self.reduce(dy).reshape(self.blobs[0].shape)
        elif propagate_down[1]:
            bottom[1].diff[...] = self.reduce(dy).reshape(bottom[1].shape)
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = top[0].diff


@register("Scale")
class Scale(_Broadcast):
    """top = bottom[0] * s (+ bias), s from bottom[1] or a learned blob (filler default constant 1)."""

    def work_bytes(self, bottom, top):
        return nbytes(bottom[0]) if top[0] is bottom[0] and training(self) else 0   # in place: the input

    def setup(self, bottom, top):
        self.params = p = self.layer_param.scale_param
        shape = self.param_shape(bottom, p) if len(bottom) == 1 else bottom[1].shape
        if len(bottom) == 1:
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1)
            fill(filler, self.add_param_blob(shape).data)
        self.bias_index = len(self.blobs) if p.bias_term else None
        if p.bias_term:
            fill(p.bias_filler, self.add_param_blob(shape).data)
        self._x = None

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        if bottom[0] is top[0] and self.runs_backward:
            self._x = _keep(self._x, x)  # in place: the input is about to be overwritten
        y = top[0].data.reshape(self.view)
        if self.bias_index is not None and self.fused:
            native.channel_affine(x, y, self.operand(bottom), self.blobs[self.bias_index].data, standardise=False)
            return
        np.multiply(x, self.operand(bottom), out=y)
        if self.bias_index is not None:
            y += self.blobs[self.bias_index].data.reshape(1, -1, 1)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.view)
        x = self._x if bottom[0] is top[0] else bottom[0].data.reshape(self.view)
        if self.fused:      # both sums in one compiled pass
            sum_dy, sum_dyx = native.channel_sums(dy, x).astype(dy.dtype)
        else:
            sum_dy = self.reduce(dy) if self.bias_index is not None else None
            sum_dyx = self.reduce(dy * x) if len(bottom) == 1 or propagate_down[1] else None
        if self.bias_index is not None:
            bias = self.blobs[self.bias_index]
            bias.diff += sum_dy.reshape(bias.shape)
        if len(bottom) == 1:
            self.blobs[0].diff += sum_dyx.reshape(self.blobs[0].shape)
        elif propagate_down[1]:
            bottom[1].diff[...] = sum_dyx.reshape(bottom[1].shape)
        if propagate_down[0]:
            dx, a = bottom[0].diff.reshape(self.view), self.operand(bottom)
            samples = spans(dx.shape[0], min(SAMPLE_CHUNKS, dx.size // FLAT_CHUNK))     # elementwise: by samples
            parallel_for(len(samples), lambda k: np.multiply(dy[slice(*samples[k])], a,
                                                             out=dx[slice(*samples[k])]))


def _window_sum(a, axis, size):
    """Sum over a centred window of `size` along `axis`, zero padded, via cumulative sums.

    out[i] = csum[min(i + half, n - 1)] - csum[i - half - 1] (nothing to subtract where that is
    before the start), written with slices: only the cumulative sums and the result exist at
    once. (Padding the sums with a zero and taking both ends by index held four arrays of the
    input's size; for GoogLeNet's conv2/norm2 at batch 10, tens of MB per thread.)
    """
    n, half = a.shape[axis], (size - 1) // 2

    def part(x, start, stop):
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, stop)
        return x[tuple(index)]

    csum = np.cumsum(a, axis=axis)
    out = np.empty_like(csum)
    full = max(n - half, 0)                       # windows that do not reach past the end
    part(out, 0, full)[...] = part(csum, half, n)
    part(out, full, n)[...] = part(csum, n - 1, n)
    if half + 1 < n:
        part(out, half + 1, n)[...] -= part(csum, 0, n - half - 1)
    return out


_LRN = caffe_pb2.LRNParameter


@register("LRN")
class LRN(Layer):
    """Local response normalisation, y = x * scale^-beta.

    ACROSS_CHANNELS: scale = k + alpha/n * (sum of x^2 over n neighbouring channels).
    WITHIN_CHANNEL: Caffe builds it from AVE pooling (n x n, pad (n-1)/2, which always
    divides by n^2) and a Power layer: scale = 1 + alpha/n^2 * (n x n sum of x^2); k unused.
    """
    num_bottoms = 1
    num_tops = 1

    def work_bytes(self, bottom, top):
        # The scale kept for backward, and the squares it is made of (a sample's worth without backward:
        # counted as the batch's, as before, which only over-estimates).
        return 2 * nbytes(bottom[0])

    def setup(self, bottom, top):
        p = self.layer_param.lrn_param
        if p.local_size % 2 == 0:
            raise self.error(f"local_size must be odd, got {p.local_size}")
        self.size, self.alpha, self.beta = p.local_size, p.alpha, p.beta
        self.within = p.norm_region == _LRN.WITHIN_CHANNEL
        self.k, self.coeff = (1.0, p.alpha / p.local_size ** 2) if self.within else (p.k, p.alpha / p.local_size)

    def reshape(self, bottom, top):
        if bottom[0].data.ndim != 4:
            raise self.error(f"bottom {self.bottom_name(0)} must be 4-D (N, C, H, W), got shape {bottom[0].shape}")
        top[0].reshape(bottom[0].shape)

    def window(self, a):
        if self.within:
            return _window_sum(_window_sum(a, 2, self.size), 3, self.size)
        return _window_sum(a, 1, self.size)

    def _blocks(self, x):
        """[(samples, rows)] slices for the threads (by shape alone). Each sample normalises alone,
        and across channels each position too, so below SAMPLE_CHUNKS samples (GoogLeNet at batch
        1) the rows are cut as well; the cumulative sums run along the channels, the same bytes."""
        n, h = x.shape[0], x.shape[2]
        samples = spans(n, min(SAMPLE_CHUNKS, x.size // (1 << 15)))
        rows = [(0, h)]
        if not self.within and len(samples) < SAMPLE_CHUNKS:
            rows = spans(h, min(SAMPLE_CHUNKS // len(samples), x.size // len(samples) // (1 << 15)))
        return [(slice(a, b), slice(r0, r1)) for a, b in samples for r0, r1 in rows]

    def _bands(self, x, rows):
        """Rows `rows` of one sample in bands of about BAND_ELEMENTS (across channels; within a
        channel the window spans rows, so the whole slice)."""
        if self.within:
            return [rows]
        count = rows.stop - rows.start
        bands = spans(count, count * x.shape[1] * x.shape[3] // BAND_ELEMENTS)
        return [slice(rows.start + a, rows.start + b) for a, b in bands]

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        # Backward reads the scale; without one nothing is kept, and the temporaries are a chunk's.
        keep = self.runs_backward
        self.scale = scale = np.empty_like(x) if keep else None     # not scratch: a caller may hold on to it
        blocks = self._blocks(x)
        if not self.within and native.usable(x.dtype) and native.has_lrn():
            n, c, h, w = x.shape

            def compiled(k):
                samples, rows = blocks[k]
                native.kernels.lrn_across(x, y, scale, n, c, h * w, samples.start, samples.stop, rows.start * w,
                                          rows.stop * w, self.size, self.coeff, self.k, self.beta)

            parallel_for(len(blocks), compiled)
            return

        def chunk(k):
            # One sample of the block at a time, and across channels a band of its rows at a time:
            # each sample normalises alone, and each position across channels too, so the bytes
            # are the same, and the temporaries (the squares, their window sums, the power) are a
            # band's, in cache, rather than a sample's (GoogLeNet's conv2/norm2 at batch 10: 9.2 MB
            # a thread, 18 MB of the net's peak at 2 threads).
            samples, rows = blocks[k]
            for i in range(samples.start, samples.stop):
                for band in self._bands(x, rows):
                    at = (slice(i, i + 1), slice(None), band)
                    xs = x[at]
                    s = self.window(xs * xs)
                    s *= self.coeff
                    s += self.k
                    if keep:
                        scale[at] = s
                    s **= -self.beta
                    np.multiply(xs, s, out=y[at])

        parallel_for(len(blocks), chunk)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, y, x, dx = top[0].diff, top[0].data, bottom[0].data, bottom[0].diff
        blocks = self._blocks(x)

        def chunk(k):
            samples, rows = blocks[k]
            at = (samples, slice(None), rows)
            scale = self.scale[at]
            # d y_j / d x_i = [i == j] scale_j^-beta - 2 alpha' beta x_i y_j / scale_j over windows holding i.
            back = self.window(dy[at] * y[at] / scale)
            back *= x[at] * (-2 * self.coeff * self.beta)
            back += dy[at] * scale ** -self.beta
            dx[at] = back

        parallel_for(len(blocks), chunk)


@register("MVN")
class MVN(Layer):
    """Mean (and variance) normalisation per item and channel, or per item across channels.

    Like Caffe, eps is added to the standard deviation: y = (x - mean) / (std + eps).
    """
    num_bottoms = 1
    num_tops = 1

    def work_bytes(self, bottom, top):
        return nbytes(bottom[0]) if training(self) else 0      # the normalised output, kept for backward

    def setup(self, bottom, top):
        self._y = None

    def reshape(self, bottom, top):
        b = bottom[0]
        num = b.num if self.layer_param.mvn_param.across_channels else b.num * b.channels
        self.view = (num, -1)
        top[0].reshape(b.shape)

    def forward(self, bottom, top):
        p = self.layer_param.mvn_param
        x = bottom[0].data.reshape(self.view)
        y = top[0].data.reshape(self.view)
        centred = x - x.mean(axis=1, keepdims=True)
        if p.normalize_variance:
            self.std = np.sqrt(np.mean(centred * centred, axis=1, keepdims=True))
            np.divide(centred, self.std + p.eps, out=y)
            self._y = _keep(self._y, y)
        else:
            y[...] = centred

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        p = self.layer_param.mvn_param
        dy = top[0].diff.reshape(self.view)
        if p.normalize_variance:
            # Exact gradient of (x - mean) / (std + eps); Caffe's formula drops a (std + eps) / std
            # factor on the variance term, which only matters when eps is not tiny next to std.
            y, std = self._y, self.std
            inv_std = np.divide(1, std, out=np.zeros_like(std), where=std > 0)
            dz = dy / (std + p.eps) - y * (np.mean(dy * y, axis=1, keepdims=True) * inv_std)
        else:
            dz = dy
        bottom[0].diff.reshape(self.view)[...] = dz - dz.mean(axis=1, keepdims=True)


@register("Normalize")
class Normalize(Layer):
    """SSD's L2 normalisation times a learnt scale: y = s * x / sqrt(sum x^2 + eps).

    The sum runs over C*H*W per item (across_spatial) or over C per pixel; s is one
    scalar (channel_shared: a 0-dimensional blob, as the fork stores it) or one per channel.
    Backward, with xhat = x / n and g = s * dy: dx = (g - xhat * sum(g * xhat)) / n.
    """
    num_bottoms = 1
    num_tops = 1

    def work_bytes(self, bottom, top):
        return nbytes(bottom[0])              # x / norm, kept for backward

    def setup(self, bottom, top):
        p = self.layer_param.norm_param
        if len(bottom[0].shape) < 2:
            raise self.error(f"bottom {self.bottom_name(0)} of shape {bottom[0].shape} has no channel axis")
        self.axes = (1, 2) if p.across_spatial else (1,)
        self.eps = p.eps
        self.shared = p.channel_shared
        filler = p.scale_filler if p.HasField("scale_filler") else caffe_pb2.FillerParameter(type="constant", value=1)
        fill(filler, self.add_param_blob(() if p.channel_shared else (bottom[0].shape[1],)).data)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.view = (shape[0], shape[1], prod(shape[2:]))
        top[0].reshape(shape)

    def scale(self):
        return self.blobs[0].data if self.shared else self.blobs[0].data.reshape(1, -1, 1)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        self.norm = np.sqrt(np.sum(x * x, axis=self.axes, keepdims=True) + self.eps)
        self.xhat = x / self.norm
        np.multiply(self.xhat, self.scale(), out=top[0].data.reshape(self.view))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.view)
        sums = dy * self.xhat
        self.blobs[0].diff += sums.sum() if self.shared else sums.sum(axis=(0, 2))
        if propagate_down[0]:
            g = dy * self.scale()
            dot = np.sum(g * self.xhat, axis=self.axes, keepdims=True)
            np.divide(g - self.xhat * dot, self.norm, out=bottom[0].diff.reshape(self.view))
