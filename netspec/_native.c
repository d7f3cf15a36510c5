/* netspec._native: the few loops numpy cannot do in one pass, compiled.
 *
 * im2col/col2im for convolution, max/average pooling, ROIPooling, and the per-channel affine maps of
 * BatchNorm and Scale, on NCHW float32 or float64 arrays handed over through the buffer
 * protocol (no numpy headers needed to build).
 * netspec/layers/native.py wraps them and checks shapes; numpy versions of every
 * kernel remain, used when this module is not built (see pyproject.toml / setup.py).
 * The GIL is released while a kernel runs, so data prefetch threads keep going.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>

/* Bumped when a kernel's arguments change, so a stale build is not used. */
#define NATIVE_ABI 5

/* One window geometry: an image of `channels` x h x w seen by a kh x kw kernel. */
typedef struct {
    long channels, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow;
} Geom;

/* Winograd tiling (_winograd_body.h): `channels` planes of h x w in, oh x ow out, in tiles_h x
 * tiles_w tiles of 2x2 outputs per image; ph, pw the convolution's padding. */
typedef struct {
    long channels, h, w, ph, pw, oh, ow, th, tw;
} WinoGeom;

/* Output columns k in [lo, hi) whose input column x0 + k * s lies inside [0, w). */
static void valid_range(long x0, long s, long w, long ow, long *lo, long *hi)
{
    *lo = x0 >= 0 ? 0 : (-x0 + s - 1) / s;
    *hi = x0 > w - 1 ? 0 : (w - 1 - x0) / s + 1;
    if (*hi > ow) *hi = ow;
    if (*lo > *hi) *lo = *hi;
}

/* The pooling window of output o along one axis: [*lo, *hi) is its part inside the image;
 * the return value its length clipped to the padded image (Caffe's average divisor). */
static long window(long o, long stride, long pad, long kernel, long size, long *lo, long *hi)
{
    long start = o * stride - pad, end = start + kernel;
    if (end > size + pad) end = size + pad;
    *lo = start < 0 ? 0 : start;
    *hi = end > size ? size : end;
    return end - start;
}

/* Whether kernel row i reads only image rows (no padding) for every output row. */
static int ys_inside(const Geom *g, long i)
{
    long first = i * g->dh - g->ph, last = first + (g->oh - 1) * g->sh;
    return first >= 0 && last < g->h;
}

/* depthwise_forward's scratch (elements of the data's type): a bh x bw plane, big enough that the
 * windows of `wide` output columns (ow rounded up to 8, whole vectors) all lie inside it (bw even
 * for stride 2, whose rows are split in two halves), then a row of `wide` outputs. */
static long depthwise_buffer(const Geom *g, long *bh, long *bw, long *wide)
{
    *wide = (g->ow + 7) / 8 * 8;
    *bh = (g->oh - 1) * g->sh + (g->kh - 1) * g->dh + 1;
    *bw = (*wide - 1) * g->sw + (g->kw - 1) * g->dw + 1;
    if (g->sw == 2)
        *bw += *bw & 1;
    return *bh * *bw + *wide;
}

/* x / 2 rounded down, for either sign. */
static long half_down(long x)
{
    return x >= 0 ? x / 2 : -((1 - x) / 2);
}

/* depthwise_backward_data_s2's scratch (elements): a rows x bw copy of a top diff plane inside a
 * border of zeros, output row oy at row oy - oy0 and column k at k - k0 (oy0, k0 <= 0), as far as
 * any input row of `pairs` column pairs (w / 2 rounded up to whole vectors) reads; then a row of
 * 2 * pairs elements. */
static long depthwise_data_buffer(const Geom *g, long *oy0, long *k0, long *rows, long *bw, long *pairs)
{
    const long top = half_down(g->ph - (g->kh - 1) * g->dh), bottom = half_down(g->h - 1 + g->ph);
    *pairs = ((g->w + 1) / 2 + 7) / 8 * 8;
    *oy0 = top < 0 ? top : 0;
    *rows = (bottom > g->oh - 1 ? bottom : g->oh - 1) - *oy0 + 1;
    const long left = -half_down((g->kw - 1) * g->dw - g->pw), right = *pairs - 1 - half_down(-g->pw);
    *k0 = left < 0 ? left : 0;
    *bw = (right > g->ow - 1 ? right : g->ow - 1) - *k0 + 1;
    return *rows * *bw + 2 * *pairs;
}

/* The geometry under which depthwise backward data is a forward correlation of the top diff
 * (_depthwise_body.h, depthwise_backward_data_as_forward): stride 1, no dilation, one output per
 * channel, padding below the kernel size. 0 when the layer is not of that kind. */
static int transposed_geom(const Geom *g, long m, Geom *gt)
{
    if (g->sh != 1 || g->sw != 1 || g->dh != 1 || g->dw != 1 || m != 1 || g->ph > g->kh - 1 || g->pw > g->kw - 1)
        return 0;
    *gt = *g;
    gt->h = g->oh;
    gt->w = g->ow;
    gt->ph = g->kh - 1 - g->ph;
    gt->pw = g->kw - 1 - g->pw;
    gt->oh = g->h;
    gt->ow = g->w;
    return 1;
}

#define T float
#define NAME(x) x##_f32
#include "_native_body.h"
#include "_depthwise_body.h"
#include "_winograd_body.h"
#undef T
#undef NAME
#define T double
#define NAME(x) x##_f64
#include "_native_body.h"
#include "_depthwise_body.h"
#include "_winograd_body.h"
#undef T
#undef NAME

/* With GCC on x86 every kernel is compiled a second time for AVX2 (suffix _avx2), and PICK
 * chooses that copy at run time when the CPU has it: the build stays SSE2-only (runs
 * anywhere), and the same loops vectorise twice as wide where they can. Only "avx2", never
 * "fma": with -ffp-contract=off neither copy fuses a multiply into an add, and neither
 * reassociates, so both give the same bits (tests/test_native_isa.py holds them to it).
 * A pragma over the included bodies rather than target_clones on each kernel: one line
 * covers every kernel and its inlined helpers, and a test can run both copies in one process. */
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_AVX2_COPY 1
#pragma GCC push_options
#pragma GCC target("avx2")
#define T float
#define NAME(x) x##_f32_avx2
#include "_native_body.h"
#include "_depthwise_body.h"
#include "_winograd_body.h"
#undef T
#undef NAME
#define T double
#define NAME(x) x##_f64_avx2
#include "_native_body.h"
#include "_depthwise_body.h"
#include "_winograd_body.h"
#undef T
#undef NAME
#pragma GCC pop_options
#endif

