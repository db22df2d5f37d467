/* tokenizer.c — encoding and decoding as llama.cpp's llama-vocab.cpp does.
 *
 * Encoding: the text is first cut at special-token strings (llama.cpp's
 * tokenizer_st_partition: special tokens longest first, each matched left to
 * right in what is still raw text), then each raw fragment is tokenized:
 *   SPM ("llama"):  " " prepended (add_space_prefix, at the start and after a
 *     special token), spaces → U+2581, one symbol per UTF-8 character, then the
 *     adjacent pair whose concatenation is the highest-scoring token is merged
 *     (ties: leftmost) until none is left; symbols that are not tokens become
 *     <0xXX> byte tokens.
 *   BPE ("gpt2"):   a pre-tokenizer splits the fragment into words (llama.cpp's
 *     hand-written versions of the llama3 / qwen2 / gpt2 / default regexes),
 *     each word's bytes are mapped to GPT-2's printable code points, and the
 *     adjacent pair with the lowest merge rank is merged (ties: leftmost).
 *     With ignore_merges (llama3) a word that is itself a token is taken whole.
 * Invalid UTF-8 is classified as U+FFFD by the pre-tokenizer but kept as its
 * raw bytes (llama.cpp replaces it by U+FFFD's bytes; here it round-trips).
 *
 * Lookups go through one open-addressing table of strings (token texts, plus
 * merge pieces that are not tokens, so that a merge rank is a lookup of an id
 * pair in a second table).
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"
#include "tokenizer.h"
#include "unicode_tables.h"

#define S_MAX_TEXT   ((size_t)INT32_MAX / 2 - 16) /* longest text encode accepts, bytes */
#define S_REPLACEMENT 0xFFFDu                     /* code point given to invalid UTF-8 */
#define S_SPACE_UTF8 "\xE2\x96\x81"               /* U+2581, SentencePiece's space */

enum { S_SPM, S_BPE };
enum { S_PRE_LLAMA3, S_PRE_QWEN2, S_PRE_GPT2, S_PRE_DEFAULT };

typedef struct {
    uint32_t hash; /* of the string */
    int32_t id;    /* piece id, -1 = empty slot */
} s_slot;

struct ms_tokenizer {
    ms_vocab v;             /* own copy; token and merge strings live in arena */
    char *arena;
    int kind;               /* S_SPM or S_BPE */
    int pre;                /* S_PRE_* (BPE) */
    bool ignore_merges;     /* BPE: a word that is a token is taken whole (llama3) */
    /* pieces: ids [0, n_tokens) are tokens, then merge pieces that are not tokens */
    int32_t n_pieces, cap_pieces;
    const char **piece;     /* not NUL-terminated for merge pieces */
    int32_t *piece_len;     /* bytes */
    s_slot *tab;            /* string → piece id */
    uint32_t tab_mask;
    uint64_t *pair_key;     /* (left << 32 | right) + 1; 0 = empty */
    int32_t *pair_rank;     /* merge rank of the pair */
    uint32_t pair_mask;
    int32_t byte_tok[256];  /* SPM: <0xXX> token of a byte; BPE: token of the raw 1-byte string */
    char bl_enc[256][2];    /* BPE: GPT-2 byte → code point, UTF-8 */
    uint8_t bl_len[256];    /* bytes in bl_enc */
    int32_t bl_id[256];     /* piece id of bl_enc, -1 */
    int16_t bl_dec[512];    /* code point → byte, -1 */
    int32_t *special;       /* CONTROL / USER_DEFINED / UNKNOWN ids, longest first */
    int32_t n_special;
    int32_t *spec_rank;     /* per token: index in special, -1 */
    int32_t *spec_lens;     /* distinct special lengths, descending */
    int32_t n_spec_lens;
    uint8_t spec_first2[8192]; /* bit (b0 << 8 | b1): a special token starts with b0 b1 */
    uint8_t spec_first1[256];  /* a 1-byte special token is this byte */
};

/* ---- string table ------------------------------------------------------------- */

static uint32_t s_hash(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ULL;
    return (uint32_t)(h ^ (h >> 31));
}

/* Piece id of s[0..n), or -1. */
static int32_t s_lookup(const ms_tokenizer *t, const char *s, size_t n) {
    uint32_t h = s_hash(s, n);
    for (uint32_t i = h & t->tab_mask;; i = (i + 1) & t->tab_mask) {
        const s_slot *sl = &t->tab[i];
        if (sl->id < 0) return -1;
        if (sl->hash == h && (size_t)t->piece_len[sl->id] == n && memcmp(t->piece[sl->id], s, n) == 0)
            return sl->id;
    }
}

static int32_t s_token(const ms_tokenizer *t, const char *s, size_t n) {
    int32_t id = s_lookup(t, s, n);
    return id < t->v.n_tokens ? id : -1;
}

static void s_tab_put(ms_tokenizer *t, uint32_t h, int32_t id) {
    uint32_t i = h & t->tab_mask;
    while (t->tab[i].id >= 0) i = (i + 1) & t->tab_mask;
    t->tab[i] = (s_slot){h, id};
}

static void s_tab_alloc(ms_tokenizer *t, uint32_t n_slots) {
    t->tab = ms_xmalloc((size_t)n_slots * sizeof *t->tab);
    for (uint32_t i = 0; i < n_slots; i++) t->tab[i].id = -1;
    t->tab_mask = n_slots - 1;
}

