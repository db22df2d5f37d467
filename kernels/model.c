/* model.c — loading and validating the text model and the mmproj (see
 * model.h and docs/model-format.md for every key and tensor read).
 *
 * Each loader reads the hyperparameters with llama.cpp's key names, checks
 * them against the limits in model.h, then looks up every tensor with the
 * shape the hyperparameters imply. The first problem found is reported as one
 * line: "<file>: <what is wrong>". Nothing is copied: tensors point into the
 * GGUF mapping, which the returned model owns.
 */
#include "model.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

#define S_KEY_MAX   128 /* longest key or tensor name we build */
#define S_MASK_F32  (1ull << MS_TYPE_F32)
#define S_MASK_CONV ((1ull << MS_TYPE_F32) | (1ull << MS_TYPE_F16) | (1ull << MS_TYPE_BF16))

/* Every type the engine computes with: accepted for 2-D weights. */
static uint64_t s_mask_matrix(void) {
    uint64_t m = 0;
    for (uint32_t t = 0; t < 64; t++)
        if (ms_type_known(t)) m |= 1ull << t;
    return m;
}

/* ---- key helpers ------------------------------------------------------------ */

/* Reads a required unsigned count and checks lo <= value <= hi. */
static int s_count(const ms_gguf *g, const char *key, int lo, int hi, int *out, char *err,
                   size_t err_size) {
    uint32_t v;
    if (ms_gguf_get_u32(g, key, &v, err, err_size) != 0) return -1;
    if (v < (uint32_t)lo || v > (uint32_t)hi)
        return ms_errf(err, err_size, "key '%s' = %u is out of range [%d, %d]", key, v, lo, hi);
    *out = (int)v;
    return 0;
}

/* Optional count: def when the key is absent. */
static int s_count_opt(const ms_gguf *g, const char *key, int lo, int hi, int def, int *out,
                       char *err, size_t err_size) {
    if (ms_gguf_find_key(g, key) < 0) {
        *out = def;
        return 0;
    }
    return s_count(g, key, lo, hi, out, err, err_size);
}

/* Required (def < 0 means required) or optional float in (0, hi]. */
static int s_float(const ms_gguf *g, const char *key, float hi, float def, float *out, char *err,
                   size_t err_size) {
    if (def >= 0 && ms_gguf_find_key(g, key) < 0) {
        *out = def;
        return 0;
    }
    float v;
    if (ms_gguf_get_f32(g, key, &v, err, err_size) != 0) return -1;
    if (!(v > 0.0f) || !(v <= hi) || !isfinite(v))
        return ms_errf(err, err_size, "key '%s' = %g is out of range (0, %g]", key, (double)v,
                       (double)hi);
    *out = v;
    return 0;
}

static int s_bool_opt(const ms_gguf *g, const char *key, bool def, bool *out, char *err,
                      size_t err_size) {
    if (ms_gguf_find_key(g, key) < 0) {
        *out = def;
        return 0;
    }
    return ms_gguf_get_bool(g, key, out, err, err_size);
}

/* ---- tensor helpers --------------------------------------------------------- */

static ms_tensor *s_vec(ms_gguf *g, const char *name, int64_t n, char *err, size_t err_size) {
    const int64_t ne[1] = {n};
    return ms_gguf_expect_tensor(g, name, 1, ne, S_MASK_F32, err, err_size);
}

static ms_tensor *s_mat(ms_gguf *g, const char *name, int64_t k, int64_t m, char *err,
                        size_t err_size) {
    const int64_t ne[2] = {k, m};
    return ms_gguf_expect_tensor(g, name, 2, ne, s_mask_matrix(), err, err_size);
}

/* A 1-D F32 tensor that may be absent (NULL, no error); present means checked. */
static int s_vec_opt(ms_gguf *g, const char *name, int64_t n, ms_tensor **out, char *err,
                     size_t err_size) {
    *out = NULL;
    if (!ms_gguf_find_tensor(g, name)) return 0;
    *out = s_vec(g, name, n, err, err_size);
    return *out ? 0 : -1;
}

/* ---- text model ------------------------------------------------------------- */

