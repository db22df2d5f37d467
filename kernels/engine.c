/* engine.c — the stage API over the models, the backend and the KV cache
 * (see engine.h; docs/engine.md for shapes and guarantees). */
#include "engine.h"
#include "image.h"
#include "llm.h"
#include "ms_common.h"
#include "vision.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define MS_GEN_TEXT_BUF 1024 /* bytes of one token's text delta (>= 256 + MS_MAX_STOP_LEN) */

struct ms_engine {
    ms_lm *lm;              /* owned */
    ms_vit *vit;            /* owned, NULL when text only */
    ms_backend *be;         /* owned */
    ms_kvcache *kv;         /* owned */
    ms_llm *llm;            /* owned */
    ms_vision *vis;         /* owned, NULL when text only */
    ms_preprocess_cfg pcfg; /* from the mmproj */
    uint64_t model_hash;    /* see s_model_hash */
    int n_ctx;              /* tokens per sequence */
    int max_rows;           /* rows per LM pass */
    uint64_t next_seq_id;   /* ids of new sequences */
    /* host scratch for one pass */
    int32_t *tok;      /* (max_rows) batch token entries */
    int32_t *hist;     /* (max_rows) history entries */
    float *embd;       /* (max_rows, n_embd) embedding rows of the pass */
    int *seg_rows;     /* (max_rows) */
    int32_t *out_rows; /* (max_rows) */
    int *n_new;        /* (max_rows) */
};

void ms_engine_params_default(ms_engine_params *p) {
    memset(p, 0, sizeof *p);
    p->backend = "cpu";
}

static void s_progress(const ms_engine_params *p, const char *what, float f) {
    if (p->progress) p->progress(what, f, p->progress_user);
}

/* The text model's identity: dimensions plus the bytes of its output norm and
 * first layer's attention norm (small, always F32). */
static uint64_t s_model_hash(const ms_lm *lm) {
    const ms_lm_hparams *hp = &lm->hp;
    int64_t dims[] = {hp->arch,   hp->n_vocab,   hp->n_embd,   hp->n_layer, hp->n_ff,
                      hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_rot,   hp->rope_neox};
    uint64_t h = ms_hash64(dims, sizeof dims);
    h ^= ms_hash64(lm->output_norm->data, lm->output_norm->nbytes) * 0x9e3779b97f4a7c15ull;
    h ^= ms_hash64(lm->layers[0].attn_norm->data, lm->layers[0].attn_norm->nbytes) + (h << 6);
    return h;
}

/* Gives every weight to the backend's prepare_weight (when it has one). */
static int s_prepare(ms_engine *e, const ms_engine_params *p, char *err, size_t err_size) {
    ms_backend *be = e->be;
    if (!be->ops->prepare_weight) return 0;
    enum { MAX_W = 16 };
    int n_lay = e->lm->hp.n_layer + (e->vit ? e->vit->hp.n_layer : 0);
    int done = 0, total = n_lay + 2;
    ms_tensor *top[] = {e->lm->tok_embd, e->lm->output_norm,
                        e->lm->output != e->lm->tok_embd ? e->lm->output : NULL};
    for (size_t i = 0; i < MS_ARRAY_LEN(top); i++)
        if (top[i] && be->ops->prepare_weight(be, top[i]) != 0)
            return ms_errf(err, err_size, "backend %s: cannot prepare weight '%s'", be->ops->name,
                           top[i]->name);
    s_progress(p, "weights", (float)++done / total);
    for (int il = 0; il < e->lm->hp.n_layer; il++) {
        ms_lm_layer *L = &e->lm->layers[il];
        ms_tensor *w[MAX_W] = {L->attn_norm, L->wq, L->wk,       L->wv,     L->wo,   L->bq,
                               L->bk,        L->bv, L->ffn_norm, L->w_gate, L->w_up, L->w_down};
        for (int i = 0; i < MAX_W; i++)
            if (w[i] && be->ops->prepare_weight(be, w[i]) != 0)
                return ms_errf(err, err_size, "backend %s: cannot prepare weight '%s'",
                               be->ops->name, w[i]->name);
        s_progress(p, "weights", (float)++done / total);
    }
    if (e->vit) {
        ms_vit *v = e->vit;
        ms_tensor *vw[] = {ms_vision_patch_weight(e->vis),
                           v->patch_b,
                           v->class_embd,
                           v->pos_embd,
                           v->pre_ln_w,
                           v->pre_ln_b,
                           v->post_ln_w,
                           v->post_ln_b,
                           v->mm0_w,
                           v->mm0_b,
                           v->mm2_w,
                           v->mm2_b};
        for (size_t i = 0; i < MS_ARRAY_LEN(vw); i++)
            if (vw[i] && be->ops->prepare_weight(be, vw[i]) != 0)
                return ms_errf(err, err_size, "backend %s: cannot prepare weight '%s'",
                               be->ops->name, vw[i]->name);
        for (int il = 0; il < v->hp.n_layer; il++) {
            ms_vit_layer *L = &v->layers[il];
            ms_tensor *w[MAX_W] = {L->ln1_w,   L->ln1_b,   L->q_w,       L->q_b,
                                   L->k_w,     L->k_b,     L->v_w,       L->v_b,
                                   L->o_w,     L->o_b,     L->ln2_w,     L->ln2_b,
                                   L->ff_up_w, L->ff_up_b, L->ff_down_w, L->ff_down_b};
            for (int i = 0; i < MAX_W; i++)
                if (w[i] && be->ops->prepare_weight(be, w[i]) != 0)
                    return ms_errf(err, err_size, "backend %s: cannot prepare weight '%s'",
                                   be->ops->name, w[i]->name);
            s_progress(p, "weights", (float)++done / total);
        }
    }
    s_progress(p, "weights", 1.0f);
    return 0;
}

