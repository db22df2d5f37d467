/* ops_avx2.c — AVX2 + FMA + F16C kernels of the fast CPU backend (see ops_cpu.h).
 *
 * Compiled with -mavx2 -mfma -mf16c (the *_avx2.c rule in CMakeLists.txt);
 * only ever called after backend_cpu.c has checked the CPU supports them.
 *
 * Matmul: register-tiled micro-kernels of R activation rows x C weight rows.
 * Every accumulator acc[r][c] is an 8-lane vector updated once per 8 values
 * (float weights) or once per 32-value block (quantized weights), in k order,
 * then reduced by the one horizontal sum s_hsum; so an output element gets
 * bit-identical arithmetic whichever tile shape computed it.
 * Quantized weights use ggml's integer trick: with a = |w| (unsigned) and
 * b = sign(x, w), maddubs(a, b) gives the pairwise products w·x as int16
 * without overflow (|w| <= 128, |x| <= 127), madd with ones widens to int32,
 * and the block sum is scaled by d_x·d_w in float.
 */
#include "ops_cpu.h"
#include "quant.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

AI float s_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

AI float s_fp16(ms_fp16 h) { return _cvtsh_ss(h); }

/* ---- float-weight matmul ----------------------------------------------------- */

enum { S_W_F32 = 0, S_W_F16 = 1, S_W_BF16 = 2 };

AI __m256 s_load8(int wt, const uint8_t *p) {
    if (wt == S_W_F32) return _mm256_loadu_ps((const float *)p);
    if (wt == S_W_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

AI float s_load1(int wt, const uint8_t *p) {
    if (wt == S_W_F32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    if (wt == S_W_F16) return s_fp16(h);
    return ms_bf16_to_fp32(h);
}

AI void s_mmf_tile(int R, int C, int wt, float *y, size_t ldy, const uint8_t *w, size_t wrb,
                   const uint8_t *x, size_t xrb, int64_t K) {
    const size_t ws = wt == S_W_F32 ? 4 : 2; /* bytes per weight */
    __m256 acc[4][8];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    const int64_t K8 = K & ~(int64_t)7;
    for (int64_t k = 0; k < K8; k += 8) {
        __m256 wv[8];
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) wv[c] = s_load8(wt, w + c * wrb + (size_t)k * ws);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256 xv = _mm256_loadu_ps((const float *)(x + r * xrb) + k);
#pragma GCC unroll 8
            for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const float *xr = (const float *)(x + r * xrb);
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            float s = s_hsum(acc[r][c]);
            for (int64_t k = K8; k < K; k++) s += xr[k] * s_load1(wt, w + c * wrb + (size_t)k * ws);
            y[r * ldy + c] = s;
        }
    }
}

/* Tile shapes: 4 rows x 3 columns for batches, 1 x 8 for single rows. */
#define S_MMF_TILES(T, WT)                                                                        \
    static void s_mmf_##T##_4x3(float *y, size_t ldy, const uint8_t *w, size_t wrb,               \
                                const uint8_t *x, size_t xrb, int64_t K) {                        \
        s_mmf_tile(4, 3, WT, y, ldy, w, wrb, x, xrb, K);                                          \
    }                                                                                             \
    static void s_mmf_##T##_4x1(float *y, size_t ldy, const uint8_t *w, size_t wrb,               \
                                const uint8_t *x, size_t xrb, int64_t K) {                        \
        s_mmf_tile(4, 1, WT, y, ldy, w, wrb, x, xrb, K);                                          \
    }                                                                                             \
    static void s_mmf_##T##_1x8(float *y, size_t ldy, const uint8_t *w, size_t wrb,               \
                                const uint8_t *x, size_t xrb, int64_t K) {                        \
        s_mmf_tile(1, 8, WT, y, ldy, w, wrb, x, xrb, K);                                          \
    }                                                                                             \
    static void s_mmf_##T##_1x1(float *y, size_t ldy, const uint8_t *w, size_t wrb,               \
                                const uint8_t *x, size_t xrb, int64_t K) {                        \
        s_mmf_tile(1, 1, WT, y, ldy, w, wrb, x, xrb, K);                                          \
    }                                                                                             \
    static void s_mm_##T(float *y, size_t ldy, const void *w, size_t wrb, int nc,                 \
                         const ms_cpu_act *a, int nr, int64_t K) {                                \
        const uint8_t *wb = w, *xb = a->x;                                                        \
        const size_t xrb = a->row_bytes;                                                          \
        int r = 0;                                                                                \
        for (; r + 4 <= nr; r += 4) {                                                             \
            int c = 0;                                                                            \
            for (; c + 3 <= nc; c += 3)                                                           \
                s_mmf_##T##_4x3(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb, K);   \
            for (; c < nc; c++)                                                                   \
                s_mmf_##T##_4x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb, K);   \
        }                                                                                         \
        for (; r < nr; r++) {                                                                     \
            int c = 0;                                                                            \
            for (; c + 8 <= nc; c += 8)                                                           \
                s_mmf_##T##_1x8(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb, K);   \
            for (; c < nc; c++)                                                                   \
                s_mmf_##T##_1x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb, K);   \
        }                                                                                         \
    }