static uint32_t s_pow2_at_least(uint64_t n) {
    uint32_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

/* Adds piece id (already in piece[]), replacing an equal string (last wins, as
 * llama.cpp's token_to_id map). Grows the table at half load. */
static void s_tab_add(ms_tokenizer *t, int32_t id) {
    const char *s = t->piece[id];
    size_t n = (size_t)t->piece_len[id];
    if ((uint64_t)(id + 1) * 2 > (uint64_t)t->tab_mask + 1) {
        s_slot *old = t->tab;
        uint32_t old_n = t->tab_mask + 1;
        s_tab_alloc(t, old_n * 2);
        for (uint32_t i = 0; i < old_n; i++)
            if (old[i].id >= 0) s_tab_put(t, old[i].hash, old[i].id);
        free(old);
    }
    uint32_t h = s_hash(s, n);
    for (uint32_t i = h & t->tab_mask;; i = (i + 1) & t->tab_mask) {
        s_slot *sl = &t->tab[i];
        if (sl->id < 0) {
            *sl = (s_slot){h, id};
            return;
        }
        if (sl->hash == h && (size_t)t->piece_len[sl->id] == n && memcmp(t->piece[sl->id], s, n) == 0) {
            sl->id = id;
            return;
        }
    }
}

/* Id of a merge piece: a token, an extra piece, or a new extra piece. */
static int32_t s_piece_id(ms_tokenizer *t, const char *s, size_t n) {
    int32_t id = s_lookup(t, s, n);
    if (id >= 0) return id;
    id = t->n_pieces++;
    t->piece[id] = s;
    t->piece_len[id] = (int32_t)n;
    s_tab_add(t, id);
    return id;
}

static uint32_t s_pair_hash(uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (uint32_t)key;
}

static int32_t s_pair_rank(const ms_tokenizer *t, int32_t l, int32_t r) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32 | (uint32_t)r) + 1;
    for (uint32_t i = s_pair_hash(key) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
        if (t->pair_key[i] == key) return t->pair_rank[i];
        if (t->pair_key[i] == 0) return -1;
    }
}

/* First merge of a pair wins (llama.cpp's bpe_ranks.emplace). */
static void s_pair_add(ms_tokenizer *t, int32_t l, int32_t r, int32_t rank) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32 | (uint32_t)r) + 1;
    for (uint32_t i = s_pair_hash(key) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
        if (t->pair_key[i] == key) return;
        if (t->pair_key[i] == 0) {
            t->pair_key[i] = key;
            t->pair_rank[i] = rank;
            return;
        }
    }
}

/* ---- UTF-8 -------------------------------------------------------------------- */

/* llama.cpp's unicode_len_utf8: length from the lead byte's high nibble. */
static size_t s_utf8_len(uint8_t b) {
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[b >> 4];
}

