/* test_model.c — the model loaders (kernels/model.c) and the generator
 * (kernels/modelgen.c): the tiny models made by the ctest fixture load with
 * the right hyperparameters, and every rejection of the loaders is checked on
 * a variant built with modelgen's hooks (one key or tensor left out, retyped
 * or reshaped) and written to a temporary file. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "modelgen.h"
#include "ms_common.h"
#include "ms_test.h"

/* ---- variants ------------------------------------------------------------------ */

#define MAX_EDITS 4

typedef struct edit {
    const char *name;        /* tensor to change, NULL = unused slot */
    int type;                /* new ms_type, -1 = keep */
    int n_dims;              /* new n_dims, 0 = keep */
    int64_t ne[MS_MAX_DIMS]; /* new ne (when n_dims set) */
    bool drop;               /* leave the tensor out */
} edit;

typedef struct variant {
    const char *drop_key; /* key to leave out */
    edit t[MAX_EDITS];    /* tensor edits */
} variant;

static bool s_keep_key(void *ud, const char *key) {
    const variant *v = ud;
    return !v->drop_key || strcmp(v->drop_key, key) != 0;
}

static bool s_tensor_hook(void *ud, const char *name, ms_type *type, int *n_dims,
                          int64_t ne[MS_MAX_DIMS]) {
    const variant *v = ud;
    for (int i = 0; i < MAX_EDITS; i++) {
        const edit *e = &v->t[i];
        if (!e->name || strcmp(e->name, name) != 0) continue;
        if (e->drop) return false;
        if (e->type >= 0) *type = (ms_type)e->type;
        if (e->n_dims > 0) {
            *n_dims = e->n_dims;
            for (int d = 0; d < MS_MAX_DIMS; d++)
                ne[d] = d < e->n_dims ? e->ne[d] : 1;
        }
    }
    return true;
}

typedef void (*post_fn)(ms_gguf_writer *w);

static char s_path[256];

static const char *s_tmp(const char *what) {
    snprintf(s_path, sizeof s_path, "/tmp/ms_test_model_%d_%s.gguf", (int)getpid(), what);
    return s_path;
}

static ms_modelgen_cfg s_tiny(ms_arch arch) {
    ms_modelgen_cfg cfg;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_modelgen_preset("tiny", &cfg, err, sizeof err), 0, "%s", err);
    cfg.arch = arch;
    return cfg;
}

/* Builds the tiny text model with the variant's edits, applies post, writes it. */
static const char *s_write_lm(const ms_modelgen_cfg *cfg, variant *v, post_fn post) {
    char err[MS_ERR_SIZE];
    ms_vocab vocab;
    char *tmpl;
    cr_assert_eq(ms_modelgen_load_vocab("builtin", &vocab, &tmpl, err, sizeof err), 0, "%s", err);
    ms_modelgen_hooks hooks = {.keep_key = s_keep_key, .tensor = s_tensor_hook, .ud = v};
    ms_gguf_writer *w = ms_gguf_writer_new();
    cr_assert_eq(ms_modelgen_lm(cfg, &vocab, tmpl, &hooks, w, NULL, err, sizeof err), 0, "%s", err);
    if (post) post(w);
    const char *path = s_tmp("lm");
    cr_assert_eq(ms_gguf_writer_write(w, path, err, sizeof err), 0, "%s", err);
    ms_gguf_writer_destroy(&w);
    ms_vocab_fini(&vocab);
    free(tmpl);
    return path;
}

static const char *s_write_vit(const ms_modelgen_cfg *cfg, variant *v, post_fn post) {
    char err[MS_ERR_SIZE];
    ms_modelgen_hooks hooks = {.keep_key = s_keep_key, .tensor = s_tensor_hook, .ud = v};
    ms_gguf_writer *w = ms_gguf_writer_new();
    cr_assert_eq(ms_modelgen_vit(cfg, &hooks, w, NULL, err, sizeof err), 0, "%s", err);
    if (post) post(w);
    const char *path = s_tmp("mmproj");
    cr_assert_eq(ms_gguf_writer_write(w, path, err, sizeof err), 0, "%s", err);
    ms_gguf_writer_destroy(&w);
    return path;
}

/* Loads a variant of the tiny qwen2 model and expects failure with needle in the message. */
static void s_lm_rejects(ms_arch arch, variant v, post_fn post, const char *needle) {
    ms_modelgen_cfg cfg = s_tiny(arch);
    const char *path = s_write_lm(&cfg, &v, post);
    char err[MS_ERR_SIZE] = "";
    ms_lm *lm = ms_lm_load(path, err, sizeof err);
    unlink(path);
    cr_assert_null(lm, "expected a rejection containing \"%s\"", needle);
    cr_assert(strstr(err, needle), "message \"%s\" lacks \"%s\"", err, needle);
    cr_assert(strstr(err, path), "message \"%s\" does not name the file", err);
}