S_MMF_TILES(f32, S_W_F32)
S_MMF_TILES(f16, S_W_F16)
S_MMF_TILES(bf16, S_W_BF16)

/* ---- quantized-weight matmul --------------------------------------------------- */

enum { S_W_Q8_0 = 0, S_W_Q4_0 = 1 };

/* Block b of a weight row as 32 signed bytes, and its scale. */
AI __m256i s_load_wq(int wt, const uint8_t *row, int64_t b, float *d) {
    if (wt == S_W_Q8_0) {
        const ms_block_q8_0 *blk = (const ms_block_q8_0 *)row + b;
        *d = s_fp16(blk->d);
        return _mm256_loadu_si256((const __m256i *)blk->qs);
    }
    const ms_block_q4_0 *blk = (const ms_block_q4_0 *)row + b;
    *d = s_fp16(blk->d);
    const __m128i t = _mm_loadu_si128((const __m128i *)blk->qs);
    const __m128i m = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(t, m);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(t, 4), m);
    return _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
}

AI void s_mmq_tile(int R, int C, int wt, float *y, size_t ldy, const uint8_t *w, size_t wrb,
                   const int8_t *x, size_t xrb, const float *xd, size_t ldxd, int64_t nb) {
    __m256 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; b++) {
        __m256i sw[4], aw[4];
        float dw[4];
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            sw[c] = s_load_wq(wt, w + c * wrb, b, &dw[c]);
            aw[c] = _mm256_sign_epi8(sw[c], sw[c]);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256i xq = _mm256_loadu_si256((const __m256i *)(x + r * xrb + b * MS_CPU_QK));
            const float dx = xd[r * ldxd + b];
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) {
                const __m256i p16 = _mm256_maddubs_epi16(aw[c], _mm256_sign_epi8(xq, sw[c]));
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(dx * dw[c]), p, acc[r][c]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) y[r * ldy + c] = s_hsum(acc[r][c]);
}

#define S_MMQ_TILE(T, WT, R, C)                                                                   \
    static void s_mmq_##T##_##R##x##C(float *y, size_t ldy, const uint8_t *w, size_t wrb,         \
                                      const int8_t *x, size_t xrb, const float *xd, size_t ldxd,  \
                                      int64_t nb) {                                               \
        s_mmq_tile(R, C, WT, y, ldy, w, wrb, x, xrb, xd, ldxd, nb);                               \
    }

/* Tile shapes: 4 rows x 2 columns for batches, 1 x 4 for single rows. */
#define S_MMQ_TILES(T, WT)                                                                        \
    S_MMQ_TILE(T, WT, 4, 2)                                                                       \
    S_MMQ_TILE(T, WT, 4, 1)                                                                       \
    S_MMQ_TILE(T, WT, 1, 4)                                                                       \
    S_MMQ_TILE(T, WT, 1, 1)                                                                       \
    static void s_mm_##T(float *y, size_t ldy, const void *w, size_t wrb, int nc,                 \
                         const ms_cpu_act *a, int nr, int64_t K) {                                \
        const uint8_t *wb = w;                                                                    \
        const int8_t *xb = a->x;                                                                  \
        const size_t xrb = a->row_bytes, ldxd = a->ld_d;                                          \
        const float *xd = a->d;                                                                   \
        const int64_t nb = K / MS_CPU_QK;                                                         \
        int r = 0;                                                                                \
        for (; r + 4 <= nr; r += 4) {                                                             \
            int c = 0;                                                                            \
            for (; c + 2 <= nc; c += 2)                                                           \
                s_mmq_##T##_4x2(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb,       \
                                xd + r * ldxd, ldxd, nb);                                         \
            for (; c < nc; c++)                                                                   \
                s_mmq_##T##_4x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb,       \
                                xd + r * ldxd, ldxd, nb);                                         \
        }                                                                                         \
        for (; r < nr; r++) {                                                                     \
            int c = 0;                                                                            \
            for (; c + 4 <= nc; c += 4)                                                           \
                s_mmq_##T##_1x4(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb,       \
                                xd + r * ldxd, ldxd, nb);                                         \
            for (; c < nc; c++)                                                                   \
                s_mmq_##T##_1x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb,       \
                                xd + r * ldxd, ldxd, nb);                                         \
        }                                                                                         \
    }

