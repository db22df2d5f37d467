/* test_gateway.c — modserve-gateway's HTTP server (gateway/http.h) end to
 * end against an in-test broker: a ROUTER socket speaking the wire protocol
 * (schemas/frames.h), scripted by the request's text. Real sockets, real
 * libmicrohttpd, a raw HTTP client: routing, API keys, limits, broker
 * errors as HTTP statuses, SSE streaming with usage, a client that hangs up
 * (mid-stream and while waiting) getting its request cancelled at the
 * broker, a broker that is down (503 after the connect grace) and one that
 * restarts mid-request (its requests fail instead of hanging). */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "frames.h"
#include "gateway/http.h"
#include "gateway/link.h"
#include "gateway/openai.h"
#include "ms_common.h"
#include "ms_test.h"

#define T_TIMEOUT 60 /* every test of this file (see ms_test.h) */

/* ---- helpers ------------------------------------------------------------------------- */
static uint8_t *s_file(const char *name, size_t *len) {
    char path[1024], err[MS_ERR_SIZE];
    snprintf(path, sizeof path, "%s/tests/data/images/%s", ms_test_source_dir(), name);
    uint8_t *d = ms_read_file(path, 64u << 20, len, err, sizeof err);
    cr_assert(d, "%s", err);
    return d;
}

static char *s_b64(const uint8_t *d, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = ms_xmalloc(4 * ((n + 2) / 3) + 1), *p = o;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0) |
                     (i + 2 < n ? d[i + 2] : 0);
        *p++ = tab[v >> 18 & 63];
        *p++ = tab[v >> 12 & 63];
        *p++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *p++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *p = 0;
    return o;
}

/* "data:<mime>;base64,<file>" */
static char *s_data_url(const char *file, const char *mime) {
    size_t n;
    uint8_t *d = s_file(file, &n);
    char *b = s_b64(d, n);
    char *url = ms_xmalloc(strlen(b) + 64);
    sprintf(url, "data:%s;base64,%s", mime, b);
    free(d);
    free(b);
    return url;
}

static cJSON *s_json(const char *s) {
    cJSON *j = cJSON_Parse(s);
    cr_assert(j, "not JSON: %s", s);
    return j;
}

static const char *s_str(const cJSON *o, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, path);
    cr_assert(cJSON_IsString(v), "%s is not a string", path);
    return v->valuestring;
}

static ms_msg_done s_done(const char *finish) {
    ms_msg_done d;
    memset(&d, 0, sizeof d);
    d.finish = (char *)finish;
    d.prompt_tokens = 12;
    d.image_tokens = 4;
    d.completion_tokens = 3;
    d.queue_ms = 0.5;
    d.encode_ms = 2.25;
    d.e2e_ms = 9.0000001;
    return d;
}

/* ---- the HTTP server against an in-test broker --------------------------------------------- */
typedef struct s_broker {
    zsock_t *sock;
    char endpoint[64];
    pthread_t thread;
    volatile bool stop;
    pthread_mutex_t mu;
    int submits, cancels, stats; /* messages received */
    int64_t t0_ns;               /* start: Stats.uptime_ms counts from here */
    char last_id[MS_WIRE_MAX_ID_BYTES + 1];
    char last_content[256]; /* last message content (or prompt) */
    uint32_t last_images;
    bool last_raw;
} s_broker;

typedef struct s_stream_req {
    zframe_t *rid;
    char id[MS_WIRE_MAX_ID_BYTES + 1];
    int sent;
    bool cancelled;
    int64_t next_ns;
} s_stream_req;

static void s_send(s_broker *b, zframe_t *rid, ms_msg *m) {
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_frames_send(b->sock, rid, m, NULL, 0, err, sizeof err), 0, "%s", err);
}

static void s_send_token(s_broker *b, zframe_t *rid, const char *id, uint64_t index,
                         const char *text) {
    ms_msg m;
    ms_msg_init(&m, MS_MSG_TOKEN);
    int32_t tok = (int32_t)(100 + index);
    m.token.id = (char *)id;
    m.token.index = index;
    m.token.ids = &tok;
    m.token.n_ids = 1;
    m.token.text = (char *)text;
    s_send(b, rid, &m);
}

