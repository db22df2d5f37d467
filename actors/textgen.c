/* textgen.c — the prefill and decode stages of an actor (see actor.h):
 * PrefillTask → pull features, project, prefill, first token (then keep
 * decoding, or hand the KV off); DecodeTask → pull the KV, import, keep
 * decoding; one continuous batch of running sequences, one decode step per
 * main-loop turn.
 *
 * Equality with ms_engine_generate: ms_gen_sample is the body of the
 * engine's generation loop (same sampler calls, same detokenizer and stop
 * matcher pushes, same end conditions). A task that continues a request
 * (generated[] = g0..g(k-1) already delivered) prefills prompt + g0..g(k-2),
 * replays g0..g(k-1) through the detokenizer and stop matcher silently, sets
 * the RNG to its state after k draws, and feeds g(k-1) in its next decode
 * step: the rows, their order and the sampler draws are those of one
 * uninterrupted run (chunked prefill = stepwise decode on the cpu backends,
 * docs/engine.md). A KV hand-off follows the same rule: the blob holds the
 * prompt + every generated token but the last, which the decode actor feeds.
 * sampling.ignore_eos (benchmarks forcing a length) masks the end-of-generation
 * tokens (s_sample_without_eog); ms_engine_generate has no such option.
 */
#include "actor.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- ms_gen: one generating sequence ------------------------------------------- */

int ms_gen_init(ms_gen *g, ms_engine *e, const ms_sampling_params *sp, char *err, size_t err_size) {
    memset(g, 0, sizeof *g);
    if (ms_sampling_params_validate(sp, err, err_size) != 0) return -1;
    g->sp = *sp;
    if (ms_sampler_init(&g->smp, &g->sp, ms_engine_n_vocab(e)) != 0)
        return ms_errf(err, err_size, "cannot initialise the sampler");
    ms_detok_init(&g->dt, ms_engine_tokenizer(e), false);
    ms_stop_init(&g->sm, &g->sp);
    return 0;
}

void ms_gen_fini(ms_gen *g, ms_engine *e) {
    if (g->seq) ms_engine_seq_free(e, &g->seq);
    ms_sampler_fini(&g->smp);
}

void ms_gen_replay(ms_gen *g, ms_engine *e, const int32_t *ids, int n) {
    const ms_tokenizer *tk = ms_engine_tokenizer(e);
    char piece[MS_ACTOR_TEXT_PIECE], delta[MS_ACTOR_TEXT_BUF];
    for (int i = 0; i < n; i++) {
        const bool eog = ms_tokenizer_is_eog(tk, ids[i]);
        const int plen = eog ? 0 : ms_detok_push(&g->dt, ids[i], piece, sizeof piece);
        int dlen = 0;
        (void)ms_stop_push(&g->sm, piece, plen, delta, (int)sizeof delta, &dlen);
    }
    g->n_generated = n;
    if (n > 0) g->next_tok = ids[n - 1];
}

uint64_t ms_gen_rng_after(uint64_t seed, int n) {
    /* The sampler advances its RNG once per draw whatever the logits (sampler.h):
     * draw n times over a one-token vocabulary. */
    ms_sampling_params p;
    ms_sampling_params_default(&p);
    p.seed = seed;
    ms_sampler s;
    if (ms_sampler_init(&s, &p, 1) != 0) return seed;
    const float logit = 0.0f;
    for (int i = 0; i < n; i++)
        (void)ms_sampler_sample(&s, &logit);
    uint64_t st = ms_sampler_state(&s);
    ms_sampler_fini(&s);
    return st;
}

/* ignore_eos: the same draw (RNG state rng0) over the logits with every
 * end-of-generation token masked out, so that one token still costs one draw
 * (re-dispatch and hand-off restore the RNG by counting tokens). */
static int32_t s_sample_without_eog(ms_gen *g, const ms_tokenizer *tk, const float *logits,
                                    int n_vocab, uint64_t rng0) {
    float *masked = ms_xmalloc((size_t)n_vocab * sizeof *masked);
    for (int i = 0; i < n_vocab; i++)
        masked[i] = ms_tokenizer_is_eog(tk, i) ? -INFINITY : logits[i];
    ms_sampler_set_state(&g->smp, rng0);
    const int32_t tok = ms_sampler_sample(&g->smp, masked);
    free(masked);
    return tok;
}

