#!/usr/bin/env python3
"""image_reference.py — the PIL reference for kernels/image.c.

  python3 tools/image_reference.py generate        # fixtures + expected outputs
  python3 tools/image_reference.py bench --test-bin build/tests/test_image [--runs 50]

`generate` writes small fixture images (JPEG, PNG incl. palette/alpha/grey/16-bit,
WebP, odd sizes such as 333x517, 1x1, 7x3), what PIL makes of them, and
decompression-bomb headers, into tests/data/images/, plus the manifest that
tests/test_image.c reads, and the seeds of tests/fuzz/fuzz_image.c into
tests/fuzz/corpus/image/. Everything is deterministic; the outputs are committed
so the tests run without Python. `bench` times PIL (+ numpy, as HF does) and
modserve on the same image in the same run (the C side is the image/bench test).

The reference semantics (kernels/image.c implements the same):
  decode      Image.open(f).convert("RGB")
  resize      img.resize((w, h), Image.BICUBIC)
  pad         LLaVA: expand2square(img, tuple(int(m * 255) for m in mean)), then
              the CLIP processor (a square image: resize to size x size)
  crop        HF CLIPImageProcessor: resize the shortest edge to size (the other
              to int(size * long / short)), centre crop (top = (h - size) // 2)
  stretch     img.resize((size, size), Image.BICUBIC)
  normalise   HF: x.astype(float64) * (1/255) -> float32; (x - mean) / std in
              float32; planar CHW
with CLIP's mean (0.48145466, 0.4578275, 0.40821073) and std (0.26862954,
0.26130258, 0.27577711).

Manifest (tests/data/images/manifest.txt): one case per line, fields separated
by single spaces, '#' starts a comment line. Paths are relative to the manifest.
  decode  IMAGE W H EXPECTED.rgb MAXDIFF   decoding gives W x H and raw RGB8 within
                                           MAXDIFF per sample of EXPECTED
  decodeh IMAGE W H FNV1A64                decoding gives exactly the RGB bytes whose
                                           FNV-1a 64-bit hash (hex) is given
  resize  IMAGE W H EXPECTED.rgb           ms_image_resize of the decoded IMAGE equals
                                           PIL's bicubic resize exactly
  pre     IMAGE FIT SIZE EXPECTED.f32      preprocessing (fit pad|crop|stretch, full
                                           JPEG decode) vs the reference: raw
                                           little-endian float32, (3, SIZE, SIZE)
  reject  IMAGE WORD                       decoding fails, the message contains WORD
"""
import argparse
import io
import os
import struct
import subprocess
import sys
import timeit
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "tests", "data", "images")
CORPUS_DIR = os.path.join(HERE, "..", "tests", "fuzz", "corpus", "image")
CORPUS_MAX = 16 * 1024
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOSSY_MAXDIFF = 2  # JPEG / lossy WebP: PIL's bundled libjpeg-turbo 3.x / libwebp 1.6
                   # vs Debian's 2.1 / 1.2 may round an IDCT or upsampling step differently


# ---- the reference ---------------------------------------------------------

