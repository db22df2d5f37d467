/* replay.c — the trace player (replay.h). */
#include "replay.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h> /* crc32 for PNG chunks */

#include "chat.h"
#include "client.h"
#include "ms_common.h"
#include "registry.h"

/* ---- synthetic text --------------------------------------------------------------- */

/* Common English words: each is one token (with its leading space) in the
 * Llama 2/3, Qwen2 and GPT-2 vocabularies. */
static const char *const s_words[] = {
    "the", "of",  "and",  "to",   "in",  "is",   "that", "it",   "for",  "was", "on",
    "are", "as",  "with", "be",   "at",  "this", "have", "from", "or",   "one", "had",
    "by",  "but", "not",  "what", "all", "were", "we",   "when", "your", "can",
};
#define S_N_WORDS ((int)(sizeof s_words / sizeof s_words[0]))

static uint64_t s_mix(uint64_t x) { /* splitmix64 */
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

_Static_assert(S_N_WORDS <= 64, "word masks are 64-bit");

uint64_t ms_replay_word_mask(const ms_tokenizer *tok) {
    /* a word inside a text ("the WORD") must add exactly one token to "the" */
    uint64_t mask = 0;
    int32_t ids[8];
    const int base = tok ? ms_tokenizer_encode(tok, "the", 3, false, false, ids, 8, NULL, 0) : -1;
    for (int i = 0; base > 0 && i < S_N_WORDS; i++) {
        char w[16];
        snprintf(w, sizeof w, "the %s", s_words[i]);
        if (ms_tokenizer_encode(tok, w, strlen(w), false, false, ids, 8, NULL, 0) == base + 1)
            mask |= 1ull << i;
    }
    return mask;
}

char *ms_replay_text(int n_words, uint64_t seed, uint64_t word_mask, size_t *len) {
    int pick[S_N_WORDS], n_pick = 0;
    for (int i = 0; i < S_N_WORDS; i++)
        if (!word_mask || (word_mask >> i & 1)) pick[n_pick++] = i;
    n_words = MS_MAX(n_words, 0);
    char *s = ms_xmalloc((size_t)n_words * 6 + 1); /* longest word 4 bytes + a space */
    size_t n = 0;
    for (int i = 0; i < n_words; i++) {
        const char *w = s_words[pick[s_mix(seed ^ s_mix((uint64_t)i)) % (uint64_t)n_pick]];
        if (i) s[n++] = ' ';
        const size_t wl = strlen(w);
        memcpy(s + n, w, wl);
        n += wl;
    }
    s[n] = '\0';
    if (len) *len = n;
    return s;
}

/* Text tokens of the raw prompt of n_words words with n_images images: what
 * the broker counts (ms_chat_build_prompt, raw template). -1 + err on failure. */
static int s_count_text(const ms_tokenizer *tok, uint64_t mask, int n_images, int n_words,
                        uint64_t seed, char *err, size_t err_size) {
    char *text = ms_replay_text(n_words, seed, mask, NULL);
    ms_chat_message msg = {MS_CHAT_USER, text, n_images};
    int32_t *prompt = NULL;
    int n_prompt = 0, n_img = 0;
    const int rc = ms_chat_build_prompt(tok, MS_CHAT_RAW, &msg, 1, true, &prompt, &n_prompt, &n_img,
                                        err, err_size);
    free(text);
    if (rc != 0) return -1;
    int count = 0;
    for (int i = 0; i < n_prompt; i++)
        count += !MS_PROMPT_IS_IMAGE(prompt[i]);
    free(prompt);
    return count;
}

int ms_replay_size_text(const ms_tokenizer *tok, uint64_t word_mask, int n_images, int text_tokens,
                        uint64_t seed, int *n_words, int *got, char *err, size_t err_size) {
    const int base = s_count_text(tok, word_mask, n_images, 0, seed, err, err_size);
    if (base < 0) return -1;
    int k = MS_MAX(1, text_tokens - base);
    int best_k = -1, best = 0;
    for (int round = 0; round < MS_REPLAY_SIZE_ROUNDS; round++) {
        const int c = s_count_text(tok, word_mask, n_images, k, seed, err, err_size);
        if (c < 0) return -1;
        /* the best: exact, else the smallest count at or above the target, else the largest */
        const bool better = best_k < 0 || (c >= text_tokens && (best < text_tokens || c < best)) ||
                            (c < text_tokens && best < text_tokens && c > best);
        if (better) {
            best_k = k;
            best = c;
        }
        if (c == text_tokens) break;
        const double per_word = c > base ? (double)(c - base) / k : 1.0;
        int next = k + (int)lround((text_tokens - c) / per_word);
        if (next == k) next += c < text_tokens ? 1 : -1;
        next = MS_MAX(1, next);
        if (next == k) break; /* one word already gives too many tokens */
        k = next;
    }
    *n_words = best_k;
    *got = best;
    return 0;
}

/* ---- unique image bytes ------------------------------------------------------------- */

static void s_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

uint8_t *ms_replay_unique_image(const uint8_t *img, size_t len, const char *tag, size_t *out_len,
                                char *err, size_t err_size) {
    const size_t tl = MS_MIN(strlen(tag), (size_t)MS_REPLAY_TAG_MAX);
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len >= 4 && img[0] == 0xFF && img[1] == 0xD8 && img[2] == 0xFF) {
        /* JPEG: SOI, then a COM segment (FF FE, 2-byte length including itself) */
        const size_t seg = 4 + tl;
        uint8_t *out = ms_xmalloc(len + seg);
        out[0] = 0xFF;
        out[1] = 0xD8;
        out[2] = 0xFF;
        out[3] = 0xFE;
        out[4] = (uint8_t)((tl + 2) >> 8);
        out[5] = (uint8_t)((tl + 2) & 0xFF);
        memcpy(out + 6, tag, tl);
        memcpy(out + 6 + tl, img + 2, len - 2);
        *out_len = len + seg;
        return out;
    }
    if (len >= 33 && memcmp(img, png_sig, 8) == 0 && memcmp(img + 12, "IHDR", 4) == 0 &&
        img[8] == 0 && img[9] == 0 && img[10] == 0 && img[11] == 13) {
        /* PNG: signature, IHDR (8 + 13 + 4 bytes), then our tEXt chunk */
        static const char key[] = "Comment"; /* keyword, NUL, text */
        const size_t data = sizeof key + tl; /* sizeof key counts the NUL */
        const size_t chunk = 12 + data;
        uint8_t *out = ms_xmalloc(len + chunk);
        memcpy(out, img, 33);
        uint8_t *c = out + 33;
        s_be32(c, (uint32_t)data);
        memcpy(c + 4, "tEXt", 4);
        memcpy(c + 8, key, sizeof key);
        memcpy(c + 8 + sizeof key, tag, tl);
        s_be32(c + 8 + data, (uint32_t)crc32(crc32(0L, Z_NULL, 0), c + 4, (uInt)(4 + data)));
        memcpy(out + 33 + chunk, img + 33, len - 33);
        *out_len = len + chunk;
        return out;
    }
    ms_errf(err, err_size,
            "only JPEG and PNG images can be made unique (the image starts with "
            "%02x %02x %02x %02x)",
            len > 0 ? img[0] : 0, len > 1 ? img[1] : 0, len > 2 ? img[2] : 0, len > 3 ? img[3] : 0);
    return NULL;
}

