/* test_tokenizer.c — the tokenizer against Hugging Face `tokenizers`.
 *
 * tests/data/tokenizer/<name>.jsonl hold {"text", "ids"} cases written by
 * tools/tokenizer_cases.py with Hugging Face tokenizers (see its header for how
 * each reference tokenizer is set up to match llama.cpp). Every case must
 * encode to exactly the same ids. The vocabularies come from
 * ../shared/data/tokenizers via ms_vocab_load_json.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ms_common.h"
#include "ms_test.h"
#include "tokenizer.h"

#define MAX_SHOWN_MISMATCHES 5
#define MIN_ENCODE_MB_S      1.0  /* a floor far below the measured speed: catches pathologies */
#define SPEED_TEXT_BYTES     (4u << 20)

typedef struct {
    char *text;   /* NUL-terminated, no NULs inside */
    size_t len;
    int32_t *ids; /* expected */
    int n;
} tcase;

typedef struct {
    tcase *c;
    int n;
} tcases;

static tcases load_cases(const char *name) {
    char file[256], err[MS_ERR_SIZE];
    snprintf(file, sizeof file, "tests/data/tokenizer/%s.jsonl", name);
    size_t len;
    char *buf = (char *)ms_read_file(ms_test_path(ms_test_source_dir(), file), 64u << 20, &len, err, sizeof err);
    cr_assert(buf, "%s", err);
    tcases cs = {0};
    int cap = 0;
    for (char *line = buf, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        cr_assert(nl, "unterminated line in %s", file);
        *nl = 0;
        cJSON *j = cJSON_Parse(line);
        cr_assert(j, "bad JSON line in %s", file);
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids");
        cr_assert(cJSON_IsString(text) && cJSON_IsArray(ids));
        if (cs.n == cap) {
            cap = cap * 2 + 64;
            cs.c = ms_xrealloc(cs.c, (size_t)cap * sizeof *cs.c);
        }
        tcase *c = &cs.c[cs.n++];
        c->text = ms_xstrdup(text->valuestring);
        c->len = strlen(c->text);
        c->n = cJSON_GetArraySize(ids);
        c->ids = ms_xmalloc(((size_t)c->n + 1) * sizeof *c->ids);
        int k = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, ids) c->ids[k++] = (int32_t)e->valuedouble;
        cJSON_Delete(j);
    }
    free(buf);
    return cs;
}

static void free_cases(tcases *cs) {
    for (int i = 0; i < cs->n; i++) {
        free(cs->c[i].text);
        free(cs->c[i].ids);
    }
    free(cs->c);
}

static void load_vocab(const char *file, ms_vocab *v) {
    char err[MS_ERR_SIZE];
    char path[4096];
    snprintf(path, sizeof path, "%s/data/tokenizers/%s", ms_test_shared_dir(), file);
    double t0 = ms_now_s();
    cr_assert_eq(ms_vocab_load_json(path, v, err, sizeof err), 0, "%s", err);
    fprintf(stderr, "  %s: loaded %d tokens, %d merges in %.3f s\n", file, (int)v->n_tokens,
            (int)v->n_merges, ms_now_s() - t0);
}

static ms_tokenizer *new_tok(const ms_vocab *v) {
    char err[MS_ERR_SIZE];
    double t0 = ms_now_s();
    ms_tokenizer *t = ms_tokenizer_new(v, err, sizeof err);
    cr_assert(t, "%s", err);
    fprintf(stderr, "  tokenizer (%s/%s) built in %.3f s\n", v->model, v->pre, ms_now_s() - t0);
    return t;
}

/* Encodes text; returns a malloc'd array and its count. */
static int32_t *encode(const ms_tokenizer *t, const char *text, size_t len, bool bos, bool special, int *n) {
    char err[MS_ERR_SIZE];
    int32_t small[4];
    int k = ms_tokenizer_encode(t, text, len, bos, special, small, 4, err, sizeof err);
    cr_assert_geq(k, 0, "%s", err);
    int32_t *ids = ms_xmalloc(((size_t)k + 1) * sizeof *ids);
    int k2 = ms_tokenizer_encode(t, text, len, bos, special, ids, k, err, sizeof err);
    cr_assert_eq(k2, k);
    if (k <= 4) cr_assert_arr_eq(ids, small, (size_t)k * sizeof *ids);
    *n = k;
    return ids;
}