ms_engine *ms_engine_new(const ms_engine_params *p, char *err, size_t err_size) {
    if (!p || !p->lm_path) {
        ms_errf(err, err_size, "engine: no text model path given");
        return NULL;
    }
    const int bs = p->kv_block_size ? p->kv_block_size : MS_KV_BLOCK_SIZE_DEFAULT;
    const int kv_tokens = p->kv_max_tokens ? p->kv_max_tokens : MS_ENGINE_KV_TOKENS_DEFAULT;
    const int max_rows = p->max_batch_tokens ? p->max_batch_tokens : MS_ENGINE_BATCH_TOKENS_DEFAULT;
    const int vit_batch = p->vit_batch ? p->vit_batch : MS_ENGINE_VIT_BATCH_DEFAULT;
    if (bs < 1 || bs > MS_KV_MAX_BLOCK_SIZE) {
        ms_errf(err, err_size, "engine: kv_block_size %d out of range [1, %d]", bs,
                MS_KV_MAX_BLOCK_SIZE);
        return NULL;
    }
    if (kv_tokens < 1 || p->n_ctx < 0) {
        ms_errf(err, err_size, "engine: kv_max_tokens %d / n_ctx %d out of range", kv_tokens,
                p->n_ctx);
        return NULL;
    }
    if (max_rows < 1 || max_rows > MS_ENGINE_MAX_BATCH_TOKENS) {
        ms_errf(err, err_size, "engine: max_batch_tokens %d out of range [1, %d]", max_rows,
                MS_ENGINE_MAX_BATCH_TOKENS);
        return NULL;
    }
    if (vit_batch < 1 || vit_batch > MS_MAX_IMAGES_PER_PROMPT) {
        ms_errf(err, err_size, "engine: vit_batch %d out of range [1, %d]", vit_batch,
                MS_MAX_IMAGES_PER_PROMPT);
        return NULL;
    }
    ms_engine *e = ms_xcalloc(1, sizeof *e);
    char msg[MS_ERR_SIZE];
    s_progress(p, "lm", 0.0f);
    e->lm = ms_lm_load(p->lm_path, msg, sizeof msg);
    if (!e->lm) {
        ms_errf(err, err_size, "%s: %s", p->lm_path, msg);
        goto fail;
    }
    s_progress(p, "lm", 1.0f);
    if (p->mmproj_path) {
        s_progress(p, "mmproj", 0.0f);
        e->vit = ms_vit_load(p->mmproj_path, msg, sizeof msg);
        if (!e->vit) {
            ms_errf(err, err_size, "%s: %s", p->mmproj_path, msg);
            goto fail;
        }
        if (e->vit->hp.proj_dim != e->lm->hp.n_embd) {
            ms_errf(err, err_size,
                    "%s: projection_dim %d does not match the text model's "
                    "embedding_length %d",
                    p->mmproj_path, e->vit->hp.proj_dim, e->lm->hp.n_embd);
            goto fail;
        }
        s_progress(p, "mmproj", 1.0f);
    }
    e->be = ms_backend_new(p->backend ? p->backend : "cpu", p->n_threads, err, err_size);
    if (!e->be) goto fail;

    const ms_lm_hparams *hp = &e->lm->hp;
    const int n_blocks = (int)(((int64_t)kv_tokens + bs - 1) / bs);
    s_progress(p, "kv", 0.0f);
    e->kv = ms_kvcache_new(e->be, hp->n_layer, hp->n_head_kv * hp->head_dim, bs, n_blocks, err,
                           err_size);
    if (!e->kv) goto fail;
    s_progress(p, "kv", 1.0f);
    const int cap = n_blocks * bs;
    e->n_ctx = p->n_ctx ? p->n_ctx : (hp->n_ctx_train > 0 ? hp->n_ctx_train : cap);
    if (e->n_ctx > cap) e->n_ctx = cap;
    e->max_rows = max_rows;
    e->llm = ms_llm_new(e->lm, e->be, max_rows, err, err_size);
    if (!e->llm) goto fail;
    if (e->vit) {
        e->vis = ms_vision_new(e->vit, e->be, vit_batch, err, err_size);
        if (!e->vis) goto fail;
        const ms_vit_hparams *vh = &e->vit->hp;
        memset(&e->pcfg, 0, sizeof e->pcfg);
        e->pcfg.size = vh->image_size;
        e->pcfg.fit = vh->fit;
        memcpy(e->pcfg.mean, vh->mean, sizeof vh->mean);
        memcpy(e->pcfg.std, vh->std, sizeof vh->std);
    }
    if (s_prepare(e, p, err, err_size) != 0) goto fail;
    e->model_hash = s_model_hash(e->lm);
    e->next_seq_id = 1;
    e->tok = ms_xmalloc((size_t)max_rows * sizeof *e->tok);
    e->hist = ms_xmalloc((size_t)max_rows * sizeof *e->hist);
    e->embd = ms_xmalloc((size_t)max_rows * hp->n_embd * sizeof *e->embd);
    e->seg_rows = ms_xmalloc((size_t)max_rows * sizeof *e->seg_rows);
    e->out_rows = ms_xmalloc((size_t)max_rows * sizeof *e->out_rows);
    e->n_new = ms_xmalloc((size_t)max_rows * sizeof *e->n_new);
    return e;
fail:
    ms_engine_destroy(&e);
    return NULL;
}

