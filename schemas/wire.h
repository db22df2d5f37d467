/* wire.h — modserve wire messages and their msgpack codec.
 *
 * Every message (producer protocol and internal) is defined once, in
 * schemas/messages.def; this header generates from it, with X-macros, one C
 * struct per message (ms_msg_<name>), the structs of nested maps
 * (ms_wire_<name>), the type enum (MS_MSG_<NAME>) and a tagged union ms_msg.
 * docs/protocol.md describes the protocol for client writers.
 *
 * Header encoding (frame 0 of a zmq multipart message): a msgpack map
 * {"v": MS_WIRE_VERSION, "t": "<type>", <field>: <value>, ...}. Payload
 * frames (image bytes, features, KV blobs) follow as frames 1..n; their number
 * is fixed by the header (ms_wire_payload_frames) and schemas/frames.h sends
 * and receives whole messages.
 *
 * Decoding is strict: exact msgpack types (a FLOAT field also takes an
 * integer, converted; nothing else is converted), bounded strings and arrays
 * (the MS_WIRE_MAX_* constants below, per field in messages.def), unknown
 * types, unknown or repeated fields, missing required fields, a wrong version
 * and trailing bytes are all MS_WIRE_MALFORMED with a one-line reason naming
 * the field ("field 'max_tokens' has type str, expected uint").
 *
 * Ownership: a decoded ms_msg owns every string and array it points to
 * (malloc'd copies, never pointers into the input); ms_msg_fini frees them.
 * A message built by hand for encoding may point at anything (literals,
 * stack buffers): the encoder only reads it — just do not ms_msg_fini it
 * unless its pointers are malloc'd.
 */
#ifndef MS_WIRE_H
#define MS_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "sampler.h" /* MS_MAX_GEN_TOKENS, MS_MAX_STOP_STRINGS, MS_MAX_STOP_LEN */

/* ---- protocol constants ---------------------------------------------------- */
#define MS_WIRE_VERSION 1 /* "v" of every header */

#define MS_WIRE_MAX_HEADER_BYTES   (4u << 20)   /* frame 0 */
#define MS_WIRE_MAX_DEPTH          8            /* map/array nesting in a header */
#define MS_WIRE_MAX_FIELDS         64           /* fields of one message or struct */
#define MS_WIRE_MAX_ID_BYTES       128          /* request ids, kv keys */
#define MS_WIRE_MAX_NAME_BYTES     64           /* actor ids, roles, codes, finish, mode, stages */
#define MS_WIRE_MAX_HOST_BYTES     256          /* host names */
#define MS_WIRE_MAX_ENDPOINT_BYTES 256          /* zmq endpoints */
#define MS_WIRE_MAX_PATH_BYTES     4096         /* model names / paths */
#define MS_WIRE_MAX_ERROR_BYTES    1024         /* error messages */
#define MS_WIRE_MAX_PROMPT_BYTES   (1u << 20)   /* a prompt / one chat message's content */
#define MS_WIRE_MAX_MESSAGES       256          /* chat messages of a Submit */
#define MS_WIRE_MAX_IMAGES         16           /* images of one request */
#define MS_WIRE_MAX_IMAGE_BYTES    (16u << 20)  /* one encoded image file */
#define MS_WIRE_MAX_IMAGE_TOKENS   (1u << 16)   /* tokens of one image */
#define MS_WIRE_MAX_FEATURE_DIM    (1u << 16)   /* ViT feature width */
#define MS_WIRE_MAX_FEATURE_BYTES  (256u << 20) /* one image's f32 features */
#define MS_WIRE_MAX_KV_BYTES       (1ull << 31) /* one KV blob */
#define MS_WIRE_MAX_STOP           MS_MAX_STOP_STRINGS   /* stop strings */
#define MS_WIRE_MAX_STOP_BYTES     (MS_MAX_STOP_LEN - 1) /* bytes of one stop string */
#define MS_WIRE_MAX_TOP_K          (1u << 24)
#define MS_WIRE_MAX_MS             86400000u          /* targets / timeouts: one day */
#define MS_WIRE_MAX_TOKEN_IDS      1024               /* ids of one Token / TokenOut */
#define MS_WIRE_MAX_TEXT_BYTES     (256u << 10)       /* text of one Token / TokenOut */
#define MS_WIRE_MAX_PROMPT_TOKENS  (1u << 18)         /* entries of PrefillTask.prompt */
#define MS_WIRE_MAX_PAYLOAD_FRAMES MS_WIRE_MAX_IMAGES /* payload frames of any message */

/* ---- generated types ---------------------------------------------------------- */
/* Field kinds (messages.def explains each). */
typedef enum ms_wire_kind {
    MS_WIRE_UINT,
    MS_WIRE_INT,
    MS_WIRE_FLOAT,
    MS_WIRE_BOOL,
    MS_WIRE_STR,
    MS_WIRE_I32S,
    MS_WIRE_TOKS,
    MS_WIRE_STRS,
    MS_WIRE_OBJ,
    MS_WIRE_OBJS
} ms_wire_kind;

