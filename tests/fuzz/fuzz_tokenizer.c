/* fuzz_tokenizer.c — arbitrary bytes into the tokenizer.
 *
 * The first input byte picks what runs on the rest:
 *   mode 0: encode with the Llama 3 vocabulary (gpt2 / llama-bpe);
 *   mode 1: encode with the Llama 2 vocabulary (SPM);
 *   mode 2: encode with a small built-in gpt2 vocabulary under each
 *           pre-tokenizer (llama-bpe, qwen2, gpt-2, default);
 *   mode 3: decode: the rest is int32 ids (out of range ones included) fed to
 *           ms_tokenizer_piece and ms_detok with both real vocabularies.
 * Bits 2 and 3 of the first byte set parse_special and add_bos.
 * Besides not crashing, encoding must round-trip: the pieces of the ids of a
 * text are the text again (byte-level BPE always; SPM for well-formed text
 * without U+2581, plus the leading space), and ms_detok output is always valid UTF-8.
 * The real vocabularies are read once from MS_SHARED_DIR (or ../shared next
 * to the source tree); without them the built-in vocabulary stands in.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"
#include "tokenizer.h"

#define N_PRE 4

static ms_tokenizer *s_llama3, *s_llama2, *s_small[N_PRE];
static bool s_ready;

static ms_tokenizer *s_load(const char *file) {
    char path[4096], err[MS_ERR_SIZE];
    const char *dir = getenv("MS_SHARED_DIR");
    if (dir && *dir) {
        snprintf(path, sizeof path, "%s/data/tokenizers/%s", dir, file);
    } else {
        /* __FILE__ is .../<root>/tests/fuzz/fuzz_tokenizer.c; shared sits beside <root> */
        const char *src = __FILE__;
        const char *end = strstr(src, "/tests/fuzz/");
        int n = end ? (int)(end - src) : 1;
        snprintf(path, sizeof path, "%.*s/../shared/data/tokenizers/%s", n, end ? src : ".", file);
    }
    ms_vocab v;
    if (ms_vocab_load_json(path, &v, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_tokenizer: %s (using the built-in vocabulary)\n", err);
        return NULL;
    }
    ms_tokenizer *t = ms_tokenizer_new(&v, err, sizeof err);
    ms_vocab_fini(&v);
    if (!t) fprintf(stderr, "fuzz_tokenizer: %s\n", err);
    return t;
}

/* 256 byte-level tokens, a few merges and special tokens. */
static ms_tokenizer *s_small_vocab(const char *pre) {
    static const char *extra[] = {"ĠĠ", "in", "Ġt", "Ġth", "Ġthe", "er", "<|end|>", "<s>", "Ġ<"};
    static const int32_t extra_type[] = {1, 1, 1, 1, 1, 1, 3, 4, 1};
    static char *merges[] = {"Ġ Ġ", "i n", "Ġ t", "Ġt h", "Ġth e", "e r", "Ġ <"};
    ms_vocab v = {.n_tokens = 256 + (int32_t)MS_ARRAY_LEN(extra), .n_merges = (int32_t)MS_ARRAY_LEN(merges),
                  .merges = merges, .bos_id = -1, .eos_id = 262, .eot_id = -1, .unk_id = -1, .pad_id = -1};
    snprintf(v.model, sizeof v.model, "gpt2");
    snprintf(v.pre, sizeof v.pre, "%s", pre);
    v.tokens = ms_xcalloc((size_t)v.n_tokens, sizeof *v.tokens);
    v.types = ms_xcalloc((size_t)v.n_tokens, sizeof *v.types);
    int extra_cp = 0;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        unsigned cp = keep ? (unsigned)b : 256u + (unsigned)extra_cp++;
        char s[4] = {0};
        if (cp < 0x80) s[0] = (char)cp;
        else s[0] = (char)(0xC0 | (cp >> 6)), s[1] = (char)(0x80 | (cp & 0x3F));
        v.tokens[b] = ms_xstrdup(s);
        v.types[b] = MS_TOKEN_NORMAL;
    }
    for (size_t i = 0; i < MS_ARRAY_LEN(extra); i++) {
        v.tokens[256 + i] = ms_xstrdup(extra[i]);
        v.types[256 + i] = extra_type[i];
    }
    char err[MS_ERR_SIZE];
    ms_tokenizer *t = ms_tokenizer_new(&v, err, sizeof err);
    if (!t) {
        fprintf(stderr, "fuzz_tokenizer: built-in vocabulary: %s\n", err);
        abort();
    }
    v.merges = NULL;
    v.n_merges = 0;
    ms_vocab_fini(&v);
    return t;
}

