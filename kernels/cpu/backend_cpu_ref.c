/* backend_cpu_ref.c — the readable scalar reference backend ("cpu-ref").
 *
 * Every op is the plainest loop that computes the math in backend.h, with
 * sums accumulated in double so that the reference is more accurate than any
 * fast path tested against it. Weights of every type are dequantized one row
 * at a time with ms_dequantize_row (the reference in quant.c). Memory is
 * 64-byte aligned zeroed host memory. Single-threaded, no SIMD, no state.
 * docs/kernels.md describes each op and the tolerances of the fast paths.
 */
#include "backend.h"
#include "ms_common.h"
#include "quant.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MS_CPU_ALIGN 64 /* bytes; alignment of every alloc() */

/* ---- memory ------------------------------------------------------------- */

static void *s_alloc(ms_backend *be, size_t nbytes) {
    (void)be;
    size_t n = (nbytes + MS_CPU_ALIGN - 1) / MS_CPU_ALIGN * MS_CPU_ALIGN;
    if (n == 0) n = MS_CPU_ALIGN;
    void *p = aligned_alloc(MS_CPU_ALIGN, n);
    if (p) memset(p, 0, n);
    return p;
}

static void s_free(ms_backend *be, void *p) {
    (void)be;
    free(p);
}

static void s_memcpy(ms_backend *be, void *dst, const void *src, size_t nbytes) {
    (void)be;
    if (nbytes) memmove(dst, src, nbytes);
}

static void s_destroy(ms_backend *be) { free(be); }

/* ---- linear algebra ------------------------------------------------------ */

/* y[i][j] = sum_k x[i][k] * W[j][k], W dequantized row by row, double sums. */
static void s_matmul(ms_backend *be, float *y, const ms_tensor *w, const float *x, int n) {
    (void)be;
    const int64_t K = w->ne[0], M = w->ne[1];
    const size_t rb = ms_row_bytes(w->type, K);
    assert(rb > 0);
    const uint8_t *wd = ms_weight_data(w);
    float *row = ms_xmalloc((size_t)K * sizeof(float));
    for (int64_t j = 0; j < M; j++) {
        ms_dequantize_row(w->type, wd + (size_t)j * rb, row, K);
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * K;
            double s = 0.0;
            for (int64_t k = 0; k < K; k++) s += (double)xi[k] * (double)row[k];
            y[(size_t)i * M + j] = (float)s;
        }
    }
    free(row);
}

static void s_get_rows(ms_backend *be, float *y, const ms_tensor *w, const int32_t *ids, int n) {
    (void)be;
    const int64_t K = w->ne[0];
    const size_t rb = ms_row_bytes(w->type, K);
    assert(rb > 0);
    const uint8_t *wd = ms_weight_data(w);
    for (int i = 0; i < n; i++) {
        assert(ids[i] >= 0 && ids[i] < ms_tensor_nrows(w));
        ms_dequantize_row(w->type, wd + (size_t)ids[i] * rb, y + (size_t)i * K, K);
    }
}

static void s_add(ms_backend *be, float *y, const float *a, const float *b, size_t len) {
    (void)be;
    for (size_t i = 0; i < len; i++) y[i] = a[i] + b[i];
}

static void s_add_bias(ms_backend *be, float *y, const float *bias, int n, int dim) {
    (void)be;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < dim; k++) y[(size_t)i * dim + k] += bias[k];
}

/* ---- normalisation ------------------------------------------------------- */

/* llama.cpp: scale = 1/sqrt(mean(x^2) + eps). */
static void s_rmsnorm(ms_backend *be, float *y, const float *x, const float *w, int n, int dim,
                      float eps) {
    (void)be;
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *yi = y + (size_t)i * dim;
        double ss = 0.0;
        for (int k = 0; k < dim; k++) ss += (double)xi[k] * xi[k];
        const double scale = 1.0 / sqrt(ss / dim + eps);
        for (int k = 0; k < dim; k++) yi[k] = (float)(xi[k] * scale * w[k]);
    }
}

static void s_layernorm(ms_backend *be, float *y, const float *x, const float *w, const float *b,
                        int n, int dim, float eps) {
    (void)be;
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *yi = y + (size_t)i * dim;
        double sum = 0.0;
        for (int k = 0; k < dim; k++) sum += xi[k];
        const double mean = sum / dim;
        double var = 0.0;
        for (int k = 0; k < dim; k++) var += (xi[k] - mean) * (xi[k] - mean);
        const double scale = 1.0 / sqrt(var / dim + eps);
        for (int k = 0; k < dim; k++)
            yi[k] = (float)((xi[k] - mean) * scale * w[k] + (b ? b[k] : 0.0f));
    }
}

/* ---- rotary embedding ---------------------------------------------------- */

/* Pair p (0 <= p < rot_dim/2) rotates by theta = pos * base^(-2p/rot_dim).
 * neox=false: elements (2p, 2p+1); neox=true: elements (p, p + rot_dim/2). */
static void s_rope(ms_backend *be, float *x, int n, int n_head, int head_dim, int rot_dim,
                   const int32_t *pos, float freq_base, bool neox) {
    (void)be;
    assert(rot_dim % 2 == 0 && rot_dim <= head_dim);
    const int half = rot_dim / 2;
    for (int i = 0; i < n; i++) {
        for (int h = 0; h < n_head; h++) {
            float *xh = x + ((size_t)i * n_head + h) * head_dim;
            for (int p = 0; p < half; p++) {
                const double theta = pos[i] * pow((double)freq_base, -2.0 * p / rot_dim);
                const double c = cos(theta), s = sin(theta);
                const int i0 = neox ? p : 2 * p;
                const int i1 = neox ? p + half : 2 * p + 1;
                const double x0 = xh[i0], x1 = xh[i1];
                xh[i0] = (float)(x0 * c - x1 * s);
                xh[i1] = (float)(x0 * s + x1 * c);
            }
        }
    }
}