static void s_vit_rejects(variant v, post_fn post, const char *needle) {
    ms_modelgen_cfg cfg = s_tiny(MS_ARCH_QWEN2);
    const char *path = s_write_vit(&cfg, &v, post);
    char err[MS_ERR_SIZE] = "";
    ms_vit *vit = ms_vit_load(path, err, sizeof err);
    unlink(path);
    cr_assert_null(vit, "expected a rejection containing \"%s\"", needle);
    cr_assert(strstr(err, needle), "message \"%s\" lacks \"%s\"", err, needle);
}

static ms_lm *s_lm_variant(ms_arch arch, variant v, post_fn post) {
    ms_modelgen_cfg cfg = s_tiny(arch);
    const char *path = s_write_lm(&cfg, &v, post);
    char err[MS_ERR_SIZE] = "";
    ms_lm *lm = ms_lm_load(path, err, sizeof err);
    unlink(path);
    cr_assert_not_null(lm, "load: %s", err);
    return lm;
}

static ms_vit *s_vit_variant(variant v, post_fn post) {
    ms_modelgen_cfg cfg = s_tiny(MS_ARCH_QWEN2);
    const char *path = s_write_vit(&cfg, &v, post);
    char err[MS_ERR_SIZE] = "";
    ms_vit *vit = ms_vit_load(path, err, sizeof err);
    unlink(path);
    cr_assert_not_null(vit, "load: %s", err);
    return vit;
}

/* ---- the fixture's models ------------------------------------------------------------ */

Test(model, tiny_qwen2_loads, .timeout = 30) {
    char err[MS_ERR_SIZE];
    const char *path = ms_test_path(ms_test_models_dir(), "tiny-lm.gguf");
    ms_lm *lm = ms_lm_load(path, err, sizeof err);
    cr_assert_not_null(lm, "%s", err);
    const ms_lm_hparams *hp = &lm->hp;
    cr_assert_eq(hp->arch, MS_ARCH_QWEN2);
    cr_assert(hp->rope_neox);
    cr_assert_eq(hp->n_embd, 64);
    cr_assert_eq(hp->n_layer, 2);
    cr_assert_eq(hp->n_ff, 128);
    cr_assert_eq(hp->n_head, 4);
    cr_assert_eq(hp->n_head_kv, 2);
    cr_assert_eq(hp->head_dim, 16);
    cr_assert_eq(hp->n_rot, 16);
    cr_assert_eq(hp->n_ctx_train, 512);
    cr_assert_float_eq(hp->rms_eps, 1e-6f, 1e-12f);
    cr_assert_float_eq(hp->rope_freq_base, 1e6f, 1.0f);
    cr_assert_eq(hp->n_vocab, ms_tokenizer_n_vocab(lm->tok));
    cr_assert_eq(hp->n_vocab, 256 + MS_MODELGEN_BUILTIN_MERGES + 3);
    cr_assert_eq(lm->tok_embd->ne[0], 64);
    cr_assert_eq(lm->tok_embd->ne[1], hp->n_vocab);
    cr_assert_neq(lm->output, lm->tok_embd, "tiny has a separate output matrix");
    for (int il = 0; il < hp->n_layer; il++) {
        const ms_lm_layer *L = &lm->layers[il];
        cr_assert_not_null(L->bq);
        cr_assert_not_null(L->bk);
        cr_assert_not_null(L->bv);
        cr_assert_eq(L->wk->ne[1], 32);
        cr_assert_eq(L->w_down->ne[0], 128);
        cr_assert_eq(L->wq->type, MS_TYPE_F32);
    }
    cr_assert_not_null(lm->chat_template);
    cr_assert(strstr(lm->chat_template, "<|im_start|>"));
    cr_assert_str_eq(lm->name, "modserve tiny qwen2");
    ms_lm_free(&lm);
    cr_assert_null(lm);
}

Test(model, tiny_llama_loads, .timeout = 30) {
    char err[MS_ERR_SIZE];
    ms_lm *lm =
        ms_lm_load(ms_test_path(ms_test_models_dir(), "tiny-llama-lm.gguf"), err, sizeof err);
    cr_assert_not_null(lm, "%s", err);
    cr_assert_eq(lm->hp.arch, MS_ARCH_LLAMA);
    cr_assert(!lm->hp.rope_neox);
    cr_assert_null(lm->layers[0].bq);
    cr_assert_eq(lm->hp.n_layer, 2);
    ms_lm_free(&lm);
}

