/* client.h — the producer client library: submit requests to a modserve
 * broker and stream their answers (docs/protocol.md is the protocol).
 *
 *   ms_client *c = ms_client_new("tcp://127.0.0.1:5555", err, sizeof err);
 *   ms_msg req; ms_msg_init(&req, MS_MSG_SUBMIT);
 *   req.submit.id = "r1"; req.submit.prompt = "<image>What is this?";
 *   ms_client_submit(c, &req.submit, &jpeg, &jpeg_len, 1, err, sizeof err);
 *   ms_client_stream(c, "r1", 30000, on_event, user, err, sizeof err);
 *   ms_client_destroy(&c);
 *
 * One client is one DEALER socket; it is not thread-safe (one thread at a
 * time). Several requests may be in flight at once; events of all of them
 * arrive interleaved and carry their id. The client checks the stream: for
 * every id it submitted, Token indices must arrive exactly once and in
 * order, and nothing may follow its Done/Error.
 */
#ifndef MS_CLIENT_H
#define MS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <czmq.h>

#include "wire.h"

#define MS_CLIENT_MAX_INFLIGHT 4096 /* requests one client tracks at once */

typedef struct ms_client ms_client;

/* Connects to a broker's front endpoint ("tcp://127.0.0.1:5555"). Connecting
 * is asynchronous (zmq): a broker that is not up yet is not an error here.
 * NULL + err on a bad endpoint. */
ms_client *ms_client_new(const char *endpoint, char *err, size_t err_size);
void ms_client_destroy(ms_client **self_p);

/* The client's socket, for a zpoller (read it only with ms_client_next). */
zsock_t *ms_client_sock(ms_client *c);

/* Sends a Submit: s as given (s->id required, not already in flight on this
 * client; n_images and has_n_images are set from n_images here) followed by
 * n_images image files images[i] of image_len[i] bytes (copied; JPEG, PNG or
 * WebP). 0, or -1 + err (the request is then not in flight). */
int ms_client_submit(ms_client *c, const ms_msg_submit *s, const void *const *images,
                     const size_t *image_len, size_t n_images, char *err, size_t err_size);

/* Sends Cancel{id}. The request ends with its Done (finish "cancel") or an
 * Error, which still arrive through ms_client_next. 0 or -1 + err. */
int ms_client_cancel(ms_client *c, const char *id, char *err, size_t err_size);

/* Sends StatsRequest; the Stats answer arrives through ms_client_next. */
int ms_client_stats_request(ms_client *c, char *err, size_t err_size);

/* Waits up to timeout_ms (< 0: forever) for the next event and decodes it
 * into *out (finalized first; caller ms_msg_fini's it): Accepted, Token,
 * Done, Error or Stats. MS_WIRE_OK; MS_WIRE_TIMEOUT; MS_WIRE_TRANSPORT
 * (interrupted / socket failure); MS_WIRE_MALFORMED: the broker sent
 * something undecodable, an unexpected message type, or a stream violation
 * (a Token index out of order, an event for a request that already ended)
 * — err says which; *out is then empty. A request stops being in flight
 * when its Done or Error is returned. */
ms_wire_status ms_client_next(ms_client *c, int timeout_ms, ms_msg *out, char *err,
                              size_t err_size);

/* Called for each event by ms_client_stream; return 0 to go on, anything
 * else to stop streaming. The event is valid only during the call. */
typedef int (*ms_client_event_fn)(const ms_msg *event, void *user);

/* Reads events (of any request; all are passed to fn) until the Done or
 * Error of request `id`, fn returns non-zero, or no event arrives for
 * timeout_ms (< 0: no limit). MS_WIRE_OK when id ended or fn stopped;
 * otherwise the status of ms_client_next that stopped it. */
ms_wire_status ms_client_stream(ms_client *c, const char *id, int timeout_ms, ms_client_event_fn fn,
                                void *user, char *err, size_t err_size);

/* Requests submitted and not yet ended (Done / Error not yet returned). */
size_t ms_client_inflight(const ms_client *c);

#endif
