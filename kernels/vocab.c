/* vocab.c — ms_vocab: loading from Hugging Face tokenizer.json (and the
 * {vocab, merges} JSON of llama-tokenizer-js), reading and writing the GGUF
 * tokenizer.ggml.* keys exactly as llama.cpp names and types them.
 *
 * SentencePiece-style vocabularies in JSON carry merges but no scores;
 * llama.cpp's SPM tokenizer needs scores (it merges the adjacent pair whose
 * concatenation is the highest-scoring token). The score of a token is derived
 * from the rank of the first merge that produces it: score = -rank, so that
 * earlier merges win, which is the order a BPE over the same merges follows.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ms_common.h"
#include "tokenizer.h"

#define S_MAX_JSON_BYTES (512u << 20) /* largest tokenizer.json accepted */
#define S_MAX_TOKENS     (1 << 24)    /* largest vocabulary accepted */

/* Hugging Face split regexes that name a llama.cpp pre-tokenizer. */
static const char S_RE_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char S_RE_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

void ms_vocab_fini(ms_vocab *v) {
    if (!v) return;
    if (v->tokens)
        for (int32_t i = 0; i < v->n_tokens; i++) free(v->tokens[i]);
    if (v->merges)
        for (int32_t i = 0; i < v->n_merges; i++) free(v->merges[i]);
    free(v->tokens);
    free(v->scores);
    free(v->types);
    free(v->merges);
    memset(v, 0, sizeof *v);
}

static void s_vocab_clear(ms_vocab *v) {
    memset(v, 0, sizeof *v);
    v->bos_id = v->eos_id = v->eot_id = v->unk_id = v->pad_id = -1;
}

/* Allocates n tokens (NULL strings), NORMAL types, no scores. */
static void s_vocab_alloc(ms_vocab *v, int32_t n) {
    v->n_tokens = n;
    v->tokens = ms_xcalloc((size_t)n, sizeof *v->tokens);
    v->types = ms_xmalloc((size_t)n * sizeof *v->types);
    for (int32_t i = 0; i < n; i++) v->types[i] = MS_TOKEN_NORMAL;
}

static int32_t s_find_token(const ms_vocab *v, const char *s) {
    for (int32_t i = 0; i < v->n_tokens; i++)
        if (v->tokens[i] && strcmp(v->tokens[i], s) == 0) return i;
    return -1;
}

/* First token of names[] present in v, or -1. */
static int32_t s_find_any(const ms_vocab *v, const char *const *names) {
    for (; *names; names++) {
        int32_t id = s_find_token(v, *names);
        if (id >= 0) return id;
    }
    return -1;
}

static const char *const S_EOT_NAMES[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                          NULL};

static bool s_is_byte_token(const char *s) {
    return strlen(s) == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && isxdigit((uint8_t)s[3]) &&
           isxdigit((uint8_t)s[4]) && s[5] == '>';
}

/* ---- SPM scores from merge ranks ------------------------------------------ */

typedef struct {
    const char *s; /* token text */
    int32_t id;    /* token id */
} s_named;

static int s_cmp_named(const void *a, const void *b) {
    return strcmp(((const s_named *)a)->s, ((const s_named *)b)->s);
}

/* Sets v->scores: -(rank of the first merge "l r" with l+r == token) for
 * tokens a merge produces; -(n_merges + id) for other normal tokens; 0 for
 * the rest. merges[i] are "left right" strings. */
