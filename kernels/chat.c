/* chat.c — template detection, rendering and prompt tokenization (see chat.h). */
#include "chat.h"

#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

#define S_MARKER_LEN (sizeof(MS_CHAT_IMAGE_MARKER) - 1)

static const char *const s_template_names[MS_CHAT_TEMPLATE_COUNT] = {
    [MS_CHAT_PLAIN] = "plain",
    [MS_CHAT_RAW] = "raw",
    [MS_CHAT_CHATML] = "chatml",
    [MS_CHAT_LLAMA3] = "llama3",
    [MS_CHAT_VICUNA] = "vicuna",
    [MS_CHAT_VICUNA_ORCA] = "vicuna-orca",
    [MS_CHAT_LLAMA2] = "llama2",
    [MS_CHAT_LLAMA2_SYS] = "llama2-sys",
    [MS_CHAT_LLAMA2_SYS_BOS] = "llama2-sys-bos",
    [MS_CHAT_LLAMA2_SYS_STRIP] = "llama2-sys-strip",
};

const char *ms_chat_template_name(ms_chat_template t) {
    if ((int)t < 0 || t >= MS_CHAT_TEMPLATE_COUNT) return "?";
    return s_template_names[t];
}

const char *ms_chat_role_name(ms_chat_role r) {
    switch (r) {
    case MS_CHAT_SYSTEM:
        return "system";
    case MS_CHAT_USER:
        return "user";
    case MS_CHAT_ASSISTANT:
        return "assistant";
    }
    return "?";
}

int ms_chat_template_from_name(const char *name, ms_chat_template *out, char *err,
                               size_t err_size) {
    for (int t = 0; t < MS_CHAT_TEMPLATE_COUNT; t++) {
        if (name && strcmp(name, s_template_names[t]) == 0) {
            *out = (ms_chat_template)t;
            return 0;
        }
    }
    char names[256] = "";
    for (int t = 0; t < MS_CHAT_TEMPLATE_COUNT; t++) {
        strncat(names, s_template_names[t], sizeof(names) - strlen(names) - 1);
        if (t + 1 < MS_CHAT_TEMPLATE_COUNT) strncat(names, ", ", sizeof(names) - strlen(names) - 1);
    }
    return ms_errf(err, err_size, "unknown chat template '%s' (known: %s)", name ? name : "(null)",
                   names);
}

/* ---- detection ------------------------------------------------------------ */

ms_chat_template ms_chat_detect(const char *jinja) {
    if (!jinja || !jinja[0]) return MS_CHAT_CHATML;
    ms_chat_template named;
    if (ms_chat_template_from_name(jinja, &named, NULL, 0) == 0) return named;
#define S_HAS(s) (strstr(jinja, (s)) != NULL)
    /* the order of llama.cpp's llm_chat_detect_template for these families */
    if (S_HAS("<|im_start|>")) {
        /* Phi-4 and SmolVLM reuse <|im_start|> but are not ChatML */
        if (S_HAS("<|im_sep|>") || S_HAS("<end_of_utterance>")) return MS_CHAT_PLAIN;
        return MS_CHAT_CHATML;
    }
    if (strncmp(jinja, "mistral", 7) == 0 || S_HAS("[INST]")) {
        if (S_HAS("content.strip()")) return MS_CHAT_LLAMA2_SYS_STRIP;
        if (S_HAS("bos_token + '[INST]")) return MS_CHAT_LLAMA2_SYS_BOS;
        if (S_HAS("<<SYS>>")) return MS_CHAT_LLAMA2_SYS;
        return MS_CHAT_LLAMA2;
    }
    if (S_HAS("USER: ") && S_HAS("ASSISTANT: "))
        return S_HAS("SYSTEM: ") ? MS_CHAT_VICUNA_ORCA : MS_CHAT_VICUNA;
    if (S_HAS("<|start_header_id|>") && S_HAS("<|end_header_id|>")) return MS_CHAT_LLAMA3;
#undef S_HAS
    return MS_CHAT_PLAIN;
}

/* ---- a growable string ---------------------------------------------------- */

