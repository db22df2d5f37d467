/* policy.h — the broker's scheduling policies as pure functions over plain
 * structs (DESIGN.md §2): routing by modality, the many-image split, layouts,
 * SLO-slack queue ordering with per-stage batch caps, decode admission and
 * bounded queues.
 *
 * Nothing here opens a socket, talks to Redis, keeps state between calls
 * (scratch memory is freed before return; the queue owns its array) or reads
 * a clock: time comes in as `now_ms` on whatever monotonic millisecond clock
 * the caller uses (every *_ms timestamp in one call must come from the same
 * clock). The
 * broker calls these with its live view of the registry; unit tests and the
 * cluster simulator call them with synthetic views. docs/policies.md states
 * each rule and the choices the ModServe paper leaves open.
 *
 * Views are snapshots the caller owns. Routing never writes them; the caller
 * adds what it dispatched with ms_policy_charge_*() so that decisions taken
 * between two heartbeats see the work already sent.
 */
#ifndef MS_POLICY_H
#define MS_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "profile.h"

/* ---- stages and stage sets ---------------------------------------------- */

/* Stages, stage-set masks (MS_STAGE_BIT, MS_STAGES_*) and their names: stages.h. */


/* ---- layouts ------------------------------------------------------------ */

typedef enum {
    MS_LAYOUT_MODSERVE = 0, /* encoders + text instances (prefill+decode): the default */
    MS_LAYOUT_MONOLITH,     /* encode+prefill+decode actors only: the baseline */
    MS_LAYOUT_DISAGG,       /* encoders + prefill actors + decode actors (E + P + D) */
    MS_LAYOUT_COUNT
} ms_layout;

/* How a layout maps each stage's work onto actors. */
typedef struct {
    ms_layout layout;
    const char *name;                /* "modserve", "monolith", "disagg" */
    uint32_t stages[MS_STAGE_COUNT]; /* stage set an actor must include to take that stage's work
                                        (a superset qualifies) */
    bool split_images;   /* images of one request may go to several encoders (route_encode);
                            false (monolith): the text actor chosen by route_text encodes them all */
    bool decode_handoff; /* after prefill the KV moves to a separate decode actor (route_decode);
                            false: the prefill actor keeps decoding */
} ms_layout_info;

/* The table entry for a layout (static storage; never NULL for a valid
 * layout; asserts on an out-of-range value, a programmer error). */
const ms_layout_info *ms_layout_get(ms_layout layout);

/* Stage set required of the actor that does `stage`'s work under `layout`
 * (shorthand for ms_layout_get(layout)->stages[stage]). */
uint32_t ms_layout_stages_for(ms_layout layout, ms_stage stage);

/* "modserve" | "monolith" | "disagg" → *out. Returns 0, or -1 with err filled. */
int ms_layout_parse(const char *text, ms_layout *out, char *err, size_t err_size);
const char *ms_layout_name(ms_layout layout);

/* ---- views ---------------------------------------------------------------- */


/* One actor as the policies see it: the registry's last report plus the work
 * the caller dispatched since (ms_policy_charge_*). */
typedef struct {
    int32_t id;                       /* caller's handle for the actor (e.g. its table index);
                                         policies return array positions, not this */
    uint32_t stages;                  /* MS_STAGE_BIT mask of the stages it runs */
    ms_actor_state state;             /* up | draining */
    bool alive;                       /* registry key present and socket not known dead */
    int64_t queued_image_tokens;      /* image tokens waiting to be encoded there */
    int64_t queued_prompt_tokens;     /* prompt tokens (text + image tokens, decoder-only)
                                         waiting to be prefilled there */
    int32_t running_seqs;             /* sequences in its decode batch */
    int32_t free_kv_blocks;           /* KV cache blocks free for new sequences */
    int32_t inflight[MS_STAGE_COUNT]; /* tasks sent and not yet finished, per stage */
} ms_actor_view;

typedef enum {
    MS_MODALITY_TEXT = 0, /* no images: never routed to an encoder */
    MS_MODALITY_IMAGE,    /* one or more images */
} ms_modality;

/* One request as the policies see it. Times on the caller's ms clock. */
typedef struct {
    uint64_t rid;                /* broker request id */
    int64_t arrival_ms;          /* when the broker accepted it */
    int64_t ttft_deadline_ms;    /* absolute: arrival_ms + the request's TTFT target */
    int32_t tbt_ms;              /* time-between-tokens target (ms); 0 = the profile's default */
    ms_modality modality;        /* text | image (image iff n_images > 0) */
    int32_t n_images;            /* images in the request, 0..MS_MAX_IMAGES_PER_PROMPT */
    const int32_t *image_tokens; /* [n_images] image tokens per image (borrowed; NULL if none) */
    int32_t prompt_tokens;       /* tokens the LLM prefills: text tokens + all image tokens
                                    (decoder-only) */
    int32_t max_tokens;          /* completion budget (tokens) */
} ms_req_view;

/* Sum of req->image_tokens[] (0 for a text request). */
int64_t ms_req_image_tokens(const ms_req_view *req);

