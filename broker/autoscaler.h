/* autoscaler.h — the modserve-autoscaler process: the mechanism around the
 * pure decisions of autoscale.h (docs/autoscaler.md, "The process").
 *
 * Every interval it
 *   1. lists the registry (schemas/registry.h) — a failed list skips the step;
 *   2. reads the broker's cumulative counters `<prefix>:broker` (arrival load:
 *      image_tokens, prompt_tokens, tokens, images, requests_image; SLO
 *      verdicts: slo_requests, slo_met, slo_seen:<stage>, slo_ok:<stage>;
 *      docs/broker.md) into an ms_load_counters snapshot; the latest window is
 *      the difference to the snapshot window_ms before (shorter while the
 *      history is shorter), so windows slide by one interval;
 *   3. asks the backend (scaler_backend.h) for each pool's members (registry
 *      actors merged with processes starting / draining);
 *   4. calls ms_autoscale_decide() once for all pools;
 *   5. carries out the decisions through the backend: stop, drain, start;
 *   6. logs every decision that acts, and a hold whenever its reason changes
 *      (stderr, ms_info, and the Redis event list `<prefix>:events:autoscaler`),
 *      and rewrites the hash `<prefix>:autoscaler` (targets, counts, need,
 *      trigger and reason per pool, the latest load window).
 * Each window is also appended to `<prefix>:events:autoscaler:windows`; at
 * its first step an autoscaler sizes each pool from the windows recorded there
 * in the last history_ms (ms_autoscale_initial), so a restarted autoscaler
 * starts from recent load instead of the minimum.
 *
 * Threads: one autoscaler per thread. Times are monotonic ms (ms_now_ns()/1e6).
 */
#ifndef MS_AUTOSCALER_H
#define MS_AUTOSCALER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autoscale.h"
#include "scaler_backend.h"

#define MS_AUTOSCALER_INTERVAL_MS_DEFAULT 2000         /* one step per this */
#define MS_AUTOSCALER_HISTORY_MS_DEFAULT  600000       /* initial sizing looks this far back */
#define MS_AUTOSCALER_MIN_DEFAULT         1            /* replicas per pool at least */
#define MS_AUTOSCALER_MAX_DEFAULT         4            /* replicas per pool at most */
#define MS_AUTOSCALER_EVENTS              "autoscaler" /* decisions: <prefix>:events:NAME */
#define MS_AUTOSCALER_WINDOW_EVENTS       "autoscaler:windows" /* load windows, ditto */
#define MS_AUTOSCALER_KEY                 "autoscaler"         /* the hash <prefix>:NAME */
#define MS_AUTOSCALER_HOST_MAX            256                  /* Redis host name bytes, with NUL */
#define MS_AUTOSCALER_MAX_SNAPSHOTS       4096                 /* counter snapshots kept at most */
#define MS_AUTOSCALER_MAX_WINDOWS         4096                 /* load windows kept at most */

typedef struct ms_autoscaler_config {
    char redis_host[MS_AUTOSCALER_HOST_MAX]; /* registry Redis */
    int redis_port;                          /* > 0 */
    char prefix[MS_ACTOR_PREFIX_MAX];        /* key prefix ("ms") */
    ms_autoscale_config policy;              /* window, cooldowns, band, attainment, step */
    int64_t interval_ms;                     /* > 0: one step per this */
    double capacity[MS_STAGE_COUNT];         /* per-instance capacity at SLO (profile); 0 unknown */
    ms_scaler_pool pools[MS_AUTOSCALE_MAX_POOLS]; /* the pools managed */
    int n_pools;                                  /* 1..MS_AUTOSCALE_MAX_POOLS */
    int64_t history_ms;                           /* initial sizing window; 0 = none */
    bool verbose;                                 /* log every hold too */
    bool dry_run; /* record nothing in Redis (the backend only prints, see scaler_backend.h) */
} ms_autoscaler_config;