/* Whether the kernels run their AVX2 copies (set at import from the CPU, see set_isa). */
static int use_avx2 = 0;

/* PICK_WHERE(kernel, wide): the AVX2 copy only where `wide` holds, for the cases where gcc's
 * 8-lane code measured slower than its 4-lane code (see the calls). */
#ifdef HAVE_AVX2_COPY
#define PICK_WHERE(kernel, wide) (use_avx2 && (wide) ? kernel##_avx2 : kernel)
#else
#define PICK_WHERE(kernel, wide) kernel
#endif
#define PICK(kernel) PICK_WHERE(kernel, 1)

/* ---- argument handling ---- */

enum { KIND_F32, KIND_F64, KIND_I32 };

/* A C-contiguous buffer of `obj` holding at least `need` items of `kind`. */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, int kind, Py_ssize_t need, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    char code = f[strlen(f) - 1];
    int ok = (kind == KIND_F32 && code == 'f' && view->itemsize == 4)
          || (kind == KIND_F64 && code == 'd' && view->itemsize == 8)
          || (kind == KIND_I32 && (code == 'i' || code == 'l') && view->itemsize == 4);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: wrong element type '%s'", what, f);
    } else if (view->len / view->itemsize < need) {
        PyErr_Format(PyExc_ValueError, "%s: %zd elements, need %zd", what, view->len / view->itemsize, need);
        ok = 0;
    }
    if (!ok) {
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* float32 or float64, from the first array's element size. */
static int float_kind(PyObject *obj, int *kind)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_ND) < 0)
        return -1;
    *kind = view.itemsize == 8 ? KIND_F64 : KIND_F32;
    PyBuffer_Release(&view);
    return 0;
}

#define GEOM_FORMAT "(lllllllllllll)"
#define GEOM_ARGS(g) &g.channels, &g.h, &g.w, &g.kh, &g.kw, &g.sh, &g.sw, &g.ph, &g.pw, &g.dh, &g.dw, &g.oh, &g.ow

static int check_geom(const Geom *g)
{
    if (g->channels < 0 || g->h <= 0 || g->w <= 0 || g->kh <= 0 || g->kw <= 0 || g->sh <= 0 || g->sw <= 0
        || g->ph < 0 || g->pw < 0 || g->dh <= 0 || g->dw <= 0 || g->oh <= 0 || g->ow <= 0) {
        PyErr_SetString(PyExc_ValueError, "bad window geometry");
        return -1;
    }
    return 0;
}

/* im2col(image, cols, geom, n0, n1, ld, nstride) or col2im(cols, image, ...): see _native_body.h. */
static PyObject *columns(PyObject *args, int to_image)
{
    PyObject *image_obj, *col_obj;
    Geom g;
    long n0, n1, ld, nstride;
    if (!PyArg_ParseTuple(args, "OO" GEOM_FORMAT "llll", to_image ? &col_obj : &image_obj,
                          to_image ? &image_obj : &col_obj, GEOM_ARGS(g), &n0, &n1, &ld, &nstride))
        return NULL;
    if (check_geom(&g) < 0)
        return NULL;
    const long P = g.oh * g.ow, rows = g.channels * g.kh * g.kw;
    /* Rows and samples may interleave either way, but entries must not overlap. */
    int side_by_side = nstride >= P && ld >= (n1 - n0) * nstride;
    int stacked = ld >= P && nstride >= rows * ld;
    if (n0 < 0 || n1 < n0 || !(side_by_side || stacked)) {
        PyErr_SetString(PyExc_ValueError, "bad sample range or column layout");
        return NULL;
    }
    int kind;
    if (float_kind(image_obj, &kind) < 0)
        return NULL;
    Py_buffer image, col;
    Py_ssize_t need = (rows && n1 > n0) ? (rows - 1) * ld + (n1 - n0 - 1) * nstride + P : 0;
    if (get_buffer(image_obj, &image, to_image, kind, n1 * g.channels * g.h * g.w, "image") < 0)
        return NULL;
    if (get_buffer(col_obj, &col, !to_image, kind, need, "columns") < 0) {
        PyBuffer_Release(&image);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64) {
        if (to_image) PICK(col2im_f64)(col.buf, image.buf, &g, n0, n1, ld, nstride);
        else PICK(im2col_f64)(image.buf, col.buf, &g, n0, n1, ld, nstride);
    } else {
        if (to_image) PICK(col2im_f32)(col.buf, image.buf, &g, n0, n1, ld, nstride);
        else PICK(im2col_f32)(image.buf, col.buf, &g, n0, n1, ld, nstride);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&image);
    PyBuffer_Release(&col);
    Py_RETURN_NONE;
}

static PyObject *py_im2col(PyObject *self, PyObject *args) { return columns(args, 0); }
static PyObject *py_col2im(PyObject *self, PyObject *args) { return columns(args, 1); }

/* Pooling: forward(x, y[, argmax], geom, planes) and backward(dy[, argmax], dx, geom, planes).
 * Max forward takes None for argmax when only the maxima are wanted. */
