/* test_openai.c — the gateway's pure parts (gateway/): OpenAI request
 * parsing and validation, error shapes, response and SSE rendering, base64,
 * image header probing, the Prometheus text format and its thread safety,
 * and the metric updates from broker events. The HTTP server itself is
 * tested against an in-test broker in test_gateway.c. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/imgprobe.h"
#include "gateway/metrics.h"
#include "gateway/observe.h"
#include "gateway/openai.h"
#include "ms_common.h"
#include "ms_test.h"

#define T_TIMEOUT 60 /* every test of this file (see ms_test.h) */

/* ---- helpers ------------------------------------------------------------------------- */
static uint8_t *s_file(const char *name, size_t *len) {
    char path[1024], err[MS_ERR_SIZE];
    snprintf(path, sizeof path, "%s/tests/data/images/%s", ms_test_source_dir(), name);
    uint8_t *d = ms_read_file(path, 64u << 20, len, err, sizeof err);
    cr_assert(d, "%s", err);
    return d;
}

static char *s_b64(const uint8_t *d, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = ms_xmalloc(4 * ((n + 2) / 3) + 1), *p = o;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0) |
                     (i + 2 < n ? d[i + 2] : 0);
        *p++ = tab[v >> 18 & 63];
        *p++ = tab[v >> 12 & 63];
        *p++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *p++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *p = 0;
    return o;
}

/* "data:<mime>;base64,<file>" */
static char *s_data_url(const char *file, const char *mime) {
    size_t n;
    uint8_t *d = s_file(file, &n);
    char *b = s_b64(d, n);
    char *url = ms_xmalloc(strlen(b) + 64);
    sprintf(url, "data:%s;base64,%s", mime, b);
    free(d);
    free(b);
    return url;
}

static int s_parse(ms_oai_kind kind, const char *body, ms_oai_request *r, ms_oai_error *e) {
    ms_oai_limits lim;
    ms_oai_limits_default(&lim);
    return ms_oai_parse(kind, body, strlen(body), &lim, r, e);
}

/* Expects body to fail with status and, if given, param and code. */
static void s_expect_error(ms_oai_kind kind, const char *body, int status, const char *param,
                           const char *code) {
    ms_oai_request r;
    ms_oai_error e;
    cr_assert_eq(s_parse(kind, body, &r, &e), -1, "accepted: %s", body);
    cr_assert_eq(e.status, status, "status %d for %s: %s", e.status, body, e.message);
    cr_assert(e.message[0], "no message for %s", body);
    if (param) cr_assert_str_eq(e.param, param, "param for %s: %s", body, e.message);
    if (code) cr_assert_str_eq(e.code, code, "code for %s: %s", body, e.message);
    cr_assert_eq(r.msg.type, MS_MSG_SUBMIT); /* finalized and re-initialised */
    cr_assert_null(r.model);
    cr_assert_eq(r.n_images, 0);
}

/* ---- chat parsing -------------------------------------------------------------------- */
Test(openai, chat_minimal, .timeout = T_TIMEOUT) {
    ms_oai_request r;
    ms_oai_error e;
    cr_assert_eq(s_parse(MS_OAI_CHAT,
                         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                         "\"Hello\"}]}",
                         &r, &e),
                 0, "%s", e.message);
    const ms_msg_submit *s = &r.msg.submit;
    cr_assert_str_eq(r.model, "m");
    cr_assert_not(r.stream);
    cr_assert(s->has_messages);
    cr_assert_eq(s->n_messages, 1);
    cr_assert_str_eq(s->messages[0].role, "user");
    cr_assert_str_eq(s->messages[0].content, "Hello");
    cr_assert_not(s->has_prompt);
    cr_assert(s->has_temperature);
    cr_assert_float_eq(s->temperature, MS_OAI_DEFAULT_TEMPERATURE, 0); /* OpenAI's default */
    cr_assert_not(s->has_max_tokens);                                  /* the broker's default */
    cr_assert_not(s->has_raw);
    cr_assert_null(s->id);
    /* a valid wire Submit once it has an id */
    r.msg.submit.id = ms_xstrdup("x");
    uint8_t *buf;
    size_t len;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_wire_encode_buf(&r.msg, &buf, &len, err, sizeof err), 0, "%s", err);
    free(buf);
    ms_oai_request_fini(&r);
    ms_oai_request_fini(&r); /* twice is safe */
}

Test(openai, chat_sampling_fields, .timeout = T_TIMEOUT) {
    ms_oai_request r;
    ms_oai_error e;
    const char *body =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\","
        "\"text\":\"b\"}],\"name\":\"bob\"},{\"role\":\"assistant\",\"content\":null},"
        "{\"role\":\"user\",\"content\":\"c\"}],"
        "\"max_tokens\":7,\"max_completion_tokens\":9,\"temperature\":0,\"top_p\":0.5,"
        "\"seed\":42,\"stop\":[\"x\",\"yz\"],\"n\":1,\"top_k\":-1,\"min_p\":0.1,"
        "\"presence_penalty\":0,\"frequency_penalty\":0,\"logprobs\":false,\"user\":\"u\","
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"tools\":[],"
        "\"tool_choice\":\"none\",\"response_format\":{\"type\":\"text\"},\"metadata\":{},"
        "\"logit_bias\":{},\"parallel_tool_calls\":false,\"seed\":null}";
    /* "seed" twice: a duplicate key is refused even when the second is null */
    cr_assert_eq(s_parse(MS_OAI_CHAT, body, &r, &e), -1);
    cr_assert_str_eq(e.param, "seed");
    char *fixed = ms_xstrdup(body);
    *strstr(fixed, ",\"seed\":null") = 0;
    strcat(fixed, "}");
    cr_assert_eq(s_parse(MS_OAI_CHAT, fixed, &r, &e), 0, "%s", e.message);
    free(fixed);
    const ms_msg_submit *s = &r.msg.submit;
    cr_assert_eq(s->n_messages, 4);
    cr_assert_str_eq(s->messages[0].role, "system"); /* developer → system */
    cr_assert_str_eq(s->messages[1].content, "a\nb");
    cr_assert_str_eq(s->messages[2].role, "assistant");
    cr_assert_str_eq(s->messages[2].content, "");
    cr_assert_eq(s->max_tokens, 9); /* max_completion_tokens wins */
    cr_assert_float_eq(s->temperature, 0, 0);
    cr_assert_float_eq(s->top_p, 0.5, 0);
    cr_assert(s->has_seed);
    cr_assert_eq(s->seed, 42);
    cr_assert_eq(s->n_stop, 2);
    cr_assert_str_eq(s->stop[1], "yz");
    cr_assert(s->has_top_k);
    cr_assert_eq(s->top_k, 0);
    cr_assert_float_eq(s->min_p, 0.1, 0);
    cr_assert(r.stream);
    cr_assert(r.include_usage);
    ms_oai_request_fini(&r);

    cr_assert_eq(s_parse(MS_OAI_CHAT,
                         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                         "\"content\":\"x\"}],\"stop\":\"END\",\"max_tokens\":null}",
                         &r, &e),
                 0, "%s", e.message);
    cr_assert_eq(r.msg.submit.n_stop, 1);
    cr_assert_str_eq(r.msg.submit.stop[0], "END");
    cr_assert_not(r.msg.submit.has_max_tokens); /* null is absent */
    ms_oai_request_fini(&r);
}

