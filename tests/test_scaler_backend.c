/* test_scaler_backend.c — the autoscaler's backends (broker/scaler_backend.h)
 * and command line (broker/autoscaler.h) without Redis or a cluster:
 * compose / k8s command lines, the bookkeeping that keeps a decision from
 * being taken twice (replicas asked for and not yet registered, actors asked
 * to leave that still show up, and their timeouts), the pod deletion-cost
 * annotation before a k8s scale-down, the asynchronous command runner (one
 * command at a time, a newer replica count replacing a queued one, failures
 * logged), the local backend in dry-run over a run directory, and the
 * argument parser. The process end to end: tests/itest_autoscaler.c. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autoscaler.h"
#include "cluster.h"
#include "ms_common.h"
#include "scaler_backend.h"

#define T_LOG_MAX 64

/* Lines the backend logged. */
typedef struct {
    char line[T_LOG_MAX][MS_SCALER_LINE_MAX];
    int n;
} t_log;

static void s_log(void *user, const char *line) {
    t_log *l = user;
    if (l->n < T_LOG_MAX) snprintf(l->line[l->n++], MS_SCALER_LINE_MAX, "%s", line);
}

/* Index of the first logged line containing s, or -1. */
static int s_logged(const t_log *l, const char *s) {
    for (int i = 0; i < l->n; i++)
        if (strstr(l->line[i], s)) return i;
    return -1;
}

static ms_actor_info s_info(const char *id, uint32_t stages, ms_actor_state st, const char *host) {
    ms_actor_info a;
    memset(&a, 0, sizeof(a));
    snprintf(a.id, sizeof(a.id), "%s", id);
    snprintf(a.host, sizeof(a.host), "%s", host);
    a.stages = stages;
    a.state = st;
    a.pid = 100;
    return a;
}

static const ms_scaler_pool s_enc = {.name = "encode",
                                     .stages = MS_STAGES_ENCODE,
                                     .min_replicas = 1,
                                     .max_replicas = 4,
                                     .target = "encoder"};

/* Members of pool 0; counts by state into up/starting/draining. */
static int s_members(ms_scaler *s, const ms_actor_info *reg, int n_reg, int64_t now,
                     ms_scaler_actor *out, int *up, int *starting, int *draining) {
    int n = 0;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_scaler_members(s, 0, &s_enc, reg, n_reg, now, out, MS_SCALER_MAX_MEMBERS, &n,
                                   err, sizeof(err)),
                 0, "%s", err);
    *up = *starting = *draining = 0;
    for (int i = 0; i < n; i++) {
        if (out[i].state == MS_SCALE_UP) (*up)++;
        if (out[i].state == MS_SCALE_STARTING) (*starting)++;
        if (out[i].state == MS_SCALE_DRAINING) (*draining)++;
    }
    return n;
}

Test(scaler, command_lines, .timeout = 10) {
    ms_scaler_opts o;
    ms_scaler_opts_default(&o);
    char buf[512];
    cr_assert_eq(ms_scaler_format_scale(&o, "compose", "enc", 3, buf, sizeof(buf)), 0);
    cr_expect_str_eq(buf, "docker-compose up -d --scale enc=3 --no-recreate enc");
    snprintf(o.compose_file, sizeof(o.compose_file), "deploy/compose.yml");
    snprintf(o.compose_cmd, sizeof(o.compose_cmd), "docker compose");
    cr_assert_eq(ms_scaler_format_scale(&o, "compose", "enc", 0, buf, sizeof(buf)), 0);
    cr_expect_str_eq(buf,
                     "docker compose -f deploy/compose.yml up -d --scale enc=0 --no-recreate enc");
    cr_assert_eq(ms_scaler_format_scale(&o, "k8s", "modserve-enc", 5, buf, sizeof(buf)), 0);
    cr_expect_str_eq(buf, "kubectl scale deployment/modserve-enc --replicas=5");
    snprintf(o.k8s_namespace, sizeof(o.k8s_namespace), "prod");
    cr_assert_eq(ms_scaler_format_scale(&o, "k8s", "enc", 1, buf, sizeof(buf)), 0);
    cr_expect_str_eq(buf, "kubectl -n prod scale deployment/enc --replicas=1");
    cr_expect_eq(ms_scaler_format_scale(&o, "nomad", "enc", 1, buf, sizeof(buf)), -1);
    cr_expect_eq(ms_scaler_format_scale(&o, "k8s", "enc", 1, buf, 16), -1, "cut short: %s", buf);
}

