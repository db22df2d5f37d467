/* ops_avx512.c — AVX-512 (F, BW, VL, DQ, VNNI) matmul kernels of the fast CPU
 * backend (see ops_cpu.h). Everything else in the table (elementwise ops,
 * attention helpers, Q8_0 activation quantization) is the AVX2 code.
 *
 * The ISA is enabled per function by the target pragma below, so no build flag
 * is needed; backend_cpu.c calls these only after __builtin_cpu_supports says
 * the CPU has every extension named in it.
 *
 * Float weights: 16-lane FMA tiles (f16/bf16 widened to f32 exactly), ragged K
 * tails by masked loads, so every output element is one accumulator updated in
 * k order and reduced by s_hsum16, whatever the tile shape (ops_cpu.h).
 * Quantized weights use VNNI's vpdpbusd (u8 x s8, 4 products summed per int32
 * lane): Q8_0 weights are made unsigned by adding 128 and Q4_0 nibbles are used
 * as stored (q, not q-8); the offset times the activation sum is removed by
 * seeding the accumulator with -offset·Σx, itself one vpdpbusd of the offset
 * against -x. Q4_K runs on Q8_K-style activations stored with sub-blocks 1,2
 * and 5,6 swapped, so a 64-byte load of nibbles (sub-blocks j and j+2) meets
 * the matching 64 activations in one load.
 */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")

#include "ops_cpu.h"
#include "quant.h"

#include <immintrin.h>
#include <pthread.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

AI float s_hsum16(__m512 v) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

AI float s_hsum4(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

AI float s_fp16(ms_fp16 h) { return _cvtsh_ss(h); }

/* ---- float-weight matmul ---------------------------------------------------------- */

enum { S_W_F32 = 0, S_W_F16 = 1, S_W_BF16 = 2 };

AI __m512 s_wload(int wt, const uint8_t *p, __mmask16 m, bool masked) {
    if (wt == S_W_F32) return masked ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p);
    const __m256i h = masked ? _mm256_maskz_loadu_epi16(m, p) : _mm256_loadu_si256((const __m256i *)p);
    if (wt == S_W_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AI void s_mmf_tile(int R, int C, int wt, float *y, size_t ldy, const uint8_t *w, size_t wrb,
                   const uint8_t *x, size_t xrb, int64_t K) {
    const size_t ws = wt == S_W_F32 ? 4 : 2;
    __m512 acc[8][8];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    const int64_t K16 = K & ~(int64_t)15;
    for (int64_t k = 0; k < K16; k += 16) {
        __m512 wv[8];
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) wv[c] = s_wload(wt, w + c * wrb + (size_t)k * ws, 0, false);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m512 xv = _mm512_loadu_ps((const float *)(x + r * xrb) + k);
#pragma GCC unroll 8
            for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
    if (K16 < K) {
        const __mmask16 m = (__mmask16)((1u << (K - K16)) - 1);
        __m512 wv[8];
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) wv[c] = s_wload(wt, w + c * wrb + (size_t)K16 * ws, m, true);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, (const float *)(x + r * xrb) + K16);
#pragma GCC unroll 8
            for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) y[r * ldy + c] = s_hsum16(acc[r][c]);
}

#define S_MMF_TILE(T, WT, R, C)                                                                   \
    static void s_mmf_##T##_##R##x##C(float *y, size_t ldy, const uint8_t *w, size_t wrb,         \
                                      const uint8_t *x, size_t xrb, int64_t K) {                  \
        s_mmf_tile(R, C, WT, y, ldy, w, wrb, x, xrb, K);                                          \
    }

/* Tile shapes: 6 rows x 4 columns for batches (24 accumulators), 1 x 8 for single rows. */
#define S_MMF_TILES(T, WT)                                                                        \
    S_MMF_TILE(T, WT, 6, 4)                                                                       \
    S_MMF_TILE(T, WT, 6, 1)                                                                       \
    S_MMF_TILE(T, WT, 1, 4)                                                                       \
    S_MMF_TILE(T, WT, 1, 1)                                                                       \
    static void s_mm_##T(float *y, size_t ldy, const void *w, size_t wrb, int nc,                 \
                         const ms_cpu_act *a, int nr, int64_t K) {                                \
        const uint8_t *wb = w, *xb = a->x;                                                        \
        const size_t xrb = a->row_bytes;                                                          \
        int r = 0;                                                                                \
        for (; r + 6 <= nr; r += 6) {                                                             \
            int c = 0;                                                                            \
            for (; c + 4 <= nc; c += 4)                                                           \
                s_mmf_##T##_6x4(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb, K);   \
            for (; c < nc; c++)                                                                   \
                s_mmf_##T##_6x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb, K);   \
        }                                                                                         \
        for (; r < nr; r++) {                                                                     \
            int c = 0;                                                                            \
            for (; c + 4 <= nc; c += 4)                                                           \
                s_mmf_##T##_1x4(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb, K);   \
            for (; c < nc; c++)                                                                   \
                s_mmf_##T##_1x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, xb + r * xrb, xrb, K);   \
        }                                                                                         \
    }

