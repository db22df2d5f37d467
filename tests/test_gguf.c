/* test_gguf.c — GGUF reader and writer: round trips, interoperability with
 * gguf-py's writer (a committed fixture), and one test per malformation class
 * (each bad file is a good one with a few bytes patched, opened from memory). */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "ms_common.h"
#include "ms_test.h"
#include "quant.h"

/* ---- helpers --------------------------------------------------------------- */

static char s_tmp[64];

static const char *s_tmp_path(void) {
    snprintf(s_tmp, sizeof s_tmp, "/tmp/ms_test_gguf_%d.gguf", (int)getpid());
    return s_tmp;
}

/* Writes w to a temp file and returns the bytes (malloc'd). */
static uint8_t *s_write_mem(const ms_gguf_writer *w, size_t *n) {
    char err[MS_ERR_SIZE];
    const char *path = s_tmp_path();
    cr_assert_eq(ms_gguf_writer_write(w, path, err, sizeof err), 0, "write: %s", err);
    uint8_t *p = ms_read_file(path, 1u << 30, n, err, sizeof err);
    cr_assert_not_null(p, "read: %s", err);
    unlink(path);
    return p;
}

/* The reference good file (see s_good). */
static float s_t0[64];
static ms_block_q8_0 s_t1[2];
static ms_fp16 s_t2[16];

static ms_gguf_writer *s_good_writer(void) {
    ms_gguf_writer *w = ms_gguf_writer_new();
    ms_gguf_set_str(w, "general.architecture", "llama");
    ms_gguf_set_u32(w, "k.one", 7);
    ms_gguf_set_u32(w, "k.two", 9);
    const char *strs[] = {"x", "yy", "zzz"};
    ms_gguf_set_arr(w, "k.strs", MS_GGUF_STRING, strs, 3);
    int32_t ints[] = {1, 2, 3, 4};
    ms_gguf_set_arr(w, "k.ints", MS_GGUF_INT32, ints, 4);
    ms_gguf_set_i32(w, "k.neg", -5);
    ms_gguf_set_u64(w, "k.big", 1ull << 40);
    ms_gguf_set_f32(w, "k.f", 0.5f);
    ms_gguf_set_bool(w, "k.b", true);
    for (int i = 0; i < 64; i++)
        s_t0[i] = (float)i - 10.0f;
    ms_quantize_row(MS_TYPE_Q8_0, s_t0, s_t1, 64);
    for (int i = 0; i < 16; i++)
        s_t2[i] = ms_fp32_to_fp16((float)i);
    cr_assert_eq(ms_gguf_add_tensor(w, "t0", MS_TYPE_F32, 2, (int64_t[]){32, 2}, s_t0, 256), 0);
    cr_assert_eq(ms_gguf_add_tensor(w, "t1", MS_TYPE_Q8_0, 1, (int64_t[]){64}, s_t1, 68), 0);
    cr_assert_eq(ms_gguf_add_tensor(w, "t2", MS_TYPE_F16, 1, (int64_t[]){16}, s_t2, 32), 0);
    return w;
}

/* Keys: general.architecture k.one k.two k.strs k.ints k.neg k.big k.f k.b;
 * tensors t0 f32 [32,2] @0, t1 q8_0 [64] @256, t2 f16 [16] @352. */
static uint8_t *s_good(size_t *n) {
    ms_gguf_writer *w = s_good_writer();
    uint8_t *p = s_write_mem(w, n);
    ms_gguf_writer_destroy(&w);
    return p;
}

/* Offset just past the length-prefixed string `name` in the header. */
static size_t s_after(const uint8_t *p, size_t n, const char *name) {
    size_t len = strlen(name);
    uint8_t pat[256];
    uint64_t l64 = len;
    memcpy(pat, &l64, 8);
    memcpy(pat + 8, name, len);
    for (size_t at = 0; at + 8 + len <= n; at++)
        if (!memcmp(p + at, pat, 8 + len)) return at + 8 + len;
    cr_assert_fail("'%s' not found in the file", name);
    return 0;
}

static void s_put32(uint8_t *p, size_t at, uint32_t v) {
    memcpy(p + at, &v, 4);
}
static void s_put64(uint8_t *p, size_t at, uint64_t v) {
    memcpy(p + at, &v, 8);
}
static uint64_t s_get64(const uint8_t *p, size_t at) {
    uint64_t v;
    memcpy(&v, p + at, 8);
    return v;
}

/* Tensor info fields of `name` (n_dims known from s_good). */
static size_t s_tensor_ndims_at(const uint8_t *p, size_t n, const char *name) {
    return s_after(p, n, name);
}
static size_t s_tensor_type_at(const uint8_t *p, size_t n, const char *name, int n_dims) {
    return s_after(p, n, name) + 4 + 8 * (size_t)n_dims;
}
static size_t s_tensor_off_at(const uint8_t *p, size_t n, const char *name, int n_dims) {
    return s_tensor_type_at(p, n, name, n_dims) + 4;
}

/* Opens a copy of exactly n bytes (so a sanitizer sees any overread) and
 * asserts that it is rejected with a message containing every word. */
static void s_expect_bad(const uint8_t *p, size_t n, const char *w1, const char *w2) {
    uint8_t *copy = ms_xmalloc(n);
    if (n) memcpy(copy, p, n);
    char err[MS_ERR_SIZE] = "";
    ms_gguf *g = ms_gguf_open_memory(copy, n, err, sizeof err);
    cr_assert_null(g, "accepted a bad file (expected '%s')", w1);
    cr_assert(strstr(err, w1), "message '%s' lacks '%s'", err, w1);
    if (w2) cr_assert(strstr(err, w2), "message '%s' lacks '%s'", err, w2);
    free(copy);
}

static ms_gguf *s_open_ok(const uint8_t *p, size_t n) {
    char err[MS_ERR_SIZE] = "";
    ms_gguf *g = ms_gguf_open_memory(p, n, err, sizeof err);
    cr_assert_not_null(g, "rejected a good file: %s", err);
    return g;
}

/* ---- valid files ----------------------------------------------------------- */

