/* autoscale.c — the autoscaler's pure decision functions: load windows,
 * the replicas formula, the attainment trigger, hysteresis and cooldown on
 * the way down, drain before stop. See autoscale.h and docs/autoscaler.md. */
#include "autoscale.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

/* A need of 3.0000000001 replicas is 3, not 4 (rates come from divisions). */
#define S_NEED_EPS 1e-9

/* ---- windows ------------------------------------------------------------------ */

double ms_load_window_attainment(const ms_load_window *w) {
    assert(w);
    if (w->requests <= 0) return -1.0;
    return (double)w->requests_met / (double)w->requests;
}

void ms_load_acc_init(ms_load_acc *a, int64_t start_ms) {
    assert(a);
    memset(a, 0, sizeof(*a));
    a->start_ms = start_ms;
}

void ms_load_acc_arrival(ms_load_acc *a, int32_t n_images, int64_t image_tokens,
                         int64_t prompt_tokens) {
    assert(a && n_images >= 0 && image_tokens >= 0 && prompt_tokens >= 0);
    a->units[MS_STAGE_ENCODE] += (double)image_tokens;
    a->units[MS_STAGE_PREFILL] += (double)prompt_tokens;
    a->images += n_images;
    if (n_images > 0) a->image_requests++;
}

void ms_load_acc_generated(ms_load_acc *a, int64_t tokens) {
    assert(a && tokens >= 0);
    a->units[MS_STAGE_DECODE] += (double)tokens;
}

void ms_load_acc_done(ms_load_acc *a, bool met, const int8_t stage_ok[MS_STAGE_COUNT]) {
    assert(a);
    a->requests++;
    if (met) a->requests_met++;
    for (int s = 0; stage_ok && s < MS_STAGE_COUNT; s++) {
        if (stage_ok[s] < 0) continue;
        a->stage_seen[s]++;
        if (stage_ok[s] > 0) a->stage_met[s]++;
    }
}

void ms_load_acc_close(ms_load_acc *a, int64_t end_ms, ms_load_window *w) {
    assert(a && w);
    assert(end_ms > a->start_ms);
    const double secs = (double)(end_ms - a->start_ms) / 1000.0;
    memset(w, 0, sizeof(*w));
    w->end_ms = end_ms;
    w->len_ms = end_ms - a->start_ms;
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        w->load[s] = a->units[s] / secs;
        w->stage_attainment[s] =
            a->stage_seen[s] > 0 ? (double)a->stage_met[s] / (double)a->stage_seen[s] : -1.0;
    }
    w->images_per_s = (double)a->images / secs;
    w->image_requests_per_s = (double)a->image_requests / secs;
    w->requests = a->requests;
    w->requests_met = a->requests_met;
    ms_load_acc_init(a, end_ms);
}

/* Growth of a cumulative counter; a decrease means it restarted from 0. */
static int64_t s_delta(int64_t prev, int64_t cur) {
    return cur >= prev ? cur - prev : cur;
}

int ms_load_window_from_counters(const ms_load_counters *prev, const ms_load_counters *cur,
                                 ms_load_window *w) {
    assert(prev && cur && w);
    if (cur->at_ms <= prev->at_ms) return -1;
    ms_load_acc a;
    ms_load_acc_init(&a, prev->at_ms);
    a.units[MS_STAGE_ENCODE] = (double)s_delta(prev->image_tokens, cur->image_tokens);
    a.units[MS_STAGE_PREFILL] = (double)s_delta(prev->prompt_tokens, cur->prompt_tokens);
    a.units[MS_STAGE_DECODE] = (double)s_delta(prev->generated_tokens, cur->generated_tokens);
    a.images = s_delta(prev->images, cur->images);
    a.image_requests = s_delta(prev->image_requests, cur->image_requests);
    int64_t done = s_delta(prev->requests_done, cur->requests_done);
    int64_t met = s_delta(prev->requests_met, cur->requests_met);
    if (met > done) met = done; /* a restart between the two reads of one snapshot */
    a.requests = (int32_t)MS_MIN(done, (int64_t)INT32_MAX);
    a.requests_met = (int32_t)MS_MIN(met, (int64_t)a.requests);
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        const int64_t seen = s_delta(prev->stage_seen[s], cur->stage_seen[s]);
        const int64_t ok = s_delta(prev->stage_met[s], cur->stage_met[s]);
        a.stage_seen[s] = (int32_t)MS_MIN(seen, (int64_t)INT32_MAX);
        a.stage_met[s] = (int32_t)MS_MIN(ok, (int64_t)a.stage_seen[s]);
    }
    ms_load_acc_close(&a, cur->at_ms, w);
    return 0;
}

