/* test_cluster.c — cluster files, pid files, process control, workload
 * generation and latency statistics (schemas/cluster.h, schemas/workload.h).
 * No broker or actors here: tests/itest_cluster.c runs the real cluster. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster.h"
#include "ms_test.h"
#include "workload.h"

static int s_parse(ms_cluster_conf *c, const char *text, char *err) {
    ms_cluster_conf_default(c);
    return ms_cluster_conf_parse(c, text, strlen(text), "t.conf", err, MS_ERR_SIZE);
}

static const char *s_good = "# a comment\n"
                            "[cluster]\n"
                            "layout = disagg   # trailing comment\n"
                            "port_base = 9000\n"
                            "data = ipc\n"
                            "prefix = test_1\n"
                            "\n"
                            "[broker]\n"
                            "profile = prof#1.json\n"
                            "args = --foo 1  --bar\n"
                            "[models]\n"
                            "lm = /m/lm.gguf\n"
                            "mmproj = /m/mm.gguf\n"
                            "[group enc]\n"
                            "stages = encode\n"
                            "count = 3\n"
                            "threads = 2\n"
                            "vit_batch = 8\n"
                            "[group pre]\n"
                            "stages = prefill\n"
                            "[group dec]\n"
                            "stages = decode\n"
                            "count = 0\n"
                            "kv_tokens = 1024\n";

Test(cluster_conf, parses_every_key, .timeout = 10) {
    ms_cluster_conf c;
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(s_parse(&c, s_good, err), 0, "%s", err);
    cr_expect_str_eq(c.layout, "disagg");
    cr_expect_eq(c.port_base, 9000);
    cr_expect_str_eq(c.data, "ipc");
    cr_expect_str_eq(c.prefix, "test_1");
    cr_expect_str_eq(c.profile, "prof#1.json"); /* '#' not after a space is not a comment */
    cr_expect_str_eq(c.broker_args, "--foo 1  --bar");
    cr_expect_str_eq(c.lm, "/m/lm.gguf");
    cr_assert_eq(c.n_groups, 3);
    cr_expect_str_eq(c.groups[0].name, "enc");
    cr_expect_eq(c.groups[0].count, 3);
    cr_expect_eq(c.groups[0].threads, 2);
    cr_expect_eq(c.groups[0].vit_batch, 8);
    cr_expect_eq(c.groups[1].count, 1); /* defaults */
    cr_expect_eq(c.groups[1].threads, 1);
    cr_expect_eq(c.groups[2].count, 0);
    cr_expect_eq(c.groups[2].kv_tokens, 1024);
    cr_expect_eq(ms_cluster_group_find(&c, "encode"), &c.groups[0]);
    cr_expect_eq(ms_cluster_group_find(&c, "dec"), &c.groups[2]);
    cr_expect_null(ms_cluster_group_find(&c, "prefill+decode"));
}

Test(cluster_conf, write_parses_back, .timeout = 10) {
    ms_cluster_conf c, d;
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(s_parse(&c, s_good, err), 0, "%s", err);
    c.next_seq = 7;
    c.groups[0].started = 4;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_eq(ms_cluster_conf_write(&c, f), 0);
    fclose(f);
    ms_cluster_conf_default(&d);
    cr_assert_eq(ms_cluster_conf_parse(&d, buf, len, "written", err, sizeof(err)), 0, "%s\n%s", err,
                 buf);
    free(buf);
    cr_expect_eq(memcmp(&c, &d, sizeof(c)), 0, "written conf differs after parsing back");
}

