/* modserve-gateway — the OpenAI-compatible HTTP gateway (gateway/http.h,
 * docs/gateway.md).
 *
 *   modserve-gateway --model-name NAME [--listen HOST:PORT] [--broker EP]
 *                    [--redis HOST:PORT] [--prefix P] [--api-key KEY]...
 *                    [--api-key-file FILE] [--max-body-bytes N] [--max-images N]
 *                    [--max-pixels N] [--default-temperature T] [--default-max-tokens N]
 *                    [--require-stages encode,prefill,decode] [--max-inflight N]
 *                    [--max-connections N] [--allow-fetch HOST[,HOST...]]
 *                    [--fetch-timeout-ms N] [--fetch-max-bytes N]
 *
 * Runs until SIGINT or SIGTERM. Exit status 0 after a signal, 1 on a bad
 * argument or a start-up failure.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <czmq.h>

#include "gateway/http.h"
#include "ms_common.h"
#include "registry.h"

#define S_KEY_FILE_MAX (64u << 10) /* bytes of an --api-key-file */

static const char *s_usage =
    "usage: modserve-gateway --model-name NAME [options]\n"
    "\n"
    "OpenAI-compatible HTTP API in front of a modserve broker.\n"
    "\n"
    "  --model-name NAME        the model name clients ask for (required)\n"
    "  --listen HOST:PORT       HTTP address (default " MS_GW_DEFAULT_LISTEN ")\n"
    "  --broker EP              broker front endpoint (default " MS_GW_DEFAULT_BROKER ")\n"
    "  --redis HOST:PORT        registry Redis (default " MS_GW_DEFAULT_REDIS ")\n"
    "  --prefix P               registry key prefix (default ms)\n"
    "  --api-key KEY            accept this Bearer key (repeatable); none: no auth\n"
    "  --api-key-file FILE      keys, one per line\n"
    "  --max-body-bytes N       request body limit (default %u)\n"
    "  --max-images N           images per request (default %d, at most %d)\n"
    "  --max-pixels N           width x height of one image (default %u)\n"
    "  --default-temperature T  when a request gives none (default %g, as OpenAI)\n"
    "  --default-max-tokens N   when a request gives none (default: the broker's)\n"
    "  --require-stages LIST    stages /health needs a live actor for\n"
    "                           (default encode,prefill,decode)\n"
    "  --max-inflight N         requests in flight before 429 (default %d)\n"
    "  --max-connections N      open HTTP connections (default %d)\n"
    "  --allow-fetch LIST       fetch http(s) image URLs from these hosts: names or *.suffix,\n"
    "                           comma-separated (default: none, fetching off)\n"
    "  --fetch-timeout-ms N     time limit of one image fetch (default %d)\n"
    "  --fetch-max-bytes N      bytes of one fetched image (default: the image limit, %u)\n"
    "  -h, --help               this text\n"
    "\n"
    "Remote (http/https) image URLs are refused unless --allow-fetch lists their host:\n"
    "send images as base64 data: URLs.\n";

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

static void s_die(const char *fmt, const char *arg) {
    fprintf(stderr, "modserve-gateway: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see modserve-gateway --help)\n");
    exit(1);
}

static unsigned long long s_uint(const char *opt, const char *s, unsigned long long lo,
                                 unsigned long long hi) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < lo || v > hi) {
        fprintf(stderr, "modserve-gateway: %s expects an integer in [%llu, %llu], got '%s'\n", opt,
                lo, hi, s);
        exit(1);
    }
    return v;
}

/* Reads FILE's keys (one per line, blank lines and '#' comments skipped)
 * into keys[*n..]. */
static void s_key_file(const char *path, char **keys, size_t *n) {
    char err[MS_ERR_SIZE];
    size_t len;
    uint8_t *data = ms_read_file(path, S_KEY_FILE_MAX, &len, err, sizeof err);
    if (!data) s_die("%s", err);
    char *save = NULL;
    for (char *line = strtok_r((char *)data, "\r\n", &save); line;
         line = strtok_r(NULL, "\r\n", &save)) {
        while (*line == ' ' || *line == '\t')
            line++;
        if (!*line || *line == '#') continue;
        if (*n == MS_GW_MAX_API_KEYS) s_die("too many API keys in %s", path);
        keys[(*n)++] = ms_xstrdup(line);
    }
    free(data);
}

