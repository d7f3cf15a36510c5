/* The loops of _native.c for one element type. Included once per type with
 * T (float or double) and NAME(x) (x_f32 or x_f64) defined. */

/* Columns of samples [n0, n1) of the NCHW image x: entry (row c * kh * kw + i * kw + j,
 * sample n, position y * ow + x) at col[row * ld + (n - n0) * nstride + y * ow + x].
 * Samples side by side (one GEMM for the batch): ld = samples * oh * ow, nstride = oh * ow;
 * stacked per sample (N, rows, P): ld = oh * ow, nstride = rows * oh * ow.
 * Positions in the padding read as zero. */
static void NAME(im2col)(const T *x, T *col, const Geom *g, long n0, long n1, long ld, long nstride)
{
    const long HW = g->h * g->w;
    for (long c = 0; c < g->channels; c++)
        for (long i = 0; i < g->kh; i++)
            for (long j = 0; j < g->kw; j++) {
                T *row = col + ((c * g->kh + i) * g->kw + j) * ld;
                long x0 = j * g->dw - g->pw, lo, hi;
                valid_range(x0, g->sw, g->w, g->ow, &lo, &hi);
                const int inside = lo == 0 && hi == g->ow && g->sw == 1;
                for (long n = n0; n < n1; n++) {
                    const T *plane = x + (n * g->channels + c) * HW;
                    T *out = row + (n - n0) * nstride;
                    if (inside && ys_inside(g, i)) {
                        /* The common case (no padding reached, stride 1): plain row copies. */
                        const T *src = plane + (i * g->dh - g->ph) * g->w + x0;
                        const long ow = g->ow, step = g->sh * g->w;
                        for (long y = 0; y < g->oh; y++, out += ow, src += step)
                            for (long k = 0; k < ow; k++) out[k] = src[k];
                        continue;
                    }
                    for (long y = 0; y < g->oh; y++, out += g->ow) {
                        long iy = y * g->sh - g->ph + i * g->dh;
                        if (iy < 0 || iy >= g->h) {
                            for (long k = 0; k < g->ow; k++) out[k] = 0;
                            continue;
                        }
                        const T *src = plane + iy * g->w + x0;
                        for (long k = 0; k < lo; k++) out[k] = 0;
                        if (g->sw == 1)
                            for (long k = lo; k < hi; k++) out[k] = src[k];
                        else
                            for (long k = lo; k < hi; k++) out[k] = src[k * g->sw];
                        for (long k = hi; k < g->ow; k++) out[k] = 0;
                    }
                }
            }
}

/* The reverse of im2col (same layout arguments): every column entry added back to the image
 * position it came from. Samples [n0, n1) of the image are overwritten, not accumulated into. */
static void NAME(col2im)(const T *col, T *x, const Geom *g, long n0, long n1, long ld, long nstride)
{
    const long HW = g->h * g->w;
    memset(x + n0 * g->channels * HW, 0, (n1 - n0) * g->channels * HW * sizeof(T));
    for (long c = 0; c < g->channels; c++)
        for (long i = 0; i < g->kh; i++)
            for (long j = 0; j < g->kw; j++) {
                const T *row = col + ((c * g->kh + i) * g->kw + j) * ld;
                long x0 = j * g->dw - g->pw, lo, hi;
                valid_range(x0, g->sw, g->w, g->ow, &lo, &hi);
                const int inside = lo == 0 && hi == g->ow && g->sw == 1;
                for (long n = n0; n < n1; n++) {
                    T *plane = x + (n * g->channels + c) * HW;
                    const T *in = row + (n - n0) * nstride;
                    if (inside && ys_inside(g, i)) {
                        T *dst = plane + (i * g->dh - g->ph) * g->w + x0;
                        const long ow = g->ow, step = g->sh * g->w;
                        for (long y = 0; y < g->oh; y++, in += ow, dst += step)
                            for (long k = 0; k < ow; k++) dst[k] += in[k];
                        continue;
                    }
                    for (long y = 0; y < g->oh; y++, in += g->ow) {
                        long iy = y * g->sh - g->ph + i * g->dh;
                        if (iy < 0 || iy >= g->h)
                            continue;
                        T *dst = plane + iy * g->w + x0;
                        if (g->sw == 1)
                            for (long k = lo; k < hi; k++) dst[k] += in[k];
                        else
                            for (long k = lo; k < hi; k++) dst[k * g->sw] += in[k];
                    }
                }
            }
}