def expand2square(img, background_color):
    """LLaVA's llava/mm_utils.py expand2square."""
    width, height = img.size
    if width == height:
        return img
    if width > height:
        result = Image.new(img.mode, (width, width), background_color)
        result.paste(img, (0, (width - height) // 2))
        return result
    result = Image.new(img.mode, (height, height), background_color)
    result.paste(img, ((height - width) // 2, 0))
    return result


def resize_shortest_edge(img, size):
    """HF get_resize_output_image_size(default_to_square=False) + PIL resize."""
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return img.resize((new_w, new_h), Image.BICUBIC)


def center_crop(arr, size):
    """HF image_transforms.center_crop on an (h, w, c) array."""
    h, w = arr.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return arr[top:top + size, left:left + size]


def normalise(arr, mean=CLIP_MEAN, std=CLIP_STD):
    """HF rescale + normalize, then channels first."""
    x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(img, fit, size):
    img = img.convert("RGB")
    if fit == "pad":
        img = expand2square(img, tuple(int(m * 255) for m in CLIP_MEAN))
        arr = center_crop(np.asarray(resize_shortest_edge(img, size)), size)
    elif fit == "crop":
        arr = center_crop(np.asarray(resize_shortest_edge(img, size)), size)
    elif fit == "stretch":
        arr = np.asarray(img.resize((size, size), Image.BICUBIC))
    else:
        raise ValueError(fit)
    return normalise(arr)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# ---- fixture images --------------------------------------------------------

def photo(w, h, seed):
    """A small photo-like RGB image: gradients, soft shapes, texture, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([40 + 180 * x / max(w - 1, 1), 60 + 150 * y / max(h - 1, 1),
                  200 - 120 * (x + y) / max(w + h - 2, 1)], axis=-1)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(1, max(2, min(w, h) // 3)))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=col)
        else:
            d.rectangle((x0 - r, y0 - r // 2, x0 + r, y0 + r // 2), fill=col)
    if min(w, h) > 8:
        img = img.filter(ImageFilter.GaussianBlur(0.8))
    a = np.asarray(img).astype(np.float32)
    a += 8 * np.sin(x / 2.5 + y / 4.0)[..., None] * (y > h / 2)[..., None]
    a += rng.normal(0, 3.0, a.shape)
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def smooth(w, h, seed):
    """Like photo() without noise or texture, so that it compresses well as PNG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([30 + 200 * x / (w - 1), 50 + 170 * y / (h - 1),
                  128 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0)], axis=-1)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(5, 60))
        d.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_header_only(w, h):
    """A valid PNG signature + IHDR claiming w x h, one tiny IDAT, IEND."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
            png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))


def jpeg_with_size(src: bytes, w, h):
    """src with the frame header's width and height replaced."""
    i = src.find(b"\xff\xc0")
    assert i > 0
    b = bytearray(src)
    struct.pack_into(">HH", b, i + 5, h, w)
    return bytes(b)


def webp_vp8_with_size(src: bytes, w, h):
    """A simple lossy WebP (RIFF + 'VP8 ') with the key frame's 14-bit size replaced."""
    assert src[12:16] == b"VP8 ", src[12:16]
    b = bytearray(src)
    struct.pack_into("<HH", b, 20 + 6, w & 0x3FFF, h & 0x3FFF)
    return bytes(b)


class Writer:
    def __init__(self, out):
        self.out = out
        self.lines = []
        os.makedirs(out, exist_ok=True)

    def path(self, name):
        return os.path.join(self.out, name)

    def save(self, name, data: bytes):
        with open(self.path(name), "wb") as f:
            f.write(data)

    def image(self, name, img, **kw):
        buf = io.BytesIO()
        img.save(buf, format=kw.pop("format", None) or name.rsplit(".", 1)[1].upper().replace("JPG", "JPEG"), **kw)
        self.save(name, buf.getvalue())
        return name

    def decoded(self, name):
        with Image.open(self.path(name)) as im:
            return np.asarray(im.convert("RGB"))

    def decode(self, name, maxdiff, expected=None):
        arr = self.decoded(name) if expected is None else expected
        h, w = arr.shape[:2]
        ref = name.rsplit(".", 1)[0] + ".rgb"
        self.save(ref, np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
        self.lines.append(f"decode {name} {w} {h} {ref} {maxdiff}")

    def decode_hash(self, name):
        arr = self.decoded(name)
        h, w = arr.shape[:2]
        self.lines.append(f"decodeh {name} {w} {h} {fnv1a64(arr.tobytes()):016x}")

    def resize(self, name, w, h):
        with Image.open(self.path(name)) as im:
            arr = np.asarray(im.convert("RGB").resize((w, h), Image.BICUBIC))
        ref = f"{name.rsplit('.', 1)[0]}_resize_{w}x{h}.rgb"
        self.save(ref, arr.tobytes())
        self.lines.append(f"resize {name} {w} {h} {ref}")

    def pre(self, name, fit, size):
        with Image.open(self.path(name)) as im:
            x = preprocess(im, fit, size)
        ref = f"{name.rsplit('.', 1)[0]}_{fit}{size}.f32"
        self.save(ref, x.astype("<f4").tobytes())
        self.lines.append(f"pre {name} {fit} {size} {ref}")

    def reject(self, name, data, word):
        self.save(name, data)
        self.lines.append(f"reject {name} {word}")

    def manifest(self):
        with open(self.path("manifest.txt"), "w") as f:
            f.write("# generated by tools/image_reference.py generate; format in its docstring\n")
            f.write("\n".join(self.lines) + "\n")


def generate(out):
    W = Writer(out)
    # JPEG: subsamplings, odd sizes, grey, CMYK, progressive, tiny.
    W.decode(W.image("j_64x48_420.jpg", photo(64, 48, 1), quality=90, subsampling="4:2:0"), LOSSY_MAXDIFF)
    W.decode(W.image("j_37x23_444.jpg", photo(37, 23, 2), quality=92, subsampling="4:4:4"), LOSSY_MAXDIFF)
    W.decode(W.image("j_45x31_422.jpg", photo(45, 31, 3), quality=85, subsampling="4:2:2"), LOSSY_MAXDIFF)
    W.decode(W.image("j_45x33_prog.jpg", photo(45, 33, 4), quality=88, progressive=True), LOSSY_MAXDIFF)
    W.decode(W.image("j_31x17_grey.jpg", photo(31, 17, 5).convert("L"), quality=90), LOSSY_MAXDIFF)
    W.decode(W.image("j_20x14_cmyk.jpg", photo(20, 14, 6).convert("CMYK"), quality=90), LOSSY_MAXDIFF)
    W.decode(W.image("j_7x3.jpg", photo(7, 3, 7), quality=90), LOSSY_MAXDIFF)
    W.decode(W.image("j_1x1.jpg", photo(1, 1, 8), quality=90), LOSSY_MAXDIFF)
    W.image("j_333x517.jpg", photo(333, 517, 9), quality=85)
    W.image("j_517x333.jpg", photo(517, 333, 10), quality=85)

    # PNG: every colour type, bit depths, palette + transparency, interlacing.
    base = photo(40, 30, 11)
    W.decode(W.image("p_40x30_rgb.png", base), 0)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 7 % 256).astype(np.uint8)))
    W.decode(W.image("p_40x30_rgba.png", rgba), 0)
    W.decode(W.image("p_33x21_grey.png", photo(33, 21, 12).convert("L")), 0)
    W.decode(W.image("p_25x19_greyalpha.png", photo(25, 19, 13).convert("LA")), 0)
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=60)
    pal.info["transparency"] = 3
    W.decode(W.image("p_40x30_palette_trns.png", pal, transparency=3), 0)
    W.decode(W.image("p_23x13_palette4.png", photo(23, 13, 14).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), bits=4), 0)
    W.decode(W.image("p_19x13_1bit.png", photo(19, 13, 15).convert("1")), 0)
    W.decode(_interlaced(W, base), 0)
    rgb16 = (np.asarray(photo(21, 15, 16)).astype(np.uint16) * 257 + np.arange(21)[None, :, None]).astype(">u2")
    W.save("p_21x15_rgb16.png", _png_raw(21, 15, 16, 2, rgb16.tobytes()))
    W.decode("p_21x15_rgb16.png", 0)
    rgba16 = np.concatenate([rgb16[:, :17], np.full((15, 17, 1), 40000, ">u2")], axis=2)
    W.save("p_17x15_rgba16.png", _png_raw(17, 15, 16, 6, np.ascontiguousarray(rgba16).tobytes()))
    W.decode("p_17x15_rgba16.png", 0)
    # 16-bit grey: PIL clips "I;16" to 255 on convert("RGB"); we keep the high byte.
    g16 = (np.arange(13 * 9).reshape(9, 13) * 547).astype(">u2")
    W.save("p_13x9_grey16.png", _png_raw(13, 9, 16, 0, g16.tobytes()))
    W.decode("p_13x9_grey16.png", 0, expected=np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, axis=2))
    W.decode(W.image("p_7x3.png", photo(7, 3, 17)), 0)
    W.decode(W.image("p_1x1.png", photo(1, 1, 18)), 0)
    W.decode_hash(W.image("p_333x517.png", smooth(333, 517, 19), optimize=True))

    # WebP: lossy, lossless, with alpha, tiny.
    W.decode(W.image("w_40x30_lossy.webp", base, quality=80), LOSSY_MAXDIFF)
    W.decode(W.image("w_40x30_lossless.webp", base, lossless=True), 0)
    W.decode(W.image("w_40x30_lossy_alpha.webp", rgba, quality=80), LOSSY_MAXDIFF)
    W.decode(W.image("w_40x30_lossless_alpha.webp", rgba, lossless=True, exact=True), 0)
    W.decode(W.image("w_7x3.webp", photo(7, 3, 20), lossless=True), 0)
    W.decode(W.image("w_1x1.webp", photo(1, 1, 21), quality=90), LOSSY_MAXDIFF)

    # Resize: down, up, mixed, to and from tiny.
    for w, h in ((64, 64), (100, 37), (150, 211), (1, 1)):
        W.resize("p_333x517.png", w, h)
    W.resize("p_7x3.png", 50, 20)
    W.resize("p_1x1.png", 5, 3)

    # Preprocessing: both orientations, up- and downscaling, tiny and odd sizes.
    for name in ("j_333x517.jpg", "j_517x333.jpg", "p_333x517.png"):
        for fit in ("pad", "crop"):
            W.pre(name, fit, 64)
    W.pre("j_333x517.jpg", "stretch", 64)
    W.pre("j_517x333.jpg", "pad", 96)
    W.pre("j_517x333.jpg", "crop", 96)
    W.pre("p_40x30_palette_trns.png", "pad", 64)
    W.pre("w_40x30_lossy.webp", "crop", 64)
    W.pre("j_7x3.jpg", "pad", 64)
    W.pre("p_7x3.png", "crop", 64)
    W.pre("p_1x1.png", "pad", 64)
    W.pre("w_1x1.webp", "crop", 32)
    W.pre("p_19x13_1bit.png", "pad", 96)
    W.pre("sample.jpg", "pad", 224)
    # Taller than 2:1: Pillow 13 resizes these vertically first (CROP, STRETCH).
    W.image("p_50x170_tall.png", photo(50, 170, 22))
    W.pre("p_50x170_tall.png", "crop", 32)
    W.pre("p_50x170_tall.png", "stretch", 32)
    W.pre("p_50x170_tall.png", "pad", 32)
    # Extreme aspect ratios: padding dominates (PAD), huge upscale along one axis (CROP).
    for w, h in ((1000, 1), (1, 1000)):
        name = W.image(f"p_{w}x{h}.png", photo(w, h, 23))
        for fit in ("pad", "crop", "stretch"):
            W.pre(name, fit, 32)

    # Rejections: decompression bombs, zero sizes (headers only).
    W.reject("bomb_100000x100000.png", png_header_only(100000, 100000), "limit")
    W.reject("bomb_65535x65535.jpg", jpeg_with_size(open(W.path("j_7x3.jpg"), "rb").read(), 65535, 65535), "limit")
    lossy = open(W.path("w_40x30_lossy.webp"), "rb").read()
    W.reject("bomb_16383x16383.webp", webp_vp8_with_size(lossy, 16383, 16383), "limit")
    W.reject("zero_width.png", png_header_only(0, 10), "PNG")
    W.reject("zero_height.jpg", jpeg_with_size(open(W.path("j_7x3.jpg"), "rb").read(), 7, 0), "JPEG")
    W.reject("cmyk_truncated.jpg", open(W.path("j_20x14_cmyk.jpg"), "rb").read()[:-40], "truncated")
    W.manifest()
    total = sum(os.path.getsize(W.path(f)) for f in os.listdir(out))
    print(f"wrote {len(W.lines)} cases to {out} ({total / 1024:.0f} KiB in the folder)")
    corpus(W)