void ms_gen_sample(ms_gen *g, ms_engine *e, const float *logits, ms_gen_token *out) {
    const ms_tokenizer *tk = ms_engine_tokenizer(e);
    const uint64_t rng0 = ms_sampler_state(&g->smp);
    int32_t tok = ms_sampler_sample(&g->smp, logits);
    if (g->sp.ignore_eos && ms_tokenizer_is_eog(tk, tok))
        tok = s_sample_without_eog(g, tk, logits, ms_engine_n_vocab(e), rng0);
    out->id = tok;
    out->index = g->n_generated++;
    const bool eog = ms_tokenizer_is_eog(tk, tok);
    const bool last = eog || g->n_generated >= g->sp.max_tokens ||
                      (g->seq && g->seq->n_past >= ms_engine_n_ctx(e));
    char piece[MS_ACTOR_TEXT_PIECE];
    int plen = eog ? 0 : ms_detok_push(&g->dt, tok, piece, sizeof piece);
    int dlen = 0;
    const int cap = (int)sizeof out->text;
    bool stopped = ms_stop_push(&g->sm, piece, plen, out->text, cap, &dlen);
    if (!stopped && last) {
        /* release what the detokenizer and the stop matcher still hold */
        plen = ms_detok_flush(&g->dt, piece, sizeof piece);
        int more = 0;
        stopped = ms_stop_push(&g->sm, piece, plen, out->text + dlen, cap - dlen, &more);
        dlen += more;
        if (!stopped) dlen += ms_stop_flush(&g->sm, out->text + dlen, cap - dlen);
    }
    if (dlen >= cap) dlen = cap - 1;
    out->text[dlen] = '\0';
    out->len = dlen;
    out->finished = stopped || eog || last;
    out->finish = stopped ? MS_FINISH_STOP : eog ? MS_FINISH_EOG : MS_FINISH_LENGTH;
    g->next_tok = tok;
    if (out->finished) {
        g->finished = true;
        g->finish = out->finish;
    }
}

int ms_gen_decode_step(ms_engine *e, ms_gen *const *gens, int n, float *logits, ms_gen_token *out,
                       char *err, size_t err_size) {
    if (n <= 0) return 0;
    ms_seq **seqs = ms_xmalloc((size_t)n * sizeof *seqs);
    int32_t *toks = ms_xmalloc((size_t)n * sizeof *toks);
    for (int i = 0; i < n; i++) {
        seqs[i] = gens[i]->seq;
        toks[i] = gens[i]->next_tok;
    }
    int rc = ms_engine_decode(e, seqs, toks, n, logits, err, err_size);
    free(seqs);
    free(toks);
    if (rc != 0) return -1;
    const size_t V = (size_t)ms_engine_n_vocab(e);
    for (int i = 0; i < n; i++)
        ms_gen_sample(gens[i], e, logits + (size_t)i * V, &out[i]);
    return 0;
}

int ms_gen_step_blocks(const ms_engine *e, const ms_seq *seq) {
    const int64_t cap = (int64_t)seq->n_blocks * ms_engine_kv_block_size(e);
    return seq->n_past + 1 > cap ? 1 : 0;
}

/* ---- the stage ---------------------------------------------------------------- */

/* A task waiting to run. */
typedef struct s_task {
    ms_msg msg;         /* PrefillTask or DecodeTask (owned) */
    int64_t rows;       /* prefill: rows to prefill (images expanded); decode: 0 */
    zframe_t *kv_blob;  /* decode: the pulled blob, kept while the KV cache is full */
    int64_t kv_tokens;  /* decode: rows of kv_blob (as its sender declared them) */
    double transfer_ms; /* decode: time the pull took */
    struct s_task *next;
} s_task;

/* A running sequence. */
typedef struct s_run {
    uint64_t rid, task;
    ms_gen gen;            /* must not move: runs are heap-allocated */
    int64_t prompt_tokens; /* prompt rows (images expanded) */
    int64_t image_tokens;  /* of which image rows */
    double transfer_ms, prefill_ms, decode_ms;
} s_run;

struct ms_textgen {
    ms_actor *a;         /* not owned */
    ms_engine *e;        /* a->eng */
    s_task *head, *tail; /* FIFO */
    int n_queued;
    int64_t queued_rows; /* rows of the queued prefill tasks */
    s_run **run;         /* (max_seqs) running sequences, admission order */
    int n_run;
    int max_seqs;
    float *logits;      /* (cap_logits, n_vocab), grown on demand */
    int cap_logits;     /* sequences logits has room for */
    ms_gen **gens;      /* (max_seqs) scratch */
    ms_gen_token *toks; /* (max_seqs) scratch */
    uint64_t kv_serial; /* makes hand-off keys unique */
};

ms_textgen *ms_textgen_new(ms_actor *a) {
    ms_textgen *tg = ms_xcalloc(1, sizeof *tg);
    tg->a = a;
    tg->e = a->eng;
    tg->max_seqs = a->cfg.max_seqs > 0 ? a->cfg.max_seqs : MS_ACTOR_MAX_SEQS_DEFAULT;
    tg->run = ms_xcalloc((size_t)tg->max_seqs, sizeof *tg->run);
    tg->gens = ms_xcalloc((size_t)tg->max_seqs, sizeof *tg->gens);
    tg->toks = ms_xcalloc((size_t)tg->max_seqs, sizeof *tg->toks);
    return tg;
}

static void s_task_free(s_task *t) {
    ms_msg_fini(&t->msg);
    zframe_destroy(&t->kv_blob);
    free(t);
}

static void s_run_free(ms_textgen *tg, s_run *r) {
    ms_gen_fini(&r->gen, tg->e);
    free(r);
}

void ms_textgen_destroy(ms_textgen **tg_p) {
    if (!tg_p || !*tg_p) return;
    ms_textgen *tg = *tg_p;
    while (tg->head) {
        s_task *t = tg->head;
        tg->head = t->next;
        s_task_free(t);
    }
    for (int i = 0; i < tg->n_run; i++)
        s_run_free(tg, tg->run[i]);
    free(tg->run);
    free(tg->logits);
    free(tg->gens);
    free(tg->toks);
    free(tg);
    *tg_p = NULL;
}

