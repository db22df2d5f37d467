/* test_compare.c — `modserve bench --compare` without clusters: option
 * parsing, the core split on hand-worked cases, the cluster file it makes,
 * the SLO derivation, the highest rate at SLO, the ratios, and the files
 * (compare.json read back, compare.svg well formed). */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compare.h"
#include "ms_common.h"

#define T_TIMEOUT 30

static char g_err[MS_ERR_SIZE];

/* ---- parsing ---------------------------------------------------------------------------- */

Test(compare, parse_layouts, .timeout = T_TIMEOUT) {
    char names[MS_COMPARE_MAX_LAYOUTS][MS_CLUSTER_NAME_MAX];
    cr_assert_eq(ms_compare_parse_layouts("modserve,monolith", names, 3, g_err, sizeof g_err), 2);
    cr_assert_str_eq(names[0], "modserve");
    cr_assert_str_eq(names[1], "monolith");
    cr_assert_eq(ms_compare_parse_layouts("disagg", names, 3, g_err, sizeof g_err), 1);
    static const char *const bad[] = {"",        "modserve,",         ",monolith",
                                      "vllm",    "modserve,modserve", "modserve,,monolith",
                                      "Modserve"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        g_err[0] = '\0';
        cr_assert_eq(ms_compare_parse_layouts(bad[i], names, 3, g_err, sizeof g_err), -1, "%s",
                     bad[i]);
        cr_assert(g_err[0], "no message for '%s'", bad[i]);
    }
    cr_assert_eq(
        ms_compare_parse_layouts("modserve,monolith,disagg", names, 2, g_err, sizeof g_err), -1);
}

