/* profiler.h — the offline profiler behind `modserve-profile`: measures each
 * stage of a model pair with the real engine on the machine at hand, fits
 * linear latency models, and derives from TTFT/TBT targets the per-stage
 * batch caps and per-instance capacities at SLO that the broker
 * (broker/profile.h) and the autoscaler (broker/autoscale.h) read.
 *
 * Two halves:
 *   - ms_profiler_measure() runs the engine (preprocess vs image size, ViT vs
 *     batch, connector, prefill vs tokens and sequences, decode step vs batch
 *     and context, feature/KV transfer vs size by memcpy and ZeroMQ) and fills
 *     profile->measured with the raw points and their least-squares lines.
 *   - ms_profiler_derive() is pure arithmetic over profile->measured and the
 *     SLO targets (no clock, no engine): the stage latency models, the batch
 *     caps, the capacities, the SLO check. `modserve-profile --from` runs it
 *     alone on a saved profile to answer "what if the SLO were X".
 *
 * The rules (docs/profiles.md states them with a worked example):
 *   encode   L(b) = vit.base + b * (vit.per_image + preprocess(ref_mpixels)),
 *            b images; cap = the smallest b whose throughput is within
 *            MS_PROFILER_BATCH_GAIN_MIN of the best throughput among the
 *            batches with MS_PROFILER_QUEUE_FACTOR * L(b) <= ttft * share;
 *   prefill  L(n) = base + n * per_token, the line through the prefill
 *            points up to the first one past the limit; cap = the largest n
 *            with MS_PROFILER_QUEUE_FACTOR * L(n) <= ttft * share;
 *   decode   step(n) = base + n * per_seq, likewise from the decode points
 *            (at the curve's context); cap = the largest n with step(n) <=
 *            tbt * share (the same rule as ms_policy_decode_cap);
 *   every cap is also at most MS_PROFILER_EXTRAPOLATE times the largest batch
 *   its curve was measured at, and at least 1;
 *   capacity = units per second of back-to-back batches at the cap (image
 *            tokens/s, prompt tokens/s, generated tokens/s) * utilization.
 */
#ifndef MS_PROFILER_H
#define MS_PROFILER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "profile.h"

#define MS_PROFILER_TTFT_MS_DEFAULT     2000 /* --ttft-ms */
#define MS_PROFILER_TBT_MS_DEFAULT      200  /* --tbt-ms */
#define MS_PROFILER_UTILIZATION_DEFAULT 0.8  /* capacity = saturated throughput x this */
/* encode/prefill: a request may wait for the batch in progress, then run in the next */
#define MS_PROFILER_QUEUE_FACTOR 2.0
/* encode: a bigger batch must add at least this share of throughput */
#define MS_PROFILER_BATCH_GAIN_MIN 0.05
/* a cap is at most this times the largest batch measured on its curve */
#define MS_PROFILER_EXTRAPOLATE        2.0
#define MS_PROFILER_ENCODE_MAX_BATCH   16    /* largest encode cap written (images) */
#define MS_PROFILER_PREFILL_MAX_TOKENS 16384 /* largest prefill token budget written */
#define MS_PROFILER_DECODE_MAX_SEQS    256   /* largest decode cap written (sequences) */
#define MS_PROFILER_REF_IMAGE_W        1024  /* synthetic image when none is given */
#define MS_PROFILER_REF_IMAGE_H        768
#define MS_PROFILER_JPEG_QUALITY       90  /* re-encoded sizes of the preprocess curve */
#define MS_PROFILER_DECODE_CTX_REF     256 /* context of the decode-vs-batch curve (tokens) */
#define MS_PROFILER_DECODE_CTX_BATCH   4   /* sequences of the decode-vs-context curve */
#define MS_PROFILER_MAX_IMAGE_BYTES    (64u * 1024u * 1024u) /* --image size limit */

/* ---- SLO math (pure) ------------------------------------------------------ */

