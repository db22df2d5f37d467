/* broker_int.h — what the broker's source files share (not a public header).
 *
 *   broker.c        lifecycle, the event loop, the cron (registry, timeouts,
 *                   counters), the actor view and actor loss
 *   broker_front.c  the producer socket: Submit validation + tokenization,
 *                   Cancel, Stats, and the Token / Done / Error replies
 *   broker_back.c   the actor socket: Hello, Bye, Encoded, TokenOut,
 *                   PrefillDone, TaskDone, TaskError
 *   broker_sched.c  the stage queues and dispatch (EncodeTask, PrefillTask,
 *                   DecodeTask), task records and their load charges, retries,
 *                   re-dispatch and request endings
 */
#ifndef MS_BROKER_INT_H
#define MS_BROKER_INT_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include <czmq.h>

#include "broker.h"
#include "broker_model.h"
#include "broker_registry.h"
#include "chat.h"
#include "frames.h"
#include "gguf.h"
#include "ms_common.h"
#include "policy.h"
#include "profile.h"
#include "reqtable.h"
#include "tokenizer.h"
#include "wire.h"

#define MS_BROKER_EP_MAX      256 /* bytes of an endpoint string */
#define MS_BROKER_DRAIN_BATCH 256 /* messages read from one socket before looking at the other */
/* largest actor message accepted: they carry no big payloads */
#define MS_BROKER_BACK_MAX_BYTES (MS_WIRE_MAX_HEADER_BYTES + (1u << 20))

/* One actor in the broker's view (slot index = its handle everywhere). */
typedef struct ms_bactor {
    bool used;                     /* slot holds an actor (ever seen) */
    char id[MS_BREG_ID_MAX];       /* actor id = DEALER identity */
    uint32_t stages;               /* MS_STAGE_BIT mask (policy.h) */
    char data_ep[MS_BREG_STR_MAX]; /* data-plane endpoint */
    int64_t pid;                   /* process id of the incarnation we know, 0 if unknown */
    bool alive;                    /* may hold work; false once declared dead */
    bool draining;                 /* registry state draining, or Bye received */
    bool in_registry;              /* present in the last successful registry list */
    int64_t t_hello_ms;            /* last Hello (monotonic ms), 0 if none */
    int64_t t_msg_ms;              /* last message of any kind */
    int64_t missing_since_ms;      /* first successful list without it, 0 if present */
    int64_t unreachable_until_ms;  /* a send failed: skip it until then */
    bool has_kv_report;            /* reg_free_kv_blocks is known */
    int64_t reg_free_kv_blocks;    /* free KV blocks at its last heartbeat */
    int64_t t_report_ms;           /* when that report was (conservatively) made */
    /* work the broker has placed there and not seen finish */
    int64_t pend_image_tokens;        /* image tokens in EncodeTasks in flight */
    int64_t pend_prompt_tokens;       /* prompt rows in PrefillTasks before their first token */
    int32_t running_seqs;             /* sequences it decodes (text / decode actors) */
    int32_t inflight[MS_STAGE_COUNT]; /* tasks in flight per stage */
    uint64_t routed[MS_STAGE_COUNT];  /* tasks ever routed there per stage (counters) */
} ms_bactor;

/* A dispatched task and the load it charged (released exactly once, when it
 * ends: reply, failure, actor loss, cancel). */
typedef struct ms_btask {
    uint64_t task;         /* broker task id */
    uint64_t rid;          /* request */
    int actor;             /* slot it was sent to */
    ms_stage stage;        /* ENCODE (EncodeTask), PREFILL (PrefillTask), DECODE (DecodeTask) */
    int64_t image_tokens;  /* encode: tokens charged to pend_image_tokens */
    int64_t prompt_tokens; /* prefill: rows charged to pend_prompt_tokens (until first token) */
    bool seq;              /* a running sequence is charged (decoding there) */
    int32_t kv_blocks;     /* KV blocks charged with the sequence */
    int64_t t_first_ms;    /* first token from it (ms): its KV blocks exist; 0 before */
} ms_btask;

