/* itest_replay.c — `modserve bench` end to end: `modserve up` starts a real
 * redis-server, modserve-broker and modserve-actor processes (layout
 * modserve: 2 encoders + 2 text actors) with the tiny models
 * ($MS_TEST_MODELS); modserve-bench replays trace slices against them.
 *
 *   slice_counts     20 rows of the shared 2025 window (14 with 1..16 images,
 *                    time-scaled to ~2 s, contexts clamped): the report's
 *                    requests per modality, images, image / prompt / generated
 *                    tokens and finish reasons equal what the trace says,
 *                    counted here from the CSV text; cost = 2 encoders and 2
 *                    text actors × the duration; the other files are there.
 *                    Then a gzip-compressed slice of a 2023 text trace.
 *   ignore_eos       a request whose answer ends at an end-of-generation
 *                    token, sent again with ignore_eos, gets exactly
 *                    max_tokens tokens, none of them EOG, the same ones
 *                    before that point (the actor's masked draw)
 *   interrupt        SIGINT during a long replay: the bench cancels, writes
 *                    its report (interrupted, the unsent requests counted as
 *                    client errors) and exits 1 within seconds
 *
 * Teardown: every test ends in .fini with `modserve down --force` plus SIGKILL
 * of each process group recorded in the run directory; an alarm does the
 * same before Criterion's timeout. The run directory of a failed test is kept
 * and its logs printed.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <czmq.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "client.h"
#include "cluster.h"
#include "gguf.h"
#include "ms_common.h"
#include "ms_test.h"
#include "tokenizer.h"
#include "wire.h"

#define T_TIMEOUT_S 280   /* Criterion timeout of each test */
#define T_ALARM_S   250   /* our own deadline: tear down and exit first */
#define T_CMD_MS    90000 /* a modserve / modserve-bench command at most */
#define T_MAX_PROCS 64
#define T_WINDOW    "data/traces/AzureLMMInferenceTrace_multimodal_window_2024-10-16T0836.csv"
#define T_CONV      "data/traces/AzureLLMInferenceTrace_conv.csv"
#define T_ROW_A     100 /* the slice: rows [A, B) */
#define T_ROW_B     120
#define T_MAX_CTX   300 /* --max-context: 16 images x 16 tokens + text fit */
#define T_MAX_GEN   24  /* --max-gen */
#define T_EOG_MAX   300 /* max_tokens of the ignore_eos test */

static struct {
    char dir[128];                 /* run directory */
    ms_cluster_conf conf;          /* RUNDIR/cluster.conf */
    char front[MS_CLUSTER_EP_MAX]; /* broker front endpoint */
    bool passed;                   /* the test body reached its end */
} g;

static volatile pid_t g_pgids[T_MAX_PROCS];
static volatile sig_atomic_t g_n_pgids;

static double s_now_ms(void) {
    return ms_now_s() * 1000.0;
}

static void s_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void s_track(void) {
    ms_proc procs[T_MAX_PROCS];
    const int n = ms_pidfile_list(g.dir, procs, T_MAX_PROCS, NULL, 0);
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
    static const char msg[] = "itest_replay: test deadline passed: killing the cluster\n";
    ssize_t w = write(2, msg, sizeof(msg) - 1);
    (void)w;
    s_kill_all();
    _exit(3);
}

/* Starts argv (a path first) with output to log; returns the process. */
static ms_proc s_spawn(char *const argv[], const char *log) {
    ms_proc p = {.name = "cmd"};
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_proc_spawn(&p, argv, log, err, sizeof(err)), 0, "%s", err);
    if (g_n_pgids < T_MAX_PROCS) {
        g_pgids[g_n_pgids] = p.pid;
        g_n_pgids = g_n_pgids + 1;
    }
    return p;
}