static PyObject *pool(PyObject *args, int is_max, int backward)
{
    PyObject *a_obj, *b_obj, *idx_obj = NULL;
    Geom g;
    long planes;
    int parsed = is_max
        ? PyArg_ParseTuple(args, "OOO" GEOM_FORMAT "l", &a_obj, backward ? &idx_obj : &b_obj,
                           backward ? &b_obj : &idx_obj, GEOM_ARGS(g), &planes)
        : PyArg_ParseTuple(args, "OO" GEOM_FORMAT "l", &a_obj, &b_obj, GEOM_ARGS(g), &planes);
    if (!parsed || check_geom(&g) < 0)
        return NULL;
    if (planes < 0) {
        PyErr_SetString(PyExc_ValueError, "bad plane count");
        return NULL;
    }
    /* forward: a = x (image), b = y (pooled); backward: a = dy (pooled), b = dx (image). */
    Py_ssize_t image = planes * g.h * g.w, pooled = planes * g.oh * g.ow;
    int kind;
    if (float_kind(a_obj, &kind) < 0)
        return NULL;
    Py_buffer a, b, idx;
    if (get_buffer(a_obj, &a, 0, kind, backward ? pooled : image, backward ? "top diff" : "bottom") < 0)
        return NULL;
    if (get_buffer(b_obj, &b, 1, kind, backward ? image : pooled, backward ? "bottom diff" : "top") < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    const int with_idx = is_max && !(idx_obj == Py_None && !backward);
    if (with_idx && get_buffer(idx_obj, &idx, !backward, KIND_I32, pooled, "argmax") < 0) {
        PyBuffer_Release(&a);
        PyBuffer_Release(&b);
        return NULL;
    }
    long outside = 0;   /* argmax entries outside their plane (max backward): skipped, then an error */
    /* Max pooling's maxima alone at stride 2: gcc gathers every other column with two cross-lane
     * permutes per tap in 8 lanes, one shuffle in 4; the AVX2 copy took 4.0 ms where SSE2 took 3.4
     * (3x3, 10x64x112). With argmax the AVX2 copy is the faster (6.6 against 7.6 ms). */
    const int wide_max = with_idx || g.sw != 2;
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64) {
        if (is_max && !backward) PICK_WHERE(max_pool_f64, wide_max)(a.buf, b.buf, with_idx ? idx.buf : NULL, planes, &g);
        else if (is_max) outside = PICK(max_unpool_f64)(a.buf, idx.buf, b.buf, planes, &g);
        else if (!backward) PICK(ave_pool_f64)(a.buf, b.buf, planes, &g);
        else PICK(ave_unpool_f64)(a.buf, b.buf, planes, &g);
    } else {
        if (is_max && !backward) PICK_WHERE(max_pool_f32, wide_max)(a.buf, b.buf, with_idx ? idx.buf : NULL, planes, &g);
        else if (is_max) outside = PICK(max_unpool_f32)(a.buf, idx.buf, b.buf, planes, &g);
        else if (!backward) PICK(ave_pool_f32)(a.buf, b.buf, planes, &g);
        else PICK(ave_unpool_f32)(a.buf, b.buf, planes, &g);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    if (with_idx)
        PyBuffer_Release(&idx);
    if (outside)
        return PyErr_Format(PyExc_ValueError, "%ld argmax entries out of range", outside);
    Py_RETURN_NONE;
}

static PyObject *py_max_pool(PyObject *self, PyObject *args) { return pool(args, 1, 0); }
static PyObject *py_max_unpool(PyObject *self, PyObject *args) { return pool(args, 1, 1); }
static PyObject *py_ave_pool(PyObject *self, PyObject *args) { return pool(args, 0, 0); }
static PyObject *py_ave_unpool(PyObject *self, PyObject *args) { return pool(args, 0, 1); }

/* Release the first `n` buffers of `views`. */
static void release_all(Py_buffer *views, int n)
{
    for (int i = 0; i < n; i++)
        PyBuffer_Release(&views[i]);
}

/* One array of a per-channel kernel over (outer, channels, inner) data. */
typedef struct {
    const char *what;
    int per_channel;    /* one value per channel, else one per element */
    int writable;
    int f64;            /* float64 whatever the data's type */
} ArraySpec;

/* Buffers for the n arrays of a per-channel kernel; *kind from the first. Nothing stays held on failure. */
static int channel_buffers(PyObject **obj, const ArraySpec *spec, int n, long outer, long channels, long inner,
                           int *kind, Py_buffer *v)
{
    if (outer < 0 || channels < 0 || inner < 0) {
        PyErr_SetString(PyExc_ValueError, "bad shape");
        return -1;
    }
    if (float_kind(obj[0], kind) < 0)
        return -1;
    for (int i = 0; i < n; i++) {
        Py_ssize_t need = spec[i].per_channel ? channels : outer * channels * inner;
        if (get_buffer(obj[i], &v[i], spec[i].writable, spec[i].f64 ? KIND_F64 : *kind, need, spec[i].what) < 0) {
            release_all(v, i);
            return -1;
        }
    }
    return 0;
}

/* channel_affine(x, y, a, b, outer, channels, inner, standardise): see _native_body.h. */
static PyObject *py_channel_affine(PyObject *self, PyObject *args)
{
    static const ArraySpec spec[4] = {{"bottom", 0, 0, 0}, {"top", 0, 1, 0}, {"a", 1, 0, 0}, {"b", 1, 0, 0}};
    PyObject *obj[4];
    long outer, channels, inner;
    int standardise, kind;
    Py_buffer v[4];
    if (!PyArg_ParseTuple(args, "OOOOlllp", &obj[0], &obj[1], &obj[2], &obj[3], &outer, &channels, &inner,
                          &standardise)
        || channel_buffers(obj, spec, 4, outer, channels, inner, &kind, v) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64)
        PICK(channel_affine_f64)(v[0].buf, v[1].buf, v[2].buf, v[3].buf, outer, channels, inner, standardise);
    else
        PICK(channel_affine_f32)(v[0].buf, v[1].buf, v[2].buf, v[3].buf, outer, channels, inner, standardise);
    Py_END_ALLOW_THREADS
    release_all(v, 4);
    Py_RETURN_NONE;
}

/* lrn_across(x, y, scale, outer, channels, inner, n0, n1, p0, p1, size, coeff, k, beta): see
 * _native_body.h; scale may be None. */
static PyObject *py_lrn_across(PyObject *self, PyObject *args)
{
    static const ArraySpec spec[3] = {{"bottom", 0, 0, 0}, {"top", 0, 1, 0}, {"scale", 0, 1, 0}};
    PyObject *obj[3];
    long outer, channels, inner, n0, n1, p0, p1, size;
    double coeff, k, beta;
    int kind;
    Py_buffer v[3];
    if (!PyArg_ParseTuple(args, "OOOllllllllddd", &obj[0], &obj[1], &obj[2], &outer, &channels, &inner, &n0, &n1,
                          &p0, &p1, &size, &coeff, &k, &beta))
        return NULL;
    if (n0 < 0 || n1 < n0 || n1 > outer || p0 < 0 || p1 < p0 || p1 > inner || size < 1 || size % 2 == 0) {
        PyErr_SetString(PyExc_ValueError, "bad lrn_across range or size");
        return NULL;
    }
    const int with_scale = obj[2] != Py_None;
    if (channel_buffers(obj, spec, with_scale ? 3 : 2, outer, channels, inner, &kind, v) < 0)
        return NULL;
    const size_t elem = kind == KIND_F64 ? sizeof(double) : sizeof(float);
    void *ring = PyMem_RawMalloc(size * 256 * elem);
    if (!ring) {
        release_all(v, with_scale ? 3 : 2);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64)
        PICK(lrn_across_f64)(v[0].buf, v[1].buf, with_scale ? v[2].buf : NULL, channels, inner, n0, n1, p0, p1, size,
                             coeff, k, beta, ring);
    else
        PICK(lrn_across_f32)(v[0].buf, v[1].buf, with_scale ? v[2].buf : NULL, channels, inner, n0, n1, p0, p1, size,
                             (float)coeff, (float)k, (float)beta, ring);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(ring);
    release_all(v, with_scale ? 3 : 2);
    Py_RETURN_NONE;
}

/* channel_sums(dy, x, sum_dy, sum_dyx, outer, channels, inner): float64 sums, see _native_body.h. */
static PyObject *py_channel_sums(PyObject *self, PyObject *args)
{
    static const ArraySpec spec[4] = {{"dy", 0, 0, 0}, {"x", 0, 0, 0}, {"sum_dy", 1, 1, 1}, {"sum_dyx", 1, 1, 1}};
    PyObject *obj[4];
    long outer, channels, inner;
    int kind;
    Py_buffer v[4];
    if (!PyArg_ParseTuple(args, "OOOOlll", &obj[0], &obj[1], &obj[2], &obj[3], &outer, &channels, &inner)
        || channel_buffers(obj, spec, 4, outer, channels, inner, &kind, v) < 0)
        return NULL;
    /* The SSE2 copy: in AVX2 gcc vectorises the block loop across blocks, transposing the eight
     * partial sums (5.5 ms against 3.8 for 10x128x3136). */
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64)
        PICK_WHERE(channel_sums_f64, 0)(v[0].buf, v[1].buf, v[2].buf, v[3].buf, outer, channels, inner);
    else
        PICK_WHERE(channel_sums_f32, 0)(v[0].buf, v[1].buf, v[2].buf, v[3].buf, outer, channels, inner);
    Py_END_ALLOW_THREADS
    release_all(v, 4);
    Py_RETURN_NONE;
}

