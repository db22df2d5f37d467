/* ops_avx512.c — AVX-512 (F, BW, VL, DQ, VNNI) matmul kernels of the fast CPU
 * backend (see ops_cpu.h), and the activation quantization they read.
 * Everything else in the table (elementwise ops, attention helpers) is the
 * AVX2 code.
 *
 * The ISA comes from the -mavx512* flags CMakeLists.txt gives *_avx512.c files
 * (and, under GCC, from the target pragma below as well); backend_cpu.c calls
 * into this file only after __builtin_cpu_supports says the CPU has every
 * extension named there.
 *
 * Float weights: 16-lane FMA tiles (f16/bf16 widened to f32 exactly), ragged K
 * tails by masked loads, so every output element is one accumulator updated in
 * k order and reduced by s_hsum16, whatever the tile shape (ops_cpu.h).
 * Quantized weights use VNNI's vpdpbusd (u8 x s8, 4 products summed per int32
 * lane). Q8_0 weights are made unsigned by adding 128 and Q4_0 nibbles are used
 * as stored (q, not q-8); each group of 16 blocks is reduced in int32 to one
 * lane per block, the offset is removed with the activation block sums, and
 * one FMA applies the 16 scale products (details above s_mmq_group). Q4_K runs
 * on Q8_K-style activations stored with sub-blocks 1,2 and 5,6 swapped, so a
 * 64-byte load of nibbles (sub-blocks j and j+2) meets the matching 64
 * activations in one load. The quantized kernels prefetch the weights
 * S_QPF_BYTES ahead: at decode they stream every weight from memory.
 */
#if !defined(__clang__) /* clang knows no target pragma: it takes the flags CMakeLists.txt sets */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#endif

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

/* Blocks are taken in groups of S_QG = 16: for one (row, column), each block
 * pair is one vpdpbusd (64 weights against 64 activations, 16 int32 lanes of
 * 4 products), a group's 8 results are reduced in int32 to one lane per block
 * (s_qred: shuffles and adds, exact), the offset is taken off with the
 * activation block sums (offset·Σx, from quantize_q8s), and the 16 block sums
 * meet their scales d_x·d_w in one float FMA into that (row, column)'s 16-lane
 * accumulator.
 * Tiles are R rows (1-4) x 1 column: a tile reads one weight row front to back
 * and the next tile the next row, so a task streams its weights sequentially,
 * which the hardware prefetcher follows; a software prefetch S_QPF_BYTES ahead
 * covers the rest (decode reads every weight once, from memory, and without
 * it the kernel gets 0.4 of the bandwidth). */

enum { S_W_Q8_0 = 0, S_W_Q4_0 = 1 };

#define S_QG        16   /* blocks per group: one int32 lane per block after the reduction */
#define S_QR_MAX    4    /* rows per tile */
#define S_QPF_BYTES 8192 /* software prefetch distance ahead of the weight bytes being read */

/* Lane L of a reduced group holds block 4·(L mod 4) + L/4 of the group (s_qred's order). */
static const int32_t s_qg_perm[S_QG] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};

/* prefetcht0 of each 64-byte line of [p, p + n). Inline asm, not _mm_prefetch:
 * GCC schedules the intrinsic freely among the group's loads, and where it did
 * so the kernel read memory at 0.75-0.8 of a plain stream's bandwidth against
 * 0.93-0.96 with the prefetches kept together at the start of the group. */
AI void s_qprefetch(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i += 64) __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)(p + i)));
}

/* Blocks b and b+1 of a weight row (b alone if `one`: the upper half is zero)
 * as 64 unsigned bytes in value order: Q8_0 as w + 128, Q4_0 nibbles as stored. */
AI __m512i s_qw(int wt, const uint8_t *row, int64_t b, bool one) {
    if (wt == S_W_Q8_0) {
        const ms_block_q8_0 *blk = (const ms_block_q8_0 *)row + b;
        const __m256i lo = _mm256_loadu_si256((const __m256i *)blk[0].qs);
        const __m256i hi = one ? _mm256_set1_epi8(-128) : _mm256_loadu_si256((const __m256i *)blk[1].qs);
        return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                                _mm512_set1_epi8(-128));
    }
    const ms_block_q4_0 *blk = (const ms_block_q4_0 *)row + b;
    /* [qs_b | qs_b | qs_b1 | qs_b1] >> [0 | 4 | 0 | 4] & 15 = [lo b | hi b | lo b1 | hi b1] */
    __m512i t = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)blk[0].qs));
    t = one ? _mm512_maskz_mov_epi32(0x00FF, t)
            : _mm512_mask_broadcast_i32x4(t, 0xFF00, _mm_loadu_si128((const __m128i *)blk[1].qs));
    t = _mm512_mask_srli_epi16(t, 0xFF00FF00u, t, 4);
    return _mm512_and_si512(t, _mm512_set1_epi8(0x0F));
}

