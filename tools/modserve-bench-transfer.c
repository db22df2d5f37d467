/* modserve-bench-transfer — feature / KV transfer bandwidth of the data plane
 * over tcp and ipc, as a ratio of memcpy bandwidth measured in the same run.
 *
 * Usage:
 *   modserve-bench-transfer [--sizes 64K,256K,1M,4M,16M,64M,256M] [--reps 7]
 *       [--send zc,copy] [--transports tcp,ipc] [--ipc-dir /tmp] [--json OUT|-]
 *
 * A pull is exactly what a prefill actor does to an encoder (FeatureGet →
 * FeatureData + f32 frame) or a decode actor to a prefill actor (KvGet →
 * KvData + blob frame), docs/actors.md "Data plane":
 *   - a server process (forked first, so it has its own ZeroMQ context and
 *     I/O thread, as a separate actor would) binds a ROUTER on
 *     tcp://127.0.0.1:0 and on ipc://DIR/msbench-PID.ipc and answers each
 *     KvGet{key "S:<bytes>"} with KvData{bytes} + one payload frame of that
 *     many bytes from a buffer it filled at start, and each FeatureGet{hash =
 *     n_tokens << 32 | dim} with FeatureData + n_tokens × dim f32;
 *   - the client (this process) sends the request from a DEALER with
 *     ms_frames_send and receives the reply with ms_frames_recv under the
 *     same receive limit ms_actor_pull uses (the type's largest frame + the
 *     largest header); the pull's time is send → whole reply received.
 * Two send paths on the server: "zc", ms_frames_send_zc (ZeroMQ reads the
 * stored buffer in place), and "copy", ms_frames_send_bytes (one memcpy into a
 * zframe first — what actors/actor.c serves pulls with today).
 *
 * memcpy: memcpy of the same size between two buffers touched beforehand,
 * each run at a new offset so that small sizes are not copied cache-hot (the
 * buffers are at least MIN_MEMCPY_SPAN bytes).
 * Every number is the median of max(--reps, min(MAX_AUTO_REPS, 64 MiB / size))
 * timed runs after one untimed warm-up; GB/s = 10^9 payload bytes per second
 * (bytes copied, not bytes read + written). The memcpy of a size is measured
 * right before that size's transfers, so both see the same machine load.
 *
 * Two derived rows time the payloads the pipeline moves, measured as such
 * (not extrapolated): the features of one image of the bench preset
 * (modserve-mkmodel --preset bench: 196 tokens × 768 f32) through
 * FeatureGet/FeatureData, and the KV blob of a 1,000-token sequence of the
 * bench text model (kvcache.h format) through KvGet/KvData.
 */
#include <cjson/cJSON.h>
#include <czmq.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frames.h"
#include "kvcache.h"
#include "modelgen.h"
#include "ms_common.h"
#include "wire.h"

#define MAX_SIZES       32
#define MAX_REPS        10000
#define MAX_AUTO_REPS   200          /* small sizes get more reps, up to this */
#define AUTO_REPS_BYTES (64u << 20)  /* ... so that each size moves about this much */
#define RECV_TIMEOUT_MS 30000        /* a pull that takes longer is a failure */
#define SERVER_START_MS 10000        /* the server must publish its endpoints within this */
#define MIN_MEMCPY_SPAN (256u << 20) /* memcpy runs walk through at least this much */
#define KV_TOKENS       1000         /* the KV row: a sequence of this many tokens */
#define FILL_BYTE(i)    ((uint8_t)((i)*131u + 7u)) /* server buffer pattern */
#define FEATURE_ZC_BIT  (1ull << 63) /* FeatureGet.hash bit: answer with the zc path */

typedef enum { SEND_ZC = 0, SEND_COPY = 1, N_SEND } send_mode;
typedef enum { TR_TCP = 0, TR_IPC = 1, N_TR } transport;
static const char *const s_send_name[N_SEND] = {"zc", "copy"};
static const char *const s_tr_name[N_TR] = {"tcp", "ipc"};

