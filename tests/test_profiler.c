/* test_profiler.c — the offline profiler (broker/profiler.h): line fitting,
 * the SLO arithmetic on hand-worked curves (batch caps, capacities, the SLO
 * check, agreement with the broker's decode cap), the "measured" section of
 * the profile file (round trip and strict reading), a real measurement on
 * the tiny models, and modserve-profile as a process. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ms_common.h"
#include "ms_test.h"
#include "policy.h"
#include "profile.h"
#include "profiler.h"

static void s_points(ms_profile_curve *c, const double *xy, int n) {
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < n; i++)
        c->points[i] = (ms_profile_point){xy[2 * i], xy[2 * i + 1]};
    c->n_points = n;
    ms_profiler_fit(c);
}

Test(profiler, fit_lines, .timeout = 10) {
    ms_profile_curve c;
    const double line[] = {1, 50, 2, 90, 4, 170, 8, 330};
    s_points(&c, line, 4);
    cr_assert_float_eq(c.base_ms, 10.0, 1e-9);
    cr_assert_float_eq(c.per_unit_ms, 40.0, 1e-9);
    cr_assert_float_eq(ms_profile_curve_eval(&c, 3), 130.0, 1e-9);
    /* noisy but increasing */
    const double noisy[] = {1, 11, 2, 19, 3, 31, 4, 39};
    s_points(&c, noisy, 4);
    cr_assert_float_eq(c.per_unit_ms, 9.6, 1e-9);
    cr_assert_float_eq(c.base_ms, 1.0, 1e-9);
    /* a negative intercept → the line through the origin */
    const double neg[] = {10, 5, 20, 15, 30, 25};
    s_points(&c, neg, 3);
    cr_assert_float_eq(c.base_ms, 0.0, 0);
    cr_assert_float_eq(c.per_unit_ms, (10 * 5 + 20 * 15 + 30 * 25) / 1400.0, 1e-12);
    /* a negative slope → flat at the mean */
    const double down[] = {1, 9, 2, 7, 3, 5};
    s_points(&c, down, 3);
    cr_assert_float_eq(c.per_unit_ms, 0.0, 0);
    cr_assert_float_eq(c.base_ms, 7.0, 1e-12);
    /* one point: through the origin; none: zero */
    const double one[] = {4, 10};
    s_points(&c, one, 1);
    cr_assert_float_eq(c.per_unit_ms, 2.5, 1e-12);
    cr_assert_float_eq(c.base_ms, 0.0, 0);
    s_points(&c, one, 0);
    cr_assert_float_eq(c.per_unit_ms + c.base_ms, 0.0, 0);
}

/* A measured profile with exact lines:
 *   vit      L(b) = 10 + 40 b ms, 100 image tokens per image, no preprocess
 *   prefill  L(n) = 5 + 0.1 n ms, measured up to 800 tokens
 *   decode   step(n) = 5 + 0.5 n ms, measured up to 64 sequences */
static void s_hand_profile(ms_profile *p) {
    ms_profile_default(p);
    ms_profile_measured *m = &p->measured;
    m->present = true;
    snprintf(m->backend, sizeof(m->backend), "cpu");
    m->threads = 2;
    m->image_tokens = 100;
    m->image_size = 224;
    const double vit[] = {1, 50, 2, 90, 4, 170};
    const double pf[] = {100, 15, 200, 25, 400, 45, 800, 85};
    const double dc[] = {1, 5.5, 8, 9, 32, 21, 64, 37};
    s_points(&m->curve[MS_CURVE_VIT], vit, 3);
    s_points(&m->curve[MS_CURVE_PREFILL], pf, 4);
    s_points(&m->curve[MS_CURVE_DECODE], dc, 4);
    m->curve[MS_CURVE_DECODE].at = 256;
}

