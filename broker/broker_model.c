/* broker_model.c — see broker_model.h. */
#include "broker_model.h"

#include <stdio.h>
#include <string.h>

#include "engine.h"
#include "kvcache.h"
#include "model.h"
#include "ms_common.h"

#define S_KEY_MAX 128 /* "{arch}.context_length" */

int ms_broker_model_open(ms_broker_model *m, const char *lm_path, const char *mmproj_path,
                         const char *tmpl_name, int n_ctx, char *err, size_t err_size) {
    memset(m, 0, sizeof(*m));
    char e[MS_ERR_SIZE];
    if (!lm_path) return ms_errf(err, err_size, "no text model given (--model)");
    m->lm_file = ms_gguf_open(lm_path, e, sizeof(e));
    if (!m->lm_file) return ms_errf(err, err_size, "%s: %s", lm_path, e);
    m->tok = ms_tokenizer_from_gguf(m->lm_file, e, sizeof(e));
    if (!m->tok) {
        ms_errf(err, err_size, "%s: %s", lm_path, e);
        goto fail;
    }
    const char *jinja = NULL;
    if (ms_gguf_find_key(m->lm_file, "tokenizer.chat_template") >= 0 &&
        ms_gguf_get_str(m->lm_file, "tokenizer.chat_template", &jinja, e, sizeof(e)) != 0) {
        ms_errf(err, err_size, "%s: %s", lm_path, e);
        goto fail;
    }
    if (tmpl_name) {
        if (ms_chat_template_from_name(tmpl_name, &m->tmpl, e, sizeof(e)) != 0) {
            ms_errf(err, err_size, "--chat-template: %s", e);
            goto fail;
        }
    } else {
        m->tmpl = ms_chat_detect(jinja);
    }
    const char *arch = NULL;
    if (ms_gguf_get_str(m->lm_file, "general.architecture", &arch, e, sizeof(e)) != 0) {
        ms_errf(err, err_size, "%s: %s", lm_path, e);
        goto fail;
    }
    char key[S_KEY_MAX];
    snprintf(key, sizeof(key), "%.100s.context_length", arch);
    uint32_t ctx = 0;
    if (ms_gguf_get_u32(m->lm_file, key, &ctx, e, sizeof(e)) != 0) {
        ms_errf(err, err_size, "%s: %s", lm_path, e);
        goto fail;
    }
    if (ctx < 1 || ctx > MS_MODEL_MAX_CTX) {
        ms_errf(err, err_size, "%s: %s = %u is out of range", lm_path, key, ctx);
        goto fail;
    }
    m->n_ctx_train = (int)ctx;
    m->n_ctx = n_ctx > 0 ? n_ctx : MS_MIN(m->n_ctx_train, MS_ENGINE_KV_TOKENS_DEFAULT);
    m->kv_block_size = MS_KV_BLOCK_SIZE_DEFAULT;
    if (mmproj_path) {
        ms_vit *vit = ms_vit_load(mmproj_path, e, sizeof(e));
        if (!vit) {
            ms_errf(err, err_size, "%s: %s", mmproj_path, e);
            goto fail;
        }
        m->n_image_tokens = vit->hp.n_image_tokens;
        ms_vit_free(&vit);
    }
    return 0;
fail:
    ms_broker_model_close(m);
    return -1;
}

void ms_broker_model_close(ms_broker_model *m) {
    ms_tokenizer_destroy(&m->tok);
    ms_gguf_close(&m->lm_file);
    memset(m, 0, sizeof(*m));
}