typedef struct opts {
    size_t sizes[MAX_SIZES]; /* payload bytes per pull */
    int n_sizes;
    int reps;            /* at least this many timed runs per measurement */
    bool send[N_SEND];   /* send paths to measure */
    bool tr[N_TR];       /* transports to measure */
    const char *ipc_dir; /* where the ipc socket file goes */
    const char *json;    /* --json path, "-" = stdout, NULL = none */
} opts;

/* One measurement: median seconds of one pull/copy, and reps. */
typedef struct meas {
    double median_s; /* < 0: not measured */
    double p90_s;
    int reps;
} meas;

typedef struct row {
    size_t bytes;
    meas memcpy_;
    meas pull[N_SEND][N_TR];
} row;

static volatile sig_atomic_t s_stop;
static pid_t s_server = -1;

static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: modserve-bench-transfer [--sizes 64K,256K,1M,4M,16M,64M,256M] [--reps 7]\n"
            "           [--send zc,copy] [--transports tcp,ipc] [--ipc-dir /tmp] [--json OUT|-]\n"
            "Times data-plane pulls (KvGet -> KvData + one frame, FeatureGet -> FeatureData)\n"
            "over tcp://127.0.0.1 and ipc:// against memcpy of the same sizes, in one run.\n");
}

static int s_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* "64K", "1M", "3G", "4096" → bytes. 0 or -1. */
static int s_parse_size(const char *s, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) return -1;
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k')
        shift = 10, end++;
    else if (*end == 'M' || *end == 'm')
        shift = 20, end++;
    else if (*end == 'G' || *end == 'g')
        shift = 30, end++;
    if (*end || v == 0 || v > (MS_WIRE_MAX_KV_BYTES >> shift)) return -1;
    *out = (size_t)(v << shift);
    return 0;
}

/* Parses a comma list of names into flags[]. 0 or -1. */
static int s_parse_names(const char *s, const char *const *names, int n, bool *flags) {
    memset(flags, 0, (size_t)n * sizeof *flags);
    char *copy = ms_xstrdup(s), *save = NULL;
    int rc = 0, any = 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int k = 0;
        while (k < n && strcmp(t, names[k]) != 0)
            k++;
        if (k == n) {
            rc = -1;
            break;
        }
        flags[k] = true;
        any = 1;
    }
    free(copy);
    return rc == 0 && any ? 0 : -1;
}

static int s_parse_args(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->reps = 7;
    o->ipc_dir = "/tmp";
    const char *sizes = "64K,256K,1M,4M,16M,64M,256M", *send = "zc,copy", *trs = "tcp,ipc";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            s_usage(stdout);
            exit(0);
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) {
            fprintf(stderr, "modserve-bench-transfer: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        bool ok = true;
        if (strcmp(a, "--sizes") == 0)
            sizes = v;
        else if (strcmp(a, "--send") == 0)
            send = v;
        else if (strcmp(a, "--transports") == 0)
            trs = v;
        else if (strcmp(a, "--ipc-dir") == 0)
            o->ipc_dir = v;
        else if (strcmp(a, "--json") == 0)
            o->json = v;
        else if (strcmp(a, "--reps") == 0) {
            char *end;
            long r = strtol(v, &end, 10);
            ok = *end == 0 && r >= 1 && r <= MAX_REPS;
            o->reps = (int)r;
        } else {
            fprintf(stderr, "modserve-bench-transfer: unknown option %s\n", a);
            return -1;
        }
        if (!ok) {
            fprintf(stderr, "modserve-bench-transfer: bad value '%s' for %s\n", v, a);
            return -1;
        }
    }
    char *copy = ms_xstrdup(sizes), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o->n_sizes == MAX_SIZES || s_parse_size(t, &o->sizes[o->n_sizes]) != 0) {
            fprintf(stderr, "modserve-bench-transfer: bad size '%s' (1 .. 2G, at most %d)\n", t,
                    MAX_SIZES);
            free(copy);
            return -1;
        }
        o->n_sizes++;
    }
    free(copy);
    if (o->n_sizes == 0 || s_parse_names(send, s_send_name, N_SEND, o->send) != 0 ||
        s_parse_names(trs, s_tr_name, N_TR, o->tr) != 0) {
        fprintf(stderr, "modserve-bench-transfer: bad --sizes, --send (zc,copy) or "
                        "--transports (tcp,ipc)\n");
        return -1;
    }
    return 0;
}

