/* Winograd's F(2x2, 3x3) for a 3x3, stride-1 convolution, included once per element type T
 * (NAME(x) gives the typed name), like _native_body.h.
 *
 * Each 2x2 block of output positions (a tile) is computed from the 4x4 input patch d under it:
 *     Y = A^T [ U (.) V ] A,   U = G g G^T (the transformed 3x3 kernel),   V = B^T d B,
 * with                                      G = [  1    0    0 ]
 *   B^T = [ 1  0 -1  0 ]    A^T = [ 1 1  1  0 ]  [ 1/2  1/2  1/2 ]
 *         [ 0  1  1  0 ]          [ 0 1 -1 -1 ]  [ 1/2 -1/2  1/2 ]
 *         [ 0 -1  1  0 ]                         [  0    0    1 ]
 *         [ 0  1  0 -1 ]
 * U is winograd_weights' (below).
 * Summed over input channels, the 16 elementwise products become 16 GEMMs, done in numpy:
 * M[e] = U[e] (K x C) . V[e] (C x tiles), e = 4 * i + j the entry of the 4x4 transform.
 *
 * Tiles are numbered over the whole batch, t = (n * tiles_h + ty) * tiles_w + tx; a kernel call
 * takes tiles [t0, t1), whose V or M columns are t - t0, the work of one block. The tiles past
 * an odd output size read zero padding and their extra outputs are dropped.
 */

/* Kernels [q0, q1) of w (count, 3, 3) -> U (16, count) planes: U[e][q] = (G g_q G^T)[e], as G's
 * halved row sums of g, then the same on the columns of G g. A chunk of kernels at a time into
 * `buf`, then its 16 rows copied out, one plane after another: a loop that stored each kernel's
 * 16 entries straight into the 16 planes, each a plane (K * C entries) from the last, ran at
 * 2.8x the time of numpy's GEMM by the 16 x 9 map; this one at 0.4x (256 x 256 kernels). */
#define WINO_WEIGHT_CHUNK 256
static void NAME(winograd_weights)(const T *restrict w, T *restrict U, long count, long q0, long q1)
{
    T buf[16][WINO_WEIGHT_CHUNK];
    for (long q = q0; q < q1; q += WINO_WEIGHT_CHUNK) {
        const long n = q1 - q < WINO_WEIGHT_CHUNK ? q1 - q : WINO_WEIGHT_CHUNK;
        const T *restrict g = w + 9 * q;
        for (long i = 0; i < n; i++) {
            const T *restrict k = g + 9 * i;
            T h[4][3];          /* G g: tap row 0, the halved sums of rows (0 + 1 + 2) and (0 - 1 + 2), row 2 */
            for (int j = 0; j < 3; j++) {
                h[0][j] = k[j];
                h[1][j] = (k[j] + k[3 + j] + k[6 + j]) * (T)0.5;
                h[2][j] = (k[j] - k[3 + j] + k[6 + j]) * (T)0.5;
                h[3][j] = k[6 + j];
            }
            for (int r = 0; r < 4; r++) {     /* (G g) G^T: the same on each row's three columns */
                buf[4 * r][i] = h[r][0];
                buf[4 * r + 1][i] = (h[r][0] + h[r][1] + h[r][2]) * (T)0.5;
                buf[4 * r + 2][i] = (h[r][0] - h[r][1] + h[r][2]) * (T)0.5;
                buf[4 * r + 3][i] = h[r][2];
            }
        }
        for (int e = 0; e < 16; e++)
            memcpy(U + e * count + q, buf[e], n * sizeof(T));
    }
}

