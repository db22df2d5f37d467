/* profiler.c — the offline profiler: engine measurements, line fitting and
 * the SLO arithmetic that turns curves into batch caps and capacities. See
 * profiler.h for the rules and docs/profiles.md for the file. */
#include "profiler.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <turbojpeg.h>
#include <zmq.h>

#include "engine.h"
#include "image.h"
#include "ms_common.h"

#define S_TOKEN_STRIDE         7919 /* synthetic token ids: 1 + (i * stride) % (n_vocab - 1) */
#define S_SEQ_OFFSET           31   /* per-sequence offset of the synthetic ids */
#define S_KV_SLACK             64   /* KV tokens beyond what a phase needs, per sequence */
#define S_PREFILL_BATCH_TOKENS 128  /* tokens per sequence of the prefill_batch curve */
#define S_MIB                  (1024.0 * 1024.0)
#define S_ZMQ_TIMEOUT_MS       10000 /* one loopback message must arrive within this */
#define S_MIN_CTX              32    /* smallest model context the point sets fit in */

/* ---- SLO math --------------------------------------------------------------- */

void ms_profiler_slo_default(ms_profiler_slo *slo) {
    assert(slo);
    ms_profile d;
    ms_profile_default(&d);
    memset(slo, 0, sizeof(*slo));
    slo->ttft_ms = MS_PROFILER_TTFT_MS_DEFAULT;
    slo->tbt_ms = MS_PROFILER_TBT_MS_DEFAULT;
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        slo->slo_share[s] = d.stage[s].slo_share;
    slo->utilization = MS_PROFILER_UTILIZATION_DEFAULT;
    slo->max_batch[MS_STAGE_ENCODE] = MS_PROFILER_ENCODE_MAX_BATCH;
    slo->max_batch[MS_STAGE_PREFILL] = MS_PROFILER_PREFILL_MAX_TOKENS;
    slo->max_batch[MS_STAGE_DECODE] = MS_PROFILER_DECODE_MAX_SEQS;
}

void ms_profiler_fit(ms_profile_curve *c) {
    assert(c);
    const int n = c->n_points;
    c->base_ms = 0;
    c->per_unit_ms = 0;
    if (n <= 0) return;
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < n; i++) {
        const double x = c->points[i].x, y = c->points[i].ms;
        sx += x, sy += y, sxx += x * x, sxy += x * y;
    }
    const double mx = sx / n, my = sy / n;
    const double var = sxx - n * mx * mx;
    double slope, base;
    if (n >= 2 && var > 1e-12 * (sxx > 0 ? sxx : 1)) {
        slope = (sxy - n * mx * my) / var;
        base = my - slope * mx;
    } else if (sxx > 0) { /* one x value: through the origin */
        slope = sxy / sxx;
        base = 0;
    } else { /* every x is 0 */
        slope = 0;
        base = my;
    }
    if (slope < 0) {
        slope = 0;
        base = my;
    } else if (base < 0) {
        slope = sxx > 0 ? sxy / sxx : 0;
        base = 0;
    }
    c->base_ms = base;
    c->per_unit_ms = slope;
}

static int s_check_slo(const ms_profiler_slo *slo, char *err, size_t err_size) {
    if (slo->ttft_ms < 1 || slo->ttft_ms > MS_PROFILE_MAX_SLO_MS)
        return ms_errf(err, err_size, "ttft_ms %d out of range 1..%d", slo->ttft_ms,
                       MS_PROFILE_MAX_SLO_MS);
    if (slo->tbt_ms < 1 || slo->tbt_ms > MS_PROFILE_MAX_SLO_MS)
        return ms_errf(err, err_size, "tbt_ms %d out of range 1..%d", slo->tbt_ms,
                       MS_PROFILE_MAX_SLO_MS);
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        const double sh = slo->slo_share[s];
        if (!isfinite(sh) || sh <= 0 || sh > 1)
            return ms_errf(err, err_size, "%s share %g out of range (0, 1]",
                           ms_stage_name((ms_stage)s), sh);
        if (slo->max_batch[s] < 1 || slo->max_batch[s] > MS_PROFILE_MAX_BATCH)
            return ms_errf(err, err_size, "%s max batch %lld out of range 1..%d",
                           ms_stage_name((ms_stage)s), (long long)slo->max_batch[s],
                           MS_PROFILE_MAX_BATCH);
    }
    if (!isfinite(slo->utilization) || slo->utilization <= 0 || slo->utilization > 1)
        return ms_errf(err, err_size, "utilization %g out of range (0, 1]", slo->utilization);
    return 0;
}

/* Largest b in [1, cap] with base + per * b <= limit; 0 if even b = 1 is
 * over. The limit is widened by a relative 1e-9 so that a fitted line that
 * should meet it exactly is not refused for float dust. */
static int64_t s_largest_fit(double base, double per, double limit, int64_t cap) {
    limit *= 1.0 + 1e-9;
    if (base + per <= limit) {
        if (per <= 0) return cap;
        double b = floor((limit - base) / per);
        /* guard the floor against rounding just below an exact fit */
        if (base + per * (b + 1) <= limit) b += 1;
        return b >= (double)cap ? cap : (int64_t)b;
    }
    return 0;
}

/* The cap bound of a stage: the SLO bound, and at most MS_PROFILER_EXTRAPOLATE
 * times the largest x the curve was measured at (a line is trusted only so
 * far past its points). */
