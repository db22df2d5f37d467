/* report.c — replay statistics and report files (report.h). */
#include "report.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"
#include "stages.h"
#include "trace.h"

const char *const ms_report_codes[MS_REPORT_N_CODES] = {
    "bad_request", "overloaded", "unavailable", "timeout", "internal", "cancelled", "client",
};

_Static_assert(MS_REPORT_STAGES == MS_STAGE_COUNT, "one by_stage entry per stage");
_Static_assert(MS_REPORT_STAGE_SETS == MS_STAGES_ALL + 1, "one entry per stage set mask");

static const char *const s_group_names[MS_REPORT_MODALITIES] = {"text", "image", "all"};
static const char *const s_stage_names[MS_REPORT_STAGES] = {"encode", "prefill", "decode"};

void ms_report_req_add_itl(ms_report_req *r, double ms) {
    if (r->n_itl == r->cap_itl) {
        r->cap_itl = r->cap_itl ? 2 * r->cap_itl : 16;
        r->itl_ms = ms_xrealloc(r->itl_ms, (size_t)r->cap_itl * sizeof *r->itl_ms);
    }
    r->itl_ms[r->n_itl++] = (float)ms;
}

void ms_report_reqs_fini(ms_report_req *reqs, int n) {
    for (int i = 0; reqs && i < n; i++) {
        free(reqs[i].itl_ms);
        reqs[i].itl_ms = NULL;
        reqs[i].n_itl = reqs[i].cap_itl = 0;
    }
}

/* ---- cost ------------------------------------------------------------------------ */

void ms_report_instance_seconds(const ms_report_sample *s, int n, double t0, double t1,
                                double by_set[MS_REPORT_STAGE_SETS],
                                double by_stage[MS_REPORT_STAGES], double *total) {
    memset(by_set, 0, MS_REPORT_STAGE_SETS * sizeof *by_set);
    memset(by_stage, 0, MS_REPORT_STAGES * sizeof *by_stage);
    *total = 0;
    bool first = true;
    for (int i = 0; i < n; i++) {
        if (!s[i].ok) continue;
        int next = i + 1;
        while (next < n && !s[next].ok)
            next++;
        const double start = first ? t0 : MS_MAX(t0, s[i].t);
        const double end = next < n ? MS_MIN(t1, s[next].t) : t1;
        first = false;
        if (end <= start) continue;
        const double dt = end - start;
        for (int k = 1; k < MS_REPORT_STAGE_SETS; k++) {
            const double v = s[i].actors[k] * dt;
            by_set[k] += v;
            *total += v;
            for (int st = 0; st < MS_REPORT_STAGES; st++)
                if ((uint32_t)k & MS_STAGE_BIT(st)) by_stage[st] += v;
        }
    }
}

/* ---- per-request metrics --------------------------------------------------------- */

static double s_ttft_ms(const ms_report_req *r) {
    return (r->t_first - r->t_submit) * 1000.0;
}

static double s_e2e_ms(const ms_report_req *r) {
    return (r->t_end - r->t_submit) * 1000.0;
}

/* TPOT in ms, or -1 when the request has fewer than 2 tokens. */
static double s_tpot_ms(const ms_report_req *r) {
    if (r->n_tokens < 2 || r->t_first <= 0) return -1;
    return (r->t_end - r->t_first) * 1000.0 / (r->n_tokens - 1);
}

static bool s_ttft_met(const ms_report_req *r, const ms_report_slo *slo) {
    return r->ok && r->n_tokens > 0 && s_ttft_ms(r) <= slo->ttft_ms;
}

static bool s_tpot_met(const ms_report_req *r, const ms_report_slo *slo) {
    const double tpot = s_tpot_ms(r);
    return r->ok && tpot <= slo->tbt_ms;
}

bool ms_report_req_slo_met(const ms_report_req *r, const ms_report_slo *slo) {
    return s_ttft_met(r, slo) && s_tpot_met(r, slo);
}

static int s_code_index(const char *code) {
    for (int i = 0; i < MS_REPORT_N_CODES; i++)
        if (strcmp(code, ms_report_codes[i]) == 0) return i;
    return code[0] ? 4 /* internal: an unknown code */ : MS_REPORT_N_CODES - 1;
}

/* Sample arrays of one group while summarising. */
typedef struct s_acc {
    double *ttft, *tpot, *e2e, *itl, *queue, *encode, *prefill;
    int n_ttft, n_tpot, n_e2e, n_itl, n_queue, n_encode, n_prefill;
} s_acc;

