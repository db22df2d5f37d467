/* test_fetch.c — remote image fetching (gateway/fetch.h) and its use by the
 * OpenAI parser (gateway/openai.h), against a small HTTP server on a
 * loopback port started inside each test (libmicrohttpd, as the gateway):
 *   /img.jpg      tests/data/images/sample.jpg
 *   /missing      404
 *   /redirect     302 to /img.jpg (must not be followed)
 *   /slow         answers after S_SLOW_MS (past the fetch timeout)
 *   /big          S_MAX_BYTES + 1 bytes with a Content-Length
 *   /big-chunked  2 * S_MAX_BYTES bytes, chunked (no length announced)
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/fetch.h"
#include "gateway/openai.h"
#include "ms_common.h"
#include "ms_test.h"

#define T_TIMEOUT   30   /* every test of this file */
#define S_MAX_BYTES 4096 /* the fetch byte limit of these tests */
#define S_SLOW_MS   1500 /* /slow's delay */
#define S_TIMEOUT   300  /* the fetch timeout of the timeout test, ms */
#define S_FIXTURE   "sample.jpg"

typedef struct s_server {
    struct MHD_Daemon *d;
    int port;
    uint8_t *img; /* the fixture */
    size_t img_len;
    uint8_t *big; /* S_MAX_BYTES + 1 bytes */
} s_server;

static s_server g_srv;

static ssize_t s_chunked(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)cls;
    if (pos >= 2 * S_MAX_BYTES) return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = MS_MIN(max, (size_t)(2 * S_MAX_BYTES - pos));
    n = MS_MIN(n, (size_t)512);
    memset(buf, 'x', n);
    return (ssize_t)n;
}

