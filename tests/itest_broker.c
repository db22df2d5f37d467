/* itest_broker.c — the broker as a real process (build/bin/modserve-broker)
 * with a real redis-server and real actor processes (modserve-actor, the
 * tiny models) on loopback, driven through the producer client library.
 *
 * Reference for every token stream: ms_engine_generate in this process on
 * the same prompt (rendered and tokenized as modserve-run does), images and
 * sampling parameters; greedy and seeded temperature sampling.
 *
 * Routing assertions read the counters the actors publish in the registry,
 * never logs. The re-dispatch test plays a text actor that dies mid-stream
 * (a DEALER registered in Redis that emits the first tokens and vanishes),
 * so the broker's re-prefill with generated[] is exercised deterministically.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ms_common.h"
#include "ms_test.h"
#include "registry.h"
/* engine.h and wire.h both declare MS_FINISH_* (different enums): wire.h's
 * are read here as MS_WIRE_FINISH_* (as actors/actor.h does). */
#define MS_FINISH_EOG     MS_WIRE_FINISH_EOG
#define MS_FINISH_LENGTH  MS_WIRE_FINISH_LENGTH
#define MS_FINISH_STOP    MS_WIRE_FINISH_STOP
#define MS_FINISH_CANCEL  MS_WIRE_FINISH_CANCEL
#define MS_FINISH_TIMEOUT MS_WIRE_FINISH_TIMEOUT
#define MS_FINISH_COUNT   MS_WIRE_FINISH_COUNT
#include "client.h"
#include "frames.h"
#include "wire.h"
#undef MS_FINISH_EOG
#undef MS_FINISH_LENGTH
#undef MS_FINISH_STOP
#undef MS_FINISH_CANCEL
#undef MS_FINISH_TIMEOUT
#undef MS_FINISH_COUNT
#include "chat.h"
#include "engine.h"

#define T_PREFIX     "msb" /* registry key prefix of these tests */
#define T_WAIT_MS    20000 /* one awaited event, at most */
#define T_MAX_ACTORS 8     /* processes one test starts */
#define T_MAX_REQS   16    /* requests one collection follows */
#define T_MAX_TOK    512   /* tokens one stream may hold */
#define T_FAKE_ID    "fake-1"

static char err[MS_ERR_SIZE];
static ms_test_redis g_redis;

typedef struct t_cluster {
    char dir[256];   /* logs and ipc sockets */
    char front[300]; /* broker endpoints (ipc) */
    char back[300];
    pid_t broker;
    pid_t actors[T_MAX_ACTORS];
    char ids[T_MAX_ACTORS][32];
    int n_actors;
} t_cluster;
static t_cluster g_c;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void) {
    return ms_now_ns() / 1000000;
}

static const char *model(const char *name) {
    static char buf[2][4096];
    static int k;
    k ^= 1;
    snprintf(buf[k], sizeof buf[k], "%s/%s", ms_test_models_dir(), name);
    return buf[k];
}

static uint8_t *read_image(const char *name, size_t *len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/images/%s", ms_test_source_dir(), name);
    uint8_t *b = ms_read_file(path, 64u << 20, len, err, sizeof err);
    cr_assert_not_null(b, "%s", err);
    return b;
}

/* ---- processes ----------------------------------------------------------- */

static pid_t spawn(const char *const *argv, const char *log_name) {
    char logp[512];
    snprintf(logp, sizeof logp, "%s/%s.log", g_c.dir, log_name);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static void up(void) {
    memset(&g_c, 0, sizeof g_c);
    cr_assert_gt(ms_test_redis_start(&g_redis), 0, "cannot start redis-server");
    snprintf(g_c.dir, sizeof g_c.dir, "/tmp/ms-broker-itest-XXXXXX");
    cr_assert_not_null(mkdtemp(g_c.dir));
    snprintf(g_c.front, sizeof g_c.front, "ipc://%s/front", g_c.dir);
    snprintf(g_c.back, sizeof g_c.back, "ipc://%s/back", g_c.dir);
}

static void kill_wait(pid_t *pid) {
    if (*pid > 0) {
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
        *pid = 0;
    }
}

static void down(void) {
    for (int i = 0; i < g_c.n_actors; i++)
        kill_wait(&g_c.actors[i]);
    kill_wait(&g_c.broker);
    ms_test_redis_stop(&g_redis);
    if (g_c.dir[0] && !getenv("MS_TEST_KEEP_LOGS")) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_c.dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_c.dir);
    }
}