/* ---- the server (child process) ---------------------------------------------------------- */

/* Answers one request on sock from buf (cap bytes). Returns 1 on "quit", 0 otherwise. */
static int s_serve_one(zsock_t *sock, uint8_t *buf, size_t cap) {
    ms_frames_in in;
    ms_frames_in_init(&in);
    char err[MS_ERR_SIZE];
    int quit = 0;
    if (ms_frames_recv(sock, &in, 64u << 10, err, sizeof err) != MS_WIRE_OK) {
        fprintf(stderr, "bench server: bad request: %s\n", err);
        ms_frames_in_fini(&in);
        return 0;
    }
    ms_msg m;
    size_t len = 0;
    bool zc = false;
    if (in.msg.type == MS_MSG_KV_GET) {
        const char *k = in.msg.kv_get.key;
        char mode[8] = "";
        unsigned long long n = 0;
        if (strcmp(k, "quit") == 0) {
            quit = 1;
            goto out;
        }
        if (sscanf(k, "%7[a-z]:%llu", mode, &n) != 2 || n > cap) {
            fprintf(stderr, "bench server: bad key '%s'\n", k);
            goto out;
        }
        zc = strcmp(mode, "zc") == 0;
        len = (size_t)n;
        ms_msg_init(&m, MS_MSG_KV_DATA);
        m.kv_data.key = (char *)k;
        m.kv_data.n_tokens = 0;
        m.kv_data.bytes = len;
    } else if (in.msg.type == MS_MSG_FEATURE_GET) {
        const uint64_t h = in.msg.feature_get.hash;
        zc = (h & FEATURE_ZC_BIT) != 0;
        const uint64_t n_tok = (h & ~FEATURE_ZC_BIT) >> 32, dim = h & 0xffffffffu;
        len = (size_t)(n_tok * dim * sizeof(float));
        if (len > cap) goto out;
        ms_msg_init(&m, MS_MSG_FEATURE_DATA);
        m.feature_data.hash = h;
        m.feature_data.n_tokens = n_tok;
        m.feature_data.dim = dim;
    } else {
        goto out;
    }
    int rc;
    if (zc) {
        void *data = buf;
        rc =
            ms_frames_send_zc(sock, in.routing_id, &m, &data, &len, 1, NULL, NULL, err, sizeof err);
    } else {
        const void *data = buf;
        rc = ms_frames_send_bytes(sock, in.routing_id, &m, &data, &len, 1, err, sizeof err);
    }
    if (rc != 0) fprintf(stderr, "bench server: reply: %s\n", err);
out:
    ms_frames_in_fini(&in);
    return quit;
}

/* The server process: binds, reports its endpoints on fd, serves until "quit". */
static int s_server_main(int fd, size_t cap, const char *ipc_path) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) return 1;
    signal(SIGINT, SIG_IGN); /* the parent ends us ("quit", or SIGKILL) */
    zsys_handler_set(NULL);
    uint8_t *buf = ms_xmalloc(cap ? cap : 1);
    for (size_t i = 0; i < cap; i++)
        buf[i] = FILL_BYTE(i);
    zsock_t *tcp = zsock_new(ZMQ_ROUTER), *ipc = zsock_new(ZMQ_ROUTER);
    if (!tcp || !ipc) return 1;
    zsock_set_linger(tcp, 0);
    zsock_set_linger(ipc, 0);
    if (zsock_bind(tcp, "tcp://127.0.0.1:0") < 0 || zsock_bind(ipc, "ipc://%s", ipc_path) < 0) {
        fprintf(stderr, "bench server: bind: %s\n", zmq_strerror(errno));
        return 1;
    }
    char *tcp_ep = zsock_last_endpoint(tcp);
    char line[2 * MS_WIRE_MAX_ENDPOINT_BYTES + 16];
    int n = snprintf(line, sizeof line, "%s\nipc://%s\n", tcp_ep, ipc_path);
    zstr_free(&tcp_ep);
    if (write(fd, line, (size_t)n) != n) return 1;
    close(fd);
    zpoller_t *poller = zpoller_new(tcp, ipc, NULL);
    int quit = 0;
    while (!quit) {
        zsock_t *which = zpoller_wait(poller, -1);
        if (!which) {
            if (zpoller_terminated(poller)) break;
            continue;
        }
        quit = s_serve_one(which, buf, cap);
    }
    zpoller_destroy(&poller);
    zsock_destroy(&tcp);
    zsock_destroy(&ipc);
    free(buf);
    return 0;
}