/* Counters (published to `<prefix>:broker` and in Stats). */
typedef struct ms_bcounters {
    uint64_t requests;       /* Submits accepted */
    uint64_t requests_text;  /* of which text-only */
    uint64_t requests_image; /* of which with images */
    uint64_t images;         /* images accepted */
    uint64_t completed;      /* ended with Done (any finish) */
    uint64_t errors;         /* ended with Error, rejections included */
    uint64_t rejected;       /* Submits refused (bad_request / overloaded / unavailable) */
    uint64_t overloaded;     /* of which "overloaded" */
    uint64_t malformed;      /* undecodable messages (both sockets) */
    uint64_t cancelled;      /* Cancel honoured */
    uint64_t timeouts;       /* requests timed out */
    uint64_t unavailable;    /* requests failed "unavailable" */
    uint64_t tokens;         /* tokens relayed to producers */
    uint64_t dup_tokens;     /* token indices dropped as already delivered */
    uint64_t retries;        /* TaskErrors retried */
    uint64_t redispatches;   /* tasks re-dispatched after an actor loss */
    uint64_t actors_lost;    /* actors declared dead */
    uint64_t encode_tasks;   /* EncodeTasks sent */
    uint64_t prefill_tasks;  /* PrefillTasks sent */
    uint64_t decode_tasks;   /* DecodeTasks sent */
    /* load and SLO attainment, read by the autoscaler (docs/broker.md, Counters) */
    uint64_t image_tokens;  /* image tokens of the requests accepted */
    uint64_t prompt_tokens; /* prompt tokens (text + image) of the requests accepted */
    uint64_t slo_requests;  /* requests that ended with an SLO verdict (ms_broker_slo_verdict) */
    uint64_t slo_met;       /* of those, within both their TTFT and TBT targets */
    uint64_t slo_seen[MS_STAGE_COUNT]; /* ended requests with a verdict for the stage */
    uint64_t slo_ok[MS_STAGE_COUNT];   /* of those, within the stage's share of the SLO */
} ms_bcounters;

struct ms_broker {
    ms_broker_config cfg; /* as given; its strings are not read after ms_broker_new */
    int timeout_ms;       /* default request timeout (resolved) */
    zsock_t *front;       /* ROUTER for producers */
    zsock_t *back;        /* ROUTER for actors (ROUTER_MANDATORY, HANDOVER) */
    char front_ep[MS_BROKER_EP_MAX];
    char back_ep[MS_BROKER_EP_MAX];
    ms_breg *reg;        /* registry + counters hash */
    ms_profile prof;     /* batch caps, latency models, SLOs, limits */
    ms_queue_limits lim; /* prof.limits with --max-queue applied */
    const ms_layout_info *layout;

    ms_broker_model model; /* tokenizer, template, n_ctx, image tokens */

    ms_reqtable reqs;            /* live requests */
    ms_pqueue q[MS_STAGE_COUNT]; /* per stage: ENCODE (images to place), PREFILL, DECODE */
    zhashx_t *tasks;             /* "%016llx" task id → ms_btask* (owned) */
    uint64_t next_task;          /* next task id (starts at 1) */

    ms_bactor actors[MS_BROKER_MAX_ACTORS];
    int n_slots;                                 /* slots used so far (high-water mark) */
    int64_t stage_missing_since[MS_STAGE_COUNT]; /* no eligible actor since (ms), 0: one exists */

    bool reg_ok;                /* last registry list succeeded */
    bool reg_warned;            /* the current outage was logged */
    int64_t reg_grace_until_ms; /* after an outage (or a suspected Redis restart) nobody
                                   is declared dead before this */
    int reg_listed;             /* actors of ours in the last successful list */
    int64_t next_poll_ms;       /* next registry list */
    int64_t next_stats_ms;      /* next counters publish */
    int64_t next_cron_ms;       /* next cron run */
    int64_t t_start_ms;         /* broker start (monotonic ms) */

    ms_bcounters c;
    volatile sig_atomic_t stop; /* set by ms_broker_stop */
};

/* Monotonic milliseconds. */
int64_t ms_broker_now_ms(void);

