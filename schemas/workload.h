/* workload.h — the workload player behind `modserve play` (and the cluster
 * integration tests): a deterministic mixed image/text workload, played
 * against a broker's front socket with the producer client library at a
 * bounded concurrency, and the latency report per modality.
 *
 *   ms_workload_make(&params, w, ...);           the requests, from a seed
 *   ms_play_reqs_init(reqs, w, n);               one ms_play_req each
 *   ms_play_run(&opts, reqs, n, &summary, ...);  submit, stream, measure
 *   ms_play_report(stdout, reqs, n, summary.wall_s);
 *   ms_play_reqs_fini(reqs, n);
 *
 * Latencies are measured at the client: TTFT = submit → first Token, TPOT =
 * (E2E − TTFT) / (tokens − 1), E2E = submit → Done.
 */
#ifndef MS_WORKLOAD_H
#define MS_WORKLOAD_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ms_common.h"

/* ---- latency statistics ---------------------------------------------------- */
typedef struct ms_latency_stats {
    int n;       /* samples */
    double mean; /* arithmetic mean */
    double p50;  /* percentiles (linear interpolation between closest ranks) */
    double p90;
    double p99;
    double max;
} ms_latency_stats;

/* Percentile q in [0, 100] of n sorted samples (0 when n == 0). */
double ms_percentile(const double *sorted, int n, double q);
/* Sorts samples (n of them, in place) and fills s (all 0 when n == 0). */
void ms_latency_summarize(double *samples, int n, ms_latency_stats *s);

/* ---- workload -------------------------------------------------------------- */
#define MS_WORKLOAD_MAX_REQUESTS 100000
#define MS_WORKLOAD_MAX_IMAGES   8     /* images per generated request at most */
#define MS_WORKLOAD_MAX_TOKENS   32768 /* max_tokens per request at most */

typedef struct ms_workload_params {
    int n_requests;     /* requests to generate, 1..MS_WORKLOAD_MAX_REQUESTS */
    double image_ratio; /* fraction in [0, 1] of requests that carry images */
    int max_images;     /* images per image request: 1..max_images (<= MS_WORKLOAD_MAX_IMAGES) */
    int max_tokens;     /* generated tokens per request: in [ceil(max/2), max] */
    double temperature; /* < 0: greedy and 0.8 alternately; else this value for all */
    uint64_t seed;      /* workload seed: every request is a function of it */
    int n_image_files;  /* fixture images to draw from (> 0 when image_ratio > 0) */
} ms_workload_params;

typedef struct ms_workload_request {
    int n_images;                      /* 0: a text-only request */
    int image[MS_WORKLOAD_MAX_IMAGES]; /* indices into the caller's image file list */
    const char *prompt;                /* a static string */
    int max_tokens;                    /* >= 1 */
    float temperature;                 /* 0: greedy */
    uint64_t seed;                     /* the request's sampling seed */
} ms_workload_request;

/* Fills out[0..p->n_requests) deterministically from p: exactly
 * round(n_requests * image_ratio) image requests, spread evenly over the
 * sequence. 0, or -1 + err for bad parameters. */
int ms_workload_make(const ms_workload_params *p, ms_workload_request *out, char *err,
                     size_t err_size);

/* ---- the player -------------------------------------------------------------- */

/* One request as played: what was sent and what came back. */
typedef struct ms_play_req {
    ms_workload_request w; /* what to send */
    char id[32];           /* client request id, "play-<i>" */
    bool raw;              /* send the prompt raw (no chat template) */
    int64_t t_submit;      /* ms_now_ns() at submit, 0 before */
    int64_t t_first;       /* ... at the first Token, 0 before */
    int64_t t_end;         /* ... at Done / Error, 0 before */
    int32_t *ids;          /* tokens received, in index order (owned) */
    int n_ids, cap_ids;
    char *text; /* text received, NUL-terminated (owned; NULL before any) */
    size_t text_len;
    int n_token_events;      /* Token messages received */
    bool started;            /* submitted */
    bool ended;              /* Done or Error received (or the submit failed) */
    bool ok;                 /* ended with Done and no stream fault */
    char finish[16];         /* Done.finish */
    char error[MS_ERR_SIZE]; /* "code: message" of an Error, or a client-side fault */
} ms_play_req;

/* Prepares reqs[i] for w[i] (ids "play-<i>"). */
void ms_play_reqs_init(ms_play_req *reqs, const ms_workload_request *w, int n);
/* Frees what the requests received. */
void ms_play_reqs_fini(ms_play_req *reqs, int n);

/* Called after every Token / Done / Error applied to a request. */
typedef void (*ms_play_event_fn)(const ms_play_req *r, void *user);

typedef struct ms_play_opts {
    const char *endpoint;         /* broker front endpoint */
    int concurrency;              /* requests in flight at most (>= 1) */
    int wait_ms;                  /* give up after this long without any event */
    const uint8_t *const *images; /* the image files the requests index */
    const size_t *image_len;      /* their sizes */
    int n_images;                 /* how many */
    ms_play_event_fn on_event;    /* may be NULL */
    void *user;                   /* passed to on_event */
    volatile sig_atomic_t *stop;  /* may be NULL; non-zero: stop submitting and return */
    bool quiet;                   /* no per-request failure lines on stderr */
} ms_play_opts;

typedef struct ms_play_summary {
    double wall_s;       /* first submit → last event */
    int ended;           /* requests that ended */
    int ok;              /* requests that ended with Done */
    int errors;          /* requests that ended with an Error or a fault, or never ended */
    int protocol_errors; /* undecodable events / stream violations reported by the client */
    bool gave_up;        /* stopped: wait_ms without events, a transport failure, or *stop */
} ms_play_summary;

/* Plays n requests (submitting up to concurrency at once, in order) and
 * records every answer in reqs. Returns 0 when it ran to the end (check the
 * summary for failed requests), -1 + err if the client could not be created. */
int ms_play_run(const ms_play_opts *o, ms_play_req *reqs, int n, ms_play_summary *out, char *err,
                size_t err_size);

/* The latency report (per modality — text, image — and all: count, errors,
 * TTFT / TPOT / E2E mean P50 P90 P99 in ms, requests/s and tokens/s over
 * wall_s). */
void ms_play_report(FILE *f, const ms_play_req *reqs, int n, double wall_s);

/* One JSON object per line per request: id, images (image_paths[i] names
 * image file i), prompt, max_tokens, temperature, seed, ok, finish, error,
 * tokens, text, ttft_ms, e2e_ms. 0, or -1 + err. */
int ms_play_write_jsonl(const char *path, const ms_play_req *reqs, int n,
                        const char *const *image_paths, char *err, size_t err_size);

#endif