Test(profiler, derive_hand_worked, .timeout = 10) {
    ms_profile p;
    s_hand_profile(&p);
    ms_profiler_slo slo;
    ms_profiler_slo_default(&slo);
    slo.ttft_ms = 1000;
    slo.tbt_ms = 100;
    slo.utilization = 0.8;
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(ms_profiler_derive(&p, &slo, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(p.ttft_ms, 1000);
    cr_assert_eq(p.tbt_ms, 100);

    /* encode: budget 1000 * 0.5 = 500, half for the wait = 250:
     * 10 + 40 b <= 250 → b <= 6 (within 2 x 4 measured). Throughput b / L(b):
     * 6/250 = 0.0240; 3/130 = 0.02308 >= 0.95 x 0.024 = 0.0228 > 2/90 → cap 3.
     * Capacity 3 x 100 tokens / 130 ms x 1000 x 0.8 = 1846.15 image tokens/s. */
    const ms_stage_profile *e = &p.stage[MS_STAGE_ENCODE];
    cr_assert_eq(e->max_batch, 3);
    cr_assert_float_eq(e->base_ms, 10.0, 1e-9);
    cr_assert_float_eq(e->per_unit_ms, 0.4, 1e-9, "40 ms per image / 100 tokens");
    cr_assert_float_eq(e->capacity_per_s, 300.0 / 130.0 * 800.0, 1e-6);
    cr_assert_float_eq(e->slo_share, 0.5, 0);
    cr_assert_float_eq(p.measured.slo_check[MS_STAGE_ENCODE].budget_ms, 500.0, 1e-9);
    cr_assert_float_eq(p.measured.slo_check[MS_STAGE_ENCODE].batch_ms, 130.0, 1e-9);
    cr_assert(p.measured.slo_check[MS_STAGE_ENCODE].met);

    /* prefill: 5 + 0.1 n <= 250 → n <= 2450, but the line is trusted to
     * 2 x 800 = 1600 tokens: cap 1600, L = 165 ms, capacity
     * 1600 / 165 x 1000 x 0.8 = 7757.6 prompt tokens/s */
    const ms_stage_profile *f = &p.stage[MS_STAGE_PREFILL];
    cr_assert_eq(f->max_batch, 1600);
    cr_assert_float_eq(f->per_unit_ms, 0.1, 1e-9);
    cr_assert_float_eq(f->capacity_per_s, 1600.0 / 165.0 * 800.0, 1e-6);

    /* decode: 5 + 0.5 n <= 100 → n <= 190, trusted to 128: cap 128, step 69 ms,
     * capacity 128 / 69 x 1000 x 0.8 = 1484.1 generated tokens/s */
    const ms_stage_profile *d = &p.stage[MS_STAGE_DECODE];
    cr_assert_eq(d->max_batch, 128);
    cr_assert_float_eq(d->capacity_per_s, 128.0 / 69.0 * 800.0, 1e-6);
    /* the broker's own decode admission agrees with the cap */
    cr_assert_eq(ms_policy_decode_cap(&p, 100), 128);
    cr_assert_eq(ms_policy_decode_cap(&p, 40), 70, "5 + 0.5 n <= 40 → 70");

    /* the latency model the broker uses for slack is the measured one */
    const int32_t toks[1] = {100};
    ms_req_view rq = {
        .modality = MS_MODALITY_IMAGE, .n_images = 1, .image_tokens = toks, .prompt_tokens = 150};
    cr_assert_float_eq(ms_policy_service_ms(&p, MS_STAGE_ENCODE, &rq), 50.0 + 20.0, 1e-9);

    /* tighter SLO: TTFT 200 → encode limit 50 → one image (50 ms) just fits;
     * TBT 10 → 5 + 0.5 n <= 10 → 10 sequences */
    slo.ttft_ms = 200;
    slo.tbt_ms = 10;
    cr_assert_eq(ms_profiler_derive(&p, &slo, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(p.stage[MS_STAGE_ENCODE].max_batch, 1);
    cr_assert(p.measured.slo_check[MS_STAGE_ENCODE].met);
    cr_assert_eq(p.stage[MS_STAGE_DECODE].max_batch, 10);
    /* out of reach: TTFT 50 → limit 12.5 < 50 ms for one image */
    slo.ttft_ms = 50;
    cr_assert_eq(ms_profiler_derive(&p, &slo, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(p.stage[MS_STAGE_ENCODE].max_batch, 1);
    cr_assert_not(p.measured.slo_check[MS_STAGE_ENCODE].met);
    cr_assert(p.stage[MS_STAGE_ENCODE].capacity_per_s > 0, "still reported, flagged unmet");

    /* bad targets */
    slo.ttft_ms = 0;
    cr_assert_eq(ms_profiler_derive(&p, &slo, err, sizeof(err)), -1);
    cr_assert(strstr(err, "ttft_ms"), "%s", err);
    ms_profiler_slo_default(&slo);
    slo.slo_share[MS_STAGE_PREFILL] = 0;
    cr_assert_eq(ms_profiler_derive(&p, &slo, err, sizeof(err)), -1);
    cr_assert(strstr(err, "prefill share"), "%s", err);
    ms_profile none;
    ms_profile_default(&none);
    ms_profiler_slo_default(&slo);
    cr_assert_eq(ms_profiler_derive(&none, &slo, err, sizeof(err)), -1);
    cr_assert(strstr(err, "measured"), "%s", err);
}

Test(profiler, derive_uses_the_slo_region_of_a_bending_curve, .timeout = 10) {
    /* prefill bends up (attention): 1 ms/token to 400 tokens, then steeper */
    ms_profile p;
    s_hand_profile(&p);
    const double bend[] = {100, 100, 200, 200, 400, 400, 800, 1400, 1600, 5000};
    s_points(&p.measured.curve[MS_CURVE_PREFILL], bend, 5);
    ms_profiler_slo slo;
    ms_profiler_slo_default(&slo);
    slo.ttft_ms = 1000; /* prefill limit 250 ms */
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(ms_profiler_derive(&p, &slo, err, sizeof(err)), 0, "%s", err);
    /* the line through 100..400 (400 brackets the limit) finds the measured
     * 250 tokens in 250 ms; the all-points line would be far steeper */
    const double all_slope = p.measured.curve[MS_CURVE_PREFILL].per_unit_ms;
    cr_assert_lt(p.stage[MS_STAGE_PREFILL].per_unit_ms, all_slope);
    const int64_t cap = p.stage[MS_STAGE_PREFILL].max_batch;
    cr_assert(cap >= 150 && cap <= 260, "cap %lld", (long long)cap);
    const double batch_ms = p.measured.slo_check[MS_STAGE_PREFILL].batch_ms;
    cr_assert_leq(batch_ms, 250.0 + 1e-9);
}

Test(profiler, measured_section_round_trip_and_strict, .timeout = 10) {
    ms_profile p, q;
    s_hand_profile(&p);
    ms_profiler_slo slo;
    ms_profiler_slo_default(&slo);
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(ms_profiler_derive(&p, &slo, err, sizeof(err)), 0, "%s", err);
    p.measured.feature_bytes_per_image = 196 * 768 * 4;
    p.measured.kv_bytes_per_token = 32768;
    p.measured.ref_mpixels = 0.786432;
    char *text = ms_profile_to_json(&p, err, sizeof(err));
    cr_assert_not_null(text, "%s", err);
    cr_assert(strstr(text, "\"measured\""));
    cr_assert(strstr(text, "\"unit\":\t\"tokens\"") || strstr(text, "\"unit\": \"tokens\""), "%s",
              text);
    cr_assert_eq(ms_profile_parse(text, strlen(text), &q, err, sizeof(err)), 0, "%s", err);
    free(text);
    cr_assert(q.measured.present);
    cr_assert_str_eq(q.measured.backend, "cpu");
    cr_assert_eq(q.measured.image_tokens, 100);
    cr_assert_eq(q.measured.kv_bytes_per_token, 32768);
    cr_assert_eq(q.measured.feature_bytes_per_image, 196 * 768 * 4);
    cr_assert_float_eq(q.measured.utilization, slo.utilization, 0);
    for (int k = 0; k < MS_CURVE_COUNT; k++) {
        const ms_profile_curve *a = &p.measured.curve[k], *b = &q.measured.curve[k];
        cr_assert_eq(a->n_points, b->n_points, "%s", ms_curve_name((ms_curve)k));
        for (int i = 0; i < a->n_points; i++) {
            cr_assert_float_eq(a->points[i].x, b->points[i].x, 0);
            cr_assert_float_eq(a->points[i].ms, b->points[i].ms, 0);
        }
        cr_assert_float_eq(a->base_ms, b->base_ms, 1e-12);
        cr_assert_float_eq(a->per_unit_ms, b->per_unit_ms, 1e-12);
        cr_assert_float_eq(a->at, b->at, 0);
    }
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        cr_assert_eq(p.stage[s].max_batch, q.stage[s].max_batch);
        cr_assert_float_eq(p.stage[s].capacity_per_s, q.stage[s].capacity_per_s, 1e-9);
        cr_assert_eq(p.measured.slo_check[s].met, q.measured.slo_check[s].met);
    }
    /* re-deriving from the file gives the same numbers */
    cr_assert_eq(ms_profiler_derive(&q, &slo, err, sizeof(err)), 0, "%s", err);
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        cr_assert_eq(p.stage[s].max_batch, q.stage[s].max_batch);

    /* a profile without the section stays without it */
    ms_profile d;
    ms_profile_default(&d);
    text = ms_profile_to_json(&d, err, sizeof(err));
    cr_assert_not_null(text);
    cr_assert_null(strstr(text, "measured"));
    free(text);

    /* strict reading */
    struct {
        const char *json, *frag;
    } bad[] = {
        {"{\"measured\": {\"curves\": {\"prefil\": {}}}}", "measured.curves.prefil: unknown key"},
        {"{\"measured\": {\"curves\": {\"prefill\": {\"unit\": \"images\"}}}}",
         "measured.curves.prefill.unit"},
        {"{\"measured\": {\"curves\": {\"vit\": {\"points\": [[1]]}}}}",
         "measured.curves.vit.points[0]"},
        {"{\"measured\": {\"curves\": {\"vit\": {\"points\": [[1, -2]]}}}}", "negative"},
        {"{\"measured\": {\"curves\": {\"vit\": {\"points\": 3}}}}", "array"},
        {"{\"measured\": {\"threads\": 1.5}}", "measured.threads"},
        {"{\"measured\": {\"utilization\": 2}}", "measured.utilization"},
        {"{\"measured\": {\"slo_check\": {\"encode\": {\"met\": 1}}}}", "met"},
        {"{\"measured\": {\"slo_check\": {\"encoder\": {}}}}", "unknown key"},
        {"{\"measured\": {\"gpu\": 1}}", "measured.gpu: unknown key"},
        {"{\"measured\": []}", "measured: must be an object"},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        cr_assert_eq(ms_profile_parse(bad[i].json, strlen(bad[i].json), &q, err, sizeof(err)), -1,
                     "accepted %s", bad[i].json);
        cr_assert(strstr(err, bad[i].frag), "\"%s\" lacks \"%s\"", err, bad[i].frag);
    }
    /* too many points */
    char big[4096];
    size_t n =
        (size_t)snprintf(big, sizeof(big), "{\"measured\": {\"curves\": {\"vit\": {\"points\": [");
    for (int i = 0; i <= MS_PROFILE_MAX_POINTS; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "%s[%d, 1]", i ? ", " : "", i);
    snprintf(big + n, sizeof(big) - n, "]}}}}");
    cr_assert_eq(ms_profile_parse(big, strlen(big), &q, err, sizeof(err)), -1);
    cr_assert(strstr(err, "at most"), "%s", err);
}

static void s_quiet(const char *line, void *user) {
    (void)line;
    (*(int *)user)++;
}

Test(profiler, measures_the_tiny_models, .timeout = 120) {
    ms_profiler_opts o;
    ms_profiler_opts_default(&o);
    char lm[1024], mm[1024], img[1024];
    snprintf(lm, sizeof(lm), "%s", ms_test_path(ms_test_models_dir(), "tiny-lm.gguf"));
    snprintf(mm, sizeof(mm), "%s", ms_test_path(ms_test_models_dir(), "tiny-mmproj.gguf"));
    snprintf(img, sizeof(img), "%s",
             ms_test_path(ms_test_source_dir(), "tests/data/images/sample.jpg"));
    o.lm_path = lm;
    o.mmproj_path = mm;
    o.image_path = img;
    o.quick = true;
    o.n_threads = 1;
    int lines = 0;
    o.progress = s_quiet;
    o.progress_user = &lines;
    ms_profile p;
    char err[MS_ERR_SIZE] = "";
    const double t0 = ms_now_s();
    cr_assert_eq(ms_profiler_measure(&o, &p, err, sizeof(err)), 0, "%s", err);
    cr_assert_lt(ms_now_s() - t0, 60.0, "--quick on the tiny model must be fast");
    cr_assert_gt(lines, 10, "progress is reported");
    const ms_profile_measured *m = &p.measured;
    cr_assert(m->present);
    cr_assert_str_eq(p.model, "tiny-lm.gguf");
    cr_assert(strstr(p.hardware, "1 threads"), "%s", p.hardware);
    cr_assert_eq(m->threads, 1);
    cr_assert_gt(m->image_tokens, 0);
    cr_assert_gt(m->image_size, 0);
    cr_assert_eq(m->feature_bytes_per_image, (int64_t)m->image_tokens * 32 * 4,
                 "tiny ViT width 32");
    cr_assert_gt(m->kv_bytes_per_token, 0);
    cr_assert_gt(m->ref_mpixels, 0);
    for (int k = 0; k < MS_CURVE_COUNT; k++) {
        const ms_profile_curve *c = &m->curve[k];
        cr_assert_geq(c->n_points, 2, "%s measured", ms_curve_name((ms_curve)k));
        for (int i = 0; i < c->n_points; i++) {
            cr_assert(c->points[i].ms >= 0 && isfinite(c->points[i].ms));
            if (i)
                cr_assert_gt(c->points[i].x, c->points[i - 1].x, "%s x ascending",
                             ms_curve_name((ms_curve)k));
        }
    }
    /* every prefill point stays inside the tiny model's context */
    const ms_profile_curve *pf = &m->curve[MS_CURVE_PREFILL];
    cr_assert_lt(pf->points[pf->n_points - 1].x, (double)m->n_ctx);
    cr_assert_eq(m->curve[MS_CURVE_DECODE].at, MS_MIN(MS_PROFILER_DECODE_CTX_REF, m->n_ctx / 2));
    /* bigger work takes longer where the difference is far above timer noise */
    cr_assert_gt(pf->points[pf->n_points - 1].ms, pf->points[0].ms);
    const ms_profile_curve *mc = &m->curve[MS_CURVE_TRANSFER_MEMCPY];
    cr_assert_gt(mc->points[mc->n_points - 1].ms, mc->points[0].ms);

    ms_profiler_slo slo;
    ms_profiler_slo_default(&slo);
    cr_assert_eq(ms_profiler_derive(&p, &slo, err, sizeof(err)), 0, "%s", err);
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        cr_assert_gt(p.stage[s].capacity_per_s, 0, "%s", ms_stage_name((ms_stage)s));
        cr_assert_geq(p.stage[s].max_batch, 1);
        cr_assert(p.measured.slo_check[s].met, "the tiny model meets a 2 s TTFT");
    }
    cr_assert_eq(ms_profile_validate(&p, err, sizeof(err)), 0, "%s", err);

    /* text only: no encode curves, encode capacity unknown */
    o.mmproj_path = NULL;
    o.transfer_zmq = false;
    cr_assert_eq(ms_profiler_measure(&o, &p, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(p.measured.curve[MS_CURVE_VIT].n_points, 0);
    cr_assert_eq(p.measured.curve[MS_CURVE_TRANSFER_TCP].n_points, 0);
    cr_assert_eq(ms_profiler_derive(&p, &slo, err, sizeof(err)), 0, "%s", err);
    cr_assert_float_eq(p.stage[MS_STAGE_ENCODE].capacity_per_s, 0, 0);
    cr_assert_gt(p.stage[MS_STAGE_PREFILL].capacity_per_s, 0);

    /* a missing model is an error naming it */
    o.lm_path = "/nonexistent/lm.gguf";
    cr_assert_eq(ms_profiler_measure(&o, &p, err, sizeof(err)), -1);
    cr_assert(strstr(err, "/nonexistent/lm.gguf"), "%s", err);
}

/* Runs modserve-profile with args (NULL-terminated); returns the exit status
 * and the stderr text (owned) in *errtext. */
static int s_run_tool(const char *const *args, char **errtext) {
    char bin[1024];
    snprintf(bin, sizeof(bin), "%s", ms_test_path(ms_test_bin_dir(), "modserve-profile"));
    cr_assert_eq(access(bin, X_OK), 0, "%s is not built", bin);
    char err_name[] = "/tmp/ms_prof_err_XXXXXX";
    int fd = mkstemp(err_name);
    cr_assert(fd >= 0);
    unlink(err_name);
    const char *argv[40];
    int argc = 0;
    argv[argc++] = bin;
    for (int i = 0; args[i] && argc < 39; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        dup2(fd, 2);
        int nul = open("/dev/null", 1);
        if (nul >= 0) dup2(nul, 1);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    lseek(fd, 0, SEEK_SET);
    char *buf = ms_xcalloc(1, 1 << 16);
    ssize_t got = read(fd, buf, (1 << 16) - 1);
    (void)got;
    close(fd);
    *errtext = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

Test(profiler, the_tool, .timeout = 120) {
    char lm[1024], mm[1024];
    snprintf(lm, sizeof(lm), "%s", ms_test_path(ms_test_models_dir(), "tiny-lm.gguf"));
    snprintf(mm, sizeof(mm), "%s", ms_test_path(ms_test_models_dir(), "tiny-mmproj.gguf"));
    char dir[] = "/tmp/ms-profiler-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char out[512], out2[512];
    snprintf(out, sizeof(out), "%s/p.json", dir);
    snprintf(out2, sizeof(out2), "%s/q.json", dir);
    char *errtext = NULL;
    const char *run[] = {"-m",        lm,     "--mmproj", mm,   "--quick", "-t", "1",
                         "--ttft-ms", "1500", "--tbt-ms", "80", "-o",      out,  NULL};
    cr_assert_eq(s_run_tool(run, &errtext), 0, "%s", errtext);
    cr_assert(strstr(errtext, "[profile] prefill"), "progress on stderr: %s", errtext);
    cr_assert(strstr(errtext, "[profile] wrote"), "%s", errtext);
    free(errtext);
    ms_profile p;
    bool used_defaults = true;
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(ms_profile_load(out, &p, &used_defaults, err, sizeof(err)), 0, "%s", err);
    cr_assert_not(used_defaults);
    cr_assert(p.measured.present);
    cr_assert_eq(p.ttft_ms, 1500);
    cr_assert_eq(p.tbt_ms, 80);
    cr_assert_gt(p.stage[MS_STAGE_ENCODE].capacity_per_s, 0);
    cr_assert_float_eq(p.measured.slo_check[MS_STAGE_DECODE].budget_ms, 80.0, 1e-9);

    /* --from re-derives for another SLO, measuring nothing */
    const char *again[] = {"--from", out, "--tbt-ms", "1", "--util", "0.5", "-o", out2, NULL};
    cr_assert_eq(s_run_tool(again, &errtext), 0, "%s", errtext);
    cr_assert_null(strstr(errtext, "[profile] prefill"), "nothing measured: %s", errtext);
    free(errtext);
    ms_profile q;
    cr_assert_eq(ms_profile_load(out2, &q, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(q.tbt_ms, 1);
    cr_assert_leq(q.stage[MS_STAGE_DECODE].max_batch, p.stage[MS_STAGE_DECODE].max_batch);
    cr_assert_float_eq(q.measured.utilization, 0.5, 0);
    cr_assert_float_eq(q.stage[MS_STAGE_PREFILL].per_unit_ms, p.stage[MS_STAGE_PREFILL].per_unit_ms,
                       1e-12);
    cr_assert_eq(q.measured.curve[MS_CURVE_DECODE].n_points,
                 p.measured.curve[MS_CURVE_DECODE].n_points);

    /* bad usage */
    const char *noout[] = {"-m", lm, NULL};
    cr_assert_eq(s_run_tool(noout, &errtext), 2);
    cr_assert(strstr(errtext, "-o"), "%s", errtext);
    free(errtext);
    const char *badttft[] = {"-m", lm, "--ttft-ms", "soon", "-o", out2, NULL};
    cr_assert_eq(s_run_tool(badttft, &errtext), 2);
    cr_assert(strstr(errtext, "--ttft-ms"), "%s", errtext);
    free(errtext);
    const char *badshare[] = {"--from", out, "--share-encode", "1.5", "-o", out2, NULL};
    cr_assert_eq(s_run_tool(badshare, &errtext), 2);
    free(errtext);
    const char *nomodel[] = {"-m", "/nonexistent.gguf", "-o", out2, NULL};
    cr_assert_eq(s_run_tool(nomodel, &errtext), 1);
    cr_assert(strstr(errtext, "/nonexistent.gguf"), "%s", errtext);
    free(errtext);
    unlink(out);
    unlink(out2);
    rmdir(dir);
}