static int s_utf8_put(uint32_t cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes one code point at s[i] (n bytes in all) as llama.cpp's
 * unicode_cpt_from_utf8 does (lenient: no overlong / surrogate checks); an
 * invalid sequence gives S_REPLACEMENT and length 1. */
static uint32_t s_utf8_next(const uint8_t *s, size_t n, size_t i, size_t *len) {
    uint8_t b = s[i];
    size_t need = b < 0x80 ? 1 : !(b & 0x40) ? 0 : !(b & 0x20) ? 2 : !(b & 0x10) ? 3 : !(b & 0x08) ? 4 : 0;
    if (need == 1) {
        *len = 1;
        return b;
    }
    if (need == 0 || i + need > n) {
        *len = 1;
        return S_REPLACEMENT;
    }
    uint32_t cp = b & (0x7F >> need);
    for (size_t k = 1; k < need; k++) {
        if ((s[i + k] & 0xC0) != 0x80) {
            *len = 1;
            return S_REPLACEMENT;
        }
        cp = cp << 6 | (s[i + k] & 0x3F);
    }
    *len = need;
    return cp;
}

/* ---- building ----------------------------------------------------------------- */

static int s_pre_kind(const char *pre, int *kind, bool *ignore_merges) {
    static const struct {
        const char *name;
        int kind;
        bool ignore_merges;
    } names[] = {
        {"llama-bpe", S_PRE_LLAMA3, true}, {"llama3", S_PRE_LLAMA3, true},
        {"llama-v3", S_PRE_LLAMA3, true},  {"qwen2", S_PRE_QWEN2, false},
        {"gpt-2", S_PRE_GPT2, false},      {"gpt2", S_PRE_GPT2, false},
        {"default", S_PRE_DEFAULT, false}, {"", S_PRE_DEFAULT, false},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(names); i++) {
        if (strcmp(pre, names[i].name) == 0) {
            *kind = names[i].kind;
            *ignore_merges = names[i].ignore_merges;
            return 0;
        }
    }
    return -1;
}

static int s_validate(const ms_vocab *v, char *err, size_t err_size) {
    if (strcmp(v->model, "llama") != 0 && strcmp(v->model, "gpt2") != 0)
        return ms_errf(err, err_size, "tokenizer model '%.16s' is not supported (expected 'llama' or 'gpt2')",
                       v->model);
    if (v->n_tokens <= 0 || !v->tokens)
        return ms_errf(err, err_size, "vocabulary has no tokens");
    for (int32_t i = 0; i < v->n_tokens; i++) {
        if (!v->tokens[i]) return ms_errf(err, err_size, "token %d is NULL", (int)i);
        if (v->types && (v->types[i] < MS_TOKEN_UNDEFINED || v->types[i] > MS_TOKEN_BYTE))
            return ms_errf(err, err_size, "token %d has type %d (expected 0..6)", (int)i, (int)v->types[i]);
    }
    if (v->n_merges < 0 || (v->n_merges > 0 && !v->merges))
        return ms_errf(err, err_size, "vocabulary has %d merges but no merge array", (int)v->n_merges);
    for (int32_t i = 0; i < v->n_merges; i++)
        if (!v->merges[i]) return ms_errf(err, err_size, "merge %d is NULL", (int)i);
    const struct {
        const char *name;
        int32_t id;
    } ids[] = {{"bos", v->bos_id}, {"eos", v->eos_id}, {"eot", v->eot_id}, {"unk", v->unk_id}, {"pad", v->pad_id}};
    for (size_t i = 0; i < MS_ARRAY_LEN(ids); i++)
        if (ids[i].id < -1 || ids[i].id >= v->n_tokens)
            return ms_errf(err, err_size, "%s id %d is out of range (%d tokens)", ids[i].name, (int)ids[i].id,
                           (int)v->n_tokens);
    return 0;
}

/* Deep copy of v with all strings in one arena. */
static void s_copy_vocab(ms_tokenizer *t, const ms_vocab *v) {
    size_t total = 0;
    for (int32_t i = 0; i < v->n_tokens; i++) total += strlen(v->tokens[i]) + 1;
    for (int32_t i = 0; i < v->n_merges; i++) total += strlen(v->merges[i]) + 1;
    t->v = *v;
    t->arena = ms_xmalloc(total + 1);
    char *p = t->arena;
    t->v.tokens = ms_xmalloc((size_t)v->n_tokens * sizeof(char *));
    for (int32_t i = 0; i < v->n_tokens; i++) {
        size_t n = strlen(v->tokens[i]) + 1;
        t->v.tokens[i] = memcpy(p, v->tokens[i], n);
        p += n;
    }
    t->v.merges = v->n_merges ? ms_xmalloc((size_t)v->n_merges * sizeof(char *)) : NULL;
    for (int32_t i = 0; i < v->n_merges; i++) {
        size_t n = strlen(v->merges[i]) + 1;
        t->v.merges[i] = memcpy(p, v->merges[i], n);
        p += n;
    }
    t->v.types = ms_xmalloc((size_t)v->n_tokens * sizeof(int32_t));
    for (int32_t i = 0; i < v->n_tokens; i++) t->v.types[i] = v->types ? v->types[i] : MS_TOKEN_NORMAL;
    t->v.scores = NULL;
    if (v->scores) {
        t->v.scores = ms_xmalloc((size_t)v->n_tokens * sizeof(float));
        memcpy(t->v.scores, v->scores, (size_t)v->n_tokens * sizeof(float));
    }
}

static void s_build_bytes(ms_tokenizer *t) {
    int extra = 0;
    for (int i = 0; i < 512; i++) t->bl_dec[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        uint32_t cp = keep ? (uint32_t)b : 256u + (uint32_t)extra++;
        t->bl_len[b] = (uint8_t)s_utf8_put(cp, t->bl_enc[b]);
        t->bl_dec[cp] = (int16_t)b;
        t->bl_id[b] = s_lookup(t, t->bl_enc[b], t->bl_len[b]);
        char raw = (char)b;
        if (t->kind == S_BPE) {
            t->byte_tok[b] = s_token(t, &raw, 1);
        } else {
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            t->byte_tok[b] = s_token(t, hex, strlen(hex));
            if (t->byte_tok[b] < 0) t->byte_tok[b] = s_token(t, &raw, 1);
            if (t->byte_tok[b] < 0) t->byte_tok[b] = t->v.unk_id;
        }
    }
}

typedef struct {
    int32_t len, id; /* a special token's byte length and id */
} s_spec;

static int s_cmp_spec(const void *a, const void *b) {
    const s_spec *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static void s_build_special(ms_tokenizer *t) {
    const int32_t n = t->v.n_tokens;
    t->spec_rank = ms_xmalloc((size_t)n * sizeof *t->spec_rank);
    t->special = ms_xmalloc((size_t)n * sizeof *t->special);
    for (int32_t i = 0; i < n; i++) {
        int32_t ty = t->v.types[i];
        t->spec_rank[i] = -1;
        if ((ty == MS_TOKEN_CONTROL || ty == MS_TOKEN_USER_DEFINED || ty == MS_TOKEN_UNKNOWN) &&
            t->piece_len[i] > 0)
            t->special[t->n_special++] = i;
    }
    /* by length (longest first), then id */
    s_spec *sp = ms_xmalloc(((size_t)t->n_special + 1) * sizeof *sp);
    for (int32_t i = 0; i < t->n_special; i++) sp[i] = (s_spec){t->piece_len[t->special[i]], t->special[i]};
    qsort(sp, (size_t)t->n_special, sizeof *sp, s_cmp_spec);
    for (int32_t i = 0; i < t->n_special; i++) t->special[i] = sp[i].id;
    free(sp);
    t->spec_lens = ms_xmalloc(((size_t)t->n_special + 1) * sizeof *t->spec_lens);
    for (int32_t i = 0; i < t->n_special; i++) {
        int32_t id = t->special[i], len = t->piece_len[id];
        const uint8_t *s = (const uint8_t *)t->piece[id];
        t->spec_rank[id] = i;
        if (t->n_spec_lens == 0 || t->spec_lens[t->n_spec_lens - 1] != len) t->spec_lens[t->n_spec_lens++] = len;
        if (len == 1) t->spec_first1[s[0]] = 1;
        else t->spec_first2[(s[0] << 8 | s[1]) >> 3] |= (uint8_t)(1u << (s[1] & 7));
    }
}

ms_tokenizer *ms_tokenizer_new(const ms_vocab *v, char *err, size_t err_size) {
    if (s_validate(v, err, err_size) != 0) return NULL;
    ms_tokenizer *t = ms_xcalloc(1, sizeof *t);
    t->kind = strcmp(v->model, "llama") == 0 ? S_SPM : S_BPE;
    if (t->kind == S_BPE && s_pre_kind(v->pre, &t->pre, &t->ignore_merges) != 0) {
        free(t);
        ms_errf(err, err_size,
                "pre-tokenizer '%.32s' (tokenizer.ggml.pre) is not supported (expected llama-bpe, llama3, "
                "qwen2, gpt-2 or default)",
                v->pre);
        return NULL;
    }
    s_copy_vocab(t, v);
    const int32_t n_merges = t->kind == S_BPE ? v->n_merges : 0;
    t->cap_pieces = v->n_tokens + 2 * n_merges;
    t->piece = ms_xmalloc((size_t)t->cap_pieces * sizeof *t->piece);
    t->piece_len = ms_xmalloc((size_t)t->cap_pieces * sizeof *t->piece_len);
    s_tab_alloc(t, s_pow2_at_least(2 * (uint64_t)v->n_tokens));
    for (int32_t i = 0; i < v->n_tokens; i++) {
        t->piece[i] = t->v.tokens[i];
        t->piece_len[i] = (int32_t)strlen(t->v.tokens[i]);
    }
    t->n_pieces = v->n_tokens;
    for (int32_t i = 0; i < v->n_tokens; i++)
        if (t->piece_len[i] > 0) s_tab_add(t, i);
    /* merges "left right": the space is searched from index 1, as llama.cpp does */
    uint32_t n_pair_slots = s_pow2_at_least(2 * (uint64_t)n_merges);
    t->pair_key = ms_xcalloc(n_pair_slots, sizeof *t->pair_key);
    t->pair_rank = ms_xmalloc((size_t)n_pair_slots * sizeof *t->pair_rank);
    t->pair_mask = n_pair_slots - 1;
    for (int32_t i = 0; i < n_merges; i++) {
        const char *m = t->v.merges[i];
        const char *sp = m[0] ? strchr(m + 1, ' ') : NULL;
        if (!sp || !sp[1]) continue;
        int32_t l = s_piece_id(t, m, (size_t)(sp - m));
        int32_t r = s_piece_id(t, sp + 1, strlen(sp + 1));
        s_pair_add(t, l, r, i);
    }
    s_build_bytes(t);
    s_build_special(t);
    return t;
}

ms_tokenizer *ms_tokenizer_from_gguf(const ms_gguf *g, char *err, size_t err_size) {
    ms_vocab v;
    if (ms_vocab_from_gguf(g, &v, err, err_size) != 0) return NULL;
    ms_tokenizer *t = ms_tokenizer_new(&v, err, err_size);
    ms_vocab_fini(&v);
    return t;
}

void ms_tokenizer_destroy(ms_tokenizer **t_p) {
    if (!t_p || !*t_p) return;
    ms_tokenizer *t = *t_p;
    free(t->arena);
    free(t->v.tokens);
    free(t->v.merges);
    free(t->v.types);
    free(t->v.scores);
    free(t->piece);
    free(t->piece_len);
    free(t->tab);
    free(t->pair_key);
    free(t->pair_rank);
    free(t->special);
    free(t->spec_rank);
    free(t->spec_lens);
    free(t);
    *t_p = NULL;
}

const ms_vocab *ms_tokenizer_vocab(const ms_tokenizer *t) { return &t->v; }
int32_t ms_tokenizer_n_vocab(const ms_tokenizer *t) { return t->v.n_tokens; }

int32_t ms_tokenizer_find(const ms_tokenizer *t, const char *token) {
    return s_token(t, token, strlen(token));
}

bool ms_tokenizer_is_eog(const ms_tokenizer *t, int32_t id) {
    return id >= 0 && (id == t->v.eos_id || id == t->v.eot_id);
}

/* ---- per-call scratch --------------------------------------------------------- */

typedef struct {
    int32_t start, n;   /* bytes of the symbol in the work buffer */
    int32_t prev, next; /* neighbours in the chain, -1 */
    int32_t id;         /* BPE: piece id of the symbol's text, -1 */
} s_sym;

typedef struct {
    double prio;        /* smaller first: -score (SPM) or merge rank (BPE) */
    int32_t left, right;
    int32_t a, b;       /* SPM: size; BPE: ids of left and right when queued */
} s_bigram;

typedef struct {
    const ms_tokenizer *t;
    int32_t *out;       /* ids */
    size_t n_out, cap_out;
    char *buf;          /* SPM text / BPE byte-level word */
    size_t cap_buf;
    s_sym *sym;
    size_t cap_sym;
    s_bigram *heap;
    size_t n_heap, cap_heap;
    uint32_t *cp;       /* pre-tokenizer: code points of the fragment */
    uint32_t *cp_off;   /* byte offset of each code point (+ one past the end) */
    size_t cap_cp;
    size_t *ends, *ends2; /* word ends (code point index) */
    size_t n_ends, n_ends2, cap_ends;
} s_ctx;

#define S_GROW(ptr, cap, need)                                                 \
    do {                                                                       \
        if ((need) > (cap)) {                                                  \
            size_t c_ = MS_MAX((size_t)(need), (cap) * 2 + 16);                \
            (ptr) = ms_xrealloc((ptr), c_ * sizeof *(ptr));                    \
            (cap) = c_;                                                        \
        }                                                                      \
    } while (0)

static void s_emit(s_ctx *c, int32_t id) {
    S_GROW(c->out, c->cap_out, c->n_out + 1);
    c->out[c->n_out++] = id;
}

static bool s_before(const s_bigram *x, const s_bigram *y) {
    return x->prio < y->prio || (x->prio == y->prio && x->left < y->left);
}

static void s_heap_push(s_ctx *c, s_bigram b) {
    S_GROW(c->heap, c->cap_heap, c->n_heap + 1);
    size_t i = c->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!s_before(&b, &c->heap[p])) break;
        c->heap[i] = c->heap[p];
        i = p;
    }
    c->heap[i] = b;
}