Test(cluster_conf, rejects_bad_input_with_the_line, .timeout = 10) {
    static const struct {
        const char *text;
        const char *needle;
    } cases[] = {
        {"[cluster]\nlayout = ring\n[group a]\nstages=prefill+decode\n", "t.conf:2: layout"},
        {"[cluster]\nport_base = 80\n", "port_base"},
        {"[cluster]\nport_base = 9000x\n", "port_base"},
        {"[cluster]\nlayout = modserve\nlayout = monolith\n", "duplicate key"},
        {"[clusterz]\n", "unknown section"},
        {"[group Enc]\nstages = encode\n", "group name"},
        {"[group a]\nstages = encode+decode\n", "stages"},
        {"[group a]\nstages = decode\ncount = 65\n", "count"},
        {"[group a]\nstages = decode\nthreads = 0\n", "threads"},
        {"[group a]\nstages = prefill+decode\n[group a]\nstages = decode\n", "duplicate group"},
        {"[group a]\ncount = 1\n", "no 'stages'"},
        {"[group a]\nstages = prefill+decode\nwhat = 1\n", "unknown key"},
        {"layout = modserve\n", "outside a section"},
        {"[cluster]\njust words\n", "expected 'key = value'"},
        {"[cluster]\n= 3\n", "missing key"},
        {"[cluster]\n", "no [group"},
        {"[group a]\nstages = prefill\n", "decode"},
        {"[models]\nlm = a\nmmproj = b\n[group a]\nstages = prefill+decode\n", "encode"},
        {"[models]\nlm = a\n[group a]\nstages = encode+prefill+decode\n", "mmproj"},
        {"[cluster]\n[cluster]\n", "duplicate section"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms_cluster_conf c;
        char err[MS_ERR_SIZE] = "";
        cr_expect_eq(s_parse(&c, cases[i].text, err), -1, "case %zu accepted", i);
        cr_expect(strstr(err, cases[i].needle) != NULL, "case %zu: '%s' lacks '%s'", i, err,
                  cases[i].needle);
    }
    /* an over-long line, a NUL byte */
    char big[4000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ms_cluster_conf c;
    char err[MS_ERR_SIZE];
    cr_expect_eq(s_parse(&c, big, err), -1);
    ms_cluster_conf_default(&c);
    cr_expect_eq(ms_cluster_conf_parse(&c, "[cluster]\0", 10, "nul", err, sizeof(err)), -1);
}

Test(cluster_conf, shipped_layouts_load, .timeout = 10) {
    const char *names[] = {"modserve", "monolith", "disagg"};
    for (int i = 0; i < 3; i++) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/tools/clusters/%s.conf", ms_test_source_dir(), names[i]);
        ms_cluster_conf c;
        ms_cluster_conf_default(&c);
        char err[MS_ERR_SIZE] = "";
        cr_assert_eq(ms_cluster_conf_load(&c, path, err, sizeof(err)), 0, "%s", err);
        cr_expect_str_eq(c.layout, names[i]);
        bool enc = false;
        for (int g = 0; g < c.n_groups; g++)
            enc |= ms_cluster_stages_has(c.groups[g].stages, "encode");
        cr_expect(enc, "%s has no encoder", names[i]);
        cr_expect(c.gateway, "%s starts no gateway", names[i]);
        cr_expect_str_eq(c.gateway_host, "127.0.0.1");
        cr_expect_eq(c.gateway_port, 8000);
    }
}

Test(cluster_conf, gateway_section, .timeout = 10) {
    ms_cluster_conf c, d;
    char err[MS_ERR_SIZE] = "";
    /* no [gateway]: no gateway, default address kept for --gateway-port */
    cr_assert_eq(s_parse(&c, "[group a]\nstages = prefill+decode\n", err), 0, "%s", err);
    cr_expect_not(c.gateway);
    cr_expect_str_eq(c.gateway_host, "127.0.0.1");
    cr_expect_eq(c.gateway_port, 8000);
    /* an empty section enables it with the defaults */
    cr_assert_eq(s_parse(&c, "[gateway]\n[group a]\nstages = prefill+decode\n", err), 0, "%s", err);
    cr_expect(c.gateway);
    cr_expect_eq(c.gateway_port, 8000);
    const char *full = "[gateway]\nlisten = [::1]:8100\nmodel_name = org/demo-1.5b:q8\n"
                       "args = --api-key-file /k.txt  --max-inflight 8\n"
                       "[group a]\nstages = prefill+decode\n";
    cr_assert_eq(s_parse(&c, full, err), 0, "%s", err);
    cr_expect_str_eq(c.gateway_host, "[::1]");
    cr_expect_eq(c.gateway_port, 8100);
    cr_expect_str_eq(c.gateway_model, "org/demo-1.5b:q8");
    cr_expect_str_eq(c.gateway_args, "--api-key-file /k.txt  --max-inflight 8");
    char buf[MS_CLUSTER_EP_MAX];
    ms_cluster_gateway_listen(&c, buf, sizeof(buf));
    cr_expect_str_eq(buf, "[::1]:8100");
    ms_cluster_gateway_url(&c, buf, sizeof(buf));
    cr_expect_str_eq(buf, "http://[::1]:8100");
    strcpy(c.gateway_host, "0.0.0.0");
    ms_cluster_gateway_url(&c, buf, sizeof(buf));
    cr_expect_str_eq(buf, "http://127.0.0.1:8100"); /* a wildcard is reached on loopback */
    /* write -> parse round trip keeps the section */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_eq(ms_cluster_conf_write(&c, f), 0);
    fclose(f);
    ms_cluster_conf_default(&d);
    cr_assert_eq(ms_cluster_conf_parse(&d, text, len, "written", err, sizeof(err)), 0, "%s\n%s",
                 err, text);
    free(text);
    cr_expect_eq(memcmp(&c, &d, sizeof(c)), 0, "gateway conf differs after parsing back");
    /* bad values name the line */
    static const struct {
        const char *text;
        const char *needle;
    } bad[] = {
        {"[gateway]\nlisten = 8000\n", "t.conf:2: listen"},
        {"[gateway]\nlisten = 127.0.0.1:0\n", "listen"},
        {"[gateway]\nlisten = 127.0.0.1:70000\n", "listen"},
        {"[gateway]\nlisten = ::1:8000\n", "listen"},
        {"[gateway]\nlisten = a b:8000\n", "listen"},
        {"[gateway]\nmodel_name = my model\n", "model_name"},
        {"[gateway]\nport = 8000\n", "unknown key"},
        {"[gateway]\n[gateway]\n", "duplicate section"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_expect_eq(s_parse(&c, bad[i].text, err), -1, "case %zu accepted", i);
        cr_expect(strstr(err, bad[i].needle) != NULL, "case %zu: '%s' lacks '%s'", i, err,
                  bad[i].needle);
    }
    cr_expect(ms_cluster_model_name_ok("demo"));
    cr_expect_not(ms_cluster_model_name_ok(""));
    cr_expect_not(ms_cluster_model_name_ok("a\"b"));
}

/* A child process that answers each of the given connections on fd with one
 * canned response, then exits. */
static pid_t s_canned_server(int fd, const char *const *answers, int n) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    for (int i = 0; i < n;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) _exit(1);
        char req[1024];
        ssize_t got = recv(c, req, sizeof(req) - 1, 0); /* the request line at least */
        if (got <= 0) {                                 /* a bare connect (the port probe) */
            close(c);
            continue;
        }
        if (strncmp(req, "GET /health HTTP/1.0", 20) != 0) _exit(2);
        i++;
        if (send(c, answers[i - 1], strlen(answers[i - 1]), MSG_NOSIGNAL) < 0) _exit(3);
        close(c);
    }
    _exit(0);
}