/* One output row of max pooling over windows wholly inside `src` (rows `src_w` apart):
 * outputs [lo, hi), window (0, 0) of output lo at src[0]; argmax gets at_first + (ox - lo) * sw
 * + i * at_w + j for window element (i, j) (the plane's positions, whatever buffer src is),
 * or is NULL: the maxima alone (no backward will need them). Inlined with constant kh, kw,
 * sw and argmax-or-not for the common cases, so the window loops unroll into branch-free
 * selects and gcc vectorises over the outputs (each lane still folds its own window in
 * row-major order: the results do not change). */
static inline __attribute__((always_inline)) void NAME(max_row)(
    const T *restrict src, long src_w, T *restrict y, int32_t *restrict argmax, long at_first, long at_w,
    long lo, long hi, long kh, long kw, long sw)
{
    for (long ox = lo; ox < hi; ox++) {
        /* Loads through a pointer (64-bit offsets: contiguous vector loads, not gathers);
         * positions in int32, as argmax holds them: 64-bit ones halve the vector width. */
        const T *win = src + (ox - lo) * sw;
        const int32_t corner = (int32_t)(at_first + (ox - lo) * sw);
        int32_t best = corner;
        T value = win[0];
        for (long i = 0; i < kh; i++)
            for (long j = 0; j < kw; j++) {
                const T v = win[i * src_w + j];
                const int wins = v > value;   /* strictly: the first maximum stays */
                value = wins ? v : value;
                best = wins ? corner + (int32_t)(i * at_w + j) : best;
            }
        y[ox] = value;
        if (argmax)
            argmax[ox] = best;
    }
}

/* max_row for the windows GoogLeNet, ResNet and SqueezeNet use (3x3 and 2x2, stride 1 or 2,
 * and the rows cut by the ceil-mode overhang) with every size a constant, else the general
 * loop. `rows`: the window's rows inside src. */
static void NAME(max_row_any)(const T *src, long src_w, T *y, int32_t *argmax, long at_first, long at_w, long lo,
                              long hi, long rows, const Geom *g)
{
    const long kw = g->kw, sw = g->sw;
#define MAX_ROW_CASE(KH, KW, S)                                                             \
    if (rows == KH && kw == KW && sw == S) {                                                \
        if (argmax)                                                                         \
            NAME(max_row)(src, src_w, y, argmax, at_first, at_w, lo, hi, KH, KW, S);        \
        else                                                                                \
            NAME(max_row)(src, src_w, y, NULL, at_first, at_w, lo, hi, KH, KW, S);          \
        return;                                                                             \
    }
    MAX_ROW_CASE(3, 3, 1)
    MAX_ROW_CASE(3, 3, 2)
    MAX_ROW_CASE(2, 3, 2)
    MAX_ROW_CASE(2, 2, 2)
    MAX_ROW_CASE(1, 2, 2)
#undef MAX_ROW_CASE
    NAME(max_row)(src, src_w, y, argmax, at_first, at_w, lo, hi, rows, kw, sw);
}

/* max_pool with padding: each plane is copied into a buffer whose padding (and overhang)
 * holds -inf, so that the border windows too run through the vectorised max_row (one at a
 * time they took most of the time on small maps, GoogLeNet's 14x14 and 7x7). Each row is
 * computed a whole number of vectors wide into yrow/arow (no scalar tail), then copied out.
 * -inf never wins (the comparison is strict), so the padding changes nothing, except for a
 * window that starts in it: its fold starts from -inf instead of its first image element,
 * which differs only when that element is NaN or nothing beats -inf; such windows then take
 * their first element, as the direct loop gives them. Returns -1, nothing done, without memory. */