static void s_scores_from_merges(ms_vocab *v, char *const *merges, int32_t n_merges) {
    s_named *order = ms_xmalloc((size_t)v->n_tokens * sizeof *order);
    for (int32_t i = 0; i < v->n_tokens; i++) order[i] = (s_named){v->tokens[i], i};
    qsort(order, (size_t)v->n_tokens, sizeof *order, s_cmp_named);
    int32_t *first = ms_xmalloc((size_t)v->n_tokens * sizeof *first);
    for (int32_t i = 0; i < v->n_tokens; i++) first[i] = -1;
    char *buf = NULL;
    size_t cap = 0;
    for (int32_t r = 0; r < n_merges; r++) {
        const char *m = merges[r];
        const char *sp = m[0] ? strchr(m + 1, ' ') : NULL;
        if (!sp) continue;
        size_t nl = (size_t)(sp - m), nr = strlen(sp + 1);
        if (nl + nr + 1 > cap) {
            cap = 2 * (nl + nr + 1);
            buf = ms_xrealloc(buf, cap);
        }
        memcpy(buf, m, nl);
        memcpy(buf + nl, sp + 1, nr + 1);
        int32_t lo = 0, hi = v->n_tokens - 1, found = -1;
        while (lo <= hi) {
            int32_t mid = lo + (hi - lo) / 2;
            int c = strcmp(order[mid].s, buf);
            if (c == 0) {
                found = order[mid].id;
                break;
            }
            if (c < 0) lo = mid + 1;
            else hi = mid - 1;
        }
        if (found >= 0 && first[found] < 0) first[found] = r;
    }
    free(buf);
    v->scores = ms_xmalloc((size_t)v->n_tokens * sizeof *v->scores);
    for (int32_t i = 0; i < v->n_tokens; i++) {
        if (first[i] >= 0) v->scores[i] = -(float)first[i];
        else if (v->types[i] == MS_TOKEN_NORMAL) v->scores[i] = -(float)(n_merges + i);
        else v->scores[i] = 0.0f;
    }
    free(first);
    free(order);
}

/* ---- the {source, vocab: [...], merges: [...]} JSON (llama-tokenizer-js) --- */

static int s_load_spm_list(const cJSON *root, const char *path, ms_vocab *v, char *err,
                           size_t err_size) {
    const cJSON *jv = cJSON_GetObjectItemCaseSensitive(root, "vocab");
    const cJSON *jm = cJSON_GetObjectItemCaseSensitive(root, "merges");
    int n = cJSON_GetArraySize(jv);
    if (n <= 0 || n > S_MAX_TOKENS)
        return ms_errf(err, err_size, "%s: 'vocab' has %d entries", path, n);
    if (!cJSON_IsArray(jm)) return ms_errf(err, err_size, "%s: 'merges' is not an array", path);
    s_vocab_alloc(v, n);
    int i = 0;
    for (const cJSON *e = jv->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e))
            return ms_errf(err, err_size, "%s: vocab[%d] is not a string", path, i);
        v->tokens[i] = ms_xstrdup(e->valuestring);
        if (strcmp(e->valuestring, "<unk>") == 0) v->types[i] = MS_TOKEN_UNKNOWN;
        else if (strcmp(e->valuestring, "<s>") == 0 || strcmp(e->valuestring, "</s>") == 0)
            v->types[i] = MS_TOKEN_CONTROL;
        else if (s_is_byte_token(e->valuestring)) v->types[i] = MS_TOKEN_BYTE;
    }
    int nm = cJSON_GetArraySize(jm);
    char **merges = ms_xcalloc((size_t)nm + 1, sizeof *merges);
    i = 0;
    for (const cJSON *e = jm->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e)) {
            for (int k = 0; k < i; k++) free(merges[k]);
            free(merges);
            return ms_errf(err, err_size, "%s: merges[%d] is not a string", path, i);
        }
        merges[i] = ms_xstrdup(e->valuestring);
    }
    s_scores_from_merges(v, merges, nm);
    for (int k = 0; k < nm; k++) free(merges[k]);
    free(merges);
    snprintf(v->model, sizeof v->model, "llama");
    snprintf(v->pre, sizeof v->pre, "default");
    v->bos_id = s_find_token(v, "<s>");
    v->eos_id = s_find_token(v, "</s>");
    v->unk_id = s_find_token(v, "<unk>");
    v->add_bos = v->bos_id >= 0;
    v->add_space_prefix = true;
    return 0;
}

/* ---- Hugging Face tokenizer.json ------------------------------------------ */

/* True if node (a pre_tokenizer / decoder / normalizer, possibly a Sequence)
 * has a component of the given type; *found gets it. */
static bool s_has_type(const cJSON *node, const char *type, const cJSON **found) {
    if (!cJSON_IsObject(node)) return false;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (cJSON_IsString(t) && strcmp(t->valuestring, type) == 0) {
        if (found) *found = node;
        return true;
    }
    static const char *const lists[] = {"pretokenizers", "decoders", "normalizers"};
    for (size_t k = 0; k < MS_ARRAY_LEN(lists); k++) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(node, lists[k]);
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) if (s_has_type(e, type, found)) return true;
    }
    return false;
}

