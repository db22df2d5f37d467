/* vision.c — CLIP-style ViT and mlp projector forward (see vision.h).
 *
 * Shapes: B = images in the pass, P = n_patches, T = P + has_class tokens per
 * image, E = ViT n_embd, F = ViT n_ff, K = 3·p·p, M = proj_dim.
 * The only host computation is im2col, a reordering of the input pixels
 * before they are uploaded.
 */
#include "vision.h"
#include "ms_common.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct ms_vision {
    const ms_vit *vit;    /* not owned */
    ms_backend *be;       /* not owned */
    int max_images;       /* B at most */
    int n_tok;            /* T */
    ms_tensor patch_view; /* v.patch_embd.weight viewed as {K, E} */
    /* backend scratch */
    float *patches;   /* (B·P, K) */
    float *x;         /* (B·T, E) residual stream */
    float *xn;        /* (B·T, E) */
    float *q, *k, *v; /* (B·T, E) each */
    float *att;       /* (B·T, E) */
    float *ff;        /* (B·T, F) */
    float *p_h;       /* (B·P, M) projector hidden */
    float *p_out;     /* (B·P, M) projector output */
    float *pos;       /* (T, E) position embeddings as f32 (the weight may be F16/BF16) */
    bool pos_ready;   /* pos filled (lazily: after the weights were prepared) */
    int32_t *pos_ids; /* host (T): 0, 1, ..., T-1 */
    /* host scratch */
    float *cols; /* (B·P, K) im2col of the pixels */
};

static const float *s_w(const ms_tensor *t) {
    return t ? (const float *)ms_weight_data(t) : NULL;
}

static float *s_alloc(ms_backend *be, size_t n_floats, bool *ok) {
    float *p = be->ops->alloc(be, n_floats * sizeof(float));
    if (!p) *ok = false;
    return p;
}

ms_vision *ms_vision_new(const ms_vit *vit, ms_backend *be, int max_images, char *err,
                         size_t err_size) {
    const ms_vit_hparams *hp = &vit->hp;
    if (max_images < 1) {
        ms_errf(err, err_size, "vision: max_images %d must be positive", max_images);
        return NULL;
    }
    if (hp->n_image_tokens != hp->n_patches) {
        ms_errf(err, err_size,
                "vision: %d image tokens for %d patches: only the mlp projector "
                "(one token per patch) is supported",
                hp->n_image_tokens, hp->n_patches);
        return NULL;
    }
    const int p = hp->patch_size;
    ms_vision *v = ms_xcalloc(1, sizeof *v);
    v->vit = vit;
    v->be = be;
    v->max_images = max_images;
    v->n_tok = hp->n_patches + (hp->has_class ? 1 : 0);
    /* A 2-D view of the 4-D patch weight: {p, p, 3, E} is E rows of 3·p·p. */
    v->patch_view = *vit->patch_w;
    v->patch_view.n_dims = 2;
    v->patch_view.ne[0] = 3 * (int64_t)p * p;
    v->patch_view.ne[1] = hp->n_embd;
    v->patch_view.ne[2] = v->patch_view.ne[3] = 1;
    v->patch_view.dev = NULL; /* prepared separately: a backend layout depends on the shape */

    const size_t B = (size_t)max_images, P = (size_t)hp->n_patches, T = (size_t)v->n_tok;
    const size_t E = (size_t)hp->n_embd, F = (size_t)hp->n_ff, K = 3 * (size_t)p * p;
    const size_t M = (size_t)hp->proj_dim;
    bool ok = true;
    v->patches = s_alloc(be, B * P * K, &ok);
    v->x = s_alloc(be, B * T * E, &ok);
    v->xn = s_alloc(be, B * T * E, &ok);
    v->q = s_alloc(be, B * T * E, &ok);
    v->k = s_alloc(be, B * T * E, &ok);
    v->v = s_alloc(be, B * T * E, &ok);
    v->att = s_alloc(be, B * T * E, &ok);
    v->ff = s_alloc(be, B * T * F, &ok);
    v->p_h = s_alloc(be, B * P * M, &ok);
    v->p_out = s_alloc(be, B * P * M, &ok);
    v->pos = s_alloc(be, T * E, &ok);
    v->pos_ids = ms_xmalloc(T * sizeof *v->pos_ids);
    for (size_t t = 0; t < T; t++)
        v->pos_ids[t] = (int32_t)t;
    v->cols = ms_xmalloc(B * P * K * sizeof(float));
    if (!ok) {
        ms_errf(err, err_size, "vision: cannot allocate scratch for %d images", max_images);
        ms_vision_destroy(&v);
        return NULL;
    }
    return v;
}