/* ---- attention ------------------------------------------------------------ */

static size_t s_kv_row(const ms_attn_args *a, int j) {
    if (!a->block_table) return (size_t)j;
    return (size_t)a->block_table[j / a->block_size] * a->block_size + (size_t)(j % a->block_size);
}

static void s_attention(ms_backend *be, const ms_attn_args *a) {
    (void)be;
    assert(a->n_kv_head > 0 && a->n_head % a->n_kv_head == 0);
    const int hd = a->head_dim;
    const int group = a->n_head / a->n_kv_head;
    const size_t q_stride = (size_t)a->n_head * hd, kv_stride = (size_t)a->n_kv_head * hd;
    double *score = ms_xmalloc((size_t)(a->n_kv > 0 ? a->n_kv : 1) * sizeof(double));
    double *acc = ms_xmalloc((size_t)hd * sizeof(double));
    for (int i = 0; i < a->n_q; i++) {
        const int n_see = a->causal ? a->n_kv - a->n_q + i + 1 : a->n_kv;
        for (int h = 0; h < a->n_head; h++) {
            const float *q = a->q + i * q_stride + (size_t)h * hd;
            float *out = a->out + i * q_stride + (size_t)h * hd;
            const size_t kv_off = (size_t)(h / group) * hd;
            if (n_see <= 0) { /* no visible key: defined as zeros */
                memset(out, 0, (size_t)hd * sizeof(float));
                continue;
            }
            double mx = -INFINITY;
            for (int j = 0; j < n_see; j++) {
                const float *k = a->k + s_kv_row(a, j) * kv_stride + kv_off;
                double s = 0.0;
                for (int d = 0; d < hd; d++) s += (double)q[d] * k[d];
                score[j] = s * a->scale;
                if (score[j] > mx) mx = score[j];
            }
            double sum = 0.0;
            for (int j = 0; j < n_see; j++) {
                score[j] = exp(score[j] - mx);
                sum += score[j];
            }
            for (int d = 0; d < hd; d++) acc[d] = 0.0;
            for (int j = 0; j < n_see; j++) {
                const float *v = a->v + s_kv_row(a, j) * kv_stride + kv_off;
                for (int d = 0; d < hd; d++) acc[d] += score[j] * v[d];
            }
            for (int d = 0; d < hd; d++) out[d] = (float)(acc[d] / sum);
        }
    }
    free(score);
    free(acc);
}

/* ---- activations ---------------------------------------------------------- */

#define MS_SQRT_2_OVER_PI 0.79788456080286535588 /* sqrt(2/pi) */
#define MS_GELU_COEF_A    0.044715
#define MS_GELU_QUICK_A   1.702

static void s_gelu(ms_backend *be, float *x, size_t len) {
    (void)be;
    for (size_t i = 0; i < len; i++) {
        const double v = x[i];
        x[i] = (float)(0.5 * v * (1.0 + tanh(MS_SQRT_2_OVER_PI * (v + MS_GELU_COEF_A * v * v * v))));
    }
}

static void s_gelu_quick(ms_backend *be, float *x, size_t len) {
    (void)be;
    for (size_t i = 0; i < len; i++) {
        const double v = x[i];
        x[i] = (float)(v / (1.0 + exp(-MS_GELU_QUICK_A * v)));
    }
}

static void s_silu_mul(ms_backend *be, float *g, const float *u, size_t len) {
    (void)be;
    for (size_t i = 0; i < len; i++) {
        const double v = g[i];
        g[i] = (float)(v / (1.0 + exp(-v)) * u[i]);
    }
}

static void s_set_rows(ms_backend *be, float *dst, const int32_t *dst_rows, const float *src, int n,
                       int row_len) {
    (void)be;
    for (int i = 0; i < n; i++) {
        assert(dst_rows[i] >= 0);
        memmove(dst + (size_t)dst_rows[i] * row_len, src + (size_t)i * row_len,
                (size_t)row_len * sizeof(float));
    }
}

static const ms_backend_ops s_ops = {
    .name = "cpu-ref",
    .destroy = s_destroy,
    .alloc = s_alloc,
    .free = s_free,
    .to_device = s_memcpy,
    .to_host = s_memcpy,
    .copy = s_memcpy,
    .prepare_weight = NULL,
    .synchronize = NULL,
    .matmul = s_matmul,
    .get_rows = s_get_rows,
    .add = s_add,
    .add_bias = s_add_bias,
    .rmsnorm = s_rmsnorm,
    .layernorm = s_layernorm,
    .rope = s_rope,
    .attention = s_attention,
    .gelu = s_gelu,
    .gelu_quick = s_gelu_quick,
    .silu_mul = s_silu_mul,
    .set_rows = s_set_rows,
};

ms_backend *ms_backend_cpu_ref_new(char *err, size_t err_size) {
    ms_backend *be = calloc(1, sizeof *be);
    if (!be) {
        ms_errf(err, err_size, "cpu-ref backend: out of memory");
        return NULL;
    }
    be->ops = &s_ops;
    be->ctx = NULL;
    be->n_threads = 1;
    return be;
}