/* clang-format off */
#define MS_WIRE_DECL_UINT(n, sub)  uint64_t n;
#define MS_WIRE_DECL_INT(n, sub)   int64_t n;
#define MS_WIRE_DECL_FLOAT(n, sub) double n;
#define MS_WIRE_DECL_BOOL(n, sub)  bool n;
#define MS_WIRE_DECL_STR(n, sub)   char *n;
#define MS_WIRE_DECL_I32S(n, sub)  int32_t *n; uint32_t n_##n;
#define MS_WIRE_DECL_TOKS(n, sub)  int32_t *n; uint32_t n_##n;
#define MS_WIRE_DECL_STRS(n, sub)  char **n; uint32_t n_##n;
#define MS_WIRE_DECL_OBJ(n, sub)   ms_wire_##sub n;
#define MS_WIRE_DECL_OBJS(n, sub)  ms_wire_##sub *n; uint32_t n_##n;
#define MS_WIRE_HAS_REQ(n)
#define MS_WIRE_HAS_OPT(n) bool has_##n;

/* Structs: ms_wire_chat_msg, ms_wire_image_ref, ms_wire_sampling, and
 * ms_msg_<m> for every message; fields exactly as in messages.def, arrays
 * with their element count n_<field>, OPT fields with has_<field>. */
#define MS_STRUCT(s)                       typedef struct ms_wire_##s {
#define MS_STRUCT_END(s)                   } ms_wire_##s;
#define MS_MSG(m, M, ffield, fixed, maxb)  typedef struct ms_msg_##m {
#define MS_MSG_END(m)                      } ms_msg_##m;
#define MS_FIELD(o, n, K, sub, max, P)     MS_WIRE_DECL_##K(n, sub) MS_WIRE_HAS_##P(n)
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD

/* MS_MSG_NONE (0) is "no message"; then one value per message, in
 * messages.def order; MS_MSG_COUNT is one past the last. */
typedef enum ms_msg_type {
    MS_MSG_NONE = 0,
#define MS_STRUCT(s)
#define MS_STRUCT_END(s)
#define MS_MSG(m, M, ffield, fixed, maxb) MS_MSG_##M,
#define MS_MSG_END(m)
#define MS_FIELD(o, n, K, sub, max, P)
#include "messages.def"
#undef MS_MSG
    MS_MSG_COUNT
} ms_msg_type;

/* A message of any type: `type` says which union member is valid
 * (m.submit, m.token, m.prefill_task, ...). */
typedef struct ms_msg {
    ms_msg_type type;
    union {
#define MS_MSG(m, M, ffield, fixed, maxb) ms_msg_##m m;
#include "messages.def"
#undef MS_STRUCT
#undef MS_STRUCT_END
#undef MS_MSG
#undef MS_MSG_END
#undef MS_FIELD
    };
} ms_msg;
/* clang-format on */

/* ---- status ------------------------------------------------------------------- */
/* Outcome of decoding / receiving a message. MALFORMED: the peer sent bytes
 * that are not a valid message (answer with an Error, keep serving);
 * TRANSPORT: the socket failed or the call was interrupted (zmq error, ETERM,
 * EINTR) — nothing was received; TIMEOUT: nothing arrived in time. */
typedef enum ms_wire_status {
    MS_WIRE_OK = 0,
    MS_WIRE_MALFORMED,
    MS_WIRE_TRANSPORT,
    MS_WIRE_TIMEOUT
} ms_wire_status;

const char *ms_wire_status_name(ms_wire_status s); /* "ok", "malformed", ... */

/* ---- error codes and finish reasons -------------------------------------------- */
/* Error.code (producer: the first six) and TaskError / DataError codes. */
typedef enum ms_wire_code {
    MS_CODE_BAD_REQUEST = 0, /* "bad_request": the request is invalid; do not retry as is */
    MS_CODE_OVERLOADED,      /* "overloaded": queues full; retry later */
    MS_CODE_UNAVAILABLE,     /* "unavailable": no actor can serve it (none up / model missing) */
    MS_CODE_TIMEOUT,         /* "timeout": timeout_ms passed */
    MS_CODE_INTERNAL,        /* "internal": a bug or an unexpected failure */
    MS_CODE_CANCELLED,       /* "cancelled": cancelled before it started */
    MS_CODE_NOT_FOUND,       /* "not_found" (internal): no such features / KV / task */
    MS_CODE_DRAINING,        /* "draining" (internal): the actor is shutting down */
    MS_CODE_COUNT
} ms_wire_code;
#define MS_CODE_PRODUCER_COUNT 6 /* codes [0, 6) may reach a producer */

const char *ms_wire_code_name(ms_wire_code c); /* "bad_request", ...; "?" out of range */
/* 0 and *out, or -1 if s is not a code name. */
int ms_wire_code_parse(const char *s, ms_wire_code *out);

