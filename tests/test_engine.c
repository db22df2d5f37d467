/* test_engine.c — the stage API on the generated tiny models
 * ($MS_TEST_MODELS/tiny-lm.gguf + tiny-mmproj.gguf) and the fixture image
 * tests/data/images/sample.jpg:
 *   - stage-split generation (preprocess, encode, project, prefill, sample,
 *     decode, with a KV export → import into a new sequence of a second
 *     engine midway and the sampler state carried) equals ms_engine_generate
 *     token for token, with and without an image, greedy and seeded sampling;
 *   - a decode batch of 3 sequences at different lengths gives bitwise the
 *     logits of each sequence decoded alone;
 *   - prefill in chunks equals prefill at once;
 *   - KV full, bad prompts and bad images are errors that say what is wrong;
 *   - a KV blob that is truncated or corrupt is rejected;
 *   - the fast cpu backend and cpu-ref pick the same greedy tokens.
 * The second half (suite "forward") checks the forward math of llm.c and
 * vision.c against plain loops on synthetic weights (no files needed). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "ms_common.h"
#include "modelgen.h"
#include "ms_test.h"

#include <stdio.h>
#include <unistd.h>

#define MAX_GEN 16

static char err[MS_ERR_SIZE];

/* The text model the tests load: tiny-lm.gguf (qwen2) unless a test picks
 * tiny-llama-lm.gguf. */
static const char *s_lm_name = "tiny-lm.gguf";
static const char *s_lm_path(void) {
    return ms_test_path(ms_test_models_dir(), s_lm_name);
}
static const char *s_mm_path(void) {
    return ms_test_path(ms_test_models_dir(), "tiny-mmproj.gguf");
}

static ms_engine *s_engine(const char *backend, bool vision, int max_batch, int kv_tokens) {
    ms_engine_params p;
    ms_engine_params_default(&p);
    p.lm_path = s_lm_path();
    p.mmproj_path = vision ? s_mm_path() : NULL;
    p.backend = backend;
    p.n_threads = 2;
    p.max_batch_tokens = max_batch;
    p.kv_max_tokens = kv_tokens;
    ms_engine *e = ms_engine_new(&p, err, sizeof err);
    cr_assert(e, "engine (%s): %s", backend, err);
    return e;
}

static uint8_t *s_image(size_t *len) {
    char msg[MS_ERR_SIZE];
    uint8_t *b = ms_read_file(ms_test_path(ms_test_source_dir(), "tests/data/images/sample.jpg"),
                              1 << 26, len, msg, sizeof msg);
    cr_assert(b, "%s", msg);
    return b;
}

/* A prompt from text: BOS + tokens, with image 0's placeholder after the
 * first `split` tokens when with_image. Returns the entry count. */
static int s_prompt(const ms_engine *e, const char *text, bool with_image, int32_t *out, int cap) {
    const ms_tokenizer *t = ms_engine_tokenizer(e);
    int32_t ids[256];
    int n = ms_tokenizer_encode(t, text, strlen(text), true, false, ids, 256, err, sizeof err);
    cr_assert(n > 2 && n < 256 && n + 1 <= cap, "encode: %d %s", n, err);
    int m = 0;
    for (int i = 0; i < n; i++) {
        out[m++] = ids[i];
        if (with_image && i == 1) out[m++] = MS_PROMPT_IMAGE(0);
    }
    return m;
}

/* ---- stage split vs one call --------------------------------------------- */

typedef struct split_out {
    int32_t tokens[MAX_GEN];
    int n;
    ms_finish_reason finish;
} split_out;

/* The split path: prefill on engine a (which also ran the vision stages),
 * sample one token there, export, import into engine b, carry the sampler
 * state, decode the rest on b. */
static void s_split(ms_engine *a, ms_engine *b, const int32_t *prompt, int n, const uint8_t *img,
                    size_t img_len, const ms_sampling_params *sp, split_out *o) {
    float *embd = NULL;
    int n_images = 0;
    if (img) {
        n_images = 1;
        float *px = malloc(ms_engine_image_floats(a) * sizeof(float));
        cr_assert_eq(ms_engine_preprocess(a, img, img_len, px, err, sizeof err), 0, "%s", err);
        const size_t nt = (size_t)ms_engine_n_image_tokens(a);
        float *feat = malloc(nt * ms_engine_feature_dim(a) * sizeof(float));
        cr_assert_eq(ms_engine_encode(a, px, 1, feat, err, sizeof err), 0, "%s", err);
        embd = malloc(nt * ms_engine_n_embd(a) * sizeof(float));
        cr_assert_eq(ms_engine_project(a, feat, 1, embd, err, sizeof err), 0, "%s", err);
        free(px);
        free(feat);
    }
    const int V = ms_engine_n_vocab(a);
    float *logits = malloc((size_t)V * sizeof(float)),
          *ref_logits = malloc((size_t)V * sizeof(float));
    ms_seq *seq = ms_engine_seq_new(a);
    cr_assert_eq(ms_engine_prefill(a, seq, prompt, n, embd, n_images, logits, err, sizeof err), 0,
                 "%s", err);
    /* a reference sequence that never moves: after the hand-off the logits
     * of the imported sequence must equal its logits bit for bit */
    ms_seq *ref = ms_engine_seq_new(a);
    cr_assert_eq(ms_engine_prefill(a, ref, prompt, n, embd, n_images, ref_logits, err, sizeof err),
                 0, "%s", err);
    cr_assert(memcmp(logits, ref_logits, (size_t)V * sizeof(float)) == 0);
    free(embd);
    ms_sampler smp;
    cr_assert_eq(ms_sampler_init(&smp, sp, V), 0);
    const ms_tokenizer *tok = ms_engine_tokenizer(a);
    ms_engine *cur = a;
    o->n = 0;
    for (;;) {
        const int32_t t = ms_sampler_sample(&smp, logits);
        o->tokens[o->n++] = t;
        if (ms_tokenizer_is_eog(tok, t)) {
            o->finish = MS_FINISH_EOG;
            break;
        }
        if (o->n >= sp->max_tokens) {
            o->finish = MS_FINISH_LENGTH;
            break;
        }
        if (cur == a) {
            /* hand-off after the first token: KV blob + sampler state */
            size_t len = ms_engine_seq_export_size(a, seq);
            uint8_t *blob = malloc(len);
            cr_assert_eq(ms_engine_seq_export(a, seq, blob, len, err, sizeof err), 0, "%s", err);
            ms_engine_seq_free(a, &seq);
            uint64_t state = ms_sampler_state(&smp);
            ms_sampler_fini(&smp);
            seq = ms_engine_seq_import(b, blob, len, err, sizeof err);
            cr_assert(seq, "import: %s", err);
            free(blob);
            cr_assert_eq(ms_sampler_init(&smp, sp, V), 0);
            ms_sampler_set_state(&smp, state);
            cur = b;
        }
        cr_assert_eq(ms_engine_decode(cur, &seq, &t, 1, logits, err, sizeof err), 0, "%s", err);
        cr_assert_eq(ms_engine_decode(a, &ref, &t, 1, ref_logits, err, sizeof err), 0, "%s", err);
        cr_assert(memcmp(logits, ref_logits, (size_t)V * sizeof(float)) == 0,
                  "logits after the KV hand-off differ from the reference at token %d", o->n);
        cr_assert_eq(seq->n_past, ref->n_past);
    }
    ms_engine_seq_free(cur, &seq);
    ms_engine_seq_free(a, &ref);
    ms_sampler_fini(&smp);
    free(logits);
    free(ref_logits);
}

