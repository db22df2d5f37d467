/* quant.h — half-precision conversion and ggml's block quantization formats.
 *
 * Q8_0: 32 values per block, {f16 d; int8 qs[32]}, x = qs[i] * d.
 * Q4_0: 32 values per block, {f16 d; uint8 qs[16]}, value i (0..15) is the low
 *       nibble of qs[i], value i+16 the high nibble; x = (nibble - 8) * d.
 * Q4_K: 256 values per super-block (see ggml-quants), dequantization only.
 * These layouts are bit-exact with ggml so GGUF files interoperate.
 *
 * Everything here is the scalar reference; fast paths live in the backends
 * and are tested against these.
 */
#ifndef MS_QUANT_H
#define MS_QUANT_H

#include "tensor.h"

#define MS_QK8_0 32
#define MS_QK4_0 32
#define MS_QK_K  256

typedef uint16_t ms_fp16;
typedef uint16_t ms_bf16;

typedef struct {
    ms_fp16 d;             /* scale */
    int8_t qs[MS_QK8_0];   /* quants */
} ms_block_q8_0;

typedef struct {
    ms_fp16 d;               /* scale */
    uint8_t qs[MS_QK4_0 / 2]; /* nibbles, see above */
} ms_block_q4_0;

typedef struct {
    ms_fp16 d;              /* super-block scale for quantized scales */
    ms_fp16 dmin;           /* super-block scale for quantized mins */
    uint8_t scales[12];     /* 8 scales and 8 mins, 6 bits each */
    uint8_t qs[MS_QK_K / 2]; /* 4-bit quants */
} ms_block_q4_K;

float ms_fp16_to_fp32(ms_fp16 h);
ms_fp16 ms_fp32_to_fp16(float f); /* round to nearest even */
float ms_bf16_to_fp32(ms_bf16 h);
ms_bf16 ms_fp32_to_bf16(float f); /* round to nearest even */

/* Converts n values of one row of type t to f32 (n a multiple of the block size). */
void ms_dequantize_row(ms_type t, const void *src, float *dst, int64_t n);
/* Quantizes n f32 values into type t (F32, F16, BF16, Q8_0, Q4_0); returns bytes written,
 * 0 if the type cannot be produced or n is not a multiple of the block size. */
size_t ms_quantize_row(ms_type t, const float *src, void *dst, int64_t n);

#endif