Test(cluster_conf, gateway_http_get, .timeout = 20) {
    /* nothing listens: an error, not a hang */
    char err[MS_ERR_SIZE];
    int base = ms_cluster_find_port_base(31000, err, sizeof(err));
    cr_assert_geq(base, 31000, "%s", err);
    int status = 0;
    cr_expect_eq(
        ms_cluster_http_get("127.0.0.1", base, "/health", 1000, &status, NULL, 0, err, sizeof(err)),
        -1);
    ms_cluster_conf c;
    ms_cluster_conf_default(&c);
    c.gateway_port = base;
    cr_expect_not(ms_cluster_gateway_port_busy(&c));

    /* a listening socket: busy; HTTP answers parsed, a non-HTTP answer refused */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)base)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(fd, 8), 0);
    cr_expect(ms_cluster_gateway_port_busy(&c));
    const char *answers[] = {
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n"
        "{\"status\":\"unavailable\",\"reason\":\"no live actor serves the encode stage\"}",
        "HTTP/1.1 200 OK\r\n\r\n{\"status\":\"ok\"}",
        "SSH-2.0-OpenSSH\r\n",
    };
    pid_t child = s_canned_server(fd, answers, 3);
    cr_assert_geq(child, 0);
    char body[128];
    cr_assert_eq(ms_cluster_http_get("0.0.0.0", base, "/health", 5000, &status, body, sizeof(body),
                                     err, sizeof(err)),
                 0, "%s", err);
    cr_expect_eq(status, 503);
    cr_expect(strstr(body, "no live actor serves the encode stage") != NULL, "%s", body);
    cr_assert_eq(
        ms_cluster_http_get("127.0.0.1", base, "/health", 5000, &status, body, 8, err, sizeof(err)),
        0, "%s", err);
    cr_expect_eq(status, 200);
    cr_expect_str_eq(body, "{\"statu"); /* cut to the buffer: 7 bytes + NUL */
    cr_expect_eq(ms_cluster_http_get("127.0.0.1", base, "/health", 5000, &status, body,
                                     sizeof(body), err, sizeof(err)),
                 -1);
    cr_expect(strstr(err, "no HTTP answer") != NULL, "%s", err);
    int wst = 0;
    cr_expect_eq(waitpid(child, &wst, 0), child);
    cr_expect(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "canned server status %d", wst);
    close(fd);
}