void ms_report_summarize(const ms_report_req *reqs, int n, const ms_report_sample *s, int n_s,
                         const ms_report_slo *slo, ms_report_summary *out) {
    memset(out, 0, sizeof *out);
    out->slo = *slo;
    int64_t n_itl = 0;
    double lag_sum = 0;
    int n_lag = 0;
    for (int i = 0; i < n; i++) {
        const ms_report_req *r = &reqs[i];
        n_itl += r->n_itl;
        if (r->ended) out->duration_s = MS_MAX(out->duration_s, r->t_end);
        if (r->submitted) {
            out->duration_s = MS_MAX(out->duration_s, r->t_submit);
            const double lag = (r->t_submit - r->t_sched) * 1000.0;
            out->max_lag_ms = MS_MAX(out->max_lag_ms, lag);
            lag_sum += lag;
            n_lag++;
        }
    }
    out->mean_lag_ms = n_lag ? lag_sum / n_lag : 0;
    s_acc acc[MS_REPORT_MODALITIES];
    for (int g = 0; g < MS_REPORT_MODALITIES; g++) {
        memset(&acc[g], 0, sizeof acc[g]);
        const size_t cap = (size_t)MS_MAX(n, 1);
        acc[g].ttft = ms_xmalloc(cap * sizeof(double));
        acc[g].tpot = ms_xmalloc(cap * sizeof(double));
        acc[g].e2e = ms_xmalloc(cap * sizeof(double));
        acc[g].queue = ms_xmalloc(cap * sizeof(double));
        acc[g].encode = ms_xmalloc(cap * sizeof(double));
        acc[g].prefill = ms_xmalloc(cap * sizeof(double));
        acc[g].itl = ms_xmalloc((size_t)MS_MAX(n_itl, 1) * sizeof(double));
    }
    for (int i = 0; i < n; i++) {
        const ms_report_req *r = &reqs[i];
        const int mod = r->n_images > 0 ? MS_REPORT_IMAGE : MS_REPORT_TEXT;
        const int gs[2] = {mod, MS_REPORT_ALL};
        for (int k = 0; k < 2; k++) {
            ms_report_group *g = &out->g[gs[k]];
            s_acc *a = &acc[gs[k]];
            g->requests++;
            g->submitted += r->submitted;
            g->trace_images += r->trace_images;
            g->images += r->n_images;
            g->prompt_tokens += r->prompt_tokens;
            g->trace_generated += r->trace_generated;
            g->max_tokens += r->max_tokens;
            g->tokens += r->n_tokens;
            g->clamped += r->clamped != 0;
            if (!r->ok) {
                g->errors++;
                g->code_count[s_code_index(r->ended ? r->code : "")]++;
                continue;
            }
            g->completed++;
            if (strcmp(r->finish, "eog") == 0)
                g->finish_eog++;
            else if (strcmp(r->finish, "length") == 0)
                g->finish_length++;
            else if (strcmp(r->finish, "stop") == 0)
                g->finish_stop++;
            else
                g->finish_other++;
            g->done_prompt_tokens += r->done_prompt_tokens;
            g->done_image_tokens += r->done_image_tokens;
            g->done_completion_tokens += r->done_completion_tokens;
            const bool tm = s_ttft_met(r, slo), pm = s_tpot_met(r, slo);
            g->ttft_met += tm;
            g->tpot_met += pm;
            g->slo_met += tm && pm;
            if (r->n_tokens > 0) a->ttft[a->n_ttft++] = s_ttft_ms(r);
            const double tpot = s_tpot_ms(r);
            if (tpot >= 0) a->tpot[a->n_tpot++] = tpot;
            a->e2e[a->n_e2e++] = s_e2e_ms(r);
            for (int j = 0; j < r->n_itl; j++)
                a->itl[a->n_itl++] = r->itl_ms[j];
            a->queue[a->n_queue++] = r->queue_ms;
            if (r->n_images > 0) a->encode[a->n_encode++] = r->encode_ms;
            a->prefill[a->n_prefill++] = r->prefill_ms;
        }
    }
    const double d = out->duration_s;
    for (int k = 0; k < MS_REPORT_MODALITIES; k++) {
        ms_report_group *g = &out->g[k];
        s_acc *a = &acc[k];
        ms_latency_summarize(a->ttft, a->n_ttft, &g->ttft);
        ms_latency_summarize(a->tpot, a->n_tpot, &g->tpot);
        ms_latency_summarize(a->e2e, a->n_e2e, &g->e2e);
        ms_latency_summarize(a->itl, a->n_itl, &g->itl);
        ms_latency_summarize(a->queue, a->n_queue, &g->queue);
        ms_latency_summarize(a->encode, a->n_encode, &g->encode);
        ms_latency_summarize(a->prefill, a->n_prefill, &g->prefill);
        g->slo_attainment = g->requests ? (double)g->slo_met / g->requests : 0;
        if (d > 0) {
            g->goodput_rps = g->slo_met / d;
            g->throughput_rps = g->completed / d;
            g->output_tok_s = (double)g->tokens / d;
            g->input_tok_s = (double)g->done_prompt_tokens / d;
        }
        free(a->ttft);
        free(a->tpot);
        free(a->e2e);
        free(a->itl);
        free(a->queue);
        free(a->encode);
        free(a->prefill);
    }
    out->n_samples = n_s;
    for (int i = 0; i < n_s; i++)
        out->n_samples_failed += !s[i].ok;
    ms_report_instance_seconds(s, n_s, 0, d, out->instance_s, out->stage_instance_s,
                               &out->instance_s_total);
}

/* ---- timeline ----------------------------------------------------------------------- */

