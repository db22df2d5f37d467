/* imgprobe.h — the format and pixel size of an image file read from its
 * header only (no pixel is decoded), so the gateway can refuse a
 * decompression bomb or a non-image before it reaches the broker.
 *
 * JPEG: the first SOFn segment (markers walked with bounds checks, stopping
 * at SOS); PNG: the IHDR chunk after the signature; WebP: the VP8 frame
 * header, the VP8L header or the VP8X canvas size. Inputs are untrusted:
 * anything truncated or inconsistent is an error, never a crash. The image
 * decoder (kernels/image.h) checks the same header again later; this probe
 * is only the early answer.
 */
#ifndef MS_IMGPROBE_H
#define MS_IMGPROBE_H

#include <stddef.h>
#include <stdint.h>

typedef enum ms_img_format {
    MS_IMG_UNKNOWN = 0,
    MS_IMG_JPEG,
    MS_IMG_PNG,
    MS_IMG_WEBP,
} ms_img_format;

/* "jpeg", "png", "webp", "unknown". */
const char *ms_img_format_name(ms_img_format f);

/* The format sniffed from the first bytes (MS_IMG_UNKNOWN if none matches). */
ms_img_format ms_img_sniff(const uint8_t *data, size_t len);

/* Reads the format and the size in pixels (*w, *h >= 1) of the image file
 * data[0..len). 0, or -1 + err ("not a JPEG, PNG or WebP file", "truncated
 * PNG header", "JPEG without a frame header", "zero image width"). */
int ms_img_probe(const uint8_t *data, size_t len, ms_img_format *fmt, uint32_t *w, uint32_t *h,
                 char *err, size_t err_size);

#endif