/* Done.finish / TaskDone.finish. */
typedef enum ms_wire_finish {
    MS_WIRE_FINISH_EOG = 0, /* "eog": the model ended the text */
    MS_WIRE_FINISH_LENGTH,  /* "length": max_tokens reached (or the context is full) */
    MS_WIRE_FINISH_STOP,    /* "stop": a stop string matched */
    MS_WIRE_FINISH_CANCEL,  /* "cancel": the producer cancelled */
    MS_WIRE_FINISH_TIMEOUT, /* "timeout": timeout_ms passed during generation */
    MS_WIRE_FINISH_COUNT
} ms_wire_finish;

const char *ms_wire_finish_name(ms_wire_finish f);
int ms_wire_finish_parse(const char *s, ms_wire_finish *out);

/* ---- messages -------------------------------------------------------------------- */
/* Zeroes *m and sets its type (every OPT field absent, pointers NULL). */
void ms_msg_init(ms_msg *m, ms_msg_type type);
/* Frees every non-NULL string and array of m (with free()) and zeroes it
 * (type MS_MSG_NONE). Safe on a zeroed or already finalized message. */
void ms_msg_fini(ms_msg *m);
/* Deep copy of src into dst (dst owns its copies; dst is overwritten, not
 * finalized first). 0, or -1 + err if src does not encode (see encode). */
int ms_msg_copy(ms_msg *dst, const ms_msg *src, char *err, size_t err_size);

/* "submit", "token", ... (the wire name); "none" for MS_MSG_NONE, "?" out of range. */
const char *ms_msg_type_name(ms_msg_type t);
/* The type of a wire name, or MS_MSG_NONE if unknown. */
ms_msg_type ms_msg_type_parse(const char *name);

/* ---- codec ------------------------------------------------------------------------ */
/* Appends the header of m to out (a msgpack_sbuffer the caller initialised).
 * The encoder checks what the decoder checks (bounds, exactly one of
 * prompt/messages, code/finish/mode names, ...) so that nothing is sent that
 * the peer would reject: 0, or -1 + err naming the field (out may then hold
 * a partial header: clear it). A NULL REQ string is encoded as "". */
int ms_wire_encode(const ms_msg *m, msgpack_sbuffer *out, char *err, size_t err_size);
/* Same, into a new malloc'd buffer *data of *len bytes (caller frees). */
int ms_wire_encode_buf(const ms_msg *m, uint8_t **data, size_t *len, char *err, size_t err_size);

/* Decodes one header of exactly len bytes into *out (initialised by this call;
 * on MS_WIRE_MALFORMED it is left finalized, nothing to free). err receives the
 * reason. Returns MS_WIRE_OK or MS_WIRE_MALFORMED, never asserts on input. */
ms_wire_status ms_wire_decode(const uint8_t *data, size_t len, ms_msg *out, char *err,
                              size_t err_size);

/* What can be read from a header that failed to decode, so the reply can
 * still be addressed: the "t" type (if known), "id" (a str within bounds),
 * "rid" and "task" (uints), found anywhere at the top level. Best effort. */
typedef struct ms_wire_peek {
    ms_msg_type type;                  /* MS_MSG_NONE if unreadable/unknown */
    bool has_id;                       /* id holds the "id" string */
    char id[MS_WIRE_MAX_ID_BYTES + 1]; /* NUL-terminated */
    bool has_rid, has_task;
    uint64_t rid, task;
} ms_wire_peek;
void ms_wire_peek_header(const uint8_t *data, size_t len, ms_wire_peek *out);

/* ---- payload frames ------------------------------------------------------------------ */
/* Payload frames m must be followed by (its fixed count + its frames field). */
size_t ms_wire_payload_frames(const ms_msg *m);
/* Largest payload frame of a message of type t (0 if it has none). */
size_t ms_wire_max_frame_bytes(ms_msg_type t);
/* Checks n payload frames of the given sizes against m: the count, each size
 * against the type's maximum, non-empty images, feature_data == n_tokens *
 * dim * 4 bytes, kv_data == bytes. 0, or -1 + err ("submit declares 2 image
 * frames, got 1"). */
int ms_wire_check_payload(const ms_msg *m, const size_t *sizes, size_t n, char *err,
                          size_t err_size);

/* ---- sampling helpers ---------------------------------------------------------------- */
/* Sampling parameters of a Submit: defaults for absent fields (max_tokens
 * MS_DEFAULT_MAX_TOKENS, temperature 0, top_k 0, top_p 1, min_p 0, seed 0, no
 * stops), then ms_sampling_params_validate. 0, or -1 + err naming the field. */
int ms_wire_submit_sampling(const ms_msg_submit *s, ms_sampling_params *out, char *err,
                            size_t err_size);
/* A task's sampling map from params: the stop strings are malloc'd copies
 * (owned by the message that holds *out; ms_msg_fini frees them). */
void ms_wire_sampling_from_params(const ms_sampling_params *p, ms_wire_sampling *out);
/* Params from a task's sampling map; validated. 0, or -1 + err. */
int ms_wire_sampling_to_params(const ms_wire_sampling *w, ms_sampling_params *out, char *err,
                               size_t err_size);

#endif