Test(openai, chat_images, .timeout = T_TIMEOUT) {
    char *png = s_data_url("p_1x1.png", "image/png");
    char *jpg = s_data_url("j_333x517.jpg", "image/jpeg");
    char *webp = s_data_url("w_40x30_lossy_alpha.webp", "image/webp");
    size_t body_len = strlen(png) + strlen(jpg) + strlen(webp) + 1024;
    char *body = ms_xmalloc(body_len);
    snprintf(body, body_len,
             "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":["
             "{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\",\"detail\":\"low\"}},"
             "{\"type\":\"text\",\"text\":\"Compare\"},"
             "{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}}]},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":\"%s\"}]}]}",
             png, jpg, webp);
    ms_oai_request r;
    ms_oai_error e;
    cr_assert_eq(s_parse(MS_OAI_CHAT, body, &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_images, 3);
    cr_assert_str_eq(r.msg.submit.messages[0].content, "<image>\nCompare\n<image>");
    cr_assert_str_eq(r.msg.submit.messages[1].content, "<image>");
    size_t n;
    uint8_t *jf = s_file("j_333x517.jpg", &n);
    cr_assert_eq(r.image_len[1], n);
    cr_assert_eq(memcmp(r.images[1], jf, n), 0);
    free(jf);
    cr_assert_eq(r.image_pixels, 1 + 333 * 517 + 40 * 30);
    ms_oai_request_fini(&r);

    /* limits: a third image over max_images, pixels over max_pixels */
    ms_oai_limits lim;
    ms_oai_limits_default(&lim);
    lim.max_images = 2;
    cr_assert_eq(ms_oai_parse(MS_OAI_CHAT, body, strlen(body), &lim, &r, &e), -1);
    cr_assert_eq(e.status, 400);
    cr_assert_str_eq(e.code, "too_many_images");
    ms_oai_limits_default(&lim);
    lim.max_pixels = 333 * 517 - 1;
    cr_assert_eq(ms_oai_parse(MS_OAI_CHAT, body, strlen(body), &lim, &r, &e), -1);
    cr_assert_eq(e.status, 413);
    cr_assert_str_eq(e.code, "image_too_large");
    cr_assert(strstr(e.message, "333x517"), "%s", e.message);
    ms_oai_limits_default(&lim);
    lim.max_image_bytes = 100;
    cr_assert_eq(ms_oai_parse(MS_OAI_CHAT, body, strlen(body), &lim, &r, &e), -1);
    cr_assert_eq(e.status, 413, "%d %s", e.status, e.message);
    lim.max_image_bytes = MS_WIRE_MAX_IMAGE_BYTES;
    lim.max_body_bytes = strlen(body) - 1;
    cr_assert_eq(ms_oai_parse(MS_OAI_CHAT, body, strlen(body), &lim, &r, &e), -1);
    cr_assert_eq(e.status, 413);
    cr_assert_str_eq(e.code, "request_too_large");
    free(body);
    free(png);
    free(jpg);
    free(webp);

    /* a decompression bomb is refused from its header */
    char *bomb = s_data_url("bomb_100000x100000.png", "image/png");
    body = ms_xmalloc(strlen(bomb) + 256);
    sprintf(body,
            "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
            "\"image_url\",\"image_url\":{\"url\":\"%s\"}}]}]}",
            bomb);
    cr_assert_eq(s_parse(MS_OAI_CHAT, body, &r, &e), -1);
    cr_assert_eq(e.status, 413);
    cr_assert(strstr(e.message, "100000x100000"), "%s", e.message);
    cr_assert_str_eq(e.param, "messages[0].content[0]");
    free(body);
    free(bomb);
}

Test(openai, chat_bad_requests, .timeout = T_TIMEOUT) {
    const ms_oai_kind C = MS_OAI_CHAT;
#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"
#define IMG(url)                                                                                   \
    "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","      \
    "\"image_url\":{\"url\":\"" url "\"}}]}]}"
    s_expect_error(C, "", 400, "", "invalid_json");
    s_expect_error(C, "  \n", 400, "", "invalid_json");
    s_expect_error(C, "{\"model\":", 400, "", "invalid_json");
    s_expect_error(C, "[1,2]", 400, "", "invalid_json");
    s_expect_error(C, "{\"model\":\"m\"," MSG "} x", 400, "", "invalid_json");
    s_expect_error(C, "{" MSG "}", 400, "model", "missing_required_parameter");
    s_expect_error(C, "{\"model\":\"m\"}", 400, "messages", "missing_required_parameter");
    s_expect_error(C, "{\"model\":\"\"," MSG "}", 400, "model", NULL);
    s_expect_error(C, "{\"model\":3," MSG "}", 400, "model", NULL);
    s_expect_error(C, "{\"model\":\"m\",\"messages\":[]}", 400, "messages", NULL);
    s_expect_error(C, "{\"model\":\"m\",\"messages\":{}}", 400, "messages", "invalid_type");
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"max_token\":5}", 400, "max_token",
                   "unknown_parameter");
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"model\":\"m\"}", 400, "model", NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"n\":2}", 400, "n", "unsupported_parameter");
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"temperature\":2.5}", 400, "temperature",
                   "invalid_value");
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"temperature\":\"hot\"}", 400, "temperature",
                   "invalid_type");
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"top_p\":0}", 400, "top_p", "invalid_value");
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"max_tokens\":0}", 400, "max_tokens", NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"max_tokens\":1.5}", 400, "max_tokens", NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"max_tokens\":40000}", 400, "max_tokens", NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"seed\":-1}", 400, "seed", NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"stop\":[\"\"]}", 400, "stop", NULL);
    s_expect_error(C,
                   "{\"model\":\"m\"," MSG ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\","
                   "\"g\",\"h\",\"i\"]}",
                   400, "stop", NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"stop\":[1]}", 400, "stop", NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"presence_penalty\":0.5}", 400, "presence_penalty",
                   "unsupported_parameter");
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"logprobs\":true}", 400, "logprobs", NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"tools\":[{\"type\":\"function\"}]}", 400, "tools",
                   NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"response_format\":{\"type\":\"json_object\"}}",
                   400, "response_format", NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"stream_options\":{\"include_usage\":true}}", 400,
                   "stream_options", NULL);
    s_expect_error(C, "{\"model\":\"m\"," MSG ",\"stream\":1}", 400, "stream", "invalid_type");
    s_expect_error(C, "{\"model\":\"m\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400,
                   "messages[0]", "unsupported_role");
    s_expect_error(C, "{\"model\":\"m\",\"messages\":[{\"role\":\"king\",\"content\":\"x\"}]}", 400,
                   "messages[0]", NULL);
    s_expect_error(C, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0]",
                   NULL);
    s_expect_error(C,
                   "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\","
                   "\"colour\":1}]}",
                   400, "messages[0]", "unknown_parameter");
    s_expect_error(C, "{\"model\":\"m\",\"messages\":[\"hi\"]}", 400, "messages[0]", NULL);
    s_expect_error(C,
                   "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                   "\"look: <image>\"}]}",
                   400, "messages[0].content", NULL);
    s_expect_error(C,
                   "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                   "\"input_audio\"}]}]}",
                   400, "messages[0].content[0]", "unsupported_content_type");
    s_expect_error(C,
                   "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                   "\"text\"}]}]}",
                   400, "messages[0].content[0]", NULL);
    s_expect_error(C,
                   "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":"
                   "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}}]}]}",
                   400, "messages[0].content[0]", NULL);
    s_expect_error(C, IMG("https://example.com/cat.png"), 400, "messages[0].content[0]",
                   "remote_image_disabled");
    s_expect_error(C, IMG("http://example.com/cat.png"), 400, NULL, "remote_image_disabled");
    s_expect_error(C, IMG("file:///etc/passwd"), 400, NULL, "invalid_image_url");
    s_expect_error(C, IMG("data:image/png;base64"), 400, NULL, "invalid_image_url");
    s_expect_error(C, IMG("data:image/png,iVBORw0KGgo="), 400, NULL, "invalid_image_url");
    s_expect_error(C, IMG("data:text/plain;base64,aGVsbG8="), 400, NULL, "unsupported_image_type");
    s_expect_error(C, IMG("data:image/png;base64,!!!!"), 400, NULL, "invalid_image");
    s_expect_error(C, IMG("data:image/png;base64,"), 400, NULL, "invalid_image");
    s_expect_error(C, IMG("data:image/png;base64,aGVsbG8gd29ybGQ="), 400, NULL, "invalid_image");
    /* nesting deeper than MS_OAI_MAX_DEPTH never reaches cJSON */
    char deep[2 * MS_OAI_MAX_DEPTH + 64];
    size_t k = 0;
    k += (size_t)sprintf(deep, "{\"model\":\"m\",\"metadata\":");
    for (int i = 0; i < MS_OAI_MAX_DEPTH; i++)
        deep[k++] = '[';
    deep[k] = 0;
    s_expect_error(C, deep, 400, "", "invalid_json");
