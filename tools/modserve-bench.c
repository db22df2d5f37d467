/* modserve-bench — replay a request trace against a modserve broker and
 * report latency, SLO attainment, goodput, throughput and cost
 * (`modserve bench`; docs/bench.md is the guide).
 *
 * This file is argument parsing and wiring: the trace (schemas/trace.h), the
 * player (schemas/replay.h) and the report (schemas/report.h) are library
 * code. The model files are opened only for their tokenizer, context length
 * and image token count (broker/broker_model.h: GGUF mmap, no weights read).
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <czmq.h>

#include "broker_model.h"
#include "client.h"
#include "cluster.h"
#include "compare.h"
#include "ms_common.h"
#include "profile.h"
#include "replay.h"
#include "report.h"
#include "trace.h"
#include "wire.h"

#define BENCH_TTFT_MS_DEFAULT 5000  /* the broker's default TTFT target (tools/profiles) */
#define BENCH_TBT_MS_DEFAULT  200   /* the broker's default TBT target */
#define BENCH_WAIT_MS_DEFAULT 60000 /* give up after this long without an answer */
#define BENCH_BIN_S_DEFAULT   1.0   /* timeline bin */
#define BENCH_OUT_DEFAULT     "bench-out"
#define BENCH_MAX_POOL        32 /* --image files at most */

static const char *const s_default_images[] = {"sample.jpg", "j_333x517.jpg", "j_517x333.jpg",
                                               "p_333x517.png"};
#define BENCH_N_DEFAULT_IMAGES ((int)(sizeof s_default_images / sizeof s_default_images[0]))

static const char s_usage[] =
    "usage: modserve bench --trace FILE [options]\n"
    "Replays a request trace (Azure LMM 2025 or LLM 2023 format, .csv or .csv.gz) against a\n"
    "modserve broker and writes report.json, requests.csv, timeline.csv and timeline.svg.\n"
    "\n"
    "slice and schedule:\n"
    "  --start T            first arrival: a timestamp, or seconds after the trace's first row\n"
    "  --rows A:B           rows A..B-1 (0-based, time order); A: or :B\n"
    "  --duration S         only arrivals within S trace seconds of the first one\n"
    "  --time-scale X       replay time = trace time * X (0.1: ten times faster; default 1)\n"
    "  --rate X             multiply the request rate by X (= --time-scale 1/X; they multiply)\n"
    "target (default: the cluster of --dir, ./run):\n"
    "  --dir RUNDIR         a `modserve up` run directory: broker, registry and model from it\n"
    "  --broker EP          broker front endpoint\n"
    "  --redis HOST:PORT    registry to sample for instance counts; --prefix P; --no-registry\n"
    "  --model-info LM.gguf [--mmproj MM.gguf]   the served model (tokenizer, context, image\n"
    "                       tokens); --n-ctx N overrides its context, --n-image-tokens N its\n"
    "                       tokens per image when no model is given\n"
    "requests:\n"
    "  --ttft-ms MS --tbt-ms MS   SLO targets, sent with every request (default 5000, 200)\n"
    "  --max-context N --max-gen N --max-images N   clamps (small models; images <= 16)\n"
    "  --concurrency-limit N      requests in flight at most (default 4096)\n"
    "  --image FILE         image pool (repeatable; default: fixture photos)\n"
    "  --reuse-images       send the pool's bytes unchanged (encoder cache hits)\n"
    "  --allow-eos          do not force the generated length (no ignore_eos)\n"
    "  --seed S             synthetic content seed (default 1)\n"
    "output:\n"
    "  --out DIR            report directory (default ./" BENCH_OUT_DEFAULT ")\n"
    "  --bin-s S            timeline bin (default 1 s)\n"
    "  --wait-ms MS         give up after this long without an answer (default 60000)\n"
    "  --dry-run            plan and print the shapes, send nothing\n"
    "  -q                   no progress output\n"
    "side by side (docs/comparison.md): each layout gets its own local cluster, the same slice\n"
    "and the same core budget; writes compare.json, compare.svg and a report per run:\n"
    "  --compare L,L        layouts to compare: modserve, monolith, disagg\n"
    "  --model-info LM --mmproj MM | --preset demo|tiny   the model the clusters serve\n"
    "  --cores N            cores (= actors, one thread each) per layout (default 2)\n"
    "  --encoders K         encoder actors of modserve/disagg (default: from --profile, else N/2)\n"
    "  --profile FILE       stage profile (modserve-profile): sizes the split, given to brokers\n"
    "  --rates R,R,...      rate multipliers to sweep (on top of --rate; default 1)\n"
    "  --slo-factor F       SLO = F x the isolated P50 on the monolith (default 5), unless\n"
    "                       --ttft-ms / --tbt-ms are given; --calib-requests N (default 20)\n"
    "  --kv-tokens N        KV capacity of every text actor (default 16384)\n"
    "  --autoscale          also run modserve with modserve-autoscaler (--autoscale-args S)\n"
    "  --port-base N        first port base tried for the clusters (default: pid-derived)\n"
    "Exit status: 0 every request completed; 1 some failed (the report is still written) or\n"
    "an error; 2 bad usage. --compare: 0 when the runs were made and the files written\n"
    "(failed requests are part of the results), 1 when none could run or on an error.\n";

typedef struct bench_args {
    const char *trace, *start, *rows, *dir, *broker, *redis, *prefix, *lm, *mmproj, *out;
    const char *images[BENCH_MAX_POOL];
    int n_images;
    double duration_s, time_scale, rate, ttft_ms, tbt_ms, bin_s;
    int n_ctx, n_image_tokens, max_context, max_gen, max_images, concurrency, wait_ms;
    uint64_t seed;
    bool no_registry, reuse_images, allow_eos, dry_run, quiet;
    bool ttft_set, tbt_set; /* --ttft-ms / --tbt-ms given */
    int sample;             /* > 0: replay only this many requests spread over the slice */
    /* --compare (schemas/compare.h) */
    const char *compare, *rates, *preset, *profile, *autoscale_args;
    int cores, encoders, kv_tokens, calib, port_base;
    double slo_factor;
    bool autoscale;
} bench_args;

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