void ms_engine_destroy(ms_engine **e_p) {
    if (!e_p || !*e_p) return;
    ms_engine *e = *e_p;
    *e_p = NULL;
    ms_vision_destroy(&e->vis);
    ms_llm_destroy(&e->llm);
    ms_kvcache_destroy(&e->kv);
    ms_backend_destroy(&e->be);
    ms_vit_free(&e->vit);
    ms_lm_free(&e->lm);
    free(e->tok);
    free(e->hist);
    free(e->embd);
    free(e->seg_rows);
    free(e->out_rows);
    free(e->n_new);
    free(e);
}

/* ---- accessors ------------------------------------------------------------ */

const ms_lm *ms_engine_lm(const ms_engine *e) {
    return e->lm;
}
const ms_vit *ms_engine_vit(const ms_engine *e) {
    return e->vit;
}
const ms_tokenizer *ms_engine_tokenizer(const ms_engine *e) {
    return e->lm->tok;
}
ms_backend *ms_engine_backend(const ms_engine *e) {
    return e->be;
}
int ms_engine_n_vocab(const ms_engine *e) {
    return e->lm->hp.n_vocab;
}
int ms_engine_n_embd(const ms_engine *e) {
    return e->lm->hp.n_embd;
}
int ms_engine_n_ctx(const ms_engine *e) {
    return e->n_ctx;
}
bool ms_engine_has_vision(const ms_engine *e) {
    return e->vit != NULL;
}
int ms_engine_n_image_tokens(const ms_engine *e) {
    return e->vit ? e->vit->hp.n_image_tokens : 0;
}
int ms_engine_image_size(const ms_engine *e) {
    return e->vit ? e->vit->hp.image_size : 0;
}
size_t ms_engine_image_floats(const ms_engine *e) {
    return e->vit ? 3 * (size_t)e->vit->hp.image_size * e->vit->hp.image_size : 0;
}
int ms_engine_feature_dim(const ms_engine *e) {
    return e->vit ? e->vit->hp.n_embd : 0;
}
uint64_t ms_engine_model_hash(const ms_engine *e) {
    return e->model_hash;
}
int ms_engine_kv_block_size(const ms_engine *e) {
    return e->kv->block_size;
}
int ms_engine_kv_total_blocks(const ms_engine *e) {
    return e->kv->n_blocks;
}
int ms_engine_kv_free_blocks(const ms_engine *e) {
    return e->kv->n_free;
}
size_t ms_engine_kv_bytes(const ms_engine *e) {
    return ms_kvcache_bytes(e->kv->n_layer, e->kv->row_dim, e->kv->block_size, e->kv->n_blocks);
}

