/* compare.c — layouts side by side with the same core budget (compare.h,
 * docs/comparison.md). Output (table, JSON, SVG) is in compare_out.c. */
#include "compare.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ms_common.h"

static const char *const s_layout_names[] = {"modserve", "monolith", "disagg"};

static bool s_known_layout(const char *s) {
    for (size_t i = 0; i < MS_ARRAY_LEN(s_layout_names); i++)
        if (strcmp(s, s_layout_names[i]) == 0) return true;
    return false;
}

/* ---- parsing ------------------------------------------------------------------------ */

int ms_compare_parse_layouts(const char *s, char (*names)[MS_CLUSTER_NAME_MAX], int max, char *err,
                             size_t err_size) {
    if (!s || !*s) return ms_errf(err, err_size, "no layouts given (e.g. modserve,monolith)");
    int n = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        const size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0 || len >= MS_CLUSTER_NAME_MAX)
            return ms_errf(err, err_size, "'%s': an empty or overlong layout name", s);
        if (n == max) return ms_errf(err, err_size, "'%s': at most %d layouts", s, max);
        memcpy(names[n], p, len);
        names[n][len] = '\0';
        if (!s_known_layout(names[n]))
            return ms_errf(err, err_size, "'%s': unknown layout '%s' (modserve, monolith, disagg)",
                           s, names[n]);
        for (int k = 0; k < n; k++)
            if (strcmp(names[k], names[n]) == 0)
                return ms_errf(err, err_size, "'%s': layout '%s' given twice", s, names[n]);
        n++;
        if (!comma) break;
        p = comma + 1;
    }
    return n;
}

int ms_compare_parse_rates(const char *s, double *rates, int max, char *err, size_t err_size) {
    if (!s || !*s) return ms_errf(err, err_size, "no rates given (e.g. 1,2,4)");
    int n = 0;
    const char *p = s;
    for (;;) {
        char *end = NULL;
        errno = 0;
        const double v = strtod(p, &end);
        if (end == p || errno || !isfinite(v) || !(v > 0) || (*end && *end != ','))
            return ms_errf(err, err_size, "'%s': expected positive numbers separated by commas", s);
        if (n == max) return ms_errf(err, err_size, "'%s': at most %d rates", s, max);
        if (n > 0 && !(v > rates[n - 1]))
            return ms_errf(err, err_size, "'%s': rates must increase", s);
        rates[n++] = v;
        if (!*end) break;
        p = end + 1;
    }
    return n;
}

/* ---- the core split ----------------------------------------------------------------- */

/* Largest-remainder apportionment of total among n pools with weights w
 * (all > 0) and minimums minv: quotas total × w / Σw, floors raised to the
 * minimums, then the cores left go to the largest remainders (ties: the
 * later pool: the text side of modserve, decode in disagg), or
 * cores are taken back from the smallest remainders above their minimum. -1
 * when the minimums exceed total. */
static int s_apportion(int total, const double *w, const int *minv, int n, int *out) {
    double sum_w = 0, quota[MS_COMPARE_MAX_POOLS];
    int sum_min = 0, sum = 0;
    for (int i = 0; i < n; i++)
        sum_w += w[i], sum_min += minv[i];
    if (sum_min > total) return -1;
    for (int i = 0; i < n; i++) {
        quota[i] = total * w[i] / sum_w;
        out[i] = MS_MAX(minv[i], (int)floor(quota[i]));
        sum += out[i];
    }
    while (sum < total) { /* the largest remainder gets one more; ties: the later pool */
        int best = 0;
        for (int i = 1; i < n; i++)
            if (quota[i] - out[i] >= quota[best] - out[best]) best = i;
        out[best]++, sum++;
    }
    while (sum > total) { /* the smallest remainder above its minimum gives one back */
        int best = -1;
        for (int i = 0; i < n; i++)
            if (out[i] > minv[i] && (best < 0 || quota[i] - out[i] < quota[best] - out[best]))
                best = i;
        if (best < 0) return -1;
        out[best]--, sum--;
    }
    return 0;
}

static void s_pool(ms_compare_split *s, const char *name, const char *stages, int count) {
    ms_compare_pool *p = &s->pools[s->n_pools++];
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->stages, sizeof p->stages, "%s", stages);
    p->count = count;
    p->threads = MS_COMPARE_THREADS;
    s->cores += count * MS_COMPARE_THREADS;
}

int ms_compare_split_cores(const char *layout, int cores, int encoders, const double need[3],
                           bool has_images, ms_compare_split *out, char *err, size_t err_size) {
    memset(out, 0, sizeof *out);
    if (!layout || !s_known_layout(layout))
        return ms_errf(err, err_size, "unknown layout '%s' (modserve, monolith, disagg)",
                       layout ? layout : "");
    if (cores < 1 || cores > MS_COMPARE_MAX_CORES)
        return ms_errf(err, err_size, "cores %d out of 1..%d", cores, MS_COMPARE_MAX_CORES);
    if (strcmp(layout, "monolith") == 0) {
        s_pool(out, "mono", "encode+prefill+decode", cores);
        return 0;
    }
    const bool disagg = strcmp(layout, "disagg") == 0;
    const double ne = need ? need[MS_COMPARE_ENCODE] : 0;
    const double np = need ? need[MS_COMPARE_PREFILL] : 0;
    const double nd = need ? need[MS_COMPARE_DECODE] : 0;
    /* the pools after the encoders: text (modserve), or prefill and decode (disagg) */
    const int n_rest = disagg ? 2 : 1;
    const int enc_min = has_images ? 1 : 0;
    if (cores < enc_min + n_rest)
        return ms_errf(err, err_size,
                       "the %s layout needs at least %d cores for this slice (%s), got %d", layout,
                       enc_min + n_rest,
                       disagg ? (has_images ? "an encoder, a prefill and a decode actor"
                                            : "a prefill and a decode actor")
                              : (has_images ? "an encoder and a text instance" : "a text instance"),
                       cores);
    int enc;
    if (encoders >= 0) {
        if (encoders < enc_min || encoders > cores - n_rest)
            return ms_errf(err, err_size,
                           "%d encoders: the %s layout with %d cores takes %d..%d for this slice",
                           encoders, layout, cores, enc_min, cores - n_rest);
        enc = encoders;
    } else if (!has_images) {
        enc = 0;
    } else {
        const bool known = ne > 0 && np + nd > 0;
        const double w[2] = {known ? ne : 1, known ? np + nd : n_rest};
        const int minv[2] = {1, n_rest};
        int got[2];
        if (s_apportion(cores, w, minv, 2, got) != 0)
            return ms_errf(err, err_size, "cannot split %d cores", cores); /* checked above */
        enc = got[0];
    }
    s_pool(out, "enc", "encode", enc);
    const int rest = cores - enc;
    if (!disagg) {
        s_pool(out, "text", "prefill+decode", rest);
        return 0;
    }
    const bool known = np > 0 && nd > 0;
    const double w[2] = {known ? np : 1, known ? nd : 1};
    const int minv[2] = {1, 1};
    int got[2];
    if (s_apportion(rest, w, minv, 2, got) != 0)
        return ms_errf(err, err_size, "cannot split %d cores into prefill and decode", rest);
    s_pool(out, "pre", "prefill", got[0]);
    s_pool(out, "dec", "decode", got[1]);
    return 0;
}

