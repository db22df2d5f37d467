/* broker_sched.c — the stage queues and dispatch, task records and their
 * load charges, retries, re-dispatch and request endings (broker_int.h).
 *
 * Every decision goes through the pure policies (policy.h): routing
 * (ms_policy_route_encode / _text / _decode), decode admission
 * (ms_policy_admit_decode), batch caps (ms_policy_batch_cap, applied as the
 * per-actor limits that route_* honour) and slack order (ms_pqueue). This
 * file only keeps the books: what was sent where, and what to do when it
 * comes back or does not.
 *
 * Queues do not let a request overtake the one in front of it: when the head
 * of a stage's queue cannot be placed (every actor at its cap, or none
 * alive), dispatch of that stage stops until something changes.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_int.h"
#include "prompt.h"

#define S_KEY_MAX 24 /* "%016" PRIx64 + NUL */

/* ---- small helpers ------------------------------------------------------- */

static void s_task_key(uint64_t task, char key[S_KEY_MAX]) {
    snprintf(key, S_KEY_MAX, "%016" PRIx64, task);
}

static ms_stage s_queue_stage(ms_req_queue q) {
    switch (q) {
    case MS_REQQ_ENCODE:
        return MS_STAGE_ENCODE;
    case MS_REQQ_PREFILL:
        return MS_STAGE_PREFILL;
    case MS_REQQ_DECODE:
        return MS_STAGE_DECODE;
    case MS_REQQ_NONE:
        break;
    }
    return MS_STAGE_COUNT;
}

/* Smallest positive of a and b (0 = unlimited). */
static int64_t s_min_pos(int64_t a, int64_t b) {
    if (a <= 0) return b;
    if (b <= 0) return a;
    return MS_MIN(a, b);
}

/* The RNG state after n draws from seed: what a sampler that produced the n
 * tokens of generated[] holds (sampler.h: every draw advances it once). */
static uint64_t s_sampler_state_after(const ms_sampling_params *sp, int n) {
    ms_sampler s;
    if (ms_sampler_init(&s, sp, 1) != 0) return sp->seed;
    const float logit = 0.0f;
    for (int i = 0; i < n; i++)
        (void)ms_sampler_sample(&s, &logit);
    uint64_t st = ms_sampler_state(&s);
    ms_sampler_fini(&s);
    return st;
}

static void s_sampling_free(ms_wire_sampling *w) {
    for (uint32_t i = 0; i < w->n_stop; i++)
        free(w->stop[i]);
    free(w->stop);
    w->stop = NULL;
    w->n_stop = 0;
}

ms_stage ms_broker_req_stage(const ms_broker *b, const ms_req *r) {
    (void)b;
    return s_queue_stage(r->queue);
}

void ms_broker_req_view(const ms_broker *b, const ms_req *r, ms_req_view *v, int32_t *img_tok) {
    memset(v, 0, sizeof(*v));
    v->rid = r->rid;
    v->arrival_ms = r->t_arrival_ms;
    v->ttft_deadline_ms = r->t_arrival_ms + r->ttft_ms;
    v->tbt_ms = r->tbt_ms;
    v->modality = r->n_images > 0 ? MS_MODALITY_IMAGE : MS_MODALITY_TEXT;
    v->n_images = r->n_images;
    for (int i = 0; i < r->n_images; i++)
        img_tok[i] = r->images[i].n_tokens;
    v->image_tokens = r->n_images > 0 ? img_tok : NULL;
    /* a re-prefill also feeds the tokens already generated */
    v->prompt_tokens = r->text_tokens + r->image_tokens + r->n_generated;
    v->max_tokens = MS_MAX(1, r->sp.max_tokens - r->n_generated);
    (void)b;
}

bool ms_broker_stage_has_actor(const ms_broker *b, ms_stage stage, int64_t now_ms) {
    uint32_t need = ms_layout_stages_for(b->layout->layout, stage);
    for (int i = 0; i < b->n_slots; i++) {
        const ms_bactor *a = &b->actors[i];
        if (ms_broker_actor_usable(b, i, now_ms) && (a->stages & need) == need) return true;
    }
    return false;
}

/* Views of every slot for the policies; `avoid` (>= 0) is hidden. Free KV
 * blocks: the actor's last report minus the sequences it cannot have
 * counted yet (no token from them before the report). */