void ms_vision_destroy(ms_vision **v_p) {
    if (!v_p || !*v_p) return;
    ms_vision *v = *v_p;
    *v_p = NULL;
    float *bufs[] = {v->patches, v->x,  v->xn,  v->q,     v->k,  v->v,
                     v->att,     v->ff, v->p_h, v->p_out, v->pos};
    for (size_t i = 0; i < MS_ARRAY_LEN(bufs); i++)
        if (bufs[i]) v->be->ops->free(v->be, bufs[i]);
    free(v->cols);
    free(v->pos_ids);
    free(v);
}

ms_tensor *ms_vision_patch_weight(ms_vision *v) {
    return &v->patch_view;
}

/* cols (B·P, K): row py·(S/p) + px of image i holds the p×p×3 patch with
 * element (kx, ky, c) at kx + p·(ky + p·c). */
static void s_im2col(const ms_vision *v, const float *pixels, int n_img, float *cols) {
    const int S = v->vit->hp.image_size, p = v->vit->hp.patch_size, g = S / p;
    const size_t K = 3 * (size_t)p * p, P = (size_t)v->vit->hp.n_patches;
    for (int i = 0; i < n_img; i++) {
        const float *img = pixels + (size_t)i * 3 * S * S;
        for (int py = 0; py < g; py++)
            for (int px = 0; px < g; px++) {
                float *row = cols + ((size_t)i * P + (size_t)py * g + px) * K;
                for (int c = 0; c < 3; c++)
                    for (int ky = 0; ky < p; ky++) {
                        const float *src =
                            img + (size_t)c * S * S + (size_t)(py * p + ky) * S + (size_t)px * p;
                        memcpy(row + (size_t)p * (ky + p * c), src, (size_t)p * sizeof(float));
                    }
            }
    }
}

/* Embeddings of n_img images into x: patches · Wᵀ + b, class token, positions. */
static void s_embed(ms_vision *v, const float *pixels, int n_img) {
    ms_backend *be = v->be;
    const ms_backend_ops *op = be->ops;
    const ms_vit *vit = v->vit;
    const ms_vit_hparams *hp = &vit->hp;
    const int P = hp->n_patches, T = v->n_tok, E = hp->n_embd, C = hp->has_class ? 1 : 0;
    const size_t K = (size_t)v->patch_view.ne[0];

    if (!v->pos_ready) {
        op->get_rows(be, v->pos, vit->pos_embd, v->pos_ids, T); /* dequantized once */
        v->pos_ready = true;
    }
    s_im2col(v, pixels, n_img, v->cols);
    op->to_device(be, v->patches, v->cols, (size_t)n_img * P * K * sizeof(float));
    op->matmul(be, v->xn, &v->patch_view, v->patches, n_img * P);
    if (vit->patch_b) op->add_bias(be, v->xn, s_w(vit->patch_b), n_img * P, E);
    for (int i = 0; i < n_img; i++) {
        float *xi = v->x + (size_t)i * T * E;
        if (C) op->copy(be, xi, s_w(vit->class_embd), (size_t)E * sizeof(float));
        op->copy(be, xi + (size_t)C * E, v->xn + (size_t)i * P * E, (size_t)P * E * sizeof(float));
        op->add(be, xi, xi, v->pos, (size_t)T * E);
    }
    if (vit->pre_ln_w)
        op->layernorm(be, v->x, v->x, s_w(vit->pre_ln_w), s_w(vit->pre_ln_b), n_img * T, E,
                      hp->eps);
}

/* y(n, out) = x · Wᵀ + b */
static void s_linear(ms_backend *be, float *y, const ms_tensor *w, const ms_tensor *b,
                     const float *x, int n) {
    be->ops->matmul(be, y, w, x, n);
    if (b) be->ops->add_bias(be, y, s_w(b), n, (int)w->ne[1]);
}