/* Waits up to timeout_ms for p: its exit status, or -1 if it had to be killed. */
static int s_wait(const ms_proc *p, int timeout_ms) {
    const double deadline = s_now_ms() + timeout_ms;
    for (;;) {
        int status = 0;
        if (waitpid(p->pid, &status, WNOHANG) == p->pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        if (s_now_ms() > deadline) {
            kill(-p->pid, SIGKILL);
            waitpid(p->pid, NULL, 0);
            return -1;
        }
        s_sleep_ms(20);
    }
}

static int s_run(char *const argv[], const char *log, int timeout_ms) {
    const ms_proc p = s_spawn(argv, log);
    return s_wait(&p, timeout_ms);
}

static void s_print_file(const char *path, int max_lines) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024];
    int n = 0, i = 0;
    while (fgets(line, sizeof(line), f))
        n++;
    rewind(f);
    const int skip = n > max_lines ? n - max_lines : 0;
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
}

static void s_fini(void) {
    alarm(0);
    if (!g.dir[0]) return;
    char bin[1024], log[256];
    snprintf(bin, sizeof(bin), "%s/modserve", ms_test_bin_dir());
    snprintf(log, sizeof(log), "%s/down.log", g.dir);
    char *argv[] = {bin, "down", "--dir", g.dir, "--force", NULL};
    s_track();
    s_run(argv, log, 20000);
    s_kill_all();
    if (!g.passed) {
        const char *files[] = {"up.log", "bench.log", "bench2.log"};
        char path[512];
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            snprintf(path, sizeof(path), "%s/%s", g.dir, files[i]);
            s_print_file(path, 40);
        }
        snprintf(path, sizeof(path), "%s/logs", g.dir);
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.') continue;
            snprintf(path, sizeof(path), "%s/logs/%s", g.dir, de->d_name);
            s_print_file(path, 30);
        }
        if (d) closedir(d);
        fprintf(stderr, "itest_replay: run directory kept: %s\n", g.dir);
    } else if (!getenv("MS_KEEP_RUNDIR")) {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g.dir);
        if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", g.dir);
    }
}

/* modserve up --layout modserve with the tiny models, free ports, 1 thread each. */
static void s_up(void) {
    snprintf(g.dir, sizeof(g.dir), "/tmp/ms-itr-XXXXXX");
    cr_assert_not_null(mkdtemp(g.dir));
    char bin[1024], lm[1024], mm[1024], log[256];
    snprintf(bin, sizeof(bin), "%s/modserve", ms_test_bin_dir());
    snprintf(lm, sizeof(lm), "%s", ms_test_path(ms_test_models_dir(), "tiny-lm.gguf"));
    snprintf(mm, sizeof(mm), "%s", ms_test_path(ms_test_models_dir(), "tiny-mmproj.gguf"));
    snprintf(log, sizeof(log), "%s/up.log", g.dir);
    char *argv[] = {bin,         "up", "--dir",     g.dir, "--layout",    "modserve",
                    "--model",   lm,   "--mmproj",  mm,    "--port-base", "auto",
                    "--threads", "1",  "--timeout", "60",  NULL};
    const int rc = s_run(argv, log, T_CMD_MS);
    s_track();
    cr_assert_eq(rc, 0, "modserve up failed (%d): see %s", rc, log);
    ms_cluster_conf_default(&g.conf);
    char conf[256], err[MS_ERR_SIZE];
    snprintf(conf, sizeof(conf), "%s/cluster.conf", g.dir);
    cr_assert_eq(ms_cluster_conf_load(&g.conf, conf, err, sizeof(err)), 0, "%s", err);
    ms_cluster_front_ep(&g.conf, g.front, sizeof(g.front));
}

