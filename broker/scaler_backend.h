/* scaler_backend.h — how modserve-autoscaler carries out its decisions: a
 * scaler backend is a table of function pointers (ms_scaler_ops) behind one
 * handle (ms_scaler). Three are built in:
 *
 *   local    the processes of a `modserve up` run directory (schemas/cluster.h):
 *            start = ms_cluster_start_actor (what `modserve scale` runs), drain =
 *            SIGTERM to the chosen actor (it finishes its work, deregisters and
 *            exits), stop = reap it once it exited; SIGKILL only when it
 *            overstays drain_timeout_ms. Knows the processes that are starting
 *            (not yet registered) and draining.
 *   compose  `docker-compose -f FILE up -d --scale SERVICE=N --no-recreate SERVICE`
 *   k8s      `kubectl [-n NS] scale deployment/NAME --replicas=N`; before a
 *            scale-down the pods chosen to leave are annotated
 *            controller.kubernetes.io/pod-deletion-cost=-1000 (their registry
 *            host is the pod name), so the ReplicaSet removes those.
 *
 * The compose and k8s backends only set a replica count: the registry shows
 * the actors, and the backend adds what it has asked for and not yet seen
 * (replicas starting, actors asked to leave that still show up) so that a
 * decision is not taken twice. Their commands run asynchronously, one at a
 * time per pool (a newer replica count replaces one still queued); with
 * dry_run they are printed (log callback) and not run. The local backend
 * with dry_run prints what it would do (`modserve scale GROUP N`) and keeps
 * the same bookkeeping as the command backends.
 *
 * Threads: one handle per thread. Times are the caller's monotonic ms clock
 * (ms_now_ns() / 1e6).
 */
#ifndef MS_SCALER_BACKEND_H
#define MS_SCALER_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autoscale.h"
#include "registry.h"

#define MS_SCALER_TARGET_MAX               128  /* group / service / deployment name, with NUL */
#define MS_SCALER_PATH_MAX                 1024 /* run directory / compose file path, with NUL */
#define MS_SCALER_CMD_MAX                  256  /* command prefix ("docker compose"), with NUL */
#define MS_SCALER_MAX_MEMBERS              MS_AUTOSCALE_MAX_ACTORS /* instances of one pool */
#define MS_SCALER_START_TIMEOUT_MS_DEFAULT 120000 /* a start not registered by then failed */
#define MS_SCALER_DRAIN_TIMEOUT_MS_DEFAULT 120000 /* SIGKILL a draining actor only after this */
#define MS_SCALER_STOP_GRACE_MS            2000   /* a start that never registered: SIGTERM grace */
#define MS_SCALER_CMD_QUEUE                16     /* commands queued per pool */
#define MS_SCALER_ARGV_MAX                 32     /* words of one backend command */
#define MS_SCALER_LINE_MAX                 1024   /* one log line / printed command */

/* One pool the autoscaler manages. */
typedef struct ms_scaler_pool {
    char name[MS_AUTOSCALE_NAME_MAX];  /* "encode" | "text" | "prefill" | "decode" | "mono" */
    uint32_t stages;                   /* stage set (MS_STAGES_*) of its actors, non-zero */
    int32_t min_replicas;              /* >= 0 */
    int32_t max_replicas;              /* >= min_replicas */
    char target[MS_SCALER_TARGET_MAX]; /* what the backend scales: group (local), service
                                          (compose), deployment (k8s) */
} ms_scaler_pool;

/* One instance of a pool as the backend and the registry see it. */
typedef struct ms_scaler_actor {
    char id[MS_ACTOR_ID_MAX];    /* registry id / process name; "" for a replica asked for
                                    that has not registered yet */
    char host[MS_ACTOR_STR_MAX]; /* registry host (the pod name in Kubernetes), "" if unknown */
    int64_t pid;                 /* process id, 0 if unknown */
    ms_scale_state state;        /* starting | up | draining */
    bool registered;             /* listed in the registry now */
    int64_t since_ms;            /* started (starting / up; 0 if unknown) or drain began */
    int64_t queued_tokens;       /* queued image + prompt tokens (registry; 0 if not listed) */
    int32_t running;             /* running sequences (registry; 0 if not listed) */
} ms_scaler_actor;

/* A line for the autoscaler's log and its Redis event list. */
typedef void (*ms_scaler_log_fn)(void *user, const char *line);

/* The backend table. Every entry is required except set_log and destroy. `pool` is the
 * caller's pool index (stable for the backend's life) and `pc` its config. */