static bool s_json_true(const cJSON *obj, const char *key) {
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(obj, key));
}

/* Token string of a config entry: "<s>" or {"content": "<s>", ...}. */
static const char *s_token_text(const cJSON *e) {
    if (cJSON_IsString(e)) return e->valuestring;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

/* pre name for a byte-level tokenizer, from its Split regex. */
static void s_detect_pre(const cJSON *root, ms_vocab *v, const char *path) {
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *split = NULL, *bl = NULL;
    snprintf(v->pre, sizeof v->pre, "default");
    if (s_has_type(pt, "Split", &split)) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(split, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        if (cJSON_IsString(re) && strcmp(re->valuestring, S_RE_LLAMA3) == 0)
            snprintf(v->pre, sizeof v->pre, "llama-bpe");
        else if (cJSON_IsString(re) && strcmp(re->valuestring, S_RE_QWEN2) == 0)
            snprintf(v->pre, sizeof v->pre, "qwen2");
        else
            ms_warn("%s: unrecognised pre-tokenizer regex, using llama.cpp's \"default\"", path);
    } else if (s_has_type(pt, "ByteLevel", &bl) && s_json_true(bl, "use_regex")) {
        snprintf(v->pre, sizeof v->pre, "gpt-2");
    }
}

/* Reads foo.tokenizer_config.json / tokenizer_config.json next to a
 * foo.tokenizer.json / tokenizer.json, if there is one. */
static cJSON *s_load_sibling_config(const char *path) {
    const char *suffix = "tokenizer.json";
    size_t n = strlen(path), ns = strlen(suffix);
    if (n < ns || strcmp(path + n - ns, suffix) != 0) return NULL;
    char *cfg = ms_xmalloc(n + 16);
    memcpy(cfg, path, n - ns);
    strcpy(cfg + n - ns, "tokenizer_config.json");
    size_t len;
    char err[MS_ERR_SIZE];
    uint8_t *buf = ms_read_file(cfg, S_MAX_JSON_BYTES, &len, err, sizeof err);
    free(cfg);
    if (!buf) return NULL;
    cJSON *j = cJSON_ParseWithLength((const char *)buf, len);
    free(buf);
    return j;
}

static void s_special_ids(const cJSON *root, const char *path, ms_vocab *v, bool byte_level) {
    static const char *const bos_names[] = {"<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>",
                                            NULL};
    static const char *const eos_names[] = {"<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>",
                                            NULL};
    cJSON *cfg = s_load_sibling_config(path);
    bool have_add_bos = false;
    if (cfg) {
        const char *t;
        if ((t = s_token_text(cJSON_GetObjectItemCaseSensitive(cfg, "bos_token"))))
            v->bos_id = s_find_token(v, t);
        if ((t = s_token_text(cJSON_GetObjectItemCaseSensitive(cfg, "eos_token"))))
            v->eos_id = s_find_token(v, t);
        if ((t = s_token_text(cJSON_GetObjectItemCaseSensitive(cfg, "pad_token"))))
            v->pad_id = s_find_token(v, t);
        if ((t = s_token_text(cJSON_GetObjectItemCaseSensitive(cfg, "unk_token"))))
            v->unk_id = s_find_token(v, t);
        const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
        if (cJSON_IsBool(ab)) {
            have_add_bos = true;
            v->add_bos = cJSON_IsTrue(ab);
        }
        cJSON_Delete(cfg);
    }
    /* post_processor TemplateProcessing: "single": [{"SpecialToken": {"id": "<s>"}}, ...] */
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    const cJSON *tp = NULL;
    if (s_has_type(pp, "TemplateProcessing", &tp)) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(tp, "single");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(single, 0), "SpecialToken");
        const char *t = s_token_text(cJSON_GetObjectItemCaseSensitive(st, "id"));
        int32_t id = t ? s_find_token(v, t) : -1;
        if (id >= 0 && v->bos_id < 0) v->bos_id = id;
        if (!have_add_bos) {
            have_add_bos = true;
            v->add_bos = id >= 0;
        }
    }
    if (v->bos_id < 0) v->bos_id = s_find_any(v, bos_names);
    if (v->eos_id < 0) v->eos_id = s_find_any(v, eos_names);
    v->eot_id = s_find_any(v, S_EOT_NAMES);
    if (!have_add_bos) v->add_bos = v->bos_id >= 0 && (!byte_level || strcmp(v->pre, "llama-bpe") == 0);
}

