#!/usr/bin/env python3
"""llamacpp_check.py — does llama.cpp load our generated models, and does it
agree with modserve token for token?

For each text model (generated with modserve-mkmodel unless given with -m):
  1. tokenization: llama.cpp's tokenize(prompt, add_bos, special) against
     `modserve-run --raw --tokenize`, and the chat-templated prompt (the
     model's tokenizer.chat_template rendered by llama-cpp-python's Jinja
     formatter) against `modserve-run --tokenize`;
  2. greedy generation of N tokens from the same prompt ids: llama.cpp
     (llama-cpp-python, n_threads 2, KV cache f32, argmax of the logits) against
     `modserve-run --temp 0 -n N --ids`, raw and chat-templated; prints
     "match" or the first divergence with llama.cpp's top-1/top-2 margin there;
  3. the mmproj: loaded by llama-cpp-python's Llava15ChatHandler (mtmd) and
     run on a small synthetic image, to show llama.cpp accepts the file; then
     its image embeddings (mtmd_encode_chunk) against a float64 numpy reference
     of the ViT + projector under two conventions (class token first or last,
     block_count - 1 or block_count blocks run), showing which one this
     llama.cpp computes (informational: not part of the exit status).

Usage:
  tools/llamacpp_check.py [--bin build/bin] [-n 32] [--presets tiny,demo]
  tools/llamacpp_check.py -m LM.gguf [--mmproj MM.gguf]
Exit status 0 when every tokenization and every greedy sequence matches.
Needs llama-cpp-python 0.3.x (pip) and numpy; Pillow for the image check.
"""
import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile

import numpy as np

PROMPTS = [
    "The server takes a picture",
    "What is in this image? Describe it in one sentence.",
    "def forward(self, x):\n    return x",
    "Hello, world! 1234 + 5678 = ?",
]


def find_bin(args):
    cands = [args.bin] if args.bin else []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cands += [os.path.join(root, d, "bin") for d in sorted(os.listdir(root)) if d.startswith("build")]
    for c in cands:
        if c and os.path.exists(os.path.join(c, "modserve-run")):
            return c
    sys.exit("llamacpp_check: no modserve-run found (build it, or pass --bin DIR)")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def ms_tokenize(bin_dir, model, prompt, raw):
    cmd = [os.path.join(bin_dir, "modserve-run"), "-m", model, "--tokenize", "-q", "-p", prompt]
    if raw:
        cmd.append("--raw")
    r = run(cmd)
    if r.returncode != 0:
        raise RuntimeError(f"modserve-run --tokenize failed: {r.stderr.strip()}")
    return [int(x) for x in r.stdout.split()]


def ms_generate(bin_dir, model, prompt, raw, n, threads):
    cmd = [os.path.join(bin_dir, "modserve-run"), "-m", model, "--temp", "0", "-n", str(n),
           "--ids", "-q", "-t", str(threads), "-s", "1", "-p", prompt]
    if raw:
        cmd.append("--raw")
    r = run(cmd)
    if r.returncode != 0:
        raise RuntimeError(f"modserve-run failed: {r.stderr.strip()}")
    for line in r.stderr.splitlines():
        if line.startswith("ids:"):
            return [int(x) for x in line[4:].split()]
    raise RuntimeError("modserve-run printed no ids line")


def is_eog(llm, tok):
    import llama_cpp
    if hasattr(llama_cpp, "llama_vocab_is_eog") and hasattr(llama_cpp, "llama_model_get_vocab"):
        return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), tok))
    return tok == llm.token_eos()


def lc_generate(llm, ids, n):
    """Greedy: argmax of llama.cpp's logits; returns tokens and the top-1/top-2 margins."""
    llm.reset()
    llm.eval(ids)
    out, margins = [], []
    for _ in range(n):
        lg = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top = np.argpartition(-lg, 2)[:2]
        t1, t2 = (top[0], top[1]) if lg[top[0]] >= lg[top[1]] else (top[1], top[0])
        tok = int(t1)
        out.append(tok)
        margins.append(float(lg[t1] - lg[t2]))
        if is_eog(llm, tok):
            break
        llm.eval([tok])
    return out, margins


