/* Direct depthwise convolution (group == input channels) for one element type: included by
 * _native.c with T and NAME(x) defined, as _native_body.h is.
 *
 * Layout: x (N, C, H, W); weights (C * m, kh * kw) with m outputs per input channel (the
 * multiplier); y (N, C * m, oh, ow). Output channel o reads input channel o / m. Every kernel
 * takes a range [start, stop) of independent work items (planes or channels, see each one),
 * so a caller can split a batch across threads; items of different calls never share memory.
 *
 * Each output is the sum over kernel taps in row-major order, padding read as zero, then plus the
 * bias: the rounding of Caffe's im2col + GEMM up to the GEMM's own order of the K terms. */

/* One output row from a zero-bordered plane: out[k] = sum over taps (i, j) in row-major order of
 * wo[i * kw + j] times the plane's element (row i * dh, column k * sw + j * dw) from src, for k in
 * [0, n), n a whole number of vectors; rows rs apart. With `split` (stride 2) each row of the plane
 * holds its even columns, then its odd ones `half` further: then every tap reads consecutive
 * elements, not every other one. Inlined with constant sizes for MobileNet's 3x3 windows, so the
 * taps unroll, the nine weights stay in registers and gcc vectorises over k with no tail. */
static inline __attribute__((always_inline)) void NAME(depthwise_row)(
    T *restrict out, const T *restrict src, long rs, long half, const T *restrict wo, long n, long kh, long kw,
    long sw, long dw, int split)
{
    for (long k = 0; k < n; k++) {
        T acc = 0;
        for (long i = 0; i < kh; i++)
            for (long j = 0; j < kw; j++) {
                const long q = j * dw;  /* the tap's column in the window */
                const long at = split ? (q & 1) * half + q / 2 + k : q + k * sw;
                acc += wo[i * kw + j] * src[i * rs + at];
            }
        out[k] = acc;
    }
}

/* Rows [0, rows) x columns [0, cols) of `plane` (width W) into buf at row `top`, column `left`
 * (rows bw apart), split into even and odd columns when `split` (see depthwise_row). */
static void NAME(depthwise_load)(T *restrict buf, const T *restrict plane, long W, long rows, long cols, long top,
                                 long left, long bw, int split)
{
    const long half = bw / 2;
    for (long r = 0; r < rows; r++) {
        const T *src = plane + r * W;
        T *row = buf + (r + top) * bw;
        if (!split) {
            for (long c = 0; c < cols; c++) row[left + c] = src[c];
            continue;
        }
        /* Buffer column q (image column q - left) goes to even[q / 2] or odd[q / 2]: an odd `left`
         * sends image column 0 to the odd half alone, then the loop moves one pair of columns a
         * step, which gcc vectorises as two loads and two shuffles. */
        const long c0 = left & 1, base = (left + c0) / 2, pairs = (cols - c0) / 2;
        T *even = row + base, *odd = row + half + base;
        const T *pair = src + c0;
        if (c0)
            odd[-1] = src[0];
        for (long t = 0; t < pairs; t++) {
            even[t] = pair[2 * t];
            odd[t] = pair[2 * t + 1];
        }
        if ((cols - c0) & 1)
            even[pairs] = pair[2 * pairs];
    }
}

/* Output planes [start, stop) of the N * C * m planes: y = depthwise(x, w) (+ bias[o] if bias).
 * `buf`: depthwise_buffer's zeroed scratch. Each input plane is copied into it inside a border of
 * zeros, so that every output row, `wide` columns (ow rounded up to 8), reads whole windows: a
 * padded tap adds w * 0 exactly as the zero-padded columns of im2col + GEMM (and the numpy path)
 * do, so the sums and their order are unchanged. Rows narrower than `wide` go through the last
 * `wide` elements of buf, then are copied out. */