static void s_usage_exit(const char *fmt, const char *arg) {
    fprintf(stderr, "modserve bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(modserve bench --help for the options)\n");
    exit(2);
}

static double s_num(const char *opt, const char *s) {
    char *end = NULL;
    errno = 0;
    const double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) s_usage_exit("%s expects a number", opt);
    return v;
}

static int s_int(const char *opt, const char *s, int lo, int hi) {
    const double v = s_num(opt, s);
    if (v != floor(v) || v < lo || v > hi) {
        fprintf(stderr, "modserve bench: %s expects an integer in %d..%d, got '%s'\n", opt, lo, hi,
                s);
        exit(2);
    }
    return (int)v;
}

static void s_parse(int argc, char **argv, bench_args *a) {
    memset(a, 0, sizeof *a);
    a->time_scale = a->rate = 1.0;
    a->ttft_ms = BENCH_TTFT_MS_DEFAULT;
    a->tbt_ms = BENCH_TBT_MS_DEFAULT;
    a->bin_s = BENCH_BIN_S_DEFAULT;
    a->max_images = MS_WIRE_MAX_IMAGES;
    a->concurrency = MS_CLIENT_MAX_INFLIGHT;
    a->wait_ms = BENCH_WAIT_MS_DEFAULT;
    a->seed = 1;
    a->out = BENCH_OUT_DEFAULT;
    a->cores = 2;
    a->encoders = -1;
    a->kv_tokens = MS_COMPARE_KV_TOKENS;
    a->calib = MS_COMPARE_CALIB_REQUESTS;
    a->slo_factor = MS_COMPARE_SLO_FACTOR;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            fputs(s_usage, stdout);
            exit(0);
        }
        if (strcmp(o, "--no-registry") == 0) {
            a->no_registry = true;
            continue;
        }
        if (strcmp(o, "--reuse-images") == 0) {
            a->reuse_images = true;
            continue;
        }
        if (strcmp(o, "--allow-eos") == 0) {
            a->allow_eos = true;
            continue;
        }
        if (strcmp(o, "--dry-run") == 0) {
            a->dry_run = true;
            continue;
        }
        if (strcmp(o, "-q") == 0) {
            a->quiet = true;
            continue;
        }
        if (strcmp(o, "--autoscale") == 0) {
            a->autoscale = true;
            continue;
        }
        if (i + 1 >= argc) s_usage_exit("unknown option or missing value: '%s'", o);
        const char *v = argv[++i];
        if (strcmp(o, "--trace") == 0)
            a->trace = v;
        else if (strcmp(o, "--start") == 0)
            a->start = v;
        else if (strcmp(o, "--rows") == 0)
            a->rows = v;
        else if (strcmp(o, "--duration") == 0)
            a->duration_s = s_num(o, v);
        else if (strcmp(o, "--time-scale") == 0)
            a->time_scale = s_num(o, v);
        else if (strcmp(o, "--rate") == 0)
            a->rate = s_num(o, v);
        else if (strcmp(o, "--dir") == 0)
            a->dir = v;
        else if (strcmp(o, "--broker") == 0)
            a->broker = v;
        else if (strcmp(o, "--redis") == 0)
            a->redis = v;
        else if (strcmp(o, "--prefix") == 0)
            a->prefix = v;
        else if (strcmp(o, "--model-info") == 0)
            a->lm = v;
        else if (strcmp(o, "--mmproj") == 0)
            a->mmproj = v;
        else if (strcmp(o, "--n-ctx") == 0)
            a->n_ctx = s_int(o, v, 2, 1 << 24);
        else if (strcmp(o, "--n-image-tokens") == 0)
            a->n_image_tokens = s_int(o, v, 1, (int)MS_WIRE_MAX_IMAGE_TOKENS);
        else if (strcmp(o, "--ttft-ms") == 0)
            a->ttft_ms = s_int(o, v, 1, MS_WIRE_MAX_MS), a->ttft_set = true;
        else if (strcmp(o, "--tbt-ms") == 0)
            a->tbt_ms = s_int(o, v, 1, MS_WIRE_MAX_MS), a->tbt_set = true;
        else if (strcmp(o, "--max-context") == 0)
            a->max_context = s_int(o, v, 1, 1 << 24);
        else if (strcmp(o, "--max-gen") == 0)
            a->max_gen = s_int(o, v, 1, MS_MAX_GEN_TOKENS);
        else if (strcmp(o, "--max-images") == 0)
            a->max_images = s_int(o, v, 0, MS_WIRE_MAX_IMAGES);
        else if (strcmp(o, "--concurrency-limit") == 0)
            a->concurrency = s_int(o, v, 1, MS_CLIENT_MAX_INFLIGHT);
        else if (strcmp(o, "--image") == 0) {
            if (a->n_images == BENCH_MAX_POOL) s_usage_exit("at most %s --image files", "32");
            a->images[a->n_images++] = v;
        } else if (strcmp(o, "--seed") == 0)
            a->seed = (uint64_t)s_int(o, v, 0, INT32_MAX);
        else if (strcmp(o, "--out") == 0)
            a->out = v;
        else if (strcmp(o, "--bin-s") == 0)
            a->bin_s = s_num(o, v);
        else if (strcmp(o, "--wait-ms") == 0)
            a->wait_ms = s_int(o, v, 1, MS_WIRE_MAX_MS);
        else if (strcmp(o, "--compare") == 0)
            a->compare = v;
        else if (strcmp(o, "--rates") == 0)
            a->rates = v;
        else if (strcmp(o, "--preset") == 0)
            a->preset = v;
        else if (strcmp(o, "--profile") == 0)
            a->profile = v;
        else if (strcmp(o, "--cores") == 0)
            a->cores = s_int(o, v, 1, MS_COMPARE_MAX_CORES);
        else if (strcmp(o, "--encoders") == 0)
            a->encoders = s_int(o, v, 0, MS_COMPARE_MAX_CORES);
        else if (strcmp(o, "--kv-tokens") == 0)
            a->kv_tokens = s_int(o, v, 0, 1 << 24);
        else if (strcmp(o, "--slo-factor") == 0)
            a->slo_factor = s_num(o, v);
        else if (strcmp(o, "--calib-requests") == 0)
            a->calib = s_int(o, v, 1, 1000);
        else if (strcmp(o, "--autoscale-args") == 0)
            a->autoscale_args = v;
        else if (strcmp(o, "--port-base") == 0)
            a->port_base = s_int(o, v, 1024, 65535 - MS_CLUSTER_PORT_SPAN);
        else
            s_usage_exit("unknown option '%s'", o);
    }
    if (!a->trace) s_usage_exit("%s", "--trace FILE is required");
    if (a->start && a->rows && strchr(a->rows, ':') != a->rows)
        s_usage_exit("%s", "--start and a first row (--rows A:...) exclude each other");
    if (!(a->bin_s > 0)) s_usage_exit("%s", "--bin-s must be > 0");
    if (a->mmproj && !a->lm) s_usage_exit("%s", "--mmproj needs --model-info");
    if (!a->compare && (a->rates || a->preset || a->profile || a->autoscale))
        s_usage_exit("%s", "--rates, --preset, --profile and --autoscale go with --compare");
    if (a->compare && (a->dir || a->broker || a->redis || a->no_registry || a->dry_run))
        s_usage_exit("%s", "--compare starts its own clusters: no --dir, --broker, --redis, "
                           "--no-registry or --dry-run");
    if (a->preset && a->lm) s_usage_exit("%s", "--preset excludes --model-info");
    if (!(a->slo_factor > 0)) s_usage_exit("%s", "--slo-factor must be > 0");
}