typedef struct s_buf {
    char *data; /* NUL-terminated */
    size_t len; /* bytes before the NUL */
    size_t cap; /* bytes allocated */
} s_buf;

static void s_put(s_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap)
            cap *= 2;
        b->data = ms_xrealloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void s_puts(s_buf *b, const char *s) {
    s_put(b, s, strlen(s));
}

/* ---- rendering ------------------------------------------------------------ */

/* First image marker in s[0..len), or NULL. */
static const char *s_find_marker(const char *s, size_t len) {
    const char *end = s + len;
    for (const char *p = s; (size_t)(end - p) >= S_MARKER_LEN; p++) {
        p = memchr(p, MS_CHAT_IMAGE_MARKER[0], (size_t)(end - p) - S_MARKER_LEN + 1);
        if (!p) return NULL;
        if (memcmp(p, MS_CHAT_IMAGE_MARKER, S_MARKER_LEN) == 0) return p;
    }
    return NULL;
}

static size_t s_count_markers(const char *s, size_t len) {
    size_t n = 0;
    const char *end = s + len;
    for (const char *p = s; p + S_MARKER_LEN <= end;) {
        const char *hit = s_find_marker(p, (size_t)(end - p));
        if (!hit) break;
        n++;
        p = hit + S_MARKER_LEN;
    }
    return n;
}

static bool s_is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* A message's text with its images placed (out is reset), trimmed if asked. */
static int s_content(const ms_chat_message *m, int index, bool trim, s_buf *out, char *err,
                     size_t err_size) {
    out->len = 0;
    s_put(out, "", 0); /* allocated from here on */
    size_t len = strnlen(m->text, (size_t)MS_CHAT_MAX_TEXT + 1);
    if (len > MS_CHAT_MAX_TEXT)
        return ms_errf(err, err_size, "message %d: text longer than %u bytes", index,
                       MS_CHAT_MAX_TEXT);
    size_t markers = s_count_markers(m->text, len);
    if (markers > 0 && markers != (size_t)m->n_images)
        return ms_errf(err, err_size,
                       "message %d: %zu %s marker%s in the text but %d image%s attached", index,
                       markers, MS_CHAT_IMAGE_MARKER, markers == 1 ? "" : "s", m->n_images,
                       m->n_images == 1 ? "" : "s");
    if (markers == 0)
        for (int i = 0; i < m->n_images; i++)
            s_puts(out, MS_CHAT_IMAGE_MARKER "\n");
    s_put(out, m->text, len);
    if (trim) {
        size_t a = 0, b = out->len;
        while (a < b && s_is_space(out->data[a]))
            a++;
        while (b > a && s_is_space(out->data[b - 1]))
            b--;
        memmove(out->data, out->data + a, b - a);
        out->len = b - a;
        out->data[out->len] = '\0';
    }
    return 0;
}

static bool s_is_llama2(ms_chat_template t) {
    return t == MS_CHAT_LLAMA2 || t == MS_CHAT_LLAMA2_SYS || t == MS_CHAT_LLAMA2_SYS_BOS ||
           t == MS_CHAT_LLAMA2_SYS_STRIP;
}

