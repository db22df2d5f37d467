/* fetch.h — the gateway's HTTP(S) client for remote image_url parts
 * (libcurl, easy API). Off by default: a URL is fetched only when its host
 * is on an allowlist (exact host names or "*.suffix"), only over http or
 * https, with no redirects (a 3xx is an error), within a time limit and a
 * byte limit. docs/gateway.md ("Remote images") describes the options.
 *
 * Thread safety: ms_fetch_url may be called from any number of threads at
 * once (one curl easy handle per call, no signals); libcurl's global state
 * is set up once (ms_fetch_global_init, also done lazily by the first call).
 *
 * The allowlist matches the URL's host name as written, not the address it
 * resolves to: a listed name whose DNS points inside your network is
 * fetched. List only hosts you trust.
 */
#ifndef MS_GW_FETCH_H
#define MS_GW_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MS_FETCH_MAX_ALLOW_BYTES    1024 /* bytes of the allowlist text */
#define MS_FETCH_MAX_HOST_BYTES     253  /* bytes of one allowlist entry / URL host */
#define MS_FETCH_DEFAULT_TIMEOUT_MS 5000 /* whole transfer, connecting included */
#define MS_FETCH_MAX_TIMEOUT_MS     600000
#define MS_FETCH_MAX_URL_BYTES      8192 /* longer URLs are refused */

/* What may be fetched. A plain value (copyable, owns nothing). */
typedef struct ms_fetch_config {
    char allow[MS_FETCH_MAX_ALLOW_BYTES]; /* "HOST[,HOST...]", a HOST "name" or "*.suffix";
                                             "" = fetching off */
    uint32_t timeout_ms;                  /* transfer limit, > 0 */
    size_t max_bytes;                     /* body limit; 0 = the caller's own limit */
} ms_fetch_config;

/* Why a fetch failed. */
typedef enum ms_fetch_result {
    MS_FETCH_OK = 0,
    MS_FETCH_DISABLED,    /* the allowlist is empty */
    MS_FETCH_BAD_URL,     /* unparsable, or a scheme other than http / https */
    MS_FETCH_NOT_ALLOWED, /* the host is not on the allowlist */
    MS_FETCH_HTTP_STATUS, /* the server answered a non-2xx status (redirects included) */
    MS_FETCH_TOO_LARGE,   /* the body exceeds the byte limit */
    MS_FETCH_TIMEOUT,     /* not done within timeout_ms */
    MS_FETCH_FAILED,      /* DNS, connect, TLS or transfer error */
} ms_fetch_result;

/* Fetching off, MS_FETCH_DEFAULT_TIMEOUT_MS, max_bytes 0. */
void ms_fetch_config_default(ms_fetch_config *c);

/* Validates and stores the allowlist text `list` (comma-separated, spaces
 * around entries ignored; "" turns fetching off) in c->allow. Each entry is
 * a host name or IP literal (letters, digits, '.', '-', ':' and '[' ']' for
 * IPv6) or "*." followed by one. 0, or -1 + err (c unchanged). */
int ms_fetch_set_allow(ms_fetch_config *c, const char *list, char *err, size_t err_size);

/* Whether fetching is on (the allowlist is not empty). */
bool ms_fetch_enabled(const ms_fetch_config *c);

/* Whether host (case-insensitive) is on c's allowlist: equal to an entry,
 * or for "*.suffix" ending in ".suffix" with at least one label before it. */
bool ms_fetch_host_allowed(const ms_fetch_config *c, const char *host);

/* Sets up libcurl's global state. Call once at start-up before threads
 * (ms_fetch_url also calls it, guarded by pthread_once). 0, or -1 + err. */
int ms_fetch_global_init(char *err, size_t err_size);

/* GETs url into a new malloc'd buffer *out of *out_len bytes, at most
 * max_bytes (c->max_bytes when that is non-zero and smaller). MS_FETCH_OK,
 * or another result + err naming the cause (the host, the HTTP status, the
 * limit); *http_status (may be NULL) receives the server's status, 0 when
 * none arrived. Nothing is allocated on failure. */
ms_fetch_result ms_fetch_url(const ms_fetch_config *c, const char *url, size_t max_bytes,
                             uint8_t **out, size_t *out_len, long *http_status, char *err,
                             size_t err_size);

#endif
