/* modserve — the operator CLI for a local cluster (docs/cluster.md):
 *
 *   modserve up      start redis-server, the broker, the gateway and the actors of a cluster file
 *   modserve status  the registry as a table, plus the processes `up` started
 *   modserve scale   start or drain actors of one group
 *   modserve down    drain the actors, stop the broker, the gateway and Redis
 *   modserve submit  send one request and stream its answer
 *   modserve play    play a mixed image/text workload and print a latency report
 *   modserve bench   replay a trace, or compare layouts (runs modserve-bench)
 *
 * The library side is schemas/cluster.[ch] (cluster files, run directory, pid
 * files, starting/waiting/stopping processes) and schemas/workload.[ch] (the
 * workload, the player, latency statistics); this file is argument parsing,
 * the order of operations and what is printed. Exit status: 0 success,
 * 1 failure, 2 bad usage.
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "cluster.h"
#include "ms_common.h"
#include "registry.h"
#include "workload.h"

#define UP_READY_TIMEOUT_S 120   /* default wait for every actor to register */
#define DOWN_FAIL_DRAIN_MS 2000  /* drain time when a failed `up` stops what it started */
#define WAIT_DEFAULT_MS    60000 /* submit/play give up after this long without an event */
#define MAX_IMAGE_FILES    64    /* images a workload draws from */
#define PORT_AUTO_START    10000 /* --port-base auto: first base tried (+ a pid-derived offset) */
#define PORT_AUTO_SLOTS    2000  /* ... of this many port spans, below the ephemeral range */

static const char *s_usage =
    "usage: modserve COMMAND [options]   (docs/cluster.md)\n"
    "\n"
    "  up      [--layout modserve|monolith|disagg] [--cluster FILE]\n"
    "          [--model LM.gguf --mmproj MM.gguf | --preset demo|tiny] [--dir RUNDIR]\n"
    "          [--port-base N|auto] [--data tcp|ipc] [--threads N] [--count GROUP=N]...\n"
    "          [--timeout S] [--bin-dir DIR] [--gateway-port N|auto] [--no-gateway]\n"
    "  status  [--dir RUNDIR] [--redis HOST:PORT] [--prefix P]\n"
    "  scale   GROUP N [--dir RUNDIR] [--timeout S]   (GROUP: a group name or a stage set)\n"
    "  down    [--dir RUNDIR] [--force]\n"
    "  submit  [--image F]... -p TEXT [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p P]\n"
    "          [--seed S] [--stop STR]... [--raw] [--timeout-ms MS] [--wait-ms MS]\n"
    "          [--broker EP] [--dir RUNDIR] [--ids] [-q]\n"
    "  play    [--requests N] [--image-ratio R] [--max-images K] [--concurrency C]\n"
    "          [--max-tokens N] [--temp T] [--seed S] [--image F]... [--broker EP]\n"
    "          [--dir RUNDIR] [--wait-ms MS] [--out FILE.jsonl] [--verify] [-q]\n"
    "  bench   --trace FILE [options]              replay a trace against a cluster\n"
    "          --trace FILE --compare L,L [options] the same slice on each layout, same cores\n"
    "          (runs modserve-bench; docs/bench.md, docs/comparison.md; bench --help)\n"
    "\n"
    "RUNDIR defaults to ./run. submit/play give up after --wait-ms (default 60000) without\n"
    "an answer. --help after a command prints this text.\n";

static volatile sig_atomic_t s_interrupted;

static void s_on_signal(int sig) {
    (void)sig;
    s_interrupted = 1;
}

static void s_catch_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static void s_usage_exit(const char *fmt, const char *arg) {
    fprintf(stderr, "modserve: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see modserve --help)\n");
    exit(2);
}

static long long s_int_arg(const char *opt, const char *s, long long lo, long long hi) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "modserve: %s expects an integer in [%lld, %lld], got '%s'\n", opt, lo, hi,
                s);
        exit(2);
    }
    return v;
}

static double s_num_arg(const char *opt, const char *s) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v)) {
        fprintf(stderr, "modserve: %s expects a number, got '%s'\n", opt, s);
        exit(2);
    }
    return v;
}

/* snprintf for paths: a path cut short by size is left cut (it then names no
 * file, and the open or exec that uses it reports that). */
