/* http.c — the gateway's HTTP server on libmicrohttpd (http.h). */
#define _GNU_SOURCE /* POLLRDHUP */
#include "http.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "link.h"
#include "ms_common.h"
#include "observe.h"
#include "registry.h"

#define S_HOST_MAX      256 /* bytes of a host name */
#define S_ID_PREFIX     16  /* bytes of the per-process request id prefix */
#define S_CLIENT_CLOSED 499 /* status counted when the client left before its answer */

struct ms_gw_server {
    struct MHD_Daemon *daemon;
    int port;    /* bound TCP port */
    char *model; /* model name served */
    char **keys; /* API keys (n_keys) */
    size_t n_keys;
    ms_oai_limits limits;
    uint32_t required_stages; /* MS_STAGES_* mask /health requires */
    unsigned max_inflight;
    int64_t created;             /* Unix seconds: the model's "created" */
    char id_prefix[S_ID_PREFIX]; /* request ids are "<prefix>-<seq>" */
    atomic_uint_fast64_t seq;
    atomic_bool stopping;
    ms_gw_link *link;
    ms_gw_observe *obs;
    ms_registry *reg; /* not thread-safe: reg_mu */
    pthread_mutex_t reg_mu;
};

void ms_gw_config_default(ms_gw_config *c) {
    memset(c, 0, sizeof *c);
    c->listen = MS_GW_DEFAULT_LISTEN;
    c->broker = MS_GW_DEFAULT_BROKER;
    c->redis = MS_GW_DEFAULT_REDIS;
    ms_oai_limits_default(&c->limits);
    c->required_stages = MS_STAGES_ALL;
    c->max_connections = MS_GW_DEFAULT_MAX_CONNECTIONS;
    c->max_inflight = MS_GW_DEFAULT_MAX_INFLIGHT;
}

int ms_gw_split_host_port(const char *s, char *host, size_t host_size, int *port, char *err,
                          size_t err_size) {
    const char *colon = NULL, *h = s;
    size_t hl;
    if (!s) return ms_errf(err, err_size, "no address");
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') return ms_errf(err, err_size, "'%s' is not [HOST]:PORT", s);
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) return ms_errf(err, err_size, "'%s' is not HOST:PORT", s);
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= host_size) return ms_errf(err, err_size, "bad host in '%s'", s);
    char *end = NULL;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || p < 0 || p > 65535)
        return ms_errf(err, err_size, "bad port in '%s'", s);
    memcpy(host, h, hl);
    host[hl] = 0;
    *port = (int)p;
    return 0;
}

/* ---- connection state -------------------------------------------------------------- */
typedef enum s_route {
    R_CHAT,
    R_COMPLETIONS,
    R_MODELS,
    R_MODEL,
    R_HEALTH,
    R_METRICS,
    R_UNKNOWN
} s_route;

static const char *const s_route_label[] = {"chat",   "completions", "models", "models",
                                            "health", "metrics",     "other"};

/* One HTTP request (MHD's con_cls). */
typedef struct s_conn {
    s_route route;
    const char *model_arg; /* R_MODEL: the name after /v1/models/ (points into MHD's url) */
    bool answered;         /* a response was queued before the body was read */
    char *body;            /* request body (len of cap bytes) */
    size_t len, cap;
    bool too_large; /* the body passed the limit (the rest is dropped) */
    int64_t t0_ns;  /* first call */
} s_conn;

