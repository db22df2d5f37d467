/* quant.c — reference conversions for the formats in quant.h. */
#include "quant.h"

#include <math.h>
#include <string.h>

const char *ms_type_name(ms_type t) {
    switch (t) {
    case MS_TYPE_F32: return "f32";
    case MS_TYPE_F16: return "f16";
    case MS_TYPE_Q4_0: return "q4_0";
    case MS_TYPE_Q8_0: return "q8_0";
    case MS_TYPE_Q4_K: return "q4_K";
    case MS_TYPE_BF16: return "bf16";
    default: return "unknown";
    }
}

bool ms_type_known(uint32_t t) {
    switch (t) {
    case MS_TYPE_F32: case MS_TYPE_F16: case MS_TYPE_Q4_0: case MS_TYPE_Q8_0:
    case MS_TYPE_Q4_K: case MS_TYPE_BF16: return true;
    default: return false;
    }
}

int64_t ms_type_block_size(ms_type t) {
    switch (t) {
    case MS_TYPE_F32: case MS_TYPE_F16: case MS_TYPE_BF16: return 1;
    case MS_TYPE_Q4_0: return MS_QK4_0;
    case MS_TYPE_Q8_0: return MS_QK8_0;
    case MS_TYPE_Q4_K: return MS_QK_K;
    default: return 0;
    }
}

size_t ms_type_block_bytes(ms_type t) {
    switch (t) {
    case MS_TYPE_F32: return 4;
    case MS_TYPE_F16: case MS_TYPE_BF16: return 2;
    case MS_TYPE_Q4_0: return sizeof(ms_block_q4_0);
    case MS_TYPE_Q8_0: return sizeof(ms_block_q8_0);
    case MS_TYPE_Q4_K: return sizeof(ms_block_q4_K);
    default: return 0;
    }
}

size_t ms_row_bytes(ms_type t, int64_t ne0) {
    int64_t bs = ms_type_block_size(t);
    if (bs <= 0 || ne0 < 0 || ne0 % bs != 0) return 0;
    return (size_t)(ne0 / bs) * ms_type_block_bytes(t);
}

int64_t ms_tensor_nelements(const ms_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++) n *= t->ne[i];
    return n;
}

int64_t ms_tensor_nrows(const ms_tensor *t) {
    int64_t n = 1;
    for (int i = 1; i < t->n_dims; i++) n *= t->ne[i];
    return n;
}

float ms_fp16_to_fp32(ms_fp16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

ms_fp16 ms_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (ms_fp16)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (ms_fp16)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* below 2^-14: subnormal half or zero */
        if (absx < 0x33000000u) return (ms_fp16)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (ms_fp16)(sign | half);
    }
    uint32_t e = (absx >> 23) - 127 + 15;
    uint32_t m = absx & 0x7fffff;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (ms_fp16)(sign | h);
}

float ms_bf16_to_fp32(ms_bf16 h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

ms_bf16 ms_fp32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000u) return (ms_bf16)((x >> 16) | 64); /* quiet nan */
    x += 0x7fff + ((x >> 16) & 1);
    return (ms_bf16)(x >> 16);
}

/* Q4_K scale/min unpacking, as in ggml's get_scale_min_k4. */
static void s_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

