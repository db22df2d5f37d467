/* openai.c — OpenAI request parsing and response rendering (openai.h). */
#include "openai.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imgprobe.h"

#define S_MAX_TOP_KEYS 64                 /* keys of a request object */
#define S_MAX_MSG_KEYS 16                 /* keys of one chat message */
#define S_MAX_MODEL    1024               /* bytes of a model name */
#define S_MAX_SEED     9007199254740992.0 /* 2^53: largest seed a JSON number holds exactly */
#define S_MAX_PENALTY  2.0                /* presence / frequency penalty range is [-2, 2] */

void ms_oai_limits_default(ms_oai_limits *l) {
    memset(l, 0, sizeof *l);
    l->max_body_bytes = MS_OAI_DEFAULT_MAX_BODY_BYTES;
    l->max_images = MS_WIRE_MAX_IMAGES;
    l->max_pixels = MS_OAI_DEFAULT_MAX_PIXELS;
    l->max_image_bytes = MS_WIRE_MAX_IMAGE_BYTES;
    l->default_temperature = MS_OAI_DEFAULT_TEMPERATURE;
    l->default_max_tokens = 0;
    ms_fetch_config_default(&l->fetch);
}

/* ---- errors ------------------------------------------------------------------------ */
int ms_oai_errorf(ms_oai_error *e, int status, const char *param, const char *code, const char *fmt,
                  ...) {
    e->status = status;
    e->type = status == 429   ? "rate_limit_error"
              : status >= 500 ? "server_error"
                              : "invalid_request_error";
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

void ms_oai_error_from_broker(ms_oai_error *e, const char *code, const char *message) {
    static const struct {
        const char *code;
        int status;
    } map[] = {{"bad_request", 400}, {"overloaded", 429}, {"unavailable", 503},
               {"timeout", 504},     {"cancelled", 499},  {"internal", 500}};
    int status = 500;
    for (size_t i = 0; code && i < MS_ARRAY_LEN(map); i++)
        if (strcmp(code, map[i].code) == 0) status = map[i].status;
    ms_oai_errorf(e, status, NULL, code && *code ? code : "internal", "%s",
                  message && *message ? message : "the broker failed the request");
}

/* ---- request ---------------------------------------------------------------------- */
void ms_oai_request_init(ms_oai_request *r) {
    memset(r, 0, sizeof *r);
    ms_msg_init(&r->msg, MS_MSG_SUBMIT);
}

void ms_oai_request_fini(ms_oai_request *r) {
    free(r->model);
    ms_msg_fini(&r->msg);
    for (uint32_t i = 0; i < r->n_images; i++)
        free(r->images[i]);
    ms_oai_request_init(r);
}

/* A growing text buffer. */
typedef struct s_buf {
    char *p;
    size_t len, cap;
} s_buf;

static void s_put(s_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = MS_MAX(2 * b->cap, b->len + n + 1);
        b->p = ms_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

/* ---- base64 -------------------------------------------------------------------------- */
static int s_b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

int ms_oai_base64_decode(const char *in, size_t len, size_t max_out, uint8_t **out, size_t *out_len,
                         char *err, size_t err_size) {
    *out = NULL;
    *out_len = 0;
    if (len / 4 * 3 > max_out + 3)
        return ms_errf(err, err_size, "decodes to about %zu bytes, limit %zu", len / 4 * 3,
                       max_out);
    uint8_t *o = ms_xmalloc(len / 4 * 3 + 3);
    size_t n = 0, pad = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = s_b64_value(c);
        if (v < 0 || pad) {
            free(o);
            return ms_errf(err, err_size,
                           v < 0 ? "invalid base64 character at offset %zu"
                                 : "base64 data after '=' padding (offset %zu)",
                           i);
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[n++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (bits >= 6 || pad > 2) { /* one lone symbol (6 bits) cannot end a group */
        free(o);
        return ms_errf(err, err_size, "truncated base64 data");
    }
    if (n > max_out) {
        free(o);
        return ms_errf(err, err_size, "decodes to %zu bytes, limit %zu", n, max_out);
    }
    *out = o;
    *out_len = n;
    return 0;
}

/* ---- the parser ------------------------------------------------------------------------ */
typedef struct s_parse {
    ms_oai_kind kind;
    const ms_oai_limits *lim;
    ms_oai_request *r;
    ms_oai_error *e;
    bool has_stream_options;
} s_parse;

static const char *s_type(const cJSON *v) {
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "invalid";
}

static int s_bad(s_parse *p, const char *param, const char *fmt, const char *what, const cJSON *v) {
    return ms_oai_errorf(p->e, 400, param, "invalid_type", fmt, what, s_type(v));
}

/* v an integer in [lo, hi] → *out. */
static int s_int(s_parse *p, const cJSON *v, const char *name, double lo, double hi, double *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        if (!cJSON_IsNumber(v)) return s_bad(p, name, "'%s' must be an integer, got %s", name, v);
        return ms_oai_errorf(p->e, 400, name, "invalid_value",
                             "'%s' must be an integer in [%.0f, %.0f], got %g", name, lo, hi,
                             v->valuedouble);
    }
    *out = v->valuedouble;
    return 0;
}

/* v a number in [lo, hi] (lo excluded if lo_open) → *out. */
static int s_num(s_parse *p, const cJSON *v, const char *name, double lo, double hi, bool lo_open,
                 double *out) {
    if (!cJSON_IsNumber(v)) return s_bad(p, name, "'%s' must be a number, got %s", name, v);
    double x = v->valuedouble;
    if (!isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
        return ms_oai_errorf(p->e, 400, name, "invalid_value", "'%s' must be in %c%g, %g], got %g",
                             name, lo_open ? '(' : '[', lo, hi, x);
    *out = x;
    return 0;
}

static int s_bool(s_parse *p, const cJSON *v, const char *name, bool *out) {
    if (!cJSON_IsBool(v)) return s_bad(p, name, "'%s' must be a boolean, got %s", name, v);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int s_unsupported(s_parse *p, const char *name, const char *why) {
    return ms_oai_errorf(p->e, 400, name, "unsupported_parameter", "'%s' is not supported%s", name,
                         why);
}

/* stop: a string or an array of strings. */
static int s_stop(s_parse *p, const cJSON *v) {
    ms_msg_submit *s = &p->r->msg.submit;
    int n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (n < 0)
        return s_bad(p, "stop", "'%s' must be a string or an array of strings, got %s", "stop", v);
    if (n > MS_WIRE_MAX_STOP)
        return ms_oai_errorf(p->e, 400, "stop", "invalid_value",
                             "'stop' has %d strings, at most %d are supported", n,
                             MS_WIRE_MAX_STOP);
    s->stop = ms_xcalloc((size_t)MS_MAX(n, 1), sizeof *s->stop);
    s->has_stop = true;
    const cJSON *it = cJSON_IsString(v) ? v : v->child;
    for (int i = 0; i < n; i++, it = it->next) {
        if (!cJSON_IsString(it))
            return s_bad(p, "stop", "'%s' must hold strings only, got %s", "stop", it);
        size_t len = strlen(it->valuestring);
        if (len == 0 || len > MS_WIRE_MAX_STOP_BYTES)
            return ms_oai_errorf(p->e, 400, "stop", "invalid_value",
                                 "stop strings must be 1 to %d bytes, got %zu",
                                 MS_WIRE_MAX_STOP_BYTES, len);
        s->stop[s->n_stop++] = ms_xstrdup(it->valuestring);
    }
    return 0;
}

static bool s_prefix_ci(const char *s, const char *prefix) {
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

/* A base64 data: URL → a new decoded image file. */
static int s_data_url(s_parse *p, const char *u, const char *param, uint8_t **img,
                      size_t *img_len) {
    if (!s_prefix_ci(u, "data:"))
        return ms_oai_errorf(
            p->e, 400, param, "invalid_image_url",
            "%s: image_url must be a base64 data: URL (data:image/png;base64,...)%s", param,
            ms_fetch_enabled(&p->lim->fetch) ? " or an http(s) URL" : "");
    const char *comma = strchr(u, ',');
    const char *semi = strchr(u, ';');
    if (!comma)
        return ms_oai_errorf(p->e, 400, param, "invalid_image_url", "%s: data: URL without ','",
                             param);
    size_t mt_len = (size_t)((semi && semi < comma ? semi : comma) - (u + 5));
    const char *mt = u + 5;
    static const char *const types[] = {"image/jpeg", "image/jpg", "image/png", "image/webp"};
    bool type_ok = false;
    for (size_t i = 0; i < MS_ARRAY_LEN(types); i++)
        type_ok = type_ok || (mt_len == strlen(types[i]) && strncasecmp(mt, types[i], mt_len) == 0);
    if (!type_ok)
        return ms_oai_errorf(p->e, 400, param, "unsupported_image_type",
                             "%s: unsupported media type '%.*s' (JPEG, PNG or WebP)", param,
                             (int)MS_MIN(mt_len, 64), mt);
    if (!(comma - u >= 7 && strncasecmp(comma - 7, ";base64", 7) == 0))
        return ms_oai_errorf(p->e, 400, param, "invalid_image_url",
                             "%s: only base64 data: URLs are supported (';base64,')", param);
    char err[MS_ERR_SIZE];
    const char *b64 = comma + 1;
    size_t b64_len = strlen(b64);
    if (ms_oai_base64_decode(b64, b64_len, p->lim->max_image_bytes, img, img_len, err,
                             sizeof err) != 0) {
        bool big = b64_len / 4 * 3 > p->lim->max_image_bytes;
        return ms_oai_errorf(p->e, big ? 413 : 400, param,
                             big ? "image_too_large" : "invalid_image", "image %u: base64 %s",
                             p->r->n_images, err);
    }
    return 0;
}

/* An http(s) URL → a new fetched image file (fetch.h), when the allowlist permits. */
static int s_remote(s_parse *p, const char *u, const char *param, uint8_t **img, size_t *img_len) {
    if (!ms_fetch_enabled(&p->lim->fetch))
        return ms_oai_errorf(p->e, 400, param, "remote_image_disabled",
                             "remote image URLs are disabled: send the image inline as a base64 "
                             "data: URL (data:image/png;base64,...), or start the gateway with "
                             "--allow-fetch HOST[,HOST...] to fetch from those hosts");
    char err[MS_ERR_SIZE];
    long status = 0;
    ms_fetch_result fr = ms_fetch_url(&p->lim->fetch, u, p->lim->max_image_bytes, img, img_len,
                                      &status, err, sizeof err);
    switch (fr) {
    case MS_FETCH_OK:
        return 0;
    case MS_FETCH_TOO_LARGE:
        return ms_oai_errorf(p->e, 413, param, "image_too_large", "image %u: %s", p->r->n_images,
                             err);
    case MS_FETCH_NOT_ALLOWED:
        return ms_oai_errorf(p->e, 400, param, "image_host_not_allowed", "image %u: %s",
                             p->r->n_images, err);
    case MS_FETCH_BAD_URL:
        return ms_oai_errorf(p->e, 400, param, "invalid_image_url", "image %u: %s", p->r->n_images,
                             err);
    case MS_FETCH_DISABLED:
        return ms_oai_errorf(p->e, 400, param, "remote_image_disabled", "image %u: %s",
                             p->r->n_images, err);
    default:
        return ms_oai_errorf(p->e, 400, param, "image_fetch_failed", "image %u: %s", p->r->n_images,
                             err);
    }
}

/* One image_url part (image k of the request) → r->images[k]. */
static int s_image(s_parse *p, const cJSON *part, const char *param) {
    ms_oai_request *r = p->r;
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(part, "image_url");
    const cJSON *url = cJSON_IsObject(iu) ? cJSON_GetObjectItemCaseSensitive(iu, "url") : iu;
    if (!cJSON_IsString(url))
        return ms_oai_errorf(p->e, 400, param, "invalid_type",
                             "%s: an image_url part needs \"image_url\": {\"url\": \"data:...\"}",
                             param);
    if (r->n_images >= p->lim->max_images)
        return ms_oai_errorf(p->e, 400, param, "too_many_images",
                             "too many images: at most %u per request", p->lim->max_images);
    const char *u = url->valuestring;
    char err[MS_ERR_SIZE];
    uint8_t *img = NULL;
    size_t img_len = 0;
    if (s_prefix_ci(u, "http://") || s_prefix_ci(u, "https://")) {
        if (s_remote(p, u, param, &img, &img_len) != 0) return -1;
    } else if (s_data_url(p, u, param, &img, &img_len) != 0) {
        return -1;
    }
    if (img_len == 0) {
        free(img);
        return ms_oai_errorf(p->e, 400, param, "invalid_image", "image %u is empty", r->n_images);
    }
    ms_img_format fmt;
    uint32_t w, h;
    if (ms_img_probe(img, img_len, &fmt, &w, &h, err, sizeof err) != 0) {
        free(img);
        return ms_oai_errorf(p->e, 400, param, "invalid_image", "image %u: %s", r->n_images, err);
    }
    uint64_t px = (uint64_t)w * h;
    if (px > p->lim->max_pixels) {
        free(img);
        return ms_oai_errorf(p->e, 413, param, "image_too_large",
                             "image %u is %ux%u = %llu pixels, limit %llu", r->n_images, w, h,
                             (unsigned long long)px, (unsigned long long)p->lim->max_pixels);
    }
    r->images[r->n_images] = img;
    r->image_len[r->n_images++] = img_len;
    r->image_pixels += px;
    return 0;
}

static int s_text_piece(s_parse *p, s_buf *b, const char *text, const char *param) {
    if (strstr(text, MS_OAI_IMAGE_MARKER))
        return ms_oai_errorf(p->e, 400, param, "invalid_value",
                             "%s: text must not contain '%s' (reserved for image parts)", param,
                             MS_OAI_IMAGE_MARKER);
    if (b->len) s_put(b, "\n", 1);
    s_put(b, text, strlen(text));
    return 0;
}

/* content of messages[i] → *b (text with image markers); images appended. */
static int s_content(s_parse *p, const cJSON *content, int i, bool images_ok, s_buf *b) {
    char param[MS_OAI_MAX_PARAM];
    snprintf(param, sizeof param, "messages[%d].content", i);
    if (cJSON_IsString(content)) return s_text_piece(p, b, content->valuestring, param);
    if (!cJSON_IsArray(content))
        return s_bad(p, param, "'%s' must be a string or an array of content parts, got %s", param,
                     content);
    int k = 0;
    for (const cJSON *part = content->child; part; part = part->next, k++) {
        snprintf(param, sizeof param, "messages[%d].content[%d]", i, k);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type))
            return ms_oai_errorf(p->e, 400, param, "invalid_type",
                                 "%s: a content part must be an object with a \"type\"", param);
        const char *t = type->valuestring;
        if (strcmp(t, "text") == 0) {
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
            if (!cJSON_IsString(text))
                return ms_oai_errorf(p->e, 400, param, "invalid_type",
                                     "%s: a text part needs a string \"text\"", param);
            if (s_text_piece(p, b, text->valuestring, param) != 0) return -1;
        } else if (strcmp(t, "image_url") == 0) {
            if (!images_ok)
                return ms_oai_errorf(p->e, 400, param, "invalid_value",
                                     "%s: images are only accepted in user messages", param);
            if (s_image(p, part, param) != 0) return -1;
            if (b->len) s_put(b, "\n", 1);
            s_put(b, MS_OAI_IMAGE_MARKER, strlen(MS_OAI_IMAGE_MARKER));
        } else {
            return ms_oai_errorf(p->e, 400, param, "unsupported_content_type",
                                 "%s: content part type '%.64s' is not supported (text, image_url)",
                                 param, t);
        }
    }
    return 0;
}

/* messages[i] → r->msg.submit.messages[i]. */
static int s_message(s_parse *p, const cJSON *m, int i) {
    char param[MS_OAI_MAX_PARAM];
    snprintf(param, sizeof param, "messages[%d]", i);
    if (!cJSON_IsObject(m)) return s_bad(p, param, "'%s' must be an object, got %s", param, m);
    const cJSON *role = NULL, *content = NULL;
    int n_keys = 0;
    for (const cJSON *f = m->child; f; f = f->next) {
        const char *k = f->string;
        if (++n_keys > S_MAX_MSG_KEYS || cJSON_GetObjectItemCaseSensitive(m, k) != f)
            return ms_oai_errorf(p->e, 400, param, "invalid_value",
                                 "%s: duplicate key '%.64s' or too many keys", param, k);
        if (strcmp(k, "role") == 0)
            role = f;
        else if (strcmp(k, "content") == 0)
            content = f;
        else if (strcmp(k, "name") == 0) {
            if (!cJSON_IsString(f) && !cJSON_IsNull(f))
                return s_bad(p, param, "'%s.name' must be a string, got %s", param, f);
        } else if (strcmp(k, "tool_calls") == 0 || strcmp(k, "function_call") == 0 ||
                   strcmp(k, "tool_call_id") == 0) {
            if (!cJSON_IsNull(f) && !(cJSON_IsArray(f) && !f->child))
                return s_unsupported(p, k, " (this server does not call tools)");
        } else if (strcmp(k, "refusal") == 0 || strcmp(k, "audio") == 0) {
            if (!cJSON_IsNull(f)) return s_unsupported(p, k, "");
        } else {
            return ms_oai_errorf(p->e, 400, param, "unknown_parameter",
                                 "%s: unrecognized key '%.64s'", param, k);
        }
    }
    if (!cJSON_IsString(role))
        return ms_oai_errorf(p->e, 400, param, "invalid_value",
                             "%s: 'role' must be one of system, developer, user, assistant", param);
    const char *r = role->valuestring;
    const char *wire_role = NULL;
    if (strcmp(r, "system") == 0 || strcmp(r, "developer") == 0)
        wire_role = "system";
    else if (strcmp(r, "user") == 0 || strcmp(r, "assistant") == 0)
        wire_role = r;
    else if (strcmp(r, "tool") == 0 || strcmp(r, "function") == 0)
        return ms_oai_errorf(p->e, 400, param, "unsupported_role",
                             "%s: role '%s' is not supported (this server does not call tools)",
                             param, r);
    else
        return ms_oai_errorf(p->e, 400, param, "invalid_value",
                             "%s: role '%.64s' is not one of system, developer, user, assistant",
                             param, r);
    bool assistant = strcmp(wire_role, "assistant") == 0;
    s_buf b = {0};
    s_put(&b, "", 0);
    int rc = 0;
    if (!content || cJSON_IsNull(content)) {
        if (!assistant)
            rc = ms_oai_errorf(p->e, 400, param, "invalid_value", "%s: 'content' is required",
                               param);
    } else {
        rc = s_content(p, content, i, strcmp(wire_role, "user") == 0, &b);
    }
    if (rc == 0 && b.len > MS_WIRE_MAX_PROMPT_BYTES)
        rc = ms_oai_errorf(p->e, 400, param, "too_long", "%s: content is %zu bytes, limit %u",
                           param, b.len, MS_WIRE_MAX_PROMPT_BYTES);
    if (rc != 0) {
        free(b.p);
        return -1;
    }
    ms_wire_chat_msg *cm = &p->r->msg.submit.messages[p->r->msg.submit.n_messages++];
    cm->role = ms_xstrdup(wire_role);
    cm->content = b.p;
    return 0;
}

static int s_messages(s_parse *p, const cJSON *v) {
    if (!cJSON_IsArray(v))
        return s_bad(p, "messages", "'%s' must be an array, got %s", "messages", v);
    int n = cJSON_GetArraySize(v);
    if (n == 0)
        return ms_oai_errorf(p->e, 400, "messages", "invalid_value",
                             "'messages' must not be empty");
    if (n > MS_WIRE_MAX_MESSAGES)
        return ms_oai_errorf(p->e, 400, "messages", "invalid_value",
                             "'messages' has %d entries, at most %d are supported", n,
                             MS_WIRE_MAX_MESSAGES);
    ms_msg_submit *s = &p->r->msg.submit;
    s->messages = ms_xcalloc((size_t)n, sizeof *s->messages);
    s->has_messages = true;
    int i = 0;
    for (const cJSON *m = v->child; m; m = m->next, i++)
        if (s_message(p, m, i) != 0) return -1;
    return 0;
}

static int s_prompt(s_parse *p, const cJSON *v) {
    const cJSON *str = v;
    if (cJSON_IsArray(v)) {
        int n = cJSON_GetArraySize(v);
        if (n != 1 || !cJSON_IsString(v->child))
            return ms_oai_errorf(p->e, 400, "prompt", "unsupported_parameter",
                                 n == 1 || (n > 1 && !cJSON_IsString(v->child))
                                     ? "'prompt' as token ids is not supported: send a string"
                                     : "'prompt' must hold exactly one string (no batches)");
        str = v->child;
    }
    if (!cJSON_IsString(str))
        return s_bad(p, "prompt", "'%s' must be a string, got %s", "prompt", v);
    size_t len = strlen(str->valuestring);
    if (len > MS_WIRE_MAX_PROMPT_BYTES)
        return ms_oai_errorf(p->e, 400, "prompt", "too_long", "'prompt' is %zu bytes, limit %u",
                             len, MS_WIRE_MAX_PROMPT_BYTES);
    p->r->msg.submit.prompt = ms_xstrdup(str->valuestring);
    p->r->msg.submit.has_prompt = true;
    p->r->msg.submit.raw = true;
    p->r->msg.submit.has_raw = true;
    return 0;
}

static int s_stream_options(s_parse *p, const cJSON *v) {
    if (!cJSON_IsObject(v))
        return s_bad(p, "stream_options", "'%s' must be an object, got %s", "stream_options", v);
    p->has_stream_options = true;
    for (const cJSON *f = v->child; f; f = f->next) {
        if (strcmp(f->string, "include_usage") == 0) {
            if (s_bool(p, f, "stream_options.include_usage", &p->r->include_usage) != 0) return -1;
        } else if (strcmp(f->string, "continuous_usage_stats") == 0) {
            bool b = false;
            if (s_bool(p, f, "stream_options.continuous_usage_stats", &b) != 0) return -1;
            if (b) return s_unsupported(p, "stream_options.continuous_usage_stats", "");
        } else {
            return ms_oai_errorf(p->e, 400, "stream_options", "unknown_parameter",
                                 "stream_options: unrecognized key '%.64s'", f->string);
        }
    }
    return 0;
}

/* Fields every API shares; 1 if `k` was not one of them, 0 handled, -1 error. */
static int s_common_field(s_parse *p, const char *k, const cJSON *v) {
    ms_msg_submit *s = &p->r->msg.submit;
    double x;
    if (strcmp(k, "model") == 0) {
        if (!cJSON_IsString(v) || !*v->valuestring || strlen(v->valuestring) > S_MAX_MODEL)
            return ms_oai_errorf(p->e, 400, "model", "invalid_value",
                                 "'model' must be a non-empty string of at most %d bytes",
                                 S_MAX_MODEL);
        p->r->model = ms_xstrdup(v->valuestring);
    } else if (strcmp(k, "stream") == 0) {
        return s_bool(p, v, "stream", &p->r->stream);
    } else if (strcmp(k, "stream_options") == 0) {
        return s_stream_options(p, v);
    } else if (strcmp(k, "max_tokens") == 0 || strcmp(k, "max_completion_tokens") == 0) {
        if (s_int(p, v, k, 1, MS_MAX_GEN_TOKENS, &x) != 0) return -1;
        /* max_completion_tokens (the newer name) wins when both are given */
        if (!s->has_max_tokens || strcmp(k, "max_completion_tokens") == 0)
            s->max_tokens = (uint64_t)x;
        s->has_max_tokens = true;
    } else if (strcmp(k, "temperature") == 0) {
        if (s_num(p, v, k, 0, MS_OAI_MAX_TEMPERATURE, false, &s->temperature) != 0) return -1;
        s->has_temperature = true;
    } else if (strcmp(k, "top_p") == 0) {
        if (s_num(p, v, k, 0, 1, true, &s->top_p) != 0) return -1;
        s->has_top_p = true;
    } else if (strcmp(k, "top_k") == 0) { /* vLLM extension; -1 or 0: off */
        if (s_int(p, v, k, -1, MS_WIRE_MAX_TOP_K, &x) != 0) return -1;
        s->top_k = x < 0 ? 0 : (uint64_t)x;
        s->has_top_k = true;
    } else if (strcmp(k, "min_p") == 0) { /* vLLM extension */
        if (s_num(p, v, k, 0, 1, false, &s->min_p) != 0) return -1;
        s->has_min_p = true;
    } else if (strcmp(k, "seed") == 0) {
        if (s_int(p, v, k, 0, S_MAX_SEED, &x) != 0) return -1;
        s->seed = (uint64_t)x;
        s->has_seed = true;
    } else if (strcmp(k, "stop") == 0) {
        return s_stop(p, v);
    } else if (strcmp(k, "n") == 0 || strcmp(k, "best_of") == 0) {
        if (!cJSON_IsNumber(v) || v->valuedouble != 1)
            return ms_oai_errorf(p->e, 400, k, "unsupported_parameter", "only %s=1 is supported",
                                 k);
    } else if (strcmp(k, "presence_penalty") == 0 || strcmp(k, "frequency_penalty") == 0) {
        if (s_num(p, v, k, -S_MAX_PENALTY, S_MAX_PENALTY, false, &x) != 0) return -1;
        if (x != 0) return s_unsupported(p, k, " (only 0)");
    } else if (strcmp(k, "repetition_penalty") == 0) {
        if (!cJSON_IsNumber(v) || v->valuedouble != 1) return s_unsupported(p, k, " (only 1)");
    } else if (strcmp(k, "logit_bias") == 0) {
        if (!cJSON_IsObject(v) || v->child) return s_unsupported(p, k, " (only {})");
    } else if (strcmp(k, "user") == 0 || strcmp(k, "service_tier") == 0) {
        if (!cJSON_IsString(v)) return s_bad(p, k, "'%s' must be a string, got %s", k, v);
    } else if (strcmp(k, "logprobs") == 0) {
        /* chat: a boolean; completions: an integer count */
        bool off = (cJSON_IsBool(v) && !cJSON_IsTrue(v)) ||
                   (p->kind == MS_OAI_COMPLETION && cJSON_IsNumber(v) && v->valuedouble == 0);
        if (!off) return s_unsupported(p, k, "");
    } else if (strcmp(k, "top_logprobs") == 0) {
        if (!cJSON_IsNumber(v) || v->valuedouble != 0) return s_unsupported(p, k, "");
    } else {
        return 1;
    }
    return 0;
}

static int s_chat_field(s_parse *p, const char *k, const cJSON *v) {
    bool b = false;
    if (strcmp(k, "messages") == 0) return s_messages(p, v);
    if (strcmp(k, "response_format") == 0) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
        if (!cJSON_IsObject(v) || !cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0)
            return s_unsupported(p, k, " (only {\"type\": \"text\"})");
        return 0;
    }
    if (strcmp(k, "tools") == 0 || strcmp(k, "functions") == 0) {
        if (!cJSON_IsArray(v) || v->child)
            return s_unsupported(p, k, " (this server does not call tools)");
        return 0;
    }
    if (strcmp(k, "tool_choice") == 0 || strcmp(k, "function_call") == 0) {
        if (!cJSON_IsString(v) ||
            (strcmp(v->valuestring, "none") != 0 && strcmp(v->valuestring, "auto") != 0))
            return s_unsupported(p, k, " (this server does not call tools)");
        return 0;
    }
    if (strcmp(k, "parallel_tool_calls") == 0 || strcmp(k, "store") == 0)
        return s_bool(p, v, k, &b);
    if (strcmp(k, "metadata") == 0) {
        if (!cJSON_IsObject(v)) return s_bad(p, k, "'%s' must be an object, got %s", k, v);
        return 0;
    }
    return 1;
}

static int s_completion_field(s_parse *p, const char *k, const cJSON *v) {
    bool b = false;
    if (strcmp(k, "prompt") == 0) return s_prompt(p, v);
    if (strcmp(k, "echo") == 0) {
        if (s_bool(p, v, k, &b) != 0) return -1;
        return b ? s_unsupported(p, k, "") : 0;
    }
    if (strcmp(k, "suffix") == 0) {
        if (!cJSON_IsString(v) || *v->valuestring) return s_unsupported(p, k, "");
        return 0;
    }
    return 1;
}

static bool s_depth_ok(const char *s, size_t n, int max) {
    int d = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++d > max) return false;
        } else if (c == ']' || c == '}') {
            d--;
        }
    }
    return true;
}

