#!/usr/bin/env python3
"""bench_ggml_matmul.py — llama.cpp's (ggml's) CPU matmul speed on the shapes
modserve-bench-kernels uses, so the two tables can be compared on one machine.

    python3 tools/bench_ggml_matmul.py [--K 4096] [--M 1024] [--n 1,64]
        [--types f32,f16,bf16,q8_0,q4_0,q4_K] [--threads 1,2] [--min-time 0.5] [--cpu-clock]

It drives the libggml shipped inside llama-cpp-python (the copy
tools/bench_llamacpp.py uses) through ctypes: y = ggml_mul_mat(W, x) with W of
ne {K, M} and x of ne {K, n}, computed by the CPU backend
(ggml_backend_graph_compute). Two weight placements are timed:
  plain   W in an ordinary CPU buffer (ggml's vec_dot kernels);
  repack  W in the CPU_REPACK buffer type, as llama.cpp places weights by
          default where an interleaved layout exists for the type and CPU
          (q4_0, q4_K on AVX2/AVX512); skipped for the other types.
Printed per row: median ms per call, GFLOP/s (2·n·M·K / time). Exits 2 when
llama-cpp-python is not installed.
"""
import argparse
import ctypes
import os
import statistics
import sys
import time

TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "q4_K": 12, "bf16": 30}
# Types the CPU_REPACK buffer accepts (it aborts on others).
CPU_CLOCK = False  # --cpu-clock
REPACKED = ("q4_0", "q4_K")  # no x86 q8_0 layout here: its tensor_set crashes


class InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]


def load():
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed", file=sys.stderr)
        sys.exit(2)
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    base = ctypes.CDLL(os.path.join(libdir, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(os.path.join(libdir, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    P, S, I64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64
    sig = {
        (base, "ggml_init"): (P, [InitParams]),
        (base, "ggml_free"): (None, [P]),
        (base, "ggml_new_tensor_2d"): (P, [P, ctypes.c_int, I64, I64]),
        (base, "ggml_mul_mat"): (P, [P, P, P]),
        (base, "ggml_new_graph"): (P, [P]),
        (base, "ggml_build_forward_expand"): (None, [P, P]),
        (base, "ggml_nbytes"): (S, [P]),
        (base, "ggml_quantize_chunk"): (S, [ctypes.c_int, P, P, I64, I64, I64, P]),
        (base, "ggml_backend_alloc_ctx_tensors_from_buft"): (P, [P, P]),
        (base, "ggml_backend_buffer_free"): (None, [P]),
        (base, "ggml_backend_cpu_buffer_type"): (P, []),
        (base, "ggml_backend_tensor_set"): (None, [P, P, S, S]),
        (base, "ggml_backend_graph_compute"): (ctypes.c_int, [P, P]),
        (base, "ggml_backend_free"): (None, [P]),
        (cpu, "ggml_cpu_init"): (None, []),
        (cpu, "ggml_backend_cpu_init"): (P, []),
        (cpu, "ggml_backend_cpu_set_n_threads"): (None, [P, ctypes.c_int]),
        (cpu, "_Z35ggml_backend_cpu_repack_buffer_typev"): (P, []),
    }
    fns = {}
    for (lib, name), (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
        fns[name] = f
    fns["repack_buft"] = fns.pop("_Z35ggml_backend_cpu_repack_buffer_typev")
    fns["ggml_cpu_init"]()
    return fns


def bench(g, backend, type_id, K, M, n, repack, min_time):
    import numpy as np
    rng = np.random.default_rng(0)
    params = InitParams(1 << 20, None, True)
    ctx_w = g["ggml_init"](params)
    ctx_c = g["ggml_init"](params)
    w = g["ggml_new_tensor_2d"](ctx_w, type_id, K, M)
    x = g["ggml_new_tensor_2d"](ctx_c, 0, K, n)
    y = g["ggml_mul_mat"](ctx_c, w, x)
    graph = g["ggml_new_graph"](ctx_c)
    g["ggml_build_forward_expand"](graph, y)
    buft = g["repack_buft"]() if repack else g["ggml_backend_cpu_buffer_type"]()
    buf_w = g["ggml_backend_alloc_ctx_tensors_from_buft"](ctx_w, buft)
    buf_c = g["ggml_backend_alloc_ctx_tensors_from_buft"](ctx_c, g["ggml_backend_cpu_buffer_type"]())
    wf = rng.uniform(-1, 1, size=(M, K)).astype(np.float32)
    wq = np.zeros(g["ggml_nbytes"](w), dtype=np.uint8)
    g["ggml_quantize_chunk"](type_id, wf.ctypes.data, wq.ctypes.data, 0, M, K, None)
    g["ggml_backend_tensor_set"](w, wq.ctypes.data, 0, wq.nbytes)
    xf = rng.uniform(-1, 1, size=(n, K)).astype(np.float32)
    g["ggml_backend_tensor_set"](x, xf.ctypes.data, 0, xf.nbytes)
    g["ggml_backend_graph_compute"](backend, graph)  # warm-up
    times, start = [], time.perf_counter()
    clock = time.process_time if CPU_CLOCK else time.perf_counter
    while len(times) < 3 or time.perf_counter() - start < min_time:
        t0 = clock()
        g["ggml_backend_graph_compute"](backend, graph)
        times.append(clock() - t0)
    g["ggml_backend_buffer_free"](buf_w)
    g["ggml_backend_buffer_free"](buf_c)
    g["ggml_free"](ctx_w)
    g["ggml_free"](ctx_c)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--K", type=int, default=4096)
    ap.add_argument("--M", type=int, default=1024)
    ap.add_argument("--n", default="1,64")
    ap.add_argument("--types", default="f32,f16,bf16,q8_0,q4_0,q4_K")
    ap.add_argument("--threads", default="1,%d" % os.cpu_count())
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--cpu-clock", action="store_true",
                    help="time by process CPU time (steadier on a loaded machine; 1 thread only)")
    a = ap.parse_args()
    global CPU_CLOCK
    CPU_CLOCK = a.cpu_clock
    g = load()
    backend = g["ggml_backend_cpu_init"]()
    print("ggml mul_mat y(n,%d) = x(n,%d) * W^T" % (a.M, a.K))
    print("%-6s %4s %-12s %10s %9s" % ("type", "n", "ggml", "ms/call", "GFLOP/s"))
    for tname in a.types.split(","):
        for n in [int(v) for v in a.n.split(",")]:
            for th in [int(v) for v in a.threads.split(",")]:
                g["ggml_backend_cpu_set_n_threads"](backend, th)
                for repack in (False, True):
                    label = "%s-%dt" % ("repack" if repack else "plain", th)
                    if repack and tname not in REPACKED:
                        continue
                    s = bench(g, backend, TYPES[tname], a.K, a.M, n, repack, a.min_time)
                    print("%-6s %4d %-12s %10.3f %9.2f" % (tname, n, label, s * 1e3,
                                                          2.0 * n * a.M * a.K / s * 1e-9))
                    sys.stdout.flush()
    g["ggml_backend_free"](backend)


if __name__ == "__main__":
    main()
