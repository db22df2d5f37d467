/* workload.c — workload generation, the player and the latency report
 * (workload.h). */
#include "workload.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

/* ---- latency statistics ----------------------------------------------------------------- */

double ms_percentile(const double *sorted, int n, double q) {
    if (n <= 0) return 0.0;
    if (q <= 0.0) return sorted[0];
    if (q >= 100.0) return sorted[n - 1];
    double rank = q / 100.0 * (n - 1);
    int lo = (int)floor(rank);
    int hi = lo + 1 < n ? lo + 1 : lo;
    double f = rank - lo;
    return sorted[lo] + f * (sorted[hi] - sorted[lo]);
}

static int s_dcmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void ms_latency_summarize(double *samples, int n, ms_latency_stats *s) {
    memset(s, 0, sizeof(*s));
    s->n = n;
    if (n <= 0) return;
    qsort(samples, (size_t)n, sizeof(double), s_dcmp);
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += samples[i];
    s->mean = sum / n;
    s->p50 = ms_percentile(samples, n, 50.0);
    s->p90 = ms_percentile(samples, n, 90.0);
    s->p99 = ms_percentile(samples, n, 99.0);
    s->max = samples[n - 1];
}

/* ---- workload -------------------------------------------------------------------------- */

static const char *const s_image_prompts[] = {
    "Describe this image.",        "What is in the picture?",
    "What colours do you see?",    "Write a caption for this photo.",
    "How many objects are there?", "Is this picture taken indoors or outdoors?",
};

static const char *const s_text_prompts[] = {
    "Write a short poem about the sea.",
    "List three fruits.",
    "Tell me a story about a robot.",
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Give me a name for a cat.",
    "Count from one to ten.",
};

static uint64_t s_splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int ms_workload_make(const ms_workload_params *p, ms_workload_request *out, char *err,
                     size_t err_size) {
    if (p->n_requests < 1 || p->n_requests > MS_WORKLOAD_MAX_REQUESTS)
        return ms_errf(err, err_size, "requests must be in [1, %d], got %d",
                       MS_WORKLOAD_MAX_REQUESTS, p->n_requests);
    if (!(p->image_ratio >= 0.0 && p->image_ratio <= 1.0))
        return ms_errf(err, err_size, "image ratio must be in [0, 1], got %g", p->image_ratio);
    if (p->max_images < 1 || p->max_images > MS_WORKLOAD_MAX_IMAGES)
        return ms_errf(err, err_size, "images per request must be in [1, %d], got %d",
                       MS_WORKLOAD_MAX_IMAGES, p->max_images);
    if (p->max_tokens < 1 || p->max_tokens > MS_WORKLOAD_MAX_TOKENS)
        return ms_errf(err, err_size, "max tokens must be in [1, %d], got %d",
                       MS_WORKLOAD_MAX_TOKENS, p->max_tokens);
    if (p->image_ratio > 0.0 && p->n_image_files < 1)
        return ms_errf(err, err_size, "image requests need at least one image file");
    int n = p->n_requests;
    long k = lround(p->image_ratio * n);
    uint64_t rng = p->seed ^ 0x6d6f647365727665ull; /* "modserve" */
    for (int i = 0; i < n; i++) {
        ms_workload_request *r = &out[i];
        memset(r, 0, sizeof(*r));
        /* request i carries images iff the running count of image requests steps up here */
        bool img = ((long)(i + 1) * k) / n > ((long)i * k) / n;
        if (img) {
            r->n_images = 1 + (int)(s_splitmix(&rng) % (uint64_t)p->max_images);
            for (int j = 0; j < r->n_images; j++)
                r->image[j] = (int)(s_splitmix(&rng) % (uint64_t)p->n_image_files);
            r->prompt = s_image_prompts[s_splitmix(&rng) % MS_ARRAY_LEN(s_image_prompts)];
        } else {
            r->prompt = s_text_prompts[s_splitmix(&rng) % MS_ARRAY_LEN(s_text_prompts)];
        }
        int lo = (p->max_tokens + 1) / 2;
        r->max_tokens = lo + (int)(s_splitmix(&rng) % (uint64_t)(p->max_tokens - lo + 1));
        r->temperature = p->temperature < 0.0 ? ((i % 2) ? 0.8f : 0.0f) : (float)p->temperature;
        r->seed = s_splitmix(&rng) & 0xffffffffull;
    }
    return 0;
}

