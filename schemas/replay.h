/* replay.h — the trace player behind `modserve bench` (docs/bench.md).
 *
 *   ms_replay_plan(&plan, rows, n, reqs, ...)   each trace row → a request shape,
 *                                               synthetic text sized exactly
 *   ms_replay_run(&opts, reqs, n, &res, ...)    submit at the scheduled times,
 *                                               record the answers, sample the registry
 *   ms_report_summarize(reqs, n, res.samples, ...)   (report.h)
 *
 * Requests. The trace gives sizes, not content (the traces' own description
 * says so), so a request is synthesised: a raw prompt (no chat template) made
 * of common one-token words, sized with the model's tokenizer so that its
 * text tokens — everything that is not an image, BOS and the "\n" after each
 * image marker included — are exactly the planned count (the broker counts
 * the same way: ms_chat_build_prompt, raw template); its images, at the start
 * of the prompt, are files of a pool (fixture photos) with bytes made unique
 * per request and image (a JPEG comment or PNG tEXt chunk carrying a run nonce),
 * so that the encoders' feature cache, keyed by the bytes' hash, never hits;
 * max_tokens is the row's GeneratedTokens and `ignore_eos` forces that length.
 * For the ViTs modserve runs, every image costs n_image_tokens tokens
 * whatever its size, so the pool's picture sizes change only the
 * preprocessing cost.
 *
 * Replay. One client (one DEALER socket) holds every request in flight.
 * The loop waits on the socket (zpoller) with a timeout that ends at the next
 * scheduled arrival, so arrivals are sent on time (the lag is measured) while
 * answers are taken as they come; a concurrency limit holds arrivals back
 * (client-side queueing, also measured). A thread samples the registry
 * (ms_registry_list) every MS_REPLAY_SAMPLE_MS for the actor counts per stage
 * set that give the cost in instance-seconds.
 */
#ifndef MS_REPLAY_H
#define MS_REPLAY_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "report.h"
#include "tokenizer.h"
#include "trace.h"

#define MS_REPLAY_SAMPLE_MS      1000  /* registry sampling period */
#define MS_REPLAY_PROGRESS_MS    200   /* progress bar redraw (a terminal) */
#define MS_REPLAY_LINE_MS        10000 /* progress line period (not a terminal) */
#define MS_REPLAY_CANCEL_WAIT_MS 5000  /* after a stop: how long cancelled requests may take */
#define MS_REPLAY_SIZE_ROUNDS    8     /* tokenizer passes to size one text at most */
#define MS_REPLAY_TAG_MAX        96    /* bytes of the tag made unique per image */

/* ---- synthetic content ---------------------------------------------------------- */

/* Which words of the list (bit i: word i) add exactly one token after
 * another word ("the WORD" is one token more than "the") for tok; texts made
 * of them only can be sized to the token. 0 when none does (or tok is NULL):
 * then texts use every word. */
uint64_t ms_replay_word_mask(const ms_tokenizer *tok);

/* The text of n_words words drawn (from seed) from the list of common words
 * (those of word_mask; 0: all), separated by single spaces: a malloc'd
 * NUL-terminated string, its length in *len (len may be NULL). The first k
 * words do not depend on n_words (more words = a longer text, same start). */
char *ms_replay_text(int n_words, uint64_t seed, uint64_t word_mask, size_t *len);

/* The word count whose text (words of word_mask), as the raw prompt of a request with n_images
 * images (markers at its start, as the broker places them), has exactly
 * text_tokens text tokens per tok. Sets *n_words and *got (the text tokens of
 * that prompt: text_tokens unless the vocabulary cannot make it, e.g. when
 * BOS + the image markers' line ends alone exceed it; then the closest, never
 * below it). 0, or -1 + err (tokenizer failure). */
int ms_replay_size_text(const ms_tokenizer *tok, uint64_t word_mask, int n_images, int text_tokens,
                        uint64_t seed, int *n_words, int *got, char *err, size_t err_size);

/* A copy of image file img (len bytes) with `tag` embedded so that its bytes
 * (and hash) are unique while its pixels are the same: a COM segment after a
 * JPEG's SOI, a tEXt chunk after a PNG's IHDR. Returns a malloc'd buffer of
 * *out_len bytes, or NULL + err for other formats (WebP) or a malformed head. */
uint8_t *ms_replay_unique_image(const uint8_t *img, size_t len, const char *tag, size_t *out_len,
                                char *err, size_t err_size);

/* ---- planning ------------------------------------------------------------------ */

typedef struct ms_replay_plan_opts {
    ms_trace_shape_opts shape; /* the model's mapping and the clamps */
    const ms_tokenizer *tok;   /* the model's tokenizer; NULL: one token per word assumed */
    uint64_t word_mask;        /* ms_replay_word_mask(tok) */
    double time_scale, rate;   /* schedule (trace.h) */
    uint64_t seed;             /* content seed */
    int64_t row0;              /* index of rows[0] in the trace (for ms_report_req.row) */
} ms_replay_plan_opts;

/* Fills reqs[0..n) (zeroed first) for rows[0..n) (one window, time order):
 * shape, schedule relative to rows[0], word count. 0, or -1 + err (a text
 * that cannot be sized or exceeds the wire's prompt limit). */
int ms_replay_plan(const ms_replay_plan_opts *o, const ms_trace_row *rows, size_t n,
                   ms_report_req *reqs, char *err, size_t err_size);

/* ---- replay ---------------------------------------------------------------------- */

typedef struct ms_replay_opts {
    const char *endpoint;   /* broker front endpoint */
    const char *redis_host; /* registry to sample; NULL or redis_port <= 0: none */
    int redis_port;
    const char *prefix;           /* registry key prefix (NULL: default) */
    const uint8_t *const *images; /* image pool (JPEG / PNG / WebP files) */
    const size_t *image_len;
    int n_pool;                  /* > 0 when any request has images */
    bool unique_images;          /* make every image's bytes unique (else: pool bytes) */
    uint64_t nonce;              /* part of every unique tag (one per run) */
    double ttft_ms, tbt_ms;      /* SLO targets sent with every request (> 0) */
    bool ignore_eos;             /* send ignore_eos (force the generated length) */
    int concurrency_limit;       /* requests in flight at most, 1..MS_CLIENT_MAX_INFLIGHT */
    int wait_ms;                 /* give up after this long without any event (> 0) */
    uint64_t seed;               /* content seed (as planned) */
    uint64_t word_mask;          /* as planned */
    volatile sig_atomic_t *stop; /* may be NULL; non-zero: stop, cancel what is in flight */
    FILE *progress;              /* progress output (NULL: none) */
    bool progress_tty;           /* progress is a terminal: a redrawn bar, else lines */
} ms_replay_opts;

typedef struct ms_replay_result {
    ms_report_sample *samples; /* registry samples, in time order (malloc'd; free()) */
    int n_samples;
    int protocol_errors; /* undecodable events / stream faults the client reported */
    bool interrupted;    /* *stop ended it */
    bool gave_up;        /* no event for wait_ms while requests were in flight */
    double wall_s;       /* start → end of the loop */
} ms_replay_result;

/* Replays n planned requests and records what came back in reqs (times
 * relative to the start, the first arrival being scheduled at 0). Requests
 * not sent or never answered end as errors with code "client". 0 when it ran
 * (check the result), -1 + err when it could not start (bad endpoint). */
int ms_replay_run(const ms_replay_opts *o, ms_report_req *reqs, int n, ms_replay_result *res,
                  char *err, size_t err_size);

#endif