static void print_ids(const char *what, const int32_t *ids, int n) {
    fprintf(stderr, "    %s:", what);
    for (int i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", (int)ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

/* Encodes every case and counts mismatches against the expected ids. */
static int compare_cases(const ms_tokenizer *t, const tcases *cs, const char *name) {
    int bad = 0;
    size_t bytes = 0;
    long n_ids = 0;
    for (int i = 0; i < cs->n; i++) {
        const tcase *c = &cs->c[i];
        int n;
        int32_t *ids = encode(t, c->text, c->len, false, true, &n);
        bytes += c->len;
        n_ids += n;
        if (n != c->n || memcmp(ids, c->ids, (size_t)n * sizeof *ids) != 0) {
            if (bad++ < MAX_SHOWN_MISMATCHES) {
                fprintf(stderr, "  %s: case %d mismatch: \"%.80s\"\n", name, i, c->text);
                print_ids("got     ", ids, n);
                print_ids("expected", c->ids, c->n);
            }
        }
        free(ids);
    }
    fprintf(stderr, "  %s: %d cases (%zu bytes, %ld ids), %d mismatches\n", name, cs->n, bytes, n_ids, bad);
    return bad;
}

static void check_equivalence(const char *vocab_file, const char *pre, const char *cases) {
    ms_vocab v;
    load_vocab(vocab_file, &v);
    if (pre) snprintf(v.pre, sizeof v.pre, "%s", pre);
    ms_tokenizer *t = new_tok(&v);
    tcases cs = load_cases(cases);
    cr_assert_geq(cs.n, 400);
    int bad = compare_cases(t, &cs, cases);
    cr_expect_eq(bad, 0, "%s: %d of %d cases differ from Hugging Face tokenizers", cases, bad, cs.n);
    free_cases(&cs);
    ms_tokenizer_destroy(&t);
    ms_vocab_fini(&v);
}

Test(tokenizer, hf_equivalence_llama2, .timeout = 120) {
    check_equivalence("llama2.vocab_merges.json", NULL, "llama2");
}

Test(tokenizer, hf_equivalence_llama3, .timeout = 120) {
    check_equivalence("llama3.tokenizer.json", NULL, "llama3");
}

Test(tokenizer, hf_equivalence_pre_qwen2, .timeout = 120) {
    check_equivalence("llama3.tokenizer.json", "qwen2", "llama3-qwen2");
}

Test(tokenizer, hf_equivalence_pre_gpt2, .timeout = 120) {
    check_equivalence("llama3.tokenizer.json", "gpt-2", "llama3-gpt2");
}

Test(tokenizer, hf_equivalence_pre_default, .timeout = 120) {
    check_equivalence("llama3.tokenizer.json", "default", "llama3-default");
}

Test(tokenizer, json_vocab_fields, .timeout = 60) {
    ms_vocab v;
    load_vocab("llama3.tokenizer.json", &v);
    cr_expect_str_eq(v.model, "gpt2");
    cr_expect_str_eq(v.pre, "llama-bpe");
    cr_expect_eq(v.n_tokens, 128256);
    cr_expect_eq(v.n_merges, 280147);
    cr_expect_eq(v.bos_id, 128000);
    cr_expect_eq(v.eos_id, 128001);
    cr_expect_eq(v.eot_id, 128009);
    cr_expect(v.add_bos);
    cr_expect_eq(v.types[128009], MS_TOKEN_CONTROL);
    cr_expect_eq(v.types[1000], MS_TOKEN_NORMAL);
    cr_expect_str_eq(v.tokens[128009], "<|eot_id|>");
    ms_vocab_fini(&v);
    cr_expect_eq(v.tokens, NULL);

    load_vocab("llama2.vocab_merges.json", &v);
    cr_expect_str_eq(v.model, "llama");
    cr_expect_eq(v.n_tokens, 32000);
    cr_expect_eq(v.n_merges, 0, "SPM vocabularies carry scores, not merges");
    cr_expect_eq(v.unk_id, 0);
    cr_expect_eq(v.bos_id, 1);
    cr_expect_eq(v.eos_id, 2);
    cr_expect(v.add_bos && v.add_space_prefix);
    cr_expect_eq(v.types[0], MS_TOKEN_UNKNOWN);
    cr_expect_eq(v.types[1], MS_TOKEN_CONTROL);
    cr_expect_eq(v.types[3 + 0x41], MS_TOKEN_BYTE);
    cr_expect_str_eq(v.tokens[3 + 0x41], "<0x41>");
    cr_expect_eq(v.types[260], MS_TOKEN_NORMAL);
    cr_expect(v.scores[260] > v.scores[1000], "'▁t' (first merge) outranks later tokens");
    ms_vocab_fini(&v);
}

Test(tokenizer, json_errors, .timeout = 30) {
    char err[MS_ERR_SIZE] = "";
    ms_vocab v;
    cr_expect_eq(ms_vocab_load_json("/nonexistent/tokenizer.json", &v, err, sizeof err), -1);
    cr_expect(strstr(err, "/nonexistent/tokenizer.json"), "%s", err);
    char path[] = "/tmp/ms_tok_json_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char *bad[] = {
        "{not json",
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -5}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [3]}, "
        "\"decoder\": {\"type\": \"ByteLevel\"}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
        "{\"vocab\": [], \"merges\": []}",
        "[1, 2, 3]",
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(bad); i++) {
        cr_assert_eq(ftruncate(fd, 0), 0);
        cr_assert_eq(pwrite(fd, bad[i], strlen(bad[i]), 0), (ssize_t)strlen(bad[i]));
        err[0] = 0;
        cr_expect_eq(ms_vocab_load_json(path, &v, err, sizeof err), -1, "case %zu accepted", i);
        cr_expect(err[0], "case %zu: no message", i);
        fprintf(stderr, "  bad json %zu: %s\n", i, err);
    }
    close(fd);
    unlink(path);
}

