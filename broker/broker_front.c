/* broker_front.c — the producers' socket (broker_int.h): Submit, Cancel and
 * StatsRequest in; Accepted, Token, Done, Error and Stats out.
 *
 * Submit is validated in full before anything is queued: the codec has
 * already rejected malformed headers (wrong types, bounds, unknown fields);
 * here the request is checked for meaning — images without a vision model,
 * too many images, undecodable image signatures, bad sampling parameters, an
 * unknown SLO class, a prompt that does not fit the context once rendered and
 * tokenized exactly as modserve-run does — and each problem is answered with
 * an Error naming it, while every other request keeps being served.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_int.h"
#include "prompt.h"

/* ---- replies ------------------------------------------------------------- */

static void s_send(ms_broker *b, zframe_t *route, const ms_msg *m) {
    char err[MS_ERR_SIZE];
    if (ms_frames_send(b->front, route, m, NULL, 0, err, sizeof(err)) != 0)
        ms_warn("broker: cannot send %s to a producer: %s", ms_msg_type_name(m->type), err);
}

static void s_reply_error(ms_broker *b, zframe_t *route, const char *id, ms_wire_code code,
                          const char *fmt, ...) MS_PRINTF(5, 6);
static void s_reply_error(ms_broker *b, zframe_t *route, const char *id, ms_wire_code code,
                          const char *fmt, ...) {
    char msg[MS_WIRE_MAX_ERROR_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    char err[MS_ERR_SIZE];
    if (ms_frames_send_error(b->front, route, id ? id : "", code, msg, err, sizeof(err)) != 0)
        ms_warn("broker: cannot send an error to a producer: %s", err);
    b->c.errors++;
    ms_debug("broker: error to producer (id '%s'): %s: %s", id ? id : "", ms_wire_code_name(code),
             msg);
}

void ms_broker_send_token(ms_broker *b, ms_req *r, uint32_t index, const int32_t *ids, uint32_t n,
                          const char *text) {
    ms_msg m;
    ms_msg_init(&m, MS_MSG_TOKEN);
    m.token.id = r->client_id;
    m.token.index = index;
    m.token.ids = (int32_t *)ids;
    m.token.n_ids = n;
    m.token.text = (char *)text;
    s_send(b, r->route, &m);
}

/* Counts a request's SLO verdict (the autoscaler's attainment, docs/broker.md):
 * `ended` = it ended with Done (else with an Error that is the system's
 * fault). Met = first token within its TTFT target and, with two tokens or
 * more, mean time between tokens within its TBT target. Stage verdicts, each
 * against the stage's profile share: encode = arrival until its images were
 * encoded (image requests); prefill = the rest of the TTFT (text-only
 * requests, which skip the encoders, may also use the encode share);
 * decode = the mean time between tokens. */
static void s_slo_verdict(ms_broker *b, const ms_req *r, bool ended, int64_t now_ns) {
    b->c.slo_requests++;
    if (!ended || r->t_first_ns == 0) return;
    const ms_stage_profile *sp = b->prof.stage;
    const double ttft = (double)(r->t_first_ns - r->t_arrival_ns) / 1e6;
    const double tpot =
        r->n_generated > 1 ? (double)(now_ns - r->t_first_ns) / 1e6 / (r->n_generated - 1) : 0.0;
    if (ttft <= r->ttft_ms && tpot <= r->tbt_ms) b->c.slo_met++;
    double pre_ms = ttft, pre_share = sp[MS_STAGE_PREFILL].slo_share;
    if (r->n_images > 0 && r->t_encoded_ns > 0) {
        const double enc_ms = (double)(r->t_encoded_ns - r->t_arrival_ns) / 1e6;
        b->c.slo_seen[MS_STAGE_ENCODE]++;
        b->c.slo_ok[MS_STAGE_ENCODE] += enc_ms <= r->ttft_ms * sp[MS_STAGE_ENCODE].slo_share;
        pre_ms = MS_MAX(0.0, ttft - enc_ms);
    } else if (r->n_images == 0) {
        pre_share = MS_MIN(1.0, pre_share + sp[MS_STAGE_ENCODE].slo_share);
    }
    b->c.slo_seen[MS_STAGE_PREFILL]++;
    b->c.slo_ok[MS_STAGE_PREFILL] += pre_ms <= r->ttft_ms * pre_share;
    if (r->n_generated > 1) {
        b->c.slo_seen[MS_STAGE_DECODE]++;
        b->c.slo_ok[MS_STAGE_DECODE] += tpot <= r->tbt_ms * sp[MS_STAGE_DECODE].slo_share;
    }
}

void ms_broker_send_done(ms_broker *b, ms_req *r, const char *finish, uint64_t prompt_tokens,
                         uint64_t image_tokens) {
    const int64_t now = ms_now_ns();
    ms_msg m;
    ms_msg_init(&m, MS_MSG_DONE);
    ms_msg_done *d = &m.done;
    d->id = r->client_id;
    d->finish = (char *)finish;
    d->prompt_tokens = prompt_tokens ? prompt_tokens : (uint64_t)(r->text_tokens + r->image_tokens);
    d->image_tokens = image_tokens ? image_tokens : (uint64_t)r->image_tokens;
    d->completion_tokens = (uint64_t)r->n_generated;
    double queue_ms = r->queue_ms;
    if (r->queue != MS_REQQ_NONE) queue_ms += (double)(now - r->t_enqueued_ns) / 1e6;
    d->queue_ms = queue_ms;
    d->preprocess_ms = r->preprocess_ms;
    d->encode_ms = r->encode_ms;
    d->transfer_ms = r->transfer_ms;
    d->prefill_ms = r->prefill_ms;
    d->decode_ms = r->decode_ms;
    d->ttft_ms = r->t_first_ns ? (double)(r->t_first_ns - r->t_arrival_ns) / 1e6 : 0.0;
    d->e2e_ms = (double)(now - r->t_arrival_ns) / 1e6;
    s_send(b, r->route, &m);
    b->c.completed++;
    if (strcmp(finish, "cancel") != 0) s_slo_verdict(b, r, strcmp(finish, "timeout") != 0, now);
}

void ms_broker_send_error(ms_broker *b, ms_req *r, ms_wire_code code, const char *fmt, ...) {
    char msg[MS_WIRE_MAX_ERROR_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    s_reply_error(b, r->route, r->client_id, code, "%s", msg);
    if (code == MS_CODE_UNAVAILABLE) b->c.unavailable++;
    if (code == MS_CODE_TIMEOUT) b->c.timeouts++;
    if (code == MS_CODE_UNAVAILABLE || code == MS_CODE_TIMEOUT || code == MS_CODE_INTERNAL ||
        code == MS_CODE_OVERLOADED)
        s_slo_verdict(b, r, false, ms_now_ns());
}

/* ---- Submit -------------------------------------------------------------------- */

/* "<image>" markers in text. */
static int s_count_markers(const char *text) {
    int n = 0;
    const size_t ml = strlen(MS_CHAT_IMAGE_MARKER);
    for (const char *p = text; (p = strstr(p, MS_CHAT_IMAGE_MARKER)) != NULL; p += ml)
        n++;
    return n;
}

/* Whether bytes start like a JPEG, PNG or WebP file (the formats the
 * encoders decode); the full decode happens at the encoder. */
static bool s_image_signature_ok(const uint8_t *d, size_t n) {
    static const uint8_t png[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
    if (n >= 3 && d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff) return true;
    if (n >= 8 && memcmp(d, png, 8) == 0) return true;
    if (n >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0) return true;
    return false;
}

static int s_role(const char *name, ms_chat_role *out) {
    for (int r = MS_CHAT_SYSTEM; r <= MS_CHAT_ASSISTANT; r++)
        if (strcmp(name, ms_chat_role_name((ms_chat_role)r)) == 0) {
            *out = (ms_chat_role)r;
            return 0;
        }
    return -1;
}

/* Renders and tokenizes the Submit's conversation exactly as modserve-run
 * does for the same text. 0 with *prompt (malloc'd) / *n_prompt, or -1 + err. */
static int s_build_prompt(const ms_broker *b, const ms_msg_submit *s, int n_images,
                          int32_t **prompt, int *n_prompt, char *err, size_t err_size) {
    ms_chat_template t = s->has_raw && s->raw ? MS_CHAT_RAW : b->model.tmpl;
    int n_msgs = s->has_messages ? (int)s->n_messages : 1;
    if (n_msgs < 1) return ms_errf(err, err_size, "messages is empty");
    ms_chat_message *msgs = ms_xcalloc((size_t)n_msgs, sizeof(*msgs));
    int rc = -1;
    if (!s->has_messages) {
        msgs[0] = (ms_chat_message){MS_CHAT_USER, s->prompt, n_images};
    } else {
        int markers = 0, first_user = -1;
        for (int i = 0; i < n_msgs; i++) {
            const ms_wire_chat_msg *w = &s->messages[i];
            if (s_role(w->role, &msgs[i].role) != 0) {
                ms_errf(err, err_size,
                        "messages[%d].role '%s' is not one of system, user, assistant", i, w->role);
                goto done;
            }
            msgs[i].text = w->content;
            msgs[i].n_images = s_count_markers(w->content);
            markers += msgs[i].n_images;
            if (first_user < 0 && msgs[i].role == MS_CHAT_USER) first_user = i;
        }
        if (markers == 0 && n_images > 0) {
            if (first_user < 0) {
                ms_errf(err, err_size, "%d image(s) but no user message to carry them", n_images);
                goto done;
            }
            msgs[first_user].n_images = n_images; /* placed at its start, as modserve-run does */
        } else if (markers != n_images) {
            ms_errf(err, err_size, "the messages hold %d \"%s\" marker(s) but %d image(s) came",
                    markers, MS_CHAT_IMAGE_MARKER, n_images);
            goto done;
        }
    }
    int n_img_out = 0;
    rc = ms_chat_build_prompt(b->model.tok, t, msgs, n_msgs, true, prompt, n_prompt, &n_img_out,
                              err, err_size);
    if (rc == 0 && n_img_out != n_images) {
        free(*prompt);
        *prompt = NULL;
        rc = ms_errf(err, err_size, "the prompt places %d image(s) but %d came", n_img_out,
                     n_images);
    }
done:
    free(msgs);
    return rc;
}

/* Depth of what the broker holds, for admission. */
static void s_depth(const ms_broker *b, ms_queue_depth *d) {
    memset(d, 0, sizeof(*d));
    for (const ms_req *r = b->reqs.head; r; r = r->next) {
        d->requests++;
        for (int i = 0; i < r->n_images; i++)
            if (r->images[i].state != MS_IMG_READY) d->image_tokens += r->images[i].n_tokens;
        if (r->t_first_ns == 0) d->prompt_tokens += r->text_tokens + r->image_tokens;
    }
}

static void s_on_submit(ms_broker *b, ms_frames_in *in) {
    const ms_msg_submit *s = &in->msg.submit;
    zframe_t *route = in->routing_id;
    const int n_images = (int)in->n_payload;
    const int64_t now = ms_broker_now_ms();
    char err[MS_ERR_SIZE];
    b->c.rejected++; /* undone below once accepted */

    if (s->id[0] == '\0') {
        s_reply_error(b, route, "", MS_CODE_BAD_REQUEST, "submit: id is empty");
        return;
    }
    if (ms_reqtable_find_client(&b->reqs, route, s->id)) {
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST,
                      "submit: request id '%s' is already in flight on this connection", s->id);
        return;
    }
    if (s->has_prompt == s->has_messages) {
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST,
                      "submit: give exactly one of prompt and messages");
        return;
    }
    if (n_images > 0 && b->model.n_image_tokens == 0) {
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST,
                      "submit: %d image(s) given but this broker serves a text-only model "
                      "(no --mmproj)",
                      n_images);
        return;
    }
    int max_images = MS_MAX_IMAGES_PER_PROMPT;
    if (b->lim.max_images_per_request > 0)
        max_images = MS_MIN(max_images, b->lim.max_images_per_request);
    if (n_images > max_images) {
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST,
                      "submit: too many images: %d (at most %d per request)", n_images, max_images);
        return;
    }
    for (int i = 0; i < n_images; i++)
        if (!s_image_signature_ok(ms_frames_in_data(in, (size_t)i),
                                  ms_frames_in_size(in, (size_t)i))) {
            s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST,
                          "submit: image %d (%zu bytes) is not a JPEG, PNG or WebP file", i,
                          ms_frames_in_size(in, (size_t)i));
            return;
        }
    ms_sampling_params sp;
    if (ms_wire_submit_sampling(s, &sp, err, sizeof(err)) != 0) {
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST, "submit: %s", err);
        return;
    }
    int32_t ttft_ms = 0, tbt_ms = 0;
    const char *cls = s->has_slo_class ? s->slo_class : NULL;
    if (ms_profile_slo_class(&b->prof, cls, &ttft_ms, &tbt_ms) != 0) {
        char names[256] = "";
        for (int i = 0; i < b->prof.n_classes; i++) {
            size_t l = strlen(names);
            snprintf(names + l, sizeof(names) - l, "%s%s", i ? ", " : "", b->prof.classes[i].name);
        }
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST,
                      "submit: unknown slo_class '%s' (known: %s)", cls, names[0] ? names : "none");
        return;
    }
    if (s->has_ttft_ms && s->ttft_ms > 0) ttft_ms = (int32_t)s->ttft_ms;
    if (s->has_tbt_ms && s->tbt_ms > 0) tbt_ms = (int32_t)s->tbt_ms;
    int64_t timeout_ms =
        s->has_timeout_ms && s->timeout_ms > 0 ? (int64_t)s->timeout_ms : (int64_t)b->timeout_ms;

    int32_t *prompt = NULL;
    int n_prompt = 0;
    if (s_build_prompt(b, s, n_images, &prompt, &n_prompt, err, sizeof(err)) != 0) {
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST, "submit: prompt: %s", err);
        return;
    }
    int32_t text_tokens = 0;
    for (int i = 0; i < n_prompt; i++)
        text_tokens += !MS_PROMPT_IS_IMAGE(prompt[i]);
    const int32_t image_tokens = n_images * b->model.n_image_tokens;
    const int64_t rows = (int64_t)text_tokens + image_tokens;
    if (rows >= b->model.n_ctx) {
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST,
                      "submit: the prompt is %" PRId64 " tokens (%d text + %d image), the "
                      "context holds %d (room is needed for at least one generated token)",
                      rows, text_tokens, image_tokens, b->model.n_ctx);
        free(prompt);
        return;
    }
    if (b->lim.max_request_tokens > 0 && rows > b->lim.max_request_tokens) {
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST,
                      "submit: the prompt is %" PRId64 " tokens, more than the broker's "
                      "max_request_tokens (%d)",
                      rows, b->lim.max_request_tokens);
        free(prompt);
        return;
    }
    if (n_prompt > (int)MS_WIRE_MAX_PROMPT_TOKENS) {
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST,
                      "submit: the prompt has %d entries (at most %u)", n_prompt,
                      MS_WIRE_MAX_PROMPT_TOKENS);
        free(prompt);
        return;
    }
    /* a stage nobody has served for longer than the timeout: fail now */
    ms_stage need[3] = {MS_STAGE_PREFILL, MS_STAGE_COUNT, MS_STAGE_COUNT};
    if (n_images > 0) need[1] = MS_STAGE_ENCODE;
    if (b->layout->decode_handoff) need[2] = MS_STAGE_DECODE;
    for (int k = 0; k < 3; k++) {
        if (need[k] == MS_STAGE_COUNT) continue;
        int64_t since = b->stage_missing_since[need[k]];
        if (since > 0 && now - since > b->timeout_ms) {
            s_reply_error(b, route, s->id, MS_CODE_UNAVAILABLE,
                          "submit: no %s actor (layout %s) for %" PRId64 " ms",
                          ms_stage_name(need[k]), b->layout->name, now - since);
            b->c.unavailable++;
            free(prompt);
            return;
        }
    }
    /* bounded queues */
    ms_req_view v;
    memset(&v, 0, sizeof(v));
    int32_t img_tok[MS_MAX_IMAGES_PER_PROMPT];
    for (int i = 0; i < n_images; i++)
        img_tok[i] = b->model.n_image_tokens;
    v.arrival_ms = now;
    v.ttft_deadline_ms = now + ttft_ms;
    v.tbt_ms = tbt_ms;
    v.modality = n_images > 0 ? MS_MODALITY_IMAGE : MS_MODALITY_TEXT;
    v.n_images = n_images;
    v.image_tokens = n_images > 0 ? img_tok : NULL;
    v.prompt_tokens = (int32_t)rows;
    v.max_tokens = sp.max_tokens;
    ms_queue_depth depth;
    s_depth(b, &depth);
    ms_admit adm = ms_policy_admit_request(&depth, &b->lim, &v);
    if (adm == MS_ADMIT_TOO_LARGE) {
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST,
                      "submit: the request (%d image(s), %" PRId64 " tokens) exceeds the "
                      "broker's per-request limits",
                      n_images, rows);
        free(prompt);
        return;
    }
    if (adm == MS_ADMIT_OVERLOADED) {
        s_reply_error(b, route, s->id, MS_CODE_OVERLOADED,
                      "broker overloaded: %d requests held (at most %d), %" PRId64
                      " image tokens and %" PRId64 " prompt tokens waiting",
                      depth.requests, b->lim.max_pending_requests, depth.image_tokens,
                      depth.prompt_tokens);
        b->c.overloaded++;
        free(prompt);
        return;
    }

    ms_req *r = ms_reqtable_add(&b->reqs, route, s->id);
    if (!r) { /* checked above; only an over-long routing id gets here */
        s_reply_error(b, route, s->id, MS_CODE_BAD_REQUEST, "submit: unusable request id");
        free(prompt);
        return;
    }
    b->c.rejected--;
    r->prompt = prompt;
    r->n_prompt = n_prompt;
    r->text_tokens = text_tokens;
    r->image_tokens = image_tokens;
    r->sp = sp;
    r->ttft_ms = ttft_ms;
    r->tbt_ms = tbt_ms;
    r->t_arrival_ms = now;
    r->t_arrival_ns = ms_now_ns();
    r->t_deadline_ms = now + timeout_ms;
    int64_t seq_tokens = MS_MIN((int64_t)b->model.n_ctx, rows + sp.max_tokens);
    r->kv_blocks = (int32_t)((seq_tokens + b->model.kv_block_size - 1) / b->model.kv_block_size);
    if (n_images > 0) {
        r->images = ms_xcalloc((size_t)n_images, sizeof(*r->images));
        r->n_images = n_images;
        for (int i = 0; i < n_images; i++) {
            ms_req_image *im = &r->images[i];
            im->bytes = ms_frames_in_take(in, (size_t)i);
            im->hash = ms_hash64(zframe_data(im->bytes), zframe_size(im->bytes));
            im->n_tokens = b->model.n_image_tokens;
            im->actor = -1;
        }
    }
    b->c.requests++;
    b->c.image_tokens += (uint64_t)image_tokens;
    b->c.prompt_tokens += (uint64_t)(text_tokens + image_tokens);
    if (n_images > 0) {
        b->c.requests_image++;
        b->c.images += (uint64_t)n_images;
    } else {
        b->c.requests_text++;
    }
    ms_msg m;
    ms_msg_init(&m, MS_MSG_ACCEPTED);
    m.accepted.id = r->client_id;
    m.accepted.rid = r->rid;
    s_send(b, route, &m);
    ms_debug("broker: rid %" PRIu64 " ('%s'): %d text + %d image tokens, %d image(s), max %d",
             r->rid, r->client_id, text_tokens, image_tokens, n_images, sp.max_tokens);
    ms_broker_admit(b, r);
}

