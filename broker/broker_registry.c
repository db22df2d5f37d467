/* broker_registry.c — see broker_registry.h. The actor list goes through
 * schemas/registry.h; the counters hash uses its own small hiredis
 * connection (same timeouts and backoff rules as the registry). */
#include "broker_registry.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "ms_common.h"
#include "registry.h"

#define S_HOST_MAX     256 /* Redis host name bytes */
#define S_KEY_MAX      (MS_ACTOR_PREFIX_MAX + 16)
#define S_MAX_COUNTERS 512 /* fields of one publish */

struct ms_breg {
    ms_registry *reg;      /* actor list + events */
    char host[S_HOST_MAX]; /* Redis host for the counters connection */
    int port;
    char key[S_KEY_MAX]; /* "<prefix>:broker" */
    redisContext *c;     /* counters connection, NULL when closed */
    int backoff_ms;      /* current reconnect backoff, 0 after a success */
    int64_t next_try_ns; /* no connect attempt before this (monotonic) */
};

ms_breg *ms_breg_new(const char *host, int port, const char *prefix, char *err, size_t err_size) {
    if (!host || !host[0]) host = "127.0.0.1";
    if (port <= 0) port = MS_REGISTRY_DEFAULT_PORT;
    if (!prefix || !prefix[0]) prefix = MS_REGISTRY_DEFAULT_PREFIX;
    if (strlen(host) >= S_HOST_MAX) {
        ms_errf(err, err_size, "redis host '%.64s...' is too long", host);
        return NULL;
    }
    ms_registry *reg = ms_registry_new(host, port, prefix, err, err_size);
    if (!reg) return NULL;
    ms_breg *r = ms_xcalloc(1, sizeof(*r));
    r->reg = reg;
    snprintf(r->host, sizeof(r->host), "%s", host);
    r->port = port;
    snprintf(r->key, sizeof(r->key), "%s:broker", prefix);
    return r;
}

void ms_breg_destroy(ms_breg **r_p) {
    ms_breg *r = *r_p;
    if (!r) return;
    ms_registry_destroy(&r->reg);
    if (r->c) redisFree(r->c);
    free(r);
    *r_p = NULL;
}

const char *ms_breg_errstr(const ms_breg *r) {
    return ms_registry_errstr(r->reg);
}

int ms_breg_list(ms_breg *r, ms_breg_actor **out, int *n) {
    *out = NULL;
    *n = 0;
    ms_actor_info *infos = NULL;
    int ni = 0;
    if (ms_registry_list(r->reg, &infos, &ni) != 0) return -1;
    if (ni > 0) {
        ms_breg_actor *a = ms_xcalloc((size_t)ni, sizeof(*a));
        for (int i = 0; i < ni; i++) {
            const ms_actor_info *in = &infos[i];
            snprintf(a[i].id, sizeof(a[i].id), "%s", in->id);
            char buf[MS_STAGES_STR_MAX];
            snprintf(a[i].stages, sizeof(a[i].stages), "%s",
                     ms_stages_name(in->stages, buf, sizeof buf));
            snprintf(a[i].data_ep, sizeof(a[i].data_ep), "%s", in->data_ep);
            a[i].pid = in->pid;
            a[i].draining = in->state == MS_ACTOR_DRAINING;
            a[i].capacity = in->capacity;
            a[i].queued_image_tokens = in->queued_image_tokens;
            a[i].queued_prompt_tokens = in->queued_prompt_tokens;
            a[i].running_seqs = in->running_seqs;
            a[i].free_kv_blocks = in->free_kv_blocks;
            a[i].heartbeat_age_ms = ms_registry_now_ms() - in->heartbeat_ms;
        }
        *out = a;
        *n = ni;
    }
    free(infos);
    return 0;
}

int64_t ms_breg_grace_ms(void) {
    return MS_REGISTRY_TTL_MS + MS_REGISTRY_BACKOFF_MAX_MS;
}

void ms_breg_event(ms_breg *r, const char *text) {
    (void)ms_registry_log_event(r->reg, "broker", text);
}

/* Connects the counters context if needed, respecting the backoff. 0 / -1. */
static int s_connect(ms_breg *r) {
    if (r->c) return 0;
    if (ms_now_ns() < r->next_try_ns) return -1;
    struct timeval tv = {.tv_sec = MS_REGISTRY_TIMEOUT_MS / 1000,
                         .tv_usec = (MS_REGISTRY_TIMEOUT_MS % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(r->host, r->port, tv);
    if (!c || c->err || redisSetTimeout(c, tv) != REDIS_OK) {
        if (c) redisFree(c);
        r->backoff_ms = r->backoff_ms ? MS_MIN(2 * r->backoff_ms, MS_REGISTRY_BACKOFF_MAX_MS)
                                      : MS_REGISTRY_BACKOFF_MIN_MS;
        r->next_try_ns = ms_now_ns() + (int64_t)r->backoff_ms * 1000000;
        return -1;
    }
    r->c = c;
    r->backoff_ms = 0;
    return 0;
}

int ms_breg_publish(ms_breg *r, const char *const *names, const int64_t *values, int n) {
    if (n <= 0 || n > S_MAX_COUNTERS) return -1;
    if (s_connect(r) != 0) return -1;
    /* DEL + HSET in one MULTI/EXEC so readers never see a half-written hash */
    int argc = 2 + 2 * n;
    const char **argv = ms_xcalloc((size_t)argc, sizeof(*argv));
    size_t *argl = ms_xcalloc((size_t)argc, sizeof(*argl));
    char(*num)[24] = ms_xcalloc((size_t)n, sizeof(*num));
    argv[0] = "HSET";
    argv[1] = r->key;
    for (int i = 0; i < n; i++) {
        snprintf(num[i], sizeof(num[i]), "%lld", (long long)values[i]);
        argv[2 + 2 * i] = names[i];
        argv[3 + 2 * i] = num[i];
    }
    for (int i = 0; i < argc; i++)
        argl[i] = strlen(argv[i]);
    int rc = 0;
    redisAppendCommand(r->c, "MULTI");
    redisAppendCommand(r->c, "DEL %s", r->key);
    redisAppendCommandArgv(r->c, argc, argv, argl);
    redisAppendCommand(r->c, "EXEC");
    for (int i = 0; i < 4; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(r->c, (void **)&rep) != REDIS_OK) {
            rc = -1;
            break;
        }
        if (rep && rep->type == REDIS_REPLY_ERROR) rc = -1;
        freeReplyObject(rep);
    }
    if (rc != 0) {
        redisFree(r->c); /* reconnect next time */
        r->c = NULL;
    }
    free(argv);
    free(argl);
    free(num);
    return rc;
}