/* ---- planning ------------------------------------------------------------------------ */

int ms_replay_plan(const ms_replay_plan_opts *o, const ms_trace_row *rows, size_t n,
                   ms_report_req *reqs, char *err, size_t err_size) {
    memset(reqs, 0, n * sizeof *reqs);
    for (size_t i = 0; i < n; i++) {
        const ms_trace_row *row = &rows[i];
        ms_report_req *r = &reqs[i];
        ms_trace_shape sh;
        ms_trace_shape_row(row, &o->shape, &sh);
        r->row = o->row0 + (int64_t)i;
        r->line = row->line;
        r->trace_images = row->n_images;
        r->trace_context = row->context_tokens;
        r->trace_generated = row->generated_tokens;
        r->n_images = sh.n_images;
        r->max_tokens = sh.max_tokens;
        r->clamped = sh.clamped;
        r->t_sched =
            (double)ms_trace_offset_ns(rows[0].t_ns, row->t_ns, o->time_scale, o->rate) * 1e-9;
        const uint64_t seed = s_mix(o->seed ^ s_mix((uint64_t)r->row));
        if (o->tok) {
            int words = 0, got = 0;
            char why[MS_ERR_SIZE];
            if (ms_replay_size_text(o->tok, o->word_mask, sh.n_images, sh.text_tokens, seed, &words,
                                    &got, why, sizeof why) != 0)
                return ms_errf(err, err_size, "trace line %d: cannot size its text: %s", row->line,
                               why);
            r->n_words = words;
            r->text_tokens = got;
            if (got != sh.text_tokens) r->clamped |= MS_TRACE_CLAMP_CONTEXT;
        } else {
            r->n_words = sh.text_tokens;
            r->text_tokens = sh.text_tokens;
        }
        r->prompt_tokens = r->text_tokens + sh.image_tokens;
        if (r->prompt_tokens != r->trace_context) r->clamped |= MS_TRACE_CLAMP_CONTEXT;
        if ((size_t)r->n_words * 5 > MS_WIRE_MAX_PROMPT_BYTES)
            return ms_errf(err, err_size,
                           "trace line %d: %d text tokens do not fit in a %u-byte prompt "
                           "(clamp with --max-context)",
                           row->line, r->text_tokens, MS_WIRE_MAX_PROMPT_BYTES);
    }
    return 0;
}

