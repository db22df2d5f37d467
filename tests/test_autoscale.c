/* test_autoscale.c — the autoscaler's pure decisions (broker/autoscale.h):
 * the replicas formula on hand-worked cases, a burst answered within one
 * window, scale-down only after the cooldown and outside the hysteresis
 * band, min/max bounds (also on random inputs), the SLO-attainment trigger,
 * drain before stop, initial sizing and the window accumulator. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autoscale.h"
#include "ms_common.h"

#define S_WIN 10000 /* window length used throughout, ms */

/* Capacities: encode 1000 image tok/s, prefill 2000 prompt tok/s, decode unknown. */
static const double s_cap[MS_STAGE_COUNT] = {1000.0, 2000.0, 0.0};

static ms_pool_config s_enc = {
    .name = "encode", .stages = MS_STAGES_ENCODE, .min_replicas = 1, .max_replicas = 8};
static ms_pool_config s_text = {
    .name = "text", .stages = MS_STAGES_TEXT, .min_replicas = 1, .max_replicas = 8};

static ms_load_window s_win(int64_t end_ms, double enc, double pre, double gen) {
    ms_load_window w;
    memset(&w, 0, sizeof(w));
    w.end_ms = end_ms;
    w.len_ms = S_WIN;
    w.load[MS_STAGE_ENCODE] = enc;
    w.load[MS_STAGE_PREFILL] = pre;
    w.load[MS_STAGE_DECODE] = gen;
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        w.stage_attainment[s] = -1;
    return w;
}

/* n actors, all up, idle, started at 0, 10, 20, ... ms. */
static void s_actors(ms_scale_actor *a, int n, ms_scale_state st) {
    for (int i = 0; i < n; i++)
        a[i] = (ms_scale_actor){.id = 100 + i, .state = st, .started_ms = i * 10};
}

static ms_autoscale_config s_cfg(void) {
    ms_autoscale_config c;
    ms_autoscale_config_default(&c);
    c.window_ms = S_WIN;
    c.down_cooldown_ms = 60000;
    c.up_cooldown_ms = S_WIN;
    return c;
}

