/* wire.c — the table-driven msgpack codec of wire.h.
 *
 * The field tables are generated from messages.def (X-macros); one decoder
 * and one encoder walk them. Decoding uses a small bounds-checked msgpack
 * reader of its own (no msgpack zone: every count is checked against the
 * bytes left before anything is allocated, and decoded data is copied into
 * malloc'd storage owned by the ms_msg). Encoding uses msgpack-c's packer.
 */
#include "wire.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

/* ---- tables generated from messages.def ------------------------------------- */
typedef struct s_struct s_struct;

typedef struct s_field {
    const char *name;
    ms_wire_kind kind;
    size_t off;          /* offset of the value in the owner struct */
    size_t n_off;        /* arrays: offset of n_<name> (uint32_t) */
    size_t has_off;      /* OPT: offset of has_<name>; SIZE_MAX for REQ */
    uint64_t max;        /* bound (see messages.def) */
    const s_struct *sub; /* OBJ / OBJS: the element struct */
} s_field;

struct s_struct {
    const char *name; /* "submit", "image_ref", ... */
    size_t size;      /* sizeof the C struct */
    const s_field *fields;
    size_t n_fields;
};

typedef struct s_msgdesc {
    const s_struct *st;
    const char *frames_field; /* "" for none */
    size_t fixed_frames;
    uint64_t max_frame_bytes;
} s_msgdesc;

/* clang-format off */
/* Owner aliases so that MS_FIELD can name its owner type without knowing
 * whether it is a message or a nested struct. */
#define MS_STRUCT(s)                      typedef ms_wire_##s s_owner_##s;
#define MS_STRUCT_END(s)
#define MS_MSG(m, M, ffield, fixed, maxb) typedef ms_msg_##m s_owner_##m;
#define MS_MSG_END(m)
#define MS_FIELD(o, n, K, sub, max, P)
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD

#define S_NOFF_UINT(o, n)  0
#define S_NOFF_INT(o, n)   0
#define S_NOFF_FLOAT(o, n) 0
#define S_NOFF_BOOL(o, n)  0
#define S_NOFF_STR(o, n)   0
#define S_NOFF_OBJ(o, n)   0
#define S_NOFF_I32S(o, n)  offsetof(s_owner_##o, n_##n)
#define S_NOFF_TOKS(o, n)  offsetof(s_owner_##o, n_##n)
#define S_NOFF_STRS(o, n)  offsetof(s_owner_##o, n_##n)
#define S_NOFF_OBJS(o, n)  offsetof(s_owner_##o, n_##n)
#define S_HAS_REQ(o, n)    SIZE_MAX
#define S_HAS_OPT(o, n)    offsetof(s_owner_##o, has_##n)
#define S_SUB_UINT(sub)    NULL
#define S_SUB_INT(sub)     NULL
#define S_SUB_FLOAT(sub)   NULL
#define S_SUB_BOOL(sub)    NULL
#define S_SUB_STR(sub)     NULL
#define S_SUB_I32S(sub)    NULL
#define S_SUB_TOKS(sub)    NULL
#define S_SUB_STRS(sub)    NULL
#define S_SUB_OBJ(sub)     &s_desc_##sub
#define S_SUB_OBJS(sub)    &s_desc_##sub

