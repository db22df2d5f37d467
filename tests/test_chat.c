/* test_chat.c — template detection, exact rendering per family, image
 * placement and prompt tokenization with image placeholders. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "ms_common.h"
#include "ms_test.h"

#define S_MSG(r, t, n) ((ms_chat_message){.role = (r), .text = (t), .n_images = (n)})

/* Renders and compares with the expected text exactly. */
static void s_expect_render(ms_chat_template t, const ms_chat_message *msgs, int n, bool add_gen,
                            const char *want, int want_images) {
    char err[MS_ERR_SIZE] = "";
    int n_images = -1;
    char *got = ms_chat_render(t, msgs, n, add_gen, &n_images, err, sizeof(err));
    cr_assert_not_null(got, "%s: %s", ms_chat_template_name(t), err);
    cr_assert_str_eq(got, want, "%s rendered\n[%s]\nexpected\n[%s]", ms_chat_template_name(t), got,
                     want);
    cr_assert_eq(n_images, want_images);
    free(got);
}

/* A conversation used by several families: system, user, assistant, user. */
static const ms_chat_message s_conv[] = {
    {MS_CHAT_SYSTEM, "You are a helpful assistant", 0},
    {MS_CHAT_USER, "Hello", 0},
    {MS_CHAT_ASSISTANT, "Hi there", 0},
    {MS_CHAT_USER, "Who are you", 0},
};

/* ---- rendering, per family ------------------------------------------------ */

Test(chat_render, chatml, .timeout = 10) {
    s_expect_render(MS_CHAT_CHATML, s_conv, 4, true,
                    "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
                    "<|im_start|>user\nHello<|im_end|>\n"
                    "<|im_start|>assistant\nHi there<|im_end|>\n"
                    "<|im_start|>user\nWho are you<|im_end|>\n"
                    "<|im_start|>assistant\n",
                    0);
    /* no generation prompt; text is not trimmed */
    ms_chat_message m[] = {S_MSG(MS_CHAT_USER, "  spaced \n", 0)};
    s_expect_render(MS_CHAT_CHATML, m, 1, false, "<|im_start|>user\n  spaced \n<|im_end|>\n", 0);
}

Test(chat_render, llama3, .timeout = 10) {
    s_expect_render(MS_CHAT_LLAMA3, s_conv, 4, true,
                    "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant"
                    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n",
                    0);
    /* llama 3 trims each message */
    ms_chat_message m[] = {S_MSG(MS_CHAT_USER, " \n Hello  \t\n", 0)};
    s_expect_render(MS_CHAT_LLAMA3, m, 1, false,
                    "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>", 0);
}

Test(chat_render, vicuna_llava, .timeout = 10) {
    s_expect_render(MS_CHAT_VICUNA, s_conv, 4, true,
                    "You are a helpful assistant\n\n"
                    "USER: Hello\n"
                    "ASSISTANT: Hi there</s>\n"
                    "USER: Who are you\n"
                    "ASSISTANT:",
                    0);
    s_expect_render(MS_CHAT_VICUNA_ORCA, s_conv, 4, true,
                    "SYSTEM: You are a helpful assistant\n"
                    "USER: Hello\n"
                    "ASSISTANT: Hi there</s>\n"
                    "USER: Who are you\n"
                    "ASSISTANT:",
                    0);
    /* the LLaVA-1.5 prompt: image first, then the question */
    ms_chat_message m[] = {S_MSG(MS_CHAT_USER, "What is shown?", 1)};
    s_expect_render(MS_CHAT_VICUNA, m, 1, true, "USER: <image>\nWhat is shown?\nASSISTANT:", 1);
}

Test(chat_render, llama2_variants, .timeout = 10) {
    s_expect_render(MS_CHAT_LLAMA2, s_conv, 4, true,
                    "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>"
                    "[INST] Who are you [/INST]",
                    0);
    s_expect_render(MS_CHAT_LLAMA2_SYS, s_conv, 4, true,
                    "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\n"
                    "Hello [/INST]Hi there</s>[INST] Who are you [/INST]",
                    0);
    s_expect_render(MS_CHAT_LLAMA2_SYS_BOS, s_conv, 4, true,
                    "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\n"
                    "Hello [/INST]Hi there</s><s>[INST] Who are you [/INST]",
                    0);
    ms_chat_message spaced[] = {
        S_MSG(MS_CHAT_SYSTEM, " sys ", 0),
        S_MSG(MS_CHAT_USER, "  Hello ", 0),
        S_MSG(MS_CHAT_ASSISTANT, "   I am an assistant   ", 0),
        S_MSG(MS_CHAT_USER, "Another", 0),
    };
    s_expect_render(MS_CHAT_LLAMA2_SYS_STRIP, spaced, 4, true,
                    "[INST] <<SYS>>\nsys\n<</SYS>>\n\nHello [/INST]I am an assistant</s>"
                    "[INST] Another [/INST]",
                    0);
    s_expect_render(MS_CHAT_LLAMA2_SYS, spaced, 4, false,
                    "[INST] <<SYS>>\n sys \n<</SYS>>\n\n  Hello  [/INST]   I am an assistant   </s>"
                    "[INST] Another [/INST]",
                    0);
}