static int s_lm_hparams(ms_lm *lm, char *err, size_t err_size) {
    const ms_gguf *g = lm->file;
    ms_lm_hparams *hp = &lm->hp;
    const char *arch;
    char key[S_KEY_MAX];

    if (ms_gguf_get_str(g, "general.architecture", &arch, err, err_size) != 0) return -1;
    if (strcmp(arch, "llama") == 0)
        hp->arch = MS_ARCH_LLAMA;
    else if (strcmp(arch, "qwen2") == 0)
        hp->arch = MS_ARCH_QWEN2;
    else
        return ms_errf(err, err_size, "unsupported architecture '%.64s' (expected llama or qwen2)",
                       arch);
    hp->rope_neox = hp->arch == MS_ARCH_QWEN2;

#define S_KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    if (s_count(g, S_KEY("context_length"), 1, MS_MODEL_MAX_CTX, &hp->n_ctx_train, err, err_size) !=
            0 ||
        s_count(g, S_KEY("embedding_length"), 1, MS_MODEL_MAX_EMBD, &hp->n_embd, err, err_size) !=
            0 ||
        s_count(g, S_KEY("block_count"), 1, MS_MODEL_MAX_LAYERS, &hp->n_layer, err, err_size) !=
            0 ||
        s_count(g, S_KEY("feed_forward_length"), 1, MS_MODEL_MAX_FF, &hp->n_ff, err, err_size) !=
            0 ||
        s_count(g, S_KEY("attention.head_count"), 1, MS_MODEL_MAX_HEADS, &hp->n_head, err,
                err_size) != 0)
        return -1;
    if (hp->n_embd % hp->n_head != 0)
        return ms_errf(err, err_size,
                       "%s.attention.head_count = %d does not divide "
                       "%s.embedding_length = %d",
                       arch, hp->n_head, arch, hp->n_embd);
    hp->head_dim = hp->n_embd / hp->n_head;
    if (s_count_opt(g, S_KEY("attention.head_count_kv"), 1, MS_MODEL_MAX_HEADS, hp->n_head,
                    &hp->n_head_kv, err, err_size) != 0)
        return -1;
    if (hp->n_head % hp->n_head_kv != 0)
        return ms_errf(err, err_size,
                       "%s.attention.head_count_kv = %d does not divide "
                       "%s.attention.head_count = %d",
                       arch, hp->n_head_kv, arch, hp->n_head);
    if (s_count_opt(g, S_KEY("rope.dimension_count"), 1, MS_MODEL_MAX_EMBD, hp->head_dim,
                    &hp->n_rot, err, err_size) != 0)
        return -1;
    if (hp->n_rot % 2 != 0 || hp->n_rot > hp->head_dim)
        return ms_errf(err, err_size,
                       "%s.rope.dimension_count = %d must be even and at most "
                       "the head size %d",
                       arch, hp->n_rot, hp->head_dim);
    if (s_float(g, S_KEY("attention.layer_norm_rms_epsilon"), 1.0f, -1.0f, &hp->rms_eps, err,
                err_size) != 0 ||
        s_float(g, S_KEY("rope.freq_base"), 1e12f, 10000.0f, &hp->rope_freq_base, err, err_size) !=
            0)
        return -1;
#undef S_KEY
    return 0;
}