static int s_load_hf(const cJSON *root, const char *path, ms_vocab *v, char *err, size_t err_size) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (cJSON_IsString(type) && strcmp(type->valuestring, "BPE") != 0)
        return ms_errf(err, err_size, "%s: model type '%s' is not supported (only BPE)", path,
                       type->valuestring);
    const cJSON *jv = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *jm = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(jv) || !cJSON_IsArray(jm))
        return ms_errf(err, err_size, "%s: model.vocab (object) and model.merges (array) expected",
                       path);
    /* size: the largest id + 1 */
    int64_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, jv) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= S_MAX_TOKENS)
            return ms_errf(err, err_size, "%s: vocab entry '%s' has a bad id", path, e->string);
        n = MS_MAX(n, (int64_t)e->valuedouble + 1);
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= S_MAX_TOKENS ||
            !cJSON_IsString(content))
            return ms_errf(err, err_size, "%s: an added_tokens entry lacks a valid id/content", path);
        n = MS_MAX(n, (int64_t)id->valuedouble + 1);
    }
    if (n == 0) return ms_errf(err, err_size, "%s: empty vocabulary", path);
    s_vocab_alloc(v, (int32_t)n);
    cJSON_ArrayForEach(e, jv) {
        int32_t id = (int32_t)e->valuedouble;
        free(v->tokens[id]);
        v->tokens[id] = ms_xstrdup(e->string);
    }
    cJSON_ArrayForEach(e, added) {
        int32_t id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        free(v->tokens[id]);
        v->tokens[id] = ms_xstrdup(cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring);
        v->types[id] = s_json_true(e, "special") ? MS_TOKEN_CONTROL : MS_TOKEN_USER_DEFINED;
    }
    for (int32_t i = 0; i < v->n_tokens; i++) {
        if (v->tokens[i]) continue;
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%d]", (int)i);
        v->tokens[i] = ms_xstrdup(pad);
        v->types[i] = MS_TOKEN_UNUSED;
    }
    /* merges: "a b" strings or ["a", "b"] pairs */
    int nm = cJSON_GetArraySize(jm);
    char **merges = ms_xcalloc((size_t)nm + 1, sizeof *merges);
    int i = 0;
    cJSON_ArrayForEach(e, jm) {
        if (cJSON_IsString(e)) {
            merges[i] = ms_xstrdup(e->valuestring);
        } else if (cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            const char *a = cJSON_GetArrayItem(e, 0)->valuestring;
            const char *b = cJSON_GetArrayItem(e, 1)->valuestring;
            merges[i] = ms_xmalloc(strlen(a) + strlen(b) + 2);
            sprintf(merges[i], "%s %s", a, b);
        } else {
            for (int k = 0; k < i; k++) free(merges[k]);
            free(merges);
            return ms_errf(err, err_size, "%s: merges[%d] is neither \"a b\" nor [a, b]", path, i);
        }
        i++;
    }
    /* byte-level (GPT-2) or SentencePiece-style? */
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    const cJSON *ms = NULL;
    bool byte_level = s_has_type(pt, "ByteLevel", NULL) || s_has_type(dec, "ByteLevel", NULL);
    bool spm = s_json_true(model, "byte_fallback") || s_has_type(dec, "ByteFallback", NULL) ||
               s_has_type(dec, "Metaspace", NULL) || s_has_type(pt, "Metaspace", &ms) ||
               s_has_type(norm, "Prepend", NULL);
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (byte_level) {
        snprintf(v->model, sizeof v->model, "gpt2");
        s_detect_pre(root, v, path);
        v->n_merges = nm;
        v->merges = merges;
    } else if (spm) {
        snprintf(v->model, sizeof v->model, "llama");
        snprintf(v->pre, sizeof v->pre, "default");
        for (int32_t k = 0; k < v->n_tokens; k++)
            if (v->types[k] == MS_TOKEN_NORMAL && s_is_byte_token(v->tokens[k]))
                v->types[k] = MS_TOKEN_BYTE;
        if (cJSON_IsString(unk)) {
            v->unk_id = s_find_token(v, unk->valuestring);
            if (v->unk_id >= 0) v->types[v->unk_id] = MS_TOKEN_UNKNOWN;
        }
        s_scores_from_merges(v, merges, nm);
        for (int k = 0; k < nm; k++) free(merges[k]);
        free(merges);
        const cJSON *scheme = ms ? cJSON_GetObjectItemCaseSensitive(ms, "prepend_scheme") : NULL;
        v->add_space_prefix = s_has_type(norm, "Prepend", NULL) ||
                              (ms && (s_json_true(ms, "add_prefix_space") ||
                                      (cJSON_IsString(scheme) && strcmp(scheme->valuestring, "never") != 0)));
    } else {
        for (int k = 0; k < nm; k++) free(merges[k]);
        free(merges);
        return ms_errf(err, err_size,
                       "%s: neither byte-level (ByteLevel pre_tokenizer/decoder) nor "
                       "SentencePiece-style (byte_fallback, Metaspace, ByteFallback)",
                       path);
    }
    if (cJSON_IsString(unk) && v->unk_id < 0) v->unk_id = s_find_token(v, unk->valuestring);
    s_special_ids(root, path, v, byte_level);
    return 0;
}