Test(model, tiny_mmproj_loads, .timeout = 30) {
    char err[MS_ERR_SIZE];
    ms_vit *vit =
        ms_vit_load(ms_test_path(ms_test_models_dir(), "tiny-mmproj.gguf"), err, sizeof err);
    cr_assert_not_null(vit, "%s", err);
    const ms_vit_hparams *hp = &vit->hp;
    cr_assert_eq(hp->image_size, 32);
    cr_assert_eq(hp->patch_size, 8);
    cr_assert_eq(hp->n_embd, 32);
    cr_assert_eq(hp->n_ff, 128);
    cr_assert_eq(hp->n_layer, 2, "llama.cpp runs block_count - 1 blocks");
    cr_assert_eq(hp->n_layer_file, 3);
    cr_assert_eq(hp->n_head, 4);
    cr_assert_eq(hp->proj_dim, 64);
    cr_assert_eq(hp->n_patches, 16);
    cr_assert_eq(hp->n_image_tokens, 16);
    cr_assert(hp->has_class);
    cr_assert(!hp->use_gelu);
    cr_assert_eq(hp->fit, MS_FIT_PAD);
    cr_assert_float_eq(hp->eps, 1e-5f, 1e-9f);
    cr_assert_float_eq(hp->mean[0], 0.48145466f, 1e-7f);
    cr_assert_float_eq(hp->std[2], 0.27577711f, 1e-7f);
    cr_assert_eq(vit->pos_embd->ne[1], 17);
    cr_assert_not_null(vit->pre_ln_w);
    cr_assert_null(vit->post_ln_w);
    cr_assert_null(vit->patch_b);
    for (int il = 0; il < hp->n_layer; il++) {
        cr_assert_eq(vit->layers[il].ff_up_w->ne[0], 32);
        cr_assert_eq(vit->layers[il].ff_up_w->ne[1], 128);
        cr_assert_eq(vit->layers[il].ff_down_b->ne[0], 32);
    }
    cr_assert_eq(vit->mm2_w->ne[1], 64);
    ms_vit_free(&vit);
    cr_assert_null(vit);
}

/* ---- text model rejections ------------------------------------------------------------- */

Test(model_lm_reject, missing_key, .timeout = 30) {
    s_lm_rejects(MS_ARCH_QWEN2, (variant){.drop_key = "qwen2.block_count"}, NULL,
                 "missing key 'qwen2.block_count'");
    s_lm_rejects(MS_ARCH_LLAMA, (variant){.drop_key = "llama.attention.layer_norm_rms_epsilon"},
                 NULL, "missing key 'llama.attention.layer_norm_rms_epsilon'");
    s_lm_rejects(MS_ARCH_QWEN2, (variant){.drop_key = "general.architecture"}, NULL,
                 "missing key 'general.architecture'");
}

static void s_embd_as_string(ms_gguf_writer *w) {
    ms_gguf_set_str(w, "qwen2.embedding_length", "sixty-four");
}
static void s_eps_as_u32(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "qwen2.attention.layer_norm_rms_epsilon", 1);
}
static void s_template_as_u32(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "tokenizer.chat_template", 3);
}

Test(model_lm_reject, wrong_key_type, .timeout = 30) {
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_embd_as_string, "key 'qwen2.embedding_length'");
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_eps_as_u32,
                 "key 'qwen2.attention.layer_norm_rms_epsilon'");
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_template_as_u32, "tokenizer.chat_template");
}

static void s_arch_gpt2(ms_gguf_writer *w) {
    ms_gguf_set_str(w, "general.architecture", "gpt2");
}

Test(model_lm_reject, unsupported_architecture, .timeout = 30) {
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_arch_gpt2, "unsupported architecture 'gpt2'");
}

Test(model_lm_reject, missing_tensor, .timeout = 30) {
    s_lm_rejects(MS_ARCH_QWEN2, (variant){.t = {{.name = "blk.1.ffn_down.weight", .drop = true}}},
                 NULL, "missing tensor 'blk.1.ffn_down.weight'");
    s_lm_rejects(MS_ARCH_QWEN2, (variant){.t = {{.name = "blk.0.attn_k.bias", .drop = true}}}, NULL,
                 "missing tensor 'blk.0.attn_k.bias'");
    s_lm_rejects(MS_ARCH_LLAMA, (variant){.t = {{.name = "output_norm.weight", .drop = true}}},
                 NULL, "missing tensor 'output_norm.weight'");
    s_lm_rejects(MS_ARCH_LLAMA, (variant){.t = {{.name = "token_embd.weight", .drop = true}}}, NULL,
                 "missing tensor 'token_embd.weight'");
}

