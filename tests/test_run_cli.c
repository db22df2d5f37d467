/* test_run_cli.c — modserve-run as a process ($MS_BIN_DIR/modserve-run) on
 * the generated tiny models: exit codes and messages for bad arguments and
 * files, --tokenize against the library's own prompt assembly, greedy
 * generation against ms_engine_generate, an image prompt. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chat.h"
#include "engine.h"
#include "ms_common.h"
#include "ms_test.h"

#define S_MAX_ARGS   32
#define S_MAX_OUTPUT (1 << 20)

typedef struct s_result {
    int status; /* exit status, or 128 + signal */
    char *out;  /* stdout, NUL-terminated, owned */
    char *err;  /* stderr, NUL-terminated, owned */
} s_result;

static void s_result_fini(s_result *r) {
    free(r->out);
    free(r->err);
}

static char *s_slurp(int fd) {
    char *buf = ms_xmalloc(S_MAX_OUTPUT + 1);
    size_t n = 0;
    lseek(fd, 0, SEEK_SET);
    for (;;) {
        ssize_t got = read(fd, buf + n, S_MAX_OUTPUT - n);
        if (got <= 0) break;
        n += (size_t)got;
    }
    buf[n] = '\0';
    return buf;
}

/* Runs modserve-run with the NULL-terminated extra arguments. */
static s_result s_run(const char *const *args) {
    const char *bin = ms_test_path(ms_test_bin_dir(), "modserve-run");
    char bin_copy[4096];
    snprintf(bin_copy, sizeof(bin_copy), "%s", bin);
    cr_assert_eq(access(bin_copy, X_OK), 0, "%s is not built", bin_copy);
    char out_name[] = "/tmp/ms_run_out_XXXXXX", err_name[] = "/tmp/ms_run_err_XXXXXX";
    int out_fd = mkstemp(out_name), err_fd = mkstemp(err_name);
    cr_assert(out_fd >= 0 && err_fd >= 0);
    unlink(out_name);
    unlink(err_name);
    const char *argv[S_MAX_ARGS + 2];
    int argc = 0;
    argv[argc++] = bin_copy;
    for (int i = 0; args[i]; i++) {
        cr_assert_lt(argc, S_MAX_ARGS);
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        dup2(out_fd, STDOUT_FILENO);
        dup2(err_fd, STDERR_FILENO);
        int null_fd = open("/dev/null", O_RDONLY);
        if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
        execv(bin_copy, (char *const *)argv);
        _exit(127);
    }
    int wstatus = 0;
    cr_assert_eq(waitpid(pid, &wstatus, 0), pid);
    s_result r;
    r.status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
    r.out = s_slurp(out_fd);
    r.err = s_slurp(err_fd);
    close(out_fd);
    close(err_fd);
    return r;
}

static char s_lm[4096], s_mm[4096], s_img[4096];

static void s_paths(void) {
    snprintf(s_lm, sizeof(s_lm), "%s", ms_test_path(ms_test_models_dir(), "tiny-lm.gguf"));
    snprintf(s_mm, sizeof(s_mm), "%s", ms_test_path(ms_test_models_dir(), "tiny-mmproj.gguf"));
    snprintf(s_img, sizeof(s_img), "%s",
             ms_test_path(ms_test_source_dir(), "tests/data/images/sample.jpg"));
}

/* Expects exit status 1 and a stderr line containing word. */
static void s_expect_fail(const char *const *args, const char *word) {
    s_result r = s_run(args);
    cr_assert_eq(r.status, 1, "status %d (want 1) for '%s'; stderr: %s", r.status, word, r.err);
    cr_assert(strstr(r.err, word) != NULL, "stderr does not mention '%s': %s", word, r.err);
    cr_assert_str_eq(r.out, "", "stdout not empty on error: %s", r.out);
    s_result_fini(&r);
}

/* Parses space-separated integers; returns the count. */
static int s_parse_ids(const char *s, int32_t *ids, int cap) {
    int n = 0;
    char *end;
    for (;;) {
        while (*s == ' ')
            s++;
        if (*s == '\n' || *s == '\0') break;
        long v = strtol(s, &end, 10);
        cr_assert(end != s, "not an integer at '%s'", s);
        cr_assert_lt(n, cap);
        ids[n++] = (int32_t)v;
        s = end;
    }
    return n;
}

TestSuite(run_cli, .init = s_paths, .timeout = 120);

