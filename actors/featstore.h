/* featstore.h — an actor's store of data-plane blobs: vision features kept by
 * an encoder until a prefill actor pulls them, and KV blobs kept by a prefill
 * actor (hand-off mode) until a decode actor pulls them.
 *
 * Entries are keyed by a short string: the image's content hash for features
 * (so identical image bytes are encoded once and served again), a per-task
 * key for KV blobs. Each entry carries a pin count = pulls still expected:
 *   - put() stores an entry with one pin; pin() adds one (a cache hit: one
 *     more request will pull the same features);
 *   - pulled() drops one pin. A KV blob is removed when its last pin goes
 *     (nobody reuses a sequence's KV); features stay, unpinned, for reuse;
 *   - unpinned entries are evicted least recently used first whenever a put
 *     needs room under the memory bound;
 *   - a pinned entry not touched for ttl_ms (its pull never came: the request
 *     was cancelled, or the puller died) is expired by expire(): features
 *     are unpinned (kept for reuse, now evictable), KV blobs removed.
 * A put that does not fit even after evicting every unpinned entry fails:
 * pinned data is never dropped to make room (the caller answers
 * "overloaded").
 *
 * Data lives in reference-counted buffers (ms_blobbuf) so that a pull can be
 * answered zero-copy: the sender takes a reference, the store may drop the
 * entry meanwhile, the buffer goes when the last reference does. References
 * may be released from any thread (ZeroMQ's I/O thread frees sent frames);
 * everything else about a store is single-threaded.
 */
#ifndef MS_FEATSTORE_H
#define MS_FEATSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MS_FEATSTORE_KEY_MAX        160 /* bytes of a key, NUL included (> a wire kv_key) */
#define MS_FEATSTORE_BYTES_DEFAULT  (1ull << 30) /* memory bound when none is given: 1 GiB */
#define MS_FEATSTORE_TTL_MS_DEFAULT 60000        /* a pin not pulled within this expires */

/* A reference-counted byte buffer. */
typedef struct ms_blobbuf ms_blobbuf;

/* A new buffer of `bytes` bytes (uninitialised) with one reference. */
ms_blobbuf *ms_blobbuf_new(size_t bytes);
/* The buffer's bytes (writable: fill it before sharing it). */
void *ms_blobbuf_data(ms_blobbuf *b);
size_t ms_blobbuf_size(const ms_blobbuf *b);
/* Takes one more reference; returns b. */
ms_blobbuf *ms_blobbuf_ref(ms_blobbuf *b);
/* Drops one reference (freeing the buffer with the last one) and NULLs *b_p.
 * Thread-safe. NULL-safe. */
void ms_blobbuf_unref(ms_blobbuf **b_p);
/* The same, with the signature of a ZeroMQ free function (zmq_free_fn):
 * data is ignored, hint is the ms_blobbuf. */
void ms_blobbuf_zmq_free(void *data, void *hint);

typedef enum ms_blob_kind {
    MS_BLOB_FEATURES = 0, /* f32 (n_tokens, dim): ViT output of one image */
    MS_BLOB_KV = 1,       /* a KV hand-off blob (kvcache.h format); n_tokens = its rows */
} ms_blob_kind;

/* What get() returns about an entry (a copy; buf is a borrowed pointer valid
 * until the store's next put/remove/expire/destroy, or take a reference). */
typedef struct ms_blob_info {
    ms_blob_kind kind;
    ms_blobbuf *buf; /* the data (borrowed) */
    size_t bytes;    /* ms_blobbuf_size(buf) */
    int n_tokens;    /* features: image tokens; KV: sequence rows */
    int dim;         /* features: feature width; KV: 0 */
    int pins;        /* pulls still expected */
} ms_blob_info;

typedef struct ms_featstore ms_featstore;

/* A store holding at most max_bytes of data (0: MS_FEATSTORE_BYTES_DEFAULT)
 * whose pins expire after ttl_ms without use (<= 0: MS_FEATSTORE_TTL_MS_DEFAULT). */
ms_featstore *ms_featstore_new(size_t max_bytes, int64_t ttl_ms);
/* Frees every entry (buffers live on while others hold references). */
void ms_featstore_destroy(ms_featstore **s_p);

/* Stores *buf_p under key with one pin, taking the caller's reference (and
 * NULLing *buf_p) on success. Evicts unpinned entries, least recently used
 * first, until it fits. -1 + err, and *buf_p untouched, when: the key is
 * empty, too long or already present, or the data does not fit even with
 * every unpinned entry gone. now_ms: the caller's clock (ms_now_ns()/1e6). */
int ms_featstore_put(ms_featstore *s, const char *key, ms_blob_kind kind, ms_blobbuf **buf_p,
                     int n_tokens, int dim, int64_t now_ms, char *err, size_t err_size);
/* Looks key up; true and *out filled if present (the entry becomes the most
 * recently used). */
bool ms_featstore_get(ms_featstore *s, const char *key, int64_t now_ms, ms_blob_info *out);
/* One more pull is expected for key: pins + 1. 0, or -1 if absent. */
int ms_featstore_pin(ms_featstore *s, const char *key, int64_t now_ms);
/* A pull of key was served: pins - 1 (not below 0). A KV blob is removed
 * when no pin remains. No-op if absent. */
void ms_featstore_pulled(ms_featstore *s, const char *key, int64_t now_ms);
/* Removes key. 0, or -1 if absent. */
int ms_featstore_remove(ms_featstore *s, const char *key);
/* Expires pins not used for ttl_ms (see above). Returns entries affected. */
int ms_featstore_expire(ms_featstore *s, int64_t now_ms);

int ms_featstore_count(const ms_featstore *s);         /* entries */
int ms_featstore_pinned(const ms_featstore *s);        /* entries with pins > 0 */
size_t ms_featstore_bytes(const ms_featstore *s);      /* data bytes held */
size_t ms_featstore_max_bytes(const ms_featstore *s);  /* the bound */
int64_t ms_featstore_evictions(const ms_featstore *s); /* entries evicted for room so far */

#endif