/* Directory of this executable, or "." if unknown. */
static const char *s_exe_dir(void) {
    static char dir[MS_CLUSTER_PATH_MAX];
    if (dir[0]) return dir;
    const ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
    if (n <= 0) return strcpy(dir, ".");
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    return dir;
}

/* The default image pool: the fixture photos of the repository (or an install). */
static int s_default_pool(const char **paths, char (*buf)[MS_CLUSTER_PATH_MAX]) {
    const char *env = getenv("MS_BENCH_IMAGE_DIR");
    char dirs[4][MS_CLUSTER_PATH_MAX];
    int nd = 0;
    if (env && *env) snprintf(dirs[nd++], sizeof dirs[0], "%s", env);
    snprintf(dirs[nd++], sizeof dirs[0], "%s/../../tests/data/images", s_exe_dir());
    snprintf(dirs[nd++], sizeof dirs[0], "%s/../share/modserve/images", s_exe_dir());
    snprintf(dirs[nd++], sizeof dirs[0], "tests/data/images");
    for (int d = 0; d < nd; d++) {
        int n = 0;
        for (int i = 0; i < BENCH_N_DEFAULT_IMAGES; i++) {
            struct stat st;
            snprintf(buf[n], MS_CLUSTER_PATH_MAX, "%.900s/%s", dirs[d], s_default_images[i]);
            if (stat(buf[n], &st) == 0 && S_ISREG(st.st_mode)) paths[n] = buf[n], n++;
        }
        if (n > 0) return n;
    }
    return 0;
}

/* Everything the run needs besides the arguments. */
typedef struct bench_ctx {
    ms_trace trace;
    size_t first, n;     /* the window */
    ms_cluster_run *run; /* the --dir cluster, NULL if none */
    char broker[MS_CLUSTER_EP_MAX];
    char redis_host[128];
    int redis_port; /* 0: no sampling */
    char prefix[MS_CLUSTER_NAME_MAX];
    char lm[MS_CLUSTER_PATH_MAX], mmproj[MS_CLUSTER_PATH_MAX];
    ms_broker_model model;
    bool have_model;
    int n_ctx, n_image_tokens;
    uint8_t *pool[BENCH_MAX_POOL];
    size_t pool_len[BENCH_MAX_POOL];
    const char *pool_path[BENCH_MAX_POOL];
    char pool_buf[BENCH_MAX_POOL][MS_CLUSTER_PATH_MAX];
    int n_pool;
    ms_report_req *reqs;
    /* kept for --compare (keep set by the caller) */
    bool keep, have_sum;
    ms_report_summary sum;
    ms_report_bin *bins; /* the timeline (malloc'd) */
    int n_bins;
    double bin_s;
    int64_t plan_images, plan_prompt, plan_gen; /* the planned slice's totals */
} bench_ctx;

