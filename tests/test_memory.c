/* test_memory.c — memory promises of the engine:
 *   - weights are mapped, not copied: opening a GGUF leaves resident memory
 *     (VmRSS) nearly unchanged, and it then grows with the tensor bytes that
 *     are read, not with the file's size;
 *   - KV memory is bounded by configuration: an engine made with a small
 *     kv_max_tokens allocates no more than that many rows, and a prompt or a
 *     decode step that does not fit is refused with an error, leaving the
 *     cache as it was.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine.h"
#include "gguf.h"
#include "kvcache.h"
#include "modelgen.h"
#include "ms_common.h"
#include "ms_test.h"

#define BIG_NE0      4096 /* f32 elements per row */
#define BIG_NE1      4096 /* rows: 4096 x 4096 x 4 B = 64 MiB */
#define BIG_BYTES    ((size_t)BIG_NE0 * BIG_NE1 * sizeof(float))
#define MIB          (1024.0 * 1024.0)
#define OPEN_RSS_MAX (8.0 * MIB) /* RSS growth allowed for opening the file */
#define PAGE_STRIDE  1024        /* floats per 4 KiB page */
#define KV_SMALL     64          /* kv_max_tokens of the bounded engine */
#define KV_BLOCK     16          /* its block size */

/* VmRSS of this process in bytes (the test fails if it cannot be read). */
static double s_rss(void) {
    FILE *f = fopen("/proc/self/status", "r");
    cr_assert_not_null(f, "cannot open /proc/self/status");
    char line[256];
    double kb = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) kb = strtod(line + 6, NULL);
    }
    fclose(f);
    cr_assert(kb >= 0, "no VmRSS line in /proc/self/status");
    return kb * 1024.0;
}

/* The value stored at element i of the big tensor (exact in f32). */
static float s_pattern(size_t i) {
    return (float)(i % 1000003u) * 0.25f;
}

/* Writes a GGUF holding one 64 MiB f32 tensor "big" to path, in a child
 * process, so the writer's copy of the data never enters this process. */
static void s_write_big(const char *path) {
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork failed");
    if (pid == 0) {
        float *data = malloc(BIG_BYTES);
        if (!data) _exit(3);
        for (size_t i = 0; i < (size_t)BIG_NE0 * BIG_NE1; i++)
            data[i] = s_pattern(i);
        ms_gguf_writer *w = ms_gguf_writer_new();
        ms_gguf_set_str(w, "general.architecture", "test");
        int64_t ne[2] = {BIG_NE0, BIG_NE1};
        char err[MS_ERR_SIZE];
        int rc = ms_gguf_add_tensor(w, "big", MS_TYPE_F32, 2, ne, data, BIG_BYTES);
        if (rc == 0) rc = ms_gguf_writer_write(w, path, err, sizeof err);
        if (rc != 0) fprintf(stderr, "writer: %s\n", err);
        ms_gguf_writer_destroy(&w);
        free(data);
        _exit(rc == 0 ? 0 : 4);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writing %s failed (status %d)", path,
              status);
}

/* Sums elements [from, to) of t, reading every element (touches their pages). */
static double s_sum(const float *x, size_t from, size_t to) {
    double s = 0;
    for (size_t i = from; i < to; i++)
        s += x[i];
    return s;
}

static double s_expected_sum(size_t from, size_t to) {
    double s = 0;
    for (size_t i = from; i < to; i++)
        s += s_pattern(i);
    return s;
}