Test(tokenizer, new_rejects_bad_vocab, .timeout = 30) {
    char *toks[] = {"a", "b", "ab"};
    int32_t types[] = {1, 1, 1};
    char *merges[] = {"a b"};
    ms_vocab v = {.model = "gpt2", .pre = "llama-bpe", .n_tokens = 3, .tokens = toks, .types = types,
                  .n_merges = 1, .merges = merges, .bos_id = -1, .eos_id = -1, .eot_id = -1,
                  .unk_id = -1, .pad_id = -1};
    char err[MS_ERR_SIZE];
    ms_tokenizer *t = ms_tokenizer_new(&v, err, sizeof err);
    cr_assert(t, "%s", err);
    int n;
    int32_t *ids = encode(t, "ab", 2, true, true, &n);
    cr_expect(n == 1 && ids[0] == 2, "a tiny vocabulary merges 'a b'");
    free(ids);
    ms_tokenizer_destroy(&t);
    cr_expect_eq(t, NULL);

    ms_vocab w = v;
    snprintf(w.model, sizeof w.model, "bert");
    cr_expect_eq(ms_tokenizer_new(&w, err, sizeof err), NULL);
    cr_expect(strstr(err, "bert"), "%s", err);
    w = v;
    snprintf(w.pre, sizeof w.pre, "made-up");
    cr_expect_eq(ms_tokenizer_new(&w, err, sizeof err), NULL);
    cr_expect(strstr(err, "made-up"), "%s", err);
    w = v;
    w.eos_id = 3;
    cr_expect_eq(ms_tokenizer_new(&w, err, sizeof err), NULL);
    cr_expect(strstr(err, "eos"), "%s", err);
    w = v;
    int32_t bad_types[] = {1, 9, 1};
    w.types = bad_types;
    cr_expect_eq(ms_tokenizer_new(&w, err, sizeof err), NULL);
    cr_expect(strstr(err, "type"), "%s", err);
}

Test(tokenizer, special_tokens, .timeout = 60) {
    ms_vocab v;
    load_vocab("llama3.tokenizer.json", &v);
    ms_tokenizer *t = new_tok(&v);
    const char *s = "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>";
    int n;
    int32_t *ids = encode(t, s, strlen(s), true, true, &n);
    const int32_t want[] = {128000, 128006, 882, 128007, 271, 13347, 0, 128009};
    cr_assert_eq(n, (int)MS_ARRAY_LEN(want));
    cr_expect_arr_eq(ids, want, sizeof want);
    free(ids);
    /* without parse_special the control strings are plain text */
    ids = encode(t, s, strlen(s), false, false, &n);
    cr_expect_gt(n, 8);
    for (int i = 0; i < n; i++) cr_expect_lt(ids[i], 128000, "control token %d parsed", (int)ids[i]);
    free(ids);
    cr_expect_eq(ms_tokenizer_find(t, "<|eot_id|>"), 128009);
    cr_expect_eq(ms_tokenizer_find(t, "no such token"), -1);
    cr_expect(ms_tokenizer_is_eog(t, 128009) && ms_tokenizer_is_eog(t, 128001));
    cr_expect(!ms_tokenizer_is_eog(t, 128000) && !ms_tokenizer_is_eog(t, -1));
    /* cap smaller than the count: the total is still returned */
    int32_t two[2] = {-7, -7};
    char err[MS_ERR_SIZE];
    cr_expect_eq(ms_tokenizer_encode(t, s, strlen(s), true, true, two, 2, err, sizeof err), 8);
    cr_expect(two[0] == 128000 && two[1] == 128006);
    cr_expect_eq(ms_tokenizer_encode(t, NULL, 0, false, true, NULL, 0, err, sizeof err), 0);
    ms_tokenizer_destroy(&t);
    ms_vocab_fini(&v);

    load_vocab("llama2.vocab_merges.json", &v);
    t = new_tok(&v);
    s = "<s>Hi</s> there";
    ids = encode(t, s, strlen(s), true, true, &n);
    /* bos, <s>, "▁Hi", </s>, "▁▁there" (a space is prefixed after a special token) */
    cr_assert_geq(n, 4);
    cr_expect_eq(ids[0], 1);
    cr_expect_eq(ids[1], 1);
    cr_expect_eq(ids[2], ms_tokenizer_find(t, "\xE2\x96\x81Hi"));
    cr_expect_eq(ids[3], 2);
    free(ids);
    ids = encode(t, s, strlen(s), false, false, &n);
    for (int i = 0; i < n; i++) cr_expect(ids[i] != 1 && ids[i] != 2);
    free(ids);
    ms_tokenizer_destroy(&t);
    ms_vocab_fini(&v);
}

