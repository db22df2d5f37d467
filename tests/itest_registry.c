/* itest_registry.c — ms_registry against a real redis-server (one per test,
 * started by ms_test_redis_start on a free loopback port, killed in .fini). */
#include "ms_test.h"
#include "registry.h"

#include "ms_common.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T_PREFIX        "mst"
#define T_CALL_BOUND_MS 1000 /* a failing call must return within this (timeout is 200 ms) */
/* One timeout for every test: Criterion 2.4's runner leaks 48 bytes (LSan
 * reports it, failing the ASan build) when tests with different .timeout
 * values run side by side under --jobs 2. */
#define T_TIMEOUT_S 60

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

static double now_ms(void) {
    return ms_now_s() * 1000.0;
}

static ms_registry *open_registry(void) {
    char err[MS_ERR_SIZE] = "";
    ms_registry *r = ms_registry_new("127.0.0.1", g_redis.port, T_PREFIX, err, sizeof err);
    cr_assert_not_null(r, "ms_registry_new: %s", err);
    return r;
}

/* Raw command; returns the first reply line (static buffer). */
static const char *raw(const char *const *argv, int argc) {
    static char reply[1024];
    cr_assert_eq(ms_test_redis_cmd(g_redis.port, argv, argc, reply, sizeof reply), 0,
                 "raw redis command %s failed", argv[0]);
    return reply;
}
#define RAW(...)                                                                                   \
    raw((const char *const[]){__VA_ARGS__},                                                        \
        (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)))

static ms_actor_info make_info(const char *id, unsigned stages, int64_t seed) {
    ms_actor_info a;
    memset(&a, 0, sizeof a);
    snprintf(a.id, sizeof a.id, "%s", id);
    a.stages = stages;
    snprintf(a.model, sizeof a.model, "models/tiny lm %lld.gguf", (long long)seed);
    snprintf(a.ctrl, sizeof a.ctrl, "tcp://127.0.0.1:5556");
    snprintf(a.data_ep, sizeof a.data_ep, "tcp://127.0.0.1:%lld", (long long)(7000 + seed));
    snprintf(a.host, sizeof a.host, "node-%lld", (long long)seed);
    a.pid = 1000 + seed;
    snprintf(a.device, sizeof a.device, "cpu");
    a.capacity = 8 + seed;
    a.state = MS_ACTOR_UP;
    a.queued_image_tokens = 11 * seed;
    a.queued_prompt_tokens = 12 * seed + 1;
    a.running_seqs = seed;
    a.free_kv_blocks = 400 + seed;
    a.images_encoded = 21 * seed;
    a.images_cache_hits = 22 * seed;
    a.requests_prefilled = 23 * seed;
    a.tokens_decoded = 24 * seed + 9000000000LL; /* beyond 32 bits */
    a.tasks_done = 25 * seed;
    return a;
}

/* Every field but heartbeat_ms equal. */
static void assert_same(const ms_actor_info *got, const ms_actor_info *want) {
    cr_assert_str_eq(got->id, want->id);
    cr_assert_eq(got->stages, want->stages);
    cr_assert_str_eq(got->model, want->model);
    cr_assert_str_eq(got->ctrl, want->ctrl);
    cr_assert_str_eq(got->data_ep, want->data_ep);
    cr_assert_str_eq(got->host, want->host);
    cr_assert_eq(got->pid, want->pid);
    cr_assert_str_eq(got->device, want->device);
    cr_assert_eq(got->capacity, want->capacity);
    cr_assert_eq(got->state, want->state);
    cr_assert_eq(got->queued_image_tokens, want->queued_image_tokens);
    cr_assert_eq(got->queued_prompt_tokens, want->queued_prompt_tokens);
    cr_assert_eq(got->running_seqs, want->running_seqs);
    cr_assert_eq(got->free_kv_blocks, want->free_kv_blocks);
    cr_assert_eq(got->images_encoded, want->images_encoded);
    cr_assert_eq(got->images_cache_hits, want->images_cache_hits);
    cr_assert_eq(got->requests_prefilled, want->requests_prefilled);
    cr_assert_eq(got->tokens_decoded, want->tokens_decoded);
    cr_assert_eq(got->tasks_done, want->tasks_done);
}

