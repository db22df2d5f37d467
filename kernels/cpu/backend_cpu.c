/* backend_cpu.c — the fast CPU backend ("cpu"): a persistent thread pool
 * (threadpool.h) around the kernels of ops_cpu.h: AVX-512 + VNNI matmuls where
 * the CPU has them, else AVX2/FMA, else portable C (ms_backend_cpu_new_isa
 * picks a set explicitly; ms_backend_cpu_isa_name names the one in use).
 *
 * How work is split (docs/kernels.md has the details and the reasons):
 *   matmul      quantized weights: the activation rows are first quantized
 *               into scratch owned by the backend (Q8_0/Q4_0: int8 blocks of
 *               32; Q4_K: int8 with one scale per 256 and sums per 32).
 *               Then tasks = (row chunk) x (column chunk) of y; a task walks
 *               its columns in cache blocks (about MS_CPU_MM_WBLOCK_BYTES of
 *               weights) and, inside each, all its rows in register tiles, so
 *               a weight is read from memory once per task.
 *   attention   tasks over (query, head) pairs.
 *   row ops     tasks over rows; elementwise ops over chunks of
 *               MS_CPU_EW_CHUNK floats; anything below MS_CPU_PAR_MIN_FLOATS
 *               (or MS_CPU_MM_PAR_MIN_MACS for matmul) runs on the caller.
 * None of this changes a result: see the determinism contract in ops_cpu.h.
 *
 * A backend instance is used by one thread at a time (it owns scratch).
 */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include "backend.h"
#include "ms_common.h"
#include "ops_cpu.h"
#include "quant.h"
#include "threadpool.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MS_CPU_ALIGN             64        /* bytes; alignment of every alloc() */
#define MS_CPU_MM_WBLOCK_BYTES   (256 << 10) /* weights walked per cache block in a matmul task */
#define MS_CPU_MM_PAR_MIN_MACS   (1 << 16) /* smaller matmuls run on the calling thread */
#define MS_CPU_MM_TASKS_PER_THR  4         /* matmul tasks per thread, for load balance */
#define MS_CPU_PAR_MIN_FLOATS    (1 << 15) /* smaller elementwise/row ops run on the caller */
#define MS_CPU_EW_CHUNK          (1 << 14) /* floats per elementwise task (multiple of 8) */
#define MS_CPU_ATTN_TASKS_PER_THR 8        /* attention tasks per thread */

typedef struct s_scratch {
    float *p;   /* per-thread scratch */
    size_t cap; /* floats */
} s_scratch;

typedef struct s_cpu {
    const ms_cpu_kernels *k; /* inner kernels */
    ms_threadpool *pool;     /* n_threads threads, the caller included */
    int8_t *xq;              /* quantized activations: rows of K int8 */
    size_t xq_cap;           /* bytes */
    float *xd;               /* their block scales (rows of K/32 or K/256), then Q8_K sums */
    size_t xd_cap;           /* scales it holds (half its bytes) */
    s_scratch *ts;           /* one per thread */
    int n_threads;
} s_cpu;

static float *s_thread_scratch(s_cpu *c, int thread, size_t nfloats) {
    s_scratch *s = &c->ts[thread];
    if (s->cap < nfloats) {
        free(s->p);
        s->p = aligned_alloc(MS_CPU_ALIGN, (nfloats * sizeof(float) + MS_CPU_ALIGN - 1) /
                                               MS_CPU_ALIGN * MS_CPU_ALIGN);
        if (!s->p) abort(); /* out of memory: sizes come from validated model shapes */
        s->cap = nfloats;
    }
    return s->p;
}

/* ---- memory --------------------------------------------------------------------- */

static void *s_alloc(ms_backend *be, size_t nbytes) {
    (void)be;
    size_t n = (nbytes + MS_CPU_ALIGN - 1) / MS_CPU_ALIGN * MS_CPU_ALIGN;
    if (n == 0) n = MS_CPU_ALIGN;
    void *p = aligned_alloc(MS_CPU_ALIGN, n);
    if (p) memset(p, 0, n);
    return p;
}