static void s_pathf(char *buf, size_t size, const char *fmt, ...) MS_PRINTF(3, 4);
static void s_pathf(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

static bool s_file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Directory of this executable (build/bin), or "." if unknown. */
static const char *s_exe_dir(void) {
    static char dir[MS_CLUSTER_PATH_MAX];
    if (dir[0]) return dir;
    ssize_t n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
    if (n <= 0) {
        snprintf(dir, sizeof(dir), ".");
        return dir;
    }
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    return dir;
}

/* First existing file among candidates (printf patterns with one %s). */
static bool s_find(char *out, size_t size, const char *name, const char *const *dirs, int n) {
    for (int i = 0; i < n; i++) {
        if (!dirs[i]) continue;
        snprintf(out, size, "%s/%s", dirs[i], name);
        if (s_file_exists(out)) return true;
    }
    return false;
}

/* Makes path absolute (realpath); it must exist. */
static int s_abs(char *path, size_t size, char *err, size_t err_size) {
    char buf[PATH_MAX];
    if (!realpath(path, buf)) return ms_errf(err, err_size, "%s: %s", path, strerror(errno));
    if (strlen(buf) >= size) return ms_errf(err, err_size, "%s: path too long", buf);
    snprintf(path, size, "%s", buf);
    return 0;
}

/* ---- modserve up ------------------------------------------------------------------ */

typedef struct up_args {
    const char *layout, *cluster, *model, *mmproj, *preset, *dir, *bin_dir, *port_base, *data;
    const char *gateway_port;                  /* N or auto (port_base + 3); starts a gateway */
    bool no_gateway;                           /* --no-gateway: none, whatever the file says */
    int threads;                               /* > 0: overrides every group's threads */
    const char *counts[MS_CLUSTER_MAX_GROUPS]; /* GROUP=N */
    int n_counts;
    int timeout_s;
} up_args;

/* The models of --preset NAME: found next to the repository, or generated. */
static int s_preset_models(const char *preset, const ms_cluster_run *r, ms_cluster_conf *c,
                           char *err, size_t err_size) {
    if (strcmp(preset, "demo") != 0 && strcmp(preset, "tiny") != 0)
        return ms_errf(err, err_size, "--preset: expected demo or tiny, got '%s'", preset);
    char lm_name[64], mm_name[64], repo_models[MS_CLUSTER_PATH_MAX],
        run_models[MS_CLUSTER_PATH_MAX];
    snprintf(lm_name, sizeof(lm_name), "%s-lm.gguf", preset);
    snprintf(mm_name, sizeof(mm_name), "%s-mmproj.gguf", preset);
    snprintf(repo_models, sizeof(repo_models), "%s/../../models", s_exe_dir());
    s_pathf(run_models, sizeof(run_models), "%s/models", r->dir);
    const char *dirs[] = {"models", repo_models, run_models};
    for (size_t i = 0; i < MS_ARRAY_LEN(dirs); i++) {
        char lm[MS_CLUSTER_PATH_MAX], mm[MS_CLUSTER_PATH_MAX];
        if (s_find(lm, sizeof(lm), lm_name, &dirs[i], 1) &&
            s_find(mm, sizeof(mm), mm_name, &dirs[i], 1)) {
            snprintf(c->lm, sizeof(c->lm), "%s", lm);
            snprintf(c->mmproj, sizeof(c->mmproj), "%s", mm);
            return 0;
        }
    }
    /* not found: generate into RUNDIR/models */
    char mk[MS_CLUSTER_PATH_MAX];
    snprintf(mk, sizeof(mk), "%s/modserve-mkmodel", s_exe_dir());
    if (ms_mkdirs(run_models, err, err_size) != 0) return -1;
    printf("modserve: generating the %s models into %s\n", preset, run_models);
    fflush(stdout);
    char *argv[] = {mk, "--preset", (char *)preset, "--out", run_models, NULL};
    ms_proc p = {.name = "mkmodel"};
    char log[MS_CLUSTER_PATH_MAX];
    ms_cluster_log_path(r->dir, "mkmodel", log, sizeof(log));
    if (ms_proc_spawn(&p, argv, log, err, err_size) != 0) return -1;
    int status = 0;
    if (waitpid(p.pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        ms_cluster_log_tail(log, MS_CLUSTER_LOG_TAIL_LINES, stderr);
        return ms_errf(err, err_size, "modserve-mkmodel --preset %s failed", preset);
    }
    s_pathf(c->lm, sizeof(c->lm), "%s/%s", run_models, lm_name);
    s_pathf(c->mmproj, sizeof(c->mmproj), "%s/%s", run_models, mm_name);
    return 0;
}

static void s_parse_up(int argc, char **argv, up_args *a) {
    memset(a, 0, sizeof(*a));
    a->dir = "run";
    a->timeout_s = UP_READY_TIMEOUT_S;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
#define IS(s)   (strcmp(o, (s)) == 0)
#define VALUE() (i + 1 < argc ? argv[++i] : (s_usage_exit("%s needs a value", o), (char *)NULL))
        if (IS("-h") || IS("--help")) {
            fputs(s_usage, stdout);
            exit(0);
        } else if (IS("--layout")) {
            a->layout = VALUE();
        } else if (IS("--cluster")) {
            a->cluster = VALUE();
        } else if (IS("-m") || IS("--model")) {
            a->model = VALUE();
        } else if (IS("--mmproj")) {
            a->mmproj = VALUE();
        } else if (IS("--preset")) {
            a->preset = VALUE();
        } else if (IS("--dir")) {
            a->dir = VALUE();
        } else if (IS("--bin-dir")) {
            a->bin_dir = VALUE();
        } else if (IS("--port-base")) {
            a->port_base = VALUE();
        } else if (IS("--data")) {
            a->data = VALUE();
            if (strcmp(a->data, "tcp") != 0 && strcmp(a->data, "ipc") != 0)
                s_usage_exit("--data: expected tcp or ipc, got '%s'", a->data);
        } else if (IS("--threads")) {
            a->threads = (int)s_int_arg(o, VALUE(), 1, MS_CLUSTER_MAX_THREADS);
        } else if (IS("--count")) {
            const char *v = VALUE();
            if (a->n_counts >= MS_CLUSTER_MAX_GROUPS) s_usage_exit("too many --count ('%s')", v);
            a->counts[a->n_counts++] = v;
        } else if (IS("--timeout")) {
            a->timeout_s = (int)s_int_arg(o, VALUE(), 1, 86400);
        } else if (IS("--gateway-port")) {
            a->gateway_port = VALUE();
            if (strcmp(a->gateway_port, "auto") != 0) s_int_arg(o, a->gateway_port, 1, 65535);
        } else if (IS("--no-gateway")) {
            a->no_gateway = true;
        } else {
            s_usage_exit("up: unknown option '%s'", o);
        }
#undef IS
#undef VALUE
    }
    if (a->layout && a->cluster) s_usage_exit("give --layout or --cluster, not both%s", "");
    if (a->preset && (a->model || a->mmproj))
        s_usage_exit("--preset excludes --model and --mmproj%s", "");
    if (a->mmproj && !a->model) s_usage_exit("--mmproj needs --model%s", "");
    if (a->no_gateway && a->gateway_port)
        s_usage_exit("--no-gateway excludes --gateway-port%s", "");
}

/* The gateway's model name when the cluster file gives none: the preset's
 * name, else the LM file name without its directory and ".gguf". */
static void s_default_model_name(const up_args *a, ms_cluster_conf *c) {
    if (c->gateway_model[0]) return;
    if (a->preset) {
        snprintf(c->gateway_model, sizeof(c->gateway_model), "%s", a->preset);
        return;
    }
    const char *slash = strrchr(c->lm, '/');
    const char *base = slash ? slash + 1 : c->lm;
    size_t n = strlen(base);
    if (n > 5 && strcmp(base + n - 5, ".gguf") == 0) n -= 5;
    if (n >= sizeof(c->gateway_model)) n = sizeof(c->gateway_model) - 1;
    memcpy(c->gateway_model, base, n);
    c->gateway_model[n] = '\0';
    for (char *p = c->gateway_model; *p; p++)
        if (!ms_cluster_model_name_ok((char[]){*p, '\0'})) *p = '_';
    if (!c->gateway_model[0]) snprintf(c->gateway_model, sizeof(c->gateway_model), "modserve");
}

/* Resolves the cluster file, models, overrides and ports into r->conf. */
static int s_up_conf(const up_args *a, ms_cluster_run *r, char *err, size_t err_size) {
    ms_cluster_conf *c = &r->conf;
    ms_cluster_conf_default(c);
    char path[MS_CLUSTER_PATH_MAX];
    if (a->cluster) {
        snprintf(path, sizeof(path), "%s", a->cluster);
    } else {
        const char *layout = a->layout ? a->layout : "modserve";
        char name[96], d1[MS_CLUSTER_PATH_MAX], d2[MS_CLUSTER_PATH_MAX];
        snprintf(name, sizeof(name), "%s.conf", layout);
        snprintf(d1, sizeof(d1), "%s/../../tools/clusters", s_exe_dir());
        snprintf(d2, sizeof(d2), "%s/../share/modserve/clusters", s_exe_dir());
        const char *dirs[] = {getenv("MS_CLUSTER_DIR"), d1, d2, "tools/clusters"};
        if (!s_find(path, sizeof(path), name, dirs, (int)MS_ARRAY_LEN(dirs)))
            return ms_errf(err, err_size,
                           "no cluster file for layout '%s' (looked for %s in $MS_CLUSTER_DIR, "
                           "%s, %s, ./tools/clusters)",
                           layout, name, d1, d2);
    }
    if (ms_cluster_conf_load(c, path, err, err_size) != 0) return -1;
    if (a->layout && strcmp(a->layout, c->layout) != 0)
        return ms_errf(err, err_size, "%s says layout '%s', not '%s'", path, c->layout, a->layout);
    if (a->preset) {
        if (s_preset_models(a->preset, r, c, err, err_size) != 0) return -1;
    } else if (a->model) {
        snprintf(c->lm, sizeof(c->lm), "%s", a->model);
        snprintf(c->mmproj, sizeof(c->mmproj), "%s", a->mmproj ? a->mmproj : "");
    }
    if (!c->lm[0])
        return ms_errf(err, err_size,
                       "no model: give --model LM.gguf [--mmproj MM.gguf], "
                       "--preset demo, or [models] in the cluster file");
    if (s_abs(c->lm, sizeof(c->lm), err, err_size) != 0) return -1;
    if (c->mmproj[0] && s_abs(c->mmproj, sizeof(c->mmproj), err, err_size) != 0) return -1;
    if (c->profile[0] && s_abs(c->profile, sizeof(c->profile), err, err_size) != 0) return -1;
    if (!c->mmproj[0]) {
        /* a text-only cluster: encoders have nothing to do */
        for (int i = 0; i < c->n_groups; i++)
            if (strcmp(c->groups[i].stages, "encode") == 0) c->groups[i].count = 0;
    }
    if (a->data) snprintf(c->data, sizeof(c->data), "%s", a->data);
    if (a->threads > 0)
        for (int i = 0; i < c->n_groups; i++)
            c->groups[i].threads = a->threads;
    for (int i = 0; i < a->n_counts; i++) {
        char g[MS_CLUSTER_NAME_MAX + 32];
        snprintf(g, sizeof(g), "%s", a->counts[i]);
        char *eq = strchr(g, '=');
        if (!eq) return ms_errf(err, err_size, "--count expects GROUP=N, got '%s'", a->counts[i]);
        *eq = '\0';
        ms_cluster_group *grp = ms_cluster_group_find(c, g);
        if (!grp) return ms_errf(err, err_size, "--count: no group '%s' in %s", g, path);
        long long n = s_int_arg("--count", eq + 1, 0, MS_CLUSTER_MAX_GROUP_ACTORS);
        grp->count = (int)n;
    }
    if (ms_cluster_conf_validate(c, err, err_size) != 0) return -1;
    if (a->port_base && strcmp(a->port_base, "auto") == 0) {
        int start = PORT_AUTO_START + (int)(getpid() % PORT_AUTO_SLOTS) * MS_CLUSTER_PORT_SPAN;
        int base = ms_cluster_find_port_base(start, err, err_size);
        if (base < 0) base = ms_cluster_find_port_base(10000, err, err_size);
        if (base < 0) return -1;
        c->port_base = base;
    } else if (a->port_base) {
        c->port_base =
            (int)s_int_arg("--port-base", a->port_base, 1024, 65535 - MS_CLUSTER_PORT_SPAN);
    }
    /* the gateway: on the file's address, or on port_base + 3 when ports are picked */
    if (a->no_gateway) c->gateway = false;
    if (a->gateway_port) {
        c->gateway = true;
        c->gateway_port = strcmp(a->gateway_port, "auto") == 0
                              ? c->port_base + MS_CLUSTER_GATEWAY_PORT_OFFSET
                              : (int)s_int_arg("--gateway-port", a->gateway_port, 1, 65535);
    } else if (c->gateway && a->port_base && strcmp(a->port_base, "auto") == 0) {
        c->gateway_port = c->port_base + MS_CLUSTER_GATEWAY_PORT_OFFSET;
    }
    if (c->gateway) s_default_model_name(a, c);
    return 0;
}

static void s_print_summary(const ms_cluster_run *r, const ms_proc *procs, int n, double secs) {
    const ms_cluster_conf *c = &r->conf;
    char front[MS_CLUSTER_EP_MAX], back[MS_CLUSTER_EP_MAX], err[MS_ERR_SIZE];
    ms_cluster_front_ep(c, front, sizeof(front));
    ms_cluster_back_ep(c, back, sizeof(back));
    ms_actor_info *actors = NULL;
    int n_actors = 0;
    ms_registry *reg =
        ms_registry_new("127.0.0.1", ms_cluster_redis_port(c), c->prefix, err, sizeof(err));
    if (reg && ms_registry_list(reg, &actors, &n_actors) != 0) n_actors = 0;
    ms_registry_destroy(&reg);
    printf("modserve: cluster up in %.1f s: layout %s, run directory %s\n", secs, c->layout,
           r->dir);
    printf("  model   %s\n", c->lm);
    if (c->mmproj[0]) printf("  mmproj  %s\n", c->mmproj);
    printf("  %-10s %-22s %-8s %-8s %s\n", "process", "stages", "pid", "threads", "endpoint");
    for (int i = 0; i < n; i++) {
        const ms_proc *p = &procs[i];
        if (strcmp(p->role, "redis") == 0) {
            printf("  %-10s %-22s %-8d %-8s 127.0.0.1:%d\n", p->name, "-", (int)p->pid, "-",
                   ms_cluster_redis_port(c));
        } else if (strcmp(p->role, "broker") == 0) {
            printf("  %-10s %-22s %-8d %-8s front %s, back %s\n", p->name, "-", (int)p->pid, "-",
                   front, back);
        } else if (strcmp(p->role, "gateway") == 0) {
            char url[MS_CLUSTER_EP_MAX];
            ms_cluster_gateway_url(c, url, sizeof(url));
            printf("  %-10s %-22s %-8d %-8s %s/v1 (model %s; /health, /metrics)\n", p->name, "-",
                   (int)p->pid, "-", url, c->gateway_model);
        } else {
            ms_cluster_group *g = ms_cluster_group_find((ms_cluster_conf *)c, p->group);
            const char *ep = "?";
            for (int k = 0; k < n_actors; k++)
                if (strcmp(actors[k].id, p->name) == 0) ep = actors[k].data_ep;
            printf("  %-10s %-22s %-8d %-8d data %s\n", p->name, g ? g->stages : "?", (int)p->pid,
                   g ? g->threads : 0, ep);
        }
    }
    free(actors);
    printf("  logs    %s/logs/\n", r->dir);
    printf("next: modserve submit --dir %s -p \"Hello\"  |  modserve status --dir %s  |  "
           "modserve down --dir %s\n",
           r->dir, r->dir, r->dir);
}

/* Reads the cluster's run directory for a command that needs a running cluster. */
static ms_cluster_run *s_run_open(const char *dir, char *err, size_t err_size) {
    ms_cluster_run *r = ms_xcalloc(1, sizeof(*r));
    if (ms_cluster_run_load(r, dir, err, err_size) != 0) {
        free(r);
        return NULL;
    }
    r->stop = &s_interrupted;
    r->log = stderr;
    r->progress = isatty(STDERR_FILENO) == 1;
    return r;
}

/* True if every stage the gateway's /health requires (encode with an mmproj,
 * prefill, decode) has a group that starts actors. */
static bool s_stages_staffed(const ms_cluster_conf *c) {
    bool enc = !c->mmproj[0], pre = false, dec = false;
    for (int i = 0; i < c->n_groups; i++) {
        const ms_cluster_group *g = &c->groups[i];
        if (g->count <= 0) continue;
        enc |= ms_cluster_stages_has(g->stages, "encode");
        pre |= ms_cluster_stages_has(g->stages, "prefill");
        dec |= ms_cluster_stages_has(g->stages, "decode");
    }
    return enc && pre && dec;
}

static int cmd_up(int argc, char **argv) {
    up_args a;
    s_parse_up(argc, argv, &a);
    char err[MS_ERR_SIZE];
    ms_cluster_run *r = ms_xcalloc(1, sizeof(*r));
    ms_proc procs[MS_CLUSTER_MAX_PROCS];
    int n = 0;
    double t0 = ms_now_s();
    bool started = false;
    if (ms_cluster_run_create(r, a.dir, err, sizeof(err)) != 0) goto fail;
    r->stop = &s_interrupted;
    r->log = stderr;
    r->progress = isatty(STDERR_FILENO) == 1;
    {
        /* refuse to start over a running cluster; forget stale pid files */
        ms_proc old[MS_CLUSTER_MAX_PROCS];
        int n_old = ms_pidfile_list(r->dir, old, MS_CLUSTER_MAX_PROCS, err, sizeof(err));
        if (n_old < 0) goto fail;
        for (int i = 0; i < n_old; i++) {
            if (ms_proc_alive(&old[i])) {
                ms_errf(err, sizeof(err),
                        "a cluster is already running in %s (%s, pid %d): modserve down --dir %s",
                        r->dir, old[i].name, (int)old[i].pid, r->dir);
                goto fail;
            }
            ms_pidfile_remove(r->dir, old[i].name);
        }
    }
    if (s_up_conf(&a, r, err, sizeof(err)) != 0) goto fail;
    ms_cluster_conf *c = &r->conf;
    snprintf(c->bin_dir, sizeof(c->bin_dir), "%s", a.bin_dir ? a.bin_dir : s_exe_dir());
    if (s_abs(c->bin_dir, sizeof(c->bin_dir), err, sizeof(err)) != 0) goto fail;
    static const char *const need[] = {"modserve-broker", "modserve-actor", "modserve-gateway"};
    for (size_t i = 0; i < MS_ARRAY_LEN(need); i++) {
        if (!c->gateway && strcmp(need[i], "modserve-gateway") == 0) continue;
        char bin[MS_CLUSTER_PATH_MAX + 32];
        snprintf(bin, sizeof(bin), "%s/%s", c->bin_dir, need[i]);
        if (access(bin, X_OK) != 0) {
            ms_errf(err, sizeof(err), "%s: not found or not executable (build it first)", bin);
            goto fail;
        }
    }
    if (c->gateway && ms_cluster_gateway_port_busy(c)) {
        char listen[MS_CLUSTER_EP_MAX];
        ms_cluster_gateway_listen(c, listen, sizeof(listen));
        ms_errf(err, sizeof(err),
                "the gateway's address %s is in use (another cluster's gateway?): "
                "modserve up --gateway-port N|auto, or --no-gateway",
                listen);
        goto fail;
    }
    c->next_seq = 0;
    for (int i = 0; i < c->n_groups; i++)
        c->groups[i].started = 0;
    if (ms_cluster_run_save(r, err, sizeof(err)) != 0) goto fail;
    s_catch_signals();
    started = true;
    if (ms_cluster_start_redis(r, &procs[n], err, sizeof(err)) != 0) goto fail;
    n++;
    if (ms_cluster_start_broker(r, &procs[n], err, sizeof(err)) != 0) goto fail;
    n++;
    const ms_proc *gateway = NULL;
    if (c->gateway) {
        if (ms_cluster_start_gateway(r, &procs[n], err, sizeof(err)) != 0) goto fail;
        gateway = &procs[n];
        n++;
    }
    int first_actor = n;
    for (int gi = 0; gi < c->n_groups; gi++) {
        ms_cluster_group *g = &c->groups[gi];
        for (int k = 0; k < g->count; k++) {
            if (ms_cluster_start_actor(r, g, &procs[n], err, sizeof(err)) != 0) goto fail;
            n++;
        }
    }
    if (ms_cluster_wait_actors(r, procs + first_actor, n - first_actor, procs, first_actor,
                               a.timeout_s * 1000, err, sizeof(err)) != 0)
        goto fail;
    if (gateway) {
        /* the broker has heard from the actors and the registry lists them: /health says 200
         * soon; if not, the cluster is up all the same and the reason is shown */
        char herr[MS_ERR_SIZE];
        /* a stage with no actor (--count enc=0) keeps /health at 503: one look, no waiting */
        int health_ms = s_stages_staffed(c) ? MS_CLUSTER_HEALTH_TIMEOUT_MS : 0;
        if (ms_cluster_wait_gateway_health(r, gateway, health_ms, herr, sizeof(herr)) != 0) {
            if (!ms_proc_alive(gateway)) {
                snprintf(err, sizeof(err), "%s", herr);
                goto fail;
            }
            fprintf(stderr, "modserve up: warning: %s\n", herr);
        }
    }
    s_print_summary(r, procs, n, ms_now_s() - t0);
    free(r);
    return 0;

fail:
    fprintf(stderr, "modserve up: %s\n", err);
    if (started) {
        fprintf(stderr, "modserve up: stopping what was started\n");
        r->log = NULL;
        ms_cluster_down(r, DOWN_FAIL_DRAIN_MS, NULL, 0);
    }
    free(r);
    return 1;
}

/* ---- modserve down ------------------------------------------------------------------ */

static int cmd_down(int argc, char **argv) {
    const char *dir = "run";
    bool force = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--force") == 0)
            force = true;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(s_usage, stdout);
            return 0;
        } else
            s_usage_exit("down: unknown option or missing value '%s'", argv[i]);
    }
    ms_cluster_run *r = ms_xcalloc(1, sizeof(*r));
    char err[MS_ERR_SIZE];
    /* the pid files are enough: down works even if cluster.conf is damaged */
    snprintf(r->dir, sizeof(r->dir), "%s", dir);
    r->log = stdout;
    double t0 = ms_now_s();
    int n = ms_cluster_down(r, force ? 0 : MS_CLUSTER_DRAIN_MS, err, sizeof(err));
    free(r);
    if (n < 0) {
        fprintf(stderr, "modserve down: %s\n", err);
        return 1;
    }
    if (n == 0)
        printf("modserve: nothing to stop in %s\n", dir);
    else
        printf("modserve: cluster in %s stopped in %.1f s\n", dir, ms_now_s() - t0);
    return 0;
}