/* True iff the request has images to encode, i.e. the broker must call
 * ms_policy_route_encode (or, monolith, send EncodeTask to the text actor)
 * before prefill. Text-only requests go straight to ms_policy_route_text. */
bool ms_req_needs_encode(const ms_req_view *req);

/* True iff the actor may be given new work needing `stages`: alive, up (not
 * draining) and its stage set includes every bit of `stages`. */
bool ms_actor_eligible(const ms_actor_view *a, uint32_t stages);

/* ---- routing -------------------------------------------------------------- */

/* Outcome of a routing call; the broker maps NONE → Error "unavailable" (or
 * waits for an actor), FULL → Error "overloaded" (or keeps it queued). */
typedef enum {
    MS_ROUTE_OK = 0, /* outputs written */
    MS_ROUTE_NONE,   /* no eligible actor (none alive, up and with the stage) */
    MS_ROUTE_FULL,   /* eligible actors exist but every one is at its queue limit / cannot admit */
} ms_route_status;

/* Spreads the images of an image request over encoders (image-level
 * parallelism). Eligible: ms_actor_eligible(a, need_stages) — pass
 * ms_layout_stages_for(layout, MS_STAGE_ENCODE). Rule (greedy LPT): images
 * in descending token order (ties: lower image index first), each to the
 * eligible encoder with the least queued image tokens counting the images of
 * this request already placed; ties → fewer in-flight encode tasks (counting
 * this request's placements as one task per encoder) → lower array index. An
 * encoder is skipped for an image that would take its queued image tokens
 * past lim->max_actor_image_tokens (when > 0) — unless it is empty, so one
 * huge image still has somewhere to go.
 * out_actor[i] = array position (into actors) of image i's encoder.
 * A text request (n_images == 0) is a no-op returning MS_ROUTE_OK: there is
 * nothing to route and no encoder is touched. Returns OK, NONE or FULL (on
 * NONE/FULL out_actor is unspecified and nothing should be dispatched). */
ms_route_status ms_policy_route_encode(const ms_actor_view *actors, size_t n,
                                       const ms_req_view *req, uint32_t need_stages,
                                       const ms_queue_limits *lim, int32_t *out_actor);

/* Chooses the actor for prefill (and, unless the layout hands off, decode):
 * eligible for need_stages (ms_layout_stages_for(layout, MS_STAGE_PREFILL)),
 * least pending tokens = queued_prompt_tokens; ties → fewer running_seqs →
 * lower array index. Actors whose pending tokens plus req->prompt_tokens would
 * exceed lim->max_actor_prompt_tokens (when > 0) are skipped unless they have
 * nothing pending. Writes the array position into *out_actor. */
ms_route_status ms_policy_route_text(const ms_actor_view *actors, size_t n, const ms_req_view *req,
                                     uint32_t need_stages, const ms_queue_limits *lim,
                                     int32_t *out_actor);

/* Chooses the decode actor after a KV handoff (disagg): among actors eligible
 * for need_stages (ms_layout_stages_for(layout, MS_STAGE_DECODE)) that
 * ms_policy_admit_decode() accepts, the one with the most free KV blocks;
 * ties → fewer running_seqs → lower array index. kv_blocks = blocks the
 * sequence needs (prompt + max_tokens rounded up to blocks). FULL when some
 * are eligible but none admits. */
ms_route_status ms_policy_route_decode(const ms_actor_view *actors, size_t n,
                                       const ms_req_view *req, uint32_t need_stages,
                                       const ms_profile *prof, int32_t kv_blocks,
                                       int32_t *out_actor);

/* Bookkeeping after dispatch (pure: update the caller's views). */
/* Adds the encode work route_encode placed: image tokens per encoder and one
 * in-flight encode task per distinct encoder. */
void ms_policy_charge_encode(ms_actor_view *actors, size_t n, const ms_req_view *req,
                             const int32_t *out_actor);
/* Adds req->prompt_tokens pending and one in-flight prefill task to actors[i]. */
void ms_policy_charge_prefill(ms_actor_view *actors, size_t i, const ms_req_view *req);
/* Adds one running sequence, kv_blocks used and one in-flight decode task. */
void ms_policy_charge_decode(ms_actor_view *actors, size_t i, int32_t kv_blocks);

/* ---- decode admission ----------------------------------------------------- */

/* Largest decode batch (sequences) whose step latency stays within the TBT
 * budget by the profile's decode model: max n with
 * base_ms + per_unit_ms * n <= tbt_ms * slo_share (decode's share; 0 → 1),
 * capped by the decode stage's max_batch; at least 1 (a lone sequence is
 * always served, even if the SLO cannot be met). tbt_ms <= 0 → the profile's
 * default TBT. */
int32_t ms_policy_decode_cap(const ms_profile *prof, int32_t tbt_ms);

/* True iff actor a may take one more decode sequence: eligible for decode,
 * running_seqs + 1 <= ms_policy_decode_cap(prof, tbt_ms) and free_kv_blocks
 * >= kv_blocks. */