static int NAME(max_pool_padded)(const T *x, T *y, int32_t *argmax, long planes, const Geom *g)
{
    const long H = g->h, W = g->w, ow = g->ow, sw = g->sw;
    const long wide = (ow + 7) / 8 * 8;
    const long bh = (g->oh - 1) * g->sh + g->kh, bw = (wide - 1) * sw + g->kw;
    const long rows = H < bh - g->ph ? H : bh - g->ph, cols = W < bw - g->pw ? W : bw - g->pw;
    T *buf = malloc((bh * bw + wide) * sizeof(T)), *yrow = buf + bh * bw;
    int32_t *arow = malloc(wide * sizeof(int32_t));
    if (!buf || !arow) {
        free(buf);
        free(arow);
        return -1;
    }
    for (long k = 0; k < bh * bw; k++)
        buf[k] = -(T)INFINITY;
    const long left = (g->pw + sw - 1) / sw < ow ? (g->pw + sw - 1) / sw : ow;   /* columns starting in the padding */
    for (long p = 0; p < planes; p++) {
        const T *plane = x + p * H * W;
        /* Plain loops, not memcpy: the rows are short, and the calls cost more than the copies. */
        for (long r = 0; r < rows; r++)
            for (long c = 0; c < cols; c++)
                buf[(r + g->ph) * bw + g->pw + c] = plane[r * W + c];
        for (long oy = 0; oy < g->oh; oy++, y += ow, argmax = argmax ? argmax + ow : NULL) {
            const long top = oy * g->sh - g->ph;
            NAME(max_row_any)(buf + oy * g->sh * bw, bw, yrow, argmax ? arow : NULL, top * W - g->pw, W, 0, wide,
                              g->kh, g);
            for (long ox = 0; ox < ow; ox++)
                y[ox] = yrow[ox];
            if (argmax)
                for (long ox = 0; ox < ow; ox++)
                    argmax[ox] = arow[ox];
            for (long ox = 0; ox < (top < 0 ? ow : left); ox++) {
                const long w0 = ox * sw - g->pw, at = (top < 0 ? 0 : top) * W + (w0 < 0 ? 0 : w0);
                const T first = plane[at];
                if (y[ox] == -(T)INFINITY || first != first) {
                    y[ox] = first;
                    if (argmax)
                        argmax[ox] = (int32_t)at;
                }
            }
        }
    }
    free(buf);
    free(arow);
    return 0;
}

/* Max pooling over `planes` planes: Caffe's windows (clipped to the image, padding never
 * wins) and tie rule (the first maximum in row-major order). argmax gets h * W + w, or is
 * NULL when only the maxima are wanted. */
/* Outputs [lo, hi) of a row whose windows hold no image element: Caffe's -FLT_MAX (for double
 * too) and argmax -1, which backward skips. */
static void NAME(empty_windows)(T *y, int32_t *argmax, long lo, long hi)
{
    for (long ox = lo; ox < hi; ox++) {
        y[ox] = (T)-FLT_MAX;
        if (argmax)
            argmax[ox] = -1;
    }
}

static void NAME(max_pool)(const T *x, T *y, int32_t *argmax, long planes, const Geom *g)
{
    if ((g->ph || g->pw) && NAME(max_pool_padded)(x, y, argmax, planes, g) == 0)
        return;
    const long HW = g->h * g->w;
    long lo, hi;   /* output columns whose windows' columns lie inside the image */
    valid_range(-g->pw, g->sw, g->w - g->kw + 1, g->ow, &lo, &hi);
    for (long p = 0; p < planes; p++) {
        const T *plane = x + p * HW;
        for (long oy = 0; oy < g->oh; oy++, y += g->ow, argmax = argmax ? argmax + g->ow : NULL) {
            long h0, h1;
            window(oy, g->sh, g->ph, g->kh, g->h, &h0, &h1);
            if (h1 <= h0) {     /* a ceil-mode window past the image (no padding): Caffe's empty max */
                NAME(empty_windows)(y, argmax, 0, g->ow);
                continue;
            }
            /* The columns cut by the padding or the overhang, one window at a time. */
            for (long ox = 0; ox < g->ow; ox++) {
                if (ox == lo && hi > lo)
                    ox = hi;
                if (ox == g->ow)
                    break;
                long w0, w1;
                window(ox, g->sw, g->pw, g->kw, g->w, &w0, &w1);
                if (w1 <= w0) {
                    NAME(empty_windows)(y, argmax, ox, ox + 1);
                    continue;
                }
                long best = h0 * g->w + w0;
                T value = plane[best];
                for (long h = h0; h < h1; h++)
                    for (long w = w0; w < w1; w++)
                        if (plane[h * g->w + w] > value) {
                            value = plane[h * g->w + w];
                            best = h * g->w + w;
                        }
                y[ox] = value;
                if (argmax)
                    argmax[ox] = (int32_t)best;
            }
            if (hi > lo)
                NAME(max_row_any)(plane + h0 * g->w + lo * g->sw - g->pw, g->w, y, argmax, h0 * g->w + lo * g->sw - g->pw,
                                  g->w, lo, hi, h1 - h0, g);
        }
    }
}

/* dx = the top gradient routed to each window's argmax (dx is overwritten). -1, an empty
 * window's (empty_windows), routes nothing; any other argmax outside its plane is skipped, not
 * written, and the count of those is returned. */
static long NAME(max_unpool)(const T *dy, const int32_t *argmax, T *dx, long planes, const Geom *g)
{
    const long HW = g->h * g->w, P = g->oh * g->ow;
    long outside = 0;
    memset(dx, 0, planes * HW * sizeof(T));
    for (long p = 0; p < planes; p++, dx += HW)
        for (long o = 0; o < P; o++, argmax++, dy++) {
            if (*argmax < 0 || *argmax >= HW) {
                outside += *argmax != -1;
                continue;
            }
            dx[*argmax] += *dy;
        }
    return outside;
}