static enum MHD_Result s_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls) {
    (void)cls, (void)method, (void)version, (void)upload, (void)upload_size, (void)con_cls;
    struct MHD_Response *r;
    unsigned status = MHD_HTTP_OK;
    if (strcmp(url, "/img.jpg") == 0) {
        r = MHD_create_response_from_buffer(g_srv.img_len, g_srv.img, MHD_RESPMEM_PERSISTENT);
    } else if (strcmp(url, "/slow") == 0) {
        struct timespec ts = {S_SLOW_MS / 1000, (S_SLOW_MS % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        r = MHD_create_response_from_buffer(g_srv.img_len, g_srv.img, MHD_RESPMEM_PERSISTENT);
    } else if (strcmp(url, "/big") == 0) {
        r = MHD_create_response_from_buffer(S_MAX_BYTES + 1, g_srv.big, MHD_RESPMEM_PERSISTENT);
    } else if (strcmp(url, "/big-chunked") == 0) {
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 512, s_chunked, NULL, NULL);
    } else if (strcmp(url, "/redirect") == 0) {
        static char loc[64];
        snprintf(loc, sizeof loc, "http://127.0.0.1:%d/img.jpg", g_srv.port);
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Location", loc);
        status = MHD_HTTP_FOUND;
    } else {
        static const char nf[] = "not found";
        r = MHD_create_response_from_buffer(sizeof nf - 1, (void *)nf, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_NOT_FOUND;
    }
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static void s_start(void) {
    char path[1024], err[MS_ERR_SIZE];
    snprintf(path, sizeof path, "%s/tests/data/images/%s", ms_test_source_dir(), S_FIXTURE);
    g_srv.img = ms_read_file(path, 16u << 20, &g_srv.img_len, err, sizeof err);
    cr_assert(g_srv.img, "%s", err);
    g_srv.big = ms_xmalloc(S_MAX_BYTES + 1);
    memset(g_srv.big, 'y', S_MAX_BYTES + 1);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    g_srv.d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0,
                               NULL, NULL, s_handler, NULL, MHD_OPTION_SOCK_ADDR,
                               (struct sockaddr *)&sa, MHD_OPTION_END);
    cr_assert(g_srv.d, "MHD_start_daemon failed");
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(g_srv.d, MHD_DAEMON_INFO_BIND_PORT);
    cr_assert(info && info->port);
    g_srv.port = info->port;
}

static void s_stop(void) {
    if (g_srv.d) MHD_stop_daemon(g_srv.d);
    free(g_srv.img);
    free(g_srv.big);
    memset(&g_srv, 0, sizeof g_srv);
}

static const char *s_url(const char *path) {
    static char u[128];
    snprintf(u, sizeof u, "http://127.0.0.1:%d%s", g_srv.port, path);
    return u;
}

/* A fetch config allowing `allow` (no byte limit of its own: the caller's applies). */
static ms_fetch_config s_cfg(const char *allow) {
    ms_fetch_config c;
    ms_fetch_config_default(&c);
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_fetch_set_allow(&c, allow, err, sizeof err), 0, "%s", err);
    return c;
}

/* Fetches url under c (limit S_MAX_BYTES), expecting `want`; returns the error text. */
static const char *s_expect(const ms_fetch_config *c, const char *url, ms_fetch_result want) {
    static char err[MS_ERR_SIZE];
    err[0] = '\0';
    uint8_t *out = (uint8_t *)"sentinel";
    size_t len = 7;
    ms_fetch_result fr = ms_fetch_url(c, url, S_MAX_BYTES, &out, &len, NULL, err, sizeof err);
    cr_assert_eq(fr, want, "%s: result %d, want %d (%s)", url, fr, want, err);
    if (want != MS_FETCH_OK) {
        cr_assert_null(out);
        cr_assert_eq(len, 0);
        cr_assert(err[0], "no message for %s", url);
    }
    free(out);
    return err;
}

/* ---- the allowlist ------------------------------------------------------------------- */
Test(fetch, allowlist_syntax_and_matching, .timeout = T_TIMEOUT) {
    ms_fetch_config c;
    ms_fetch_config_default(&c);
    cr_assert_not(ms_fetch_enabled(&c)); /* off by default */
    cr_assert_not(ms_fetch_host_allowed(&c, "127.0.0.1"));
    char err[MS_ERR_SIZE];
    cr_assert_eq(
        ms_fetch_set_allow(&c, " img.example.com , *.cdn.org,127.0.0.1,[::1]", err, sizeof err), 0,
        "%s", err);
    cr_assert_str_eq(c.allow, "img.example.com,*.cdn.org,127.0.0.1,[::1]");
    cr_assert(ms_fetch_enabled(&c));
    cr_assert(ms_fetch_host_allowed(&c, "img.example.com"));
    cr_assert(ms_fetch_host_allowed(&c, "IMG.Example.COM"));
    cr_assert(ms_fetch_host_allowed(&c, "a.cdn.org"));
    cr_assert(ms_fetch_host_allowed(&c, "b.a.cdn.org"));
    cr_assert(ms_fetch_host_allowed(&c, "127.0.0.1"));
    cr_assert(ms_fetch_host_allowed(&c, "[::1]"));
    cr_assert_not(ms_fetch_host_allowed(&c, "cdn.org"));     /* *.x needs a label before */
    cr_assert_not(ms_fetch_host_allowed(&c, "evilcdn.org")); /* not a label boundary */
    cr_assert_not(ms_fetch_host_allowed(&c, "example.com")); /* exact names are exact */
    cr_assert_not(ms_fetch_host_allowed(&c, "img.example.com.evil.net"));
    cr_assert_not(ms_fetch_host_allowed(&c, "localhost"));
    cr_assert_not(ms_fetch_host_allowed(&c, ""));
    const char *bad[] = {"*", "a..b", "a/b", "a,,b", "*.", "user@host", "a b", ".a"};
    for (size_t i = 0; i < MS_ARRAY_LEN(bad); i++) {
        ms_fetch_config d = c;
        cr_assert_eq(ms_fetch_set_allow(&d, bad[i], err, sizeof err), -1, "accepted '%s'", bad[i]);
        cr_assert_str_eq(d.allow, c.allow); /* unchanged */
    }
    char big[MS_FETCH_MAX_ALLOW_BYTES + 8];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cr_assert_eq(ms_fetch_set_allow(&c, big, err, sizeof err), -1);
    cr_assert_eq(ms_fetch_set_allow(&c, "", err, sizeof err), 0);
    cr_assert_not(ms_fetch_enabled(&c));
}

/* ---- fetching ------------------------------------------------------------------------ */
Test(fetch, allowed_host_gets_the_bytes, .timeout = T_TIMEOUT) {
    s_start();
    ms_fetch_config c = s_cfg("127.0.0.1");
    uint8_t *out = NULL;
    size_t len = 0;
    long status = 0;
    char err[MS_ERR_SIZE];
    cr_assert_eq(
        ms_fetch_url(&c, s_url("/img.jpg"), 16u << 20, &out, &len, &status, err, sizeof err),
        MS_FETCH_OK, "%s", err);
    cr_assert_eq(status, 200);
    cr_assert_eq(len, g_srv.img_len);
    cr_assert(memcmp(out, g_srv.img, len) == 0);
    free(out);
    s_stop();
}

Test(fetch, refusals_before_any_connection, .timeout = T_TIMEOUT) {
    s_start();
    ms_fetch_config off;
    ms_fetch_config_default(&off);
    cr_assert(strstr(s_expect(&off, s_url("/img.jpg"), MS_FETCH_DISABLED), "--allow-fetch"));
    ms_fetch_config other = s_cfg("images.example.com");
    cr_assert(strstr(s_expect(&other, s_url("/img.jpg"), MS_FETCH_NOT_ALLOWED), "'127.0.0.1'"));
    ms_fetch_config c = s_cfg("127.0.0.1");
    char u[128];
    snprintf(u, sizeof u, "http://localhost:%d/img.jpg", g_srv.port); /* names are not resolved */
    cr_assert(strstr(s_expect(&c, u, MS_FETCH_NOT_ALLOWED), "'localhost'"));
    /* userinfo does not fool the host check */
    cr_assert(strstr(s_expect(&c, "http://127.0.0.1@evil.invalid/x.jpg", MS_FETCH_NOT_ALLOWED),
                     "evil.invalid"));
    /* only http and https */
    cr_assert(strstr(s_expect(&c, "ftp://127.0.0.1/img.jpg", MS_FETCH_BAD_URL), "http"));
    cr_assert(strstr(s_expect(&c, "file:///etc/passwd", MS_FETCH_BAD_URL), "'file'"));
    s_expect(&c, "gopher://127.0.0.1/", MS_FETCH_BAD_URL);
    s_expect(&c, "http://", MS_FETCH_BAD_URL);
    s_expect(&c, "no scheme at all", MS_FETCH_BAD_URL);
    s_stop();
}

Test(fetch, http_errors_and_redirects, .timeout = T_TIMEOUT) {
    s_start();
    ms_fetch_config c = s_cfg("127.0.0.1");
    cr_assert(strstr(s_expect(&c, s_url("/missing"), MS_FETCH_HTTP_STATUS), "404"));
    const char *e = s_expect(&c, s_url("/redirect"), MS_FETCH_HTTP_STATUS); /* not followed */
    cr_assert(strstr(e, "302"), "%s", e);
    s_stop();
}

Test(fetch, timeout, .timeout = T_TIMEOUT) {
    s_start();
    ms_fetch_config c = s_cfg("127.0.0.1");
    c.timeout_ms = S_TIMEOUT;
    double t0 = ms_now_s();
    const char *e = s_expect(&c, s_url("/slow"), MS_FETCH_TIMEOUT);
    double dt = ms_now_s() - t0;
    cr_assert(strstr(e, "timed out"), "%s", e);
    cr_assert(dt >= S_TIMEOUT / 1000.0 * 0.9 && dt < S_TIMEOUT / 1000.0 + 0.5,
              "took %.3f s for a %d ms timeout", dt, S_TIMEOUT);
    s_stop();
}

Test(fetch, size_limit, .timeout = T_TIMEOUT) {
    s_start();
    ms_fetch_config c = s_cfg("127.0.0.1");
    char lim[32];
    snprintf(lim, sizeof lim, "%d bytes", S_MAX_BYTES);
    const char *e = s_expect(&c, s_url("/big"), MS_FETCH_TOO_LARGE); /* Content-Length */
    cr_assert(strstr(e, lim), "%s", e);
    e = s_expect(&c, s_url("/big-chunked"), MS_FETCH_TOO_LARGE); /* cut in the write callback */
    cr_assert(strstr(e, lim), "%s", e);
    /* the config's own limit applies when smaller */
    c.max_bytes = 100;
    e = s_expect(&c, s_url("/img.jpg"), MS_FETCH_TOO_LARGE);
    cr_assert(strstr(e, "100 bytes"), "%s", e);
    s_stop();
}

/* ---- through the OpenAI parser ------------------------------------------------------- */
static char *s_body(const char *url) {
    char *b = ms_xmalloc(strlen(url) + 256);
    sprintf(b,
            "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
            "\"image_url\",\"image_url\":{\"url\":\"%s\"}},{\"type\":\"text\",\"text\":\"hi\"}]}]}",
            url);
    return b;
}

static void s_parse_err(const ms_oai_limits *lim, const char *url, int status, const char *code,
                        const char *needle) {
    char *b = s_body(url);
    ms_oai_request r;
    ms_oai_error e;
    cr_assert_eq(ms_oai_parse(MS_OAI_CHAT, b, strlen(b), lim, &r, &e), -1, "accepted %s", url);
    cr_assert_eq(e.status, status, "%s: status %d (%s)", url, e.status, e.message);
    cr_assert_str_eq(e.code, code, "%s: %s", url, e.message);
    cr_assert(strstr(e.message, needle), "%s: '%s' lacks '%s'", url, e.message, needle);
    cr_assert_str_eq(e.param, "messages[0].content[0]");
    free(b);
}

Test(fetch, openai_parse_fetches_allowed_urls, .timeout = T_TIMEOUT) {
    s_start();
    ms_oai_limits lim;
    ms_oai_limits_default(&lim);
    /* off by default: today's 400, saying how to turn it on */
    s_parse_err(&lim, s_url("/img.jpg"), 400, "remote_image_disabled", "--allow-fetch");
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_fetch_set_allow(&lim.fetch, "127.0.0.1", err, sizeof err), 0);
    char *b = s_body(s_url("/img.jpg"));
    ms_oai_request r;
    ms_oai_error e;
    cr_assert_eq(ms_oai_parse(MS_OAI_CHAT, b, strlen(b), &lim, &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_images, 1);
    cr_assert_eq(r.image_len[0], g_srv.img_len);
    cr_assert(memcmp(r.images[0], g_srv.img, g_srv.img_len) == 0);
    cr_assert_gt(r.image_pixels, 0);
    cr_assert_str_eq(r.msg.submit.messages[0].content, MS_OAI_IMAGE_MARKER "\nhi");
    ms_oai_request_fini(&r);
    free(b);
    s_parse_err(&lim, s_url("/missing"), 400, "image_fetch_failed", "404");
    s_parse_err(&lim, "http://10.0.0.1/x.jpg", 400, "image_host_not_allowed", "10.0.0.1");
    lim.fetch.max_bytes = S_MAX_BYTES;
    s_parse_err(&lim, s_url("/big"), 413, "image_too_large", "4096 bytes");
    /* fetched bytes are checked like decoded ones: /big is not an image */
    lim.fetch.max_bytes = 0;
    s_parse_err(&lim, s_url("/big"), 400, "invalid_image", "image 0");
    s_parse_err(&lim, "ftp://127.0.0.1/img.jpg", 400, "invalid_image_url", "http(s)");
    s_stop();
}