def corpus(W):
    """Seeds for tests/fuzz/fuzz_image.c: small valid files and broken ones."""
    os.makedirs(CORPUS_DIR, exist_ok=True)
    seeds = ["j_64x48_420.jpg", "j_37x23_444.jpg", "j_45x33_prog.jpg", "j_31x17_grey.jpg",
             "j_20x14_cmyk.jpg", "j_7x3.jpg", "p_40x30_rgb.png", "p_40x30_rgba.png",
             "p_40x30_palette_trns.png", "p_19x13_1bit.png", "p_40x30_interlaced.png",
             "p_21x15_rgb16.png", "p_25x19_greyalpha.png", "w_40x30_lossy.webp",
             "w_40x30_lossless.webp", "w_40x30_lossy_alpha.webp", "w_40x30_lossless_alpha.webp",
             "bomb_100000x100000.png", "bomb_65535x65535.jpg", "bomb_16383x16383.webp",
             "zero_width.png", "cmyk_truncated.jpg"]
    n = 0
    for name in seeds:
        data = open(W.path(name), "rb").read()
        assert len(data) < CORPUS_MAX, name
        open(os.path.join(CORPUS_DIR, name), "wb").write(data)
        n += 1
    broken = {
        "trunc_half.jpg": open(W.path("j_64x48_420.jpg"), "rb").read()[:700],
        "trunc_half.png": open(W.path("p_40x30_rgb.png"), "rb").read()[:1200],
        "trunc_half.webp": open(W.path("w_40x30_lossy.webp"), "rb").read()[:300],
        "garbage.bin": bytes(range(256)) * 4,
        "gif_header.gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    }
    bad_crc = bytearray(open(W.path("p_40x30_rgb.png"), "rb").read())
    bad_crc[40] ^= 0xFF
    broken["bad_crc.png"] = bytes(bad_crc)
    for name, data in broken.items():
        open(os.path.join(CORPUS_DIR, name), "wb").write(data)
        n += 1
    print(f"wrote {n} fuzz seeds to {CORPUS_DIR}")


def _png_raw(w, h, depth, ctype, pixels: bytes):
    """A PNG from raw big-endian samples (PIL cannot write 16-bit RGB)."""
    ch = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    stride = w * ch * depth // 8
    raw = b"".join(b"\x00" + pixels[y * stride:(y + 1) * stride] for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)) +
            png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