static int s_resolve_target(const bench_args *a, bench_ctx *c, char *err, size_t err_size) {
    c->run = ms_xcalloc(1, sizeof *c->run);
    char lerr[MS_ERR_SIZE];
    const char *dir = a->dir ? a->dir : "run";
    if (ms_cluster_run_load(c->run, dir, lerr, sizeof lerr) != 0) {
        if (a->dir) return ms_errf(err, err_size, "%s", lerr);
        free(c->run);
        c->run = NULL;
    }
    ms_cluster_conf def;
    ms_cluster_conf_default(&def);
    const ms_cluster_conf *conf = c->run ? &c->run->conf : &def;
    if (a->broker)
        snprintf(c->broker, sizeof c->broker, "%s", a->broker);
    else
        ms_cluster_front_ep(conf, c->broker, sizeof c->broker);
    snprintf(c->prefix, sizeof c->prefix, "%s", a->prefix ? a->prefix : conf->prefix);
    snprintf(c->redis_host, sizeof c->redis_host, "127.0.0.1");
    c->redis_port = ms_cluster_redis_port(conf);
    if (a->redis) {
        const char *colon = strrchr(a->redis, ':');
        if (!colon || colon == a->redis)
            return ms_errf(err, err_size, "--redis '%s': expected HOST:PORT", a->redis);
        snprintf(c->redis_host, sizeof c->redis_host, "%.*s", (int)(colon - a->redis), a->redis);
        char *end = NULL;
        const long p = strtol(colon + 1, &end, 10);
        if (*end || p < 1 || p > 65535)
            return ms_errf(err, err_size, "--redis '%s': bad port", a->redis);
        c->redis_port = (int)p;
    }
    if (a->no_registry) c->redis_port = 0;
    if (a->lm) {
        snprintf(c->lm, sizeof c->lm, "%s", a->lm);
        snprintf(c->mmproj, sizeof c->mmproj, "%s", a->mmproj ? a->mmproj : "");
    } else if (c->run) {
        snprintf(c->lm, sizeof c->lm, "%s", c->run->conf.lm);
        snprintf(c->mmproj, sizeof c->mmproj, "%s", c->run->conf.mmproj);
    }
    if (c->lm[0]) {
        if (ms_broker_model_open(&c->model, c->lm, c->mmproj[0] ? c->mmproj : NULL, NULL, a->n_ctx,
                                 err, err_size) != 0)
            return -1;
        c->have_model = true;
        c->n_ctx = c->model.n_ctx;
        c->n_image_tokens = c->model.n_image_tokens;
    }
    if (a->n_ctx > 0) c->n_ctx = a->n_ctx;
    if (a->n_image_tokens > 0) c->n_image_tokens = a->n_image_tokens;
    return 0;
}

static int s_load_pool(const bench_args *a, bench_ctx *c, char *err, size_t err_size) {
    if (a->n_images > 0) {
        for (int i = 0; i < a->n_images; i++)
            c->pool_path[i] = a->images[i];
        c->n_pool = a->n_images;
    } else {
        c->n_pool = s_default_pool(c->pool_path, c->pool_buf);
        if (c->n_pool == 0)
            return ms_errf(err, err_size,
                           "no fixture images found for the image requests: give "
                           "--image FILE (or set MS_BENCH_IMAGE_DIR)");
    }
    for (int i = 0; i < c->n_pool; i++) {
        c->pool[i] = ms_read_file(c->pool_path[i], MS_WIRE_MAX_IMAGE_BYTES - MS_REPLAY_TAG_MAX - 64,
                                  &c->pool_len[i], err, err_size);
        if (!c->pool[i]) return -1;
        if (!a->reuse_images) {
            size_t len = 0;
            char why[MS_ERR_SIZE];
            uint8_t *u =
                ms_replay_unique_image(c->pool[i], c->pool_len[i], "probe", &len, why, sizeof why);
            if (!u)
                return ms_errf(err, err_size, "%s: %.400s (or use --reuse-images)", c->pool_path[i],
                               why);
            free(u);
        }
    }
    return 0;
}

static void s_ctx_fini(bench_ctx *c) {
    ms_trace_fini(&c->trace);
    if (c->have_model) ms_broker_model_close(&c->model);
    for (int i = 0; i < c->n_pool; i++)
        free(c->pool[i]);
    if (c->reqs) ms_report_reqs_fini(c->reqs, (int)c->n);
    free(c->reqs);
    free(c->run);
    free(c->bins);
}

static void s_basename(const char *path, char *out, size_t size) {
    const char *b = strrchr(path, '/');
    snprintf(out, size, "%s", b ? b + 1 : path);
}

/* The plan in one paragraph (stdout). */
static void s_print_plan(const bench_args *a, const bench_ctx *c) {
    int img_reqs = 0, clamp_img = 0, clamp_ctx = 0, clamp_gen = 0;
    int64_t images = 0, trace_images = 0, prompt = 0, gen = 0;
    for (size_t i = 0; i < c->n; i++) {
        const ms_report_req *r = &c->reqs[i];
        img_reqs += r->n_images > 0;
        images += r->n_images;
        trace_images += r->trace_images;
        prompt += r->prompt_tokens;
        gen += r->max_tokens;
        clamp_img += (r->clamped & MS_TRACE_CLAMP_IMAGES) != 0;
        clamp_ctx += (r->clamped & MS_TRACE_CLAMP_CONTEXT) != 0;
        clamp_gen += (r->clamped & MS_TRACE_CLAMP_GEN) != 0;
    }
    const ms_trace_row *r0 = &c->trace.rows[c->first], *r1 = &c->trace.rows[c->first + c->n - 1];
    char t0[MS_TRACE_TIME_MAX], t1[MS_TRACE_TIME_MAX], name[256];
    ms_trace_format_time(r0->t_ns, t0, sizeof t0);
    ms_trace_format_time(r1->t_ns, t1, sizeof t1);
    s_basename(a->trace, name, sizeof name);
    printf("modserve bench: %s (%s format, %zu rows), rows %zu..%zu (%s .. %s, %.1f s)\n", name,
           ms_trace_format_name(c->trace.format), c->trace.n_rows, c->first, c->first + c->n - 1,
           t0, t1, (double)(r1->t_ns - r0->t_ns) * 1e-9);
    printf("  %zu requests: %d with %lld images (trace: %lld), %zu text only; %lld prompt tokens, "
           "%lld generated tokens asked\n",
           c->n, img_reqs, (long long)images, (long long)trace_images, c->n - (size_t)img_reqs,
           (long long)prompt, (long long)gen);
    printf("  replay over %.2f s (time scale %g, rate %g); clamped: %d images, %d contexts, %d "
           "lengths\n",
           c->n ? c->reqs[c->n - 1].t_sched : 0.0, a->time_scale, a->rate, clamp_img, clamp_ctx,
           clamp_gen);
    printf("  model %s (n_ctx %d, %d tokens per image, text %s); broker %s; registry %s",
           c->lm[0] ? c->lm : "(none)", c->n_ctx, c->n_image_tokens,
           c->have_model ? "sized by its tokenizer" : "one token per word assumed", c->broker,
           c->redis_port > 0 ? c->redis_host : "(not sampled)");
    if (c->redis_port > 0) printf(":%d %s", c->redis_port, c->prefix);
    printf("\n");
    fflush(stdout);
}

