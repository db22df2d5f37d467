/* modelgen.c — seeded vision-language models in llama.cpp's GGUF layout (see
 * modelgen.h for the weight design and docs/model-format.md for the names).
 */
#include "modelgen.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "ms_common.h"
#include "quant.h"

#define S_NAME_MAX 128

/* llama.cpp's llama_ftype values for general.file_type. */
enum { S_FTYPE_F32 = 0, S_FTYPE_F16 = 1, S_FTYPE_Q4_0 = 2, S_FTYPE_Q8_0 = 7, S_FTYPE_BF16 = 32 };

/* ---- chat templates -------------------------------------------------------- */

/* The templates render exactly what llama.cpp's built-in renderers (and
 * kernels/chat.c) produce for the family, so every path gives the same text:
 * no default system message is added. */
static const char S_TMPL_CHATML[] =
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

static const char S_TMPL_LLAMA3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}";

/* LLaVA-1.5 (Vicuna v1): "{system}\n\nUSER: <image>\n{text}\nASSISTANT:" */
static const char S_TMPL_VICUNA[] =
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% elif message['role'] == 'user' %}"
    "{{ 'USER: ' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'ASSISTANT: ' + message['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

static bool s_vocab_has(const ms_vocab *v, const char *tok) {
    for (int32_t i = v->n_tokens - 1; i >= 0; i--)
        if (v->tokens[i] && strcmp(v->tokens[i], tok) == 0) return true;
    return false;
}

const char *ms_modelgen_chat_template(const ms_vocab *v) {
    if (s_vocab_has(v, "<|start_header_id|>")) return S_TMPL_LLAMA3;
    if (s_vocab_has(v, "<|im_start|>")) return S_TMPL_CHATML;
    return S_TMPL_VICUNA;
}

/* ---- presets ----------------------------------------------------------------- */

int ms_modelgen_preset(const char *name, ms_modelgen_cfg *cfg, char *err, size_t err_size) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->preset, sizeof cfg->preset, "%s", name);
    snprintf(cfg->vocab, sizeof cfg->vocab, "builtin");
    cfg->seed = 42;
    cfg->residual_gain = MS_MODELGEN_RESIDUAL_GAIN;
    cfg->rms_eps = 1e-5f;
    cfg->v_eps = 1e-5f;
    cfg->v_use_gelu = false; /* quick GELU, as CLIP ViT-L in LLaVA-1.5 */
    if (strcmp(name, "tiny") == 0) {
        cfg->arch = MS_ARCH_QWEN2;
        cfg->type = MS_TYPE_F32;
        cfg->residual_gain = 1.5f; /* f32: context-sensitive, margins still far above f32 noise */
        cfg->n_ctx = 512, cfg->n_embd = 64, cfg->n_layer = 2, cfg->n_ff = 128;
        cfg->n_head = 4, cfg->n_head_kv = 2;
        cfg->rms_eps = 1e-6f, cfg->rope_freq_base = 1000000.0f;
        cfg->v_image_size = 32, cfg->v_patch_size = 8, cfg->v_n_embd = 32, cfg->v_n_ff = 128;
        cfg->v_n_layer = 2, cfg->v_n_head = 4;
    } else if (strcmp(name, "demo") == 0) {
        cfg->arch = MS_ARCH_LLAMA;
        cfg->type = MS_TYPE_Q8_0;
        cfg->vocab_wish[0] = "llama2.vocab_merges.json";
        cfg->n_ctx = 2048, cfg->n_embd = 256, cfg->n_layer = 6, cfg->n_ff = 768;
        cfg->n_head = 8, cfg->n_head_kv = 4;
        cfg->rope_freq_base = 10000.0f;
        cfg->v_image_size = 224, cfg->v_patch_size = 16, cfg->v_n_embd = 192, cfg->v_n_ff = 768;
        cfg->v_n_layer = 6, cfg->v_n_head = 3;
    } else if (strcmp(name, "bench") == 0) {
        cfg->arch = MS_ARCH_LLAMA;
        cfg->type = MS_TYPE_Q8_0;
        cfg->vocab_wish[0] = "llama3.tokenizer.json";
        cfg->vocab_wish[1] = "llama2.vocab_merges.json";
        cfg->n_ctx = 4096, cfg->n_embd = 1024, cfg->n_layer = 16, cfg->n_ff = 2816;
        cfg->n_head = 16, cfg->n_head_kv = 4;
        cfg->rope_freq_base = 500000.0f;
        cfg->v_image_size = 224, cfg->v_patch_size = 16, cfg->v_n_embd = 768, cfg->v_n_ff = 3072;
        cfg->v_n_layer = 12, cfg->v_n_head = 12;
    } else {
        return ms_errf(err, err_size, "unknown preset '%s' (tiny, demo, bench)", name);
    }
    return 0;
}

int ms_modelgen_parse_type(const char *s, ms_type *out, char *err, size_t err_size) {
    static const struct {
        const char *name;
        ms_type t;
    } k[] = {
        {"f32", MS_TYPE_F32},   {"f16", MS_TYPE_F16},   {"bf16", MS_TYPE_BF16},
        {"q8_0", MS_TYPE_Q8_0}, {"q4_0", MS_TYPE_Q4_0},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(k); i++)
        if (strcmp(s, k[i].name) == 0) return *out = k[i].t, 0;
    return ms_errf(err, err_size, "unknown weight type '%s' (f32, f16, bf16, q8_0, q4_0)", s);
}

