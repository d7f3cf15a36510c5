"""A PyTorch module built from a netspec Net's own layer list: the same net, layer for layer.

bench_peers.py times PyTorch's training step on the model this makes. Building it from the
Net's records (rather than from torchvision, whose wheels do not import beside torch 2.13 here)
means the torch model has exactly the layers, shapes, groups, pooling rounding and weights of the
Caffe file, which bench_peers checks by comparing the two forwards before timing anything.

Only the layer types of the benchmarked nets are mapped (Input, Convolution, InnerProduct,
Pooling, LRN, ReLU, Dropout, BatchNorm, Scale, Eltwise, Concat, Split, Softmax); another type
raises UnsupportedLayer with its name. Two choices follow the torchvision models rather than a
literal transcription, since neither changes the arithmetic:
- a Caffe BatchNorm whose top only an in-place Scale reads becomes one affine batch_norm (Scale's
  gamma and beta as its weight and bias), as torchvision's BatchNorm2d is;
- an in-place ReLU stays in place (autograd refuses a step that would need the overwritten value).
"""
import numpy as np


class UnsupportedLayer(Exception):
    pass


def _pair(repeated, single_h, single_w, default):
    """Caffe's kernel/stride/pad fields: the _h/_w pair when set, else the repeated field (1 or 2 values)."""
    if single_h or single_w:
        return int(single_h), int(single_w)
    values = list(repeated) or [default]
    return (int(values[0]), int(values[-1]))


def conv_geometry(p):
    """(kernel, stride, pad, dilation) pairs of a ConvolutionParameter."""
    kernel = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 1)
    stride = _pair(p.stride, p.stride_h, p.stride_w, 1)
    pad = _pair(p.pad, p.pad_h, p.pad_w, 0)
    dilation = _pair(p.dilation, 0, 0, 1)
    return kernel, stride, pad, dilation


def pool_geometry(p, bottom_shape):
    """(kernel, stride, pad) pairs of a PoolingParameter; global pooling covers the whole map."""
    if p.global_pooling:
        return tuple(bottom_shape[2:4]), (1, 1), (0, 0)
    kernel = (p.kernel_h, p.kernel_w) if p.kernel_h or p.kernel_w else (p.kernel_size, p.kernel_size)
    stride = (p.stride_h, p.stride_w) if p.stride_h or p.stride_w else (p.stride, p.stride)
    pad = (p.pad_h, p.pad_w) if p.pad_h or p.pad_w else (p.pad, p.pad)
    return tuple(map(int, kernel)), tuple(map(int, stride)), tuple(map(int, pad))


def _folded_scales(net):
    """{BatchNorm layer name: Scale layer} where a Scale rewrites the BatchNorm's top in place and
    nothing else reads the BatchNorm's output first (so the two are one affine normalisation)."""
    folded = {}
    records = net.records
    for i, record in enumerate(records[:-1]):
        nxt = records[i + 1]
        if (record.layer.type == "BatchNorm" and nxt.layer.type == "Scale" and len(nxt.bottom_names) == 1
                and nxt.bottom_names == record.top_names and nxt.top_names == record.top_names):
            folded[record.name] = nxt
    return folded