static int s_parse_object(s_parse *p, const cJSON *root) {
    ms_oai_request *r = p->r;
    int n_keys = 0;
    for (const cJSON *f = root->child; f; f = f->next) {
        const char *k = f->string;
        if (++n_keys > S_MAX_TOP_KEYS)
            return ms_oai_errorf(p->e, 400, NULL, "invalid_value",
                                 "the request has more than %d keys", S_MAX_TOP_KEYS);
        if (cJSON_GetObjectItemCaseSensitive(root, k) != f)
            return ms_oai_errorf(p->e, 400, k, "invalid_value", "duplicate key '%.64s'", k);
        if (cJSON_IsNull(f)) continue; /* null: as if absent */
        int rc = s_common_field(p, k, f);
        if (rc == 1)
            rc = p->kind == MS_OAI_CHAT ? s_chat_field(p, k, f) : s_completion_field(p, k, f);
        if (rc == 1)
            return ms_oai_errorf(p->e, 400, k, "unknown_parameter",
                                 "unrecognized request argument supplied: %.64s", k);
        if (rc != 0) return -1;
    }
    if (!r->model)
        return ms_oai_errorf(p->e, 400, "model", "missing_required_parameter",
                             "you must provide a model parameter");
    if (p->kind == MS_OAI_CHAT && !r->msg.submit.has_messages)
        return ms_oai_errorf(p->e, 400, "messages", "missing_required_parameter",
                             "'messages' is a required property");
    if (p->kind == MS_OAI_COMPLETION && !r->msg.submit.has_prompt)
        return ms_oai_errorf(p->e, 400, "prompt", "missing_required_parameter",
                             "'prompt' is a required property");
    if (p->has_stream_options && !r->stream)
        return ms_oai_errorf(p->e, 400, "stream_options", "invalid_value",
                             "'stream_options' is only allowed when 'stream' is true");
    ms_msg_submit *s = &r->msg.submit;
    if (!s->has_temperature) {
        s->temperature = p->lim->default_temperature;
        s->has_temperature = true;
    }
    if (!s->has_max_tokens && p->lim->default_max_tokens) {
        s->max_tokens = p->lim->default_max_tokens;
        s->has_max_tokens = true;
    }
    return 0;
}

