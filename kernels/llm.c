/* llm.c — llama / qwen2 forward pass over a batch of rows (see llm.h).
 *
 * Every computation is a backend op; the host only builds index arrays
 * (positions, cache rows, token runs). Shapes below: n = rows in the pass,
 * E = n_embd, Q = n_head * head_dim, D = n_head_kv * head_dim, F = n_ff.
 */
#include "llm.h"
#include "ms_common.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MS_LLM_OUT_CHUNK 32 /* rows per output-matmul pass (bounds the logits scratch) */

struct ms_llm {
    const ms_lm *lm; /* not owned */
    ms_backend *be;  /* not owned */
    int max_rows;    /* rows per pass at most */
    /* backend scratch */
    float *x;      /* (max_rows, E) residual stream */
    float *xn;     /* (max_rows, E) normed input / block output */
    float *q;      /* (max_rows, Q) */
    float *k;      /* (max_rows, D) */
    float *v;      /* (max_rows, D) */
    float *att;    /* (max_rows, Q) attention output */
    float *gate;   /* (max_rows, F) */
    float *up;     /* (max_rows, F) */
    float *out_x;  /* (MS_LLM_OUT_CHUNK, E) rows whose logits are wanted */
    float *logits; /* (MS_LLM_OUT_CHUNK, n_vocab) */
    /* host scratch */
    int32_t *pos;  /* (max_rows) positions */
    int32_t *rows; /* (max_rows) cache rows */
};

static float *s_alloc(ms_backend *be, size_t n_floats, bool *ok) {
    float *p = be->ops->alloc(be, n_floats * sizeof(float));
    if (!p) *ok = false;
    return p;
}

static const float *s_w(const ms_tensor *t) {
    return (const float *)ms_weight_data(t);
}

ms_llm *ms_llm_new(const ms_lm *lm, ms_backend *be, int max_rows, char *err, size_t err_size) {
    if (max_rows < 1) {
        ms_errf(err, err_size, "llm: max_rows %d must be positive", max_rows);
        return NULL;
    }
    const ms_lm_hparams *hp = &lm->hp;
    const size_t n = (size_t)max_rows, E = (size_t)hp->n_embd;
    const size_t Q = (size_t)hp->n_head * hp->head_dim, D = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t F = (size_t)hp->n_ff;
    ms_llm *l = ms_xcalloc(1, sizeof *l);
    l->lm = lm;
    l->be = be;
    l->max_rows = max_rows;
    bool ok = true;
    l->x = s_alloc(be, n * E, &ok);
    l->xn = s_alloc(be, n * E, &ok);
    l->q = s_alloc(be, n * Q, &ok);
    l->k = s_alloc(be, n * D, &ok);
    l->v = s_alloc(be, n * D, &ok);
    l->att = s_alloc(be, n * Q, &ok);
    l->gate = s_alloc(be, n * F, &ok);
    l->up = s_alloc(be, n * F, &ok);
    l->out_x = s_alloc(be, MS_LLM_OUT_CHUNK * E, &ok);
    l->logits = s_alloc(be, (size_t)MS_LLM_OUT_CHUNK * (size_t)hp->n_vocab, &ok);
    l->pos = ms_xmalloc(n * sizeof *l->pos);
    l->rows = ms_xmalloc(n * sizeof *l->rows);
    if (!ok) {
        ms_errf(err, err_size, "llm: cannot allocate scratch for %d rows", max_rows);
        ms_llm_destroy(&l);
        return NULL;
    }
    return l;
}

void ms_llm_destroy(ms_llm **l_p) {
    if (!l_p || !*l_p) return;
    ms_llm *l = *l_p;
    *l_p = NULL;
    float *bufs[] = {l->x, l->xn, l->q, l->k, l->v, l->att, l->gate, l->up, l->out_x, l->logits};
    for (size_t i = 0; i < MS_ARRAY_LEN(bufs); i++)
        if (bufs[i]) l->be->ops->free(l->be, bufs[i]);
    free(l->pos);
    free(l->rows);
    free(l);
}

int ms_llm_max_rows(const ms_llm *l) {
    return l->max_rows;
}

/* x = the input rows: runs of token ids through get_rows, runs of embedding
 * rows uploaded from the host. */
static void s_input(ms_llm *l, const ms_llm_batch *b) {
    ms_backend *be = l->be;
    const int E = l->lm->hp.n_embd;
    int e_next = 0; /* next embedding row to take */
    for (int r = 0; r < b->n_rows;) {
        int end = r;
        if (b->tokens[r] == MS_LLM_ROW_EMBD) {
            while (end < b->n_rows && b->tokens[end] == MS_LLM_ROW_EMBD)
                end++;
            assert(b->embd);
            be->ops->to_device(be, l->x + (size_t)r * E, b->embd + (size_t)e_next * E,
                               (size_t)(end - r) * E * sizeof(float));
            e_next += end - r;
        } else {
            while (end < b->n_rows && b->tokens[end] != MS_LLM_ROW_EMBD) {
                assert(b->tokens[end] >= 0 && b->tokens[end] < l->lm->hp.n_vocab);
                end++;
            }
            be->ops->get_rows(be, l->x + (size_t)r * E, l->lm->tok_embd, b->tokens + r, end - r);
        }
        r = end;
    }
}

