/* link.c — the gateway's broker connection (link.h). */
#include "link.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "ms_common.h"

#define S_BUCKETS          1024 /* request table hash buckets */
#define S_ENDPOINT_MAX     256  /* bytes of the broker endpoint (+ NUL) */
#define S_MSG_MAX          (MS_ERR_SIZE + 2 * S_ENDPOINT_MAX) /* an error message made here */
#define S_RESTART_SLACK_MS 1000.0 /* uptime going back by more than this: a new broker */

struct ms_gw_req {
    ms_gw_link *link;
    char id[MS_WIRE_MAX_ID_BYTES + 1]; /* Submit id */
    int refs;                          /* references (caller, table, queues); under link->mu */
    /* until sent: owned by the submit queue, then by the link thread alone */
    ms_msg msg;                          /* the Submit */
    uint8_t *images[MS_WIRE_MAX_IMAGES]; /* image files */
    size_t lens[MS_WIRE_MAX_IMAGES];
    uint32_t n_images;
    /* state, under link->mu */
    int64_t t_submit_ns; /* submit time */
    int64_t t_prev_ns;   /* last Token event's arrival (0: none yet) */
    bool in_table;       /* the link tracks it (until its end) */
    bool accepted;       /* Accepted seen */
    bool news;           /* something the waiter has not taken yet */
    bool ended;          /* final is set */
    bool end_taken;      /* the waiter got the end */
    bool cancel_asked;   /* ms_gw_req_cancel was called */
    bool sent;           /* the Submit went out (a Cancel makes sense) */
    char *text;          /* text not yet taken (text_len of text_cap) */
    size_t text_len, text_cap;
    uint32_t tokens;      /* tokens not yet taken */
    ms_msg final;         /* Done / Error */
    pthread_cond_t cond;  /* signalled on news */
    ms_gw_req *next_hash; /* table chain */
    ms_gw_req *next_q;    /* submit / cancel queue */
};

struct ms_gw_link {
    pthread_mutex_t mu;
    pthread_t thread;
    atomic_bool stop;
    int wake[2]; /* pipe: [0] polled by the link thread */
    char endpoint[S_ENDPOINT_MAX];
    ms_client *client; /* link thread only */
    ms_gw_event_fn fn;
    void *user;
    /* queues, under mu */
    ms_gw_req *sub_head, *sub_tail; /* submits to send (each holds a reference) */
    ms_gw_req *retry_head;          /* link thread only: submits the socket refused (not
                                       connected yet), retried until MS_GW_CONNECT_GRACE_MS */
    ms_gw_req *can_head;            /* cancels to send (each holds a reference) */
    int stats_wanted;               /* stats requests to send */
    /* table of requests in flight, under mu */
    ms_gw_req *table[S_BUCKETS];
    int live;    /* requests in the table */
    int running; /* of which have a token */
    /* stats, under mu */
    pthread_cond_t stats_cond;
    uint64_t stats_seq;      /* Stats answers received */
    ms_msg_stats last_stats; /* numbers of the newest (id NULL) */
    /* link thread only */
    int64_t probe_sent_ns; /* an unanswered probe went out then (0: none) */
    int64_t last_probe_ns;
};

static size_t s_bucket(const char *id) {
    return (size_t)(ms_hash64(id, strlen(id)) % S_BUCKETS);
}

static void s_wake(ms_gw_link *l) {
    ssize_t n = write(l->wake[1], "x", 1);
    (void)n; /* a full pipe already means "wake up" */
}

/* ---- requests ----------------------------------------------------------------------- */
static void s_req_free(ms_gw_req *r) {
    ms_msg_fini(&r->msg);
    for (uint32_t i = 0; i < r->n_images; i++)
        free(r->images[i]);
    free(r->text);
    ms_msg_fini(&r->final);
    pthread_cond_destroy(&r->cond);
    free(r);
}

/* Lock held. */
static void s_unref(ms_gw_req *r) {
    if (--r->refs == 0) s_req_free(r);
}