Test(model_lm_reject, wrong_shape, .timeout = 30) {
    s_lm_rejects(
        MS_ARCH_QWEN2,
        (variant){.t = {{.name = "blk.0.attn_q.weight", .type = -1, .n_dims = 2, .ne = {64, 32}}}},
        NULL, "tensor 'blk.0.attn_q.weight' has shape");
    s_lm_rejects(
        MS_ARCH_LLAMA,
        (variant){
            .t = {{.name = "blk.1.ffn_up.weight", .type = -1, .n_dims = 3, .ne = {64, 64, 2}}}},
        NULL, "tensor 'blk.1.ffn_up.weight' has shape");
    s_lm_rejects(
        MS_ARCH_QWEN2,
        (variant){.t = {{.name = "blk.1.attn_v.bias", .type = -1, .n_dims = 1, .ne = {64}}}}, NULL,
        "tensor 'blk.1.attn_v.bias' has shape");
}

Test(model_lm_reject, vector_not_f32, .timeout = 30) {
    s_lm_rejects(MS_ARCH_QWEN2,
                 (variant){.t = {{.name = "blk.0.attn_norm.weight", .type = MS_TYPE_F16}}}, NULL,
                 "tensor 'blk.0.attn_norm.weight' has type f16, expected f32");
    s_lm_rejects(MS_ARCH_QWEN2,
                 (variant){.t = {{.name = "blk.1.attn_q.bias", .type = MS_TYPE_BF16}}}, NULL,
                 "tensor 'blk.1.attn_q.bias' has type bf16");
}

static void s_heads_3(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "qwen2.attention.head_count", 3);
}
static void s_kv_heads_3(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "qwen2.attention.head_count_kv", 3);
}
static void s_rot_odd(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "qwen2.rope.dimension_count", 15);
}
static void s_rot_big(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "qwen2.rope.dimension_count", 32);
}

Test(model_lm_reject, heads_do_not_divide, .timeout = 30) {
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_heads_3,
                 "qwen2.attention.head_count = 3 does not divide");
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_kv_heads_3,
                 "qwen2.attention.head_count_kv = 3 does not divide");
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_rot_odd, "must be even");
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_rot_big, "must be even and at most");
}

static void s_layers_huge(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "qwen2.block_count", 5000);
}
static void s_embd_zero(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "qwen2.embedding_length", 0);
}
static void s_eps_zero(ms_gguf_writer *w) {
    ms_gguf_set_f32(w, "qwen2.attention.layer_norm_rms_epsilon", 0.0f);
}
static void s_base_nan(ms_gguf_writer *w) {
    ms_gguf_set_f32(w, "qwen2.rope.freq_base", NAN);
}

Test(model_lm_reject, values_out_of_range, .timeout = 30) {
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_layers_huge,
                 "qwen2.block_count' = 5000 is out of range");
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_embd_zero,
                 "qwen2.embedding_length' = 0 is out of range");
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_eps_zero,
                 "layer_norm_rms_epsilon' = 0 is out of range");
    s_lm_rejects(MS_ARCH_QWEN2, (variant){0}, s_base_nan, "rope.freq_base' = nan is out of range");
}

Test(model_lm_reject, vocabulary_size_mismatch, .timeout = 30) {
    const int V = 256 + MS_MODELGEN_BUILTIN_MERGES + 3;
    s_lm_rejects(
        MS_ARCH_QWEN2,
        (variant){.t = {{.name = "token_embd.weight", .type = -1, .n_dims = 2, .ne = {64, V + 1}},
                        {.name = "output.weight", .type = -1, .n_dims = 2, .ne = {64, V + 1}}}},
        NULL, "rows but the vocabulary has");
    s_lm_rejects(
        MS_ARCH_QWEN2,
        (variant){.t = {{.name = "output.weight", .type = -1, .n_dims = 2, .ne = {64, V - 1}}}},
        NULL, "tensor 'output.weight' has shape");
}

Test(model_lm_reject, not_a_gguf_file, .timeout = 30) {
    const char *path = s_tmp("junk");
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fputs("this is not a model", f);
    fclose(f);
    char err[MS_ERR_SIZE] = "";
    cr_assert_null(ms_lm_load(path, err, sizeof err));
    cr_assert_neq(err[0], 0);
    cr_assert_null(ms_vit_load(path, err, sizeof err));
    cr_assert_neq(err[0], 0);
    unlink(path);
    cr_assert_null(ms_lm_load("/nonexistent/model.gguf", err, sizeof err));
    cr_assert_neq(err[0], 0);
}