static void s_send_done(s_broker *b, zframe_t *rid, const char *id, const char *finish,
                        uint64_t n) {
    ms_msg m;
    ms_msg_init(&m, MS_MSG_DONE);
    m.done = s_done(finish);
    m.done.id = (char *)id;
    m.done.completion_tokens = n;
    s_send(b, rid, &m);
}

static void s_send_error(s_broker *b, zframe_t *rid, const char *id, const char *code,
                         const char *message) {
    ms_msg m;
    ms_msg_init(&m, MS_MSG_ERROR);
    m.error.id = (char *)id;
    m.error.code = (char *)code;
    m.error.message = (char *)message;
    s_send(b, rid, &m);
}

/* Scripted by the content of the last message: "overload" / "bad" → that
 * Error; "hang" → a token every 20 ms until cancelled (then Done cancel);
 * anything else → "Hel" "lo" ", world" and Done eog. */
static void *s_broker_run(void *arg) {
    s_broker *b = arg;
    s_stream_req streams[8];
    int n_streams = 0;
    char err[MS_ERR_SIZE];
    zpoller_t *poller = zpoller_new(b->sock, NULL);
    while (!b->stop) {
        zpoller_wait(poller, 10);
        while (zsock_events(b->sock) & ZMQ_POLLIN) {
            ms_frames_in in;
            ms_frames_in_init(&in);
            if (ms_frames_recv(b->sock, &in, 0, err, sizeof err) != MS_WIRE_OK) {
                ms_frames_in_fini(&in);
                continue;
            }
            ms_msg *m = &in.msg;
            if (m->type == MS_MSG_STATS_REQUEST) {
                pthread_mutex_lock(&b->mu);
                b->stats++;
                pthread_mutex_unlock(&b->mu);
                ms_msg s;
                ms_msg_init(&s, MS_MSG_STATS);
                s.stats.actors = 3;
                s.stats.uptime_ms = (double)(ms_now_ns() - b->t0_ns) / 1e6;
                s.stats.in_flight = (uint64_t)n_streams;
                s_send(b, in.routing_id, &s);
            } else if (m->type == MS_MSG_CANCEL) {
                pthread_mutex_lock(&b->mu);
                b->cancels++;
                pthread_mutex_unlock(&b->mu);
                for (int i = 0; i < n_streams; i++)
                    if (strcmp(streams[i].id, m->cancel.id) == 0) streams[i].cancelled = true;
            } else if (m->type == MS_MSG_SUBMIT) {
                ms_msg_submit *s = &m->submit;
                const char *content =
                    s->has_prompt ? s->prompt : s->messages[s->n_messages - 1].content;
                pthread_mutex_lock(&b->mu);
                b->submits++;
                snprintf(b->last_id, sizeof b->last_id, "%s", s->id);
                snprintf(b->last_content, sizeof b->last_content, "%s", content);
                b->last_images = (uint32_t)in.n_payload;
                b->last_raw = s->has_raw && s->raw;
                pthread_mutex_unlock(&b->mu);
                if (strstr(content, "overload")) {
                    s_send_error(b, in.routing_id, s->id, "overloaded", "queues are full");
                } else if (strstr(content, "bad")) {
                    s_send_error(b, in.routing_id, s->id, "bad_request",
                                 "image 0 could not be decoded");
                } else {
                    ms_msg a;
                    ms_msg_init(&a, MS_MSG_ACCEPTED);
                    a.accepted.id = s->id;
                    a.accepted.rid = 1;
                    s_send(b, in.routing_id, &a);
                    if (strstr(content, "hang") && n_streams < 8) {
                        s_stream_req *r = &streams[n_streams++];
                        r->rid = zframe_dup(in.routing_id);
                        snprintf(r->id, sizeof r->id, "%s", s->id);
                        r->sent = 0;
                        r->cancelled = false;
                        r->next_ns = ms_now_ns();
                    } else {
                        s_send_token(b, in.routing_id, s->id, 0, "Hel");
                        s_send_token(b, in.routing_id, s->id, 1, "lo");
                        s_send_token(b, in.routing_id, s->id, 2, ", world");
                        s_send_done(b, in.routing_id, s->id, "eog", 3);
                    }
                }
            }
            ms_frames_in_fini(&in);
        }
        for (int i = 0; i < n_streams; i++) {
            s_stream_req *r = &streams[i];
            if (r->cancelled || r->sent >= 500) {
                s_send_done(b, r->rid, r->id, r->cancelled ? "cancel" : "length",
                            (uint64_t)r->sent);
                zframe_destroy(&r->rid);
                streams[i--] = streams[--n_streams];
            } else if (ms_now_ns() >= r->next_ns) {
                s_send_token(b, r->rid, r->id, (uint64_t)r->sent++, "tick ");
                r->next_ns = ms_now_ns() + 20000000;
            }
        }
    }
    for (int i = 0; i < n_streams; i++)
        zframe_destroy(&streams[i].rid);
    zpoller_destroy(&poller);
    return NULL;
}

