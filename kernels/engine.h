/* engine.h — the stage API: everything an actor or modserve-run asks of the
 * compute engine (DESIGN.md §3).
 *
 * An engine owns a text model, optionally a vision tower + projector
 * (mmproj), a compute backend, a paged KV cache of bounded size, and scratch
 * buffers. Stages, and the data that crosses each boundary (all host memory,
 * f32, row-major, so an actor can ship it as raw frames):
 *
 *   preprocess  image bytes            → pixels   (3, S, S) planar CHW, S = image size
 *   encode      pixels  (n, 3, S, S)   → features (n, n_image_tokens, feature_dim)
 *               (ViT output with the class token dropped; feature_dim = ViT n_embd)
 *   project     features               → embd     (n, n_image_tokens, n_embd of the LM)
 *   prefill     prompt (prompt.h) + embd → KV rows of a sequence, logits of the last row
 *   decode      one token per sequence, a batch of sequences → logits (n_seqs, n_vocab)
 *   sample      logits → token (sampler.h, on the host)
 *
 * Running the stages one by one (even with a KV export/import between
 * prefill and decode) yields exactly the tokens of ms_engine_generate, given
 * the sampler state travels with the sequence: see docs/engine.md for the
 * determinism guarantees.
 *
 * Threads: ms_engine_preprocess may be called from any thread at any time;
 * every other call uses the engine's backend and scratch and must come from
 * one thread at a time.
 */
#ifndef MS_ENGINE_H
#define MS_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "kvcache.h"
#include "model.h"
#include "prompt.h"
#include "sampler.h"
#include "tokenizer.h"

/* Defaults and limits of ms_engine_params (0 in a field means the default). */
#define MS_ENGINE_KV_TOKENS_DEFAULT    4096      /* KV capacity, tokens */
#define MS_ENGINE_BATCH_TOKENS_DEFAULT 512       /* rows per LM pass: prefill chunk, decode slice */
#define MS_ENGINE_MAX_BATCH_TOKENS     65536     /* largest accepted max_batch_tokens */
#define MS_ENGINE_VIT_BATCH_DEFAULT    4         /* images per ViT pass */
#define MS_ENGINE_MAX_PROMPT           (1 << 20) /* longest accepted prompt, entries */

/* Loading progress: what is being done ("lm", "mmproj", "weights", "kv") and
 * the fraction done in [0, 1]. */
typedef void (*ms_engine_progress_fn)(const char *what, float fraction, void *user);

typedef struct ms_engine_params {
    const char *lm_path;     /* text model GGUF (required) */
    const char *mmproj_path; /* vision tower + projector GGUF, or NULL for text only */
    const char *backend;     /* "cpu" (NULL means "cpu") or "cpu-ref" */
    int n_threads;           /* backend threads; <= 0: one per core */
    int kv_block_size;       /* tokens per KV block; 0: MS_KV_BLOCK_SIZE_DEFAULT */
    int kv_max_tokens;       /* KV capacity over all sequences, tokens (rounded up to
                                blocks); 0: MS_ENGINE_KV_TOKENS_DEFAULT. Bounds KV memory. */
    int n_ctx;               /* tokens one sequence may hold; 0: min(n_ctx_train, kv_max_tokens) */
    int max_batch_tokens;    /* rows per LM forward pass; 0: MS_ENGINE_BATCH_TOKENS_DEFAULT */
    int vit_batch;           /* images per ViT pass; 0: MS_ENGINE_VIT_BATCH_DEFAULT */
    ms_engine_progress_fn progress; /* may be NULL */
    void *progress_user;            /* passed to progress */
} ms_engine_params;

/* Fills p with defaults (all zero/NULL, backend "cpu"). */
void ms_engine_params_default(ms_engine_params *p);

typedef struct ms_engine ms_engine;

/* Loads the models, creates the backend, prepares weights and allocates the
 * KV cache and scratch. NULL + err (naming the file or parameter) on failure. */
ms_engine *ms_engine_new(const ms_engine_params *p, char *err, size_t err_size);
/* Frees everything; sequences made by this engine must have been freed first. */
void ms_engine_destroy(ms_engine **e_p);

/* ---- accessors ------------------------------------------------------------ */
const ms_lm *ms_engine_lm(const ms_engine *e);
const ms_vit *ms_engine_vit(const ms_engine *e); /* NULL when text only */
const ms_tokenizer *ms_engine_tokenizer(const ms_engine *e);
ms_backend *ms_engine_backend(const ms_engine *e);
int ms_engine_n_vocab(const ms_engine *e);
int ms_engine_n_embd(const ms_engine *e); /* LM embedding width */
int ms_engine_n_ctx(const ms_engine *e);  /* tokens per sequence at most */
bool ms_engine_has_vision(const ms_engine *e);
int ms_engine_n_image_tokens(const ms_engine *e);  /* 0 when text only */
int ms_engine_image_size(const ms_engine *e);      /* S; 0 when text only */
size_t ms_engine_image_floats(const ms_engine *e); /* 3 * S * S; 0 when text only */
int ms_engine_feature_dim(const ms_engine *e);     /* ViT n_embd; 0 when text only */
/* Identifies the text model (dims + a hash of some weights); KV blobs carry it. */
uint64_t ms_engine_model_hash(const ms_engine *e);
int ms_engine_kv_block_size(const ms_engine *e);
int ms_engine_kv_total_blocks(const ms_engine *e);
int ms_engine_kv_free_blocks(const ms_engine *e);
size_t ms_engine_kv_bytes(const ms_engine *e); /* KV pool memory, bytes */