/* ---- text model: what is optional ------------------------------------------------------ */

Test(model_lm_accept, tied_output_and_defaults, .timeout = 30) {
    ms_lm *lm = s_lm_variant(MS_ARCH_LLAMA,
                             (variant){.t = {{.name = "output.weight", .drop = true}}}, NULL);
    cr_assert_eq(lm->output, lm->tok_embd, "absent output.weight ties to token_embd");
    ms_lm_free(&lm);
    lm = s_lm_variant(MS_ARCH_LLAMA, (variant){.drop_key = "llama.rope.dimension_count"}, NULL);
    cr_assert_eq(lm->hp.n_rot, lm->hp.head_dim);
    ms_lm_free(&lm);
    lm = s_lm_variant(MS_ARCH_LLAMA, (variant){.drop_key = "llama.rope.freq_base"}, NULL);
    cr_assert_float_eq(lm->hp.rope_freq_base, 10000.0f, 1e-3f);
    ms_lm_free(&lm);
    lm = s_lm_variant(MS_ARCH_LLAMA, (variant){.drop_key = "tokenizer.chat_template"}, NULL);
    cr_assert_null(lm->chat_template);
    ms_lm_free(&lm);
}

Test(model_lm_accept, quantized_matrices, .timeout = 30) {
    ms_modelgen_cfg cfg = s_tiny(MS_ARCH_QWEN2);
    const ms_type types[] = {MS_TYPE_F16, MS_TYPE_BF16, MS_TYPE_Q8_0, MS_TYPE_Q4_0};
    for (size_t i = 0; i < MS_ARRAY_LEN(types); i++) {
        cfg.type = types[i];
        variant v = {0};
        const char *path = s_write_lm(&cfg, &v, NULL);
        char err[MS_ERR_SIZE];
        ms_lm *lm = ms_lm_load(path, err, sizeof err);
        unlink(path);
        cr_assert_not_null(lm, "%s: %s", ms_type_name(types[i]), err);
        cr_assert_eq(lm->layers[0].wq->type, types[i]);
        cr_assert_eq(lm->output->type, types[i]);
        cr_assert_eq(lm->layers[0].attn_norm->type, MS_TYPE_F32);
        ms_lm_free(&lm);
    }
}

/* ---- mmproj rejections ----------------------------------------------------------------- */

static void s_clip_llama(ms_gguf_writer *w) {
    ms_gguf_set_str(w, "general.architecture", "llama");
}
static void s_proj_ldp(ms_gguf_writer *w) {
    ms_gguf_set_str(w, "clip.projector_type", "ldp");
}
static void s_std_u32(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "clip.vision.image_std", 1);
}
static void s_mean_two(ms_gguf_writer *w) {
    const float m[2] = {0.5f, 0.5f};
    ms_gguf_set_arr(w, "clip.vision.image_mean", MS_GGUF_FLOAT32, m, 2);
}
static void s_std_zero(ms_gguf_writer *w) {
    const float m[3] = {0.5f, 0.0f, 0.5f};
    ms_gguf_set_arr(w, "clip.vision.image_std", MS_GGUF_FLOAT32, m, 3);
}
static void s_patch_7(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "clip.vision.patch_size", 7);
}
static void s_vheads_5(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "clip.vision.attention.head_count", 5);
}
static void s_blocks_1(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "clip.vision.block_count", 1);
}
static void s_blocks_5(ms_gguf_writer *w) {
    ms_gguf_set_u32(w, "clip.vision.block_count", 5);
}
static void s_silu(ms_gguf_writer *w) {
    ms_gguf_set_bool(w, "clip.use_silu", true);
}
static void s_no_vision(ms_gguf_writer *w) {
    ms_gguf_set_bool(w, "clip.has_vision_encoder", false);
}
static void s_pinpoints(ms_gguf_writer *w) {
    const int32_t p[4] = {336, 672, 672, 336};
    ms_gguf_set_arr(w, "clip.vision.image_grid_pinpoints", MS_GGUF_INT32, p, 4);
}
static void s_feature_9(ms_gguf_writer *w) {
    const int32_t f[1] = {9};
    ms_gguf_set_arr(w, "clip.vision.feature_layer", MS_GGUF_INT32, f, 1);
}
static void s_feature_two(ms_gguf_writer *w) {
    const int32_t f[2] = {1, 2};
    ms_gguf_set_arr(w, "clip.vision.feature_layer", MS_GGUF_INT32, f, 2);
}
static void s_gelu_str(ms_gguf_writer *w) {
    ms_gguf_set_str(w, "clip.use_gelu", "yes");
}

