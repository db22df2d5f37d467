/* gguf.c — the GGUF reader (see gguf.h; the writer is gguf_write.c).
 *
 * Parsing walks a cursor over the mapped bytes. Every count and length read
 * from the file is checked against the bytes that remain BEFORE anything is
 * allocated for it, so a hostile header cannot make us allocate more than a
 * small multiple of the file size. All multi-byte reads go through memcpy
 * (the format has no alignment guarantees before the data section).
 *
 * Decisions beyond the format text:
 *  - version 1 (u32 counts) and byte-swapped (big-endian) files are refused;
 *  - arrays of arrays are refused (llama.cpp does not produce or use them);
 *  - keys and tensor names must not contain NUL bytes (we hand out C strings);
 *  - a bool is any byte, non-zero meaning true;
 *  - a tensor dim may be 0 (an empty tensor, as ggml allows); it takes no
 *    bytes and overlaps nothing;
 *  - shapes in ms_gguf_expect_tensor compare like llama.cpp: all MS_MAX_DIMS
 *    dims, unused ones counting as 1.
 */
#include "gguf.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ms_common.h"

/* Smallest encodings, used to bound counts by the bytes left. */
#define S_MIN_KV_BYTES     13 /* u64 key length + u32 type + 1 value byte */
#define S_MIN_TENSOR_BYTES 32 /* u64 name length, u32 n_dims, one u64 ne, u32 type, u64 offset */

typedef struct s_kv {
    char *key;             /* NUL-terminated copy */
    ms_gguf_type type;     /* value type */
    ms_gguf_type arr_type; /* element type for arrays, UINT8 otherwise */
    uint64_t arr_n;        /* elements for arrays, 0 otherwise */
    const uint8_t *raw;    /* scalar value bytes, or array elements (into the file) */
    char *str;             /* STRING: NUL-terminated copy of the value */
    const uint8_t **strs;  /* STRING arrays: each element's u64 length field (into the file) */
} s_kv;

typedef struct s_index {
    size_t *slots; /* index + 1, 0 = empty */
    size_t cap;    /* power of two (0 before the first add) */
    size_t n;      /* entries, at most cap / 2 */
} s_index;

struct ms_gguf {
    const uint8_t *base; /* file bytes */
    size_t size;         /* file size */
    void *map;           /* mmap'd region (NULL for open_memory) */
    uint32_t version;
    size_t alignment;   /* bytes, power of two */
    size_t data_offset; /* file offset of the data section */
    int64_t n_kv;
    s_kv *kv; /* [n_kv] */
    size_t kv_cap;
    s_index kv_index;
    int64_t n_tensors;
    ms_tensor *tensors; /* [n_tensors], names owned here */
    uint64_t *offsets;  /* [n_tensors] offset of each tensor in the data section */
    size_t t_cap;       /* allocated entries of tensors and offsets */
    s_index t_index;
};

/* ---- names ---------------------------------------------------------------- */

const char *ms_gguf_type_name(ms_gguf_type t) {
    static const char *names[MS_GGUF_TYPE_COUNT] = {
        "uint8", "int8",   "uint16", "int16",  "uint32", "int32",   "float32",
        "bool",  "string", "array",  "uint64", "int64",  "float64",
    };
    return (unsigned)t < MS_GGUF_TYPE_COUNT ? names[t] : "unknown";
}

/* ggml type names, for messages about types we do not compute with. */
static const char *s_ggml_type_name(uint32_t t) {
    static const char *names[] = {
        [0] = "f32",     [1] = "f16",      [2] = "q4_0",   [3] = "q4_1",    [6] = "q5_0",
        [7] = "q5_1",    [8] = "q8_0",     [9] = "q8_1",   [10] = "q2_K",   [11] = "q3_K",
        [12] = "q4_K",   [13] = "q5_K",    [14] = "q6_K",  [15] = "q8_K",   [16] = "iq2_xxs",
        [17] = "iq2_xs", [18] = "iq3_xxs", [19] = "iq1_s", [20] = "iq4_nl", [21] = "iq3_s",
        [22] = "iq2_s",  [23] = "iq4_xs",  [24] = "i8",    [25] = "i16",    [26] = "i32",
        [27] = "i64",    [28] = "f64",     [29] = "iq1_m", [30] = "bf16",   [34] = "tq1_0",
        [35] = "tq2_0",
    };
    if (t < MS_ARRAY_LEN(names) && names[t]) return names[t];
    return "unknown";
}