static bool s_client_gone(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
    if (p.revents & POLLIN) {
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
    return false;
}

static int s_conn_fd(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* ---- replies ----------------------------------------------------------------------- */
/* Queues body (malloc'd; MHD frees it) with status. */
static enum MHD_Result s_reply(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c,
                               int status, const char *type, char *body) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    ms_gw_observe_http(g->obs, s_route_label[c->route], status);
    ms_debug("gateway: %s %d (%.1f ms)", s_route_label[c->route], status,
             (double)(ms_now_ns() - c->t0_ns) / 1e6);
    return rc;
}

static enum MHD_Result s_reply_json(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c,
                                    int status, char *json) {
    return s_reply(g, conn, c, status, "application/json", json);
}

static enum MHD_Result s_reply_error(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c,
                                     const ms_oai_error *e) {
    if (e->status >= 500)
        ms_warn("gateway: %s answered %d: %s", s_route_label[c->route], e->status, e->message);
    return s_reply_json(g, conn, c, e->status, ms_oai_error_json(e));
}

static enum MHD_Result s_fail(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c,
                              int status, const char *param, const char *code, const char *msg) {
    ms_oai_error e;
    ms_oai_errorf(&e, status, param, code, "%s", msg);
    return s_reply_error(g, conn, c, &e);
}

/* ---- auth ------------------------------------------------------------------------------ */
static bool s_key_equal(const char *a, size_t an, const char *b) {
    size_t bn = strlen(b);
    unsigned char diff = an != bn;
    for (size_t i = 0; i < an; i++)
        diff |= (unsigned char)(a[i] ^ b[i % (bn ? bn : 1)]);
    return diff == 0;
}

/* 0 if the request may use /v1, else fills e (401). */
static int s_auth(ms_gw_server *g, struct MHD_Connection *conn, ms_oai_error *e) {
    if (g->n_keys == 0) return 0;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return ms_oai_errorf(e, 401, NULL, "invalid_api_key",
                             "You didn't provide an API key. Send it in an Authorization header "
                             "using Bearer auth (Authorization: Bearer YOUR_KEY)");
    const char *k = h + 7;
    while (*k == ' ')
        k++;
    size_t kn = strlen(k);
    while (kn && k[kn - 1] == ' ')
        kn--;
    bool ok = false;
    for (size_t i = 0; i < g->n_keys; i++)
        ok |= s_key_equal(k, kn, g->keys[i]);
    if (!ok) return ms_oai_errorf(e, 401, NULL, "invalid_api_key", "Incorrect API key provided");
    return 0;
}

/* ---- routing ----------------------------------------------------------------------------- */
static s_route s_route_of(const char *url, const char **model_arg) {
    *model_arg = NULL;
    if (strcmp(url, "/v1/chat/completions") == 0) return R_CHAT;
    if (strcmp(url, "/v1/completions") == 0) return R_COMPLETIONS;
    if (strcmp(url, "/v1/models") == 0) return R_MODELS;
    if (strncmp(url, "/v1/models/", 11) == 0 && url[11]) {
        *model_arg = url + 11;
        return R_MODEL;
    }
    if (strcmp(url, "/health") == 0) return R_HEALTH;
    if (strcmp(url, "/metrics") == 0) return R_METRICS;
    return R_UNKNOWN;
}

/* Checks that can answer before the body is read: path, method, auth, a
 * declared Content-Length over the limit. 0: go on; else the error in e. */
static int s_early(ms_gw_server *g, struct MHD_Connection *conn, const char *url,
                   const char *method, s_conn *c, ms_oai_error *e) {
    bool post = c->route == R_CHAT || c->route == R_COMPLETIONS;
    if (c->route == R_UNKNOWN)
        return ms_oai_errorf(e, 404, NULL, "not_found", "no such endpoint: %s %.200s", method, url);
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, "HEAD") == 0;
    if (post ? strcmp(method, MHD_HTTP_METHOD_POST) != 0 : !get)
        return ms_oai_errorf(e, 405, NULL, "method_not_allowed", "%s does not take %s (use %s)",
                             url, method, post ? "POST" : "GET");
    if (strncmp(url, "/v1/", 4) == 0 && s_auth(g, conn, e) != 0) return -1;
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (post && cl) {
        unsigned long long n = strtoull(cl, NULL, 10);
        if (n > g->limits.max_body_bytes)
            return ms_oai_errorf(e, 413, NULL, "request_too_large",
                                 "request body is %llu bytes, limit %zu", n,
                                 g->limits.max_body_bytes);
    }
    return 0;
}

