/* http.h — modserve-gateway: an OpenAI-compatible HTTP/1.1 server
 * (libmicrohttpd, one thread per connection) that is a producer to the
 * broker (link.h) and serves Prometheus metrics (observe.h).
 *
 *   POST /v1/chat/completions   chat, text + base64 image_url parts, stream: true → SSE
 *   POST /v1/completions        raw prompt, stream: true → SSE
 *   GET  /v1/models[/NAME]      the one model served (--model-name)
 *   GET  /health                200 when the broker answers a stats round trip and the
 *                               registry shows a live actor for every required stage;
 *                               else 503 with a JSON reason
 *   GET  /metrics               Prometheus text format
 *
 * The /v1 endpoints need "Authorization: Bearer KEY" when keys are configured (401
 * otherwise); /health and /metrics never do. Errors use OpenAI's shape
 * (openai.h). A client that disconnects (checked every MS_GW_WAIT_SLICE_MS
 * while it waits, and on every write of a stream) has its request cancelled
 * at the broker. docs/gateway.md describes it all.
 */
#ifndef MS_GW_HTTP_H
#define MS_GW_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "openai.h"

#define MS_GW_DEFAULT_LISTEN          "127.0.0.1:8000"
#define MS_GW_DEFAULT_BROKER          "tcp://127.0.0.1:5555"
#define MS_GW_DEFAULT_REDIS           "127.0.0.1:6379"
#define MS_GW_MAX_API_KEYS            64    /* --api-key values */
#define MS_GW_MAX_API_KEY_BYTES       256   /* bytes of one key */
#define MS_GW_DEFAULT_MAX_CONNECTIONS 1024  /* open HTTP connections (one thread each) */
#define MS_GW_DEFAULT_MAX_INFLIGHT    1024  /* requests at the broker at once; beyond: 429 */
#define MS_GW_HEALTH_TIMEOUT_MS       1000  /* /health's broker round trip */
#define MS_GW_METRICS_TIMEOUT_MS      250   /* /metrics' broker round trip */
#define MS_GW_WAIT_SLICE_MS           100   /* a waiting handler checks its client this often */
#define MS_GW_IDLE_TIMEOUT_S          120   /* an idle keep-alive connection is closed */
#define MS_GW_STREAM_BLOCK            16384 /* bytes MHD asks a stream for at once */

typedef struct ms_gw_config {
    const char *listen;          /* "HOST:PORT" ("[::1]:8000" for IPv6); port 0: any */
    const char *broker;          /* broker front endpoint */
    const char *redis;           /* registry "HOST:PORT" */
    const char *prefix;          /* registry key prefix; NULL: the default */
    const char *model_name;      /* the model name served (required) */
    const char *const *api_keys; /* Bearer keys (n_api_keys of them); none: no auth */
    size_t n_api_keys;
    ms_oai_limits limits;     /* body / image / pixel limits, defaults */
    uint32_t required_stages; /* MS_STAGES_* mask (stages.h): the stages /health
                                 requires a live actor for */
    unsigned max_connections; /* open HTTP connections */
    unsigned max_inflight;    /* requests in flight; beyond: 429 */
} ms_gw_config;

/* Defaults: the MS_GW_DEFAULT_* values, every stage required, no keys, no model. */
void ms_gw_config_default(ms_gw_config *c);

typedef struct ms_gw_server ms_gw_server;

/* Validates c (strings are copied), connects to the broker and Redis
 * (lazily: neither needs to be up) and starts listening. NULL + err on a
 * bad configuration or when the address cannot be bound. */
ms_gw_server *ms_gw_server_new(const ms_gw_config *c, char *err, size_t err_size);

/* The TCP port it listens on (useful with port 0). */
int ms_gw_server_port(const ms_gw_server *g);

/* Stops listening, ends every connection (their requests are cancelled),
 * disconnects, frees. NULL-safe; sets *self_p NULL. */
void ms_gw_server_destroy(ms_gw_server **self_p);

/* Splits "HOST:PORT" / "[V6]:PORT" into host (at most host_size - 1 bytes)
 * and *port (0..65535). 0, or -1 + err. */
int ms_gw_split_host_port(const char *s, char *host, size_t host_size, int *port, char *err,
                          size_t err_size);

#endif