static void s_free(ms_backend *be, void *p) {
    (void)be;
    free(p);
}

static void s_memcpy(ms_backend *be, void *dst, const void *src, size_t nbytes) {
    (void)be;
    if (nbytes) memmove(dst, src, nbytes);
}

static void s_destroy(ms_backend *be) {
    s_cpu *c = be->ctx;
    ms_threadpool_destroy(&c->pool);
    for (int i = 0; i < c->n_threads; i++) free(c->ts[i].p);
    free(c->ts);
    free(c->xq);
    free(c->xd);
    free(c);
    free(be);
}

/* ---- matmul ------------------------------------------------------------------------ */

typedef struct s_mm_job {
    float *y;
    const uint8_t *w;      /* weight rows */
    size_t wrb;            /* bytes per weight row */
    ms_cpu_mm_fn mm;       /* kernel for the weight type */
    ms_cpu_act act;        /* activations as the kernel reads them */
    int64_t K, M;
    int n;
    int rows_per_task, cols_per_task, n_col_tasks;
    int cols_per_block;    /* columns walked per cache block */
} s_mm_job;

static void s_mm_task(void *ctx, int task, int thread) {
    (void)thread;
    const s_mm_job *j = ctx;
    const int rt = task / j->n_col_tasks, ct = task % j->n_col_tasks;
    const int r0 = rt * j->rows_per_task, r1 = (int)MS_MIN((int64_t)r0 + j->rows_per_task, j->n);
    const int64_t c0 = (int64_t)ct * j->cols_per_task, c1 = MS_MIN(c0 + j->cols_per_task, j->M);
    if (r0 >= r1 || c0 >= c1) return;
    ms_cpu_act a = j->act;
    a.x = (const uint8_t *)a.x + (size_t)r0 * a.row_bytes;
    if (a.d) a.d += (size_t)r0 * a.ld_d;
    if (a.bsums) a.bsums += (size_t)r0 * a.ld_bsums;
    for (int64_t cb = c0; cb < c1; cb += j->cols_per_block) {
        const int nc = (int)MS_MIN((int64_t)j->cols_per_block, c1 - cb);
        j->mm(j->y + (size_t)r0 * j->M + cb, (size_t)j->M, j->w + (size_t)cb * j->wrb, j->wrb, nc, &a,
              r1 - r0, j->K);
    }
}

typedef struct s_quant_job {
    const ms_cpu_kernels *k;
    const float *x;
    int8_t *xq;
    float *xd;
    int16_t *bsums; /* block sums (K/32 per row), or NULL when the kernels take none */
    bool q8k;       /* Q8_K-style blocks of 256 (Q4_K weights), else Q8_0-style blocks of 32 */
    int64_t K;
} s_quant_job;

static void s_quant_task(void *ctx, int row, int thread) {
    (void)thread;
    const s_quant_job *q = ctx;
    const float *x = q->x + (size_t)row * q->K;
    int8_t *xq = q->xq + (size_t)row * q->K;
    int16_t *bsums = q->bsums ? q->bsums + (size_t)row * (q->K / MS_CPU_QK) : NULL;
    if (q->q8k)
        q->k->quantize_q8k(x, xq, q->xd + (size_t)row * (q->K / MS_CPU_QKK), bsums, q->K);
    else if (bsums)
        q->k->quantize_q8s(x, xq, q->xd + (size_t)row * (q->K / MS_CPU_QK), bsums, q->K);
    else
        q->k->quantize_q8(x, xq, q->xd + (size_t)row * (q->K / MS_CPU_QK), q->K);
}

static int s_round_up(int v, int m) { return (v + m - 1) / m * m; }