S_MMQ_TILES(q8_0, S_W_Q8_0)
S_MMQ_TILES(q4_0, S_W_Q4_0)

/* Q4_K against Q8_K-style activations (one scale per 256, sums per 32):
 * the unsigned nibbles q go straight into maddubs(q, x); madd with the
 * sub-block's 6-bit scale widens to int32 and applies the scale, so a
 * super-block is summed in int32 and converted once; the mins enter through
 * the activation block sums: dot = dx*(d*isum - dmin*sum_j m_j*bsum_j). */
AI void s_q4k_prep(const ms_block_q4_K *blk, __m256i *sc16, __m128i *mn16) {
    uint32_t q[3];
    memcpy(q, blk->scales, 12);
    const uint32_t s0 = q[0] & 0x3f3f3f3fu, m0 = q[1] & 0x3f3f3f3fu;
    const uint32_t s1 = (q[2] & 0x0f0f0f0fu) | (((q[0] >> 6) & 0x03030303u) << 4);
    const uint32_t m1 = ((q[2] >> 4) & 0x0f0f0f0fu) | (((q[1] >> 6) & 0x03030303u) << 4);
    const __m256i v = _mm256_cvtepu8_epi16(_mm_set_epi32((int)m1, (int)m0, (int)s1, (int)s0));
    *sc16 = _mm256_permute2x128_si256(v, v, 0x00); /* 8 scales in both lanes */
    *mn16 = _mm256_extracti128_si256(v, 1);        /* 8 mins */
}

/* int16 broadcast of scale j of sc16 (pshufb picks bytes 2j, 2j+1 everywhere). */
AI __m256i s_scale_j(__m256i sc16, int j) {
    return _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)((2 * j) | ((2 * j + 1) << 8))));
}

AI float s_hsum4(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

AI void s_mmk_tile(int R, int C, float *y, size_t ldy, const uint8_t *w, size_t wrb,
                   const int8_t *x, size_t xrb, const float *xd, size_t ldxd, const int16_t *bs,
                   size_t ldbs, int64_t nsb) {
    __m256 acc[4][4];
    __m128 cor[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
            cor[r][c] = _mm_setzero_ps();
        }
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t b = 0; b < nsb; b++) {
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            const ms_block_q4_K *blk = (const ms_block_q4_K *)(w + c * wrb) + b;
            __m256i sc16;
            __m128i mn16;
            s_q4k_prep(blk, &sc16, &mn16);
            __m256i isum[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) isum[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int jj = 0; jj < 4; jj++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * jj));
                const __m256i lo = _mm256_and_si256(v, m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                const __m256i slo = s_scale_j(sc16, 2 * jj), shi = s_scale_j(sc16, 2 * jj + 1);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    const int8_t *xb = x + r * xrb + b * MS_CPU_QKK + 64 * jj;
                    const __m256i x0 = _mm256_loadu_si256((const __m256i *)xb);
                    const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb + 32));
                    const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), slo);
                    const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), shi);
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(p0, p1));
                }
            }
            const float dd = s_fp16(blk->d), dm = s_fp16(blk->dmin);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const float dx = xd[r * ldxd + b];
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(dd * dx), _mm256_cvtepi32_ps(isum[r]), acc[r][c]);
                const __m128i bsv = _mm_loadu_si128((const __m128i *)(bs + r * ldbs + b * 8));
                cor[r][c] = _mm_fmadd_ps(_mm_set1_ps(dm * dx), _mm_cvtepi32_ps(_mm_madd_epi16(mn16, bsv)),
                                         cor[r][c]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) y[r * ldy + c] = s_hsum(acc[r][c]) - s_hsum4(cor[r][c]);
}

