/* itest_autoscaler.c — modserve-autoscaler against a real local cluster:
 * `modserve up` starts redis-server, the broker and actors (tiny models,
 * $MS_TEST_MODELS); the autoscaler runs as its own process on the run
 * directory with short windows and cooldowns, and a profile whose encode
 * capacity is small (T_ENCODE_CAPACITY image tokens/s) so that a burst of
 * image requests needs more encoders than the minimum.
 *
 *   burst_scales_encoders_up_then_lull_drains_them
 *       a burst of image requests makes the autoscaler start encoder processes
 *       up to --max-encode (the registry lists them); a lull with a trickle of
 *       requests makes it drain them back to --min-encode, not before the down
 *       cooldown, through SIGTERM (the drained processes exit by themselves,
 *       nothing is SIGKILLed); every request of the burst and of the trickle
 *       completes with each token index exactly once; the decisions and their
 *       reasons are in `<prefix>:events:autoscaler` and the targets in
 *       `<prefix>:autoscaler`.
 *   command_backends_dry_run
 *       the compose and k8s backends against the same kind of cluster, in
 *       --dry-run --once: min/max force a start and a drain, and the printed
 *       commands are the docker-compose / kubectl command lines (with the pod
 *       deletion-cost annotation of the actor chosen to leave); nothing starts.
 *
 * Teardown: .fini stops the autoscaler, runs `modserve down --force` and
 * SIGKILLs every process group recorded in the run directory; an alarm does
 * the same before Criterion's timeout. A failed test prints the logs and keeps
 * its run directory (/tmp/ms-ita-*).
 */
#include <criterion/criterion.h>
#include <czmq.h>
#include <dirent.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
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
#include "workload.h"

#define T_TIMEOUT_S       100   /* Criterion timeout of each test */
#define T_ALARM_S         90    /* our own deadline: tear down and exit first */
#define T_CMD_MS          60000 /* a modserve command at most */
#define T_WAIT_MS         20000 /* the player gives up after this long without an event */
#define T_MAX_PROCS       32
#define T_ENCODE_CAPACITY 100 /* image tokens/s one encoder serves at SLO (test profile) */
#define T_MIN_ENCODE      1
#define T_MAX_ENCODE      3
#define T_DOWN_COOLDOWN_S 3.0
#define T_INTERVAL_S      "0.25"
#define T_WINDOW_S        "1"
#define T_BURST_MS        2500  /* the burst lasts this long */
#define T_TRICKLE_GAP_MS  400   /* one image request per this during the lull */
#define T_SCALE_UP_MS     8000  /* the burst's encoders registered within this */
#define T_SCALE_DOWN_MS   15000 /* drained back to the minimum within this of the burst */

static const char *const T_IMAGES[] = {"sample.jpg",    "j_333x517.jpg",      "j_517x333.jpg",
                                       "p_333x517.png", "w_40x30_lossy.webp", "j_64x48_420.jpg"};
#define T_N_IMAGES ((int)(sizeof(T_IMAGES) / sizeof(T_IMAGES[0])))

static struct {
    char dir[128];                 /* run directory */
    ms_cluster_conf conf;          /* RUNDIR/cluster.conf */
    char front[MS_CLUSTER_EP_MAX]; /* broker front endpoint */
    ms_proc autoscaler;            /* the autoscaler process (pid 0: none) */
    bool passed;                   /* the test body reached its end */
    bool failed;                   /* a T_CHECK failed */
    uint8_t *img[T_N_IMAGES];
    size_t img_len[T_N_IMAGES];
} g;

/* cr_expect that also marks the test failed (the run directory is then kept). */
#define T_CHECK(cond, ...)                                                                         \
    do {                                                                                           \
        const bool t_ok_ = (cond);                                                                 \
        if (!t_ok_) g.failed = true;                                                               \
        cr_expect(t_ok_, __VA_ARGS__);                                                             \
    } while (0)

static volatile pid_t g_pgids[T_MAX_PROCS];
static volatile sig_atomic_t g_n_pgids;

static void s_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double s_now_ms(void) {
    return ms_now_s() * 1000.0;
}

