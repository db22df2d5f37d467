/* itest_cluster.c — the local cluster end to end: `modserve up` starts a real
 * redis-server, modserve-broker and modserve-actor processes on loopback with
 * the tiny models ($MS_TEST_MODELS); requests go through the producer client
 * library (the workload player, schemas/workload.h).
 *
 *   layout_*        a mixed workload equals modserve-run token for token, in the
 *                   modserve, monolith and disagg layouts; `modserve down` drains
 *   routing         text-only requests never reach an encoder; a 6-image request is
 *                   encoded on >= 2 encoders (counters the actors publish in Redis)
 *   kill_*          kill -9 of an encoder / text actor / prefill / decode actor
 *                   while tokens stream: every request ends (Done or Error), no
 *                   token index missing or repeated, answers that completed equal
 *                   modserve-run, a request sent right after the kill is served
 *                   within T_RECOVER_MS, `modserve scale` starts a replacement
 *   redis_restart   Redis killed and restarted on its port mid-workload: requests
 *                   keep completing, actors re-register
 *   malformed       bad frames, wrong types, unknown types and fields, too many or
 *                   oversized images, bad parameters: Error replies while a
 *                   request in flight and a later one are served
 *
 * Teardown: every test ends in .fini with `modserve down --force` plus SIGKILL
 * of each process group recorded in the run directory's pid files; an alarm
 * (T_ALARM_S) does the same and exits before Criterion's timeout could kill
 * the test process. Logs of a failed test are printed and its run directory
 * kept.
 */
#include <criterion/criterion.h>
#include <czmq.h>
#include <dirent.h>
#include <inttypes.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cluster.h"
#include "ms_common.h"
#include "ms_test.h"
#include "registry.h"
#include "wire.h"
#include "workload.h"

#define T_TIMEOUT_S  280   /* Criterion timeout of each test */
#define T_ALARM_S    250   /* our own deadline: tear down and exit first */
#define T_CMD_MS     90000 /* a modserve command (up, scale, down) at most */
#define T_WAIT_MS    30000 /* the player gives up after this long without an event */
#define T_RECOVER_MS (8 * MS_REGISTRY_HEARTBEAT_MS) /* "serves again within a few heartbeats" */
#define T_REPLY_MS   10000 /* an Error reply to a malformed message, at most */
#define T_MAX_PROCS  64
#define T_MAX_TOKENS 256

static const char *const T_IMAGES[] = {
    "sample.jpg",      "j_333x517.jpg",      "j_517x333.jpg",   "p_333x517.png",
    "p_40x30_rgb.png", "w_40x30_lossy.webp", "j_64x48_420.jpg", "p_50x170_tall.png",
};
#define T_N_IMAGES ((int)(sizeof(T_IMAGES) / sizeof(T_IMAGES[0])))

/* One cluster per test (Criterion runs each test in its own process). */
static struct {
    char dir[128];                 /* run directory */
    ms_cluster_conf conf;          /* RUNDIR/cluster.conf */
    char front[MS_CLUSTER_EP_MAX]; /* broker front endpoint */
    bool passed;                   /* the test body reached its end */
    uint8_t *img[T_N_IMAGES];      /* fixture image bytes */
    size_t img_len[T_N_IMAGES];
    char img_path[T_N_IMAGES][1024];
} g;

/* Process groups to kill from the alarm handler (async-signal-safe copy). */
static volatile pid_t g_pgids[T_MAX_PROCS];
static volatile sig_atomic_t g_n_pgids;

static void s_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double s_now_ms(void) {
    return ms_now_s() * 1000.0;
}

static const char *s_model(const char *name) {
    return ms_test_path(ms_test_models_dir(), name);
}

/* Re-reads the pid files into the kill list. */
static void s_track(void) {
    ms_proc procs[T_MAX_PROCS];
    int n = ms_pidfile_list(g.dir, procs, T_MAX_PROCS, NULL, 0);
    /* keep groups recorded earlier (a process may have lost its pid file) */
    for (int i = 0; i < n; i++) {
        bool known = false;
        for (int k = 0; k < g_n_pgids; k++)
            known |= g_pgids[k] == procs[i].pid;
        if (!known && g_n_pgids < T_MAX_PROCS) {
            g_pgids[g_n_pgids] = procs[i].pid;
            g_n_pgids = g_n_pgids + 1;
        }
    }
}

static void s_kill_all(void) {
    for (int i = 0; i < g_n_pgids; i++)
        if (g_pgids[i] > 1) kill(-g_pgids[i], SIGKILL);
}

static void s_on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "itest_cluster: test deadline passed: killing the cluster\n";
    ssize_t w = write(2, msg, sizeof(msg) - 1);
    (void)w;
    s_kill_all();
    _exit(3);
}

/* Runs argv (a path first) with output to log; waits up to timeout_ms.
 * Returns its exit status, or -1 if it had to be killed. */
static int s_run(char *const argv[], const char *log, int timeout_ms) {
    ms_proc p = {.name = "cmd"};
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_proc_spawn(&p, argv, log, err, sizeof(err)), 0, "%s", err);
    double deadline = s_now_ms() + timeout_ms;
    for (;;) {
        int status = 0;
        pid_t r = waitpid(p.pid, &status, WNOHANG);
        if (r == p.pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        if (s_now_ms() > deadline) {
            kill(-p.pid, SIGKILL);
            waitpid(p.pid, NULL, 0);
            return -1;
        }
        s_sleep_ms(20);
    }
}

static void s_print_file(const char *path, int max_lines) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        n++;
    rewind(f);
    int skip = n > max_lines ? n - max_lines : 0, i = 0;
    fprintf(stderr, "==== %s%s ====\n", path, skip ? " (tail)" : "");
    while (fgets(line, sizeof(line), f))
        if (i++ >= skip) fputs(line, stderr);
    fclose(f);
}

/* ---- setup / teardown ---------------------------------------------------------- */

