/* modserve-bench-broker — broker overhead per request and the requests/s a
 * cluster sustains with the tiny model, against the in-process engine
 * measured in the same run.
 *
 * Usage:
 *   modserve-bench-broker [--dir RUNDIR | --broker EP] [--model LM --mmproj MM]
 *       [--layout modserve|monolith|disagg] [--data tcp|ipc] [--threads 1]
 *       [--requests 200] [--kinds text-1,text-8,image-1,image-1-cached]
 *       [--sweep text-1,text-8,image-1] [--concurrency 1,2,4,8,16,32,64,128]
 *       [--level-s 3] [--open 0.25,0.5,0.8] [--image FILE] [--json OUT|-]
 *
 * Cluster: without --broker, one is started in RUNDIR (default a fresh
 * /tmp/msbench-XXXXXX) with the cluster library (schemas/cluster.h, what
 * `modserve up` uses): redis-server, modserve-broker and one actor per stage
 * group of the layout (modserve: 1 encoder + 1 text instance; monolith: 1;
 * disagg: encoder + prefill + decode), --threads compute threads each, on
 * free loopback ports; it is stopped at the end, on an error and on
 * SIGINT/SIGTERM (`modserve down --force --dir RUNDIR` cleans up after a
 * crash: the pid files are there). Models: --model/--mmproj, else the tiny
 * preset generated into RUNDIR/models with modserve-mkmodel.
 *
 * Request kinds: text-N (a short chat prompt, max_tokens N, greedy),
 * image-N (one JPEG, default tests/data/images/sample.jpg, with a
 * per-request suffix after its end so every request misses the encoder's
 * feature cache and runs preprocess + ViT + the feature pull), image-N-cached
 * (identical bytes: features served from the encoder's store).
 *
 * Measurements, in this order, one client (schemas/client.h) on one thread:
 *  1. in-process baseline per kind: chat template + tokenize + ms_engine_generate
 *     in this process (--threads threads), --requests runs after a warm-up;
 *  2. sequential per kind: --requests requests one after the other (after 5
 *     warm-up requests). Per request: E2E at the producer (submit → Done),
 *     compute = preprocess_ms + encode_ms + prefill_ms + decode_ms from Done
 *     (actor-side), overhead = E2E − compute: everything the pipeline adds
 *     (tokenizing in the broker, queues, the hops producer → broker → actors →
 *     broker → producer, the feature pull, the actor loops). Also split as
 *     producer↔broker = E2E − Done.e2e_ms (broker-measured) and in-cluster =
 *     Done.e2e_ms − compute;
 *  3. closed-loop sweep per --sweep kind: --concurrency C requests kept in
 *     flight for --level-s seconds per level; requests/s = requests ending in
 *     the last 3/4 of the level / that time. The sweep stops once two levels
 *     in a row gain less than PLATEAU_GAIN over the best before them;
 *  4. open loop per --sweep kind: Poisson arrivals at --open fractions of
 *     the best closed-loop rate, --level-s seconds each; latency from the
 *     actual send time, requests/s as above.
 * Percentiles interpolate linearly (ms_latency_summarize).
 */
#include <cjson/cJSON.h>
#include <czmq.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <dirent.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chat.h"
#include "client.h"
#include "cluster.h"
#include "engine.h"
#include "ms_common.h"
#include "wire.h"
#include "workload.h"

#define MAX_KINDS        8
#define MAX_LEVELS       32
#define MAX_TOKENS_KEPT  16     /* generated ids kept per request (equality check) */
#define MAX_RUN_REQUESTS 200000 /* records of one run */
#define WARMUP_REQUESTS  5      /* per kind before the sequential run */
#define WAIT_MS          60000  /* a run gives up after this long without any event */
#define REQUEST_TIMEOUT  120000 /* Submit.timeout_ms */
#define UP_TIMEOUT_MS    120000 /* actors must register within this */
#define DRAIN_MS         5000   /* actors drain this long at the end */
#define PLATEAU_GAIN     0.05   /* a level must beat the best so far by this to count */
#define PLATEAU_LEVELS   2      /* levels in a row without that gain end the sweep */
#define WINDOW_SKIP      0.25   /* fraction of a level not counted (ramp-up) */
#define SUFFIX_BYTES     16     /* per-request bytes appended after the image's end */
#define TEXT_PROMPT      "Write one short sentence about the sea."
#define IMAGE_PROMPT     "What is in this image?"

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

typedef struct kind {
    char name[32];
    bool image;     /* one image */
    bool cached;    /* identical image bytes every time */
    int max_tokens; /* Submit.max_tokens */
} kind;

typedef struct opts {
    const char *dir, *broker, *model, *mmproj, *layout, *data, *image, *json, *bin_dir;
    int threads, requests;
    double level_s;
    kind kinds[MAX_KINDS];
    int n_kinds;
    kind sweep[MAX_KINDS];
    int n_sweep;
    int conc[MAX_LEVELS];
    int n_conc;
    double open[MAX_LEVELS];
    int n_open;
} opts;

/* One request as measured. Times in ns (ms_now_ns), Done fields in ms. */
typedef struct rec {
    int64_t t_submit, t_first, t_end;
    bool ended, ok;
    int n_ids;
    int32_t ids[MAX_TOKENS_KEPT];
    double compute_ms, broker_e2e_ms, queue_ms, transfer_ms, encode_ms, prefill_ms, decode_ms;
    int completion_tokens;
    char finish[16];
} rec;

typedef struct run_spec {
    const kind *k;
    int max_requests;  /* submitted at most */
    int concurrency;   /* closed loop: in flight at most */
    double rate;       /* > 0: open loop, Poisson arrivals per second */
    double duration_s; /* > 0: stop submitting after this */
} run_spec;

/* CPU time consumed (ns, all threads) by the processes of each role. */
typedef enum { CPU_BROKER = 0, CPU_ACTORS, CPU_REDIS, CPU_CLIENT, N_CPU } cpu_role;
static const char *const s_cpu_name[N_CPU] = {"broker", "actors", "redis", "client"};
typedef struct cpu_snap {
    int64_t ns[N_CPU];
} cpu_snap;

typedef struct run_out {
    rec *recs; /* max_requests (owned) */
    int n;     /* submitted */
    int ok, errors;
    int64_t t0, t_stop; /* first submit; end of submitting */
    bool gave_up;
    char first_error[MS_ERR_SIZE];
    cpu_snap cpu; /* CPU ns each role used during the run (-1: unknown) */
} run_out;

/* Latency summary of one set of requests (ms). */
typedef struct lat {
    int n;
    ms_latency_stats e2e, overhead, compute, ttft, to_broker, in_cluster, queue, transfer;
} lat;

