/* autoscaler.c — the modserve-autoscaler process around the pure decisions
 * of autoscale.h: load windows from the broker's counters, members from the
 * registry and the backend, decisions carried out and recorded. See
 * autoscaler.h and docs/autoscaler.md. */
#include "autoscaler.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "cluster.h"
#include "ms_common.h"
#include "profile.h"
#include "registry.h"

#define S_KEY_MAX     (MS_ACTOR_PREFIX_MAX + 32) /* "<prefix>:autoscaler" */
#define S_HASH_FIELDS 256                        /* fields of the autoscaler hash at most */
#define S_FIELD_MAX   64                         /* one field name */
#define S_SLEEP_MS    50                         /* run loop: longest sleep between checks */

/* ---- a small hiredis connection (the counters hash and our own hash) ------------------ */

typedef struct {
    char host[MS_AUTOSCALER_HOST_MAX];
    int port;
    redisContext *c;     /* NULL when closed */
    int backoff_ms;      /* reconnect backoff, 0 after a success */
    int64_t next_try_ns; /* no connect attempt before this */
} s_redis;

static int s_redis_connect(s_redis *r) {
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

static void s_redis_close(s_redis *r) {
    if (r->c) redisFree(r->c);
    r->c = NULL;
}

/* ---- the autoscaler --------------------------------------------------------------------- */

static void s_backend_log(void *user, const char *line);

struct ms_autoscaler {
    ms_autoscaler_config cfg;
    ms_scaler *backend;           /* owned */
    ms_registry *reg;             /* actor list, events */
    s_redis redis;                /* counters hash, our hash */
    char counters_key[S_KEY_MAX]; /* <prefix>:broker */
    char hash_key[S_KEY_MAX];     /* <prefix>:autoscaler */

    ms_load_counters *snap; /* [n_snap] counter snapshots, oldest first */
    int n_snap;
    int64_t broker_pid; /* pid in the counters hash, 0 unknown */
    bool counters_warned;

    ms_load_window *win; /* [n_win] load history, oldest first */
    int n_win;

    ms_pool_state state[MS_AUTOSCALE_MAX_POOLS];
    ms_scaler_actor (*members)[MS_SCALER_MAX_MEMBERS]; /* [n_pools] */
    int n_members[MS_AUTOSCALE_MAX_POOLS];
    ms_scale_actor (*views)[MS_SCALER_MAX_MEMBERS]; /* [n_pools] */
    ms_pool_decision out[MS_AUTOSCALE_MAX_POOLS];
    bool decided;                                                     /* out holds a decision */
    char last_shape[MS_AUTOSCALE_MAX_POOLS][MS_AUTOSCALE_REASON_MAX]; /* last hold logged */
    bool sized;                                                       /* initial sizing done */
    char (*hash_names)[S_FIELD_MAX];              /* [S_HASH_FIELDS] scratch of s_publish */
    char (*hash_values)[MS_AUTOSCALE_REASON_MAX]; /* [S_HASH_FIELDS] */
    bool reg_warned;                              /* registry outage logged */
};

void ms_autoscaler_config_default(ms_autoscaler_config *c) {
    memset(c, 0, sizeof(*c));
    snprintf(c->redis_host, sizeof(c->redis_host), "%s", "127.0.0.1");
    c->redis_port = MS_REGISTRY_DEFAULT_PORT;
    snprintf(c->prefix, sizeof(c->prefix), "%s", MS_REGISTRY_DEFAULT_PREFIX);
    ms_autoscale_config_default(&c->policy);
    c->interval_ms = MS_AUTOSCALER_INTERVAL_MS_DEFAULT;
    c->history_ms = MS_AUTOSCALER_HISTORY_MS_DEFAULT;
}

int ms_autoscaler_config_validate(const ms_autoscaler_config *c, char *err, size_t err_size) {
    if (ms_autoscale_config_validate(&c->policy, err, err_size) != 0) return -1;
    if (c->interval_ms <= 0) return ms_errf(err, err_size, "interval must be > 0");
    if (c->redis_port <= 0 || c->redis_port > 65535)
        return ms_errf(err, err_size, "redis port %d out of range", c->redis_port);
    if (c->history_ms < 0) return ms_errf(err, err_size, "history must be >= 0");
    if (c->n_pools < 1 || c->n_pools > MS_AUTOSCALE_MAX_POOLS)
        return ms_errf(err, err_size, "%d pools (1..%d): nothing to scale", c->n_pools,
                       MS_AUTOSCALE_MAX_POOLS);
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        if (!isfinite(c->capacity[s]) || c->capacity[s] < 0)
            return ms_errf(err, err_size, "capacity of %s must be >= 0",
                           ms_stage_name((ms_stage)s));
    for (int p = 0; p < c->n_pools; p++) {
        const ms_scaler_pool *pc = &c->pools[p];
        if (!pc->name[0] || !pc->target[0])
            return ms_errf(err, err_size, "pool %d: no name or target", p);
        if (pc->stages == 0 || (pc->stages & ~(uint32_t)MS_STAGES_ALL))
            return ms_errf(err, err_size, "pool %s: bad stage set", pc->name);
        if (pc->min_replicas < 0 || pc->max_replicas < pc->min_replicas ||
            pc->max_replicas > MS_AUTOSCALE_MAX_REPLICAS)
            return ms_errf(err, err_size, "pool %s: min %d / max %d out of range", pc->name,
                           pc->min_replicas, pc->max_replicas);
        for (int q = 0; q < p; q++)
            if (c->pools[q].stages == pc->stages)
                return ms_errf(err, err_size, "pools %s and %s run the same stages",
                               c->pools[q].name, pc->name);
    }
    return 0;
}

ms_autoscaler *ms_autoscaler_new(const ms_autoscaler_config *cfg, ms_scaler **backend, char *err,
                                 size_t err_size) {
    assert(cfg && backend && *backend);
    if (ms_autoscaler_config_validate(cfg, err, err_size) != 0) {
        ms_scaler_destroy(backend);
        return NULL;
    }
    ms_registry *reg =
        ms_registry_new(cfg->redis_host, cfg->redis_port, cfg->prefix, err, err_size);
    if (!reg) {
        ms_scaler_destroy(backend);
        return NULL;
    }
    ms_autoscaler *a = ms_xcalloc(1, sizeof(*a));
    a->cfg = *cfg;
    a->backend = *backend;
    *backend = NULL;
    ms_scaler_set_log(a->backend, s_backend_log, a);
    a->reg = reg;
    snprintf(a->redis.host, sizeof(a->redis.host), "%s", cfg->redis_host);
    a->redis.port = cfg->redis_port;
    snprintf(a->counters_key, sizeof(a->counters_key), "%s:broker", cfg->prefix);
    snprintf(a->hash_key, sizeof(a->hash_key), "%s:%s", cfg->prefix, MS_AUTOSCALER_KEY);
    a->snap = ms_xcalloc(MS_AUTOSCALER_MAX_SNAPSHOTS, sizeof(*a->snap));
    a->win = ms_xcalloc(MS_AUTOSCALER_MAX_WINDOWS, sizeof(*a->win));
    a->members = ms_xcalloc((size_t)cfg->n_pools, sizeof(*a->members));
    a->views = ms_xcalloc((size_t)cfg->n_pools, sizeof(*a->views));
    a->hash_names = ms_xcalloc(S_HASH_FIELDS, sizeof(*a->hash_names));
    a->hash_values = ms_xcalloc(S_HASH_FIELDS, sizeof(*a->hash_values));
    for (int p = 0; p < cfg->n_pools; p++)
        a->state[p] = ms_pool_state_initial();
    return a;
}

void ms_autoscaler_destroy(ms_autoscaler **ap) {
    if (!ap || !*ap) return;
    ms_autoscaler *a = *ap;
    ms_scaler_destroy(&a->backend);
    ms_registry_destroy(&a->reg);
    s_redis_close(&a->redis);
    free(a->snap);
    free(a->win);
    free(a->members);
    free(a->views);
    free(a->hash_names);
    free(a->hash_values);
    free(a);
    *ap = NULL;
}

const ms_pool_decision *ms_autoscaler_last(const ms_autoscaler *a, int *n) {
    *n = a->decided ? a->cfg.n_pools : 0;
    return a->decided ? a->out : NULL;
}

const ms_load_window *ms_autoscaler_latest_window(const ms_autoscaler *a) {
    return a->n_win > 0 ? &a->win[a->n_win - 1] : NULL;
}

/* A line to the log and the Redis event list. */
static void s_event(ms_autoscaler *a, const char *fmt, ...) MS_PRINTF(2, 3);
static void s_event(ms_autoscaler *a, const char *fmt, ...) {
    char line[MS_REGISTRY_EVENT_TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    ms_info("autoscaler: %s", line);
    if (!a->cfg.dry_run) (void)ms_registry_log_event(a->reg, MS_AUTOSCALER_EVENTS, line);
}

static void s_backend_log(void *user, const char *line) {
    s_event(user, "%s", line);
}

/* ---- load: counter snapshots and windows ------------------------------------------------ */

static bool s_parse_i64(const char *s, int64_t *out) {
    if (!s || !*s) return false;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0') return false;
    *out = v;
    return true;
}

/* Reads `<prefix>:broker` into *c (at_ms = now_ms) and its pid. 1 if the hash
 * exists, 0 if it does not (no broker yet), -1 if Redis did not answer. */
static int s_read_counters(ms_autoscaler *a, int64_t now_ms, ms_load_counters *c, int64_t *pid) {
    memset(c, 0, sizeof(*c));
    c->at_ms = now_ms;
    *pid = 0;
    if (s_redis_connect(&a->redis) != 0) return -1;
    redisReply *rep = redisCommand(a->redis.c, "HGETALL %s", a->counters_key);
    if (!rep) {
        s_redis_close(&a->redis);
        return -1;
    }
    int rc = 1;
    if (rep->type != REDIS_REPLY_ARRAY) {
        rc = -1;
    } else if (rep->elements == 0) {
        rc = 0;
    } else {
        for (size_t i = 0; i + 1 < rep->elements; i += 2) {
            const redisReply *k = rep->element[i], *v = rep->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
            int64_t x = 0;
            if (!s_parse_i64(v->str, &x) || x < 0) continue;
            const char *f = k->str;
            if (strcmp(f, "image_tokens") == 0)
                c->image_tokens = x;
            else if (strcmp(f, "prompt_tokens") == 0)
                c->prompt_tokens = x;
            else if (strcmp(f, "tokens") == 0)
                c->generated_tokens = x;
            else if (strcmp(f, "images") == 0)
                c->images = x;
            else if (strcmp(f, "requests_image") == 0)
                c->image_requests = x;
            else if (strcmp(f, "slo_requests") == 0)
                c->requests_done = x;
            else if (strcmp(f, "slo_met") == 0)
                c->requests_met = x;
            else if (strcmp(f, "pid") == 0)
                *pid = x;
            else if (strncmp(f, "slo_seen:", 9) == 0 || strncmp(f, "slo_ok:", 7) == 0) {
                const bool seen = f[4] == 's';
                const char *stage = strchr(f, ':') + 1;
                for (int s = 0; s < MS_STAGE_COUNT; s++)
                    if (strcmp(stage, ms_stage_name((ms_stage)s)) == 0) {
                        if (seen)
                            c->stage_seen[s] = x;
                        else
                            c->stage_met[s] = x;
                    }
            }
        }
    }
    freeReplyObject(rep);
    if (rc < 0) s_redis_close(&a->redis);
    return rc;
}

/* Takes a snapshot and, with two or more, appends the latest window. */
static void s_update_load(ms_autoscaler *a, int64_t now_ms) {
    ms_load_counters cur;
    int64_t pid = 0;
    const int rc = s_read_counters(a, now_ms, &cur, &pid);
    if (rc <= 0) {
        if (!a->counters_warned)
            s_event(a, "no broker counters (%s): load unknown, only min/max act",
                    rc < 0 ? "Redis did not answer" : "no broker has published them yet");
        a->counters_warned = true;
        return;
    }
    if (a->counters_warned) s_event(a, "broker counters readable again");
    a->counters_warned = false;
    if (a->broker_pid != 0 && pid != a->broker_pid) {
        s_event(a, "the broker restarted (pid %" PRId64 " -> %" PRId64 "): load history restarts",
                a->broker_pid, pid);
        a->n_snap = 0;
    }
    a->broker_pid = pid;
    if (a->n_snap > 0 && a->snap[a->n_snap - 1].at_ms >= now_ms) return;
    if (a->n_snap == MS_AUTOSCALER_MAX_SNAPSHOTS) {
        memmove(&a->snap[0], &a->snap[1], (size_t)(a->n_snap - 1) * sizeof(a->snap[0]));
        a->n_snap--;
    }
    a->snap[a->n_snap++] = cur;
    /* the window: from the newest snapshot at least window_ms old (else the oldest) */
    const int64_t from = now_ms - a->cfg.policy.window_ms;
    int base = 0;
    for (int i = a->n_snap - 2; i >= 0; i--)
        if (a->snap[i].at_ms <= from) {
            base = i;
            break;
        }
    /* snapshots before the base are no longer needed */
    if (base > 0) {
        memmove(&a->snap[0], &a->snap[base], (size_t)(a->n_snap - base) * sizeof(a->snap[0]));
        a->n_snap -= base;
    }
    if (a->n_snap < 2) return;
    ms_load_window w;
    if (ms_load_window_from_counters(&a->snap[0], &a->snap[a->n_snap - 1], &w) != 0) return;
    /* history: what the down cooldown needs, plus two windows */
    const int64_t keep_from = now_ms - a->cfg.policy.down_cooldown_ms - 2 * a->cfg.policy.window_ms;
    int drop = 0;
    while (drop < a->n_win && a->win[drop].end_ms < keep_from)
        drop++;
    if (a->n_win - drop >= MS_AUTOSCALER_MAX_WINDOWS)
        drop = a->n_win - MS_AUTOSCALER_MAX_WINDOWS + 1;
    if (drop > 0) {
        memmove(&a->win[0], &a->win[drop], (size_t)(a->n_win - drop) * sizeof(a->win[0]));
        a->n_win -= drop;
    }
    a->win[a->n_win++] = w;
    char line[MS_REGISTRY_EVENT_TEXT_MAX];
    snprintf(line, sizeof(line),
             "len_ms=%" PRId64 " encode=%.3f prefill=%.3f decode=%.3f images=%.4f "
             "image_requests=%.4f requests=%d met=%d att_encode=%.4f att_prefill=%.4f "
             "att_decode=%.4f",
             w.len_ms, w.load[MS_STAGE_ENCODE], w.load[MS_STAGE_PREFILL], w.load[MS_STAGE_DECODE],
             w.images_per_s, w.image_requests_per_s, w.requests, w.requests_met,
             w.stage_attainment[MS_STAGE_ENCODE], w.stage_attainment[MS_STAGE_PREFILL],
             w.stage_attainment[MS_STAGE_DECODE]);
    if (!a->cfg.dry_run) (void)ms_registry_log_event(a->reg, MS_AUTOSCALER_WINDOW_EVENTS, line);
}

/* Parses one recorded window line ("<epoch_ms> len_ms=..."). 0 / -1. */
static int s_parse_window_line(const char *line, int64_t *epoch_ms, ms_load_window *w) {
    memset(w, 0, sizeof(*w));
    long long ep = 0, len = 0;
    int n = sscanf(line,
                   "%lld len_ms=%lld encode=%lf prefill=%lf decode=%lf images=%lf "
                   "image_requests=%lf requests=%d met=%d att_encode=%lf att_prefill=%lf "
                   "att_decode=%lf",
                   &ep, &len, &w->load[MS_STAGE_ENCODE], &w->load[MS_STAGE_PREFILL],
                   &w->load[MS_STAGE_DECODE], &w->images_per_s, &w->image_requests_per_s,
                   &w->requests, &w->requests_met, &w->stage_attainment[MS_STAGE_ENCODE],
                   &w->stage_attainment[MS_STAGE_PREFILL], &w->stage_attainment[MS_STAGE_DECODE]);
    if (n != 12 || len <= 0 || w->requests < 0 || w->requests_met < 0 ||
        w->requests_met > w->requests)
        return -1;
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        if (!isfinite(w->load[s]) || w->load[s] < 0) return -1;
    *epoch_ms = ep;
    w->len_ms = len;
    return 0;
}

/* The windows recorded in Redis during the last history_ms, oldest first,
 * their end_ms in the monotonic clock. Returns the count (*out malloc'd). */
static int s_recorded_windows(ms_autoscaler *a, int64_t now_ms, ms_load_window **out) {
    *out = NULL;
    char **lines = NULL;
    int n = 0;
    if (ms_registry_events(a->reg, MS_AUTOSCALER_WINDOW_EVENTS, MS_REGISTRY_EVENTS_MAX, &lines,
                           &n) != 0)
        return 0;
    const int64_t epoch_now = ms_registry_now_ms();
    ms_load_window *w = ms_xcalloc((size_t)n + 1, sizeof(*w));
    int k = 0;
    for (int i = n - 1; i >= 0; i--) { /* newest first in Redis */
        int64_t ep = 0;
        ms_load_window x;
        if (s_parse_window_line(lines[i], &ep, &x) != 0) continue;
        if (ep < epoch_now - a->cfg.history_ms || ep > epoch_now) continue;
        x.end_ms = now_ms - (epoch_now - ep);
        if (k > 0 && x.end_ms < w[k - 1].end_ms) continue;
        w[k++] = x;
    }
    ms_registry_events_free(&lines, n);
    *out = w;
    return k;
}

/* ---- members and decisions --------------------------------------------------------------- */

static int s_count_up(const ms_scaler_actor *m, int n) {
    int up = 0;
    for (int i = 0; i < n; i++)
        up += m[i].state != MS_SCALE_DRAINING;
    return up;
}

/* Lists pool p's members into a->members[p]. 0 / -1 (logged). */
static int s_members(ms_autoscaler *a, int p, const ms_actor_info *reg, int n_reg, int64_t now_ms) {
    char err[MS_ERR_SIZE];
    if (ms_scaler_members(a->backend, p, &a->cfg.pools[p], reg, n_reg, now_ms, a->members[p],
                          MS_SCALER_MAX_MEMBERS, &a->n_members[p], err, sizeof(err)) != 0) {
        s_event(a, "%s: cannot list its members: %s (step skipped)", a->cfg.pools[p].name, err);
        return -1;
    }
    return 0;
}

/* Initial sizing from recorded history (once, at the first step). */
static void s_initial_sizing(ms_autoscaler *a, const ms_actor_info *reg, int n_reg,
                             int64_t now_ms) {
    a->sized = true;
    if (a->cfg.history_ms <= 0) return;
    ms_load_window *w = NULL;
    const int n = s_recorded_windows(a, now_ms, &w);
    if (n > 0) {
        for (int p = 0; p < a->cfg.n_pools; p++) {
            const ms_scaler_pool *pc = &a->cfg.pools[p];
            const ms_pool_config cfg = {.stages = pc->stages,
                                        .min_replicas = pc->min_replicas,
                                        .max_replicas = pc->max_replicas};
            const int32_t want = ms_autoscale_initial(&cfg, a->cfg.capacity, w, (size_t)n);
            const int cur = s_count_up(a->members[p], a->n_members[p]);
            if (want <= cur) continue;
            char err[MS_ERR_SIZE];
            s_event(a,
                    "%s: %d up/starting; initial sizing from %d windows of the last %.0f s -> "
                    "start %d (target %d, initial)",
                    pc->name, cur, n, (double)a->cfg.history_ms / 1000.0, want - cur, want);
            if (ms_scaler_start(a->backend, p, pc, want - cur, want, now_ms, err, sizeof(err)) != 0)
                s_event(a, "%s: start failed: %s", pc->name, err);
            a->state[p].last_up_ms = now_ms;
            (void)s_members(a, p, reg, n_reg, now_ms);
        }
    }
    free(w);
}

/* The reason without its numbers: a hold is logged again only when this changes. */
static void s_shape(const char *reason, char *out, size_t size) {
    size_t k = 0;
    for (const char *p = reason; *p && k + 1 < size; p++)
        if (!isdigit((unsigned char)*p) && *p != '.') out[k++] = *p;
    out[k] = '\0';
}

/* Carries out pool p's decision. */
static void s_apply(ms_autoscaler *a, int p, int64_t now_ms) {
    const ms_scaler_pool *pc = &a->cfg.pools[p];
    const ms_pool_decision *d = &a->out[p];
    const ms_scaler_actor *m = a->members[p];
    char err[MS_ERR_SIZE];
    const bool acts = d->n_start > 0 || d->n_drain > 0 || d->trigger != MS_TRIGGER_NONE;
    char shape[MS_AUTOSCALE_REASON_MAX];
    s_shape(d->reason, shape, sizeof(shape));
    if (acts || a->cfg.verbose || strcmp(shape, a->last_shape[p]) != 0) {
        s_event(a, "%s", d->reason);
        snprintf(a->last_shape[p], sizeof(a->last_shape[p]), "%s", shape);
    }
    for (int i = 0; i < d->n_stop; i++)
        if (ms_scaler_stop(a->backend, p, pc, &m[d->stop[i]], now_ms, err, sizeof(err)) != 0)
            s_event(a, "%s: stop %s failed: %s", pc->name, m[d->stop[i]].id, err);
    if (d->n_drain > 0) {
        ms_scaler_actor *leave = ms_xcalloc((size_t)d->n_drain, sizeof(*leave));
        for (int i = 0; i < d->n_drain; i++)
            leave[i] = m[d->drain[i]];
        if (ms_scaler_drain(a->backend, p, pc, leave, d->n_drain, d->target, now_ms, err,
                            sizeof(err)) != 0)
            s_event(a, "%s: drain failed: %s", pc->name, err);
        free(leave);
    }
    if (d->n_start > 0 &&
        ms_scaler_start(a->backend, p, pc, d->n_start, d->target, now_ms, err, sizeof(err)) != 0)
        s_event(a, "%s: start failed: %s", pc->name, err);
}

/* Rewrites the hash <prefix>:autoscaler (DEL + HSET in one MULTI/EXEC). */
static void s_publish(ms_autoscaler *a) {
    if (a->cfg.dry_run || s_redis_connect(&a->redis) != 0) return;
    char(*names)[S_FIELD_MAX] = a->hash_names;
    char(*values)[MS_AUTOSCALE_REASON_MAX] = a->hash_values;
    int n = 0;
#define S_F(fmt_name, ...)                                                                         \
    do {                                                                                           \
        if (n < S_HASH_FIELDS) {                                                                   \
            snprintf(names[n], S_FIELD_MAX, "%s", fmt_name);                                       \
            snprintf(values[n++], MS_AUTOSCALE_REASON_MAX, __VA_ARGS__);                           \
        }                                                                                          \
    } while (0)
    S_F("pid", "%d", (int)getpid());
    S_F("backend", "%s", ms_scaler_name(a->backend));
    S_F("updated_ms", "%" PRId64, ms_registry_now_ms());
    S_F("interval_ms", "%" PRId64, a->cfg.interval_ms);
    S_F("window_ms", "%" PRId64, a->cfg.policy.window_ms);
    const ms_load_window *w = ms_autoscaler_latest_window(a);
    if (w) {
        S_F("load:encode", "%.3f", w->load[MS_STAGE_ENCODE]);
        S_F("load:prefill", "%.3f", w->load[MS_STAGE_PREFILL]);
        S_F("load:decode", "%.3f", w->load[MS_STAGE_DECODE]);
        S_F("window_len_ms", "%" PRId64, w->len_ms);
        S_F("window_requests", "%d", w->requests);
        S_F("attainment", "%.4f", ms_load_window_attainment(w));
    }
    for (int p = 0; p < a->cfg.n_pools && a->decided; p++) {
        const ms_scaler_pool *pc = &a->cfg.pools[p];
        const ms_pool_decision *d = &a->out[p];
        char f[S_FIELD_MAX];
#define S_P(field, ...)                                                                            \
    do {                                                                                           \
        snprintf(f, sizeof(f), "%s:%s", pc->name, field);                                          \
        S_F(f, __VA_ARGS__);                                                                       \
    } while (0)
        char st[MS_STAGES_NAME_MAX];
        S_P("stages", "%s", ms_stages_name(pc->stages, st, sizeof(st)));
        S_P("scales", "%s", pc->target);
        S_P("target", "%d", d->target);
        S_P("current", "%d", d->current);
        S_P("draining", "%d", d->draining);
        S_P("min", "%d", pc->min_replicas);
        S_P("max", "%d", pc->max_replicas);
        S_P("need", "%.3f", d->need_known ? d->need : -1.0);
        S_P("trigger", "%s", ms_scale_trigger_name(d->trigger));
        S_P("reason", "%s", d->reason);
#undef S_P
    }
#undef S_F
    const int argc = 2 + 2 * n;
    const char **argv = ms_xcalloc((size_t)argc, sizeof(*argv));
    size_t *argl = ms_xcalloc((size_t)argc, sizeof(*argl));
    argv[0] = "HSET";
    argv[1] = a->hash_key;
    for (int i = 0; i < n; i++) {
        argv[2 + 2 * i] = names[i];
        argv[3 + 2 * i] = values[i];
    }
    for (int i = 0; i < argc; i++)
        argl[i] = strlen(argv[i]);
    int rc = 0;
    redisAppendCommand(a->redis.c, "MULTI");
    redisAppendCommand(a->redis.c, "DEL %s", a->hash_key);
    redisAppendCommandArgv(a->redis.c, argc, argv, argl);
    redisAppendCommand(a->redis.c, "EXEC");
    for (int i = 0; i < 4; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(a->redis.c, (void **)&rep) != REDIS_OK) {
            rc = -1;
            break;
        }
        if (rep && rep->type == REDIS_REPLY_ERROR) rc = -1;
        freeReplyObject(rep);
    }
    if (rc != 0) s_redis_close(&a->redis);
    free(argv);
    free(argl);
}

int ms_autoscaler_step(ms_autoscaler *a, int64_t now_ms, char *err, size_t err_size) {
    ms_actor_info *reg = NULL;
    int n_reg = 0;
    if (ms_registry_list(a->reg, &reg, &n_reg) != 0) {
        if (!a->reg_warned)
            ms_warn("autoscaler: registry unreachable (%s): no decisions until it answers",
                    ms_registry_errstr(a->reg));
        a->reg_warned = true;
        return 0;
    }
    if (a->reg_warned) s_event(a, "registry reachable again");
    a->reg_warned = false;
    s_update_load(a, now_ms);
    const int np = a->cfg.n_pools;
    for (int p = 0; p < np; p++)
        if (s_members(a, p, reg, n_reg, now_ms) != 0) {
            free(reg);
            return 0;
        }
    if (!a->sized) s_initial_sizing(a, reg, n_reg, now_ms);
    free(reg);

    ms_pool_config pcfg[MS_AUTOSCALE_MAX_POOLS];
    ms_pool_view views[MS_AUTOSCALE_MAX_POOLS];
    for (int p = 0; p < np; p++) {
        const ms_scaler_pool *pc = &a->cfg.pools[p];
        memset(&pcfg[p], 0, sizeof(pcfg[p]));
        snprintf(pcfg[p].name, sizeof(pcfg[p].name), "%s", pc->name);
        pcfg[p].stages = pc->stages;
        pcfg[p].min_replicas = pc->min_replicas;
        pcfg[p].max_replicas = pc->max_replicas;
        for (int i = 0; i < a->n_members[p]; i++) {
            const ms_scaler_actor *m = &a->members[p][i];
            a->views[p][i] = (ms_scale_actor){.id = i,
                                              .state = m->state,
                                              .started_ms = m->since_ms,
                                              .queued_tokens = m->queued_tokens,
                                              .running = m->running};
        }
        views[p] = (ms_pool_view){.cfg = &pcfg[p],
                                  .state = a->state[p],
                                  .actors = a->views[p],
                                  .n_actors = (size_t)a->n_members[p]};
    }
    if (ms_autoscale_decide(&a->cfg.policy, now_ms, a->win, (size_t)a->n_win, a->cfg.capacity,
                            views, (size_t)np, a->out, err, err_size) != 0)
        return -1;
    a->decided = true;
    for (int p = 0; p < np; p++) {
        a->state[p] = a->out[p].state;
        s_apply(a, p, now_ms);
    }
    s_publish(a);
    return 1;
}

static int64_t s_now_ms(void) {
    return ms_now_ns() / 1000000;
}

static void s_sleep_ms(int64_t ms) {
    if (ms <= 0) return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int ms_autoscaler_run(ms_autoscaler *a, volatile sig_atomic_t *stop, int64_t duration_ms, char *err,
                      size_t err_size) {
    const int64_t t0 = s_now_ms();
    int64_t next = t0;
    char pools[256] = "";
    for (int p = 0; p < a->cfg.n_pools; p++) {
        const ms_scaler_pool *pc = &a->cfg.pools[p];
        size_t l = strlen(pools);
        snprintf(pools + l, sizeof(pools) - l, "%s%s=%s [%d, %d]", p ? ", " : "", pc->name,
                 pc->target, pc->min_replicas, pc->max_replicas);
    }
    s_event(a,
            "started (pid %d, backend %s, window %.1f s, interval %.1f s, capacity encode %.0f "
            "prefill %.0f decode %.0f): %s",
            (int)getpid(), ms_scaler_name(a->backend), (double)a->cfg.policy.window_ms / 1000.0,
            (double)a->cfg.interval_ms / 1000.0, a->cfg.capacity[MS_STAGE_ENCODE],
            a->cfg.capacity[MS_STAGE_PREFILL], a->cfg.capacity[MS_STAGE_DECODE], pools);
    int rc = 0;
    while (!(stop && *stop)) {
        const int64_t now = s_now_ms();
        if (duration_ms > 0 && now - t0 >= duration_ms) break;
        if (now < next) {
            s_sleep_ms(MS_MIN(next - now, (int64_t)S_SLEEP_MS));
            continue;
        }
        if (ms_autoscaler_step(a, now, err, err_size) < 0) {
            rc = -1;
            break;
        }
        next += a->cfg.interval_ms;
        if (next <= now) next = now + a->cfg.interval_ms; /* a slow step: skip, do not burst */
    }
    s_event(a, "stopped");
    return rc;
}

/* ---- the command line ------------------------------------------------------------------- */

static const struct {
    const char *key;
    uint32_t stages;
} s_keys[MS_AUTOSCALER_N_KEYS] = {
    {"encode", MS_STAGES_ENCODE}, {"text", MS_STAGES_TEXT}, {"prefill", MS_STAGES_PREFILL},
    {"decode", MS_STAGES_DECODE}, {"mono", MS_STAGES_ALL},
};

static const char s_usage[] =
    "usage: modserve-autoscaler (--dir RUNDIR | --redis HOST:PORT [--prefix P]) [options]\n"
    "  --dir RUNDIR            a `modserve up` run directory: its Redis, prefix, groups (one pool\n"
    "                          per group) and profile; backend local by default\n"
    "  --redis HOST:PORT       registry Redis (default: the run directory's, else 127.0.0.1:6379)\n"
    "  --prefix P              registry key prefix (default: the run directory's, else ms)\n"
    "  --backend B             local (processes of --dir) | compose | k8s\n"
    "  --compose-file F        compose: -f F\n"
    "  --compose-cmd CMD       compose: the command (default docker-compose; \"docker compose\")\n"
    "  --service-KEY NAME      compose: the service of pool KEY\n"
    "  --k8s-deployment-KEY NAME  k8s: the deployment of pool KEY\n"
    "  --k8s-namespace NS      k8s: -n NS\n"
    "  --kubectl CMD           k8s: the command (default kubectl)\n"
    "                          KEY: encode | text (prefill+decode) | prefill | decode | mono\n"
    "  --profile FILE          per-instance capacities at SLO (default: the cluster's [broker]\n"
    "                          profile, else the built-in defaults)\n"
    "  --min-KEY N, --max-KEY N  replicas of pool KEY (default 1 and 4)\n"
    "  --window-s S            load window (default 10)\n"
    "  --interval-s S          one decision per S (default 2)\n"
    "  --up-cooldown-s S       attainment-triggered scale-ups at most once per S (default 10)\n"
    "  --down-cooldown-s S     quiet time before a scale-down (default 60)\n"
    "  --down-band X           headroom a scale-down keeps, [0, 1) (default 0.2)\n"
    "  --attainment X          SLO attainment threshold, (0, 1] (default 0.99)\n"
    "  --attainment-min-requests N  fewer finished requests in a window: ignored (default 20)\n"
    "  --max-step-down N       actors drained per decision and pool (default 0: no limit)\n"
    "  --start-timeout-s S     a start not registered by then failed (default 120)\n"
    "  --drain-timeout-s S     SIGKILL a draining actor only after S (default 120)\n"
    "  --history-s S           initial sizing from the windows recorded in the last S (default\n"
    "                          600; 0: none)\n"
    "  --bin-dir DIR           where modserve-actor is (default: the cluster's, else ours)\n"
    "  --dry-run               print what would be done, change nothing\n"
    "  --once                  one decision, then exit\n"
    "  --duration-s S          exit after S\n"
    "  -v                      log every decision, holds included\n";

const char *ms_autoscaler_usage(void) {
    return s_usage;
}

static int s_key_index(const char *key) {
    for (int k = 0; k < MS_AUTOSCALER_N_KEYS; k++)
        if (strcmp(key, s_keys[k].key) == 0) return k;
    return -1;
}

static int s_num(const char *opt, const char *v, double lo, double hi, double *out, char *err,
                 size_t err_size) {
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !isfinite(x) || x < lo || x > hi)
        return ms_errf(err, err_size, "%s: '%s' is not a number in [%g, %g]", opt, v, lo, hi);
    *out = x;
    return 0;
}

static int s_int(const char *opt, const char *v, long lo, long hi, int32_t *out, char *err,
                 size_t err_size) {
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || x < lo || x > hi)
        return ms_errf(err, err_size, "%s: '%s' is not an integer in [%ld, %ld]", opt, v, lo, hi);
    *out = (int32_t)x;
    return 0;
}