/* ---- config, capacity, need -------------------------------------------------------- */

void ms_autoscale_config_default(ms_autoscale_config *c) {
    assert(c);
    memset(c, 0, sizeof(*c));
    c->window_ms = MS_AUTOSCALE_WINDOW_MS_DEFAULT;
    c->up_cooldown_ms = MS_AUTOSCALE_UP_COOLDOWN_MS_DEFAULT;
    c->down_cooldown_ms = MS_AUTOSCALE_DOWN_COOLDOWN_MS_DEFAULT;
    c->down_band = MS_AUTOSCALE_DOWN_BAND_DEFAULT;
    c->attainment_threshold = MS_AUTOSCALE_ATTAINMENT_DEFAULT;
    c->attainment_min_requests = MS_AUTOSCALE_ATTAINMENT_MIN_REQUESTS;
    c->max_step_down = 0;
}

int ms_autoscale_config_validate(const ms_autoscale_config *c, char *err, size_t err_size) {
    assert(c);
    if (c->window_ms <= 0) return ms_errf(err, err_size, "window_ms must be > 0");
    if (c->up_cooldown_ms < 0) return ms_errf(err, err_size, "up_cooldown_ms must be >= 0");
    if (c->down_cooldown_ms < 0) return ms_errf(err, err_size, "down_cooldown_ms must be >= 0");
    if (!isfinite(c->down_band) || c->down_band < 0 || c->down_band >= 1)
        return ms_errf(err, err_size, "down_band %g out of range [0, 1)", c->down_band);
    if (!isfinite(c->attainment_threshold) || c->attainment_threshold <= 0 ||
        c->attainment_threshold > 1)
        return ms_errf(err, err_size, "attainment_threshold %g out of range (0, 1]",
                       c->attainment_threshold);
    if (c->attainment_min_requests < 1)
        return ms_errf(err, err_size, "attainment_min_requests must be >= 1");
    if (c->max_step_down < 0) return ms_errf(err, err_size, "max_step_down must be >= 0");
    return 0;
}

void ms_autoscale_capacity_from_profile(const ms_profile *prof, double capacity[MS_STAGE_COUNT]) {
    assert(prof && capacity);
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        capacity[s] = prof->stage[s].capacity_per_s;
}

double ms_autoscale_need(const ms_load_window *w, uint32_t stages,
                         const double capacity[MS_STAGE_COUNT], bool *known) {
    assert(w && capacity);
    double need = 0;
    bool any = false;
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        if (!(stages & MS_STAGE_BIT(s)) || !(capacity[s] > 0) || !isfinite(capacity[s])) continue;
        any = true;
        if (w->load[s] > 0 && isfinite(w->load[s])) need += w->load[s] / capacity[s];
    }
    if (known) *known = any;
    return need;
}

static int32_t s_ceil_replicas(double need) {
    if (!(need > S_NEED_EPS)) return 0;
    const double c = ceil(need - S_NEED_EPS);
    return c >= (double)MS_AUTOSCALE_MAX_REPLICAS ? MS_AUTOSCALE_MAX_REPLICAS : (int32_t)c;
}

