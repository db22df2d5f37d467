/* observe.c — the gateway's metric families and their updates (observe.h). */
#include "observe.h"

#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

#define S_MAX_ITL_SAMPLES 1024 /* observations one Token event adds at most */

/* Bucket bounds (seconds). vLLM's, extended downwards: a CPU-served tiny
 * model answers in milliseconds. */
static const double s_ttft_buckets[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                        0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                        20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double s_itl_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                                       0.15,  0.2,    0.3,   0.4,  0.5,   0.75, 1.0,   2.5,
                                       5.0,   7.5,    10.0,  20.0, 40.0,  80.0};
static const double s_e2e_buckets[] = {0.01, 0.025, 0.05,  0.1,   0.3,   0.5,    0.8,   1.0,  1.5,
                                       2.0,  2.5,   5.0,   10.0,  15.0,  20.0,   30.0,  40.0, 50.0,
                                       60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
static const double s_stage_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,   0.5,   1.0,    2.5,   5.0,  10.0,  30.0, 60.0};

static const char *const s_stages[] = {"encode", "prefill", "decode"};
static const unsigned s_stage_bits[] = {MS_STAGES_ENCODE, MS_STAGES_PREFILL, MS_STAGES_DECODE};

struct ms_gw_observe {
    ms_metrics *m;
    ms_metric *ttft, *itl, *e2e, *queue;                  /* request histograms */
    ms_metric *running, *waiting;                         /* gauges */
    ms_metric *prompt_tokens, *gen_tokens, *image_tokens; /* counters */
    ms_metric *success, *errors, *http;                   /* labelled counters */
    ms_metric *stage;                                     /* {stage, modality} histogram */
    ms_metric *instances, *queue_tokens;                  /* registry gauges */
    ms_metric *running_seqs, *free_kv, *registry_up;
    ms_metric *broker_up, *broker_in_flight, *broker_queued, *broker_actors;
};

#define S_ARR(a) a, MS_ARRAY_LEN(a)