/* ---- vision stages -------------------------------------------------------- */

int ms_engine_preprocess(const ms_engine *e, const uint8_t *bytes, size_t len, float *pixels,
                         char *err, size_t err_size) {
    if (!e->vit) return ms_errf(err, err_size, "preprocess: the engine has no vision model");
    return ms_image_preprocess(bytes, len, &e->pcfg, pixels, err, err_size);
}

int ms_engine_encode(ms_engine *e, const float *pixels, int n_images, float *features, char *err,
                     size_t err_size) {
    if (!e->vit) return ms_errf(err, err_size, "encode: the engine has no vision model");
    if (n_images < 0) return ms_errf(err, err_size, "encode: %d images", n_images);
    ms_vision_encode(e->vis, pixels, n_images, features);
    return 0;
}

int ms_engine_project(ms_engine *e, const float *features, int n_images, float *embd, char *err,
                      size_t err_size) {
    if (!e->vit) return ms_errf(err, err_size, "project: the engine has no vision model");
    if (n_images < 0) return ms_errf(err, err_size, "project: %d images", n_images);
    ms_vision_project(e->vis, features, n_images * e->vit->hp.n_image_tokens, embd);
    return 0;
}

/* ---- sequences ------------------------------------------------------------ */

ms_seq *ms_engine_seq_new(ms_engine *e) {
    ms_seq *s = ms_xmalloc(sizeof *s);
    ms_seq_init(s, e->next_seq_id++);
    return s;
}

void ms_engine_seq_free(ms_engine *e, ms_seq **seq_p) {
    if (!seq_p || !*seq_p) return;
    ms_kvcache_seq_fini(e->kv, *seq_p);
    free(*seq_p);
    *seq_p = NULL;
}