/* ---- the player ------------------------------------------------------------------------ */

void ms_play_reqs_init(ms_play_req *reqs, const ms_workload_request *w, int n) {
    for (int i = 0; i < n; i++) {
        memset(&reqs[i], 0, sizeof(reqs[i]));
        reqs[i].w = w[i];
        snprintf(reqs[i].id, sizeof(reqs[i].id), "play-%d", i);
    }
}

void ms_play_reqs_fini(ms_play_req *reqs, int n) {
    for (int i = 0; i < n; i++) {
        free(reqs[i].ids);
        free(reqs[i].text);
        reqs[i].ids = NULL;
        reqs[i].text = NULL;
    }
}

static int s_submit(ms_client *c, const ms_play_opts *o, ms_play_req *r, char *err,
                    size_t err_size) {
    ms_msg req;
    ms_msg_init(&req, MS_MSG_SUBMIT);
    ms_msg_submit *s = &req.submit;
    char prompt[512];
    snprintf(prompt, sizeof(prompt), "%s", r->w.prompt);
    s->id = r->id;
    s->prompt = prompt;
    s->has_prompt = true;
    s->max_tokens = (uint64_t)r->w.max_tokens;
    s->has_max_tokens = true;
    s->temperature = r->w.temperature;
    s->has_temperature = true;
    s->seed = r->w.seed;
    s->has_seed = true;
    if (r->raw) {
        s->raw = true;
        s->has_raw = true;
    }
    const void *imgs[MS_WORKLOAD_MAX_IMAGES];
    size_t lens[MS_WORKLOAD_MAX_IMAGES];
    for (int k = 0; k < r->w.n_images; k++) {
        int f = r->w.image[k];
        if (f < 0 || f >= o->n_images) return ms_errf(err, err_size, "image file %d unknown", f);
        imgs[k] = o->images[f];
        lens[k] = o->image_len[f];
    }
    r->t_submit = ms_now_ns();
    r->started = true;
    return ms_client_submit(c, s, imgs, lens, (size_t)r->w.n_images, err, err_size);
}

static void s_append_tokens(ms_play_req *r, const ms_msg_token *t) {
    if ((int64_t)t->index != r->n_ids && !r->error[0])
        snprintf(r->error, sizeof(r->error), "token index %" PRIu64 " where %d was expected",
                 t->index, r->n_ids);
    for (uint32_t k = 0; k < t->n_ids; k++) {
        if (r->n_ids == r->cap_ids) {
            r->cap_ids = r->cap_ids ? 2 * r->cap_ids : 64;
            r->ids = ms_xrealloc(r->ids, (size_t)r->cap_ids * sizeof(*r->ids));
        }
        r->ids[r->n_ids++] = t->ids[k];
    }
    size_t tl = strlen(t->text);
    r->text = ms_xrealloc(r->text, r->text_len + tl + 1);
    memcpy(r->text + r->text_len, t->text, tl + 1);
    r->text_len += tl;
    r->n_token_events++;
}

/* Applies one event to its request; returns it (NULL if the event is not for one). */
static ms_play_req *s_apply(ms_play_req *reqs, int n, const ms_msg *ev) {
    const char *id = NULL;
    if (ev->type == MS_MSG_TOKEN)
        id = ev->token.id;
    else if (ev->type == MS_MSG_DONE)
        id = ev->done.id;
    else if (ev->type == MS_MSG_ERROR)
        id = ev->error.id;
    if (!id || strncmp(id, "play-", 5) != 0) return NULL;
    char *end = NULL;
    long i = strtol(id + 5, &end, 10);
    if (*end != '\0' || i < 0 || i >= n) return NULL;
    ms_play_req *r = &reqs[i];
    if (r->ended || !r->started) return NULL;
    if (ev->type == MS_MSG_TOKEN) {
        if (!r->t_first) r->t_first = ms_now_ns();
        s_append_tokens(r, &ev->token);
        return r;
    }
    r->ended = true;
    r->t_end = ms_now_ns();
    if (ev->type == MS_MSG_DONE) {
        snprintf(r->finish, sizeof(r->finish), "%s", ev->done.finish);
        r->ok = r->error[0] == '\0';
    } else {
        snprintf(r->error, sizeof(r->error), "%.60s: %.400s", ev->error.code, ev->error.message);
    }
    return r;
}