/* batch_norm_grad(dy, y, mean_dy, mean_dyy, std, dx, outer, channels, inner): see _native_body.h. */
static PyObject *py_batch_norm_grad(PyObject *self, PyObject *args)
{
    static const ArraySpec spec[6] = {{"dy", 0, 0, 0}, {"y", 0, 0, 0}, {"mean_dy", 1, 0, 0},
                                      {"mean_dyy", 1, 0, 0}, {"std", 1, 0, 0}, {"dx", 0, 1, 0}};
    PyObject *obj[6];
    long outer, channels, inner;
    int kind;
    Py_buffer v[6];
    if (!PyArg_ParseTuple(args, "OOOOOOlll", &obj[0], &obj[1], &obj[2], &obj[3], &obj[4], &obj[5], &outer,
                          &channels, &inner)
        || channel_buffers(obj, spec, 6, outer, channels, inner, &kind, v) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64)
        PICK(batch_norm_grad_f64)(v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[5].buf, outer, channels, inner);
    else
        PICK(batch_norm_grad_f32)(v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[5].buf, outer, channels, inner);
    Py_END_ALLOW_THREADS
    release_all(v, 6);
    Py_RETURN_NONE;
}

/* chain_backward(dy, y, x, a, std, dx, sum_g, sum_gx, sum_a, sum_ax, outer, channels, inner, relu,
 * standardise): see _native_body.h; std may be None when not standardise, sum_a and sum_ax both None. */
static PyObject *py_chain_backward(PyObject *self, PyObject *args)
{
    static const ArraySpec spec[10] = {{"dy", 0, 0, 0}, {"y", 0, 0, 0}, {"x", 0, 0, 0}, {"a", 1, 0, 0},
                                       {"dx", 0, 1, 0}, {"sum_g", 1, 1, 1}, {"sum_gx", 1, 1, 1},
                                       {"std", 1, 0, 0}, {"sum_a", 1, 1, 1}, {"sum_ax", 1, 1, 1}};
    PyObject *obj[10];
    long outer, channels, inner;
    int relu, standardise, kind;
    Py_buffer v[10];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOlllpp", &obj[0], &obj[1], &obj[2], &obj[3], &obj[7], &obj[4], &obj[5],
                          &obj[6], &obj[8], &obj[9], &outer, &channels, &inner, &relu, &standardise)
        || channel_buffers(obj, spec, 7, outer, channels, inner, &kind, v) < 0)
        return NULL;
    /* The optional ones: std when standardising, the two BatchNorm sums when given. */
    const int with_sums = obj[8] != Py_None;
    int held = 7;
    for (int i = 7; i < 10; i++) {
        if ((i == 7 && !standardise) || (i > 7 && !with_sums))
            continue;
        if (get_buffer(obj[i], &v[held], spec[i].writable, spec[i].f64 ? KIND_F64 : kind, channels, spec[i].what) < 0) {
            release_all(v, held);
            return NULL;
        }
        held++;
    }
    const void *s = standardise ? v[7].buf : NULL;
    double *sa = with_sums ? v[held - 2].buf : NULL, *sax = with_sums ? v[held - 1].buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64)
        PICK(chain_backward_f64)(v[0].buf, v[1].buf, v[2].buf, v[3].buf, s, v[4].buf, v[5].buf, v[6].buf, sa, sax,
                                 outer, channels, inner, relu, standardise);
    else
        PICK(chain_backward_f32)(v[0].buf, v[1].buf, v[2].buf, v[3].buf, s, v[4].buf, v[5].buf, v[6].buf, sa, sax,
                                 outer, channels, inner, relu, standardise);
    Py_END_ALLOW_THREADS
    release_all(v, held);
    Py_RETURN_NONE;
}