/* e[k] = row[2k - pw] and o[k] = row[2k + 1 - pw] for k in [k0, k1], zero off the row (NULL: all). */
static void NAME(wino_split_row)(const T *row, long w, long pw, long k0, long k1, T *e, T *o)
{
    if (!row) {
        for (long k = k0; k <= k1; k++)
            e[k] = o[k] = 0;
        return;
    }
    /* [lo, hi): the k whose two columns are both on the row */
    long lo = (pw + 1) / 2, hi = w + pw >= 2 ? (w + pw - 2) / 2 + 1 : 0;
    if (lo < k0) lo = k0;
    if (hi > k1 + 1) hi = k1 + 1;
    if (hi < lo) hi = lo;
    for (long k = k0; k < lo; k++) {
        const long xe = 2 * k - pw, xo = xe + 1;
        e[k] = xe >= 0 && xe < w ? row[xe] : 0;
        o[k] = xo >= 0 && xo < w ? row[xo] : 0;
    }
    const T *r = row - pw;
    for (long k = lo; k < hi; k++) {
        e[k] = r[2 * k];
        o[k] = r[2 * k + 1];
    }
    for (long k = hi; k <= k1; k++) {
        const long xe = 2 * k - pw, xo = xe + 1;
        e[k] = xe >= 0 && xe < w ? row[xe] : 0;
        o[k] = xo >= 0 && xo < w ? row[xo] : 0;
    }
}

/* The 4 entries of row i of B^T d B from row i of B^T d, for `count` tiles side by side: a tile's
 * 4 columns are e[k], o[k], e[k + 1], o[k + 1]; entry j goes to v[j * ldv + k]. */
static void NAME(wino_columns)(const T *restrict e, const T *restrict o, long count, T *restrict v, long ldv)
{
    T *restrict v0 = v, *restrict v1 = v + ldv, *restrict v2 = v + 2 * ldv, *restrict v3 = v + 3 * ldv;
    for (long k = 0; k < count; k++) {
        v0[k] = e[k] - e[k + 1];
        v1[k] = o[k] + e[k + 1];
        v2[k] = e[k + 1] - o[k];
        v3[k] = o[k] - o[k + 1];
    }
}

/* Input tiles [t0, t1) of x (N, C, h, w) -> V (16, C, t1 - t0). work: 8 * (tiles_w + 1) T.
 * Channel by channel, each channel's tiles row by row: V's 16 rows of a channel are then written
 * from the block's first tile to its last, where a loop over the channels inside each tile row
 * wrote 16 short runs per channel and row (0.84-0.98 of the time, blocks of 128 tiles of
 * ResNet-50's four map sizes at batch 10, 1 thread; the same bits). */
static void NAME(winograd_input)(const T *x, T *V, const WinoGeom *g, long t0, long t1, T *work)
{
    const long C = g->channels, tb = t1 - t0, per_image = g->th * g->tw;
    const long plane = g->h * g->w, ldv = C * tb;
    /* The patch rows' even and odd input columns, e[i][k] = row_i[2k - pw], o[i][k] = row_i[2k + 1 - pw]:
     * a tile's 4 columns are then e[k], o[k], e[k + 1], o[k + 1], and a loop over tiles reads
     * every array contiguously. */
    T *e[4], *o[4];
    for (int i = 0; i < 4; i++) {
        e[i] = work + (2 * i) * (g->tw + 1);
        o[i] = work + (2 * i + 1) * (g->tw + 1);
    }
    for (long c = 0; c < C; c++) {
        for (long t = t0; t < t1;) {
            const long n = t / per_image, ty = (t % per_image) / g->tw, tx0 = t % g->tw;
            const long tx1 = (t1 - t < g->tw - tx0) ? tx0 + (t1 - t) : g->tw;   /* this tile row's part */
            const long count = tx1 - tx0, col = t - t0;
            const T *image = x + (n * C + c) * plane;
            for (int i = 0; i < 4; i++) {
                const long y = 2 * ty - g->ph + i;
                NAME(wino_split_row)(y >= 0 && y < g->h ? image + y * g->w : NULL, g->w, g->pw, tx0, tx1, e[i], o[i]);
            }
            /* B^T d: combine the rows; then (B^T d) B: combine the columns, into V's 16 planes. */
            T *v = V + c * tb + col;
            for (int p = 0; p < 2; p++) {
                T *const *r = p ? o : e;
                T *r0 = r[0] + tx0, *r1 = r[1] + tx0, *r2 = r[2] + tx0, *r3 = r[3] + tx0;
                for (long k = 0; k <= count; k++) {
                    const T a = r0[k], b = r1[k], c2 = r2[k], d = r3[k];
                    r0[k] = a - c2; r1[k] = b + c2; r2[k] = c2 - b; r3[k] = b - d;
                }
            }
            for (int i = 0; i < 4; i++)
                NAME(wino_columns)(e[i] + tx0, o[i] + tx0, count, v + 4 * i * ldv, ldv);
            t += count;
        }
    }
}