static void s_split_vs_generate(bool with_image, float temp) {
    ms_engine *a = s_engine("cpu-ref", with_image, 0, 0);
    ms_engine *b = s_engine("cpu-ref", with_image, 0, 0);
    int32_t prompt[300];
    int n = s_prompt(a, "Describe the picture, please: what is in it?", with_image, prompt, 300);
    size_t img_len = 0;
    uint8_t *img = with_image ? s_image(&img_len) : NULL;

    ms_sampling_params sp;
    ms_sampling_params_default(&sp);
    sp.max_tokens = MAX_GEN;
    /* the tiny models have top-1 margins of ~20 logits by design: only a
     * high temperature makes the draws depend on the RNG and the exact logits */
    sp.temperature = temp;
    sp.top_p = temp > 0 ? 0.98f : 1.0f;
    sp.seed = 1234;

    ms_generate_result r;
    ms_image_bytes ib = {img, img_len};
    cr_assert_eq(ms_engine_generate(a, prompt, n, with_image ? &ib : NULL, with_image ? 1 : 0, &sp,
                                    NULL, NULL, &r, err, sizeof err),
                 0, "generate: %s", err);
    cr_assert_eq(r.n_prompt,
                 n - (with_image ? 1 : 0) + (with_image ? ms_engine_n_image_tokens(a) : 0));
    cr_assert(r.n_generated >= 1);
    split_out o;
    s_split(a, b, prompt, n, img, img_len, &sp, &o);
    cr_assert_eq(o.n, r.n_generated, "split made %d tokens, generate %d", o.n, r.n_generated);
    for (int i = 0; i < o.n; i++)
        cr_assert_eq(o.tokens[i], r.tokens[i], "token %d: split %d, generate %d", i, o.tokens[i],
                     r.tokens[i]);
    cr_assert_eq(o.finish, r.finish);
    if (temp > 0) {
        /* the draws really were random: another seed gives other tokens */
        ms_generate_result r2;
        sp.seed = 4321;
        cr_assert_eq(ms_engine_generate(a, prompt, n, with_image ? &ib : NULL, with_image ? 1 : 0,
                                        &sp, NULL, NULL, &r2, err, sizeof err),
                     0, "%s", err);
        cr_assert(r2.n_generated != r.n_generated ||
                      memcmp(r2.tokens, r.tokens, (size_t)r.n_generated * sizeof(int32_t)) != 0,
                  "seeds 1234 and 4321 drew the same %d tokens", r.n_generated);
        ms_generate_result_fini(&r2);
    }
    /* nothing leaked from the caches */
    cr_assert_eq(ms_engine_kv_free_blocks(a), ms_engine_kv_total_blocks(a));
    cr_assert_eq(ms_engine_kv_free_blocks(b), ms_engine_kv_total_blocks(b));
    ms_generate_result_fini(&r);
    free(img);
    ms_engine_destroy(&a);
    ms_engine_destroy(&b);
}

TestSuite(engine, .timeout = 120);

Test(engine, split_equals_generate_text_greedy) {
    s_split_vs_generate(false, 0.0f);
}
Test(engine, split_equals_generate_text_sampled) {
    s_split_vs_generate(false, 3.0f);
}
Test(engine, split_equals_generate_image_greedy) {
    s_split_vs_generate(true, 0.0f);
}
Test(engine, split_equals_generate_image_sampled) {
    s_split_vs_generate(true, 3.0f);
}
Test(engine, split_equals_generate_llama_image_greedy) {
    s_lm_name = "tiny-llama-lm.gguf";
    s_split_vs_generate(true, 0.0f);
}
Test(engine, split_equals_generate_llama_text_sampled) {
    s_lm_name = "tiny-llama-lm.gguf";
    s_split_vs_generate(false, 3.0f);
}

/* The image reaches the logits: different pixels, different features,
 * different logits; the same pixels twice (in one batch), the same. */