static int s_lm_tensors(ms_lm *lm, char *err, size_t err_size) {
    ms_gguf *g = lm->file;
    ms_lm_hparams *hp = &lm->hp;
    const int64_t E = hp->n_embd, F = hp->n_ff;
    const int64_t Q = (int64_t)hp->n_head * hp->head_dim,
                  KV = (int64_t)hp->n_head_kv * hp->head_dim;

    ms_tensor *te = ms_gguf_find_tensor(g, "token_embd.weight");
    if (!te) return ms_errf(err, err_size, "missing tensor 'token_embd.weight'");
    if (te->n_dims != 2 || te->ne[1] < 1 || te->ne[1] > MS_MODEL_MAX_VOCAB)
        return ms_errf(err, err_size, "tensor 'token_embd.weight' must be 2-D with 1 to %d rows",
                       MS_MODEL_MAX_VOCAB);
    hp->n_vocab = (int)te->ne[1];
    const int64_t V = hp->n_vocab;
    if (!(lm->tok_embd = s_mat(g, "token_embd.weight", E, V, err, err_size)) ||
        !(lm->output_norm = s_vec(g, "output_norm.weight", E, err, err_size)))
        return -1;
    if (ms_gguf_find_tensor(g, "output.weight")) {
        if (!(lm->output = s_mat(g, "output.weight", E, V, err, err_size))) return -1;
    } else {
        lm->output = lm->tok_embd; /* tied */
    }

    lm->layers = ms_xcalloc((size_t)hp->n_layer, sizeof *lm->layers);
    char name[S_KEY_MAX];
#define S_N(fmt) (snprintf(name, sizeof name, "blk.%d." fmt, il), name)
    for (int il = 0; il < hp->n_layer; il++) {
        ms_lm_layer *L = &lm->layers[il];
        if (!(L->attn_norm = s_vec(g, S_N("attn_norm.weight"), E, err, err_size)) ||
            !(L->wq = s_mat(g, S_N("attn_q.weight"), E, Q, err, err_size)) ||
            !(L->wk = s_mat(g, S_N("attn_k.weight"), E, KV, err, err_size)) ||
            !(L->wv = s_mat(g, S_N("attn_v.weight"), E, KV, err, err_size)) ||
            !(L->wo = s_mat(g, S_N("attn_output.weight"), Q, E, err, err_size)) ||
            !(L->ffn_norm = s_vec(g, S_N("ffn_norm.weight"), E, err, err_size)) ||
            !(L->w_gate = s_mat(g, S_N("ffn_gate.weight"), E, F, err, err_size)) ||
            !(L->w_up = s_mat(g, S_N("ffn_up.weight"), E, F, err, err_size)) ||
            !(L->w_down = s_mat(g, S_N("ffn_down.weight"), F, E, err, err_size)))
            return -1;
        if (hp->arch == MS_ARCH_QWEN2 &&
            (!(L->bq = s_vec(g, S_N("attn_q.bias"), Q, err, err_size)) ||
             !(L->bk = s_vec(g, S_N("attn_k.bias"), KV, err, err_size)) ||
             !(L->bv = s_vec(g, S_N("attn_v.bias"), KV, err, err_size))))
            return -1;
    }
#undef S_N
    return 0;
}

static int s_lm_load(ms_lm *lm, const char *name, char *err, size_t err_size) {
    if (s_lm_hparams(lm, err, err_size) != 0 || s_lm_tensors(lm, err, err_size) != 0) return -1;
    const ms_gguf *g = lm->file;

    if (!(lm->tok = ms_tokenizer_from_gguf(g, err, err_size))) return -1;
    int32_t n_tok = ms_tokenizer_n_vocab(lm->tok);
    if (n_tok != lm->hp.n_vocab)
        return ms_errf(err, err_size,
                       "token_embd.weight has %d rows but the vocabulary has %d "
                       "tokens",
                       lm->hp.n_vocab, n_tok);

    lm->chat_template = NULL;
    if (ms_gguf_find_key(g, "tokenizer.chat_template") >= 0 &&
        ms_gguf_get_str(g, "tokenizer.chat_template", &lm->chat_template, err, err_size) != 0)
        return -1;

    const char *gname = NULL;
    if (ms_gguf_find_key(g, "general.name") >= 0 &&
        ms_gguf_get_str(g, "general.name", &gname, err, err_size) != 0)
        return -1;
    lm->name = ms_xstrdup(gname && *gname ? gname : name);
    return 0;
}

ms_lm *ms_lm_from_gguf(ms_gguf **g_p, const char *name, char *err, size_t err_size) {
    assert(g_p && *g_p);
    if (!name) name = "model";
    ms_lm *lm = ms_xcalloc(1, sizeof *lm);
    lm->file = *g_p;
    *g_p = NULL;
    char msg[MS_ERR_SIZE];
    if (s_lm_load(lm, name, msg, sizeof msg) != 0) {
        ms_errf(err, err_size, "%s: %s", name, msg);
        ms_lm_free(&lm);
        return NULL;
    }
    return lm;
}