Test(compare, parse_rates, .timeout = T_TIMEOUT) {
    double r[MS_COMPARE_MAX_RATES];
    cr_assert_eq(ms_compare_parse_rates("1,2,4", r, 8, g_err, sizeof g_err), 3);
    cr_assert_float_eq(r[0], 1.0, 1e-12);
    cr_assert_float_eq(r[2], 4.0, 1e-12);
    cr_assert_eq(ms_compare_parse_rates("0.5", r, 8, g_err, sizeof g_err), 1);
    cr_assert_float_eq(r[0], 0.5, 1e-12);
    static const char *const bad[] = {"",     "0",   "-1",  "2,1", "1,1",
                                      "1,,2", "1,x", "nan", "inf", "1 ,2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(ms_compare_parse_rates(bad[i], r, 8, g_err, sizeof g_err), -1, "%s", bad[i]);
    cr_assert_eq(ms_compare_parse_rates("1,2,3", r, 2, g_err, sizeof g_err), -1);
}

/* ---- the split ---------------------------------------------------------------------------- */

static void s_expect(const ms_compare_split *s, int n, const char *const *names,
                     const int *counts) {
    cr_assert_eq(s->n_pools, n);
    int cores = 0;
    for (int i = 0; i < n; i++) {
        cr_assert_str_eq(s->pools[i].name, names[i]);
        cr_assert_eq(s->pools[i].count, counts[i], "%s: %d, expected %d", names[i],
                     s->pools[i].count, counts[i]);
        cr_assert_eq(s->pools[i].threads, MS_COMPARE_THREADS);
        cores += counts[i] * MS_COMPARE_THREADS;
    }
    cr_assert_eq(s->cores, cores);
}

Test(compare, split_hand_worked, .timeout = T_TIMEOUT) {
    ms_compare_split s;
    static const char *const mono[] = {"mono"}, *const ms[] = {"enc", "text"},
                             *const dis[] = {"enc", "pre", "dec"};
    const double unknown[3] = {0, 0, 0};
    /* the monolith: every core an E+P+D actor */
    cr_assert_eq(ms_compare_split_cores("monolith", 2, -1, unknown, true, &s, g_err, sizeof g_err),
                 0);
    s_expect(&s, 1, mono, (int[]){2});
    cr_assert_str_eq(s.pools[0].stages, "encode+prefill+decode");
    /* modserve, 2 cores: one encoder, one text instance whatever the need */
    cr_assert_eq(ms_compare_split_cores("modserve", 2, -1, unknown, true, &s, g_err, sizeof g_err),
                 0);
    s_expect(&s, 2, ms, (int[]){1, 1});
    cr_assert_str_eq(s.pools[1].stages, "prefill+decode");
    const double heavy_text[3] = {1, 20, 10};
    cr_assert_eq(
        ms_compare_split_cores("modserve", 2, -1, heavy_text, true, &s, g_err, sizeof g_err), 0);
    s_expect(&s, 2, ms, (int[]){1, 1}); /* the encoder keeps its one core */
    /* even split without a need: 4 → 2 + 2; 3 → 1 + 2 (a tie goes to the text side) */
    cr_assert_eq(ms_compare_split_cores("modserve", 4, -1, unknown, true, &s, g_err, sizeof g_err),
                 0);
    s_expect(&s, 2, ms, (int[]){2, 2});
    cr_assert_eq(ms_compare_split_cores("modserve", 3, -1, unknown, true, &s, g_err, sizeof g_err),
                 0);
    s_expect(&s, 2, ms, (int[]){1, 2});
    /* by need: quotas 8 × 1/(1+3) = 2 → 2 + 6; 8 × 3/4 = 6 → 6 + 2 */
    const double n1[3] = {1, 2, 1}, n2[3] = {3, 0.5, 0.5};
    cr_assert_eq(ms_compare_split_cores("modserve", 8, -1, n1, true, &s, g_err, sizeof g_err), 0);
    s_expect(&s, 2, ms, (int[]){2, 6});
    cr_assert_eq(ms_compare_split_cores("modserve", 8, -1, n2, true, &s, g_err, sizeof g_err), 0);
    s_expect(&s, 2, ms, (int[]){6, 2});
    /* 5 cores, need 1 : 2 → quotas 1.67, 3.33 → floors 1, 3, remainder .67 → 2 + 3 */
    const double n3[3] = {1, 1.5, 0.5};
    cr_assert_eq(ms_compare_split_cores("modserve", 5, -1, n3, true, &s, g_err, sizeof g_err), 0);
    s_expect(&s, 2, ms, (int[]){2, 3});
    /* an encode-dominated slice still leaves one text instance */
    const double n4[3] = {100, 0.1, 0};
    cr_assert_eq(ms_compare_split_cores("modserve", 4, -1, n4, true, &s, g_err, sizeof g_err), 0);
    s_expect(&s, 2, ms, (int[]){3, 1});
    /* a text-only slice gets no encoder */
    cr_assert_eq(ms_compare_split_cores("modserve", 2, -1, n1, false, &s, g_err, sizeof g_err), 0);
    s_expect(&s, 2, ms, (int[]){0, 2});
    /* fixed encoders */
    cr_assert_eq(ms_compare_split_cores("modserve", 4, 3, n1, true, &s, g_err, sizeof g_err), 0);
    s_expect(&s, 2, ms, (int[]){3, 1});
    cr_assert_eq(ms_compare_split_cores("modserve", 2, 1, n1, false, &s, g_err, sizeof g_err), 0);
    s_expect(&s, 2, ms, (int[]){1, 1}); /* asked for: an idle encoder on a text-only slice */
    /* disagg: 6 cores, need 1 : 2 : 3 → 1 encoder, then 5 as 2 : 3 */
    const double n5[3] = {1, 2, 3};
    cr_assert_eq(ms_compare_split_cores("disagg", 6, -1, n5, true, &s, g_err, sizeof g_err), 0);
    s_expect(&s, 3, dis, (int[]){1, 2, 3});
    cr_assert_str_eq(s.pools[1].stages, "prefill");
    cr_assert_str_eq(s.pools[2].stages, "decode");
    cr_assert_eq(ms_compare_split_cores("disagg", 3, -1, unknown, true, &s, g_err, sizeof g_err),
                 0);
    s_expect(&s, 3, dis, (int[]){1, 1, 1});
    cr_assert_eq(ms_compare_split_cores("disagg", 4, -1, unknown, true, &s, g_err, sizeof g_err),
                 0);
    s_expect(&s, 3, dis, (int[]){1, 1, 2});
    cr_assert_eq(ms_compare_split_cores("disagg", 2, -1, unknown, false, &s, g_err, sizeof g_err),
                 0);
    s_expect(&s, 3, dis, (int[]){0, 1, 1});
}

Test(compare, split_errors, .timeout = T_TIMEOUT) {
    ms_compare_split s;
    const double n[3] = {1, 1, 1};
    struct {
        const char *layout;
        int cores, encoders;
        bool images;
    } bad[] = {
        {"vllm", 2, -1, true},     {"monolith", 0, -1, true}, {"monolith", 65, -1, true},
        {"modserve", 1, -1, true}, {"modserve", 2, 2, true},  {"modserve", 2, 0, true},
        {"disagg", 2, -1, true},   {"disagg", 4, 3, true},    {"disagg", 1, -1, false},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        g_err[0] = '\0';
        cr_assert_eq(ms_compare_split_cores(bad[i].layout, bad[i].cores, bad[i].encoders, n,
                                            bad[i].images, &s, g_err, sizeof g_err),
                     -1, "case %zu", i);
        cr_assert(g_err[0], "case %zu: no message", i);
    }
    /* one core runs a text-only modserve slice (no encoder needed) */
    cr_assert_eq(ms_compare_split_cores("modserve", 1, -1, n, false, &s, g_err, sizeof g_err), 0);
    char buf[128];
    ms_compare_split_describe(&s, buf, sizeof buf);
    cr_assert_str_eq(buf, "0 enc (encode) + 1 text (prefill+decode)");
}

Test(compare, cluster_conf, .timeout = T_TIMEOUT) {
    ms_compare_split s;
    cr_assert_eq(ms_compare_split_cores("modserve", 3, -1, NULL, true, &s, g_err, sizeof g_err), 0);
    ms_cluster_conf c;
    cr_assert_eq(ms_compare_cluster_conf(&c, "modserve", &s, "/m/lm.gguf", "/m/mm.gguf",
                                         "/p/prof.json", 8192, 2, g_err, sizeof g_err),
                 0, "%s", g_err);
    cr_assert_str_eq(c.layout, "modserve");
    cr_assert_str_eq(c.lm, "/m/lm.gguf");
    cr_assert_str_eq(c.mmproj, "/m/mm.gguf");
    cr_assert_str_eq(c.profile, "/p/prof.json");
    cr_assert_eq(c.n_groups, 2);
    cr_assert_str_eq(c.groups[0].name, "enc");
    cr_assert_eq(c.groups[0].count, 1);
    cr_assert_eq(c.groups[0].vit_batch, 2);
    cr_assert_eq(c.groups[0].kv_tokens, 0);
    cr_assert_str_eq(c.groups[1].stages, "prefill+decode");
    cr_assert_eq(c.groups[1].count, 2);
    cr_assert_eq(c.groups[1].kv_tokens, 8192);
    cr_assert_eq(c.groups[1].vit_batch, 0);
    /* the monolith's one group gets both */
    cr_assert_eq(ms_compare_split_cores("monolith", 2, -1, NULL, true, &s, g_err, sizeof g_err), 0);
    cr_assert_eq(ms_compare_cluster_conf(&c, "monolith", &s, "/m/lm.gguf", "/m/mm.gguf", NULL, 8192,
                                         4, g_err, sizeof g_err),
                 0, "%s", g_err);
    cr_assert_eq(c.groups[0].kv_tokens, 8192);
    cr_assert_eq(c.groups[0].vit_batch, 4);
    cr_assert_str_eq(c.profile, "");
    /* what the file says parses back to the same cluster */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_eq(ms_cluster_conf_write(&c, f), 0);
    fclose(f);
    ms_cluster_conf back;
    ms_cluster_conf_default(&back);
    cr_assert_eq(ms_cluster_conf_parse(&back, text, len, "mem", g_err, sizeof g_err), 0, "%s",
                 g_err);
    cr_assert_str_eq(back.layout, "monolith");
    cr_assert_eq(back.groups[0].count, 2);
    free(text);
    /* no model; an encoder without an mmproj */
    cr_assert_eq(
        ms_compare_cluster_conf(&c, "monolith", &s, "", NULL, NULL, 0, 0, g_err, sizeof g_err), -1);
    cr_assert_eq(ms_compare_cluster_conf(&c, "monolith", &s, "/m/lm.gguf", NULL, NULL, 0, 0, g_err,
                                         sizeof g_err),
                 -1);
}

/* ---- results ------------------------------------------------------------------------------ */

Test(compare, derive_slo, .timeout = T_TIMEOUT) {
    ms_compare_slo s;
    ms_compare_derive_slo(80.2, 1.95, 5, &s);
    cr_assert(s.derived);
    cr_assert_float_eq(s.ttft_ms, 401, 1e-9); /* 401.0 (not 402 from rounding noise) */
    cr_assert_float_eq(s.tbt_ms, 10, 1e-9);   /* ⌈9.75⌉ */
    ms_compare_derive_slo(100, 2, 5, &s);     /* exact products stay */
    cr_assert_float_eq(s.ttft_ms, 500, 1e-9);
    cr_assert_float_eq(s.tbt_ms, 10, 1e-9);
    ms_compare_derive_slo(0.01, 0.0, 3, &s); /* at least 1 ms */
    cr_assert_float_eq(s.ttft_ms, 1, 1e-9);
    cr_assert_float_eq(s.tbt_ms, 1, 1e-9);
}

static ms_compare_cell *s_cell(ms_compare_result *r, const char *layout, double rate,
                               bool autoscale, double attainment, double goodput) {
    ms_compare_cell *c = &r->cells[r->n_cells++];
    memset(c, 0, sizeof *c);
    snprintf(c->layout, sizeof c->layout, "%s", layout);
    snprintf(c->label, sizeof c->label, "%s%s-x%g", layout, autoscale ? "+autoscale" : "", rate);
    c->rate = rate;
    c->autoscale = autoscale;
    c->ran = true;
    ms_report_group *g = &c->sum.g[MS_REPORT_ALL];
    g->requests = 100;
    g->slo_met = (int)lround(attainment * 100);
    g->completed = 100;
    g->slo_attainment = attainment;
    g->goodput_rps = goodput;
    return c;
}

Test(compare, max_rate, .timeout = T_TIMEOUT) {
    ms_compare_result *r = calloc(1, sizeof *r);
    s_cell(r, "modserve", 1, false, 1.0, 1);
    s_cell(r, "monolith", 1, false, 0.995, 1);
    s_cell(r, "modserve", 2, false, 0.99, 2);
    s_cell(r, "monolith", 2, false, 0.90, 1.8);
    s_cell(r, "modserve", 4, false, 0.80, 3);
    s_cell(r, "monolith", 4, false, 0.999, 4); /* met again above a miss: does not count */
    s_cell(r, "modserve", 1, true, 0.5, 0.5);
    cr_assert_float_eq(ms_compare_max_rate(r, "modserve", false, 0.99), 2, 1e-12);
    cr_assert_float_eq(ms_compare_max_rate(r, "monolith", false, 0.99), 1, 1e-12);
    cr_assert_float_eq(ms_compare_max_rate(r, "modserve", true, 0.99), 0, 1e-12);
    cr_assert_float_eq(ms_compare_max_rate(r, "disagg", false, 0.99), 0, 1e-12);
    /* a run that did not run is no evidence */
    r->cells[2].ran = false;
    cr_assert_float_eq(ms_compare_max_rate(r, "modserve", false, 0.99), 1, 1e-12);
    cr_assert_null(ms_compare_find(r, "modserve", 2, false));
    cr_assert_not_null(ms_compare_find(r, "modserve", 4, false));
    free(r);
}

Test(compare, ratios, .timeout = T_TIMEOUT) {
    ms_compare_result *r = calloc(1, sizeof *r);
    ms_compare_cell *a = s_cell(r, "modserve", 1, false, 0.98, 3.0);
    ms_compare_cell *b = s_cell(r, "monolith", 1, false, 0.49, 1.5);
    a->sum.instance_s_total = 300;
    b->sum.instance_s_total = 300;
    a->sum.g[MS_REPORT_ALL].ttft = (ms_latency_stats){.n = 98, .p99 = 400};
    b->sum.g[MS_REPORT_ALL].ttft = (ms_latency_stats){.n = 49, .p99 = 1000};
    a->sum.g[MS_REPORT_TEXT].ttft = (ms_latency_stats){.n = 20, .p99 = 100};
    b->sum.g[MS_REPORT_TEXT].ttft = (ms_latency_stats){.n = 20, .p99 = 400};
    /* no image request completed on b: no ratio */
    a->sum.g[MS_REPORT_IMAGE].ttft = (ms_latency_stats){.n = 70, .p99 = 500};
    ms_compare_ratios q;
    ms_compare_ratios_of(a, b, &q);
    cr_assert_float_eq(q.goodput, 2.0, 1e-12);
    cr_assert_float_eq(q.ttft_p99_all, 0.4, 1e-12);
    cr_assert_float_eq(q.ttft_p99_text, 0.25, 1e-12);
    cr_assert(isnan(q.ttft_p99_image));
    cr_assert_float_eq(q.instance_s, 1.0, 1e-12);
    /* cost per 1k good: 300 × 1000 / 98 vs 300 × 1000 / 49 */
    cr_assert_float_eq(ms_compare_cost_per_1k_good(a), 300000.0 / 98, 1e-9);
    cr_assert_float_eq(q.cost_per_good, 0.5, 1e-12);
    cr_assert_float_eq(q.attainment_a, 0.98, 1e-12);
    /* a missing side: all NaN */
    ms_compare_ratios_of(a, NULL, &q);
    cr_assert(isnan(q.goodput) && isnan(q.cost_per_good));
    b->sum.g[MS_REPORT_ALL].slo_met = 0;
    cr_assert(isinf(ms_compare_cost_per_1k_good(b)));
    ms_compare_ratios_of(a, b, &q);
    cr_assert(isnan(q.cost_per_good));
    free(r);
}

/* ---- files -------------------------------------------------------------------------------- */

static char *s_slurp(const char *path) {
    size_t len = 0;
    char err[MS_ERR_SIZE];
    uint8_t *b = ms_read_file(path, 1 << 24, &len, err, sizeof err);
    cr_assert_not_null(b, "%s", err);
    char *s = realloc(b, len + 1);
    s[len] = '\0';
    return s;
}

Test(compare, json_and_svg, .timeout = T_TIMEOUT) {
    ms_compare_result *r = calloc(1, sizeof *r);
    snprintf(r->baseline, sizeof r->baseline, "monolith");
    r->cores = 2;
    ms_compare_derive_slo(80, 2, 5, &r->slo);
    r->slo.calib_requests = 20;
    for (int k = 0; k < 2; k++) {
        const double rate = k ? 2 : 1;
        ms_compare_cell *a = s_cell(r, "modserve", rate, false, 1.0 - 0.01 * k, 3.0 * rate);
        ms_compare_cell *b = s_cell(r, "monolith", rate, false, 0.99 - 0.2 * k, 2.0 * rate);
        ms_compare_split_cores("modserve", 2, -1, NULL, true, &a->split, g_err, sizeof g_err);
        ms_compare_split_cores("monolith", 2, -1, NULL, true, &b->split, g_err, sizeof g_err);
        for (int j = 0; j < 2; j++) {
            ms_compare_cell *c = j ? b : a;
            c->sum.instance_s_total = 100 / rate;
            c->sum.g[MS_REPORT_ALL].ttft = (ms_latency_stats){.n = 99, .p50 = 50, .p99 = 300};
            c->n_bins = 3;
            c->bin_s = 1;
            c->bins = calloc(3, sizeof *c->bins);
            for (int bi = 0; bi < 3; bi++)
                c->bins[bi] =
                    (ms_report_bin){.t = bi, .n_lat = 2, .ttft_p99 = 100.0 * (bi + 1 + j)};
        }
    }
    ms_compare_cell *skipped = &r->cells[r->n_cells++];
    memset(skipped, 0, sizeof *skipped);
    snprintf(skipped->layout, sizeof skipped->layout, "modserve");
    snprintf(skipped->label, sizeof skipped->label, "modserve+autoscale-x1");
    skipped->rate = 1;
    skipped->autoscale = true;
    snprintf(skipped->error, sizeof skipped->error, "modserve-autoscaler not found");
    char dir[] = "/tmp/ms-test-compare-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/compare.json", dir);
    cr_assert_eq(
        ms_compare_write_json(path, r, "{\"trace\":\"t.csv\",\"rows\":5}", g_err, sizeof g_err), 0,
        "%s", g_err);
    char *text = s_slurp(path);
    cJSON *j = cJSON_Parse(text);
    cr_assert_not_null(j, "compare.json does not parse");
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workload"), "trace")->valuestring,
                     "t.csv");
    cr_assert_eq(cJSON_GetObjectItem(j, "cores")->valueint, 2);
    cJSON *slo = cJSON_GetObjectItem(j, "slo");
    cr_assert_float_eq(cJSON_GetObjectItem(slo, "ttft_ms")->valuedouble, 400, 1e-9);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(slo, "derived")));
    cJSON *runs = cJSON_GetObjectItem(j, "runs");
    cr_assert_eq(cJSON_GetArraySize(runs), 5);
    cJSON *r0 = cJSON_GetArrayItem(runs, 0);
    cr_assert_str_eq(cJSON_GetObjectItem(r0, "label")->valuestring, "modserve-x1");
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(r0, "split")), 2);
    cr_assert_float_eq(
        cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(r0, "modalities"), "all"),
                            "goodput_rps")
            ->valuedouble,
        3.0, 1e-9);
    cJSON *r4 = cJSON_GetArrayItem(runs, 4);
    cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(r4, "ran")));
    cr_assert_str_eq(cJSON_GetObjectItem(r4, "error")->valuestring,
                     "modserve-autoscaler not found");
    /* ratios: modserve / monolith per rate (2), goodput 1.5 */
    cJSON *ratios = cJSON_GetObjectItem(j, "ratios");
    cr_assert_eq(cJSON_GetArraySize(ratios), 2);
    cr_assert_float_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(ratios, 0), "goodput")->valuedouble,
                       1.5, 1e-9);
    /* highest rate at SLO: modserve x2 (0.99 meets the target), monolith x1 (0.79 at x2) */
    cJSON *mx = cJSON_GetObjectItem(j, "max_rate_at_slo");
    cr_assert_float_eq(cJSON_GetObjectItem(mx, "modserve")->valuedouble, 2, 1e-9);
    cr_assert_float_eq(cJSON_GetObjectItem(mx, "monolith")->valuedouble, 1, 1e-9);
    cr_assert_float_eq(
        cJSON_GetObjectItem(cJSON_GetObjectItem(j, "max_rate_at_slo_ratio"), "modserve")
            ->valuedouble,
        2, 1e-9);
    cJSON_Delete(j);
    free(text);
    snprintf(path, sizeof path, "%s/compare.svg", dir);
    cr_assert_eq(ms_compare_write_svg(path, "t <&> 'q'", r, g_err, sizeof g_err), 0, "%s", g_err);
    text = s_slurp(path);
    cr_assert(strncmp(text, "<svg", 4) == 0);
    cr_assert_not_null(strstr(text, "</svg>\n"));
    cr_assert_not_null(strstr(text, "t &lt;&amp;&gt; &apos;q&apos;"));
    cr_assert_null(strstr(text, "nan"));
    cr_assert_null(strstr(text, "inf"));
    /* 4 TTFT lines + 2 lines per lower panel, as polylines */
    int n = 0;
    for (const char *p = text; (p = strstr(p, "<polyline")); p++)
        n++;
    cr_assert_eq(n, 8);
    free(text);
    /* the printed table names both layouts and the ratio line */
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    ms_compare_print(f, r);
    fclose(f);
    cr_assert_not_null(strstr(out, "modserve / monolith: goodput 1.50x"), "%s", out);
    cr_assert_not_null(strstr(out, "not run: modserve-autoscaler not found"), "%s", out);
    cr_assert_not_null(strstr(out, "modserve x2 (2.00x)"), "%s", out);
    free(out);
    ms_compare_result_fini(r);
    free(r);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}