/* Lists and returns the count; *out (if non-NULL) receives the array. */
static int list_n(ms_registry *r, ms_actor_info **out) {
    ms_actor_info *a = NULL;
    int n = -1;
    cr_assert_eq(ms_registry_list(r, &a, &n), 0, "list: %s", ms_registry_errstr(r));
    if (out)
        *out = a;
    else
        free(a);
    return n;
}

Test(registry, register_then_list_shows_every_field, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    ms_registry *r = open_registry();
    cr_assert(ms_registry_connected(r));
    cr_assert_eq(ms_registry_ping(r), 0);
    ms_actor_info a = make_info("enc-1", MS_STAGES_ENCODE | MS_STAGES_PREFILL | MS_STAGES_DECODE, 3);
    int64_t before = ms_registry_now_ms();
    cr_assert_eq(ms_registry_register(r, &a), 0, "%s", ms_registry_errstr(r));
    int64_t after = ms_registry_now_ms();

    ms_actor_info *list = NULL;
    cr_assert_eq(list_n(r, &list), 1);
    assert_same(&list[0], &a);
    cr_assert_geq(list[0].heartbeat_ms, before);
    cr_assert_leq(list[0].heartbeat_ms, after);
    free(list);

    ms_actor_info one;
    cr_assert_eq(ms_registry_get(r, "enc-1", &one), 0);
    assert_same(&one, &a);
    cr_assert_eq(ms_registry_get(r, "nobody", &one), 1);

    /* The layout docs/registry.md promises. */
    cr_assert_str_eq(RAW("HGET", T_PREFIX ":actor:enc-1", "stages"), "$21");
    cr_assert_str_eq(RAW("HGET", T_PREFIX ":actor:enc-1", "state"), "$2");
    cr_assert_str_eq(RAW("SISMEMBER", T_PREFIX ":actors", "enc-1"), ":1");
    long pttl = atol(RAW("PTTL", T_PREFIX ":actor:enc-1") + 1);
    cr_assert(pttl > 0 && pttl <= MS_REGISTRY_TTL_MS, "pttl %ld", pttl);
    ms_registry_destroy(&r);
    cr_assert_null(r);
}

Test(registry, heartbeat_updates_load_and_ttl, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    ms_registry *r = open_registry();
    ms_actor_info a = make_info("dec-1", MS_STAGES_DECODE, 1);
    cr_assert_eq(ms_registry_register(r, &a), 0);
    ms_actor_info *list = NULL;
    cr_assert_eq(list_n(r, &list), 1);
    int64_t hb0 = list[0].heartbeat_ms;
    free(list);

    sleep_ms(600);
    a.queued_prompt_tokens = 777;
    a.running_seqs = 5;
    a.free_kv_blocks = 3;
    a.tokens_decoded += 42;
    a.tasks_done = 99;
    cr_assert_eq(ms_registry_heartbeat(r, &a), 0, "%s", ms_registry_errstr(r));
    cr_assert_eq(list_n(r, &list), 1);
    assert_same(&list[0], &a);
    cr_assert_gt(list[0].heartbeat_ms, hb0 + 500);
    free(list);

    /* Heartbeats keep it alive well past the TTL. */
    for (int i = 0; i < 6; i++) {
        sleep_ms(MS_REGISTRY_HEARTBEAT_MS);
        cr_assert_eq(ms_registry_heartbeat(r, &a), 0);
    }
    cr_assert_eq(list_n(r, NULL), 1);

    /* Draining is published and kept by later heartbeats. */
    cr_assert_eq(ms_registry_set_state(r, &a, MS_ACTOR_DRAINING), 0);
    cr_assert_eq(a.state, MS_ACTOR_DRAINING);
    cr_assert_eq(ms_registry_heartbeat(r, &a), 0);
    cr_assert_eq(list_n(r, &list), 1);
    cr_assert_eq(list[0].state, MS_ACTOR_DRAINING);
    free(list);
    cr_assert_str_eq(RAW("HGET", T_PREFIX ":actor:dec-1", "state"), "$8");
    ms_registry_destroy(&r);
}

