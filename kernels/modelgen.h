/* modelgen.h — writing vision-language models from a seed: a text model
 * (llama / qwen2) and an mmproj (CLIP-style ViT + llava "mlp" projector), with
 * llama.cpp's key names, key types and tensor names (docs/model-format.md),
 * so that both modserve and llama.cpp load them.
 *
 * Weights come from a counter-based generator (splitmix64 of seed, tensor name
 * and row, mapped to uniform floats with plain arithmetic), so a model is
 * bit-identical on every machine and any row of any tensor can be recomputed
 * on its own. Most weights are uniform with a unit-gain scale; two things are
 * shaped on purpose:
 *   - the output matrix makes the next token a strong function of the current
 *     one (row v of output.weight is a scaled sum of the token embeddings of
 *     the tokens whose successor is v, successors following a seeded cyclic
 *     order of the printable normal tokens), so greedy decoding has large
 *     top-1 margins and is robust to rounding differences between engines;
 *   - the residual branches (attn_output, ffn_down) are scaled by
 *     MS_MODELGEN_RESIDUAL_GAIN / sqrt(2 n_layer), so attention and the MLPs
 *     move the logits (context matters) without swamping that margin.
 *
 * Presets (numbers in docs/model-format.md):
 *   tiny   tests: qwen2, builtin vocab, f32, LM 2×64, ViT 2×32 at 32 px;
 *   demo   llama, llama2 vocab when found, q8_0, LM 6×256, ViT 6×192 at 224 px;
 *   bench  llama, llama3 vocab when found, q8_0, LM 16×1024 (~440M params),
 *          ViT-B/16 at 224 px (12 blocks run).
 */
#ifndef MS_MODELGEN_H
#define MS_MODELGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "model.h"
#include "tokenizer.h"

#define MS_MODELGEN_RESIDUAL_GAIN  1.0f  /* total gain of the residual branches, see above */
#define MS_MODELGEN_LOGIT_TARGET   20.0f /* typical logit of the predicted token */
#define MS_MODELGEN_NORM_SPREAD    0.1f  /* std of norm weights around 1 */
#define MS_MODELGEN_BUILTIN_MERGES 400   /* BPE merges learned for the builtin vocabulary */
#define MS_MODELGEN_MAX_PATH       1024  /* longest vocabulary path kept in a config */

/* Everything that decides a generated model. */
typedef struct ms_modelgen_cfg {
    char preset[16]; /* "tiny", "demo", "bench": names the files <preset>-lm.gguf ... */
    ms_arch arch;    /* text model architecture */
    ms_type type;    /* 2-D weights: F32, F16, BF16, Q8_0 or Q4_0 (F16 where a row does
                      * not fit the block size); 1-D tensors are always F32 */
    uint64_t seed;   /* weights and the successor order */
    /* vocabulary: "builtin", a Hugging Face tokenizer.json, or a {vocab, merges} JSON */
    char vocab[MS_MODELGEN_MAX_PATH];
    /* the names of files in the shared tokenizer folder this preset prefers,
     * best first (resolved by the caller; "builtin" when none is found) */
    const char *vocab_wish[2];
    /* text model */
    int n_ctx;            /* {arch}.context_length */
    int n_embd;           /* {arch}.embedding_length */
    int n_layer;          /* {arch}.block_count */
    int n_ff;             /* {arch}.feed_forward_length */
    int n_head;           /* {arch}.attention.head_count */
    int n_head_kv;        /* {arch}.attention.head_count_kv */
    float rms_eps;        /* {arch}.attention.layer_norm_rms_epsilon */
    float rope_freq_base; /* {arch}.rope.freq_base */
    bool tie_output;      /* omit output.weight (tied to token_embd) */
    float residual_gain;  /* total gain of the residual branches (MS_MODELGEN_RESIDUAL_GAIN) */
    /* vision tower (mmproj); the projector maps to n_embd */
    int v_image_size; /* clip.vision.image_size, pixels */
    int v_patch_size; /* clip.vision.patch_size, pixels */
    int v_n_embd;     /* clip.vision.embedding_length */
    int v_n_ff;       /* clip.vision.feed_forward_length */
    int v_n_layer;    /* blocks run; block_count = v_n_layer + 1 are stored (see model.h) */
    int v_n_head;     /* clip.vision.attention.head_count */
    float v_eps;      /* clip.vision.attention.layer_norm_epsilon */
    bool v_use_gelu;  /* clip.use_gelu (else quick GELU, as CLIP ViT-L) */
} ms_modelgen_cfg;