static void s_init(void) {
    static const char *pres[N_PRE] = {"llama-bpe", "qwen2", "gpt-2", "default"};
    for (int i = 0; i < N_PRE; i++) s_small[i] = s_small_vocab(pres[i]);
    s_llama3 = s_load("llama3.tokenizer.json");
    s_llama2 = s_load("llama2.vocab_merges.json");
    if (!s_llama3) s_llama3 = s_small[0];
    if (!s_llama2) s_llama2 = s_small[3];
    s_ready = true;
}

static bool s_valid_utf8(const char *s, int n) {
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

/* Encodes, checks the count protocol, and (if expect != NULL) that the pieces
 * rebuild expect. */
static void s_encode(const ms_tokenizer *t, const uint8_t *data, size_t size, bool special, bool bos,
                     const char *expect, size_t expect_len) {
    char err[MS_ERR_SIZE];
    int n = ms_tokenizer_encode(t, (const char *)data, size, bos, special, NULL, 0, err, sizeof err);
    if (n < 0) abort();
    int32_t *ids = ms_xmalloc(((size_t)n + 1) * sizeof *ids);
    if (ms_tokenizer_encode(t, (const char *)data, size, bos, special, ids, n, err, sizeof err) != n) abort();
    if (expect) {
        size_t cap = expect_len + 64, len = 0;
        char *text = ms_xmalloc(cap);
        for (int i = bos && ms_tokenizer_vocab(t)->bos_id >= 0; i < n; i++) {
            int k = ms_tokenizer_piece(t, ids[i], false, text + len, (int)(cap - len));
            if (k < 0 || len + (size_t)k > expect_len) abort();
            len += (size_t)k;
        }
        if (len != expect_len || memcmp(text, expect, len) != 0) abort();
        free(text);
    }
    free(ids);
}

static void s_decode(const ms_tokenizer *t, const int32_t *ids, size_t n, bool special) {
    char out[256];
    ms_detok d;
    ms_detok_init(&d, t, special);
    for (size_t i = 0; i < n; i++) {
        int cap = (int)((uint32_t)ids[i] % 9);
        int k = ms_tokenizer_piece(t, ids[i], special, out, cap);
        if (k < 0) abort();
        k = ms_detok_push(&d, ids[i], out, (int)sizeof out);
        if (k < 0 || k >= (int)sizeof out || out[k] != 0 || !s_valid_utf8(out, k)) abort();
    }
    int k = ms_detok_flush(&d, out, (int)sizeof out);
    if (k < 0 || !s_valid_utf8(out, k)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!s_ready) s_init();
    if (size == 0) return 0;
    const uint8_t mode = data[0];
    const bool special = mode & 4, bos = mode & 8;
    data++;
    size--;
    switch (mode & 3) {
    case 0:
        s_encode(s_llama3, data, size, special, bos, special ? NULL : (const char *)data, size);
        break;
    case 1: {
        /* SPM decodes U+2581 as a space, and a broken UTF-8 lead byte swallows the
         * bytes of the next character (a space's U+2581 included): no round trip
         * for such text */
        bool has_lower_bar = false;
        for (size_t i = 0; i + 2 < size && !has_lower_bar; i++)
            has_lower_bar = data[i] == 0xE2 && data[i + 1] == 0x96 && data[i + 2] == 0x81;
        char *expect = NULL;
        const ms_vocab *v = ms_tokenizer_vocab(s_llama2);
        bool check = !special && !has_lower_bar && size > 0 && strcmp(v->model, "llama") == 0 &&
                     s_valid_utf8((const char *)data, (int)MS_MIN(size, (size_t)INT32_MAX));
        if (check) {
            expect = ms_xmalloc(size + 1);
            expect[0] = ' ';
            memcpy(expect + 1, data, size);
        }
        s_encode(s_llama2, data, size, special, bos, expect, size + 1);
        free(expect);
        break;
    }
    case 2:
        for (int i = 0; i < N_PRE; i++)
            s_encode(s_small[i], data, size, special, bos, special ? NULL : (const char *)data, size);
        break;
    default: {
        size_t n = size / 4;
        int32_t *ids = ms_xmalloc((n + 1) * sizeof *ids);
        memcpy(ids, data, n * 4);
        /* fold most ids into the vocabulary so that real pieces are decoded */
        for (size_t i = 0; i < n; i++)
            if (ids[i] & 0x40000000) ids[i] = (int32_t)((uint32_t)ids[i] % 140000u);
        s_decode(s_llama3, ids, n, special);
        s_decode(s_llama2, ids, n, special);
        free(ids);
        break;
    }
    }
    return 0;
}