Test(registry, ttl_expiry_removes_actor_and_prunes_set, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    ms_registry *r = open_registry();
    ms_actor_info a = make_info("pre-1", MS_STAGES_PREFILL, 2);
    ms_actor_info b = make_info("pre-2", MS_STAGES_PREFILL, 4);
    cr_assert_eq(ms_registry_register(r, &a), 0);
    cr_assert_eq(ms_registry_register(r, &b), 0);
    /* b heartbeats, a goes silent. */
    double t0 = now_ms();
    while (now_ms() - t0 < MS_REGISTRY_TTL_MS + 600) {
        sleep_ms(MS_REGISTRY_HEARTBEAT_MS / 2);
        cr_assert_eq(ms_registry_heartbeat(r, &b), 0);
    }
    ms_actor_info *list = NULL;
    cr_assert_eq(list_n(r, &list), 1);
    cr_assert_str_eq(list[0].id, "pre-2");
    free(list);
    cr_assert_str_eq(RAW("SISMEMBER", T_PREFIX ":actors", "pre-1"), ":0", "expired id not pruned");
    cr_assert_str_eq(RAW("SCARD", T_PREFIX ":actors"), ":1");
    ms_registry_destroy(&r);
}

Test(registry, deregister, .init = redis_up, .fini = redis_down, .timeout = T_TIMEOUT_S) {
    ms_registry *r = open_registry();
    ms_actor_info a = make_info("enc-1", MS_STAGES_ENCODE, 1);
    ms_actor_info b = make_info("enc-2", MS_STAGES_ENCODE, 2);
    cr_assert_eq(ms_registry_register(r, &a), 0);
    cr_assert_eq(ms_registry_register(r, &b), 0);
    cr_assert_eq(ms_registry_deregister(r, "enc-1"), 0);
    ms_actor_info *list = NULL;
    cr_assert_eq(list_n(r, &list), 1);
    cr_assert_str_eq(list[0].id, "enc-2");
    free(list);
    cr_assert_str_eq(RAW("EXISTS", T_PREFIX ":actor:enc-1"), ":0");
    cr_assert_str_eq(RAW("SISMEMBER", T_PREFIX ":actors", "enc-1"), ":0");
    cr_assert_eq(ms_registry_deregister(r, "enc-1"), 0, "deregistering twice is fine");
    cr_assert_eq(ms_registry_deregister(r, "enc-2"), 0);
    cr_assert_eq(list_n(r, &list), 0);
    cr_assert_null(list);
    cr_assert_eq(ms_registry_deregister(r, "bad id"), -1);
    ms_registry_destroy(&r);
}

Test(registry, two_actors_sorted_and_distinct, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    ms_registry *r = open_registry();
    ms_actor_info a = make_info("text-1", MS_STAGES_PREFILL | MS_STAGES_DECODE, 5);
    ms_actor_info b = make_info("enc-1", MS_STAGES_ENCODE, 6);
    cr_assert_eq(ms_registry_register(r, &a), 0);
    cr_assert_eq(ms_registry_register(r, &b), 0);
    ms_actor_info *list = NULL;
    cr_assert_eq(list_n(r, &list), 2);
    assert_same(&list[0], &b); /* sorted by id */
    assert_same(&list[1], &a);
    free(list);
    /* Re-registering replaces, not duplicates. */
    a.capacity = 1;
    cr_assert_eq(ms_registry_register(r, &a), 0);
    cr_assert_eq(list_n(r, &list), 2);
    cr_assert_eq(list[1].capacity, 1);
    free(list);
    /* Another prefix is another namespace. */
    char err[MS_ERR_SIZE];
    ms_registry *other = ms_registry_new("127.0.0.1", g_redis.port, "other", err, sizeof err);
    cr_assert_not_null(other);
    cr_assert_eq(list_n(other, NULL), 0);
    ms_registry_destroy(&other);
    ms_registry_destroy(&r);
}