int ms_engine_prefill(ms_engine *e, ms_seq *seq, const int32_t *prompt, int n,
                      const float *image_embd, int n_images, float *logits_last, char *err,
                      size_t err_size) {
    const int n_img_tok = ms_engine_n_image_tokens(e), E = e->lm->hp.n_embd;
    if (n < 1 || n > MS_ENGINE_MAX_PROMPT)
        return ms_errf(err, err_size, "prefill: prompt of %d entries (expected 1..%d)", n,
                       MS_ENGINE_MAX_PROMPT);
    if (n_images < 0 || n_images > MS_MAX_IMAGES_PER_PROMPT)
        return ms_errf(err, err_size, "prefill: %d images (at most %d)", n_images,
                       MS_MAX_IMAGES_PER_PROMPT);
    int64_t rows = 0;
    for (int i = 0; i < n; i++) {
        const int32_t id = prompt[i];
        if (MS_PROMPT_IS_IMAGE(id)) {
            const int k = MS_PROMPT_IMAGE_INDEX(id);
            if (!e->vit)
                return ms_errf(err, err_size,
                               "prefill: prompt entry %d is image %d but "
                               "the engine has no vision model",
                               i, k);
            if (k >= n_images || !image_embd)
                return ms_errf(err, err_size,
                               "prefill: prompt entry %d refers to image %d, "
                               "but %d images were given",
                               i, k, image_embd ? n_images : 0);
            rows += n_img_tok;
        } else {
            if (id >= e->lm->hp.n_vocab)
                return ms_errf(err, err_size,
                               "prefill: prompt entry %d is token %d, outside "
                               "the vocabulary of %d",
                               i, id, e->lm->hp.n_vocab);
            rows += 1;
        }
    }
    if (seq->n_past + rows > e->n_ctx)
        return ms_errf(err, err_size, "prefill: %d + %lld tokens exceed the context of %d",
                       seq->n_past, (long long)rows, e->n_ctx);
    if (ms_kvcache_seq_reserve(e->kv, seq, (int)rows, err, err_size) != 0) return -1;

    int i = 0, sub = 0; /* prompt entry and row within an image */
    int64_t done = 0;
    while (done < rows) {
        const int cnt = (int)MS_MIN((int64_t)e->max_rows, rows - done);
        int n_embd_rows = 0;
        for (int r = 0; r < cnt; r++) {
            const int32_t id = prompt[i];
            if (MS_PROMPT_IS_IMAGE(id)) {
                const int k = MS_PROMPT_IMAGE_INDEX(id);
                memcpy(e->embd + (size_t)n_embd_rows * E,
                       image_embd + ((size_t)k * n_img_tok + sub) * E, (size_t)E * sizeof(float));
                n_embd_rows++;
                e->tok[r] = MS_LLM_ROW_EMBD;
                e->hist[r] = MS_SEQ_TOKEN_EMBD;
                if (++sub == n_img_tok) {
                    sub = 0;
                    i++;
                }
            } else {
                e->tok[r] = id;
                e->hist[r] = id;
                i++;
            }
        }
        done += cnt;
        const bool last = done == rows;
        e->seg_rows[0] = cnt;
        e->out_rows[0] = cnt - 1;
        ms_llm_batch b = {
            .n_rows = cnt,
            .tokens = e->tok,
            .embd = n_embd_rows ? e->embd : NULL,
            .n_segs = 1,
            .seqs = &seq,
            .seg_rows = e->seg_rows,
            .n_out = (last && logits_last) ? 1 : 0,
            .out_rows = e->out_rows,
        };
        ms_llm_forward(e->llm, e->kv, &b, logits_last);
        ms_kvcache_seq_advance(seq, e->hist, cnt);
    }
    return 0;
}

int ms_engine_decode(ms_engine *e, ms_seq *const *seqs, const int32_t *tokens, int n_seqs,
                     float *logits, char *err, size_t err_size) {
    if (n_seqs < 1) return ms_errf(err, err_size, "decode: batch of %d sequences", n_seqs);
    for (int i = 0; i < n_seqs; i++) {
        if (tokens[i] < 0 || tokens[i] >= e->lm->hp.n_vocab)
            return ms_errf(err, err_size,
                           "decode: token %d of sequence %llu is outside the "
                           "vocabulary of %d",
                           tokens[i], (unsigned long long)seqs[i]->id, e->lm->hp.n_vocab);
        if (seqs[i]->n_past + 1 > e->n_ctx)
            return ms_errf(err, err_size, "decode: sequence %llu is at the context limit of %d",
                           (unsigned long long)seqs[i]->id, e->n_ctx);
        for (int j = 0; j < i; j++)
            if (seqs[j] == seqs[i])
                return ms_errf(err, err_size, "decode: sequence %llu appears twice in the batch",
                               (unsigned long long)seqs[i]->id);
    }
    const int V = e->lm->hp.n_vocab;
    for (int s0 = 0; s0 < n_seqs; s0 += e->max_rows) {
        const int cnt = MS_MIN(e->max_rows, n_seqs - s0);
        for (int i = 0; i < cnt; i++)
            e->n_new[i] = 1;
        /* reserve every chunk up front would be all-or-nothing over the whole
         * batch; check the total first, then reserve chunk by chunk */
        if (s0 == 0) {
            int64_t need = 0;
            for (int i = 0; i < n_seqs; i++)
                need += MS_MAX(0, ms_kvcache_blocks_for(e->kv, seqs[i]->n_past + 1) -
                                      seqs[i]->n_blocks);
            if (need > e->kv->n_free)
                return ms_errf(err, err_size, "KV cache full: need %lld blocks, %d free",
                               (long long)need, e->kv->n_free);
        }
        if (ms_kvcache_reserve_many(e->kv, seqs + s0, e->n_new, cnt, err, err_size) != 0)
            return -1; /* cannot happen after the check above */
        for (int i = 0; i < cnt; i++) {
            e->seg_rows[i] = 1;
            e->out_rows[i] = i;
        }
        ms_llm_batch b = {
            .n_rows = cnt,
            .tokens = tokens + s0,
            .embd = NULL,
            .n_segs = cnt,
            .seqs = seqs + s0,
            .seg_rows = e->seg_rows,
            .n_out = cnt,
            .out_rows = e->out_rows,
        };
        ms_llm_forward(e->llm, e->kv, &b, logits + (size_t)s0 * V);
        for (int i = 0; i < cnt; i++)
            ms_kvcache_seq_advance(seqs[s0 + i], tokens + s0 + i, 1);
    }
    return 0;
}