def build_module(net, torch=None):
    """A torch.nn.Module computing `net`'s forward from its current weights (copied, float32).

    forward(inputs: {input blob: tensor}) returns {output blob: tensor} for net.outputs. In
    train() mode Dropout drops and BatchNorm uses batch statistics, except where the Caffe file
    pins use_global_stats (then the stored statistics, in both modes, as Caffe does).
    """
    if torch is None:
        import torch
    F = torch.nn.functional

    class CaffeGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []              # (function(module, blobs), tops) in the net's order
            self.inputs = list(net.inputs)
            self.outputs = list(net.outputs)
            self._params = torch.nn.ParameterDict()
            self._stats = {}

        def param(self, layer, j, array):
            key = f"{layer}.{j}".replace("/", "_").replace(".", "_") + f"_{len(self._params)}"
            self._params[key] = torch.nn.Parameter(torch.from_numpy(np.array(array, np.float32)))
            return key

        def stat(self, layer, j, array):
            key = f"stat_{len(self._stats)}"
            self.register_buffer(key, torch.from_numpy(np.array(array, np.float32)))
            self._stats[key] = layer
            return key

        def forward(self, inputs):
            blobs = dict(inputs)
            for fn in self.steps:
                fn(self, blobs)
            return {name: blobs[name] for name in self.outputs}

    m = CaffeGraph()
    folded = _folded_scales(net)
    skip = {scale.name for scale in folded.values()}
    split_tops = set()            # blobs that alias another (a Split's tops): never rewrite them in place
    for record in net.records:
        layer, lp, kind = record.layer, record.layer.layer_param, record.layer.type
        bottoms, tops = record.bottom_names, record.top_names
        if kind == "Input" or record.name in skip:
            continue
        step = _step(m, net, record, kind, lp, bottoms, tops, folded, split_tops, F, torch)
        m.steps.append(step)
        if kind == "Split":
            split_tops.update(tops)
            split_tops.update(bottoms)
    return m


