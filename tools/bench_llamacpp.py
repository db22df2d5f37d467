#!/usr/bin/env python3
"""bench_llamacpp.py — the modserve engine benchmark's measurements, taken with
llama.cpp (through llama-cpp-python's low-level ctypes API) on the same GGUF
files, so that tools/bench-engine.sh can print the two side by side.

    python3 tools/bench_llamacpp.py -m models/bench-lm.gguf \
        --mmproj models/bench-mmproj.gguf --image tests/data/images/sample.jpg \
        [-t 1,all] [--prompt-tokens 256] [--decode-tokens 32] [--batch 1,8] \
        [--reps 3] [--kv f16|f32] [--json OUT]

What is measured, per thread count (each a median of --reps runs after one
warm-up run), with the definitions modserve-bench-engine uses:
  preprocess_ms   mtmd_helper_bitmap_init_from_buf (JPEG decode, from bytes
                  already in memory) + mtmd_tokenize (which resizes, pads and
                  normalises the image into the encoder's input). mtmd runs
                  this part single-threaded whatever n_threads is.
  encode_ms       mtmd_encode_chunk on the image chunk: the ViT *and* the mlp
                  projector (llama.cpp runs them as one graph), so it compares
                  with modserve's encode_ms + project_ms.
  prefill_tok_s   one llama_decode of a --prompt-tokens batch of synthetic
                  token ids into an empty sequence (logits for the last only).
  decode_tok_s_bN N sequences, each first prefilled with --prompt-tokens
                  tokens (not timed), then windows of --decode-tokens steps of
                  one llama_decode holding one token per sequence (distinct
                  seq_ids, logits for every token), back to back: one warm-up
                  window and --reps timed ones, so the sequences grow from P
                  to P + (reps+1)*D; tokens/s = N*steps / median window time.
                  The fed tokens are synthetic ids, not sampled: sampling is
                  not part of the measurement in either engine.
The KV cache type is llama.cpp's default f16 unless --kv f32 is given (the
JSON records it); flash attention is left at llama.cpp's default (auto).
Threads: the context's n_threads and n_threads_batch, and the mtmd context's
n_threads, are all set to the thread count; "all" is os.cpu_count().

Needs llama-cpp-python (tested with 0.3.36, built from source with native
CPU flags: `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-binary :all:
llama-cpp-python==0.3.36`). Exits 2 with a message when it is missing.
"""
import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time

try:
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd
except ImportError as e:  # the shell wrapper reports "llama.cpp not available"
    print(f"bench_llamacpp: llama-cpp-python is not importable: {e}", file=sys.stderr)
    sys.exit(2)

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
TOKEN_STRIDE = 7919  # synthetic ids: 1 + (i * TOKEN_STRIDE) % (n_vocab - 1), as in the C tool


def parse_threads(spec):
    out = []
    for part in spec.split(","):
        part = part.strip()
        n = os.cpu_count() if part == "all" else int(part)
        if n < 1:
            raise ValueError(f"bad thread count '{part}'")
        if n not in out:
            out.append(n)
    return out


def synthetic_token(i, n_vocab):
    return 1 + (i * TOKEN_STRIDE) % (n_vocab - 1)


def median_of(fn, reps):
    """One warm-up call, then the median of reps timed calls (seconds)."""
    fn()
    return statistics.median(fn() for _ in range(reps))


class Batch:
    """A llama_batch with room for n tokens, each in at most n_seq_max sequences."""

    def __init__(self, n, n_seq_max):
        self.b = llama_cpp.llama_batch_init(n, 0, n_seq_max)

    def fill(self, tokens, positions, seqs, logits):
        b = self.b
        b.n_tokens = len(tokens)
        for i, (t, p, s, lg) in enumerate(zip(tokens, positions, seqs, logits)):
            b.token[i] = t
            b.pos[i] = p
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = s
            b.logits[i] = 1 if lg else 0

    def free(self):
        llama_cpp.llama_batch_free(self.b)