/* roi_pool(x, top, argmax, bins, rois, channels, h, w, pooled_h, pooled_w): see _native_body.h. */
static PyObject *py_roi_pool(PyObject *self, PyObject *args)
{
    PyObject *x_obj, *top_obj, *arg_obj, *bins_obj;
    long rois, channels, h, w, pooled_h, pooled_w;
    if (!PyArg_ParseTuple(args, "OOOOllllll", &x_obj, &top_obj, &arg_obj, &bins_obj, &rois, &channels, &h, &w,
                          &pooled_h, &pooled_w))
        return NULL;
    if (rois < 0 || channels < 0 || h <= 0 || w <= 0 || pooled_h <= 0 || pooled_w <= 0) {
        PyErr_SetString(PyExc_ValueError, "bad roi pooling shape");
        return NULL;
    }
    const long stride = 1 + 2 * (pooled_h + pooled_w), out = rois * channels * pooled_h * pooled_w;
    int kind;
    if (float_kind(x_obj, &kind) < 0)
        return NULL;
    Py_buffer v[4];
    if (get_buffer(bins_obj, &v[3], 0, KIND_I32, rois * stride, "bins") < 0)
        return NULL;
    /* The bins must stay inside the map and name an image of x (the caller clips them). */
    const int32_t *bins = v[3].buf;
    long images = 0;
    int bad = 0;
    for (long r = 0; r < rois && !bad; r++) {
        const int32_t *b = bins + r * stride;
        bad = b[0] < 0;
        if (b[0] + 1L > images) images = b[0] + 1L;
        for (long k = 1; k < stride; k++)
            bad |= b[k] < 0 || b[k] > (k <= 2 * pooled_h ? h : w);
    }
    if (bad) {
        PyBuffer_Release(&v[3]);
        PyErr_SetString(PyExc_ValueError, "roi bins outside the map");
        return NULL;
    }
    if (get_buffer(x_obj, &v[0], 0, kind, images * channels * h * w, "bottom") < 0) {
        release_all(v + 3, 1);
        return NULL;
    }
    if (get_buffer(top_obj, &v[1], 1, kind, out, "top") < 0) {
        PyBuffer_Release(&v[0]);
        PyBuffer_Release(&v[3]);
        return NULL;
    }
    if (get_buffer(arg_obj, &v[2], 1, KIND_I32, out, "argmax") < 0) {
        PyBuffer_Release(&v[0]);
        PyBuffer_Release(&v[1]);
        PyBuffer_Release(&v[3]);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64)
        PICK(roi_pool_f64)(v[0].buf, v[1].buf, v[2].buf, bins, rois, channels, h, w, pooled_h, pooled_w);
    else
        PICK(roi_pool_f32)(v[0].buf, v[1].buf, v[2].buf, bins, rois, channels, h, w, pooled_h, pooled_w);
    Py_END_ALLOW_THREADS
    release_all(v, 4);
    Py_RETURN_NONE;
}

/* Depthwise convolution (_depthwise_body.h), one entry point per direction:
 *   depthwise_forward(x, w, bias or None, y, geom, multiplier, num, start, stop)    output planes
 *   depthwise_backward_data(dy, w, None, dx, geom, multiplier, num, start, stop)   input planes
 *   depthwise_backward_weights(dy, x, None, dw, geom, multiplier, num, start, stop) output channels
 * geom's channels are the input channels; the last array is written. */
enum { DW_FORWARD, DW_DATA, DW_WEIGHTS };

static PyObject *depthwise(PyObject *args, int mode)
{
    PyObject *obj[4];
    Geom g;
    long m, num, start, stop;
    if (!PyArg_ParseTuple(args, "OOOO" GEOM_FORMAT "llll", &obj[0], &obj[1], &obj[2], &obj[3], GEOM_ARGS(g), &m,
                          &num, &start, &stop)
        || check_geom(&g) < 0)
        return NULL;
    const long K = g.kh * g.kw, outputs = g.channels * m;
    const long items = mode == DW_FORWARD ? num * outputs : mode == DW_DATA ? num * g.channels : outputs;
    if (m <= 0 || num < 0 || start < 0 || stop < start || stop > items) {
        PyErr_SetString(PyExc_ValueError, "bad depthwise multiplier, batch or range");
        return NULL;
    }
    const Py_ssize_t image = num * g.channels * g.h * g.w, grads = num * outputs * g.oh * g.ow;
    const Py_ssize_t weights = outputs * K;
    /* Sizes of the arrays in argument order, per mode; the bias (forward) may be None. */
    const Py_ssize_t need[3][4] = {{image, weights, outputs, grads}, {grads, weights, 0, image},
                                   {grads, image, 0, weights}};
    static const char *names[3][4] = {{"bottom", "weights", "bias", "top"}, {"top diff", "weights", "", "bottom diff"},
                                      {"top diff", "bottom", "", "weight diff"}};
    int kind;
    if (float_kind(obj[0], &kind) < 0)
        return NULL;
    Py_buffer v[4];
    int held[4] = {0};
    for (int i = 0; i < 4; i++) {
        if (i == 2 && (mode != DW_FORWARD || obj[2] == Py_None))
            continue;
        if (get_buffer(obj[i], &v[i], i == 3, kind, need[mode][i], names[mode][i]) < 0) {
            for (int k = 0; k < i; k++)
                if (held[k]) PyBuffer_Release(&v[k]);
            return NULL;
        }
        held[i] = 1;
    }
    const size_t elem = kind == KIND_F64 ? sizeof(double) : sizeof(float);
    long bh, bw, wide;
    /* Scratch: a zero-bordered plane, forward's and the weight gradient's (depthwise_buffer) or the
     * data gradient's, by halves (depthwise_data_buffer) or as a forward correlation; before it the
     * weight gradient's K doubles of sums and K tap offsets, or the correlation's C * K flipped
     * kernels; after it the weight gradient's copy of a top diff plane, oh x wide. */
    Geom gt;
    const int as_forward = mode == DW_DATA && transposed_geom(&g, m, &gt);
    const int halves = mode == DW_DATA && g.kh == 3 && g.kw == 3 && g.sh == 2 && g.sw == 2 && g.dh == 1 && g.dw == 1
                       && m == 1;
    long oy0, k0, rows, pairs;
    const size_t plane_bytes = mode != DW_DATA ? depthwise_buffer(&g, &bh, &bw, &wide) * elem
                             : as_forward ? depthwise_buffer(&gt, &bh, &bw, &wide) * elem
                             : halves ? depthwise_data_buffer(&g, &oy0, &k0, &rows, &bw, &pairs) * elem : 0;
    const size_t sums_bytes = mode == DW_WEIGHTS ? K * (sizeof(double) + sizeof(long))
                            : as_forward ? g.channels * K * elem : 0;
    const size_t grad_bytes = mode == DW_WEIGHTS ? g.oh * wide * elem : 0;
    const size_t scratch_bytes = sums_bytes + plane_bytes + grad_bytes + 1;
    char *acc = PyMem_RawCalloc(scratch_bytes, 1);
    if (!acc) {
        for (int k = 0; k < 4; k++)
            if (held[k]) PyBuffer_Release(&v[k]);
        return PyErr_NoMemory();
    }
    const void *bias = held[2] ? v[2].buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64) {
        if (mode == DW_FORWARD)
            PICK(depthwise_forward_f64)(v[0].buf, v[1].buf, bias, v[3].buf, &g, m, start, stop, (double *)acc);
        else if (as_forward)
            PICK(depthwise_backward_data_as_forward_f64)(v[0].buf, v[1].buf, v[3].buf, &g, &gt, start, stop,
                                                         (double *)acc + g.channels * K, (double *)acc);
        else if (halves)
            PICK(depthwise_backward_data_s2_f64)(v[0].buf, v[1].buf, v[3].buf, &g, start, stop,
                                                 (double *)(acc + sums_bytes));
        else if (mode == DW_DATA) PICK(depthwise_backward_data_f64)(v[0].buf, v[1].buf, v[3].buf, &g, m, start, stop);
        else PICK(depthwise_backward_weights_f64)(v[0].buf, v[1].buf, v[3].buf, &g, m, num, start, stop, (double *)acc,
                                                  (long *)(acc + K * sizeof(double)), (double *)(acc + sums_bytes),
                                                  (double *)(acc + sums_bytes + plane_bytes));
    } else {
        if (mode == DW_FORWARD)
            PICK(depthwise_forward_f32)(v[0].buf, v[1].buf, bias, v[3].buf, &g, m, start, stop, (float *)acc);
        else if (as_forward)
            PICK(depthwise_backward_data_as_forward_f32)(v[0].buf, v[1].buf, v[3].buf, &g, &gt, start, stop,
                                                         (float *)acc + g.channels * K, (float *)acc);
        else if (halves)
            PICK(depthwise_backward_data_s2_f32)(v[0].buf, v[1].buf, v[3].buf, &g, start, stop,
                                                 (float *)(acc + sums_bytes));
        else if (mode == DW_DATA) PICK(depthwise_backward_data_f32)(v[0].buf, v[1].buf, v[3].buf, &g, m, start, stop);
        else PICK(depthwise_backward_weights_f32)(v[0].buf, v[1].buf, v[3].buf, &g, m, num, start, stop, (double *)acc,
                                                  (long *)(acc + K * sizeof(double)), (float *)(acc + sums_bytes),
                                                  (float *)(acc + sums_bytes + plane_bytes));
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(acc);
    for (int k = 0; k < 4; k++)
        if (held[k]) PyBuffer_Release(&v[k]);
    Py_RETURN_NONE;
}

