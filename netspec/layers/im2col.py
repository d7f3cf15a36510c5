"""Sliding-window kernels for the vision layers: im2col/col2im for (de)convolution, window pooling.

Convolution is one GEMM over the whole batch on a column array with one row per
(channel, kernel offset) and one column per (sample, output position), in one of two
layouts, picked per layer shape by ConvGeometry:

    batch-inner  (C*K, P*N)   image buffer (C, *padded, N)   copy runs of out_w*N elements
    stacked      (N, C*K, P)  image buffer (N, C, *padded)   copy runs of out_w elements

numpy pays a fixed cost per innermost run, so small feature maps (LeNet's 8x8) go
batch-inner: one 2-D GEMM, at the price of moving the batch axis in and out. Big maps
go stacked: np.matmul over the sample axis reads and writes NCHW directly, no transposes.

Pooling works on NCHW directly and is separable: a max/sum along each image row
(one long strided 1-D run per window column) then across rows. Taking the row
maximum first and then the first strictly larger row gives Caffe's tie rule
(the first maximum in row-major window order).
"""
import itertools
import math
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

# Below this output width, batch-inner columns are used (see the module docstring).
BATCH_INNER_MAX_WIDTH = 16
# Largest column array (elements) kept from forward for backward; past it (stacked only)
# columns are built one part at a time, in forward and again in backward, as Caffe does.
COLUMN_BUDGET = 1 << 25
# Elements of dcol produced and folded back at a time in the data gradient (8 MB of float32):
# bounds the buffer; smaller parts bought nothing measurable in cache locality.
COL2IM_PART = 1 << 21
# Rows per block when moving the batch axis to the front: keeps the strided reads in L1.
_TRANSPOSE_BLOCK = 64
FLT_MIN = float(np.finfo(np.float32).tiny)


