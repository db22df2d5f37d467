/* broker.c — lifecycle, the event loop, the cron and the actor view
 * (broker.h, broker_int.h).
 *
 * The loop is one thread: zmq_poll over the back socket (actors) and the
 * front socket (producers), woken at least every MS_BROKER_CRON_MS for the
 * cron — the registry poll, timeouts, the "unavailable" check and the
 * counters — as redis's serverCron is. After any input the queues are
 * scheduled again. Nothing sleeps.
 *
 * Actor liveness: the registry is the source. An actor is alive once it said
 * Hello or appeared in a registry list; it is declared dead when a
 * successful list has not shown it for MS_BROKER_MISSING_MS (its hash
 * expired: no heartbeat for MS_REGISTRY_TTL_MS) and it did not say Hello in
 * the last MS_BROKER_HELLO_GRACE_MS, or when it comes back with a new pid.
 * While Redis does not answer, the last view is kept; when it answers again
 * every actor gets a fresh MS_BROKER_MISSING_MS of grace to re-register.
 */
#include "broker.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker_int.h"

int64_t ms_broker_now_ms(void) {
    return ms_now_ns() / 1000000;
}

void ms_broker_config_default(ms_broker_config *c) {
    memset(c, 0, sizeof(*c));
    c->front_ep = MS_BROKER_FRONT_DEFAULT;
    c->back_ep = MS_BROKER_BACK_DEFAULT;
    c->layout = MS_LAYOUT_MODSERVE;
    c->request_timeout_ms = MS_BROKER_TIMEOUT_MS_DEFAULT;
}

/* ---- actors ---------------------------------------------------------------- */

int ms_broker_actor_find(const ms_broker *b, const char *id) {
    for (int i = 0; i < b->n_slots; i++)
        if (b->actors[i].used && strcmp(b->actors[i].id, id) == 0) return i;
    return -1;
}

/* True if a live request or a task still refers to slot. */
static bool s_slot_referenced(const ms_broker *b, int slot) {
    for (ms_btask *t = zhashx_first(b->tasks); t; t = zhashx_next(b->tasks))
        if (t->actor == slot) return true;
    for (const ms_req *r = b->reqs.head; r; r = r->next) {
        if (r->text_actor == slot || r->decode_actor == slot || r->avoid_actor == slot) return true;
        for (int i = 0; i < r->n_images; i++)
            if (r->images[i].actor == slot) return true;
    }
    return false;
}

int ms_broker_actor_slot(ms_broker *b, const char *id) {
    int slot = ms_broker_actor_find(b, id);
    if (slot >= 0) return slot;
    if (strlen(id) >= MS_BREG_ID_MAX) return -1;
    if (b->n_slots < MS_BROKER_MAX_ACTORS) {
        slot = b->n_slots++;
    } else { /* reuse the slot of a dead actor nothing refers to any more */
        for (int i = 0; i < b->n_slots && slot < 0; i++)
            if (!b->actors[i].alive && !s_slot_referenced(b, i)) slot = i;
        if (slot < 0) return -1;
    }
    ms_bactor *a = &b->actors[slot];
    memset(a, 0, sizeof(*a));
    a->used = true;
    snprintf(a->id, sizeof(a->id), "%s", id);
    return slot;
}

void ms_broker_actor_touch(ms_broker *b, int slot) {
    ms_bactor *a = &b->actors[slot];
    a->t_msg_ms = ms_broker_now_ms();
    if (a->unreachable_until_ms && a->t_msg_ms >= a->unreachable_until_ms)
        a->unreachable_until_ms = 0;
}

bool ms_broker_actor_usable(const ms_broker *b, int slot, int64_t now_ms) {
    const ms_bactor *a = &b->actors[slot];
    return a->used && a->alive && !a->draining && a->stages != 0 &&
           now_ms >= a->unreachable_until_ms;
}

