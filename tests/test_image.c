/* test_image.c — decoding, resizing and preprocessing against the PIL
 * reference (fixtures from tools/image_reference.py, listed in
 * tests/data/images/manifest.txt), and rejection of bad input.
 *
 * Tolerances are in normalised units, (x/255 - mean) / std. One uint8 level
 * is 1 / (255 * std): 0.0146, 0.0150, 0.0142 for CLIP's three channels.
 * On this build the full-decode path is bit-identical to PIL (the resize
 * reproduces Pillow's fixed-point arithmetic; observed max error 0); the
 * margins below only allow for a different libjpeg-turbo / libwebp version
 * decoding a sample one or two levels apart (LOSSY_MAXDIFF in the script),
 * which the bicubic filter spreads into at most one level of the output.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "ms_common.h"
#include "ms_test.h"

#define LEVEL (1.0 / (255.0 * 0.26130258)) /* one uint8 level, the largest of the three */
/* Full decode vs PIL: at most one level anywhere, and on average a small
 * fraction of one (a level on 1 in 20 samples). */
#define TOL_PRE_MAX  (1.0 * LEVEL + 1e-5)
#define TOL_PRE_MEAN (0.05 * LEVEL)
/* DCT-scaled decode (the default) vs full decode. libjpeg-turbo's scaled
 * IDCT is a different low-pass than PIL's antialiased bicubic from full size;
 * measured on sample.jpg (1/2..1/8 scales): mean 0.003-0.005 (a third of a
 * level), max 0.10 (7 levels, on the sharpest edges, with 1/8 at 64 px). */
#define TOL_DCT_MEAN 0.01
#define TOL_DCT_MAX  0.15

static const float s_clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float s_clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

static ms_preprocess_cfg s_cfg(int size, ms_image_fit fit, bool full) {
    ms_preprocess_cfg c;
    memset(&c, 0, sizeof c);
    c.size = size;
    c.fit = fit;
    memcpy(c.mean, s_clip_mean, sizeof c.mean);
    memcpy(c.std, s_clip_std, sizeof c.std);
    c.jpeg_full_decode = full;
    return c;
}

static const char *s_dir(void) {
    return ms_test_path(ms_test_source_dir(), "tests/data/images");
}

static uint8_t *s_load(const char *name, size_t *len) {
    char err[MS_ERR_SIZE], path[4096];
    snprintf(path, sizeof path, "%s/%s", s_dir(), name);
    uint8_t *d = ms_read_file(path, 64u << 20, len, err, sizeof err);
    cr_assert(d, "%s", err);
    return d;
}

static uint64_t s_fnv1a64(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static ms_image_fit s_fit(const char *s) {
    if (!strcmp(s, "pad")) return MS_FIT_PAD;
    if (!strcmp(s, "crop")) return MS_FIT_CROP;
    cr_assert_str_eq(s, "stretch");
    return MS_FIT_STRETCH;
}

/* Calls fn(fields, n) for each manifest line whose first field is kind. */
static int s_each_case(const char *kind, void (*fn)(char **f, int n)) {
    size_t len;
    char *text = (char *)s_load("manifest.txt", &len);
    int cases = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') continue;
        char *f[8], *s2 = NULL;
        int n = 0;
        for (char *t = strtok_r(line, " ", &s2); t && n < 8; t = strtok_r(NULL, " ", &s2))
            f[n++] = t;
        if (n == 0 || strcmp(f[0], kind)) continue;
        fn(f, n);
        cases++;
    }
    free(text);
    return cases;
}

/* ---- decode ------------------------------------------------------------- */