static int s_write_reports(const bench_args *a, bench_ctx *c, const ms_replay_result *res,
                           const ms_report_summary *sum, const char *started, char *err,
                           size_t err_size) {
    if (ms_mkdirs(a->out, err, err_size) != 0) return -1;
    char path[MS_CLUSTER_PATH_MAX + 32], t0[MS_TRACE_TIME_MAX], t1[MS_TRACE_TIME_MAX];
    char registry[256] = "";
    if (c->redis_port > 0)
        snprintf(registry, sizeof registry, "%s:%d %s", c->redis_host, c->redis_port, c->prefix);
    const ms_trace_row *r0 = &c->trace.rows[c->first], *r1 = &c->trace.rows[c->first + c->n - 1];
    ms_trace_format_time(r0->t_ns, t0, sizeof t0);
    ms_trace_format_time(r1->t_ns, t1, sizeof t1);
    const ms_report_meta meta = {
        .trace_path = a->trace,
        .trace_format = ms_trace_format_name(c->trace.format),
        .trace_rows = (int64_t)c->trace.n_rows,
        .row_first = (int64_t)c->first,
        .rows = (int64_t)c->n,
        .t_first = t0,
        .t_last = t1,
        .trace_span_s = (double)(r1->t_ns - r0->t_ns) * 1e-9,
        .time_scale = a->time_scale,
        .rate = a->rate,
        .broker = c->broker,
        .registry = registry,
        .model = c->lm,
        .mmproj = c->mmproj,
        .n_image_tokens = c->n_image_tokens,
        .n_ctx = c->n_ctx,
        .max_context = a->max_context,
        .max_gen = a->max_gen,
        .max_images = a->max_images,
        .concurrency_limit = a->concurrency,
        .ignore_eos = !a->allow_eos,
        .exact_text = c->have_model,
        .unique_images = !a->reuse_images,
        .seed = a->seed,
        .started_at = started,
        .interrupted = res->interrupted || res->gave_up,
    };
    const ms_report_slo slo = sum->slo;
    snprintf(path, sizeof path, "%s/report.json", a->out);
    if (ms_report_write_json(path, &meta, sum, err, err_size) != 0) return -1;
    snprintf(path, sizeof path, "%s/requests.csv", a->out);
    if (ms_report_write_requests_csv(path, c->reqs, (int)c->n, &slo, err, err_size) != 0) return -1;
    int n_bins = 0;
    double bin_s = a->bin_s;
    ms_report_bin *bins = ms_report_timeline(c->reqs, (int)c->n, res->samples, res->n_samples, &slo,
                                             sum->duration_s, a->bin_s, &n_bins, &bin_s);
    snprintf(path, sizeof path, "%s/timeline.csv", a->out);
    int rc = ms_report_write_timeline_csv(path, bins, n_bins, bin_s, err, err_size);
    if (rc == 0) {
        char name[256], title[512];
        s_basename(a->trace, name, sizeof name);
        snprintf(title, sizeof title,
                 "modserve bench: %s rows %zu..%zu (%zu requests), time x%g, rate x%g", name,
                 c->first, c->first + c->n - 1, c->n, a->time_scale, a->rate);
        snprintf(path, sizeof path, "%s/timeline.svg", a->out);
        rc = ms_report_write_svg(path, title, c->reqs, (int)c->n, bins, n_bins, bin_s, &slo, err,
                                 err_size);
    }
    free(bins);
    return rc;
}

/* A local tcp broker that does not listen fails now rather than after --wait-ms. */
static int s_check_broker(const char *ep, const char *dir, char *err, size_t err_size) {
    static const char *const local[] = {"tcp://127.0.0.1:", "tcp://localhost:"};
    for (int i = 0; i < 2; i++) {
        const size_t n = strlen(local[i]);
        if (strncmp(ep, local[i], n) != 0) continue;
        char *end = NULL;
        const long port = strtol(ep + n, &end, 10);
        if (*end || port < 1 || port > 65535) return 0; /* let zmq judge it */
        if (!ms_cluster_port_listening((int)port))
            return ms_errf(err, err_size,
                           "no broker listens on %s (is the cluster up? modserve up --dir %s, or "
                           "give --broker EP)",
                           ep, dir ? dir : "run");
    }
    return 0;
}