typedef struct level {
    int concurrency;
    double offered; /* open loop: arrivals/s asked for */
    double sent;    /* open loop: arrivals/s achieved */
    double rps;     /* completions/s in the window */
    int errors;
    lat l;
    cpu_snap cpu;  /* CPU ns used over the whole level */
    int n_ok;      /* requests completed over the whole level */
    double wall_s; /* the whole level */
} level;

typedef struct base_res {
    ms_latency_stats wall, compute; /* ms */
    int32_t ids[MAX_TOKENS_KEPT];   /* the first generated tokens */
    int n_ids;
    int n_generated;
} base_res;

typedef struct bench {
    opts o;
    ms_cluster_run *run;                 /* NULL when attached (--broker) */
    bool started;                        /* processes were started: stop them */
    bool temp_dir;                       /* the run directory is ours (mkdtemp): removed
                                            after a successful run */
    ms_proc procs[MS_CLUSTER_MAX_PROCS]; /* what was started: redis, broker, actors */
    int n_procs;
    char front[MS_CLUSTER_EP_MAX];
    char lm[MS_CLUSTER_PATH_MAX], mm[MS_CLUSTER_PATH_MAX];
    ms_client *client;
    ms_engine *engine;
    uint8_t *img, *img_buf; /* the image, and a copy with room for the suffix */
    size_t img_len;
    uint64_t next_id; /* request ids "r<N>" never repeat in one run */
    cJSON *json;
    char base_name[MAX_KINDS * 2][32]; /* baselines measured so far, by kind name */
    base_res base[MAX_KINDS * 2];
    int n_base;
} bench;

/* ---- arguments ------------------------------------------------------------------------ */

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: modserve-bench-broker [--dir RUNDIR | --broker EP] [--model LM --mmproj MM]\n"
            "    [--layout modserve|monolith|disagg] [--data tcp|ipc] [--threads 1]\n"
            "    [--requests 200] [--kinds text-1,text-8,image-1,image-1-cached]\n"
            "    [--sweep text-1,text-8,image-1] [--concurrency 1,2,4,8,16,32,64,128]\n"
            "    [--level-s 3] [--open 0.25,0.5,0.8|none] [--image FILE] [--json OUT|-]\n"
            "    [--bin-dir DIR]\n"
            "Broker overhead per request (producer E2E minus the actor compute in Done),\n"
            "requests/s at increasing concurrency, against ms_engine_generate in process.\n");
}

static const char *s_exe_dir(void) {
    static char dir[MS_CLUSTER_PATH_MAX];
    if (dir[0]) return dir;
    ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
    if (n <= 0) return strcpy(dir, ".");
    dir[n] = 0;
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    return dir;
}

static int s_parse_kind(const char *s, kind *k) {
    memset(k, 0, sizeof *k);
    char rest[32] = "";
    int n = 0;
    if (strlen(s) >= sizeof k->name) return -1;
    snprintf(k->name, sizeof k->name, "%s", s);
    if (sscanf(s, "text-%d%31s", &n, rest) == 1) {
        k->image = false;
    } else if (sscanf(s, "image-%d%31s", &n, rest) >= 1) {
        k->image = true;
        if (rest[0] && strcmp(rest, "-cached") != 0) return -1;
        k->cached = rest[0] != 0;
    } else {
        return -1;
    }
    k->max_tokens = n;
    return n >= 1 && n <= MS_MAX_GEN_TOKENS ? 0 : -1;
}

static int s_parse_kinds(const char *s, kind *out, int *n) {
    char *copy = ms_xstrdup(s), *save = NULL;
    int rc = 0;
    *n = 0;
    for (char *t = strtok_r(copy, ",", &save); t && rc == 0; t = strtok_r(NULL, ",", &save))
        rc = *n < MAX_KINDS && s_parse_kind(t, &out[(*n)++]) == 0 ? 0 : -1;
    free(copy);
    return rc;
}

static int s_parse_doubles(const char *s, double *out, int *n, double lo, double hi) {
    *n = 0;
    if (strcmp(s, "none") == 0) return 0;
    char *copy = ms_xstrdup(s), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(copy, ",", &save); t && rc == 0; t = strtok_r(NULL, ",", &save)) {
        char *end;
        double v = strtod(t, &end);
        if (*end || !(v >= lo && v <= hi) || *n == MAX_LEVELS)
            rc = -1;
        else
            out[(*n)++] = v;
    }
    free(copy);
    return rc;
}

static int s_parse_args(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->layout = "modserve";
    o->data = "tcp";
    o->threads = 1;
    o->requests = 200;
    o->level_s = 3;
    const char *kinds = "text-1,text-8,image-1,image-1-cached", *sweep = "text-1,text-8,image-1";
    const char *conc = "1,2,4,8,16,32,64,128", *open = "0.25,0.5,0.8";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            s_usage(stdout);
            exit(0);
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) {
            fprintf(stderr, "modserve-bench-broker: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        char *end = NULL;
        bool ok = true;
#define IS(x) (strcmp(a, (x)) == 0)
        if (IS("--dir"))
            o->dir = v;
        else if (IS("--broker"))
            o->broker = v;
        else if (IS("--model") || IS("-m"))
            o->model = v;
        else if (IS("--mmproj"))
            o->mmproj = v;
        else if (IS("--layout"))
            o->layout = v;
        else if (IS("--data"))
            o->data = v;
        else if (IS("--image"))
            o->image = v;
        else if (IS("--json"))
            o->json = v;
        else if (IS("--bin-dir"))
            o->bin_dir = v;
        else if (IS("--kinds"))
            kinds = v;
        else if (IS("--sweep"))
            sweep = v;
        else if (IS("--concurrency"))
            conc = v;
        else if (IS("--open"))
            open = v;
        else if (IS("--threads"))
            ok = (o->threads = (int)strtol(v, &end, 10)) >= 1 && !*end;
        else if (IS("--requests"))
            ok = (o->requests = (int)strtol(v, &end, 10)) >= 1 && !*end;
        else if (IS("--level-s"))
            ok = (o->level_s = strtod(v, &end)) >= 0.5 && !*end;
        else {
            fprintf(stderr, "modserve-bench-broker: unknown option %s\n", a);
            return -1;
        }
#undef IS
        if (!ok) {
            fprintf(stderr, "modserve-bench-broker: bad value '%s' for %s\n", v, a);
            return -1;
        }
    }
    double c[MAX_LEVELS];
    if (s_parse_kinds(kinds, o->kinds, &o->n_kinds) != 0 ||
        (strcmp(sweep, "none") != 0 && s_parse_kinds(sweep, o->sweep, &o->n_sweep) != 0) ||
        s_parse_doubles(conc, c, &o->n_conc, 1, MS_CLIENT_MAX_INFLIGHT) != 0 ||
        s_parse_doubles(open, o->open, &o->n_open, 0.01, 10) != 0) {
        fprintf(stderr, "modserve-bench-broker: bad --kinds / --sweep (text-N, image-N, "
                        "image-N-cached), --concurrency or --open\n");
        return -1;
    }
    for (int i = 0; i < o->n_conc; i++)
        o->conc[i] = (int)c[i];
    if (o->requests > MAX_RUN_REQUESTS || o->threads > MS_CLUSTER_MAX_THREADS ||
        (strcmp(o->data, "tcp") != 0 && strcmp(o->data, "ipc") != 0) || (o->dir && o->broker) ||
        (o->mmproj && !o->model) || (o->broker && !o->model)) {
        fprintf(stderr, "modserve-bench-broker: bad arguments (--broker needs --model; --dir "
                        "and --broker exclude each other; --data tcp|ipc)\n");
        return -1;
    }
    return 0;
}