static void s_init(void) {
    memset(&g, 0, sizeof(g));
    g_n_pgids = 0;
    signal(SIGALRM, s_on_alarm);
    alarm(T_ALARM_S);
    zsys_init();
    zsys_handler_set(NULL);
    for (int i = 0; i < T_N_IMAGES; i++) {
        snprintf(g.img_path[i], sizeof(g.img_path[i]), "%s/tests/data/images/%s",
                 ms_test_source_dir(), T_IMAGES[i]);
        char err[MS_ERR_SIZE];
        g.img[i] = ms_read_file(g.img_path[i], 64u << 20, &g.img_len[i], err, sizeof(err));
        cr_assert_not_null(g.img[i], "%s", err);
    }
}

static void s_fini(void) {
    alarm(0);
    if (g.dir[0]) {
        char bin[1024], log[256];
        snprintf(bin, sizeof(bin), "%s/modserve", ms_test_bin_dir());
        snprintf(log, sizeof(log), "%s/down.log", g.dir);
        char *argv[] = {bin, "down", "--dir", g.dir, "--force", NULL};
        s_track();
        s_run(argv, log, 20000);
        s_kill_all();
        if (!g.passed) {
            char path[512];
            snprintf(path, sizeof(path), "%s/up.log", g.dir);
            s_print_file(path, 40);
            char logs[256];
            snprintf(logs, sizeof(logs), "%s/logs", g.dir);
            DIR *d = opendir(logs);
            struct dirent *de;
            while (d && (de = readdir(d)) != NULL) {
                if (de->d_name[0] == '.') continue;
                snprintf(path, sizeof(path), "%s/%s", logs, de->d_name);
                s_print_file(path, 30);
            }
            if (d) closedir(d);
            fprintf(stderr, "itest_cluster: run directory kept: %s\n", g.dir);
        } else if (!getenv("MS_KEEP_RUNDIR")) {
            char cmd[256];
            snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g.dir);
            if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", g.dir);
        }
    }
    for (int i = 0; i < T_N_IMAGES; i++)
        free(g.img[i]);
}