static void s_track_pid(pid_t pid) {
    for (int k = 0; k < g_n_pgids; k++)
        if (g_pgids[k] == pid) return;
    if (g_n_pgids < T_MAX_PROCS) {
        g_pgids[g_n_pgids] = pid;
        g_n_pgids = g_n_pgids + 1;
    }
}

/* Adds every process of the run directory to the kill list. */
static void s_track(void) {
    ms_proc procs[T_MAX_PROCS];
    int n = ms_pidfile_list(g.dir, procs, T_MAX_PROCS, NULL, 0);
    for (int i = 0; i < n; i++)
        s_track_pid(procs[i].pid);
}

static void s_kill_all(void) {
    for (int i = 0; i < g_n_pgids; i++)
        if (g_pgids[i] > 1) {
            kill(-g_pgids[i], SIGKILL);
            kill(g_pgids[i], SIGKILL);
        }
}

static void s_on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "itest_autoscaler: deadline passed: killing the cluster\n";
    ssize_t w = write(2, msg, sizeof(msg) - 1);
    (void)w;
    s_kill_all();
    _exit(3);
}

/* Runs argv with output to log; its exit status, or -1 if killed at timeout_ms. */
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

static void s_init(void) {
    memset(&g, 0, sizeof(g));
    g_n_pgids = 0;
    signal(SIGALRM, s_on_alarm);
    alarm(T_ALARM_S);
    zsys_init();
    zsys_handler_set(NULL);
    for (int i = 0; i < T_N_IMAGES; i++) {
        char path[1024], err[MS_ERR_SIZE];
        snprintf(path, sizeof(path), "%s/tests/data/images/%s", ms_test_source_dir(), T_IMAGES[i]);
        g.img[i] = ms_read_file(path, 64u << 20, &g.img_len[i], err, sizeof(err));
        cr_assert_not_null(g.img[i], "%s", err);
    }
}

static void s_stop_autoscaler(void) {
    if (g.autoscaler.pid <= 0) return;
    ms_proc_stop(&g.autoscaler, 5000);
    g.autoscaler.pid = 0;
}

static void s_fini(void) {
    alarm(0);
    s_stop_autoscaler();
    if (g.dir[0]) {
        char bin[1024], log[256];
        snprintf(bin, sizeof(bin), "%s/modserve", ms_test_bin_dir());
        snprintf(log, sizeof(log), "%s/down.log", g.dir);
        char *argv[] = {bin, "down", "--dir", g.dir, "--force", NULL};
        s_track();
        s_run(argv, log, 20000);
        s_kill_all();
        if (!g.passed || g.failed) {
            char path[512], logs[256];
            snprintf(path, sizeof(path), "%s/up.log", g.dir);
            s_print_file(path, 30);
            snprintf(logs, sizeof(logs), "%s/logs", g.dir);
            DIR *d = opendir(logs);
            struct dirent *de;
            while (d && (de = readdir(d)) != NULL) {
                if (de->d_name[0] == '.') continue;
                snprintf(path, sizeof(path), "%s/%s", logs, de->d_name);
                s_print_file(path, strncmp(de->d_name, "autoscaler", 10) == 0 ? 80 : 20);
            }
            if (d) closedir(d);
            fprintf(stderr, "itest_autoscaler: run directory kept: %s\n", g.dir);
        } else if (!getenv("MS_KEEP_RUNDIR")) {
            char cmd[256];
            snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g.dir);
            if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", g.dir);
        }
    }
    for (int i = 0; i < T_N_IMAGES; i++)
        free(g.img[i]);
}

TestSuite(autoscaler, .init = s_init, .fini = s_fini, .timeout = T_TIMEOUT_S);