/* Writes a complete, valid-looking hash by raw commands, then lets `field`
 * be overwritten with `value` (field NULL: leave valid). */
static void raw_actor(const char *id, const char *field, const char *value) {
    char key[128];
    snprintf(key, sizeof key, T_PREFIX ":actor:%s", id);
    RAW("DEL", key);
    cr_assert_str_eq(RAW("HSET", key, "id", id, "stages", "encode", "model", "m", "ctrl", "c",
                         "data_ep", "tcp://127.0.0.1:1", "host", "h", "pid", "1", "device", "cpu",
                         "capacity", "1", "state", "up", "heartbeat_ms", "1", "queued_image_tokens",
                         "0", "queued_prompt_tokens", "0", "running_seqs", "0", "free_kv_blocks",
                         "0", "images_encoded", "0", "images_cache_hits", "0", "requests_prefilled",
                         "0", "tokens_decoded", "0", "tasks_done", "0"),
                     ":20");
    if (field) RAW("HSET", key, field, value);
    RAW("PEXPIRE", key, "60000");
    RAW("SADD", T_PREFIX ":actors", id);
}

Test(registry, garbage_entries_are_skipped, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    ms_registry *r = open_registry();
    ms_actor_info good = make_info("good-1", MS_STAGES_ALL, 7);
    cr_assert_eq(ms_registry_register(r, &good), 0);

    raw_actor("raw-ok", NULL, NULL); /* control: the raw writer itself is valid */
    raw_actor("bad-pid", "pid", "12x");
    raw_actor("bad-pid0", "pid", "0");
    raw_actor("bad-space", "capacity", " 5");
    raw_actor("bad-neg", "running_seqs", "-1");
    raw_actor("bad-big", "tasks_done", "99999999999999999999");
    raw_actor("bad-plus", "tokens_decoded", "+5");
    raw_actor("bad-empty", "free_kv_blocks", "");
    raw_actor("bad-stage", "stages", "encode+foo");
    raw_actor("bad-stage2", "stages", "decode+decode");
    raw_actor("bad-state", "state", "sleepy");
    raw_actor("bad-idmis", "id", "someone-else");
    raw_actor("bad-ctl", "host", "ho\nst");
    char longv[400];
    memset(longv, 'x', sizeof longv - 1);
    longv[sizeof longv - 1] = 0;
    raw_actor("bad-long", "model", longv);
    /* missing fields */
    RAW("HSET", T_PREFIX ":actor:bad-partial", "id", "bad-partial", "stages", "encode");
    RAW("SADD", T_PREFIX ":actors", "bad-partial");
    /* wrong Redis type */
    RAW("SET", T_PREFIX ":actor:bad-type", "hello");
    RAW("SADD", T_PREFIX ":actors", "bad-type");
    /* a member that is no valid id, and one with no hash at all */
    RAW("SADD", T_PREFIX ":actors", "bad id!");
    RAW("SADD", T_PREFIX ":actors", "ghost");

    ms_actor_info *list = NULL;
    int n = list_n(r, &list);
    cr_assert_eq(n, 2, "expected good-1 and raw-ok only, got %d", n);
    assert_same(&list[0], &good);
    cr_assert_str_eq(list[1].id, "raw-ok");
    cr_assert_eq(list[1].stages, MS_STAGES_ENCODE);
    free(list);
    cr_assert_str_eq(RAW("SISMEMBER", T_PREFIX ":actors", "ghost"), ":0");
    cr_assert_str_eq(RAW("SISMEMBER", T_PREFIX ":actors", "bad id!"), ":0");
    cr_assert_str_eq(RAW("SISMEMBER", T_PREFIX ":actors", "bad-pid"), ":1",
                     "garbage is not ours to delete");
    ms_actor_info one;
    cr_assert_eq(ms_registry_get(r, "bad-stage", &one), 1);
    cr_assert_eq(ms_registry_get(r, "bad-type", &one), 1);

    /* A heartbeat over garbage in our own key repairs it (full re-register). */
    RAW("SET", T_PREFIX ":actor:good-1", "garbage");
    cr_assert_eq(ms_registry_heartbeat(r, &good), 0, "%s", ms_registry_errstr(r));
    cr_assert_eq(ms_registry_get(r, "good-1", &one), 0);
    assert_same(&one, &good);
    ms_registry_destroy(&r);
}

