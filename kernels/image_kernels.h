/* image_kernels.h — private to kernels/image*.c: the resize plan that
 * image.c builds and the SIMD passes that consume it (SSE2/SSSE3 in image.c,
 * AVX2 in image_resize_avx2.c, chosen at run time).
 *
 * Arithmetic (Pillow's Resample.c): every output sample is
 *   clip8(MS_IMAGE_HALF + sum_t pixel_t * k_t) with k_t the filter weight in
 *   MS_IMAGE_PREC-bit fixed point and clip8(v) = clamp(v >> MS_IMAGE_PREC, 0, 255).
 * SIMD kernels multiply 16-bit values (pmaddwd), so each weight is split as
 * k = hi * 2^MS_IMAGE_KSPLIT + lo with lo in [0, 2^MS_IMAGE_KSPLIT): both fit in
 * int16 and (sum p * hi) << MS_IMAGE_KSPLIT + sum p * lo is the same int32 sum,
 * so every kernel gives bit-identical results.
 */
#ifndef MS_IMAGE_KERNELS_H
#define MS_IMAGE_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MS_IMAGE_PREC   22                         /* Pillow's PRECISION_BITS (32 - 8 - 2) */
#define MS_IMAGE_HALF   (1 << (MS_IMAGE_PREC - 1)) /* rounding term */
#define MS_IMAGE_KSPLIT 11                         /* weight split for 16-bit multiplies */
#define MS_IMAGE_KLO    ((1 << MS_IMAGE_KSPLIT) - 1)
#define MS_IMAGE_KALIGN 8 /* kstride is a multiple of this */

/* One axis of a resize, for a window of its outputs. The input axis is
 * virtual: pad_lo constant samples, then the real ones, then constant ones;
 * the constant samples' weights are summed into kpad. */
typedef struct ms_image_axis {
    int n;         /* outputs in the window */
    int kstride;   /* weights per output in k (a multiple of MS_IMAGE_KALIGN) */
    int *first;    /* (n) first real input sample of each output */
    int *count;    /* (n) real input samples of each output (contiguous) */
    int32_t *k;    /* (n, kstride) fixed-point weights of those samples, zero padded */
    int32_t *kpad; /* (n) total weight of the constant samples */
} ms_image_axis;

/* How a SIMD horizontal pass wants the weights laid out in ms_image_hplan.kvec. */
typedef enum ms_image_kvec_layout {
    MS_IMAGE_KVEC_NONE = 0, /* scalar: no kvec */
    MS_IMAGE_KVEC_SSSE3,    /* per 4 taps t..t+3: 16-byte vectors {hi(t,t+1), lo(t,t+1),
                               hi(t+2,t+3), lo(t+2,t+3)}, each int16 pair repeated 4x */
    MS_IMAGE_KVEC_AVX2,     /* per 8 taps: 32-byte vectors whose low half is the SSSE3
                               vector for taps t..t+3 and high half the one for t+4..t+7 */
} ms_image_kvec_layout;

/* The horizontal pass's plan: its axis, a per-output start value that
 * carries the padding, and (for SIMD kernels) the weights as int16 pairs. */
typedef struct ms_image_hplan {
    const ms_image_axis *ax; /* the horizontal axis */
    int32_t *bias; /* (n, 4) MS_IMAGE_HALF + pad colour * kpad per channel; 32-byte aligned */
    void *kvec;    /* (n, kstride) 16-byte units in the kernel's layout; 32-byte aligned */
} ms_image_hplan;

static inline uint8_t ms_image_clip8(int32_t v) {
    if (v >= (1 << MS_IMAGE_PREC << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> MS_IMAGE_PREC);
}

/* Output pixel i of the horizontal pass, scalar (the reference, and the
 * fallback of SIMD kernels near the right edge of a row). */
static inline void ms_image_hpass_px(uint8_t *out, const uint8_t *in, const ms_image_hplan *hp,
                                     int i) {
    const ms_image_axis *ax = hp->ax;
    const int32_t *k = ax->k + (size_t)i * ax->kstride;
    const uint8_t *p = in + 3 * (size_t)ax->first[i];
    int32_t s0 = hp->bias[4 * i], s1 = hp->bias[4 * i + 1], s2 = hp->bias[4 * i + 2];
    for (int t = 0; t < ax->count[i]; t++) {
        s0 += p[3 * t] * k[t];
        s1 += p[3 * t + 1] * k[t];
        s2 += p[3 * t + 2] * k[t];
    }
    out[3 * i] = ms_image_clip8(s0);
    out[3 * i + 1] = ms_image_clip8(s1);
    out[3 * i + 2] = ms_image_clip8(s2);
}

/* The vertical pass over bytes [x0, x1) of a row, scalar. */
static inline void ms_image_vpass_range(uint8_t *out, const uint8_t *const *rows, const int32_t *k,
                                        int ntaps, int x0, int x1) {
    for (int x = x0; x < x1; x++) {
        int32_t s = MS_IMAGE_HALF;
        for (int t = 0; t < ntaps; t++)
            s += rows[t][x] * k[t];
        out[x] = ms_image_clip8(s);
    }
}

/* AVX2 passes (image_resize_avx2.c; call only where the CPU has AVX2).
 * hpass: one row, in has w RGB pixels, out gets hp->ax->n; kvec in the AVX2 layout.
 * vpass: out[x] = clip8(HALF + sum_t rows[t][x] * k[t]) for x < nbytes. */
void ms_image_hpass_avx2(uint8_t *out, const uint8_t *in, int w, const ms_image_hplan *hp);
void ms_image_vpass_avx2(uint8_t *out, const uint8_t *const *rows, const int32_t *k, int ntaps,
                         int nbytes);

#endif