/* One output row of average pooling: outputs [0, n), window (0, 0) of output 0 at src[0]
 * (rows src_w apart), each window's sum in row-major order over y's divisor. Inlined with
 * constant sizes for the common windows, so that gcc vectorises over the outputs. */
static inline __attribute__((always_inline)) void NAME(sum_row)(
    const T *restrict src, long src_w, T *restrict y, const T *restrict divisor, long n, long kh, long kw, long sw)
{
    for (long ox = 0; ox < n; ox++) {
        const T *win = src + ox * sw;
        T sum = 0;
        for (long i = 0; i < kh; i++)
            for (long j = 0; j < kw; j++)
                sum += win[i * src_w + j];
        y[ox] = sum / divisor[ox];
    }
}

/* The square windows (kernel, stride) sum_row is compiled for with constant sizes; other
 * windows are summed one at a time from the image (a vectorised loop over the outputs gains
 * nothing without the unrolled window, and loses on large kernels with few outputs). */
#define SUM_ROW_CASES CASE(3, 2) CASE(3, 1) CASE(2, 2) CASE(5, 3)

static int NAME(sum_row_fits)(const Geom *g)
{
#define CASE(K, S) || (g->kh == K && g->kw == K && g->sw == S)
    return 0 SUM_ROW_CASES;
#undef CASE
}

static void NAME(sum_row_any)(const T *src, long src_w, T *y, const T *divisor, long n, const Geom *g)
{
#define CASE(K, S)                                                                          \
    if (g->kh == K && g->kw == K && g->sw == S) {                                           \
        NAME(sum_row)(src, src_w, y, divisor, n, K, K, S);                                  \
        return;                                                                             \
    }
    SUM_ROW_CASES
#undef CASE
}

/* Caffe's average pooling: the window sum over the part inside the image, divided by the
 * window's size clipped to the padded image (the table `divisor`, one row of `wide` per output
 * row, made once per call). Each plane is copied into a buffer with zeros around it, so every
 * window is whole and each row is computed a whole number of vectors wide by sum_row, then
 * copied out. The zeros change no sum: the sum starts from +0 and so is never -0, for which
 * s + 0 would differ, and the image elements are still added in row-major order. */
static void NAME(ave_pool)(const T *x, T *y, long planes, const Geom *g)
{
    const long H = g->h, W = g->w, ow = g->ow, sw = g->sw;
    const long wide = (ow + 7) / 8 * 8;
    const long bh = (g->oh - 1) * g->sh + g->kh, bw = (wide - 1) * sw + g->kw;
    const long rows = H < bh - g->ph ? H : bh - g->ph, cols = W < bw - g->pw ? W : bw - g->pw;
    T *buf = NAME(sum_row_fits)(g) ? calloc(bh * bw + wide + g->oh * wide, sizeof(T)) : NULL;  /* +0.0: zero bits */
    if (!buf) {     /* other windows, or no memory: window by window from the image */
        for (long p = 0; p < planes; p++) {
            const T *plane = x + p * H * W;
            for (long oy = 0; oy < g->oh; oy++) {
                long h0, h1, hn = window(oy, g->sh, g->ph, g->kh, H, &h0, &h1);
                for (long ox = 0; ox < ow; ox++) {
                    long w0, w1, wn = window(ox, sw, g->pw, g->kw, W, &w0, &w1);
                    T sum = 0;
                    for (long h = h0; h < h1; h++)
                        for (long w = w0; w < w1; w++)
                            sum += plane[h * W + w];
                    *y++ = sum / (T)(hn * wn);
                }
            }
        }
        return;
    }
    T *yrow = buf + bh * bw, *divisor = yrow + wide;
    for (long oy = 0; oy < g->oh; oy++) {
        long h0, h1, hn = window(oy, g->sh, g->ph, g->kh, H, &h0, &h1);
        for (long ox = 0; ox < wide; ox++) {
            long w0, w1, wn = window(ox, sw, g->pw, g->kw, W, &w0, &w1);
            divisor[oy * wide + ox] = ox < ow ? (T)(hn * wn) : 1;
        }
    }
    for (long p = 0; p < planes; p++) {
        const T *plane = x + p * H * W;
        for (long r = 0; r < rows; r++)
            for (long c = 0; c < cols; c++)
                buf[(r + g->ph) * bw + g->pw + c] = plane[r * W + c];
        for (long oy = 0; oy < g->oh; oy++, y += ow) {
            NAME(sum_row_any)(buf + oy * g->sh * bw, bw, yrow, divisor + oy * wide, wide, g);
            for (long ox = 0; ox < ow; ox++)
                y[ox] = yrow[ox];
        }
    }
    free(buf);
}

