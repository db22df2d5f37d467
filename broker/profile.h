/* profile.h — the per-stage profile the broker, the autoscaler and the
 * simulator read: batch caps, linear latency models, SLO shares, capacity at
 * SLO, default SLO targets and classes, and queue limits.
 *
 * File format (JSON, one object; docs/policies.md and
 * tools/profiles/default.json are the reference; the offline profiler of a
 * later issue writes it):
 *
 *   { "version": 1,                       required to be 1 when present
 *     "model": "...", "hardware": "...",  free text, optional
 *     "slo": { "ttft_ms": N, "tbt_ms": N },
 *     "slo_classes": [ { "name": "...", "ttft_ms": N, "tbt_ms": N }, ... ],
 *     "stages": { "encode" | "prefill" | "decode":
 *        { "max_batch": N,         cap: images (encode), tokens (prefill), sequences (decode)
 *          "base_ms": X,           latency = base_ms + per_unit_ms * units, where units =
 *          "per_unit_ms": X,         image tokens (encode), prompt tokens (prefill),
 *                                    sequences in the batch (decode, per step)
 *          "slo_share": X,         share of TTFT (encode, prefill) / TBT (decode), 0..1
 *          "capacity_per_s": X } }, per-instance capacity at SLO: image tokens/s,
 *                                    prompt tokens/s, generated tokens/s
 *     "limits": { "max_pending_requests": N, "max_pending_image_tokens": N,
 *                 "max_pending_prompt_tokens": N, "max_images_per_request": N,
 *                 "max_request_tokens": N, "max_actor_image_tokens": N,
 *                 "max_actor_prompt_tokens": N },     (0 = unlimited)
 *     "measured": { ... } }   optional, written by modserve-profile: the raw
 *                             curves (see ms_profile_measured, docs/profiles.md)
 *
 * Parsing is strict: unknown keys, wrong JSON types, negative numbers,
 * non-integers where integers are due and out-of-range values are errors
 * that name the key path ("stages.encode.max_batch: ..."). Keys that are
 * absent keep ms_profile_default()'s value.
 */
#ifndef MS_PROFILE_H
#define MS_PROFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stages.h"

/* ms_stage, stage sets and names: stages.h. */


#define MS_PROFILE_VERSION     1
#define MS_PROFILE_MAX_BYTES   (1u << 20)         /* profile files larger than this are refused */
#define MS_PROFILE_MAX_CLASSES 16                 /* SLO classes one profile may define */
#define MS_PROFILE_NAME_MAX    64                 /* model/hardware/class name bytes incl. NUL */
#define MS_PROFILE_MAX_BATCH   (1 << 24)          /* upper bound accepted for any max_batch */
#define MS_PROFILE_MAX_SLO_MS  (24 * 3600 * 1000) /* upper bound for SLO targets (1 day) */

/* One stage's measured behaviour. */
typedef struct {
    int64_t max_batch;  /* batch cap: images (encode), tokens (prefill), sequences (decode); >= 1 */
    double base_ms;     /* fixed latency of one batch / decode step (ms) */
    double per_unit_ms; /* latency per unit (ms per image token / prompt token / sequence) */
    double slo_share;   /* share of the TTFT (encode, prefill) or TBT (decode) budget, 0..1 */
    double capacity_per_s; /* per-instance throughput at SLO (image tokens/s, prompt tokens/s,
                              generated tokens/s); 0 = unknown */
} ms_stage_profile;

/* A named SLO class a producer may ask for (Submit.slo_class). */
typedef struct {
    char name[MS_PROFILE_NAME_MAX]; /* e.g. "interactive" */
    int32_t ttft_ms;                /* time-to-first-token target (ms), >= 1 */
    int32_t tbt_ms;                 /* time-between-tokens target (ms), >= 1 */
} ms_slo_class;

/* Queue bounds (DESIGN.md §7); 0 = unlimited. */
typedef struct {
    int32_t max_pending_requests;      /* requests accepted and not done, broker-wide */
    int64_t max_pending_image_tokens;  /* image tokens not yet encoded, broker-wide */
    int64_t max_pending_prompt_tokens; /* prompt tokens not yet prefilled, broker-wide */
    int32_t max_images_per_request;    /* images in one request */
    int32_t max_request_tokens;        /* prompt tokens (text + image) of one request */
    int64_t max_actor_image_tokens;    /* queued image tokens one encoder may hold */
    int64_t max_actor_prompt_tokens;   /* queued prompt tokens one text/prefill actor may hold */
} ms_queue_limits;

/* ---- measured curves (optional; written by the offline profiler) ---------
 *
 * A profile made by modserve-profile (broker/profiler.h, docs/profiles.md)
 * also carries what was measured, under the optional key "measured": the
 * raw points of each curve, their least-squares line, the engine settings
 * they were taken with, and the SLO check of each stage. The broker ignores
 * it; the simulator may use the curves as service times, and
 * `modserve-profile --from` re-derives batch caps and capacities from them
 * for other SLOs without measuring again. Absent key = measured.present false. */

#define MS_PROFILE_MAX_POINTS 32 /* points one curve may hold */

