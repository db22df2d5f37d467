/* frames.h — sending and receiving whole wire messages over czmq sockets.
 *
 * A message on the wire is one zmq multipart message:
 *   [routing id]        only on ROUTER sockets (added / stripped by zmq's
 *                       ROUTER; no empty delimiter frame is used anywhere)
 *   frame 0             the msgpack header (wire.h)
 *   frames 1..n         payload frames, n = ms_wire_payload_frames(header)
 *
 * Receiving reads frame by frame and stops keeping data once a total-size
 * limit is passed (the rest of the message is drained and discarded), so a
 * peer cannot make the receiver hold more than the limit. Every message is
 * consumed whole, whatever its outcome, so the socket stays in step.
 *
 * Outcomes (ms_wire_status): OK; MALFORMED (bad header, wrong frame count or
 * size, over the limit: answer with an Error and keep serving; the routing
 * id and what could be peeked from the header are still returned);
 * TRANSPORT (zmq failure, context terminated, or interrupted: nothing
 * received); TIMEOUT (the socket's receive timeout passed: nothing received).
 */
#ifndef MS_FRAMES_H
#define MS_FRAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <czmq.h>

#include "wire.h"

/* Default total-size limit for ms_frames_recv (header + payloads): enough
 * for a full Submit (16 images of 16 MiB) plus its header. */
#define MS_FRAMES_DEFAULT_LIMIT                                                                    \
    ((size_t)MS_WIRE_MAX_IMAGES * MS_WIRE_MAX_IMAGE_BYTES + MS_WIRE_MAX_HEADER_BYTES)

/* A received message. Caller-owned storage: ms_frames_in_init / _fini. */
typedef struct ms_frames_in {
    zframe_t *routing_id; /* ROUTER sockets: the sender's routing id (owned), else NULL */
    ms_msg msg;           /* the decoded header (owned; valid when status OK) */
    zframe_t **payload;   /* n_payload payload frames (owned; OK only) */
    size_t n_payload;
    size_t total_bytes; /* bytes of header + payloads as received */
    ms_wire_peek peek;  /* what could be read of the header (always; the only source on MALFORMED) */
} ms_frames_in;

void ms_frames_in_init(ms_frames_in *in);
/* Frees the routing id, the message and the payload frames; re-inits. */
void ms_frames_in_fini(ms_frames_in *in);
/* Takes payload frame i out of `in` (the caller owns it; NULL if out of range
 * or already taken). */
zframe_t *ms_frames_in_take(ms_frames_in *in, size_t i);
/* Data / size of payload frame i (NULL / 0 if out of range or taken). */
const uint8_t *ms_frames_in_data(const ms_frames_in *in, size_t i);
size_t ms_frames_in_size(const ms_frames_in *in, size_t i);

/* Receives one whole message from sock (a ROUTER socket's first frame is
 * taken as the routing id). `in` is finalized first, then filled. max_bytes:
 * limit on header + payload bytes (0: MS_FRAMES_DEFAULT_LIMIT). Blocks until
 * a message arrives or the socket's receive timeout (zsock_set_rcvtimeo)
 * passes — poll first (zpoller) for non-blocking use. err gets the reason for
 * anything but OK. */
ms_wire_status ms_frames_recv(zsock_t *sock, ms_frames_in *in, size_t max_bytes, char *err,
                              size_t err_size);

/* Sends m followed by its payload frames. routing_id: required on ROUTER
 * sockets (not consumed; a copy is sent), NULL otherwise. payload: n frames,
 * ownership taken (destroyed on success and on failure; entries set to NULL).
 * Checks the frame count and sizes (ms_wire_check_payload) and encodes
 * (ms_wire_encode) before anything is sent. 0, or -1 + err (encode or check
 * failure, or a zmq send error such as EHOSTUNREACH on a ROUTER with
 * ZMQ_ROUTER_MANDATORY). */
int ms_frames_send(zsock_t *sock, zframe_t *routing_id, const ms_msg *m, zframe_t **payload,
                   size_t n, char *err, size_t err_size);
/* Same with payloads given as byte ranges (copied): data[i] of len[i] bytes. */
int ms_frames_send_bytes(zsock_t *sock, zframe_t *routing_id, const ms_msg *m,
                         const void *const *data, const size_t *len, size_t n, char *err,
                         size_t err_size);

/* Zero-copy variant for large payloads (features, KV blobs): data[i] is
 * not copied; zmq reads it while sending and then calls release(data[i],
 * hint) exactly once per buffer — possibly from a zmq I/O thread, possibly
 * after this call returns (also on failure, for every buffer). release NULL:
 * the buffers must outlive the socket. A failure after the first frame went
 * out leaves a partial message on the socket: close the socket then. */
typedef void(ms_frames_release_fn)(void *data, void *hint);
int ms_frames_send_zc(zsock_t *sock, zframe_t *routing_id, const ms_msg *m, void *const *data,
                      const size_t *len, size_t n, ms_frames_release_fn *release, void *hint,
                      char *err, size_t err_size);

/* Answers a producer with Error{id, code, message} (a convenience for the
 * broker's front socket). 0 or -1 + err. */
int ms_frames_send_error(zsock_t *sock, zframe_t *routing_id, const char *id, ms_wire_code code,
                         const char *message, char *err, size_t err_size);

#endif