Test(gguf, good_file_reads_back, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    ms_gguf *g = s_open_ok(p, n);
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_gguf_version(g), 3);
    cr_assert_eq(ms_gguf_alignment(g), 32);
    cr_assert_eq(ms_gguf_data_offset(g) % 32, 0);
    cr_assert_eq(n, ms_gguf_data_offset(g) + 384);
    cr_assert_eq(ms_gguf_n_kv(g), 9);
    const char *order[] = {"general.architecture",
                           "k.one",
                           "k.two",
                           "k.strs",
                           "k.ints",
                           "k.neg",
                           "k.big",
                           "k.f",
                           "k.b"};
    for (int i = 0; i < 9; i++) {
        cr_assert_str_eq(ms_gguf_key(g, i), order[i]);
        cr_assert_eq(ms_gguf_find_key(g, order[i]), i);
    }
    cr_assert_eq(ms_gguf_find_key(g, "nope"), -1);
    const char *s;
    cr_assert_eq(ms_gguf_get_str(g, "general.architecture", &s, err, sizeof err), 0);
    cr_assert_str_eq(s, "llama");
    uint32_t u32;
    cr_assert_eq(ms_gguf_get_u32(g, "k.two", &u32, err, sizeof err), 0);
    cr_assert_eq(u32, 9);
    int32_t i32;
    cr_assert_eq(ms_gguf_get_i32(g, "k.neg", &i32, err, sizeof err), 0);
    cr_assert_eq(i32, -5);
    uint64_t u64;
    cr_assert_eq(ms_gguf_get_u64(g, "k.big", &u64, err, sizeof err), 0);
    cr_assert_eq(u64, 1ull << 40);
    float f;
    cr_assert_eq(ms_gguf_get_f32(g, "k.f", &f, err, sizeof err), 0);
    cr_assert_eq(f, 0.5f);
    bool b = false;
    cr_assert_eq(ms_gguf_get_bool(g, "k.b", &b, err, sizeof err), 0);
    cr_assert(b);
    int64_t ix;
    uint64_t cnt;
    cr_assert_eq(ms_gguf_get_arr(g, "k.strs", MS_GGUF_STRING, &ix, &cnt, err, sizeof err), 0);
    cr_assert_eq(cnt, 3);
    cr_assert_null(ms_gguf_arr_data(g, ix));
    const char *want[] = {"x", "yy", "zzz"};
    for (uint64_t j = 0; j < 3; j++) {
        uint64_t len;
        const char *e = ms_gguf_arr_str(g, ix, j, &len);
        cr_assert_eq(len, strlen(want[j]));
        cr_assert_eq(memcmp(e, want[j], len), 0);
    }
    cr_assert_eq(ms_gguf_get_arr(g, "k.ints", MS_GGUF_INT32, &ix, &cnt, err, sizeof err), 0);
    cr_assert_eq(ms_gguf_kv_type(g, ix), MS_GGUF_ARRAY);
    cr_assert_eq(ms_gguf_arr_type(g, ix), MS_GGUF_INT32);
    cr_assert_eq(ms_gguf_arr_n(g, ix), 4);
    int32_t ints[4];
    memcpy(ints, ms_gguf_arr_data(g, ix), sizeof ints);
    cr_assert(ints[0] == 1 && ints[3] == 4);
    /* non-arrays report element type uint8 and count 0 */
    cr_assert_eq(ms_gguf_arr_n(g, 1), 0);
    cr_assert_eq(ms_gguf_arr_type(g, 1), MS_GGUF_UINT8);

    cr_assert_eq(ms_gguf_n_tensors(g), 3);
    ms_tensor *t0 = ms_gguf_find_tensor(g, "t0"), *t1 = ms_gguf_find_tensor(g, "t1");
    ms_tensor *t2 = ms_gguf_tensor(g, 2);
    cr_assert(t0 && t1 && t2);
    cr_assert_str_eq(t2->name, "t2");
    cr_assert_eq(t0->type, MS_TYPE_F32);
    cr_assert(t0->n_dims == 2 && t0->ne[0] == 32 && t0->ne[1] == 2 && t0->ne[2] == 1);
    cr_assert_eq(t0->nbytes, 256);
    cr_assert_eq(memcmp(t0->data, s_t0, 256), 0);
    cr_assert_eq(t1->type, MS_TYPE_Q8_0);
    cr_assert_eq(t1->nbytes, 68);
    cr_assert_eq(memcmp(t1->data, s_t1, 68), 0);
    cr_assert_eq(memcmp(t2->data, s_t2, 32), 0);
    cr_assert_eq(ms_gguf_tensor_offset(g, 0), 0);
    cr_assert_eq(ms_gguf_tensor_offset(g, 1), 256);
    cr_assert_eq(ms_gguf_tensor_offset(g, 2), 352);
    cr_assert_eq((const uint8_t *)t2->data, p + ms_gguf_data_offset(g) + 352);
    cr_assert_null(ms_gguf_find_tensor(g, "t3"));
    ms_gguf_close(&g);
    cr_assert_null(g);
    ms_gguf_close(&g); /* closing NULL is a no-op */
    free(p);
}

