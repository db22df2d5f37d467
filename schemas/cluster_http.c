/* cluster_http.c — the local cluster's gateway: its listen address and a
 * minimal HTTP/1.0 GET used to wait for /health (cluster.h). Kept apart from
 * cluster.c, which holds the cluster file and the process lifecycle. */
#include "cluster.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ms_common.h"

#define CH_RESPONSE_MAX 8192 /* bytes of an HTTP answer read, headers included */
#define CH_PROBE_MS     500  /* a connect that tells whether a port is taken, at most */

void ms_cluster_gateway_listen(const ms_cluster_conf *c, char *buf, size_t size) {
    snprintf(buf, size, "%s:%d", c->gateway_host, c->gateway_port);
}

/* The address a client connects to for a listen host: wildcards become the
 * loopback address of their family; brackets are dropped. */
static void s_connect_host(const char *host, char *out, size_t size) {
    char h[MS_CLUSTER_HOST_MAX];
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']')
        snprintf(h, sizeof(h), "%.*s", (int)(n - 2), host + 1);
    else
        snprintf(h, sizeof(h), "%s", host);
    if (h[0] == '\0' || strcmp(h, "0.0.0.0") == 0 || strcmp(h, "*") == 0)
        snprintf(out, size, "127.0.0.1");
    else if (strcmp(h, "::") == 0)
        snprintf(out, size, "::1");
    else
        snprintf(out, size, "%s", h);
}

void ms_cluster_gateway_url(const ms_cluster_conf *c, char *buf, size_t size) {
    char h[MS_CLUSTER_HOST_MAX];
    s_connect_host(c->gateway_host, h, sizeof(h));
    if (strchr(h, ':'))
        snprintf(buf, size, "http://[%s]:%d", h, c->gateway_port);
    else
        snprintf(buf, size, "http://%s:%d", h, c->gateway_port);
}

int ms_cluster_split_listen(const char *v, char *host, size_t host_size, int *port, char *err,
                            size_t err_size) {
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        return ms_errf(err, err_size, "expected HOST:PORT ([v6]:PORT), got '%s'", v);
    size_t hl = (size_t)(colon - v);
    if (hl >= host_size || hl >= MS_CLUSTER_HOST_MAX)
        return ms_errf(err, err_size, "host of '%s' too long", v);
    bool bracketed = v[0] == '[';
    if (bracketed && v[hl - 1] != ']')
        return ms_errf(err, err_size, "expected [v6]:PORT, got '%s'", v);
    for (size_t i = 0; i < hl; i++) {
        unsigned char ch = (unsigned char)v[i];
        bool ok = isalnum(ch) || ch == '.' || ch == '-' || ch == '_' ||
                  (bracketed && (ch == ':' || ch == '[' || ch == ']'));
        if (!ok) return ms_errf(err, err_size, "bad character in the host of '%s'", v);
    }
    char *end = NULL;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || *end != '\0' || p < 1 || p > 65535)
        return ms_errf(err, err_size, "port of '%s' is not in [1, 65535]", v);
    memcpy(host, v, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

bool ms_cluster_model_name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n >= MS_CLUSTER_MODEL_NAME_MAX) return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("._:/-", *p)) return false;
    return true;
}

static int64_t s_left_ms(int64_t deadline_ns) {
    int64_t left = (deadline_ns - ms_now_ns()) / 1000000;
    return left > 0 ? left : 0;
}

/* Connects a non-blocking socket to one address before the deadline. */
static int s_connect(const struct addrinfo *ai, int64_t deadline_ns) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) return -1;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return fd;
    if (errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int rc;
    do {
        rc = poll(&pfd, 1, (int)s_left_ms(deadline_ns));
    } while (rc < 0 && errno == EINTR);
    int so = 0;
    socklen_t len = sizeof(so);
    if (rc != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &len) != 0 || so != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

bool ms_cluster_gateway_port_busy(const ms_cluster_conf *c) {
    char h[MS_CLUSTER_HOST_MAX], port_s[16];
    s_connect_host(c->gateway_host, h, sizeof(h));
    snprintf(port_s, sizeof(port_s), "%d", c->gateway_port);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(h, port_s, &hints, &ai) != 0 || !ai) return false;
    int fd = -1;
    int64_t deadline = ms_now_ns() + (int64_t)CH_PROBE_MS * 1000000;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next)
        fd = s_connect(a, deadline);
    freeaddrinfo(ai);
    if (fd < 0) return false;
    close(fd);
    return true;
}