static uint32_t s_ftype(ms_type t) {
    switch (t) {
    case MS_TYPE_F16:
        return S_FTYPE_F16;
    case MS_TYPE_BF16:
        return S_FTYPE_BF16;
    case MS_TYPE_Q8_0:
        return S_FTYPE_Q8_0;
    case MS_TYPE_Q4_0:
        return S_FTYPE_Q4_0;
    default:
        return S_FTYPE_F32;
    }
}

/* ---- random numbers ------------------------------------------------------------ */

static uint64_t s_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t s_next(uint64_t *state) {
    return s_mix(*state += 0x9e3779b97f4a7c15ULL);
}

/* Uniform in [-1, 1) from 24 random bits: exact float arithmetic, the same everywhere. */
static float s_unit(uint64_t *state) {
    return (float)(int32_t)(s_next(state) >> 40) * (1.0f / 8388608.0f) - 1.0f;
}

/* The per-tensor seed hashes the name with its own FNV-1a + splitmix (frozen:
 * not ms_hash64, whose algorithm may change), so a preset and seed always give
 * the same bytes. */
static uint64_t s_tensor_seed(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const char *c = name; *c; c++) h = (h ^ (uint8_t)*c) * 0x100000001b3ULL;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return s_mix(seed ^ h);
}

/* Row r of a uniform tensor with the given mean and standard deviation. */
static void s_uniform_row(uint64_t tseed, int64_t row, float mean, float std, float *dst,
                          int64_t n) {
    uint64_t st = s_mix(tseed + (uint64_t)row * 0xd1b54a32d192ed03ULL);
    const float a = std * 1.7320508f; /* sqrt(3): uniform[-a, a) has std a / sqrt(3) */
    for (int64_t i = 0; i < n; i++)
        dst[i] = mean + a * s_unit(&st);
}

/* ---- the building context ---------------------------------------------------------- */

typedef struct s_gen {
    const ms_modelgen_cfg *cfg;
    const ms_modelgen_hooks *hooks; /* or NULL */
    ms_gguf_writer *w;
    ms_modelgen_stats st;
    float *row;      /* scratch: one f32 row */
    int64_t row_cap; /* floats */
    uint8_t *buf;    /* scratch: one encoded tensor */
    size_t buf_cap;  /* bytes */
    char *err;
    size_t err_size;
} s_gen;

/* How a tensor's rows are made. */
typedef struct s_init {
    float mean, std; /* uniform rows */
    /* output.weight only: row v = beta * sum of token_embd rows of pred(v) + uniform noise */
    const int32_t *pred_off; /* n_vocab + 1 offsets into pred */
    const int32_t *pred;     /* predecessors, grouped by successor */
    int64_t pred_rows;       /* rows pred_off covers (a hook may add rows) */
    uint64_t embd_seed;      /* token_embd.weight's tensor seed */
    float embd_std;          /* its std */
    float beta;              /* scale of the summed rows */
} s_init;

static bool s_keep(s_gen *g, const char *key) {
    return !g->hooks || !g->hooks->keep_key || g->hooks->keep_key(g->hooks->ud, key);
}
static void s_set_u32(s_gen *g, const char *key, uint32_t v) {
    if (s_keep(g, key)) ms_gguf_set_u32(g->w, key, v);
}
static void s_set_f32(s_gen *g, const char *key, float v) {
    if (s_keep(g, key)) ms_gguf_set_f32(g->w, key, v);
}
static void s_set_bool(s_gen *g, const char *key, bool v) {
    if (s_keep(g, key)) ms_gguf_set_bool(g->w, key, v);
}
static void s_set_str(s_gen *g, const char *key, const char *v) {
    if (s_keep(g, key)) ms_gguf_set_str(g->w, key, v);
}
static void s_set_f32_arr(s_gen *g, const char *key, const float *v, uint64_t n) {
    if (s_keep(g, key)) ms_gguf_set_arr(g->w, key, MS_GGUF_FLOAT32, v, n);
}

static void s_row_ensure(s_gen *g, int64_t n) {
    if (n <= g->row_cap) return;
    g->row = ms_xrealloc(g->row, (size_t)n * sizeof(float));
    g->row_cap = n;
}

static void s_make_row(s_gen *g, const s_init *in, uint64_t tseed, int64_t r, int64_t n,
                       float *tmp) {
    float *dst = g->row;
    s_uniform_row(tseed, r, in->mean, in->std, dst, n);
    if (!in->pred || r >= in->pred_rows) return;
    for (int32_t k = in->pred_off[r]; k < in->pred_off[r + 1]; k++) {
        s_uniform_row(in->embd_seed, in->pred[k], 0.0f, in->embd_std, tmp, n);
        for (int64_t i = 0; i < n; i++)
            dst[i] += in->beta * tmp[i];
    }
}

/* Generates and adds one tensor. type is for 2-D+ weights (falls back to F16
 * when ne[0] does not fit its block); 1-D tensors are F32. */