/* ---- KV hand-off ---------------------------------------------------------- */

size_t ms_engine_seq_export_size(const ms_engine *e, const ms_seq *seq) {
    return ms_kvcache_export_size(e->kv, seq);
}

int ms_engine_seq_export(ms_engine *e, const ms_seq *seq, void *buf, size_t cap, char *err,
                         size_t err_size) {
    if (seq->n_past < 1)
        return ms_errf(err, err_size, "KV export: sequence %llu is empty",
                       (unsigned long long)seq->id);
    return ms_kvcache_export(e->kv, seq, e->model_hash, buf, cap, err, err_size);
}

ms_seq *ms_engine_seq_import(ms_engine *e, const void *bytes, size_t len, char *err,
                             size_t err_size) {
    ms_seq *s = ms_engine_seq_new(e);
    if (ms_kvcache_import(e->kv, s, e->model_hash, e->n_ctx, e->lm->hp.n_vocab, bytes, len, err,
                          err_size) != 0) {
        ms_engine_seq_free(e, &s);
        return NULL;
    }
    return s;
}

/* ---- the one-call path ---------------------------------------------------- */

void ms_generate_result_fini(ms_generate_result *r) {
    free(r->tokens);
    free(r->text);
    memset(r, 0, sizeof *r);
}

static void s_append_text(ms_generate_result *r, size_t *cap, const char *s, int len) {
    if (len <= 0) return;
    if (r->text_len + (size_t)len + 1 > *cap) {
        *cap = MS_MAX(2 * *cap, r->text_len + (size_t)len + 1);
        r->text = ms_xrealloc(r->text, *cap);
    }
    memcpy(r->text + r->text_len, s, (size_t)len);
    r->text_len += (size_t)len;
    r->text[r->text_len] = '\0';
}

/* Runs the vision stages for n images into *embd_p (malloc'd). */
static int s_images(ms_engine *e, const ms_image_bytes *images, int n_images, float **embd_p,
                    ms_generate_result *out, char *err, size_t err_size) {
    *embd_p = NULL;
    if (n_images == 0) return 0;
    if (!e->vit)
        return ms_errf(err, err_size,
                       "generate: %d images given but the engine has "
                       "no vision model",
                       n_images);
    const size_t px = ms_engine_image_floats(e);
    const size_t ft = (size_t)e->vit->hp.n_image_tokens * e->vit->hp.n_embd;
    const size_t em = (size_t)e->vit->hp.n_image_tokens * e->lm->hp.n_embd;
    float *pixels = ms_xmalloc((size_t)n_images * px * sizeof(float));
    double t0 = ms_now_s();
    for (int k = 0; k < n_images; k++) {
        char msg[MS_ERR_SIZE];
        if (ms_engine_preprocess(e, images[k].data, images[k].len, pixels + (size_t)k * px, msg,
                                 sizeof msg) != 0) {
            free(pixels);
            return ms_errf(err, err_size, "image %d: %s", k, msg);
        }
    }
    double t1 = ms_now_s();
    float *features = ms_xmalloc((size_t)n_images * ft * sizeof(float));
    ms_vision_encode(e->vis, pixels, n_images, features);
    free(pixels);
    double t2 = ms_now_s();
    float *embd = ms_xmalloc((size_t)n_images * em * sizeof(float));
    ms_vision_project(e->vis, features, n_images * e->vit->hp.n_image_tokens, embd);
    free(features);
    out->t_preprocess_ms = (t1 - t0) * 1e3;
    out->t_encode_ms = (t2 - t1) * 1e3;
    out->t_project_ms = (ms_now_s() - t2) * 1e3;
    *embd_p = embd;
    return 0;
}