Test(engine, image_embeddings_flow_into_the_logits) {
    ms_engine *e = s_engine("cpu-ref", true, 0, 0);
    size_t img_len;
    uint8_t *img = s_image(&img_len);
    const size_t pf = ms_engine_image_floats(e), nt = (size_t)ms_engine_n_image_tokens(e);
    const size_t ff = nt * ms_engine_feature_dim(e), ef = nt * ms_engine_n_embd(e);
    const int V = ms_engine_n_vocab(e);
    float *px = malloc(3 * pf * sizeof(float)), *feat = malloc(3 * ff * sizeof(float));
    float *embd = malloc(3 * ef * sizeof(float));
    cr_assert_eq(ms_engine_preprocess(e, img, img_len, px, err, sizeof err), 0, "%s", err);
    for (size_t i = 0; i < pf; i++)
        px[pf + i] = -px[i];                     /* image 1: negated */
    memcpy(px + 2 * pf, px, pf * sizeof(float)); /* image 2: = image 0 */
    cr_assert_eq(ms_engine_encode(e, px, 3, feat, err, sizeof err), 0, "%s", err);
    cr_assert(memcmp(feat, feat + 2 * ff, ff * sizeof(float)) == 0);
    cr_assert(memcmp(feat, feat + ff, ff * sizeof(float)) != 0);
    cr_assert_eq(ms_engine_project(e, feat, 3, embd, err, sizeof err), 0, "%s", err);
    /* one image at a time gives the same features as the batch of three */
    float *one = malloc(ff * sizeof(float));
    cr_assert_eq(ms_engine_encode(e, px + pf, 1, one, err, sizeof err), 0, "%s", err);
    cr_assert(memcmp(one, feat + ff, ff * sizeof(float)) == 0);
    int32_t p[300];
    int n = s_prompt(e, "What is this?", true, p, 300);
    float *l0 = malloc((size_t)V * sizeof(float)), *l1 = malloc((size_t)V * sizeof(float));
    ms_seq *a = ms_engine_seq_new(e), *b = ms_engine_seq_new(e);
    cr_assert_eq(ms_engine_prefill(e, a, p, n, embd, 3, l0, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < n; i++)
        if (MS_PROMPT_IS_IMAGE(p[i])) p[i] = MS_PROMPT_IMAGE(1);
    cr_assert_eq(ms_engine_prefill(e, b, p, n, embd, 3, l1, err, sizeof err), 0, "%s", err);
    double d = 0;
    for (int i = 0; i < V; i++)
        d = fmax(d, fabs((double)l0[i] - l1[i]));
    cr_assert(d > 1e-3, "logits moved by only %g when the image changed", d);
    ms_engine_seq_free(e, &a);
    ms_engine_seq_free(e, &b);
    free(px);
    free(feat);
    free(embd);
    free(one);
    free(l0);
    free(l1);
    free(img);
    ms_engine_destroy(&e);
}

Test(engine, accessors) {
    ms_engine *e = s_engine("cpu-ref", true, 0, 100);
    const ms_lm *lm = ms_engine_lm(e);
    const ms_vit *vit = ms_engine_vit(e);
    cr_assert(vit);
    cr_assert(ms_engine_has_vision(e));
    cr_assert_eq(ms_engine_n_vocab(e), lm->hp.n_vocab);
    cr_assert_eq(ms_engine_n_embd(e), lm->hp.n_embd);
    cr_assert_eq(ms_engine_n_image_tokens(e), vit->hp.n_image_tokens);
    cr_assert_eq(ms_engine_image_floats(e), 3 * (size_t)vit->hp.image_size * vit->hp.image_size);
    cr_assert_eq(ms_engine_feature_dim(e), vit->hp.n_embd);
    cr_assert_eq(ms_engine_kv_block_size(e), MS_KV_BLOCK_SIZE_DEFAULT);
    /* 100 tokens round up to 7 blocks of 16 */
    cr_assert_eq(ms_engine_kv_total_blocks(e), 7);
    cr_assert_eq(ms_engine_kv_bytes(e),
                 ms_kvcache_bytes(lm->hp.n_layer, lm->hp.n_head_kv * lm->hp.head_dim, 16, 7));
    cr_assert(ms_engine_n_ctx(e) <= 7 * 16);
    ms_engine *t = s_engine("cpu-ref", false, 0, 0);
    cr_assert_not(ms_engine_has_vision(t));
    cr_assert_eq(ms_engine_n_image_tokens(t), 0);
    cr_assert_eq(ms_engine_model_hash(t), ms_engine_model_hash(e));
    float px[4];
    cr_assert_eq(ms_engine_preprocess(t, (const uint8_t *)"x", 1, px, err, sizeof err), -1);
    cr_assert(strstr(err, "no vision"), "%s", err);
    ms_engine_destroy(&t);
    ms_engine_destroy(&e);
}

/* ---- batched decode ------------------------------------------------------- */

static int32_t s_argmax(const float *x, int n) {
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static void s_batch_vs_alone(const char *backend) {
    ms_engine *e = s_engine(backend, false, 0, 0);
    const int V = ms_engine_n_vocab(e);
    const char *texts[3] = {"Hi", "The quick brown fox jumps",
                            "Once upon a time, in a land far "
                            "away, there lived a dragon who"};
    ms_seq *bat[3], *alone[3];
    int32_t next[3];
    float *lb = malloc(3 * (size_t)V * sizeof(float)), *la = malloc((size_t)V * sizeof(float));
    for (int s = 0; s < 3; s++) {
        int32_t p[300];
        int n = s_prompt(e, texts[s], false, p, 300);
        bat[s] = ms_engine_seq_new(e);
        alone[s] = ms_engine_seq_new(e);
        cr_assert_eq(ms_engine_prefill(e, bat[s], p, n, NULL, 0, la, err, sizeof err), 0, "%s",
                     err);
        cr_assert_eq(ms_engine_prefill(e, alone[s], p, n, NULL, 0, NULL, err, sizeof err), 0);
        next[s] = s_argmax(la, V);
    }
    cr_assert_neq(bat[0]->n_past, bat[1]->n_past);
    cr_assert_neq(bat[1]->n_past, bat[2]->n_past);
    for (int step = 0; step < 6; step++) {
        cr_assert_eq(ms_engine_decode(e, bat, next, 3, lb, err, sizeof err), 0, "%s", err);
        for (int s = 0; s < 3; s++) {
            cr_assert_eq(ms_engine_decode(e, &alone[s], &next[s], 1, la, err, sizeof err), 0);
            cr_assert(memcmp(la, lb + (size_t)s * V, (size_t)V * sizeof(float)) == 0,
                      "%s: step %d seq %d: batched logits differ from alone", backend, step, s);
        }
        for (int s = 0; s < 3; s++)
            next[s] = s_argmax(lb + (size_t)s * V, V);
    }
    for (int s = 0; s < 3; s++) {
        ms_engine_seq_free(e, &bat[s]);
        ms_engine_seq_free(e, &alone[s]);
    }
    free(lb);
    free(la);
    ms_engine_destroy(&e);
}

Test(engine, batched_decode_equals_alone_cpu_ref) {
    s_batch_vs_alone("cpu-ref");
}
Test(engine, batched_decode_equals_alone_cpu) {
    s_batch_vs_alone("cpu");
}

/* ---- chunked prefill ------------------------------------------------------ */

static void s_chunks(const char *backend) {
    ms_engine *whole = s_engine(backend, true, 0, 0);
    ms_engine *chunk = s_engine(backend, true, 5, 0);
    size_t img_len;
    uint8_t *img = s_image(&img_len);
    const int nt = ms_engine_n_image_tokens(whole), V = ms_engine_n_vocab(whole);
    float *px = malloc(ms_engine_image_floats(whole) * sizeof(float));
    float *feat = malloc((size_t)nt * ms_engine_feature_dim(whole) * sizeof(float));
    float *embd = malloc((size_t)nt * ms_engine_n_embd(whole) * sizeof(float));
    cr_assert_eq(ms_engine_preprocess(whole, img, img_len, px, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_engine_encode(whole, px, 1, feat, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_engine_project(whole, feat, 1, embd, err, sizeof err), 0, "%s", err);
    int32_t p[300];
    int n = s_prompt(whole, "A long prompt that goes on for a while, with an image in it.", true, p,
                     300);
    float *l1 = malloc((size_t)V * sizeof(float)), *l2 = malloc((size_t)V * sizeof(float));
    ms_seq *a = ms_engine_seq_new(whole), *b = ms_engine_seq_new(chunk);
    cr_assert_eq(ms_engine_prefill(whole, a, p, n, embd, 1, l1, err, sizeof err), 0, "%s", err);
    /* the chunked one in two calls, too: the prompt split at entry 3 */
    cr_assert_eq(ms_engine_prefill(chunk, b, p, 3, embd, 1, NULL, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_engine_prefill(chunk, b, p + 3, n - 3, embd, 1, l2, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(a->n_past, b->n_past);
    double max_diff = 0;
    for (int i = 0; i < V; i++)
        max_diff = fmax(max_diff, fabs((double)l1[i] - l2[i]));
    /* both CPU backends compute every row and query independently of the
     * chunking (ops_cpu.h determinism contract), so the logits are exact;
     * a backend without that guarantee would be held to 1e-5 */
    cr_assert(max_diff == 0, "%s: chunked prefill logits differ by %g", backend, max_diff);
    cr_assert_eq(s_argmax(l1, V), s_argmax(l2, V));
    for (int i = 0; i < a->n_past; i++)
        cr_assert_eq(a->tokens[i], b->tokens[i]);
    ms_engine_seq_free(whole, &a);
    ms_engine_seq_free(chunk, &b);
    free(l1);
    free(l2);
    free(px);
    free(feat);
    free(embd);
    free(img);
    ms_engine_destroy(&whole);
    ms_engine_destroy(&chunk);
}

Test(engine, chunked_prefill_equals_whole_cpu_ref) {
    s_chunks("cpu-ref");
}
Test(engine, chunked_prefill_equals_whole_cpu) {
    s_chunks("cpu");
}

/* ---- errors --------------------------------------------------------------- */

Test(engine, kv_full_is_an_error) {
    ms_engine *e = s_engine("cpu-ref", false, 0, 32); /* 2 blocks of 16 */
    const int V = ms_engine_n_vocab(e);
    int32_t p[20];
    for (int i = 0; i < 20; i++)
        p[i] = (i * 7 + 3) % V;
    float *l = malloc((size_t)V * sizeof(float));
    ms_seq *a = ms_engine_seq_new(e), *b = ms_engine_seq_new(e);
    cr_assert_eq(ms_engine_prefill(e, a, p, 17, NULL, 0, l, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ms_engine_kv_free_blocks(e), 0);
    cr_assert_eq(ms_engine_prefill(e, b, p, 2, NULL, 0, l, err, sizeof err), -1);
    cr_assert_str_eq(err, "KV cache full: need 1 blocks, 0 free");
    cr_assert_eq(b->n_past, 0);
    /* a still decodes within its blocks */
    int32_t t = 5;
    for (int i = 0; i < 15; i++)
        cr_assert_eq(ms_engine_decode(e, &a, &t, 1, l, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a->n_past, 32);
    /* the batch is refused as a whole when any member cannot grow */
    ms_seq *both[2] = {b, a};
    int32_t tt[2] = {1, 2};
    cr_assert_eq(ms_engine_decode(e, both, tt, 2, l, err, sizeof err), -1);
    cr_assert(strstr(err, "KV cache full") || strstr(err, "context"), "%s", err);
    cr_assert_eq(b->n_past, 0);
    cr_assert_eq(a->n_past, 32);
    ms_engine_seq_free(e, &a);
    cr_assert_eq(ms_engine_kv_free_blocks(e), 2);
    /* generate with a prompt longer than the cache */
    int32_t longp[40];
    for (int i = 0; i < 40; i++)
        longp[i] = i % V;
    ms_sampling_params sp;
    ms_sampling_params_default(&sp);
    ms_generate_result r;
    cr_assert_eq(ms_engine_generate(e, longp, 40, NULL, 0, &sp, NULL, NULL, &r, err, sizeof err),
                 -1);
    cr_assert(strstr(err, "context") || strstr(err, "KV cache full"), "%s", err);
    ms_engine_seq_free(e, &b);
    cr_assert_eq(ms_engine_kv_free_blocks(e), 2);
    free(l);
    ms_engine_destroy(&e);
}

Test(engine, bad_prompts_are_errors) {
    ms_engine *e = s_engine("cpu-ref", true, 0, 0);
    const int V = ms_engine_n_vocab(e);
    float *l = malloc((size_t)V * sizeof(float));
    ms_seq *s = ms_engine_seq_new(e);
    int32_t p[3] = {1, V, 2};
    cr_assert_eq(ms_engine_prefill(e, s, p, 3, NULL, 0, l, err, sizeof err), -1);
    cr_assert(strstr(err, "entry 1") && strstr(err, "vocabulary"), "%s", err);
    p[1] = MS_PROMPT_IMAGE(1);
    cr_assert_eq(ms_engine_prefill(e, s, p, 3, NULL, 0, l, err, sizeof err), -1);
    cr_assert(strstr(err, "image 1"), "%s", err);
    cr_assert_eq(ms_engine_prefill(e, s, p, 0, NULL, 0, l, err, sizeof err), -1);
    cr_assert_eq(s->n_past, 0);
    cr_assert_eq(ms_engine_kv_free_blocks(e), ms_engine_kv_total_blocks(e));
    int32_t bad = -5;
    cr_assert_eq(ms_engine_decode(e, &s, &bad, 1, l, err, sizeof err), -1);
    ms_seq *twice[2] = {s, s};
    int32_t tt[2] = {1, 1};
    cr_assert_eq(ms_engine_decode(e, twice, tt, 2, l, err, sizeof err), -1);
    cr_assert(strstr(err, "twice"), "%s", err);
    ms_engine_seq_free(e, &s);
    free(l);
    ms_engine_destroy(&e);
}

Test(engine, bad_image_names_its_index) {
    ms_engine *e = s_engine("cpu-ref", true, 0, 0);
    size_t img_len;
    uint8_t *img = s_image(&img_len);
    int32_t p[300];
    int n = s_prompt(e, "two images", true, p, 299);
    p[n++] = MS_PROMPT_IMAGE(1);
    ms_image_bytes ib[2] = {{img, img_len}, {img, img_len / 3}}; /* truncated JPEG */
    ms_sampling_params sp;
    ms_sampling_params_default(&sp);
    sp.max_tokens = 2;
    ms_generate_result r;
    cr_assert_eq(ms_engine_generate(e, p, n, ib, 2, &sp, NULL, NULL, &r, err, sizeof err), -1);
    cr_assert(strncmp(err, "image 1: ", 9) == 0, "%s", err);
    uint8_t junk[64] = {0};
    ib[0].data = junk;
    ib[0].len = sizeof junk;
    cr_assert_eq(ms_engine_generate(e, p, n, ib, 2, &sp, NULL, NULL, &r, err, sizeof err), -1);
    cr_assert(strncmp(err, "image 0: ", 9) == 0, "%s", err);
    /* text-only engine given an image */
    ms_engine *t = s_engine("cpu-ref", false, 0, 0);
    cr_assert_eq(ms_engine_generate(t, p, n, ib, 2, &sp, NULL, NULL, &r, err, sizeof err), -1);
    cr_assert(strstr(err, "no vision"), "%s", err);
    cr_assert_eq(ms_engine_kv_free_blocks(e), ms_engine_kv_total_blocks(e));
    ms_engine_destroy(&t);
    free(img);
    ms_engine_destroy(&e);
}

Test(engine, kv_import_rejects_bad_blobs) {
    ms_engine *e = s_engine("cpu-ref", false, 0, 0);
    int32_t p[300];
    int n = s_prompt(e, "hand me over", false, p, 300);
    ms_seq *s = ms_engine_seq_new(e);
    cr_assert_eq(ms_engine_prefill(e, s, p, n, NULL, 0, NULL, err, sizeof err), 0, "%s", err);
    size_t len = ms_engine_seq_export_size(e, s);
    uint8_t *blob = malloc(len);
    cr_assert_eq(ms_engine_seq_export(e, s, blob, len, err, sizeof err), 0, "%s", err);
    const int free_before = ms_engine_kv_free_blocks(e);
    const size_t cuts[] = {0, 7, MS_KV_HEADER_SIZE - 1, MS_KV_HEADER_SIZE, len / 2, len - 1};
    for (size_t i = 0; i < MS_ARRAY_LEN(cuts); i++) {
        cr_assert_null(ms_engine_seq_import(e, blob, cuts[i], err, sizeof err), "cut %zu", cuts[i]);
        cr_assert(strstr(err, "KV import"), "%s", err);
    }
    for (size_t off = 0; off < len; off += 97) {
        blob[off] ^= 0x40;
        cr_assert_null(ms_engine_seq_import(e, blob, len, err, sizeof err), "flip at %zu", off);
        blob[off] ^= 0x40;
    }
    cr_assert_eq(ms_engine_kv_free_blocks(e), free_before);
    ms_seq *ok = ms_engine_seq_import(e, blob, len, err, sizeof err);
    cr_assert(ok, "%s", err);
    cr_assert_eq(ok->n_past, s->n_past);
    cr_assert_neq(ok->id, s->id);
    ms_engine_seq_free(e, &ok);
    ms_engine_seq_free(e, &s);
    free(blob);
    ms_engine_destroy(&e);
}

/* ---- fast backend vs reference -------------------------------------------- */

static void s_greedy(ms_engine *e, const int32_t *p, int n, const ms_image_bytes *ib, int n_img,
                     ms_generate_result *r) {
    ms_sampling_params sp;
    ms_sampling_params_default(&sp);
    sp.max_tokens = MAX_GEN;
    cr_assert_eq(ms_engine_generate(e, p, n, ib, n_img, &sp, NULL, NULL, r, err, sizeof err), 0,
                 "%s", err);
}

Test(engine, cpu_and_cpu_ref_same_greedy_tokens) {
    ms_engine *ref = s_engine("cpu-ref", true, 0, 0);
    ms_engine *fast = s_engine("cpu", true, 0, 0);
    size_t img_len;
    uint8_t *img = s_image(&img_len);
    ms_image_bytes ib = {img, img_len};
    for (int with_image = 0; with_image < 2; with_image++) {
        int32_t p[300];
        int n = s_prompt(ref, "Tell me a story about a cat.", with_image, p, 300);
        ms_generate_result a, b;
        s_greedy(ref, p, n, &ib, with_image, &a);
        s_greedy(fast, p, n, &ib, with_image, &b);
        cr_assert_eq(a.n_generated, b.n_generated, "image %d: %d vs %d tokens", with_image,
                     a.n_generated, b.n_generated);
        for (int i = 0; i < a.n_generated; i++)
            cr_assert_eq(a.tokens[i], b.tokens[i], "image %d, token %d: cpu-ref %d, cpu %d",
                         with_image, i, a.tokens[i], b.tokens[i]);
        ms_generate_result_fini(&a);
        ms_generate_result_fini(&b);
    }
    free(img);
    ms_engine_destroy(&ref);
    ms_engine_destroy(&fast);
}

/* A q8_0 variant of the tiny preset (its ViT position embeddings and patch
 * weights are then F16): finite features and logits, and the same greedy
 * tokens on cpu and cpu-ref. */
Test(engine, quantized_model_runs_on_both_backends) {
    ms_modelgen_cfg cfg;
    cr_assert_eq(ms_modelgen_preset("tiny", &cfg, err, sizeof err), 0, "%s", err);
    cfg.type = MS_TYPE_Q8_0;
    cfg.arch = MS_ARCH_LLAMA;
    char dir[] = "/tmp/ms_test_engine_XXXXXX";
    cr_assert(mkdtemp(dir));
    cr_assert_eq(ms_modelgen_write(&cfg, dir, "q8", NULL, NULL, err, sizeof err), 0, "%s", err);
    char lm[256], mm[256];
    snprintf(lm, sizeof lm, "%s/q8-lm.gguf", dir);
    snprintf(mm, sizeof mm, "%s/q8-mmproj.gguf", dir);
    size_t img_len;
    uint8_t *img = s_image(&img_len);
    ms_image_bytes ib = {img, img_len};
    ms_generate_result res[2];
    const char *backends[2] = {"cpu-ref", "cpu"};
    for (int b = 0; b < 2; b++) {
        ms_engine_params p;
        ms_engine_params_default(&p);
        p.lm_path = lm;
        p.mmproj_path = mm;
        p.backend = backends[b];
        ms_engine *e = ms_engine_new(&p, err, sizeof err);
        cr_assert(e, "%s", err);
        cr_assert_eq(ms_engine_lm(e)->layers[0].wq->type, MS_TYPE_Q8_0);
        const size_t nt = (size_t)ms_engine_n_image_tokens(e);
        float *px = malloc(ms_engine_image_floats(e) * sizeof(float));
        float *feat = malloc(nt * ms_engine_feature_dim(e) * sizeof(float));
        cr_assert_eq(ms_engine_preprocess(e, img, img_len, px, err, sizeof err), 0, "%s", err);
        cr_assert_eq(ms_engine_encode(e, px, 1, feat, err, sizeof err), 0, "%s", err);
        for (size_t i = 0; i < nt * ms_engine_feature_dim(e); i++)
            cr_assert(isfinite(feat[i]), "%s: feature %zu is %g", backends[b], i, feat[i]);
        int32_t pr[300];
        int n = s_prompt(e, "What is in the image?", true, pr, 300);
        s_greedy(e, pr, n, &ib, 1, &res[b]);
        free(px);
        free(feat);
        ms_engine_destroy(&e);
    }
    cr_assert_eq(res[0].n_generated, res[1].n_generated);
    for (int i = 0; i < res[0].n_generated; i++)
        cr_assert_eq(res[0].tokens[i], res[1].tokens[i], "token %d", i);
    /* a NaN forward samples token 0 forever: make sure that is not what happened */
    int distinct = 0;
    for (int i = 1; i < res[0].n_generated; i++)
        distinct += res[0].tokens[i] != res[0].tokens[0];
    cr_assert(distinct > 0, "all %d tokens are %d", res[0].n_generated, res[0].tokens[0]);
    ms_generate_result_fini(&res[0]);
    ms_generate_result_fini(&res[1]);
    remove(lm);
    remove(mm);
    rmdir(dir);
    free(img);
}

/* ---- streaming: callback text, stop strings ------------------------------- */

typedef struct cb_state {
    char text[4096];
    size_t len;
    int calls;
    int cancel_after; /* 0: never */
} cb_state;

static bool s_on_token(int32_t id, const char *text, int len, void *user) {
    (void)id;
    cb_state *c = user;
    cr_assert(c->len + (size_t)len < sizeof c->text);
    memcpy(c->text + c->len, text, (size_t)len);
    c->len += (size_t)len;
    c->text[c->len] = '\0';
    c->calls++;
    return c->cancel_after == 0 || c->calls < c->cancel_after;
}

Test(engine, streaming_text_and_stops) {
    ms_engine *e = s_engine("cpu-ref", false, 0, 0);
    int32_t p[300];
    int n = s_prompt(e, "Count with me:", false, p, 300);
    ms_sampling_params sp;
    ms_sampling_params_default(&sp);
    sp.max_tokens = MAX_GEN;
    sp.temperature = 0.7f;
    sp.seed = 99;
    cb_state c = {0};
    ms_generate_result r;
    cr_assert_eq(ms_engine_generate(e, p, n, NULL, 0, &sp, s_on_token, &c, &r, err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(c.calls, r.n_generated);
    cr_assert_eq(c.len, r.text_len);
    cr_assert_str_eq(c.text, r.text);
    /* a stop string taken from the middle of that text ends generation before it */
    if (r.text_len >= 6 && r.finish != MS_FINISH_EOG) {
        ms_sampling_params sp2 = sp;
        sp2.n_stop = 1;
        memcpy(sp2.stop[0], r.text + r.text_len / 2, 2);
        sp2.stop[0][2] = '\0';
        const char *at = strstr(r.text, sp2.stop[0]);
        ms_generate_result r2;
        cr_assert_eq(ms_engine_generate(e, p, n, NULL, 0, &sp2, NULL, NULL, &r2, err, sizeof err),
                     0, "%s", err);
        cr_assert_eq(r2.finish, MS_FINISH_STOP);
        cr_assert_eq(r2.text_len, (size_t)(at - r.text), "'%s' stop '%s' -> '%s'", r.text,
                     sp2.stop[0], r2.text);
        cr_assert(strncmp(r2.text, r.text, r2.text_len) == 0);
        ms_generate_result_fini(&r2);
    }
    /* cancel from the callback */
    cb_state c3 = {.cancel_after = 2};
    ms_generate_result r3;
    sp.max_tokens = MAX_GEN;
    cr_assert_eq(ms_engine_generate(e, p, n, NULL, 0, &sp, s_on_token, &c3, &r3, err, sizeof err),
                 0, "%s", err);
    if (r.n_generated > 2) {
        cr_assert_eq(r3.finish, MS_FINISH_CANCEL);
        cr_assert_eq(r3.n_generated, 2);
    }
    ms_generate_result_fini(&r);
    ms_generate_result_fini(&r3);
    ms_engine_destroy(&e);
}

/* ==== the forward math against plain loops (synthetic weights) ============
 * A small llama/qwen2 and a small ViT are built in memory with random F32
 * weights; the backend-op forward (llm.c, vision.c) is compared with a direct
 * double-precision transcription of the math, written from the formulas
 * rather than from the op sequence (the patch embedding, in particular, is a
 * convolution indexing the 4-D weight as ggml lays it out). */
#include "llm.h"
#include "quant.h"
#include "vision.h"

typedef struct synth {
    ms_tensor *t[256];
    int n;
    uint64_t rng;
} synth;

static float s_rand(synth *s) {
    s->rng = s->rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(s->rng >> 40) / (double)(1ull << 24) - 0.5);
}

/* A tensor of random F32 values (scale) or a constant (scale 0 → value `c`). */
static ms_tensor *s_tensor(synth *s, int n_dims, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3,
                           float scale, float c) {
    ms_tensor *t = calloc(1, sizeof *t);
    t->name = "synthetic";
    t->type = MS_TYPE_F32;
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    t->ne[3] = ne3;
    const size_t n = (size_t)(ne0 * ne1 * ne2 * ne3);
    float *d = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        d[i] = scale ? c + scale * s_rand(s) : c;
    t->data = d;
    t->nbytes = n * sizeof(float);
    s->t[s->n++] = t;
    return t;
}

static void s_synth_free(synth *s) {
    for (int i = 0; i < s->n; i++) {
        free((void *)s->t[i]->data);
        free(s->t[i]);
    }
}

static const float *F(const ms_tensor *t) {
    return (const float *)t->data;
}

/* Stores t as F16 (values rounded); R() reads it back. */
static void s_to_f16(ms_tensor *t) {
    const size_t n = (size_t)ms_tensor_nelements(t);
    uint16_t *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++)
        h[i] = ms_fp32_to_fp16(F(t)[i]);
    free((void *)t->data);
    t->data = h;
    t->type = MS_TYPE_F16;
    t->nbytes = n * sizeof *h;
}

static double R(const ms_tensor *t, size_t i) {
    return t->type == MS_TYPE_F16 ? ms_fp16_to_fp32(((const uint16_t *)t->data)[i]) : F(t)[i];
}

static ms_lm s_make_lm(synth *s, ms_arch arch) {
    ms_lm lm = {0};
    ms_lm_hparams *hp = &lm.hp;
    hp->arch = arch;
    hp->n_vocab = 50;
    hp->n_embd = 32;
    hp->n_layer = 2;
    hp->n_ff = 48;
    hp->n_head = 4;
    hp->n_head_kv = 2;
    hp->head_dim = 8;
    hp->n_rot = arch == MS_ARCH_QWEN2 ? 8 : 6; /* partial rotation on llama */
    hp->rms_eps = 1e-5f;
    hp->rope_freq_base = 10000.0f;
    hp->rope_neox = arch == MS_ARCH_QWEN2;
    hp->n_ctx_train = 256;
    const int E = 32, Q = 32, D = 16, Fd = 48;
    lm.tok_embd = s_tensor(s, 2, E, hp->n_vocab, 1, 1, 2.0f, 0);
    lm.output_norm = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 1.0f);
    lm.output = s_tensor(s, 2, E, hp->n_vocab, 1, 1, 0.6f, 0);
    lm.layers = calloc(2, sizeof *lm.layers);
    for (int l = 0; l < 2; l++) {
        ms_lm_layer *L = &lm.layers[l];
        L->attn_norm = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 1.0f);
        L->wq = s_tensor(s, 2, E, Q, 1, 1, 0.6f, 0);
        L->wk = s_tensor(s, 2, E, D, 1, 1, 0.6f, 0);
        L->wv = s_tensor(s, 2, E, D, 1, 1, 0.6f, 0);
        L->wo = s_tensor(s, 2, Q, E, 1, 1, 0.6f, 0);
        if (arch == MS_ARCH_QWEN2) {
            L->bq = s_tensor(s, 1, Q, 1, 1, 1, 0.5f, 0);
            L->bk = s_tensor(s, 1, D, 1, 1, 1, 0.5f, 0);
            L->bv = s_tensor(s, 1, D, 1, 1, 1, 0.5f, 0);
        }
        L->ffn_norm = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 1.0f);
        L->w_gate = s_tensor(s, 2, E, Fd, 1, 1, 0.6f, 0);
        L->w_up = s_tensor(s, 2, E, Fd, 1, 1, 0.6f, 0);
        L->w_down = s_tensor(s, 2, Fd, E, 1, 1, 0.6f, 0);
    }
    return lm;
}

/* y(M) = W(K→M) x(K) (+ b) */
static void r_lin(double *y, const ms_tensor *w, const ms_tensor *b, const double *x) {
    const int K = (int)w->ne[0], M = (int)w->ne[1];
    for (int m = 0; m < M; m++) {
        double acc = b ? F(b)[m] : 0;
        for (int k = 0; k < K; k++)
            acc += (double)F(w)[(size_t)m * K + k] * x[k];
        y[m] = acc;
    }
}

static void r_rmsnorm(double *y, const double *x, const ms_tensor *w, int n, double eps) {
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    const double r = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * r * F(w)[i];
}

static void r_rope(double *x, int n_head, int hd, int n_rot, int pos, double base, bool neox) {
    for (int h = 0; h < n_head; h++) {
        double *v = x + h * hd;
        for (int i = 0; i < n_rot / 2; i++) {
            const double th = pos * pow(base, -2.0 * i / n_rot), c = cos(th), s = sin(th);
            const int a = neox ? i : 2 * i, b = neox ? i + n_rot / 2 : 2 * i + 1;
            const double x0 = v[a], x1 = v[b];
            v[a] = x0 * c - x1 * s;
            v[b] = x0 * s + x1 * c;
        }
    }
}

/* Logits (n_vocab) of the last of n tokens, recomputing everything. */
static void r_lm_logits(const ms_lm *lm, const int32_t *toks, int n, double *logits) {
    const ms_lm_hparams *hp = &lm->hp;
    const int E = hp->n_embd, hd = hp->head_dim, H = hp->n_head, Hk = hp->n_head_kv;
    double *x = calloc((size_t)n * E, sizeof *x), *xn = calloc(E, sizeof *xn);
    double *q = calloc((size_t)n * H * hd, sizeof *q), *k = calloc((size_t)n * Hk * hd, sizeof *k);
    double *v = calloc((size_t)n * Hk * hd, sizeof *v), *att = calloc(H * hd, sizeof *att);
    double *o = calloc(E, sizeof *o), *g = calloc(hp->n_ff, sizeof *g);
    double *u = calloc(hp->n_ff, sizeof *u), *w = calloc(n, sizeof *w);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < E; i++)
            x[t * E + i] = F(lm->tok_embd)[(size_t)toks[t] * E + i];
    for (int l = 0; l < hp->n_layer; l++) {
        const ms_lm_layer *L = &lm->layers[l];
        for (int t = 0; t < n; t++) {
            r_rmsnorm(xn, x + t * E, L->attn_norm, E, hp->rms_eps);
            r_lin(q + t * H * hd, L->wq, L->bq, xn);
            r_lin(k + t * Hk * hd, L->wk, L->bk, xn);
            r_lin(v + t * Hk * hd, L->wv, L->bv, xn);
            r_rope(q + t * H * hd, H, hd, hp->n_rot, t, hp->rope_freq_base, hp->rope_neox);
            r_rope(k + t * Hk * hd, Hk, hd, hp->n_rot, t, hp->rope_freq_base, hp->rope_neox);
        }
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < H; h++) {
                const int kh = h / (H / Hk);
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++)
                        d += q[(t * H + h) * hd + i] * k[(j * Hk + kh) * hd + i];
                    w[j] = d / sqrt((double)hd);
                    mx = fmax(mx, w[j]);
                }
                for (int j = 0; j <= t; j++)
                    sum += (w[j] = exp(w[j] - mx));
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    for (int j = 0; j <= t; j++)
                        a += w[j] * v[(j * Hk + kh) * hd + i];
                    att[h * hd + i] = a / sum;
                }
            }
            r_lin(o, L->wo, NULL, att);
            for (int i = 0; i < E; i++)
                x[t * E + i] += o[i];
        }
        for (int t = 0; t < n; t++) {
            r_rmsnorm(xn, x + t * E, L->ffn_norm, E, hp->rms_eps);
            r_lin(g, L->w_gate, NULL, xn);
            r_lin(u, L->w_up, NULL, xn);
            for (int i = 0; i < hp->n_ff; i++)
                g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            r_lin(o, L->w_down, NULL, g);
            for (int i = 0; i < E; i++)
                x[t * E + i] += o[i];
        }
    }
    r_rmsnorm(xn, x + (n - 1) * E, lm->output_norm, E, hp->rms_eps);
    r_lin(logits, lm->output, NULL, xn);
    free(x);
    free(xn);
    free(q);
    free(k);
    free(v);
    free(att);
    free(o);
    free(g);
    free(u);
    free(w);
}