int ms_vocab_load_json(const char *path, ms_vocab *v, char *err, size_t err_size) {
    s_vocab_clear(v);
    size_t len;
    uint8_t *buf = ms_read_file(path, S_MAX_JSON_BYTES, &len, err, err_size);
    if (!buf) return -1;
    cJSON *root = cJSON_ParseWithLength((const char *)buf, len);
    free(buf);
    if (!root) return ms_errf(err, err_size, "%s: not valid JSON", path);
    int rc;
    if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "model")))
        rc = s_load_hf(root, path, v, err, err_size);
    else if (cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(root, "vocab")))
        rc = s_load_spm_list(root, path, v, err, err_size);
    else
        rc = ms_errf(err, err_size, "%s: neither a tokenizer.json (model) nor a {vocab, merges} file",
                     path);
    cJSON_Delete(root);
    if (rc != 0) ms_vocab_fini(v);
    return rc;
}

/* ---- GGUF ------------------------------------------------------------------ */

#define S_KEY_MODEL     "tokenizer.ggml.model"
#define S_KEY_PRE       "tokenizer.ggml.pre"
#define S_KEY_TOKENS    "tokenizer.ggml.tokens"
#define S_KEY_SCORES    "tokenizer.ggml.scores"
#define S_KEY_TYPES     "tokenizer.ggml.token_type"
#define S_KEY_MERGES    "tokenizer.ggml.merges"
#define S_KEY_BOS       "tokenizer.ggml.bos_token_id"
#define S_KEY_EOS       "tokenizer.ggml.eos_token_id"
#define S_KEY_EOT       "tokenizer.ggml.eot_token_id"
#define S_KEY_UNK       "tokenizer.ggml.unknown_token_id"
#define S_KEY_PAD       "tokenizer.ggml.padding_token_id"
#define S_KEY_ADD_BOS   "tokenizer.ggml.add_bos_token"
#define S_KEY_ADD_SPACE "tokenizer.ggml.add_space_prefix"

void ms_vocab_to_gguf(const ms_vocab *v, ms_gguf_writer *w) {
    ms_gguf_set_str(w, S_KEY_MODEL, v->model);
    ms_gguf_set_str(w, S_KEY_PRE, v->pre[0] ? v->pre : "default");
    ms_gguf_set_arr(w, S_KEY_TOKENS, MS_GGUF_STRING, (const char *const *)v->tokens,
                    (uint64_t)v->n_tokens);
    if (v->scores) ms_gguf_set_arr(w, S_KEY_SCORES, MS_GGUF_FLOAT32, v->scores, (uint64_t)v->n_tokens);
    if (v->types) ms_gguf_set_arr(w, S_KEY_TYPES, MS_GGUF_INT32, v->types, (uint64_t)v->n_tokens);
    if (v->n_merges > 0)
        ms_gguf_set_arr(w, S_KEY_MERGES, MS_GGUF_STRING, (const char *const *)v->merges,
                        (uint64_t)v->n_merges);
    if (v->bos_id >= 0) ms_gguf_set_u32(w, S_KEY_BOS, (uint32_t)v->bos_id);
    if (v->eos_id >= 0) ms_gguf_set_u32(w, S_KEY_EOS, (uint32_t)v->eos_id);
    if (v->eot_id >= 0) ms_gguf_set_u32(w, S_KEY_EOT, (uint32_t)v->eot_id);
    if (v->unk_id >= 0) ms_gguf_set_u32(w, S_KEY_UNK, (uint32_t)v->unk_id);
    if (v->pad_id >= 0) ms_gguf_set_u32(w, S_KEY_PAD, (uint32_t)v->pad_id);
    ms_gguf_set_bool(w, S_KEY_ADD_BOS, v->add_bos);
    ms_gguf_set_bool(w, S_KEY_ADD_SPACE, v->add_space_prefix);
}