static int s_secs_ms(const char *opt, const char *v, double lo, int64_t *out, char *err,
                     size_t err_size) {
    double s = 0;
    if (s_num(opt, v, lo, 7 * 86400.0, &s, err, err_size) != 0) return -1;
    *out = (int64_t)llround(s * 1000.0);
    return 0;
}

static int s_copy_opt(char *dst, size_t size, const char *opt, const char *v, char *err,
                      size_t err_size) {
    if (strlen(v) >= size) return ms_errf(err, err_size, "%s: value too long", opt);
    snprintf(dst, size, "%s", v);
    return 0;
}

int ms_autoscaler_args_parse(ms_autoscaler_args *a, int argc, char **argv, char *err,
                             size_t err_size) {
    memset(a, 0, sizeof(*a));
    ms_autoscaler_config_default(&a->cfg);
    ms_scaler_opts_default(&a->scaler);
    for (int k = 0; k < MS_AUTOSCALER_N_KEYS; k++)
        a->min[k] = a->max[k] = -1;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) {
            a->help = true;
            continue;
        }
        if (strcmp(o, "--dry-run") == 0) {
            a->scaler.dry_run = true;
            continue;
        }
        if (strcmp(o, "--once") == 0) {
            a->once = true;
            continue;
        }
        if (strcmp(o, "-v") == 0) {
            a->cfg.verbose = true;
            continue;
        }
        if (i + 1 >= argc) return ms_errf(err, err_size, "unknown option or missing value '%s'", o);
        const char *v = argv[++i];
        int rc = 0;
        int32_t n32 = 0;
        double x = 0;
        if (strcmp(o, "--dir") == 0) {
            rc = s_copy_opt(a->rundir, sizeof(a->rundir), o, v, err, err_size);
        } else if (strcmp(o, "--redis") == 0) {
            const char *colon = strrchr(v, ':');
            if (!colon || colon == v || (size_t)(colon - v) >= sizeof(a->cfg.redis_host))
                return ms_errf(err, err_size, "--redis: '%s' is not HOST:PORT", v);
            snprintf(a->cfg.redis_host, sizeof(a->cfg.redis_host), "%.*s", (int)(colon - v), v);
            rc = s_int(o, colon + 1, 1, 65535, &n32, err, err_size);
            a->cfg.redis_port = n32;
            a->redis_given = true;
        } else if (strcmp(o, "--prefix") == 0) {
            rc = s_copy_opt(a->cfg.prefix, sizeof(a->cfg.prefix), o, v, err, err_size);
            a->prefix_given = true;
        } else if (strcmp(o, "--backend") == 0) {
            if (strcmp(v, "local") != 0 && strcmp(v, "compose") != 0 && strcmp(v, "k8s") != 0)
                return ms_errf(err, err_size, "--backend: '%s' (local, compose or k8s)", v);
            snprintf(a->backend, sizeof(a->backend), "%s", v);
        } else if (strcmp(o, "--compose-file") == 0) {
            rc = s_copy_opt(a->scaler.compose_file, sizeof(a->scaler.compose_file), o, v, err,
                            err_size);
        } else if (strcmp(o, "--compose-cmd") == 0) {
            rc = s_copy_opt(a->scaler.compose_cmd, sizeof(a->scaler.compose_cmd), o, v, err,
                            err_size);
        } else if (strcmp(o, "--k8s-namespace") == 0) {
            rc = s_copy_opt(a->scaler.k8s_namespace, sizeof(a->scaler.k8s_namespace), o, v, err,
                            err_size);
        } else if (strcmp(o, "--kubectl") == 0) {
            rc = s_copy_opt(a->scaler.kubectl, sizeof(a->scaler.kubectl), o, v, err, err_size);
        } else if (strncmp(o, "--service-", 10) == 0 || strncmp(o, "--k8s-deployment-", 17) == 0) {
            const char *key = o[2] == 's' ? o + 10 : o + 17;
            const int k = s_key_index(key);
            if (k < 0) return ms_errf(err, err_size, "%s: unknown pool '%s'", o, key);
            rc = s_copy_opt(a->target[k], sizeof(a->target[k]), o, v, err, err_size);
        } else if (strncmp(o, "--min-", 6) == 0 && s_key_index(o + 6) >= 0) {
            rc = s_int(o, v, 0, MS_AUTOSCALE_MAX_REPLICAS, &a->min[s_key_index(o + 6)], err,
                       err_size);
        } else if (strncmp(o, "--max-", 6) == 0 && s_key_index(o + 6) >= 0) {
            rc = s_int(o, v, 0, MS_AUTOSCALE_MAX_REPLICAS, &a->max[s_key_index(o + 6)], err,
                       err_size);
        } else if (strcmp(o, "--profile") == 0) {
            rc = s_copy_opt(a->profile, sizeof(a->profile), o, v, err, err_size);
        } else if (strcmp(o, "--bin-dir") == 0) {
            rc = s_copy_opt(a->scaler.bin_dir, sizeof(a->scaler.bin_dir), o, v, err, err_size);
        } else if (strcmp(o, "--window-s") == 0) {
            rc = s_secs_ms(o, v, 0.001, &a->cfg.policy.window_ms, err, err_size);
        } else if (strcmp(o, "--interval-s") == 0) {
            rc = s_secs_ms(o, v, 0.001, &a->cfg.interval_ms, err, err_size);
        } else if (strcmp(o, "--up-cooldown-s") == 0) {
            rc = s_secs_ms(o, v, 0, &a->cfg.policy.up_cooldown_ms, err, err_size);
        } else if (strcmp(o, "--down-cooldown-s") == 0) {
            rc = s_secs_ms(o, v, 0, &a->cfg.policy.down_cooldown_ms, err, err_size);
        } else if (strcmp(o, "--start-timeout-s") == 0) {
            rc = s_secs_ms(o, v, 0.001, &a->scaler.start_timeout_ms, err, err_size);
        } else if (strcmp(o, "--drain-timeout-s") == 0) {
            rc = s_secs_ms(o, v, 0.001, &a->scaler.drain_timeout_ms, err, err_size);
        } else if (strcmp(o, "--history-s") == 0) {
            rc = s_secs_ms(o, v, 0, &a->cfg.history_ms, err, err_size);
        } else if (strcmp(o, "--duration-s") == 0) {
            rc = s_secs_ms(o, v, 0.001, &a->duration_ms, err, err_size);
        } else if (strcmp(o, "--down-band") == 0) {
            rc = s_num(o, v, 0, 0.999, &x, err, err_size);
            a->cfg.policy.down_band = x;
        } else if (strcmp(o, "--attainment") == 0) {
            rc = s_num(o, v, 1e-6, 1, &x, err, err_size);
            a->cfg.policy.attainment_threshold = x;
        } else if (strcmp(o, "--attainment-min-requests") == 0) {
            rc = s_int(o, v, 1, INT32_MAX, &a->cfg.policy.attainment_min_requests, err, err_size);
        } else if (strcmp(o, "--max-step-down") == 0) {
            rc = s_int(o, v, 0, MS_AUTOSCALE_MAX_REPLICAS, &a->cfg.policy.max_step_down, err,
                       err_size);
        } else {
            return ms_errf(err, err_size, "unknown option '%s'", o);
        }
        if (rc != 0) return -1;
    }
    if (a->help) return 0;
    if (!a->rundir[0] && !a->redis_given)
        return ms_errf(err, err_size, "give --dir RUNDIR or --redis HOST:PORT");
    if (!a->backend[0]) snprintf(a->backend, sizeof(a->backend), "%s", "local");
    if (strcmp(a->backend, "local") == 0 && !a->rundir[0])
        return ms_errf(err, err_size, "the local backend needs --dir RUNDIR");
    for (int k = 0; k < MS_AUTOSCALER_N_KEYS; k++)
        if (a->target[k][0] && strcmp(a->backend, "local") == 0)
            return ms_errf(err, err_size,
                           "--service-*/--k8s-deployment-* need --backend compose or k8s");
    if (strcmp(a->backend, "local") != 0) {
        bool any = false;
        for (int k = 0; k < MS_AUTOSCALER_N_KEYS; k++)
            any |= a->target[k][0] != '\0';
        if (!any)
            return ms_errf(err, err_size, "--backend %s needs --%s-KEY NAME for each pool",
                           a->backend,
                           strcmp(a->backend, "compose") == 0 ? "service" : "k8s-deployment");
    }
    return 0;
}