Test(memory, weights_are_mapped_not_copied, .timeout = 120) {
    char dir[] = "/tmp/ms_test_memory_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[sizeof dir + 32];
    snprintf(path, sizeof path, "%s/big.gguf", dir);
    s_write_big(path);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_geq((size_t)st.st_size, BIG_BYTES);

    double rss0 = s_rss();
    char err[MS_ERR_SIZE] = "";
    ms_gguf *g = ms_gguf_open(path, err, sizeof err);
    cr_assert_not_null(g, "open: %s", err);
    ms_tensor *t = ms_gguf_find_tensor(g, "big");
    cr_assert_not_null(t);
    cr_assert_eq(t->nbytes, BIG_BYTES);
    double rss1 = s_rss();
    cr_assert_lt(rss1 - rss0, OPEN_RSS_MAX,
                 "opening a %.0f MiB file grew RSS by %.1f MiB: the data was read or copied",
                 BIG_BYTES / MIB, (rss1 - rss0) / MIB);

    /* Read the first half of the tensor: RSS grows by about half the data. */
    const float *x = t->data;
    size_t n = (size_t)BIG_NE0 * BIG_NE1;
    double got = s_sum(x, 0, n / 2);
    cr_assert_eq(got, s_expected_sum(0, n / 2), "tensor data differs from what was written");
    double rss2 = s_rss();
    double half = (double)BIG_BYTES / 2;
    cr_assert(rss2 - rss1 > 0.75 * half && rss2 - rss1 < 1.25 * half,
              "reading %.0f MiB of mapped data grew RSS by %.1f MiB", half / MIB,
              (rss2 - rss1) / MIB);

    /* Touch one float per page of the second half: now the whole tensor is resident. */
    volatile float sink = 0;
    for (size_t i = n / 2; i < n; i += PAGE_STRIDE)
        sink += x[i];
    (void)sink;
    double rss3 = s_rss();
    cr_assert(rss3 - rss1 > 0.75 * (double)BIG_BYTES && rss3 - rss1 < 1.25 * (double)BIG_BYTES,
              "touching all %.0f MiB grew RSS by %.1f MiB", BIG_BYTES / MIB, (rss3 - rss1) / MIB);

    cr_log_info(
        "RSS growth: open %.1f MiB, half read %.1f MiB, all touched %.1f MiB (file %.0f MiB)",
        (rss1 - rss0) / MIB, (rss2 - rss1) / MIB, (rss3 - rss1) / MIB, BIG_BYTES / MIB);

    /* Closing unmaps: the pages leave this process's RSS. */
    ms_gguf_close(&g);
    cr_assert_null(g);
    double rss4 = s_rss();
    cr_assert_lt(rss4 - rss0, OPEN_RSS_MAX, "RSS stayed %.1f MiB above the start after close",
                 (rss4 - rss0) / MIB);
    unlink(path);
    rmdir(dir);
}

static void s_prompt(int32_t *ids, int n, int n_vocab) {
    for (int i = 0; i < n; i++)
        ids[i] = 1 + (i * 7) % (n_vocab - 1);
}

/* ---- the same through the engine ------------------------------------------
 * A text model of ~64 MiB of f32 weights (modelgen, tiny preset widened):
 * making an engine on it (loading, validation, backend, KV, scratch) must not
 * read or copy the weights; one prefill, which multiplies by every layer's
 * weights, brings them in. */
#define WIDE_EMBD  512
#define WIDE_FF    1536
#define WIDE_LAYER 4 /* 4 x (4·512² + 3·512·1536) x 4 B = 52 MiB of layer weights */

static void s_write_wide_model(const char *dir) {
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork failed");
    if (pid == 0) {
        ms_modelgen_cfg cfg;
        char err[MS_ERR_SIZE];
        int rc = ms_modelgen_preset("tiny", &cfg, err, sizeof err);
        if (rc == 0) {
            cfg.type = MS_TYPE_F32;
            cfg.n_embd = WIDE_EMBD;
            cfg.n_ff = WIDE_FF;
            cfg.n_layer = WIDE_LAYER;
            cfg.n_head = 8;
            cfg.n_head_kv = 8;
            rc = ms_modelgen_write(&cfg, dir, "wide", NULL, NULL, err, sizeof err);
        }
        if (rc != 0) fprintf(stderr, "modelgen: %s\n", err);
        _exit(rc == 0 ? 0 : 4);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "generating the model failed");
}

