/* image_resize_avx2.c — the two resize passes with AVX2 (built with -mavx2;
 * image.c calls them only when __builtin_cpu_supports("avx2")). Same
 * arithmetic as the scalar reference, bit for bit: see image_kernels.h. */
#include <immintrin.h>
#include <string.h>

#include "image_kernels.h"

#define VPAIRS_MAX 128 /* tap pairs the vertical pass keeps as vectors on the stack */

/* (hi << KSPLIT) + lo + bias: the exact int32 sum from its two halves. */
static inline __m256i combine256(__m256i hi, __m256i lo, __m256i bias) {
    return _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi, MS_IMAGE_KSPLIT), lo), bias);
}

/* The sum for output pixel i, 8 taps per step: the low 128-bit lane takes
 * taps t..t+3 (12 bytes at p), the high lane t+4..t+7 (12 bytes at p + 12);
 * pshufb makes int16 {R_t, R_t+1, G_t, G_t+1, B_t, B_t+1, 0, 0} for pmaddwd.
 * Returns per lane {R, G, B, 0} partial sums (the two lanes still to add). */
static inline __m256i hsum_px(const uint8_t *in, const ms_image_hplan *hp, int i, __m256i sh0,
                              __m256i sh1) {
    const ms_image_axis *ax = hp->ax;
    const __m256i *kv = (const __m256i *)hp->kvec + (size_t)i * (size_t)(ax->kstride / 2);
    const uint8_t *p = in + 3 * (size_t)ax->first[i];
    int nb = (ax->count[i] + 7) >> 3;
    __m256i hi = _mm256_setzero_si256(), lo = _mm256_setzero_si256();
    for (int b = 0; b < nb; b++, p += 24, kv += 4) {
        __m256i v =
            _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                    _mm_loadu_si128((const __m128i *)(p + 12)), 1);
        __m256i a = _mm256_shuffle_epi8(v, sh0), c = _mm256_shuffle_epi8(v, sh1);
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(a, kv[0]));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(a, kv[1]));
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(c, kv[2]));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(c, kv[3]));
    }
    return combine256(hi, lo, _mm256_setzero_si256());
}

/* Whether output i's last 16-byte load (at 3 * (first + 8 * (nb - 1) + 4))
 * stays inside the row of w pixels. */
static inline int fits(const ms_image_axis *ax, int i, int w) {
    int nb = (ax->count[i] + 7) >> 3;
    return nb == 0 || 3 * (ax->first[i] + 8 * (nb - 1) + 4) + 16 <= 3 * w;
}

/* Two output pixels per step, so that one reduction, bias, shift and pack
 * serve both: lane 0 finishes pixel i, lane 1 pixel i + 1. */
void ms_image_hpass_avx2(uint8_t *out, const uint8_t *in, int w, const ms_image_hplan *hp) {
    const __m256i sh0 = _mm256_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,
                                         0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
    const __m256i sh1 =
        _mm256_setr_epi8(6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1, 6, -1, 9, -1,
                         7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1);
    const ms_image_axis *ax = hp->ax;
    int i = 0;
    for (; i + 1 < ax->n; i += 2) {
        if (!fits(ax, i, w) || !fits(ax, i + 1, w)) {
            ms_image_hpass_px(out, in, hp, i);
            ms_image_hpass_px(out, in, hp, i + 1);
            continue;
        }
        __m256i a = hsum_px(in, hp, i, sh0, sh1), b = hsum_px(in, hp, i + 1, sh0, sh1);
        __m256i s = _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                                     _mm256_permute2x128_si256(a, b, 0x31));
        s = _mm256_add_epi32(s, _mm256_load_si256((const __m256i *)(hp->bias + 4 * i)));
        s = _mm256_srai_epi32(s, MS_IMAGE_PREC);
        s = _mm256_packs_epi32(s, s);
        s = _mm256_packus_epi16(s, s); /* = ms_image_clip8 per lane */
        uint64_t px = (uint32_t)_mm256_extract_epi32(s, 0) |
                      (uint64_t)(uint32_t)_mm256_extract_epi32(s, 4) << 24;
        memcpy(out + 3 * (size_t)i, &px, 6); /* little-endian: R G B R G B */
    }
    for (; i < ax->n; i++)
        ms_image_hpass_px(out, in, hp, i);
}