static void s_decode_case(char **f, int n) {
    cr_assert_eq(n, 6);
    size_t len, rlen;
    uint8_t *d = s_load(f[1], &len), *ref = s_load(f[4], &rlen);
    char err[MS_ERR_SIZE] = "";
    ms_image im;
    cr_assert_eq(ms_image_decode(d, len, 0, &im, err, sizeof err), 0, "%s: %s", f[1], err);
    cr_assert(im.w == atoi(f[2]) && im.h == atoi(f[3]), "%s: %dx%d", f[1], im.w, im.h);
    cr_assert_eq(rlen, (size_t)im.w * im.h * 3);
    int maxdiff = atoi(f[5]), worst = 0;
    for (size_t i = 0; i < rlen; i++)
        worst = MS_MAX(worst, abs((int)im.rgb[i] - (int)ref[i]));
    cr_log_info("%s: max difference from PIL %d", f[1], worst);
    cr_assert(worst <= maxdiff, "%s: differs from PIL by %d levels (allowed %d)", f[1], worst,
              maxdiff);
    ms_image_fini(&im);
    cr_assert_null(im.rgb);
    free(d);
    free(ref);
}

static void s_decode_hash_case(char **f, int n) {
    cr_assert_eq(n, 5);
    size_t len;
    uint8_t *d = s_load(f[1], &len);
    char err[MS_ERR_SIZE] = "";
    ms_image im;
    cr_assert_eq(ms_image_decode(d, len, 0, &im, err, sizeof err), 0, "%s: %s", f[1], err);
    cr_assert(im.w == atoi(f[2]) && im.h == atoi(f[3]));
    uint64_t h = s_fnv1a64(im.rgb, (size_t)im.w * im.h * 3);
    cr_assert_eq(h, strtoull(f[4], NULL, 16), "%s: pixels differ from PIL's", f[1]);
    ms_image_fini(&im);
    free(d);
}

static void s_reject_case(char **f, int n) {
    cr_assert_eq(n, 3);
    size_t len;
    uint8_t *d = s_load(f[1], &len);
    char err[MS_ERR_SIZE] = "";
    ms_image im;
    double t0 = ms_now_s();
    cr_assert_eq(ms_image_decode(d, len, 0, &im, err, sizeof err), -1, "%s accepted", f[1]);
    cr_assert_null(im.rgb);
    cr_assert(strstr(err, f[2]), "%s: message '%s' lacks '%s'", f[1], err, f[2]);
    cr_assert(ms_now_s() - t0 < 0.5, "%s: rejection took %.2f s", f[1], ms_now_s() - t0);
    /* preprocessing refuses it the same way */
    ms_preprocess_cfg c = s_cfg(32, MS_FIT_PAD, false);
    float *out = malloc(3 * 32 * 32 * sizeof *out);
    err[0] = 0;
    cr_assert_eq(ms_image_preprocess(d, len, &c, out, err, sizeof err), -1);
    cr_assert(strstr(err, f[2]), "%s: message '%s' lacks '%s'", f[1], err, f[2]);
    free(out);
    free(d);
}

Test(image, decode_matches_pil, .timeout = 60) {
    cr_assert_geq(s_each_case("decode", s_decode_case), 25);
    cr_assert_geq(s_each_case("decodeh", s_decode_hash_case), 1);
}

Test(image, rejects_bombs_and_zero_sizes, .timeout = 60) {
    cr_assert_geq(s_each_case("reject", s_reject_case), 6);
}

/* ---- resize ------------------------------------------------------------- */

static void s_resize_case(char **f, int n) {
    cr_assert_eq(n, 5);
    size_t len, rlen;
    uint8_t *d = s_load(f[1], &len), *ref = s_load(f[4], &rlen);
    char err[MS_ERR_SIZE] = "";
    ms_image im, out;
    cr_assert_eq(ms_image_decode(d, len, 0, &im, err, sizeof err), 0, "%s", err);
    int w = atoi(f[2]), h = atoi(f[3]);
    cr_assert_eq(ms_image_resize(&im, w, h, &out), 0);
    cr_assert(out.w == w && out.h == h);
    cr_assert_eq(rlen, (size_t)w * h * 3);
    size_t bad = 0;
    for (size_t i = 0; i < rlen; i++)
        bad += out.rgb[i] != ref[i];
    cr_assert_eq(bad, 0, "%s -> %dx%d: %zu samples differ from PIL", f[1], w, h, bad);
    ms_image_fini(&out);
    ms_image_fini(&im);
    free(d);
    free(ref);
}