static size_t s_scalar_size(ms_gguf_type t) {
    switch (t) {
    case MS_GGUF_UINT8:
    case MS_GGUF_INT8:
    case MS_GGUF_BOOL:
        return 1;
    case MS_GGUF_UINT16:
    case MS_GGUF_INT16:
        return 2;
    case MS_GGUF_UINT32:
    case MS_GGUF_INT32:
    case MS_GGUF_FLOAT32:
        return 4;
    case MS_GGUF_UINT64:
    case MS_GGUF_INT64:
    case MS_GGUF_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

/* ---- little-endian loads (unaligned-safe) --------------------------------- */

static uint16_t s_ld16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static uint32_t s_ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static uint64_t s_ld64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- name index (open addressing) ---------------------------------------- */

/* The tables grow with the entries actually parsed (never with a count read
 * from the header), so memory stays proportional to the bytes consumed. */

typedef const char *(*s_name_fn)(const void *ctx, size_t i);

static void s_index_fini(s_index *ix) {
    free(ix->slots);
    ix->slots = NULL;
    ix->cap = ix->n = 0;
}

static void s_index_place(s_index *ix, size_t i, const char *name) {
    size_t mask = ix->cap - 1;
    size_t h = (size_t)ms_hash64(name, strlen(name)) & mask;
    while (ix->slots[h])
        h = (h + 1) & mask;
    ix->slots[h] = i + 1;
}

/* Looks `name` up; name_of(ctx, i) gives the name of entry i. Entry or -1. */
static int64_t s_index_find(const s_index *ix, const char *name, s_name_fn name_of,
                            const void *ctx) {
    if (!ix->cap) return -1;
    size_t mask = ix->cap - 1;
    size_t h = (size_t)ms_hash64(name, strlen(name)) & mask;
    while (ix->slots[h]) {
        size_t i = ix->slots[h] - 1;
        if (!strcmp(name_of(ctx, i), name)) return (int64_t)i;
        h = (h + 1) & mask;
    }
    return -1;
}

/* Adds entry i (not yet present), keeping the table at most half full. */
static void s_index_add(s_index *ix, size_t i, s_name_fn name_of, const void *ctx) {
    if (2 * (ix->n + 1) > ix->cap) {
        size_t *old = ix->slots, old_cap = ix->cap;
        ix->cap = old_cap ? 2 * old_cap : 16;
        ix->slots = ms_xcalloc(ix->cap, sizeof *ix->slots);
        for (size_t k = 0; k < old_cap; k++)
            if (old[k]) s_index_place(ix, old[k] - 1, name_of(ctx, old[k] - 1));
        free(old);
    }
    s_index_place(ix, i, name_of(ctx, i));
    ix->n++;
}

/* Makes room for entry i in an array of `elem`-byte entries (new entries zeroed). */
static void *s_grow(void *p, size_t *cap, size_t i, size_t elem) {
    if (i < *cap) return p;
    size_t n = *cap ? 2 * *cap : 16;
    p = ms_xrealloc(p, n * elem);
    memset((char *)p + *cap * elem, 0, (n - *cap) * elem);
    *cap = n;
    return p;
}

static const char *s_kv_name(const void *ctx, size_t i) {
    return ((const s_kv *)ctx)[i].key;
}
static const char *s_tensor_name(const void *ctx, size_t i) {
    return ((const ms_tensor *)ctx)[i].name;
}

/* ---- cursor ---------------------------------------------------------------- */

typedef struct s_cur {
    const uint8_t *p; /* file bytes */
    size_t size;      /* file size */
    size_t pos;       /* next byte to read */
    char *err;
    size_t err_size;
} s_cur;

static size_t s_left(const s_cur *c) {
    return c->size - c->pos;
}

/* Checks that n bytes remain; `what` names the thing being read. */
static int s_need(s_cur *c, uint64_t n, const char *what) {
    if (n > s_left(c))
        return ms_errf(c->err, c->err_size,
                       "%s: needs %" PRIu64 " bytes at offset %zu but the file has only %zu left "
                       "(file size %zu)",
                       what, n, c->pos, s_left(c), c->size);
    return 0;
}

static int s_u32(s_cur *c, uint32_t *v, const char *what) {
    if (s_need(c, 4, what)) return -1;
    *v = s_ld32(c->p + c->pos);
    c->pos += 4;
    return 0;
}

static int s_u64(s_cur *c, uint64_t *v, const char *what) {
    if (s_need(c, 8, what)) return -1;
    *v = s_ld64(c->p + c->pos);
    c->pos += 8;
    return 0;
}

/* Reads a string header (u64 length) and checks the bytes are there; returns a
 * pointer to the bytes and advances past them. */
static int s_str(s_cur *c, uint64_t max, const uint8_t **bytes, uint64_t *len, const char *what) {
    size_t at = c->pos;
    if (s_u64(c, len, what)) return -1;
    if (*len > max)
        return ms_errf(c->err, c->err_size,
                       "%s: string length %" PRIu64 " at offset %zu exceeds the limit of %" PRIu64
                       " bytes",
                       what, *len, at, max);
    if (*len > s_left(c))
        return ms_errf(c->err, c->err_size,
                       "%s: string length %" PRIu64 " at offset %zu runs past the end of the file "
                       "(%zu bytes left)",
                       what, *len, at, s_left(c));
    *bytes = c->p + c->pos;
    c->pos += (size_t)*len;
    return 0;
}

/* A key or tensor name: bounded, no NUL inside; returns a malloc'd C string. */
static char *s_name(s_cur *c, const char *what) {
    const uint8_t *b;
    uint64_t len;
    if (s_str(c, MS_GGUF_MAX_KEY, &b, &len, what)) return NULL;
    if (memchr(b, 0, (size_t)len)) {
        ms_errf(c->err, c->err_size, "%s: name at offset %zu contains a NUL byte", what,
                c->pos - (size_t)len);
        return NULL;
    }
    return ms_xstrndup((const char *)b, (size_t)len);
}

/* ---- key/values ------------------------------------------------------------ */

static int s_read_value(s_cur *c, s_kv *kv, const char *what) {
    size_t at = c->pos;
    uint32_t type;
    if (s_u32(c, &type, what)) return -1;
    if (type >= MS_GGUF_TYPE_COUNT)
        return ms_errf(c->err, c->err_size, "%s: unknown value type %" PRIu32 " at offset %zu",
                       what, type, at);
    kv->type = (ms_gguf_type)type;
    kv->arr_type = MS_GGUF_UINT8;
    if (type == MS_GGUF_STRING) {
        const uint8_t *b;
        uint64_t len;
        if (s_str(c, MS_GGUF_MAX_STRING, &b, &len, what)) return -1;
        kv->raw = b;
        kv->str = ms_xstrndup((const char *)b, (size_t)len);
        return 0;
    }
    if (type != MS_GGUF_ARRAY) {
        size_t n = s_scalar_size(kv->type);
        if (s_need(c, n, what)) return -1;
        kv->raw = c->p + c->pos;
        c->pos += n;
        return 0;
    }
    /* array: u32 elem type, u64 count, elements */
    uint32_t et;
    uint64_t count;
    at = c->pos;
    if (s_u32(c, &et, what)) return -1;
    if (et == MS_GGUF_ARRAY)
        return ms_errf(c->err, c->err_size, "%s: arrays of arrays are not supported (offset %zu)",
                       what, at);
    if (et >= MS_GGUF_TYPE_COUNT)
        return ms_errf(c->err, c->err_size,
                       "%s: unknown array element type %" PRIu32 " at offset %zu", what, et, at);
    at = c->pos;
    if (s_u64(c, &count, what)) return -1;
    if (count > MS_GGUF_MAX_ARRAY)
        return ms_errf(c->err, c->err_size,
                       "%s: array count %" PRIu64 " at offset %zu exceeds the limit of %u", what,
                       count, at, (unsigned)MS_GGUF_MAX_ARRAY);
    kv->arr_type = (ms_gguf_type)et;
    size_t min_elem = et == MS_GGUF_STRING ? 8 : s_scalar_size(kv->arr_type);
    /* count <= 2^26 and min_elem <= 8: no overflow */
    if (count * min_elem > s_left(c))
        return ms_errf(c->err, c->err_size,
                       "%s: array of %" PRIu64 " %s at offset %zu needs at least %" PRIu64
                       " bytes but only %zu are left",
                       what, count, ms_gguf_type_name(kv->arr_type), at, count * min_elem,
                       s_left(c));
    kv->arr_n = count;
    kv->raw = c->p + c->pos;
    if (et != MS_GGUF_STRING) {
        c->pos += (size_t)(count * min_elem);
        return 0;
    }
    kv->strs = ms_xmalloc((size_t)(count ? count : 1) * sizeof *kv->strs);
    for (uint64_t j = 0; j < count; j++) {
        const uint8_t *b;
        uint64_t len;
        kv->strs[j] = c->p + c->pos;
        if (s_str(c, MS_GGUF_MAX_STRING, &b, &len, what)) {
            size_t n = strlen(c->err ? c->err : "");
            if (c->err && n + 1 < c->err_size)
                snprintf(c->err + n, c->err_size - n, " (element %" PRIu64 " of %" PRIu64 ")", j,
                         count);
            return -1;
        }
    }
    return 0;
}

/* Reads n key/values; g->n_kv counts the entries started, so close() frees a
 * partial read. */
static int s_read_kvs(ms_gguf *g, s_cur *c, uint64_t n) {
    for (int64_t i = 0; i < (int64_t)n; i++) {
        char what[MS_ERR_SIZE / 2];
        snprintf(what, sizeof what, "key #%" PRId64, i);
        g->kv = s_grow(g->kv, &g->kv_cap, (size_t)i, sizeof *g->kv);
        g->n_kv = i + 1;
        s_kv *kv = &g->kv[i];
        kv->key = s_name(c, what);
        if (!kv->key) return -1;
        snprintf(what, sizeof what, "key '%.200s'", kv->key);
        if (s_index_find(&g->kv_index, kv->key, s_kv_name, g->kv) >= 0)
            return ms_errf(c->err, c->err_size, "duplicate key '%.200s' (key #%" PRId64 ")",
                           kv->key, i);
        if (s_read_value(c, kv, what)) return -1;
        s_index_add(&g->kv_index, (size_t)i, s_kv_name, g->kv);
    }
    return 0;
}

/* general.alignment: u32, non-zero power of two. */
static int s_read_alignment(ms_gguf *g, char *err, size_t err_size) {
    g->alignment = MS_GGUF_DEFAULT_ALIGNMENT;
    int64_t i = ms_gguf_find_key(g, "general.alignment");
    if (i < 0) return 0;
    const s_kv *kv = &g->kv[i];
    if (kv->type != MS_GGUF_UINT32)
        return ms_errf(err, err_size, "key 'general.alignment' has type %s, expected uint32",
                       ms_gguf_type_name(kv->type));
    uint32_t a = s_ld32(kv->raw);
    if (a == 0 || (a & (a - 1)) != 0)
        return ms_errf(err, err_size,
                       "key 'general.alignment' is %" PRIu32 ", which is not a power of two", a);
    g->alignment = a;
    return 0;
}

/* ---- tensors --------------------------------------------------------------- */

static int s_read_tensor_info(ms_gguf *g, s_cur *c, int64_t i) {
    char what[MS_ERR_SIZE / 2];
    snprintf(what, sizeof what, "tensor #%" PRId64, i);
    size_t cap = g->t_cap;
    g->tensors = s_grow(g->tensors, &cap, (size_t)i, sizeof *g->tensors);
    g->offsets = s_grow(g->offsets, &g->t_cap, (size_t)i, sizeof *g->offsets);
    g->n_tensors = i + 1; /* so close() frees a partial read */
    ms_tensor *t = &g->tensors[i];
    char *name = s_name(c, what);
    if (!name) return -1;
    t->name = name;
    if (s_index_find(&g->t_index, name, s_tensor_name, g->tensors) >= 0)
        return ms_errf(c->err, c->err_size, "duplicate tensor name '%.200s' (tensor #%" PRId64 ")",
                       name, i);
    s_index_add(&g->t_index, (size_t)i, s_tensor_name, g->tensors);
    snprintf(what, sizeof what, "tensor '%.200s'", name);

    uint32_t n_dims, type;
    if (s_u32(c, &n_dims, what)) return -1;
    if (n_dims == 0 || n_dims > MS_MAX_DIMS)
        return ms_errf(c->err, c->err_size, "%s: n_dims %" PRIu32 " is not in 1..%d", what, n_dims,
                       MS_MAX_DIMS);
    t->n_dims = (int)n_dims;
    for (int d = 0; d < MS_MAX_DIMS; d++)
        t->ne[d] = 1;
    int64_t nel = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t ne;
        if (s_u64(c, &ne, what)) return -1;
        if (ne > (uint64_t)INT64_MAX)
            return ms_errf(c->err, c->err_size, "%s: ne[%" PRIu32 "] = %" PRId64 " is negative",
                           what, d, (int64_t)ne);
        t->ne[d] = (int64_t)ne;
        if (__builtin_mul_overflow(nel, t->ne[d], &nel))
            return ms_errf(c->err, c->err_size,
                           "%s: element count overflows (ne = [%" PRId64 ", %" PRId64 ", %" PRId64
                           ", %" PRId64 "])",
                           what, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    }
    if (s_u32(c, &type, what)) return -1;
    if (!ms_type_known(type))
        return ms_errf(c->err, c->err_size,
                       "%s: tensor type %s (%" PRIu32 ") is not supported "
                       "(supported: f32, f16, bf16, q8_0, q4_0, q4_K)",
                       what, s_ggml_type_name(type), type);
    t->type = (ms_type)type;
    int64_t bs = ms_type_block_size(t->type);
    if (t->ne[0] % bs != 0)
        return ms_errf(c->err, c->err_size,
                       "%s: ne[0] = %" PRId64 " is not a multiple of the %s block size %" PRId64,
                       what, t->ne[0], ms_type_name(t->type), bs);
    /* bytes = (ne0 / bs) * block_bytes * rows, with overflow checks (rows may
     * overflow on its own when ne[0] is 0) */
    uint64_t row, nbytes, rows = 1;
    bool ovf = __builtin_mul_overflow((uint64_t)(t->ne[0] / bs),
                                      (uint64_t)ms_type_block_bytes(t->type), &row);
    for (int d = 1; d < MS_MAX_DIMS; d++)
        ovf = ovf || __builtin_mul_overflow(rows, (uint64_t)t->ne[d], &rows);
    ovf = ovf || __builtin_mul_overflow(row, rows, &nbytes) || nbytes > SIZE_MAX;
    if (ovf)
        return ms_errf(c->err, c->err_size,
                       "%s: byte size overflows (ne = [%" PRId64 ", %" PRId64 ", %" PRId64
                       ", %" PRId64 "])",
                       what, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    t->nbytes = (size_t)nbytes;
    size_t at = c->pos;
    if (s_u64(c, &g->offsets[i], what)) return -1;
    if (g->offsets[i] % g->alignment != 0)
        return ms_errf(c->err, c->err_size,
                       "%s: data offset %" PRIu64 " (at file offset %zu) is not a multiple of "
                       "the alignment %zu",
                       what, g->offsets[i], at, g->alignment);
    return 0;
}

static int s_cmp_u64_pairs(const void *a, const void *b) {
    const uint64_t *x = a, *y = b; /* {offset, index} */
    if (x[0] != y[0]) return x[0] < y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

/* Data ranges: inside the file, no two tensors overlapping. */
static int s_check_ranges(ms_gguf *g, char *err, size_t err_size) {
    size_t data_size = g->size - g->data_offset; /* caller checked data_offset <= size */
    uint64_t(*order)[2] = ms_xmalloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof *order);
    int64_t n = 0;
    int rc = 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const ms_tensor *t = &g->tensors[i];
        uint64_t off = g->offsets[i];
        if (off > data_size || t->nbytes > data_size - off) {
            rc = ms_errf(err, err_size,
                         "tensor '%.200s': data [%" PRIu64 ", %" PRIu64 ") is out of range of "
                         "the data section (%zu bytes at file offset %zu, file size %zu)",
                         t->name, off, off + (uint64_t)t->nbytes, data_size, g->data_offset,
                         g->size);
            goto done;
        }
        g->tensors[i].data = g->base + g->data_offset + off;
        if (t->nbytes == 0) continue; /* empty tensors overlap nothing */
        order[n][0] = off;
        order[n][1] = (uint64_t)i;
        n++;
    }
    qsort(order, (size_t)n, sizeof *order, s_cmp_u64_pairs);
    for (int64_t k = 1; k < n; k++) {
        const ms_tensor *a = &g->tensors[order[k - 1][1]], *b = &g->tensors[order[k][1]];
        uint64_t a_end = order[k - 1][0] + a->nbytes;
        if (a_end > order[k][0]) {
            rc = ms_errf(err, err_size,
                         "tensors '%.200s' [%" PRIu64 ", %" PRIu64 ") and '%.200s' [%" PRIu64
                         ", %" PRIu64 ") overlap",
                         a->name, order[k - 1][0], a_end, b->name, order[k][0],
                         order[k][0] + (uint64_t)b->nbytes);
            goto done;
        }
    }
done:
    free(order);
    return rc;
}

/* ---- open / close ---------------------------------------------------------- */

static int s_parse(ms_gguf *g, char *err, size_t err_size) {
    s_cur c = {.p = g->base, .size = g->size, .pos = 0, .err = err, .err_size = err_size};
    if (g->size == 0) return ms_errf(err, err_size, "empty file (0 bytes), not a GGUF file");
    if (g->size < 4 || s_ld32(g->base) != MS_GGUF_MAGIC) {
        uint8_t m[4] = {0};
        memcpy(m, g->base, MS_MIN(g->size, sizeof m));
        return ms_errf(err, err_size,
                       "bad magic %02x %02x %02x %02x (expected \"GGUF\"): not a GGUF file", m[0],
                       m[1], m[2], m[3]);
    }
    c.pos = 4;
    if (s_u32(&c, &g->version, "header version")) return -1;
    if (g->version == 1)
        return ms_errf(err, err_size, "unsupported version 1 (GGUF v1 is obsolete; use v2 or v3)");
    if (g->version != 2 && g->version != 3) {
        if (g->version == 0x02000000u || g->version == 0x03000000u)
            return ms_errf(err, err_size,
                           "unsupported version %" PRIu32 " (a big-endian GGUF file?)", g->version);
        return ms_errf(err, err_size, "unsupported version %" PRIu32 " (supported: 2, 3)",
                       g->version);
    }
    uint64_t n_tensors, n_kv;
    if (s_u64(&c, &n_tensors, "header n_tensors") || s_u64(&c, &n_kv, "header n_kv")) return -1;
    /* bound counts by what remains before allocating anything */
    if (n_kv > s_left(&c) / S_MIN_KV_BYTES)
        return ms_errf(err, err_size,
                       "header n_kv = %" PRIu64 " needs at least %d bytes each, but only %zu "
                       "bytes follow the header",
                       n_kv, S_MIN_KV_BYTES, s_left(&c));
    if (n_tensors > s_left(&c) / S_MIN_TENSOR_BYTES)
        return ms_errf(err, err_size,
                       "header n_tensors = %" PRIu64 " needs at least %d bytes each, but only %zu "
                       "bytes follow the header",
                       n_tensors, S_MIN_TENSOR_BYTES, s_left(&c));
    if (n_kv * S_MIN_KV_BYTES + n_tensors * S_MIN_TENSOR_BYTES > s_left(&c))
        return ms_errf(err, err_size,
                       "header n_kv = %" PRIu64 " and n_tensors = %" PRIu64
                       " need more bytes than the %zu that follow the header",
                       n_kv, n_tensors, s_left(&c));

    if (s_read_kvs(g, &c, n_kv)) return -1;
    if (s_read_alignment(g, err, err_size)) return -1;

    for (uint64_t i = 0; i < n_tensors; i++)
        if (s_read_tensor_info(g, &c, (int64_t)i)) return -1;

    /* data section: the next multiple of the alignment */
    size_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_offset = c.pos + pad;
    if (g->data_offset > g->size) {
        if (n_tensors > 0)
            return ms_errf(err, err_size,
                           "file ends at %zu, inside the padding before the data section "
                           "(which starts at %zu)",
                           g->size, g->data_offset);
        g->data_offset = g->size; /* no tensors: no data section needed */
    }
    return s_check_ranges(g, err, err_size);
}

ms_gguf *ms_gguf_open_memory(const void *data, size_t size, char *err, size_t err_size) {
    static const uint8_t empty[1];
    ms_gguf *g = ms_xcalloc(1, sizeof *g);
    g->base = data ? data : empty;
    g->size = data ? size : 0;
    if (s_parse(g, err, err_size)) {
        ms_gguf_close(&g);
        return NULL;
    }
    return g;
}

ms_gguf *ms_gguf_open(const char *path, char *err, size_t err_size) {
    char msg[MS_ERR_SIZE];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ms_errf(err, err_size, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ms_errf(err, err_size, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size == 0) {
        close(fd);
        ms_errf(err, err_size, "%s: empty file (0 bytes), not a GGUF file", path);
        return NULL;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        ms_errf(err, err_size, "%s: file too large to map", path);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) {
        ms_errf(err, err_size, "%s: mmap of %zu bytes failed: %s", path, size, strerror(map_errno));
        return NULL;
    }
    ms_gguf *g = ms_gguf_open_memory(map, size, msg, sizeof msg);
    if (!g) {
        munmap(map, size);
        ms_errf(err, err_size, "%s: %s", path, msg);
        return NULL;
    }
    g->map = map;
    return g;
}

void ms_gguf_close(ms_gguf **g_p) {
    if (!g_p || !*g_p) return;
    ms_gguf *g = *g_p;
    for (int64_t i = 0; i < g->n_kv && g->kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].str);
        free(g->kv[i].strs);
    }
    free(g->kv);
    s_index_fini(&g->kv_index);
    for (int64_t i = 0; i < g->n_tensors && g->tensors; i++)
        free((char *)g->tensors[i].name);
    free(g->tensors);
    free(g->offsets);
    s_index_fini(&g->t_index);
    if (g->map) munmap(g->map, g->size);
    free(g);
    *g_p = NULL;
}

/* ---- accessors ------------------------------------------------------------- */

uint32_t ms_gguf_version(const ms_gguf *g) {
    return g->version;
}
size_t ms_gguf_alignment(const ms_gguf *g) {
    return g->alignment;
}
size_t ms_gguf_data_offset(const ms_gguf *g) {
    return g->data_offset;
}

int64_t ms_gguf_n_kv(const ms_gguf *g) {
    return g->n_kv;
}

static const s_kv *s_kv_at(const ms_gguf *g, int64_t i) {
    assert(i >= 0 && i < g->n_kv && "key index out of range");
    return &g->kv[i];
}

const char *ms_gguf_key(const ms_gguf *g, int64_t i) {
    return s_kv_at(g, i)->key;
}

int64_t ms_gguf_find_key(const ms_gguf *g, const char *key) {
    return s_index_find(&g->kv_index, key, s_kv_name, g->kv);
}

ms_gguf_type ms_gguf_kv_type(const ms_gguf *g, int64_t i) {
    return s_kv_at(g, i)->type;
}
ms_gguf_type ms_gguf_arr_type(const ms_gguf *g, int64_t i) {
    return s_kv_at(g, i)->arr_type;
}
uint64_t ms_gguf_arr_n(const ms_gguf *g, int64_t i) {
    return s_kv_at(g, i)->arr_n;
}

const void *ms_gguf_arr_data(const ms_gguf *g, int64_t i) {
    const s_kv *kv = s_kv_at(g, i);
    if (kv->type == MS_GGUF_STRING) return NULL;
    if (kv->type == MS_GGUF_ARRAY && kv->arr_type == MS_GGUF_STRING) return NULL;
    return kv->raw;
}

const char *ms_gguf_arr_str(const ms_gguf *g, int64_t i, uint64_t j, uint64_t *len) {
    const s_kv *kv = s_kv_at(g, i);
    assert(kv->type == MS_GGUF_ARRAY && kv->arr_type == MS_GGUF_STRING && "not a string array");
    assert(j < kv->arr_n && "string index out of range");
    uint64_t n = s_ld64(kv->strs[j]);
    if (len) *len = n;
    return (const char *)kv->strs[j] + 8;
}

/* ---- typed getters --------------------------------------------------------- */

static int s_find_typed(const ms_gguf *g, const char *key, const s_kv **out, char *err,
                        size_t err_size) {
    int64_t i = ms_gguf_find_key(g, key);
    if (i < 0) return ms_errf(err, err_size, "missing key '%s'", key);
    *out = &g->kv[i];
    return 0;
}

static int s_type_err(const s_kv *kv, const char *expected, char *err, size_t err_size) {
    if (kv->type == MS_GGUF_ARRAY)
        return ms_errf(err, err_size, "key '%s' has type array of %s, expected %s", kv->key,
                       ms_gguf_type_name(kv->arr_type), expected);
    return ms_errf(err, err_size, "key '%s' has type %s, expected %s", kv->key,
                   ms_gguf_type_name(kv->type), expected);
}

/* Reads any integer value: *neg set when it is negative (then *v holds it as int64). */
static int s_int_value(const s_kv *kv, uint64_t *u, int64_t *s, bool *neg) {
    const uint8_t *p = kv->raw;
    *neg = false;
    switch (kv->type) {
    case MS_GGUF_UINT8:
        *u = p[0];
        break;
    case MS_GGUF_UINT16:
        *u = s_ld16(p);
        break;
    case MS_GGUF_UINT32:
        *u = s_ld32(p);
        break;
    case MS_GGUF_UINT64:
        *u = s_ld64(p);
        break;
    case MS_GGUF_INT8:
        *s = (int8_t)p[0];
        goto sgn;
    case MS_GGUF_INT16:
        *s = (int16_t)s_ld16(p);
        goto sgn;
    case MS_GGUF_INT32:
        *s = (int32_t)s_ld32(p);
        goto sgn;
    case MS_GGUF_INT64:
        *s = (int64_t)s_ld64(p);
        goto sgn;
    default:
        return -1;
    }
    *s = *u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)*u;
    return 0;
sgn:
    *neg = *s < 0;
    *u = *neg ? 0 : (uint64_t)*s;
    return 0;
}