Test(memory, engine_maps_weights_and_touches_them_on_use, .timeout = 120) {
    char dir[] = "/tmp/ms_test_memory_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    s_write_wide_model(dir);
    char lm_path[sizeof dir + 32];
    snprintf(lm_path, sizeof lm_path, "%s/wide-lm.gguf", dir);
    struct stat st;
    cr_assert_eq(stat(lm_path, &st), 0, "modelgen did not write %s", lm_path);
    double layer_bytes = (double)WIDE_LAYER *
                         (4.0 * WIDE_EMBD * WIDE_EMBD + 3.0 * WIDE_EMBD * WIDE_FF) * sizeof(float);

    double rss0 = s_rss();
    ms_engine_params p;
    ms_engine_params_default(&p);
    p.lm_path = lm_path;
    p.n_threads = 1;
    p.kv_max_tokens = KV_SMALL;
    p.max_batch_tokens = 16;
    char err[MS_ERR_SIZE] = "";
    ms_engine *e = ms_engine_new(&p, err, sizeof err);
    cr_assert_not_null(e, "%s", err);
    double rss1 = s_rss();
    cr_assert_lt(rss1 - rss0, 0.25 * layer_bytes,
                 "making the engine grew RSS by %.1f MiB for %.1f MiB of layer weights: "
                 "weights were read or copied",
                 (rss1 - rss0) / MIB, layer_bytes / MIB);

    int32_t ids[8];
    s_prompt(ids, 8, ms_engine_n_vocab(e));
    ms_seq *s = ms_engine_seq_new(e);
    cr_assert_eq(ms_engine_prefill(e, s, ids, 8, NULL, 0, NULL, err, sizeof err), 0, "%s", err);
    double rss2 = s_rss();
    cr_assert_gt(rss2 - rss1, 0.75 * layer_bytes,
                 "a prefill over %.1f MiB of layer weights grew RSS by only %.1f MiB",
                 layer_bytes / MIB, (rss2 - rss1) / MIB);
    cr_log_info("RSS growth: engine_new %.1f MiB, first prefill %.1f MiB (layer weights %.1f MiB)",
                (rss1 - rss0) / MIB, (rss2 - rss1) / MIB, layer_bytes / MIB);
    ms_engine_seq_free(e, &s);
    ms_engine_destroy(&e);

    char mm_path[sizeof dir + 32];
    snprintf(mm_path, sizeof mm_path, "%s/wide-mmproj.gguf", dir);
    unlink(lm_path);
    unlink(mm_path);
    rmdir(dir);
}

/* ---- KV bound ------------------------------------------------------------ */

static ms_engine *s_small_kv_engine(void) {
    ms_engine_params p;
    ms_engine_params_default(&p);
    p.lm_path = ms_test_path(ms_test_models_dir(), "tiny-lm.gguf");
    p.n_threads = 1;
    p.kv_block_size = KV_BLOCK;
    p.kv_max_tokens = KV_SMALL;
    char err[MS_ERR_SIZE] = "";
    ms_engine *e = ms_engine_new(&p, err, sizeof err);
    cr_assert_not_null(e, "engine on %s: %s", p.lm_path, err);
    return e;
}

Test(memory, kv_bytes_bounded_by_config, .timeout = 60) {
    ms_engine *e = s_small_kv_engine();
    const ms_lm *lm = ms_engine_lm(e);
    int row_dim = lm->hp.n_head_kv * (lm->hp.n_embd / lm->hp.n_head);
    int blocks = KV_SMALL / KV_BLOCK;
    cr_assert_eq(ms_engine_kv_block_size(e), KV_BLOCK);
    cr_assert_eq(ms_engine_kv_total_blocks(e), blocks);
    cr_assert_eq(ms_engine_kv_free_blocks(e), blocks);
    size_t bound = ms_kvcache_bytes(lm->hp.n_layer, row_dim, KV_BLOCK, blocks);
    cr_assert_eq(bound, (size_t)2 * lm->hp.n_layer * KV_SMALL * row_dim * sizeof(float));
    cr_assert_leq(ms_engine_kv_bytes(e), bound, "KV pool is %zu bytes, config allows %zu",
                  ms_engine_kv_bytes(e), bound);
    cr_assert_gt(ms_engine_kv_bytes(e), 0);
    cr_assert_leq(ms_engine_n_ctx(e), KV_SMALL);
    ms_engine_destroy(&e);
    cr_assert_null(e);
}

