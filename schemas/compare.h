/* compare.h — `modserve bench --compare LAYOUT,LAYOUT...`: the same trace
 * slice replayed on several cluster layouts with the same total core budget,
 * side by side (docs/comparison.md is the guide).
 *
 *   ms_compare_split_cores(...)     how a layout spends N cores (pure)
 *   ms_compare_cluster_conf(...)    the cluster file of one layout (pure)
 *   ms_compare_run(&opts, fn, ud, res, ...)
 *       optionally derives the SLOs first (isolated requests on the monolith
 *       × a factor), then for each rate and each layout: brings a local
 *       cluster up in OUT/runs/LABEL (schemas/cluster.h), calls fn — the
 *       caller's trace replay — against it, takes it down; with autoscaling,
 *       one more run of the modserve layout per rate with modserve-autoscaler
 *       beside it
 *   ms_compare_print(stdout, res)   the side-by-side table and the ratios
 *   ms_compare_write_json / _svg    compare.json, compare.svg
 *   ms_compare_result_fini(res)
 *
 * The replay itself belongs to the caller (tools/modserve-bench.c owns the
 * trace, the synthetic requests and each run's report), so this module is:
 * the core split, the run loop and the clusters' lifecycle, the SLO
 * derivation, the ratios and the highest rate at SLO (pure functions the unit
 * tests check), and the table and files.
 *
 * Core budget: every actor runs MS_COMPARE_THREADS compute thread, so a
 * layout with N cores has N actors: the monolith N × encode+prefill+decode;
 * modserve E encoders + (N − E) text instances (prefill+decode); disagg E
 * encoders + P prefill + (N − E − P) decode actors. E (and P) come from the
 * slice's load per stage (`need`, e.g. load ÷ per-instance capacity from a
 * profile): each pool gets cores in proportion to its need, at least one if
 * it has any load; without a known need, an even split.
 */
#ifndef MS_COMPARE_H
#define MS_COMPARE_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "cluster.h"
#include "report.h"

#define MS_COMPARE_MAX_LAYOUTS     3 /* layouts in one comparison (modserve, monolith, disagg) */
#define MS_COMPARE_MAX_RATES       8 /* rate multipliers in one sweep */
#define MS_COMPARE_MAX_CELLS       (MS_COMPARE_MAX_RATES * (MS_COMPARE_MAX_LAYOUTS + 1))
#define MS_COMPARE_MAX_POOLS       3     /* actor groups of one layout */
#define MS_COMPARE_MAX_CORES       64    /* cores (= actors) per layout */
#define MS_COMPARE_THREADS         1     /* compute threads per actor */
#define MS_COMPARE_ATTAINMENT      0.99  /* SLO attainment a rate must reach to count as "at SLO" */
#define MS_COMPARE_SLO_FACTOR      5.0   /* SLO = isolated latency on the monolith × this */
#define MS_COMPARE_CALIB_REQUESTS  20    /* isolated requests measured to derive the SLOs */
#define MS_COMPARE_KV_TOKENS       16384 /* KV capacity of every text-capable actor, tokens */
#define MS_COMPARE_VIT_BATCH       4     /* images per ViT pass (as the shipped cluster files) */
#define MS_COMPARE_UP_TIMEOUT_MS   120000 /* every actor registered within this */
#define MS_COMPARE_DRAIN_MS        10000  /* actors drain this long at the end of a run */
#define MS_COMPARE_CALIB_TTFT_MS   120000 /* SLOs sent with the isolated requests (not judged) */
#define MS_COMPARE_CALIB_TBT_MS    10000
#define MS_COMPARE_TBT_FALLBACK_MS 200   /* TBT target when no isolated request had a TPOT */
#define MS_COMPARE_PORT_START      10000 /* port bases tried from here (+ a pid-derived offset) */
#define MS_COMPARE_PORT_SLOTS      2000
#define MS_COMPARE_LABEL_MAX       64  /* bytes of a run label ("monolith-x2"), with the NUL */
#define MS_COMPARE_ERROR_MAX       256 /* bytes of a run's error message kept, with the NUL */