static void s_check_logits(const float *got, const double *want, int n, const char *what) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    cr_assert(num / den < 1e-10, "%s: NMSE %g", what, num / den);
}

/* Two interleaved sequences through ms_llm_forward with a block size of 3:
 * a prefill of 5 rows each (one pass, two segments), then decode steps, each
 * step's logits compared with the full recomputation. */
static void s_llm_vs_reference(ms_arch arch, const char *backend) {
    synth s = {.rng = 42 + arch};
    ms_lm lm = s_make_lm(&s, arch);
    ms_backend *be = ms_backend_new(backend, 2, err, sizeof err);
    cr_assert(be, "%s", err);
    ms_kvcache *kv = ms_kvcache_new(be, 2, 16, 3, 40, err, sizeof err);
    cr_assert(kv, "%s", err);
    ms_llm *l = ms_llm_new(&lm, be, 16, err, sizeof err);
    cr_assert(l, "%s", err);
    ms_seq a, b;
    ms_seq_init(&a, 1);
    ms_seq_init(&b, 2);
    int32_t ta[32] = {3, 14, 15, 9, 26}, tb[32] = {27, 18, 28, 1, 8, 2};
    int na = 5, nb = 6;
    float got[2 * 50];
    double want[50];
    /* prefill: one pass, segments a (5 rows) and b (6 rows) */
    cr_assert_eq(ms_kvcache_seq_reserve(kv, &a, na, err, sizeof err), 0);
    cr_assert_eq(ms_kvcache_seq_reserve(kv, &b, nb, err, sizeof err), 0);
    int32_t rows_tok[11];
    memcpy(rows_tok, ta, 5 * sizeof(int32_t));
    memcpy(rows_tok + 5, tb, 6 * sizeof(int32_t));
    ms_seq *segs[2] = {&a, &b};
    int seg_rows[2] = {5, 6};
    int32_t outs[2] = {4, 10};
    ms_llm_batch batch = {.n_rows = 11,
                          .tokens = rows_tok,
                          .n_segs = 2,
                          .seqs = segs,
                          .seg_rows = seg_rows,
                          .n_out = 2,
                          .out_rows = outs};
    ms_llm_forward(l, kv, &batch, got);
    ms_kvcache_seq_advance(&a, ta, na);
    ms_kvcache_seq_advance(&b, tb, nb);
    r_lm_logits(&lm, ta, na, want);
    s_check_logits(got, want, 50, "prefill a");
    r_lm_logits(&lm, tb, nb, want);
    s_check_logits(got + 50, want, 50, "prefill b");
    for (int step = 0; step < 8; step++) {
        int32_t nt[2] = {(step * 7 + 1) % 50, (step * 11 + 5) % 50};
        int ones[2] = {1, 1};
        int32_t o2[2] = {0, 1};
        cr_assert_eq(ms_kvcache_reserve_many(kv, segs, ones, 2, err, sizeof err), 0);
        ms_llm_batch d = {.n_rows = 2,
                          .tokens = nt,
                          .n_segs = 2,
                          .seqs = segs,
                          .seg_rows = ones,
                          .n_out = 2,
                          .out_rows = o2};
        ms_llm_forward(l, kv, &d, got);
        ms_kvcache_seq_advance(&a, &nt[0], 1);
        ms_kvcache_seq_advance(&b, &nt[1], 1);
        ta[na++] = nt[0];
        tb[nb++] = nt[1];
        r_lm_logits(&lm, ta, na, want);
        s_check_logits(got, want, 50, "decode a");
        r_lm_logits(&lm, tb, nb, want);
        s_check_logits(got + 50, want, 50, "decode b");
    }
    ms_kvcache_seq_fini(kv, &a);
    ms_kvcache_seq_fini(kv, &b);
    ms_llm_destroy(&l);
    ms_kvcache_destroy(&kv);
    ms_backend_destroy(&be);
    free(lm.layers);
    s_synth_free(&s);
}