/* Appends one message (content c) as template t writes it. */
static void s_render_message(ms_chat_template t, ms_chat_role role, const char *c, s_buf *b,
                             bool *inside_turn) {
    const char *r = ms_chat_role_name(role);
    switch (t) {
    case MS_CHAT_CHATML:
        s_puts(b, "<|im_start|>");
        s_puts(b, r);
        s_puts(b, "\n");
        s_puts(b, c);
        s_puts(b, "<|im_end|>\n");
        break;
    case MS_CHAT_LLAMA3:
        s_puts(b, "<|start_header_id|>");
        s_puts(b, r);
        s_puts(b, "<|end_header_id|>\n\n");
        s_puts(b, c);
        s_puts(b, "<|eot_id|>");
        break;
    case MS_CHAT_VICUNA:
    case MS_CHAT_VICUNA_ORCA:
        if (role == MS_CHAT_SYSTEM) {
            if (t == MS_CHAT_VICUNA_ORCA) {
                s_puts(b, "SYSTEM: ");
                s_puts(b, c);
                s_puts(b, "\n");
            } else {
                s_puts(b, c);
                s_puts(b, "\n\n");
            }
        } else if (role == MS_CHAT_USER) {
            s_puts(b, "USER: ");
            s_puts(b, c);
            s_puts(b, "\n");
        } else {
            s_puts(b, "ASSISTANT: ");
            s_puts(b, c);
            s_puts(b, "</s>\n");
        }
        break;
    case MS_CHAT_LLAMA2:
    case MS_CHAT_LLAMA2_SYS:
    case MS_CHAT_LLAMA2_SYS_BOS:
    case MS_CHAT_LLAMA2_SYS_STRIP:
        if (!*inside_turn) {
            *inside_turn = true;
            s_puts(b, t == MS_CHAT_LLAMA2_SYS_BOS ? "<s>[INST] " : "[INST] ");
        }
        if (role == MS_CHAT_SYSTEM) {
            if (t == MS_CHAT_LLAMA2) {
                s_puts(b, c);
                s_puts(b, "\n");
            } else {
                s_puts(b, "<<SYS>>\n");
                s_puts(b, c);
                s_puts(b, "\n<</SYS>>\n\n");
            }
        } else if (role == MS_CHAT_USER) {
            s_puts(b, c);
            s_puts(b, " [/INST]");
        } else {
            s_puts(b, c);
            s_puts(b, "</s>");
            *inside_turn = false;
        }
        break;
    case MS_CHAT_RAW:
        s_puts(b, c);
        break;
    case MS_CHAT_PLAIN:
    default:
        s_puts(b, c);
        s_puts(b, "\n");
        break;
    }
}