/* modserve-bench --dir RUNDIR ARGS... (output in RUNDIR/LOG); started, not waited for. */
static ms_proc s_bench_start(const char *logname, const char *const *args, int n_args) {
    static char bin[1024], log[256];
    snprintf(bin, sizeof(bin), "%s/modserve-bench", ms_test_bin_dir());
    snprintf(log, sizeof(log), "%s/%s", g.dir, logname);
    char *argv[40] = {bin, "--dir", g.dir};
    int n = 3;
    for (int i = 0; i < n_args && n < 38; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return s_spawn(argv, log);
}

static cJSON *s_read_json(const char *path) {
    size_t len = 0;
    char err[MS_ERR_SIZE];
    char *text = (char *)ms_read_file(path, 16u << 20, &len, err, sizeof(err));
    cr_assert_not_null(text, "%s", err);
    cJSON *j = cJSON_Parse(text);
    free(text);
    cr_assert_not_null(j, "%s does not parse as JSON", path);
    return j;
}

/* The number at a dotted path ("modalities.all.tokens"), asserting it exists. */
static double s_num(const cJSON *j, const char *path) {
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *x = j;
    for (char *k = strtok(buf, "."); k && x; k = strtok(NULL, "."))
        x = cJSON_GetObjectItem(x, k);
    cr_assert(x && cJSON_IsNumber(x), "report.json has no number at %s", path);
    return x->valuedouble;
}

static int s_count_lines(const char *path) {
    size_t len = 0;
    char err[MS_ERR_SIZE];
    char *text = (char *)ms_read_file(path, 64u << 20, &len, err, sizeof(err));
    cr_assert_not_null(text, "%s", err);
    int n = 0;
    for (size_t i = 0; i < len; i++)
        n += text[i] == '\n';
    free(text);
    return n;
}

/* What the trace says about rows [a, b), counted from the CSV text itself. */
typedef struct t_expect {
    int text, image;    /* requests by modality */
    long trace_images;  /* NumImages summed */
    long images;        /* images sent: min(NumImages, 16) */
    long image_tokens;  /* images x 16 (the tiny mmproj) */
    long prompt_tokens; /* max(min(Context, max_ctx), images x 16 + 1) */
    long gen;           /* min(max(Generated, 1), max_gen) */
} t_expect;

static t_expect s_expect(const char *path, int a, int b, bool has_images, int max_ctx,
                         int max_gen) {
    t_expect e;
    memset(&e, 0, sizeof(e));
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    char line[512];
    cr_assert_not_null(fgets(line, sizeof(line), f)); /* header */
    for (int row = 0; row < b && fgets(line, sizeof(line), f); row++) {
        if (row < a) continue;
        const char *c = strchr(line, ',');
        cr_assert_not_null(c);
        long img = 0, ctx = 0, gen = 0;
        const int got = has_images ? sscanf(c + 1, "%ld,%ld,%ld", &img, &ctx, &gen)
                                   : sscanf(c + 1, "%ld,%ld", &ctx, &gen);
        cr_assert_eq(got, has_images ? 3 : 2, "row %d: %s", row, line);
        const long sent = img < 16 ? img : 16;
        e.text += img == 0;
        e.image += img > 0;
        e.trace_images += img;
        e.images += sent;
        e.image_tokens += sent * 16;
        const long budget = ctx < max_ctx ? ctx : max_ctx;
        e.prompt_tokens += budget > sent * 16 + 1 ? budget : sent * 16 + 1;
        e.gen += gen < 1 ? 1 : gen > max_gen ? max_gen : gen;
    }
    fclose(f);
    return e;
}

static void s_check_report(const char *out, const t_expect *e, int rows) {
    char path[512];
    snprintf(path, sizeof(path), "%s/report.json", out);
    cJSON *j = s_read_json(path);
    cr_expect_eq(s_num(j, "trace.rows"), rows);
    cr_expect_eq(s_num(j, "modalities.text.requests"), e->text);
    cr_expect_eq(s_num(j, "modalities.image.requests"), e->image);
    cr_expect_eq(s_num(j, "modalities.all.requests"), rows);
    cr_expect_eq(s_num(j, "modalities.all.completed"), rows, "some requests failed");
    cr_expect_eq(s_num(j, "modalities.all.errors"), 0);
    cr_expect_eq(s_num(j, "modalities.all.trace_images"), e->trace_images);
    cr_expect_eq(s_num(j, "modalities.all.images"), e->images);
    cr_expect_eq(s_num(j, "modalities.image.images"), e->images);
    cr_expect_eq(s_num(j, "target.n_image_tokens"), 16);
    cr_expect_eq(s_num(j, "modalities.all.done_image_tokens"), e->image_tokens);
    cr_expect_eq(s_num(j, "modalities.all.done_prompt_tokens"), e->prompt_tokens);
    cr_expect_eq(s_num(j, "modalities.all.prompt_tokens"), e->prompt_tokens);
    cr_expect_eq(s_num(j, "modalities.all.max_tokens"), e->gen);
    cr_expect_eq(s_num(j, "modalities.all.tokens"), e->gen, "tokens received");
    cr_expect_eq(s_num(j, "modalities.all.done_completion_tokens"), e->gen);
    cr_expect_eq(s_num(j, "modalities.all.finish.length"), rows, "forced lengths");
    cr_expect_eq(s_num(j, "modalities.all.ttft_ms.n"), rows);
    cr_expect_eq(s_num(j, "modalities.text.e2e_ms.n"), e->text);
    /* cost: the cluster's 2 encoders and 2 text actors over the whole run */
    const double d = s_num(j, "duration_s");
    cr_expect_gt(d, 0);
    const cJSON *sets =
        cJSON_GetObjectItem(cJSON_GetObjectItem(j, "instance_seconds"), "by_stage_set");
    cr_assert_not_null(sets);
    const cJSON *enc = cJSON_GetObjectItem(sets, "encode");
    const cJSON *txt = cJSON_GetObjectItem(sets, "prefill+decode");
    cr_assert(enc && txt, "instance-seconds per stage set are missing");
    cr_expect(enc->valuedouble > 1.9 * d && enc->valuedouble < 2.1 * d,
              "encode instance-seconds %.3f for %.3f s with 2 encoders", enc->valuedouble, d);
    cr_expect(txt->valuedouble > 1.9 * d && txt->valuedouble < 2.1 * d,
              "text instance-seconds %.3f for %.3f s with 2 text actors", txt->valuedouble, d);
    cJSON_Delete(j);
    snprintf(path, sizeof(path), "%s/requests.csv", out);
    cr_expect_eq(s_count_lines(path), rows + 1);
    snprintf(path, sizeof(path), "%s/timeline.csv", out);
    cr_expect_geq(s_count_lines(path), 2);
    snprintf(path, sizeof(path), "%s/timeline.svg", out);
    cr_expect_gt(s_count_lines(path), rows);
}

TestSuite(replay, .init = s_init, .fini = s_fini, .timeout = T_TIMEOUT_S);

Test(replay, slice_counts) {
    s_up();
    const char *window = ms_test_path(ms_test_shared_dir(), T_WINDOW);
    char trace[1024], out[256], rows[32], ctx[16], gen[16];
    snprintf(trace, sizeof(trace), "%s", window);
    snprintf(out, sizeof(out), "%s/bench", g.dir);
    snprintf(rows, sizeof(rows), "%d:%d", T_ROW_A, T_ROW_B);
    snprintf(ctx, sizeof(ctx), "%d", T_MAX_CTX);
    snprintf(gen, sizeof(gen), "%d", T_MAX_GEN);
    const char *args[] = {"--trace",       trace, "--rows",    rows, "--time-scale", "0.3",
                          "--max-context", ctx,   "--max-gen", gen,  "--out",        out};
    ms_proc p = s_bench_start("bench.log", args, 12);
    const double t0 = s_now_ms();
    cr_assert_eq(s_wait(&p, T_CMD_MS), 0, "modserve-bench failed");
    const double took = s_now_ms() - t0;
    const t_expect e = s_expect(trace, T_ROW_A, T_ROW_B, true, T_MAX_CTX, T_MAX_GEN);
    cr_assert(e.text == 6 && e.image == 14 && e.trace_images == 48, "the slice changed?");
    s_check_report(out, &e, T_ROW_B - T_ROW_A);
    /* the slice spans 7.5 s of trace: about 2.3 s at time scale 0.3 */
    cr_expect_lt(took, 30000, "the replay took %.0f ms", took);

    /* a 2023 text trace, gzip-compressed: the first 15 rows */
    char gz[256], out2[256];
    snprintf(gz, sizeof(gz), "%s/conv15.csv.gz", g.dir);
    snprintf(out2, sizeof(out2), "%s/bench2", g.dir);
    FILE *f = fopen(ms_test_path(ms_test_shared_dir(), T_CONV), "r");
    cr_assert_not_null(f);
    gzFile z = gzopen(gz, "wb");
    cr_assert_not_null(z);
    char line[512];
    for (int i = 0; i < 16 && fgets(line, sizeof(line), f); i++)
        gzputs(z, line);
    gzclose(z);
    fclose(f);
    const char *args2[] = {"--trace", gz,          "--time-scale", "0.05",  "--max-context",
                           "200",     "--max-gen", "16",           "--out", out2,
                           "-q"};
    p = s_bench_start("bench2.log", args2, 11);
    cr_assert_eq(s_wait(&p, T_CMD_MS), 0, "modserve-bench (2023, gzip) failed");
    const t_expect e2 = s_expect(ms_test_path(ms_test_shared_dir(), T_CONV), 0, 15, false, 200, 16);
    cr_assert_eq(e2.text, 15);
    s_check_report(out2, &e2, 15);
    g.passed = true;
}

/* ---- ignore_eos ------------------------------------------------------------------ */

typedef struct t_answer {
    int32_t ids[T_EOG_MAX + 8];
    int n;
    char finish[16];
    bool ok;
} t_answer;

static void s_ask(ms_client *c, const char *id, uint64_t seed, bool ignore_eos, t_answer *a) {
    memset(a, 0, sizeof(*a));
    ms_msg m;
    ms_msg_init(&m, MS_MSG_SUBMIT);
    m.submit.id = (char *)id;
    m.submit.prompt = "the";
    m.submit.has_prompt = true;
    m.submit.raw = m.submit.has_raw = true;
    m.submit.max_tokens = T_EOG_MAX;
    m.submit.has_max_tokens = true;
    m.submit.temperature = 50.0; /* nearly uniform: an EOG token comes up now and then */
    m.submit.has_temperature = true;
    m.submit.seed = seed;
    m.submit.has_seed = true;
    m.submit.ignore_eos = ignore_eos;
    m.submit.has_ignore_eos = ignore_eos;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_client_submit(c, &m.submit, NULL, NULL, 0, err, sizeof(err)), 0, "%s", err);
    ms_msg ev;
    ms_msg_init(&ev, MS_MSG_NONE);
    for (;;) {
        const ms_wire_status st = ms_client_next(c, 30000, &ev, err, sizeof(err));
        cr_assert_eq(st, MS_WIRE_OK, "%s", err);
        if (ev.type == MS_MSG_TOKEN)
            for (uint32_t k = 0; k < ev.token.n_ids && a->n < T_EOG_MAX + 8; k++)
                a->ids[a->n++] = ev.token.ids[k];
        if (ev.type == MS_MSG_DONE) {
            snprintf(a->finish, sizeof(a->finish), "%s", ev.done.finish);
            a->ok = true;
            break;
        }
        cr_assert_neq(ev.type, MS_MSG_ERROR, "%s: %s", ev.error.code, ev.error.message);
    }
    ms_msg_fini(&ev);
}