/* ---- modserve status ---------------------------------------------------------------- */

static void s_split_hostport(const char *s, char *host, size_t hsize, int *port) {
    const char *colon = strrchr(s, ':');
    if (!colon) {
        snprintf(host, hsize, "%s", s);
        *port = MS_REGISTRY_DEFAULT_PORT;
        return;
    }
    snprintf(host, hsize, "%.*s", (int)(colon - s), s);
    *port = (int)s_int_arg("--redis", colon + 1, 1, 65535);
}

/* Table order: encoders, prefill, text instances, decode, monoliths; then by id. */
static int s_stage_rank(unsigned stages) {
    static const unsigned order[] = {MS_STAGES_ENCODE, MS_STAGES_PREFILL,
                                     MS_STAGES_PREFILL | MS_STAGES_DECODE, MS_STAGES_DECODE,
                                     MS_STAGES_ALL};
    for (int i = 0; i < (int)MS_ARRAY_LEN(order); i++)
        if (stages == order[i]) return i;
    return (int)MS_ARRAY_LEN(order);
}

static int s_actor_cmp(const void *a, const void *b) {
    const ms_actor_info *x = a, *y = b;
    int d = s_stage_rank(x->stages) - s_stage_rank(y->stages);
    return d ? d : strcmp(x->id, y->id);
}