Test(run_cli, help) {
    const char *args[] = {"--help", NULL};
    s_result r = s_run(args);
    cr_assert_eq(r.status, 0);
    cr_assert(strstr(r.out, "usage: modserve-run") != NULL);
    cr_assert(strstr(r.out, "--tokenize") != NULL);
    s_result_fini(&r);
}

Test(run_cli, bad_arguments) {
    const char *none[] = {NULL};
    s_expect_fail(none, "-m MODEL is required");
    const char *no_prompt[] = {"-m", s_lm, NULL};
    s_expect_fail(no_prompt, "prompt is required");
    const char *unknown[] = {"-m", s_lm, "-p", "x", "--frobnicate", NULL};
    s_expect_fail(unknown, "unknown option '--frobnicate'");
    const char *missing_value[] = {"-m", s_lm, "-p", NULL};
    s_expect_fail(missing_value, "-p needs a value");
    const char *bad_n[] = {"-m", s_lm, "-p", "x", "-n", "abc", NULL};
    s_expect_fail(bad_n, "-n expects an integer");
    const char *zero_n[] = {"-m", s_lm, "-p", "x", "-n", "0", NULL};
    s_expect_fail(zero_n, "at least 1");
    const char *neg_temp[] = {"-m", s_lm, "-p", "x", "--temp", "-1", NULL};
    s_expect_fail(neg_temp, "temperature");
    const char *top_p[] = {"-m", s_lm, "-p", "x", "--top-p", "1.5", NULL};
    s_expect_fail(top_p, "top_p");
    const char *top_k[] = {"-m", s_lm, "-p", "x", "--top-k", "-3", NULL};
    s_expect_fail(top_k, "top_k");
    const char *backend[] = {"-m", s_lm, "-p", "x", "--backend", "tpu", NULL};
    s_expect_fail(backend, "unknown backend 'tpu'");
    const char *image_no_mm[] = {"-m", s_lm, "-p", "x", "--image", s_img, NULL};
    s_expect_fail(image_no_mm, "--image needs --mmproj");
    const char *tmpl[] = {"-m", s_lm, "-p", "x", "--chat-template", "jinja", "--tokenize", NULL};
    s_expect_fail(tmpl, "unknown chat template 'jinja'");
}

Test(run_cli, bad_files) {
    const char *missing[] = {"-m", "/nonexistent/model.gguf", "-p", "hi", NULL};
    s_expect_fail(missing, "/nonexistent/model.gguf");
    const char *missing_tok[] = {"-m", "/nonexistent/model.gguf", "-p", "hi", "--tokenize", NULL};
    s_expect_fail(missing_tok, "/nonexistent/model.gguf");
    /* a file that is not GGUF */
    char not_gguf[4096];
    snprintf(not_gguf, sizeof(not_gguf), "%s",
             ms_test_path(ms_test_source_dir(), "tests/test_run_cli.c"));
    const char *garbage[] = {"-m", not_gguf, "-p", "hi", "-n", "2", NULL};
    s_expect_fail(garbage, "test_run_cli.c");
    /* the mmproj given as the text model */
    const char *swapped[] = {"-m", s_mm, "-p", "hi", "-n", "2", NULL};
    s_expect_fail(swapped, "tiny-mmproj.gguf");
    const char *missing_image[] = {"-m", s_lm, "--mmproj", s_mm, "--image", "/nonexistent/a.jpg",
                                   "-p", "hi", NULL};
    s_expect_fail(missing_image, "/nonexistent/a.jpg");
    /* an image that is not an image */
    const char *bad_image[] = {"-m", s_lm, "--mmproj", s_mm, "--image", not_gguf,
                               "-p", "hi", "-n",       "2",  "-q",      NULL};
    s_expect_fail(bad_image, "image");
}

