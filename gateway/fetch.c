/* fetch.c — remote image fetching with libcurl (fetch.h). */
#include "fetch.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ms_common.h"

#define S_USER_AGENT  "modserve-gateway"
#define S_FIRST_ALLOC 65536u /* first buffer when the size is not announced */

void ms_fetch_config_default(ms_fetch_config *c) {
    memset(c, 0, sizeof *c);
    c->timeout_ms = MS_FETCH_DEFAULT_TIMEOUT_MS;
}

static bool s_host_char(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '-' || ch == ':' || ch == '[' || ch == ']';
}

/* The next entry of list at *pos (trimmed): its start and length; false at the end. */
static bool s_next_entry(const char *list, size_t *pos, const char **start, size_t *len) {
    const char *p = list + *pos;
    if (!*p) return false;
    const char *comma = strchr(p, ',');
    const char *end = comma ? comma : p + strlen(p);
    *pos = (size_t)(end - list) + (comma ? 1 : 0);
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *start = p;
    *len = (size_t)(end - p);
    return true;
}

int ms_fetch_set_allow(ms_fetch_config *c, const char *list, char *err, size_t err_size) {
    if (strlen(list) >= sizeof c->allow)
        return ms_errf(err, err_size, "fetch allowlist is %zu bytes, limit %zu", strlen(list),
                       sizeof c->allow - 1);
    char out[MS_FETCH_MAX_ALLOW_BYTES];
    size_t n_out = 0, pos = 0, n_entries = 0;
    const char *e;
    size_t len;
    out[0] = '\0';
    bool blank = true;
    for (const char *p = list; *p; p++)
        blank = blank && (*p == ' ' || *p == '\t');
    while (!blank && s_next_entry(list, &pos, &e, &len)) {
        const char *host = e;
        size_t host_len = len;
        if (len >= 2 && e[0] == '*' && e[1] == '.') {
            host += 2;
            host_len -= 2;
        }
        if (host_len == 0 || host_len > MS_FETCH_MAX_HOST_BYTES)
            return ms_errf(err, err_size,
                           "fetch allowlist entry %zu ('%.*s') must be a host name or *.suffix",
                           n_entries + 1, (int)MS_MIN(len, 64), e);
        for (size_t i = 0; i < host_len; i++)
            if (!s_host_char(host[i]) || (host[i] == '.' && (i == 0 || host[i - 1] == '.')))
                return ms_errf(err, err_size,
                               "fetch allowlist entry '%.*s': bad character or empty label "
                               "(host names, IP literals or *.suffix only)",
                               (int)MS_MIN(len, 64), e);
        memcpy(out + n_out, e, len); /* fits: out is as large as list */
        n_out += len;
        out[n_out++] = ',';
        n_entries++;
    }
    if (n_out) n_out--; /* the last ',' */
    out[n_out] = '\0';
    memcpy(c->allow, out, n_out + 1);
    return 0;
}

bool ms_fetch_enabled(const ms_fetch_config *c) {
    return c && c->allow[0] != '\0';
}

bool ms_fetch_host_allowed(const ms_fetch_config *c, const char *host) {
    if (!ms_fetch_enabled(c) || !host || !*host) return false;
    size_t hlen = strlen(host);
    size_t pos = 0, len;
    const char *e;
    while (s_next_entry(c->allow, &pos, &e, &len)) {
        if (len >= 2 && e[0] == '*' && e[1] == '.') {
            size_t slen = len - 1; /* ".suffix" */
            if (hlen > slen && strncasecmp(host + hlen - slen, e + 1, slen) == 0) return true;
        } else if (len == hlen && strncasecmp(host, e, len) == 0) {
            return true;
        }
    }
    return false;
}

static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static CURLcode s_init_rc = CURLE_FAILED_INIT;

static void s_init(void) {
    s_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int ms_fetch_global_init(char *err, size_t err_size) {
    pthread_once(&s_once, s_init);
    if (s_init_rc != CURLE_OK)
        return ms_errf(err, err_size, "libcurl initialisation failed: %s",
                       curl_easy_strerror(s_init_rc));
    return 0;
}

/* One transfer's state, seen by the write callback. */
typedef struct s_xfer {
    CURL *h;
    uint8_t *buf;
    size_t len, cap, max;
    bool too_large;  /* aborted: past max */
    bool bad_status; /* aborted: a non-2xx answer */
} s_xfer;

static size_t s_write(char *data, size_t size, size_t n, void *user) {
    s_xfer *x = user;
    size_t bytes = size * n;
    if (x->len == 0 && x->cap == 0) { /* first data: check the status before keeping any */
        long st = 0;
        curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &st);
        if (st < 200 || st > 299) {
            x->bad_status = true;
            return 0;
        }
    }
    if (bytes > x->max - x->len) {
        x->too_large = true;
        return 0; /* aborts the transfer (CURLE_WRITE_ERROR) */
    }
    if (x->len + bytes > x->cap) {
        size_t cap = x->cap ? x->cap : MS_MIN((size_t)S_FIRST_ALLOC, x->max);
        while (cap < x->len + bytes)
            cap = cap > x->max / 2 ? x->max : cap * 2;
        x->buf = ms_xrealloc(x->buf, cap);
        x->cap = cap;
    }
    memcpy(x->buf + x->len, data, bytes);
    x->len += bytes;
    return bytes;
}