static void NAME(depthwise_forward)(const T *x, const T *w, const T *bias, T *y, const Geom *g, long m,
                                    long start, long stop, T *buf)
{
    const long H = g->h, W = g->w, OW = g->ow, K = g->kh * g->kw, outputs = g->channels * m;
    long bh, bw, wide;
    depthwise_buffer(g, &bh, &bw, &wide);
    const long rows = H < bh - g->ph ? H : bh - g->ph, cols = W < bw - g->pw ? W : bw - g->pw;
    const long rs = g->dh * bw, half = bw / 2;
    const int split = g->sw == 2;
    T *row_buf = buf + bh * bw;
    const T *loaded = NULL;     /* the input plane in buf (m outputs in a row read the same one) */
    for (long p = start; p < stop; p++) {
        const long n = p / outputs, o = p % outputs;
        const T *plane = x + (n * g->channels + o / m) * H * W, *wo = w + o * K;
        if (plane != loaded) {
            NAME(depthwise_load)(buf, plane, W, rows, cols, g->ph, g->pw, bw, split);
            loaded = plane;
        }
        T *out = y + p * g->oh * OW;
        for (long oy = 0; oy < g->oh; oy++, out += OW) {
            const T *src = buf + oy * g->sh * bw;
            T *dst = wide == OW ? out : row_buf;
            if (g->kh == 3 && g->kw == 3 && g->dw == 1 && g->sw == 1)
                NAME(depthwise_row)(dst, src, rs, half, wo, wide, 3, 3, 1, 1, 0);
            else if (g->kh == 3 && g->kw == 3 && g->dw == 1 && g->sw == 2)
                NAME(depthwise_row)(dst, src, rs, half, wo, wide, 3, 3, 2, 1, 1);
            else if (split)
                NAME(depthwise_row)(dst, src, rs, half, wo, wide, g->kh, g->kw, 2, g->dw, 1);
            else
                NAME(depthwise_row)(dst, src, rs, half, wo, wide, g->kh, g->kw, g->sw, g->dw, 0);
            if (bias) {
                const T b = bias[o];
                for (long k = 0; k < OW; k++) out[k] = dst[k] + b;
            } else if (dst != out) {
                for (long k = 0; k < OW; k++) out[k] = dst[k];
            }
        }
    }
}

/* Input planes [start, stop) of the N * C planes: dx = the transpose of depthwise_forward applied
 * to dy (dx is overwritten). */
static void NAME(depthwise_backward_data)(const T *dy, const T *w, T *dx, const Geom *g, long m, long start,
                                          long stop)
{
    const long HW = g->h * g->w, OW = g->ow, OHW = g->oh * OW, K = g->kh * g->kw;
    for (long p = start; p < stop; p++) {
        const long n = p / g->channels, c = p % g->channels;
        T *plane = dx + p * HW;
        memset(plane, 0, HW * sizeof(T));
        for (long o = c * m; o < (c + 1) * m; o++) {
            const T *grad = dy + (n * g->channels * m + o) * OHW, *wo = w + o * K;
            for (long oy = 0; oy < g->oh; oy++, grad += OW)
                for (long i = 0; i < g->kh; i++) {
                    const long iy = oy * g->sh - g->ph + i * g->dh;
                    if (iy < 0 || iy >= g->h)
                        continue;
                    T *row = plane + iy * g->w;
                    for (long j = 0; j < g->kw; j++) {
                        const long x0 = j * g->dw - g->pw;
                        long lo, hi;
                        valid_range(x0, g->sw, g->w, OW, &lo, &hi);
                        const T wv = wo[i * g->kw + j];
                        T *dst = row + x0;
                        if (g->sw == 1)
                            for (long k = lo; k < hi; k++) dst[k] += wv * grad[k];
                        else
                            for (long k = lo; k < hi; k++) dst[k * g->sw] += wv * grad[k];
                    }
                }
        }
    }
}

/* One input row of the stride-2 data gradient with 3x3 windows (depthwise_backward_data_s2):
 * out[2u + p] = the sum from +0 over the nr dy rows g[r] (output rows ascending), then over the
 * kernel columns j ascending with j - pw of parity p, of wr[r][j] * g[r][u - e[j]], u in [0, n).
 * Inlined with constant nr and pw & 1, so that the taps unroll into two sums in registers and gcc
 * vectorises over u, interleaving the two parities as it stores. */
static inline __attribute__((always_inline)) void NAME(data_row_s2)(T *restrict out, const T *const *g,
                                                                    const T *const *wr, const long *e, long nr,
                                                                    long n, long pw)
{
    for (long u = 0; u < n; u++) {
        T acc[2] = {0, 0};
        for (long r = 0; r < nr; r++)
            for (long j = 0; j < 3; j++) acc[(j + pw) & 1] += wr[r][j] * g[r][u - e[j]];
        out[2 * u] = acc[0];
        out[2 * u + 1] = acc[1];
    }
}