ms_lm *ms_lm_load(const char *path, char *err, size_t err_size) {
    ms_gguf *g = ms_gguf_open(path, err, err_size);
    if (!g) return NULL;
    return ms_lm_from_gguf(&g, path, err, err_size);
}

void ms_lm_free(ms_lm **lm_p) {
    if (!lm_p || !*lm_p) return;
    ms_lm *lm = *lm_p;
    ms_tokenizer_destroy(&lm->tok);
    free(lm->layers);
    free((char *)lm->name);
    ms_gguf_close(&lm->file);
    free(lm);
    *lm_p = NULL;
}

/* ---- vision tower + projector ------------------------------------------------ */

/* Reads a 3-float F32 array (image_mean / image_std). */
static int s_float3(const ms_gguf *g, const char *key, bool positive, float out[3], char *err,
                    size_t err_size) {
    int64_t idx;
    uint64_t n;
    if (ms_gguf_get_arr(g, key, MS_GGUF_FLOAT32, &idx, &n, err, err_size) != 0) return -1;
    if (n != 3)
        return ms_errf(err, err_size, "key '%s' has %llu values, expected 3", key,
                       (unsigned long long)n);
    const uint8_t *p = ms_gguf_arr_data(g, idx);
    for (int i = 0; i < 3; i++) {
        memcpy(&out[i], p + 4 * i, 4);
        if (!isfinite(out[i]) || (positive && !(out[i] > 0.0f)))
            return ms_errf(err, err_size, "key '%s' has an invalid value %g", key, (double)out[i]);
    }
    return 0;
}

/* Blocks to run: the single clip.vision.feature_layer, else block_count - 1. */
static int s_vit_layers_run(const ms_gguf *g, ms_vit_hparams *hp, char *err, size_t err_size) {
    const char *key = "clip.vision.feature_layer";
    int64_t idx = ms_gguf_find_key(g, key);
    if (idx < 0) {
        if (hp->n_layer_file < 2)
            return ms_errf(err, err_size,
                           "clip.vision.block_count = %d: a llava-style mlp "
                           "projector uses the output of block_count - 1 blocks, so at least 2 "
                           "are needed",
                           hp->n_layer_file);
        hp->n_layer = hp->n_layer_file - 1;
        return 0;
    }
    ms_gguf_type et = ms_gguf_arr_type(g, idx);
    if (ms_gguf_kv_type(g, idx) != MS_GGUF_ARRAY || (et != MS_GGUF_INT32 && et != MS_GGUF_UINT32))
        return ms_errf(err, err_size, "key '%s' must be an array of int32", key);
    if (ms_gguf_arr_n(g, idx) != 1)
        return ms_errf(err, err_size,
                       "key '%s' lists %llu layers: only one feature layer is "
                       "supported",
                       key, (unsigned long long)ms_gguf_arr_n(g, idx));
    int32_t f;
    memcpy(&f, ms_gguf_arr_data(g, idx), 4);
    if (f < 1 || f > hp->n_layer_file)
        return ms_errf(err, err_size, "key '%s' = %d is out of range [1, %d]", key, (int)f,
                       hp->n_layer_file);
    hp->n_layer = f;
    return 0;
}

