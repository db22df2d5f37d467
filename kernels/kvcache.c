/* kvcache.c — paged KV cache: pools, free list, block tables, blobs (see kvcache.h). */
#include "kvcache.h"
#include "ms_common.h"

#include <assert.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define MS_KV_MAX_ROW_DIM (1 << 20) /* floats per row, sanity bound */
#define MS_KV_MAX_LAYERS  4096

/* ---- little-endian helpers (the blob format is little-endian) ------------- */

static void s_put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void s_put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t s_get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t s_get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- the cache ------------------------------------------------------------ */

size_t ms_kvcache_bytes(int n_layer, int row_dim, int block_size, int n_blocks) {
    return 2 * (size_t)n_layer * (size_t)n_blocks * (size_t)block_size * (size_t)row_dim *
           sizeof(float);
}

ms_kvcache *ms_kvcache_new(ms_backend *be, int n_layer, int row_dim, int block_size, int n_blocks,
                           char *err, size_t err_size) {
    if (n_layer < 1 || n_layer > MS_KV_MAX_LAYERS || row_dim < 1 || row_dim > MS_KV_MAX_ROW_DIM) {
        ms_errf(err, err_size, "KV cache: bad dimensions (n_layer %d, row_dim %d)", n_layer,
                row_dim);
        return NULL;
    }
    if (block_size < 1 || block_size > MS_KV_MAX_BLOCK_SIZE) {
        ms_errf(err, err_size, "KV cache: block size %d out of range [1, %d]", block_size,
                MS_KV_MAX_BLOCK_SIZE);
        return NULL;
    }
    if (n_blocks < 1 || (int64_t)n_blocks * block_size > INT_MAX) {
        ms_errf(err, err_size, "KV cache: %d blocks of %d tokens is out of range", n_blocks,
                block_size);
        return NULL;
    }
    ms_kvcache *kv = ms_xcalloc(1, sizeof *kv);
    kv->be = be;
    kv->n_layer = n_layer;
    kv->row_dim = row_dim;
    kv->block_size = block_size;
    kv->n_blocks = n_blocks;
    kv->k = ms_xcalloc((size_t)n_layer, sizeof *kv->k);
    kv->v = ms_xcalloc((size_t)n_layer, sizeof *kv->v);
    const size_t pool = (size_t)n_blocks * (size_t)block_size * (size_t)row_dim * sizeof(float);
    for (int l = 0; l < n_layer; l++) {
        kv->k[l] = be->ops->alloc(be, pool);
        kv->v[l] = be->ops->alloc(be, pool);
        if (!kv->k[l] || !kv->v[l]) {
            ms_errf(err, err_size, "KV cache: cannot allocate %zu bytes (%d blocks of %d tokens)",
                    ms_kvcache_bytes(n_layer, row_dim, block_size, n_blocks), n_blocks, block_size);
            ms_kvcache_destroy(&kv);
            return NULL;
        }
    }
    kv->free_ids = ms_xmalloc((size_t)n_blocks * sizeof *kv->free_ids);
    /* A stack: popping gives blocks 0, 1, 2, ... on a fresh cache. */
    for (int i = 0; i < n_blocks; i++)
        kv->free_ids[i] = n_blocks - 1 - i;
    kv->n_free = n_blocks;
    return kv;
}