/* Quantizes the n activation rows into the backend's scratch and points j->act at it. */
static void s_quantize_act(s_cpu *c, s_mm_job *j, const float *x, bool q8k, bool par) {
    const int64_t K = j->K;
    const size_t nq = (size_t)j->n * K, nd = (size_t)j->n * (K / MS_CPU_QK);
    if (c->xq_cap < nq) { /* 64-byte aligned: the kernels load activations a cache line at a time */
        free(c->xq);
        c->xq = aligned_alloc(MS_CPU_ALIGN, (nq + MS_CPU_ALIGN - 1) / MS_CPU_ALIGN * MS_CPU_ALIGN);
        if (!c->xq) abort(); /* out of memory: sizes come from validated model shapes */
        c->xq_cap = nq;
    }
    if (c->xd_cap < nd) { /* also holds the block sums (K/32 int16 per row) after the scales */
        free(c->xd);
        c->xd = ms_xmalloc(nd * sizeof(float) * 2);
        c->xd_cap = nd;
    }
    s_quant_job q = {.k = c->k, .x = x, .xq = c->xq, .xd = c->xd, .K = K, .q8k = q8k,
                     .bsums = q8k || c->k->quantize_q8s ? (int16_t *)(c->xd + nd) : NULL};
    if (par && nq >= MS_CPU_PAR_MIN_FLOATS) ms_threadpool_run(c->pool, j->n, s_quant_task, &q);
    else
        for (int i = 0; i < j->n; i++) s_quant_task(&q, i, 0);
    j->act = (ms_cpu_act){.x = c->xq, .row_bytes = (size_t)K, .d = c->xd,
                          .ld_d = (size_t)(K / (q8k ? MS_CPU_QKK : MS_CPU_QK)), .bsums = q.bsums,
                          .ld_bsums = (size_t)(K / MS_CPU_QK)};
}

static void s_matmul(ms_backend *be, float *y, const ms_tensor *w, const float *x, int n) {
    s_cpu *c = be->ctx;
    const int64_t K = w->ne[0], M = w->ne[1];
    if (n <= 0 || M <= 0) return;
    s_mm_job j = {.y = y, .w = ms_weight_data(w), .wrb = ms_row_bytes(w->type, K), .K = K, .M = M,
                  .n = n, .act = {.x = x, .row_bytes = (size_t)K * sizeof(float)}};
    assert(j.wrb > 0);
    const int64_t macs = (int64_t)n * M * K;
    const bool par = c->n_threads > 1 && macs >= MS_CPU_MM_PAR_MIN_MACS;
    switch (w->type) {
    case MS_TYPE_F32: j.mm = c->k->mm_f32; break;
    case MS_TYPE_F16: j.mm = c->k->mm_f16; break;
    case MS_TYPE_BF16: j.mm = c->k->mm_bf16; break;
    case MS_TYPE_Q8_0: j.mm = c->k->mm_q8_0; s_quantize_act(c, &j, x, false, par); break;
    case MS_TYPE_Q4_0: j.mm = c->k->mm_q4_0; s_quantize_act(c, &j, x, false, par); break;
    case MS_TYPE_Q4_K: j.mm = c->k->mm_q4_K; s_quantize_act(c, &j, x, true, par); break;
    default: assert(!"matmul: unsupported weight type"); return;
    }

    /* cache block: about MS_CPU_MM_WBLOCK_BYTES of weight rows, a multiple of 8 columns */
    j.cols_per_block = (int)MS_MAX(8, MS_CPU_MM_WBLOCK_BYTES / j.wrb / 8 * 8);
    if (!par) {
        j.rows_per_task = n;
        j.cols_per_task = (int)M;
        j.n_col_tasks = 1;
        s_mm_task(&j, 0, 0);
        return;
    }
    const int want = c->n_threads * MS_CPU_MM_TASKS_PER_THR;
    j.cols_per_task = (int)MS_MAX(8, s_round_up((int)((M + want - 1) / want), 8));
    j.n_col_tasks = (int)((M + j.cols_per_task - 1) / j.cols_per_task);
    int row_tasks = 1;
    if (j.n_col_tasks < want && n > 4)
        row_tasks = MS_MIN((want + j.n_col_tasks - 1) / j.n_col_tasks, (n + 3) / 4);
    j.rows_per_task = s_round_up((n + row_tasks - 1) / row_tasks, 4);
    row_tasks = (n + j.rows_per_task - 1) / j.rows_per_task;
    ms_threadpool_run(c->pool, row_tasks * j.n_col_tasks, s_mm_task, &j);
}

