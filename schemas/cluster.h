/* cluster.h — the local cluster: cluster files, the run directory, process
 * management, and the workload player's requests and latency statistics.
 * Used by `modserve up|down|status|scale|play` (tools/modserve.c) and by the
 * integration tests (tests/itest_cluster.c). docs/cluster.md is the guide.
 *
 * Cluster file (tools/clusters/NAME.conf; the format is described in full in
 * docs/cluster.md): INI-style, '#' comments, `key = value` lines under
 * sections. One [cluster] section (layout, port_base, data transport, Redis
 * key prefix), an optional [broker] section (profile file, extra args), an
 * optional [models] section (lm, mmproj; the command line overrides them), an
 * optional [gateway] section (its presence starts modserve-gateway: listen
 * address, model name, extra args), and
 * one [group NAME] section per set of identical actors (stages, count,
 * threads, kv_tokens, vit_batch, extra args). Actors of group NAME are called
 * NAME-1, NAME-2, ... (their registry ids).
 *
 * Ports, from port_base B: redis B, broker front B+1, broker back B+2; the
 * gateway listens where [gateway] says (127.0.0.1:8000 by default), or on
 * B+MS_CLUSTER_GATEWAY_PORT_OFFSET when `modserve up` is told to pick ports.
 * Actor data endpoints: tcp://127.0.0.1:0 (the actor binds a free port and
 * publishes it in the registry) or ipc://RUNDIR/sock/ID.data.
 *
 * Run directory (default ./run): cluster.conf (the resolved cluster file the
 * cluster was started with, plus a [run] section of bookkeeping: next_seq,
 * bin_dir, and `started` per group), pids/NAME.pid (one per
 * process: redis, broker, each actor), logs/NAME.log, redis/ (Redis data dir),
 * sock/ (ipc endpoints).
 */
#ifndef MS_CLUSTER_H
#define MS_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <sys/types.h>

/* ---- limits and defaults --------------------------------------------------- */
#define MS_CLUSTER_MAX_GROUPS           16         /* [group] sections per file */
#define MS_CLUSTER_MAX_GROUP_ACTORS     64         /* count (and scale target) per group */
#define MS_CLUSTER_MAX_THREADS          256        /* threads per actor */
#define MS_CLUSTER_NAME_MAX             32         /* group/layout/stage names, with the NUL */
#define MS_CLUSTER_ARGS_MAX             256        /* bytes of an `args` value, with the NUL */
#define MS_CLUSTER_PATH_MAX             1024       /* bytes of a path, with the NUL */
#define MS_CLUSTER_FILE_MAX             (64 << 10) /* bytes of a cluster file */
#define MS_CLUSTER_PORT_BASE_DEFAULT    7400       /* redis port of a default cluster */
#define MS_CLUSTER_PORT_SPAN            10         /* ports reserved from port_base (4 in use) */
#define MS_CLUSTER_MAX_SEQ              100000     /* actor starts per run directory */
#define MS_CLUSTER_EP_MAX               256        /* bytes of an endpoint string, with the NUL */
#define MS_CLUSTER_ID_MAX               64  /* bytes of an actor id / process name, with the NUL */
#define MS_CLUSTER_HOST_MAX             64  /* bytes of the gateway's listen host, with the NUL */
#define MS_CLUSTER_MODEL_NAME_MAX       128 /* bytes of the gateway's model name, with the NUL */
#define MS_CLUSTER_GATEWAY_HOST_DEFAULT "127.0.0.1" /* [gateway] listen default: loopback ... */
#define MS_CLUSTER_GATEWAY_PORT_DEFAULT 8000        /* ... port 8000 (as vLLM / the gateway) */
#define MS_CLUSTER_GATEWAY_PORT_OFFSET  3           /* picked ports: the gateway on port_base + 3 */

/* One [group NAME] section: `count` identical actor processes. */
typedef struct ms_cluster_group {
    char name[MS_CLUSTER_NAME_MAX];   /* [a-z0-9_]+, the actor id prefix ("enc" → enc-1) */
    char stages[MS_CLUSTER_NAME_MAX]; /* encode | prefill | decode | prefill+decode |
                                         encode+prefill+decode */
    int count;                        /* actors started by `modserve up`, 0..MAX_GROUP_ACTORS */
    int threads;                      /* compute threads per actor (>= 1) */
    int kv_tokens;                    /* KV capacity per actor, tokens; 0: engine default */
    int vit_batch;                    /* images per ViT pass; 0: engine default */
    char args[MS_CLUSTER_ARGS_MAX];   /* extra actor arguments, split at spaces */
    int started;                      /* run directory bookkeeping: actors of this group ever
                                         started (the next is NAME-(started+1)); 0 in files */
} ms_cluster_group;