#undef MSG
#undef IMG
}

/* ---- completions ---------------------------------------------------------------------------- */
Test(openai, completions, .timeout = T_TIMEOUT) {
    ms_oai_request r;
    ms_oai_error e;
    cr_assert_eq(s_parse(MS_OAI_COMPLETION,
                         "{\"model\":\"m\",\"prompt\":\"Once upon\","
                         "\"max_tokens\":5,\"echo\":false,\"suffix\":null,"
                         "\"best_of\":1,\"logprobs\":0}",
                         &r, &e),
                 0, "%s", e.message);
    cr_assert(r.msg.submit.has_prompt);
    cr_assert_str_eq(r.msg.submit.prompt, "Once upon");
    cr_assert(r.msg.submit.has_raw && r.msg.submit.raw);
    cr_assert_not(r.msg.submit.has_messages);
    cr_assert_eq(r.msg.submit.max_tokens, 5);
    ms_oai_request_fini(&r);
    cr_assert_eq(s_parse(MS_OAI_COMPLETION, "{\"model\":\"m\",\"prompt\":[\"one\"]}", &r, &e), 0);
    cr_assert_str_eq(r.msg.submit.prompt, "one");
    ms_oai_request_fini(&r);

    const ms_oai_kind P = MS_OAI_COMPLETION;
    s_expect_error(P, "{\"model\":\"m\"}", 400, "prompt", "missing_required_parameter");
    s_expect_error(P, "{\"model\":\"m\",\"prompt\":[1,2,3]}", 400, "prompt", NULL);
    s_expect_error(P, "{\"model\":\"m\",\"prompt\":[\"a\",\"b\"]}", 400, "prompt", NULL);
    s_expect_error(P, "{\"model\":\"m\",\"prompt\":[]}", 400, "prompt", NULL);
    s_expect_error(P, "{\"model\":\"m\",\"prompt\":\"x\",\"echo\":true}", 400, "echo", NULL);
    s_expect_error(P, "{\"model\":\"m\",\"prompt\":\"x\",\"messages\":[]}", 400, "messages",
                   "unknown_parameter");
    s_expect_error(P, "{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":3}", 400, "logprobs", NULL);
    /* and chat does not take a prompt */
    s_expect_error(MS_OAI_CHAT, "{\"model\":\"m\",\"prompt\":\"x\"}", 400, "prompt",
                   "unknown_parameter");
}

