/* modserve-mkmodel — writes a seeded text model + mmproj pair (see
 * kernels/modelgen.h and docs/model-format.md).
 *
 *   modserve-mkmodel --preset tiny|demo|bench [--arch llama|qwen2]
 *                    [--vocab PATH|builtin] [--type f32|f16|bf16|q8_0|q4_0]
 *                    [--seed N] [--tie] [--gain G] --out DIR
 *
 * Writes DIR/<preset>-lm.gguf and DIR/<preset>-mmproj.gguf; the tiny preset
 * also writes DIR/tiny-llama-lm.gguf (the same sizes with the llama
 * architecture) so tests cover both. A preset's preferred vocabulary is looked
 * up in the shared tokenizer folder ($MS_SHARED_DIR/data/tokenizers, else
 * ../shared/data/tokenizers next to the source tree or the working
 * directory); when absent the builtin one is used.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "modelgen.h"
#include "ms_common.h"

static void usage(FILE *f) {
    fprintf(f, "usage: modserve-mkmodel --preset tiny|demo|bench [--arch llama|qwen2]\n"
               "                        [--vocab PATH|builtin] [--type f32|f16|bf16|q8_0|q4_0]\n"
               "                        [--seed N] [--tie] [--gain G] --out DIR\n");
}

/* Finds name in the shared tokenizer folder; writes the path to out. */
static int find_shared(const char *name, char *out, size_t cap) {
    char exe[PATH_MAX] = "";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0; /* .../main/build-x/bin */
    }
    const char *env = getenv("MS_SHARED_DIR");
    const char *fmts[][2] = {
        {env ? env : NULL, "%s/data/tokenizers/%s"},
        {exe[0] ? exe : NULL, "%s/../../../shared/data/tokenizers/%s"},
        {exe[0] ? exe : NULL, "%s/../../shared/data/tokenizers/%s"},
        {".", "%s/../shared/data/tokenizers/%s"},
        {".", "%s/shared/data/tokenizers/%s"},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(fmts); i++) {
        if (!fmts[i][0]) continue;
        char path[PATH_MAX], real[PATH_MAX];
        snprintf(path, sizeof path, fmts[i][1], fmts[i][0], name);
        if (access(path, R_OK) != 0) continue;
        const char *src = realpath(path, real) ? real : path;
        size_t n = strlen(src);
        if (n >= cap) continue;
        memcpy(out, src, n + 1);
        return 0;
    }
    return -1;
}

static void print_file(const char *dir, const char *prefix, const char *what,
                       const ms_modelgen_stats *st) {
    printf("  %s/%s-%s.gguf: %lld tensors, %.2f M params, %.1f MiB of weights\n", dir, prefix, what,
           (long long)st->n_tensors, (double)st->n_params / 1e6,
           (double)st->n_bytes / (1024.0 * 1024.0));
}

