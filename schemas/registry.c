/* registry.c — see registry.h; the key layout is described in docs/registry.md.
 *
 * Structure: one field table (S_FIELDS) is the single definition of the
 * actor hash: writing (register, heartbeat), validating and parsing all walk
 * it. Every Redis exchange goes through s_exchange(), which owns connecting,
 * backoff, timeouts, SIGPIPE suppression and the one retry on a stale
 * connection. */
#include "registry.h"

#include "ms_common.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define S_HOST_MAX   256                                          /* longest Redis host name */
#define S_KEY_MAX    (MS_ACTOR_PREFIX_MAX + 16 + MS_ACTOR_ID_MAX) /* "<prefix>:actor:<id>" */
#define S_NUM_MAX    24 /* decimal int64 with sign + NUL */
#define S_WARNED_MAX 32 /* remembered warnings (so a bad entry is not reported on every list) */
#define S_MAX_ARGS   64 /* longest command we build */

/* ---- the field table -------------------------------------------------- */

/* F_STAMP: an int64 the registry writes itself (heartbeat_ms, wall clock). */
typedef enum { F_ID, F_STR, F_STAGES, F_STATE, F_I64, F_STAMP } s_kind;

typedef struct {
    const char *name; /* field name in the hash */
    s_kind kind;
    size_t offset; /* offsetof(ms_actor_info, ...) */
    size_t size;   /* F_ID/F_STR: capacity incl. NUL */
    int64_t min;   /* F_I64: smallest valid value */
    int dynamic;   /* 1: refreshed by every heartbeat */
} s_field;

