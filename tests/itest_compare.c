/* itest_compare.c — `modserve bench --compare modserve,monolith` end to end
 * with the tiny models ($MS_TEST_MODELS): the command (through the `modserve`
 * CLI, which execs modserve-bench) derives the SLOs from isolated requests on
 * a monolith, then for two rates starts a real cluster per layout (redis-server,
 * broker, actors on free ports), replays 20 rows of the shared 2025 window,
 * and takes it down.
 *
 *   modserve_vs_monolith   exit 0; compare.json: the derived SLO, 4 runs that
 *                          ran with 20 requests each, all completed, per-layout
 *                          splits of the 2-core budget (1 encoder + 1 text
 *                          instance; 2 monoliths), instance-seconds per stage
 *                          that match those splits over each run's duration,
 *                          a ratio per rate, the highest rate at SLO per
 *                          layout; each run's report.json; compare.svg; no
 *                          process left running in any run directory
 *
 * Teardown: .fini runs `modserve down --force` on every run directory and
 * SIGKILLs what is left; the output directory of a failed test is kept.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
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

#define T_TIMEOUT_S 280    /* Criterion timeout */
#define T_ALARM_S   250    /* our own deadline: tear down first */
#define T_CMD_MS    200000 /* the compare command at most */
#define T_WINDOW    "data/traces/AzureLMMInferenceTrace_multimodal_window_2024-10-16T0836.csv"
#define T_ROWS      "100:120"
#define T_N_ROWS    20

static char g_dir[128];
static bool g_passed;

/* Stops every cluster the command left in OUT/runs (pid files), forcefully. */
static void s_down_all(bool force_kill) {
    char runs[256];
    snprintf(runs, sizeof runs, "%s/out/runs", g_dir);
    DIR *d = opendir(runs);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char rd[512];
        snprintf(rd, sizeof rd, "%s/%s", runs, de->d_name);
        ms_proc procs[64];
        const int n = ms_pidfile_list(rd, procs, 64, NULL, 0);
        for (int i = 0; i < n; i++)
            if (force_kill && ms_proc_alive(&procs[i])) ms_proc_signal(&procs[i], SIGKILL);
    }
    if (d) closedir(d);
}

static void s_on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "itest_compare: deadline passed: killing the clusters\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    s_down_all(true);
    _exit(3);
}

static void s_init(void) {
    g_passed = false;
    snprintf(g_dir, sizeof g_dir, "/tmp/ms-itcmp-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    signal(SIGALRM, s_on_alarm);
    alarm(T_ALARM_S);
}

static void s_fini(void) {
    alarm(0);
    s_down_all(true);
    if (g_passed && !getenv("MS_KEEP_RUNDIR")) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", g_dir);
    } else {
        fprintf(stderr, "itest_compare: output kept in %s (see compare.log)\n", g_dir);
    }
}

static cJSON *s_read_json(const char *path) {
    size_t len = 0;
    char err[MS_ERR_SIZE];
    char *text = (char *)ms_read_file(path, 16u << 20, &len, err, sizeof err);
    cr_assert_not_null(text, "%s", err);
    cJSON *j = cJSON_Parse(text);
    free(text);
    cr_assert_not_null(j, "%s does not parse as JSON", path);
    return j;
}

/* The item at a dotted path, asserting it exists. */
static const cJSON *s_at(const cJSON *j, const char *path) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *x = j;
    for (char *k = strtok(buf, "."); k && x; k = strtok(NULL, "."))
        x = cJSON_GetObjectItem(x, k);
    cr_assert_not_null(x, "no %s", path);
    return x;
}

static double s_num(const cJSON *j, const char *path) {
    const cJSON *x = s_at(j, path);
    cr_assert(cJSON_IsNumber(x), "%s is not a number", path);
    return x->valuedouble;
}

