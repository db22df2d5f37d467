/* fuzz_gguf.c — libFuzzer harness for the GGUF reader.
 *
 * Opens the input with ms_gguf_open_memory; when it opens, touches every key
 * through every getter, every array element and every tensor's first, middle
 * and last byte, so a validation gap shows up as an out-of-bounds read under
 * ASan. Also checks the reader's own consistency (find returns the same
 * entry, a tensor matches its own shape) and traps if it does not.
 * Seeds: tests/fuzz/corpus/gguf/ (valid files from our writer and gguf-py,
 * and a few broken ones).
 */
#include <stdint.h>
#include <string.h>

#include "gguf.h"
#include "ms_common.h"

static volatile uint64_t s_sink;

static uint64_t s_sum(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += b[i];
    return s;
}

static size_t s_elem_size(ms_gguf_type t) {
    switch (t) {
    case MS_GGUF_UINT8:
    case MS_GGUF_INT8:
    case MS_GGUF_BOOL:
        return 1;
    case MS_GGUF_UINT16:
    case MS_GGUF_INT16:
        return 2;
    case MS_GGUF_UINT64:
    case MS_GGUF_INT64:
    case MS_GGUF_FLOAT64:
        return 8;
    default:
        return 4;
    }
}

static void s_touch_kv(const ms_gguf *g, int64_t i) {
    char err[MS_ERR_SIZE];
    const char *key = ms_gguf_key(g, i);
    if (ms_gguf_find_key(g, key) != i) __builtin_trap();
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f;
    bool b;
    const char *s;
    uint64_t sum = strlen(key);
    if (!ms_gguf_get_u32(g, key, &u32, err, sizeof err)) sum += u32;
    if (!ms_gguf_get_i32(g, key, &i32, err, sizeof err)) sum += (uint64_t)i32;
    if (!ms_gguf_get_u64(g, key, &u64, err, sizeof err)) sum += u64;
    if (!ms_gguf_get_f32(g, key, &f, err, sizeof err)) sum += (uint64_t)(f == f);
    if (!ms_gguf_get_bool(g, key, &b, err, sizeof err)) sum += b;
    if (!ms_gguf_get_str(g, key, &s, err, sizeof err)) sum += strlen(s);
    ms_gguf_type t = ms_gguf_kv_type(g, i);
    if (t == MS_GGUF_ARRAY) {
        ms_gguf_type et = ms_gguf_arr_type(g, i);
        int64_t ix;
        uint64_t n;
        if (ms_gguf_get_arr(g, key, et, &ix, &n, err, sizeof err) || ix != i ||
            n != ms_gguf_arr_n(g, i))
            __builtin_trap();
        if (et == MS_GGUF_STRING) {
            for (uint64_t j = 0; j < n; j++) {
                uint64_t len;
                const char *e = ms_gguf_arr_str(g, i, j, &len);
                sum += s_sum(e, (size_t)len);
            }
        } else {
            sum += s_sum(ms_gguf_arr_data(g, i), (size_t)n * s_elem_size(et));
        }
    } else if (t != MS_GGUF_STRING) {
        sum += s_sum(ms_gguf_arr_data(g, i), s_elem_size(t));
    }
    s_sink += sum;
}

static void s_touch_tensor(ms_gguf *g, int64_t i) {
    char err[MS_ERR_SIZE];
    ms_tensor *t = ms_gguf_tensor(g, i);
    if (ms_gguf_find_tensor(g, t->name) != t) __builtin_trap();
    if (ms_gguf_expect_tensor(g, t->name, t->n_dims, t->ne, 1ull << t->type, err, sizeof err) != t)
        __builtin_trap();
    if (t->nbytes == 0) return;
    const uint8_t *d = t->data;
    s_sink += d[0] + d[t->nbytes / 2] + d[t->nbytes - 1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[MS_ERR_SIZE];
    ms_gguf *g = ms_gguf_open_memory(data, size, err, sizeof err);
    if (!g) {
        if (!err[0]) __builtin_trap(); /* a rejection always says why */
        return 0;
    }
    for (int64_t i = 0; i < ms_gguf_n_kv(g); i++)
        s_touch_kv(g, i);
    for (int64_t i = 0; i < ms_gguf_n_tensors(g); i++)
        s_touch_tensor(g, i);
    ms_gguf_close(&g);
    return 0;
}