static s_bigram s_heap_pop(s_ctx *c) {
    s_bigram top = c->heap[0], last = c->heap[--c->n_heap];
    size_t i = 0, n = c->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l >= n) break;
        m = (l + 1 < n && s_before(&c->heap[l + 1], &c->heap[l])) ? l + 1 : l;
        if (!s_before(&c->heap[m], &last)) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (n) c->heap[i] = last;
    return top;
}

/* ---- SPM ---------------------------------------------------------------------- */

static void s_spm_bigram(s_ctx *c, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const ms_tokenizer *t = c->t;
    int32_t size = c->sym[l].n + c->sym[r].n;
    int32_t id = s_token(t, c->buf + c->sym[l].start, (size_t)size);
    if (id < 0) return;
    double score = t->v.scores ? (double)t->v.scores[id] : 0.0;
    s_heap_push(c, (s_bigram){-score, l, r, size, 0});
}

static void s_spm(s_ctx *c, const char *text, size_t len, bool prefix) {
    S_GROW(c->buf, c->cap_buf, 3 * (len + 1));
    size_t n = 0;
    if (prefix) {
        memcpy(c->buf, S_SPACE_UTF8, 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(c->buf + n, S_SPACE_UTF8, 3);
            n += 3;
        } else {
            c->buf[n++] = text[i];
        }
    }
    S_GROW(c->sym, c->cap_sym, n);
    int32_t ns = 0;
    for (size_t off = 0; off < n;) {
        size_t l = MS_MIN(s_utf8_len((uint8_t)c->buf[off]), n - off);
        c->sym[ns] = (s_sym){(int32_t)off, (int32_t)l, ns - 1, off + l == n ? -1 : ns + 1, -1};
        off += l;
        ns++;
    }
    c->n_heap = 0;
    for (int32_t i = 1; i < ns; i++) s_spm_bigram(c, i - 1, i);
    while (c->n_heap) {
        s_bigram b = s_heap_pop(c);
        s_sym *l = &c->sym[b.left], *r = &c->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.a) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) c->sym[r->next].prev = b.left;
        s_spm_bigram(c, l->prev, b.left);
        s_spm_bigram(c, b.left, l->next);
    }
    for (int32_t i = ns ? 0 : -1; i != -1; i = c->sym[i].next) {
        const s_sym *s = &c->sym[i];
        int32_t id = s_token(c->t, c->buf + s->start, (size_t)s->n);
        if (id >= 0) {
            s_emit(c, id);
            continue;
        }
        for (int32_t k = 0; k < s->n; k++) {
            int32_t bt = c->t->byte_tok[(uint8_t)c->buf[s->start + k]];
            if (bt >= 0) s_emit(c, bt);
        }
    }
}