TestSuite(forward, .timeout = 60);

Test(forward, llama_matches_reference_cpu_ref) {
    s_llm_vs_reference(MS_ARCH_LLAMA, "cpu-ref");
}
Test(forward, qwen2_matches_reference_cpu_ref) {
    s_llm_vs_reference(MS_ARCH_QWEN2, "cpu-ref");
}
Test(forward, llama_matches_reference_cpu) {
    s_llm_vs_reference(MS_ARCH_LLAMA, "cpu");
}
Test(forward, qwen2_matches_reference_cpu) {
    s_llm_vs_reference(MS_ARCH_QWEN2, "cpu");
}

static ms_vit s_make_vit(synth *s, bool use_gelu) {
    ms_vit v = {0};
    ms_vit_hparams *hp = &v.hp;
    hp->image_size = 12;
    hp->patch_size = 4;
    hp->n_embd = 16;
    hp->n_ff = 24;
    hp->n_layer = 2;
    hp->n_head = 2;
    hp->proj_dim = 20;
    hp->n_patches = 9;
    hp->n_image_tokens = 9;
    hp->eps = 1e-6f;
    hp->use_gelu = use_gelu;
    hp->has_class = true;
    const int E = 16, p = 4;
    v.patch_w = s_tensor(s, 4, p, p, 3, E, 0.5f, 0);
    v.patch_b = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 0);
    v.class_embd = s_tensor(s, 1, E, 1, 1, 1, 1.0f, 0);
    v.pos_embd = s_tensor(s, 2, E, 10, 1, 1, 1.0f, 0);
    v.pre_ln_w = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 1.0f);
    v.pre_ln_b = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 0);
    v.post_ln_w = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 1.0f);
    v.post_ln_b = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 0);
    v.layers = calloc(2, sizeof *v.layers);
    for (int l = 0; l < 2; l++) {
        ms_vit_layer *L = &v.layers[l];
        L->ln1_w = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 1.0f);
        L->ln1_b = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 0);
        L->q_w = s_tensor(s, 2, E, E, 1, 1, 0.8f, 0);
        L->q_b = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 0);
        L->k_w = s_tensor(s, 2, E, E, 1, 1, 0.8f, 0);
        L->k_b = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 0);
        L->v_w = s_tensor(s, 2, E, E, 1, 1, 0.8f, 0);
        L->v_b = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 0);
        L->o_w = s_tensor(s, 2, E, E, 1, 1, 0.8f, 0);
        L->o_b = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 0);
        L->ln2_w = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 1.0f);
        L->ln2_b = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 0);
        L->ff_up_w = s_tensor(s, 2, E, 24, 1, 1, 0.8f, 0);
        L->ff_up_b = s_tensor(s, 1, 24, 1, 1, 1, 0.5f, 0);
        L->ff_down_w = s_tensor(s, 2, 24, E, 1, 1, 0.8f, 0);
        L->ff_down_b = s_tensor(s, 1, E, 1, 1, 1, 0.5f, 0);
    }
    v.mm0_w = s_tensor(s, 2, E, 20, 1, 1, 0.8f, 0);
    v.mm0_b = s_tensor(s, 1, 20, 1, 1, 1, 0.5f, 0);
    v.mm2_w = s_tensor(s, 2, 20, 20, 1, 1, 0.8f, 0);
    v.mm2_b = s_tensor(s, 1, 20, 1, 1, 1, 0.5f, 0);
    s_to_f16(v.patch_w); /* as llama.cpp's converters store them */
    s_to_f16(v.pos_embd);
    return v;
}