static int64_t s_cap_bound(const ms_profile_curve *c, int64_t slo_cap) {
    double most = 0;
    for (int i = 0; i < c->n_points; i++)
        most = c->points[i].x > most ? c->points[i].x : most;
    const double bound = floor(most * MS_PROFILER_EXTRAPOLATE);
    if (bound >= 1 && bound < (double)slo_cap) return (int64_t)bound;
    return slo_cap;
}

/* The line of a curve where the stage operates: least squares over the
 * points whose latency is within `limit`, plus the first point past it (so
 * the cap is bracketed), at least the two smallest points. Latency curves
 * bend up (prefill attention grows with the prompt), and a line through all
 * points would misstate the region the SLO allows. A curve with no points
 * gives its stored line. */
static void s_region_line(const ms_profile_curve *c, double limit, double *base, double *per) {
    if (c->n_points == 0) {
        *base = c->base_ms;
        *per = c->per_unit_ms;
        return;
    }
    ms_profile_curve r = {0};
    for (int i = 0; i < c->n_points; i++) {
        r.points[r.n_points++] = c->points[i];
        if (c->points[i].ms > limit && r.n_points >= 2) break;
    }
    ms_profiler_fit(&r);
    *base = r.base_ms;
    *per = r.per_unit_ms;
}

/* One stage's numbers from its line L(b) = base + per * b (b in the stage's
 * batch unit), units_per_b stage units per batch unit, and the limit on L. */
static void s_stage_from_line(ms_stage_profile *sp, ms_profile_slo_check *chk, double base,
                              double per, double limit, int64_t cap, double units_per_b,
                              double utilization, bool smallest_efficient) {
    int64_t b = s_largest_fit(base, per, limit, cap);
    chk->met = b >= 1;
    if (b < 1) b = 1;
    if (smallest_efficient && b > 1) {
        /* throughput b / L(b) rises with b; take the smallest b within
         * MS_PROFILER_BATCH_GAIN_MIN of the best allowed one */
        const double best = (double)b / (base + per * (double)b);
        for (int64_t k = 1; k < b; k++)
            if ((double)k / (base + per * (double)k) >= (1.0 - MS_PROFILER_BATCH_GAIN_MIN) * best) {
                b = k;
                break;
            }
    }
    const double lat = base + per * (double)b;
    sp->max_batch = b;
    chk->batch_ms = lat;
    sp->capacity_per_s = lat > 0 ? (double)b * units_per_b / lat * 1000.0 * utilization : 0.0;
}

int ms_profiler_derive(ms_profile *p, const ms_profiler_slo *slo, char *err, size_t err_size) {
    assert(p && slo);
    if (!p->measured.present)
        return ms_errf(err, err_size, "the profile has no measured curves (run modserve-profile)");
    if (s_check_slo(slo, err, err_size) != 0) return -1;
    ms_profile_measured *m = &p->measured;
    p->ttft_ms = slo->ttft_ms;
    p->tbt_ms = slo->tbt_ms;
    m->utilization = slo->utilization;
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        p->stage[s].slo_share = slo->slo_share[s];
        m->slo_check[s].budget_ms =
            (s == MS_STAGE_DECODE ? slo->tbt_ms : slo->ttft_ms) * slo->slo_share[s];
    }

    /* encode: batches of images; units = image tokens */
    const ms_profile_curve *vit = &m->curve[MS_CURVE_VIT];
    const ms_profile_curve *pre = &m->curve[MS_CURVE_PREPROCESS];
    ms_stage_profile *enc = &p->stage[MS_STAGE_ENCODE];
    if ((vit->n_points > 0 || vit->per_unit_ms > 0) && m->image_tokens > 0) {
        const double pre_ms = pre->n_points > 0 ? ms_profile_curve_eval(pre, m->ref_mpixels) : 0;
        const double per_image = vit->per_unit_ms + pre_ms;
        const double T = m->image_tokens;
        enc->base_ms = vit->base_ms;
        enc->per_unit_ms = per_image / T;
        s_stage_from_line(enc, &m->slo_check[MS_STAGE_ENCODE], vit->base_ms, per_image,
                          m->slo_check[MS_STAGE_ENCODE].budget_ms / MS_PROFILER_QUEUE_FACTOR,
                          s_cap_bound(vit, slo->max_batch[MS_STAGE_ENCODE]), T, slo->utilization,
                          true);
    } else {
        enc->capacity_per_s = 0;
        m->slo_check[MS_STAGE_ENCODE].batch_ms = 0;
        m->slo_check[MS_STAGE_ENCODE].met = false;
    }

    /* prefill: a token budget */
    const ms_profile_curve *pf = &m->curve[MS_CURVE_PREFILL];
    ms_stage_profile *pre_st = &p->stage[MS_STAGE_PREFILL];
    if (pf->n_points > 0 || pf->per_unit_ms > 0) {
        const double limit = m->slo_check[MS_STAGE_PREFILL].budget_ms / MS_PROFILER_QUEUE_FACTOR;
        s_region_line(pf, limit, &pre_st->base_ms, &pre_st->per_unit_ms);
        s_stage_from_line(
            pre_st, &m->slo_check[MS_STAGE_PREFILL], pre_st->base_ms, pre_st->per_unit_ms, limit,
            s_cap_bound(pf, slo->max_batch[MS_STAGE_PREFILL]), 1.0, slo->utilization, false);
    } else {
        pre_st->capacity_per_s = 0;
        m->slo_check[MS_STAGE_PREFILL].batch_ms = 0;
        m->slo_check[MS_STAGE_PREFILL].met = false;
    }

    /* decode: sequences per step; one generated token per sequence and step */
    const ms_profile_curve *dc = &m->curve[MS_CURVE_DECODE];
    ms_stage_profile *dec = &p->stage[MS_STAGE_DECODE];
    if (dc->n_points > 0 || dc->per_unit_ms > 0) {
        const double limit = m->slo_check[MS_STAGE_DECODE].budget_ms;
        s_region_line(dc, limit, &dec->base_ms, &dec->per_unit_ms);
        s_stage_from_line(dec, &m->slo_check[MS_STAGE_DECODE], dec->base_ms, dec->per_unit_ms,
                          limit, s_cap_bound(dc, slo->max_batch[MS_STAGE_DECODE]), 1.0,
                          slo->utilization, false);
    } else {
        dec->capacity_per_s = 0;
        m->slo_check[MS_STAGE_DECODE].batch_ms = 0;
        m->slo_check[MS_STAGE_DECODE].met = false;
    }
    return ms_profile_validate(p, err, err_size);
}

