/* autoscale.h — the autoscaler's decisions as pure functions over plain
 * structs (DESIGN.md §2.5). No clock reads (time comes in as now_ms), no
 * Redis, no processes: modserve-autoscaler gathers the load and the actor
 * list, calls ms_autoscale_decide() once per window, and carries out what it
 * returns through its backend (local processes, docker compose, Kubernetes);
 * the simulator and the unit tests call the very same function.
 *
 * The rules (docs/autoscaler.md states them with worked examples):
 *   - a pool is the set of actors running one stage set (encoders
 *     "encode", text instances "prefill+decode", ...). Its need in replicas
 *     over a window is  sum over its stages s of load[s] / capacity[s]:
 *     image tokens/s over encode capacity, prompt tokens/s over prefill
 *     capacity, generated tokens/s over decode capacity (capacity = the
 *     profile's per-instance capacity at SLO; a stage with capacity 0 is
 *     unknown and adds nothing). With no decode load given this is the
 *     paper's replicas = ⌈load ÷ capacity⌉ per pool.
 *   - up: target = ⌈need of the latest window⌉ when that is above the
 *     current count — at once, so a burst is answered within one window.
 *   - event trigger: when SLO attainment over the latest window (at least
 *     attainment_min_requests requests) is below attainment_threshold, the
 *     lagging pool grows by at least one, at most once per up_cooldown_ms.
 *     Lagging = every pool holding a stage whose stage attainment is below
 *     the threshold; if none is known, the pool with the highest utilisation
 *     (need ÷ current).
 *   - down (hysteresis + cooldown): only when the windows of the last
 *     down_cooldown_ms (which the history must cover) ALL needed fewer
 *     replicas than running even with a (1 - down_band) headroom, i.e.
 *     target = max over them of ⌈need ÷ (1 - down_band)⌉; only if the pool
 *     was not scaled up within down_cooldown_ms nor down within window_ms,
 *     and never while attainment is below the threshold; at most
 *     max_step_down actors per decision (0 = no limit).
 *   - min_replicas ≤ target ≤ max_replicas always (min/max act at once).
 *   - drain before stop: scale-down names actors to DRAIN (they finish their
 *     work and take no new work; the least loaded go first, ties: the
 *     newest); an actor is named to STOP only once it is draining and has no
 *     work left. Draining actors count as leaving: `current` excludes them.
 */
#ifndef MS_AUTOSCALE_H
#define MS_AUTOSCALE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy.h"
#include "profile.h"

#define MS_AUTOSCALE_WINDOW_MS_DEFAULT        10000 /* load window */
#define MS_AUTOSCALE_UP_COOLDOWN_MS_DEFAULT   10000 /* between attainment-triggered scale-ups */
#define MS_AUTOSCALE_DOWN_COOLDOWN_MS_DEFAULT 60000 /* quiet time before a scale-down */
#define MS_AUTOSCALE_DOWN_BAND_DEFAULT        0.2   /* scale down only with this headroom left */
#define MS_AUTOSCALE_ATTAINMENT_DEFAULT       0.99  /* SLO attainment threshold (paper) */
#define MS_AUTOSCALE_ATTAINMENT_MIN_REQUESTS  20   /* fewer finished requests: attainment ignored */
#define MS_AUTOSCALE_MAX_POOLS                8    /* pools one decision handles */
#define MS_AUTOSCALE_MAX_ACTORS               256  /* actors of one pool one decision handles */
#define MS_AUTOSCALE_MAX_REPLICAS             4096 /* largest max_replicas accepted */
#define MS_AUTOSCALE_NAME_MAX                 32   /* pool name bytes incl. NUL */
#define MS_AUTOSCALE_REASON_MAX               512  /* reason text bytes incl. NUL */
#define MS_AUTOSCALE_NEVER                    INT64_MIN /* a last_*_ms that never happened */

/* ---- load over a window ------------------------------------------------------ */

/* What arrived and finished during one window. Rates are per second. */
typedef struct {
    int64_t end_ms;                          /* end of the window (caller's ms clock) */
    int64_t len_ms;                          /* its length, > 0 */
    double load[MS_STAGE_COUNT];             /* demand: image tokens/s (encode), prompt tokens/s
                                                (prefill: text + image tokens), generated tokens/s
                                                (decode); >= 0 */
    double images_per_s;                     /* images arrived per second */
    double image_requests_per_s;             /* requests with images arrived per second */
    int32_t requests;                        /* requests finished in the window */
    int32_t requests_met;                    /* of those, within both TTFT and TBT */
    double stage_attainment[MS_STAGE_COUNT]; /* share of the finished requests that went through
                                                the stage within its SLO share, 0..1; < 0 =
                                                unknown */
} ms_load_window;

/* SLO attainment of a window: requests_met / requests, or -1 if none finished. */
double ms_load_window_attainment(const ms_load_window *w);

/* Accumulates one window from events (the autoscaler process, the simulator
 * and the replay benchmark feed it; caller-owned storage, _init only). */
