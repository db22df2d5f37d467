/* test_trace.c — trace replay without a cluster: both trace formats (plain
 * and gzip, the shared files included), strict errors with line numbers,
 * slicing, schedule and rates, request shapes, synthetic text sized to the
 * token with real tokenizers, unique image bytes, and the report's
 * statistics, cost and timeline on hand-worked samples. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "gguf.h"
#include "image.h"
#include "ms_common.h"
#include "ms_test.h"
#include "replay.h"
#include "report.h"
#include "stages.h"
#include "tokenizer.h"
#include "trace.h"

#define T_TIMEOUT 60
#define T_WINDOW  "data/traces/AzureLMMInferenceTrace_multimodal_window_2024-10-16T0836.csv"
#define T_CONV    "data/traces/AzureLLMInferenceTrace_conv.csv"

static const char T_2025[] = "TIMESTAMP,NumImages,ContextTokens,GeneratedTokens\r\n"
                             "2024-10-16T08:36:32.709Z,1,3324,170\r\n"
                             "2024-10-16T08:36:32.769Z,0,852,54\r\n"
                             "2024-10-16T08:36:33.000Z,25,7938,550\r\n";
static const char T_2023[] = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                             "2023-11-16 18:17:03.9799600,4808,10\n"
                             "2023-11-16 18:17:04.0319600,3180,8\n";

static int s_parse(const char *text, ms_trace *t, char *err) {
    return ms_trace_parse(t, text, strlen(text), "t", err, MS_ERR_SIZE);
}

/* A temp file path (unique per test process; four live at once). */
static const char *s_tmp(const char *name) {
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "/tmp/ms-test-trace-%d-%s", (int)getpid(), name);
    return buf[k];
}

static void s_write_gz(const char *path, const char *data, size_t len) {
    gzFile f = gzopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(gzwrite(f, data, (unsigned)len), (int)len);
    cr_assert_eq(gzclose(f), Z_OK);
}

/* ---- formats ---------------------------------------------------------------------- */

Test(trace, parse_2025, .timeout = T_TIMEOUT) {
    ms_trace t;
    char err[MS_ERR_SIZE];
    cr_assert_eq(s_parse(T_2025, &t, err), 0, "%s", err);
    cr_assert_eq(t.format, MS_TRACE_LMM2025);
    cr_assert_eq(t.n_rows, 3);
    cr_assert_eq(t.n_reordered, 0);
    cr_assert_eq(t.rows[0].t_ns, 1729067792000000000LL + 709000000LL);
    cr_assert_eq(t.rows[0].n_images, 1);
    cr_assert_eq(t.rows[0].context_tokens, 3324);
    cr_assert_eq(t.rows[0].generated_tokens, 170);
    cr_assert_eq(t.rows[0].line, 2);
    cr_assert_eq(t.rows[2].n_images, 25);
    cr_assert_eq(t.rows[2].line, 4);
    cr_assert_eq(t.rows[1].t_ns - t.rows[0].t_ns, 60000000);
    ms_trace_fini(&t);
    cr_assert_null(t.rows);
    ms_trace_fini(&t); /* twice is fine */
}

Test(trace, parse_2023, .timeout = T_TIMEOUT) {
    ms_trace t;
    char err[MS_ERR_SIZE];
    cr_assert_eq(s_parse(T_2023, &t, err), 0, "%s", err);
    cr_assert_eq(t.format, MS_TRACE_LLM2023);
    cr_assert_eq(t.n_rows, 2);
    cr_assert_eq(t.rows[0].t_ns, 1700158623000000000LL + 979960000LL); /* 7 digits: 100 ns */
    cr_assert_eq(t.rows[0].n_images, 0);
    cr_assert_eq(t.rows[0].context_tokens, 4808);
    cr_assert_eq(t.rows[1].generated_tokens, 8);
    cr_assert_eq(t.rows[1].t_ns - t.rows[0].t_ns, 52000000);
    ms_trace_fini(&t);
}

Test(trace, tolerated_forms, .timeout = T_TIMEOUT) {
    ms_trace t;
    char err[MS_ERR_SIZE];
    /* BOM, no final newline, blank lines at the very end, zone offsets, no fraction */
    const char *ok[] = {
        "\xEF\xBB\xBFTIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1,2",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16T18:17:03+01:30,1,2\n\n\r\n",
        "TIMESTAMP,NumImages,ContextTokens,GeneratedTokens\n2024-02-29T23:59:59.5Z,0,0,0\n",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        cr_assert_eq(s_parse(ok[i], &t, err), 0, "case %zu: %s", i, err);
        cr_assert_eq(t.n_rows, 1);
        ms_trace_fini(&t);
    }
    cr_assert_eq(s_parse(ok[1], &t, err), 0);
    cr_assert_eq(t.rows[0].t_ns, 1700158623000000000LL - 5400LL * 1000000000LL);
    ms_trace_fini(&t);
    cr_assert_eq(s_parse(ok[2], &t, err), 0);
    cr_assert_eq(t.rows[0].t_ns, 1709251199500000000LL);
    ms_trace_fini(&t);
}

Test(trace, out_of_order_rows_are_sorted, .timeout = T_TIMEOUT) {
    ms_trace t;
    char err[MS_ERR_SIZE];
    const char *text = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                       "2023-11-16 18:17:05,1,1\n"
                       "2023-11-16 18:17:03,2,2\n"
                       "2023-11-16 18:17:05,3,3\n"
                       "2023-11-16 18:17:04,4,4\n";
    cr_assert_eq(s_parse(text, &t, err), 0, "%s", err);
    cr_assert_eq(t.n_reordered, 2);
    const int want_ctx[] = {2, 4, 1, 3}, want_line[] = {3, 5, 2, 4}; /* ties keep file order */
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(t.rows[i].context_tokens, want_ctx[i], "row %d", i);
        cr_assert_eq(t.rows[i].line, want_line[i], "row %d", i);
    }
    ms_trace_fini(&t);
}