/* ---- measurement: helpers ------------------------------------------------------ */

typedef struct {
    const ms_profiler_opts *o;
    ms_engine *e;
    int reps; /* timed repetitions per point */
    int n_vocab;
    char *err;
    size_t err_size;
} s_meas;

static void s_say(const s_meas *m, const char *fmt, ...) MS_PRINTF(2, 3);
static void s_say(const s_meas *m, const char *fmt, ...) {
    if (!m->o->progress) return;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    m->o->progress(line, m->o->progress_user);
}

static int s_cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double s_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(*v), s_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double s_ms_since(int64_t t0) {
    return (double)(ms_now_ns() - t0) / 1e6;
}

static void s_add_point(ms_profile_curve *c, double x, double ms) {
    if (c->n_points >= MS_PROFILE_MAX_POINTS) return;
    c->points[c->n_points++] = (ms_profile_point){.x = x, .ms = ms};
}

/* One timed operation. */
typedef int (*s_op_fn)(s_meas *m, void *arg);

/* One untimed warm-up and m->reps timed runs of op; the median into *ms. */
static int s_time(s_meas *m, s_op_fn op, void *arg, double *ms) {
    double t[64];
    const int reps = m->reps < 64 ? m->reps : 64;
    if (op(m, arg) != 0) return -1;
    for (int i = 0; i < reps; i++) {
        const int64_t t0 = ms_now_ns();
        if (op(m, arg) != 0) return -1;
        t[i] = s_ms_since(t0);
    }
    *ms = s_median(t, reps);
    return 0;
}

static int32_t s_token(const s_meas *m, int seq, int i) {
    return (int32_t)(1 + ((int64_t)(i + seq * S_SEQ_OFFSET) * S_TOKEN_STRIDE) % (m->n_vocab - 1));
}

/* ---- images ------------------------------------------------------------------- */

/* A deterministic picture with edges and texture (so JPEG sizes are realistic). */
static void s_synthetic_image(int w, int h, ms_image *out) {
    out->w = w;
    out->h = h;
    out->rgb = ms_xmalloc((size_t)w * (size_t)h * 3);
    uint32_t rng = 12345u;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            rng = rng * 1664525u + 1013904223u;
            uint8_t *px = out->rgb + ((size_t)y * (size_t)w + (size_t)x) * 3;
            const int check = ((x / 37) + (y / 29)) & 1;
            px[0] = (uint8_t)((x * 255) / (w > 1 ? w - 1 : 1));
            px[1] = (uint8_t)((y * 255) / (h > 1 ? h - 1 : 1));
            px[2] = (uint8_t)(check ? 200 : 40) ^ (uint8_t)((rng >> 24) & 0x1f);
        }
}

/* JPEG-encodes img (RGB8) into a malloc'd buffer. 0 or -1 + err. */
static int s_jpeg_encode(const ms_image *img, uint8_t **out, size_t *out_len, char *err,
                         size_t err_size) {
    tjhandle h = tjInitCompress();
    if (!h) return ms_errf(err, err_size, "libjpeg-turbo: cannot create a compressor");
    unsigned char *buf = NULL;
    unsigned long len = 0;
    int rc = tjCompress2(h, img->rgb, img->w, 0, img->h, TJPF_RGB, &buf, &len, TJSAMP_420,
                         MS_PROFILER_JPEG_QUALITY, 0);
    if (rc != 0) {
        ms_errf(err, err_size, "libjpeg-turbo: %s", tjGetErrorStr2(h));
        tjDestroy(h);
        return -1;
    }
    *out = ms_xmalloc(len);
    memcpy(*out, buf, len);
    *out_len = len;
    tjFree(buf);
    tjDestroy(h);
    return 0;
}

typedef struct {
    const uint8_t *bytes;
    size_t len;
    float *pixels;
} s_pre_arg;

static int s_op_preprocess(s_meas *m, void *arg) {
    s_pre_arg *a = arg;
    return ms_engine_preprocess(m->e, a->bytes, a->len, a->pixels, m->err, m->err_size);
}

/* Preprocess time vs megapixels: the source resized so that its long side
 * takes each of sides[], re-encoded as JPEG. */