def render_chat(llm, user):
    """The chat-templated prompt as llama-cpp-python renders tokenizer.chat_template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    tmpl = llm.metadata.get("tokenizer.chat_template")
    if not tmpl:
        return None
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace") if llm.token_bos() >= 0 else ""
    eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace") if llm.token_eos() >= 0 else ""
    fmt = Jinja2ChatFormatter(template=tmpl, eos_token=eos, bos_token=bos, add_generation_prompt=True)
    return fmt(messages=[{"role": "user", "content": user}]).prompt, bos


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_lm(bin_dir, model, n, threads):
    from llama_cpp import Llama
    print(f"== {model}")
    kw = dict(model_path=model, n_ctx=1024, n_threads=threads, n_batch=512, verbose=False,
              logits_all=True, flash_attn=False)
    try:
        llm = Llama(type_k=0, type_v=0, **kw)  # GGML_TYPE_F32 KV cache
        kv = "f32"
    except TypeError:
        llm = Llama(**kw)
        kv = "default"
    print(f"   llama.cpp loaded it: n_vocab {llm.n_vocab()}, n_embd {llm.n_embd()}, "
          f"KV cache {kv}, {threads} threads")
    ok = True
    for prompt in PROMPTS:
        for raw in (True, False):
            mode = "raw " if raw else "chat"
            if raw:
                text, lc_ids = prompt, llm.tokenize(prompt.encode(), add_bos=True, special=True)
            else:
                rendered = render_chat(llm, prompt)
                if rendered is None:
                    continue
                text, bos = rendered
                has_bos = bos and text.startswith(bos)
                lc_ids = llm.tokenize(text.encode(), add_bos=not has_bos, special=True)
            ms_ids = ms_tokenize(bin_dir, model, prompt, raw)
            tok_ok = ms_ids == lc_ids
            ok &= tok_ok
            gen_lc, margins = lc_generate(llm, lc_ids, n)
            gen_ms = ms_generate(bin_dir, model, prompt, raw, n, threads)
            d = first_diff(gen_lc, gen_ms)
            ok &= d is None
            short = prompt.replace("\n", "\\n")[:36]
            tk = "tokens equal" if tok_ok else f"TOKENS DIFFER (llama.cpp {lc_ids[:12]}... modserve {ms_ids[:12]}...)"
            if d is None:
                res = f"match ({len(gen_ms)} tokens, min llama.cpp margin {min(margins):.3f})"
            else:
                res = (f"DIVERGE at {d}: llama.cpp {gen_lc[d] if d < len(gen_lc) else None} "
                       f"(margin {margins[d] if d < len(margins) else float('nan'):.3f}) vs modserve "
                       f"{gen_ms[d] if d < len(gen_ms) else None}")
            print(f"   [{mode}] {short!r:40} {len(lc_ids):3d} ids, {tk}; greedy {res}")
    return ok


def check_mmproj(lm, mmproj, threads):
    print(f"== {mmproj} (with {os.path.basename(lm)})")
    try:
        from PIL import Image
        from llama_cpp import Llama
        from llama_cpp._utils import suppress_stdout_stderr
        from llama_cpp.llama_chat_format import Llava15ChatHandler
    except ImportError as e:
        print(f"   skipped: {e}")
        return True
    img = Image.new("RGB", (96, 64), (200, 40, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    try:
        with suppress_stdout_stderr(disable=False):  # mtmd logs to stderr regardless
            handler = Llava15ChatHandler(clip_model_path=mmproj, verbose=False)
            llm = Llama(model_path=lm, chat_handler=handler, n_ctx=2048, n_threads=threads,
                        verbose=False)
            r = llm.create_chat_completion(
                messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What is in this image?"}]}],
                max_tokens=8, temperature=0)
    except Exception as e:  # llama.cpp refused the file
        print(f"   llama.cpp REFUSED it: {e}")
        return False
    usage = r.get("usage", {})
    print(f"   llama.cpp (mtmd) loaded it and answered with an image: prompt "
          f"{usage.get('prompt_tokens')} tokens, reply {r['choices'][0]['message']['content']!r}")
    return True


def vit_reference(mm, img, class_first, n_run):
    """Image embeddings of an mmproj in float64 numpy, for an image already at
    the encoder's size: normalise, patch embedding, class token first (HF CLIP,
    modserve) or last (recent llama.cpp, which then drops patch 0 instead of the
    class token), position embeddings, pre-LN, n_run blocks, mlp projector."""
    import gguf
    r = gguf.GGUFReader(mm)
    T = {t.name: t for t in r.tensors}

    def A(name):
        t = T[name]
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        return a.reshape([int(x) for x in reversed(t.shape)])

    def kv(k):
        return r.fields[k].contents()
    S, P, E = kv("clip.vision.image_size"), kv("clip.vision.patch_size"), kv("clip.vision.embedding_length")
    H, eps = kv("clip.vision.attention.head_count"), kv("clip.vision.attention.layer_norm_epsilon")
    mean, std = np.array(kv("clip.vision.image_mean")), np.array(kv("clip.vision.image_std"))

    def ln(x, w, b):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + eps) * w + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))

    def qgelu(x):
        return x / (1 + np.exp(-1.702 * x))
    act = gelu if kv("clip.use_gelu") else qgelu
    x = ((img.astype(np.float64) / 255.0 - mean) / std).transpose(2, 0, 1)  # C H W
    W, g = A("v.patch_embd.weight"), S // P  # W: E 3 p p
    pt = np.stack([np.einsum("ecij,cij->e", W, x[:, py * P:(py + 1) * P, px * P:(px + 1) * P])
                   for py in range(g) for px in range(g)])
    if "v.patch_embd.bias" in T:
        pt += A("v.patch_embd.bias")
    cls = A("v.class_embd")
    h = (np.vstack([cls, pt]) if class_first else np.vstack([pt, cls])) + A("v.position_embd.weight")
    if "v.pre_ln.weight" in T:
        h = ln(h, A("v.pre_ln.weight"), A("v.pre_ln.bias"))
    hd = E // H
    for il in range(n_run):
        b = f"v.blk.{il}."
        y = ln(h, A(b + "ln1.weight"), A(b + "ln1.bias"))
        q, k, v = (y @ A(b + f"attn_{n}.weight").T + A(b + f"attn_{n}.bias") for n in "qkv")
        o = np.zeros_like(q)
        for hh in range(H):
            s = slice(hh * hd, (hh + 1) * hd)
            a = q[:, s] @ k[:, s].T / np.sqrt(hd)
            a = np.exp(a - a.max(1, keepdims=True))
            o[:, s] = (a / a.sum(1, keepdims=True)) @ v[:, s]
        h = h + o @ A(b + "attn_out.weight").T + A(b + "attn_out.bias")
        y = ln(h, A(b + "ln2.weight"), A(b + "ln2.bias"))
        h = h + act(y @ A(b + "ffn_up.weight").T + A(b + "ffn_up.bias")) @ A(b + "ffn_down.weight").T \
            + A(b + "ffn_down.bias")
    if "v.post_ln.weight" in T:
        h = ln(h, A("v.post_ln.weight"), A("v.post_ln.bias"))
    sel = h[1:]  # llama.cpp takes rows 1..n_patches in both layouts
    z = gelu(sel @ A("mm.0.weight").T + A("mm.0.bias"))
    return z @ A("mm.2.weight").T + A("mm.2.bias")


def lc_image_embd(lm, mm, img, threads):
    """llama.cpp's (mtmd) embeddings of one image; img is H x W x 3 uint8."""
    import ctypes
    import llama_cpp
    from llama_cpp import mtmd_cpp as M
    model = llama_cpp.llama_model_load_from_file(lm.encode(), llama_cpp.llama_model_default_params())
    cp = M.mtmd_context_params_default()
    cp.use_gpu, cp.n_threads, cp.print_timings = False, threads, False
    ctx = M.mtmd_init_from_file(mm.encode(), model, cp)
    if not ctx:
        raise RuntimeError("mtmd_init_from_file failed")
    data = (ctypes.c_uint8 * img.size).from_buffer_copy(np.ascontiguousarray(img).tobytes())
    bmp = M.mtmd_bitmap_init(img.shape[1], img.shape[0], data)
    chunks = M.mtmd_input_chunks_init()
    txt = M.mtmd_input_text()
    marker = M.mtmd_default_marker()
    txt.text, txt.text_len, txt.add_special, txt.parse_special = marker, len(marker), False, True
    if M.mtmd_tokenize(ctx, chunks, ctypes.byref(txt), (M.mtmd_bitmap_p_ctypes * 1)(bmp), 1) != 0:
        raise RuntimeError("mtmd_tokenize failed")
    got = None
    for i in range(M.mtmd_input_chunks_size(chunks)):
        ch = M.mtmd_input_chunks_get(chunks, i)
        if M.mtmd_input_chunk_get_type(ch) != 0:  # an image chunk
            if M.mtmd_encode_chunk(ctx, ch) != 0:
                raise RuntimeError("mtmd_encode_chunk failed")
            nt = M.mtmd_input_chunk_get_n_tokens(ch)
            d = llama_cpp.llama_model_n_embd(model)
            got = np.ctypeslib.as_array(M.mtmd_get_output_embd(ctx), shape=(nt * d,)).reshape(nt, d).copy()
    M.mtmd_input_chunks_free(chunks)
    M.mtmd_bitmap_free(bmp)
    M.mtmd_free(ctx)
    llama_cpp.llama_model_free(model)
    return got.astype(np.float64)


