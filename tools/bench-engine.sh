#!/usr/bin/env bash
# bench-engine.sh — the engine benchmark: modserve and llama.cpp on the same
# GGUF files and the same JPEG, in one run, one table (docs/benchmarks.md).
#
#   tools/bench-engine.sh [options]
#     --build DIR          modserve build directory (default: build; built if needed)
#     --models DIR         where the bench model pair lives / is generated (default: models)
#     --image FILE         the JPEG (default: tests/data/images/sample.jpg, 1024x768)
#     -t LIST              thread counts (default: 1,all)
#     --prompt-tokens N    prefill length, and the prefix of every decode sequence (256)
#     --decode-tokens N    decode steps timed (32)
#     --batch LIST         decode batch sizes (1,8)
#     --reps N             timed repetitions, median reported (3)
#     --kv f16|f32         llama.cpp's KV cache type (default f16, llama.cpp's default;
#                          modserve's cache is f32)
#     --out DIR            JSON results and the table (default: out/bench)
#     --no-llamacpp        measure modserve only
#     --install-llamacpp   pip-install llama-cpp-python 0.3.36 built from source with
#                          native CPU flags first (slow: it compiles llama.cpp)
#
# Columns: modserve, llama.cpp, and ratio = how many times faster modserve is
# (llama.cpp time / modserve time, or modserve tokens/s / llama.cpp tokens/s):
# above 1 modserve is faster.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=build MODELS=models IMAGE=tests/data/images/sample.jpg THREADS=1,all
PROMPT=256 DECODE=32 BATCH=1,8 REPS=3 KV=f16 OUT=out/bench LLAMACPP=1 INSTALL=0
LLAMACPP_VERSION=0.3.36
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift ;;
    --models) MODELS=$2; shift ;;
    --image) IMAGE=$2; shift ;;
    -t|--threads) THREADS=$2; shift ;;
    --prompt-tokens) PROMPT=$2; shift ;;
    --decode-tokens) DECODE=$2; shift ;;
    --batch) BATCH=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --kv) KV=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-llamacpp) LLAMACPP=0 ;;
    --install-llamacpp) INSTALL=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "bench-engine: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

BIN=$BUILD/bin
if [ ! -x "$BIN/modserve-bench-engine" ] || [ ! -x "$BIN/modserve-mkmodel" ]; then
  echo "bench-engine: building modserve-bench-engine and modserve-mkmodel in $BUILD" >&2
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$BUILD" -j"$(nproc)" --target modserve-bench-engine modserve-mkmodel
fi

LM=$MODELS/bench-lm.gguf MM=$MODELS/bench-mmproj.gguf
if [ ! -f "$LM" ] || [ ! -f "$MM" ]; then
  echo "bench-engine: generating the bench model pair into $MODELS" >&2
  "$BIN/modserve-mkmodel" --preset bench --out "$MODELS"
fi
[ -f "$IMAGE" ] || { echo "bench-engine: no image $IMAGE" >&2; exit 1; }

if [ "$INSTALL" = 1 ]; then
  CMAKE_ARGS="-DGGML_NATIVE=ON" FORCE_CMAKE=1 \
    python3 -m pip install --no-binary llama-cpp-python "llama-cpp-python==$LLAMACPP_VERSION"
fi
if [ "$LLAMACPP" = 1 ] && ! python3 -c 'import llama_cpp, llama_cpp.mtmd_cpp' 2>/dev/null; then
  echo "bench-engine: llama-cpp-python is not installed: llama.cpp not measured" \
       "(tools/bench-engine.sh --install-llamacpp installs it)" >&2
  LLAMACPP=0
fi

mkdir -p "$OUT"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
COMMON=(-t "$THREADS" --prompt-tokens "$PROMPT" --decode-tokens "$DECODE" --batch "$BATCH"
        --reps "$REPS")

echo "bench-engine: modserve on $LM + $MM, image $IMAGE" >&2
"$BIN/modserve-bench-engine" -m "$LM" --mmproj "$MM" --image "$IMAGE" "${COMMON[@]}" \
  --json "$OUT/modserve.json" >"$OUT/modserve.txt"
rm -f "$OUT/llamacpp.json"
if [ "$LLAMACPP" = 1 ]; then
  echo "bench-engine: llama.cpp on the same files" >&2
  python3 tools/bench_llamacpp.py -m "$LM" --mmproj "$MM" --image "$IMAGE" "${COMMON[@]}" \
    --kv "$KV" --json "$OUT/llamacpp.json" ||
    { echo "bench-engine: the llama.cpp run failed: llama.cpp not measured" >&2;
      rm -f "$OUT/llamacpp.json"; }
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$OUT" "$LOAD_BEFORE" "$LOAD_AFTER" <<'EOF' | tee "$OUT/table.txt"
import json, os, sys
out, load_before, load_after = sys.argv[1:4]
ms = json.load(open(os.path.join(out, "modserve.json")))
lp = os.path.join(out, "llamacpp.json")
lc = json.load(open(lp)) if os.path.exists(lp) else None

cpu = "?"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
print(f"CPU: {cpu}, {os.cpu_count()} threads online; load average before {load_before}, "
      f"after {load_after}")
print(f"model: {ms['model']} + {ms.get('mmproj')}, image {ms.get('image')}; "
      f"{ms['prompt_tokens']} prompt tokens, {ms['decode_tokens']} decode steps, "
      f"median of {ms['reps']}")
if lc:
    print(f"llama.cpp: {lc['version']}, KV {lc['kv_type']}, flash attention {lc['flash_attn']}; "
          f"modserve KV {ms['kv_type']}")
    print(f"llama.cpp build: {lc['system_info']}")
else:
    print("llama.cpp: not available (not measured)")
print()

def fmt(v, unit):
    if v is None:
        return "-"
    return f"{v:.2f}" if unit == "ms" else f"{v:.1f}"

rows = []  # (label, unit, modserve value, llama.cpp value, lower_is_better)
lruns = {r["threads"]: r for r in lc["runs"]} if lc else {}
for r in ms["runs"]:
    t = r["threads"]
    l = lruns.get(t, {})
    if "preprocess_ms" in r:
        rows.append((t, "preprocess ms/image", "ms", r["preprocess_ms"], l.get("preprocess_ms"), True))
        rows.append((t, "encode ms/image (ViT)", "ms", r["encode_ms"], None, True))
        rows.append((t, "project ms/image", "ms", r["project_ms"], None, True))
        rows.append((t, "encode+project ms/image", "ms", r["encode_ms"] + r["project_ms"],
                     l.get("encode_ms"), True))
    rows.append((t, "prefill tok/s", "tok/s", r["prefill_tok_s"], l.get("prefill_tok_s"), False))
    for k in sorted(k for k in r if k.startswith("decode_tok_s_b")):
        b = k[len("decode_tok_s_b"):]
        rows.append((t, f"decode tok/s batch {b}", "tok/s", r[k], l.get(k), False))

print(f"{'threads':>7}  {'metric':<26} {'modserve':>10} {'llama.cpp':>10} {'ratio':>7}")
for t, label, unit, a, b, lower in rows:
    ratio = "-"
    if a and b:
        ratio = f"{(b / a) if lower else (a / b):.2f}"
    print(f"{t:>7}  {label:<26} {fmt(a, unit):>10} {fmt(b, unit):>10} {ratio:>7}")
print()
print("ratio = modserve speed / llama.cpp speed (>1: modserve is faster). llama.cpp's encode")
print("runs the ViT and the projector as one graph, so it is compared with encode+project.")
EOF
echo "bench-engine: results in $OUT/ (modserve.json, llamacpp.json, table.txt)" >&2
