#!/usr/bin/env python3
"""producer_example.py — a minimal modserve producer in Python (docs/protocol.md).

Submits a text-only request and an image request to a modserve broker and
prints their streams as they arrive. Needs `pip install pyzmq msgpack`.

    python3 tools/producer_example.py [--broker tcp://127.0.0.1:5555] [--image FILE]

Without --image it makes a small PNG itself (Pillow if installed, else a
built-in 2x2 PNG).
"""
import argparse
import sys
import time

import msgpack
import zmq

PROTOCOL_VERSION = 1

# A valid 2x2 RGB PNG, used when neither --image nor Pillow is available.
TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a73"
    "0000001249444154789c63f8cfc0c000c20cff8100001fee05fb0bd9688b000000"
    "0049454e44ae426082")


def make_image():
    try:
        import io
        from PIL import Image
        img = Image.new("RGB", (64, 64))
        for y in range(64):
            for x in range(64):
                img.putpixel((x, y), (4 * x, 4 * y, 128))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
    except ImportError:
        return TINY_PNG


def send(sock, msg_type, fields, frames=()):
    """One message: frame 0 the msgpack header, then the payload frames."""
    header = {"v": PROTOCOL_VERSION, "t": msg_type}
    header.update(fields)
    sock.send_multipart([msgpack.packb(header, use_bin_type=True), *frames])


def recv(sock):
    frames = sock.recv_multipart()
    return msgpack.unpackb(frames[0], raw=False), frames[1:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default="tcp://127.0.0.1:5555")
    ap.add_argument("--image", help="an image file (JPEG, PNG or WebP)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for events")
    args = ap.parse_args()

    image = open(args.image, "rb").read() if args.image else make_image()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)  # the broker's front socket is a ROUTER
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.broker)

    # A text-only request with chat messages, and an image request with a raw prompt.
    send(sock, "submit", {
        "id": "text-1",
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
    })
    send(sock, "submit", {
        "id": "image-1",
        "messages": [{"role": "user", "content": "<image>What is in this picture?"}],
        "n_images": 1,  # one payload frame follows the header
        "max_tokens": args.max_tokens,
        "temperature": 0.7, "top_p": 0.9, "seed": 42,
        "ttft_ms": 2000,
    }, frames=[image])

    texts = {"text-1": [], "image-1": []}
    pending = set(texts)
    t0 = time.monotonic()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while pending:
        if not poller.poll(timeout=args.timeout * 1000):
            print(f"no event for {args.timeout:.0f} s; still waiting for {sorted(pending)}",
                  file=sys.stderr)
            return 1
        msg, _ = recv(sock)
        t, rid = msg["t"], msg.get("id", "")
        at = f"{1000 * (time.monotonic() - t0):8.1f} ms"
        if t == "accepted":
            print(f"{at} [{rid}] accepted as broker request {msg['rid']}")
        elif t == "token":
            texts.setdefault(rid, []).append(msg["text"])
            print(f"{at} [{rid}] token {msg['index']}: {msg['ids']} {msg['text']!r}")
        elif t == "done":
            pending.discard(rid)
            print(f"{at} [{rid}] done: finish={msg['finish']} prompt={msg['prompt_tokens']} "
                  f"(image {msg['image_tokens']}) completion={msg['completion_tokens']} "
                  f"ttft={msg['ttft_ms']:.1f} ms e2e={msg['e2e_ms']:.1f} ms")
        elif t == "error":
            pending.discard(rid)
            print(f"{at} [{rid}] error {msg['code']}: {msg['message']}")
        else:
            print(f"{at} unexpected message {t}: {msg}")
    for rid, parts in texts.items():
        print(f"\n[{rid}] {''.join(parts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