/* The gradient of ave_pool: each top gradient spread evenly over its window (dx is overwritten). */
static void NAME(ave_unpool)(const T *dy, T *dx, long planes, const Geom *g)
{
    const long HW = g->h * g->w;
    memset(dx, 0, planes * HW * sizeof(T));
    for (long p = 0; p < planes; p++, dx += HW) {
        for (long oy = 0; oy < g->oh; oy++) {
            long h0, h1, rows = window(oy, g->sh, g->ph, g->kh, g->h, &h0, &h1);
            for (long ox = 0; ox < g->ow; ox++) {
                long w0, w1, cols = window(ox, g->sw, g->pw, g->kw, g->w, &w0, &w1);
                T share = *dy++ / (T)(rows * cols);
                for (long h = h0; h < h1; h++)
                    for (long w = w0; w < w1; w++)
                        dx[h * g->w + w] += share;
            }
        }
    }
}

/* Per-channel affine map of x viewed as (outer, channels, inner), in one pass (y may be x):
 * standardise: y = (x - a[c]) / b[c] (BatchNorm with stored statistics), else y = x * a[c] + b[c]
 * (Scale with a bias). The same two roundings as the numpy expressions they replace. */
static void NAME(channel_affine)(const T *x, T *y, const T *a, const T *b, long outer, long channels,
                                 long inner, int standardise)
{
    for (long o = 0; o < outer; o++)
        for (long c = 0; c < channels; c++, x += inner, y += inner) {
            const T ac = a[c], bc = b[c];
            if (standardise)
                for (long k = 0; k < inner; k++) y[k] = (x[k] - ac) / bc;
            else
                for (long k = 0; k < inner; k++) y[k] = x[k] * ac + bc;
        }
}

/* Per-channel sums over (outer, channels, inner): sum_dy[c] = sum of dy, sum_dyx[c] = sum of
 * dy * x, into double (the gradients of Scale and of BatchNorm's statistics). */
static void NAME(channel_sums)(const T *dy, const T *x, double *sum_dy, double *sum_dyx, long outer,
                               long channels, long inner)
{
    for (long c = 0; c < channels; c++)
        sum_dy[c] = sum_dyx[c] = 0;
    for (long o = 0; o < outer; o++)
        for (long c = 0; c < channels; c++, dy += inner, x += inner) {
            /* Eight independent partial sums in T (they vectorise, where one chain of adds
             * would wait on each add), moved into double every 512 elements for accuracy. */
            double total = 0, total_x = 0;
            for (long b = 0; b < inner; b += 512) {
                const long end = b + 512 < inner ? b + 512 : inner;
                T s[8] = {0}, sx[8] = {0};
                long k = b;
                for (; k + 8 <= end; k += 8)
                    for (int l = 0; l < 8; l++) {
                        s[l] += dy[k + l];
                        sx[l] += dy[k + l] * x[k + l];
                    }
                for (; k < end; k++) {
                    s[0] += dy[k];
                    sx[0] += dy[k] * x[k];
                }
                for (int l = 0; l < 8; l++) {
                    total += s[l];
                    total_x += sx[l];
                }
            }
            sum_dy[c] += total;
            sum_dyx[c] += total_x;
        }
}

/* The backward of a training chain (fusion.py) over (outer, channels, inner): g = dy * (y > 0) if
 * relu else dy (ReLU's gradient, read off its top y); sum_g[c] and sum_gx[c], the sums of g and of
 * g * x (Scale's parameter gradients, x the value Scale was given), summed exactly as channel_sums
 * does; dx = g * a[c] (Scale), then / s[c] if standardise (BatchNorm with stored statistics).
 * sum_a and sum_ax (unless NULL) get the sums of g * a[c] and of that times x, as channel_sums would
 * give them from Scale's dx (BatchNorm's batch-statistics gradient, finished by batch_norm_grad).
 * One pass, the roundings of the separate layers; dx may be dy. */
/* chain_backward's work on element k, its sums into lane l. */
static inline __attribute__((always_inline)) void NAME(chain_term)(const T *dy, const T *y, const T *x, T *dx,
                                                                   long k, int l, T ac, T sc, int relu,
                                                                   int standardise, T *p, T *px, T *pa, T *pax)
{
    const T g = relu ? dy[k] * (T)(y[k] > 0) : dy[k];
    const T ga = g * ac;
    p[l] += g;
    px[l] += g * x[k];
    pa[l] += ga;
    pax[l] += ga * x[k];
    dx[k] = standardise ? ga / sc : ga;
}