/* min/max of key k: the flags or the defaults. */
static void s_bounds(const ms_autoscaler_args *a, int k, ms_scaler_pool *pc) {
    pc->min_replicas = a->min[k] >= 0 ? a->min[k] : MS_AUTOSCALER_MIN_DEFAULT;
    pc->max_replicas = a->max[k] >= 0 ? a->max[k] : MS_AUTOSCALER_MAX_DEFAULT;
    if (a->max[k] < 0 && pc->max_replicas < pc->min_replicas) pc->max_replicas = pc->min_replicas;
}

int ms_autoscaler_args_resolve(ms_autoscaler_args *a, ms_scaler **backend, char *err,
                               size_t err_size) {
    *backend = NULL;
    ms_autoscaler_config *c = &a->cfg;
    c->n_pools = 0;
    if (a->rundir[0]) {
        ms_cluster_run *run = ms_xcalloc(1, sizeof(*run));
        if (ms_cluster_run_load(run, a->rundir, err, err_size) != 0) {
            free(run);
            return -1;
        }
        snprintf(a->rundir, sizeof(a->rundir), "%s", run->dir);
        if (!a->redis_given) {
            snprintf(c->redis_host, sizeof(c->redis_host), "%s", "127.0.0.1");
            c->redis_port = ms_cluster_redis_port(&run->conf);
        }
        if (!a->prefix_given) snprintf(c->prefix, sizeof(c->prefix), "%s", run->conf.prefix);
        if (!a->profile[0] && run->conf.profile[0])
            snprintf(a->profile, sizeof(a->profile), "%s", run->conf.profile);
        if (strcmp(a->backend, "local") == 0) {
            for (int gi = 0; gi < run->conf.n_groups; gi++) {
                const ms_cluster_group *g = &run->conf.groups[gi];
                uint32_t st = 0;
                if (ms_stages_parse(g->stages, &st, NULL, 0) != 0) continue;
                if ((st & MS_STAGES_ENCODE) && !run->conf.mmproj[0]) continue; /* text-only */
                int k = -1;
                for (int j = 0; j < MS_AUTOSCALER_N_KEYS; j++)
                    if (s_keys[j].stages == st) k = j;
                if (k < 0 || c->n_pools >= MS_AUTOSCALE_MAX_POOLS) continue;
                ms_scaler_pool *pc = &c->pools[c->n_pools++];
                memset(pc, 0, sizeof(*pc));
                snprintf(pc->name, sizeof(pc->name), "%s", s_keys[k].key);
                pc->stages = st;
                snprintf(pc->target, sizeof(pc->target), "%s", g->name);
                s_bounds(a, k, pc);
                if (pc->max_replicas > MS_CLUSTER_MAX_GROUP_ACTORS) {
                    free(run);
                    return ms_errf(err, err_size, "--max-%s %d: a group holds at most %d actors",
                                   pc->name, pc->max_replicas, MS_CLUSTER_MAX_GROUP_ACTORS);
                }
            }
        }
        free(run);
    }
    if (strcmp(a->backend, "local") != 0) {
        for (int k = 0; k < MS_AUTOSCALER_N_KEYS; k++) {
            if (!a->target[k][0]) continue;
            ms_scaler_pool *pc = &c->pools[c->n_pools++];
            memset(pc, 0, sizeof(*pc));
            snprintf(pc->name, sizeof(pc->name), "%s", s_keys[k].key);
            pc->stages = s_keys[k].stages;
            snprintf(pc->target, sizeof(pc->target), "%s", a->target[k]);
            s_bounds(a, k, pc);
        }
    }
    /* capacities from the profile */
    ms_profile prof;
    if (a->profile[0]) {
        bool defaults = false;
        if (ms_profile_load(a->profile, &prof, &defaults, err, err_size) != 0) return -1;
    } else {
        ms_profile_default(&prof);
    }
    ms_autoscale_capacity_from_profile(&prof, c->capacity);
    c->dry_run = a->scaler.dry_run;
    if (ms_autoscaler_config_validate(c, err, err_size) != 0) return -1;
    snprintf(a->scaler.rundir, sizeof(a->scaler.rundir), "%s", a->rundir);
    if (strcmp(a->backend, "local") == 0)
        *backend = ms_scaler_local_new(&a->scaler, err, err_size);
    else if (strcmp(a->backend, "compose") == 0)
        *backend = ms_scaler_compose_new(&a->scaler, err, err_size);
    else
        *backend = ms_scaler_k8s_new(&a->scaler, err, err_size);
    return *backend ? 0 : -1;
}
