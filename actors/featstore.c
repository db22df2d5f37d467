/* featstore.c — content-keyed blob store with pins, LRU eviction and a
 * memory bound (see featstore.h). Entries sit in a chained hash table for
 * lookup and in one doubly linked list ordered by last use (head = newest)
 * for eviction. */
#include "featstore.h"

#include "ms_common.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define S_BUCKETS_MIN 64 /* initial hash buckets; doubles when entries exceed buckets */

struct ms_blobbuf {
    atomic_int refs;      /* references held */
    size_t bytes;         /* size of data */
    unsigned char data[]; /* the bytes */
};

ms_blobbuf *ms_blobbuf_new(size_t bytes) {
    ms_blobbuf *b = ms_xmalloc(sizeof *b + (bytes ? bytes : 1));
    atomic_init(&b->refs, 1);
    b->bytes = bytes;
    return b;
}

void *ms_blobbuf_data(ms_blobbuf *b) {
    return b->data;
}

size_t ms_blobbuf_size(const ms_blobbuf *b) {
    return b->bytes;
}

ms_blobbuf *ms_blobbuf_ref(ms_blobbuf *b) {
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}

void ms_blobbuf_unref(ms_blobbuf **b_p) {
    if (!b_p || !*b_p) return;
    ms_blobbuf *b = *b_p;
    *b_p = NULL;
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) free(b);
}

void ms_blobbuf_zmq_free(void *data, void *hint) {
    (void)data;
    ms_blobbuf *b = hint;
    ms_blobbuf_unref(&b);
}

/* ---- the store -------------------------------------------------------------- */

typedef struct s_entry {
    char key[MS_FEATSTORE_KEY_MAX];
    uint64_t hash; /* ms_hash64 of key */
    ms_blob_kind kind;
    ms_blobbuf *buf;       /* owned reference */
    int n_tokens, dim;     /* see ms_blob_info */
    int pins;              /* pulls still expected */
    int64_t used_ms;       /* last put/get/pin/pull */
    struct s_entry *hnext; /* hash chain */
    struct s_entry *prev;  /* LRU list: towards newer */
    struct s_entry *next;  /* LRU list: towards older */
} s_entry;

struct ms_featstore {
    s_entry **buckets; /* (n_buckets) chains */
    size_t n_buckets;  /* power of two */
    s_entry *newest;   /* LRU head */
    s_entry *oldest;   /* LRU tail */
    int count;         /* entries */
    int pinned;        /* entries with pins > 0 */
    size_t bytes;      /* data held */
    size_t max_bytes;  /* bound */
    int64_t ttl_ms;    /* pin expiry */
    int64_t evictions; /* evicted for room */
};

ms_featstore *ms_featstore_new(size_t max_bytes, int64_t ttl_ms) {
    ms_featstore *s = ms_xcalloc(1, sizeof *s);
    s->n_buckets = S_BUCKETS_MIN;
    s->buckets = ms_xcalloc(s->n_buckets, sizeof *s->buckets);
    s->max_bytes = max_bytes ? max_bytes : (size_t)MS_FEATSTORE_BYTES_DEFAULT;
    s->ttl_ms = ttl_ms > 0 ? ttl_ms : MS_FEATSTORE_TTL_MS_DEFAULT;
    return s;
}

static void s_entry_free(s_entry *en) {
    ms_blobbuf_unref(&en->buf);
    free(en);
}

void ms_featstore_destroy(ms_featstore **s_p) {
    if (!s_p || !*s_p) return;
    ms_featstore *s = *s_p;
    s_entry *en = s->newest;
    while (en) {
        s_entry *nx = en->next;
        s_entry_free(en);
        en = nx;
    }
    free(s->buckets);
    free(s);
    *s_p = NULL;
}

static s_entry *s_find(const ms_featstore *s, const char *key, uint64_t h) {
    for (s_entry *en = s->buckets[h & (s->n_buckets - 1)]; en; en = en->hnext)
        if (en->hash == h && strcmp(en->key, key) == 0) return en;
    return NULL;
}

static void s_lru_unlink(ms_featstore *s, s_entry *en) {
    if (en->prev)
        en->prev->next = en->next;
    else
        s->newest = en->next;
    if (en->next)
        en->next->prev = en->prev;
    else
        s->oldest = en->prev;
    en->prev = en->next = NULL;
}

static void s_lru_push_front(ms_featstore *s, s_entry *en) {
    en->prev = NULL;
    en->next = s->newest;
    if (s->newest) s->newest->prev = en;
    s->newest = en;
    if (!s->oldest) s->oldest = en;
}

static void s_touch(ms_featstore *s, s_entry *en, int64_t now_ms) {
    en->used_ms = now_ms;
    if (s->newest == en) return;
    s_lru_unlink(s, en);
    s_lru_push_front(s, en);
}

static void s_set_pins(ms_featstore *s, s_entry *en, int pins) {
    if (en->pins > 0 && pins == 0) s->pinned--;
    if (en->pins == 0 && pins > 0) s->pinned++;
    en->pins = pins;
}

/* Unlinks en from the table and the list and frees it. */
static void s_drop(ms_featstore *s, s_entry *en) {
    s_entry **pp = &s->buckets[en->hash & (s->n_buckets - 1)];
    while (*pp != en)
        pp = &(*pp)->hnext;
    *pp = en->hnext;
    s_lru_unlink(s, en);
    s_set_pins(s, en, 0);
    s->bytes -= ms_blobbuf_size(en->buf);
    s->count--;
    s_entry_free(en);
}

