/* ops_cpu.h — inner kernels of the fast CPU backend (internal to kernels/cpu).
 *
 * backend_cpu.c does the threading and tiling; the kernels below do the
 * arithmetic on one thread. Three implementations fill the same table:
 * ops_scalar.c (portable C), ops_avx2.c (AVX2 + FMA + F16C) and ops_avx512.c
 * (AVX-512 + VNNI matmuls over the AVX2 table), chosen once at backend
 * creation with __builtin_cpu_supports. Results differ between tables (in the
 * last bits); within one table they are exactly reproducible.
 *
 * Determinism contract (the engine relies on it, tests/test_backend.c checks
 * it): every kernel computes each output element with an arithmetic sequence
 * that depends only on that element's inputs and on the reduction length
 * (K, dim, head_dim, n_kv) — never on how many rows or columns the call
 * covers, where a chunk boundary falls, or which thread runs it. The matmul
 * kernels tile rows and columns, but every (row, column) accumulator performs
 * the same operations in the same order in every tile shape; elementwise
 * kernels compute a ragged tail by running the vector code on a padded copy.
 */
#ifndef MS_OPS_CPU_H
#define MS_OPS_CPU_H

#include "backend.h"

#include <stddef.h>
#include <stdint.h>

#define MS_CPU_QK  32  /* values per block of Q8_0/Q4_0-style activations (= Q8_0/Q4_0 block) */
#define MS_CPU_QKK 256 /* values per block of Q8_K-style activations (= Q4_K super-block) */

/* Activation rows as a matmul kernel reads them. Float weight types (F32, F16,
 * BF16) read f32 rows. Q8_0/Q4_0 read rows quantized by quantize_q8 (K int8,
 * K/32 scales in d), or by quantize_q8s where the set has it (the same, plus
 * K/32 block sums in bsums). Q4_K reads rows quantized by quantize_q8k (K int8, K/256
 * scales in d, K/32 block sums in bsums). Row r starts at x + r*row_bytes,
 * d + r*ld_d, bsums + r*ld_bsums. */
typedef struct ms_cpu_act {
    const void *x;         /* f32 or int8 rows */
    size_t row_bytes;      /* bytes from one row of x to the next */
    const float *d;        /* block scales, or NULL for f32 rows */
    size_t ld_d;           /* floats from one row's scales to the next */
    const int16_t *bsums;  /* Q8_K block sums, or NULL */
    size_t ld_bsums;       /* entries from one row's sums to the next */
} ms_cpu_act;

/* y[r*ldy + c] = dot(row r of x, row c of w) for r < nr, c < nc, over K values.
 * w: nc rows of w_row_bytes bytes each, in the weight's type. */
typedef void (*ms_cpu_mm_fn)(float *y, size_t ldy, const void *w, size_t w_row_bytes, int nc,
                             const ms_cpu_act *x, int nr, int64_t K);

typedef struct ms_cpu_kernels {
    const char *isa; /* "avx2" or "scalar" */

    /* Matmul tiles per weight type. */
    ms_cpu_mm_fn mm_f32, mm_f16, mm_bf16, mm_q8_0, mm_q4_0, mm_q4_K;
    /* Activation row (K % 32 == 0) -> K int8 qs and K/32 scales d, symmetric
     * per block: d = amax/127, q = round-half-even(x/d). */
    void (*quantize_q8)(const float *x, int8_t *qs, float *d, int64_t K);
    /* As quantize_q8, plus bsums[b] = the sum of block b's 32 qs (K/32 entries).
     * Where set (AVX-512), mm_q8_0/mm_q4_0 read these sums through act->bsums;
     * NULL where they do not (act->bsums is then NULL). */
    void (*quantize_q8s)(const float *x, int8_t *qs, float *d, int16_t *bsums, int64_t K);
    /* Activation row (K % 256 == 0) -> K int8 qs, K/256 scales d (as above, per
     * 256 values) and K/32 sums of 32 consecutive qs in bsums. */
    void (*quantize_q8k)(const float *x, int8_t *qs, float *d, int16_t *bsums, int64_t K);

    /* Elementwise, any len (see the determinism contract). */
    void (*add)(float *y, const float *a, const float *b, size_t len);
    void (*gelu)(float *x, size_t len);
    void (*gelu_quick)(float *x, size_t len);
    void (*silu_mul)(float *g, const float *u, size_t len);

    /* One row each. y may alias x. */
    void (*rmsnorm_row)(float *y, const float *x, const float *w, int dim, float eps);
    void (*layernorm_row)(float *y, const float *x, const float *w, const float *b, int dim,
                          float eps);

    /* Attention helpers. Rows j < n of x start at x + j*ld (floats); each row
     * meets the same operations whatever n (the determinism contract). */
    void (*dot_rows)(float *s, const float *q, const float *x, size_t ld, int n, int len); /* s[j] = q·x_j */
    void (*axpy_rows)(float *y, const float *a, const float *x, size_t ld, int n, int len); /* y += a[j]·x_j, j in order */
    void (*scale)(float *y, float a, int n);                   /* y *= a */
    float (*softmax_exp)(float *s, int n, float max);          /* s = exp(s-max); returns sum */
} ms_cpu_kernels;

/* Q4_K: the 8 six-bit scales and 8 six-bit mins of a super-block, unpacked
 * from its 12 packed bytes (layout in quant.h / ggml's get_scale_min_k4). */
static inline void ms_cpu_q4k_scales(const uint8_t q[12], uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = q[j] & 63;
        m[j] = q[j + 4] & 63;
        sc[j + 4] = (uint8_t)((q[j + 8] & 0xF) | ((q[j] >> 6) << 4));
        m[j + 4] = (uint8_t)((q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4));
    }
}

const ms_cpu_kernels *ms_cpu_kernels_scalar(void);
/* The AVX2 table; call only where the CPU has AVX2, FMA and F16C. */
const ms_cpu_kernels *ms_cpu_kernels_avx2(void);
/* The AVX-512 table (AVX2's with AVX-512 matmul kernels); call only where the
 * CPU also has AVX-512 F, BW, VL, DQ and VNNI. */
const ms_cpu_kernels *ms_cpu_kernels_avx512(void);

/* Which kernels ms_backend_cpu_new_isa uses. */
typedef enum ms_cpu_isa {
    MS_CPU_ISA_AUTO = 0,   /* best the CPU supports */
    MS_CPU_ISA_SCALAR = 1, /* portable C (tests use it to cover the fallback) */
    MS_CPU_ISA_AVX2 = 2,   /* AVX2 + FMA + F16C; refused where the CPU lacks them */
    MS_CPU_ISA_AVX512 = 3, /* AVX2 set + AVX-512 F/BW/VL/DQ/VNNI matmuls; refused likewise */
} ms_cpu_isa;

/* The "cpu" backend with a chosen kernel set (ms_backend_cpu_new is AUTO).
 * NULL + err when isa is not supported here or threads cannot start. */
ms_backend *ms_backend_cpu_new_isa(int n_threads, ms_cpu_isa isa, char *err, size_t err_size);
/* "avx512", "avx2" or "scalar" for a "cpu" backend; NULL for any other backend. */
const char *ms_backend_cpu_isa_name(const ms_backend *be);

#endif
