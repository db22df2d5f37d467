/* openai.h — the OpenAI-compatible request/response layer of the gateway:
 * parses and validates a JSON body of POST /v1/chat/completions or
 * POST /v1/completions (cJSON) into a wire Submit (schemas/wire.h) plus the
 * decoded image files, and renders answers: whole responses, SSE chunks,
 * the model list and OpenAI-shaped errors
 *   {"error": {"message": "...", "type": "...", "param": ..., "code": ...}}.
 * Pure functions over memory (no sockets): the unit tests and the fuzz
 * harness (tests/fuzz/fuzz_openai.c) drive them directly. docs/gateway.md
 * lists every accepted field.
 *
 * Chat: messages[] of {role, content}; content is a string or an array of
 * parts {"type": "text", "text"} / {"type": "image_url", "image_url":
 * {"url": "data:image/png;base64,..."}}. The parts of one message become
 * one wire message whose text is the parts joined by "\n", an image part
 * written as the marker "<image>" (MS_CHAT_IMAGE_MARKER); the images become
 * the Submit's payload frames in order. Role "developer" is sent as
 * "system". Remote (http/https) image URLs are refused with a 400 unless
 * limits.fetch allows their host: then ms_oai_parse fetches them (blocking,
 * at most limits.fetch.timeout_ms per image) and treats the bytes as a
 * decoded data: URL. Completions: `prompt` (a string, or an array of
 * one string) sent raw (no chat template).
 *
 * Body input is untrusted: every size is bounded (ms_oai_limits), JSON
 * nesting deeper than MS_OAI_MAX_DEPTH is refused before cJSON sees it,
 * unknown fields and duplicate keys are 400s naming the field, and nothing
 * asserts on input.
 */
#ifndef MS_OPENAI_H
#define MS_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fetch.h"
#include "ms_common.h"
#include "wire.h"

#define MS_OAI_DEFAULT_MAX_BODY_BYTES (32u << 20) /* request body */
#define MS_OAI_DEFAULT_MAX_PIXELS     (16u << 20) /* width x height of one image (16 Mpixel) */
#define MS_OAI_DEFAULT_TEMPERATURE    1.0         /* OpenAI's default when none is given */
#define MS_OAI_MAX_TEMPERATURE        2.0         /* OpenAI's range is [0, 2] */
#define MS_OAI_MAX_DEPTH              32          /* JSON nesting of a body */
#define MS_OAI_MAX_MESSAGE            1024        /* bytes of an error message */
#define MS_OAI_MAX_PARAM              64          /* bytes of an error's param */
#define MS_OAI_MAX_CODE               48          /* bytes of an error's code */
#define MS_OAI_ID_MAX                 (MS_WIRE_MAX_ID_BYTES + 16) /* "chatcmpl-" + request id */
#define MS_OAI_SSE_DONE               "data: [DONE]\n\n"          /* the last SSE event */
#define MS_OAI_IMAGE_MARKER           "<image>" /* = MS_CHAT_IMAGE_MARKER (kernels/chat.h) */

typedef enum ms_oai_kind {
    MS_OAI_CHAT = 0,   /* /v1/chat/completions: object "chat.completion" */
    MS_OAI_COMPLETION, /* /v1/completions: object "text_completion" */
} ms_oai_kind;

/* What a request may ask for; ms_oai_limits_default fills the defaults. */
typedef struct ms_oai_limits {
    size_t max_body_bytes;       /* request body (checked again here) */
    uint32_t max_images;         /* images of one request, <= MS_WIRE_MAX_IMAGES */
    uint64_t max_pixels;         /* width * height of one image (from its header) */
    size_t max_image_bytes;      /* one decoded image file, <= MS_WIRE_MAX_IMAGE_BYTES */
    double default_temperature;  /* temperature when the request gives none */
    uint32_t default_max_tokens; /* max_tokens when none is given; 0: the broker's default */
    ms_fetch_config fetch;       /* remote http(s) image URLs (fetch.h); default: off */
} ms_oai_limits;

void ms_oai_limits_default(ms_oai_limits *l);

/* An error as the client sees it. */
typedef struct ms_oai_error {
    int status;                   /* HTTP status: 400, 401, 404, 405, 413, 429, 500, 503, 504 */
    const char *type;             /* "invalid_request_error", "rate_limit_error", "server_error" */
    char param[MS_OAI_MAX_PARAM]; /* the offending parameter; "" renders as null */
    char code[MS_OAI_MAX_CODE];   /* machine-readable code; "" renders as null */
    char message[MS_OAI_MAX_MESSAGE]; /* for a person: what was wrong and with which input */
} ms_oai_error;

/* Fills *e (type from status: 429 rate_limit_error, >= 500 server_error,
 * else invalid_request_error; param / code NULL for null) and returns -1. */
