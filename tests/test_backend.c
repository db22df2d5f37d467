/* test_backend.c — every op of every backend against the cpu-ref backend.
 *
 * The backends under test are listed once (s_make_backends); a CUDA backend
 * plugs in by adding a line there. Data moves through alloc/to_device/to_host
 * and weights through prepare_weight, so the tests hold for device memory.
 * Sizes are deliberately awkward (K = 32, 96, 100, 4128; M = 1, 3, 17, 257;
 * n = 1, 2, 7, 33; head_dim 64 and 80; block tables shuffled; GQA 8:2).
 * Accuracy is NMSE against the reference with the named tolerances below;
 * determinism (a row's result independent of the batch around it and of the
 * thread count) is checked bit for bit.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include "backend.h"
#include "cpu/ops_cpu.h"
#include "cpu/threadpool.h"
#include "ms_common.h"
#include "ms_test.h"
#include "quant.h"

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* NMSE tolerances against cpu-ref (which dequantizes weights with the quant.c
 * reference and sums in double); for matmul the error is normalised by the
 * expected output power (s_mm_err). Measured maxima on the test shapes are
 * noted; the bounds leave about 10-100x headroom. */
#define TOL_MM_FLOAT   1e-10 /* f32/f16/bf16 weights, f32 activations (measured < 4e-12) */
#define TOL_MM_Q8ACT   1e-3  /* q8_0/q4_0/q4_K weights with activations quantized to int8 blocks
                                (measured < 8e-5) */
#define TOL_ROWOP      1e-10 /* rmsnorm, layernorm, add, add_bias (measured < 3e-12) */
#define TOL_ROPE       1e-11 /* (measured < 2e-15) */
#define TOL_ATTN       1e-10 /* (measured < 6e-13) */
#define TOL_ACT        1e-11 /* gelu, gelu_quick, silu_mul (measured < 2e-14) */

#define MAX_BACKENDS 8

/* ---- helpers ------------------------------------------------------------------- */

typedef struct {
    const char *label;
    ms_backend *be;
} s_be;

/* The backends under test (all but the reference), in a fixed order:
 * [0] cpu/1 thread, [1] cpu/2 threads, [2] cpu/3 threads (best kernels for this
 * CPU), then the other kernel sets this CPU can run (AVX2, portable C). */
static int s_make_backends(s_be *out) {
    char err[MS_ERR_SIZE];
    int n = 0;
    static const struct { const char *label; int threads; ms_cpu_isa isa; } list[] = {
        {"cpu-1t", 1, MS_CPU_ISA_AUTO},
        {"cpu-2t", 2, MS_CPU_ISA_AUTO},
        {"cpu-3t", 3, MS_CPU_ISA_AUTO},
        {"cpu-avx2-2t", 2, MS_CPU_ISA_AVX2},
        {"cpu-scalar-2t", 2, MS_CPU_ISA_SCALAR},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(list); i++) {
        ms_backend *be = ms_backend_cpu_new_isa(list[i].threads, list[i].isa, err, sizeof err);
        if (!be && list[i].isa != MS_CPU_ISA_AUTO) continue; /* kernel set this CPU lacks */
        cr_assert(be, "%s: %s", list[i].label, err);
        out[n].label = list[i].label;
        out[n].be = be;
        n++;
    }
    return n;
}

static void s_free_backends(s_be *b, int n) {
    for (int i = 0; i < n; i++) ms_backend_destroy(&b[i].be);
}

static ms_backend *s_ref(void) {
    char err[MS_ERR_SIZE];
    ms_backend *be = ms_backend_new("cpu-ref", 0, err, sizeof err);
    cr_assert(be, "%s", err);
    return be;
}