Test(gguf, round_trip_every_type, .timeout = 10) {
    ms_gguf_writer *w = ms_gguf_writer_new();
    ms_gguf_set_u32(w, "s.u32", 4000000000u);
    ms_gguf_set_i32(w, "s.i32", INT32_MIN);
    ms_gguf_set_u64(w, "s.u64", UINT64_MAX);
    ms_gguf_set_f32(w, "s.f32", -3.25f);
    ms_gguf_set_bool(w, "s.bool", false);
    ms_gguf_set_str(w, "s.str", "ünïcødé \"quoted\"\n");
    ms_gguf_set_str(w, "s.empty", "");
    uint8_t a_u8[] = {0, 255, 7};
    int8_t a_i8[] = {-128, 127};
    uint16_t a_u16[] = {65535, 1};
    int16_t a_i16[] = {-32768, 32767};
    uint32_t a_u32[] = {1, 2, 4000000000u};
    int32_t a_i32[] = {INT32_MIN, INT32_MAX};
    float a_f32[] = {1.5f, -0.0f, 1e30f};
    uint8_t a_bool[] = {1, 0, 1, 1};
    uint64_t a_u64[] = {UINT64_MAX, 0};
    int64_t a_i64[] = {INT64_MIN, INT64_MAX, -1};
    double a_f64[] = {3.141592653589793, -1e300};
    const char *a_str[] = {"<s>", "", "wörld", "\xe2\x96\x81the"};
    struct {
        const char *key;
        ms_gguf_type t;
        const void *data;
        uint64_t n;
        size_t es;
    } arrs[] = {
        {"a.u8", MS_GGUF_UINT8, a_u8, 3, 1},     {"a.i8", MS_GGUF_INT8, a_i8, 2, 1},
        {"a.u16", MS_GGUF_UINT16, a_u16, 2, 2},  {"a.i16", MS_GGUF_INT16, a_i16, 2, 2},
        {"a.u32", MS_GGUF_UINT32, a_u32, 3, 4},  {"a.i32", MS_GGUF_INT32, a_i32, 2, 4},
        {"a.f32", MS_GGUF_FLOAT32, a_f32, 3, 4}, {"a.bool", MS_GGUF_BOOL, a_bool, 4, 1},
        {"a.u64", MS_GGUF_UINT64, a_u64, 2, 8},  {"a.i64", MS_GGUF_INT64, a_i64, 3, 8},
        {"a.f64", MS_GGUF_FLOAT64, a_f64, 2, 8}, {"a.empty", MS_GGUF_INT32, a_i32, 0, 4},
    };
    for (size_t k = 0; k < MS_ARRAY_LEN(arrs); k++)
        ms_gguf_set_arr(w, arrs[k].key, arrs[k].t, arrs[k].data, arrs[k].n);
    ms_gguf_set_arr(w, "a.str", MS_GGUF_STRING, a_str, 4);

    /* every tensor type, with data patterns that are easy to compare */
    const ms_type types[] = {MS_TYPE_F32,  MS_TYPE_F16,  MS_TYPE_BF16,
                             MS_TYPE_Q8_0, MS_TYPE_Q4_0, MS_TYPE_Q4_K};
    uint8_t *datas[MS_ARRAY_LEN(types)];
    size_t sizes[MS_ARRAY_LEN(types)];
    for (size_t k = 0; k < MS_ARRAY_LEN(types); k++) {
        int64_t ne[3] = {256, 3, 2};
        sizes[k] = ms_row_bytes(types[k], 256) * 6;
        datas[k] = ms_xmalloc(sizes[k]);
        for (size_t j = 0; j < sizes[k]; j++)
            datas[k][j] = (uint8_t)(j * 31 + k);
        char name[32];
        snprintf(name, sizeof name, "w.%s", ms_type_name(types[k]));
        cr_assert_eq(ms_gguf_add_tensor(w, name, types[k], 3, ne, datas[k], sizes[k]), 0);
    }
    cr_assert_eq(ms_gguf_add_tensor(w, "w.empty", MS_TYPE_F32, 2, (int64_t[]){0, 4}, NULL, 0), 0);
    cr_assert_eq(ms_gguf_add_tensor(w, "w.odd", MS_TYPE_F16, 1, (int64_t[]){3}, NULL, 6), 0);

    size_t n;
    uint8_t *p = s_write_mem(w, &n);
    ms_gguf_writer_destroy(&w);
    cr_assert_null(w);
    ms_gguf *g = s_open_ok(p, n);
    char err[MS_ERR_SIZE];
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f;
    bool b = true;
    const char *s;
    cr_assert(!ms_gguf_get_u32(g, "s.u32", &u32, err, sizeof err) && u32 == 4000000000u);
    cr_assert(!ms_gguf_get_i32(g, "s.i32", &i32, err, sizeof err) && i32 == INT32_MIN);
    cr_assert(!ms_gguf_get_u64(g, "s.u64", &u64, err, sizeof err) && u64 == UINT64_MAX);
    cr_assert(!ms_gguf_get_f32(g, "s.f32", &f, err, sizeof err) && f == -3.25f);
    cr_assert(!ms_gguf_get_bool(g, "s.bool", &b, err, sizeof err) && !b);
    cr_assert(!ms_gguf_get_str(g, "s.str", &s, err, sizeof err));
    cr_assert_str_eq(s, "ünïcødé \"quoted\"\n");
    cr_assert(!ms_gguf_get_str(g, "s.empty", &s, err, sizeof err));
    cr_assert_str_eq(s, "");
    for (size_t k = 0; k < MS_ARRAY_LEN(arrs); k++) {
        int64_t ix;
        uint64_t cnt;
        cr_assert_eq(ms_gguf_get_arr(g, arrs[k].key, arrs[k].t, &ix, &cnt, err, sizeof err), 0,
                     "%s", err);
        cr_assert_eq(cnt, arrs[k].n, "%s", arrs[k].key);
        if (cnt)
            cr_assert_eq(memcmp(ms_gguf_arr_data(g, ix), arrs[k].data, cnt * arrs[k].es), 0, "%s",
                         arrs[k].key);
    }
    int64_t ix;
    uint64_t cnt;
    cr_assert_eq(ms_gguf_get_arr(g, "a.str", MS_GGUF_STRING, &ix, &cnt, err, sizeof err), 0);
    cr_assert_eq(cnt, 4);
    for (uint64_t j = 0; j < cnt; j++) {
        uint64_t len;
        const char *e = ms_gguf_arr_str(g, ix, j, &len);
        cr_assert_eq(len, strlen(a_str[j]));
        cr_assert_eq(memcmp(e, a_str[j], len), 0);
    }
    for (size_t k = 0; k < MS_ARRAY_LEN(types); k++) {
        char name[32];
        snprintf(name, sizeof name, "w.%s", ms_type_name(types[k]));
        char e2[MS_ERR_SIZE];
        ms_tensor *t = ms_gguf_expect_tensor(g, name, 3, (int64_t[]){256, 3, 2}, 1ull << types[k],
                                             e2, sizeof e2);
        cr_assert_not_null(t, "%s", e2);
        cr_assert_eq(t->type, types[k]);
        cr_assert_eq(t->nbytes, sizes[k]);
        cr_assert_eq(memcmp(t->data, datas[k], sizes[k]), 0, "%s", name);
        cr_assert_eq(((const uint8_t *)t->data - p) % 32, 0, "%s not aligned", name);
        free(datas[k]);
    }
    ms_tensor *te = ms_gguf_find_tensor(g, "w.empty");
    cr_assert(te && te->nbytes == 0 && te->ne[0] == 0 && te->ne[1] == 4);
    ms_tensor *to = ms_gguf_find_tensor(g, "w.odd");
    cr_assert(to && to->nbytes == 6);
    cr_assert_eq(memcmp(to->data, "\0\0\0\0\0\0", 6), 0);
    ms_gguf_close(&g);
    free(p);
}