Test(chat_render, plain_and_raw, .timeout = 10) {
    s_expect_render(MS_CHAT_PLAIN, s_conv, 4, true,
                    "You are a helpful assistant\nHello\nHi there\nWho are you\n", 0);
    ms_chat_message m[] = {S_MSG(MS_CHAT_USER, "Caption: ", 2)};
    s_expect_render(MS_CHAT_RAW, m, 1, true, "<image>\n<image>\nCaption: ", 2);
    ms_chat_message empty[] = {S_MSG(MS_CHAT_USER, "", 0)};
    s_expect_render(MS_CHAT_RAW, empty, 1, true, "", 0);
}

/* ---- images --------------------------------------------------------------- */

Test(chat_render, images_at_markers_and_across_messages, .timeout = 10) {
    ms_chat_message m[] = {
        S_MSG(MS_CHAT_USER, "Compare <image> with <image>.", 2),
        S_MSG(MS_CHAT_ASSISTANT, "They differ.", 0),
        S_MSG(MS_CHAT_USER, "And this one?", 1),
    };
    s_expect_render(MS_CHAT_CHATML, m, 3, true,
                    "<|im_start|>user\nCompare <image> with <image>.<|im_end|>\n"
                    "<|im_start|>assistant\nThey differ.<|im_end|>\n"
                    "<|im_start|>user\n<image>\nAnd this one?<|im_end|>\n"
                    "<|im_start|>assistant\n",
                    3);
}

/* Expects rendering to fail with a message containing word. */
static void s_expect_render_error(ms_chat_template t, const ms_chat_message *msgs, int n,
                                  const char *word) {
    char err[MS_ERR_SIZE] = "";
    int n_images = -1;
    char *got = ms_chat_render(t, msgs, n, true, &n_images, err, sizeof(err));
    cr_assert_null(got, "accepted: [%s]", got ? got : "");
    cr_assert(strstr(err, word) != NULL, "message '%s' does not contain '%s'", err, word);
}

Test(chat_render, errors, .timeout = 10) {
    ms_chat_message two_markers[] = {S_MSG(MS_CHAT_USER, "<image> and <image>", 1)};
    s_expect_render_error(MS_CHAT_CHATML, two_markers, 1, "2 <image> markers");
    ms_chat_message marker_no_image[] = {S_MSG(MS_CHAT_SYSTEM, "use <image> tags", 0)};
    s_expect_render_error(MS_CHAT_CHATML, marker_no_image, 1, "0 images");
    ms_chat_message negative[] = {S_MSG(MS_CHAT_USER, "x", -1)};
    s_expect_render_error(MS_CHAT_CHATML, negative, 1, "images");
    ms_chat_message many[] = {S_MSG(MS_CHAT_USER, "x", MS_MAX_IMAGES_PER_PROMPT),
                              S_MSG(MS_CHAT_USER, "y", 1)};
    s_expect_render_error(MS_CHAT_CHATML, many, 2, "message 1");
    ms_chat_message bad_role[] = {S_MSG((ms_chat_role)7, "x", 0)};
    s_expect_render_error(MS_CHAT_CHATML, bad_role, 1, "role");
    ms_chat_message null_text[] = {S_MSG(MS_CHAT_USER, NULL, 0)};
    s_expect_render_error(MS_CHAT_CHATML, null_text, 1, "no text");
    s_expect_render_error(MS_CHAT_CHATML, s_conv, 0, "messages");
    s_expect_render_error((ms_chat_template)99, s_conv, 1, "template");
}

/* ---- detection ------------------------------------------------------------ */