/* modserve up (layout modserve) with enc × 1 and text × 1, tiny models, free ports. */
static void s_up(void) {
    snprintf(g.dir, sizeof(g.dir), "/tmp/ms-ita-XXXXXX");
    cr_assert_not_null(mkdtemp(g.dir));
    char bin[1024], lm[1024], mm[1024], log[256];
    snprintf(bin, sizeof(bin), "%s/modserve", ms_test_bin_dir());
    snprintf(lm, sizeof(lm), "%s", ms_test_path(ms_test_models_dir(), "tiny-lm.gguf"));
    snprintf(mm, sizeof(mm), "%s", ms_test_path(ms_test_models_dir(), "tiny-mmproj.gguf"));
    snprintf(log, sizeof(log), "%s/up.log", g.dir);
    char *argv[] = {bin,         "up", "--dir",    g.dir,   "--layout",    "modserve",
                    "--model",   lm,   "--mmproj", mm,      "--port-base", "auto",
                    "--threads", "1",  "--count",  "enc=1", "--count",     "text=1",
                    "--timeout", "40", NULL};
    int rc = s_run(argv, log, T_CMD_MS);
    s_track();
    cr_assert_eq(rc, 0, "modserve up failed (%d): see %s", rc, log);
    ms_cluster_conf_default(&g.conf);
    char conf[256], err[MS_ERR_SIZE];
    snprintf(conf, sizeof(conf), "%s/cluster.conf", g.dir);
    cr_assert_eq(ms_cluster_conf_load(&g.conf, conf, err, sizeof(err)), 0, "%s", err);
    ms_cluster_front_ep(&g.conf, g.front, sizeof(g.front));
}

/* The test profile: the built-in defaults with a small encode capacity and
 * text capacities no test load reaches (the text pool stays at its minimum). */
static void s_write_profile(char *path, size_t size) {
    snprintf(path, size, "%s/profile.json", g.dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "{ \"version\": 1, \"model\": \"tiny\",\n"
            "  \"stages\": {\n"
            "    \"encode\":  { \"capacity_per_s\": %d },\n"
            "    \"prefill\": { \"capacity_per_s\": 10000000 },\n"
            "    \"decode\":  { \"capacity_per_s\": 10000000 } } }\n",
            T_ENCODE_CAPACITY);
    fclose(f);
}