Test(gguf, writer_replaces_key_in_place, .timeout = 10) {
    ms_gguf_writer *w = ms_gguf_writer_new();
    ms_gguf_set_u32(w, "a", 1);
    ms_gguf_set_str(w, "b", "first");
    ms_gguf_set_u32(w, "c", 3);
    ms_gguf_set_str(w, "b", "second, longer");
    ms_gguf_set_f32(w, "a", 2.0f); /* the type may change too */
    size_t n;
    uint8_t *p = s_write_mem(w, &n);
    ms_gguf_writer_destroy(&w);
    ms_gguf *g = s_open_ok(p, n);
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_gguf_n_kv(g), 3);
    cr_assert_str_eq(ms_gguf_key(g, 0), "a");
    cr_assert_str_eq(ms_gguf_key(g, 1), "b");
    cr_assert_str_eq(ms_gguf_key(g, 2), "c");
    const char *s;
    float f;
    cr_assert(!ms_gguf_get_str(g, "b", &s, err, sizeof err));
    cr_assert_str_eq(s, "second, longer");
    cr_assert(!ms_gguf_get_f32(g, "a", &f, err, sizeof err) && f == 2.0f);
    cr_assert_eq(ms_gguf_n_tensors(g), 0);
    ms_gguf_close(&g);
    free(p);
}

Test(gguf, writer_custom_alignment, .timeout = 10) {
    ms_gguf_writer *w = ms_gguf_writer_new();
    ms_gguf_set_u32(w, "general.alignment", 64);
    cr_assert_eq(ms_gguf_add_tensor(w, "a", MS_TYPE_F32, 1, (int64_t[]){3}, NULL, 12), 0);
    cr_assert_eq(ms_gguf_add_tensor(w, "b", MS_TYPE_F32, 1, (int64_t[]){3}, NULL, 12), 0);
    size_t n;
    uint8_t *p = s_write_mem(w, &n);
    ms_gguf *g = s_open_ok(p, n);
    cr_assert_eq(ms_gguf_alignment(g), 64);
    cr_assert_eq(ms_gguf_data_offset(g) % 64, 0);
    cr_assert_eq(ms_gguf_tensor_offset(g, 1), 64);
    ms_gguf_close(&g);
    free(p);
    /* an invalid alignment key makes the write fail */
    char err[MS_ERR_SIZE] = "";
    ms_gguf_set_u32(w, "general.alignment", 48);
    cr_assert_eq(ms_gguf_writer_write(w, s_tmp_path(), err, sizeof err), -1);
    cr_assert(strstr(err, "general.alignment"), "%s", err);
    ms_gguf_writer_destroy(&w);
}

Test(gguf, writer_rejects_bad_tensors, .timeout = 10) {
    ms_gguf_writer *w = ms_gguf_writer_new();
    float d[64] = {0};
    cr_assert_eq(ms_gguf_add_tensor(w, "a", MS_TYPE_F32, 1, (int64_t[]){64}, d, 256), 0);
    cr_assert_eq(ms_gguf_add_tensor(w, "a", MS_TYPE_F32, 1, (int64_t[]){64}, d, 256), -1);
    cr_assert_eq(ms_gguf_add_tensor(w, "q", MS_TYPE_Q8_0, 1, (int64_t[]){48}, d, 51), -1);
    cr_assert_eq(ms_gguf_add_tensor(w, "s", MS_TYPE_F32, 1, (int64_t[]){64}, d, 255), -1);
    cr_assert_eq(ms_gguf_add_tensor(w, "n", MS_TYPE_F32, 0, (int64_t[]){64}, d, 256), -1);
    cr_assert_eq(ms_gguf_add_tensor(w, "n", MS_TYPE_F32, 5, (int64_t[]){1, 1, 1, 1, 1}, d, 4), -1);
    cr_assert_eq(ms_gguf_add_tensor(w, "t", (ms_type)14, 1, (int64_t[]){256}, d, 210), -1);
    cr_assert_eq(ms_gguf_add_tensor(w, "neg", MS_TYPE_F32, 2, (int64_t[]){4, -1}, d, 0), -1);
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(ms_gguf_writer_write(w, "/nonexistent-dir/x.gguf", err, sizeof err), -1);
    cr_assert(strstr(err, "/nonexistent-dir/x.gguf"), "%s", err);
    ms_gguf_writer_destroy(&w);
}

