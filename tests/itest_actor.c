/* itest_actor.c — actors as real processes (build/bin/modserve-actor) with a
 * real redis-server, the tiny models, and the test playing the broker with a
 * ROUTER socket. Also the actor-internal pieces that need no process: the
 * feature/KV store and the re-dispatch replay of ms_gen.
 *
 * Reference for every token stream: ms_engine_generate in this process on
 * the same prompt, images and sampling parameters (seeded temperature
 * sampling, so the RNG state hand-off matters). */
#include "actor.h"
#include "ms_test.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define T_PREFIX     "msa" /* registry prefix of these tests */
#define T_WAIT_MS    20000 /* one awaited message, at most */
#define T_EXIT_MS    15000 /* a drained actor exits within this */
#define T_MAX_TOKENS 40    /* tokens per reference request */
#define T_MAX_STREAM 512   /* tokens one collected stream may hold */
#define T_TEXT_MAX   16384 /* text of one collected stream */

static char err[MS_ERR_SIZE];
static ms_test_redis g_redis;

static void redis_up(void) {
    cr_assert_gt(ms_test_redis_start(&g_redis), 0, "cannot start redis-server");
}
static void redis_down(void) {
    ms_test_redis_stop(&g_redis);
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static const char *model(const char *name) {
    return ms_test_path(ms_test_models_dir(), name);
}

static uint8_t *read_image(const char *name, size_t *len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/images/%s", ms_test_source_dir(), name);
    uint8_t *b = ms_read_file(path, 64u << 20, len, err, sizeof err);
    cr_assert_not_null(b, "%s", err);
    return b;
}

/* ---- the store ---------------------------------------------------------------------- */

static ms_blobbuf *blob_of(size_t n, uint8_t fill) {
    ms_blobbuf *b = ms_blobbuf_new(n);
    memset(ms_blobbuf_data(b), fill, n);
    return b;
}

Test(featstore, pins_lru_bound_expiry, .timeout = 10) {
    ms_featstore *s = ms_featstore_new(1000, 100);
    ms_blobbuf *b = blob_of(400, 1);
    cr_assert_eq(ms_featstore_put(s, "f:a", MS_BLOB_FEATURES, &b, 4, 25, 0, err, sizeof err), 0);
    cr_assert_null(b, "ownership taken");
    b = blob_of(400, 2);
    cr_assert_eq(ms_featstore_put(s, "f:b", MS_BLOB_FEATURES, &b, 4, 25, 1, err, sizeof err), 0);
    /* both pinned: a third does not fit, and nothing is evicted */
    b = blob_of(400, 3);
    cr_assert_eq(ms_featstore_put(s, "f:c", MS_BLOB_FEATURES, &b, 4, 25, 2, err, sizeof err), -1);
    cr_assert_not_null(b, "a refused put leaves the buffer with the caller");
    cr_assert(strstr(err, "store full"), "%s", err);
    cr_assert_eq(ms_featstore_count(s), 2);
    cr_assert_eq(ms_featstore_pinned(s), 2);
    /* a pulled feature stays (reusable), unpinned */
    ms_featstore_pulled(s, "f:a", 3);
    ms_blob_info bi;
    cr_assert(ms_featstore_get(s, "f:a", 4, &bi));
    cr_assert_eq(bi.pins, 0);
    cr_assert_eq(((uint8_t *)ms_blobbuf_data(bi.buf))[10], 1);
    /* a duplicate key is refused */
    ms_blobbuf *d = blob_of(10, 9);
    cr_assert_eq(ms_featstore_put(s, "f:a", MS_BLOB_FEATURES, &d, 1, 1, 5, err, sizeof err), -1);
    ms_blobbuf_unref(&d);
    /* now f:c fits by evicting the unpinned f:a; a reference taken before keeps its bytes */
    ms_blobbuf *held = ms_blobbuf_ref(bi.buf);
    cr_assert_eq(ms_featstore_put(s, "f:c", MS_BLOB_FEATURES, &b, 4, 25, 6, err, sizeof err), 0,
                 "%s", err);
    cr_assert_not(ms_featstore_get(s, "f:a", 7, NULL));
    cr_assert_eq(ms_featstore_evictions(s), 1);
    cr_assert_eq(((uint8_t *)ms_blobbuf_data(held))[399], 1);
    ms_blobbuf_unref(&held);
    cr_assert_eq(ms_featstore_bytes(s), 800);
    /* a cache hit pins once more: two pulls needed */
    cr_assert_eq(ms_featstore_pin(s, "f:b", 8), 0);
    cr_assert_eq(ms_featstore_pin(s, "nope", 8), -1);
    ms_featstore_pulled(s, "f:b", 9);
    cr_assert(ms_featstore_get(s, "f:b", 9, &bi));
    cr_assert_eq(bi.pins, 1);
    /* expiry: pins untouched for the TTL go; features stay for reuse */
    cr_assert_eq(ms_featstore_expire(s, 50), 0);
    cr_assert_eq(ms_featstore_expire(s, 200), 2);
    cr_assert_eq(ms_featstore_pinned(s), 0);
    cr_assert_eq(ms_featstore_count(s), 2);
    ms_featstore_destroy(&s);
    cr_assert_null(s);
}

Test(featstore, kv_blobs_go_when_pulled, .timeout = 10) {
    ms_featstore *s = ms_featstore_new(0, 0);
    ms_blobbuf *b = blob_of(64, 7);
    cr_assert_eq(ms_featstore_put(s, "kv:x", MS_BLOB_KV, &b, 3, 0, 0, err, sizeof err), 0);
    ms_featstore_pulled(s, "kv:x", 1);
    cr_assert_not(ms_featstore_get(s, "kv:x", 2, NULL), "a pulled KV blob is dropped");
    b = blob_of(64, 7);
    cr_assert_eq(ms_featstore_put(s, "kv:y", MS_BLOB_KV, &b, 3, 0, 0, err, sizeof err), 0);
    cr_assert_eq(ms_featstore_expire(s, MS_FEATSTORE_TTL_MS_DEFAULT + 1), 1);
    cr_assert_eq(ms_featstore_count(s), 0, "an expired KV blob is dropped");
    /* many keys: the table grows and every key stays reachable */
    char key[32];
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof key, "f:%d", i);
        b = blob_of(8, (uint8_t)i);
        cr_assert_eq(ms_featstore_put(s, key, MS_BLOB_FEATURES, &b, 1, 2, i, err, sizeof err), 0);
    }
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof key, "f:%d", i);
        ms_blob_info bi;
        cr_assert(ms_featstore_get(s, key, 600, &bi), "%s", key);
        cr_assert_eq(((uint8_t *)ms_blobbuf_data(bi.buf))[0], (uint8_t)i);
    }
    cr_assert_eq(ms_featstore_remove(s, "f:7"), 0);
    cr_assert_eq(ms_featstore_remove(s, "f:7"), -1);
    cr_assert_eq(ms_featstore_count(s), 499);
    ms_featstore_destroy(&s);
}

/* ---- references ----------------------------------------------------------------------- */

typedef struct t_ref {
    int32_t ids[T_MAX_STREAM];
    int n;
    char text[T_TEXT_MAX];           /* all text */
    int delta_off[T_MAX_STREAM + 1]; /* text of token i = text[delta_off[i] .. delta_off[i+1]) */
    ms_finish_reason finish;
} t_ref;

