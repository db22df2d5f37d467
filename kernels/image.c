/* image.c — image decoding and CLIP-style preprocessing (see image.h).
 *
 * What "correct" means here is what the Python side of these models does,
 * checked by tests/test_image.c against fixtures from tools/image_reference.py:
 *  - decode: PIL's Image.open(f).convert("RGB"): alpha dropped (not
 *    composited), palette and grey expanded, 16-bit samples cut to their high
 *    byte, CMYK JPEGs inverted (Adobe convention) and converted with PIL's
 *    cmyk2rgb. One deliberate difference: PIL clips 16-bit greyscale PNGs
 *    ("I;16") to 255 when converting to RGB; we keep the high byte.
 *    A JPEG must reach its end-of-image marker and a PNG its IEND chunk (PIL
 *    rejects the first as truncated; we are stricter on the second).
 *  - resize: Pillow's Resample.c bicubic (a = -0.5, support 2 scaled by the
 *    downscale factor, coefficients normalised then rounded to 22-bit fixed
 *    point, horizontal pass then vertical, each rounded to uint8). The integer
 *    arithmetic is reproduced exactly, so the result is bit-identical to PIL.
 *    Pillow 13 runs the vertical pass first when the height shrinks much more
 *    than the width (see s_vertical_first); so do we. Older Pillows always go
 *    horizontal first and may differ from us there by one level.
 *  - PAD: LLaVA's expand2square(img, tuple(int(m * 255) for m in mean)) —
 *    note int(), i.e. truncation, as LLaVA and llama.cpp (122, 116, 104 for
 *    CLIP) do — then resize to size x size.
 *  - CROP: HF CLIPImageProcessor: resize the shortest side to size (the other
 *    to int(size * long / short)), centre crop with top = (h - size) // 2.
 *  - normalise: HF rescale (float64 x * (1/255) cast to float32) then
 *    (x - mean) / std in float32, planar CHW.
 * Padding and cropping are folded into the resize: padded samples enter as a
 * per-output constant term and only the cropped window is computed, which is
 * exact (integer sums) and skips the work PIL spends on the padded canvas.
 *
 * Speed: coefficients are computed once per output row/column; the
 * horizontal pass streams source rows through a ring buffer that the
 * vertical pass reads, so the working set stays in cache. On x86 the passes
 * use 16-bit multiply-adds (SSE2/SSSE3 here, AVX2 in image_resize_avx2.c,
 * picked at run time) on the 22-bit coefficients split into high and low
 * parts, which keeps the sums exact (image_kernels.h). JPEGs can be decoded
 * with libjpeg-turbo's DCT scaling (see image.h; its error against the full
 * decode is measured and bounded in tests/test_image.c).
 */
#include "image.h"

#include "image_kernels.h"
#include "ms_common.h"

#include <assert.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <webp/decode.h>

#if defined(__x86_64__) || defined(__i386__)
#include <emmintrin.h>
#include <tmmintrin.h>
#define S_X86 1
#endif

/* ---- formats ------------------------------------------------------------ */

typedef enum { S_FMT_UNKNOWN = 0, S_FMT_JPEG, S_FMT_PNG, S_FMT_WEBP } s_fmt;

static const uint8_t s_png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
static const uint8_t s_jpeg_magic[3] = {0xff, 0xd8, 0xff};

/* What a decoder needs to know about the preprocessing that follows, to pick
 * a JPEG DCT scale; NULL target = decode at full size. */
typedef struct s_target {
    int size;         /* cfg->size */
    ms_image_fit fit; /* cfg->fit */
} s_target;

static s_fmt s_sniff(const uint8_t *d, size_t n) {
    if (n >= 3 && !memcmp(d, s_jpeg_magic, 3)) return S_FMT_JPEG;
    if (n >= 8 && !memcmp(d, s_png_magic, 8)) return S_FMT_PNG;
    if (n >= 12 && !memcmp(d, "RIFF", 4) && !memcmp(d + 8, "WEBP", 4)) return S_FMT_WEBP;
    return S_FMT_UNKNOWN;
}

/* The message for bytes that are none of our formats: names a few common
 * formats we do not take, a truncated signature of one we do, else the bytes. */
static int s_unknown_format(const uint8_t *d, size_t n, char *err, size_t err_size) {
    static const struct {
        const char *magic;
        size_t len, off;
        const char *name;
    } others[] = {
        {"GIF8", 4, 0, "GIF"},     {"BM", 2, 0, "BMP"},        {"II*\0", 4, 0, "TIFF"},
        {"MM\0*", 4, 0, "TIFF"},   {"ftypavif", 8, 4, "AVIF"}, {"ftypheic", 8, 4, "HEIC"},
        {"\0\0\1\0", 4, 0, "ICO"},
    };
    if (n == 0) return ms_errf(err, err_size, "empty image data (0 bytes)");
    if (n < 8 && !memcmp(d, s_png_magic, n))
        return ms_errf(err, err_size, "PNG: truncated data (%zu bytes, inside the signature)", n);
    if (n < 3 && !memcmp(d, s_jpeg_magic, n))
        return ms_errf(err, err_size, "JPEG: truncated data (%zu bytes, inside the signature)", n);
    if (n < 12 && !memcmp(d, "RIFF", MS_MIN(n, (size_t)4)) &&
        (n <= 8 || !memcmp(d + 8, "WEBP", n - 8)))
        return ms_errf(err, err_size, "WebP: truncated data (%zu bytes, inside the RIFF header)",
                       n);
    for (size_t i = 0; i < MS_ARRAY_LEN(others); i++)
        if (n >= others[i].off + others[i].len &&
            !memcmp(d + others[i].off, others[i].magic, others[i].len))
            return ms_errf(err, err_size,
                           "unsupported image format %s (supported: JPEG, PNG, WebP)",
                           others[i].name);
    char hex[3 * 8 + 1] = "";
    for (size_t i = 0, at = 0; i < MS_MIN(n, (size_t)8); i++)
        at += (size_t)snprintf(hex + at, sizeof hex - at, "%s%02x", i ? " " : "", d[i]);
    return ms_errf(err, err_size,
                   "unrecognised image format (first bytes %s%s; expected JPEG, PNG or WebP)", hex,
                   n > 8 ? " ..." : "");
}