void ms_broker_actor_lost(ms_broker *b, int slot, const char *why) {
    ms_bactor *a = &b->actors[slot];
    if (!a->alive) return;
    a->alive = false;
    b->c.actors_lost++;
    ms_warn("broker: actor %s lost (%s): re-dispatching its work", a->id, why);
    char ev[MS_BREG_STR_MAX];
    snprintf(ev, sizeof(ev), "actor %s lost: %s", a->id, why);
    ms_breg_event(b->reg, ev);

    /* every task in flight there */
    size_t n = zhashx_size(b->tasks);
    uint64_t *ids = ms_xcalloc(n + 1, sizeof(*ids));
    size_t k = 0;
    for (ms_btask *t = zhashx_first(b->tasks); t; t = zhashx_next(b->tasks))
        if (t->actor == slot && k < n) ids[k++] = t->task;
    for (size_t i = 0; i < k; i++) {
        ms_btask *t = ms_broker_task(b, ids[i]);
        if (t) ms_broker_task_failed(b, t, false, "lost", why);
    }
    free(ids);

    /* Features it held and KV it kept for a decode actor are noticed by the
     * dispatch passes (s_images_alive, the decode queue's holder check),
     * which send that work back a step: re-encode, re-prefill. A task that
     * may still be pulling from it (a prefill its features, a decode actor
     * its KV: no token from that task yet) is not left to time out: it is
     * cancelled and redone. */
    ms_req *next;
    for (ms_req *r = b->reqs.head; r; r = next) {
        next = r->next;
        if (!b->layout->split_images && r->text_actor == slot && r->text_task == 0 &&
            r->kv_key == NULL)
            r->text_actor = -1; /* monolith: its reserved actor is gone */
        ms_btask *t = r->text_task ? ms_broker_task(b, r->text_task) : NULL;
        if (!t || t->t_first_ms != 0 || t->actor == slot) continue;
        const char *why = NULL;
        if (t->stage == MS_STAGE_PREFILL) {
            for (int i = 0; i < r->n_images; i++)
                if (r->images[i].state == MS_IMG_READY && r->images[i].actor == slot)
                    why = "the encoder holding its features was lost";
        } else if (t->stage == MS_STAGE_DECODE && r->kv_key && r->text_actor == slot) {
            why = "the prefill actor holding its KV was lost";
        }
        if (!why) continue;
        ms_msg m;
        ms_msg_init(&m, MS_MSG_CANCEL_TASK);
        m.cancel_task.rid = r->rid;
        (void)ms_broker_send_actor(b, t->actor, &m, NULL, NULL, 0);
        ms_broker_task_failed(b, t, false, "lost", why);
    }
    /* whatever accounting is left belongs to nothing now */
    a->pend_image_tokens = a->pend_prompt_tokens = 0;
    a->running_seqs = 0;
    memset(a->inflight, 0, sizeof(a->inflight));
}

