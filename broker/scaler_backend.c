/* scaler_backend.c — the autoscaler's backends: local processes (the
 * cluster code `modserve scale` uses), docker compose and Kubernetes
 * (commands). See scaler_backend.h. */
#include "scaler_backend.h"

#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster.h"
#include "ms_common.h"

#define S_DELETION_COST "controller.kubernetes.io/pod-deletion-cost=-1000"

struct ms_scaler {
    const ms_scaler_ops *ops; /* borrowed */
    void *self;               /* ops' state */
};

void ms_scaler_opts_default(ms_scaler_opts *o) {
    memset(o, 0, sizeof(*o));
    o->start_timeout_ms = MS_SCALER_START_TIMEOUT_MS_DEFAULT;
    o->drain_timeout_ms = MS_SCALER_DRAIN_TIMEOUT_MS_DEFAULT;
    snprintf(o->compose_cmd, sizeof(o->compose_cmd), "%s", "docker-compose");
    snprintf(o->kubectl, sizeof(o->kubectl), "%s", "kubectl");
}

ms_scaler *ms_scaler_new(const ms_scaler_ops *ops, void *self) {
    assert(ops && ops->members && ops->start && ops->drain && ops->stop);
    ms_scaler *s = ms_xcalloc(1, sizeof(*s));
    s->ops = ops;
    s->self = self;
    return s;
}

void ms_scaler_destroy(ms_scaler **s) {
    if (!s || !*s) return;
    if ((*s)->ops->destroy) (*s)->ops->destroy((*s)->self);
    free(*s);
    *s = NULL;
}

void ms_scaler_set_log(ms_scaler *s, ms_scaler_log_fn log, void *user) {
    if (s->ops->set_log) s->ops->set_log(s->self, log, user);
}

const char *ms_scaler_name(const ms_scaler *s) {
    return s->ops->name ? s->ops->name : "?";
}

int ms_scaler_members(ms_scaler *s, int pool, const ms_scaler_pool *pc, const ms_actor_info *reg,
                      int n_reg, int64_t now_ms, ms_scaler_actor *out, int max, int *n, char *err,
                      size_t err_size) {
    *n = 0;
    return s->ops->members(s->self, pool, pc, reg, n_reg, now_ms, out, max, n, err, err_size);
}

int ms_scaler_start(ms_scaler *s, int pool, const ms_scaler_pool *pc, int n, int target,
                    int64_t now_ms, char *err, size_t err_size) {
    assert(n >= 1);
    return s->ops->start(s->self, pool, pc, n, target, now_ms, err, err_size);
}

int ms_scaler_drain(ms_scaler *s, int pool, const ms_scaler_pool *pc, const ms_scaler_actor *a,
                    int n, int target, int64_t now_ms, char *err, size_t err_size) {
    assert(a && n >= 1);
    return s->ops->drain(s->self, pool, pc, a, n, target, now_ms, err, err_size);
}

int ms_scaler_stop(ms_scaler *s, int pool, const ms_scaler_pool *pc, const ms_scaler_actor *a,
                   int64_t now_ms, char *err, size_t err_size) {
    return s->ops->stop(s->self, pool, pc, a, now_ms, err, err_size);
}

/* ---- shared helpers ----------------------------------------------------------------------- */