class LmBench:
    def __init__(self, model, n_vocab, threads, args, n_seq):
        self.args = args
        self.n_vocab = n_vocab
        self.n_seq = n_seq
        p = llama_cpp.llama_context_default_params()
        per_seq = args.prompt_tokens + (args.reps + 1) * args.decode_tokens + 16
        p.n_ctx = per_seq * n_seq
        p.n_batch = max(args.prompt_tokens, n_seq)
        p.n_ubatch = p.n_batch
        p.n_seq_max = n_seq
        p.n_threads = threads
        p.n_threads_batch = threads
        p.type_k = p.type_v = GGML_TYPE_F32 if args.kv == "f32" else GGML_TYPE_F16
        p.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(model, p)
        if not self.ctx:
            raise RuntimeError("llama_init_from_model failed")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = Batch(max(args.prompt_tokens, n_seq), n_seq)

    def close(self):
        self.batch.free()
        llama_cpp.llama_free(self.ctx)

    def decode(self):
        rc = llama_cpp.llama_decode(self.ctx, self.batch.b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        llama_cpp.llama_synchronize(self.ctx)

    def prefill(self, seq):
        n = self.args.prompt_tokens
        toks = [synthetic_token(i + 31 * seq, self.n_vocab) for i in range(n)]
        self.batch.fill(toks, range(n), [seq] * n, [i == n - 1 for i in range(n)])
        self.decode()

    def time_prefill(self):
        llama_cpp.llama_memory_clear(self.mem, True)
        t0 = time.perf_counter()
        self.prefill(0)
        return time.perf_counter() - t0

    def decode_windows(self):
        """Prefills n_seq sequences (untimed), then runs 1 + reps windows of
        decode_tokens batch steps back to back; returns the median time of the
        reps windows after the first (the warm-up)."""
        llama_cpp.llama_memory_clear(self.mem, True)
        for s in range(self.n_seq):
            self.prefill(s)
        P, D = self.args.prompt_tokens, self.args.decode_tokens
        times = []
        for w in range(self.args.reps + 1):
            t0 = time.perf_counter()
            for step in range(D):
                pos = P + w * D + step
                toks = [synthetic_token(pos + 31 * s, self.n_vocab) for s in range(self.n_seq)]
                self.batch.fill(toks, [pos] * self.n_seq, range(self.n_seq), [True] * self.n_seq)
                self.decode()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])