/* Forks the server; fills the two endpoints. 0 or -1. */
static int s_start_server(size_t cap, const char *ipc_path, char *tcp_ep, char *ipc_ep,
                          size_t ep_size) {
    int p[2];
    if (pipe(p) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(p[0]);
        _exit(s_server_main(p[1], cap, ipc_path));
    }
    s_server = pid;
    close(p[1]);
    char buf[MS_WIRE_MAX_ENDPOINT_BYTES];
    size_t got = 0;
    const int64_t deadline = ms_now_ns() + (int64_t)SERVER_START_MS * 1000000;
    while (got < sizeof buf - 1 && ms_now_ns() < deadline && !s_stop) {
        ssize_t r = read(p[0], buf + got, sizeof buf - 1 - got);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            break;
        }
        got += (size_t)r;
    }
    close(p[0]);
    buf[got] = 0;
    char *nl = strchr(buf, '\n');
    if (!nl || !strchr(nl + 1, '\n')) return -1;
    *nl = 0;
    *strchr(nl + 1, '\n') = 0;
    if (strlen(buf) >= ep_size || strlen(nl + 1) >= ep_size) return -1;
    memcpy(tcp_ep, buf, strlen(buf) + 1);
    memcpy(ipc_ep, nl + 1, strlen(nl + 1) + 1);
    return 0;
}

static void s_stop_server(zsock_t *sock) {
    if (s_server <= 0) return;
    if (sock) {
        ms_msg q;
        ms_msg_init(&q, MS_MSG_KV_GET);
        q.kv_get.key = "quit";
        char err[MS_ERR_SIZE];
        ms_frames_send(sock, NULL, &q, NULL, 0, err, sizeof err);
    }
    for (int i = 0; i < 200; i++) { /* up to 2 s for a clean exit */
        if (waitpid(s_server, NULL, WNOHANG) == s_server) {
            s_server = -1;
            return;
        }
        usleep(10000);
    }
    kill(s_server, SIGKILL);
    waitpid(s_server, NULL, 0);
    s_server = -1;
}

/* ---- measurements ------------------------------------------------------------------------ */

static int s_reps_for(const opts *o, size_t bytes) {
    size_t auto_reps = AUTO_REPS_BYTES / bytes;
    if (auto_reps > MAX_AUTO_REPS) auto_reps = MAX_AUTO_REPS;
    return (int)((size_t)o->reps > auto_reps ? (size_t)o->reps : auto_reps);
}

static void s_summarize(double *t, int n, meas *m) {
    qsort(t, (size_t)n, sizeof *t, s_cmp_double);
    m->reps = n;
    m->median_s = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    m->p90_s = t[(int)(0.9 * (n - 1) + 0.5)];
}

/* memcpy of bytes between the cap-byte buffers dst and src: run r copies at
 * offset (r * bytes) mod (cap - bytes + 1), so small sizes walk through
 * buffers far larger than the caches instead of copying cache-hot lines
 * (a received frame is not in the cache either). */
static void s_measure_memcpy(uint8_t *dst, const uint8_t *src, size_t cap, size_t bytes, int reps,
                             meas *m) {
    double *t = ms_xmalloc((size_t)(reps + 1) * sizeof *t);
    const size_t span = cap - bytes + 1;
    for (int r = 0; r <= reps; r++) {
        const size_t off = ((size_t)r * bytes) % span;
        const int64_t t0 = ms_now_ns();
        memcpy(dst + off, src + off, bytes);
        t[r] = (double)(ms_now_ns() - t0) * 1e-9;
        dst[off + (size_t)r % bytes] ^= 1; /* the copy is used: it cannot be elided */
    }
    s_summarize(t + 1, reps, m); /* t[0] is the warm-up */
    free(t);
}