int ms_oai_errorf(ms_oai_error *e, int status, const char *param, const char *code, const char *fmt,
                  ...) MS_PRINTF(5, 6);
/* An Error from the broker (code "bad_request", "overloaded", ...) as HTTP:
 * bad_request 400, overloaded 429, unavailable 503, timeout 504, cancelled
 * 499, internal / anything else 500; code is the broker's code. */
void ms_oai_error_from_broker(ms_oai_error *e, const char *code, const char *message);

/* A parsed request. */
typedef struct ms_oai_request {
    ms_oai_kind kind;                     /* endpoint it came from */
    char *model;                          /* requested model name (owned) */
    bool stream;                          /* "stream": true → SSE */
    bool include_usage;                   /* stream_options.include_usage */
    ms_msg msg;                           /* type MS_MSG_SUBMIT, owns its strings;
                                             msg.submit.id is NULL: the caller sets it
                                             (malloc'd, freed by ms_oai_request_fini) */
    uint8_t *images[MS_WIRE_MAX_IMAGES];  /* decoded image files (owned), in marker order */
    size_t image_len[MS_WIRE_MAX_IMAGES]; /* bytes of each */
    uint32_t n_images;                    /* images */
    uint64_t image_pixels;                /* sum of width * height over the images */
} ms_oai_request;

void ms_oai_request_init(ms_oai_request *r);
/* Frees everything r owns and re-initialises it. Safe twice. */
void ms_oai_request_fini(ms_oai_request *r);

/* Parses body[0..len) (need not be NUL-terminated) as a request of `kind`
 * into *out (initialised here). 0, or -1 + *err (status 400 for bad input,
 * 413 for a body, image or pixel count over the limits; *out is then
 * finalized). The model name is returned, not checked. */
int ms_oai_parse(ms_oai_kind kind, const char *body, size_t len, const ms_oai_limits *lim,
                 ms_oai_request *out, ms_oai_error *err);

/* Decodes standard or URL-safe base64 (ASCII whitespace ignored, '='
 * padding optional but only at the end) into a new malloc'd buffer *out of
 * *out_len bytes, refusing output over max_out bytes. 0, or -1 + err. */
int ms_oai_base64_decode(const char *in, size_t len, size_t max_out, uint8_t **out, size_t *out_len,
                         char *err, size_t err_size);

/* ---- responses (every function returns a new malloc'd NUL-terminated string) ---- */
/* What every response of one request shares. */
typedef struct ms_oai_meta {
    ms_oai_kind kind;
    char id[MS_OAI_ID_MAX]; /* "chatcmpl-<request id>" / "cmpl-<request id>" */
    int64_t created;        /* Unix seconds */
    const char *model;      /* model name served (not owned) */
    bool include_usage;     /* streaming: end with a usage chunk; chunks carry "usage": null */
} ms_oai_meta;

/* Fills m: id from the gateway's request id, created = now. */
void ms_oai_meta_init(ms_oai_meta *m, ms_oai_kind kind, const char *request_id, const char *model,
                      bool include_usage);

/* OpenAI finish_reason of a Done.finish: eog/stop → "stop", length →
 * "length", cancel → "abort", timeout → "timeout". */
const char *ms_oai_finish_reason(const char *finish);

/* {"error": {...}}. */
char *ms_oai_error_json(const ms_oai_error *e);
/* The whole (non-streaming) response: choices[0] with the text and
 * finish_reason, usage, and "timings" (the Done's per-stage milliseconds:
 * where the request's time went). */
char *ms_oai_render_response(const ms_oai_meta *m, const char *text, size_t len,
                             const ms_msg_done *done);
/* SSE events ("data: {...}\n\n"). start: chat's first chunk (delta role
 * "assistant", content ""), NULL for completions; delta: one chunk with
 * len bytes of text; finish: the chunk with finish_reason and the timings;
 * usage: choices [] and usage (only when include_usage); error: an error
 * that happened after the stream began. The stream ends with MS_OAI_SSE_DONE. */
char *ms_oai_sse_start(const ms_oai_meta *m);
char *ms_oai_sse_delta(const ms_oai_meta *m, const char *text, size_t len);
char *ms_oai_sse_finish(const ms_oai_meta *m, const ms_msg_done *done);
char *ms_oai_sse_usage(const ms_oai_meta *m, const ms_msg_done *done);
char *ms_oai_sse_error(const ms_oai_error *e);

/* GET /v1/models: {"object": "list", "data": [model]}; one model object
 * {"id", "object": "model", "created", "owned_by": "modserve"}. */
char *ms_oai_models_json(const char *model, int64_t created);
char *ms_oai_model_json(const char *model, int64_t created);

#endif