/* Starts a broker at endpoint (NULL: a free port). */
static void s_broker_start_at(s_broker *b, const char *endpoint) {
    memset(b, 0, sizeof *b);
    pthread_mutex_init(&b->mu, NULL);
    b->t0_ns = ms_now_ns();
    b->sock = zsock_new(ZMQ_ROUTER);
    cr_assert(b->sock);
    int port = zsock_bind(b->sock, "%s", endpoint ? endpoint : "tcp://127.0.0.1:*");
    for (int i = 0; port < 0 && i < 100; i++) { /* the old socket may still hold the port */
        usleep(20000);
        port = zsock_bind(b->sock, "%s", endpoint);
    }
    cr_assert(port >= 0, "cannot bind %s", endpoint ? endpoint : "a port");
    if (endpoint)
        snprintf(b->endpoint, sizeof b->endpoint, "%s", endpoint);
    else
        snprintf(b->endpoint, sizeof b->endpoint, "tcp://127.0.0.1:%d", port);
    pthread_create(&b->thread, NULL, s_broker_run, b);
}

static void s_broker_start(s_broker *b) {
    s_broker_start_at(b, NULL);
}

static void s_broker_stop(s_broker *b) {
    b->stop = true;
    pthread_join(b->thread, NULL);
    zsock_destroy(&b->sock);
}

static int s_broker_count(s_broker *b, int *field) {
    pthread_mutex_lock(&b->mu);
    int v = *field;
    pthread_mutex_unlock(&b->mu);
    return v;
}

static ms_gw_server *s_gateway(s_broker *b, const char *const *keys, size_t n_keys,
                               size_t max_body) {
    ms_gw_config c;
    ms_gw_config_default(&c);
    c.listen = "127.0.0.1:0";
    c.broker = b->endpoint;
    c.redis = "127.0.0.1:1"; /* nothing there: /health must say so */
    c.model_name = "tiny";
    c.api_keys = keys;
    c.n_api_keys = n_keys;
    if (max_body) c.limits.max_body_bytes = max_body;
    char err[MS_ERR_SIZE];
    ms_gw_server *g = ms_gw_server_new(&c, err, sizeof err);
    cr_assert(g, "%s", err);
    cr_assert(ms_gw_server_port(g) > 0);
    return g;
}

static int s_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void s_write_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        if (k <= 0) return; /* the server may close early (413) */
        s += k;
        n -= (size_t)k;
    }
}

/* One HTTP/1.0 exchange (the server closes after it): *status and the body
 * (malloc'd). headers: extra header lines, each ending in \r\n. */
static char *s_http(int port, const char *method, const char *path, const char *headers,
                    const char *body, int *status) {
    int fd = s_connect(port);
    char head[1024];
    snprintf(head, sizeof head, "%s %s HTTP/1.0\r\nHost: x\r\n%sContent-Length: %zu\r\n\r\n",
             method, path, headers ? headers : "", body ? strlen(body) : 0);
    s_write_all(fd, head, strlen(head));
    if (body) s_write_all(fd, body, strlen(body));
    size_t cap = 4096, len = 0;
    char *buf = ms_xmalloc(cap);
    ssize_t k;
    while ((k = recv(fd, buf + len, cap - len - 1, 0)) > 0) {
        len += (size_t)k;
        if (len + 1 == cap) buf = ms_xrealloc(buf, cap *= 2);
    }
    buf[len] = 0;
    close(fd);
    *status = 0;
    sscanf(buf, "HTTP/1.%*d %d", status);
    char *b = strstr(buf, "\r\n\r\n");
    char *out = ms_xstrdup(b ? b + 4 : "");
    free(buf);
    return out;
}