typedef struct {
    int64_t start_ms;                   /* window start */
    double units[MS_STAGE_COUNT];       /* image tokens, prompt tokens, generated tokens */
    int64_t images;                     /* images arrived */
    int64_t image_requests;             /* requests with images arrived */
    int32_t requests;                   /* requests finished */
    int32_t requests_met;               /* of those, within both SLOs */
    int32_t stage_seen[MS_STAGE_COUNT]; /* finished requests with a verdict for the stage */
    int32_t stage_met[MS_STAGE_COUNT];  /* of those, within the stage's share */
} ms_load_acc;

void ms_load_acc_init(ms_load_acc *a, int64_t start_ms);
/* A request arrived: its images, image tokens and prompt tokens (all >= 0). */
void ms_load_acc_arrival(ms_load_acc *a, int32_t n_images, int64_t image_tokens,
                         int64_t prompt_tokens);
/* Tokens generated (decode load), counted when emitted. */
void ms_load_acc_generated(ms_load_acc *a, int64_t tokens);
/* A request finished: met = within TTFT and TBT; stage_ok[s] = 1 within the
 * stage's share, 0 over it, -1 no verdict (did not pass through / unknown);
 * stage_ok may be NULL. */
void ms_load_acc_done(ms_load_acc *a, bool met, const int8_t stage_ok[MS_STAGE_COUNT]);
/* Writes the window [start_ms, end_ms) into *w (end_ms <= start_ms is a
 * programmer error) and restarts the accumulator at end_ms. */
void ms_load_acc_close(ms_load_acc *a, int64_t end_ms, ms_load_window *w);

/* Cumulative counters as a broker publishes them (totals since it started),
 * for processes that read snapshots instead of events. */
typedef struct {
    int64_t at_ms;                      /* when the snapshot was taken (caller's clock) */
    int64_t image_tokens;               /* image tokens of the requests accepted */
    int64_t prompt_tokens;              /* prompt tokens (text + image) of the requests accepted */
    int64_t generated_tokens;           /* tokens generated */
    int64_t images;                     /* images accepted */
    int64_t image_requests;             /* requests with images accepted */
    int64_t requests_done;              /* requests finished */
    int64_t requests_met;               /* of those, within both SLOs */
    int64_t stage_seen[MS_STAGE_COUNT]; /* finished requests with a verdict for the stage */
    int64_t stage_met[MS_STAGE_COUNT];  /* of those, within the stage's share */
} ms_load_counters;

/* The window between two snapshots: rates = differences / elapsed time. A
 * counter that went down (the broker restarted) counts from 0, i.e. its
 * difference is the new value. Returns 0, or -1 if cur->at_ms <= prev->at_ms
 * (nothing written). */
int ms_load_window_from_counters(const ms_load_counters *prev, const ms_load_counters *cur,
                                 ms_load_window *w);

/* ---- pools and actors ------------------------------------------------------------ */

typedef enum {
    MS_SCALE_STARTING = 0, /* started, not yet registered/serving (counted: it is coming) */
    MS_SCALE_UP,           /* serving */
    MS_SCALE_DRAINING,     /* finishing its work, takes none: counted as leaving */
} ms_scale_state;

/* One actor of a pool as the autoscaler sees it. */
typedef struct {
    int32_t id;            /* caller's handle (decisions return array positions, not this) */
    ms_scale_state state;  /* starting | up | draining */
    int64_t started_ms;    /* when it was started (caller's clock) */
    int64_t queued_tokens; /* image + prompt tokens waiting there */
    int32_t running;       /* running sequences + in-flight tasks */
} ms_scale_actor;

/* True iff the actor holds work: queued tokens or running tasks/sequences. */
bool ms_scale_actor_busy(const ms_scale_actor *a);

typedef struct {
    char name[MS_AUTOSCALE_NAME_MAX]; /* for reasons ("encode", "text"); "" = the stage-set name */
    uint32_t stages;                  /* MS_STAGE_BIT mask its actors run, non-zero */
    int32_t min_replicas;             /* >= 0 */
    int32_t max_replicas;             /* >= min_replicas, <= MS_AUTOSCALE_MAX_REPLICAS */
} ms_pool_config;

/* What a pool remembers between decisions (returned updated in the decision). */
typedef struct {
    int64_t last_up_ms;   /* last scale-up of the pool, MS_AUTOSCALE_NEVER if none */
    int64_t last_down_ms; /* last scale-down, MS_AUTOSCALE_NEVER if none */
} ms_pool_state;

/* A fresh state: both times MS_AUTOSCALE_NEVER. */
ms_pool_state ms_pool_state_initial(void);

typedef struct {
    const ms_pool_config *cfg;    /* borrowed */
    ms_pool_state state;          /* from the previous decision (or _initial) */
    const ms_scale_actor *actors; /* [n_actors] borrowed; starting, up and draining ones */
    size_t n_actors;              /* <= MS_AUTOSCALE_MAX_ACTORS */
} ms_pool_view;

