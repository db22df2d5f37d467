/* encoder.c — the encode stage of an actor (see actor.h): EncodeTasks are
 * queued with their image bytes; each main-loop turn runs one ViT batch of
 * up to vit_batch images taken across the queued tasks in arrival order,
 * stores each image's features in the actor's store keyed by content hash,
 * and answers every task whose images are all stored with Encoded. An image
 * whose features are already stored (identical bytes seen before, or twice
 * in the queue) is a cache hit: its entry is pinned for one more pull and
 * the ViT does not run for it. */
#include "actor.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

typedef struct s_image {
    uint64_t index;  /* position in the request */
    uint64_t hash;   /* ms_hash64 of the bytes */
    zframe_t *bytes; /* encoded file (owned) until encoded or found in the store */
    bool ready;      /* features stored and pinned for this task */
} s_image;

typedef struct s_task {
    uint64_t rid, task;
    int n; /* images */
    s_image img[MS_WIRE_MAX_IMAGES];
    int n_ready;                     /* images with ready set */
    double preprocess_ms, encode_ms; /* share of the batches that ran its images */
    struct s_task *next;
} s_task;

struct ms_encoder {
    ms_actor *a;         /* not owned */
    ms_engine *e;        /* a->eng */
    s_task *head, *tail; /* FIFO */
    int n_queued;
    int64_t queued_images; /* images not ready yet */
    int cap;               /* images per ViT pass */
    float *pixels;         /* (cap, image_floats) */
    float *features;       /* (cap, T, Fv) */
};

ms_encoder *ms_encoder_new(ms_actor *a) {
    ms_encoder *enc = ms_xcalloc(1, sizeof *enc);
    enc->a = a;
    enc->e = a->eng;
    enc->cap = a->cfg.vit_batch > 0 ? a->cfg.vit_batch : MS_ENGINE_VIT_BATCH_DEFAULT;
    enc->pixels = ms_xmalloc((size_t)enc->cap * ms_engine_image_floats(enc->e) * sizeof(float));
    enc->features = ms_xmalloc((size_t)enc->cap * (size_t)ms_engine_n_image_tokens(enc->e) *
                               (size_t)ms_engine_feature_dim(enc->e) * sizeof(float));
    return enc;
}

static void s_task_free(s_task *t) {
    for (int i = 0; i < t->n; i++)
        zframe_destroy(&t->img[i].bytes);
    free(t);
}

void ms_encoder_destroy(ms_encoder **enc_p) {
    if (!enc_p || !*enc_p) return;
    ms_encoder *enc = *enc_p;
    while (enc->head) {
        s_task *t = enc->head;
        enc->head = t->next;
        s_task_free(t);
    }
    free(enc->pixels);
    free(enc->features);
    free(enc);
    *enc_p = NULL;
}

/* Unlinks t (found by walking the queue) and frees it. */
static void s_remove(ms_encoder *enc, s_task *t) {
    s_task **pp = &enc->head, *prev = NULL;
    while (*pp && *pp != t) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp) return;
    *pp = t->next;
    if (enc->tail == t) enc->tail = prev;
    enc->n_queued--;
    enc->queued_images -= t->n - t->n_ready;
    s_task_free(t);
}

/* Marks image i of t ready if its features are stored (pinning them once
 * more for this task's pull). Returns true if it did. */
static bool s_try_cached(ms_encoder *enc, s_task *t, int i, bool count_hit) {
    s_image *im = &t->img[i];
    if (im->ready) return true;
    char key[MS_FEATSTORE_KEY_MAX];
    ms_actor_feature_key(im->hash, key);
    ms_blob_info bi;
    const int64_t now = ms_actor_now_ms();
    if (!ms_featstore_get(enc->a->store, key, now, &bi) || bi.kind != MS_BLOB_FEATURES)
        return false;
    ms_featstore_pin(enc->a->store, key, now);
    im->ready = true;
    zframe_destroy(&im->bytes);
    t->n_ready++;
    enc->queued_images--;
    if (count_hit) enc->a->info.images_cache_hits++;
    return true;
}