char *ms_chat_render(ms_chat_template t, const ms_chat_message *msgs, int n,
                     bool add_generation_prompt, int *n_images, char *err, size_t err_size) {
    if ((int)t < 0 || t >= MS_CHAT_TEMPLATE_COUNT) {
        ms_errf(err, err_size, "invalid chat template %d", (int)t);
        return NULL;
    }
    if (n < 1 || n > MS_CHAT_MAX_MESSAGES) {
        ms_errf(err, err_size, "%d messages: a conversation needs 1 to %d", n,
                MS_CHAT_MAX_MESSAGES);
        return NULL;
    }
    int total_images = 0;
    for (int i = 0; i < n; i++) {
        const ms_chat_message *m = &msgs[i];
        if (m->role != MS_CHAT_SYSTEM && m->role != MS_CHAT_USER && m->role != MS_CHAT_ASSISTANT) {
            ms_errf(err, err_size, "message %d: invalid role %d", i, (int)m->role);
            return NULL;
        }
        if (!m->text) {
            ms_errf(err, err_size, "message %d: no text", i);
            return NULL;
        }
        if (m->n_images < 0 || m->n_images > MS_MAX_IMAGES_PER_PROMPT - total_images) {
            ms_errf(err, err_size, "message %d: %d images (a prompt takes at most %d in all)", i,
                    m->n_images, MS_MAX_IMAGES_PER_PROMPT);
            return NULL;
        }
        total_images += m->n_images;
    }

    bool trim = t == MS_CHAT_LLAMA3 || t == MS_CHAT_LLAMA2_SYS_STRIP;
    s_buf out = {0}, content = {0};
    bool inside_turn = true; /* llama2: the first "[INST] " is written up front */
    if (s_is_llama2(t)) s_puts(&out, "[INST] ");
    for (int i = 0; i < n; i++) {
        if (s_content(&msgs[i], i, trim, &content, err, err_size) != 0) {
            free(out.data);
            free(content.data);
            return NULL;
        }
        s_render_message(t, msgs[i].role, content.data, &out, &inside_turn);
        if (out.len > MS_CHAT_MAX_TEXT) {
            ms_errf(err, err_size, "rendered conversation longer than %u bytes", MS_CHAT_MAX_TEXT);
            free(out.data);
            free(content.data);
            return NULL;
        }
    }
    free(content.data);
    if (add_generation_prompt) {
        switch (t) {
        case MS_CHAT_CHATML:
            s_puts(&out, "<|im_start|>assistant\n");
            break;
        case MS_CHAT_LLAMA3:
            s_puts(&out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
            break;
        case MS_CHAT_VICUNA:
        case MS_CHAT_VICUNA_ORCA:
            s_puts(&out, "ASSISTANT:");
            break;
        default:
            break; /* llama2, plain, raw: none */
        }
    }
    if (!out.data) s_put(&out, "", 0);
    *n_images = total_images;
    return out.data;
}

/* ---- tokenization --------------------------------------------------------- */

/* Appends the tokens of text[0..len) to *ids (growing it). */
static int s_encode_append(const ms_tokenizer *tok, const char *text, size_t len, bool add_bos,
                           int32_t **ids, int *n, int *cap, char *err, size_t err_size) {
    for (;;) {
        int room = *cap - *n;
        int got =
            ms_tokenizer_encode(tok, text, len, add_bos, true, *ids + *n, room, err, err_size);
        if (got < 0) return -1;
        if (got <= room) {
            *n += got;
            return 0;
        }
        if ((size_t)*n + (size_t)got > (size_t)MS_CHAT_MAX_TEXT + MS_MAX_IMAGES_PER_PROMPT + 1)
            return ms_errf(err, err_size, "prompt too long: more than %u tokens", MS_CHAT_MAX_TEXT);
        *cap = *n + got + 16;
        *ids = ms_xrealloc(*ids, (size_t)*cap * sizeof(int32_t));
    }
}

int ms_chat_tokenize(const ms_tokenizer *tok, const char *text, size_t len, int n_images,
                     int32_t **prompt, int *n_prompt, char *err, size_t err_size) {
    *prompt = NULL;
    *n_prompt = 0;
    if (len > MS_CHAT_MAX_TEXT)
        return ms_errf(err, err_size, "prompt text longer than %u bytes", MS_CHAT_MAX_TEXT);
    size_t markers = s_count_markers(text, len);
    if (n_images < 0 || markers != (size_t)n_images)
        return ms_errf(err, err_size, "the prompt has %zu %s marker%s but %d image%s", markers,
                       MS_CHAT_IMAGE_MARKER, markers == 1 ? "" : "s", n_images,
                       n_images == 1 ? "" : "s");

    const ms_vocab *v = ms_tokenizer_vocab(tok);
    int cap = (int)MS_MIN(len + 16 + (size_t)n_images, (size_t)1 << 20);
    int n = 0;
    int32_t *ids = ms_xmalloc((size_t)cap * sizeof(int32_t));
    const char *p = text, *end = text + len;
    int image = 0;
    for (bool first = true;; first = false) {
        const char *hit = s_find_marker(p, (size_t)(end - p));
        const char *piece_end = hit ? hit : end;
        size_t piece_len = (size_t)(piece_end - p);
        bool add_bos = first && v->add_bos && v->bos_id >= 0;
        if (piece_len > 0) {
            if (s_encode_append(tok, p, piece_len, add_bos, &ids, &n, &cap, err, err_size) != 0) {
                free(ids);
                return -1;
            }
        } else if (add_bos) {
            ids[n++] = v->bos_id; /* the text starts with an image */
        }
        if (!hit) break;
        if (n + 1 > cap) {
            cap = cap * 2 + 16;
            ids = ms_xrealloc(ids, (size_t)cap * sizeof(int32_t));
        }
        ids[n++] = MS_PROMPT_IMAGE(image);
        image++;
        p = hit + S_MARKER_LEN;
    }
    *prompt = ids;
    *n_prompt = n;
    return 0;
}

int ms_chat_build_prompt(const ms_tokenizer *tok, ms_chat_template t, const ms_chat_message *msgs,
                         int n, bool add_generation_prompt, int32_t **prompt, int *n_prompt,
                         int *n_images, char *err, size_t err_size) {
    *prompt = NULL;
    *n_prompt = 0;
    *n_images = 0;
    int images = 0;
    char *text = ms_chat_render(t, msgs, n, add_generation_prompt, &images, err, err_size);
    if (!text) return -1;
    int rc = ms_chat_tokenize(tok, text, strlen(text), images, prompt, n_prompt, err, err_size);
    free(text);
    if (rc == 0) *n_images = images;
    return rc;
}