/* ---- get_rows, add, add_bias, set_rows ------------------------------------------------ */

static void s_get_rows(ms_backend *be, float *y, const ms_tensor *w, const int32_t *ids, int n) {
    (void)be;
    const int64_t K = w->ne[0];
    const size_t rb = ms_row_bytes(w->type, K);
    assert(rb > 0);
    const uint8_t *wd = ms_weight_data(w);
    for (int i = 0; i < n; i++) {
        assert(ids[i] >= 0 && ids[i] < ms_tensor_nrows(w));
        ms_dequantize_row(w->type, wd + (size_t)ids[i] * rb, y + (size_t)i * K, K);
    }
}

typedef struct s_ew_job {
    const ms_cpu_kernels *k;
    float *y;
    const float *a, *b;
    size_t len;
    int op; /* S_EW_* */
} s_ew_job;

enum { S_EW_ADD, S_EW_GELU, S_EW_GELU_QUICK, S_EW_SILU_MUL };

static void s_ew_task(void *ctx, int task, int thread) {
    (void)thread;
    const s_ew_job *e = ctx;
    const size_t i0 = (size_t)task * MS_CPU_EW_CHUNK;
    const size_t n = MS_MIN((size_t)MS_CPU_EW_CHUNK, e->len - i0);
    switch (e->op) {
    case S_EW_ADD: e->k->add(e->y + i0, e->a + i0, e->b + i0, n); break;
    case S_EW_GELU: e->k->gelu(e->y + i0, n); break;
    case S_EW_GELU_QUICK: e->k->gelu_quick(e->y + i0, n); break;
    case S_EW_SILU_MUL: e->k->silu_mul(e->y + i0, e->b + i0, n); break;
    }
}

static void s_ew_run(s_cpu *c, s_ew_job *e) {
    if (e->len == 0) return;
    const int n_tasks = (int)((e->len + MS_CPU_EW_CHUNK - 1) / MS_CPU_EW_CHUNK);
    if (c->n_threads > 1 && e->len >= MS_CPU_PAR_MIN_FLOATS)
        ms_threadpool_run(c->pool, n_tasks, s_ew_task, e);
    else
        for (int t = 0; t < n_tasks; t++) s_ew_task(e, t, 0);
}

static void s_add(ms_backend *be, float *y, const float *a, const float *b, size_t len) {
    s_cpu *c = be->ctx;
    s_ew_job e = {.k = c->k, .y = y, .a = a, .b = b, .len = len, .op = S_EW_ADD};
    s_ew_run(c, &e);
}

static void s_gelu(ms_backend *be, float *x, size_t len) {
    s_cpu *c = be->ctx;
    s_ew_job e = {.k = c->k, .y = x, .len = len, .op = S_EW_GELU};
    s_ew_run(c, &e);
}

static void s_gelu_quick(ms_backend *be, float *x, size_t len) {
    s_cpu *c = be->ctx;
    s_ew_job e = {.k = c->k, .y = x, .len = len, .op = S_EW_GELU_QUICK};
    s_ew_run(c, &e);
}

static void s_silu_mul(ms_backend *be, float *g, const float *u, size_t len) {
    s_cpu *c = be->ctx;
    s_ew_job e = {.k = c->k, .y = g, .b = u, .len = len, .op = S_EW_SILU_MUL};
    s_ew_run(c, &e);
}

static void s_set_rows(ms_backend *be, float *dst, const int32_t *dst_rows, const float *src, int n,
                       int row_len) {
    (void)be;
    for (int i = 0; i < n; i++) {
        assert(dst_rows[i] >= 0);
        memmove(dst + (size_t)dst_rows[i] * row_len, src + (size_t)i * row_len,
                (size_t)row_len * sizeof(float));
    }
}

/* ---- row ops: add_bias, rmsnorm, layernorm, rope -------------------------------------- */

