/* policy.c — routing, layouts, decode admission, bounded queues, slack
 * ordering and batch selection as pure functions (see policy.h and
 * docs/policies.md). No clock reads, no I/O. */
#include "policy.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

/* ---- stage sets ---------------------------------------------------------- */

/* ---- layouts ------------------------------------------------------------- */

static const ms_layout_info s_layouts[MS_LAYOUT_COUNT] = {
    [MS_LAYOUT_MODSERVE] = {.layout = MS_LAYOUT_MODSERVE,
                            .name = "modserve",
                            .stages = {[MS_STAGE_ENCODE] = MS_STAGES_ENCODE,
                                       [MS_STAGE_PREFILL] = MS_STAGES_TEXT,
                                       [MS_STAGE_DECODE] = MS_STAGES_TEXT},
                            .split_images = true,
                            .decode_handoff = false},
    [MS_LAYOUT_MONOLITH] = {.layout = MS_LAYOUT_MONOLITH,
                            .name = "monolith",
                            .stages = {[MS_STAGE_ENCODE] = MS_STAGES_ALL,
                                       [MS_STAGE_PREFILL] = MS_STAGES_ALL,
                                       [MS_STAGE_DECODE] = MS_STAGES_ALL},
                            .split_images = false,
                            .decode_handoff = false},
    [MS_LAYOUT_DISAGG] = {.layout = MS_LAYOUT_DISAGG,
                          .name = "disagg",
                          .stages = {[MS_STAGE_ENCODE] = MS_STAGES_ENCODE,
                                     [MS_STAGE_PREFILL] = MS_STAGES_PREFILL,
                                     [MS_STAGE_DECODE] = MS_STAGES_DECODE},
                          .split_images = true,
                          .decode_handoff = true},
};

const ms_layout_info *ms_layout_get(ms_layout layout) {
    assert((int)layout >= 0 && layout < MS_LAYOUT_COUNT);
    return &s_layouts[layout];
}

uint32_t ms_layout_stages_for(ms_layout layout, ms_stage stage) {
    assert((int)stage >= 0 && stage < MS_STAGE_COUNT);
    return ms_layout_get(layout)->stages[stage];
}

int ms_layout_parse(const char *text, ms_layout *out, char *err, size_t err_size) {
    assert(out);
    for (int l = 0; l < MS_LAYOUT_COUNT; l++) {
        if (text && strcmp(text, s_layouts[l].name) == 0) {
            *out = (ms_layout)l;
            return 0;
        }
    }
    return ms_errf(err, err_size, "unknown layout \"%s\" (expected modserve, monolith or disagg)",
                   text ? text : "");
}

const char *ms_layout_name(ms_layout layout) {
    if ((int)layout < 0 || layout >= MS_LAYOUT_COUNT) return "?";
    return s_layouts[layout].name;
}

/* ---- views ---------------------------------------------------------------- */

int64_t ms_req_image_tokens(const ms_req_view *req) {
    assert(req);
    int64_t sum = 0;
    for (int32_t i = 0; i < req->n_images; i++)
        sum += req->image_tokens[i];
    return sum;
}

bool ms_req_needs_encode(const ms_req_view *req) {
    assert(req);
    return req->modality == MS_MODALITY_IMAGE && req->n_images > 0;
}

bool ms_actor_eligible(const ms_actor_view *a, uint32_t stages) {
    assert(a);
    return a->alive && a->state == MS_ACTOR_UP && stages != 0 && (a->stages & stages) == stages;
}

/* ---- routing -------------------------------------------------------------- */

/* Order of image indices by descending tokens, ties by lower index (a stable
 * insertion sort: n_images is small, at most a few hundred). */
