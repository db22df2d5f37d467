/* broker.h — the modserve broker: the control plane of the pipeline
 * (DESIGN.md §1, docs/broker.md).
 *
 * A broker binds two ZeroMQ ROUTER sockets: the front one for producers
 * (Submit / Cancel / StatsRequest in; Accepted / Token / Done / Error / Stats
 * out) and the back one for actors (Hello / Bye / Encoded / TokenOut /
 * TaskDone / PrefillDone / TaskError in; EncodeTask / PrefillTask /
 * DecodeTask / CancelTask out). It owns one state machine per request
 * (broker/reqtable.h), routes work with the pure policies of broker/policy.h
 * under the batch caps and limits of a profile (broker/profile.h), watches
 * the actors through the Redis registry and re-dispatches the work of actors
 * that die. It never touches image features or KV blocks: those move peer to
 * peer between actors.
 *
 * The broker opens the text model's GGUF (mmap, tokenizer and chat template
 * only; no weights are read) and the mmproj's hyperparameters, so that it can
 * render chat templates and tokenize exactly as modserve-run does, count image
 * tokens, reject prompts that do not fit the context, and order queues by
 * the real token counts.
 *
 * One thread: ms_broker_run() polls both sockets with a timer (the "cron",
 * every MS_BROKER_CRON_MS) that polls the registry, expires timeouts and
 * publishes counters. ms_broker_stop() may be called from a signal handler.
 */
#ifndef MS_BROKER_H
#define MS_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy.h"
#include "registry.h"

#define MS_BROKER_FRONT_DEFAULT      "tcp://127.0.0.1:5555" /* producers' endpoint */
#define MS_BROKER_BACK_DEFAULT       "tcp://127.0.0.1:5556" /* actors' endpoint */
#define MS_BROKER_TIMEOUT_MS_DEFAULT 120000 /* request timeout when neither side gives one */
#define MS_BROKER_CRON_MS            100    /* timer period: timeouts, stats, scheduling */
#define MS_BROKER_REGISTRY_POLL_MS   500    /* registry list interval (= heartbeat interval) */
#define MS_BROKER_REPORT_AGE_MS      500    /* a listed load report may be this old */
#define MS_BROKER_STATS_MS           1000   /* interval of the counters written to Redis */
#define MS_BROKER_MISSING_MS                                                                       \
    1000 /* an actor absent from the registry this long                                            \
            (while Redis answers) is dead */
#define MS_BROKER_STALE_MS                                                                         \
    (4 * MS_REGISTRY_HEARTBEAT_MS) /* an actor whose listed heartbeat is this old is dead,      \
                                      without waiting for its entry to expire */
#define MS_BROKER_HELLO_GRACE_MS                                                                   \
    3000 /* an actor known only from its Hello is kept this                                        \
            long before the registry must confirm it */
#define MS_BROKER_UNREACHABLE_MS                                                                   \
    1000                             /* an actor a send failed to (EHOSTUNREACH) is                \
                                        skipped by routing this long */
#define MS_BROKER_MAX_RETRIES    3   /* TaskError retries of one request */
#define MS_BROKER_MAX_REDISPATCH 8   /* re-dispatches of one request after actor loss */
#define MS_BROKER_MAX_ACTORS     256 /* actors in the broker's view */
#define MS_BROKER_LINGER_MS      500 /* at stop: time given to queued replies to leave */

typedef struct ms_broker_config {
    const char *front_ep;      /* producers' ROUTER bind endpoint; NULL: MS_BROKER_FRONT_DEFAULT */
    const char *back_ep;       /* actors' ROUTER bind endpoint; NULL: MS_BROKER_BACK_DEFAULT */
    const char *redis_host;    /* registry Redis host; NULL: 127.0.0.1 */
    int redis_port;            /* <= 0: MS_REGISTRY_DEFAULT_PORT */
    const char *redis_prefix;  /* registry key prefix; NULL: "ms" */
    const char *model_path;    /* text model GGUF (required): tokenizer + chat template */
    const char *mmproj_path;   /* mmproj GGUF, NULL for a text-only broker (image requests are
                                  then rejected) */
    const char *chat_template; /* template name overriding the model's (chat.h), or NULL */
    ms_layout layout;          /* which actors take which stage (policy.h) */
    const char *profile_path;  /* stage profile JSON, NULL: ms_profile_default() */
    int max_queue;             /* requests held at most (overrides the profile's
                                  max_pending_requests when > 0) */
    int request_timeout_ms;    /* default per-request timeout (Submit.timeout_ms overrides);
                                  also how long a stage may have no actor before requests that
                                  need it fail "unavailable"; <= 0: MS_BROKER_TIMEOUT_MS_DEFAULT */
    int n_ctx;                 /* tokens one sequence may hold at the actors; <= 0: the
                                  model's context_length capped at MS_ENGINE_KV_TOKENS_DEFAULT,
                                  as the engine's default */
} ms_broker_config;

/* Fills c with the defaults above (layout modserve, no model). */
void ms_broker_config_default(ms_broker_config *c);

typedef struct ms_broker ms_broker;

/* Opens the model files, reads the profile, binds both sockets and creates
 * the registry client (Redis need not be up). NULL + err (naming the file,
 * endpoint or option) on failure. */
ms_broker *ms_broker_new(const ms_broker_config *c, char *err, size_t err_size);

/* Frees everything (pending requests are dropped without replies); NULLs *b_p. */
void ms_broker_destroy(ms_broker **b_p);

/* Serves until ms_broker_stop() is called or the zmq context is terminated.
 * On a requested stop every live request ends with Error "unavailable" (and
 * CancelTask to its actors). Returns 0 on a requested stop, -1 + err on a
 * socket failure. */
int ms_broker_run(ms_broker *b, char *err, size_t err_size);

/* Asks ms_broker_run() to return at its next wake-up (at most
 * MS_BROKER_CRON_MS later). Async-signal-safe. */
void ms_broker_stop(ms_broker *b);

/* The endpoints actually bound (useful with "tcp://127.0.0.1:*"). Owned by b. */
const char *ms_broker_front_endpoint(const ms_broker *b);
const char *ms_broker_back_endpoint(const ms_broker *b);

#endif