/* Eight vectors of block-pair partial sums (v[p]: lanes 0-7 block 2p, lanes
 * 8-15 block 2p+1) -> one vector of the 16 block sums, lane L = block
 * s_qg_perm[L]. Integer adds are exact: the tree's order never shows. */
AI __m512i s_qred1(__m512i a, __m512i b) { /* 128-bit lane i: 4 partials of block i */
    return _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}
AI __m512i s_qred2(__m512i a, __m512i b) { /* 2 partials each of a's and b's block */
    return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}
AI __m512i s_qred3(__m512i a, __m512i b) { /* one sum each of 4 blocks */
    const __m512 fa = _mm512_castsi512_ps(a), fb = _mm512_castsi512_ps(b);
    return _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(fa, fb, _MM_SHUFFLE(2, 0, 2, 0))),
                            _mm512_castps_si512(_mm512_shuffle_ps(fa, fb, _MM_SHUFFLE(3, 1, 3, 1))));
}
AI __m512i s_qred(const __m512i v[S_QG / 2]) {
    return s_qred3(s_qred2(s_qred1(v[0], v[1]), s_qred1(v[2], v[3])),
                   s_qred2(s_qred1(v[4], v[5]), s_qred1(v[6], v[7])));
}

/* One group of S_QG blocks (nbt of them when `tail`) from block g, R rows x 1
 * column: acc[r] += (Σ_block int32 dot − offset·Σx) · d_x·d_w, lane = block. */
AI void s_mmq_group(int R, int wt, bool tail, int nbt, __m512 acc[S_QR_MAX], const uint8_t *w,
                    const ms_cpu_act *a, int64_t g) {
    const size_t bsz = wt == S_W_Q8_0 ? sizeof(ms_block_q8_0) : sizeof(ms_block_q4_0);
    const int shift = wt == S_W_Q8_0 ? 7 : 3;        /* offset 128 or 8 */
    const int np = tail ? (nbt + 1) / 2 : S_QG / 2;  /* block pairs present */
    const bool odd = tail && (nbt & 1);              /* the last pair has one block */
    const __m512i zero = _mm512_setzero_si512();
    const __m512i perm = _mm512_loadu_si512(s_qg_perm);
    const __mmask16 bm = tail ? (__mmask16)((1u << nbt) - 1) : (__mmask16)0xFFFF; /* blocks, in order */

    const uint8_t *wg = w + g * bsz;
    s_qprefetch(wg + S_QPF_BYTES, S_QG * bsz);
    __m512i wu[S_QG / 2];
#pragma GCC unroll 8
    for (int p = 0; p < S_QG / 2; p++) wu[p] = p < np ? s_qw(wt, w, g + 2 * p, odd && p == np - 1) : zero;
    /* the 16 fp16 scales in lane order, four to a 64-bit word (cheaper than a gather here) */
    uint64_t dq[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        dq[i] = 0;
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) { /* lane 4i + k = block 4k + i */
            const int b = 4 * k + i;
            uint16_t h = 0;
            if (!tail || b < nbt) memcpy(&h, wg + b * bsz, sizeof h);
            dq[i] |= (uint64_t)h << (16 * k);
        }
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_setr_epi64x((long long)dq[0], (long long)dq[1],
                                                         (long long)dq[2], (long long)dq[3]));
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const int8_t *xr = (const int8_t *)a->x + r * a->row_bytes + g * MS_CPU_QK;
        __m512i v[S_QG / 2];
#pragma GCC unroll 8
        for (int p = 0; p < S_QG / 2; p++) {
            if (p >= np) {
                v[p] = zero;
                continue;
            }
            const __m512i xv = odd && p == np - 1 ? _mm512_maskz_loadu_epi8(0xFFFFFFFFu, xr + 64 * p)
                                                  : _mm512_loadu_si512(xr + 64 * p);
            v[p] = _mm512_dpbusd_epi32(zero, wu[p], xv);
        }
        const int16_t *sr = a->bsums + r * a->ld_bsums + g;
        const float *dr = a->d + r * a->ld_d + g;
        const __m512i xs = _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(bm, sr));
        const __m512i corr = _mm512_slli_epi32(_mm512_permutexvar_epi32(perm, xs), shift);
        const __m512 dx = _mm512_permutexvar_ps(perm, _mm512_maskz_loadu_ps(bm, dr));
        const __m512i s = _mm512_sub_epi32(s_qred(v), corr);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, dx), acc[r]);
    }
}