static inline uint32_t pair16(int32_t a, int32_t b) {
    return (uint32_t)(uint16_t)a | (uint32_t)(uint16_t)b << 16;
}

/* 32 bytes per step from two rows at a time: bytes interleaved into int16
 * pairs (row t, row t+1) for pmaddwd. The unpacks and packs both work within
 * 128-bit lanes, so the output comes back in order. */
void ms_image_vpass_avx2(uint8_t *out, const uint8_t *const *rows, const int32_t *k, int ntaps,
                         int nbytes) {
    int npairs = (ntaps + 1) / 2;
    if (nbytes < 32 || npairs > VPAIRS_MAX) {
        ms_image_vpass_range(out, rows, k, ntaps, 0, nbytes);
        return;
    }
    __m256i kp[2 * VPAIRS_MAX];
    for (int p = 0; p < npairs; p++) {
        int32_t k0 = k[2 * p], k1 = 2 * p + 1 < ntaps ? k[2 * p + 1] : 0;
        kp[2 * p] = _mm256_set1_epi32((int)pair16(k0 >> MS_IMAGE_KSPLIT, k1 >> MS_IMAGE_KSPLIT));
        kp[2 * p + 1] = _mm256_set1_epi32((int)pair16(k0 & MS_IMAGE_KLO, k1 & MS_IMAGE_KLO));
    }
    const __m256i zero = _mm256_setzero_si256(), half = _mm256_set1_epi32(MS_IMAGE_HALF);
    for (int x = 0;; x += 32) {
        if (x > nbytes - 32) x = nbytes - 32; /* last block overlaps the previous one */
        __m256i h0 = zero, h1 = zero, h2 = zero, h3 = zero;
        __m256i l0 = zero, l1 = zero, l2 = zero, l3 = zero;
        for (int p = 0; p < npairs; p++) {
            const uint8_t *ra = rows[2 * p], *rb = 2 * p + 1 < ntaps ? rows[2 * p + 1] : ra;
            __m256i a = _mm256_loadu_si256((const __m256i *)(ra + x));
            __m256i b = _mm256_loadu_si256((const __m256i *)(rb + x));
            __m256i ablo = _mm256_unpacklo_epi8(a, b), abhi = _mm256_unpackhi_epi8(a, b);
            __m256i q0 = _mm256_unpacklo_epi8(ablo, zero), q1 = _mm256_unpackhi_epi8(ablo, zero);
            __m256i q2 = _mm256_unpacklo_epi8(abhi, zero), q3 = _mm256_unpackhi_epi8(abhi, zero);
            __m256i kh = kp[2 * p], kl = kp[2 * p + 1];
            h0 = _mm256_add_epi32(h0, _mm256_madd_epi16(q0, kh));
            l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(q0, kl));
            h1 = _mm256_add_epi32(h1, _mm256_madd_epi16(q1, kh));
            l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(q1, kl));
            h2 = _mm256_add_epi32(h2, _mm256_madd_epi16(q2, kh));
            l2 = _mm256_add_epi32(l2, _mm256_madd_epi16(q2, kl));
            h3 = _mm256_add_epi32(h3, _mm256_madd_epi16(q3, kh));
            l3 = _mm256_add_epi32(l3, _mm256_madd_epi16(q3, kl));
        }
        __m256i s0 = _mm256_srai_epi32(combine256(h0, l0, half), MS_IMAGE_PREC);
        __m256i s1 = _mm256_srai_epi32(combine256(h1, l1, half), MS_IMAGE_PREC);
        __m256i s2 = _mm256_srai_epi32(combine256(h2, l2, half), MS_IMAGE_PREC);
        __m256i s3 = _mm256_srai_epi32(combine256(h3, l3, half), MS_IMAGE_PREC);
        __m256i r = _mm256_packus_epi16(_mm256_packs_epi32(s0, s1), _mm256_packs_epi32(s2, s3));
        _mm256_storeu_si256((__m256i *)(out + x), r);
        if (x == nbytes - 32) break;
    }
}
