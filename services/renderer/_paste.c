/* The CPU paste-back of one frame: one pass over the face box that samples the render and the feather mask with
 * OpenCV 4.10's fixed-point bilinear warpAffine and blends into the frame, byte for byte what cv2.warpAffine over
 * the whole frame and the reference's float32 blend give (docs/model.md §7.1-7.2). paste_kernel.py is its Python
 * face and says why it exists; this file is the arithmetic.
 *
 * Exactness rests on two things the build must keep (pyproject.toml sets the flags):
 * - every float32 operation is a separate IEEE operation in OpenCV's order: -ffp-contract=off, or GCC fuses
 *   a * b + c into one FMA on x86-64-v3 and the last bit changes;
 * - the vector code is lane-wise the scalar code: the three channels of one pixel ride in lanes 0-2 of a 4-lane
 *   vector (lane 3 reads the next pixel's first channel and is thrown away), so nothing is reassociated.
 *
 * Why vectors and per-row runs (measured at 1080p on a 2-core AMD EPYC, against the numba kernel this replaced):
 * a scalar fused pass spends as much on deciding what each pixel is (outside the crop, on the mask's feathered rim,
 * or where the mask is exactly 1) as on sampling it. Along one row of the box the source position moves
 * monotonically, so each kind is one run of columns: the run where the mask is 1 (two thirds of the box) is a loop
 * with no test at all, and the rim blends with the same 4-lane sample.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));

/* BLEND: into an RGB frame. RGBA: the render with the mask as alpha, on a transparent frame. BLEND_KEEP_ALPHA: into
 * the RGB of an RGBA frame, whose alpha (the avatar's person matte) is left as it is. */
enum { BLEND = 0, RGBA = 1, BLEND_KEEP_ALPHA = 2 };

static inline f4 load4(const float *p) { f4 v; memcpy(&v, p, sizeof v); return v; }
static inline f4 splat(float x) { return (f4){x, x, x, x}; }

/* min(max(v, lo), hi) per lane, as the scalar clip (the values are finite) */
static inline f4 clip4(f4 v, f4 lo, f4 hi) {
#if defined(__SSE2__)
    return (f4)_mm_min_ps(_mm_max_ps((__m128)v, (__m128)lo), (__m128)hi);
#else
    i4 m = v > lo;
    v = (f4)(((i4)v & m) | ((i4)lo & ~m));
    m = v < hi;
    return (f4)(((i4)v & m) | ((i4)hi & ~m));
#endif
}

static inline float clipf(float v, float lo, float hi) { v = v > lo ? v : lo; return v < hi ? v : hi; }

/* The four lanes as uint8 in memory order (in [0, 255] after the clip; the conversion truncates, as numpy's
 * astype(uint8)). Lane 3 is the next pixel's first channel, or the alpha. */
static inline uint32_t to_bytes(f4 v) {
#if defined(__SSE2__)
    const __m128i b = _mm_cvttps_epi32((__m128)v);
    return (uint32_t)_mm_cvtsi128_si32(_mm_packus_epi16(_mm_packs_epi32(b, b), b));
#else
    const i4 b = __builtin_convertvector(v, i4);
    const uint8_t bytes[4] = {(uint8_t)b[0], (uint8_t)b[1], (uint8_t)b[2], (uint8_t)b[3]};
    uint32_t u;
    memcpy(&u, bytes, sizeof u);
    return u;
#endif
}

static inline void store3(uint8_t *out, uint32_t bytes) {
    memcpy(out, &bytes, 2);
    memcpy(out + 2, (const uint8_t *)&bytes + 2, 1);
}

/* the frame pixel under a rim pixel, as floats in lanes 0-2 */
static inline f4 load3(const uint8_t *p) {
#if defined(__SSE2__)
    uint16_t rg;
    memcpy(&rg, p, 2);
    const __m128i zero = _mm_setzero_si128();
    const __m128i b = _mm_cvtsi32_si128((int)rg | (int)p[2] << 16);
    return (f4)_mm_cvtepi32_ps(_mm_unpacklo_epi16(_mm_unpacklo_epi8(b, zero), zero));
#else
    return (f4){(float)p[0], (float)p[1], (float)p[2], 0.f};
#endif
}

typedef struct {
    const float *render;   /* [h, w, 3] */
    const float *mask;     /* [h, w] */
    const float *weights;  /* [1024, 4]: w00, w01, w10, w11 for the fraction fy * 32 + fx */
    long h, w, row, total; /* row = w * 3 floats; total = h * w * 3 */
    int mode;
} Source;

/* One channel of the bilinear sample when a neighbour lies outside the source: 0 there (OpenCV's constant border).
 * Only the box's thin edge takes it. */