/* y[r·ldy] for R rows and the column whose weight row is w, over nb blocks:
 * one 16-lane accumulator per row, updated group by group in k order and
 * reduced once by s_hsum16 — the same operations whatever R. */
AI void s_mmq_tile(int R, int wt, float *y, size_t ldy, const uint8_t *w, const ms_cpu_act *a, int64_t nb) {
    __m512 acc[S_QR_MAX];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const int64_t nbf = nb / S_QG * S_QG;
    for (int64_t g = 0; g < nbf; g += S_QG) s_mmq_group(R, wt, false, S_QG, acc, w, a, g);
    if (nbf < nb) s_mmq_group(R, wt, true, (int)(nb - nbf), acc, w, a, nbf);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) y[r * ldy] = s_hsum16(acc[r]);
}

#define S_MMQ_TILE(T, WT, R)                                                                      \
    static void s_mmq_##T##_##R(float *y, size_t ldy, const uint8_t *w, size_t wrb, int nc,       \
                                const ms_cpu_act *a, int64_t nb) {                                \
        for (int c = 0; c < nc; c++) s_mmq_tile(R, WT, y + c, ldy, w + c * wrb, a, nb);          \
    }

/* Rows in tiles of 4, the 1-3 left over in one more; each tile walks the columns in order. */
#define S_MMQ_TILES(T, WT)                                                                        \
    S_MMQ_TILE(T, WT, 1)                                                                          \
    S_MMQ_TILE(T, WT, 2)                                                                          \
    S_MMQ_TILE(T, WT, 3)                                                                          \
    S_MMQ_TILE(T, WT, 4)                                                                          \
    static void s_mm_##T(float *y, size_t ldy, const void *w, size_t wrb, int nc,                 \
                         const ms_cpu_act *a, int nr, int64_t K) {                                \
        static void (*const tile[S_QR_MAX + 1])(float *, size_t, const uint8_t *, size_t, int,    \
                                                const ms_cpu_act *, int64_t) = {                  \
            NULL, s_mmq_##T##_1, s_mmq_##T##_2, s_mmq_##T##_3, s_mmq_##T##_4};                    \
        for (int r = 0; r < nr; r += S_QR_MAX) {                                                  \
            ms_cpu_act ar = *a;                                                                   \
            ar.x = (const int8_t *)a->x + r * a->row_bytes;                                       \
            ar.d = a->d + r * a->ld_d;                                                            \
            ar.bsums = a->bsums + r * a->ld_bsums;                                                \
            tile[nr - r < S_QR_MAX ? nr - r : S_QR_MAX](y + r * ldy, ldy, w, wrb, nc, &ar,        \
                                                        K / MS_CPU_QK);                           \
        }                                                                                         \
    }

S_MMQ_TILES(q8_0, S_W_Q8_0)
S_MMQ_TILES(q4_0, S_W_Q4_0)

/* As the AVX2 quantize_q8 (same values: d = amax/127, q = round-half-even(x/d)),
 * plus bsums[b] = Σ of block b's 32 qs, which the Q8_0/Q4_0 kernels need. */
static void s_quantize_q8s(const float *x, int8_t *qs, float *d, int16_t *bsums, int64_t K) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < K / MS_CPU_QK; b++) {
        const __m512 x0 = _mm512_loadu_ps(x + b * MS_CPU_QK), x1 = _mm512_loadu_ps(x + b * MS_CPU_QK + 16);
        const float db = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, x0),
                                                            _mm512_andnot_ps(sign, x1))) / 127.0f;
        const __m512 id = _mm512_set1_ps(db != 0.0f ? 1.0f / db : 0.0f);
        d[b] = db;
        const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, id));
        const __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, id));
        _mm_storeu_si128((__m128i *)(qs + b * MS_CPU_QK), _mm512_cvtsepi32_epi8(i0));
        _mm_storeu_si128((__m128i *)(qs + b * MS_CPU_QK + 16), _mm512_cvtsepi32_epi8(i1));
        bsums[b] = (int16_t)_mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    }
}

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
        for (int c = 0; c < C; c++) /* the lines of the block S_QPF_BYTES ahead in each row */
            s_qprefetch(w + c * wrb + (b + 1) * sizeof(ms_block_q4_K) + S_QPF_BYTES - 64, 192);
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
    s_kernels.quantize_q8s = s_quantize_q8s;
}

const ms_cpu_kernels *ms_cpu_kernels_avx512(void) {
    pthread_once(&s_once, s_init);
    return &s_kernels;
}