int ms_oai_parse(ms_oai_kind kind, const char *body, size_t len, const ms_oai_limits *lim,
                 ms_oai_request *out, ms_oai_error *err) {
    ms_oai_request_init(out);
    out->kind = kind;
    if (len > lim->max_body_bytes)
        return ms_oai_errorf(err, 413, NULL, "request_too_large",
                             "request body is %zu bytes, limit %zu", len, lim->max_body_bytes);
    size_t lead = 0;
    while (lead < len &&
           (body[lead] == ' ' || body[lead] == '\t' || body[lead] == '\r' || body[lead] == '\n'))
        lead++;
    if (lead == len)
        return ms_oai_errorf(err, 400, NULL, "invalid_json",
                             "empty request body: expected a JSON object");
    if (!s_depth_ok(body, len, MS_OAI_MAX_DEPTH))
        return ms_oai_errorf(err, 400, NULL, "invalid_json", "JSON nested deeper than %d levels",
                             MS_OAI_MAX_DEPTH);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root)
        return ms_oai_errorf(err, 400, NULL, "invalid_json",
                             "request body is not valid JSON (error at byte %zu)",
                             end && end >= body && end <= body + len ? (size_t)(end - body) : 0);
    for (const char *q = end; q && q < body + len; q++)
        if (*q != ' ' && *q != '\t' && *q != '\r' && *q != '\n') {
            cJSON_Delete(root);
            return ms_oai_errorf(err, 400, NULL, "invalid_json",
                                 "unexpected data after the JSON value at byte %zu",
                                 (size_t)(q - body));
        }
    int rc;
    if (!cJSON_IsObject(root)) {
        rc = ms_oai_errorf(err, 400, NULL, "invalid_json", "request body must be a JSON object");
    } else {
        s_parse p = {.kind = kind, .lim = lim, .r = out, .e = err};
        rc = s_parse_object(&p, root);
    }
    cJSON_Delete(root);
    if (rc != 0) {
        ms_oai_request_fini(out);
        out->kind = kind;
        return -1;
    }
    return 0;
}

