/* actor.h — a modserve actor: one process serving a set of pipeline stages
 * (encode, prefill, decode, or the combinations prefill+decode and
 * encode+prefill+decode) with the engine, a broker connection, a data plane
 * and a registry entry. docs/actors.md is the guide.
 *
 * Sockets (docs/pipeline.md): a DEALER to the broker's back socket whose
 * identity is the actor id (tasks in, TokenOut/TaskDone/... out; Hello is
 * sent on every (re)connect), and a ROUTER the actor binds for its data
 * plane, serving FeatureGet (vision features kept by an encoder) and KvGet
 * (KV blobs a prefill actor hands off) from its ms_featstore. Pulls from
 * other actors go through one DEALER per peer endpoint.
 *
 * Registry: registered at start, heartbeat every MS_REGISTRY_HEARTBEAT_MS with
 * live load (queued image tokens, queued prompt tokens, running sequences,
 * free KV blocks) and counters (images_encoded, images_cache_hits,
 * requests_prefilled, tokens_decoded, tasks_done).
 *
 * Main loop: one thread. Each turn polls the broker, data and monitor
 * sockets (zero timeout while there is work), handles every waiting message,
 * heartbeats when due, then runs one encode batch, admits/prefills one task
 * and takes one decode step for every running sequence (continuous
 * batching). SIGTERM (ms_actor_request_stop) drains: Bye to the broker,
 * state "draining" in the registry, queued tasks handed back (TaskError
 * "draining"), running sequences finished (handed back past drain_ms), data
 * kept for pullers until pulled or drain_ms, then deregistration.
 *
 * The second half of this header is internal to actors/ files (the struct the
 * stage files share, the encoder and text-generation stage logic) and is
 * exposed for them and for tests.
 */
#ifndef MS_ACTOR_H
#define MS_ACTOR_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <czmq.h>

#include "featstore.h"
#include "ms_common.h"
#include "registry.h"

#include "frames.h"
#include "wire.h"
#include "engine.h"

/* ---- limits and defaults ------------------------------------------------------ */
#define MS_ACTOR_PULL_TIMEOUT_MS   1500  /* one feature / KV pull from a silent peer, at most (< registry TTL) */
#define MS_ACTOR_DRAIN_MS_DEFAULT  30000 /* SIGTERM: finish running work within this */
#define MS_ACTOR_MAX_SEQS_DEFAULT  64    /* running sequences (decode batch) at most */
#define MS_ACTOR_MAX_SEQS_LIMIT    4096  /* largest accepted --max-batch */
#define MS_ACTOR_QUEUE_MAX         4096  /* queued tasks per stage; past it: TaskError overloaded */
#define MS_ACTOR_IDLE_POLL_MS      50  /* poll timeout when idle (heartbeats are checked as well) */
#define MS_ACTOR_MSGS_PER_TURN     256 /* messages handled per socket per loop turn, at most */
#define MS_ACTOR_MAX_PEERS         32  /* cached data-plane DEALERs (least recently used dropped) */
#define MS_ACTOR_DATA_REQ_MAX      (64u << 10)             /* bytes of a data-plane request */
#define MS_ACTOR_CTRL_MSG_MAX      MS_FRAMES_DEFAULT_LIMIT /* bytes of a broker message */
#define MS_ACTOR_LINGER_MS         2000 /* flush outgoing broker messages at exit, at most */
#define MS_ACTOR_ENCODER_KV_TOKENS 16   /* KV of an encode-only actor (it never prefills) */
#define MS_ACTOR_TEXT_PIECE        1024 /* bytes of one token's detokenized piece (as the engine) */
#define MS_ACTOR_TEXT_BUF          (MS_ACTOR_TEXT_PIECE + MS_MAX_STOP_LEN) /* one text delta */
#define MS_ACTOR_PATH_MAX          4096 /* bytes of a model path, NUL included */