static PyObject *py_depthwise_forward(PyObject *self, PyObject *args) { return depthwise(args, DW_FORWARD); }
static PyObject *py_depthwise_data(PyObject *self, PyObject *args) { return depthwise(args, DW_DATA); }
static PyObject *py_depthwise_weights(PyObject *self, PyObject *args) { return depthwise(args, DW_WEIGHTS); }

/* channel_chain(x, y, m, s, a, b, outer, channels, inner, standardise, scale, relu, start, stop):
 * see _depthwise_body.h; m and s are read only when standardise, a and b only when scale (else None). */
static PyObject *py_channel_chain(PyObject *self, PyObject *args)
{
    PyObject *obj[7];
    long outer, channels, inner, start, stop;
    int flags[3], kind;
    if (!PyArg_ParseTuple(args, "OOOOOOOlllppp(ll)", &obj[0], &obj[1], &obj[2], &obj[3], &obj[4], &obj[5], &obj[6],
                          &outer, &channels, &inner, &flags[0], &flags[1], &flags[2], &start, &stop))
        return NULL;
    if (outer < 0 || channels <= 0 || inner < 0 || start < 0 || stop < start || stop > outer * channels) {
        PyErr_SetString(PyExc_ValueError, "bad shape or plane range");
        return NULL;
    }
    if (float_kind(obj[0], &kind) < 0)
        return NULL;
    static const char *names[7] = {"bottom", "top", "mean", "std", "scale", "bias", "keep"};
    Py_buffer v[7];
    int held[7] = {0};
    for (int i = 0; i < 7; i++) {
        if ((i == 2 || i == 3) && !flags[0])
            continue;
        if ((i == 4 || i == 5) && !flags[1])
            continue;
        if (i == 6 && obj[6] == Py_None)
            continue;
        const int whole = i < 2 || i == 6;
        if (get_buffer(obj[i], &v[i], i == 1 || i == 6, kind, whole ? outer * channels * inner : channels,
                       names[i]) < 0) {
            for (int k = 0; k < i; k++)
                if (held[k]) PyBuffer_Release(&v[k]);
            return NULL;
        }
        held[i] = 1;
    }
    const void *p[7];
    for (int i = 0; i < 7; i++)
        p[i] = held[i] ? v[i].buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64)
        PICK(channel_chain_f64)(p[0], (double *)p[1], p[2], p[3], p[4], p[5], (double *)p[6], channels, inner,
                                flags[0], flags[1], flags[2], start, stop);
    else
        PICK(channel_chain_f32)(p[0], (float *)p[1], p[2], p[3], p[4], p[5], (float *)p[6], channels, inner,
                                flags[0], flags[1], flags[2], start, stop);
    Py_END_ALLOW_THREADS
    for (int k = 0; k < 7; k++)
        if (held[k]) PyBuffer_Release(&v[k]);
    Py_RETURN_NONE;
}

/* Winograd F(2x2, 3x3) transforms (_winograd_body.h), over tiles [t0, t1) of the batch:
 *   winograd_input(x, V, geom, num, t0, t1)           x (num, C, h, w) -> V (16, C, t1 - t0)
 *   winograd_output(M, y, bias or None, geom, num, t0, t1)   M (16, K, t1 - t0) -> y (num, K, oh, ow)
 * geom = (channels, h, w, ph, pw, oh, ow, tiles_h, tiles_w): channels is C for the input, K for
 * the output transform. */
#define WINO_FORMAT "(lllllllll)"
#define WINO_ARGS(g) &g.channels, &g.h, &g.w, &g.ph, &g.pw, &g.oh, &g.ow, &g.th, &g.tw

static int check_wino(const WinoGeom *g, long num, long t0, long t1)
{
    if (g->channels <= 0 || g->h <= 0 || g->w <= 0 || g->ph < 0 || g->pw < 0 || g->oh <= 0 || g->ow <= 0
        || g->th != (g->oh + 1) / 2 || g->tw != (g->ow + 1) / 2 || g->oh != g->h + 2 * g->ph - 2
        || g->ow != g->w + 2 * g->pw - 2 || num < 0 || t0 < 0 || t1 < t0 || t1 > num * g->th * g->tw) {
        PyErr_SetString(PyExc_ValueError, "bad Winograd geometry or tile range");
        return -1;
    }
    return 0;
}