static uint64_t s_task_rid(const s_task *t) {
    return t->msg.type == MS_MSG_PREFILL_TASK ? t->msg.prefill_task.rid : t->msg.decode_task.rid;
}

static uint64_t s_task_id(const s_task *t) {
    return t->msg.type == MS_MSG_PREFILL_TASK ? t->msg.prefill_task.task : t->msg.decode_task.task;
}

static void s_enqueue(ms_textgen *tg, s_task *t) {
    t->next = NULL;
    if (tg->tail)
        tg->tail->next = t;
    else
        tg->head = t;
    tg->tail = t;
    tg->n_queued++;
    tg->queued_rows += t->rows;
}

static s_task *s_dequeue(ms_textgen *tg) {
    s_task *t = tg->head;
    if (!t) return NULL;
    tg->head = t->next;
    if (!tg->head) tg->tail = NULL;
    tg->n_queued--;
    tg->queued_rows -= t->rows;
    t->next = NULL;
    return t;
}

static const char *s_finish_name(ms_finish_reason f) {
    switch (f) {
    case MS_FINISH_EOG:
        return ms_wire_finish_name(MS_WIRE_FINISH_EOG);
    case MS_FINISH_LENGTH:
        return ms_wire_finish_name(MS_WIRE_FINISH_LENGTH);
    case MS_FINISH_STOP:
        return ms_wire_finish_name(MS_WIRE_FINISH_STOP);
    case MS_FINISH_CANCEL:
        return ms_wire_finish_name(MS_WIRE_FINISH_CANCEL);
    }
    return ms_wire_finish_name(MS_WIRE_FINISH_LENGTH);
}

/* ---- emitting -------------------------------------------------------------------- */

static void s_send_token(ms_textgen *tg, uint64_t rid, const ms_gen_token *t) {
    ms_msg m;
    ms_msg_init(&m, MS_MSG_TOKEN_OUT);
    int32_t id = t->id;
    m.token_out.rid = rid;
    m.token_out.index = (uint64_t)t->index;
    m.token_out.ids = &id;
    m.token_out.n_ids = 1;
    m.token_out.text = (char *)t->text;
    ms_actor_send(tg->a, &m);
    tg->a->info.tokens_decoded++;
}

static void s_send_done(ms_textgen *tg, const s_run *r) {
    ms_msg m;
    ms_msg_init(&m, MS_MSG_TASK_DONE);
    ms_msg_task_done *d = &m.task_done;
    d->rid = r->rid;
    d->task = r->task;
    d->finish = (char *)s_finish_name(r->gen.finish);
    d->prompt_tokens = (uint64_t)r->prompt_tokens;
    d->image_tokens = (uint64_t)r->image_tokens;
    d->completion_tokens = (uint64_t)r->gen.n_generated;
    d->transfer_ms = r->transfer_ms;
    d->prefill_ms = r->prefill_ms;
    d->decode_ms = r->decode_ms;
    ms_actor_send(tg->a, &m);
    tg->a->info.tasks_done++;
}

/* ---- queueing ---------------------------------------------------------------------- */

/* Takes the message out of in (in keeps a finalized message). */
static s_task *s_task_take(ms_frames_in *in) {
    s_task *t = ms_xcalloc(1, sizeof *t);
    t->msg = in->msg;
    ms_msg_init(&in->msg, MS_MSG_NONE);
    return t;
}

/* Validates a PrefillTask; fills *rows, *image_rows. 0, or -1 + err (a bad request). */
static int s_check_prefill(ms_textgen *tg, const ms_msg_prefill_task *p, int64_t *rows,
                           int64_t *image_rows, char *err, size_t err_size) {
    ms_engine *e = tg->e;
    const unsigned stages = tg->a->cfg.stages;
    if (!(stages & MS_STAGES_PREFILL))
        return ms_errf(err, err_size, "actor %s does not prefill", tg->a->cfg.id);
    const bool handoff = strcmp(p->mode, "handoff") == 0;
    if (!handoff && strcmp(p->mode, "decode") != 0)
        return ms_errf(err, err_size, "mode '%s' (expected decode or handoff)", p->mode);
    if (!handoff && !(stages & MS_STAGES_DECODE))
        return ms_errf(err, err_size, "mode decode, but actor %s does not decode", tg->a->cfg.id);
    ms_sampling_params sp;
    if (ms_wire_sampling_to_params(&p->sampling, &sp, err, err_size) != 0) return -1;
    const uint32_t n_img = p->n_images;
    if (n_img > MS_MAX_IMAGES_PER_PROMPT)
        return ms_errf(err, err_size, "%u images (at most %d)", n_img, MS_MAX_IMAGES_PER_PROMPT);
    if (n_img > 0 && !ms_engine_has_vision(e))
        return ms_errf(err, err_size, "%u images, but actor %s has no vision model", n_img,
                       tg->a->cfg.id);
    bool seen[MS_MAX_IMAGES_PER_PROMPT] = {false};
    for (uint32_t i = 0; i < n_img; i++) {
        const ms_wire_image_ref *im = &p->images[i];
        if (im->index >= n_img || seen[im->index])
            return ms_errf(err, err_size,
                           "images[%u].index %" PRIu64 " (indices must be 0..%u, "
                           "each once)",
                           i, im->index, n_img - 1);
        seen[im->index] = true;
        if (!im->has_data_ep || !im->data_ep || !im->data_ep[0])
            return ms_errf(err, err_size, "images[%u] has no data_ep", i);
    }
    const int T = ms_engine_n_image_tokens(e);
    const int V = ms_engine_n_vocab(e);
    int64_t r = 0, ir = 0;
    for (uint32_t i = 0; i < p->n_prompt; i++) {
        const int32_t id = p->prompt[i];
        if (MS_PROMPT_IS_IMAGE(id)) {
            if (MS_PROMPT_IMAGE_INDEX(id) >= (int32_t)n_img)
                return ms_errf(err, err_size,
                               "prompt entry %u refers to image %d, but %u images "
                               "were given",
                               i, MS_PROMPT_IMAGE_INDEX(id), n_img);
            r += T;
            ir += T;
        } else {
            if (id >= V)
                return ms_errf(err, err_size,
                               "prompt entry %u is token %d, outside the "
                               "vocabulary of %d",
                               i, id, V);
            r++;
        }
    }
    if (r == 0) return ms_errf(err, err_size, "empty prompt");
    for (uint32_t i = 0; i < p->n_generated; i++)
        if (p->generated[i] >= V)
            return ms_errf(err, err_size,
                           "generated[%u] is token %d, outside the vocabulary "
                           "of %d",
                           i, p->generated[i], V);
    const int64_t k = p->n_generated;
    const int64_t total = r + (k > 0 ? k - 1 : 0);
    if (total + (k > 0 ? 1 : 0) > ms_engine_n_ctx(e))
        return ms_errf(err, err_size, "%" PRId64 " prompt rows exceed the context of %d", total,
                       ms_engine_n_ctx(e));
    *rows = total;
    *image_rows = ir;
    return 0;
}