static void s_views(ms_broker *b, int64_t now, int avoid, ms_actor_view *v) {
    int64_t unreported[MS_BROKER_MAX_ACTORS] = {0};
    for (ms_btask *t = zhashx_first(b->tasks); t; t = zhashx_next(b->tasks))
        if (t->seq && (t->t_first_ms == 0 || t->t_first_ms > b->actors[t->actor].t_report_ms))
            unreported[t->actor] += t->kv_blocks;
    /* monolith: requests encoding at an actor will prefill there too */
    int64_t reserved[MS_BROKER_MAX_ACTORS] = {0};
    if (!b->layout->split_images)
        for (const ms_req *r = b->reqs.head; r; r = r->next)
            if (r->text_actor >= 0 && r->text_task == 0 && !r->kv_key)
                reserved[r->text_actor] += r->text_tokens + r->image_tokens + r->n_generated;
    for (int i = 0; i < b->n_slots; i++) {
        const ms_bactor *a = &b->actors[i];
        ms_actor_view *x = &v[i];
        memset(x, 0, sizeof(*x));
        x->id = i;
        x->stages = a->stages;
        x->state = a->draining ? MS_ACTOR_DRAINING : MS_ACTOR_UP;
        x->alive =
            i != avoid && a->used && a->alive && now >= a->unreachable_until_ms && a->stages != 0;
        x->queued_image_tokens = MS_MAX(0, a->pend_image_tokens);
        x->queued_prompt_tokens = MS_MAX(0, a->pend_prompt_tokens) + reserved[i];
        x->running_seqs = MS_MAX(0, a->running_seqs);
        int64_t free_kv = a->has_kv_report ? a->reg_free_kv_blocks - unreported[i] : INT32_MAX;
        x->free_kv_blocks = (int32_t)MS_MAX(0, MS_MIN(free_kv, INT32_MAX));
        for (int s = 0; s < MS_STAGE_COUNT; s++)
            x->inflight[s] = MS_MAX(0, a->inflight[s]);
    }
}

/* ---- queues -------------------------------------------------------------- */

static void s_enqueue(ms_broker *b, ms_req *r, ms_req_queue q) {
    assert(r->queue == MS_REQQ_NONE && q != MS_REQQ_NONE);
    ms_stage st = s_queue_stage(q);
    ms_req_view v;
    int32_t tok[MS_MAX_IMAGES_PER_PROMPT];
    ms_broker_req_view(b, r, &v, tok);
    int64_t units = 0;
    if (q == MS_REQQ_ENCODE)
        for (int i = 0; i < r->n_images; i++)
            units += r->images[i].state == MS_IMG_PENDING;
    ms_pq_item it = ms_pq_item_make(&b->prof, st, &v, 0, units);
    ms_pqueue_push(&b->q[st], &it);
    r->queue = q;
    r->t_enqueued_ns = ms_now_ns();
}

static void s_dequeue(ms_broker *b, ms_req *r) {
    if (r->queue == MS_REQQ_NONE) return;
    ms_pqueue_remove_rid(&b->q[s_queue_stage(r->queue)], r->rid);
    r->queue_ms += (double)(ms_now_ns() - r->t_enqueued_ns) / 1e6;
    r->queue = MS_REQQ_NONE;
}

/* ---- tasks ----------------------------------------------------------------- */

ms_btask *ms_broker_task(ms_broker *b, uint64_t task) {
    char key[S_KEY_MAX];
    s_task_key(task, key);
    return zhashx_lookup(b->tasks, key);
}

static ms_btask *s_task_new(ms_broker *b, ms_req *r, int slot, ms_stage stage) {
    ms_btask *t = ms_xcalloc(1, sizeof(*t));
    t->task = b->next_task++;
    t->rid = r->rid;
    t->actor = slot;
    t->stage = stage;
    char key[S_KEY_MAX];
    s_task_key(t->task, key);
    zhashx_insert(b->tasks, key, t);
    b->actors[slot].inflight[stage]++;
    b->actors[slot].routed[stage]++;
    return t;
}

void ms_broker_task_prefilled(ms_broker *b, ms_btask *t) {
    if (!t) return;
    b->actors[t->actor].pend_prompt_tokens -= t->prompt_tokens;
    t->prompt_tokens = 0;
}

void ms_broker_task_end(ms_broker *b, ms_btask *t) {
    if (!t) return;
    ms_bactor *a = &b->actors[t->actor];
    a->pend_image_tokens -= t->image_tokens;
    a->pend_prompt_tokens -= t->prompt_tokens;
    if (t->seq) {
        a->running_seqs--;
    }
    a->inflight[t->stage]--;
    char key[S_KEY_MAX];
    s_task_key(t->task, key);
    zhashx_delete(b->tasks, key); /* frees t */
}

