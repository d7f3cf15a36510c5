"""Window pooling (max, average, stochastic) for Pooling and SPP, on NCHW directly.

Pooling is separable: a max/sum along each image row (one long strided 1-D run per
window column) then across rows. Taking the row maximum first and then the first
strictly larger row gives Caffe's tie rule (the first maximum in row-major window order).
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..threads import FLAT_CHUNK, even_count, parallel_for, spans
from . import native
from .base import FLT_MIN, scratch

# The compiled kernels run over at most this many chunks of planes at once (threads.py).
PLANE_CHUNKS = 8


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


class ForwardState:
    """What WindowPool.forward leaves for backward, by name (Caffe's max_idx_ and rand_idx_).

    Each is None until a forward of its kind fills it; the arrays come from scratch.
      image           the pooled input (x itself or the padded buffer): test-phase MAX and
                      STOCHASTIC backward read it again
      argmax          compiled MAX: each output's position in its input plane (int32)
      column_winner   separable MAX: per row run, the window column that won (the first maximum)
      row_winner      separable MAX: per output, the window row that won; both None after a
                      forward that took the maxima alone (test phase): backward finds them then
      global_argmax   global MAX: each plane's argmax
      choice          STOCHASTIC, train: the window offset drawn for each output
      sums            STOCHASTIC, test: (FLT_MIN + sum x, sum x^2) over each window
    """

    __slots__ = ("image", "argmax", "column_winner", "row_winner", "global_argmax", "choice", "sums")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, None)


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
        # Compiled max/average pooling (native.py) over this window geometry; the numpy passes below otherwise.
        self.window = None
        if method in ("max", "ave") and not self.is_global and native.usable(self.dtype):
            self.window = native.window_geometry(self.channels, (H, W), kernel, stride, pad, (1, 1), out)
        # Without padding a ceil-mode window may start past the image: Caffe's MAX gives it
        # -FLT_MAX and argmax -1 (the compiled kernel too); the numpy passes see padding there.
        empty = (np.arange(self.oh) * self.sh - self.ph >= H)[:, None] | (np.arange(self.ow) * self.sw - self.pw >= W)
        self.empty = empty if method == "max" and empty.any() else None
        self.state = ForwardState()
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
    def forward(self, x, top, mask_out=None, train=True, rng=None, backward=True):
        """`train`: the phase, for STOCHASTIC's draw; `backward`: whether a backward will follow
        (the layer's runs_backward), for MAX to find its argmax now rather than then."""
        top3 = top.reshape(self._out_shape())
        if self.window is not None:
            return self._forward_compiled(x, top3, mask_out, backward)
        if self.is_global:
            return self._forward_global(x, top3, mask_out)
        flat = self._buffer(x)
        if self.method == "stochastic":
            return self._forward_stochastic(flat, top3, train, rng)
        self.state.image = flat
        if self.method == "max":
            if backward or mask_out is not None:
                self._max_with_argmax(flat, top3)
                if mask_out is not None:
                    self._argmax_positions(mask_out.reshape(self._out_shape()))
            else:
                # No backward expected: the maxima alone; backward, if it comes, finds the argmax then.
                self._max_only(flat, top3)
            if self.empty is not None:
                top3[:, self.empty] = -np.finfo(np.float32).max
                if mask_out is not None:
                    mask_out.reshape(self._out_shape())[:, self.empty] = -1
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

    def _plane_chunks(self, kernel, *arrays):
        """kernel(*pieces, window, planes) over chunks of planes in parallel; each array is viewed
        (planes, plane size) and cut at the same planes."""
        if not self.planes:
            return
        flats = [a.reshape(self.planes, -1) for a in arrays]
        # A power of two: LeNet's pool2 (204,800 inputs) went in 3 chunks, 2 to one thread and 1 to the other.
        chunks = spans(self.planes, even_count(min(PLANE_CHUNKS, self.planes * self.height * self.width // FLAT_CHUNK)))

        def chunk(k):
            a, b = chunks[k]
            kernel(*(f[a:b] for f in flats), self.window, b - a)

        parallel_for(len(chunks), chunk)

    def _forward_compiled(self, x, top3, mask_out, backward=True):
        if self.method == "ave":
            self._plane_chunks(native.kernels.ave_pool, x, top3)
            return
        if not backward and mask_out is None:
            # No backward expected: the maxima alone, no winners written (the kernel's cheaper
            # loop); a backward that comes anyway finds them again from the input.
            self.state.argmax, self.state.image = None, x
            self._plane_chunks(lambda x, y, window, planes: native.kernels.max_pool(x, y, None, window, planes),
                               x, top3)
            return
        argmax = self.state.argmax = scratch(self, "argmax", self._out_shape(), np.int32)
        self._plane_chunks(native.kernels.max_pool, x, top3, argmax)
        if mask_out is not None:
            np.copyto(mask_out.reshape(argmax.shape), argmax)

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
        self.state.column_winner, self.state.row_winner = hidx, vidx

    def _max_only(self, flat, top3):
        count = self.planes * self.rows * self.owx
        hval = scratch(None, "pool_rows", (count,), self.dtype)
        _max_of(self._col_views(flat), hval)
        _max_of(self._row_views(hval.reshape(self.planes, self.rows, self.owx)), top3)
        self.state.column_winner = self.state.row_winner = None

    def _argmax_positions(self, mask3):
        """Caffe's mask top: the argmax as h * W + w in the unpadded input plane."""
        hidx, vidx = self.state.column_winner, self.state.row_winner
        row = np.arange(self.oh)[:, None] * self.sh + vidx            # buffer row of the winner
        hidx3 = hidx.reshape(self.planes, self.rows, self.owx)[:, :, :self.ow]
        col = np.take_along_axis(hidx3, row.astype(np.intp), axis=1)  # its window column
        w = np.arange(self.ow) * self.sw - self.pw + col
        np.copyto(mask3, (row - self.ph) * self.width + w)

    def _forward_global(self, x, top3, mask_out):
        x2 = x.reshape(self.planes, -1)
        top1 = top3.reshape(-1)
        if self.method == "max":
            idx = self.state.global_argmax = scratch(self, "gidx", (self.planes,), np.intp)
            np.argmax(x2, axis=1, out=idx)
            np.copyto(top1, x2[np.arange(self.planes), idx])
            if mask_out is not None:
                np.copyto(mask_out.reshape(-1), idx)
        else:
            np.sum(x2, axis=1, out=top1)
            top1 /= self.pool_size

    def _forward_stochastic(self, flat, top3, train, rng):
        self.state.image = flat          # the test-phase backward needs the input again
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
            self.state.sums = (s1, s2)
            return
        cum = scratch(self, "cum", shape, self.dtype)
        thresh = scratch(self, "thresh", shape, self.dtype)
        choice = self.state.choice = scratch(self, "choice", shape, np.int32)
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
        if self.window is not None:
            if self.method == "ave":
                return self._plane_chunks(native.kernels.ave_unpool, dtop3, dx)
            if self.state.argmax is None:      # forward kept no winners (no backward was expected)
                self._forward_compiled(self.state.image, scratch(self, "top_again", self._out_shape(), self.dtype),
                                       None)
            return self._plane_chunks(native.kernels.max_unpool, dtop3, self.state.argmax, dx)
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
        if self.method == "max" and self.state.row_winner is None:
            self._max_with_argmax(self.state.image, scratch(self, "top_again", shape, self.dtype))
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
            _route(dtop3, self.state.row_winner, rows, exact_rows,
                   lambda: (scratch(self, "vmask_b", shape, np.bool_), scratch(self, "vtmp", shape, self.dtype)))
        else:
            grad = scratch(self, "gscaled", shape, self.dtype)
            np.divide(dtop3, self.pool_size, out=grad)
            _spread(grad, rows, exact_rows)
        if not exact_cols:
            dflat.fill(0)
        cols = self._col_views(dflat)
        if self.method == "max":
            _route(drow, self.state.column_winner, cols, exact_cols,
                   lambda: (scratch(self, "hmask_b", (count,), np.bool_), scratch(self, "htmp", (count,), self.dtype)))
        else:
            _spread(drow, cols, exact_cols)

    def _backward_global(self, dtop3, dx):
        d2 = dx.reshape(self.planes, -1)
        g = dtop3.reshape(-1)
        if self.method == "max":
            d2.fill(0)
            d2[np.arange(self.planes), self.state.global_argmax] = g
        else:
            np.copyto(d2, (g / self.pool_size)[:, None])

    def _backward_stochastic(self, dtop3, dflat, train):
        dflat.fill(0)
        windows = self._windows(dflat)
        shape = self._out_shape()
        tmp = scratch(self, "stmp", shape, self.dtype)
        if train:
            choice = self.state.choice
            hit = scratch(self, "hit", shape, np.bool_)
            for k, win in enumerate(windows):
                np.equal(choice, k, out=hit)
                np.multiply(dtop3, hit, out=tmp)
                win += tmp
            return
        # Test phase: top = sum(x^2) / (FLT_MIN + sum(x)), so d top / d x = (2x - top) / s1.
        x_windows = self._windows(self.state.image)
        s1, s2 = self.state.sums
        top = np.divide(s2, s1)
        for v, win in zip(x_windows, windows):
            np.multiply(v, 2, out=tmp)
            tmp -= top
            tmp /= s1
            tmp *= dtop3
            win += tmp