void ms_textgen_on_prefill(ms_textgen *tg, ms_frames_in *in) {
    const ms_msg_prefill_task *p = &in->msg.prefill_task;
    char err[MS_ERR_SIZE];
    int64_t rows = 0, image_rows = 0;
    if (s_check_prefill(tg, p, &rows, &image_rows, err, sizeof err) != 0) {
        ms_actor_task_error(tg->a, p->rid, p->task, MS_CODE_BAD_REQUEST, "%s", err);
        return;
    }
    const int bs = ms_engine_kv_block_size(tg->e);
    const int64_t need = (rows + 1 + bs - 1) / bs;
    if (need > ms_engine_kv_total_blocks(tg->e)) {
        ms_actor_task_error(tg->a, p->rid, p->task, MS_CODE_OVERLOADED,
                            "prompt of %" PRId64 " rows needs %" PRId64 " KV blocks, the cache "
                            "holds %d",
                            rows, need, ms_engine_kv_total_blocks(tg->e));
        return;
    }
    if (tg->n_queued >= MS_ACTOR_QUEUE_MAX) {
        ms_actor_task_error(tg->a, p->rid, p->task, MS_CODE_OVERLOADED,
                            "actor %s has %d tasks queued", tg->a->cfg.id, tg->n_queued);
        return;
    }
    s_task *t = s_task_take(in);
    t->rows = rows;
    s_enqueue(tg, t);
}

void ms_textgen_on_decode(ms_textgen *tg, ms_frames_in *in) {
    const ms_msg_decode_task *d = &in->msg.decode_task;
    char err[MS_ERR_SIZE];
    ms_sampling_params sp;
    if (!(tg->a->cfg.stages & MS_STAGES_DECODE)) {
        ms_actor_task_error(tg->a, d->rid, d->task, MS_CODE_BAD_REQUEST, "actor %s does not decode",
                            tg->a->cfg.id);
        return;
    }
    if (ms_wire_sampling_to_params(&d->sampling, &sp, err, sizeof err) != 0) {
        ms_actor_task_error(tg->a, d->rid, d->task, MS_CODE_BAD_REQUEST, "%s", err);
        return;
    }
    if (d->n_generated == 0 || d->n_generated >= (uint32_t)sp.max_tokens) {
        ms_actor_task_error(tg->a, d->rid, d->task, MS_CODE_BAD_REQUEST,
                            "generated[] holds %u tokens (1 to max_tokens - 1 = %d)",
                            d->n_generated, sp.max_tokens - 1);
        return;
    }
    if (!d->kv_key[0] || !d->data_ep[0]) {
        ms_actor_task_error(tg->a, d->rid, d->task, MS_CODE_BAD_REQUEST,
                            "kv_key and data_ep are required");
        return;
    }
    if (tg->n_queued >= MS_ACTOR_QUEUE_MAX) {
        ms_actor_task_error(tg->a, d->rid, d->task, MS_CODE_OVERLOADED,
                            "actor %s has %d tasks queued", tg->a->cfg.id, tg->n_queued);
        return;
    }
    s_enqueue(tg, s_task_take(in));
}

/* ---- prefill ------------------------------------------------------------------------- */

/* Fetches the features of one image into dst (T * Fv floats): from the own
 * store when ep is this actor's, else by a FeatureGet. 0, or -1 + *code + err. */
