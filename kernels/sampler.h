/* sampler.h — choosing the next token from logits, and when to stop.
 *
 * Order of the chain (as llama.cpp's default): top-k → top-p → min-p →
 * temperature → draw from the softmax with the request's own RNG. A
 * temperature <= 0 is greedy (argmax, ties to the lowest id). The RNG state
 * lives in the sampler, so a sequence sampled in pieces (prefill actor, then
 * decode actor after a KV handoff) draws the same tokens as one run, provided
 * the state travels with it (ms_sampler_state).
 */
#ifndef MS_SAMPLER_H
#define MS_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MS_MAX_STOP_STRINGS 8
#define MS_MAX_STOP_LEN     128
#define MS_MAX_GEN_TOKENS   32768 /* largest accepted max_tokens */
#define MS_DEFAULT_MAX_TOKENS 128 /* max_tokens of ms_sampling_params_default */

typedef struct ms_sampling_params {
    float temperature;   /* <= 0: greedy */
    int top_k;           /* <= 0: off */
    float top_p;         /* >= 1: off */
    float min_p;         /* <= 0: off */
    uint64_t seed;       /* RNG seed */
    int max_tokens;      /* generated tokens at most (> 0) */
    int n_stop;          /* stop strings in use */
    char stop[MS_MAX_STOP_STRINGS][MS_MAX_STOP_LEN]; /* generation ends before any of these */
    bool ignore_eos; /* never end at an end-of-generation token (benchmarks that force a
                        length): the generating actor samples from the other tokens */
} ms_sampling_params;

/* Defaults: greedy, max_tokens 128, no stops. */
void ms_sampling_params_default(ms_sampling_params *p);
/* Checks ranges; -1 + message naming the bad parameter: temperature < 0 or
 * not finite, top_k < 0, top_p outside (0, 1], min_p outside [0, 1],
 * max_tokens outside [1, MS_MAX_GEN_TOKENS], n_stop outside
 * [0, MS_MAX_STOP_STRINGS], a stop string empty or without its NUL within
 * MS_MAX_STOP_LEN bytes. */
int ms_sampling_params_validate(const ms_sampling_params *p, char *err, size_t err_size);

typedef struct ms_sampler {
    ms_sampling_params p; /* copy of the parameters */
    uint64_t rng;         /* RNG state (splitmix64/xoshiro), advanced once per draw */
    int n_vocab;          /* logits per call */
    float *probs;         /* scratch, n_vocab */
    int32_t *idx;         /* scratch, n_vocab */
} ms_sampler;

/* Copies p (which must validate) and allocates scratch for n_vocab (> 0)
 * logits; the RNG state starts at p->seed. 0, or -1 for invalid arguments. */
int ms_sampler_init(ms_sampler *s, const ms_sampling_params *p, int n_vocab);
void ms_sampler_fini(ms_sampler *s);
/* Picks a token from n_vocab logits (not modified). Every call advances the
 * RNG state by one step (greedy calls too), so the state after n tokens
 * depends only on the seed and n. NaN logits count as -inf; if every logit is
 * -inf the result is token 0. */
int32_t ms_sampler_sample(ms_sampler *s, const float *logits);
/* RNG state for hand-off between processes (a splitmix64 counter: restoring
 * it into a sampler with the same parameters continues the same draws). */
uint64_t ms_sampler_state(const ms_sampler *s);
void ms_sampler_set_state(ms_sampler *s, uint64_t state);

/* Stop-string matching over streamed text: text that could still be the start
 * of a stop string is held back, so a stop string never reaches the client. */
typedef struct ms_stop_matcher {
    const ms_sampling_params *p; /* stop strings (not owned) */
    char held[MS_MAX_STOP_LEN];  /* text held back */
    int n_held;                  /* bytes in held */
} ms_stop_matcher;

void ms_stop_init(ms_stop_matcher *m, const ms_sampling_params *p);
/* Feeds a text delta; writes what may be emitted to out (cap bytes, NUL-terminated)
 * and returns true if a stop string completed (out then holds the text before it).
 * cap must be at least len + MS_MAX_STOP_LEN (held text is emitted with the
 * delta). After a stop the matcher is empty; further pushes are the caller's
 * mistake but harmless. */
bool ms_stop_push(ms_stop_matcher *m, const char *text, int len, char *out, int cap, int *out_len);
/* At the end of generation: releases held text. Returns bytes written. */
int ms_stop_flush(ms_stop_matcher *m, char *out, int cap);

#endif