/* ---- the registry sampler thread ------------------------------------------------------- */

typedef struct s_sampler {
    pthread_t thread;
    bool running;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled to stop */
    bool stop;
    const char *host;
    int port;
    const char *prefix;
    int64_t t0_ns;       /* replay start (ms_now_ns) */
    ms_report_sample *s; /* samples taken (under mu) */
    int n, cap;
    int last_total; /* actors in the latest valid sample, -1 before */
} s_sampler;

static void s_sample(s_sampler *sp, ms_registry *reg) {
    ms_report_sample x;
    memset(&x, 0, sizeof x);
    ms_actor_info *list = NULL;
    int n = 0;
    x.ok = reg && ms_registry_list(reg, &list, &n) == 0;
    for (int i = 0; x.ok && i < n; i++)
        if (list[i].stages > 0 && list[i].stages < MS_REPORT_STAGE_SETS) x.actors[list[i].stages]++;
    free(list);
    x.t = (double)(ms_now_ns() - sp->t0_ns) * 1e-9;
    pthread_mutex_lock(&sp->mu);
    if (sp->n == sp->cap) {
        sp->cap = sp->cap ? 2 * sp->cap : 256;
        sp->s = ms_xrealloc(sp->s, (size_t)sp->cap * sizeof *sp->s);
    }
    sp->s[sp->n++] = x;
    if (x.ok) {
        sp->last_total = 0;
        for (int k = 1; k < MS_REPORT_STAGE_SETS; k++)
            sp->last_total += x.actors[k];
    }
    pthread_mutex_unlock(&sp->mu);
}