Test(image, resize_bit_exact_with_pil, .timeout = 60) {
    cr_assert_geq(s_each_case("resize", s_resize_case), 6);
}

/* Each kernel set (MS_IMAGE_SIMD caps the choice; where the CPU lacks one,
 * the next best runs and the test still holds). */
Test(image, resize_bit_exact_with_pil_scalar, .timeout = 60) {
    setenv("MS_IMAGE_SIMD", "scalar", 1);
    cr_assert_geq(s_each_case("resize", s_resize_case), 6);
}

Test(image, resize_bit_exact_with_pil_ssse3, .timeout = 60) {
    setenv("MS_IMAGE_SIMD", "ssse3", 1);
    cr_assert_geq(s_each_case("resize", s_resize_case), 6);
}

/* SIMD and scalar kernels agree exactly on random images and sizes
 * (including widths below one SIMD block, large downscales and both pass
 * orders). */
Test(image, simd_equals_scalar, .timeout = 120) {
    static const char *sets[] = {"scalar", "ssse3", "avx2"};
    uint64_t x = 12345;
    for (int it = 0; it < 60; it++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int w = 1 + (int)((x >> 33) % 300), h = 1 + (int)((x >> 45) % 200);
        int ow = 1 + (int)((x >> 20) % 120), oh = 1 + (int)((x >> 8) % 120);
        ms_image src = {w, h, malloc((size_t)w * h * 3)};
        for (size_t i = 0; i < (size_t)w * h * 3; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            src.rgb[i] = (uint8_t)(x >> 56);
        }
        ms_image ref, got;
        setenv("MS_IMAGE_SIMD", sets[0], 1);
        cr_assert_eq(ms_image_resize(&src, ow, oh, &ref), 0);
        for (size_t s = 1; s < MS_ARRAY_LEN(sets); s++) {
            setenv("MS_IMAGE_SIMD", sets[s], 1);
            cr_assert_eq(ms_image_resize(&src, ow, oh, &got), 0);
            cr_assert_eq(memcmp(ref.rgb, got.rgb, (size_t)ow * oh * 3), 0, "%s: %dx%d -> %dx%d",
                         sets[s], w, h, ow, oh);
            ms_image_fini(&got);
        }
        ms_image_fini(&ref);
        ms_image_fini(&src);
    }
    unsetenv("MS_IMAGE_SIMD");
}

Test(image, resize_rejects_bad_sizes, .timeout = 10) {
    uint8_t px[3] = {1, 2, 3};
    ms_image src = {1, 1, px}, out;
    cr_assert_eq(ms_image_resize(&src, 0, 5, &out), -1);
    cr_assert_eq(ms_image_resize(&src, 5, -1, &out), -1);
    cr_assert_eq(ms_image_resize(&src, MS_IMAGE_MAX_OUT_SIDE + 1, 5, &out), -1);
    ms_image empty = {0, 0, NULL};
    cr_assert_eq(ms_image_resize(&empty, 5, 5, &out), -1);
    cr_assert_eq(ms_image_resize(&src, 4, 3, &out), 0);
    for (int i = 0; i < 12; i++)
        cr_assert_eq(out.rgb[3 * i], 1); /* upscaling a constant */
    ms_image_fini(&out);
}

/* ---- preprocess --------------------------------------------------------- */

static void s_compare(const float *got, const float *ref, size_t n, double *max_err, double *mean) {
    double m = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)ref[i]);
        m = e > m ? e : m;
        s += e;
    }
    *max_err = m;
    *mean = s / (double)n;
}