void ms_dequantize_row(ms_type t, const void *src, float *dst, int64_t n) {
    switch (t) {
    case MS_TYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case MS_TYPE_F16: {
        const ms_fp16 *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = ms_fp16_to_fp32(s[i]);
        break;
    }
    case MS_TYPE_BF16: {
        const ms_bf16 *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = ms_bf16_to_fp32(s[i]);
        break;
    }
    case MS_TYPE_Q8_0: {
        const ms_block_q8_0 *b = src;
        for (int64_t i = 0; i < n / MS_QK8_0; i++) {
            float d = ms_fp16_to_fp32(b[i].d);
            for (int j = 0; j < MS_QK8_0; j++) dst[i * MS_QK8_0 + j] = b[i].qs[j] * d;
        }
        break;
    }
    case MS_TYPE_Q4_0: {
        const ms_block_q4_0 *b = src;
        for (int64_t i = 0; i < n / MS_QK4_0; i++) {
            float d = ms_fp16_to_fp32(b[i].d);
            for (int j = 0; j < MS_QK4_0 / 2; j++) {
                dst[i * MS_QK4_0 + j] = ((b[i].qs[j] & 0x0F) - 8) * d;
                dst[i * MS_QK4_0 + j + MS_QK4_0 / 2] = ((b[i].qs[j] >> 4) - 8) * d;
            }
        }
        break;
    }
    case MS_TYPE_Q4_K: {
        const ms_block_q4_K *b = src;
        for (int64_t i = 0; i < n / MS_QK_K; i++) {
            const float d = ms_fp16_to_fp32(b[i].d);
            const float min = ms_fp16_to_fp32(b[i].dmin);
            const uint8_t *q = b[i].qs;
            float *y = dst + i * MS_QK_K;
            int is = 0;
            for (int j = 0; j < MS_QK_K; j += 64) {
                uint8_t sc, m;
                s_scale_min_k4(is + 0, b[i].scales, &sc, &m);
                const float d1 = d * sc, m1 = min * m;
                s_scale_min_k4(is + 1, b[i].scales, &sc, &m);
                const float d2 = d * sc, m2 = min * m;
                for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
                for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
                q += 32;
                is += 2;
            }
        }
        break;
    }
    default: memset(dst, 0, (size_t)n * 4); break;
    }
}

size_t ms_quantize_row(ms_type t, const float *src, void *dst, int64_t n) {
    if (ms_row_bytes(t, n) == 0 && n != 0) return 0;
    switch (t) {
    case MS_TYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case MS_TYPE_F16: {
        ms_fp16 *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = ms_fp32_to_fp16(src[i]);
        break;
    }
    case MS_TYPE_BF16: {
        ms_bf16 *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = ms_fp32_to_bf16(src[i]);
        break;
    }
    case MS_TYPE_Q8_0: { /* as ggml's quantize_row_q8_0_ref */
        ms_block_q8_0 *b = dst;
        for (int64_t i = 0; i < n / MS_QK8_0; i++) {
            float amax = 0.0f;
            for (int j = 0; j < MS_QK8_0; j++) amax = fmaxf(amax, fabsf(src[i * MS_QK8_0 + j]));
            const float d = amax / 127.0f;
            const float id = d ? 1.0f / d : 0.0f;
            b[i].d = ms_fp32_to_fp16(d);
            for (int j = 0; j < MS_QK8_0; j++) b[i].qs[j] = (int8_t)roundf(src[i * MS_QK8_0 + j] * id);
        }
        break;
    }
    case MS_TYPE_Q4_0: { /* as ggml's quantize_row_q4_0_ref */
        ms_block_q4_0 *b = dst;
        for (int64_t i = 0; i < n / MS_QK4_0; i++) {
            const float *x = src + i * MS_QK4_0;
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < MS_QK4_0; j++) {
                if (amax < fabsf(x[j])) {
                    amax = fabsf(x[j]);
                    max = x[j];
                }
            }
            const float d = max / -8.0f;
            const float id = d ? 1.0f / d : 0.0f;
            b[i].d = ms_fp32_to_fp16(d);
            for (int j = 0; j < MS_QK4_0 / 2; ++j) {
                const float x0 = x[j] * id, x1 = x[MS_QK4_0 / 2 + j] * id;
                int xi0 = (int)(x0 + 8.5f), xi1 = (int)(x1 + 8.5f);
                if (xi0 > 15) xi0 = 15;
                if (xi1 > 15) xi1 = 15;
                b[i].qs[j] = (uint8_t)(xi0 | (xi1 << 4));
            }
        }
        break;
    }
    default: return 0;
    }
    return ms_row_bytes(t, n);
}