/* ---- configuration -------------------------------------------------------------- */
typedef struct ms_actor_config {
    char id[MS_ACTOR_ID_MAX];            /* --id: registry id and DEALER identity ("enc-1") */
    unsigned stages;                     /* --stages: MS_STAGE_* bits */
    char lm_path[MS_ACTOR_PATH_MAX];     /* --model: text model GGUF (always loaded) */
    char mmproj_path[MS_ACTOR_PATH_MAX]; /* --mmproj: vision GGUF ("" = none; needed to encode) */
    char backend[32];                    /* --backend: "cpu" (default) or "cpu-ref" */
    char broker_ep[MS_ACTOR_STR_MAX];    /* --broker: broker back endpoint (tcp://127.0.0.1:5556) */
    char data_bind[MS_ACTOR_STR_MAX];    /* --data: endpoint to bind; tcp port 0 = a free port */
    char advertise[MS_ACTOR_STR_MAX];    /* --advertise: host peers reach the tcp data endpoint
                                            at, published instead of the bound address
                                            ("" = publish as bound) */
    char redis_host[MS_ACTOR_STR_MAX];   /* --redis HOST:PORT (host part) */
    int redis_port;                      /* --redis HOST:PORT (port part) */
    char redis_prefix[MS_ACTOR_PREFIX_MAX]; /* --prefix: registry key prefix ("ms") */
    char device[MS_ACTOR_DEVICE_MAX];       /* published device name ("cpu") */
    int n_threads;                          /* --threads: compute threads (0: one per core) */
    int kv_tokens;                          /* --kv-tokens: KV capacity (0: engine default) */
    int batch_tokens;     /* --batch-tokens: rows per LM pass (0: engine default) */
    int vit_batch;        /* --vit-batch: images per ViT pass (0: engine default) */
    int max_seqs;         /* --max-batch: running sequences at most */
    size_t store_bytes;   /* --store-mb: feature/KV store bound (0: default) */
    int64_t store_ttl_ms; /* --store-ttl-ms: unpulled data expiry (0: default) */
    int pull_timeout_ms;  /* --pull-timeout-ms: one peer pull, at most */
    int drain_ms;         /* --drain-ms: SIGTERM drain limit */
} ms_actor_config;

/* Defaults: no id/stages/model, cpu backend, broker tcp://127.0.0.1:5556,
 * data tcp://127.0.0.1:0, Redis 127.0.0.1:6379 prefix "ms", device "cpu",
 * max_seqs MS_ACTOR_MAX_SEQS_DEFAULT, pull timeout and drain as above. */
void ms_actor_config_default(ms_actor_config *c);
/* Parses modserve-actor's command line (argv[0] skipped) on top of c.
 * Returns 0, 1 if --help was given (usage printed to stdout), or -1 + err
 * naming the bad argument. Requires --id, --stages and --model; --mmproj
 * when the stages include encode. */
int ms_actor_config_parse(ms_actor_config *c, int argc, char **argv, char *err, size_t err_size);
/* The usage text of modserve-actor. */
const char *ms_actor_usage(void);

/* ---- the actor ------------------------------------------------------------------ */
typedef struct ms_actor ms_actor;

/* Loads the engine (the LM always — the engine requires one — and the mmproj
 * when given; an encode-only actor gets a minimal KV cache), binds the data
 * socket, connects to the broker and registers in Redis (a Redis that is down
 * is not an error: the heartbeat registers later). NULL + err on failure. */
ms_actor *ms_actor_new(const ms_actor_config *c, char *err, size_t err_size);
/* Deregisters (best effort), closes sockets, frees everything; NULLs *a_p. */
void ms_actor_destroy(ms_actor **a_p);
/* Serves until a stop is requested, then drains (see above). 0 after a clean
 * drain, -1 if the sockets failed. */
int ms_actor_run(ms_actor *a);
/* Asks every running actor of this process to drain and exit
 * (async-signal-safe: sets a flag; call it from a SIGTERM/SIGINT handler). */
void ms_actor_request_stop(void);
/* The bound data-plane endpoint (tcp port resolved), as published. */
const char *ms_actor_data_ep(const ms_actor *a);

/* =========================================================================
 * Internals shared by actors/ files (and tests).
 * ========================================================================= */

typedef struct ms_encoder ms_encoder;
typedef struct ms_textgen ms_textgen;

/* A cached DEALER to a peer's data plane. */
typedef struct ms_actor_peer {
    char ep[MS_ACTOR_STR_MAX]; /* endpoint */
    zsock_t *sock;             /* owned */
    int64_t used_ms;           /* last use, for LRU replacement */
} ms_actor_peer;

