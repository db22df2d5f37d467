/* observe.h — the gateway's metrics: which families /metrics exposes and
 * how broker events, HTTP answers, the broker's Stats and the registry
 * update them. Names follow vLLM's (vllm:time_to_first_token_seconds →
 * modserve:time_to_first_token_seconds, ...) so dashboards adapt by
 * renaming the prefix; docs/gateway.md lists every family.
 *
 * Request-level latencies are measured at the gateway from the submit
 * (TTFT, inter-token, end-to-end); the broker's Done adds the queue time,
 * token counts and the per-stage timings (preprocess, encode, transfer,
 * prefill, decode, decode per token), each labelled {stage, modality}
 * (modality "image" when the request carried an image, else "text").
 * Registry-derived gauges (instances, queue depths per stage) and the
 * broker's counters are refreshed at scrape time by the caller.
 */
#ifndef MS_GW_OBSERVE_H
#define MS_GW_OBSERVE_H

#include <stdbool.h>

#include "link.h"
#include "metrics.h"
#include "registry.h"
#include "wire.h"

typedef struct ms_gw_observe ms_gw_observe;

/* Registers every family in a new registry. NULL + err only on a bug in the
 * definitions. */
ms_gw_observe *ms_gw_observe_new(char *err, size_t err_size);
void ms_gw_observe_destroy(ms_gw_observe **self_p);

/* The registry (owned by o): render it for /metrics. */
ms_metrics *ms_gw_observe_metrics(ms_gw_observe *o);

/* An ms_gw_event_fn (link.h); user is the ms_gw_observe. */
void ms_gw_observe_event(void *user, const ms_gw_req_info *info, const ms_msg *ev, int64_t now_ns);

/* One HTTP answer: endpoint "chat", "completions", "models", "health",
 * "metrics" or "other"; status the HTTP status. */
void ms_gw_observe_http(ms_gw_observe *o, const char *endpoint, int status);

/* Requests at the gateway without / with a first token. */
void ms_gw_observe_requests(ms_gw_observe *o, int waiting, int running);

/* The broker's Stats (NULL: the broker did not answer). */
void ms_gw_observe_broker(ms_gw_observe *o, const ms_msg_stats *s);

/* The registry's actors (ok false: Redis could not be read; the gauges keep
 * their last values and modserve:registry_up is 0). */
void ms_gw_observe_registry(ms_gw_observe *o, const ms_actor_info *actors, int n, bool ok);

#endif