static int s_bin_of(double t, double bin_s, int n_bins) {
    if (!(t > 0)) return 0;
    const double b = floor(t / bin_s);
    return b >= n_bins ? n_bins - 1 : (int)b;
}

ms_report_bin *ms_report_timeline(const ms_report_req *reqs, int n, const ms_report_sample *s,
                                  int n_s, const ms_report_slo *slo, double duration_s,
                                  double bin_s, int *n_bins, double *bin_s_used) {
    if (!(bin_s > 0)) bin_s = 1.0;
    double nb = ceil(MS_MAX(duration_s, 0) / bin_s);
    if (nb > MS_REPORT_MAX_BINS) {
        bin_s = duration_s / MS_REPORT_MAX_BINS;
        nb = MS_REPORT_MAX_BINS;
    }
    const int nbins = MS_MAX(1, (int)nb);
    ms_report_bin *bins = ms_xcalloc((size_t)nbins, sizeof *bins);
    for (int b = 0; b < nbins; b++) {
        bins[b].t = b * bin_s;
        bins[b].slo_met = -1;
    }
    /* arrivals, ends, in flight (a difference array), latencies by arrival bin */
    int *delta = ms_xcalloc((size_t)nbins, sizeof *delta);
    int *count = ms_xcalloc((size_t)nbins + 1, sizeof *count);
    for (int i = 0; i < n; i++) {
        const ms_report_req *r = &reqs[i];
        const int b = s_bin_of(r->t_sched, bin_s, nbins);
        bins[b].arrivals++;
        bins[b].image_arrivals += r->n_images > 0;
        if (r->ok) count[b + 1]++;
        if (r->submitted) delta[s_bin_of(r->t_submit, bin_s, nbins)]++;
        if (r->ended) {
            const int e = s_bin_of(r->t_end, bin_s, nbins);
            if (r->ok)
                bins[e].completed++;
            else
                bins[e].errors++;
            if (r->submitted) delta[e]--;
        }
    }
    int running = 0;
    for (int b = 0; b < nbins; b++) {
        running += delta[b];
        bins[b].in_flight = running;
        count[b + 1] += count[b];
    }
    /* completed requests grouped by arrival bin (counting sort) */
    int *order = ms_xmalloc((size_t)MS_MAX(count[nbins], 1) * sizeof *order);
    int *fill = ms_xmalloc((size_t)nbins * sizeof *fill);
    memcpy(fill, count, (size_t)nbins * sizeof *fill);
    for (int i = 0; i < n; i++)
        if (reqs[i].ok) order[fill[s_bin_of(reqs[i].t_sched, bin_s, nbins)]++] = i;
    double *tt = ms_xmalloc((size_t)MS_MAX(count[nbins], 1) * sizeof *tt);
    double *ee = ms_xmalloc((size_t)MS_MAX(count[nbins], 1) * sizeof *ee);
    for (int b = 0; b < nbins; b++) {
        int m = 0, met = 0;
        for (int k = count[b]; k < count[b + 1]; k++) {
            const ms_report_req *r = &reqs[order[k]];
            ee[m] = s_e2e_ms(r);
            tt[m] = r->n_tokens > 0 ? s_ttft_ms(r) : ee[m];
            met += ms_report_req_slo_met(r, slo);
            m++;
        }
        bins[b].n_lat = m;
        ms_latency_stats st;
        ms_latency_summarize(tt, m, &st);
        bins[b].ttft_p50 = st.p50;
        bins[b].ttft_p99 = st.p99;
        ms_latency_summarize(ee, m, &st);
        bins[b].e2e_p50 = st.p50;
        bins[b].e2e_p99 = st.p99;
        if (bins[b].arrivals > 0) bins[b].slo_met = (double)met / bins[b].arrivals;
    }
    /* actors: the last valid sample at or before the bin's end (before any: the first) */
    int cur = -1;
    for (int k = 0; k < n_s && cur < 0; k++)
        if (s[k].ok) cur = k;
    int si = 0;
    for (int b = 0; b < nbins; b++) {
        const double end = (b + 1) * bin_s;
        for (; si < n_s && s[si].t <= end; si++)
            if (s[si].ok) cur = si;
        if (cur >= 0) memcpy(bins[b].actors, s[cur].actors, sizeof bins[b].actors);
        for (int k = 1; k < MS_REPORT_STAGE_SETS; k++)
            bins[b].actors_total += bins[b].actors[k];
    }
    free(delta);
    free(count);
    free(order);
    free(fill);
    free(tt);
    free(ee);
    *n_bins = nbins;
    *bin_s_used = bin_s;
    return bins;
}

/* ---- report.json -------------------------------------------------------------------- */

/* Numbers rounded to 1e-3 so that the file stays readable. */
static void s_num(cJSON *o, const char *key, double v) {
    if (!isfinite(v)) v = 0;
    cJSON_AddNumberToObject(o, key, fabs(v) < 1e12 ? round(v * 1000.0) / 1000.0 : v);
}