/* Rejects dimensions that are zero, absurd or over the pixel budget. */
static int s_check_dims(const char *fmt, uint64_t w, uint64_t h, uint64_t max_pixels, char *err,
                        size_t err_size) {
    if (w == 0 || h == 0)
        return ms_errf(err, err_size, "%s: invalid dimensions %llux%llu", fmt,
                       (unsigned long long)w, (unsigned long long)h);
    if (w > MS_IMAGE_MAX_SIDE || h > MS_IMAGE_MAX_SIDE || w * h > max_pixels)
        return ms_errf(err, err_size,
                       "%s: %llux%llu image exceeds the limit (%llu pixels, %d per side); "
                       "refusing to decode",
                       fmt, (unsigned long long)w, (unsigned long long)h,
                       (unsigned long long)max_pixels, MS_IMAGE_MAX_SIDE);
    return 0;
}

/* ---- JPEG --------------------------------------------------------------- */

/* Walks the marker segments up to the end-of-image marker, skipping
 * entropy-coded data, to find the frame size and to check that the stream is
 * complete: libjpeg only warns at a premature end (and reports just the first
 * warning through TurboJPEG), while PIL rejects such files as truncated. */
static int s_jpeg_walk(const uint8_t *d, size_t n, int *w, int *h, char *err, size_t err_size) {
    size_t p = 2;
    bool sof = false;
    for (;;) {
        while (p < n && d[p] != 0xff)
            p++; /* extraneous bytes: libjpeg tolerates them */
        while (p < n && d[p] == 0xff)
            p++; /* fill bytes */
        if (p >= n) break;
        uint8_t m = d[p++];
        if (m == 0xd9) { /* EOI */
            if (!sof) return ms_errf(err, err_size, "JPEG: no frame header before end of image");
            return 0;
        }
        if (m == 0x00 || m == 0x01 || (m >= 0xd0 && m <= 0xd8)) continue; /* no length */
        if (n - p < 2) break;
        size_t len = (size_t)d[p] << 8 | d[p + 1];
        if (len < 2)
            return ms_errf(err, err_size, "JPEG: corrupt segment length %zu (marker 0x%02x)", len,
                           m);
        if (n - p < len) break;
        const uint8_t *s = d + p + 2;
        if (m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc) {
            if (len < 8) return ms_errf(err, err_size, "JPEG: corrupt frame header");
            *h = s[1] << 8 | s[2];
            *w = s[3] << 8 | s[4];
            sof = true;
        }
        p += len;
        if (m == 0xda) { /* entropy-coded data runs to the next marker */
            for (;;) {
                const uint8_t *q = p < n ? memchr(d + p, 0xff, n - p) : NULL;
                if (!q || (size_t)(q - d) + 1 >= n) {
                    p = n;
                    break;
                }
                p = (size_t)(q - d);
                uint8_t b = d[p + 1];
                if (b == 0x00 || (b >= 0xd0 && b <= 0xd7))
                    p += 2; /* stuffing, restart */
                else if (b == 0xff)
                    p += 1;
                else
                    break;
            }
        }
    }
    return ms_errf(err, err_size, "JPEG: truncated data (no end-of-image marker in %zu bytes)", n);
}

/* The DCT scales PIL's Image.draft also uses, smallest first. */
static const tjscalingfactor s_dct_scales[] = {{1, 8}, {1, 4}, {1, 2}};

/* Size (in output pixels) that the image content occupies after preprocessing. */
static void s_content_size(int w, int h, const s_target *t, double *cw, double *ch) {
    switch (t->fit) {
    case MS_FIT_PAD: {
        double side = MS_MAX(w, h);
        *cw = t->size * (w / side);
        *ch = t->size * (h / side);
        break;
    }
    case MS_FIT_CROP: {
        double s = MS_MIN(w, h);
        *cw = t->size * (w / s);
        *ch = t->size * (h / s);
        break;
    }
    default:
        *cw = *ch = t->size;
        break;
    }
}

static tjscalingfactor s_jpeg_scale(int w, int h, const s_target *t) {
    tjscalingfactor one = {1, 1};
    if (!t) return one;
    double cw, ch;
    s_content_size(w, h, t, &cw, &ch);
    for (size_t i = 0; i < MS_ARRAY_LEN(s_dct_scales); i++) {
        tjscalingfactor f = s_dct_scales[i];
        if (TJSCALED(w, f) >= MS_IMAGE_DCT_MARGIN * cw &&
            TJSCALED(h, f) >= MS_IMAGE_DCT_MARGIN * ch)
            return f;
    }
    return one;
}

/* Pillow's cmyk2rgb (Convert.c) on inverted (Adobe) CMYK, in place 4 -> 3. */
static void s_cmyk_to_rgb(uint8_t *px, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int c = 255 - px[4 * i], m = 255 - px[4 * i + 1], y = 255 - px[4 * i + 2];
        int nk = px[4 * i + 3]; /* 255 - k, k itself inverted */
        int v[3] = {c, m, y};
        for (int j = 0; j < 3; j++) {
            int t = v[j] * nk + 128;
            int r = nk - (((t >> 8) + t) >> 8);
            px[3 * i + j] = (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
        }
    }
}