Test(openai, defaults_from_limits, .timeout = T_TIMEOUT) {
    ms_oai_limits lim;
    ms_oai_limits_default(&lim);
    lim.default_temperature = 0;
    lim.default_max_tokens = 33;
    const char *b = "{\"model\":\"m\",\"prompt\":\"x\"}";
    ms_oai_request r;
    ms_oai_error e;
    cr_assert_eq(ms_oai_parse(MS_OAI_COMPLETION, b, strlen(b), &lim, &r, &e), 0);
    cr_assert_float_eq(r.msg.submit.temperature, 0, 0);
    cr_assert(r.msg.submit.has_max_tokens);
    cr_assert_eq(r.msg.submit.max_tokens, 33);
    ms_oai_request_fini(&r);
}

/* ---- base64 and image headers ------------------------------------------------------------ */
Test(openai, base64, .timeout = T_TIMEOUT) {
    struct {
        const char *in, *out;
    } ok[] = {{"", ""},
              {"Zg==", "f"},
              {"Zm8=", "fo"},
              {"Zm9v", "foo"},
              {"Zm9vYg", "foob"},
              {"Zm9v\r\nYmFy", "foobar"},
              {"-_8=", "\xfb\xff"},
              {"+/8=", "\xfb\xff"}};
    char err[MS_ERR_SIZE];
    for (size_t i = 0; i < MS_ARRAY_LEN(ok); i++) {
        uint8_t *o;
        size_t n;
        cr_assert_eq(ms_oai_base64_decode(ok[i].in, strlen(ok[i].in), 100, &o, &n, err, sizeof err),
                     0, "%s: %s", ok[i].in, err);
        cr_assert_eq(n, strlen(ok[i].out), "%s", ok[i].in);
        cr_assert_eq(memcmp(o, ok[i].out, n), 0, "%s", ok[i].in);
        free(o);
    }
    const char *bad[] = {"Z", "Zm9vY", "Zg==Zg==", "Zg===", "Zm9v!", "Zg=\x80"};
    for (size_t i = 0; i < MS_ARRAY_LEN(bad); i++) {
        uint8_t *o = (uint8_t *)1;
        size_t n = 1;
        cr_assert_eq(ms_oai_base64_decode(bad[i], strlen(bad[i]), 100, &o, &n, err, sizeof err), -1,
                     "%s accepted", bad[i]);
        cr_assert_null(o);
        cr_assert_eq(n, 0);
    }
    uint8_t *o;
    size_t n;
    cr_assert_eq(ms_oai_base64_decode("Zm9vYmFy", 8, 5, &o, &n, err, sizeof err), -1);
    cr_assert(strstr(err, "limit"), "%s", err);
}

Test(openai, image_probe, .timeout = T_TIMEOUT) {
    struct {
        const char *file;
        ms_img_format fmt;
        uint32_t w, h;
    } cases[] = {{"j_333x517.jpg", MS_IMG_JPEG, 333, 517},
                 {"j_45x33_prog.jpg", MS_IMG_JPEG, 45, 33},
                 {"j_20x14_cmyk.jpg", MS_IMG_JPEG, 20, 14},
                 {"sample.jpg", MS_IMG_JPEG, 1024, 768},
                 {"p_1000x1.png", MS_IMG_PNG, 1000, 1},
                 {"p_23x13_palette4.png", MS_IMG_PNG, 23, 13},
                 {"w_40x30_lossy.webp", MS_IMG_WEBP, 40, 30},
                 {"w_40x30_lossless.webp", MS_IMG_WEBP, 40, 30},
                 {"w_40x30_lossy_alpha.webp", MS_IMG_WEBP, 40, 30},
                 {"w_7x3.webp", MS_IMG_WEBP, 7, 3},
                 {"bomb_100000x100000.png", MS_IMG_PNG, 100000, 100000},
                 {"bomb_65535x65535.jpg", MS_IMG_JPEG, 65535, 65535},
                 {"bomb_16383x16383.webp", MS_IMG_WEBP, 16383, 16383}};
    char err[MS_ERR_SIZE];
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        size_t n;
        uint8_t *d = s_file(cases[i].file, &n);
        ms_img_format f;
        uint32_t w, h;
        cr_assert_eq(ms_img_probe(d, n, &f, &w, &h, err, sizeof err), 0, "%s: %s", cases[i].file,
                     err);
        cr_assert_eq(f, cases[i].fmt, "%s", cases[i].file);
        cr_assert_eq(w, cases[i].w, "%s: w %u", cases[i].file, w);
        cr_assert_eq(h, cases[i].h, "%s: h %u", cases[i].file, h);
        /* every truncation of the header fails cleanly or still reads the same size */
        for (size_t cut = 0; cut < MS_MIN(n, (size_t)700); cut++) {
            uint8_t *t = ms_xmalloc(cut ? cut : 1);
            memcpy(t, d, cut);
            if (ms_img_probe(t, cut, &f, &w, &h, err, sizeof err) == 0)
                cr_assert(w == cases[i].w && h == cases[i].h, "%s cut at %zu", cases[i].file, cut);
            else
                cr_assert(err[0]);
            free(t);
        }
        free(d);
    }
    ms_img_format f;
    uint32_t w, h;
    cr_assert_eq(ms_img_probe((const uint8_t *)"GIF89a", 6, &f, &w, &h, err, sizeof err), -1);
    cr_assert_eq(f, MS_IMG_UNKNOWN);
    cr_assert_str_eq(ms_img_format_name(MS_IMG_WEBP), "webp");
}

