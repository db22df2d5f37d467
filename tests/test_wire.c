/* test_wire.c — the wire codec (schemas/wire.h), multipart framing over real
 * zmq sockets (schemas/frames.h) and the producer client library
 * (schemas/client.h) against a tiny in-test ROUTER.
 *
 * Like wire.c, the tests are generated from schemas/messages.def: every
 * message and every field is filled, round-tripped, and broken in every way
 * the decoder must catch, so a message added to the .def is tested too.
 *
 * MS_WIRE_WRITE_CORPUS=DIR makes wire/round_trip write each encoding it makes
 * into DIR (the seeds of tests/fuzz/corpus/wire were written that way).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "frames.h"
#include "ms_common.h"
#include "wire.h"

/* ---- filling every field of a message (generated from messages.def) ------------ */
static uint64_t s_counter;

/* A value <= max: small ones for small bounds, near 2^64 for unbounded ones. */
static uint64_t s_uint(uint64_t max) {
    s_counter++;
    if (max >= (1ull << 40))
        return (s_counter % 2) ? UINT64_MAX - s_counter : (1ull << 33) + s_counter;
    return max ? 1 + s_counter % max : 0;
}

static double s_float(void) {
    static const double v[] = {0.25, -1.5, 1e300, 3.0, 0.7, -2e-300};
    return v[s_counter++ % MS_ARRAY_LEN(v)];
}

static char *s_str(uint64_t max) {
    static const char *const v[] = {"plain", "caf\xc3\xa9 \xe2\x9c\x93", "",
                                    "quote\"s\\ and\nnewline", "x"};
    const char *s = v[s_counter++ % MS_ARRAY_LEN(v)];
    return ms_xstrndup(s, (size_t)MS_MIN(max, (uint64_t)strlen(s)));
}

static int32_t *s_i32s(uint32_t *n, uint64_t max, bool tokens) {
    static const int32_t v[] = {1, INT32_MAX, 0, -1, INT32_MIN, 300, -70000, 128000};
    *n = (uint32_t)MS_MIN(max, (uint64_t)MS_ARRAY_LEN(v));
    int32_t *a = ms_xmalloc(MS_ARRAY_LEN(v) * sizeof *a);
    for (uint32_t i = 0; i < *n; i++)
        a[i] = tokens ? (v[i] < 0 ? -(v[i] + 1) : v[i]) : v[i];
    return a;
}

static char **s_strs(uint32_t *n, uint64_t max) {
    *n = (uint32_t)MS_MIN(max, (uint64_t)3);
    char **a = ms_xcalloc(3, sizeof *a);
    for (uint32_t i = 0; i < *n; i++)
        a[i] = s_str(MS_WIRE_MAX_STOP_BYTES);
    return a;
}

