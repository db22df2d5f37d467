/* frames.c — whole wire messages over czmq sockets (frames.h). */
#include "frames.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

void ms_frames_in_init(ms_frames_in *in) {
    memset(in, 0, sizeof *in);
}

static void s_free_payload(ms_frames_in *in) {
    for (size_t i = 0; i < in->n_payload; i++)
        zframe_destroy(&in->payload[i]);
    free(in->payload);
    in->payload = NULL;
    in->n_payload = 0;
}

void ms_frames_in_fini(ms_frames_in *in) {
    if (!in) return;
    zframe_destroy(&in->routing_id);
    ms_msg_fini(&in->msg);
    s_free_payload(in);
    ms_frames_in_init(in);
}

zframe_t *ms_frames_in_take(ms_frames_in *in, size_t i) {
    if (i >= in->n_payload) return NULL;
    zframe_t *f = in->payload[i];
    in->payload[i] = NULL;
    return f;
}

const uint8_t *ms_frames_in_data(const ms_frames_in *in, size_t i) {
    return (i < in->n_payload && in->payload[i]) ? zframe_data(in->payload[i]) : NULL;
}

size_t ms_frames_in_size(const ms_frames_in *in, size_t i) {
    return (i < in->n_payload && in->payload[i]) ? zframe_size(in->payload[i]) : 0;
}

/* A receive that returned no frame: why. */
static ms_wire_status s_recv_failed(int e, bool first, char *err, size_t err_size) {
    if (first && e == EAGAIN) {
        ms_errf(err, err_size, "no message before the receive timeout");
        return MS_WIRE_TIMEOUT;
    }
    if (e == EINTR || zsys_interrupted)
        ms_errf(err, err_size, "receive interrupted");
    else
        ms_errf(err, err_size, "receive failed: %s", zmq_strerror(e));
    return MS_WIRE_TRANSPORT;
}

ms_wire_status ms_frames_recv(zsock_t *sock, ms_frames_in *in, size_t max_bytes, char *err,
                              size_t err_size) {
    ms_frames_in_fini(in);
    if (!sock) {
        ms_errf(err, err_size, "no socket");
        return MS_WIRE_TRANSPORT;
    }
    size_t limit = max_bytes ? max_bytes : MS_FRAMES_DEFAULT_LIMIT;
    bool router = zsock_type(sock) == ZMQ_ROUTER;

    zframe_t *header = NULL;
    size_t cap = 0, n_frames = 0;
    bool over = false, more = true;
    char why[MS_ERR_SIZE] = "";
    while (more) {
        errno = 0;
        zframe_t *f = zframe_recv(sock);
        if (!f) {
            ms_wire_status st = s_recv_failed(errno, n_frames == 0, err, err_size);
            zframe_destroy(&header);
            ms_frames_in_fini(in);
            return st;
        }
        more = zframe_more(f);
        n_frames++;
        if (router && n_frames == 1) {
            in->routing_id = f;
            continue;
        }
        in->total_bytes += zframe_size(f);
        if (!over && in->total_bytes > limit) {
            snprintf(why, sizeof why, "message exceeds %zu bytes", limit);
            over = true;
        }
        if (over) {
            zframe_destroy(&f);
        } else if (!header) {
            header = f;
        } else if (in->n_payload >= MS_WIRE_MAX_PAYLOAD_FRAMES) {
            snprintf(why, sizeof why, "more than %d payload frames", MS_WIRE_MAX_PAYLOAD_FRAMES);
            over = true;
            zframe_destroy(&f);
        } else {
            if (in->n_payload == cap) {
                cap = cap ? 2 * cap : 4;
                in->payload = ms_xrealloc(in->payload, cap * sizeof *in->payload);
            }
            in->payload[in->n_payload++] = f;
        }
    }

    ms_wire_status st = MS_WIRE_OK;
    if (over) {
        ms_errf(err, err_size, "%s", why);
        st = MS_WIRE_MALFORMED;
    } else if (!header) {
        ms_errf(err, err_size, "message has no header frame");
        st = MS_WIRE_MALFORMED;
    } else if (ms_wire_decode(zframe_data(header), zframe_size(header), &in->msg, err, err_size) !=
               MS_WIRE_OK) {
        st = MS_WIRE_MALFORMED;
    } else {
        size_t sizes[MS_WIRE_MAX_PAYLOAD_FRAMES] = {0};
        for (size_t i = 0; i < in->n_payload; i++)
            sizes[i] = zframe_size(in->payload[i]);
        if (ms_wire_check_payload(&in->msg, sizes, in->n_payload, err, err_size) != 0)
            st = MS_WIRE_MALFORMED;
    }
    /* The peek is kept for every message, so a reply to a well-formed message
     * that is not allowed here can still be addressed to its id. */
    if (header) ms_wire_peek_header(zframe_data(header), zframe_size(header), &in->peek);
    if (st != MS_WIRE_OK) {
        ms_msg_fini(&in->msg);
        s_free_payload(in);
    }
    zframe_destroy(&header);
    return st;
}

static void s_destroy_frames(zframe_t **payload, size_t n) {
    for (size_t i = 0; payload && i < n; i++)
        zframe_destroy(&payload[i]);
}