/* Gets an integer key that must lie in [lo, hi]. */
static int s_get_int(const ms_gguf *g, const char *key, const char *tname, int64_t lo, uint64_t hi,
                     uint64_t *u, int64_t *s, char *err, size_t err_size) {
    const s_kv *kv = NULL;
    bool neg;
    if (s_find_typed(g, key, &kv, err, err_size)) return -1;
    if (s_int_value(kv, u, s, &neg)) return s_type_err(kv, tname, err, err_size);
    if (neg ? *s < lo : *u > hi) {
        if (neg)
            return ms_errf(err, err_size, "key '%s' value %" PRId64 " (%s) does not fit %s", key,
                           *s, ms_gguf_type_name(kv->type), tname);
        return ms_errf(err, err_size, "key '%s' value %" PRIu64 " (%s) does not fit %s", key, *u,
                       ms_gguf_type_name(kv->type), tname);
    }
    return 0;
}

int ms_gguf_get_u32(const ms_gguf *g, const char *key, uint32_t *out, char *err, size_t err_size) {
    uint64_t u;
    int64_t s;
    if (s_get_int(g, key, "uint32", 0, UINT32_MAX, &u, &s, err, err_size)) return -1;
    *out = (uint32_t)u;
    return 0;
}

int ms_gguf_get_i32(const ms_gguf *g, const char *key, int32_t *out, char *err, size_t err_size) {
    uint64_t u;
    int64_t s;
    if (s_get_int(g, key, "int32", INT32_MIN, INT32_MAX, &u, &s, err, err_size)) return -1;
    *out = (int32_t)s;
    return 0;
}