static int s_measure_preprocess(s_meas *m, const ms_image *src, ms_profile_curve *c) {
    static const int sides_full[] = {256, 512, 1024, 1536, 2048};
    static const int sides_quick[] = {256, 1024, 2048};
    const int *sides = m->o->quick ? sides_quick : sides_full;
    const int n = m->o->quick ? (int)MS_ARRAY_LEN(sides_quick) : (int)MS_ARRAY_LEN(sides_full);
    float *pixels = ms_xmalloc(ms_engine_image_floats(m->e) * sizeof(float));
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const int longest = src->w > src->h ? src->w : src->h;
        const double k = (double)sides[i] / longest;
        const int w = MS_MAX(1, (int)lround(src->w * k)), h = MS_MAX(1, (int)lround(src->h * k));
        ms_image img = {0};
        uint8_t *jpg = NULL;
        size_t len = 0;
        if (ms_image_resize(src, w, h, &img) != 0) {
            rc = ms_errf(m->err, m->err_size, "preprocess: cannot resize to %dx%d", w, h);
            break;
        }
        rc = s_jpeg_encode(&img, &jpg, &len, m->err, m->err_size);
        ms_image_fini(&img);
        if (rc != 0) break;
        s_pre_arg a = {.bytes = jpg, .len = len, .pixels = pixels};
        double ms = 0;
        rc = s_time(m, s_op_preprocess, &a, &ms);
        free(jpg);
        if (rc != 0) break;
        const double mp = (double)w * h / 1e6;
        s_add_point(c, mp, ms);
        s_say(m, "preprocess %dx%d JPEG (%zu KiB): %.2f ms", w, h, len / 1024, ms);
    }
    free(pixels);
    return rc;
}

typedef struct {
    const float *in;
    float *out;
    int n;
} s_vis_arg;

static int s_op_vit(s_meas *m, void *arg) {
    s_vis_arg *a = arg;
    return ms_engine_encode(m->e, a->in, a->n, a->out, m->err, m->err_size);
}

static int s_op_project(s_meas *m, void *arg) {
    s_vis_arg *a = arg;
    return ms_engine_project(m->e, a->in, a->n, a->out, m->err, m->err_size);
}

/* ViT and connector time vs images per call. */
static int s_measure_vision(s_meas *m, const uint8_t *ref, size_t ref_len, const int *batches,
                            int n_batches, ms_profile_curve *vit, ms_profile_curve *proj) {
    const int bmax = batches[n_batches - 1];
    const size_t img_f = ms_engine_image_floats(m->e);
    const size_t T = (size_t)ms_engine_n_image_tokens(m->e);
    const size_t feat_f = T * (size_t)ms_engine_feature_dim(m->e);
    const size_t embd_f = T * (size_t)ms_engine_n_embd(m->e);
    float *pixels = ms_xmalloc(img_f * (size_t)bmax * sizeof(float));
    float *feat = ms_xmalloc(feat_f * (size_t)bmax * sizeof(float));
    float *embd = ms_xmalloc(embd_f * (size_t)bmax * sizeof(float));
    int rc = ms_engine_preprocess(m->e, ref, ref_len, pixels, m->err, m->err_size);
    for (int i = 1; i < bmax && rc == 0; i++)
        memcpy(pixels + img_f * (size_t)i, pixels, img_f * sizeof(float));
    for (int i = 0; i < n_batches && rc == 0; i++) {
        s_vis_arg a = {.in = pixels, .out = feat, .n = batches[i]};
        double ms = 0;
        if ((rc = s_time(m, s_op_vit, &a, &ms)) != 0) break;
        s_add_point(vit, batches[i], ms);
        s_vis_arg pa = {.in = feat, .out = embd, .n = batches[i]};
        double pms = 0;
        if ((rc = s_time(m, s_op_project, &pa, &pms)) != 0) break;
        s_add_point(proj, batches[i], pms);
        s_say(m, "encode batch %d: ViT %.2f ms, connector %.3f ms", batches[i], ms, pms);
    }
    free(pixels);
    free(feat);
    free(embd);
    return rc;
}

/* ---- text stages ------------------------------------------------------------------ */

typedef struct {
    int32_t *ids; /* [n_seqs * n] */
    int n;        /* tokens per sequence */
    int n_seqs;   /* sequences, prefilled one after the other */
    float *logits;
} s_prefill_arg;

static int s_op_prefill(s_meas *m, void *arg) {
    s_prefill_arg *a = arg;
    for (int s = 0; s < a->n_seqs; s++) {
        ms_seq *seq = ms_engine_seq_new(m->e);
        int rc = ms_engine_prefill(m->e, seq, a->ids + (size_t)s * (size_t)a->n, a->n, NULL, 0,
                                   a->logits, m->err, m->err_size);
        ms_engine_seq_free(m->e, &seq);
        if (rc != 0) return -1;
    }
    return 0;
}

static int s_measure_prefill(s_meas *m, const int *tokens, int n_tok, const int *seqs, int n_seqs,
                             int batch_tokens, ms_profile_curve *pf, ms_profile_curve *pb) {
    int most = 0;
    for (int i = 0; i < n_tok; i++)
        most = MS_MAX(most, tokens[i]);
    int smax = 0;
    for (int i = 0; i < n_seqs; i++)
        smax = MS_MAX(smax, seqs[i]);
    const int cap = MS_MAX(most, batch_tokens * smax);
    int32_t *ids = ms_xmalloc((size_t)cap * sizeof(int32_t));
    for (int i = 0; i < cap; i++)
        ids[i] = s_token(m, i / MS_MAX(1, batch_tokens), i);
    float *logits = ms_xmalloc((size_t)m->n_vocab * sizeof(float));
    int rc = 0;
    for (int i = 0; i < n_tok && rc == 0; i++) {
        s_prefill_arg a = {.ids = ids, .n = tokens[i], .n_seqs = 1, .logits = logits};
        double ms = 0;
        if ((rc = s_time(m, s_op_prefill, &a, &ms)) != 0) break;
        s_add_point(pf, tokens[i], ms);
        s_say(m, "prefill %d tokens: %.2f ms (%.0f tokens/s)", tokens[i], ms,
              ms > 0 ? tokens[i] / ms * 1e3 : 0.0);
    }
    pb->at = batch_tokens;
    for (int i = 0; i < n_seqs && rc == 0; i++) {
        s_prefill_arg a = {.ids = ids, .n = batch_tokens, .n_seqs = seqs[i], .logits = logits};
        double ms = 0;
        if ((rc = s_time(m, s_op_prefill, &a, &ms)) != 0) break;
        s_add_point(pb, seqs[i], ms);
        s_say(m, "prefill %d sequences x %d tokens: %.2f ms", seqs[i], batch_tokens, ms);
    }
    free(ids);
    free(logits);
    return rc;
}