/* Defaults: 127.0.0.1:6379 "ms", ms_autoscale_config_default, interval
 * MS_AUTOSCALER_INTERVAL_MS_DEFAULT, capacities 0, no pools, history
 * MS_AUTOSCALER_HISTORY_MS_DEFAULT. */
void ms_autoscaler_config_default(ms_autoscaler_config *c);
/* 0, or -1 + err naming what is wrong. */
int ms_autoscaler_config_validate(const ms_autoscaler_config *c, char *err, size_t err_size);

typedef struct ms_autoscaler ms_autoscaler;

/* Creates an autoscaler over cfg (copied) that acts through *backend (taken:
 * *backend is set to NULL, also on failure). Redis need not be up. NULL + err
 * on a bad config. */
ms_autoscaler *ms_autoscaler_new(const ms_autoscaler_config *cfg, ms_scaler **backend, char *err,
                                 size_t err_size);
/* Frees it and its backend (processes it started keep running); nulls *a. */
void ms_autoscaler_destroy(ms_autoscaler **a);

/* One step at now_ms (see the file comment). Returns 1 if it decided, 0 if
 * the step was skipped (registry unreachable, a backend could not list its
 * members: logged), -1 + err on a programmer-level failure (a decision
 * rejected its inputs). */
int ms_autoscaler_step(ms_autoscaler *a, int64_t now_ms, char *err, size_t err_size);

/* Steps every interval until *stop is set (may be NULL: forever) or, with
 * duration_ms > 0, until that much time passed. 0, or -1 + err. */
int ms_autoscaler_run(ms_autoscaler *a, volatile sig_atomic_t *stop, int64_t duration_ms, char *err,
                      size_t err_size);

/* The decisions of the last step that decided (n_pools of them, in pool
 * order), NULL before any; *n set to their count. Owned by a. */
const ms_pool_decision *ms_autoscaler_last(const ms_autoscaler *a, int *n);
/* The latest load window, NULL before there is one. Owned by a. */
const ms_load_window *ms_autoscaler_latest_window(const ms_autoscaler *a);

/* ---- the command line (tools/modserve-autoscaler.c) --------------------------------- */

/* Pool keys of the command line: encode, text (prefill+decode), prefill,
 * decode, mono (encode+prefill+decode). */
#define MS_AUTOSCALER_N_KEYS 5

typedef struct ms_autoscaler_args {
    ms_autoscaler_config cfg;         /* completed by ms_autoscaler_args_resolve */
    ms_scaler_opts scaler;            /* backend options */
    char backend[16];                 /* "local" | "compose" | "k8s" */
    char rundir[MS_SCALER_PATH_MAX];  /* --dir, "" if none */
    char profile[MS_SCALER_PATH_MAX]; /* --profile, "" = the cluster's or built-in defaults */
    bool redis_given;                 /* --redis given */
    bool prefix_given;                /* --prefix given */
    char target[MS_AUTOSCALER_N_KEYS][MS_SCALER_TARGET_MAX]; /* --service-KEY /
                                                                --k8s-deployment-KEY */
    int32_t min[MS_AUTOSCALER_N_KEYS];                       /* --min-KEY, -1 = default */
    int32_t max[MS_AUTOSCALER_N_KEYS];                       /* --max-KEY, -1 = default */
    int64_t duration_ms; /* --duration-s: stop after this long, 0 = never */
    bool once;           /* --once: one step */
    bool help;           /* -h / --help */
} ms_autoscaler_args;

/* The usage text. */
const char *ms_autoscaler_usage(void);
/* Parses argv[1..argc). 0, or -1 + err (a bad option or value). */
int ms_autoscaler_args_parse(ms_autoscaler_args *a, int argc, char **argv, char *err,
                             size_t err_size);
/* Completes a->cfg: the run directory's cluster (Redis port, prefix, groups
 * as pools, its profile), the profile's capacities, the pools of
 * --service-* / --k8s-deployment-*, min/max; creates the backend into
 * *backend. 0, or -1 + err. */
int ms_autoscaler_args_resolve(ms_autoscaler_args *a, ms_scaler **backend, char *err,
                               size_t err_size);

#endif
