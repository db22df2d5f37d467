/* modserve-bench-engine — times every stage of the engine (engine.h) on one
 * model pair and one image, at several thread counts.
 *
 * Usage:
 *   modserve-bench-engine -m LM.gguf [--mmproj MM.gguf --image IMG]
 *       [-t 1,all] [--prompt-tokens 256] [--decode-tokens 32] [--batch 1,8]
 *       [--reps 3] [--backend cpu] [--json OUT]
 *
 * For each thread count an engine is made with that many backend threads and
 * every measurement is one untimed warm-up run followed by the median of
 * --reps timed runs (decode: warm-up and timed windows, see below):
 *   preprocess_ms   ms_engine_preprocess on the image's bytes (already in
 *                   memory): decode, pad/crop, resize, normalise. The stage is
 *                   single-threaded by design (actors run several at once).
 *   encode_ms       ms_engine_encode of one image (the ViT).
 *   project_ms      ms_engine_project of that image's features (mlp).
 *   prefill_tok_s   ms_engine_prefill of --prompt-tokens synthetic token ids
 *                   into a new sequence, with the last row's logits.
 *   decode_tok_s_bN N sequences, each prefilled with --prompt-tokens tokens
 *                   (untimed), then windows of --decode-tokens ms_engine_decode
 *                   steps feeding one token to every sequence (logits for
 *                   all), back to back: one warm-up window, then --reps timed
 *                   ones (so the sequences grow from P to P + (reps+1)·D);
 *                   tokens/s = N * steps / median window time. Tokens are
 *                   synthetic ids (no sampling), as in tools/bench_llamacpp.py.
 * Synthetic ids: 1 + (i * MS_BENCH_TOKEN_STRIDE) % (n_vocab - 1), with i
 * offset by 31 per sequence — the same formula the llama.cpp script uses.
 *
 * Prints a table to stdout and, with --json, writes the results in the shape
 * bench_llamacpp.py writes (tools/bench-engine.sh joins the two).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "ms_common.h"

#define MS_BENCH_MAX_THREADS     64  /* entries in -t */
#define MS_BENCH_MAX_BATCHES     16  /* entries in --batch */
#define MS_BENCH_MAX_SEQS        256 /* largest decode batch */
#define MS_BENCH_MAX_REPS        1000
#define MS_BENCH_TOKEN_STRIDE    7919 /* synthetic token ids, see the file comment */
#define MS_BENCH_SEQ_OFFSET      31   /* per-sequence offset of the synthetic ids */
#define MS_BENCH_KV_SLACK_TOKENS 64   /* KV tokens beyond what the runs need, per sequence */
#define MS_BENCH_MAX_IMAGE_BYTES (64u * 1024u * 1024u)

typedef struct bench_opts {
    const char *lm;                    /* -m */
    const char *mmproj;                /* --mmproj or NULL */
    const char *image;                 /* --image or NULL */
    const char *backend;               /* --backend */
    const char *json;                  /* --json or NULL */
    int threads[MS_BENCH_MAX_THREADS]; /* -t, resolved ("all" = online cores) */
    int n_threads;                     /* entries in threads */
    int batches[MS_BENCH_MAX_BATCHES]; /* --batch */
    int n_batches;                     /* entries in batches */
    int prompt_tokens;                 /* --prompt-tokens */
    int decode_tokens;                 /* --decode-tokens */
    int reps;                          /* --reps */
} bench_opts;

/* Results of one thread count; negative = not measured. */
typedef struct bench_run {
    int threads;                               /* backend threads */
    double load_s;                             /* ms_engine_new, seconds */
    double preprocess_ms;                      /* per image, ms */
    double encode_ms;                          /* ViT, per image, ms */
    double project_ms;                         /* mlp, per image, ms */
    int image_tokens;                          /* rows one image becomes */
    double prefill_tok_s;                      /* prompt tokens per second */
    double decode_tok_s[MS_BENCH_MAX_BATCHES]; /* per opts.batches entry, tokens/s */
    double rss_mb;                             /* VmRSS after the run, MiB */
    size_t kv_bytes;                           /* ms_engine_kv_bytes */
} bench_run;