/* ---- images ------------------------------------------------------------------ */

/* True if every image is ready at an actor that is still alive. */
static bool s_images_alive(const ms_broker *b, const ms_req *r) {
    for (int i = 0; i < r->n_images; i++) {
        const ms_req_image *im = &r->images[i];
        if (im->state != MS_IMG_READY || im->actor < 0 || !b->actors[im->actor].alive) return false;
    }
    return true;
}

/* Puts back to PENDING every image not ready or encoding at a live actor;
 * returns how many are pending now. */
static int s_images_reset_lost(const ms_broker *b, ms_req *r) {
    int pending = 0;
    for (int i = 0; i < r->n_images; i++) {
        ms_req_image *im = &r->images[i];
        bool held = im->state != MS_IMG_PENDING && im->actor >= 0 && b->actors[im->actor].alive;
        if (!held) {
            im->state = MS_IMG_PENDING;
            im->actor = -1;
            im->task = 0;
        }
        pending += im->state == MS_IMG_PENDING;
    }
    return pending;
}

/* Sends the request's images at positions idx[0..n) to slot as one
 * EncodeTask. 0, or -1 (send failed; nothing changed). */
static int s_send_encode(ms_broker *b, ms_req *r, int slot, const int *idx, int n) {
    ms_wire_image_ref refs[MS_MAX_IMAGES_PER_PROMPT];
    const void *data[MS_MAX_IMAGES_PER_PROMPT];
    size_t len[MS_MAX_IMAGES_PER_PROMPT];
    int64_t tokens = 0;
    for (int k = 0; k < n; k++) {
        ms_req_image *im = &r->images[idx[k]];
        memset(&refs[k], 0, sizeof(refs[k]));
        refs[k].index = (uint64_t)idx[k];
        refs[k].hash = im->hash;
        data[k] = zframe_data(im->bytes);
        len[k] = zframe_size(im->bytes);
        tokens += im->n_tokens;
    }
    ms_btask *t = s_task_new(b, r, slot, MS_STAGE_ENCODE);
    ms_msg m;
    ms_msg_init(&m, MS_MSG_ENCODE_TASK);
    m.encode_task.rid = r->rid;
    m.encode_task.task = t->task;
    m.encode_task.images = refs;
    m.encode_task.n_images = (uint32_t)n;
    if (ms_broker_send_actor(b, slot, &m, data, len, (size_t)n) != 0) {
        ms_broker_task_end(b, t);
        return -1;
    }
    t->image_tokens = tokens;
    b->actors[slot].pend_image_tokens += tokens;
    for (int k = 0; k < n; k++) {
        ms_req_image *im = &r->images[idx[k]];
        im->state = MS_IMG_ENCODING;
        im->actor = slot;
        im->task = t->task;
    }
    if (r->state == MS_REQ_QUEUED || r->state == MS_REQ_ENCODED) r->state = MS_REQ_ENCODING;
    b->c.encode_tasks++;
    ms_debug("broker: rid %" PRIu64 ": %d image(s) -> %s (task %" PRIu64 ")", r->rid, n,
             b->actors[slot].id, t->task);
    return 0;
}

/* Sends the pending images of r placed by out_actor[k] (for pending image
 * k = idx[k]), one EncodeTask per encoder. Returns images left pending. */
static int s_send_encode_split(ms_broker *b, ms_req *r, const int *idx, const int32_t *out_actor,
                               int np) {
    bool done[MS_MAX_IMAGES_PER_PROMPT] = {false};
    int left = 0;
    for (int k = 0; k < np; k++) {
        if (done[k]) continue;
        int slot = out_actor[k];
        int group[MS_MAX_IMAGES_PER_PROMPT];
        int ng = 0;
        for (int j = k; j < np; j++)
            if (!done[j] && out_actor[j] == slot) {
                group[ng++] = idx[j];
                done[j] = true;
            }
        if (s_send_encode(b, r, slot, group, ng) != 0) left += ng;
    }
    return left;
}

/* ---- prefill / decode dispatch -------------------------------------------------- */