Test(registry, invalid_input_is_refused, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    char err[MS_ERR_SIZE] = "";
    cr_assert_null(ms_registry_new("127.0.0.1", g_redis.port, "bad prefix", err, sizeof err));
    cr_assert(strstr(err, "prefix") != NULL, "%s", err);
    ms_registry *r = open_registry();
    ms_actor_info a = make_info("x-1", MS_STAGES_ENCODE, 1);
    ms_actor_info bad = a;
    snprintf(bad.id, sizeof bad.id, "has space");
    cr_assert_eq(ms_registry_register(r, &bad), -1);
    bad = a;
    bad.stages = 0;
    cr_assert_eq(ms_registry_register(r, &bad), -1);
    bad = a;
    bad.stages = 8;
    cr_assert_eq(ms_registry_heartbeat(r, &bad), -1);
    bad = a;
    bad.queued_image_tokens = -3;
    cr_assert_eq(ms_registry_register(r, &bad), -1);
    cr_assert(strstr(ms_registry_errstr(r), "queued_image_tokens") != NULL, "%s",
              ms_registry_errstr(r));
    bad = a;
    bad.pid = 0;
    cr_assert_eq(ms_registry_register(r, &bad), -1);
    bad = a;
    bad.host[0] = '\t';
    cr_assert_eq(ms_registry_register(r, &bad), -1);
    cr_assert_eq(list_n(r, NULL), 0, "nothing invalid reached redis");

    unsigned st = 0;
    char buf[MS_STAGES_STR_MAX];
    cr_assert_eq(ms_stages_parse("decode+encode", &st, NULL, 0), 0);
    cr_assert_eq(st, MS_STAGES_ENCODE | MS_STAGES_DECODE);
    cr_assert_str_eq(ms_stages_name(st, buf, sizeof buf), "encode+decode");
    cr_assert_str_eq(ms_stages_name(MS_STAGES_ALL, buf, sizeof buf), "encode+prefill+decode");
    cr_assert_eq(ms_stages_parse("prefill+decode", &st, NULL, 0), 0);
    cr_assert_str_eq(ms_stages_name(st, buf, sizeof buf), "prefill+decode");
    cr_assert_eq(ms_stages_parse("", &st, NULL, 0), -1);
    cr_assert_eq(ms_stages_parse("encode+", &st, NULL, 0), -1);
    cr_assert_eq(ms_stages_parse("+encode", &st, NULL, 0), -1);
    cr_assert_eq(ms_stages_parse("Encode", &st, NULL, 0), -1);
    ms_actor_state s;
    cr_assert_eq(ms_actor_state_parse("draining", &s), 0);
    cr_assert_eq(s, MS_ACTOR_DRAINING);
    cr_assert_eq(ms_actor_state_parse("UP", &s), -1);
    ms_registry_destroy(&r);
}