typedef struct s_row_job {
    s_cpu *c;
    float *y;
    const float *x, *w, *b;
    int dim;
    float eps;
    int op; /* S_ROW_* */
    /* rope */
    int n_head, head_dim, rot_dim;
    const int32_t *pos;
    const double *freq; /* rot_dim/2 frequencies */
    bool neox;
} s_row_job;

enum { S_ROW_BIAS, S_ROW_RMS, S_ROW_LN, S_ROW_ROPE };

static void s_rope_row(const s_row_job *r, float *cs, int i) {
    const int half = r->rot_dim / 2;
    float *cosv = cs, *sinv = cs + half;
    for (int p = 0; p < half; p++) {
        const double theta = (double)r->pos[i] * r->freq[p];
        cosv[p] = (float)cos(theta);
        sinv[p] = (float)sin(theta);
    }
    for (int h = 0; h < r->n_head; h++) {
        float *xh = r->y + ((size_t)i * r->n_head + h) * r->head_dim;
        if (r->neox) {
            for (int p = 0; p < half; p++) {
                const float x0 = xh[p], x1 = xh[p + half];
                xh[p] = x0 * cosv[p] - x1 * sinv[p];
                xh[p + half] = x0 * sinv[p] + x1 * cosv[p];
            }
        } else {
            for (int p = 0; p < half; p++) {
                const float x0 = xh[2 * p], x1 = xh[2 * p + 1];
                xh[2 * p] = x0 * cosv[p] - x1 * sinv[p];
                xh[2 * p + 1] = x0 * sinv[p] + x1 * cosv[p];
            }
        }
    }
}

static void s_row_task(void *ctx, int i, int thread) {
    const s_row_job *r = ctx;
    const ms_cpu_kernels *k = r->c->k;
    const size_t off = (size_t)i * r->dim;
    switch (r->op) {
    case S_ROW_BIAS: k->add(r->y + off, r->y + off, r->b, (size_t)r->dim); break;
    case S_ROW_RMS: k->rmsnorm_row(r->y + off, r->x + off, r->w, r->dim, r->eps); break;
    case S_ROW_LN: k->layernorm_row(r->y + off, r->x + off, r->w, r->b, r->dim, r->eps); break;
    case S_ROW_ROPE: s_rope_row(r, s_thread_scratch(r->c, thread, (size_t)r->rot_dim), i); break;
    }
}

static void s_row_run(s_cpu *c, s_row_job *r, int n) {
    if (c->n_threads > 1 && n > 1 && (size_t)n * r->dim >= MS_CPU_PAR_MIN_FLOATS)
        ms_threadpool_run(c->pool, n, s_row_task, r);
    else
        for (int i = 0; i < n; i++) s_row_task(r, i, 0);
}

static void s_add_bias(ms_backend *be, float *y, const float *bias, int n, int dim) {
    s_cpu *c = be->ctx;
    s_row_job r = {.c = c, .y = y, .b = bias, .dim = dim, .op = S_ROW_BIAS};
    s_row_run(c, &r, n);
}

static void s_rmsnorm(ms_backend *be, float *y, const float *x, const float *w, int n, int dim,
                      float eps) {
    s_cpu *c = be->ctx;
    s_row_job r = {.c = c, .y = y, .x = x, .w = w, .dim = dim, .eps = eps, .op = S_ROW_RMS};
    s_row_run(c, &r, n);
}

static void s_layernorm(ms_backend *be, float *y, const float *x, const float *w, const float *b,
                        int n, int dim, float eps) {
    s_cpu *c = be->ctx;
    s_row_job r = {.c = c, .y = y, .x = x, .w = w, .b = b, .dim = dim, .eps = eps, .op = S_ROW_LN};
    s_row_run(c, &r, n);
}