void ms_compare_split_describe(const ms_compare_split *s, char *buf, size_t size) {
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < s->n_pools && len < size; i++) {
        const ms_compare_pool *p = &s->pools[i];
        int w = snprintf(buf + len, size - len, "%s%d %s (%s)", i ? " + " : "", p->count, p->name,
                         p->stages);
        if (w < 0) break;
        len += (size_t)w;
    }
}

int ms_compare_cluster_conf(ms_cluster_conf *c, const char *layout, const ms_compare_split *s,
                            const char *lm, const char *mmproj, const char *profile, int kv_tokens,
                            int vit_batch, char *err, size_t err_size) {
    ms_cluster_conf_default(c);
    if (!layout || !s_known_layout(layout))
        return ms_errf(err, err_size, "unknown layout '%s'", layout ? layout : "");
    if (!lm || !*lm) return ms_errf(err, err_size, "no model (LM.gguf) for the cluster");
    snprintf(c->layout, sizeof c->layout, "%s", layout);
#define COPY(dst, src)                                                                             \
    do {                                                                                           \
        const char *v_ = (src) ? (src) : "";                                                       \
        if (strlen(v_) >= sizeof(dst)) return ms_errf(err, err_size, "path too long: %s", v_);     \
        snprintf((dst), sizeof(dst), "%s", v_);                                                    \
    } while (0)
    COPY(c->lm, lm);
    COPY(c->mmproj, mmproj);
    COPY(c->profile, profile);
#undef COPY
    if (s->n_pools < 1 || s->n_pools > MS_COMPARE_MAX_POOLS)
        return ms_errf(err, err_size, "a split with %d pools", s->n_pools);
    for (int i = 0; i < s->n_pools; i++) {
        const ms_compare_pool *p = &s->pools[i];
        ms_cluster_group *g = &c->groups[c->n_groups++];
        memset(g, 0, sizeof *g);
        snprintf(g->name, sizeof g->name, "%s", p->name);
        snprintf(g->stages, sizeof g->stages, "%s", p->stages);
        g->count = p->count;
        g->threads = p->threads;
        if (ms_cluster_stages_has(g->stages, "encode")) g->vit_batch = vit_batch;
        if (ms_cluster_stages_has(g->stages, "prefill") ||
            ms_cluster_stages_has(g->stages, "decode"))
            g->kv_tokens = kv_tokens;
    }
    return ms_cluster_conf_validate(c, err, err_size);
}

/* ---- results (pure) ------------------------------------------------------------------ */

void ms_compare_result_fini(ms_compare_result *r) {
    for (int i = 0; r && i < r->n_cells; i++) {
        free(r->cells[i].bins);
        r->cells[i].bins = NULL;
        r->cells[i].n_bins = 0;
    }
}

void ms_compare_derive_slo(double iso_ttft_ms, double iso_tpot_ms, double factor,
                           ms_compare_slo *out) {
    out->derived = true;
    out->factor = factor;
    out->iso_ttft_ms = iso_ttft_ms;
    out->iso_tpot_ms = iso_tpot_ms;
    out->ttft_ms = MS_MAX(1.0, ceil(factor * iso_ttft_ms - 1e-9));
    out->tbt_ms = MS_MAX(1.0, ceil(factor * iso_tpot_ms - 1e-9));
}

const ms_compare_cell *ms_compare_find(const ms_compare_result *r, const char *layout, double rate,
                                       bool autoscale) {
    for (int i = 0; i < r->n_cells; i++) {
        const ms_compare_cell *c = &r->cells[i];
        if (c->ran && c->autoscale == autoscale && c->rate == rate &&
            strcmp(c->layout, layout) == 0)
            return c;
    }
    return NULL;
}

static int s_rate_cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Cell i is the first run of its layout (autoscaled or not) that ran. */
static bool s_first_of_kind(const ms_compare_result *r, int i) {
    const ms_compare_cell *c = &r->cells[i];
    if (!c->ran) return false;
    for (int k = 0; k < i; k++)
        if (r->cells[k].ran && r->cells[k].autoscale == c->autoscale &&
            strcmp(r->cells[k].layout, c->layout) == 0)
            return false;
    return true;
}

double ms_compare_max_rate(const ms_compare_result *r, const char *layout, bool autoscale,
                           double threshold) {
    double rates[MS_COMPARE_MAX_CELLS];
    int n = 0;
    for (int i = 0; i < r->n_cells; i++) {
        const ms_compare_cell *c = &r->cells[i];
        if (c->ran && c->autoscale == autoscale && strcmp(c->layout, layout) == 0)
            rates[n++] = c->rate;
    }
    qsort(rates, (size_t)n, sizeof rates[0], s_rate_cmp);
    double best = 0;
    for (int i = 0; i < n; i++) {
        const ms_compare_cell *c = ms_compare_find(r, layout, rates[i], autoscale);
        if (!c || c->sum.g[MS_REPORT_ALL].slo_attainment < threshold) break;
        best = rates[i];
    }
    return best;
}

double ms_compare_cost_per_1k_good(const ms_compare_cell *c) {
    const int met = c->sum.g[MS_REPORT_ALL].slo_met;
    return met > 0 ? c->sum.instance_s_total * 1000.0 / met : INFINITY;
}

static double s_ratio(double a, double b) {
    return b > 0 && isfinite(b) && a >= 0 && isfinite(a) ? a / b : NAN;
}

void ms_compare_ratios_of(const ms_compare_cell *a, const ms_compare_cell *b,
                          ms_compare_ratios *out) {
    out->goodput = out->ttft_p99_all = out->ttft_p99_text = out->ttft_p99_image = NAN;
    out->instance_s = out->cost_per_good = out->attainment_a = out->attainment_b = NAN;
    if (!a || !b || !a->ran || !b->ran) return;
    const ms_report_group *ga = a->sum.g, *gb = b->sum.g;
    out->goodput = s_ratio(ga[MS_REPORT_ALL].goodput_rps, gb[MS_REPORT_ALL].goodput_rps);
    /* a P99 over no completed request is not a latency */
    out->ttft_p99_all = ga[MS_REPORT_ALL].ttft.n && gb[MS_REPORT_ALL].ttft.n
                            ? s_ratio(ga[MS_REPORT_ALL].ttft.p99, gb[MS_REPORT_ALL].ttft.p99)
                            : NAN;
    out->ttft_p99_text = ga[MS_REPORT_TEXT].ttft.n && gb[MS_REPORT_TEXT].ttft.n
                             ? s_ratio(ga[MS_REPORT_TEXT].ttft.p99, gb[MS_REPORT_TEXT].ttft.p99)
                             : NAN;
    out->ttft_p99_image = ga[MS_REPORT_IMAGE].ttft.n && gb[MS_REPORT_IMAGE].ttft.n
                              ? s_ratio(ga[MS_REPORT_IMAGE].ttft.p99, gb[MS_REPORT_IMAGE].ttft.p99)
                              : NAN;
    out->instance_s = s_ratio(a->sum.instance_s_total, b->sum.instance_s_total);
    out->cost_per_good = s_ratio(ms_compare_cost_per_1k_good(a), ms_compare_cost_per_1k_good(b));
    out->attainment_a = ga[MS_REPORT_ALL].slo_attainment;
    out->attainment_b = gb[MS_REPORT_ALL].slo_attainment;
}