int ms_cluster_http_get(const char *host, int port, const char *path, int timeout_ms, int *status,
                        char *body, size_t body_size, char *err, size_t err_size) {
    int64_t deadline = ms_now_ns() + (int64_t)timeout_ms * 1000000;
    char h[MS_CLUSTER_HOST_MAX], port_s[16];
    s_connect_host(host, h, sizeof(h));
    snprintf(port_s, sizeof(port_s), "%d", port);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(h, port_s, &hints, &ai);
    if (gai != 0 || !ai) return ms_errf(err, err_size, "%s: %s", h, gai_strerror(gai));
    int fd = -1;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next)
        fd = s_connect(a, deadline);
    freeaddrinfo(ai);
    if (fd < 0) return ms_errf(err, err_size, "cannot connect to %s:%d", h, port);

    char req[512];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.0\r\nHost: %s:%d\r\nConnection: close\r\n\r\n", path, h, port);
    if (n < 0 || (size_t)n >= sizeof(req)) {
        close(fd);
        return ms_errf(err, err_size, "path too long");
    }
    size_t sent = 0;
    while (sent < (size_t)n) {
        ssize_t w = send(fd, req + sent, (size_t)n - sent, MSG_NOSIGNAL);
        if (w > 0) {
            sent += (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            if (poll(&pfd, 1, (int)s_left_ms(deadline)) > 0) continue;
        }
        close(fd);
        return ms_errf(err, err_size, "sending to %s:%d failed", h, port);
    }
    char *resp = ms_xcalloc(1, CH_RESPONSE_MAX + 1);
    size_t got = 0;
    for (;;) {
        if (got == CH_RESPONSE_MAX) break;
        ssize_t r = recv(fd, resp + got, CH_RESPONSE_MAX - got, 0);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0) break;
        if (errno == EINTR) continue;
        if (errno != EAGAIN) break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int64_t left = s_left_ms(deadline);
        if (left == 0 || poll(&pfd, 1, (int)left) <= 0) break;
    }
    close(fd);
    resp[got] = '\0';
    int code = 0;
    if (got < 12 || strncmp(resp, "HTTP/1.", 7) != 0 || sscanf(resp + 9, "%3d", &code) != 1 ||
        code < 100 || code > 599) {
        free(resp);
        return ms_errf(err, err_size, "no HTTP answer from %s:%d", h, port);
    }
    *status = code;
    if (body && body_size > 0) {
        const char *b = strstr(resp, "\r\n\r\n");
        snprintf(body, body_size, "%s", b ? b + 4 : "");
    }
    free(resp);
    return 0;
}

int ms_cluster_wait_gateway_health(const ms_cluster_run *r, const ms_proc *gw, int timeout_ms,
                                   char *err, size_t err_size) {
    const ms_cluster_conf *c = &r->conf;
    int64_t deadline = ms_now_ns() + (int64_t)timeout_ms * 1000000;
    char last[2 * MS_ERR_SIZE] = "no answer yet";
    for (;;) {
        int status = 0;
        char body[400], why[MS_ERR_SIZE];
        if (ms_cluster_http_get(c->gateway_host, c->gateway_port, "/health",
                                MS_CLUSTER_HTTP_TIMEOUT_MS, &status, body, sizeof(body), why,
                                sizeof(why)) == 0) {
            if (status == 200) return 0;
            for (char *p = body; *p; p++)
                if (*p == '\n' || *p == '\r') *p = ' ';
            snprintf(last, sizeof(last), "%d %s", status, body);
        } else {
            snprintf(last, sizeof(last), "%s", why);
        }
        if (gw && !ms_proc_alive(gw)) {
            char log[MS_CLUSTER_PATH_MAX];
            ms_cluster_log_path(r->dir, gw->name, log, sizeof(log));
            ms_cluster_log_tail(log, MS_CLUSTER_LOG_TAIL_LINES, r->log);
            return ms_errf(err, err_size, "the gateway (pid %d) exited (log: %s)", (int)gw->pid,
                           log);
        }
        if (ms_now_ns() > deadline || (r->stop && *r->stop))
            return ms_errf(err, err_size, "gateway /health: %s", last);
        struct timespec ts = {0, MS_CLUSTER_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
}