static void s_rope(ms_backend *be, float *x, int n, int n_head, int head_dim, int rot_dim,
                   const int32_t *pos, float freq_base, bool neox) {
    s_cpu *c = be->ctx;
    assert(rot_dim % 2 == 0 && rot_dim <= head_dim);
    if (rot_dim <= 0 || n <= 0) return;
    double *freq = ms_xmalloc((size_t)(rot_dim / 2) * sizeof(double));
    for (int p = 0; p < rot_dim / 2; p++) freq[p] = pow((double)freq_base, -2.0 * p / rot_dim);
    s_row_job r = {.c = c, .y = x, .dim = n_head * head_dim, .op = S_ROW_ROPE, .n_head = n_head,
                   .head_dim = head_dim, .rot_dim = rot_dim, .pos = pos, .freq = freq, .neox = neox};
    s_row_run(c, &r, n);
    free(freq);
}

/* ---- attention -------------------------------------------------------------------------- */

typedef struct s_attn_job {
    s_cpu *c;
    const ms_attn_args *a;
    int pairs_per_task; /* (query, head) pairs per task */
} s_attn_job;

static size_t s_kv_row(const ms_attn_args *a, int j) {
    if (!a->block_table) return (size_t)j;
    return (size_t)a->block_table[j / a->block_size] * a->block_size + (size_t)(j % a->block_size);
}

/* How many keys from j on (at most n in all) lie in consecutive cache rows. */
static int s_kv_run(const ms_attn_args *a, int j, int n) {
    if (!a->block_table) return n - j;
    return MS_MIN(a->block_size - j % a->block_size, n - j);
}

static void s_attn_task(void *ctx, int task, int thread) {
    const s_attn_job *job = ctx;
    const ms_attn_args *a = job->a;
    const ms_cpu_kernels *k = job->c->k;
    const int hd = a->head_dim, group = a->n_head / a->n_kv_head;
    const size_t q_stride = (size_t)a->n_head * hd, kv_stride = (size_t)a->n_kv_head * hd;
    float *score = s_thread_scratch(job->c, thread, (size_t)MS_MAX(a->n_kv, 1));
    const int p0 = task * job->pairs_per_task;
    const int p1 = MS_MIN(p0 + job->pairs_per_task, a->n_q * a->n_head);
    for (int p = p0; p < p1; p++) {
        const int i = p / a->n_head, h = p % a->n_head;
        int n_see = a->causal ? a->n_kv - a->n_q + i + 1 : a->n_kv;
        if (n_see > a->n_kv) n_see = a->n_kv;
        const float *q = a->q + i * q_stride + (size_t)h * hd;
        float *out = a->out + i * q_stride + (size_t)h * hd;
        memset(out, 0, (size_t)hd * sizeof(float));
        if (n_see <= 0) continue;
        const size_t kv_off = (size_t)(h / group) * hd;
        for (int j = 0, len; j < n_see; j += len) { /* runs of consecutive cache rows */
            len = s_kv_run(a, j, n_see);
            k->dot_rows(score + j, q, a->k + s_kv_row(a, j) * kv_stride + kv_off, kv_stride, len, hd);
        }
        float mx = -INFINITY;
        for (int j = 0; j < n_see; j++) {
            score[j] *= a->scale;
            if (score[j] > mx) mx = score[j];
        }
        const float sum = k->softmax_exp(score, n_see, mx);
        for (int j = 0, len; j < n_see; j += len) {
            len = s_kv_run(a, j, n_see);
            k->axpy_rows(out, score + j, a->v + s_kv_row(a, j) * kv_stride + kv_off, kv_stride, len, hd);
        }
        k->scale(out, 1.0f / sum, hd);
    }
}

static void s_attention(ms_backend *be, const ms_attn_args *a) {
    s_cpu *c = be->ctx;
    assert(a->n_kv_head > 0 && a->n_head % a->n_kv_head == 0);
    const int pairs = a->n_q * a->n_head;
    if (pairs <= 0) return;
    s_attn_job job = {.c = c, .a = a};
    const int64_t work = (int64_t)pairs * MS_MAX(a->n_kv, 1) * a->head_dim;
    if (c->n_threads == 1 || work < MS_CPU_PAR_MIN_FLOATS) {
        job.pairs_per_task = pairs;
        s_attn_task(&job, 0, 0);
        return;
    }
    const int want = c->n_threads * MS_CPU_ATTN_TASKS_PER_THR;
    job.pairs_per_task = MS_MAX(1, (pairs + want - 1) / want);
    ms_threadpool_run(c->pool, (pairs + job.pairs_per_task - 1) / job.pairs_per_task, s_attn_task, &job);
}