/* Starts modserve-broker; extra: more arguments, NULL-terminated (or NULL). */
static void broker_start(const char *layout, const char *const *extra) {
    char bin[4096], redis[64];
    snprintf(bin, sizeof bin, "%s/modserve-broker", ms_test_bin_dir());
    snprintf(redis, sizeof redis, "127.0.0.1:%d", g_redis.port);
    const char *argv[48] = {bin,
                            "--model",
                            model("tiny-lm.gguf"),
                            "--mmproj",
                            model("tiny-mmproj.gguf"),
                            "--front",
                            g_c.front,
                            "--back",
                            g_c.back,
                            "--redis",
                            redis,
                            "--prefix",
                            T_PREFIX,
                            "--layout",
                            layout};
    int n = 0;
    while (argv[n])
        n++;
    for (int i = 0; extra && extra[i]; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    g_c.broker = spawn(argv, "broker");
}

static void actor_start(const char *id, const char *stages) {
    cr_assert_lt(g_c.n_actors, T_MAX_ACTORS);
    char bin[4096], redis[64];
    snprintf(bin, sizeof bin, "%s/modserve-actor", ms_test_bin_dir());
    snprintf(redis, sizeof redis, "127.0.0.1:%d", g_redis.port);
    const char *argv[] = {bin,
                          "--id",
                          id,
                          "--stages",
                          stages,
                          "--model",
                          model("tiny-lm.gguf"),
                          "--mmproj",
                          model("tiny-mmproj.gguf"),
                          "--broker",
                          g_c.back,
                          "--data",
                          "tcp://127.0.0.1:0",
                          "--redis",
                          redis,
                          "--prefix",
                          T_PREFIX,
                          "--threads",
                          "1",
                          NULL};
    snprintf(g_c.ids[g_c.n_actors], sizeof g_c.ids[0], "%s", id);
    g_c.actors[g_c.n_actors++] = spawn(argv, id);
}

static ms_client *client(void) {
    ms_client *c = ms_client_new(g_c.front, err, sizeof err);
    cr_assert_not_null(c, "%s", err);
    return c;
}

/* Asks for Stats until the broker sees n live actors. */
static void wait_actors(ms_client *c, uint64_t n) {
    const int64_t end = now_ms() + T_WAIT_MS;
    for (;;) {
        cr_assert_eq(ms_client_stats_request(c, err, sizeof err), 0, "%s", err);
        ms_msg m;
        memset(&m, 0, sizeof m);
        ms_wire_status st = ms_client_next(c, 500, &m, err, sizeof err);
        if (st == MS_WIRE_OK && m.type == MS_MSG_STATS && m.stats.actors >= n) {
            ms_msg_fini(&m);
            return;
        }
        ms_msg_fini(&m);
        cr_assert_lt(now_ms(), end, "the broker never saw %" PRIu64 " actors", n);
        sleep_ms(50);
    }
}

static ms_registry *registry(void) {
    ms_registry *r = ms_registry_new("127.0.0.1", g_redis.port, T_PREFIX, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    return r;
}

static ms_actor_info actor_info(ms_registry *r, const char *id) {
    ms_actor_info info;
    memset(&info, 0, sizeof info);
    int rc = ms_registry_get(r, id, &info);
    cr_assert_eq(rc, 0, "actor %s not in the registry (%d: %s)", id, rc, ms_registry_errstr(r));
    return info;
}

/* ---- the reference --------------------------------------------------------- */

typedef struct t_stream {
    int32_t ids[T_MAX_TOK];
    int n;
    char finish[32];
} t_stream;

static const char *engine_finish(ms_finish_reason f) {
    switch (f) {
    case MS_FINISH_EOG:
        return "eog";
    case MS_FINISH_LENGTH:
        return "length";
    case MS_FINISH_STOP:
        return "stop";
    case MS_FINISH_CANCEL:
        return "cancel";
    }
    return "?";
}

static ms_engine *engine(void) {
    ms_engine_params p;
    ms_engine_params_default(&p);
    p.lm_path = model("tiny-lm.gguf");
    p.mmproj_path = model("tiny-mmproj.gguf");
    p.n_threads = 1;
    ms_engine *e = ms_engine_new(&p, err, sizeof err);
    cr_assert_not_null(e, "%s", err);
    return e;
}

/* What modserve-run prints for this prompt, images and sampling. */
static void reference(ms_engine *e, const char *text, const char *const *images, int n_images,
                      const ms_sampling_params *sp, t_stream *out) {
    const ms_lm *lm = ms_engine_lm(e);
    ms_chat_message msg = {MS_CHAT_USER, text, n_images};
    int32_t *prompt = NULL;
    int n_prompt = 0, n_img = 0;
    cr_assert_eq(ms_chat_build_prompt(ms_engine_tokenizer(e), ms_chat_detect(lm->chat_template),
                                      &msg, 1, true, &prompt, &n_prompt, &n_img, err, sizeof err),
                 0, "%s", err);
    ms_image_bytes ib[MS_MAX_IMAGES_PER_PROMPT];
    uint8_t *data[MS_MAX_IMAGES_PER_PROMPT];
    for (int i = 0; i < n_images; i++) {
        size_t len = 0;
        data[i] = read_image(images[i], &len);
        ib[i] = (ms_image_bytes){data[i], len};
    }
    ms_generate_result res;
    memset(&res, 0, sizeof res);
    cr_assert_eq(ms_engine_generate(e, prompt, n_prompt, ib, n_images, sp, NULL, NULL, &res, err,
                                    sizeof err),
                 0, "%s", err);
    cr_assert_leq(res.n_generated, T_MAX_TOK);
    memcpy(out->ids, res.tokens, (size_t)res.n_generated * sizeof(int32_t));
    out->n = res.n_generated;
    snprintf(out->finish, sizeof out->finish, "%s", engine_finish(res.finish));
    ms_generate_result_fini(&res);
    for (int i = 0; i < n_images; i++)
        free(data[i]);
    free(prompt);
}

/* ---- producing --------------------------------------------------------------- */

typedef struct t_req {
    char id[32];
    const char *text;
    const char *images[8];
    int n_images;
    ms_sampling_params sp;
    /* outcome */
    t_stream got;
    bool accepted, ended, error;
    char code[32];
    char message[MS_WIRE_MAX_ERROR_BYTES];
    ms_msg_done done;
} t_req;

static void req_init(t_req *r, const char *id, const char *text, float temp, uint64_t seed,
                     int max_tokens) {
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", id);
    r->text = text;
    ms_sampling_params_default(&r->sp);
    r->sp.temperature = temp;
    r->sp.seed = seed;
    r->sp.max_tokens = max_tokens;
    if (temp > 0) r->sp.top_k = 40;
}

static void submit(ms_client *c, t_req *r) {
    ms_msg_submit s;
    memset(&s, 0, sizeof s);
    s.id = r->id;
    s.prompt = (char *)r->text;
    s.has_prompt = true;
    s.max_tokens = (uint64_t)r->sp.max_tokens;
    s.has_max_tokens = true;
    s.temperature = r->sp.temperature;
    s.has_temperature = true;
    s.top_k = (uint64_t)r->sp.top_k;
    s.has_top_k = true;
    s.seed = r->sp.seed;
    s.has_seed = true;
    const void *data[8];
    size_t len[8];
    uint8_t *bufs[8];
    for (int i = 0; i < r->n_images; i++) {
        bufs[i] = read_image(r->images[i], &len[i]);
        data[i] = bufs[i];
    }
    cr_assert_eq(ms_client_submit(c, &s, data, len, (size_t)r->n_images, err, sizeof err), 0, "%s",
                 err);
    for (int i = 0; i < r->n_images; i++)
        free(bufs[i]);
}

/* Reads events until every request in rs has ended. Token indices are
 * checked here too (the client library checks them as well). */
static void collect(ms_client *c, t_req *rs, int n) {
    int open = n;
    while (open > 0) {
        ms_msg m;
        memset(&m, 0, sizeof m);
        ms_wire_status st = ms_client_next(c, T_WAIT_MS, &m, err, sizeof err);
        cr_assert_eq(st, MS_WIRE_OK, "no event within %d ms (%s): %s", T_WAIT_MS,
                     ms_wire_status_name(st), err);
        const char *id = m.type == MS_MSG_ACCEPTED ? m.accepted.id
                         : m.type == MS_MSG_TOKEN  ? m.token.id
                         : m.type == MS_MSG_DONE   ? m.done.id
                         : m.type == MS_MSG_ERROR  ? m.error.id
                                                   : NULL;
        t_req *r = NULL;
        for (int i = 0; id && i < n; i++)
            if (strcmp(rs[i].id, id) == 0) r = &rs[i];
        if (!r) {
            ms_msg_fini(&m);
            continue;
        }
        cr_assert_not(r->ended, "event after the end of %s", r->id);
        switch (m.type) {
        case MS_MSG_ACCEPTED:
            cr_assert_not(r->accepted);
            cr_assert_gt(m.accepted.rid, 0);
            r->accepted = true;
            break;
        case MS_MSG_TOKEN:
            cr_assert(r->accepted, "token before accepted");
            cr_assert_eq(m.token.index, (uint64_t)r->got.n,
                         "%s: token index %" PRIu64 ", expected %d", r->id, m.token.index,
                         r->got.n);
            for (uint32_t k = 0; k < m.token.n_ids; k++) {
                cr_assert_lt(r->got.n, T_MAX_TOK);
                r->got.ids[r->got.n++] = m.token.ids[k];
            }
            break;
        case MS_MSG_DONE:
            snprintf(r->got.finish, sizeof r->got.finish, "%s", m.done.finish);
            r->done = m.done;
            r->done.id = NULL;
            r->done.finish = NULL;
            r->ended = true;
            open--;
            break;
        case MS_MSG_ERROR:
            r->error = true;
            snprintf(r->code, sizeof r->code, "%s", m.error.code);
            snprintf(r->message, sizeof r->message, "%s", m.error.message);
            r->ended = true;
            open--;
            break;
        default:
            break;
        }
        ms_msg_fini(&m);
    }
}

static void assert_same(const t_req *r, const t_stream *ref) {
    cr_assert_not(r->error, "%s failed: %s: %s", r->id, r->code, r->message);
    cr_assert_eq(r->got.n, ref->n, "%s: %d tokens, reference %d", r->id, r->got.n, ref->n);
    for (int i = 0; i < ref->n; i++)
        cr_assert_eq(r->got.ids[i], ref->ids[i], "%s: token %d is %d, reference %d", r->id, i,
                     r->got.ids[i], ref->ids[i]);
    cr_assert_str_eq(r->got.finish, ref->finish, "%s", r->id);
    cr_assert_eq(r->done.completion_tokens, (uint64_t)ref->n);
}

/* Starts a cluster of `layout` with the given actors (id, stages pairs). */
static ms_client *cluster(const char *layout, const char *const *actors, int n) {
    broker_start(layout, NULL);
    for (int i = 0; i < n; i++)
        actor_start(actors[2 * i], actors[2 * i + 1]);
    ms_client *c = client();
    wait_actors(c, (uint64_t)n);
    return c;
}

/* The mixed workload of the equality tests: text and image requests,
 * greedy and seeded, submitted together. */
static void mixed_workload(ms_client *c, ms_engine *e, const char *tag) {
    t_req rs[5];
    char id[32];
    snprintf(id, sizeof id, "%s-text-greedy", tag);
    req_init(&rs[0], id, "Tell me about the weather.", 0.0f, 0, 40);
    snprintf(id, sizeof id, "%s-text-seeded", tag);
    req_init(&rs[1], id, "Write a short poem.", 0.9f, 1234, 48);
    snprintf(id, sizeof id, "%s-img-greedy", tag);
    req_init(&rs[2], id, "What is in this picture?", 0.0f, 0, 32);
    rs[2].images[0] = "j_31x17_grey.jpg";
    rs[2].n_images = 1;
    snprintf(id, sizeof id, "%s-img-seeded", tag);
    req_init(&rs[3], id, "Compare <image> with <image>, please.", 0.7f, 99, 40);
    rs[3].images[0] = "j_64x48_420.jpg";
    rs[3].images[1] = "p_19x13_1bit.png";
    rs[3].n_images = 2;
    snprintf(id, sizeof id, "%s-img-three", tag);
    req_init(&rs[4], id, "Three views.", 0.5f, 7, 24);
    rs[4].images[0] = "j_333x517.jpg";
    rs[4].images[1] = "j_31x17_grey.jpg";
    rs[4].images[2] = "j_517x333.jpg";
    rs[4].n_images = 3;
    for (int i = 0; i < 5; i++)
        submit(c, &rs[i]);
    collect(c, rs, 5);
    for (int i = 0; i < 5; i++) {
        t_stream ref;
        reference(e, rs[i].text, rs[i].images, rs[i].n_images, &rs[i].sp, &ref);
        assert_same(&rs[i], &ref);
        cr_assert_eq(rs[i].done.image_tokens, (uint64_t)(rs[i].n_images * 16), "%s", rs[i].id);
    }
}

/* ---- tests -------------------------------------------------------------------- */

Test(broker, modserve_layout_matches_engine, .init = up, .fini = down, .timeout = 120) {
    const char *actors[] = {"enc-1",  "encode",         "enc-2",  "encode",
                            "text-1", "prefill+decode", "text-2", "prefill+decode"};
    ms_client *c = cluster("modserve", actors, 4);
    ms_engine *e = engine();
    mixed_workload(c, e, "ms");
    ms_engine_destroy(&e);
    ms_client_destroy(&c);
}

Test(broker, disagg_layout_matches_engine, .init = up, .fini = down, .timeout = 120) {
    const char *actors[] = {"enc-1", "encode", "pre-1", "prefill", "dec-1", "decode"};
    ms_client *c = cluster("disagg", actors, 3);
    ms_engine *e = engine();
    mixed_workload(c, e, "dg");
    ms_engine_destroy(&e);
    ms_client_destroy(&c);
}

Test(broker, monolith_layout_matches_engine, .init = up, .fini = down, .timeout = 120) {
    const char *actors[] = {"mono-1", "encode+prefill+decode", "mono-2", "encode+prefill+decode"};
    ms_client *c = cluster("monolith", actors, 2);
    ms_engine *e = engine();
    mixed_workload(c, e, "mo");
    ms_engine_destroy(&e);
    ms_client_destroy(&c);
}

/* Text-only requests never reach an encoder: the encoders' own counters do
 * not move while text requests run, and do move for an image request. */
Test(broker, text_requests_skip_encoders, .init = up, .fini = down, .timeout = 120) {
    const char *actors[] = {"enc-1", "encode", "enc-2", "encode", "text-1", "prefill+decode"};
    ms_client *c = cluster("modserve", actors, 3);
    ms_registry *reg = registry();
    /* one heartbeat after start, so the entries are current */
    sleep_ms(2 * MS_REGISTRY_HEARTBEAT_MS);
    ms_actor_info e1 = actor_info(reg, "enc-1"), e2 = actor_info(reg, "enc-2");
    ms_actor_info t1 = actor_info(reg, "text-1");
    t_req rs[6];
    for (int i = 0; i < 6; i++) {
        char id[32];
        snprintf(id, sizeof id, "txt-%d", i);
        req_init(&rs[i], id, "Hello there, how are you?", i % 2 ? 0.8f : 0.0f, (uint64_t)i, 16);
        submit(c, &rs[i]);
    }
    collect(c, rs, 6);
    for (int i = 0; i < 6; i++)
        cr_assert_not(rs[i].error, "%s: %s", rs[i].code, rs[i].message);
    sleep_ms(3 * MS_REGISTRY_HEARTBEAT_MS); /* counters are published by heartbeats */
    ms_actor_info e1b = actor_info(reg, "enc-1"), e2b = actor_info(reg, "enc-2");
    ms_actor_info t1b = actor_info(reg, "text-1");
    cr_assert_eq(e1b.images_encoded + e1b.images_cache_hits + e1b.tasks_done,
                 e1.images_encoded + e1.images_cache_hits + e1.tasks_done,
                 "a text-only request reached enc-1");
    cr_assert_eq(e2b.images_encoded + e2b.images_cache_hits + e2b.tasks_done,
                 e2.images_encoded + e2.images_cache_hits + e2.tasks_done,
                 "a text-only request reached enc-2");
    cr_assert_eq(t1b.requests_prefilled - t1.requests_prefilled, 6,
                 "text-1 prefilled %" PRId64 " requests, expected 6",
                 t1b.requests_prefilled - t1.requests_prefilled);
    /* the counters can move: an image request does reach an encoder */
    t_req img;
    req_init(&img, "img-0", "What is it?", 0.0f, 0, 8);
    img.images[0] = "j_45x31_422.jpg";
    img.n_images = 1;
    submit(c, &img);
    collect(c, &img, 1);
    cr_assert_not(img.error, "%s: %s", img.code, img.message);
    sleep_ms(3 * MS_REGISTRY_HEARTBEAT_MS);
    ms_actor_info e1c = actor_info(reg, "enc-1"), e2c = actor_info(reg, "enc-2");
    cr_assert_eq(e1c.images_encoded + e1c.images_cache_hits + e2c.images_encoded +
                     e2c.images_cache_hits -
                     (e1b.images_encoded + e1b.images_cache_hits + e2b.images_encoded +
                      e2b.images_cache_hits),
                 1, "the image request was not encoded exactly once");
    ms_registry_destroy(&reg);
    ms_client_destroy(&c);
}

/* A 6-image request with an encode batch cap of one image: it is split over
 * both encoders and sent batch by batch (its image tokens exceed every
 * encoder's cap together), and still equals the reference. */
Test(broker, many_images_spread_in_batches, .init = up, .fini = down, .timeout = 120) {
    char prof[512];
    snprintf(prof, sizeof prof, "%s/profile.json", g_c.dir);
    FILE *f = fopen(prof, "w");
    cr_assert_not_null(f);
    fputs("{\"version\": 1, \"stages\": {\"encode\": {\"max_batch\": 1}}}\n", f);
    fclose(f);
    const char *extra[] = {"--profile", prof, NULL};
    broker_start("modserve", extra);
    actor_start("enc-1", "encode");
    actor_start("enc-2", "encode");
    actor_start("text-1", "prefill+decode");
    ms_client *c = client();
    wait_actors(c, 3);
    ms_registry *reg = registry();
    sleep_ms(2 * MS_REGISTRY_HEARTBEAT_MS);
    ms_actor_info e1 = actor_info(reg, "enc-1"), e2 = actor_info(reg, "enc-2");
    ms_engine *e = engine();
    t_req r;
    req_init(&r, "six", "Six pictures: what do they share?", 0.6f, 2024, 32);
    const char *imgs[6] = {"j_64x48_420.jpg",  "p_40x30_rgb.png",  "w_40x30_lossy.webp",
                           "j_45x33_prog.jpg", "p_33x21_grey.png", "w_40x30_lossless.webp"};
    for (int i = 0; i < 6; i++)
        r.images[i] = imgs[i];
    r.n_images = 6;
    submit(c, &r);
    collect(c, &r, 1);
    t_stream ref;
    reference(e, r.text, r.images, r.n_images, &r.sp, &ref);
    assert_same(&r, &ref);
    cr_assert_eq(r.done.image_tokens, 6 * 16);
    sleep_ms(3 * MS_REGISTRY_HEARTBEAT_MS);
    ms_actor_info e1b = actor_info(reg, "enc-1"), e2b = actor_info(reg, "enc-2");
    int64_t d1 = e1b.images_encoded - e1.images_encoded;
    int64_t d2 = e2b.images_encoded - e2.images_encoded;
    cr_assert_eq(d1 + d2, 6, "encoded %" PRId64 " + %" PRId64 " images, expected 6", d1, d2);
    cr_assert(d1 >= 1 && d2 >= 1, "the images were not spread: %" PRId64 " / %" PRId64, d1, d2);
    ms_registry_destroy(&reg);
    ms_engine_destroy(&e);
    ms_client_destroy(&c);
}

/* A raw producer socket (no client library checks). */
static zsock_t *raw_producer(void) {
    zsock_t *s = zsock_new(ZMQ_DEALER);
    cr_assert_not_null(s);
    zsock_set_linger(s, 0);
    cr_assert_eq(zsock_connect(s, "%s", g_c.front), 0);
    return s;
}

/* Sends frames (header bytes + payloads) as one message. */
static void raw_send(zsock_t *s, const void *hdr, size_t hlen, const void *const *pl,
                     const size_t *pll, int n) {
    zmsg_t *m = zmsg_new();
    zmsg_addmem(m, hdr, hlen);
    for (int i = 0; i < n; i++)
        zmsg_addmem(m, pl[i], pll[i]);
    cr_assert_eq(zmsg_send(&m, s), 0);
}

/* Encodes a message by hand and sends it with payloads. */
static void raw_send_msg(zsock_t *s, const ms_msg *m, const void *const *pl, const size_t *pll,
                         int n) {
    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(ms_wire_encode_buf(m, &buf, &len, err, sizeof err), 0, "%s", err);
    raw_send(s, buf, len, pl, pll, n);
    free(buf);
}

/* Waits for the Error answering request id (other events are skipped). An
 * Accepted for id fails the test unless `accepted_ok` (errors found after
 * admission, e.g. by the encoder). */
static void expect_error_ex(zsock_t *s, const char *id, const char *code, const char *needle,
                            bool accepted_ok) {
    const int64_t end = now_ms() + T_WAIT_MS;
    for (;;) {
        zsock_set_rcvtimeo(s, 500);
        ms_frames_in in;
        ms_frames_in_init(&in);
        ms_wire_status st = ms_frames_recv(s, &in, 0, err, sizeof err);
        if (st == MS_WIRE_OK && in.msg.type == MS_MSG_ERROR && strcmp(in.msg.error.id, id) == 0) {
            cr_assert_str_eq(in.msg.error.code, code, "id '%s': code %s (%s), expected %s", id,
                             in.msg.error.code, in.msg.error.message, code);
            cr_assert(strstr(in.msg.error.message, needle), "id '%s': message '%s' lacks '%s'", id,
                      in.msg.error.message, needle);
            ms_frames_in_fini(&in);
            return;
        }
        cr_assert(accepted_ok || !(st == MS_WIRE_OK && (in.msg.type == MS_MSG_ACCEPTED) &&
                                   strcmp(in.msg.accepted.id, id) == 0),
                  "id '%s' was accepted", id);
        ms_frames_in_fini(&in);
        cr_assert_lt(now_ms(), end, "no error for id '%s'", id);
    }
}

static void expect_error(zsock_t *s, const char *id, const char *code, const char *needle) {
    expect_error_ex(s, id, code, needle, false);
}

static void submit_msg(ms_msg *m, const char *id, const char *prompt) {
    ms_msg_init(m, MS_MSG_SUBMIT);
    m->submit.id = (char *)id;
    m->submit.prompt = (char *)prompt;
    m->submit.has_prompt = true;
}

/* Malformed frames, unknown types, wrong types, bad parameters, too many or
 * bad images and oversized prompts get Error replies naming the problem,
 * while a concurrent good request completes with the right tokens. */
Test(broker, bad_input_answered_while_serving, .init = up, .fini = down, .timeout = 120) {
    const char *actors[] = {"enc-1", "encode", "text-1", "prefill+decode"};
    ms_client *c = cluster("modserve", actors, 2);
    ms_engine *e = engine();
    t_req good[2];
    req_init(&good[0], "good-text", "Tell me a long story about a dragon.", 0.8f, 42, 200);
    req_init(&good[1], "good-img", "Describe <image> briefly.", 0.0f, 0, 64);
    good[1].images[0] = "j_37x23_444.jpg";
    good[1].n_images = 1;
    submit(c, &good[0]);
    submit(c, &good[1]);

    zsock_t *p = raw_producer();
    /* not msgpack at all / not a map */
    raw_send(p, "\xc1garbage", 8, NULL, NULL, 0);
    expect_error(p, "", "bad_request", "malformed");
    /* an unknown message type, its id still echoed */
    {
        uint8_t hdr[64];
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 3);
        msgpack_pack_str_with_body(&pk, "v", 1);
        msgpack_pack_int(&pk, MS_WIRE_VERSION);
        msgpack_pack_str_with_body(&pk, "t", 1);
        msgpack_pack_str_with_body(&pk, "frobnicate", 10);
        msgpack_pack_str_with_body(&pk, "id", 2);
        msgpack_pack_str_with_body(&pk, "u1", 2);
        cr_assert_leq(sb.size, sizeof hdr);
        memcpy(hdr, sb.data, sb.size);
        raw_send(p, hdr, sb.size, NULL, NULL, 0);
        msgpack_sbuffer_destroy(&sb);
        expect_error(p, "u1", "bad_request", "frobnicate");
    }
    /* a wrong field type */
    {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 5);
        msgpack_pack_str_with_body(&pk, "v", 1);
        msgpack_pack_int(&pk, MS_WIRE_VERSION);
        msgpack_pack_str_with_body(&pk, "t", 1);
        msgpack_pack_str_with_body(&pk, "submit", 6);
        msgpack_pack_str_with_body(&pk, "id", 2);
        msgpack_pack_str_with_body(&pk, "w1", 2);
        msgpack_pack_str_with_body(&pk, "prompt", 6);
        msgpack_pack_str_with_body(&pk, "hi", 2);
        msgpack_pack_str_with_body(&pk, "max_tokens", 10);
        msgpack_pack_str_with_body(&pk, "ten", 3);
        raw_send(p, sb.data, sb.size, NULL, NULL, 0);
        msgpack_sbuffer_destroy(&sb);
        expect_error(p, "w1", "bad_request", "max_tokens");
    }
    ms_msg m;
    /* a producer-side message type that producers may not send */
    ms_msg_init(&m, MS_MSG_BYE);
    m.bye.actor = "x";
    raw_send_msg(p, &m, NULL, NULL, 0);
    expect_error(p, "", "bad_request", "not accepted");
    /* bad sampling parameters */
    submit_msg(&m, "b1", "hi");
    m.submit.temperature = -0.5;
    m.submit.has_temperature = true;
    raw_send_msg(p, &m, NULL, NULL, 0);
    expect_error(p, "b1", "bad_request", "temperature");
    submit_msg(&m, "b2", "hi");
    m.submit.top_p = 1.5;
    m.submit.has_top_p = true;
    raw_send_msg(p, &m, NULL, NULL, 0);
    expect_error(p, "b2", "bad_request", "top_p");
    /* an unknown SLO class */
    submit_msg(&m, "b3", "hi");
    m.submit.slo_class = "platinum";
    m.submit.has_slo_class = true;
    raw_send_msg(p, &m, NULL, NULL, 0);
    expect_error(p, "b3", "bad_request", "platinum");
    /* a prompt that does not fit the context (512 tokens) */
    {
        static char big[8192];
        for (size_t i = 0; i + 6 < sizeof big; i += 6)
            memcpy(big + i, "hello ", 6);
        big[sizeof big - 1] = '\0';
        submit_msg(&m, "b4", big);
        raw_send_msg(p, &m, NULL, NULL, 0);
        expect_error(p, "b4", "bad_request", "context");
    }
    /* images: not an image file; markers not matching; more images than the
     * protocol allows; an image file the encoder cannot decode */
    size_t jl = 0;
    uint8_t *jpg = read_image("j_1x1.jpg", &jl);
    {
        const void *pl[1] = {"this is not an image"};
        size_t pll[1] = {20};
        submit_msg(&m, "b5", "<image> what?");
        m.submit.n_images = 1;
        m.submit.has_n_images = true;
        raw_send_msg(p, &m, pl, pll, 1);
        expect_error(p, "b5", "bad_request", "not a JPEG");
    }
    {
        const void *pl[1] = {jpg};
        size_t pll[1] = {jl};
        submit_msg(&m, "b6", "<image> and <image>?");
        m.submit.n_images = 1;
        m.submit.has_n_images = true;
        raw_send_msg(p, &m, pl, pll, 1);
        expect_error(p, "b6", "bad_request", "marker");
    }
    {
        enum { N = MS_WIRE_MAX_IMAGES + 1 };
        const void *pl[N];
        size_t pll[N];
        for (int i = 0; i < N; i++) {
            pl[i] = jpg;
            pll[i] = jl;
        }
        /* the encoder refuses n_images > the bound, so the header is built by hand */
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 5);
        msgpack_pack_str_with_body(&pk, "v", 1);
        msgpack_pack_int(&pk, MS_WIRE_VERSION);
        msgpack_pack_str_with_body(&pk, "t", 1);
        msgpack_pack_str_with_body(&pk, "submit", 6);
        msgpack_pack_str_with_body(&pk, "id", 2);
        msgpack_pack_str_with_body(&pk, "b7", 2);
        msgpack_pack_str_with_body(&pk, "prompt", 6);
        msgpack_pack_str_with_body(&pk, "many", 4);
        msgpack_pack_str_with_body(&pk, "n_images", 8);
        msgpack_pack_int(&pk, N);
        raw_send(p, sb.data, sb.size, pl, pll, N);
        msgpack_sbuffer_destroy(&sb);
        expect_error(p, "b7", "bad_request", "payload frames");
    }
    {
        size_t tl = 0;
        uint8_t *trunc = read_image("cmyk_truncated.jpg", &tl);
        const void *pl[1] = {trunc};
        size_t pll[1] = {tl};
        submit_msg(&m, "b8", "<image> what?");
        m.submit.n_images = 1;
        m.submit.has_n_images = true;
        raw_send_msg(p, &m, pl, pll, 1);
        expect_error_ex(p, "b8", "bad_request", "image 0", true);
        free(trunc);
    }
    /* the same client id twice while the first is in flight */
    submit_msg(&m, "dup", "Tell me a long story about a cat.");
    m.submit.max_tokens = 300;
    m.submit.has_max_tokens = true;
    raw_send_msg(p, &m, NULL, NULL, 0);
    raw_send_msg(p, &m, NULL, NULL, 0);
    expect_error_ex(p, "dup", "bad_request", "already in flight", true);
    free(jpg);
    zsock_destroy(&p);

    collect(c, good, 2);
    for (int i = 0; i < 2; i++) {
        t_stream ref;
        reference(e, good[i].text, good[i].images, good[i].n_images, &good[i].sp, &ref);
        assert_same(&good[i], &ref);
    }
    /* and the broker still serves */
    t_req after;
    req_init(&after, "after", "Still there?", 0.0f, 0, 12);
    submit(c, &after);
    collect(c, &after, 1);
    t_stream ref;
    reference(e, after.text, NULL, 0, &after.sp, &ref);
    assert_same(&after, &ref);
    ms_engine_destroy(&e);
    ms_client_destroy(&c);
}