static int s_fetch_features(ms_textgen *tg, const ms_wire_image_ref *im, float *dst,
                            ms_wire_code *code, char *err, size_t err_size) {
    ms_actor *a = tg->a;
    const int T = ms_engine_n_image_tokens(tg->e), Fv = ms_engine_feature_dim(tg->e);
    const size_t bytes = (size_t)T * (size_t)Fv * sizeof(float);
    char key[MS_FEATSTORE_KEY_MAX];
    ms_actor_feature_key(im->hash, key);
    if (strcmp(im->data_ep, a->data_ep) == 0) {
        ms_blob_info bi;
        const int64_t now = ms_actor_now_ms();
        if (!ms_featstore_get(a->store, key, now, &bi) || bi.kind != MS_BLOB_FEATURES) {
            *code = MS_CODE_NOT_FOUND;
            return ms_errf(err, err_size, "features %s are not in the local store", key);
        }
        if (bi.n_tokens != T || bi.dim != Fv || bi.bytes != bytes) {
            *code = MS_CODE_INTERNAL;
            return ms_errf(err, err_size, "features %s are (%d, %d), expected (%d, %d)", key,
                           bi.n_tokens, bi.dim, T, Fv);
        }
        memcpy(dst, ms_blobbuf_data(bi.buf), bytes);
        ms_featstore_pulled(a->store, key, now);
        return 0;
    }
    ms_msg req;
    ms_msg_init(&req, MS_MSG_FEATURE_GET);
    req.feature_get.hash = im->hash;
    ms_frames_in in;
    ms_frames_in_init(&in);
    char why[MS_ERR_SIZE];
    if (ms_actor_pull(a, im->data_ep, &req, MS_MSG_FEATURE_DATA, &in, why, sizeof why) != 0) {
        ms_frames_in_fini(&in);
        *code = strstr(why, "not_found") ? MS_CODE_NOT_FOUND : MS_CODE_UNAVAILABLE;
        return ms_errf(err, err_size, "pulling features %s from %s: %s", key, im->data_ep, why);
    }
    const ms_msg_feature_data *fd = &in.msg.feature_data;
    int rc = 0;
    if (fd->hash != im->hash || fd->n_tokens != (uint64_t)T || fd->dim != (uint64_t)Fv ||
        ms_frames_in_size(&in, 0) != bytes) {
        *code = MS_CODE_INTERNAL;
        rc = ms_errf(err, err_size,
                     "features %s from %s are (%" PRIu64 ", %" PRIu64 "), "
                     "expected (%d, %d)",
                     key, im->data_ep, fd->n_tokens, fd->dim, T, Fv);
    } else {
        memcpy(dst, ms_frames_in_data(&in, 0), bytes);
    }
    ms_frames_in_fini(&in);
    return rc;
}

/* Hands a sequence's KV to the store and tells the broker (PrefillDone). */
static int s_handoff(ms_textgen *tg, const ms_msg_prefill_task *p, s_run *r) {
    ms_actor *a = tg->a;
    char err[MS_ERR_SIZE];
    const size_t len = ms_engine_seq_export_size(tg->e, r->gen.seq);
    ms_blobbuf *buf = ms_blobbuf_new(len);
    if (ms_engine_seq_export(tg->e, r->gen.seq, ms_blobbuf_data(buf), len, err, sizeof err) != 0) {
        ms_blobbuf_unref(&buf);
        ms_actor_task_error(a, p->rid, p->task, MS_CODE_INTERNAL, "KV export: %s", err);
        return -1;
    }
    char key[MS_FEATSTORE_KEY_MAX];
    snprintf(key, sizeof key, "kv:%s:%" PRIu64 ":%" PRIu64 ":%" PRIu64, a->cfg.id, p->rid, p->task,
             ++tg->kv_serial);
    if (ms_featstore_put(a->store, key, MS_BLOB_KV, &buf, r->gen.seq->n_past, 0, ms_actor_now_ms(),
                         err, sizeof err) != 0) {
        ms_blobbuf_unref(&buf);
        ms_actor_task_error(a, p->rid, p->task, MS_CODE_OVERLOADED, "KV hand-off: %s", err);
        return -1;
    }
    /* generated[] so far: what the task brought, or the first token sampled here */
    const int k = r->gen.n_generated;
    int32_t *gen = ms_xmalloc((size_t)k * sizeof *gen);
    if (p->n_generated > 0)
        memcpy(gen, p->generated, (size_t)k * sizeof *gen);
    else
        gen[0] = r->gen.next_tok;
    ms_msg m;
    ms_msg_init(&m, MS_MSG_PREFILL_DONE);
    ms_msg_prefill_done *d = &m.prefill_done;
    d->rid = p->rid;
    d->task = p->task;
    d->kv_key = key;
    d->data_ep = a->data_ep;
    d->sampler_state = ms_sampler_state(&r->gen.smp);
    d->generated = gen;
    d->n_generated = (uint32_t)k;
    d->prompt_tokens = (uint64_t)r->prompt_tokens;
    d->image_tokens = (uint64_t)r->image_tokens;
    d->transfer_ms = r->transfer_ms;
    d->prefill_ms = r->prefill_ms;
    ms_actor_send(a, &m);
    free(gen);
    a->info.tasks_done++;
    return 0;
}

/* Runs a PrefillTask: pulls, projects, prefills, samples the first token,
 * then joins the batch (mode decode) or hands off. The task is consumed. */