/* ---- rendering ---------------------------------------------------------------------- */
/* s[0..n) with invalid UTF-8 replaced by U+FFFD, as a new NUL-terminated string
 * (NUL bytes are dropped): JSON output must be valid UTF-8. */
static char *s_utf8_clean(const char *s, size_t n) {
    s_buf b = {0};
    s_put(&b, "", 0);
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char c = u[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = k > 0 && i + k <= n;
        for (size_t j = 1; ok && j < k; j++)
            ok = (u[i + j] & 0xc0) == 0x80;
        if (ok && k > 1) { /* overlong, surrogate, > U+10FFFF */
            uint32_t cp = k == 2 ? (c & 0x1fu) : k == 3 ? (c & 0x0fu) : (c & 0x07u);
            for (size_t j = 1; j < k; j++)
                cp = cp << 6 | (u[i + j] & 0x3fu);
            ok = !((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) ||
                   (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff);
        }
        if (!ok) {
            s_put(&b, "\xef\xbf\xbd", 3);
            i++;
        } else {
            if (c != 0) s_put(&b, s + i, k);
            i += k;
        }
    }
    return b.p;
}

static void s_add_str(cJSON *o, const char *name, const char *s, size_t n) {
    char *clean = s_utf8_clean(s, n);
    cJSON_AddStringToObject(o, name, clean);
    free(clean);
}

static char *s_print(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) {
        ms_error("openai: out of memory rendering JSON");
        abort();
    }
    return s;
}

