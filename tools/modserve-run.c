/* modserve-run — one prompt (text + images) through the engine, answer
 * streamed to stdout (like llama.cpp's llama-mtmd-cli). docs/run.md is the
 * reference; `modserve-run --help` prints the options.
 *
 * stdout carries only the generated text (or, with --tokenize, the prompt's
 * ids); progress, the timing summary, --ids and errors go to stderr. Exit
 * status: 0 on success, 1 on a bad argument, file, image or engine error,
 * 130 when interrupted before anything was generated.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "engine.h"
#include "image.h"
#include "ms_common.h"

#define RUN_MAX_PROMPT_FILE (64u << 20) /* bytes of a --file prompt */
#define RUN_PROGRESS_STEP   0.02f       /* least progress change redrawn on a terminal */

static const char *s_usage =
    "usage: modserve-run -m LM.gguf [--mmproj MM.gguf] [--image FILE]... -p TEXT [options]\n"
    "\n"
    "Runs one prompt through the engine and streams the answer to stdout.\n"
    "\n"
    "model:\n"
    "  -m, --model FILE        text model GGUF (required)\n"
    "      --mmproj FILE       vision tower + projector GGUF (needed for --image)\n"
    "      --backend NAME      cpu (default) or cpu-ref (scalar reference)\n"
    "  -t, --threads N         compute threads (default: one per core)\n"
    "      --kv-tokens N       KV cache capacity in tokens (default %d)\n"
    "prompt:\n"
    "  -p, --prompt TEXT       the user's message\n"
    "  -f, --file FILE         read the user's message from FILE instead\n"
    "      --image FILE        an image (JPEG, PNG, WebP); repeat for more. Placed at each\n"
    "                          \"<image>\" in the prompt, else before the text\n"
    "      --system TEXT       a system message\n"
    "      --chat-template NAME  chatml, llama3, vicuna, vicuna-orca, llama2, llama2-sys,\n"
    "                          llama2-sys-bos, llama2-sys-strip, plain (default: detected\n"
    "                          from the model's tokenizer.chat_template)\n"
    "      --raw               no chat template: the prompt text as it is\n"
    "sampling:\n"
    "  -n, --n-predict N       tokens to generate at most (default %d; -1: up to %d)\n"
    "      --temp T            temperature; 0 = greedy (default 0)\n"
    "      --top-k K           keep the K most likely tokens (0 = off)\n"
    "      --top-p P           nucleus sampling, P in (0, 1] (1 = off)\n"
    "      --min-p P           drop tokens below P * p(best) (0 = off)\n"
    "  -s, --seed S            RNG seed (default: from the clock, printed at the end)\n"
    "      --stop STR          stop before STR (repeat, up to %d)\n"
    "output:\n"
    "      --tokenize          print the prompt's token ids on one line and exit\n"
    "                          (images as negative placeholders -1, -2, ...)\n"
    "      --ids               print the generated token ids on stderr (\"ids: ...\")\n"
    "  -q, --quiet             no progress line and no timing summary\n"
    "  -h, --help              this text\n";

typedef struct run_args {
    const char *model;                            /* -m */
    const char *mmproj;                           /* --mmproj */
    const char *backend;                          /* --backend */
    int n_threads;                                /* -t, 0 = default */
    int kv_tokens;                                /* --kv-tokens, 0 = default */
    const char *prompt;                           /* -p */
    const char *prompt_file;                      /* -f */
    const char *system;                           /* --system */
    const char *chat_template;                    /* --chat-template */
    bool raw;                                     /* --raw */
    const char *images[MS_MAX_IMAGES_PER_PROMPT]; /* --image, in order */
    int n_images;
    ms_sampling_params sp; /* sampling flags */
    bool seed_given;       /* --seed was passed */
    bool tokenize;         /* --tokenize */
    bool ids;              /* --ids */
    bool quiet;            /* -q */
} run_args;

static volatile sig_atomic_t s_interrupted;

static void s_on_sigint(int sig) {
    (void)sig;
    s_interrupted = 1;
}

static void s_die_usage(const char *fmt, const char *arg) {
    fprintf(stderr, "modserve-run: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see modserve-run --help)\n");
    exit(1);
}