static int s_vit_hparams(ms_vit *vit, char *err, size_t err_size) {
    const ms_gguf *g = vit->file;
    ms_vit_hparams *hp = &vit->hp;
    const char *s;

    if (ms_gguf_get_str(g, "general.architecture", &s, err, err_size) != 0) return -1;
    if (strcmp(s, "clip") != 0)
        return ms_errf(err, err_size,
                       "unsupported architecture '%.64s' for an mmproj "
                       "(expected clip)",
                       s);
    bool has_vision = true;
    if (s_bool_opt(g, "clip.has_vision_encoder", true, &has_vision, err, err_size) != 0) return -1;
    if (!has_vision) return ms_errf(err, err_size, "clip.has_vision_encoder is false");

    /* projector: clip.projector_type, else clip.vision.projector_type, else mlp */
    const char *proj = "mlp";
    const char *pkey =
        ms_gguf_find_key(g, "clip.projector_type") >= 0
            ? "clip.projector_type"
            : (ms_gguf_find_key(g, "clip.vision.projector_type") >= 0 ? "clip.vision.projector_type"
                                                                      : NULL);
    if (pkey && ms_gguf_get_str(g, pkey, &proj, err, err_size) != 0) return -1;
    if (strcmp(proj, "mlp") != 0)
        return ms_errf(err, err_size, "unsupported projector type '%.64s' (expected mlp)", proj);
    if (ms_gguf_find_key(g, "clip.vision.image_grid_pinpoints") >= 0)
        return ms_errf(err, err_size,
                       "clip.vision.image_grid_pinpoints (LLaVA-1.6 any-resolution "
                       "tiling) is not supported");

    if (s_count(g, "clip.vision.image_size", 1, MS_MODEL_MAX_IMAGE, &hp->image_size, err,
                err_size) != 0 ||
        s_count(g, "clip.vision.patch_size", 1, MS_MODEL_MAX_IMAGE, &hp->patch_size, err,
                err_size) != 0 ||
        s_count(g, "clip.vision.embedding_length", 1, MS_MODEL_MAX_EMBD, &hp->n_embd, err,
                err_size) != 0 ||
        s_count(g, "clip.vision.feed_forward_length", 1, MS_MODEL_MAX_FF, &hp->n_ff, err,
                err_size) != 0 ||
        s_count(g, "clip.vision.block_count", 1, MS_MODEL_MAX_LAYERS, &hp->n_layer_file, err,
                err_size) != 0 ||
        s_count(g, "clip.vision.attention.head_count", 1, MS_MODEL_MAX_HEADS, &hp->n_head, err,
                err_size) != 0)
        return -1;
    int proj_dim_key;
    if (s_count(g, "clip.vision.projection_dim", 0, MS_MODEL_MAX_EMBD, &proj_dim_key, err,
                err_size) != 0)
        return -1;
    if (hp->image_size % hp->patch_size != 0)
        return ms_errf(err, err_size,
                       "clip.vision.patch_size = %d does not divide "
                       "clip.vision.image_size = %d",
                       hp->patch_size, hp->image_size);
    if (hp->n_embd % hp->n_head != 0)
        return ms_errf(err, err_size,
                       "clip.vision.attention.head_count = %d does not divide "
                       "clip.vision.embedding_length = %d",
                       hp->n_head, hp->n_embd);
    if (s_vit_layers_run(g, hp, err, err_size) != 0) return -1;
    if (s_float(g, "clip.vision.attention.layer_norm_epsilon", 1.0f, -1.0f, &hp->eps, err,
                err_size) != 0 ||
        s_float3(g, "clip.vision.image_mean", false, hp->mean, err, err_size) != 0 ||
        s_float3(g, "clip.vision.image_std", true, hp->std, err, err_size) != 0)
        return -1;

    bool use_silu = false;
    if (s_bool_opt(g, "clip.use_gelu", false, &hp->use_gelu, err, err_size) != 0 ||
        s_bool_opt(g, "clip.use_silu", false, &use_silu, err, err_size) != 0)
        return -1;
    if (use_silu)
        return ms_errf(err, err_size,
                       "clip.use_silu is set: SiLU vision encoders are not "
                       "supported (GELU or quick GELU)");

    const int side = hp->image_size / hp->patch_size;
    hp->n_patches = side * side;
    hp->n_image_tokens = hp->n_patches; /* mlp: one embedding per patch */
    hp->fit = MS_FIT_PAD;
    return 0;
}

/* Finds a block's fc1/fc2 under either naming: llama.cpp's current one
 * (ffn_up = fc1) or the legacy converter's (ffn_down = fc1), decided like
 * llama.cpp by whether ffn_down takes n_embd inputs. */
