/* client.c — the producer client library (client.h). */
#include "client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frames.h"
#include "ms_common.h"

/* A request submitted and not yet ended. */
typedef struct s_req {
    char id[MS_WIRE_MAX_ID_BYTES + 1]; /* client request id */
    uint64_t next_index;               /* index the next Token must start at */
} s_req;

struct ms_client {
    zsock_t *sock; /* DEALER connected to the broker's front socket */
    s_req *reqs;   /* in-flight requests (n_reqs of cap_reqs) */
    size_t n_reqs, cap_reqs;
};

ms_client *ms_client_new(const char *endpoint, char *err, size_t err_size) {
    if (!endpoint || !*endpoint) {
        ms_errf(err, err_size, "no broker endpoint");
        return NULL;
    }
    zsock_t *sock = zsock_new(ZMQ_DEALER);
    if (!sock) {
        ms_errf(err, err_size, "cannot create a DEALER socket: %s", zmq_strerror(errno));
        return NULL;
    }
    zsock_set_linger(sock, 0);
    if (zsock_connect(sock, "%s", endpoint) != 0) {
        ms_errf(err, err_size, "cannot connect to '%s': %s", endpoint, zmq_strerror(errno));
        zsock_destroy(&sock);
        return NULL;
    }
    ms_client *c = ms_xcalloc(1, sizeof *c);
    c->sock = sock;
    return c;
}

void ms_client_destroy(ms_client **self_p) {
    if (!self_p || !*self_p) return;
    ms_client *c = *self_p;
    zsock_destroy(&c->sock);
    free(c->reqs);
    free(c);
    *self_p = NULL;
}

zsock_t *ms_client_sock(ms_client *c) {
    return c->sock;
}

size_t ms_client_inflight(const ms_client *c) {
    return c->n_reqs;
}

static s_req *s_find(ms_client *c, const char *id) {
    for (size_t i = 0; id && i < c->n_reqs; i++)
        if (strcmp(c->reqs[i].id, id) == 0) return &c->reqs[i];
    return NULL;
}

static void s_remove(ms_client *c, s_req *r) {
    size_t i = (size_t)(r - c->reqs);
    c->reqs[i] = c->reqs[--c->n_reqs];
}

int ms_client_submit(ms_client *c, const ms_msg_submit *s, const void *const *images,
                     const size_t *image_len, size_t n_images, char *err, size_t err_size) {
    if (!s->id || !*s->id) return ms_errf(err, err_size, "submit needs a request id");
    if (strlen(s->id) > MS_WIRE_MAX_ID_BYTES)
        return ms_errf(err, err_size, "request id is %zu bytes, limit %d", strlen(s->id),
                       MS_WIRE_MAX_ID_BYTES);
    if (s_find(c, s->id)) return ms_errf(err, err_size, "request '%s' is already in flight", s->id);
    if (c->n_reqs >= MS_CLIENT_MAX_INFLIGHT)
        return ms_errf(err, err_size, "%zu requests in flight, limit %d", c->n_reqs,
                       MS_CLIENT_MAX_INFLIGHT);
    if (n_images > MS_WIRE_MAX_IMAGES)
        return ms_errf(err, err_size, "%zu images, limit %d", n_images, MS_WIRE_MAX_IMAGES);
    ms_msg m;
    ms_msg_init(&m, MS_MSG_SUBMIT);
    m.submit = *s;
    m.submit.n_images = n_images;
    m.submit.has_n_images = n_images > 0;
    if (ms_frames_send_bytes(c->sock, NULL, &m, images, image_len, n_images, err, err_size) != 0)
        return -1;
    if (c->n_reqs == c->cap_reqs) {
        c->cap_reqs = c->cap_reqs ? 2 * c->cap_reqs : 8;
        c->reqs = ms_xrealloc(c->reqs, c->cap_reqs * sizeof *c->reqs);
    }
    s_req *r = &c->reqs[c->n_reqs++];
    snprintf(r->id, sizeof r->id, "%s", s->id);
    r->next_index = 0;
    return 0;
}

