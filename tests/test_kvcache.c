/* test_kvcache.c — the paged KV cache: block accounting, the "KV cache full"
 * error, all-or-nothing reservation, and the export/import blob (round trip,
 * and rejection of truncated or corrupt blobs). Runs on the cpu-ref backend,
 * no model needed. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kvcache.h"
#include "ms_common.h"

#define N_LAYER  3
#define ROW_DIM  8
#define BS       4
#define N_BLOCKS 10
#define HASH     0x1234abcd5678ef01ull
#define N_VOCAB  100

static ms_backend *be;
static ms_kvcache *kv;
static char err[MS_ERR_SIZE];

static void setup(void) {
    be = ms_backend_cpu_ref_new(err, sizeof err);
    cr_assert(be, "%s", err);
    kv = ms_kvcache_new(be, N_LAYER, ROW_DIM, BS, N_BLOCKS, err, sizeof err);
    cr_assert(kv, "%s", err);
}

static void teardown(void) {
    ms_kvcache_destroy(&kv);
    ms_backend_destroy(&be);
}

TestSuite(kvcache, .init = setup, .fini = teardown, .timeout = 30);

/* Value stored for (layer, kind, token, element) of a sequence tagged `tag`. */
static float s_val(int tag, int l, int kind, int t, int j) {
    return (float)(tag * 100000 + l * 10000 + kind * 1000 + t * 10) + (float)j * 0.125f;
}

/* Appends n tokens to s with recognisable K/V rows. */
static void s_fill(ms_seq *s, int n, int tag) {
    cr_assert_eq(ms_kvcache_seq_reserve(kv, s, n, err, sizeof err), 0, "%s", err);
    int32_t *rows = malloc((size_t)n * sizeof *rows);
    int32_t *hist = malloc((size_t)n * sizeof *hist);
    float row[ROW_DIM];
    ms_kvcache_seq_rows(kv, s, n, rows);
    for (int i = 0; i < n; i++) {
        const int t = s->n_past + i;
        hist[i] = (t % 5 == 3) ? MS_SEQ_TOKEN_EMBD : t % N_VOCAB;
        for (int l = 0; l < N_LAYER; l++)
            for (int kind = 0; kind < 2; kind++) {
                for (int j = 0; j < ROW_DIM; j++)
                    row[j] = s_val(tag, l, kind, t, j);
                float *pool = kind ? kv->v[l] : kv->k[l];
                be->ops->to_device(be, pool + (size_t)rows[i] * ROW_DIM, row, sizeof row);
            }
    }
    ms_kvcache_seq_advance(s, hist, n);
    free(rows);
    free(hist);
}

/* Checks every row of s against s_val(tag, ...). */
static void s_check(const ms_seq *s, int tag) {
    float row[ROW_DIM];
    for (int t = 0; t < s->n_past; t++) {
        int32_t r = s->blocks[t / BS] * BS + t % BS;
        for (int l = 0; l < N_LAYER; l++)
            for (int kind = 0; kind < 2; kind++) {
                const float *pool = kind ? kv->v[l] : kv->k[l];
                be->ops->to_host(be, row, pool + (size_t)r * ROW_DIM, sizeof row);
                for (int j = 0; j < ROW_DIM; j++)
                    cr_assert_eq(row[j], s_val(tag, l, kind, t, j),
                                 "token %d layer %d kind %d elem %d", t, l, kind, j);
            }
        cr_assert_eq(s->tokens[t], (t % 5 == 3) ? MS_SEQ_TOKEN_EMBD : t % N_VOCAB);
    }
}

Test(kvcache, bytes_and_blocks) {
    cr_assert_eq(ms_kvcache_bytes(N_LAYER, ROW_DIM, BS, N_BLOCKS),
                 (size_t)2 * N_LAYER * N_BLOCKS * BS * ROW_DIM * 4);
    cr_assert_eq(ms_kvcache_blocks_for(kv, 0), 0);
    cr_assert_eq(ms_kvcache_blocks_for(kv, 1), 1);
    cr_assert_eq(ms_kvcache_blocks_for(kv, BS), 1);
    cr_assert_eq(ms_kvcache_blocks_for(kv, BS + 1), 2);
    cr_assert_eq(kv->n_free, N_BLOCKS);
}

Test(kvcache, bad_dimensions_rejected) {
    cr_assert_null(ms_kvcache_new(be, 0, ROW_DIM, BS, N_BLOCKS, err, sizeof err));
    cr_assert_null(ms_kvcache_new(be, N_LAYER, ROW_DIM, 0, N_BLOCKS, err, sizeof err));
    cr_assert_null(
        ms_kvcache_new(be, N_LAYER, ROW_DIM, MS_KV_MAX_BLOCK_SIZE + 1, 1, err, sizeof err));
    cr_assert_null(ms_kvcache_new(be, N_LAYER, ROW_DIM, BS, 0, err, sizeof err));
    cr_assert(strstr(err, "blocks"), "%s", err);
}