static int cmd_status(int argc, char **argv) {
    const char *dir = "run", *redis = NULL, *prefix = NULL;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(o, "--redis") == 0 && i + 1 < argc)
            redis = argv[++i];
        else if (strcmp(o, "--prefix") == 0 && i + 1 < argc)
            prefix = argv[++i];
        else if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) {
            fputs(s_usage, stdout);
            return 0;
        } else
            s_usage_exit("status: unknown option or missing value '%s'", o);
    }
    char err[MS_ERR_SIZE], host[256] = "127.0.0.1";
    int port = MS_REGISTRY_DEFAULT_PORT;
    ms_cluster_run *r = ms_xcalloc(1, sizeof(*r));
    bool have_run = false;
    ms_proc procs[MS_CLUSTER_MAX_PROCS];
    int n_procs = 0;
    if (redis) {
        s_split_hostport(redis, host, sizeof(host), &port);
    } else {
        if (ms_cluster_run_load(r, dir, err, sizeof(err)) != 0) {
            fprintf(stderr, "modserve status: %s\n", err);
            free(r);
            return 1;
        }
        have_run = true;
        port = ms_cluster_redis_port(&r->conf);
        if (!prefix) prefix = r->conf.prefix;
        n_procs = ms_pidfile_list(r->dir, procs, MS_CLUSTER_MAX_PROCS, err, sizeof(err));
        if (n_procs < 0) n_procs = 0;
    }
    ms_registry *reg = ms_registry_new(host, port, prefix, err, sizeof(err));
    if (!reg) {
        fprintf(stderr, "modserve status: %s\n", err);
        free(r);
        return 1;
    }
    ms_actor_info *actors = NULL;
    int n = 0;
    int lrc = ms_registry_list(reg, &actors, &n);
    int64_t now = ms_registry_now_ms();
    if (lrc != 0)
        printf("registry %s:%d: unreachable (%s)\n", host, port, ms_registry_errstr(reg));
    else
        printf("registry %s:%d prefix %s: %d actor%s\n", host, port, prefix ? prefix : "ms", n,
               n == 1 ? "" : "s");
    if (lrc == 0 && n > 0) {
        qsort(actors, (size_t)n, sizeof(*actors), s_actor_cmp);
        printf("%-22s %-10s %-10s %7s %-8s %8s %8s %4s %7s %7s %6s %6s %8s %6s %7s\n", "stage",
               "actor", "host", "pid", "state", "q_img", "q_prompt", "run", "free_kv", "images",
               "hits", "prefil", "decoded", "done", "hb_ms");
        for (int i = 0; i < n; i++) {
            const ms_actor_info *x = &actors[i];
            char st[MS_STAGES_STR_MAX];
            printf("%-22s %-10s %-10.10s %7" PRId64 " %-8s %8" PRId64 " %8" PRId64 " %4" PRId64
                   " %7" PRId64 " %7" PRId64 " %6" PRId64 " %6" PRId64 " %8" PRId64 " %6" PRId64
                   " %7" PRId64 "\n",
                   ms_stages_name(x->stages, st, sizeof st), x->id, x->host, x->pid,
                   ms_actor_state_name(x->state), x->queued_image_tokens, x->queued_prompt_tokens,
                   x->running_seqs, x->free_kv_blocks, x->images_encoded, x->images_cache_hits,
                   x->requests_prefilled, x->tokens_decoded, x->tasks_done, now - x->heartbeat_ms);
        }
    }
    if (have_run) {
        char front[MS_CLUSTER_EP_MAX];
        ms_cluster_front_ep(&r->conf, front, sizeof(front));
        if (r->conf.gateway) {
            char url[MS_CLUSTER_EP_MAX], body[400], herr[MS_ERR_SIZE];
            int code = 0;
            ms_cluster_gateway_url(&r->conf, url, sizeof(url));
            if (ms_cluster_http_get(r->conf.gateway_host, r->conf.gateway_port, "/health",
                                    MS_CLUSTER_HTTP_TIMEOUT_MS, &code, body, sizeof(body), herr,
                                    sizeof(herr)) == 0) {
                for (char *p = body; *p; p++)
                    if (*p == '\n' || *p == '\r') *p = ' ';
                printf("gateway %s/v1 model %s: /health %d%s%.300s\n", url, r->conf.gateway_model,
                       code, code == 200 ? "" : " ", code == 200 ? "" : body);
            } else {
                printf("gateway %s/v1 model %s: unreachable (%s)\n", url, r->conf.gateway_model,
                       herr);
            }
        }
        printf("processes in %s (layout %s, broker front %s):\n", r->dir, r->conf.layout, front);
        for (int i = 0; i < n_procs; i++) {
            const ms_proc *p = &procs[i];
            bool alive = ms_proc_alive(p);
            const char *reg_state = "";
            if (strcmp(p->role, "actor") == 0) {
                reg_state = " (not registered)";
                for (int k = 0; k < n; k++)
                    if (strcmp(actors[k].id, p->name) == 0 && actors[k].pid == (int64_t)p->pid)
                        reg_state = "";
            }
            printf("  %-10s %-7s pid %-8d %s%s\n", p->name, p->role, (int)p->pid,
                   alive ? "running" : "GONE", alive ? reg_state : "");
        }
        if (n_procs == 0) printf("  (none: the cluster is down)\n");
    }
    free(actors);
    ms_registry_destroy(&reg);
    free(r);
    return lrc == 0 ? 0 : 1;
}