/* One registry list: refresh, add, and expire actors. */
static void s_poll_registry(ms_broker *b, int64_t now) {
    ms_breg_actor *list = NULL;
    int n = 0;
    if (ms_breg_list(b->reg, &list, &n) != 0) {
        if (!b->reg_warned)
            ms_warn("broker: registry unavailable (%s): serving from the last view",
                    ms_breg_errstr(b->reg));
        b->reg_warned = true;
        b->reg_ok = false;
        return;
    }
    if (!b->reg_ok) { /* first contact, or back after an outage: time to re-register */
        if (b->reg_warned) ms_info("broker: registry answers again: %d actor(s) listed", n);
        b->reg_grace_until_ms = now + ms_breg_grace_ms();
    }
    b->reg_ok = true;
    b->reg_warned = false;
    for (int i = 0; i < b->n_slots; i++)
        b->actors[i].in_registry = false;
    int listed = 0;
    for (int k = 0; k < n; k++) {
        const ms_breg_actor *e = &list[k];
        uint32_t stages = 0;
        char err[MS_ERR_SIZE];
        if (ms_stages_parse(e->stages, &stages, err, sizeof(err)) != 0) continue;
        int slot = ms_broker_actor_slot(b, e->id);
        if (slot < 0) continue;
        ms_bactor *a = &b->actors[slot];
        if (e->heartbeat_age_ms > MS_BROKER_STALE_MS && e->pid == a->pid) {
            /* heartbeats come from a thread of their own: a stale one means the
             * process is gone (or wedged), even though its entry has not expired */
            if (a->alive && now >= b->reg_grace_until_ms) {
                char why[96];
                snprintf(why, sizeof why, "its heartbeat is %" PRId64 " ms old",
                         e->heartbeat_age_ms);
                ms_broker_actor_lost(b, slot, why);
            }
            continue;
        }
        if (a->alive && a->pid != 0 && e->pid != a->pid) {
            /* a new process under the same id; the Hello may come before or after */
            if (a->t_hello_ms == 0 || now - a->t_hello_ms > MS_BROKER_HELLO_GRACE_MS)
                ms_broker_actor_lost(b, slot, "restarted (new pid in the registry)");
            else
                continue; /* its Hello is newer than this entry: let the next list settle it */
        }
        if (!a->alive)
            ms_info("broker: actor %s (%s, pid %" PRId64 ") registered", e->id, e->stages, e->pid);
        a->stages = stages;
        snprintf(a->data_ep, sizeof(a->data_ep), "%s", e->data_ep);
        a->pid = e->pid;
        a->alive = true;
        a->in_registry = true;
        a->missing_since_ms = 0;
        a->draining = e->draining;
        a->has_kv_report = (stages & (MS_STAGES_PREFILL | MS_STAGES_DECODE)) != 0;
        a->reg_free_kv_blocks = e->free_kv_blocks;
        a->t_report_ms = now - MS_BROKER_REPORT_AGE_MS;
        listed++;
    }
    free(list);
    /* most of the actors listed last time gone at once: Redis restarted (or
     * was flushed) rather than that many processes dying together */
    if (b->reg_listed > 0 && 2 * listed < b->reg_listed && now >= b->reg_grace_until_ms) {
        ms_warn("broker: %d of %d actors vanished from the registry at once: waiting %" PRId64
                " ms for them to re-register",
                b->reg_listed - listed, b->reg_listed, ms_breg_grace_ms());
        b->reg_grace_until_ms = now + ms_breg_grace_ms();
    }
    b->reg_listed = listed;
    for (int i = 0; i < b->n_slots; i++) {
        ms_bactor *a = &b->actors[i];
        if (!a->used || !a->alive || a->in_registry) continue;
        if (a->missing_since_ms == 0) a->missing_since_ms = now;
        bool hello_recent = a->t_hello_ms && now - a->t_hello_ms < MS_BROKER_HELLO_GRACE_MS;
        if (now - a->missing_since_ms >= MS_BROKER_MISSING_MS && !hello_recent &&
            now >= b->reg_grace_until_ms)
            ms_broker_actor_lost(b, i, "its registry entry expired");
    }
}

/* ---- cron ---------------------------------------------------------------------- */

static void s_update_stage_missing(ms_broker *b, int64_t now) {
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        if (ms_broker_stage_has_actor(b, (ms_stage)s, now))
            b->stage_missing_since[s] = 0;
        else if (b->stage_missing_since[s] == 0)
            b->stage_missing_since[s] = now;
    }
}

static void s_check_timeouts(ms_broker *b, int64_t now) {
    ms_req *next;
    for (ms_req *r = b->reqs.head; r; r = next) {
        next = r->next;
        ms_stage st = ms_broker_req_stage(b, r);
        int64_t since = st < MS_STAGE_COUNT ? b->stage_missing_since[st] : 0;
        bool stage_gone = since > 0 && now - since > b->timeout_ms;
        if (now < r->t_deadline_ms && !stage_gone) continue;
        if (since > 0 && (stage_gone || now >= r->t_deadline_ms)) {
            ms_broker_fail(b, &r, MS_CODE_UNAVAILABLE,
                           "no %s actor available (layout %s) for %" PRId64 " ms",
                           ms_stage_name(st), b->layout->name, now - since);
        } else if (r->n_generated > 0) {
            b->c.timeouts++;
            ms_broker_send_done(b, r, "timeout", 0, 0);
            ms_broker_finish(b, &r, MS_REQ_TIMED_OUT);
        } else {
            ms_broker_fail(b, &r, MS_CODE_TIMEOUT, "timed out after %" PRId64 " ms while %s",
                           now - r->t_arrival_ms, ms_req_state_name(r->state));
        }
    }
}