Test(trace, bad_input_names_the_line, .timeout = T_TIMEOUT) {
    static const char H4[] = "TIMESTAMP,NumImages,ContextTokens,GeneratedTokens\n";
    static const char H3[] = "TIMESTAMP,ContextTokens,GeneratedTokens\n";
    char longline[600];
    snprintf(longline, sizeof longline, "%s2024-10-16T08:36:32.709Z,0,1,%0400d\n", H4, 1);
    const struct {
        const char *head, *body, *want;
    } cases[] = {
        {"", "", "t: empty (no header line)"},
        {H4, "", "t: no rows after the header"},
        {"TIMESTAMP,Images,Context,Generated\n", "x\n", "t:1: unknown header"},
        {H4, "2024-10-16T08:36:32.709Z,1,3324\n", "t:2: 3 fields, the 2025 format has 4"},
        {H3, "2023-11-16 18:17:03,1,2,3\n", "t:2: 4 fields, the 2023 format has 3"},
        {H4, "2024-10-16T08:36:32Z,1,2,3\n2024-10-16T08:36:33Z,-1,2,3\n",
         "t:3: NumImages '-1' is not a count"},
        {H4, "2024-10-16T08:36:32Z,1, 2,3\n", "t:2: ContextTokens ' 2' is not a count"},
        {H4, "2024-10-16T08:36:32Z,1,2,\n", "t:2: GeneratedTokens is empty"},
        {H4, "2024-10-16T08:36:32Z,1000001,2,3\n", "t:2: NumImages '1000001' is larger than"},
        {H4, "2024-10-16T08:36:32Z,1,2,99999999999999999999\n", "is larger than 100000000"},
        {H4, "2023-02-29T08:36:32Z,1,2,3\n", "t:2: TIMESTAMP '2023-02-29T08:36:32Z': day 29"},
        {H4, "2024-13-01T08:36:32Z,1,2,3\n", "month 13"},
        {H4, "2024-10-16T24:00:00Z,1,2,3\n", "out of range"},
        {H4, "2024-10-16T08:36:32.1234567890Z,1,2,3\n", "more than 9 fraction digits"},
        {H4, "2024-10-16T08:36:32.Z,1,2,3\n", "no digits after '.'"},
        {H4, "2024-10-16T08:36:32 UTC,1,2,3\n", "unexpected ' UTC'"},
        {H4, "2024-10-16T08:36:32+25:00,1,2,3\n", "bad zone offset"},
        {H4, "16/10/2024 08:36:32,1,2,3\n", "not of the form"},
        {H4, "1969-12-31T23:59:59Z,1,2,3\n", "year 1969 outside"},
        {H4, "2024-10-16T08:36:32Z,1,2,3\n\n2024-10-16T08:36:33Z,1,2,3\n",
         "t:3: blank line between rows"},
        {H4, "2024-10-16T08:36:32Z,1,2,3\n2024-10-16T08:36:3\t3Z,1,2,3\n",
         "t:3: control byte 0x09 at column 19"},
        {H4, "2024-10-16T08:36:32Z,1,2\r3\n", "t:2: control byte 0x0d"},
        {"", longline, "t:2: line longer than 256 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[1024], err[MS_ERR_SIZE] = "";
        snprintf(text, sizeof text, "%s%s", cases[i].head, cases[i].body);
        ms_trace t;
        cr_expect_eq(s_parse(text, &t, err), -1, "case %zu parsed", i);
        cr_expect_not_null(strstr(err, cases[i].want), "case %zu: '%s' lacks '%s'", i, err,
                           cases[i].want);
        cr_expect_null(t.rows);
    }
    /* a NUL byte inside a row */
    const char nul[] = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1\0,2\n";
    ms_trace t;
    char err[MS_ERR_SIZE];
    cr_expect_eq(ms_trace_parse(&t, nul, sizeof nul - 1, "t", err, sizeof err), -1);
    cr_expect_not_null(strstr(err, "t:2: control byte 0x00"), "%s", err);
}

Test(trace, gzip_and_plain_files, .timeout = T_TIMEOUT) {
    char err[MS_ERR_SIZE];
    const char *gz = s_tmp("a.csv.gz"), *plain = s_tmp("b.csv");
    s_write_gz(gz, T_2025, strlen(T_2025));
    FILE *f = fopen(plain, "w");
    cr_assert_not_null(f);
    fputs(T_2025, f);
    fclose(f);
    ms_trace a, b;
    cr_assert_eq(ms_trace_load(&a, gz, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_trace_load(&b, plain, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a.n_rows, 3);
    cr_assert_eq(memcmp(a.rows, b.rows, 3 * sizeof *a.rows), 0);
    ms_trace_fini(&a);
    ms_trace_fini(&b);
    /* a truncated gzip file */
    size_t len = 0;
    uint8_t *bytes = ms_read_file(gz, 1 << 20, &len, err, sizeof err);
    cr_assert_not_null(bytes);
    f = fopen(gz, "wb");
    fwrite(bytes, 1, len - 12, f);
    fclose(f);
    free(bytes);
    cr_assert_eq(ms_trace_load(&a, gz, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "truncated or corrupt gzip"), "%s", err);
    /* an error in a gzip file names the line */
    const char bad[] = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1,2\nx,1,2\n";
    s_write_gz(gz, bad, strlen(bad));
    cr_assert_eq(ms_trace_load(&a, gz, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, ".csv.gz:3: TIMESTAMP 'x'"), "%s", err);
    cr_assert_eq(ms_trace_load(&a, s_tmp("missing.csv"), err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "cannot open"), "%s", err);
    unlink(gz);
    unlink(plain);
}

Test(trace, shared_traces, .timeout = T_TIMEOUT) {
    char err[MS_ERR_SIZE], tw[MS_TRACE_TIME_MAX];
    ms_trace t, g;
    const char *path = ms_test_path(ms_test_shared_dir(), T_WINDOW);
    cr_assert_eq(ms_trace_load(&t, path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(t.format, MS_TRACE_LMM2025);
    cr_assert_eq(t.n_rows, 2000); /* ../shared/data/README.md */
    cr_assert_eq(t.n_reordered, 0);
    ms_trace_format_time(t.rows[0].t_ns, tw, sizeof tw);
    cr_assert_str_eq(tw, "2024-10-16T08:36:32.709Z");
    ms_trace_format_time(t.rows[1999].t_ns, tw, sizeof tw);
    cr_assert_str_eq(tw, "2024-10-16T08:46:34.606Z");
    cr_assert_eq(t.rows[1999].line, 2001);
    int text_only = 0, max_images = 0;
    for (size_t i = 0; i < t.n_rows; i++) {
        text_only += t.rows[i].n_images == 0;
        max_images = MS_MAX(max_images, t.rows[i].n_images);
    }
    cr_assert_eq(text_only, 566); /* 28% text-only */
    cr_assert_eq(max_images, 1089);
    /* the same file gzip-compressed, as users have the full week */
    size_t len = 0;
    char *bytes = (char *)ms_read_file(path, 1 << 24, &len, err, sizeof err);
    cr_assert_not_null(bytes, "%s", err);
    s_write_gz(s_tmp("w.csv.gz"), bytes, len);
    free(bytes);
    cr_assert_eq(ms_trace_load(&g, s_tmp("w.csv.gz"), err, sizeof err), 0, "%s", err);
    cr_assert_eq(g.n_rows, t.n_rows);
    cr_assert_eq(memcmp(g.rows, t.rows, t.n_rows * sizeof *t.rows), 0);
    unlink(s_tmp("w.csv.gz"));
    ms_trace_fini(&g);
    ms_trace_fini(&t);
    cr_assert_eq(ms_trace_load(&t, ms_test_path(ms_test_shared_dir(), T_CONV), err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(t.format, MS_TRACE_LLM2023);
    cr_assert_eq(t.n_rows, 19366); /* the last line has no line end */
    cr_assert_eq(t.rows[19365].context_tokens, 197);
    cr_assert_eq(t.rows[19365].generated_tokens, 183);
    ms_trace_fini(&t);
}

/* ---- time ---------------------------------------------------------------------- */

Test(trace, time_round_trip, .timeout = T_TIMEOUT) {
    const char *cases[] = {"1970-01-01T00:00:00.000Z", "2024-02-29T23:59:59.999Z",
                           "2000-03-01T00:00:00.001Z", "2200-12-31T23:59:59.000Z",
                           "2024-10-16T08:36:32.709Z"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t ns = 0;
        char err[MS_ERR_SIZE], back[MS_TRACE_TIME_MAX];
        cr_assert_eq(ms_trace_parse_time(cases[i], strlen(cases[i]), &ns, err, sizeof err), 0,
                     "%s: %s", cases[i], err);
        ms_trace_format_time(ns, back, sizeof back);
        cr_assert_str_eq(back, cases[i]);
    }
    int64_t ns = 0;
    cr_assert_eq(ms_trace_parse_time("2200-12-31T23:59:59", 19, &ns, NULL, 0), 0);
    cr_assert_eq(ns, 7289654399000000000LL);
}

/* ---- slicing and schedule ------------------------------------------------------------ */

static void s_ten_rows(ms_trace *t) {
    /* rows 0..9 one second apart starting at 2024-10-16T08:00:00Z */
    char text[1024];
    size_t n = (size_t)snprintf(text, sizeof text, "%s\n", MS_TRACE_HEADER_2023);
    for (int i = 0; i < 10; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "2024-10-16T08:00:%02dZ,%d,%d\n", i,
                              100 + i, 10 + i);
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_trace_parse(t, text, n, "ten", err, sizeof err), 0, "%s", err);
}

Test(trace, windows, .timeout = T_TIMEOUT) {
    ms_trace t;
    s_ten_rows(&t);
    char err[MS_ERR_SIZE];
    size_t first, n;
    ms_trace_window w = {0};
    cr_assert_eq(ms_trace_window_apply(&t, &w, &first, &n, err, sizeof err), 0);
    cr_assert(first == 0 && n == 10);
    w = (ms_trace_window){.row_begin = 3, .row_end = 7};
    cr_assert_eq(ms_trace_window_apply(&t, &w, &first, &n, err, sizeof err), 0);
    cr_assert(first == 3 && n == 4);
    w = (ms_trace_window){.row_begin = 3, .row_end = 70, .duration_s = 2.5}; /* rows 3, 4, 5 */
    cr_assert_eq(ms_trace_window_apply(&t, &w, &first, &n, err, sizeof err), 0);
    cr_assert(first == 3 && n == 3, "first %zu n %zu", first, n);
    w = (ms_trace_window){.row_begin = 3, .duration_s = 2.0}; /* [3 s, 5 s): rows 3, 4 */
    cr_assert_eq(ms_trace_window_apply(&t, &w, &first, &n, err, sizeof err), 0);
    cr_assert(first == 3 && n == 2);
    /* by time: "+2.5" = the first arrival at or after 08:00:02.5 → row 3 */
    cr_assert_eq(ms_trace_parse_start(&t, "+2.5", &w.start_ns, err, sizeof err), 0, "%s", err);
    w.has_start = true;
    w.duration_s = 0;
    w.row_end = 0;
    cr_assert_eq(ms_trace_window_apply(&t, &w, &first, &n, err, sizeof err), 0);
    cr_assert(first == 3 && n == 7);
    cr_assert_eq(ms_trace_parse_start(&t, "2024-10-16T08:00:08Z", &w.start_ns, err, sizeof err), 0);
    cr_assert_eq(ms_trace_window_apply(&t, &w, &first, &n, err, sizeof err), 0);
    cr_assert(first == 8 && n == 2);
    cr_assert_eq(ms_trace_parse_start(&t, "4s", &w.start_ns, err, sizeof err), 0);
    cr_assert_eq(ms_trace_window_apply(&t, &w, &first, &n, err, sizeof err), 0);
    cr_assert_eq(first, 4);
    /* errors */
    cr_assert_eq(ms_trace_parse_start(&t, "2024-10-16T08:00:10Z", &w.start_ns, err, sizeof err), 0);
    cr_assert_eq(ms_trace_window_apply(&t, &w, &first, &n, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "after the last arrival (2024-10-16T08:00:09.000Z)"), "%s", err);
    w = (ms_trace_window){.row_begin = 10};
    cr_assert_eq(ms_trace_window_apply(&t, &w, &first, &n, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "first row 10 is outside the trace (rows 0..9)"), "%s", err);
    w = (ms_trace_window){.row_begin = 5, .row_end = 5};
    cr_assert_eq(ms_trace_window_apply(&t, &w, &first, &n, err, sizeof err), -1);
    cr_assert_eq(ms_trace_parse_start(&t, "soon", &w.start_ns, err, sizeof err), -1);
    cr_assert_eq(ms_trace_parse_start(&t, "-3", &w.start_ns, err, sizeof err), -1);
    ms_trace_fini(&t);
}

Test(trace, rows_argument, .timeout = T_TIMEOUT) {
    int64_t a = -1, b = -1;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_trace_parse_rows("3:7", &a, &b, err, sizeof err), 0);
    cr_assert(a == 3 && b == 7);
    cr_assert_eq(ms_trace_parse_rows("5:", &a, &b, err, sizeof err), 0);
    cr_assert(a == 5 && b == 0);
    cr_assert_eq(ms_trace_parse_rows(":4", &a, &b, err, sizeof err), 0);
    cr_assert(a == 0 && b == 4);
    const char *bad[] = {"", ":", "7:3", "3:3", "x:1", "1:2:3", "-1:4", "12", "1:1e3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_eq(ms_trace_parse_rows(bad[i], &a, &b, err, sizeof err), -1, "'%s'", bad[i]);
}

Test(trace, schedule_scale_and_rate, .timeout = T_TIMEOUT) {
    const int64_t s = 1000000000LL;
    cr_assert_eq(ms_trace_offset_ns(5 * s, 5 * s, 1, 1), 0);
    cr_assert_eq(ms_trace_offset_ns(5 * s, 15 * s, 1, 1), 10 * s);
    cr_assert_eq(ms_trace_offset_ns(5 * s, 15 * s, 0.1, 1), s);            /* ten times faster */
    cr_assert_eq(ms_trace_offset_ns(5 * s, 15 * s, 1, 4), 2500000000LL);   /* 4x the rate */
    cr_assert_eq(ms_trace_offset_ns(5 * s, 15 * s, 0.5, 2), 2500000000LL); /* they multiply */
    cr_assert_eq(ms_trace_offset_ns(0, 3, 1, 2), 2); /* rounded to the nearest ns */
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_trace_check_scale(0.1, 2, err, sizeof err), 0);
    cr_assert_eq(ms_trace_check_scale(0, 1, err, sizeof err), -1);
    cr_assert_eq(ms_trace_check_scale(1, -2, err, sizeof err), -1);
    cr_assert_eq(ms_trace_check_scale(NAN, 1, err, sizeof err), -1);
    cr_assert_eq(ms_trace_check_scale(1, INFINITY, err, sizeof err), -1);
}

/* ---- shapes ---------------------------------------------------------------------- */

static ms_trace_shape s_shape(int images, int ctx, int gen, const ms_trace_shape_opts *o) {
    const ms_trace_row r = {.n_images = images, .context_tokens = ctx, .generated_tokens = gen};
    ms_trace_shape s;
    ms_trace_shape_row(&r, o, &s);
    cr_assert_eq(s.prompt_tokens, s.text_tokens + s.image_tokens);
    cr_assert_eq(s.image_tokens, s.n_images * MS_MAX(o->n_image_tokens, 0));
    cr_assert_geq(s.text_tokens, 1);
    cr_assert_geq(s.max_tokens, 1);
    if (o->n_ctx > 0) cr_assert_leq(s.prompt_tokens + s.max_tokens, o->n_ctx);
    return s;
}

Test(trace, shapes, .timeout = T_TIMEOUT) {
    /* no limits: the row as is */
    ms_trace_shape_opts o = {.n_image_tokens = 576, .max_images = 16};
    ms_trace_shape s = s_shape(2, 3000, 170, &o);
    cr_assert(s.n_images == 2 && s.text_tokens == 3000 - 1152 && s.prompt_tokens == 3000 &&
              s.max_tokens == 170 && s.clamped == 0);
    /* this model's image costs more than the traced one: 1 text token, context grows */
    s = s_shape(1, 300, 10, &o);
    cr_assert(s.n_images == 1 && s.text_tokens == 1 && s.prompt_tokens == 577);
    cr_assert_eq(s.clamped, MS_TRACE_CLAMP_CONTEXT);
    /* more images than the wire allows; GeneratedTokens 0 -> 1 */
    s = s_shape(25, 20000, 0, &o);
    cr_assert(s.n_images == 16 && s.text_tokens == 20000 - 16 * 576 && s.max_tokens == 1);
    cr_assert_eq(s.clamped, MS_TRACE_CLAMP_IMAGES | MS_TRACE_CLAMP_GEN);
    /* a small model: n_ctx 512, 16 tokens per image, clamps */
    o = (ms_trace_shape_opts){.n_image_tokens = 16, .max_images = 16, .n_ctx = 512};
    s = s_shape(0, 3324, 170, &o); /* prompt budget 512 - 170 */
    cr_assert(s.n_images == 0 && s.text_tokens == 342 && s.max_tokens == 170);
    cr_assert_eq(s.clamped, MS_TRACE_CLAMP_CONTEXT);
    s = s_shape(3, 100, 5000, &o); /* gen leaves room for one image + one text token */
    cr_assert(s.max_tokens == 512 - 17 && s.n_images == 1 && s.text_tokens == 1);
    cr_assert_eq(s.clamped, MS_TRACE_CLAMP_IMAGES | MS_TRACE_CLAMP_CONTEXT | MS_TRACE_CLAMP_GEN);
    o.max_context = 200;
    o.max_gen = 64;
    s = s_shape(9, 5000, 100, &o); /* 9 images = 144 tokens fit in 200 */
    cr_assert(s.n_images == 9 && s.text_tokens == 56 && s.prompt_tokens == 200 &&
              s.max_tokens == 64);
    s = s_shape(16, 5000, 100, &o); /* 16 x 16 = 256 > 200: 12 images + 1 text token fit */
    cr_assert(s.n_images == 12 && s.text_tokens == 8 && s.prompt_tokens == 200);
    s = s_shape(0, 10, 10, &o);
    cr_assert(s.text_tokens == 10 && s.max_tokens == 10 && s.clamped == 0);
    /* a text-only model (no image tokens): images dropped */
    o = (ms_trace_shape_opts){.n_image_tokens = 0, .max_images = 16};
    s = s_shape(4, 900, 10, &o);
    cr_assert(s.n_images == 0 && s.text_tokens == 900);
    cr_assert_eq(s.clamped, MS_TRACE_CLAMP_IMAGES);
    /* max_context below one image: text only */
    o = (ms_trace_shape_opts){.n_image_tokens = 64, .max_images = 16, .max_context = 50};
    s = s_shape(1, 900, 10, &o);
    cr_assert(s.n_images == 0 && s.text_tokens == 50);
}

/* ---- synthetic content --------------------------------------------------------------- */

Test(replay, text_is_deterministic_and_prefix_stable, .timeout = T_TIMEOUT) {
    size_t la = 0, lb = 0;
    char *a = ms_replay_text(50, 7, 0, &la), *b = ms_replay_text(80, 7, 0, &lb);
    cr_assert_gt(lb, la);
    cr_assert_eq(strncmp(a, b, la), 0);
    cr_assert_eq(b[la], ' ');
    char *c = ms_replay_text(50, 8, 0, NULL);
    cr_assert_neq(strcmp(a, c), 0, "another seed, another text");
    int words = 1;
    for (const char *p = a; *p; p++)
        words += *p == ' ';
    cr_assert_eq(words, 50);
    char *e = ms_replay_text(0, 7, 0, &la);
    cr_assert(la == 0 && e[0] == '\0');
    char *one = ms_replay_text(20, 7, 1, NULL); /* mask: word 0 ("the") only */
    cr_assert_str_eq(one, "the the the the the the the the the the the the the the the the the "
                          "the the the");
    free(a);
    free(b);
    free(c);
    free(e);
    free(one);
}

/* Sizes texts for several targets and image counts with tok; every one exact. */
static void s_check_sizing(const ms_tokenizer *tok, const char *what) {
    const uint64_t mask = ms_replay_word_mask(tok);
    cr_assert_neq(mask, 0, "%s: no one-token word", what);
    const int targets[] = {1, 2, 3, 17, 100, 1000, 4000};
    for (int ni = 0; ni <= 3; ni += 3)
        for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
            int words = 0, got = 0;
            char err[MS_ERR_SIZE];
            cr_assert_eq(ms_replay_size_text(tok, mask, ni, targets[i], 42 + i, &words, &got, err,
                                             sizeof err),
                         0, "%s", err);
            /* with images, BOS and "\n" after each marker may already exceed a tiny target */
            if (targets[i] >= 16)
                cr_expect_eq(got, targets[i], "%s: %d images, target %d: got %d (%d words)", what,
                             ni, targets[i], got, words);
            else
                cr_expect_geq(got, targets[i]);
            cr_expect_geq(words, 1);
        }
}

Test(replay, text_sized_to_the_token, .timeout = T_TIMEOUT) {
    char err[MS_ERR_SIZE];
    /* the tiny test model (a byte-level BPE of 659 tokens) */
    ms_gguf *g = ms_gguf_open(ms_test_path(ms_test_models_dir(), "tiny-lm.gguf"), err, sizeof err);
    cr_assert_not_null(g, "%s", err);
    ms_tokenizer *tok = ms_tokenizer_from_gguf(g, err, sizeof err);
    cr_assert_not_null(tok, "%s", err);
    s_check_sizing(tok, "tiny");
    ms_tokenizer_destroy(&tok);
    ms_gguf_close(&g);
    /* Llama 3 (byte-level BPE) and Llama 2 (SentencePiece) vocabularies */
    const char *files[] = {"data/tokenizers/llama3.tokenizer.json",
                           "data/tokenizers/llama2.vocab_merges.json"};
    for (int i = 0; i < 2; i++) {
        ms_vocab v;
        cr_assert_eq(
            ms_vocab_load_json(ms_test_path(ms_test_shared_dir(), files[i]), &v, err, sizeof err),
            0, "%s", err);
        tok = ms_tokenizer_new(&v, err, sizeof err);
        cr_assert_not_null(tok, "%s", err);
        cr_assert_eq(ms_replay_word_mask(tok), (1ull << 32) - 1, "%s: every word is one token",
                     files[i]);
        s_check_sizing(tok, files[i]);
        ms_tokenizer_destroy(&tok);
        ms_vocab_fini(&v);
    }
}

static void s_same_pixels(const uint8_t *a, size_t la, const uint8_t *b, size_t lb) {
    ms_image x, y;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_image_decode(a, la, 0, &x, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_image_decode(b, lb, 0, &y, err, sizeof err), 0, "unique copy: %s", err);
    cr_assert(x.w == y.w && x.h == y.h);
    cr_assert_eq(memcmp(x.rgb, y.rgb, (size_t)3 * x.w * x.h), 0);
    ms_image_fini(&x);
    ms_image_fini(&y);
}

Test(replay, unique_images_decode_the_same, .timeout = T_TIMEOUT) {
    const char *names[] = {"sample.jpg", "j_45x33_prog.jpg", "p_333x517.png",
                           "p_40x30_interlaced.png", "p_40x30_palette_trns.png"};
    char dir[1024], err[MS_ERR_SIZE];
    snprintf(dir, sizeof dir, "%s/tests/data/images", ms_test_source_dir());
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t len = 0, la = 0, lb = 0;
        uint8_t *img = ms_read_file(ms_test_path(dir, names[i]), 1 << 24, &len, err, sizeof err);
        cr_assert_not_null(img, "%s", err);
        uint8_t *a = ms_replay_unique_image(img, len, "modserve-bench 1 row 0 image 0", &la, err,
                                            sizeof err);
        uint8_t *b = ms_replay_unique_image(img, len, "modserve-bench 1 row 0 image 1", &lb, err,
                                            sizeof err);
        cr_assert_not_null(a, "%s: %s", names[i], err);
        cr_assert_not_null(b);
        cr_assert_eq(la, lb);
        cr_assert_gt(la, len);
        cr_assert_neq(ms_hash64(a, la), ms_hash64(b, lb), "%s: the same hash", names[i]);
        cr_assert_neq(ms_hash64(a, la), ms_hash64(img, len));
        s_same_pixels(img, len, a, la);
        free(a);
        free(b);
        free(img);
    }
    size_t len = 0, lo = 0;
    uint8_t *webp =
        ms_read_file(ms_test_path(dir, "w_40x30_lossy.webp"), 1 << 20, &len, err, sizeof err);
    cr_assert_not_null(webp);
    cr_assert_null(ms_replay_unique_image(webp, len, "x", &lo, err, sizeof err));
    cr_assert_not_null(strstr(err, "only JPEG and PNG"), "%s", err);
    const uint8_t junk[3] = {0xFF, 0xD8, 0x00};
    cr_assert_null(ms_replay_unique_image(junk, 3, "x", &lo, err, sizeof err));
    free(webp);
}

Test(replay, plan_rows, .timeout = T_TIMEOUT) {
    ms_trace t;
    char err[MS_ERR_SIZE];
    cr_assert_eq(s_parse(T_2025, &t, err), 0, "%s", err);
    ms_replay_plan_opts o = {.shape = {.n_image_tokens = 16, .max_images = 16, .n_ctx = 512},
                             .time_scale = 0.5,
                             .rate = 2,
                             .seed = 1,
                             .row0 = 100};
    ms_report_req reqs[3];
    cr_assert_eq(ms_replay_plan(&o, t.rows, 3, reqs, err, sizeof err), 0, "%s", err);
    cr_assert_eq(reqs[2].row, 102);
    cr_assert_eq(reqs[2].line, 4);
    cr_assert_float_eq(reqs[1].t_sched, 0.015, 1e-12); /* 60 ms x 0.5 / 2 */
    cr_assert_float_eq(reqs[2].t_sched, 0.07275, 1e-12);
    cr_assert_eq(reqs[0].n_images, 1);
    cr_assert_eq(reqs[0].max_tokens, 170);
    cr_assert_eq(reqs[0].prompt_tokens, 512 - 170);
    cr_assert_eq(reqs[0].n_words, 512 - 170 - 16); /* no tokenizer: a word per token */
    cr_assert_eq(reqs[2].n_images, 1);             /* max_tokens 495 leaves room for one image */
    cr_assert_eq(reqs[2].max_tokens, 495);
    ms_trace_fini(&t);
}

/* ---- the report on hand-worked samples --------------------------------------------------- */

/* R0 text: submit 0, tokens at 0.1, 0.15, 0.2, Done 0.2 -> TTFT 100, TPOT 50, E2E 200
 * R1 text: submit 1, one token at 1.3, Done 1.3        -> TTFT 300, no TPOT, E2E 300
 * R2 image (2): submit 2, tokens at 2.5 .. 2.9 (5)     -> TTFT 500, TPOT 100, E2E 900
 * R3 image (1): submit 3, Error overloaded at 3.0 */
static void s_hand_reqs(ms_report_req *r) {
    memset(r, 0, 4 * sizeof *r);
    const double sub[4] = {0, 1, 2, 3};
    for (int i = 0; i < 4; i++) {
        r[i].row = i;
        r[i].t_sched = r[i].t_submit = sub[i];
        r[i].submitted = r[i].ended = true;
        r[i].ok = i < 3;
        r[i].max_tokens = 5;
        snprintf(r[i].finish, sizeof r[i].finish, "%s", i < 3 ? "length" : "");
    }
    r[2].n_images = 2;
    r[3].n_images = 1;
    r[0].t_first = 0.1, r[0].t_end = 0.2, r[0].n_tokens = 3;
    ms_report_req_add_itl(&r[0], 50);
    ms_report_req_add_itl(&r[0], 50);
    r[1].t_first = 1.3, r[1].t_end = 1.3, r[1].n_tokens = 1;
    r[2].t_first = 2.5, r[2].t_end = 2.9, r[2].n_tokens = 5;
    for (int k = 0; k < 4; k++)
        ms_report_req_add_itl(&r[2], 100);
    r[3].t_end = 3.0;
    snprintf(r[3].code, sizeof r[3].code, "overloaded");
    r[0].done_prompt_tokens = 100, r[1].done_prompt_tokens = 50, r[2].done_prompt_tokens = 300;
}

/* Samples: t=0 {encode 2, text 1}, t=1 failed, t=2 {encode 3, text 1},
 * t=2.5 {encode 3, text 1, monolith 1}. */
static void s_hand_samples(ms_report_sample *s) {
    memset(s, 0, 4 * sizeof *s);
    s[0] = (ms_report_sample){.t = 0, .ok = true};
    s[0].actors[MS_STAGES_ENCODE] = 2, s[0].actors[MS_STAGES_TEXT] = 1;
    s[1] = (ms_report_sample){.t = 1, .ok = false};
    s[1].actors[MS_STAGES_ENCODE] = 99;
    s[2] = (ms_report_sample){.t = 2, .ok = true};
    s[2].actors[MS_STAGES_ENCODE] = 3, s[2].actors[MS_STAGES_TEXT] = 1;
    s[3] = (ms_report_sample){.t = 2.5, .ok = true};
    s[3].actors[MS_STAGES_ENCODE] = 3, s[3].actors[MS_STAGES_TEXT] = 1;
    s[3].actors[MS_STAGES_ALL] = 1;
}

Test(report, statistics_by_hand, .timeout = T_TIMEOUT) {
    ms_report_req r[4];
    ms_report_sample smp[4];
    s_hand_reqs(r);
    s_hand_samples(smp);
    const ms_report_slo slo = {.ttft_ms = 400, .tbt_ms = 60};
    ms_report_summary s;
    ms_report_summarize(r, 4, smp, 4, &slo, &s);
    cr_assert_float_eq(s.duration_s, 3.0, 1e-12);
    const ms_report_group *t = &s.g[MS_REPORT_TEXT], *im = &s.g[MS_REPORT_IMAGE],
                          *all = &s.g[MS_REPORT_ALL];
    cr_assert(t->requests == 2 && t->completed == 2 && t->errors == 0 && t->slo_met == 2);
    cr_assert_float_eq(t->ttft.mean, 200, 1e-9);
    cr_assert_float_eq(t->ttft.p50, 200, 1e-9);
    cr_assert_float_eq(t->ttft.p90, 280, 1e-9);
    cr_assert_eq(t->tpot.n, 1);
    cr_assert_float_eq(t->tpot.mean, 50, 1e-9);
    cr_assert_float_eq(t->e2e.mean, 250, 1e-9);
    cr_assert_eq(t->itl.n, 2);
    cr_assert_float_eq(t->slo_attainment, 1.0, 1e-12);
    cr_assert(im->requests == 2 && im->completed == 1 && im->errors == 1);
    cr_assert_eq(im->code_count[1], 1, "overloaded");
    cr_assert(im->slo_met == 0 && im->ttft_met == 0 && im->tpot_met == 0);
    cr_assert_eq(im->images, 3);
    cr_assert_float_eq(im->ttft.mean, 500, 1e-9);
    cr_assert_float_eq(im->tpot.mean, 100, 1e-9);
    cr_assert(all->requests == 4 && all->completed == 3 && all->errors == 1 && all->slo_met == 2);
    cr_assert_float_eq(all->slo_attainment, 0.5, 1e-12);
    cr_assert_float_eq(all->ttft.mean, 300, 1e-9);
    cr_assert_float_eq(all->ttft.p50, 300, 1e-9);
    cr_assert_float_eq(all->ttft.p99, 496, 1e-9);
    cr_assert_float_eq(all->ttft.max, 500, 1e-9);
    cr_assert_eq(all->itl.n, 6);
    cr_assert_float_eq(all->itl.mean, 500.0 / 6, 1e-4);
    cr_assert_float_eq(all->itl.p50, 100, 1e-9);
    cr_assert_float_eq(all->goodput_rps, 2.0 / 3, 1e-12);
    cr_assert_float_eq(all->throughput_rps, 1.0, 1e-12);
    cr_assert_float_eq(all->output_tok_s, 3.0, 1e-12);
    cr_assert_float_eq(all->input_tok_s, 150.0, 1e-12);
    cr_assert_eq(all->tokens, 9);
    cr_assert_eq(all->finish_length, 3);
    /* cost: [0,2) 2 enc + 1 text, [2,2.5) 3 + 1, [2.5,3] 3 + 1 + 1 monolith */
    cr_assert_float_eq(s.instance_s[MS_STAGES_ENCODE], 7.0, 1e-9);
    cr_assert_float_eq(s.instance_s[MS_STAGES_TEXT], 3.0, 1e-9);
    cr_assert_float_eq(s.instance_s[MS_STAGES_ALL], 0.5, 1e-9);
    cr_assert_float_eq(s.instance_s_total, 10.5, 1e-9);
    cr_assert_float_eq(s.stage_instance_s[MS_STAGE_ENCODE], 7.5, 1e-9);
    cr_assert_float_eq(s.stage_instance_s[MS_STAGE_PREFILL], 3.5, 1e-9);
    cr_assert_float_eq(s.stage_instance_s[MS_STAGE_DECODE], 3.5, 1e-9);
    cr_assert(s.n_samples == 4 && s.n_samples_failed == 1);
    /* the SLO rule itself */
    cr_assert(ms_report_req_slo_met(&r[0], &slo) && ms_report_req_slo_met(&r[1], &slo));
    cr_assert(!ms_report_req_slo_met(&r[2], &slo) && !ms_report_req_slo_met(&r[3], &slo));
    ms_report_reqs_fini(r, 4);
}

Test(report, instance_seconds_edges, .timeout = T_TIMEOUT) {
    ms_report_sample s[2];
    memset(s, 0, sizeof s);
    double set[MS_REPORT_STAGE_SETS], st[MS_REPORT_STAGES], total = -1;
    ms_report_instance_seconds(s, 0, 0, 10, set, st, &total);
    cr_assert_float_eq(total, 0, 1e-12);
    s[0] = (ms_report_sample){.t = 4, .ok = true}; /* the first sample also covers [0, 4) */
    s[0].actors[MS_STAGES_ENCODE] = 2;
    s[1] = (ms_report_sample){.t = 12, .ok = true}; /* after the window: ignored */
    s[1].actors[MS_STAGES_ENCODE] = 5;
    ms_report_instance_seconds(s, 2, 0, 10, set, st, &total);
    cr_assert_float_eq(total, 20, 1e-12);
    cr_assert_float_eq(st[MS_STAGE_ENCODE], 20, 1e-12);
    cr_assert_float_eq(st[MS_STAGE_DECODE], 0, 1e-12);
}

Test(report, timeline_by_hand, .timeout = T_TIMEOUT) {
    ms_report_req r[4];
    ms_report_sample smp[4];
    s_hand_reqs(r);
    s_hand_samples(smp);
    const ms_report_slo slo = {.ttft_ms = 400, .tbt_ms = 60};
    int nb = 0;
    double bin = 0;
    ms_report_bin *b = ms_report_timeline(r, 4, smp, 4, &slo, 3.0, 1.0, &nb, &bin);
    cr_assert_eq(nb, 3);
    cr_assert_float_eq(bin, 1.0, 1e-12);
    const int arrivals[3] = {1, 1, 2}, done[3] = {1, 1, 1}, errors[3] = {0, 0, 1},
              total[3] = {3, 4, 5};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(b[i].arrivals, arrivals[i], "bin %d", i);
        cr_assert_eq(b[i].completed, done[i], "bin %d", i);
        cr_assert_eq(b[i].errors, errors[i], "bin %d", i);
        cr_assert_eq(b[i].in_flight, 0, "bin %d", i);
        cr_assert_eq(b[i].actors_total, total[i], "bin %d", i);
    }
    cr_assert_eq(b[2].image_arrivals, 2);
    cr_assert_float_eq(b[0].ttft_p50, 100, 1e-9);
    cr_assert_float_eq(b[2].e2e_p99, 900, 1e-9);
    cr_assert_float_eq(b[1].slo_met, 1.0, 1e-12);
    cr_assert_float_eq(b[2].slo_met, 0.0, 1e-12);
    free(b);
    /* a request in flight across bins */
    r[0].t_end = 2.6;
    r[0].t_first = 2.5;
    b = ms_report_timeline(r, 1, NULL, 0, &slo, 2.6, 1.0, &nb, &bin);
    cr_assert_eq(nb, 3);
    cr_assert(b[0].in_flight == 1 && b[1].in_flight == 1 && b[2].in_flight == 0);
    cr_assert_eq(b[2].completed, 1);
    free(b);
    /* too many bins: the bin grows */
    b = ms_report_timeline(r, 1, NULL, 0, &slo, 1000.0, 0.001, &nb, &bin);
    cr_assert_eq(nb, MS_REPORT_MAX_BINS);
    cr_assert_float_eq(bin, 0.01, 1e-12);
    free(b);
    ms_report_reqs_fini(r, 4);
}

Test(report, files, .timeout = T_TIMEOUT) {
    ms_report_req r[4];
    ms_report_sample smp[4];
    s_hand_reqs(r);
    s_hand_samples(smp);
    snprintf(r[3].message, sizeof r[3].message, "broker overloaded: \"12\", held");
    const ms_report_slo slo = {.ttft_ms = 400, .tbt_ms = 60};
    ms_report_summary s;
    ms_report_summarize(r, 4, smp, 4, &slo, &s);
    const ms_report_meta meta = {.trace_path = "x.csv",
                                 .trace_format = "2025",
                                 .rows = 4,
                                 .time_scale = 0.5,
                                 .rate = 1,
                                 .ignore_eos = true};
    char err[MS_ERR_SIZE];
    const char *json = s_tmp("report.json"), *csv = s_tmp("requests.csv"),
               *tl = s_tmp("timeline.csv"), *svg = s_tmp("timeline.svg");
    cr_assert_eq(ms_report_write_json(json, &meta, &s, err, sizeof err), 0, "%s", err);
    size_t len = 0;
    char *text = (char *)ms_read_file(json, 1 << 20, &len, err, sizeof err);
    cr_assert_not_null(text);
    cJSON *root = cJSON_Parse(text);
    cr_assert_not_null(root, "report.json does not parse");
    const cJSON *all = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "modalities"), "all");
    cr_assert_eq(cJSON_GetObjectItem(all, "requests")->valuedouble, 4);
    cr_assert_eq(cJSON_GetObjectItem(all, "slo_attainment")->valuedouble, 0.5);
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(all, "ttft_ms"), "p99")->valuedouble, 496);
    cr_assert_eq(
        cJSON_GetObjectItem(cJSON_GetObjectItem(all, "errors_by_code"), "overloaded")->valuedouble,
        1);
    const cJSON *is = cJSON_GetObjectItem(root, "instance_seconds");
    cr_assert_eq(cJSON_GetObjectItem(is, "total")->valuedouble, 10.5);
    cr_assert_eq(
        cJSON_GetObjectItem(cJSON_GetObjectItem(is, "by_stage_set"), "prefill+decode")->valuedouble,
        3.0);
    cJSON_Delete(root);
    free(text);
    cr_assert_eq(ms_report_write_requests_csv(csv, r, 4, &slo, err, sizeof err), 0, "%s", err);
    text = (char *)ms_read_file(csv, 1 << 20, &len, err, sizeof err);
    int lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    cr_assert_eq(lines, 5);
    cr_assert_not_null(
        strstr(text, "\n0,0,text,0,0,0,0,0,0,5,0,0.000000,0.000000,100.000,50.000,"));
    cr_assert_not_null(strstr(text, ",overloaded,0,"));
    cr_assert_not_null(strstr(text, "\"broker overloaded: \"\"12\"\", held\"\n")); /* quoted */
    free(text);
    int nb = 0;
    double bin = 0;
    ms_report_bin *b = ms_report_timeline(r, 4, smp, 4, &slo, s.duration_s, 1.0, &nb, &bin);
    cr_assert_eq(ms_report_write_timeline_csv(tl, b, nb, bin, err, sizeof err), 0, "%s", err);
    text = (char *)ms_read_file(tl, 1 << 20, &len, err, sizeof err);
    cr_assert_not_null(strstr(text, ",actors_encode,"));
    cr_assert_not_null(strstr(text, "\n2.000,1.000,2,2,1,1,0,1,"));
    free(text);
    cr_assert_eq(
        ms_report_write_svg(svg, "a <title> & more", r, 4, b, nb, bin, &slo, err, sizeof err), 0,
        "%s", err);
    text = (char *)ms_read_file(svg, 1 << 20, &len, err, sizeof err);
    cr_assert_eq(strncmp(text, "<svg ", 5), 0);
    cr_assert_not_null(strstr(text, "a &lt;title&gt; &amp; more"));
    cr_assert_not_null(strstr(text, "</svg>\n"));
    int circles = 0;
    for (const char *p = text; (p = strstr(p, "<circle")); p++)
        circles++;
    cr_assert_eq(circles, 3, "one dot per completed request");
    free(text);
    free(b);
    FILE *f = fopen("/dev/null", "w");
    ms_report_print(f, &s);
    fclose(f);
    unlink(json);
    unlink(csv);
    unlink(tl);
    unlink(svg);
    cr_assert_eq(ms_report_write_json("/nonexistent/dir/r.json", &meta, &s, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "cannot create"));
    ms_report_reqs_fini(r, 4);
}