static void *s_sampler_main(void *arg) {
    s_sampler *sp = arg;
    char err[MS_ERR_SIZE];
    ms_registry *reg = ms_registry_new(sp->host, sp->port, sp->prefix, err, sizeof err);
    if (!reg) ms_warn("bench: registry: %s (no instance counts)", err);
    for (int64_t k = 1;; k++) {
        s_sample(sp, reg);
        /* wait for the next period or a stop (CLOCK_MONOTONIC condvar) */
        const int64_t due = sp->t0_ns + k * (int64_t)MS_REPLAY_SAMPLE_MS * 1000000;
        struct timespec ts = {(time_t)(due / 1000000000), (long)(due % 1000000000)};
        pthread_mutex_lock(&sp->mu);
        while (!sp->stop && ms_now_ns() < due)
            if (pthread_cond_timedwait(&sp->cv, &sp->mu, &ts) == ETIMEDOUT) break;
        const bool stop = sp->stop;
        pthread_mutex_unlock(&sp->mu);
        if (stop) break;
    }
    s_sample(sp, reg); /* the state at the end */
    ms_registry_destroy(&reg);
    return NULL;
}

static void s_sampler_start(s_sampler *sp, const ms_replay_opts *o, int64_t t0) {
    memset(sp, 0, sizeof *sp);
    sp->last_total = -1;
    if (!o->redis_host || o->redis_port <= 0) return;
    sp->host = o->redis_host;
    sp->port = o->redis_port;
    sp->prefix = o->prefix;
    sp->t0_ns = t0;
    pthread_mutex_init(&sp->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* ms_now_ns's clock */
    pthread_cond_init(&sp->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&sp->thread, NULL, s_sampler_main, sp) == 0) {
        sp->running = true;
    } else {
        ms_warn("bench: cannot start the registry sampler thread (no instance counts)");
        pthread_cond_destroy(&sp->cv);
        pthread_mutex_destroy(&sp->mu);
    }
}

static int s_sampler_total(s_sampler *sp) {
    if (!sp->running) return -1;
    pthread_mutex_lock(&sp->mu);
    const int t = sp->last_total;
    pthread_mutex_unlock(&sp->mu);
    return t;
}

/* Stops the thread and hands its samples to the caller. */
static void s_sampler_stop(s_sampler *sp, ms_report_sample **out, int *n) {
    *out = NULL;
    *n = 0;
    if (!sp->running) return;
    pthread_mutex_lock(&sp->mu);
    sp->stop = true;
    pthread_cond_signal(&sp->cv);
    pthread_mutex_unlock(&sp->mu);
    pthread_join(sp->thread, NULL);
    pthread_cond_destroy(&sp->cv);
    pthread_mutex_destroy(&sp->mu);
    sp->running = false;
    *out = sp->s;
    *n = sp->n;
    sp->s = NULL;
}

/* ---- the replay loop -------------------------------------------------------------------- */

typedef struct s_run {
    const ms_replay_opts *o;
    ms_report_req *reqs;
    int n;
    ms_client *client;
    int64_t t0;         /* start, ms_now_ns */
    int next;           /* next request to submit */
    int in_flight;      /* submitted, not ended */
    int ended;          /* submitted and ended */
    int errors;         /* ended without Done */
    int64_t last_event; /* ms_now_ns of the last event (or of the start) */
    int protocol_errors;
    s_sampler sampler;
} s_run;

static double s_t(const s_run *run, int64_t now) {
    return (double)(now - run->t0) * 1e-9;
}

static void s_end(s_run *run, ms_report_req *r, int64_t now, bool ok, const char *code,
                  const char *message) {
    r->ended = true;
    r->ok = ok;
    r->t_end = s_t(run, now);
    if (!ok) {
        snprintf(r->code, sizeof r->code, "%s", code);
        snprintf(r->message, sizeof r->message, "%s", message);
        run->errors++;
    }
    if (r->submitted) {
        run->in_flight--;
        run->ended++;
    }
}