def _interlaced(W, img):
    """An Adam7-interlaced RGB PNG of img (PIL writes no interlaced PNGs)."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = a[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)) +
            png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))
    W.save("p_40x30_interlaced.png", data)
    return "p_40x30_interlaced.png"


# ---- benchmark -------------------------------------------------------------

def bench(test_bin, runs, size):
    path = os.path.join(OUT_DIR, "sample.jpg")
    data = open(path, "rb").read()

    def pil_once():
        with Image.open(io.BytesIO(data)) as im:
            return preprocess(im, "pad", size)

    pil_once()
    pil_ms = min(timeit.repeat(pil_once, number=runs, repeat=3)) / runs * 1e3
    env = dict(os.environ, MS_IMAGE_BENCH=f"{size}:{runs}")
    env.setdefault("MS_SOURCE_DIR", os.path.join(HERE, ".."))
    r = subprocess.run([test_bin, "--filter", "image/bench", "--verbose=0"], env=env,
                       capture_output=True, text=True)
    ours = {}
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("image-bench "):
            kv = dict(f.split("=", 1) for f in line.split()[1:])
            ours[kv["mode"]] = float(kv["ms"])
    if not ours:
        sys.exit(f"no timings from {test_bin}:\n{r.stdout}\n{r.stderr}")
    print(f"sample.jpg 1024x768 -> {size} PAD: best of 3 means of {runs} runs after a warm-up, both sides")
    print(f"  PIL + numpy (reference)      {pil_ms:7.2f} ms")
    for mode, ms in ours.items():
        print(f"  modserve {mode:19s} {ms:7.2f} ms   PIL/modserve = {pil_ms / ms:5.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", default=OUT_DIR)
    b = sub.add_parser("bench")
    b.add_argument("--test-bin", required=True, help="build/tests/test_image")
    b.add_argument("--runs", type=int, default=50)
    b.add_argument("--size", type=int, default=336)
    args = ap.parse_args()
    if args.cmd == "generate":
        generate(args.out)
    else:
        bench(args.test_bin, args.runs, args.size)


if __name__ == "__main__":
    main()