Test(tokenizer, pieces, .timeout = 60) {
    ms_vocab v;
    load_vocab("llama2.vocab_merges.json", &v);
    ms_tokenizer *t = new_tok(&v);
    char out[64];
    int n = ms_tokenizer_piece(t, ms_tokenizer_find(t, "<0x41>"), false, out, sizeof out);
    cr_expect(n == 1 && out[0] == 'A');
    n = ms_tokenizer_piece(t, ms_tokenizer_find(t, "\xE2\x96\x81Hello"), false, out, sizeof out);
    cr_expect(n == 6 && memcmp(out, " Hello", 6) == 0);
    cr_expect_eq(ms_tokenizer_piece(t, 1, false, out, sizeof out), 0);
    n = ms_tokenizer_piece(t, 1, true, out, sizeof out);
    cr_expect(n == 3 && memcmp(out, "<s>", 3) == 0);
    cr_expect_eq(ms_tokenizer_piece(t, -1, true, out, sizeof out), 0);
    cr_expect_eq(ms_tokenizer_piece(t, 32000, true, out, sizeof out), 0);
    cr_expect_eq(ms_tokenizer_piece(t, ms_tokenizer_find(t, "\xE2\x96\x81Hello"), false, NULL, 0), 6);
    cr_expect_eq(ms_tokenizer_piece(t, ms_tokenizer_find(t, "\xE2\x96\x81Hello"), false, out, 2), 6);
    ms_tokenizer_destroy(&t);
    ms_vocab_fini(&v);

    load_vocab("llama3.tokenizer.json", &v);
    t = new_tok(&v);
    n = ms_tokenizer_piece(t, ms_tokenizer_find(t, "\xC4\xA0world"), false, out, sizeof out); /* "Ġworld" */
    cr_expect(n == 6 && memcmp(out, " world", 6) == 0);
    n = ms_tokenizer_piece(t, ms_tokenizer_find(t, "\xC4\x8A"), false, out, sizeof out); /* "Ċ" */
    cr_expect(n == 1 && out[0] == '\n');
    ms_tokenizer_destroy(&t);
    ms_vocab_fini(&v);
}

static bool valid_utf8(const char *s, int n) {
    for (int i = 0; i < n;) {
        uint8_t b = (uint8_t)s[i];
        int k = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) return false;
        for (int j = 1; j < k; j++)
            if (((uint8_t)s[i + j] & 0xC0) != 0x80) return false;
        i += k;
    }
    return true;
}

/* Streams ids through ms_detok; every chunk must be valid UTF-8. Returns the text. */
static char *detok_all(const ms_tokenizer *t, const int32_t *ids, int n, size_t *len) {
    ms_detok d;
    ms_detok_init(&d, t, false);
    size_t cap = 256, used = 0;
    char *text = ms_xmalloc(cap);
    char chunk[1024];
    for (int i = 0; i <= n; i++) {
        int k = i < n ? ms_detok_push(&d, ids[i], chunk, sizeof chunk) : ms_detok_flush(&d, chunk, sizeof chunk);
        cr_assert(valid_utf8(chunk, k), "detok chunk %d is not valid UTF-8", i);
        cr_assert_eq(chunk[k], 0);
        if (used + (size_t)k + 1 > cap) {
            cap = 2 * (used + (size_t)k + 1);
            text = ms_xrealloc(text, cap);
        }
        memcpy(text + used, chunk, (size_t)k);
        used += (size_t)k;
    }
    text[used] = 0;
    *len = used;
    return text;
}