static int s_tensor(s_gen *g, const char *name, ms_type type, int n_dims, const int64_t *ne_in,
                    const s_init *in) {
    int64_t ne[MS_MAX_DIMS] = {1, 1, 1, 1};
    for (int d = 0; d < n_dims; d++)
        ne[d] = ne_in[d];
    ms_type t = n_dims == 1 ? MS_TYPE_F32 : type;
    if (ne[0] % ms_type_block_size(t) != 0) t = MS_TYPE_F16;
    int nd = n_dims;
    if (g->hooks && g->hooks->tensor && !g->hooks->tensor(g->hooks->ud, name, &t, &nd, ne))
        return 0;
    const size_t rb = ms_row_bytes(t, ne[0]);
    if (rb == 0 || nd < 1 || nd > MS_MAX_DIMS)
        return ms_errf(g->err, g->err_size, "tensor '%s': %" PRId64 " does not fit type %s", name,
                       ne[0], ms_type_name(t));
    int64_t rows = 1;
    for (int d = 1; d < nd; d++)
        rows *= ne[d];
    for (int d = nd; d < MS_MAX_DIMS; d++)
        ne[d] = 1;
    const size_t nbytes = rb * (size_t)rows;
    if (nbytes > g->buf_cap) {
        free(g->buf);
        g->buf = ms_xmalloc(nbytes);
        g->buf_cap = nbytes;
    }
    s_row_ensure(g, 2 * ne[0]);
    float *tmp = g->row + ne[0];
    const uint64_t tseed = s_tensor_seed(g->cfg->seed, name);
    for (int64_t r = 0; r < rows; r++) {
        s_make_row(g, in, tseed, r, ne[0], tmp);
        ms_quantize_row(t, g->row, g->buf + (size_t)r * rb, ne[0]);
    }
    if (ms_gguf_add_tensor(g->w, name, t, nd, ne, g->buf, nbytes) != 0)
        return ms_errf(g->err, g->err_size, "tensor '%s' was refused by the GGUF writer", name);
    g->st.n_params += rows * ne[0];
    g->st.n_tensors++;
    g->st.n_bytes += nbytes;
    return 0;
}

static int s_vec(s_gen *g, const char *name, int64_t n, float mean, float std) {
    const s_init in = {.mean = mean, .std = std};
    return s_tensor(g, name, MS_TYPE_F32, 1, &n, &in);
}

/* A linear layer's weight {k, m} with the given gain: std = gain / sqrt(k). */
static int s_lin(s_gen *g, const char *name, int64_t k, int64_t m, float gain) {
    const int64_t ne[2] = {k, m};
    const s_init in = {.mean = 0.0f, .std = gain / sqrtf((float)k)};
    return s_tensor(g, name, g->cfg->type, 2, ne, &in);
}

static void s_gen_init(s_gen *g, const ms_modelgen_cfg *cfg, const ms_modelgen_hooks *hooks,
                       ms_gguf_writer *w, char *err, size_t err_size) {
    memset(g, 0, sizeof *g);
    g->cfg = cfg;
    g->hooks = hooks;
    g->w = w;
    g->err = err;
    g->err_size = err_size;
}

static void s_gen_fini(s_gen *g, ms_modelgen_stats *st) {
    if (st) *st = g->st;
    free(g->row);
    free(g->buf);
}

/* ---- the successor order --------------------------------------------------------- */

/* GPT-2's byte ↔ code point map: printable Latin-1 bytes map to themselves,
 * the others to 256 + n in byte order. */
static int s_byte_to_cp(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
    return 256 + n;
}

static int s_utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) return out[0] = (char)cp, 1;
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* Decodes one UTF-8 code point (no validation beyond lengths); returns bytes used or 0. */
static int s_utf8_get(const unsigned char *s, uint32_t *cp) {
    if (s[0] < 0x80) return *cp = s[0], 1;
    if ((s[0] & 0xE0) == 0xC0 && s[1]) return *cp = ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu), 2;
    if ((s[0] & 0xF0) == 0xE0 && s[1] && s[2])
        return *cp = ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu), 3;
    return 0;
}

/* True when a token's text (decoded per vocab kind) is non-empty printable ASCII. */
static bool s_printable(const ms_vocab *v, const char *tok) {
    const unsigned char *s = (const unsigned char *)tok;
    const bool gpt2 = strcmp(v->model, "gpt2") == 0;
    if (!*s) return false;
    while (*s) {
        uint32_t cp;
        int k = s_utf8_get(s, &cp);
        if (k == 0) return false;
        s += k;
        if (!gpt2) {
            if (cp == 0x2581) continue; /* ▁ = space */
            if (cp < 0x20 || cp > 0x7E) return false;
            continue;
        }
        /* byte-level: the code point must stand for a printable ASCII byte */
        if (cp == 0x120) continue; /* Ġ = space */
        if (cp < 33 || cp > 126) return false;
    }
    return true;
}

/* Builds pred lists: succ(u) for every token u is a printable normal token,
 * following one seeded cycle through those tokens; other tokens map to a
 * random one of them. Returns CSR offsets (n_tokens + 1) and the list. */
static void s_successors(const ms_vocab *v, uint64_t seed, int32_t **off_p, int32_t **pred_p) {
    const int32_t n = v->n_tokens;
    int32_t *cand = ms_xmalloc((size_t)n * sizeof *cand);
    int32_t nc = 0;
    for (int32_t i = 0; i < n; i++)
        if ((!v->types || v->types[i] == MS_TOKEN_NORMAL) && s_printable(v, v->tokens[i]))
            cand[nc++] = i;
    if (nc < 2) { /* an odd vocabulary: use every token */
        nc = 0;
        for (int32_t i = 0; i < n; i++)
            cand[nc++] = i;
    }
    uint64_t st = s_mix(seed ^ 0x5eed5eed5eedULL);
    for (int32_t i = nc - 1; i > 0; i--) { /* Fisher-Yates */
        int32_t j = (int32_t)(s_next(&st) % (uint64_t)(i + 1));
        int32_t t = cand[i];
        cand[i] = cand[j];
        cand[j] = t;
    }
    int32_t *succ = ms_xmalloc((size_t)n * sizeof *succ);
    for (int32_t i = 0; i < n; i++)
        succ[i] = -1;
    for (int32_t i = 0; i < nc; i++)
        succ[cand[i]] = cand[(i + 1) % nc];
    for (int32_t i = 0; i < n; i++)
        if (succ[i] < 0) succ[i] = cand[s_next(&st) % (uint64_t)nc];
    int32_t *off = ms_xcalloc((size_t)n + 1, sizeof *off);
    for (int32_t i = 0; i < n; i++)
        off[succ[i] + 1]++;
    for (int32_t i = 0; i < n; i++)
        off[i + 1] += off[i];
    int32_t *pred = ms_xmalloc((size_t)n * sizeof *pred);
    int32_t *fill = ms_xmalloc((size_t)n * sizeof *fill);
    memcpy(fill, off, (size_t)n * sizeof *fill);
    for (int32_t i = 0; i < n; i++)
        pred[fill[succ[i]]++] = i;
    free(fill);
    free(succ);
    free(cand);
    *off_p = off;
    *pred_p = pred;
}