/* Sends r's PrefillTask to slot. 0, or -1 (send failed; nothing changed). */
static int s_send_prefill(ms_broker *b, ms_req *r, int slot) {
    const bool handoff = b->layout->decode_handoff;
    ms_wire_image_ref refs[MS_MAX_IMAGES_PER_PROMPT];
    for (int i = 0; i < r->n_images; i++) {
        const ms_req_image *im = &r->images[i];
        memset(&refs[i], 0, sizeof(refs[i]));
        refs[i].index = (uint64_t)i;
        refs[i].hash = im->hash;
        refs[i].has_n_tokens = true;
        refs[i].n_tokens = (uint64_t)im->n_tokens;
        refs[i].has_data_ep = true;
        refs[i].data_ep = b->actors[im->actor].data_ep;
    }
    ms_btask *t = s_task_new(b, r, slot, MS_STAGE_PREFILL);
    ms_msg m;
    ms_msg_init(&m, MS_MSG_PREFILL_TASK);
    ms_msg_prefill_task *p = &m.prefill_task;
    p->rid = r->rid;
    p->task = t->task;
    p->prompt = r->prompt;
    p->n_prompt = (uint32_t)r->n_prompt;
    p->images = refs;
    p->n_images = (uint32_t)r->n_images;
    ms_wire_sampling_from_params(&r->sp, &p->sampling);
    p->sampler_state =
        r->n_generated > 0 ? s_sampler_state_after(&r->sp, r->n_generated) : r->sp.seed;
    p->generated = r->generated;
    p->n_generated = (uint32_t)r->n_generated;
    p->mode = handoff ? "handoff" : "decode";
    int rc = ms_broker_send_actor(b, slot, &m, NULL, NULL, 0);
    s_sampling_free(&p->sampling);
    if (rc != 0) {
        ms_broker_task_end(b, t);
        return -1;
    }
    ms_bactor *a = &b->actors[slot];
    t->prompt_tokens = r->text_tokens + r->image_tokens + r->n_generated;
    a->pend_prompt_tokens += t->prompt_tokens;
    if (!handoff) { /* the text instance keeps decoding it */
        t->seq = true;
        t->kv_blocks = r->kv_blocks;
        a->running_seqs++;
    }
    r->text_actor = slot;
    r->decode_actor = -1;
    r->text_task = t->task;
    r->avoid_actor = -1;
    r->state = MS_REQ_PREFILLING;
    b->c.prefill_tasks++;
    ms_debug("broker: rid %" PRIu64 ": prefill -> %s (task %" PRIu64 ", %d generated)", r->rid,
             a->id, t->task, r->n_generated);
    return 0;
}

/* Sends r's DecodeTask to slot (disagg). 0 or -1 (send failed). */
static int s_send_decode(ms_broker *b, ms_req *r, int slot) {
    ms_btask *t = s_task_new(b, r, slot, MS_STAGE_DECODE);
    ms_msg m;
    ms_msg_init(&m, MS_MSG_DECODE_TASK);
    ms_msg_decode_task *d = &m.decode_task;
    d->rid = r->rid;
    d->task = t->task;
    d->kv_key = r->kv_key;
    d->data_ep = r->kv_ep;
    ms_wire_sampling_from_params(&r->sp, &d->sampling);
    d->sampler_state = r->kv_sampler_state;
    d->generated = r->generated;
    d->n_generated = (uint32_t)r->n_generated;
    d->prompt_tokens = (uint64_t)(r->text_tokens + r->image_tokens);
    d->image_tokens = (uint64_t)r->image_tokens;
    int rc = ms_broker_send_actor(b, slot, &m, NULL, NULL, 0);
    s_sampling_free(&d->sampling);
    if (rc != 0) {
        ms_broker_task_end(b, t);
        return -1;
    }
    ms_bactor *a = &b->actors[slot];
    t->seq = true;
    t->kv_blocks = r->kv_blocks;
    a->running_seqs++;
    r->decode_actor = slot;
    r->text_task = t->task;
    r->avoid_actor = -1;
    r->state = MS_REQ_DECODING;
    b->c.decode_tasks++;
    ms_debug("broker: rid %" PRIu64 ": decode -> %s (task %" PRIu64 ")", r->rid, a->id, t->task);
    return 0;
}

/* Queues r for (re-)prefill: forgets its text side and, if some image's
 * features are gone with their encoder, re-encodes those first. */
static void s_reprefill(ms_broker *b, ms_req *r) {
    s_dequeue(b, r);
    r->text_task = 0;
    r->text_actor = -1;
    r->decode_actor = -1;
    free(r->kv_key);
    free(r->kv_ep);
    r->kv_key = r->kv_ep = NULL;
    if (r->n_images > 0 && !s_images_alive(b, r)) {
        if (s_images_reset_lost(b, r) > 0) {
            r->state = MS_REQ_ENCODING;
            s_enqueue(b, r, MS_REQQ_ENCODE);
        } else {
            r->state = MS_REQ_ENCODING; /* waiting for encodes in flight */
        }
        return;
    }
    r->state = r->n_images > 0 ? MS_REQ_ENCODED : MS_REQ_QUEUED;
    s_enqueue(b, r, MS_REQQ_PREFILL);
}