Test(scaler, compose_dry_run_bookkeeping, .timeout = 10) {
    t_log log = {.n = 0};
    ms_scaler_opts o;
    ms_scaler_opts_default(&o);
    o.dry_run = true;
    o.start_timeout_ms = 5000;
    o.drain_timeout_ms = 8000;
    o.log = s_log;
    o.log_user = &log;
    char err[MS_ERR_SIZE];
    ms_scaler *s = ms_scaler_compose_new(&o, err, sizeof(err));
    cr_assert_not_null(s, "%s", err);
    cr_expect_str_eq(ms_scaler_name(s), "compose");
    ms_actor_info reg[4] = {
        s_info("enc-a", MS_STAGES_ENCODE, MS_ACTOR_UP, "c1"),
        s_info("text-a", MS_STAGES_TEXT, MS_ACTOR_UP, "c2"), /* another pool: not a member */
    };
    ms_scaler_actor m[MS_SCALER_MAX_MEMBERS];
    int up, starting, draining;
    cr_expect_eq(s_members(s, reg, 2, 0, m, &up, &starting, &draining), 1);
    cr_expect_eq(up, 1);
    cr_expect_str_eq(m[0].id, "enc-a");
    cr_expect(m[0].registered);

    /* asked for 3: two placeholders count as starting until they register */
    cr_assert_eq(ms_scaler_start(s, 0, &s_enc, 2, 3, 1000, err, sizeof(err)), 0, "%s", err);
    cr_expect_geq(s_logged(&log, "dry-run: docker-compose up -d --scale encoder=3 --no-recreate "
                                 "encoder"),
                  0);
    cr_expect_eq(s_members(s, reg, 2, 2000, m, &up, &starting, &draining), 3);
    cr_expect_eq(up, 1);
    cr_expect_eq(starting, 2);
    reg[2] = s_info("enc-b", MS_STAGES_ENCODE, MS_ACTOR_UP, "c3");
    cr_expect_eq(s_members(s, reg, 3, 2500, m, &up, &starting, &draining), 3);
    cr_expect_eq(up, 2);
    cr_expect_eq(starting, 1);
    /* the third never registers: after the start timeout it is forgotten, with a line */
    cr_expect_eq(s_members(s, reg, 3, 6000, m, &up, &starting, &draining), 2);
    cr_expect_eq(starting, 0);
    cr_expect_geq(s_logged(&log, "did not register within 5000 ms"), 0);

    /* drain enc-a (asked for 1): it counts as leaving while the registry still lists it up */
    ms_scaler_actor leave = m[0];
    cr_assert_str_eq(leave.id, "enc-a");
    cr_assert_eq(ms_scaler_drain(s, 0, &s_enc, &leave, 1, 1, 7000, err, sizeof(err)), 0, "%s", err);
    cr_expect_geq(s_logged(&log, "--scale encoder=1"), 0);
    s_members(s, reg, 3, 7100, m, &up, &starting, &draining);
    cr_expect_eq(up, 1);
    cr_expect_eq(draining, 1);
    for (int i = 0; i < 2; i++)
        if (m[i].state == MS_SCALE_DRAINING)
            cr_expect_str_eq(m[i].id, "enc-a", "the actor chosen to leave is the one marked");
    /* compose stopped it: the registry shows it draining, then not at all */
    reg[0].state = MS_ACTOR_DRAINING;
    s_members(s, reg, 3, 7200, m, &up, &starting, &draining);
    cr_expect_eq(up, 1);
    cr_expect_eq(draining, 1);
    reg[0] = reg[2];
    s_members(s, reg, 2, 7300, m, &up, &starting, &draining);
    cr_expect_eq(up, 1);
    cr_expect_eq(draining, 0);
    ms_scaler_destroy(&s);
    cr_expect_null(s);
}

