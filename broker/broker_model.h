/* broker_model.h — what the broker reads from the model files: the text
 * model's tokenizer and chat template (GGUF mmap; no weights are read), its
 * context length, and the image token count of the mmproj.
 *
 * Kept in its own file because it needs engine.h's defaults, and engine.h
 * and wire.h both define MS_FINISH_* (different enums).
 */
#ifndef MS_BROKER_MODEL_H
#define MS_BROKER_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "gguf.h"
#include "tokenizer.h"

typedef struct ms_broker_model {
    ms_gguf *lm_file;       /* the LM GGUF mapping (owned) */
    ms_tokenizer *tok;      /* from tokenizer.ggml.* (owned) */
    ms_chat_template tmpl;  /* the given template, else detected from tokenizer.chat_template */
    int n_ctx_train;        /* {arch}.context_length */
    int n_ctx;              /* tokens one sequence may hold at the actors */
    int32_t n_image_tokens; /* tokens per image (mmproj), 0 without an mmproj */
    int kv_block_size;      /* tokens per KV block (the engine's default) */
} ms_broker_model;

/* Opens lm_path (required) and mmproj_path (may be NULL). tmpl_name: a
 * chat.h template name or NULL (detect). n_ctx <= 0: the engine's default,
 * min(context_length, MS_ENGINE_KV_TOKENS_DEFAULT). 0, or -1 + err naming the
 * file. On failure nothing needs freeing. */
int ms_broker_model_open(ms_broker_model *m, const char *lm_path, const char *mmproj_path,
                         const char *tmpl_name, int n_ctx, char *err, size_t err_size);
void ms_broker_model_close(ms_broker_model *m);

#endif