static uint64_t s_rng_state = 0x9E3779B97F4A7C15ull;
static void s_seed(uint64_t s) { s_rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static uint64_t s_rand(void) {
    s_rng_state ^= s_rng_state >> 12;
    s_rng_state ^= s_rng_state << 25;
    s_rng_state ^= s_rng_state >> 27;
    return s_rng_state * 2685821657736338717ull;
}
static float s_uniform(float lo, float hi) {
    return lo + (hi - lo) * (float)((s_rand() >> 40) / (double)(1ull << 24));
}
static float *s_randv(size_t n, float lo, float hi) {
    float *v = ms_xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = s_uniform(lo, hi);
    return v;
}

/* Backend copies of host data and back. */
static float *s_up(ms_backend *be, const float *h, size_t n) {
    float *d = be->ops->alloc(be, (n ? n : 1) * sizeof(float));
    cr_assert(d);
    if (n) be->ops->to_device(be, d, h, n * sizeof(float));
    return d;
}
static float *s_down(ms_backend *be, const float *d, size_t n) {
    float *h = ms_xmalloc((n ? n : 1) * sizeof(float));
    if (be->ops->synchronize) be->ops->synchronize(be);
    if (n) be->ops->to_host(be, h, d, n * sizeof(float));
    return h;
}

/* A weight of type t with ne = {K, M} from random values (Q4_K: random bytes with sane scales). */
static ms_tensor s_weight(ms_type t, int64_t K, int64_t M) {
    ms_tensor w = {.name = "w", .type = t, .n_dims = 2, .ne = {K, M, 1, 1}};
    const size_t rb = ms_row_bytes(t, K);
    cr_assert(rb > 0);
    w.nbytes = rb * (size_t)M;
    uint8_t *data = ms_xmalloc(w.nbytes);
    if (t == MS_TYPE_Q4_K) {
        for (size_t i = 0; i < w.nbytes; i++) data[i] = (uint8_t)s_rand();
        for (int64_t i = 0; i < M * (K / MS_QK_K); i++) {
            ms_block_q4_K *b = (ms_block_q4_K *)data + i;
            b->d = ms_fp32_to_fp16(s_uniform(0.001f, 0.02f));
            b->dmin = ms_fp32_to_fp16(s_uniform(0.001f, 0.02f));
        }
    } else {
        float *v = s_randv((size_t)K, -1.0f, 1.0f);
        for (int64_t j = 0; j < M; j++) {
            for (int64_t k = 0; k < K; k++) v[k] = s_uniform(-1.0f, 1.0f);
            cr_assert(ms_quantize_row(t, v, data + (size_t)j * rb, K) == rb);
        }
        free(v);
    }
    w.data = data;
    return w;
}

/* The tensor as backend be sees it: prepare_weight on a copy of the descriptor. */
static ms_tensor s_weight_for(ms_backend *be, const ms_tensor *w) {
    ms_tensor c = *w;
    c.dev = NULL;
    if (be->ops->prepare_weight) {
        char err[MS_ERR_SIZE];
        (void)err;
        cr_assert(be->ops->prepare_weight(be, &c) == 0, "%s: prepare_weight failed", be->ops->name);
    }
    return c;
}

static float *s_matmul(ms_backend *be, const ms_tensor *w, const float *x, int n) {
    ms_tensor wb = s_weight_for(be, w);
    const int64_t K = w->ne[0], M = w->ne[1];
    float *dx = s_up(be, x, (size_t)n * K);
    float *dy = be->ops->alloc(be, (size_t)n * M * sizeof(float));
    be->ops->matmul(be, dy, &wb, dx, n);
    float *y = s_down(be, dy, (size_t)n * M);
    be->ops->free(be, dx);
    be->ops->free(be, dy);
    return y;
}

static const ms_type s_types[] = {MS_TYPE_F32, MS_TYPE_F16, MS_TYPE_BF16,
                                  MS_TYPE_Q8_0, MS_TYPE_Q4_0, MS_TYPE_Q4_K};

/* Matmul error: sum((y - y_ref)^2) / sum_ij(|x_i|^2 |w_j|^2 / K). The
 * denominator is the expected power of y for random data, so the measure stays
 * meaningful when a few outputs happen to land near zero (plain NMSE over a
 * 1x1 output is a ratio of two noisy numbers). */
static double s_mm_err(ms_backend *ref, const ms_tensor *w, const float *x, const float *y,
                       const float *yr, int n) {
    const int64_t K = w->ne[0], M = w->ne[1];
    float *row = ms_xmalloc((size_t)K * sizeof(float));
    double wsum = 0, xsum = 0, num = 0;
    for (int64_t j = 0; j < M; j++) {
        int32_t id = (int32_t)j;
        ref->ops->get_rows(ref, row, w, &id, 1);
        for (int64_t k = 0; k < K; k++) wsum += (double)row[k] * row[k];
    }
    for (size_t i = 0; i < (size_t)n * K; i++) xsum += (double)x[i] * x[i];
    for (size_t i = 0; i < (size_t)n * M; i++) num += ((double)y[i] - yr[i]) * ((double)y[i] - yr[i]);
    free(row);
    return num / (wsum * xsum / (double)K);
}

static double s_tol_mm(ms_type t) {
    return (t == MS_TYPE_Q8_0 || t == MS_TYPE_Q4_0 || t == MS_TYPE_Q4_K) ? TOL_MM_Q8ACT : TOL_MM_FLOAT;
}

/* ---- the reference itself, against closed forms ---------------------------------------- */

Test(backend_ref, closed_forms, .timeout = 30) {
    ms_backend *r = s_ref();
    /* matmul with an identity-like f32 weight: y = x */
    float wv[4 * 4] = {0};
    for (int i = 0; i < 4; i++) wv[i * 4 + i] = 1.0f;
    ms_tensor w = {.name = "eye", .type = MS_TYPE_F32, .n_dims = 2, .ne = {4, 4, 1, 1},
                   .nbytes = sizeof wv, .data = wv};
    float x[4] = {1, -2, 3, 0.5f}, y[4];
    r->ops->matmul(r, y, &w, x, 1);
    for (int i = 0; i < 4; i++) cr_assert_float_eq(y[i], x[i], 0);
    /* rmsnorm of a constant row is w */
    float c[8] = {3, 3, 3, 3, 3, 3, 3, 3}, g[8] = {1, 2, 3, 4, 5, 6, 7, 8}, o[8];
    r->ops->rmsnorm(r, o, c, g, 1, 8, 0.0f);
    for (int i = 0; i < 8; i++) cr_assert_float_eq(o[i], g[i], 1e-6);
    /* layernorm of (1, 3) is (-1, 1) */
    float l[2] = {1, 3}, one[2] = {1, 1};
    r->ops->layernorm(r, o, l, one, NULL, 1, 2, 0.0f);
    cr_assert_float_eq(o[0], -1.0f, 1e-6);
    cr_assert_float_eq(o[1], 1.0f, 1e-6);
    /* rope at position 0 is the identity; at pos 1 pair 0 turns by 1 radian */
    float q[4] = {1, 0, 1, 0};
    int32_t p0 = 0, p1 = 1;
    r->ops->rope(r, q, 1, 1, 4, 4, &p0, 10000.0f, false);
    cr_assert_float_eq(q[0], 1.0f, 0);
    r->ops->rope(r, q, 1, 1, 4, 4, &p1, 10000.0f, false);
    cr_assert_float_eq(q[0], cosf(1.0f), 1e-6);
    cr_assert_float_eq(q[1], sinf(1.0f), 1e-6);
    cr_assert_float_eq(q[2], cosf(0.01f), 1e-6); /* theta = 1 * 10000^(-2/4) */
    /* attention with equal scores averages v; with one key returns v */
    float qa[2] = {0, 0}, ka[4] = {1, 2, 3, 4}, va[4] = {1, 10, 3, 20}, oa[2];
    ms_attn_args a = {.out = oa, .q = qa, .k = ka, .v = va, .n_q = 1, .n_kv = 2, .n_head = 1,
                      .n_kv_head = 1, .head_dim = 2, .causal = true, .scale = 1.0f};
    r->ops->attention(r, &a);
    cr_assert_float_eq(oa[0], 2.0f, 1e-6);
    cr_assert_float_eq(oa[1], 15.0f, 1e-6);
    a.n_kv = 1;
    r->ops->attention(r, &a);
    cr_assert_float_eq(oa[1], 10.0f, 1e-6);
    /* activations at known points */
    float e[3] = {0.0f, 1.0f, -1.0f};
    r->ops->gelu(r, e, 3);
    cr_assert_float_eq(e[1], 0.841192f, 1e-5); /* ggml's tanh GELU at 1 */
    cr_assert_float_eq(e[2], -0.158808f, 1e-5);
    float s[1] = {1.0f}, u[1] = {2.0f};
    r->ops->silu_mul(r, s, u, 1);
    cr_assert_float_eq(s[0], 2.0f / (1.0f + expf(-1.0f)), 1e-6);
    ms_backend_destroy(&r);
    cr_assert_null(r);
}

Test(backend, by_name, .timeout = 30) {
    char err[MS_ERR_SIZE] = "";
    cr_assert_null(ms_backend_new("tpu", 1, err, sizeof err));
    cr_assert(strstr(err, "tpu") != NULL, "%s", err);
    ms_backend *b = ms_backend_new("cpu", 0, err, sizeof err);
    cr_assert(b && strcmp(b->ops->name, "cpu") == 0);
    cr_assert(b->n_threads >= 1);
    ms_backend_destroy(&b);
    ms_backend_destroy(&b); /* NULL-safe */
}

Test(backend, memory, .timeout = 30) {
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    for (int b = 0; b < nb; b++) {
        ms_backend *be = bs[b].be;
        float *p = be->ops->alloc(be, 1000 * sizeof(float));
        cr_assert(p);
        cr_assert(((uintptr_t)p & 63) == 0, "%s: alloc not 64-byte aligned", bs[b].label);
        float *h = s_down(be, p, 1000);
        for (int i = 0; i < 1000; i++) cr_assert(h[i] == 0.0f, "%s: alloc not zeroed", bs[b].label);
        for (int i = 0; i < 1000; i++) h[i] = (float)i;
        be->ops->to_device(be, p, h, 1000 * sizeof(float));
        float *q = be->ops->alloc(be, 1000 * sizeof(float));
        be->ops->copy(be, q, p, 1000 * sizeof(float));
        float *h2 = s_down(be, q, 1000);
        cr_assert(memcmp(h, h2, 1000 * sizeof(float)) == 0);
        be->ops->free(be, p);
        be->ops->free(be, q);
        free(h);
        free(h2);
    }
    s_free_backends(bs, nb);
}

/* ---- matmul ------------------------------------------------------------------------ */

Test(backend, matmul_all_types, .timeout = 120) {
    ms_backend *ref = s_ref();
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    static const int64_t Ks[] = {32, 96, 100, 256, 4128, 4352};
    static const int64_t Ms[] = {1, 3, 17, 257};
    static const int ns[] = {1, 2, 7, 33};
    double worst[MS_TYPE_COUNT] = {0};
    s_seed(1);
    for (size_t ti = 0; ti < MS_ARRAY_LEN(s_types); ti++) {
        const ms_type t = s_types[ti];
        for (size_t ki = 0; ki < MS_ARRAY_LEN(Ks); ki++) {
            const int64_t K = Ks[ki];
            if (K % ms_type_block_size(t) != 0) continue;
            if (K == 4352 && t != MS_TYPE_Q4_K) continue; /* 17 super-blocks, for q4_K only */
            for (size_t mi = 0; mi < MS_ARRAY_LEN(Ms); mi++) {
                const int64_t M = Ms[mi];
                ms_tensor w = s_weight(t, K, M);
                for (size_t ni = 0; ni < MS_ARRAY_LEN(ns); ni++) {
                    const int n = ns[ni];
                    if (K > 1000 && M > 100 && n > 7 && t != MS_TYPE_Q4_0) continue; /* time */
                    float *x = s_randv((size_t)n * K, -1.0f, 1.0f);
                    float *yr = s_matmul(ref, &w, x, n);
                    for (int b = 0; b < nb; b++) {
                        float *y = s_matmul(bs[b].be, &w, x, n);
                        const double e = s_mm_err(ref, &w, x, y, yr, n);
                        if (e > worst[t]) worst[t] = e;
                        cr_assert(e <= s_tol_mm(t), "%s matmul %s K=%ld M=%ld n=%d: nmse %.3g > %.3g",
                                  bs[b].label, ms_type_name(t), (long)K, (long)M, n, e, s_tol_mm(t));
                        free(y);
                    }
                    free(x);
                    free(yr);
                }
                free((void *)w.data);
            }
        }
    }
    for (size_t ti = 0; ti < MS_ARRAY_LEN(s_types); ti++)
        cr_log_info("matmul %s: worst nmse %.3g", ms_type_name(s_types[ti]), worst[s_types[ti]]);
    s_free_backends(bs, nb);
    ms_backend_destroy(&ref);
}

/* Row i of a batch equals the same row computed alone, bit for bit, and the
 * result is the same for 1, 2 and 3 threads. */
Test(backend, matmul_deterministic, .timeout = 120) {
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    s_seed(2);
    static const int64_t Ks[] = {96, 4128};
    for (size_t ti = 0; ti < MS_ARRAY_LEN(s_types); ti++) {
        const ms_type t = s_types[ti];
        for (size_t ki = 0; ki < MS_ARRAY_LEN(Ks); ki++) {
            const int64_t K = Ks[ki] % ms_type_block_size(t) ? 4352 : Ks[ki], M = 257;
            ms_tensor w = s_weight(t, K, M);
            const int n = 33;
            float *x = s_randv((size_t)n * K, -1.0f, 1.0f);
            float *y1t = NULL;
            for (int b = 0; b < nb; b++) {
                float *y = s_matmul(bs[b].be, &w, x, n);
                float *y7 = s_matmul(bs[b].be, &w, x + 5 * K, 7); /* rows 5..11 */
                for (int i = 0; i < n; i += 4) {
                    float *yi = s_matmul(bs[b].be, &w, x + (size_t)i * K, 1);
                    cr_assert(memcmp(yi, y + (size_t)i * M, (size_t)M * sizeof(float)) == 0,
                              "%s %s K=%ld: row %d alone differs from row %d of 33", bs[b].label,
                              ms_type_name(t), (long)K, i, i);
                    free(yi);
                }
                cr_assert(memcmp(y7, y + 5 * M, (size_t)7 * M * sizeof(float)) == 0,
                          "%s %s: rows 5..11 in a batch of 7 differ from the batch of 33",
                          bs[b].label, ms_type_name(t));
                if (b == 0) y1t = y;
                else {
                    if (b <= 2) /* cpu-2t, cpu-3t share cpu-1t's kernels */
                        cr_assert(memcmp(y, y1t, (size_t)n * M * sizeof(float)) == 0,
                                  "%s %s: differs from 1 thread", bs[b].label, ms_type_name(t));
                    free(y);
                }
                free(y7);
            }
            free(y1t);
            free(x);
            free((void *)w.data);
        }
    }
    s_free_backends(bs, nb);
}

/* ---- get_rows, set_rows, add, add_bias ------------------------------------------------- */

Test(backend, get_rows_set_rows, .timeout = 60) {
    ms_backend *ref = s_ref();
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    s_seed(3);
    const int32_t ids[5] = {16, 0, 3, 3, 9};
    for (size_t ti = 0; ti < MS_ARRAY_LEN(s_types); ti++) {
        const ms_type t = s_types[ti];
        const int64_t K = t == MS_TYPE_Q4_K ? 512 : 96;
        ms_tensor w = s_weight(t, K, 17);
        float yr[5 * 512];
        ref->ops->get_rows(ref, yr, &w, ids, 5);
        for (int b = 0; b < nb; b++) {
            ms_backend *be = bs[b].be;
            ms_tensor wb = s_weight_for(be, &w);
            float *dy = be->ops->alloc(be, 5 * (size_t)K * sizeof(float));
            be->ops->get_rows(be, dy, &wb, ids, 5);
            float *y = s_down(be, dy, 5 * (size_t)K);
            cr_assert(memcmp(y, yr, 5 * (size_t)K * sizeof(float)) == 0, "%s get_rows %s",
                      bs[b].label, ms_type_name(t));
            free(y);
            be->ops->free(be, dy);
        }
        free((void *)w.data);
    }
    /* set_rows: scatter 3 rows of 37 into a 10-row table */
    float *src = s_randv(3 * 37, -1, 1);
    const int32_t dst_rows[3] = {7, 2, 9};
    float want[10 * 37] = {0};
    for (int i = 0; i < 3; i++) memcpy(want + dst_rows[i] * 37, src + i * 37, 37 * sizeof(float));
    for (int b = 0; b < nb; b++) {
        ms_backend *be = bs[b].be;
        float *dd = be->ops->alloc(be, sizeof want);
        float *ds = s_up(be, src, 3 * 37);
        be->ops->set_rows(be, dd, dst_rows, ds, 3, 37);
        float *got = s_down(be, dd, 10 * 37);
        cr_assert(memcmp(got, want, sizeof want) == 0, "%s set_rows", bs[b].label);
        free(got);
        be->ops->free(be, dd);
        be->ops->free(be, ds);
    }
    free(src);
    s_free_backends(bs, nb);
    ms_backend_destroy(&ref);
}

Test(backend, add_and_bias, .timeout = 60) {
    ms_backend *ref = s_ref();
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    s_seed(4);
    static const size_t lens[] = {1, 7, 8, 1000, 100003};
    for (size_t li = 0; li < MS_ARRAY_LEN(lens); li++) {
        const size_t len = lens[li];
        float *a = s_randv(len, -5, 5), *c = s_randv(len, -5, 5);
        float *yr = ms_xmalloc(len * sizeof(float));
        ref->ops->add(ref, yr, a, c, len);
        for (int b = 0; b < nb; b++) {
            ms_backend *be = bs[b].be;
            float *da = s_up(be, a, len), *dc = s_up(be, c, len);
            be->ops->add(be, da, da, dc, len); /* y aliases a */
            float *y = s_down(be, da, len);
            const double e = ms_test_nmse(y, yr, len);
            cr_assert(e <= TOL_ROWOP, "%s add len=%zu: nmse %.3g", bs[b].label, len, e);
            free(y);
            be->ops->free(be, da);
            be->ops->free(be, dc);
        }
        free(a);
        free(c);
        free(yr);
    }
    static const int dims[] = {1, 13, 64, 4100};
    for (size_t di = 0; di < MS_ARRAY_LEN(dims); di++) {
        const int dim = dims[di], n = 9;
        float *y0 = s_randv((size_t)n * dim, -3, 3), *bias = s_randv((size_t)dim, -1, 1);
        float *yr = ms_xmalloc((size_t)n * dim * sizeof(float));
        memcpy(yr, y0, (size_t)n * dim * sizeof(float));
        ref->ops->add_bias(ref, yr, bias, n, dim);
        for (int b = 0; b < nb; b++) {
            ms_backend *be = bs[b].be;
            float *dy = s_up(be, y0, (size_t)n * dim), *db = s_up(be, bias, (size_t)dim);
            be->ops->add_bias(be, dy, db, n, dim);
            float *y = s_down(be, dy, (size_t)n * dim);
            const double e = ms_test_nmse(y, yr, (size_t)n * dim);
            cr_assert(e <= TOL_ROWOP, "%s add_bias dim=%d: nmse %.3g", bs[b].label, dim, e);
            free(y);
            be->ops->free(be, dy);
            be->ops->free(be, db);
        }
        free(y0);
        free(bias);
        free(yr);
    }
    s_free_backends(bs, nb);
    ms_backend_destroy(&ref);
}

/* ---- norms -------------------------------------------------------------------------- */

Test(backend, norms, .timeout = 60) {
    ms_backend *ref = s_ref();
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    s_seed(5);
    static const int dims[] = {7, 64, 100, 896, 4096};
    static const int ns[] = {1, 2, 33};
    double worst = 0;
    for (size_t di = 0; di < MS_ARRAY_LEN(dims); di++) {
        for (size_t ni = 0; ni < MS_ARRAY_LEN(ns); ni++) {
            const int dim = dims[di], n = ns[ni];
            const size_t len = (size_t)n * dim;
            float *x = s_randv(len, -2, 2), *w = s_randv((size_t)dim, 0.5f, 1.5f),
                  *bias = s_randv((size_t)dim, -1, 1);
            for (size_t i = 0; i < len; i++) x[i] += 0.7f; /* a mean to remove */
            float *rr = ms_xmalloc(len * sizeof(float)), *lr = ms_xmalloc(len * sizeof(float)),
                  *lr0 = ms_xmalloc(len * sizeof(float));
            ref->ops->rmsnorm(ref, rr, x, w, n, dim, 1e-6f);
            ref->ops->layernorm(ref, lr, x, w, bias, n, dim, 1e-5f);
            ref->ops->layernorm(ref, lr0, x, w, NULL, n, dim, 1e-5f);
            for (int b = 0; b < nb; b++) {
                ms_backend *be = bs[b].be;
                float *dx = s_up(be, x, len), *dw = s_up(be, w, (size_t)dim),
                      *dbias = s_up(be, bias, (size_t)dim);
                float *dy = be->ops->alloc(be, len * sizeof(float));
                struct { const char *op; const float *want; } cases[3] = {
                    {"rmsnorm", rr}, {"layernorm", lr}, {"layernorm(no bias)", lr0}};
                for (int c = 0; c < 3; c++) {
                    if (c == 0) be->ops->rmsnorm(be, dy, dx, dw, n, dim, 1e-6f);
                    if (c == 1) be->ops->layernorm(be, dy, dx, dw, dbias, n, dim, 1e-5f);
                    if (c == 2) be->ops->layernorm(be, dy, dx, dw, NULL, n, dim, 1e-5f);
                    float *y = s_down(be, dy, len);
                    const double e = ms_test_nmse(y, cases[c].want, len);
                    if (e > worst) worst = e;
                    cr_assert(e <= TOL_ROWOP, "%s %s dim=%d n=%d: nmse %.3g", bs[b].label,
                              cases[c].op, dim, n, e);
                    free(y);
                }
                /* in place (y aliases x) */
                be->ops->rmsnorm(be, dx, dx, dw, n, dim, 1e-6f);
                float *y = s_down(be, dx, len);
                cr_assert(ms_test_nmse(y, rr, len) <= TOL_ROWOP, "%s rmsnorm in place", bs[b].label);
                free(y);
                be->ops->free(be, dx);
                be->ops->free(be, dw);
                be->ops->free(be, dbias);
                be->ops->free(be, dy);
            }
            free(x);
            free(w);
            free(bias);
            free(rr);
            free(lr);
            free(lr0);
        }
    }
    cr_log_info("norms: worst nmse %.3g", worst);
    s_free_backends(bs, nb);
    ms_backend_destroy(&ref);
}

/* ---- rope --------------------------------------------------------------------------- */

Test(backend, rope, .timeout = 60) {
    ms_backend *ref = s_ref();
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    s_seed(6);
    static const struct { int head_dim, rot_dim; } shapes[] = {{64, 64}, {80, 80}, {80, 32}, {128, 64}};
    double worst = 0;
    for (size_t si = 0; si < MS_ARRAY_LEN(shapes); si++) {
        for (int neox = 0; neox < 2; neox++) {
            const int n = 7, n_head = 3, hd = shapes[si].head_dim, rd = shapes[si].rot_dim;
            const size_t len = (size_t)n * n_head * hd;
            const int32_t pos[7] = {0, 1, 2, 17, 500, 4095, 32000};
            float *x = s_randv(len, -2, 2);
            float *xr = ms_xmalloc(len * sizeof(float));
            memcpy(xr, x, len * sizeof(float));
            ref->ops->rope(ref, xr, n, n_head, hd, rd, pos, neox ? 1000000.0f : 10000.0f, neox);
            for (int b = 0; b < nb; b++) {
                ms_backend *be = bs[b].be;
                float *dx = s_up(be, x, len);
                be->ops->rope(be, dx, n, n_head, hd, rd, pos, neox ? 1000000.0f : 10000.0f, neox);
                float *y = s_down(be, dx, len);
                const double e = ms_test_nmse(y, xr, len);
                if (e > worst) worst = e;
                cr_assert(e <= TOL_ROPE, "%s rope hd=%d rot=%d neox=%d: nmse %.3g", bs[b].label,
                          hd, rd, neox, e);
                /* dims beyond rot_dim untouched */
                for (int i = 0; i < n * n_head; i++)
                    cr_assert(memcmp(y + (size_t)i * hd + rd, x + (size_t)i * hd + rd,
                                     (size_t)(hd - rd) * sizeof(float)) == 0);
                free(y);
                be->ops->free(be, dx);
            }
            free(x);
            free(xr);
        }
    }
    cr_log_info("rope: worst nmse %.3g", worst);
    s_free_backends(bs, nb);
    ms_backend_destroy(&ref);
}

/* ---- attention ---------------------------------------------------------------------- */

typedef struct {
    int n_q, n_kv, n_head, n_kv_head, head_dim, block_size;
    bool causal, paged;
} s_attn_case;

/* Runs attention on be; kv rows are laid out through a shuffled block table when paged. */
static float *s_run_attn(ms_backend *be, const s_attn_case *c, const float *q, const float *k,
                         const float *v, const int32_t *table, int kv_rows) {
    const size_t qlen = (size_t)c->n_q * c->n_head * c->head_dim;
    const size_t kvlen = (size_t)kv_rows * c->n_kv_head * c->head_dim;
    float *dq = s_up(be, q, qlen), *dk = s_up(be, k, kvlen), *dv = s_up(be, v, kvlen);
    float *dout = be->ops->alloc(be, qlen * sizeof(float));
    ms_attn_args a = {.out = dout, .q = dq, .k = dk, .v = dv, .block_table = c->paged ? table : NULL,
                      .block_size = c->block_size, .n_q = c->n_q, .n_kv = c->n_kv,
                      .n_head = c->n_head, .n_kv_head = c->n_kv_head, .head_dim = c->head_dim,
                      .causal = c->causal, .scale = 1.0f / sqrtf((float)c->head_dim)};
    be->ops->attention(be, &a);
    float *out = s_down(be, dout, qlen);
    be->ops->free(be, dq);
    be->ops->free(be, dk);
    be->ops->free(be, dv);
    be->ops->free(be, dout);
    return out;
}

static void s_attn_data(const s_attn_case *c, float **q, float **k, float **v, int32_t **table,
                        int *kv_rows) {
    const int n_blocks = (c->n_kv + c->block_size - 1) / c->block_size;
    *table = ms_xmalloc((size_t)(n_blocks ? n_blocks : 1) * sizeof(int32_t));
    const int pool = n_blocks + 3; /* spare blocks so the table is a real permutation subset */
    int32_t *perm = ms_xmalloc((size_t)pool * sizeof(int32_t));
    for (int i = 0; i < pool; i++) perm[i] = i;
    for (int i = pool - 1; i > 0; i--) {
        int j = (int)(s_rand() % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    memcpy(*table, perm, (size_t)n_blocks * sizeof(int32_t));
    free(perm);
    *kv_rows = c->paged ? pool * c->block_size : c->n_kv;
    *q = s_randv((size_t)c->n_q * c->n_head * c->head_dim, -2, 2);
    *k = s_randv((size_t)*kv_rows * c->n_kv_head * c->head_dim, -2, 2);
    *v = s_randv((size_t)*kv_rows * c->n_kv_head * c->head_dim, -1, 1);
}

static const s_attn_case s_attn_cases[] = {
    {1, 1, 4, 4, 64, 16, true, false},
    {1, 37, 8, 2, 64, 16, true, true},
    {7, 7, 8, 2, 80, 16, true, false},
    {7, 50, 8, 2, 80, 16, true, true},
    {33, 100, 8, 2, 64, 16, true, true},
    {5, 5, 4, 1, 64, 16, false, false},
    {16, 300, 8, 8, 80, 16, true, true},
    {3, 576, 6, 6, 64, 16, false, false}, /* encoder-style, non-causal */
};

Test(backend, attention, .timeout = 60) {
    ms_backend *ref = s_ref();
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    s_seed(7);
    double worst = 0;
    for (size_t ci = 0; ci < MS_ARRAY_LEN(s_attn_cases); ci++) {
        const s_attn_case *c = &s_attn_cases[ci];
        float *q, *k, *v;
        int32_t *table;
        int kv_rows;
        s_attn_data(c, &q, &k, &v, &table, &kv_rows);
        float *want = s_run_attn(ref, c, q, k, v, table, kv_rows);
        const size_t qlen = (size_t)c->n_q * c->n_head * c->head_dim;
        for (int b = 0; b < nb; b++) {
            float *got = s_run_attn(bs[b].be, c, q, k, v, table, kv_rows);
            const double e = ms_test_nmse(got, want, qlen);
            if (e > worst) worst = e;
            cr_assert(e <= TOL_ATTN, "%s attention case %zu: nmse %.3g", bs[b].label, ci, e);
            free(got);
        }
        free(want);
        free(q);
        free(k);
        free(v);
        free(table);
    }
    cr_log_info("attention: worst nmse %.3g", worst);
    s_free_backends(bs, nb);
    ms_backend_destroy(&ref);
}

/* Query i of a causal batch equals that query run alone over its visible keys. */
Test(backend, attention_deterministic, .timeout = 60) {
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    s_seed(8);
    s_attn_case c = {9, 40, 8, 2, 80, 16, true, true};
    float *q, *k, *v;
    int32_t *table;
    int kv_rows;
    s_attn_data(&c, &q, &k, &v, &table, &kv_rows);
    const size_t row = (size_t)c.n_head * c.head_dim;
    float *first = NULL;
    for (int b = 0; b < nb; b++) {
        float *all = s_run_attn(bs[b].be, &c, q, k, v, table, kv_rows);
        for (int i = 0; i < c.n_q; i++) {
            s_attn_case one = c;
            one.n_q = 1;
            one.n_kv = c.n_kv - c.n_q + i + 1;
            float *o = s_run_attn(bs[b].be, &one, q + i * row, k, v, table, kv_rows);
            cr_assert(memcmp(o, all + i * row, row * sizeof(float)) == 0,
                      "%s: query %d alone differs from the batch", bs[b].label, i);
            free(o);
        }
        if (b == 0) first = all;
        else {
            if (b <= 2)
                cr_assert(memcmp(all, first, c.n_q * row * sizeof(float)) == 0,
                          "%s: attention differs from 1 thread", bs[b].label);
            free(all);
        }
    }
    free(first);
    free(q);
    free(k);
    free(v);
    free(table);
    s_free_backends(bs, nb);
}

/* ---- activations -------------------------------------------------------------------- */

Test(backend, activations, .timeout = 60) {
    ms_backend *ref = s_ref();
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    s_seed(9);
    static const size_t lens[] = {1, 5, 8, 13, 1000, 70001};
    double worst = 0;
    for (size_t li = 0; li < MS_ARRAY_LEN(lens); li++) {
        const size_t len = lens[li];
        float *x = s_randv(len, -8, 8), *u = s_randv(len, -2, 2);
        if (len > 100) { /* extremes */
            x[0] = -100.0f, x[1] = 100.0f, x[2] = -88.5f, x[3] = 89.0f, x[4] = 0.0f, x[5] = -1e-8f;
        }
        for (int op = 0; op < 3; op++) {
            float *yr = ms_xmalloc(len * sizeof(float));
            memcpy(yr, x, len * sizeof(float));
            if (op == 0) ref->ops->gelu(ref, yr, len);
            if (op == 1) ref->ops->gelu_quick(ref, yr, len);
            if (op == 2) ref->ops->silu_mul(ref, yr, u, len);
            for (int b = 0; b < nb; b++) {
                ms_backend *be = bs[b].be;
                float *dx = s_up(be, x, len), *du = s_up(be, u, len);
                if (op == 0) be->ops->gelu(be, dx, len);
                if (op == 1) be->ops->gelu_quick(be, dx, len);
                if (op == 2) be->ops->silu_mul(be, dx, du, len);
                float *y = s_down(be, dx, len);
                for (size_t i = 0; i < len; i++) cr_assert(isfinite(y[i]), "%s op %d: y[%zu] = %g", bs[b].label, op, i, y[i]);
                const double e = ms_test_nmse(y, yr, len);
                if (e > worst) worst = e;
                cr_assert(e <= TOL_ACT, "%s activation %d len=%zu: nmse %.3g", bs[b].label, op, len, e);
                free(y);
                be->ops->free(be, dx);
                be->ops->free(be, du);
            }
            free(yr);
        }
        free(x);
        free(u);
    }
    cr_log_info("activations: worst nmse %.3g", worst);
    s_free_backends(bs, nb);
    ms_backend_destroy(&ref);
}

/* Row-wise and elementwise ops give a row the same bits alone as inside a batch
 * (ragged tails and chunk boundaries included), for every thread count. */
Test(backend, rowops_deterministic, .timeout = 60) {
    s_be bs[MAX_BACKENDS];
    int nb = s_make_backends(bs);
    s_seed(10);
    const int dim = 4099, n = 17; /* n*dim crosses parallel thresholds, dim % 8 != 0 */
    const size_t len = (size_t)n * dim;
    float *x = s_randv(len, -4, 4), *u = s_randv(len, -2, 2), *w = s_randv((size_t)dim, 0.5f, 1.5f);
    float *first[6] = {0};
    for (int b = 0; b < nb; b++) {
        ms_backend *be = bs[b].be;
        for (int op = 0; op < 6; op++) {
            float *dx = s_up(be, x, len), *du = s_up(be, u, len), *dw = s_up(be, w, (size_t)dim);
            /* the batch */
            if (op == 0) be->ops->gelu(be, dx, len);
            if (op == 1) be->ops->gelu_quick(be, dx, len);
            if (op == 2) be->ops->silu_mul(be, dx, du, len);
            if (op == 3) be->ops->rmsnorm(be, dx, dx, dw, n, dim, 1e-6f);
            if (op == 4) be->ops->layernorm(be, dx, dx, dw, dw, n, dim, 1e-5f);
            if (op == 5) be->ops->add(be, dx, dx, du, len);
            float *all = s_down(be, dx, len);
            /* one row at a time */
            for (int i = 0; i < n; i += 5) {
                float *r = s_up(be, x + (size_t)i * dim, (size_t)dim);
                float *ru = s_up(be, u + (size_t)i * dim, (size_t)dim);
                if (op == 0) be->ops->gelu(be, r, (size_t)dim);
                if (op == 1) be->ops->gelu_quick(be, r, (size_t)dim);
                if (op == 2) be->ops->silu_mul(be, r, ru, (size_t)dim);
                if (op == 3) be->ops->rmsnorm(be, r, r, dw, 1, dim, 1e-6f);
                if (op == 4) be->ops->layernorm(be, r, r, dw, dw, 1, dim, 1e-5f);
                if (op == 5) be->ops->add(be, r, r, ru, (size_t)dim);
                float *h = s_down(be, r, (size_t)dim);
                cr_assert(memcmp(h, all + (size_t)i * dim, (size_t)dim * sizeof(float)) == 0,
                          "%s op %d: row %d alone differs from the batch", bs[b].label, op, i);
                free(h);
                be->ops->free(be, r);
                be->ops->free(be, ru);
            }
            if (b == 0) first[op] = all;
            else {
                if (b <= 2)
                    cr_assert(memcmp(all, first[op], len * sizeof(float)) == 0,
                              "%s op %d: differs from 1 thread", bs[b].label, op);
                free(all);
            }
            be->ops->free(be, dx);
            be->ops->free(be, du);
            be->ops->free(be, dw);
        }
    }
    for (int op = 0; op < 6; op++) free(first[op]);
    free(x);
    free(u);
    free(w);
    s_free_backends(bs, nb);
}

/* ---- the thread pool ------------------------------------------------------------------- */

typedef struct {
    atomic_int hits[512]; /* times each task ran */
    atomic_int bad_thread;
    int n_threads;
} s_pool_ctx;

static void s_pool_task(void *ctx, int task, int thread) {
    s_pool_ctx *c = ctx;
    atomic_fetch_add(&c->hits[task], 1);
    if (thread < 0 || thread >= c->n_threads) atomic_store(&c->bad_thread, 1);
}

/* Every task runs exactly once on a valid thread id, across many back-to-back
 * jobs of varying size (the hand-off between jobs is where races would live),
 * with pauses long enough for the workers to fall asleep in between. */
Test(threadpool, every_task_once, .timeout = 60) {
    for (int nt = 1; nt <= 4; nt++) {
        ms_threadpool *p = ms_threadpool_new(nt);
        cr_assert(p);
        cr_assert_eq(ms_threadpool_n_threads(p), nt);
        static s_pool_ctx c;
        for (int job = 0; job < 3000; job++) {
            const int n_tasks = (job * 7919) % 300;
            memset(&c, 0, sizeof c);
            c.n_threads = nt;
            ms_threadpool_run(p, n_tasks, s_pool_task, &c);
            for (int t = 0; t < 300; t++)
                cr_assert_eq(atomic_load(&c.hits[t]), t < n_tasks ? 1 : 0, "threads %d job %d task %d", nt, job, t);
            cr_assert_eq(atomic_load(&c.bad_thread), 0);
            if (job % 1000 == 999) usleep(2 * MS_THREADPOOL_SPIN_NS / 1000 + 1000); /* let workers sleep */
        }
        ms_threadpool_destroy(&p);
        cr_assert_null(p);
    }
}