Test(scaler, drain_mark_expires, .timeout = 10) {
    t_log log = {.n = 0};
    ms_scaler_opts o;
    ms_scaler_opts_default(&o);
    o.dry_run = true;
    o.drain_timeout_ms = 3000;
    o.log = s_log;
    o.log_user = &log;
    char err[MS_ERR_SIZE];
    ms_scaler *s = ms_scaler_compose_new(&o, err, sizeof(err));
    cr_assert_not_null(s);
    ms_actor_info reg[2] = {s_info("enc-1", MS_STAGES_ENCODE, MS_ACTOR_UP, "h"),
                            s_info("enc-2", MS_STAGES_ENCODE, MS_ACTOR_UP, "h")};
    ms_scaler_actor m[MS_SCALER_MAX_MEMBERS];
    int up, starting, draining;
    s_members(s, reg, 2, 0, m, &up, &starting, &draining);
    /* compose picks the container itself: with no id chosen, the newest listed leaves */
    ms_scaler_actor anon = {.state = MS_SCALE_UP};
    cr_assert_eq(ms_scaler_drain(s, 0, &s_enc, &anon, 1, 1, 100, err, sizeof(err)), 0);
    s_members(s, reg, 2, 200, m, &up, &starting, &draining);
    cr_expect_eq(up, 1);
    cr_expect_eq(draining, 1);
    cr_expect_eq(m[1].state, MS_SCALE_DRAINING);
    /* still listed up after the drain timeout: counted as up again, with a line */
    s_members(s, reg, 2, 3200, m, &up, &starting, &draining);
    cr_expect_eq(up, 2);
    cr_expect_eq(draining, 0);
    cr_expect_geq(s_logged(&log, "still up"), 0);
    ms_scaler_destroy(&s);
}

Test(scaler, k8s_annotates_the_pods_that_leave, .timeout = 10) {
    t_log log = {.n = 0};
    ms_scaler_opts o;
    ms_scaler_opts_default(&o);
    o.dry_run = true;
    o.log = s_log;
    o.log_user = &log;
    snprintf(o.k8s_namespace, sizeof(o.k8s_namespace), "serving");
    char err[MS_ERR_SIZE];
    ms_scaler *s = ms_scaler_k8s_new(&o, err, sizeof(err));
    cr_assert_not_null(s, "%s", err);
    ms_actor_info reg[3] = {s_info("enc-x", MS_STAGES_ENCODE, MS_ACTOR_UP, "enc-7d9f-abcde"),
                            s_info("enc-y", MS_STAGES_ENCODE, MS_ACTOR_UP, "enc-7d9f-fghij"),
                            s_info("enc-z", MS_STAGES_ENCODE, MS_ACTOR_UP, "enc-7d9f-klmno")};
    ms_scaler_actor m[MS_SCALER_MAX_MEMBERS];
    int up, starting, draining;
    s_members(s, reg, 3, 0, m, &up, &starting, &draining);
    ms_scaler_actor leave[2] = {m[0], m[2]};
    cr_assert_eq(ms_scaler_drain(s, 0, &s_enc, leave, 2, 1, 100, err, sizeof(err)), 0, "%s", err);
    const int a1 =
        s_logged(&log, "dry-run: kubectl -n serving annotate --overwrite pod "
                       "enc-7d9f-abcde controller.kubernetes.io/pod-deletion-cost=-1000");
    const int a2 = s_logged(&log, "annotate --overwrite pod enc-7d9f-klmno");
    const int sc =
        s_logged(&log, "dry-run: kubectl -n serving scale deployment/encoder --replicas=1");
    cr_expect_geq(a1, 0);
    cr_expect_geq(a2, 0);
    cr_expect_gt(sc, a1, "the scale-down comes after the annotations");
    cr_expect_gt(sc, a2);
    cr_expect_lt(s_logged(&log, "enc-7d9f-fghij"), 0, "the pod that stays is not annotated");
    s_members(s, reg, 3, 200, m, &up, &starting, &draining);
    cr_expect_eq(up, 1);
    cr_expect_str_eq(m[1].id, "enc-y");
    cr_expect_eq(m[1].state, MS_SCALE_UP);
    ms_scaler_destroy(&s);
}

