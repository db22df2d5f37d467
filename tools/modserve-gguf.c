/* modserve-gguf — prints what a GGUF file holds, after full validation.
 *
 * Usage: modserve-gguf FILE
 * Prints the version, the alignment, every key with its type and value
 * (arrays: element type, count and the first few elements), then every tensor
 * with its type, shape and data offset. A file the reader rejects prints the
 * reader's message and exits with status 1.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "gguf.h"
#include "ms_common.h"

#define ARR_SHOW 8   /* array elements printed */
#define STR_SHOW 160 /* bytes of a string value printed */

static void s_print_str(const char *s, uint64_t len) {
    putchar('"');
    for (uint64_t i = 0; i < len && i < STR_SHOW; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch == '\n')
            printf("\\n");
        else if (ch == '\t')
            printf("\\t");
        else if (ch < 0x20 || ch == 0x7f)
            printf("\\x%02x", ch);
        else
            putchar(ch);
    }
    putchar('"');
    if (len > STR_SHOW) printf("... (%" PRIu64 " bytes)", len);
}

/* Prints one little-endian value of scalar type t. */
static void s_print_scalar(ms_gguf_type t, const unsigned char *p) {
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        int64_t i64;
        float f32;
        double f64;
    } v;
    switch (t) {
    case MS_GGUF_UINT8:
        memcpy(&v.u8, p, 1);
        printf("%u", v.u8);
        break;
    case MS_GGUF_INT8:
        memcpy(&v.i8, p, 1);
        printf("%d", v.i8);
        break;
    case MS_GGUF_UINT16:
        memcpy(&v.u16, p, 2);
        printf("%u", v.u16);
        break;
    case MS_GGUF_INT16:
        memcpy(&v.i16, p, 2);
        printf("%d", v.i16);
        break;
    case MS_GGUF_UINT32:
        memcpy(&v.u32, p, 4);
        printf("%" PRIu32, v.u32);
        break;
    case MS_GGUF_INT32:
        memcpy(&v.i32, p, 4);
        printf("%" PRId32, v.i32);
        break;
    case MS_GGUF_UINT64:
        memcpy(&v.u64, p, 8);
        printf("%" PRIu64, v.u64);
        break;
    case MS_GGUF_INT64:
        memcpy(&v.i64, p, 8);
        printf("%" PRId64, v.i64);
        break;
    case MS_GGUF_FLOAT32:
        memcpy(&v.f32, p, 4);
        printf("%.9g", v.f32);
        break;
    case MS_GGUF_FLOAT64:
        memcpy(&v.f64, p, 8);
        printf("%.17g", v.f64);
        break;
    case MS_GGUF_BOOL:
        printf("%s", p[0] ? "true" : "false");
        break;
    default:
        printf("?");
        break;
    }
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

static void s_print_kv(const ms_gguf *g, int64_t i) {
    const char *key = ms_gguf_key(g, i);
    ms_gguf_type t = ms_gguf_kv_type(g, i);
    char err[MS_ERR_SIZE];
    if (t == MS_GGUF_STRING) {
        const char *s = NULL;
        ms_gguf_get_str(g, key, &s, err, sizeof err);
        printf("  %-40s string   ", key);
        s_print_str(s, strlen(s));
        putchar('\n');
        return;
    }
    if (t != MS_GGUF_ARRAY) {
        printf("  %-40s %-8s ", key, ms_gguf_type_name(t));
        s_print_scalar(t, ms_gguf_arr_data(g, i)); /* a scalar's own bytes */
        putchar('\n');
        return;
    }
    ms_gguf_type et = ms_gguf_arr_type(g, i);
    uint64_t n = ms_gguf_arr_n(g, i);
    printf("  %-40s array of %s [%" PRIu64 "]: ", key, ms_gguf_type_name(et), n);
    for (uint64_t j = 0; j < n && j < ARR_SHOW; j++) {
        if (j) printf(", ");
        if (et == MS_GGUF_STRING) {
            uint64_t len;
            const char *s = ms_gguf_arr_str(g, i, j, &len);
            s_print_str(s, len);
        } else {
            const unsigned char *p = ms_gguf_arr_data(g, i);
            s_print_scalar(et, p + j * s_elem_size(et));
        }
    }
    if (n > ARR_SHOW) printf(", ...");
    putchar('\n');
}

int main(int argc, char **argv) {
    if (argc != 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: %s FILE.gguf\n", argv[0]);
        return 2;
    }
    char err[MS_ERR_SIZE];
    ms_gguf *g = ms_gguf_open(argv[1], err, sizeof err);
    if (!g) {
        fprintf(stderr, "modserve-gguf: %s\n", err);
        return 1;
    }
    printf("file: %s\nversion: %" PRIu32 "\nalignment: %zu\ndata offset: %zu\n", argv[1],
           ms_gguf_version(g), ms_gguf_alignment(g), ms_gguf_data_offset(g));
    printf("keys: %" PRId64 "\n", ms_gguf_n_kv(g));
    for (int64_t i = 0; i < ms_gguf_n_kv(g); i++)
        s_print_kv(g, i);
    printf("tensors: %" PRId64 "\n", ms_gguf_n_tensors(g));
    for (int64_t i = 0; i < ms_gguf_n_tensors(g); i++) {
        const ms_tensor *t = ms_gguf_tensor(g, i);
        printf("  %-40s %-5s [", t->name, ms_type_name(t->type));
        for (int d = 0; d < t->n_dims; d++)
            printf("%s%" PRId64, d ? ", " : "", t->ne[d]);
        printf("] offset %" PRIu64 " bytes %zu\n", ms_gguf_tensor_offset(g, i), t->nbytes);
    }
    ms_gguf_close(&g);
    return 0;
}