/* skip_spm_space: skip texts holding U+2581 itself, which an SPM vocabulary
 * cannot tell from a space (llama.cpp decodes it as a space too). */
static void check_round_trip(const char *vocab_file, const char *cases, bool skip_spm_space) {
    ms_vocab v;
    load_vocab(vocab_file, &v);
    ms_tokenizer *t = new_tok(&v);
    tcases cs = load_cases(cases);
    int bad = 0, skipped = 0;
    for (int i = 0; i < cs.n; i++) {
        if (skip_spm_space && strstr(cs.c[i].text, "\xE2\x96\x81")) {
            skipped++;
            continue;
        }
        int n;
        int32_t *ids = encode(t, cs.c[i].text, cs.c[i].len, true, false, &n);
        size_t len;
        char *text = detok_all(t, ids, n, &len);
        if (len != cs.c[i].len || memcmp(text, cs.c[i].text, len) != 0) {
            if (bad++ < MAX_SHOWN_MISMATCHES)
                fprintf(stderr, "  round trip %d: \"%.60s\" -> \"%.60s\"\n", i, cs.c[i].text, text);
        }
        free(text);
        free(ids);
    }
    fprintf(stderr, "  %s: %d round trips (%d skipped), %d differ\n", cases, cs.n - skipped, skipped, bad);
    cr_expect_eq(bad, 0);
    free_cases(&cs);
    ms_tokenizer_destroy(&t);
    ms_vocab_fini(&v);
}

Test(tokenizer, round_trip_llama3, .timeout = 120) { check_round_trip("llama3.tokenizer.json", "llama3", false); }

/* llama2: encoding adds a leading space, the detokenizer drops it again. */
Test(tokenizer, round_trip_llama2, .timeout = 120) { check_round_trip("llama2.vocab_merges.json", "llama2", true); }

Test(tokenizer, detok_never_splits_utf8, .timeout = 60) {
    const char *files[] = {"llama3.tokenizer.json", "llama2.vocab_merges.json"};
    const char *s = "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 "
                    "\xF0\x9F\xA6\x80\xF0\x9F\xA4\x96 \xE4\xBD\xA0\xE5\xA5\xBD \xE0\xA4\xA8\xE0\xA4\xAE";
    for (size_t f = 0; f < MS_ARRAY_LEN(files); f++) {
        ms_vocab v;
        load_vocab(files[f], &v);
        ms_tokenizer *t = new_tok(&v);
        int n;
        int32_t *ids = encode(t, s, strlen(s), false, false, &n);
        /* the emoji are split into byte tokens: some piece must be an incomplete character */
        int partial = 0;
        for (int i = 0; i < n; i++) {
            char p[64];
            int k = ms_tokenizer_piece(t, ids[i], false, p, sizeof p);
            partial += !valid_utf8(p, k);
        }
        cr_expect_gt(partial, 0, "%s: no token splits a character; the test proves nothing", files[f]);
        size_t len;
        char *text = detok_all(t, ids, n, &len);
        const char *want = s;
        cr_expect(len == strlen(want) && memcmp(text, want, len) == 0, "%s: \"%s\"", files[f], text);
        free(text);
        /* a truncated stream ends in U+FFFD, never in half a character */
        ms_detok d;
        ms_detok_init(&d, t, false);
        char chunk[512];
        int k = 0;
        for (int i = 0; i < n; i++) {
            k = ms_detok_push(&d, ids[i], chunk, sizeof chunk);
            cr_expect(valid_utf8(chunk, k));
            char p[64];
            int pk = ms_tokenizer_piece(t, ids[i], false, p, sizeof p);
            if (!valid_utf8(p, pk) && d.n_pending) break;
        }
        k = ms_detok_flush(&d, chunk, sizeof chunk);
        cr_expect(k == 3 && memcmp(chunk, "\xEF\xBF\xBD", 3) == 0);
        free(ids);
        ms_tokenizer_destroy(&t);
        ms_vocab_fini(&v);
    }
}