static int s_decode_jpeg(const uint8_t *d, size_t n, uint64_t max_pixels, const s_target *t,
                         ms_image *out, char *err, size_t err_size) {
    int ww = 0, hh = 0;
    if (s_jpeg_walk(d, n, &ww, &hh, err, err_size)) return -1;
    if (s_check_dims("JPEG", (uint64_t)ww, (uint64_t)hh, max_pixels, err, err_size)) return -1;
    tjhandle tj = tjInitDecompress();
    if (!tj) return ms_errf(err, err_size, "JPEG: cannot create decoder: %s", tjGetErrorStr2(NULL));
    int w = 0, h = 0, subsamp = 0, cs = 0, rc = -1;
    uint8_t *px = NULL;
    if (tjDecompressHeader3(tj, d, (unsigned long)n, &w, &h, &subsamp, &cs) != 0 &&
        tjGetErrorCode(tj) != TJERR_WARNING) {
        ms_errf(err, err_size, "JPEG: %s", tjGetErrorStr2(tj));
        goto done;
    }
    if (w != ww || h != hh) {
        ms_errf(err, err_size, "JPEG: corrupt frame header (%dx%d vs %dx%d)", w, h, ww, hh);
        goto done;
    }
    tjscalingfactor f = s_jpeg_scale(w, h, t);
    int sw = TJSCALED(w, f), sh = TJSCALED(h, f);
    bool cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    int pf = cmyk ? TJPF_CMYK : TJPF_RGB;
    px = ms_xmalloc((size_t)sw * (size_t)sh * (size_t)tjPixelSize[pf]);
    if (tjDecompress2(tj, d, (unsigned long)n, px, sw, 0, sh, pf, 0) != 0) {
        const char *msg = tjGetErrorStr2(tj);
        /* Warnings (e.g. extraneous bytes, a bad Huffman code) leave a full
         * image, which PIL accepts too; a premature end does not. */
        if (tjGetErrorCode(tj) != TJERR_WARNING || strstr(msg, "Premature end")) {
            ms_errf(err, err_size, "JPEG: %s", msg);
            goto done;
        }
    }
    if (cmyk) s_cmyk_to_rgb(px, (size_t)sw * (size_t)sh);
    out->w = sw;
    out->h = sh;
    out->rgb = px;
    px = NULL;
    rc = 0;
done:
    free(px);
    tjDestroy(tj);
    return rc;
}

/* ---- PNG ---------------------------------------------------------------- */

/* Heap-allocated so that its fields are well-defined after a longjmp. */
typedef struct s_png_ctx {
    const uint8_t *data; /* the encoded bytes */
    size_t len, pos;     /* their length, the read position */
    char *err;           /* the caller's error buffer */
    size_t err_size;
    uint8_t *pix;    /* (h, w, channels) decoded samples, freed on error */
    png_bytep *rows; /* (h) row pointers into pix */
} s_png_ctx;

static void s_png_error(png_structp png, png_const_charp msg) {
    s_png_ctx *c = png_get_error_ptr(png);
    ms_errf(c->err, c->err_size, "PNG: %s", msg);
    png_longjmp(png, 1);
}

static void s_png_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void s_png_read(png_structp png, png_bytep dst, size_t n) {
    s_png_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) png_error(png, "truncated data");
    memcpy(dst, c->data + c->pos, n);
    c->pos += n;
}

static int s_decode_png(const uint8_t *d, size_t n, uint64_t max_pixels, ms_image *out, char *err,
                        size_t err_size) {
    s_png_ctx *c = ms_xcalloc(1, sizeof *c);
    c->data = d;
    c->len = n;
    c->err = err;
    c->err_size = err_size;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, s_png_error, s_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        free(c);
        return ms_errf(err, err_size, "PNG: cannot create decoder");
    }
    if (setjmp(png_jmpbuf(png))) { /* the message is already in err */
        png_destroy_read_struct(&png, &info, NULL);
        free(c->pix);
        free(c->rows);
        free(c);
        return -1;
    }
    png_set_read_fn(png, c, s_png_read);
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if (s_check_dims("PNG", w, h, max_pixels, err, err_size)) png_longjmp(png, 1);
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png); /* + alpha if tRNS */
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_strip_16(png); /* the high byte, as PIL's ;16B raw modes */
    if (ctype & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
    if (!(ctype & PNG_COLOR_MASK_COLOR)) png_set_gray_to_rgb(png);
    if (interlace != PNG_INTERLACE_NONE) png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t ch = png_get_channels(png, info);
    if (png_get_bit_depth(png, info) != 8 || (ch != 3 && ch != 4) ||
        png_get_rowbytes(png, info) != ch * w)
        png_error(png, "unsupported pixel layout after conversion");
    c->pix = ms_xmalloc((size_t)w * h * ch);
    c->rows = ms_xmalloc(h * sizeof *c->rows);
    for (png_uint_32 y = 0; y < h; y++)
        c->rows[y] = c->pix + (size_t)y * w * ch;
    png_read_image(png, c->rows);
    png_read_end(png, NULL); /* checks the rest of the stream up to IEND */
    if (ch == 4)             /* palette + tRNS: drop the alpha that expansion added */
        for (size_t i = 0; i < (size_t)w * h; i++)
            memmove(c->pix + 3 * i, c->pix + 4 * i, 3);
    out->w = (int)w;
    out->h = (int)h;
    out->rgb = c->pix;
    png_destroy_read_struct(&png, &info, NULL);
    free(c->rows);
    free(c);
    return 0;
}

/* ---- WebP --------------------------------------------------------------- */