ms_gw_observe *ms_gw_observe_new(char *err, size_t err_size) {
    ms_gw_observe *o = ms_xcalloc(1, sizeof *o);
    ms_metrics *m = o->m = ms_metrics_new();
    char *e = err;
    size_t n = err_size;
    /* clang-format off */
    o->ttft = ms_metrics_histogram(m, "modserve:time_to_first_token_seconds",
        "Time from the submit to the first generated token, measured at the gateway.", NULL,
        S_ARR(s_ttft_buckets), e, n);
    o->itl = ms_metrics_histogram(m, "modserve:inter_token_latency_seconds",
        "Time between generated tokens, measured at the gateway.", NULL, S_ARR(s_itl_buckets), e, n);
    o->e2e = ms_metrics_histogram(m, "modserve:e2e_request_latency_seconds",
        "Time from the submit to the end of the request, measured at the gateway.", NULL,
        S_ARR(s_e2e_buckets), e, n);
    o->queue = ms_metrics_histogram(m, "modserve:request_queue_time_seconds",
        "Time a request waited in the broker's queues.", NULL, S_ARR(s_e2e_buckets), e, n);
    o->running = ms_metrics_gauge(m, "modserve:num_requests_running",
        "Requests at the gateway that are generating (have a first token).", NULL, e, n);
    o->waiting = ms_metrics_gauge(m, "modserve:num_requests_waiting",
        "Requests at the gateway that have no token yet (queued, encoding, prefilling).", NULL, e, n);
    o->prompt_tokens = ms_metrics_counter(m, "modserve:prompt_tokens_total",
        "Prompt tokens of finished requests, image tokens included.", NULL, e, n);
    o->gen_tokens = ms_metrics_counter(m, "modserve:generation_tokens_total",
        "Generated tokens delivered.", NULL, e, n);
    o->image_tokens = ms_metrics_counter(m, "modserve:image_tokens_total",
        "Image tokens of finished requests (part of prompt_tokens).", NULL, e, n);
    o->success = ms_metrics_counter(m, "modserve:request_success_total",
        "Requests that ended with a Done, by OpenAI finish_reason.", "finished_reason", e, n);
    o->errors = ms_metrics_counter(m, "modserve:request_errors_total",
        "Requests that ended with an error, by error code.", "code", e, n);
    o->http = ms_metrics_counter(m, "modserve:http_requests_total",
        "HTTP requests answered, by endpoint and status.", "endpoint,status", e, n);
    o->stage = ms_metrics_histogram(m, "modserve:stage_latency_seconds",
        "Time a finished request spent in each pipeline stage (from the broker's Done): "
        "preprocess, encode, transfer (features / KV), prefill, decode, decode_step (per token).",
        "stage,modality", S_ARR(s_stage_buckets), e, n);
    o->instances = ms_metrics_gauge(m, "modserve:stage_instances",
        "Live actors serving each stage, from the registry.", "stage,state", e, n);
    o->queue_tokens = ms_metrics_gauge(m, "modserve:stage_queued_tokens",
        "Tokens waiting at the actors of a stage (image tokens to encode, prompt tokens to "
        "prefill), from the registry.", "stage", e, n);
    o->running_seqs = ms_metrics_gauge(m, "modserve:running_sequences",
        "Sequences decoding at the actors, from the registry.", NULL, e, n);
    o->free_kv = ms_metrics_gauge(m, "modserve:kv_free_blocks",
        "Free KV cache blocks over the decoding actors, from the registry.", NULL, e, n);
    o->registry_up = ms_metrics_gauge(m, "modserve:registry_up",
        "1 if the registry (Redis) could be read at the last scrape.", NULL, e, n);
    o->broker_up = ms_metrics_gauge(m, "modserve:broker_up",
        "1 if the broker answered a stats request at the last scrape.", NULL, e, n);
    o->broker_in_flight = ms_metrics_gauge(m, "modserve:broker_requests_in_flight",
        "Requests the broker has accepted and not ended.", NULL, e, n);
    o->broker_queued = ms_metrics_gauge(m, "modserve:broker_requests_queued",
        "Requests waiting for an actor at the broker.", NULL, e, n);
    o->broker_actors = ms_metrics_gauge(m, "modserve:broker_actors",
        "Live actors in the broker's view.", NULL, e, n);
    /* clang-format on */
    ms_metric *all[] = {o->ttft,          o->itl,          o->e2e,           o->queue,
                        o->running,       o->waiting,      o->prompt_tokens, o->gen_tokens,
                        o->image_tokens,  o->success,      o->errors,        o->http,
                        o->stage,         o->instances,    o->queue_tokens,  o->running_seqs,
                        o->free_kv,       o->registry_up,  o->broker_up,     o->broker_in_flight,
                        o->broker_queued, o->broker_actors};
    for (size_t i = 0; i < MS_ARRAY_LEN(all); i++)
        if (!all[i]) {
            ms_gw_observe_destroy(&o);
            return NULL;
        }
    /* the stage gauges exist from the start (0 until the registry is read) */
    for (size_t i = 0; i < MS_ARRAY_LEN(s_stages); i++) {
        ms_metric_set(o->instances, (const char *[]){s_stages[i], "up"}, 0);
        ms_metric_set(o->instances, (const char *[]){s_stages[i], "draining"}, 0);
    }
    ms_metric_set(o->queue_tokens, (const char *[]){"encode"}, 0);
    ms_metric_set(o->queue_tokens, (const char *[]){"prefill"}, 0);
    return o;
}

void ms_gw_observe_destroy(ms_gw_observe **self_p) {
    if (!self_p || !*self_p) return;
    ms_metrics_destroy(&(*self_p)->m);
    free(*self_p);
    *self_p = NULL;
}

ms_metrics *ms_gw_observe_metrics(ms_gw_observe *o) {
    return o->m;
}

/* OpenAI finish_reason of a Done.finish (the same mapping as openai.h, kept
 * here so observe does not depend on the HTTP layer). */
static const char *s_finish_reason(const char *f) {
    if (!f) return "stop";
    if (strcmp(f, "length") == 0) return "length";
    if (strcmp(f, "cancel") == 0) return "abort";
    if (strcmp(f, "timeout") == 0) return "timeout";
    return "stop";
}

static void s_stage(ms_gw_observe *o, const char *stage, const char *modality, double ms) {
    if (ms > 0) ms_metric_observe(o->stage, (const char *[]){stage, modality}, ms / 1000.0);
}