/* ---- BPE ---------------------------------------------------------------------- */

static void s_bpe_bigram(s_ctx *c, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int32_t il = c->sym[l].id, ir = c->sym[r].id;
    if (il < 0 || ir < 0) return;
    int32_t rank = s_pair_rank(c->t, il, ir);
    if (rank < 0) return;
    s_heap_push(c, (s_bigram){(double)rank, l, r, il, ir});
}

static void s_bpe_word(s_ctx *c, const uint8_t *w, size_t len) {
    const ms_tokenizer *t = c->t;
    S_GROW(c->buf, c->cap_buf, 2 * len);
    S_GROW(c->sym, c->cap_sym, len);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        c->sym[i] = (s_sym){(int32_t)n, t->bl_len[w[i]], (int32_t)i - 1, i + 1 == len ? -1 : (int32_t)i + 1,
                            t->bl_id[w[i]]};
        memcpy(c->buf + n, t->bl_enc[w[i]], t->bl_len[w[i]]);
        n += t->bl_len[w[i]];
    }
    if (t->ignore_merges) {
        int32_t id = s_token(t, c->buf, n);
        if (id >= 0) {
            s_emit(c, id);
            return;
        }
    }
    const int32_t ns = (int32_t)len;
    c->n_heap = 0;
    for (int32_t i = 1; i < ns; i++) s_bpe_bigram(c, i - 1, i);
    while (c->n_heap) {
        s_bigram b = s_heap_pop(c);
        s_sym *l = &c->sym[b.left], *r = &c->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->id != b.a || r->id != b.b) continue;
        l->n += r->n;
        r->n = 0;
        l->id = s_lookup(t, c->buf + l->start, (size_t)l->n);
        l->next = r->next;
        if (r->next >= 0) c->sym[r->next].prev = b.left;
        s_bpe_bigram(c, l->prev, b.left);
        s_bpe_bigram(c, b.left, l->next);
    }
    for (int32_t i = 0; i < ns; i++) {
        const s_sym *s = &c->sym[i];
        if (s->n == 0) continue;
        if (s->id >= 0 && s->id < t->v.n_tokens) {
            s_emit(c, s->id);
            continue;
        }
        for (int32_t k = 0; k < s->n; k++) {
            int32_t bt = t->byte_tok[(uint8_t)c->buf[s->start + k]];
            if (bt >= 0) s_emit(c, bt);
        }
    }
}

/* ---- pre-tokenizers (llama.cpp's unicode_regex_split_custom_*) ---------------- */

static inline uint8_t s_flags_at(const s_ctx *c, size_t pos, size_t end) {
    return pos < end ? ms_unicode_flags(c->cp[pos]) : 0;
}

/* Ends the current word at end (empty words are dropped). There are never
 * more words than code points, the capacity s_bpe reserves. */
static void s_add_end(s_ctx *c, size_t *prev, size_t end) {
    if (end > *prev) {
        assert(c->n_ends2 < c->cap_ends);
        c->ends2[c->n_ends2++] = end;
    }
    *prev = end;
}

#define S_WLN (MS_UCP_SPACE | MS_UCP_LETTER | MS_UCP_NUMBER)