S_MMF_TILES(f32, S_W_F32)
S_MMF_TILES(f16, S_W_F16)
S_MMF_TILES(bf16, S_W_BF16)

/* ---- Q8_0 / Q4_0 ---------------------------------------------------------------------- */

enum { S_W_Q8_0 = 0, S_W_Q4_0 = 1 };

/* Blocks b and b+1 (or b alone, upper half zero) of a weight row as 64 unsigned
 * bytes, and their scales as [d_b x8 | d_b1 x8]. */
AI __m512i s_wq2(int wt, const uint8_t *row, int64_t b, bool pair, __m512 *d) {
    if (wt == S_W_Q8_0) {
        const ms_block_q8_0 *blk = (const ms_block_q8_0 *)row + b;
        const __m256i lo = _mm256_loadu_si256((const __m256i *)blk[0].qs);
        const __m256i hi = pair ? _mm256_loadu_si256((const __m256i *)blk[1].qs) : _mm256_set1_epi8(-128);
        *d = _mm512_insertf32x8(_mm512_set1_ps(s_fp16(blk[0].d)),
                                _mm256_set1_ps(pair ? s_fp16(blk[1].d) : 0.0f), 1);
        return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                                _mm512_set1_epi8(-128)); /* w + 128 */
    }
    const ms_block_q4_0 *blk = (const ms_block_q4_0 *)row + b;
    const __m128i q0 = _mm_loadu_si128((const __m128i *)blk[0].qs);
    const __m128i q1 = pair ? _mm_loadu_si128((const __m128i *)blk[1].qs) : _mm_setzero_si128();
    *d = _mm512_insertf32x8(_mm512_set1_ps(s_fp16(blk[0].d)),
                            _mm256_set1_ps(pair ? s_fp16(blk[1].d) : 0.0f), 1);
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
    /* [lo nibbles b | lo b1 | hi b | hi b1] -> [lo b | hi b | lo b1 | hi b1] */
    __m512i t = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
    t = _mm512_and_si512(t, _mm512_set1_epi8(0x0F));
    return _mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(3, 1, 2, 0));
}

AI void s_mmq_tile(int R, int C, int wt, float *y, size_t ldy, const uint8_t *w, size_t wrb,
                   const int8_t *x, size_t xrb, const float *xd, size_t ldxd, int64_t nb) {
    __m512 acc[8][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    const __m512i off = _mm512_set1_epi8(wt == S_W_Q8_0 ? -128 : 8); /* as u8: 128 or 8 */
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t b = 0; b < nb; b += 2) {
        const bool pair = b + 1 < nb;
        const __mmask64 xm = pair ? ~(__mmask64)0 : (__mmask64)0xFFFFFFFFu;
        __m512i wu[4];
        __m512 dw[4];
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) wu[c] = s_wq2(wt, w + c * wrb, b, pair, &dw[c]);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m512i xv = _mm512_maskz_loadu_epi8(xm, x + r * xrb + b * MS_CPU_QK);
            const __m512i negc = _mm512_dpbusd_epi32(zero, off, _mm512_sub_epi8(zero, xv));
            const float *dxp = xd + r * ldxd + b;
            const __m512 dx = _mm512_insertf32x8(_mm512_set1_ps(dxp[0]), _mm256_set1_ps(pair ? dxp[1] : 0.0f), 1);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) {
                const __m512i p = _mm512_dpbusd_epi32(negc, wu[c], xv);
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dx, dw[c]), acc[r][c]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) y[r * ldy + c] = s_hsum16(acc[r][c]);
}

