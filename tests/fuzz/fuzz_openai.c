/* fuzz_openai.c — arbitrary bytes into the gateway's OpenAI request parser
 * (gateway/openai.h) and the image header probe (gateway/imgprobe.h).
 *
 * The first byte picks the endpoint (chat / completions) and the limits
 * (small ones too, so the limit paths run); the rest is the body. Any input
 * must parse or fail with an OpenAI error (a 4xx status, a message) without
 * crashing, reading out of bounds (ASan) or leaking. What parses must be a
 * Submit the wire encoder accepts (once it has an id) with images that
 * probe within the limits; its error and SSE renderings must be JSON.
 * Seeds: tests/fuzz/corpus/openai/ (hand-written requests, good and bad;
 * the first byte of each is the selector).
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/imgprobe.h"
#include "gateway/openai.h"
#include "ms_common.h"
#include "wire.h"

static void s_json_or_abort(char *s, size_t skip) {
    if (!s) abort();
    cJSON *j = cJSON_Parse(s + skip);
    if (!j) abort();
    cJSON_Delete(j);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    uint8_t sel = data[0];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;

    ms_oai_limits lim;
    ms_oai_limits_default(&lim);
    if (sel & 2) { /* tight limits */
        lim.max_images = 1;
        lim.max_pixels = 64;
        lim.max_image_bytes = 256;
        lim.max_body_bytes = 4096;
    }
    ms_oai_kind kind = (sel & 1) ? MS_OAI_COMPLETION : MS_OAI_CHAT;

    ms_oai_request r;
    ms_oai_error e;
    int rc = ms_oai_parse(kind, body, len, &lim, &r, &e);
    if (rc != 0) {
        if (e.status < 400 || e.status > 499 || !e.message[0] || !e.type) abort();
        if (r.model || r.n_images || r.msg.type != MS_MSG_SUBMIT) abort();
        s_json_or_abort(ms_oai_error_json(&e), 0);
        s_json_or_abort(ms_oai_sse_error(&e), 6);
        return 0;
    }
    /* a valid request */
    if (!r.model || !*r.model) abort();
    if (r.n_images > lim.max_images) abort();
    const ms_msg_submit *s = &r.msg.submit;
    if (kind == MS_OAI_CHAT && (!s->has_messages || s->n_messages == 0)) abort();
    if (kind == MS_OAI_COMPLETION && (!s->has_prompt || !s->raw)) abort();
    for (uint32_t i = 0; i < r.n_images; i++) {
        ms_img_format f;
        uint32_t w, h;
        char err[MS_ERR_SIZE];
        if (r.image_len[i] > lim.max_image_bytes) abort();
        if (ms_img_probe(r.images[i], r.image_len[i], &f, &w, &h, err, sizeof err) != 0) abort();
        if ((uint64_t)w * h > lim.max_pixels) abort();
    }
    r.msg.submit.id = ms_xstrdup("fuzz-1");
    r.msg.submit.n_images = r.n_images;
    r.msg.submit.has_n_images = r.n_images > 0;
    uint8_t *buf = NULL;
    size_t blen = 0;
    char err[MS_ERR_SIZE];
    if (ms_wire_encode_buf(&r.msg, &buf, &blen, err, sizeof err) != 0) abort();
    ms_msg back;
    if (ms_wire_decode(buf, blen, &back, err, sizeof err) != MS_WIRE_OK) abort();
    ms_msg_fini(&back);
    free(buf);

    /* render what a response to it could look like, with its own text */
    ms_oai_meta m;
    ms_oai_meta_init(&m, kind, "fuzz-1", r.model, r.include_usage);
    ms_msg_done d;
    memset(&d, 0, sizeof d);
    d.finish = "eog";
    s_json_or_abort(ms_oai_sse_delta(&m, body, len), 6);
    s_json_or_abort(ms_oai_render_response(&m, body, len, &d), 0);
    ms_oai_request_fini(&r);
    return 0;
}