void ms_gw_req_release(ms_gw_req **r_p) {
    if (!r_p || !*r_p) return;
    ms_gw_link *l = (*r_p)->link;
    pthread_mutex_lock(&l->mu);
    s_unref(*r_p);
    pthread_mutex_unlock(&l->mu);
    *r_p = NULL;
}

const char *ms_gw_req_id(const ms_gw_req *r) {
    return r->id;
}

/* Lock held. */
static void s_table_add(ms_gw_link *l, ms_gw_req *r) {
    size_t b = s_bucket(r->id);
    r->next_hash = l->table[b];
    l->table[b] = r;
    r->in_table = true;
    r->refs++;
    l->live++;
}

/* Lock held. Drops the table's reference. */
static void s_table_remove(ms_gw_link *l, ms_gw_req *r) {
    if (!r->in_table) return;
    for (ms_gw_req **p = &l->table[s_bucket(r->id)]; *p; p = &(*p)->next_hash)
        if (*p == r) {
            *p = r->next_hash;
            break;
        }
    r->in_table = false;
    l->live--;
    if (r->t_prev_ns) l->running--;
    s_unref(r);
}

/* Lock held. */
static ms_gw_req *s_table_find(ms_gw_link *l, const char *id) {
    if (!id) return NULL;
    for (ms_gw_req *r = l->table[s_bucket(id)]; r; r = r->next_hash)
        if (strcmp(r->id, id) == 0) return r;
    return NULL;
}

static void s_info(const ms_gw_req *r, ms_gw_req_info *info) {
    info->id = r->id;
    info->t_submit_ns = r->t_submit_ns;
    info->t_prev_ns = r->t_prev_ns;
    info->n_images = r->n_images;
}

/* Lock held: r ends with *ev (moved in); it leaves the table. */
static void s_end(ms_gw_link *l, ms_gw_req *r, ms_msg *ev, int64_t now) {
    if (r->ended) {
        ms_msg_fini(ev);
        return;
    }
    if (l->fn) {
        ms_gw_req_info info;
        s_info(r, &info);
        l->fn(l->user, &info, ev, now);
    }
    r->final = *ev;
    ms_msg_init(ev, MS_MSG_NONE);
    r->ended = true;
    r->news = true;
    pthread_cond_broadcast(&r->cond);
    s_table_remove(l, r);
}

/* Lock held: r fails here with an Error of `code`. */
static void s_fail(ms_gw_link *l, ms_gw_req *r, ms_wire_code code, const char *message) {
    ms_msg ev;
    ms_msg_init(&ev, MS_MSG_ERROR);
    ev.error.id = ms_xstrdup(r->id);
    ev.error.code = ms_xstrdup(ms_wire_code_name(code));
    ev.error.message = ms_xstrdup(message);
    s_end(l, r, &ev, ms_now_ns());
}

ms_gw_req *ms_gw_link_submit(ms_gw_link *l, ms_msg *msg, uint8_t **images, const size_t *lens,
                             uint32_t n_images) {
    ms_gw_req *r = ms_xcalloc(1, sizeof *r);
    r->link = l;
    pthread_cond_init(&r->cond, NULL);
    snprintf(r->id, sizeof r->id, "%s", msg->submit.id ? msg->submit.id : "");
    r->msg = *msg;
    ms_msg_init(msg, MS_MSG_NONE);
    r->n_images = MS_MIN(n_images, (uint32_t)MS_WIRE_MAX_IMAGES);
    for (uint32_t i = 0; i < r->n_images; i++) {
        r->images[i] = images[i];
        r->lens[i] = lens[i];
        images[i] = NULL;
    }
    r->t_submit_ns = ms_now_ns();
    r->refs = 2; /* caller + submit queue */
    pthread_mutex_lock(&l->mu);
    s_table_add(l, r); /* tracked from now on: its end can come from any path */
    if (l->sub_tail)
        l->sub_tail->next_q = r;
    else
        l->sub_head = r;
    l->sub_tail = r;
    pthread_mutex_unlock(&l->mu);
    s_wake(l);
    return r;
}