Test(chat_detect, families_from_jinja, .timeout = 10) {
    /* excerpts of the templates shipped with well-known models */
    const char *qwen2 =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    const char *llava15 =
        "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}"
        "ASSISTANT: {% endif %}{% for item in message['content'] %}{% if item['type'] == 'text' "
        "%}{{ item['text'] }}{% elif item['type'] == 'image' %}<image>{% endif %}{% endfor %}"
        "{% if message['role'] == 'user' %} {% else %}{{eos_token}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT: {% endif %}";
    const char *llama2 =
        "{% if messages[0]['role'] == 'system' %}{% set system_message = '<<SYS>>\\n' + "
        "messages[0]['content'] | trim + '\\n<</SYS>>\\n\\n' %}{% endif %}{% for message in "
        "loop_messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content "
        "| trim + ' [/INST]' }}{% endif %}{% endfor %}";
    const char *mistral =
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + "
        "eos_token}}{% endif %}{% endfor %}";
    const char *orca = "{% if message['role'] == 'system' %}SYSTEM: {{ x }}\n{% endif %}USER: "
                       "{{ y }}\nASSISTANT: ";
    const char *gemma = "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim }}";
    cr_assert_eq(ms_chat_detect(qwen2), MS_CHAT_CHATML);
    cr_assert_eq(ms_chat_detect(llava15), MS_CHAT_VICUNA);
    cr_assert_eq(ms_chat_detect(orca), MS_CHAT_VICUNA_ORCA);
    cr_assert_eq(ms_chat_detect(llama2), MS_CHAT_LLAMA2_SYS_BOS);
    cr_assert_eq(ms_chat_detect(mistral), MS_CHAT_LLAMA2);
    cr_assert_eq(ms_chat_detect("{{ '[INST] ' + content.strip() + ' [/INST]' }}"),
                 MS_CHAT_LLAMA2_SYS_STRIP);
    cr_assert_eq(ms_chat_detect("<<SYS>> [INST]"), MS_CHAT_LLAMA2_SYS);
    cr_assert_eq(ms_chat_detect(gemma), MS_CHAT_PLAIN);
    cr_assert_eq(ms_chat_detect("<|im_start|>{{ role }}<|im_sep|>"), MS_CHAT_PLAIN); /* phi-4 */
    cr_assert_eq(ms_chat_detect(NULL), MS_CHAT_CHATML);
    cr_assert_eq(ms_chat_detect(""), MS_CHAT_CHATML);
    cr_assert_eq(ms_chat_detect("llama3"), MS_CHAT_LLAMA3);
    cr_assert_eq(ms_chat_detect("vicuna"), MS_CHAT_VICUNA);
    cr_assert_eq(ms_chat_detect("raw"), MS_CHAT_RAW);
}

Test(chat_detect, llama3_template_of_the_shared_tokenizer, .timeout = 10) {
    const char *path =
        ms_test_path(ms_test_shared_dir(), "data/tokenizers/llama3.tokenizer_config.json");
    char err[MS_ERR_SIZE];
    size_t len = 0;
    uint8_t *bytes = ms_read_file(path, 1u << 24, &len, err, sizeof(err));
    cr_assert_not_null(bytes, "%s", err);
    cJSON *root = cJSON_ParseWithLength((const char *)bytes, len);
    cr_assert_not_null(root);
    const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    cr_assert(cJSON_IsString(tmpl));
    cr_assert_eq(ms_chat_detect(tmpl->valuestring), MS_CHAT_LLAMA3);
    cJSON_Delete(root);
    free(bytes);
}

Test(chat_detect, names_round_trip, .timeout = 10) {
    char err[MS_ERR_SIZE];
    for (int t = 0; t < MS_CHAT_TEMPLATE_COUNT; t++) {
        ms_chat_template got = MS_CHAT_TEMPLATE_COUNT;
        cr_assert_eq(ms_chat_template_from_name(ms_chat_template_name((ms_chat_template)t), &got,
                                                err, sizeof(err)),
                     0);
        cr_assert_eq((int)got, t);
    }
    ms_chat_template got;
    cr_assert_eq(ms_chat_template_from_name("jinja2", &got, err, sizeof(err)), -1);
    cr_assert(strstr(err, "chatml") != NULL, "%s", err);
}

/* ---- tokenization --------------------------------------------------------- */

/* A byte-level (gpt2) vocabulary without merges: ids 0..255 are the bytes,
 * then <s>, </s>, <|im_start|>, <|im_end|> as control tokens. Every byte of
 * plain text is one token, so expected ids can be written down. */
enum { S_BOS = 256, S_EOS = 257, S_IM_START = 258, S_IM_END = 259, S_N_TOKENS = 260 };

/* GPT-2's bytes_to_unicode: byte → code point of its printable stand-in. */
static unsigned s_byte_cp(unsigned b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
    return 256 + n;
}