typedef struct {
    int64_t window_ms;               /* load window length (the caller's cadence), > 0; also
                                        the least time between two scale-downs of a pool */
    int64_t up_cooldown_ms;          /* attainment trigger: at most one scale-up per this, >= 0 */
    int64_t down_cooldown_ms;        /* scale down only after this long quiet (and this long
                                        after a scale-up), >= 0 */
    double down_band;                /* [0, 1): headroom a scale-down must leave */
    double attainment_threshold;     /* (0, 1]: below it the event trigger fires */
    int32_t attainment_min_requests; /* >= 1: fewer finished requests → attainment ignored */
    int32_t max_step_down;           /* actors drained per decision and pool, 0 = no limit */
} ms_autoscale_config;

/* The MS_AUTOSCALE_*_DEFAULT values; max_step_down 0 (no limit). */
void ms_autoscale_config_default(ms_autoscale_config *c);
/* 0, or -1 with err naming the field. */
int ms_autoscale_config_validate(const ms_autoscale_config *c, char *err, size_t err_size);

/* Per-instance capacities at SLO from a profile: capacity[s] =
 * prof->stage[s].capacity_per_s (0 = unknown). */
void ms_autoscale_capacity_from_profile(const ms_profile *prof, double capacity[MS_STAGE_COUNT]);

/* Fractional replicas a pool running `stages` needs for window w: the sum of
 * load[s] / capacity[s] over its stages with capacity > 0. *known (may be
 * NULL) is set to whether any of its stages has a known capacity. */
double ms_autoscale_need(const ms_load_window *w, uint32_t stages,
                         const double capacity[MS_STAGE_COUNT], bool *known);

/* ---- decisions ---------------------------------------------------------------------- */

typedef enum {
    MS_TRIGGER_NONE = 0,   /* hold */
    MS_TRIGGER_LOAD,       /* the load formula (up at once, down after hysteresis + cooldown) */
    MS_TRIGGER_ATTAINMENT, /* SLO attainment below the threshold */
    MS_TRIGGER_MIN,        /* below min_replicas */
    MS_TRIGGER_MAX,        /* above max_replicas */
    MS_TRIGGER_INITIAL,    /* ms_autoscale_initial (not returned by decide) */
} ms_scale_trigger;

/* "none" | "load" | "attainment" | "min" | "max" | "initial". */
const char *ms_scale_trigger_name(ms_scale_trigger t);

typedef struct {
    int32_t current;          /* actors counted before the decision: starting + up */
    int32_t draining;         /* actors already draining (leaving; not in current) */
    double need;              /* fractional replicas the latest window needs (0 without windows) */
    bool need_known;          /* false: no stage of the pool has a known capacity */
    int32_t target;           /* replicas wanted after the decision */
    ms_scale_trigger trigger; /* why target differs from current (NONE: it does not) */
    int32_t n_start;          /* processes to start now (target - current when growing) */
    int32_t n_drain;          /* actors to drain now */
    int32_t drain[MS_AUTOSCALE_MAX_ACTORS]; /* [n_drain] positions in the pool's actors[] */
    int32_t n_stop; /* draining actors with no work left: stop (or reap) them */
    int32_t stop[MS_AUTOSCALE_MAX_ACTORS]; /* [n_stop] positions in the pool's actors[] */
    ms_pool_state state; /* the pool's state after this decision: pass it next time */
    char reason[MS_AUTOSCALE_REASON_MAX]; /* one line for the log and Redis */
} ms_pool_decision;

/* Decides every pool at now_ms from the load history windows[0..n_windows)
 * (oldest first, end_ms ascending, the last = the latest complete window;
 * may be empty) and the per-instance capacities. out[i] is pools[i]'s
 * decision. Returns 0, or -1 with err (a bad config, windows out of order or
 * with len_ms <= 0, a pool with stages 0, min > max, too many actors/pools). */
int ms_autoscale_decide(const ms_autoscale_config *cfg, int64_t now_ms,
                        const ms_load_window *windows, size_t n_windows,
                        const double capacity[MS_STAGE_COUNT], const ms_pool_view *pools,
                        size_t n_pools, ms_pool_decision *out, char *err, size_t err_size);

/* Initial size of a pool from recent history: ⌈median over the windows of
 * ms_autoscale_need⌉ clamped to [min_replicas, max_replicas]; with no
 * windows, or no known capacity, min_replicas (at least 1 when
 * max_replicas >= 1 and the history has load). */
int32_t ms_autoscale_initial(const ms_pool_config *pool, const double capacity[MS_STAGE_COUNT],
                             const ms_load_window *windows, size_t n_windows);

/* The ModServe paper's initial sizing, for comparison (RESEARCH.md):
 * N_image = ⌈median image QPS × median encode latency (s)⌉ and
 * N_text = ⌈N_image ÷ median images per request⌉, each at least 1 when the
 * image QPS is > 0 (0 and 0 otherwise; images_per_request <= 0 counts as 1). */
void ms_autoscale_paper_initial(double image_qps_median, double encode_latency_s_median,
                                double images_per_request_median, int32_t *n_image,
                                int32_t *n_text);

#endif