/* ---- the cluster ------------------------------------------------------------------------ */

static void s_add_group(ms_cluster_conf *c, const char *name, const char *stages, int threads) {
    ms_cluster_group *g = &c->groups[c->n_groups++];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "%s", name);
    snprintf(g->stages, sizeof g->stages, "%s", stages);
    g->count = 1;
    g->threads = threads;
}

/* Generates the tiny models into RUNDIR/models. 0 or -1 + err. */
static int s_make_models(bench *b, char *err, size_t err_size) {
    char dir[MS_CLUSTER_PATH_MAX + 16], mk[MS_CLUSTER_PATH_MAX + 32], log[MS_CLUSTER_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/models", b->run->dir);
    snprintf(mk, sizeof mk, "%s/modserve-mkmodel", b->run->conf.bin_dir);
    char *argv[] = {mk, "--preset", "tiny", "--out", dir, NULL};
    ms_proc p = {.name = "mkmodel"};
    ms_cluster_log_path(b->run->dir, "mkmodel", log, sizeof log);
    if (ms_proc_spawn(&p, argv, log, err, err_size) != 0) return -1;
    int status = 0;
    if (waitpid(p.pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return ms_errf(err, err_size, "modserve-mkmodel --preset tiny failed (see %s)", log);
    if ((size_t)snprintf(b->lm, sizeof b->lm, "%s/tiny-lm.gguf", dir) >= sizeof b->lm ||
        (size_t)snprintf(b->mm, sizeof b->mm, "%s/tiny-mmproj.gguf", dir) >= sizeof b->mm)
        return ms_errf(err, err_size, "run directory path too long");
    return 0;
}

/* Starts redis, the broker and the layout's actors in RUNDIR. 0 or -1 + err. */
static int s_cluster_up(bench *b, char *err, size_t err_size) {
    b->run = ms_xcalloc(1, sizeof *b->run);
    ms_cluster_run *r = b->run;
    char tmpl[] = "/tmp/msbench-XXXXXX";
    const char *dir = b->o.dir;
    if (!dir && !(dir = mkdtemp(tmpl)))
        return ms_errf(err, err_size, "mkdtemp: %s", strerror(errno));
    b->temp_dir = !b->o.dir;
    if (ms_cluster_run_create(r, dir, err, err_size) != 0) return -1;
    r->stop = &s_stop;
    r->log = stderr;
    ms_cluster_conf *c = &r->conf;
    ms_proc old[MS_CLUSTER_MAX_PROCS];
    int n_old = ms_pidfile_list(r->dir, old, MS_CLUSTER_MAX_PROCS, err, err_size);
    for (int i = 0; i < n_old; i++)
        if (ms_proc_alive(&old[i]))
            return ms_errf(err, err_size, "a cluster is running in %s: modserve down --dir %s",
                           r->dir, r->dir);
    snprintf(c->bin_dir, sizeof c->bin_dir, "%s", b->o.bin_dir ? b->o.bin_dir : s_exe_dir());
    snprintf(c->layout, sizeof c->layout, "%s", b->o.layout);
    snprintf(c->data, sizeof c->data, "%s", b->o.data);
    if (b->o.model) {
        if (!realpath(b->o.model, b->lm) || (b->o.mmproj && !realpath(b->o.mmproj, b->mm)))
            return ms_errf(err, err_size, "model file: %s", strerror(errno));
    } else if (s_make_models(b, err, err_size) != 0) {
        return -1;
    }
    snprintf(c->lm, sizeof c->lm, "%s", b->lm);
    snprintf(c->mmproj, sizeof c->mmproj, "%s", b->mm);
    const int t = b->o.threads;
    const bool vision = b->mm[0] != 0;
    if (strcmp(c->layout, "modserve") == 0) {
        if (vision) s_add_group(c, "enc", "encode", t);
        s_add_group(c, "text", "prefill+decode", t);
    } else if (strcmp(c->layout, "monolith") == 0) {
        s_add_group(c, "mono", "encode+prefill+decode", t);
    } else if (strcmp(c->layout, "disagg") == 0) {
        if (vision) s_add_group(c, "enc", "encode", t);
        s_add_group(c, "pre", "prefill", t);
        s_add_group(c, "dec", "decode", t);
    } else {
        return ms_errf(err, err_size, "unknown layout '%s'", c->layout);
    }
    int base = ms_cluster_find_port_base(20000 + (int)(getpid() % 900) * MS_CLUSTER_PORT_SPAN, err,
                                         err_size);
    if (base < 0) return -1;
    c->port_base = base;
    if (ms_cluster_conf_validate(c, err, err_size) != 0 ||
        ms_cluster_run_save(r, err, err_size) != 0)
        return -1;
    ms_proc *procs = b->procs;
    int n = 0;
    b->started = true;
    if (ms_cluster_start_redis(r, &procs[n++], err, err_size) != 0 ||
        ms_cluster_start_broker(r, &procs[n++], err, err_size) != 0)
        return -1;
    for (int gi = 0; gi < c->n_groups; gi++)
        if (ms_cluster_start_actor(r, &c->groups[gi], &procs[n++], err, err_size) != 0) return -1;
    b->n_procs = 0; /* counted once all are up (the CPU snapshots read them) */
    if (ms_cluster_wait_actors(r, procs + 2, n - 2, procs, 2, UP_TIMEOUT_MS, err, err_size) != 0)
        return -1;
    b->n_procs = n;
    ms_cluster_front_ep(c, b->front, sizeof b->front);
    printf("cluster: layout %s, data %s, run directory %s (logs in logs/), broker %s\n", c->layout,
           c->data, r->dir, b->front);
    for (int i = 0; i < n; i++)
        printf("  %-8s pid %-7d %s\n", procs[i].name, (int)procs[i].pid, procs[i].role);
    return 0;
}

/* rm -r path (no symlinks followed); depth bounds the recursion. 0 or -1. */
static int s_rmtree(const char *path, int depth) {
    struct stat st;
    if (lstat(path, &st) != 0) return -1;
    if (S_ISDIR(st.st_mode) && depth > 0) {
        DIR *d = opendir(path);
        if (!d) return -1;
        for (struct dirent *e; (e = readdir(d));) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char sub[MS_CLUSTER_PATH_MAX + sizeof e->d_name];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            s_rmtree(sub, depth - 1);
        }
        closedir(d);
    }
    return remove(path);
}

static void s_cluster_down(bench *b) {
    if (!b->run || !b->started) return;
    char err[MS_ERR_SIZE];
    b->run->log = NULL;
    if (ms_cluster_down(b->run, s_stop ? 0 : DRAIN_MS, err, sizeof err) < 0)
        fprintf(stderr, "modserve-bench-broker: stopping the cluster: %s\n", err);
    b->started = false;
}

/* ---- CPU accounting --------------------------------------------------------------------- */

/* On-CPU time of every thread of pid (sum of /proc/PID/task/TID/schedstat's
 * first field, ns), or 0 if it cannot be read. */
static int64_t s_proc_cpu_ns(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d) return 0;
    int64_t sum = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char f[64 + sizeof e->d_name];
        snprintf(f, sizeof f, "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
        FILE *fp = fopen(f, "r");
        long long ns = 0;
        if (fp && fscanf(fp, "%lld", &ns) == 1) sum += ns;
        if (fp) fclose(fp);
    }
    closedir(d);
    return sum;
}

static void s_cpu_snap(const bench *b, cpu_snap *s) {
    for (int r = 0; r < N_CPU; r++)
        s->ns[r] = b->n_procs > 0 || r == CPU_CLIENT ? 0 : -1;
    for (int i = 0; i < b->n_procs; i++) {
        const ms_proc *p = &b->procs[i];
        const cpu_role r = strcmp(p->role, "broker") == 0  ? CPU_BROKER
                           : strcmp(p->role, "redis") == 0 ? CPU_REDIS
                                                           : CPU_ACTORS;
        s->ns[r] += s_proc_cpu_ns(p->pid);
    }
    s->ns[CPU_CLIENT] = s_proc_cpu_ns(getpid());
}

static void s_cpu_diff(const cpu_snap *a, const cpu_snap *b, cpu_snap *out) {
    for (int r = 0; r < N_CPU; r++)
        out->ns[r] = a->ns[r] < 0 ? -1 : b->ns[r] - a->ns[r];
}

/* Microseconds of CPU per request, or -1 when unknown. */
static double s_cpu_us(const cpu_snap *c, cpu_role r, int n) {
    return c->ns[r] < 0 || n <= 0 ? -1 : (double)c->ns[r] * 1e-3 / n;
}

/* "%.*f" of v into buf, or "-" when v < 0 (unknown). */
static const char *s_fmt(double v, int prec, char *buf, size_t n) {
    if (v < 0)
        snprintf(buf, n, "-");
    else
        snprintf(buf, n, "%.*f", prec, v);
    return buf;
}

static cJSON *s_cpu_json(const cpu_snap *c, int n, double wall_s) {
    cJSON *j = cJSON_CreateObject();
    for (int r = 0; r < N_CPU; r++) {
        if (c->ns[r] < 0) continue;
        char k[48];
        snprintf(k, sizeof k, "%s_us_per_request", s_cpu_name[r]);
        cJSON_AddNumberToObject(j, k, s_cpu_us(c, r, n));
        snprintf(k, sizeof k, "%s_cpu_util", s_cpu_name[r]);
        cJSON_AddNumberToObject(j, k, wall_s > 0 ? (double)c->ns[r] * 1e-9 / wall_s : 0);
    }
    return j;
}

/* ---- requests ------------------------------------------------------------------------ */

static int s_submit(bench *b, const kind *k, uint64_t seq, char *err, size_t err_size) {
    char id[32];
    snprintf(id, sizeof id, "r%" PRIu64, seq);
    ms_msg m;
    ms_msg_init(&m, MS_MSG_SUBMIT);
    ms_msg_submit *s = &m.submit;
    s->id = id;
    s->has_prompt = true;
    s->prompt = k->image ? IMAGE_PROMPT : TEXT_PROMPT;
    s->has_max_tokens = true;
    s->max_tokens = (uint64_t)k->max_tokens;
    s->has_temperature = true;
    s->temperature = 0;
    s->has_timeout_ms = true;
    s->timeout_ms = REQUEST_TIMEOUT;
    const void *img = NULL;
    size_t len = 0;
    if (k->image) {
        img = b->img;
        len = b->img_len;
        if (!k->cached) { /* new bytes after the JPEG's end: a new content hash */
            memcpy(b->img_buf, b->img, b->img_len);
            snprintf((char *)b->img_buf + b->img_len, SUFFIX_BYTES, "msbench%08" PRIu64, seq);
            img = b->img_buf;
            len = b->img_len + SUFFIX_BYTES;
        }
    }
    return ms_client_submit(b->client, s, &img, &len, k->image ? 1 : 0, err, err_size);
}

/* The record an event's id names in this run, or NULL. */
static rec *s_rec_of(run_out *o, uint64_t base, const char *id) {
    if (!id || id[0] != 'r') return NULL;
    char *end;
    unsigned long long n = strtoull(id + 1, &end, 10);
    if (*end || n < base || n - base >= (unsigned long long)o->n) return NULL;
    return &o->recs[n - base];
}

static void s_on_event(run_out *o, uint64_t base, const ms_msg *ev) {
    const int64_t now = ms_now_ns();
    rec *r = NULL;
    switch (ev->type) {
    case MS_MSG_TOKEN:
        if (!(r = s_rec_of(o, base, ev->token.id))) return;
        if (!r->t_first) r->t_first = now;
        for (uint32_t i = 0; i < ev->token.n_ids; i++)
            if (ev->token.index + i < MAX_TOKENS_KEPT)
                r->ids[ev->token.index + i] = ev->token.ids[i];
        r->n_ids = (int)MS_MIN(ev->token.index + ev->token.n_ids, (uint64_t)MAX_TOKENS_KEPT);
        return;
    case MS_MSG_DONE: {
        const ms_msg_done *d = &ev->done;
        if (!(r = s_rec_of(o, base, d->id)) || r->ended) return;
        r->t_end = now;
        r->ended = r->ok = true;
        r->compute_ms = d->preprocess_ms + d->encode_ms + d->prefill_ms + d->decode_ms;
        r->broker_e2e_ms = d->e2e_ms;
        r->queue_ms = d->queue_ms;
        r->transfer_ms = d->transfer_ms;
        r->encode_ms = d->preprocess_ms + d->encode_ms;
        r->prefill_ms = d->prefill_ms;
        r->decode_ms = d->decode_ms;
        r->completion_tokens = (int)d->completion_tokens;
        snprintf(r->finish, sizeof r->finish, "%s", d->finish);
        o->ok++;
        return;
    }
    case MS_MSG_ERROR:
        if (!(r = s_rec_of(o, base, ev->error.id)) || r->ended) return;
        r->t_end = now;
        r->ended = true;
        o->errors++;
        if (!o->first_error[0])
            snprintf(o->first_error, sizeof o->first_error, "%s: %s", ev->error.code,
                     ev->error.message);
        return;
    default:
        return;
    }
}

/* Plays one run (closed or open loop) until every submitted request ended.
 * 0, or -1 + err (the client failed, or interrupted). */
static int s_run(bench *b, const run_spec *sp, run_out *o, char *err, size_t err_size) {
    memset(o, 0, sizeof *o);
    o->recs = ms_xcalloc((size_t)sp->max_requests, sizeof *o->recs);
    const uint64_t base = b->next_id;
    b->next_id += (uint64_t)sp->max_requests;
    int inflight = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ base;
    o->t0 = ms_now_ns();
    int64_t t_next = o->t0, last_event = o->t0;
    const int64_t t_end_submit = o->t0 + (int64_t)(sp->duration_s * 1e9);
    bool submitting = true;
    ms_msg ev;
    ms_msg_init(&ev, MS_MSG_NONE);
    int rc = 0;
    cpu_snap c0, c1;
    s_cpu_snap(b, &c0);
    while (!s_stop) {
        int64_t now = ms_now_ns();
        if (submitting &&
            (o->n == sp->max_requests || (sp->duration_s > 0 && now >= t_end_submit))) {
            submitting = false;
            o->t_stop = now;
        }
        /* submit what is due */
        while (submitting && o->n < sp->max_requests &&
               (sp->rate > 0 ? now >= t_next : inflight < sp->concurrency)) {
            rec *r = &o->recs[o->n];
            r->t_submit = ms_now_ns();
            if (s_submit(b, sp->k, base + (uint64_t)o->n, err, err_size) != 0) {
                rc = -1;
                goto out;
            }
            o->n++;
            inflight++;
            if (sp->rate > 0) { /* exponential gaps (xorshift64 uniform in (0, 1]) */
                rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                const double u = ((double)(rng >> 11) + 1.0) / 9007199254740992.0;
                t_next += (int64_t)(-log(u) / sp->rate * 1e9);
            }
        }
        if (!submitting && inflight == 0) break;
        int timeout = 50;
        if (submitting && sp->rate > 0)
            timeout = (int)MS_MAX(1, MS_MIN(50, (t_next - ms_now_ns() + 999999) / 1000000));
        if (submitting && sp->rate <= 0 && inflight < sp->concurrency) timeout = 0;
        const ms_wire_status st = ms_client_next(b->client, timeout, &ev, err, err_size);
        now = ms_now_ns();
        if (st == MS_WIRE_OK) {
            last_event = now;
            const int before = o->ok + o->errors;
            s_on_event(o, base, &ev);
            inflight -= o->ok + o->errors - before;
        } else if (st == MS_WIRE_TRANSPORT) {
            rc = -1;
            goto out;
        } else if (st == MS_WIRE_MALFORMED) {
            if (!o->first_error[0]) snprintf(o->first_error, sizeof o->first_error, "%s", err);
        } else if ((now - last_event) / 1000000 > WAIT_MS) {
            o->gave_up = true;
            rc = ms_errf(err, err_size, "no answer for %d ms (%d requests in flight)", WAIT_MS,
                         inflight);
            goto out;
        }
    }
    if (s_stop) rc = ms_errf(err, err_size, "interrupted");
out:
    if (!o->t_stop) o->t_stop = ms_now_ns();
    s_cpu_snap(b, &c1);
    s_cpu_diff(&c0, &c1, &o->cpu);
    ms_msg_fini(&ev);
    return rc;
}

/* Summary of the ok requests of o whose end lies in [from, to] (ns; 0 = open). */
static void s_summarize(const run_out *o, int64_t from, int64_t to, lat *l) {
    memset(l, 0, sizeof *l);
    const int n = o->n;
    double *v[8];
    for (int i = 0; i < 8; i++)
        v[i] = ms_xmalloc((size_t)(n + 1) * sizeof(double));
    int m = 0;
    for (int i = 0; i < n; i++) {
        const rec *r = &o->recs[i];
        if (!r->ok || (from && r->t_end < from) || (to && r->t_end > to)) continue;
        const double e2e = (double)(r->t_end - r->t_submit) * 1e-6;
        v[0][m] = e2e;
        v[1][m] = e2e - r->compute_ms;
        v[2][m] = r->compute_ms;
        v[3][m] = r->t_first ? (double)(r->t_first - r->t_submit) * 1e-6 : e2e;
        v[4][m] = e2e - r->broker_e2e_ms;
        v[5][m] = r->broker_e2e_ms - r->compute_ms;
        v[6][m] = r->queue_ms;
        v[7][m] = r->transfer_ms;
        m++;
    }
    l->n = m;
    ms_latency_stats *s[8] = {&l->e2e,       &l->overhead,   &l->compute, &l->ttft,
                              &l->to_broker, &l->in_cluster, &l->queue,   &l->transfer};
    for (int i = 0; i < 8; i++) {
        ms_latency_summarize(v[i], m, s[i]);
        free(v[i]);
    }
}

static void s_run_free(run_out *o) {
    free(o->recs);
    o->recs = NULL;
}

/* ---- the in-process baseline ------------------------------------------------------------- */

static int s_baseline_run(bench *b, const kind *k, int reps, base_res *out, char *err,
                          size_t err_size) {
    memset(out, 0, sizeof *out);
    ms_engine *e = b->engine;
    ms_sampling_params sp;
    ms_sampling_params_default(&sp);
    sp.max_tokens = k->max_tokens;
    sp.temperature = 0;
    const ms_chat_template t = ms_chat_detect(ms_engine_lm(e)->chat_template);
    const ms_chat_message msg = {MS_CHAT_USER, k->image ? IMAGE_PROMPT : TEXT_PROMPT,
                                 k->image ? 1 : 0};
    const ms_image_bytes ib = {b->img, b->img_len};
    double *wall = ms_xmalloc((size_t)reps * sizeof *wall);
    double *comp = ms_xmalloc((size_t)reps * sizeof *comp);
    int rc = 0;
    for (int rep = -1; rep < reps && rc == 0 && !s_stop; rep++) { /* rep -1: warm-up */
        const int64_t t0 = ms_now_ns();
        int32_t *ids = NULL;
        int n_ids = 0, n_img = 0;
        ms_generate_result res;
        memset(&res, 0, sizeof res);
        if (ms_chat_build_prompt(ms_engine_tokenizer(e), t, &msg, 1, true, &ids, &n_ids, &n_img,
                                 err, err_size) != 0 ||
            ms_engine_generate(e, ids, n_ids, k->image ? &ib : NULL, k->image ? 1 : 0, &sp, NULL,
                               NULL, &res, err, err_size) != 0) {
            rc = -1;
        } else if (rep >= 0) {
            wall[rep] = (double)(ms_now_ns() - t0) * 1e-6;
            comp[rep] = res.t_preprocess_ms + res.t_encode_ms + res.t_project_ms +
                        res.t_prefill_ms + res.t_decode_ms;
            out->n_generated = res.n_generated;
            out->n_ids = MS_MIN(res.n_generated, MAX_TOKENS_KEPT);
            memcpy(out->ids, res.tokens, (size_t)out->n_ids * sizeof *out->ids);
        }
        free(ids);
        ms_generate_result_fini(&res);
    }
    if (rc == 0 && s_stop) rc = ms_errf(err, err_size, "interrupted");
    if (rc == 0) {
        ms_latency_summarize(wall, reps, &out->wall);
        ms_latency_summarize(comp, reps, &out->compute);
    }
    free(wall);
    free(comp);
    return rc;
}

/* The baseline of kind k (measured once per run, --requests reps). */
static int s_baseline(bench *b, const kind *k, base_res *out, char *err, size_t err_size) {
    for (int i = 0; i < b->n_base; i++)
        if (strcmp(b->base_name[i], k->name) == 0) {
            *out = b->base[i];
            return 0;
        }
    if (s_baseline_run(b, k, b->o.requests, out, err, err_size) != 0) return -1;
    if (b->n_base < (int)MS_ARRAY_LEN(b->base)) {
        snprintf(b->base_name[b->n_base], sizeof b->base_name[0], "%s", k->name);
        b->base[b->n_base++] = *out;
    }
    return 0;
}

/* ---- JSON -------------------------------------------------------------------------------- */

static cJSON *s_stats_json(const ms_latency_stats *s) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "mean", s->mean);
    cJSON_AddNumberToObject(j, "p50", s->p50);
    cJSON_AddNumberToObject(j, "p90", s->p90);
    cJSON_AddNumberToObject(j, "p99", s->p99);
    cJSON_AddNumberToObject(j, "max", s->max);
    return j;
}