static PyObject *py_winograd_input(PyObject *self, PyObject *args)
{
    PyObject *x_obj, *v_obj;
    WinoGeom g;
    long num, t0, t1;
    if (!PyArg_ParseTuple(args, "OO" WINO_FORMAT "lll", &x_obj, &v_obj, WINO_ARGS(g), &num, &t0, &t1)
        || check_wino(&g, num, t0, t1) < 0)
        return NULL;
    int kind;
    if (float_kind(x_obj, &kind) < 0)
        return NULL;
    Py_buffer x, v;
    if (get_buffer(x_obj, &x, 0, kind, num * g.channels * g.h * g.w, "bottom") < 0)
        return NULL;
    if (get_buffer(v_obj, &v, 1, kind, 16 * g.channels * (t1 - t0), "transformed input") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    const size_t elem = kind == KIND_F64 ? sizeof(double) : sizeof(float);
    void *work = PyMem_RawMalloc(8 * (g.tw + 1) * elem);
    if (!work) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&v);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64) PICK(winograd_input_f64)(x.buf, v.buf, &g, t0, t1, work);
    else PICK(winograd_input_f32)(x.buf, v.buf, &g, t0, t1, work);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(work);
    PyBuffer_Release(&x);
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

/* winograd_weights(w, U, q0, q1): kernels [q0, q1) of w (count, 3, 3) -> U (16, count). */
static PyObject *py_winograd_weights(PyObject *self, PyObject *args)
{
    PyObject *w_obj, *u_obj;
    long q0, q1;
    if (!PyArg_ParseTuple(args, "OOll", &w_obj, &u_obj, &q0, &q1))
        return NULL;
    int kind;
    if (float_kind(w_obj, &kind) < 0)
        return NULL;
    Py_buffer w, u;
    if (get_buffer(w_obj, &w, 0, kind, 0, "weights") < 0)
        return NULL;
    const long count = (long)(w.len / w.itemsize / 9);
    if (w.len / w.itemsize != 9 * count || q0 < 0 || q1 < q0 || q1 > count
        || get_buffer(u_obj, &u, 1, kind, 16 * count, "transformed weights") < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "weights: not whole 3x3 kernels, or a bad kernel range");
        PyBuffer_Release(&w);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64) PICK(winograd_weights_f64)(w.buf, u.buf, count, q0, q1);
    else PICK(winograd_weights_f32)(w.buf, u.buf, count, q0, q1);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&w);
    PyBuffer_Release(&u);
    Py_RETURN_NONE;
}

static PyObject *py_winograd_output(PyObject *self, PyObject *args)
{
    PyObject *m_obj, *y_obj, *b_obj;
    WinoGeom g;
    long num, t0, t1;
    if (!PyArg_ParseTuple(args, "OOO" WINO_FORMAT "lll", &m_obj, &y_obj, &b_obj, WINO_ARGS(g), &num, &t0, &t1)
        || check_wino(&g, num, t0, t1) < 0)
        return NULL;
    int kind;
    if (float_kind(m_obj, &kind) < 0)
        return NULL;
    Py_buffer m, y, b;
    if (get_buffer(m_obj, &m, 0, kind, 16 * g.channels * (t1 - t0), "transformed output") < 0)
        return NULL;
    if (get_buffer(y_obj, &y, 1, kind, num * g.channels * g.oh * g.ow, "top") < 0) {
        PyBuffer_Release(&m);
        return NULL;
    }
    const int with_bias = b_obj != Py_None;
    if (with_bias && get_buffer(b_obj, &b, 0, kind, g.channels, "bias") < 0) {
        PyBuffer_Release(&m);
        PyBuffer_Release(&y);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64) PICK(winograd_output_f64)(m.buf, y.buf, with_bias ? b.buf : NULL, &g, t0, t1);
    else PICK(winograd_output_f32)(m.buf, y.buf, with_bias ? b.buf : NULL, &g, t0, t1);
    Py_END_ALLOW_THREADS
    if (with_bias) PyBuffer_Release(&b);
    PyBuffer_Release(&m);
    PyBuffer_Release(&y);
    Py_RETURN_NONE;
}

/* Whether this CPU can run the AVX2 copies (and this build has them). */
static int cpu_has_avx2(void)
{
#ifdef HAVE_AVX2_COPY
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

/* isa(): the instruction set the kernels run on, "avx2" or "baseline". */
static PyObject *py_isa(PyObject *self, PyObject *args)
{
    return PyUnicode_FromString(use_avx2 ? "avx2" : "baseline");
}

/* set_isa(name): run the kernels' "baseline" or "avx2" copy from now on (tests compare them;
 * NETSPEC_NATIVE_ISA=baseline in the environment does it at import, see layers/native.py).
 * ValueError for "avx2" where the CPU or the build lacks it. */
static PyObject *py_set_isa(PyObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    if (strcmp(name, "baseline") == 0) {
        use_avx2 = 0;
    } else if (strcmp(name, "avx2") == 0 && cpu_has_avx2()) {
        use_avx2 = 1;
    } else {
        return PyErr_Format(PyExc_ValueError, "instruction set '%s' not available here", name);
    }
    Py_RETURN_NONE;
}

/* rows_dot(x, w, y, M, K, ldy, n0, n1): y (M, ldy) columns [n0, n1) <- x (M, K) times w (N, K)^T. */
static PyObject *py_rows_dot(PyObject *self, PyObject *args)
{
    PyObject *obj[3];
    long M, K, ldy, n0, n1;
    if (!PyArg_ParseTuple(args, "OOOlllll", &obj[0], &obj[1], &obj[2], &M, &K, &ldy, &n0, &n1))
        return NULL;
    if (M <= 0 || M > 16 || K <= 0 || n0 < 0 || n1 < n0 || ldy < n1) {
        PyErr_SetString(PyExc_ValueError, "bad rows_dot shape or range");
        return NULL;
    }
    int kind;
    if (float_kind(obj[0], &kind) < 0)
        return NULL;
    const Py_ssize_t need[3] = {M * K, n1 * K, (M - 1) * ldy + n1};
    static const char *names[3] = {"bottom", "weights", "top"};
    Py_buffer v[3];
    for (int i = 0; i < 3; i++)
        if (get_buffer(obj[i], &v[i], i == 2, kind, need[i], names[i]) < 0) {
            for (int k = 0; k < i; k++) PyBuffer_Release(&v[k]);
            return NULL;
        }
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64) PICK(rows_dot_f64)(v[0].buf, v[1].buf, v[2].buf, M, K, ldy, n0, n1);
    else PICK(rows_dot_f32)(v[0].buf, v[1].buf, v[2].buf, M, K, ldy, n0, n1);
    Py_END_ALLOW_THREADS
    for (int k = 0; k < 3; k++) PyBuffer_Release(&v[k]);
    Py_RETURN_NONE;
}

