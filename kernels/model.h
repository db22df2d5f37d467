/* model.h — the two model files of a vision-language model, as llama.cpp
 * names them: a text model (general.architecture "llama" or "qwen2") and an
 * mmproj (general.architecture "clip": a CLIP-style ViT and an "mlp"
 * projector into the text model's embedding space).
 *
 * Loading validates every hyperparameter and every tensor's presence, type and
 * shape against llama.cpp's key and tensor names (see docs/model-format.md)
 * and returns NULL with one line naming what is wrong. Weights stay in the
 * read-only mapping of the file (ms_tensor.data points into it).
 *
 * Shapes are in ggml order (ne[0] first). A linear layer mapping K inputs to M
 * outputs has weight ne = {K, M} and bias ne = {M}. 1-D tensors (norms,
 * biases, embeddings of the class token) are F32.
 */
#ifndef MS_MODEL_H
#define MS_MODEL_H

#include "gguf.h"
#include "image.h"
#include "tokenizer.h"

typedef enum ms_arch { MS_ARCH_LLAMA = 0, MS_ARCH_QWEN2 = 1 } ms_arch;

/* Sanity limits the loader enforces on hyperparameters (values past them are
 * rejected as malformed, whatever the tensors say). */
#define MS_MODEL_MAX_LAYERS 1024      /* blocks of either model */
#define MS_MODEL_MAX_EMBD   65536     /* embedding width */
#define MS_MODEL_MAX_FF     (1 << 20) /* feed-forward width */
#define MS_MODEL_MAX_HEADS  1024      /* attention heads */
#define MS_MODEL_MAX_CTX    (1 << 24) /* training context, tokens */
#define MS_MODEL_MAX_VOCAB  (1 << 24) /* tokens */
#define MS_MODEL_MAX_IMAGE  4096      /* ViT input side, pixels */

/* ---- text model ----------------------------------------------------------- */
typedef struct ms_lm_hparams {
    ms_arch arch;         /* llama | qwen2 */
    int n_vocab;          /* tokens; rows of token_embd */
    int n_ctx_train;      /* {arch}.context_length */
    int n_embd;           /* {arch}.embedding_length */
    int n_layer;          /* {arch}.block_count */
    int n_ff;             /* {arch}.feed_forward_length */
    int n_head;           /* {arch}.attention.head_count */
    int n_head_kv;        /* {arch}.attention.head_count_kv (defaults to n_head) */
    int head_dim;         /* n_embd / n_head */
    int n_rot;            /* {arch}.rope.dimension_count (defaults to head_dim) */
    float rms_eps;        /* {arch}.attention.layer_norm_rms_epsilon */
    float rope_freq_base; /* {arch}.rope.freq_base (default 10000) */
    bool rope_neox;       /* false for llama (adjacent pairs), true for qwen2 (halves) */
} ms_lm_hparams;

typedef struct ms_lm_layer {
    ms_tensor *attn_norm; /* blk.N.attn_norm.weight   (n_embd) */
    ms_tensor *wq;        /* blk.N.attn_q.weight      (n_embd, n_head*head_dim) */
    ms_tensor *wk;        /* blk.N.attn_k.weight      (n_embd, n_head_kv*head_dim) */
    ms_tensor *wv;        /* blk.N.attn_v.weight      (n_embd, n_head_kv*head_dim) */
    ms_tensor *wo;        /* blk.N.attn_output.weight (n_head*head_dim, n_embd) */
    ms_tensor *bq;        /* blk.N.attn_q.bias (qwen2; NULL for llama) */
    ms_tensor *bk;        /* blk.N.attn_k.bias (qwen2; NULL for llama) */
    ms_tensor *bv;        /* blk.N.attn_v.bias (qwen2; NULL for llama) */
    ms_tensor *ffn_norm;  /* blk.N.ffn_norm.weight    (n_embd) */
    ms_tensor *w_gate;    /* blk.N.ffn_gate.weight    (n_embd, n_ff) */
    ms_tensor *w_up;      /* blk.N.ffn_up.weight      (n_embd, n_ff) */
    ms_tensor *w_down;    /* blk.N.ffn_down.weight    (n_ff, n_embd) */
} ms_lm_layer;

typedef struct ms_lm {
    ms_gguf *file;             /* owns the mapping all tensors point into */
    ms_lm_hparams hp;          /* validated hyperparameters */
    ms_tensor *tok_embd;       /* token_embd.weight  (n_embd, n_vocab) */
    ms_tensor *output_norm;    /* output_norm.weight (n_embd) */
    ms_tensor *output;         /* output.weight (n_embd, n_vocab), or tok_embd when tied */
    ms_lm_layer *layers;       /* n_layer entries */
    ms_tokenizer *tok;         /* from tokenizer.ggml.* */
    const char *chat_template; /* tokenizer.chat_template, or NULL; owned by file */
    const char *name;          /* general.name or the file name; owned */
} ms_lm;