static const char *s_basename(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* ---- argument parsing ----------------------------------------------------- */

static long long s_parse_int(const char *opt, const char *s, long long lo, long long hi) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "modserve-run: %s expects an integer in [%lld, %lld], got '%s'\n", opt, lo,
                hi, s);
        exit(1);
    }
    return v;
}

static uint64_t s_parse_u64(const char *opt, const char *s) {
    char *end = NULL;
    errno = 0;
    if (s[0] == '-') s_die_usage("--seed expects a non-negative integer, got '%s'", s);
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0') {
        fprintf(stderr, "modserve-run: %s expects a non-negative integer, got '%s'\n", opt, s);
        exit(1);
    }
    return (uint64_t)v;
}

static float s_parse_float(const char *opt, const char *s) {
    char *end = NULL;
    errno = 0;
    float v = strtof(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v)) {
        fprintf(stderr, "modserve-run: %s expects a number, got '%s'\n", opt, s);
        exit(1);
    }
    return v;
}

static void s_parse_args(int argc, char **argv, run_args *a) {
    memset(a, 0, sizeof(*a));
    ms_sampling_params_default(&a->sp);
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
#define IS(s)   (strcmp(o, (s)) == 0)
#define VALUE() (i + 1 < argc ? argv[++i] : (s_die_usage("%s needs a value", o), (char *)NULL))
        if (IS("-h") || IS("--help")) {
            printf(s_usage, MS_ENGINE_KV_TOKENS_DEFAULT, MS_DEFAULT_MAX_TOKENS, MS_MAX_GEN_TOKENS,
                   MS_MAX_STOP_STRINGS);
            exit(0);
        } else if (IS("-m") || IS("--model")) {
            a->model = VALUE();
        } else if (IS("--mmproj")) {
            a->mmproj = VALUE();
        } else if (IS("--backend")) {
            a->backend = VALUE();
            if (strcmp(a->backend, "cpu") != 0 && strcmp(a->backend, "cpu-ref") != 0)
                s_die_usage("--backend: unknown backend '%s' (cpu or cpu-ref)", a->backend);
        } else if (IS("-t") || IS("--threads")) {
            a->n_threads = (int)s_parse_int(o, VALUE(), 1, 1024);
        } else if (IS("--kv-tokens")) {
            a->kv_tokens = (int)s_parse_int(o, VALUE(), 1, INT_MAX / 2);
        } else if (IS("-p") || IS("--prompt")) {
            a->prompt = VALUE();
        } else if (IS("-f") || IS("--file")) {
            a->prompt_file = VALUE();
        } else if (IS("--system")) {
            a->system = VALUE();
        } else if (IS("--chat-template")) {
            a->chat_template = VALUE();
        } else if (IS("--raw")) {
            a->raw = true;
        } else if (IS("--image")) {
            const char *f = VALUE();
            if (a->n_images >= MS_MAX_IMAGES_PER_PROMPT)
                s_die_usage("too many --image (at most 64), at '%s'", f);
            a->images[a->n_images++] = f;
        } else if (IS("-n") || IS("--n-predict")) {
            long long n = s_parse_int(o, VALUE(), -1, MS_MAX_GEN_TOKENS);
            if (n == 0) s_die_usage("%s must be at least 1 (or -1)", o);
            a->sp.max_tokens = n < 0 ? MS_MAX_GEN_TOKENS : (int)n;
        } else if (IS("--temp")) {
            a->sp.temperature = s_parse_float(o, VALUE());
        } else if (IS("--top-k")) {
            a->sp.top_k = (int)s_parse_int(o, VALUE(), INT_MIN, INT_MAX);
        } else if (IS("--top-p")) {
            a->sp.top_p = s_parse_float(o, VALUE());
        } else if (IS("--min-p")) {
            a->sp.min_p = s_parse_float(o, VALUE());
        } else if (IS("-s") || IS("--seed")) {
            a->sp.seed = s_parse_u64(o, VALUE());
            a->seed_given = true;
        } else if (IS("--stop")) {
            const char *s = VALUE();
            if (a->sp.n_stop >= MS_MAX_STOP_STRINGS)
                s_die_usage("too many --stop strings (at most 8), at '%s'", s);
            if (s[0] == '\0') s_die_usage("--stop: the stop string is empty%s", "");
            if (strlen(s) >= MS_MAX_STOP_LEN)
                s_die_usage("--stop: '%s' is too long (at most 127 bytes)", s);
            strcpy(a->sp.stop[a->sp.n_stop++], s);
        } else if (IS("--tokenize")) {
            a->tokenize = true;
        } else if (IS("--ids")) {
            a->ids = true;
        } else if (IS("-q") || IS("--quiet")) {
            a->quiet = true;
        } else {
            s_die_usage("unknown option '%s'", o);
        }
#undef IS
#undef VALUE
    }
    if (!a->model) s_die_usage("-m MODEL is required%s", "");
    if (!a->prompt && !a->prompt_file)
        s_die_usage("a prompt is required (-p TEXT or -f FILE)%s", "");
    if (a->prompt && a->prompt_file) s_die_usage("give -p or -f, not both%s", "");
    if (a->raw && a->chat_template)
        s_die_usage("--raw and --chat-template exclude each other%s", "");
    if (a->raw && a->system) s_die_usage("--raw and --system exclude each other%s", "");
    if (a->n_images > 0 && !a->mmproj && !a->tokenize)
        s_die_usage("--image needs --mmproj (the vision tower)%s", "");
    char err[MS_ERR_SIZE];
    if (ms_sampling_params_validate(&a->sp, err, sizeof(err)) != 0) s_die_usage("%s", err);
    if (!a->seed_given) a->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
}