/* ---- text model ----------------------------------------------------------------------- */

static int s_check_lm_cfg(const ms_modelgen_cfg *c, const ms_vocab *v, char *err, size_t err_size) {
    if (c->n_embd < 2 || c->n_layer < 1 || c->n_ff < 1 || c->n_head < 1 || c->n_head_kv < 1 ||
        c->n_ctx < 1 || v->n_tokens < 2)
        return ms_errf(err, err_size, "modelgen: every text-model size must be positive");
    if (c->n_embd % c->n_head != 0 || c->n_head % c->n_head_kv != 0 ||
        (c->n_embd / c->n_head) % 2 != 0)
        return ms_errf(err, err_size,
                       "modelgen: n_head %d must divide n_embd %d into an even "
                       "head size, and n_head_kv %d must divide n_head",
                       c->n_head, c->n_embd, c->n_head_kv);
    return 0;
}

static int s_lm_keys(s_gen *g, const ms_vocab *vocab, const char *chat_template) {
    const ms_modelgen_cfg *c = g->cfg;
    const char *arch = c->arch == MS_ARCH_QWEN2 ? "qwen2" : "llama";
    char key[S_NAME_MAX], name[S_NAME_MAX];
    snprintf(name, sizeof name, "modserve %s %s", c->preset, arch);
    s_set_str(g, "general.architecture", arch);
    s_set_str(g, "general.type", "model");
    s_set_str(g, "general.name", name);
    s_set_u32(g, "general.file_type", s_ftype(c->type));
    if (ms_type_block_size(c->type) > 1) s_set_u32(g, "general.quantization_version", 2);
#define S_KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    s_set_u32(g, S_KEY("vocab_size"), (uint32_t)vocab->n_tokens);
    s_set_u32(g, S_KEY("context_length"), (uint32_t)c->n_ctx);
    s_set_u32(g, S_KEY("embedding_length"), (uint32_t)c->n_embd);
    s_set_u32(g, S_KEY("block_count"), (uint32_t)c->n_layer);
    s_set_u32(g, S_KEY("feed_forward_length"), (uint32_t)c->n_ff);
    s_set_u32(g, S_KEY("attention.head_count"), (uint32_t)c->n_head);
    s_set_u32(g, S_KEY("attention.head_count_kv"), (uint32_t)c->n_head_kv);
    s_set_f32(g, S_KEY("rope.freq_base"), c->rope_freq_base);
    s_set_f32(g, S_KEY("attention.layer_norm_rms_epsilon"), c->rms_eps);
    s_set_u32(g, S_KEY("rope.dimension_count"), (uint32_t)(c->n_embd / c->n_head));
#undef S_KEY
    ms_vocab_to_gguf(vocab, g->w);
    if (chat_template) s_set_str(g, "tokenizer.chat_template", chat_template);
    return 0;
}

int ms_modelgen_lm(const ms_modelgen_cfg *cfg, const ms_vocab *vocab, const char *chat_template,
                   const ms_modelgen_hooks *hooks, ms_gguf_writer *w, ms_modelgen_stats *st,
                   char *err, size_t err_size) {
    if (s_check_lm_cfg(cfg, vocab, err, err_size) != 0) return -1;
    s_gen g;
    s_gen_init(&g, cfg, hooks, w, err, err_size);
    s_lm_keys(&g, vocab, chat_template);

    const int64_t E = cfg->n_embd, F = cfg->n_ff, V = vocab->n_tokens;
    const int64_t hd = E / cfg->n_head, Q = E, KV = hd * cfg->n_head_kv;
    const float res = cfg->residual_gain / sqrtf(2.0f * (float)cfg->n_layer);
    const float nsp = MS_MODELGEN_NORM_SPREAD;
    const float embd_std = 1.0f;
    int rc = 0;

    {
        const int64_t ne[2] = {E, V};
        const s_init in = {.mean = 0.0f, .std = embd_std};
        rc = s_tensor(&g, "token_embd.weight", cfg->type, 2, ne, &in);
    }
    char name[S_NAME_MAX];
#define S_N(fmt) (snprintf(name, sizeof name, "blk.%d." fmt, il), name)
    for (int il = 0; il < cfg->n_layer && rc == 0; il++) {
        rc = s_vec(&g, S_N("attn_norm.weight"), E, 1.0f, nsp) ||
             s_lin(&g, S_N("attn_q.weight"), E, Q, 1.0f) ||
             s_lin(&g, S_N("attn_k.weight"), E, KV, 1.0f) ||
             s_lin(&g, S_N("attn_v.weight"), E, KV, 1.0f) ||
             s_lin(&g, S_N("attn_output.weight"), Q, E, res);
        if (rc == 0 && cfg->arch == MS_ARCH_QWEN2)
            rc = s_vec(&g, S_N("attn_q.bias"), Q, 0.0f, 0.3f) ||
                 s_vec(&g, S_N("attn_k.bias"), KV, 0.0f, 0.3f) ||
                 s_vec(&g, S_N("attn_v.bias"), KV, 0.0f, 0.1f);
        if (rc == 0)
            rc = s_vec(&g, S_N("ffn_norm.weight"), E, 1.0f, nsp) ||
                 s_lin(&g, S_N("ffn_gate.weight"), E, F, 1.0f) ||
                 s_lin(&g, S_N("ffn_up.weight"), E, F, 1.0f) ||
                 s_lin(&g, S_N("ffn_down.weight"), F, E, res);
    }
#undef S_N
    if (rc == 0) rc = s_vec(&g, "output_norm.weight", E, 1.0f, nsp);
    if (rc == 0 && !cfg->tie_output) {
        int32_t *off, *pred;
        s_successors(vocab, cfg->seed, &off, &pred);
        /* logit of the successor ≈ beta · |h| · |embd row| · cos ≈ beta · E · 0.9 */
        const float beta = MS_MODELGEN_LOGIT_TARGET / (0.9f * (float)E * embd_std);
        const s_init in = {.mean = 0.0f,
                           .std = 0.1f * beta,
                           .pred_off = off,
                           .pred = pred,
                           .pred_rows = V,
                           .embd_seed = s_tensor_seed(cfg->seed, "token_embd.weight"),
                           .embd_std = embd_std,
                           .beta = beta};
        const int64_t ne[2] = {E, V};
        rc = s_tensor(&g, "output.weight", cfg->type, 2, ne, &in);
        free(off);
        free(pred);
    }
    s_gen_fini(&g, st);
    return rc ? -1 : 0;
}