/* ---- the run loop ---------------------------------------------------------------------- */

void ms_compare_opts_default(ms_compare_opts *o) {
    memset(o, 0, sizeof *o);
    o->rates[0] = 1.0;
    o->n_rates = 1;
    o->cores = 2;
    o->encoders = -1;
    o->kv_tokens = MS_COMPARE_KV_TOKENS;
    o->vit_batch = MS_COMPARE_VIT_BATCH;
    o->slo_factor = MS_COMPARE_SLO_FACTOR;
    o->calib_requests = MS_COMPARE_CALIB_REQUESTS;
}

static void s_log(const ms_compare_opts *o, const char *fmt, ...) MS_PRINTF(2, 3);
static void s_log(const ms_compare_opts *o, const char *fmt, ...) {
    if (!o->log) return;
    fflush(stdout); /* the replays' reports go there: keep the order */
    va_list ap;
    va_start(ap, fmt);
    fputs("modserve bench --compare: ", o->log);
    vfprintf(o->log, fmt, ap);
    fputc('\n', o->log);
    va_end(ap);
    fflush(o->log);
}

static double s_load1(void) {
    double l[3];
    return getloadavg(l, 3) >= 1 ? l[0] : -1;
}

static bool s_stopped(const ms_compare_opts *o) {
    return o->stop && *o->stop;
}

/* A free port base from the option or a pid-derived start. */
static int s_port_base(const ms_compare_opts *o, char *err, size_t err_size) {
    const int start = o->port_base > 0
                          ? o->port_base
                          : MS_COMPARE_PORT_START +
                                (int)(getpid() % MS_COMPARE_PORT_SLOTS) * MS_CLUSTER_PORT_SPAN;
    int base = ms_cluster_find_port_base(start, err, err_size);
    if (base < 0 && o->port_base <= 0)
        base = ms_cluster_find_port_base(MS_COMPARE_PORT_START, err, err_size);
    return base;
}

/* Brings the cluster of one run up in rundir. procs gets what was started. */
static int s_cluster_up(const ms_compare_opts *o, const char *layout, const ms_compare_split *sp,
                        const char *rundir, ms_cluster_run *r, char *err, size_t err_size) {
    if (ms_cluster_run_create(r, rundir, err, err_size) != 0) return -1;
    r->stop = o->stop;
    r->log = o->log;
    r->progress = false;
    ms_proc old[MS_CLUSTER_MAX_PROCS];
    const int n_old = ms_pidfile_list(r->dir, old, MS_CLUSTER_MAX_PROCS, err, err_size);
    if (n_old < 0) return -1;
    for (int i = 0; i < n_old; i++) {
        if (ms_proc_alive(&old[i]))
            return ms_errf(err, err_size, "a cluster is running in %s (%s, pid %d): stop it first",
                           r->dir, old[i].name, (int)old[i].pid);
        ms_pidfile_remove(r->dir, old[i].name);
    }
    ms_cluster_conf *c = &r->conf;
    if (ms_compare_cluster_conf(c, layout, sp, o->lm, o->mmproj, o->profile, o->kv_tokens,
                                o->vit_batch, err, err_size) != 0)
        return -1;
    const int base = s_port_base(o, err, err_size);
    if (base < 0) return -1;
    c->port_base = base;
    snprintf(c->bin_dir, sizeof c->bin_dir, "%s", o->bin_dir);
    if (ms_cluster_run_save(r, err, err_size) != 0) return -1;
    ms_proc procs[MS_CLUSTER_MAX_PROCS];
    int n = 0;
    if (ms_cluster_start_redis(r, &procs[n], err, err_size) != 0) return -1;
    n++;
    if (ms_cluster_start_broker(r, &procs[n], err, err_size) != 0) return -1;
    n++;
    const int first_actor = n;
    for (int gi = 0; gi < c->n_groups; gi++) {
        ms_cluster_group *g = &c->groups[gi];
        for (int k = 0; k < g->count; k++) {
            if (ms_cluster_start_actor(r, g, &procs[n], err, err_size) != 0) return -1;
            n++;
        }
    }
    return ms_cluster_wait_actors(r, procs + first_actor, n - first_actor, procs, first_actor,
                                  MS_COMPARE_UP_TIMEOUT_MS, err, err_size);
}

/* modserve-autoscaler beside the cluster of r. */
static int s_autoscaler_start(const ms_compare_opts *o, const ms_cluster_run *r, ms_proc *p,
                              char *err, size_t err_size) {
    char bin[MS_CLUSTER_PATH_MAX + 32], log[MS_CLUSTER_PATH_MAX];
    snprintf(bin, sizeof bin, "%s/modserve-autoscaler", o->bin_dir);
    char argbuf[MS_CLUSTER_ARGS_MAX];
    char *argv[8 + MS_CLUSTER_ARGS_MAX / 2];
    int argc = 0;
    argv[argc++] = bin;
    argv[argc++] = "--dir";
    argv[argc++] = (char *)r->dir;
    if (o->autoscale_args && *o->autoscale_args) {
        const int k = ms_split_args(o->autoscale_args, argbuf, sizeof argbuf, argv + argc,
                                    (int)MS_ARRAY_LEN(argv) - argc - 1);
        if (k < 0) return ms_errf(err, err_size, "autoscaler arguments too long");
        argc += k;
    }
    argv[argc] = NULL;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "autoscaler");
    snprintf(p->role, sizeof p->role, "autoscaler");
    p->seq = -1;
    ms_cluster_log_path(r->dir, "autoscaler", log, sizeof log);
    return ms_proc_spawn(p, argv, log, err, err_size);
}

/* One run: cluster up, replay, cluster down. The cell records the outcome;
 * -1 only when the replay could not run. */