int ms_frames_send(zsock_t *sock, zframe_t *routing_id, const ms_msg *m, zframe_t **payload,
                   size_t n, char *err, size_t err_size) {
    if (n > MS_WIRE_MAX_PAYLOAD_FRAMES) {
        s_destroy_frames(payload, n);
        return ms_errf(err, err_size, "%zu payload frames, limit %d", n,
                       MS_WIRE_MAX_PAYLOAD_FRAMES);
    }
    size_t sizes[MS_WIRE_MAX_PAYLOAD_FRAMES] = {0};
    for (size_t i = 0; i < n; i++) {
        if (!payload[i]) {
            s_destroy_frames(payload, n);
            return ms_errf(err, err_size, "payload frame %zu is NULL", i);
        }
        sizes[i] = zframe_size(payload[i]);
    }
    if (!sock || ms_wire_check_payload(m, sizes, n, err, err_size) != 0) {
        s_destroy_frames(payload, n);
        return sock ? -1 : ms_errf(err, err_size, "no socket");
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (ms_wire_encode(m, &sb, err, err_size) != 0) {
        msgpack_sbuffer_destroy(&sb);
        s_destroy_frames(payload, n);
        return -1;
    }
    zmsg_t *msg = zmsg_new();
    if (routing_id) zmsg_append(msg, &(zframe_t *){zframe_dup(routing_id)});
    zmsg_addmem(msg, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    for (size_t i = 0; i < n; i++)
        zmsg_append(msg, &payload[i]);
    errno = 0;
    int rc = zmsg_send(&msg, sock);
    int e = errno;
    zmsg_destroy(&msg);
    if (rc != 0)
        return ms_errf(err, err_size, "sending %s failed: %s", ms_msg_type_name(m->type),
                       zmq_strerror(e));
    return 0;
}

int ms_frames_send_bytes(zsock_t *sock, zframe_t *routing_id, const ms_msg *m,
                         const void *const *data, const size_t *len, size_t n, char *err,
                         size_t err_size) {
    if (n > MS_WIRE_MAX_PAYLOAD_FRAMES)
        return ms_errf(err, err_size, "%zu payload frames, limit %d", n,
                       MS_WIRE_MAX_PAYLOAD_FRAMES);
    zframe_t *frames[MS_WIRE_MAX_PAYLOAD_FRAMES];
    for (size_t i = 0; i < n; i++)
        frames[i] = zframe_new(data[i], len[i]);
    return ms_frames_send(sock, routing_id, m, frames, n, err, err_size);
}

int ms_frames_send_zc(zsock_t *sock, zframe_t *routing_id, const ms_msg *m, void *const *data,
                      const size_t *len, size_t n, ms_frames_release_fn *release, void *hint,
                      char *err, size_t err_size) {
    size_t done = 0; /* buffers handed to zmq (which then releases them) */
    int rc = -1;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    void *h = sock ? zsock_resolve(sock) : NULL;
    if (!h) {
        ms_errf(err, err_size, "no socket");
        goto out;
    }
    if (n > MS_WIRE_MAX_PAYLOAD_FRAMES) {
        ms_errf(err, err_size, "%zu payload frames, limit %d", n, MS_WIRE_MAX_PAYLOAD_FRAMES);
        goto out;
    }
    if (ms_wire_check_payload(m, len, n, err, err_size) != 0 ||
        ms_wire_encode(m, &sb, err, err_size) != 0)
        goto out;
    if (routing_id &&
        zmq_send(h, zframe_data(routing_id), zframe_size(routing_id), ZMQ_SNDMORE) < 0) {
        ms_errf(err, err_size, "sending %s failed: %s", ms_msg_type_name(m->type),
                zmq_strerror(errno));
        goto out;
    }
    if (zmq_send(h, sb.data, sb.size, n ? ZMQ_SNDMORE : 0) < 0) {
        ms_errf(err, err_size, "sending %s failed: %s", ms_msg_type_name(m->type),
                zmq_strerror(errno));
        goto out;
    }
    for (; done < n; done++) {
        zmq_msg_t msg;
        if (zmq_msg_init_data(&msg, data[done], len[done], release, hint) != 0) {
            ms_errf(err, err_size, "zmq_msg_init_data: %s", zmq_strerror(errno));
            goto out;
        }
        if (zmq_msg_send(&msg, h, done + 1 < n ? ZMQ_SNDMORE : 0) < 0) {
            int e = errno;
            zmq_msg_close(&msg); /* releases this buffer */
            done++;
            ms_errf(err, err_size, "sending payload frame %zu failed: %s", done - 1,
                    zmq_strerror(e));
            goto out;
        }
    }
    rc = 0;
out:
    for (size_t i = done; release && i < n; i++)
        release(data[i], hint);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* Copies s into out (cap bytes incl. NUL), cut at a UTF-8 character boundary. */
static void s_copy_utf8(char *out, size_t cap, const char *s) {
    size_t n = strlen(s);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(out, s, n);
    out[n] = 0;
}

int ms_frames_send_error(zsock_t *sock, zframe_t *routing_id, const char *id, ms_wire_code code,
                         const char *message, char *err, size_t err_size) {
    char text[MS_WIRE_MAX_ERROR_BYTES + 1];
    s_copy_utf8(text, sizeof text, message ? message : "");
    ms_msg m;
    ms_msg_init(&m, MS_MSG_ERROR);
    m.error.id = (char *)((id && strlen(id) <= MS_WIRE_MAX_ID_BYTES) ? id : "");
    m.error.code = (char *)ms_wire_code_name(code);
    m.error.message = text;
    return ms_frames_send(sock, routing_id, &m, NULL, 0, err, err_size);
}