/* depthwise_backward_data for 3x3 windows, strides of 2, no dilation, one output per channel and
 * finite weights (else the direct kernel): the same sums in the same order, but each input row is
 * gathered (data_row_s2) from a copy of its dy plane inside a border of zeros
 * (depthwise_data_buffer), so that every row reads the two or one kernel rows of its parity with no
 * edge cases. A tap in the border adds w * 0 = 0, which changes no sum begun at +0 while w is
 * finite. Rows of 2 * pairs elements wider than w go through the last 2 * pairs elements of buf.
 * `buf`: the zeroed scratch. */
static void NAME(depthwise_backward_data_s2)(const T *dy, const T *w, T *dx, const Geom *g, long start, long stop,
                                             T *buf)
{
    const long W = g->w, OW = g->ow;
    for (long t = 0; t < g->channels * 9; t++)
        if (!isfinite(w[t])) {
            NAME(depthwise_backward_data)(dy, w, dx, g, 1, start, stop);
            return;
        }
    long oy0, k0, rows, bw, pairs;
    depthwise_data_buffer(g, &oy0, &k0, &rows, &bw, &pairs);
    const long e[3] = {half_down(-g->pw), half_down(1 - g->pw), half_down(2 - g->pw)};
    T *row_buf = buf + rows * bw;
    for (long p = start; p < stop; p++) {
        for (long oy = 0; oy < g->oh; oy++)
            for (long k = 0; k < OW; k++) buf[(oy - oy0) * bw + k - k0] = dy[(p * g->oh + oy) * OW + k];
        for (long iy = 0; iy < g->h; iy++) {
            const T *gr[2], *wr[2];
            long nr = 0;
            for (long i = 2; i >= 0; i--) {
                const long at = iy + g->ph - i;     /* twice the output row, when even */
                if (at % 2)
                    continue;
                gr[nr] = buf + (at / 2 - oy0) * bw - k0;
                wr[nr++] = w + p % g->channels * 9 + i * 3;
            }
            T *out = dx + (p * g->h + iy) * W, *dst = 2 * pairs == W ? out : row_buf;
            if (nr == 2 && g->pw & 1)
                NAME(data_row_s2)(dst, gr, wr, e, 2, pairs, 1);
            else if (nr == 2)
                NAME(data_row_s2)(dst, gr, wr, e, 2, pairs, 0);
            else if (g->pw & 1)
                NAME(data_row_s2)(dst, gr, wr, e, 1, pairs, 1);
            else
                NAME(data_row_s2)(dst, gr, wr, e, 1, pairs, 0);
            if (dst != out)
                for (long k = 0; k < W; k++) out[k] = dst[k];
        }
    }
}

/* depthwise_backward_data where `gt` (transposed_geom) says dx is a forward correlation of dy:
 * stride 1, so dx = depthwise_forward(dy, the kernels turned half a turn) with padding k - 1 - p.
 * That reads dy inside a border of zeros, which adds w * 0 = 0 only while every weight is finite;
 * otherwise the direct kernel, which skips the padding as Caffe's col2im does. `flipped`: C * K
 * elements of scratch, `buf` the forward's zeroed plane for gt. */
static void NAME(depthwise_backward_data_as_forward)(const T *dy, const T *w, T *dx, const Geom *g, const Geom *gt,
                                                     long start, long stop, T *buf, T *flipped)
{
    const long K = g->kh * g->kw, C = g->channels;
    for (long e = 0; e < C * K; e++)
        if (!isfinite(w[e])) {
            NAME(depthwise_backward_data)(dy, w, dx, g, 1, start, stop);
            return;
        }
    for (long o = 0; o < C; o++)
        for (long t = 0; t < K; t++)
            flipped[o * K + t] = w[o * K + K - 1 - t];
    NAME(depthwise_forward)(dy, flipped, NULL, dx, gt, 1, start, stop, buf);
}

/* One register of T (GCC's vector extension: 32 bytes in the AVX2 copy, 16 in the SSE2 one; wider
 * types compile to poor code); each element rounds as scalar code does. A tap's eight lanes are
 * LANE_VECS of them. loadv reads any VL consecutive elements. */
#ifdef __AVX2__
#define VBYTES 32
#else
#define VBYTES 16
#endif
typedef T NAME(reg) __attribute__((vector_size(VBYTES)));
typedef long NAME(bits) __attribute__((vector_size(VBYTES)));
#define VL ((long)(VBYTES / sizeof(T)))
#define LANE_VECS (8 / VL)

static inline __attribute__((always_inline)) void NAME(loadv)(NAME(reg) *v, const T *p)
{
    memcpy(v, p, sizeof *v);
}