static int s_run_one(const ms_compare_opts *o, ms_compare_replay_fn fn, void *ud,
                     const char *layout, const ms_compare_split *sp, double rate, bool autoscale,
                     const ms_compare_replay *tmpl, const char *label, ms_compare_cell *cell) {
    char err[MS_ERR_SIZE] = "";
    memset(cell, 0, sizeof *cell);
    snprintf(cell->layout, sizeof cell->layout, "%s", layout);
    snprintf(cell->label, sizeof cell->label, "%s", label);
    cell->rate = rate;
    cell->autoscale = autoscale;
    cell->split = *sp;
    cell->load1_before = cell->load1_after = -1;
    char rundir[MS_CLUSTER_PATH_MAX];
    snprintf(rundir, sizeof rundir, "%.900s/runs/%s", o->out, label);
    snprintf(cell->out, sizeof cell->out, "%.900s/%s", o->out, label);
    char bin[MS_CLUSTER_PATH_MAX + 32];
    snprintf(bin, sizeof bin, "%s/modserve-autoscaler", o->bin_dir);
    if (autoscale && access(bin, X_OK) != 0) {
        snprintf(cell->error, sizeof cell->error,
                 "modserve-autoscaler not found in %.150s (not built): run skipped", o->bin_dir);
        s_log(o, "%s: %s", label, cell->error);
        return -1;
    }
    char desc[256];
    ms_compare_split_describe(sp, desc, sizeof desc);
    s_log(o, "%s: starting %s layout: %s", label, layout, desc);
    ms_cluster_run *r = ms_xcalloc(1, sizeof *r);
    const double t0 = ms_now_s();
    ms_proc scaler = {0};
    bool have_scaler = false;
    int rc = s_cluster_up(o, layout, sp, rundir, r, err, sizeof err);
    cell->up_s = ms_now_s() - t0;
    if (rc == 0 && autoscale) {
        rc = s_autoscaler_start(o, r, &scaler, err, sizeof err);
        have_scaler = rc == 0;
    }
    if (rc == 0) {
        s_log(o, "%s: cluster up in %.1f s (%s); replaying", label, cell->up_s, r->dir);
        ms_compare_replay spec = *tmpl;
        spec.rundir = r->dir;
        spec.out = cell->out;
        spec.label = label;
        spec.rate = rate;
        cell->load1_before = s_load1();
        rc = fn(ud, &spec, cell, err, sizeof err);
        cell->load1_after = s_load1();
        cell->ran = rc == 0;
    }
    if (rc != 0) {
        snprintf(cell->error, sizeof cell->error, "%s", err);
        s_log(o, "%s: %s", label, err);
    }
    if (have_scaler) ms_proc_stop(&scaler, MS_CLUSTER_STOP_MS);
    if (r->dir[0]) {
        FILE *log = r->log;
        r->log = NULL; /* quiet teardown */
        ms_cluster_down(r, MS_COMPARE_DRAIN_MS, NULL, 0);
        r->log = log;
    }
    free(r);
    return rc;
}

static bool s_has_layout(const ms_compare_opts *o, const char *name) {
    for (int i = 0; i < o->n_layouts; i++)
        if (strcmp(o->layouts[i], name) == 0) return true;
    return false;
}

static void s_rate_label(double rate, char *buf, size_t size) {
    snprintf(buf, size, "x%g", rate);
}

int ms_compare_run(const ms_compare_opts *o, ms_compare_replay_fn fn, void *ud,
                   ms_compare_result *res, char *err, size_t err_size) {
    memset(res, 0, sizeof *res);
    if (!fn || o->n_layouts < 1 || o->n_layouts > MS_COMPARE_MAX_LAYOUTS || o->n_rates < 1 ||
        o->n_rates > MS_COMPARE_MAX_RATES || !o->out || !o->bin_dir)
        return ms_errf(err, err_size, "compare: missing layouts, rates, output or binaries");
    res->cores = o->cores;
    snprintf(res->baseline, sizeof res->baseline, "%s",
             s_has_layout(o, "monolith") ? "monolith" : o->layouts[o->n_layouts - 1]);
    ms_compare_split splits[MS_COMPARE_MAX_LAYOUTS];
    for (int i = 0; i < o->n_layouts; i++)
        if (ms_compare_split_cores(o->layouts[i], o->cores, o->encoders, o->need, o->has_images,
                                   &splits[i], err, err_size) != 0)
            return -1;
    char runs[MS_CLUSTER_PATH_MAX];
    snprintf(runs, sizeof runs, "%.900s/runs", o->out);
    if (ms_mkdirs(runs, err, err_size) != 0) return -1;
    /* the SLO targets: given, or isolated requests on the monolith × the factor */
    ms_compare_slo *slo = &res->slo;
    slo->ttft_ms = o->ttft_ms;
    slo->tbt_ms = o->tbt_ms;
    if (!(o->ttft_ms > 0 && o->tbt_ms > 0)) {
        ms_compare_split mono;
        if (ms_compare_split_cores("monolith", o->cores, -1, o->need, o->has_images, &mono, err,
                                   err_size) != 0)
            return -1;
        const ms_compare_replay calib = {.rate = 1,
                                         .ttft_ms = MS_COMPARE_CALIB_TTFT_MS,
                                         .tbt_ms = MS_COMPARE_CALIB_TBT_MS,
                                         .concurrency = 1,
                                         .sample = o->calib_requests};
        ms_compare_cell *cell = ms_xcalloc(1, sizeof *cell);
        s_log(o, "deriving the SLOs: %d isolated requests on the monolith, x%g", o->calib_requests,
              o->slo_factor);
        const int rc =
            s_run_one(o, fn, ud, "monolith", &mono, 1, false, &calib, "calibration", cell);
        const ms_report_group *g = &cell->sum.g[MS_REPORT_ALL];
        if (rc != 0 || g->completed == 0 || g->ttft.n == 0) {
            ms_errf(err, err_size, "SLO calibration failed: %s",
                    cell->error[0] ? cell->error : "no isolated request completed");
            free(cell->bins);
            free(cell);
            return -1;
        }
        /* a slice of one-token answers has no TPOT: the TBT target then stays the given one */
        const double tpot = g->tpot.n > 0 ? g->tpot.p50 : 0;
        ms_compare_derive_slo(g->ttft.p50, tpot, o->slo_factor, slo);
        slo->calib_requests = g->completed;
        if (o->ttft_ms > 0) slo->ttft_ms = o->ttft_ms;
        if (o->tbt_ms > 0 || !(tpot > 0))
            slo->tbt_ms = o->tbt_ms > 0 ? o->tbt_ms : MS_COMPARE_TBT_FALLBACK_MS;
        free(cell->bins);
        free(cell);
        s_log(o, "isolated P50: TTFT %.1f ms, TPOT %.2f ms -> SLO TTFT %.0f ms, TBT %.0f ms",
              slo->iso_ttft_ms, slo->iso_tpot_ms, slo->ttft_ms, slo->tbt_ms);
    }
    const ms_compare_replay tmpl = {.ttft_ms = slo->ttft_ms, .tbt_ms = slo->tbt_ms};
    /* rate outer, layout inner: each rate's runs are close in time (the machine's other load
     * drifts) */
    for (int ri = 0; ri < o->n_rates && !s_stopped(o); ri++) {
        char rl[32];
        s_rate_label(o->rates[ri], rl, sizeof rl);
        for (int li = 0; li <= o->n_layouts && !s_stopped(o); li++) {
            const bool autoscale = li == o->n_layouts;
            if (autoscale && !(o->autoscale && s_has_layout(o, "modserve"))) continue;
            const char *layout = autoscale ? "modserve" : o->layouts[li];
            int si = 0;
            while (strcmp(o->layouts[si], layout) != 0)
                si++;
            char label[MS_COMPARE_LABEL_MAX];
            snprintf(label, sizeof label, "%s%s-%s", layout, autoscale ? "+autoscale" : "", rl);
            ms_compare_cell *cell = &res->cells[res->n_cells++];
            s_run_one(o, fn, ud, layout, &splits[si], o->rates[ri], autoscale, &tmpl, label, cell);
        }
    }
    res->interrupted = s_stopped(o);
    for (int i = 0; i < res->n_cells; i++)
        if (res->cells[i].ran) return 0;
    return ms_errf(err, err_size, "no run produced a report");
}

/* ---- the table ------------------------------------------------------------------------ */