static void s_run_prefill(ms_textgen *tg, s_task *t) {
    ms_actor *a = tg->a;
    ms_engine *e = tg->e;
    const ms_msg_prefill_task *p = &t->msg.prefill_task;
    const bool handoff = strcmp(p->mode, "handoff") == 0;
    const int T = ms_engine_n_image_tokens(e);
    char err[MS_ERR_SIZE];
    ms_wire_code code = MS_CODE_INTERNAL;
    float *feats = NULL, *embd = NULL, *logits = NULL;
    int32_t *prompt = NULL;
    s_run *r = ms_xcalloc(1, sizeof *r);
    r->rid = p->rid;
    r->task = p->task;

    ms_sampling_params sp;
    if (ms_wire_sampling_to_params(&p->sampling, &sp, err, sizeof err) != 0 ||
        ms_gen_init(&r->gen, e, &sp, err, sizeof err) != 0) {
        code = MS_CODE_BAD_REQUEST;
        goto fail;
    }
    const int k = (int)p->n_generated;
    if (k >= sp.max_tokens) { /* already complete: nothing left to generate */
        ms_gen_replay(&r->gen, e, p->generated, k);
        r->gen.finished = true;
        r->gen.finish = MS_FINISH_LENGTH;
        s_send_done(tg, r);
        s_run_free(tg, r);
        s_task_free(t);
        return;
    }

    /* features: pulled peer to peer, in request order */
    const int n_img = (int)p->n_images;
    const double t0 = ms_now_s();
    if (n_img > 0) {
        const size_t per = (size_t)T * (size_t)ms_engine_feature_dim(e);
        feats = ms_xmalloc((size_t)n_img * per * sizeof(float));
        for (int i = 0; i < n_img; i++) {
            const ms_wire_image_ref *im = &p->images[i];
            if (s_fetch_features(tg, im, feats + (size_t)im->index * per, &code, err, sizeof err) !=
                0)
                goto fail;
        }
    }
    const double t1 = ms_now_s();
    r->transfer_ms = (t1 - t0) * 1e3;
    if (n_img > 0) {
        embd = ms_xmalloc((size_t)n_img * (size_t)T * (size_t)ms_engine_n_embd(e) * sizeof(float));
        if (ms_engine_project(e, feats, n_img, embd, err, sizeof err) != 0) goto fail;
    }

    /* prompt + every delivered token but the last */
    const int n_prompt = (int)p->n_prompt + (k > 0 ? k - 1 : 0);
    prompt = ms_xmalloc((size_t)n_prompt * sizeof *prompt);
    memcpy(prompt, p->prompt, (size_t)p->n_prompt * sizeof *prompt);
    if (k > 1) memcpy(prompt + p->n_prompt, p->generated, (size_t)(k - 1) * sizeof *prompt);
    for (uint32_t i = 0; i < p->n_prompt; i++) {
        if (MS_PROMPT_IS_IMAGE(p->prompt[i])) r->image_tokens += T;
        r->prompt_tokens += MS_PROMPT_IS_IMAGE(p->prompt[i]) ? T : 1;
    }
    if (k == 0) logits = ms_xmalloc((size_t)ms_engine_n_vocab(e) * sizeof(float));
    r->gen.seq = ms_engine_seq_new(e);
    if (ms_engine_prefill(e, r->gen.seq, prompt, n_prompt, embd, n_img, logits, err, sizeof err) !=
        0) {
        code = strncmp(err, "KV cache full", 13) == 0 ? MS_CODE_OVERLOADED : MS_CODE_BAD_REQUEST;
        goto fail;
    }
    r->prefill_ms = (ms_now_s() - t1) * 1e3;
    a->info.requests_prefilled++;
    free(feats);
    free(embd);
    free(prompt);
    feats = embd = NULL;
    prompt = NULL;

    if (k == 0) {
        ms_gen_token tok;
        ms_gen_sample(&r->gen, e, logits, &tok);
        free(logits);
        logits = NULL;
        s_send_token(tg, r->rid, &tok);
        if (tok.finished) {
            s_send_done(tg, r);
            s_run_free(tg, r);
            s_task_free(t);
            return;
        }
    } else {
        ms_gen_replay(&r->gen, e, p->generated, k);
        ms_sampler_set_state(&r->gen.smp, ms_gen_rng_after(sp.seed, k));
    }
    if (handoff) {
        (void)s_handoff(tg, p, r);
        s_run_free(tg, r);
    } else {
        tg->run[tg->n_run++] = r;
    }
    s_task_free(t);
    return;

fail:
    ms_actor_task_error(a, p->rid, p->task, code, "%s", err);
    free(feats);
    free(embd);
    free(prompt);
    free(logits);
    s_run_free(tg, r);
    s_task_free(t);
}

/* ---- decode admission ------------------------------------------------------------------ */

/* Pulls the KV blob of a DecodeTask into t->kv_blob (own store or KvGet).
 * 0, or -1 + *code + err. */