bool ms_policy_admit_decode(const ms_actor_view *a, const ms_profile *prof, int32_t tbt_ms,
                            int32_t kv_blocks);

/* ---- bounded queues ------------------------------------------------------- */

/* What the broker holds right now (accepted, not finished). */
typedef struct {
    int32_t requests;      /* requests accepted and not yet done */
    int64_t image_tokens;  /* image tokens of those not yet encoded */
    int64_t prompt_tokens; /* prompt tokens of those not yet prefilled */
} ms_queue_depth;

typedef enum {
    MS_ADMIT_OK = 0,     /* accept */
    MS_ADMIT_OVERLOADED, /* queues full now: Error "overloaded" (may succeed later) */
    MS_ADMIT_TOO_LARGE,  /* the request alone exceeds a limit: Error "bad_request" */
} ms_admit;

/* Admission at the front door: TOO_LARGE if req alone breaks a per-request
 * limit (max_images_per_request, max_request_tokens) or a queue limit that no
 * queue state could satisfy; OVERLOADED if adding it would pass
 * max_pending_requests / max_pending_image_tokens / max_pending_prompt_tokens
 * (a limit <= 0 means unlimited); else OK. */
ms_admit ms_policy_admit_request(const ms_queue_depth *depth, const ms_queue_limits *lim,
                                 const ms_req_view *req);

/* ---- SLO slack and per-stage queues --------------------------------------- */

/* Estimated time (ms) from the start of `stage` to the first token, by the
 * profile's linear stage models: encode = encode(image tokens) +
 * prefill(prompt tokens); prefill = prefill(prompt tokens); decode = one
 * decode step at batch 1. A text request's encode term is 0. */
double ms_policy_service_ms(const ms_profile *prof, ms_stage stage, const ms_req_view *req);

/* Slack (ms) = ttft_deadline_ms - now_ms - service_ms; negative = already late. */
double ms_policy_slack(const ms_req_view *req, int64_t now_ms, double service_ms);

/* One queued piece of work. Ordered by latest_start_ms (deadline minus
 * service: least slack first, a time-invariant key since now_ms is common to
 * all), then arrival_ms, then push order (FIFO). */
typedef struct {
    uint64_t rid;           /* request id */
    int32_t task;           /* caller's task number (e.g. an encode split part) */
    int64_t arrival_ms;     /* request arrival */
    double latest_start_ms; /* ttft_deadline_ms - service_ms */
    int64_t cost;           /* units against the stage cap: images (encode), prompt tokens
                               (prefill), sequences = 1 (decode) */
    uint64_t seq;           /* push order, set by ms_pqueue_push */
} ms_pq_item;

/* Fills an item for req at `stage`: latest_start from the profile, cost in the
 * stage's unit (n_images placed for encode via `units`, when units > 0;
 * otherwise encode = n_images, prefill = prompt_tokens, decode = 1). */
ms_pq_item ms_pq_item_make(const ms_profile *prof, ms_stage stage, const ms_req_view *req,
                           int32_t task, int64_t units);

/* Comparator for qsort/bsearch over ms_pq_item: <0 if a goes first. */
int ms_pq_item_cmp(const void *a, const void *b);

/* A binary min-heap of ms_pq_item (caller-owned storage: _init/_fini). */
typedef struct {
    ms_pq_item *items; /* [cap] heap array, owned */
    size_t len;        /* items in the heap */
    size_t cap;        /* allocated slots */
    uint64_t next_seq; /* next push order number */
} ms_pqueue;

void ms_pqueue_init(ms_pqueue *q);
void ms_pqueue_fini(ms_pqueue *q);
/* Inserts a copy of *it (its seq is overwritten with the push order). */
void ms_pqueue_push(ms_pqueue *q, const ms_pq_item *it);
/* Copies the least-slack item into *out (if out) and removes it; 0, or -1 if empty. */
int ms_pqueue_pop(ms_pqueue *q, ms_pq_item *out);
/* The least-slack item (pointer into the heap, valid until the next change), or NULL. */
const ms_pq_item *ms_pqueue_peek(const ms_pqueue *q);
/* Removes every item with this rid (cancel/timeout/actor loss); returns how many. */
size_t ms_pqueue_remove_rid(ms_pqueue *q, uint64_t rid);
size_t ms_pqueue_len(const ms_pqueue *q);

/* Pops the next batch for a stage: items in slack order while the summed cost
 * stays <= cap, stopping at the first item that does not fit (no bypass, so a
 * large item cannot starve); the first item is always taken even if its cost
 * alone exceeds cap (cap <= 0 → one item). At most out_max items are taken.
 * Returns the number written to out (0 iff the queue is empty or out_max == 0). */
size_t ms_policy_next_batch(ms_pqueue *q, int64_t cap, ms_pq_item *out, size_t out_max);

/* The stage's batch cap in its unit from the profile (encode: images,
 * prefill: tokens, decode: sequences). */
int64_t ms_policy_batch_cap(const ms_profile *prof, ms_stage stage);

#endif