/* ---- rendering ------------------------------------------------------------------------------ */
static cJSON *s_json(const char *s) {
    cJSON *j = cJSON_Parse(s);
    cr_assert(j, "not JSON: %s", s);
    return j;
}

/* The JSON of one SSE event "data: {...}\n\n". */
static cJSON *s_sse_json(const char *ev) {
    cr_assert_eq(strncmp(ev, "data: ", 6), 0, "%s", ev);
    size_t n = strlen(ev);
    cr_assert(n > 8 && ev[n - 1] == '\n' && ev[n - 2] == '\n', "%s", ev);
    cr_assert_eq(strchr(ev, '\n'), ev + n - 2, "a raw newline inside the event: %s", ev);
    char *j = ms_xstrndup(ev + 6, n - 8);
    cJSON *o = s_json(j);
    free(j);
    return o;
}

static const char *s_str(const cJSON *o, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, path);
    cr_assert(cJSON_IsString(v), "%s is not a string", path);
    return v->valuestring;
}

static ms_msg_done s_done(const char *finish) {
    ms_msg_done d;
    memset(&d, 0, sizeof d);
    d.finish = (char *)finish;
    d.prompt_tokens = 12;
    d.image_tokens = 4;
    d.completion_tokens = 3;
    d.queue_ms = 0.5;
    d.encode_ms = 2.25;
    d.e2e_ms = 9.0000001;
    return d;
}

Test(openai, error_shape, .timeout = T_TIMEOUT) {
    ms_oai_error e;
    cr_assert_eq(ms_oai_errorf(&e, 400, "top_p", "invalid_value", "bad \"%s\"", "x\xff"), -1);
    char *s = ms_oai_error_json(&e);
    cJSON *j = s_json(s);
    cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    cr_assert(cJSON_IsObject(err));
    cr_assert_str_eq(s_str(err, "message"), "bad \"x\xef\xbf\xbd\""); /* valid UTF-8 */
    cr_assert_str_eq(s_str(err, "type"), "invalid_request_error");
    cr_assert_str_eq(s_str(err, "param"), "top_p");
    cr_assert_str_eq(s_str(err, "code"), "invalid_value");
    cr_assert_eq(cJSON_GetArraySize(err), 4);
    cJSON_Delete(j);
    free(s);
    ms_oai_errorf(&e, 503, NULL, NULL, "down");
    s = ms_oai_error_json(&e);
    j = s_json(s);
    err = cJSON_GetObjectItemCaseSensitive(j, "error");
    cr_assert_str_eq(s_str(err, "type"), "server_error");
    cr_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(err, "param")));
    cr_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(err, "code")));
    cJSON_Delete(j);
    free(s);
    /* broker codes → HTTP */
    struct {
        const char *code;
        int status;
    } map[] = {{"bad_request", 400}, {"overloaded", 429}, {"unavailable", 503},
               {"timeout", 504},     {"internal", 500},   {"weird", 500}};
    for (size_t i = 0; i < MS_ARRAY_LEN(map); i++) {
        ms_oai_error_from_broker(&e, map[i].code, "m");
        cr_assert_eq(e.status, map[i].status, "%s", map[i].code);
        cr_assert_str_eq(e.code, map[i].code);
    }
    ms_oai_error_from_broker(&e, "overloaded", "");
    cr_assert_str_eq(e.type, "rate_limit_error");
    cr_assert(e.message[0]);
    cr_assert_str_eq(ms_oai_finish_reason("eog"), "stop");
    cr_assert_str_eq(ms_oai_finish_reason("stop"), "stop");
    cr_assert_str_eq(ms_oai_finish_reason("length"), "length");
    cr_assert_str_eq(ms_oai_finish_reason("cancel"), "abort");
}

Test(openai, whole_responses, .timeout = T_TIMEOUT) {
    ms_oai_meta m;
    ms_oai_meta_init(&m, MS_OAI_CHAT, "gw-1", "tiny", false);
    cr_assert_str_eq(m.id, "chatcmpl-gw-1");
    ms_msg_done d = s_done("eog");
    const char *hi = "Hi \xe2\x9c\x93 there";
    char *s = ms_oai_render_response(&m, hi, strlen(hi), &d);
    cJSON *j = s_json(s);
    cr_assert_str_eq(s_str(j, "id"), "chatcmpl-gw-1");
    cr_assert_str_eq(s_str(j, "object"), "chat.completion");
    cr_assert_str_eq(s_str(j, "model"), "tiny");
    cr_assert(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "created")));
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    cJSON *msg = cJSON_GetObjectItemCaseSensitive(c0, "message");
    cr_assert_str_eq(s_str(msg, "role"), "assistant");
    cr_assert_str_eq(s_str(msg, "content"), "Hi \xe2\x9c\x93 there");
    cr_assert_str_eq(s_str(c0, "finish_reason"), "stop");
    cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens")->valueint, 12);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(u, "completion_tokens")->valueint, 3);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(u, "total_tokens")->valueint, 15);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "timings");
    cr_assert_float_eq(cJSON_GetObjectItemCaseSensitive(t, "encode_ms")->valuedouble, 2.25, 0);
    cr_assert_float_eq(cJSON_GetObjectItemCaseSensitive(t, "e2e_ms")->valuedouble, 9.0, 0);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(t, "image_tokens")->valueint, 4);
    cJSON_Delete(j);
    free(s);

    ms_oai_meta_init(&m, MS_OAI_COMPLETION, "gw-2", "tiny", false);
    d = s_done("length");
    s = ms_oai_render_response(&m, "abc", 2, &d);
    j = s_json(s);
    cr_assert_str_eq(s_str(j, "id"), "cmpl-gw-2");
    cr_assert_str_eq(s_str(j, "object"), "text_completion");
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    cr_assert_str_eq(s_str(c0, "text"), "ab");
    cr_assert_str_eq(s_str(c0, "finish_reason"), "length");
    cJSON_Delete(j);
    free(s);

    s = ms_oai_models_json("tiny", 5);
    j = s_json(s);
    cr_assert_str_eq(s_str(j, "object"), "list");
    cJSON *m0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "data"), 0);
    cr_assert_str_eq(s_str(m0, "id"), "tiny");
    cr_assert_str_eq(s_str(m0, "object"), "model");
    cr_assert_str_eq(s_str(m0, "owned_by"), "modserve");
    cJSON_Delete(j);
    free(s);
}