static void s_sort_images_desc(const int32_t *tokens, int32_t n, int32_t *order) {
    for (int32_t i = 0; i < n; i++) {
        int32_t j = i;
        while (j > 0 && tokens[order[j - 1]] < tokens[i]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

ms_route_status ms_policy_route_encode(const ms_actor_view *actors, size_t n,
                                       const ms_req_view *req, uint32_t need_stages,
                                       const ms_queue_limits *lim, int32_t *out_actor) {
    assert(req);
    assert(actors || n == 0);
    if (!ms_req_needs_encode(req)) return MS_ROUTE_OK; /* text: nothing goes to an encoder */
    assert(req->image_tokens && out_actor);

    size_t n_elig = 0;
    for (size_t a = 0; a < n; a++)
        if (ms_actor_eligible(&actors[a], need_stages)) n_elig++;
    if (n_elig == 0) return MS_ROUTE_NONE;

    /* Working loads: the view plus what this request has placed so far. */
    int64_t *load = ms_xcalloc(n, sizeof(*load));
    int32_t *tasks = ms_xcalloc(n, sizeof(*tasks));
    bool *placed = ms_xcalloc(n, sizeof(*placed));
    int32_t *order = ms_xmalloc((size_t)req->n_images * sizeof(*order));
    for (size_t a = 0; a < n; a++) {
        load[a] = actors[a].queued_image_tokens;
        tasks[a] = actors[a].inflight[MS_STAGE_ENCODE];
    }
    s_sort_images_desc(req->image_tokens, req->n_images, order);

    int64_t cap = lim ? lim->max_actor_image_tokens : 0;
    ms_route_status st = MS_ROUTE_OK;
    for (int32_t k = 0; k < req->n_images; k++) {
        int32_t img = order[k];
        int64_t tok = req->image_tokens[img];
        ptrdiff_t best = -1;
        for (size_t a = 0; a < n; a++) {
            if (!ms_actor_eligible(&actors[a], need_stages)) continue;
            if (cap > 0 && load[a] > 0 && load[a] + tok > cap) continue;
            if (best < 0 || load[a] < load[best] ||
                (load[a] == load[best] && tasks[a] < tasks[best]))
                best = (ptrdiff_t)a;
        }
        if (best < 0) {
            st = MS_ROUTE_FULL;
            break;
        }
        out_actor[img] = (int32_t)best;
        load[best] += tok;
        if (!placed[best]) {
            placed[best] = true;
            tasks[best]++;
        }
    }
    free(order);
    free(placed);
    free(tasks);
    free(load);
    return st;
}

ms_route_status ms_policy_route_text(const ms_actor_view *actors, size_t n, const ms_req_view *req,
                                     uint32_t need_stages, const ms_queue_limits *lim,
                                     int32_t *out_actor) {
    assert(req && out_actor);
    assert(actors || n == 0);
    int64_t cap = lim ? lim->max_actor_prompt_tokens : 0;
    bool any = false;
    ptrdiff_t best = -1;
    for (size_t a = 0; a < n; a++) {
        const ms_actor_view *v = &actors[a];
        if (!ms_actor_eligible(v, need_stages)) continue;
        any = true;
        if (cap > 0 && v->queued_prompt_tokens > 0 &&
            v->queued_prompt_tokens + req->prompt_tokens > cap)
            continue;
        if (best < 0 || v->queued_prompt_tokens < actors[best].queued_prompt_tokens ||
            (v->queued_prompt_tokens == actors[best].queued_prompt_tokens &&
             v->running_seqs < actors[best].running_seqs))
            best = (ptrdiff_t)a;
    }
    if (!any) return MS_ROUTE_NONE;
    if (best < 0) return MS_ROUTE_FULL;
    *out_actor = (int32_t)best;
    return MS_ROUTE_OK;
}

ms_route_status ms_policy_route_decode(const ms_actor_view *actors, size_t n,
                                       const ms_req_view *req, uint32_t need_stages,
                                       const ms_profile *prof, int32_t kv_blocks,
                                       int32_t *out_actor) {
    assert(req && prof && out_actor);
    assert(actors || n == 0);
    bool any = false;
    ptrdiff_t best = -1;
    for (size_t a = 0; a < n; a++) {
        const ms_actor_view *v = &actors[a];
        if (!ms_actor_eligible(v, need_stages)) continue;
        any = true;
        if (!ms_policy_admit_decode(v, prof, req->tbt_ms, kv_blocks)) continue;
        if (best < 0 || v->free_kv_blocks > actors[best].free_kv_blocks ||
            (v->free_kv_blocks == actors[best].free_kv_blocks &&
             v->running_seqs < actors[best].running_seqs))
            best = (ptrdiff_t)a;
    }
    if (!any) return MS_ROUTE_NONE;
    if (best < 0) return MS_ROUTE_FULL;
    *out_actor = (int32_t)best;
    return MS_ROUTE_OK;
}

void ms_policy_charge_encode(ms_actor_view *actors, size_t n, const ms_req_view *req,
                             const int32_t *out_actor) {
    assert(req);
    if (!ms_req_needs_encode(req)) return;
    assert(actors && out_actor);
    bool *seen = ms_xcalloc(n, sizeof(*seen));
    for (int32_t i = 0; i < req->n_images; i++) {
        int32_t a = out_actor[i];
        assert(a >= 0 && (size_t)a < n);
        actors[a].queued_image_tokens += req->image_tokens[i];
        if (!seen[a]) {
            seen[a] = true;
            actors[a].inflight[MS_STAGE_ENCODE]++;
        }
    }
    free(seen);
}

void ms_policy_charge_prefill(ms_actor_view *actors, size_t i, const ms_req_view *req) {
    assert(actors && req);
    actors[i].queued_prompt_tokens += req->prompt_tokens;
    actors[i].inflight[MS_STAGE_PREFILL]++;
}

void ms_policy_charge_decode(ms_actor_view *actors, size_t i, int32_t kv_blocks) {
    assert(actors);
    actors[i].running_seqs++;
    actors[i].free_kv_blocks -= kv_blocks;
    actors[i].inflight[MS_STAGE_DECODE]++;
}

/* ---- decode admission ----------------------------------------------------- */

int32_t ms_policy_decode_cap(const ms_profile *prof, int32_t tbt_ms) {
    assert(prof);
    const ms_stage_profile *d = &prof->stage[MS_STAGE_DECODE];
    double tbt = tbt_ms > 0 ? (double)tbt_ms : (double)prof->tbt_ms;
    double budget = tbt * (d->slo_share > 0 ? d->slo_share : 1.0);
    int64_t cap = d->max_batch;
    if (d->per_unit_ms > 0) {
        double n = floor((budget - d->base_ms) / d->per_unit_ms);
        if (n < (double)cap) cap = n < 1 ? 1 : (int64_t)n;
    } else if (d->base_ms > budget) {
        cap = 1;
    }
    if (cap < 1) cap = 1;
    if (cap > INT32_MAX) cap = INT32_MAX;
    return (int32_t)cap;
}

bool ms_policy_admit_decode(const ms_actor_view *a, const ms_profile *prof, int32_t tbt_ms,
                            int32_t kv_blocks) {
    assert(a && prof);
    if (!ms_actor_eligible(a, MS_STAGES_DECODE)) return false;
    if (a->running_seqs + 1 > ms_policy_decode_cap(prof, tbt_ms)) return false;
    return a->free_kv_blocks >= kv_blocks;
}

/* ---- bounded queues ------------------------------------------------------- */

ms_admit ms_policy_admit_request(const ms_queue_depth *depth, const ms_queue_limits *lim,
                                 const ms_req_view *req) {
    assert(depth && lim && req);
    int64_t img = ms_req_image_tokens(req);
    /* The request alone: no queue state could ever take it. */
    if (lim->max_images_per_request > 0 && req->n_images > lim->max_images_per_request)
        return MS_ADMIT_TOO_LARGE;
    if (lim->max_request_tokens > 0 && req->prompt_tokens > lim->max_request_tokens)
        return MS_ADMIT_TOO_LARGE;
    if (lim->max_pending_image_tokens > 0 && img > lim->max_pending_image_tokens)
        return MS_ADMIT_TOO_LARGE;
    if (lim->max_pending_prompt_tokens > 0 && req->prompt_tokens > lim->max_pending_prompt_tokens)
        return MS_ADMIT_TOO_LARGE;
    /* With what is already queued. */
    if (lim->max_pending_requests > 0 && depth->requests + 1 > lim->max_pending_requests)
        return MS_ADMIT_OVERLOADED;
    if (lim->max_pending_image_tokens > 0 &&
        depth->image_tokens + img > lim->max_pending_image_tokens)
        return MS_ADMIT_OVERLOADED;
    if (lim->max_pending_prompt_tokens > 0 &&
        depth->prompt_tokens + req->prompt_tokens > lim->max_pending_prompt_tokens)
        return MS_ADMIT_OVERLOADED;
    return MS_ADMIT_OK;
}

/* ---- slack ---------------------------------------------------------------- */

double ms_policy_service_ms(const ms_profile *prof, ms_stage stage, const ms_req_view *req) {
    assert(prof && req);
    double prefill = ms_profile_latency_ms(prof, MS_STAGE_PREFILL, req->prompt_tokens);
    switch (stage) {
    case MS_STAGE_ENCODE:
        return ms_profile_latency_ms(prof, MS_STAGE_ENCODE, ms_req_image_tokens(req)) + prefill;
    case MS_STAGE_PREFILL:
        return prefill;
    case MS_STAGE_DECODE:
        return ms_profile_latency_ms(prof, MS_STAGE_DECODE, 1);
    default:
        assert(!"ms_policy_service_ms: bad stage");
        return 0.0;
    }
}

double ms_policy_slack(const ms_req_view *req, int64_t now_ms, double service_ms) {
    assert(req);
    return (double)(req->ttft_deadline_ms - now_ms) - service_ms;
}

int64_t ms_policy_batch_cap(const ms_profile *prof, ms_stage stage) {
    assert(prof);
    assert((int)stage >= 0 && stage < MS_STAGE_COUNT);
    return prof->stage[stage].max_batch;
}

/* ---- priority queue --------------------------------------------------------- */

ms_pq_item ms_pq_item_make(const ms_profile *prof, ms_stage stage, const ms_req_view *req,
                           int32_t task, int64_t units) {
    assert(prof && req);
    ms_pq_item it = {0};
    it.rid = req->rid;
    it.task = task;
    it.arrival_ms = req->arrival_ms;
    it.latest_start_ms = (double)req->ttft_deadline_ms - ms_policy_service_ms(prof, stage, req);
    if (units > 0) {
        it.cost = units;
    } else {
        switch (stage) {
        case MS_STAGE_ENCODE:
            it.cost = req->n_images;
            break;
        case MS_STAGE_PREFILL:
            it.cost = req->prompt_tokens;
            break;
        default:
            it.cost = 1;
            break;
        }
    }
    return it;
}

int ms_pq_item_cmp(const void *pa, const void *pb) {
    const ms_pq_item *a = pa, *b = pb;
    if (a->latest_start_ms != b->latest_start_ms)
        return a->latest_start_ms < b->latest_start_ms ? -1 : 1;
    if (a->arrival_ms != b->arrival_ms) return a->arrival_ms < b->arrival_ms ? -1 : 1;
    if (a->seq != b->seq) return a->seq < b->seq ? -1 : 1;
    return 0;
}

void ms_pqueue_init(ms_pqueue *q) {
    assert(q);
    memset(q, 0, sizeof(*q));
}

void ms_pqueue_fini(ms_pqueue *q) {
    if (!q) return;
    free(q->items);
    memset(q, 0, sizeof(*q));
}

static void s_swap(ms_pq_item *a, ms_pq_item *b) {
    ms_pq_item t = *a;
    *a = *b;
    *b = t;
}

static void s_sift_up(ms_pqueue *q, size_t i) {
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (ms_pq_item_cmp(&q->items[i], &q->items[parent]) >= 0) break;
        s_swap(&q->items[i], &q->items[parent]);
        i = parent;
    }
}

static void s_sift_down(ms_pqueue *q, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < q->len && ms_pq_item_cmp(&q->items[l], &q->items[m]) < 0) m = l;
        if (r < q->len && ms_pq_item_cmp(&q->items[r], &q->items[m]) < 0) m = r;
        if (m == i) return;
        s_swap(&q->items[i], &q->items[m]);
        i = m;
    }
}