static bool ref_on_token(int32_t id, const char *text, int len, void *user) {
    t_ref *r = user;
    cr_assert_lt(r->n, T_MAX_STREAM);
    r->ids[r->n] = id;
    const int off = r->delta_off[r->n];
    cr_assert_lt(off + len, T_TEXT_MAX);
    memcpy(r->text + off, text, (size_t)len);
    r->n++;
    r->delta_off[r->n] = off + len;
    r->text[off + len] = '\0';
    return true;
}

static ms_engine *ref_engine(bool vision) {
    ms_engine_params p;
    ms_engine_params_default(&p);
    p.lm_path = model("tiny-lm.gguf");
    p.mmproj_path = vision ? model("tiny-mmproj.gguf") : NULL;
    p.n_threads = 1;
    ms_engine *e = ms_engine_new(&p, err, sizeof err);
    cr_assert_not_null(e, "%s", err);
    return e;
}

static int make_prompt(const ms_engine *e, const char *text, int n_images, int32_t *out, int cap) {
    int32_t ids[256];
    int n = ms_tokenizer_encode(ms_engine_tokenizer(e), text, strlen(text), true, false, ids, 256,
                                err, sizeof err);
    cr_assert(n > 2 && n + n_images <= cap, "encode: %d %s", n, err);
    int m = 0;
    out[m++] = ids[0];
    for (int k = 0; k < n_images; k++)
        out[m++] = MS_PROMPT_IMAGE(k);
    for (int i = 1; i < n; i++)
        out[m++] = ids[i];
    return m;
}

static void sampling(ms_sampling_params *sp, uint64_t seed, int max_tokens) {
    ms_sampling_params_default(sp);
    sp->max_tokens = max_tokens;
    sp->temperature = 3.0f; /* the tiny models' margins are large: only this makes the RNG matter */
    sp->top_p = 0.98f;
    sp->seed = seed;
}

static void reference(ms_engine *e, const int32_t *prompt, int n, const ms_image_bytes *imgs,
                      int n_images, const ms_sampling_params *sp, t_ref *r) {
    memset(r, 0, sizeof *r);
    ms_generate_result res;
    cr_assert_eq(ms_engine_generate(e, prompt, n, imgs, n_images, sp, ref_on_token, r, &res, err,
                                    sizeof err),
                 0, "generate: %s", err);
    cr_assert_eq(res.n_generated, r->n);
    r->finish = res.finish;
    ms_generate_result_fini(&res);
}

/* ---- ms_gen re-dispatch, in process ------------------------------------------------------ */

/* What textgen does for a task carrying generated[0..k-1]: prefill the prompt
 * and all but the last delivered token, replay them, restore the RNG, and
 * continue with decode steps. The continuation equals the reference from k. */
Test(gen, redispatch_continues_exactly, .timeout = 60) {
    ms_engine *e = ref_engine(false);
    int32_t prompt[300];
    const int n = make_prompt(e, "Tell me a story about the sea, please.", 0, prompt, 300);
    ms_sampling_params sp;
    sampling(&sp, 77, T_MAX_TOKENS);
    t_ref ref;
    reference(e, prompt, n, NULL, 0, &sp, &ref);
    cr_assert_eq(ref.n, T_MAX_TOKENS);
    const int V = ms_engine_n_vocab(e);
    float *logits = malloc((size_t)V * sizeof(float));
    const int ks[] = {0, 1, 2, 5, T_MAX_TOKENS - 1};
    for (size_t q = 0; q < MS_ARRAY_LEN(ks); q++) {
        const int k = ks[q];
        ms_gen g;
        cr_assert_eq(ms_gen_init(&g, e, &sp, err, sizeof err), 0, "%s", err);
        int32_t full[400];
        memcpy(full, prompt, (size_t)n * sizeof *full);
        const int m = n + (k > 0 ? k - 1 : 0);
        if (k > 1) memcpy(full + n, ref.ids, (size_t)(k - 1) * sizeof *full);
        g.seq = ms_engine_seq_new(e);
        cr_assert_eq(ms_engine_prefill(e, g.seq, full, m, NULL, 0, logits, err, sizeof err), 0,
                     "%s", err);
        ms_gen_token t;
        char text[T_TEXT_MAX] = "";
        size_t tl = 0;
        if (k == 0) {
            ms_gen_sample(&g, e, logits, &t);
            cr_assert_eq(t.index, 0);
            cr_assert_eq(t.id, ref.ids[0]);
            memcpy(text + tl, t.text, (size_t)t.len);
            tl += (size_t)t.len;
        } else {
            ms_gen_replay(&g, e, ref.ids, k);
            ms_sampler_set_state(&g.smp, ms_gen_rng_after(sp.seed, k));
        }
        ms_gen *gp = &g;
        while (!g.finished) {
            cr_assert_eq(ms_gen_decode_step(e, &gp, 1, logits, &t, err, sizeof err), 0, "%s", err);
            cr_assert_eq(t.id, ref.ids[t.index], "k %d: token %d is %d, reference %d", k, t.index,
                         t.id, ref.ids[t.index]);
            memcpy(text + tl, t.text, (size_t)t.len);
            tl += (size_t)t.len;
        }
        cr_assert_eq(g.n_generated, ref.n, "k %d", k);
        cr_assert_eq(g.finish, ref.finish);
        const int from = ref.delta_off[k];
        cr_assert_eq(tl, (size_t)(ref.delta_off[ref.n] - from), "k %d: text length", k);
        cr_assert(memcmp(text, ref.text + from, tl) == 0, "k %d: text differs", k);
        ms_gen_fini(&g, e);
    }
    cr_assert_eq(ms_engine_kv_free_blocks(e), ms_engine_kv_total_blocks(e));
    free(logits);
    ms_engine_destroy(&e);
}

Test(gen, rng_after_matches_sampler, .timeout = 10) {
    ms_sampling_params sp;
    sampling(&sp, 4242, 10);
    ms_sampler s;
    cr_assert_eq(ms_sampler_init(&s, &sp, 5), 0);
    const float logits[5] = {0.1f, 0.4f, 0.2f, 0.9f, 0.3f};
    for (int i = 0; i < 7; i++)
        (void)ms_sampler_sample(&s, logits);
    cr_assert_eq(ms_sampler_state(&s), ms_gen_rng_after(4242, 7));
    cr_assert_eq(ms_gen_rng_after(4242, 0), 4242);
    ms_sampler_fini(&s);
}

/* ---- processes: the fake broker and the actors ------------------------------------------------
 */

typedef struct t_broker {
    zsock_t *router;
    char ep[64];
} t_broker;

static void broker_open(t_broker *b) {
    b->router = zsock_new(ZMQ_ROUTER);
    cr_assert_not_null(b->router);
    zsock_set_linger(b->router, 0);
    zsock_set_router_mandatory(b->router, 1);
    cr_assert_geq(zsock_bind(b->router, "tcp://127.0.0.1:0"), 0, "bind: %s", zmq_strerror(errno));
    char *ep = zsock_last_endpoint(b->router);
    snprintf(b->ep, sizeof b->ep, "%s", ep);
    freen(ep);
}

static void broker_close(t_broker *b) {
    zsock_destroy(&b->router);
}

typedef struct t_actor {
    pid_t pid;
    char id[64];
    char data_ep[256];
} t_actor;