/* State shared by the timed closures. */
typedef struct bench_ctx {
    ms_engine *e;
    const bench_opts *o;
    const uint8_t *img; /* image bytes */
    size_t img_len;
    float *pixels;   /* image_floats */
    float *features; /* n_image_tokens * feature_dim */
    float *embd;     /* n_image_tokens * n_embd */
    float *logits;   /* MS_BENCH_MAX_SEQS * n_vocab */
    int32_t *prompt; /* prompt_tokens */
    int n_seqs;      /* decode batch of the current measurement */
    char err[MS_ERR_SIZE];
} bench_ctx;

/* A timed closure: returns seconds, or a negative value on error (ctx->err). */
typedef double (*bench_fn)(bench_ctx *c);

static void s_usage(FILE *f) {
    fprintf(f, "usage: modserve-bench-engine -m LM.gguf [--mmproj MM.gguf --image IMG]\n"
               "         [-t 1,all] [--prompt-tokens 256] [--decode-tokens 32] [--batch 1,8]\n"
               "         [--reps 3] [--backend cpu|cpu-ref] [--json OUT]\n");
}

static int s_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Parses "1,2,all" into out (distinct, positive). 0 or -1. */
static int s_parse_list(const char *s, bool allow_all, int *out, int cap, int *n) {
    *n = 0;
    char *copy = ms_xstrdup(s), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long v;
        if (allow_all && strcmp(tok, "all") == 0) {
            v = sysconf(_SC_NPROCESSORS_ONLN);
            if (v < 1) v = 1;
        } else {
            char *end;
            errno = 0;
            v = strtol(tok, &end, 10);
            if (errno || *end || v < 1 || v > 100000) {
                rc = -1;
                break;
            }
        }
        bool dup = false;
        for (int i = 0; i < *n; i++)
            dup |= out[i] == v;
        if (dup) continue;
        if (*n == cap) {
            rc = -1;
            break;
        }
        out[(*n)++] = (int)v;
    }
    free(copy);
    return rc == 0 && *n > 0 ? 0 : -1;
}

static int s_parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static int s_parse_args(int argc, char **argv, bench_opts *o) {
    memset(o, 0, sizeof *o);
    o->backend = "cpu";
    o->prompt_tokens = 256;
    o->decode_tokens = 32;
    o->reps = 3;
    const char *threads = "1,all", *batches = "1,8";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            s_usage(stdout);
            exit(0);
        }
        if (!v) {
            fprintf(stderr, "modserve-bench-engine: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0)
            o->lm = v;
        else if (strcmp(a, "--mmproj") == 0)
            o->mmproj = v;
        else if (strcmp(a, "--image") == 0)
            o->image = v;
        else if (strcmp(a, "--backend") == 0)
            o->backend = v;
        else if (strcmp(a, "--json") == 0)
            o->json = v;
        else if (strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0)
            threads = v;
        else if (strcmp(a, "--batch") == 0)
            batches = v;
        else if (strcmp(a, "--prompt-tokens") == 0)
            ok = s_parse_int(v, 1, MS_ENGINE_MAX_BATCH_TOKENS, &o->prompt_tokens) == 0;
        else if (strcmp(a, "--decode-tokens") == 0)
            ok = s_parse_int(v, 1, 1 << 20, &o->decode_tokens) == 0;
        else if (strcmp(a, "--reps") == 0)
            ok = s_parse_int(v, 1, MS_BENCH_MAX_REPS, &o->reps) == 0;
        else {
            fprintf(stderr, "modserve-bench-engine: unknown option %s\n", a);
            return -1;
        }
        if (!ok) {
            fprintf(stderr, "modserve-bench-engine: bad value '%s' for %s\n", v, a);
            return -1;
        }
        i++;
    }
    if (!o->lm) {
        fprintf(stderr, "modserve-bench-engine: -m LM.gguf is required\n");
        return -1;
    }
    if ((o->mmproj == NULL) != (o->image == NULL)) {
        fprintf(stderr, "modserve-bench-engine: --mmproj and --image go together\n");
        return -1;
    }
    if (s_parse_list(threads, true, o->threads, MS_BENCH_MAX_THREADS, &o->n_threads) != 0) {
        fprintf(stderr, "modserve-bench-engine: bad thread list '%s'\n", threads);
        return -1;
    }
    if (s_parse_list(batches, false, o->batches, MS_BENCH_MAX_BATCHES, &o->n_batches) != 0) {
        fprintf(stderr, "modserve-bench-engine: bad batch list '%s'\n", batches);
        return -1;
    }
    for (int i = 0; i < o->n_batches; i++) {
        if (o->batches[i] > MS_BENCH_MAX_SEQS) {
            fprintf(stderr, "modserve-bench-engine: batch %d is over %d\n", o->batches[i],
                    MS_BENCH_MAX_SEQS);
            return -1;
        }
    }
    return 0;
}