typedef struct ms_cluster_conf {
    char layout[MS_CLUSTER_NAME_MAX];      /* modserve | monolith | disagg (passed to the broker) */
    int port_base;                         /* see the file comment; 1024..65535-PORT_SPAN */
    char data[8];                          /* actors' data plane: "tcp" or "ipc" */
    char prefix[MS_CLUSTER_NAME_MAX];      /* Redis key prefix ("ms") */
    char profile[MS_CLUSTER_PATH_MAX];     /* broker stage profile/config file, "" for none */
    char broker_args[MS_CLUSTER_ARGS_MAX]; /* extra broker arguments */
    char lm[MS_CLUSTER_PATH_MAX];          /* text model GGUF ("" until given) */
    char mmproj[MS_CLUSTER_PATH_MAX];      /* vision GGUF, "" for a text-only cluster */
    int next_seq;                          /* [run] next actor start sequence number (0 in files) */
    char bin_dir[MS_CLUSTER_PATH_MAX]; /* [run] folder of modserve-broker / -actor ("" in files) */
    bool gateway;                      /* a [gateway] section: `up` starts modserve-gateway */
    char gateway_host[MS_CLUSTER_HOST_MAX];        /* [gateway] listen host ("127.0.0.1", "0.0.0.0",
                                                      "[::1]") */
    int gateway_port;                              /* [gateway] listen port, 1..65535 (8000) */
    char gateway_model[MS_CLUSTER_MODEL_NAME_MAX]; /* [gateway] model_name clients ask for;
                                                      "" = chosen by `up` (preset / LM name) */
    char gateway_args[MS_CLUSTER_ARGS_MAX];        /* [gateway] extra gateway arguments */
    int n_groups;                                  /* groups in use */
    ms_cluster_group groups[MS_CLUSTER_MAX_GROUPS];
} ms_cluster_conf;

/* Defaults: layout "modserve", port_base MS_CLUSTER_PORT_BASE_DEFAULT, data
 * "tcp", prefix "ms", no groups, no models, no gateway (listen address
 * MS_CLUSTER_GATEWAY_HOST_DEFAULT:MS_CLUSTER_GATEWAY_PORT_DEFAULT once enabled). */
void ms_cluster_conf_default(ms_cluster_conf *c);

/* Parses a cluster file's text (len bytes; `name` is used in messages, e.g.
 * the path) on top of what c holds (call ms_cluster_conf_default first).
 * Strict: unknown sections or keys, duplicate groups or keys, values out of
 * range and malformed lines are errors naming the file and line. Checks the
 * result with ms_cluster_conf_validate. 0, or -1 + err. */
int ms_cluster_conf_parse(ms_cluster_conf *c, const char *text, size_t len, const char *name,
                          char *err, size_t err_size);
/* Reads and parses a file (at most MS_CLUSTER_FILE_MAX bytes). 0, or -1 + err. */
int ms_cluster_conf_load(ms_cluster_conf *c, const char *path, char *err, size_t err_size);
/* Whole-configuration checks: at least one group; the groups' stages cover
 * prefill and decode; encode is covered when mmproj is set; once lm is set, a
 * group with actors (count > 0) whose stages include encode needs mmproj.
 * 0, or -1 + err. */
int ms_cluster_conf_validate(const ms_cluster_conf *c, char *err, size_t err_size);
/* Writes c in the cluster file format, with a [run] section (next_seq) and
 * [models]; what it writes parses back to the same conf. 0, or -1 on an I/O error. */
int ms_cluster_conf_write(const ms_cluster_conf *c, FILE *f);
/* Atomically replaces path (a temp file + rename). 0, or -1 + err. */
int ms_cluster_conf_save(const ms_cluster_conf *c, const char *path, char *err, size_t err_size);

/* True if s is one of the five stage sets. */
bool ms_cluster_stages_valid(const char *s);
/* True if stage set `stages` includes `stage` ("encode", "prefill", "decode"). */
bool ms_cluster_stages_has(const char *stages, const char *stage);
/* The group called `name`, or else the only group whose stage set is `name`
 * (e.g. "encode"); NULL if none or ambiguous. */