Test(cluster_conf, stages_and_endpoints, .timeout = 10) {
    cr_expect(ms_cluster_stages_has("prefill+decode", "decode"));
    cr_expect(ms_cluster_stages_has("encode+prefill+decode", "encode"));
    cr_expect_not(ms_cluster_stages_has("prefill+decode", "encode"));
    cr_expect_not(ms_cluster_stages_has("prefill", "pre"));
    cr_expect(ms_cluster_stages_valid("encode+prefill+decode"));
    cr_expect_not(ms_cluster_stages_valid("decode+prefill"));
    ms_cluster_conf c;
    ms_cluster_conf_default(&c);
    c.port_base = 9000;
    char ep[MS_CLUSTER_EP_MAX];
    ms_cluster_front_ep(&c, ep, sizeof(ep));
    cr_expect_str_eq(ep, "tcp://127.0.0.1:9001");
    ms_cluster_back_ep(&c, ep, sizeof(ep));
    cr_expect_str_eq(ep, "tcp://127.0.0.1:9002");
    cr_assert_eq(ms_cluster_data_ep(&c, "/r", "enc-1", 3, ep, sizeof(ep)), 0);
    cr_expect_str_eq(ep, "tcp://127.0.0.1:0");
    strcpy(c.data, "ipc");
    cr_assert_eq(ms_cluster_data_ep(&c, "/r", "enc-1", 3, ep, sizeof(ep)), 0);
    cr_expect_str_eq(ep, "ipc:///r/sock/enc-1.data");
    cr_expect_eq(ms_cluster_data_ep(&c, "/r", "enc-1", 3, ep, 8), -1);
    char longdir[200];
    memset(longdir, 'd', sizeof(longdir) - 1);
    longdir[0] = '/';
    longdir[sizeof(longdir) - 1] = '\0';
    cr_expect_eq(ms_cluster_data_ep(&c, longdir, "enc-1", 3, ep, sizeof(ep)), -1);
    char err[MS_ERR_SIZE];
    int base = ms_cluster_find_port_base(30000, err, sizeof(err));
    cr_expect_geq(base, 30000, "%s", err);
}

