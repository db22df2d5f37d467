/* broker_registry.h — the broker's narrow window on Redis: the live actor
 * list (through schemas/registry.h) and the broker's own counters hash.
 *
 * Entries come out as plain data with the stage set as its canonical name
 * (stages.h), which the broker parses with ms_stages_parse().
 *
 * Counters hash: `<prefix>:broker`, one integer field per counter, written
 * whole (HSET of every field) by ms_breg_publish(). Field names and meanings
 * are in docs/broker.md. Redis being down is never an error for the caller's
 * loop: calls fail fast during a reconnect backoff and are retried later.
 */
#ifndef MS_BROKER_REGISTRY_H
#define MS_BROKER_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MS_BREG_ID_MAX     64  /* = MS_ACTOR_ID_MAX */
#define MS_BREG_STR_MAX    256 /* = MS_ACTOR_STR_MAX */
#define MS_BREG_STAGES_MAX 32  /* "encode+prefill+decode" + NUL */
#define MS_BREG_FIELD_MAX  128 /* longest counter field name */

/* One live actor as the registry reports it. */
typedef struct ms_breg_actor {
    char id[MS_BREG_ID_MAX];         /* actor id = its DEALER identity */
    char stages[MS_BREG_STAGES_MAX]; /* canonical stage-set name, e.g. "prefill+decode" */
    char data_ep[MS_BREG_STR_MAX];   /* data-plane endpoint */
    int64_t pid;                     /* process id (changes when the id is restarted) */
    bool draining;                   /* state "draining" */
    int64_t capacity;                /* as registered */
    int64_t queued_image_tokens;     /* load at its last heartbeat */
    int64_t queued_prompt_tokens;
    int64_t running_seqs;
    int64_t free_kv_blocks;
    int64_t heartbeat_age_ms;        /* wall-clock age of its last heartbeat */
} ms_breg_actor;

typedef struct ms_breg ms_breg;

/* A client for Redis at host:port with key prefix (NULL/0 → defaults). Never
 * fails because Redis is down; NULL + err for invalid arguments only. */
ms_breg *ms_breg_new(const char *host, int port, const char *prefix, char *err, size_t err_size);
void ms_breg_destroy(ms_breg **r_p);

/* Lists the live actors. 0 with *out (malloc'd, free()) and *n; -1 when Redis
 * did not answer (reason in ms_breg_errstr). */
int ms_breg_list(ms_breg *r, ms_breg_actor **out, int *n);
const char *ms_breg_errstr(const ms_breg *r);

/* Writes n counters into `<prefix>:broker` (HSET name value ...), replacing
 * the hash. 0 or -1 (Redis unavailable). */
int ms_breg_publish(ms_breg *r, const char *const *names, const int64_t *values, int n);

/* After Redis comes back (or seems to have restarted: most listed actors
 * vanished at once), how long actors get to re-register before any is
 * declared dead: one TTL plus the longest reconnect backoff (ms). */
int64_t ms_breg_grace_ms(void);

/* Appends a line to the broker's event list `<prefix>:events:broker`. */
void ms_breg_event(ms_breg *r, const char *text);

#endif