void ms_gw_req_cancel(ms_gw_req *r) {
    ms_gw_link *l = r->link;
    pthread_mutex_lock(&l->mu);
    bool queue = !r->ended && !r->cancel_asked;
    if (queue) {
        r->cancel_asked = true;
        r->refs++;
        r->next_q = l->can_head;
        l->can_head = r;
    }
    pthread_mutex_unlock(&l->mu);
    if (queue) s_wake(l);
}

int ms_gw_req_wait(ms_gw_req *r, int timeout_ms, ms_gw_update *u) {
    memset(u, 0, sizeof *u);
    ms_msg_init(&u->final, MS_MSG_NONE);
    ms_gw_link *l = r->link;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    int64_t ns = until.tv_nsec + (int64_t)MS_MAX(timeout_ms, 0) * 1000000;
    until.tv_sec += (time_t)(ns / 1000000000);
    until.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&l->mu);
    while (!r->news && !r->end_taken) {
        if (pthread_cond_timedwait(&r->cond, &l->mu, &until) == ETIMEDOUT) break;
    }
    int got = 0;
    if (r->news && !r->end_taken) {
        got = 1;
        u->accepted = r->accepted;
        u->tokens = r->tokens;
        r->tokens = 0;
        if (r->text_len) {
            u->text = r->text;
            u->len = r->text_len;
            r->text = NULL;
            r->text_len = r->text_cap = 0;
        }
        if (r->ended) {
            u->ended = true;
            u->final = r->final;
            ms_msg_init(&r->final, MS_MSG_NONE);
            r->end_taken = true;
        }
        r->news = false;
    }
    pthread_mutex_unlock(&l->mu);
    return got;
}

/* ---- stats -------------------------------------------------------------------------- */
int ms_gw_link_stats(ms_gw_link *l, int timeout_ms, ms_msg_stats *out, char *err, size_t err_size) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    int64_t ns = until.tv_nsec + (int64_t)MS_MAX(timeout_ms, 0) * 1000000;
    until.tv_sec += (time_t)(ns / 1000000000);
    until.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&l->mu);
    uint64_t seq = l->stats_seq;
    l->stats_wanted++;
    pthread_mutex_unlock(&l->mu);
    s_wake(l);
    pthread_mutex_lock(&l->mu);
    /* a Stats that answers an earlier request may arrive first: wait for the
     * answers to every request sent before ours, plus ours */
    uint64_t want = seq + 1;
    while (l->stats_seq < want) {
        if (pthread_cond_timedwait(&l->stats_cond, &l->mu, &until) == ETIMEDOUT) break;
    }
    int rc = l->stats_seq >= want ? 0 : -1;
    if (rc == 0) {
        *out = l->last_stats;
        out->id = NULL;
    }
    pthread_mutex_unlock(&l->mu);
    if (rc != 0)
        ms_errf(err, err_size, "the broker at %s did not answer within %d ms", l->endpoint,
                timeout_ms);
    return rc;
}

void ms_gw_link_counts(ms_gw_link *l, int *waiting, int *running) {
    pthread_mutex_lock(&l->mu);
    if (waiting) *waiting = l->live - l->running;
    if (running) *running = l->running;
    pthread_mutex_unlock(&l->mu);
}

/* ---- the link thread ------------------------------------------------------------------ */
/* A fresh client socket: sends fail at once (not block) when the broker is
 * not connected or its queue is full. */