/* ---- prompt --------------------------------------------------------------- */

/* Renders and tokenizes the conversation. 0, or -1 + err. */
static int s_build_prompt(const run_args *a, const ms_tokenizer *tok, const char *jinja,
                          const char *user_text, int32_t **prompt, int *n_prompt,
                          ms_chat_template *t_out, char *err, size_t err_size) {
    ms_chat_template t;
    if (a->raw) {
        t = MS_CHAT_RAW;
    } else if (a->chat_template) {
        if (ms_chat_template_from_name(a->chat_template, &t, err, err_size) != 0) return -1;
    } else {
        t = ms_chat_detect(jinja);
    }
    *t_out = t;
    ms_chat_message msgs[2];
    int n = 0;
    if (a->system) msgs[n++] = (ms_chat_message){MS_CHAT_SYSTEM, a->system, 0};
    msgs[n++] = (ms_chat_message){MS_CHAT_USER, user_text, a->n_images};
    int n_images = 0;
    return ms_chat_build_prompt(tok, t, msgs, n, true, prompt, n_prompt, &n_images, err, err_size);
}

/* --tokenize: only the tokenizer and the template are read from the model. */
static int s_tokenize_only(const run_args *a, const char *user_text) {
    char err[MS_ERR_SIZE];
    ms_gguf *g = ms_gguf_open(a->model, err, sizeof(err));
    if (!g) {
        fprintf(stderr, "modserve-run: %s: %s\n", a->model, err);
        return 1;
    }
    ms_tokenizer *tok = ms_tokenizer_from_gguf(g, err, sizeof(err));
    if (!tok) {
        fprintf(stderr, "modserve-run: %s: %s\n", a->model, err);
        ms_gguf_close(&g);
        return 1;
    }
    const char *jinja = NULL;
    if (ms_gguf_find_key(g, "tokenizer.chat_template") >= 0 &&
        ms_gguf_get_str(g, "tokenizer.chat_template", &jinja, err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve-run: %s: %s\n", a->model, err);
        ms_tokenizer_destroy(&tok);
        ms_gguf_close(&g);
        return 1;
    }
    int32_t *prompt = NULL;
    int n = 0;
    ms_chat_template t;
    int rc = s_build_prompt(a, tok, jinja, user_text, &prompt, &n, &t, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "modserve-run: prompt: %s\n", err);
    } else {
        for (int i = 0; i < n; i++)
            printf(i ? " %" PRId32 : "%" PRId32, prompt[i]);
        printf("\n");
        if (!a->quiet)
            fprintf(stderr, "modserve-run: %d prompt entries, chat template %s\n", n,
                    ms_chat_template_name(t));
    }
    free(prompt);
    ms_tokenizer_destroy(&tok);
    ms_gguf_close(&g);
    return rc == 0 ? 0 : 1;
}

