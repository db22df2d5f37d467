/* report.h — what a trace replay (`modserve bench`, docs/bench.md) measured,
 * and the files it writes: latency statistics per modality, SLO attainment,
 * goodput, throughput, the cost in instance-seconds per stage, and a
 * timeline (CSV + SVG picture of latency and instance counts over time).
 *
 * Everything here is plain computation over arrays the replay filled in
 * (ms_report_req per request, ms_report_sample per registry sample), so the
 * unit tests check it on hand-worked numbers.
 *
 * Metrics (the names `vllm bench serve` users know; all measured at the
 * client, times in ms):
 *   TTFT  submit → first Token event
 *   TPOT  (E2E − TTFT) / (tokens − 1), per request with at least 2 tokens
 *   ITL   the gap between consecutive Token events of a request (pooled over
 *         all requests)
 *   E2E   submit → Done
 * A request meets its SLOs when it completed (Done), TTFT <= the TTFT target
 * and TPOT <= the TBT target (a 1-token answer has no TPOT and meets the
 * second). SLO attainment = requests meeting both / all requests of the
 * modality (failed ones count as misses); goodput = requests meeting both /
 * duration; throughput = completed requests / duration; duration = first
 * scheduled arrival → last request end.
 */
#ifndef MS_REPORT_H
#define MS_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "workload.h" /* ms_latency_stats, ms_latency_summarize */

#define MS_REPORT_MODALITIES 3 /* text, image, all */
enum { MS_REPORT_TEXT = 0, MS_REPORT_IMAGE = 1, MS_REPORT_ALL = 2 };

/* Stage sets are indexed by their MS_STAGES_* mask (stages.h): 1 encode,
 * 2 prefill, 3 encode+prefill, 4 decode, 6 prefill+decode, 7 all; 0 unused.
 * Stages (by_stage arrays) by ms_stage: encode, prefill, decode. */
#define MS_REPORT_STAGE_SETS 8
#define MS_REPORT_STAGES     3 /* MS_STAGE_COUNT: encode, prefill, decode */

#define MS_REPORT_FINISH_MAX 16     /* bytes of a finish reason, with the NUL */
#define MS_REPORT_CODE_MAX   24     /* bytes of an error code, with the NUL */
#define MS_REPORT_MSG_MAX    160    /* bytes of an error message kept per request */
#define MS_REPORT_MAX_BINS   100000 /* timeline bins at most */
#define MS_REPORT_SVG_DOTS   20000  /* requests drawn one by one at most (then sampled) */

/* Error codes counted per modality (a protocol error code, or "client": the
 * request never got an answer — not sent, the client gave up, a stream fault). */
#define MS_REPORT_N_CODES 7
extern const char *const ms_report_codes[MS_REPORT_N_CODES];

/* One replayed request: what was sent and what came back. Times are seconds
 * since the replay started (the first arrival is scheduled at 0); 0 before
 * they happen. */
typedef struct ms_report_req {
    /* the trace row */
    int64_t row;         /* index in the trace (time order, 0-based) */
    int32_t line;        /* line of the trace file */
    int trace_images;    /* NumImages */
    int trace_context;   /* ContextTokens */
    int trace_generated; /* GeneratedTokens */
    /* what was sent (ms_trace_shape) */
    int n_images;      /* images sent; > 0 makes it an image request */
    int text_tokens;   /* text tokens of the prompt, as the model's tokenizer counts them */
    int prompt_tokens; /* text + image tokens */
    int max_tokens;    /* tokens asked for (forced) */
    int n_words;       /* words of the synthetic text */
    unsigned clamped;  /* MS_TRACE_CLAMP_* */
    double t_sched;    /* scheduled arrival, s */
    double t_submit;   /* sent, s (later than t_sched when the concurrency limit held it) */
    double t_first;    /* first Token, s */
    double t_last;     /* latest Token, s */
    double t_end;      /* Done / Error / given up, s */
    /* what came back */
    bool submitted; /* sent */
    bool ended;     /* Done or Error received, or given up */
    bool ok;        /* ended with Done */
    int n_tokens;   /* tokens received (ids over all Token events) */
    float *itl_ms;  /* gaps between consecutive Token events, ms (owned) */
    int n_itl, cap_itl;
    char finish[MS_REPORT_FINISH_MAX]; /* Done.finish */
    char code[MS_REPORT_CODE_MAX];     /* Error.code or "client" */
    char message[MS_REPORT_MSG_MAX];   /* Error.message or the client's reason */
    /* Done's usage and the broker's timings (ms) */
    int64_t done_prompt_tokens, done_image_tokens, done_completion_tokens;
    double queue_ms, preprocess_ms, encode_ms, transfer_ms, prefill_ms, decode_ms;
    double broker_ttft_ms, broker_e2e_ms;
} ms_report_req;