static float edge_sample(const float *s, int channels, long h, long w, long x, long y, int c, const float *wt) {
    float s00 = (y >= 0 && y < h && x >= 0 && x < w) ? s[(y * w + x) * channels + c] : 0.f;
    float s01 = (y >= 0 && y < h && x + 1 >= 0 && x + 1 < w) ? s[(y * w + x + 1) * channels + c] : 0.f;
    float s10 = (y + 1 >= 0 && y + 1 < h && x >= 0 && x < w) ? s[((y + 1) * w + x) * channels + c] : 0.f;
    float s11 = (y + 1 >= 0 && y + 1 < h && x + 1 >= 0 && x + 1 < w) ? s[((y + 1) * w + x + 1) * channels + c] : 0.f;
    return s00 * wt[0] + s01 * wt[1] + s10 * wt[2] + s11 * wt[3];
}

/* The three channels at render offset q (pixel x, y and its right and lower neighbours inside, and one more float
 * readable after (x + 1, y + 1)), summed in OpenCV's order ((s00 w00 + s01 w01) + s10 w10) + s11 w11. */
static inline f4 sample3(const float *s, long row, const float *wt) {
    return load4(s) * splat(wt[0]) + load4(s + 3) * splat(wt[1]) + load4(s + row) * splat(wt[2])
         + load4(s + row + 3) * splat(wt[3]);
}

static inline const float *weights_at(const Source *s, long xq, long yq) {
    return s->weights + ((((yq & 31) << 5) | (xq & 31)) << 2);
}

/* A pixel off the mask's all-ones rectangle: sample the mask too and blend (or write the mask as alpha). */
static inline void paste_rim_pixel(const Source *s, long xq, long yq, uint8_t *out) {
    const long x = xq >> 5, y = yq >> 5, h = s->h, w = s->w;
    if (x < -1 || y < -1 || x >= w || y >= h)
        return; /* all four neighbours outside: mask 0 and render 0, what the frame holds or keeps */
    const float *wt = weights_at(s, xq, yq);
    const int inside = x >= 0 && y >= 0 && x + 1 < w && y + 1 < h;
    float m;
    if (inside) {
        const float *p = s->mask + y * w + x;
        m = p[0] * wt[0] + p[1] * wt[1] + p[w] * wt[2] + p[w + 1] * wt[3];
    } else {
        m = edge_sample(s->mask, 1, h, w, x, y, 0, wt);
    }
    m = clipf(m, 0.f, 1.f);
    const long q = (y * w + x) * 3;
    if (inside && q + s->row + 7 <= s->total) {
        f4 v = sample3(s->render + q, s->row, wt);
        /* m * v + (1 - m) * frame for every m: where m is 1 it is v, where 0 the frame, bit for bit (finite values),
         * and no branch on m to mispredict along the feathered edge */
        if (s->mode != RGBA)
            v = splat(m) * v + splat(1.f - m) * load3(out);
        store3(out, to_bytes(clip4(v, splat(0.f), splat(255.f))));
    } else {
        for (int c = 0; c < 3; c++) {
            float v;
            if (inside) {
                const float *p = s->render + q + c;
                v = p[0] * wt[0] + p[3] * wt[1] + p[s->row] * wt[2] + p[s->row + 3] * wt[3];
            } else {
                v = edge_sample(s->render, 3, h, w, x, y, c, wt);
            }
            if (s->mode != RGBA)
                v = m * v + (1.f - m) * (float)out[c];
            out[c] = (uint8_t)clipf(v, 0.f, 255.f);
        }
    }
    if (s->mode == RGBA)
        out[3] = (uint8_t)(m * 255.f);
}