static void s_submit(s_run *run, int i) {
    const ms_replay_opts *o = run->o;
    ms_report_req *r = &run->reqs[i];
    char id[32], err[MS_ERR_SIZE];
    snprintf(id, sizeof id, "b%d", i);
    const uint64_t seed = s_mix(o->seed ^ s_mix((uint64_t)r->row));
    char *text = ms_replay_text(r->n_words, seed, o->word_mask, NULL);
    const void *img[MS_WIRE_MAX_IMAGES];
    size_t img_len[MS_WIRE_MAX_IMAGES];
    uint8_t *owned[MS_WIRE_MAX_IMAGES] = {0};
    const int n_img = MS_MIN(r->n_images, MS_WIRE_MAX_IMAGES);
    for (int k = 0; k < n_img && o->n_pool > 0; k++) {
        const int p = (int)((seed + (uint64_t)k) % (uint64_t)o->n_pool);
        img[k] = o->images[p];
        img_len[k] = o->image_len[p];
        if (o->unique_images) {
            char tag[MS_REPLAY_TAG_MAX + 1];
            snprintf(tag, sizeof tag, "modserve-bench %016" PRIx64 " row %" PRId64 " image %d",
                     o->nonce, r->row, k);
            owned[k] =
                ms_replay_unique_image(o->images[p], o->image_len[p], tag, &img_len[k], NULL, 0);
            if (owned[k])
                img[k] = owned[k];
            else
                img_len[k] = o->image_len[p]; /* WebP: sent as is (may hit the cache) */
        }
    }
    ms_msg m;
    ms_msg_init(&m, MS_MSG_SUBMIT);
    ms_msg_submit *s = &m.submit;
    s->id = id;
    s->prompt = text;
    s->has_prompt = true;
    s->raw = true;
    s->has_raw = true;
    s->max_tokens = (uint64_t)r->max_tokens;
    s->has_max_tokens = true;
    s->seed = seed;
    s->has_seed = true;
    s->ttft_ms = (uint64_t)llround(o->ttft_ms);
    s->has_ttft_ms = true;
    s->tbt_ms = (uint64_t)llround(o->tbt_ms);
    s->has_tbt_ms = true;
    s->ignore_eos = o->ignore_eos;
    s->has_ignore_eos = o->ignore_eos;
    const int64_t now = ms_now_ns();
    r->t_submit = s_t(run, now);
    const int rc = ms_client_submit(run->client, s, img, img_len, (size_t)n_img, err, sizeof err);
    free(text);
    for (int k = 0; k < n_img; k++)
        free(owned[k]);
    if (rc != 0) {
        s_end(run, r, now, false, "client", err);
        return;
    }
    r->submitted = true;
    run->in_flight++;
}

/* The request an event is about ("b<index>", submitted and not ended), or NULL. */
static ms_report_req *s_find(s_run *run, const char *id) {
    if (!id || id[0] != 'b' || id[1] < '0' || id[1] > '9') return NULL;
    char *end = NULL;
    const long i = strtol(id + 1, &end, 10);
    if (*end || i < 0 || i >= run->n) return NULL;
    ms_report_req *r = &run->reqs[i];
    return r->submitted && !r->ended ? r : NULL;
}

static void s_on_event(s_run *run, const ms_msg *ev, int64_t now) {
    const double t = s_t(run, now);
    ms_report_req *r;
    switch (ev->type) {
    case MS_MSG_TOKEN:
        if (!(r = s_find(run, ev->token.id))) return;
        if (r->n_tokens == 0)
            r->t_first = t;
        else
            ms_report_req_add_itl(r, (t - r->t_last) * 1000.0);
        r->t_last = t;
        r->n_tokens += (int)ev->token.n_ids;
        return;
    case MS_MSG_DONE: {
        if (!(r = s_find(run, ev->done.id))) return;
        const ms_msg_done *d = &ev->done;
        snprintf(r->finish, sizeof r->finish, "%s", d->finish);
        r->done_prompt_tokens = (int64_t)d->prompt_tokens;
        r->done_image_tokens = (int64_t)d->image_tokens;
        r->done_completion_tokens = (int64_t)d->completion_tokens;
        r->queue_ms = d->queue_ms;
        r->preprocess_ms = d->preprocess_ms;
        r->encode_ms = d->encode_ms;
        r->transfer_ms = d->transfer_ms;
        r->prefill_ms = d->prefill_ms;
        r->decode_ms = d->decode_ms;
        r->broker_ttft_ms = d->ttft_ms;
        r->broker_e2e_ms = d->e2e_ms;
        /* a request cancelled (by us, on a stop) or past its deadline did not complete */
        if (strcmp(d->finish, "cancel") == 0)
            s_end(run, r, now, false, "cancelled", "cancelled while generating");
        else if (strcmp(d->finish, "timeout") == 0)
            s_end(run, r, now, false, "timeout", "the deadline passed while generating");
        else
            s_end(run, r, now, true, "", "");
        return;
    }
    case MS_MSG_ERROR:
        if (!(r = s_find(run, ev->error.id))) return;
        s_end(run, r, now, false, ev->error.code, ev->error.message);
        return;
    default: /* accepted, stats */
        return;
    }
}

