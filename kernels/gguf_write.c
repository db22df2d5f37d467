/* gguf_write.c — the GGUF writer (see gguf.h; the reader is gguf.c).
 *
 * Key/values are kept already encoded (the bytes after the u32 type field),
 * so writing is a concatenation. The file is GGUF v3, little-endian, with the
 * alignment from a u32 'general.alignment' key if one was set (it must be a
 * power of two) and MS_GGUF_DEFAULT_ALIGNMENT otherwise. Every tensor's data
 * starts at an aligned offset and is followed by zero padding up to the next
 * multiple of the alignment (the last one too, as llama.cpp and gguf-py do).
 */
#include "gguf.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

#define S_GGUF_VERSION 3

typedef struct s_buf {
    uint8_t *p; /* bytes */
    size_t n;   /* used */
    size_t cap; /* allocated */
} s_buf;

typedef struct s_wkv {
    char *key;         /* NUL-terminated copy */
    ms_gguf_type type; /* value type */
    s_buf val;         /* encoded value (after the type field) */
} s_wkv;

typedef struct s_wtensor {
    char *name; /* NUL-terminated copy */
    ms_type type;
    int n_dims;
    int64_t ne[MS_MAX_DIMS]; /* unused dims 1 */
    size_t nbytes;
    uint8_t *data; /* copy of the data [nbytes] */
} s_wtensor;

struct ms_gguf_writer {
    s_wkv *kv; /* [n_kv], insertion order */
    size_t n_kv, cap_kv;
    s_wtensor *t; /* [n_t], insertion order */
    size_t n_t, cap_t;
};

/* ---- buffers --------------------------------------------------------------- */

static void s_put(s_buf *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n)
            cap *= 2;
        b->p = ms_xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void s_put32(s_buf *b, uint32_t v) {
    s_put(b, &v, 4);
}
static void s_put64(s_buf *b, uint64_t v) {
    s_put(b, &v, 8);
}

static void s_put_str(s_buf *b, const char *s) {
    size_t n = strlen(s);
    s_put64(b, n);
    s_put(b, s, n);
}

/* ---- lifecycle ------------------------------------------------------------- */

ms_gguf_writer *ms_gguf_writer_new(void) {
    return ms_xcalloc(1, sizeof(ms_gguf_writer));
}

void ms_gguf_writer_destroy(ms_gguf_writer **w_p) {
    if (!w_p || !*w_p) return;
    ms_gguf_writer *w = *w_p;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val.p);
    }
    free(w->kv);
    for (size_t i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free(w->t);
    free(w);
    *w_p = NULL;
}

/* ---- key/values ------------------------------------------------------------ */

/* The value buffer for `key`, emptied: an existing key keeps its place. */
static s_buf *s_slot(ms_gguf_writer *w, const char *key, ms_gguf_type type) {
    assert(w && key);
    for (size_t i = 0; i < w->n_kv; i++) {
        if (!strcmp(w->kv[i].key, key)) {
            w->kv[i].type = type;
            w->kv[i].val.n = 0;
            return &w->kv[i].val;
        }
    }
    if (w->n_kv == w->cap_kv) {
        w->cap_kv = w->cap_kv ? 2 * w->cap_kv : 16;
        w->kv = ms_xrealloc(w->kv, w->cap_kv * sizeof *w->kv);
    }
    s_wkv *kv = &w->kv[w->n_kv++];
    memset(kv, 0, sizeof *kv);
    kv->key = ms_xstrdup(key);
    kv->type = type;
    return &kv->val;
}

void ms_gguf_set_u32(ms_gguf_writer *w, const char *key, uint32_t v) {
    s_put32(s_slot(w, key, MS_GGUF_UINT32), v);
}

void ms_gguf_set_i32(ms_gguf_writer *w, const char *key, int32_t v) {
    s_put(s_slot(w, key, MS_GGUF_INT32), &v, 4);
}

void ms_gguf_set_u64(ms_gguf_writer *w, const char *key, uint64_t v) {
    s_put64(s_slot(w, key, MS_GGUF_UINT64), v);
}

void ms_gguf_set_f32(ms_gguf_writer *w, const char *key, float v) {
    s_put(s_slot(w, key, MS_GGUF_FLOAT32), &v, 4);
}

void ms_gguf_set_bool(ms_gguf_writer *w, const char *key, bool v) {
    uint8_t b = v ? 1 : 0;
    s_put(s_slot(w, key, MS_GGUF_BOOL), &b, 1);
}

void ms_gguf_set_str(ms_gguf_writer *w, const char *key, const char *v) {
    assert(v);
    s_put_str(s_slot(w, key, MS_GGUF_STRING), v);
}

