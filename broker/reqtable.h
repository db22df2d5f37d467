/* reqtable.h — the broker's requests: one state machine each, and the
 * tables that find them (by broker request id, by producer + client id).
 *
 * States (docs/broker.md draws the diagram):
 *
 *   QUEUED ──(images)──▶ ENCODING ──all Encoded──▶ ENCODED ──PrefillTask──▶ PREFILLING
 *     │                    ▲   │                                ▲              │ first token
 *     └──(text only)───────┼───┼────────────────────────────────┘              ▼
 *                          │   └──encoder lost / TaskError: images re-queued  DECODING
 * ──TaskDone──▶ DONE └──── text actor lost: re-encode images whose encoder is gone, then re-prefill
 * with prompt + generated[] any live state ──▶ FAILED (Error), CANCELLED (Cancel), TIMED_OUT
 * (timeout).
 *
 * A request is "live" until it reaches one of the four final states; the
 * broker then replies, releases what actors hold and frees it.
 *
 * Tasks: every dispatch gets a fresh broker task id. Replies carrying a task
 * id the request no longer waits for (an actor declared dead that was only
 * slow, a TaskError after a re-dispatch) are stale and ignored, so a request
 * is never advanced twice by the same step.
 */
#ifndef MS_REQTABLE_H
#define MS_REQTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <czmq.h>

#include "policy.h"
#include "sampler.h"
#include "wire.h"

typedef enum ms_req_state {
    MS_REQ_QUEUED = 0, /* accepted; waiting for its first stage */
    MS_REQ_ENCODING,   /* images dispatched to (or waiting for) encoders */
    MS_REQ_ENCODED,    /* every image's features are ready; waiting for a text actor */
    MS_REQ_PREFILLING, /* PrefillTask sent; no token delivered yet by this attempt */
    MS_REQ_DECODING,   /* tokens flowing (disagg: also between PrefillDone and DecodeTask) */
    MS_REQ_DONE,       /* final: Done sent */
    MS_REQ_FAILED,     /* final: Error sent */
    MS_REQ_CANCELLED,  /* final: the producer cancelled */
    MS_REQ_TIMED_OUT,  /* final: its timeout passed */
    MS_REQ_STATE_COUNT
} ms_req_state;

/* "queued", "encoding", ... */
const char *ms_req_state_name(ms_req_state s);
/* True for DONE, FAILED, CANCELLED, TIMED_OUT. */
bool ms_req_state_final(ms_req_state s);

typedef enum ms_img_state {
    MS_IMG_PENDING = 0, /* waiting for an encoder */
    MS_IMG_ENCODING,    /* EncodeTask sent to `actor` */
    MS_IMG_READY,       /* features held by `actor` (Encoded received) */
} ms_img_state;

/* One image of a request. */
typedef struct ms_req_image {
    zframe_t *bytes;  /* the encoded file as submitted (owned; kept for re-encoding) */
    uint64_t hash;    /* ms_hash64 of the bytes: the encoders' feature-cache key */
    int32_t n_tokens; /* image tokens (the mmproj's; confirmed by Encoded) */
    ms_img_state state;
    int actor;     /* actor slot encoding / holding it, -1 if none */
    uint64_t task; /* EncodeTask id while ENCODING */
} ms_req_image;

/* Which queue of the broker a request waits in (at most one at a time). */
typedef enum ms_req_queue {
    MS_REQQ_NONE = 0,
    MS_REQQ_ENCODE,  /* images to place on encoders (monolith: the whole request) */
    MS_REQQ_PREFILL, /* ready for a text / prefill actor */
    MS_REQQ_DECODE,  /* disagg: PrefillDone received, waiting for decode admission */
} ms_req_queue;

typedef struct ms_req {
    uint64_t rid;    /* broker request id (Accepted.rid) */
    char *client_id; /* Submit.id (owned) */
    zframe_t *route; /* producer's routing id on the front socket (owned) */
    ms_req_state state;
    ms_req_queue queue;    /* queue it waits in, MS_REQQ_NONE when dispatched */
    int64_t t_enqueued_ns; /* when it entered `queue` (monotonic ns) */

    /* what to run */
    int32_t *prompt;      /* prompt.h entries (owned) */
    int n_prompt;         /* entries in prompt */
    int32_t text_tokens;  /* entries that are token ids */
    int32_t image_tokens; /* sum of images[].n_tokens */
    ms_req_image *images; /* [n_images] (owned) */
    int n_images;
    ms_sampling_params sp; /* validated */
    int32_t ttft_ms;       /* TTFT target (request, SLO class or profile default) */
    int32_t tbt_ms;        /* TBT target */
    int32_t kv_blocks;     /* KV blocks the sequence may need at a decode actor */

    /* times (monotonic ms) */
    int64_t t_arrival_ms;  /* accepted */
    int64_t t_arrival_ns;  /* the same in ns (for the reported timings) */
    int64_t t_deadline_ms; /* arrival + timeout */
    int64_t t_first_ns;    /* first token delivered (ns), 0 before */
    int64_t t_encoded_ns;  /* all its images encoded, latest time (ns); 0 before / text-only */

    /* text side */
    int text_actor;            /* slot of the prefill / text / monolith actor holding it, -1 */
    int decode_actor;          /* disagg: slot of the decode actor holding it, -1 */
    uint64_t text_task;        /* id of the PrefillTask / DecodeTask in flight, 0 if none */
    char *kv_key;              /* disagg: PrefillDone.kv_key (owned), NULL before */
    char *kv_ep;               /* disagg: PrefillDone.data_ep (owned) */
    uint64_t kv_sampler_state; /* disagg: PrefillDone.sampler_state */

    /* delivered tokens: the producer has seen indices [0, n_generated) */
    int32_t *generated; /* (owned) */
    int n_generated;
    int cap_generated;

    /* retries */
    int retries;      /* TaskErrors absorbed */
    int redispatches; /* re-dispatches after an actor loss */
    int avoid_actor;  /* slot to avoid on the next dispatch (last failure), -1 */

    /* per-stage times reported by actors (ms) */
    double preprocess_ms, encode_ms, transfer_ms, prefill_ms, decode_ms;
    double queue_ms; /* time spent in broker queues */

    /* table links */
    struct ms_req *prev, *next; /* list of live requests, in arrival order */
} ms_req;

/* Appends n ids to r->generated. */
void ms_req_append_generated(ms_req *r, const int32_t *ids, int n);

/* Requests by rid and by (producer routing id, client id). */
typedef struct ms_reqtable {
    zhashx_t *by_rid;    /* "%016llx" rid → ms_req* */
    zhashx_t *by_client; /* hex(route) "/" client id → ms_req* */
    ms_req *head, *tail; /* live requests, arrival order */
    size_t n;            /* requests in the table */
    uint64_t next_rid;   /* next broker request id (starts at 1) */
} ms_reqtable;

void ms_reqtable_init(ms_reqtable *t);
/* Frees every request still in the table. */
void ms_reqtable_fini(ms_reqtable *t);

/* A new request with a fresh rid, client id and route (copied), linked into
 * the table. Returns NULL if (route, client_id) is already live. */
ms_req *ms_reqtable_add(ms_reqtable *t, zframe_t *route, const char *client_id);
ms_req *ms_reqtable_find(const ms_reqtable *t, uint64_t rid);
ms_req *ms_reqtable_find_client(const ms_reqtable *t, zframe_t *route, const char *client_id);
/* Unlinks and frees *r_p (its images, prompt, tokens); NULLs it. */
void ms_reqtable_remove(ms_reqtable *t, ms_req **r_p);

#endif