/* ---- vision tower + projector ------------------------------------------------------------ */

static int s_check_vit_cfg(const ms_modelgen_cfg *c, char *err, size_t err_size) {
    if (c->v_image_size < 1 || c->v_patch_size < 1 || c->v_n_embd < 1 || c->v_n_ff < 1 ||
        c->v_n_layer < 1 || c->v_n_head < 1 || c->n_embd < 1)
        return ms_errf(err, err_size, "modelgen: every vision size must be positive");
    if (c->v_image_size % c->v_patch_size != 0 || c->v_n_embd % c->v_n_head != 0)
        return ms_errf(err, err_size,
                       "modelgen: patch %d must divide image %d and heads %d "
                       "must divide width %d",
                       c->v_patch_size, c->v_image_size, c->v_n_head, c->v_n_embd);
    if (c->v_n_ff == c->v_n_embd)
        return ms_errf(err, err_size,
                       "modelgen: vision n_ff must differ from n_embd (the fc1 / "
                       "fc2 naming is told apart by shape)");
    return 0;
}

int ms_modelgen_vit(const ms_modelgen_cfg *cfg, const ms_modelgen_hooks *hooks, ms_gguf_writer *w,
                    ms_modelgen_stats *st, char *err, size_t err_size) {
    if (s_check_vit_cfg(cfg, err, err_size) != 0) return -1;
    s_gen g;
    s_gen_init(&g, cfg, hooks, w, err, err_size);
    const int64_t E = cfg->v_n_embd, F = cfg->v_n_ff, M = cfg->n_embd, p = cfg->v_patch_size;
    const int64_t side = cfg->v_image_size / p, n_pos = side * side + 1;
    const int n_blocks = cfg->v_n_layer + 1; /* the last stored block is not run (model.h) */
    const float res = cfg->residual_gain / sqrtf(2.0f * (float)cfg->v_n_layer);
    const float nsp = MS_MODELGEN_NORM_SPREAD;
    /* CLIP's normalisation (OpenAI) */
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    const float stdv[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    char name[S_NAME_MAX];

    snprintf(name, sizeof name, "modserve %s vision", cfg->preset);
    s_set_str(&g, "general.architecture", "clip");
    s_set_str(&g, "general.name", name);
    s_set_str(&g, "general.description", "image encoder for LLaVA (modserve-mkmodel)");
    s_set_u32(&g, "general.file_type", s_ftype(cfg->type));
    s_set_bool(&g, "clip.has_text_encoder", false);
    s_set_bool(&g, "clip.has_vision_encoder", true);
    s_set_bool(&g, "clip.has_llava_projector", true);
    s_set_str(&g, "clip.projector_type", "mlp");
    s_set_u32(&g, "clip.vision.image_size", (uint32_t)cfg->v_image_size);
    s_set_u32(&g, "clip.vision.patch_size", (uint32_t)p);
    s_set_u32(&g, "clip.vision.embedding_length", (uint32_t)E);
    s_set_u32(&g, "clip.vision.feed_forward_length", (uint32_t)F);
    s_set_u32(&g, "clip.vision.projection_dim", (uint32_t)M);
    s_set_u32(&g, "clip.vision.attention.head_count", (uint32_t)cfg->v_n_head);
    s_set_f32(&g, "clip.vision.attention.layer_norm_epsilon", cfg->v_eps);
    s_set_u32(&g, "clip.vision.block_count", (uint32_t)n_blocks);
    s_set_f32_arr(&g, "clip.vision.image_mean", mean, 3);
    s_set_f32_arr(&g, "clip.vision.image_std", stdv, 3);
    s_set_bool(&g, "clip.use_gelu", cfg->v_use_gelu);

    /* the patch kernel and position table stay float (a convolution, a lookup) */
    const ms_type ft = cfg->type == MS_TYPE_F32 ? MS_TYPE_F32 : MS_TYPE_F16;
    const int64_t pne[4] = {p, p, 3, E}, posne[2] = {E, n_pos};
    const s_init pin = {.std = 1.0f / sqrtf((float)(3 * p * p))}, posin = {.std = 0.3f};
    int rc = s_tensor(&g, "v.patch_embd.weight", ft, 4, pne, &pin) ||
             s_vec(&g, "v.class_embd", E, 0.0f, 0.5f) ||
             s_tensor(&g, "v.position_embd.weight", ft, 2, posne, &posin) ||
             s_vec(&g, "v.pre_ln.weight", E, 1.0f, nsp) ||
             s_vec(&g, "v.pre_ln.bias", E, 0.0f, 0.05f);
#define S_N(fmt) (snprintf(name, sizeof name, "v.blk.%d." fmt, il), name)
    for (int il = 0; il < n_blocks && rc == 0; il++) {
        rc = s_vec(&g, S_N("ln1.weight"), E, 1.0f, nsp) ||
             s_vec(&g, S_N("ln1.bias"), E, 0.0f, 0.05f) ||
             s_lin(&g, S_N("attn_q.weight"), E, E, 1.0f) ||
             s_vec(&g, S_N("attn_q.bias"), E, 0.0f, 0.05f) ||
             s_lin(&g, S_N("attn_k.weight"), E, E, 1.0f) ||
             s_vec(&g, S_N("attn_k.bias"), E, 0.0f, 0.05f) ||
             s_lin(&g, S_N("attn_v.weight"), E, E, 1.0f) ||
             s_vec(&g, S_N("attn_v.bias"), E, 0.0f, 0.05f) ||
             s_lin(&g, S_N("attn_out.weight"), E, E, res) ||
             s_vec(&g, S_N("attn_out.bias"), E, 0.0f, 0.02f) ||
             s_vec(&g, S_N("ln2.weight"), E, 1.0f, nsp) ||
             s_vec(&g, S_N("ln2.bias"), E, 0.0f, 0.05f) ||
             /* current llama.cpp naming: ffn_up = fc1 (E -> F), ffn_down = fc2 (F -> E) */
             s_lin(&g, S_N("ffn_up.weight"), E, F, 1.0f) ||
             s_vec(&g, S_N("ffn_up.bias"), F, 0.0f, 0.1f) ||
             s_lin(&g, S_N("ffn_down.weight"), F, E, res) ||
             s_vec(&g, S_N("ffn_down.bias"), E, 0.0f, 0.02f);
    }
#undef S_N
    if (rc == 0)
        rc = s_lin(&g, "mm.0.weight", E, M, 1.0f) || s_vec(&g, "mm.0.bias", M, 0.0f, 0.05f) ||
             s_lin(&g, "mm.2.weight", M, M, 1.0f) || s_vec(&g, "mm.2.bias", M, 0.0f, 0.05f);
    s_gen_fini(&g, st);
    return rc ? -1 : 0;
}

/* ---- vocabularies ---------------------------------------------------------------------- */

/* English and code the builtin merges are learned from (written for this project). */
static const char S_CORPUS[] =
    "The server takes a picture and a question, turns the picture into a grid of patches, and "
    "runs them through a vision transformer. The projector maps every patch into the space of "
    "the language model, which then reads the question and writes the answer one token at a "
    "time. Each stage can run in its own process, on its own machine, with its own batch size.\n"
    "When the queue grows, the scheduler looks at the deadline of every request and serves the "
    "one with the least slack first. Text-only requests never wait for the image encoder. "
    "Images are decoded, resized and normalised before they reach the encoder; a broken or "
    "oversized file is rejected with a clear error instead of a crash.\n"
    "A model file holds its hyperparameters as keys and its weights as tensors. The loader "
    "checks that every key has the right type and every tensor has the right shape, then maps "
    "the file into memory so that only the pages that are touched are read from the disk.\n"
    "What is in this image? There is a small red house on a hill, with a tree next to the "
    "door and a path that goes down to the river. The sky is blue and there are a few white "
    "clouds. Two children are playing in the garden and a dog is sleeping in the sun.\n"
    "Please describe the picture in one sentence. Answer the question with a short phrase. "
    "How many people are there? What colour is the car? Where is the cat sitting?\n"
    "int main(int argc, char **argv) {\n"
    "    if (argc < 2) {\n"
    "        fprintf(stderr, \"usage: %s FILE\\n\", argv[0]);\n"
    "        return 1;\n"
    "    }\n"
    "    for (int i = 0; i < n; i++) {\n"
    "        sum += x[i] * y[i];\n"
    "    }\n"
    "    return 0;\n"
    "}\n"
    "def forward(self, x):\n"
    "    for layer in self.layers:\n"
    "        x = x + layer.attention(layer.norm(x))\n"
    "        x = x + layer.mlp(layer.norm2(x))\n"
    "    return self.output(self.norm(x))\n"
    "The numbers 0, 1, 2, 3, 4, 5, 6, 7, 8 and 9 are digits; 2024 and 1024 are numbers too. "
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.\n";

/* Splits text into pre-tokens roughly as the qwen2 regex does (ASCII only):
 * [^\r\n L N]?L+ | N | ' '?[^\s L N]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+ */
static size_t s_pretoken(const char *s, size_t n, size_t i) {
#define S_L(c)  (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define S_D(c)  ((c) >= '0' && (c) <= '9')
#define S_W(c)  ((c) == ' ' || (c) == '\t' || (c) == '\n' || (c) == '\r')
#define S_NL(c) ((c) == '\n' || (c) == '\r')
    size_t j = i;
    char c = s[i];
    if (S_L(c) || (!S_D(c) && !S_NL(c) && i + 1 < n && S_L(s[i + 1]))) {
        j++;
        while (j < n && S_L(s[j]))
            j++;
        return j;
    }
    if (S_D(c)) return i + 1;
    if (!S_W(c) || (c == ' ' && i + 1 < n && !S_W(s[i + 1]) && !S_L(s[i + 1]) && !S_D(s[i + 1]))) {
        if (c == ' ') j++;
        while (j < n && !S_W(s[j]) && !S_L(s[j]) && !S_D(s[j]))
            j++;
        while (j < n && S_NL(s[j]))
            j++;
        return j;
    }
    while (j < n && S_W(s[j]))
        j++;
    /* a run of spaces before a word leaves its last space to the word */
    if (j < n && j - i > 1 && s[j - 1] == ' ') j--;
    return j;
#undef S_L
#undef S_D
#undef S_W
#undef S_NL
}

typedef struct s_word {
    int32_t *sym; /* symbols (token ids) */
    int n;        /* symbols in use */
    int count;    /* occurrences in the corpus */
} s_word;

static int s_cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int32_t s_vocab_push(ms_vocab *v, char *tok, int32_t type, int *cap) {
    if (v->n_tokens == *cap) {
        *cap *= 2;
        v->tokens = ms_xrealloc(v->tokens, (size_t)*cap * sizeof *v->tokens);
        v->types = ms_xrealloc(v->types, (size_t)*cap * sizeof *v->types);
    }
    v->tokens[v->n_tokens] = tok;
    v->types[v->n_tokens] = type;
    return v->n_tokens++;
}

void ms_modelgen_builtin_vocab(ms_vocab *v) {
    memset(v, 0, sizeof *v);
    snprintf(v->model, sizeof v->model, "gpt2");
    snprintf(v->pre, sizeof v->pre, "qwen2");
    int cap = 1024;
    v->tokens = ms_xmalloc((size_t)cap * sizeof *v->tokens);
    v->types = ms_xmalloc((size_t)cap * sizeof *v->types);
    v->merges = ms_xmalloc(MS_MODELGEN_BUILTIN_MERGES * sizeof *v->merges);
    for (int b = 0; b < 256; b++) {
        char buf[4] = {0};
        s_utf8_put((uint32_t)s_byte_to_cp(b), buf);
        s_vocab_push(v, ms_xstrdup(buf), MS_TOKEN_NORMAL, &cap);
    }

    /* the corpus as unique pre-tokens with counts, in order of first appearance */
    const size_t n = sizeof S_CORPUS - 1;
    s_word *words = NULL;
    int n_words = 0, words_cap = 0;
    for (size_t i = 0; i < n;) {
        size_t j = s_pretoken(S_CORPUS, n, i);
        if (j <= i) j = i + 1;
        int w;
        for (w = 0; w < n_words; w++) {
            if (words[w].n != (int)(j - i)) continue;
            int k = 0;
            while (k < words[w].n && words[w].sym[k] == (unsigned char)S_CORPUS[i + k])
                k++;
            if (k == words[w].n) break;
        }
        if (w == n_words) {
            if (n_words == words_cap) {
                words_cap = words_cap ? 2 * words_cap : 256;
                words = ms_xrealloc(words, (size_t)words_cap * sizeof *words);
            }
            words[w].n = (int)(j - i);
            words[w].count = 0;
            words[w].sym = ms_xmalloc((size_t)words[w].n * sizeof(int32_t));
            for (int k = 0; k < words[w].n; k++)
                words[w].sym[k] = (unsigned char)S_CORPUS[i + k];
            n_words++;
        }
        words[w].count++;
        i = j;
    }

    /* merges: most frequent adjacent pair first, ties to the smallest (left, right);
     * once no pair repeats, single pairs keep merging (whole corpus words) */
    size_t pairs_cap = n + 1;
    uint64_t *keys = ms_xmalloc(pairs_cap * sizeof *keys);
    int *cnt = ms_xmalloc(pairs_cap * sizeof *cnt);
    while (v->n_merges < MS_MODELGEN_BUILTIN_MERGES) {
        size_t np = 0;
        for (int w = 0; w < n_words; w++)
            for (int k = 0; k + 1 < words[w].n; k++)
                keys[np++] =
                    ((uint64_t)(uint32_t)words[w].sym[k] << 32) | (uint32_t)words[w].sym[k + 1];
        if (np == 0) break;
        /* weights: recount per sorted key (words repeat their pairs count times) */
        qsort(keys, np, sizeof *keys, s_cmp_u64);
        size_t nu = 0;
        for (size_t a = 0; a < np;) {
            size_t b = a;
            while (b < np && keys[b] == keys[a])
                b++;
            keys[nu++] = keys[a];
            a = b;
        }
        for (size_t u = 0; u < nu; u++)
            cnt[u] = 0;
        for (int w = 0; w < n_words; w++)
            for (int k = 0; k + 1 < words[w].n; k++) {
                uint64_t key =
                    ((uint64_t)(uint32_t)words[w].sym[k] << 32) | (uint32_t)words[w].sym[k + 1];
                uint64_t *hit = bsearch(&key, keys, nu, sizeof *keys, s_cmp_u64);
                cnt[hit - keys] += words[w].count;
            }
        size_t best = 0;
        for (size_t u = 1; u < nu; u++)
            if (cnt[u] > cnt[best]) best = u;
        if (cnt[best] < 1) break;
        const int32_t l = (int32_t)(keys[best] >> 32), r = (int32_t)(keys[best] & 0xffffffffu);
        const size_t ll = strlen(v->tokens[l]), rl = strlen(v->tokens[r]);
        char *tok = ms_xmalloc(ll + rl + 1);
        memcpy(tok, v->tokens[l], ll);
        memcpy(tok + ll, v->tokens[r], rl + 1);
        int32_t id = -1;
        for (int32_t t = 256; t < v->n_tokens && id < 0; t++)
            if (strcmp(v->tokens[t], tok) == 0) id = t;
        char *merge = ms_xmalloc(ll + rl + 2);
        memcpy(merge, v->tokens[l], ll);
        merge[ll] = ' ';
        memcpy(merge + ll + 1, v->tokens[r], rl + 1);
        v->merges[v->n_merges++] = merge;
        if (id < 0)
            id = s_vocab_push(v, tok, MS_TOKEN_NORMAL, &cap);
        else
            free(tok);
        for (int w = 0; w < n_words; w++) {
            int o = 0;
            for (int k = 0; k < words[w].n; k++) {
                if (k + 1 < words[w].n && words[w].sym[k] == l && words[w].sym[k + 1] == r) {
                    words[w].sym[o++] = id;
                    k++;
                } else {
                    words[w].sym[o++] = words[w].sym[k];
                }
            }
            words[w].n = o;
        }
    }
    free(keys);
    free(cnt);
    for (int w = 0; w < n_words; w++)
        free(words[w].sym);
    free(words);

    const int32_t eot = s_vocab_push(v, ms_xstrdup("<|endoftext|>"), MS_TOKEN_CONTROL, &cap);
    const int32_t ims = s_vocab_push(v, ms_xstrdup("<|im_start|>"), MS_TOKEN_CONTROL, &cap);
    const int32_t ime = s_vocab_push(v, ms_xstrdup("<|im_end|>"), MS_TOKEN_CONTROL, &cap);
    (void)ims;
    v->scores = NULL;
    v->bos_id = eot;
    v->eos_id = ime;
    v->eot_id = ime;
    v->unk_id = -1;
    v->pad_id = eot;
    v->add_bos = false;
    v->add_space_prefix = false;
}

/* The chat_template of foo.tokenizer_config.json / tokenizer_config.json
 * beside a foo.tokenizer.json / tokenizer.json, or NULL. */
static char *s_sibling_template(const char *path) {
    const char *suffix = "tokenizer.json";
    size_t n = strlen(path), sn = strlen(suffix);
    if (n < sn || strcmp(path + n - sn, suffix) != 0) return NULL;
    char *cfg = ms_xmalloc(n + 16);
    memcpy(cfg, path, n - sn);
    strcpy(cfg + n - sn, "tokenizer_config.json");
    char err[MS_ERR_SIZE];
    size_t len;
    uint8_t *data = ms_read_file(cfg, 64u << 20, &len, err, sizeof err);
    free(cfg);
    if (!data) return NULL;
    char *out = NULL;
    cJSON *root = cJSON_ParseWithLength((const char *)data, len);
    const cJSON *t = root ? cJSON_GetObjectItemCaseSensitive(root, "chat_template") : NULL;
    if (cJSON_IsString(t) && t->valuestring) out = ms_xstrdup(t->valuestring);
    cJSON_Delete(root);
    free(data);
    return out;
}

int ms_modelgen_load_vocab(const char *spec, ms_vocab *v, char **chat_template, char *err,
                           size_t err_size) {
    *chat_template = NULL;
    if (strcmp(spec, "builtin") == 0) {
        ms_modelgen_builtin_vocab(v);
    } else {
        if (ms_vocab_load_json(spec, v, err, err_size) != 0) return -1;
        *chat_template = s_sibling_template(spec);
    }
    if (!*chat_template) *chat_template = ms_xstrdup(ms_modelgen_chat_template(v));
    return 0;
}

/* ---- writing both files ------------------------------------------------------------------- */

static int s_mkdirs(const char *dir, char *err, size_t err_size) {
    char *p = ms_xstrdup(dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            ms_errf(err, err_size, "cannot create %s: %s", p, strerror(errno));
            free(p);
            return -1;
        }
        *s = '/';
    }
    int rc = 0;
    if (mkdir(p, 0777) != 0 && errno != EEXIST)
        rc = ms_errf(err, err_size, "cannot create %s: %s", p, strerror(errno));
    free(p);
    return rc;
}