/* "data: <json>\n\n" from o (deleted). */
static char *s_sse(cJSON *o) {
    char *j = s_print(o);
    size_t n = strlen(j);
    char *out = ms_xmalloc(n + 9);
    memcpy(out, "data: ", 6);
    memcpy(out + 6, j, n);
    memcpy(out + 6 + n, "\n\n", 3);
    free(j);
    return out;
}

void ms_oai_meta_init(ms_oai_meta *m, ms_oai_kind kind, const char *request_id, const char *model,
                      bool include_usage) {
    memset(m, 0, sizeof *m);
    m->kind = kind;
    snprintf(m->id, sizeof m->id, "%s%s", kind == MS_OAI_CHAT ? "chatcmpl-" : "cmpl-",
             request_id ? request_id : "");
    m->created = (int64_t)time(NULL);
    m->model = model;
    m->include_usage = include_usage;
}

const char *ms_oai_finish_reason(const char *finish) {
    if (!finish) return "stop";
    if (strcmp(finish, "length") == 0) return "length";
    if (strcmp(finish, "cancel") == 0) return "abort";
    if (strcmp(finish, "timeout") == 0) return "timeout";
    return "stop"; /* eog, stop */
}

char *ms_oai_error_json(const ms_oai_error *e) {
    cJSON *root = cJSON_CreateObject();
    cJSON *o = cJSON_AddObjectToObject(root, "error");
    s_add_str(o, "message", e->message, strlen(e->message));
    cJSON_AddStringToObject(o, "type", e->type ? e->type : "server_error");
    if (e->param[0])
        s_add_str(o, "param", e->param, strlen(e->param));
    else
        cJSON_AddNullToObject(o, "param");
    if (e->code[0])
        s_add_str(o, "code", e->code, strlen(e->code));
    else
        cJSON_AddNullToObject(o, "code");
    return s_print(root);
}