/* Without actors: requests wait, then fail "unavailable"; Cancel ends a
 * waiting request with Error "cancelled"; past --max-queue, "overloaded". */
Test(broker, no_actors_cancel_overload, .init = up, .fini = down, .timeout = 60) {
    const char *extra[] = {"--max-queue", "2", "--request-timeout-ms", "1500", NULL};
    broker_start("modserve", extra);
    ms_client *c = client();
    t_req rs[3];
    req_init(&rs[0], "w-0", "Hello", 0.0f, 0, 8);
    req_init(&rs[1], "w-1", "Hello", 0.0f, 0, 8);
    req_init(&rs[2], "w-2", "Hello", 0.0f, 0, 8);
    submit(c, &rs[0]);
    submit(c, &rs[1]);
    submit(c, &rs[2]);
    cr_assert_eq(ms_client_cancel(c, "w-1", err, sizeof err), 0, "%s", err);
    collect(c, rs, 3);
    cr_assert(rs[2].error && strcmp(rs[2].code, "overloaded") == 0, "w-2: %s %s", rs[2].code,
              rs[2].message);
    cr_assert(rs[1].error && strcmp(rs[1].code, "cancelled") == 0, "w-1: %s %s", rs[1].code,
              rs[1].message);
    cr_assert(rs[0].error && strcmp(rs[0].code, "unavailable") == 0, "w-0: %s %s", rs[0].code,
              rs[0].message);
    cr_assert(strstr(rs[0].message, "prefill"), "%s", rs[0].message);
    /* a stage missing for longer than the timeout fails new requests at once */
    t_req late;
    req_init(&late, "late", "Hello", 0.0f, 0, 8);
    int64_t t0 = now_ms();
    submit(c, &late);
    collect(c, &late, 1);
    cr_assert(late.error && strcmp(late.code, "unavailable") == 0, "late: %s %s", late.code,
              late.message);
    cr_assert_lt(now_ms() - t0, 1000, "late was not refused at once");
    ms_client_destroy(&c);
}