/* ---- the dispatch passes ------------------------------------------------------ */

/* The request at the head of stage's queue, dropping stale items. */
static ms_req *s_head(ms_broker *b, ms_stage stage, ms_req_queue q) {
    for (;;) {
        const ms_pq_item *it = ms_pqueue_peek(&b->q[stage]);
        if (!it) return NULL;
        ms_req *r = ms_reqtable_find(&b->reqs, it->rid);
        if (r && r->queue == q) return r;
        ms_pqueue_pop(&b->q[stage], NULL); /* stale */
    }
}

/* Limits for route_text with the prefill token budget as per-actor cap. */
static ms_queue_limits s_text_limits(const ms_broker *b) {
    ms_queue_limits lim = b->lim;
    lim.max_actor_prompt_tokens =
        s_min_pos(lim.max_actor_prompt_tokens, ms_policy_batch_cap(&b->prof, MS_STAGE_PREFILL));
    return lim;
}

/* Chooses a text actor for r under the layout's rules: route_text, with
 * decode admission applied unless the KV is handed off. */
static ms_route_status s_route_text(ms_broker *b, ms_req *r, int64_t now, int32_t *out) {
    ms_actor_view views[MS_BROKER_MAX_ACTORS];
    ms_req_view v;
    int32_t tok[MS_MAX_IMAGES_PER_PROMPT];
    ms_broker_req_view(b, r, &v, tok);
    const uint32_t need = ms_layout_stages_for(b->layout->layout, MS_STAGE_PREFILL);
    const ms_queue_limits lim = s_text_limits(b);
    ms_route_status st = MS_ROUTE_NONE;
    for (int pass = 0; pass < 2 && st != MS_ROUTE_OK; pass++) {
        int avoid = pass == 0 ? r->avoid_actor : -1;
        if (pass == 1 && r->avoid_actor < 0) break;
        s_views(b, now, avoid, views);
        bool refused = false;
        if (!b->layout->decode_handoff) {
            for (int i = 0; i < b->n_slots; i++)
                if (ms_actor_eligible(&views[i], need) &&
                    !ms_policy_admit_decode(&views[i], &b->prof, r->tbt_ms, r->kv_blocks)) {
                    views[i].alive = false;
                    refused = true;
                }
        }
        st = ms_policy_route_text(views, (size_t)b->n_slots, &v, need, &lim, out);
        if (st == MS_ROUTE_NONE && refused) st = MS_ROUTE_FULL;
    }
    return st;
}

/* Monolith: the whole request goes to one actor chosen by route_text; its
 * images are encoded there first. false if r must keep waiting. */
static bool s_place_monolith(ms_broker *b, ms_req *r, int64_t now) {
    int32_t slot = -1;
    if (s_route_text(b, r, now, &slot) != MS_ROUTE_OK) return false;
    s_dequeue(b, r);
    int idx[MS_MAX_IMAGES_PER_PROMPT];
    int np = 0;
    for (int i = 0; i < r->n_images; i++)
        if (r->images[i].state == MS_IMG_PENDING) idx[np++] = i;
    if (np > 0 && s_send_encode(b, r, slot, idx, np) != 0) {
        s_enqueue(b, r, MS_REQQ_ENCODE); /* slot is now skipped as unreachable */
        return true;
    }
    r->text_actor = slot;
    return true;
}