static void s_stats_json(cJSON *o, const char *key, const ms_latency_stats *st) {
    cJSON *x = cJSON_AddObjectToObject(o, key);
    s_num(x, "n", st->n);
    s_num(x, "mean", st->mean);
    s_num(x, "p50", st->p50);
    s_num(x, "p90", st->p90);
    s_num(x, "p99", st->p99);
    s_num(x, "max", st->max);
}

static void s_group_json(cJSON *o, const ms_report_group *g) {
    s_num(o, "requests", g->requests);
    s_num(o, "submitted", g->submitted);
    s_num(o, "completed", g->completed);
    s_num(o, "errors", g->errors);
    cJSON *codes = cJSON_AddObjectToObject(o, "errors_by_code");
    for (int i = 0; i < MS_REPORT_N_CODES; i++)
        s_num(codes, ms_report_codes[i], g->code_count[i]);
    cJSON *fin = cJSON_AddObjectToObject(o, "finish");
    s_num(fin, "length", g->finish_length);
    s_num(fin, "eog", g->finish_eog);
    s_num(fin, "stop", g->finish_stop);
    s_num(fin, "other", g->finish_other);
    s_num(o, "slo_met", g->slo_met);
    s_num(o, "ttft_met", g->ttft_met);
    s_num(o, "tpot_met", g->tpot_met);
    s_num(o, "slo_attainment", g->slo_attainment);
    s_num(o, "goodput_rps", g->goodput_rps);
    s_num(o, "throughput_rps", g->throughput_rps);
    s_num(o, "output_tok_s", g->output_tok_s);
    s_num(o, "input_tok_s", g->input_tok_s);
    s_num(o, "trace_images", (double)g->trace_images);
    s_num(o, "images", (double)g->images);
    s_num(o, "prompt_tokens", (double)g->prompt_tokens);
    s_num(o, "done_prompt_tokens", (double)g->done_prompt_tokens);
    s_num(o, "done_image_tokens", (double)g->done_image_tokens);
    s_num(o, "trace_generated_tokens", (double)g->trace_generated);
    s_num(o, "max_tokens", (double)g->max_tokens);
    s_num(o, "tokens", (double)g->tokens);
    s_num(o, "done_completion_tokens", (double)g->done_completion_tokens);
    s_num(o, "clamped", g->clamped);
    s_stats_json(o, "ttft_ms", &g->ttft);
    s_stats_json(o, "tpot_ms", &g->tpot);
    s_stats_json(o, "itl_ms", &g->itl);
    s_stats_json(o, "e2e_ms", &g->e2e);
    cJSON *b = cJSON_AddObjectToObject(o, "broker");
    s_stats_json(b, "queue_ms", &g->queue);
    s_stats_json(b, "encode_ms", &g->encode);
    s_stats_json(b, "prefill_ms", &g->prefill);
}

static void s_str(cJSON *o, const char *key, const char *v) {
    cJSON_AddStringToObject(o, key, v ? v : "");
}

static int s_write_text(const char *path, const char *text, char *err, size_t err_size) {
    FILE *f = fopen(path, "w");
    if (!f) return ms_errf(err, err_size, "%s: cannot create: %s", path, strerror(errno));
    const size_t len = strlen(text);
    const bool ok = fwrite(text, 1, len, f) == len && fputc('\n', f) != EOF;
    if (fclose(f) != 0 || !ok) return ms_errf(err, err_size, "%s: write failed", path);
    return 0;
}