static const char *s_webp_status(VP8StatusCode st) {
    switch (st) {
    case VP8_STATUS_OUT_OF_MEMORY:
        return "out of memory";
    case VP8_STATUS_INVALID_PARAM:
        return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR:
        return "corrupt bitstream";
    case VP8_STATUS_UNSUPPORTED_FEATURE:
        return "unsupported feature";
    case VP8_STATUS_SUSPENDED:
        return "decoding suspended";
    case VP8_STATUS_USER_ABORT:
        return "decoding aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA:
        return "truncated data";
    default:
        return "unknown error";
    }
}

static int s_decode_webp(const uint8_t *d, size_t n, uint64_t max_pixels, ms_image *out, char *err,
                         size_t err_size) {
    WebPDecoderConfig cfg;
    if (!WebPInitDecoderConfig(&cfg))
        return ms_errf(err, err_size, "WebP: library version mismatch");
    VP8StatusCode st = WebPGetFeatures(d, n, &cfg.input);
    if (st != VP8_STATUS_OK) return ms_errf(err, err_size, "WebP: %s (header)", s_webp_status(st));
    if (cfg.input.has_animation)
        return ms_errf(err, err_size, "WebP: animated images are not supported");
    int w = cfg.input.width, h = cfg.input.height;
    if (s_check_dims("WebP", (uint64_t)(w < 0 ? 0 : w), (uint64_t)(h < 0 ? 0 : h), max_pixels, err,
                     err_size))
        return -1;
    size_t bytes = (size_t)w * (size_t)h * 3;
    uint8_t *px = ms_xmalloc(bytes);
    cfg.output.colorspace = MODE_RGB; /* alpha, if any, is dropped */
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = px;
    cfg.output.u.RGBA.stride = 3 * w;
    cfg.output.u.RGBA.size = bytes;
    st = WebPDecode(d, n, &cfg);
    WebPFreeDecBuffer(&cfg.output);
    if (st != VP8_STATUS_OK) {
        free(px);
        return ms_errf(err, err_size, "WebP: %s", s_webp_status(st));
    }
    out->w = w;
    out->h = h;
    out->rgb = px;
    return 0;
}

/* ---- decode ------------------------------------------------------------- */

static int s_decode(const uint8_t *data, size_t len, uint64_t max_pixels, const s_target *t,
                    ms_image *out, char *err, size_t err_size) {
    assert(out && (data || len == 0));
    memset(out, 0, sizeof *out);
    if (max_pixels == 0) max_pixels = MS_IMAGE_MAX_PIXELS_DEFAULT;
    switch (s_sniff(data, len)) {
    case S_FMT_JPEG:
        return s_decode_jpeg(data, len, max_pixels, t, out, err, err_size);
    case S_FMT_PNG:
        return s_decode_png(data, len, max_pixels, out, err, err_size);
    case S_FMT_WEBP:
        return s_decode_webp(data, len, max_pixels, out, err, err_size);
    default:
        return s_unknown_format(data, len, err, err_size);
    }
}

int ms_image_decode(const uint8_t *data, size_t len, uint64_t max_pixels, ms_image *out, char *err,
                    size_t err_size) {
    return s_decode(data, len, max_pixels, NULL, out, err, err_size);
}

void ms_image_fini(ms_image *img) {
    if (!img) return;
    free(img->rgb);
    memset(img, 0, sizeof *img);
}

/* ---- resize: coefficients ----------------------------------------------- */

#define S_BICUBIC_SUPPORT 2.0

/* Pillow's bicubic_filter, a = -0.5, same operation order. */
static double s_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for outputs
 * [o0, o0 + n) of a resize of v_size inputs to out_size outputs. */