/* acc[t] += tap t's eight lanes (s[t * LANE_VECS], ...) added pairwise, in double, for t < taps. */
static inline __attribute__((always_inline)) void NAME(lanes_sum)(double *restrict acc, const NAME(reg) *s,
                                                                  long taps)
{
    for (long t = 0; t < taps; t++) {
        T l[8];
        memcpy(l, s + t * LANE_VECS, sizeof l);
        acc[t] += (double)(((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])));
    }
}

/* Up to nine taps of one plane's weight gradient in one pass over dy (oh rows of ow, gs apart, read
 * in whole vectors): for tap t, lane l sums grad[k] * src[at[t] + k] (rows rstep apart in src)
 * over the k = l mod 8 of every row in turn, from +0; then lanes_sum. Those are the sums of a pass
 * per tap, but dy is read once and, inlined with a constant count, the lanes stay in registers.
 * A row's last partial vector adds +0 in its lanes past ow (`keep`, ones in the bits of the lanes
 * below ow % 8, masks the others whatever src holds there): a sum begun at +0 is never -0, so that
 * changes no bit. */
static inline __attribute__((always_inline)) void NAME(taps_plane)(
    double *restrict acc, const T *restrict grad, const T *restrict src, const long *restrict at, long taps,
    long oh, long ow, long gs, long rstep, const NAME(bits) *keep)
{
    NAME(reg) s[9 * LANE_VECS] = {{0}}, d[LANE_VECS], v;
    const long full = ow / 8 * 8;
    for (long oy = 0; oy < oh; oy++, grad += gs, src += rstep) {
        for (long k = 0; k < full; k += 8) {
            for (long h = 0; h < LANE_VECS; h++) NAME(loadv)(&d[h], grad + k + h * VL);
#pragma GCC unroll 9
            for (long t = 0; t < taps; t++)
                for (long h = 0; h < LANE_VECS; h++) {
                    NAME(loadv)(&v, src + at[t] + k + h * VL);
                    s[t * LANE_VECS + h] += d[h] * v;
                }
        }
        if (full == ow)
            continue;
        for (long h = 0; h < LANE_VECS; h++) NAME(loadv)(&d[h], grad + full + h * VL);
#pragma GCC unroll 9
        for (long t = 0; t < taps; t++)
            for (long h = 0; h < LANE_VECS; h++) {
                NAME(loadv)(&v, src + at[t] + full + h * VL);
                s[t * LANE_VECS + h] += (NAME(reg))((NAME(bits))(d[h] * v) & keep[h]);
            }
    }
    NAME(lanes_sum)(acc, s, taps);
}

/* taps_plane with the taps' input elements `step` apart (strides over 2), lane by lane. */
static void NAME(taps_plane_strided)(double *restrict acc, const T *restrict grad, const T *restrict src,
                                     const long *restrict at, long taps, long oh, long ow, long rstep, long step)
{
    T s[9 * 8] = {0};
    for (long oy = 0; oy < oh; oy++, grad += ow, src += rstep)
        for (long t = 0; t < taps; t++)
            for (long k = 0; k < ow; k++) s[t * 8 + (k & 7)] += grad[k] * src[at[t] + k * step];
    NAME(reg) lanes[9 * LANE_VECS];
    memcpy(lanes, s, sizeof s);
    NAME(lanes_sum)(acc, lanes, taps);
}

/* Output channels [start, stop) of the C * m: dw[o] += the weight gradient over all `num` samples.
 * Each input plane is copied into `buf` (depthwise_buffer's zeroed scratch) inside a border of
 * zeros, as forward does, so that every tap reads a whole row of `wide` elements with no edge
 * cases (stride 2: from the split even/odd layout). Each tap's products are summed in eight lanes
 * per plane, `group` taps a pass over dy (taps_plane), and added into `acc` (K doubles). dy's
 * planes are read as rows of `wide` elements, copied into `dbuf` (oh * wide, zeroed) unless ow is
 * a whole number of vectors. `at`: K longs of scratch. */