Test(tokenizer, invalid_utf8_is_bytes, .timeout = 60) {
    ms_vocab v;
    load_vocab("llama3.tokenizer.json", &v);
    ms_tokenizer *t = new_tok(&v);
    const char s[] = "ok\xFF\xC3(\xE2\x82 \x80\x80 end\xF0\x9F";
    int n;
    int32_t *ids = encode(t, s, sizeof s - 1, false, true, &n);
    char out[256];
    int len = 0;
    for (int i = 0; i < n; i++) len += ms_tokenizer_piece(t, ids[i], false, out + len, (int)sizeof out - len);
    cr_expect(len == (int)sizeof s - 1 && memcmp(out, s, sizeof s - 1) == 0, "invalid bytes round-trip");
    free(ids);
    ms_tokenizer_destroy(&t);
    ms_vocab_fini(&v);
}

static void check_speed(const char *vocab_file, const char *cases) {
    ms_vocab v;
    load_vocab(vocab_file, &v);
    ms_tokenizer *t = new_tok(&v);
    tcases cs = load_cases(cases);
    char *text = ms_xmalloc(SPEED_TEXT_BYTES + 1);
    size_t len = 0;
    for (int i = 0; len < SPEED_TEXT_BYTES; i = (i + 1) % cs.n) {
        size_t k = MS_MIN(cs.c[i].len, SPEED_TEXT_BYTES - len);
        memcpy(text + len, cs.c[i].text, k);
        len += k;
        if (len < SPEED_TEXT_BYTES) text[len++] = '\n';
    }
    char err[MS_ERR_SIZE];
    double t0 = ms_now_s();
    int n = ms_tokenizer_encode(t, text, len, true, true, NULL, 0, err, sizeof err);
    double dt = ms_now_s() - t0;
    cr_assert_geq(n, 0, "%s", err);
    double mbs = (double)len / 1e6 / dt;
    fprintf(stderr, "  %s: encoded %.1f MB of mixed text into %d tokens in %.3f s: %.1f MB/s\n", cases,
            (double)len / 1e6, n, dt, mbs);
    cr_expect_geq(mbs, MIN_ENCODE_MB_S);
    free(text);
    free_cases(&cs);
    ms_tokenizer_destroy(&t);
    ms_vocab_fini(&v);
}

Test(tokenizer, speed_llama3, .timeout = 120) { check_speed("llama3.tokenizer.json", "llama3"); }
Test(tokenizer, speed_llama2, .timeout = 120) { check_speed("llama2.vocab_merges.json", "llama2"); }

/* ---- GGUF ---------------------------------------------------------------------- */

static char *tmp_gguf_path(void) {
    static char path[64];
    snprintf(path, sizeof path, "/tmp/ms_tok_%d.gguf", (int)getpid());
    return path;
}

static ms_gguf *write_and_open(ms_gguf_writer *w) {
    char err[MS_ERR_SIZE];
    const char *path = tmp_gguf_path();
    cr_assert_eq(ms_gguf_writer_write(w, path, err, sizeof err), 0, "%s", err);
    ms_gguf *g = ms_gguf_open(path, err, sizeof err);
    cr_assert(g, "%s", err);
    unlink(path); /* the mapping stays valid */
    return g;
}