static void NAME(chain_backward)(const T *dy, const T *y, const T *x, const T *a, const T *s, T *dx,
                                 double *sum_g, double *sum_gx, double *sum_a, double *sum_ax, long outer,
                                 long channels, long inner, int relu, int standardise)
{
    for (long c = 0; c < channels; c++) {
        sum_g[c] = sum_gx[c] = 0;
        if (sum_a) sum_a[c] = sum_ax[c] = 0;
    }
    for (long o = 0; o < outer; o++)
        for (long c = 0; c < channels; c++, dy += inner, y += inner, x += inner, dx += inner) {
            const T ac = a[c], sc = standardise ? s[c] : 1;
            double total = 0, total_x = 0, total_a = 0, total_ax = 0;
            for (long b = 0; b < inner; b += 512) {
                const long end = b + 512 < inner ? b + 512 : inner;
                T p[8] = {0}, px[8] = {0}, pa[8] = {0}, pax[8] = {0};
                long k = b;
                for (; k + 8 <= end; k += 8)
                    for (int l = 0; l < 8; l++)
                        NAME(chain_term)(dy, y, x, dx, k + l, l, ac, sc, relu, standardise, p, px, pa, pax);
                for (; k < end; k++)        /* the tail into lane 0 */
                    NAME(chain_term)(dy, y, x, dx, k, 0, ac, sc, relu, standardise, p, px, pa, pax);
                for (int l = 0; l < 8; l++) {
                    total += p[l];
                    total_x += px[l];
                    total_a += pa[l];
                    total_ax += pax[l];
                }
            }
            sum_g[c] += total;
            sum_gx[c] += total_x;
            if (sum_a) {
                sum_a[c] += total_a;
                sum_ax[c] += total_ax;
            }
        }
}

/* BatchNorm's batch-statistics gradient: dx = (dy - mean_dy[c] - y * mean_dyy[c]) / std[c],
 * rounded step by step as the numpy expression is; dx may be dy. */
static void NAME(batch_norm_grad)(const T *dy, const T *y, const T *mean_dy, const T *mean_dyy, const T *std,
                                  T *dx, long outer, long channels, long inner)
{
    for (long o = 0; o < outer; o++)
        for (long c = 0; c < channels; c++, dy += inner, y += inner, dx += inner) {
            const T m1 = mean_dy[c], m2 = mean_dyy[c], s = std[c];
            for (long k = 0; k < inner; k++) {
                T t = dy[k] - m1;
                T u = y[k] * m2;
                dx[k] = (t - u) / s;
            }
        }
}

/* ROIPooling forward over bins the caller computed (Caffe's rounding stays in numpy): roi r
 * of `rois` reads image bins[r * stride], its bin (ph, pw) rows [hs, he) and columns [ws, we)
 * from bins[r * stride + 1 ...] laid out hs[PH], he[PH], ws[PW], we[PW]. Each top value is
 * the first maximum in row-major order (strict >), its argmax h * w + x; an empty bin gives
 * 0 and -1. */
static void NAME(roi_pool)(const T *x, T *top, int32_t *argmax, const int32_t *bins, long rois, long channels,
                           long h, long w, long pooled_h, long pooled_w)
{
    const long stride = 1 + 2 * (pooled_h + pooled_w), bins_out = pooled_h * pooled_w;
    for (long r = 0; r < rois; r++) {
        const int32_t *b = bins + r * stride, *hs = b + 1, *he = hs + pooled_h, *ws = he + pooled_h,
                      *we = ws + pooled_w;
        for (long c = 0; c < channels; c++) {
            const T *plane = x + (b[0] * channels + c) * h * w;
            T *out = top + (r * channels + c) * bins_out;
            int32_t *arg = argmax + (r * channels + c) * bins_out;
            for (long ph = 0; ph < pooled_h; ph++)
                for (long pw = 0; pw < pooled_w; pw++) {
                    const long k = ph * pooled_w + pw;
                    if (he[ph] <= hs[ph] || we[pw] <= ws[pw]) {
                        out[k] = 0;
                        arg[k] = -1;
                        continue;
                    }
                    long best = hs[ph] * w + ws[pw];
                    T value = plane[best];
                    for (long y = hs[ph]; y < he[ph]; y++)
                        for (long i = y * w + ws[pw], end = y * w + we[pw]; i < end; i++)
                            if (plane[i] > value) {
                                value = plane[i];
                                best = i;
                            }
                    out[k] = value;
                    arg[k] = (int32_t)best;
                }
        }
    }
}