static void s_pre_case(char **f, int n) {
    cr_assert_eq(n, 5);
    int size = atoi(f[3]);
    size_t len, rlen, nf = 3 * (size_t)size * size;
    uint8_t *d = s_load(f[1], &len);
    float *ref = (float *)s_load(f[4], &rlen);
    cr_assert_eq(rlen, nf * sizeof(float));
    float *out = malloc(nf * sizeof *out);
    char err[MS_ERR_SIZE] = "";
    ms_preprocess_cfg c = s_cfg(size, s_fit(f[2]), true);
    cr_assert_eq(ms_image_preprocess(d, len, &c, out, err, sizeof err), 0, "%s: %s", f[1], err);
    double max_err, mean;
    s_compare(out, ref, nf, &max_err, &mean);
    cr_log_info("%s %s %d: max %.6f mean %.7f", f[1], f[2], size, max_err, mean);
    cr_assert(max_err <= TOL_PRE_MAX, "%s %s %d: max error %.5f > %.5f", f[1], f[2], size, max_err,
              TOL_PRE_MAX);
    cr_assert(mean <= TOL_PRE_MEAN, "%s %s %d: mean error %.6f > %.6f", f[1], f[2], size, mean,
              TOL_PRE_MEAN);
    free(out);
    free(ref);
    free(d);
}

Test(image, preprocess_matches_reference, .timeout = 60) {
    cr_assert_geq(s_each_case("pre", s_pre_case), 15);
}

Test(image, preprocess_matches_reference_scalar, .timeout = 60) {
    setenv("MS_IMAGE_SIMD", "scalar", 1);
    cr_assert_geq(s_each_case("pre", s_pre_case), 15);
}

Test(image, preprocess_matches_reference_ssse3, .timeout = 60) {
    setenv("MS_IMAGE_SIMD", "ssse3", 1);
    cr_assert_geq(s_each_case("pre", s_pre_case), 15);
}

/* The pad colour is int(mean * 255) (LLaVA), and the image sits centred. */
Test(image, pad_colour_and_placement, .timeout = 10) {
    uint8_t px[4 * 3];
    memset(px, 255, sizeof px);
    ms_image img = {1, 4, px}; /* a white 1x4 column, padded to 4x4 */
    ms_preprocess_cfg c = s_cfg(4, MS_FIT_PAD, true);
    float out[3 * 4 * 4];
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_image_preprocess_decoded(&img, &c, out, err, sizeof err), 0, "%s", err);
    const int pad[3] = {122, 116, 104}; /* int() of 122.77, 116.75, 104.09 */
    for (int ch = 0; ch < 3; ch++) {
        float want = ((float)(pad[ch] / 255.0) - s_clip_mean[ch]) / s_clip_std[ch];
        float white = ((float)(255 / 255.0) - s_clip_mean[ch]) / s_clip_std[ch];
        for (int y = 0; y < 4; y++) {
            cr_assert_float_eq(out[ch * 16 + y * 4 + 0], want, 1e-6, "ch %d", ch); /* left pad */
            cr_assert_float_eq(out[ch * 16 + y * 4 + 3], want, 1e-6, "ch %d", ch); /* right pad */
            cr_assert_float_eq(out[ch * 16 + y * 4 + 1], white, 1e-6); /* (4 - 1) / 2 = 1 */
        }
    }
}

/* The widest and tallest images allowed, through every fit mode: the padded
 * canvas (65535 x 65535) and the CROP resize (65535 x 22 million) are never
 * materialised, so this is fast; PAD gives mostly pad colour. */