/* ---- /v1/models, /health, /metrics --------------------------------------------------------- */
static enum MHD_Result s_models(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c) {
    if (c->route == R_MODELS)
        return s_reply_json(g, conn, c, 200, ms_oai_models_json(g->model, g->created));
    if (strcmp(c->model_arg, g->model) != 0) {
        ms_oai_error e;
        ms_oai_errorf(&e, 404, "model", "model_not_found",
                      "The model '%.200s' does not exist (this server serves '%.200s')",
                      c->model_arg, g->model);
        return s_reply_error(g, conn, c, &e);
    }
    return s_reply_json(g, conn, c, 200, ms_oai_model_json(g->model, g->created));
}

/* Reads the registry (under reg_mu). 0 + *actors (free()) / *n, or -1 + err. */
static int s_registry(ms_gw_server *g, ms_actor_info **actors, int *n, char *err, size_t err_size) {
    pthread_mutex_lock(&g->reg_mu);
    int rc = ms_registry_list(g->reg, actors, n);
    if (rc != 0) ms_errf(err, err_size, "registry: %s", ms_registry_errstr(g->reg));
    pthread_mutex_unlock(&g->reg_mu);
    return rc;
}

static enum MHD_Result s_health(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c) {
    static const char *const names[] = {"encode", "prefill", "decode"};
    static const unsigned bits[] = {MS_STAGES_ENCODE, MS_STAGES_PREFILL, MS_STAGES_DECODE};
    char berr[MS_ERR_SIZE] = "", rerr[MS_ERR_SIZE] = "", reason[MS_ERR_SIZE] = "";
    ms_msg_stats st;
    bool broker_ok =
        ms_gw_link_stats(g->link, MS_GW_HEALTH_TIMEOUT_MS, &st, berr, sizeof berr) == 0;
    ms_actor_info *actors = NULL;
    int n = 0;
    bool reg_ok = s_registry(g, &actors, &n, rerr, sizeof rerr) == 0;
    ms_gw_observe_broker(g->obs, broker_ok ? &st : NULL);
    ms_gw_observe_registry(g->obs, actors, n, reg_ok);
    int up[3] = {0}, draining[3] = {0};
    for (int i = 0; i < n; i++)
        for (int s = 0; s < 3; s++)
            if (actors[i].stages & bits[s]) {
                if (actors[i].state == MS_ACTOR_UP)
                    up[s]++;
                else
                    draining[s]++;
            }
    free(actors);
    if (!broker_ok)
        snprintf(reason, sizeof reason, "broker unavailable: %s", berr);
    else if (!reg_ok)
        snprintf(reason, sizeof reason, "%s", rerr);
    else
        for (int s = 0; s < 3 && !reason[0]; s++)
            if ((g->required_stages & bits[s]) && up[s] == 0)
                snprintf(reason, sizeof reason, "no live actor serves the %s stage", names[s]);
    bool ok = reason[0] == 0;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", ok ? "ok" : "unavailable");
    if (!ok) cJSON_AddStringToObject(o, "reason", reason);
    cJSON_AddStringToObject(o, "model", g->model);
    cJSON *b = cJSON_AddObjectToObject(o, "broker");
    cJSON_AddBoolToObject(b, "ok", broker_ok);
    if (broker_ok) {
        cJSON_AddNumberToObject(b, "in_flight", (double)st.in_flight);
        cJSON_AddNumberToObject(b, "queued", (double)st.queued);
        cJSON_AddNumberToObject(b, "actors", (double)st.actors);
        cJSON_AddNumberToObject(b, "uptime_ms", st.uptime_ms);
    } else {
        cJSON_AddStringToObject(b, "error", berr);
    }
    cJSON *r = cJSON_AddObjectToObject(o, "registry");
    cJSON_AddBoolToObject(r, "ok", reg_ok);
    if (!reg_ok) cJSON_AddStringToObject(r, "error", rerr);
    cJSON *stages = cJSON_AddObjectToObject(o, "stages");
    for (int s = 0; s < 3; s++) {
        cJSON *x = cJSON_AddObjectToObject(stages, names[s]);
        cJSON_AddBoolToObject(x, "required", (g->required_stages & bits[s]) != 0);
        cJSON_AddNumberToObject(x, "up", up[s]);
        cJSON_AddNumberToObject(x, "draining", draining[s]);
    }
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!json) return MHD_NO;
    return s_reply_json(g, conn, c, ok ? 200 : 503, json);
}