static int s_vit_ffn(ms_gguf *g, int il, ms_vit_layer *L, const ms_vit_hparams *hp, char *err,
                     size_t err_size) {
    char up[S_KEY_MAX], down[S_KEY_MAX], upb[S_KEY_MAX], downb[S_KEY_MAX];
    snprintf(up, sizeof up, "v.blk.%d.ffn_up.weight", il);
    snprintf(down, sizeof down, "v.blk.%d.ffn_down.weight", il);
    snprintf(upb, sizeof upb, "v.blk.%d.ffn_up.bias", il);
    snprintf(downb, sizeof downb, "v.blk.%d.ffn_down.bias", il);
    ms_tensor *d = ms_gguf_find_tensor(g, down);
    if (!ms_gguf_find_tensor(g, up)) return ms_errf(err, err_size, "missing tensor '%s'", up);
    if (!d) return ms_errf(err, err_size, "missing tensor '%s'", down);
    const bool swapped = d->ne[0] == hp->n_embd;
    const char *fc1 = swapped ? down : up, *fc2 = swapped ? up : down;
    const char *fc1b = swapped ? downb : upb, *fc2b = swapped ? upb : downb;
    if (!(L->ff_up_w = s_mat(g, fc1, hp->n_embd, hp->n_ff, err, err_size)) ||
        !(L->ff_up_b = s_vec(g, fc1b, hp->n_ff, err, err_size)) ||
        !(L->ff_down_w = s_mat(g, fc2, hp->n_ff, hp->n_embd, err, err_size)) ||
        !(L->ff_down_b = s_vec(g, fc2b, hp->n_embd, err, err_size)))
        return -1;
    return 0;
}

/* A LayerNorm pair prefix.{weight,bias}; optional pairs may be absent (both). */
static int s_vit_norm(ms_gguf *g, const char *prefix, int64_t n, bool required, ms_tensor **w,
                      ms_tensor **b, char *err, size_t err_size) {
    char wn[S_KEY_MAX], bn[S_KEY_MAX];
    snprintf(wn, sizeof wn, "%s.weight", prefix);
    snprintf(bn, sizeof bn, "%s.bias", prefix);
    *w = *b = NULL;
    if (!required && !ms_gguf_find_tensor(g, wn) && !ms_gguf_find_tensor(g, bn)) return 0;
    if (!(*w = s_vec(g, wn, n, err, err_size)) || !(*b = s_vec(g, bn, n, err, err_size))) return -1;
    return 0;
}