int ms_client_cancel(ms_client *c, const char *id, char *err, size_t err_size) {
    ms_msg m;
    ms_msg_init(&m, MS_MSG_CANCEL);
    m.cancel.id = (char *)(id ? id : "");
    return ms_frames_send(c->sock, NULL, &m, NULL, 0, err, err_size);
}

int ms_client_stats_request(ms_client *c, char *err, size_t err_size) {
    ms_msg m;
    ms_msg_init(&m, MS_MSG_STATS_REQUEST);
    return ms_frames_send(c->sock, NULL, &m, NULL, 0, err, err_size);
}

/* The request id an event carries (NULL for Stats). */
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

/* Checks an event against the stream state and updates it. 0 or -1 + err. */
static int s_track(ms_client *c, const ms_msg *m, char *err, size_t err_size) {
    if (m->type == MS_MSG_STATS) return 0;
    const char *id = s_event_id(m);
    s_req *r = s_find(c, id);
    if (!r) {
        if (m->type == MS_MSG_ERROR) return 0; /* e.g. an answer to a message without an id */
        return ms_errf(err, err_size, "%s for request '%s', which is not in flight",
                       ms_msg_type_name(m->type), id);
    }
    switch (m->type) {
    case MS_MSG_TOKEN:
        if (m->token.index != r->next_index)
            return ms_errf(err, err_size, "token index %llu for request '%s', expected %llu",
                           (unsigned long long)m->token.index, id,
                           (unsigned long long)r->next_index);
        r->next_index += m->token.n_ids;
        return 0;
    case MS_MSG_DONE:
    case MS_MSG_ERROR:
        s_remove(c, r);
        return 0;
    default:
        return 0;
    }
}

ms_wire_status ms_client_next(ms_client *c, int timeout_ms, ms_msg *out, char *err,
                              size_t err_size) {
    ms_msg_fini(out);
    zmq_pollitem_t item = {zsock_resolve(c->sock), 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&item, 1, timeout_ms < 0 ? -1 : (long)timeout_ms);
    if (rc < 0) {
        ms_errf(err, err_size, "poll failed: %s", zmq_strerror(errno));
        return MS_WIRE_TRANSPORT;
    }
    if (rc == 0) {
        ms_errf(err, err_size, "no event within %d ms", timeout_ms);
        return MS_WIRE_TIMEOUT;
    }
    ms_frames_in in;
    ms_frames_in_init(&in);
    ms_wire_status st = ms_frames_recv(c->sock, &in, 0, err, err_size);
    if (st != MS_WIRE_OK) {
        ms_frames_in_fini(&in);
        return st;
    }
    ms_msg_type t = in.msg.type;
    if (t != MS_MSG_ACCEPTED && t != MS_MSG_TOKEN && t != MS_MSG_DONE && t != MS_MSG_ERROR &&
        t != MS_MSG_STATS) {
        ms_errf(err, err_size, "unexpected message '%s' from the broker", ms_msg_type_name(t));
        ms_frames_in_fini(&in);
        return MS_WIRE_MALFORMED;
    }
    if (s_track(c, &in.msg, err, err_size) != 0) {
        ms_frames_in_fini(&in);
        return MS_WIRE_MALFORMED;
    }
    *out = in.msg; /* ownership moves to out */
    ms_msg_init(&in.msg, MS_MSG_NONE);
    ms_frames_in_fini(&in);
    return MS_WIRE_OK;
}

ms_wire_status ms_client_stream(ms_client *c, const char *id, int timeout_ms, ms_client_event_fn fn,
                                void *user, char *err, size_t err_size) {
    ms_msg ev;
    ms_msg_init(&ev, MS_MSG_NONE);
    for (;;) {
        ms_wire_status st = ms_client_next(c, timeout_ms, &ev, err, err_size);
        if (st != MS_WIRE_OK) return st;
        const char *evid = s_event_id(&ev);
        bool ended = (ev.type == MS_MSG_DONE || ev.type == MS_MSG_ERROR) && evid && id &&
                     strcmp(evid, id) == 0;
        int stop = fn ? fn(&ev, user) : 0;
        ms_msg_fini(&ev);
        if (ended || stop) return MS_WIRE_OK;
    }
}