static int s_run(char *const argv[], const char *log, int timeout_ms) {
    ms_proc p = {.name = "compare"};
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_proc_spawn(&p, argv, log, err, sizeof err), 0, "%s", err);
    const double deadline = ms_now_s() + timeout_ms / 1000.0;
    for (;;) {
        int status = 0;
        if (waitpid(p.pid, &status, WNOHANG) == p.pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        if (ms_now_s() > deadline) {
            kill(-p.pid, SIGKILL);
            waitpid(p.pid, NULL, 0);
            return -1;
        }
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

Test(compare, modserve_vs_monolith, .init = s_init, .fini = s_fini, .timeout = T_TIMEOUT_S) {
    char bin[1024], lm[1024], mm[1024], trace[1024], out[256], log[256];
    snprintf(bin, sizeof bin, "%s/modserve", ms_test_bin_dir());
    snprintf(lm, sizeof lm, "%s", ms_test_path(ms_test_models_dir(), "tiny-lm.gguf"));
    snprintf(mm, sizeof mm, "%s", ms_test_path(ms_test_models_dir(), "tiny-mmproj.gguf"));
    snprintf(trace, sizeof trace, "%s", ms_test_path(ms_test_shared_dir(), T_WINDOW));
    snprintf(out, sizeof out, "%s/out", g_dir);
    snprintf(log, sizeof log, "%s/compare.log", g_dir);
    char *argv[] = {bin,
                    "bench",
                    "--compare",
                    "modserve,monolith",
                    "--model-info",
                    lm,
                    "--mmproj",
                    mm,
                    "--trace",
                    trace,
                    "--rows",
                    T_ROWS,
                    "--time-scale",
                    "0.05",
                    "--rates",
                    "1,2",
                    "--max-context",
                    "300",
                    "--max-gen",
                    "24",
                    "--calib-requests",
                    "4",
                    "--cores",
                    "2",
                    "--out",
                    out,
                    "-q",
                    NULL};
    const int rc = s_run(argv, log, T_CMD_MS);
    cr_assert_eq(rc, 0, "modserve bench --compare exited %d: see %s", rc, log);

    char path[512];
    snprintf(path, sizeof path, "%s/compare.json", out);
    cJSON *j = s_read_json(path);
    cr_assert_eq((int)s_num(j, "cores"), 2);
    cr_assert_str_eq(s_at(j, "baseline")->valuestring, "monolith");
    cr_assert(cJSON_IsTrue(s_at(j, "slo.derived")));
    cr_assert_eq((int)s_num(j, "slo.calibration_requests"), 4);
    cr_assert(s_num(j, "slo.isolated_ttft_p50_ms") > 0);
    /* derived = factor (5) × the isolated P50, rounded up */
    cr_assert_float_eq(s_num(j, "slo.ttft_ms"),
                       ceil(5 * s_num(j, "slo.isolated_ttft_p50_ms") - 1e-9), 1e-6);
    cr_assert_eq((int)s_num(j, "workload.rows"), T_N_ROWS);
    const cJSON *runs = s_at(j, "runs");
    cr_assert_eq(cJSON_GetArraySize(runs), 4);
    static const char *const labels[] = {"modserve-x1", "monolith-x1", "modserve-x2",
                                         "monolith-x2"};
    for (int i = 0; i < 4; i++) {
        const cJSON *r = cJSON_GetArrayItem(runs, i);
        cr_assert_str_eq(s_at(r, "label")->valuestring, labels[i]);
        cr_assert(cJSON_IsTrue(s_at(r, "ran")), "%s did not run: %s", labels[i],
                  s_at(r, "error")->valuestring);
        cr_assert_eq((int)s_num(r, "modalities.all.requests"), T_N_ROWS);
        cr_assert_eq((int)s_num(r, "modalities.all.completed"), T_N_ROWS, "%s", labels[i]);
        cr_assert_eq((int)s_num(r, "cores"), 2);
        const cJSON *split = s_at(r, "split");
        const bool ms = i % 2 == 0;
        cr_assert_eq(cJSON_GetArraySize(split), ms ? 2 : 1);
        if (ms) {
            cr_assert_str_eq(s_at(cJSON_GetArrayItem(split, 0), "stages")->valuestring, "encode");
            cr_assert_eq((int)s_num(cJSON_GetArrayItem(split, 0), "count"), 1);
            cr_assert_str_eq(s_at(cJSON_GetArrayItem(split, 1), "stages")->valuestring,
                             "prefill+decode");
            cr_assert_eq((int)s_num(cJSON_GetArrayItem(split, 1), "count"), 1);
        } else {
            cr_assert_str_eq(s_at(cJSON_GetArrayItem(split, 0), "stages")->valuestring,
                             "encode+prefill+decode");
            cr_assert_eq((int)s_num(cJSON_GetArrayItem(split, 0), "count"), 2);
        }
        /* the cost is the split held over the run: encoders per stage, 2 actors in total */
        const double dur = s_num(r, "duration_s");
        cr_assert(dur > 0);
        const double enc = s_num(r, "instance_s_by_stage.encode") / dur;
        const double pre = s_num(r, "instance_s_by_stage.prefill") / dur;
        const double tot = s_num(r, "instance_s") / dur;
        cr_assert(fabs(enc - (ms ? 1 : 2)) < 0.35, "%s: %.2f encoders on average", labels[i], enc);
        cr_assert(fabs(pre - (ms ? 1 : 2)) < 0.35, "%s: %.2f prefill actors", labels[i], pre);
        cr_assert(fabs(tot - 2) < 0.5, "%s: %.2f actors", labels[i], tot);
        /* the run's own report */
        char rp[600];
        snprintf(rp, sizeof rp, "%s/%s/report.json", out, labels[i]);
        cJSON *rj = s_read_json(rp);
        cr_assert_eq((int)s_num(rj, "modalities.all.completed"), T_N_ROWS);
        cr_assert_float_eq(s_num(rj, "slo.ttft_ms"), s_num(j, "slo.ttft_ms"), 1e-6);
        cJSON_Delete(rj);
        /* nothing left running */
        char rd[600];
        snprintf(rd, sizeof rd, "%s/runs/%s", out, labels[i]);
        ms_proc procs[64];
        const int n = ms_pidfile_list(rd, procs, 64, NULL, 0);
        for (int k = 0; k < n; k++)
            cr_assert(!ms_proc_alive(&procs[k]), "%s: %s still runs", labels[i], procs[k].name);
    }
    /* one ratio per rate, modserve / monolith */
    const cJSON *ratios = s_at(j, "ratios");
    cr_assert_eq(cJSON_GetArraySize(ratios), 2);
    cr_assert_str_eq(s_at(cJSON_GetArrayItem(ratios, 0), "vs")->valuestring, "monolith");
    cr_assert(cJSON_IsNumber(s_at(cJSON_GetArrayItem(ratios, 0), "instance_s")));
    const cJSON *mx = s_at(j, "max_rate_at_slo");
    cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(mx, "modserve")));
    cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(mx, "monolith")));
    cJSON_Delete(j);
    snprintf(path, sizeof path, "%s/compare.svg", out);
    size_t len = 0;
    char err[MS_ERR_SIZE];
    char *svg = (char *)ms_read_file(path, 16u << 20, &len, err, sizeof err);
    cr_assert_not_null(svg, "%s", err);
    cr_assert(len > 100 && strncmp(svg, "<svg", 4) == 0);
    free(svg);
    /* the calibration's own report */
    snprintf(path, sizeof path, "%s/calibration/report.json", out);
    cJSON *cj = s_read_json(path);
    cr_assert_eq((int)s_num(cj, "modalities.all.requests"), 4);
    cJSON_Delete(cj);
    g_passed = true;
}