Test(model_vit_reject, keys, .timeout = 30) {
    s_vit_rejects((variant){0}, s_clip_llama, "unsupported architecture 'llama' for an mmproj");
    s_vit_rejects((variant){0}, s_proj_ldp, "unsupported projector type 'ldp'");
    s_vit_rejects((variant){.drop_key = "clip.vision.image_size"}, NULL,
                  "missing key 'clip.vision.image_size'");
    s_vit_rejects((variant){.drop_key = "clip.vision.image_mean"}, NULL,
                  "missing key 'clip.vision.image_mean'");
    s_vit_rejects((variant){.drop_key = "clip.vision.attention.layer_norm_epsilon"}, NULL,
                  "missing key 'clip.vision.attention.layer_norm_epsilon'");
    s_vit_rejects((variant){0}, s_std_u32, "clip.vision.image_std");
    s_vit_rejects((variant){0}, s_mean_two, "has 2 values, expected 3");
    s_vit_rejects((variant){0}, s_std_zero, "key 'clip.vision.image_std' has an invalid value");
    s_vit_rejects((variant){0}, s_gelu_str, "clip.use_gelu");
    s_vit_rejects((variant){0}, s_silu, "clip.use_silu");
    s_vit_rejects((variant){0}, s_no_vision, "clip.has_vision_encoder is false");
    s_vit_rejects((variant){0}, s_pinpoints, "image_grid_pinpoints");
}

Test(model_vit_reject, sizes, .timeout = 30) {
    s_vit_rejects((variant){0}, s_patch_7, "clip.vision.patch_size = 7 does not divide");
    s_vit_rejects((variant){0}, s_vheads_5, "head_count = 5 does not divide");
    s_vit_rejects((variant){0}, s_blocks_1, "at least 2");
    s_vit_rejects((variant){0}, s_blocks_5, "missing tensor 'v.blk.3.");
    s_vit_rejects((variant){0}, s_feature_9, "clip.vision.feature_layer' = 9 is out of range");
    s_vit_rejects((variant){0}, s_feature_two, "only one feature layer");
}

Test(model_vit_reject, tensors, .timeout = 30) {
    s_vit_rejects((variant){.t = {{.name = "mm.2.bias", .drop = true}}}, NULL,
                  "missing tensor 'mm.2.bias'");
    s_vit_rejects((variant){.t = {{.name = "v.blk.1.attn_out.weight", .drop = true}}}, NULL,
                  "missing tensor 'v.blk.1.attn_out.weight'");
    s_vit_rejects((variant){.t = {{.name = "v.patch_embd.weight", .drop = true}}}, NULL,
                  "missing tensor 'v.patch_embd.weight'");
    s_vit_rejects(
        (variant){
            .t = {{.name = "v.position_embd.weight", .type = -1, .n_dims = 2, .ne = {32, 16}}}},
        NULL, "tensor 'v.position_embd.weight' has shape");
    s_vit_rejects(
        (variant){
            .t = {{.name = "v.patch_embd.weight", .type = -1, .n_dims = 4, .ne = {8, 8, 1, 32}}}},
        NULL, "tensor 'v.patch_embd.weight' has shape");
    s_vit_rejects((variant){.t = {{.name = "v.blk.0.ln1.bias", .type = MS_TYPE_F16}}}, NULL,
                  "tensor 'v.blk.0.ln1.bias' has type f16, expected f32");
    s_vit_rejects(
        (variant){.t = {{.name = "mm.2.weight", .type = -1, .n_dims = 2, .ne = {64, 32}}}}, NULL,
        "tensor 'mm.2.weight' has shape");
    s_vit_rejects(
        (variant){
            .t = {{.name = "v.blk.0.ffn_up.weight", .type = -1, .n_dims = 2, .ne = {32, 64}}}},
        NULL, "tensor 'v.blk.0.ffn_up.weight' has shape");
}

/* ---- mmproj: what is optional ---------------------------------------------------------- */

Test(model_vit_accept, legacy_ffn_naming, .timeout = 30) {
    /* the legacy converter called fc1 "ffn_down" and fc2 "ffn_up" */
    ms_vit *vit = s_vit_variant(
        (variant){
            .t = {{.name = "v.blk.0.ffn_up.weight", .type = -1, .n_dims = 2, .ne = {128, 32}},
                  {.name = "v.blk.0.ffn_down.weight", .type = -1, .n_dims = 2, .ne = {32, 128}},
                  {.name = "v.blk.0.ffn_up.bias", .type = -1, .n_dims = 1, .ne = {32}},
                  {.name = "v.blk.0.ffn_down.bias", .type = -1, .n_dims = 1, .ne = {128}}}},
        NULL);
    cr_assert_str_eq(vit->layers[0].ff_up_w->name, "v.blk.0.ffn_down.weight");
    cr_assert_str_eq(vit->layers[0].ff_up_b->name, "v.blk.0.ffn_down.bias");
    cr_assert_str_eq(vit->layers[0].ff_down_w->name, "v.blk.0.ffn_up.weight");
    cr_assert_str_eq(vit->layers[1].ff_up_w->name, "v.blk.1.ffn_up.weight");
    ms_vit_free(&vit);
}