/* The "error" object of an error body (asserts the OpenAI shape). */
static void s_assert_error(const char *body, int status, int want_status, const char *code) {
    cr_assert_eq(status, want_status, "status %d, body %s", status, body);
    cJSON *j = s_json(body);
    cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    cr_assert(cJSON_IsObject(e), "%s", body);
    cr_assert(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")));
    cr_assert(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "type")));
    cr_assert_not_null(cJSON_GetObjectItemCaseSensitive(e, "param"));
    if (code) cr_assert_str_eq(s_str(e, "code"), code, "%s", body);
    cJSON_Delete(j);
}

#define CHAT(content, extra)                                                                       \
    "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"" content "\"}]" extra "}"

Test(gateway, chat_and_completions, .timeout = T_TIMEOUT) {
    s_broker b;
    s_broker_start(&b);
    ms_gw_server *g = s_gateway(&b, NULL, 0, 0);
    int port = ms_gw_server_port(g), st;
    char *r = s_http(port, "POST", "/v1/chat/completions", NULL, CHAT("Hi", ""), &st);
    cr_assert_eq(st, 200, "%s", r);
    cJSON *j = s_json(r);
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    cr_assert_str_eq(s_str(cJSON_GetObjectItemCaseSensitive(c0, "message"), "content"),
                     "Hello, world");
    cr_assert_str_eq(s_str(c0, "finish_reason"), "stop");
    cJSON_Delete(j);
    free(r);
    cr_assert_eq(s_broker_count(&b, &b.submits), 1);
    cr_assert_str_eq(b.last_content, "Hi");
    cr_assert_not(b.last_raw);

    r = s_http(port, "POST", "/v1/completions", NULL,
               "{\"model\":\"tiny\",\"prompt\":\"Once\",\"max_tokens\":3}", &st);
    cr_assert_eq(st, 200, "%s", r);
    j = s_json(r);
    cr_assert_str_eq(s_str(j, "object"), "text_completion");
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    cr_assert_str_eq(s_str(c0, "text"), "Hello, world");
    cJSON_Delete(j);
    free(r);
    cr_assert(b.last_raw);

    /* an image reaches the broker as a payload frame */
    char *png = s_data_url("p_1x1.png", "image/png");
    char *body = ms_xmalloc(strlen(png) + 256);
    sprintf(body,
            "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
            "\"text\",\"text\":\"What?\"},{\"type\":\"image_url\",\"image_url\":{\"url\":"
            "\"%s\"}}]}]}",
            png);
    r = s_http(port, "POST", "/v1/chat/completions", NULL, body, &st);
    cr_assert_eq(st, 200, "%s", r);
    cr_assert_eq(b.last_images, 1);
    cr_assert_str_eq(b.last_content, "What?\n<image>");
    free(r);
    free(body);
    free(png);

    /* models */
    r = s_http(port, "GET", "/v1/models", NULL, NULL, &st);
    cr_assert_eq(st, 200);
    cr_assert(strstr(r, "\"id\":\"tiny\""), "%s", r);
    free(r);
    r = s_http(port, "GET", "/v1/models/tiny", NULL, NULL, &st);
    cr_assert_eq(st, 200);
    free(r);
    r = s_http(port, "GET", "/v1/models/huge", NULL, NULL, &st);
    s_assert_error(r, st, 404, "model_not_found");
    free(r);

    /* metrics moved */
    r = s_http(port, "GET", "/metrics", NULL, NULL, &st);
    cr_assert_eq(st, 200);
    cr_assert(strstr(r, "modserve:request_success_total{finished_reason=\"stop\"} 3\n"), "%s", r);
    cr_assert(strstr(r, "modserve:generation_tokens_total 9\n"), "%s", r);
    cr_assert(strstr(r, "modserve:broker_up 1\n"), "%s", r);
    cr_assert(strstr(r, "modserve:registry_up 0\n"), "%s", r);
    free(r);
    ms_gw_server_destroy(&g);
    s_broker_stop(&b);
}