static cJSON *s_lat_json(const lat *l) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "n", l->n);
    cJSON_AddItemToObject(j, "e2e_ms", s_stats_json(&l->e2e));
    cJSON_AddItemToObject(j, "overhead_ms", s_stats_json(&l->overhead));
    cJSON_AddItemToObject(j, "compute_ms", s_stats_json(&l->compute));
    cJSON_AddItemToObject(j, "ttft_ms", s_stats_json(&l->ttft));
    cJSON_AddItemToObject(j, "producer_broker_ms", s_stats_json(&l->to_broker));
    cJSON_AddItemToObject(j, "in_cluster_ms", s_stats_json(&l->in_cluster));
    cJSON_AddItemToObject(j, "queue_ms", s_stats_json(&l->queue));
    cJSON_AddItemToObject(j, "transfer_ms", s_stats_json(&l->transfer));
    return j;
}

/* ---- the phases ---------------------------------------------------------------------------- */

static void s_loadavg(char *out, size_t n) {
    double l[3];
    if (getloadavg(l, 3) != 3)
        snprintf(out, n, "?");
    else
        snprintf(out, n, "%.2f %.2f %.2f", l[0], l[1], l[2]);
}

static int s_sequential(bench *b, char *err, size_t err_size) {
    const opts *o = &b->o;
    cJSON *arr = cJSON_AddArrayToObject(b->json, "sequential");
    printf("\nsequential: %d requests per kind, one at a time (ms; overhead = producer E2E - "
           "actor compute in Done)\n",
           o->requests);
    printf("%-15s %8s %8s | %8s %8s %8s | %8s %8s %8s | %7s %6s\n", "kind", "inproc50", "inproc99",
           "e2e50", "e2e99", "compute50", "ovh50", "ovh99", "ovhmean", "e2e/inp", "tokens");
    lat ls[MAX_KINDS];
    cpu_snap cs[MAX_KINDS];
    int n_ok[MAX_KINDS] = {0};
    for (int i = 0; i < o->n_kinds; i++) {
        const kind *k = &o->kinds[i];
        if (k->image && !b->mm[0]) continue;
        base_res br;
        if (s_baseline(b, k, &br, err, err_size) != 0) return -1;
        run_out w, r;
        run_spec ws = {.k = k, .max_requests = WARMUP_REQUESTS, .concurrency = 1};
        if (s_run(b, &ws, &w, err, err_size) != 0) return -1;
        s_run_free(&w);
        run_spec rs = {.k = k, .max_requests = o->requests, .concurrency = 1};
        if (s_run(b, &rs, &r, err, err_size) != 0) return -1;
        lat *l = &ls[i];
        s_summarize(&r, 0, 0, l);
        cs[i] = r.cpu;
        n_ok[i] = r.ok;
        /* greedy: every request must give the in-process tokens */
        int same = 0;
        for (int q = 0; q < r.n; q++)
            same += r.recs[q].ok && r.recs[q].n_ids == br.n_ids &&
                    memcmp(r.recs[q].ids, br.ids, (size_t)br.n_ids * sizeof(int32_t)) == 0;
        char tok[24];
        snprintf(tok, sizeof tok, "%d/%d", same, r.n);
        printf("%-15s %8.3f %8.3f | %8.3f %8.3f %8.3f | %8.3f %8.3f %8.3f | %6.1fx %6s\n", k->name,
               br.wall.p50, br.wall.p99, l->e2e.p50, l->e2e.p99, l->compute.p50, l->overhead.p50,
               l->overhead.p99, l->overhead.mean, l->e2e.p50 / br.wall.p50, tok);
        if (r.errors) printf("  %d errors, first: %s\n", r.errors, r.first_error);
        cJSON *j = s_lat_json(l);
        cJSON_AddStringToObject(j, "kind", k->name);
        cJSON_AddItemToObject(j, "inproc_ms", s_stats_json(&br.wall));
        cJSON_AddItemToObject(j, "inproc_compute_ms", s_stats_json(&br.compute));
        cJSON_AddNumberToObject(j, "e2e_over_inproc", l->e2e.p50 / br.wall.p50);
        cJSON_AddNumberToObject(j, "errors", r.errors);
        cJSON_AddNumberToObject(j, "same_tokens_as_inproc", same);
        cJSON_AddNumberToObject(j, "completion_tokens", r.n ? r.recs[0].completion_tokens : 0);
        cJSON_AddItemToObject(j, "cpu", s_cpu_json(&r.cpu, r.ok, (double)(r.t_stop - r.t0) * 1e-9));
        cJSON_AddItemToArray(arr, j);
        s_run_free(&r);
    }
    printf("\noverhead split (medians, ms): producer<->broker = E2E - Done.e2e_ms; in cluster = "
           "Done.e2e_ms - compute\n");
    printf("%-15s %10s %12s %10s %10s %10s %10s\n", "kind", "prod<->brk", "in-cluster", "queue",
           "transfer", "ttft", "compute");
    for (int i = 0; i < o->n_kinds; i++) {
        const kind *k = &o->kinds[i];
        if (k->image && !b->mm[0]) continue;
        const lat *l = &ls[i];
        printf("%-15s %10.3f %12.3f %10.3f %10.3f %10.3f %10.3f\n", k->name, l->to_broker.p50,
               l->in_cluster.p50, l->queue.p50, l->transfer.p50, l->ttft.p50, l->compute.p50);
    }
    printf("\nCPU per request (us, all threads, summed over the sequential run / requests)\n");
    printf("%-15s %10s %10s %10s %10s\n", "kind", s_cpu_name[0], s_cpu_name[1], s_cpu_name[2],
           s_cpu_name[3]);
    for (int i = 0; i < o->n_kinds; i++) {
        const kind *k = &o->kinds[i];
        if (k->image && !b->mm[0]) continue;
        printf("%-15s", k->name);
        char f[16];
        for (int r = 0; r < N_CPU; r++)
            printf(" %10s", s_fmt(s_cpu_us(&cs[i], (cpu_role)r, n_ok[i]), 1, f, sizeof f));
        printf("\n");
    }
    return 0;
}

