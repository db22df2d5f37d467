/* actor.c — the actor runtime (see actor.h): configuration, sockets, the
 * registry heartbeat thread, the main loop, the data plane and the drain. */
#include "actor.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_DEFAULT_BROKER    "tcp://127.0.0.1:5556"
#define S_DEFAULT_DATA      "tcp://127.0.0.1:0"
#define S_DRAIN_DATA_MS     5000   /* drain: keep unpulled data at most this long */
#define S_CTRL_SNDHWM       100000 /* messages queued to the broker while it is away */
#define S_SNAPSHOT_EVERY_MS 20     /* main loop refreshes the heartbeat snapshot this often */

static volatile sig_atomic_t s_stop_requested;

void ms_actor_request_stop(void) {
    s_stop_requested = 1;
}

int64_t ms_actor_now_ms(void) {
    return ms_now_ns() / 1000000;
}

void ms_actor_feature_key(uint64_t hash, char key[MS_FEATSTORE_KEY_MAX]) {
    snprintf(key, MS_FEATSTORE_KEY_MAX, "f:%016" PRIx64, hash);
}

/* ---- configuration ----------------------------------------------------------- */

void ms_actor_config_default(ms_actor_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->backend, sizeof c->backend, "cpu");
    snprintf(c->broker_ep, sizeof c->broker_ep, "%s", S_DEFAULT_BROKER);
    snprintf(c->data_bind, sizeof c->data_bind, "%s", S_DEFAULT_DATA);
    snprintf(c->redis_host, sizeof c->redis_host, "127.0.0.1");
    c->redis_port = MS_REGISTRY_DEFAULT_PORT;
    snprintf(c->redis_prefix, sizeof c->redis_prefix, "%s", MS_REGISTRY_DEFAULT_PREFIX);
    snprintf(c->device, sizeof c->device, "cpu");
    c->max_seqs = MS_ACTOR_MAX_SEQS_DEFAULT;
    c->pull_timeout_ms = MS_ACTOR_PULL_TIMEOUT_MS;
    c->drain_ms = MS_ACTOR_DRAIN_MS_DEFAULT;
}

static const char *s_usage =
    "usage: modserve-actor --id ID --stages STAGES --model LM.gguf [--mmproj MM.gguf] [options]\n"
    "\n"
    "Runs one modserve actor: serves the given pipeline stages for the broker.\n"
    "\n"
    "  --id ID               actor id, registry key and broker identity (e.g. enc-1)\n"
    "  --stages S            encode | prefill | decode | prefill+decode | encode+prefill+decode\n"
    "  -m, --model FILE      text model GGUF (always loaded)\n"
    "  --mmproj FILE         vision tower + projector GGUF (required to encode)\n"
    "  --backend NAME        cpu (default) or cpu-ref\n"
    "  --broker EP           broker back socket (default " S_DEFAULT_BROKER ")\n"
    "  --data EP             data-plane endpoint to bind (default " S_DEFAULT_DATA
    "; port 0 = a free port)\n"
    "  --advertise HOST      publish the tcp data endpoint as tcp://HOST:PORT (the port bound),\n"
    "                        for a --data bound to 0.0.0.0 in a container (default: as bound)\n"
    "  --redis HOST:PORT     registry Redis (default 127.0.0.1:6379)\n"
    "  --prefix P            registry key prefix (default ms)\n"
    "  --device NAME         device name published in the registry (default cpu)\n"
    "  -t, --threads N       compute threads (default: one per core)\n"
    "  --kv-tokens N         KV cache capacity in tokens (default: engine default)\n"
    "  --batch-tokens N      rows per LM pass (prefill chunk; default: engine default)\n"
    "  --vit-batch N         images per ViT pass (default: engine default)\n"
    "  --max-batch N         running sequences at most (default 64)\n"
    "  --store-mb N          feature/KV store bound in MiB (default 1024)\n"
    "  --store-ttl-ms N      unpulled features/KV expire after N ms (default 60000)\n"
    "  --pull-timeout-ms N   one feature/KV pull from a peer, at most (default 5000)\n"
    "  --drain-ms N          on SIGTERM, finish running work within N ms (default 30000)\n"
    "  -h, --help            this text\n";

const char *ms_actor_usage(void) {
    return s_usage;
}

static int s_copy(char *dst, size_t cap, const char *src, const char *opt, char *err,
                  size_t err_size) {
    if (strlen(src) >= cap)
        return ms_errf(err, err_size, "%s: value longer than %zu bytes", opt, cap - 1);
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

static int s_int(const char *s, long long lo, long long hi, long long *out, const char *opt,
                 char *err, size_t err_size) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return ms_errf(err, err_size, "%s: '%s' is not an integer in [%lld, %lld]", opt, s, lo, hi);
    *out = v;
    return 0;
}

static bool s_id_ok(const char *id) {
    if (!*id) return false;
    for (const char *p = id; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == ':' || *p == '-'))
            return false;
    return true;
}

/* A host for --advertise: a name or IPv4 address ([A-Za-z0-9.-_]), or an
 * IPv6 address in brackets. */
