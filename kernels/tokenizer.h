/* tokenizer.h — text ⇄ token ids from a GGUF vocabulary, as llama.cpp does.
 *
 * Two vocabulary kinds (GGUF tokenizer.ggml.model):
 *   "llama": SentencePiece-style BPE over the text with spaces as U+2581 and a
 *            leading space added, merges ranked by token score, unknown bytes
 *            falling back to <0xXX> tokens;
 *   "gpt2":  byte-level BPE (bytes mapped to printable code points) with
 *            ranked merges, after a regex pre-tokenizer chosen by
 *            tokenizer.ggml.pre ("llama-bpe" / "llama3", "qwen2", "default").
 * Special and control tokens (token_type 3 / 4 / user-defined 4) are matched
 * as whole strings in the input when parse_special is set.
 */
#ifndef MS_TOKENIZER_H
#define MS_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

/* llama.cpp's token types (tokenizer.ggml.token_type). */
enum {
    MS_TOKEN_UNDEFINED = 0,
    MS_TOKEN_NORMAL = 1,
    MS_TOKEN_UNKNOWN = 2,
    MS_TOKEN_CONTROL = 3,
    MS_TOKEN_USER_DEFINED = 4,
    MS_TOKEN_UNUSED = 5,
    MS_TOKEN_BYTE = 6,
};

/* A vocabulary as plain arrays: what GGUF stores, what the model generator
 * writes, and what tests build from Hugging Face tokenizer.json files. */
typedef struct ms_vocab {
    char model[16];    /* "llama" or "gpt2" */
    char pre[32];      /* pre-tokenizer name for gpt2 ("llama-bpe", "qwen2", "default") */
    int32_t n_tokens;  /* entries in tokens/scores/types */
    char **tokens;     /* token strings, NUL-terminated (GGUF form: ▁ for llama, byte-level for gpt2) */
    float *scores;     /* per token (llama: merge priority; may be NULL for gpt2) */
    int32_t *types;    /* per token, MS_TOKEN_* */
    int32_t n_merges;  /* gpt2 only */
    char **merges;     /* "left right", ranked */
    int32_t bos_id;    /* -1 if none */
    int32_t eos_id;    /* -1 if none */
    int32_t eot_id;    /* end of turn (<|eot_id|>, <|im_end|>), -1 if none */
    int32_t unk_id;    /* -1 if none */
    int32_t pad_id;    /* -1 if none */
    bool add_bos;      /* prepend BOS when encoding a prompt */
    bool add_space_prefix; /* llama: prepend a space to the text (default true) */
} ms_vocab;

/* Frees the arrays of v (not v itself) and zeroes it. */
void ms_vocab_fini(ms_vocab *v);
/* Loads a Hugging Face tokenizer.json (BPE model; byte-level or SentencePiece
 * style with byte fallback, detected from its pre_tokenizer/decoder) into v,
 * plus the custom {vocab, merges} JSON of ../shared/data/tokenizers/llama2.*
 * (scores derived from merge rank). 0 or -1 + err. */
int ms_vocab_load_json(const char *path, ms_vocab *v, char *err, size_t err_size);
/* Reads tokenizer.ggml.* from a GGUF file. 0 or -1 + err naming the key. */
int ms_vocab_from_gguf(const ms_gguf *g, ms_vocab *v, char *err, size_t err_size);
/* Writes tokenizer.ggml.* keys (llama.cpp's names and types) for v. */
void ms_vocab_to_gguf(const ms_vocab *v, ms_gguf_writer *w);

typedef struct ms_tokenizer ms_tokenizer;

/* Builds a tokenizer from a vocabulary (copied). NULL + err on failure. */
ms_tokenizer *ms_tokenizer_new(const ms_vocab *v, char *err, size_t err_size);
ms_tokenizer *ms_tokenizer_from_gguf(const ms_gguf *g, char *err, size_t err_size);
void ms_tokenizer_destroy(ms_tokenizer **t_p);

const ms_vocab *ms_tokenizer_vocab(const ms_tokenizer *t);
int32_t ms_tokenizer_n_vocab(const ms_tokenizer *t);
/* Token id of an exact token string, or -1. */
int32_t ms_tokenizer_find(const ms_tokenizer *t, const char *token);
/* True for end-of-generation tokens (eos, eot). */
bool ms_tokenizer_is_eog(const ms_tokenizer *t, int32_t id);

/* Encodes len bytes of text. add_bos prepends BOS if the vocab has one;
 * parse_special matches special-token strings. Writes up to cap ids into ids
 * and returns the total count (which may exceed cap: call again with more
 * room), or -1 + err (invalid UTF-8 is not an error: it is encoded as bytes). */
int ms_tokenizer_encode(const ms_tokenizer *t, const char *text, size_t len, bool add_bos,
                        bool parse_special, int32_t *ids, int cap, char *err, size_t err_size);

/* Raw bytes a token stands for (▁ → space, <0xNN> → byte, byte-level decoding
 * for gpt2; special tokens render as their text only if `special`). Writes up
 * to cap bytes, returns the full length. */
int ms_tokenizer_piece(const ms_tokenizer *t, int32_t id, bool special, char *out, int cap);

/* Streaming detokenizer: feed ids one by one, get only complete UTF-8 text
 * (a multi-byte character split across tokens is held back until complete).
 * For llama vocabs the leading space of the first piece is dropped, as
 * llama.cpp does. Output is always valid UTF-8: bytes that cannot start or
 * continue a character become U+FFFD; characters that do not fit in cap are
 * dropped (the longest Llama 3 piece is 128 bytes). */
typedef struct ms_detok {
    const ms_tokenizer *tok; /* not owned */
    char pending[8];         /* bytes of an unfinished UTF-8 character */
    int n_pending;           /* bytes in pending */
    bool first;              /* no text emitted yet */
    bool special;            /* render special tokens */
} ms_detok;

void ms_detok_init(ms_detok *d, const ms_tokenizer *t, bool special);
/* Appends the text completed by `id` to out (up to cap bytes, NUL-terminated);
 * returns bytes written. cap must be at least 256. */
int ms_detok_push(ms_detok *d, int32_t id, char *out, int cap);
/* Emits any held-back bytes (as U+FFFD if incomplete); returns bytes written. */
int ms_detok_flush(ms_detok *d, char *out, int cap);

#endif