Test(openai, sse_chunks, .timeout = T_TIMEOUT) {
    ms_oai_meta m;
    ms_oai_meta_init(&m, MS_OAI_CHAT, "gw-7", "tiny", true);
    char *s = ms_oai_sse_start(&m);
    cJSON *j = s_sse_json(s);
    cr_assert_str_eq(s_str(j, "object"), "chat.completion.chunk");
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
    cr_assert_str_eq(s_str(delta, "role"), "assistant");
    cr_assert_str_eq(s_str(delta, "content"), "");
    cr_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c0, "finish_reason")));
    cr_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "usage"))); /* include_usage */
    cJSON_Delete(j);
    free(s);

    s = ms_oai_sse_delta(&m, "line\n\"two\"\x01\xc3", 12); /* a cut UTF-8 char → U+FFFD */
    j = s_sse_json(s);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
    cr_assert_str_eq(s_str(delta, "content"), "line\n\"two\"\x01\xef\xbf\xbd");
    cr_assert_null(cJSON_GetObjectItemCaseSensitive(delta, "role"));
    cJSON_Delete(j);
    free(s);

    ms_msg_done d = s_done("stop");
    s = ms_oai_sse_finish(&m, &d);
    j = s_sse_json(s);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    cr_assert_str_eq(s_str(c0, "finish_reason"), "stop");
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(c0, "delta")), 0);
    cr_assert(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "timings")));
    cJSON_Delete(j);
    free(s);

    s = ms_oai_sse_usage(&m, &d);
    j = s_sse_json(s);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "choices")), 0);
    cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(u, "total_tokens")->valueint, 15);
    cJSON_Delete(j);
    free(s);

    ms_oai_error e;
    ms_oai_error_from_broker(&e, "internal", "actor died");
    s = ms_oai_sse_error(&e);
    j = s_sse_json(s);
    cr_assert_str_eq(s_str(cJSON_GetObjectItemCaseSensitive(j, "error"), "message"), "actor died");
    cJSON_Delete(j);
    free(s);
    cr_assert_str_eq(MS_OAI_SSE_DONE, "data: [DONE]\n\n");

    /* completions: no role chunk, text chunks, no usage key without include_usage */
    ms_oai_meta_init(&m, MS_OAI_COMPLETION, "gw-8", "tiny", false);
    cr_assert_null(ms_oai_sse_start(&m));
    s = ms_oai_sse_delta(&m, "xy", 2);
    j = s_sse_json(s);
    cr_assert_str_eq(s_str(j, "object"), "text_completion");
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    cr_assert_str_eq(s_str(c0, "text"), "xy");
    cr_assert_null(cJSON_GetObjectItemCaseSensitive(j, "usage"));
    cJSON_Delete(j);
    free(s);
    s = ms_oai_sse_finish(&m, &d);
    j = s_sse_json(s);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    cr_assert_str_eq(s_str(c0, "text"), "");
    cr_assert_str_eq(s_str(c0, "finish_reason"), "stop");
    cJSON_Delete(j);
    free(s);
}

/* ---- metrics text format ------------------------------------------------------------------ */
static char *s_render(ms_metrics *m) {
    char *t;
    size_t n;
    cr_assert_eq(ms_metrics_render(m, &t, &n), 0);
    cr_assert_eq(strlen(t), n);
    return t;
}