void ms_encoder_on_task(ms_encoder *enc, ms_frames_in *in) {
    ms_actor *a = enc->a;
    const ms_msg_encode_task *m = &in->msg.encode_task;
    if (m->n_images == 0) {
        ms_actor_task_error(a, m->rid, m->task, MS_CODE_BAD_REQUEST, "EncodeTask without images");
        return;
    }
    if (enc->n_queued >= MS_ACTOR_QUEUE_MAX) {
        ms_actor_task_error(a, m->rid, m->task, MS_CODE_OVERLOADED,
                            "encoder %s has %d tasks queued", a->cfg.id, enc->n_queued);
        return;
    }
    s_task *t = ms_xcalloc(1, sizeof *t);
    t->rid = m->rid;
    t->task = m->task;
    t->n = (int)m->n_images;
    for (int i = 0; i < t->n; i++) {
        s_image *im = &t->img[i];
        im->index = m->images[i].index;
        im->hash = m->images[i].hash;
        const uint64_t h =
            ms_hash64(ms_frames_in_data(in, (size_t)i), ms_frames_in_size(in, (size_t)i));
        if (h != im->hash) {
            ms_actor_task_error(a, m->rid, m->task, MS_CODE_BAD_REQUEST,
                                "image %" PRIu64 ": hash %016" PRIx64 " given, the bytes hash to "
                                "%016" PRIx64,
                                im->index, im->hash, h);
            s_task_free(t);
            return;
        }
    }
    for (int i = 0; i < t->n; i++)
        t->img[i].bytes = ms_frames_in_take(in, (size_t)i);
    t->next = NULL;
    if (enc->tail)
        enc->tail->next = t;
    else
        enc->head = t;
    enc->tail = t;
    enc->n_queued++;
    enc->queued_images += t->n;
    for (int i = 0; i < t->n; i++)
        s_try_cached(enc, t, i, true);
}

void ms_encoder_cancel(ms_encoder *enc, uint64_t rid) {
    s_task *t = enc->head;
    while (t) {
        s_task *nx = t->next;
        if (t->rid == rid) s_remove(enc, t);
        t = nx;
    }
}

/* Answers a task whose images are all ready and drops it. */
static void s_reply(ms_encoder *enc, s_task *t) {
    ms_wire_image_ref refs[MS_WIRE_MAX_IMAGES];
    memset(refs, 0, sizeof refs);
    for (int i = 0; i < t->n; i++) {
        refs[i].index = t->img[i].index;
        refs[i].hash = t->img[i].hash;
        refs[i].n_tokens = (uint64_t)ms_engine_n_image_tokens(enc->e);
        refs[i].has_n_tokens = true;
    }
    ms_msg m;
    ms_msg_init(&m, MS_MSG_ENCODED);
    m.encoded.rid = t->rid;
    m.encoded.task = t->task;
    m.encoded.images = refs;
    m.encoded.n_images = (uint32_t)t->n;
    m.encoded.preprocess_ms = t->preprocess_ms;
    m.encoded.encode_ms = t->encode_ms;
    ms_actor_send(enc->a, &m);
    enc->a->info.tasks_done++;
    s_remove(enc, t);
}

/* Answers and drops every task whose images are all ready. */
static bool s_reply_ready(ms_encoder *enc) {
    bool did = false;
    s_task *t = enc->head;
    while (t) {
        s_task *nx = t->next;
        if (t->n_ready == t->n) {
            s_reply(enc, t);
            did = true;
        }
        t = nx;
    }
    return did;
}

/* A batch entry: image i of task t. */
typedef struct s_slot {
    s_task *t;
    int i;
} s_slot;

static bool s_in(s_task *const *set, int n, const s_task *t) {
    for (int k = 0; k < n; k++)
        if (set[k] == t) return true;
    return false;
}

/* Adds t to set (if absent). */
static void s_add(s_task **set, int *n, s_task *t) {
    if (!s_in(set, *n, t)) set[(*n)++] = t;
}

