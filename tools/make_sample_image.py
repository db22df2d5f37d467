#!/usr/bin/env python3
"""make_sample_image.py — writes tests/data/images/sample.jpg, the bundled demo
and benchmark image: a 1024x768 synthetic but photo-like JPEG (sky gradient,
hills, soft-edged shapes, texture and sensor-like noise), deterministic for a
given seed, kept under 300 KiB.

Usage: python3 tools/make_sample_image.py [--out PATH] [--seed N]
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

W, H = 1024, 768
MAX_BYTES = 300 * 1024


def make(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    # Sky: vertical gradient with a warm glow towards one corner.
    t = y / H
    sky = np.stack([70 + 120 * t, 120 + 90 * t, 200 + 40 * t], axis=-1)
    glow = np.exp(-(((x - 820) / 260) ** 2 + ((y - 170) / 200) ** 2))[..., None]
    sky = sky * (1 - 0.6 * glow) + np.array([255, 210, 150]) * 0.6 * glow
    img = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))

    d = ImageDraw.Draw(img)
    # Rolling hills: two layers of sinusoidal horizons.
    for base, amp, col in ((470, 60, (70, 110, 60)), (560, 40, (45, 85, 40))):
        xs = np.arange(W + 1)
        ys = base + amp * np.sin(xs / 97.0 + base) + 0.4 * amp * np.sin(xs / 31.0)
        d.polygon([(0, H)] + [(int(a), int(b)) for a, b in zip(xs, ys)] + [(W, H)], fill=col)
    # Sun, a house-like block, a lake, a few "trees".
    d.ellipse((760, 110, 880, 230), fill=(255, 236, 180))
    d.rectangle((180, 430, 330, 560), fill=(160, 70, 50))
    d.polygon([(165, 430), (255, 360), (345, 430)], fill=(90, 40, 35))
    d.rectangle((235, 490, 275, 560), fill=(60, 35, 25))
    d.ellipse((480, 600, 900, 720), fill=(60, 110, 170))
    for i in range(9):
        cx = 40 + i * 110 + int(rng.integers(-20, 20))
        cy = 600 + int(rng.integers(-30, 30))
        d.rectangle((cx - 6, cy, cx + 6, cy + 60), fill=(80, 55, 30))
        d.ellipse((cx - 40, cy - 80, cx + 40, cy + 20), fill=(30 + 10 * (i % 3), 90, 35))
    img = img.filter(ImageFilter.GaussianBlur(1.2))

    a = np.asarray(img).astype(np.float32)
    # Texture on the ground (grass-like stripes) and a ripple on the lake.
    ground = (y > 480)[..., None]
    a += ground * (6 * np.sin(x / 3.0 + 2 * np.sin(y / 7.0)))[..., None]
    a += rng.normal(0, 6.5, a.shape)  # sensor noise
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "images", "sample.jpg"))
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    img = make(args.seed)
    for q in (90, 85, 80, 75, 70):
        img.save(args.out, quality=q, subsampling="4:2:0")
        if os.path.getsize(args.out) <= MAX_BYTES:
            break
    print(f"wrote {args.out}: {W}x{H}, quality {q}, {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