int main(int argc, char **argv) {
    ms_gw_config c;
    ms_gw_config_default(&c);
    static char *keys[MS_GW_MAX_API_KEYS];
    size_t n_keys = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
#define IS(s)   (strcmp(o, (s)) == 0)
#define VALUE() (i + 1 < argc ? argv[++i] : (s_die("%s needs a value", o), (char *)NULL))
        if (IS("-h") || IS("--help")) {
            printf(s_usage, MS_OAI_DEFAULT_MAX_BODY_BYTES, MS_WIRE_MAX_IMAGES, MS_WIRE_MAX_IMAGES,
                   MS_OAI_DEFAULT_MAX_PIXELS, MS_OAI_DEFAULT_TEMPERATURE,
                   MS_GW_DEFAULT_MAX_INFLIGHT, MS_GW_DEFAULT_MAX_CONNECTIONS,
                   MS_FETCH_DEFAULT_TIMEOUT_MS, MS_WIRE_MAX_IMAGE_BYTES);
            return 0;
        } else if (IS("--model-name")) {
            c.model_name = VALUE();
        } else if (IS("--listen")) {
            c.listen = VALUE();
        } else if (IS("--broker")) {
            c.broker = VALUE();
        } else if (IS("--redis")) {
            c.redis = VALUE();
        } else if (IS("--prefix")) {
            c.prefix = VALUE();
        } else if (IS("--api-key")) {
            const char *k = VALUE();
            if (n_keys == MS_GW_MAX_API_KEYS) s_die("more than %s API keys", "64");
            keys[n_keys++] = ms_xstrdup(k);
        } else if (IS("--api-key-file")) {
            s_key_file(VALUE(), keys, &n_keys);
        } else if (IS("--max-body-bytes")) {
            c.limits.max_body_bytes = (size_t)s_uint(o, VALUE(), 1, 1ull << 32);
        } else if (IS("--max-images")) {
            c.limits.max_images = (uint32_t)s_uint(o, VALUE(), 0, MS_WIRE_MAX_IMAGES);
        } else if (IS("--max-pixels")) {
            c.limits.max_pixels = s_uint(o, VALUE(), 1, 1ull << 32);
        } else if (IS("--default-temperature")) {
            const char *v = VALUE();
            char *end = NULL;
            double t = strtod(v, &end);
            if (end == v || *end || !(t >= 0 && t <= MS_OAI_MAX_TEMPERATURE))
                s_die("--default-temperature expects a number in [0, 2], got '%s'", v);
            c.limits.default_temperature = t;
        } else if (IS("--default-max-tokens")) {
            c.limits.default_max_tokens = (uint32_t)s_uint(o, VALUE(), 1, MS_MAX_GEN_TOKENS);
        } else if (IS("--require-stages")) {
            char *v = ms_xstrdup(VALUE());
            for (char *p = v; *p; p++)
                if (*p == ',') *p = '+';
            uint32_t stages = 0;
            if (*v && ms_stages_parse(v, &stages, NULL, 0) != 0)
                s_die("--require-stages expects names among encode, prefill, decode, got '%s'", v);
            c.required_stages = stages;
            free(v);
        } else if (IS("--max-inflight")) {
            c.max_inflight = (unsigned)s_uint(o, VALUE(), 1, 1u << 20);
        } else if (IS("--max-connections")) {
            c.max_connections = (unsigned)s_uint(o, VALUE(), 1, 1u << 16);
        } else if (IS("--allow-fetch")) {
            char ferr[MS_ERR_SIZE];
            if (ms_fetch_set_allow(&c.limits.fetch, VALUE(), ferr, sizeof ferr) != 0)
                s_die("--allow-fetch: %s", ferr);
        } else if (IS("--fetch-timeout-ms")) {
            c.limits.fetch.timeout_ms = (uint32_t)s_uint(o, VALUE(), 1, MS_FETCH_MAX_TIMEOUT_MS);
        } else if (IS("--fetch-max-bytes")) {
            c.limits.fetch.max_bytes = (size_t)s_uint(o, VALUE(), 1, MS_WIRE_MAX_IMAGE_BYTES);
        } else {
            s_die("unknown option '%s'", o);
        }
#undef IS
#undef VALUE
    }
    c.api_keys = (const char *const *)keys;
    c.n_api_keys = n_keys;

    zsys_handler_set(NULL); /* our signal handlers, not czmq's */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[MS_ERR_SIZE];
    ms_gw_server *g = ms_gw_server_new(&c, err, sizeof err);
    if (!g) {
        fprintf(stderr, "modserve-gateway: %s\n", err);
        return 1;
    }
    while (!s_stop) {
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL); /* (pause() could miss a signal that lands before it) */
    }
    ms_info("gateway: stopping");
    ms_gw_server_destroy(&g);
    for (size_t i = 0; i < n_keys; i++)
        free(keys[i]);
    return 0;
}