/* ---- parsing the options -------------------------------------------------------- */

/* "modserve,monolith" → names[0..n) (each one of modserve, monolith, disagg,
 * no repeats, at most max). Returns n >= 1, or -1 + err. */
int ms_compare_parse_layouts(const char *s, char (*names)[MS_CLUSTER_NAME_MAX], int max, char *err,
                             size_t err_size);
/* "1,2,4" → rates[0..n) (each > 0, finite, strictly increasing, at most max).
 * Returns n >= 1, or -1 + err. */
int ms_compare_parse_rates(const char *s, double *rates, int max, char *err, size_t err_size);

/* ---- the core split (pure) ------------------------------------------------------- */

/* One group of identical actors. */
typedef struct ms_compare_pool {
    char name[MS_CLUSTER_NAME_MAX];   /* group name: "enc", "text", "pre", "dec", "mono" */
    char stages[MS_CLUSTER_NAME_MAX]; /* its stage set (cluster.h) */
    int count;                        /* actors */
    int threads;                      /* compute threads per actor (MS_COMPARE_THREADS) */
} ms_compare_pool;

typedef struct ms_compare_split {
    int cores;   /* actors × threads over all pools */
    int n_pools; /* pools in use */
    ms_compare_pool pools[MS_COMPARE_MAX_POOLS];
} ms_compare_split;

/* Stages in `need` order. */
enum { MS_COMPARE_ENCODE = 0, MS_COMPARE_PREFILL = 1, MS_COMPARE_DECODE = 2 };

/* How `layout` (modserve | monolith | disagg) spends `cores` cores (one
 * actor per core, MS_COMPARE_THREADS thread each). need[encode, prefill,
 * decode] is the slice's work per stage in any common unit (instance-seconds,
 * load ÷ capacity); NULL or all <= 0 = unknown. has_images: the slice has
 * image requests (else modserve/disagg get no encoder unless asked). encoders >= 0
 * fixes the encoder count of modserve/disagg (ignored by the monolith);
 * < 0 = from need.
 * Rule (largest remainder): each pool of the layout that has load gets one
 * core, the rest go in proportion to the pools' needs (modserve: encode vs
 * prefill + decode; disagg: encode, prefill, decode; ties go to the later,
 * text-side pool); unknown need = an even split. 0, or -1 + err (unknown layout, cores out
 * of 1..MS_COMPARE_MAX_CORES, fewer cores than pools that need one, encoders out of range). */
int ms_compare_split_cores(const char *layout, int cores, int encoders, const double need[3],
                           bool has_images, ms_compare_split *out, char *err, size_t err_size);

/* "1 enc (encode) + 1 text (prefill+decode)" into buf. */
void ms_compare_split_describe(const ms_compare_split *s, char *buf, size_t size);

/* The cluster of one layout: ms_cluster_conf_default, then layout, the
 * split's groups (vit_batch on encoding groups, kv_tokens on text-capable
 * ones; 0 = engine default), the models and the broker profile ("" or NULL:
 * none), validated. 0, or -1 + err. */
int ms_compare_cluster_conf(ms_cluster_conf *c, const char *layout, const ms_compare_split *s,
                            const char *lm, const char *mmproj, const char *profile, int kv_tokens,
                            int vit_batch, char *err, size_t err_size);

/* ---- results ---------------------------------------------------------------------- */

/* One run: a layout at a rate, autoscaled or not. */
typedef struct ms_compare_cell {
    char layout[MS_CLUSTER_NAME_MAX];
    char label[MS_COMPARE_LABEL_MAX]; /* "modserve-x2", "modserve+autoscale-x1" */
    double rate;                      /* multiplier on the user's schedule */
    bool autoscale;                   /* modserve-autoscaler ran beside the cluster */
    ms_compare_split split;           /* the actors it started with */
    bool ran;                         /* the replay ran: sum and bins are valid */
    char error[MS_COMPARE_ERROR_MAX]; /* why it did not run (or "") */
    ms_report_summary sum;            /* the replay's summary (report.h) */
    ms_report_bin *bins;              /* its timeline (malloc'd, owned; may be NULL) */
    int n_bins;
    double bin_s;                     /* bin width of bins, s */
    double up_s;                      /* cluster start-up time, s */
    double load1_before, load1_after; /* 1-minute load average before / after the replay */
    char out[MS_CLUSTER_PATH_MAX];    /* the run's report directory */
} ms_compare_cell;