static void s_log(const ms_scaler_opts *o, const char *fmt, ...) MS_PRINTF(2, 3);
static void s_log(const ms_scaler_opts *o, const char *fmt, ...) {
    char line[MS_SCALER_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (o->log)
        o->log(o->log_user, line);
    else
        ms_info("autoscaler: %s", line);
}

/* Registry actors of pc's stage set, appended to out. */
static void s_registry_members(const ms_scaler_pool *pc, const ms_actor_info *reg, int n_reg,
                               ms_scaler_actor *out, int max, int *n) {
    for (int i = 0; i < n_reg && *n < max; i++) {
        if (reg[i].stages != pc->stages) continue;
        ms_scaler_actor *a = &out[(*n)++];
        memset(a, 0, sizeof(*a));
        snprintf(a->id, sizeof(a->id), "%s", reg[i].id);
        snprintf(a->host, sizeof(a->host), "%s", reg[i].host);
        a->pid = reg[i].pid;
        a->state = reg[i].state == MS_ACTOR_DRAINING ? MS_SCALE_DRAINING : MS_SCALE_UP;
        a->registered = true;
        a->queued_tokens = reg[i].queued_image_tokens + reg[i].queued_prompt_tokens;
        a->running = (int32_t)MS_MIN(reg[i].running_seqs, (int64_t)INT32_MAX);
    }
}

/* ---- replica bookkeeping (command backends, local dry-run) ----------------------------------
 *
 * What was asked and not yet seen in the registry: with `expected` replicas
 * asked for at asked_ms, a pool that shows fewer actors up gets placeholder
 * "starting" members (until start_timeout_ms), one that shows more gets the
 * excess marked draining — the actors chosen to leave first (until
 * drain_timeout_ms). */

typedef struct {
    int32_t expected;                                     /* replicas asked for, -1 = none yet */
    int64_t asked_ms;                                     /* when */
    char leaving[MS_SCALER_MAX_MEMBERS][MS_ACTOR_ID_MAX]; /* ids chosen to leave */
    int n_leaving;
} s_book;

static void s_book_init(s_book *b) {
    memset(b, 0, sizeof(*b));
    b->expected = -1;
}

static void s_book_ask(s_book *b, int32_t target, int64_t now_ms) {
    b->expected = target;
    b->asked_ms = now_ms;
}

static void s_book_leave(s_book *b, const char *id) {
    if (!id[0] || b->n_leaving >= MS_SCALER_MAX_MEMBERS) return;
    snprintf(b->leaving[b->n_leaving++], MS_ACTOR_ID_MAX, "%s", id);
}

static bool s_book_is_leaving(const s_book *b, const char *id) {
    for (int i = 0; i < b->n_leaving; i++)
        if (strcmp(b->leaving[i], id) == 0) return true;
    return false;
}

/* Adjusts out[0..*n) (registry members) to what was asked. */
static void s_book_reconcile(s_book *b, const ms_scaler_opts *o, const ms_scaler_pool *pc,
                             int64_t now_ms, ms_scaler_actor *out, int max, int *n) {
    /* forget leavers that are gone from the registry */
    for (int i = 0; i < b->n_leaving;) {
        bool listed = false;
        for (int k = 0; k < *n; k++)
            listed |= strcmp(out[k].id, b->leaving[i]) == 0;
        if (!listed)
            memmove(b->leaving[i], b->leaving[i + 1],
                    (size_t)(--b->n_leaving - i) * sizeof(b->leaving[0]));
        else
            i++;
    }
    if (b->expected < 0) return;
    int up = 0;
    for (int k = 0; k < *n; k++)
        up += out[k].state != MS_SCALE_DRAINING;
    const int64_t age = now_ms - b->asked_ms;
    if (up > b->expected) {
        if (age >= o->drain_timeout_ms) {
            s_log(o, "%s: %d actors still up %lld ms after asking for %d; counting them", pc->name,
                  up, (long long)age, b->expected);
            b->expected = -1;
            b->n_leaving = 0;
            return;
        }
        /* the chosen leavers first, then the last listed (ids sort the newest last) */
        for (int pass = 0; pass < 2 && up > b->expected; pass++)
            for (int k = *n - 1; k >= 0 && up > b->expected; k--) {
                if (out[k].state == MS_SCALE_DRAINING) continue;
                if (pass == 0 && !s_book_is_leaving(b, out[k].id)) continue;
                out[k].state = MS_SCALE_DRAINING;
                out[k].since_ms = b->asked_ms;
                up--;
            }
    } else if (up < b->expected) {
        if (age >= o->start_timeout_ms) {
            s_log(o, "%s: %d of the %d replicas asked for did not register within %lld ms",
                  pc->name, b->expected - up, b->expected, (long long)o->start_timeout_ms);
            b->expected = -1;
            return;
        }
        for (int k = up; k < b->expected && *n < max; k++) {
            ms_scaler_actor *a = &out[(*n)++];
            memset(a, 0, sizeof(*a));
            a->state = MS_SCALE_STARTING;
            a->since_ms = b->asked_ms;
        }
    }
}

/* ---- asynchronous commands ------------------------------------------------------------------ */

typedef struct {
    char line[MS_SCALER_LINE_MAX]; /* the command, words separated by spaces */
    bool is_scale;                 /* a replica count (a newer one replaces it while queued) */
} s_cmd;

typedef struct {
    s_cmd q[MS_SCALER_CMD_QUEUE]; /* q[0] runs while pid > 0 */
    int n;
    pid_t pid;          /* running command, 0 if none */
    int64_t started_ms; /* when it started */
} s_runner;

/* Starts q[0] (fork + execvp, output inherited). 0 / -1 (logged). */
static int s_runner_exec(s_runner *r, const ms_scaler_opts *o, int64_t now_ms) {
    char buf[MS_SCALER_LINE_MAX];
    char *argv[MS_SCALER_ARGV_MAX + 1];
    int argc = ms_split_args(r->q[0].line, buf, sizeof(buf), argv, MS_SCALER_ARGV_MAX);
    if (argc <= 0) {
        s_log(o, "command not run (empty or too many words): %s", r->q[0].line);
        return -1;
    }
    argv[argc] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        s_log(o, "command not run (fork: %s): %s", strerror(errno), r->q[0].line);
        return -1;
    }
    if (pid == 0) {
        execvp(argv[0], argv);
        fprintf(stderr, "modserve-autoscaler: %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    r->pid = pid;
    r->started_ms = now_ms;
    s_log(o, "running: %s", r->q[0].line);
    return 0;
}

static void s_runner_pop(s_runner *r) {
    memmove(&r->q[0], &r->q[1], (size_t)(r->n - 1) * sizeof(r->q[0]));
    r->n--;
}

/* Collects a finished command and starts the next; dry-run prints them all. */
static void s_runner_poll(s_runner *r, const ms_scaler_opts *o, int64_t now_ms) {
    if (r->pid > 0) {
        int status = 0;
        pid_t w = waitpid(r->pid, &status, WNOHANG);
        if (w == 0) return; /* still running */
        if (w == r->pid && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
            if (WIFEXITED(status))
                s_log(o, "command failed (exit %d after %lld ms): %s", WEXITSTATUS(status),
                      (long long)(now_ms - r->started_ms), r->q[0].line);
            else
                s_log(o, "command killed by a signal: %s", r->q[0].line);
        }
        r->pid = 0;
        s_runner_pop(r);
    }
    while (r->n > 0 && r->pid == 0) {
        if (o->dry_run) {
            s_log(o, "dry-run: %s", r->q[0].line);
            s_runner_pop(r);
        } else if (s_runner_exec(r, o, now_ms) != 0) {
            s_runner_pop(r);
        }
    }
}

static int s_runner_push(s_runner *r, const char *line, bool is_scale, char *err, size_t err_size) {
    /* a replica count still waiting is replaced by the newer one */
    if (is_scale && r->n > 0 && r->q[r->n - 1].is_scale && !(r->n == 1 && r->pid > 0)) {
        snprintf(r->q[r->n - 1].line, sizeof(r->q[0].line), "%s", line);
        return 0;
    }
    if (r->n >= MS_SCALER_CMD_QUEUE)
        return ms_errf(err, err_size, "%d commands already queued; not queued: %s",
                       MS_SCALER_CMD_QUEUE, line);
    snprintf(r->q[r->n].line, sizeof(r->q[0].line), "%s", line);
    r->q[r->n].is_scale = is_scale;
    r->n++;
    return 0;
}

/* ---- command lines -------------------------------------------------------------------------- */

/* Appends printf text to buf (used bytes *len); -1 once it does not fit. */
static int s_cat(char *buf, size_t size, size_t *len, const char *fmt, ...) MS_PRINTF(4, 5);
static int s_cat(char *buf, size_t size, size_t *len, const char *fmt, ...) {
    if (*len >= size) return -1;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + *len, size - *len, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= size - *len) {
        *len = size;
        return -1;
    }
    *len += (size_t)k;
    return 0;
}

int ms_scaler_format_scale(const ms_scaler_opts *o, const char *kind, const char *target,
                           int replicas, char *buf, size_t size) {
    size_t len = 0;
    int rc = 0;
    if (size > 0) buf[0] = '\0';
    if (strcmp(kind, "compose") == 0) {
        rc |= s_cat(buf, size, &len, "%s", o->compose_cmd);
        if (o->compose_file[0]) rc |= s_cat(buf, size, &len, " -f %s", o->compose_file);
        rc |= s_cat(buf, size, &len, " up -d --scale %s=%d --no-recreate %s", target, replicas,
                    target);
    } else if (strcmp(kind, "k8s") == 0) {
        rc |= s_cat(buf, size, &len, "%s", o->kubectl);
        if (o->k8s_namespace[0]) rc |= s_cat(buf, size, &len, " -n %s", o->k8s_namespace);
        rc |= s_cat(buf, size, &len, " scale deployment/%s --replicas=%d", target, replicas);
    } else {
        return -1;
    }
    return rc == 0 ? 0 : -1;
}

/* ---- compose and k8s ------------------------------------------------------------------------ */

typedef struct {
    ms_scaler_opts o;
    const char *kind; /* "compose" | "k8s" */
    s_book book[MS_AUTOSCALE_MAX_POOLS];
    s_runner run[MS_AUTOSCALE_MAX_POOLS];
} s_cmdb;

static int s_cmdb_members(void *self, int pool, const ms_scaler_pool *pc, const ms_actor_info *reg,
                          int n_reg, int64_t now_ms, ms_scaler_actor *out, int max, int *n,
                          char *err, size_t err_size) {
    (void)err;
    (void)err_size;
    s_cmdb *c = self;
    assert(pool >= 0 && pool < MS_AUTOSCALE_MAX_POOLS);
    s_runner_poll(&c->run[pool], &c->o, now_ms);
    s_registry_members(pc, reg, n_reg, out, max, n);
    s_book_reconcile(&c->book[pool], &c->o, pc, now_ms, out, max, n);
    return 0;
}

static int s_cmdb_scale(s_cmdb *c, int pool, const ms_scaler_pool *pc, int target, int64_t now_ms,
                        char *err, size_t err_size) {
    char line[MS_SCALER_LINE_MAX];
    if (ms_scaler_format_scale(&c->o, c->kind, pc->target, target, line, sizeof(line)) != 0)
        return ms_errf(err, err_size, "%s: scale command too long", pc->name);
    if (s_runner_push(&c->run[pool], line, true, err, err_size) != 0) return -1;
    s_book_ask(&c->book[pool], target, now_ms);
    s_runner_poll(&c->run[pool], &c->o, now_ms);
    return 0;
}

static int s_cmdb_start(void *self, int pool, const ms_scaler_pool *pc, int n, int target,
                        int64_t now_ms, char *err, size_t err_size) {
    (void)n;
    return s_cmdb_scale(self, pool, pc, target, now_ms, err, err_size);
}

static int s_cmdb_drain(void *self, int pool, const ms_scaler_pool *pc, const ms_scaler_actor *a,
                        int n, int target, int64_t now_ms, char *err, size_t err_size) {
    s_cmdb *c = self;
    for (int i = 0; i < n; i++) {
        s_book_leave(&c->book[pool], a[i].id);
        if (strcmp(c->kind, "k8s") != 0 || !a[i].host[0]) continue;
        /* the ReplicaSet removes the pods with the lowest deletion cost first */
        char line[MS_SCALER_LINE_MAX];
        size_t len = 0;
        int rc = s_cat(line, sizeof(line), &len, "%s", c->o.kubectl);
        if (c->o.k8s_namespace[0])
            rc |= s_cat(line, sizeof(line), &len, " -n %s", c->o.k8s_namespace);
        rc |= s_cat(line, sizeof(line), &len, " annotate --overwrite pod %s %s", a[i].host,
                    S_DELETION_COST);
        if (rc != 0) return ms_errf(err, err_size, "%s: annotate command too long", pc->name);
        if (s_runner_push(&c->run[pool], line, false, err, err_size) != 0) return -1;
    }
    return s_cmdb_scale(c, pool, pc, target, now_ms, err, err_size);
}

static int s_noop_stop(void *self, int pool, const ms_scaler_pool *pc, const ms_scaler_actor *a,
                       int64_t now_ms, char *err, size_t err_size) {
    (void)self, (void)pool, (void)pc, (void)a, (void)now_ms, (void)err, (void)err_size;
    return 0; /* the orchestrator stops the container once its actor has drained and exited */
}

static void s_cmdb_destroy(void *self) {
    free(self);
}

static void s_cmdb_set_log(void *self, ms_scaler_log_fn log, void *user) {
    s_cmdb *c = self;
    c->o.log = log;
    c->o.log_user = user;
}

static const ms_scaler_ops s_compose_ops = {.name = "compose",
                                            .members = s_cmdb_members,
                                            .start = s_cmdb_start,
                                            .drain = s_cmdb_drain,
                                            .stop = s_noop_stop,
                                            .set_log = s_cmdb_set_log,
                                            .destroy = s_cmdb_destroy};

static const ms_scaler_ops s_k8s_ops = {.name = "k8s",
                                        .members = s_cmdb_members,
                                        .start = s_cmdb_start,
                                        .drain = s_cmdb_drain,
                                        .stop = s_noop_stop,
                                        .set_log = s_cmdb_set_log,
                                        .destroy = s_cmdb_destroy};

static int s_opts_check(const ms_scaler_opts *o, char *err, size_t err_size) {
    if (o->start_timeout_ms <= 0 || o->drain_timeout_ms <= 0)
        return ms_errf(err, err_size, "start and drain timeouts must be > 0");
    return 0;
}

static ms_scaler *s_cmdb_new(const ms_scaler_opts *o, const char *kind, const ms_scaler_ops *ops,
                             char *err, size_t err_size) {
    if (s_opts_check(o, err, err_size) != 0) return NULL;
    s_cmdb *c = ms_xcalloc(1, sizeof(*c));
    c->o = *o;
    c->kind = kind;
    for (int p = 0; p < MS_AUTOSCALE_MAX_POOLS; p++)
        s_book_init(&c->book[p]);
    return ms_scaler_new(ops, c);
}

ms_scaler *ms_scaler_compose_new(const ms_scaler_opts *o, char *err, size_t err_size) {
    if (!o->compose_cmd[0]) {
        ms_errf(err, err_size, "compose: no compose command");
        return NULL;
    }
    return s_cmdb_new(o, "compose", &s_compose_ops, err, err_size);
}

ms_scaler *ms_scaler_k8s_new(const ms_scaler_opts *o, char *err, size_t err_size) {
    if (!o->kubectl[0]) {
        ms_errf(err, err_size, "k8s: no kubectl command");
        return NULL;
    }
    return s_cmdb_new(o, "k8s", &s_k8s_ops, err, err_size);
}

/* ---- local processes ------------------------------------------------------------------------ */

#define S_LOCAL_TRACK 256 /* starts / drains remembered */

typedef struct {
    char name[MS_CLUSTER_ID_MAX]; /* process (actor) name */
    pid_t pid;
    int64_t since_ms; /* started / drain began */
    bool killed;      /* SIGKILL sent */
    bool registered;  /* seen in the registry (starts) */
} s_track;

typedef struct {
    ms_scaler_opts o;
    ms_cluster_run *run;           /* the run directory, reloaded before each change */
    ms_proc *procs;                /* [MS_CLUSTER_MAX_PROCS] scratch for the pid files */
    s_track starts[S_LOCAL_TRACK]; /* processes this backend started */
    int n_starts;
    s_track drains[S_LOCAL_TRACK]; /* processes this backend sent SIGTERM */
    int n_drains;
    s_book book[MS_AUTOSCALE_MAX_POOLS]; /* dry-run bookkeeping */
} s_local;

static s_track *s_track_find(s_track *t, int n, const char *name, pid_t pid) {
    for (int i = 0; i < n; i++)
        if (t[i].pid == pid && strcmp(t[i].name, name) == 0) return &t[i];
    return NULL;
}

static void s_track_add(s_track *t, int *n, const char *name, pid_t pid, int64_t now_ms) {
    if (*n >= S_LOCAL_TRACK) { /* forget the oldest */
        memmove(&t[0], &t[1], (size_t)(*n - 1) * sizeof(t[0]));
        (*n)--;
    }
    s_track *e = &t[(*n)++];
    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->pid = pid;
    e->since_ms = now_ms;
}

static void s_track_remove(s_track *t, int *n, const s_track *e) {
    const int i = (int)(e - t);
    memmove(&t[i], &t[i + 1], (size_t)(*n - i - 1) * sizeof(t[0]));
    (*n)--;
}

/* Process start time in the monotonic ms clock (both count from boot). */
static int64_t s_proc_start_ms(const ms_proc *p) {
    const long tck = sysconf(_SC_CLK_TCK);
    return tck > 0 ? (int64_t)(p->start * 1000 / tck) : 0;
}

static int s_local_reload(s_local *l, char *err, size_t err_size) {
    if (ms_cluster_run_load(l->run, l->o.rundir, err, err_size) != 0) return -1;
    l->run->log = NULL;
    l->run->stop = NULL;
    if (!l->run->conf.bin_dir[0])
        snprintf(l->run->conf.bin_dir, sizeof(l->run->conf.bin_dir), "%s", l->o.bin_dir);
    return 0;
}

/* The live processes of group `group` into l->procs; dead ones are reaped,
 * forgotten (pid file removed) and logged. Returns the count or -1 + err. */
static int s_local_procs(s_local *l, const char *group, int64_t now_ms, char *err,
                         size_t err_size) {
    int n = ms_pidfile_list(l->o.rundir, l->procs, MS_CLUSTER_MAX_PROCS, err, err_size);
    if (n < 0) return -1;
    int k = 0;
    for (int i = 0; i < n; i++) {
        ms_proc *p = &l->procs[i];
        if (strcmp(p->role, "actor") != 0 || strcmp(p->group, group) != 0) continue;
        if (ms_proc_alive(p)) {
            l->procs[k++] = *p;
            continue;
        }
        int status;
        while (waitpid(p->pid, &status, WNOHANG) > 0) { /* our child: reap it */
        }
        ms_pidfile_remove(l->o.rundir, p->name);
        s_track *d = s_track_find(l->drains, l->n_drains, p->name, p->pid);
        s_track *s = s_track_find(l->starts, l->n_starts, p->name, p->pid);
        if (d) {
            s_log(&l->o, "%s (pid %d) drained and exited after %.1f s", p->name, (int)p->pid,
                  (double)(now_ms - d->since_ms) / 1000.0);
            s_track_remove(l->drains, &l->n_drains, d);
        } else if (s && !s->registered) {
            s_log(&l->o, "%s (pid %d) exited before it registered (log: %s/logs/%s.log)", p->name,
                  (int)p->pid, l->o.rundir, p->name);
        } else {
            s_log(&l->o, "%s (pid %d) is gone (it was not asked to leave)", p->name, (int)p->pid);
        }
        if ((s = s_track_find(l->starts, l->n_starts, p->name, p->pid)) != NULL)
            s_track_remove(l->starts, &l->n_starts, s);
    }
    return k;
}

static int s_local_members(void *self, int pool, const ms_scaler_pool *pc, const ms_actor_info *reg,
                           int n_reg, int64_t now_ms, ms_scaler_actor *out, int max, int *n,
                           char *err, size_t err_size) {
    s_local *l = self;
    if (l->o.dry_run) {
        s_registry_members(pc, reg, n_reg, out, max, n);
        s_book_reconcile(&l->book[pool], &l->o, pc, now_ms, out, max, n);
        return 0;
    }
    const int np = s_local_procs(l, pc->target, now_ms, err, err_size);
    if (np < 0) return -1;
    for (int i = 0; i < np && *n < max; i++) {
        const ms_proc *p = &l->procs[i];
        ms_scaler_actor *a = &out[(*n)++];
        memset(a, 0, sizeof(*a));
        snprintf(a->id, sizeof(a->id), "%s", p->name);
        a->pid = p->pid;
        a->since_ms = s_proc_start_ms(p);
        const ms_actor_info *r = NULL;
        for (int k = 0; k < n_reg && !r; k++)
            if (strcmp(reg[k].id, p->name) == 0 && reg[k].pid == (int64_t)p->pid) r = &reg[k];
        if (r) {
            a->registered = true;
            snprintf(a->host, sizeof(a->host), "%s", r->host);
            a->state = r->state == MS_ACTOR_DRAINING ? MS_SCALE_DRAINING : MS_SCALE_UP;
            a->queued_tokens = r->queued_image_tokens + r->queued_prompt_tokens;
            a->running = (int32_t)MS_MIN(r->running_seqs, (int64_t)INT32_MAX);
        } else {
            a->state = MS_SCALE_STARTING;
        }
        s_track *st = s_track_find(l->starts, l->n_starts, p->name, p->pid);
        if (st && r) st->registered = true;
        s_track *d = s_track_find(l->drains, l->n_drains, p->name, p->pid);
        if (d) {
            a->state = MS_SCALE_DRAINING;
            a->since_ms = d->since_ms;
            if (!d->killed && now_ms - d->since_ms >= l->o.drain_timeout_ms) {
                s_log(&l->o, "%s (pid %d) still draining after %lld ms: SIGKILL", p->name,
                      (int)p->pid, (long long)(now_ms - d->since_ms));
                ms_proc_signal(p, SIGKILL);
                d->killed = true;
            }
        } else if (st && !st->registered && !st->killed &&
                   now_ms - st->since_ms >= l->o.start_timeout_ms) {
            /* never registered, so it holds no work */
            s_log(&l->o,
                  "%s (pid %d) did not register within %lld ms: stopping it (log: "
                  "%s/logs/%s.log)",
                  p->name, (int)p->pid, (long long)l->o.start_timeout_ms, l->o.rundir, p->name);
            ms_proc_signal(p, SIGKILL);
            st->killed = true;
        }
    }
    return 0;
}

/* Records the group's count in cluster.conf (as `modserve scale` does). */
static void s_local_save_count(s_local *l, const ms_scaler_pool *pc, int target) {
    char err[MS_ERR_SIZE];
    if (s_local_reload(l, err, sizeof(err)) != 0) {
        s_log(&l->o, "cluster.conf not updated: %s", err);
        return;
    }
    ms_cluster_group *g = ms_cluster_group_find(&l->run->conf, pc->target);
    if (!g) return;
    g->count = MS_MIN(MS_MAX(target, 0), MS_CLUSTER_MAX_GROUP_ACTORS);
    if (ms_cluster_run_save(l->run, err, sizeof(err)) != 0)
        s_log(&l->o, "cluster.conf not updated: %s", err);
}

static int s_local_start(void *self, int pool, const ms_scaler_pool *pc, int n, int target,
                         int64_t now_ms, char *err, size_t err_size) {
    s_local *l = self;
    if (l->o.dry_run) {
        s_log(&l->o, "dry-run: modserve scale %s %d --dir %s (start %d)", pc->target, target,
              l->o.rundir, n);
        s_book_ask(&l->book[pool], target, now_ms);
        return 0;
    }
    if (s_local_reload(l, err, err_size) != 0) return -1;
    ms_cluster_conf *c = &l->run->conf;
    ms_cluster_group *g = ms_cluster_group_find(c, pc->target);
    if (!g) return ms_errf(err, err_size, "no group '%s' in %s", pc->target, l->run->conf_path);
    if (ms_cluster_stages_has(g->stages, "encode") && !c->mmproj[0])
        return ms_errf(err, err_size, "group '%s' encodes images, but the cluster has no mmproj",
                       g->name);
    for (int i = 0; i < n; i++) {
        ms_proc p;
        if (ms_cluster_start_actor(l->run, g, &p, err, err_size) != 0) return -1;
        s_track_add(l->starts, &l->n_starts, p.name, p.pid, now_ms);
        s_log(&l->o, "started %s (pid %d)", p.name, (int)p.pid);
    }
    g->count = MS_MIN(MS_MAX(target, 0), MS_CLUSTER_MAX_GROUP_ACTORS);
    return ms_cluster_run_save(l->run, err, err_size);
}

static int s_local_drain(void *self, int pool, const ms_scaler_pool *pc, const ms_scaler_actor *a,
                         int n, int target, int64_t now_ms, char *err, size_t err_size) {
    s_local *l = self;
    if (l->o.dry_run) {
        for (int i = 0; i < n; i++) {
            s_log(&l->o, "dry-run: drain %s (SIGTERM pid %lld)", a[i].id[0] ? a[i].id : "?",
                  (long long)a[i].pid);
            s_book_leave(&l->book[pool], a[i].id);
        }
        s_book_ask(&l->book[pool], target, now_ms);
        return 0;
    }
    int failed = 0;
    for (int i = 0; i < n; i++) {
        ms_proc p;
        char perr[MS_ERR_SIZE];
        if (!a[i].id[0] || ms_pidfile_read(l->o.rundir, a[i].id, &p, perr, sizeof(perr)) != 0 ||
            (int64_t)p.pid != a[i].pid) {
            s_log(&l->o, "cannot drain %s: no such process in %s", a[i].id[0] ? a[i].id : "?",
                  l->o.rundir);
            failed++;
            continue;
        }
        if (ms_proc_signal(&p, SIGTERM) != 0) {
            s_log(&l->o, "%s (pid %d) is already gone", p.name, (int)p.pid);
            continue;
        }
        s_track_add(l->drains, &l->n_drains, p.name, p.pid, now_ms);
        s_log(&l->o, "draining %s (pid %d): SIGTERM", p.name, (int)p.pid);
    }
    s_local_save_count(l, pc, target);
    if (failed > 0) return ms_errf(err, err_size, "%d of %d drains failed", failed, n);
    return 0;
}

static void s_local_set_log(void *self, ms_scaler_log_fn log, void *user) {
    s_local *l = self;
    l->o.log = log;
    l->o.log_user = user;
}

static void s_local_destroy(void *self) {
    s_local *l = self;
    free(l->run);
    free(l->procs);
    free(l);
}

static const ms_scaler_ops s_local_ops = {.name = "local",
                                          .members = s_local_members,
                                          .start = s_local_start,
                                          .drain = s_local_drain,
                                          .stop = s_noop_stop,
                                          .set_log = s_local_set_log,
                                          .destroy = s_local_destroy};

ms_scaler *ms_scaler_local_new(const ms_scaler_opts *o, char *err, size_t err_size) {
    if (s_opts_check(o, err, err_size) != 0) return NULL;
    if (!o->rundir[0]) {
        ms_errf(err, err_size, "local: no run directory");
        return NULL;
    }
    s_local *l = ms_xcalloc(1, sizeof(*l));
    l->o = *o;
    l->run = ms_xcalloc(1, sizeof(*l->run));
    l->procs = ms_xcalloc(MS_CLUSTER_MAX_PROCS, sizeof(*l->procs));
    for (int p = 0; p < MS_AUTOSCALE_MAX_POOLS; p++)
        s_book_init(&l->book[p]);
    if (s_local_reload(l, err, err_size) != 0) {
        s_local_destroy(l);
        return NULL;
    }
    /* ms_cluster_run_load made the directory absolute */
    snprintf(l->o.rundir, sizeof(l->o.rundir), "%s", l->run->dir);
    return ms_scaler_new(&s_local_ops, l);
}