/* clang-format off */
#define FILL_UINT(n, sub, max)  o->n = s_uint((uint64_t)(max));
#define FILL_INT(n, sub, max)   o->n = -(int64_t)s_uint((uint64_t)(max) / 2);
#define FILL_FLOAT(n, sub, max) o->n = s_float();
#define FILL_BOOL(n, sub, max)  o->n = (s_counter++ % 2) == 0;
#define FILL_STR(n, sub, max)   o->n = s_str((uint64_t)(max));
#define FILL_I32S(n, sub, max)  o->n = s_i32s(&o->n_##n, (uint64_t)(max), false);
#define FILL_TOKS(n, sub, max)  o->n = s_i32s(&o->n_##n, (uint64_t)(max), true);
#define FILL_STRS(n, sub, max)  o->n = s_strs(&o->n_##n, (uint64_t)(max));
#define FILL_OBJ(n, sub, max)   s_fill_##sub(&o->n, full);
#define FILL_OBJS(n, sub, max)                                                     \
    o->n_##n = (uint32_t)MS_MIN((uint64_t)(max), (uint64_t)2);                      \
    o->n = ms_xcalloc(2, sizeof *o->n);                                            \
    for (uint32_t k = 0; k < o->n_##n; k++) s_fill_##sub(&o->n[k], full);
#define S_ISREQ_REQ 1
#define S_ISREQ_OPT 0
#define SETHAS_REQ(n)
#define SETHAS_OPT(n) o->has_##n = true;

#define MS_STRUCT(s)     static void s_fill_##s(ms_wire_##s *o, bool full) { (void)full;
#define MS_STRUCT_END(s) }
#define MS_MSG(m, M, ffield, fixed, maxb) static void s_fill_##m(ms_msg_##m *o, bool full) { (void)full;
#define MS_MSG_END(m)    }
#define MS_FIELD(ow, n, K, sub, max, P) \
    if (S_ISREQ_##P || full) { FILL_##K(n, sub, max) SETHAS_##P(n) }
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD

/* clang-format on */
/* ---- comparing two messages field by field (generated) ------------------------------ */
static void s_cmp_str(const char *a, const char *b, const char *where, const char *f) {
    cr_assert_eq(a == NULL, b == NULL, "%s.%s: one is NULL", where, f);
    if (a) cr_assert_str_eq(a, b, "%s.%s", where, f);
}

static void s_cmp_i32(const int32_t *a, uint32_t na, const int32_t *b, uint32_t nb,
                      const char *where, const char *f) {
    cr_assert_eq(na, nb, "%s.%s: %u vs %u elements", where, f, na, nb);
    for (uint32_t i = 0; i < na; i++)
        cr_assert_eq(a[i], b[i], "%s.%s[%u]", where, f, i);
}

static void s_cmp_strs(char *const *a, uint32_t na, char *const *b, uint32_t nb, const char *where,
                       const char *f) {
    cr_assert_eq(na, nb, "%s.%s: %u vs %u strings", where, f, na, nb);
    for (uint32_t i = 0; i < na; i++)
        cr_assert_str_eq(a[i], b[i], "%s.%s[%u]", where, f, i);
}

/* clang-format off */
#define CMP_UINT(n, sub)  cr_assert_eq(a->n, b->n, "%s.%s", where, #n);
#define CMP_INT(n, sub)   cr_assert_eq(a->n, b->n, "%s.%s", where, #n);
#define CMP_FLOAT(n, sub) cr_assert(a->n == b->n, "%s.%s: %g vs %g", where, #n, a->n, b->n);
#define CMP_BOOL(n, sub)  cr_assert_eq(a->n, b->n, "%s.%s", where, #n);
#define CMP_STR(n, sub)   s_cmp_str(a->n, b->n, where, #n);
#define CMP_I32S(n, sub)  s_cmp_i32(a->n, a->n_##n, b->n, b->n_##n, where, #n);
#define CMP_TOKS(n, sub)  s_cmp_i32(a->n, a->n_##n, b->n, b->n_##n, where, #n);
#define CMP_STRS(n, sub)  s_cmp_strs(a->n, a->n_##n, b->n, b->n_##n, where, #n);
#define CMP_OBJ(n, sub)   s_cmp_##sub(&a->n, &b->n, #n);
#define CMP_OBJS(n, sub)                                                              \
    cr_assert_eq(a->n_##n, b->n_##n, "%s.%s count", where, #n);                       \
    for (uint32_t k = 0; k < a->n_##n; k++) s_cmp_##sub(&a->n[k], &b->n[k], #n);
#define CMPHAS_REQ(n)
#define CMPHAS_OPT(n) cr_assert_eq(a->has_##n, b->has_##n, "%s.has_%s", where, #n);

#define MS_STRUCT(s) \
    static void s_cmp_##s(const ms_wire_##s *a, const ms_wire_##s *b, const char *where) {
#define MS_STRUCT_END(s) }
#define MS_MSG(m, M, ffield, fixed, maxb) \
    static void s_cmp_##m(const ms_msg_##m *a, const ms_msg_##m *b) { const char *where = #m;
#define MS_MSG_END(m) }
#define MS_FIELD(ow, n, K, sub, max, P) CMP_##K(n, sub) CMPHAS_##P(n)
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD
/* clang-format on */

/* clang-format off */
static void s_cmp_msg(const ms_msg *a, const ms_msg *b) {
    cr_assert_eq(a->type, b->type);
    switch (a->type) {
#define MS_STRUCT(s)
#define MS_STRUCT_END(s)
#define MS_MSG(m, M, ffield, fixed, maxb) case MS_MSG_##M: s_cmp_##m(&a->m, &b->m); break;
#define MS_MSG_END(m)
#define MS_FIELD(ow, n, K, sub, max, P)
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD
    default: cr_assert_fail("type %d", a->type);
    }
}

/* Every field of every message and struct, for the generic malformation tests. */
typedef struct s_fdesc {
    const char *owner; /* message or struct name */
    const char *name;
    ms_wire_kind kind;
    bool req;
    const char *sub;   /* struct name for OBJ / OBJS */
} s_fdesc;

/* clang-format off */
static const s_fdesc s_fdescs[] = {
#define MS_STRUCT(s)
#define MS_STRUCT_END(s)
#define MS_MSG(m, M, ffield, fixed, maxb)
#define MS_MSG_END(m)
#define MS_FIELD(ow, n, K, sub, max, P) {#ow, #n, MS_WIRE_##K, S_ISREQ_##P, #sub},
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD
};

/* clang-format on */
/* Replaces generated strings that must be from a vocabulary. */
static void s_set(char **p, const char *v) {
    free(*p);
    *p = ms_xstrdup(v);
}

/* A valid message of type t: every field set (full) or only required ones;
 * variant picks prompt (0) or messages (1) for Submit. Owns its memory. */
/* clang-format off */
static void s_make(ms_msg *m, ms_msg_type t, bool full, int variant) {
    ms_msg_init(m, t);
    switch (t) {
#define MS_STRUCT(s)
#define MS_STRUCT_END(s)
#define MS_MSG(mm, M, ffield, fixed, maxb) case MS_MSG_##M: s_fill_##mm(&m->mm, full); break;
#define MS_MSG_END(m)
#define MS_FIELD(ow, n, K, sub, max, P)
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD
    default: cr_assert_fail("type %d", t);
    }
    switch (t) {
    case MS_MSG_SUBMIT: {
        ms_msg_submit *s = &m->submit;
        if (variant == 0 && !s->has_prompt) {
            s->prompt = ms_xstrdup("<image> describe");
            s->has_prompt = true;
        }
        if (variant == 1 && !s->has_messages) {
            s->messages = ms_xcalloc(1, sizeof *s->messages);
            s->messages[0].role = ms_xstrdup("user");
            s->messages[0].content = ms_xstrdup("hi");
            s->n_messages = 1;
            s->has_messages = true;
        }
        ms_msg tmp; /* drop the other one */
        ms_msg_init(&tmp, MS_MSG_SUBMIT);
        if (variant == 0 && s->has_messages) {
            tmp.submit.messages = s->messages;
            tmp.submit.n_messages = s->n_messages;
            s->messages = NULL, s->n_messages = 0, s->has_messages = false;
        }
        if (variant == 1 && s->has_prompt) {
            tmp.submit.prompt = s->prompt;
            s->prompt = NULL, s->has_prompt = false;
        }
        ms_msg_fini(&tmp);
        break;
    }
    case MS_MSG_DONE: s_set(&m->done.finish, full ? "stop" : "eog"); break;
    case MS_MSG_TASK_DONE: s_set(&m->task_done.finish, "length"); break;
    case MS_MSG_ERROR: s_set(&m->error.code, full ? "overloaded" : "bad_request"); break;
    case MS_MSG_TASK_ERROR: s_set(&m->task_error.code, "not_found"); break;
    case MS_MSG_DATA_ERROR: s_set(&m->data_error.code, "draining"); break;
    case MS_MSG_ENCODED:
        for (uint32_t i = 0; i < m->encoded.n_images; i++) {
            m->encoded.images[i].n_tokens = 64;
            m->encoded.images[i].has_n_tokens = true;
        }
        break;
    case MS_MSG_PREFILL_TASK:
        s_set(&m->prefill_task.mode, full ? "handoff" : "decode");
        for (uint32_t i = 0; i < m->prefill_task.n_images; i++) {
            s_set(&m->prefill_task.images[i].data_ep, "tcp://127.0.0.1:7001");
            m->prefill_task.images[i].has_data_ep = true;
        }
        break;
    default:
        break;
    }
}

/* clang-format on */
static void s_encode(const ms_msg *m, uint8_t **buf, size_t *len) {
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_wire_encode_buf(m, buf, len, err, sizeof err), 0, "encode %s: %s",
                 ms_msg_type_name(m->type), err);
}

/* Decodes and expects MALFORMED with an error containing want. */
static void s_expect_bad(const uint8_t *buf, size_t len, const char *want, const char *what) {
    char err[MS_ERR_SIZE] = "";
    ms_msg m;
    ms_wire_status st = ms_wire_decode(buf, len, &m, err, sizeof err);
    cr_assert_eq(st, MS_WIRE_MALFORMED, "%s: decoded although it should not", what);
    cr_assert_eq(m.type, MS_MSG_NONE, "%s: out not cleared", what);
    cr_assert(strstr(err, want) != NULL, "%s: error '%s' lacks '%s'", what, err, want);
}

/* ---- editing encoded headers (tests only; input is our own valid encoding) ---------- */
typedef void (*s_value_fn)(msgpack_packer *pk);
typedef enum { E_REPLACE, E_DELETE, E_ADD } s_edit_kind;

/* Re-packs o; the dotted path ("images.0.hash") names what to edit. */
static void s_repack(msgpack_packer *pk, const msgpack_object *o, const char *path,
                     s_edit_kind kind, s_value_fn value) {
    char comp[64] = "";
    const char *rest = NULL;
    if (path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        snprintf(comp, sizeof comp, "%.*s", (int)n, path);
        rest = dot ? dot + 1 : NULL;
    }
    bool last = path && !rest;
    if (o->type == MSGPACK_OBJECT_MAP) {
        uint32_t n = o->via.map.size, count = n;
        bool found = false;
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (path && k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(comp) &&
                memcmp(k->via.str.ptr, comp, strlen(comp)) == 0)
                found = true;
        }
        if (last && kind == E_DELETE && found) count--;
        if (last && kind == E_ADD) count++;
        msgpack_pack_map(pk, count);
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
            bool match = path && k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(comp) &&
                         memcmp(k->via.str.ptr, comp, strlen(comp)) == 0;
            if (match && last && kind == E_DELETE) continue;
            msgpack_pack_object(pk, *k);
            if (match && last && kind == E_REPLACE)
                value(pk);
            else
                s_repack(pk, v, match ? rest : NULL, kind, value);
        }
        if (last && kind == E_ADD) {
            msgpack_pack_str(pk, strlen(comp));
            msgpack_pack_str_body(pk, comp, strlen(comp));
            value(pk);
        }
    } else if (o->type == MSGPACK_OBJECT_ARRAY) {
        long idx = path ? atol(comp) : -1;
        msgpack_pack_array(pk, o->via.array.size);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if ((long)i == idx && last && kind == E_REPLACE)
                value(pk);
            else
                s_repack(pk, &o->via.array.ptr[i], (long)i == idx ? rest : NULL, kind, value);
        }
    } else {
        msgpack_pack_object(pk, *o);
    }
}

/* Edits an encoded header: returns a new malloc'd encoding in *out. */
static void s_edit(const uint8_t *buf, size_t len, const char *path, s_edit_kind kind,
                   s_value_fn value, msgpack_sbuffer *out) {
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    cr_assert_eq(msgpack_unpack_next(&u, (const char *)buf, len, &off), MSGPACK_UNPACK_SUCCESS);
    msgpack_sbuffer_init(out);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    s_repack(&pk, &u.data, path, kind, value);
    msgpack_unpacked_destroy(&u);
}

/* True if the dotted path exists in the encoded header. */
static bool s_has_path(const uint8_t *buf, size_t len, const char *path) {
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    cr_assert_eq(msgpack_unpack_next(&u, (const char *)buf, len, &off), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *o = &u.data;
    char p[256];
    snprintf(p, sizeof p, "%s", path);
    bool ok = true;
    for (char *save = NULL, *c = strtok_r(p, ".", &save); c && ok; c = strtok_r(NULL, ".", &save)) {
        ok = false;
        if (o->type == MSGPACK_OBJECT_MAP) {
            for (uint32_t i = 0; i < o->via.map.size; i++) {
                const msgpack_object *k = &o->via.map.ptr[i].key;
                if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(c) &&
                    memcmp(k->via.str.ptr, c, strlen(c)) == 0) {
                    o = &o->via.map.ptr[i].val;
                    ok = true;
                    break;
                }
            }
        } else if (o->type == MSGPACK_OBJECT_ARRAY && (uint32_t)atol(c) < o->via.array.size) {
            o = &o->via.array.ptr[atol(c)];
            ok = true;
        }
    }
    msgpack_unpacked_destroy(&u);
    return ok;
}