static cJSON *s_envelope(const ms_oai_meta *m, bool chunk) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", m->id);
    const char *object = m->kind == MS_OAI_COMPLETION ? "text_completion"
                         : chunk                      ? "chat.completion.chunk"
                                                      : "chat.completion";
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)m->created);
    cJSON_AddStringToObject(o, "model", m->model ? m->model : "");
    return o;
}

static cJSON *s_usage(const ms_msg_done *d) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)d->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)d->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(d->prompt_tokens + d->completion_tokens));
    return u;
}

/* Milliseconds rounded to the microsecond (no 17-digit noise in the JSON). */
static double s_ms(double ms) {
    return isfinite(ms) ? round(ms * 1000.0) / 1000.0 : 0;
}

static cJSON *s_timings(const ms_msg_done *d) {
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "image_tokens", (double)d->image_tokens);
    cJSON_AddNumberToObject(t, "queue_ms", s_ms(d->queue_ms));
    cJSON_AddNumberToObject(t, "preprocess_ms", s_ms(d->preprocess_ms));
    cJSON_AddNumberToObject(t, "encode_ms", s_ms(d->encode_ms));
    cJSON_AddNumberToObject(t, "transfer_ms", s_ms(d->transfer_ms));
    cJSON_AddNumberToObject(t, "prefill_ms", s_ms(d->prefill_ms));
    cJSON_AddNumberToObject(t, "decode_ms", s_ms(d->decode_ms));
    cJSON_AddNumberToObject(t, "ttft_ms", s_ms(d->ttft_ms));
    cJSON_AddNumberToObject(t, "e2e_ms", s_ms(d->e2e_ms));
    return t;
}