/* modserve up --layout L with the tiny models, free ports, 1 thread per actor. */
static void s_up(const char *layout, const char *const *extra, int n_extra) {
    snprintf(g.dir, sizeof(g.dir), "/tmp/ms-itc-XXXXXX");
    cr_assert_not_null(mkdtemp(g.dir));
    char bin[1024], lm[1024], mm[1024], log[256];
    snprintf(bin, sizeof(bin), "%s/modserve", ms_test_bin_dir());
    snprintf(lm, sizeof(lm), "%s", s_model("tiny-lm.gguf"));
    snprintf(mm, sizeof(mm), "%s", s_model("tiny-mmproj.gguf"));
    snprintf(log, sizeof(log), "%s/up.log", g.dir);
    char *argv[40] = {bin,         "up", "--dir",     g.dir, "--layout",    (char *)layout,
                      "--model",   lm,   "--mmproj",  mm,    "--port-base", "auto",
                      "--threads", "1",  "--timeout", "60"};
    int n = 16;
    for (int i = 0; i < n_extra && n < 38; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    int rc = s_run(argv, log, T_CMD_MS);
    s_track();
    cr_assert_eq(rc, 0, "modserve up --layout %s failed (%d): see %s", layout, rc, log);
    ms_cluster_conf_default(&g.conf);
    char conf[256], err[MS_ERR_SIZE];
    snprintf(conf, sizeof(conf), "%s/cluster.conf", g.dir);
    cr_assert_eq(ms_cluster_conf_load(&g.conf, conf, err, sizeof(err)), 0, "%s", err);
    ms_cluster_front_ep(&g.conf, g.front, sizeof(g.front));
}

/* `modserve ARGS... --dir RUNDIR`: its exit status; output in RUNDIR/NAME.log. */
static int s_modserve(const char *name, const char *const *args, int n_args) {
    char bin[1024], log[256];
    snprintf(bin, sizeof(bin), "%s/modserve", ms_test_bin_dir());
    snprintf(log, sizeof(log), "%s/%s.log", g.dir, name);
    char *argv[24] = {bin};
    int n = 1;
    for (int i = 0; i < n_args && n < 20; i++)
        argv[n++] = (char *)args[i];
    argv[n++] = "--dir";
    argv[n++] = g.dir;
    argv[n] = NULL;
    int rc = s_run(argv, log, T_CMD_MS);
    s_track();
    return rc;
}

static ms_registry *s_registry(void) {
    char err[MS_ERR_SIZE];
    ms_registry *r = ms_registry_new("127.0.0.1", ms_cluster_redis_port(&g.conf), g.conf.prefix,
                                     err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    return r;
}

/* ---- the reference: modserve-run ------------------------------------------------ */

/* The tokens modserve-run generates for r; returns their count. */
static int s_reference(const ms_play_req *r, int32_t *out, int cap) {
    char bin[1024], lm[1024], mm[1024], log[256], n[16], temp[32], seed[32];
    snprintf(bin, sizeof(bin), "%s/modserve-run", ms_test_bin_dir());
    snprintf(lm, sizeof(lm), "%s", s_model("tiny-lm.gguf"));
    snprintf(mm, sizeof(mm), "%s", s_model("tiny-mmproj.gguf"));
    snprintf(log, sizeof(log), "%s/ref.log", g.dir);
    snprintf(n, sizeof(n), "%d", r->w.max_tokens);
    snprintf(temp, sizeof(temp), "%.9g", (double)r->w.temperature);
    snprintf(seed, sizeof(seed), "%" PRIu64, r->w.seed);
    char *argv[48] = {bin,  "-m",    lm,       "--mmproj", mm,       "-p", (char *)r->w.prompt,
                      "-n", n,       "--temp", temp,       "--seed", seed, "-t",
                      "1",  "--ids", "-q"};
    int k = 17;
    for (int i = 0; i < r->w.n_images; i++) {
        argv[k++] = "--image";
        argv[k++] = g.img_path[r->w.image[i]];
    }
    argv[k] = NULL;
    unlink(log);
    int rc = s_run(argv, log, 60000);
    cr_assert_eq(rc, 0, "modserve-run failed for %s", r->id);
    size_t len = 0;
    char err[MS_ERR_SIZE];
    char *text = (char *)ms_read_file(log, 1u << 20, &len, err, sizeof(err));
    cr_assert_not_null(text, "%s", err);
    char *ids = strstr(text, "ids:");
    cr_assert_not_null(ids, "modserve-run printed no ids for %s", r->id);
    int count = 0;
    char *p = ids + 4;
    while (*p && *p != '\n' && count < cap) {
        char *end = NULL;
        long v = strtol(p, &end, 10);
        if (end == p) break;
        out[count++] = (int32_t)v;
        p = end;
    }
    free(text);
    return count;
}

/* Asserts that a completed request equals modserve-run, token for token. */
static void s_expect_reference(const ms_play_req *r) {
    int32_t want[T_MAX_TOKENS];
    int n = s_reference(r, want, T_MAX_TOKENS);
    int k = 0;
    while (k < n && k < r->n_ids && want[k] == r->ids[k])
        k++;
    cr_expect(k == n && k == r->n_ids,
              "%s (%d images, temp %.1f, seed %" PRIu64 "): differs from modserve-run at token "
              "%d (%d tokens received, %d expected)",
              r->id, r->w.n_images, (double)r->w.temperature, r->w.seed, k, r->n_ids, n);
}

/* ---- playing requests ----------------------------------------------------------- */

static void s_play(ms_play_req *reqs, int n, int concurrency, ms_play_event_fn fn, void *user,
                   ms_play_summary *sum) {
    ms_play_opts o = {.endpoint = g.front,
                      .concurrency = concurrency,
                      .wait_ms = T_WAIT_MS,
                      .images = (const uint8_t *const *)g.img,
                      .image_len = g.img_len,
                      .n_images = T_N_IMAGES,
                      .on_event = fn,
                      .user = user,
                      .quiet = true};
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_play_run(&o, reqs, n, sum, err, sizeof(err)), 0, "%s", err);
}

static ms_play_req *s_make(const ms_workload_params *wp) {
    ms_workload_request w[256];
    char err[MS_ERR_SIZE];
    cr_assert_leq(wp->n_requests, 256);
    cr_assert_eq(ms_workload_make(wp, w, err, sizeof(err)), 0, "%s", err);
    ms_play_req *reqs = calloc((size_t)wp->n_requests, sizeof(*reqs));
    ms_play_reqs_init(reqs, w, wp->n_requests);
    return reqs;
}

/* One request, played alone; returns its E2E in ms (asserting it completed). */
static double s_probe(const char *what, int n_images) {
    ms_workload_request w = {.n_images = n_images,
                             .prompt = n_images ? "What is in the picture?" : "List three fruits.",
                             .max_tokens = 8,
                             .temperature = 0.0f,
                             .seed = 5};
    for (int i = 0; i < n_images; i++)
        w.image[i] = i % T_N_IMAGES;
    ms_play_req r;
    ms_play_reqs_init(&r, &w, 1);
    ms_play_summary sum;
    s_play(&r, 1, 1, NULL, NULL, &sum);
    double e2e = r.ended ? (r.t_end - r.t_submit) / 1e6 : -1.0;
    cr_expect(r.ok, "%s: the probe request failed: %s", what, r.error);
    ms_play_reqs_fini(&r, 1);
    return e2e;
}

/* ---- layouts: a mixed workload equals modserve-run --------------------------------- */

static void s_layout_case(const char *layout) {
    s_up(layout, NULL, 0);
    ms_workload_params wp = {.n_requests = 12,
                             .image_ratio = 0.5,
                             .max_images = 3,
                             .max_tokens = 16,
                             .temperature = -1.0, /* greedy and 0.8 alternately */
                             .seed = 7,
                             .n_image_files = T_N_IMAGES};
    ms_play_req *reqs = s_make(&wp);
    ms_play_summary sum;
    s_play(reqs, wp.n_requests, 4, NULL, NULL, &sum);
    cr_expect_eq(sum.protocol_errors, 0);
    cr_expect_eq(sum.ok, wp.n_requests, "%d of %d requests failed", sum.errors, wp.n_requests);
    for (int i = 0; i < wp.n_requests; i++) {
        cr_expect(reqs[i].ok, "%s failed: %s", reqs[i].id, reqs[i].error);
        if (reqs[i].ok) s_expect_reference(&reqs[i]);
    }
    ms_play_reqs_fini(reqs, wp.n_requests);
    free(reqs);

    /* a graceful down: actors drain, everything exits, pid files go */
    ms_proc before[T_MAX_PROCS];
    int nb = ms_pidfile_list(g.dir, before, T_MAX_PROCS, NULL, 0);
    cr_expect_geq(nb, 3);
    const char *down[] = {"down"};
    cr_expect_eq(s_modserve("down", down, 1), 0);
    for (int i = 0; i < nb; i++)
        cr_expect_not(ms_proc_alive(&before[i]), "%s survived modserve down", before[i].name);
    ms_proc after[T_MAX_PROCS];
    cr_expect_eq(ms_pidfile_list(g.dir, after, T_MAX_PROCS, NULL, 0), 0);
    g.passed = true;
}

TestSuite(cluster, .init = s_init, .fini = s_fini, .timeout = T_TIMEOUT_S);

Test(cluster, layout_modserve_equals_modserve_run) {
    s_layout_case("modserve");
}

Test(cluster, layout_monolith_equals_modserve_run) {
    s_layout_case("monolith");
}

Test(cluster, layout_disagg_equals_modserve_run) {
    s_layout_case("disagg");
}

/* ---- routing by modality, from the published counters ----------------------------- */

typedef struct t_counters {
    int n;               /* encoders seen */
    int64_t encoded[16]; /* images_encoded per encoder (by id order) */
    char id[16][MS_ACTOR_ID_MAX];
    int64_t enc_total; /* images_encoded + images_cache_hits + tasks_done of encoders */
    int64_t prefilled; /* requests_prefilled over all actors */
} t_counters;

static void s_counters(ms_registry *reg, t_counters *c) {
    memset(c, 0, sizeof(*c));
    ms_actor_info *a = NULL;
    int n = 0;
    cr_assert_eq(ms_registry_list(reg, &a, &n), 0, "%s", ms_registry_errstr(reg));
    for (int i = 0; i < n; i++) {
        c->prefilled += a[i].requests_prefilled;
        if (!(a[i].stages & MS_STAGES_ENCODE) || c->n >= 16) continue;
        snprintf(c->id[c->n], MS_ACTOR_ID_MAX, "%s", a[i].id);
        c->encoded[c->n++] = a[i].images_encoded;
        c->enc_total += a[i].images_encoded + a[i].images_cache_hits + a[i].tasks_done;
    }
    free(a);
}

Test(cluster, routing_text_skips_encoders_images_spread) {
    const char *extra[] = {"--count", "enc=3", "--count", "text=1"};
    s_up("modserve", extra, 4);
    ms_registry *reg = s_registry();
    t_counters c0, c1;
    s_counters(reg, &c0);
    cr_assert_eq(c0.n, 3, "expected 3 encoders, the registry lists %d", c0.n);

    /* text only: prefills happen, encoders see nothing */
    ms_workload_params wp = {.n_requests = 8,
                             .image_ratio = 0.0,
                             .max_images = 1,
                             .max_tokens = 8,
                             .temperature = 0.0,
                             .seed = 3};
    ms_play_req *reqs = s_make(&wp);
    ms_play_summary sum;
    s_play(reqs, wp.n_requests, 4, NULL, NULL, &sum);
    cr_assert_eq(sum.ok, wp.n_requests, "%d text requests failed", sum.errors);
    ms_play_reqs_fini(reqs, wp.n_requests);
    free(reqs);
    double deadline = s_now_ms() + 4 * MS_REGISTRY_HEARTBEAT_MS + 1000;
    do {
        s_sleep_ms(100);
        s_counters(reg, &c1);
    } while (c1.prefilled < c0.prefilled + wp.n_requests && s_now_ms() < deadline);
    cr_expect_geq(c1.prefilled, c0.prefilled + wp.n_requests,
                  "the text actor's requests_prefilled did not grow (counters not published?)");
    s_sleep_ms(2 * MS_REGISTRY_HEARTBEAT_MS);
    s_counters(reg, &c1);
    cr_expect_eq(c1.enc_total, c0.enc_total,
                 "text-only requests reached an encoder (images+hits+tasks %" PRId64 " -> %" PRId64
                 ")",
                 c0.enc_total, c1.enc_total);

    /* six distinct images in one request: split over at least two encoders */
    ms_workload_request w = {.n_images = 6,
                             .prompt = "Describe these images.",
                             .max_tokens = 8,
                             .temperature = 0.0f,
                             .seed = 11};
    for (int i = 0; i < 6; i++)
        w.image[i] = i;
    ms_play_req r;
    ms_play_reqs_init(&r, &w, 1);
    s_play(&r, 1, 1, NULL, NULL, &sum);
    cr_assert(r.ok, "the 6-image request failed: %s", r.error);
    s_expect_reference(&r);
    ms_play_reqs_fini(&r, 1);
    t_counters c2;
    int64_t delta = 0;
    deadline = s_now_ms() + 4 * MS_REGISTRY_HEARTBEAT_MS + 1000;
    do {
        s_sleep_ms(100);
        s_counters(reg, &c2);
        delta = 0;
        for (int i = 0; i < c2.n; i++)
            delta += c2.encoded[i] - c1.encoded[i];
    } while (delta < 6 && s_now_ms() < deadline);
    cr_expect_eq(delta, 6, "images_encoded grew by %" PRId64 ", not 6", delta);
    int used = 0;
    char spread[256] = "";
    for (int i = 0; i < c2.n; i++) {
        int64_t d = c2.encoded[i] - c1.encoded[i];
        used += d > 0;
        size_t l = strlen(spread);
        snprintf(spread + l, sizeof(spread) - l, " %s:%" PRId64, c2.id[i], d);
    }
    cr_expect_geq(used, 2, "a 6-image request was encoded on %d encoder(s):%s", used, spread);
    cr_log_info("6 images over the encoders:%s", spread);
    ms_registry_destroy(&reg);
    g.passed = true;
}

/* ---- kill -9 in the middle of a streaming workload -------------------------------- */

typedef struct t_killer {
    const char *victim; /* actor id, or "redis" */
    int after_events;   /* token events seen before the kill */
    int events;         /* token events seen */
    bool killed;
    double t_kill_ms;
    pthread_t probe; /* a request sent right after the kill */
    bool probe_started;
    int probe_images;
    double probe_e2e_ms; /* its E2E, -1 if it failed */
    char probe_error[MS_ERR_SIZE];
} t_killer;

static void *s_probe_thread(void *arg) {
    t_killer *k = arg;
    ms_workload_request w = {.n_images = k->probe_images,
                             .prompt = "What colours do you see?",
                             .max_tokens = 6,
                             .temperature = 0.0f,
                             .seed = 9};
    for (int i = 0; i < k->probe_images; i++)
        w.image[i] = 4 + i;
    ms_play_req r;
    ms_play_reqs_init(&r, &w, 1);
    ms_play_opts o = {.endpoint = g.front,
                      .concurrency = 1,
                      .wait_ms = T_WAIT_MS,
                      .images = (const uint8_t *const *)g.img,
                      .image_len = g.img_len,
                      .n_images = T_N_IMAGES,
                      .quiet = true};
    ms_play_summary sum;
    char err[MS_ERR_SIZE];
    k->probe_e2e_ms = -1.0;
    if (ms_play_run(&o, &r, 1, &sum, err, sizeof(err)) != 0)
        snprintf(k->probe_error, sizeof(k->probe_error), "%s", err);
    else if (!r.ok)
        snprintf(k->probe_error, sizeof(k->probe_error), "%s", r.error);
    else
        k->probe_e2e_ms = (r.t_end - r.t_submit) / 1e6;
    ms_play_reqs_fini(&r, 1);
    return NULL;
}

static void s_kill_victim(t_killer *k) {
    ms_proc p;
    char err[MS_ERR_SIZE];
    if (ms_pidfile_read(g.dir, k->victim, &p, err, sizeof(err)) != 0) {
        cr_log_error("cannot find %s: %s", k->victim, err);
        return;
    }
    cr_expect_eq(ms_proc_signal(&p, SIGKILL), 0, "%s was not running", k->victim);
    ms_proc_wait_gone(&p, 5000);
    k->killed = true;
    k->t_kill_ms = s_now_ms();
}

static void s_on_event_kill(const ms_play_req *r, void *user) {
    t_killer *k = user;
    if (r->ended || k->killed) return;
    if (++k->events < k->after_events) return;
    s_kill_victim(k);
    if (k->killed && pthread_create(&k->probe, NULL, s_probe_thread, k) == 0)
        k->probe_started = true;
}

/* Checks what every request of a disturbed workload got: an end, a clean
 * token stream, and for those that completed the reference answer. */
static void s_check_disturbed(ms_play_req *reqs, int n, const ms_play_summary *sum,
                              const t_killer *k) {
    int events = 0, before = 0, after = 0;
    for (int i = 0; i < n; i++) {
        events += reqs[i].n_token_events;
        double t_end_ms = reqs[i].t_end / 1e6;
        if (reqs[i].ended && t_end_ms < k->t_kill_ms) before++;
        if (reqs[i].t_submit / 1e6 > k->t_kill_ms) after++;
    }
    double last_end_ms = 0;
    for (int i = 0; i < n; i++)
        if (reqs[i].ended && reqs[i].t_end / 1e6 > last_end_ms) last_end_ms = reqs[i].t_end / 1e6;
    cr_log_info("workload: %.0f ms, %d token events; at the kill %d requests had ended and %d "
                "were not yet submitted; the last ended %.0f ms after the kill",
                sum->wall_s * 1000.0, events, before, after, last_end_ms - k->t_kill_ms);
    /* work caught by the kill is redone once the actor is known dead (its TTL) */
    cr_expect_leq(last_end_ms - k->t_kill_ms, (double)(MS_REGISTRY_TTL_MS + T_RECOVER_MS),
                  "requests ended up to %.0f ms after the kill", last_end_ms - k->t_kill_ms);
    cr_expect_eq(sum->protocol_errors, 0, "token indices missing, repeated or out of order");
    cr_expect_not(sum->gave_up, "the workload stalled");
    int n_err = 0;
    for (int i = 0; i < n; i++) {
        ms_play_req *r = &reqs[i];
        cr_expect(r->ended, "%s never ended", r->id);
        if (!r->ok) {
            n_err++;
            cr_expect(r->error[0] != '\0', "%s failed without an explicit error", r->id);
            cr_expect(strncmp(r->error, "token index", 11) != 0, "%s: %s", r->id, r->error);
            cr_log_info("%s ended with an error: %s", r->id, r->error);
        } else {
            s_expect_reference(r);
        }
    }
    cr_log_info("%d of %d requests completed, %d explicit errors", n - n_err, n, n_err);
}

static void s_kill_case(const char *layout, const char *const *extra, int n_extra,
                        const char *victim, const char *group, double image_ratio) {
    s_up(layout, extra, n_extra);
    ms_workload_params wp = {.n_requests = 16,
                             .image_ratio = image_ratio,
                             .max_images = 3,
                             .max_tokens = 96,
                             .temperature = -1.0,
                             .seed = 21,
                             .n_image_files = T_N_IMAGES};
    ms_play_req *reqs = s_make(&wp);
    t_killer k = {.victim = victim, .after_events = 12, .probe_images = image_ratio > 0 ? 1 : 0};
    ms_play_summary sum;
    s_play(reqs, wp.n_requests, 4, s_on_event_kill, &k, &sum);
    cr_assert(k.killed, "%s was never killed (%d token events)", victim, k.events);
    if (k.probe_started) pthread_join(k.probe, NULL);
    s_check_disturbed(reqs, wp.n_requests, &sum, &k);
    cr_expect(k.probe_e2e_ms >= 0, "the request sent right after killing %s failed: %s", victim,
              k.probe_error);
    cr_expect_leq(k.probe_e2e_ms, (double)T_RECOVER_MS,
                  "the request sent right after killing %s took %.0f ms", victim, k.probe_e2e_ms);
    cr_log_info("kill -9 %s: probe served in %.0f ms", victim, k.probe_e2e_ms);
    ms_play_reqs_fini(reqs, wp.n_requests);
    free(reqs);

    /* a replacement, then the cluster serves with it */
    const char *scale[] = {"scale", group, "2"};
    cr_expect_eq(s_modserve("scale", scale, 3), 0, "modserve scale %s 2 failed", group);
    /* two live actors of the group registered; the killed one's entry expires */
    ms_registry *reg = s_registry();
    int in_group = 0;
    double deadline = s_now_ms() + MS_REGISTRY_TTL_MS + T_RECOVER_MS;
    do {
        ms_actor_info *a = NULL;
        int n = 0;
        in_group = 0;
        if (ms_registry_list(reg, &a, &n) != 0) n = 0;
        for (int i = 0; i < n; i++)
            in_group +=
                strncmp(a[i].id, group, strlen(group)) == 0 && a[i].id[strlen(group)] == '-';
        free(a);
        if (in_group == 2) break;
        s_sleep_ms(100);
    } while (s_now_ms() < deadline);
    ms_registry_destroy(&reg);
    cr_expect_eq(in_group, 2, "group %s has %d registered actors after scale", group, in_group);
    ms_proc gone;
    cr_expect_neq(ms_pidfile_read(g.dir, victim, &gone, NULL, 0), 0,
                  "scale did not forget the killed %s", victim);
    s_probe("after the replacement", image_ratio > 0 ? 2 : 0);
    g.passed = true;
}

Test(cluster, kill_encoder) {
    const char *extra[] = {"--count", "enc=2", "--count", "text=2"};
    s_kill_case("modserve", extra, 4, "enc-1", "enc", 1.0);
}

Test(cluster, kill_text_actor) {
    const char *extra[] = {"--count", "enc=1", "--count", "text=2"};
    s_kill_case("modserve", extra, 4, "text-1", "text", 0.5);
}

Test(cluster, kill_prefill) {
    const char *extra[] = {"--count", "enc=1", "--count", "pre=2", "--count", "dec=2"};
    s_kill_case("disagg", extra, 6, "pre-1", "pre", 0.5);
}

Test(cluster, kill_decode) {
    const char *extra[] = {"--count", "enc=1", "--count", "pre=2", "--count", "dec=2"};
    s_kill_case("disagg", extra, 6, "dec-1", "dec", 0.5);
}

/* ---- Redis restart ------------------------------------------------------------------ */

#define T_REDIS_DOWN_MS (2 * MS_REGISTRY_HEARTBEAT_MS) /* Redis outage in redis_restart */

static void s_kill_redis(t_killer *k) {
    ms_proc p;
    char err[MS_ERR_SIZE];
    if (ms_pidfile_read(g.dir, "redis", &p, err, sizeof(err)) != 0) return;
    if (ms_proc_signal(&p, SIGKILL) != 0) return;
    ms_proc_wait_gone(&p, 5000);
    k->killed = true;
    k->t_kill_ms = s_now_ms();
}

/* Restarts redis-server on its port (the thread of redis_restart: after
 * T_REDIS_DOWN_MS of outage). No Criterion asserts here (another thread). */
static void *s_restart_redis(void *arg) {
    t_killer *k = arg;
    s_sleep_ms(T_REDIS_DOWN_MS);
    char port[16], dir[256], log[256], err[MS_ERR_SIZE];
    int p = ms_cluster_redis_port(&g.conf);
    snprintf(port, sizeof(port), "%d", p);
    snprintf(dir, sizeof(dir), "%s/redis", g.dir);
    snprintf(log, sizeof(log), "%s/logs/redis.log", g.dir);
    char *argv[] = {"/usr/bin/redis-server",
                    "--port",
                    port,
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    dir,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    NULL};
    ms_proc q = {.name = "redis", .role = "redis", .seq = -1};
    /* the port may linger for a moment after the kill */
    for (int attempt = 0; attempt < 50; attempt++) {
        if (ms_proc_spawn(&q, argv, log, err, sizeof(err)) != 0) break;
        double deadline = s_now_ms() + 2000;
        while (ms_proc_alive(&q) && !ms_cluster_port_listening(p) && s_now_ms() < deadline)
            s_sleep_ms(10);
        if (ms_proc_alive(&q) && ms_cluster_port_listening(p)) {
            ms_pidfile_write(g.dir, &q, NULL, 0);
            if (g_n_pgids < T_MAX_PROCS) {
                g_pgids[g_n_pgids] = q.pid;
                g_n_pgids = g_n_pgids + 1;
            }
            k->probe_e2e_ms = s_now_ms(); /* restart time */
            return NULL;
        }
        waitpid(q.pid, NULL, WNOHANG);
        s_sleep_ms(100);
    }
    snprintf(k->probe_error, sizeof(k->probe_error), "redis-server did not restart on port %d", p);
    return NULL;
}

static void s_on_event_redis(const ms_play_req *r, void *user) {
    t_killer *k = user;
    if (r->ended || k->killed) return;
    if (++k->events < k->after_events) return;
    s_kill_redis(k);
    if (k->killed && pthread_create(&k->probe, NULL, s_restart_redis, k) == 0)
        k->probe_started = true;
}

Test(cluster, redis_restart) {
    const char *extra[] = {"--count", "enc=2", "--count", "text=2"};
    s_up("modserve", extra, 4);
    ms_workload_params wp = {.n_requests = 32,
                             .image_ratio = 0.5,
                             .max_images = 2,
                             .max_tokens = 128,
                             .temperature = -1.0,
                             .seed = 33,
                             .n_image_files = T_N_IMAGES};
    /* 1. Redis killed mid-workload and down for T_REDIS_DOWN_MS: the broker serves
     *    from its last view */
    ms_play_req *reqs = s_make(&wp);
    t_killer k = {.victim = "redis", .after_events = 12, .probe_e2e_ms = -1};
    ms_play_summary sum;
    s_play(reqs, wp.n_requests, 4, s_on_event_redis, &k, &sum);
    cr_assert(k.killed, "redis was never killed");
    s_check_disturbed(reqs, wp.n_requests, &sum, &k);
    cr_expect_eq(sum.ok, wp.n_requests, "%d requests failed while Redis was down", sum.errors);
    ms_play_reqs_fini(reqs, wp.n_requests);
    free(reqs);
    if (k.probe_started) pthread_join(k.probe, NULL);
    cr_assert(k.probe_e2e_ms > 0, "%s", k.probe_error);
    double t_restart = k.probe_e2e_ms;
    s_track();

    /* 2. right after the restart (an empty registry the actors refill) */
    wp.seed = 34;
    wp.n_requests = 16;
    reqs = s_make(&wp);
    s_play(reqs, wp.n_requests, 4, NULL, NULL, &sum);
    cr_expect_eq(sum.protocol_errors, 0);
    cr_expect_eq(sum.ok, wp.n_requests, "%d requests failed after the Redis restart", sum.errors);
    for (int i = 0; i < wp.n_requests; i++)
        if (reqs[i].ok) s_expect_reference(&reqs[i]);
    ms_play_reqs_fini(reqs, wp.n_requests);
    free(reqs);

    /* 3. every actor registers again in the new Redis */
    ms_registry *reg = s_registry();
    int n = 0;
    double deadline = t_restart + T_RECOVER_MS;
    do {
        ms_actor_info *a = NULL;
        if (ms_registry_list(reg, &a, &n) != 0) n = 0;
        free(a);
        if (n == 4) break;
        s_sleep_ms(50);
    } while (s_now_ms() < deadline);
    cr_expect_eq(n, 4, "%d of 4 actors re-registered %.0f ms after the Redis restart", n,
                 s_now_ms() - t_restart);
    cr_log_info("Redis down %.0f ms; %d actors registered again %.0f ms after the restart",
                t_restart - k.t_kill_ms, n, s_now_ms() - t_restart);
    ms_registry_destroy(&reg);
    double e2e = s_probe("after the Redis restart", 1);
    cr_expect_leq(e2e, (double)T_RECOVER_MS);
    g.passed = true;
}

/* ---- malformed and bad requests --------------------------------------------------- */

static void s_pk_str(msgpack_packer *pk, const char *s) {
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* A Submit-like header: {"v": v, "t": t, "id": id, "prompt": "Hello"} plus
 * n_extra more pairs added by fn. */
typedef void (*t_pack_fn)(msgpack_packer *pk);

static zframe_t *s_header(int v, const char *t, const char *id, int n_extra, t_pack_fn fn) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4 + (uint32_t)n_extra);
    s_pk_str(&pk, "v");
    msgpack_pack_int(&pk, v);
    s_pk_str(&pk, "t");
    s_pk_str(&pk, t);
    s_pk_str(&pk, "id");
    s_pk_str(&pk, id);
    s_pk_str(&pk, "prompt");
    s_pk_str(&pk, "Hello");
    if (fn) fn(&pk);
    zframe_t *f = zframe_new(sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return f;
}

static void s_fn_str_max_tokens(msgpack_packer *pk) {
    s_pk_str(pk, "max_tokens");
    s_pk_str(pk, "ten");
}
static void s_fn_unknown_field(msgpack_packer *pk) {
    s_pk_str(pk, "bogus");
    msgpack_pack_int(pk, 1);
}
static void s_fn_temp_neg(msgpack_packer *pk) {
    s_pk_str(pk, "temperature");
    msgpack_pack_double(pk, -1.0);
}
static void s_fn_top_p(msgpack_packer *pk) {
    s_pk_str(pk, "top_p");
    msgpack_pack_double(pk, 2.0);
}
static void s_fn_max_tokens_0(msgpack_packer *pk) {
    s_pk_str(pk, "max_tokens");
    msgpack_pack_uint64(pk, 0);
}
static void s_fn_max_tokens_huge(msgpack_packer *pk) {
    s_pk_str(pk, "max_tokens");
    msgpack_pack_uint64(pk, 1000000);
}
static void s_fn_two_images(msgpack_packer *pk) {
    s_pk_str(pk, "n_images");
    msgpack_pack_uint64(pk, 2);
}
static void s_fn_one_image(msgpack_packer *pk) {
    s_pk_str(pk, "n_images");
    msgpack_pack_uint64(pk, 1);
}
static void s_fn_17_images(msgpack_packer *pk) {
    s_pk_str(pk, "n_images");
    msgpack_pack_uint64(pk, MS_WIRE_MAX_IMAGES + 1);
}
static void s_fn_dup_prompt(msgpack_packer *pk) {
    s_pk_str(pk, "prompt");
    s_pk_str(pk, "again");
}
static void s_fn_messages_too(msgpack_packer *pk) {
    s_pk_str(pk, "messages");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 2);
    s_pk_str(pk, "role");
    s_pk_str(pk, "user");
    s_pk_str(pk, "content");
    s_pk_str(pk, "Hi");
}