static ms_registry *s_registry(void) {
    char err[MS_ERR_SIZE];
    ms_registry *r = ms_registry_new("127.0.0.1", ms_cluster_redis_port(&g.conf), g.conf.prefix,
                                     err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    return r;
}

/* A field of the autoscaler's hash into buf ("" if absent or unreachable). */
static void s_hget(const char *field, char *buf, size_t size) {
    buf[0] = '\0';
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", ms_cluster_redis_port(&g.conf), tv);
    if (!c || c->err) {
        if (c) redisFree(c);
        return;
    }
    redisReply *r = redisCommand(c, "HGET %s:autoscaler %s", g.conf.prefix, field);
    if (r && r->type == REDIS_REPLY_STRING) snprintf(buf, size, "%s", r->str);
    if (r) freeReplyObject(r);
    redisFree(c);
}

/* Encoders in the registry: *up in state up, *draining draining. */
static void s_encoders(ms_registry *reg, int *up, int *draining) {
    ms_actor_info *a = NULL;
    int n = 0;
    *up = *draining = 0;
    if (ms_registry_list(reg, &a, &n) != 0) return;
    for (int i = 0; i < n; i++) {
        if (a[i].stages != MS_STAGES_ENCODE) continue;
        if (a[i].state == MS_ACTOR_DRAINING)
            (*draining)++;
        else
            (*up)++;
    }
    free(a);
}

/* Live encoder processes of the run directory. */
static int s_encoder_procs(ms_proc *out, int max) {
    ms_proc procs[T_MAX_PROCS];
    int n = ms_pidfile_list(g.dir, procs, T_MAX_PROCS, NULL, 0), k = 0;
    for (int i = 0; i < n && k < max; i++)
        if (strcmp(procs[i].group, "enc") == 0 && ms_proc_alive(&procs[i])) out[k++] = procs[i];
    return k;
}

/* The newest max lines of <prefix>:events:NAME joined into one string (malloc'd). */
static char *s_events(ms_registry *reg, const char *name) {
    char **lines = NULL;
    int n = 0;
    cr_assert_eq(ms_registry_events(reg, name, MS_REGISTRY_EVENTS_MAX, &lines, &n), 0);
    size_t len = 1;
    for (int i = 0; i < n; i++)
        len += strlen(lines[i]) + 1;
    char *all = calloc(1, len);
    for (int i = n - 1; i >= 0; i--) { /* oldest first */
        strcat(all, lines[i]);
        strcat(all, "\n");
    }
    ms_registry_events_free(&lines, n);
    return all;
}

static void s_start_autoscaler(const char *const *extra, int n_extra) {
    char bin[1024], log[256], prof[256];
    snprintf(bin, sizeof(bin), "%s/modserve-autoscaler", ms_test_bin_dir());
    snprintf(log, sizeof(log), "%s/logs/autoscaler-test.log", g.dir);
    s_write_profile(prof, sizeof(prof));
    char *argv[48] = {bin, "--dir", g.dir, "--profile", prof};
    int n = 5;
    for (int i = 0; i < n_extra && n < 46; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    memset(&g.autoscaler, 0, sizeof(g.autoscaler));
    snprintf(g.autoscaler.name, sizeof(g.autoscaler.name), "autoscaler-test");
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_proc_spawn(&g.autoscaler, argv, log, err, sizeof(err)), 0, "%s", err);
    s_track_pid(g.autoscaler.pid);
}

/* ---- playing requests ---------------------------------------------------------------- */

static void s_play(ms_play_req *reqs, int n, int concurrency, ms_play_summary *sum, char *err,
                   size_t err_size, int *rc) {
    ms_play_opts o = {.endpoint = g.front,
                      .concurrency = concurrency,
                      .wait_ms = T_WAIT_MS,
                      .images = (const uint8_t *const *)g.img,
                      .image_len = g.img_len,
                      .n_images = T_N_IMAGES,
                      .quiet = true};
    *rc = ms_play_run(&o, reqs, n, sum, err, err_size);
}

/* Load from a thread: batches of `batch` image requests (1-2 images) played
 * at `concurrency`, `gap_ms` apart, until stopped or until_ms. Counts what
 * completed with tokens and no stream fault. */
typedef struct {
    int batch, concurrency, gap_ms; /* what to play */
    double until_ms;                /* stop at this time (s_now_ms), 0: only on stop */
    uint64_t seed;                  /* workload seed of the first batch */
    volatile sig_atomic_t stop;
    int n;                   /* requests played */
    int ok;                  /* completed (Done, >= 1 token, every index once) */
    int faults;              /* stream faults the client reported */
    char error[MS_ERR_SIZE]; /* the first failure */
} t_load;

static void *s_load(void *arg) {
    t_load *t = arg;
    ms_workload_request w[64];
    ms_play_req reqs[64];
    while (!t->stop && (t->until_ms <= 0 || s_now_ms() < t->until_ms)) {
        ms_workload_params wp = {.n_requests = t->batch,
                                 .image_ratio = 1.0,
                                 .max_images = 2,
                                 .max_tokens = 8,
                                 .temperature = -1.0,
                                 .seed = t->seed++,
                                 .n_image_files = T_N_IMAGES};
        char err[MS_ERR_SIZE];
        if (ms_workload_make(&wp, w, err, sizeof(err)) != 0) {
            snprintf(t->error, sizeof(t->error), "workload: %.400s", err);
            break;
        }
        ms_play_reqs_init(reqs, w, t->batch);
        ms_play_summary sum;
        int rc = 0;
        s_play(reqs, t->batch, t->concurrency, &sum, err, sizeof(err), &rc);
        if (rc != 0 && !t->error[0]) snprintf(t->error, sizeof(t->error), "play: %.400s", err);
        t->faults += sum.protocol_errors;
        for (int i = 0; i < t->batch; i++) {
            t->n++;
            if (reqs[i].ok && reqs[i].n_ids >= 1)
                t->ok++;
            else if (!t->error[0])
                snprintf(t->error, sizeof(t->error), "request %d: %.400s", t->n - 1,
                         reqs[i].error[0] ? reqs[i].error : "no token");
        }
        ms_play_reqs_fini(reqs, t->batch);
        if (t->gap_ms > 0) s_sleep_ms(t->gap_ms);
    }
    return NULL;
}

/* Asserts that every request of a load completed with each token index once. */
static void s_expect_load_ok(const char *what, const t_load *t, int at_least) {
    T_CHECK(t->n >= at_least, "%s: only %d requests were played", what, t->n);
    T_CHECK(t->ok == t->n, "%s: %d of %d requests completed (first failure: %s)", what, t->ok, t->n,
            t->error);
    T_CHECK(t->faults == 0, "%s: %d stream faults", what, t->faults);
}

/* Work the actors report (tasks_done) per id, for the ids given. */
static int64_t s_tasks_done(ms_registry *reg, const char *id) {
    ms_actor_info a;
    return ms_registry_get(reg, id, &a) == 0 ? a.tasks_done : -1;
}

/* ---- burst up, lull down ----------------------------------------------------------------- */

Test(autoscaler, burst_scales_encoders_up_then_lull_drains_them) {
    s_up();
    char down_cd[16], min_e[8], max_e[8];
    snprintf(down_cd, sizeof(down_cd), "%.1f", T_DOWN_COOLDOWN_S);
    snprintf(min_e, sizeof(min_e), "%d", T_MIN_ENCODE);
    snprintf(max_e, sizeof(max_e), "%d", T_MAX_ENCODE);
    const char *extra[] = {
        "--window-s",        T_WINDOW_S, "--interval-s", T_INTERVAL_S, "--up-cooldown-s", "1",
        "--down-cooldown-s", down_cd,    "--min-encode", min_e,        "--max-encode",    max_e,
        "--min-text",        "1",        "--max-text",   "1",          "--history-s",     "0"};
    s_start_autoscaler(extra, (int)(sizeof(extra) / sizeof(extra[0])));
    ms_registry *reg = s_registry();

    /* the autoscaler's first decision: the hash appears; one encoder is the minimum */
    char target[32] = "";
    double t_wait = s_now_ms() + 10000;
    do {
        s_sleep_ms(100);
        cr_assert(ms_proc_alive(&g.autoscaler), "the autoscaler exited");
        s_hget("encode:target", target, sizeof(target));
    } while (!target[0] && s_now_ms() < t_wait);
    cr_assert_str_eq(target, "1", "no encode:target in the autoscaler hash after 10 s");
    int up = 0, draining = 0;
    s_encoders(reg, &up, &draining);
    cr_assert_eq(up, 1, "before the burst: %d encoders up", up);

    /* burst: T_BURST_MS of image requests (1-2 images of 16 tokens), 8 at a time */
    t_load *burst = calloc(1, sizeof(*burst));
    *burst = (t_load){.batch = 16, .concurrency = 8, .seed = 100};
    const double t_burst = s_now_ms();
    burst->until_ms = t_burst + T_BURST_MS;
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, s_load, burst), 0);

    /* the autoscaler starts encoders up to the maximum while it lasts; they register */
    double deadline = t_burst + T_SCALE_UP_MS;
    do {
        s_sleep_ms(50);
        s_encoders(reg, &up, &draining);
    } while (up < T_MAX_ENCODE && s_now_ms() < deadline);
    const double t_up = s_now_ms();
    pthread_join(th, NULL);
    const double t_burst_end = s_now_ms();
    s_track();
    cr_assert_eq(up, T_MAX_ENCODE, "%.0f ms into the burst: %d encoders up, expected %d",
                 t_up - t_burst, up, T_MAX_ENCODE);
    ms_proc enc[T_MAX_PROCS];
    int n_enc = s_encoder_procs(enc, T_MAX_PROCS);
    T_CHECK(n_enc == T_MAX_ENCODE, "%d encoder processes alive, expected %d", n_enc, T_MAX_ENCODE);
    s_expect_load_ok("burst", burst, 32);
    cr_log_info("burst: %d requests in %.0f ms; %d encoders up %.0f ms after it began", burst->n,
                t_burst_end - t_burst, T_MAX_ENCODE, t_up - t_burst);
    /* the new encoders took part of the burst (their counters reach the registry
     * with the next heartbeat) */
    int64_t new_done = 0;
    deadline = s_now_ms() + 4 * MS_REGISTRY_HEARTBEAT_MS;
    do {
        s_sleep_ms(100);
        new_done = MS_MAX(s_tasks_done(reg, "enc-2"), 0) + MS_MAX(s_tasks_done(reg, "enc-3"), 0);
    } while (new_done == 0 && s_now_ms() < deadline);
    T_CHECK(new_done > 0, "the encoders started for the burst did no work");

    /* lull: a trickle of image requests (well under one encoder's capacity) */
    t_load *tr = calloc(1, sizeof(*tr));
    *tr = (t_load){.batch = 1, .concurrency = 1, .gap_ms = T_TRICKLE_GAP_MS, .seed = 500};
    cr_assert_eq(pthread_create(&th, NULL, s_load, tr), 0);
    double t_first_drain = 0;
    deadline = t_burst_end + T_SCALE_DOWN_MS;
    int n_procs = T_MAX_ENCODE;
    do {
        s_sleep_ms(50);
        s_encoders(reg, &up, &draining);
        n_procs = s_encoder_procs(enc, T_MAX_PROCS);
        if (t_first_drain == 0 && (up < T_MAX_ENCODE || draining > 0)) t_first_drain = s_now_ms();
    } while ((up != T_MIN_ENCODE || draining != 0 || n_procs != T_MIN_ENCODE) &&
             s_now_ms() < deadline);
    const double t_down = s_now_ms();
    s_sleep_ms(3 * T_TRICKLE_GAP_MS); /* a few trickle requests on the remaining encoder */
    tr->stop = 1;
    pthread_join(th, NULL);
    T_CHECK(up == T_MIN_ENCODE, "%.0f ms after the burst: %d encoders up, expected %d",
            t_down - t_burst_end, up, T_MIN_ENCODE);
    T_CHECK(draining == 0, "%d encoders still draining", draining);
    T_CHECK(n_procs == T_MIN_ENCODE, "%d encoder processes alive, expected %d", n_procs,
            T_MIN_ENCODE);
    /* not before the down cooldown: the burst's windows must age out first */
    T_CHECK(t_first_drain - t_burst_end >= T_DOWN_COOLDOWN_S * 1000.0 - 100,
            "the first drain came %.0f ms after the burst ended (cooldown %.0f s)",
            t_first_drain - t_burst_end, T_DOWN_COOLDOWN_S);
    cr_log_info("drain began %.0f ms after the burst ended; back to %d encoder(s) %.0f ms after it",
                t_first_drain - t_burst_end, T_MIN_ENCODE, t_down - t_burst_end);
    /* no request lost while the encoders drained */
    s_expect_load_ok("trickle", tr, 5);

    /* decisions and reasons recorded in Redis; the drained actors left on SIGTERM */
    char *ev = s_events(reg, "autoscaler");
    T_CHECK(strstr(ev, "encode: 1 up/starting") && strstr(ev, "load above capacity") &&
                strstr(ev, "-> start 2 (target 3"),
            "no scale-up decision with its reason in the events:\n%s", ev);
    T_CHECK(strstr(ev, "-> drain 2 (target 1"), "no scale-down decision in the events:\n%s", ev);
    T_CHECK(strstr(ev, "started enc-2") && strstr(ev, "started enc-3"),
            "no start lines in the events:\n%s", ev);
    T_CHECK(strstr(ev, "drained and exited"), "no drained actor exited:\n%s", ev);
    T_CHECK(strstr(ev, "SIGKILL") == NULL, "an actor was killed:\n%s", ev);
    free(ev);
    s_hget("encode:target", target, sizeof(target));
    T_CHECK(strcmp(target, "1") == 0, "the hash's encode:target is '%s'", target);
    char trig[64];
    s_hget("encode:trigger", trig, sizeof(trig));
    T_CHECK(strcmp(trig, "none") == 0, "encode:trigger is '%s' after the scale-down", trig);

    free(burst);
    free(tr);
    ms_registry_destroy(&reg);
    s_stop_autoscaler();
    g.passed = true;
}