/* Takes every event waiting on the socket. */
static void s_drain(s_run *run) {
    ms_msg ev;
    ms_msg_init(&ev, MS_MSG_NONE);
    char err[MS_ERR_SIZE];
    for (;;) {
        const ms_wire_status st = ms_client_next(run->client, 0, &ev, err, sizeof err);
        if (st == MS_WIRE_TIMEOUT || st == MS_WIRE_TRANSPORT) break;
        const int64_t now = ms_now_ns();
        run->last_event = now;
        if (st == MS_WIRE_MALFORMED) {
            if (run->protocol_errors++ < 10) ms_warn("bench: from the broker: %s", err);
            continue;
        }
        s_on_event(run, &ev, now);
    }
    ms_msg_fini(&ev);
}

static void s_progress(s_run *run, int64_t now, bool final) {
    const ms_replay_opts *o = run->o;
    if (!o->progress) return;
    const double t = s_t(run, now);
    const double t_end = run->n ? run->reqs[run->n - 1].t_sched : 0;
    const int actors = s_sampler_total(&run->sampler);
    char act[32] = "";
    if (actors >= 0) snprintf(act, sizeof act, " | actors %d", actors);
    if (o->progress_tty) {
        enum { W = 30 };
        const int done = run->n ? (int)((int64_t)run->ended * W / run->n) : W;
        const int sent = run->n ? (int)((int64_t)run->next * W / run->n) : W;
        char bar[W + 1];
        for (int i = 0; i < W; i++)
            bar[i] = i < done ? '#' : i < sent ? '-' : '.';
        bar[W] = '\0';
        fprintf(o->progress,
                "\r[%s] %3d%% %d/%d sent, %d done, %d err | in flight %d%s | %.1f/%.1f s \033[K",
                bar, run->n ? (int)((int64_t)run->ended * 100 / run->n) : 100, run->next, run->n,
                run->ended - run->errors, run->errors, run->in_flight, act, t, t_end);
        if (final) fputc('\n', o->progress);
    } else {
        fprintf(o->progress, "bench: %.1f s: %d/%d sent, %d done, %d errors, %d in flight%s\n", t,
                run->next, run->n, run->ended - run->errors, run->errors, run->in_flight, act);
    }
    fflush(o->progress);
}