struct ms_actor {
    ms_actor_config cfg;
    ms_engine *eng;                 /* owned */
    ms_featstore *store;            /* owned: features / KV blobs served on the data plane */
    ms_registry *reg;               /* owned */
    ms_actor_info info;             /* registry record; load and counters updated in place */
    zsock_t *ctrl;                  /* owned: DEALER to the broker */
    zsock_t *data;                  /* owned: data-plane ROUTER */
    void *monitor;                  /* owned: raw zmq PAIR receiving ctrl's connect events */
    char data_ep[MS_ACTOR_STR_MAX]; /* resolved data endpoint */
    ms_encoder *enc;                /* owned; NULL without the encode stage */
    ms_textgen *tg;                 /* owned; NULL without prefill/decode */
    ms_actor_peer peers[MS_ACTOR_MAX_PEERS]; /* data-plane clients */
    bool draining;                           /* a stop was requested and the drain began */
    int64_t drain_deadline_ms;               /* monotonic ms at which running work is handed back */
    int64_t next_heartbeat_ms;               /* monotonic ms of the next heartbeat */
    int64_t pulls_served;                    /* data-plane requests answered with data */
};

/* Monotonic clock in milliseconds. */
int64_t ms_actor_now_ms(void);
/* Sends m (no payload) to the broker. 0, or -1 (logged). */
int ms_actor_send(ms_actor *a, const ms_msg *m);
/* Sends TaskError{rid, task, code, message} to the broker (logged at warn). */
void ms_actor_task_error(ms_actor *a, uint64_t rid, uint64_t task, ms_wire_code code,
                         const char *fmt, ...) MS_PRINTF(5, 6);
/* Pulls from a peer's data plane: sends req (FeatureGet or KvGet) to ep and
 * waits up to cfg.pull_timeout_ms for the reply of type `want` that answers
 * it (stale replies are skipped), serving this actor's own data socket while
 * waiting. On 0, *in holds the reply with its payload frame. -1 + err on a
 * timeout, a transport failure, a DataError reply (its code and message) or a
 * malformed reply. */
int ms_actor_pull(ms_actor *a, const char *ep, const ms_msg *req, ms_msg_type want,
                  ms_frames_in *in, char *err, size_t err_size);
/* Answers one waiting data-plane request (FeatureGet / KvGet) from the store. */
void ms_actor_serve_data(ms_actor *a);
/* Store key of an image's features: "f:<16 hex digits>". */
void ms_actor_feature_key(uint64_t hash, char key[MS_FEATSTORE_KEY_MAX]);

/* ---- encode stage (encoder.c) ------------------------------------------------ */
ms_encoder *ms_encoder_new(ms_actor *a);
void ms_encoder_destroy(ms_encoder **enc_p);
/* Queues an EncodeTask (its message and image frames are moved out of *in).
 * Invalid tasks (no images, a hash that is not ms_hash64 of the bytes) are
 * answered with TaskError bad_request; images already in the store are cache
 * hits (pinned for one more pull, never re-encoded). */
void ms_encoder_on_task(ms_encoder *enc, ms_frames_in *in);
/* Drops every queued task of rid (no reply). */
void ms_encoder_cancel(ms_encoder *enc, uint64_t rid);
/* Runs one ViT batch (up to vit_batch images across queued tasks), answers
 * the tasks it completes with Encoded. Returns true if it did anything. */
bool ms_encoder_work(ms_encoder *enc);
/* True while tasks are queued. */
bool ms_encoder_busy(const ms_encoder *enc);
/* Answers every queued task with TaskError "draining" and drops it. */
void ms_encoder_hand_back(ms_encoder *enc);
/* Image tokens waiting to be encoded. */
int64_t ms_encoder_queued_image_tokens(const ms_encoder *enc);

/* ---- text generation (textgen.c) --------------------------------------------- */

/* One generating sequence: the KV sequence and the sampling / detokenizing /
 * stop-matching state, advanced exactly as ms_engine_generate advances them
 * (so that a sequence generated in pieces, across actors, yields the same
 * tokens and text). */