/* A file written by gguf-py (tools/gguf_pyseed.py), committed as a fuzz seed. */
Test(gguf, reads_gguf_py_file, .timeout = 10) {
    char err[MS_ERR_SIZE] = "";
    const char *path = ms_test_path(ms_test_source_dir(), "tests/fuzz/corpus/gguf/py_writer.gguf");
    ms_gguf *g = ms_gguf_open(path, err, sizeof err);
    cr_assert_not_null(g, "%s", err);
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f;
    bool b;
    const char *s;
    cr_assert(!ms_gguf_get_u32(g, "t.u8", &u32, err, sizeof err) && u32 == 200);
    cr_assert(!ms_gguf_get_i32(g, "t.i8", &i32, err, sizeof err) && i32 == -100);
    cr_assert(!ms_gguf_get_u32(g, "t.u16", &u32, err, sizeof err) && u32 == 60000);
    cr_assert(!ms_gguf_get_i32(g, "t.i16", &i32, err, sizeof err) && i32 == -30000);
    cr_assert(!ms_gguf_get_u32(g, "t.u32", &u32, err, sizeof err) && u32 == 4000000000u);
    cr_assert(!ms_gguf_get_i32(g, "t.i32", &i32, err, sizeof err) && i32 == -2000000000);
    cr_assert(!ms_gguf_get_f32(g, "t.f32", &f, err, sizeof err) && f == 0.25f);
    cr_assert(!ms_gguf_get_bool(g, "t.bool", &b, err, sizeof err) && b);
    cr_assert(!ms_gguf_get_str(g, "t.str", &s, err, sizeof err));
    cr_assert_str_eq(s, "héllo");
    cr_assert(!ms_gguf_get_u64(g, "t.u64", &u64, err, sizeof err) && u64 == 1ull << 50);
    cr_assert_eq(ms_gguf_kv_type(g, ms_gguf_find_key(g, "t.i64")), MS_GGUF_INT64);
    cr_assert(!ms_gguf_get_f32(g, "t.f64", &f, err, sizeof err) && f == 0.125f);
    int64_t ix;
    uint64_t n, len;
    cr_assert(!ms_gguf_get_arr(g, "t.arr_str", MS_GGUF_STRING, &ix, &n, err, sizeof err) && n == 3);
    const char *e = ms_gguf_arr_str(g, ix, 2, &len);
    cr_assert(len == strlen("ünï") && !memcmp(e, "ünï", len));
    cr_assert(!ms_gguf_get_arr(g, "t.arr_bool", MS_GGUF_BOOL, &ix, &n, err, sizeof err) && n == 3);
    cr_assert_eq(ms_gguf_n_tensors(g), 6);
    /* gguf-py writes numpy shapes reversed: (2, 64) becomes ne = [64, 2] */
    const int64_t ne[2] = {64, 2};
    const char *names[] = {"t.f32", "t.f16", "t.bf16", "t.q8_0", "t.q4_0"};
    const ms_type types[] = {MS_TYPE_F32, MS_TYPE_F16, MS_TYPE_BF16, MS_TYPE_Q8_0, MS_TYPE_Q4_0};
    const ms_tensor *tf = ms_gguf_find_tensor(g, "t.f32");
    cr_assert_not_null(tf);
    for (int k = 0; k < 5; k++) {
        ms_tensor *t = ms_gguf_expect_tensor(g, names[k], 2, ne, 1ull << types[k], err, sizeof err);
        cr_assert_not_null(t, "%s", err);
        /* every encoding decodes close to the f32 original */
        float row[64];
        for (int r = 0; r < 2; r++) {
            ms_dequantize_row(t->type, (const uint8_t *)t->data + r * ms_row_bytes(t->type, 64),
                              row, 64);
            double nmse = ms_test_nmse(row, (const float *)tf->data + 64 * r, 64);
            cr_assert_lt(nmse, t->type == MS_TYPE_Q4_0 ? 3e-2 : 1e-4, "%s nmse %g", names[k], nmse);
        }
    }
    ms_tensor *t3 = ms_gguf_expect_tensor(g, "t.3d", 3, (int64_t[]){4, 3, 2}, 0, err, sizeof err);
    cr_assert_not_null(t3, "%s", err);
    float v;
    memcpy(&v, (const uint8_t *)t3->data + 4 * 23, 4);
    cr_assert_eq(v, 23.0f);
    ms_gguf_close(&g);
}

Test(gguf, open_from_file_matches_memory, .timeout = 10) {
    ms_gguf_writer *w = s_good_writer();
    char err[MS_ERR_SIZE] = "";
    const char *path = s_tmp_path();
    cr_assert_eq(ms_gguf_writer_write(w, path, err, sizeof err), 0, "%s", err);
    ms_gguf_writer_destroy(&w);
    ms_gguf *g = ms_gguf_open(path, err, sizeof err);
    cr_assert_not_null(g, "%s", err);
    cr_assert_eq(ms_gguf_n_kv(g), 9);
    ms_tensor *t = ms_gguf_find_tensor(g, "t0");
    cr_assert(t && !memcmp(t->data, s_t0, 256));
    ms_gguf_close(&g);
    /* a truncated file names the path and the problem */
    cr_assert_eq(truncate(path, 100), 0);
    cr_assert_null(ms_gguf_open(path, err, sizeof err));
    cr_assert(strstr(err, path) && strstr(err, "n_kv = 9"), "%s", err);
    unlink(path);
    cr_assert_null(ms_gguf_open(path, err, sizeof err));
    cr_assert(strstr(err, "cannot open"), "%s", err);
    FILE *f = fopen(path, "wb");
    fclose(f);
    cr_assert_null(ms_gguf_open(path, err, sizeof err));
    cr_assert(strstr(err, "empty"), "%s", err);
    unlink(path);
}

/* ---- getters --------------------------------------------------------------- */