/* A fake kubectl in a new temp dir (removed by s_rmdir): appends its
 * arguments to a file, after a short sleep. */
static void s_fake_kubectl(char *dir, char *path, size_t size, char *out, size_t out_size,
                           int exit_code) {
    snprintf(dir, 64, "/tmp/ms-scaler-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, size, "%s/kubectl", dir);
    snprintf(out, out_size, "%s/calls", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "#!/bin/sh\nsleep 0.2\necho \"$*\" >> %s\nexit %d\n", out, exit_code);
    fclose(f);
    cr_assert_eq(chmod(path, 0755), 0);
}

static void s_rmdir(const char *dir) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

static int s_wait_runner(ms_scaler *s, int64_t *now, const char *calls, int want_lines) {
    ms_actor_info none;
    ms_scaler_actor m[MS_SCALER_MAX_MEMBERS];
    int up, starting, draining, lines = 0;
    for (int i = 0; i < 100 && lines < want_lines; i++) {
        usleep(50000);
        *now += 50;
        s_members(s, &none, 0, *now, m, &up, &starting, &draining);
        FILE *f = fopen(calls, "r");
        lines = 0;
        char buf[256];
        while (f && fgets(buf, sizeof(buf), f))
            lines++;
        if (f) fclose(f);
    }
    /* let a command that should not run have its chance */
    for (int i = 0; i < 8; i++) {
        usleep(50000);
        *now += 50;
        s_members(s, &none, 0, *now, m, &up, &starting, &draining);
    }
    return lines;
}

Test(scaler, commands_run_one_at_a_time_newest_count_wins, .timeout = 20) {
    t_log log = {.n = 0};
    ms_scaler_opts o;
    ms_scaler_opts_default(&o);
    char calls[256], dir[64];
    s_fake_kubectl(dir, o.kubectl, sizeof(o.kubectl), calls, sizeof(calls), 0);
    o.log = s_log;
    o.log_user = &log;
    char err[MS_ERR_SIZE];
    ms_scaler *s = ms_scaler_k8s_new(&o, err, sizeof(err));
    cr_assert_not_null(s, "%s", err);
    int64_t now = 0;
    /* 2 runs at once; 3 waits and is replaced by 4 */
    cr_assert_eq(ms_scaler_start(s, 0, &s_enc, 1, 2, now, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ms_scaler_start(s, 0, &s_enc, 1, 3, now, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ms_scaler_start(s, 0, &s_enc, 1, 4, now, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(s_wait_runner(s, &now, calls, 2), 2);
    size_t len = 0;
    char *text = (char *)ms_read_file(calls, 4096, &len, err, sizeof(err));
    cr_assert_not_null(text, "%s", err);
    cr_expect_str_eq(text, "scale deployment/encoder --replicas=2\n"
                           "scale deployment/encoder --replicas=4\n");
    free(text);
    cr_expect_geq(s_logged(&log, "running: "), 0);
    ms_scaler_destroy(&s);
    s_rmdir(dir);

    /* a failing command is logged with its exit status */
    log.n = 0;
    s_fake_kubectl(dir, o.kubectl, sizeof(o.kubectl), calls, sizeof(calls), 3);
    s = ms_scaler_k8s_new(&o, err, sizeof(err));
    cr_assert_not_null(s);
    cr_assert_eq(ms_scaler_start(s, 0, &s_enc, 1, 2, now, err, sizeof(err)), 0);
    s_wait_runner(s, &now, calls, 1);
    cr_expect_geq(s_logged(&log, "command failed (exit 3"), 0);
    ms_scaler_destroy(&s);
    s_rmdir(dir);
}

Test(scaler, local_dry_run_over_a_run_directory, .timeout = 10) {
    char dir[] = "/tmp/ms-scaler-run-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    ms_cluster_run *run = calloc(1, sizeof(*run));
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_cluster_run_create(run, dir, err, sizeof(err)), 0, "%s", err);
    const char *conf = "[cluster]\nlayout = modserve\n"
                       "[group enc]\nstages = encode\ncount = 1\n"
                       "[group text]\nstages = prefill+decode\ncount = 1\n";
    cr_assert_eq(ms_cluster_conf_parse(&run->conf, conf, strlen(conf), "test", err, sizeof(err)), 0,
                 "%s", err);
    snprintf(run->conf.lm, sizeof(run->conf.lm), "/models/lm.gguf");
    snprintf(run->conf.mmproj, sizeof(run->conf.mmproj), "/models/mm.gguf");
    cr_assert_eq(ms_cluster_run_save(run, err, sizeof(err)), 0, "%s", err);

    t_log log = {.n = 0};
    ms_scaler_opts o;
    ms_scaler_opts_default(&o);
    o.dry_run = true;
    o.log = s_log;
    o.log_user = &log;
    snprintf(o.rundir, sizeof(o.rundir), "%s", dir);
    ms_scaler *s = ms_scaler_local_new(&o, err, sizeof(err));
    cr_assert_not_null(s, "%s", err);
    cr_expect_str_eq(ms_scaler_name(s), "local");
    const ms_scaler_pool pool = {.name = "encode",
                                 .stages = MS_STAGES_ENCODE,
                                 .min_replicas = 1,
                                 .max_replicas = 4,
                                 .target = "enc"};
    cr_assert_eq(ms_scaler_start(s, 0, &pool, 2, 3, 0, err, sizeof(err)), 0, "%s", err);
    char want[MS_CLUSTER_PATH_MAX + 64];
    snprintf(want, sizeof(want), "dry-run: modserve scale enc 3 --dir %s", run->dir);
    cr_expect_geq(s_logged(&log, want), 0, "no '%s' line", want);
    /* nothing was started: no pid file */
    ms_proc procs[8];
    cr_expect_eq(ms_pidfile_list(dir, procs, 8, err, sizeof(err)), 0);
    ms_scaler_destroy(&s);

    /* a run directory without cluster.conf is refused */
    snprintf(o.rundir, sizeof(o.rundir), "%s/nothing-here", dir);
    cr_expect_null(ms_scaler_local_new(&o, err, sizeof(err)));
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
    free(run);
}

/* ---- the command line ------------------------------------------------------------------ */

static int s_parse(ms_autoscaler_args *a, const char *line, char *err, size_t err_size) {
    char buf[1024];
    char *argv[64] = {"modserve-autoscaler"};
    int argc = 1 + ms_split_args(line, buf, sizeof(buf), argv + 1, 62);
    return ms_autoscaler_args_parse(a, argc, argv, err, err_size);
}

Test(scaler, args, .timeout = 10) {
    static ms_autoscaler_args a;
    char err[MS_ERR_SIZE];
    cr_assert_eq(s_parse(&a,
                         "--redis 10.0.0.5:6380 --prefix prod --backend k8s "
                         "--k8s-deployment-encode enc --k8s-deployment-text txt --min-encode 2 "
                         "--max-encode 9 --window-s 0.5 --interval-s 0.25 --down-cooldown-s 30 "
                         "--down-band 0.3 --attainment 0.95 --max-step-down 2 --dry-run -v",
                         err, sizeof(err)),
                 0, "%s", err);
    cr_expect_str_eq(a.cfg.redis_host, "10.0.0.5");
    cr_expect_eq(a.cfg.redis_port, 6380);
    cr_expect_str_eq(a.cfg.prefix, "prod");
    cr_expect_str_eq(a.backend, "k8s");
    cr_expect_eq(a.cfg.policy.window_ms, 500);
    cr_expect_eq(a.cfg.interval_ms, 250);
    cr_expect_eq(a.cfg.policy.down_cooldown_ms, 30000);
    cr_expect_float_eq(a.cfg.policy.down_band, 0.3, 1e-12);
    cr_expect_float_eq(a.cfg.policy.attainment_threshold, 0.95, 1e-12);
    cr_expect_eq(a.cfg.policy.max_step_down, 2);
    cr_expect(a.scaler.dry_run);
    cr_expect(a.cfg.verbose);
    ms_scaler *b = NULL;
    cr_assert_eq(ms_autoscaler_args_resolve(&a, &b, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(a.cfg.n_pools, 2);
    cr_expect_str_eq(a.cfg.pools[0].name, "encode");
    cr_expect_str_eq(a.cfg.pools[0].target, "enc");
    cr_expect_eq(a.cfg.pools[0].min_replicas, 2);
    cr_expect_eq(a.cfg.pools[0].max_replicas, 9);
    cr_expect_str_eq(a.cfg.pools[1].name, "text");
    cr_expect_eq(a.cfg.pools[1].stages, MS_STAGES_TEXT);
    cr_expect_eq(a.cfg.pools[1].min_replicas, MS_AUTOSCALER_MIN_DEFAULT);
    cr_expect_eq(a.cfg.pools[1].max_replicas, MS_AUTOSCALER_MAX_DEFAULT);
    cr_expect(a.cfg.dry_run);
    cr_expect_gt(a.cfg.capacity[MS_STAGE_ENCODE], 0, "capacities from the built-in profile");
    cr_expect_str_eq(ms_scaler_name(b), "k8s");
    ms_scaler_destroy(&b);

    static const char *const bad[] = {
        "",                                                       /* neither --dir nor --redis */
        "--redis 127.0.0.1:6379",                                 /* local needs --dir */
        "--redis 127.0.0.1:6379 --backend compose",               /* no --service-* */
        "--redis 127.0.0.1 --backend compose --service-encode e", /* no port */
        "--redis h:1 --backend swarm",                            /* unknown backend */
        "--redis h:1 --backend compose --service-vision e",       /* unknown pool */
        "--dir /x --service-encode e",                            /* services need compose/k8s */
        "--dir /x --window-s 0",                                  /* out of range */
        "--dir /x --interval-s abc",
        "--dir /x --down-band 1",
        "--dir /x --attainment 0",
        "--dir /x --min-encode -1",
        "--dir /x --frobnicate 3",
        "--dir", /* missing value */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        cr_expect_eq(s_parse(&a, bad[i], err, sizeof(err)), -1, "accepted: '%s'", bad[i]);
        cr_expect_neq(err[0], '\0', "no message for '%s'", bad[i]);
    }
    /* min above max is refused when the pools are built */
    cr_assert_eq(s_parse(&a,
                         "--redis h:1 --backend compose --service-encode e --min-encode 5 "
                         "--max-encode 2",
                         err, sizeof(err)),
                 0, "%s", err);
    cr_expect_eq(ms_autoscaler_args_resolve(&a, &b, err, sizeof(err)), -1);
    cr_expect_null(b);
    cr_expect(strstr(err, "min 5 / max 2"), "%s", err);
    /* a run directory that holds no cluster */
    cr_assert_eq(s_parse(&a, "--dir /nonexistent/run", err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(ms_autoscaler_args_resolve(&a, &b, err, sizeof(err)), -1);
}