static ms_client *s_client_new(const char *endpoint, char *err, size_t err_size) {
    ms_client *c = ms_client_new(endpoint, err, err_size);
    if (!c) return NULL;
    zsock_t *s = ms_client_sock(c);
    zsock_set_sndtimeo(s, 0);
    /* ZMQ_IMMEDIATE only applies to connections made after it is set: the
     * client connected already, so connect again with it */
    zsock_set_immediate(s, 1);
    if (zsock_disconnect(s, "%s", endpoint) != 0 || zsock_connect(s, "%s", endpoint) != 0) {
        ms_errf(err, err_size, "cannot reconnect to '%s': %s", endpoint, zmq_strerror(errno));
        ms_client_destroy(&c);
        return NULL;
    }
    return c;
}

/* Every request in flight fails with `message`; the client socket is
 * replaced (what the broker still holds for it is lost with the old one). */
static void s_fail_all(ms_gw_link *l, const char *message) {
    pthread_mutex_lock(&l->mu);
    for (size_t b = 0; b < S_BUCKETS; b++)
        while (l->table[b]) {
            ms_gw_req *r = l->table[b];
            if (r->sent && !r->cancel_asked && l->client) {
                char err[MS_ERR_SIZE];
                ms_client_cancel(l->client, r->id, err, sizeof err);
            }
            s_fail(l, r, MS_CODE_UNAVAILABLE, message);
        }
    pthread_mutex_unlock(&l->mu);
}

static void s_reconnect(ms_gw_link *l) {
    char err[MS_ERR_SIZE];
    ms_client *c = s_client_new(l->endpoint, err, sizeof err);
    if (!c) {
        ms_error("gateway: cannot reconnect to the broker: %s", err);
        return;
    }
    ms_client_destroy(&l->client);
    l->client = c;
}

static void s_send_submits(ms_gw_link *l) {
    pthread_mutex_lock(&l->mu);
    ms_gw_req *q = l->sub_head;
    l->sub_head = l->sub_tail = NULL;
    pthread_mutex_unlock(&l->mu);
    if (l->retry_head) { /* the refused ones first, in order */
        ms_gw_req *last = l->retry_head;
        while (last->next_q)
            last = last->next_q;
        last->next_q = q;
        q = l->retry_head;
        l->retry_head = NULL;
    }
    ms_gw_req **retry_tail = &l->retry_head;
    int64_t now = ms_now_ns();
    while (q) {
        ms_gw_req *r = q;
        q = r->next_q;
        r->next_q = NULL;
        char err[MS_ERR_SIZE] = "";
        int rc = -1;
        pthread_mutex_lock(&l->mu);
        if (r->cancel_asked && !r->ended) /* the client left before it could be sent */
            s_fail(l, r, MS_CODE_CANCELLED, "cancelled before it reached the broker");
        bool skip = r->ended; /* failed meanwhile (cancelled, link stopping) */
        pthread_mutex_unlock(&l->mu);
        if (!skip) {
            if (ms_client_inflight(l->client) >= MS_CLIENT_MAX_INFLIGHT) s_reconnect(l);
            rc = ms_client_submit(l->client, &r->msg.submit, (const void *const *)r->images,
                                  r->lens, r->n_images, err, sizeof err);
            if (rc != 0 && !atomic_load(&l->stop) &&
                now - r->t_submit_ns < (int64_t)MS_GW_CONNECT_GRACE_MS * 1000000) {
                *retry_tail = r; /* not connected (yet): keep it and its payload, retry soon */
                retry_tail = &r->next_q;
                continue;
            }
        }
        /* the payload is on the socket (copied) or lost: free it now */
        ms_msg_fini(&r->msg);
        for (uint32_t i = 0; i < r->n_images; i++) {
            free(r->images[i]);
            r->images[i] = NULL;
        }
        pthread_mutex_lock(&l->mu);
        if (rc == 0) {
            r->sent = true;
        } else if (!skip) {
            char msg[S_MSG_MAX];
            snprintf(msg, sizeof msg,
                     "cannot send the request to the broker at %s (not connected?): %s",
                     l->endpoint, err);
            s_fail(l, r, MS_CODE_UNAVAILABLE, msg);
        }
        s_unref(r); /* the queue's reference */
        pthread_mutex_unlock(&l->mu);
    }
}