static void s_publish(ms_broker *b, int64_t now) {
    enum { N_FIXED = 25 + 4 + 2 * MS_STAGE_COUNT };
    const int n_max = N_FIXED + MS_BROKER_MAX_ACTORS * MS_STAGE_COUNT;
    const char **names = ms_xcalloc((size_t)n_max, sizeof(*names));
    int64_t *values = ms_xcalloc((size_t)n_max, sizeof(*values));
    char(*dyn)[MS_BREG_FIELD_MAX] =
        ms_xcalloc((size_t)MS_BROKER_MAX_ACTORS * MS_STAGE_COUNT, sizeof(*dyn));
    uint64_t queued = 0, live = 0;
    for (const ms_req *r = b->reqs.head; r; r = r->next)
        queued += r->queue != MS_REQQ_NONE;
    for (int i = 0; i < b->n_slots; i++)
        live += b->actors[i].alive;
    int n = 0;
#define S_C(name, v)                                                                               \
    do {                                                                                           \
        names[n] = name;                                                                           \
        values[n++] = (int64_t)(v);                                                                \
    } while (0)
    S_C("requests", b->c.requests);
    S_C("requests_text", b->c.requests_text);
    S_C("requests_image", b->c.requests_image);
    S_C("images", b->c.images);
    S_C("completed", b->c.completed);
    S_C("errors", b->c.errors);
    S_C("rejected", b->c.rejected);
    S_C("overloaded", b->c.overloaded);
    S_C("malformed", b->c.malformed);
    S_C("cancelled", b->c.cancelled);
    S_C("timeouts", b->c.timeouts);
    S_C("unavailable", b->c.unavailable);
    S_C("tokens", b->c.tokens);
    S_C("dup_tokens", b->c.dup_tokens);
    S_C("retries", b->c.retries);
    S_C("redispatches", b->c.redispatches);
    S_C("actors_lost", b->c.actors_lost);
    S_C("encode_tasks", b->c.encode_tasks);
    S_C("prefill_tasks", b->c.prefill_tasks);
    S_C("decode_tasks", b->c.decode_tasks);
    S_C("in_flight", b->reqs.n);
    S_C("queued", queued);
    S_C("actors", live);
    S_C("uptime_ms", now - b->t_start_ms);
    S_C("pid", getpid());
    S_C("image_tokens", b->c.image_tokens);
    S_C("prompt_tokens", b->c.prompt_tokens);
    S_C("slo_requests", b->c.slo_requests);
    S_C("slo_met", b->c.slo_met);
    S_C("slo_seen:encode", b->c.slo_seen[MS_STAGE_ENCODE]);
    S_C("slo_ok:encode", b->c.slo_ok[MS_STAGE_ENCODE]);
    S_C("slo_seen:prefill", b->c.slo_seen[MS_STAGE_PREFILL]);
    S_C("slo_ok:prefill", b->c.slo_ok[MS_STAGE_PREFILL]);
    S_C("slo_seen:decode", b->c.slo_seen[MS_STAGE_DECODE]);
    S_C("slo_ok:decode", b->c.slo_ok[MS_STAGE_DECODE]);
#undef S_C
    int nd = 0;
    for (int i = 0; i < b->n_slots; i++)
        for (int s = 0; s < MS_STAGE_COUNT; s++) {
            if (!b->actors[i].routed[s]) continue;
            snprintf(dyn[nd], MS_BREG_FIELD_MAX, "routed:%s:%s", b->actors[i].id,
                     ms_stage_name((ms_stage)s));
            names[n] = dyn[nd++];
            values[n++] = (int64_t)b->actors[i].routed[s];
        }
    (void)ms_breg_publish(b->reg, names, values, n);
    free(dyn);
    free(values);
    free(names);
}

static void s_cron(ms_broker *b, int64_t now) {
    if (now >= b->next_poll_ms) {
        s_poll_registry(b, now);
        b->next_poll_ms = now + MS_BROKER_REGISTRY_POLL_MS;
    }
    s_update_stage_missing(b, now);
    s_check_timeouts(b, now);
    ms_broker_schedule(b);
    if (now >= b->next_stats_ms) {
        s_publish(b, now);
        b->next_stats_ms = now + MS_BROKER_STATS_MS;
    }
}