/* Sends frames (ownership taken) on sock. */
static void s_send(zsock_t *sock, zframe_t **frames, int n) {
    zmsg_t *m = zmsg_new();
    for (int i = 0; i < n; i++)
        zmsg_append(m, &frames[i]);
    cr_assert_eq(zmsg_send(&m, sock), 0);
}

/* Waits for the Error answering id (Accepted for it is skipped) and checks its code. */
static void s_expect_error(zsock_t *sock, const char *id, const char *what) {
    double deadline = s_now_ms() + T_REPLY_MS;
    while (s_now_ms() < deadline) {
        zsock_set_rcvtimeo(sock, 200);
        zmsg_t *m = zmsg_recv(sock);
        if (!m) continue;
        zframe_t *f = zmsg_first(m);
        ms_msg msg;
        char err[MS_ERR_SIZE];
        ms_wire_status st = ms_wire_decode(zframe_data(f), zframe_size(f), &msg, err, sizeof(err));
        zmsg_destroy(&m);
        cr_assert_eq(st, MS_WIRE_OK, "%s: undecodable reply: %s", what, err);
        if (msg.type == MS_MSG_ACCEPTED) {
            ms_msg_fini(&msg);
            continue;
        }
        cr_expect_eq(msg.type, MS_MSG_ERROR, "%s: answered with %s, not an Error", what,
                     ms_msg_type_name(msg.type));
        if (msg.type == MS_MSG_ERROR) {
            cr_expect_str_eq(msg.error.id, id, "%s: the Error is for '%s'", what, msg.error.id);
            cr_expect_str_eq(msg.error.code, "bad_request", "%s: code %s (%s)", what,
                             msg.error.code, msg.error.message);
            cr_expect(msg.error.message[0] != '\0', "%s: empty message", what);
            cr_log_info("%s -> %s: %s", what, msg.error.code, msg.error.message);
        }
        ms_msg_fini(&msg);
        return;
    }
    cr_expect_fail("%s: no reply within %d ms", what, T_REPLY_MS);
}