Test(cluster_proc, spawn_pidfile_stop, .timeout = 30) {
    char dir[] = "/tmp/ms-test-cluster-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char err[MS_ERR_SIZE] = "", sub[512], log[512];
    snprintf(sub, sizeof(sub), "%s/pids", dir);
    cr_assert_eq(ms_mkdirs(sub, err, sizeof(err)), 0, "%s", err);
    snprintf(log, sizeof(log), "%s/sleep.log", dir);

    ms_proc p = {.name = "enc-1", .role = "actor", .group = "enc", .seq = 2};
    char *argv[] = {"/bin/sh", "-c", "echo started; exec sleep 30", NULL};
    cr_assert_eq(ms_proc_spawn(&p, argv, log, err, sizeof(err)), 0, "%s", err);
    cr_expect(ms_proc_alive(&p));
    cr_expect_eq(getpgid(p.pid), p.pid, "not its own process group");
    cr_assert_eq(ms_pidfile_write(dir, &p, err, sizeof(err)), 0, "%s", err);

    ms_proc q = {.name = "broker", .role = "broker", .seq = -1};
    char *argv2[] = {"/bin/sh", "-c", "trap '' TERM; sleep 30 & wait", NULL};
    cr_assert_eq(ms_proc_spawn(&q, argv2, log, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ms_pidfile_write(dir, &q, err, sizeof(err)), 0, "%s", err);

    ms_proc list[8];
    int n = ms_pidfile_list(dir, list, 8, err, sizeof(err));
    cr_assert_eq(n, 2, "%s", err);
    cr_expect_str_eq(list[0].name, "broker"); /* broker before actors */
    cr_expect_str_eq(list[1].name, "enc-1");
    cr_expect_eq(list[1].pid, p.pid);
    cr_expect_eq(list[1].start, p.start);
    cr_expect_eq(list[1].seq, 2);
    cr_expect_str_eq(list[1].group, "enc");

    /* a recorded start time that does not match = another process */
    ms_proc other = p;
    other.start += 1;
    cr_expect_not(ms_proc_alive(&other));
    cr_expect_eq(ms_proc_signal(&other, SIGKILL), -1);
    cr_expect(ms_proc_alive(&p));

    cr_expect_eq(ms_proc_stop(&p, 5000), 0);
    cr_expect_not(ms_proc_alive(&p));
    /* ignores SIGTERM: killed after the grace period, children included */
    cr_expect_eq(ms_proc_stop(&q, 300), 0);
    cr_expect_not(ms_proc_alive(&q));
    int tries = 0;
    while (kill(-q.pid, 0) == 0 && tries++ < 200)
        usleep(10000); /* the orphaned child is reaped by init */
    cr_expect_eq(kill(-q.pid, 0), -1, "the process group survived");

    ms_pidfile_remove(dir, "enc-1");
    ms_pidfile_remove(dir, "broker");
    cr_expect_eq(ms_pidfile_list(dir, list, 8, err, sizeof(err)), 0);

    /* exec failure is reported, not a zombie */
    ms_proc bad = {.name = "x"};
    char *argv3[] = {"/nonexistent/modserve-actor", NULL};
    cr_expect_eq(ms_proc_spawn(&bad, argv3, log, err, sizeof(err)), -1);
    cr_expect(strstr(err, "cannot run") != NULL, "%s", err);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

Test(cluster_proc, split_args, .timeout = 10) {
    char buf[64], *argv[4];
    cr_expect_eq(ms_split_args("  a  bb\tc ", buf, sizeof(buf), argv, 4), 3);
    cr_expect_str_eq(argv[1], "bb");
    cr_expect_eq(ms_split_args("", buf, sizeof(buf), argv, 4), 0);
    cr_expect_eq(ms_split_args("a b c d e", buf, sizeof(buf), argv, 4), -1);
}

Test(workload, percentiles, .timeout = 10) {
    double v[] = {5, 1, 4, 2, 3};
    ms_latency_stats s;
    ms_latency_summarize(v, 5, &s);
    cr_expect_eq(s.n, 5);
    cr_expect_float_eq(s.mean, 3.0, 1e-12);
    cr_expect_float_eq(s.p50, 3.0, 1e-12);
    cr_expect_float_eq(s.p90, 4.6, 1e-12);
    cr_expect_float_eq(s.p99, 4.96, 1e-12);
    cr_expect_float_eq(s.max, 5.0, 1e-12);
    double one[] = {7};
    ms_latency_summarize(one, 1, &s);
    cr_expect_float_eq(s.p99, 7.0, 1e-12);
    ms_latency_summarize(NULL, 0, &s);
    cr_expect_eq(s.n, 0);
    cr_expect_float_eq(s.mean, 0.0, 1e-12);
}

Test(workload, deterministic_mix, .timeout = 10) {
    ms_workload_params p = {.n_requests = 24,
                            .image_ratio = 0.5,
                            .max_images = 3,
                            .max_tokens = 16,
                            .temperature = -1,
                            .seed = 1,
                            .n_image_files = 5};
    ms_workload_request a[24], b[24];
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_workload_make(&p, a, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ms_workload_make(&p, b, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(memcmp(a, b, sizeof(a)), 0, "not deterministic");
    int n_img = 0, greedy = 0;
    for (int i = 0; i < 24; i++) {
        if (a[i].n_images) n_img++;
        cr_expect_leq(a[i].n_images, 3);
        for (int k = 0; k < a[i].n_images; k++)
            cr_expect(a[i].image[k] >= 0 && a[i].image[k] < 5);
        cr_expect(a[i].max_tokens >= 8 && a[i].max_tokens <= 16);
        cr_expect_not_null(a[i].prompt);
        greedy += a[i].temperature == 0.0f;
    }
    cr_expect_eq(n_img, 12);
    cr_expect_eq(greedy, 12);
    p.seed = 2;
    cr_assert_eq(ms_workload_make(&p, b, err, sizeof(err)), 0);
    cr_expect_neq(memcmp(a, b, sizeof(a)), 0, "the seed changes nothing");
    p.image_ratio = 0.0;
    cr_assert_eq(ms_workload_make(&p, b, err, sizeof(err)), 0);
    for (int i = 0; i < 24; i++)
        cr_expect_eq(b[i].n_images, 0);
    p.image_ratio = 1.5;
    cr_expect_eq(ms_workload_make(&p, b, err, sizeof(err)), -1);
    p.image_ratio = 0.5;
    p.n_image_files = 0;
    cr_expect_eq(ms_workload_make(&p, b, err, sizeof(err)), -1);
}

Test(workload, report_counts_modalities, .timeout = 10) {
    ms_workload_request w[3] = {{.n_images = 0, .prompt = "a", .max_tokens = 4},
                                {.n_images = 1, .prompt = "b", .max_tokens = 4},
                                {.n_images = 0, .prompt = "c", .max_tokens = 4}};
    ms_play_req r[3];
    ms_play_reqs_init(r, w, 3);
    cr_expect_str_eq(r[2].id, "play-2");
    for (int i = 0; i < 3; i++) {
        r[i].started = r[i].ended = true;
        r[i].t_submit = 0;
        r[i].t_first = 10000000; /* 10 ms */
        r[i].t_end = 40000000;   /* 40 ms */
        r[i].n_ids = 4;
        r[i].ok = i != 2;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ms_play_report(f, r, 3, 1.0);
    fclose(f);
    cr_expect(strstr(buf, "text          2      1") != NULL, "%s", buf);
    cr_expect(strstr(buf, "image         1      0") != NULL, "%s", buf);
    cr_expect(strstr(buf, "TPOT       10.00") != NULL, "%s", buf);
    free(buf);
    ms_play_reqs_fini(r, 3);
}