bool ms_encoder_work(ms_encoder *enc) {
    ms_actor *a = enc->a;
    ms_engine *e = enc->e;
    bool did = s_reply_ready(enc);
    const size_t px = ms_engine_image_floats(e);
    const int T = ms_engine_n_image_tokens(e), Fv = ms_engine_feature_dim(e);
    const size_t ft = (size_t)T * (size_t)Fv;
    char err[MS_ERR_SIZE];

    /* the batch: images not ready, oldest tasks first, one per hash (a repeat
     * is served from the store once its first copy is stored) */
    s_slot *sl = ms_xmalloc((size_t)enc->cap * sizeof *sl);
    s_task **failed = ms_xmalloc((size_t)enc->cap * sizeof *failed);
    int n = 0, n_failed = 0;
    for (s_task *t = enc->head; t && n < enc->cap; t = t->next) {
        for (int i = 0; i < t->n && n < enc->cap; i++) {
            if (t->img[i].ready || s_try_cached(enc, t, i, true)) continue;
            bool dup = false;
            for (int j = 0; j < n && !dup; j++)
                dup = sl[j].t->img[sl[j].i].hash == t->img[i].hash;
            if (dup) continue;
            sl[n++] = (s_slot){t, i};
        }
    }
    if (n == 0) {
        free(sl);
        free(failed);
        return s_reply_ready(enc) || did;
    }

    /* preprocess into slot j; an image that does not decode fails its task */
    const double t0 = ms_now_s();
    for (int j = 0; j < n; j++) {
        s_image *im = &sl[j].t->img[sl[j].i];
        if (ms_engine_preprocess(e, zframe_data(im->bytes), zframe_size(im->bytes),
                                 enc->pixels + (size_t)j * px, err, sizeof err) != 0 &&
            !s_in(failed, n_failed, sl[j].t)) {
            ms_actor_task_error(a, sl[j].t->rid, sl[j].t->task, MS_CODE_BAD_REQUEST,
                                "image %" PRIu64 ": %s", im->index, err);
            s_add(failed, &n_failed, sl[j].t);
        }
    }
    /* drop the failed tasks' slots, compacting the pixels */
    int m = 0;
    for (int j = 0; j < n; j++) {
        if (s_in(failed, n_failed, sl[j].t)) continue;
        if (m != j)
            memmove(enc->pixels + (size_t)m * px, enc->pixels + (size_t)j * px, px * sizeof(float));
        sl[m++] = sl[j];
    }
    n = m;
    const double t1 = ms_now_s();
    if (n > 0 && ms_engine_encode(e, enc->pixels, n, enc->features, err, sizeof err) != 0) {
        for (int j = 0; j < n; j++) {
            if (s_in(failed, n_failed, sl[j].t)) continue;
            ms_actor_task_error(a, sl[j].t->rid, sl[j].t->task, MS_CODE_INTERNAL, "encode: %s",
                                err);
            s_add(failed, &n_failed, sl[j].t);
        }
        n = 0;
    }
    const double t2 = ms_now_s();
    a->info.images_encoded += n;

    /* store the features; each task is charged its share of the batch */
    for (int j = 0; j < n; j++) {
        s_task *t = sl[j].t;
        if (s_in(failed, n_failed, t)) continue;
        s_image *im = &t->img[sl[j].i];
        t->preprocess_ms += (t1 - t0) * 1e3 / n;
        t->encode_ms += (t2 - t1) * 1e3 / n;
        char key[MS_FEATSTORE_KEY_MAX];
        ms_actor_feature_key(im->hash, key);
        ms_blobbuf *buf = ms_blobbuf_new(ft * sizeof(float));
        memcpy(ms_blobbuf_data(buf), enc->features + (size_t)j * ft, ft * sizeof(float));
        if (ms_featstore_put(a->store, key, MS_BLOB_FEATURES, &buf, T, Fv, ms_actor_now_ms(), err,
                             sizeof err) != 0) {
            /* no room (everything held is still to be pulled): retry later */
            ms_blobbuf_unref(&buf);
            ms_actor_task_error(a, t->rid, t->task, MS_CODE_OVERLOADED, "image %" PRIu64 ": %s",
                                im->index, err);
            s_add(failed, &n_failed, t);
            continue;
        }
        im->ready = true;
        zframe_destroy(&im->bytes);
        t->n_ready++;
        enc->queued_images--;
    }
    for (int k = 0; k < n_failed; k++)
        s_remove(enc, failed[k]);
    free(sl);
    free(failed);
    s_reply_ready(enc);
    return true;
}

bool ms_encoder_busy(const ms_encoder *enc) {
    return enc->n_queued > 0;
}

void ms_encoder_hand_back(ms_encoder *enc) {
    while (enc->head) {
        s_task *t = enc->head;
        ms_actor_task_error(enc->a, t->rid, t->task, MS_CODE_DRAINING, "encoder %s is draining",
                            enc->a->cfg.id);
        s_remove(enc, t);
    }
}

int64_t ms_encoder_queued_image_tokens(const ms_encoder *enc) {
    return enc->queued_images * (int64_t)ms_engine_n_image_tokens(enc->e);
}