int ms_report_write_json(const char *path, const ms_report_meta *m, const ms_report_summary *s,
                         char *err, size_t err_size) {
    cJSON *root = cJSON_CreateObject();
    s_str(root, "tool", "modserve bench");
    s_str(root, "started_at", m->started_at);
    cJSON_AddBoolToObject(root, "interrupted", m->interrupted);
    cJSON *tr = cJSON_AddObjectToObject(root, "trace");
    s_str(tr, "path", m->trace_path);
    s_str(tr, "format", m->trace_format);
    s_num(tr, "rows_in_file", (double)m->trace_rows);
    s_num(tr, "row_first", (double)m->row_first);
    s_num(tr, "rows", (double)m->rows);
    s_str(tr, "t_first", m->t_first);
    s_str(tr, "t_last", m->t_last);
    s_num(tr, "span_s", m->trace_span_s);
    s_num(tr, "time_scale", m->time_scale);
    s_num(tr, "rate", m->rate);
    cJSON *tg = cJSON_AddObjectToObject(root, "target");
    s_str(tg, "broker", m->broker);
    s_str(tg, "registry", m->registry);
    s_str(tg, "model", m->model);
    s_str(tg, "mmproj", m->mmproj);
    s_num(tg, "n_image_tokens", m->n_image_tokens);
    s_num(tg, "n_ctx", m->n_ctx);
    cJSON *sy = cJSON_AddObjectToObject(root, "synthesis");
    s_num(sy, "max_context", m->max_context);
    s_num(sy, "max_gen", m->max_gen);
    s_num(sy, "max_images", m->max_images);
    s_num(sy, "concurrency_limit", m->concurrency_limit);
    cJSON_AddBoolToObject(sy, "ignore_eos", m->ignore_eos);
    cJSON_AddBoolToObject(sy, "exact_text", m->exact_text);
    cJSON_AddBoolToObject(sy, "unique_images", m->unique_images);
    s_num(sy, "seed", (double)m->seed);
    cJSON *slo = cJSON_AddObjectToObject(root, "slo");
    s_num(slo, "ttft_ms", s->slo.ttft_ms);
    s_num(slo, "tbt_ms", s->slo.tbt_ms);
    s_num(root, "duration_s", s->duration_s);
    s_num(root, "max_lag_ms", s->max_lag_ms);
    s_num(root, "mean_lag_ms", s->mean_lag_ms);
    cJSON *mods = cJSON_AddObjectToObject(root, "modalities");
    for (int g = 0; g < MS_REPORT_MODALITIES; g++)
        s_group_json(cJSON_AddObjectToObject(mods, s_group_names[g]), &s->g[g]);
    cJSON *is = cJSON_AddObjectToObject(root, "instance_seconds");
    s_num(is, "total", s->instance_s_total);
    cJSON *bs = cJSON_AddObjectToObject(is, "by_stage");
    for (int k = 0; k < MS_REPORT_STAGES; k++)
        s_num(bs, s_stage_names[k], s->stage_instance_s[k]);
    cJSON *bset = cJSON_AddObjectToObject(is, "by_stage_set");
    for (int k = 1; k < MS_REPORT_STAGE_SETS; k++) {
        char name[MS_STAGES_NAME_MAX];
        if (s->instance_s[k] > 0)
            s_num(bset, ms_stages_name((uint32_t)k, name, sizeof name), s->instance_s[k]);
    }
    s_num(is, "samples", s->n_samples);
    s_num(is, "samples_failed", s->n_samples_failed);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return ms_errf(err, err_size, "%s: out of memory", path);
    const int rc = s_write_text(path, text, err, err_size);
    cJSON_free(text);
    return rc;
}

/* ---- CSV ------------------------------------------------------------------------------ */

/* A CSV field, quoted when it holds a comma, a quote or a line end. */
static void s_csv_str(FILE *f, const char *v) {
    if (!strpbrk(v, ",\"\r\n")) {
        fputs(v, f);
        return;
    }
    fputc('"', f);
    for (const char *p = v; *p; p++) {
        if (*p == '"') fputc('"', f);
        fputc(*p, f);
    }
    fputc('"', f);
}

int ms_report_write_requests_csv(const char *path, const ms_report_req *reqs, int n,
                                 const ms_report_slo *slo, char *err, size_t err_size) {
    FILE *f = fopen(path, "w");
    if (!f) return ms_errf(err, err_size, "%s: cannot create: %s", path, strerror(errno));
    fputs("row,line,modality,trace_images,images,trace_context,prompt_tokens,text_tokens,"
          "trace_generated,max_tokens,clamped,t_sched_s,t_submit_s,ttft_ms,tpot_ms,itl_max_ms,"
          "e2e_ms,tokens,ok,finish,code,slo_met,done_prompt_tokens,done_image_tokens,"
          "done_completion_tokens,queue_ms,preprocess_ms,encode_ms,transfer_ms,prefill_ms,"
          "decode_ms,broker_ttft_ms,broker_e2e_ms,message\n",
          f);
    for (int i = 0; i < n; i++) {
        const ms_report_req *r = &reqs[i];
        double itl_max = 0;
        for (int k = 0; k < r->n_itl; k++)
            itl_max = MS_MAX(itl_max, (double)r->itl_ms[k]);
        const double tpot = r->ok ? s_tpot_ms(r) : -1;
        fprintf(f, "%lld,%d,%s,%d,%d,%d,%d,%d,%d,%d,%u,%.6f,%.6f,", (long long)r->row, r->line,
                r->n_images > 0 ? "image" : "text", r->trace_images, r->n_images, r->trace_context,
                r->prompt_tokens, r->text_tokens, r->trace_generated, r->max_tokens, r->clamped,
                r->t_sched, r->submitted ? r->t_submit : -1.0);
        if (r->ok && r->n_tokens > 0)
            fprintf(f, "%.3f,", s_ttft_ms(r));
        else
            fputs(",", f);
        if (tpot >= 0)
            fprintf(f, "%.3f,", tpot);
        else
            fputs(",", f);
        fprintf(f, "%.3f,", itl_max);
        if (r->ok)
            fprintf(f, "%.3f,", s_e2e_ms(r));
        else
            fputs(",", f);
        fprintf(f, "%d,%d,%s,%s,%d,%lld,%lld,%lld,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,",
                r->n_tokens, r->ok ? 1 : 0, r->finish,
                r->ok ? "" : (r->code[0] ? r->code : "client"),
                ms_report_req_slo_met(r, slo) ? 1 : 0, (long long)r->done_prompt_tokens,
                (long long)r->done_image_tokens, (long long)r->done_completion_tokens, r->queue_ms,
                r->preprocess_ms, r->encode_ms, r->transfer_ms, r->prefill_ms, r->decode_ms,
                r->broker_ttft_ms, r->broker_e2e_ms);
        s_csv_str(f, r->message);
        fputc('\n', f);
    }
    if (ferror(f) | (fclose(f) != 0)) return ms_errf(err, err_size, "%s: write failed", path);
    return 0;
}