/* Grows seq to n tokens (synthetic ids). */
static int s_extend(s_meas *m, ms_seq *seq, int n) {
    const int add = n - seq->n_past;
    if (add <= 0) return 0;
    int32_t *ids = ms_xmalloc((size_t)add * sizeof(int32_t));
    for (int i = 0; i < add; i++)
        ids[i] = s_token(m, 0, seq->n_past + i);
    int rc = ms_engine_prefill(m->e, seq, ids, add, NULL, 0, NULL, m->err, m->err_size);
    free(ids);
    return rc;
}

/* Median time (ms) of one decode step over n copies of the blob, after
 * `warm` untimed steps, over `steps` timed ones. */
static int s_decode_point(s_meas *m, const void *blob, size_t blob_len, int n, int warm, int steps,
                          double *ms) {
    ms_seq **seqs = ms_xcalloc((size_t)n, sizeof(*seqs));
    int32_t *tok = ms_xmalloc((size_t)n * sizeof(int32_t));
    float *logits = ms_xmalloc((size_t)n * (size_t)m->n_vocab * sizeof(float));
    double t[64];
    steps = MS_MIN(steps, 64);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        seqs[i] = ms_engine_seq_import(m->e, blob, blob_len, m->err, m->err_size);
        if (!seqs[i]) rc = -1;
    }
    for (int k = 0; k < warm + steps && rc == 0; k++) {
        for (int i = 0; i < n; i++)
            tok[i] = s_token(m, i, seqs[i]->n_past);
        const int64_t t0 = ms_now_ns();
        rc = ms_engine_decode(m->e, seqs, tok, n, logits, m->err, m->err_size);
        if (k >= warm) t[k - warm] = s_ms_since(t0);
    }
    if (rc == 0) *ms = s_median(t, steps);
    for (int i = 0; i < n; i++)
        if (seqs[i]) ms_engine_seq_free(m->e, &seqs[i]);
    free(seqs);
    free(tok);
    free(logits);
    return rc;
}

/* Exports seq into a malloc'd blob. */
static void *s_export(s_meas *m, const ms_seq *seq, size_t *len) {
    *len = ms_engine_seq_export_size(m->e, seq);
    void *blob = ms_xmalloc(*len);
    if (ms_engine_seq_export(m->e, seq, blob, *len, m->err, m->err_size) != 0) {
        free(blob);
        return NULL;
    }
    return blob;
}

typedef struct {
    const int *batches; /* decode vs batch, at ctx_ref */
    int n_batches;
    int ctx_ref;
    const int *ctxs; /* decode vs context, at ctx_batch sequences */
    int n_ctxs;
    int ctx_batch;
    int warm, steps; /* per point */
} s_decode_plan;

static int s_measure_decode(s_meas *m, const s_decode_plan *pl, ms_profile_curve *dc,
                            ms_profile_curve *dx, int64_t *kv_bytes_per_token) {
    ms_seq *base = ms_engine_seq_new(m->e);
    int rc = s_extend(m, base, pl->ctx_ref);
    size_t len = 0;
    void *blob = rc == 0 ? s_export(m, base, &len) : NULL;
    if (!blob) rc = -1;
    dc->at = pl->ctx_ref;
    for (int i = 0; i < pl->n_batches && rc == 0; i++) {
        double ms = 0;
        if ((rc = s_decode_point(m, blob, len, pl->batches[i], pl->warm, pl->steps, &ms)) != 0)
            break;
        s_add_point(dc, pl->batches[i], ms);
        s_say(m, "decode step, %d sequences at %d tokens: %.2f ms (%.0f tokens/s)", pl->batches[i],
              pl->ctx_ref, ms, ms > 0 ? pl->batches[i] / ms * 1e3 : 0.0);
    }
    /* KV bytes per token from two blob sizes; the context curve starts afresh
     * (its first context may be shorter than ctx_ref) */
    const size_t len_ref = len;
    const int n_ref = base->n_past;
    ms_engine_seq_free(m->e, &base);
    base = ms_engine_seq_new(m->e);
    dx->at = pl->ctx_batch;
    for (int i = 0; i < pl->n_ctxs && rc == 0; i++) {
        if ((rc = s_extend(m, base, pl->ctxs[i])) != 0) break;
        free(blob);
        if (!(blob = s_export(m, base, &len))) {
            rc = -1;
            break;
        }
        double ms = 0;
        if ((rc = s_decode_point(m, blob, len, pl->ctx_batch, pl->warm, pl->steps, &ms)) != 0)
            break;
        s_add_point(dx, base->n_past, ms);
        s_say(m, "decode step, %d sequences at %d tokens: %.2f ms", pl->ctx_batch, base->n_past,
              ms);
    }
    if (rc == 0 && base->n_past != n_ref && blob) {
        const double d = ((double)len - (double)len_ref) / (double)(base->n_past - n_ref);
        *kv_bytes_per_token = (int64_t)llround(d);
    } else if (rc == 0 && n_ref > 0) {
        *kv_bytes_per_token = (int64_t)(len_ref / (size_t)n_ref);
    }
    free(blob);
    ms_engine_seq_free(m->e, &base);
    return rc;
}