static void s_block(ms_vision *v, int il, int n_img) {
    ms_backend *be = v->be;
    const ms_backend_ops *op = be->ops;
    const ms_vit_hparams *hp = &v->vit->hp;
    const ms_vit_layer *L = &v->vit->layers[il];
    const int T = v->n_tok, E = hp->n_embd, n = n_img * T;
    const int hd = E / hp->n_head;

    op->layernorm(be, v->xn, v->x, s_w(L->ln1_w), s_w(L->ln1_b), n, E, hp->eps);
    s_linear(be, v->q, L->q_w, L->q_b, v->xn, n);
    s_linear(be, v->k, L->k_w, L->k_b, v->xn, n);
    s_linear(be, v->v, L->v_w, L->v_b, v->xn, n);
    for (int i = 0; i < n_img; i++) {
        const size_t off = (size_t)i * T * E;
        ms_attn_args a = {
            .out = v->att + off,
            .q = v->q + off,
            .k = v->k + off,
            .v = v->v + off,
            .block_table = NULL,
            .block_size = 0,
            .n_q = T,
            .n_kv = T,
            .n_head = hp->n_head,
            .n_kv_head = hp->n_head,
            .head_dim = hd,
            .causal = false,
            .scale = 1.0f / sqrtf((float)hd),
        };
        op->attention(be, &a);
    }
    s_linear(be, v->xn, L->o_w, L->o_b, v->att, n);
    op->add(be, v->x, v->x, v->xn, (size_t)n * E);

    op->layernorm(be, v->xn, v->x, s_w(L->ln2_w), s_w(L->ln2_b), n, E, hp->eps);
    s_linear(be, v->ff, L->ff_up_w, L->ff_up_b, v->xn, n);
    if (hp->use_gelu)
        op->gelu(be, v->ff, (size_t)n * hp->n_ff);
    else
        op->gelu_quick(be, v->ff, (size_t)n * hp->n_ff);
    s_linear(be, v->xn, L->ff_down_w, L->ff_down_b, v->ff, n);
    op->add(be, v->x, v->x, v->xn, (size_t)n * E);
}

void ms_vision_encode(ms_vision *v, const float *pixels, int n_images, float *features) {
    ms_backend *be = v->be;
    const ms_vit_hparams *hp = &v->vit->hp;
    const int S = hp->image_size, P = hp->n_patches, T = v->n_tok, E = hp->n_embd;
    const int C = hp->has_class ? 1 : 0;
    for (int i0 = 0; i0 < n_images; i0 += v->max_images) {
        const int b = MS_MIN(v->max_images, n_images - i0);
        s_embed(v, pixels + (size_t)i0 * 3 * S * S, b);
        for (int il = 0; il < hp->n_layer; il++)
            s_block(v, il, b);
        if (v->vit->post_ln_w)
            be->ops->layernorm(be, v->x, v->x, s_w(v->vit->post_ln_w), s_w(v->vit->post_ln_b),
                               b * T, E, hp->eps);
        if (be->ops->synchronize) be->ops->synchronize(be);
        for (int i = 0; i < b; i++)
            be->ops->to_host(be, features + (size_t)(i0 + i) * P * E,
                             v->x + ((size_t)i * T + C) * E, (size_t)P * E * sizeof(float));
    }
}

void ms_vision_project(ms_vision *v, const float *features, int n_rows, float *embd) {
    ms_backend *be = v->be;
    const ms_vit *vit = v->vit;
    const int E = vit->hp.n_embd, M = vit->hp.proj_dim;
    const int chunk = v->max_images * vit->hp.n_patches;
    for (int r = 0; r < n_rows; r += chunk) {
        const int n = MS_MIN(chunk, n_rows - r);
        /* the input rows go into x, which holds at least chunk rows of E */
        be->ops->to_device(be, v->x, features + (size_t)r * E, (size_t)n * E * sizeof(float));
        s_linear(be, v->p_h, vit->mm0_w, vit->mm0_b, v->x, n);
        be->ops->gelu(be, v->p_h, (size_t)n * M);
        s_linear(be, v->p_out, vit->mm2_w, vit->mm2_b, v->p_h, n);
        if (be->ops->synchronize) be->ops->synchronize(be);
        be->ops->to_host(be, embd + (size_t)r * M, v->p_out, (size_t)n * M * sizeof(float));
    }
}