/* sgd_step(data, diff, history, scale, decay, rate, momentum): see _native_body.h; the three
 * arrays of one size and type. */
static PyObject *py_sgd_step(PyObject *self, PyObject *args)
{
    PyObject *obj[3];
    double scale, decay, rate, momentum;
    if (!PyArg_ParseTuple(args, "OOOdddd", &obj[0], &obj[1], &obj[2], &scale, &decay, &rate, &momentum))
        return NULL;
    int kind;
    if (float_kind(obj[0], &kind) < 0)
        return NULL;
    static const char *names[3] = {"data", "diff", "history"};
    Py_buffer v[3];
    for (int i = 0; i < 3; i++)
        if (get_buffer(obj[i], &v[i], 1, kind, i ? v[0].len / v[0].itemsize : 0, names[i]) < 0) {
            release_all(v, i);
            return NULL;
        }
    const Py_ssize_t n = v[0].len / v[0].itemsize;
    Py_BEGIN_ALLOW_THREADS
    if (kind == KIND_F64)
        PICK(sgd_step_f64)(v[0].buf, v[1].buf, v[2].buf, n, scale, decay, rate, momentum);
    else
        PICK(sgd_step_f32)(v[0].buf, v[1].buf, v[2].buf, n, (float)scale, (float)decay, (float)rate, (float)momentum);
    Py_END_ALLOW_THREADS
    release_all(v, 3);
    Py_RETURN_NONE;
}

/* spin_wait(word, value, microseconds, until): without the GIL, wait until the int32 in `word` (a
 * writable buffer) equals `value` (until true) or differs from it (until false), for at most
 * `microseconds`; returns whether it came. threads.py's pool waits here a little before it sleeps
 * on a lock: a thread asleep in the kernel took 20-80 us to wake on the 2-core VM, one that was
 * spinning a few. Each turn yields the core, so that on a busy machine another process gets it. */
static PyObject *py_spin_wait(PyObject *self, PyObject *args)
{
    PyObject *obj;
    long value;
    double limit_us;
    int until;
    if (!PyArg_ParseTuple(args, "Oldp", &obj, &value, &limit_us, &until))
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(obj, &b, PyBUF_WRITABLE) < 0)
        return NULL;
    if (b.len < (Py_ssize_t)sizeof(int32_t)) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "spin_wait needs a buffer of at least one int32");
        return NULL;
    }
    const int32_t *word = b.buf;
    int came = 0;
    Py_BEGIN_ALLOW_THREADS
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if ((__atomic_load_n(word, __ATOMIC_ACQUIRE) == (int32_t)value) == until) {
            came = 1;
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1e6 + (t.tv_nsec - t0.tv_nsec) * 1e-3 >= limit_us)
            break;
        sched_yield();
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyBool_FromLong(came);
}

static PyMethodDef methods[] = {
    {"isa", py_isa, METH_NOARGS, "isa(): the instruction set the kernels run on, 'avx2' or 'baseline'"},
    {"set_isa", py_set_isa, METH_VARARGS, "set_isa(name): run the 'baseline' or 'avx2' copy of the kernels"},
    {"channel_chain", py_channel_chain, METH_VARARGS,
     "channel_chain(x, y, m, s, a, b, keep, outer, channels, inner, standardise, scale, relu, (start, stop))"},
    {"chain_backward", py_chain_backward, METH_VARARGS,
     "chain_backward(dy, y, x, a, std, dx, sum_g, sum_gx, sum_a, sum_ax, outer, channels, inner, relu, standardise)"},
    {"depthwise_forward", py_depthwise_forward, METH_VARARGS,
     "depthwise_forward(x, w, bias, y, geom, multiplier, num, start, stop)"},
    {"depthwise_backward_data", py_depthwise_data, METH_VARARGS,
     "depthwise_backward_data(dy, w, None, dx, geom, multiplier, num, start, stop)"},
    {"depthwise_backward_weights", py_depthwise_weights, METH_VARARGS,
     "depthwise_backward_weights(dy, x, None, dw, geom, multiplier, num, start, stop)"},
    {"channel_sums", py_channel_sums, METH_VARARGS, "channel_sums(dy, x, sum_dy, sum_dyx, outer, channels, inner)"},
    {"batch_norm_grad", py_batch_norm_grad, METH_VARARGS,
     "batch_norm_grad(dy, y, mean_dy, mean_dyy, std, dx, outer, channels, inner)"},
    {"lrn_across", py_lrn_across, METH_VARARGS,
     "lrn_across(x, y, scale, outer, channels, inner, n0, n1, p0, p1, size, coeff, k, beta)"},
    {"channel_affine", py_channel_affine, METH_VARARGS, "channel_affine(x, y, a, b, outer, channels, inner, standardise)"},
    {"im2col", py_im2col, METH_VARARGS, "im2col(image, cols, geom, n0, n1, ld, nstride)"},
    {"col2im", py_col2im, METH_VARARGS, "col2im(cols, image, geom, n0, n1, ld, nstride)"},
    {"max_pool", py_max_pool, METH_VARARGS, "max_pool(x, y, argmax, geom, planes)"},
    {"max_unpool", py_max_unpool, METH_VARARGS, "max_unpool(dy, argmax, dx, geom, planes)"},
    {"ave_pool", py_ave_pool, METH_VARARGS, "ave_pool(x, y, geom, planes)"},
    {"ave_unpool", py_ave_unpool, METH_VARARGS, "ave_unpool(dy, dx, geom, planes)"},
    {"roi_pool", py_roi_pool, METH_VARARGS, "roi_pool(x, top, argmax, bins, rois, channels, h, w, pooled_h, pooled_w)"},
    {"winograd_input", py_winograd_input, METH_VARARGS, "winograd_input(x, V, geom, num, t0, t1)"},
    {"winograd_output", py_winograd_output, METH_VARARGS, "winograd_output(M, y, bias, geom, num, t0, t1)"},
    {"winograd_weights", py_winograd_weights, METH_VARARGS, "winograd_weights(w, U, q0, q1)"},
    {"sgd_step", py_sgd_step, METH_VARARGS, "sgd_step(data, diff, history, scale, decay, rate, momentum)"},
    {"spin_wait", py_spin_wait, METH_VARARGS,
     "spin_wait(word, value, microseconds, until) -> whether word[0] came to equal (or leave) value"},
    {"rows_dot", py_rows_dot, METH_VARARGS, "rows_dot(x, w, y, M, K, ldy, n0, n1)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void)
{
    use_avx2 = cpu_has_avx2();
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "ABI", NATIVE_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