Test(gguf, getter_type_errors_and_missing, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    ms_gguf *g = s_open_ok(p, n);
    char err[MS_ERR_SIZE];
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f;
    bool b;
    const char *s;
    int64_t ix;
    uint64_t cnt;
    cr_assert_eq(ms_gguf_get_u32(g, "general.architecture", &u32, err, sizeof err), -1);
    cr_assert_str_eq(err, "key 'general.architecture' has type string, expected uint32");
    cr_assert_eq(ms_gguf_get_str(g, "k.one", &s, err, sizeof err), -1);
    cr_assert_str_eq(err, "key 'k.one' has type uint32, expected string");
    cr_assert_eq(ms_gguf_get_f32(g, "k.one", &f, err, sizeof err), -1);
    cr_assert_str_eq(err, "key 'k.one' has type uint32, expected float32");
    cr_assert_eq(ms_gguf_get_bool(g, "k.f", &b, err, sizeof err), -1);
    cr_assert_str_eq(err, "key 'k.f' has type float32, expected bool");
    cr_assert_eq(ms_gguf_get_u32(g, "k.b", &u32, err, sizeof err), -1);
    cr_assert_str_eq(err, "key 'k.b' has type bool, expected uint32");
    cr_assert_eq(ms_gguf_get_u32(g, "k.ints", &u32, err, sizeof err), -1);
    cr_assert_str_eq(err, "key 'k.ints' has type array of int32, expected uint32");
    cr_assert_eq(ms_gguf_get_arr(g, "k.strs", MS_GGUF_INT32, &ix, &cnt, err, sizeof err), -1);
    cr_assert_str_eq(err, "key 'k.strs' has type array of string, expected array of int32");
    cr_assert_eq(ms_gguf_get_arr(g, "k.one", MS_GGUF_UINT32, &ix, &cnt, err, sizeof err), -1);
    cr_assert_str_eq(err, "key 'k.one' has type uint32, expected array of uint32");
    cr_assert_eq(ms_gguf_get_u32(g, "llama.block_count", &u32, err, sizeof err), -1);
    cr_assert_str_eq(err, "missing key 'llama.block_count'");
    cr_assert_eq(ms_gguf_get_str(g, "nope", &s, err, sizeof err), -1);
    cr_assert_str_eq(err, "missing key 'nope'");
    cr_assert_eq(ms_gguf_get_arr(g, "nope", MS_GGUF_STRING, &ix, &cnt, err, sizeof err), -1);
    cr_assert_str_eq(err, "missing key 'nope'");
    /* integer conversions: any integer type whose value fits */
    cr_assert(!ms_gguf_get_u64(g, "k.one", &u64, err, sizeof err) && u64 == 7);
    cr_assert(!ms_gguf_get_i32(g, "k.one", &i32, err, sizeof err) && i32 == 7);
    cr_assert_eq(ms_gguf_get_u32(g, "k.neg", &u32, err, sizeof err), -1);
    cr_assert(strstr(err, "'k.neg'") && strstr(err, "-5") && strstr(err, "does not fit uint32"),
              "%s", err);
    cr_assert_eq(ms_gguf_get_u64(g, "k.neg", &u64, err, sizeof err), -1);
    cr_assert_eq(ms_gguf_get_u32(g, "k.big", &u32, err, sizeof err), -1);
    cr_assert(strstr(err, "1099511627776") && strstr(err, "does not fit uint32"), "%s", err);
    cr_assert_eq(ms_gguf_get_i32(g, "k.big", &i32, err, sizeof err), -1);
    ms_gguf_close(&g);
    free(p);
}

Test(gguf, integer_getter_ranges, .timeout = 10) {
    ms_gguf_writer *w = ms_gguf_writer_new();
    ms_gguf_set_u64(w, "u64.max", UINT64_MAX);
    ms_gguf_set_u64(w, "u64.i32max", INT32_MAX);
    ms_gguf_set_u64(w, "u64.u32max", UINT32_MAX);
    ms_gguf_set_i32(w, "i32.min", INT32_MIN);
    size_t n;
    uint8_t *p = s_write_mem(w, &n);
    ms_gguf_writer_destroy(&w);
    ms_gguf *g = s_open_ok(p, n);
    char err[MS_ERR_SIZE];
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    cr_assert(!ms_gguf_get_u64(g, "u64.max", &u64, err, sizeof err) && u64 == UINT64_MAX);
    cr_assert(!ms_gguf_get_i32(g, "u64.i32max", &i32, err, sizeof err) && i32 == INT32_MAX);
    cr_assert(!ms_gguf_get_u32(g, "u64.u32max", &u32, err, sizeof err) && u32 == UINT32_MAX);
    cr_assert_eq(ms_gguf_get_i32(g, "u64.u32max", &i32, err, sizeof err), -1);
    cr_assert(!ms_gguf_get_i32(g, "i32.min", &i32, err, sizeof err) && i32 == INT32_MIN);
    cr_assert_eq(ms_gguf_get_u32(g, "i32.min", &u32, err, sizeof err), -1);
    ms_gguf_close(&g);
    free(p);
}

Test(gguf, float64_getter_range, .timeout = 10) {
    ms_gguf_writer *w = ms_gguf_writer_new();
    double big = 1e300, small = 0.1;
    uint64_t bits;
    memcpy(&bits, &big, 8);
    ms_gguf_set_u64(w, "d.big", bits);
    memcpy(&bits, &small, 8);
    ms_gguf_set_u64(w, "d.small", bits);
    size_t n;
    uint8_t *p = s_write_mem(w, &n);
    ms_gguf_writer_destroy(&w);
    s_put32(p, s_after(p, n, "d.big"), MS_GGUF_FLOAT64);
    s_put32(p, s_after(p, n, "d.small"), MS_GGUF_FLOAT64);
    ms_gguf *g = s_open_ok(p, n);
    char err[MS_ERR_SIZE];
    float f;
    cr_assert(!ms_gguf_get_f32(g, "d.small", &f, err, sizeof err) && f == 0.1f);
    cr_assert_eq(ms_gguf_get_f32(g, "d.big", &f, err, sizeof err), -1);
    cr_assert(strstr(err, "'d.big'") && strstr(err, "does not fit float32"), "%s", err);
    ms_gguf_close(&g);
    free(p);
}

Test(gguf, expect_tensor_messages, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    ms_gguf *g = s_open_ok(p, n);
    char err[MS_ERR_SIZE];
    cr_assert_not_null(ms_gguf_expect_tensor(g, "t0", 2, (int64_t[]){32, 2}, 0, err, sizeof err));
    cr_assert_null(
        ms_gguf_expect_tensor(g, "output.weight", 2, (int64_t[]){32, 2}, 0, err, sizeof err));
    cr_assert_str_eq(err, "missing tensor 'output.weight'");
    cr_assert_null(ms_gguf_expect_tensor(g, "t0", 2, (int64_t[]){32, 3}, 0, err, sizeof err));
    cr_assert_str_eq(err, "tensor 't0' has shape [32, 2], expected [32, 3]");
    cr_assert_null(ms_gguf_expect_tensor(g, "t0", 1, (int64_t[]){64}, 0, err, sizeof err));
    cr_assert_str_eq(err, "tensor 't0' has shape [32, 2], expected [64]");
    /* trailing 1s compare equal, as in llama.cpp */
    cr_assert_not_null(ms_gguf_expect_tensor(g, "t1", 2, (int64_t[]){64, 1}, 0, err, sizeof err));
    cr_assert_null(ms_gguf_expect_tensor(g, "t1", 1, (int64_t[]){64},
                                         (1ull << MS_TYPE_F32) | (1ull << MS_TYPE_F16), err,
                                         sizeof err));
    cr_assert_str_eq(err, "tensor 't1' has type q8_0, expected f32, f16");
    cr_assert_not_null(ms_gguf_expect_tensor(g, "t1", 1, (int64_t[]){64},
                                             (1ull << MS_TYPE_F32) | (1ull << MS_TYPE_Q8_0), err,
                                             sizeof err));
    ms_gguf_close(&g);
    free(p);
}