static int s_fetch_kv(ms_textgen *tg, s_task *t, ms_wire_code *code, char *err, size_t err_size) {
    ms_actor *a = tg->a;
    const ms_msg_decode_task *d = &t->msg.decode_task;
    const double t0 = ms_now_s();
    if (strcmp(d->data_ep, a->data_ep) == 0) {
        ms_blob_info bi;
        const int64_t now = ms_actor_now_ms();
        if (!ms_featstore_get(a->store, d->kv_key, now, &bi) || bi.kind != MS_BLOB_KV) {
            *code = MS_CODE_NOT_FOUND;
            return ms_errf(err, err_size, "KV '%s' is not in the local store", d->kv_key);
        }
        t->kv_blob = zframe_new(ms_blobbuf_data(bi.buf), bi.bytes);
        t->kv_tokens = bi.n_tokens;
        ms_featstore_pulled(a->store, d->kv_key, now);
    } else {
        ms_msg req;
        ms_msg_init(&req, MS_MSG_KV_GET);
        req.kv_get.key = d->kv_key;
        req.kv_get.release = true;
        req.kv_get.has_release = true;
        ms_frames_in in;
        ms_frames_in_init(&in);
        char why[MS_ERR_SIZE];
        if (ms_actor_pull(a, d->data_ep, &req, MS_MSG_KV_DATA, &in, why, sizeof why) != 0) {
            ms_frames_in_fini(&in);
            *code = strstr(why, "not_found") ? MS_CODE_NOT_FOUND : MS_CODE_UNAVAILABLE;
            return ms_errf(err, err_size, "pulling KV '%s' from %s: %s", d->kv_key, d->data_ep,
                           why);
        }
        t->kv_blob = ms_frames_in_take(&in, 0);
        t->kv_tokens = (int64_t)in.msg.kv_data.n_tokens;
        const bool same_key = strcmp(in.msg.kv_data.key, d->kv_key) == 0;
        ms_frames_in_fini(&in);
        if (!same_key) {
            zframe_destroy(&t->kv_blob);
            *code = MS_CODE_INTERNAL;
            return ms_errf(err, err_size, "KV '%s' from %s: the reply names another key", d->kv_key,
                           d->data_ep);
        }
        if (!t->kv_blob) {
            *code = MS_CODE_INTERNAL;
            return ms_errf(err, err_size, "KV '%s' from %s: no payload", d->kv_key, d->data_ep);
        }
    }
    t->transfer_ms += (ms_now_s() - t0) * 1e3;
    return 0;
}

/* Imports a DecodeTask's KV and joins the batch. Returns 1 if the task was
 * consumed (joined or answered), 0 if it must wait for KV blocks. */
static int s_run_decode(ms_textgen *tg, s_task *t) {
    ms_actor *a = tg->a;
    ms_engine *e = tg->e;
    const ms_msg_decode_task *d = &t->msg.decode_task;
    char err[MS_ERR_SIZE];
    ms_wire_code code = MS_CODE_INTERNAL;
    if (!t->kv_blob && s_fetch_kv(tg, t, &code, err, sizeof err) != 0) {
        ms_actor_task_error(a, d->rid, d->task, code, "%s", err);
        return 1;
    }
    /* KV blocks the import and the first step need (the engine checks the blob itself) */
    const size_t blen = zframe_size(t->kv_blob);
    const uint8_t *bb = zframe_data(t->kv_blob);
    const int bs = ms_engine_kv_block_size(e);
    const int64_t need = (t->kv_tokens + 1 + bs - 1) / bs;
    if (need > ms_engine_kv_free_blocks(e) && tg->n_run > 0) return 0; /* wait */
    s_run *r = ms_xcalloc(1, sizeof *r);
    r->rid = d->rid;
    r->task = d->task;
    r->transfer_ms = t->transfer_ms;
    r->prompt_tokens = (int64_t)d->prompt_tokens;
    r->image_tokens = (int64_t)d->image_tokens;
    ms_sampling_params sp;
    if (ms_wire_sampling_to_params(&d->sampling, &sp, err, sizeof err) != 0 ||
        ms_gen_init(&r->gen, e, &sp, err, sizeof err) != 0) {
        ms_actor_task_error(a, d->rid, d->task, MS_CODE_BAD_REQUEST, "%s", err);
        s_run_free(tg, r);
        return 1;
    }
    r->gen.seq = ms_engine_seq_import(e, bb, blen, err, sizeof err);
    if (!r->gen.seq) {
        const bool full = strncmp(err, "KV cache full", 13) == 0;
        if (full && tg->n_run > 0) {
            s_run_free(tg, r);
            return 0;
        }
        ms_actor_task_error(a, d->rid, d->task, full ? MS_CODE_OVERLOADED : MS_CODE_BAD_REQUEST,
                            "%s", err);
        s_run_free(tg, r);
        return 1;
    }
    ms_gen_replay(&r->gen, e, d->generated, (int)d->n_generated);
    ms_sampler_set_state(&r->gen.smp, d->sampler_state);
    tg->run[tg->n_run++] = r;
    return 1;
}

/* ---- the batch ------------------------------------------------------------------------- */

/* Removes run i (order kept) and frees it. */
static void s_run_remove(ms_textgen *tg, int i) {
    s_run *r = tg->run[i];
    memmove(&tg->run[i], &tg->run[i + 1], (size_t)(tg->n_run - i - 1) * sizeof *tg->run);
    tg->n_run--;
    s_run_free(tg, r);
}