static void s_axis_init(ms_image_axis *ax, int v_size, int out_size, int o0, int n, int pad_lo,
                        int real_size) {
    double scale = (double)(float)v_size / out_size; /* Pillow's box is float */
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = S_BICUBIC_SUPPORT * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    ax->n = n;
    ax->kstride = (ksize + MS_IMAGE_KALIGN - 1) / MS_IMAGE_KALIGN * MS_IMAGE_KALIGN;
    ax->first = ms_xcalloc((size_t)n, sizeof *ax->first);
    ax->count = ms_xcalloc((size_t)n, sizeof *ax->count);
    ax->k = ms_xcalloc((size_t)n * (size_t)ax->kstride, sizeof *ax->k);
    ax->kpad = ms_xcalloc((size_t)n, sizeof *ax->kpad);
    double *w = ms_xmalloc((size_t)ksize * sizeof *w);
    for (int i = 0; i < n; i++) {
        int xx = o0 + i;
        double center = (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > v_size) xmax = v_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            w[x] = s_bicubic((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = ax->k + (size_t)i * ax->kstride;
        int cnt = 0;
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            int32_t q = v < 0 ? (int32_t)(-0.5 + v * (1 << MS_IMAGE_PREC))
                              : (int32_t)(0.5 + v * (1 << MS_IMAGE_PREC));
            int r = xmin + x - pad_lo;
            if (r < 0 || r >= real_size) {
                ax->kpad[i] += q;
            } else {
                if (cnt == 0) ax->first[i] = r;
                k[cnt++] = q;
            }
        }
        ax->count[i] = cnt;
    }
    free(w);
}

static void s_axis_fini(ms_image_axis *ax) {
    free(ax->first);
    free(ax->count);
    free(ax->k);
    free(ax->kpad);
    memset(ax, 0, sizeof *ax);
}

static void *s_aligned(size_t n) {
    void *p = aligned_alloc(32, (n + 31) & ~(size_t)31);
    if (!p) { /* as ms_xmalloc: sizes were validated before they got here */
        ms_error("out of memory allocating %zu bytes", n);
        abort();
    }
    return p;
}

/* Packs two 16-bit values into one 32-bit lane (a low, b high). */
static inline uint32_t s_pair16(int32_t a, int32_t b) {
    return (uint32_t)(uint16_t)a | (uint32_t)(uint16_t)b << 16;
}

/* Index, in 16-byte units from an output's first, of the vector holding the
 * high halves of the weight pair (t, t+1), t even; the low halves follow at
 * +1 (SSSE3) or +2 (AVX2, see ms_image_kvec_layout). */
static size_t s_kvec_hi(ms_image_kvec_layout layout, int t) {
    if (layout == MS_IMAGE_KVEC_SSSE3) return (size_t)t;
    int r = t % 8;
    return (size_t)(t - r) + 2 * (size_t)(r & 2) + (size_t)(r >> 2);
}

static void s_hplan_init(ms_image_hplan *hp, const ms_image_axis *ax, const uint8_t pad[3],
                         ms_image_kvec_layout layout) {
    hp->ax = ax;
    hp->bias = s_aligned((size_t)ax->n * 4 * sizeof *hp->bias);
    for (int i = 0; i < ax->n; i++) {
        for (int c = 0; c < 3; c++)
            hp->bias[4 * i + c] = MS_IMAGE_HALF + pad[c] * ax->kpad[i];
        hp->bias[4 * i + 3] = 0;
    }
    hp->kvec = NULL;
    if (layout == MS_IMAGE_KVEC_NONE) return;
    size_t lo_off = layout == MS_IMAGE_KVEC_SSSE3 ? 1 : 2;
    uint32_t *v = s_aligned((size_t)ax->n * (size_t)ax->kstride * 16);
    for (int i = 0; i < ax->n; i++) {
        const int32_t *k = ax->k + (size_t)i * ax->kstride;
        uint32_t *vi = v + (size_t)i * ax->kstride * 4; /* 4 uint32 per 16-byte unit */
        for (int t = 0; t < ax->kstride; t += 2) {
            uint32_t hi = s_pair16(k[t] >> MS_IMAGE_KSPLIT, k[t + 1] >> MS_IMAGE_KSPLIT);
            uint32_t lo = s_pair16(k[t] & MS_IMAGE_KLO, k[t + 1] & MS_IMAGE_KLO);
            size_t h = s_kvec_hi(layout, t);
            for (int l = 0; l < 4; l++) {
                vi[h * 4 + l] = hi;
                vi[(h + lo_off) * 4 + l] = lo;
            }
        }
    }
    hp->kvec = v;
}

static void s_hplan_fini(ms_image_hplan *hp) {
    free(hp->bias);
    free(hp->kvec);
}

/* ---- resize: kernels ---------------------------------------------------- */

/* A kernel set: the two passes, scalar or SIMD, chosen at run time. */
typedef struct s_kernels {
    const char *name;
    ms_image_kvec_layout layout; /* of ms_image_hplan.kvec, as hpass reads it */
    /* One row: in has w RGB pixels, out gets hp->ax->n RGB pixels. */
    void (*hpass)(uint8_t *out, const uint8_t *in, int w, const ms_image_hplan *hp);
    /* One row of nbytes: out[x] = clip8(MS_IMAGE_HALF + sum_t rows[t][x] * k[t]). */
    void (*vpass)(uint8_t *out, const uint8_t *const *rows, const int32_t *k, int ntaps,
                  int nbytes);
} s_kernels;

static void s_hpass_scalar(uint8_t *out, const uint8_t *in, int w, const ms_image_hplan *hp) {
    (void)w;
    for (int i = 0; i < hp->ax->n; i++)
        ms_image_hpass_px(out, in, hp, i);
}

static void s_vpass_scalar(uint8_t *out, const uint8_t *const *rows, const int32_t *k, int ntaps,
                           int nbytes) {
    ms_image_vpass_range(out, rows, k, ntaps, 0, nbytes);
}

static const s_kernels s_kernels_scalar = {"scalar", MS_IMAGE_KVEC_NONE, s_hpass_scalar,
                                           s_vpass_scalar};

#ifdef S_X86
/* Sum = (sum p * hi) << 11 + sum p * lo, exact in int32 like Pillow's. */
static inline __m128i s_combine(__m128i hi, __m128i lo, __m128i bias) {
    return _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(hi, MS_IMAGE_KSPLIT), lo), bias);
}

__attribute__((target("ssse3"))) static void s_hpass_ssse3(uint8_t *out, const uint8_t *in, int w,
                                                           const ms_image_hplan *hp) {
    /* Taps t, t+1 (bytes 0..5) and t+2, t+3 (bytes 6..11) as int16
     * {R_t, R_t+1, G_t, G_t+1, B_t, B_t+1, 0, 0}. */
    const __m128i sh0 = _mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
    const __m128i sh1 = _mm_setr_epi8(6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1);
    const ms_image_axis *ax = hp->ax;
    const __m128i *kv0 = hp->kvec;
    for (int i = 0; i < ax->n; i++) {
        int first = ax->first[i], ng = (ax->count[i] + 3) >> 2;
        /* The last 16-byte load must stay inside the row. */
        if (ng > 0 && 3 * (first + 4 * (ng - 1)) + 16 > 3 * w) {
            ms_image_hpass_px(out, in, hp, i);
            continue;
        }
        const __m128i *kv = kv0 + (size_t)i * ax->kstride;
        const uint8_t *p = in + 3 * (size_t)first;
        __m128i hi = _mm_setzero_si128(), lo = _mm_setzero_si128();
        for (int g = 0; g < ng; g++, p += 12, kv += 4) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            __m128i a = _mm_shuffle_epi8(v, sh0), b = _mm_shuffle_epi8(v, sh1);
            hi = _mm_add_epi32(hi, _mm_madd_epi16(a, kv[0]));
            lo = _mm_add_epi32(lo, _mm_madd_epi16(a, kv[1]));
            hi = _mm_add_epi32(hi, _mm_madd_epi16(b, kv[2]));
            lo = _mm_add_epi32(lo, _mm_madd_epi16(b, kv[3]));
        }
        __m128i s = s_combine(hi, lo, _mm_load_si128((const __m128i *)(hp->bias + 4 * i)));
        s = _mm_srai_epi32(s, MS_IMAGE_PREC);
        s = _mm_packs_epi32(s, s);
        s = _mm_packus_epi16(s, s); /* = ms_image_clip8 on each lane */
        uint32_t px = (uint32_t)_mm_cvtsi128_si32(s);
        out[3 * i] = (uint8_t)px;
        out[3 * i + 1] = (uint8_t)(px >> 8);
        out[3 * i + 2] = (uint8_t)(px >> 16);
    }
}