static void s_grow(ms_featstore *s) {
    size_t nb = s->n_buckets * 2;
    s_entry **b = ms_xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < s->n_buckets; i++) {
        s_entry *en = s->buckets[i];
        while (en) {
            s_entry *nx = en->hnext;
            en->hnext = b[en->hash & (nb - 1)];
            b[en->hash & (nb - 1)] = en;
            en = nx;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->n_buckets = nb;
}

/* Bytes that evicting every unpinned entry would free. */
static size_t s_evictable_bytes(const ms_featstore *s) {
    size_t n = 0;
    for (const s_entry *en = s->newest; en; en = en->next)
        if (en->pins == 0) n += ms_blobbuf_size(en->buf);
    return n;
}

int ms_featstore_put(ms_featstore *s, const char *key, ms_blob_kind kind, ms_blobbuf **buf_p,
                     int n_tokens, int dim, int64_t now_ms, char *err, size_t err_size) {
    assert(s && key && buf_p && *buf_p);
    const size_t klen = strlen(key);
    if (klen == 0 || klen >= MS_FEATSTORE_KEY_MAX)
        return ms_errf(err, err_size, "store: key of %zu bytes (1 to %d)", klen,
                       MS_FEATSTORE_KEY_MAX - 1);
    const uint64_t h = ms_hash64(key, klen);
    if (s_find(s, key, h)) return ms_errf(err, err_size, "store: key '%s' already present", key);
    const size_t need = ms_blobbuf_size(*buf_p);
    if (need > s->max_bytes || s->bytes - s_evictable_bytes(s) + need > s->max_bytes)
        return ms_errf(err, err_size,
                       "store full: %zu bytes needed, %zu held (%d pinned entries), bound %zu",
                       need, s->bytes, s->pinned, s->max_bytes);
    /* evict unpinned entries, oldest first, until it fits */
    s_entry *en = s->oldest;
    while (s->bytes + need > s->max_bytes && en) {
        s_entry *newer = en->prev;
        if (en->pins == 0) {
            s_drop(s, en);
            s->evictions++;
        }
        en = newer;
    }
    assert(s->bytes + need <= s->max_bytes);

    en = ms_xcalloc(1, sizeof *en);
    memcpy(en->key, key, klen + 1);
    en->hash = h;
    en->kind = kind;
    en->buf = *buf_p;
    *buf_p = NULL;
    en->n_tokens = n_tokens;
    en->dim = dim;
    en->used_ms = now_ms;
    s_entry **b = &s->buckets[h & (s->n_buckets - 1)];
    en->hnext = *b;
    *b = en;
    s_lru_push_front(s, en);
    s->count++;
    s->bytes += need;
    s_set_pins(s, en, 1);
    if ((size_t)s->count > s->n_buckets) s_grow(s);
    return 0;
}

bool ms_featstore_get(ms_featstore *s, const char *key, int64_t now_ms, ms_blob_info *out) {
    s_entry *en = s_find(s, key, ms_hash64(key, strlen(key)));
    if (!en) return false;
    s_touch(s, en, now_ms);
    if (out) {
        out->kind = en->kind;
        out->buf = en->buf;
        out->bytes = ms_blobbuf_size(en->buf);
        out->n_tokens = en->n_tokens;
        out->dim = en->dim;
        out->pins = en->pins;
    }
    return true;
}

int ms_featstore_pin(ms_featstore *s, const char *key, int64_t now_ms) {
    s_entry *en = s_find(s, key, ms_hash64(key, strlen(key)));
    if (!en) return -1;
    s_touch(s, en, now_ms);
    s_set_pins(s, en, en->pins + 1);
    return 0;
}

void ms_featstore_pulled(ms_featstore *s, const char *key, int64_t now_ms) {
    s_entry *en = s_find(s, key, ms_hash64(key, strlen(key)));
    if (!en) return;
    s_touch(s, en, now_ms);
    if (en->pins > 0) s_set_pins(s, en, en->pins - 1);
    if (en->pins == 0 && en->kind == MS_BLOB_KV) s_drop(s, en);
}

int ms_featstore_remove(ms_featstore *s, const char *key) {
    s_entry *en = s_find(s, key, ms_hash64(key, strlen(key)));
    if (!en) return -1;
    s_drop(s, en);
    return 0;
}

int ms_featstore_expire(ms_featstore *s, int64_t now_ms) {
    int n = 0;
    s_entry *en = s->oldest;
    while (en) {
        s_entry *newer = en->prev;
        if (en->pins > 0 && now_ms - en->used_ms >= s->ttl_ms) {
            n++;
            if (en->kind == MS_BLOB_KV)
                s_drop(s, en);
            else
                s_set_pins(s, en, 0);
        }
        en = newer;
    }
    return n;
}

int ms_featstore_count(const ms_featstore *s) {
    return s->count;
}

int ms_featstore_pinned(const ms_featstore *s) {
    return s->pinned;
}

size_t ms_featstore_bytes(const ms_featstore *s) {
    return s->bytes;
}

size_t ms_featstore_max_bytes(const ms_featstore *s) {
    return s->max_bytes;
}

int64_t ms_featstore_evictions(const ms_featstore *s) {
    return s->evictions;
}