static void s_dispatch_encode(ms_broker *b, int64_t now) {
    ms_actor_view views[MS_BROKER_MAX_ACTORS];
    const uint32_t need = ms_layout_stages_for(b->layout->layout, MS_STAGE_ENCODE);
    ms_queue_limits lim = b->lim;
    lim.max_actor_image_tokens =
        s_min_pos(lim.max_actor_image_tokens,
                  ms_policy_batch_cap(&b->prof, MS_STAGE_ENCODE) * b->model.n_image_tokens);
    ms_req *r;
    while ((r = s_head(b, MS_STAGE_ENCODE, MS_REQQ_ENCODE)) != NULL) {
        if (!b->layout->split_images) {
            if (!s_place_monolith(b, r, now)) return;
            continue;
        }
        int idx[MS_MAX_IMAGES_PER_PROMPT];
        int32_t tok[MS_MAX_IMAGES_PER_PROMPT], all_tok[MS_MAX_IMAGES_PER_PROMPT];
        int np = 0;
        for (int i = 0; i < r->n_images; i++)
            if (r->images[i].state == MS_IMG_PENDING) {
                idx[np] = i;
                tok[np++] = r->images[i].n_tokens;
            }
        if (np == 0) { /* nothing left to place (encodes in flight) */
            s_dequeue(b, r);
            continue;
        }
        ms_req_view v;
        ms_broker_req_view(b, r, &v, all_tok);
        v.image_tokens = tok;
        int32_t out[MS_MAX_IMAGES_PER_PROMPT];
        ms_route_status st = MS_ROUTE_NONE;
        /* All pending images if the encoders' caps allow, else the most that
         * fit now (the rest wait for room): a request with more image tokens
         * than every encoder's cap together still goes, batch by batch. */
        int k = np;
        for (int pass = 0; pass < 2 && st != MS_ROUTE_OK; pass++) {
            if (pass == 1 && r->avoid_actor < 0) break;
            s_views(b, now, pass == 0 ? r->avoid_actor : -1, views);
            for (k = np; k >= 1; k--) {
                v.n_images = k;
                st = ms_policy_route_encode(views, (size_t)b->n_slots, &v, need, &lim, out);
                if (st != MS_ROUTE_FULL) break;
            }
        }
        if (st != MS_ROUTE_OK) return; /* head waits: no overtaking */
        s_dequeue(b, r);
        if (s_send_encode_split(b, r, idx, out, k) > 0 || k < np) s_enqueue(b, r, MS_REQQ_ENCODE);
    }
}

static void s_dispatch_prefill(ms_broker *b, int64_t now) {
    ms_req *r;
    while ((r = s_head(b, MS_STAGE_PREFILL, MS_REQQ_PREFILL)) != NULL) {
        if (r->n_images > 0 && !s_images_alive(b, r)) {
            s_reprefill(b, r); /* moves it to the encode queue */
            continue;
        }
        int32_t slot = -1;
        if (s_route_text(b, r, now, &slot) != MS_ROUTE_OK) return;
        s_dequeue(b, r);
        if (s_send_prefill(b, r, slot) != 0) s_enqueue(b, r, MS_REQQ_PREFILL);
    }
}

static void s_dispatch_decode(ms_broker *b, int64_t now) {
    ms_actor_view views[MS_BROKER_MAX_ACTORS];
    const uint32_t need = ms_layout_stages_for(b->layout->layout, MS_STAGE_DECODE);
    ms_req *r;
    while ((r = s_head(b, MS_STAGE_DECODE, MS_REQQ_DECODE)) != NULL) {
        if (r->text_actor < 0 || !b->actors[r->text_actor].alive) {
            s_reprefill(b, r); /* the KV went with its prefill actor */
            continue;
        }
        ms_req_view v;
        int32_t tok[MS_MAX_IMAGES_PER_PROMPT];
        ms_broker_req_view(b, r, &v, tok);
        int32_t slot = -1;
        ms_route_status st = MS_ROUTE_NONE;
        for (int pass = 0; pass < 2 && st != MS_ROUTE_OK; pass++) {
            if (pass == 1 && r->avoid_actor < 0) break;
            s_views(b, now, pass == 0 ? r->avoid_actor : -1, views);
            st = ms_policy_route_decode(views, (size_t)b->n_slots, &v, need, &b->prof, r->kv_blocks,
                                        &slot);
        }
        if (st != MS_ROUTE_OK) return;
        s_dequeue(b, r);
        if (s_send_decode(b, r, slot) != 0) s_enqueue(b, r, MS_REQQ_DECODE);
    }
}

void ms_broker_schedule(ms_broker *b) {
    int64_t now = ms_broker_now_ms();
    s_dispatch_encode(b, now);
    s_dispatch_prefill(b, now);
    if (b->layout->decode_handoff) s_dispatch_decode(b, now);
}

void ms_broker_admit(ms_broker *b, ms_req *r) {
    r->state = MS_REQ_QUEUED;
    s_enqueue(b, r, r->n_images > 0 ? MS_REQQ_ENCODE : MS_REQQ_PREFILL);
}

/* ---- replies from actors ------------------------------------------------------- */