static int s_main(const bench_args *a, bench_ctx *c) {
    char err[MS_ERR_SIZE];
    if (ms_trace_check_scale(a->time_scale, a->rate, err, sizeof err) != 0 ||
        ms_trace_load(&c->trace, a->trace, err, sizeof err) != 0) {
        fprintf(stderr, "modserve bench: %s\n", err);
        return 1;
    }
    ms_trace_window w = {.duration_s = a->duration_s};
    if (a->rows && ms_trace_parse_rows(a->rows, &w.row_begin, &w.row_end, err, sizeof err) != 0) {
        fprintf(stderr, "modserve bench: --rows: %s\n", err);
        return 2;
    }
    if (a->start) {
        if (ms_trace_parse_start(&c->trace, a->start, &w.start_ns, err, sizeof err) != 0) {
            fprintf(stderr, "modserve bench: --start: %s\n", err);
            return 2;
        }
        w.has_start = true;
    }
    if (ms_trace_window_apply(&c->trace, &w, &c->first, &c->n, err, sizeof err) != 0 ||
        s_resolve_target(a, c, err, sizeof err) != 0) {
        fprintf(stderr, "modserve bench: %s\n", err);
        return 1;
    }
    if (c->n > INT32_MAX / 2) {
        fprintf(stderr, "modserve bench: %zu rows in the window: slice it (--rows, --duration)\n",
                c->n);
        return 1;
    }
    bool any_images = false;
    for (size_t i = 0; i < c->n && !any_images; i++)
        any_images = c->trace.rows[c->first + i].n_images > 0;
    if (any_images && a->max_images > 0 && c->n_image_tokens <= 0 && !c->have_model) {
        fprintf(stderr, "modserve bench: the trace has images but the model's image token count "
                        "is unknown: give --model-info LM --mmproj MM, --dir RUNDIR or "
                        "--n-image-tokens N\n");
        return 1;
    }
    if (any_images && c->have_model && c->n_image_tokens <= 0)
        fprintf(stderr, "modserve bench: warning: the model has no mmproj: image requests are "
                        "replayed as text\n");
    ms_replay_plan_opts po = {
        .shape = {.n_image_tokens = c->n_image_tokens,
                  .max_images = MS_MAX(a->max_images, 1),
                  .max_context = a->max_context,
                  .max_gen = a->max_gen,
                  .n_ctx = c->n_ctx},
        .tok = c->have_model ? c->model.tok : NULL,
        .word_mask = c->have_model ? ms_replay_word_mask(c->model.tok) : 0,
        .time_scale = a->time_scale,
        .rate = a->rate,
        .seed = a->seed,
        .row0 = (int64_t)c->first,
    };
    if (a->max_images == 0) po.shape.n_image_tokens = 0; /* --max-images 0: text only */
    c->reqs = ms_xcalloc(c->n, sizeof *c->reqs);
    if (ms_replay_plan(&po, &c->trace.rows[c->first], c->n, c->reqs, err, sizeof err) != 0) {
        fprintf(stderr, "modserve bench: %s\n", err);
        return 1;
    }
    if (a->sample > 0 && (size_t)a->sample < c->n) { /* evenly spread requests (calibration) */
        for (int k = 0; k < a->sample; k++) {
            const size_t from = (size_t)k * c->n / (size_t)a->sample;
            if (from != (size_t)k) c->reqs[k] = c->reqs[from];
        }
        c->n = (size_t)a->sample;
    }
    for (size_t i = 0; i < c->n; i++) {
        c->plan_images += c->reqs[i].n_images;
        c->plan_prompt += c->reqs[i].prompt_tokens;
        c->plan_gen += c->reqs[i].max_tokens;
    }
    if (!a->quiet || a->dry_run) s_print_plan(a, c);
    if (a->dry_run) return 0;
    bool need_pool = false;
    for (size_t i = 0; i < c->n && !need_pool; i++)
        need_pool = c->reqs[i].n_images > 0;
    if (need_pool && s_load_pool(a, c, err, sizeof err) != 0) {
        fprintf(stderr, "modserve bench: %s\n", err);
        return 1;
    }
    if (s_check_broker(c->broker, a->dir, err, sizeof err) != 0) {
        fprintf(stderr, "modserve bench: %s\n", err);
        return 1;
    }
    char started[MS_TRACE_TIME_MAX];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    ms_trace_format_time((int64_t)now.tv_sec * 1000000000LL + now.tv_nsec, started, sizeof started);
    const ms_replay_opts ro = {
        .endpoint = c->broker,
        .redis_host = c->redis_host,
        .redis_port = c->redis_port,
        .prefix = c->prefix,
        .images = (const uint8_t *const *)c->pool,
        .image_len = c->pool_len,
        .n_pool = c->n_pool,
        .unique_images = !a->reuse_images,
        .nonce = (uint64_t)now.tv_sec * 1000003u ^ (uint64_t)now.tv_nsec ^ (uint64_t)getpid(),
        .ttft_ms = a->ttft_ms,
        .tbt_ms = a->tbt_ms,
        .ignore_eos = !a->allow_eos,
        .concurrency_limit = a->concurrency,
        .wait_ms = a->wait_ms,
        .seed = a->seed,
        .word_mask = po.word_mask,
        .stop = &s_stop,
        .progress = a->quiet ? NULL : stderr,
        .progress_tty = isatty(STDERR_FILENO) != 0,
    };
    ms_replay_result res;
    if (ms_replay_run(&ro, c->reqs, (int)c->n, &res, err, sizeof err) != 0) {
        fprintf(stderr, "modserve bench: %s\n", err);
        return 1;
    }
    const ms_report_slo slo = {a->ttft_ms, a->tbt_ms};
    ms_report_summary sum;
    ms_report_summarize(c->reqs, (int)c->n, res.samples, res.n_samples, &slo, &sum);
    ms_report_print(stdout, &sum);
    if (c->keep) {
        c->sum = sum;
        c->have_sum = true;
        c->bins = ms_report_timeline(c->reqs, (int)c->n, res.samples, res.n_samples, &slo,
                                     sum.duration_s, a->bin_s, &c->n_bins, &c->bin_s);
    }
    int rc = s_write_reports(a, c, &res, &sum, started, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "modserve bench: %s\n", err);
    else
        printf("wrote %s/{report.json, requests.csv, timeline.csv, timeline.svg}\n", a->out);
    if (res.gave_up)
        fprintf(stderr, "modserve bench: gave up: no answer from the broker for %d ms\n",
                a->wait_ms);
    if (res.protocol_errors)
        fprintf(stderr, "modserve bench: %d malformed events from the broker\n",
                res.protocol_errors);
    const ms_report_group *all = &sum.g[MS_REPORT_ALL];
    /* a failed request, for a person to look at */
    for (size_t i = 0; i < c->n; i++)
        if (!c->reqs[i].ok) {
            fprintf(stderr, "modserve bench: e.g. trace line %d: %s: %s\n", c->reqs[i].line,
                    c->reqs[i].code[0] ? c->reqs[i].code : "client", c->reqs[i].message);
            if (strstr(c->reqs[i].message, "'ignore_eos'"))
                fprintf(stderr, "modserve bench: this broker predates ignore_eos: rebuild it, or "
                                "give --allow-eos\n");
            break;
        }
    free(res.samples);
    return rc != 0 || all->errors > 0 || res.gave_up || res.protocol_errors ? 1 : 0;
}

/* ---- --compare: the same slice on several layouts (schemas/compare.h) ---------------------- */