/* Runs f and asserts it failed (-1) within T_CALL_BOUND_MS. */
#define ASSERT_FAILS_FAST(call)                                                                    \
    do {                                                                                           \
        double t_ = now_ms();                                                                      \
        int rc_ = (call);                                                                          \
        double dt_ = now_ms() - t_;                                                                \
        cr_assert_eq(rc_, -1, #call " should fail while redis is down");                           \
        cr_assert_lt(dt_, T_CALL_BOUND_MS, #call " blocked %.0f ms", dt_);                         \
    } while (0)

Test(registry, survives_redis_restart, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    ms_registry *r = open_registry();
    ms_actor_info a = make_info("enc-1", MS_STAGES_ENCODE, 1);
    ms_actor_info b = make_info("text-1", MS_STAGES_PREFILL | MS_STAGES_DECODE, 2);
    cr_assert_eq(ms_registry_register(r, &a), 0);
    cr_assert_eq(ms_registry_register(r, &b), 0);
    cr_assert_eq(ms_registry_log_event(r, "autoscaler", "before"), 0);

    cr_assert_eq(ms_test_redis_kill(&g_redis), 0);
    /* Down: every call fails cleanly and fast, many times over (backoff). */
    for (int i = 0; i < 20; i++) {
        ms_actor_info *list = (ms_actor_info *)&a; /* must be reset to NULL */
        int n = 7;
        ASSERT_FAILS_FAST(ms_registry_heartbeat(r, &a));
        ASSERT_FAILS_FAST(ms_registry_list(r, &list, &n));
        cr_assert_null(list);
        cr_assert_eq(n, 0);
        ASSERT_FAILS_FAST(ms_registry_ping(r));
        ASSERT_FAILS_FAST(ms_registry_log_event(r, "autoscaler", "down"));
        ms_actor_info one;
        ASSERT_FAILS_FAST(ms_registry_get(r, "enc-1", &one));
        ASSERT_FAILS_FAST(ms_registry_set_state(r, &b, MS_ACTOR_DRAINING));
        cr_assert_neq(ms_registry_errstr(r)[0], 0);
        sleep_ms(25);
    }
    cr_assert_eq(b.state, MS_ACTOR_DRAINING, "set_state keeps the state for re-registration");

    cr_assert_gt(ms_test_redis_restart(&g_redis), 0);
    cr_assert_str_eq(RAW("EXISTS", T_PREFIX ":actor:enc-1"), ":0", "restart should lose data");
    /* The next heartbeats re-register; backoff is at most 1 s. */
    double t0 = now_ms();
    int ok_a = -1, ok_b = -1;
    while (now_ms() - t0 < 5000 && (ok_a != 0 || ok_b != 0)) {
        if (ok_a != 0) ok_a = ms_registry_heartbeat(r, &a);
        if (ok_b != 0) ok_b = ms_registry_heartbeat(r, &b);
        if (ok_a != 0 || ok_b != 0) sleep_ms(MS_REGISTRY_HEARTBEAT_MS / 5);
    }
    cr_assert_eq(ok_a, 0, "no re-registration: %s", ms_registry_errstr(r));
    cr_assert_eq(ok_b, 0, "no re-registration: %s", ms_registry_errstr(r));
    cr_assert_lt(now_ms() - t0, MS_REGISTRY_BACKOFF_MAX_MS + 1000);
    ms_actor_info *list = NULL;
    cr_assert_eq(list_n(r, &list), 2);
    assert_same(&list[0], &a);
    assert_same(&list[1], &b);
    cr_assert_eq(list[1].state, MS_ACTOR_DRAINING);
    free(list);
    long pttl = atol(RAW("PTTL", T_PREFIX ":actor:enc-1") + 1);
    cr_assert(pttl > 0 && pttl <= MS_REGISTRY_TTL_MS, "pttl %ld", pttl);
    cr_assert_eq(ms_registry_log_event(r, "autoscaler", "after"), 0);
    ms_registry_destroy(&r);
}

Test(registry, restart_without_calls_in_between, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    /* The connection goes stale silently: the first call after the restart
     * reconnects and succeeds at once (one resend for idempotent commands). */
    ms_registry *r = open_registry();
    ms_actor_info a = make_info("enc-1", MS_STAGES_ENCODE, 1);
    cr_assert_eq(ms_registry_register(r, &a), 0);
    cr_assert_gt(ms_test_redis_restart(&g_redis), 0);
    cr_assert_eq(ms_registry_heartbeat(r, &a), 0, "%s", ms_registry_errstr(r));
    cr_assert_eq(list_n(r, NULL), 1);
    ms_registry_destroy(&r);
}

Test(registry, created_while_redis_down, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    cr_assert_eq(ms_test_redis_kill(&g_redis), 0);
    double t0 = now_ms();
    ms_registry *r = open_registry();
    cr_assert_lt(now_ms() - t0, T_CALL_BOUND_MS, "new blocked");
    cr_assert_eq(ms_registry_connected(r), 0);
    ms_actor_info a = make_info("enc-9", MS_STAGES_ENCODE, 9);
    ASSERT_FAILS_FAST(ms_registry_register(r, &a));
    ASSERT_FAILS_FAST(ms_registry_heartbeat(r, &a));
    cr_assert(strstr(ms_registry_errstr(r), "redis") != NULL, "%s", ms_registry_errstr(r));

    cr_assert_gt(ms_test_redis_restart(&g_redis), 0);
    t0 = now_ms();
    int ok = -1;
    while (ok != 0 && now_ms() - t0 < 5000) {
        ok = ms_registry_heartbeat(r, &a);
        if (ok != 0) sleep_ms(50);
    }
    cr_assert_eq(ok, 0, "%s", ms_registry_errstr(r));
    cr_assert(ms_registry_connected(r));
    ms_actor_info *list = NULL;
    cr_assert_eq(list_n(r, &list), 1);
    assert_same(&list[0], &a);
    free(list);
    ms_registry_destroy(&r);
}

Test(registry, hung_redis_does_not_block, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    ms_registry *r = open_registry();
    ms_actor_info a = make_info("enc-1", MS_STAGES_ENCODE, 1);
    cr_assert_eq(ms_registry_register(r, &a), 0);
    cr_assert_eq(kill(g_redis.pid, SIGSTOP), 0);
    for (int i = 0; i < 3; i++) {
        ASSERT_FAILS_FAST(ms_registry_heartbeat(r, &a));
        ms_actor_info *list = NULL;
        int n = 0;
        ASSERT_FAILS_FAST(ms_registry_list(r, &list, &n));
    }
    cr_assert_eq(kill(g_redis.pid, SIGCONT), 0);
    double t0 = now_ms();
    int ok = -1;
    while (ok != 0 && now_ms() - t0 < 5000) {
        ok = ms_registry_heartbeat(r, &a);
        if (ok != 0) sleep_ms(50);
    }
    cr_assert_eq(ok, 0, "%s", ms_registry_errstr(r));
    cr_assert_eq(list_n(r, NULL), 1);
    ms_registry_destroy(&r);
}

Test(registry, event_log_is_capped_newest_first, .init = redis_up, .fini = redis_down,
     .timeout = T_TIMEOUT_S) {
    ms_registry *r = open_registry();
    char **lines = NULL;
    int n = -1;
    cr_assert_eq(ms_registry_events(r, "autoscaler", 10, &lines, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_null(lines);
    for (int i = 0; i < MS_REGISTRY_EVENTS_MAX + 5; i++) {
        char text[64];
        snprintf(text, sizeof text, "scale encode %d", i);
        cr_assert_eq(ms_registry_log_event(r, "autoscaler", text), 0, "%s", ms_registry_errstr(r));
    }
    char llen[32];
    snprintf(llen, sizeof llen, ":%d", MS_REGISTRY_EVENTS_MAX);
    cr_assert_str_eq(RAW("LLEN", T_PREFIX ":events:autoscaler"), llen);
    cr_assert_eq(ms_registry_events(r, "autoscaler", 3, &lines, &n), 0);
    cr_assert_eq(n, 3);
    char want[64];
    snprintf(want, sizeof want, " scale encode %d", MS_REGISTRY_EVENTS_MAX + 4);
    const char *sp = strchr(lines[0], ' ');
    cr_assert_not_null(sp);
    cr_assert_str_eq(sp, want);
    cr_assert_gt(atoll(lines[0]), 1600000000000LL, "epoch ms prefix: %s", lines[0]);
    ms_registry_events_free(&lines, n);
    cr_assert_null(lines);

    /* Overlong text is cut, not refused. */
    char *big = malloc(3 * MS_REGISTRY_EVENT_TEXT_MAX);
    memset(big, 'y', 3 * MS_REGISTRY_EVENT_TEXT_MAX - 1);
    big[3 * MS_REGISTRY_EVENT_TEXT_MAX - 1] = 0;
    cr_assert_eq(ms_registry_log_event(r, "broker", big), 0);
    free(big);
    cr_assert_eq(ms_registry_events(r, "broker", 1, &lines, &n), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(strlen(strchr(lines[0], ' ') + 1), (size_t)MS_REGISTRY_EVENT_TEXT_MAX);
    ms_registry_events_free(&lines, n);
    cr_assert_eq(ms_registry_log_event(r, "bad name", "x"), -1);
    ms_registry_destroy(&r);
}

/* A fake Redis that answers SMEMBERS with MS_REGISTRY_LIST_MAX long ids, then
 * resets the connection (closes with unread data) while the registry sends its
 * big HGETALL pipeline: the list fails with -1, fast, without a crash, and the
 * one reconnect-and-resend finds nobody listening. (The SIGPIPE guard in
 * s_exchange covers a reset between two partial writes of one flush; loopback
 * socket buffers absorb this pipeline in one write, so this test does not
 * reach that window.) */
Test(registry, peer_reset_mid_list_fails_cleanly, .timeout = T_TIMEOUT_S) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(lfd, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    int small = 4096; /* a small window: the pipeline cannot go out in one write */
    setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
    cr_assert_eq(listen(lfd, 4), 0);
    int port = ntohs(a.sin_port);

    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int c = accept(lfd, NULL, NULL);
        close(lfd);
        char buf[4096];
        if (c < 0 || read(c, buf, sizeof buf) <= 0) _exit(1); /* the SMEMBERS */
        int nmem = MS_REGISTRY_LIST_MAX;
        char id[MS_ACTOR_ID_MAX];
        memset(id, 'a', sizeof id - 1);
        id[sizeof id - 1] = 0;
        size_t cap = (size_t)nmem * 80 + 32, len = 0;
        char *out = malloc(cap);
        len += (size_t)snprintf(out, cap, "*%d\r\n", nmem);
        for (int i = 0; i < nmem; i++) {
            snprintf(id, sizeof id, "%05d", i);
            id[5] = 'a';
            len += (size_t)snprintf(out + len, cap - len, "$%d\r\n%s\r\n", MS_ACTOR_ID_MAX - 1, id);
        }
        for (size_t off = 0; off < len;) {
            ssize_t w = write(c, out + off, len - off);
            if (w <= 0) _exit(1);
            off += (size_t)w;
        }
        if (read(c, buf, 16) <= 0) _exit(1); /* the start of the pipeline; the rest stays unread */
        close(c);                            /* unread data: the kernel answers with RST */
        _exit(0);
    }
    close(lfd);
    char err[MS_ERR_SIZE];
    ms_registry *r = ms_registry_new("127.0.0.1", port, T_PREFIX, err, sizeof err);
    cr_assert_not_null(r);
    ms_actor_info *list = NULL;
    int n = 0;
    double t0 = now_ms();
    cr_assert_eq(ms_registry_list(r, &list, &n), -1);
    cr_assert_lt(now_ms() - t0, T_CALL_BOUND_MS);
    cr_assert_null(list);
    cr_assert_neq(ms_registry_errstr(r)[0], 0);
    int status = 0;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fake redis failed");
    ms_registry_destroy(&r);
}