/* The SLO targets of a comparison and where they came from. */
typedef struct ms_compare_slo {
    double ttft_ms, tbt_ms; /* the targets every run used */
    bool derived;           /* from isolated requests on the monolith (else given) */
    double factor;          /* the SLO factor (derived only) */
    double iso_ttft_ms;     /* isolated TTFT, P50 over the calibration requests (derived only) */
    double iso_tpot_ms;     /* isolated TPOT, P50 likewise */
    int calib_requests;     /* requests measured */
} ms_compare_slo;

typedef struct ms_compare_result {
    ms_compare_slo slo;
    char baseline[MS_CLUSTER_NAME_MAX]; /* layout the ratios divide by ("monolith" if compared) */
    int cores;                          /* the budget per layout */
    int n_cells;
    ms_compare_cell cells[MS_COMPARE_MAX_CELLS];
    bool interrupted; /* stopped early (^C): the cells that ran are kept */
} ms_compare_result;

/* Frees what the cells own (the bins); the result stays readable. */
void ms_compare_result_fini(ms_compare_result *r);

/* SLO targets from isolated latencies (pure): ttft = factor × iso_ttft,
 * tbt = factor × iso_tpot, each rounded up to a whole ms and at least 1 ms. */
void ms_compare_derive_slo(double iso_ttft_ms, double iso_tpot_ms, double factor,
                           ms_compare_slo *out);

/* The highest rate among the runs of `layout` (autoscaled or not) whose SLO
 * attainment over all requests reaches `threshold`, counting only rates below
 * which every run of that layout reached it too (the sweep's "max throughput
 * under SLO"). 0 when the lowest rate already misses or nothing ran. */
double ms_compare_max_rate(const ms_compare_result *r, const char *layout, bool autoscale,
                           double threshold);

/* The run of layout at rate (exact), autoscaled or not; NULL if none ran. */
const ms_compare_cell *ms_compare_find(const ms_compare_result *r, const char *layout, double rate,
                                       bool autoscale);

/* Cost per 1,000 requests that met both SLOs: instance-seconds × 1000 ÷
 * slo_met (all modalities); INFINITY when none met them. */
double ms_compare_cost_per_1k_good(const ms_compare_cell *c);

/* Ratios of run a to run b (b the baseline): goodput a ÷ b, P99 TTFT a ÷ b
 * (all, text, image), instance-seconds a ÷ b, cost per good request a ÷ b.
 * A ratio with a side that is missing, infinite or a 0 divisor is NAN. */
typedef struct ms_compare_ratios {
    double goodput, ttft_p99_all, ttft_p99_text, ttft_p99_image, instance_s, cost_per_good;
    double attainment_a, attainment_b; /* the two attainments, for reading the ratios */
} ms_compare_ratios;
void ms_compare_ratios_of(const ms_compare_cell *a, const ms_compare_cell *b,
                          ms_compare_ratios *out);

/* ---- the run loop ----------------------------------------------------------------- */

/* What the replay callback is asked to do. */
typedef struct ms_compare_replay {
    const char *rundir;     /* the cluster to replay against (a `modserve up` run directory) */
    const char *out;        /* its report directory */
    const char *label;      /* the run's label, for messages */
    double rate;            /* multiplier on the caller's schedule */
    double ttft_ms, tbt_ms; /* SLO targets to send and judge against */
    int concurrency;        /* > 0: requests in flight at most (calibration: 1) */
    int sample;             /* > 0: only this many requests spread evenly over the slice, all
                               scheduled at once (calibration); 0: the whole slice */
} ms_compare_replay;

/* Replays against spec->rundir and fills cell->sum, cell->bins / n_bins /
 * bin_s (ownership of bins passes to the cell). 0 when a summary was made
 * (requests that failed are part of it), -1 + err when the replay could not
 * run at all. */