ms_cluster_group *ms_cluster_group_find(ms_cluster_conf *c, const char *name);

/* ---- endpoints ------------------------------------------------------------- */
int ms_cluster_redis_port(const ms_cluster_conf *c);
/* "tcp://127.0.0.1:PORT" of the broker's front (producers) / back (actors) socket. */
void ms_cluster_front_ep(const ms_cluster_conf *c, char *buf, size_t size);
void ms_cluster_back_ep(const ms_cluster_conf *c, char *buf, size_t size);
/* The data endpoint an actor binds: tcp://127.0.0.1:0 or
 * ipc://RUNDIR/sock/ID.data. -1 if it does not fit in size (or, for ipc, in
 * a Unix socket path). */
int ms_cluster_data_ep(const ms_cluster_conf *c, const char *rundir, const char *id, int seq,
                       char *buf, size_t size);
/* "HOST:PORT" the gateway listens on (the [gateway] listen value). */
void ms_cluster_gateway_listen(const ms_cluster_conf *c, char *buf, size_t size);
/* "http://HOST:PORT" clients use: a wildcard host (0.0.0.0, [::]) becomes
 * the loopback address of its family. */
void ms_cluster_gateway_url(const ms_cluster_conf *c, char *buf, size_t size);
/* Splits a listen value "HOST:PORT" ("[v6]:PORT") into host (brackets kept)
 * and a port in 1..65535. 0, or -1 + err. */
int ms_cluster_split_listen(const char *v, char *host, size_t host_size, int *port, char *err,
                            size_t err_size);
/* True if something already accepts TCP connections where the gateway of c
 * would listen (a wildcard host is tried on loopback). */
bool ms_cluster_gateway_port_busy(const ms_cluster_conf *c);
/* True if s is a usable gateway model name: 1..MS_CLUSTER_MODEL_NAME_MAX-1
 * characters of [A-Za-z0-9._:/-]. */
bool ms_cluster_model_name_ok(const char *s);

/* Finds a port base at or above `start` (stepping by MS_CLUSTER_PORT_SPAN)
 * whose MS_CLUSTER_PORT_SPAN ports are all free on 127.0.0.1 (tries bind()).
 * The base, or -1 + err. */
int ms_cluster_find_port_base(int start, char *err, size_t err_size);

/* True if something accepts TCP connections on 127.0.0.1:port (a connect()
 * that is closed at once). */
bool ms_cluster_port_listening(int port);

/* One HTTP/1.0 GET of http://HOST:PORT/path (host as in [gateway] listen; a
 * wildcard host is reached on loopback), at most timeout_ms in all. On 0,
 * *status is the HTTP status and body holds the start of the response body
 * (NUL-terminated, cut to body_size - 1 bytes; body may be NULL). -1 + err
 * when no HTTP answer came (refused, timeout, not HTTP). */
int ms_cluster_http_get(const char *host, int port, const char *path, int timeout_ms, int *status,
                        char *body, size_t body_size, char *err, size_t err_size);

/* ---- processes and pid files ---------------------------------------------- */

/* What a pid file records about a process `modserve up` started. */
typedef struct ms_proc {
    char name[MS_CLUSTER_ID_MAX];    /* "redis", "broker" or the actor id */
    char role[16];                   /* "redis" | "broker" | "gateway" | "actor" */
    char group[MS_CLUSTER_NAME_MAX]; /* actor's group, "" otherwise */
    int seq;                         /* actor's start sequence number, -1 otherwise */
    pid_t pid;                       /* process id = process group id (setsid) */
    long long start;                 /* start time, clock ticks since boot (/proc/PID/stat #22) */
} ms_proc;

/* fork + setsid (a new process group, detached from the terminal) + exec of
 * argv[0] (a path) with stdin from /dev/null and stdout/stderr appended to
 * log_path. On success fills p->pid and p->start. Fails (-1 + err, nothing
 * left running) if the fork or the exec fails. */
int ms_proc_spawn(ms_proc *p, char *const argv[], const char *log_path, char *err, size_t err_size);
/* Start time of pid from /proc, or -1 if there is no such process (zombies
 * count as gone). */
long long ms_proc_start_time(pid_t pid);
/* True if the recorded process is still running (same pid and start time). */
bool ms_proc_alive(const ms_proc *p);
/* Sends sig to the process group of p if p is still the recorded process.
 * 0, or -1 if it is gone. */