/* ---- Cancel, Stats ---------------------------------------------------------------- */

static void s_on_cancel(ms_broker *b, ms_frames_in *in) {
    ms_req *r = ms_reqtable_find_client(&b->reqs, in->routing_id, in->msg.cancel.id);
    if (!r) return; /* already ended (or never existed): nothing to answer */
    b->c.cancelled++;
    if (r->n_generated > 0) {
        ms_broker_send_done(b, r, "cancel", 0, 0);
        ms_broker_finish(b, &r, MS_REQ_CANCELLED);
    } else {
        ms_broker_fail(b, &r, MS_CODE_CANCELLED, "cancelled by the producer before any token");
    }
}

static void s_on_stats(ms_broker *b, ms_frames_in *in) {
    uint64_t queued = 0, actors = 0;
    for (const ms_req *r = b->reqs.head; r; r = r->next)
        queued += r->queue != MS_REQQ_NONE;
    for (int i = 0; i < b->n_slots; i++)
        actors += b->actors[i].used && b->actors[i].alive;
    ms_msg m;
    ms_msg_init(&m, MS_MSG_STATS);
    ms_msg_stats *s = &m.stats;
    if (in->msg.stats_request.has_id) {
        s->has_id = true;
        s->id = in->msg.stats_request.id;
    }
    s->uptime_ms = (double)(ms_broker_now_ms() - b->t_start_ms);
    s->requests = b->c.requests;
    s->completed = b->c.completed;
    s->errors = b->c.errors;
    s->malformed = b->c.malformed;
    s->in_flight = b->reqs.n;
    s->queued = queued;
    s->actors = actors;
    s_send(b, in->routing_id, &m);
}

void ms_broker_on_front(ms_broker *b, ms_frames_in *in, ms_wire_status st, const char *err) {
    if (!in->routing_id) return;
    if (st == MS_WIRE_MALFORMED) {
        b->c.malformed++;
        const char *id = in->peek.has_id ? in->peek.id : "";
        s_reply_error(b, in->routing_id, id, MS_CODE_BAD_REQUEST, "malformed message: %s", err);
        return;
    }
    switch (in->msg.type) {
    case MS_MSG_SUBMIT:
        s_on_submit(b, in);
        break;
    case MS_MSG_CANCEL:
        s_on_cancel(b, in);
        break;
    case MS_MSG_STATS_REQUEST:
        s_on_stats(b, in);
        break;
    default:
        b->c.malformed++;
        s_reply_error(b, in->routing_id, in->peek.has_id ? in->peek.id : "", MS_CODE_BAD_REQUEST,
                      "message type '%s' is not accepted on the producer socket (submit, "
                      "cancel, stats_request)",
                      ms_msg_type_name(in->msg.type));
        break;
    }
}