/* The targets and bounds ms_profiler_derive() works to. */
typedef struct {
    int32_t ttft_ms;                   /* time-to-first-token target, ms (>= 1) */
    int32_t tbt_ms;                    /* time-between-tokens target, ms (>= 1) */
    double slo_share[MS_STAGE_COUNT];  /* encode, prefill: share of TTFT; decode: of TBT; (0, 1] */
    double utilization;                /* (0, 1]: capacity = saturated throughput * this */
    int64_t max_batch[MS_STAGE_COUNT]; /* upper bound of each cap (>= 1) */
} ms_profiler_slo;

/* Defaults: MS_PROFILER_TTFT/TBT_MS_DEFAULT, the shares of
 * ms_profile_default() (0.5, 0.5, 1.0), MS_PROFILER_UTILIZATION_DEFAULT and
 * the MS_PROFILER_*_MAX bounds. */
void ms_profiler_slo_default(ms_profiler_slo *slo);

/* Least-squares line through c->points[0..n_points) into c->base_ms and
 * c->per_unit_ms. Neither may be negative: a negative slope gives slope 0
 * and base = the mean; a negative intercept gives the line through the
 * origin. One point at x > 0 → the line through the origin; no points → 0. */
void ms_profiler_fit(ms_profile_curve *c);

/* Derives the broker's numbers from p->measured (which must be present):
 * sets p->ttft_ms, p->tbt_ms, and per stage max_batch, base_ms,
 * per_unit_ms, slo_share, capacity_per_s, plus p->measured.utilization and
 * p->measured.slo_check[]. A stage whose curves are missing (encode of a
 * text-only profile: no "vit" curve or image_tokens 0) gets capacity_per_s 0
 * (unknown) and keeps its other values. Encode uses the fitted lines of
 * the vit and preprocess curves (call ms_profiler_fit first); prefill and
 * decode refit their points in the SLO region (a curve without points uses
 * its stored line). Returns 0, or -1 with err naming the bad target. */
int ms_profiler_derive(ms_profile *p, const ms_profiler_slo *slo, char *err, size_t err_size);

/* ---- measurement ---------------------------------------------------------- */

/* Progress line (no newline) for a person watching; may be NULL. */
typedef void (*ms_profiler_progress_fn)(const char *line, void *user);

typedef struct {
    const char *lm_path;     /* text model GGUF (required) */
    const char *mmproj_path; /* vision GGUF, or NULL: text-only profile (no encode curves) */
    const char *image_path;  /* sample image (JPEG/PNG/WebP), or NULL: a synthetic
                                MS_PROFILER_REF_IMAGE_W x _H picture */
    const char *backend;     /* engine backend, NULL = "cpu" */
    int n_threads;           /* backend threads, <= 0: one per core */
    int max_batch_tokens;    /* engine rows per LM pass (prefill chunk), 0 = engine default */
    bool quick;              /* fewer points and repetitions (tests, tiny/demo models) */
    bool transfer_zmq;       /* also time ZeroMQ ipc:// and tcp:// loopback messages */
    int reps;                /* timed repetitions per point, 0 = 2 (quick) or 3 */
    ms_profiler_progress_fn progress; /* may be NULL */
    void *progress_user;              /* passed to progress */
} ms_profiler_opts;

/* Defaults: cpu, all cores, full (not quick), ZeroMQ on, reps 0. */
void ms_profiler_opts_default(ms_profiler_opts *o);

/* Loads the engine and measures every curve (the list and sizes are in
 * docs/profiles.md), each point the median of the repetitions after one
 * untimed warm-up. Starts *out from ms_profile_default(), sets model (the
 * LM file's base name), hardware (CPU model and thread count) and
 * out->measured (present, with every curve fitted); does not derive (call
 * ms_profiler_derive). Returns 0, or -1 + err naming the file or the stage
 * that failed. */
int ms_profiler_measure(const ms_profiler_opts *o, ms_profile *out, char *err, size_t err_size);

#endif