/* ---- compose and k8s backends in dry-run ----------------------------------------------- */

/* Runs modserve-autoscaler ARGS --dry-run --once; returns its output (malloc'd). */
static char *s_dry_run(const char *name, const char *const *args, int n_args) {
    char bin[1024], log[256], redis[64];
    snprintf(bin, sizeof(bin), "%s/modserve-autoscaler", ms_test_bin_dir());
    snprintf(log, sizeof(log), "%s/%s.log", g.dir, name);
    snprintf(redis, sizeof(redis), "127.0.0.1:%d", ms_cluster_redis_port(&g.conf));
    char *argv[40] = {bin,         "--redis", redis,         "--prefix", g.conf.prefix,
                      "--dry-run", "--once",  "--history-s", "0"};
    int n = 9;
    for (int i = 0; i < n_args && n < 38; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    int rc = s_run(argv, log, 20000);
    size_t len = 0;
    char err[MS_ERR_SIZE];
    char *out = (char *)ms_read_file(log, 1u << 20, &len, err, sizeof(err));
    cr_assert_not_null(out, "%s", err);
    cr_assert_eq(rc, 0, "modserve-autoscaler (%s) exited %d:\n%s", name, rc, out);
    return out;
}

Test(autoscaler, command_backends_dry_run) {
    s_up();
    ms_registry *reg = s_registry();
    ms_actor_info text;
    cr_assert_eq(ms_registry_get(reg, "text-1", &text), 0);

    /* compose: min 2 encoders (1 registered) -> scale up; max 0 text -> scale down */
    const char *compose[] = {"--backend",        "compose", "--compose-file", "/srv/modserve.yml",
                             "--service-encode", "encoder", "--service-text", "text",
                             "--min-encode",     "2",       "--max-encode",   "3",
                             "--min-text",       "0",       "--max-text",     "0"};
    char *out = s_dry_run("compose", compose, (int)(sizeof(compose) / sizeof(compose[0])));
    T_CHECK(strstr(out, "dry-run: docker-compose -f /srv/modserve.yml up -d --scale "
                        "encoder=2 --no-recreate encoder"),
            "no compose scale-up command:\n%s", out);
    T_CHECK(strstr(out, "dry-run: docker-compose -f /srv/modserve.yml up -d --scale text=0 "
                        "--no-recreate text"),
            "no compose scale-down command:\n%s", out);
    T_CHECK(strstr(out, "-> start 1 (target 2, min)"), "no min decision:\n%s", out);
    T_CHECK(strstr(out, "-> drain 1 (target 0, max)"), "no max decision:\n%s", out);
    free(out);

    /* k8s: the same, with the pod chosen to leave annotated first */
    const char *k8s[] = {"--backend",
                         "k8s",
                         "--k8s-namespace",
                         "serving",
                         "--k8s-deployment-encode",
                         "enc",
                         "--k8s-deployment-text",
                         "text",
                         "--min-encode",
                         "2",
                         "--max-encode",
                         "3",
                         "--min-text",
                         "0",
                         "--max-text",
                         "0"};
    out = s_dry_run("k8s", k8s, (int)(sizeof(k8s) / sizeof(k8s[0])));
    T_CHECK(strstr(out, "dry-run: kubectl -n serving scale deployment/enc --replicas=2"),
            "no kubectl scale-up:\n%s", out);
    char annotate[512];
    snprintf(annotate, sizeof(annotate),
             "dry-run: kubectl -n serving annotate --overwrite pod %s "
             "controller.kubernetes.io/pod-deletion-cost=-1000",
             text.host);
    T_CHECK(strstr(out, annotate), "no annotate line '%s':\n%s", annotate, out);
    char *ann = strstr(out, annotate);
    char *scale = strstr(out, "dry-run: kubectl -n serving scale deployment/text --replicas=0");
    T_CHECK(scale && ann && ann < scale, "the scale-down is not after the annotation:\n%s", out);
    free(out);

    /* nothing was started or stopped: still one encoder and one text actor */
    int up = 0, draining = 0;
    s_encoders(reg, &up, &draining);
    T_CHECK(up == 1, "%d encoders up after the dry runs", up);
    T_CHECK(draining == 0, "%d encoders draining after the dry runs", draining);
    ms_actor_info again;
    T_CHECK(ms_registry_get(reg, "text-1", &again) == 0, "text-1 left the registry");
    T_CHECK(again.state == MS_ACTOR_UP, "text-1 is draining after a dry run");
    ms_registry_destroy(&reg);
    g.passed = true;
}