Test(gateway, errors_and_auth, .timeout = T_TIMEOUT) {
    s_broker b;
    s_broker_start(&b);
    const char *keys[] = {"k1", "sk-second"};
    ms_gw_server *g = s_gateway(&b, keys, 2, 2000);
    int port = ms_gw_server_port(g), st;
    const char *auth = "Authorization: Bearer sk-second\r\n";
    char *r = s_http(port, "POST", "/v1/chat/completions", NULL, CHAT("Hi", ""), &st);
    s_assert_error(r, st, 401, "invalid_api_key");
    free(r);
    r = s_http(port, "POST", "/v1/chat/completions", "Authorization: Bearer nope\r\n",
               CHAT("Hi", ""), &st);
    s_assert_error(r, st, 401, "invalid_api_key");
    free(r);
    r = s_http(port, "GET", "/v1/models", "Authorization: Bearer k1\r\n", NULL, &st);
    cr_assert_eq(st, 200, "%s", r);
    free(r);
    /* /health and /metrics need no key; health is 503: no registry */
    r = s_http(port, "GET", "/health", NULL, NULL, &st);
    cr_assert_eq(st, 503, "%s", r);
    cJSON *j = s_json(r);
    cr_assert_str_eq(s_str(j, "status"), "unavailable");
    cr_assert(strstr(s_str(j, "reason"), "registry"), "%s", r);
    cr_assert(cJSON_IsTrue(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "broker"), "ok")));
    cJSON_Delete(j);
    free(r);

    r = s_http(port, "POST", "/v1/chat/completions", auth, CHAT("overload", ""), &st);
    s_assert_error(r, st, 429, "overloaded");
    free(r);
    r = s_http(port, "POST", "/v1/chat/completions", auth, CHAT("bad", ",\"stream\":true"), &st);
    s_assert_error(r, st, 400, "bad_request"); /* a stream that fails first still gets its status */
    free(r);
    r = s_http(port, "POST", "/v1/chat/completions", auth, CHAT("Hi", ",\"n\":3"), &st);
    s_assert_error(r, st, 400, "unsupported_parameter");
    free(r);
    r = s_http(port, "POST", "/v1/chat/completions", auth, "{not json", &st);
    s_assert_error(r, st, 400, "invalid_json");
    free(r);
    r = s_http(port, "POST", "/v1/chat/completions", auth,
               "{\"model\":\"big\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &st);
    s_assert_error(r, st, 404, "model_not_found");
    free(r);
    char big[2100];
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = 0;
    r = s_http(port, "POST", "/v1/chat/completions", auth, big, &st);
    s_assert_error(r, st, 413, "request_too_large");
    free(r);
    r = s_http(port, "GET", "/v1/chat/completions", auth, NULL, &st);
    s_assert_error(r, st, 405, NULL);
    free(r);
    r = s_http(port, "GET", "/v2/nothing", NULL, NULL, &st);
    s_assert_error(r, st, 404, "not_found");
    free(r);
    cr_assert_eq(s_broker_count(&b, &b.submits), 2); /* only overload and bad got through */
    ms_gw_server_destroy(&g);
    s_broker_stop(&b);
}

