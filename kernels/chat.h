/* chat.h — chat templates and prompt assembly: messages (+ images) → the
 * flat prompt of prompt.h.
 *
 * Like llama.cpp's llm_chat_detect_template / llm_chat_apply_template, a
 * model's Jinja template (GGUF tokenizer.chat_template) is not interpreted:
 * its family is recognised by distinctive substrings and rendered by a fixed
 * routine that produces the text that template produces:
 *
 *   ChatML       "<|im_start|>"       <|im_start|>{role}\n{text}<|im_end|>\n ...
 *                                      generation prompt "<|im_start|>assistant\n"
 *   Llama 3      "<|start_header_id|>" + "<|end_header_id|>"
 *                                      <|start_header_id|>{role}<|end_header_id|>\n\n
 *                                      {text, trimmed}<|eot_id|> ...
 *                                      generation prompt
 *                                      "<|start_header_id|>assistant<|end_header_id|>\n\n"
 *   Vicuna       "USER: " + "ASSISTANT: " (LLaVA-1.5); "SYSTEM: " too → the Orca variant
 *                                      {system}\n\n  USER: {text}\n  ASSISTANT: {text}</s>\n
 *                                      generation prompt "ASSISTANT:"
 *   Llama 2      "[INST]" (or a template starting with "mistral")
 *                                      [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]
 *                                      {assistant}</s>[INST] ...
 *                                      variants as llama.cpp: without <<SYS>> support, with
 *                                      BOS inside the history, with stripped messages;
 *                                      no generation prompt (the text ends in " [/INST]")
 *   Plain        anything else:        {text}\n per message, no generation prompt
 *   Raw          never detected (named "raw"): the texts concatenated as they are
 *
 * A model without a template gets ChatML, as llama.cpp's common code does.
 * The BOS token is not written by any template: ms_chat_tokenize adds it
 * when the vocabulary asks for it (ms_vocab.add_bos).
 *
 * Images. A message carries n_images images. Its text places them with the
 * marker MS_CHAT_IMAGE_MARKER, one marker per image in order; a text without
 * markers gets them at its start, each as the marker followed by "\n" (the
 * LLaVA convention "<image>\nWhat is this?"). Images are numbered across the
 * whole conversation in message order, which is the order of the markers in
 * the rendered text. ms_chat_tokenize splits the rendered text at the markers,
 * tokenizes each piece on its own (as llama.cpp's mtmd does, special tokens
 * parsed) and puts MS_PROMPT_IMAGE(k) where marker k was.
 */
#ifndef MS_CHAT_H
#define MS_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prompt.h"
#include "tokenizer.h"

#define MS_CHAT_IMAGE_MARKER "<image>"   /* where an image goes in a message's text */
#define MS_CHAT_MAX_MESSAGES 1024        /* messages one conversation may have */
#define MS_CHAT_MAX_TEXT     (16u << 20) /* bytes of one message / of the rendered text */

typedef enum ms_chat_template {
    MS_CHAT_PLAIN = 0,        /* fallback: texts, one per line */
    MS_CHAT_RAW,              /* texts as they are (modserve-run --raw) */
    MS_CHAT_CHATML,           /* <|im_start|> ... <|im_end|> (Qwen, many others) */
    MS_CHAT_LLAMA3,           /* <|start_header_id|> ... <|eot_id|> */
    MS_CHAT_VICUNA,           /* USER: / ASSISTANT: (LLaVA-1.5) */
    MS_CHAT_VICUNA_ORCA,      /* as Vicuna, system as "SYSTEM: " */
    MS_CHAT_LLAMA2,           /* [INST] ... [/INST], system folded into the text */
    MS_CHAT_LLAMA2_SYS,       /* with <<SYS>> */
    MS_CHAT_LLAMA2_SYS_BOS,   /* with <<SYS>>, "<s>" before later turns */
    MS_CHAT_LLAMA2_SYS_STRIP, /* with <<SYS>>, message texts trimmed */
    MS_CHAT_TEMPLATE_COUNT
} ms_chat_template;

typedef enum ms_chat_role {
    MS_CHAT_SYSTEM = 0,
    MS_CHAT_USER = 1,
    MS_CHAT_ASSISTANT = 2,
} ms_chat_role;

typedef struct ms_chat_message {
    ms_chat_role role; /* who speaks */
    const char *text;  /* UTF-8, NUL-terminated; not owned; may contain image markers */
    int n_images;      /* images this message carries (>= 0) */
} ms_chat_message;

/* The family of a Jinja template (or of a template name: "chatml", "llama3",
 * "vicuna", "vicuna-orca", "llama2", "llama2-sys", "llama2-sys-bos",
 * "llama2-sys-strip", "plain", "raw"). NULL or "" → ChatML. Never fails:
 * an unknown template is MS_CHAT_PLAIN. */
ms_chat_template ms_chat_detect(const char *jinja);
/* Exact name lookup (the names above). 0, or -1 + err listing the names. */
int ms_chat_template_from_name(const char *name, ms_chat_template *out, char *err, size_t err_size);
/* Short name of a template ("chatml", ...). */
const char *ms_chat_template_name(ms_chat_template t);
/* Role as templates write it: "system", "user", "assistant". */
const char *ms_chat_role_name(ms_chat_role r);

/* Renders n messages as template t would, images placed as markers (see the
 * file comment), plus the generation prompt if add_generation_prompt (for
 * templates that have one). Returns a malloc'd NUL-terminated string (free()
 * it) and sets *n_images to the images in it, or NULL + err when: n is out of
 * [1, MS_CHAT_MAX_MESSAGES], a role is invalid, a text is NULL or longer than
 * MS_CHAT_MAX_TEXT, a message's markers are not as many as its images, or the
 * images add up to more than MS_MAX_IMAGES_PER_PROMPT. */
char *ms_chat_render(ms_chat_template t, const ms_chat_message *msgs, int n,
                     bool add_generation_prompt, int *n_images, char *err, size_t err_size);

/* Tokenizes rendered text (len bytes) into a prompt (prompt.h): pieces
 * between image markers are tokenized with parse_special, each on its own;
 * marker k becomes MS_PROMPT_IMAGE(k); BOS first if the vocabulary's add_bos
 * says so. The marker count must equal n_images. On success *prompt is a
 * malloc'd array (free() it) of *n_prompt entries and 0 is returned; -1 + err
 * otherwise. */
int ms_chat_tokenize(const ms_tokenizer *tok, const char *text, size_t len, int n_images,
                     int32_t **prompt, int *n_prompt, char *err, size_t err_size);

/* Render + tokenize in one call; *n_images receives the images referenced. */
int ms_chat_build_prompt(const ms_tokenizer *tok, ms_chat_template t, const ms_chat_message *msgs,
                         int n, bool add_generation_prompt, int32_t **prompt, int *n_prompt,
                         int *n_images, char *err, size_t err_size);

#endif