/* VmRSS of this process in MiB, or -1. */
static double s_rss_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    double kb = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtod(line + 6, NULL);
            break;
        }
    }
    fclose(f);
    return kb < 0 ? -1 : kb / 1024.0;
}

static int32_t s_token(int i, int n_vocab) {
    return (int32_t)(1 + ((int64_t)i * MS_BENCH_TOKEN_STRIDE) % (n_vocab - 1));
}

/* One warm-up call, then the median of reps calls; negative on error. */
static double s_median(bench_ctx *c, bench_fn fn) {
    double t[MS_BENCH_MAX_REPS];
    if (fn(c) < 0) return -1;
    for (int i = 0; i < c->o->reps; i++) {
        t[i] = fn(c);
        if (t[i] < 0) return -1;
    }
    qsort(t, (size_t)c->o->reps, sizeof t[0], s_cmp_double);
    int n = c->o->reps;
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static double s_time_preprocess(bench_ctx *c) {
    double t0 = ms_now_s();
    if (ms_engine_preprocess(c->e, c->img, c->img_len, c->pixels, c->err, sizeof c->err) != 0)
        return -1;
    return ms_now_s() - t0;
}

static double s_time_encode(bench_ctx *c) {
    double t0 = ms_now_s();
    if (ms_engine_encode(c->e, c->pixels, 1, c->features, c->err, sizeof c->err) != 0) return -1;
    return ms_now_s() - t0;
}

static double s_time_project(bench_ctx *c) {
    double t0 = ms_now_s();
    if (ms_engine_project(c->e, c->features, 1, c->embd, c->err, sizeof c->err) != 0) return -1;
    return ms_now_s() - t0;
}

/* Prompt of sequence s: prompt_tokens synthetic ids. */
static void s_fill_prompt(bench_ctx *c, int s) {
    int n_vocab = ms_engine_n_vocab(c->e);
    for (int i = 0; i < c->o->prompt_tokens; i++)
        c->prompt[i] = s_token(i + MS_BENCH_SEQ_OFFSET * s, n_vocab);
}

static double s_time_prefill(bench_ctx *c) {
    ms_seq *seq = ms_engine_seq_new(c->e);
    s_fill_prompt(c, 0);
    double t0 = ms_now_s();
    int rc = ms_engine_prefill(c->e, seq, c->prompt, c->o->prompt_tokens, NULL, 0, c->logits,
                               c->err, sizeof c->err);
    double dt = ms_now_s() - t0;
    ms_engine_seq_free(c->e, &seq);
    return rc == 0 ? dt : -1;
}

/* Decode at batch n_seqs: n_seqs sequences are prefilled (untimed), then
 * 1 + reps windows of decode_tokens steps run back to back; the first window
 * is the warm-up, the result the median window time (seconds; -1 on error). */
static double s_time_decode(bench_ctx *c) {
    ms_seq *seqs[MS_BENCH_MAX_SEQS] = {0};
    int32_t toks[MS_BENCH_MAX_SEQS];
    double t[MS_BENCH_MAX_REPS + 1];
    int n = c->n_seqs, P = c->o->prompt_tokens, D = c->o->decode_tokens, reps = c->o->reps;
    int n_vocab = ms_engine_n_vocab(c->e);
    double result = -1;
    for (int s = 0; s < n; s++) {
        seqs[s] = ms_engine_seq_new(c->e);
        s_fill_prompt(c, s);
        if (ms_engine_prefill(c->e, seqs[s], c->prompt, P, NULL, 0, NULL, c->err, sizeof c->err) !=
            0)
            goto done;
    }
    for (int w = 0; w <= reps; w++) {
        double t0 = ms_now_s();
        for (int step = 0; step < D; step++) {
            int pos = P + w * D + step;
            for (int s = 0; s < n; s++)
                toks[s] = s_token(pos + MS_BENCH_SEQ_OFFSET * s, n_vocab);
            if (ms_engine_decode(c->e, seqs, toks, n, c->logits, c->err, sizeof c->err) != 0)
                goto done;
        }
        t[w] = ms_now_s() - t0;
    }
    qsort(t + 1, (size_t)reps, sizeof t[0], s_cmp_double);
    result = reps % 2 ? t[1 + reps / 2] : 0.5 * (t[reps / 2] + t[1 + reps / 2]);
done:
    for (int s = 0; s < n; s++)
        if (seqs[s]) ms_engine_seq_free(c->e, &seqs[s]);
    return result;
}

/* Tokens one decode sequence reaches: the prompt, the warm-up window and reps windows. */
static int s_seq_tokens(const bench_opts *o) {
    return o->prompt_tokens + (o->reps + 1) * o->decode_tokens;
}

static int s_max_batch(const bench_opts *o) {
    int m = 1;
    for (int i = 0; i < o->n_batches; i++)
        m = MS_MAX(m, o->batches[i]);
    return m;
}

/* Measures everything at one thread count. 0 or -1 (message printed). */
static int s_bench_threads(const bench_opts *o, int threads, const uint8_t *img, size_t img_len,
                           bench_run *r) {
    char err[MS_ERR_SIZE];
    memset(r, 0, sizeof *r);
    r->threads = threads;
    r->preprocess_ms = r->encode_ms = r->project_ms = -1;

    int max_seqs = s_max_batch(o);
    ms_engine_params p;
    ms_engine_params_default(&p);
    p.lm_path = o->lm;
    p.mmproj_path = o->mmproj;
    p.backend = o->backend;
    p.n_threads = threads;
    p.kv_max_tokens = max_seqs * (s_seq_tokens(o) + MS_BENCH_KV_SLACK_TOKENS);
    p.max_batch_tokens = MS_MAX(MS_ENGINE_BATCH_TOKENS_DEFAULT, MS_MAX(o->prompt_tokens, max_seqs));
    double t0 = ms_now_s();
    ms_engine *e = ms_engine_new(&p, err, sizeof err);
    if (!e) {
        fprintf(stderr, "modserve-bench-engine: %s\n", err);
        return -1;
    }
    r->load_s = ms_now_s() - t0;
    r->kv_bytes = ms_engine_kv_bytes(e);
    if (s_seq_tokens(o) > ms_engine_n_ctx(e)) {
        fprintf(stderr,
                "modserve-bench-engine: %d prompt + %d x %d decode tokens exceed the "
                "context of %d\n",
                o->prompt_tokens, o->reps + 1, o->decode_tokens, ms_engine_n_ctx(e));
        ms_engine_destroy(&e);
        return -1;
    }

    bench_ctx c = {.e = e, .o = o, .img = img, .img_len = img_len};
    int n_vocab = ms_engine_n_vocab(e);
    c.logits = ms_xmalloc((size_t)max_seqs * (size_t)n_vocab * sizeof(float));
    c.prompt = ms_xmalloc((size_t)o->prompt_tokens * sizeof(int32_t));
    int rc = -1;
    const char *stage = "";
    if (img && ms_engine_has_vision(e)) {
        size_t rows = (size_t)ms_engine_n_image_tokens(e);
        r->image_tokens = (int)rows;
        c.pixels = ms_xmalloc(ms_engine_image_floats(e) * sizeof(float));
        c.features = ms_xmalloc(rows * (size_t)ms_engine_feature_dim(e) * sizeof(float));
        c.embd = ms_xmalloc(rows * (size_t)ms_engine_n_embd(e) * sizeof(float));
        stage = "preprocess";
        if ((r->preprocess_ms = 1e3 * s_median(&c, s_time_preprocess)) < 0) goto out;
        stage = "encode";
        if ((r->encode_ms = 1e3 * s_median(&c, s_time_encode)) < 0) goto out;
        stage = "project";
        if ((r->project_ms = 1e3 * s_median(&c, s_time_project)) < 0) goto out;
    }
    stage = "prefill";
    double dt = s_median(&c, s_time_prefill);
    if (dt < 0) goto out;
    r->prefill_tok_s = o->prompt_tokens / dt;
    for (int b = 0; b < o->n_batches; b++) {
        stage = "decode";
        c.n_seqs = o->batches[b];
        dt = s_time_decode(&c);
        if (dt < 0) goto out;
        r->decode_tok_s[b] = (double)c.n_seqs * o->decode_tokens / dt;
    }
    r->rss_mb = s_rss_mb();
    rc = 0;
out:
    if (rc != 0) fprintf(stderr, "modserve-bench-engine: %s: %s\n", stage, c.err);
    free(c.pixels);
    free(c.features);
    free(c.embd);
    free(c.logits);
    free(c.prompt);
    ms_engine_destroy(&e);
    return rc;
}

static void s_print_table(const bench_opts *o, const bench_run *runs, int n) {
    printf("\nmodserve engine (%s backend), %d prompt tokens, %d decode steps, median of %d\n",
           o->backend, o->prompt_tokens, o->decode_tokens, o->reps);
    printf("%-22s", "metric");
    for (int i = 0; i < n; i++) {
        char head[32];
        snprintf(head, sizeof head, "threads=%d", runs[i].threads);
        printf(" %13s", head);
    }
    printf("\n");
    if (o->image) {
        printf("%-22s", "preprocess ms/image");
        for (int i = 0; i < n; i++)
            printf(" %13.2f", runs[i].preprocess_ms);
        printf("\n%-22s", "encode ms/image");
        for (int i = 0; i < n; i++)
            printf(" %13.2f", runs[i].encode_ms);
        printf("\n%-22s", "project ms/image");
        for (int i = 0; i < n; i++)
            printf(" %13.2f", runs[i].project_ms);
        printf("\n");
    }
    printf("%-22s", "prefill tok/s");
    for (int i = 0; i < n; i++)
        printf(" %13.1f", runs[i].prefill_tok_s);
    printf("\n");
    for (int b = 0; b < o->n_batches; b++) {
        char name[32];
        snprintf(name, sizeof name, "decode tok/s batch %d", o->batches[b]);
        printf("%-22s", name);
        for (int i = 0; i < n; i++)
            printf(" %13.1f", runs[i].decode_tok_s[b]);
        printf("\n");
    }
    printf("%-22s", "load s");
    for (int i = 0; i < n; i++)
        printf(" %13.2f", runs[i].load_s);
    printf("\n%-22s", "RSS MiB");
    for (int i = 0; i < n; i++)
        printf(" %13.1f", runs[i].rss_mb);
    printf("\n%-22s", "KV pool MiB");
    for (int i = 0; i < n; i++)
        printf(" %13.1f", (double)runs[i].kv_bytes / (1024.0 * 1024.0));
    printf("\n");
}

static int s_write_json(const bench_opts *o, const bench_run *runs, int n) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "engine", "modserve");
    cJSON_AddStringToObject(root, "backend", o->backend);
    cJSON_AddStringToObject(root, "model", o->lm);
    if (o->mmproj) cJSON_AddStringToObject(root, "mmproj", o->mmproj);
    if (o->image) cJSON_AddStringToObject(root, "image", o->image);
    cJSON_AddNumberToObject(root, "prompt_tokens", o->prompt_tokens);
    cJSON_AddNumberToObject(root, "decode_tokens", o->decode_tokens);
    cJSON_AddNumberToObject(root, "reps", o->reps);
    cJSON_AddStringToObject(root, "kv_type", "f32");
    cJSON_AddBoolToObject(root, "encode_includes_projector", false);
    cJSON *arr = cJSON_AddArrayToObject(root, "runs");
    for (int i = 0; i < n; i++) {
        const bench_run *r = &runs[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "threads", r->threads);
        if (o->image) {
            cJSON_AddNumberToObject(j, "preprocess_ms", r->preprocess_ms);
            cJSON_AddNumberToObject(j, "encode_ms", r->encode_ms);
            cJSON_AddNumberToObject(j, "project_ms", r->project_ms);
            cJSON_AddNumberToObject(j, "image_tokens", r->image_tokens);
        }
        cJSON_AddNumberToObject(j, "prefill_tok_s", r->prefill_tok_s);
        for (int b = 0; b < o->n_batches; b++) {
            char key[32];
            snprintf(key, sizeof key, "decode_tok_s_b%d", o->batches[b]);
            cJSON_AddNumberToObject(j, key, r->decode_tok_s[b]);
        }
        cJSON_AddNumberToObject(j, "load_s", r->load_s);
        cJSON_AddNumberToObject(j, "rss_mb", r->rss_mb);
        cJSON_AddNumberToObject(j, "kv_bytes", (double)r->kv_bytes);
        cJSON_AddItemToArray(arr, j);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    FILE *f = fopen(o->json, "w");
    int rc = -1;
    if (f) {
        rc = fputs(text, f) < 0 || fputc('\n', f) == EOF ? -1 : 0;
        if (fclose(f) != 0) rc = -1;
    }
    if (rc != 0)
        fprintf(stderr, "modserve-bench-engine: cannot write %s: %s\n", o->json, strerror(errno));
    free(text);
    return rc;
}

int main(int argc, char **argv) {
    bench_opts o;
    if (s_parse_args(argc, argv, &o) != 0) {
        s_usage(stderr);
        return 2;
    }
    uint8_t *img = NULL;
    size_t img_len = 0;
    if (o.image) {
        char err[MS_ERR_SIZE];
        img = ms_read_file(o.image, MS_BENCH_MAX_IMAGE_BYTES, &img_len, err, sizeof err);
        if (!img) {
            fprintf(stderr, "modserve-bench-engine: %s\n", err);
            return 1;
        }
    }
    bench_run runs[MS_BENCH_MAX_THREADS];
    int rc = 0;
    for (int i = 0; i < o.n_threads; i++) {
        if (s_bench_threads(&o, o.threads[i], img, img_len, &runs[i]) != 0) {
            rc = 1;
            break;
        }
        fprintf(stderr, "modserve-bench-engine: threads=%d done\n", o.threads[i]);
    }
    if (rc == 0) {
        s_print_table(&o, runs, o.n_threads);
        if (o.json && s_write_json(&o, runs, o.n_threads) != 0) rc = 1;
    }
    free(img);
    return rc;
}