/* ---- broker.c: actors ---------------------------------------------------- */
/* Slot of actor id, or -1. */
int ms_broker_actor_find(const ms_broker *b, const char *id);
/* Slot of actor id, created if new (stages/data_ep unset); -1 if the table is full. */
int ms_broker_actor_slot(ms_broker *b, const char *id);
/* Marks slot dead and re-dispatches everything it held; `why` is logged. */
void ms_broker_actor_lost(ms_broker *b, int slot, const char *why);
/* A sign of life from slot (a message arrived). */
void ms_broker_actor_touch(ms_broker *b, int slot);
/* True if slot can take new work now. */
bool ms_broker_actor_usable(const ms_broker *b, int slot, int64_t now_ms);

/* ---- broker_front.c -------------------------------------------------------- */
void ms_broker_on_front(ms_broker *b, ms_frames_in *in, ms_wire_status st, const char *err);
/* Replies to the producer of r. */
void ms_broker_send_token(ms_broker *b, ms_req *r, uint32_t index, const int32_t *ids, uint32_t n,
                          const char *text);
void ms_broker_send_done(ms_broker *b, ms_req *r, const char *finish, uint64_t prompt_tokens,
                         uint64_t image_tokens);
void ms_broker_send_error(ms_broker *b, ms_req *r, ms_wire_code code, const char *fmt, ...)
    MS_PRINTF(4, 5);

/* ---- broker_back.c --------------------------------------------------------- */
void ms_broker_on_back(ms_broker *b, ms_frames_in *in, ms_wire_status st, const char *err);
/* Sends m to actor slot; on failure marks it unreachable and returns -1. */
int ms_broker_send_actor(ms_broker *b, int slot, const ms_msg *m, const void *const *data,
                         const size_t *len, size_t n);

/* ---- broker_sched.c -------------------------------------------------------- */
/* Queues a freshly accepted request for its first stage. */
void ms_broker_admit(ms_broker *b, ms_req *r);
/* Dispatches what the queues and the actors allow. */
void ms_broker_schedule(ms_broker *b);
/* Task record by id (NULL if it ended or never existed). */
ms_btask *ms_broker_task(ms_broker *b, uint64_t task);
/* Ends a task: releases its charges and forgets it. NULL-safe. */
void ms_broker_task_end(ms_broker *b, ms_btask *t);
/* Releases the "before the first token" prompt charge of a text task. */
void ms_broker_task_prefilled(ms_broker *b, ms_btask *t);
/* A task failed or its actor was lost: puts its work back in a queue (or
 * fails the request past the retry bounds). counts_retry: a TaskError (vs
 * an actor loss / draining). */
void ms_broker_task_failed(ms_broker *b, ms_btask *t, bool counts_retry, const char *code,
                           const char *why);
/* Encoded for a task: marks images ready; when all are, moves the request on. */
void ms_broker_images_encoded(ms_broker *b, ms_req *r, ms_btask *t, const ms_msg_encoded *e,
                              int slot);
/* PrefillDone (disagg): queue the request for a decode actor. */
void ms_broker_prefill_done(ms_broker *b, ms_req *r, ms_btask *t, const ms_msg_prefill_done *p);
/* Ends a request: final state st, cancels whatever actors hold, removes it.
 * The caller has sent the reply. */
void ms_broker_finish(ms_broker *b, ms_req **r_p, ms_req_state st);
/* Ends a request with an Error reply. */
void ms_broker_fail(ms_broker *b, ms_req **r_p, ms_wire_code code, const char *fmt, ...)
    MS_PRINTF(4, 5);
/* Stage the request waits for, or MS_STAGE_COUNT if it waits for none. */
ms_stage ms_broker_req_stage(const ms_broker *b, const ms_req *r);
/* Fills the policy's view of a request. */
void ms_broker_req_view(const ms_broker *b, const ms_req *r, ms_req_view *v, int32_t *img_tok);
/* True if some actor could take `stage` work now (alive, up, stage set). */
bool ms_broker_stage_has_actor(const ms_broker *b, ms_stage stage, int64_t now_ms);

#endif