/* Appends one ITL sample (ms) to r. */
void ms_report_req_add_itl(ms_report_req *r, double ms);
/* Frees what each of the n requests holds (not the array). */
void ms_report_reqs_fini(ms_report_req *reqs, int n);

/* One registry sample: live actors per stage set at time t. */
typedef struct ms_report_sample {
    double t;                         /* s since the replay started */
    bool ok;                          /* the registry answered; else the counts are invalid */
    int actors[MS_REPORT_STAGE_SETS]; /* actors (up or draining) per stage set */
} ms_report_sample;

/* Instance-seconds over [t0, t1]: each valid sample's counts hold from its
 * time until the next valid sample (the first also back to t0, the last on to
 * t1); failed samples are skipped. by_set[k] per stage set; by_stage[0..2]
 * counts an actor for each of encode, prefill, decode it serves; *total counts
 * each actor once. No valid sample: all 0. */
void ms_report_instance_seconds(const ms_report_sample *s, int n, double t0, double t1,
                                double by_set[MS_REPORT_STAGE_SETS],
                                double by_stage[MS_REPORT_STAGES], double *total);

/* SLO targets (ms). */
typedef struct ms_report_slo {
    double ttft_ms; /* time to first token */
    double tbt_ms;  /* time between tokens (checked as TPOT) */
} ms_report_slo;

/* The numbers of one modality (or all). */
typedef struct ms_report_group {
    int requests;                      /* in the replayed slice */
    int submitted;                     /* sent to the broker */
    int completed;                     /* ended with Done */
    int errors;                        /* ended otherwise (errors by code below) */
    int code_count[MS_REPORT_N_CODES]; /* errors per ms_report_codes[] */
    int finish_eog, finish_length, finish_stop, finish_other; /* Done.finish of completed ones */
    int slo_met, ttft_met, tpot_met;         /* completed requests meeting both / each target */
    int64_t trace_images;                    /* NumImages summed */
    int64_t images;                          /* images sent */
    int64_t prompt_tokens;                   /* prompt tokens sent (planned: text + image) */
    int64_t done_prompt_tokens;              /* Done.prompt_tokens summed (completed requests) */
    int64_t done_image_tokens;               /* Done.image_tokens summed */
    int64_t trace_generated;                 /* GeneratedTokens summed */
    int64_t max_tokens;                      /* tokens asked for, summed */
    int64_t tokens;                          /* tokens received (all requests) */
    int64_t done_completion_tokens;          /* Done.completion_tokens summed */
    int clamped;                             /* requests whose shape differs from the row */
    ms_latency_stats ttft, tpot, itl, e2e;   /* ms */
    ms_latency_stats queue, encode, prefill; /* ms, the broker's view (completed requests) */
    double slo_attainment;                   /* slo_met / requests (0 when there are none) */
    double goodput_rps;                      /* slo_met / duration */
    double throughput_rps;                   /* completed / duration */
    double output_tok_s;                     /* tokens received / duration */
    double input_tok_s;                      /* prompt tokens of completed requests / duration */
} ms_report_group;

typedef struct ms_report_summary {
    double duration_s;  /* first scheduled arrival (0) → last end */
    double max_lag_ms;  /* worst submit − scheduled arrival (client-side queueing) */
    double mean_lag_ms; /* mean of the same over submitted requests */
    ms_report_slo slo;
    ms_report_group g[MS_REPORT_MODALITIES];
    double instance_s[MS_REPORT_STAGE_SETS];   /* instance-seconds per stage set */
    double stage_instance_s[MS_REPORT_STAGES]; /* per stage (encode, prefill, decode) */
    double instance_s_total;                   /* each actor once */
    int n_samples, n_samples_failed;           /* registry samples taken / failed */
} ms_report_summary;

/* Computes the summary of n requests and n_s registry samples. */
void ms_report_summarize(const ms_report_req *reqs, int n, const ms_report_sample *s, int n_s,
                         const ms_report_slo *slo, ms_report_summary *out);

