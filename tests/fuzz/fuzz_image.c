/* fuzz_image.c — libFuzzer harness for image decoding and preprocessing.
 *
 * Any bytes go through ms_image_preprocess at size 32 (the fit mode and the
 * DCT-scaling switch picked from the input length, so all paths get inputs)
 * and through ms_image_decode; neither may crash, read out of bounds (ASan)
 * or leak, and a successful result must be consistent (sizes within the
 * limit, finite outputs) or the harness traps. The pixel limit is lowered so
 * that mutated headers cannot make one input slow.
 * Seeds: tests/fuzz/corpus/image/ (small valid JPEG/PNG/WebP files of every
 * flavour and broken ones), written by tools/image_reference.py generate.
 */
#include <math.h>
#include <stdint.h>

#include "image.h"
#include "ms_common.h"

#define FUZZ_SIZE       32
#define FUZZ_MAX_PIXELS (1u << 18)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static float out[3 * FUZZ_SIZE * FUZZ_SIZE];
    char err[MS_ERR_SIZE];
    ms_preprocess_cfg cfg = {
        .size = FUZZ_SIZE,
        .fit = (ms_image_fit)(size % 3),
        .mean = {0.48145466f, 0.4578275f, 0.40821073f},
        .std = {0.26862954f, 0.26130258f, 0.27577711f},
        .max_pixels = FUZZ_MAX_PIXELS,
        .jpeg_full_decode = (size / 3) % 2 == 1,
    };
    if (ms_image_preprocess(data, size, &cfg, out, err, sizeof err) == 0) {
        for (size_t i = 0; i < MS_ARRAY_LEN(out); i++)
            if (!isfinite(out[i]) || fabsf(out[i]) > 4.0f) __builtin_trap();
    } else if (!err[0]) {
        __builtin_trap(); /* a failure must say why */
    }
    ms_image im;
    if (ms_image_decode(data, size, FUZZ_MAX_PIXELS, &im, err, sizeof err) == 0) {
        if (im.w <= 0 || im.h <= 0 || (uint64_t)im.w * (uint64_t)im.h > FUZZ_MAX_PIXELS || !im.rgb)
            __builtin_trap();
        ms_image_fini(&im);
    } else if (im.rgb) {
        __builtin_trap();
    }
    return 0;
}