int ms_play_run(const ms_play_opts *o, ms_play_req *reqs, int n, ms_play_summary *out, char *err,
                size_t err_size) {
    memset(out, 0, sizeof(*out));
    ms_client *c = ms_client_new(o->endpoint, err, err_size);
    if (!c) return -1;
    char cerr[MS_ERR_SIZE];
    int conc = o->concurrency > 0 ? o->concurrency : 1;
    int64_t t0 = ms_now_ns(), idle_since = t0, t_last = t0;
    int next = 0, inflight = 0;
    while (out->ended < n) {
        if (o->stop && *o->stop) {
            out->gave_up = true;
            break;
        }
        while (inflight < conc && next < n) {
            ms_play_req *r = &reqs[next++];
            if (s_submit(c, o, r, cerr, sizeof(cerr)) != 0) {
                r->ended = true;
                r->t_end = ms_now_ns();
                snprintf(r->error, sizeof(r->error), "submit: %.400s", cerr);
                out->ended++;
                continue;
            }
            inflight++;
        }
        if (out->ended >= n) break;
        ms_msg ev;
        memset(&ev, 0, sizeof(ev));
        ms_wire_status st = ms_client_next(c, 100, &ev, cerr, sizeof(cerr));
        if (st == MS_WIRE_TIMEOUT) {
            if ((ms_now_ns() - idle_since) / 1000000 > o->wait_ms) {
                if (!o->quiet)
                    fprintf(stderr, "play: no event from %s for %d ms: giving up\n", o->endpoint,
                            o->wait_ms);
                out->gave_up = true;
                break;
            }
            continue;
        }
        if (st == MS_WIRE_TRANSPORT) {
            if (o->stop && *o->stop) continue;
            if (!o->quiet) fprintf(stderr, "play: transport failure: %s\n", cerr);
            out->gave_up = true;
            break;
        }
        if (st == MS_WIRE_MALFORMED) {
            if (!o->quiet) fprintf(stderr, "play: bad event from the broker: %s\n", cerr);
            out->protocol_errors++;
            continue;
        }
        idle_since = t_last = ms_now_ns();
        ms_play_req *r = s_apply(reqs, n, &ev);
        ms_msg_fini(&ev);
        if (!r) continue;
        if (r->ended) {
            out->ended++;
            inflight--;
            if (!o->quiet && !r->ok) fprintf(stderr, "play: %s failed: %s\n", r->id, r->error);
        }
        if (o->on_event) o->on_event(r, o->user);
    }
    ms_client_destroy(&c);
    out->wall_s = (double)(t_last - t0) / 1e9;
    for (int i = 0; i < n; i++) {
        if (!reqs[i].ended && !reqs[i].error[0])
            snprintf(reqs[i].error, sizeof(reqs[i].error), "no answer");
        if (reqs[i].ended && reqs[i].ok)
            out->ok++;
        else
            out->errors++;
    }
    return 0;
}

/* ---- report -------------------------------------------------------------------------------- */

typedef struct play_group {
    int n, errors, tokens;
    ms_latency_stats ttft, tpot, e2e;
} play_group;

/* mode: 0 text, 1 image, 2 all */
static void s_group(const ms_play_req *r, int n, int mode, play_group *g) {
    memset(g, 0, sizeof(*g));
    double *ttft = ms_xcalloc((size_t)n + 1, sizeof(double));
    double *tpot = ms_xcalloc((size_t)n + 1, sizeof(double));
    double *e2e = ms_xcalloc((size_t)n + 1, sizeof(double));
    int nt = 0, np = 0, ne = 0;
    for (int i = 0; i < n; i++) {
        if (mode != 2 && (r[i].w.n_images > 0) != (mode == 1)) continue;
        g->n++;
        if (!(r[i].ended && r[i].ok)) {
            g->errors++;
            continue;
        }
        double t_first = r[i].t_first ? (double)(r[i].t_first - r[i].t_submit) / 1e6 : 0.0;
        double t_e2e = (double)(r[i].t_end - r[i].t_submit) / 1e6;
        g->tokens += r[i].n_ids;
        if (r[i].n_ids > 0) ttft[nt++] = t_first;
        if (r[i].n_ids > 1) tpot[np++] = (t_e2e - t_first) / (r[i].n_ids - 1);
        e2e[ne++] = t_e2e;
    }
    ms_latency_summarize(ttft, nt, &g->ttft);
    ms_latency_summarize(tpot, np, &g->tpot);
    ms_latency_summarize(e2e, ne, &g->e2e);
    free(ttft);
    free(tpot);
    free(e2e);
}