Test(image, extreme_aspect_ratios, .timeout = 30) {
    size_t n = MS_IMAGE_MAX_SIDE;
    uint8_t *px = malloc(3 * n);
    for (size_t i = 0; i < 3 * n; i++)
        px[i] = (uint8_t)(i * 7);
    float *out = malloc(3 * 64 * 64 * sizeof *out);
    char err[MS_ERR_SIZE];
    for (int tall = 0; tall < 2; tall++) {
        ms_image img = {tall ? 1 : (int)n, tall ? (int)n : 1, px};
        for (int fit = 0; fit < 3; fit++) {
            ms_preprocess_cfg c = s_cfg(64, (ms_image_fit)fit, true);
            double t0 = ms_now_s();
            cr_assert_eq(ms_image_preprocess_decoded(&img, &c, out, err, sizeof err), 0, "%s", err);
            cr_assert(ms_now_s() - t0 < 2.0, "%dx%d fit %d took %.2f s", img.w, img.h, fit,
                      ms_now_s() - t0);
            for (int i = 0; i < 3 * 64 * 64; i++)
                cr_assert(isfinite(out[i]) && fabsf(out[i]) < 3);
        }
        ms_preprocess_cfg c = s_cfg(64, MS_FIT_PAD, true);
        cr_assert_eq(ms_image_preprocess_decoded(&img, &c, out, err, sizeof err), 0, "%s", err);
        float pad0 = ((float)(122 / 255.0) - s_clip_mean[0]) / s_clip_std[0];
        cr_assert_float_eq(out[0], pad0, 1e-6); /* a corner is pad */
    }
    ms_image big = {(int)n + 1, 1, px};
    ms_preprocess_cfg c = s_cfg(64, MS_FIT_PAD, true);
    cr_assert_eq(ms_image_preprocess_decoded(&big, &c, out, err, sizeof err), -1);
    cr_assert(strstr(err, "exceeds"), "%s", err);
    free(out);
    free(px);
}

/* DCT scaling (the default) stays within TOL_DCT_* of the full decode, and
 * is really used where the margin allows it. */
Test(image, dct_scaling_within_tolerance, .timeout = 60) {
    size_t len;
    uint8_t *d = s_load("sample.jpg", &len);
    static const struct {
        int size;
        ms_image_fit fit;
        bool scaled; /* 1024x768 leaves room for a DCT scale at this target */
    } cases[] = {
        {336, MS_FIT_PAD, false}, {224, MS_FIT_PAD, true},    {224, MS_FIT_CROP, false},
        {112, MS_FIT_PAD, true},  {112, MS_FIT_CROP, true},   {64, MS_FIT_PAD, true},
        {64, MS_FIT_CROP, true},  {64, MS_FIT_STRETCH, true},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        int size = cases[i].size;
        size_t nf = 3 * (size_t)size * size;
        float *full = malloc(nf * sizeof *full), *fast = malloc(nf * sizeof *fast);
        char err[MS_ERR_SIZE];
        ms_preprocess_cfg cf = s_cfg(size, cases[i].fit, true),
                          cs = s_cfg(size, cases[i].fit, false);
        cr_assert_eq(ms_image_preprocess(d, len, &cf, full, err, sizeof err), 0, "%s", err);
        cr_assert_eq(ms_image_preprocess(d, len, &cs, fast, err, sizeof err), 0, "%s", err);
        double max_err, mean;
        s_compare(fast, full, nf, &max_err, &mean);
        cr_log_info("DCT scaling, %d fit %d: max %.4f mean %.5f", size, cases[i].fit, max_err,
                    mean);
        cr_assert(max_err <= TOL_DCT_MAX && mean <= TOL_DCT_MEAN, "%d/%d: max %.4f mean %.5f", size,
                  cases[i].fit, max_err, mean);
        cr_assert_eq(max_err > 0, cases[i].scaled, "%d/%d: scaled decode %s", size, cases[i].fit,
                     cases[i].scaled ? "not used" : "used");
        free(full);
        free(fast);
    }
    free(d);
}

/* CLIP's processor (CROP) and LLaVA's (PAD) give different images for a
 * non-square input; STRETCH a third. */