static void s_pct(char *buf, size_t size, const ms_report_group *g) {
    if (g->requests == 0)
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, "%.1f%%", 100.0 * g->slo_attainment);
}

static void s_ms(char *buf, size_t size, const ms_latency_stats *st) {
    if (st->n == 0)
        snprintf(buf, size, "-");
    else if (st->p99 >= 100)
        snprintf(buf, size, "%.0f", st->p99);
    else
        snprintf(buf, size, "%.1f", st->p99);
}

static void s_x(char *buf, size_t size, double v) {
    if (isfinite(v))
        snprintf(buf, size, "%.2fx", v);
    else
        snprintf(buf, size, "n/a");
}

static void s_print_cell(FILE *f, const ms_compare_cell *c) {
    char name[MS_COMPARE_LABEL_MAX + 16];
    snprintf(name, sizeof name, "%s%s", c->layout, c->autoscale ? "+autoscale" : "");
    if (!c->ran) {
        fprintf(f, "x%-5g %-19s not run: %s\n", c->rate, name, c->error);
        return;
    }
    const ms_report_group *g = c->sum.g;
    char a[16], at[16], ai[16], t_all[16], t_txt[16], t_img[16], tp[16];
    s_pct(a, sizeof a, &g[MS_REPORT_ALL]);
    s_pct(at, sizeof at, &g[MS_REPORT_TEXT]);
    s_pct(ai, sizeof ai, &g[MS_REPORT_IMAGE]);
    s_ms(t_all, sizeof t_all, &g[MS_REPORT_ALL].ttft);
    s_ms(t_txt, sizeof t_txt, &g[MS_REPORT_TEXT].ttft);
    s_ms(t_img, sizeof t_img, &g[MS_REPORT_IMAGE].ttft);
    s_ms(tp, sizeof tp, &g[MS_REPORT_ALL].tpot);
    char cost[16];
    const double cg = ms_compare_cost_per_1k_good(c);
    if (isfinite(cg))
        snprintf(cost, sizeof cost, "%.1f", cg);
    else
        snprintf(cost, sizeof cost, "-");
    fprintf(f, "x%-5g %-19s %7s %7s %7s %8.2f %8.2f %8s %7s %7s %8s %8.1f %9s %5.1f\n", c->rate,
            name, a, at, ai, g[MS_REPORT_ALL].goodput_rps, g[MS_REPORT_ALL].throughput_rps, t_all,
            t_txt, t_img, tp, c->sum.instance_s_total, cost,
            MS_MAX(c->load1_before, c->load1_after));
}

static void s_print_ratio(FILE *f, const ms_compare_cell *a, const ms_compare_cell *b,
                          const char *a_name, const char *b_name) {
    ms_compare_ratios q;
    ms_compare_ratios_of(a, b, &q);
    char g[16], t[16], tt[16], ti[16], is[16], cg[16];
    s_x(g, sizeof g, q.goodput);
    s_x(t, sizeof t, q.ttft_p99_all);
    s_x(tt, sizeof tt, q.ttft_p99_text);
    s_x(ti, sizeof ti, q.ttft_p99_image);
    s_x(is, sizeof is, q.instance_s);
    s_x(cg, sizeof cg, q.cost_per_good);
    fprintf(f,
            "       %s / %s: goodput %s, P99 TTFT %s (text %s, image %s), instance-s %s, "
            "cost per good request %s\n",
            a_name, b_name, g, t, tt, ti, is, cg);
}

void ms_compare_print(FILE *f, const ms_compare_result *r) {
    const ms_compare_slo *s = &r->slo;
    fprintf(f,
            "\n== modserve bench --compare: %d cores per layout (one actor per core, %d thread "
            "each) ==\n",
            r->cores, MS_COMPARE_THREADS);
    fprintf(f, "SLO: TTFT %.0f ms, TBT %.0f ms", s->ttft_ms, s->tbt_ms);
    if (s->derived)
        fprintf(f,
                " (derived: %g x the isolated P50 on the monolith, TTFT %.1f ms, TPOT %.2f ms, "
                "over %d requests)",
                s->factor, s->iso_ttft_ms, s->iso_tpot_ms, s->calib_requests);
    fprintf(f, "; attainment target %.0f%%\n", 100 * MS_COMPARE_ATTAINMENT);
    /* each layout's split, once */
    for (int i = 0; i < r->n_cells; i++) {
        bool seen = false;
        for (int k = 0; k < i && !seen; k++)
            seen = strcmp(r->cells[k].layout, r->cells[i].layout) == 0;
        if (seen) continue;
        char desc[256];
        ms_compare_split_describe(&r->cells[i].split, desc, sizeof desc);
        fprintf(f, "  %-10s %s\n", r->cells[i].layout, desc);
    }
    fprintf(f, "\n%-6s %-19s %7s %7s %7s %8s %8s %8s %7s %7s %8s %8s %9s %5s\n", "rate", "layout",
            "SLO att", "text", "image", "goodput", "thruput", "P99TTFT", "text", "image", "P99TPOT",
            "inst-s", "s/1k good", "load");
    fprintf(f, "%-6s %-19s %7s %7s %7s %8s %8s %8s %7s %7s %8s %8s %9s %5s\n", "", "", "all", "",
            "", "req/s", "req/s", "all ms", "ms", "ms", "ms", "", "", "");
    for (int i = 0; i < r->n_cells; i++) {
        const ms_compare_cell *c = &r->cells[i];
        s_print_cell(f, c);
        const bool last_of_rate = i + 1 == r->n_cells || r->cells[i + 1].rate != c->rate;
        if (!last_of_rate) continue;
        /* the ratios of this rate's runs to the baseline */
        const ms_compare_cell *base = ms_compare_find(r, r->baseline, c->rate, false);
        for (int k = 0; k <= i; k++) {
            const ms_compare_cell *o = &r->cells[k];
            if (o->rate != c->rate || !o->ran || o == base) continue;
            char name[MS_COMPARE_LABEL_MAX + 16];
            snprintf(name, sizeof name, "%s%s", o->layout, o->autoscale ? "+autoscale" : "");
            if (base) s_print_ratio(f, o, base, name, r->baseline);
            if (o->autoscale) {
                const ms_compare_cell *st = ms_compare_find(r, o->layout, c->rate, false);
                if (st) s_print_ratio(f, o, st, name, o->layout);
            }
        }
    }
    /* the highest rate at SLO */
    fprintf(f, "\nhighest rate with >= %.0f%% SLO attainment (of the rates run):",
            100 * MS_COMPARE_ATTAINMENT);
    const double base_rate = ms_compare_max_rate(r, r->baseline, false, MS_COMPARE_ATTAINMENT);
    for (int i = 0; i < r->n_cells; i++) {
        const ms_compare_cell *c = &r->cells[i];
        if (!s_first_of_kind(r, i)) continue;
        const double m = ms_compare_max_rate(r, c->layout, c->autoscale, MS_COMPARE_ATTAINMENT);
        fprintf(f, " %s%s ", c->layout, c->autoscale ? "+autoscale" : "");
        if (m > 0)
            fprintf(f, "x%g", m);
        else
            fprintf(f, "none");
        if (strcmp(c->layout, r->baseline) != 0 || c->autoscale) {
            if (m > 0 && base_rate > 0)
                fprintf(f, " (%.2fx)", m / base_rate);
            else if (m > 0)
                fprintf(f, " (baseline met none)");
        }
        fprintf(f, ";");
    }
    fprintf(f, "\n");
    if (r->interrupted)
        fprintf(f, "(interrupted: the runs after the last one shown did not run)\n");
    fflush(f);
}