static bool s_advertise_ok(const char *h) {
    size_t n = strlen(h);
    if (n == 0) return false;
    if (h[0] == '[') {
        if (n < 3 || h[n - 1] != ']') return false;
        for (size_t i = 1; i + 1 < n; i++)
            if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.') return false;
        return true;
    }
    for (const char *p = h; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_') return false;
    return true;
}

int ms_actor_config_parse(ms_actor_config *c, int argc, char **argv, char *err, size_t err_size) {
    bool have_stages = false;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            fputs(s_usage, stdout);
            return 1;
        }
        if (i + 1 >= argc)
            return ms_errf(err, err_size, "%s: missing value (or unknown option)", o);
        const char *v = argv[++i];
        long long n = 0;
#define IS(name)    (!strcmp(o, name))
#define COPY(field) s_copy(c->field, sizeof c->field, v, o, err, err_size)
#define INT(lo, hi) s_int(v, lo, hi, &n, o, err, err_size)
        if (IS("--id")) {
            if (COPY(id) != 0) return -1;
            if (!s_id_ok(c->id))
                return ms_errf(err, err_size, "--id: '%s' (allowed: letters, digits, . _ : -)", v);
        } else if (IS("--stages")) {
            const unsigned text = MS_STAGES_PREFILL | MS_STAGES_DECODE;
            if (ms_stages_parse(v, &c->stages, NULL, 0) != 0 ||
                (c->stages != MS_STAGES_ENCODE && c->stages != MS_STAGES_PREFILL &&
                 c->stages != MS_STAGES_DECODE && c->stages != text && c->stages != MS_STAGES_ALL))
                return ms_errf(err, err_size,
                               "--stages: '%s' (encode, prefill, decode, prefill+decode or "
                               "encode+prefill+decode)",
                               v);
            have_stages = true;
        } else if (IS("-m") || IS("--model")) {
            if (COPY(lm_path) != 0) return -1;
        } else if (IS("--mmproj")) {
            if (COPY(mmproj_path) != 0) return -1;
        } else if (IS("--backend")) {
            if (COPY(backend) != 0) return -1;
        } else if (IS("--broker")) {
            if (COPY(broker_ep) != 0) return -1;
        } else if (IS("--data")) {
            if (COPY(data_bind) != 0) return -1;
        } else if (IS("--advertise")) {
            if (COPY(advertise) != 0) return -1;
            if (!s_advertise_ok(c->advertise))
                return ms_errf(err, err_size,
                               "--advertise: '%s' (a host name or an IP address, [v6] in brackets)",
                               v);
        } else if (IS("--redis")) {
            const char *colon = strrchr(v, ':');
            if (!colon || colon == v)
                return ms_errf(err, err_size, "--redis: '%s' (expected HOST:PORT)", v);
            if ((size_t)(colon - v) >= sizeof c->redis_host)
                return ms_errf(err, err_size, "--redis: host too long");
            memcpy(c->redis_host, v, (size_t)(colon - v));
            c->redis_host[colon - v] = '\0';
            if (s_int(colon + 1, 1, 65535, &n, o, err, err_size) != 0) return -1;
            c->redis_port = (int)n;
        } else if (IS("--prefix")) {
            if (COPY(redis_prefix) != 0) return -1;
        } else if (IS("--device")) {
            if (COPY(device) != 0) return -1;
        } else if (IS("-t") || IS("--threads")) {
            if (INT(0, 1024) != 0) return -1;
            c->n_threads = (int)n;
        } else if (IS("--kv-tokens")) {
            if (INT(0, INT_MAX / 2) != 0) return -1;
            c->kv_tokens = (int)n;
        } else if (IS("--batch-tokens")) {
            if (INT(0, MS_ENGINE_MAX_BATCH_TOKENS) != 0) return -1;
            c->batch_tokens = (int)n;
        } else if (IS("--vit-batch")) {
            if (INT(0, 1024) != 0) return -1;
            c->vit_batch = (int)n;
        } else if (IS("--max-batch")) {
            if (INT(1, MS_ACTOR_MAX_SEQS_LIMIT) != 0) return -1;
            c->max_seqs = (int)n;
        } else if (IS("--store-mb")) {
            if (INT(1, 1 << 24) != 0) return -1;
            c->store_bytes = (size_t)n << 20;
        } else if (IS("--store-ttl-ms")) {
            if (INT(1, MS_WIRE_MAX_MS) != 0) return -1;
            c->store_ttl_ms = n;
        } else if (IS("--pull-timeout-ms")) {
            if (INT(1, MS_WIRE_MAX_MS) != 0) return -1;
            c->pull_timeout_ms = (int)n;
        } else if (IS("--drain-ms")) {
            if (INT(0, MS_WIRE_MAX_MS) != 0) return -1;
            c->drain_ms = (int)n;
        } else {
            return ms_errf(err, err_size, "unknown option '%s'", o);
        }
#undef IS
#undef COPY
#undef INT
    }
    if (!c->id[0]) return ms_errf(err, err_size, "--id is required");
    if (!have_stages && !c->stages) return ms_errf(err, err_size, "--stages is required");
    if (!c->lm_path[0]) return ms_errf(err, err_size, "--model is required");
    if ((c->stages & MS_STAGES_ENCODE) && !c->mmproj_path[0])
        return ms_errf(err, err_size, "stages '%s' include encode: --mmproj is required",
                       ms_stages_name(c->stages, (char[MS_STAGES_NAME_MAX]){0}, MS_STAGES_NAME_MAX));
    if (c->advertise[0] && strncmp(c->data_bind, "tcp://", 6) != 0)
        return ms_errf(err, err_size, "--advertise needs a tcp:// --data endpoint, not '%s'",
                       c->data_bind);
    return 0;
}