Test(image, fit_modes_differ, .timeout = 30) {
    size_t len;
    uint8_t *d = s_load("j_517x333.jpg", &len);
    float *o[3];
    char err[MS_ERR_SIZE];
    for (int m = 0; m < 3; m++) {
        o[m] = malloc(3 * 48 * 48 * sizeof(float));
        ms_preprocess_cfg c = s_cfg(48, (ms_image_fit)m, true);
        cr_assert_eq(ms_image_preprocess(d, len, &c, o[m], err, sizeof err), 0, "%s", err);
    }
    cr_assert_neq(memcmp(o[0], o[1], 3 * 48 * 48 * sizeof(float)), 0);
    cr_assert_neq(memcmp(o[1], o[2], 3 * 48 * 48 * sizeof(float)), 0);
    for (int m = 0; m < 3; m++)
        free(o[m]);
    free(d);
}

/* ---- bad input ---------------------------------------------------------- */

static void s_expect_reject(const uint8_t *d, size_t len, const char *word, const char *what) {
    char err[MS_ERR_SIZE] = "";
    ms_image im;
    cr_assert_eq(ms_image_decode(d, len, 0, &im, err, sizeof err), -1, "%s accepted", what);
    cr_assert_null(im.rgb);
    cr_assert(err[0], "%s: no message", what);
    if (word) cr_assert(strstr(err, word), "%s: message '%s' lacks '%s'", what, err, word);
}

Test(image, rejects_garbage, .timeout = 30) {
    static const uint8_t text[] = "hello, this is not an image at all";
    s_expect_reject(text, sizeof text - 1, "unrecognised image format (first bytes 68 65 6c",
                    "text");
    s_expect_reject(text, 0, "empty", "zero bytes");
    s_expect_reject((const uint8_t *)"GIF89a\1\0\1\0", 10, "GIF", "gif");
    s_expect_reject((const uint8_t *)"\xff\xd8\xff\xe0", 4, "JPEG", "bare JPEG magic");
    s_expect_reject((const uint8_t *)"\x89PNG\r\n\x1a\n", 8, "PNG", "bare PNG magic");
    s_expect_reject((const uint8_t *)"RIFF\0\0\0\0WEBP", 12, "WebP", "bare WebP header");
    uint8_t junk[4096];
    uint64_t x = 99;
    for (int it = 0; it < 200; it++) {
        for (size_t i = 0; i < sizeof junk; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            junk[i] = (uint8_t)(x >> 56);
        }
        static const uint8_t *magics[] = {(const uint8_t *)"\xff\xd8\xff",
                                          (const uint8_t *)"\x89PNG\r\n\x1a\n",
                                          (const uint8_t *)"RIFF\xf0\x0f\0\0WEBPVP8 "};
        static const size_t mlen[] = {3, 8, 16};
        memcpy(junk, magics[it % 3], mlen[it % 3]); /* a valid signature, then noise */
        s_expect_reject(junk, sizeof junk, NULL, "random bytes after a signature");
    }
}

/* Every proper prefix of a valid file is rejected, with the format named. */
Test(image, rejects_every_prefix, .timeout = 120) {
    static const char *files[] = {"j_64x48_420.jpg",         "j_45x33_prog.jpg",
                                  "p_40x30_rgb.png",         "p_40x30_interlaced.png",
                                  "w_40x30_lossy.webp",      "w_40x30_lossless.webp",
                                  "w_40x30_lossy_alpha.webp"};
    static const char *fmt[] = {"JPEG", "JPEG", "PNG", "PNG", "WebP", "WebP", "WebP"};
    for (size_t f = 0; f < MS_ARRAY_LEN(files); f++) {
        size_t len;
        uint8_t *d = s_load(files[f], &len);
        ms_image im;
        char err[MS_ERR_SIZE];
        cr_assert_eq(ms_image_decode(d, len, 0, &im, err, sizeof err), 0, "%s: %s", files[f], err);
        ms_image_fini(&im);
        for (size_t n = 0; n < len; n++) {
            uint8_t *copy = malloc(n ? n : 1); /* exact size, so ASan sees overreads */
            memcpy(copy, d, n);
            char what[128];
            snprintf(what, sizeof what, "%s cut to %zu of %zu bytes", files[f], n, len);
            s_expect_reject(copy, n, n ? fmt[f] : "empty", what);
            free(copy);
        }
        free(d);
    }
}