void ms_broker_images_encoded(ms_broker *b, ms_req *r, ms_btask *t, const ms_msg_encoded *e,
                              int slot) {
    const uint64_t tid = t->task;
    for (uint32_t k = 0; k < e->n_images; k++) {
        const ms_wire_image_ref *ref = &e->images[k];
        if (ref->index >= (uint64_t)r->n_images) continue;
        ms_req_image *im = &r->images[ref->index];
        if (im->state != MS_IMG_ENCODING || im->task != tid) continue;
        if (ref->hash != im->hash) {
            ms_warn("broker: %s: encoded rid %" PRIu64 " image %" PRIu64 " with hash %016" PRIx64
                    ", expected %016" PRIx64 ": ignored",
                    b->actors[slot].id, r->rid, ref->index, ref->hash, im->hash);
            continue;
        }
        if (ref->has_n_tokens && ref->n_tokens != (uint64_t)im->n_tokens)
            ms_warn("broker: %s reports %" PRIu64 " tokens for an image, the mmproj says %d",
                    b->actors[slot].id, ref->n_tokens, im->n_tokens);
        im->state = MS_IMG_READY;
        im->actor = slot;
        im->task = 0;
    }
    r->preprocess_ms = MS_MAX(r->preprocess_ms, e->preprocess_ms);
    r->encode_ms = MS_MAX(r->encode_ms, e->encode_ms);
    ms_broker_task_end(b, t);
    bool pending = false, ready = true;
    for (int i = 0; i < r->n_images; i++) {
        ms_req_image *im = &r->images[i];
        if (im->state == MS_IMG_ENCODING && im->task == tid) { /* not in the reply */
            im->state = MS_IMG_PENDING;
            im->actor = -1;
            im->task = 0;
        }
        pending |= im->state == MS_IMG_PENDING;
        ready &= im->state == MS_IMG_READY;
    }
    if (pending) {
        if (r->queue == MS_REQQ_NONE) s_enqueue(b, r, MS_REQQ_ENCODE);
        return;
    }
    if (!ready || r->text_task != 0 || r->queue != MS_REQQ_NONE) return;
    r->state = MS_REQ_ENCODED;
    r->t_encoded_ns = ms_now_ns();
    if (!b->layout->split_images && r->text_actor >= 0 &&
        ms_broker_actor_usable(b, r->text_actor, ms_broker_now_ms()) &&
        s_send_prefill(b, r, r->text_actor) == 0)
        return; /* monolith: prefill where it was encoded */
    r->text_actor = -1;
    s_enqueue(b, r, MS_REQQ_PREFILL);
}

void ms_broker_prefill_done(ms_broker *b, ms_req *r, ms_btask *t, const ms_msg_prefill_done *p) {
    if (p->n_generated != (uint32_t)r->n_generated ||
        (r->n_generated > 0 &&
         memcmp(p->generated, r->generated, (size_t)r->n_generated * sizeof(int32_t)) != 0)) {
        ms_broker_task_failed(b, t, true, "internal",
                              "prefill_done: its generated tokens differ from those delivered");
        return;
    }
    r->transfer_ms += p->transfer_ms;
    r->prefill_ms += p->prefill_ms;
    ms_broker_task_end(b, t);
    r->text_task = 0;
    free(r->kv_key);
    free(r->kv_ep);
    r->kv_key = ms_xstrdup(p->kv_key);
    r->kv_ep = ms_xstrdup(p->data_ep);
    r->kv_sampler_state = p->sampler_state;
    r->state = MS_REQ_DECODING;
    s_enqueue(b, r, MS_REQQ_DECODE);
}