/* One pull of req on sock: seconds, or -1 + err. Checks the reply's type,
 * size and content (first and last byte of the server's pattern). */
static double s_pull(zsock_t *sock, const ms_msg *req, ms_msg_type want, size_t bytes, char *err,
                     size_t err_size) {
    const size_t limit = ms_wire_max_frame_bytes(want) + MS_WIRE_MAX_HEADER_BYTES;
    ms_frames_in in;
    ms_frames_in_init(&in);
    const int64_t t0 = ms_now_ns();
    if (ms_frames_send(sock, NULL, req, NULL, 0, err, err_size) != 0) return -1;
    ms_wire_status st = ms_frames_recv(sock, &in, limit, err, err_size);
    const double dt = (double)(ms_now_ns() - t0) * 1e-9;
    double rc = dt;
    if (st != MS_WIRE_OK) {
        rc = -1;
    } else if (in.msg.type != want || in.n_payload != 1 || ms_frames_in_size(&in, 0) != bytes) {
        rc = ms_errf(err, err_size, "unexpected reply %s with %zu frame(s) of %zu bytes",
                     ms_msg_type_name(in.msg.type), in.n_payload, ms_frames_in_size(&in, 0));
    } else {
        const uint8_t *d = ms_frames_in_data(&in, 0);
        if (d[0] != FILL_BYTE(0) || d[bytes - 1] != FILL_BYTE(bytes - 1))
            rc = ms_errf(err, err_size, "payload content differs from what the server sent");
    }
    ms_frames_in_fini(&in);
    return rc;
}

/* Times reps pulls (after one warm-up). 0, or -1 + err. */
static int s_measure_pull(zsock_t *sock, const ms_msg *req, ms_msg_type want, size_t bytes,
                          int reps, meas *m, char *err, size_t err_size) {
    double *t = ms_xmalloc((size_t)(reps + 1) * sizeof *t);
    int rc = 0;
    for (int r = 0; r <= reps && rc == 0; r++) {
        if (s_stop)
            rc = ms_errf(err, err_size, "interrupted");
        else if ((t[r] = s_pull(sock, req, want, bytes, err, err_size)) < 0)
            rc = -1;
    }
    if (rc == 0) s_summarize(t + 1, reps, m);
    free(t);
    return rc;
}

static int s_measure_kv(zsock_t *sock, send_mode mode, size_t bytes, int reps, meas *m, char *err,
                        size_t err_size) {
    char key[64];
    snprintf(key, sizeof key, "%s:%zu", s_send_name[mode], bytes);
    ms_msg req;
    ms_msg_init(&req, MS_MSG_KV_GET);
    req.kv_get.key = key;
    return s_measure_pull(sock, &req, MS_MSG_KV_DATA, bytes, reps, m, err, err_size);
}

static int s_measure_features(zsock_t *sock, send_mode mode, int n_tok, int dim, int reps, meas *m,
                              char *err, size_t err_size) {
    ms_msg req;
    ms_msg_init(&req, MS_MSG_FEATURE_GET);
    req.feature_get.hash =
        ((uint64_t)n_tok << 32) | (uint64_t)dim | (mode == SEND_ZC ? FEATURE_ZC_BIT : 0);
    return s_measure_pull(sock, &req, MS_MSG_FEATURE_DATA, (size_t)n_tok * (size_t)dim * 4, reps, m,
                          err, err_size);
}

/* ---- output -----------------------------------------------------------------------------------
 */

static double s_gbps(size_t bytes, const meas *m) {
    return m->median_s > 0 ? (double)bytes / m->median_s * 1e-9 : -1;
}

static void s_size_name(size_t b, char *out, size_t n) {
    if (b >= (1u << 20) && b % (1u << 20) == 0)
        snprintf(out, n, "%zu MiB", b >> 20);
    else if (b >= 1024 && b % 1024 == 0)
        snprintf(out, n, "%zu KiB", b >> 10);
    else
        snprintf(out, n, "%zu B", b);
}