int ms_modelgen_write(const ms_modelgen_cfg *cfg, const char *dir, const char *prefix,
                      ms_modelgen_stats *lm_st, ms_modelgen_stats *vit_st, char *err,
                      size_t err_size) {
    if (!prefix) prefix = cfg->preset;
    if (s_mkdirs(dir, err, err_size) != 0) return -1;
    ms_vocab vocab;
    char *tmpl = NULL;
    if (ms_modelgen_load_vocab(cfg->vocab, &vocab, &tmpl, err, err_size) != 0) return -1;
    size_t plen = strlen(dir) + strlen(prefix) + 32;
    char *path = ms_xmalloc(plen);

    ms_gguf_writer *w = ms_gguf_writer_new();
    snprintf(path, plen, "%s/%s-lm.gguf", dir, prefix);
    int rc = ms_modelgen_lm(cfg, &vocab, tmpl, NULL, w, lm_st, err, err_size);
    if (rc == 0) rc = ms_gguf_writer_write(w, path, err, err_size);
    ms_gguf_writer_destroy(&w);
    ms_vocab_fini(&vocab);
    free(tmpl);

    if (rc == 0) {
        w = ms_gguf_writer_new();
        snprintf(path, plen, "%s/%s-mmproj.gguf", dir, prefix);
        rc = ms_modelgen_vit(cfg, NULL, w, vit_st, err, err_size);
        if (rc == 0) rc = ms_gguf_writer_write(w, path, err, err_size);
        ms_gguf_writer_destroy(&w);
    }
    free(path);
    return rc;
}