/* Loads and validates a text model. NULL + err on failure. */
ms_lm *ms_lm_load(const char *path, char *err, size_t err_size);
/* Same from an already-open GGUF (takes ownership of *g_p on success and on failure). */
ms_lm *ms_lm_from_gguf(ms_gguf **g_p, const char *name, char *err, size_t err_size);
void ms_lm_free(ms_lm **lm_p);

/* ---- vision tower + projector (mmproj) ------------------------------------ */
typedef struct ms_vit_hparams {
    int image_size;     /* clip.vision.image_size, pixels */
    int patch_size;     /* clip.vision.patch_size, pixels */
    int n_embd;         /* clip.vision.embedding_length */
    int n_ff;           /* clip.vision.feed_forward_length */
    int n_layer;        /* blocks run (and in `layers`): as llama.cpp does for llava-style mlp
                         * projectors, block_count - 1 (the last stored block is not used), or
                         * the single clip.vision.feature_layer when that key is present */
    int n_layer_file;   /* clip.vision.block_count: blocks stored in the file (>= n_layer) */
    int n_head;         /* clip.vision.attention.head_count */
    int proj_dim;       /* projector output width = mm.2.weight ne[1] (must equal the text
                         * model's n_embd); clip.vision.projection_dim is read but not used */
    int n_patches;      /* (image_size / patch_size)^2 */
    int n_image_tokens; /* tokens one image becomes in the prompt (n_patches for mlp) */
    float eps;          /* clip.vision.attention.layer_norm_epsilon */
    bool use_gelu;      /* clip.use_gelu: GELU, else quick GELU */
    bool has_class;     /* v.class_embd present (dropped before projection) */
    float mean[3];      /* clip.vision.image_mean */
    float std[3];       /* clip.vision.image_std */
    ms_image_fit fit;   /* preprocessing: MS_FIT_PAD for llava-style mlp projectors */
} ms_vit_hparams;

typedef struct ms_vit_layer {
    ms_tensor *ln1_w, *ln1_b;         /* v.blk.N.ln1.{weight,bias}       (n_embd) */
    ms_tensor *q_w, *q_b;             /* v.blk.N.attn_q.{weight,bias}    (n_embd, n_embd) */
    ms_tensor *k_w, *k_b;             /* v.blk.N.attn_k.{weight,bias} */
    ms_tensor *v_w, *v_b;             /* v.blk.N.attn_v.{weight,bias} */
    ms_tensor *o_w, *o_b;             /* v.blk.N.attn_out.{weight,bias} */
    ms_tensor *ln2_w, *ln2_b;         /* v.blk.N.ln2.{weight,bias}       (n_embd) */
    ms_tensor *ff_up_w, *ff_up_b;     /* fc1: (n_embd, n_ff) + (n_ff)  */
    ms_tensor *ff_down_w, *ff_down_b; /* fc2: (n_ff, n_embd) + (n_embd) */
} ms_vit_layer;

typedef struct ms_vit {
    ms_gguf *file;                /* owns the mapping */
    ms_vit_hparams hp;            /* validated hyperparameters */
    ms_tensor *patch_w;           /* v.patch_embd.weight (patch, patch, 3, n_embd) */
    ms_tensor *patch_b;           /* v.patch_embd.bias (n_embd) or NULL */
    ms_tensor *class_embd;        /* v.class_embd (n_embd) or NULL */
    ms_tensor *pos_embd;          /* v.position_embd.weight (n_embd, n_patches + has_class) */
    ms_tensor *pre_ln_w, *pre_ln_b;   /* v.pre_ln.{weight,bias} or NULL */
    ms_tensor *post_ln_w, *post_ln_b; /* v.post_ln.{weight,bias} or NULL */
    ms_vit_layer *layers;         /* n_layer entries */
    ms_tensor *mm0_w, *mm0_b;     /* mm.0.{weight,bias}: (n_embd, proj_dim) */
    ms_tensor *mm2_w, *mm2_b;     /* mm.2.{weight,bias}: (proj_dim, proj_dim), after GELU */
} ms_vit;

ms_vit *ms_vit_load(const char *path, char *err, size_t err_size);
ms_vit *ms_vit_from_gguf(ms_gguf **g_p, char *err, size_t err_size);
void ms_vit_free(ms_vit **vit_p);

#endif