static void s_send_cancels(ms_gw_link *l) {
    pthread_mutex_lock(&l->mu);
    ms_gw_req *q = l->can_head;
    l->can_head = NULL;
    int stats = l->stats_wanted;
    l->stats_wanted = 0;
    while (q) {
        ms_gw_req *r = q;
        q = r->next_q;
        r->next_q = NULL;
        if (!r->ended && r->sent) {
            char err[MS_ERR_SIZE];
            if (ms_client_cancel(l->client, r->id, err, sizeof err) != 0)
                ms_warn("gateway: cancel of %s not sent: %s", r->id, err);
            else
                ms_debug("gateway: cancel %s sent", r->id);
        }
        s_unref(r);
    }
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < stats; i++) {
        char err[MS_ERR_SIZE];
        if (ms_client_stats_request(l->client, err, sizeof err) != 0) {
            ms_debug("gateway: stats request not sent: %s", err);
            break;
        }
        if (!l->probe_sent_ns) l->probe_sent_ns = ms_now_ns();
    }
}

/* Lock held: a Token of r. */
static void s_on_token(ms_gw_link *l, ms_gw_req *r, const ms_msg *ev, int64_t now) {
    if (l->fn) {
        ms_gw_req_info info;
        s_info(r, &info);
        l->fn(l->user, &info, ev, now);
    }
    if (!r->t_prev_ns) l->running++;
    r->t_prev_ns = now;
    r->accepted = true;
    size_t n = strlen(ev->token.text);
    if (n) {
        if (r->text_len + n + 1 > r->text_cap) {
            r->text_cap = MS_MAX(2 * r->text_cap, r->text_len + n + 1);
            r->text = ms_xrealloc(r->text, r->text_cap);
        }
        memcpy(r->text + r->text_len, ev->token.text, n + 1);
        r->text_len += n;
    }
    r->tokens += ev->token.n_ids;
    r->news = true;
    pthread_cond_broadcast(&r->cond);
}

static const char *s_event_id(const ms_msg *m) {
    switch (m->type) {
    case MS_MSG_ACCEPTED:
        return m->accepted.id;
    case MS_MSG_TOKEN:
        return m->token.id;
    case MS_MSG_DONE:
        return m->done.id;
    case MS_MSG_ERROR:
        return m->error.id;
    default:
        return NULL;
    }
}

/* Lock held. The broker's uptime went back: a new broker process answers at
 * the endpoint, and requests sent to the old one will never end there. */
static void s_broker_restarted(ms_gw_link *l, double uptime_ms, int64_t now) {
    int64_t started = now - (int64_t)(uptime_ms * 1e6);
    int n = 0;
    for (size_t b = 0; b < S_BUCKETS; b++) {
        ms_gw_req *r = l->table[b];
        while (r) {
            ms_gw_req *next = r->next_hash;
            if (r->sent && r->t_submit_ns < started) {
                s_fail(l, r, MS_CODE_UNAVAILABLE, "the broker restarted while serving the request");
                n++;
            }
            r = next;
        }
    }
    ms_warn("gateway: the broker at %s restarted: %d requests failed", l->endpoint, n);
}

