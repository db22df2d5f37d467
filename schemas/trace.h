/* trace.h — request traces for replay (`modserve bench`, docs/bench.md):
 * the Azure LMM inference trace 2025 and the Azure LLM (text-only) traces
 * 2023 as users have them (.csv or .csv.gz), parsed strictly, sliced, turned
 * into an arrival schedule, and each row into the shape of the request that
 * stands for it on the model being served.
 *
 * Formats: CSV, the header line first, LF or CRLF line ends, gzip or plain
 * (told apart by the content, not the file name).
 *   2025 (multimodal)  TIMESTAMP,NumImages,ContextTokens,GeneratedTokens
 *                      2024-10-16T08:36:32.709Z,1,3324,170
 *   2023 (text only)   TIMESTAMP,ContextTokens,GeneratedTokens
 *                      2023-11-16 18:17:03.9799600,4808,10
 * Timestamps: YYYY-MM-DD, then 'T' or ' ', hh:mm:ss, an optional fraction of
 * 1..9 digits, an optional zone ('Z' or ±hh:mm); no zone means UTC (the 2023
 * files have none). Counts are decimal digits only. Every other deviation —
 * an unknown header, a wrong field count, a sign, a space, an empty field, a
 * bad date, a count out of range, a control byte, an overlong line, a blank
 * line before more rows, a truncated gzip stream — is an error naming the
 * file and the line. Blank lines at the very end are allowed.
 *
 * Rows are kept in time order: a file whose rows go back in time is sorted
 * (stable) and the count of such rows is reported, so "row i" always means
 * the i-th arrival (0-based; the file line is kept in each row).
 */
#ifndef MS_TRACE_H
#define MS_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MS_TRACE_MAX_LINE   256                 /* bytes of one line, without its end */
#define MS_TRACE_MAX_ROWS   (16u * 1024 * 1024) /* data rows of one file */
#define MS_TRACE_MAX_COUNT  100000000           /* largest ContextTokens / GeneratedTokens */
#define MS_TRACE_MAX_IMAGES 1000000             /* largest NumImages */
#define MS_TRACE_MIN_YEAR   1970                /* timestamps from this year ... */
#define MS_TRACE_MAX_YEAR   2200                /* ... to this one (fits int64 ns) */
#define MS_TRACE_TIME_MAX   40                  /* bytes of a formatted timestamp, with the NUL */

#define MS_TRACE_HEADER_2025 "TIMESTAMP,NumImages,ContextTokens,GeneratedTokens"
#define MS_TRACE_HEADER_2023 "TIMESTAMP,ContextTokens,GeneratedTokens"

typedef enum ms_trace_format {
    MS_TRACE_LMM2025 = 0, /* Azure LMM inference trace 2025 (NumImages column) */
    MS_TRACE_LLM2023 = 1, /* Azure LLM inference traces 2023 (text only) */
} ms_trace_format;

/* One request of the trace. */
typedef struct ms_trace_row {
    int64_t t_ns;             /* arrival, ns since the Unix epoch (UTC) */
    int32_t n_images;         /* NumImages (0 in the 2023 format) */
    int32_t context_tokens;   /* ContextTokens: text + image tokens of the traced model */
    int32_t generated_tokens; /* GeneratedTokens */
    int32_t line;             /* line of the file it came from (the header is line 1) */
} ms_trace_row;

/* A parsed trace. Caller-owned storage: ms_trace_parse / ms_trace_load fill
 * it, ms_trace_fini frees it. */
typedef struct ms_trace {
    ms_trace_format format; /* from the header */
    ms_trace_row *rows;     /* n_rows rows in time order (owned) */
    size_t n_rows;
    size_t n_reordered; /* rows that came earlier in time than the row above them */
} ms_trace;

/* Parses len bytes of trace text (plain CSV; `name` is used in messages).
 * On success t holds the rows (at least one) and 0 is returned; -1 + err
 * (naming name and the line) otherwise, t then empty. */
int ms_trace_parse(ms_trace *t, const char *text, size_t len, const char *name, char *err,
                   size_t err_size);
/* Reads and parses a trace file, plain or gzip-compressed. 0, or -1 + err. */
int ms_trace_load(ms_trace *t, const char *path, char *err, size_t err_size);
/* Frees the rows and zeroes t. Safe on a zeroed or finalised t. */
void ms_trace_fini(ms_trace *t);
/* "2025" / "2023" (the trace generation a format belongs to). */
const char *ms_trace_format_name(ms_trace_format f);

/* Parses one timestamp (len bytes, the syntax above) into ns since the epoch.
 * 0, or -1 + err saying what is wrong. */
int ms_trace_parse_time(const char *s, size_t len, int64_t *t_ns, char *err, size_t err_size);
/* Formats t_ns as "YYYY-MM-DDThh:mm:ss.mmmZ" (UTC, ms) into buf
 * (MS_TRACE_TIME_MAX bytes suffice). */
void ms_trace_format_time(int64_t t_ns, char *buf, size_t size);