#define S_MMQ_TILE(T, WT, R, C)                                                                   \
    static void s_mmq_##T##_##R##x##C(float *y, size_t ldy, const uint8_t *w, size_t wrb,         \
                                      const ms_cpu_act *a, int r, int64_t nb) {                   \
        s_mmq_tile(R, C, WT, y, ldy, w, wrb, (const int8_t *)a->x + r * a->row_bytes,             \
                   a->row_bytes, a->d + r * a->ld_d, a->ld_d, nb);                                \
    }

/* Tile shapes: 4 rows x 4 columns for batches, 1 x 4 for single rows. */
#define S_MMQ_TILES(T, WT)                                                                        \
    S_MMQ_TILE(T, WT, 4, 4)                                                                       \
    S_MMQ_TILE(T, WT, 4, 1)                                                                       \
    S_MMQ_TILE(T, WT, 1, 4)                                                                       \
    S_MMQ_TILE(T, WT, 1, 1)                                                                       \
    static void s_mm_##T(float *y, size_t ldy, const void *w, size_t wrb, int nc,                 \
                         const ms_cpu_act *a, int nr, int64_t K) {                                \
        const uint8_t *wb = w;                                                                    \
        const int64_t nb = K / MS_CPU_QK;                                                         \
        int r = 0;                                                                                \
        for (; r + 4 <= nr; r += 4) {                                                             \
            int c = 0;                                                                            \
            for (; c + 4 <= nc; c += 4)                                                           \
                s_mmq_##T##_4x4(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nb);               \
            for (; c < nc; c++) s_mmq_##T##_4x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nb); \
        }                                                                                         \
        for (; r < nr; r++) {                                                                     \
            int c = 0;                                                                            \
            for (; c + 4 <= nc; c += 4)                                                           \
                s_mmq_##T##_1x4(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nb);               \
            for (; c < nc; c++) s_mmq_##T##_1x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nb); \
        }                                                                                         \
    }

S_MMQ_TILES(q8_0, S_W_Q8_0)
S_MMQ_TILES(q4_0, S_W_Q4_0)

/* ---- Q4_K ---------------------------------------------------------------------------- */

/* Activation order within a super-block: sub-blocks 0 2 1 3 4 6 5 7 (swap 1<->2, 5<->6). */
static const int s_k_perm[8] = {0, 2, 1, 3, 4, 6, 5, 7};

AI void s_mmk_tile(int R, int C, float *y, size_t ldy, const uint8_t *w, size_t wrb,
                   const int8_t *x, size_t xrb, const float *xd, size_t ldxd, const int16_t *bs,
                   size_t ldbs, int64_t nsb) {
    __m512 acc[8][4];
    __m128 cor[8][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm512_setzero_ps();
            cor[r][c] = _mm_setzero_ps();
        }
    const __m512i m4 = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
    /* lanes 0-7 take scale i, lanes 8-15 scale i+2: chunk order lo0 hi0 lo1 hi1 */
    const __m512i sidx[4] = {
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2),
        _mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3),
        _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6),
        _mm512_setr_epi32(5, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7, 7, 7)};
    for (int64_t b = 0; b < nsb; b++) {
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            const ms_block_q4_K *blk = (const ms_block_q4_K *)(w + c * wrb) + b;
            uint32_t q[3];
            memcpy(q, blk->scales, 12);
            const uint32_t s0 = q[0] & 0x3f3f3f3fu, m0 = q[1] & 0x3f3f3f3fu;
            const uint32_t s1 = (q[2] & 0x0f0f0f0fu) | (((q[0] >> 6) & 0x03030303u) << 4);
            const uint32_t m1 = ((q[2] >> 4) & 0x0f0f0f0fu) | (((q[1] >> 6) & 0x03030303u) << 4);
            const __m512i sc32 = _mm512_cvtepu8_epi32(_mm_setr_epi32((int)s0, (int)s1, 0, 0));
            const __m128i mn16 = _mm_cvtepu8_epi16(_mm_setr_epi32((int)m0, (int)m1, 0, 0));
            const __m512i q0 = _mm512_loadu_si512(blk->qs), q1 = _mm512_loadu_si512(blk->qs + 64);
            const __m512i wq[4] = {_mm512_and_si512(q0, m4),
                                   _mm512_and_si512(_mm512_srli_epi16(q0, 4), m4),
                                   _mm512_and_si512(q1, m4),
                                   _mm512_and_si512(_mm512_srli_epi16(q1, 4), m4)};
            __m512i s[4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) s[i] = _mm512_permutexvar_epi32(sidx[i], sc32);
            const float dd = s_fp16(blk->d), dm = s_fp16(blk->dmin);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const int8_t *xb = x + r * xrb + b * MS_CPU_QKK;
                __m512i isum = zero;
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    const __m512i p = _mm512_dpbusd_epi32(zero, wq[i], _mm512_loadu_si512(xb + 64 * i));
                    isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(p, s[i]));
                }
                const float dx = xd[r * ldxd + b];
                acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(dd * dx), _mm512_cvtepi32_ps(isum), acc[r][c]);
                const __m128i bsv = _mm_loadu_si128((const __m128i *)(bs + r * ldbs + b * 8));
                cor[r][c] = _mm_fmadd_ps(_mm_set1_ps(dm * dx), _mm_cvtepi32_ps(_mm_madd_epi16(mn16, bsv)),
                                         cor[r][c]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) y[r * ldy + c] = s_hsum16(acc[r][c]) - s_hsum4(cor[r][c]);
}