/* Receives one message within ms; false on timeout. */
static bool recv_msg(t_broker *b, ms_frames_in *in, int ms) {
    zmq_pollitem_t it = {zsock_resolve(b->router), 0, ZMQ_POLLIN, 0};
    const int64_t end = ms_actor_now_ms() + ms;
    for (;;) {
        const int64_t left = end - ms_actor_now_ms();
        if (left <= 0) return false;
        int n = zmq_poll(&it, 1, (long)left);
        if (n < 0 && errno == EINTR) continue;
        cr_assert_geq(n, 0);
        if (n == 0) continue;
        ms_wire_status st = ms_frames_recv(b->router, in, 0, err, sizeof err);
        cr_assert_eq(st, MS_WIRE_OK, "the actor sent a %s message: %s", ms_wire_status_name(st),
                     err);
        return true;
    }
}

static bool from(const ms_frames_in *in, const char *id) {
    return in->routing_id && zframe_size(in->routing_id) == strlen(id) &&
           memcmp(zframe_data(in->routing_id), id, strlen(id)) == 0;
}

/* Waits for a message of type t from actor id (others of type HELLO are skipped). */
static void expect(t_broker *b, const char *id, ms_msg_type t, ms_frames_in *in) {
    for (;;) {
        cr_assert(recv_msg(b, in, T_WAIT_MS), "no %s from %s within %d ms", ms_msg_type_name(t), id,
                  T_WAIT_MS);
        if (in->msg.type == t && from(in, id)) return;
        if (in->msg.type == MS_MSG_HELLO) continue;
        if (in->msg.type == MS_MSG_TASK_ERROR)
            cr_assert_fail("expected %s from %s, got TaskError %s: %s", ms_msg_type_name(t), id,
                           in->msg.task_error.code, in->msg.task_error.message);
        cr_assert_fail("expected %s from %s, got %s", ms_msg_type_name(t), id,
                       ms_msg_type_name(in->msg.type));
    }
}

static void send_to(t_broker *b, const char *id, const ms_msg *m, zframe_t **payload, size_t n) {
    zframe_t *rid = zframe_new(id, strlen(id));
    cr_assert_eq(ms_frames_send(b->router, rid, m, payload, n, err, sizeof err), 0, "send %s: %s",
                 ms_msg_type_name(m->type), err);
    zframe_destroy(&rid);
}