/* One transformer block over the n rows of l->x. */
static void s_layer(ms_llm *l, ms_kvcache *kv, const ms_llm_batch *b, int il) {
    ms_backend *be = l->be;
    const ms_backend_ops *op = be->ops;
    const ms_lm_hparams *hp = &l->lm->hp;
    const ms_lm_layer *L = &l->lm->layers[il];
    const int n = b->n_rows, E = hp->n_embd, F = hp->n_ff;
    const int Q = hp->n_head * hp->head_dim, D = hp->n_head_kv * hp->head_dim;

    /* attention */
    op->rmsnorm(be, l->xn, l->x, s_w(L->attn_norm), n, E, hp->rms_eps);
    op->matmul(be, l->q, L->wq, l->xn, n);
    op->matmul(be, l->k, L->wk, l->xn, n);
    op->matmul(be, l->v, L->wv, l->xn, n);
    if (L->bq) op->add_bias(be, l->q, s_w(L->bq), n, Q);
    if (L->bk) op->add_bias(be, l->k, s_w(L->bk), n, D);
    if (L->bv) op->add_bias(be, l->v, s_w(L->bv), n, D);
    op->rope(be, l->q, n, hp->n_head, hp->head_dim, hp->n_rot, l->pos, hp->rope_freq_base,
             hp->rope_neox);
    op->rope(be, l->k, n, hp->n_head_kv, hp->head_dim, hp->n_rot, l->pos, hp->rope_freq_base,
             hp->rope_neox);
    op->set_rows(be, kv->k[il], l->rows, l->k, n, D);
    op->set_rows(be, kv->v[il], l->rows, l->v, n, D);
    int r0 = 0;
    for (int s = 0; s < b->n_segs; s++) {
        const ms_seq *seq = b->seqs[s];
        const int cnt = b->seg_rows[s];
        ms_attn_args a = {
            .out = l->att + (size_t)r0 * Q,
            .q = l->q + (size_t)r0 * Q,
            .k = kv->k[il],
            .v = kv->v[il],
            .block_table = seq->blocks,
            .block_size = kv->block_size,
            .n_q = cnt,
            .n_kv = seq->n_past + cnt,
            .n_head = hp->n_head,
            .n_kv_head = hp->n_head_kv,
            .head_dim = hp->head_dim,
            .causal = true,
            .scale = 1.0f / sqrtf((float)hp->head_dim),
        };
        op->attention(be, &a);
        r0 += cnt;
    }
    op->matmul(be, l->xn, L->wo, l->att, n);
    op->add(be, l->x, l->x, l->xn, (size_t)n * E);

    /* feed-forward (SwiGLU) */
    op->rmsnorm(be, l->xn, l->x, s_w(L->ffn_norm), n, E, hp->rms_eps);
    op->matmul(be, l->gate, L->w_gate, l->xn, n);
    op->matmul(be, l->up, L->w_up, l->xn, n);
    op->silu_mul(be, l->gate, l->up, (size_t)n * F);
    op->matmul(be, l->xn, L->w_down, l->gate, n);
    op->add(be, l->x, l->x, l->xn, (size_t)n * E);
}

/* Final norm + output matmul for the wanted rows, MS_LLM_OUT_CHUNK at a time. */
static void s_output(ms_llm *l, const ms_llm_batch *b, float *logits) {
    ms_backend *be = l->be;
    const int E = l->lm->hp.n_embd, V = l->lm->hp.n_vocab;
    for (int o = 0; o < b->n_out; o += MS_LLM_OUT_CHUNK) {
        const int cnt = MS_MIN(MS_LLM_OUT_CHUNK, b->n_out - o);
        for (int i = 0; i < cnt; i++) {
            const int r = b->out_rows[o + i];
            assert(r >= 0 && r < b->n_rows);
            be->ops->copy(be, l->out_x + (size_t)i * E, l->x + (size_t)r * E, E * sizeof(float));
        }
        be->ops->rmsnorm(be, l->out_x, l->out_x, s_w(l->lm->output_norm), cnt, E,
                         l->lm->hp.rms_eps);
        be->ops->matmul(be, l->logits, l->lm->output, l->out_x, cnt);
        if (be->ops->synchronize) be->ops->synchronize(be);
        be->ops->to_host(be, logits + (size_t)o * V, l->logits, (size_t)cnt * V * sizeof(float));
    }
}

void ms_llm_forward(ms_llm *l, ms_kvcache *kv, const ms_llm_batch *b, float *logits) {
    assert(b->n_rows >= 1 && b->n_rows <= l->max_rows);
    assert(kv->n_layer == l->lm->hp.n_layer);
    /* positions and cache rows, segment by segment */
    int r0 = 0;
    for (int s = 0; s < b->n_segs; s++) {
        const ms_seq *seq = b->seqs[s];
        const int cnt = b->seg_rows[s];
        assert(cnt >= 1);
        for (int i = 0; i < cnt; i++)
            l->pos[r0 + i] = seq->n_past + i;
        ms_kvcache_seq_rows(kv, seq, cnt, l->rows + r0);
        r0 += cnt;
    }
    assert(r0 == b->n_rows);
    s_input(l, b);
    for (int il = 0; il < l->lm->hp.n_layer; il++)
        s_layer(l, kv, b, il);
    if (b->n_out > 0)
        s_output(l, b, logits);
    else if (l->be->ops->synchronize)
        l->be->ops->synchronize(l->be);
}
