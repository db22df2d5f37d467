/* ops_scalar.c — portable C kernels of the fast CPU backend (see ops_cpu.h).
 * Used where the CPU lacks AVX2/FMA/F16C, and by tests to cover that path.
 * Sums run in float in a fixed sequential order per output element. */
#include "ops_cpu.h"
#include "quant.h"

#include <math.h>
#include <string.h>

/* ---- matmul ---------------------------------------------------------------- */

#define S_ROW(a, r) ((const uint8_t *)(a)->x + (size_t)(r) * (a)->row_bytes)

static void s_mm_f32(float *y, size_t ldy, const void *w, size_t w_row_bytes, int nc,
                     const ms_cpu_act *a, int nr, int64_t K) {
    for (int r = 0; r < nr; r++) {
        const float *xr = (const float *)S_ROW(a, r);
        for (int c = 0; c < nc; c++) {
            const float *wc = (const float *)((const uint8_t *)w + (size_t)c * w_row_bytes);
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++) s += xr[k] * wc[k];
            y[(size_t)r * ldy + c] = s;
        }
    }
}

static void s_mm_f16(float *y, size_t ldy, const void *w, size_t w_row_bytes, int nc,
                     const ms_cpu_act *a, int nr, int64_t K) {
    for (int r = 0; r < nr; r++) {
        const float *xr = (const float *)S_ROW(a, r);
        for (int c = 0; c < nc; c++) {
            const ms_fp16 *wc = (const ms_fp16 *)((const uint8_t *)w + (size_t)c * w_row_bytes);
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++) s += xr[k] * ms_fp16_to_fp32(wc[k]);
            y[(size_t)r * ldy + c] = s;
        }
    }
}

static void s_mm_bf16(float *y, size_t ldy, const void *w, size_t w_row_bytes, int nc,
                      const ms_cpu_act *a, int nr, int64_t K) {
    for (int r = 0; r < nr; r++) {
        const float *xr = (const float *)S_ROW(a, r);
        for (int c = 0; c < nc; c++) {
            const ms_bf16 *wc = (const ms_bf16 *)((const uint8_t *)w + (size_t)c * w_row_bytes);
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++) s += xr[k] * ms_bf16_to_fp32(wc[k]);
            y[(size_t)r * ldy + c] = s;
        }
    }
}

static void s_mm_q8_0(float *y, size_t ldy, const void *w, size_t w_row_bytes, int nc,
                      const ms_cpu_act *a, int nr, int64_t K) {
    const int64_t nb = K / MS_CPU_QK;
    for (int r = 0; r < nr; r++) {
        const int8_t *xq = (const int8_t *)S_ROW(a, r);
        const float *xd = a->d + (size_t)r * a->ld_d;
        for (int c = 0; c < nc; c++) {
            const ms_block_q8_0 *wb =
                (const ms_block_q8_0 *)((const uint8_t *)w + (size_t)c * w_row_bytes);
            float s = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t is = 0;
                for (int k = 0; k < MS_CPU_QK; k++) is += wb[b].qs[k] * xq[b * MS_CPU_QK + k];
                s += (xd[b] * ms_fp16_to_fp32(wb[b].d)) * (float)is;
            }
            y[(size_t)r * ldy + c] = s;
        }
    }
}

static void s_mm_q4_0(float *y, size_t ldy, const void *w, size_t w_row_bytes, int nc,
                      const ms_cpu_act *a, int nr, int64_t K) {
    const int64_t nb = K / MS_CPU_QK;
    for (int r = 0; r < nr; r++) {
        const int8_t *xq = (const int8_t *)S_ROW(a, r);
        const float *xd = a->d + (size_t)r * a->ld_d;
        for (int c = 0; c < nc; c++) {
            const ms_block_q4_0 *wb =
                (const ms_block_q4_0 *)((const uint8_t *)w + (size_t)c * w_row_bytes);
            float s = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const int8_t *xb = xq + b * MS_CPU_QK;
                int32_t is = 0;
                for (int k = 0; k < MS_CPU_QK / 2; k++) {
                    is += ((wb[b].qs[k] & 0x0F) - 8) * xb[k];
                    is += ((wb[b].qs[k] >> 4) - 8) * xb[k + MS_CPU_QK / 2];
                }
                s += (xd[b] * ms_fp16_to_fp32(wb[b].d)) * (float)is;
            }
            y[(size_t)r * ldy + c] = s;
        }
    }
}

/* Q4_K sub-block j of a super-block: value l is nibble (j & 1) of qs[32*(j/2) + l];
 * w = d*sc_j*q - dmin*m_j, so dot = dx*(d*sum_j sc_j*sum(q*xq) - dmin*sum_j m_j*bsum_j). */
static void s_mm_q4_K(float *y, size_t ldy, const void *w, size_t w_row_bytes, int nc,
                      const ms_cpu_act *a, int nr, int64_t K) {
    const int64_t nsb = K / MS_CPU_QKK;
    for (int r = 0; r < nr; r++) {
        const int8_t *xq = (const int8_t *)S_ROW(a, r);
        const float *xd = a->d + (size_t)r * a->ld_d;
        const int16_t *bs = a->bsums + (size_t)r * a->ld_bsums;
        for (int c = 0; c < nc; c++) {
            const ms_block_q4_K *wb =
                (const ms_block_q4_K *)((const uint8_t *)w + (size_t)c * w_row_bytes);
            float s = 0.0f;
            for (int64_t b = 0; b < nsb; b++) {
                uint8_t sc[8], m[8];
                ms_cpu_q4k_scales(wb[b].scales, sc, m);
                const int8_t *xb = xq + b * MS_CPU_QKK;
                int32_t isum = 0, imin = 0;
                for (int j = 0; j < 8; j++) {
                    const uint8_t *q = wb[b].qs + 32 * (j / 2);
                    int32_t t = 0;
                    for (int l = 0; l < 32; l++) t += ((j & 1) ? q[l] >> 4 : q[l] & 0xF) * xb[32 * j + l];
                    isum += sc[j] * t;
                    imin += m[j] * bs[b * 8 + j];
                }
                s += (xd[b] * ms_fp16_to_fp32(wb[b].d)) * (float)isum;
                s -= (xd[b] * ms_fp16_to_fp32(wb[b].dmin)) * (float)imin;
            }
            y[(size_t)r * ldy + c] = s;
        }
    }
}