static void s_on_event(ms_gw_link *l, ms_msg *ev) {
    int64_t now = ms_now_ns();
    pthread_mutex_lock(&l->mu);
    l->probe_sent_ns = 0; /* the broker is alive */
    if (ev->type == MS_MSG_STATS) {
        if (l->stats_seq > 0 && ev->stats.uptime_ms + S_RESTART_SLACK_MS < l->last_stats.uptime_ms)
            s_broker_restarted(l, ev->stats.uptime_ms, now);
        l->last_stats = ev->stats;
        l->last_stats.id = NULL;
        l->stats_seq++;
        pthread_cond_broadcast(&l->stats_cond);
        pthread_mutex_unlock(&l->mu);
        return;
    }
    ms_gw_req *r = s_table_find(l, s_event_id(ev));
    if (!r) {
        if (ev->type == MS_MSG_ERROR && (!ev->error.id || !*ev->error.id))
            ms_warn("gateway: broker error without a request id: %s: %s", ev->error.code,
                    ev->error.message);
        pthread_mutex_unlock(&l->mu);
        return; /* a request the link gave up on */
    }
    switch (ev->type) {
    case MS_MSG_ACCEPTED:
        r->accepted = true;
        r->news = true;
        if (l->fn) {
            ms_gw_req_info info;
            s_info(r, &info);
            l->fn(l->user, &info, ev, now);
        }
        pthread_cond_broadcast(&r->cond);
        break;
    case MS_MSG_TOKEN:
        s_on_token(l, r, ev, now);
        break;
    case MS_MSG_DONE:
    case MS_MSG_ERROR:
        s_end(l, r, ev, now);
        break;
    default:
        break;
    }
    pthread_mutex_unlock(&l->mu);
}

static void s_read_events(ms_gw_link *l) {
    ms_msg ev;
    ms_msg_init(&ev, MS_MSG_NONE);
    for (int i = 0; i < 4096; i++) { /* bounded: let the queues be served too */
        char err[MS_ERR_SIZE];
        ms_wire_status st = ms_client_next(l->client, 0, &ev, err, sizeof err);
        if (st == MS_WIRE_TIMEOUT) break;
        if (st == MS_WIRE_MALFORMED) {
            ms_warn("gateway: bad message from the broker: %s", err);
            continue;
        }
        if (st != MS_WIRE_OK) {
            if (!atomic_load(&l->stop)) ms_warn("gateway: broker socket: %s", err);
            break;
        }
        s_on_event(l, &ev);
        ms_msg_fini(&ev);
    }
    ms_msg_fini(&ev);
}

/* Accept timeouts, stats probes, broker death, stale client state. */
static void s_housekeeping(ms_gw_link *l) {
    int64_t now = ms_now_ns();
    pthread_mutex_lock(&l->mu);
    for (size_t b = 0; b < S_BUCKETS; b++) {
        ms_gw_req *r = l->table[b];
        while (r) {
            ms_gw_req *next = r->next_hash;
            if (r->sent && !r->accepted &&
                now - r->t_submit_ns > (int64_t)MS_GW_ACCEPT_TIMEOUT_MS * 1000000) {
                char err[MS_ERR_SIZE], msg[S_MSG_MAX];
                ms_client_cancel(l->client, r->id, err, sizeof err);
                snprintf(msg, sizeof msg,
                         "the broker at %s did not accept the request within %d ms", l->endpoint,
                         MS_GW_ACCEPT_TIMEOUT_MS);
                s_fail(l, r, MS_CODE_UNAVAILABLE, msg);
            }
            r = next;
        }
    }
    int live = l->live;
    pthread_mutex_unlock(&l->mu);
    if (live > 0 && now - l->last_probe_ns > (int64_t)MS_GW_PROBE_MS * 1000000) {
        char err[MS_ERR_SIZE];
        l->last_probe_ns = now;
        if (ms_client_stats_request(l->client, err, sizeof err) == 0 && !l->probe_sent_ns)
            l->probe_sent_ns = now;
    }
    if (live > 0 && l->probe_sent_ns &&
        now - l->probe_sent_ns > (int64_t)MS_GW_BROKER_DEAD_MS * 1000000) {
        char msg[S_MSG_MAX];
        snprintf(msg, sizeof msg, "lost contact with the broker at %s (no answer for %d ms)",
                 l->endpoint, MS_GW_BROKER_DEAD_MS);
        ms_warn("gateway: %s: failing %d requests", msg, live);
        s_fail_all(l, msg);
        s_reconnect(l);
        l->probe_sent_ns = 0;
    } else if (live == 0 && ms_client_inflight(l->client) > 0 && l->probe_sent_ns &&
               now - l->probe_sent_ns > (int64_t)MS_GW_BROKER_DEAD_MS * 1000000) {
        s_reconnect(l); /* ids the link gave up on and the broker never ended */
        l->probe_sent_ns = 0;
    }
    if (live == 0 && !l->probe_sent_ns && ms_client_inflight(l->client) > 0 &&
        now - l->last_probe_ns > (int64_t)MS_GW_PROBE_MS * 1000000) {
        char err[MS_ERR_SIZE];
        l->last_probe_ns = now;
        if (ms_client_stats_request(l->client, err, sizeof err) == 0) l->probe_sent_ns = now;
    }
}