/* target_clones: GCC builds the loop twice (baseline x86-64 and x86-64-v3) and picks one at load time. The v3 build
 * is about a tenth faster (three-operand AVX, broadcasts from memory); -ffp-contract=off keeps its FMA unused. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static void paste_box(const Source *s, const int64_t ones[4], const int32_t *row_x, const int32_t *row_y,
                      const int32_t *col_x, const int32_t *col_y, uint8_t *region, long bh, long bw,
                      long row_stride, long px) {
    const long h = s->h, w = s->w, row = s->row;
    /* the rectangle where the mask is exactly 1: there the warped mask is exactly 1 (the weights are multiples of
     * 1/1024 summing to 1) and the blend is the render itself. Its last source row is kept off the render's last
     * row so the vector loads' extra float stays inside the render. */
    const long oy0 = ones[0] > 0 ? ones[0] : 0, ox0 = ones[2] > 0 ? ones[2] : 0;
    const long oy1 = ones[1] < h - 1 ? ones[1] : h - 1, ox1 = ones[3] < w ? ones[3] : w;
    const f4 lo = splat(0.f), hi = splat(255.f);
    long hint0 = 0, hint1 = 0;
    for (long i = 0; i < bh; i++) {
        const long rx = row_x[i], ry = row_y[i];
        uint8_t *out = region + i * row_stride;
        /* box pixel j samples at (rx + col_x[j]) >> 5, (ry + col_y[j]) >> 5 in 1/32 pixel, monotone in j */
#define XQ(j) ((rx + col_x[j]) >> 5)
#define YQ(j) ((ry + col_y[j]) >> 5)
#define OUTSIDE(j) ((XQ(j) >> 5) < -1 || (YQ(j) >> 5) < -1 || (XQ(j) >> 5) >= w || (YQ(j) >> 5) >= h)
#define ON_ONES(j) (ox0 <= (XQ(j) >> 5) && (XQ(j) >> 5) + 1 < ox1 && oy0 <= (YQ(j) >> 5) && (YQ(j) >> 5) + 1 < oy1)
        /* the run that can touch the render, [j0, j1): found from the previous row's, whose ends are a column or
         * two away, by walking to the nearest change; from the box's ends when the hint is not on this row's run */
        long j0 = hint0, j1 = hint1;
        if (j0 < j1 && !OUTSIDE(j0)) {
            while (j0 > 0 && !OUTSIDE(j0 - 1))
                j0--;
            while (j1 < bw && !OUTSIDE(j1))
                j1++;
            while (OUTSIDE(j1 - 1))
                j1--;
        } else {
            j0 = 0, j1 = bw;
            while (j0 < j1 && OUTSIDE(j0))
                j0++;
            while (j1 > j0 && OUTSIDE(j1 - 1))
                j1--;
        }
        hint0 = j0, hint1 = j1;
        long ja = j0; /* the run on the ones, [ja, jb), with rim pixels on either side */
        for (; ja < j1 && !ON_ONES(ja); ja++)
            paste_rim_pixel(s, XQ(ja), YQ(ja), out + ja * px);
        if (ja == j1)
            continue;
        long jb = j1;
        for (; !ON_ONES(jb - 1); jb--)
            paste_rim_pixel(s, XQ(jb - 1), YQ(jb - 1), out + (jb - 1) * px);
        /* the run on the ones: each pixel's four bytes are written at once; in RGB the fourth is the next pixel's
         * first channel, written again by the next pixel, so the last one writes three */
#define ONES_SAMPLE(j) clip4(sample3(s->render + ((YQ(j) >> 5) * w + (XQ(j) >> 5)) * 3, row, \
                                     weights_at(s, XQ(j), YQ(j))), lo, hi)
        uint8_t *o = out + ja * px;
        if (s->mode == RGBA) {
            for (long j = ja; j < jb; j++, o += 4) {
                f4 v = ONES_SAMPLE(j);
                v[3] = 255.f;
                const uint32_t bytes = to_bytes(v);
                memcpy(o, &bytes, 4);
            }
        } else if (s->mode == BLEND_KEEP_ALPHA) {
            for (long j = ja; j < jb; j++, o += 4) {
                f4 v = ONES_SAMPLE(j);
                v[3] = (float)o[3]; /* the alpha byte goes back as it was */
                const uint32_t bytes = to_bytes(v);
                memcpy(o, &bytes, 4);
            }
        } else {
            for (long j = ja; j < jb - 1; j++, o += 3) {
                const uint32_t bytes = to_bytes(ONES_SAMPLE(j));
                memcpy(o, &bytes, 4);
            }
            store3(o, to_bytes(ONES_SAMPLE(jb - 1)));
        }
#undef ONES_SAMPLE
#undef XQ
#undef YQ
#undef OUTSIDE
#undef ON_ONES
    }
}

/* The runs above hold only when a row's source position is monotone along it, as BoxGrid's columns are (a linear
 * function, rounded); checked for any caller, since the all-ones run reads without bounds tests. */
static int monotone(const Py_buffer *b, const char *name) {
    const int32_t *v = b->buf;
    const Py_ssize_t n = b->len / (Py_ssize_t)sizeof(int32_t);
    int up = 1, down = 1;
    for (Py_ssize_t k = 1; k < n; k++) {
        up &= v[k] >= v[k - 1];
        down &= v[k] <= v[k - 1];
    }
    if (up || down)
        return 0;
    PyErr_Format(PyExc_ValueError, "paste_box: %s is not monotone (build the grid with BoxGrid)", name);
    return -1;
}

static int expect_bytes(const Py_buffer *b, Py_ssize_t n, const char *name) {
    if (b->len == n)
        return 0;
    PyErr_Format(PyExc_ValueError, "paste_box: %s has %zd bytes, expected %zd", name, b->len, n);
    return -1;
}