/* Optional edits while building, for tests that need a malformed variant. */
typedef struct ms_modelgen_hooks {
    /* Called for each key modelgen sets (not tokenizer.ggml.*): false leaves it out. */
    bool (*keep_key)(void *ud, const char *key);
    /* Called before each tensor: may change its type, n_dims and ne (the data
     * follows), or return false to leave it out. */
    bool (*tensor)(void *ud, const char *name, ms_type *type, int *n_dims, int64_t ne[MS_MAX_DIMS]);
    void *ud; /* passed back */
} ms_modelgen_hooks;

/* What was built (for printing). */
typedef struct ms_modelgen_stats {
    int64_t n_params;  /* elements over all tensors */
    int64_t n_tensors; /* tensors added */
    size_t n_bytes;    /* tensor data bytes */
} ms_modelgen_stats;

/* Fills cfg from a preset name. 0, or -1 + err naming the presets. */
int ms_modelgen_preset(const char *name, ms_modelgen_cfg *cfg, char *err, size_t err_size);
/* Parses "f32", "f16", "bf16", "q8_0", "q4_0". 0 or -1 + err. */
int ms_modelgen_parse_type(const char *s, ms_type *out, char *err, size_t err_size);

/* The builtin byte-level vocabulary ("gpt2", pre "qwen2"): 256 byte tokens,
 * MS_MODELGEN_BUILTIN_MERGES merges learned deterministically from an
 * embedded English/code text, then <|endoftext|>, <|im_start|>, <|im_end|>. */
void ms_modelgen_builtin_vocab(ms_vocab *v);
/* Loads "builtin" or a file (ms_vocab_load_json). *chat_template gets a
 * malloc'd template: the sibling tokenizer_config.json's chat_template when
 * there is one (foo.tokenizer.json → foo.tokenizer_config.json), else the
 * family's (ms_modelgen_chat_template). 0 or -1 + err. */
int ms_modelgen_load_vocab(const char *spec, ms_vocab *v, char **chat_template, char *err,
                           size_t err_size);
/* The template written for a vocabulary: Llama 3's if it has
 * <|start_header_id|>, ChatML if it has <|im_start|>, else Vicuna/LLaVA-1.5.
 * A static string. */
const char *ms_modelgen_chat_template(const ms_vocab *v);

/* Adds the text model's keys (tokenizer included) and tensors to w.
 * hooks and st may be NULL. 0, or -1 + err (an invalid configuration, or a
 * tensor the writer refused). */
int ms_modelgen_lm(const ms_modelgen_cfg *cfg, const ms_vocab *vocab, const char *chat_template,
                   const ms_modelgen_hooks *hooks, ms_gguf_writer *w, ms_modelgen_stats *st,
                   char *err, size_t err_size);
/* Adds the mmproj's keys and tensors to w (projecting to cfg->n_embd). */
int ms_modelgen_vit(const ms_modelgen_cfg *cfg, const ms_modelgen_hooks *hooks, ms_gguf_writer *w,
                    ms_modelgen_stats *st, char *err, size_t err_size);

/* Builds and writes both files, <dir>/<prefix>-lm.gguf and
 * <dir>/<prefix>-mmproj.gguf (prefix NULL = cfg->preset), creating dir if
 * needed. Stats per file in lm_st / vit_st (may be NULL). 0 or -1 + err. */
int ms_modelgen_write(const ms_modelgen_cfg *cfg, const char *dir, const char *prefix,
                      ms_modelgen_stats *lm_st, ms_modelgen_stats *vit_st, char *err,
                      size_t err_size);

#endif
