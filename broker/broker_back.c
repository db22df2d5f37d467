/* broker_back.c — the actors' socket (broker_int.h): Hello, Bye, Encoded,
 * TokenOut, PrefillDone, TaskDone, TaskError in; tasks out.
 *
 * Every reply is checked against the task record it names: the task must
 * exist, belong to the request and have been sent to the actor that answers.
 * Anything else is stale (the task was re-dispatched, the request ended) and
 * is dropped. TokenOut carries no task id: it is accepted only from the
 * actor that currently generates for the request, and its indices are
 * de-duplicated against what the producer has already seen.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_int.h"

int ms_broker_send_actor(ms_broker *b, int slot, const ms_msg *m, const void *const *data,
                         const size_t *len, size_t n) {
    ms_bactor *a = &b->actors[slot];
    zframe_t *route = zframe_new(a->id, strlen(a->id));
    char err[MS_ERR_SIZE];
    int rc = ms_frames_send_bytes(b->back, route, m, data, len, n, err, sizeof(err));
    zframe_destroy(&route);
    if (rc != 0) {
        ms_warn("broker: cannot send %s to %s: %s", ms_msg_type_name(m->type), a->id, err);
        a->unreachable_until_ms = ms_broker_now_ms() + MS_BROKER_UNREACHABLE_MS;
        return -1;
    }
    return 0;
}

/* The actor id a routing frame names, if it is a plausible id. */
static bool s_route_id(zframe_t *route, char id[MS_BREG_ID_MAX]) {
    if (!route) return false;
    size_t n = zframe_size(route);
    const uint8_t *d = zframe_data(route);
    if (n == 0 || n >= MS_BREG_ID_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if (d[i] < 0x21 || d[i] > 0x7e) return false;
    memcpy(id, d, n);
    id[n] = '\0';
    return true;
}

static void s_on_hello(ms_broker *b, const char *id, const ms_msg_hello *h) {
    if (strcmp(h->actor, id) != 0) {
        ms_warn("broker: hello from identity '%s' names actor '%s': ignored", id, h->actor);
        b->c.malformed++;
        return;
    }
    uint32_t stages = 0;
    char err[MS_ERR_SIZE];
    if (ms_stages_parse(h->stages, &stages, err, sizeof(err)) != 0) {
        ms_warn("broker: hello from %s: %s", id, err);
        b->c.malformed++;
        return;
    }
    if (strlen(h->data_ep) >= MS_BREG_STR_MAX) {
        ms_warn("broker: hello from %s: data_ep too long", id);
        b->c.malformed++;
        return;
    }
    int slot = ms_broker_actor_slot(b, id);
    if (slot < 0) {
        ms_warn("broker: actor table full (%d): %s ignored", MS_BROKER_MAX_ACTORS, id);
        return;
    }
    ms_bactor *a = &b->actors[slot];
    if (a->alive && a->pid != 0 && (int64_t)h->pid != a->pid)
        ms_broker_actor_lost(b, slot, "restarted (new pid)");
    bool was_alive = a->alive;
    a->stages = stages;
    snprintf(a->data_ep, sizeof(a->data_ep), "%s", h->data_ep);
    a->pid = (int64_t)h->pid;
    a->alive = true;
    a->draining = false;
    a->t_hello_ms = ms_broker_now_ms();
    a->missing_since_ms = 0;
    a->unreachable_until_ms = 0;
    ms_broker_actor_touch(b, slot);
    if (!was_alive)
        ms_info("broker: actor %s (%s, pid %" PRIu64 ", data %s) said hello", id, h->stages, h->pid,
                h->data_ep);
}

/* The task a reply names, if it is current for slot and rid. */
static ms_btask *s_reply_task(ms_broker *b, int slot, uint64_t rid, uint64_t task, ms_stage want,
                              bool any_stage) {
    ms_btask *t = ms_broker_task(b, task);
    if (!t || t->rid != rid || t->actor != slot) return NULL;
    if (!any_stage && t->stage != want) return NULL;
    return t;
}

static void s_on_encoded(ms_broker *b, int slot, const ms_msg_encoded *e) {
    ms_btask *t = s_reply_task(b, slot, e->rid, e->task, MS_STAGE_ENCODE, false);
    if (!t) return;
    ms_req *r = ms_reqtable_find(&b->reqs, e->rid);
    if (!r) {
        ms_broker_task_end(b, t);
        return;
    }
    ms_broker_images_encoded(b, r, t, e, slot);
}

static void s_on_token_out(ms_broker *b, int slot, const ms_msg_token_out *tk) {
    ms_req *r = ms_reqtable_find(&b->reqs, tk->rid);
    if (!r || r->text_task == 0) return;
    ms_btask *t = ms_broker_task(b, r->text_task);
    if (!t || t->actor != slot) return; /* not the actor generating for r now */
    const uint64_t have = (uint64_t)r->n_generated;
    const uint64_t end = tk->index + tk->n_ids;
    if (tk->n_ids == 0) return;
    if (end <= have) { /* a re-dispatch repeating what was delivered */
        b->c.dup_tokens += tk->n_ids;
        return;
    }
    if (tk->index > have) {
        char why[128];
        snprintf(why, sizeof(why), "token index %" PRIu64 " skips past %" PRIu64, tk->index, have);
        ms_broker_task_failed(b, t, true, "internal", why);
        return;
    }
    uint32_t skip = (uint32_t)(have - tk->index);
    if (skip > 0) {
        /* partly delivered: the text of the chunk cannot be split by token */
        ms_warn("broker: rid %" PRIu64 ": token chunk at %" PRIu64 " overlaps %u delivered ids; "
                "relaying the rest without text",
                r->rid, tk->index, skip);
        b->c.dup_tokens += skip;
    }
    const int32_t *ids = tk->ids + skip;
    uint32_t n = tk->n_ids - skip;
    ms_broker_send_token(b, r, (uint32_t)have, ids, n, skip ? "" : tk->text);
    ms_req_append_generated(r, ids, (int)n);
    b->c.tokens += n;
    if (r->t_first_ns == 0) r->t_first_ns = ms_now_ns();
    if (t->t_first_ms == 0) t->t_first_ms = ms_broker_now_ms();
    if (r->state == MS_REQ_PREFILLING) {
        r->state = MS_REQ_DECODING;
        if (t->stage == MS_STAGE_PREFILL) ms_broker_task_prefilled(b, t);
    }
}

static void s_on_task_done(ms_broker *b, int slot, const ms_msg_task_done *d) {
    ms_btask *t = s_reply_task(b, slot, d->rid, d->task, MS_STAGE_COUNT, true);
    if (!t) return;
    ms_req *r = ms_reqtable_find(&b->reqs, d->rid);
    if (!r || r->text_task != t->task) {
        ms_broker_task_end(b, t);
        return;
    }
    ms_wire_finish f;
    const char *finish = d->finish;
    if (ms_wire_finish_parse(d->finish, &f) != 0) {
        ms_warn("broker: %s: task_done with finish '%s': reported as 'eog'", b->actors[slot].id,
                d->finish);
        finish = "eog";
    }
    if (d->completion_tokens != (uint64_t)r->n_generated)
        ms_warn("broker: rid %" PRIu64 ": %s reports %" PRIu64 " completion tokens, %d delivered",
                r->rid, b->actors[slot].id, d->completion_tokens, r->n_generated);
    r->transfer_ms += d->transfer_ms;
    r->prefill_ms += d->prefill_ms;
    r->decode_ms += d->decode_ms;
    ms_broker_task_end(b, t);
    r->text_task = 0;
    ms_broker_send_done(b, r, finish, d->prompt_tokens, d->image_tokens);
    ms_broker_finish(b, &r, MS_REQ_DONE);
}

static void s_on_prefill_done(ms_broker *b, int slot, const ms_msg_prefill_done *p) {
    ms_btask *t = s_reply_task(b, slot, p->rid, p->task, MS_STAGE_PREFILL, false);
    if (!t) return;
    ms_req *r = ms_reqtable_find(&b->reqs, p->rid);
    if (!r || r->text_task != t->task || !b->layout->decode_handoff) {
        if (r && r->text_task == t->task) /* a handoff in a layout without decode actors */
            ms_broker_task_failed(b, t, true, "internal", "prefill_done outside the disagg layout");
        else
            ms_broker_task_end(b, t);
        return;
    }
    ms_broker_prefill_done(b, r, t, p);
}

static void s_on_task_error(ms_broker *b, int slot, const ms_msg_task_error *e) {
    ms_btask *t = s_reply_task(b, slot, e->rid, e->task, MS_STAGE_COUNT, true);
    if (!t) return;
    ms_req *r = ms_reqtable_find(&b->reqs, e->rid);
    if (!r) {
        ms_broker_task_end(b, t);
        return;
    }
    ms_wire_code code = MS_CODE_INTERNAL;
    if (ms_wire_code_parse(e->code, &code) != 0) code = MS_CODE_INTERNAL;
    if (code == MS_CODE_BAD_REQUEST) { /* the input itself is bad: retrying cannot help */
        ms_broker_fail(b, &r, MS_CODE_BAD_REQUEST, "%s", e->message);
        return;
    }
    if (code == MS_CODE_DRAINING || code == MS_CODE_OVERLOADED) {
        /* the actor cannot take it (now): elsewhere, not counted as a failure of the request
         * (re-dispatches are bounded by MS_BROKER_MAX_REDISPATCH) */
        if (code == MS_CODE_DRAINING) b->actors[slot].draining = true;
        ms_broker_task_failed(b, t, false, e->code, e->message);
        return;
    }
    ms_broker_task_failed(b, t, true, e->code, e->message);
}

void ms_broker_on_back(ms_broker *b, ms_frames_in *in, ms_wire_status st, const char *err) {
    char id[MS_BREG_ID_MAX];
    if (!s_route_id(in->routing_id, id)) {
        b->c.malformed++;
        ms_warn("broker: back socket: message from an unusable identity: dropped");
        return;
    }
    if (st == MS_WIRE_MALFORMED) {
        b->c.malformed++;
        ms_warn("broker: malformed message from actor %s: %s", id, err);
        return;
    }
    const ms_msg *m = &in->msg;
    if (m->type == MS_MSG_HELLO) {
        s_on_hello(b, id, &m->hello);
        return;
    }
    int slot = ms_broker_actor_find(b, id);
    if (slot < 0 || !b->actors[slot].alive) {
        ms_debug("broker: %s from unknown or lost actor %s: dropped", ms_msg_type_name(m->type),
                 id);
        return;
    }
    ms_broker_actor_touch(b, slot);
    switch (m->type) {
    case MS_MSG_BYE:
        b->actors[slot].draining = true;
        ms_info("broker: actor %s is draining", id);
        break;
    case MS_MSG_ENCODED:
        s_on_encoded(b, slot, &m->encoded);
        break;
    case MS_MSG_TOKEN_OUT:
        s_on_token_out(b, slot, &m->token_out);
        break;
    case MS_MSG_TASK_DONE:
        s_on_task_done(b, slot, &m->task_done);
        break;
    case MS_MSG_PREFILL_DONE:
        s_on_prefill_done(b, slot, &m->prefill_done);
        break;
    case MS_MSG_TASK_ERROR:
        s_on_task_error(b, slot, &m->task_error);
        break;
    default:
        b->c.malformed++;
        ms_warn("broker: actor %s sent a '%s', which actors do not send: dropped", id,
                ms_msg_type_name(m->type));
        break;
    }
}