/* ---- malformations: header ------------------------------------------------- */

Test(gguf, rejects_empty_and_every_truncation, .timeout = 30) {
    size_t n;
    uint8_t *p = s_good(&n);
    s_expect_bad(p, 0, "empty", NULL);
    char err[MS_ERR_SIZE];
    cr_assert_null(ms_gguf_open_memory(NULL, 0, err, sizeof err));
    for (size_t len = 1; len < n; len++) {
        uint8_t *copy = ms_xmalloc(len);
        memcpy(copy, p, len);
        err[0] = 0;
        ms_gguf *g = ms_gguf_open_memory(copy, len, err, sizeof err);
        cr_assert_null(g, "accepted a prefix of %zu of %zu bytes", len, n);
        cr_assert_gt(strlen(err), 10, "no message for a prefix of %zu bytes", len);
        free(copy);
    }
    ms_gguf *g = s_open_ok(p, n);
    ms_gguf_close(&g);
    free(p);
}

Test(gguf, rejects_bad_magic, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    p[0] = 'X';
    s_expect_bad(p, n, "bad magic", "58 47 55 46");
    s_expect_bad(p, 3, "bad magic", NULL);
    free(p);
}

Test(gguf, rejects_bad_version, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    s_put32(p, 4, 1);
    s_expect_bad(p, n, "unsupported version 1", NULL);
    s_put32(p, 4, 4);
    s_expect_bad(p, n, "unsupported version 4", NULL);
    s_put32(p, 4, 0x03000000u);
    s_expect_bad(p, n, "unsupported version", "big-endian");
    s_put32(p, 4, 2); /* v2 has the same layout and is accepted */
    ms_gguf *g = s_open_ok(p, n);
    cr_assert_eq(ms_gguf_version(g), 2);
    ms_gguf_close(&g);
    free(p);
}

Test(gguf, rejects_hostile_counts, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    uint64_t nt = s_get64(p, 8), nkv = s_get64(p, 16);
    s_put64(p, 16, UINT64_MAX);
    s_expect_bad(p, n, "n_kv = 18446744073709551615", NULL);
    s_put64(p, 16, nkv + 1);
    s_expect_bad(p, n, "", NULL); /* still rejected, whatever the message */
    s_put64(p, 16, nkv);
    s_put64(p, 8, 1ull << 62);
    s_expect_bad(p, n, "n_tensors = 4611686018427387904", NULL);
    s_put64(p, 8, nt + 1);
    s_expect_bad(p, n, "", NULL);
    free(p);
}

/* ---- malformations: key/values --------------------------------------------- */

Test(gguf, rejects_string_lengths_past_end, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    /* the value "llama": its u64 length sits after the key and the type */
    size_t at = s_after(p, n, "general.architecture") + 4;
    s_put64(p, at, 1000000);
    s_expect_bad(p, n, "key 'general.architecture'", "string length 1000000");
    s_put64(p, at, UINT64_MAX);
    s_expect_bad(p, n, "key 'general.architecture'", "exceeds the limit");
    free(p);
    /* a key's own length */
    p = s_good(&n);
    s_put64(p, 24, 1ull << 40);
    s_expect_bad(p, n, "key #0", "string length 1099511627776");
    free(p);
    /* an element of a string array */
    p = s_good(&n);
    at = s_after(p, n, "k.strs") + 4 + 4 + 8 + 8 + 1; /* type, elem type, count, "x" */
    cr_assert_eq(s_get64(p, at), 2);
    s_put64(p, at, n);
    s_expect_bad(p, n, "key 'k.strs'", "element 1 of 3");
    free(p);
}

Test(gguf, rejects_array_counts_past_end, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_after(p, n, "k.ints") + 8; /* type, elem type, then the count */
    cr_assert_eq(s_get64(p, at), 4);
    s_put64(p, at, 10000000);
    s_expect_bad(p, n, "key 'k.ints'", "array of 10000000 int32");
    s_put64(p, at, UINT64_MAX);
    s_expect_bad(p, n, "key 'k.ints'", "exceeds the limit");
    free(p);
    p = s_good(&n);
    at = s_after(p, n, "k.strs") + 8;
    s_put64(p, at, 1000000);
    s_expect_bad(p, n, "key 'k.strs'", "array of 1000000 string");
    free(p);
}

Test(gguf, rejects_duplicate_keys, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_after(p, n, "k.two");
    memcpy(p + at - 3, "one", 3);
    s_expect_bad(p, n, "duplicate key 'k.one'", NULL);
    free(p);
}

Test(gguf, rejects_unknown_value_types, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_after(p, n, "k.one");
    s_put32(p, at, 13);
    s_expect_bad(p, n, "key 'k.one'", "unknown value type 13");
    s_put32(p, at, 0xffffffffu);
    s_expect_bad(p, n, "key 'k.one'", "unknown value type 4294967295");
    free(p);
    p = s_good(&n);
    at = s_after(p, n, "k.ints") + 4;
    s_put32(p, at, 77);
    s_expect_bad(p, n, "key 'k.ints'", "unknown array element type 77");
    s_put32(p, at, MS_GGUF_ARRAY);
    s_expect_bad(p, n, "key 'k.ints'", "arrays of arrays");
    free(p);
}