/* ---- modserve scale ------------------------------------------------------------------ */

static int cmd_scale(int argc, char **argv) {
    const char *dir = "run", *group = NULL, *count = NULL;
    int timeout_s = UP_READY_TIMEOUT_S;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(o, "--timeout") == 0 && i + 1 < argc)
            timeout_s = (int)s_int_arg(o, argv[++i], 1, 86400);
        else if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) {
            fputs(s_usage, stdout);
            return 0;
        } else if (o[0] == '-')
            s_usage_exit("scale: unknown option '%s'", o);
        else if (!group)
            group = o;
        else if (!count)
            count = o;
        else
            s_usage_exit("scale: unexpected argument '%s'", o);
    }
    if (!group || !count) s_usage_exit("scale needs GROUP N%s", "");
    int target = (int)s_int_arg("scale N", count, 0, MS_CLUSTER_MAX_GROUP_ACTORS);
    char err[MS_ERR_SIZE];
    ms_cluster_run *r = s_run_open(dir, err, sizeof(err));
    int rc = 1;
    if (!r) goto out;
    ms_cluster_conf *c = &r->conf;
    if (!c->bin_dir[0]) snprintf(c->bin_dir, sizeof(c->bin_dir), "%s", s_exe_dir());
    ms_cluster_group *g = ms_cluster_group_find(c, group);
    if (!g) {
        ms_errf(err, sizeof(err), "no group '%s' (or it is ambiguous) in %s", group, r->conf_path);
        goto out;
    }
    if (target > 0 && ms_cluster_stages_has(g->stages, "encode") && !c->mmproj[0]) {
        ms_errf(err, sizeof(err), "group '%s' encodes images, but this cluster has no mmproj",
                g->name);
        goto out;
    }
    /* the group's live actors, oldest first (pid files are listed by seq) */
    ms_proc procs[MS_CLUSTER_MAX_PROCS], live[MS_CLUSTER_MAX_PROCS];
    int n = ms_pidfile_list(r->dir, procs, MS_CLUSTER_MAX_PROCS, err, sizeof(err));
    if (n < 0) goto out;
    int n_live = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(procs[i].role, "actor") != 0 || strcmp(procs[i].group, g->name) != 0) continue;
        if (ms_proc_alive(&procs[i])) {
            live[n_live++] = procs[i];
        } else {
            printf("modserve: %s (pid %d) is gone; forgetting it\n", procs[i].name,
                   (int)procs[i].pid);
            ms_pidfile_remove(r->dir, procs[i].name);
        }
    }
    s_catch_signals();
    g->count = target;
    if (n_live < target) {
        ms_proc started[MS_CLUSTER_MAX_PROCS];
        int ns = 0;
        for (int k = n_live; k < target; k++) {
            if (ms_cluster_start_actor(r, g, &started[ns], err, sizeof(err)) != 0) goto out;
            printf("modserve: started %s (pid %d)\n", started[ns].name, (int)started[ns].pid);
            ns++;
        }
        fflush(stdout);
        if (ms_cluster_run_save(r, err, sizeof(err)) != 0) goto out;
        if (ms_cluster_wait_actors(r, started, ns, NULL, 0, timeout_s * 1000, err, sizeof(err)) !=
            0)
            goto out;
    } else if (n_live > target) {
        /* drain the newest: SIGTERM makes them finish or hand back work, then deregister */
        int n_stop = n_live - target;
        for (int i = 0; i < n_stop; i++)
            printf("modserve: draining %s (pid %d)\n", live[target + i].name,
                   (int)live[target + i].pid);
        fflush(stdout);
        ms_cluster_stop(r, &live[target], n_stop, MS_CLUSTER_DRAIN_MS);
        if (ms_cluster_run_save(r, err, sizeof(err)) != 0) goto out;
    } else if (ms_cluster_run_save(r, err, sizeof(err)) != 0) {
        goto out;
    }
    printf("modserve: group %s (%s) has %d actor%s\n", g->name, g->stages, target,
           target == 1 ? "" : "s");
    rc = 0;