def _step(m, net, record, kind, lp, bottoms, tops, folded, split_tops, F, torch):
    """One layer as a function(module, blobs) that reads its bottoms from `blobs` and stores its tops."""
    layer = record.layer
    b0, t0 = (bottoms[0] if bottoms else None), (tops[0] if tops else None)
    blobs_of = layer.blobs
    if kind == "Convolution":
        p = lp.convolution_param
        _, stride, pad, dilation = conv_geometry(p)
        w = m.param(record.name, 0, blobs_of[0].data)
        b = m.param(record.name, 1, blobs_of[1].data) if p.bias_term and len(blobs_of) > 1 else None
        group = int(p.group)

        def conv(mod, blobs):
            bias = mod._params[b] if b else None
            blobs[t0] = F.conv2d(blobs[b0], mod._params[w], bias, stride, pad, dilation, group)
        return conv
    if kind == "InnerProduct":
        p = lp.inner_product_param
        axis = p.axis if p.HasField("axis") else 1
        data = blobs_of[0].data.T if p.transpose else blobs_of[0].data
        w = m.param(record.name, 0, data)
        b = m.param(record.name, 1, blobs_of[1].data.reshape(-1)) if p.bias_term and len(blobs_of) > 1 else None

        def fc(mod, blobs):
            x = blobs[b0].flatten(axis)
            blobs[t0] = F.linear(x, mod._params[w], mod._params[b] if b else None)
        return fc
    if kind == "Pooling":
        p = lp.pooling_param
        kernel, stride, pad = pool_geometry(p, record.bottoms[0].shape)
        if p.pool == p.MAX:
            return lambda mod, blobs: blobs.__setitem__(t0, F.max_pool2d(blobs[b0], kernel, stride, pad,
                                                                            ceil_mode=True))
        if p.pool == p.AVE:
            # Caffe divides by the window clipped to the padded map: torch's count_include_pad rule.
            return lambda mod, blobs: blobs.__setitem__(t0, F.avg_pool2d(blobs[b0], kernel, stride, pad,
                                                                            ceil_mode=True, count_include_pad=True))
        raise UnsupportedLayer(f"{record.name}: Pooling method {p.pool}")
    if kind == "LRN":
        p = lp.lrn_param
        if p.norm_region != p.ACROSS_CHANNELS:
            raise UnsupportedLayer(f"{record.name}: LRN WITHIN_CHANNEL")
        size, alpha, beta, k = int(p.local_size), float(p.alpha), float(p.beta), float(p.k)
        return lambda mod, blobs: blobs.__setitem__(t0, F.local_response_norm(blobs[b0], size, alpha, beta, k))
    if kind == "ReLU":
        slope = float(lp.relu_param.negative_slope)
        inplace = b0 == t0 and b0 not in split_tops

        def relu(mod, blobs):
            x = blobs[b0]
            blobs[t0] = F.leaky_relu(x, slope, inplace) if slope else F.relu(x, inplace)
        return relu
    if kind == "Dropout":
        ratio = float(lp.dropout_param.dropout_ratio)
        return lambda mod, blobs: blobs.__setitem__(t0, F.dropout(blobs[b0], ratio, mod.training))
    if kind == "BatchNorm":
        return _batch_norm(m, record, lp, b0, t0, folded.get(record.name), F)
    if kind == "Scale":
        p = lp.scale_param
        if len(bottoms) != 1 or (p.HasField("axis") and p.axis != 1):
            raise UnsupportedLayer(f"{record.name}: Scale other than per-channel with learned gamma")
        g = m.param(record.name, 0, blobs_of[0].data.reshape(1, -1, 1, 1))
        b = m.param(record.name, 1, blobs_of[1].data.reshape(1, -1, 1, 1)) if p.bias_term else None

        def scale(mod, blobs):
            y = blobs[b0] * mod._params[g]
            blobs[t0] = y + mod._params[b] if b else y
        return scale
    if kind == "Eltwise":
        p = lp.eltwise_param
        coeffs = list(p.coeff) or [1.0] * len(bottoms)
        op = p.operation

        def eltwise(mod, blobs):
            xs = [blobs[n] for n in bottoms]
            if op == p.SUM:
                out = xs[0] * coeffs[0] if coeffs[0] != 1 else xs[0]
                for c, x in zip(coeffs[1:], xs[1:]):
                    out = out + (x * c if c != 1 else x)
            elif op == p.PROD:
                out = xs[0]
                for x in xs[1:]:
                    out = out * x
            else:
                out = xs[0]
                for x in xs[1:]:
                    out = torch.maximum(out, x)
            blobs[t0] = out
        return eltwise
    if kind == "Concat":
        p = lp.concat_param
        axis = int(p.axis) if p.HasField("axis") or not p.HasField("concat_dim") else int(p.concat_dim)
        return lambda mod, blobs: blobs.__setitem__(t0, torch.cat([blobs[n] for n in bottoms], axis))
    if kind == "Split":
        def split(mod, blobs):
            for t in tops:
                blobs[t] = blobs[b0]
        return split
    if kind == "Softmax":
        axis = int(lp.softmax_param.axis)
        return lambda mod, blobs: blobs.__setitem__(t0, F.softmax(blobs[b0], axis))
    raise UnsupportedLayer(f"layer '{record.name}' of type {kind} has no torch mapping here")


def _batch_norm(m, record, lp, b0, t0, scale_record, F):
    p = lp.batch_norm_param
    mean, var, factor = (blob.data for blob in record.layer.blobs[:3])
    f = float(factor.reshape(-1)[0])
    f = 1.0 / f if f != 0 else 0.0          # Caffe stores sums scaled by the factor
    rm = m.stat(record.name, 0, mean * f)
    rv = m.stat(record.name, 1, var * f)
    pinned = p.HasField("use_global_stats") and p.use_global_stats
    eps, momentum = float(p.eps), 1.0 - float(p.moving_average_fraction)
    weight = bias = None
    out = t0
    if scale_record is not None:
        sb = scale_record.layer.blobs
        weight = m.param(scale_record.name, 0, sb[0].data.reshape(-1))
        bias = m.param(scale_record.name, 1, sb[1].data.reshape(-1)) if len(sb) > 1 else None
        out = scale_record.top_names[0]

    def bn(mod, blobs):
        blobs[out] = F.batch_norm(blobs[b0], getattr(mod, rm), getattr(mod, rv),
                                  mod._params[weight] if weight else None, mod._params[bias] if bias else None,
                                  mod.training and not pinned, momentum, eps)
    return bn