static void *s_thread(void *arg) {
    ms_gw_link *l = arg;
    while (!atomic_load(&l->stop)) {
        zmq_pollitem_t items[2] = {{zsock_resolve(ms_client_sock(l->client)), 0, ZMQ_POLLIN, 0},
                                   {NULL, l->wake[0], ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, 2, MS_GW_POLL_MS);
        if (rc < 0 && errno != EINTR) {
            ms_error("gateway: poll failed: %s", zmq_strerror(errno));
            struct timespec ts = {0, MS_GW_POLL_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (rc > 0 && (items[1].revents & ZMQ_POLLIN)) {
            char buf[256];
            while (read(l->wake[0], buf, sizeof buf) > 0) {
            }
        }
        s_send_submits(l);
        s_send_cancels(l);
        s_read_events(l);
        s_housekeeping(l);
    }
    return NULL;
}

ms_gw_link *ms_gw_link_new(const char *endpoint, ms_gw_event_fn fn, void *user, char *err,
                           size_t err_size) {
    if (!endpoint || strlen(endpoint) >= S_ENDPOINT_MAX) {
        ms_errf(err, err_size, "bad broker endpoint");
        return NULL;
    }
    ms_gw_link *l = ms_xcalloc(1, sizeof *l);
    snprintf(l->endpoint, sizeof l->endpoint, "%s", endpoint);
    l->fn = fn;
    l->user = user;
    l->wake[0] = l->wake[1] = -1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->stats_cond, NULL);
    atomic_init(&l->stop, false);
    l->client = s_client_new(endpoint, err, err_size);
    if (!l->client) goto fail;
    if (pipe(l->wake) != 0) {
        ms_errf(err, err_size, "pipe: %s", strerror(errno));
        goto fail;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(l->wake[i], F_SETFL, fcntl(l->wake[i], F_GETFL) | O_NONBLOCK);
        fcntl(l->wake[i], F_SETFD, FD_CLOEXEC);
    }
    if (pthread_create(&l->thread, NULL, s_thread, l) != 0) {
        ms_errf(err, err_size, "cannot start the link thread");
        goto fail;
    }
    return l;
fail:
    ms_client_destroy(&l->client);
    for (int i = 0; i < 2; i++)
        if (l->wake[i] >= 0) close(l->wake[i]);
    pthread_cond_destroy(&l->stats_cond);
    pthread_mutex_destroy(&l->mu);
    free(l);
    return NULL;
}

void ms_gw_link_destroy(ms_gw_link **self_p) {
    if (!self_p || !*self_p) return;
    ms_gw_link *l = *self_p;
    atomic_store(&l->stop, true);
    s_wake(l);
    pthread_join(l->thread, NULL);
    s_fail_all(l, "the gateway is shutting down");
    s_send_submits(l); /* sends nothing now (all ended): frees the queued payloads */
    pthread_mutex_lock(&l->mu);
    while (l->can_head) {
        ms_gw_req *r = l->can_head;
        l->can_head = r->next_q;
        s_unref(r);
    }
    pthread_mutex_unlock(&l->mu);
    ms_client_destroy(&l->client);
    close(l->wake[0]);
    close(l->wake[1]);
    pthread_cond_destroy(&l->stats_cond);
    pthread_mutex_destroy(&l->mu);
    free(l);
    *self_p = NULL;
}