def conv_out_size(size, kernel, stride, pad, dilation):
    """Caffe's convolution output length: (size + 2p - (d(k-1)+1)) / s + 1, rounded down."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


_shared = threading.local()


def scratch(owner, name, shape, dtype, fill=None):
    """A work array cached on `owner` and reused while shape and dtype stay the same.

    `fill` initialises a fresh array (padded buffers whose borders are never written again).
    With owner None the array comes from a per-thread pool shared by all layers, one buffer
    per name grown to the largest request: for work whose contents are dead once the layer
    call that wrote it returns (nothing kept for backward, no fill). The nets then hold the
    largest such buffer rather than one per layer, test nets included.
    """
    shape = tuple(int(d) for d in shape)
    if owner is None:
        assert fill is None, "shared work arrays have no lasting contents to fill"
        pool = _shared.__dict__.setdefault("buffers", {})
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        buf = pool.get(name)
        if buf is None or buf.nbytes < nbytes:
            buf = pool[name] = np.empty(nbytes, np.uint8)
        return buf[:nbytes].view(dtype).reshape(shape)
    cache = owner.__dict__.setdefault("_scratch", {})
    buf = cache.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)
        cache[name] = buf
    return buf


# ---- convolution ---------------------------------------------------------------------------

def batch_last_to_first(src, dst):
    """dst (N, R) = src (R, N).T, blocked: a plain strided copy thrashes the cache when R is large."""
    rows, num = src.shape
    if rows * num < 65536:
        np.copyto(dst, src.T)
        return
    for r in range(0, rows, _TRANSPOSE_BLOCK):
        np.copyto(dst[:, r:r + _TRANSPOSE_BLOCK], src[r:r + _TRANSPOSE_BLOCK].T)


class ConvGeometry:
    """One im2col problem: an image (N, C, *spatial) seen through kernel/stride/pad/dilation.

    For Convolution the image is the bottom; for Deconvolution it is the top. Column
    arrays ("cols") hold one row per channel (or channel x kernel offset) and one column
    per (sample, position): (C, L) batch-inner, (N, C, P) stacked.
    """

    def __init__(self, num, channels, spatial, kernel, stride, pad, dilation, batch_inner=None):
        self.num, self.channels = int(num), int(channels)
        self.spatial, self.kernel = tuple(spatial), tuple(kernel)
        self.stride, self.pad, self.dilation = tuple(stride), tuple(pad), tuple(dilation)
        self.out = tuple(conv_out_size(*a) for a in zip(spatial, kernel, stride, pad, dilation))
        self.padded = tuple(s + 2 * p for s, p in zip(spatial, pad))
        self.kernel_count = math.prod(self.kernel)
        self.out_count = math.prod(self.out)
        self.rows = self.channels * self.kernel_count
        if batch_inner is None:
            batch_inner = (self.num > 1 and self.out[-1] < BATCH_INNER_MAX_WIDTH
                           and self.rows * self.out_count * self.num <= COLUMN_BUDGET)
        self.batch_inner = batch_inner
        self.has_pad = any(self.pad)
        self.offsets = list(itertools.product(*(range(k) for k in self.kernel)))

    # -- column arrays --
    def cols_shape(self, rows, positions):
        return (rows, positions * self.num) if self.batch_inner else (self.num, rows, positions)

    def grouped(self, cols, groups):
        """cols split by row groups: (G, R/G, L) or (N, G, R/G, P), ready for np.matmul with (G, ., .) weights."""
        if self.batch_inner:
            return cols.reshape(groups, cols.shape[0] // groups, cols.shape[1])
        return cols.reshape(cols.shape[0], groups, cols.shape[1] // groups, cols.shape[2])

    def as_cols(self, owner, name, x):
        """NCHW-like x (N, C, P) as a column array: x itself when stacked, else a transposed copy."""
        if not self.batch_inner:
            return x
        num, rows, positions = x.shape
        cols = scratch(owner, name, self.cols_shape(rows, positions), x.dtype)
        np.copyto(cols.reshape(rows * positions, num), x.reshape(num, -1).T)
        return cols

    def out_cols(self, owner, name, y):
        """Where a GEMM should write the column array of NCHW-like y (N, C, P); then call finish_cols."""
        if not self.batch_inner:
            return y
        return scratch(owner, name, self.cols_shape(y.shape[1], y.shape[2]), y.dtype)

    def finish_cols(self, cols, y, bias=None):
        """Move a column array into y (N, C, P), adding bias[c] (cols may be modified)."""
        if bias is not None:
            cols += bias[:, None] if self.batch_inner else bias[None, :, None]
        if self.batch_inner:
            batch_last_to_first(cols.reshape(-1, self.num), y.reshape(self.num, -1))

    # -- images --
    @property
    def image_shape(self):
        if self.batch_inner:
            return (self.channels,) + self.padded + (self.num,)
        return (self.num, self.channels) + self.padded

    def _spatial_index(self, spatial_slices):
        if self.batch_inner:
            return (slice(None),) + tuple(spatial_slices) + (slice(None),)
        return (slice(None), slice(None)) + tuple(spatial_slices)

    def interior(self, image):
        """The unpadded part of an image buffer (a view)."""
        return image[self._spatial_index(slice(p, p + s) for p, s in zip(self.pad, self.spatial))]

    def window(self, image, offset):
        """The image positions kernel offset `offset` touches, one per output position (a view)."""
        return image[self._spatial_index(
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offset, self.dilation, self.stride, self.out))]

    def load_image(self, owner, name, x):
        """The image for NCHW-like x (N, C, *spatial): x itself when no copy is needed, else a buffer."""
        if not self.batch_inner and not self.has_pad:
            return x
        image = scratch(owner, name, self.image_shape, x.dtype, fill=0)
        if not self.batch_inner:
            np.copyto(self.interior(image), x)
        elif not self.has_pad:
            np.copyto(image.reshape(-1, self.num), x.reshape(self.num, -1).T)
        else:
            np.copyto(self.interior(image), np.moveaxis(x, 0, -1))
        return image

    def grad_image(self, owner, name, dx):
        """Where col2im should write the gradient of x: dx itself when the layouts agree."""
        if not self.batch_inner and not self.has_pad:
            return dx
        return scratch(owner, name, self.image_shape, dx.dtype)

    def store_image(self, image, out):
        """Write the interior of an image buffer into NCHW-like out (N, C, *spatial)."""
        if image is out:
            return
        if not self.batch_inner:
            np.copyto(out, self.interior(image))
        elif not self.has_pad:
            batch_last_to_first(image.reshape(-1, self.num), out.reshape(self.num, -1))
        else:
            inner = self.interior(image)
            for c in range(self.channels):
                np.copyto(out[:, c], np.moveaxis(inner[c], -1, 0))

    # -- im2col / col2im --
    def col_view(self, image):
        """image as (C, *kernel, *out, N) or (N, C, *kernel, *out), without copying."""
        st = image.strides
        if self.batch_inner:
            s_c, s_sp, s_n = st[0], st[1:-1], st[-1]
        else:
            s_n, s_c, s_sp = st[0], st[1], st[2:]
        k_strides = tuple(d * s for d, s in zip(self.dilation, s_sp))
        o_strides = tuple(t * s for t, s in zip(self.stride, s_sp))
        if self.batch_inner:
            shape = (self.channels,) + self.kernel + self.out + (image.shape[-1],)
            strides = (s_c,) + k_strides + o_strides + (s_n,)
        else:   # image may be a slice of the samples
            shape = (image.shape[0], self.channels) + self.kernel + self.out
            strides = (s_n, s_c) + k_strides + o_strides
        return as_strided(image, shape, strides, writeable=False)

    def im2col(self, image, col):
        """col (column array with C*prod(kernel) rows, possibly a row slice) <- every kernel window of image."""
        view = self.col_view(image)
        target = col.reshape(view.shape)       # only splits axes, so always a view of col
        assert np.may_share_memory(target, col)
        np.copyto(target, view)

    def col2im(self, col, image):
        """image <- the columns added back at their windows (image is overwritten)."""
        image.fill(0)
        self.add_windows(col, image)

    def add_windows(self, col, image):
        """image += col put back at its windows: one strided add per kernel offset over the whole batch.

        `image` may be a leading slice of the image (channels batch-inner, samples stacked)
        with `col` the matching rows.
        """
        if self.batch_inner:
            blocks = col.reshape((image.shape[0], self.kernel_count) + self.out + (self.num,))
        else:
            blocks = col.reshape((image.shape[0], self.channels, self.kernel_count) + self.out)
        for k, offset in enumerate(self.offsets):
            window = self.window(image, offset)
            window += blocks[:, k] if self.batch_inner else blocks[:, :, k]

    def channel_parts(self, groups):
        """Batch-inner: channel slices whose columns hold about COL2IM_PART elements, so a GEMM
        can produce them and add_windows fold them back while they are in cache."""
        if groups != 1:
            return [slice(None)]
        step = max(1, COL2IM_PART // (self.kernel_count * self.num * self.out_count))
        return [slice(c, min(self.channels, c + step)) for c in range(0, self.channels, step)]

    def sample_parts(self):
        """Stacked: sample slices whose columns hold about COL2IM_PART elements (kept in cache)."""
        step = max(1, COL2IM_PART // (self.rows * self.out_count))
        return [slice(n, min(self.num, n + step)) for n in range(0, self.num, step)]

    def keeps_columns(self, rows):
        """Whether the whole batch's columns (rows x positions x samples) fit COLUMN_BUDGET;
        if not (stacked only), they are built part by part, again in backward."""
        return self.batch_inner or self.num * rows * self.out_count <= COLUMN_BUDGET


# ---- pooling ---------------------------------------------------------------------------------

def _as_flags(idx):
    """A bool view of a 0/1 uint8 index array: comparisons write bool without a casting pass."""
    return idx.view(np.bool_) if idx.dtype == np.uint8 else idx


def _first_argmax(views, out, idx, mask):
    """out = elementwise max over views, idx = index of the first view reaching it.

    A later view wins only when strictly greater. `mask` is scratch of idx's shape and dtype.
    """
    if len(views) == 1:
        np.copyto(out, views[0])
        idx.fill(0)
        return
    np.greater(views[1], views[0], out=_as_flags(idx))
    np.maximum(views[0], views[1], out=out)
    for j in range(2, len(views)):
        np.greater(views[j], out, out=_as_flags(mask))
        np.maximum(out, views[j], out=out)
        # idx = j where views[j] won: j exceeds every earlier index, so a max does it
        # (and much faster than a masked copy).
        mask *= j
        np.maximum(idx, mask, out=idx)


def _max_of(views, out):
    np.copyto(out, views[0])
    for view in views[1:]:
        np.maximum(out, view, out=out)


def _route(grad, idx, targets, exact, work):
    """targets[j] (=, or += when windows overlap) grad where idx == j: the max/stochastic backward step.

    work() gives (mask, tmp) scratch of grad's shape; asked for only when needed (not for 2 exact targets).
    """
    if exact and len(targets) == 2:
        np.multiply(grad, _as_flags(idx), out=targets[1])
        np.subtract(grad, targets[1], out=targets[0])
        return
    mask, tmp = work()
    for j, target in enumerate(targets):
        np.equal(idx, j, out=mask)
        if exact:
            np.multiply(grad, mask, out=target)
        else:
            np.multiply(grad, mask, out=tmp)
            target += tmp


def _spread(grad, targets, exact):
    """targets[j] (=, or +=) grad for every j: the average backward step."""
    for target in targets:
        if exact:
            np.copyto(target, grad)
        else:
            target += grad


class WindowPool:
    """Max/average/stochastic pooling of x (N, C, H, W) with Caffe's window rules.

    Window (oh, ow) covers rows oh*sh - ph ... + kh and columns likewise, clipped to the
    input; MAX ignores padding, AVE divides by the window clipped to the padded input
    (Caffe's pool_size), STOCHASTIC samples by activation (train) or takes the
    activation-weighted mean (test), never padded.
    """

    def __init__(self, method, shape, kernel, stride, pad, out, dtype):
        self.method = method
        self.num, self.channels, self.height, self.width = shape
        (self.kh, self.kw), (self.sh, self.sw), (self.ph, self.pw) = kernel, stride, pad
        self.oh, self.ow = out
        self.dtype = np.dtype(dtype)
        self.planes = self.num * self.channels
        H, W = self.height, self.width
        self.is_global = (self.kh, self.kw) == (H, W) and not any(pad) and method != "stochastic"
        # Padded buffer: rows needed by the last window; columns a whole number of strides
        # so that every row lines up and one 1-D strided view walks all windows of all rows.
        self.extra = max(0, -(-self.kw // self.sw) - 1)
        self.owx = self.ow + self.extra
        self.buf_w = self.sw * self.owx
        self.buf_h = (self.oh - 1) * self.sh + self.kh
        self.direct = (not any(pad) and self.extra == 0 and W == self.buf_w and H >= self.buf_h)
        self.rows = H if self.direct else self.buf_h
        # Input rows/columns that fall inside the buffer (the rest are in no window).
        self.in_h = min(H, self.buf_h - self.ph)
        self.in_w = min(W, self.buf_w - self.pw)
        self.idx_dtype = np.uint8 if max(self.kh, self.kw) < 256 else np.int32
        self.pool_size = None
        if method == "ave":
            hs = np.arange(self.oh) * self.sh - self.ph
            ws = np.arange(self.ow) * self.sw - self.pw
            hcount = np.minimum(hs + self.kh, H + self.ph) - hs
            wcount = np.minimum(ws + self.kw, W + self.pw) - ws
            size = np.outer(hcount, wcount).astype(self.dtype)
            self.pool_size = size.flat[0] if np.all(size == size.flat[0]) else size

    # -- buffers and views --
    def _buffer(self, x):
        """The (flat) pooled image: x itself, or a padded copy."""
        if self.direct:
            return x.reshape(-1)
        fill = -np.inf if self.method == "max" else 0
        size = self.planes * self.buf_h * self.buf_w
        buf = scratch(self, "image", (size + self.kw,), self.dtype, fill=fill)
        img = buf[:size].reshape(self.planes, self.buf_h, self.buf_w)
        np.copyto(img[:, self.ph:self.ph + self.in_h, self.pw:self.pw + self.in_w],
                  x.reshape(self.planes, self.height, self.width)[:, :self.in_h, :self.in_w])
        return buf

    def _col_views(self, flat):
        """Per window column j: one strided 1-D view over every (plane, row, window column)."""
        count = self.planes * self.rows * self.owx
        step = self.sw * flat.itemsize
        return [as_strided(flat[j:], (count,), (step,)) for j in range(self.kw)]

    def _row_views(self, rows3):
        """Per window row i: (planes, OH, OW) view of a (planes, rows, owx) array."""
        last = self.sh * (self.oh - 1) + 1
        return [rows3[:, i:i + last:self.sh, :self.ow] for i in range(self.kh)]

    def _windows(self, flat):
        """Per window offset (row-major): (planes, OH, OW) views of the image (stochastic pooling)."""
        width = self.width if self.direct else self.buf_w
        img = flat[:self.planes * self.rows * width].reshape(self.planes, self.rows, width)
        hl, wl = self.sh * (self.oh - 1) + 1, self.sw * (self.ow - 1) + 1
        return [img[:, i:i + hl:self.sh, j:j + wl:self.sw] for i in range(self.kh) for j in range(self.kw)]

    def _out_shape(self):
        return (self.planes, self.oh, self.ow)

    # -- forward --
    def forward(self, x, top, mask_out=None, train=True, rng=None):
        top3 = top.reshape(self._out_shape())
        if self.is_global:
            return self._forward_global(x, top3, mask_out)
        flat = self._buffer(x)
        if self.method == "stochastic":
            return self._forward_stochastic(flat, top3, train, rng)
        self._flat = flat
        if self.method == "max":
            if train or mask_out is not None:
                self._max_with_argmax(flat, top3)
                if mask_out is not None:
                    self._argmax_positions(mask_out.reshape(self._out_shape()))
            else:
                # Test phase: the maxima alone; backward, if it comes, finds the argmax then.
                self._max_only(flat, top3)
            return
        count = self.planes * self.rows * self.owx
        hval = scratch(None, "pool_rows", (count,), self.dtype)
        cols = self._col_views(flat)
        np.copyto(hval, cols[0])
        for view in cols[1:]:
            hval += view
        rows = self._row_views(hval.reshape(self.planes, self.rows, self.owx))
        np.copyto(top3, rows[0])
        for view in rows[1:]:
            top3 += view
        top3 /= self.pool_size

    def _max_with_argmax(self, flat, top3):
        count = self.planes * self.rows * self.owx
        hval = scratch(None, "pool_rows", (count,), self.dtype)
        hidx = scratch(self, "hidx", (count,), self.idx_dtype)
        hmask = scratch(self, "hmask", (count,), self.idx_dtype) if self.kw > 2 else None
        _first_argmax(self._col_views(flat), hval, hidx, hmask)
        rows = self._row_views(hval.reshape(self.planes, self.rows, self.owx))
        vidx = scratch(self, "vidx", self._out_shape(), self.idx_dtype)
        if self.kh == 2:
            # Compare every buffer row with the next in one contiguous pass (entries of rows
            # that start no window go unused), then pick the window starts: both much cheaper
            # than a comparison whose inner loop restarts every output row.
            vrows = scratch(self, "vidx_rows", (count,), self.idx_dtype)
            np.greater(hval[self.owx:], hval[:-self.owx], out=_as_flags(vrows[:-self.owx]))
            np.copyto(vidx, self._row_views(vrows.reshape(self.planes, self.rows, self.owx))[0])
            np.maximum(rows[0], rows[1], out=top3)
        else:
            vmask = scratch(self, "vmask", self._out_shape(), self.idx_dtype) if self.kh > 2 else None
            _first_argmax(rows, top3, vidx, vmask)
        self._argmax_ready = True

    def _max_only(self, flat, top3):
        count = self.planes * self.rows * self.owx
        hval = scratch(None, "pool_rows", (count,), self.dtype)
        _max_of(self._col_views(flat), hval)
        _max_of(self._row_views(hval.reshape(self.planes, self.rows, self.owx)), top3)
        self._argmax_ready = False

    def _argmax_positions(self, mask3):
        """Caffe's mask top: the argmax as h * W + w in the unpadded input plane."""
        hidx, vidx = self._scratch["hidx"], self._scratch["vidx"]
        row = np.arange(self.oh)[:, None] * self.sh + vidx            # buffer row of the winner
        hidx3 = hidx.reshape(self.planes, self.rows, self.owx)[:, :, :self.ow]
        col = np.take_along_axis(hidx3, row.astype(np.intp), axis=1)  # its window column
        w = np.arange(self.ow) * self.sw - self.pw + col
        np.copyto(mask3, (row - self.ph) * self.width + w)

    def _forward_global(self, x, top3, mask_out):
        x2 = x.reshape(self.planes, -1)
        top1 = top3.reshape(-1)
        if self.method == "max":
            idx = scratch(self, "gidx", (self.planes,), np.intp)
            np.argmax(x2, axis=1, out=idx)
            np.copyto(top1, x2[np.arange(self.planes), idx])
            if mask_out is not None:
                np.copyto(mask_out.reshape(-1), idx)
        else:
            np.sum(x2, axis=1, out=top1)
            top1 /= self.pool_size

    def _forward_stochastic(self, flat, top3, train, rng):
        self._pooled = flat          # the test-phase backward needs the input again
        windows = self._windows(flat)
        shape = self._out_shape()
        if not train:
            s1 = scratch(self, "s1", shape, self.dtype)
            s2 = scratch(self, "s2", shape, self.dtype)
            s1.fill(FLT_MIN)
            s2.fill(0)
            for v in windows:
                s1 += v
                s2 += v * v
            np.divide(s2, s1, out=top3)
            return
        cum = scratch(self, "cum", shape, self.dtype)
        thresh = scratch(self, "thresh", shape, self.dtype)
        choice = scratch(self, "choice", shape, np.int32)
        hit = scratch(self, "hit", shape, np.bool_)
        cum.fill(0)
        for v in windows:
            cum += v
        np.multiply(rng.random(shape), cum, out=thresh)   # Caffe: u ~ U[0,1) times the window sum
        cum.fill(0)
        choice.fill(len(windows))
        for k, v in enumerate(windows):
            cum += v
            np.greater_equal(cum, thresh, out=hit)
            hit &= choice == len(windows)
            choice[hit] = k
            np.copyto(top3, v, where=hit)

    # -- backward --
    def backward(self, dtop, dx, train=True):
        dtop3 = dtop.reshape(self._out_shape())
        if self.is_global:
            return self._backward_global(dtop3, dx)
        if self.direct:
            dflat = dx.reshape(-1)
        else:
            size = self.planes * self.buf_h * self.buf_w
            dflat = scratch(self, "dimage", (size + self.kw,), self.dtype)
        if self.method == "stochastic":
            self._backward_stochastic(dtop3, dflat, train)
        else:
            self._backward_separable(dtop3, dflat)
        if not self.direct:
            d3 = dx.reshape(self.planes, self.height, self.width)
            img = dflat[:self.planes * self.buf_h * self.buf_w].reshape(self.planes, self.buf_h, self.buf_w)
            np.copyto(d3[:, :self.in_h, :self.in_w],
                      img[:, self.ph:self.ph + self.in_h, self.pw:self.pw + self.in_w])
            d3[:, self.in_h:, :] = 0
            d3[:, :, self.in_w:] = 0

    def _backward_separable(self, dtop3, dflat):
        count = self.planes * self.rows * self.owx
        shape = self._out_shape()
        if self.method == "max" and not self._argmax_ready:
            self._max_with_argmax(self._flat, scratch(self, "top_again", shape, self.dtype))
        # The row gradient takes the row buffer: the forward's row maxima are not needed again.
        drow = scratch(None, "pool_rows", (count,), self.dtype)
        drow3 = drow.reshape(self.planes, self.rows, self.owx)
        rows = self._row_views(drow3)
        exact_rows = self.kh == self.sh     # every buffer row in at most one window: assign
        exact_cols = self.kw == self.sw
        if not exact_rows:
            drow.fill(0)
        else:   # rows and columns the windows never reach must still pass on zeros
            drow3[:, self.buf_h:] = 0
            drow3[:, :, self.ow:] = 0
        if self.method == "max":
            _route(dtop3, self._scratch["vidx"], rows, exact_rows,
                   lambda: (scratch(self, "vmask_b", shape, np.bool_), scratch(self, "vtmp", shape, self.dtype)))
        else:
            grad = scratch(self, "gscaled", shape, self.dtype)
            np.divide(dtop3, self.pool_size, out=grad)
            _spread(grad, rows, exact_rows)
        if not exact_cols:
            dflat.fill(0)
        cols = self._col_views(dflat)
        if self.method == "max":
            _route(drow, self._scratch["hidx"], cols, exact_cols,
                   lambda: (scratch(self, "hmask_b", (count,), np.bool_), scratch(self, "htmp", (count,), self.dtype)))
        else:
            _spread(drow, cols, exact_cols)

    def _backward_global(self, dtop3, dx):
        d2 = dx.reshape(self.planes, -1)
        g = dtop3.reshape(-1)
        if self.method == "max":
            d2.fill(0)
            d2[np.arange(self.planes), self._scratch["gidx"]] = g
        else:
            np.copyto(d2, (g / self.pool_size)[:, None])

    def _backward_stochastic(self, dtop3, dflat, train):
        dflat.fill(0)
        windows = self._windows(dflat)
        shape = self._out_shape()
        tmp = scratch(self, "stmp", shape, self.dtype)
        if train:
            choice = self._scratch["choice"]
            hit = scratch(self, "hit", shape, np.bool_)
            for k, win in enumerate(windows):
                np.equal(choice, k, out=hit)
                np.multiply(dtop3, hit, out=tmp)
                win += tmp
            return
        # Test phase: top = sum(x^2) / (FLT_MIN + sum(x)), so d top / d x = (2x - top) / s1.
        x_windows = self._windows(self._pooled)
        s1 = self._scratch["s1"]
        top = np.divide(self._scratch["s2"], s1)
        for v, win in zip(x_windows, windows):
            np.multiply(v, 2, out=tmp)
            tmp -= top
            tmp /= s1
            tmp *= dtop3
            win += tmp