int ms_gguf_get_u64(const ms_gguf *g, const char *key, uint64_t *out, char *err, size_t err_size) {
    uint64_t u;
    int64_t s;
    if (s_get_int(g, key, "uint64", 0, UINT64_MAX, &u, &s, err, err_size)) return -1;
    *out = u;
    return 0;
}

int ms_gguf_get_f32(const ms_gguf *g, const char *key, float *out, char *err, size_t err_size) {
    const s_kv *kv = NULL;
    if (s_find_typed(g, key, &kv, err, err_size)) return -1;
    if (kv->type == MS_GGUF_FLOAT32) {
        memcpy(out, kv->raw, sizeof *out);
        return 0;
    }
    if (kv->type == MS_GGUF_FLOAT64) {
        double d;
        memcpy(&d, kv->raw, sizeof d);
        if (isfinite(d) && fabs(d) > FLT_MAX) /* the conversion would be undefined */
            return ms_errf(err, err_size, "key '%s' value %g (float64) does not fit float32", key,
                           d);
        *out = (float)d;
        return 0;
    }
    return s_type_err(kv, "float32", err, err_size);
}

int ms_gguf_get_bool(const ms_gguf *g, const char *key, bool *out, char *err, size_t err_size) {
    const s_kv *kv = NULL;
    if (s_find_typed(g, key, &kv, err, err_size)) return -1;
    if (kv->type != MS_GGUF_BOOL) return s_type_err(kv, "bool", err, err_size);
    *out = kv->raw[0] != 0;
    return 0;
}

