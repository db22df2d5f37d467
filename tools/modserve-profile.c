/* modserve-profile — measures each stage of a model pair on this machine and
 * writes the stage profile the broker and the autoscaler read
 * (broker/profiler.h does the work; docs/profiles.md describes the file).
 *
 * Usage:
 *   modserve-profile -m LM.gguf [--mmproj MM.gguf] [--image F] [-t THREADS]
 *       [--ttft-ms 2000] [--tbt-ms 200] [--share-encode X] [--share-prefill X]
 *       [--share-decode X] [--util X] [--quick] [--reps N] [--no-zmq]
 *       [--backend cpu] [--batch-tokens N] -o profile.json
 *   modserve-profile --from profile.json [--ttft-ms ..] [...] -o other.json
 *       (re-derives caps and capacities from the curves a profile already
 *        holds, for other SLOs, without measuring)
 *
 * Progress goes to stderr, the summary table to stdout, the profile to -o
 * ("-" = stdout, then the summary goes to stderr).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"
#include "profile.h"
#include "profiler.h"

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: modserve-profile -m LM.gguf [--mmproj MM.gguf] [--image FILE] [-t THREADS]\n"
            "                        [--ttft-ms MS] [--tbt-ms MS] [--share-encode X]\n"
            "                        [--share-prefill X] [--share-decode X] [--util X]\n"
            "                        [--quick] [--reps N] [--no-zmq] [--backend NAME]\n"
            "                        [--batch-tokens N] -o OUT.json\n"
            "       modserve-profile --from PROFILE.json [SLO options] -o OUT.json\n"
            "\n"
            "Measures preprocess, ViT, connector, prefill, decode and transfer times with the\n"
            "real engine, fits linear models and writes the broker's stage profile with the\n"
            "batch caps and per-instance capacities at the given SLOs (docs/profiles.md).\n"
            "  --ttft-ms MS       time-to-first-token target (default %d)\n"
            "  --tbt-ms MS        time-between-tokens target (default %d)\n"
            "  --share-STAGE X    share of TTFT (encode, prefill) or TBT (decode) the stage\n"
            "                     may use, (0, 1] (defaults 0.5, 0.5, 1)\n"
            "  --util X           capacity = saturated throughput x X (default %.2f)\n"
            "  --quick            fewer points and repetitions (well under a minute on\n"
            "                     the tiny/demo models)\n"
            "  --no-zmq           skip the ZeroMQ ipc/tcp transfer measurements\n"
            "  --from FILE        derive from FILE's measured curves, measure nothing\n",
            MS_PROFILER_TTFT_MS_DEFAULT, MS_PROFILER_TBT_MS_DEFAULT,
            MS_PROFILER_UTILIZATION_DEFAULT);
}

static void s_progress(const char *line, void *user) {
    (void)user;
    fprintf(stderr, "[profile] %s\n", line);
}

/* strtol/strtod with the whole argument consumed. */
static int s_int(const char *flag, const char *v, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || !end || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "modserve-profile: %s: '%s' is not an integer in %ld..%ld\n", flag, v, lo,
                hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int s_num(const char *flag, const char *v, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || !end || *end || end == v || !(x > lo) || x > hi) {
        fprintf(stderr, "modserve-profile: %s: '%s' is not a number in (%g, %g]\n", flag, v, lo,
                hi);
        return -1;
    }
    *out = x;
    return 0;
}

static void s_summary(FILE *f, const ms_profile *p) {
    const ms_profile_measured *m = &p->measured;
    static const char *const units[MS_STAGE_COUNT] = {"images", "tokens", "sequences"};
    static const char *const cap_units[MS_STAGE_COUNT] = {"image tok/s", "prompt tok/s",
                                                          "gen tok/s"};
    fprintf(f, "model %s on %s (%s)\n", p->model, p->hardware, m->backend);
    fprintf(f, "SLO: TTFT %d ms, TBT %d ms; utilization %.2f\n", p->ttft_ms, p->tbt_ms,
            m->utilization);
    fprintf(f, "%-8s %10s %12s %12s %10s %12s %12s %16s\n", "stage", "base_ms", "per_unit_ms",
            "budget_ms", "max_batch", "", "batch_ms", "capacity");
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        const ms_stage_profile *sp = &p->stage[s];
        const ms_profile_slo_check *c = &m->slo_check[s];
        char cap[48];
        if (sp->capacity_per_s > 0)
            snprintf(cap, sizeof(cap), "%.0f %s", sp->capacity_per_s, cap_units[s]);
        else
            snprintf(cap, sizeof(cap), "unknown");
        fprintf(f, "%-8s %10.3f %12.5f %12.1f %10lld %-12s %12.2f %16s%s\n",
                ms_stage_name((ms_stage)s), sp->base_ms, sp->per_unit_ms, c->budget_ms,
                (long long)sp->max_batch, units[s], c->batch_ms, cap,
                c->met || sp->capacity_per_s == 0 ? "" : "  SLO NOT MET at batch 1");
    }
    const ms_profile_curve *pre = &m->curve[MS_CURVE_PREPROCESS];
    if (pre->n_points > 0)
        fprintf(f, "preprocess: %.2f ms + %.2f ms/megapixel (%.2f ms at %.2f MP)\n", pre->base_ms,
                pre->per_unit_ms, ms_profile_curve_eval(pre, m->ref_mpixels), m->ref_mpixels);
    const ms_profile_curve *dx = &m->curve[MS_CURVE_DECODE_CTX];
    if (dx->n_points > 0 && dx->at > 0)
        fprintf(f, "decode context cost: %.5f ms per context token per sequence\n",
                dx->per_unit_ms / dx->at);
    for (int k = MS_CURVE_TRANSFER_MEMCPY; k <= MS_CURVE_TRANSFER_TCP; k++) {
        const ms_profile_curve *c = &m->curve[k];
        if (c->n_points == 0) continue;
        const double feat_mib = (double)m->feature_bytes_per_image / (1024.0 * 1024.0);
        const double kv_mib = (double)m->kv_bytes_per_token * 1000.0 / (1024.0 * 1024.0);
        fprintf(f,
                "%-16s %.3f ms + %.3f ms/MiB: one image's features %.3f ms, "
                "KV of 1000 tokens %.2f ms\n",
                ms_curve_name((ms_curve)k), c->base_ms, c->per_unit_ms,
                ms_profile_curve_eval(c, feat_mib), ms_profile_curve_eval(c, kv_mib));
    }
}