void ms_broker_task_failed(ms_broker *b, ms_btask *t, bool counts_retry, const char *code,
                           const char *why) {
    const uint64_t tid = t->task, rid = t->rid;
    const int slot = t->actor;
    const ms_stage stage = t->stage;
    ms_broker_task_end(b, t);
    ms_req *r = ms_reqtable_find(&b->reqs, rid);
    if (!r) return;
    bool current = false; /* does r still wait for this task? */
    if (stage == MS_STAGE_ENCODE) {
        for (int i = 0; i < r->n_images; i++)
            current |= r->images[i].state == MS_IMG_ENCODING && r->images[i].task == tid;
    } else {
        current = tid == r->text_task;
    }
    if (!current) return; /* stale */
    if (counts_retry) {
        r->retries++;
        b->c.retries++;
        if (r->retries > MS_BROKER_MAX_RETRIES) {
            ms_broker_fail(b, &r, MS_CODE_INTERNAL, "%s failed %d times; last at %s: %s (%s)",
                           ms_stage_name(stage), r->retries, b->actors[slot].id, why, code);
            return;
        }
    } else {
        r->redispatches++;
        b->c.redispatches++;
        if (r->redispatches > MS_BROKER_MAX_REDISPATCH) {
            ms_broker_fail(b, &r, MS_CODE_INTERNAL,
                           "re-dispatched %d times after losing actors; last: %s: %s",
                           r->redispatches, b->actors[slot].id, why);
            return;
        }
    }
    r->avoid_actor = slot;
    ms_info("broker: rid %" PRIu64 ": %s task %" PRIu64 " at %s failed (%s: %s): re-dispatching",
            rid, ms_stage_name(stage), tid, b->actors[slot].id, code, why);
    if (stage == MS_STAGE_ENCODE) {
        for (int i = 0; i < r->n_images; i++) {
            ms_req_image *im = &r->images[i];
            if (im->state == MS_IMG_ENCODING && im->task == tid) {
                im->state = MS_IMG_PENDING;
                im->actor = -1;
                im->task = 0;
            }
        }
        if (!b->layout->split_images && r->text_task == 0) r->text_actor = -1;
        if (r->queue == MS_REQQ_NONE && r->text_task == 0) {
            r->state = MS_REQ_ENCODING;
            s_enqueue(b, r, MS_REQQ_ENCODE);
        }
        return;
    }
    if (stage == MS_STAGE_PREFILL &&
        (strcmp(code, "not_found") == 0 || strcmp(code, "unavailable") == 0)) {
        /* features were not where we said, or their encoder did not answer the
         * pull (it is likely dead, before the registry shows it): encode again
         * rather than send the prefill to the same place (cheap if cached) */
        for (int i = 0; i < r->n_images; i++) {
            r->images[i].state = MS_IMG_PENDING;
            r->images[i].actor = -1;
            r->images[i].task = 0;
        }
    }
    s_reprefill(b, r);
}

/* ---- endings ------------------------------------------------------------------------ */

void ms_broker_finish(ms_broker *b, ms_req **r_p, ms_req_state st) {
    ms_req *r = *r_p;
    assert(ms_req_state_final(st));
    r->state = st;
    s_dequeue(b, r);
    /* actors holding something of r: tasks in flight, and (disagg) the KV */
    int holders[MS_MAX_IMAGES_PER_PROMPT + 3];
    int nh = 0;
    uint64_t tasks[MS_MAX_IMAGES_PER_PROMPT + 1];
    int nt = 0;
    for (int i = 0; i < r->n_images; i++)
        if (r->images[i].state == MS_IMG_ENCODING) {
            bool seen = false;
            for (int k = 0; k < nt; k++)
                seen |= tasks[k] == r->images[i].task;
            if (!seen) {
                tasks[nt++] = r->images[i].task;
                holders[nh++] = r->images[i].actor;
            }
        }
    if (r->text_task) {
        tasks[nt++] = r->text_task;
        ms_btask *t = ms_broker_task(b, r->text_task);
        if (t) holders[nh++] = t->actor;
    }
    if (r->kv_key && r->text_actor >= 0) holders[nh++] = r->text_actor;
    if (st != MS_REQ_DONE || r->kv_key) {
        for (int k = 0; k < nh; k++) {
            bool dup = false;
            for (int j = 0; j < k; j++)
                dup |= holders[j] == holders[k];
            if (dup || holders[k] < 0 || !b->actors[holders[k]].alive) continue;
            if (st == MS_REQ_DONE && holders[k] != r->text_actor) continue;
            ms_msg m;
            ms_msg_init(&m, MS_MSG_CANCEL_TASK);
            m.cancel_task.rid = r->rid;
            (void)ms_broker_send_actor(b, holders[k], &m, NULL, NULL, 0);
        }
    }
    for (int k = 0; k < nt; k++)
        ms_broker_task_end(b, ms_broker_task(b, tasks[k]));
    ms_reqtable_remove(&b->reqs, r_p);
}

void ms_broker_fail(ms_broker *b, ms_req **r_p, ms_wire_code code, const char *fmt, ...) {
    char msg[MS_WIRE_MAX_ERROR_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ms_req *r = *r_p;
    ms_broker_send_error(b, r, code, "%s", msg);
    ms_req_state st = MS_REQ_FAILED;
    if (code == MS_CODE_TIMEOUT) st = MS_REQ_TIMED_OUT;
    if (code == MS_CODE_CANCELLED) st = MS_REQ_CANCELLED;
    ms_broker_finish(b, r_p, st);
}