Test(replay, ignore_eos) {
    s_up();
    char err[MS_ERR_SIZE];
    ms_gguf *gg = ms_gguf_open(ms_test_path(ms_test_models_dir(), "tiny-lm.gguf"), err, sizeof err);
    cr_assert_not_null(gg, "%s", err);
    ms_tokenizer *tok = ms_tokenizer_from_gguf(gg, err, sizeof err);
    cr_assert_not_null(tok, "%s", err);
    ms_client *c = ms_client_new(g.front, err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    t_answer *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    uint64_t seed = 0;
    for (uint64_t s = 1; s <= 40 && !seed; s++) {
        char id[32];
        snprintf(id, sizeof(id), "probe-%d", (int)s);
        s_ask(c, id, s, false, a);
        if (strcmp(a->finish, "eog") == 0) seed = s;
    }
    cr_assert_neq(seed, 0, "no answer ended at an EOG token in 40 seeds");
    cr_assert_lt(a->n, T_EOG_MAX);
    s_ask(c, "forced", seed, true, b);
    cr_expect_str_eq(b->finish, "length");
    cr_expect_eq(b->n, T_EOG_MAX, "ignore_eos: %d tokens, max_tokens %d", b->n, T_EOG_MAX);
    int first_eog = -1;
    for (int i = 0; i < a->n && first_eog < 0; i++)
        if (ms_tokenizer_is_eog(tok, a->ids[i])) first_eog = i;
    const int same = first_eog >= 0 ? first_eog : a->n;
    for (int i = 0; i < same && i < b->n; i++)
        cr_expect_eq(a->ids[i], b->ids[i], "token %d differs (seed %d)", i, (int)seed);
    for (int i = 0; i < b->n; i++)
        cr_expect_not(ms_tokenizer_is_eog(tok, b->ids[i]), "token %d is EOG", i);
    /* the same request twice gives the same answer (the masked draw is deterministic) */
    s_ask(c, "forced-again", seed, true, a);
    cr_expect_eq(a->n, b->n);
    cr_expect_eq(memcmp(a->ids, b->ids, (size_t)b->n * sizeof(int32_t)), 0);
    free(a);
    free(b);
    ms_client_destroy(&c);
    ms_tokenizer_destroy(&tok);
    ms_gguf_close(&gg);
    g.passed = true;
}

/* ---- ^C ------------------------------------------------------------------------- */

Test(replay, interrupt) {
    s_up();
    char trace[1024], out[256];
    snprintf(trace, sizeof(trace), "%s", ms_test_path(ms_test_shared_dir(), T_WINDOW));
    snprintf(out, sizeof(out), "%s/bench", g.dir);
    /* 400 rows in real time: about two minutes of trace */
    const char *args[] = {"--trace", trace,       "--rows", "0:400", "--max-context",
                          "200",     "--max-gen", "16",     "--out", out};
    ms_proc p = s_bench_start("bench.log", args, 10);
    s_sleep_ms(3000);
    cr_assert_eq(kill(p.pid, SIGINT), 0);
    const double t0 = s_now_ms();
    const int rc = s_wait(&p, 30000);
    const double took = s_now_ms() - t0;
    cr_expect_eq(rc, 1, "exit status %d after SIGINT", rc);
    cr_expect_lt(took, 10000, "%.0f ms to stop after SIGINT", took);
    char path[512];
    snprintf(path, sizeof(path), "%s/report.json", out);
    cJSON *j = s_read_json(path);
    cr_expect(cJSON_IsTrue(cJSON_GetObjectItem(j, "interrupted")));
    const double reqs = s_num(j, "modalities.all.requests");
    const double sent = s_num(j, "modalities.all.submitted");
    const double done = s_num(j, "modalities.all.completed");
    const double errors = s_num(j, "modalities.all.errors");
    cr_expect_eq(reqs, 400);
    cr_expect(sent > 0 && sent < 400, "%g requests sent in 3 s of a 2-minute slice", sent);
    cr_expect_gt(done, 0);
    cr_expect_eq(done + errors, 400);
    const cJSON *codes = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(j, "modalities"), "all"), "errors_by_code");
    cr_expect_geq(cJSON_GetObjectItem(codes, "client")->valuedouble, 400 - sent);
    cJSON_Delete(j);
    g.passed = true;
}