/* An absolute path of an existing file into out. 0, or -1 + err. */
static int s_abs_file(const char *path, char *out, size_t size, char *err, size_t err_size) {
    char buf[PATH_MAX];
    if (!realpath(path, buf)) return ms_errf(err, err_size, "%s: %s", path, strerror(errno));
    if (strlen(buf) >= size) return ms_errf(err, err_size, "%s: path too long", path);
    snprintf(out, size, "%s", buf);
    return 0;
}

/* The model files of --preset NAME: NAME-lm.gguf and NAME-mmproj.gguf in ./models or in the
 * repository's models/ (next to the build tree), as `modserve up --preset` finds them. */
static int s_preset_paths(const char *preset, char *lm, char *mm, size_t size, char *err,
                          size_t err_size) {
    if (strcmp(preset, "demo") != 0 && strcmp(preset, "tiny") != 0)
        return ms_errf(err, err_size, "--preset: expected demo or tiny, got '%s'", preset);
    char dirs[2][MS_CLUSTER_PATH_MAX];
    snprintf(dirs[0], sizeof dirs[0], "models");
    snprintf(dirs[1], sizeof dirs[1], "%.900s/../../models", s_exe_dir());
    for (int d = 0; d < 2; d++) {
        char l[MS_CLUSTER_PATH_MAX + 64], m[MS_CLUSTER_PATH_MAX + 64];
        snprintf(l, sizeof l, "%.900s/%.8s-lm.gguf", dirs[d], preset);
        snprintf(m, sizeof m, "%.900s/%.8s-mmproj.gguf", dirs[d], preset);
        if (access(l, R_OK) == 0 && access(m, R_OK) == 0)
            return s_abs_file(l, lm, size, err, err_size) || s_abs_file(m, mm, size, err, err_size)
                       ? -1
                       : 0;
    }
    return ms_errf(err, err_size,
                   "no %s models in ./models or %s: make them with modserve-mkmodel --preset %s "
                   "--out models",
                   preset, dirs[1], preset);
}

/* The replay of one comparison run: this tool's own replay against the run's cluster. */
static int s_compare_replay(void *ud, const ms_compare_replay *sp, ms_compare_cell *cell, char *err,
                            size_t err_size) {
    const bench_args *base = ud;
    bench_args a = *base;
    a.compare = NULL;
    a.dir = sp->rundir;
    a.out = sp->out;
    a.lm = a.mmproj = NULL; /* the cluster's */
    a.broker = a.redis = a.prefix = NULL;
    a.rate = base->rate * sp->rate;
    a.ttft_ms = sp->ttft_ms;
    a.tbt_ms = sp->tbt_ms;
    if (sp->concurrency > 0) a.concurrency = sp->concurrency;
    if (sp->sample > 0) { /* isolated requests: all due at once, one at a time */
        a.sample = sp->sample;
        a.time_scale = MS_TRACE_MIN_SCALE;
        a.rate = 1;
    }
    bench_ctx *c = ms_xcalloc(1, sizeof *c);
    c->keep = true;
    printf("\n== %s ==\n", sp->label);
    fflush(stdout);
    s_main(&a, c);
    int rc = 0;
    if (c->have_sum) {
        cell->sum = c->sum;
        cell->bins = c->bins;
        cell->n_bins = c->n_bins;
        cell->bin_s = c->bin_s;
        c->bins = NULL;
    } else {
        rc = ms_errf(err, err_size, "the replay did not run (see its messages above)");
    }
    s_ctx_fini(c);
    free(c);
    return rc;
}

/* compare.json's "workload": the trace, the slice, the clamps, the planned totals. */
static char *s_compare_meta(const bench_args *a, const bench_ctx *c, const ms_compare_opts *o) {
    cJSON *m = cJSON_CreateObject();
    char t0[MS_TRACE_TIME_MAX], t1[MS_TRACE_TIME_MAX];
    ms_trace_format_time(c->trace.rows[c->first].t_ns, t0, sizeof t0);
    ms_trace_format_time(c->trace.rows[c->first + c->n - 1].t_ns, t1, sizeof t1);
    cJSON_AddStringToObject(m, "trace", a->trace);
    cJSON_AddStringToObject(m, "format", ms_trace_format_name(c->trace.format));
    cJSON_AddNumberToObject(m, "row_first", (double)c->first);
    cJSON_AddNumberToObject(m, "rows", (double)c->n);
    cJSON_AddStringToObject(m, "t_first", t0);
    cJSON_AddStringToObject(m, "t_last", t1);
    cJSON_AddNumberToObject(m, "time_scale", a->time_scale);
    cJSON_AddNumberToObject(m, "rate", a->rate);
    cJSON *r = cJSON_AddArrayToObject(m, "rates");
    for (int i = 0; i < o->n_rates; i++)
        cJSON_AddItemToArray(r, cJSON_CreateNumber(o->rates[i]));
    cJSON_AddNumberToObject(m, "max_context", a->max_context);
    cJSON_AddNumberToObject(m, "max_gen", a->max_gen);
    cJSON_AddNumberToObject(m, "max_images", a->max_images);
    cJSON_AddStringToObject(m, "model", o->lm);
    cJSON_AddStringToObject(m, "mmproj", o->mmproj ? o->mmproj : "");
    cJSON_AddStringToObject(m, "profile", o->profile ? o->profile : "");
    cJSON_AddNumberToObject(m, "n_image_tokens", c->n_image_tokens);
    cJSON_AddNumberToObject(m, "requests", (double)c->n);
    cJSON_AddNumberToObject(m, "images", (double)c->plan_images);
    cJSON_AddNumberToObject(m, "prompt_tokens", (double)c->plan_prompt);
    cJSON_AddNumberToObject(m, "max_tokens", (double)c->plan_gen);
    cJSON *n = cJSON_AddObjectToObject(m, "need_instance_s");
    cJSON_AddNumberToObject(n, "encode", o->need[MS_COMPARE_ENCODE]);
    cJSON_AddNumberToObject(n, "prefill", o->need[MS_COMPARE_PREFILL]);
    cJSON_AddNumberToObject(n, "decode", o->need[MS_COMPARE_DECODE]);
    char *text = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    return text;
}