static void check_gguf_round_trip(const char *vocab_file, const char *cases) {
    ms_vocab v;
    load_vocab(vocab_file, &v);
    ms_gguf_writer *w = ms_gguf_writer_new();
    ms_vocab_to_gguf(&v, w);
    ms_gguf *g = write_and_open(w);
    ms_gguf_writer_destroy(&w);

    char err[MS_ERR_SIZE];
    ms_vocab r;
    cr_assert_eq(ms_vocab_from_gguf(g, &r, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(r.model, v.model);
    cr_expect_str_eq(r.pre, v.pre);
    cr_assert_eq(r.n_tokens, v.n_tokens);
    cr_assert_eq(r.n_merges, v.n_merges);
    for (int32_t i = 0; i < v.n_tokens; i++) {
        cr_assert_str_eq(r.tokens[i], v.tokens[i]);
        cr_assert_eq(r.types[i], v.types[i]);
        if (v.scores) cr_assert_eq(r.scores[i], v.scores[i]);
    }
    cr_expect_eq(!r.scores, !v.scores);
    for (int32_t i = 0; i < v.n_merges; i++) cr_assert_str_eq(r.merges[i], v.merges[i]);
    cr_expect(r.bos_id == v.bos_id && r.eos_id == v.eos_id && r.eot_id == v.eot_id &&
              r.unk_id == v.unk_id && r.pad_id == v.pad_id);
    cr_expect(r.add_bos == v.add_bos && r.add_space_prefix == v.add_space_prefix);
    ms_vocab_fini(&r);

    double t0 = ms_now_s();
    ms_tokenizer *t = ms_tokenizer_from_gguf(g, err, sizeof err);
    cr_assert(t, "%s", err);
    fprintf(stderr, "  %s: tokenizer from GGUF in %.3f s\n", vocab_file, ms_now_s() - t0);
    tcases cs = load_cases(cases);
    cr_expect_eq(compare_cases(t, &cs, cases), 0);
    free_cases(&cs);
    ms_tokenizer_destroy(&t);
    ms_gguf_close(&g);
    ms_vocab_fini(&v);
}

Test(tokenizer, gguf_round_trip_llama2, .timeout = 120) {
    check_gguf_round_trip("llama2.vocab_merges.json", "llama2");
}

Test(tokenizer, gguf_round_trip_llama3, .timeout = 120) {
    check_gguf_round_trip("llama3.tokenizer.json", "llama3");
}

/* A small gpt2 vocabulary in a writer, for the malformed variants below. */
static ms_gguf_writer *small_vocab_writer(void) {
    static const char *toks[] = {"a", "b", "ab", "<|end|>"};
    static const int32_t types[] = {1, 1, 1, 3};
    static const char *merges[] = {"a b"};
    ms_gguf_writer *w = ms_gguf_writer_new();
    ms_gguf_set_str(w, "tokenizer.ggml.model", "gpt2");
    ms_gguf_set_str(w, "tokenizer.ggml.pre", "qwen2");
    ms_gguf_set_arr(w, "tokenizer.ggml.tokens", MS_GGUF_STRING, toks, 4);
    ms_gguf_set_arr(w, "tokenizer.ggml.token_type", MS_GGUF_INT32, types, 4);
    ms_gguf_set_arr(w, "tokenizer.ggml.merges", MS_GGUF_STRING, merges, 1);
    ms_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 3);
    return w;
}

static void expect_gguf_error(ms_gguf_writer *w, const char *needle) {
    ms_gguf *g = write_and_open(w);
    char err[MS_ERR_SIZE] = "";
    ms_tokenizer *t = ms_tokenizer_from_gguf(g, err, sizeof err);
    cr_expect_eq(t, NULL, "accepted a vocabulary that should fail with '%s'", needle);
    cr_expect(strstr(err, needle), "message '%s' lacks '%s'", err, needle);
    fprintf(stderr, "  malformed vocab: %s\n", err);
    ms_tokenizer_destroy(&t);
    ms_gguf_close(&g);
    ms_gguf_writer_destroy(&w);
}

Test(tokenizer, gguf_validation, .timeout = 60) {
    /* the well-formed one loads and merges */
    ms_gguf_writer *w = small_vocab_writer();
    ms_gguf *g = write_and_open(w);
    ms_gguf_writer_destroy(&w);
    char err[MS_ERR_SIZE];
    ms_tokenizer *t = ms_tokenizer_from_gguf(g, err, sizeof err);
    cr_assert(t, "%s", err);
    cr_expect_eq(ms_tokenizer_vocab(t)->eot_id, 3, "<|end|> is found as end of turn");
    cr_expect(!ms_tokenizer_vocab(t)->add_bos);
    int n;
    int32_t *ids = encode(t, "ab<|end|>", 9, true, true, &n);
    cr_expect(n == 2 && ids[0] == 2 && ids[1] == 3);
    free(ids);
    ms_tokenizer_destroy(&t);
    ms_gguf_close(&g);

    static const float scores3[] = {0, 0, 0};
    w = small_vocab_writer();
    ms_gguf_set_arr(w, "tokenizer.ggml.scores", MS_GGUF_FLOAT32, scores3, 3);
    expect_gguf_error(w, "tokenizer.ggml.scores");

    static const int32_t types3[] = {1, 1, 1};
    w = small_vocab_writer();
    ms_gguf_set_arr(w, "tokenizer.ggml.token_type", MS_GGUF_INT32, types3, 3);
    expect_gguf_error(w, "tokenizer.ggml.token_type");

    static const int32_t types_bad[] = {1, 1, 42, 3};
    w = small_vocab_writer();
    ms_gguf_set_arr(w, "tokenizer.ggml.token_type", MS_GGUF_INT32, types_bad, 4);
    expect_gguf_error(w, "tokenizer.ggml.token_type[2]");

    w = small_vocab_writer();
    ms_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 4);
    expect_gguf_error(w, "tokenizer.ggml.bos_token_id");

    w = small_vocab_writer();
    ms_gguf_set_str(w, "tokenizer.ggml.eot_token_id", "3");
    expect_gguf_error(w, "tokenizer.ggml.eot_token_id");

    w = small_vocab_writer();
    ms_gguf_set_str(w, "tokenizer.ggml.model", "bert");
    expect_gguf_error(w, "bert");

    w = small_vocab_writer();
    ms_gguf_set_str(w, "tokenizer.ggml.pre", "unheard-of");
    expect_gguf_error(w, "unheard-of");

    w = small_vocab_writer();
    ms_gguf_set_arr(w, "tokenizer.ggml.tokens", MS_GGUF_INT32, types3, 3);
    expect_gguf_error(w, "tokenizer.ggml.tokens");

    /* no merges in a gpt2 vocabulary */
    static const char *toks[] = {"a"};
    w = ms_gguf_writer_new();
    ms_gguf_set_str(w, "tokenizer.ggml.model", "gpt2");
    ms_gguf_set_arr(w, "tokenizer.ggml.tokens", MS_GGUF_STRING, toks, 1);
    expect_gguf_error(w, "tokenizer.ggml.merges");

    /* no tokenizer at all */
    w = ms_gguf_writer_new();
    ms_gguf_set_u32(w, "general.alignment", 32);
    expect_gguf_error(w, "tokenizer.ggml.model");
}