/* ---- compare.json ----------------------------------------------------------------------- */

static void s_jnum(cJSON *o, const char *key, double v) {
    if (isfinite(v))
        cJSON_AddNumberToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

static void s_jstats(cJSON *o, const char *key, const ms_latency_stats *st) {
    cJSON *s = cJSON_AddObjectToObject(o, key);
    cJSON_AddNumberToObject(s, "n", st->n);
    s_jnum(s, "mean", st->mean);
    s_jnum(s, "p50", st->p50);
    s_jnum(s, "p90", st->p90);
    s_jnum(s, "p99", st->p99);
    s_jnum(s, "max", st->max);
}

static void s_jsplit(cJSON *o, const ms_compare_split *sp) {
    cJSON *a = cJSON_AddArrayToObject(o, "split");
    for (int i = 0; i < sp->n_pools; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "group", sp->pools[i].name);
        cJSON_AddStringToObject(p, "stages", sp->pools[i].stages);
        cJSON_AddNumberToObject(p, "count", sp->pools[i].count);
        cJSON_AddNumberToObject(p, "threads", sp->pools[i].threads);
        cJSON_AddItemToArray(a, p);
    }
    cJSON_AddNumberToObject(o, "cores", sp->cores);
}

static void s_jcell(cJSON *runs, const ms_compare_cell *c) {
    static const char *const names[MS_REPORT_MODALITIES] = {"text", "image", "all"};
    static const char *const stages[MS_REPORT_STAGES] = {"encode", "prefill", "decode"};
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToArray(runs, o);
    cJSON_AddStringToObject(o, "label", c->label);
    cJSON_AddStringToObject(o, "layout", c->layout);
    cJSON_AddNumberToObject(o, "rate", c->rate);
    cJSON_AddBoolToObject(o, "autoscale", c->autoscale);
    s_jsplit(o, &c->split);
    cJSON_AddBoolToObject(o, "ran", c->ran);
    cJSON_AddStringToObject(o, "error", c->error);
    cJSON_AddStringToObject(o, "report_dir", c->out);
    if (!c->ran) return;
    s_jnum(o, "startup_s", c->up_s);
    s_jnum(o, "load1_before", c->load1_before);
    s_jnum(o, "load1_after", c->load1_after);
    s_jnum(o, "duration_s", c->sum.duration_s);
    s_jnum(o, "max_lag_ms", c->sum.max_lag_ms);
    s_jnum(o, "instance_s", c->sum.instance_s_total);
    cJSON *bs = cJSON_AddObjectToObject(o, "instance_s_by_stage");
    for (int k = 0; k < MS_REPORT_STAGES; k++)
        s_jnum(bs, stages[k], c->sum.stage_instance_s[k]);
    s_jnum(o, "cost_per_1k_good_instance_s", ms_compare_cost_per_1k_good(c));
    cJSON *m = cJSON_AddObjectToObject(o, "modalities");
    for (int k = 0; k < MS_REPORT_MODALITIES; k++) {
        const ms_report_group *g = &c->sum.g[k];
        cJSON *x = cJSON_AddObjectToObject(m, names[k]);
        cJSON_AddNumberToObject(x, "requests", g->requests);
        cJSON_AddNumberToObject(x, "completed", g->completed);
        cJSON_AddNumberToObject(x, "errors", g->errors);
        cJSON_AddNumberToObject(x, "slo_met", g->slo_met);
        cJSON_AddNumberToObject(x, "ttft_met", g->ttft_met);
        cJSON_AddNumberToObject(x, "tpot_met", g->tpot_met);
        s_jnum(x, "slo_attainment", g->slo_attainment);
        s_jnum(x, "goodput_rps", g->goodput_rps);
        s_jnum(x, "throughput_rps", g->throughput_rps);
        s_jnum(x, "output_tok_s", g->output_tok_s);
        s_jnum(x, "input_tok_s", g->input_tok_s);
        cJSON_AddNumberToObject(x, "images", (double)g->images);
        s_jstats(x, "ttft_ms", &g->ttft);
        s_jstats(x, "tpot_ms", &g->tpot);
        s_jstats(x, "e2e_ms", &g->e2e);
    }
}

static void s_jratios(cJSON *o, const ms_compare_cell *a, const ms_compare_cell *b,
                      const char *vs) {
    ms_compare_ratios q;
    ms_compare_ratios_of(a, b, &q);
    cJSON *x = cJSON_CreateObject();
    cJSON_AddItemToArray(o, x);
    cJSON_AddNumberToObject(x, "rate", a->rate);
    cJSON_AddStringToObject(x, "run", a->label);
    cJSON_AddStringToObject(x, "vs", vs);
    s_jnum(x, "goodput", q.goodput);
    s_jnum(x, "ttft_p99_all", q.ttft_p99_all);
    s_jnum(x, "ttft_p99_text", q.ttft_p99_text);
    s_jnum(x, "ttft_p99_image", q.ttft_p99_image);
    s_jnum(x, "instance_s", q.instance_s);
    s_jnum(x, "cost_per_good", q.cost_per_good);
    s_jnum(x, "attainment", q.attainment_a);
    s_jnum(x, "attainment_vs", q.attainment_b);
}