static void s_loadavg(char *out, size_t n) {
    double l[3] = {-1, -1, -1};
    if (getloadavg(l, 3) != 3)
        snprintf(out, n, "?");
    else
        snprintf(out, n, "%.2f %.2f %.2f", l[0], l[1], l[2]);
}

static void s_print_table(const opts *o, const row *rows, send_mode mode) {
    printf("\nsend path %s: %s\n", s_send_name[mode],
           mode == SEND_ZC ? "ms_frames_send_zc (the stored buffer, no copy)"
                           : "ms_frames_send_bytes (one copy into a zframe; actors today)");
    printf("%10s %6s %12s", "size", "reps", "memcpy GB/s");
    for (int t = 0; t < N_TR; t++)
        if (o->tr[t]) printf(" %9s GB/s", s_tr_name[t]);
    for (int t = 0; t < N_TR; t++)
        if (o->tr[t]) printf(" %4s/memcpy", s_tr_name[t]);
    printf("\n");
    for (int i = 0; i < o->n_sizes; i++) {
        const row *r = &rows[i];
        char sz[32];
        s_size_name(r->bytes, sz, sizeof sz);
        const double mc = s_gbps(r->bytes, &r->memcpy_);
        printf("%10s %6d %12.2f", sz,
               r->pull[mode][TR_TCP].reps ? r->pull[mode][TR_TCP].reps : r->pull[mode][TR_IPC].reps,
               mc);
        for (int t = 0; t < N_TR; t++)
            if (o->tr[t]) printf(" %14.2f", s_gbps(r->bytes, &r->pull[mode][t]));
        for (int t = 0; t < N_TR; t++)
            if (o->tr[t]) printf(" %11.3f", s_gbps(r->bytes, &r->pull[mode][t]) / mc);
        printf("\n");
    }
}

static void s_print_derived(const opts *o, const char *what, const row *r) {
    printf("  %s, %zu bytes:\n    memcpy %.3f ms", what, r->bytes, r->memcpy_.median_s * 1e3);
    for (int mode = 0; mode < N_SEND; mode++)
        for (int t = 0; t < N_TR; t++)
            if (o->send[mode] && o->tr[t])
                printf(" | %s %s %.3f ms (x%.1f)", s_tr_name[t], s_send_name[mode],
                       r->pull[mode][t].median_s * 1e3,
                       r->pull[mode][t].median_s / r->memcpy_.median_s);
    printf("\n");
}

static cJSON *s_row_json(const opts *o, const row *r) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "bytes", (double)r->bytes);
    cJSON_AddNumberToObject(j, "memcpy_ms", r->memcpy_.median_s * 1e3);
    cJSON_AddNumberToObject(j, "memcpy_gbps", s_gbps(r->bytes, &r->memcpy_));
    for (int mode = 0; mode < N_SEND; mode++) {
        if (!o->send[mode]) continue;
        for (int t = 0; t < N_TR; t++) {
            if (!o->tr[t]) continue;
            const meas *m = &r->pull[mode][t];
            char k[64];
            snprintf(k, sizeof k, "%s_%s_ms", s_tr_name[t], s_send_name[mode]);
            cJSON_AddNumberToObject(j, k, m->median_s * 1e3);
            snprintf(k, sizeof k, "%s_%s_p90_ms", s_tr_name[t], s_send_name[mode]);
            cJSON_AddNumberToObject(j, k, m->p90_s * 1e3);
            snprintf(k, sizeof k, "%s_%s_gbps", s_tr_name[t], s_send_name[mode]);
            cJSON_AddNumberToObject(j, k, s_gbps(r->bytes, m));
            snprintf(k, sizeof k, "%s_%s_ratio", s_tr_name[t], s_send_name[mode]);
            cJSON_AddNumberToObject(j, k, s_gbps(r->bytes, m) / s_gbps(r->bytes, &r->memcpy_));
            snprintf(k, sizeof k, "%s_%s_reps", s_tr_name[t], s_send_name[mode]);
            cJSON_AddNumberToObject(j, k, m->reps);
        }
    }
    return j;
}