def check_vit_embd(lm, mm, threads):
    """Which ViT layout does this llama.cpp compute? NMSE of its embeddings against
    the numpy reference under each convention (informational)."""
    import gguf
    r = gguf.GGUFReader(mm)
    S, nb = r.fields["clip.vision.image_size"].contents(), r.fields["clip.vision.block_count"].contents()
    img = np.random.default_rng(1).integers(0, 256, size=(S, S, 3), dtype=np.uint8)
    from llama_cpp._utils import suppress_stdout_stderr
    with suppress_stdout_stderr(disable=False):
        got = lc_image_embd(lm, mm, img, threads)
    for first in (True, False):
        for n_run in (nb - 1, nb):
            ref = vit_reference(mm, img, first, n_run)
            nmse = ((ref - got) ** 2).sum() / (ref ** 2).sum()
            print(f"   image embeddings vs numpy: class token {'first' if first else 'last '}, "
                  f"{n_run}/{nb} blocks run: NMSE {nmse:.2e}{'   <- llama.cpp' if nmse < 1e-3 else ''}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="folder with modserve-run and modserve-mkmodel")
    ap.add_argument("-m", "--model", help="a text model to check (default: generate the presets)")
    ap.add_argument("--mmproj", help="its mmproj")
    ap.add_argument("--presets", default="tiny,demo", help="presets to generate (default tiny,demo)")
    ap.add_argument("-n", type=int, default=32, help="tokens to generate (default 32)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    bin_dir = find_bin(args)
    pairs = []
    if args.model:
        pairs.append((args.model, args.mmproj))
    else:
        tmp = tempfile.mkdtemp(prefix="ms-llamacpp-check-")
        for p in args.presets.split(","):
            r = run([os.path.join(bin_dir, "modserve-mkmodel"), "--preset", p, "--out", tmp])
            if r.returncode != 0:
                sys.exit(f"modserve-mkmodel --preset {p} failed: {r.stderr}")
            print(r.stdout.strip())
            pairs.append((os.path.join(tmp, f"{p}-lm.gguf"), os.path.join(tmp, f"{p}-mmproj.gguf")))
            if p == "tiny":
                pairs.append((os.path.join(tmp, "tiny-llama-lm.gguf"), None))
    ok = True
    for lm, mm in pairs:
        ok &= check_lm(bin_dir, lm, args.n, args.threads)
        if mm:
            ok &= check_mmproj(lm, mm, args.threads)
            check_vit_embd(lm, mm, args.threads)
    print("ALL MATCH" if ok else "MISMATCHES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