Test(gateway, stream_and_usage, .timeout = T_TIMEOUT) {
    s_broker b;
    s_broker_start(&b);
    ms_gw_server *g = s_gateway(&b, NULL, 0, 0);
    int st;
    char *r =
        s_http(ms_gw_server_port(g), "POST", "/v1/chat/completions", NULL,
               CHAT("Hi", ",\"stream\":true,\"stream_options\":{\"include_usage\":true}"), &st);
    cr_assert_eq(st, 200, "%s", r);
    /* split into events; rebuild the text */
    char text[256] = "";
    int events = 0, finish = 0, usage = 0;
    bool done = false;
    for (char *ev = r; *ev;) {
        char *end = strstr(ev, "\n\n");
        cr_assert(end, "unterminated event: %s", ev);
        *end = 0;
        cr_assert_not(done, "event after [DONE]");
        if (strcmp(ev, "data: [DONE]") == 0) {
            done = true;
        } else {
            char *j_text = ms_xstrdup(ev + 6);
            cJSON *j = s_json(j_text);
            free(j_text);
            events++;
            cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
            if (cJSON_GetArraySize(choices) == 0) {
                usage++;
                cr_assert_eq(cJSON_GetObjectItemCaseSensitive(
                                 cJSON_GetObjectItemCaseSensitive(j, "usage"), "completion_tokens")
                                 ->valueint,
                             3);
            } else {
                cJSON *c0 = cJSON_GetArrayItem(choices, 0);
                cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
                cJSON *content = cJSON_GetObjectItemCaseSensitive(delta, "content");
                if (cJSON_IsString(content)) strcat(text, content->valuestring);
                if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(c0, "finish_reason"))) finish++;
            }
            cJSON_Delete(j);
        }
        ev = end + 2;
    }
    cr_assert(done);
    cr_assert_str_eq(text, "Hello, world");
    cr_assert_eq(finish, 1);
    cr_assert_eq(usage, 1);
    cr_assert(events >= 4, "%d events", events);
    free(r);
    ms_gw_server_destroy(&g);
    s_broker_stop(&b);
}

Test(gateway, disconnect_cancels, .timeout = T_TIMEOUT) {
    s_broker b;
    s_broker_start(&b);
    ms_gw_server *g = s_gateway(&b, NULL, 0, 0);
    int port = ms_gw_server_port(g);
    for (int stream = 0; stream < 2; stream++) {
        int fd = s_connect(port);
        const char *body = stream ? CHAT("hang", ",\"stream\":true") : CHAT("hang", "");
        char head[256];
        snprintf(head, sizeof head,
                 "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n",
                 strlen(body));
        s_write_all(fd, head, strlen(head));
        s_write_all(fd, body, strlen(body));
        if (stream) { /* read until a token arrived, then hang up mid-stream */
            char buf[4096];
            size_t len = 0;
            while (!strstr(buf, "tick")) {
                ssize_t k = recv(fd, buf + len, sizeof buf - len - 1, 0);
                cr_assert(k > 0);
                len += (size_t)k;
                buf[len] = 0;
            }
        } else {
            usleep(100000); /* the request is generating (a token every 20 ms) */
        }
        int cancels = s_broker_count(&b, &b.cancels);
        close(fd);
        int64_t t0 = ms_now_ns();
        while (s_broker_count(&b, &b.cancels) == cancels && ms_now_ns() - t0 < 5000000000)
            usleep(10000);
        cr_assert_eq(s_broker_count(&b, &b.cancels), cancels + 1, "no cancel (stream %d)", stream);
        ms_info("test: cancel %.1f ms after the disconnect (stream %d)",
                (double)(ms_now_ns() - t0) / 1e6, stream);
    }
    /* the gateway saw both end as aborted and holds nothing */
    int64_t t0 = ms_now_ns();
    char *r = NULL;
    int st;
    for (;;) {
        r = s_http(port, "GET", "/metrics", NULL, NULL, &st);
        if (strstr(r, "finished_reason=\"abort\"} 2\n") || ms_now_ns() - t0 > 5000000000) break;
        free(r);
        usleep(20000);
    }
    cr_assert(strstr(r, "modserve:request_success_total{finished_reason=\"abort\"} 2\n"), "%s", r);
    cr_assert(strstr(r, "modserve:num_requests_running 0\n"), "%s", r);
    cr_assert(strstr(r, "modserve:num_requests_waiting 0\n"), "%s", r);
    /* the one that waited for a whole answer is counted as 499 (client closed) */
    cr_assert(strstr(r, "modserve:http_requests_total{endpoint=\"chat\",status=\"499\"} 1\n"), "%s",
              r);
    free(r);
    ms_gw_server_destroy(&g);
    s_broker_stop(&b);
}

