/* stages.h — the pipeline's stages and actor states, defined once for the
 * registry, the broker's policies, the actors, the tools and the gateway.
 *
 * A stage is one of encode, prefill, decode (ms_stage, usable as an array
 * index). A stage SET — what an actor serves — is a uint32_t bit mask of
 * MS_STAGE_BIT(stage); in Redis, on the wire and on command lines it is the
 * stage names joined by '+' in canonical order: "encode", "prefill",
 * "decode", "prefill+decode" (a text instance), "encode+prefill+decode" (the
 * monolith).
 */
#ifndef MS_STAGES_H
#define MS_STAGES_H

#include <stddef.h>
#include <stdint.h>

typedef enum ms_stage {
    MS_STAGE_ENCODE = 0,  /* image preprocessing + ViT */
    MS_STAGE_PREFILL = 1, /* projector + prompt prefill, first token */
    MS_STAGE_DECODE = 2,  /* token-by-token generation */
    MS_STAGE_COUNT
} ms_stage;

#define MS_STAGE_BIT(s)   (1u << (unsigned)(s))
#define MS_STAGES_ENCODE  MS_STAGE_BIT(MS_STAGE_ENCODE)
#define MS_STAGES_PREFILL MS_STAGE_BIT(MS_STAGE_PREFILL)
#define MS_STAGES_DECODE  MS_STAGE_BIT(MS_STAGE_DECODE)
#define MS_STAGES_TEXT    (MS_STAGES_PREFILL | MS_STAGES_DECODE) /* "prefill+decode" */
#define MS_STAGES_ALL     (MS_STAGES_ENCODE | MS_STAGES_TEXT)    /* "encode+prefill+decode" */
#define MS_STAGES_NAME_MAX 32 /* longest stage-set name incl. NUL ("encode+prefill+decode") */
#define MS_STAGES_STR_MAX  MS_STAGES_NAME_MAX

typedef enum ms_actor_state {
    MS_ACTOR_UP = 0,       /* "up": takes new work */
    MS_ACTOR_DRAINING = 1, /* "draining": finishes what it holds, takes nothing new */
} ms_actor_state;

/* "encode" / "prefill" / "decode"; NULL for a value out of range. */
const char *ms_stage_name(ms_stage stage);
/* Parses a stage-set name: stage names in any order, each at most once,
 * joined by '+'. 0 and *out set, or -1 with a message (err may be NULL). */
int ms_stages_parse(const char *text, uint32_t *out, char *err, size_t err_size);
/* Canonical name of a mask into buf; "" for 0 or unknown bits, or if buf is
 * too small (MS_STAGES_NAME_MAX always suffices). Returns buf. */
const char *ms_stages_name(uint32_t stages, char *buf, size_t buf_size);
/* "up" / "draining" <-> ms_actor_state. parse returns 0 or -1. */
int ms_actor_state_parse(const char *text, ms_actor_state *state);
const char *ms_actor_state_name(ms_actor_state state);

#endif