/* ---- vision stages -------------------------------------------------------- */
/* Decodes and preprocesses one image (CPU only, thread-safe) into pixels
 * (ms_engine_image_floats floats). 0, or -1 + err (also when text only). */
int ms_engine_preprocess(const ms_engine *e, const uint8_t *bytes, size_t len, float *pixels,
                         char *err, size_t err_size);
/* ViT over n_images preprocessed images (pixels: n_images * image_floats)
 * into features (n_images * n_image_tokens * feature_dim). 0 or -1 + err. */
int ms_engine_encode(ms_engine *e, const float *pixels, int n_images, float *features, char *err,
                     size_t err_size);
/* The mlp connector: features (as encode writes them) → embd
 * (n_images * n_image_tokens * n_embd). 0 or -1 + err. */
int ms_engine_project(ms_engine *e, const float *features, int n_images, float *embd, char *err,
                      size_t err_size);

/* ---- sequences ------------------------------------------------------------ */
/* A new empty sequence (no KV blocks yet), owned by the caller. */
ms_seq *ms_engine_seq_new(ms_engine *e);
/* Returns the sequence's blocks to the cache and frees it; NULLs *seq_p. */
void ms_engine_seq_free(ms_engine *e, ms_seq **seq_p);

/* Feeds a prompt (prompt.h: ids >= 0, image placeholders MS_PROMPT_IMAGE(k)
 * expanded into the n_image_tokens rows of image k of image_embd, which holds
 * n_images images as ms_engine_project writes them) after what seq already
 * holds, in passes of at most max_batch_tokens rows. If logits_last is not
 * NULL it receives the n_vocab logits of the last row. Errors (nothing is
 * written to the cache): a token id out of range, an image index >= n_images,
 * the sequence past n_ctx, "KV cache full: need N blocks, M free". */
int ms_engine_prefill(ms_engine *e, ms_seq *seq, const int32_t *prompt, int n,
                      const float *image_embd, int n_images, float *logits_last, char *err,
                      size_t err_size);

/* One decode step for a batch: token tokens[i] is appended to seqs[i]
 * (sequences may have any lengths; each appears once), one matmul per weight
 * over the whole batch, attention per sequence over its blocks. logits
 * receives (n_seqs, n_vocab). The logits of a sequence do not depend on the
 * rest of the batch (bitwise, on backends whose matmul rows are independent).
 * All or nothing on error, as prefill. */
int ms_engine_decode(ms_engine *e, ms_seq *const *seqs, const int32_t *tokens, int n_seqs,
                     float *logits, char *err, size_t err_size);

/* ---- KV hand-off ---------------------------------------------------------- */
/* Bytes of the blob of seq (kvcache.h describes the format). */
size_t ms_engine_seq_export_size(const ms_engine *e, const ms_seq *seq);
/* Writes the blob of seq (which must hold tokens) into buf (cap bytes).
 * The sequence is unchanged: free it once the blob is safely elsewhere.
 * 0 or -1 + err. */
int ms_engine_seq_export(ms_engine *e, const ms_seq *seq, void *buf, size_t cap, char *err,
                         size_t err_size);
/* A new sequence with freshly allocated blocks holding the blob's rows. The
 * blob is untrusted: magic, version, model hash, dims, dtype, lengths and the
 * checksum are all checked. NULL + err on failure. */
ms_seq *ms_engine_seq_import(ms_engine *e, const void *bytes, size_t len, char *err,
                             size_t err_size);

/* ---- the one-call path ---------------------------------------------------- */
typedef struct ms_image_bytes {
    const uint8_t *data; /* encoded image (JPEG/PNG/WebP) */
    size_t len;          /* bytes */
} ms_image_bytes;

typedef enum ms_finish_reason {
    MS_FINISH_EOG = 0,    /* end-of-generation token */
    MS_FINISH_LENGTH = 1, /* max_tokens reached (or the context filled) */
    MS_FINISH_STOP = 2,   /* a stop string matched */
    MS_FINISH_CANCEL = 3, /* the token callback asked to stop */
} ms_finish_reason;

/* Called once per sampled token (the end-of-generation token included) with
 * the text it releases: possibly empty (held back until a UTF-8 character is
 * complete or a possible stop string is decided); with the last token, what
 * was still held is flushed. The concatenated texts equal result.text.
 * Return false to stop generating. */
typedef bool (*ms_token_fn)(int32_t id, const char *text, int len, void *user);

typedef struct ms_generate_result {
    int n_prompt;    /* rows prefilled (images expanded) */
    int n_generated; /* tokens sampled */
    int32_t *tokens; /* the n_generated tokens, owned (ms_generate_result_fini) */
    char *text;      /* all emitted text, NUL-terminated, owned */
    size_t text_len; /* bytes in text */
    ms_finish_reason finish;
    double t_preprocess_ms; /* wall time per stage */
    double t_encode_ms;     /* ViT */
    double t_project_ms;    /* connector */
    double t_prefill_ms;    /* prefill incl. first logits */
    double t_decode_ms;     /* every decode step */
} ms_generate_result;

void ms_generate_result_fini(ms_generate_result *r);

/* preprocess → encode → project → prefill → sample → decode loop, stopping on
 * an end-of-generation token, max_tokens, a stop string (never emitted), the
 * context filling up, or the callback. on_token may be NULL. out is filled
 * (and must be finalised) on success. Errors name the stage and, for images,
 * the image index ("image 1: ..."). */
int ms_engine_generate(ms_engine *e, const int32_t *prompt, int n, const ms_image_bytes *images,
                       int n_images, const ms_sampling_params *sp, ms_token_fn on_token, void *user,
                       ms_generate_result *out, char *err, size_t err_size);

#endif