/* ---- construction ------------------------------------------------------------------------ */

static const ms_backend_ops s_ops = {
    .name = "cpu",
    .destroy = s_destroy,
    .alloc = s_alloc,
    .free = s_free,
    .to_device = s_memcpy,
    .to_host = s_memcpy,
    .copy = s_memcpy,
    .prepare_weight = NULL,
    .synchronize = NULL,
    .matmul = s_matmul,
    .get_rows = s_get_rows,
    .add = s_add,
    .add_bias = s_add_bias,
    .rmsnorm = s_rmsnorm,
    .layernorm = s_layernorm,
    .rope = s_rope,
    .attention = s_attention,
    .gelu = s_gelu,
    .gelu_quick = s_gelu_quick,
    .silu_mul = s_silu_mul,
    .set_rows = s_set_rows,
};

/* F16C through cpuid (leaf 1, ECX bit 29): clang 14 does not know the
 * "f16c" feature string of __builtin_cpu_supports. */
static bool s_cpu_has_f16c(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
#else
    return false;
#endif
}

static bool s_cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && s_cpu_has_f16c();
#else
    return false;
#endif
}

static bool s_cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return s_cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

ms_backend *ms_backend_cpu_new_isa(int n_threads, ms_cpu_isa isa, char *err, size_t err_size) {
    const ms_cpu_kernels *k = NULL;
    switch (isa) {
    case MS_CPU_ISA_AUTO:
        k = s_cpu_has_avx512() ? ms_cpu_kernels_avx512()
            : s_cpu_has_avx2() ? ms_cpu_kernels_avx2()
                               : ms_cpu_kernels_scalar();
        break;
    case MS_CPU_ISA_SCALAR: k = ms_cpu_kernels_scalar(); break;
    case MS_CPU_ISA_AVX2:
        if (!s_cpu_has_avx2()) {
            ms_errf(err, err_size, "cpu backend: this CPU lacks AVX2/FMA/F16C");
            return NULL;
        }
        k = ms_cpu_kernels_avx2();
        break;
    case MS_CPU_ISA_AVX512:
        if (!s_cpu_has_avx512()) {
            ms_errf(err, err_size, "cpu backend: this CPU lacks AVX-512 F/BW/VL/DQ/VNNI");
            return NULL;
        }
        k = ms_cpu_kernels_avx512();
        break;
    default: ms_errf(err, err_size, "cpu backend: unknown isa %d", (int)isa); return NULL;
    }
    if (n_threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = nc > 0 ? (int)nc : 1;
    }
    if (n_threads > MS_THREADPOOL_MAX_THREADS) n_threads = MS_THREADPOOL_MAX_THREADS;
    s_cpu *c = ms_xcalloc(1, sizeof *c);
    c->k = k;
    c->n_threads = n_threads;
    c->ts = ms_xcalloc((size_t)n_threads, sizeof *c->ts);
    c->pool = ms_threadpool_new(n_threads);
    if (!c->pool) {
        free(c->ts);
        free(c);
        ms_errf(err, err_size, "cpu backend: cannot start %d threads", n_threads);
        return NULL;
    }
    ms_backend *be = ms_xcalloc(1, sizeof *be);
    be->ops = &s_ops;
    be->ctx = c;
    be->n_threads = n_threads;
    return be;
}

const char *ms_backend_cpu_isa_name(const ms_backend *be) {
    return be && be->ops == &s_ops ? ((const s_cpu *)be->ctx)->k->isa : NULL;
}

ms_backend *ms_backend_cpu_new(int n_threads, char *err, size_t err_size) {
    return ms_backend_cpu_new_isa(n_threads, MS_CPU_ISA_AUTO, err, err_size);
}