/* Output row r (0 or 1) of A^T m A for `count` tiles side by side, plus b: m[e * ldm + q] is
 * entry e of tile q; the first `full` tiles write both their columns, the rest (an odd
 * width's last tile) the first only. */
static void NAME(wino_output_row)(const T *restrict m, long ldm, long count, long full, T b, T *restrict out,
                                  int r)
{
    /* A^T m: row r combines rows (0, 1, 2) with signs (+, +, +) or rows (1, 2, 3) with (+, -, -) */
    const T *restrict a0 = m + (r ? 4 : 0) * ldm, *restrict a1 = m + (r ? 8 : 4) * ldm;
    const T *restrict a2 = m + (r ? 12 : 8) * ldm;
    const T sign = r ? -1 : 1;
    for (long q = 0; q < full; q++) {
        const T s0 = a0[q] + a1[q] * sign + a2[q] * sign, s1 = a0[ldm + q] + a1[ldm + q] * sign + a2[ldm + q] * sign;
        const T s2 = a0[2 * ldm + q] + a1[2 * ldm + q] * sign + a2[2 * ldm + q] * sign;
        const T s3 = a0[3 * ldm + q] + a1[3 * ldm + q] * sign + a2[3 * ldm + q] * sign;
        out[2 * q] = s0 + s1 + s2 + b;
        out[2 * q + 1] = s1 - s2 - s3 + b;
    }
    for (long q = full; q < count; q++) {
        const T s0 = a0[q] + a1[q] * sign + a2[q] * sign, s1 = a0[ldm + q] + a1[ldm + q] * sign + a2[ldm + q] * sign;
        const T s2 = a0[2 * ldm + q] + a1[2 * ldm + q] * sign + a2[2 * ldm + q] * sign;
        out[2 * q] = s0 + s1 + s2 + b;
    }
}

/* M (16, K, t1 - t0) of tiles [t0, t1) -> their outputs in y (N, K, oh, ow), plus bias (or NULL).
 * The 2x2 outputs of tile column q: row r, column x = 2 * (tx0 + q) + s. */
static void NAME(winograd_output)(const T *M, T *y, const T *bias, const WinoGeom *g, long t0, long t1)
{
    const long K = g->channels, tb = t1 - t0, per_image = g->th * g->tw;
    const long plane = g->oh * g->ow, ldm = K * tb;
    for (long t = t0; t < t1;) {
        const long n = t / per_image, ty = (t % per_image) / g->tw, tx0 = t % g->tw;
        const long tx1 = (t1 - t < g->tw - tx0) ? tx0 + (t1 - t) : g->tw;
        const long count = tx1 - tx0, col = t - t0;
        /* tiles whose two output columns are both inside (all but an odd width's last) */
        const long full = 2 * tx1 <= g->ow ? count : count - 1;
        const int two_rows = 2 * ty + 1 < g->oh;
        for (long k = 0; k < K; k++) {
            T *row0 = y + (n * K + k) * plane + 2 * ty * g->ow + 2 * tx0;
            const T *m = M + k * tb + col, b = bias ? bias[k] : 0;
            NAME(wino_output_row)(m, ldm, count, full, b, row0, 0);
            if (two_rows)
                NAME(wino_output_row)(m, ldm, count, full, b, row0 + g->ow, 1);
        }
        t += count;
    }
}