void ms_pqueue_push(ms_pqueue *q, const ms_pq_item *it) {
    assert(q && it);
    if (q->len == q->cap) {
        size_t ncap = q->cap ? q->cap * 2 : 16;
        q->items = ms_xrealloc(q->items, ncap * sizeof(*q->items));
        q->cap = ncap;
    }
    q->items[q->len] = *it;
    q->items[q->len].seq = q->next_seq++;
    q->len++;
    s_sift_up(q, q->len - 1);
}

const ms_pq_item *ms_pqueue_peek(const ms_pqueue *q) {
    assert(q);
    return q->len ? &q->items[0] : NULL;
}

int ms_pqueue_pop(ms_pqueue *q, ms_pq_item *out) {
    assert(q);
    if (q->len == 0) return -1;
    if (out) *out = q->items[0];
    q->len--;
    if (q->len) {
        q->items[0] = q->items[q->len];
        s_sift_down(q, 0);
    }
    return 0;
}

size_t ms_pqueue_remove_rid(ms_pqueue *q, uint64_t rid) {
    assert(q);
    size_t removed = 0, w = 0;
    for (size_t r = 0; r < q->len; r++) {
        if (q->items[r].rid == rid) {
            removed++;
            continue;
        }
        q->items[w++] = q->items[r];
    }
    if (removed) {
        q->len = w;
        /* Re-heapify (Floyd): O(len). */
        for (size_t i = q->len / 2; i-- > 0;)
            s_sift_down(q, i);
    }
    return removed;
}

size_t ms_pqueue_len(const ms_pqueue *q) {
    assert(q);
    return q->len;
}

size_t ms_policy_next_batch(ms_pqueue *q, int64_t cap, ms_pq_item *out, size_t out_max) {
    assert(q && (out || out_max == 0));
    size_t taken = 0;
    int64_t used = 0;
    while (taken < out_max && q->len > 0) {
        const ms_pq_item *head = &q->items[0];
        if (taken > 0 && (cap <= 0 || used + head->cost > cap)) break;
        used += head->cost;
        ms_pqueue_pop(q, &out[taken++]);
    }
    return taken;
}