static int s_write_json(const opts *o, const row *rows, const row *feat, const row *kv,
                        const char *load0, const char *load1) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "tool", "modserve-bench-transfer");
    cJSON_AddStringToObject(root, "loadavg_before", load0);
    cJSON_AddStringToObject(root, "loadavg_after", load1);
    cJSON_AddNumberToObject(root, "cpus", (double)sysconf(_SC_NPROCESSORS_ONLN));
    cJSON *arr = cJSON_AddArrayToObject(root, "sizes");
    for (int i = 0; i < o->n_sizes; i++)
        cJSON_AddItemToArray(arr, s_row_json(o, &rows[i]));
    cJSON_AddItemToObject(root, "bench_image_features", s_row_json(o, feat));
    cJSON_AddItemToObject(root, "bench_kv_1000_tokens", s_row_json(o, kv));
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    FILE *f = strcmp(o->json, "-") == 0 ? stdout : fopen(o->json, "w");
    int rc = 0;
    if (!f || fprintf(f, "%s\n", s) < 0) rc = -1;
    if (f && f != stdout && fclose(f) != 0) rc = -1;
    free(s);
    if (rc != 0) fprintf(stderr, "modserve-bench-transfer: cannot write %s\n", o->json);
    return rc;
}

/* ---- main ----------------------------------------------------------------------------------- */

/* Bytes of the KV blob of an n-token sequence of a model (kvcache.h format). */
static size_t s_kv_blob_bytes(const ms_modelgen_cfg *c, int n) {
    const size_t row_dim = (size_t)c->n_head_kv * (size_t)(c->n_embd / c->n_head);
    return MS_KV_HEADER_SIZE + 4 * (size_t)n + 2 * (size_t)c->n_layer * (size_t)n * row_dim * 4;
}