static char *s_utf8(unsigned cp) {
    char buf[4];
    if (cp < 0x80) {
        buf[0] = (char)cp;
        buf[1] = 0;
    } else {
        buf[0] = (char)(0xC0 | (cp >> 6));
        buf[1] = (char)(0x80 | (cp & 0x3F));
        buf[2] = 0;
    }
    return ms_xstrdup(buf);
}

static ms_tokenizer *s_byte_tokenizer(bool add_bos) {
    static int32_t types[S_N_TOKENS];
    static char *tokens[S_N_TOKENS];
    for (unsigned b = 0; b < 256; b++) {
        tokens[b] = s_utf8(s_byte_cp(b));
        types[b] = MS_TOKEN_NORMAL;
    }
    const char *special[] = {"<s>", "</s>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 4; i++) {
        tokens[256 + i] = ms_xstrdup(special[i]);
        types[256 + i] = MS_TOKEN_CONTROL;
    }
    ms_vocab v = {0};
    strcpy(v.model, "gpt2");
    strcpy(v.pre, "default");
    v.n_tokens = S_N_TOKENS;
    v.tokens = tokens;
    v.types = types;
    v.bos_id = S_BOS;
    v.eos_id = S_EOS;
    v.eot_id = S_IM_END;
    v.unk_id = -1;
    v.pad_id = -1;
    v.add_bos = add_bos;
    char err[MS_ERR_SIZE];
    ms_tokenizer *t = ms_tokenizer_new(&v, err, sizeof(err));
    cr_assert_not_null(t, "%s", err);
    for (int i = 0; i < S_N_TOKENS; i++)
        free(tokens[i]);
    return t;
}

/* Appends the byte ids of s to ids. */
static int s_bytes(int32_t *ids, int n, const char *s) {
    for (; *s; s++)
        ids[n++] = (unsigned char)*s;
    return n;
}

static void s_expect_ids(const int32_t *got, int n_got, const int32_t *want, int n_want) {
    char a[2048] = "", b[2048] = "";
    for (int i = 0; i < n_got && strlen(a) < 2000; i++)
        snprintf(a + strlen(a), sizeof(a) - strlen(a), "%d ", got[i]);
    for (int i = 0; i < n_want && strlen(b) < 2000; i++)
        snprintf(b + strlen(b), sizeof(b) - strlen(b), "%d ", want[i]);
    cr_assert_eq(n_got, n_want, "got %d ids [%s], expected %d [%s]", n_got, a, n_want, b);
    for (int i = 0; i < n_want; i++)
        cr_assert_eq(got[i], want[i], "id %d: got [%s], expected [%s]", i, a, b);
}

Test(chat_tokenize, chatml_with_an_image, .timeout = 10) {
    ms_tokenizer *tok = s_byte_tokenizer(true);
    ms_chat_message m[] = {S_MSG(MS_CHAT_USER, "Describe", 1)};
    int32_t *prompt = NULL;
    int n = 0, n_images = 0;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_chat_build_prompt(tok, MS_CHAT_CHATML, m, 1, true, &prompt, &n, &n_images, err,
                                      sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(n_images, 1);
    int32_t want[128];
    int k = 0;
    want[k++] = S_BOS;
    want[k++] = S_IM_START;
    k = s_bytes(want, k, "user\n");
    want[k++] = MS_PROMPT_IMAGE(0);
    k = s_bytes(want, k, "\nDescribe");
    want[k++] = S_IM_END;
    k = s_bytes(want, k, "\n");
    want[k++] = S_IM_START;
    k = s_bytes(want, k, "assistant\n");
    s_expect_ids(prompt, n, want, k);
    free(prompt);
    ms_tokenizer_destroy(&tok);
}

Test(chat_tokenize, images_numbered_in_order_and_at_the_edges, .timeout = 10) {
    ms_tokenizer *tok = s_byte_tokenizer(true);
    const char *text = "<image>a<image><image>b<|im_end|><image>";
    int32_t *prompt = NULL;
    int n = 0;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_chat_tokenize(tok, text, strlen(text), 4, &prompt, &n, err, sizeof(err)), 0,
                 "%s", err);
    const int32_t want[] = {
        S_BOS,    MS_PROMPT_IMAGE(0), 'a', MS_PROMPT_IMAGE(1), MS_PROMPT_IMAGE(2), 'b',
        S_IM_END, MS_PROMPT_IMAGE(3)};
    s_expect_ids(prompt, n, want, (int)MS_ARRAY_LEN(want));
    for (int i = 0; i < n; i++)
        if (MS_PROMPT_IS_IMAGE(prompt[i])) cr_assert_lt(MS_PROMPT_IMAGE_INDEX(prompt[i]), 4);
    free(prompt);
    ms_tokenizer_destroy(&tok);
}

