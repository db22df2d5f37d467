/* modserve-bench-kernels — matmul throughput per weight type and backend.
 *
 *   modserve-bench-kernels [--K 4096] [--M 1024] [--n 1,64] [--types f32,f16,bf16,q8_0,q4_0,q4_K]
 *                          [--threads N] [--isa auto|avx512|avx2|scalar] [--min-time 0.5] [--no-ref]
 *                          [--cpu-clock]
 *
 * For each weight type and batch size n it times y(n, M) = x(n, K) · Wᵀ on
 * cpu-ref, cpu with 1 thread and cpu with --threads threads (default: all
 * online CPUs; --isa picks the kernel set, default the best this CPU runs),
 * and prints one table row each: median milliseconds per call,
 * GFLOP/s (2·n·M·K flops), weight GB/s (bytes of W per call / time) and the
 * speed-up over cpu-ref measured in the same run. Each measurement is one
 * warm-up call and then repeated calls until --min-time seconds have passed
 * (at least 3). --cpu-clock times by process CPU time instead of wall time:
 * steadier on a machine others are loading, meaningful for 1-thread rows only.
 * Weights and activations are random; W is K x M in ggml order
 * (ne = {K, M}), so "1024x4096" decode shapes are --K 4096 --M 1024.
 */
#include "backend.h"
#include "cpu/ops_cpu.h"
#include "ms_common.h"
#include "quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BENCH_MAX_REPS 10000
#define BENCH_MAX_NS   16

static uint64_t s_state = 88172645463325252ull;
static float s_uniform(void) {
    s_state ^= s_state << 13;
    s_state ^= s_state >> 7;
    s_state ^= s_state << 17;
    return (float)((s_state >> 40) / (double)(1ull << 23)) - 1.0f;
}

static uint8_t s_byte(void) {
    s_uniform();
    return (uint8_t)(s_state >> 32);
}

static int s_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static bool s_cpu_clock; /* --cpu-clock: time by process CPU time, not wall time */

static double s_clock(void) {
    if (!s_cpu_clock) return ms_now_s();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Median seconds per call. */
static double s_time(ms_backend *be, float *y, const ms_tensor *w, const float *x, int n,
                     double min_time) {
    static double t[BENCH_MAX_REPS];
    be->ops->matmul(be, y, w, x, n); /* warm-up */
    int reps = 0;
    const double start = ms_now_s();
    while (reps < BENCH_MAX_REPS && (reps < 3 || ms_now_s() - start < min_time)) {
        const double t0 = s_clock();
        be->ops->matmul(be, y, w, x, n);
        t[reps++] = s_clock() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], s_cmp_double);
    return t[reps / 2];
}

static ms_type s_type_from_name(const char *s) {
    static const ms_type all[] = {MS_TYPE_F32, MS_TYPE_F16, MS_TYPE_BF16,
                                  MS_TYPE_Q8_0, MS_TYPE_Q4_0, MS_TYPE_Q4_K};
    for (size_t i = 0; i < MS_ARRAY_LEN(all); i++)
        if (strcmp(s, ms_type_name(all[i])) == 0) return all[i];
    return MS_TYPE_COUNT;
}

static void s_usage(void) {
    fprintf(stderr, "usage: modserve-bench-kernels [--K 4096] [--M 1024] [--n 1,64] "
                    "[--types f32,f16,bf16,q8_0,q4_0,q4_K] [--threads N] [--isa auto|avx512|avx2|scalar] "
                    "[--min-time S] [--no-ref] [--cpu-clock]\n");
}