/* ---- lifecycle ------------------------------------------------------------------- */

static void s_task_free(void **item) {
    free(*item);
    *item = NULL;
}

/* Binds a ROUTER at ep; records the endpoint actually bound. NULL + err. */
static zsock_t *s_bind(const char *ep, char *bound, size_t bound_size, bool actors, char *err,
                       size_t err_size) {
    zsock_t *s = zsock_new(ZMQ_ROUTER);
    if (!s) {
        ms_errf(err, err_size, "cannot create a ZeroMQ socket");
        return NULL;
    }
    zsock_set_sndhwm(s, 0);   /* never drop a token or a task at a high-water mark */
    zsock_set_rcvtimeo(s, 0); /* reads never block: the loop polls first */
    zsock_set_linger(s, 0);
    if (actors) {
        zsock_set_router_mandatory(s, 1); /* a send to a gone actor fails (EHOSTUNREACH) */
        zsock_set_router_handover(s, 1);  /* a restarted actor takes its identity back */
    }
    if (zsock_bind(s, "%s", ep) < 0) {
        ms_errf(err, err_size, "cannot bind %s: %s", ep, zmq_strerror(zmq_errno()));
        zsock_destroy(&s);
        return NULL;
    }
    char *last = zsock_last_endpoint(s);
    snprintf(bound, bound_size, "%s", last ? last : ep);
    free(last);
    return s;
}

ms_broker *ms_broker_new(const ms_broker_config *c, char *err, size_t err_size) {
    ms_broker *b = ms_xcalloc(1, sizeof(*b));
    b->cfg = *c;
    b->layout = ms_layout_get(c->layout);
    b->timeout_ms =
        c->request_timeout_ms > 0 ? c->request_timeout_ms : MS_BROKER_TIMEOUT_MS_DEFAULT;
    ms_reqtable_init(&b->reqs);
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        ms_pqueue_init(&b->q[s]);
    b->tasks = zhashx_new();
    zhashx_set_destructor(b->tasks, s_task_free);
    b->next_task = 1;
    char e[MS_ERR_SIZE];

    if (c->profile_path) {
        if (ms_profile_load(c->profile_path, &b->prof, NULL, e, sizeof(e)) != 0) {
            ms_errf(err, err_size, "profile: %s", e);
            goto fail;
        }
    } else {
        ms_profile_default(&b->prof);
    }
    b->lim = b->prof.limits;
    if (c->max_queue > 0) b->lim.max_pending_requests = c->max_queue;
    if (ms_broker_model_open(&b->model, c->model_path, c->mmproj_path, c->chat_template, c->n_ctx,
                             e, sizeof(e)) != 0) {
        ms_errf(err, err_size, "%s", e);
        goto fail;
    }
    b->reg = ms_breg_new(c->redis_host, c->redis_port, c->redis_prefix, e, sizeof(e));
    if (!b->reg) {
        ms_errf(err, err_size, "registry: %s", e);
        goto fail;
    }
    b->front = s_bind(c->front_ep ? c->front_ep : MS_BROKER_FRONT_DEFAULT, b->front_ep,
                      sizeof(b->front_ep), false, err, err_size);
    if (!b->front) goto fail;
    b->back = s_bind(c->back_ep ? c->back_ep : MS_BROKER_BACK_DEFAULT, b->back_ep,
                     sizeof(b->back_ep), true, err, err_size);
    if (!b->back) goto fail;

    int64_t now = ms_broker_now_ms();
    b->t_start_ms = now;
    b->next_poll_ms = now;
    b->next_stats_ms = now;
    b->next_cron_ms = now;
    ms_info("broker: front %s, back %s, layout %s, model %s (template %s, n_ctx %d, %d tokens "
            "per image)",
            b->front_ep, b->back_ep, b->layout->name, c->model_path,
            ms_chat_template_name(b->model.tmpl), b->model.n_ctx, b->model.n_image_tokens);
    return b;
fail:
    ms_broker_destroy(&b);
    return NULL;
}