out:
    if (rc != 0) fprintf(stderr, "modserve scale: %s\n", err);
    free(r);
    return rc;
}

/* ---- producer side: submit and play --------------------------------------------------- */

/* The broker's front endpoint: --broker, else from RUNDIR/cluster.conf, else
 * the default. Without --broker, fails (-1 + err) at once when nothing listens
 * on that loopback port, rather than waiting for answers that cannot come. */
static int s_broker_ep(const char *broker, const char *dir, char *out, size_t size, char *err,
                       size_t err_size) {
    if (broker) {
        snprintf(out, size, "%s", broker);
        return 0;
    }
    ms_cluster_run *r = ms_xcalloc(1, sizeof(*r));
    char lerr[MS_ERR_SIZE];
    if (ms_cluster_run_load(r, dir ? dir : "run", lerr, sizeof(lerr)) != 0)
        ms_cluster_conf_default(&r->conf);
    ms_cluster_front_ep(&r->conf, out, size);
    int port = r->conf.port_base + 1;
    free(r);
    if (!ms_cluster_port_listening(port))
        return ms_errf(err, err_size,
                       "no broker listens on %s (is the cluster up? modserve up --dir %s, or "
                       "give --broker EP)",
                       out, dir ? dir : "run");
    return 0;
}

/* Reads an image file for a request (at most MS_WIRE_MAX_IMAGE_BYTES). */
static uint8_t *s_read_image(const char *path, size_t *len, char *err, size_t err_size) {
    return ms_read_file(path, MS_WIRE_MAX_IMAGE_BYTES, len, err, err_size);
}

typedef struct submit_args {
    const char *images[MS_WIRE_MAX_IMAGES];
    int n_images;
    const char *prompt, *broker, *dir;
    long long max_tokens, top_k, timeout_ms, wait_ms;
    double temp, top_p, min_p;
    unsigned long long seed;
    bool has_temp, has_top_k, has_top_p, has_min_p, has_seed, has_max_tokens, raw, ids, quiet;
    char *stop[MS_WIRE_MAX_STOP];
    int n_stop;
} submit_args;

static void s_parse_submit(int argc, char **argv, submit_args *a) {
    memset(a, 0, sizeof(*a));
    a->wait_ms = WAIT_DEFAULT_MS;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
#define IS(s)   (strcmp(o, (s)) == 0)
#define VALUE() (i + 1 < argc ? argv[++i] : (s_usage_exit("%s needs a value", o), (char *)NULL))
        if (IS("-h") || IS("--help")) {
            fputs(s_usage, stdout);
            exit(0);
        } else if (IS("--image")) {
            const char *f = VALUE();
            if (a->n_images >= MS_WIRE_MAX_IMAGES) s_usage_exit("too many --image (at '%s')", f);
            a->images[a->n_images++] = f;
        } else if (IS("-p") || IS("--prompt")) {
            a->prompt = VALUE();
        } else if (IS("-n") || IS("--n-predict")) {
            a->max_tokens = s_int_arg(o, VALUE(), 1, MS_MAX_GEN_TOKENS);
            a->has_max_tokens = true;
        } else if (IS("--temp")) {
            a->temp = s_num_arg(o, VALUE());
            a->has_temp = true;
        } else if (IS("--top-k")) {
            a->top_k = s_int_arg(o, VALUE(), 0, MS_WIRE_MAX_TOP_K);
            a->has_top_k = true;
        } else if (IS("--top-p")) {
            a->top_p = s_num_arg(o, VALUE());
            a->has_top_p = true;
        } else if (IS("--min-p")) {
            a->min_p = s_num_arg(o, VALUE());
            a->has_min_p = true;
        } else if (IS("-s") || IS("--seed")) {
            a->seed = (unsigned long long)s_int_arg(o, VALUE(), 0, LLONG_MAX);
            a->has_seed = true;
        } else if (IS("--stop")) {
            char *s = VALUE();
            if (a->n_stop >= MS_WIRE_MAX_STOP) s_usage_exit("too many --stop (at '%s')", s);
            a->stop[a->n_stop++] = s;
        } else if (IS("--raw")) {
            a->raw = true;
        } else if (IS("--timeout-ms")) {
            a->timeout_ms = s_int_arg(o, VALUE(), 1, MS_WIRE_MAX_MS);
        } else if (IS("--wait-ms")) {
            a->wait_ms = s_int_arg(o, VALUE(), 1, MS_WIRE_MAX_MS);
        } else if (IS("--broker")) {
            a->broker = VALUE();
        } else if (IS("--dir")) {
            a->dir = VALUE();
        } else if (IS("--ids")) {
            a->ids = true;
        } else if (IS("-q") || IS("--quiet")) {
            a->quiet = true;
        } else {
            s_usage_exit("submit: unknown option '%s'", o);
        }
#undef IS
#undef VALUE
    }
    if (!a->prompt) s_usage_exit("submit needs -p TEXT%s", "");
}