int ms_compare_write_json(const char *path, const ms_compare_result *r, const char *meta_json,
                          char *err, size_t err_size) {
    cJSON *root = cJSON_CreateObject();
    if (meta_json) {
        cJSON *w = cJSON_Parse(meta_json);
        if (w) cJSON_AddItemToObject(root, "workload", w);
    }
    cJSON_AddNumberToObject(root, "cores", r->cores);
    cJSON_AddNumberToObject(root, "threads_per_actor", MS_COMPARE_THREADS);
    cJSON_AddStringToObject(root, "baseline", r->baseline);
    cJSON *s = cJSON_AddObjectToObject(root, "slo");
    s_jnum(s, "ttft_ms", r->slo.ttft_ms);
    s_jnum(s, "tbt_ms", r->slo.tbt_ms);
    cJSON_AddBoolToObject(s, "derived", r->slo.derived);
    if (r->slo.derived) {
        s_jnum(s, "factor", r->slo.factor);
        s_jnum(s, "isolated_ttft_p50_ms", r->slo.iso_ttft_ms);
        s_jnum(s, "isolated_tpot_p50_ms", r->slo.iso_tpot_ms);
        cJSON_AddNumberToObject(s, "calibration_requests", r->slo.calib_requests);
    }
    s_jnum(root, "attainment_threshold", MS_COMPARE_ATTAINMENT);
    cJSON *runs = cJSON_AddArrayToObject(root, "runs");
    for (int i = 0; i < r->n_cells; i++)
        s_jcell(runs, &r->cells[i]);
    cJSON *ratios = cJSON_AddArrayToObject(root, "ratios");
    for (int i = 0; i < r->n_cells; i++) {
        const ms_compare_cell *c = &r->cells[i];
        if (!c->ran) continue;
        const ms_compare_cell *base = ms_compare_find(r, r->baseline, c->rate, false);
        if (base && base != c) s_jratios(ratios, c, base, r->baseline);
        const ms_compare_cell *st =
            c->autoscale ? ms_compare_find(r, c->layout, c->rate, false) : NULL;
        if (st) s_jratios(ratios, c, st, c->layout);
    }
    cJSON *mx = cJSON_AddObjectToObject(root, "max_rate_at_slo");
    cJSON *mxr = cJSON_AddObjectToObject(root, "max_rate_at_slo_ratio");
    const double base_rate = ms_compare_max_rate(r, r->baseline, false, MS_COMPARE_ATTAINMENT);
    for (int i = 0; i < r->n_cells; i++) {
        const ms_compare_cell *c = &r->cells[i];
        char name[MS_COMPARE_LABEL_MAX + 16];
        snprintf(name, sizeof name, "%s%s", c->layout, c->autoscale ? "+autoscale" : "");
        if (!c->ran || cJSON_GetObjectItemCaseSensitive(mx, name)) continue;
        const double m = ms_compare_max_rate(r, c->layout, c->autoscale, MS_COMPARE_ATTAINMENT);
        cJSON_AddNumberToObject(mx, name, m);
        s_jnum(mxr, name, base_rate > 0 ? m / base_rate : NAN);
    }
    cJSON_AddBoolToObject(root, "interrupted", r->interrupted);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return ms_errf(err, err_size, "%s: out of memory", path);
    FILE *f = fopen(path, "w");
    if (!f) {
        free(text);
        return ms_errf(err, err_size, "%s: cannot create: %s", path, strerror(errno));
    }
    fputs(text, f);
    fputc('\n', f);
    free(text);
    if (ferror(f) | (fclose(f) != 0)) return ms_errf(err, err_size, "%s: write failed", path);
    return 0;
}

/* ---- compare.svg ------------------------------------------------------------------------ */

#define S_W        1000 /* picture, px */
#define S_H        780
#define S_LEFT     80 /* plot areas */
#define S_RIGHT    810
#define S_TTFT_TOP 60
#define S_TTFT_BOT 370
#define S_RATE_TOP 440
#define S_RATE_BOT 710
#define S_MID_GAP  60 /* between the two lower panels */

typedef struct s_box {
    double l, r, t, b; /* pixels */
    double x0, x1;     /* data range on x */
    double y0, y1;     /* data range on y (log10 of it when logy) */
    bool logy;
} s_box;

static double s_bx(const s_box *a, double x) {
    return a->l + (x - a->x0) / (a->x1 - a->x0) * (a->r - a->l);
}

static double s_by(const s_box *a, double y) {
    if (a->logy) y = log10(MS_MAX(y, 1e-9));
    if (y > a->y1) y = a->y1;
    if (y < a->y0) y = a->y0;
    return a->b - (y - a->y0) / (a->y1 - a->y0) * (a->b - a->t);
}

/* A "nice" step (1, 2 or 5 × 10^k) for about n ticks over range. */
static double s_nice(double range, int n) {
    if (!(range > 0)) return 1;
    const double raw = range / n, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

static void s_svg_text(FILE *f, const char *s) {
    for (const char *p = s ? s : ""; *p; p++) {
        if (*p == '<')
            fputs("&lt;", f);
        else if (*p == '>')
            fputs("&gt;", f);
        else if (*p == '&')
            fputs("&amp;", f);
        else if (*p == '\'')
            fputs("&apos;", f);
        else
            fputc(*p, f);
    }
}

static void s_frame(FILE *f, const s_box *a, const char *ylabel, const char *xlabel) {
    fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#888'/>\n",
            a->l, a->t, a->r - a->l, a->b - a->t);
    if (a->logy) {
        for (int d = (int)a->y0; d <= (int)a->y1; d++)
            for (int m = 1; m <= 5; m += (m == 1 ? 1 : 3)) { /* 1, 2, 5 × 10^d */
                const double v = m * pow(10, d);
                if (log10(v) > a->y1 + 1e-9) break;
                const double py = s_by(a, v);
                fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#eee'/>\n", a->l,
                        py, a->r, py);
                fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='end' font-size='11'>%g</text>\n",
                        a->l - 6, py + 4, v);
            }
    } else {
        const double ys = s_nice(a->y1 - a->y0, 5);
        for (double y = a->y0; y <= a->y1 + 1e-9; y += ys) {
            const double py = s_by(a, y);
            fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#eee'/>\n", a->l, py,
                    a->r, py);
            fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='end' font-size='11'>%g</text>\n",
                    a->l - 6, py + 4, y);
        }
    }
    fprintf(f,
            "<text x='%.1f' y='%.1f' font-size='12' transform='rotate(-90 %.1f %.1f)' "
            "text-anchor='middle'>%s</text>\n",
            a->l - 52, (a->t + a->b) / 2, a->l - 52, (a->t + a->b) / 2, ylabel);
    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='12'>%s</text>\n",
            (a->l + a->r) / 2, a->b + 32, xlabel);
}

static const char *s_color(const ms_compare_cell *c) {
    if (c->autoscale) return "#9467bd";
    if (strcmp(c->layout, "modserve") == 0) return "#1f77b4";
    if (strcmp(c->layout, "monolith") == 0) return "#d62728";
    return "#2ca02c";
}

static const char *const s_dashes[] = {"", " stroke-dasharray='6,3'", " stroke-dasharray='2,2'",
                                       " stroke-dasharray='8,3,2,3'"};

static int s_rate_index(double rate, double *rates, int *n_rates) {
    for (int i = 0; i < *n_rates; i++)
        if (rates[i] == rate) return i;
    rates[*n_rates] = rate;
    return (*n_rates)++;
}

/* The lower panels: y(cell) by rate, one line per layout. */
static void s_rate_panel(FILE *f, const ms_compare_result *r, const s_box *a, const double *rates,
                         int n_rates, bool attainment) {
    for (int k = 0; k < n_rates; k++) {
        const double px = s_bx(a, k);
        fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='11'>x%g</text>\n", px,
                a->b + 15, rates[k]);
    }
    for (int i = 0; i < r->n_cells; i++) {
        const ms_compare_cell *c = &r->cells[i];
        if (!s_first_of_kind(r, i)) continue;
        fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='2' points='", s_color(c));
        for (int k = 0; k < n_rates; k++) {
            const ms_compare_cell *x = ms_compare_find(r, c->layout, rates[k], c->autoscale);
            if (!x) continue;
            const ms_report_group *g = &x->sum.g[MS_REPORT_ALL];
            fprintf(f, "%.1f,%.1f ", s_bx(a, k),
                    s_by(a, attainment ? 100 * g->slo_attainment : g->goodput_rps));
        }
        fputs("'/>\n", f);
        for (int k = 0; k < n_rates; k++) {
            const ms_compare_cell *x = ms_compare_find(r, c->layout, rates[k], c->autoscale);
            if (!x) continue;
            const ms_report_group *g = &x->sum.g[MS_REPORT_ALL];
            fprintf(f, "<circle cx='%.1f' cy='%.1f' r='3.5' fill='%s'/>\n", s_bx(a, k),
                    s_by(a, attainment ? 100 * g->slo_attainment : g->goodput_rps), s_color(c));
        }
    }
}