int main(int argc, char **argv) {
    int64_t K = 4096, M = 1024;
    int ns[BENCH_MAX_NS] = {1, 64}, n_ns = 2, threads = 0;
    double min_time = 0.5;
    bool ref_on = true;
    ms_cpu_isa isa_want = MS_CPU_ISA_AUTO;
    char types_arg[256] = "f32,f16,bf16,q8_0,q4_0,q4_K";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--no-ref") == 0) { ref_on = false; continue; }
        if (strcmp(a, "--cpu-clock") == 0) { s_cpu_clock = true; continue; }
        if (!v) { s_usage(); return 2; }
        if (strcmp(a, "--K") == 0) K = atoll(v);
        else if (strcmp(a, "--M") == 0) M = atoll(v);
        else if (strcmp(a, "--threads") == 0) threads = atoi(v);
        else if (strcmp(a, "--min-time") == 0) min_time = atof(v);
        else if (strcmp(a, "--isa") == 0) {
            if (strcmp(v, "auto") == 0) isa_want = MS_CPU_ISA_AUTO;
            else if (strcmp(v, "avx512") == 0) isa_want = MS_CPU_ISA_AVX512;
            else if (strcmp(v, "avx2") == 0) isa_want = MS_CPU_ISA_AVX2;
            else if (strcmp(v, "scalar") == 0) isa_want = MS_CPU_ISA_SCALAR;
            else { s_usage(); return 2; }
        } else if (strcmp(a, "--types") == 0) snprintf(types_arg, sizeof types_arg, "%s", v);
        else if (strcmp(a, "--n") == 0) {
            n_ns = 0;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *tok = strtok(buf, ","); tok && n_ns < BENCH_MAX_NS; tok = strtok(NULL, ","))
                ns[n_ns++] = atoi(tok);
        } else { s_usage(); return 2; }
        i++;
    }
    if (K <= 0 || M <= 0 || K % MS_QK_K != 0) {
        fprintf(stderr, "--K must be a positive multiple of %d\n", MS_QK_K);
        return 2;
    }
    if (threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        threads = nc > 0 ? (int)nc : 1;
    }
    char err[MS_ERR_SIZE];
    ms_backend *ref = ms_backend_new("cpu-ref", 0, err, sizeof err);
    ms_backend *c1 = ms_backend_cpu_new_isa(1, isa_want, err, sizeof err);
    ms_backend *cn = c1 ? ms_backend_cpu_new_isa(threads, isa_want, err, sizeof err) : NULL;
    if (!ref || !c1 || !cn) {
        fprintf(stderr, "backend: %s\n", err);
        return 1;
    }
    const char *isa = ms_backend_cpu_isa_name(cn);
    int max_n = 1;
    for (int i = 0; i < n_ns; i++) max_n = MS_MAX(max_n, ns[i]);
    float *x = ms_xmalloc((size_t)max_n * K * sizeof(float));
    for (size_t i = 0; i < (size_t)max_n * K; i++) x[i] = s_uniform();
    float *y = ms_xmalloc((size_t)max_n * M * sizeof(float));
    float *row = ms_xmalloc((size_t)K * sizeof(float));

    printf("matmul y(n,%ld) = x(n,%ld) * W^T   kernels: %s   threads: 1 and %d\n", (long)M, (long)K,
           isa, threads);
    printf("%-6s %4s %-9s %10s %9s %9s %9s\n", "type", "n", "backend", "ms/call", "GFLOP/s",
           "W GB/s", "x ref");
    char tbuf[256];
    snprintf(tbuf, sizeof tbuf, "%s", types_arg);
    for (char *tok = strtok(tbuf, ","); tok; tok = strtok(NULL, ",")) {
        const ms_type t = s_type_from_name(tok);
        if (t == MS_TYPE_COUNT) {
            fprintf(stderr, "unknown type '%s'\n", tok);
            return 2;
        }
        const size_t rb = ms_row_bytes(t, K);
        uint8_t *wd = ms_xmalloc(rb * (size_t)M);
        for (int64_t j = 0; j < M; j++) {
            if (t == MS_TYPE_Q4_K) {
                for (size_t b = 0; b < rb; b++) wd[(size_t)j * rb + b] = s_byte();
                for (int64_t b = 0; b < K / MS_QK_K; b++) {
                    ms_block_q4_K *blk = (ms_block_q4_K *)(wd + (size_t)j * rb) + b;
                    blk->d = ms_fp32_to_fp16(0.01f);
                    blk->dmin = ms_fp32_to_fp16(0.005f);
                }
            } else {
                for (int64_t k = 0; k < K; k++) row[k] = s_uniform();
                ms_quantize_row(t, row, wd + (size_t)j * rb, K);
            }
        }
        ms_tensor w = {.name = "w", .type = t, .n_dims = 2, .ne = {K, M, 1, 1},
                       .nbytes = rb * (size_t)M, .data = wd};
        for (int ni = 0; ni < n_ns; ni++) {
            const int n = ns[ni];
            const double flops = 2.0 * n * (double)M * (double)K;
            double t_ref = 0;
            struct { const char *label; ms_backend *be; } list[3] = {
                {"cpu-ref", ref}, {"cpu-1t", c1}, {"cpu-all", cn}};
            for (int b = ref_on ? 0 : 1; b < 3; b++) {
                const double s = s_time(list[b].be, y, &w, x, n, b == 0 ? MS_MIN(min_time, 0.2) : min_time);
                if (b == 0) t_ref = s;
                char ratio[32] = "-";
                if (t_ref > 0) snprintf(ratio, sizeof ratio, "%.1f", t_ref / s);
                char label[32];
                if (b == 2) snprintf(label, sizeof label, "cpu-%dt", threads);
                else snprintf(label, sizeof label, "%s", list[b].label);
                printf("%-6s %4d %-9s %10.3f %9.2f %9.2f %9s\n", ms_type_name(t), n, label, s * 1e3,
                       flops / s * 1e-9, (double)w.nbytes / s * 1e-9, ratio);
                fflush(stdout);
            }
        }
        free(wd);
    }
    free(x);
    free(y);
    free(row);
    ms_backend_destroy(&ref);
    ms_backend_destroy(&c1);
    ms_backend_destroy(&cn);
    return 0;
}