#define S_VPAIRS_MAX 128 /* taps pairs the SIMD vertical pass keeps on the stack */

static void s_vpass_sse2(uint8_t *out, const uint8_t *const *rows, const int32_t *k, int ntaps,
                         int nbytes) {
    int npairs = (ntaps + 1) / 2;
    if (nbytes < 16 || npairs > S_VPAIRS_MAX) {
        s_vpass_scalar(out, rows, k, ntaps, nbytes);
        return;
    }
    __m128i kp[2 * S_VPAIRS_MAX];
    for (int p = 0; p < npairs; p++) {
        int32_t k0 = k[2 * p], k1 = 2 * p + 1 < ntaps ? k[2 * p + 1] : 0;
        kp[2 * p] = _mm_set1_epi32((int)s_pair16(k0 >> MS_IMAGE_KSPLIT, k1 >> MS_IMAGE_KSPLIT));
        kp[2 * p + 1] = _mm_set1_epi32((int)s_pair16(k0 & MS_IMAGE_KLO, k1 & MS_IMAGE_KLO));
    }
    const __m128i zero = _mm_setzero_si128(), half = _mm_set1_epi32(MS_IMAGE_HALF);
    for (int x = 0;; x += 16) {
        if (x > nbytes - 16) x = nbytes - 16; /* last block overlaps the previous one */
        __m128i h0 = zero, h1 = zero, h2 = zero, h3 = zero;
        __m128i l0 = zero, l1 = zero, l2 = zero, l3 = zero;
        for (int p = 0; p < npairs; p++) {
            const uint8_t *ra = rows[2 * p], *rb = 2 * p + 1 < ntaps ? rows[2 * p + 1] : ra;
            __m128i a = _mm_loadu_si128((const __m128i *)(ra + x));
            __m128i b = _mm_loadu_si128((const __m128i *)(rb + x));
            __m128i ablo = _mm_unpacklo_epi8(a, b), abhi = _mm_unpackhi_epi8(a, b);
            __m128i q0 = _mm_unpacklo_epi8(ablo, zero), q1 = _mm_unpackhi_epi8(ablo, zero);
            __m128i q2 = _mm_unpacklo_epi8(abhi, zero), q3 = _mm_unpackhi_epi8(abhi, zero);
            __m128i kh = kp[2 * p], kl = kp[2 * p + 1];
            h0 = _mm_add_epi32(h0, _mm_madd_epi16(q0, kh));
            l0 = _mm_add_epi32(l0, _mm_madd_epi16(q0, kl));
            h1 = _mm_add_epi32(h1, _mm_madd_epi16(q1, kh));
            l1 = _mm_add_epi32(l1, _mm_madd_epi16(q1, kl));
            h2 = _mm_add_epi32(h2, _mm_madd_epi16(q2, kh));
            l2 = _mm_add_epi32(l2, _mm_madd_epi16(q2, kl));
            h3 = _mm_add_epi32(h3, _mm_madd_epi16(q3, kh));
            l3 = _mm_add_epi32(l3, _mm_madd_epi16(q3, kl));
        }
        __m128i s0 = _mm_srai_epi32(s_combine(h0, l0, half), MS_IMAGE_PREC);
        __m128i s1 = _mm_srai_epi32(s_combine(h1, l1, half), MS_IMAGE_PREC);
        __m128i s2 = _mm_srai_epi32(s_combine(h2, l2, half), MS_IMAGE_PREC);
        __m128i s3 = _mm_srai_epi32(s_combine(h3, l3, half), MS_IMAGE_PREC);
        __m128i r = _mm_packus_epi16(_mm_packs_epi32(s0, s1), _mm_packs_epi32(s2, s3));
        _mm_storeu_si128((__m128i *)(out + x), r);
        if (x == nbytes - 16) break;
    }
}

static const s_kernels s_kernels_ssse3 = {"ssse3", MS_IMAGE_KVEC_SSSE3, s_hpass_ssse3,
                                          s_vpass_sse2};
static const s_kernels s_kernels_avx2 = {"avx2", MS_IMAGE_KVEC_AVX2, ms_image_hpass_avx2,
                                         ms_image_vpass_avx2};
#endif

/* The best kernels for this CPU. MS_IMAGE_SIMD in the environment caps the
 * choice (scalar, ssse3, avx2), so tests can compare them; all give the
 * same bytes. */
static const s_kernels *s_pick_kernels(void) {
    const char *cap = getenv("MS_IMAGE_SIMD");
    if (cap && !strcmp(cap, "scalar")) return &s_kernels_scalar;
#ifdef S_X86
    bool avx2_ok = !cap || !*cap || !strcmp(cap, "avx2");
    if (avx2_ok && __builtin_cpu_supports("avx2")) return &s_kernels_avx2;
    if (__builtin_cpu_supports("ssse3")) return &s_kernels_ssse3;
#endif
    return &s_kernels_scalar;
}

/* ---- resize: driver ----------------------------------------------------- */