int ms_compare_write_svg(const char *path, const char *title, const ms_compare_result *r, char *err,
                         size_t err_size) {
    FILE *f = fopen(path, "w");
    if (!f) return ms_errf(err, err_size, "%s: cannot create: %s", path, strerror(errno));
    double tmax = 1, ymin = INFINITY, ymax = 0, gmax = 0;
    double rates[MS_COMPARE_MAX_CELLS];
    int n_rates = 0;
    for (int i = 0; i < r->n_cells; i++) {
        const ms_compare_cell *c = &r->cells[i];
        if (!c->ran) continue;
        s_rate_index(c->rate, rates, &n_rates);
        tmax = MS_MAX(tmax, c->n_bins * c->bin_s);
        gmax = MS_MAX(gmax, c->sum.g[MS_REPORT_ALL].goodput_rps);
        for (int b = 0; b < c->n_bins; b++)
            if (c->bins[b].n_lat > 0 && c->bins[b].ttft_p99 > 0) {
                ymin = MS_MIN(ymin, c->bins[b].ttft_p99);
                ymax = MS_MAX(ymax, c->bins[b].ttft_p99);
            }
    }
    qsort(rates, (size_t)n_rates, sizeof rates[0], s_rate_cmp);
    if (!(ymax > 0)) ymin = 1, ymax = 10;
    ymin = MS_MIN(ymin, r->slo.ttft_ms);
    ymax = MS_MAX(ymax, r->slo.ttft_ms);
    const s_box ttft = {S_LEFT, S_RIGHT, S_TTFT_TOP,         S_TTFT_BOT,
                        0,      tmax,    floor(log10(ymin)), ceil(log10(ymax) + 1e-9),
                        true};
    const double mid = (S_LEFT + S_RIGHT) / 2.0;
    const double xr0 = -0.5, xr1 = MS_MAX(n_rates, 1) - 0.5;
    /* attainment from a round 10 % below the lowest (differences near 100 % stay visible) */
    double amin = 100;
    for (int i = 0; i < r->n_cells; i++)
        if (r->cells[i].ran)
            amin = MS_MIN(amin, 100 * r->cells[i].sum.g[MS_REPORT_ALL].slo_attainment);
    const double a0 = MS_MAX(0.0, floor((amin - 5) / 10) * 10);
    const s_box att = {S_LEFT, mid - S_MID_GAP / 2.0, S_RATE_TOP, S_RATE_BOT, xr0, xr1, a0, 100,
                       false};
    const double gtop =
        gmax > 0 ? ceil(gmax * 1.15 / s_nice(gmax * 1.15, 5)) * s_nice(gmax * 1.15, 5) : 1;
    const s_box good = {
        mid + S_MID_GAP / 2.0, S_RIGHT, S_RATE_TOP, S_RATE_BOT, xr0, xr1, 0, gtop, false};
    fprintf(f,
            "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' "
            "font-family='sans-serif'>\n<rect width='100%%' height='100%%' fill='white'/>\n",
            S_W, S_H);
    fputs("<text x='80' y='22' font-size='14' font-weight='bold'>", f);
    s_svg_text(f, title);
    fprintf(f,
            "</text>\n<text x='80' y='40' font-size='12'>%d cores per layout; SLO TTFT %.0f ms, "
            "TBT %.0f ms%s</text>\n",
            r->cores, r->slo.ttft_ms, r->slo.tbt_ms,
            r->slo.derived ? " (derived from isolated requests on the monolith)" : "");
    s_frame(f, &ttft, "P99 TTFT per second (ms, log)", "replay time (s)");
    const double xs = s_nice(tmax, 8);
    for (double x = 0; x <= tmax + 1e-9; x += xs)
        fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='11'>%g</text>\n",
                s_bx(&ttft, x), ttft.b + 15, x);
    fprintf(f,
            "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#2ca02c' stroke-width='1.5' "
            "stroke-dasharray='2,2'/>\n",
            ttft.l, s_by(&ttft, r->slo.ttft_ms), ttft.r, s_by(&ttft, r->slo.ttft_ms));
    for (int i = 0; i < r->n_cells; i++) {
        const ms_compare_cell *c = &r->cells[i];
        if (!c->ran || c->n_bins == 0) continue;
        const int ri = s_rate_index(c->rate, rates, &n_rates);
        fprintf(f,
                "<polyline fill='none' stroke='%s' stroke-width='1.4' stroke-opacity='0.85'%s "
                "points='",
                s_color(c), s_dashes[ri % (int)MS_ARRAY_LEN(s_dashes)]);
        for (int b = 0; b < c->n_bins; b++)
            if (c->bins[b].n_lat > 0)
                fprintf(f, "%.1f,%.1f ", s_bx(&ttft, c->bins[b].t + c->bin_s / 2),
                        s_by(&ttft, MS_MAX(c->bins[b].ttft_p99, 1e-3)));
        fputs("'/>\n", f);
    }
    s_frame(f, &att, "SLO attainment (%)", "rate multiplier");
    fprintf(f,
            "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#2ca02c' "
            "stroke-dasharray='2,2'/>\n",
            att.l, s_by(&att, 100 * MS_COMPARE_ATTAINMENT), att.r,
            s_by(&att, 100 * MS_COMPARE_ATTAINMENT));
    s_rate_panel(f, r, &att, rates, n_rates, true);
    s_frame(f, &good, "goodput (req/s)", "rate multiplier");
    s_rate_panel(f, r, &good, rates, n_rates, false);
    /* legend */
    double ly = S_TTFT_TOP + 10;
    const double lx = S_RIGHT + 15;
    for (int i = 0; i < r->n_cells; i++) {
        const ms_compare_cell *c = &r->cells[i];
        if (!s_first_of_kind(r, i)) continue;
        fprintf(f,
                "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s' stroke-width='2'/>"
                "<text x='%.1f' y='%.1f' font-size='11'>%s%s</text>\n",
                lx, ly, lx + 20, ly, s_color(c), lx + 26, ly + 4, c->layout,
                c->autoscale ? "+autoscale" : "");
        ly += 18;
    }
    ly += 6;
    for (int k = 0; k < n_rates; k++) {
        fprintf(f,
                "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#444' stroke-width='2'%s/>"
                "<text x='%.1f' y='%.1f' font-size='11'>rate x%g</text>\n",
                lx, ly, lx + 20, ly, s_dashes[k % (int)MS_ARRAY_LEN(s_dashes)], lx + 26, ly + 4,
                rates[k]);
        ly += 18;
    }
    fprintf(f,
            "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#2ca02c' stroke-width='1.5' "
            "stroke-dasharray='2,2'/><text x='%.1f' y='%.1f' font-size='11'>SLO target</text>\n",
            lx, ly, lx + 20, ly, lx + 26, ly + 4);
    fputs("</svg>\n", f);
    if (ferror(f) | (fclose(f) != 0)) return ms_errf(err, err_size, "%s: write failed", path);
    return 0;
}