/* The curves, each a set of (x, ms) points at a fixed `at`. */
typedef enum {
    MS_CURVE_PREPROCESS = 0,   /* x = megapixels of a JPEG; ms per image (decode .. normalise) */
    MS_CURVE_VIT,              /* x = images in one ViT pass; ms per pass (ms_engine_encode) */
    MS_CURVE_PROJECT,          /* x = images; ms per connector call (ms_engine_project) */
    MS_CURVE_PREFILL,          /* x = prompt tokens of one new sequence; ms (last logits incl.) */
    MS_CURVE_PREFILL_BATCH,    /* x = sequences of `at` tokens prefilled back to back; ms */
    MS_CURVE_DECODE,           /* x = sequences in one decode step, each holding ~`at` tokens;
                                  ms per step */
    MS_CURVE_DECODE_CTX,       /* x = tokens each of `at` sequences holds; ms per decode step */
    MS_CURVE_TRANSFER_MEMCPY,  /* x = MiB; ms for one memcpy (lower bound of any transfer) */
    MS_CURVE_TRANSFER_IPC,     /* x = MiB; ms for one ZeroMQ message over ipc:// */
    MS_CURVE_TRANSFER_TCP,     /* x = MiB; ms for one ZeroMQ message over tcp://127.0.0.1 */
    MS_CURVE_COUNT
} ms_curve;

/* JSON key of a curve ("preprocess", "vit", ..., "transfer_tcp"); NULL if out of range. */
const char *ms_curve_name(ms_curve c);
/* Unit of a curve's x ("megapixels", "images", "tokens", "sequences",
 * "context_tokens", "MiB"); NULL if out of range. */
const char *ms_curve_unit(ms_curve c);

typedef struct {
    double x;  /* in the curve's unit, >= 0 */
    double ms; /* measured latency (median of the repetitions), >= 0 */
} ms_profile_point;

typedef struct {
    double at;          /* the parameter held fixed (tokens per sequence for prefill_batch and
                           decode, sequences for decode_ctx; 0 for the others) */
    double base_ms;     /* least-squares intercept, clamped >= 0 */
    double per_unit_ms; /* least-squares slope (ms per x unit), clamped >= 0 */
    int32_t n_points;   /* 0 = not measured */
    ms_profile_point points[MS_PROFILE_MAX_POINTS]; /* [n_points], x ascending */
} ms_profile_curve;

/* How a stage's batch cap meets its SLO share. */
typedef struct {
    double budget_ms; /* the stage's share of TTFT (encode, prefill) or TBT (decode), ms */
    double batch_ms;  /* modelled latency of a full batch at the cap, ms */
    bool met;         /* false: not even a batch of one fits the budget */
} ms_profile_slo_check;

typedef struct {
    bool present;                     /* the "measured" object was given / filled */
    char backend[MS_PROFILE_NAME_MAX]; /* engine backend ("cpu", ...) */
    int32_t threads;                  /* backend threads */
    int32_t n_ctx;                    /* tokens per sequence the engine allowed */
    int32_t image_size;               /* ViT input side, pixels (0: text only) */
    int32_t image_tokens;             /* tokens one image becomes (0: text only) */
    int64_t feature_bytes_per_image;  /* f32 ViT features of one image (encoder → prefill) */
    int64_t kv_bytes_per_token;       /* KV hand-off blob bytes per token */
    double ref_mpixels;               /* image size (megapixels) the encode model assumes */
    double utilization;               /* share of an instance's saturated throughput counted
                                         as capacity at SLO, 0..1 */
    ms_profile_slo_check slo_check[MS_STAGE_COUNT]; /* per stage */
    ms_profile_curve curve[MS_CURVE_COUNT];          /* indexed by ms_curve */
} ms_profile_measured;

/* A curve's line at x: base_ms + per_unit_ms * x. */
double ms_profile_curve_eval(const ms_profile_curve *c, double x);

typedef struct {
    int32_t version;                              /* MS_PROFILE_VERSION */
    char model[MS_PROFILE_NAME_MAX];              /* what was profiled (free text, may be "") */
    char hardware[MS_PROFILE_NAME_MAX];           /* where (free text, may be "") */
    int32_t ttft_ms;                              /* default TTFT target (ms) */
    int32_t tbt_ms;                               /* default TBT target (ms) */
    ms_stage_profile stage[MS_STAGE_COUNT];       /* indexed by ms_stage */
    ms_slo_class classes[MS_PROFILE_MAX_CLASSES]; /* [n_classes] */
    int32_t n_classes;                            /* SLO classes defined */
    ms_queue_limits limits;                       /* queue bounds */
    ms_profile_measured measured;                 /* optional "measured" section */
} ms_profile;

/* Fills *out with the built-in defaults (sized for the tiny/demo models on a
 * CPU; tools/profiles/default.json holds the same values). */
void ms_profile_default(ms_profile *out);

/* Parses a profile from JSON text (len bytes, need not be NUL-terminated).
 * Starts from the defaults; returns 0, or -1 with err naming the key path. */
int ms_profile_parse(const char *json, size_t len, ms_profile *out, char *err, size_t err_size);

/* Loads a profile file. A missing file (ENOENT) is not an error: *out gets
 * the defaults, a warning is logged and *used_defaults (if non-NULL) is set.
 * Any other failure (unreadable, too large, bad JSON, bad value) returns -1
 * with err naming the file and the key. */
int ms_profile_load(const char *path, ms_profile *out, bool *used_defaults, char *err,
                    size_t err_size);

/* Checks the invariants the parser enforces (for profiles built in code).
 * Returns 0, or -1 with err naming the field. */
int ms_profile_validate(const ms_profile *p, char *err, size_t err_size);

/* Serialises a profile in the file format (pretty-printed JSON, newline at
 * the end); returns a malloc'd string the caller frees, or NULL with err. */
char *ms_profile_to_json(const ms_profile *p, char *err, size_t err_size);

/* Latency model of one stage: base_ms + per_unit_ms * units (units <= 0 → 0 ms). */
double ms_profile_latency_ms(const ms_profile *p, ms_stage stage, int64_t units);

/* Looks up an SLO class by name; "" or NULL gives the defaults. Returns 0 and
 * sets *ttft_ms / *tbt_ms, or -1 if no class has that name. */
int ms_profile_slo_class(const ms_profile *p, const char *name, int32_t *ttft_ms, int32_t *tbt_ms);

#endif