#define S_MMK_TILE(R, C)                                                                          \
    static void s_mmk_##R##x##C(float *y, size_t ldy, const uint8_t *w, size_t wrb,               \
                                const ms_cpu_act *a, int r, int64_t nsb) {                        \
        s_mmk_tile(R, C, y, ldy, w, wrb, (const int8_t *)a->x + r * a->row_bytes, a->row_bytes,   \
                   a->d + r * a->ld_d, a->ld_d, a->bsums + r * a->ld_bsums, a->ld_bsums, nsb);    \
    }
S_MMK_TILE(4, 2)
S_MMK_TILE(4, 1)
S_MMK_TILE(1, 4)
S_MMK_TILE(1, 1)

static void s_mm_q4_K(float *y, size_t ldy, const void *w, size_t wrb, int nc, const ms_cpu_act *a,
                      int nr, int64_t K) {
    const uint8_t *wb = w;
    const int64_t nsb = K / MS_CPU_QKK;
    int r = 0;
    for (; r + 4 <= nr; r += 4) {
        int c = 0;
        for (; c + 2 <= nc; c += 2) s_mmk_4x2(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nsb);
        for (; c < nc; c++) s_mmk_4x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nsb);
    }
    for (; r < nr; r++) {
        int c = 0;
        for (; c + 4 <= nc; c += 4) s_mmk_1x4(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nsb);
        for (; c < nc; c++) s_mmk_1x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nsb);
    }
}

/* Same rounding as ops_scalar.c: d = amax/127, q = round-half-even(x * (1/d)). */
/* 32 floats -> 32 int8 (round half to even) scaled by id. */
AI void s_q8_store(const float *x, float id, int8_t *qs) {
    const __m256 idv = _mm256_set1_ps(id);
    __m256i q[4];
    for (int i = 0; i < 4; i++) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), idv));
    /* int32 -> int16 -> int8; packs interleave 128-bit lanes, the permute undoes it */
    const __m256i q01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i q23 = _mm256_packs_epi32(q[2], q[3]);
    __m256i q8 = _mm256_packs_epi16(q01, q23);
    q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, q8);
}

/* max |x| over n (a multiple of 8) floats */
AI float s_amax(const float *x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 am = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) am = _mm256_max_ps(am, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

static void s_quantize_q8(const float *x, int8_t *qs, float *d, int64_t K) {
    for (int64_t b = 0; b < K / MS_CPU_QK; b++) {
        const float db = s_amax(x + b * MS_CPU_QK, MS_CPU_QK) / 127.0f;
        d[b] = db;
        s_q8_store(x + b * MS_CPU_QK, db != 0.0f ? 1.0f / db : 0.0f, qs + b * MS_CPU_QK);
    }
}

static void s_quantize_q8k(const float *x, int8_t *qs, float *d, int16_t *bsums, int64_t K) {
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < K / MS_CPU_QKK; b++) {
        const float db = s_amax(x + b * MS_CPU_QKK, MS_CPU_QKK) / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = db;
        for (int j = 0; j < MS_CPU_QKK / 32; j++) {
            int8_t *q = qs + b * MS_CPU_QKK + 32 * j;
            s_q8_store(x + b * MS_CPU_QKK + 32 * j, id, q);
            /* sum of 32 int8: maddubs(1, q) pairs, madd(1) quads, then horizontal */
            const __m256i s32 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(ones8, _mm256_loadu_si256((const __m256i *)q)), ones16);
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
            bsums[b * (MS_CPU_QKK / 32) + j] = (int16_t)_mm_cvtsi128_si32(t);
        }
    }
}

/* ---- exp and friends ------------------------------------------------------------- */

/* e^x, Cephes-style: x = n·ln2 + r, |r| <= ln2/2, degree-6 polynomial, relative
 * error ~1e-7; 0 below -87.3, +inf above 88.72. */
AI __m256 s_exp(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504f);
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    const __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    res = _mm256_blendv_ps(res, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    res = _mm256_blendv_ps(res, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(88.72283935546875f), _CMP_GT_OQ));
    return res;
}

#define MS_SQRT_2_OVER_PI 0.79788456080286535588f
#define MS_GELU_COEF_A    0.044715f
#define MS_GELU_QUICK_A   1.702f

AI __m256 s_gelu8(__m256 v) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(MS_SQRT_2_OVER_PI), v),
                                   _mm256_fmadd_ps(_mm256_set1_ps(MS_GELU_COEF_A), _mm256_mul_ps(v, v), one));
    const __m256 t = s_exp(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
    return _mm256_div_ps(v, _mm256_add_ps(one, t));
}

AI __m256 s_gelu_quick8(__m256 v) {
    const __m256 t = s_exp(_mm256_mul_ps(_mm256_set1_ps(-MS_GELU_QUICK_A), v));
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), t));
}