static void r_layernorm(double *x, const ms_tensor *w, const ms_tensor *b, int n, double eps) {
    double m = 0, var = 0;
    for (int i = 0; i < n; i++)
        m += x[i];
    m /= n;
    for (int i = 0; i < n; i++)
        var += (x[i] - m) * (x[i] - m);
    var /= n;
    for (int i = 0; i < n; i++)
        x[i] = (x[i] - m) / sqrt(var + eps) * F(w)[i] + F(b)[i];
}

static double r_gelu(double x, bool tanh_form) {
    if (!tanh_form) return x / (1 + exp(-1.702 * x));
    return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* Features (9 × 16) and projected embeddings (9 × 20) of one 12×12 image. */
static void r_vit(const ms_vit *v, const float *img, double *feat, double *embd) {
    const int S = 12, p = 4, g = 3, E = 16, T = 10, H = 2, hd = 8;
    double x[10][16], xn[10][16], q[10][16], k[10][16], vv[10][16], att[10][16], t1[24], t2[20];
    for (int e = 0; e < E; e++)
        x[0][e] = F(v->class_embd)[e];
    for (int py = 0; py < g; py++)
        for (int px = 0; px < g; px++)
            for (int e = 0; e < E; e++) {
                double acc = F(v->patch_b)[e];
                for (int c = 0; c < 3; c++)
                    for (int ky = 0; ky < p; ky++)
                        for (int kx = 0; kx < p; kx++)
                            acc += R(v->patch_w, kx + p * (ky + p * (c + 3 * e))) *
                                   img[(c * S + py * p + ky) * S + px * p + kx];
                x[1 + py * g + px][e] = acc;
            }
    for (int t = 0; t < T; t++) {
        for (int e = 0; e < E; e++)
            x[t][e] += R(v->pos_embd, (size_t)t * E + e);
        r_layernorm(x[t], v->pre_ln_w, v->pre_ln_b, E, v->hp.eps);
    }
    for (int l = 0; l < v->hp.n_layer; l++) {
        const ms_vit_layer *L = &v->layers[l];
        for (int t = 0; t < T; t++) {
            memcpy(xn[t], x[t], sizeof xn[t]);
            r_layernorm(xn[t], L->ln1_w, L->ln1_b, E, v->hp.eps);
            r_lin(q[t], L->q_w, L->q_b, xn[t]);
            r_lin(k[t], L->k_w, L->k_b, xn[t]);
            r_lin(vv[t], L->v_w, L->v_b, xn[t]);
        }
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                double w[10], mx = -1e300, sum = 0;
                for (int j = 0; j < T; j++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++)
                        d += q[t][h * hd + i] * k[j][h * hd + i];
                    w[j] = d / sqrt((double)hd);
                    mx = fmax(mx, w[j]);
                }
                for (int j = 0; j < T; j++)
                    sum += (w[j] = exp(w[j] - mx));
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    for (int j = 0; j < T; j++)
                        a += w[j] * vv[j][h * hd + i];
                    att[t][h * hd + i] = a / sum;
                }
            }
        for (int t = 0; t < T; t++) {
            double o[16];
            r_lin(o, L->o_w, L->o_b, att[t]);
            for (int e = 0; e < E; e++)
                x[t][e] += o[e];
            memcpy(xn[t], x[t], sizeof xn[t]);
            r_layernorm(xn[t], L->ln2_w, L->ln2_b, E, v->hp.eps);
            r_lin(t1, L->ff_up_w, L->ff_up_b, xn[t]);
            for (int i = 0; i < 24; i++)
                t1[i] = r_gelu(t1[i], v->hp.use_gelu);
            r_lin(o, L->ff_down_w, L->ff_down_b, t1);
            for (int e = 0; e < E; e++)
                x[t][e] += o[e];
        }
    }
    for (int t = 1; t < T; t++) {
        r_layernorm(x[t], v->post_ln_w, v->post_ln_b, E, v->hp.eps);
        memcpy(feat + (t - 1) * E, x[t], sizeof x[t]);
        r_lin(t2, v->mm0_w, v->mm0_b, x[t]);
        for (int i = 0; i < 20; i++)
            t2[i] = r_gelu(t2[i], true);
        r_lin(embd + (t - 1) * 20, v->mm2_w, v->mm2_b, t2);
    }
}