/* Copies a GGUF string array into malloc'd NUL-terminated strings. */
static int s_gguf_strings(const ms_gguf *g, int64_t idx, uint64_t n, const char *key, char ***out,
                          char *err, size_t err_size) {
    char **s = ms_xcalloc((size_t)n + 1, sizeof *s);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        const char *p = ms_gguf_arr_str(g, idx, i, &len);
        if (memchr(p, 0, (size_t)len)) {
            for (uint64_t k = 0; k < i; k++) free(s[k]);
            free(s);
            return ms_errf(err, err_size, "%s[%llu] contains a NUL byte", key, (unsigned long long)i);
        }
        s[i] = ms_xstrndup(p, (size_t)len);
    }
    *out = s;
    return 0;
}

/* Optional u32 special id: absent leaves *id; present must be < n_tokens. */
static int s_gguf_id(const ms_gguf *g, const char *key, int32_t n_tokens, int32_t *id, char *err,
                     size_t err_size) {
    if (ms_gguf_find_key(g, key) < 0) return 0;
    uint32_t u;
    if (ms_gguf_get_u32(g, key, &u, err, err_size) != 0) return -1;
    if (u >= (uint32_t)n_tokens)
        return ms_errf(err, err_size, "%s = %u is out of range (the vocabulary has %d tokens)", key,
                       u, (int)n_tokens);
    *id = (int32_t)u;
    return 0;
}

static int s_gguf_bool(const ms_gguf *g, const char *key, bool *b, char *err, size_t err_size) {
    if (ms_gguf_find_key(g, key) < 0) return 0;
    return ms_gguf_get_bool(g, key, b, err, err_size);
}