AI __m256 s_silu8(__m256 v) {
    const __m256 t = s_exp(_mm256_sub_ps(_mm256_setzero_ps(), v));
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), t));
}

/* Ragged tails run the same vector code on a zero-padded copy. */
static void s_gelu(float *x, size_t len) {
    size_t i = 0;
    for (; i + 8 <= len; i += 8) _mm256_storeu_ps(x + i, s_gelu8(_mm256_loadu_ps(x + i)));
    if (i < len) {
        float t[8] = {0};
        memcpy(t, x + i, (len - i) * sizeof(float));
        _mm256_storeu_ps(t, s_gelu8(_mm256_loadu_ps(t)));
        memcpy(x + i, t, (len - i) * sizeof(float));
    }
}

static void s_gelu_quick(float *x, size_t len) {
    size_t i = 0;
    for (; i + 8 <= len; i += 8) _mm256_storeu_ps(x + i, s_gelu_quick8(_mm256_loadu_ps(x + i)));
    if (i < len) {
        float t[8] = {0};
        memcpy(t, x + i, (len - i) * sizeof(float));
        _mm256_storeu_ps(t, s_gelu_quick8(_mm256_loadu_ps(t)));
        memcpy(x + i, t, (len - i) * sizeof(float));
    }
}

static void s_silu_mul(float *g, const float *u, size_t len) {
    size_t i = 0;
    for (; i + 8 <= len; i += 8)
        _mm256_storeu_ps(g + i, _mm256_mul_ps(s_silu8(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
    if (i < len) {
        float tg[8] = {0}, tu[8] = {0};
        memcpy(tg, g + i, (len - i) * sizeof(float));
        memcpy(tu, u + i, (len - i) * sizeof(float));
        _mm256_storeu_ps(tg, _mm256_mul_ps(s_silu8(_mm256_loadu_ps(tg)), _mm256_loadu_ps(tu)));
        memcpy(g + i, tg, (len - i) * sizeof(float));
    }
}

static void s_add(float *y, const float *a, const float *b, size_t len) {
    size_t i = 0;
    for (; i + 8 <= len; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    for (; i < len; i++) y[i] = a[i] + b[i]; /* one IEEE add either way */
}

/* ---- per-row ops ----------------------------------------------------------------- */

/* Sum of squares (or of values) with two 8-lane accumulators; order fixed by n. */
AI float s_sum_sq(const float *x, int n, float sub, bool square) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    const __m256 sv = _mm256_set1_ps(sub);
    int k = 0;
    for (; k + 16 <= n; k += 16) {
        __m256 v0 = _mm256_sub_ps(_mm256_loadu_ps(x + k), sv);
        __m256 v1 = _mm256_sub_ps(_mm256_loadu_ps(x + k + 8), sv);
        if (square) {
            a0 = _mm256_fmadd_ps(v0, v0, a0);
            a1 = _mm256_fmadd_ps(v1, v1, a1);
        } else {
            a0 = _mm256_add_ps(a0, v0);
            a1 = _mm256_add_ps(a1, v1);
        }
    }
    float s = s_hsum(_mm256_add_ps(a0, a1));
    for (; k < n; k++) s += square ? (x[k] - sub) * (x[k] - sub) : x[k] - sub;
    return s;
}

/* y = (x - sub) * scale * w (+ b) */
AI void s_norm_apply(float *y, const float *x, float sub, float scale, const float *w,
                     const float *b, int n) {
    const __m256 sv = _mm256_set1_ps(sub), cv = _mm256_set1_ps(scale);
    int k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + k), sv), cv),
                                 _mm256_loadu_ps(w + k));
        if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + k));
        _mm256_storeu_ps(y + k, v);
    }
    for (; k < n; k++) y[k] = (x[k] - sub) * scale * w[k] + (b ? b[k] : 0.0f);
}

static void s_rmsnorm_row(float *y, const float *x, const float *w, int dim, float eps) {
    const float ss = s_sum_sq(x, dim, 0.0f, true);
    s_norm_apply(y, x, 0.0f, 1.0f / sqrtf(ss / (float)dim + eps), w, NULL, dim);
}

static void s_layernorm_row(float *y, const float *x, const float *w, const float *b, int dim,
                            float eps) {
    const float mean = s_sum_sq(x, dim, 0.0f, false) / (float)dim;
    const float var = s_sum_sq(x, dim, mean, true) / (float)dim;
    s_norm_apply(y, x, mean, 1.0f / sqrtf(var + eps), w, b, dim);
}