static int32_t s_clamp(int32_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

const char *ms_scale_trigger_name(ms_scale_trigger t) {
    switch (t) {
    case MS_TRIGGER_NONE:
        return "none";
    case MS_TRIGGER_LOAD:
        return "load";
    case MS_TRIGGER_ATTAINMENT:
        return "attainment";
    case MS_TRIGGER_MIN:
        return "min";
    case MS_TRIGGER_MAX:
        return "max";
    case MS_TRIGGER_INITIAL:
        return "initial";
    }
    return "?";
}

bool ms_scale_actor_busy(const ms_scale_actor *a) {
    assert(a);
    return a->queued_tokens > 0 || a->running > 0;
}

ms_pool_state ms_pool_state_initial(void) {
    return (ms_pool_state){.last_up_ms = MS_AUTOSCALE_NEVER, .last_down_ms = MS_AUTOSCALE_NEVER};
}

/* now - t >= span, with t possibly MS_AUTOSCALE_NEVER (always true then). */
static bool s_elapsed(int64_t now, int64_t t, int64_t span) {
    if (t == MS_AUTOSCALE_NEVER) return true;
    return now - t >= span;
}

/* ---- initial sizing ------------------------------------------------------------------ */

static int s_cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int32_t ms_autoscale_initial(const ms_pool_config *pool, const double capacity[MS_STAGE_COUNT],
                             const ms_load_window *windows, size_t n_windows) {
    assert(pool && capacity && (windows || n_windows == 0));
    if (n_windows == 0) return pool->min_replicas;
    double *needs = ms_xmalloc(n_windows * sizeof(double));
    bool known = false;
    for (size_t i = 0; i < n_windows; i++)
        needs[i] = ms_autoscale_need(&windows[i], pool->stages, capacity, &known);
    qsort(needs, n_windows, sizeof(double), s_cmp_double);
    const double med = n_windows % 2 ? needs[n_windows / 2]
                                     : 0.5 * (needs[n_windows / 2 - 1] + needs[n_windows / 2]);
    free(needs);
    if (!known) return pool->min_replicas;
    return s_clamp(s_ceil_replicas(med), pool->min_replicas, pool->max_replicas);
}

void ms_autoscale_paper_initial(double image_qps_median, double encode_latency_s_median,
                                double images_per_request_median, int32_t *n_image,
                                int32_t *n_text) {
    assert(n_image && n_text);
    if (!(image_qps_median > 0) || !isfinite(image_qps_median)) {
        *n_image = 0;
        *n_text = 0;
        return;
    }
    const double lat = encode_latency_s_median > 0 ? encode_latency_s_median : 0;
    int32_t ni = s_ceil_replicas(image_qps_median * lat);
    if (ni < 1) ni = 1;
    const double ipr = images_per_request_median > 0 ? images_per_request_median : 1.0;
    int32_t nt = s_ceil_replicas((double)ni / ipr);
    if (nt < 1) nt = 1;
    *n_image = ni;
    *n_text = nt;
}

/* ---- decisions ----------------------------------------------------------------------- */

static int s_check_inputs(const ms_autoscale_config *cfg, const ms_load_window *w, size_t n_w,
                          const ms_pool_view *pools, size_t n_pools, char *err, size_t err_size) {
    if (ms_autoscale_config_validate(cfg, err, err_size) != 0) return -1;
    if (n_pools > MS_AUTOSCALE_MAX_POOLS)
        return ms_errf(err, err_size, "%zu pools, at most %d", n_pools, MS_AUTOSCALE_MAX_POOLS);
    for (size_t i = 0; i < n_w; i++) {
        if (w[i].len_ms <= 0) return ms_errf(err, err_size, "window %zu: len_ms must be > 0", i);
        if (i > 0 && w[i].end_ms < w[i - 1].end_ms)
            return ms_errf(err, err_size, "window %zu ends before window %zu (oldest first)", i,
                           i - 1);
        if (w[i].requests < 0 || w[i].requests_met < 0 || w[i].requests_met > w[i].requests)
            return ms_errf(err, err_size, "window %zu: requests_met %d of %d", i, w[i].requests_met,
                           w[i].requests);
    }
    for (size_t p = 0; p < n_pools; p++) {
        const ms_pool_config *c = pools[p].cfg;
        if (!c) return ms_errf(err, err_size, "pool %zu: no config", p);
        if ((c->stages & ~(uint32_t)MS_STAGES_ALL) || c->stages == 0)
            return ms_errf(err, err_size, "pool %zu: stage set 0x%x is not valid", p, c->stages);
        if (c->min_replicas < 0 || c->max_replicas < c->min_replicas ||
            c->max_replicas > MS_AUTOSCALE_MAX_REPLICAS)
            return ms_errf(err, err_size, "pool %zu: min %d / max %d replicas out of range", p,
                           c->min_replicas, c->max_replicas);
        if (pools[p].n_actors > MS_AUTOSCALE_MAX_ACTORS)
            return ms_errf(err, err_size, "pool %zu: %zu actors, at most %d", p, pools[p].n_actors,
                           MS_AUTOSCALE_MAX_ACTORS);
        if (pools[p].n_actors > 0 && !pools[p].actors)
            return ms_errf(err, err_size, "pool %zu: actors missing", p);
    }
    return 0;
}

/* Worst known stage attainment of a pool's stages in w; > 1 when none known. */
static double s_pool_stage_attainment(const ms_load_window *w, uint32_t stages) {
    double worst = 2.0;
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        if ((stages & MS_STAGE_BIT(s)) && w->stage_attainment[s] >= 0 &&
            w->stage_attainment[s] < worst)
            worst = w->stage_attainment[s];
    return worst;
}

/* Marks in lag[] the pools the attainment trigger grows (see autoscale.h). */
static void s_lagging(const ms_autoscale_config *cfg, const ms_load_window *latest,
                      const double capacity[MS_STAGE_COUNT], const ms_pool_view *pools,
                      size_t n_pools, const int32_t *current, bool *lag) {
    bool any = false;
    for (size_t p = 0; p < n_pools; p++) {
        lag[p] = s_pool_stage_attainment(latest, pools[p].cfg->stages) < cfg->attainment_threshold;
        any = any || lag[p];
    }
    if (any) return;
    /* no stage verdicts point at a pool: the most utilised one lags */
    double best = -1;
    size_t pick = n_pools;
    for (size_t p = 0; p < n_pools; p++) {
        bool known = false;
        const double need = ms_autoscale_need(latest, pools[p].cfg->stages, capacity, &known);
        const double util = known ? need / (current[p] > 0 ? current[p] : 1) : -0.5;
        if (util > best) best = util, pick = p;
    }
    if (pick < n_pools) lag[pick] = true;
}

typedef struct {
    size_t pos; /* position in actors[] */
    const ms_scale_actor *a;
} s_cand;

/* Least loaded first (queued tokens, then running), ties: newest, then the
 * higher position (the last started of equal age). */
static int s_cand_cmp(const void *x, const void *y) {
    const s_cand *a = x, *b = y;
    if (a->a->queued_tokens != b->a->queued_tokens)
        return a->a->queued_tokens < b->a->queued_tokens ? -1 : 1;
    if (a->a->running != b->a->running) return a->a->running < b->a->running ? -1 : 1;
    if (a->a->started_ms != b->a->started_ms) return a->a->started_ms > b->a->started_ms ? -1 : 1;
    return a->pos > b->pos ? -1 : 1;
}

/* Appends printf text to d->reason. */
static void s_why(ms_pool_decision *d, const char *fmt, ...) MS_PRINTF(2, 3);
static void s_why(ms_pool_decision *d, const char *fmt, ...) {
    const size_t used = strlen(d->reason);
    if (used + 1 >= sizeof(d->reason)) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->reason + used, sizeof(d->reason) - used, fmt, ap);
    va_end(ap);
}