/* choices[0]: chat message / delta, or completion text; finish NULL → null. */
static cJSON *s_choice(const ms_oai_meta *m, bool chunk, bool role, const char *text, size_t len,
                       const char *finish) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (m->kind == MS_OAI_CHAT) {
        cJSON *msg = cJSON_AddObjectToObject(c, chunk ? "delta" : "message");
        if (role || !chunk) cJSON_AddStringToObject(msg, "role", "assistant");
        if (text) s_add_str(msg, "content", text, len);
    } else {
        s_add_str(c, "text", text ? text : "", text ? len : 0);
    }
    cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    return c;
}

char *ms_oai_render_response(const ms_oai_meta *m, const char *text, size_t len,
                             const ms_msg_done *done) {
    cJSON *o = s_envelope(m, false);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToArray(choices, s_choice(m, false, true, text ? text : "", text ? len : 0,
                                           ms_oai_finish_reason(done->finish)));
    cJSON_AddItemToObject(o, "usage", s_usage(done));
    cJSON_AddItemToObject(o, "timings", s_timings(done));
    return s_print(o);
}

static char *s_chunk(const ms_oai_meta *m, bool role, const char *text, size_t len,
                     const ms_msg_done *done) {
    cJSON *o = s_envelope(m, true);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToArray(choices, s_choice(m, true, role, text, len,
                                           done ? ms_oai_finish_reason(done->finish) : NULL));
    if (m->include_usage) cJSON_AddNullToObject(o, "usage");
    if (done) cJSON_AddItemToObject(o, "timings", s_timings(done));
    return s_sse(o);
}