Test(kvcache, reserve_rows_and_free) {
    ms_seq a, b;
    ms_seq_init(&a, 1);
    ms_seq_init(&b, 2);
    s_fill(&a, 5, 1); /* 2 blocks */
    s_fill(&b, 3, 2); /* 1 block */
    s_fill(&a, 4, 1); /* 9 tokens: 3 blocks */
    cr_assert_eq(a.n_past, 9);
    cr_assert_eq(a.n_blocks, 3);
    cr_assert_eq(b.n_blocks, 1);
    cr_assert_eq(kv->n_free, N_BLOCKS - 4);
    /* blocks are distinct across sequences */
    for (int i = 0; i < a.n_blocks; i++)
        cr_assert_neq(a.blocks[i], b.blocks[0]);
    int32_t rows[2];
    ms_kvcache_seq_rows(kv, &a, 2, rows); /* positions 9, 10 */
    cr_assert_eq(rows[0], a.blocks[2] * BS + 1);
    cr_assert_eq(rows[1], a.blocks[2] * BS + 2);
    s_check(&a, 1);
    s_check(&b, 2);
    ms_kvcache_seq_fini(kv, &a);
    cr_assert_eq(a.n_past, 0);
    cr_assert_eq(a.n_blocks, 0);
    cr_assert_eq(kv->n_free, N_BLOCKS - 1);
    ms_kvcache_seq_fini(kv, &b);
    cr_assert_eq(kv->n_free, N_BLOCKS);
}

Test(kvcache, full_is_an_error_and_changes_nothing) {
    ms_seq a;
    ms_seq_init(&a, 1);
    s_fill(&a, 8 * BS, 1);
    cr_assert_eq(kv->n_free, 2);
    ms_seq b;
    ms_seq_init(&b, 2);
    cr_assert_eq(ms_kvcache_seq_reserve(kv, &b, 3 * BS, err, sizeof err), -1);
    cr_assert_str_eq(err, "KV cache full: need 3 blocks, 2 free");
    cr_assert_eq(b.n_blocks, 0);
    cr_assert_eq(kv->n_free, 2);
    /* past the whole capacity */
    cr_assert_eq(ms_kvcache_seq_reserve(kv, &a, 3 * BS, err, sizeof err), -1);
    cr_assert(strstr(err, "KV cache full"), "%s", err);
    cr_assert_eq(a.n_blocks, 8);
    /* all or nothing over several sequences: 1 + 2 blocks needed, 2 free */
    ms_seq c;
    ms_seq_init(&c, 3);
    ms_seq *both[] = {&b, &c};
    int n_new[] = {BS, 2 * BS};
    cr_assert_eq(ms_kvcache_reserve_many(kv, both, n_new, 2, err, sizeof err), -1);
    cr_assert_str_eq(err, "KV cache full: need 3 blocks, 2 free");
    cr_assert_eq(b.n_blocks + c.n_blocks, 0);
    n_new[1] = BS;
    cr_assert_eq(ms_kvcache_reserve_many(kv, both, n_new, 2, err, sizeof err), 0, "%s", err);
    cr_assert_eq(kv->n_free, 0);
    ms_kvcache_seq_fini(kv, &b);
    ms_kvcache_seq_fini(kv, &c);
    ms_kvcache_seq_fini(kv, &a);
    cr_assert_eq(kv->n_free, N_BLOCKS);
}