void ms_broker_destroy(ms_broker **b_p) {
    ms_broker *b = *b_p;
    if (!b) return;
    ms_reqtable_fini(&b->reqs);
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        ms_pqueue_fini(&b->q[s]);
    zhashx_destroy(&b->tasks);
    zsock_destroy(&b->front);
    zsock_destroy(&b->back);
    ms_breg_destroy(&b->reg);
    ms_broker_model_close(&b->model);
    free(b);
    *b_p = NULL;
}

void ms_broker_stop(ms_broker *b) {
    b->stop = 1;
}

const char *ms_broker_front_endpoint(const ms_broker *b) {
    return b->front_ep;
}

const char *ms_broker_back_endpoint(const ms_broker *b) {
    return b->back_ep;
}

/* Reads up to MS_BROKER_DRAIN_BATCH messages from sock. Returns how many
 * were handled, or -1 on a transport failure. */
static int s_drain(ms_broker *b, zsock_t *sock, bool back, char *err, size_t err_size) {
    int handled = 0;
    for (int i = 0; i < MS_BROKER_DRAIN_BATCH; i++) {
        ms_frames_in in;
        ms_frames_in_init(&in);
        char e[MS_ERR_SIZE] = "";
        ms_wire_status st =
            ms_frames_recv(sock, &in, back ? MS_BROKER_BACK_MAX_BYTES : 0, e, sizeof(e));
        if (st == MS_WIRE_TIMEOUT) {
            ms_frames_in_fini(&in);
            break;
        }
        if (st == MS_WIRE_TRANSPORT) {
            ms_frames_in_fini(&in);
            if (errno == EINTR || errno == EAGAIN) break;
            ms_errf(err, err_size, "%s socket: %s", back ? "back" : "front", e);
            return -1;
        }
        if (back)
            ms_broker_on_back(b, &in, st, e);
        else
            ms_broker_on_front(b, &in, st, e);
        ms_frames_in_fini(&in);
        handled++;
    }
    return handled;
}

/* On a requested stop: every live request gets Error "unavailable" and its
 * actors a CancelTask, and both sockets get a moment to flush. */
static void s_shutdown(ms_broker *b) {
    int n = 0;
    while (b->reqs.head) {
        ms_req *r = b->reqs.head;
        ms_broker_fail(b, &r, MS_CODE_UNAVAILABLE, "the broker is shutting down");
        n++;
    }
    if (n) ms_info("broker: stopping: %d request(s) ended with \"unavailable\"", n);
    zsock_set_linger(b->front, MS_BROKER_LINGER_MS);
    zsock_set_linger(b->back, MS_BROKER_LINGER_MS);
}

int ms_broker_run(ms_broker *b, char *err, size_t err_size) {
    zmq_pollitem_t items[2] = {
        {zsock_resolve(b->back), 0, ZMQ_POLLIN, 0},
        {zsock_resolve(b->front), 0, ZMQ_POLLIN, 0},
    };
    while (!b->stop) {
        int64_t now = ms_broker_now_ms();
        long wait = (long)MS_MAX(0, MS_MIN(b->next_cron_ms - now, MS_BROKER_CRON_MS));
        int rc = zmq_poll(items, 2, wait);
        if (rc < 0) {
            if (zmq_errno() == EINTR) continue;
            if (zmq_errno() == ETERM) return 0;
            return ms_errf(err, err_size, "zmq_poll: %s", zmq_strerror(zmq_errno()));
        }
        int handled = 0;
        if (items[0].revents & ZMQ_POLLIN) {
            int h = s_drain(b, b->back, true, err, err_size);
            if (h < 0) return -1;
            handled += h;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            int h = s_drain(b, b->front, false, err, err_size);
            if (h < 0) return -1;
            handled += h;
        }
        if (handled > 0) ms_broker_schedule(b);
        now = ms_broker_now_ms();
        if (now >= b->next_cron_ms) {
            s_cron(b, now);
            b->next_cron_ms = now + MS_BROKER_CRON_MS;
        }
    }
    s_shutdown(b);
    return 0;
}