int ms_report_write_timeline_csv(const char *path, const ms_report_bin *bins, int n_bins,
                                 double bin_s, char *err, size_t err_size) {
    FILE *f = fopen(path, "w");
    if (!f) return ms_errf(err, err_size, "%s: cannot create: %s", path, strerror(errno));
    fputs("t_s,bin_s,arrivals,image_arrivals,completed,errors,in_flight,n_latency,ttft_p50_ms,"
          "ttft_p99_ms,e2e_p50_ms,e2e_p99_ms,slo_met_fraction",
          f);
    char name[MS_STAGES_NAME_MAX];
    for (int k = 1; k < MS_REPORT_STAGE_SETS; k++)
        fprintf(f, ",actors_%s", ms_stages_name((uint32_t)k, name, sizeof name));
    fputs(",actors_total\n", f);
    for (int b = 0; b < n_bins; b++) {
        const ms_report_bin *x = &bins[b];
        fprintf(f, "%.3f,%.3f,%d,%d,%d,%d,%d,%d,%.3f,%.3f,%.3f,%.3f,", x->t, bin_s, x->arrivals,
                x->image_arrivals, x->completed, x->errors, x->in_flight, x->n_lat, x->ttft_p50,
                x->ttft_p99, x->e2e_p50, x->e2e_p99);
        if (x->slo_met >= 0) fprintf(f, "%.4f", x->slo_met);
        for (int k = 1; k < MS_REPORT_STAGE_SETS; k++)
            fprintf(f, ",%d", x->actors[k]);
        fprintf(f, ",%d\n", x->actors_total);
    }
    if (ferror(f) | (fclose(f) != 0)) return ms_errf(err, err_size, "%s: write failed", path);
    return 0;
}

/* ---- timeline.svg --------------------------------------------------------------------- */

#define S_SVG_W      1000 /* picture size, px */
#define S_SVG_H      660
#define S_SVG_LEFT   80 /* plot area margins */
#define S_SVG_RIGHT  190
#define S_LAT_TOP    50
#define S_LAT_BOTTOM 340
#define S_ACT_TOP    400
#define S_ACT_BOTTOM 610

/* A "nice" tick step (1, 2 or 5 × 10^k) for about n ticks over range. */
static double s_step(double range, int n) {
    if (!(range > 0)) return 1;
    const double raw = range / n, mag = pow(10, floor(log10(raw)));
    const double f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

typedef struct s_axes {
    double x0, x1;      /* data range on x (s) */
    double y0, y1;      /* data range on y */
    double top, bottom; /* pixel rows of the panel */
} s_axes;

static double s_px(const s_axes *a, double x) {
    const double w = S_SVG_W - S_SVG_LEFT - S_SVG_RIGHT;
    return S_SVG_LEFT + (x - a->x0) / (a->x1 - a->x0) * w;
}

static double s_py(const s_axes *a, double y) {
    if (y > a->y1) y = a->y1;
    if (y < a->y0) y = a->y0;
    return a->bottom - (y - a->y0) / (a->y1 - a->y0) * (a->bottom - a->top);
}

static void s_svg_axes(FILE *f, const s_axes *a, const char *ylabel, bool integer_y) {
    const double right = S_SVG_W - S_SVG_RIGHT;
    fprintf(f, "<rect x='%d' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#888'/>\n",
            S_SVG_LEFT, a->top, right - S_SVG_LEFT, a->bottom - a->top);
    double ys = s_step(a->y1 - a->y0, 5);
    if (integer_y && ys < 1) ys = 1;
    for (double y = a->y0; y <= a->y1 + 1e-9; y += ys) {
        const double py = s_py(a, y);
        fprintf(f, "<line x1='%d' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#eee'/>\n", S_SVG_LEFT, py,
                right, py);
        fprintf(f, "<text x='%d' y='%.1f' text-anchor='end' font-size='11'>%g</text>\n",
                S_SVG_LEFT - 6, py + 4, y);
    }
    const double xs = s_step(a->x1 - a->x0, 8);
    for (double x = a->x0; x <= a->x1 + 1e-9; x += xs) {
        const double px = s_px(a, x);
        fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#eee'/>\n", px, a->top,
                px, a->bottom);
        fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='11'>%g</text>\n", px,
                a->bottom + 15, x);
    }
    fprintf(f,
            "<text x='18' y='%.1f' font-size='12' transform='rotate(-90 18 %.1f)' "
            "text-anchor='middle'>%s</text>\n",
            (a->top + a->bottom) / 2, (a->top + a->bottom) / 2, ylabel);
}

static void s_svg_legend(FILE *f, int row, const char *color, const char *dash, const char *label) {
    const double x = S_SVG_W - S_SVG_RIGHT + 15, y = S_LAT_TOP + 10 + row * 18;
    fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s' stroke-width='2'%s/>\n",
            x, y, x + 20, y, color, dash);
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='11'>%s</text>\n", x + 26, y + 4, label);
}