/* ---- a text actor that dies mid-stream ---------------------------------------------- */

/* Registers T_FAKE_ID in Redis as a text instance and says Hello. */
static zsock_t *fake_actor_start(ms_registry *reg) {
    zsock_t *s = zsock_new(ZMQ_DEALER);
    cr_assert_not_null(s);
    zsock_set_identity(s, T_FAKE_ID);
    zsock_set_linger(s, 0);
    cr_assert_eq(zsock_connect(s, "%s", g_c.back), 0);
    ms_actor_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.id, sizeof info.id, "%s", T_FAKE_ID);
    info.stages = MS_STAGES_PREFILL | MS_STAGES_DECODE;
    snprintf(info.model, sizeof info.model, "tiny");
    snprintf(info.ctrl, sizeof info.ctrl, "%.200s", g_c.back);
    snprintf(info.data_ep, sizeof info.data_ep, "tcp://127.0.0.1:1");
    snprintf(info.host, sizeof info.host, "localhost");
    info.pid = getpid();
    snprintf(info.device, sizeof info.device, "cpu");
    info.capacity = 8;
    info.free_kv_blocks = 1000;
    cr_assert_eq(ms_registry_register(reg, &info), 0, "%s", ms_registry_errstr(reg));
    ms_msg m;
    ms_msg_init(&m, MS_MSG_HELLO);
    m.hello.actor = T_FAKE_ID;
    m.hello.stages = "prefill+decode";
    m.hello.model = "tiny";
    m.hello.data_ep = "tcp://127.0.0.1:1";
    m.hello.pid = (uint64_t)getpid();
    m.hello.host = "localhost";
    cr_assert_eq(ms_frames_send(s, NULL, &m, NULL, 0, err, sizeof err), 0, "%s", err);
    return s;
}