int ms_proc_signal(const ms_proc *p, int sig);
/* Waits up to timeout_ms for p to exit (reaping it if it is our child).
 * 0 once gone, -1 on timeout. */
int ms_proc_wait_gone(const ms_proc *p, int timeout_ms);
/* SIGTERM, wait up to grace_ms, then SIGKILL (group) and wait. 0 once gone. */
int ms_proc_stop(const ms_proc *p, int grace_ms);

/* RUNDIR/pids/NAME.pid, written atomically. 0, or -1 + err. */
int ms_pidfile_write(const char *rundir, const ms_proc *p, char *err, size_t err_size);
/* Reads RUNDIR/pids/NAME.pid. 0, or -1 + err (missing or malformed). */
int ms_pidfile_read(const char *rundir, const char *name, ms_proc *p, char *err, size_t err_size);
int ms_pidfile_remove(const char *rundir, const char *name);
/* Every pid file of rundir, actors sorted by seq after redis and broker.
 * Returns the count (at most max) or -1 + err. Malformed files are skipped. */
int ms_pidfile_list(const char *rundir, ms_proc *out, int max, char *err, size_t err_size);

/* mkdir -p (mode 0755). 0, or -1 + err. */
int ms_mkdirs(const char *path, char *err, size_t err_size);
/* Splits s at runs of spaces into at most max pointers into buf (a copy of
 * s, size bytes). Returns the count, or -1 if it does not fit. */
int ms_split_args(const char *s, char *buf, size_t size, char **argv, int max);

/* ---- run directory and lifecycle ------------------------------------------------ */
#define MS_CLUSTER_MAX_PROCS          (MS_CLUSTER_MAX_GROUPS * MS_CLUSTER_MAX_GROUP_ACTORS + 3)
#define MS_CLUSTER_REDIS_TIMEOUT_MS   10000 /* redis-server must answer PING within this */
#define MS_CLUSTER_BROKER_TIMEOUT_MS  30000 /* the broker must listen within this */
#define MS_CLUSTER_GATEWAY_TIMEOUT_MS 30000 /* the gateway must listen within this */
#define MS_CLUSTER_HEALTH_TIMEOUT_MS  15000 /* `up` waits this long for the gateway's /health 200  \
                                             */
#define MS_CLUSTER_HTTP_TIMEOUT_MS 2000  /* one /health request (the gateway answers in <= 1 s) */
#define MS_CLUSTER_DRAIN_MS        30000 /* actors drain this long before SIGKILL (down, scale) */
#define MS_CLUSTER_STOP_MS         10000 /* broker / redis stop this long before SIGKILL */
#define MS_CLUSTER_POLL_MS         100   /* readiness polling interval */
#define MS_CLUSTER_LOG_TAIL_LINES  20    /* log lines shown when a process dies */

/* A cluster's run directory: where its pid files, logs and resolved cluster
 * file are. Caller-owned storage. */
typedef struct ms_cluster_run {
    char dir[MS_CLUSTER_PATH_MAX];       /* absolute run directory */
    char conf_path[MS_CLUSTER_PATH_MAX]; /* dir/cluster.conf */
    ms_cluster_conf conf;                /* the cluster (conf.bin_dir: where the binaries are) */
    volatile sig_atomic_t *stop;         /* may be NULL; non-zero (^C) aborts the waits */
    FILE *log;                           /* messages and log tails of dead processes; NULL: none */
    bool progress;                       /* redraw a waiting line on log (a terminal) */
} ms_cluster_run;

/* Creates dir (and pids/, logs/, redis/, sock/ in it), makes it absolute,
 * and resets r (default conf, stop/log NULL). 0, or -1 + err. */
int ms_cluster_run_create(ms_cluster_run *r, const char *dir, char *err, size_t err_size);
/* Loads dir/cluster.conf (written by `modserve up`) into r (reset first).
 * 0, or -1 + err ("no cluster in DIR ..." when it is missing). */
int ms_cluster_run_load(ms_cluster_run *r, const char *dir, char *err, size_t err_size);
/* Writes r->conf to r->conf_path. 0, or -1 + err. */
int ms_cluster_run_save(const ms_cluster_run *r, char *err, size_t err_size);
/* RUNDIR/logs/NAME.log into buf. */
void ms_cluster_log_path(const char *rundir, const char *name, char *buf, size_t size);
/* Prints the last max_lines lines of a log file to out (nothing if out is NULL
 * or the file is unreadable). */
void ms_cluster_log_tail(const char *path, int max_lines, FILE *out);