/* ---- progress and streaming ----------------------------------------------- */

typedef struct run_progress {
    const char *label; /* file being loaded */
    bool tty;          /* stderr is a terminal: redraw one line */
    float shown;       /* overall fraction last drawn, -1 before the first */
    bool quiet;        /* print nothing */
} run_progress;

/* Overall fraction from a stage and its own fraction (lm, mmproj, kv, weights). */
static float s_overall(const char *what, float f) {
    if (strcmp(what, "lm") == 0) return 0.10f * f;
    if (strcmp(what, "mmproj") == 0) return 0.10f + 0.10f * f;
    if (strcmp(what, "kv") == 0) return 0.20f + 0.05f * f;
    if (strcmp(what, "weights") == 0) return 0.25f + 0.75f * f;
    return -1.0f;
}

static void s_on_progress(const char *what, float fraction, void *user) {
    run_progress *p = user;
    if (p->quiet) return;
    float f = s_overall(what, fraction);
    if (f < 0.0f) return;
    if (f <= p->shown) return; /* monotonic */
    bool done = f >= 1.0f;
    if (p->tty) {
        if (!done && p->shown >= 0.0f && f - p->shown < RUN_PROGRESS_STEP) return;
        fprintf(stderr, "\rloading %s ... %3d%%%s", p->label, (int)(f * 100.0f + 0.5f),
                done ? "\n" : "");
    } else if (p->shown < 0.0f || done) {
        fprintf(stderr, "loading %s ... %d%%\n", p->label, (int)(f * 100.0f + 0.5f));
    }
    p->shown = f;
}

typedef struct run_stream {
    bool any; /* some text was written */
} run_stream;

static bool s_on_token(int32_t id, const char *text, int len, void *user) {
    (void)id;
    run_stream *st = user;
    if (len > 0) {
        fwrite(text, 1, (size_t)len, stdout);
        fflush(stdout);
        st->any = true;
    }
    return !s_interrupted;
}

static const char *s_finish_name(ms_finish_reason f) {
    switch (f) {
    case MS_FINISH_EOG:
        return "end of generation";
    case MS_FINISH_LENGTH:
        return "length";
    case MS_FINISH_STOP:
        return "stop string";
    case MS_FINISH_CANCEL:
        return "interrupted";
    }
    return "?";
}

static double s_rate(int n, double ms) {
    return ms > 0.0 ? 1000.0 * n / ms : 0.0;
}

/* ---- main ----------------------------------------------------------------- */

