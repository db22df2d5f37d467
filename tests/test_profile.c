/* test_profile.c — the per-stage profile: defaults, the example file,
 * strict JSON reading (errors name the key), missing files, round trips and
 * the latency model. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ms_common.h"
#include "ms_test.h"
#include "profile.h"

static void s_assert_profiles_equal(const ms_profile *a, const ms_profile *b) {
    cr_assert_eq(a->version, b->version);
    cr_assert_str_eq(a->model, b->model);
    cr_assert_str_eq(a->hardware, b->hardware);
    cr_assert_eq(a->ttft_ms, b->ttft_ms);
    cr_assert_eq(a->tbt_ms, b->tbt_ms);
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        const ms_stage_profile *x = &a->stage[s], *y = &b->stage[s];
        cr_assert_eq(x->max_batch, y->max_batch, "stage %d", s);
        cr_assert_float_eq(x->base_ms, y->base_ms, 1e-12, "stage %d", s);
        cr_assert_float_eq(x->per_unit_ms, y->per_unit_ms, 1e-12, "stage %d", s);
        cr_assert_float_eq(x->slo_share, y->slo_share, 1e-12, "stage %d", s);
        cr_assert_float_eq(x->capacity_per_s, y->capacity_per_s, 1e-9, "stage %d", s);
    }
    cr_assert_eq(a->n_classes, b->n_classes);
    for (int i = 0; i < a->n_classes; i++) {
        cr_assert_str_eq(a->classes[i].name, b->classes[i].name);
        cr_assert_eq(a->classes[i].ttft_ms, b->classes[i].ttft_ms);
        cr_assert_eq(a->classes[i].tbt_ms, b->classes[i].tbt_ms);
    }
    cr_assert_eq(memcmp(&a->limits, &b->limits, sizeof(a->limits)), 0);
}

/* Parses text; on failure returns -1 and leaves the message in err. */
static int s_parse(const char *text, ms_profile *p, char *err) {
    return ms_profile_parse(text, strlen(text), p, err, MS_ERR_SIZE);
}

/* Asserts that text fails to parse with a message containing each of the
 * given fragments (NULL-terminated). */
static void s_bad(const char *text, const char *frag1, const char *frag2) {
    ms_profile p;
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(s_parse(text, &p, err), -1, "accepted: %s", text);
    cr_assert(strstr(err, frag1), "error \"%s\" lacks \"%s\" for %s", err, frag1, text);
    if (frag2) cr_assert(strstr(err, frag2), "error \"%s\" lacks \"%s\" for %s", err, frag2, text);
}