int main(int argc, char **argv) {
    ms_profiler_opts o;
    ms_profiler_opts_default(&o);
    ms_profiler_slo slo;
    ms_profiler_slo_default(&slo);
    const char *out_path = NULL, *from = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            s_usage(stdout);
            return 0;
        }
        if (strcmp(a, "--quick") == 0) {
            o.quick = true;
            continue;
        }
        if (strcmp(a, "--no-zmq") == 0) {
            o.transfer_zmq = false;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "modserve-profile: %s: missing value (or unknown option)\n", a);
            s_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        long n = 0;
        double x = 0;
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) {
            o.lm_path = v;
        } else if (strcmp(a, "--mmproj") == 0) {
            o.mmproj_path = v;
        } else if (strcmp(a, "--image") == 0) {
            o.image_path = v;
        } else if (strcmp(a, "--backend") == 0) {
            o.backend = v;
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--out") == 0) {
            out_path = v;
        } else if (strcmp(a, "--from") == 0) {
            from = v;
        } else if (strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) {
            if (s_int(a, v, 1, 1024, &n) != 0) return 2;
            o.n_threads = (int)n;
        } else if (strcmp(a, "--reps") == 0) {
            if (s_int(a, v, 1, 64, &n) != 0) return 2;
            o.reps = (int)n;
        } else if (strcmp(a, "--batch-tokens") == 0) {
            if (s_int(a, v, 1, 65536, &n) != 0) return 2;
            o.max_batch_tokens = (int)n;
        } else if (strcmp(a, "--ttft-ms") == 0) {
            if (s_int(a, v, 1, MS_PROFILE_MAX_SLO_MS, &n) != 0) return 2;
            slo.ttft_ms = (int32_t)n;
        } else if (strcmp(a, "--tbt-ms") == 0) {
            if (s_int(a, v, 1, MS_PROFILE_MAX_SLO_MS, &n) != 0) return 2;
            slo.tbt_ms = (int32_t)n;
        } else if (strcmp(a, "--share-encode") == 0) {
            if (s_num(a, v, 0, 1, &x) != 0) return 2;
            slo.slo_share[MS_STAGE_ENCODE] = x;
        } else if (strcmp(a, "--share-prefill") == 0) {
            if (s_num(a, v, 0, 1, &x) != 0) return 2;
            slo.slo_share[MS_STAGE_PREFILL] = x;
        } else if (strcmp(a, "--share-decode") == 0) {
            if (s_num(a, v, 0, 1, &x) != 0) return 2;
            slo.slo_share[MS_STAGE_DECODE] = x;
        } else if (strcmp(a, "--util") == 0) {
            if (s_num(a, v, 0, 1, &x) != 0) return 2;
            slo.utilization = x;
        } else {
            fprintf(stderr, "modserve-profile: unknown option %s\n", a);
            s_usage(stderr);
            return 2;
        }
    }
    if (!out_path) {
        fprintf(stderr, "modserve-profile: -o OUT.json is required\n");
        s_usage(stderr);
        return 2;
    }
    if (!from && !o.lm_path) {
        fprintf(stderr, "modserve-profile: -m LM.gguf (or --from PROFILE.json) is required\n");
        s_usage(stderr);
        return 2;
    }

    char err[MS_ERR_SIZE] = "";
    ms_profile p;
    const double t0 = ms_now_s();
    if (from) {
        bool used_defaults = false;
        if (ms_profile_load(from, &p, &used_defaults, err, sizeof(err)) != 0 || used_defaults) {
            fprintf(stderr, "modserve-profile: %s\n", used_defaults ? "--from: no such file" : err);
            return 1;
        }
    } else {
        o.progress = s_progress;
        if (ms_profiler_measure(&o, &p, err, sizeof(err)) != 0) {
            fprintf(stderr, "modserve-profile: %s\n", err);
            return 1;
        }
    }
    if (ms_profiler_derive(&p, &slo, err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve-profile: %s\n", err);
        return 1;
    }
    char *json = ms_profile_to_json(&p, err, sizeof(err));
    if (!json) {
        fprintf(stderr, "modserve-profile: %s\n", err);
        return 1;
    }
    const bool to_stdout = strcmp(out_path, "-") == 0;
    FILE *f = to_stdout ? stdout : fopen(out_path, "w");
    if (!f) {
        fprintf(stderr, "modserve-profile: %s: %s\n", out_path, strerror(errno));
        free(json);
        return 1;
    }
    const size_t len = strlen(json);
    const bool ok = fwrite(json, 1, len, f) == len;
    free(json);
    if ((!to_stdout && fclose(f) != 0) || !ok) {
        fprintf(stderr, "modserve-profile: %s: write failed\n", out_path);
        return 1;
    }
    s_summary(to_stdout ? stderr : stdout, &p);
    if (!to_stdout) fprintf(stderr, "[profile] wrote %s in %.1f s\n", out_path, ms_now_s() - t0);
    return 0;
}