int main(int argc, char **argv) {
    const char *preset = NULL, *arch = NULL, *vocab = NULL, *type = NULL, *out = NULL;
    const char *seed = NULL, *gain = NULL;
    bool tie = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = NULL;
        if (strcmp(a, "--preset") == 0)
            dst = &preset;
        else if (strcmp(a, "--arch") == 0)
            dst = &arch;
        else if (strcmp(a, "--vocab") == 0)
            dst = &vocab;
        else if (strcmp(a, "--type") == 0)
            dst = &type;
        else if (strcmp(a, "--seed") == 0)
            dst = &seed;
        else if (strcmp(a, "--out") == 0)
            dst = &out;
        else if (strcmp(a, "--gain") == 0)
            dst = &gain;
        else if (strcmp(a, "--tie") == 0) {
            tie = true;
            continue;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "modserve-mkmodel: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "modserve-mkmodel: %s needs a value\n", a);
            return 2;
        }
        *dst = argv[++i];
    }
    if (!preset || !out) {
        usage(stderr);
        return 2;
    }

    char err[MS_ERR_SIZE];
    ms_modelgen_cfg cfg;
    if (ms_modelgen_preset(preset, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "modserve-mkmodel: %s\n", err);
        return 2;
    }
    if (arch) {
        if (strcmp(arch, "llama") == 0)
            cfg.arch = MS_ARCH_LLAMA;
        else if (strcmp(arch, "qwen2") == 0)
            cfg.arch = MS_ARCH_QWEN2;
        else {
            fprintf(stderr, "modserve-mkmodel: unknown arch '%s' (llama, qwen2)\n", arch);
            return 2;
        }
    }
    if (type && ms_modelgen_parse_type(type, &cfg.type, err, sizeof err) != 0) {
        fprintf(stderr, "modserve-mkmodel: %s\n", err);
        return 2;
    }
    if (seed) {
        char *end;
        cfg.seed = strtoull(seed, &end, 0);
        if (*end || !*seed) {
            fprintf(stderr, "modserve-mkmodel: bad seed '%s'\n", seed);
            return 2;
        }
    }
    cfg.tie_output = tie;
    if (gain) {
        char *end;
        cfg.residual_gain = strtof(gain, &end);
        if (*end || !*gain || !(cfg.residual_gain >= 0.0f)) {
            fprintf(stderr, "modserve-mkmodel: bad gain '%s'\n", gain);
            return 2;
        }
    }
    if (vocab) {
        snprintf(cfg.vocab, sizeof cfg.vocab, "%s", vocab);
    } else {
        char found[MS_MODELGEN_MAX_PATH];
        for (int i = 0; i < 2 && cfg.vocab_wish[i]; i++)
            if (find_shared(cfg.vocab_wish[i], found, sizeof found) == 0) {
                memcpy(cfg.vocab, found, sizeof cfg.vocab);
                break;
            }
        if (cfg.vocab_wish[0] && strcmp(cfg.vocab, "builtin") == 0)
            fprintf(stderr,
                    "modserve-mkmodel: %s not found in the shared tokenizer folder: "
                    "using the builtin vocabulary\n",
                    cfg.vocab_wish[0]);
    }

    double t0 = ms_now_s();
    ms_modelgen_stats lm_st, vit_st;
    if (ms_modelgen_write(&cfg, out, NULL, &lm_st, &vit_st, err, sizeof err) != 0) {
        fprintf(stderr, "modserve-mkmodel: %s\n", err);
        return 1;
    }
    printf("modserve-mkmodel: preset %s, %s, %s weights, seed %llu, vocabulary %s\n", cfg.preset,
           cfg.arch == MS_ARCH_QWEN2 ? "qwen2" : "llama", ms_type_name(cfg.type),
           (unsigned long long)cfg.seed, cfg.vocab);
    printf("  LM: %d layers, n_embd %d, n_ff %d, %d heads (%d kv), ctx %d%s\n", cfg.n_layer,
           cfg.n_embd, cfg.n_ff, cfg.n_head, cfg.n_head_kv, cfg.n_ctx,
           cfg.tie_output ? ", tied output" : "");
    printf("  ViT: %d px / %d, %d blocks run (+1 stored), n_embd %d, n_ff %d, %d heads -> %d\n",
           cfg.v_image_size, cfg.v_patch_size, cfg.v_n_layer, cfg.v_n_embd, cfg.v_n_ff,
           cfg.v_n_head, cfg.n_embd);
    print_file(out, cfg.preset, "lm", &lm_st);
    print_file(out, cfg.preset, "mmproj", &vit_st);

    if (strcmp(cfg.preset, "tiny") == 0 && !arch) {
        /* the other architecture, same sizes and vocabulary, for tests */
        ms_modelgen_cfg alt = cfg;
        alt.arch = cfg.arch == MS_ARCH_QWEN2 ? MS_ARCH_LLAMA : MS_ARCH_QWEN2;
        const char *prefix = alt.arch == MS_ARCH_LLAMA ? "tiny-llama" : "tiny-qwen2";
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s-lm.gguf", out, prefix);
        ms_vocab v;
        char *tmpl;
        ms_gguf_writer *w = ms_gguf_writer_new();
        int rc = ms_modelgen_load_vocab(alt.vocab, &v, &tmpl, err, sizeof err);
        if (rc == 0) {
            rc = ms_modelgen_lm(&alt, &v, tmpl, NULL, w, &lm_st, err, sizeof err);
            if (rc == 0) rc = ms_gguf_writer_write(w, path, err, sizeof err);
            ms_vocab_fini(&v);
            free(tmpl);
        }
        ms_gguf_writer_destroy(&w);
        if (rc != 0) {
            fprintf(stderr, "modserve-mkmodel: %s\n", err);
            return 1;
        }
        print_file(out, prefix, "lm", &lm_st);
    }
    printf("  written in %.2f s\n", ms_now_s() - t0);
    return 0;
}