static void s_on_done(ms_gw_observe *o, const ms_gw_req_info *info, const ms_msg_done *d,
                      int64_t now_ns) {
    const char *modality = info->n_images > 0 ? "image" : "text";
    ms_metric_observe(o->e2e, NULL, (double)(now_ns - info->t_submit_ns) / 1e9);
    ms_metric_observe(o->queue, NULL, d->queue_ms / 1000.0);
    ms_metric_add(o->prompt_tokens, NULL, (double)d->prompt_tokens);
    ms_metric_add(o->image_tokens, NULL, (double)d->image_tokens);
    ms_metric_add(o->success, (const char *[]){s_finish_reason(d->finish)}, 1);
    s_stage(o, "preprocess", modality, d->preprocess_ms);
    s_stage(o, "encode", modality, d->encode_ms);
    s_stage(o, "transfer", modality, d->transfer_ms);
    s_stage(o, "prefill", modality, d->prefill_ms);
    s_stage(o, "decode", modality, d->decode_ms);
    if (d->completion_tokens > 1)
        s_stage(o, "decode_step", modality, d->decode_ms / (double)(d->completion_tokens - 1));
}

void ms_gw_observe_event(void *user, const ms_gw_req_info *info, const ms_msg *ev, int64_t now_ns) {
    ms_gw_observe *o = user;
    switch (ev->type) {
    case MS_MSG_TOKEN: {
        uint32_t k = ev->token.n_ids;
        ms_metric_add(o->gen_tokens, NULL, k);
        if (!info->t_prev_ns) {
            ms_metric_observe(o->ttft, NULL, (double)(now_ns - info->t_submit_ns) / 1e9);
        } else if (k > 0) {
            double gap = (double)(now_ns - info->t_prev_ns) / 1e9 / k;
            for (uint32_t i = 0; i < MS_MIN(k, (uint32_t)S_MAX_ITL_SAMPLES); i++)
                ms_metric_observe(o->itl, NULL, gap);
        }
        break;
    }
    case MS_MSG_DONE:
        s_on_done(o, info, &ev->done, now_ns);
        break;
    case MS_MSG_ERROR:
        ms_metric_add(o->errors, (const char *[]){ev->error.code ? ev->error.code : "internal"}, 1);
        ms_metric_observe(o->e2e, NULL, (double)(now_ns - info->t_submit_ns) / 1e9);
        break;
    default:
        break;
    }
}

void ms_gw_observe_http(ms_gw_observe *o, const char *endpoint, int status) {
    char code[16];
    snprintf(code, sizeof code, "%d", status);
    ms_metric_add(o->http, (const char *[]){endpoint, code}, 1);
}

void ms_gw_observe_requests(ms_gw_observe *o, int waiting, int running) {
    ms_metric_set(o->waiting, NULL, waiting);
    ms_metric_set(o->running, NULL, running);
}

void ms_gw_observe_broker(ms_gw_observe *o, const ms_msg_stats *s) {
    ms_metric_set(o->broker_up, NULL, s ? 1 : 0);
    if (!s) return;
    ms_metric_set(o->broker_in_flight, NULL, (double)s->in_flight);
    ms_metric_set(o->broker_queued, NULL, (double)s->queued);
    ms_metric_set(o->broker_actors, NULL, (double)s->actors);
}

void ms_gw_observe_registry(ms_gw_observe *o, const ms_actor_info *actors, int n, bool ok) {
    ms_metric_set(o->registry_up, NULL, ok ? 1 : 0);
    if (!ok) return;
    double up[3] = {0}, draining[3] = {0}, q_img = 0, q_prompt = 0, seqs = 0, kv = 0;
    for (int i = 0; i < n; i++) {
        const ms_actor_info *a = &actors[i];
        for (int s = 0; s < 3; s++)
            if (a->stages & s_stage_bits[s]) {
                if (a->state == MS_ACTOR_UP)
                    up[s]++;
                else
                    draining[s]++;
            }
        if (a->stages & MS_STAGES_ENCODE) q_img += (double)a->queued_image_tokens;
        if (a->stages & MS_STAGES_PREFILL) q_prompt += (double)a->queued_prompt_tokens;
        if (a->stages & MS_STAGES_DECODE) {
            seqs += (double)a->running_seqs;
            kv += (double)a->free_kv_blocks;
        }
    }
    for (int s = 0; s < 3; s++) {
        ms_metric_set(o->instances, (const char *[]){s_stages[s], "up"}, up[s]);
        ms_metric_set(o->instances, (const char *[]){s_stages[s], "draining"}, draining[s]);
    }
    ms_metric_set(o->queue_tokens, (const char *[]){"encode"}, q_img);
    ms_metric_set(o->queue_tokens, (const char *[]){"prefill"}, q_prompt);
    ms_metric_set(o->running_seqs, NULL, seqs);
    ms_metric_set(o->free_kv, NULL, kv);
}
