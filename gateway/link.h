/* link.h — the gateway's connection to the broker. One thread (the link
 * thread) owns the producer client (schemas/client.h: one DEALER socket, not
 * thread-safe) and serves every HTTP thread: HTTP threads hand it submits,
 * cancels and stats requests through a locked queue and a wake-up pipe; it
 * sends them, reads the broker's events and routes each to its request,
 * whose waiter (an HTTP thread) it wakes.
 *
 *   ms_gw_req *r = ms_gw_link_submit(link, &msg, images, lens, n);  // takes msg + images
 *   ms_gw_update u;
 *   while (!ended) if (ms_gw_req_wait(r, 200, &u)) { ...u.text..., ended = u.ended; ... }
 *   ms_gw_req_release(&r);
 *
 * Every submitted request ends exactly once (an ms_gw_update with ended and
 * a Done or Error in final), also when the broker never answers: a request
 * not Accepted within MS_GW_ACCEPT_TIMEOUT_MS, one the socket refuses for
 * MS_GW_CONNECT_GRACE_MS (no broker connected), and every
 * request in flight when the broker stops answering stats probes for
 * MS_GW_BROKER_DEAD_MS end with an Error "unavailable" made here (and a
 * Cancel is sent, so a broker that was only slow frees them too).
 */
#ifndef MS_GW_LINK_H
#define MS_GW_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

#define MS_GW_ACCEPT_TIMEOUT_MS 10000 /* submit → Accepted/Error at most this long */
#define MS_GW_CONNECT_GRACE_MS  1000  /* a refused submit (no broker) is retried this long */
#define MS_GW_PROBE_MS          1000  /* stats probe interval while requests are in flight */
#define MS_GW_BROKER_DEAD_MS    5000  /* a probe unanswered this long: the broker is gone */
#define MS_GW_POLL_MS           50    /* the link thread's longest sleep */

typedef struct ms_gw_link ms_gw_link;
typedef struct ms_gw_req ms_gw_req; /* one request; reference counted */

/* What the link knows of a request when one of its events arrives. */
typedef struct ms_gw_req_info {
    const char *id;      /* request id (the Submit's id) */
    int64_t t_submit_ns; /* ms_now_ns() at ms_gw_link_submit */
    int64_t t_prev_ns;   /* Token: the previous Token event's arrival, 0 if this is the first */
    uint32_t n_images;   /* images of the request */
} ms_gw_req_info;

/* Called on the link thread for every Accepted, Token, Done and Error of a
 * request (also the Errors the link makes itself), with the arrival time.
 * For metrics: it must be quick and must not call into the link. */
typedef void (*ms_gw_event_fn)(void *user, const ms_gw_req_info *info, const ms_msg *ev,
                               int64_t now_ns);

/* Connects to the broker's front endpoint (asynchronously: a broker that is
 * not up yet is no error) and starts the link thread. fn may be NULL.
 * NULL + err on a bad endpoint or a failure to start. */
ms_gw_link *ms_gw_link_new(const char *endpoint, ms_gw_event_fn fn, void *user, char *err,
                           size_t err_size);
/* Stops the thread and frees the link and the requests it still tracks.
 * Every handle from ms_gw_link_submit must have been released before (the
 * HTTP server is stopped first). NULL-safe; sets *self_p NULL. */
void ms_gw_link_destroy(ms_gw_link **self_p);

/* Queues a Submit. Takes ownership of *msg (type MS_MSG_SUBMIT with
 * submit.id set, unique among the link's requests; *msg is left
 * MS_MSG_NONE) and of images[0..n) (malloc'd files of lens[i] bytes; the
 * array entries are set NULL). Returns the request, with one reference for
 * the caller (ms_gw_req_release). Never fails: a failure to send arrives as
 * the request's Error. */
ms_gw_req *ms_gw_link_submit(ms_gw_link *l, ms_msg *msg, uint8_t **images, const size_t *lens,
                             uint32_t n_images);

/* What changed on a request since the last ms_gw_req_wait. */
typedef struct ms_gw_update {
    char *text;      /* new text (malloc'd, NUL-terminated; caller frees), NULL if none */
    size_t len;      /* bytes of text */
    uint32_t tokens; /* new tokens (text may be shorter: held-back bytes come later) */
    bool accepted;   /* the broker has accepted the request (now or before) */
    bool ended;      /* final holds the request's Done or Error (moved to the caller) */
    ms_msg final;    /* MS_MSG_DONE / MS_MSG_ERROR when ended, else MS_MSG_NONE */
} ms_gw_update;

/* Waits up to timeout_ms for news on r: new tokens, the Accepted, or the
 * end. Returns 1 with *u filled (initialised here; the caller frees u->text
 * and ms_msg_fini's u->final), or 0 on timeout (*u empty). After the end
 * was returned once, further calls return 0. */
int ms_gw_req_wait(ms_gw_req *r, int timeout_ms, ms_gw_update *u);

/* Asks the broker to cancel r (the client went away). Once; no-op after the
 * end. The request still ends with its Done/Error, which the link reads. */
void ms_gw_req_cancel(ms_gw_req *r);

/* The request id. */
const char *ms_gw_req_id(const ms_gw_req *r);

/* Drops the caller's reference; NULL-safe; sets *r_p NULL. */
void ms_gw_req_release(ms_gw_req **r_p);

/* Broker round trip: sends a StatsRequest and waits up to timeout_ms for a
 * Stats that arrives after it. 0 and *out (its numbers; out->id NULL), or
 * -1 + err ("the broker at tcp://... did not answer within 1000 ms"). */
int ms_gw_link_stats(ms_gw_link *l, int timeout_ms, ms_msg_stats *out, char *err, size_t err_size);

/* Requests in flight at the gateway: *waiting have no token yet, *running
 * have one (both may be NULL). */
void ms_gw_link_counts(ms_gw_link *l, int *waiting, int *running);

#endif