/* Requests/s of a run: requests ending in the last (1 - WINDOW_SKIP) of its
 * submitting time, per second. */
static double s_rate(const run_out *r, int64_t *from, int64_t *to) {
    *from = r->t0 + (int64_t)((double)(r->t_stop - r->t0) * WINDOW_SKIP);
    *to = r->t_stop;
    int n = 0;
    for (int i = 0; i < r->n; i++)
        n += r->recs[i].ok && r->recs[i].t_end >= *from && r->recs[i].t_end <= *to;
    return *to > *from ? n / ((double)(*to - *from) * 1e-9) : 0;
}

static void s_print_level_head(bool open) {
    printf("%8s %9s %9s | %8s %8s %8s %8s %8s | %8s %5s %5s %5s | %6s\n", open ? "offered" : "conc",
           open ? "sent/s" : "", "req/s", "e2e50", "e2e99", "ovh50", "ovh99", "queue50", "brk_us/r",
           "brk%", "act%", "cli%", "errors");
}

static void s_print_level(const level *v, bool open) {
    char a[16], c[16];
    if (open)
        snprintf(a, sizeof a, "%.0f", v->offered), snprintf(c, sizeof c, "%.0f", v->sent);
    else
        snprintf(a, sizeof a, "%d", v->concurrency), c[0] = 0;
    double util[N_CPU]; /* % of one core */
    for (int r = 0; r < N_CPU; r++)
        util[r] = v->cpu.ns[r] < 0 || v->wall_s <= 0 ? -1 : (double)v->cpu.ns[r] * 1e-7 / v->wall_s;
    char f[4][16];
    printf("%8s %9s %9.1f | %8.3f %8.3f %8.3f %8.3f %8.3f | %8s %5s %5s %5s | %6d\n", a, c, v->rps,
           v->l.e2e.p50, v->l.e2e.p99, v->l.overhead.p50, v->l.overhead.p99, v->l.queue.p50,
           s_fmt(s_cpu_us(&v->cpu, CPU_BROKER, v->n_ok), 1, f[0], sizeof f[0]),
           s_fmt(util[CPU_BROKER], 0, f[1], sizeof f[1]),
           s_fmt(util[CPU_ACTORS], 0, f[2], sizeof f[2]),
           s_fmt(util[CPU_CLIENT], 0, f[3], sizeof f[3]), v->errors);
    fflush(stdout);
}