static inline uint32_t s_lower_ascii(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* (?i:'s|'t|'re|'ve|'m|'ll|'d): length of the contraction at pos, or 0. */
static size_t s_contraction(const s_ctx *c, size_t pos, size_t end, bool icase) {
    if (c->cp[pos] != '\'' || pos + 1 >= end) return 0;
    uint32_t a = c->cp[pos + 1];
    if (icase) a = s_lower_ascii(a);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (pos + 2 >= end) return 0;
    uint32_t b = c->cp[pos + 2];
    if (icase) b = s_lower_ascii(b);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* Whitespace run at pos: \s*[\r\n]+ | \s+(?!\S) | \s+. Returns the new pos. */
static size_t s_whitespace(const s_ctx *c, size_t pos, size_t end, bool newlines) {
    size_t nws = 0, last_rn = 0;
    while (s_flags_at(c, pos + nws, end) & MS_UCP_SPACE) {
        uint32_t x = c->cp[pos + nws];
        if (newlines && (x == '\r' || x == '\n')) last_rn = pos + nws + 1;
        nws++;
    }
    if (last_rn > 0) return last_rn;
    if (nws > 1 && pos + nws < end) return pos + nws - 1;
    if (nws > 0) return pos + nws;
    return pos + 1; /* no match: one code point alone */
}

/* llama3: (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static void s_split_llama3(s_ctx *c, size_t ini, size_t end, size_t max_digits) {
    size_t prev = ini;
    for (size_t pos = ini; pos < end;) {
        const uint32_t cpt = c->cp[pos];
        const uint8_t f = s_flags_at(c, pos, end);
        size_t k = s_contraction(c, pos, end, true);
        if (k) {
            pos += k;
            s_add_end(c, &prev, pos);
            continue;
        }
        if (!(cpt == '\r' || cpt == '\n' || (f & MS_UCP_NUMBER)) &&
            ((f & MS_UCP_LETTER) || (s_flags_at(c, pos + 1, end) & MS_UCP_LETTER))) {
            pos++;
            while (s_flags_at(c, pos, end) & MS_UCP_LETTER) pos++;
            s_add_end(c, &prev, pos);
            continue;
        }
        if (f & MS_UCP_NUMBER) {
            size_t i0 = pos;
            while (s_flags_at(c, pos, end) & MS_UCP_NUMBER) {
                if (++pos - i0 >= max_digits) {
                    s_add_end(c, &prev, pos);
                    i0 = pos;
                }
            }
            s_add_end(c, &prev, pos);
            continue;
        }
        size_t p2 = pos + (cpt == ' ');
        if (p2 < end && !(s_flags_at(c, p2, end) & S_WLN)) {
            pos = p2;
            while (pos < end && !(s_flags_at(c, pos, end) & S_WLN)) pos++;
            while (pos < end && (c->cp[pos] == '\r' || c->cp[pos] == '\n')) pos++;
            s_add_end(c, &prev, pos);
            continue;
        }
        pos = s_whitespace(c, pos, end, true);
        s_add_end(c, &prev, pos);
    }
}

/* gpt2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static void s_split_gpt2(s_ctx *c, size_t ini, size_t end) {
    size_t prev = ini;
    for (size_t pos = ini; pos < end;) {
        const uint32_t cpt = c->cp[pos];
        size_t k = s_contraction(c, pos, end, false);
        if (k) {
            pos += k;
            s_add_end(c, &prev, pos);
            continue;
        }
        size_t p2 = pos + (cpt == ' ');
        uint8_t f2 = s_flags_at(c, p2, end);
        uint8_t cls = (f2 & MS_UCP_LETTER) ? MS_UCP_LETTER : (f2 & MS_UCP_NUMBER) ? MS_UCP_NUMBER : 0;
        if (cls) {
            pos = p2;
            while (s_flags_at(c, pos, end) & cls) pos++;
            s_add_end(c, &prev, pos);
            continue;
        }
        if (p2 < end && !(f2 & S_WLN)) {
            pos = p2;
            while (pos < end && !(s_flags_at(c, pos, end) & S_WLN)) pos++;
            s_add_end(c, &prev, pos);
            continue;
        }
        pos = s_whitespace(c, pos, end, false);
        s_add_end(c, &prev, pos);
    }
}

static bool s_is_default_punct(uint32_t cp) {
    return (ms_unicode_flags(cp) & MS_UCP_PUNCT) || cp == '$' || cp == '+' || cp == '<' || cp == '=' ||
           cp == '>' || cp == '^' || cp == '~' || cp == '|';
}

/* Isolated split on runs of a class: [\p{P}$+<=>^~|]+ (kind 0) or \p{N}+ (kind 1). */
static void s_split_runs(s_ctx *c, size_t ini, size_t end, int kind) {
    size_t prev = ini;
    for (size_t pos = ini; pos < end;) {
        bool in = kind == 0 ? s_is_default_punct(c->cp[pos]) : (ms_unicode_flags(c->cp[pos]) & MS_UCP_NUMBER);
        if (!in) {
            pos++;
            continue;
        }
        s_add_end(c, &prev, pos);
        while (pos < end && (kind == 0 ? s_is_default_punct(c->cp[pos])
                                       : (ms_unicode_flags(c->cp[pos]) & MS_UCP_NUMBER)))
            pos++;
        s_add_end(c, &prev, pos);
    }
    s_add_end(c, &prev, end);
}

/* Isolated split on [0-9][0-9][0-9]. */
static void s_split_digits3(s_ctx *c, size_t ini, size_t end) {
    size_t prev = ini;
    for (size_t pos = ini; pos < end;) {
        if (pos + 3 <= end && c->cp[pos] - '0' < 10 && c->cp[pos + 1] - '0' < 10 && c->cp[pos + 2] - '0' < 10) {
            s_add_end(c, &prev, pos);
            pos += 3;
            s_add_end(c, &prev, pos);
        } else {
            pos++;
        }
    }
    s_add_end(c, &prev, end);
}

/* Applies one split stage to every word of c->ends; result in c->ends. */
static void s_stage(s_ctx *c, int stage) {
    c->n_ends2 = 0;
    size_t a = 0;
    for (size_t i = 0; i < c->n_ends; i++) {
        size_t b = c->ends[i];
        switch (stage) {
        case 0: s_split_runs(c, a, b, 0); break;
        case 1: s_split_gpt2(c, a, b); break;
        case 2: s_split_runs(c, a, b, 1); break;
        default: s_split_digits3(c, a, b); break;
        }
        a = b;
    }
    size_t *tmp = c->ends;
    c->ends = c->ends2;
    c->ends2 = tmp;
    c->n_ends = c->n_ends2;
}

static void s_bpe(s_ctx *c, const char *text, size_t len) {
    const uint8_t *s = (const uint8_t *)text;
    if (c->cap_cp < len + 1) {
        c->cap_cp = MS_MAX(len + 1, c->cap_cp * 2 + 16);
        c->cp = ms_xrealloc(c->cp, c->cap_cp * sizeof *c->cp);
        c->cp_off = ms_xrealloc(c->cp_off, c->cap_cp * sizeof *c->cp_off);
    }
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        size_t l;
        c->cp[n] = s_utf8_next(s, len, i, &l);
        c->cp_off[n] = (uint32_t)i;
        i += l;
    }
    c->cp_off[n] = (uint32_t)len;
    /* ends and ends2 share one capacity: grow both together */
    if (c->cap_ends < n + 1) {
        size_t cap = MS_MAX(n + 1, c->cap_ends * 2 + 16);
        c->ends = ms_xrealloc(c->ends, cap * sizeof *c->ends);
        c->ends2 = ms_xrealloc(c->ends2, cap * sizeof *c->ends2);
        c->cap_ends = cap;
    }
    c->n_ends2 = 0;
    switch (c->t->pre) {
    case S_PRE_LLAMA3: s_split_llama3(c, 0, n, 3); break;
    case S_PRE_QWEN2: s_split_llama3(c, 0, n, 1); break;
    case S_PRE_GPT2: s_split_gpt2(c, 0, n); break;
    default:
        c->ends2[0] = n;
        c->n_ends2 = n ? 1 : 0;
        break;
    }
    size_t *tmp = c->ends;
    c->ends = c->ends2;
    c->ends2 = tmp;
    c->n_ends = c->n_ends2;
    if (c->t->pre == S_PRE_DEFAULT)
        for (int stage = 0; stage < 4; stage++) s_stage(c, stage);
    size_t a = 0;
    for (size_t i = 0; i < c->n_ends; i++) {
        size_t b = c->ends[i];
        s_bpe_word(c, s + c->cp_off[a], c->cp_off[b] - c->cp_off[a]);
        a = b;
    }
}

/* ---- special tokens ------------------------------------------------------------ */

typedef struct {
    size_t pos, len; /* bytes of the fragment in the text */
    int32_t id;      /* special token, or -1 for raw text */
} s_frag;

typedef struct {
    int32_t rank; /* index in t->special */
    size_t pos;   /* byte offset of the occurrence */
} s_occ;

static int s_cmp_occ(const void *a, const void *b) {
    const s_occ *x = a, *y = b;
    if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static int s_cmp_frag(const void *a, const void *b) {
    const s_frag *x = a, *y = b;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Cuts text into raw and special-token fragments with the result of
 * llama.cpp's tokenizer_st_partition: special tokens in order (longest
 * first), each taking its leftmost non-overlapping occurrences in what is
 * still raw text. Control and unknown tokens only when parse_special. */
static s_frag *s_partition(const ms_tokenizer *t, const char *text, size_t len, bool parse_special,
                           size_t *n_frag) {
    const uint8_t *s = (const uint8_t *)text;
    s_occ *occ = NULL;
    size_t n_occ = 0, cap_occ = 0;
    for (size_t p = 0; t->n_special && p < len; p++) {
        bool one = t->spec_first1[s[p]];
        bool two = p + 1 < len && (t->spec_first2[(s[p] << 8 | s[p + 1]) >> 3] & (1u << (s[p + 1] & 7)));
        if (!one && !two) continue;
        for (int32_t k = 0; k < t->n_spec_lens; k++) {
            size_t l = (size_t)t->spec_lens[k];
            if (p + l > len || (l == 1 && !one) || (l > 1 && !two)) continue;
            int32_t id = s_token(t, text + p, l);
            if (id < 0 || t->spec_rank[id] < 0) continue;
            if (!parse_special && t->v.types[id] != MS_TOKEN_USER_DEFINED) continue;
            S_GROW(occ, cap_occ, n_occ + 1);
            occ[n_occ++] = (s_occ){t->spec_rank[id], p};
        }
    }
    s_frag *f;
    if (n_occ == 0) {
        f = ms_xmalloc(sizeof *f);
        f[0] = (s_frag){0, len, -1};
        *n_frag = len ? 1 : 0;
        return f;
    }
    qsort(occ, n_occ, sizeof *occ, s_cmp_occ);
    uint8_t *claimed = ms_xcalloc(len, 1);
    f = ms_xmalloc((2 * n_occ + 1) * sizeof *f);
    size_t n = 0;
    for (size_t i = 0; i < n_occ; i++) {
        int32_t id = t->special[occ[i].rank];
        size_t p = occ[i].pos, l = (size_t)t->piece_len[id];
        if (memchr(claimed + p, 1, l)) continue;
        memset(claimed + p, 1, l);
        f[n++] = (s_frag){p, l, id};
    }
    free(claimed);
    free(occ);
    qsort(f, n, sizeof *f, s_cmp_frag);
    /* interleave the raw text between the special fragments */
    size_t n_spec = n, at = 0;
    s_frag *out = ms_xmalloc((2 * n_spec + 1) * sizeof *out);
    n = 0;
    for (size_t i = 0; i < n_spec; i++) {
        if (f[i].pos > at) out[n++] = (s_frag){at, f[i].pos - at, -1};
        out[n++] = f[i];
        at = f[i].pos + f[i].len;
    }
    if (at < len) out[n++] = (s_frag){at, len - at, -1};
    free(f);
    *n_frag = n;
    return out;
}

/* ---- encode -------------------------------------------------------------------- */

int ms_tokenizer_encode(const ms_tokenizer *t, const char *text, size_t len, bool add_bos,
                        bool parse_special, int32_t *ids, int cap, char *err, size_t err_size) {
    if (len > S_MAX_TEXT)
        return ms_errf(err, err_size, "text of %zu bytes is over the limit of %zu", len, S_MAX_TEXT);
    if (!text && len) return ms_errf(err, err_size, "text is NULL");
    s_ctx c = {.t = t};
    if (add_bos && t->v.bos_id >= 0) s_emit(&c, t->v.bos_id);
    size_t n_frag;
    s_frag *frag = s_partition(t, text, len, parse_special, &n_frag);
    bool prev_special = true; /* SPM: a space is prepended at the start and after specials */
    for (size_t i = 0; i < n_frag; i++) {
        if (frag[i].id >= 0) {
            s_emit(&c, frag[i].id);
            prev_special = true;
            continue;
        }
        if (t->kind == S_SPM) {
            s_spm(&c, text + frag[i].pos, frag[i].len, t->v.add_space_prefix && prev_special);
            prev_special = false;
        } else {
            s_bpe(&c, text + frag[i].pos, frag[i].len);
        }
    }
    free(frag);
    size_t n = c.n_out;
    if (ids && cap > 0 && n > 0) memcpy(ids, c.out, MS_MIN(n, (size_t)cap) * sizeof *ids);
    free(c.out);
    free(c.buf);
    free(c.sym);
    free(c.heap);
    free(c.cp);
    free(c.cp_off);
    free(c.ends);
    free(c.ends2);
    return (int)n;
}

/* ---- decode -------------------------------------------------------------------- */

static void s_put(char *out, int cap, int *n, const char *s, int k) {
    if (*n < cap) memcpy(out + *n, s, (size_t)MS_MIN(k, cap - *n));
    *n += k;
}

static int s_hex(char ch) {
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

int ms_tokenizer_piece(const ms_tokenizer *t, int32_t id, bool special, char *out, int cap) {
    if (id < 0 || id >= t->v.n_tokens) return 0;
    if (!out) cap = 0;
    const char *s = t->v.tokens[id];
    const int len = t->piece_len[id];
    int n = 0;
    switch (t->v.types[id]) {
    case MS_TOKEN_CONTROL:
    case MS_TOKEN_UNKNOWN:
        if (special) s_put(out, cap, &n, s, len);
        return n;
    case MS_TOKEN_USER_DEFINED: s_put(out, cap, &n, s, len); return n;
    case MS_TOKEN_BYTE:
        if (t->kind == S_SPM && len == 6 && s_hex(s[3]) >= 0 && s_hex(s[4]) >= 0) {
            char b = (char)(s_hex(s[3]) << 4 | s_hex(s[4]));
            s_put(out, cap, &n, &b, 1);
        }
        return n;
    case MS_TOKEN_NORMAL: break;
    default: return 0;
    }
    if (t->kind == S_SPM) {
        for (int i = 0; i < len;) {
            if (i + 3 <= len && memcmp(s + i, S_SPACE_UTF8, 3) == 0) {
                s_put(out, cap, &n, " ", 1);
                i += 3;
            } else {
                s_put(out, cap, &n, s + i, 1);
                i++;
            }
        }
        return n;
    }
    for (size_t i = 0; i < (size_t)len;) {
        size_t l;
        uint32_t cp = s_utf8_next((const uint8_t *)s, (size_t)len, i, &l);
        if (cp < 512 && t->bl_dec[cp] >= 0 && cp != S_REPLACEMENT) {
            char b = (char)t->bl_dec[cp];
            s_put(out, cap, &n, &b, 1);
        } else {
            s_put(out, cap, &n, s + i, (int)l);
        }
        i += l;
    }
    return n;
}

/* ---- streaming detokenizer ----------------------------------------------------- */

void ms_detok_init(ms_detok *d, const ms_tokenizer *t, bool special) {
    memset(d, 0, sizeof *d);
    d->tok = t;
    d->first = true;
    d->special = special;
}

/* Length of the complete, valid UTF-8 sequence at s[0..n): > 0 complete;
 * 0 a valid but unfinished prefix; -1 invalid lead/continuation. */
static int s_utf8_seq(const uint8_t *s, size_t n) {
    uint8_t b = s[0];
    int need;
    uint8_t lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) need = 2;
    else if (b >= 0xE0 && b <= 0xEF) need = 3, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
    else if (b >= 0xF0 && b <= 0xF4) need = 4, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
    else return -1;
    for (int k = 1; k < need; k++) {
        if ((size_t)k >= n) return 0;
        uint8_t x = s[k];
        if (k == 1 ? (x < lo || x > hi) : (x & 0xC0) != 0x80) return -1;
    }
    return need;
}

/* Appends k bytes if they fit before the terminator. */
static void s_out_bytes(char *out, int cap, int *n, const char *s, int k) {
    if (*n + k <= cap - 1) {
        memcpy(out + *n, s, (size_t)k);
        *n += k;
    }
}

int ms_detok_push(ms_detok *d, int32_t id, char *out, int cap) {
    assert(cap >= 256 && "ms_detok_push needs cap >= 256");
    const ms_tokenizer *t = d->tok;
    char local[512];
    int len = ms_tokenizer_piece(t, id, d->special, local, (int)sizeof local - 8);
    char *buf = local;
    if (len > (int)sizeof local - 8) {
        buf = ms_xmalloc((size_t)len + 8);
        ms_tokenizer_piece(t, id, d->special, buf + d->n_pending, len);
    } else {
        memmove(local + d->n_pending, local, (size_t)len);
    }
    memcpy(buf, d->pending, (size_t)d->n_pending);
    int total = d->n_pending + len, i = 0, n = 0;
    if (d->first && len > 0) {
        if (t->kind == S_SPM && t->v.add_space_prefix && d->n_pending == 0 && buf[0] == ' ') i = 1;
        d->first = false;
    }
    d->n_pending = 0;
    while (i < total) {
        int k = s_utf8_seq((const uint8_t *)buf + i, (size_t)(total - i));
        if (k > 0) {
            s_out_bytes(out, cap, &n, buf + i, k);
            i += k;
        } else if (k == 0) {
            d->n_pending = total - i; /* at most 3 bytes */
            memcpy(d->pending, buf + i, (size_t)d->n_pending);
            break;
        } else {
            s_out_bytes(out, cap, &n, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    out[n] = 0;
    if (buf != local) free(buf);
    return n;
}

int ms_detok_flush(ms_detok *d, char *out, int cap) {
    int n = 0;
    if (d->n_pending > 0) s_out_bytes(out, cap, &n, "\xEF\xBF\xBD", 3);
    d->n_pending = 0;
    if (cap > 0) out[n] = 0;
    return n;
}