/* The library's prompt for one user message, ChatML as the tiny model says. */
static int s_library_prompt(const char *text, int n_images, int32_t *ids, int cap) {
    char msg[MS_ERR_SIZE];
    ms_gguf *g = ms_gguf_open(s_lm, msg, sizeof(msg));
    cr_assert_not_null(g, "%s", msg);
    ms_tokenizer *tok = ms_tokenizer_from_gguf(g, msg, sizeof(msg));
    cr_assert_not_null(tok, "%s", msg);
    const char *jinja = NULL;
    cr_assert_eq(ms_gguf_get_str(g, "tokenizer.chat_template", &jinja, msg, sizeof(msg)), 0, "%s",
                 msg);
    ms_chat_message m = {MS_CHAT_USER, text, n_images};
    int32_t *prompt = NULL;
    int n = 0, got_images = 0;
    cr_assert_eq(ms_chat_build_prompt(tok, ms_chat_detect(jinja), &m, 1, true, &prompt, &n,
                                      &got_images, msg, sizeof(msg)),
                 0, "%s", msg);
    cr_assert_leq(n, cap);
    memcpy(ids, prompt, (size_t)n * sizeof(int32_t));
    free(prompt);
    ms_tokenizer_destroy(&tok);
    ms_gguf_close(&g);
    return n;
}

Test(run_cli, tokenize_matches_the_library) {
    const char *text = "Hello there, what is this?";
    const char *args[] = {"-m", s_lm, "-p", text, "--tokenize", NULL};
    s_result r = s_run(args);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    cr_assert(strchr(r.out, '\n') == r.out + strlen(r.out) - 1, "not one line: %s", r.out);
    int32_t got[512], want[512];
    int n_got = s_parse_ids(r.out, got, 512);
    int n_want = s_library_prompt(text, 0, want, 512);
    cr_assert_eq(n_got, n_want, "got %d ids, expected %d: %s", n_got, n_want, r.out);
    cr_assert_eq(memcmp(got, want, (size_t)n_want * sizeof(int32_t)), 0, "ids differ: %s", r.out);
    cr_assert(strstr(r.err, "chatml") != NULL, "template not reported: %s", r.err);
    s_result_fini(&r);

    /* --raw: just the text's tokens */
    const char *raw[] = {"-m", s_lm, "-p", "abc", "--raw", "--tokenize", "-q", NULL};
    r = s_run(raw);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    int n_raw = s_parse_ids(r.out, got, 512);
    cr_assert(n_raw >= 1 && n_raw <= 4, "raw 'abc' gave %d ids: %s", n_raw, r.out);
    cr_assert_str_eq(r.err, "");
    s_result_fini(&r);
}

Test(run_cli, tokenize_places_images) {
    const char *args[] = {"-m",         s_lm,  "--image", s_img,
                          "--image",    s_img, "-p",      "Compare <image> and <image>.",
                          "--tokenize", NULL};
    s_result r = s_run(args);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    int32_t got[512], want[512];
    int n_got = s_parse_ids(r.out, got, 512);
    int n_want = s_library_prompt("Compare <image> and <image>.", 2, want, 512);
    cr_assert_eq(n_got, n_want);
    cr_assert_eq(memcmp(got, want, (size_t)n_want * sizeof(int32_t)), 0);
    int first = -1, second = -1;
    for (int i = 0; i < n_got; i++) {
        if (got[i] == MS_PROMPT_IMAGE(0)) first = i;
        if (got[i] == MS_PROMPT_IMAGE(1)) second = i;
    }
    cr_assert(first >= 0 && second > first + 1, "placeholders at %d and %d", first, second);
    s_result_fini(&r);

    /* markers that do not match the images */
    const char *mismatch[] = {"-m",         s_lm, "--image", s_img, "-p", "<image> <image>",
                              "--tokenize", NULL};
    s_expect_fail(mismatch, "2 <image> markers");
}

/* ms_engine_generate on the same prompt (greedy), for comparison. */
static int s_library_generate(const char *text, int n_max, int32_t *ids) {
    char msg[MS_ERR_SIZE];
    ms_engine_params p;
    ms_engine_params_default(&p);
    p.lm_path = s_lm;
    p.n_threads = 1;
    ms_engine *e = ms_engine_new(&p, msg, sizeof(msg));
    cr_assert_not_null(e, "%s", msg);
    ms_chat_message m = {MS_CHAT_USER, text, 0};
    int32_t *prompt = NULL;
    int n = 0, n_images = 0;
    cr_assert_eq(ms_chat_build_prompt(ms_engine_tokenizer(e),
                                      ms_chat_detect(ms_engine_lm(e)->chat_template), &m, 1, true,
                                      &prompt, &n, &n_images, msg, sizeof(msg)),
                 0, "%s", msg);
    ms_sampling_params sp;
    ms_sampling_params_default(&sp);
    sp.max_tokens = n_max;
    ms_generate_result res;
    cr_assert_eq(ms_engine_generate(e, prompt, n, NULL, 0, &sp, NULL, NULL, &res, msg, sizeof(msg)),
                 0, "%s", msg);
    int got = res.n_generated;
    memcpy(ids, res.tokens, (size_t)got * sizeof(int32_t));
    ms_generate_result_fini(&res);
    free(prompt);
    ms_engine_destroy(&e);
    return got;
}