#define MS_STRUCT(s)     static const s_field s_fields_##s[] = {
#define MS_STRUCT_END(s) };                                                      \
    static const s_struct s_desc_##s = {#s, sizeof(ms_wire_##s), s_fields_##s,     \
                                        MS_ARRAY_LEN(s_fields_##s)};
#define MS_MSG(m, M, ffield, fixed, maxb) static const s_field s_fields_##m[] = {
#define MS_MSG_END(m) };                                                         \
    static const s_struct s_desc_##m = {#m, sizeof(ms_msg_##m), s_fields_##m,       \
                                        MS_ARRAY_LEN(s_fields_##m)};
#define MS_FIELD(o, n, K, sub, max, P)                                             \
    {#n, MS_WIRE_##K, offsetof(s_owner_##o, n), S_NOFF_##K(o, n), S_HAS_##P(o, n), \
     (uint64_t)(max), S_SUB_##K(sub)},
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD

static const s_msgdesc s_msgs[MS_MSG_COUNT] = {
#define MS_STRUCT(s)
#define MS_STRUCT_END(s)
#define MS_MSG(m, M, ffield, fixed, maxb) [MS_MSG_##M] = {&s_desc_##m, ffield, fixed, (uint64_t)(maxb)},
#define MS_MSG_END(m)
#define MS_FIELD(o, n, K, sub, max, P)
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD
};

/* Every struct's fields fit the "seen" bitmask of the decoder. */
#define MS_STRUCT(s)                      _Static_assert(MS_ARRAY_LEN(s_fields_##s) <= MS_WIRE_MAX_FIELDS, #s);
#define MS_STRUCT_END(s)
#define MS_MSG(m, M, ffield, fixed, maxb) _Static_assert(MS_ARRAY_LEN(s_fields_##m) <= MS_WIRE_MAX_FIELDS, #m);
#define MS_MSG_END(m)
#define MS_FIELD(o, n, K, sub, max, P)
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD
_Static_assert(MS_WIRE_MAX_FIELDS <= 64, "seen bitmask is a uint64_t");
/* clang-format on */

static const s_struct *s_desc_of(ms_msg_type t) {
    return (t > MS_MSG_NONE && t < MS_MSG_COUNT) ? s_msgs[t].st : NULL;
}

/* ---- names ------------------------------------------------------------------------ */
const char *ms_wire_status_name(ms_wire_status s) {
    switch (s) {
    case MS_WIRE_OK:
        return "ok";
    case MS_WIRE_MALFORMED:
        return "malformed";
    case MS_WIRE_TRANSPORT:
        return "transport failure";
    case MS_WIRE_TIMEOUT:
        return "timeout";
    }
    return "?";
}

static const char *const s_code_names[MS_CODE_COUNT] = {
    "bad_request", "overloaded", "unavailable", "timeout",
    "internal",    "cancelled",  "not_found",   "draining",
};

const char *ms_wire_code_name(ms_wire_code c) {
    return ((unsigned)c < MS_CODE_COUNT) ? s_code_names[c] : "?";
}

int ms_wire_code_parse(const char *s, ms_wire_code *out) {
    for (int i = 0; s && i < MS_CODE_COUNT; i++)
        if (strcmp(s, s_code_names[i]) == 0) {
            *out = (ms_wire_code)i;
            return 0;
        }
    return -1;
}

static const char *const s_finish_names[MS_WIRE_FINISH_COUNT] = {"eog", "length", "stop", "cancel",
                                                            "timeout"};

const char *ms_wire_finish_name(ms_wire_finish f) {
    return ((unsigned)f < MS_WIRE_FINISH_COUNT) ? s_finish_names[f] : "?";
}

int ms_wire_finish_parse(const char *s, ms_wire_finish *out) {
    for (int i = 0; s && i < MS_WIRE_FINISH_COUNT; i++)
        if (strcmp(s, s_finish_names[i]) == 0) {
            *out = (ms_wire_finish)i;
            return 0;
        }
    return -1;
}

const char *ms_msg_type_name(ms_msg_type t) {
    if (t == MS_MSG_NONE) return "none";
    const s_struct *st = s_desc_of(t);
    return st ? st->name : "?";
}

ms_msg_type ms_msg_type_parse(const char *name) {
    for (int t = MS_MSG_NONE + 1; name && t < MS_MSG_COUNT; t++)
        if (strcmp(name, s_msgs[t].st->name) == 0) return (ms_msg_type)t;
    return MS_MSG_NONE;
}

/* Same as ms_msg_type_parse for a non-terminated name. */
static ms_msg_type s_type_parse_n(const char *name, size_t len) {
    for (int t = MS_MSG_NONE + 1; t < MS_MSG_COUNT; t++) {
        const char *n = s_msgs[t].st->name;
        if (strlen(n) == len && memcmp(n, name, len) == 0) return (ms_msg_type)t;
    }
    return MS_MSG_NONE;
}

/* ---- field access -------------------------------------------------------------------- */
#define S_AT(base, off, T)  ((T *)(void *)((char *)(base) + (off)))
#define S_CAT(base, off, T) ((const T *)(const void *)((const char *)(base) + (off)))

static bool s_is_array(ms_wire_kind k) {
    return k == MS_WIRE_I32S || k == MS_WIRE_TOKS || k == MS_WIRE_STRS || k == MS_WIRE_OBJS;
}

static bool s_present(const s_field *f, const void *base) {
    return f->has_off == SIZE_MAX || *S_CAT(base, f->has_off, bool);
}

static void s_free_struct(const s_struct *st, void *base) {
    for (size_t i = 0; i < st->n_fields; i++) {
        const s_field *f = &st->fields[i];
        switch (f->kind) {
        case MS_WIRE_STR:
            free(*S_AT(base, f->off, char *));
            break;
        case MS_WIRE_I32S:
        case MS_WIRE_TOKS:
            free(*S_AT(base, f->off, int32_t *));
            break;
        case MS_WIRE_STRS: {
            char **v = *S_AT(base, f->off, char **);
            uint32_t n = *S_AT(base, f->n_off, uint32_t);
            for (uint32_t k = 0; v && k < n; k++)
                free(v[k]);
            free(v);
            break;
        }
        case MS_WIRE_OBJ:
            s_free_struct(f->sub, S_AT(base, f->off, char));
            break;
        case MS_WIRE_OBJS: {
            char *v = *S_AT(base, f->off, char *);
            uint32_t n = *S_AT(base, f->n_off, uint32_t);
            for (uint32_t k = 0; v && k < n; k++)
                s_free_struct(f->sub, v + (size_t)k * f->sub->size);
            free(v);
            break;
        }
        default:
            break;
        }
    }
    memset(base, 0, st->size);
}

void ms_msg_init(ms_msg *m, ms_msg_type type) {
    memset(m, 0, sizeof *m);
    m->type = type;
}

void ms_msg_fini(ms_msg *m) {
    if (!m) return;
    const s_struct *st = s_desc_of(m->type);
    if (st) s_free_struct(st, &m->submit);
    memset(m, 0, sizeof *m);
}

/* ---- semantic checks shared by encoder and decoder ------------------------------------- */
static int s_check_images(const char *msg, const ms_wire_image_ref *im, uint32_t n,
                          bool need_tokens, bool need_ep, char *err, size_t err_size) {
    for (uint32_t i = 0; i < n; i++) {
        if (need_tokens && !im[i].has_n_tokens)
            return ms_errf(err, err_size, "missing field 'n_tokens' in images[%u] of %s", i, msg);
        if (need_ep && !im[i].has_data_ep)
            return ms_errf(err, err_size, "missing field 'data_ep' in images[%u] of %s", i, msg);
    }
    return 0;
}

static int s_check_code(const char *field, const char *s, bool producer, char *err,
                        size_t err_size) {
    ms_wire_code c;
    if (ms_wire_code_parse(s, &c) != 0 || (producer && c >= MS_CODE_PRODUCER_COUNT))
        return ms_errf(err, err_size, "field '%s' is '%s', not a known error code", field,
                       s ? s : "");
    return 0;
}

static int s_check_finish(const char *s, char *err, size_t err_size) {
    ms_wire_finish f;
    if (ms_wire_finish_parse(s, &f) != 0)
        return ms_errf(err, err_size,
                       "field 'finish' is '%s', expected eog, length, stop, cancel or timeout",
                       s ? s : "");
    return 0;
}

/* Rules messages.def cannot state field by field. */
static int s_check_msg(const ms_msg *m, char *err, size_t err_size) {
    switch (m->type) {
    case MS_MSG_SUBMIT: {
        const ms_msg_submit *s = &m->submit;
        if (s->has_prompt == s->has_messages)
            return ms_errf(err, err_size, "submit needs exactly one of 'prompt' and 'messages'");
        if (s->has_messages && s->n_messages == 0)
            return ms_errf(err, err_size, "array 'messages' is empty");
        return 0;
    }
    case MS_MSG_DONE:
        return s_check_finish(m->done.finish, err, err_size);
    case MS_MSG_TASK_DONE:
        return s_check_finish(m->task_done.finish, err, err_size);
    case MS_MSG_ERROR:
        return s_check_code("code", m->error.code, true, err, err_size);
    case MS_MSG_TASK_ERROR:
        return s_check_code("code", m->task_error.code, false, err, err_size);
    case MS_MSG_DATA_ERROR:
        return s_check_code("code", m->data_error.code, false, err, err_size);
    case MS_MSG_ENCODED:
        return s_check_images("encoded", m->encoded.images, m->encoded.n_images, true, false, err,
                              err_size);
    case MS_MSG_PREFILL_TASK: {
        const char *mode = m->prefill_task.mode ? m->prefill_task.mode : "";
        if (strcmp(mode, "decode") != 0 && strcmp(mode, "handoff") != 0)
            return ms_errf(err, err_size, "field 'mode' is '%s', expected decode or handoff", mode);
        return s_check_images("prefill_task", m->prefill_task.images, m->prefill_task.n_images,
                              false, true, err, err_size);
    }
    default:
        return 0;
    }
}

/* ---- msgpack reader ---------------------------------------------------------------------- */
typedef enum s_class {
    C_NIL,
    C_BOOL,
    C_UINT,
    C_INT,
    C_F32,
    C_F64,
    C_STR,
    C_BIN,
    C_ARRAY,
    C_MAP,
    C_EXT
} s_class;

static const char *const s_class_names[] = {"nil", "bool", "uint",  "int", "float32", "float64",
                                            "str", "bin",  "array", "map", "ext"};

/* One msgpack item header. */
typedef struct s_tok {
    s_class cls;
    bool b;           /* C_BOOL */
    uint64_t u;       /* C_UINT */
    int64_t i;        /* C_INT (negative) */
    double f;         /* C_F32 / C_F64 */
    const uint8_t *s; /* C_STR / C_BIN: bytes */
    uint32_t n;       /* C_STR / C_BIN: bytes; C_ARRAY / C_MAP: elements / pairs */
} s_tok;

typedef struct s_rd {
    const uint8_t *p;
    size_t len, pos;
    char *err;
    size_t err_size;
} s_rd;

static int s_need(s_rd *r, size_t n) {
    if (r->len - r->pos < n)
        return ms_errf(r->err, r->err_size, "header truncated: %zu bytes, needs at least %zu",
                       r->len, r->pos + n);
    return 0;
}

static uint64_t s_be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads a big-endian unsigned of n bytes. */
static int s_rd_be(s_rd *r, int n, uint64_t *v) {
    if (s_need(r, (size_t)n) != 0) return -1;
    *v = s_be(r->p + r->pos, n);
    r->pos += (size_t)n;
    return 0;
}

static void s_set_int(s_tok *t, int64_t v) {
    if (v >= 0) {
        t->cls = C_UINT;
        t->u = (uint64_t)v;
    } else {
        t->cls = C_INT;
        t->i = v;
    }
}

/* Reads the next item's header; str/bin bytes are skipped over (t->s points
 * at them), ext payloads skipped. Array/map counts are checked against the
 * bytes left (an element takes at least one byte) so that a count can size
 * an allocation. */
static int s_next(s_rd *r, s_tok *t) {
    memset(t, 0, sizeof *t);
    if (s_need(r, 1) != 0) return -1;
    size_t at = r->pos;
    uint8_t c = r->p[r->pos++];
    uint64_t v = 0;
    size_t blen = 0;
    if (c <= 0x7f) {
        t->cls = C_UINT;
        t->u = c;
        return 0;
    }
    if (c >= 0xe0) {
        t->cls = C_INT;
        t->i = (int8_t)c;
        return 0;
    }
    /* clang-format off */
    if (c >= 0x80 && c <= 0x8f) { t->cls = C_MAP; v = c & 0x0f; goto count; }
    if (c >= 0x90 && c <= 0x9f) { t->cls = C_ARRAY; v = c & 0x0f; goto count; }
    if (c >= 0xa0 && c <= 0xbf) { t->cls = C_STR; blen = c & 0x1f; goto bytes; }
    switch (c) {
    case 0xc0: t->cls = C_NIL; return 0;
    case 0xc2: t->cls = C_BOOL; t->b = false; return 0;
    case 0xc3: t->cls = C_BOOL; t->b = true; return 0;
    case 0xc4: case 0xc5: case 0xc6:
        t->cls = C_BIN;
        if (s_rd_be(r, 1 << (c - 0xc4), &v) != 0) return -1;
        blen = (size_t)v;
        goto bytes;
    case 0xc7: case 0xc8: case 0xc9:
        t->cls = C_EXT;
        if (s_rd_be(r, 1 << (c - 0xc7), &v) != 0) return -1;
        blen = (size_t)v + 1; /* type byte + data */
        goto bytes;
    case 0xca: {
        if (s_rd_be(r, 4, &v) != 0) return -1;
        uint32_t u32 = (uint32_t)v;
        float f;
        memcpy(&f, &u32, 4);
        t->cls = C_F32;
        t->f = f;
        return 0;
    }
    case 0xcb: {
        if (s_rd_be(r, 8, &v) != 0) return -1;
        double d;
        memcpy(&d, &v, 8);
        t->cls = C_F64;
        t->f = d;
        return 0;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        if (s_rd_be(r, 1 << (c - 0xcc), &v) != 0) return -1;
        t->cls = C_UINT;
        t->u = v;
        return 0;
    case 0xd0: if (s_rd_be(r, 1, &v) != 0) return -1; s_set_int(t, (int8_t)v); return 0;
    case 0xd1: if (s_rd_be(r, 2, &v) != 0) return -1; s_set_int(t, (int16_t)v); return 0;
    case 0xd2: if (s_rd_be(r, 4, &v) != 0) return -1; s_set_int(t, (int32_t)v); return 0;
    case 0xd3: if (s_rd_be(r, 8, &v) != 0) return -1; s_set_int(t, (int64_t)v); return 0;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        t->cls = C_EXT;
        blen = 1 + ((size_t)1 << (c - 0xd4));
        goto bytes;
    case 0xd9: case 0xda: case 0xdb:
        t->cls = C_STR;
        if (s_rd_be(r, 1 << (c - 0xd9), &v) != 0) return -1;
        blen = (size_t)v;
        goto bytes;
    case 0xdc: case 0xdd:
        t->cls = C_ARRAY;
        if (s_rd_be(r, 2 << (c - 0xdc), &v) != 0) return -1;
        goto count;
    case 0xde: case 0xdf:
        t->cls = C_MAP;
        if (s_rd_be(r, 2 << (c - 0xde), &v) != 0) return -1;
        goto count;
    default: /* 0xc1 */
        /* clang-format on */
        return ms_errf(r->err, r->err_size, "invalid msgpack byte 0x%02x at offset %zu", c, at);
    }
bytes:
    if (s_need(r, blen) != 0) return -1;
    t->s = r->p + r->pos;
    t->n = (uint32_t)blen; /* blen < 2^32 + 1; ext lengths are not used */
    r->pos += blen;
    return 0;
count : {
    uint64_t min_bytes = (t->cls == C_MAP) ? 2 * v : v;
    if (min_bytes > r->len - r->pos)
        return ms_errf(r->err, r->err_size,
                       "header truncated: %s of %llu elements at offset %zu needs more bytes "
                       "than the %zu left",
                       s_class_names[t->cls], (unsigned long long)v, at, r->len - r->pos);
    t->n = (uint32_t)v;
    return 0;
}
}

/* Skips the value whose header is t (its nested items, depth-limited). */
static int s_skip_body(s_rd *r, const s_tok *t, int depth) {
    if (t->cls != C_ARRAY && t->cls != C_MAP) return 0;
    if (depth >= MS_WIRE_MAX_DEPTH)
        return ms_errf(r->err, r->err_size, "header nested deeper than %d levels",
                       MS_WIRE_MAX_DEPTH);
    uint64_t items = (t->cls == C_MAP) ? 2ull * t->n : t->n;
    for (uint64_t i = 0; i < items; i++) {
        s_tok e;
        if (s_next(r, &e) != 0 || s_skip_body(r, &e, depth + 1) != 0) return -1;
    }
    return 0;
}

/* A received name made printable for an error message. */
static void s_printable(const uint8_t *s, size_t n, char *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap; i++)
        out[k++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
    if (n > 0 && k < n && k + 4 >= cap) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = 0;
}

/* ---- decoder ----------------------------------------------------------------------------------
 */
#define S_PATH 160 /* bytes of a field path in messages ("messages[12].content") */

/* Formats a field path (truncated if ever too long: it only names things in errors). */
static void s_path(char *out, size_t cap, const char *fmt, ...) MS_PRINTF(3, 4);
static void s_path(char *out, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

static int s_type_err(s_rd *r, const char *path, const s_tok *t, const char *expected) {
    return ms_errf(r->err, r->err_size, "field '%s' has type %s, expected %s", path,
                   s_class_names[t->cls], expected);
}

static int s_dec_struct(s_rd *r, const s_struct *st, void *base, const char *path, int depth,
                        uint32_t n_pairs, bool top);

/* An integer item as int64 range-checked for int32 / token ids. */
static int s_dec_i32(s_rd *r, const char *path, bool token, int32_t *out) {
    s_tok t;
    if (s_next(r, &t) != 0) return -1;
    if (t.cls == C_UINT) {
        if (t.u > INT32_MAX)
            return ms_errf(r->err, r->err_size, "field '%s' is %llu, beyond int32", path,
                           (unsigned long long)t.u);
        *out = (int32_t)t.u;
        return 0;
    }
    if (t.cls == C_INT) {
        if (token)
            return ms_errf(r->err, r->err_size, "field '%s' is %lld, expected a token id (>= 0)",
                           path, (long long)t.i);
        if (t.i < INT32_MIN)
            return ms_errf(r->err, r->err_size, "field '%s' is %lld, beyond int32", path,
                           (long long)t.i);
        *out = (int32_t)t.i;
        return 0;
    }
    return s_type_err(r, path, &t, token ? "token id (uint)" : "int32");
}

static int s_dec_str(s_rd *r, const char *path, const s_tok *t, uint64_t max, char **out) {
    if (t->cls != C_STR) return s_type_err(r, path, t, "str");
    if (t->n > max)
        return ms_errf(r->err, r->err_size, "string '%s' is %u bytes, limit %llu", path, t->n,
                       (unsigned long long)max);
    if (memchr(t->s, 0, t->n))
        return ms_errf(r->err, r->err_size, "string '%s' contains a NUL byte", path);
    char *s = ms_xmalloc((size_t)t->n + 1);
    memcpy(s, t->s, t->n);
    s[t->n] = 0;
    *out = s;
    return 0;
}

static int s_array_header(s_rd *r, const char *path, const s_field *f, const char *what, s_tok *t) {
    if (s_next(r, t) != 0) return -1;
    if (t->cls != C_ARRAY) return s_type_err(r, path, t, what);
    if (t->n > f->max)
        return ms_errf(r->err, r->err_size, "array '%s' has %u elements, limit %llu", path, t->n,
                       (unsigned long long)f->max);
    return 0;
}

static int s_dec_field(s_rd *r, const s_field *f, void *base, const char *path, int depth) {
    s_tok t;
    char sub[S_PATH];
    switch (f->kind) {
    case MS_WIRE_UINT:
        if (s_next(r, &t) != 0) return -1;
        if (t.cls != C_UINT) return s_type_err(r, path, &t, "uint");
        if (t.u > f->max)
            return ms_errf(r->err, r->err_size, "field '%s' is %llu, limit %llu", path,
                           (unsigned long long)t.u, (unsigned long long)f->max);
        *S_AT(base, f->off, uint64_t) = t.u;
        return 0;
    case MS_WIRE_INT: {
        if (s_next(r, &t) != 0) return -1;
        int64_t v;
        if (t.cls == C_UINT) {
            if (t.u > (uint64_t)INT64_MAX || t.u > f->max)
                return ms_errf(r->err, r->err_size, "field '%s' is %llu, limit %llu", path,
                               (unsigned long long)t.u, (unsigned long long)f->max);
            v = (int64_t)t.u;
        } else if (t.cls == C_INT) {
            v = t.i;
            uint64_t mag = (uint64_t)(-(v + 1)) + 1;
            if (mag > f->max)
                return ms_errf(r->err, r->err_size, "field '%s' is %lld, limit -%llu", path,
                               (long long)v, (unsigned long long)f->max);
        } else {
            return s_type_err(r, path, &t, "int");
        }
        *S_AT(base, f->off, int64_t) = v;
        return 0;
    }
    case MS_WIRE_FLOAT: {
        if (s_next(r, &t) != 0) return -1;
        double d;
        if (t.cls == C_F32 || t.cls == C_F64)
            d = t.f;
        else if (t.cls == C_UINT)
            d = (double)t.u;
        else if (t.cls == C_INT)
            d = (double)t.i;
        else
            return s_type_err(r, path, &t, "float");
        if (!isfinite(d)) return ms_errf(r->err, r->err_size, "field '%s' is not finite", path);
        *S_AT(base, f->off, double) = d;
        return 0;
    }
    case MS_WIRE_BOOL:
        if (s_next(r, &t) != 0) return -1;
        if (t.cls != C_BOOL) return s_type_err(r, path, &t, "bool");
        *S_AT(base, f->off, bool) = t.b;
        return 0;
    case MS_WIRE_STR:
        if (s_next(r, &t) != 0) return -1;
        return s_dec_str(r, path, &t, f->max, S_AT(base, f->off, char *));
    case MS_WIRE_I32S:
    case MS_WIRE_TOKS: {
        bool tok = f->kind == MS_WIRE_TOKS;
        if (s_array_header(r, path, f, tok ? "array of token ids" : "array of int32", &t) != 0)
            return -1;
        int32_t *v = t.n ? ms_xmalloc((size_t)t.n * sizeof *v) : NULL;
        *S_AT(base, f->off, int32_t *) = v;
        *S_AT(base, f->n_off, uint32_t) = t.n;
        for (uint32_t k = 0; k < t.n; k++) {
            s_path(sub, sizeof sub, "%s[%u]", path, k);
            if (s_dec_i32(r, sub, tok, &v[k]) != 0) return -1;
        }
        return 0;
    }
    case MS_WIRE_STRS: {
        if (s_array_header(r, path, f, "array of str", &t) != 0) return -1;
        char **v = t.n ? ms_xcalloc(t.n, sizeof *v) : NULL;
        *S_AT(base, f->off, char **) = v;
        *S_AT(base, f->n_off, uint32_t) = t.n;
        for (uint32_t k = 0; k < t.n; k++) {
            s_tok e;
            s_path(sub, sizeof sub, "%s[%u]", path, k);
            if (s_next(r, &e) != 0 || s_dec_str(r, sub, &e, MS_WIRE_MAX_STOP_BYTES, &v[k]) != 0)
                return -1;
        }
        return 0;
    }
    case MS_WIRE_OBJ:
        if (s_next(r, &t) != 0) return -1;
        if (t.cls != C_MAP) return s_type_err(r, path, &t, "map");
        return s_dec_struct(r, f->sub, S_AT(base, f->off, char), path, depth + 1, t.n, false);
    case MS_WIRE_OBJS: {
        if (s_array_header(r, path, f, "array of maps", &t) != 0) return -1;
        char *v = t.n ? ms_xcalloc(t.n, f->sub->size) : NULL;
        *S_AT(base, f->off, char *) = v;
        *S_AT(base, f->n_off, uint32_t) = t.n;
        for (uint32_t k = 0; k < t.n; k++) {
            s_tok e;
            s_path(sub, sizeof sub, "%s[%u]", path, k);
            if (s_next(r, &e) != 0) return -1;
            if (e.cls != C_MAP) return s_type_err(r, sub, &e, "map");
            if (s_dec_struct(r, f->sub, v + (size_t)k * f->sub->size, sub, depth + 1, e.n, false) !=
                0)
                return -1;
        }
        return 0;
    }
    }
    return ms_errf(r->err, r->err_size, "field '%s' has an unknown kind", path);
}

/* Decodes n_pairs key/value pairs of a map into base. At the top level, "v"
 * and "t" (already checked) are skipped. path: "" for the message itself. */
static int s_dec_struct(s_rd *r, const s_struct *st, void *base, const char *path, int depth,
                        uint32_t n_pairs, bool top) {
    if (depth >= MS_WIRE_MAX_DEPTH)
        return ms_errf(r->err, r->err_size, "header nested deeper than %d levels",
                       MS_WIRE_MAX_DEPTH);
    const char *where = path[0] ? path : st->name;
    uint64_t seen = 0;
    char fpath[S_PATH];
    for (uint32_t i = 0; i < n_pairs; i++) {
        s_tok k;
        if (s_next(r, &k) != 0) return -1;
        if (k.cls != C_STR)
            return ms_errf(r->err, r->err_size, "a key of %s has type %s, expected str", where,
                           s_class_names[k.cls]);
        if (top && k.n == 1 && (k.s[0] == 'v' || k.s[0] == 't')) {
            s_tok v;
            if (s_next(r, &v) != 0 || s_skip_body(r, &v, depth + 1) != 0) return -1;
            continue;
        }
        size_t fi = 0;
        while (fi < st->n_fields &&
               !(strlen(st->fields[fi].name) == k.n && memcmp(st->fields[fi].name, k.s, k.n) == 0))
            fi++;
        if (fi == st->n_fields) {
            char name[72];
            s_printable(k.s, k.n, name, sizeof name);
            return ms_errf(r->err, r->err_size, "unknown field '%s' in %s", name, where);
        }
        const s_field *f = &st->fields[fi];
        if (path[0])
            s_path(fpath, sizeof fpath, "%s.%s", path, f->name);
        else
            s_path(fpath, sizeof fpath, "%s", f->name);
        if (seen & (1ull << fi))
            return ms_errf(r->err, r->err_size, "field '%s' appears twice", fpath);
        seen |= 1ull << fi;
        if (s_dec_field(r, f, base, fpath, depth) != 0) return -1;
        if (f->has_off != SIZE_MAX) *S_AT(base, f->has_off, bool) = true;
    }
    for (size_t fi = 0; fi < st->n_fields; fi++)
        if (st->fields[fi].has_off == SIZE_MAX && !(seen & (1ull << fi)))
            return ms_errf(r->err, r->err_size, "missing field '%s' in %s", st->fields[fi].name,
                           where);
    return 0;
}

ms_wire_status ms_wire_decode(const uint8_t *data, size_t len, ms_msg *out, char *err,
                              size_t err_size) {
    ms_msg_init(out, MS_MSG_NONE);
    if (!data || len == 0) {
        ms_errf(err, err_size, "empty header");
        return MS_WIRE_MALFORMED;
    }
    if (len > MS_WIRE_MAX_HEADER_BYTES) {
        ms_errf(err, err_size, "header is %zu bytes, limit %u", len, MS_WIRE_MAX_HEADER_BYTES);
        return MS_WIRE_MALFORMED;
    }
    s_rd r = {data, len, 0, err, err_size};
    s_tok top;
    if (s_next(&r, &top) != 0) return MS_WIRE_MALFORMED;
    if (top.cls != C_MAP) {
        ms_errf(err, err_size, "header is a %s, expected a map", s_class_names[top.cls]);
        return MS_WIRE_MALFORMED;
    }
    size_t body = r.pos;

    /* Pass 1: "v" and "t" (any position), structure and trailing bytes. */
    bool has_v = false, has_t = false;
    s_tok v = {0}, t = {0};
    for (uint32_t i = 0; i < top.n; i++) {
        s_tok k, val;
        if (s_next(&r, &k) != 0) return MS_WIRE_MALFORMED;
        if (k.cls != C_STR) {
            ms_errf(err, err_size, "a key of the header has type %s, expected str",
                    s_class_names[k.cls]);
            return MS_WIRE_MALFORMED;
        }
        bool is_v = k.n == 1 && k.s[0] == 'v', is_t = k.n == 1 && k.s[0] == 't';
        if (s_next(&r, &val) != 0 || s_skip_body(&r, &val, 1) != 0) return MS_WIRE_MALFORMED;
        if ((is_v && has_v) || (is_t && has_t)) {
            ms_errf(err, err_size, "field '%c' appears twice", k.s[0]);
            return MS_WIRE_MALFORMED;
        }
        if (is_v) {
            has_v = true;
            v = val;
        }
        if (is_t) {
            has_t = true;
            t = val;
        }
    }
    if (r.pos != len) {
        ms_errf(err, err_size, "%zu trailing bytes after the header", len - r.pos);
        return MS_WIRE_MALFORMED;
    }
    if (!has_v) {
        ms_errf(err, err_size, "missing field 'v' (protocol version)");
        return MS_WIRE_MALFORMED;
    }
    if (v.cls != C_UINT) {
        s_type_err(&r, "v", &v, "uint");
        return MS_WIRE_MALFORMED;
    }
    if (v.u != MS_WIRE_VERSION) {
        ms_errf(err, err_size, "unsupported protocol version %llu (this build speaks %d)",
                (unsigned long long)v.u, MS_WIRE_VERSION);
        return MS_WIRE_MALFORMED;
    }
    if (!has_t) {
        ms_errf(err, err_size, "missing field 't' (message type)");
        return MS_WIRE_MALFORMED;
    }
    if (t.cls != C_STR) {
        s_type_err(&r, "t", &t, "str");
        return MS_WIRE_MALFORMED;
    }
    ms_msg_type type = s_type_parse_n((const char *)t.s, t.n);
    if (type == MS_MSG_NONE) {
        char name[72];
        s_printable(t.s, t.n, name, sizeof name);
        ms_errf(err, err_size, "unknown message type '%s'", name);
        return MS_WIRE_MALFORMED;
    }

    /* Pass 2: the fields. */
    out->type = type;
    r.pos = body;
    if (s_dec_struct(&r, s_msgs[type].st, &out->submit, "", 0, top.n, true) != 0 ||
        s_check_msg(out, err, err_size) != 0) {
        ms_msg_fini(out);
        return MS_WIRE_MALFORMED;
    }
    return MS_WIRE_OK;
}

void ms_wire_peek_header(const uint8_t *data, size_t len, ms_wire_peek *out) {
    memset(out, 0, sizeof *out);
    if (!data) return;
    s_rd r = {data, len, 0, NULL, 0};
    s_tok top;
    if (s_next(&r, &top) != 0 || top.cls != C_MAP) return;
    for (uint32_t i = 0; i < top.n; i++) {
        s_tok k, v;
        if (s_next(&r, &k) != 0 || s_next(&r, &v) != 0) return;
        if (k.cls == C_STR && v.cls == C_STR) {
            if (k.n == 1 && k.s[0] == 't') out->type = s_type_parse_n((const char *)v.s, v.n);
            if (k.n == 2 && memcmp(k.s, "id", 2) == 0 && v.n <= MS_WIRE_MAX_ID_BYTES &&
                !memchr(v.s, 0, v.n)) {
                memcpy(out->id, v.s, v.n);
                out->id[v.n] = 0;
                out->has_id = true;
            }
        } else if (k.cls == C_STR && v.cls == C_UINT) {
            if (k.n == 3 && memcmp(k.s, "rid", 3) == 0) {
                out->rid = v.u;
                out->has_rid = true;
            }
            if (k.n == 4 && memcmp(k.s, "task", 4) == 0) {
                out->task = v.u;
                out->has_task = true;
            }
        }
        if (s_skip_body(&r, &v, 1) != 0) return;
    }
}

/* ---- encoder
 * ------------------------------------------------------------------------------------- */
static void s_pack_str(msgpack_packer *pk, const char *s, size_t n) {
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static int s_enc_struct(msgpack_packer *pk, const s_struct *st, const void *base, const char *path,
                        bool top, char *err, size_t err_size);

static int s_enc_strlen(const char *path, const char *s, uint64_t max, size_t *n, char *err,
                        size_t err_size) {
    *n = s ? strlen(s) : 0;
    if (*n > max)
        return ms_errf(err, err_size, "string '%s' is %zu bytes, limit %llu", path, *n,
                       (unsigned long long)max);
    return 0;
}

static int s_enc_field(msgpack_packer *pk, const s_field *f, const void *base, const char *path,
                       char *err, size_t err_size) {
    char sub[S_PATH];
    bool is_array = s_is_array(f->kind);
    uint32_t n = is_array ? *S_CAT(base, f->n_off, uint32_t) : 0;
    const void *arr = is_array ? *S_CAT(base, f->off, void *) : NULL;
    if (is_array && arr == NULL && n > 0)
        return ms_errf(err, err_size, "array '%s' has %u elements but no data", path, n);
    if (is_array && n > f->max)
        return ms_errf(err, err_size, "array '%s' has %u elements, limit %llu", path, n,
                       (unsigned long long)f->max);
    switch (f->kind) {
    case MS_WIRE_UINT: {
        uint64_t v = *S_CAT(base, f->off, uint64_t);
        if (v > f->max)
            return ms_errf(err, err_size, "field '%s' is %llu, limit %llu", path,
                           (unsigned long long)v, (unsigned long long)f->max);
        msgpack_pack_uint64(pk, v);
        return 0;
    }
    case MS_WIRE_INT: {
        int64_t v = *S_CAT(base, f->off, int64_t);
        uint64_t mag = v < 0 ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
        if (mag > f->max)
            return ms_errf(err, err_size, "field '%s' is %lld, limit %llu", path, (long long)v,
                           (unsigned long long)f->max);
        msgpack_pack_int64(pk, v);
        return 0;
    }
    case MS_WIRE_FLOAT: {
        double v = *S_CAT(base, f->off, double);
        if (!isfinite(v)) return ms_errf(err, err_size, "field '%s' is not finite", path);
        msgpack_pack_double(pk, v);
        return 0;
    }
    case MS_WIRE_BOOL:
        if (*S_CAT(base, f->off, bool))
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        return 0;
    case MS_WIRE_STR: {
        const char *s = *S_CAT(base, f->off, char *);
        size_t len;
        if (s_enc_strlen(path, s, f->max, &len, err, err_size) != 0) return -1;
        s_pack_str(pk, s ? s : "", len);
        return 0;
    }
    case MS_WIRE_I32S:
    case MS_WIRE_TOKS: {
        const int32_t *v = arr;
        msgpack_pack_array(pk, n);
        for (uint32_t k = 0; k < n; k++) {
            if (f->kind == MS_WIRE_TOKS && v[k] < 0)
                return ms_errf(err, err_size, "field '%s[%u]' is %d, expected a token id (>= 0)",
                               path, k, (int)v[k]);
            msgpack_pack_int32(pk, v[k]);
        }
        return 0;
    }
    case MS_WIRE_STRS: {
        char *const *v = arr;
        msgpack_pack_array(pk, n);
        for (uint32_t k = 0; k < n; k++) {
            size_t len;
            s_path(sub, sizeof sub, "%s[%u]", path, k);
            if (s_enc_strlen(sub, v[k], MS_WIRE_MAX_STOP_BYTES, &len, err, err_size) != 0)
                return -1;
            s_pack_str(pk, v[k] ? v[k] : "", len);
        }
        return 0;
    }
    case MS_WIRE_OBJ:
        return s_enc_struct(pk, f->sub, S_CAT(base, f->off, char), path, false, err, err_size);
    case MS_WIRE_OBJS: {
        const char *v = arr;
        msgpack_pack_array(pk, n);
        for (uint32_t k = 0; k < n; k++) {
            s_path(sub, sizeof sub, "%s[%u]", path, k);
            if (s_enc_struct(pk, f->sub, v + (size_t)k * f->sub->size, sub, false, err, err_size) !=
                0)
                return -1;
        }
        return 0;
    }
    }
    return ms_errf(err, err_size, "field '%s' has an unknown kind", path);
}

static int s_enc_struct(msgpack_packer *pk, const s_struct *st, const void *base, const char *path,
                        bool top, char *err, size_t err_size) {
    size_t n = top ? 2 : 0;
    for (size_t i = 0; i < st->n_fields; i++)
        n += s_present(&st->fields[i], base);
    msgpack_pack_map(pk, n);
    if (top) {
        s_pack_str(pk, "v", 1);
        msgpack_pack_uint32(pk, MS_WIRE_VERSION);
        s_pack_str(pk, "t", 1);
        s_pack_str(pk, st->name, strlen(st->name));
    }
    char fpath[S_PATH];
    for (size_t i = 0; i < st->n_fields; i++) {
        const s_field *f = &st->fields[i];
        if (!s_present(f, base)) continue;
        if (path[0])
            s_path(fpath, sizeof fpath, "%s.%s", path, f->name);
        else
            s_path(fpath, sizeof fpath, "%s", f->name);
        s_pack_str(pk, f->name, strlen(f->name));
        if (s_enc_field(pk, f, base, fpath, err, err_size) != 0) return -1;
    }
    return 0;
}

int ms_wire_encode(const ms_msg *m, msgpack_sbuffer *out, char *err, size_t err_size) {
    const s_struct *st = m ? s_desc_of(m->type) : NULL;
    if (!st)
        return ms_errf(err, err_size, "cannot encode a message of type %d", m ? (int)m->type : -1);
    if (s_check_msg(m, err, err_size) != 0) return -1;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    size_t start = out->size;
    if (s_enc_struct(&pk, st, &m->submit, "", true, err, err_size) != 0) return -1;
    if (out->size - start > MS_WIRE_MAX_HEADER_BYTES)
        return ms_errf(err, err_size, "%s header is %zu bytes, limit %u", st->name,
                       out->size - start, MS_WIRE_MAX_HEADER_BYTES);
    return 0;
}

int ms_wire_encode_buf(const ms_msg *m, uint8_t **data, size_t *len, char *err, size_t err_size) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (ms_wire_encode(m, &sb, err, err_size) != 0) {
        msgpack_sbuffer_destroy(&sb);
        return -1;
    }
    *data = ms_xmalloc(sb.size ? sb.size : 1);
    memcpy(*data, sb.data, sb.size);
    *len = sb.size;
    msgpack_sbuffer_destroy(&sb);
    return 0;
}

int ms_msg_copy(ms_msg *dst, const ms_msg *src, char *err, size_t err_size) {
    uint8_t *buf;
    size_t len;
    if (ms_wire_encode_buf(src, &buf, &len, err, err_size) != 0) {
        ms_msg_init(dst, MS_MSG_NONE);
        return -1;
    }
    ms_wire_status st = ms_wire_decode(buf, len, dst, err, err_size);
    free(buf);
    return st == MS_WIRE_OK ? 0 : -1;
}

/* ---- payload frames
 * ------------------------------------------------------------------------------ */
size_t ms_wire_payload_frames(const ms_msg *m) {
    const s_struct *st = m ? s_desc_of(m->type) : NULL;
    if (!st) return 0;
    const s_msgdesc *d = &s_msgs[m->type];
    size_t n = d->fixed_frames;
    const void *base = &m->submit;
    for (size_t i = 0; d->frames_field[0] && i < st->n_fields; i++) {
        const s_field *f = &st->fields[i];
        if (strcmp(f->name, d->frames_field) != 0 || !s_present(f, base)) continue;
        if (f->kind == MS_WIRE_UINT)
            n += (size_t)*S_CAT(base, f->off, uint64_t);
        else if (s_is_array(f->kind))
            n += *S_CAT(base, f->n_off, uint32_t);
    }
    return n;
}

size_t ms_wire_max_frame_bytes(ms_msg_type t) {
    return s_desc_of(t) ? (size_t)s_msgs[t].max_frame_bytes : 0;
}

int ms_wire_check_payload(const ms_msg *m, const size_t *sizes, size_t n, char *err,
                          size_t err_size) {
    const s_struct *st = m ? s_desc_of(m->type) : NULL;
    if (!st) return ms_errf(err, err_size, "no message");
    size_t want = ms_wire_payload_frames(m);
    if (n != want)
        return ms_errf(err, err_size, "%s declares %zu payload frames, got %zu", st->name, want, n);
    uint64_t maxb = s_msgs[m->type].max_frame_bytes;
    for (size_t i = 0; i < n; i++) {
        if (sizes[i] > maxb)
            return ms_errf(err, err_size, "payload frame %zu of %s is %zu bytes, limit %llu", i,
                           st->name, sizes[i], (unsigned long long)maxb);
        if ((m->type == MS_MSG_SUBMIT || m->type == MS_MSG_ENCODE_TASK) && sizes[i] == 0)
            return ms_errf(err, err_size, "image frame %zu of %s is empty", i, st->name);
    }
    if (m->type == MS_MSG_FEATURE_DATA) {
        uint64_t need = m->feature_data.n_tokens * m->feature_data.dim * sizeof(float);
        if (sizes[0] != need)
            return ms_errf(
                err, err_size,
                "feature_data frame is %zu bytes, expected %llu (%llu tokens x %llu x f32)",
                sizes[0], (unsigned long long)need, (unsigned long long)m->feature_data.n_tokens,
                (unsigned long long)m->feature_data.dim);
    }
    if (m->type == MS_MSG_KV_DATA && sizes[0] != m->kv_data.bytes)
        return ms_errf(err, err_size, "kv_data frame is %zu bytes, header says %llu", sizes[0],
                       (unsigned long long)m->kv_data.bytes);
    return 0;
}

/* ---- sampling helpers --------------------------------------------------------------------------
 */
int ms_wire_submit_sampling(const ms_msg_submit *s, ms_sampling_params *out, char *err,
                            size_t err_size) {
    ms_sampling_params_default(out);
    if (s->has_max_tokens) out->max_tokens = (int)s->max_tokens;
    if (s->has_temperature) out->temperature = (float)s->temperature;
    if (s->has_top_k) out->top_k = (int)s->top_k;
    if (s->has_top_p) out->top_p = (float)s->top_p;
    if (s->has_min_p) out->min_p = (float)s->min_p;
    if (s->has_seed) out->seed = s->seed;
    if (s->has_ignore_eos) out->ignore_eos = s->ignore_eos;
    if (s->has_stop) {
        if (s->n_stop > MS_MAX_STOP_STRINGS)
            return ms_errf(err, err_size, "%u stop strings, limit %d", s->n_stop,
                           MS_MAX_STOP_STRINGS);
        for (uint32_t i = 0; i < s->n_stop; i++) {
            const char *x = s->stop[i] ? s->stop[i] : "";
            if (strlen(x) >= MS_MAX_STOP_LEN)
                return ms_errf(err, err_size, "stop[%u] is longer than %d bytes", i,
                               MS_MAX_STOP_LEN - 1);
            snprintf(out->stop[i], MS_MAX_STOP_LEN, "%s", x);
        }
        out->n_stop = (int)s->n_stop;
    }
    return ms_sampling_params_validate(out, err, err_size);
}

void ms_wire_sampling_from_params(const ms_sampling_params *p, ms_wire_sampling *out) {
    memset(out, 0, sizeof *out);
    out->max_tokens = p->max_tokens > 0 ? (uint64_t)p->max_tokens : 0;
    out->temperature = p->temperature;
    out->top_k = p->top_k > 0 ? (uint64_t)p->top_k : 0;
    out->top_p = p->top_p;
    out->min_p = p->min_p;
    out->seed = p->seed;
    out->ignore_eos = p->ignore_eos;
    out->has_ignore_eos = p->ignore_eos; /* sent only when set */
    int n = MS_MIN(MS_MAX(p->n_stop, 0), MS_MAX_STOP_STRINGS);
    if (n > 0) {
        out->stop = ms_xcalloc((size_t)n, sizeof *out->stop);
        for (int i = 0; i < n; i++)
            out->stop[i] = ms_xstrndup(p->stop[i], MS_MAX_STOP_LEN - 1);
    }
    out->n_stop = (uint32_t)n;
}

int ms_wire_sampling_to_params(const ms_wire_sampling *w, ms_sampling_params *out, char *err,
                               size_t err_size) {
    ms_sampling_params_default(out);
    if (w->max_tokens > MS_MAX_GEN_TOKENS)
        return ms_errf(err, err_size, "max_tokens %llu, limit %d",
                       (unsigned long long)w->max_tokens, MS_MAX_GEN_TOKENS);
    out->max_tokens = (int)w->max_tokens;
    out->temperature = (float)w->temperature;
    out->top_k = (int)MS_MIN(w->top_k, (uint64_t)MS_WIRE_MAX_TOP_K);
    out->top_p = (float)w->top_p;
    out->min_p = (float)w->min_p;
    out->seed = w->seed;
    out->ignore_eos = w->has_ignore_eos && w->ignore_eos;
    if (w->n_stop > MS_MAX_STOP_STRINGS)
        return ms_errf(err, err_size, "%u stop strings, limit %d", w->n_stop, MS_MAX_STOP_STRINGS);
    for (uint32_t i = 0; i < w->n_stop; i++) {
        const char *x = (w->stop && w->stop[i]) ? w->stop[i] : "";
        if (strlen(x) >= MS_MAX_STOP_LEN)
            return ms_errf(err, err_size, "stop[%u] is longer than %d bytes", i,
                           MS_MAX_STOP_LEN - 1);
        snprintf(out->stop[i], MS_MAX_STOP_LEN, "%s", x);
    }
    out->n_stop = (int)w->n_stop;
    return ms_sampling_params_validate(out, err, err_size);
}