Test(profile, defaults_are_valid_and_sensible, .timeout = 10) {
    ms_profile p;
    ms_profile_default(&p);
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_profile_validate(&p, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(p.version, MS_PROFILE_VERSION);
    /* Encoders batch little; prefill by a token budget; decode by sequences. */
    cr_assert(p.stage[MS_STAGE_ENCODE].max_batch <= 8);
    cr_assert(p.stage[MS_STAGE_PREFILL].max_batch >= 512);
    cr_assert(p.stage[MS_STAGE_DECODE].max_batch >= 8);
    cr_assert_str_eq(ms_stage_name(MS_STAGE_ENCODE), "encode");
    cr_assert_str_eq(ms_stage_name(MS_STAGE_DECODE), "decode");
    cr_assert_null(ms_stage_name(MS_STAGE_COUNT));
}

Test(profile, example_file_equals_defaults, .timeout = 10) {
    const char *path = ms_test_path(ms_test_source_dir(), "tools/profiles/default.json");
    ms_profile p, d;
    bool used_defaults = true;
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(ms_profile_load(path, &p, &used_defaults, err, sizeof(err)), 0, "%s", err);
    cr_assert_not(used_defaults, "%s should exist", path);
    ms_profile_default(&d);
    s_assert_profiles_equal(&p, &d);
}

Test(profile, round_trip_through_json, .timeout = 10) {
    ms_profile p, q;
    ms_profile_default(&p);
    p.stage[MS_STAGE_PREFILL].per_unit_ms = 0.0137;
    p.stage[MS_STAGE_ENCODE].capacity_per_s = 12345.5;
    p.limits.max_actor_image_tokens = 99999;
    snprintf(p.model, sizeof(p.model), "tiny-lm");
    p.n_classes = 1;
    char err[MS_ERR_SIZE] = "";
    char *text = ms_profile_to_json(&p, err, sizeof(err));
    cr_assert_not_null(text, "%s", err);
    cr_assert_eq(text[strlen(text) - 1], '\n');
    cr_assert_eq(s_parse(text, &q, err), 0, "%s\n%s", err, text);
    s_assert_profiles_equal(&p, &q);
    free(text);

    p.stage[MS_STAGE_DECODE].max_batch = 0;
    cr_assert_null(ms_profile_to_json(&p, err, sizeof(err)));
    cr_assert(strstr(err, "stages.decode.max_batch"), "%s", err);
}

Test(profile, partial_file_keeps_defaults, .timeout = 10) {
    ms_profile p, d;
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(s_parse("{\"stages\": {\"decode\": {\"max_batch\": 12}},"
                         " \"slo\": {\"tbt_ms\": 80},"
                         " \"slo_classes\": [{\"name\": \"gold\", \"ttft_ms\": 300,"
                         " \"tbt_ms\": 40}]}",
                         &p, err),
                 0, "%s", err);
    ms_profile_default(&d);
    cr_assert_eq(p.stage[MS_STAGE_DECODE].max_batch, 12);
    cr_assert_float_eq(p.stage[MS_STAGE_DECODE].base_ms, d.stage[MS_STAGE_DECODE].base_ms, 0);
    cr_assert_eq(p.stage[MS_STAGE_PREFILL].max_batch, d.stage[MS_STAGE_PREFILL].max_batch);
    cr_assert_eq(p.tbt_ms, 80);
    cr_assert_eq(p.ttft_ms, d.ttft_ms);
    cr_assert_eq(p.n_classes, 1, "a given class list replaces the default one");
    int32_t ttft = 0, tbt = 0;
    cr_assert_eq(ms_profile_slo_class(&p, "gold", &ttft, &tbt), 0);
    cr_assert_eq(ttft, 300);
    cr_assert_eq(tbt, 40);
    cr_assert_eq(ms_profile_slo_class(&p, "interactive", &ttft, &tbt), -1);
    cr_assert_eq(ms_profile_slo_class(&p, "", &ttft, &tbt), 0);
    cr_assert_eq(ttft, d.ttft_ms);
    cr_assert_eq(tbt, 80);
    cr_assert_eq(ms_profile_slo_class(&p, NULL, &ttft, &tbt), 0);
    cr_assert_eq(s_parse("{}", &p, err), 0, "%s", err);
    s_assert_profiles_equal(&p, &d);
}

Test(profile, unknown_keys_name_the_key, .timeout = 10) {
    s_bad("{\"stagez\": {}}", "stagez", "unknown key");
    s_bad("{\"stages\": {\"encoder\": {}}}", "stages.encoder", "unknown key");
    s_bad("{\"stages\": {\"encode\": {\"max_btach\": 2}}}", "stages.encode.max_btach",
          "unknown key");
    s_bad("{\"slo\": {\"ttft\": 2}}", "slo.ttft", "unknown key");
    s_bad("{\"limits\": {\"max_queue\": 2}}", "limits.max_queue", "unknown key");
    s_bad("{\"slo_classes\": [{\"name\": \"a\", \"ttft_ms\": 1, \"tbt_ms\": 1, \"x\": 1}]}",
          "slo_classes[0].x", "unknown key");
    s_bad("{\"version\": 1, \"version\": 1}", "version", "duplicate");
}

Test(profile, wrong_types_name_the_key, .timeout = 10) {
    s_bad("{\"stages\": {\"encode\": {\"max_batch\": \"4\"}}}", "stages.encode.max_batch",
          "number");
    s_bad("{\"stages\": {\"prefill\": []}}", "stages.prefill", "object");
    s_bad("{\"stages\": 3}", "stages", "object");
    s_bad("{\"slo\": {\"ttft_ms\": true}}", "slo.ttft_ms", "number");
    s_bad("{\"model\": 5}", "model", "string");
    s_bad("{\"slo_classes\": {}}", "slo_classes", "array");
    s_bad("{\"slo_classes\": [3]}", "slo_classes[0]", "object");
    s_bad("{\"slo_classes\": [{\"ttft_ms\": 1, \"tbt_ms\": 1}]}", "slo_classes[0].name", "missing");
    s_bad("{\"limits\": {\"max_pending_requests\": null}}", "limits.max_pending_requests",
          "number");
    s_bad("[1, 2]", "object", NULL);
}

Test(profile, bad_numbers_name_the_key, .timeout = 10) {
    s_bad("{\"stages\": {\"prefill\": {\"base_ms\": -1}}}", "stages.prefill.base_ms", "negative");
    s_bad("{\"stages\": {\"decode\": {\"per_unit_ms\": -0.5}}}", "stages.decode.per_unit_ms",
          "negative");
    s_bad("{\"limits\": {\"max_pending_requests\": -3}}", "limits.max_pending_requests",
          "negative");
    s_bad("{\"stages\": {\"encode\": {\"max_batch\": 2.5}}}", "stages.encode.max_batch", "integer");
    s_bad("{\"stages\": {\"encode\": {\"max_batch\": 0}}}", "stages.encode.max_batch", "range");
    s_bad("{\"stages\": {\"encode\": {\"max_batch\": 1e12}}}", "stages.encode.max_batch", "larger");
    s_bad("{\"stages\": {\"encode\": {\"slo_share\": 1.5}}}", "stages.encode.slo_share", "0..1");
    s_bad("{\"slo\": {\"ttft_ms\": 0}}", "slo.ttft_ms", "range");
    s_bad("{\"slo\": {\"tbt_ms\": 3000000000}}", "slo.tbt_ms", "larger");
    s_bad("{\"version\": 2}", "version", "not supported");
    s_bad("{\"slo_classes\": [{\"name\": \"a\", \"ttft_ms\": 1, \"tbt_ms\": 1},"
          " {\"name\": \"a\", \"ttft_ms\": 2, \"tbt_ms\": 2}]}",
          "slo_classes[1].name", "twice");
    s_bad("{\"slo_classes\": [{\"name\": \"\", \"ttft_ms\": 1, \"tbt_ms\": 1}]}",
          "slo_classes[0].name", NULL);
    char longname[200];
    snprintf(longname, sizeof(longname), "{\"model\": \"%0100d\"}", 7);
    s_bad(longname, "model", "longer");
}

Test(profile, malformed_json_says_where, .timeout = 10) {
    s_bad("{\n  \"slo\": {\"ttft_ms\": 5,}\n}", "invalid JSON", "line 2");
    s_bad("", "invalid JSON", NULL);
    s_bad("{} {}", "trailing", NULL);
    s_bad("{\"slo\": {\"ttft_ms\": 5}} x", "trailing", NULL);
    /* Trailing whitespace and a counted NUL terminator are fine. */
    ms_profile p;
    char err[MS_ERR_SIZE];
    cr_assert_eq(s_parse("{}\n\t ", &p, err), 0, "%s", err);
    cr_assert_eq(ms_profile_parse("{}", 3, &p, err, sizeof(err)), 0, "%s", err);
}

Test(profile, files_missing_bad_and_good, .timeout = 10) {
    char dir[] = "/tmp/ms-profile-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[512];
    ms_profile p, d;
    ms_profile_default(&d);
    char err[MS_ERR_SIZE] = "";
    bool used = false;

    /* Missing: defaults, a warning, success. */
    snprintf(path, sizeof(path), "%s/none.json", dir);
    memset(&p, 0x5a, sizeof(p));
    cr_assert_eq(ms_profile_load(path, &p, &used, err, sizeof(err)), 0);
    cr_assert(used);
    s_assert_profiles_equal(&p, &d);

    /* A bad file: the error names the file and the key. */
    snprintf(path, sizeof(path), "%s/bad.json", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("{\"stages\": {\"decode\": {\"max_batch\": -4}}}\n", f);
    fclose(f);
    cr_assert_eq(ms_profile_load(path, &p, &used, err, sizeof(err)), -1);
    cr_assert_not(used);
    cr_assert(strstr(err, path), "%s", err);
    cr_assert(strstr(err, "stages.decode.max_batch"), "%s", err);

    /* A good one. */
    snprintf(path, sizeof(path), "%s/good.json", dir);
    f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("{\"version\": 1, \"stages\": {\"encode\": {\"max_batch\": 1, \"base_ms\": 30,"
          " \"per_unit_ms\": 0.1, \"slo_share\": 0.6, \"capacity_per_s\": 9000}}}\n",
          f);
    fclose(f);
    cr_assert_eq(ms_profile_load(path, &p, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(p.stage[MS_STAGE_ENCODE].max_batch, 1);
    cr_assert_float_eq(p.stage[MS_STAGE_ENCODE].slo_share, 0.6, 1e-12);
    cr_assert_float_eq(ms_profile_latency_ms(&p, MS_STAGE_ENCODE, 729), 30 + 72.9, 1e-9);
    cr_assert_float_eq(ms_profile_latency_ms(&p, MS_STAGE_ENCODE, 0), 0, 0);

    /* A directory is not a profile. */
    cr_assert_eq(ms_profile_load(dir, &p, &used, err, sizeof(err)), -1);
    cr_assert(strstr(err, dir), "%s", err);

    unlink(path);
    snprintf(path, sizeof(path), "%s/bad.json", dir);
    unlink(path);
    rmdir(dir);
}