/* Starts modserve-actor and waits for its Hello. extra: more arguments, NULL-terminated. */
static void actor_start(t_actor *a, t_broker *b, const char *id, const char *stages,
                        const char *const *extra) {
    memset(a, 0, sizeof *a);
    snprintf(a->id, sizeof a->id, "%s", id);
    char bin[4096], redis[64], logp[4096];
    snprintf(bin, sizeof bin, "%s/modserve-actor", ms_test_bin_dir());
    snprintf(redis, sizeof redis, "127.0.0.1:%d", g_redis.port);
    /* actor logs: in the test's temp dir (removed with it), or in
     * $MS_TEST_LOG_DIR when set (to read them after a run) */
    const char *keep = getenv("MS_TEST_LOG_DIR");
    snprintf(logp, sizeof logp, "%s/%s.log", keep && *keep ? keep : g_redis.dir, id);
    const char *argv[64] = {bin,
                            "--id",
                            id,
                            "--stages",
                            stages,
                            "--model",
                            model("tiny-lm.gguf"),
                            "--mmproj",
                            model("tiny-mmproj.gguf"),
                            "--broker",
                            b->ep,
                            "--data",
                            "tcp://127.0.0.1:0",
                            "--redis",
                            redis,
                            "--prefix",
                            T_PREFIX,
                            "--threads",
                            "1"};
    int n = 0;
    while (argv[n])
        n++;
    for (int i = 0; extra && extra[i]; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    a->pid = pid;
    ms_frames_in in;
    ms_frames_in_init(&in);
    expect(b, id, MS_MSG_HELLO, &in);
    const ms_msg_hello *h = &in.msg.hello;
    cr_assert_str_eq(h->actor, id);
    cr_assert_str_eq(h->stages, stages);
    cr_assert_eq(h->pid, (uint64_t)pid);
    snprintf(a->data_ep, sizeof a->data_ep, "%s", h->data_ep);
    cr_assert(strncmp(a->data_ep, "tcp://127.0.0.1:", 16) == 0 && strcmp(a->data_ep + 16, "0"),
              "data_ep %s", a->data_ep);
    ms_frames_in_fini(&in);
}

/* Waits for the actor to exit; returns its exit status (or -1 if it did not). */
static int actor_wait(t_actor *a, int ms) {
    const int64_t end = ms_actor_now_ms() + ms;
    while (ms_actor_now_ms() < end) {
        int st = 0;
        pid_t r = waitpid(a->pid, &st, WNOHANG);
        if (r == a->pid) {
            a->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        sleep_ms(20);
    }
    return -1;
}

static void actor_kill(t_actor *a) {
    if (a->pid > 0) {
        kill(a->pid, SIGKILL);
        waitpid(a->pid, NULL, 0);
        a->pid = 0;
    }
}

static ms_registry *registry(void) {
    ms_registry *r = ms_registry_new("127.0.0.1", g_redis.port, T_PREFIX, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    return r;
}

/* Waits (up to a few heartbeats) until the actor's registry entry satisfies
 * ok(); returns the last entry read. */
static ms_actor_info registry_wait(ms_registry *r, const char *id,
                                   bool (*ok)(const ms_actor_info *, const void *),
                                   const void *arg) {
    ms_actor_info info;
    memset(&info, 0, sizeof info);
    const int64_t end = ms_actor_now_ms() + 8 * MS_REGISTRY_HEARTBEAT_MS;
    for (;;) {
        int rc = ms_registry_get(r, id, &info);
        cr_assert_neq(rc, -1, "registry: %s", ms_registry_errstr(r));
        if (rc == 0 && ok(&info, arg)) return info;
        cr_assert_lt(ms_actor_now_ms(), end,
                     "registry entry of %s never matched (found %d, "
                     "images_encoded %" PRId64 ", hits %" PRId64 ", prefilled %" PRId64
                     ", decoded %" PRId64 ", done %" PRId64 ")",
                     id, rc == 0, info.images_encoded, info.images_cache_hits,
                     info.requests_prefilled, info.tokens_decoded, info.tasks_done);
        sleep_ms(50);
    }
}

/* ---- task builders -----------------------------------------------------------------------------
 */

static void wire_sampling(const ms_sampling_params *sp, ms_wire_sampling *w) {
    ms_wire_sampling_from_params(sp, w);
}

/* A PrefillTask (caller finalises with ms_msg_fini: arrays are malloc'd copies). */
static void prefill_task(ms_msg *m, uint64_t rid, const int32_t *prompt, int n,
                         const ms_wire_image_ref *imgs, int n_images, const ms_sampling_params *sp,
                         const int32_t *generated, int k, const char *mode) {
    ms_msg_init(m, MS_MSG_PREFILL_TASK);
    ms_msg_prefill_task *p = &m->prefill_task;
    p->rid = rid;
    p->task = rid * 10 + 1;
    p->prompt = malloc((size_t)n * sizeof *p->prompt);
    memcpy(p->prompt, prompt, (size_t)n * sizeof *p->prompt);
    p->n_prompt = (uint32_t)n;
    if (n_images > 0) {
        p->images = calloc((size_t)n_images, sizeof *p->images);
        for (int i = 0; i < n_images; i++) {
            p->images[i] = imgs[i];
            p->images[i].data_ep = strdup(imgs[i].data_ep);
        }
        p->n_images = (uint32_t)n_images;
    }
    wire_sampling(sp, &p->sampling);
    p->sampler_state = sp->seed;
    if (k > 0) {
        p->generated = malloc((size_t)k * sizeof *p->generated);
        memcpy(p->generated, generated, (size_t)k * sizeof *p->generated);
        p->n_generated = (uint32_t)k;
    }
    p->mode = strdup(mode);
}

/* One request's stream as the broker sees it. */
typedef struct t_stream {
    uint64_t rid;
    int32_t ids[T_MAX_STREAM];
    int n;     /* tokens received (index of the next one expected) */
    int first; /* index of the first token expected */
    char text[T_TEXT_MAX];
    size_t text_len;
    bool ended; /* TaskDone, PrefillDone or TaskError */
    ms_msg end; /* that message (owned copy) */
} t_stream;

static void stream_init(t_stream *s, uint64_t rid, int first) {
    memset(s, 0, sizeof *s);
    s->rid = rid;
    s->first = first;
    s->n = first;
}

/* Collects TokenOut / TaskDone / PrefillDone / TaskError for the streams
 * until each has ended. Token indices must arrive in order, exactly once.
 * Returns how many times the sender of TokenOuts switched between rids
 * (interleaving of the batch). */
static int collect(t_broker *b, t_stream *s, int n) {
    int open = n, switches = 0;
    uint64_t last_rid = UINT64_MAX;
    ms_frames_in in;
    ms_frames_in_init(&in);
    while (open > 0) {
        cr_assert(recv_msg(b, &in, T_WAIT_MS), "%d streams still open after %d ms", open,
                  T_WAIT_MS);
        const ms_msg *m = &in.msg;
        uint64_t rid = 0;
        switch (m->type) {
        case MS_MSG_TOKEN_OUT:
            rid = m->token_out.rid;
            break;
        case MS_MSG_TASK_DONE:
            rid = m->task_done.rid;
            break;
        case MS_MSG_PREFILL_DONE:
            rid = m->prefill_done.rid;
            break;
        case MS_MSG_TASK_ERROR:
            rid = m->task_error.rid;
            break;
        case MS_MSG_HELLO:
            continue;
        default:
            cr_assert_fail("unexpected %s", ms_msg_type_name(m->type));
        }
        t_stream *st = NULL;
        for (int i = 0; i < n; i++)
            if (s[i].rid == rid) st = &s[i];
        cr_assert_not_null(st, "message for unknown rid %" PRIu64, rid);
        cr_assert_not(st->ended, "rid %" PRIu64 ": %s after the end", rid,
                      ms_msg_type_name(m->type));
        if (m->type == MS_MSG_TOKEN_OUT) {
            cr_assert_eq(m->token_out.index, (uint64_t)st->n,
                         "rid %" PRIu64 ": index %" PRIu64 ", expected %d", rid, m->token_out.index,
                         st->n);
            cr_assert_eq(m->token_out.n_ids, 1);
            cr_assert_lt(st->n, T_MAX_STREAM);
            st->ids[st->n++] = m->token_out.ids[0];
            const size_t tl = strlen(m->token_out.text);
            cr_assert_lt(st->text_len + tl, T_TEXT_MAX);
            memcpy(st->text + st->text_len, m->token_out.text, tl + 1);
            st->text_len += tl;
            if (last_rid != UINT64_MAX && last_rid != rid) switches++;
            last_rid = rid;
            continue;
        }
        cr_assert_eq(ms_msg_copy(&st->end, m, err, sizeof err), 0, "%s", err);
        st->ended = true;
        open--;
    }
    ms_frames_in_fini(&in);
    return switches;
}

/* The stream from index s->first equals the reference from there, text included. */
static void assert_matches(const t_stream *s, const t_ref *r) {
    cr_assert_eq(s->n, r->n, "rid %" PRIu64 ": %d tokens, reference %d", s->rid, s->n, r->n);
    for (int i = s->first; i < s->n; i++)
        cr_assert_eq(s->ids[i], r->ids[i], "rid %" PRIu64 ": token %d is %d, reference %d", s->rid,
                     i, s->ids[i], r->ids[i]);
    const int from = r->delta_off[s->first];
    cr_assert_eq(s->text_len, (size_t)(r->delta_off[r->n] - from), "rid %" PRIu64 ": text length",
                 s->rid);
    cr_assert(memcmp(s->text, r->text + from, s->text_len) == 0, "rid %" PRIu64 ": text differs",
              s->rid);
}

static void assert_done(const t_stream *s, const t_ref *r, int prompt_tokens, int image_tokens) {
    cr_assert_eq(s->end.type, MS_MSG_TASK_DONE, "rid %" PRIu64 " ended with %s%s%s", s->rid,
                 ms_msg_type_name(s->end.type), s->end.type == MS_MSG_TASK_ERROR ? ": " : "",
                 s->end.type == MS_MSG_TASK_ERROR ? s->end.task_error.message : "");
    const ms_msg_task_done *d = &s->end.task_done;
    const char *want = r->finish == MS_FINISH_EOG    ? "eog"
                       : r->finish == MS_FINISH_STOP ? "stop"
                                                     : "length";
    cr_assert_str_eq(d->finish, want);
    cr_assert_eq(d->completion_tokens, (uint64_t)r->n);
    cr_assert_eq(d->prompt_tokens, (uint64_t)prompt_tokens);
    cr_assert_eq(d->image_tokens, (uint64_t)image_tokens);
}

/* ---- encoder ------------------------------------------------------------------------------------
 */

static bool enc_counts(const ms_actor_info *i, const void *arg) {
    const int64_t *want = arg; /* images_encoded, images_cache_hits, tasks_done */
    return i->images_encoded == want[0] && i->images_cache_hits == want[1] &&
           i->tasks_done == want[2];
}

static void encode_task(ms_msg *m, ms_wire_image_ref *refs, uint64_t rid, const uint8_t *const *img,
                        const size_t *len, int n, zframe_t **frames) {
    ms_msg_init(m, MS_MSG_ENCODE_TASK);
    m->encode_task.rid = rid;
    m->encode_task.task = rid * 10;
    memset(refs, 0, sizeof *refs * (size_t)n);
    for (int i = 0; i < n; i++) {
        refs[i].index = (uint64_t)i;
        refs[i].hash = ms_hash64(img[i], len[i]);
        frames[i] = zframe_new(img[i], len[i]);
    }
    m->encode_task.images = refs;
    m->encode_task.n_images = (uint32_t)n;
}

/* Pulls features over the data plane as a prefill actor would. */
static ms_wire_status feature_get(const char *ep, uint64_t hash, ms_frames_in *in) {
    zsock_t *d = zsock_new(ZMQ_DEALER);
    zsock_set_linger(d, 0);
    zsock_set_rcvtimeo(d, T_WAIT_MS);
    cr_assert_eq(zsock_connect(d, "%s", ep), 0);
    ms_msg m;
    ms_msg_init(&m, MS_MSG_FEATURE_GET);
    m.feature_get.hash = hash;
    cr_assert_eq(ms_frames_send(d, NULL, &m, NULL, 0, err, sizeof err), 0, "%s", err);
    ms_wire_status st = ms_frames_recv(d, in, 0, err, sizeof err);
    zsock_destroy(&d);
    return st;
}

Test(actor, encoder_features_cache_and_drain, .init = redis_up, .fini = redis_down,
     .timeout = 120) {
    t_broker b;
    broker_open(&b);
    t_actor enc;
    actor_start(&enc, &b, "enc-1", "encode", NULL);

    size_t len[2];
    uint8_t *img[2] = {read_image("sample.jpg", &len[0]), read_image("j_333x517.jpg", &len[1])};
    ms_msg m;
    ms_wire_image_ref refs[2];
    zframe_t *fr[2];
    encode_task(&m, refs, 1, (const uint8_t *const *)img, len, 2, fr);
    send_to(&b, enc.id, &m, fr, 2);

    ms_frames_in in;
    ms_frames_in_init(&in);
    expect(&b, enc.id, MS_MSG_ENCODED, &in);
    ms_engine *e = ref_engine(true);
    const int T = ms_engine_n_image_tokens(e), Fv = ms_engine_feature_dim(e);
    const ms_msg_encoded *ed = &in.msg.encoded;
    cr_assert_eq(ed->rid, 1);
    cr_assert_eq(ed->task, 10);
    cr_assert_eq(ed->n_images, 2);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(ed->images[i].index, (uint64_t)i);
        cr_assert_eq(ed->images[i].hash, refs[i].hash);
        cr_assert(ed->images[i].has_n_tokens);
        cr_assert_eq(ed->images[i].n_tokens, (uint64_t)T);
    }
    cr_assert_geq(ed->encode_ms, 0.0);

    /* the features on the data plane are, bit for bit, the engine's */
    float *px = malloc(ms_engine_image_floats(e) * sizeof(float));
    float *feat = malloc((size_t)T * (size_t)Fv * sizeof(float));
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(ms_engine_preprocess(e, img[i], len[i], px, err, sizeof err), 0, "%s", err);
        cr_assert_eq(ms_engine_encode(e, px, 1, feat, err, sizeof err), 0, "%s", err);
        cr_assert_eq(feature_get(enc.data_ep, refs[i].hash, &in), MS_WIRE_OK, "%s", err);
        cr_assert_eq(in.msg.type, MS_MSG_FEATURE_DATA, "got %s", ms_msg_type_name(in.msg.type));
        cr_assert_eq(in.msg.feature_data.hash, refs[i].hash);
        cr_assert_eq(in.msg.feature_data.n_tokens, (uint64_t)T);
        cr_assert_eq(in.msg.feature_data.dim, (uint64_t)Fv);
        cr_assert_eq(ms_frames_in_size(&in, 0), (size_t)T * Fv * sizeof(float));
        cr_assert(memcmp(ms_frames_in_data(&in, 0), feat, (size_t)T * Fv * sizeof(float)) == 0,
                  "image %d: features differ from ms_engine_encode", i);
    }
    /* unknown features: DataError not_found, and the encoder keeps serving */
    cr_assert_eq(feature_get(enc.data_ep, 12345, &in), MS_WIRE_OK, "%s", err);
    cr_assert_eq(in.msg.type, MS_MSG_DATA_ERROR);
    cr_assert_str_eq(in.msg.data_error.code, "not_found");

    /* the same bytes again: served from the store, the ViT does not run */
    encode_task(&m, refs, 2, (const uint8_t *const *)img, len, 1, fr);
    send_to(&b, enc.id, &m, fr, 1);
    expect(&b, enc.id, MS_MSG_ENCODED, &in);
    cr_assert_eq(in.msg.encoded.rid, 2);
    cr_assert_eq(feature_get(enc.data_ep, refs[0].hash, &in), MS_WIRE_OK, "%s", err);
    cr_assert_eq(in.msg.type, MS_MSG_FEATURE_DATA);

    /* a hash that is not the bytes' is a bad request */
    encode_task(&m, refs, 3, (const uint8_t *const *)img, len, 1, fr);
    refs[0].hash ^= 1;
    send_to(&b, enc.id, &m, fr, 1);
    expect(&b, enc.id, MS_MSG_TASK_ERROR, &in);
    cr_assert_eq(in.msg.task_error.rid, 3);
    cr_assert_str_eq(in.msg.task_error.code, "bad_request");
    /* bytes that are no image: bad request naming the image */
    const uint8_t junk[] = "definitely not an image";
    const uint8_t *jp = junk;
    size_t jl = sizeof junk;
    encode_task(&m, refs, 4, &jp, &jl, 1, fr);
    send_to(&b, enc.id, &m, fr, 1);
    expect(&b, enc.id, MS_MSG_TASK_ERROR, &in);
    cr_assert_eq(in.msg.task_error.rid, 4);
    cr_assert_str_eq(in.msg.task_error.code, "bad_request");
    cr_assert(strstr(in.msg.task_error.message, "image 0"), "%s", in.msg.task_error.message);
    /* a PrefillTask to an encoder is refused */
    int32_t p1[2] = {1, 2};
    ms_sampling_params sp;
    sampling(&sp, 1, 4);
    prefill_task(&m, 5, p1, 2, NULL, 0, &sp, NULL, 0, "decode");
    send_to(&b, enc.id, &m, NULL, 0);
    ms_msg_fini(&m);
    expect(&b, enc.id, MS_MSG_TASK_ERROR, &in);
    cr_assert_eq(in.msg.task_error.rid, 5);

    /* the registry shows the counters: 2 images encoded, 1 cache hit, 2 tasks done */
    ms_registry *r = registry();
    const int64_t want[3] = {2, 1, 2};
    ms_actor_info info = registry_wait(r, enc.id, enc_counts, want);
    cr_assert_eq(info.stages, MS_STAGES_ENCODE);
    cr_assert_eq(info.pid, (int64_t)enc.pid);
    cr_assert_str_eq(info.data_ep, enc.data_ep);
    cr_assert_eq(info.state, MS_ACTOR_UP);

    /* SIGTERM: Bye, deregistered, exit 0 */
    kill(enc.pid, SIGTERM);
    expect(&b, enc.id, MS_MSG_BYE, &in);
    cr_assert_eq(actor_wait(&enc, T_EXIT_MS), 0, "the encoder did not exit cleanly");
    cr_assert_eq(ms_registry_get(r, "enc-1", &info), 1, "still registered after the drain");

    ms_frames_in_fini(&in);
    ms_registry_destroy(&r);
    free(px);
    free(feat);
    free(img[0]);
    free(img[1]);
    ms_engine_destroy(&e);
    broker_close(&b);
}

/* Bound to the wildcard address as in a container, the actor publishes the
 * host given by --advertise (with the port it bound), and peers pull from it. */
static bool enc_one(const ms_actor_info *i, const void *arg) {
    (void)arg;
    return i->images_encoded == 1;
}

Test(actor, advertise_publishes_a_reachable_endpoint, .init = redis_up, .fini = redis_down,
     .timeout = 60) {
    t_broker b;
    broker_open(&b);
    t_actor enc;
    /* actor_start checks the Hello: data_ep is tcp://127.0.0.1:PORT with a real port */
    actor_start(&enc, &b, "enc-adv", "encode",
                (const char *[]){"--data", "tcp://0.0.0.0:0", "--advertise", "127.0.0.1", NULL});
    size_t len;
    uint8_t *img = read_image("sample.jpg", &len);
    ms_msg m;
    ms_wire_image_ref ref;
    zframe_t *fr;
    encode_task(&m, &ref, 1, (const uint8_t *const *)&img, &len, 1, &fr);
    send_to(&b, enc.id, &m, &fr, 1);
    ms_frames_in in;
    ms_frames_in_init(&in);
    expect(&b, enc.id, MS_MSG_ENCODED, &in);
    cr_assert_eq(feature_get(enc.data_ep, ref.hash, &in), MS_WIRE_OK, "%s", err);
    cr_assert_eq(in.msg.type, MS_MSG_FEATURE_DATA, "got %s", ms_msg_type_name(in.msg.type));
    ms_registry *r = registry();
    ms_actor_info info = registry_wait(r, enc.id, enc_one, NULL);
    cr_assert_str_eq(info.data_ep, enc.data_ep);
    kill(enc.pid, SIGTERM);
    cr_assert_eq(actor_wait(&enc, T_EXIT_MS), 0, "the encoder did not exit cleanly");
    ms_frames_in_fini(&in);
    ms_registry_destroy(&r);
    free(img);
    broker_close(&b);
}

/* ---- text instance ------------------------------------------------------------------------------
 */

static bool text_counts(const ms_actor_info *i, const void *arg) {
    const int64_t *want = arg; /* requests_prefilled, tokens_decoded, tasks_done */
    return i->requests_prefilled == want[0] && i->tokens_decoded == want[1] &&
           i->tasks_done == want[2] && i->running_seqs == 0;
}

static bool idle_after(const ms_actor_info *i, const void *arg) {
    return i->requests_prefilled == *(const int64_t *)arg && i->running_seqs == 0 &&
           i->queued_prompt_tokens == 0;
}

Test(actor, text_instance_stream_equals_generate, .init = redis_up, .fini = redis_down,
     .timeout = 120) {
    t_broker b;
    broker_open(&b);
    t_actor tx;
    actor_start(&tx, &b, "text-1", "prefill+decode", NULL);
    ms_engine *e = ref_engine(false);

    /* four requests at once: one continuous batch, each stream equal to generate */
    enum { N = 4 };
    const char *texts[N] = {"Tell me a story about the sea, please.", "What is two plus two?",
                            "Write a poem about autumn leaves.", "Hello!"};
    int32_t prompt[N][300];
    int np[N];
    t_ref ref[N];
    t_stream st[N];
    ms_msg m;
    ms_sampling_params spi[N];
    for (int i = 0; i < N; i++) {
        sampling(&spi[i], 1000 + (uint64_t)i, T_MAX_TOKENS + 10 * i);
        np[i] = make_prompt(e, texts[i], 0, prompt[i], 300);
        reference(e, prompt[i], np[i], NULL, 0, &spi[i], &ref[i]);
        stream_init(&st[i], 100 + (uint64_t)i, 0);
    }
    for (int i = 0; i < N; i++) { /* in one burst */
        prefill_task(&m, 100 + (uint64_t)i, prompt[i], np[i], NULL, 0, &spi[i], NULL, 0, "decode");
        send_to(&b, tx.id, &m, NULL, 0);
        ms_msg_fini(&m);
    }
    int switches = collect(&b, st, N);
    int64_t tokens = 0;
    for (int i = 0; i < N; i++) {
        assert_matches(&st[i], &ref[i]);
        assert_done(&st[i], &ref[i], np[i], 0);
        tokens += ref[i].n;
    }
    cr_assert_geq(switches, 3, "the sequences did not decode as one batch (%d switches)", switches);

    /* a re-dispatch: the first k tokens were delivered elsewhere; the stream
     * continues at index k with exactly the reference's tokens and text */
    const int ks[2] = {1, 7};
    for (int q = 0; q < 2; q++) {
        ms_sampling_params sp;
        sampling(&sp, 1000, T_MAX_TOKENS);
        prefill_task(&m, 200 + (uint64_t)q, prompt[0], np[0], NULL, 0, &sp, ref[0].ids, ks[q],
                     "decode");
        send_to(&b, tx.id, &m, NULL, 0);
        ms_msg_fini(&m);
        t_stream s1;
        stream_init(&s1, 200 + (uint64_t)q, ks[q]);
        collect(&b, &s1, 1);
        assert_matches(&s1, &ref[0]);
        assert_done(&s1, &ref[0], np[0], 0);
        tokens += ref[0].n - ks[q];
        ms_msg_fini(&s1.end);
    }

    /* bad requests get TaskError and the actor keeps serving */
    int32_t bad[3] = {1, 100000, 2};
    ms_sampling_params sp;
    sampling(&sp, 5, 8);
    prefill_task(&m, 300, bad, 3, NULL, 0, &sp, NULL, 0, "decode");
    send_to(&b, tx.id, &m, NULL, 0);
    ms_msg_fini(&m);
    int32_t img_prompt[3] = {1, MS_PROMPT_IMAGE(0), 2};
    prefill_task(&m, 301, img_prompt, 3, NULL, 0, &sp, NULL, 0, "decode");
    send_to(&b, tx.id, &m, NULL, 0);
    ms_msg_fini(&m);
    const int32_t bad_gen[1] = {100000};
    prefill_task(&m, 302, prompt[1], np[1], NULL, 0, &sp, bad_gen, 1, "decode");
    send_to(&b, tx.id, &m, NULL, 0);
    ms_msg_fini(&m);
    ms_frames_in in;
    ms_frames_in_init(&in);
    for (uint64_t rid = 300; rid <= 302; rid++) {
        expect(&b, tx.id, MS_MSG_TASK_ERROR, &in);
        cr_assert_eq(in.msg.task_error.rid, rid);
        cr_assert_str_eq(in.msg.task_error.code, "bad_request", "%s", in.msg.task_error.message);
    }

    /* the registry counts what was done */
    ms_registry *r = registry();
    const int64_t want[3] = {N + 2, tokens, N + 2};
    ms_actor_info info = registry_wait(r, tx.id, text_counts, want);
    cr_assert_eq(info.stages, MS_STAGES_PREFILL | MS_STAGES_DECODE);
    cr_assert_gt(info.free_kv_blocks, 0);
    cr_assert_eq(info.queued_prompt_tokens, 0);

    /* cancel: among eight long sequences decoding together, the cancelled
     * one stops at once (no TaskDone), the others complete */
    ms_sampling_params lsp;
    sampling(&lsp, 9, 400);
    for (uint64_t rid = 400; rid < 408; rid++) {
        prefill_task(&m, rid, prompt[rid % N], np[rid % N], NULL, 0, &lsp, NULL, 0, "decode");
        send_to(&b, tx.id, &m, NULL, 0);
        ms_msg_fini(&m);
    }
    ms_msg c;
    ms_msg_init(&c, MS_MSG_CANCEL_TASK);
    c.cancel_task.rid = 400;
    bool cancelled = false;
    int seen = 0, n_done = 0;
    while (n_done < 7) {
        cr_assert(recv_msg(&b, &in, T_WAIT_MS), "the other sequences did not finish");
        if (in.msg.type == MS_MSG_TOKEN_OUT && in.msg.token_out.rid == 400) {
            seen++;
            if (!cancelled) send_to(&b, tx.id, &c, NULL, 0);
            cancelled = true;
            continue;
        }
        if (in.msg.type == MS_MSG_TOKEN_OUT) continue;
        cr_assert_eq(in.msg.type, MS_MSG_TASK_DONE, "got %s", ms_msg_type_name(in.msg.type));
        cr_assert_neq(in.msg.task_done.rid, 400,
                      "the cancelled sequence reported TaskDone "
                      "(%d tokens seen)",
                      seen);
        n_done++;
    }
    cr_assert_lt(seen, 400, "all 400 tokens came: the cancel was not honoured");
    const int64_t prefilled = N + 2 + 8;
    info = registry_wait(r, tx.id, idle_after, &prefilled);
    /* SIGTERM with a long sequence running: it is finished, then the actor leaves */
    prefill_task(&m, 500, prompt[2], np[2], NULL, 0, &lsp, NULL, 0, "decode");
    send_to(&b, tx.id, &m, NULL, 0);
    ms_msg_fini(&m);
    expect(&b, tx.id, MS_MSG_TOKEN_OUT, &in);
    kill(tx.pid, SIGTERM);
    bool bye = false, done = false;
    while (!done) {
        cr_assert(recv_msg(&b, &in, T_WAIT_MS));
        if (in.msg.type == MS_MSG_BYE) bye = true;
        if (in.msg.type == MS_MSG_TASK_DONE) {
            cr_assert_eq(in.msg.task_done.rid, 500);
            done = true;
        }
        cr_assert_neq(in.msg.type, MS_MSG_TASK_ERROR, "%s",
                      in.msg.type == MS_MSG_TASK_ERROR ? in.msg.task_error.message : "");
    }
    cr_assert(bye, "no Bye before the drain ended");
    cr_assert_eq(actor_wait(&tx, T_EXIT_MS), 0, "the text actor did not exit cleanly");
    cr_assert_eq(ms_registry_get(r, tx.id, &info), 1, "still registered after the drain");

    for (int i = 0; i < N; i++)
        ms_msg_fini(&st[i].end);
    ms_frames_in_fini(&in);
    ms_registry_destroy(&r);
    ms_engine_destroy(&e);
    broker_close(&b);
}

/* ---- encoder → prefill → decode
 * ------------------------------------------------------------------ */

Test(actor, disaggregated_image_request_equals_generate, .init = redis_up, .fini = redis_down,
     .timeout = 120) {
    t_broker b;
    broker_open(&b);
    t_actor enc, pre, dec;
    actor_start(&enc, &b, "enc-1", "encode", NULL);
    actor_start(&pre, &b, "pre-1", "prefill",
                (const char *const[]){"--pull-timeout-ms", "1000", NULL});
    actor_start(&dec, &b, "dec-1", "decode", NULL);
    ms_engine *e = ref_engine(true);
    const int T = ms_engine_n_image_tokens(e);

    size_t len[2];
    uint8_t *img[2] = {read_image("sample.jpg", &len[0]), read_image("p_333x517.png", &len[1])};
    int32_t prompt[300];
    const int n =
        make_prompt(e, "Describe both pictures, please: what is in them?", 2, prompt, 300);
    ms_sampling_params sp;
    sampling(&sp, 1234, T_MAX_TOKENS);
    ms_image_bytes ib[2] = {{img[0], len[0]}, {img[1], len[1]}};
    t_ref ref;
    reference(e, prompt, n, ib, 2, &sp, &ref);

    /* encode */
    ms_msg m;
    ms_wire_image_ref refs[2];
    zframe_t *fr[2];
    encode_task(&m, refs, 7, (const uint8_t *const *)img, len, 2, fr);
    send_to(&b, enc.id, &m, fr, 2);
    ms_frames_in in;
    ms_frames_in_init(&in);
    expect(&b, enc.id, MS_MSG_ENCODED, &in);

    /* prefill in hand-off mode: first token, then PrefillDone */
    for (int i = 0; i < 2; i++) {
        refs[i].data_ep = enc.data_ep;
        refs[i].has_data_ep = true;
    }
    prefill_task(&m, 7, prompt, n, refs, 2, &sp, NULL, 0, "handoff");
    send_to(&b, pre.id, &m, NULL, 0);
    ms_msg_fini(&m);
    t_stream s;
    stream_init(&s, 7, 0);
    collect(&b, &s, 1);
    cr_assert_eq(s.end.type, MS_MSG_PREFILL_DONE, "prefill ended with %s: %s",
                 ms_msg_type_name(s.end.type),
                 s.end.type == MS_MSG_TASK_ERROR ? s.end.task_error.message : "");
    cr_assert_eq(s.n, 1);
    const ms_msg_prefill_done *pd = &s.end.prefill_done;
    cr_assert_str_eq(pd->data_ep, pre.data_ep);
    cr_assert_eq(pd->n_generated, 1);
    cr_assert_eq(pd->generated[0], ref.ids[0]);
    cr_assert_eq(pd->prompt_tokens, (uint64_t)(n - 2 + 2 * T));
    cr_assert_eq(pd->image_tokens, (uint64_t)(2 * T));
    cr_assert_eq(pd->sampler_state, ms_gen_rng_after(sp.seed, 1));

    /* decode: pull the KV from the prefill actor, continue the stream */
    ms_msg d;
    ms_msg_init(&d, MS_MSG_DECODE_TASK);
    d.decode_task.rid = 7;
    d.decode_task.task = 72;
    d.decode_task.kv_key = pd->kv_key;
    d.decode_task.data_ep = pd->data_ep;
    ms_wire_sampling_from_params(&sp, &d.decode_task.sampling);
    d.decode_task.sampler_state = pd->sampler_state;
    d.decode_task.generated = pd->generated;
    d.decode_task.n_generated = pd->n_generated;
    d.decode_task.prompt_tokens = pd->prompt_tokens;
    d.decode_task.image_tokens = pd->image_tokens;
    send_to(&b, dec.id, &d, NULL, 0);
    for (uint32_t i = 0; i < d.decode_task.sampling.n_stop; i++)
        free(d.decode_task.sampling.stop[i]);
    free(d.decode_task.sampling.stop);
    s.ended = false;
    ms_msg_fini(&s.end);
    collect(&b, &s, 1);
    assert_matches(&s, &ref);
    assert_done(&s, &ref, n - 2 + 2 * T, 2 * T);
    cr_assert_gt(s.end.task_done.transfer_ms, 0.0);

    /* the KV was released by the pull: a second DecodeTask finds nothing */
    ms_msg_init(&d, MS_MSG_KV_GET);
    zsock_t *dl = zsock_new(ZMQ_DEALER);
    zsock_set_linger(dl, 0);
    zsock_set_rcvtimeo(dl, T_WAIT_MS);
    cr_assert_eq(zsock_connect(dl, "%s", pre.data_ep), 0);
    d.kv_get.key = "kv:nothing";
    cr_assert_eq(ms_frames_send(dl, NULL, &d, NULL, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_frames_recv(dl, &in, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(in.msg.type, MS_MSG_DATA_ERROR);
    cr_assert_str_eq(in.msg.data_error.code, "not_found");
    zsock_destroy(&dl);

    /* counters: the encoder encoded 2, the prefill actor prefilled 1, the decoder decoded the rest
     */
    ms_registry *r = registry();
    const int64_t we[3] = {2, 0, 1};
    registry_wait(r, enc.id, enc_counts, we);
    const int64_t wp[3] = {1, 1, 1};
    registry_wait(r, pre.id, text_counts, wp);
    const int64_t wd[3] = {0, ref.n - 1, 1};
    registry_wait(r, dec.id, text_counts, wd);

    /* a prefill whose features are gone: TaskError not_found (the broker re-encodes) */
    refs[0].hash ^= 0x5555;
    prefill_task(&m, 8, prompt, n, refs, 2, &sp, NULL, 0, "handoff");
    send_to(&b, pre.id, &m, NULL, 0);
    ms_msg_fini(&m);
    expect(&b, pre.id, MS_MSG_TASK_ERROR, &in);
    cr_assert_eq(in.msg.task_error.rid, 8);
    cr_assert_str_eq(in.msg.task_error.code, "not_found", "%s", in.msg.task_error.message);
    /* an encoder that is gone: TaskError unavailable within the pull timeout */
    refs[0].hash ^= 0x5555;
    actor_kill(&enc);
    prefill_task(&m, 9, prompt, n, refs, 2, &sp, NULL, 0, "handoff");
    send_to(&b, pre.id, &m, NULL, 0);
    ms_msg_fini(&m);
    expect(&b, pre.id, MS_MSG_TASK_ERROR, &in);
    cr_assert_eq(in.msg.task_error.rid, 9);
    cr_assert_str_eq(in.msg.task_error.code, "unavailable", "%s", in.msg.task_error.message);

    kill(pre.pid, SIGTERM);
    kill(dec.pid, SIGTERM);
    cr_assert_eq(actor_wait(&pre, T_EXIT_MS), 0);
    cr_assert_eq(actor_wait(&dec, T_EXIT_MS), 0);

    ms_msg_fini(&s.end);
    ms_frames_in_fini(&in);
    ms_registry_destroy(&r);
    free(img[0]);
    free(img[1]);
    ms_engine_destroy(&e);
    broker_close(&b);
}

/* The monolith: encode, prefill and decode in one process; features come
 * from its own store. */
Test(actor, monolith_image_request_equals_generate, .init = redis_up, .fini = redis_down,
     .timeout = 120) {
    t_broker b;
    broker_open(&b);
    t_actor mono;
    actor_start(&mono, &b, "mono-1", "encode+prefill+decode", NULL);
    ms_engine *e = ref_engine(true);
    size_t len;
    uint8_t *img = read_image("sample.jpg", &len);
    int32_t prompt[300];
    const int n = make_prompt(e, "What is in the picture?", 1, prompt, 300);
    ms_sampling_params sp;
    sampling(&sp, 31, T_MAX_TOKENS);
    ms_image_bytes ib = {img, len};
    t_ref ref;
    reference(e, prompt, n, &ib, 1, &sp, &ref);

    ms_msg m;
    ms_wire_image_ref refs[1];
    zframe_t *fr[1];
    const uint8_t *ip = img;
    encode_task(&m, refs, 3, &ip, &len, 1, fr);
    send_to(&b, mono.id, &m, fr, 1);
    ms_frames_in in;
    ms_frames_in_init(&in);
    expect(&b, mono.id, MS_MSG_ENCODED, &in);
    refs[0].data_ep = mono.data_ep;
    refs[0].has_data_ep = true;
    prefill_task(&m, 3, prompt, n, refs, 1, &sp, NULL, 0, "decode");
    send_to(&b, mono.id, &m, NULL, 0);
    ms_msg_fini(&m);
    t_stream s;
    stream_init(&s, 3, 0);
    collect(&b, &s, 1);
    assert_matches(&s, &ref);
    const int T = ms_engine_n_image_tokens(e);
    assert_done(&s, &ref, n - 1 + T, T);

    /* Redis restarts empty: the actor registers again with its next heartbeat */
    ms_registry *r = registry();
    ms_actor_info info;
    cr_assert_eq(ms_registry_get(r, mono.id, &info), 0);
    cr_assert_gt(ms_test_redis_restart(&g_redis), 0);
    const int64_t prefilled = 1;
    info = registry_wait(r, mono.id, idle_after, &prefilled);
    cr_assert_str_eq(info.data_ep, mono.data_ep);
    cr_assert_eq(info.images_encoded, 1, "counters survive a Redis restart");

    /* the broker restarts on the same endpoint: the actor says Hello again */
    char ep[64];
    snprintf(ep, sizeof ep, "%s", b.ep);
    broker_close(&b);
    b.router = zsock_new(ZMQ_ROUTER);
    zsock_set_linger(b.router, 0);
    /* the old listener closes asynchronously: retry the bind for a while */
    int bound = -1;
    for (int i = 0; i < 100 && bound < 0; i++) {
        bound = zsock_bind(b.router, "%s", ep);
        if (bound < 0) sleep_ms(20);
    }
    cr_assert_geq(bound, 0, "rebind %s: %s", ep, zmq_strerror(errno));
    expect(&b, mono.id, MS_MSG_HELLO, &in);
    cr_assert_str_eq(in.msg.hello.data_ep, mono.data_ep);
    /* and serves the new broker */
    prefill_task(&m, 4, prompt, n, refs, 1, &sp, NULL, 0, "decode");
    send_to(&b, mono.id, &m, NULL, 0);
    ms_msg_fini(&m);
    ms_msg_fini(&s.end);
    stream_init(&s, 4, 0);
    collect(&b, &s, 1);
    cr_assert_eq(s.end.type, MS_MSG_TASK_DONE,
                 "the features were pulled once already, but "
                 "they stay in the store for reuse: %s",
                 ms_msg_type_name(s.end.type));
    assert_matches(&s, &ref);

    kill(mono.pid, SIGTERM);
    cr_assert_eq(actor_wait(&mono, T_EXIT_MS), 0);
    cr_assert_eq(ms_registry_get(r, mono.id, &info), 1);
    ms_registry_destroy(&r);
    ms_msg_fini(&s.end);
    ms_frames_in_fini(&in);
    free(img);
    ms_engine_destroy(&e);
    broker_close(&b);
}

/* ---- the command line ----------------------------------------------------------------------- */

static int run_cli(const char *const *args) {
    char bin[4096];
    snprintf(bin, sizeof bin, "%s/modserve-actor", ms_test_bin_dir());
    const char *argv[32] = {bin};
    int n = 1;
    for (int i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

Test(actor, cli_rejects_bad_arguments, .timeout = 30) {
    const char *lm = model("tiny-lm.gguf");
    cr_assert_eq(run_cli((const char *[]){"--help", NULL}), 0);
    cr_assert_eq(run_cli((const char *[]){"--stages", "decode", "--model", lm, NULL}), 1, "no id");
    cr_assert_eq(
        run_cli((const char *[]){"--id", "a b", "--stages", "decode", "--model", lm, NULL}), 1,
        "bad id");
    cr_assert_eq(
        run_cli((const char *[]){"--id", "x", "--stages", "encode+decode", "--model", lm, NULL}), 1,
        "not one of the five stage sets");
    cr_assert_eq(run_cli((const char *[]){"--id", "x", "--stages", "encode", "--model", lm, NULL}),
                 1, "encode without --mmproj");
    cr_assert_eq(run_cli((const char *[]){"--id", "x", "--stages", "decode", "--model",
                                          "/nonexistent.gguf", NULL}),
                 1, "a model that does not load");
    cr_assert_eq(run_cli((const char *[]){"--id", "x", "--stages", "decode", "--model", lm,
                                          "--max-batch", "0", NULL}),
                 1, "--max-batch 0");
    cr_assert_eq(run_cli((const char *[]){"--id", "x", "--stages", "decode", "--model", lm,
                                          "--data", "tcp://256.0.0.1:1", NULL}),
                 1, "an endpoint that does not bind");
    cr_assert_eq(run_cli((const char *[]){"--id", "x", "--stages", "decode", "--model", lm,
                                          "--advertise", "a b", NULL}),
                 1, "--advertise with a space");
    cr_assert_eq(
        run_cli((const char *[]){"--id", "x", "--stages", "decode", "--model", lm, "--data",
                                 "ipc:///tmp/ms-x.data", "--advertise", "host1", NULL}),
        1, "--advertise with an ipc endpoint");
}