class VisionBench:
    def __init__(self, model, args, threads):
        p = mtmd.mtmd_context_params_default()
        p.use_gpu = False
        p.print_timings = False
        p.warmup = False
        p.n_threads = threads
        self.ctx = mtmd.mtmd_init_from_file(args.mmproj.encode(), model, p)
        if not self.ctx:
            raise RuntimeError(f"mtmd_init_from_file failed for {args.mmproj}")
        with open(args.image, "rb") as f:
            data = f.read()
        self.buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        self.marker = mtmd.mtmd_default_marker()
        self.chunks = None
        self.n_image_tokens = 0

    def close(self):
        self._free_chunks()
        mtmd.mtmd_free(self.ctx)

    def _free_chunks(self):
        if self.chunks:
            mtmd.mtmd_input_chunks_free(self.chunks)
            self.chunks = None

    def time_preprocess(self):
        """Bitmap from JPEG bytes + tokenize (resize/pad/normalise). Keeps the chunks."""
        self._free_chunks()
        t0 = time.perf_counter()
        bmp = mtmd.mtmd_helper_bitmap_init_from_buf(self.ctx, self.buf, len(self.buf), False)
        if not bmp:
            raise RuntimeError("mtmd_helper_bitmap_init_from_buf failed")
        chunks = mtmd.mtmd_input_chunks_init()
        text = mtmd.mtmd_input_text()
        text.text = self.marker
        text.text_len = len(self.marker)
        text.add_special = False
        text.parse_special = True
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bmp)
        rc = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, 1)
        dt = time.perf_counter() - t0
        mtmd.mtmd_bitmap_free(bmp)
        if rc != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise RuntimeError(f"mtmd_tokenize returned {rc}")
        self.chunks = chunks
        return dt

    def image_chunk(self):
        for i in range(mtmd.mtmd_input_chunks_size(self.chunks)):
            c = mtmd.mtmd_input_chunks_get(self.chunks, i)
            if mtmd.mtmd_input_chunk_get_type(c) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                self.n_image_tokens = mtmd.mtmd_input_chunk_get_n_tokens(c)
                return c
        raise RuntimeError("mtmd_tokenize produced no image chunk")

    def time_encode(self):
        if not self.chunks:
            self.time_preprocess()
        chunk = self.image_chunk()
        t0 = time.perf_counter()
        rc = mtmd.mtmd_encode_chunk(self.ctx, chunk)
        dt = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"mtmd_encode_chunk returned {rc}")
        return dt


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def quiet_logs():
    """Silences llama.cpp's and mtmd's logging (it would drown the table)."""
    cb_type = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    cb = cb_type(lambda level, text, user: None)
    llama_cpp.llama_log_set(cb, ctypes.c_void_p())
    if hasattr(mtmd, "mtmd_helper_log_set"):
        try:
            mtmd.mtmd_helper_log_set(cb, ctypes.c_void_p())
        except (ctypes.ArgumentError, TypeError):
            pass
    return cb  # keep a reference: the C side holds the pointer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="text model GGUF")
    ap.add_argument("--mmproj", help="vision tower GGUF (omit to skip the image stages)")
    ap.add_argument("--image", help="JPEG to preprocess and encode")
    ap.add_argument("-t", "--threads", default="1,all", help="thread counts, e.g. 1,all")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--batch", default="1,8", help="decode batch sizes (sequences)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kv", choices=["f16", "f32"], default="f16", help="KV cache type")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("-v", "--verbose", action="store_true", help="keep llama.cpp's logs")
    args = ap.parse_args()
    if args.prompt_tokens < 1 or args.decode_tokens < 1 or args.reps < 1:
        ap.error("--prompt-tokens, --decode-tokens and --reps must be positive")
    threads = parse_threads(args.threads)
    batches = sorted({int(b) for b in args.batch.split(",")})

    keep = None if args.verbose else quiet_logs()
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(args.model.encode(), mp)
    if not model:
        print(f"bench_llamacpp: cannot load {args.model}", file=sys.stderr)
        return 1
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))

    runs = []
    for t in threads:
        r = {"threads": t}
        if args.mmproj and args.image:
            vb = VisionBench(model, args, t)
            r["preprocess_ms"] = 1e3 * median_of(vb.time_preprocess, args.reps)
            r["encode_ms"] = 1e3 * median_of(vb.time_encode, args.reps)
            r["image_tokens"] = vb.n_image_tokens
            vb.close()
        lb = LmBench(model, n_vocab, t, args, 1)
        r["prefill_tok_s"] = args.prompt_tokens / median_of(lb.time_prefill, args.reps)
        lb.close()
        for nb in batches:
            lb = LmBench(model, n_vocab, t, args, nb)
            dt = lb.decode_windows()
            r[f"decode_tok_s_b{nb}"] = nb * args.decode_tokens / dt
            lb.close()
        runs.append(r)
        print(f"llama.cpp threads={t}: " +
              ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in r.items() if k != "threads"), file=sys.stderr)

    llama_cpp.llama_model_free(model)
    out = {
        "engine": "llama.cpp",
        "version": f"llama-cpp-python {llama_cpp.__version__}",
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "cpu": cpu_name(),
        "model": args.model, "mmproj": args.mmproj, "image": args.image,
        "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens,
        "reps": args.reps, "kv_type": args.kv, "flash_attn": "auto (llama.cpp default)",
        "encode_includes_projector": True,
        "runs": runs,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    else:
        json.dump(out, sys.stdout, indent=2)
        print()
    del keep
    return 0


if __name__ == "__main__":
    sys.exit(main())