typedef struct t_bg {
    ms_play_req *r;      /* the request */
    ms_play_summary sum; /* its outcome */
    int rc;              /* ms_play_run's return */
} t_bg;

static void *s_bg_play(void *arg) {
    t_bg *bg = arg;
    ms_play_opts o = {.endpoint = g.front,
                      .concurrency = 1,
                      .wait_ms = T_WAIT_MS,
                      .images = (const uint8_t *const *)g.img,
                      .image_len = g.img_len,
                      .n_images = T_N_IMAGES,
                      .quiet = true};
    char err[MS_ERR_SIZE];
    bg->rc = ms_play_run(&o, bg->r, 1, &bg->sum, err, sizeof(err));
    return NULL;
}

Test(cluster, malformed_requests_get_errors) {
    s_up("modserve", NULL, 0);
    /* a long request in flight the whole time */
    ms_workload_request w = {.n_images = 1,
                             .prompt = "Describe this image.",
                             .max_tokens = 64,
                             .temperature = 0.8f,
                             .seed = 17};
    ms_play_req *good = calloc(1, sizeof(*good));
    ms_play_reqs_init(good, &w, 1);
    zsock_t *raw = zsock_new_dealer(g.front);
    cr_assert_not_null(raw);
    /* 1. not msgpack */
    {
        zframe_t *f[] = {zframe_new("\xc1\xff\x00junk", 7)};
        s_send(raw, f, 1);
        s_expect_error(raw, "", "garbage frame");
    }
    /* 2. an array, not a map */
    {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 2);
        msgpack_pack_int(&pk, 1);
        s_pk_str(&pk, "submit");
        zframe_t *f[] = {zframe_new(sb.data, sb.size)};
        msgpack_sbuffer_destroy(&sb);
        s_send(raw, f, 1);
        s_expect_error(raw, "", "array header");
    }
    static const struct {
        int v;
        const char *t, *id;
        int n_extra;
        t_pack_fn fn;
        int n_frames; /* image frames sent (1 byte of garbage each, unless big) */
        bool big;     /* one image frame over MS_WIRE_MAX_IMAGE_BYTES */
        const char *what;
    } cases[] = {
        {1, "submit", "w1", 1, s_fn_str_max_tokens, 0, false, "max_tokens as a string"},
        {1, "frobnicate", "u1", 0, NULL, 0, false, "unknown message type"},
        {1, "submit", "f1", 1, s_fn_unknown_field, 0, false, "unknown field"},
        {1, "submit", "d1", 1, s_fn_dup_prompt, 0, false, "repeated field"},
        {99, "submit", "v1", 0, NULL, 0, false, "wrong protocol version"},
        {1, "submit", "p1", 1, s_fn_temp_neg, 0, false, "temperature -1"},
        {1, "submit", "p2", 1, s_fn_top_p, 0, false, "top_p 2"},
        {1, "submit", "p3", 1, s_fn_max_tokens_0, 0, false, "max_tokens 0"},
        {1, "submit", "p4", 1, s_fn_max_tokens_huge, 0, false, "max_tokens 1000000"},
        {1, "submit", "p5", 1, s_fn_messages_too, 0, false, "prompt and messages"},
        {1, "submit", "n1", 1, s_fn_two_images, 1, false, "2 images declared, 1 sent"},
        {1, "submit", "m1", 1, s_fn_17_images, MS_WIRE_MAX_IMAGES + 1, false, "17 images"},
        {1, "submit", "o1", 1, s_fn_one_image, 1, true, "an image over 16 MiB"},
        {1, "submit", "g1", 1, s_fn_one_image, 1, false, "an image that is not an image"},
    };
    char err[MS_ERR_SIZE];
    /* the good request streams on its own client while the bad ones arrive */
    t_bg bg = {.r = good};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, s_bg_play, &bg), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        zframe_t *f[MS_WIRE_MAX_IMAGES + 2];
        int n = 0;
        f[n++] = s_header(cases[i].v, cases[i].t, cases[i].id, cases[i].n_extra, cases[i].fn);
        for (int k = 0; k < cases[i].n_frames; k++) {
            if (cases[i].big) {
                f[n] = zframe_new(NULL, MS_WIRE_MAX_IMAGE_BYTES + 1);
                memset(zframe_data(f[n]), 0xab, zframe_size(f[n]));
                n++;
            } else {
                f[n++] = zframe_new("\x01", 1);
            }
        }
        s_send(raw, f, n);
        s_expect_error(raw, cases[i].id, cases[i].what);
    }
    /* a well-formed message of a type producers may not send */
    {
        ms_msg m;
        ms_msg_init(&m, MS_MSG_TOKEN);
        m.token.id = "u2";
        m.token.text = "";
        uint8_t *data = NULL;
        size_t len = 0;
        cr_assert_eq(ms_wire_encode_buf(&m, &data, &len, err, sizeof(err)), 0, "%s", err);
        zframe_t *f[] = {zframe_new(data, len)};
        free(data);
        s_send(raw, f, 1);
        s_expect_error(raw, "u2", "a Token sent by a producer");
    }
    /* images that look like images but do not decode: a bomb, a truncated file */
    static const char *const broken[] = {"bomb_65535x65535.jpg", "cmyk_truncated.jpg",
                                         "bomb_100000x100000.png", "zero_width.png"};
    for (size_t i = 0; i < sizeof(broken) / sizeof(broken[0]); i++) {
        char path[1024], id[16];
        snprintf(path, sizeof(path), "%s/tests/data/images/%s", ms_test_source_dir(), broken[i]);
        snprintf(id, sizeof(id), "b%zu", i);
        size_t len = 0;
        uint8_t *bytes = ms_read_file(path, 1u << 20, &len, err, sizeof(err));
        cr_assert_not_null(bytes, "%s", err);
        zframe_t *f[] = {s_header(1, "submit", id, 1, s_fn_one_image), zframe_new(bytes, len)};
        free(bytes);
        s_send(raw, f, 2);
        s_expect_error(raw, id, broken[i]);
    }
    zsock_destroy(&raw);
    pthread_join(th, NULL);
    cr_expect_eq(bg.rc, 0);
    cr_expect_eq(bg.sum.protocol_errors, 0);
    cr_expect(good->ok, "the request in flight during the bad ones failed: %s", good->error);
    if (good->ok) s_expect_reference(good);
    ms_play_reqs_fini(good, 1);
    free(good);
    s_probe("after malformed input", 0);
    g.passed = true;
}