/* ---- transfers --------------------------------------------------------------------- */

static int s_measure_memcpy(s_meas *m, const int *mib, int n, ms_profile_curve *c) {
    const size_t most = (size_t)mib[n - 1] * (size_t)S_MIB;
    uint8_t *src = ms_xmalloc(most), *dst = ms_xmalloc(most);
    memset(src, 0x5a, most);
    memset(dst, 0, most); /* touch every page before timing */
    double t[64];
    const int reps = MS_MIN(m->reps, 64);
    for (int i = 0; i < n; i++) {
        const size_t bytes = (size_t)mib[i] * (size_t)S_MIB;
        memcpy(dst, src, bytes);
        for (int r = 0; r < reps; r++) {
            const int64_t t0 = ms_now_ns();
            memcpy(dst, src, bytes);
            t[r] = s_ms_since(t0);
            src[r % bytes] ^= dst[(r * 7919) % bytes]; /* keep the copies observable */
        }
        const double ms = s_median(t, reps);
        s_add_point(c, mib[i], ms);
        s_say(m, "memcpy %d MiB: %.3f ms (%.1f GB/s)", mib[i], ms,
              ms > 0 ? (double)bytes / ms / 1e6 : 0.0);
    }
    free(src);
    free(dst);
    return 0;
}

/* One ZeroMQ message per point: PUSH → PULL over `kind` ("ipc" or "tcp"),
 * from the send call until the receiver holds the whole message. */
static int s_measure_zmq(s_meas *m, const char *kind, const int *mib, int n, ms_profile_curve *c) {
    void *ctx = zmq_ctx_new();
    if (!ctx) return ms_errf(m->err, m->err_size, "zmq: cannot create a context");
    void *pull = zmq_socket(ctx, ZMQ_PULL), *push = zmq_socket(ctx, ZMQ_PUSH);
    char ep[256] = "";
    size_t ep_len = sizeof(ep);
    char ipc_path[128] = "";
    int rc = -1, zero = 0, tmo = S_ZMQ_TIMEOUT_MS;
    uint8_t *buf = NULL;
    if (!pull || !push) {
        ms_errf(m->err, m->err_size, "zmq: cannot create sockets: %s", zmq_strerror(zmq_errno()));
        goto out;
    }
    zmq_setsockopt(pull, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(push, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(pull, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
    zmq_setsockopt(push, ZMQ_SNDTIMEO, &tmo, sizeof(tmo));
    if (strcmp(kind, "ipc") == 0) {
        snprintf(ipc_path, sizeof(ipc_path), "/tmp/ms-profile-%ld.ipc", (long)getpid());
        snprintf(ep, sizeof(ep), "ipc://%s", ipc_path);
    } else {
        snprintf(ep, sizeof(ep), "tcp://127.0.0.1:*");
    }
    if (zmq_bind(pull, ep) != 0) {
        ms_errf(m->err, m->err_size, "zmq: bind %s: %s", ep, zmq_strerror(zmq_errno()));
        goto out;
    }
    ep_len = sizeof(ep);
    zmq_getsockopt(pull, ZMQ_LAST_ENDPOINT, ep, &ep_len);
    if (zmq_connect(push, ep) != 0) {
        ms_errf(m->err, m->err_size, "zmq: connect %s: %s", ep, zmq_strerror(zmq_errno()));
        goto out;
    }
    const size_t most = (size_t)mib[n - 1] * (size_t)S_MIB;
    buf = ms_xmalloc(most);
    memset(buf, 0x3c, most);
    double t[64];
    const int reps = MS_MIN(m->reps, 64);
    for (int i = 0; i < n; i++) {
        const size_t bytes = (size_t)mib[i] * (size_t)S_MIB;
        for (int r = -1; r < reps; r++) { /* r = -1: warm-up (connection, buffers) */
            zmq_msg_t msg;
            zmq_msg_init(&msg);
            const int64_t t0 = ms_now_ns();
            if (zmq_send(push, buf, bytes, 0) < 0 || zmq_msg_recv(&msg, pull, 0) < 0) {
                ms_errf(m->err, m->err_size, "zmq %s: %zu bytes: %s", kind, bytes,
                        zmq_strerror(zmq_errno()));
                zmq_msg_close(&msg);
                goto out;
            }
            const double ms = s_ms_since(t0);
            if (zmq_msg_size(&msg) != bytes) {
                ms_errf(m->err, m->err_size, "zmq %s: sent %zu bytes, received %zu", kind, bytes,
                        zmq_msg_size(&msg));
                zmq_msg_close(&msg);
                goto out;
            }
            zmq_msg_close(&msg);
            if (r >= 0) t[r] = ms;
        }
        const double ms = s_median(t, reps);
        s_add_point(c, mib[i], ms);
        s_say(m, "zmq %s %d MiB: %.3f ms (%.2f GB/s)", kind, mib[i], ms,
              ms > 0 ? (double)bytes / ms / 1e6 : 0.0);
    }
    rc = 0;
out:
    free(buf);
    if (push) zmq_close(push);
    if (pull) zmq_close(pull);
    zmq_ctx_term(ctx);
    if (ipc_path[0]) unlink(ipc_path);
    return rc;
}

/* ---- the run ------------------------------------------------------------------------- */

void ms_profiler_opts_default(ms_profiler_opts *o) {
    assert(o);
    memset(o, 0, sizeof(*o));
    o->backend = "cpu";
    o->transfer_zmq = true;
}

/* "CPU model name, N threads" into out. */
static void s_hardware(int threads, char *out, size_t size) {
    char model[256] = "cpu";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof(line), f)) {
            if (strncmp(line, "model name", 10) != 0) continue;
            const char *v = strchr(line, ':');
            if (!v) continue;
            v++;
            while (*v == ' ' || *v == '\t')
                v++;
            snprintf(model, sizeof(model), "%s", v);
            model[strcspn(model, "\n")] = '\0';
            break;
        }
        fclose(f);
    }
    char tail[32];
    snprintf(tail, sizeof(tail), ", %d threads", threads);
    /* keep the thread count even when the model name is long */
    const size_t room = size > strlen(tail) + 1 ? size - strlen(tail) - 1 : 0;
    snprintf(out, size, "%.*s%s", (int)room, model, tail);
}