/* An image placed on a larger constant-colour canvas (the canvas may equal it). */
typedef struct s_view {
    const uint8_t *rgb; /* (h, w, 3) the real pixels */
    int w, h;           /* their size */
    int vw, vh;         /* the canvas size */
    int x0, y0;         /* where the real pixels sit on the canvas */
    uint8_t pad[3];     /* the colour of the rest */
} s_view;

/* Where the resized rows go: uint8 RGB rows, or normalised planar floats. */
typedef struct s_sink {
    uint8_t *rgb;            /* (ny, nx, 3) or NULL */
    float *chw;              /* (3, ny, nx) or NULL */
    const float (*lut)[256]; /* [3][256] normalisation table for chw */
} s_sink;

static void s_sink_row(const s_sink *sk, const uint8_t *row, int y, int nx, int ny) {
    if (sk->rgb) {
        memcpy(sk->rgb + (size_t)y * nx * 3, row, (size_t)nx * 3);
        return;
    }
    for (int c = 0; c < 3; c++) {
        float *o = sk->chw + ((size_t)c * ny + y) * nx;
        const float *lut = sk->lut[c];
        for (int x = 0; x < nx; x++)
            o[x] = lut[row[3 * x + c]];
    }
}

/* Pillow >= 13 runs the vertical pass first when the height shrinks by more
 * than twice as many pixels as the width (python-pillow/Pillow#9549); the
 * rounding between the passes makes the order visible, so we follow it. */
static bool s_vertical_first(int in_w, int in_h, int out_w, int out_h) {
    return out_h < in_h && in_h - out_h > 2 * (in_w - out_w);
}

/* Horizontal pass first: source rows go through it once, into a ring buffer
 * as tall as the vertical filter, in the order the vertical pass needs them. */
static void s_run_hfirst(const s_view *v, const ms_image_axis *vy, const ms_image_hplan *hp,
                         const s_kernels *kr, const s_sink *sk) {
    int nx = hp->ax->n, ny = vy->n;
    size_t rb = (size_t)nx * 3; /* bytes of one resized row */
    int cap = 1;
    bool need_pad_row = false;
    for (int i = 0; i < ny; i++) {
        cap = MS_MAX(cap, vy->count[i]);
        need_pad_row |= vy->kpad[i] != 0;
    }
    uint8_t *ring = ms_xmalloc((size_t)cap * rb);
    uint8_t *row = ms_xmalloc(rb);
    uint8_t *padrow = NULL;
    if (need_pad_row) { /* a canvas row of pad colour through the horizontal pass */
        uint8_t *src = ms_xmalloc((size_t)v->w * 3);
        for (int x = 0; x < v->w; x++)
            memcpy(src + 3 * x, v->pad, 3);
        padrow = ms_xmalloc(rb);
        kr->hpass(padrow, src, v->w, hp);
        free(src);
    }
    const uint8_t **rows = ms_xmalloc((size_t)(cap + 1) * sizeof *rows);
    int32_t *kk = ms_xmalloc((size_t)(cap + 1) * sizeof *kk);
    int done = 0; /* source rows below this have been through the horizontal pass */
    for (int i = 0; i < ny; i++) {
        int first = vy->first[i], cnt = vy->count[i], nt = 0;
        if (done < first) done = first;
        for (; done < first + cnt; done++)
            kr->hpass(ring + (size_t)(done % cap) * rb, v->rgb + (size_t)done * v->w * 3, v->w, hp);
        for (int t = 0; t < cnt; t++) {
            rows[nt] = ring + (size_t)((first + t) % cap) * rb;
            kk[nt++] = vy->k[(size_t)i * vy->kstride + t];
        }
        if (vy->kpad[i] != 0) {
            rows[nt] = padrow;
            kk[nt++] = vy->kpad[i];
        }
        kr->vpass(row, rows, kk, nt, (int)rb);
        s_sink_row(sk, row, i, nx, ny);
    }
    free(rows);
    free(kk);
    free(padrow);
    free(row);
    free(ring);
}

/* Vertical pass first (no padding: only a square canvas is padded, and a
 * square-to-square resize never takes this path): each output row is the
 * vertical pass over full source rows, then the horizontal pass. */
static void s_run_vfirst(const s_view *v, const ms_image_axis *vy, const ms_image_hplan *hp,
                         const s_kernels *kr, const s_sink *sk) {
    assert(v->w == v->vw && v->h == v->vh);
    int nx = hp->ax->n, ny = vy->n;
    size_t sb = (size_t)v->w * 3;
    uint8_t *mid = ms_xmalloc(sb), *row = ms_xmalloc((size_t)nx * 3);
    int cap = 1;
    for (int i = 0; i < ny; i++)
        cap = MS_MAX(cap, vy->count[i]);
    const uint8_t **rows = ms_xmalloc((size_t)cap * sizeof *rows);
    for (int i = 0; i < ny; i++) {
        for (int t = 0; t < vy->count[i]; t++)
            rows[t] = v->rgb + (size_t)(vy->first[i] + t) * sb;
        kr->vpass(mid, rows, vy->k + (size_t)i * vy->kstride, vy->count[i], (int)sb);
        kr->hpass(row, mid, v->w, hp);
        s_sink_row(sk, row, i, nx, ny);
    }
    free(rows);
    free(row);
    free(mid);
}

/* Resizes the canvas of v to out_w x out_h (PIL bicubic) and delivers the
 * window [ox0, ox0 + nx) x [oy0, oy0 + ny) of the result to sk. */