/* The broker re-dispatches the work of a text actor that vanishes: the
 * producer sees every index once, in order, and the tokens equal the
 * reference (the new actor continues from generated[] with the RNG state
 * after them). Duplicated indices are dropped. */
Test(broker, redispatch_after_text_actor_loss, .init = up, .fini = down, .timeout = 120) {
    broker_start("modserve", NULL);
    ms_client *c = client();
    ms_registry *reg = registry();
    zsock_t *fake = fake_actor_start(reg);
    wait_actors(c, 1);
    ms_engine *e = engine();
    t_req r;
    req_init(&r, "survivor", "Tell me a story about a lighthouse.", 0.8f, 77, 60);
    t_stream ref;
    reference(e, r.text, NULL, 0, &r.sp, &ref);
    cr_assert_gt(ref.n, 5, "the reference is too short for this test");
    submit(c, &r);
    /* the fake receives the PrefillTask */
    zsock_set_rcvtimeo(fake, T_WAIT_MS);
    ms_frames_in in;
    ms_frames_in_init(&in);
    cr_assert_eq(ms_frames_recv(fake, &in, 0, err, sizeof err), MS_WIRE_OK, "%s", err);
    cr_assert_eq(in.msg.type, MS_MSG_PREFILL_TASK, "got %s", ms_msg_type_name(in.msg.type));
    const ms_msg_prefill_task *pt = &in.msg.prefill_task;
    cr_assert_str_eq(pt->mode, "decode");
    cr_assert_eq(pt->n_generated, 0);
    cr_assert_eq(pt->sampler_state, r.sp.seed);
    const uint64_t rid = pt->rid;
    /* it emits the first three tokens (index 1 twice), then dies */
    const int k = 3;
    for (int i = 0; i < k + 1; i++) {
        int idx = i < k ? i : 1;
        ms_msg t;
        ms_msg_init(&t, MS_MSG_TOKEN_OUT);
        t.token_out.rid = rid;
        t.token_out.index = (uint64_t)idx;
        t.token_out.ids = &ref.ids[idx];
        t.token_out.n_ids = 1;
        t.token_out.text = "";
        cr_assert_eq(ms_frames_send(fake, NULL, &t, NULL, 0, err, sizeof err), 0, "%s", err);
    }
    ms_frames_in_fini(&in);
    /* a real text actor comes up; the fake vanishes (registry entry gone,
     * socket closed) */
    actor_start("text-1", "prefill+decode");
    cr_assert_eq(ms_registry_deregister(reg, T_FAKE_ID), 0);
    zsock_destroy(&fake);
    collect(c, &r, 1);
    assert_same(&r, &ref);
    /* text-1 did the rest: one prefill there (a re-prefill with 3 generated) */
    sleep_ms(3 * MS_REGISTRY_HEARTBEAT_MS);
    ms_actor_info t1 = actor_info(reg, "text-1");
    cr_assert_eq(t1.requests_prefilled, 1);
    ms_registry_destroy(&reg);
    ms_engine_destroy(&e);
    ms_client_destroy(&c);
}