int main(int argc, char **argv) {
    run_args a;
    s_parse_args(argc, argv, &a);
    char err[MS_ERR_SIZE];

    char *file_text = NULL;
    const char *user_text = a.prompt;
    if (a.prompt_file) {
        size_t len = 0;
        file_text =
            (char *)ms_read_file(a.prompt_file, RUN_MAX_PROMPT_FILE, &len, err, sizeof(err));
        if (!file_text) {
            fprintf(stderr, "modserve-run: %s\n", err);
            return 1;
        }
        if (strlen(file_text) != len) {
            fprintf(stderr, "modserve-run: %s: the prompt file contains a NUL byte\n",
                    a.prompt_file);
            free(file_text);
            return 1;
        }
        user_text = file_text;
    }
    if (a.tokenize) {
        int rc = s_tokenize_only(&a, user_text);
        free(file_text);
        return rc;
    }

    /* images are read before the (slower) model load so a bad path fails fast */
    ms_image_bytes images[MS_MAX_IMAGES_PER_PROMPT];
    uint8_t *image_data[MS_MAX_IMAGES_PER_PROMPT] = {0};
    int rc = 1;
    ms_engine *e = NULL;
    int32_t *prompt = NULL;
    for (int i = 0; i < a.n_images; i++) {
        size_t len = 0;
        image_data[i] =
            ms_read_file(a.images[i], MS_IMAGE_MAX_BYTES_DEFAULT, &len, err, sizeof(err));
        if (!image_data[i]) {
            fprintf(stderr, "modserve-run: image %d: %s\n", i, err);
            goto done;
        }
        images[i] = (ms_image_bytes){.data = image_data[i], .len = len};
    }

    run_progress prog = {.label = s_basename(a.model),
                         .tty = isatty(STDERR_FILENO) == 1,
                         .shown = -1.0f,
                         .quiet = a.quiet};
    ms_engine_params ep;
    ms_engine_params_default(&ep);
    ep.lm_path = a.model;
    ep.mmproj_path = a.mmproj;
    if (a.backend) ep.backend = a.backend;
    ep.n_threads = a.n_threads;
    ep.kv_max_tokens = a.kv_tokens;
    ep.progress = s_on_progress;
    ep.progress_user = &prog;
    double t0 = ms_now_s();
    e = ms_engine_new(&ep, err, sizeof(err));
    if (e)
        s_on_progress("weights", 1.0f, &prog); /* the engine may skip stages: end at 100% */
    else if (prog.tty && prog.shown >= 0.0f && !a.quiet)
        fputc('\n', stderr);
    if (!e) {
        fprintf(stderr, "modserve-run: %s\n", err);
        goto done;
    }
    double t_load_ms = 1000.0 * (ms_now_s() - t0);

    const ms_lm *lm = ms_engine_lm(e);
    int n_prompt = 0;
    ms_chat_template t;
    if (s_build_prompt(&a, ms_engine_tokenizer(e), lm->chat_template, user_text, &prompt, &n_prompt,
                       &t, err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve-run: prompt: %s\n", err);
        goto done;
    }

    signal(SIGINT, s_on_sigint);
    run_stream st = {0};
    ms_generate_result res;
    memset(&res, 0, sizeof(res));
    if (ms_engine_generate(e, prompt, n_prompt, images, a.n_images, &a.sp, s_on_token, &st, &res,
                           err, sizeof(err)) != 0) {
        if (st.any) fputc('\n', stdout);
        fprintf(stderr, "modserve-run: %s\n", err);
        goto done;
    }
    fputc('\n', stdout);
    fflush(stdout);
    if (a.ids) {
        fprintf(stderr, "ids:");
        for (int i = 0; i < res.n_generated; i++)
            fprintf(stderr, " %" PRId32, res.tokens[i]);
        fprintf(stderr, "\n");
    }
    if (!a.quiet) {
        int n_img_tok = a.n_images * ms_engine_n_image_tokens(e);
        fprintf(stderr,
                "\nmodserve-run: template %s, prompt %d rows (%d images), generated %d tokens, "
                "finish: %s, seed %" PRIu64 "\n",
                ms_chat_template_name(t), res.n_prompt, a.n_images, res.n_generated,
                s_finish_name(res.finish), a.sp.seed);
        fprintf(stderr, "  load       %9.2f ms\n", t_load_ms);
        if (a.n_images > 0) {
            fprintf(stderr, "  preprocess %9.2f ms  (%.2f ms/image)\n", res.t_preprocess_ms,
                    res.t_preprocess_ms / a.n_images);
            fprintf(stderr, "  encode     %9.2f ms  (%.2f ms/image, %d image tokens)\n",
                    res.t_encode_ms + res.t_project_ms,
                    (res.t_encode_ms + res.t_project_ms) / a.n_images, n_img_tok);
        }
        fprintf(stderr, "  prefill    %9.2f ms  (%d rows, %.1f tokens/s)\n", res.t_prefill_ms,
                res.n_prompt, s_rate(res.n_prompt, res.t_prefill_ms));
        int n_dec =
            res.n_generated > 0 ? res.n_generated - 1 : 0; /* the first comes from prefill */
        fprintf(stderr, "  decode     %9.2f ms  (%d steps, %.1f tokens/s)\n", res.t_decode_ms,
                n_dec, s_rate(n_dec, res.t_decode_ms));
    }
    rc = (res.finish == MS_FINISH_CANCEL && res.n_generated == 0) ? 130 : 0;
    ms_generate_result_fini(&res);

done:
    free(prompt);
    ms_engine_destroy(&e);
    for (int i = 0; i < a.n_images; i++)
        free(image_data[i]);
    free(file_text);
    return rc;
}