static void s_feature_3(ms_gguf_writer *w) {
    const int32_t f[1] = {3};
    ms_gguf_set_arr(w, "clip.vision.feature_layer", MS_GGUF_INT32, f, 1);
}

Test(model_vit_accept, optional_parts, .timeout = 30) {
    /* no class token: one position fewer */
    ms_vit *vit = s_vit_variant(
        (variant){
            .t = {{.name = "v.class_embd", .drop = true},
                  {.name = "v.position_embd.weight", .type = -1, .n_dims = 2, .ne = {32, 16}}}},
        NULL);
    cr_assert(!vit->hp.has_class);
    cr_assert_eq(vit->hp.n_image_tokens, 16);
    ms_vit_free(&vit);
    /* no pre-LayerNorm; the last stored block is never looked at */
    vit = s_vit_variant((variant){.t = {{.name = "v.pre_ln.weight", .drop = true},
                                        {.name = "v.pre_ln.bias", .drop = true},
                                        {.name = "v.blk.2.attn_q.weight", .drop = true}}},
                        NULL);
    cr_assert_null(vit->pre_ln_w);
    cr_assert_eq(vit->hp.n_layer, 2);
    ms_vit_free(&vit);
    /* an explicit feature layer runs that many blocks */
    vit = s_vit_variant((variant){0}, s_feature_3);
    cr_assert_eq(vit->hp.n_layer, 3);
    cr_assert_not_null(vit->layers[2].q_w);
    ms_vit_free(&vit);
    /* projector type absent means mlp, as in llama.cpp */
    vit = s_vit_variant((variant){.drop_key = "clip.projector_type"}, NULL);
    ms_vit_free(&vit);
}

/* ---- the generator ---------------------------------------------------------------------- */

Test(modelgen, builtin_vocabulary, .timeout = 30) {
    ms_vocab v;
    ms_modelgen_builtin_vocab(&v);
    cr_assert_str_eq(v.model, "gpt2");
    cr_assert_eq(v.n_merges, MS_MODELGEN_BUILTIN_MERGES);
    cr_assert_eq(v.n_tokens, 256 + MS_MODELGEN_BUILTIN_MERGES + 3);
    for (int32_t i = 0; i < v.n_tokens; i++)
        for (int32_t j = i + 1; j < v.n_tokens; j++)
            cr_assert_str_neq(v.tokens[i], v.tokens[j], "tokens %d and %d are equal", i, j);
    cr_assert_str_eq(v.tokens[v.eot_id], "<|im_end|>");
    cr_assert_eq(v.types[v.eot_id], MS_TOKEN_CONTROL);
    cr_assert_str_eq(v.tokens[' '], "\xc4\xa0", "byte 0x20 is Ġ in byte-level BPE");
    cr_assert_str_eq(v.tokens['a'], "a");
    /* every merge's parts and result are tokens */
    char err[MS_ERR_SIZE];
    ms_tokenizer *t = ms_tokenizer_new(&v, err, sizeof err);
    cr_assert_not_null(t, "%s", err);
    for (int32_t m = 0; m < v.n_merges; m++) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", v.merges[m]);
        char *sp = strchr(buf, ' ');
        cr_assert_not_null(sp);
        *sp = 0;
        cr_assert_geq(ms_tokenizer_find(t, buf), 0, "merge %d: %s", m, v.merges[m]);
        cr_assert_geq(ms_tokenizer_find(t, sp + 1), 0, "merge %d: %s", m, v.merges[m]);
        memmove(sp, sp + 1, strlen(sp + 1) + 1);
        cr_assert_geq(ms_tokenizer_find(t, buf), 0, "merge %d result", m);
    }
    cr_assert_eq(ms_modelgen_chat_template(&v), ms_modelgen_chat_template(&v));
    cr_assert(strstr(ms_modelgen_chat_template(&v), "<|im_start|>"));
    ms_tokenizer_destroy(&t);
    ms_vocab_fini(&v);
}