typedef struct ms_gen {
    ms_seq *seq;             /* owned (ms_gen_fini frees it) */
    ms_sampling_params sp;   /* copy of the request's parameters */
    ms_sampler smp;          /* RNG state advances once per sampled token */
    ms_detok dt;             /* streaming detokenizer */
    ms_stop_matcher sm;      /* stop strings (points at sp) */
    int n_generated;         /* tokens sampled so far, delivered ones included */
    int32_t next_tok;        /* the last sampled token: input of the next decode step */
    bool finished;           /* generation ended */
    ms_finish_reason finish; /* why, once finished */
} ms_gen;

/* What one sampled token produced. */
typedef struct ms_gen_token {
    int32_t id;                   /* the token */
    int index;                    /* its index in the generated stream (0 = first) */
    char text[MS_ACTOR_TEXT_BUF]; /* text it releases (NUL-terminated, may be empty) */
    int len;                      /* bytes in text */
    bool finished;                /* this token ends the generation */
    ms_finish_reason finish;      /* why, if finished */
} ms_gen_token;

/* Sets g up (no sequence yet, RNG at sp->seed). sp must validate. 0 or -1 + err.
 * The ms_gen must not move in memory afterwards (the stop matcher points into it). */
int ms_gen_init(ms_gen *g, ms_engine *e, const ms_sampling_params *sp, char *err, size_t err_size);
/* Frees the sequence (if any) and the sampler. */
void ms_gen_fini(ms_gen *g, ms_engine *e);
/* Feeds tokens already delivered (ids[0..n-1]) through the detokenizer and the
 * stop matcher silently, as if they had been sampled here: n_generated = n,
 * next_tok = ids[n-1]. The RNG is not touched (see ms_gen_rng_after). */
void ms_gen_replay(ms_gen *g, ms_engine *e, const int32_t *ids, int n);
/* The RNG state a sampler seeded with `seed` has after n draws. */
uint64_t ms_gen_rng_after(uint64_t seed, int n);
/* Samples the next token from logits (n_vocab floats) and fills *out: text
 * released, whether (and why) generation ends — the rules of
 * ms_engine_generate (end-of-generation token, max_tokens, context full,
 * stop string). */
void ms_gen_sample(ms_gen *g, ms_engine *e, const float *logits, ms_gen_token *out);
/* One batched decode step: feeds gens[i]->next_tok to each sequence (one
 * ms_engine_decode over the batch; logits: n * n_vocab scratch) and samples
 * out[i] for each. 0, or -1 + err with nothing changed (the engine refuses a
 * batch as a whole, e.g. "KV cache full"). */
int ms_gen_decode_step(ms_engine *e, ms_gen *const *gens, int n, float *logits, ms_gen_token *out,
                       char *err, size_t err_size);
/* KV blocks one more decode step of seq needs (0 or 1). */
int ms_gen_step_blocks(const ms_engine *e, const ms_seq *seq);

ms_textgen *ms_textgen_new(ms_actor *a);
void ms_textgen_destroy(ms_textgen **tg_p);
/* Queues a PrefillTask / DecodeTask (the message is moved out of *in).
 * Invalid tasks are answered with TaskError bad_request at once. */
void ms_textgen_on_prefill(ms_textgen *tg, ms_frames_in *in);
void ms_textgen_on_decode(ms_textgen *tg, ms_frames_in *in);
/* Drops every queued task and running sequence of rid (no reply). */
void ms_textgen_cancel(ms_textgen *tg, uint64_t rid);
/* Admits and runs at most one queued task (pulls, prefill or KV import), then
 * one decode step for every running sequence, emitting TokenOut / TaskDone /
 * PrefillDone / TaskError. Returns true if it did anything. */
bool ms_textgen_work(ms_textgen *tg);
/* True while tasks are queued or sequences run. */
bool ms_textgen_busy(const ms_textgen *tg);
/* Answers every queued task with TaskError "draining"; with `running` also
 * every running sequence (its tokens so far were delivered: the broker
 * re-dispatches with them). */
void ms_textgen_hand_back(ms_textgen *tg, bool running);
int64_t ms_textgen_queued_prompt_tokens(const ms_textgen *tg);
int ms_textgen_running(const ms_textgen *tg);

#endif