typedef struct ms_scaler_ops {
    const char *name; /* "local", "compose", "k8s", ... */
    /* Pool pc's instances: registry actors reg[0..n_reg) of its stage set
     * merged with what the backend knows. Also does the backend's
     * housekeeping (reaps processes that exited, SIGKILLs one that overstayed
     * its drain, collects finished commands). Fills out[0..*n) (*n <= max).
     * 0, or -1 + err (the step is skipped). */
    int (*members)(void *self, int pool, const ms_scaler_pool *pc, const ms_actor_info *reg,
                   int n_reg, int64_t now_ms, ms_scaler_actor *out, int max, int *n, char *err,
                   size_t err_size);
    /* Starts n >= 1 instances; target = the pool's replicas afterwards. 0 / -1 + err. */
    int (*start)(void *self, int pool, const ms_scaler_pool *pc, int n, int target, int64_t now_ms,
                 char *err, size_t err_size);
    /* Drains the n >= 1 instances a[0..n) (they finish their work and leave);
     * target = the pool's replicas afterwards. 0 / -1 + err. */
    int (*drain)(void *self, int pool, const ms_scaler_pool *pc, const ms_scaler_actor *a, int n,
                 int target, int64_t now_ms, char *err, size_t err_size);
    /* a is draining and holds no work: stop it if the backend must (the
     * built-in ones let it exit by itself). 0 / -1 + err. */
    int (*stop)(void *self, int pool, const ms_scaler_pool *pc, const ms_scaler_actor *a,
                int64_t now_ms, char *err, size_t err_size);
    /* Sets where the backend's lines go (NULL = ms_info). */
    void (*set_log)(void *self, ms_scaler_log_fn log, void *user);
    /* Frees self (NULL = nothing to free). */
    void (*destroy)(void *self);
} ms_scaler_ops;

typedef struct ms_scaler ms_scaler;

/* Options of the built-in backends. */
typedef struct ms_scaler_opts {
    bool dry_run;             /* print / log the actions, change nothing */
    int64_t start_timeout_ms; /* > 0 */
    int64_t drain_timeout_ms; /* > 0 */
    ms_scaler_log_fn log;     /* may be NULL */
    void *log_user;           /* passed to log */
    /* local */
    char rundir[MS_SCALER_PATH_MAX];  /* run directory of `modserve up` */
    char bin_dir[MS_SCALER_PATH_MAX]; /* modserve-actor's folder when cluster.conf has none */
    /* compose */
    char compose_cmd[MS_SCALER_CMD_MAX];   /* "docker-compose" (default) or "docker compose" */
    char compose_file[MS_SCALER_PATH_MAX]; /* -f FILE, "" = compose's default */
    /* k8s */
    char kubectl[MS_SCALER_CMD_MAX];          /* "kubectl" (default) */
    char k8s_namespace[MS_SCALER_TARGET_MAX]; /* -n NS, "" = kubectl's current */
} ms_scaler_opts;

/* Defaults: not dry_run, the *_DEFAULT timeouts, no log, docker-compose, kubectl. */
void ms_scaler_opts_default(ms_scaler_opts *o);

/* The local backend over o->rundir (its cluster.conf must load). NULL + err. */
ms_scaler *ms_scaler_local_new(const ms_scaler_opts *o, char *err, size_t err_size);
/* The docker compose backend. NULL + err. */
ms_scaler *ms_scaler_compose_new(const ms_scaler_opts *o, char *err, size_t err_size);
/* The Kubernetes backend. NULL + err. */
ms_scaler *ms_scaler_k8s_new(const ms_scaler_opts *o, char *err, size_t err_size);
/* A backend from a caller's table (tests, other orchestrators); ops must
 * outlive the handle, self is passed to every entry and to ops->destroy. */
ms_scaler *ms_scaler_new(const ms_scaler_ops *ops, void *self);
/* Frees the handle (ops->destroy(self) first); NULL-safe, nulls *s. Processes
 * the local backend started keep running; a command still running is left to
 * finish. */
void ms_scaler_destroy(ms_scaler **s);

/* The backend's name ("local", ...). */
const char *ms_scaler_name(const ms_scaler *s);

/* Sends the backend's lines (what it started, drained, ran) to log(user, line)
 * from now on; a backend without set_log ignores it. */
void ms_scaler_set_log(ms_scaler *s, ms_scaler_log_fn log, void *user);

/* The entries of the table, through the handle (documented in ms_scaler_ops). */
int ms_scaler_members(ms_scaler *s, int pool, const ms_scaler_pool *pc, const ms_actor_info *reg,
                      int n_reg, int64_t now_ms, ms_scaler_actor *out, int max, int *n, char *err,
                      size_t err_size);
int ms_scaler_start(ms_scaler *s, int pool, const ms_scaler_pool *pc, int n, int target,
                    int64_t now_ms, char *err, size_t err_size);
int ms_scaler_drain(ms_scaler *s, int pool, const ms_scaler_pool *pc, const ms_scaler_actor *a,
                    int n, int target, int64_t now_ms, char *err, size_t err_size);
int ms_scaler_stop(ms_scaler *s, int pool, const ms_scaler_pool *pc, const ms_scaler_actor *a,
                   int64_t now_ms, char *err, size_t err_size);

/* The command line a command backend runs to set a pool's replicas, joined
 * with spaces into buf (what dry-run prints): compose or k8s per kind
 * ("compose" | "k8s"). 0, or -1 if it does not fit or kind is unknown. */
int ms_scaler_format_scale(const ms_scaler_opts *o, const char *kind, const char *target,
                           int replicas, char *buf, size_t size);

#endif