/* The scale-down target from the windows of the last down_cooldown_ms, or
 * -1 when the history does not cover that span. */
static int32_t s_down_target(const ms_autoscale_config *cfg, int64_t now, const ms_load_window *w,
                             size_t n_w, uint32_t stages, const double capacity[MS_STAGE_COUNT]) {
    if (n_w == 0) return -1;
    if (cfg->down_cooldown_ms == 0)
        return s_ceil_replicas(ms_autoscale_need(&w[n_w - 1], stages, capacity, NULL) /
                               (1.0 - cfg->down_band));
    const int64_t from = now - cfg->down_cooldown_ms;
    int32_t most = 0;
    bool covered = false, any = false;
    for (size_t i = n_w; i-- > 0;) {
        if (w[i].end_ms <= from) { /* the windows after it reach back to `from` */
            covered = any;
            break;
        }
        any = true;
        const double need = ms_autoscale_need(&w[i], stages, capacity, NULL);
        const int32_t n = s_ceil_replicas(need / (1.0 - cfg->down_band));
        if (n > most) most = n;
        if (w[i].end_ms - w[i].len_ms <= from) {
            covered = true;
            break;
        }
    }
    return covered ? most : -1;
}

static void s_decide_pool(const ms_autoscale_config *cfg, int64_t now, const ms_load_window *w,
                          size_t n_w, const double capacity[MS_STAGE_COUNT], const ms_pool_view *pv,
                          bool lagging, bool attain_low, double attain, ms_pool_decision *d) {
    const ms_pool_config *c = pv->cfg;
    memset(d, 0, sizeof(*d));
    d->state = pv->state;
    char sname[MS_STAGES_NAME_MAX];
    const char *name = c->name[0] ? c->name : ms_stages_name(c->stages, sname, sizeof(sname));

    /* count; draining actors that finished are stopped */
    for (size_t i = 0; i < pv->n_actors; i++) {
        const ms_scale_actor *a = &pv->actors[i];
        if (a->state == MS_SCALE_DRAINING) {
            d->draining++;
            if (!ms_scale_actor_busy(a)) d->stop[d->n_stop++] = (int32_t)i;
        } else {
            d->current++;
        }
    }
    const int32_t cur = d->current;
    const ms_load_window *latest = n_w > 0 ? &w[n_w - 1] : NULL;
    if (latest) d->need = ms_autoscale_need(latest, c->stages, capacity, &d->need_known);
    const int32_t n_load = d->need_known ? s_ceil_replicas(d->need) : cur;

    s_why(d, "%s: %d up/starting, %d draining", name, cur, d->draining);
    if (latest && d->need_known)
        s_why(d, "; need %.2f replicas (%d)", d->need, n_load);
    else if (latest)
        s_why(d, "; capacity unknown");
    else
        s_why(d, "; no load history");

    int32_t target = cur;
    ms_scale_trigger trig = MS_TRIGGER_NONE;
    if (n_load > cur) {
        target = n_load;
        trig = MS_TRIGGER_LOAD;
        s_why(d, "; load above capacity");
    }
    if (attain_low && lagging) {
        if (s_elapsed(now, pv->state.last_up_ms, cfg->up_cooldown_ms)) {
            if (target < cur + 1) {
                target = cur + 1;
                trig = MS_TRIGGER_ATTAINMENT;
            }
            s_why(d, "; SLO attainment %.3f < %.3f, this pool lags", attain,
                  cfg->attainment_threshold);
        } else {
            s_why(d, "; SLO attainment %.3f low, up cooldown running", attain);
        }
    }
    if (trig == MS_TRIGGER_NONE && n_load < cur) {
        const int32_t down = s_down_target(cfg, now, w, n_w, c->stages, capacity);
        if (attain_low) {
            s_why(d, "; below capacity but attainment is low: hold");
        } else if (down < 0) {
            s_why(d, "; below capacity, history shorter than the %lld ms cooldown: hold",
                  (long long)cfg->down_cooldown_ms);
        } else if (!s_elapsed(now, pv->state.last_up_ms, cfg->down_cooldown_ms)) {
            s_why(d, "; below capacity, scaled up %lld ms ago (cooldown %lld ms): hold",
                  (long long)(now - pv->state.last_up_ms), (long long)cfg->down_cooldown_ms);
        } else if (!s_elapsed(now, pv->state.last_down_ms, cfg->window_ms)) {
            s_why(d,
                  "; below capacity, scaled down %lld ms ago (one step per %lld ms window): hold",
                  (long long)(now - pv->state.last_down_ms), (long long)cfg->window_ms);
        } else if (down >= cur) {
            s_why(d, "; within the %.0f%% hysteresis band over the cooldown: hold",
                  cfg->down_band * 100);
        } else {
            target = down;
            if (cfg->max_step_down > 0 && cur - target > cfg->max_step_down)
                target = cur - cfg->max_step_down;
            trig = MS_TRIGGER_LOAD;
            s_why(d, "; load below %d replicas for the whole cooldown", down);
        }
    }
    /* bounds act at once, whatever the cooldowns */
    if (target < c->min_replicas) {
        target = c->min_replicas;
        if (cur < c->min_replicas) trig = MS_TRIGGER_MIN;
        s_why(d, "; min %d", c->min_replicas);
    }
    if (target > c->max_replicas) {
        target = c->max_replicas;
        if (cur > c->max_replicas) trig = MS_TRIGGER_MAX;
        s_why(d, "; max %d", c->max_replicas);
    }
    if (target == cur) trig = MS_TRIGGER_NONE;
    d->target = target;
    d->trigger = trig;

    if (target > cur) {
        d->n_start = target - cur;
        d->state.last_up_ms = now;
        s_why(d, " -> start %d (target %d, %s)", d->n_start, target, ms_scale_trigger_name(trig));
    } else if (target < cur) {
        s_cand cand[MS_AUTOSCALE_MAX_ACTORS];
        size_t nc = 0;
        for (size_t i = 0; i < pv->n_actors; i++)
            if (pv->actors[i].state != MS_SCALE_DRAINING)
                cand[nc++] = (s_cand){.pos = i, .a = &pv->actors[i]};
        qsort(cand, nc, sizeof(cand[0]), s_cand_cmp);
        const int32_t k = cur - target;
        for (int32_t i = 0; i < k && (size_t)i < nc; i++)
            d->drain[d->n_drain++] = (int32_t)cand[i].pos;
        d->state.last_down_ms = now;
        s_why(d, " -> drain %d (target %d, %s)", d->n_drain, target, ms_scale_trigger_name(trig));
    } else {
        s_why(d, " -> hold at %d", cur);
    }
    if (d->n_stop > 0) s_why(d, "; stop %d drained", d->n_stop);
}