int ms_engine_generate(ms_engine *e, const int32_t *prompt, int n, const ms_image_bytes *images,
                       int n_images, const ms_sampling_params *sp, ms_token_fn on_token, void *user,
                       ms_generate_result *out, char *err, size_t err_size) {
    memset(out, 0, sizeof *out);
    if (ms_sampling_params_validate(sp, err, err_size) != 0) return -1;
    if (n_images < 0 || n_images > MS_MAX_IMAGES_PER_PROMPT)
        return ms_errf(err, err_size, "generate: %d images (at most %d)", n_images,
                       MS_MAX_IMAGES_PER_PROMPT);
    float *embd = NULL;
    if (s_images(e, images, n_images, &embd, out, err, err_size) != 0) return -1;

    const int V = e->lm->hp.n_vocab;
    float *logits = ms_xmalloc((size_t)V * sizeof *logits);
    ms_seq *seq = ms_engine_seq_new(e);
    double t0 = ms_now_s();
    int rc = ms_engine_prefill(e, seq, prompt, n, embd, n_images, logits, err, err_size);
    free(embd);
    out->t_prefill_ms = (ms_now_s() - t0) * 1e3;
    if (rc != 0) {
        ms_engine_seq_free(e, &seq);
        free(logits);
        return -1;
    }
    out->n_prompt = seq->n_past;

    ms_sampler smp;
    if (ms_sampler_init(&smp, sp, V) != 0) {
        ms_engine_seq_free(e, &seq);
        free(logits);
        return ms_errf(err, err_size, "generate: cannot initialise the sampler");
    }
    ms_detok dt;
    ms_detok_init(&dt, e->lm->tok, false);
    ms_stop_matcher sm;
    ms_stop_init(&sm, sp);
    out->tokens = ms_xmalloc((size_t)sp->max_tokens * sizeof *out->tokens);
    size_t text_cap = 1;
    out->text = ms_xcalloc(1, 1);

    char piece[MS_GEN_TEXT_BUF], delta[MS_GEN_TEXT_BUF + MS_MAX_STOP_LEN];
    double t_dec = 0;
    rc = 0;
    for (;;) {
        const int32_t tok = ms_sampler_sample(&smp, logits);
        out->tokens[out->n_generated++] = tok;
        const bool eog = ms_tokenizer_is_eog(e->lm->tok, tok);
        const bool last = eog || out->n_generated >= sp->max_tokens || seq->n_past >= e->n_ctx;
        int plen = eog ? 0 : ms_detok_push(&dt, tok, piece, sizeof piece);
        int dlen = 0;
        bool stopped = ms_stop_push(&sm, piece, plen, delta, (int)sizeof delta, &dlen);
        if (!stopped && last) {
            /* release what detok and the stop matcher still hold */
            plen = ms_detok_flush(&dt, piece, sizeof piece);
            int more = 0;
            stopped = ms_stop_push(&sm, piece, plen, delta + dlen, (int)sizeof delta - dlen, &more);
            dlen += more;
            if (!stopped) dlen += ms_stop_flush(&sm, delta + dlen, (int)sizeof delta - dlen);
        }
        s_append_text(out, &text_cap, delta, dlen);
        const bool go_on = on_token ? on_token(tok, delta, dlen, user) : true;
        if (stopped) {
            out->finish = MS_FINISH_STOP;
            break;
        }
        if (eog) {
            out->finish = MS_FINISH_EOG;
            break;
        }
        if (last) {
            out->finish = MS_FINISH_LENGTH;
            break;
        }
        if (!go_on) {
            out->finish = MS_FINISH_CANCEL;
            break;
        }
        double t1 = ms_now_s();
        rc = ms_engine_decode(e, &seq, &tok, 1, logits, err, err_size);
        t_dec += ms_now_s() - t1;
        if (rc != 0) break;
    }
    out->t_decode_ms = t_dec * 1e3;
    ms_sampler_fini(&smp);
    ms_engine_seq_free(e, &seq);
    free(logits);
    if (rc != 0) {
        ms_generate_result_fini(out);
        return -1;
    }
    return 0;
}