/* Vectors of 32 bytes (8 floats, 4 doubles) by GCC's vector extension: one AVX register in the
 * AVX2 copy, two SSE ones in the baseline copy, the same arithmetic lane by lane in both. */
typedef T NAME(vec) __attribute__((vector_size(32)));
#define LANES ((long)(32 / sizeof(T)))
#define VLOAD(v, p) memcpy(&(v), (p), sizeof(v))
/* Elements of k per pass: four weight rows' and up to 16 inputs' stretch of this length stay in L1. */
#define ROWS_DOT_CHUNK 256

/* y[m * ldy + n] = sum over k of x[m * K + k] * w[n * K + k] for m < M <= 16, n in [n0, n1): a
 * fully connected layer over a small batch (a BLAS GEMM packs the whole weight matrix on every
 * call, costly for a product with a handful of rows). The weight rows stream from memory once,
 * four at a time, a ROWS_DOT_CHUNK stretch of k at a time, against three inputs at a time with
 * twelve vector sums in registers. Every output is the same sum whatever block computed it: lane
 * l adds k = l, l + LANES, ... in order, then the lanes pairwise, then the tail k past the last
 * whole vector; so the bytes do not depend on [n0, n1). */
static void NAME(rows_dot)(const T *x, const T *w, T *y, long M, long K, long ldy, long n0, long n1)
{
    const long full = K / LANES * LANES;
    NAME(vec) acc[16][4];
    for (long n = n0; n < n1; n += 4) {
        const long nn = n1 - n < 4 ? n1 - n : 4;
        memset(acc, 0, sizeof acc);
        for (long k0 = 0; k0 < full; k0 += ROWS_DOT_CHUNK) {
            const long k1 = full - k0 < ROWS_DOT_CHUNK ? full : k0 + ROWS_DOT_CHUNK;
            for (long m = 0; m < M; m += 3) {
                const long mm = M - m < 3 ? M - m : 3;
                if (nn == 4 && mm == 3) {
                    const T *r0 = w + n * K, *r1 = r0 + K, *r2 = r1 + K, *r3 = r2 + K;
                    const T *i0 = x + m * K, *i1 = i0 + K, *i2 = i1 + K;
                    NAME(vec) a00 = acc[m][0], a01 = acc[m][1], a02 = acc[m][2], a03 = acc[m][3];
                    NAME(vec) a10 = acc[m + 1][0], a11 = acc[m + 1][1], a12 = acc[m + 1][2], a13 = acc[m + 1][3];
                    NAME(vec) a20 = acc[m + 2][0], a21 = acc[m + 2][1], a22 = acc[m + 2][2], a23 = acc[m + 2][3];
                    for (long k = k0; k < k1; k += LANES) {
                        NAME(vec) w0, w1, w2, w3, a, b, c;
                        VLOAD(w0, r0 + k); VLOAD(w1, r1 + k); VLOAD(w2, r2 + k); VLOAD(w3, r3 + k);
                        VLOAD(a, i0 + k); VLOAD(b, i1 + k); VLOAD(c, i2 + k);
                        a00 += a * w0; a01 += a * w1; a02 += a * w2; a03 += a * w3;
                        a10 += b * w0; a11 += b * w1; a12 += b * w2; a13 += b * w3;
                        a20 += c * w0; a21 += c * w1; a22 += c * w2; a23 += c * w3;
                    }
                    acc[m][0] = a00; acc[m][1] = a01; acc[m][2] = a02; acc[m][3] = a03;
                    acc[m + 1][0] = a10; acc[m + 1][1] = a11; acc[m + 1][2] = a12; acc[m + 1][3] = a13;
                    acc[m + 2][0] = a20; acc[m + 2][1] = a21; acc[m + 2][2] = a22; acc[m + 2][3] = a23;
                    continue;
                }
                for (long i = m; i < m + mm; i++)
                    for (long j = 0; j < nn; j++) {
                        const T *in = x + i * K, *row = w + (n + j) * K;
                        NAME(vec) sum = acc[i][j];
                        for (long k = k0; k < k1; k += LANES) {
                            NAME(vec) a, b;
                            VLOAD(a, in + k);
                            VLOAD(b, row + k);
                            sum += a * b;
                        }
                        acc[i][j] = sum;
                    }
            }
        }
        for (long i = 0; i < M; i++)
            for (long j = 0; j < nn; j++) {
                const T *in = x + i * K, *row = w + (n + j) * K;
                T lanes[LANES];
                memcpy(lanes, &acc[i][j], sizeof lanes);
                for (long width = LANES / 2; width >= 1; width /= 2)
                    for (long l = 0; l < width; l++) lanes[l] = lanes[l] + lanes[l + width];
                T s = lanes[0];
                for (long k = full; k < K; k++) s += in[k] * row[k];
                y[i * ldy + n + j] = s;
            }
    }
}
#undef LANES
#undef VLOAD
#undef ROWS_DOT_CHUNK