Test(memory, prompt_past_kv_capacity_is_refused, .timeout = 60) {
    ms_engine *e = s_small_kv_engine();
    int n_vocab = ms_engine_n_vocab(e);
    int32_t ids[2 * KV_SMALL];
    s_prompt(ids, 2 * KV_SMALL, n_vocab);
    char err[MS_ERR_SIZE] = "";

    /* Too long for the whole cache: an error, and nothing taken from it. */
    ms_seq *a = ms_engine_seq_new(e);
    cr_assert_eq(ms_engine_prefill(e, a, ids, KV_SMALL + 1, NULL, 0, NULL, err, sizeof err), -1);
    cr_assert_neq(err[0], '\0', "refusal without a message");
    cr_assert_eq(a->n_past, 0);
    cr_assert_eq(ms_engine_kv_free_blocks(e), ms_engine_kv_total_blocks(e));

    /* A prompt that fills the cache exactly is accepted... */
    err[0] = '\0';
    int fill = ms_engine_n_ctx(e) < KV_SMALL ? ms_engine_n_ctx(e) : KV_SMALL;
    cr_assert_eq(ms_engine_prefill(e, a, ids, fill, NULL, 0, NULL, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a->n_past, fill);

    /* ...and then a second sequence cannot get a block ... */
    if (fill == KV_SMALL) {
        ms_seq *b = ms_engine_seq_new(e);
        err[0] = '\0';
        cr_assert_eq(ms_engine_prefill(e, b, ids, 4, NULL, 0, NULL, err, sizeof err), -1);
        cr_assert(strstr(err, "KV") != NULL, "message does not name the KV cache: '%s'", err);
        cr_assert_eq(b->n_past, 0);
        ms_engine_seq_free(e, &b);
    }

    /* ... nor can a decode step grow the full sequence; it stays as it was. */
    float *logits = ms_xmalloc((size_t)n_vocab * sizeof(float));
    int32_t tok = 5;
    err[0] = '\0';
    cr_assert_eq(ms_engine_decode(e, &a, &tok, 1, logits, err, sizeof err), -1);
    cr_assert_neq(err[0], '\0');
    cr_assert_eq(a->n_past, fill);

    /* Freeing the sequence gives every block back. */
    ms_engine_seq_free(e, &a);
    cr_assert_null(a);
    cr_assert_eq(ms_engine_kv_free_blocks(e), ms_engine_kv_total_blocks(e));
    free(logits);
    ms_engine_destroy(&e);
}

Test(memory, kv_blocks_are_shared_out_and_returned, .timeout = 60) {
    ms_engine *e = s_small_kv_engine();
    int n_vocab = ms_engine_n_vocab(e);
    int32_t ids[KV_SMALL];
    s_prompt(ids, KV_SMALL, n_vocab);
    char err[MS_ERR_SIZE] = "";
    int total = ms_engine_kv_total_blocks(e);

    /* Each sequence of KV_BLOCK tokens takes one block, until none is left. */
    ms_seq *seqs[KV_SMALL / KV_BLOCK + 1] = {0};
    for (int i = 0; i < total; i++) {
        seqs[i] = ms_engine_seq_new(e);
        cr_assert_eq(ms_engine_prefill(e, seqs[i], ids, KV_BLOCK, NULL, 0, NULL, err, sizeof err),
                     0, "sequence %d: %s", i, err);
        cr_assert_eq(ms_engine_kv_free_blocks(e), total - i - 1);
    }
    seqs[total] = ms_engine_seq_new(e);
    cr_assert_eq(ms_engine_prefill(e, seqs[total], ids, 1, NULL, 0, NULL, err, sizeof err), -1);

    /* A batch decode where every sequence needs a new block fails as a whole. */
    int32_t toks[KV_SMALL / KV_BLOCK];
    for (int i = 0; i < total; i++)
        toks[i] = ids[i];
    float *logits = ms_xmalloc((size_t)total * (size_t)n_vocab * sizeof(float));
    cr_assert_eq(ms_engine_decode(e, seqs, toks, total, logits, err, sizeof err), -1);
    for (int i = 0; i < total; i++)
        cr_assert_eq(seqs[i]->n_past, KV_BLOCK);

    /* Free one: its block serves the waiting sequence. */
    ms_engine_seq_free(e, &seqs[0]);
    cr_assert_eq(ms_engine_kv_free_blocks(e), 1);
    cr_assert_eq(ms_engine_prefill(e, seqs[total], ids, 1, NULL, 0, NULL, err, sizeof err), 0, "%s",
                 err);
    for (int i = 1; i <= total; i++)
        ms_engine_seq_free(e, &seqs[i]);
    cr_assert_eq(ms_engine_kv_free_blocks(e), total);
    free(logits);
    ms_engine_destroy(&e);
}
