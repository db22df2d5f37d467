/* kvcache.h — the paged KV cache: fixed-size blocks of token rows, per layer
 * K and V pools allocated once from the backend, a free list, and per-sequence
 * block tables (as vLLM's PagedAttention / llama.cpp's unified cache).
 *
 * Layout. For every layer l there is one K pool and one V pool, each a
 * backend buffer of n_blocks * block_size rows of row_dim = n_head_kv *
 * head_dim floats (f32). Token j of a sequence lives at row
 *     blocks[j / block_size] * block_size + j % block_size
 * of every layer's K and V pool, which is the addressing ms_attn_args uses.
 *
 * Memory bound (fixed at creation, never grows):
 *     2 * n_layer * n_blocks * block_size * row_dim * sizeof(float) bytes.
 *
 * A sequence (ms_seq) holds its block table, the number of tokens already in
 * the cache (n_past) and its token history. Blocks are taken from the free
 * list when a sequence grows and returned when it is freed. All calls are
 * single-threaded (the engine's thread).
 */
#ifndef MS_KVCACHE_H
#define MS_KVCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

#define MS_KV_BLOCK_SIZE_DEFAULT 16   /* tokens per block */
#define MS_KV_MAX_BLOCK_SIZE     1024 /* largest accepted block size */
#define MS_SEQ_TOKEN_EMBD        (-1) /* history entry of a row fed as an embedding (image) */

/* The KV blob format (ms_kv_export / ms_kv_import), little-endian:
 *   header, 48 bytes:
 *     u32 magic MS_KV_MAGIC ("MSKV"), u32 version MS_KV_VERSION,
 *     u64 model hash (the engine's, see ms_engine_model_hash),
 *     u32 n_layer, u32 row_dim (floats per K or V row), u32 block_size of
 *     the exporter (informational), u32 dtype (MS_KV_DTYPE_F32),
 *     u32 n_tokens, u32 reserved (0), u64 checksum (ms_kvcache_blob_checksum:
 *     covers the first 40 header bytes and every byte after the header);
 *   n_tokens × i32 token history (MS_SEQ_TOKEN_EMBD for embedding rows);
 *   for each layer: n_tokens K rows, then n_tokens V rows (row_dim f32 each).
 * Total: 48 + 4 n + 2 n_layer n row_dim 4 bytes. */
#define MS_KV_MAGIC       0x564b534du /* "MSKV" little-endian */
#define MS_KV_VERSION     1
#define MS_KV_HEADER_SIZE 48
#define MS_KV_DTYPE_F32   0

/* One sequence's view of the cache. Fields are read-only for callers; the
 * cache and the engine change them. */
typedef struct ms_seq {
    uint64_t id;     /* unique within the engine that made it */
    int n_past;      /* tokens already in the cache (= next position) */
    int n_blocks;    /* entries used in blocks */
    int cap_blocks;  /* entries allocated in blocks */
    int32_t *blocks; /* block table: block ids, n_blocks of them, owned */
    int32_t *tokens; /* history, n_past entries: token ids or MS_SEQ_TOKEN_EMBD, owned */
    int cap_tokens;  /* entries allocated in tokens */
} ms_seq;

typedef struct ms_kvcache {
    ms_backend *be;    /* not owned */
    int n_layer;       /* layers (pools per kind) */
    int row_dim;       /* floats per row: n_head_kv * head_dim */
    int block_size;    /* rows per block */
    int n_blocks;      /* blocks in each pool */
    float **k;         /* n_layer backend buffers of (n_blocks * block_size, row_dim) */
    float **v;         /* same for V */
    int32_t *free_ids; /* stack of free block ids */
    int n_free;        /* entries in free_ids */
} ms_kvcache;

/* Allocates the pools: n_blocks blocks of block_size rows. NULL + err when the
 * arguments are out of range or the backend cannot allocate. */
ms_kvcache *ms_kvcache_new(ms_backend *be, int n_layer, int row_dim, int block_size, int n_blocks,
                           char *err, size_t err_size);
void ms_kvcache_destroy(ms_kvcache **kv_p);

/* Bytes the pools of a cache with these dimensions take. */
size_t ms_kvcache_bytes(int n_layer, int row_dim, int block_size, int n_blocks);
/* Blocks needed to hold n_tokens tokens. */
int ms_kvcache_blocks_for(const ms_kvcache *kv, int n_tokens);

/* Sequences: init/fini of caller-owned storage (fini returns the blocks). */
void ms_seq_init(ms_seq *s, uint64_t id);
void ms_kvcache_seq_fini(ms_kvcache *kv, ms_seq *s);

/* Makes sure s has blocks for n_past + n_new tokens, taking them from the free
 * list. All or nothing: on failure nothing changes and err says
 * "KV cache full: need N blocks, M free". */
int ms_kvcache_seq_reserve(ms_kvcache *kv, ms_seq *s, int n_new, char *err, size_t err_size);
/* Same for several sequences at once (each grows by n_new[i]); all or nothing. */
int ms_kvcache_reserve_many(ms_kvcache *kv, ms_seq *const *seqs, const int *n_new, int n_seqs,
                            char *err, size_t err_size);
/* Cache rows of positions [n_past, n_past + n) of s, into rows (host, n
 * entries). The blocks must have been reserved. */
void ms_kvcache_seq_rows(const ms_kvcache *kv, const ms_seq *s, int n, int32_t *rows);
/* Records n new tokens (history entries `tokens`) as being in the cache. */
void ms_kvcache_seq_advance(ms_seq *s, const int32_t *tokens, int n);

/* The checksum field of a blob of len >= MS_KV_HEADER_SIZE bytes. */
uint64_t ms_kvcache_blob_checksum(const void *blob, size_t len);

/* Blob of a sequence (format above). Size in bytes of the blob of s. */
size_t ms_kvcache_export_size(const ms_kvcache *kv, const ms_seq *s);
/* Writes the blob of s into buf (cap >= ms_kvcache_export_size). 0 or -1 + err. */
int ms_kvcache_export(const ms_kvcache *kv, const ms_seq *s, uint64_t model_hash, void *buf,
                      size_t cap, char *err, size_t err_size);
/* Validates a blob (from the network: every field is checked, and the
 * checksum; history entries must be MS_SEQ_TOKEN_EMBD or in [0, n_vocab))
 * and fills s (initialised, empty) with freshly reserved blocks holding its
 * rows. max_tokens bounds n_tokens. 0, or -1 + err with s still empty. */
int ms_kvcache_import(ms_kvcache *kv, ms_seq *s, uint64_t model_hash, int max_tokens,
                      int32_t n_vocab, const void *buf, size_t len, char *err, size_t err_size);

#endif