static cJSON *s_level_json(const level *v) {
    cJSON *j = s_lat_json(&v->l);
    cJSON_AddNumberToObject(j, "concurrency", v->concurrency);
    if (v->offered > 0) cJSON_AddNumberToObject(j, "offered_rps", v->offered);
    if (v->offered > 0) cJSON_AddNumberToObject(j, "sent_rps", v->sent);
    cJSON_AddNumberToObject(j, "rps", v->rps);
    cJSON_AddNumberToObject(j, "errors", v->errors);
    cJSON_AddItemToObject(j, "cpu", s_cpu_json(&v->cpu, v->n_ok, v->wall_s));
    return j;
}

static int s_level(bench *b, const run_spec *sp, level *v, char *err, size_t err_size) {
    memset(v, 0, sizeof *v);
    run_out r;
    int rc = s_run(b, sp, &r, err, err_size);
    if (rc == 0) {
        int64_t from, to;
        v->concurrency = sp->concurrency;
        v->offered = sp->rate;
        v->sent = r.t_stop > r.t0 ? r.n / ((double)(r.t_stop - r.t0) * 1e-9) : 0;
        v->rps = s_rate(&r, &from, &to);
        v->errors = r.errors;
        v->cpu = r.cpu;
        v->n_ok = r.ok;
        v->wall_s = (double)(ms_now_ns() - r.t0) * 1e-9;
        s_summarize(&r, from, to, &v->l);
        if (r.errors) printf("  %d errors, first: %s\n", r.errors, r.first_error);
    }
    s_run_free(&r);
    return rc;
}