/* ---- slicing ------------------------------------------------------------- */

/* Which rows to replay: from row_begin (or from the first arrival at or
 * after start_ns), up to row_end (exclusive), and only arrivals within
 * duration_s trace seconds of the first selected one. */
typedef struct ms_trace_window {
    int64_t row_begin; /* first row (0-based, time order); ignored when has_start */
    int64_t row_end;   /* one past the last row; <= 0: to the end of the trace */
    bool has_start;    /* start at a time instead of row_begin */
    int64_t start_ns;  /* has_start: first row with t_ns >= start_ns */
    double duration_s; /* > 0: only rows with t < t_first + duration_s; <= 0: no limit */
} ms_trace_window;

/* The selected rows: t->rows[*first .. *first + *n). At least one row, else
 * -1 + err saying why (past the end, empty window, bad range). */
int ms_trace_window_apply(const ms_trace *t, const ms_trace_window *w, size_t *first, size_t *n,
                          char *err, size_t err_size);
/* "A:B", "A:" or ":B" (0-based rows, B exclusive) into *a, *b (b = 0: to the
 * end). 0, or -1 + err. */
int ms_trace_parse_rows(const char *s, int64_t *a, int64_t *b, char *err, size_t err_size);
/* --start: a timestamp (absolute), or seconds ("90", "90.5", "+90", "90s")
 * after the first arrival of t. 0 and *start_ns, or -1 + err. */
int ms_trace_parse_start(const ms_trace *t, const char *s, int64_t *start_ns, char *err,
                         size_t err_size);

/* ---- schedule ------------------------------------------------------------ */

/* When an arrival at t_ns is replayed, relative to the window's first
 * arrival t_first_ns: (t_ns − t_first_ns) × time_scale ÷ rate, in ns.
 * time_scale < 1 plays faster (0.1: ten times faster); rate > 1 multiplies
 * the request rate by compressing the gaps (rate X = time_scale 1/X; the two
 * multiply). Both must be > 0 (MS_TRACE_MIN_SCALE .. MS_TRACE_MAX_SCALE). */
int64_t ms_trace_offset_ns(int64_t t_first_ns, int64_t t_ns, double time_scale, double rate);
#define MS_TRACE_MIN_SCALE 1e-6
#define MS_TRACE_MAX_SCALE 1e6
/* 0 if time_scale and rate are within bounds, else -1 + err. */
int ms_trace_check_scale(double time_scale, double rate, char *err, size_t err_size);

/* ---- request shapes -------------------------------------------------------- */

/* The model being served and the clamps of the replay. */
typedef struct ms_trace_shape_opts {
    int n_image_tokens; /* tokens one image costs on this model; <= 0: images are dropped */
    int max_images;     /* images per request at most (> 0; the wire allows MS_WIRE_MAX_IMAGES) */
    int max_context;    /* prompt tokens (text + image) at most; <= 0: no limit */
    int max_gen;        /* generated tokens at most; <= 0: no limit but MS_MAX_GEN_TOKENS */
    int n_ctx;          /* tokens one sequence holds (prompt + generated); <= 0: unknown */
} ms_trace_shape_opts;

/* What a shape changed from its row (bits of ms_trace_shape.clamped). */
enum {
    MS_TRACE_CLAMP_IMAGES = 1u << 0,  /* fewer images than NumImages */
    MS_TRACE_CLAMP_CONTEXT = 1u << 1, /* prompt tokens != ContextTokens */
    MS_TRACE_CLAMP_GEN = 1u << 2,     /* max_tokens != GeneratedTokens */
};

/* The request that stands for a row on this model. */
typedef struct ms_trace_shape {
    int n_images;      /* images to send */
    int image_tokens;  /* n_images × n_image_tokens */
    int text_tokens;   /* text tokens of the prompt, >= 1 (everything that is not an image) */
    int prompt_tokens; /* text_tokens + image_tokens */
    int max_tokens;    /* tokens to generate (forced: ignore_eos), >= 1 */
    unsigned clamped;  /* MS_TRACE_CLAMP_* */
} ms_trace_shape;

/* Shapes row r:
 *   max_tokens = GeneratedTokens (at least 1) within max_gen and
 *     MS_MAX_GEN_TOKENS, and within n_ctx − (the smallest prompt: one text
 *     token, plus one image when the row has images and max_context allows one);
 *   prompt budget = ContextTokens within max_context and n_ctx − max_tokens;
 *   images = NumImages within max_images, and as many as max_context and
 *     n_ctx − max_tokens hold beside one text token (none when
 *     n_image_tokens <= 0): the image count is kept even where it breaks the
 *     budget, since it is what loads the encoders;
 *   text = budget − image tokens, at least 1 (so an image prompt is longer than
 *     ContextTokens when this model's images cost more tokens than the traced
 *     model's did).
 * Requires o->max_images > 0 and, if n_ctx > 0, n_ctx >= 2. */
void ms_trace_shape_row(const ms_trace_row *r, const ms_trace_shape_opts *o, ms_trace_shape *out);

#endif