static int s_vit_tensors(ms_vit *vit, char *err, size_t err_size) {
    ms_gguf *g = vit->file;
    ms_vit_hparams *hp = &vit->hp;
    const int64_t E = hp->n_embd, p = hp->patch_size;

    const int64_t pne[4] = {p, p, 3, E};
    if (!(vit->patch_w =
              ms_gguf_expect_tensor(g, "v.patch_embd.weight", 4, pne, S_MASK_CONV, err, err_size)))
        return -1;
    if (ms_gguf_find_tensor(g, "v.patch_embd.weight.1"))
        return ms_errf(err, err_size,
                       "tensor 'v.patch_embd.weight.1' (a second patch "
                       "embedding, Qwen2-VL style) is not supported");
    if (s_vec_opt(g, "v.patch_embd.bias", E, &vit->patch_b, err, err_size) != 0 ||
        s_vec_opt(g, "v.class_embd", E, &vit->class_embd, err, err_size) != 0)
        return -1;
    hp->has_class = vit->class_embd != NULL;
    const int64_t posne[2] = {E, hp->n_patches + (hp->has_class ? 1 : 0)};
    if (!(vit->pos_embd = ms_gguf_expect_tensor(g, "v.position_embd.weight", 2, posne, S_MASK_CONV,
                                                err, err_size)))
        return -1;
    if (s_vit_norm(g, "v.pre_ln", E, false, &vit->pre_ln_w, &vit->pre_ln_b, err, err_size) != 0 ||
        s_vit_norm(g, "v.post_ln", E, false, &vit->post_ln_w, &vit->post_ln_b, err, err_size) != 0)
        return -1;

    vit->layers = ms_xcalloc((size_t)hp->n_layer, sizeof *vit->layers);
    char pre[S_KEY_MAX], name[S_KEY_MAX];
#define S_N(fmt) (snprintf(name, sizeof name, "v.blk.%d." fmt, il), name)
    for (int il = 0; il < hp->n_layer; il++) {
        ms_vit_layer *L = &vit->layers[il];
        if (ms_gguf_find_tensor(g, S_N("attn_qkv.weight")))
            return ms_errf(err, err_size, "tensor '%s' (fused QKV) is not supported", name);
        snprintf(pre, sizeof pre, "v.blk.%d.ln1", il);
        if (s_vit_norm(g, pre, E, true, &L->ln1_w, &L->ln1_b, err, err_size) != 0) return -1;
        snprintf(pre, sizeof pre, "v.blk.%d.ln2", il);
        if (s_vit_norm(g, pre, E, true, &L->ln2_w, &L->ln2_b, err, err_size) != 0) return -1;
        if (!(L->q_w = s_mat(g, S_N("attn_q.weight"), E, E, err, err_size)) ||
            !(L->q_b = s_vec(g, S_N("attn_q.bias"), E, err, err_size)) ||
            !(L->k_w = s_mat(g, S_N("attn_k.weight"), E, E, err, err_size)) ||
            !(L->k_b = s_vec(g, S_N("attn_k.bias"), E, err, err_size)) ||
            !(L->v_w = s_mat(g, S_N("attn_v.weight"), E, E, err, err_size)) ||
            !(L->v_b = s_vec(g, S_N("attn_v.bias"), E, err, err_size)) ||
            !(L->o_w = s_mat(g, S_N("attn_out.weight"), E, E, err, err_size)) ||
            !(L->o_b = s_vec(g, S_N("attn_out.bias"), E, err, err_size)))
            return -1;
        if (s_vit_ffn(g, il, L, hp, err, err_size) != 0) return -1;
    }
#undef S_N

    /* mlp projector: mm.0 (E -> M), GELU, mm.2 (M -> M) */
    ms_tensor *mm0 = ms_gguf_find_tensor(g, "mm.0.weight");
    if (!mm0) return ms_errf(err, err_size, "missing tensor 'mm.0.weight'");
    if (mm0->n_dims != 2 || mm0->ne[1] < 1 || mm0->ne[1] > MS_MODEL_MAX_EMBD)
        return ms_errf(err, err_size, "tensor 'mm.0.weight' must be 2-D with 1 to %d rows",
                       MS_MODEL_MAX_EMBD);
    if (ms_gguf_find_tensor(g, "mm.3.weight"))
        return ms_errf(err, err_size,
                       "tensor 'mm.3.weight' (an mlp projector with norms, "
                       "Yi-VL style) is not supported");
    hp->proj_dim = (int)mm0->ne[1];
    const int64_t M = hp->proj_dim;
    if (!(vit->mm0_w = s_mat(g, "mm.0.weight", E, M, err, err_size)) ||
        !(vit->mm0_b = s_vec(g, "mm.0.bias", M, err, err_size)) ||
        !(vit->mm2_w = s_mat(g, "mm.2.weight", M, M, err, err_size)) ||
        !(vit->mm2_b = s_vec(g, "mm.2.bias", M, err, err_size)))
        return -1;
    return 0;
}

ms_vit *ms_vit_from_gguf(ms_gguf **g_p, char *err, size_t err_size) {
    assert(g_p && *g_p);
    ms_vit *vit = ms_xcalloc(1, sizeof *vit);
    vit->file = *g_p;
    *g_p = NULL;
    if (s_vit_hparams(vit, err, err_size) != 0 || s_vit_tensors(vit, err, err_size) != 0) {
        ms_vit_free(&vit);
        return NULL;
    }
    return vit;
}

ms_vit *ms_vit_load(const char *path, char *err, size_t err_size) {
    ms_gguf *g = ms_gguf_open(path, err, err_size);
    if (!g) return NULL;
    char msg[MS_ERR_SIZE];
    ms_vit *vit = ms_vit_from_gguf(&g, msg, sizeof msg);
    if (!vit) ms_errf(err, err_size, "%s: %s", path, msg);
    return vit;
}

void ms_vit_free(ms_vit **vit_p) {
    if (!vit_p || !*vit_p) return;
    ms_vit *vit = *vit_p;
    free(vit->layers);
    ms_gguf_close(&vit->file);
    free(vit);
    *vit_p = NULL;
}