/* ---- heartbeat thread ------------------------------------------------------------ */

/* The registry heartbeat runs on its own thread with its own registry client,
 * publishing a snapshot of a->info that the main loop refreshes, so that a
 * long prefill or encode batch never lets the TTL lapse and a slow Redis
 * never stalls the main loop. */
typedef struct s_beat {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;          /* under mu */
    ms_actor_info snap; /* under mu */
    ms_registry *reg;   /* owned by the thread once started */
    bool started;
} s_beat;

static void *s_beat_main(void *arg) {
    s_beat *b = arg;
    pthread_mutex_lock(&b->mu);
    while (!b->stop) {
        ms_actor_info info = b->snap;
        pthread_mutex_unlock(&b->mu);
        if (ms_registry_heartbeat(b->reg, &info) != 0)
            ms_debug("actor %s: heartbeat: %s", info.id, ms_registry_errstr(b->reg));
        pthread_mutex_lock(&b->mu);
        if (b->stop) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + (int64_t)MS_REGISTRY_HEARTBEAT_MS * 1000000;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&b->cv, &b->mu, &ts);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* ---- the actor ----------------------------------------------------------------------- */

typedef struct s_private {
    s_beat beat;
    int64_t next_snapshot_ms;
    char mon_ep[96];
} s_private;

/* The actor struct is public to actors/ files; the runtime's own extra state
 * lives behind it in one allocation. */
typedef struct s_actor_alloc {
    ms_actor pub;
    s_private priv;
} s_actor_alloc;

static s_private *s_priv(ms_actor *a) {
    return &((s_actor_alloc *)a)->priv;
}

const char *ms_actor_data_ep(const ms_actor *a) {
    return a->data_ep;
}

static void s_refresh_info(ms_actor *a) {
    ms_actor_info *in = &a->info;
    in->queued_image_tokens = a->enc ? ms_encoder_queued_image_tokens(a->enc) : 0;
    in->queued_prompt_tokens = a->tg ? ms_textgen_queued_prompt_tokens(a->tg) : 0;
    in->running_seqs = a->tg ? ms_textgen_running(a->tg) : 0;
    in->free_kv_blocks = a->tg ? ms_engine_kv_free_blocks(a->eng) : 0;
}

static void s_publish_snapshot(ms_actor *a) {
    s_private *p = s_priv(a);
    s_refresh_info(a);
    if (!p->beat.started) return;
    pthread_mutex_lock(&p->beat.mu);
    p->beat.snap = a->info;
    pthread_mutex_unlock(&p->beat.mu);
}

/* Binds the data ROUTER; resolves a tcp port 0 into the port chosen. */
static int s_bind_data(ms_actor *a, char *err, size_t err_size) {
    /* port 0 goes to libzmq as is: the kernel picks a free port, race-free
     * (czmq's ":*" scans ports and two processes can race for one) */
    const char *ep = a->cfg.data_bind;
    a->data = zsock_new(ZMQ_ROUTER);
    if (!a->data) return ms_errf(err, err_size, "data socket: %s", zmq_strerror(errno));
    zsock_set_linger(a->data, 0);
    if (zsock_bind(a->data, "%s", ep) < 0)
        return ms_errf(err, err_size, "cannot bind the data socket to %s: %s", a->cfg.data_bind,
                       zmq_strerror(errno));
    char *last = zsock_last_endpoint(a->data);
    snprintf(a->data_ep, sizeof a->data_ep, "%s", last ? last : ep);
    freen(last);
    if (a->cfg.advertise[0]) {
        /* peers connect to HOST at the port bound (a 0.0.0.0 or * bind is not reachable) */
        const char *colon = strrchr(a->data_ep, ':');
        if (strncmp(a->data_ep, "tcp://", 6) != 0 || !colon)
            return ms_errf(err, err_size, "--advertise: the data endpoint %s is not tcp",
                           a->data_ep);
        char port[16];
        snprintf(port, sizeof port, "%s", colon + 1);
        int n = snprintf(a->data_ep, sizeof a->data_ep, "tcp://%s:%s", a->cfg.advertise, port);
        if (n < 0 || (size_t)n >= sizeof a->data_ep)
            return ms_errf(err, err_size, "--advertise: endpoint too long");
    }
    return 0;
}

static int s_connect_ctrl(ms_actor *a, char *err, size_t err_size) {
    s_private *p = s_priv(a);
    a->ctrl = zsock_new(ZMQ_DEALER);
    if (!a->ctrl) return ms_errf(err, err_size, "broker socket: %s", zmq_strerror(errno));
    zsock_set_identity(a->ctrl, a->cfg.id);
    zsock_set_linger(a->ctrl, MS_ACTOR_LINGER_MS);
    zsock_set_sndhwm(a->ctrl, S_CTRL_SNDHWM);
    zsock_set_sndtimeo(a->ctrl, 0);
    zsock_set_rcvhwm(a->ctrl, 0);
    /* connect events (a fresh broker, a broker restart) trigger Hello */
    snprintf(p->mon_ep, sizeof p->mon_ep, "inproc://ms-actor-monitor-%p", (void *)a);
    if (zmq_socket_monitor(zsock_resolve(a->ctrl), p->mon_ep, ZMQ_EVENT_CONNECTED) != 0)
        return ms_errf(err, err_size, "broker socket monitor: %s", zmq_strerror(errno));
    a->monitor = zsock_new(ZMQ_PAIR);
    if (!a->monitor || zsock_connect((zsock_t *)a->monitor, "%s", p->mon_ep) != 0)
        return ms_errf(err, err_size, "broker socket monitor: %s", zmq_strerror(errno));
    if (zsock_connect(a->ctrl, "%s", a->cfg.broker_ep) != 0)
        return ms_errf(err, err_size, "cannot connect to the broker at %s: %s", a->cfg.broker_ep,
                       zmq_strerror(errno));
    return 0;
}

static void s_fill_info(ms_actor *a) {
    ms_actor_info *in = &a->info;
    memset(in, 0, sizeof *in);
    snprintf(in->id, sizeof in->id, "%s", a->cfg.id);
    in->stages = a->cfg.stages;
    /* the model as given; a path that does not fit, or has spaces, by its file name */
    const char *model = a->cfg.lm_path;
    if (strlen(model) >= sizeof in->model || strchr(model, ' ')) {
        const char *slash = strrchr(model, '/');
        model = slash ? slash + 1 : model;
    }
    const size_t ml = MS_MIN(strlen(model), sizeof in->model - 1);
    memcpy(in->model, model, ml);
    in->model[ml] = '\0';
    for (char *c = in->model; *c; c++)
        if (*c <= ' ' || *c > '~') *c = '_';
    snprintf(in->ctrl, sizeof in->ctrl, "%s", a->cfg.broker_ep);
    snprintf(in->data_ep, sizeof in->data_ep, "%s", a->data_ep);
    if (gethostname(in->host, sizeof in->host) != 0 || !in->host[0])
        snprintf(in->host, sizeof in->host, "localhost");
    in->host[sizeof in->host - 1] = '\0';
    for (char *c = in->host; *c; c++)
        if (*c <= ' ' || *c > '~') *c = '_';
    in->pid = (int64_t)getpid();
    snprintf(in->device, sizeof in->device, "%s", a->cfg.device);
    const bool text = a->cfg.stages & (MS_STAGES_PREFILL | MS_STAGES_DECODE);
    in->capacity = text ? a->cfg.max_seqs
                        : (a->cfg.vit_batch > 0 ? a->cfg.vit_batch : MS_ENGINE_VIT_BATCH_DEFAULT);
    in->state = MS_ACTOR_UP;
}

ms_actor *ms_actor_new(const ms_actor_config *c, char *err, size_t err_size) {
    s_actor_alloc *al = ms_xcalloc(1, sizeof *al);
    ms_actor *a = &al->pub;
    a->cfg = *c;
    if (a->cfg.max_seqs <= 0) a->cfg.max_seqs = MS_ACTOR_MAX_SEQS_DEFAULT;
    if (a->cfg.pull_timeout_ms <= 0) a->cfg.pull_timeout_ms = MS_ACTOR_PULL_TIMEOUT_MS;
    const bool text = c->stages & (MS_STAGES_PREFILL | MS_STAGES_DECODE);
    if (!c->stages || !c->id[0] || !c->lm_path[0]) {
        ms_errf(err, err_size, "actor: id, stages and model are required");
        goto fail;
    }
    if ((c->stages & MS_STAGES_ENCODE) && !c->mmproj_path[0]) {
        ms_errf(err, err_size, "actor %s: the encode stage needs an mmproj", c->id);
        goto fail;
    }

    ms_engine_params ep;
    ms_engine_params_default(&ep);
    ep.lm_path = c->lm_path;
    ep.mmproj_path = c->mmproj_path[0] ? c->mmproj_path : NULL;
    ep.backend = c->backend[0] ? c->backend : "cpu";
    ep.n_threads = c->n_threads;
    ep.kv_max_tokens = text ? c->kv_tokens : MS_ACTOR_ENCODER_KV_TOKENS;
    ep.max_batch_tokens = c->batch_tokens;
    ep.vit_batch = c->vit_batch;
    a->eng = ms_engine_new(&ep, err, err_size);
    if (!a->eng) goto fail;
    if ((c->stages & MS_STAGES_ENCODE) && !ms_engine_has_vision(a->eng)) {
        ms_errf(err, err_size, "actor %s: %s has no vision model", c->id, c->mmproj_path);
        goto fail;
    }
    a->store = ms_featstore_new(c->store_bytes, c->store_ttl_ms);
    if (s_bind_data(a, err, err_size) != 0 || s_connect_ctrl(a, err, err_size) != 0) goto fail;
    if (c->stages & MS_STAGES_ENCODE) a->enc = ms_encoder_new(a);
    if (text) a->tg = ms_textgen_new(a);

    a->reg = ms_registry_new(c->redis_host, c->redis_port, c->redis_prefix, err, err_size);
    if (!a->reg) goto fail;
    s_fill_info(a);
    s_refresh_info(a);
    if (ms_registry_register(a->reg, &a->info) != 0)
        ms_warn("actor %s: not registered yet (%s); the heartbeat will retry", c->id,
                ms_registry_errstr(a->reg));

    s_private *p = &al->priv;
    p->beat.reg = ms_registry_new(c->redis_host, c->redis_port, c->redis_prefix, err, err_size);
    if (!p->beat.reg) goto fail;
    pthread_mutex_init(&p->beat.mu, NULL);
    pthread_cond_init(&p->beat.cv, NULL);
    p->beat.snap = a->info;
    if (pthread_create(&p->beat.thread, NULL, s_beat_main, &p->beat) != 0) {
        ms_registry_destroy(&p->beat.reg);
        pthread_mutex_destroy(&p->beat.mu);
        pthread_cond_destroy(&p->beat.cv);
        ms_errf(err, err_size, "actor %s: cannot start the heartbeat thread", c->id);
        goto fail;
    }
    p->beat.started = true;
    ms_info("actor %s: stages %s, model %s, data %s, broker %s, redis %s:%d", c->id,
            ms_stages_name(c->stages, (char[MS_STAGES_NAME_MAX]){0}, MS_STAGES_NAME_MAX), c->lm_path, a->data_ep,
            c->broker_ep, c->redis_host, c->redis_port);
    return a;
fail:
    ms_actor_destroy(&a);
    return NULL;
}

static void s_beat_stop(ms_actor *a) {
    s_private *p = s_priv(a);
    if (!p->beat.started) return;
    pthread_mutex_lock(&p->beat.mu);
    p->beat.stop = true;
    pthread_cond_signal(&p->beat.cv);
    pthread_mutex_unlock(&p->beat.mu);
    pthread_join(p->beat.thread, NULL);
    ms_registry_destroy(&p->beat.reg);
    pthread_mutex_destroy(&p->beat.mu);
    pthread_cond_destroy(&p->beat.cv);
    p->beat.started = false;
}

void ms_actor_destroy(ms_actor **a_p) {
    if (!a_p || !*a_p) return;
    ms_actor *a = *a_p;
    s_beat_stop(a);
    if (a->reg && a->info.id[0]) (void)ms_registry_deregister(a->reg, a->info.id);
    ms_registry_destroy(&a->reg);
    ms_encoder_destroy(&a->enc);
    ms_textgen_destroy(&a->tg);
    for (int i = 0; i < MS_ACTOR_MAX_PEERS; i++)
        zsock_destroy(&a->peers[i].sock);
    if (a->ctrl && a->monitor) zmq_socket_monitor(zsock_resolve(a->ctrl), NULL, 0);
    zsock_t *mon = a->monitor;
    zsock_destroy(&mon);
    a->monitor = NULL;
    zsock_destroy(&a->ctrl);
    zsock_destroy(&a->data);
    ms_featstore_destroy(&a->store);
    ms_engine_destroy(&a->eng);
    free((s_actor_alloc *)a);
    *a_p = NULL;
}

/* ---- sending ------------------------------------------------------------------------------ */

int ms_actor_send(ms_actor *a, const ms_msg *m) {
    char err[MS_ERR_SIZE];
    if (ms_frames_send(a->ctrl, NULL, m, NULL, 0, err, sizeof err) != 0) {
        ms_warn("actor %s: cannot send %s to the broker: %s", a->cfg.id, ms_msg_type_name(m->type),
                err);
        return -1;
    }
    return 0;
}

void ms_actor_task_error(ms_actor *a, uint64_t rid, uint64_t task, ms_wire_code code,
                         const char *fmt, ...) {
    char text[MS_WIRE_MAX_ERROR_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    ms_warn("actor %s: rid %" PRIu64 " task %" PRIu64 ": %s: %s", a->cfg.id, rid, task,
            ms_wire_code_name(code), text);
    ms_msg m;
    ms_msg_init(&m, MS_MSG_TASK_ERROR);
    m.task_error.rid = rid;
    m.task_error.task = task;
    m.task_error.code = (char *)ms_wire_code_name(code);
    m.task_error.message = text;
    ms_actor_send(a, &m);
}

static void s_send_hello(ms_actor *a) {
    char stages[MS_STAGES_STR_MAX];
    ms_msg m;
    ms_msg_init(&m, MS_MSG_HELLO);
    m.hello.actor = a->cfg.id;
    m.hello.stages = (char *)ms_stages_name(a->cfg.stages, stages, sizeof stages);
    m.hello.model = a->info.model;
    m.hello.data_ep = a->data_ep;
    m.hello.pid = (uint64_t)getpid();
    m.hello.host = a->info.host;
    m.hello.device = a->cfg.device;
    m.hello.has_device = true;
    m.hello.capacity = (uint64_t)a->info.capacity;
    m.hello.has_capacity = true;
    if (ms_actor_send(a, &m) == 0) ms_debug("actor %s: hello sent", a->cfg.id);
}

/* ---- the data plane ----------------------------------------------------------------------- */

static void s_data_error(ms_actor *a, zframe_t *rid, ms_wire_code code, const char *fmt, ...)
    MS_PRINTF(4, 5);

static void s_data_error(ms_actor *a, zframe_t *rid, ms_wire_code code, const char *fmt, ...) {
    if (!rid) return;
    char text[MS_WIRE_MAX_ERROR_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    ms_msg m;
    ms_msg_init(&m, MS_MSG_DATA_ERROR);
    m.data_error.code = (char *)ms_wire_code_name(code);
    m.data_error.message = text;
    char err[MS_ERR_SIZE];
    if (ms_frames_send(a->data, rid, &m, NULL, 0, err, sizeof err) != 0)
        ms_debug("actor %s: data error reply: %s", a->cfg.id, err);
}

void ms_actor_serve_data(ms_actor *a) {
    ms_frames_in in;
    ms_frames_in_init(&in);
    char err[MS_ERR_SIZE];
    const ms_wire_status st = ms_frames_recv(a->data, &in, MS_ACTOR_DATA_REQ_MAX, err, sizeof err);
    if (st == MS_WIRE_MALFORMED) {
        s_data_error(a, in.routing_id, MS_CODE_BAD_REQUEST, "malformed request: %s", err);
    } else if (st == MS_WIRE_OK) {
        const int64_t now = ms_actor_now_ms();
        ms_blob_info bi;
        char key[MS_FEATSTORE_KEY_MAX];
        if (in.msg.type == MS_MSG_FEATURE_GET) {
            const uint64_t hash = in.msg.feature_get.hash;
            ms_actor_feature_key(hash, key);
            if (!ms_featstore_get(a->store, key, now, &bi) || bi.kind != MS_BLOB_FEATURES) {
                s_data_error(a, in.routing_id, MS_CODE_NOT_FOUND,
                             "actor %s holds no features "
                             "%016" PRIx64,
                             a->cfg.id, hash);
            } else {
                ms_msg m;
                ms_msg_init(&m, MS_MSG_FEATURE_DATA);
                m.feature_data.hash = hash;
                m.feature_data.n_tokens = (uint64_t)bi.n_tokens;
                m.feature_data.dim = (uint64_t)bi.dim;
                const void *data = ms_blobbuf_data(bi.buf);
                const size_t len = bi.bytes;
                if (ms_frames_send_bytes(a->data, in.routing_id, &m, &data, &len, 1, err,
                                         sizeof err) != 0) {
                    ms_warn("actor %s: feature reply: %s", a->cfg.id, err);
                } else {
                    ms_featstore_pulled(a->store, key, now);
                    a->pulls_served++;
                }
            }
        } else if (in.msg.type == MS_MSG_KV_GET) {
            const char *k = in.msg.kv_get.key;
            if (strlen(k) >= sizeof key || !ms_featstore_get(a->store, k, now, &bi) ||
                bi.kind != MS_BLOB_KV) {
                s_data_error(a, in.routing_id, MS_CODE_NOT_FOUND, "actor %s holds no KV '%s'",
                             a->cfg.id, k);
            } else {
                ms_msg m;
                ms_msg_init(&m, MS_MSG_KV_DATA);
                m.kv_data.key = (char *)k;
                m.kv_data.n_tokens = (uint64_t)bi.n_tokens;
                m.kv_data.bytes = bi.bytes;
                const void *data = ms_blobbuf_data(bi.buf);
                const size_t len = bi.bytes;
                if (ms_frames_send_bytes(a->data, in.routing_id, &m, &data, &len, 1, err,
                                         sizeof err) != 0) {
                    ms_warn("actor %s: KV reply: %s", a->cfg.id, err);
                } else {
                    if (in.msg.kv_get.has_release && in.msg.kv_get.release)
                        ms_featstore_pulled(a->store, k, now);
                    a->pulls_served++;
                }
            }
        } else {
            s_data_error(a, in.routing_id, MS_CODE_BAD_REQUEST,
                         "unexpected %s on the data plane of actor %s",
                         ms_msg_type_name(in.msg.type), a->cfg.id);
        }
    }
    ms_frames_in_fini(&in);
}

/* The cached DEALER to ep (created on first use; the least recently used one
 * is closed when the cache is full). */
static ms_actor_peer *s_peer(ms_actor *a, const char *ep) {
    ms_actor_peer *lru = &a->peers[0];
    const int64_t now = ms_actor_now_ms();
    for (int i = 0; i < MS_ACTOR_MAX_PEERS; i++) {
        ms_actor_peer *p = &a->peers[i];
        if (p->sock && strcmp(p->ep, ep) == 0) {
            p->used_ms = now;
            return p;
        }
        if (!p->sock || (lru->sock && p->used_ms < lru->used_ms)) lru = p;
    }
    zsock_destroy(&lru->sock);
    lru->sock = zsock_new(ZMQ_DEALER);
    if (!lru->sock) return NULL;
    zsock_set_linger(lru->sock, 0);
    zsock_set_rcvhwm(lru->sock, 0);
    if (zsock_connect(lru->sock, "%s", ep) != 0) {
        zsock_destroy(&lru->sock);
        return NULL;
    }
    snprintf(lru->ep, sizeof lru->ep, "%s", ep);
    lru->used_ms = now;
    return lru;
}

/* True if reply `in` answers request req. */
static bool s_answers(const ms_msg *req, const ms_frames_in *in) {
    if (req->type == MS_MSG_FEATURE_GET)
        return in->msg.type == MS_MSG_FEATURE_DATA &&
               in->msg.feature_data.hash == req->feature_get.hash;
    if (req->type == MS_MSG_KV_GET)
        return in->msg.type == MS_MSG_KV_DATA && strcmp(in->msg.kv_data.key, req->kv_get.key) == 0;
    return false;
}

int ms_actor_pull(ms_actor *a, const char *ep, const ms_msg *req, ms_msg_type want,
                  ms_frames_in *in, char *err, size_t err_size) {
    ms_actor_peer *p = s_peer(a, ep);
    if (!p) return ms_errf(err, err_size, "cannot connect to %s: %s", ep, zmq_strerror(errno));
    char why[MS_ERR_SIZE];
    if (ms_frames_send(p->sock, NULL, req, NULL, 0, why, sizeof why) != 0) {
        zsock_destroy(&p->sock);
        return ms_errf(err, err_size, "send: %s", why);
    }
    const size_t limit = (size_t)ms_wire_max_frame_bytes(want) + MS_WIRE_MAX_HEADER_BYTES;
    const int64_t deadline = ms_actor_now_ms() + a->cfg.pull_timeout_ms;
    for (;;) {
        const int64_t left = deadline - ms_actor_now_ms();
        if (left <= 0) {
            zsock_destroy(&p->sock); /* a late reply must not answer the next request */
            return ms_errf(err, err_size, "no reply within %d ms", a->cfg.pull_timeout_ms);
        }
        zmq_pollitem_t it[2] = {{zsock_resolve(p->sock), 0, ZMQ_POLLIN, 0},
                                {zsock_resolve(a->data), 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(it, 2, (long)left);
        if (rc < 0) {
            if (errno == EINTR) continue;
            zsock_destroy(&p->sock);
            return ms_errf(err, err_size, "poll: %s", zmq_strerror(errno));
        }
        if (it[1].revents & ZMQ_POLLIN) ms_actor_serve_data(a);
        if (!(it[0].revents & ZMQ_POLLIN)) continue;
        const ms_wire_status st = ms_frames_recv(p->sock, in, limit, why, sizeof why);
        if (st == MS_WIRE_TIMEOUT) continue;
        if (st != MS_WIRE_OK) {
            zsock_destroy(&p->sock);
            return ms_errf(err, err_size, "%s reply: %s", ms_wire_status_name(st), why);
        }
        if (in->msg.type == MS_MSG_DATA_ERROR)
            return ms_errf(err, err_size, "%s: %s", in->msg.data_error.code,
                           in->msg.data_error.message);
        if (in->msg.type == want && s_answers(req, in)) return 0;
        ms_debug("actor %s: skipping a stale %s from %s", a->cfg.id, ms_msg_type_name(in->msg.type),
                 ep);
    }
}

/* ---- the broker socket ------------------------------------------------------------------ */

static void s_on_ctrl(ms_actor *a) {
    ms_frames_in in;
    ms_frames_in_init(&in);
    char err[MS_ERR_SIZE];
    const ms_wire_status st = ms_frames_recv(a->ctrl, &in, MS_ACTOR_CTRL_MSG_MAX, err, sizeof err);
    if (st == MS_WIRE_MALFORMED) {
        ms_warn("actor %s: malformed message from the broker: %s", a->cfg.id, err);
        if (in.peek.has_rid)
            ms_actor_task_error(a, in.peek.rid, in.peek.has_task ? in.peek.task : 0,
                                MS_CODE_BAD_REQUEST, "malformed: %s", err);
        ms_frames_in_fini(&in);
        return;
    }
    if (st != MS_WIRE_OK) {
        ms_frames_in_fini(&in);
        return;
    }
    const ms_msg *m = &in.msg;
    switch (m->type) {
    case MS_MSG_ENCODE_TASK:
        if (!a->enc)
            ms_actor_task_error(a, m->encode_task.rid, m->encode_task.task, MS_CODE_BAD_REQUEST,
                                "actor %s does not encode", a->cfg.id);
        else if (a->draining)
            ms_actor_task_error(a, m->encode_task.rid, m->encode_task.task, MS_CODE_DRAINING,
                                "actor %s is draining", a->cfg.id);
        else
            ms_encoder_on_task(a->enc, &in);
        break;
    case MS_MSG_PREFILL_TASK:
        if (!a->tg)
            ms_actor_task_error(a, m->prefill_task.rid, m->prefill_task.task, MS_CODE_BAD_REQUEST,
                                "actor %s does not prefill", a->cfg.id);
        else if (a->draining)
            ms_actor_task_error(a, m->prefill_task.rid, m->prefill_task.task, MS_CODE_DRAINING,
                                "actor %s is draining", a->cfg.id);
        else
            ms_textgen_on_prefill(a->tg, &in);
        break;
    case MS_MSG_DECODE_TASK:
        if (!a->tg)
            ms_actor_task_error(a, m->decode_task.rid, m->decode_task.task, MS_CODE_BAD_REQUEST,
                                "actor %s does not decode", a->cfg.id);
        else if (a->draining)
            ms_actor_task_error(a, m->decode_task.rid, m->decode_task.task, MS_CODE_DRAINING,
                                "actor %s is draining", a->cfg.id);
        else
            ms_textgen_on_decode(a->tg, &in);
        break;
    case MS_MSG_CANCEL_TASK:
        if (a->enc) ms_encoder_cancel(a->enc, m->cancel_task.rid);
        if (a->tg) ms_textgen_cancel(a->tg, m->cancel_task.rid);
        break;
    default:
        ms_warn("actor %s: unexpected %s from the broker (ignored)", a->cfg.id,
                ms_msg_type_name(m->type));
        break;
    }
    ms_frames_in_fini(&in);
}

/* Reads the monitor's events; a (re)connection to the broker sends Hello. */
static void s_on_monitor(ms_actor *a) {
    zmsg_t *ev = zmsg_recv(a->monitor);
    if (!ev) return;
    zframe_t *f = zmsg_first(ev);
    if (f && zframe_size(f) >= 2) {
        uint16_t event;
        memcpy(&event, zframe_data(f), sizeof event);
        if (event == ZMQ_EVENT_CONNECTED) s_send_hello(a);
    }
    zmsg_destroy(&ev);
}

/* ---- the main loop ------------------------------------------------------------------------ */

static void s_begin_drain(ms_actor *a) {
    a->draining = true;
    const int64_t now = ms_actor_now_ms();
    a->drain_deadline_ms = now + a->cfg.drain_ms;
    ms_info("actor %s: draining (at most %d ms)", a->cfg.id, a->cfg.drain_ms);
    ms_msg m;
    ms_msg_init(&m, MS_MSG_BYE);
    m.bye.actor = a->cfg.id;
    ms_actor_send(a, &m);
    a->info.state = MS_ACTOR_DRAINING;
    if (ms_registry_set_state(a->reg, &a->info, MS_ACTOR_DRAINING) != 0)
        ms_warn("actor %s: registry: %s", a->cfg.id, ms_registry_errstr(a->reg));
    if (a->enc) ms_encoder_hand_back(a->enc);
    if (a->tg) ms_textgen_hand_back(a->tg, false);
    s_publish_snapshot(a);
}

/* True when a drain may end: no work left, and data kept for pullers has
 * been pulled (or waited for long enough). Hands running work back at the
 * deadline. */
static bool s_drained(ms_actor *a, int64_t now) {
    if (a->tg && now >= a->drain_deadline_ms) ms_textgen_hand_back(a->tg, true);
    if (a->tg) ms_textgen_hand_back(a->tg, false); /* tasks that were waiting for admission */
    if ((a->enc && ms_encoder_busy(a->enc)) || (a->tg && ms_textgen_busy(a->tg))) return false;
    const int64_t data_deadline =
        a->drain_deadline_ms - a->cfg.drain_ms + MS_MIN(a->cfg.drain_ms, S_DRAIN_DATA_MS);
    return ms_featstore_pinned(a->store) == 0 || now >= data_deadline;
}

int ms_actor_run(ms_actor *a) {
    s_private *p = s_priv(a);
    int rc = 0;
    int64_t next_expire = 0;
    for (;;) {
        int64_t now = ms_actor_now_ms();
        if (s_stop_requested && !a->draining) s_begin_drain(a);
        const bool busy = (a->enc && ms_encoder_busy(a->enc)) || (a->tg && ms_textgen_busy(a->tg));
        zmq_pollitem_t it[3] = {{zsock_resolve(a->ctrl), 0, ZMQ_POLLIN, 0},
                                {zsock_resolve(a->data), 0, ZMQ_POLLIN, 0},
                                {zsock_resolve(a->monitor), 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(it, 3, busy ? 0 : MS_ACTOR_IDLE_POLL_MS);
        if (n < 0) {
            if (errno == EINTR) continue;
            ms_error("actor %s: poll: %s", a->cfg.id, zmq_strerror(errno));
            rc = -1;
            break;
        }
        if (it[2].revents & ZMQ_POLLIN) s_on_monitor(a);
        for (int k = 0; k < MS_ACTOR_MSGS_PER_TURN && (zsock_events(a->ctrl) & ZMQ_POLLIN); k++)
            s_on_ctrl(a);
        for (int k = 0; k < MS_ACTOR_MSGS_PER_TURN && (zsock_events(a->data) & ZMQ_POLLIN); k++)
            ms_actor_serve_data(a);

        if (a->enc) ms_encoder_work(a->enc);
        if (a->tg) ms_textgen_work(a->tg);

        now = ms_actor_now_ms();
        if (now >= next_expire) {
            ms_featstore_expire(a->store, now);
            next_expire = now + MS_REGISTRY_HEARTBEAT_MS;
        }
        if (now >= p->next_snapshot_ms) {
            s_publish_snapshot(a);
            p->next_snapshot_ms = now + S_SNAPSHOT_EVERY_MS;
        }
        if (a->draining && s_drained(a, now)) break;
    }
    /* flush the final state, stop heartbeating, leave the registry */
    s_publish_snapshot(a);
    s_beat_stop(a);
    if (ms_registry_deregister(a->reg, a->cfg.id) != 0)
        ms_warn("actor %s: deregister: %s", a->cfg.id, ms_registry_errstr(a->reg));
    a->info.id[0] = '\0'; /* done: destroy need not deregister again */
    ms_info("actor %s: stopped (%" PRId64 " tasks done)", a->cfg.id, a->info.tasks_done);
    return rc;
}