/* Three images through a vision pass that batches 2 at a time. */
static void s_vit_vs_reference(bool use_gelu, const char *backend) {
    synth s = {.rng = 7 + use_gelu};
    ms_vit vit = s_make_vit(&s, use_gelu);
    ms_backend *be = ms_backend_new(backend, 2, err, sizeof err);
    cr_assert(be, "%s", err);
    ms_vision *v = ms_vision_new(&vit, be, 2, err, sizeof err);
    cr_assert(v, "%s", err);
    float img[3][3 * 144];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3 * 144; j++)
            img[i][j] = 2 * s_rand(&s);
    float feat[3][9 * 16], embd[3][9 * 20];
    ms_vision_encode(v, &img[0][0], 3, &feat[0][0]);
    ms_vision_project(v, &feat[0][0], 27, &embd[0][0]);
    for (int i = 0; i < 3; i++) {
        double rf[9 * 16], re[9 * 20];
        r_vit(&vit, img[i], rf, re);
        s_check_logits(feat[i], rf, 9 * 16, "vit features");
        s_check_logits(embd[i], re, 9 * 20, "projector");
    }
    ms_vision_destroy(&v);
    ms_backend_destroy(&be);
    free(vit.layers);
    s_synth_free(&s);
}

Test(forward, vit_gelu_matches_reference_cpu_ref) {
    s_vit_vs_reference(true, "cpu-ref");
}
Test(forward, vit_quick_gelu_matches_reference_cpu_ref) {
    s_vit_vs_reference(false, "cpu-ref");
}
Test(forward, vit_matches_reference_cpu) {
    s_vit_vs_reference(true, "cpu");
}