void ms_play_report(FILE *f, const ms_play_req *reqs, int n, double wall_s) {
    static const char *const names[] = {"text", "image", "all"};
    static const char *const metric[3] = {"TTFT", "TPOT", "E2E"};
    fprintf(f, "latency report: %d requests in %.2f s (latencies in ms)\n", n, wall_s);
    fprintf(f, "%-8s %6s %6s  %-6s %9s %9s %9s %9s  %8s %8s\n", "modality", "count", "errors",
            "metric", "mean", "p50", "p90", "p99", "req/s", "tok/s");
    for (int mode = 0; mode < 3; mode++) {
        play_group g;
        s_group(reqs, n, mode, &g);
        if (g.n == 0 && mode != 2) continue;
        double rps = wall_s > 0 ? (g.n - g.errors) / wall_s : 0.0;
        double tps = wall_s > 0 ? g.tokens / wall_s : 0.0;
        const ms_latency_stats *m[3] = {&g.ttft, &g.tpot, &g.e2e};
        for (int k = 0; k < 3; k++) {
            if (k == 0)
                fprintf(f, "%-8s %6d %6d  ", names[mode], g.n, g.errors);
            else
                fprintf(f, "%-8s %6s %6s  ", "", "", "");
            fprintf(f, "%-6s %9.2f %9.2f %9.2f %9.2f", metric[k], m[k]->mean, m[k]->p50, m[k]->p90,
                    m[k]->p99);
            if (k == 0)
                fprintf(f, "  %8.2f %8.1f\n", rps, tps);
            else
                fprintf(f, "\n");
        }
    }
}

int ms_play_write_jsonl(const char *path, const ms_play_req *reqs, int n,
                        const char *const *image_paths, char *err, size_t err_size) {
    FILE *f = fopen(path, "w");
    if (!f) return ms_errf(err, err_size, "%s: %s", path, strerror(errno));
    for (int i = 0; i < n; i++) {
        const ms_play_req *r = &reqs[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", r->id);
        cJSON *im = cJSON_AddArrayToObject(o, "images");
        for (int k = 0; k < r->w.n_images; k++)
            cJSON_AddItemToArray(im,
                                 cJSON_CreateString(image_paths ? image_paths[r->w.image[k]] : ""));
        cJSON_AddStringToObject(o, "prompt", r->w.prompt);
        cJSON_AddNumberToObject(o, "max_tokens", r->w.max_tokens);
        cJSON_AddNumberToObject(o, "temperature", r->w.temperature);
        cJSON_AddNumberToObject(o, "seed", (double)r->w.seed);
        cJSON_AddBoolToObject(o, "ok", r->ok);
        cJSON_AddStringToObject(o, "finish", r->finish);
        cJSON_AddStringToObject(o, "error", r->error);
        cJSON *ids = cJSON_AddArrayToObject(o, "tokens");
        for (int k = 0; k < r->n_ids; k++)
            cJSON_AddItemToArray(ids, cJSON_CreateNumber(r->ids[k]));
        cJSON_AddStringToObject(o, "text", r->text ? r->text : "");
        cJSON_AddNumberToObject(o, "ttft_ms",
                                r->t_first ? (double)(r->t_first - r->t_submit) / 1e6 : -1.0);
        cJSON_AddNumberToObject(o, "e2e_ms",
                                r->t_end ? (double)(r->t_end - r->t_submit) / 1e6 : -1.0);
        char *line = cJSON_PrintUnformatted(o);
        fprintf(f, "%s\n", line);
        free(line);
        cJSON_Delete(o);
    }
    if (fclose(f) != 0) return ms_errf(err, err_size, "%s: write failed", path);
    return 0;
}