static int cmd_submit(int argc, char **argv) {
    submit_args a;
    s_parse_submit(argc, argv, &a);
    char err[MS_ERR_SIZE], ep[MS_CLUSTER_EP_MAX];
    if (s_broker_ep(a.broker, a.dir, ep, sizeof(ep), err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve submit: %s\n", err);
        return 1;
    }
    uint8_t *img[MS_WIRE_MAX_IMAGES] = {0};
    size_t img_len[MS_WIRE_MAX_IMAGES] = {0};
    int rc = 1;
    ms_client *c = NULL;
    int32_t *ids = NULL;
    int n_ids = 0, cap_ids = 0;
    for (int i = 0; i < a.n_images; i++) {
        img[i] = s_read_image(a.images[i], &img_len[i], err, sizeof(err));
        if (!img[i]) {
            fprintf(stderr, "modserve submit: image %d: %s\n", i, err);
            goto out;
        }
    }
    c = ms_client_new(ep, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "modserve submit: %s\n", err);
        goto out;
    }
    char id[64];
    snprintf(id, sizeof(id), "submit-%d-%lld", (int)getpid(), (long long)time(NULL));
    ms_msg req;
    ms_msg_init(&req, MS_MSG_SUBMIT);
    ms_msg_submit *s = &req.submit;
    s->id = id;
    s->prompt = (char *)a.prompt;
    s->has_prompt = true;
    if (a.has_max_tokens) s->max_tokens = (uint64_t)a.max_tokens, s->has_max_tokens = true;
    if (a.has_temp) s->temperature = a.temp, s->has_temperature = true;
    if (a.has_top_k) s->top_k = (uint64_t)a.top_k, s->has_top_k = true;
    if (a.has_top_p) s->top_p = a.top_p, s->has_top_p = true;
    if (a.has_min_p) s->min_p = a.min_p, s->has_min_p = true;
    if (a.has_seed) s->seed = a.seed, s->has_seed = true;
    if (a.n_stop) s->stop = a.stop, s->n_stop = (uint32_t)a.n_stop, s->has_stop = true;
    if (a.timeout_ms) s->timeout_ms = (uint64_t)a.timeout_ms, s->has_timeout_ms = true;
    if (a.raw) s->raw = true, s->has_raw = true;
    int64_t t0 = ms_now_ns();
    if (ms_client_submit(c, s, (const void *const *)img, img_len, (size_t)a.n_images, err,
                         sizeof(err)) != 0) {
        fprintf(stderr, "modserve submit: %s\n", err);
        goto out;
    }
    s_catch_signals();
    bool cancelled = false, any_text = false;
    double ttft_ms = -1.0;
    int64_t idle_since = ms_now_ns();
    for (;;) {
        if (s_interrupted && !cancelled) {
            ms_client_cancel(c, id, NULL, 0);
            cancelled = true;
        }
        ms_msg ev;
        memset(&ev, 0, sizeof(ev));
        ms_wire_status st = ms_client_next(c, 200, &ev, err, sizeof(err));
        if (st == MS_WIRE_TIMEOUT) {
            if ((ms_now_ns() - idle_since) / 1000000 > a.wait_ms) {
                fprintf(stderr,
                        "\nmodserve submit: no answer from %s for %lld ms (is the cluster up?)\n",
                        ep, a.wait_ms);
                break;
            }
            continue;
        }
        if (st == MS_WIRE_TRANSPORT && s_interrupted) continue;
        if (st != MS_WIRE_OK) {
            fprintf(stderr, "\nmodserve submit: %s: %s\n", ms_wire_status_name(st), err);
            break;
        }
        idle_since = ms_now_ns();
        if (ev.type == MS_MSG_TOKEN) {
            if (ttft_ms < 0) ttft_ms = (double)(ms_now_ns() - t0) / 1e6;
            fwrite(ev.token.text, 1, strlen(ev.token.text), stdout);
            fflush(stdout);
            any_text |= ev.token.text[0] != '\0';
            for (uint32_t k = 0; k < ev.token.n_ids; k++) {
                if (n_ids == cap_ids) {
                    cap_ids = cap_ids ? 2 * cap_ids : 64;
                    ids = ms_xrealloc(ids, (size_t)cap_ids * sizeof(*ids));
                }
                ids[n_ids++] = ev.token.ids[k];
            }
        } else if (ev.type == MS_MSG_DONE) {
            const ms_msg_done *d = &ev.done;
            double e2e = (double)(ms_now_ns() - t0) / 1e6;
            fputc('\n', stdout);
            fflush(stdout);
            if (a.ids) {
                fprintf(stderr, "ids:");
                for (int k = 0; k < n_ids; k++)
                    fprintf(stderr, " %" PRId32, ids[k]);
                fprintf(stderr, "\n");
            }
            if (!a.quiet) {
                fprintf(stderr,
                        "\nmodserve submit: finish %s, %" PRIu64 " prompt tokens (%" PRIu64
                        " image), %" PRIu64 " generated\n",
                        d->finish, d->prompt_tokens, d->image_tokens, d->completion_tokens);
                fprintf(stderr, "  client   TTFT %.2f ms, E2E %.2f ms\n", ttft_ms, e2e);
                fprintf(stderr,
                        "  broker   queue %.2f, preprocess %.2f, encode %.2f, transfer %.2f, "
                        "prefill %.2f, decode %.2f, TTFT %.2f, E2E %.2f ms\n",
                        d->queue_ms, d->preprocess_ms, d->encode_ms, d->transfer_ms, d->prefill_ms,
                        d->decode_ms, d->ttft_ms, d->e2e_ms);
            }
            rc = 0;
            ms_msg_fini(&ev);
            break;
        } else if (ev.type == MS_MSG_ERROR) {
            if (any_text) fputc('\n', stdout);
            fprintf(stderr, "modserve submit: error %s: %s\n", ev.error.code, ev.error.message);
            ms_msg_fini(&ev);
            break;
        }
        ms_msg_fini(&ev);
    }
out:
    free(ids);
    ms_client_destroy(&c);
    for (int i = 0; i < a.n_images; i++)
        free(img[i]);
    return rc;
}

/* ---- modserve play ------------------------------------------------------------------------ */

/* Fixture images the workload draws from by default (tests/data/images). */
static const char *const s_default_images[] = {
    "sample.jpg",      "j_333x517.jpg",      "j_517x333.jpg",   "p_333x517.png",
    "p_40x30_rgb.png", "w_40x30_lossy.webp", "j_64x48_420.jpg", "p_50x170_tall.png",
};

typedef struct play_args {
    ms_workload_params wp;
    int concurrency;
    const char *images[MAX_IMAGE_FILES];
    int n_images;
    const char *broker, *dir, *out, *model, *mmproj;
    long long wait_ms;
    bool verify, quiet;
} play_args;

static void s_parse_play(int argc, char **argv, play_args *a) {
    memset(a, 0, sizeof(*a));
    a->wp.n_requests = 24;
    a->wp.image_ratio = 0.5;
    a->wp.max_images = 2;
    a->wp.max_tokens = 24;
    a->wp.temperature = -1.0;
    a->wp.seed = 1;
    a->concurrency = 4;
    a->wait_ms = WAIT_DEFAULT_MS;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
#define IS(s)   (strcmp(o, (s)) == 0)
#define VALUE() (i + 1 < argc ? argv[++i] : (s_usage_exit("%s needs a value", o), (char *)NULL))
        if (IS("-h") || IS("--help")) {
            fputs(s_usage, stdout);
            exit(0);
        } else if (IS("--requests")) {
            a->wp.n_requests = (int)s_int_arg(o, VALUE(), 1, MS_WORKLOAD_MAX_REQUESTS);
        } else if (IS("--image-ratio")) {
            a->wp.image_ratio = s_num_arg(o, VALUE());
            if (a->wp.image_ratio < 0 || a->wp.image_ratio > 1)
                s_usage_exit("--image-ratio must be in [0, 1]%s", "");
        } else if (IS("--max-images")) {
            a->wp.max_images = (int)s_int_arg(o, VALUE(), 1, MS_WORKLOAD_MAX_IMAGES);
        } else if (IS("--max-tokens") || IS("-n")) {
            a->wp.max_tokens = (int)s_int_arg(o, VALUE(), 1, MS_WORKLOAD_MAX_TOKENS);
        } else if (IS("--temp")) {
            a->wp.temperature = s_num_arg(o, VALUE());
        } else if (IS("--seed")) {
            a->wp.seed = (uint64_t)s_int_arg(o, VALUE(), 0, LLONG_MAX);
        } else if (IS("--concurrency")) {
            a->concurrency = (int)s_int_arg(o, VALUE(), 1, MS_CLIENT_MAX_INFLIGHT);
        } else if (IS("--image")) {
            const char *f = VALUE();
            if (a->n_images >= MAX_IMAGE_FILES) s_usage_exit("too many --image (at '%s')", f);
            a->images[a->n_images++] = f;
        } else if (IS("--broker")) {
            a->broker = VALUE();
        } else if (IS("--dir")) {
            a->dir = VALUE();
        } else if (IS("--wait-ms")) {
            a->wait_ms = s_int_arg(o, VALUE(), 1, MS_WIRE_MAX_MS);
        } else if (IS("--out")) {
            a->out = VALUE();
        } else if (IS("--verify")) {
            a->verify = true;
        } else if (IS("--model")) {
            a->model = VALUE();
        } else if (IS("--mmproj")) {
            a->mmproj = VALUE();
        } else if (IS("-q") || IS("--quiet")) {
            a->quiet = true;
        } else {
            s_usage_exit("play: unknown option '%s'", o);
        }
#undef IS
#undef VALUE
    }
}

/* --verify: every completed request against the in-process engine. Returns
 * the number of requests that differ or could not be checked. */