int ms_gguf_get_str(const ms_gguf *g, const char *key, const char **out, char *err,
                    size_t err_size) {
    const s_kv *kv = NULL;
    if (s_find_typed(g, key, &kv, err, err_size)) return -1;
    if (kv->type != MS_GGUF_STRING) return s_type_err(kv, "string", err, err_size);
    *out = kv->str;
    return 0;
}

int ms_gguf_get_arr(const ms_gguf *g, const char *key, ms_gguf_type elem, int64_t *index,
                    uint64_t *n, char *err, size_t err_size) {
    const s_kv *kv = NULL;
    if (s_find_typed(g, key, &kv, err, err_size)) return -1;
    if (kv->type != MS_GGUF_ARRAY || kv->arr_type != elem) {
        char want[64];
        snprintf(want, sizeof want, "array of %s", ms_gguf_type_name(elem));
        return s_type_err(kv, want, err, err_size);
    }
    *index = kv - g->kv;
    *n = kv->arr_n;
    return 0;
}

/* ---- tensors --------------------------------------------------------------- */

int64_t ms_gguf_n_tensors(const ms_gguf *g) {
    return g->n_tensors;
}

ms_tensor *ms_gguf_tensor(ms_gguf *g, int64_t i) {
    assert(i >= 0 && i < g->n_tensors && "tensor index out of range");
    return &g->tensors[i];
}