Test(image, rejects_over_limits, .timeout = 30) {
    size_t len;
    uint8_t *d = s_load("j_64x48_420.jpg", &len);
    char err[MS_ERR_SIZE];
    ms_image im;
    cr_assert_eq(ms_image_decode(d, len, 64 * 48 - 1, &im, err, sizeof err), -1);
    cr_assert(strstr(err, "64x48") && strstr(err, "limit"), "%s", err);
    cr_assert_eq(ms_image_decode(d, len, 64 * 48, &im, err, sizeof err), 0, "%s", err);
    ms_image_fini(&im);
    float *out = malloc(3 * 32 * 32 * sizeof *out);
    ms_preprocess_cfg c = s_cfg(32, MS_FIT_CROP, false);
    c.max_bytes = len - 1;
    cr_assert_eq(ms_image_preprocess(d, len, &c, out, err, sizeof err), -1);
    cr_assert(strstr(err, "byte limit"), "%s", err);
    c.max_bytes = 0;
    c.max_pixels = 100;
    cr_assert_eq(ms_image_preprocess(d, len, &c, out, err, sizeof err), -1);
    cr_assert(strstr(err, "limit"), "%s", err);
    free(out);
    free(d);
}

Test(image, rejects_bad_config, .timeout = 10) {
    size_t len;
    uint8_t *d = s_load("p_7x3.png", &len);
    float out[3 * 8 * 8];
    char err[MS_ERR_SIZE];
    ms_preprocess_cfg c = s_cfg(0, MS_FIT_PAD, false);
    cr_assert_eq(ms_image_preprocess(d, len, &c, out, err, sizeof err), -1);
    cr_assert(strstr(err, "size"), "%s", err);
    c = s_cfg(8, (ms_image_fit)7, false);
    cr_assert_eq(ms_image_preprocess(d, len, &c, out, err, sizeof err), -1);
    c = s_cfg(8, MS_FIT_PAD, false);
    c.std[1] = 0;
    cr_assert_eq(ms_image_preprocess(d, len, &c, out, err, sizeof err), -1);
    cr_assert(strstr(err, "std"), "%s", err);
    c = s_cfg(8, MS_FIT_PAD, false);
    cr_assert_eq(ms_image_preprocess(d, len, &c, out, err, sizeof err), 0, "%s", err);
    free(d);
}

/* ---- benchmark (tools/image_reference.py bench runs it) ------------------ */

/* With MS_IMAGE_BENCH=SIZE:RUNS, times ms_image_preprocess of sample.jpg at
 * SIZE, PAD: the mean of RUNS runs after a warm-up, best of 3 such means,
 * with and without DCT scaling. Skipped otherwise. */
Test(image, bench, .timeout = 300) {
    const char *spec = getenv("MS_IMAGE_BENCH");
    if (!spec || !*spec) cr_skip_test("set MS_IMAGE_BENCH=SIZE:RUNS to run");
    int size = 336, runs = 50;
    sscanf(spec, "%d:%d", &size, &runs);
    size_t len;
    uint8_t *d = s_load("sample.jpg", &len);
    float *out = malloc(3 * (size_t)size * size * sizeof *out);
    char err[MS_ERR_SIZE];
    for (int full = 1; full >= 0; full--) {
        ms_preprocess_cfg c = s_cfg(size, MS_FIT_PAD, full);
        cr_assert_eq(ms_image_preprocess(d, len, &c, out, err, sizeof err), 0, "%s", err);
        double best = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            double t0 = ms_now_s();
            for (int i = 0; i < runs; i++)
                ms_image_preprocess(d, len, &c, out, err, sizeof err);
            best = MS_MIN(best, (ms_now_s() - t0) / runs);
        }
        printf("image-bench mode=%s size=%d ms=%.3f\n", full ? "full-decode" : "dct-scaling", size,
               best * 1e3);
        fflush(stdout);
    }
    free(out);
    free(d);
}