Test(gguf, rejects_nul_in_names, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_after(p, n, "k.two");
    p[at - 2] = 0;
    s_expect_bad(p, n, "key #2", "NUL");
    free(p);
}

Test(gguf, rejects_bad_alignment, .timeout = 10) {
    ms_gguf_writer *w = s_good_writer();
    ms_gguf_set_u32(w, "general.alignment", 64);
    size_t n;
    uint8_t *p = s_write_mem(w, &n);
    ms_gguf_writer_destroy(&w);
    ms_gguf *g = s_open_ok(p, n);
    cr_assert_eq(ms_gguf_alignment(g), 64);
    ms_gguf_close(&g);
    size_t at = s_after(p, n, "general.alignment");
    s_put32(p, at + 4, 48);
    s_expect_bad(p, n, "'general.alignment' is 48", "not a power of two");
    s_put32(p, at + 4, 0);
    s_expect_bad(p, n, "'general.alignment' is 0", "not a power of two");
    s_put32(p, at + 4, 64);
    s_put32(p, at, MS_GGUF_INT32);
    s_expect_bad(p, n, "key 'general.alignment' has type int32, expected uint32", NULL);
    free(p);
}

/* ---- malformations: tensor infos -------------------------------------------- */

Test(gguf, rejects_duplicate_tensor_names, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_after(p, n, "t1");
    p[at - 1] = '0';
    s_expect_bad(p, n, "duplicate tensor name 't0'", NULL);
    free(p);
}

Test(gguf, rejects_unsupported_tensor_types, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_tensor_type_at(p, n, "t2", 1);
    s_put32(p, at, 14);
    s_expect_bad(p, n, "tensor 't2'", "q6_K (14) is not supported");
    s_put32(p, at, 1000);
    s_expect_bad(p, n, "tensor 't2'", "unknown (1000)");
    free(p);
}

Test(gguf, rejects_bad_n_dims, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_tensor_ndims_at(p, n, "t0");
    s_put32(p, at, 0);
    s_expect_bad(p, n, "tensor 't0'", "n_dims 0");
    s_put32(p, at, 5);
    s_expect_bad(p, n, "tensor 't0'", "n_dims 5");
    s_put32(p, at, 0x80000000u);
    s_expect_bad(p, n, "tensor 't0'", "n_dims 2147483648");
    free(p);
}

Test(gguf, rejects_negative_and_overflowing_dims, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_tensor_ndims_at(p, n, "t0") + 4;
    s_put64(p, at + 8, (uint64_t)-1);
    s_expect_bad(p, n, "tensor 't0'", "ne[1] = -1 is negative");
    s_put64(p, at + 8, 1ull << 60);
    s_expect_bad(p, n, "tensor 't0'", "element count overflows");
    /* element count fits, bytes do not: 2^62 f32 */
    s_put64(p, at, 1ull << 32);
    s_put64(p, at + 8, 1ull << 30);
    s_expect_bad(p, n, "tensor 't0'", "byte size overflows");
    free(p);
    /* ne[0] = 0 makes an empty tensor, whatever the other dims (as in ggml) */
    p = s_good(&n);
    s_put64(p, at, 0);
    s_put64(p, at + 8, 1ull << 62);
    ms_gguf *g = s_open_ok(p, n);
    ms_tensor *t = ms_gguf_find_tensor(g, "t0");
    cr_assert(t && t->nbytes == 0 && t->ne[1] == 1ll << 62);
    ms_gguf_close(&g);
    free(p);
}

Test(gguf, rejects_ne0_not_multiple_of_block, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_tensor_ndims_at(p, n, "t1") + 4;
    s_put64(p, at, 48);
    s_expect_bad(p, n, "tensor 't1'", "ne[0] = 48 is not a multiple of the q8_0 block size 32");
    free(p);
}

/* ---- malformations: data ranges --------------------------------------------- */

Test(gguf, rejects_misaligned_offsets, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_tensor_off_at(p, n, "t1", 1);
    cr_assert_eq(s_get64(p, at), 256);
    s_put64(p, at, 260);
    s_expect_bad(p, n, "tensor 't1'", "data offset 260");
    s_expect_bad(p, n, "not a multiple of the alignment 32", NULL);
    free(p);
}

Test(gguf, rejects_data_out_of_range, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_tensor_off_at(p, n, "t2", 1);
    s_put64(p, at, 384);
    s_expect_bad(p, n, "tensor 't2'", "out of range");
    s_put64(p, at, UINT64_MAX - 31);
    s_expect_bad(p, n, "tensor 't2'", "out of range");
    s_put64(p, at, 352);
    s_expect_bad(p, n - 1, "tensor 't2'", "[352, 384) is out of range");
    free(p);
}

Test(gguf, rejects_overlapping_tensors, .timeout = 10) {
    size_t n;
    uint8_t *p = s_good(&n);
    size_t at = s_tensor_off_at(p, n, "t2", 1);
    s_put64(p, at, 0); /* t2 [0, 32) inside t0 [0, 256) */
    s_expect_bad(p, n, "overlap", "'t0' [0, 256)");
    s_put64(p, at, 320); /* t1 is [256, 324) */
    s_expect_bad(p, n, "'t1' [256, 324) and 't2' [320, 352) overlap", NULL);
    free(p);
}

Test(gguf, rejects_file_ending_in_padding, .timeout = 10) {
    ms_gguf_writer *w = ms_gguf_writer_new();
    ms_gguf_set_u32(w, "a", 1);
    cr_assert_eq(ms_gguf_add_tensor(w, "e", MS_TYPE_F32, 1, (int64_t[]){0}, NULL, 0), 0);
    size_t n;
    uint8_t *p = s_write_mem(w, &n);
    ms_gguf_writer_destroy(&w);
    ms_gguf *g = s_open_ok(p, n);
    size_t data = ms_gguf_data_offset(g);
    ms_gguf_close(&g);
    cr_assert_eq(n, data); /* only an empty tensor: the file ends at the data section */
    s_expect_bad(p, n - 1, "padding before the data section", NULL);
    free(p);
}