static int s_play_verify(const play_args *a, const ms_play_req *reqs, int n,
                         const uint8_t *const *img, const size_t *img_len) {
    char err[MS_ERR_SIZE], lm[MS_CLUSTER_PATH_MAX] = "", mm[MS_CLUSTER_PATH_MAX] = "";
    if (a->model) {
        snprintf(lm, sizeof(lm), "%s", a->model);
        snprintf(mm, sizeof(mm), "%s", a->mmproj ? a->mmproj : "");
    } else {
        ms_cluster_run *r = ms_xcalloc(1, sizeof(*r));
        int lrc = ms_cluster_run_load(r, a->dir ? a->dir : "run", err, sizeof(err));
        snprintf(lm, sizeof(lm), "%s", r->conf.lm);
        snprintf(mm, sizeof(mm), "%s", r->conf.mmproj);
        free(r);
        if (lrc != 0) {
            fprintf(stderr, "modserve play --verify: %s (or give --model/--mmproj)\n", err);
            return n;
        }
    }
    ms_cluster_ref *ref = ms_cluster_ref_new(lm, mm, 0, err, sizeof(err));
    if (!ref) {
        fprintf(stderr, "modserve play --verify: %s\n", err);
        return n;
    }
    int bad = 0, checked = 0;
    for (int i = 0; i < n; i++) {
        const ms_play_req *r = &reqs[i];
        if (!r->ok) continue;
        const uint8_t *ib[MS_WORKLOAD_MAX_IMAGES];
        size_t il[MS_WORKLOAD_MAX_IMAGES];
        for (int k = 0; k < r->w.n_images; k++) {
            ib[k] = img[r->w.image[k]];
            il[k] = img_len[r->w.image[k]];
        }
        int32_t *want = NULL;
        int n_want = 0;
        checked++;
        if (ms_cluster_ref_generate(ref, r->w.prompt, r->raw, ib, il, r->w.n_images,
                                    r->w.max_tokens, r->w.temperature, r->w.seed, &want, &n_want,
                                    NULL, err, sizeof(err)) != 0) {
            fprintf(stderr, "modserve play --verify: %s: %s\n", r->id, err);
            bad++;
            continue;
        }
        int k = 0;
        while (k < n_want && k < r->n_ids && want[k] == r->ids[k])
            k++;
        if (k != n_want || k != r->n_ids) {
            fprintf(stderr,
                    "modserve play --verify: %s differs from the engine at token %d "
                    "(%d tokens received, %d expected)\n",
                    r->id, k, r->n_ids, n_want);
            bad++;
        }
        free(want);
    }
    ms_cluster_ref_destroy(&ref);
    printf("verify: %d of %d completed requests equal the in-process engine, token for token\n",
           checked - bad, checked);
    return bad;
}

static int cmd_play(int argc, char **argv) {
    play_args a;
    s_parse_play(argc, argv, &a);
    char err[MS_ERR_SIZE], ep[MS_CLUSTER_EP_MAX];
    if (s_broker_ep(a.broker, a.dir, ep, sizeof(ep), err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve play: %s\n", err);
        return 1;
    }
    char paths[MAX_IMAGE_FILES][MS_CLUSTER_PATH_MAX];
    const char *path_ptrs[MAX_IMAGE_FILES];
    int n_files = 0;
    if (a.n_images > 0) {
        for (int i = 0; i < a.n_images; i++)
            snprintf(paths[n_files++], MS_CLUSTER_PATH_MAX, "%s", a.images[i]);
    } else {
        char d1[MS_CLUSTER_PATH_MAX];
        snprintf(d1, sizeof(d1), "%s/../../tests/data/images", s_exe_dir());
        const char *dirs[] = {"tests/data/images", d1};
        for (size_t i = 0; i < MS_ARRAY_LEN(s_default_images); i++)
            if (s_find(paths[n_files], MS_CLUSTER_PATH_MAX, s_default_images[i], dirs, 2))
                n_files++;
    }
    a.wp.n_image_files = n_files;
    uint8_t *img[MAX_IMAGE_FILES] = {0};
    size_t img_len[MAX_IMAGE_FILES] = {0};
    int rc = 1, n = a.wp.n_requests;
    ms_play_req *reqs = NULL;
    ms_workload_request *w = NULL;
    for (int i = 0; i < n_files; i++) {
        path_ptrs[i] = paths[i];
        img[i] = s_read_image(paths[i], &img_len[i], err, sizeof(err));
        if (!img[i]) {
            fprintf(stderr, "modserve play: %s\n", err);
            goto out;
        }
    }
    w = ms_xcalloc((size_t)n, sizeof(*w));
    if (ms_workload_make(&a.wp, w, err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve play: %s%s\n", err,
                n_files == 0 ? " (no fixture images found: give --image F)" : "");
        goto out;
    }
    reqs = ms_xcalloc((size_t)n, sizeof(*reqs));
    ms_play_reqs_init(reqs, w, n);
    s_catch_signals();
    int n_img_req = 0;
    for (int i = 0; i < n; i++)
        n_img_req += w[i].n_images > 0;
    if (!a.quiet)
        printf("modserve play: %d requests (%d with images, %d text only), concurrency %d, "
               "seed %" PRIu64 ", broker %s\n",
               n, n_img_req, n - n_img_req, a.concurrency, a.wp.seed, ep);
    fflush(stdout);
    ms_play_opts po = {.endpoint = ep,
                       .concurrency = a.concurrency,
                       .wait_ms = (int)a.wait_ms,
                       .images = (const uint8_t *const *)img,
                       .image_len = img_len,
                       .n_images = n_files,
                       .stop = &s_interrupted,
                       .quiet = a.quiet};
    ms_play_summary sum;
    if (ms_play_run(&po, reqs, n, &sum, err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve play: %s\n", err);
        goto out;
    }
    ms_play_report(stdout, reqs, n, sum.wall_s);
    if (sum.protocol_errors) printf("protocol errors: %d\n", sum.protocol_errors);
    rc = (sum.errors == 0 && sum.protocol_errors == 0 && !sum.gave_up) ? 0 : 1;
    if (a.out && ms_play_write_jsonl(a.out, reqs, n, path_ptrs, err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve play: %s\n", err);
        rc = 1;
    }
    if (a.verify && s_play_verify(&a, reqs, n, (const uint8_t *const *)img, img_len) != 0) rc = 1;
out:
    if (reqs) ms_play_reqs_fini(reqs, n);
    free(reqs);
    free(w);
    for (int i = 0; i < n_files; i++)
        free(img[i]);
    return rc;
}

/* ---- modserve bench ------------------------------------------------------------------ */

/* `modserve bench ARGS` is BIN/modserve-bench ARGS (docs/bench.md, docs/comparison.md). */
static int cmd_bench(int argc, char **argv) {
    char bin[MS_CLUSTER_PATH_MAX + 32];
    snprintf(bin, sizeof(bin), "%s/modserve-bench", s_exe_dir());
    char **args = ms_xcalloc((size_t)argc + 2, sizeof(*args));
    args[0] = bin;
    for (int i = 0; i < argc; i++)
        args[i + 1] = argv[i];
    execv(bin, args);
    fprintf(stderr, "modserve bench: cannot run %s: %s\n", bin, strerror(errno));
    free(args);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        fputs(s_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    int sub_argc = argc - 2;
    char **sub_argv = argv + 2;
    if (strcmp(cmd, "up") == 0) return cmd_up(sub_argc, sub_argv);
    if (strcmp(cmd, "down") == 0) return cmd_down(sub_argc, sub_argv);
    if (strcmp(cmd, "status") == 0) return cmd_status(sub_argc, sub_argv);
    if (strcmp(cmd, "scale") == 0) return cmd_scale(sub_argc, sub_argv);
    if (strcmp(cmd, "submit") == 0) return cmd_submit(sub_argc, sub_argv);
    if (strcmp(cmd, "play") == 0) return cmd_play(sub_argc, sub_argv);
    if (strcmp(cmd, "bench") == 0) return cmd_bench(sub_argc, sub_argv);
    fprintf(stderr, "modserve: unknown command '%s'\n%s", cmd, s_usage);
    return 2;
}