static int s_sweeps(bench *b, char *err, size_t err_size) {
    const opts *o = &b->o;
    cJSON *arr = cJSON_AddArrayToObject(b->json, "sweeps");
    for (int i = 0; i < o->n_sweep; i++) {
        const kind *k = &o->sweep[i];
        if (k->image && !b->mm[0]) continue;
        cJSON *js = cJSON_CreateObject();
        cJSON_AddStringToObject(js, "kind", k->name);
        cJSON *jc = cJSON_AddArrayToObject(js, "closed"), *jo = cJSON_AddArrayToObject(js, "open");
        cJSON_AddItemToArray(arr, js);
        printf("\nclosed loop, %s: C requests in flight, %.1f s per level\n", k->name, o->level_s);
        s_print_level_head(false);
        double best = 0;
        int best_c = 0, flat = 0;
        for (int c = 0; c < o->n_conc && flat < PLATEAU_LEVELS; c++) {
            const int cap = (int)MS_MIN((double)MAX_RUN_REQUESTS, o->level_s * 20000.0);
            run_spec sp = {
                .k = k, .max_requests = cap, .concurrency = o->conc[c], .duration_s = o->level_s};
            level v;
            if (s_level(b, &sp, &v, err, err_size) != 0) return -1;
            s_print_level(&v, false);
            cJSON_AddItemToArray(jc, s_level_json(&v));
            flat = v.rps > best * (1 + PLATEAU_GAIN) ? 0 : flat + 1;
            if (v.rps > best) best = v.rps, best_c = o->conc[c];
        }
        base_res br;
        if (s_baseline(b, k, &br, err, err_size) != 0) return -1;
        const double inproc = br.wall.mean > 0 ? 1000.0 / br.wall.mean : 0;
        printf("  sustained: %.1f requests/s (best level: concurrency %d)%s; in-process engine "
               "back to back: %.1f requests/s (%d thread), cluster/in-process %.2f\n",
               best, best_c, flat >= PLATEAU_LEVELS ? ", plateau reached" : "", inproc, o->threads,
               inproc > 0 ? best / inproc : 0);
        cJSON_AddNumberToObject(js, "inproc_rps", inproc);
        cJSON_AddNumberToObject(js, "sustained_rps", best);
        cJSON_AddNumberToObject(js, "sustained_at_concurrency", best_c);
        if (o->n_open == 0 || best <= 0) continue;
        printf("open loop, %s: Poisson arrivals at fractions of %.1f req/s, %.1f s per level\n",
               k->name, best, o->level_s);
        s_print_level_head(true);
        for (int f = 0; f < o->n_open; f++) {
            const double rate = best * o->open[f];
            const int cap = (int)MS_MIN((double)MAX_RUN_REQUESTS, rate * o->level_s + 1000);
            run_spec sp = {.k = k, .max_requests = cap, .rate = rate, .duration_s = o->level_s};
            level v;
            if (s_level(b, &sp, &v, err, err_size) != 0) return -1;
            s_print_level(&v, true);
            cJSON_AddItemToArray(jo, s_level_json(&v));
        }
    }
    return 0;
}