/* Scheme and host of url via libcurl's own parser (what it will connect to). */
static ms_fetch_result s_parse_url(CURLU *u, const char *url, char *host, size_t host_size,
                                   char *err, size_t err_size) {
    if (strlen(url) > MS_FETCH_MAX_URL_BYTES) {
        ms_errf(err, err_size, "image URL is %zu bytes, limit %d", strlen(url),
                MS_FETCH_MAX_URL_BYTES);
        return MS_FETCH_BAD_URL;
    }
    const char *colon = strchr(url, ':');
    size_t slen = colon ? (size_t)(colon - url) : 0;
    if (!((slen == 4 && strncasecmp(url, "http", 4) == 0) ||
          (slen == 5 && strncasecmp(url, "https", 5) == 0))) {
        ms_errf(err, err_size, "image URL scheme '%.*s' is not allowed: only http and https",
                (int)MS_MIN(slen, 16), url);
        return MS_FETCH_BAD_URL;
    }
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (uc != CURLUE_OK) {
        ms_errf(err, err_size, "invalid image URL: %s", curl_url_strerror(uc));
        return MS_FETCH_BAD_URL;
    }
    char *h = NULL;
    uc = curl_url_get(u, CURLUPART_HOST, &h, 0);
    if (uc != CURLUE_OK || !h || !*h || strlen(h) >= host_size) {
        ms_errf(err, err_size, "image URL has no usable host");
        curl_free(h);
        return MS_FETCH_BAD_URL;
    }
    snprintf(host, host_size, "%s", h);
    curl_free(h);
    return MS_FETCH_OK;
}

ms_fetch_result ms_fetch_url(const ms_fetch_config *c, const char *url, size_t max_bytes,
                             uint8_t **out, size_t *out_len, long *http_status, char *err,
                             size_t err_size) {
    *out = NULL;
    *out_len = 0;
    if (http_status) *http_status = 0;
    if (!ms_fetch_enabled(c)) {
        ms_errf(err, err_size,
                "fetching remote images is disabled (enable it for some hosts "
                "with --allow-fetch HOST[,HOST...])");
        return MS_FETCH_DISABLED;
    }
    if (c->max_bytes && c->max_bytes < max_bytes) max_bytes = c->max_bytes;
    if (ms_fetch_global_init(err, err_size) != 0) return MS_FETCH_FAILED;
    CURLU *u = curl_url();
    CURL *h = curl_easy_init();
    if (!u || !h) {
        curl_url_cleanup(u);
        curl_easy_cleanup(h);
        ms_errf(err, err_size, "libcurl could not allocate a handle");
        return MS_FETCH_FAILED;
    }
    char host[MS_FETCH_MAX_HOST_BYTES + 8];
    ms_fetch_result rc = s_parse_url(u, url, host, sizeof host, err, err_size);
    if (rc == MS_FETCH_OK && !ms_fetch_host_allowed(c, host)) {
        ms_errf(err, err_size, "image URL host '%s' is not in the fetch allowlist (--allow-fetch)",
                host);
        rc = MS_FETCH_NOT_ALLOWED;
    }
    if (rc != MS_FETCH_OK) {
        curl_url_cleanup(u);
        curl_easy_cleanup(h);
        return rc;
    }
    s_xfer x = {.h = h, .max = max_bytes};
    char curl_err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_CURLU, u); /* exactly the URL checked above */
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L); /* a redirect could leave the allowlist */
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);       /* many threads; no SIGALRM */
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max_bytes);
    curl_easy_setopt(h, CURLOPT_USERAGENT, S_USER_AGENT);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err);
    CURLcode cc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (http_status) *http_status = status;
    if (cc == CURLE_OK && (status < 200 || status > 299)) x.bad_status = true;
    if (x.bad_status) {
        ms_errf(err, err_size, "fetching the image from '%s' failed: HTTP status %ld", host,
                status);
        rc = MS_FETCH_HTTP_STATUS;
    } else if (x.too_large || cc == CURLE_FILESIZE_EXCEEDED) {
        ms_errf(err, err_size, "the image at '%s' is larger than the fetch limit of %zu bytes",
                host, max_bytes);
        rc = MS_FETCH_TOO_LARGE;
    } else if (cc == CURLE_OPERATION_TIMEDOUT) {
        ms_errf(err, err_size, "fetching the image from '%s' timed out after %u ms", host,
                c->timeout_ms);
        rc = MS_FETCH_TIMEOUT;
    } else if (cc != CURLE_OK) {
        ms_errf(err, err_size, "fetching the image from '%s' failed: %s", host,
                curl_err[0] ? curl_err : curl_easy_strerror(cc));
        rc = MS_FETCH_FAILED;
    }
    curl_easy_cleanup(h);
    curl_url_cleanup(u);
    if (rc != MS_FETCH_OK) {
        free(x.buf);
        return rc;
    }
    *out = x.buf ? x.buf : ms_xmalloc(1);
    *out_len = x.len;
    return MS_FETCH_OK;
}
