/* image.h — image decoding and CLIP-style preprocessing (the CPU stage that
 * users of other servers complain about most: it must be fast).
 *
 * Decoding uses libjpeg-turbo, libpng and libwebp. Inputs are untrusted:
 * truncated, corrupt, unknown-format and oversized images (the pixel limit
 * guards against decompression bombs, checked from the header before any
 * pixel is decoded) are rejected with a message, never a crash.
 */
#ifndef MS_IMAGE_H
#define MS_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MS_IMAGE_MAX_PIXELS_DEFAULT (64u * 1024u * 1024u) /* 64 Mpixel */
#define MS_IMAGE_MAX_BYTES_DEFAULT  (64u * 1024u * 1024u) /* 64 MiB encoded */
#define MS_IMAGE_MAX_SIDE           65535 /* widest/tallest image accepted, pixels */
#define MS_IMAGE_MAX_OUT_SIDE       8192  /* largest preprocess cfg->size / resize target */
/* JPEG DCT scaling keeps the decoded image at least this many times the size
 * its content has in the preprocessed output, in each direction. */
#define MS_IMAGE_DCT_MARGIN 2

/* Decoded image: RGB8, interleaved, rows packed (stride = 3 * w). */
typedef struct ms_image {
    int w;        /* width, pixels */
    int h;        /* height, pixels */
    uint8_t *rgb; /* 3 * w * h bytes, owned */
} ms_image;

typedef enum ms_image_fit {
    MS_FIT_PAD = 0,  /* pad to square with the mean colour, then resize (LLaVA) */
    MS_FIT_CROP = 1, /* resize shortest side to size, centre crop (CLIP) */
    MS_FIT_STRETCH = 2, /* resize to size×size ignoring aspect */
} ms_image_fit;

typedef struct ms_preprocess_cfg {
    int size;              /* output side, pixels (the ViT's image_size) */
    ms_image_fit fit;      /* how to make the image square */
    float mean[3];         /* per-channel mean, in [0,1] units */
    float std[3];          /* per-channel std, in [0,1] units */
    uint64_t max_pixels;   /* decompression-bomb guard; 0 = default */
    size_t max_bytes;      /* encoded size limit; 0 = default */
    bool jpeg_full_decode; /* false (default): decode JPEGs with libjpeg-turbo's DCT
                              scaling (1/2, 1/4, 1/8) when the result stays at least
                              MS_IMAGE_DCT_MARGIN x the target (faster; within the
                              tolerance in tests/test_image.c of the PIL reference);
                              true: always decode at full size (bit-exact PIL path) */
} ms_preprocess_cfg;

/* Decodes JPEG, PNG or WebP (sniffed from the bytes) to RGB8. Alpha is
 * dropped; greyscale and palette are expanded. The pixels equal PIL's
 * Image.open(f).convert("RGB") (tests/test_image.c), CMYK JPEGs included,
 * except 16-bit greyscale PNGs, which PIL clips to 255 and we cut to their
 * high byte. Truncated files (a JPEG without its end-of-image marker, a PNG
 * without IEND), animated WebP and other formats are rejected. max_pixels
 * 0 = MS_IMAGE_MAX_PIXELS_DEFAULT; checked from the header before decoding.
 * Returns 0, or -1 with a message in err (naming the format and the problem). */
int ms_image_decode(const uint8_t *data, size_t len, uint64_t max_pixels, ms_image *out,
                    char *err, size_t err_size);
void ms_image_fini(ms_image *img);

/* Bicubic resize of RGB8 with PIL's filter (a = -0.5, support scaled when
 * downsampling, i.e. antialiased), rounding to uint8 like PIL: bit-identical
 * to Pillow 13's Image.resize(size, Image.BICUBIC), pass order included.
 * out is initialised (free with ms_image_fini). Returns 0, or -1 for sizes
 * outside [1, MS_IMAGE_MAX_OUT_SIDE] or an empty/oversized src. */
int ms_image_resize(const ms_image *src, int w, int h, ms_image *out);

/* The whole preprocessing stage: decode, make square per cfg->fit, resize to
 * cfg->size, normalise to ((x/255) - mean) / std. out holds
 * 3 * size * size floats, planar CHW (channel-major), as the patch embedding
 * expects. PAD pads with int(mean * 255) per channel, as LLaVA's
 * expand2square (122, 116, 104 for CLIP); CROP is HF CLIPImageProcessor's
 * shortest-edge resize + centre crop. With cfg->jpeg_full_decode the result
 * equals the PIL/HF reference (tools/image_reference.py) to float rounding.
 * Returns 0 or -1 + err. */
int ms_image_preprocess(const uint8_t *data, size_t len, const ms_preprocess_cfg *cfg, float *out,
                        char *err, size_t err_size);

/* The same stage from an already decoded image (make square, resize,
 * normalise). out as above. Returns 0 or -1 + err (bad cfg). */
int ms_image_preprocess_decoded(const ms_image *img, const ms_preprocess_cfg *cfg, float *out,
                                char *err, size_t err_size);

#endif