void ms_gguf_set_arr(ms_gguf_writer *w, const char *key, ms_gguf_type elem, const void *data,
                     uint64_t n) {
    assert(elem < MS_GGUF_TYPE_COUNT && elem != MS_GGUF_ARRAY && "bad array element type");
    assert(data || n == 0);
    s_buf *b = s_slot(w, key, MS_GGUF_ARRAY);
    s_put32(b, (uint32_t)elem);
    s_put64(b, n);
    if (elem == MS_GGUF_STRING) {
        const char *const *strs = data;
        for (uint64_t i = 0; i < n; i++)
            s_put_str(b, strs[i]);
        return;
    }
    size_t es;
    switch (elem) {
    case MS_GGUF_UINT8:
    case MS_GGUF_INT8:
    case MS_GGUF_BOOL:
        es = 1;
        break;
    case MS_GGUF_UINT16:
    case MS_GGUF_INT16:
        es = 2;
        break;
    case MS_GGUF_UINT64:
    case MS_GGUF_INT64:
    case MS_GGUF_FLOAT64:
        es = 8;
        break;
    default:
        es = 4;
        break;
    }
    s_put(b, data, (size_t)n * es);
}

/* ---- tensors --------------------------------------------------------------- */

int ms_gguf_add_tensor(ms_gguf_writer *w, const char *name, ms_type type, int n_dims,
                       const int64_t *ne, const void *data, size_t nbytes) {
    assert(w && name && ne);
    if (n_dims < 1 || n_dims > MS_MAX_DIMS || !ms_type_known((uint32_t)type)) return -1;
    if (strlen(name) > MS_GGUF_MAX_KEY) return -1;
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return -1;
    uint64_t rows = 1, total;
    for (int d = 0; d < n_dims; d++)
        if (ne[d] < 0) return -1;
    for (int d = 1; d < n_dims; d++)
        if (__builtin_mul_overflow(rows, (uint64_t)ne[d], &rows)) return -1;
    size_t row = ms_row_bytes(type, ne[0]);
    if (row == 0 && ne[0] != 0) return -1; /* ne[0] not a multiple of the block size */
    if (__builtin_mul_overflow((uint64_t)row, rows, &total) || total != nbytes) return -1;

    if (w->n_t == w->cap_t) {
        w->cap_t = w->cap_t ? 2 * w->cap_t : 16;
        w->t = ms_xrealloc(w->t, w->cap_t * sizeof *w->t);
    }
    s_wtensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    t->name = ms_xstrdup(name);
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < MS_MAX_DIMS; d++)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    t->nbytes = nbytes;
    t->data = ms_xmalloc(nbytes);
    if (data)
        memcpy(t->data, data, nbytes);
    else
        memset(t->data, 0, nbytes);
    return 0;
}

/* ---- writing --------------------------------------------------------------- */

static size_t s_pad(size_t n, size_t align) {
    return (align - n % align) % align;
}

/* Alignment: a u32 general.alignment key if set, else the default. 0 if invalid. */
static size_t s_alignment(const ms_gguf_writer *w) {
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, "general.alignment")) continue;
        if (w->kv[i].type != MS_GGUF_UINT32) return 0;
        uint32_t a;
        memcpy(&a, w->kv[i].val.p, 4);
        return a && !(a & (a - 1)) ? a : 0;
    }
    return MS_GGUF_DEFAULT_ALIGNMENT;
}

int ms_gguf_writer_write(const ms_gguf_writer *w, const char *path, char *err, size_t err_size) {
    static const uint8_t zeros[256];
    size_t align = s_alignment(w);
    if (align == 0 || align > sizeof zeros)
        return ms_errf(err, err_size,
                       "%s: key 'general.alignment' must be a uint32 power of two <= %zu", path,
                       sizeof zeros);

    /* header, key/values and tensor infos in memory; data streamed after */
    s_buf h = {0};
    s_put32(&h, MS_GGUF_MAGIC);
    s_put32(&h, S_GGUF_VERSION);
    s_put64(&h, w->n_t);
    s_put64(&h, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        s_put_str(&h, w->kv[i].key);
        s_put32(&h, (uint32_t)w->kv[i].type);
        s_put(&h, w->kv[i].val.p, w->kv[i].val.n);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const s_wtensor *t = &w->t[i];
        s_put_str(&h, t->name);
        s_put32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++)
            s_put64(&h, (uint64_t)t->ne[d]);
        s_put32(&h, (uint32_t)t->type);
        s_put64(&h, off);
        off += t->nbytes + s_pad(t->nbytes, align);
    }
    s_put(&h, zeros, s_pad(h.n, align));

    FILE *f = fopen(path, "wb");
    if (!f) {
        free(h.p);
        return ms_errf(err, err_size, "%s: cannot create: %s", path, strerror(errno));
    }
    bool ok = fwrite(h.p, 1, h.n, f) == h.n;
    free(h.p);
    for (size_t i = 0; ok && i < w->n_t; i++) {
        const s_wtensor *t = &w->t[i];
        size_t pad = s_pad(t->nbytes, align);
        ok = fwrite(t->data, 1, t->nbytes, f) == t->nbytes && fwrite(zeros, 1, pad, f) == pad;
    }
    int werr = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        werr = errno;
    }
    if (!ok) {
        remove(path);
        return ms_errf(err, err_size, "%s: write failed: %s", path, strerror(werr));
    }
    return 0;
}