int ms_report_write_svg(const char *path, const char *title, const ms_report_req *reqs, int n,
                        const ms_report_bin *bins, int n_bins, double bin_s,
                        const ms_report_slo *slo, char *err, size_t err_size) {
    FILE *f = fopen(path, "w");
    if (!f) return ms_errf(err, err_size, "%s: cannot create: %s", path, strerror(errno));
    double ymax = 0, amax = 1;
    for (int b = 0; b < n_bins; b++) {
        ymax = MS_MAX(ymax, bins[b].ttft_p99);
        amax = MS_MAX(amax, (double)bins[b].actors_total);
    }
    if (!(ymax > 0)) ymax = 1;
    ymax = ceil(ymax * 1.1 / s_step(ymax * 1.1, 5)) * s_step(ymax * 1.1, 5);
    const double x1 = MS_MAX(n_bins * bin_s, 1e-3);
    const s_axes lat = {0, x1, 0, ymax, S_LAT_TOP, S_LAT_BOTTOM};
    const s_axes act = {0, x1, 0, ceil(amax * 1.2), S_ACT_TOP, S_ACT_BOTTOM};
    fprintf(f,
            "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' "
            "font-family='sans-serif'>\n<rect width='100%%' height='100%%' fill='white'/>\n",
            S_SVG_W, S_SVG_H);
    fputs("<text x='80' y='24' font-size='14' font-weight='bold'>", f);
    for (const char *p = title ? title : ""; *p; p++) { /* XML-escape the title */
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
    fputs("</text>\n", f);
    s_svg_axes(f, &lat, "TTFT (ms), by arrival", false);
    s_svg_axes(f, &act, "actors", true);
    fprintf(f, "<text x='%.1f' y='%d' text-anchor='middle' font-size='12'>replay time (s)</text>\n",
            (S_SVG_LEFT + S_SVG_W - S_SVG_RIGHT) / 2.0, S_SVG_H - 15);
    /* every request's TTFT (errors as red marks at the bottom) */
    const int stride =
        n > MS_REPORT_SVG_DOTS ? (n + MS_REPORT_SVG_DOTS - 1) / MS_REPORT_SVG_DOTS : 1;
    for (int i = 0; i < n; i += stride) {
        const ms_report_req *r = &reqs[i];
        const double px = s_px(&lat, r->t_sched);
        if (!r->ok) {
            fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#d62728'/>\n", px,
                    lat.bottom - 6, px, lat.bottom);
            continue;
        }
        const double ttft = r->n_tokens > 0 ? s_ttft_ms(r) : s_e2e_ms(r);
        fprintf(f, "<circle cx='%.1f' cy='%.1f' r='1.6' fill='%s' fill-opacity='0.45'/>\n", px,
                s_py(&lat, ttft), r->n_images > 0 ? "#ff7f0e" : "#1f77b4");
    }
    /* per-bin P50 / P99 */
    const char *dashes[2] = {"", " stroke-dasharray='5,3'"};
    for (int q = 0; q < 2; q++) {
        fprintf(f, "<polyline fill='none' stroke='#222' stroke-width='1.5'%s points='", dashes[q]);
        for (int b = 0; b < n_bins; b++)
            if (bins[b].n_lat > 0)
                fprintf(f, "%.1f,%.1f ", s_px(&lat, bins[b].t + bin_s / 2),
                        s_py(&lat, q ? bins[b].ttft_p99 : bins[b].ttft_p50));
        fputs("'/>\n", f);
    }
    if (slo->ttft_ms <= ymax)
        fprintf(f,
                "<line x1='%d' y1='%.1f' x2='%d' y2='%.1f' stroke='#2ca02c' "
                "stroke-dasharray='2,2'/>\n",
                S_SVG_LEFT, s_py(&lat, slo->ttft_ms), S_SVG_W - S_SVG_RIGHT,
                s_py(&lat, slo->ttft_ms));
    int row = 0;
    s_svg_legend(f, row++, "#1f77b4", "", "text request");
    s_svg_legend(f, row++, "#ff7f0e", "", "image request");
    s_svg_legend(f, row++, "#d62728", "", "failed (at the bottom)");
    s_svg_legend(f, row++, "#222", "", "P50 per bin");
    s_svg_legend(f, row++, "#222", dashes[1], "P99 per bin");
    char lbl[96];
    snprintf(lbl, sizeof lbl, "TTFT target %g ms%s", slo->ttft_ms,
             slo->ttft_ms <= ymax ? "" : " (above)");
    s_svg_legend(f, row++, "#2ca02c", " stroke-dasharray='2,2'", lbl);
    /* actors per stage set, as steps */
    static const char *const colors[MS_REPORT_STAGE_SETS] = {
        "#000", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#e377c2", "#1f77b4", "#2ca02c"};
    row += 1;
    for (int k = 1; k < MS_REPORT_STAGE_SETS; k++) {
        bool any = false;
        for (int b = 0; b < n_bins && !any; b++)
            any = bins[b].actors[k] > 0;
        if (!any) continue;
        fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='2' points='", colors[k]);
        for (int b = 0; b < n_bins; b++) {
            const double y = s_py(&act, bins[b].actors[k]) - k * 0.8; /* keep equal lines apart */
            fprintf(f, "%.1f,%.1f %.1f,%.1f ", s_px(&act, bins[b].t), y,
                    s_px(&act, bins[b].t + bin_s), y);
        }
        fputs("'/>\n", f);
        char name[MS_STAGES_NAME_MAX];
        const double y = S_ACT_TOP + 10 + (row++ - 7) * 18;
        fprintf(f,
                "<line x1='%d' y1='%.1f' x2='%d' y2='%.1f' stroke='%s' stroke-width='2'/>"
                "<text x='%d' y='%.1f' font-size='11'>%s</text>\n",
                S_SVG_W - S_SVG_RIGHT + 15, y, S_SVG_W - S_SVG_RIGHT + 35, y, colors[k],
                S_SVG_W - S_SVG_RIGHT + 41, y + 4, ms_stages_name((uint32_t)k, name, sizeof name));
    }
    fputs("</svg>\n", f);
    if (ferror(f) | (fclose(f) != 0)) return ms_errf(err, err_size, "%s: write failed", path);
    return 0;
}

/* ---- the table ------------------------------------------------------------------------ */

static void s_print_stats(FILE *f, const char *lead, const char *name, const ms_latency_stats *st,
                          const char *tail) {
    fprintf(f, "%-36s%-5s %9.2f %9.2f %9.2f %9.2f %9.2f  %s\n", lead, name, st->mean, st->p50,
            st->p90, st->p99, st->max, tail);
}

void ms_report_print(FILE *f, const ms_report_summary *s) {
    fprintf(f,
            "modserve bench: %d requests in %.2f s (SLO: TTFT %g ms, TBT %g ms; "
            "latencies in ms, measured at the client)\n",
            s->g[MS_REPORT_ALL].requests, s->duration_s, s->slo.ttft_ms, s->slo.tbt_ms);
    fprintf(f, "%-8s %5s %5s %5s %7s  %-5s %9s %9s %9s %9s %9s\n", "modality", "reqs", "done",
            "err", "images", "", "mean", "p50", "p90", "p99", "max");
    for (int k = 0; k < MS_REPORT_MODALITIES; k++) {
        const ms_report_group *g = &s->g[k];
        if (g->requests == 0 && k != MS_REPORT_ALL) continue;
        char lead[64], t1[96], t2[96], t3[96], t4[96];
        snprintf(lead, sizeof lead, "%-8s %5d %5d %5d %7lld  ", s_group_names[k], g->requests,
                 g->completed, g->errors, (long long)g->images);
        snprintf(t1, sizeof t1, "SLO met %5.1f%% (TTFT %d, TPOT %d)", 100.0 * g->slo_attainment,
                 g->ttft_met, g->tpot_met);
        snprintf(t2, sizeof t2, "goodput %.3f req/s", g->goodput_rps);
        snprintf(t3, sizeof t3, "throughput %.3f req/s, %.1f tok/s out", g->throughput_rps,
                 g->output_tok_s);
        snprintf(t4, sizeof t4, "%lld of %lld tokens, %.1f tok/s in", (long long)g->tokens,
                 (long long)g->max_tokens, g->input_tok_s);
        s_print_stats(f, lead, "TTFT", &g->ttft, t1);
        s_print_stats(f, "", "TPOT", &g->tpot, t2);
        s_print_stats(f, "", "ITL", &g->itl, t3);
        s_print_stats(f, "", "E2E", &g->e2e, t4);
        if (g->errors) {
            fprintf(f, "%-36serrors:", "");
            for (int c = 0; c < MS_REPORT_N_CODES; c++)
                if (g->code_count[c]) fprintf(f, " %s %d", ms_report_codes[c], g->code_count[c]);
            fputc('\n', f);
        }
    }
    fprintf(f, "cost: %.1f instance-seconds", s->instance_s_total);
    char name[MS_STAGES_NAME_MAX];
    bool first = true;
    for (int k = 1; k < MS_REPORT_STAGE_SETS; k++)
        if (s->instance_s[k] > 0) {
            fprintf(f, "%s%s %.1f", first ? " (" : ", ",
                    ms_stages_name((uint32_t)k, name, sizeof name), s->instance_s[k]);
            first = false;
        }
    fprintf(f, "%s; by stage: encode %.1f, prefill %.1f, decode %.1f; %d registry samples",
            first ? "" : ")", s->stage_instance_s[0], s->stage_instance_s[1],
            s->stage_instance_s[2], s->n_samples);
    if (s->n_samples_failed) fprintf(f, ", %d failed", s->n_samples_failed);
    fprintf(f, "\nclient lag: max %.1f ms, mean %.2f ms (submit after the scheduled arrival)\n",
            s->max_lag_ms, s->mean_lag_ms);
}