static int s_compare_main(const bench_args *a) {
    char err[MS_ERR_SIZE];
    ms_compare_opts o;
    ms_compare_opts_default(&o);
    o.n_layouts =
        ms_compare_parse_layouts(a->compare, o.layouts, MS_COMPARE_MAX_LAYOUTS, err, sizeof err);
    if (o.n_layouts < 0 ||
        (o.n_rates = ms_compare_parse_rates(a->rates ? a->rates : "1", o.rates,
                                            MS_COMPARE_MAX_RATES, err, sizeof err)) < 0) {
        fprintf(stderr, "modserve bench --compare: %s\n", err);
        return 2;
    }
    static char lm[MS_CLUSTER_PATH_MAX], mm[MS_CLUSTER_PATH_MAX], prof[MS_CLUSTER_PATH_MAX];
    int rc = 0;
    if (a->preset)
        rc = s_preset_paths(a->preset, lm, mm, sizeof lm, err, sizeof err);
    else if (!a->lm)
        rc = ms_errf(err, sizeof err, "give the model: --model-info LM --mmproj MM, or --preset");
    else
        rc = s_abs_file(a->lm, lm, sizeof lm, err, sizeof err) ||
             (a->mmproj && s_abs_file(a->mmproj, mm, sizeof mm, err, sizeof err));
    if (rc == 0 && a->profile) rc = s_abs_file(a->profile, prof, sizeof prof, err, sizeof err);
    ms_profile profile;
    if (rc == 0 && a->profile) rc = ms_profile_load(prof, &profile, NULL, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "modserve bench --compare: %s\n", err);
        return 1;
    }
    /* the slice, planned once: its load per stage sizes the split */
    bench_args d = *a;
    d.compare = NULL;
    d.dry_run = true;
    d.no_registry = true;
    d.lm = lm;
    d.mmproj = mm[0] ? mm : NULL;
    bench_ctx *plan = ms_xcalloc(1, sizeof *plan);
    if (s_main(&d, plan) != 0 || !plan->reqs) {
        s_ctx_fini(plan);
        free(plan);
        return 1;
    }
    o.has_images = plan->plan_images > 0 && mm[0];
    if (a->profile) {
        const double img_tok = (double)plan->plan_images * plan->n_image_tokens;
        const double cap[3] = {profile.stage[MS_STAGE_ENCODE].capacity_per_s,
                               profile.stage[MS_STAGE_PREFILL].capacity_per_s,
                               profile.stage[MS_STAGE_DECODE].capacity_per_s};
        const double load[3] = {img_tok, (double)plan->plan_prompt, (double)plan->plan_gen};
        for (int s = 0; s < 3; s++)
            o.need[s] = cap[s] > 0 ? load[s] / cap[s] : 0;
        printf("  load per stage at the profile's capacities: encode %.1f, prefill %.1f, decode "
               "%.1f instance-s\n",
               o.need[0], o.need[1], o.need[2]);
    }
    o.cores = a->cores;
    o.encoders = a->encoders;
    o.lm = lm;
    o.mmproj = mm;
    o.profile = a->profile ? prof : NULL;
    o.bin_dir = s_exe_dir();
    o.out = a->out;
    o.kv_tokens = a->kv_tokens;
    o.ttft_ms = a->ttft_set ? a->ttft_ms : 0;
    o.tbt_ms = a->tbt_set ? a->tbt_ms : 0;
    o.slo_factor = a->slo_factor;
    o.calib_requests = a->calib;
    o.autoscale = a->autoscale;
    o.autoscale_args = a->autoscale_args;
    o.port_base = a->port_base;
    o.stop = &s_stop;
    o.log = stderr;
    ms_compare_result *res = ms_xcalloc(1, sizeof *res);
    if (ms_mkdirs(a->out, err, sizeof err) != 0 ||
        ms_compare_run(&o, s_compare_replay, (void *)a, res, err, sizeof err) != 0) {
        fprintf(stderr, "modserve bench --compare: %s\n", err);
        rc = 1;
    }
    if (res->n_cells > 0) {
        ms_compare_print(stdout, res);
        char path[MS_CLUSTER_PATH_MAX + 32], title[512], name[256];
        char *meta = s_compare_meta(a, plan, &o);
        s_basename(a->trace, name, sizeof name);
        snprintf(title, sizeof title, "modserve bench --compare %s: %s rows %zu..%zu, time x%g",
                 a->compare, name, plan->first, plan->first + plan->n - 1, a->time_scale);
        snprintf(path, sizeof path, "%s/compare.json", a->out);
        int wrc = ms_compare_write_json(path, res, meta, err, sizeof err);
        if (wrc == 0) {
            snprintf(path, sizeof path, "%s/compare.svg", a->out);
            wrc = ms_compare_write_svg(path, title, res, err, sizeof err);
        }
        if (wrc != 0) {
            fprintf(stderr, "modserve bench --compare: %s\n", err);
            rc = 1;
        } else {
            printf("wrote %s/{compare.json, compare.svg} and a report per run in %s/LABEL/\n",
                   a->out, a->out);
        }
        free(meta);
    }
    ms_compare_result_fini(res);
    free(res);
    s_ctx_fini(plan);
    free(plan);
    return rc;
}

int main(int argc, char **argv) {
    /* `modserve bench ...` execs this program with argv[1] == "bench" */
    if (argc > 1 && strcmp(argv[1], "bench") == 0) {
        argv++;
        argc--;
    }
    bench_args a;
    s_parse(argc, argv, &a);
    zsys_init();
    zsys_handler_set(NULL); /* our own SIGINT handling: cancel, then write the report */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (a.compare) return s_compare_main(&a);
    bench_ctx *c = ms_xcalloc(1, sizeof *c);
    const int rc = s_main(&a, c);
    s_ctx_fini(c);
    free(c);
    return rc;
}