/* One pool, one decision. */
static ms_pool_decision s_decide1(const ms_autoscale_config *cfg, int64_t now,
                                  const ms_load_window *w, size_t nw, const ms_pool_config *pc,
                                  ms_pool_state st, const ms_scale_actor *a, size_t na) {
    ms_pool_view v = {.cfg = pc, .state = st, .actors = a, .n_actors = na};
    ms_pool_decision d;
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(ms_autoscale_decide(cfg, now, w, nw, s_cap, &v, 1, &d, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert(d.reason[0] != '\0');
    return d;
}

Test(autoscale, formula_hand_worked, .timeout = 10) {
    /* encode: 3500 image tok/s / 1000 = 3.5 → 4; text: 4100 / 2000 = 2.05 → 3 */
    ms_load_window w = s_win(S_WIN, 3500, 4100, 0);
    bool known = false;
    cr_assert_float_eq(ms_autoscale_need(&w, MS_STAGES_ENCODE, s_cap, &known), 3.5, 1e-12);
    cr_assert(known);
    cr_assert_float_eq(ms_autoscale_need(&w, MS_STAGES_TEXT, s_cap, NULL), 2.05, 1e-12);
    /* the monolith pool carries both: 3.5 + 2.05 */
    cr_assert_float_eq(ms_autoscale_need(&w, MS_STAGES_ALL, s_cap, NULL), 5.55, 1e-12);
    /* decode load counts once its capacity is known: + 250 / 500 */
    const double cap2[MS_STAGE_COUNT] = {1000, 2000, 500};
    w.load[MS_STAGE_DECODE] = 250;
    cr_assert_float_eq(ms_autoscale_need(&w, MS_STAGES_TEXT, cap2, NULL), 2.55, 1e-12);
    cr_assert_float_eq(ms_autoscale_need(&w, MS_STAGES_DECODE, s_cap, &known), 0.0, 0);
    cr_assert_not(known, "decode capacity unknown");

    ms_autoscale_config cfg = s_cfg();
    ms_scale_actor a[8];
    s_actors(a, 1, MS_SCALE_UP);
    ms_pool_decision d = s_decide1(&cfg, S_WIN, &w, 1, &s_enc, ms_pool_state_initial(), a, 1);
    cr_assert_eq(d.current, 1);
    cr_assert_eq(d.target, 4, "%s", d.reason);
    cr_assert_eq(d.n_start, 3);
    cr_assert_eq(d.trigger, MS_TRIGGER_LOAD);
    cr_assert_eq(d.state.last_up_ms, S_WIN);
    d = s_decide1(&cfg, S_WIN, &w, 1, &s_text, ms_pool_state_initial(), a, 1);
    cr_assert_eq(d.target, 3, "%s", d.reason);
    cr_assert_eq(d.n_start, 2);

    /* an exact multiple is not rounded up: 3000 / 1000 = 3 with 3 running → hold */
    ms_load_window w3 = s_win(S_WIN, 3000, 0, 0);
    s_actors(a, 3, MS_SCALE_UP);
    d = s_decide1(&cfg, S_WIN, &w3, 1, &s_enc, ms_pool_state_initial(), a, 3);
    cr_assert_eq(d.target, 3, "%s", d.reason);
    cr_assert_eq(d.n_start + d.n_drain, 0);
    cr_assert_eq(d.trigger, MS_TRIGGER_NONE);
    /* 3001 → 4 */
    w3.load[MS_STAGE_ENCODE] = 3001;
    d = s_decide1(&cfg, S_WIN, &w3, 1, &s_enc, ms_pool_state_initial(), a, 3);
    cr_assert_eq(d.target, 4);

    /* unknown capacity: the load cannot move the pool */
    ms_pool_config dec = {.stages = MS_STAGES_DECODE, .min_replicas = 1, .max_replicas = 4};
    ms_load_window wd = s_win(S_WIN, 0, 0, 1e6);
    d = s_decide1(&cfg, S_WIN, &wd, 1, &dec, ms_pool_state_initial(), a, 2);
    cr_assert_not(d.need_known);
    cr_assert_eq(d.target, 2, "%s", d.reason);
    cr_assert(strstr(d.reason, "decode"), "unnamed pool uses its stage set: %s", d.reason);
}

Test(autoscale, burst_scales_up_within_one_window, .timeout = 10) {
    ms_autoscale_config cfg = s_cfg();
    ms_load_window w[16];
    size_t nw = 0;
    ms_scale_actor a[16];
    s_actors(a, 1, MS_SCALE_UP);
    size_t na = 1;
    ms_pool_state st = ms_pool_state_initial();
    /* calm: 600 image tok/s on one encoder, several windows → hold */
    for (int k = 1; k <= 6; k++) {
        w[nw++] = s_win(k * S_WIN, 600, 0, 0);
        ms_pool_decision d = s_decide1(&cfg, k * S_WIN, w, nw, &s_enc, st, a, na);
        cr_assert_eq(d.target, 1, "t=%d: %s", k, d.reason);
        st = d.state;
    }
    /* the burst arrives during window 7: decided at its end */
    w[nw++] = s_win(7 * S_WIN, 5200, 0, 0);
    ms_pool_decision d = s_decide1(&cfg, 7 * S_WIN, w, nw, &s_enc, st, a, na);
    cr_assert_eq(d.target, 6, "%s", d.reason);
    cr_assert_eq(d.n_start, 5);
    cr_assert_eq(d.trigger, MS_TRIGGER_LOAD);
    st = d.state;
    /* the five are starting; the burst goes on: counted, nothing more starts */
    for (int i = 1; i <= 5; i++)
        a[na++] = (ms_scale_actor){.id = i, .state = MS_SCALE_STARTING, .started_ms = 7 * S_WIN};
    w[nw++] = s_win(8 * S_WIN, 5200, 0, 0);
    d = s_decide1(&cfg, 8 * S_WIN, w, nw, &s_enc, st, a, na);
    cr_assert_eq(d.current, 6);
    cr_assert_eq(d.target, 6, "%s", d.reason);
    cr_assert_eq(d.n_start + d.n_drain, 0);
    /* it grows further: the target follows the load at once, no cooldown on the way up */
    w[nw++] = s_win(9 * S_WIN, 7900, 0, 0);
    d = s_decide1(&cfg, 9 * S_WIN, w, nw, &s_enc, d.state, a, na);
    cr_assert_eq(d.target, 8, "%s", d.reason);
    cr_assert_eq(d.n_start, 2);
}

Test(autoscale, quiet_period_scales_down_only_after_cooldown, .timeout = 10) {
    ms_autoscale_config cfg = s_cfg(); /* cooldown 60 s, band 0.2, windows 10 s */
    ms_load_window w[64];
    size_t nw = 0;
    ms_scale_actor a[8];
    s_actors(a, 6, MS_SCALE_UP);
    ms_pool_state st = ms_pool_state_initial();
    st.last_up_ms = 5 * S_WIN; /* scaled up to 6 at t = 50 s */
    for (int k = 1; k <= 5; k++)
        w[nw++] = s_win(k * S_WIN, 5500, 0, 0);
    /* quiet from t = 50 s: 1200 image tok/s → 1.2 replicas, 1.5 with the band → 2 */
    int first_drain_at = -1;
    for (int k = 6; k <= 20 && first_drain_at < 0; k++) {
        w[nw++] = s_win(k * S_WIN, 1200, 0, 0);
        ms_pool_decision d = s_decide1(&cfg, k * S_WIN, w, nw, &s_enc, st, a, 6);
        cr_assert_eq(d.n_start, 0);
        if (d.n_drain > 0) {
            first_drain_at = k * S_WIN;
            cr_assert_eq(d.target, 2, "%s", d.reason);
            cr_assert_eq(d.n_drain, 4);
            cr_assert_eq(d.trigger, MS_TRIGGER_LOAD);
            cr_assert_eq(d.state.last_down_ms, k * S_WIN);
        } else {
            cr_assert_eq(d.target, 6, "t=%d: %s", k * S_WIN, d.reason);
        }
        st = d.state;
    }
    /* the quiet windows cover [50 s, t] and the last scale-up was at 50 s:
     * both need 60 s, so the first scale-down is at 110 s, not before */
    cr_assert_eq(first_drain_at, 110000);

    /* a spike inside the cooldown restarts the wait */
    nw = 0;
    st = ms_pool_state_initial();
    for (int k = 1; k <= 12; k++)
        w[nw++] = s_win(k * S_WIN, k == 9 ? 5900 : 1200, 0, 0);
    ms_pool_decision d = s_decide1(&cfg, 12 * S_WIN, w, nw, &s_enc, st, a, 6);
    cr_assert_eq(d.target, 6, "spike at 90 s is within the last 60 s: %s", d.reason);
    for (int k = 13; k <= 15; k++)
        w[nw++] = s_win(k * S_WIN, 1200, 0, 0);
    d = s_decide1(&cfg, 15 * S_WIN, w, nw, &s_enc, st, a, 6);
    cr_assert_eq(d.target, 2, "the spike (window ending 90 s) left the 60 s span: %s", d.reason);

    /* hysteresis: 3 running; 2300 tok/s needs 2.3 → 3 (hold, no flapping);
     * 1500 needs 1.5, 1.875 with the band → 2 */
    nw = 0;
    for (int k = 1; k <= 8; k++)
        w[nw++] = s_win(k * S_WIN, 2300, 0, 0);
    d = s_decide1(&cfg, 8 * S_WIN, w, nw, &s_enc, st, a, 3);
    cr_assert_eq(d.target, 3, "%s", d.reason);
    /* 2.1 replicas of load would fit in 3 but not with 20% headroom in 2 */
    nw = 0;
    for (int k = 1; k <= 8; k++)
        w[nw++] = s_win(k * S_WIN, 1700, 0, 0);
    d = s_decide1(&cfg, 8 * S_WIN, w, nw, &s_enc, st, a, 3);
    cr_assert_eq(d.target, 3, "1.7 / 0.8 = 2.125 → 3: %s", d.reason);
    nw = 0;
    for (int k = 1; k <= 8; k++)
        w[nw++] = s_win(k * S_WIN, 1500, 0, 0);
    d = s_decide1(&cfg, 8 * S_WIN, w, nw, &s_enc, st, a, 3);
    cr_assert_eq(d.target, 2, "%s", d.reason);
    cr_assert_eq(d.n_drain, 1);

    /* a quiet history but a recent scale-up (e.g. by the attainment trigger):
     * no scale-down until the cooldown has passed since that scale-up */
    ms_pool_state up_recently = {.last_up_ms = 8 * S_WIN - 30000,
                                 .last_down_ms = MS_AUTOSCALE_NEVER};
    d = s_decide1(&cfg, 8 * S_WIN, w, nw, &s_enc, up_recently, a, 3);
    cr_assert_eq(d.target, 3, "%s", d.reason);
    cr_assert(strstr(d.reason, "scaled up"), "%s", d.reason);
    up_recently.last_up_ms = 8 * S_WIN - 60000;
    d = s_decide1(&cfg, 8 * S_WIN, w, nw, &s_enc, up_recently, a, 3);
    cr_assert_eq(d.target, 2, "%s", d.reason);
    /* a short history (less than the cooldown) never scales down */
    d = s_decide1(&cfg, 3 * S_WIN, w, 3, &s_enc, st, a, 3);
    cr_assert_eq(d.target, 3, "%s", d.reason);
    /* one step per window on the way down */
    st.last_down_ms = 8 * S_WIN - S_WIN / 2;
    d = s_decide1(&cfg, 8 * S_WIN, w, nw, &s_enc, st, a, 3);
    cr_assert_eq(d.target, 3, "%s", d.reason);
    /* max_step_down */
    cfg.max_step_down = 1;
    nw = 0;
    for (int k = 1; k <= 8; k++)
        w[nw++] = s_win(k * S_WIN, 0, 0, 0);
    d = s_decide1(&cfg, 8 * S_WIN, w, nw, &s_enc, ms_pool_state_initial(), a, 6);
    cr_assert_eq(d.target, 5, "%s", d.reason);
}

Test(autoscale, never_below_min_or_above_max, .timeout = 30) {
    ms_autoscale_config cfg = s_cfg();
    ms_scale_actor a[16];
    ms_pool_config pc = {
        .name = "enc", .stages = MS_STAGES_ENCODE, .min_replicas = 2, .max_replicas = 5};
    /* a huge load stops at max */
    ms_load_window w = s_win(S_WIN, 1e9, 0, 0);
    s_actors(a, 2, MS_SCALE_UP);
    ms_pool_decision d = s_decide1(&cfg, S_WIN, &w, 1, &pc, ms_pool_state_initial(), a, 2);
    cr_assert_eq(d.target, 5, "%s", d.reason);
    cr_assert_eq(d.n_start, 3);
    cr_assert_eq(d.trigger, MS_TRIGGER_LOAD);
    /* at max already: hold */
    s_actors(a, 5, MS_SCALE_UP);
    d = s_decide1(&cfg, S_WIN, &w, 1, &pc, ms_pool_state_initial(), a, 5);
    cr_assert_eq(d.target, 5);
    cr_assert_eq(d.n_start, 0);
    /* no load for a long time stops at min */
    ms_load_window q[10];
    for (int k = 0; k < 10; k++)
        q[k] = s_win((k + 1) * S_WIN, 0, 0, 0);
    d = s_decide1(&cfg, 10 * S_WIN, q, 10, &pc, ms_pool_state_initial(), a, 5);
    cr_assert_eq(d.target, 2, "%s", d.reason);
    cr_assert_eq(d.n_drain, 3);
    /* above max (max lowered): drained at once, cooldown or not */
    s_actors(a, 7, MS_SCALE_UP);
    ms_pool_state st = {.last_up_ms = S_WIN, .last_down_ms = S_WIN};
    d = s_decide1(&cfg, S_WIN, &w, 1, &pc, st, a, 7);
    cr_assert_eq(d.target, 5);
    cr_assert_eq(d.n_drain, 2);
    cr_assert_eq(d.trigger, MS_TRIGGER_MAX);
    /* below min with no history at all: started at once */
    d = s_decide1(&cfg, 0, NULL, 0, &pc, ms_pool_state_initial(), a, 0);
    cr_assert_eq(d.target, 2);
    cr_assert_eq(d.n_start, 2);
    cr_assert_eq(d.trigger, MS_TRIGGER_MIN);

    /* random states, loads, attainments and histories: the target stays in
     * bounds and the actions agree with it */
    srand(1234);
    ms_load_window hist[12];
    for (int it = 0; it < 3000; it++) {
        const int lo = rand() % 4, hi = lo + rand() % 6;
        ms_pool_config rc = {
            .stages = (uint32_t)(1 + rand() % 7), .min_replicas = lo, .max_replicas = hi};
        const int n = rand() % 14;
        int not_draining = 0;
        for (int i = 0; i < n; i++) {
            a[i] = (ms_scale_actor){.id = i,
                                    .state = (ms_scale_state)(rand() % 3),
                                    .started_ms = rand() % 100000,
                                    .queued_tokens = rand() % 3 ? 0 : rand() % 5000,
                                    .running = rand() % 3 ? 0 : rand() % 4};
            not_draining += a[i].state != MS_SCALE_DRAINING;
        }
        const int nh = rand() % 12;
        for (int k = 0; k < nh; k++) {
            hist[k] = s_win((k + 1) * S_WIN, rand() % 20000, rand() % 40000, rand() % 1000);
            hist[k].requests = rand() % 100;
            hist[k].requests_met = hist[k].requests ? rand() % (hist[k].requests + 1) : 0;
            for (int s = 0; s < MS_STAGE_COUNT; s++)
                hist[k].stage_attainment[s] = (rand() % 3 == 0) ? -1 : (rand() % 101) / 100.0;
        }
        ms_pool_state rs = {.last_up_ms = rand() % 2 ? MS_AUTOSCALE_NEVER : rand() % 130000,
                            .last_down_ms = rand() % 2 ? MS_AUTOSCALE_NEVER : rand() % 130000};
        const int64_t now = (nh + 1) * S_WIN;
        d = s_decide1(&cfg, now, hist, (size_t)nh, &rc, rs, a, (size_t)n);
        cr_assert(d.target >= lo && d.target <= hi, "it %d: target %d outside [%d, %d]: %s", it,
                  d.target, lo, hi, d.reason);
        cr_assert_eq(d.current, not_draining);
        cr_assert_eq(d.target, d.current + d.n_start - d.n_drain, "it %d: %s", it, d.reason);
        cr_assert(d.n_start == 0 || d.n_drain == 0);
        for (int i = 0; i < d.n_drain; i++)
            cr_assert_neq(a[d.drain[i]].state, MS_SCALE_DRAINING, "drained twice");
        for (int i = 0; i < d.n_stop; i++) {
            cr_assert_eq(a[d.stop[i]].state, MS_SCALE_DRAINING, "stop without drain");
            cr_assert_not(ms_scale_actor_busy(&a[d.stop[i]]), "stopped with work");
        }
    }
}

Test(autoscale, attainment_trigger, .timeout = 10) {
    ms_autoscale_config cfg = s_cfg();
    ms_scale_actor ea[8], ta[8];
    s_actors(ea, 2, MS_SCALE_UP);
    s_actors(ta, 2, MS_SCALE_UP);
    const ms_pool_config *cfgs[2] = {&s_enc, &s_text};
    /* the load formula is content: encode 1.2 → 2, text 1.5 → 2 */
    ms_load_window w = s_win(S_WIN, 1200, 3000, 0);
    w.requests = 100;
    w.requests_met = 90; /* 0.90 < 0.99 */
    w.stage_attainment[MS_STAGE_ENCODE] = 0.85;
    w.stage_attainment[MS_STAGE_PREFILL] = 1.0;
    ms_pool_view v[2] = {
        {.cfg = cfgs[0], .state = ms_pool_state_initial(), .actors = ea, .n_actors = 2},
        {.cfg = cfgs[1], .state = ms_pool_state_initial(), .actors = ta, .n_actors = 2}};
    ms_pool_decision d[2];
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(ms_autoscale_decide(&cfg, S_WIN, &w, 1, s_cap, v, 2, d, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(d[0].target, 3, "the lagging encode pool grows: %s", d[0].reason);
    cr_assert_eq(d[0].trigger, MS_TRIGGER_ATTAINMENT);
    cr_assert_eq(d[0].n_start, 1);
    cr_assert_eq(d[1].target, 2, "text keeps up: %s", d[1].reason);
    cr_assert(strstr(d[0].reason, "attainment"), "%s", d[0].reason);

    /* within the up cooldown the trigger does not fire again */
    v[0].state = d[0].state;
    cr_assert_eq(ms_autoscale_decide(&cfg, S_WIN + 5000, &w, 1, s_cap, v, 2, d, err, sizeof(err)),
                 0);
    cr_assert_eq(d[0].target, 2, "%s", d[0].reason);
    /* after it, it does */
    cr_assert_eq(ms_autoscale_decide(&cfg, 2 * S_WIN + 1, &w, 1, s_cap, v, 2, d, err, sizeof(err)),
                 0);
    cr_assert_eq(d[0].target, 3, "%s", d[0].reason);

    /* no stage verdicts: the most utilised pool grows (text 1.5/2 > encode 1.2/2) */
    v[0].state = ms_pool_state_initial();
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        w.stage_attainment[s] = -1;
    cr_assert_eq(ms_autoscale_decide(&cfg, S_WIN, &w, 1, s_cap, v, 2, d, err, sizeof(err)), 0);
    cr_assert_eq(d[0].target, 2, "%s", d[0].reason);
    cr_assert_eq(d[1].target, 3, "%s", d[1].reason);
    cr_assert_eq(d[1].trigger, MS_TRIGGER_ATTAINMENT);

    /* too few requests: attainment is noise, ignored */
    w.requests = 10;
    w.requests_met = 5;
    cr_assert_eq(ms_autoscale_decide(&cfg, S_WIN, &w, 1, s_cap, v, 2, d, err, sizeof(err)), 0);
    cr_assert_eq(d[0].target + d[1].target, 4);
    /* at the threshold: no trigger */
    w.requests = 100;
    w.requests_met = 99;
    cr_assert_eq(ms_autoscale_decide(&cfg, S_WIN, &w, 1, s_cap, v, 2, d, err, sizeof(err)), 0);
    cr_assert_eq(d[0].target + d[1].target, 4);

    /* low attainment holds off a scale-down the load alone would make */
    ms_load_window q[8];
    for (int k = 0; k < 8; k++) {
        q[k] = s_win((k + 1) * S_WIN, 100, 100, 0);
        q[k].requests = 100;
        q[k].requests_met = 100;
    }
    v[0].state = v[1].state = ms_pool_state_initial();
    cr_assert_eq(ms_autoscale_decide(&cfg, 8 * S_WIN, q, 8, s_cap, v, 2, d, err, sizeof(err)), 0);
    cr_assert_eq(d[0].target, 1, "%s", d[0].reason);
    cr_assert_eq(d[1].target, 1, "%s", d[1].reason);
    q[7].requests_met = 50;
    q[7].stage_attainment[MS_STAGE_PREFILL] = 0.5; /* the text pool lags, not encode */
    cr_assert_eq(ms_autoscale_decide(&cfg, 8 * S_WIN, q, 8, s_cap, v, 2, d, err, sizeof(err)), 0);
    cr_assert_eq(d[0].target, 2, "no scale-down while attainment is low: %s", d[0].reason);
    cr_assert_eq(d[1].target, 3, "%s", d[1].reason);
}

Test(autoscale, draining_actor_finishes_its_work, .timeout = 10) {
    ms_autoscale_config cfg = s_cfg();
    cfg.down_cooldown_ms = 0;                   /* decide on the latest window alone */
    ms_load_window w = s_win(S_WIN, 900, 0, 0); /* 0.9 → 1.125 with the band → 2 */
    /* three up: a queued work, b running sequences, c idle (newest) */
    ms_scale_actor a[4] = {
        {.id = 1, .state = MS_SCALE_UP, .started_ms = 0, .queued_tokens = 500},
        {.id = 2, .state = MS_SCALE_UP, .started_ms = 10, .running = 2},
        {.id = 3, .state = MS_SCALE_UP, .started_ms = 20},
    };
    ms_pool_decision d = s_decide1(&cfg, S_WIN, &w, 1, &s_enc, ms_pool_state_initial(), a, 3);
    cr_assert_eq(d.target, 2, "%s", d.reason);
    cr_assert_eq(d.n_drain, 1);
    cr_assert_eq(d.drain[0], 2, "the idle one is drained first");
    cr_assert_eq(d.n_stop, 0, "nothing stops in the same decision");
    /* ties in load: the newest goes */
    a[2].running = 2;
    a[1].started_ms = 30;
    d = s_decide1(&cfg, S_WIN, &w, 1, &s_enc, ms_pool_state_initial(), a, 3);
    cr_assert_eq(d.drain[0], 1, "b (started at 30) is newer than c (20)");
    a[1].started_ms = 10;
    a[2].running = 0;

    /* c drains but still holds work: counted as leaving, not stopped, not replaced */
    a[2].state = MS_SCALE_DRAINING;
    a[2].running = 1;
    ms_pool_state st = d.state;
    ms_load_window w2 = s_win(2 * S_WIN, 1900, 0, 0); /* 1.9 → 2: the two up ones suffice */
    d = s_decide1(&cfg, 2 * S_WIN, &w2, 1, &s_enc, st, a, 3);
    cr_assert_eq(d.current, 2);
    cr_assert_eq(d.draining, 1);
    cr_assert_eq(d.n_stop, 0, "a draining actor with work is never stopped");
    cr_assert_eq(d.n_start + d.n_drain, 0, "%s", d.reason);
    /* its work done → stop */
    a[2].running = 0;
    d = s_decide1(&cfg, 3 * S_WIN, &w2, 1, &s_enc, d.state, a, 3);
    cr_assert_eq(d.n_stop, 1);
    cr_assert_eq(d.stop[0], 2);
    cr_assert(strstr(d.reason, "stop 1"), "%s", d.reason);
    /* a burst while one drains: the drainer is not counted, two more start */
    a[2].running = 3;
    ms_load_window w3 = s_win(4 * S_WIN, 3900, 0, 0);
    d = s_decide1(&cfg, 4 * S_WIN, &w3, 1, &s_enc, d.state, a, 3);
    cr_assert_eq(d.target, 4);
    cr_assert_eq(d.n_start, 2);
    cr_assert_eq(d.n_stop, 0);
    /* busy actors (queued tokens) are never stopped either */
    a[2].running = 0;
    a[2].queued_tokens = 7;
    d = s_decide1(&cfg, 4 * S_WIN, &w3, 1, &s_enc, d.state, a, 3);
    cr_assert_eq(d.n_stop, 0);
}

Test(autoscale, initial_sizing, .timeout = 10) {
    /* load formula over history: median need of (0.5, 2.4, 3.1, 9.0, 2.6) = 2.6 → 3 */
    const double enc[] = {500, 2400, 3100, 9000, 2600};
    ms_load_window w[5];
    for (int i = 0; i < 5; i++)
        w[i] = s_win((i + 1) * S_WIN, enc[i], 0, 0);
    cr_assert_eq(ms_autoscale_initial(&s_enc, s_cap, w, 5), 3);
    /* even count: median of (0.5, 2.4, 3.1, 9.0) = 2.75 → 3; of (0.5, 2.4) = 1.45 → 2 */
    cr_assert_eq(ms_autoscale_initial(&s_enc, s_cap, w, 4), 3);
    cr_assert_eq(ms_autoscale_initial(&s_enc, s_cap, w, 2), 2);
    /* no history → min; bounds apply */
    cr_assert_eq(ms_autoscale_initial(&s_enc, s_cap, NULL, 0), 1);
    ms_pool_config small = s_enc;
    small.max_replicas = 2;
    cr_assert_eq(ms_autoscale_initial(&small, s_cap, w, 5), 2);
    ms_pool_config dec = {.stages = MS_STAGES_DECODE, .min_replicas = 1, .max_replicas = 9};
    cr_assert_eq(ms_autoscale_initial(&dec, s_cap, w, 5), 1, "unknown capacity → min");

    /* the paper's rule: 2 image QPS x 1.5 s encode = 3 encoders; 3 / 1.5 images
     * per request = 2 text instances */
    int32_t ni = -1, nt = -1;
    ms_autoscale_paper_initial(2.0, 1.5, 1.5, &ni, &nt);
    cr_assert_eq(ni, 3);
    cr_assert_eq(nt, 2);
    ms_autoscale_paper_initial(0.1, 0.2, 4.0, &ni, &nt); /* 0.02 → at least 1 each */
    cr_assert_eq(ni, 1);
    cr_assert_eq(nt, 1);
    ms_autoscale_paper_initial(0, 0.2, 4.0, &ni, &nt);
    cr_assert_eq(ni + nt, 0);
}

Test(autoscale, window_accumulator, .timeout = 10) {
    ms_load_acc acc;
    ms_load_acc_init(&acc, 1000);
    ms_load_acc_arrival(&acc, 2, 1152, 1200); /* 2 images of 576 tokens + 48 text tokens */
    ms_load_acc_arrival(&acc, 0, 0, 300);
    ms_load_acc_generated(&acc, 500);
    const int8_t ok1[MS_STAGE_COUNT] = {1, 1, 1}, ok2[MS_STAGE_COUNT] = {-1, 0, 1};
    ms_load_acc_done(&acc, true, ok1);
    ms_load_acc_done(&acc, false, ok2);
    ms_load_acc_done(&acc, true, NULL);
    ms_load_window w;
    ms_load_acc_close(&acc, 3000, &w); /* 2 s */
    cr_assert_eq(w.end_ms, 3000);
    cr_assert_eq(w.len_ms, 2000);
    cr_assert_float_eq(w.load[MS_STAGE_ENCODE], 576.0, 1e-9);
    cr_assert_float_eq(w.load[MS_STAGE_PREFILL], 750.0, 1e-9);
    cr_assert_float_eq(w.load[MS_STAGE_DECODE], 250.0, 1e-9);
    cr_assert_float_eq(w.images_per_s, 1.0, 1e-12);
    cr_assert_float_eq(w.image_requests_per_s, 0.5, 1e-12);
    cr_assert_eq(w.requests, 3);
    cr_assert_eq(w.requests_met, 2);
    cr_assert_float_eq(ms_load_window_attainment(&w), 2.0 / 3.0, 1e-12);
    cr_assert_float_eq(w.stage_attainment[MS_STAGE_ENCODE], 1.0, 0);
    cr_assert_float_eq(w.stage_attainment[MS_STAGE_PREFILL], 0.5, 0);
    cr_assert_float_eq(w.stage_attainment[MS_STAGE_DECODE], 1.0, 0);
    /* restarted at the end */
    ms_load_acc_close(&acc, 4000, &w);
    cr_assert_eq(w.len_ms, 1000);
    cr_assert_float_eq(w.load[MS_STAGE_PREFILL], 0.0, 0);
    cr_assert_eq(w.requests, 0);
    cr_assert_float_eq(ms_load_window_attainment(&w), -1.0, 0);
    cr_assert(w.stage_attainment[MS_STAGE_ENCODE] < 0);
}

Test(autoscale, window_from_counter_snapshots, .timeout = 10) {
    ms_load_counters a = {.at_ms = 10000,
                          .image_tokens = 5000,
                          .prompt_tokens = 9000,
                          .generated_tokens = 100,
                          .images = 10,
                          .image_requests = 5,
                          .requests_done = 40,
                          .requests_met = 39,
                          .stage_seen = {10, 40, 40},
                          .stage_met = {10, 39, 40}};
    ms_load_counters b = a;
    b.at_ms = 15000;
    b.image_tokens += 10000;
    b.prompt_tokens += 12500;
    b.generated_tokens += 2500;
    b.images += 20;
    b.image_requests += 4;
    b.requests_done += 50;
    b.requests_met += 45;
    b.stage_seen[MS_STAGE_ENCODE] += 8;
    b.stage_met[MS_STAGE_ENCODE] += 6;
    ms_load_window w;
    cr_assert_eq(ms_load_window_from_counters(&a, &b, &w), 0);
    cr_assert_eq(w.len_ms, 5000);
    cr_assert_eq(w.end_ms, 15000);
    cr_assert_float_eq(w.load[MS_STAGE_ENCODE], 2000.0, 1e-9);
    cr_assert_float_eq(w.load[MS_STAGE_PREFILL], 2500.0, 1e-9);
    cr_assert_float_eq(w.load[MS_STAGE_DECODE], 500.0, 1e-9);
    cr_assert_float_eq(w.images_per_s, 4.0, 1e-12);
    cr_assert_float_eq(w.image_requests_per_s, 0.8, 1e-12);
    cr_assert_eq(w.requests, 50);
    cr_assert_eq(w.requests_met, 45);
    cr_assert_float_eq(w.stage_attainment[MS_STAGE_ENCODE], 0.75, 1e-12);
    cr_assert(w.stage_attainment[MS_STAGE_PREFILL] < 0, "no new verdicts");
    /* a broker restart: counters start again from 0 */
    ms_load_counters r = {
        .at_ms = 20000, .image_tokens = 3000, .requests_done = 4, .requests_met = 4};
    cr_assert_eq(ms_load_window_from_counters(&b, &r, &w), 0);
    cr_assert_float_eq(w.load[MS_STAGE_ENCODE], 600.0, 1e-9);
    cr_assert_eq(w.requests, 4);
    /* time must advance */
    cr_assert_eq(ms_load_window_from_counters(&b, &b, &w), -1);
}

Test(autoscale, bad_inputs_are_errors, .timeout = 10) {
    ms_autoscale_config cfg = s_cfg();
    ms_scale_actor a[2];
    s_actors(a, 2, MS_SCALE_UP);
    ms_load_window w[2] = {s_win(2 * S_WIN, 1, 1, 1), s_win(S_WIN, 1, 1, 1)};
    ms_pool_view v = {.cfg = &s_enc, .state = ms_pool_state_initial(), .actors = a, .n_actors = 2};
    ms_pool_decision d;
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(ms_autoscale_decide(&cfg, 0, w, 2, s_cap, &v, 1, &d, err, sizeof(err)), -1);
    cr_assert(strstr(err, "oldest first"), "%s", err);
    w[1].end_ms = 3 * S_WIN;
    w[1].len_ms = 0;
    cr_assert_eq(ms_autoscale_decide(&cfg, 0, w, 2, s_cap, &v, 1, &d, err, sizeof(err)), -1);
    cr_assert(strstr(err, "len_ms"), "%s", err);
    ms_pool_config bad = {.stages = 0, .min_replicas = 0, .max_replicas = 1};
    v.cfg = &bad;
    cr_assert_eq(ms_autoscale_decide(&cfg, 0, NULL, 0, s_cap, &v, 1, &d, err, sizeof(err)), -1);
    cr_assert(strstr(err, "stage set"), "%s", err);
    bad = (ms_pool_config){.stages = MS_STAGES_ENCODE, .min_replicas = 3, .max_replicas = 2};
    cr_assert_eq(ms_autoscale_decide(&cfg, 0, NULL, 0, s_cap, &v, 1, &d, err, sizeof(err)), -1);
    cr_assert(strstr(err, "min 3"), "%s", err);
    v.cfg = &s_enc;
    cfg.down_band = 1.0;
    cr_assert_eq(ms_autoscale_decide(&cfg, 0, NULL, 0, s_cap, &v, 1, &d, err, sizeof(err)), -1);
    cr_assert(strstr(err, "down_band"), "%s", err);
    ms_autoscale_config_default(&cfg);
    cr_assert_eq(ms_autoscale_config_validate(&cfg, err, sizeof(err)), 0, "%s", err);
    cr_assert_float_eq(cfg.attainment_threshold, 0.99, 0);
    cr_assert_str_eq(ms_scale_trigger_name(MS_TRIGGER_ATTAINMENT), "attainment");
}