static void v_str(msgpack_packer *pk) {
    msgpack_pack_str(pk, 1);
    msgpack_pack_str_body(pk, "x", 1);
}
static void v_uint(msgpack_packer *pk) {
    msgpack_pack_uint8(pk, 7);
}
static void v_map(msgpack_packer *pk) {
    msgpack_pack_map(pk, 0);
}
static void v_array(msgpack_packer *pk) {
    msgpack_pack_array(pk, 0);
}
static void v_nil(msgpack_packer *pk) {
    msgpack_pack_nil(pk);
}
static void v_neg(msgpack_packer *pk) {
    msgpack_pack_int8(pk, -3);
}
static void v_nan(msgpack_packer *pk) {
    msgpack_pack_double(pk, NAN);
}
static void v_f32(msgpack_packer *pk) {
    msgpack_pack_float(pk, 0.5f);
}
static void v_int1(msgpack_packer *pk) {
    msgpack_pack_uint8(pk, 1);
}
static void v_true(msgpack_packer *pk) {
    msgpack_pack_true(pk);
}
static void v_nul_str(msgpack_packer *pk) {
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "a\0b", 3);
}
static void v_version2(msgpack_packer *pk) {
    msgpack_pack_uint8(pk, 2);
}
static void v_bad_type(msgpack_packer *pk) {
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "bar", 3);
}
static void v_long_id(msgpack_packer *pk) {
    char s[MS_WIRE_MAX_ID_BYTES + 1];
    memset(s, 'a', sizeof s);
    msgpack_pack_str(pk, sizeof s);
    msgpack_pack_str_body(pk, s, sizeof s);
}
static void v_nine_stops(msgpack_packer *pk) {
    msgpack_pack_array(pk, MS_WIRE_MAX_STOP + 1);
    for (int i = 0; i <= MS_WIRE_MAX_STOP; i++)
        v_str(pk);
}
static void v_long_stop(msgpack_packer *pk) {
    char s[MS_WIRE_MAX_STOP_BYTES + 1];
    memset(s, 's', sizeof s);
    msgpack_pack_array(pk, 1);
    msgpack_pack_str(pk, sizeof s);
    msgpack_pack_str_body(pk, s, sizeof s);
}
static void v_many_ids(msgpack_packer *pk) {
    msgpack_pack_array(pk, MS_WIRE_MAX_TOKEN_IDS + 1);
    for (int i = 0; i <= MS_WIRE_MAX_TOKEN_IDS; i++)
        msgpack_pack_uint16(pk, 5);
}
static void v_deep(msgpack_packer *pk) {
    for (int i = 0; i < 100; i++)
        msgpack_pack_array(pk, 1);
    msgpack_pack_nil(pk);
}
static void v_big_int32(msgpack_packer *pk) {
    msgpack_pack_array(pk, 1);
    msgpack_pack_int64(pk, (int64_t)INT32_MAX + 1);
}

/* The wrong-typed value for a kind, and the type name the error must give. */
static s_value_fn s_wrong_value(ms_wire_kind k, const char **got) {
    switch (k) {
    case MS_WIRE_UINT:
    case MS_WIRE_INT:
    case MS_WIRE_FLOAT:
        *got = "str";
        return v_str;
    case MS_WIRE_BOOL:
    case MS_WIRE_STR:
        *got = "uint";
        return v_uint;
    case MS_WIRE_OBJ:
        *got = "array";
        return v_array;
    default:
        *got = "map";
        return v_map; /* arrays */
    }
}

/* ---- codec tests ----------------------------------------------------------------------- */
Test(wire, type_names, .timeout = 10) {
    cr_assert_eq(MS_MSG_COUNT - 1, 24, "message count changed: update docs/protocol.md");
    for (int t = 1; t < MS_MSG_COUNT; t++)
        cr_assert_eq((int)ms_msg_type_parse(ms_msg_type_name((ms_msg_type)t)), t);
    cr_assert_eq(ms_msg_type_parse("bar"), MS_MSG_NONE);
    cr_assert_str_eq(ms_msg_type_name(MS_MSG_PREFILL_TASK), "prefill_task");
    ms_wire_code c;
    for (int i = 0; i < MS_CODE_COUNT; i++) {
        cr_assert_eq(ms_wire_code_parse(ms_wire_code_name((ms_wire_code)i), &c), 0);
        cr_assert_eq((int)c, i);
    }
    cr_assert_eq(ms_wire_code_parse("nope", &c), -1);
    ms_wire_finish f;
    cr_assert_eq(ms_wire_finish_parse("length", &f), 0);
    cr_assert_eq(f, MS_WIRE_FINISH_LENGTH);
    cr_assert_eq(ms_wire_finish_parse("LENGTH", &f), -1);
}

Test(wire, round_trip, .timeout = 60) {
    const char *corpus = getenv("MS_WIRE_WRITE_CORPUS");
    for (int t = 1; t < MS_MSG_COUNT; t++)
        for (int full = 0; full < 2; full++)
            for (int variant = 0; variant < (t == MS_MSG_SUBMIT ? 2 : 1); variant++) {
                ms_msg m, d, c;
                char err[MS_ERR_SIZE];
                s_make(&m, (ms_msg_type)t, full, variant);
                uint8_t *buf, *buf2;
                size_t len, len2;
                s_encode(&m, &buf, &len);
                cr_assert_eq(ms_wire_decode(buf, len, &d, err, sizeof err), MS_WIRE_OK, "%s: %s",
                             ms_msg_type_name((ms_msg_type)t), err);
                s_cmp_msg(&m, &d);
                s_encode(&d, &buf2, &len2); /* encoding is deterministic */
                cr_assert(len == len2 && memcmp(buf, buf2, len) == 0);
                cr_assert_eq(ms_msg_copy(&c, &d, err, sizeof err), 0, "%s", err);
                s_cmp_msg(&m, &c);
                if (corpus) {
                    char path[4096];
                    snprintf(path, sizeof path, "%s/%s_%s%d", corpus, ms_msg_type_name(m.type),
                             full ? "full" : "min", variant);
                    FILE *fp = fopen(path, "wb");
                    cr_assert(fp, "%s", path);
                    fwrite(buf, 1, len, fp);
                    fclose(fp);
                }
                ms_msg_fini(&m);
                ms_msg_fini(&d);
                ms_msg_fini(&c);
                ms_msg_fini(&c); /* fini twice is safe */
                free(buf);
                free(buf2);
            }
}