char *ms_oai_sse_start(const ms_oai_meta *m) {
    return m->kind == MS_OAI_CHAT ? s_chunk(m, true, "", 0, NULL) : NULL;
}

char *ms_oai_sse_delta(const ms_oai_meta *m, const char *text, size_t len) {
    return s_chunk(m, false, text, len, NULL);
}

char *ms_oai_sse_finish(const ms_oai_meta *m, const ms_msg_done *done) {
    return s_chunk(m, false, m->kind == MS_OAI_CHAT ? NULL : "", 0, done);
}

char *ms_oai_sse_usage(const ms_oai_meta *m, const ms_msg_done *done) {
    cJSON *o = s_envelope(m, true);
    cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToObject(o, "usage", s_usage(done));
    return s_sse(o);
}

char *ms_oai_sse_error(const ms_oai_error *e) {
    char *j = ms_oai_error_json(e);
    size_t n = strlen(j);
    char *out = ms_xmalloc(n + 9);
    memcpy(out, "data: ", 6);
    memcpy(out + 6, j, n);
    memcpy(out + 6 + n, "\n\n", 3);
    free(j);
    return out;
}

static cJSON *s_model(const char *model, int64_t created) {
    cJSON *o = cJSON_CreateObject();
    s_add_str(o, "id", model, strlen(model));
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "owned_by", "modserve");
    return o;
}

char *ms_oai_models_json(const char *model, int64_t created) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    cJSON_AddItemToArray(data, s_model(model, created));
    return s_print(o);
}

char *ms_oai_model_json(const char *model, int64_t created) {
    return s_print(s_model(model, created));
}