Test(modelgen, deterministic, .timeout = 60) {
    ms_modelgen_cfg cfg = s_tiny(MS_ARCH_QWEN2);
    char err[MS_ERR_SIZE];
    size_t n1, n2, n3;
    variant v = {0};
    uint8_t *a = ms_read_file(s_write_lm(&cfg, &v, NULL), 1u << 26, &n1, err, sizeof err);
    cr_assert_not_null(a, "%s", err);
    uint8_t *b = ms_read_file(s_write_lm(&cfg, &v, NULL), 1u << 26, &n2, err, sizeof err);
    cr_assert_not_null(b, "%s", err);
    cr_assert_eq(n1, n2);
    cr_assert_eq(memcmp(a, b, n1), 0, "same seed, same bytes");
    cfg.seed = 43;
    uint8_t *c = ms_read_file(s_write_lm(&cfg, &v, NULL), 1u << 26, &n3, err, sizeof err);
    cr_assert_not_null(c, "%s", err);
    cr_assert(n1 != n3 || memcmp(a, c, n1) != 0, "another seed, other weights");
    unlink(s_tmp("lm"));
    free(a);
    free(b);
    free(c);
}

Test(modelgen, presets_and_types, .timeout = 30) {
    ms_modelgen_cfg cfg;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_modelgen_preset("demo", &cfg, err, sizeof err), 0);
    cr_assert_eq(cfg.arch, MS_ARCH_LLAMA);
    cr_assert_eq(cfg.type, MS_TYPE_Q8_0);
    cr_assert_eq(ms_modelgen_preset("bench", &cfg, err, sizeof err), 0);
    cr_assert_eq(cfg.n_layer, 16);
    cr_assert_eq(cfg.v_n_embd, 768);
    cr_assert_eq(ms_modelgen_preset("huge", &cfg, err, sizeof err), -1);
    cr_assert(strstr(err, "unknown preset 'huge'"));
    ms_type t;
    cr_assert_eq(ms_modelgen_parse_type("q4_0", &t, err, sizeof err), 0);
    cr_assert_eq(t, MS_TYPE_Q4_0);
    cr_assert_eq(ms_modelgen_parse_type("q5_k", &t, err, sizeof err), -1);
    cr_assert(strstr(err, "q5_k"));
    /* invalid sizes are refused, not written */
    cfg = s_tiny(MS_ARCH_QWEN2);
    cfg.n_head = 3;
    ms_vocab v;
    ms_modelgen_builtin_vocab(&v);
    ms_gguf_writer *w = ms_gguf_writer_new();
    cr_assert_eq(ms_modelgen_lm(&cfg, &v, NULL, NULL, w, NULL, err, sizeof err), -1);
    cr_assert(strstr(err, "n_head 3"));
    ms_gguf_writer_destroy(&w);
    ms_vocab_fini(&v);
}

/* The output matrix is shaped so that the token an input predicts (ignoring
 * the blocks) wins by a wide margin: check the bigram logits directly. */
Test(modelgen, output_margins, .timeout = 60) {
    char err[MS_ERR_SIZE];
    ms_lm *lm = ms_lm_load(ms_test_path(ms_test_models_dir(), "tiny-lm.gguf"), err, sizeof err);
    cr_assert_not_null(lm, "%s", err);
    const int E = lm->hp.n_embd, V = lm->hp.n_vocab;
    const float *emb = lm->tok_embd->data, *out = lm->output->data;
    cr_assert_eq(lm->output->type, MS_TYPE_F32);
    int printable_wins = 0, wide = 0;
    double min_margin = 1e9;
    for (int u = 0; u < V; u++) {
        /* h = rmsnorm(emb[u]) */
        double ss = 0;
        for (int i = 0; i < E; i++)
            ss += (double)emb[u * E + i] * emb[u * E + i];
        const double inv = 1.0 / sqrt(ss / E + 1e-6);
        double best = -1e30, second = -1e30;
        for (int v = 0; v < V; v++) {
            double l = 0;
            for (int i = 0; i < E; i++)
                l += emb[u * E + i] * inv * out[v * E + i];
            if (l > best)
                second = best, best = l;
            else if (l > second)
                second = l;
        }
        if (best > 10.0) printable_wins++;
        if (best - second < min_margin) min_margin = best - second;
        if (best - second > 2.0) wide++;
    }
    cr_assert_eq(printable_wins, V, "every token predicts a successor with a large logit");
    cr_assert_gt(min_margin, 0.1, "bigram top-1 margin %.3f", min_margin);
    cr_assert_geq(wide, V * 98 / 100, "only %d of %d margins exceed 2", wide, V);
    ms_lm_free(&lm);
}