void ms_kvcache_destroy(ms_kvcache **kv_p) {
    if (!kv_p || !*kv_p) return;
    ms_kvcache *kv = *kv_p;
    *kv_p = NULL;
    for (int l = 0; l < kv->n_layer; l++) {
        if (kv->k && kv->k[l]) kv->be->ops->free(kv->be, kv->k[l]);
        if (kv->v && kv->v[l]) kv->be->ops->free(kv->be, kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    free(kv->free_ids);
    free(kv);
}

int ms_kvcache_blocks_for(const ms_kvcache *kv, int n_tokens) {
    return (int)(((int64_t)n_tokens + kv->block_size - 1) / kv->block_size);
}

/* ---- sequences ------------------------------------------------------------ */

void ms_seq_init(ms_seq *s, uint64_t id) {
    memset(s, 0, sizeof *s);
    s->id = id;
}

void ms_kvcache_seq_fini(ms_kvcache *kv, ms_seq *s) {
    for (int i = s->n_blocks - 1; i >= 0; i--) {
        assert(kv->n_free < kv->n_blocks);
        kv->free_ids[kv->n_free++] = s->blocks[i];
    }
    free(s->blocks);
    free(s->tokens);
    uint64_t id = s->id;
    ms_seq_init(s, id);
}

/* Blocks s still needs to hold n_new more tokens (never negative). */
static int s_need(const ms_kvcache *kv, const ms_seq *s, int n_new) {
    int want = ms_kvcache_blocks_for(kv, s->n_past + n_new);
    return want > s->n_blocks ? want - s->n_blocks : 0;
}

/* Takes `need` blocks from the free list into s (the caller checked). */
static void s_take(ms_kvcache *kv, ms_seq *s, int need) {
    if (need <= 0) return;
    assert(need <= kv->n_free);
    if (s->n_blocks + need > s->cap_blocks) {
        int cap = MS_MAX(s->n_blocks + need, 2 * s->cap_blocks);
        s->blocks = ms_xrealloc(s->blocks, (size_t)cap * sizeof *s->blocks);
        s->cap_blocks = cap;
    }
    for (int i = 0; i < need; i++)
        s->blocks[s->n_blocks++] = kv->free_ids[--kv->n_free];
}

int ms_kvcache_seq_reserve(ms_kvcache *kv, ms_seq *s, int n_new, char *err, size_t err_size) {
    assert(n_new >= 0);
    if ((int64_t)s->n_past + n_new > (int64_t)kv->n_blocks * kv->block_size)
        return ms_errf(err, err_size, "KV cache full: need %d blocks, %d free",
                       ms_kvcache_blocks_for(kv, s->n_past + n_new) - s->n_blocks, kv->n_free);
    int need = s_need(kv, s, n_new);
    if (need > kv->n_free)
        return ms_errf(err, err_size, "KV cache full: need %d blocks, %d free", need, kv->n_free);
    s_take(kv, s, need);
    return 0;
}

int ms_kvcache_reserve_many(ms_kvcache *kv, ms_seq *const *seqs, const int *n_new, int n_seqs,
                            char *err, size_t err_size) {
    int64_t need = 0;
    for (int i = 0; i < n_seqs; i++) {
        if ((int64_t)seqs[i]->n_past + n_new[i] > (int64_t)kv->n_blocks * kv->block_size)
            return ms_errf(err, err_size, "KV cache full: need %d blocks, %d free",
                           ms_kvcache_blocks_for(kv, seqs[i]->n_past + n_new[i]) -
                               seqs[i]->n_blocks,
                           kv->n_free);
        need += s_need(kv, seqs[i], n_new[i]);
    }
    if (need > kv->n_free)
        return ms_errf(err, err_size, "KV cache full: need %lld blocks, %d free", (long long)need,
                       kv->n_free);
    for (int i = 0; i < n_seqs; i++)
        s_take(kv, seqs[i], s_need(kv, seqs[i], n_new[i]));
    return 0;
}

void ms_kvcache_seq_rows(const ms_kvcache *kv, const ms_seq *s, int n, int32_t *rows) {
    const int bs = kv->block_size;
    for (int i = 0; i < n; i++) {
        int pos = s->n_past + i;
        assert(pos / bs < s->n_blocks);
        rows[i] = s->blocks[pos / bs] * bs + pos % bs;
    }
}

void ms_kvcache_seq_advance(ms_seq *s, const int32_t *tokens, int n) {
    if (s->n_past + n > s->cap_tokens) {
        int cap = MS_MAX(s->n_past + n, 2 * s->cap_tokens);
        s->tokens = ms_xrealloc(s->tokens, (size_t)cap * sizeof *s->tokens);
        s->cap_tokens = cap;
    }
    memcpy(s->tokens + s->n_past, tokens, (size_t)n * sizeof *tokens);
    s->n_past += n;
}

/* ---- blobs ---------------------------------------------------------------- */

size_t ms_kvcache_export_size(const ms_kvcache *kv, const ms_seq *s) {
    const size_t n = (size_t)s->n_past;
    return MS_KV_HEADER_SIZE + 4 * n + 2 * (size_t)kv->n_layer * n * (size_t)kv->row_dim * 4;
}

/* Copies rows [0, n) of one pool of s (in block order) to/from a packed host
 * array of n rows. */
static void s_pool_to_host(const ms_kvcache *kv, const ms_seq *s, const float *pool, int n,
                           uint8_t *dst) {
    const int bs = kv->block_size;
    const size_t row = (size_t)kv->row_dim * sizeof(float);
    for (int b = 0; b * bs < n; b++) {
        int cnt = MS_MIN(bs, n - b * bs);
        const float *src = pool + (size_t)s->blocks[b] * bs * kv->row_dim;
        kv->be->ops->to_host(kv->be, dst + (size_t)b * bs * row, src, (size_t)cnt * row);
    }
}

static void s_pool_from_host(ms_kvcache *kv, const ms_seq *s, float *pool, int n,
                             const uint8_t *src) {
    const int bs = kv->block_size;
    const size_t row = (size_t)kv->row_dim * sizeof(float);
    for (int b = 0; b * bs < n; b++) {
        int cnt = MS_MIN(bs, n - b * bs);
        float *dst = pool + (size_t)s->blocks[b] * bs * kv->row_dim;
        kv->be->ops->to_device(kv->be, dst, src + (size_t)b * bs * row, (size_t)cnt * row);
    }
}

uint64_t ms_kvcache_blob_checksum(const void *blob, size_t len) {
    const uint8_t *p = blob;
    assert(len >= MS_KV_HEADER_SIZE);
    uint64_t h = ms_hash64(p + MS_KV_HEADER_SIZE, len - MS_KV_HEADER_SIZE);
    return h ^ (ms_hash64(p, 40) * 0x9e3779b97f4a7c15ull);
}

int ms_kvcache_export(const ms_kvcache *kv, const ms_seq *s, uint64_t model_hash, void *buf,
                      size_t cap, char *err, size_t err_size) {
    const size_t total = ms_kvcache_export_size(kv, s);
    if (cap < total)
        return ms_errf(err, err_size, "KV export: buffer of %zu bytes, need %zu", cap, total);
    uint8_t *p = buf;
    const int n = s->n_past;
    const size_t layer_bytes = (size_t)n * (size_t)kv->row_dim * sizeof(float);
    uint8_t *q = p + MS_KV_HEADER_SIZE;
    for (int i = 0; i < n; i++)
        s_put_u32(q + 4 * (size_t)i, (uint32_t)s->tokens[i]);
    q += 4 * (size_t)n;
    for (int l = 0; l < kv->n_layer; l++) {
        s_pool_to_host(kv, s, kv->k[l], n, q);
        q += layer_bytes;
        s_pool_to_host(kv, s, kv->v[l], n, q);
        q += layer_bytes;
    }
    s_put_u32(p + 0, MS_KV_MAGIC);
    s_put_u32(p + 4, MS_KV_VERSION);
    s_put_u64(p + 8, model_hash);
    s_put_u32(p + 16, (uint32_t)kv->n_layer);
    s_put_u32(p + 20, (uint32_t)kv->row_dim);
    s_put_u32(p + 24, (uint32_t)kv->block_size);
    s_put_u32(p + 28, MS_KV_DTYPE_F32);
    s_put_u32(p + 32, (uint32_t)n);
    s_put_u32(p + 36, 0);
    s_put_u64(p + 40, ms_kvcache_blob_checksum(p, total));
    return 0;
}

int ms_kvcache_import(ms_kvcache *kv, ms_seq *s, uint64_t model_hash, int max_tokens,
                      int32_t n_vocab, const void *buf, size_t len, char *err, size_t err_size) {
    assert(s->n_past == 0 && s->n_blocks == 0);
    const uint8_t *p = buf;
    if (!p || len < MS_KV_HEADER_SIZE)
        return ms_errf(err, err_size,
                       "KV import: blob of %zu bytes is shorter than the %d-byte header", len,
                       MS_KV_HEADER_SIZE);
    uint32_t magic = s_get_u32(p), version = s_get_u32(p + 4);
    uint64_t hash = s_get_u64(p + 8);
    uint32_t n_layer = s_get_u32(p + 16), row_dim = s_get_u32(p + 20);
    uint32_t block_size = s_get_u32(p + 24), dtype = s_get_u32(p + 28);
    uint32_t n_tokens = s_get_u32(p + 32), reserved = s_get_u32(p + 36);
    uint64_t checksum = s_get_u64(p + 40);
    if (magic != MS_KV_MAGIC) return ms_errf(err, err_size, "KV import: bad magic 0x%08x", magic);
    if (version != MS_KV_VERSION)
        return ms_errf(err, err_size, "KV import: version %u, expected %d", version, MS_KV_VERSION);
    if (hash != model_hash)
        return ms_errf(err, err_size,
                       "KV import: blob is for model %016llx, this engine runs %016llx",
                       (unsigned long long)hash, (unsigned long long)model_hash);
    if (n_layer != (uint32_t)kv->n_layer || row_dim != (uint32_t)kv->row_dim)
        return ms_errf(err, err_size,
                       "KV import: blob has %u layers of rows of %u floats, expected %d of %d",
                       n_layer, row_dim, kv->n_layer, kv->row_dim);
    if (dtype != MS_KV_DTYPE_F32)
        return ms_errf(err, err_size, "KV import: unknown dtype %u", dtype);
    if (block_size < 1 || block_size > MS_KV_MAX_BLOCK_SIZE)
        return ms_errf(err, err_size, "KV import: block size %u out of range", block_size);
    if (reserved != 0) return ms_errf(err, err_size, "KV import: reserved field is %u", reserved);
    if (n_tokens < 1 || n_tokens > (uint32_t)max_tokens)
        return ms_errf(err, err_size, "KV import: %u tokens, expected 1..%d", n_tokens, max_tokens);
    const int n = (int)n_tokens;
    const size_t layer_bytes = (size_t)n * (size_t)kv->row_dim * sizeof(float);
    const size_t total = MS_KV_HEADER_SIZE + 4 * (size_t)n + 2 * (size_t)kv->n_layer * layer_bytes;
    if (len != total)
        return ms_errf(err, err_size, "KV import: blob of %zu bytes, expected %zu for %d tokens",
                       len, total, n);
    if (ms_kvcache_blob_checksum(p, total) != checksum)
        return ms_errf(err, err_size, "KV import: checksum mismatch (corrupt blob)");
    int32_t *hist = ms_xmalloc((size_t)n * sizeof *hist);
    for (int i = 0; i < n; i++) {
        hist[i] = (int32_t)s_get_u32(p + MS_KV_HEADER_SIZE + 4 * (size_t)i);
        if (hist[i] != MS_SEQ_TOKEN_EMBD && (hist[i] < 0 || hist[i] >= n_vocab)) {
            int32_t bad = hist[i];
            free(hist);
            return ms_errf(err, err_size, "KV import: history entry %d is %d, outside the vocab", i,
                           (int)bad);
        }
    }
    if (ms_kvcache_seq_reserve(kv, s, n, err, err_size) != 0) {
        free(hist);
        return -1;
    }
    const uint8_t *q = p + MS_KV_HEADER_SIZE + 4 * (size_t)n;
    for (int l = 0; l < kv->n_layer; l++) {
        s_pool_from_host(kv, s, kv->k[l], n, q);
        q += layer_bytes;
        s_pool_from_host(kv, s, kv->v[l], n, q);
        q += layer_bytes;
    }
    ms_kvcache_seq_advance(s, hist, n);
    free(hist);
    return 0;
}