typedef int (*ms_compare_replay_fn)(void *ud, const ms_compare_replay *spec, ms_compare_cell *cell,
                                    char *err, size_t err_size);

typedef struct ms_compare_opts {
    char layouts[MS_COMPARE_MAX_LAYOUTS][MS_CLUSTER_NAME_MAX]; /* in run order */
    int n_layouts;
    double rates[MS_COMPARE_MAX_RATES]; /* increasing */
    int n_rates;
    int cores;                   /* budget per layout (1..MS_COMPARE_MAX_CORES) */
    int encoders;                /* < 0: from need */
    double need[3];              /* the slice's work per stage (see ms_compare_split_cores) */
    bool has_images;             /* the slice has image requests */
    const char *lm, *mmproj;     /* model files (mmproj "" or NULL: text only) */
    const char *profile;         /* broker profile for every cluster ("" or NULL: none) */
    const char *bin_dir;         /* where modserve-broker, modserve-actor (and -autoscaler) are */
    const char *out;             /* output directory (runs/ and each run's reports in it) */
    int kv_tokens, vit_batch;    /* per actor (0: engine default) */
    double ttft_ms, tbt_ms;      /* > 0: given targets; 0: derive that one */
    double slo_factor;           /* for derived targets */
    int calib_requests;          /* isolated requests for the derivation */
    bool autoscale;              /* also run modserve with the autoscaler, per rate */
    const char *autoscale_args;  /* extra modserve-autoscaler arguments (split at spaces) */
    int port_base;               /* > 0: first port base tried; else pid-derived */
    volatile sig_atomic_t *stop; /* may be NULL; non-zero: stop after the current run */
    FILE *log;                   /* progress messages (NULL: none) */
} ms_compare_opts;

/* Defaults: cores 2, encoders -1, one rate 1, kv_tokens MS_COMPARE_KV_TOKENS,
 * vit_batch MS_COMPARE_VIT_BATCH, slo_factor MS_COMPARE_SLO_FACTOR,
 * calib_requests MS_COMPARE_CALIB_REQUESTS, everything else 0/NULL. */
void ms_compare_opts_default(ms_compare_opts *o);

/* Runs the comparison into *res (zeroed first). A run whose cluster fails
 * to start is kept as a cell with its error and the loop goes on; a failed
 * SLO derivation ends it. Returns 0 when at least one run produced a summary,
 * -1 + err otherwise (or on bad options). Call ms_compare_result_fini. */
int ms_compare_run(const ms_compare_opts *o, ms_compare_replay_fn fn, void *ud,
                   ms_compare_result *res, char *err, size_t err_size);

/* ---- output ------------------------------------------------------------------------ */

/* The side-by-side table: per rate, one row per layout (SLO attainment,
 * goodput, throughput, P99 TTFT all/text/image, P99 TPOT, instance-seconds,
 * cost per 1k good requests, load average), then the ratios to the baseline;
 * then the highest rate at SLO per layout and its ratio. */
void ms_compare_print(FILE *f, const ms_compare_result *r);

/* compare.json: the SLOs (and how they were made), the budget and each
 * layout's split, every run (label, layout, rate, autoscale, split, error,
 * duration, load average, per modality requests/completed/attainment/goodput/
 * throughput/TTFT/TPOT/E2E P50 P90 P99, instance-seconds, cost per 1k good),
 * the ratios per rate, the highest rate at SLO per layout. meta_json: an
 * optional JSON object text (the trace and slice, from the caller) stored
 * under "workload"; NULL or unparsable = left out. 0, or -1 + err. */
int ms_compare_write_json(const char *path, const ms_compare_result *r, const char *meta_json,
                          char *err, size_t err_size);

/* compare.svg: three panels — P99 TTFT per timeline bin over replay time for
 * every run (one colour per layout, one dash per rate), SLO attainment by rate
 * per layout, goodput by rate per layout — and a title. 0, or -1 + err. */
int ms_compare_write_svg(const char *path, const char *title, const ms_compare_result *r, char *err,
                         size_t err_size);

#endif