static void s_resize_view(const s_view *v, int out_w, int out_h, int ox0, int oy0, int nx, int ny,
                          const s_sink *sk) {
    const s_kernels *kr = s_pick_kernels();
    ms_image_axis hx, vy;
    s_axis_init(&hx, v->vw, out_w, ox0, nx, v->x0, v->w);
    s_axis_init(&vy, v->vh, out_h, oy0, ny, v->y0, v->h);
    ms_image_hplan hp;
    s_hplan_init(&hp, &hx, v->pad, kr->layout);
    if (s_vertical_first(v->vw, v->vh, out_w, out_h))
        s_run_vfirst(v, &vy, &hp, kr, sk);
    else
        s_run_hfirst(v, &vy, &hp, kr, sk);
    s_hplan_fini(&hp);
    s_axis_fini(&hx);
    s_axis_fini(&vy);
}

int ms_image_resize(const ms_image *src, int w, int h, ms_image *out) {
    assert(src && out);
    memset(out, 0, sizeof *out);
    if (!src->rgb || src->w <= 0 || src->h <= 0 || src->w > MS_IMAGE_MAX_SIDE ||
        src->h > MS_IMAGE_MAX_SIDE || w <= 0 || h <= 0 || w > MS_IMAGE_MAX_OUT_SIDE ||
        h > MS_IMAGE_MAX_OUT_SIDE)
        return -1;
    s_view v = {src->rgb, src->w, src->h, src->w, src->h, 0, 0, {0, 0, 0}};
    out->rgb = ms_xmalloc((size_t)w * (size_t)h * 3);
    out->w = w;
    out->h = h;
    s_sink sk = {out->rgb, NULL, NULL};
    s_resize_view(&v, w, h, 0, 0, w, h, &sk);
    return 0;
}

/* ---- preprocess --------------------------------------------------------- */

static int s_check_cfg(const ms_preprocess_cfg *cfg, char *err, size_t err_size) {
    if (!cfg) return ms_errf(err, err_size, "image preprocessing: no configuration");
    if (cfg->size <= 0 || cfg->size > MS_IMAGE_MAX_OUT_SIDE)
        return ms_errf(err, err_size, "image preprocessing: size %d out of range [1, %d]",
                       cfg->size, MS_IMAGE_MAX_OUT_SIDE);
    if (cfg->fit != MS_FIT_PAD && cfg->fit != MS_FIT_CROP && cfg->fit != MS_FIT_STRETCH)
        return ms_errf(err, err_size, "image preprocessing: unknown fit mode %d", (int)cfg->fit);
    for (int c = 0; c < 3; c++)
        if (!isfinite(cfg->mean[c]) || !isfinite(cfg->std[c]) || !(cfg->std[c] > 0.0f))
            return ms_errf(err, err_size,
                           "image preprocessing: bad mean/std for channel %d (%g, %g)", c,
                           (double)cfg->mean[c], (double)cfg->std[c]);
    return 0;
}

int ms_image_preprocess_decoded(const ms_image *img, const ms_preprocess_cfg *cfg, float *out,
                                char *err, size_t err_size) {
    assert(img && out);
    if (s_check_cfg(cfg, err, err_size)) return -1;
    if (!img->rgb || img->w <= 0 || img->h <= 0)
        return ms_errf(err, err_size, "image preprocessing: empty image");
    if (img->w > MS_IMAGE_MAX_SIDE || img->h > MS_IMAGE_MAX_SIDE)
        return ms_errf(err, err_size, "image preprocessing: %dx%d image exceeds %d per side",
                       img->w, img->h, MS_IMAGE_MAX_SIDE);
    int size = cfg->size, w = img->w, h = img->h;
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int x = 0; x < 256; x++) {
            float f = (float)((double)x * (1.0 / 255.0)); /* HF rescale, then float32 */
            lut[c][x] = (f - cfg->mean[c]) / cfg->std[c];
        }
    s_view v = {img->rgb, w, h, w, h, 0, 0, {0, 0, 0}};
    int out_w = size, out_h = size, ox0 = 0, oy0 = 0;
    switch (cfg->fit) {
    case MS_FIT_PAD:
        v.vw = v.vh = MS_MAX(w, h);
        v.x0 = (v.vw - w) / 2;
        v.y0 = (v.vh - h) / 2;
        for (int c = 0; c < 3; c++) {
            double m = (double)cfg->mean[c] * 255.0; /* int(m * 255), as LLaVA */
            v.pad[c] = (uint8_t)(m <= 0 ? 0 : m >= 255 ? 255 : (int)m);
        }
        break;
    case MS_FIT_CROP:
        if (w <= h) {
            out_h = (int)((double)((int64_t)size * h) / (double)w);
            oy0 = (out_h - size) / 2;
        } else {
            out_w = (int)((double)((int64_t)size * w) / (double)h);
            ox0 = (out_w - size) / 2;
        }
        break;
    case MS_FIT_STRETCH:
        break;
    }
    s_sink sk = {NULL, out, (const float(*)[256])lut};
    s_resize_view(&v, out_w, out_h, ox0, oy0, size, size, &sk);
    return 0;
}

int ms_image_preprocess(const uint8_t *data, size_t len, const ms_preprocess_cfg *cfg, float *out,
                        char *err, size_t err_size) {
    if (s_check_cfg(cfg, err, err_size)) return -1;
    size_t max_bytes = cfg->max_bytes ? cfg->max_bytes : MS_IMAGE_MAX_BYTES_DEFAULT;
    if (len > max_bytes)
        return ms_errf(err, err_size, "image is %zu bytes, over the %zu-byte limit", len,
                       max_bytes);
    s_target t = {cfg->size, cfg->fit};
    ms_image img;
    if (s_decode(data, len, cfg->max_pixels, cfg->jpeg_full_decode ? NULL : &t, &img, err,
                 err_size))
        return -1;
    int rc = ms_image_preprocess_decoded(&img, cfg, out, err, err_size);
    ms_image_fini(&img);
    return rc;
}