/* Every measurement of one payload size: memcpy, then each transport × send path. */
static int s_measure_row(const opts *o, zsock_t *const *socks, uint8_t *dst, const uint8_t *src,
                         size_t cap, row *r, int feat_tok, int feat_dim, char *err,
                         size_t err_size) {
    const int reps = s_reps_for(o, r->bytes);
    s_measure_memcpy(dst, src, cap, r->bytes, reps, &r->memcpy_);
    for (int mode = 0; mode < N_SEND; mode++) {
        for (int t = 0; t < N_TR; t++) {
            r->pull[mode][t] = (meas){.median_s = -1};
            if (!o->send[mode] || !o->tr[t]) continue;
            int rc = feat_tok > 0
                         ? s_measure_features(socks[t], (send_mode)mode, feat_tok, feat_dim, reps,
                                              &r->pull[mode][t], err, err_size)
                         : s_measure_kv(socks[t], (send_mode)mode, r->bytes, reps,
                                        &r->pull[mode][t], err, err_size);
            if (rc != 0) return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    opts o;
    if (s_parse_args(argc, argv, &o) != 0) {
        s_usage(stderr);
        return 2;
    }
    char err[MS_ERR_SIZE];
    ms_modelgen_cfg bench;
    if (ms_modelgen_preset("bench", &bench, err, sizeof err) != 0) {
        fprintf(stderr, "modserve-bench-transfer: %s\n", err);
        return 1;
    }
    const int feat_tok =
        (bench.v_image_size / bench.v_patch_size) * (bench.v_image_size / bench.v_patch_size);
    const int feat_dim = bench.v_n_embd;
    row feat = {.bytes = (size_t)feat_tok * (size_t)feat_dim * 4};
    row kv = {.bytes = s_kv_blob_bytes(&bench, KV_TOKENS)};

    size_t cap = MS_MAX(MS_MAX(feat.bytes, kv.bytes), (size_t)MIN_MEMCPY_SPAN);
    for (int i = 0; i < o.n_sizes; i++)
        cap = MS_MAX(cap, o.sizes[i]);

    char ipc_path[512], tcp_ep[MS_WIRE_MAX_ENDPOINT_BYTES + 1],
        ipc_ep[MS_WIRE_MAX_ENDPOINT_BYTES + 1];
    snprintf(ipc_path, sizeof ipc_path, "%s/msbench-%d.ipc", o.ipc_dir, (int)getpid());
    if (strlen(ipc_path) >= 100) {
        fprintf(stderr, "modserve-bench-transfer: --ipc-dir too long for a Unix socket path\n");
        return 2;
    }
    struct sigaction sa = {.sa_handler = s_on_signal}; /* no SA_RESTART: blocking calls end */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* fork before this process creates its ZeroMQ context */
    if (s_start_server(cap, ipc_path, tcp_ep, ipc_ep, sizeof tcp_ep) != 0) {
        fprintf(stderr, "modserve-bench-transfer: the server process did not start\n");
        if (s_server > 0) kill(s_server, SIGKILL), waitpid(s_server, NULL, 0);
        return 1;
    }
    zsys_handler_set(NULL); /* czmq must not take over SIGINT: ours stops the run */
    zsock_t *socks[N_TR] = {zsock_new(ZMQ_DEALER), zsock_new(ZMQ_DEALER)};
    const char *eps[N_TR] = {tcp_ep, ipc_ep};
    int status = 1;
    for (int t = 0; t < N_TR; t++) {
        if (!socks[t]) goto done;
        zsock_set_linger(socks[t], 0);
        zsock_set_rcvhwm(socks[t], 0);
        zsock_set_rcvtimeo(socks[t], RECV_TIMEOUT_MS);
        if (zsock_connect(socks[t], "%s", eps[t]) != 0) {
            fprintf(stderr, "modserve-bench-transfer: connect %s failed\n", eps[t]);
            goto done;
        }
    }

    uint8_t *src = ms_xmalloc(cap), *dst = ms_xmalloc(cap);
    memset(src, 1, cap); /* fault every page in before timing */
    memset(dst, 2, cap);
    row rows[MAX_SIZES];
    memset(rows, 0, sizeof rows);
    char load0[64], load1[64];
    s_loadavg(load0, sizeof load0);
    struct utsname un;
    uname(&un);
    printf("modserve-bench-transfer: %s %s, %ld cpus, load average %s\n", un.nodename, un.machine,
           sysconf(_SC_NPROCESSORS_ONLN), load0);
    printf("server pid %d: %s and %s; one pull = request -> header + one payload frame,\n"
           "received with ms_frames_recv; GB/s = 1e9 payload bytes/s, median of reps\n",
           (int)s_server, tcp_ep, ipc_ep);
    fflush(stdout);
    int rc = 0;
    for (int i = 0; i < o.n_sizes && rc == 0; i++) {
        rows[i].bytes = o.sizes[i];
        rc = s_measure_row(&o, socks, dst, src, cap, &rows[i], 0, 0, err, sizeof err);
    }
    if (rc == 0)
        rc = s_measure_row(&o, socks, dst, src, cap, &feat, feat_tok, feat_dim, err, sizeof err);
    if (rc == 0) rc = s_measure_row(&o, socks, dst, src, cap, &kv, 0, 0, err, sizeof err);
    s_loadavg(load1, sizeof load1);
    if (rc != 0) {
        fprintf(stderr, "modserve-bench-transfer: %s\n", err);
    } else {
        for (int mode = 0; mode < N_SEND; mode++)
            if (o.send[mode]) s_print_table(&o, rows, (send_mode)mode);
        printf("\nthe payloads of the pipeline (bench preset), median per transfer "
               "(xN = times memcpy):\n");
        char what[160];
        snprintf(what, sizeof what, "features of one image (%d tokens x %d f32, FeatureData)",
                 feat_tok, feat_dim);
        s_print_derived(&o, what, &feat);
        snprintf(what, sizeof what,
                 "KV of %d tokens (%d layers x K,V x %d f32 per row + history, KvData)", KV_TOKENS,
                 bench.n_layer, bench.n_head_kv * (bench.n_embd / bench.n_head));
        s_print_derived(&o, what, &kv);
        printf("load average after: %s\n", load1);
        status = o.json && s_write_json(&o, rows, &feat, &kv, load0, load1) != 0 ? 1 : 0;
    }
    free(src);
    free(dst);
done:
    s_stop_server(socks[TR_TCP]);
    for (int t = 0; t < N_TR; t++)
        zsock_destroy(&socks[t]);
    unlink(ipc_path);
    return s_stop ? 130 : status;
}