/* ---- main ------------------------------------------------------------------------------------ */

static int s_load_image(bench *b, char *err, size_t err_size) {
    char def[MS_CLUSTER_PATH_MAX + 64];
    const char *path = b->o.image;
    if (!path) {
        const char *src = getenv("MS_SOURCE_DIR");
        if (src)
            snprintf(def, sizeof def, "%s/tests/data/images/sample.jpg", src);
        else
            snprintf(def, sizeof def, "%s/../../tests/data/images/sample.jpg", s_exe_dir());
        path = access(def, R_OK) == 0 ? def : "tests/data/images/sample.jpg";
    }
    b->img = ms_read_file(path, MS_WIRE_MAX_IMAGE_BYTES - SUFFIX_BYTES, &b->img_len, err, err_size);
    if (!b->img) return -1;
    b->img_buf = ms_xmalloc(b->img_len + SUFFIX_BYTES);
    printf("image: %s (%zu bytes)\n", path, b->img_len);
    return 0;
}

static int s_main(bench *b, char *err, size_t err_size) {
    const opts *o = &b->o;
    if (o->broker) {
        snprintf(b->front, sizeof b->front, "%s", o->broker);
        if (!realpath(o->model, b->lm) || (o->mmproj && !realpath(o->mmproj, b->mm)))
            return ms_errf(err, err_size, "model file: %s", strerror(errno));
        printf("attached to broker %s (its cluster is not managed here)\n", b->front);
    } else if (s_cluster_up(b, err, err_size) != 0) {
        return -1;
    }
    bool any_image = false;
    for (int i = 0; i < o->n_kinds; i++)
        any_image |= o->kinds[i].image;
    for (int i = 0; i < o->n_sweep; i++)
        any_image |= o->sweep[i].image;
    if (any_image && b->mm[0] && s_load_image(b, err, err_size) != 0) return -1;
    ms_engine_params ep;
    ms_engine_params_default(&ep);
    ep.lm_path = b->lm;
    ep.mmproj_path = b->mm[0] ? b->mm : NULL;
    ep.n_threads = o->threads;
    if (!(b->engine = ms_engine_new(&ep, err, err_size))) return -1;
    if (!(b->client = ms_client_new(b->front, err, err_size))) return -1;
    printf("model %s%s%s, %d thread(s) per actor and in process\n", b->lm, b->mm[0] ? " + " : "",
           b->mm, o->threads);
    cJSON_AddStringToObject(b->json, "model", b->lm);
    cJSON_AddStringToObject(b->json, "mmproj", b->mm);
    cJSON_AddStringToObject(b->json, "layout", o->broker ? "attached" : o->layout);
    cJSON_AddStringToObject(b->json, "data", o->data);
    cJSON_AddNumberToObject(b->json, "threads", o->threads);
    cJSON_AddNumberToObject(b->json, "requests", o->requests);
    cJSON_AddNumberToObject(b->json, "level_s", o->level_s);
    fflush(stdout);
    if (s_sequential(b, err, err_size) != 0) return -1;
    return s_sweeps(b, err, err_size);
}

int main(int argc, char **argv) {
    bench b;
    memset(&b, 0, sizeof b);
    if (s_parse_args(argc, argv, &b.o) != 0) {
        s_usage(stderr);
        return 2;
    }
    zsys_handler_set(NULL);                            /* ours: stop the run, then the cluster */
    struct sigaction sa = {.sa_handler = s_on_signal}; /* no SA_RESTART: waits end */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    b.json = cJSON_CreateObject();
    cJSON_AddStringToObject(b.json, "tool", "modserve-bench-broker");
    cJSON_AddNumberToObject(b.json, "cpus", (double)sysconf(_SC_NPROCESSORS_ONLN));
    char load0[64], load1[64], err[MS_ERR_SIZE] = "";
    s_loadavg(load0, sizeof load0);
    printf("modserve-bench-broker: %ld cpus, load average %s\n", sysconf(_SC_NPROCESSORS_ONLN),
           load0);
    const double t0 = ms_now_s();
    int rc = s_main(&b, err, sizeof err);
    s_loadavg(load1, sizeof load1);
    cJSON_AddStringToObject(b.json, "loadavg_before", load0);
    cJSON_AddStringToObject(b.json, "loadavg_after", load1);
    if (rc != 0)
        fprintf(stderr, "modserve-bench-broker: %s\n", err);
    else
        printf("\ndone in %.1f s; load average after: %s\n", ms_now_s() - t0, load1);
    ms_client_destroy(&b.client);
    s_cluster_down(&b);
    if (b.run && b.temp_dir) {
        if (rc == 0 && !s_stop)
            s_rmtree(b.run->dir, 4);
        else
            fprintf(stderr, "modserve-bench-broker: logs kept in %s/logs\n", b.run->dir);
    }
    ms_engine_destroy(&b.engine);
    if (rc == 0 && b.o.json) {
        char *s = cJSON_Print(b.json);
        FILE *f = strcmp(b.o.json, "-") == 0 ? stdout : fopen(b.o.json, "w");
        if (!f || fprintf(f, "%s\n", s) < 0) rc = -1;
        if (f && f != stdout && fclose(f) != 0) rc = -1;
        if (rc != 0) fprintf(stderr, "modserve-bench-broker: cannot write %s\n", b.o.json);
        free(s);
    }
    cJSON_Delete(b.json);
    free(b.img);
    free(b.img_buf);
    free(b.run);
    return s_stop ? 130 : rc == 0 ? 0 : 1;
}
