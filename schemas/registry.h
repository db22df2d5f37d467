/* registry.h — the actor registry in Redis (hiredis 0.14, synchronous API).
 *
 * Every actor publishes one hash `<prefix>:actor:<id>` with a TTL that its
 * heartbeat refreshes, and adds its id to the set `<prefix>:actors`. Readers
 * (broker, autoscaler, `modserve status`) list the set and fetch the hashes;
 * a member whose hash has expired is pruned from the set. Redis TTL is the
 * liveness source: an actor that stops heartbeating vanishes after
 * MS_REGISTRY_TTL_MS. The key layout and every field are described in
 * docs/registry.md.
 *
 * Availability: an ms_registry never needs Redis to be up. ms_registry_new()
 * succeeds even when Redis cannot be reached; every call (re)connects lazily,
 * with exponential backoff between attempts (a call made during the backoff
 * window fails at once without touching the network), each connect and each
 * reply wait is bounded by MS_REGISTRY_TIMEOUT_MS, and failure is reported as
 * -1 with the reason in ms_registry_errstr(), so callers keep running. After a
 * Redis restart without persistence, the next ms_registry_heartbeat() sees
 * the hash missing and registers again in full.
 *
 * Threads: an ms_registry is not thread-safe; use one per thread.
 */
#ifndef MS_REGISTRY_H
#define MS_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "stages.h"

#define MS_REGISTRY_HEARTBEAT_MS   500  /* interval at which actors call ms_registry_heartbeat() */
#define MS_REGISTRY_TTL_MS         2000 /* TTL of an actor hash; refreshed by each heartbeat */
#define MS_REGISTRY_DEFAULT_PREFIX "ms" /* key prefix when none is given */
#define MS_REGISTRY_DEFAULT_PORT   6379 /* Redis port when none is configured */
#define MS_REGISTRY_TIMEOUT_MS     200  /* bound on one connect and on one reply wait */
#define MS_REGISTRY_BACKOFF_MIN_MS 50   /* first wait after a failed connect */
#define MS_REGISTRY_BACKOFF_MAX_MS 1000 /* backoff doubles up to this */
#define MS_REGISTRY_LIST_MAX       4096 /* at most this many actors returned by one list */
#define MS_REGISTRY_EVENTS_MAX     1000 /* an event list keeps its newest this many entries */
#define MS_REGISTRY_EVENT_TEXT_MAX 1024 /* longest event text (bytes); longer text is cut */

/* String field capacities (bytes, including the terminating NUL). A value
 * read from Redis that does not fit is a bad entry (skipped), never cut. */
#define MS_ACTOR_ID_MAX     64  /* [A-Za-z0-9._:-]+ */
#define MS_ACTOR_PREFIX_MAX 64  /* key prefix, same characters as an id */
#define MS_ACTOR_STR_MAX    256 /* model, ctrl, data_ep, host: printable ASCII (0x20-0x7e) */
#define MS_ACTOR_DEVICE_MAX 64  /* e.g. "cpu", "cuda:0"; printable ASCII */

/* Stages, stage sets (MS_STAGES_* masks) and actor states: stages.h. */

/* One actor as published in the registry. Plain data (no pointers): copy it
 * freely. Counters are totals since the actor started. */
typedef struct {
    char id[MS_ACTOR_ID_MAX];         /* actor id, also its DEALER identity, e.g. "enc-1" */
    uint32_t stages;                  /* MS_STAGES_* mask (stages.h), non-zero */
    char model[MS_ACTOR_STR_MAX];     /* model name (the LM GGUF's name or path) */
    char ctrl[MS_ACTOR_STR_MAX];      /* broker back endpoint it is connected to */
    char data_ep[MS_ACTOR_STR_MAX];   /* its data-plane ROUTER endpoint (features, KV pulls) */
    char host[MS_ACTOR_STR_MAX];      /* host name it runs on */
    int64_t pid;                      /* process id on that host, > 0 */
    char device[MS_ACTOR_DEVICE_MAX]; /* compute device, e.g. "cpu" */
    int64_t capacity;                 /* max concurrent sequences / encode batch size, >= 0 */
    ms_actor_state state;             /* up | draining */
    int64_t heartbeat_ms;             /* wall clock (Unix epoch ms) of the last register/heartbeat;
                                         written by the registry, ignored on input */
    /* load (a snapshot at heartbeat time; all >= 0) */
    int64_t queued_image_tokens;  /* image tokens waiting to be encoded */
    int64_t queued_prompt_tokens; /* prompt tokens waiting to be prefilled */
    int64_t running_seqs;         /* sequences decoding right now */
    int64_t free_kv_blocks;       /* KV cache blocks free */
    /* counters (monotonic; all >= 0) */
    int64_t images_encoded;     /* images run through the vision tower */
    int64_t images_cache_hits;  /* images served from the feature cache */
    int64_t requests_prefilled; /* prefills completed */
    int64_t tokens_decoded;     /* tokens generated */
    int64_t tasks_done;         /* tasks finished (any stage) */
} ms_actor_info;