/* Whether a request met both SLOs (see the file comment). */
bool ms_report_req_slo_met(const ms_report_req *r, const ms_report_slo *slo);

/* ---- timeline ------------------------------------------------------------- */

/* One bin of the timeline: [t, t + bin_s). Latencies are of the requests
 * that arrived (were scheduled) in the bin. */
typedef struct ms_report_bin {
    double t;                  /* bin start, s */
    int arrivals;              /* requests scheduled in the bin */
    int image_arrivals;        /* of which image requests */
    int completed;             /* requests ended with Done in the bin */
    int errors;                /* requests ended otherwise in the bin */
    int in_flight;             /* submitted and not ended at the bin's end */
    int n_lat;                 /* arrivals of the bin that completed (latencies below) */
    double ttft_p50, ttft_p99; /* ms */
    double e2e_p50, e2e_p99;   /* ms */
    double slo_met;            /* fraction of the bin's arrivals meeting both SLOs; -1: none */
    int actors[MS_REPORT_STAGE_SETS]; /* from the last valid sample at or before the bin's end */
    int actors_total;
} ms_report_bin;

/* Bins the replay into ceil(duration / bin_s) bins (at least 1, at most
 * MS_REPORT_MAX_BINS: bin_s grows if needed; *bin_s_used says). Returns a
 * malloc'd array of *n_bins bins (free() it). */
ms_report_bin *ms_report_timeline(const ms_report_req *reqs, int n, const ms_report_sample *s,
                                  int n_s, const ms_report_slo *slo, double duration_s,
                                  double bin_s, int *n_bins, double *bin_s_used);

/* ---- files ---------------------------------------------------------------- */

/* What the report says about the run besides the measurements. */
typedef struct ms_report_meta {
    const char *trace_path;   /* the trace file */
    const char *trace_format; /* "2025" / "2023" */
    int64_t trace_rows;       /* rows in the file */
    int64_t row_first;        /* first replayed row (0-based) */
    int64_t rows;             /* rows replayed */
    const char *t_first;      /* trace time of the first / last replayed arrival (ISO) */
    const char *t_last;
    double trace_span_s;     /* last − first arrival, trace seconds */
    double time_scale, rate; /* schedule factors */
    const char *broker;      /* front endpoint */
    const char *registry;    /* "host:port prefix", "" when instance counts were not sampled */
    const char *model;       /* LM path, "" if unknown */
    const char *mmproj;      /* mmproj path, "" if none */
    int n_image_tokens;      /* tokens per image on this model */
    int n_ctx;               /* context per sequence, 0 if unknown */
    int max_context, max_gen, max_images, concurrency_limit; /* clamps (0: none) */
    bool ignore_eos;                                         /* generation length forced */
    bool exact_text;        /* text lengths sized with the model's tokenizer */
    bool unique_images;     /* every image's bytes unique (no encoder cache hits) */
    uint64_t seed;          /* synthetic content seed */
    const char *started_at; /* wall-clock start, ISO */
    bool interrupted;       /* stopped early (^C or the client gave up) */
} ms_report_meta;

/* report.json: meta, the SLOs, duration, per modality (text, image, all) every
 * group field, instance-seconds per stage set / stage / total. 0 or -1 + err. */
int ms_report_write_json(const char *path, const ms_report_meta *meta, const ms_report_summary *s,
                         char *err, size_t err_size);
/* requests.csv: one line per request (docs/bench.md lists the columns). */
int ms_report_write_requests_csv(const char *path, const ms_report_req *reqs, int n,
                                 const ms_report_slo *slo, char *err, size_t err_size);
/* timeline.csv: one line per bin. */
int ms_report_write_timeline_csv(const char *path, const ms_report_bin *bins, int n_bins,
                                 double bin_s, char *err, size_t err_size);
/* timeline.svg: two panels over replay time — TTFT of every request (dots,
 * by modality) with the per-bin P50/P99 and the TTFT target; actors per stage
 * set (steps) — plus a title line. */
int ms_report_write_svg(const char *path, const char *title, const ms_report_req *reqs, int n,
                        const ms_report_bin *bins, int n_bins, double bin_s,
                        const ms_report_slo *slo, char *err, size_t err_size);
/* The human-readable table (stdout of `modserve bench`). */
void ms_report_print(FILE *f, const ms_report_summary *s);

#endif