PyDoc_STRVAR(paste_box_doc,
"paste_box(render, mask, ones, row_x, row_y, col_x, col_y, weights, frame, render_hw, frame_shape, box, mode)\n\n"
"Paste into the box (y0, y1, x0, x1) of `frame` (C-contiguous uint8 [H, W, C], written in place) with the GIL\n"
"released. render: C-contiguous float32 [h, w, 3]; mask: float32 [h, w]; ones: int64 [4] (y0, y1, x0, x1 of the\n"
"mask's all-ones rectangle, empty if none); row_*: int32 [y1 - y0], col_*: int32 [x1 - x0] (BoxGrid);\n"
"weights: float32 [1024 * 4]; mode 0 blends (C = 3), mode 1 writes RGBA (C = 4), mode 2 blends into the RGB of\n"
"an RGBA frame and keeps its alpha (C = 4). Sizes are checked.");

static PyObject *py_paste_box(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer render, mask, ones, row_x, row_y, col_x, col_y, weights, frame;
    Py_ssize_t h, w, fh, fw, fc, y0, y1, x0, x1;
    int mode;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*w*(nn)(nnn)(nnnn)i:paste_box", &render, &mask, &ones, &row_x,
                          &row_y, &col_x, &col_y, &weights, &frame, &h, &w, &fh, &fw, &fc, &y0, &y1, &x0, &x1,
                          &mode))
        return NULL;
    PyObject *result = NULL;
    if (h < 2 || w < 2 || h > (1 << 15) || w > (1 << 15)) {
        PyErr_Format(PyExc_ValueError, "paste_box: render of %zd x %zd pixels (expected 2 to 32768 a side)", h, w);
    } else if (mode != BLEND && mode != RGBA && mode != BLEND_KEEP_ALPHA) {
        PyErr_Format(PyExc_ValueError, "paste_box: mode %d (expected 0 blend, 1 RGBA or 2 blend keeping alpha)", mode);
    } else if (fc != (mode == BLEND ? 3 : 4) || fh < 0 || fw < 0 || !(0 <= y0 && y0 <= y1 && y1 <= fh) ||
               !(0 <= x0 && x0 <= x1 && x1 <= fw)) {
        PyErr_Format(PyExc_ValueError, "paste_box: box (%zd, %zd, %zd, %zd) or channels %zd do not fit a %zd x %zd "
                     "frame in mode %d", y0, y1, x0, x1, fc, fh, fw, mode);
    } else if (expect_bytes(&render, h * w * 3 * (Py_ssize_t)sizeof(float), "render") == 0 &&
               expect_bytes(&mask, h * w * (Py_ssize_t)sizeof(float), "mask") == 0 &&
               expect_bytes(&ones, 4 * (Py_ssize_t)sizeof(int64_t), "ones") == 0 &&
               expect_bytes(&row_x, (y1 - y0) * (Py_ssize_t)sizeof(int32_t), "row_x") == 0 &&
               expect_bytes(&row_y, (y1 - y0) * (Py_ssize_t)sizeof(int32_t), "row_y") == 0 &&
               expect_bytes(&col_x, (x1 - x0) * (Py_ssize_t)sizeof(int32_t), "col_x") == 0 &&
               expect_bytes(&col_y, (x1 - x0) * (Py_ssize_t)sizeof(int32_t), "col_y") == 0 &&
               expect_bytes(&weights, 1024 * 4 * (Py_ssize_t)sizeof(float), "weights") == 0 &&
               expect_bytes(&frame, fh * fw * fc, "frame") == 0 && monotone(&col_x, "col_x") == 0 &&
               monotone(&col_y, "col_y") == 0) {
        const Source s = {render.buf, mask.buf, weights.buf, (long)h, (long)w, (long)w * 3, (long)h * w * 3, mode};
        Py_BEGIN_ALLOW_THREADS
        paste_box(&s, ones.buf, row_x.buf, row_y.buf, col_x.buf, col_y.buf,
                  (uint8_t *)frame.buf + (y0 * fw + x0) * fc, (long)(y1 - y0), (long)(x1 - x0), (long)(fw * fc),
                  (long)fc);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    Py_buffer *views[] = {&render, &mask, &ones, &row_x, &row_y, &col_x, &col_y, &weights, &frame};
    for (size_t k = 0; k < sizeof views / sizeof views[0]; k++)
        PyBuffer_Release(views[k]);
    return result;
}

static PyMethodDef methods[] = {
    {"paste_box", py_paste_box, METH_VARARGS, paste_box_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_paste", "The compiled paste-back pass (see services/renderer/paste_kernel.py).", 0,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__paste(void) { return PyModule_Create(&module); }