/* A Hugging Face tokenizer.json in SentencePiece style (what HF's Llama
 * converter writes: Prepend/Replace normalizers, byte_fallback, merges as
 * pairs), built from the llama2 vocabulary, must load as an SPM vocabulary
 * that tokenizes like the original. */
Test(tokenizer, hf_json_spm_style, .timeout = 120) {
    char err[MS_ERR_SIZE], src[4096];
    snprintf(src, sizeof src, "%s/data/tokenizers/llama2.vocab_merges.json", ms_test_shared_dir());
    size_t len;
    char *buf = (char *)ms_read_file(src, 64u << 20, &len, err, sizeof err);
    cr_assert(buf, "%s", err);
    cJSON *in = cJSON_Parse(buf);
    free(buf);
    cr_assert(in);
    cJSON *root = cJSON_CreateObject(), *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    cJSON *merges = cJSON_CreateArray(), *added = cJSON_CreateArray();
    int id = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(in, "vocab")) {
        cJSON_AddNumberToObject(vocab, e->valuestring, id);
        if (id < 3) {
            cJSON *a = cJSON_CreateObject();
            cJSON_AddNumberToObject(a, "id", id);
            cJSON_AddStringToObject(a, "content", e->valuestring);
            cJSON_AddBoolToObject(a, "special", true);
            cJSON_AddItemToArray(added, a);
        }
        id++;
    }
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(in, "merges")) {
        char *sp = strchr(e->valuestring, ' ');
        cr_assert(sp);
        *sp = 0;
        const char *pair[2] = {e->valuestring, sp + 1};
        cJSON_AddItemToArray(merges, cJSON_CreateStringArray(pair, 2));
    }
    cJSON_Delete(in);
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddBoolToObject(model, "byte_fallback", true);
    cJSON_AddStringToObject(model, "unk_token", "<unk>");
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    cJSON *norm = cJSON_Parse("{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": "
                              "\"\\u2581\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, "
                              "\"content\": \"\\u2581\"}]}");
    cJSON *dec = cJSON_Parse("{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\"}, {\"type\": "
                             "\"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\"}]}");
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON_AddItemToObject(root, "normalizer", norm);
    cJSON_AddNullToObject(root, "pre_tokenizer");
    cJSON_AddItemToObject(root, "decoder", dec);
    cJSON_AddItemToObject(root, "model", model);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    char path[] = "/tmp/ms_tok_hf_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    free(text);

    ms_vocab v;
    int rc = ms_vocab_load_json(path, &v, err, sizeof err);
    unlink(path);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect_str_eq(v.model, "llama");
    cr_expect(v.add_space_prefix && v.add_bos);
    cr_expect(v.unk_id == 0 && v.bos_id == 1 && v.eos_id == 2);
    cr_expect(v.types[0] == MS_TOKEN_UNKNOWN && v.types[1] == MS_TOKEN_CONTROL && v.types[3] == MS_TOKEN_BYTE);
    ms_tokenizer *t = new_tok(&v);
    tcases cs = load_cases("llama2");
    cr_expect_eq(compare_cases(t, &cs, "llama2 (HF JSON)"), 0);
    free_cases(&cs);
    ms_tokenizer_destroy(&t);
    ms_vocab_fini(&v);
}