/* LRN across channels (Caffe's ACROSS_CHANNELS) for samples [n0, n1) of x (N, channels, inner),
 * positions [p0, p1) of each plane: y = x * s^-beta with s = k + coeff * (sum of x^2 over the
 * `size` channels centred on each, zero past the ends), written to `scale` too unless it is NULL
 * (backward reads it). Each s is summed afresh in channel order (no running sum to drift), from
 * a ring of the squares of a block of positions; beta 0.75 (every model-zoo LRN) as
 * 1 / (sqrt(s) * sqrt(sqrt(s))), which vectorises, where pow does not. `ring`: size x 256. */
#ifndef LRN_SQRT
#define LRN_SQRT(v) (sizeof(T) == 4 ? sqrtf(v) : sqrt(v))     /* in the element's own precision */
#endif
static void NAME(lrn_across)(const T *x, T *y, T *scale, long channels, long inner, long n0, long n1, long p0,
                             long p1, long size, T coeff, T k, T beta, T *ring)
{
    enum { BLOCK = 256 };
    const long half = (size - 1) / 2;
    const int three_quarters = beta == (T)0.75;
    for (long n = n0; n < n1; n++) {
        const T *xs = x + n * channels * inner;
        T *ys = y + n * channels * inner, *ss = scale ? scale + n * channels * inner : NULL;
        for (long q0 = p0; q0 < p1; q0 += BLOCK) {
            const long w = p1 - q0 < BLOCK ? p1 - q0 : BLOCK;
            /* ring row (c mod size) holds the squares of channel c, once c is read */
            for (long c = 0; c < half && c < channels; c++) {
                const T *xc = xs + c * inner + q0;
                T *sq = ring + (c % size) * BLOCK;
                for (long i = 0; i < w; i++) sq[i] = xc[i] * xc[i];
            }
            for (long c = 0; c < channels; c++) {
                const long lo = c - half > 0 ? c - half : 0, hi = c + half < channels - 1 ? c + half : channels - 1;
                if (c + half < channels) {
                    const T *xc = xs + (c + half) * inner + q0;
                    T *sq = ring + ((c + half) % size) * BLOCK;
                    for (long i = 0; i < w; i++) sq[i] = xc[i] * xc[i];
                }
                T s[BLOCK];
                for (long i = 0; i < w; i++) s[i] = 0;
                for (long j = lo; j <= hi; j++) {
                    const T *sq = ring + (j % size) * BLOCK;
                    for (long i = 0; i < w; i++) s[i] += sq[i];
                }
                const T *xc = xs + c * inner + q0;
                T *yc = ys + c * inner + q0;
                for (long i = 0; i < w; i++) s[i] = k + coeff * s[i];
                if (ss)
                    for (long i = 0; i < w; i++) ss[c * inner + q0 + i] = s[i];
                if (three_quarters)
                    for (long i = 0; i < w; i++) {
                        const T r = LRN_SQRT(s[i]);
                        yc[i] = xc[i] / (r * LRN_SQRT(r));
                    }
                else
                    for (long i = 0; i < w; i++) yc[i] = xc[i] * (T)(sizeof(T) == 4 ? powf(s[i], -beta) : pow(s[i], -beta));
            }
        }
    }
}

/* One step of SGD with momentum and L2 weight decay over n parameters, in place (Caffe's
 * Regularize, ComputeUpdateValue and Update): g = diff * scale + data * decay, then
 * history = history * momentum + g * rate, diff = history, data -= history. Each operation
 * rounds to T as the numpy steps it replaces (solver.py's _update_run, updates.SGD) do, in their
 * order; scale 1 and decay 0 leave their steps out, as there. */
static void NAME(sgd_step)(T *data, T *diff, T *history, long n, T scale, T decay, T rate, T momentum)
{
    const int scaled = scale != 1, decayed = decay != 0;
    for (long i = 0; i < n; i++) {
        T g = diff[i];
        if (scaled) g = g * scale;
        if (decayed) g = g + data[i] * decay;
        const T h = history[i] * momentum + g * rate;
        history[i] = h;
        diff[i] = h;
        data[i] = data[i] - h;
    }
}