int ms_autoscale_decide(const ms_autoscale_config *cfg, int64_t now_ms,
                        const ms_load_window *windows, size_t n_windows,
                        const double capacity[MS_STAGE_COUNT], const ms_pool_view *pools,
                        size_t n_pools, ms_pool_decision *out, char *err, size_t err_size) {
    assert(cfg && capacity && (pools || n_pools == 0) && (out || n_pools == 0));
    assert(windows || n_windows == 0);
    if (s_check_inputs(cfg, windows, n_windows, pools, n_pools, err, err_size) != 0) return -1;
    const ms_load_window *latest = n_windows > 0 ? &windows[n_windows - 1] : NULL;
    double attain = latest ? ms_load_window_attainment(latest) : -1;
    const bool attain_low = latest && latest->requests >= cfg->attainment_min_requests &&
                            attain < cfg->attainment_threshold;
    bool lag[MS_AUTOSCALE_MAX_POOLS] = {false};
    if (attain_low) {
        int32_t current[MS_AUTOSCALE_MAX_POOLS];
        for (size_t p = 0; p < n_pools; p++) {
            current[p] = 0;
            for (size_t i = 0; i < pools[p].n_actors; i++)
                if (pools[p].actors[i].state != MS_SCALE_DRAINING) current[p]++;
        }
        s_lagging(cfg, latest, capacity, pools, n_pools, current, lag);
    }
    for (size_t p = 0; p < n_pools; p++)
        s_decide_pool(cfg, now_ms, windows, n_windows, capacity, &pools[p], lag[p], attain_low,
                      attain, &out[p]);
    return 0;
}