/* One decode step over every running sequence. */
static void s_step(ms_textgen *tg) {
    ms_actor *a = tg->a;
    ms_engine *e = tg->e;
    /* make room: the newest sequences go back to the broker while the step
     * would need more KV blocks than are free */
    for (;;) {
        int need = 0;
        for (int i = 0; i < tg->n_run; i++)
            need += ms_gen_step_blocks(e, tg->run[i]->gen.seq);
        if (need <= ms_engine_kv_free_blocks(e) || tg->n_run == 0) break;
        s_run *r = tg->run[tg->n_run - 1];
        ms_actor_task_error(a, r->rid, r->task, MS_CODE_OVERLOADED,
                            "KV cache full on actor %s (%d blocks free, %d needed): sequence "
                            "handed back after %d tokens",
                            a->cfg.id, ms_engine_kv_free_blocks(e), need, r->gen.n_generated);
        s_run_remove(tg, tg->n_run - 1);
    }
    const int n = tg->n_run;
    if (n == 0) return;
    for (int i = 0; i < n; i++)
        tg->gens[i] = &tg->run[i]->gen;
    if (n > tg->cap_logits) {
        tg->cap_logits = MS_MIN(tg->max_seqs, MS_MAX(n, 2 * tg->cap_logits));
        const size_t V = (size_t)ms_engine_n_vocab(e);
        tg->logits = ms_xrealloc(tg->logits, (size_t)tg->cap_logits * V * sizeof(float));
    }
    char err[MS_ERR_SIZE];
    const double t0 = ms_now_s();
    if (ms_gen_decode_step(e, tg->gens, n, tg->logits, tg->toks, err, sizeof err) != 0) {
        const ms_wire_code code =
            strncmp(err, "KV cache full", 13) == 0 ? MS_CODE_OVERLOADED : MS_CODE_INTERNAL;
        while (tg->n_run > 0) {
            s_run *r = tg->run[tg->n_run - 1];
            ms_actor_task_error(a, r->rid, r->task, code, "decode: %s", err);
            s_run_remove(tg, tg->n_run - 1);
        }
        return;
    }
    const double dt = (ms_now_s() - t0) * 1e3;
    for (int i = 0; i < n; i++) {
        s_run *r = tg->run[i];
        r->decode_ms += dt;
        s_send_token(tg, r->rid, &tg->toks[i]);
    }
    for (int i = n - 1; i >= 0; i--) {
        if (!tg->toks[i].finished) continue;
        s_send_done(tg, tg->run[i]);
        s_run_remove(tg, i);
    }
}

/* Starts the task at the head of the queue if it can be admitted now.
 * Returns true if one was consumed. */
static bool s_admit(ms_textgen *tg) {
    s_task *t = tg->head;
    if (!t) return false;
    ms_engine *e = tg->e;
    if (t->msg.type == MS_MSG_PREFILL_TASK) {
        const bool handoff = strcmp(t->msg.prefill_task.mode, "handoff") == 0;
        if (!handoff && tg->n_run >= tg->max_seqs) return false;
        const int bs = ms_engine_kv_block_size(e);
        const int64_t need = (t->rows + 1 + bs - 1) / bs;
        if (need > ms_engine_kv_free_blocks(e) && tg->n_run > 0) return false;
        s_run_prefill(tg, s_dequeue(tg));
        return true;
    }
    if (tg->n_run >= tg->max_seqs) return false;
    if (s_run_decode(tg, t) == 0) return false; /* waits for KV blocks (blob kept) */
    s_task_free(s_dequeue(tg));
    return true;
}

bool ms_textgen_work(ms_textgen *tg) {
    bool did = s_admit(tg);
    if (tg->n_run > 0) {
        s_step(tg);
        did = true;
    }
    return did;
}

bool ms_textgen_busy(const ms_textgen *tg) {
    return tg->n_queued > 0 || tg->n_run > 0;
}

void ms_textgen_cancel(ms_textgen *tg, uint64_t rid) {
    s_task **pp = &tg->head;
    tg->tail = NULL;
    while (*pp) {
        s_task *t = *pp;
        if (s_task_rid(t) == rid) {
            *pp = t->next;
            tg->n_queued--;
            tg->queued_rows -= t->rows;
            s_task_free(t);
        } else {
            tg->tail = t;
            pp = &t->next;
        }
    }
    for (int i = tg->n_run - 1; i >= 0; i--)
        if (tg->run[i]->rid == rid) s_run_remove(tg, i);
}

void ms_textgen_hand_back(ms_textgen *tg, bool running) {
    s_task *t;
    while ((t = s_dequeue(tg))) {
        ms_actor_task_error(tg->a, s_task_rid(t), s_task_id(t), MS_CODE_DRAINING,
                            "actor %s is draining", tg->a->cfg.id);
        s_task_free(t);
    }
    if (!running) return;
    while (tg->n_run > 0) {
        s_run *r = tg->run[tg->n_run - 1];
        ms_actor_task_error(tg->a, r->rid, r->task, MS_CODE_DRAINING,
                            "actor %s is draining: %d tokens generated", tg->a->cfg.id,
                            r->gen.n_generated);
        s_run_remove(tg, tg->n_run - 1);
    }
}

int64_t ms_textgen_queued_prompt_tokens(const ms_textgen *tg) {
    return tg->queued_rows;
}

int ms_textgen_running(const ms_textgen *tg) {
    return tg->n_run;
}