Test(wire, optional_fields_absent_and_flags, .timeout = 10) {
    ms_msg m, d;
    char err[MS_ERR_SIZE];
    ms_msg_init(&m, MS_MSG_SUBMIT);
    m.submit.id = "r1";
    m.submit.prompt = "hi";
    m.submit.has_prompt = true;
    m.submit.temperature = 0.7; /* has_temperature not set: not sent */
    uint8_t *buf;
    size_t len;
    s_encode(&m, &buf, &len);
    cr_assert_eq(ms_wire_decode(buf, len, &d, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert(!d.submit.has_temperature && d.submit.temperature == 0);
    cr_assert(!d.submit.has_messages && d.submit.messages == NULL && !d.submit.has_n_images);
    cr_assert_str_eq(d.submit.id, "r1");
    ms_sampling_params p;
    cr_assert_eq(ms_wire_submit_sampling(&d.submit, &p, err, sizeof err), 0, "%s", err);
    cr_assert_eq(p.max_tokens, MS_DEFAULT_MAX_TOKENS);
    cr_assert(p.temperature == 0 && p.top_p == 1.0f && p.n_stop == 0);
    ms_msg_fini(&d);
    free(buf);
}

Test(wire, accepted_encodings, .timeout = 10) {
    /* ints for floats, float32, non-canonical signed encodings of uints */
    ms_msg m, d;
    char err[MS_ERR_SIZE];
    s_make(&m, MS_MSG_SUBMIT, true, 0);
    uint8_t *buf;
    size_t len;
    s_encode(&m, &buf, &len);
    msgpack_sbuffer sb;
    s_edit(buf, len, "temperature", E_REPLACE, v_int1, &sb);
    cr_assert_eq(ms_wire_decode((uint8_t *)sb.data, sb.size, &d, err, sizeof err), MS_WIRE_OK, "%s",
                 err);
    cr_assert(d.submit.temperature == 1.0);
    ms_msg_fini(&d);
    msgpack_sbuffer_destroy(&sb);
    s_edit(buf, len, "top_p", E_REPLACE, v_f32, &sb);
    cr_assert_eq(ms_wire_decode((uint8_t *)sb.data, sb.size, &d, err, sizeof err), MS_WIRE_OK, "%s",
                 err);
    cr_assert(d.submit.top_p == 0.5);
    ms_msg_fini(&d);
    msgpack_sbuffer_destroy(&sb);
    /* {"v": int8 1, ...}: 0xd0 0x01 is a valid (non-canonical) encoding of 1 */
    const uint8_t hdr[] = {0x83, 0xa1, 'v', 0xd0, 0x01, 0xa1, 't', 0xa6, 'c', 'a',
                           'n',  'c',  'e', 'l',  0xa2, 'i',  'd', 0xa1, 'q'};
    cr_assert_eq(ms_wire_decode(hdr, sizeof hdr, &d, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(d.type, MS_MSG_CANCEL);
    cr_assert_str_eq(d.cancel.id, "q");
    ms_msg_fini(&d);
    ms_msg_fini(&m);
    free(buf);
}

Test(wire, wrong_type_every_field, .timeout = 60) {
    int checked = 0;
    for (int t = 1; t < MS_MSG_COUNT; t++)
        for (int variant = 0; variant < 2; variant++) {
            ms_msg m;
            s_make(&m, (ms_msg_type)t, true, variant);
            uint8_t *buf;
            size_t len;
            s_encode(&m, &buf, &len);
            const char *mname = ms_msg_type_name((ms_msg_type)t);
            for (size_t i = 0; i < MS_ARRAY_LEN(s_fdescs); i++) {
                const s_fdesc *f = &s_fdescs[i];
                if (strcmp(f->owner, mname) != 0 || !s_has_path(buf, len, f->name)) continue;
                const char *got;
                s_value_fn v = s_wrong_value(f->kind, &got);
                char path[256], want[300];
                msgpack_sbuffer sb;
                /* the field itself */
                s_edit(buf, len, f->name, E_REPLACE, v, &sb);
                snprintf(want, sizeof want, "field '%s' has type %s, expected", f->name, got);
                s_expect_bad((uint8_t *)sb.data, sb.size, want, f->name);
                msgpack_sbuffer_destroy(&sb);
                checked++;
                /* nil where a value is required */
                s_edit(buf, len, f->name, E_REPLACE, v_nil, &sb);
                snprintf(want, sizeof want, "field '%s' has type nil", f->name);
                s_expect_bad((uint8_t *)sb.data, sb.size, want, f->name);
                msgpack_sbuffer_destroy(&sb);
                /* an element of an array */
                snprintf(path, sizeof path, "%s.0", f->name);
                if (f->kind != MS_WIRE_OBJ && f->kind >= MS_WIRE_I32S &&
                    s_has_path(buf, len, path)) {
                    s_value_fn ev = f->kind == MS_WIRE_STRS ? v_uint : v_str;
                    s_edit(buf, len, path, E_REPLACE, ev, &sb);
                    snprintf(want, sizeof want, "field '%s[0]' has type %s", f->name,
                             f->kind == MS_WIRE_STRS ? "uint" : "str");
                    s_expect_bad((uint8_t *)sb.data, sb.size, want, path);
                    msgpack_sbuffer_destroy(&sb);
                    checked++;
                }
                /* the fields of nested structs: wrong type, missing, unknown */
                if (f->kind == MS_WIRE_OBJ || f->kind == MS_WIRE_OBJS) {
                    bool arr = f->kind == MS_WIRE_OBJS;
                    char where[128];
                    snprintf(where, sizeof where, arr ? "%s[0]" : "%s", f->name);
                    for (size_t j = 0; j < MS_ARRAY_LEN(s_fdescs); j++) {
                        const s_fdesc *g = &s_fdescs[j];
                        if (strcmp(g->owner, f->sub) != 0) continue;
                        snprintf(path, sizeof path, arr ? "%s.0.%s" : "%s.%s", f->name, g->name);
                        if (!s_has_path(buf, len, path)) continue;
                        v = s_wrong_value(g->kind, &got);
                        s_edit(buf, len, path, E_REPLACE, v, &sb);
                        snprintf(want, sizeof want, "field '%s.%s' has type %s", where, g->name,
                                 got);
                        s_expect_bad((uint8_t *)sb.data, sb.size, want, path);
                        msgpack_sbuffer_destroy(&sb);
                        checked++;
                        if (g->req) {
                            s_edit(buf, len, path, E_DELETE, NULL, &sb);
                            snprintf(want, sizeof want, "missing field '%s' in %s", g->name, where);
                            s_expect_bad((uint8_t *)sb.data, sb.size, want, path);
                            msgpack_sbuffer_destroy(&sb);
                        }
                    }
                    snprintf(path, sizeof path, arr ? "%s.0.foo" : "%s.foo", f->name);
                    char p0[256];
                    snprintf(p0, sizeof p0, "%s.0", f->name);
                    if (!arr || s_has_path(buf, len, p0)) {
                        s_edit(buf, len, path, E_ADD, v_uint, &sb);
                        snprintf(want, sizeof want, "unknown field 'foo' in %s", where);
                        s_expect_bad((uint8_t *)sb.data, sb.size, want, path);
                        msgpack_sbuffer_destroy(&sb);
                    }
                }
            }
            ms_msg_fini(&m);
            free(buf);
        }
    cr_assert_gt(checked, 200, "only %d fields checked", checked);
}

Test(wire, missing_unknown_duplicate, .timeout = 60) {
    for (int t = 1; t < MS_MSG_COUNT; t++) {
        ms_msg m;
        s_make(&m, (ms_msg_type)t, false, 0);
        uint8_t *buf;
        size_t len;
        s_encode(&m, &buf, &len);
        const char *mname = ms_msg_type_name((ms_msg_type)t);
        char want[256];
        msgpack_sbuffer sb;
        for (size_t i = 0; i < MS_ARRAY_LEN(s_fdescs); i++) {
            const s_fdesc *f = &s_fdescs[i];
            if (strcmp(f->owner, mname) != 0 || !f->req) continue;
            s_edit(buf, len, f->name, E_DELETE, NULL, &sb);
            snprintf(want, sizeof want, "missing field '%s' in %s", f->name, mname);
            s_expect_bad((uint8_t *)sb.data, sb.size, want, f->name);
            msgpack_sbuffer_destroy(&sb);
            /* a second copy of the field */
            s_edit(buf, len, f->name, E_ADD, v_uint, &sb);
            snprintf(want, sizeof want, "field '%s' appears twice", f->name);
            char err[MS_ERR_SIZE];
            ms_msg d;
            cr_assert_eq(ms_wire_decode((uint8_t *)sb.data, sb.size, &d, err, sizeof err),
                         MS_WIRE_MALFORMED);
            msgpack_sbuffer_destroy(&sb);
        }
        s_edit(buf, len, "foo", E_ADD, v_uint, &sb);
        snprintf(want, sizeof want, "unknown field 'foo' in %s", mname);
        s_expect_bad((uint8_t *)sb.data, sb.size, want, "foo");
        msgpack_sbuffer_destroy(&sb);
        s_edit(buf, len, "v", E_DELETE, NULL, &sb);
        s_expect_bad((uint8_t *)sb.data, sb.size, "missing field 'v' (protocol version)", "no v");
        msgpack_sbuffer_destroy(&sb);
        s_edit(buf, len, "t", E_DELETE, NULL, &sb);
        s_expect_bad((uint8_t *)sb.data, sb.size, "missing field 't' (message type)", "no t");
        msgpack_sbuffer_destroy(&sb);
        s_edit(buf, len, "v", E_REPLACE, v_version2, &sb);
        s_expect_bad((uint8_t *)sb.data, sb.size, "unsupported protocol version 2", "v2");
        msgpack_sbuffer_destroy(&sb);
        s_edit(buf, len, "v", E_REPLACE, v_str, &sb);
        s_expect_bad((uint8_t *)sb.data, sb.size, "field 'v' has type str, expected uint", "v str");
        msgpack_sbuffer_destroy(&sb);
        s_edit(buf, len, "t", E_REPLACE, v_bad_type, &sb);
        s_expect_bad((uint8_t *)sb.data, sb.size, "unknown message type 'bar'", "t bar");
        msgpack_sbuffer_destroy(&sb);
        s_edit(buf, len, "t", E_REPLACE, v_uint, &sb);
        s_expect_bad((uint8_t *)sb.data, sb.size, "field 't' has type uint, expected str",
                     "t uint");
        msgpack_sbuffer_destroy(&sb);
        s_edit(buf, len, "v", E_ADD, v_int1, &sb);
        s_expect_bad((uint8_t *)sb.data, sb.size, "field 'v' appears twice", "v twice");
        msgpack_sbuffer_destroy(&sb);
        s_edit(buf, len, "zz", E_ADD, v_deep, &sb);
        s_expect_bad((uint8_t *)sb.data, sb.size, "nested deeper", "deep");
        msgpack_sbuffer_destroy(&sb);
        ms_msg_fini(&m);
        free(buf);
    }
}

Test(wire, bounds_and_values, .timeout = 30) {
    ms_msg m;
    s_make(&m, MS_MSG_SUBMIT, true, 0);
    uint8_t *buf;
    size_t len;
    s_encode(&m, &buf, &len);
    struct {
        const char *path;
        s_value_fn v;
        const char *want;
    } cases[] = {
        {"id", v_long_id, "string 'id' is 129 bytes, limit 128"},
        {"id", v_nul_str, "string 'id' contains a NUL byte"},
        {"stop", v_nine_stops, "array 'stop' has 9 elements, limit 8"},
        {"stop", v_long_stop, "string 'stop[0]' is 128 bytes, limit 127"},
        {"max_tokens", v_neg, "field 'max_tokens' has type int, expected uint"},
        {"temperature", v_nan, "field 'temperature' is not finite"},
        {"raw", v_int1, "field 'raw' has type uint, expected bool"},
        {"prompt", v_true, "field 'prompt' has type bool, expected str"},
        {"messages", v_array, "exactly one of"}, /* added as a second source */
    };
    msgpack_sbuffer sb;
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        s_edit(buf, len, cases[i].path, i == 8 ? E_ADD : E_REPLACE, cases[i].v, &sb);
        s_expect_bad((uint8_t *)sb.data, sb.size, cases[i].want, cases[i].path);
        msgpack_sbuffer_destroy(&sb);
    }
    s_edit(buf, len, "prompt", E_DELETE, NULL, &sb);
    s_expect_bad((uint8_t *)sb.data, sb.size, "submit needs exactly one of 'prompt' and 'messages'",
                 "no prompt");
    msgpack_sbuffer_destroy(&sb);
    ms_msg_fini(&m);
    free(buf);

    /* uint over its bound; too many ids; negative token id; int32 overflow */
    s_make(&m, MS_MSG_TOKEN, true, 0);
    s_encode(&m, &buf, &len);
    s_edit(buf, len, "index", E_REPLACE, v_long_id, &sb);
    s_expect_bad((uint8_t *)sb.data, sb.size, "field 'index' has type str", "index");
    msgpack_sbuffer_destroy(&sb);
    s_edit(buf, len, "ids", E_REPLACE, v_many_ids, &sb);
    s_expect_bad((uint8_t *)sb.data, sb.size, "array 'ids' has 1025 elements, limit 1024", "ids");
    msgpack_sbuffer_destroy(&sb);
    s_edit(buf, len, "ids.1", E_REPLACE, v_neg, &sb);
    s_expect_bad((uint8_t *)sb.data, sb.size, "field 'ids[1]' is -3, expected a token id",
                 "ids[1]");
    msgpack_sbuffer_destroy(&sb);
    s_edit(buf, len, "ids", E_REPLACE, v_big_int32, &sb);
    s_expect_bad((uint8_t *)sb.data, sb.size, "field 'ids[0]' is 2147483648, beyond int32",
                 "ids big");
    msgpack_sbuffer_destroy(&sb);
    ms_msg_fini(&m);
    free(buf);

    /* vocabularies: finish, codes (producer vs internal), mode, per-message image rules */
    char err[MS_ERR_SIZE];
    ms_msg_init(&m, MS_MSG_ERROR);
    m.error.id = "a";
    m.error.code = "not_found"; /* internal only */
    m.error.message = "x";
    cr_assert_eq(ms_wire_encode_buf(&m, &buf, &len, err, sizeof err), -1);
    cr_assert(strstr(err, "not a known error code"), "%s", err);
    ms_msg_init(&m, MS_MSG_DONE);
    m.done.id = "a";
    m.done.finish = "finished";
    cr_assert_eq(ms_wire_encode_buf(&m, &buf, &len, err, sizeof err), -1);
    cr_assert(strstr(err, "field 'finish' is 'finished'"), "%s", err);
    s_make(&m, MS_MSG_ENCODED, true, 0);
    m.encoded.images[1].has_n_tokens = false;
    cr_assert_eq(ms_wire_encode_buf(&m, &buf, &len, err, sizeof err), -1);
    cr_assert(strstr(err, "missing field 'n_tokens' in images[1] of encoded"), "%s", err);
    ms_msg_fini(&m);
    s_make(&m, MS_MSG_PREFILL_TASK, true, 0);
    s_set(&m.prefill_task.mode, "both");
    cr_assert_eq(ms_wire_encode_buf(&m, &buf, &len, err, sizeof err), -1);
    cr_assert(strstr(err, "field 'mode' is 'both'"), "%s", err);
    ms_msg_fini(&m);
    /* the encoder refuses what the decoder would refuse */
    ms_msg_init(&m, MS_MSG_TOKEN);
    m.token.id = "a";
    m.token.text = "";
    m.token.n_ids = 2; /* no data */
    cr_assert_eq(ms_wire_encode_buf(&m, &buf, &len, err, sizeof err), -1);
    cr_assert(strstr(err, "array 'ids' has 2 elements but no data"), "%s", err);
    int32_t ids[] = {4, -2};
    m.token.ids = ids;
    cr_assert_eq(ms_wire_encode_buf(&m, &buf, &len, err, sizeof err), -1);
    cr_assert(strstr(err, "field 'ids[1]' is -2"), "%s", err);
    m.token.ids = NULL;
    m.token.n_ids = 0;
    m.token.index = MS_MAX_GEN_TOKENS + 1;
    cr_assert_eq(ms_wire_encode_buf(&m, &buf, &len, err, sizeof err), -1);
    cr_assert(strstr(err, "field 'index' is 32769, limit 32768"), "%s", err);
    ms_msg_init(&m, MS_MSG_NONE);
    cr_assert_eq(ms_wire_encode_buf(&m, &buf, &len, err, sizeof err), -1);
}

Test(wire, not_a_map_trailing_and_junk, .timeout = 30) {
    const uint8_t arr[] = {0x91, 0x01}, str[] = {0xa1, 'x'}, nil[] = {0xc0}, num[] = {0x05};
    s_expect_bad(arr, sizeof arr, "header is a array, expected a map", "array");
    s_expect_bad(str, sizeof str, "header is a str, expected a map", "str");
    s_expect_bad(nil, sizeof nil, "header is a nil, expected a map", "nil");
    s_expect_bad(num, sizeof num, "header is a uint, expected a map", "uint");
    s_expect_bad(NULL, 0, "empty header", "empty");
    const uint8_t c1[] = {0xc1};
    s_expect_bad(c1, 1, "invalid msgpack byte 0xc1", "c1");
    /* key of a non-str type */
    const uint8_t intkey[] = {0x81, 0x01, 0x01};
    s_expect_bad(intkey, sizeof intkey, "a key of the header has type uint", "int key");
    /* a map32 / array32 claiming 2^32-1 entries: refused before any allocation */
    const uint8_t huge_map[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v'};
    s_expect_bad(huge_map, sizeof huge_map, "header truncated", "huge map");
    const uint8_t huge_arr[] = {0x83, 0xa1, 'v', 0x01, 0xa1, 't',  0xa5, 't',  'o',  'k',  'e',
                                'n',  0xa3, 'i', 'd',  's',  0xdd, 0xff, 0xff, 0xff, 0xff, 0x01};
    s_expect_bad(huge_arr, sizeof huge_arr, "header truncated", "huge array");
    /* trailing bytes */
    ms_msg m;
    s_make(&m, MS_MSG_CANCEL, false, 0);
    uint8_t *buf;
    size_t len;
    s_encode(&m, &buf, &len);
    uint8_t *more = ms_xmalloc(len + 2);
    memcpy(more, buf, len);
    more[len] = 0xc0;
    more[len + 1] = 0x01;
    s_expect_bad(more, len + 2, "2 trailing bytes after the header", "trailing");
    free(more);
    ms_msg_fini(&m);
    free(buf);
    /* too big */
    uint8_t *big = ms_xcalloc(MS_WIRE_MAX_HEADER_BYTES + 1, 1);
    s_expect_bad(big, MS_WIRE_MAX_HEADER_BYTES + 1, "header is 4194305 bytes, limit 4194304",
                 "big");
    free(big);
}

Test(wire, truncated_at_every_byte, .timeout = 60) {
    for (int t = 1; t < MS_MSG_COUNT; t++)
        for (int full = 0; full < 2; full++) {
            ms_msg m, d;
            s_make(&m, (ms_msg_type)t, full, 1);
            uint8_t *buf;
            size_t len;
            s_encode(&m, &buf, &len);
            for (size_t cut = 0; cut < len; cut++) {
                uint8_t *p = ms_xmalloc(cut ? cut : 1); /* exact size: ASan sees over-reads */
                memcpy(p, buf, cut);
                char err[MS_ERR_SIZE] = "";
                cr_assert_eq(ms_wire_decode(p, cut, &d, err, sizeof err), MS_WIRE_MALFORMED,
                             "%s cut at %zu of %zu decoded", ms_msg_type_name((ms_msg_type)t), cut,
                             len);
                cr_assert(err[0]);
                free(p);
            }
            ms_msg_fini(&m);
            free(buf);
        }
}

Test(wire, random_bytes, .timeout = 60) {
    uint64_t x = 12345;
    uint8_t buf[512];
    int ok = 0;
    for (int i = 0; i < 20000; i++) {
        size_t len = (size_t)(x % sizeof buf);
        for (size_t j = 0; j < len; j++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            buf[j] = (uint8_t)(x >> 56);
        }
        if (len > 0 && i % 2) buf[0] = (uint8_t)(0x80 | (buf[0] & 0x0f)); /* often a fixmap */
        ms_msg d;
        char err[MS_ERR_SIZE] = "";
        ms_wire_status st = ms_wire_decode(buf, len, &d, err, sizeof err);
        cr_assert(st == MS_WIRE_OK || st == MS_WIRE_MALFORMED);
        if (st == MS_WIRE_OK)
            ok++;
        else
            cr_assert(err[0]);
        ms_msg_fini(&d);
        ms_wire_peek p;
        ms_wire_peek_header(buf, len, &p);
    }
    cr_assert_lt(ok, 20000);
}

Test(wire, peek_malformed, .timeout = 10) {
    ms_msg m;
    s_make(&m, MS_MSG_SUBMIT, false, 0);
    free(m.submit.id);
    m.submit.id = ms_xstrdup("req-7");
    uint8_t *buf;
    size_t len;
    s_encode(&m, &buf, &len);
    msgpack_sbuffer sb;
    s_edit(buf, len, "foo", E_ADD, v_uint, &sb);
    ms_wire_peek p;
    ms_wire_peek_header((uint8_t *)sb.data, sb.size, &p);
    cr_assert_eq(p.type, MS_MSG_SUBMIT);
    cr_assert(p.has_id);
    cr_assert_str_eq(p.id, "req-7");
    msgpack_sbuffer_destroy(&sb);
    ms_msg_fini(&m);
    free(buf);
    s_make(&m, MS_MSG_TASK_DONE, false, 0);
    m.task_done.rid = 41;
    m.task_done.task = 42;
    s_encode(&m, &buf, &len);
    ms_wire_peek_header(buf, len / 2 + 10, &p); /* truncated: what came before the cut */
    cr_assert_eq(p.type, MS_MSG_TASK_DONE);
    cr_assert(p.has_rid && p.rid == 41);
    ms_msg_fini(&m);
    free(buf);
}

Test(wire, payload_rules, .timeout = 10) {
    char err[MS_ERR_SIZE];
    ms_msg m;
    s_make(&m, MS_MSG_SUBMIT, false, 0);
    m.submit.n_images = 2;
    m.submit.has_n_images = true;
    cr_assert_eq(ms_wire_payload_frames(&m), 2);
    size_t sizes[3] = {100, 200, 300};
    cr_assert_eq(ms_wire_check_payload(&m, sizes, 2, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_wire_check_payload(&m, sizes, 1, err, sizeof err), -1);
    cr_assert(strstr(err, "submit declares 2 payload frames, got 1"), "%s", err);
    cr_assert_eq(ms_wire_check_payload(&m, sizes, 3, err, sizeof err), -1);
    sizes[1] = 0;
    cr_assert_eq(ms_wire_check_payload(&m, sizes, 2, err, sizeof err), -1);
    cr_assert(strstr(err, "image frame 1 of submit is empty"), "%s", err);
    sizes[1] = MS_WIRE_MAX_IMAGE_BYTES + 1;
    cr_assert_eq(ms_wire_check_payload(&m, sizes, 2, err, sizeof err), -1);
    cr_assert(strstr(err, "limit"), "%s", err);
    ms_msg_fini(&m);
    s_make(&m, MS_MSG_ENCODE_TASK, true, 0);
    cr_assert_eq(ms_wire_payload_frames(&m), m.encode_task.n_images);
    ms_msg_fini(&m);
    ms_msg_init(&m, MS_MSG_FEATURE_DATA);
    m.feature_data.n_tokens = 3;
    m.feature_data.dim = 4;
    cr_assert_eq(ms_wire_payload_frames(&m), 1);
    size_t fs = 48;
    cr_assert_eq(ms_wire_check_payload(&m, &fs, 1, err, sizeof err), 0, "%s", err);
    fs = 47;
    cr_assert_eq(ms_wire_check_payload(&m, &fs, 1, err, sizeof err), -1);
    cr_assert(strstr(err, "expected 48"), "%s", err);
    ms_msg_init(&m, MS_MSG_KV_DATA);
    m.kv_data.bytes = 10;
    fs = 10;
    cr_assert_eq(ms_wire_check_payload(&m, &fs, 1, err, sizeof err), 0, "%s", err);
    fs = 11;
    cr_assert_eq(ms_wire_check_payload(&m, &fs, 1, err, sizeof err), -1);
    ms_msg_init(&m, MS_MSG_TOKEN);
    cr_assert_eq(ms_wire_payload_frames(&m), 0);
    cr_assert_eq(ms_wire_max_frame_bytes(MS_MSG_SUBMIT), MS_WIRE_MAX_IMAGE_BYTES);
}

Test(wire, sampling_helpers, .timeout = 10) {
    char err[MS_ERR_SIZE];
    ms_sampling_params p, q;
    ms_sampling_params_default(&p);
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.9f;
    p.min_p = 0.05f;
    p.seed = 99;
    p.max_tokens = 17;
    p.n_stop = 2;
    snprintf(p.stop[0], MS_MAX_STOP_LEN, "\n\n");
    snprintf(p.stop[1], MS_MAX_STOP_LEN, "END");
    ms_msg m, d;
    ms_msg_init(&m, MS_MSG_DECODE_TASK);
    m.decode_task.kv_key = ms_xstrdup("k");
    m.decode_task.data_ep = ms_xstrdup("ipc:///tmp/x");
    ms_wire_sampling_from_params(&p, &m.decode_task.sampling);
    uint8_t *buf;
    size_t len;
    s_encode(&m, &buf, &len);
    cr_assert_eq(ms_wire_decode(buf, len, &d, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(ms_wire_sampling_to_params(&d.decode_task.sampling, &q, err, sizeof err), 0, "%s",
                 err);
    cr_assert(q.temperature == p.temperature && q.top_p == p.top_p && q.min_p == p.min_p);
    cr_assert(q.top_k == 40 && q.seed == 99 && q.max_tokens == 17 && q.n_stop == 2);
    cr_assert_str_eq(q.stop[1], "END");
    d.decode_task.sampling.max_tokens = 0; /* validation runs */
    cr_assert_eq(ms_wire_sampling_to_params(&d.decode_task.sampling, &q, err, sizeof err), -1);
    ms_msg_fini(&m);
    ms_msg_fini(&d);
    free(buf);
    ms_msg_init(&m, MS_MSG_SUBMIT);
    m.submit.temperature = -1;
    m.submit.has_temperature = true;
    cr_assert_eq(ms_wire_submit_sampling(&m.submit, &q, err, sizeof err), -1);
    cr_assert(strstr(err, "temperature"), "%s", err);
}

/* ---- frames over a real inproc pair ------------------------------------------------------- */
typedef struct s_pair {
    zsock_t *router, *dealer;
} s_pair;

static void s_pair_open(s_pair *p, const char *ep) {
    p->router = zsock_new(ZMQ_ROUTER);
    cr_assert(p->router);
    zsock_set_linger(p->router, 0);
    zsock_set_rcvtimeo(p->router, 5000);
    cr_assert_eq(zsock_bind(p->router, "%s", ep), 0);
    p->dealer = zsock_new(ZMQ_DEALER);
    zsock_set_linger(p->dealer, 0);
    zsock_set_rcvtimeo(p->dealer, 5000);
    cr_assert_eq(zsock_connect(p->dealer, "%s", ep), 0);
}

static void s_pair_close(s_pair *p) {
    zsock_destroy(&p->dealer);
    zsock_destroy(&p->router);
}

/* Sends raw frames (no checks) from sock. */
static void s_send_raw(zsock_t *sock, const void *const *data, const size_t *len, size_t n) {
    zmsg_t *msg = zmsg_new();
    for (size_t i = 0; i < n; i++)
        zmsg_addmem(msg, data[i], len[i]);
    cr_assert_eq(zmsg_send(&msg, sock), 0);
}

Test(frames, good_and_bad_multipart, .timeout = 30) {
    s_pair p;
    s_pair_open(&p, "inproc://frames-test");
    char err[MS_ERR_SIZE];
    ms_frames_in in;
    ms_frames_in_init(&in);

    /* a Submit with two images, DEALER -> ROUTER */
    ms_msg m;
    ms_msg_init(&m, MS_MSG_SUBMIT);
    m.submit.id = "r1";
    m.submit.prompt = "<image><image> compare";
    m.submit.has_prompt = true;
    m.submit.n_images = 2;
    m.submit.has_n_images = true;
    const char img0[] = "\xff\xd8 jpeg bytes", img1[] = "\x89PNG bytes";
    const void *data[] = {img0, img1};
    size_t lens[] = {sizeof img0, sizeof img1};
    cr_assert_eq(ms_frames_send_bytes(p.dealer, NULL, &m, data, lens, 2, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(ms_frames_recv(p.router, &in, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert(in.routing_id);
    cr_assert_eq(in.msg.type, MS_MSG_SUBMIT);
    cr_assert_str_eq(in.msg.submit.id, "r1");
    cr_assert_eq(in.n_payload, 2);
    cr_assert_eq(ms_frames_in_size(&in, 1), sizeof img1);
    cr_assert(memcmp(ms_frames_in_data(&in, 0), img0, sizeof img0) == 0);
    zframe_t *taken = ms_frames_in_take(&in, 0);
    cr_assert(taken && ms_frames_in_data(&in, 0) == NULL);
    zframe_destroy(&taken);

    /* answer on the ROUTER with the routing id; the DEALER gets it */
    zframe_t *rid = zframe_dup(in.routing_id);
    ms_msg a;
    ms_msg_init(&a, MS_MSG_ACCEPTED);
    a.accepted.id = "r1";
    a.accepted.rid = 77;
    cr_assert_eq(ms_frames_send(p.router, rid, &a, NULL, 0, err, sizeof err), 0, "%s", err);
    ms_frames_in din;
    ms_frames_in_init(&din);
    cr_assert_eq(ms_frames_recv(p.dealer, &din, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_null(din.routing_id);
    cr_assert_eq(din.msg.type, MS_MSG_ACCEPTED);
    cr_assert_eq(din.msg.accepted.rid, 77);
    cr_assert_eq(ms_frames_send_error(p.router, rid, "r1", MS_CODE_OVERLOADED, "queue full", err,
                                      sizeof err),
                 0, "%s", err);
    cr_assert_eq(ms_frames_recv(p.dealer, &din, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_str_eq(din.msg.error.code, "overloaded");
    cr_assert_str_eq(din.msg.error.message, "queue full");

    /* garbage header: malformed, routing id kept, socket stays in step */
    const char junk[] = "not msgpack at all";
    const void *jd[] = {junk, img0};
    size_t jl[] = {sizeof junk, sizeof img0};
    s_send_raw(p.dealer, jd, jl, 2);
    cr_assert_eq(ms_frames_recv(p.router, &in, 0, err, sizeof err), MS_WIRE_MALFORMED);
    cr_assert(in.routing_id);
    cr_assert_eq(in.n_payload, 0);

    /* a header that declares 2 images followed by 1 frame (and by 3) */
    uint8_t *hdr;
    size_t hlen;
    s_encode(&m, &hdr, &hlen);
    const void *h1[] = {hdr, img0, img1, img1};
    size_t l1[] = {hlen, sizeof img0, sizeof img1, sizeof img1};
    s_send_raw(p.dealer, h1, l1, 2);
    cr_assert_eq(ms_frames_recv(p.router, &in, 0, err, sizeof err), MS_WIRE_MALFORMED);
    cr_assert(strstr(err, "submit declares 2 payload frames, got 1"), "%s", err);
    cr_assert(in.peek.has_id && strcmp(in.peek.id, "r1") == 0);
    s_send_raw(p.dealer, h1, l1, 4);
    cr_assert_eq(ms_frames_recv(p.router, &in, 0, err, sizeof err), MS_WIRE_MALFORMED);
    cr_assert(strstr(err, "got 3"), "%s", err);
    /* an empty header frame */
    const void *e[] = {""};
    size_t el[] = {0};
    s_send_raw(p.dealer, e, el, 1);
    cr_assert_eq(ms_frames_recv(p.router, &in, 0, err, sizeof err), MS_WIRE_MALFORMED);
    cr_assert(strstr(err, "empty header"), "%s", err);
    /* over the total-size limit */
    s_send_raw(p.dealer, h1, l1, 3);
    cr_assert_eq(ms_frames_recv(p.router, &in, hlen + 4, err, sizeof err), MS_WIRE_MALFORMED);
    cr_assert(strstr(err, "exceeds"), "%s", err);
    cr_assert(in.routing_id);
    /* too many frames */
    const void *many[MS_WIRE_MAX_PAYLOAD_FRAMES + 3];
    size_t ml[MS_WIRE_MAX_PAYLOAD_FRAMES + 3];
    for (int i = 0; i < MS_WIRE_MAX_PAYLOAD_FRAMES + 3; i++)
        many[i] = img0, ml[i] = sizeof img0;
    many[0] = hdr, ml[0] = hlen;
    s_send_raw(p.dealer, many, ml, MS_WIRE_MAX_PAYLOAD_FRAMES + 3);
    cr_assert_eq(ms_frames_recv(p.router, &in, 0, err, sizeof err), MS_WIRE_MALFORMED);
    cr_assert(strstr(err, "more than 16 payload frames"), "%s", err);

    /* and a good one still arrives afterwards */
    s_send_raw(p.dealer, h1, l1, 3);
    cr_assert_eq(ms_frames_recv(p.router, &in, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(in.n_payload, 2);

    /* send-side checks: nothing sent for a wrong frame count */
    cr_assert_eq(ms_frames_send_bytes(p.dealer, NULL, &m, data, lens, 1, err, sizeof err), -1);
    cr_assert(strstr(err, "declares 2"), "%s", err);

    /* timeout, and a missing socket as a transport failure */
    zsock_set_rcvtimeo(p.router, 50);
    cr_assert_eq(ms_frames_recv(p.router, &in, 0, err, sizeof err), MS_WIRE_TIMEOUT);
    cr_assert_eq(ms_frames_recv(NULL, &in, 0, err, sizeof err), MS_WIRE_TRANSPORT);

    free(hdr);
    zframe_destroy(&rid);
    ms_frames_in_fini(&in);
    ms_frames_in_fini(&din);
    s_pair_close(&p);
}

Test(frames, transport_failure, .timeout = 30) {
    /* a socket that cannot receive: zmq refuses the call (ENOTSUP) */
    zsock_t *pub = zsock_new(ZMQ_PUB);
    cr_assert(pub);
    char err[MS_ERR_SIZE];
    ms_frames_in in;
    ms_frames_in_init(&in);
    cr_assert_eq(ms_frames_recv(pub, &in, 0, err, sizeof err), MS_WIRE_TRANSPORT);
    cr_assert(strstr(err, "receive failed"), "%s", err);
    cr_assert_null(in.routing_id);
    zsock_destroy(&pub);
}

static int s_released; /* buffers released by zmq (an I/O thread may call it) */
static void s_release(void *data, void *hint) {
    cr_assert_eq(hint, &s_released);
    free(data);
    __atomic_add_fetch(&s_released, 1, __ATOMIC_SEQ_CST);
}

Test(frames, zero_copy_payload, .timeout = 30) {
    s_pair p;
    s_pair_open(&p, "inproc://frames-zc");
    char err[MS_ERR_SIZE];
    ms_msg m;
    ms_msg_init(&m, MS_MSG_KV_DATA);
    m.kv_data.key = "kv-1";
    m.kv_data.n_tokens = 7;
    m.kv_data.bytes = 1 << 20;
    uint8_t *blob = ms_xmalloc(1 << 20);
    for (size_t i = 0; i < (1u << 20); i++)
        blob[i] = (uint8_t)(i * 7);
    void *data[] = {blob};
    size_t len[] = {1 << 20};
    cr_assert_eq(ms_frames_send_zc(p.dealer, NULL, &m, data, len, 1, s_release, &s_released, err,
                                   sizeof err),
                 0, "%s", err);
    ms_frames_in in;
    ms_frames_in_init(&in);
    cr_assert_eq(ms_frames_recv(p.router, &in, MS_WIRE_MAX_KV_BYTES + MS_WIRE_MAX_HEADER_BYTES, err,
                                sizeof err),
                 MS_WIRE_OK, "%s", err);
    cr_assert_eq(in.msg.kv_data.n_tokens, 7);
    cr_assert_eq(ms_frames_in_size(&in, 0), 1u << 20);
    const uint8_t *got = ms_frames_in_data(&in, 0);
    for (size_t i = 0; i < (1u << 20); i += 4099)
        cr_assert_eq(got[i], (uint8_t)(i * 7));
    ms_frames_in_fini(&in);
    for (int i = 0; i < 500 && __atomic_load_n(&s_released, __ATOMIC_SEQ_CST) < 1; i++)
        zclock_sleep(2);
    cr_assert_eq(__atomic_load_n(&s_released, __ATOMIC_SEQ_CST), 1);
    /* a size that contradicts the header: refused, and the buffer still released */
    uint8_t *small = ms_xmalloc(10);
    void *d2[] = {small};
    size_t l2[] = {10};
    cr_assert_eq(
        ms_frames_send_zc(p.dealer, NULL, &m, d2, l2, 1, s_release, &s_released, err, sizeof err),
        -1);
    cr_assert(strstr(err, "kv_data frame is 10 bytes, header says 1048576"), "%s", err);
    cr_assert_eq(__atomic_load_n(&s_released, __ATOMIC_SEQ_CST), 2);
    s_pair_close(&p);
}

/* ---- the client library against an in-test ROUTER ------------------------------------------ */
typedef struct s_collect {
    int accepted, tokens, done, errors;
    char text[256];
    uint64_t next_index;
} s_collect;

static int s_on_event(const ms_msg *ev, void *user) {
    s_collect *c = user;
    switch (ev->type) {
    case MS_MSG_ACCEPTED:
        c->accepted++;
        break;
    case MS_MSG_TOKEN:
        cr_assert_eq(ev->token.index, c->next_index);
        c->next_index += ev->token.n_ids;
        c->tokens += (int)ev->token.n_ids;
        strncat(c->text, ev->token.text, sizeof c->text - strlen(c->text) - 1);
        break;
    case MS_MSG_DONE:
        c->done++;
        break;
    case MS_MSG_ERROR:
        c->errors++;
        break;
    default:
        break;
    }
    return 0;
}

static void s_reply(zsock_t *router, zframe_t *rid, const ms_msg *m) {
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_frames_send(router, rid, m, NULL, 0, err, sizeof err), 0, "%s", err);
}

static void s_token(zsock_t *router, zframe_t *rid, const char *id, uint64_t index, int32_t *ids,
                    uint32_t n, const char *text) {
    ms_msg m;
    ms_msg_init(&m, MS_MSG_TOKEN);
    m.token.id = (char *)id;
    m.token.index = index;
    m.token.ids = ids;
    m.token.n_ids = n;
    m.token.text = (char *)text;
    s_reply(router, rid, &m);
}

static void s_done(zsock_t *router, zframe_t *rid, const char *id) {
    ms_msg m;
    ms_msg_init(&m, MS_MSG_DONE);
    m.done.id = (char *)id;
    m.done.finish = "length";
    m.done.completion_tokens = 3;
    s_reply(router, rid, &m);
}

Test(client, stream_against_a_tiny_router, .timeout = 30) {
    char err[MS_ERR_SIZE];
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    zsock_set_linger(router, 0);
    zsock_set_rcvtimeo(router, 5000);
    cr_assert_eq(zsock_bind(router, "inproc://broker-front"), 0);
    ms_client *c = ms_client_new("inproc://broker-front", err, sizeof err);
    cr_assert(c, "%s", err);

    ms_msg req;
    ms_msg_init(&req, MS_MSG_SUBMIT);
    req.submit.id = "q1";
    req.submit.prompt = "<image> what?";
    req.submit.has_prompt = true;
    req.submit.max_tokens = 3;
    req.submit.has_max_tokens = true;
    const char img[] = "IMAGEBYTES";
    const void *imgs[] = {img};
    size_t lens[] = {sizeof img};
    cr_assert_eq(ms_client_submit(c, &req.submit, imgs, lens, 1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_client_submit(c, &req.submit, imgs, lens, 1, err, sizeof err), -1);
    cr_assert(strstr(err, "already in flight"), "%s", err);
    cr_assert_eq(ms_client_inflight(c), 1);

    /* the "broker" reads the submit and answers */
    ms_frames_in in;
    ms_frames_in_init(&in);
    cr_assert_eq(ms_frames_recv(router, &in, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(in.msg.type, MS_MSG_SUBMIT);
    cr_assert_eq(in.msg.submit.n_images, 1);
    cr_assert_eq(in.msg.submit.max_tokens, 3);
    cr_assert_eq(in.n_payload, 1);
    cr_assert(memcmp(ms_frames_in_data(&in, 0), img, sizeof img) == 0);
    zframe_t *rid = zframe_dup(in.routing_id);
    ms_msg a;
    ms_msg_init(&a, MS_MSG_ACCEPTED);
    a.accepted.id = "q1";
    a.accepted.rid = 1;
    s_reply(router, rid, &a);
    int32_t t01[] = {10, 11}, t2[] = {12};
    s_token(router, rid, "q1", 0, t01, 2, "Hel");
    s_token(router, rid, "q1", 2, t2, 1, "lo");
    s_done(router, rid, "q1");

    s_collect col = {0};
    cr_assert_eq(ms_client_stream(c, "q1", 2000, s_on_event, &col, err, sizeof err), MS_WIRE_OK,
                 "%s", err);
    cr_assert_eq(col.accepted, 1);
    cr_assert_eq(col.tokens, 3);
    cr_assert_eq(col.done, 1);
    cr_assert_str_eq(col.text, "Hello");
    cr_assert_eq(ms_client_inflight(c), 0);

    /* nothing more: a timeout */
    ms_msg ev;
    ms_msg_init(&ev, MS_MSG_NONE);
    cr_assert_eq(ms_client_next(c, 50, &ev, err, sizeof err), MS_WIRE_TIMEOUT);

    /* cancel reaches the broker; an Error ends the request */
    req.submit.id = "q2";
    cr_assert_eq(ms_client_submit(c, &req.submit, NULL, NULL, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_frames_recv(router, &in, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert(!in.msg.submit.has_n_images && in.n_payload == 0);
    cr_assert_eq(ms_client_cancel(c, "q2", err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_frames_recv(router, &in, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(in.msg.type, MS_MSG_CANCEL);
    cr_assert_str_eq(in.msg.cancel.id, "q2");
    ms_msg e;
    ms_msg_init(&e, MS_MSG_ERROR);
    e.error.id = "q2";
    e.error.code = "cancelled";
    e.error.message = "cancelled by the producer";
    s_reply(router, rid, &e);
    memset(&col, 0, sizeof col);
    cr_assert_eq(ms_client_stream(c, "q2", 2000, s_on_event, &col, err, sizeof err), MS_WIRE_OK,
                 "%s", err);
    cr_assert_eq(col.errors, 1);
    cr_assert_eq(ms_client_inflight(c), 0);

    /* stream violations: a token index gap, and an event after the end */
    req.submit.id = "q3";
    cr_assert_eq(ms_client_submit(c, &req.submit, NULL, NULL, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_frames_recv(router, &in, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    s_token(router, rid, "q3", 0, t01, 2, "ab");
    s_token(router, rid, "q3", 3, t2, 1, "c"); /* index 2 missing */
    cr_assert_eq(ms_client_next(c, 2000, &ev, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(ms_client_next(c, 2000, &ev, err, sizeof err), MS_WIRE_MALFORMED);
    cr_assert(strstr(err, "token index 3 for request 'q3', expected 2"), "%s", err);
    cr_assert_eq(ev.type, MS_MSG_NONE);
    s_done(router, rid, "q3");
    cr_assert_eq(ms_client_next(c, 2000, &ev, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(ev.type, MS_MSG_DONE);
    s_token(router, rid, "q3", 2, t2, 1, "late");
    cr_assert_eq(ms_client_next(c, 2000, &ev, err, sizeof err), MS_WIRE_MALFORMED);
    cr_assert(strstr(err, "not in flight"), "%s", err);
    /* a message a broker never sends to producers, and garbage */
    ms_msg h;
    ms_msg_init(&h, MS_MSG_CANCEL_TASK);
    s_reply(router, rid, &h);
    cr_assert_eq(ms_client_next(c, 2000, &ev, err, sizeof err), MS_WIRE_MALFORMED);
    cr_assert(strstr(err, "unexpected message 'cancel_task'"), "%s", err);
    zmsg_t *junk = zmsg_new();
    zmsg_append(junk, &(zframe_t *){zframe_dup(rid)});
    zmsg_addstr(junk, "junk");
    zmsg_send(&junk, router);
    cr_assert_eq(ms_client_next(c, 2000, &ev, err, sizeof err), MS_WIRE_MALFORMED);
    /* stats */
    cr_assert_eq(ms_client_stats_request(c, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_frames_recv(router, &in, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(in.msg.type, MS_MSG_STATS_REQUEST);
    ms_msg st;
    ms_msg_init(&st, MS_MSG_STATS);
    st.stats.requests = 3;
    s_reply(router, rid, &st);
    cr_assert_eq(ms_client_next(c, 2000, &ev, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(ev.type, MS_MSG_STATS);
    cr_assert_eq(ev.stats.requests, 3);
    ms_msg_fini(&ev);

    ms_frames_in_fini(&in);
    zframe_destroy(&rid);
    ms_client_destroy(&c);
    cr_assert_null(c);
    ms_client_destroy(&c);
    zsock_destroy(&router);
}

Test(client, bad_arguments, .timeout = 10) {
    char err[MS_ERR_SIZE];
    cr_assert_null(ms_client_new("", err, sizeof err));
    cr_assert_null(ms_client_new("nonsense://x", err, sizeof err));
    ms_client *c = ms_client_new("tcp://127.0.0.1:1", err, sizeof err); /* async connect: fine */
    cr_assert(c, "%s", err);
    ms_msg m;
    ms_msg_init(&m, MS_MSG_SUBMIT);
    m.submit.prompt = "x";
    m.submit.has_prompt = true;
    cr_assert_eq(ms_client_submit(c, &m.submit, NULL, NULL, 0, err, sizeof err), -1);
    cr_assert(strstr(err, "needs a request id"), "%s", err);
    m.submit.id = "a";
    cr_assert_eq(
        ms_client_submit(c, &m.submit, NULL, NULL, MS_WIRE_MAX_IMAGES + 1, err, sizeof err), -1);
    m.submit.has_prompt = false; /* neither prompt nor messages: refused before sending */
    cr_assert_eq(ms_client_submit(c, &m.submit, NULL, NULL, 0, err, sizeof err), -1);
    cr_assert(strstr(err, "exactly one"), "%s", err);
    cr_assert_eq(ms_client_inflight(c), 0);
    ms_client_destroy(&c);
}