/* Exports a, imports into a fresh sequence, compares rows. */
Test(kvcache, export_import_round_trip) {
    ms_seq a, other;
    ms_seq_init(&a, 1);
    ms_seq_init(&other, 2);
    s_fill(&a, 3, 7);
    s_fill(&other, 2, 9); /* interleave so a's blocks are not contiguous */
    s_fill(&a, 6, 7);
    size_t n = ms_kvcache_export_size(kv, &a);
    cr_assert_eq(n, MS_KV_HEADER_SIZE + 4 * 9 + 2 * N_LAYER * 9 * ROW_DIM * 4);
    uint8_t *blob = malloc(n);
    cr_assert_eq(ms_kvcache_export(kv, &a, HASH, blob, n - 1, err, sizeof err), -1);
    cr_assert_eq(ms_kvcache_export(kv, &a, HASH, blob, n, err, sizeof err), 0, "%s", err);
    ms_seq b;
    ms_seq_init(&b, 3);
    cr_assert_eq(ms_kvcache_import(kv, &b, HASH, 1000, N_VOCAB, blob, n, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(b.n_past, 9);
    cr_assert_eq(b.n_blocks, 3);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < a.n_blocks; j++)
            cr_assert_neq(b.blocks[i], a.blocks[j]);
    s_check(&b, 7);
    /* the import continues like the original */
    s_fill(&b, 2, 7);
    s_check(&b, 7);
    ms_kvcache_seq_fini(kv, &a);
    ms_kvcache_seq_fini(kv, &b);
    ms_kvcache_seq_fini(kv, &other);
    cr_assert_eq(kv->n_free, N_BLOCKS);
    free(blob);
}

static void s_put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void s_put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Expects the import of (blob, n) to fail with a message containing `what`,
 * leaving the cache as it was. */
static void s_reject(const uint8_t *blob, size_t n, const char *what) {
    ms_seq s;
    ms_seq_init(&s, 99);
    int before = kv->n_free;
    err[0] = '\0';
    cr_assert_eq(ms_kvcache_import(kv, &s, HASH, 1000, N_VOCAB, blob, n, err, sizeof err), -1,
                 "accepted a blob that should fail with '%s'", what);
    cr_assert(strstr(err, what), "expected '%s' in: %s", what, err);
    cr_assert_eq(s.n_past, 0);
    cr_assert_eq(s.n_blocks, 0);
    cr_assert_eq(kv->n_free, before);
}

Test(kvcache, import_rejects_truncated_and_corrupt) {
    ms_seq a;
    ms_seq_init(&a, 1);
    s_fill(&a, 6, 3);
    const size_t n = ms_kvcache_export_size(kv, &a);
    uint8_t *good = malloc(n), *bad = malloc(n + 8);
    cr_assert_eq(ms_kvcache_export(kv, &a, HASH, good, n, err, sizeof err), 0, "%s", err);

    /* every truncation */
    for (size_t len = 0; len < n; len++)
        s_reject(good, len, len < MS_KV_HEADER_SIZE ? "shorter than" : "expected");
    s_reject(NULL, 0, "shorter than");
    /* trailing garbage */
    memcpy(bad, good, n);
    s_reject(bad, n + 8, "expected");

#define FIELD(off, put, val, what)                                                                 \
    do {                                                                                           \
        memcpy(bad, good, n);                                                                      \
        put(bad + (off), (val));                                                                   \
        s_reject(bad, n, what);                                                                    \
    } while (0)
    FIELD(0, s_put_u32, 0x4655474, "magic");
    FIELD(4, s_put_u32, 2, "version");
    FIELD(8, s_put_u64, HASH ^ 1, "model");
    FIELD(16, s_put_u32, N_LAYER + 1, "layers");
    FIELD(20, s_put_u32, ROW_DIM * 2, "layers");
    FIELD(24, s_put_u32, 0, "block size");
    FIELD(24, s_put_u32, 1u << 30, "block size");
    FIELD(28, s_put_u32, 1, "dtype");
    FIELD(32, s_put_u32, 0, "tokens");
    FIELD(32, s_put_u32, 0xffffffffu, "tokens");
    FIELD(32, s_put_u32, 7, "expected");
    FIELD(32, s_put_u32, 5, "expected");
    FIELD(36, s_put_u32, 1, "reserved");
    FIELD(40, s_put_u64, 0, "checksum");
#undef FIELD
    /* a flipped bit anywhere (header fields included: the block size is
     * informational, only the checksum catches it) */
    for (size_t off = 0; off < n; off += (off < MS_KV_HEADER_SIZE ? 1 : 37)) {
        if (off >= 40 && off < MS_KV_HEADER_SIZE) continue; /* the checksum itself */
        memcpy(bad, good, n);
        bad[off] ^= 0x10;
        s_reject(bad, n, off < MS_KV_HEADER_SIZE ? "" : "checksum");
    }
    /* a well-formed blob (right checksum) whose history leaves the vocab */
    memcpy(bad, good, n);
    s_put_u32(bad + MS_KV_HEADER_SIZE + 4, N_VOCAB);
    s_put_u64(bad + 40, ms_kvcache_blob_checksum(bad, n));
    s_reject(bad, n, "vocab");
    s_put_u32(bad + MS_KV_HEADER_SIZE + 4, (uint32_t)-2);
    s_put_u64(bad + 40, ms_kvcache_blob_checksum(bad, n));
    s_reject(bad, n, "vocab");
    /* more tokens than the importer's context */
    ms_seq s;
    ms_seq_init(&s, 5);
    cr_assert_eq(ms_kvcache_import(kv, &s, HASH, 5, N_VOCAB, good, n, err, sizeof err), -1);
    cr_assert(strstr(err, "tokens"), "%s", err);
    /* the good blob still imports */
    cr_assert_eq(ms_kvcache_import(kv, &s, HASH, 1000, N_VOCAB, good, n, err, sizeof err), 0, "%s",
                 err);
    s_check(&s, 3);
    ms_kvcache_seq_fini(kv, &s);
    ms_kvcache_seq_fini(kv, &a);
    free(good);
    free(bad);
}

Test(kvcache, import_into_full_cache_fails_cleanly) {
    ms_seq a, hog;
    ms_seq_init(&a, 1);
    ms_seq_init(&hog, 2);
    s_fill(&a, 2 * BS, 4);
    const size_t n = ms_kvcache_export_size(kv, &a);
    uint8_t *blob = malloc(n);
    cr_assert_eq(ms_kvcache_export(kv, &a, HASH, blob, n, err, sizeof err), 0, "%s", err);
    s_fill(&hog, 7 * BS, 5); /* 1 block left */
    s_reject(blob, n, "KV cache full: need 2 blocks, 1 free");
    ms_kvcache_seq_fini(kv, &hog);
    ms_kvcache_seq_fini(kv, &a);
    free(blob);
}