static enum MHD_Result s_metrics(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c) {
    int waiting = 0, running = 0;
    ms_gw_link_counts(g->link, &waiting, &running);
    ms_gw_observe_requests(g->obs, waiting, running);
    char err[MS_ERR_SIZE];
    ms_msg_stats st;
    bool broker_ok = ms_gw_link_stats(g->link, MS_GW_METRICS_TIMEOUT_MS, &st, err, sizeof err) == 0;
    ms_gw_observe_broker(g->obs, broker_ok ? &st : NULL);
    ms_actor_info *actors = NULL;
    int n = 0;
    bool reg_ok = s_registry(g, &actors, &n, err, sizeof err) == 0;
    ms_gw_observe_registry(g->obs, actors, n, reg_ok);
    free(actors);
    /* the response counts itself before it renders, so a scrape sees its own request */
    ms_gw_observe_http(g->obs, s_route_label[c->route], 200);
    char *text;
    size_t len;
    ms_metrics_render(ms_gw_observe_metrics(g->obs), &text, &len);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result rc = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* ---- generation ------------------------------------------------------------------------------ */
/* A growing byte buffer with a read offset (SSE output). */
typedef struct s_out {
    char *p;
    size_t len, cap, off;
} s_out;

static void s_out_put(s_out *b, const char *s, size_t n) {
    if (b->off == b->len) b->off = b->len = 0;
    if (b->len + n > b->cap) {
        b->cap = MS_MAX(2 * b->cap, b->len + n);
        b->p = ms_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void s_out_take(s_out *b, char *s) { /* puts and frees s */
    if (!s) return;
    s_out_put(b, s, strlen(s));
    free(s);
}

/* An SSE stream (the MHD content reader's state). */
typedef struct s_stream {
    ms_gw_server *g;
    ms_gw_req *r;
    ms_oai_meta meta;
    int fd;         /* the client's socket */
    s_out out;      /* SSE bytes not yet given to MHD */
    bool finished;  /* [DONE] is in out */
    bool cancelled; /* the request was cancelled (the client left) */
} s_stream;

/* Adds what u brings to the stream: a text chunk; at the end the finish
 * chunk, the usage chunk (include_usage) or an error, then [DONE]. */
static void s_stream_feed(s_stream *s, ms_gw_update *u) {
    if (u->len) s_out_take(&s->out, ms_oai_sse_delta(&s->meta, u->text, u->len));
    free(u->text);
    u->text = NULL;
    if (!u->ended) return;
    if (u->final.type == MS_MSG_DONE) {
        s_out_take(&s->out, ms_oai_sse_finish(&s->meta, &u->final.done));
        if (s->meta.include_usage) s_out_take(&s->out, ms_oai_sse_usage(&s->meta, &u->final.done));
    } else {
        ms_oai_error e;
        ms_oai_error_from_broker(&e, u->final.error.code, u->final.error.message);
        s_out_take(&s->out, ms_oai_sse_error(&e));
    }
    s_out_put(&s->out, MS_OAI_SSE_DONE, strlen(MS_OAI_SSE_DONE));
    s->finished = true;
    ms_msg_fini(&u->final);
}

static ssize_t s_stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    s_stream *s = cls;
    (void)pos;
    for (;;) {
        if (s->out.off < s->out.len) {
            size_t n = MS_MIN(max, s->out.len - s->out.off);
            memcpy(buf, s->out.p + s->out.off, n);
            s->out.off += n;
            return (ssize_t)n;
        }
        if (s->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        if (atomic_load(&s->g->stopping) || s_client_gone(s->fd)) {
            ms_info("gateway: client of %s went away mid-stream: cancelling", ms_gw_req_id(s->r));
            ms_gw_req_cancel(s->r);
            s->cancelled = true;
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        ms_gw_update u;
        if (ms_gw_req_wait(s->r, MS_GW_WAIT_SLICE_MS, &u)) s_stream_feed(s, &u);
    }
}

static void s_stream_free(void *cls) {
    s_stream *s = cls;
    if (!s->finished && !s->cancelled) { /* MHD gave up on the client (a write failed) */
        ms_info("gateway: stream of %s ended early: cancelling", ms_gw_req_id(s->r));
        ms_gw_req_cancel(s->r);
    }
    ms_gw_req_release(&s->r);
    free(s->out.p);
    free(s);
}

/* Waits for news on r, checking the client between slices. 1 with *u, 0 if
 * the client went away (r is then cancelled). */
static int s_wait(ms_gw_server *g, ms_gw_req *r, int fd, ms_gw_update *u) {
    for (;;) {
        if (atomic_load(&g->stopping) || s_client_gone(fd)) {
            ms_info("gateway: client of %s went away: cancelling", ms_gw_req_id(r));
            ms_gw_req_cancel(r);
            return 0;
        }
        if (ms_gw_req_wait(r, MS_GW_WAIT_SLICE_MS, u)) return 1;
    }
}

static enum MHD_Result s_error_of(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c,
                                  const ms_msg *final) {
    ms_oai_error e;
    ms_oai_error_from_broker(&e, final->error.code, final->error.message);
    return s_reply_error(g, conn, c, &e);
}

/* Non-streaming: wait for the end, answer with the whole text. */
static enum MHD_Result s_whole(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c,
                               ms_gw_req *r, const ms_oai_meta *meta, int fd) {
    s_out text = {0};
    ms_gw_update u;
    for (;;) {
        if (!s_wait(g, r, fd, &u)) {
            free(text.p);
            ms_gw_req_release(&r);
            ms_gw_observe_http(g->obs, s_route_label[c->route], S_CLIENT_CLOSED);
            return MHD_NO; /* closes the connection */
        }
        if (u.len) s_out_put(&text, u.text, u.len);
        free(u.text);
        if (u.ended) break;
    }
    ms_gw_req_release(&r);
    enum MHD_Result rc;
    if (u.final.type == MS_MSG_DONE)
        rc = s_reply_json(
            g, conn, c, 200,
            ms_oai_render_response(meta, text.p ? text.p : "", text.len, &u.final.done));
    else
        rc = s_error_of(g, conn, c, &u.final);
    ms_msg_fini(&u.final);
    free(text.p);
    return rc;
}

/* Streaming: wait for the first token (so that a request the broker
 * rejects still gets its HTTP status), then answer 200 with an SSE stream. */
static enum MHD_Result s_stream_start(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c,
                                      ms_gw_req *r, const ms_oai_meta *meta, int fd) {
    s_stream *s = ms_xcalloc(1, sizeof *s);
    s->g = g;
    s->r = r;
    s->meta = *meta;
    s->fd = fd;
    s_out_take(&s->out, ms_oai_sse_start(meta));
    ms_gw_update u;
    for (;;) {
        if (!s_wait(g, r, fd, &u)) {
            s->cancelled = true;
            s_stream_free(s);
            ms_gw_observe_http(g->obs, s_route_label[c->route], S_CLIENT_CLOSED);
            return MHD_NO;
        }
        if (u.ended && u.final.type == MS_MSG_ERROR && u.tokens == 0) {
            enum MHD_Result rc = s_error_of(g, conn, c, &u.final);
            ms_msg_fini(&u.final);
            free(u.text);
            s->finished = true;
            s_stream_free(s);
            return rc;
        }
        bool first = u.tokens > 0 || u.ended;
        s_stream_feed(s, &u);
        if (first) break;
    }
    struct MHD_Response *resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, MS_GW_STREAM_BLOCK, s_stream_read, s, s_stream_free);
    if (!resp) {
        s_stream_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    enum MHD_Result rc = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp); /* MHD holds it (and s) until the stream ends */
    ms_gw_observe_http(g->obs, s_route_label[c->route], 200);
    return rc;
}

static enum MHD_Result s_generate(ms_gw_server *g, struct MHD_Connection *conn, const s_conn *c) {
    ms_oai_kind kind = c->route == R_CHAT ? MS_OAI_CHAT : MS_OAI_COMPLETION;
    ms_oai_error e;
    if (c->too_large) {
        ms_oai_errorf(&e, 413, NULL, "request_too_large", "request body is over %zu bytes",
                      g->limits.max_body_bytes);
        return s_reply_error(g, conn, c, &e);
    }
    ms_oai_request req;
    if (ms_oai_parse(kind, c->body ? c->body : "", c->len, &g->limits, &req, &e) != 0)
        return s_reply_error(g, conn, c, &e);
    if (strcmp(req.model, g->model) != 0) {
        ms_oai_errorf(&e, 404, "model", "model_not_found",
                      "The model '%.200s' does not exist (this server serves '%.200s')", req.model,
                      g->model);
        ms_oai_request_fini(&req);
        return s_reply_error(g, conn, c, &e);
    }
    int waiting = 0, running = 0;
    ms_gw_link_counts(g->link, &waiting, &running);
    if ((unsigned)(waiting + running) >= g->max_inflight) {
        ms_oai_errorf(&e, 429, NULL, "overloaded",
                      "the gateway has %d requests in flight (limit %u): retry later",
                      waiting + running, g->max_inflight);
        ms_oai_request_fini(&req);
        return s_reply_error(g, conn, c, &e);
    }
    char id[MS_WIRE_MAX_ID_BYTES];
    snprintf(id, sizeof id, "%s-%" PRIu64, g->id_prefix, (uint64_t)atomic_fetch_add(&g->seq, 1));
    req.msg.submit.id = ms_xstrdup(id);
    {
        /* what the broker would refuse to decode is refused here, as a 400 */
        uint8_t *hdr = NULL;
        size_t hdr_len = 0;
        char werr[MS_ERR_SIZE];
        req.msg.submit.n_images = req.n_images;
        req.msg.submit.has_n_images = req.n_images > 0;
        if (ms_wire_encode_buf(&req.msg, &hdr, &hdr_len, werr, sizeof werr) != 0) {
            ms_oai_errorf(&e, 400, NULL, "invalid_value", "the request cannot be sent: %s", werr);
            ms_oai_request_fini(&req);
            return s_reply_error(g, conn, c, &e);
        }
        free(hdr);
    }
    bool stream = req.stream;
    ms_oai_meta meta;
    ms_oai_meta_init(&meta, kind, id, g->model, req.include_usage);
    ms_debug("gateway: %s %s: %u images, stream %d", s_route_label[c->route], id, req.n_images,
             stream);
    ms_gw_req *r = ms_gw_link_submit(g->link, &req.msg, req.images, req.image_len, req.n_images);
    ms_oai_request_fini(&req);
    int fd = s_conn_fd(conn);
    return stream ? s_stream_start(g, conn, c, r, &meta, fd) : s_whole(g, conn, c, r, &meta, fd);
}

/* ---- MHD callbacks ------------------------------------------------------------------------------
 */
static enum MHD_Result s_access(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **con_cls) {
    ms_gw_server *g = cls;
    (void)version;
    s_conn *c = *con_cls;
    if (!c) {
        c = ms_xcalloc(1, sizeof *c);
        *con_cls = c;
        c->t0_ns = ms_now_ns();
        c->route = s_route_of(url, &c->model_arg);
        ms_oai_error e;
        if (s_early(g, conn, url, method, c, &e) != 0) {
            c->answered = true;
            return s_reply_error(g, conn, c, &e);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (c->answered || c->too_large) return MHD_YES;
        if (c->len + n > g->limits.max_body_bytes) {
            c->too_large = true;
            free(c->body);
            c->body = NULL;
            c->len = c->cap = 0;
            return MHD_YES;
        }
        if (c->len + n + 1 > c->cap) {
            c->cap = MS_MAX(2 * c->cap, c->len + n + 1);
            c->body = ms_xrealloc(c->body, c->cap);
        }
        memcpy(c->body + c->len, upload, n);
        c->len += n;
        c->body[c->len] = 0;
        return MHD_YES;
    }
    if (c->answered) return MHD_YES;
    switch (c->route) {
    case R_CHAT:
    case R_COMPLETIONS:
        return s_generate(g, conn, c);
    case R_MODELS:
    case R_MODEL:
        return s_models(g, conn, c);
    case R_HEALTH:
        return s_health(g, conn, c);
    case R_METRICS:
        return s_metrics(g, conn, c);
    default:
        return s_fail(g, conn, c, 404, NULL, "not_found", "no such endpoint");
    }
}

static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)conn;
    (void)toe;
    s_conn *c = *con_cls;
    if (!c) return;
    free(c->body);
    free(c);
    *con_cls = NULL;
}

static void s_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char line[MS_ERR_SIZE];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = 0;
    if (strstr(line, "application error generating response"))
        ms_debug("gateway: http: %s", line); /* our own abort of a stream whose client left */
    else
        ms_warn("gateway: http: %s", line);
}

/* ---- lifecycle
 * ------------------------------------------------------------------------------------ */
static void s_free(ms_gw_server *g) {
    ms_gw_link_destroy(&g->link);
    ms_registry_destroy(&g->reg);
    ms_gw_observe_destroy(&g->obs);
    for (size_t i = 0; i < g->n_keys; i++)
        free(g->keys[i]);
    free(g->keys);
    free(g->model);
    pthread_mutex_destroy(&g->reg_mu);
    free(g);
}

ms_gw_server *ms_gw_server_new(const ms_gw_config *c, char *err, size_t err_size) {
    if (!c->model_name || !*c->model_name) {
        ms_errf(err, err_size, "a model name is required (--model-name)");
        return NULL;
    }
    if (strlen(c->model_name) > MS_WIRE_MAX_NAME_BYTES * 4) {
        ms_errf(err, err_size, "model name is longer than %d bytes", MS_WIRE_MAX_NAME_BYTES * 4);
        return NULL;
    }
    if (c->n_api_keys > MS_GW_MAX_API_KEYS) {
        ms_errf(err, err_size, "%zu API keys, at most %d", c->n_api_keys, MS_GW_MAX_API_KEYS);
        return NULL;
    }
    for (size_t i = 0; i < c->n_api_keys; i++)
        if (!c->api_keys[i] || !*c->api_keys[i] ||
            strlen(c->api_keys[i]) > MS_GW_MAX_API_KEY_BYTES ||
            strpbrk(c->api_keys[i], " \t\r\n")) {
            ms_errf(err, err_size, "API key %zu is empty, longer than %d bytes or has spaces",
                    i + 1, MS_GW_MAX_API_KEY_BYTES);
            return NULL;
        }
    if (c->limits.max_images > MS_WIRE_MAX_IMAGES ||
        c->limits.max_image_bytes > MS_WIRE_MAX_IMAGE_BYTES || c->limits.max_body_bytes == 0 ||
        c->limits.max_pixels == 0 || c->max_inflight == 0 || c->max_connections == 0) {
        ms_errf(err, err_size, "limits out of range (images <= %d, image bytes <= %u, others > 0)",
                MS_WIRE_MAX_IMAGES, MS_WIRE_MAX_IMAGE_BYTES);
        return NULL;
    }
    if (ms_fetch_enabled(&c->limits.fetch)) { /* remote image URLs (fetch.h) */
        if (c->limits.fetch.timeout_ms == 0 ||
            c->limits.fetch.timeout_ms > MS_FETCH_MAX_TIMEOUT_MS) {
            ms_errf(err, err_size, "fetch timeout must be 1..%d ms", MS_FETCH_MAX_TIMEOUT_MS);
            return NULL;
        }
        if (ms_fetch_global_init(err, err_size) != 0) return NULL; /* before any thread */
    }
    char lhost[S_HOST_MAX], rhost[S_HOST_MAX];
    int lport, rport;
    if (ms_gw_split_host_port(c->listen, lhost, sizeof lhost, &lport, err, err_size) != 0 ||
        ms_gw_split_host_port(c->redis, rhost, sizeof rhost, &rport, err, err_size) != 0)
        return NULL;

    ms_gw_server *g = ms_xcalloc(1, sizeof *g);
    pthread_mutex_init(&g->reg_mu, NULL);
    g->model = ms_xstrdup(c->model_name);
    g->n_keys = c->n_api_keys;
    g->keys = ms_xcalloc(MS_MAX(c->n_api_keys, 1), sizeof *g->keys);
    for (size_t i = 0; i < c->n_api_keys; i++)
        g->keys[i] = ms_xstrdup(c->api_keys[i]);
    g->limits = c->limits;
    g->required_stages = c->required_stages;
    g->max_inflight = c->max_inflight;
    g->created = (int64_t)time(NULL);
    int64_t salt = ms_now_ns() ^ ((int64_t)getpid() << 32);
    snprintf(g->id_prefix, sizeof g->id_prefix, "gw%08x",
             (unsigned)(ms_hash64(&salt, sizeof salt) & 0xffffffffu));
    atomic_init(&g->seq, 1);
    atomic_init(&g->stopping, false);

    g->obs = ms_gw_observe_new(err, err_size);
    if (!g->obs) goto fail;
    g->reg = ms_registry_new(rhost, rport, c->prefix, err, err_size);
    if (!g->reg) goto fail;
    g->link = ms_gw_link_new(c->broker, ms_gw_observe_event, g->obs, err, err_size);
    if (!g->link) goto fail;

    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", lport);
    int gai = getaddrinfo(lhost, port_s, &hints, &ai);
    if (gai != 0 || !ai) {
        ms_errf(err, err_size, "cannot resolve listen address '%s': %s", c->listen,
                gai_strerror(gai));
        goto fail;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    g->daemon = MHD_start_daemon(
        flags, (uint16_t)lport, NULL, NULL, s_access, g, MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, g,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)c->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)MS_GW_IDLE_TIMEOUT_S,
        MHD_OPTION_NOTIFY_COMPLETED, s_completed, g, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!g->daemon) {
        ms_errf(err, err_size, "cannot listen on %s (in use, or not a local address?)", c->listen);
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(g->daemon, MHD_DAEMON_INFO_BIND_PORT);
    g->port = di ? di->port : lport;
    ms_info("gateway: listening on %s (port %d), broker %s, registry %s, model '%s'%s", lhost,
            g->port, c->broker, c->redis, g->model, g->n_keys ? ", API keys required" : "");
    return g;
fail:
    s_free(g);
    return NULL;
}

int ms_gw_server_port(const ms_gw_server *g) {
    return g->port;
}

void ms_gw_server_destroy(ms_gw_server **self_p) {
    if (!self_p || !*self_p) return;
    ms_gw_server *g = *self_p;
    atomic_store(&g->stopping, true);
    if (g->daemon) MHD_stop_daemon(g->daemon);
    s_free(g);
    *self_p = NULL;
}