/* Keeps the values of list[0..n) that are <= limit (and above the previous one). */
static int s_clamp_list(const int *list, int n, int limit, int *out) {
    int k = 0;
    for (int i = 0; i < n; i++) {
        const int v = MS_MIN(list[i], limit);
        if (v >= 1 && (k == 0 || v > out[k - 1])) out[k++] = v;
    }
    return k;
}

/* Reads the sample image (or makes one) and its bytes. */
static int s_sample_image(const ms_profiler_opts *o, ms_image *img, uint8_t **bytes, size_t *len,
                          char *err, size_t err_size) {
    if (!o->image_path) {
        s_synthetic_image(MS_PROFILER_REF_IMAGE_W, MS_PROFILER_REF_IMAGE_H, img);
        return s_jpeg_encode(img, bytes, len, err, err_size);
    }
    char e2[MS_ERR_SIZE];
    *bytes = ms_read_file(o->image_path, MS_PROFILER_MAX_IMAGE_BYTES, len, e2, sizeof(e2));
    if (!*bytes) return ms_errf(err, err_size, "%s: %s", o->image_path, e2);
    if (ms_image_decode(*bytes, *len, 0, img, e2, sizeof(e2)) != 0) {
        free(*bytes);
        *bytes = NULL;
        return ms_errf(err, err_size, "%s: %s", o->image_path, e2);
    }
    return 0;
}