uint64_t ms_gguf_tensor_offset(const ms_gguf *g, int64_t i) {
    assert(i >= 0 && i < g->n_tensors && "tensor index out of range");
    return g->offsets[i];
}

ms_tensor *ms_gguf_find_tensor(ms_gguf *g, const char *name) {
    int64_t i = s_index_find(&g->t_index, name, s_tensor_name, g->tensors);
    return i < 0 ? NULL : &g->tensors[i];
}

static void s_fmt_shape(char *buf, size_t size, int n_dims, const int64_t *ne) {
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < n_dims && n < size; d++)
        n += (size_t)snprintf(buf + n, size - n, "%s%" PRId64, d ? ", " : "", ne[d]);
    if (n < size) snprintf(buf + n, size - n, "]");
}

ms_tensor *ms_gguf_expect_tensor(ms_gguf *g, const char *name, int n_dims, const int64_t *ne,
                                 uint64_t types, char *err, size_t err_size) {
    assert(n_dims >= 1 && n_dims <= MS_MAX_DIMS);
    ms_tensor *t = ms_gguf_find_tensor(g, name);
    if (!t) {
        ms_errf(err, err_size, "missing tensor '%s'", name);
        return NULL;
    }
    bool ok = true;
    for (int d = 0; d < MS_MAX_DIMS; d++)
        ok = ok && t->ne[d] == (d < n_dims ? ne[d] : 1);
    if (!ok) {
        char have[128], want[128];
        s_fmt_shape(have, sizeof have, t->n_dims, t->ne);
        s_fmt_shape(want, sizeof want, n_dims, ne);
        ms_errf(err, err_size, "tensor '%s' has shape %s, expected %s", name, have, want);
        return NULL;
    }
    if (types && !(t->type < 64 && (types >> t->type) & 1)) {
        char want[256];
        size_t n = 0;
        want[0] = 0;
        for (unsigned k = 0; k < 64 && n < sizeof want; k++)
            if ((types >> k) & 1)
                n += (size_t)snprintf(want + n, sizeof want - n, "%s%s", n ? ", " : "",
                                      s_ggml_type_name(k));
        ms_errf(err, err_size, "tensor '%s' has type %s, expected %s", name, ms_type_name(t->type),
                want);
        return NULL;
    }
    return t;
}