static void s_quantize_blocks(const float *x, int8_t *qs, float *d, int64_t K, int bs) {
    for (int64_t b = 0; b < K / bs; b++) {
        const float *xb = x + b * bs;
        float amax = 0.0f;
        for (int k = 0; k < bs; k++) amax = fmaxf(amax, fabsf(xb[k]));
        const float db = amax / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = db;
        for (int k = 0; k < bs; k++) qs[b * bs + k] = (int8_t)nearbyintf(xb[k] * id);
    }
}

static void s_quantize_q8(const float *x, int8_t *qs, float *d, int64_t K) {
    s_quantize_blocks(x, qs, d, K, MS_CPU_QK);
}

static void s_quantize_q8k(const float *x, int8_t *qs, float *d, int16_t *bsums, int64_t K) {
    s_quantize_blocks(x, qs, d, K, MS_CPU_QKK);
    for (int64_t j = 0; j < K / 32; j++) {
        int s = 0;
        for (int l = 0; l < 32; l++) s += qs[j * 32 + l];
        bsums[j] = (int16_t)s;
    }
}

/* ---- elementwise ------------------------------------------------------------- */

#define MS_SQRT_2_OVER_PI 0.79788456080286535588f
#define MS_GELU_COEF_A    0.044715f
#define MS_GELU_QUICK_A   1.702f

static void s_add(float *y, const float *a, const float *b, size_t len) {
    for (size_t i = 0; i < len; i++) y[i] = a[i] + b[i];
}

/* 0.5·x·(1 + tanh(u)) = x·sigmoid(2u): no cancellation for negative x. */
static void s_gelu(float *x, size_t len) {
    for (size_t i = 0; i < len; i++) {
        const float v = x[i];
        const float u = MS_SQRT_2_OVER_PI * v * (1.0f + MS_GELU_COEF_A * v * v);
        x[i] = v / (1.0f + expf(-2.0f * u));
    }
}

static void s_gelu_quick(float *x, size_t len) {
    for (size_t i = 0; i < len; i++) x[i] = x[i] / (1.0f + expf(-MS_GELU_QUICK_A * x[i]));
}

static void s_silu_mul(float *g, const float *u, size_t len) {
    for (size_t i = 0; i < len; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void s_rmsnorm_row(float *y, const float *x, const float *w, int dim, float eps) {
    float ss = 0.0f;
    for (int k = 0; k < dim; k++) ss += x[k] * x[k];
    const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int k = 0; k < dim; k++) y[k] = x[k] * scale * w[k];
}

static void s_layernorm_row(float *y, const float *x, const float *w, const float *b, int dim,
                            float eps) {
    float sum = 0.0f;
    for (int k = 0; k < dim; k++) sum += x[k];
    const float mean = sum / (float)dim;
    float var = 0.0f;
    for (int k = 0; k < dim; k++) var += (x[k] - mean) * (x[k] - mean);
    const float scale = 1.0f / sqrtf(var / (float)dim + eps);
    for (int k = 0; k < dim; k++) y[k] = (x[k] - mean) * scale * w[k] + (b ? b[k] : 0.0f);
}

static float s_dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void s_axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static void s_dot_rows(float *s, const float *q, const float *x, size_t ld, int n, int len) {
    for (int j = 0; j < n; j++) s[j] = s_dot(q, x + (size_t)j * ld, len);
}

static void s_axpy_rows(float *y, const float *a, const float *x, size_t ld, int n, int len) {
    for (int j = 0; j < n; j++) s_axpy(y, a[j], x + (size_t)j * ld, len);
}

static void s_scale(float *y, float a, int n) {
    for (int i = 0; i < n; i++) y[i] *= a;
}

static float s_softmax_exp(float *s, int n, float max) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        s[i] = expf(s[i] - max);
        sum += s[i];
    }
    return sum;
}

static const ms_cpu_kernels s_kernels = {
    .isa = "scalar",
    .mm_f32 = s_mm_f32,
    .mm_f16 = s_mm_f16,
    .mm_bf16 = s_mm_bf16,
    .mm_q8_0 = s_mm_q8_0,
    .mm_q4_0 = s_mm_q4_0,
    .mm_q4_K = s_mm_q4_K,
    .quantize_q8 = s_quantize_q8,
    .quantize_q8k = s_quantize_q8k,
    .add = s_add,
    .gelu = s_gelu,
    .gelu_quick = s_gelu_quick,
    .silu_mul = s_silu_mul,
    .rmsnorm_row = s_rmsnorm_row,
    .layernorm_row = s_layernorm_row,
    .dot_rows = s_dot_rows,
    .axpy_rows = s_axpy_rows,
    .scale = s_scale,
    .softmax_exp = s_softmax_exp,
};

const ms_cpu_kernels *ms_cpu_kernels_scalar(void) { return &s_kernels; }