int ms_profiler_measure(const ms_profiler_opts *o, ms_profile *out, char *err, size_t err_size) {
    assert(o && out);
    if (!o->lm_path) return ms_errf(err, err_size, "profile: no text model given");
    const bool quick = o->quick;
    s_meas m = {.o = o,
                .reps = o->reps > 0 ? MS_MIN(o->reps, 64) : (quick ? 2 : 3),
                .err = err,
                .err_size = err_size};

    /* the model's context decides the sizes, and they the KV capacity */
    char e2[MS_ERR_SIZE];
    ms_lm *lm = ms_lm_load(o->lm_path, e2, sizeof(e2));
    if (!lm) return ms_errf(err, err_size, "%s: %s", o->lm_path, e2);
    const int n_ctx = lm->hp.n_ctx_train > 0 ? lm->hp.n_ctx_train : MS_ENGINE_KV_TOKENS_DEFAULT;
    ms_lm_free(&lm);
    if (n_ctx < S_MIN_CTX)
        return ms_errf(err, err_size, "%s: a context of %d tokens is too small to profile (< %d)",
                       o->lm_path, n_ctx, S_MIN_CTX);

    static const int tok_full[] = {16, 32, 64, 128, 256, 512, 1024, 2048};
    static const int tok_quick[] = {16, 128, 512};
    static const int pseq[] = {1, 2, 4};
    static const int dbat_full[] = {1, 2, 4, 8, 16, 32, 64};
    static const int dbat_quick[] = {1, 4, 16, 32};
    static const int dctx_full[] = {64, 256, 512, 1024, 2048};
    static const int dctx_quick[] = {64, 512};
    static const int vbat_full[] = {1, 2, 4, 8};
    static const int vbat_quick[] = {1, 2, 4};
    static const int mib_full[] = {1, 4, 16, 64};
    static const int mib_quick[] = {1, 16};

    int tokens[16], dctx[16];
    s_decode_plan pl = {.warm = quick ? 1 : 2, .steps = quick ? 4 : 8};
    const int steps_all = pl.warm + pl.steps;
    const int n_tok = s_clamp_list(
        quick ? tok_quick : tok_full,
        quick ? (int)MS_ARRAY_LEN(tok_quick) : (int)MS_ARRAY_LEN(tok_full), n_ctx - 1, tokens);
    const int pb_tokens = MS_MIN(S_PREFILL_BATCH_TOKENS, n_ctx - 1);
    pl.ctx_ref = MS_MIN(MS_PROFILER_DECODE_CTX_REF, n_ctx / 2);
    pl.batches = quick ? dbat_quick : dbat_full;
    pl.n_batches = quick ? (int)MS_ARRAY_LEN(dbat_quick) : (int)MS_ARRAY_LEN(dbat_full);
    pl.ctx_batch = MS_PROFILER_DECODE_CTX_BATCH;
    pl.n_ctxs = s_clamp_list(quick ? dctx_quick : dctx_full,
                             quick ? (int)MS_ARRAY_LEN(dctx_quick) : (int)MS_ARRAY_LEN(dctx_full),
                             n_ctx - steps_all - 1, dctx);
    pl.ctxs = dctx;
    const int bmax = pl.batches[pl.n_batches - 1];
    const int ctx_max = pl.n_ctxs > 0 ? dctx[pl.n_ctxs - 1] : pl.ctx_ref;
    int64_t kv = tokens[n_tok - 1] + S_KV_SLACK;
    kv = MS_MAX(kv, (int64_t)3 * (pb_tokens + S_KV_SLACK));
    kv = MS_MAX(kv, (int64_t)(bmax + 1) * (pl.ctx_ref + steps_all + S_KV_SLACK));
    kv = MS_MAX(kv, (int64_t)(pl.ctx_batch + 1) * (ctx_max + steps_all + S_KV_SLACK));

    const int *vbat = quick ? vbat_quick : vbat_full;
    const int n_vbat = quick ? (int)MS_ARRAY_LEN(vbat_quick) : (int)MS_ARRAY_LEN(vbat_full);

    ms_engine_params ep;
    ms_engine_params_default(&ep);
    ep.lm_path = o->lm_path;
    ep.mmproj_path = o->mmproj_path;
    ep.backend = o->backend;
    ep.n_threads = o->n_threads;
    ep.kv_max_tokens = (int)kv;
    ep.n_ctx = n_ctx;
    ep.max_batch_tokens = o->max_batch_tokens;
    ep.vit_batch = vbat[n_vbat - 1];
    s_say(&m, "loading %s%s%s (KV for %lld tokens)", o->lm_path, o->mmproj_path ? " + " : "",
          o->mmproj_path ? o->mmproj_path : "", (long long)kv);
    const int64_t t_load = ms_now_ns();
    m.e = ms_engine_new(&ep, err, err_size);
    if (!m.e) return -1;
    s_say(&m, "loaded in %.1f s", s_ms_since(t_load) / 1e3);
    m.n_vocab = ms_engine_n_vocab(m.e);

    ms_profile_default(out);
    ms_profile_measured *me = &out->measured;
    me->present = true;
    const char *base = strrchr(o->lm_path, '/');
    snprintf(out->model, sizeof(out->model), "%s", base ? base + 1 : o->lm_path);
    const int threads = o->n_threads > 0 ? o->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    s_hardware(threads, out->hardware, sizeof(out->hardware));
    snprintf(me->backend, sizeof(me->backend), "%s", o->backend ? o->backend : "cpu");
    me->threads = threads;
    me->n_ctx = ms_engine_n_ctx(m.e);
    me->utilization = MS_PROFILER_UTILIZATION_DEFAULT;

    int rc = 0;
    ms_image img = {0};
    uint8_t *ref = NULL;
    size_t ref_len = 0;
    if (ms_engine_has_vision(m.e)) {
        me->image_size = ms_engine_image_size(m.e);
        me->image_tokens = ms_engine_n_image_tokens(m.e);
        me->feature_bytes_per_image =
            (int64_t)me->image_tokens * ms_engine_feature_dim(m.e) * (int64_t)sizeof(float);
        rc = s_sample_image(o, &img, &ref, &ref_len, err, err_size);
        if (rc == 0) {
            me->ref_mpixels = (double)img.w * img.h / 1e6;
            s_say(&m, "sample image %dx%d (%.2f megapixels), %d image tokens", img.w, img.h,
                  me->ref_mpixels, me->image_tokens);
            rc = s_measure_preprocess(&m, &img, &me->curve[MS_CURVE_PREPROCESS]);
        }
        if (rc == 0)
            rc = s_measure_vision(&m, ref, ref_len, vbat, n_vbat, &me->curve[MS_CURVE_VIT],
                                  &me->curve[MS_CURVE_PROJECT]);
    } else {
        s_say(&m, "no vision model: text-only profile");
    }
    if (rc == 0)
        rc = s_measure_prefill(&m, tokens, n_tok, pseq, (int)MS_ARRAY_LEN(pseq), pb_tokens,
                               &me->curve[MS_CURVE_PREFILL], &me->curve[MS_CURVE_PREFILL_BATCH]);
    if (rc == 0)
        rc = s_measure_decode(&m, &pl, &me->curve[MS_CURVE_DECODE], &me->curve[MS_CURVE_DECODE_CTX],
                              &me->kv_bytes_per_token);
    const int *mib = quick ? mib_quick : mib_full;
    const int n_mib = quick ? (int)MS_ARRAY_LEN(mib_quick) : (int)MS_ARRAY_LEN(mib_full);
    if (rc == 0) rc = s_measure_memcpy(&m, mib, n_mib, &me->curve[MS_CURVE_TRANSFER_MEMCPY]);
    if (rc == 0 && o->transfer_zmq)
        rc = s_measure_zmq(&m, "ipc", mib, n_mib, &me->curve[MS_CURVE_TRANSFER_IPC]);
    if (rc == 0 && o->transfer_zmq)
        rc = s_measure_zmq(&m, "tcp", mib, n_mib, &me->curve[MS_CURVE_TRANSFER_TCP]);
    for (int k = 0; k < MS_CURVE_COUNT; k++)
        ms_profiler_fit(&me->curve[k]);
    ms_image_fini(&img);
    free(ref);
    ms_engine_destroy(&m.e);
    return rc;
}
