/* imgprobe.c — image format and size from the header (imgprobe.h). */
#include "imgprobe.h"

#include <stdbool.h>
#include <string.h>

#include "ms_common.h"

const char *ms_img_format_name(ms_img_format f) {
    switch (f) {
    case MS_IMG_JPEG:
        return "jpeg";
    case MS_IMG_PNG:
        return "png";
    case MS_IMG_WEBP:
        return "webp";
    default:
        return "unknown";
    }
}

static const uint8_t s_png_sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};

ms_img_format ms_img_sniff(const uint8_t *d, size_t len) {
    if (len >= 3 && d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff) return MS_IMG_JPEG;
    if (len >= 8 && memcmp(d, s_png_sig, 8) == 0) return MS_IMG_PNG;
    if (len >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0) return MS_IMG_WEBP;
    return MS_IMG_UNKNOWN;
}

static uint32_t s_be16(const uint8_t *p) {
    return (uint32_t)p[0] << 8 | p[1];
}
static uint32_t s_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint32_t s_le16(const uint8_t *p) {
    return (uint32_t)p[1] << 8 | p[0];
}
static uint32_t s_le24(const uint8_t *p) {
    return (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}
static uint32_t s_le32(const uint8_t *p) {
    return (uint32_t)p[3] << 24 | s_le24(p);
}

static int s_png(const uint8_t *d, size_t len, uint32_t *w, uint32_t *h, char *err,
                 size_t err_size) {
    /* signature (8) + IHDR length (4) + "IHDR" (4) + width (4) + height (4) */
    if (len < 24) return ms_errf(err, err_size, "truncated PNG header (%zu bytes)", len);
    if (memcmp(d + 12, "IHDR", 4) != 0 || s_be32(d + 8) != 13)
        return ms_errf(err, err_size, "PNG does not start with an IHDR chunk");
    *w = s_be32(d + 16);
    *h = s_be32(d + 20);
    return 0;
}

static bool s_jpeg_sof(uint8_t m) {
    /* SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) */
    return m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc;
}

static int s_jpeg(const uint8_t *d, size_t len, uint32_t *w, uint32_t *h, char *err,
                  size_t err_size) {
    size_t i = 2; /* after SOI */
    for (;;) {
        while (i < len && d[i] != 0xff)
            i++; /* tolerate garbage between segments, as libjpeg does (with a warning) */
        while (i < len && d[i] == 0xff)
            i++; /* fill bytes */
        if (i >= len) return ms_errf(err, err_size, "JPEG without a frame header");
        uint8_t marker = d[i++];
        if (marker == 0xd8 || marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7))
            continue; /* no length */
        if (marker == 0xd9 || marker == 0xda)
            return ms_errf(err, err_size, "JPEG without a frame header");
        if (i + 2 > len) return ms_errf(err, err_size, "truncated JPEG segment");
        uint32_t seg = s_be16(d + i);
        if (seg < 2) return ms_errf(err, err_size, "bad JPEG segment length %u", seg);
        if (s_jpeg_sof(marker)) {
            /* length (2), precision (1), height (2), width (2) */
            if (seg < 7 || i + 7 > len)
                return ms_errf(err, err_size, "truncated JPEG frame header");
            *h = s_be16(d + i + 3);
            *w = s_be16(d + i + 5);
            return 0;
        }
        i += seg;
    }
}

static int s_webp(const uint8_t *d, size_t len, uint32_t *w, uint32_t *h, char *err,
                  size_t err_size) {
    /* "RIFF" size "WEBP", then the first chunk: fourcc (4) + size (4) + data */
    if (len < 20) return ms_errf(err, err_size, "truncated WebP header (%zu bytes)", len);
    const uint8_t *c = d + 20;
    size_t avail = len - 20;
    uint32_t chunk = s_le32(d + 16);
    if (memcmp(d + 12, "VP8 ", 4) == 0) {
        /* frame tag (3), start code 9d 01 2a, width (14 bits), height (14 bits) */
        if (avail < 10 || chunk < 10) return ms_errf(err, err_size, "truncated WebP VP8 header");
        if (c[3] != 0x9d || c[4] != 0x01 || c[5] != 0x2a)
            return ms_errf(err, err_size, "WebP VP8 frame without its start code");
        *w = s_le16(c + 6) & 0x3fff;
        *h = s_le16(c + 8) & 0x3fff;
        return 0;
    }
    if (memcmp(d + 12, "VP8L", 4) == 0) {
        /* signature 0x2f, then 14 bits width - 1, 14 bits height - 1 */
        if (avail < 5 || chunk < 5) return ms_errf(err, err_size, "truncated WebP VP8L header");
        if (c[0] != 0x2f) return ms_errf(err, err_size, "WebP VP8L without its signature");
        uint32_t bits = s_le32(c + 1);
        *w = (bits & 0x3fff) + 1;
        *h = ((bits >> 14) & 0x3fff) + 1;
        return 0;
    }
    if (memcmp(d + 12, "VP8X", 4) == 0) {
        /* flags (1), reserved (3), canvas width - 1 (24 bits), height - 1 (24 bits) */
        if (avail < 10 || chunk < 10) return ms_errf(err, err_size, "truncated WebP VP8X header");
        *w = s_le24(c + 4) + 1;
        *h = s_le24(c + 7) + 1;
        return 0;
    }
    return ms_errf(err, err_size, "WebP with an unknown first chunk");
}

int ms_img_probe(const uint8_t *data, size_t len, ms_img_format *fmt, uint32_t *w, uint32_t *h,
                 char *err, size_t err_size) {
    *fmt = ms_img_sniff(data, len);
    *w = *h = 0;
    int rc;
    switch (*fmt) {
    case MS_IMG_JPEG:
        rc = s_jpeg(data, len, w, h, err, err_size);
        break;
    case MS_IMG_PNG:
        rc = s_png(data, len, w, h, err, err_size);
        break;
    case MS_IMG_WEBP:
        rc = s_webp(data, len, w, h, err, err_size);
        break;
    default:
        return ms_errf(err, err_size, "not a JPEG, PNG or WebP file");
    }
    if (rc != 0) return -1;
    if (*w == 0 || *h == 0)
        return ms_errf(err, err_size, "%s image of size %ux%u", ms_img_format_name(*fmt), *w, *h);
    return 0;
}