/* Starts redis-server on 127.0.0.1:port_base (data dir RUNDIR/redis, nothing
 * persisted) and waits for PING (MS_CLUSTER_REDIS_TIMEOUT_MS). Fills p (pid
 * file written). 0, or -1 + err (the log tail goes to r->log); a process
 * that was started is left for the caller to stop (ms_cluster_down). */
int ms_cluster_start_redis(ms_cluster_run *r, ms_proc *p, char *err, size_t err_size);
/* Starts modserve-broker from conf.bin_dir and waits until its front port
 * accepts connections (MS_CLUSTER_BROKER_TIMEOUT_MS). As above. */
int ms_cluster_start_broker(ms_cluster_run *r, ms_proc *p, char *err, size_t err_size);
/* Starts modserve-gateway from conf.bin_dir (docs/cluster.md has its command
 * line: the broker's front endpoint, the registry, --require-stages
 * prefill,decode for a cluster without mmproj) and waits until it accepts
 * connections (MS_CLUSTER_GATEWAY_TIMEOUT_MS). As above. */
int ms_cluster_start_gateway(ms_cluster_run *r, ms_proc *p, char *err, size_t err_size);
/* Polls the gateway's /health until it answers 200, for at most timeout_ms.
 * 0 when healthy; -1 + err holding the last answer (status and body, e.g.
 * the 503 reason) or why none came. Fails at once if gw (may be NULL) exits. */
int ms_cluster_wait_gateway_health(const ms_cluster_run *r, const ms_proc *gw, int timeout_ms,
                                   char *err, size_t err_size);
/* Starts the next actor of group g (id NAME-(started+1), see docs/cluster.md
 * for its command line), records it (g->started, conf.next_seq, saved to
 * conf_path) and returns without waiting. 0, or -1 + err. */
int ms_cluster_start_actor(ms_cluster_run *r, ms_cluster_group *g, ms_proc *p, char *err,
                           size_t err_size);
/* Waits until each of the n actors in procs is registered with its pid and
 * state up. Fails at once (with its log tail) when one of them, or one of the
 * n_watch `watch` processes (redis, broker), exits; after timeout_ms; or when
 * *r->stop is set. 0, or -1 + err. */
int ms_cluster_wait_actors(const ms_cluster_run *r, const ms_proc *procs, int n,
                           const ms_proc *watch, int n_watch, int timeout_ms, char *err,
                           size_t err_size);
/* Stops n processes: SIGTERM to all (grace_ms <= 0: SIGKILL), one shared
 * grace period, then SIGKILL for the rest; removes their pid files. Returns how
 * many had to be killed. */
int ms_cluster_stop(const ms_cluster_run *r, ms_proc *p, int n, int grace_ms);
/* Stops everything recorded in the run directory: the actors (drain_ms to
 * drain; <= 0: SIGKILL everything), then the broker (its producers, the
 * gateway included, get an error for what is still in flight), then the
 * gateway, then redis. Returns the
 * number of pid files found (0: nothing to stop), or -1 + err. */
int ms_cluster_down(const ms_cluster_run *r, int drain_ms, char *err, size_t err_size);

/* ---- reference answers (modserve play --verify, tests) ---------------------------- */

/* An in-process engine that answers a request as modserve-run does (one user
 * message, the model's chat template or raw, images at "<image>" markers or
 * before the text), for comparing a cluster's answers token for token. */
typedef struct ms_cluster_ref ms_cluster_ref;

/* Loads lm (+ mmproj, may be NULL or "") with n_threads (<= 0: default).
 * NULL + err on failure. */
ms_cluster_ref *ms_cluster_ref_new(const char *lm, const char *mmproj, int n_threads, char *err,
                                   size_t err_size);
void ms_cluster_ref_destroy(ms_cluster_ref **self_p);
/* Generates the answer to prompt with n_images encoded images (images[i] of
 * image_len[i] bytes), greedy when temperature <= 0, top_k/top_p/min_p off.
 * On success *tokens is a malloc'd array of *n_tokens ids (free() it) and, if
 * text is not NULL, *text a malloc'd NUL-terminated string. 0, or -1 + err. */
int ms_cluster_ref_generate(ms_cluster_ref *self, const char *prompt, bool raw,
                            const uint8_t *const *images, const size_t *image_len, int n_images,
                            int max_tokens, float temperature, uint64_t seed, int32_t **tokens,
                            int *n_tokens, char **text, char *err, size_t err_size);

#endif