static void NAME(depthwise_backward_weights)(const T *dy, const T *x, T *dw, const Geom *g, long m, long num,
                                             long start, long stop, double *acc, long *at, T *buf, T *dbuf)
{
    const long H = g->h, W = g->w, OHW = g->oh * g->ow, K = g->kh * g->kw;
    long bh, bw, wide;
    depthwise_buffer(g, &bh, &bw, &wide);
    const long rows = H < bh - g->ph ? H : bh - g->ph, cols = W < bw - g->pw ? W : bw - g->pw;
    const long rs = g->dh * bw, half = bw / 2, rstep = g->sh * bw;
    const int split = g->sw == 2;
    const long step = split ? 1 : g->sw;
    /* Taps per pass: as many as keep their lanes in registers (nine of the sixteen for AVX2's
     * float; a kernel row's three where each tap's lanes take two registers or more). */
    const long group = LANE_VECS == 1 ? 9 : 3;
    unsigned char ones[8 * sizeof(T)] = {0};
    NAME(bits) keep[LANE_VECS];
    memset(ones, 0xff, g->ow % 8 * sizeof(T));
    memcpy(keep, ones, sizeof keep);
    for (long t = 0; t < K; t++) {
        const long q = t % g->kw * g->dw;     /* the tap's column in the window */
        at[t] = t / g->kw * rs + (split ? (q & 1) * half + q / 2 : q);
    }
    for (long o = start; o < stop; o++) {
        for (long t = 0; t < K; t++) acc[t] = 0;
        for (long n = 0; n < num; n++) {
            NAME(depthwise_load)(buf, x + (n * g->channels + o / m) * H * W, W, rows, cols, g->ph, g->pw, bw, split);
            const T *grad = dy + (n * g->channels * m + o) * OHW;
            if (step == 1 && wide != g->ow) {
                for (long oy = 0; oy < g->oh; oy++)
                    for (long k = 0; k < g->ow; k++) dbuf[oy * wide + k] = grad[oy * g->ow + k];
                grad = dbuf;
            }
            for (long t0 = 0; t0 < K; t0 += group) {
                const long taps = K - t0 < group ? K - t0 : group;
                if (step != 1)
                    NAME(taps_plane_strided)(acc + t0, grad, buf, at + t0, taps, g->oh, g->ow, rstep, step);
                else if (taps == 9)
                    NAME(taps_plane)(acc + t0, grad, buf, at + t0, 9, g->oh, g->ow, wide, rstep, keep);
                else if (taps == 3)
                    NAME(taps_plane)(acc + t0, grad, buf, at + t0, 3, g->oh, g->ow, wide, rstep, keep);
                else
                    NAME(taps_plane)(acc + t0, grad, buf, at + t0, taps, g->oh, g->ow, wide, rstep, keep);
            }
        }
        for (long t = 0; t < K; t++) dw[o * K + t] += (T)acc[t];
    }
}

/* In-place per-channel chains (fusion.py): over x viewed as (outer, channels, inner), planes
 * [start, stop) of the outer * channels: y = x, then if standardise y = (y - m[c]) / s[c]
 * (BatchNorm's stored statistics), then if scale y = y * a[c] + b[c] (Scale with a bias), then if relu
 * y = max(y, 0), in one pass with the roundings of the separate layers (y may be x). NaN stays NaN.
 * keep (NULL when nothing runs backward) gets the value Scale is given, as Scale keeps it when it
 * runs in place in training. */
static void NAME(channel_chain)(const T *x, T *y, const T *m, const T *s, const T *a, const T *b, T *keep,
                                long channels, long inner, int standardise, int scale, int relu,
                                long start, long stop)
{
    for (long p = start; p < stop; p++) {
        const long c = p % channels;
        const T *in = x + p * inner;
        T *out = y + p * inner, *kept = keep ? keep + p * inner : NULL;
        const T mc = standardise ? m[c] : 0, sc = standardise ? s[c] : 1;
        const T ac = scale ? a[c] : 1, bc = scale ? b[c] : 0;
        if (standardise && scale && relu && !kept)
            for (long k = 0; k < inner; k++) {
                const T v = (in[k] - mc) / sc * ac + bc;
                out[k] = v < 0 ? 0 : v;
            }
        else if (standardise && scale && relu)
            for (long k = 0; k < inner; k++) {
                const T u = (in[k] - mc) / sc, v = u * ac + bc;
                kept[k] = u;
                out[k] = v < 0 ? 0 : v;
            }
        else
            for (long k = 0; k < inner; k++) {
                T v = in[k];
                if (standardise) v = (v - mc) / sc;
                if (kept) kept[k] = v;
                if (scale) v = v * ac + bc;
                if (relu) v = v < 0 ? 0 : v;
                out[k] = v;
            }
    }
}

#undef VBYTES
#undef VL
#undef LANE_VECS