/* ---- attention helpers ------------------------------------------------------------- */

/* R dot products q·x_r over len values, each with two 8-lane accumulators
 * (k mod 16 < 8 and >= 8), one fixed horizontal sum, then a scalar tail. */
AI void s_dot_tile(int R, float *s, const float *q, const float *x, size_t ld, int len) {
    __m256 a0[4], a1[4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= len; k += 16) {
        const __m256 q0 = _mm256_loadu_ps(q + k), q1 = _mm256_loadu_ps(q + k + 8);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            a0[r] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(x + r * ld + k), a0[r]);
            a1[r] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(x + r * ld + k + 8), a1[r]);
        }
    }
    if (k + 8 <= len) {
        const __m256 q0 = _mm256_loadu_ps(q + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) a0[r] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(x + r * ld + k), a0[r]);
        k += 8;
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        float t = s_hsum(_mm256_add_ps(a0[r], a1[r]));
        for (int i = k; i < len; i++) t += q[i] * x[r * ld + i];
        s[r] = t;
    }
}

static void s_dot_rows(float *s, const float *q, const float *x, size_t ld, int n, int len) {
    int j = 0;
    for (; j + 4 <= n; j += 4) s_dot_tile(4, s + j, q, x + (size_t)j * ld, ld, len);
    for (; j < n; j++) s_dot_tile(1, s + j, q, x + (size_t)j * ld, ld, len);
}

/* y[0..8C) += a[j]·x_j[0..8C) for j = 0..n-1 in order, y kept in registers. */
AI void s_axpy_chunk(int C, float *y, const float *a, const float *x, size_t ld, int n) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) acc[c] = _mm256_loadu_ps(y + 8 * c);
    for (int j = 0; j < n; j++) {
        const __m256 av = _mm256_set1_ps(a[j]);
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) acc[c] = _mm256_fmadd_ps(av, _mm256_loadu_ps(x + j * ld + 8 * c), acc[c]);
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) _mm256_storeu_ps(y + 8 * c, acc[c]);
}

static void s_axpy_rows(float *y, const float *a, const float *x, size_t ld, int n, int len) {
    int k = 0;
    for (; k + 64 <= len; k += 64) s_axpy_chunk(8, y + k, a, x + k, ld, n);
    switch ((len - k) / 8) {
    case 7: s_axpy_chunk(7, y + k, a, x + k, ld, n); break;
    case 6: s_axpy_chunk(6, y + k, a, x + k, ld, n); break;
    case 5: s_axpy_chunk(5, y + k, a, x + k, ld, n); break;
    case 4: s_axpy_chunk(4, y + k, a, x + k, ld, n); break;
    case 3: s_axpy_chunk(3, y + k, a, x + k, ld, n); break;
    case 2: s_axpy_chunk(2, y + k, a, x + k, ld, n); break;
    case 1: s_axpy_chunk(1, y + k, a, x + k, ld, n); break;
    default: break;
    }
    for (k += (len - k) / 8 * 8; k < len; k++)
        for (int j = 0; j < n; j++) y[k] += a[j] * x[j * ld + k];
}

static void s_scale(float *y, float a, int n) {
    const __m256 av = _mm256_set1_ps(a);
    int k = 0;
    for (; k + 8 <= n; k += 8) _mm256_storeu_ps(y + k, _mm256_mul_ps(av, _mm256_loadu_ps(y + k)));
    for (; k < n; k++) y[k] *= a;
}

static float s_softmax_exp(float *s, int n, float max) {
    const __m256 mv = _mm256_set1_ps(max);
    __m256 acc = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 e = s_exp(_mm256_sub_ps(_mm256_loadu_ps(s + k), mv));
        _mm256_storeu_ps(s + k, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = s_hsum(acc);
    if (k < n) {
        float t[8];
        for (int i = 0; i < 8; i++) t[i] = k + i < n ? s[k + i] : max;
        _mm256_storeu_ps(t, s_exp(_mm256_sub_ps(_mm256_loadu_ps(t), mv)));
        for (int i = 0; k + i < n; i++) {
            s[k + i] = t[i];
            sum += t[i];
        }
    }
    return sum;
}

static const ms_cpu_kernels s_kernels = {
    .isa = "avx2",
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

const ms_cpu_kernels *ms_cpu_kernels_avx2(void) { return &s_kernels; }