Test(chat_tokenize, no_bos_when_the_vocab_says_so, .timeout = 10) {
    ms_tokenizer *tok = s_byte_tokenizer(false);
    int32_t *prompt = NULL;
    int n = 0;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_chat_tokenize(tok, "<image>hi", 9, 1, &prompt, &n, err, sizeof(err)), 0, "%s",
                 err);
    const int32_t want[] = {MS_PROMPT_IMAGE(0), 'h', 'i'};
    s_expect_ids(prompt, n, want, 3);
    free(prompt);
    /* text only, special tokens parsed */
    cr_assert_eq(ms_chat_tokenize(tok, "x</s>", 5, 0, &prompt, &n, err, sizeof(err)), 0, "%s", err);
    const int32_t want2[] = {'x', S_EOS};
    s_expect_ids(prompt, n, want2, 2);
    free(prompt);
    ms_tokenizer_destroy(&tok);
}

Test(chat_tokenize, marker_count_must_match, .timeout = 10) {
    ms_tokenizer *tok = s_byte_tokenizer(true);
    int32_t *prompt = (int32_t *)1;
    int n = 5;
    char err[MS_ERR_SIZE] = "";
    const char *text = "<image> and <image>";
    cr_assert_eq(ms_chat_tokenize(tok, text, strlen(text), 1, &prompt, &n, err, sizeof(err)), -1);
    cr_assert(strstr(err, "2 <image> markers but 1 image") != NULL, "%s", err);
    cr_assert_null(prompt);
    cr_assert_eq(n, 0);
    cr_assert_eq(ms_chat_tokenize(tok, "plain", 5, 2, &prompt, &n, err, sizeof(err)), -1);
    cr_assert(strstr(err, "0 <image> markers but 2 images") != NULL, "%s", err);
    /* a marker cut by len is not a marker */
    cr_assert_eq(ms_chat_tokenize(tok, "ab<image>", 6, 0, &prompt, &n, err, sizeof(err)), 0, "%s",
                 err);
    const int32_t want[] = {S_BOS, 'a', 'b', '<', 'i', 'm', 'a'};
    s_expect_ids(prompt, n, want, 7);
    free(prompt);
    ms_tokenizer_destroy(&tok);
}

Test(chat_tokenize, llama3_vocab_special_tokens, .timeout = 60) {
    const char *path = ms_test_path(ms_test_shared_dir(), "data/tokenizers/llama3.tokenizer.json");
    ms_vocab v = {0};
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_vocab_load_json(path, &v, err, sizeof(err)), 0, "%s", err);
    v.add_bos = true;
    ms_tokenizer *tok = ms_tokenizer_new(&v, err, sizeof(err));
    cr_assert_not_null(tok, "%s", err);
    int32_t bos = ms_tokenizer_find(tok, "<|begin_of_text|>");
    int32_t hdr = ms_tokenizer_find(tok, "<|start_header_id|>");
    int32_t end_hdr = ms_tokenizer_find(tok, "<|end_header_id|>");
    int32_t eot = ms_tokenizer_find(tok, "<|eot_id|>");
    cr_assert_eq(hdr, 128006);
    cr_assert_eq(end_hdr, 128007);
    cr_assert_eq(eot, 128009);
    ms_chat_message m[] = {S_MSG(MS_CHAT_USER, "What is in <image>?", 1)};
    int32_t *prompt = NULL;
    int n = 0, n_images = 0;
    cr_assert_eq(ms_chat_build_prompt(tok, MS_CHAT_LLAMA3, m, 1, true, &prompt, &n, &n_images, err,
                                      sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(n_images, 1);
    if (v.bos_id >= 0) cr_assert_eq(prompt[0], bos);
    int first = v.bos_id >= 0 ? 1 : 0;
    cr_assert_eq(prompt[first], hdr);
    int n_img = 0, n_hdr = 0, n_eot = 0;
    for (int i = 0; i < n; i++) {
        n_img += MS_PROMPT_IS_IMAGE(prompt[i]);
        n_hdr += prompt[i] == hdr;
        n_eot += prompt[i] == eot;
        if (!MS_PROMPT_IS_IMAGE(prompt[i])) cr_assert_lt(prompt[i], v.n_tokens);
    }
    cr_assert_eq(n_img, 1);
    cr_assert_eq(n_hdr, 2);
    cr_assert_eq(n_eot, 1);
    /* the text ends with the generation prompt: <|end_header_id|> "\n\n" */
    cr_assert_eq(prompt[n - 2], end_hdr);
    free(prompt);
    ms_tokenizer_destroy(&tok);
    ms_vocab_fini(&v);
}