Test(run_cli, greedy_generation_matches_the_engine) {
    const char *args[] = {"-m", s_lm, "-p", "Tell me a story", "-n", "4", "--temp", "0", "--ids",
                          "-t", "1",  NULL};
    s_result r = s_run(args);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    const char *line = strstr(r.err, "ids:");
    cr_assert_not_null(line, "no ids line: %s", r.err);
    int32_t got[64], want[64];
    int n_got = s_parse_ids(line + 4, got, 64);
    int n_want = s_library_generate("Tell me a story", 4, want);
    cr_assert(n_got >= 1 && n_got <= 4);
    cr_assert_eq(n_got, n_want);
    cr_assert_eq(memcmp(got, want, (size_t)n_got * sizeof(int32_t)), 0);
    cr_assert(strstr(r.err, "decode") != NULL && strstr(r.err, "tokens/s") != NULL,
              "no timing summary: %s", r.err);
    cr_assert(strstr(r.err, "loading tiny-lm.gguf") != NULL, "no progress line: %s", r.err);
    cr_assert_gt(strlen(r.out), 0);
    /* the same run again prints the same text */
    s_result r2 = s_run(args);
    cr_assert_eq(r2.status, 0);
    cr_assert_str_eq(r.out, r2.out);
    s_result_fini(&r);
    s_result_fini(&r2);
}

Test(run_cli, seeded_sampling_is_reproducible) {
    const char *args[] = {"-m",     s_lm,      "-p",    "Once",    "-n",   "6",       "--temp",
                          "1.2",    "--top-k", "20",    "--top-p", "0.95", "--min-p", "0.01",
                          "--seed", "42",      "--ids", "-q",      NULL};
    s_result a = s_run(args), b = s_run(args);
    cr_assert_eq(a.status, 0, "stderr: %s", a.err);
    cr_assert_eq(b.status, 0);
    cr_assert_str_eq(a.err, b.err); /* the ids line */
    cr_assert_str_eq(a.out, b.out);
    cr_assert(strncmp(a.err, "ids:", 4) == 0, "quiet run stderr: %s", a.err);
    s_result_fini(&a);
    s_result_fini(&b);
}

Test(run_cli, image_prompt) {
    const char *args[] = {
        "-m", s_lm, "--mmproj", s_mm, "--image", s_img, "-p", "Describe this image.",
        "-n", "3",  "--temp",   "0",  "-t",      "1",   NULL};
    s_result r = s_run(args);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    cr_assert(strstr(r.err, "(1 images)") != NULL, "%s", r.err);
    cr_assert(strstr(r.err, "encode") != NULL, "%s", r.err);
    s_result_fini(&r);
}

Test(run_cli, stop_string_is_not_printed) {
    /* generate greedily, then stop at a piece of what came out */
    const char *free_args[] = {"-m", s_lm, "-p", "Tell me a story", "-n", "12", "-q", NULL};
    s_result r = s_run(free_args);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    size_t len = strlen(r.out);
    if (len < 4) {
        s_result_fini(&r);
        cr_skip_test("the tiny model's answer is too short to cut");
    }
    char stop[3] = {r.out[len / 2], r.out[len / 2 + 1], 0};
    if (stop[0] == '\n' || stop[1] == '\n') {
        s_result_fini(&r);
        cr_skip_test("no printable cut point");
    }
    const char *cut = strstr(r.out, stop);
    size_t keep = (size_t)(cut - r.out);
    const char *stop_args[] = {"-m",     s_lm, "-p", "Tell me a story", "-n", "12", "-q",
                               "--stop", stop, NULL};
    s_result s = s_run(stop_args);
    cr_assert_eq(s.status, 0, "stderr: %s", s.err);
    cr_assert_eq(strlen(s.out), keep + 1, "with --stop '%s': [%s] vs [%s]", stop, s.out, r.out);
    cr_assert_eq(strncmp(s.out, r.out, keep), 0);
    s_result_fini(&r);
    s_result_fini(&s);
}