typedef struct ms_registry ms_registry;

/* Creates a registry client for Redis at host:port (host NULL or "" means
 * "127.0.0.1", port <= 0 means MS_REGISTRY_DEFAULT_PORT) whose keys start
 * with `prefix` (NULL or "" means MS_REGISTRY_DEFAULT_PREFIX). Tries to connect
 * once (bounded by MS_REGISTRY_TIMEOUT_MS); being unable to connect is NOT an
 * error (calls retry lazily). Returns NULL and fills err only for invalid
 * arguments (bad prefix characters or length, host too long). */
ms_registry *ms_registry_new(const char *host, int port, const char *prefix, char *err,
                             size_t err_size);

/* Closes the connection, frees *self and sets it to NULL. NULL-safe. */
void ms_registry_destroy(ms_registry **self);

/* The reason of the last failed call ("" if none yet). Owned by the
 * registry, valid until its next call. */
const char *ms_registry_errstr(const ms_registry *self);

/* 1 if a connection is open right now (it may still turn out dead), else 0. */
int ms_registry_connected(const ms_registry *self);

/* Connects now if needed (respecting the backoff) and sends PING. 0 if Redis
 * answered, -1 otherwise. */
int ms_registry_ping(ms_registry *self);

/* Writes every field of info into `<prefix>:actor:<id>`, sets its TTL to
 * MS_REGISTRY_TTL_MS and adds id to `<prefix>:actors`, in one MULTI/EXEC
 * (stale fields of an earlier registration are removed). heartbeat_ms is set
 * to the current wall-clock time. info is validated (id characters, string
 * lengths, stages, non-negative numbers): -1 on invalid info or Redis failure. */
int ms_registry_register(ms_registry *self, const ms_actor_info *info);

/* Refreshes the load fields, counters, state, heartbeat_ms and the TTL of an
 * actor already registered (one atomic script). If the hash is gone (it
 * expired, or Redis restarted without persistence) it registers info in full,
 * as ms_registry_register(). Returns 0 (refreshed or re-registered) or -1. */
int ms_registry_heartbeat(ms_registry *self, const ms_actor_info *info);

/* Sets info->state = state (always, so that a later heartbeat or
 * re-registration carries it even if Redis is down now), then publishes it
 * at once with a heartbeat. Returns 0 or -1 (Redis failure or invalid info). */
int ms_registry_set_state(ms_registry *self, ms_actor_info *info, ms_actor_state state);

/* Deletes the actor's hash and removes id from the set (one MULTI/EXEC).
 * Deregistering an id that is not registered succeeds. Returns 0 or -1. */
int ms_registry_deregister(ms_registry *self, const char *id);

/* Lists the live actors: SMEMBERS, then one pipelined HGETALL per member.
 * Members whose hash no longer exists are removed from the set (pruned).
 * Entries are parsed strictly: a missing field, a number with trailing
 * characters or out of range, an over-long or non-printable string, an
 * unknown stage or state, a hash of the wrong Redis type, or an id that does
 * not match its key make the entry skipped with a warning (ms_warn), never
 * returned. Unknown extra fields are ignored (room for later versions).
 * On success *out is a malloc'd array of *n entries sorted by id (the caller
 * frees it with free(); *out is NULL when *n is 0) and 0 is returned; on
 * failure *out = NULL, *n = 0 and -1 is returned. */
int ms_registry_list(ms_registry *self, ms_actor_info **out, int *n);

/* Fetches one actor. Returns 0 and fills *out if it is registered and valid,
 * 1 if it is not registered (or its entry is invalid: see ms_registry_list),
 * -1 on Redis failure. */
int ms_registry_get(ms_registry *self, const char *id, ms_actor_info *out);

/* Appends "<epoch_ms> <text>" to the capped list `<prefix>:events:<name>`
 * (LPUSH + LTRIM to the newest MS_REGISTRY_EVENTS_MAX, in one MULTI/EXEC);
 * text longer than MS_REGISTRY_EVENT_TEXT_MAX is cut. name has the id
 * character set (e.g. "autoscaler", "broker"). Returns 0 or -1. */
int ms_registry_log_event(ms_registry *self, const char *name, const char *text);

/* Reads the newest max (<= MS_REGISTRY_EVENTS_MAX) entries of
 * `<prefix>:events:<name>`, newest first. On success *lines is a malloc'd
 * array of *n malloc'd strings (free with ms_registry_events_free) and 0 is
 * returned; -1 on failure (*lines = NULL, *n = 0). */
int ms_registry_events(ms_registry *self, const char *name, int max, char ***lines, int *n);
void ms_registry_events_free(char ***lines, int n);


/* Wall clock in Unix epoch milliseconds (what heartbeat_ms holds). */
int64_t ms_registry_now_ms(void);

#endif