Test(gateway, broker_down, .timeout = T_TIMEOUT) {
    /* a port nobody listens on: bound (so it is ours), never listened to */
    int hold = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    cr_assert_eq(bind(hold, (struct sockaddr *)&a, sizeof a), 0);
    getsockname(hold, (struct sockaddr *)&a, &alen);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", ntohs(a.sin_port));
    ms_gw_config c;
    ms_gw_config_default(&c);
    c.listen = "127.0.0.1:0";
    c.broker = ep;
    c.redis = "127.0.0.1:1";
    c.model_name = "tiny";
    char err[MS_ERR_SIZE];
    ms_gw_server *g = ms_gw_server_new(&c, err, sizeof err);
    cr_assert(g, "%s", err);
    int st;
    int64_t t0 = ms_now_ns();
    char *r =
        s_http(ms_gw_server_port(g), "POST", "/v1/chat/completions", NULL, CHAT("Hi", ""), &st);
    s_assert_error(r, st, 503, "unavailable");
    int64_t waited = ms_now_ns() - t0;
    cr_assert(waited >= (int64_t)MS_GW_CONNECT_GRACE_MS * 1000000 && waited < 3000000000,
              "a down broker must fail after the connect grace, not %.0f ms", waited / 1e6);
    free(r);
    r = s_http(ms_gw_server_port(g), "GET", "/health", NULL, NULL, &st);
    cr_assert_eq(st, 503);
    cr_assert(strstr(r, "broker unavailable"), "%s", r);
    free(r);
    ms_gw_server_destroy(&g);
    close(hold);

    /* bad configurations */
    c.model_name = NULL;
    cr_assert_null(ms_gw_server_new(&c, err, sizeof err));
    c.model_name = "m";
    c.listen = "nowhere";
    cr_assert_null(ms_gw_server_new(&c, err, sizeof err));
    c.listen = "127.0.0.1:0";
    const char *bad_key[] = {"has space"};
    c.api_keys = bad_key;
    c.n_api_keys = 1;
    cr_assert_null(ms_gw_server_new(&c, err, sizeof err));
    char host[64];
    int port;
    cr_assert_eq(ms_gw_split_host_port("[::1]:8000", host, sizeof host, &port, err, sizeof err), 0);
    cr_assert_str_eq(host, "::1");
    cr_assert_eq(port, 8000);
    cr_assert_eq(ms_gw_split_host_port("h:70000", host, sizeof host, &port, err, sizeof err), -1);
    cr_assert_eq(ms_gw_split_host_port(":80", host, sizeof host, &port, err, sizeof err), -1);
}

/* Replaces the broker by a fresh one on the same endpoint after a delay. */
typedef struct {
    s_broker *b;
    int delay_ms;
} s_restart;

static void *s_restart_run(void *arg) {
    s_restart *x = arg;
    usleep((useconds_t)x->delay_ms * 1000);
    char ep[64];
    snprintf(ep, sizeof ep, "%s", x->b->endpoint);
    s_broker_stop(x->b); /* its requests are lost with it */
    s_broker_start_at(x->b, ep);
    return NULL;
}

Test(gateway, broker_restart_fails_requests, .timeout = T_TIMEOUT) {
    s_broker b;
    s_broker_start(&b);
    ms_gw_server *g = s_gateway(&b, NULL, 0, 0);
    /* the old broker answers probes for 2.5 s (uptime > 2 s), then a new one
     * (uptime ~0) takes the endpoint: the request it never saw must fail */
    s_restart x = {&b, 2500};
    pthread_t th;
    pthread_create(&th, NULL, s_restart_run, &x);
    int st;
    int64_t t0 = ms_now_ns();
    char *r = s_http(ms_gw_server_port(g), "POST", "/v1/chat/completions", NULL,
                     CHAT("hang", ",\"max_tokens\":500"), &st);
    s_assert_error(r, st, 503, "unavailable");
    cr_assert(strstr(r, "restarted"), "%s", r);
    cr_assert(ms_now_ns() - t0 < 6000000000, "took %.0f ms", (ms_now_ns() - t0) / 1e6);
    free(r);
    pthread_join(th, NULL);
    /* and the new broker serves */
    r = s_http(ms_gw_server_port(g), "POST", "/v1/chat/completions", NULL, CHAT("Hi", ""), &st);
    cr_assert_eq(st, 200, "%s", r);
    free(r);
    ms_gw_server_destroy(&g);
    s_broker_stop(&b);
}