Test(metrics, text_format, .timeout = T_TIMEOUT) {
    ms_metrics *m = ms_metrics_new();
    char err[MS_ERR_SIZE];
    ms_metric *c =
        ms_metrics_counter(m, "ms:req_total", "Requests.\nSecond \\ line", NULL, err, sizeof err);
    ms_metric *g = ms_metrics_gauge(m, "ms_up", "Up.", "stage,state", err, sizeof err);
    const double b[] = {0.1, 1, 10};
    ms_metric *h =
        ms_metrics_histogram(m, "ms:lat_seconds", "Latency.", "stage", b, 3, err, sizeof err);
    ms_metric *h0 =
        ms_metrics_histogram(m, "ms:empty_seconds", "Empty.", NULL, b, 3, err, sizeof err);
    cr_assert(c && g && h && h0, "%s", err);
    ms_metric_add(c, NULL, 2);
    ms_metric_add(c, NULL, -5); /* ignored: counters only go up */
    ms_metric_add(c, NULL, NAN);
    ms_metric_set(g, (const char *[]){"enc\"ode", "a\\b\nc"}, 3);
    ms_metric_add(g, (const char *[]){"enc\"ode", "a\\b\nc"}, -1);
    ms_metric_observe(h, (const char *[]){"x"}, 0.05);
    ms_metric_observe(h, (const char *[]){"x"}, 0.1); /* le is inclusive */
    ms_metric_observe(h, (const char *[]){"x"}, 5);
    ms_metric_observe(h, (const char *[]){"x"}, 50);
    char *t = s_render(m);
    const char *want = "# HELP ms:req_total Requests.\\nSecond \\\\ line\n"
                       "# TYPE ms:req_total counter\n"
                       "ms:req_total 2\n"
                       "# HELP ms_up Up.\n"
                       "# TYPE ms_up gauge\n"
                       "ms_up{stage=\"enc\\\"ode\",state=\"a\\\\b\\nc\"} 2\n"
                       "# HELP ms:lat_seconds Latency.\n"
                       "# TYPE ms:lat_seconds histogram\n"
                       "ms:lat_seconds_bucket{stage=\"x\",le=\"0.1\"} 2\n"
                       "ms:lat_seconds_bucket{stage=\"x\",le=\"1\"} 2\n"
                       "ms:lat_seconds_bucket{stage=\"x\",le=\"10\"} 3\n"
                       "ms:lat_seconds_bucket{stage=\"x\",le=\"+Inf\"} 4\n"
                       "ms:lat_seconds_sum{stage=\"x\"} 55.15\n"
                       "ms:lat_seconds_count{stage=\"x\"} 4\n"
                       "# HELP ms:empty_seconds Empty.\n"
                       "# TYPE ms:empty_seconds histogram\n"
                       "ms:empty_seconds_bucket{le=\"0.1\"} 0\n"
                       "ms:empty_seconds_bucket{le=\"1\"} 0\n"
                       "ms:empty_seconds_bucket{le=\"10\"} 0\n"
                       "ms:empty_seconds_bucket{le=\"+Inf\"} 0\n"
                       "ms:empty_seconds_sum 0\n"
                       "ms:empty_seconds_count 0\n";
    cr_assert_str_eq(t, want);
    free(t);
    cr_assert_float_eq(ms_metric_value(c, NULL), 2, 0);
    cr_assert_float_eq(ms_metric_value(h, (const char *[]){"x"}), 4, 0);
    cr_assert_float_eq(ms_metric_value(h, (const char *[]){"y"}), 0, 0);

    /* bad definitions */
    cr_assert_null(ms_metrics_counter(m, "ms:req_total", "dup", NULL, err, sizeof err));
    cr_assert(strstr(err, "twice"), "%s", err);
    cr_assert_null(ms_metrics_counter(m, "9lives", "", NULL, err, sizeof err));
    cr_assert_null(ms_metrics_counter(m, "a-b", "", NULL, err, sizeof err));
    cr_assert_null(ms_metrics_gauge(m, "g1", "", "le", err, sizeof err));
    cr_assert_null(ms_metrics_gauge(m, "g2", "", "__x", err, sizeof err));
    cr_assert_null(ms_metrics_gauge(m, "g3", "", "a:b", err, sizeof err));
    cr_assert_null(ms_metrics_gauge(m, "g4", "", "a,a", err, sizeof err));
    cr_assert_null(ms_metrics_gauge(m, "g5", "", "a,b,c,d,e", err, sizeof err));
    const double bad_b[] = {1, 1};
    cr_assert_null(ms_metrics_histogram(m, "h1", "", NULL, bad_b, 2, err, sizeof err));
    cr_assert_null(ms_metrics_histogram(m, "h2", "", NULL, b, 0, err, sizeof err));
    const double inf_b[] = {1, INFINITY};
    cr_assert_null(ms_metrics_histogram(m, "h3", "", NULL, inf_b, 2, err, sizeof err));
    ms_metrics_destroy(&m);
    cr_assert_null(m);
    ms_metrics_destroy(&m);
}

Test(metrics, series_cap_and_numbers, .timeout = T_TIMEOUT) {
    ms_metrics *m = ms_metrics_new();
    char err[MS_ERR_SIZE];
    ms_metric *c = ms_metrics_counter(m, "per_id_total", "", "id", err, sizeof err);
    for (int i = 0; i < MS_METRICS_MAX_SERIES + 10; i++) {
        char id[32];
        snprintf(id, sizeof id, "r%d", i);
        ms_metric_add(c, (const char *[]){id}, 1);
    }
    cr_assert_eq(ms_metric_dropped(c), 10);
    cr_assert_float_eq(ms_metric_value(c, (const char *[]){"r0"}), 1, 0);
    cr_assert_float_eq(ms_metric_value(c, (const char *[]){"r300"}), 0, 0);
    ms_metrics_destroy(&m);

    char buf[48];
    cr_assert_str_eq(ms_metrics_format_double(10, buf, sizeof buf), "10");
    cr_assert_str_eq(ms_metrics_format_double(2560, buf, sizeof buf), "2560");
    cr_assert_str_eq(ms_metrics_format_double(0.1, buf, sizeof buf), "0.1");
    cr_assert_str_eq(ms_metrics_format_double(0.0025, buf, sizeof buf), "0.0025");
    cr_assert_str_eq(ms_metrics_format_double(1e-7, buf, sizeof buf), "1e-07");
    cr_assert_str_eq(ms_metrics_format_double(INFINITY, buf, sizeof buf), "+Inf");
    cr_assert_str_eq(ms_metrics_format_double(-INFINITY, buf, sizeof buf), "-Inf");
    cr_assert_str_eq(ms_metrics_format_double(NAN, buf, sizeof buf), "NaN");
    cr_assert_eq(strtod(ms_metrics_format_double(1.0 / 3, buf, sizeof buf), NULL), 1.0 / 3);
}

typedef struct {
    ms_metrics *m;
    ms_metric *h, *c;
    int id;
} s_hammer;

static void *s_hammer_run(void *arg) {
    s_hammer *x = arg;
    char lbl[8];
    snprintf(lbl, sizeof lbl, "t%d", x->id % 2);
    for (int i = 0; i < 20000; i++) {
        ms_metric_observe(x->h, (const char *[]){lbl}, (i % 100) / 100.0);
        ms_metric_add(x->c, NULL, 1);
        if (i % 1000 == 0) {
            char *t;
            size_t n;
            ms_metrics_render(x->m, &t, &n);
            free(t);
        }
    }
    return NULL;
}