int ms_replay_run(const ms_replay_opts *o, ms_report_req *reqs, int n, ms_replay_result *res,
                  char *err, size_t err_size) {
    memset(res, 0, sizeof *res);
    if (o->concurrency_limit < 1 || o->concurrency_limit > MS_CLIENT_MAX_INFLIGHT)
        return ms_errf(err, err_size, "concurrency limit %d outside 1..%d", o->concurrency_limit,
                       MS_CLIENT_MAX_INFLIGHT);
    if (o->wait_ms <= 0) return ms_errf(err, err_size, "wait_ms must be > 0");
    for (int i = 0; i < n && o->n_pool <= 0; i++)
        if (reqs[i].n_images > 0)
            return ms_errf(err, err_size, "trace line %d has images but the image pool is empty",
                           reqs[i].line);
    s_run run;
    memset(&run, 0, sizeof run);
    run.o = o;
    run.reqs = reqs;
    run.n = n;
    run.client = ms_client_new(o->endpoint, err, err_size);
    if (!run.client) return -1;
    zpoller_t *poller = zpoller_new(ms_client_sock(run.client), NULL);
    run.t0 = ms_now_ns();
    run.last_event = run.t0;
    s_sampler_start(&run.sampler, o, run.t0);
    const int64_t period_ns =
        (int64_t)(o->progress_tty ? MS_REPLAY_PROGRESS_MS : MS_REPLAY_LINE_MS) * 1000000;
    const int64_t wait_ns = (int64_t)o->wait_ms * 1000000;
    int64_t next_progress = run.t0 + (o->progress_tty ? 0 : period_ns);
    int64_t cancel_deadline = 0;
    bool stopping = false;
    for (;;) {
        int64_t now = ms_now_ns();
        if (!stopping && o->stop && *o->stop) { /* ^C: cancel what is in flight */
            stopping = true;
            res->interrupted = true;
            cancel_deadline = now + (int64_t)MS_REPLAY_CANCEL_WAIT_MS * 1000000;
            for (int i = 0; i < run.next; i++)
                if (reqs[i].submitted && !reqs[i].ended) {
                    char id[32];
                    snprintf(id, sizeof id, "b%d", i);
                    (void)ms_client_cancel(run.client, id, NULL, 0);
                }
        }
        while (!stopping && run.next < n && run.in_flight < o->concurrency_limit &&
               run.t0 + llround(reqs[run.next].t_sched * 1e9) <= now) {
            s_submit(&run, run.next++);
            now = ms_now_ns();
        }
        if (run.in_flight == 0 && (run.next == n || stopping)) break;
        if (stopping && now > cancel_deadline) break;
        if (run.in_flight > 0 && now - run.last_event > wait_ns) {
            res->gave_up = true;
            break;
        }
        if (o->progress && now >= next_progress) {
            s_progress(&run, now, false);
            next_progress = now + period_ns;
        }
        /* sleep on the socket until the next arrival, progress tick or give-up time */
        int64_t wake = o->progress ? next_progress : now + period_ns;
        if (!stopping && run.next < n && run.in_flight < o->concurrency_limit)
            wake = MS_MIN(wake, run.t0 + llround(reqs[run.next].t_sched * 1e9));
        if (run.in_flight > 0) wake = MS_MIN(wake, run.last_event + wait_ns + 1000000);
        if (stopping) wake = MS_MIN(wake, cancel_deadline + 1000000);
        const int64_t dt = wake - now;
        const int timeout_ms = dt <= 0 ? 0 : (int)MS_MIN((dt + 999999) / 1000000, 1000000);
        if (zpoller_wait(poller, timeout_ms)) s_drain(&run);
    }
    const int64_t end = ms_now_ns();
    /* whatever did not end */
    for (int i = 0; i < n; i++) {
        ms_report_req *r = &reqs[i];
        if (r->ended) continue;
        if (!r->submitted) {
            snprintf(r->code, sizeof r->code, "client");
            snprintf(r->message, sizeof r->message, "not sent (%s)",
                     res->interrupted ? "interrupted" : "the replay gave up");
            continue;
        }
        char why[MS_REPORT_MSG_MAX];
        if (res->gave_up)
            snprintf(why, sizeof why, "no event from the broker for %d ms", o->wait_ms);
        else
            snprintf(why, sizeof why, "interrupted; no end within %d ms of the cancel",
                     MS_REPLAY_CANCEL_WAIT_MS);
        s_end(&run, r, end, false, "client", why);
    }
    s_progress(&run, end, true);
    s_sampler_stop(&run.sampler, &res->samples, &res->n_samples);
    res->protocol_errors = run.protocol_errors;
    res->wall_s = s_t(&run, end);
    zpoller_destroy(&poller);
    ms_client_destroy(&run.client);
    return 0;
}