#define S_MMK_TILE(R, C)                                                                          \
    static void s_mmk_##R##x##C(float *y, size_t ldy, const uint8_t *w, size_t wrb,               \
                                const ms_cpu_act *a, int r, int64_t nsb) {                        \
        s_mmk_tile(R, C, y, ldy, w, wrb, (const int8_t *)a->x + r * a->row_bytes, a->row_bytes,   \
                   a->d + r * a->ld_d, a->ld_d, a->bsums + r * a->ld_bsums, a->ld_bsums, nsb);    \
    }
S_MMK_TILE(4, 4)
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
        for (; c + 4 <= nc; c += 4) s_mmk_4x4(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nsb);
        for (; c < nc; c++) s_mmk_4x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nsb);
    }
    for (; r < nr; r++) {
        int c = 0;
        for (; c + 4 <= nc; c += 4) s_mmk_1x4(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nsb);
        for (; c < nc; c++) s_mmk_1x1(y + r * ldy + c, ldy, wb + c * wrb, wrb, a, r, nsb);
    }
}

/* As the AVX2/scalar quantize_q8k (same values), with the sub-block order above. */
static void s_quantize_q8k(const float *x, int8_t *qs, float *d, int16_t *bsums, int64_t K) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < K / MS_CPU_QKK; b++) {
        const float *xb = x + b * MS_CPU_QKK;
        __m512 am = _mm512_setzero_ps();
        for (int i = 0; i < MS_CPU_QKK; i += 16) am = _mm512_max_ps(am, _mm512_andnot_ps(sign, _mm512_loadu_ps(xb + i)));
        __m256 m8 = _mm256_max_ps(_mm512_castps512_ps256(am), _mm512_extractf32x8_ps(am, 1));
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        const float db = _mm_cvtss_f32(m) / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = db;
        const __m512 idv = _mm512_set1_ps(id);
        for (int j = 0; j < 8; j++) {
            int8_t *q = qs + b * MS_CPU_QKK + 32 * s_k_perm[j];
            const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 32 * j), idv));
            const __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 32 * j + 16), idv));
            _mm_storeu_si128((__m128i *)q, _mm512_cvtsepi32_epi8(i0));
            _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtsepi32_epi8(i1));
            bsums[b * 8 + j] = (int16_t)(_mm512_reduce_add_epi32(i0) + _mm512_reduce_add_epi32(i1));
        }
    }
}

/* ---- the table ------------------------------------------------------------------------- */

static ms_cpu_kernels s_kernels;
static pthread_once_t s_once = PTHREAD_ONCE_INIT;

static void s_init(void) {
    s_kernels = *ms_cpu_kernels_avx2();
    s_kernels.isa = "avx512";
    s_kernels.mm_f32 = s_mm_f32;
    s_kernels.mm_f16 = s_mm_f16;
    s_kernels.mm_bf16 = s_mm_bf16;
    s_kernels.mm_q8_0 = s_mm_q8_0;
    s_kernels.mm_q4_0 = s_mm_q4_0;
    s_kernels.mm_q4_K = s_mm_q4_K;
    s_kernels.quantize_q8k = s_quantize_q8k;
}

const ms_cpu_kernels *ms_cpu_kernels_avx512(void) {
    pthread_once(&s_once, s_init);
    return &s_kernels;
}