Test(metrics, thread_safe, .timeout = T_TIMEOUT) {
    ms_metrics *m = ms_metrics_new();
    char err[MS_ERR_SIZE];
    const double b[] = {0.25, 0.5};
    ms_metric *h = ms_metrics_histogram(m, "h", "", "t", b, 2, err, sizeof err);
    ms_metric *c = ms_metrics_counter(m, "c_total", "", NULL, err, sizeof err);
    pthread_t th[4];
    s_hammer x[4];
    for (int i = 0; i < 4; i++) {
        x[i] = (s_hammer){m, h, c, i};
        pthread_create(&th[i], NULL, s_hammer_run, &x[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    cr_assert_float_eq(ms_metric_value(c, NULL), 80000, 0);
    cr_assert_float_eq(ms_metric_value(h, (const char *[]){"t0"}), 40000, 0);
    cr_assert_float_eq(ms_metric_value(h, (const char *[]){"t1"}), 40000, 0);
    char *t = s_render(m);
    /* i % 100 / 100 <= 0.25 for i%100 in 0..25: 26 of 100 → 10400 of 40000 */
    cr_assert(strstr(t, "h_bucket{t=\"t0\",le=\"0.25\"} 10400\n"), "%s", t);
    cr_assert(strstr(t, "h_bucket{t=\"t1\",le=\"+Inf\"} 40000\n"), "%s", t);
    free(t);
    ms_metrics_destroy(&m);
}

/* ---- metric updates from broker events ----------------------------------------------------- */
Test(metrics, observe_events, .timeout = T_TIMEOUT) {
    char err[MS_ERR_SIZE];
    ms_gw_observe *o = ms_gw_observe_new(err, sizeof err);
    cr_assert(o, "%s", err);
    ms_gw_req_info info = {.id = "r", .t_submit_ns = 1000000000, .t_prev_ns = 0, .n_images = 1};
    ms_msg ev;
    ms_msg_init(&ev, MS_MSG_TOKEN);
    int32_t ids[4] = {1, 2, 3, 4};
    ev.token.ids = ids;
    ev.token.n_ids = 1;
    ev.token.text = "a";
    ms_gw_observe_event(o, &info, &ev, 1250000000); /* TTFT 0.25 s */
    info.t_prev_ns = 1250000000;
    ev.token.n_ids = 4;
    ms_gw_observe_event(o, &info, &ev, 1290000000); /* 4 tokens in 40 ms: ITL 10 ms x 4 */
    ms_msg d;
    ms_msg_init(&d, MS_MSG_DONE);
    d.done = s_done("eog");
    d.done.completion_tokens = 5;
    d.done.decode_ms = 40;
    d.done.prefill_ms = 3;
    ms_gw_observe_event(o, &info, &d, 1300000000);
    ms_msg er;
    ms_msg_init(&er, MS_MSG_ERROR);
    er.error.code = "overloaded";
    er.error.message = "full";
    info.n_images = 0;
    ms_gw_observe_event(o, &info, &er, 1300000000);
    ms_gw_observe_http(o, "chat", 200);
    ms_gw_observe_http(o, "chat", 200);
    ms_gw_observe_requests(o, 3, 2);
    ms_actor_info a[2];
    memset(a, 0, sizeof a);
    a[0].stages = MS_STAGES_ENCODE;
    a[0].queued_image_tokens = 7;
    a[1].stages = MS_STAGES_TEXT;
    a[1].state = MS_ACTOR_DRAINING;
    a[1].queued_prompt_tokens = 11;
    a[1].running_seqs = 2;
    a[1].free_kv_blocks = 100;
    ms_gw_observe_registry(o, a, 2, true);
    ms_gw_observe_broker(o, NULL);
    char *t = s_render(ms_gw_observe_metrics(o));
    const char *want[] = {
        "modserve:time_to_first_token_seconds_bucket{le=\"0.1\"} 0\n",
        "modserve:time_to_first_token_seconds_bucket{le=\"0.25\"} 1\n",
        "modserve:time_to_first_token_seconds_count 1\n",
        "modserve:inter_token_latency_seconds_bucket{le=\"0.01\"} 4\n",
        "modserve:inter_token_latency_seconds_count 4\n",
        "modserve:e2e_request_latency_seconds_count 2\n",
        "modserve:request_queue_time_seconds_sum 0.0005\n",
        "modserve:generation_tokens_total 5\n",
        "modserve:prompt_tokens_total 12\n",
        "modserve:image_tokens_total 4\n",
        "modserve:request_success_total{finished_reason=\"stop\"} 1\n",
        "modserve:request_errors_total{code=\"overloaded\"} 1\n",
        "modserve:http_requests_total{endpoint=\"chat\",status=\"200\"} 2\n",
        "modserve:num_requests_waiting 3\n",
        "modserve:num_requests_running 2\n",
        "modserve:stage_latency_seconds_count{stage=\"encode\",modality=\"image\"} 1\n",
        "modserve:stage_latency_seconds_sum{stage=\"decode_step\",modality=\"image\"} 0.01\n",
        "modserve:stage_latency_seconds_sum{stage=\"prefill\",modality=\"image\"} 0.003\n",
        "modserve:stage_instances{stage=\"encode\",state=\"up\"} 1\n",
        "modserve:stage_instances{stage=\"decode\",state=\"draining\"} 1\n",
        "modserve:stage_instances{stage=\"decode\",state=\"up\"} 0\n",
        "modserve:stage_queued_tokens{stage=\"encode\"} 7\n",
        "modserve:stage_queued_tokens{stage=\"prefill\"} 11\n",
        "modserve:running_sequences 2\n",
        "modserve:kv_free_blocks 100\n",
        "modserve:registry_up 1\n",
        "modserve:broker_up 0\n",
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(want); i++)
        cr_assert(strstr(t, want[i]), "missing: %s", want[i]);
    /* stages the request did not use are not observed */
    cr_assert_null(strstr(t, "stage=\"transfer\""));
    free(t);
    ms_gw_observe_destroy(&o);
}