#define S_STR(f, k, cap)                                                                           \
    { #f, k, offsetof(ms_actor_info, f), cap, 0, 0 }
#define S_I64(f, lo, dyn)                                                                          \
    { #f, F_I64, offsetof(ms_actor_info, f), sizeof(int64_t), lo, dyn }

static const s_field S_FIELDS[] = {
    S_STR(id, F_ID, MS_ACTOR_ID_MAX),
    {"stages", F_STAGES, offsetof(ms_actor_info, stages), sizeof(unsigned), 0, 0},
    S_STR(model, F_STR, MS_ACTOR_STR_MAX),
    S_STR(ctrl, F_STR, MS_ACTOR_STR_MAX),
    S_STR(data_ep, F_STR, MS_ACTOR_STR_MAX),
    S_STR(host, F_STR, MS_ACTOR_STR_MAX),
    S_I64(pid, 1, 0),
    S_STR(device, F_STR, MS_ACTOR_DEVICE_MAX),
    S_I64(capacity, 0, 0),
    {"state", F_STATE, offsetof(ms_actor_info, state), sizeof(ms_actor_state), 0, 1},
    {"heartbeat_ms", F_STAMP, offsetof(ms_actor_info, heartbeat_ms), sizeof(int64_t), 0, 1},
    S_I64(queued_image_tokens, 0, 1),
    S_I64(queued_prompt_tokens, 0, 1),
    S_I64(running_seqs, 0, 1),
    S_I64(free_kv_blocks, 0, 1),
    S_I64(images_encoded, 0, 1),
    S_I64(images_cache_hits, 0, 1),
    S_I64(requests_prefilled, 0, 1),
    S_I64(tokens_decoded, 0, 1),
    S_I64(tasks_done, 0, 1),
};
#define S_NFIELDS ((int)MS_ARRAY_LEN(S_FIELDS))
_Static_assert(MS_ARRAY_LEN(S_FIELDS) <= 32, "seen-field mask is 32 bits");
_Static_assert(2 * MS_ARRAY_LEN(S_FIELDS) + 8 <= S_MAX_ARGS, "S_MAX_ARGS too small");

/* Heartbeat: refresh the dynamic fields only if the hash is ours and whole
 * enough to carry our id; otherwise answer 0 and the caller registers in full.
 * KEYS[1] actor hash, KEYS[2] actor set; ARGV[1] ttl ms, ARGV[2] id, then
 * field/value pairs. SADD heals a set member pruned by a racing reader. */
static const char S_HEARTBEAT_LUA[] =
    "if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end\n"
    "if redis.call('HGET', KEYS[1], 'id') ~= ARGV[2] then return 0 end\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV, 3))\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[1])\n"
    "redis.call('SADD', KEYS[2], ARGV[2])\n"
    "return 1\n";

/* ---- the context ------------------------------------------------------ */

struct ms_registry {
    char host[S_HOST_MAX];
    int port;
    char prefix[MS_ACTOR_PREFIX_MAX];
    char set_key[S_KEY_MAX];       /* "<prefix>:actors" */
    redisContext *c;               /* NULL while disconnected */
    int used;                      /* c has completed at least one exchange */
    int64_t next_try_ns;           /* no connect attempt before this (ms_now_ns clock) */
    int backoff_ms;                /* current backoff; 0 after a successful exchange */
    int down;                      /* 1 from a failure until the next successful exchange */
    char last_fail[MS_ERR_SIZE];   /* why the last connect or exchange failed */
    char errstr[MS_ERR_SIZE];      /* reason of the last failed call */
    uint64_t warned[S_WARNED_MAX]; /* hashes of warnings already logged */
    int warned_next;
};

/* A command under construction: argv with owned copies of every argument. */
typedef struct {
    int argc;
    char *argv[S_MAX_ARGS];
    size_t len[S_MAX_ARGS];
} s_cmd;

static void s_cmd_add(s_cmd *c, const char *s, size_t n) {
    if (c->argc >= S_MAX_ARGS) abort(); /* programmer error: S_MAX_ARGS checked statically */
    c->argv[c->argc] = ms_xstrndup(s, n);
    c->len[c->argc] = n;
    c->argc++;
}
static void s_cmd_str(s_cmd *c, const char *s) {
    s_cmd_add(c, s, strlen(s));
}
static void s_cmd_i64(s_cmd *c, int64_t v) {
    char num[S_NUM_MAX];
    int n = snprintf(num, sizeof num, "%lld", (long long)v);
    s_cmd_add(c, num, (size_t)n);
}
static void s_cmd_fini(s_cmd *c) {
    for (int i = 0; i < c->argc; i++)
        free(c->argv[i]);
    c->argc = 0;
}

int64_t ms_registry_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int s_id_char(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == ':' || ch == '-';
}

/* 0 if s[0..n) is a valid id that fits cap (with NUL). */
static int s_check_id(const char *s, size_t n, size_t cap) {
    if (n == 0 || n >= cap) return -1;
    for (size_t i = 0; i < n; i++)
        if (!s_id_char(s[i])) return -1;
    return 0;
}

static int s_check_printable(const char *s, size_t n, size_t cap) {
    if (n >= cap) return -1;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) return -1;
    return 0;
}

/* Strict decimal int64: optional '-', digits only, no spaces, in range. */
static int s_parse_i64(const char *s, size_t n, int64_t *out) {
    char buf[S_NUM_MAX];
    if (n == 0 || n >= sizeof buf) return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    size_t i = buf[0] == '-' ? 1 : 0;
    if (i == n) return -1;
    for (; i < n; i++)
        if (buf[i] < '0' || buf[i] > '9') return -1;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(buf, &end, 10);
    if (errno != 0 || end != buf + n) return -1;
    *out = (int64_t)v;
    return 0;
}

/* ---- connection, backoff, exchange ------------------------------------ */

static void s_drop(ms_registry *r) {
    if (r->c) redisFree(r->c);
    r->c = NULL;
    r->used = 0;
}

/* Records a failure (connect, timeout, lost connection): drops the
 * connection, logs the first failure of an outage, and sets when the next
 * connect may be tried: at once if `immediate` (a stale connection: the server
 * closed it, a fresh one may work), else after the backoff, which doubles
 * from MS_REGISTRY_BACKOFF_MIN_MS up to MS_REGISTRY_BACKOFF_MAX_MS. Fills
 * errstr and returns -1. */
static int s_fail(ms_registry *r, const char *what, int immediate) {
    snprintf(r->last_fail, sizeof r->last_fail, "%s", what);
    ms_errf(r->errstr, sizeof r->errstr, "redis %s:%d: %s", r->host, r->port, r->last_fail);
    s_drop(r);
    if (!r->down)
        ms_warn("registry: redis %s:%d unavailable: %s (retrying with backoff)", r->host, r->port,
                r->last_fail);
    r->down = 1;
    if (immediate) {
        r->next_try_ns = 0;
    } else {
        r->backoff_ms = r->backoff_ms ? MS_MIN(2 * r->backoff_ms, MS_REGISTRY_BACKOFF_MAX_MS)
                                      : MS_REGISTRY_BACKOFF_MIN_MS;
        r->next_try_ns = ms_now_ns() + (int64_t)r->backoff_ms * 1000000;
    }
    return -1;
}

/* Records a successful exchange: ends an outage and resets the backoff. */
static void s_succeed(ms_registry *r) {
    if (r->down) ms_info("registry: redis %s:%d reachable again", r->host, r->port);
    r->down = 0;
    r->backoff_ms = 0;
    r->used = 1;
}

/* Ensures r->c is connected. Fails at once (no network) inside the backoff window. */
static int s_connect(ms_registry *r) {
    if (r->c) return 0;
    int64_t now = ms_now_ns();
    if (now < r->next_try_ns)
        return ms_errf(r->errstr, sizeof r->errstr,
                       "redis %s:%d unavailable (%s); next attempt in %lld ms", r->host, r->port,
                       r->last_fail, (long long)((r->next_try_ns - now) / 1000000 + 1));
    struct timeval tv = {MS_REGISTRY_TIMEOUT_MS / 1000, (MS_REGISTRY_TIMEOUT_MS % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(r->host, r->port, tv);
    char why[MS_ERR_SIZE];
    if (!c || c->err) {
        snprintf(why, sizeof why, "connect: %s", c ? c->errstr : "cannot allocate a context");
        if (c) redisFree(c);
        return s_fail(r, why, 0);
    }
    r->c = c;
    r->used = 0;
    if (redisSetTimeout(c, tv) != 0) return s_fail(r, "cannot set the socket timeout", 0);
    return 0;
}

/* Sends ncmd commands in one pipeline and reads ncmd replies into replies[]
 * (the caller frees them with freeReplyObject; they may be error replies).
 * Returns 0, or -1 on a transport failure (the connection is dropped, the
 * replies are freed). If `retry` and the failure is a connection that went
 * stale (server closed it, e.g. Redis restarted), reconnects once and resends:
 * pass retry only for idempotent commands. SIGPIPE from writing to a closed
 * socket is blocked and consumed, so the caller's process never sees it. */
static int s_exchange(ms_registry *r, s_cmd *cmds, int ncmd, redisReply **replies, int retry) {
    for (int attempt = 0;; attempt++) {
        if (s_connect(r) < 0) return -1;
        int was_used = r->used;

        sigset_t pipe_set, old_set, pending;
        sigemptyset(&pipe_set);
        sigaddset(&pipe_set, SIGPIPE);
        sigpending(&pending);
        int pipe_was_pending = sigismember(&pending, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);

        int ok = 1, got = 0, saved_errno = 0;
        for (int i = 0; i < ncmd && ok; i++)
            if (redisAppendCommandArgv(r->c, cmds[i].argc, (const char **)cmds[i].argv,
                                       cmds[i].len) != REDIS_OK)
                ok = 0;
        for (; ok && got < ncmd; got++) {
            void *rep = NULL;
            if (redisGetReply(r->c, &rep) != REDIS_OK || !rep) {
                saved_errno = errno;
                ok = 0;
                break;
            }
            replies[got] = rep;
        }

        if (!pipe_was_pending) {
            sigpending(&pending);
            if (sigismember(&pending, SIGPIPE)) {
                struct timespec zero = {0, 0};
                sigtimedwait(&pipe_set, NULL, &zero);
            }
        }
        pthread_sigmask(SIG_SETMASK, &old_set, NULL);

        if (ok) {
            s_succeed(r);
            return 0;
        }
        for (int i = 0; i < got; i++)
            freeReplyObject(replies[i]);
        /* Stale: the server closed or reset a connection that worked before
         * (e.g. it restarted): reconnecting may succeed at once. Anything else
         * (a timeout: a hung server) backs off. */
        int stale =
            was_used &&
            (r->c->err == REDIS_ERR_EOF ||
             (r->c->err == REDIS_ERR_IO && (saved_errno == ECONNRESET || saved_errno == EPIPE)));
        char why[MS_ERR_SIZE];
        if (r->c->err == REDIS_ERR_IO && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK))
            snprintf(why, sizeof why, "no reply within %d ms (timeout)", MS_REGISTRY_TIMEOUT_MS);
        else
            snprintf(why, sizeof why, "%s", r->c->errstr[0] ? r->c->errstr : "no reply");
        s_fail(r, why, stale);
        if (!(retry && stale && attempt == 0)) return -1;
        ms_debug("registry: connection to redis %s:%d went stale, reconnecting", r->host, r->port);
    }
}

/* One command; *reply owned by the caller. */
static int s_command(ms_registry *r, s_cmd *cmd, redisReply **reply, int retry) {
    return s_exchange(r, cmd, 1, reply, retry);
}

/* Logs a warning once per distinct text (bounded memory). */
static void s_warn_once(ms_registry *r, const char *text) {
    uint64_t h = ms_hash64(text, strlen(text));
    for (int i = 0; i < S_WARNED_MAX; i++)
        if (r->warned[i] == h) return;
    r->warned[r->warned_next] = h;
    r->warned_next = (r->warned_next + 1) % S_WARNED_MAX;
    ms_warn("registry: %s", text);
}

/* ---- lifecycle -------------------------------------------------------- */

ms_registry *ms_registry_new(const char *host, int port, const char *prefix, char *err,
                             size_t err_size) {
    if (!host || !*host) host = "127.0.0.1";
    if (port <= 0) port = MS_REGISTRY_DEFAULT_PORT;
    if (!prefix || !*prefix) prefix = MS_REGISTRY_DEFAULT_PREFIX;
    if (strlen(host) >= S_HOST_MAX) {
        ms_errf(err, err_size, "registry: redis host name too long (%zu bytes)", strlen(host));
        return NULL;
    }
    if (port > 65535) {
        ms_errf(err, err_size, "registry: bad redis port %d", port);
        return NULL;
    }
    if (s_check_id(prefix, strlen(prefix), MS_ACTOR_PREFIX_MAX) < 0) {
        ms_errf(err, err_size, "registry: bad key prefix '%.80s' (1-%d chars of [A-Za-z0-9._:-])",
                prefix, MS_ACTOR_PREFIX_MAX - 1);
        return NULL;
    }
    ms_registry *r = ms_xcalloc(1, sizeof *r);
    snprintf(r->host, sizeof r->host, "%s", host);
    r->port = port;
    snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    snprintf(r->set_key, sizeof r->set_key, "%s:actors", prefix);
    if (s_connect(r) < 0) ms_debug("registry: %s", r->errstr);
    return r;
}

void ms_registry_destroy(ms_registry **self) {
    if (!self || !*self) return;
    s_drop(*self);
    free(*self);
    *self = NULL;
}

const char *ms_registry_errstr(const ms_registry *self) {
    return self->errstr;
}

int ms_registry_connected(const ms_registry *self) {
    return self->c != NULL;
}

int ms_registry_ping(ms_registry *self) {
    s_cmd cmd = {0};
    s_cmd_str(&cmd, "PING");
    redisReply *rep = NULL;
    int rc = s_command(self, &cmd, &rep, 1);
    s_cmd_fini(&cmd);
    if (rc < 0) return -1;
    if (rep->type != REDIS_REPLY_STATUS || strcmp(rep->str, "PONG") != 0)
        rc = ms_errf(self->errstr, sizeof self->errstr, "redis PING: unexpected reply (%.100s)",
                     rep->type == REDIS_REPLY_ERROR ? rep->str : "not PONG");
    freeReplyObject(rep);
    return rc;
}

/* ---- writing ---------------------------------------------------------- */

static void s_actor_key(const ms_registry *r, const char *id, char key[S_KEY_MAX]) {
    snprintf(key, S_KEY_MAX, "%s:actor:%s", r->prefix, id);
}

/* Checks info against the same rules the reader enforces. */
static int s_validate(ms_registry *r, const ms_actor_info *info) {
    for (int i = 0; i < S_NFIELDS; i++) {
        const s_field *f = &S_FIELDS[i];
        const char *p = (const char *)info + f->offset;
        if (f->kind == F_ID || f->kind == F_STR) {
            size_t n = strnlen(p, f->size);
            int bad =
                f->kind == F_ID ? s_check_id(p, n, f->size) : s_check_printable(p, n, f->size);
            if (bad)
                return ms_errf(r->errstr, sizeof r->errstr,
                               "registry: actor field %s is invalid (%s)", f->name,
                               f->kind == F_ID ? "1-63 chars of [A-Za-z0-9._:-]"
                                               : "unterminated or non-printable");
        } else if (f->kind == F_STAGES) {
            if (info->stages == 0 || (info->stages & ~(unsigned)MS_STAGES_ALL))
                return ms_errf(r->errstr, sizeof r->errstr,
                               "registry: actor %s: bad stages bit set 0x%x", info->id,
                               info->stages);
        } else if (f->kind == F_STATE) {
            if (info->state != MS_ACTOR_UP && info->state != MS_ACTOR_DRAINING)
                return ms_errf(r->errstr, sizeof r->errstr, "registry: actor %s: bad state %d",
                               info->id, (int)info->state);
        } else if (f->kind == F_I64) {
            int64_t v;
            memcpy(&v, p, sizeof v);
            if (v < f->min)
                return ms_errf(r->errstr, sizeof r->errstr,
                               "registry: actor %s: field %s = %lld is below %lld", info->id,
                               f->name, (long long)v, (long long)f->min);
        }
    }
    return 0;
}

/* Appends "field value" pairs (all fields, or only the dynamic ones). */
static void s_add_fields(s_cmd *cmd, const ms_actor_info *info, int64_t now_ms, int dynamic_only) {
    char stages[MS_STAGES_STR_MAX];
    for (int i = 0; i < S_NFIELDS; i++) {
        const s_field *f = &S_FIELDS[i];
        if (dynamic_only && !f->dynamic) continue;
        const char *p = (const char *)info + f->offset;
        s_cmd_str(cmd, f->name);
        switch (f->kind) {
        case F_ID:
        case F_STR:
            s_cmd_add(cmd, p, strnlen(p, f->size));
            break;
        case F_STAGES:
            s_cmd_str(cmd, ms_stages_name(info->stages, stages, sizeof stages));
            break;
        case F_STATE:
            s_cmd_str(cmd, ms_actor_state_name(info->state));
            break;
        case F_STAMP:
            s_cmd_i64(cmd, now_ms);
            break;
        case F_I64: {
            int64_t v;
            memcpy(&v, p, sizeof v);
            s_cmd_i64(cmd, v);
            break;
        }
        }
    }
}

/* Checks an EXEC reply: an array with no error element. */
static int s_check_exec(ms_registry *r, const redisReply *rep, const char *what) {
    if (rep->type == REDIS_REPLY_ERROR)
        return ms_errf(r->errstr, sizeof r->errstr, "redis %s: %.200s", what, rep->str);
    if (rep->type != REDIS_REPLY_ARRAY)
        return ms_errf(r->errstr, sizeof r->errstr, "redis %s: transaction aborted", what);
    for (size_t i = 0; i < rep->elements; i++)
        if (rep->element[i]->type == REDIS_REPLY_ERROR)
            return ms_errf(r->errstr, sizeof r->errstr, "redis %s: %.200s", what,
                           rep->element[i]->str);
    return 0;
}

/* Runs cmds (MULTI ... EXEC already included) and checks the EXEC reply. */
static int s_transaction(ms_registry *r, s_cmd *cmds, int ncmd, const char *what, int retry) {
    redisReply *replies[8] = {0};
    if (ncmd > (int)MS_ARRAY_LEN(replies)) abort(); /* programmer error */
    int rc = s_exchange(r, cmds, ncmd, replies, retry);
    for (int i = 0; i < ncmd; i++)
        s_cmd_fini(&cmds[i]);
    if (rc < 0) return -1;
    rc = s_check_exec(r, replies[ncmd - 1], what);
    for (int i = 0; i < ncmd; i++)
        freeReplyObject(replies[i]);
    return rc;
}

int ms_registry_register(ms_registry *self, const ms_actor_info *info) {
    if (s_validate(self, info) < 0) return -1;
    char key[S_KEY_MAX];
    s_actor_key(self, info->id, key);
    s_cmd cmds[6] = {0};
    s_cmd_str(&cmds[0], "MULTI");
    s_cmd_str(&cmds[1], "DEL");
    s_cmd_str(&cmds[1], key);
    s_cmd_str(&cmds[2], "HSET");
    s_cmd_str(&cmds[2], key);
    s_add_fields(&cmds[2], info, ms_registry_now_ms(), 0);
    s_cmd_str(&cmds[3], "PEXPIRE");
    s_cmd_str(&cmds[3], key);
    s_cmd_i64(&cmds[3], MS_REGISTRY_TTL_MS);
    s_cmd_str(&cmds[4], "SADD");
    s_cmd_str(&cmds[4], self->set_key);
    s_cmd_str(&cmds[4], info->id);
    s_cmd_str(&cmds[5], "EXEC");
    return s_transaction(self, cmds, 6, "register", 1);
}

int ms_registry_heartbeat(ms_registry *self, const ms_actor_info *info) {
    if (s_validate(self, info) < 0) return -1;
    char key[S_KEY_MAX];
    s_actor_key(self, info->id, key);
    s_cmd cmd = {0};
    s_cmd_str(&cmd, "EVAL");
    s_cmd_str(&cmd, S_HEARTBEAT_LUA);
    s_cmd_str(&cmd, "2");
    s_cmd_str(&cmd, key);
    s_cmd_str(&cmd, self->set_key);
    s_cmd_i64(&cmd, MS_REGISTRY_TTL_MS);
    s_cmd_str(&cmd, info->id);
    s_add_fields(&cmd, info, ms_registry_now_ms(), 1);
    redisReply *rep = NULL;
    int rc = s_command(self, &cmd, &rep, 1);
    s_cmd_fini(&cmd);
    if (rc < 0) return -1;
    int refreshed = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    if (rep->type == REDIS_REPLY_ERROR)
        rc = ms_errf(self->errstr, sizeof self->errstr, "redis heartbeat for %s: %.200s", info->id,
                     rep->str);
    else if (rep->type != REDIS_REPLY_INTEGER)
        rc = ms_errf(self->errstr, sizeof self->errstr,
                     "redis heartbeat for %s: unexpected reply type %d", info->id, rep->type);
    freeReplyObject(rep);
    if (rc < 0 || refreshed) return rc;
    ms_info("registry: actor %s missing from redis %s:%d, registering again", info->id, self->host,
            self->port);
    return ms_registry_register(self, info);
}

int ms_registry_set_state(ms_registry *self, ms_actor_info *info, ms_actor_state state) {
    info->state = state;
    return ms_registry_heartbeat(self, info);
}

int ms_registry_deregister(ms_registry *self, const char *id) {
    if (!id || s_check_id(id, strlen(id), MS_ACTOR_ID_MAX) < 0)
        return ms_errf(self->errstr, sizeof self->errstr, "registry: bad actor id '%.80s'",
                       id ? id : "(null)");
    char key[S_KEY_MAX];
    s_actor_key(self, id, key);
    s_cmd cmds[4] = {0};
    s_cmd_str(&cmds[0], "MULTI");
    s_cmd_str(&cmds[1], "DEL");
    s_cmd_str(&cmds[1], key);
    s_cmd_str(&cmds[2], "SREM");
    s_cmd_str(&cmds[2], self->set_key);
    s_cmd_str(&cmds[2], id);
    s_cmd_str(&cmds[3], "EXEC");
    return s_transaction(self, cmds, 4, "deregister", 1);
}

/* ---- reading ---------------------------------------------------------- */

/* Parses an HGETALL reply strictly into *out. Returns 0, or -1 with the
 * reason in why[]. id is the id from the set member (the key). */
static int s_parse_actor(const redisReply *rep, const char *id, ms_actor_info *out, char *why,
                         size_t why_size) {
    memset(out, 0, sizeof *out);
    if (rep->type != REDIS_REPLY_ARRAY)
        return ms_errf(why, why_size, "not a hash (%.100s)",
                       rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    if (rep->elements % 2 != 0) return ms_errf(why, why_size, "odd HGETALL reply");
    uint32_t seen = 0;
    for (size_t e = 0; e < rep->elements; e += 2) {
        const redisReply *k = rep->element[e], *v = rep->element[e + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            return ms_errf(why, why_size, "non-string field");
        int fi = -1;
        for (int i = 0; i < S_NFIELDS; i++)
            if (strlen(S_FIELDS[i].name) == k->len && memcmp(S_FIELDS[i].name, k->str, k->len) == 0)
                fi = i;
        if (fi < 0) continue; /* unknown field: a later version's, ignored */
        const s_field *f = &S_FIELDS[fi];
        if (seen & (1u << fi)) return ms_errf(why, why_size, "field %s twice", f->name);
        seen |= 1u << fi;
        char *p = (char *)out + f->offset;
        if (memchr(v->str, 0, v->len))
            return ms_errf(why, why_size, "field %s holds a NUL byte", f->name);
        switch (f->kind) {
        case F_ID:
        case F_STR: {
            int bad = f->kind == F_ID ? s_check_id(v->str, v->len, f->size)
                                      : s_check_printable(v->str, v->len, f->size);
            if (bad) return ms_errf(why, why_size, "field %s invalid or too long", f->name);
            memcpy(p, v->str, v->len);
            p[v->len] = 0;
            break;
        }
        case F_STAGES:
            if (v->len >= MS_STAGES_STR_MAX || ms_stages_parse(v->str, &out->stages, NULL, 0) < 0)
                return ms_errf(why, why_size, "bad stages '%.40s'", v->str);
            break;
        case F_STATE:
            if (ms_actor_state_parse(v->str, &out->state) < 0)
                return ms_errf(why, why_size, "bad state '%.40s'", v->str);
            break;
        case F_STAMP:
        case F_I64: {
            int64_t x;
            if (s_parse_i64(v->str, v->len, &x) < 0 || x < f->min)
                return ms_errf(why, why_size, "bad %s '%.40s'", f->name, v->str);
            memcpy(p, &x, sizeof x);
            break;
        }
        }
    }
    for (int i = 0; i < S_NFIELDS; i++)
        if (!(seen & (1u << i)))
            return ms_errf(why, why_size, "missing field %s", S_FIELDS[i].name);
    if (strcmp(out->id, id) != 0)
        return ms_errf(why, why_size, "id field '%s' does not match the key", out->id);
    return 0;
}

static int s_cmp_id(const void *a, const void *b) {
    return strcmp(((const ms_actor_info *)a)->id, ((const ms_actor_info *)b)->id);
}

/* Removes members from the actor set (best effort: a failure only delays pruning). */
static void s_prune(ms_registry *r, char **ids, int n) {
    if (n == 0) return;
    for (int i = 0; i < n;) {
        s_cmd cmd = {0};
        s_cmd_str(&cmd, "SREM");
        s_cmd_str(&cmd, r->set_key);
        for (; i < n && cmd.argc < S_MAX_ARGS; i++)
            s_cmd_str(&cmd, ids[i]);
        redisReply *rep = NULL;
        if (s_command(r, &cmd, &rep, 1) == 0) freeReplyObject(rep);
        s_cmd_fini(&cmd);
    }
}

int ms_registry_list(ms_registry *self, ms_actor_info **out, int *n) {
    *out = NULL;
    *n = 0;
    s_cmd cmd = {0};
    s_cmd_str(&cmd, "SMEMBERS");
    s_cmd_str(&cmd, self->set_key);
    redisReply *members = NULL;
    int rc = s_command(self, &cmd, &members, 1);
    s_cmd_fini(&cmd);
    if (rc < 0) return -1;
    if (members->type != REDIS_REPLY_ARRAY) {
        rc = ms_errf(self->errstr, sizeof self->errstr, "redis SMEMBERS %s: %.200s", self->set_key,
                     members->type == REDIS_REPLY_ERROR ? members->str : "not a set");
        freeReplyObject(members);
        return rc;
    }
    size_t total = members->elements;
    int cap = (int)MS_MIN(total, (size_t)MS_REGISTRY_LIST_MAX);
    if (total > (size_t)MS_REGISTRY_LIST_MAX) {
        char msg[MS_ERR_SIZE];
        snprintf(msg, sizeof msg, "%s has %zu members; listing only %d", self->set_key, total,
                 MS_REGISTRY_LIST_MAX);
        s_warn_once(self, msg);
    }

    /* Valid member ids, and the ones to prune (invalid names, expired hashes). */
    char **ids = ms_xcalloc((size_t)cap + 1, sizeof *ids);
    char **prune = ms_xcalloc((size_t)cap + 1, sizeof *prune);
    int nids = 0, nprune = 0;
    for (int i = 0; i < cap; i++) {
        const redisReply *m = members->element[i];
        if (m->type != REDIS_REPLY_STRING) continue;
        if (s_check_id(m->str, m->len, MS_ACTOR_ID_MAX) < 0) {
            char msg[MS_ERR_SIZE];
            snprintf(msg, sizeof msg, "pruning invalid member '%.60s' of %s", m->str,
                     self->set_key);
            s_warn_once(self, msg);
            prune[nprune++] = ms_xstrndup(m->str, m->len);
            continue;
        }
        ids[nids++] = ms_xstrndup(m->str, m->len);
    }
    freeReplyObject(members);

    s_cmd *cmds = ms_xcalloc((size_t)nids + 1, sizeof *cmds);
    redisReply **reps = ms_xcalloc((size_t)nids + 1, sizeof *reps);
    for (int i = 0; i < nids; i++) {
        char key[S_KEY_MAX];
        s_actor_key(self, ids[i], key);
        s_cmd_str(&cmds[i], "HGETALL");
        s_cmd_str(&cmds[i], key);
    }
    rc = nids ? s_exchange(self, cmds, nids, reps, 1) : 0;
    for (int i = 0; i < nids; i++)
        s_cmd_fini(&cmds[i]);
    free(cmds);

    ms_actor_info *list = NULL;
    int count = 0;
    if (rc == 0) {
        list = nids ? ms_xcalloc((size_t)nids, sizeof *list) : NULL;
        for (int i = 0; i < nids; i++) {
            const redisReply *rep = reps[i];
            if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 0) {
                prune[nprune++] = ids[i]; /* expired: hand the string to prune[] */
                ids[i] = NULL;
                continue;
            }
            char why[200];
            if (s_parse_actor(rep, ids[i], &list[count], why, sizeof why) < 0) {
                char msg[MS_ERR_SIZE];
                snprintf(msg, sizeof msg, "skipping bad entry %s:actor:%s: %s", self->prefix,
                         ids[i], why);
                s_warn_once(self, msg);
                continue;
            }
            count++;
        }
        for (int i = 0; i < nids; i++)
            freeReplyObject(reps[i]);
        s_prune(self, prune, nprune);
    }
    free(reps);
    for (int i = 0; i < nids; i++)
        free(ids[i]);
    for (int i = 0; i < nprune; i++)
        free(prune[i]);
    free(ids);
    free(prune);
    if (rc < 0) return -1;
    if (count == 0) {
        free(list);
        list = NULL;
    } else {
        qsort(list, (size_t)count, sizeof *list, s_cmp_id);
    }
    *out = list;
    *n = count;
    return 0;
}

int ms_registry_get(ms_registry *self, const char *id, ms_actor_info *out) {
    if (!id || s_check_id(id, strlen(id), MS_ACTOR_ID_MAX) < 0)
        return ms_errf(self->errstr, sizeof self->errstr, "registry: bad actor id '%.80s'",
                       id ? id : "(null)");
    char key[S_KEY_MAX];
    s_actor_key(self, id, key);
    s_cmd cmd = {0};
    s_cmd_str(&cmd, "HGETALL");
    s_cmd_str(&cmd, key);
    redisReply *rep = NULL;
    int rc = s_command(self, &cmd, &rep, 1);
    s_cmd_fini(&cmd);
    if (rc < 0) return -1;
    char why[200];
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 0) {
        rc = 1;
    } else if (s_parse_actor(rep, id, out, why, sizeof why) < 0) {
        char msg[MS_ERR_SIZE];
        snprintf(msg, sizeof msg, "skipping bad entry %s: %s", key, why);
        s_warn_once(self, msg);
        rc = 1;
    }
    freeReplyObject(rep);
    return rc;
}

/* ---- events ----------------------------------------------------------- */

static int s_events_key(ms_registry *r, const char *name, char key[S_KEY_MAX]) {
    if (!name || s_check_id(name, strlen(name), MS_ACTOR_ID_MAX) < 0)
        return ms_errf(r->errstr, sizeof r->errstr, "registry: bad event list name '%.80s'",
                       name ? name : "(null)");
    snprintf(key, S_KEY_MAX, "%s:events:%s", r->prefix, name);
    return 0;
}

int ms_registry_log_event(ms_registry *self, const char *name, const char *text) {
    char key[S_KEY_MAX];
    if (s_events_key(self, name, key) < 0) return -1;
    char line[S_NUM_MAX + 1 + MS_REGISTRY_EVENT_TEXT_MAX + 1];
    int len = snprintf(line, sizeof line, "%lld %.*s", (long long)ms_registry_now_ms(),
                       MS_REGISTRY_EVENT_TEXT_MAX, text ? text : "");
    s_cmd cmds[4] = {0};
    s_cmd_str(&cmds[0], "MULTI");
    s_cmd_str(&cmds[1], "LPUSH");
    s_cmd_str(&cmds[1], key);
    s_cmd_add(&cmds[1], line, (size_t)MS_MIN(len, (int)sizeof line - 1));
    s_cmd_str(&cmds[2], "LTRIM");
    s_cmd_str(&cmds[2], key);
    s_cmd_str(&cmds[2], "0");
    s_cmd_i64(&cmds[2], MS_REGISTRY_EVENTS_MAX - 1);
    s_cmd_str(&cmds[3], "EXEC");
    return s_transaction(self, cmds, 4, "log_event", 0); /* not idempotent: no resend */
}

int ms_registry_events(ms_registry *self, const char *name, int max, char ***lines, int *n) {
    *lines = NULL;
    *n = 0;
    char key[S_KEY_MAX];
    if (s_events_key(self, name, key) < 0) return -1;
    if (max <= 0) return 0;
    max = MS_MIN(max, MS_REGISTRY_EVENTS_MAX);
    s_cmd cmd = {0};
    s_cmd_str(&cmd, "LRANGE");
    s_cmd_str(&cmd, key);
    s_cmd_str(&cmd, "0");
    s_cmd_i64(&cmd, max - 1);
    redisReply *rep = NULL;
    int rc = s_command(self, &cmd, &rep, 1);
    s_cmd_fini(&cmd);
    if (rc < 0) return -1;
    if (rep->type != REDIS_REPLY_ARRAY) {
        rc = ms_errf(self->errstr, sizeof self->errstr, "redis LRANGE %s: %.200s", key,
                     rep->type == REDIS_REPLY_ERROR ? rep->str : "not a list");
        freeReplyObject(rep);
        return rc;
    }
    int count = (int)MS_MIN(rep->elements, (size_t)max);
    char **out = count ? ms_xcalloc((size_t)count, sizeof *out) : NULL;
    int k = 0;
    for (int i = 0; i < count; i++)
        if (rep->element[i]->type == REDIS_REPLY_STRING)
            out[k++] = ms_xstrndup(rep->element[i]->str, rep->element[i]->len);
    freeReplyObject(rep);
    if (k == 0) {
        free(out);
        out = NULL;
    }
    *lines = out;
    *n = k;
    return 0;
}

void ms_registry_events_free(char ***lines, int n) {
    if (!lines || !*lines) return;
    for (int i = 0; i < n; i++)
        free((*lines)[i]);
    free(*lines);
    *lines = NULL;
}