static int s_from_gguf(const ms_gguf *g, ms_vocab *v, char *err, size_t err_size) {
    const char *model, *pre = "default";
    if (ms_gguf_get_str(g, S_KEY_MODEL, &model, err, err_size) != 0) return -1;
    bool spm = strcmp(model, "llama") == 0;
    if (!spm && strcmp(model, "gpt2") != 0)
        return ms_errf(err, err_size, "%s '%s' is not supported (expected 'llama' or 'gpt2')",
                       S_KEY_MODEL, model);
    snprintf(v->model, sizeof v->model, "%s", model);
    if (ms_gguf_find_key(g, S_KEY_PRE) >= 0 && ms_gguf_get_str(g, S_KEY_PRE, &pre, err, err_size) != 0)
        return -1;
    if (strlen(pre) >= sizeof v->pre)
        return ms_errf(err, err_size, "%s '%.40s...' is too long", S_KEY_PRE, pre);
    snprintf(v->pre, sizeof v->pre, "%s", pre);

    int64_t idx;
    uint64_t n;
    if (ms_gguf_get_arr(g, S_KEY_TOKENS, MS_GGUF_STRING, &idx, &n, err, err_size) != 0) return -1;
    if (n == 0 || n > S_MAX_TOKENS)
        return ms_errf(err, err_size, "%s has %llu entries (expected 1..%d)", S_KEY_TOKENS,
                       (unsigned long long)n, S_MAX_TOKENS);
    if (s_gguf_strings(g, idx, n, S_KEY_TOKENS, &v->tokens, err, err_size) != 0) return -1;
    v->n_tokens = (int32_t)n;

    uint64_t m;
    if (ms_gguf_find_key(g, S_KEY_SCORES) >= 0) {
        if (ms_gguf_get_arr(g, S_KEY_SCORES, MS_GGUF_FLOAT32, &idx, &m, err, err_size) != 0) return -1;
        if (m != n)
            return ms_errf(err, err_size, "%s has %llu entries but %s has %llu", S_KEY_SCORES,
                           (unsigned long long)m, S_KEY_TOKENS, (unsigned long long)n);
        v->scores = ms_xmalloc((size_t)n * sizeof *v->scores);
        memcpy(v->scores, ms_gguf_arr_data(g, idx), (size_t)n * sizeof *v->scores);
    }
    v->types = ms_xmalloc((size_t)n * sizeof *v->types);
    if (ms_gguf_find_key(g, S_KEY_TYPES) >= 0) {
        if (ms_gguf_get_arr(g, S_KEY_TYPES, MS_GGUF_INT32, &idx, &m, err, err_size) != 0) return -1;
        if (m != n)
            return ms_errf(err, err_size, "%s has %llu entries but %s has %llu", S_KEY_TYPES,
                           (unsigned long long)m, S_KEY_TOKENS, (unsigned long long)n);
        memcpy(v->types, ms_gguf_arr_data(g, idx), (size_t)n * sizeof *v->types);
        for (uint64_t i = 0; i < n; i++)
            if (v->types[i] < MS_TOKEN_UNDEFINED || v->types[i] > MS_TOKEN_BYTE)
                return ms_errf(err, err_size, "%s[%llu] = %d is not a token type (0..6)", S_KEY_TYPES,
                               (unsigned long long)i, (int)v->types[i]);
    } else {
        for (uint64_t i = 0; i < n; i++) v->types[i] = MS_TOKEN_NORMAL;
    }
    if (ms_gguf_find_key(g, S_KEY_MERGES) >= 0) {
        if (ms_gguf_get_arr(g, S_KEY_MERGES, MS_GGUF_STRING, &idx, &m, err, err_size) != 0) return -1;
        if (m > (uint64_t)INT32_MAX)
            return ms_errf(err, err_size, "%s has too many entries", S_KEY_MERGES);
        if (s_gguf_strings(g, idx, m, S_KEY_MERGES, &v->merges, err, err_size) != 0) return -1;
        v->n_merges = (int32_t)m;
    } else if (!spm) {
        return ms_errf(err, err_size, "missing key '%s' (required for gpt2 vocabularies)", S_KEY_MERGES);
    }
    /* llama.cpp's defaults: SPM has <unk> <s> </s> first and adds BOS and a
     * space; llama3's pre-tokenizer adds BOS too */
    if (spm) {
        if (n > 2) v->unk_id = 0, v->bos_id = 1, v->eos_id = 2;
        v->add_bos = true;
        v->add_space_prefix = true;
    } else {
        v->add_bos = strcmp(pre, "llama-bpe") == 0 || strcmp(pre, "llama3") == 0 || strcmp(pre, "llama-v3") == 0;
    }
    const int32_t nt = v->n_tokens;
    if (s_gguf_id(g, S_KEY_BOS, nt, &v->bos_id, err, err_size) != 0 ||
        s_gguf_id(g, S_KEY_EOS, nt, &v->eos_id, err, err_size) != 0 ||
        s_gguf_id(g, S_KEY_EOT, nt, &v->eot_id, err, err_size) != 0 ||
        s_gguf_id(g, S_KEY_UNK, nt, &v->unk_id, err, err_size) != 0 ||
        s_gguf_id(g, S_KEY_PAD, nt, &v->pad_id, err, err_size) != 0 ||
        s_gguf_bool(g, S_KEY_ADD_BOS, &v->add_bos, err, err_size) != 0 ||
        s_gguf_bool(g, S_KEY_ADD_SPACE, &v->add_space_prefix, err, err_size) != 0)
        return -1;
    if (v->eot_id < 0) v->eot_id = s_find_any(v, S_EOT_NAMES);
    return 0;
}

int ms_vocab_from_gguf(const ms_gguf *g, ms_vocab *v, char *err, size_t err_size) {
    s_vocab_clear(v);
    if (s_from_gguf(g, v, err, err_size) == 0) return 0;
    ms_vocab_fini(v);
    return -1;
}
