/* profile.c — the per-stage profile: defaults, strict JSON reading with
 * cJSON, validation, writing, and the linear latency model. See profile.h
 * for the file format. */
#include "profile.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "ms_common.h"


static const char *const s_curve_names[MS_CURVE_COUNT] = {
    "preprocess", "vit",    "project",         "prefill",      "prefill_batch",
    "decode",     "decode_ctx", "transfer_memcpy", "transfer_ipc", "transfer_tcp"};
static const char *const s_curve_units[MS_CURVE_COUNT] = {
    "megapixels", "images", "images", "tokens", "sequences",
    "sequences",  "context_tokens", "MiB", "MiB", "MiB"};

const char *ms_curve_name(ms_curve c) {
    if ((int)c < 0 || c >= MS_CURVE_COUNT) return NULL;
    return s_curve_names[c];
}

const char *ms_curve_unit(ms_curve c) {
    if ((int)c < 0 || c >= MS_CURVE_COUNT) return NULL;
    return s_curve_units[c];
}

double ms_profile_curve_eval(const ms_profile_curve *c, double x) {
    assert(c);
    return c->base_ms + c->per_unit_ms * x;
}

void ms_profile_default(ms_profile *out) {
    assert(out);
    memset(out, 0, sizeof(*out));
    out->version = MS_PROFILE_VERSION;
    snprintf(out->model, sizeof(out->model), "%s", "default");
    snprintf(out->hardware, sizeof(out->hardware), "%s", "cpu");
    out->ttft_ms = 5000;
    out->tbt_ms = 200;
    /* Encoding is compute-bound: batching buys no throughput, so the cap is small. */
    out->stage[MS_STAGE_ENCODE] = (ms_stage_profile){.max_batch = 4,
                                                     .base_ms = 2.0,
                                                     .per_unit_ms = 0.05,
                                                     .slo_share = 0.5,
                                                     .capacity_per_s = 20000.0};
    /* Prefill batches by token budget. */
    out->stage[MS_STAGE_PREFILL] = (ms_stage_profile){.max_batch = 2048,
                                                      .base_ms = 1.0,
                                                      .per_unit_ms = 0.02,
                                                      .slo_share = 0.5,
                                                      .capacity_per_s = 50000.0};
    /* Decode batches continuously up to the size that keeps TBT in SLO. */
    out->stage[MS_STAGE_DECODE] = (ms_stage_profile){.max_batch = 32,
                                                     .base_ms = 5.0,
                                                     .per_unit_ms = 0.5,
                                                     .slo_share = 1.0,
                                                     .capacity_per_s = 2000.0};
    out->n_classes = 2;
    out->classes[0] = (ms_slo_class){.name = "interactive", .ttft_ms = 2000, .tbt_ms = 100};
    out->classes[1] = (ms_slo_class){.name = "batch", .ttft_ms = 60000, .tbt_ms = 1000};
    out->limits = (ms_queue_limits){
        .max_pending_requests = 1024,
        .max_pending_image_tokens = 1 << 22,
        .max_pending_prompt_tokens = 1 << 24,
        .max_images_per_request = 64,
        .max_request_tokens = 32768,
        .max_actor_image_tokens = 0,
        .max_actor_prompt_tokens = 0,
    };
}

/* ---- validation --------------------------------------------------------- */

static bool s_finite_nonneg(double v) { return isfinite(v) && v >= 0; }

static int s_validate_measured(const ms_profile_measured *m, char *err, size_t err_size) {
    if (memchr(m->backend, '\0', sizeof(m->backend)) == NULL)
        return ms_errf(err, err_size, "measured.backend: not terminated");
    if (m->threads < 0 || m->n_ctx < 0 || m->image_size < 0 || m->image_tokens < 0 ||
        m->feature_bytes_per_image < 0 || m->kv_bytes_per_token < 0)
        return ms_errf(err, err_size, "measured: sizes and counts must be >= 0");
    if (!s_finite_nonneg(m->ref_mpixels))
        return ms_errf(err, err_size, "measured.ref_mpixels: must be a finite number >= 0");
    if (!isfinite(m->utilization) || m->utilization < 0 || m->utilization > 1)
        return ms_errf(err, err_size, "measured.utilization: must be in 0..1");
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        const ms_profile_slo_check *c = &m->slo_check[s];
        if (!s_finite_nonneg(c->budget_ms) || !s_finite_nonneg(c->batch_ms))
            return ms_errf(err, err_size,
                           "measured.slo_check.%s: budget_ms and batch_ms must be finite, >= 0",
                           ms_stage_name((ms_stage)s));
    }
    for (int k = 0; k < MS_CURVE_COUNT; k++) {
        const ms_profile_curve *c = &m->curve[k];
        const char *n = s_curve_names[k];
        if (!s_finite_nonneg(c->at) || !s_finite_nonneg(c->base_ms) ||
            !s_finite_nonneg(c->per_unit_ms))
            return ms_errf(err, err_size,
                           "measured.curves.%s: at, base_ms and per_unit_ms must be finite, >= 0",
                           n);
        if (c->n_points < 0 || c->n_points > MS_PROFILE_MAX_POINTS)
            return ms_errf(err, err_size, "measured.curves.%s.points: %d points, at most %d", n,
                           c->n_points, MS_PROFILE_MAX_POINTS);
        for (int i = 0; i < c->n_points; i++)
            if (!s_finite_nonneg(c->points[i].x) || !s_finite_nonneg(c->points[i].ms))
                return ms_errf(err, err_size,
                               "measured.curves.%s.points[%d]: must be finite numbers >= 0", n, i);
    }
    return 0;
}

int ms_profile_validate(const ms_profile *p, char *err, size_t err_size) {
    assert(p);
    if (p->version != MS_PROFILE_VERSION)
        return ms_errf(err, err_size, "version: %d is not %d", p->version, MS_PROFILE_VERSION);
    if (p->ttft_ms < 1 || p->ttft_ms > MS_PROFILE_MAX_SLO_MS)
        return ms_errf(err, err_size, "slo.ttft_ms: %d out of range 1..%d", p->ttft_ms,
                       MS_PROFILE_MAX_SLO_MS);
    if (p->tbt_ms < 1 || p->tbt_ms > MS_PROFILE_MAX_SLO_MS)
        return ms_errf(err, err_size, "slo.tbt_ms: %d out of range 1..%d", p->tbt_ms,
                       MS_PROFILE_MAX_SLO_MS);
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        const ms_stage_profile *sp = &p->stage[s];
        const char *n = ms_stage_name((ms_stage)s);
        if (sp->max_batch < 1 || sp->max_batch > MS_PROFILE_MAX_BATCH)
            return ms_errf(err, err_size, "stages.%s.max_batch: %lld out of range 1..%d", n,
                           (long long)sp->max_batch, MS_PROFILE_MAX_BATCH);
        if (!isfinite(sp->base_ms) || sp->base_ms < 0)
            return ms_errf(err, err_size, "stages.%s.base_ms: must be a finite number >= 0", n);
        if (!isfinite(sp->per_unit_ms) || sp->per_unit_ms < 0)
            return ms_errf(err, err_size, "stages.%s.per_unit_ms: must be a finite number >= 0", n);
        if (!isfinite(sp->slo_share) || sp->slo_share < 0 || sp->slo_share > 1)
            return ms_errf(err, err_size, "stages.%s.slo_share: must be in 0..1", n);
        if (!isfinite(sp->capacity_per_s) || sp->capacity_per_s < 0)
            return ms_errf(err, err_size, "stages.%s.capacity_per_s: must be a finite number >= 0",
                           n);
    }
    if (p->n_classes < 0 || p->n_classes > MS_PROFILE_MAX_CLASSES)
        return ms_errf(err, err_size, "slo_classes: %d classes, at most %d", p->n_classes,
                       MS_PROFILE_MAX_CLASSES);
    for (int i = 0; i < p->n_classes; i++) {
        const ms_slo_class *c = &p->classes[i];
        if (c->name[0] == '\0' || memchr(c->name, '\0', sizeof(c->name)) == NULL)
            return ms_errf(err, err_size, "slo_classes[%d].name: must be 1..%d bytes", i,
                           MS_PROFILE_NAME_MAX - 1);
        if (c->ttft_ms < 1 || c->ttft_ms > MS_PROFILE_MAX_SLO_MS)
            return ms_errf(err, err_size, "slo_classes[%d].ttft_ms: %d out of range 1..%d", i,
                           c->ttft_ms, MS_PROFILE_MAX_SLO_MS);
        if (c->tbt_ms < 1 || c->tbt_ms > MS_PROFILE_MAX_SLO_MS)
            return ms_errf(err, err_size, "slo_classes[%d].tbt_ms: %d out of range 1..%d", i,
                           c->tbt_ms, MS_PROFILE_MAX_SLO_MS);
        for (int j = 0; j < i; j++)
            if (strcmp(p->classes[j].name, c->name) == 0)
                return ms_errf(err, err_size, "slo_classes[%d].name: \"%s\" defined twice", i,
                               c->name);
    }
    if (p->measured.present && s_validate_measured(&p->measured, err, err_size) != 0) return -1;
    const ms_queue_limits *l = &p->limits;
    if (l->max_pending_requests < 0 || l->max_pending_image_tokens < 0 ||
        l->max_pending_prompt_tokens < 0 || l->max_images_per_request < 0 ||
        l->max_request_tokens < 0 || l->max_actor_image_tokens < 0 ||
        l->max_actor_prompt_tokens < 0)
        return ms_errf(err, err_size, "limits: values must be >= 0 (0 = unlimited)");
    return 0;
}

/* ---- strict JSON reading ------------------------------------------------ */

/* Rejects duplicate keys and keys not in `allowed` (NULL-terminated); path is
 * the object's key path for messages ("" at the top). */
static int s_check_keys(const cJSON *obj, const char *path, const char *const *allowed, char *err,
                        size_t err_size) {
    for (const cJSON *it = obj->child; it; it = it->next) {
        bool known = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(it->string, *a) == 0) known = true;
        if (!known)
            return ms_errf(err, err_size, "%s%s%s: unknown key", path, path[0] ? "." : "",
                           it->string);
        for (const cJSON *prev = obj->child; prev != it; prev = prev->next)
            if (strcmp(prev->string, it->string) == 0)
                return ms_errf(err, err_size, "%s%s%s: duplicate key", path, path[0] ? "." : "",
                               it->string);
    }
    return 0;
}

static int s_get_object(const cJSON *it, const char *path, char *err, size_t err_size) {
    if (!cJSON_IsObject(it)) return ms_errf(err, err_size, "%s: must be an object", path);
    return 0;
}

/* A non-negative finite number. */
static int s_get_number(const cJSON *it, const char *path, double *out, char *err,
                        size_t err_size) {
    if (!cJSON_IsNumber(it)) return ms_errf(err, err_size, "%s: must be a number", path);
    double v = it->valuedouble;
    if (!isfinite(v)) return ms_errf(err, err_size, "%s: must be finite", path);
    if (v < 0) return ms_errf(err, err_size, "%s: %g is negative", path, v);
    *out = v;
    return 0;
}

/* A non-negative integer <= max. */
static int s_get_int(const cJSON *it, const char *path, int64_t max, int64_t *out, char *err,
                     size_t err_size) {
    double v;
    if (s_get_number(it, path, &v, err, err_size) != 0) return -1;
    if (v != floor(v)) return ms_errf(err, err_size, "%s: %g is not an integer", path, v);
    if (v > (double)max)
        return ms_errf(err, err_size, "%s: %g is larger than %lld", path, v, (long long)max);
    *out = (int64_t)v;
    return 0;
}

static int s_get_int32(const cJSON *it, const char *path, int32_t *out, char *err,
                       size_t err_size) {
    int64_t v;
    if (s_get_int(it, path, INT32_MAX, &v, err, err_size) != 0) return -1;
    *out = (int32_t)v;
    return 0;
}

static int s_get_string(const cJSON *it, const char *path, char *out, size_t out_size, char *err,
                        size_t err_size) {
    if (!cJSON_IsString(it) || !it->valuestring)
        return ms_errf(err, err_size, "%s: must be a string", path);
    size_t n = strlen(it->valuestring);
    if (n >= out_size)
        return ms_errf(err, err_size, "%s: longer than %zu bytes", path, out_size - 1);
    memcpy(out, it->valuestring, n + 1);
    return 0;
}

static int s_read_slo(const cJSON *obj, ms_profile *p, char *err, size_t err_size) {
    static const char *const keys[] = {"ttft_ms", "tbt_ms", NULL};
    if (s_get_object(obj, "slo", err, err_size) != 0) return -1;
    if (s_check_keys(obj, "slo", keys, err, err_size) != 0) return -1;
    const cJSON *it;
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "ttft_ms")) &&
        s_get_int32(it, "slo.ttft_ms", &p->ttft_ms, err, err_size) != 0)
        return -1;
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "tbt_ms")) &&
        s_get_int32(it, "slo.tbt_ms", &p->tbt_ms, err, err_size) != 0)
        return -1;
    return 0;
}

static int s_read_classes(const cJSON *arr, ms_profile *p, char *err, size_t err_size) {
    static const char *const keys[] = {"name", "ttft_ms", "tbt_ms", NULL};
    if (!cJSON_IsArray(arr)) return ms_errf(err, err_size, "slo_classes: must be an array");
    int n = cJSON_GetArraySize(arr);
    if (n > MS_PROFILE_MAX_CLASSES)
        return ms_errf(err, err_size, "slo_classes: %d classes, at most %d", n,
                       MS_PROFILE_MAX_CLASSES);
    p->n_classes = 0;
    int i = 0;
    for (const cJSON *c = arr->child; c; c = c->next, i++) {
        char path[64];
        snprintf(path, sizeof(path), "slo_classes[%d]", i);
        if (s_get_object(c, path, err, err_size) != 0) return -1;
        if (s_check_keys(c, path, keys, err, err_size) != 0) return -1;
        ms_slo_class *sc = &p->classes[i];
        memset(sc, 0, sizeof(*sc));
        const cJSON *it;
        char kp[96];
        if (!(it = cJSON_GetObjectItemCaseSensitive(c, "name")))
            return ms_errf(err, err_size, "%s.name: missing", path);
        snprintf(kp, sizeof(kp), "%s.name", path);
        if (s_get_string(it, kp, sc->name, sizeof(sc->name), err, err_size) != 0) return -1;
        if (!(it = cJSON_GetObjectItemCaseSensitive(c, "ttft_ms")))
            return ms_errf(err, err_size, "%s.ttft_ms: missing", path);
        snprintf(kp, sizeof(kp), "%s.ttft_ms", path);
        if (s_get_int32(it, kp, &sc->ttft_ms, err, err_size) != 0) return -1;
        if (!(it = cJSON_GetObjectItemCaseSensitive(c, "tbt_ms")))
            return ms_errf(err, err_size, "%s.tbt_ms: missing", path);
        snprintf(kp, sizeof(kp), "%s.tbt_ms", path);
        if (s_get_int32(it, kp, &sc->tbt_ms, err, err_size) != 0) return -1;
        p->n_classes = i + 1;
    }
    return 0;
}

static int s_read_stage(const cJSON *obj, const char *name, ms_stage_profile *sp, char *err,
                        size_t err_size) {
    static const char *const keys[] = {"max_batch", "base_ms",        "per_unit_ms",
                                       "slo_share", "capacity_per_s", NULL};
    char path[64], kp[96];
    snprintf(path, sizeof(path), "stages.%s", name);
    if (s_get_object(obj, path, err, err_size) != 0) return -1;
    if (s_check_keys(obj, path, keys, err, err_size) != 0) return -1;
    const cJSON *it;
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "max_batch"))) {
        snprintf(kp, sizeof(kp), "%s.max_batch", path);
        if (s_get_int(it, kp, MS_PROFILE_MAX_BATCH, &sp->max_batch, err, err_size) != 0) return -1;
    }
    struct {
        const char *key;
        double *dst;
    } nums[] = {{"base_ms", &sp->base_ms},
                {"per_unit_ms", &sp->per_unit_ms},
                {"slo_share", &sp->slo_share},
                {"capacity_per_s", &sp->capacity_per_s}};
    for (size_t i = 0; i < MS_ARRAY_LEN(nums); i++) {
        if (!(it = cJSON_GetObjectItemCaseSensitive(obj, nums[i].key))) continue;
        snprintf(kp, sizeof(kp), "%s.%s", path, nums[i].key);
        if (s_get_number(it, kp, nums[i].dst, err, err_size) != 0) return -1;
    }
    return 0;
}

static const char *const s_stage_keys[] = {"encode", "prefill", "decode", NULL};

static int s_read_stages(const cJSON *obj, ms_profile *p, char *err, size_t err_size) {
    if (s_get_object(obj, "stages", err, err_size) != 0) return -1;
    if (s_check_keys(obj, "stages", s_stage_keys, err, err_size) != 0) return -1;
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, ms_stage_name((ms_stage)s));
        if (it && s_read_stage(it, ms_stage_name((ms_stage)s), &p->stage[s], err, err_size) != 0) return -1;
    }
    return 0;
}

static int s_read_limits(const cJSON *obj, ms_profile *p, char *err, size_t err_size) {
    static const char *const keys[] = {"max_pending_requests",      "max_pending_image_tokens",
                                       "max_pending_prompt_tokens", "max_images_per_request",
                                       "max_request_tokens",        "max_actor_image_tokens",
                                       "max_actor_prompt_tokens",   NULL};
    if (s_get_object(obj, "limits", err, err_size) != 0) return -1;
    if (s_check_keys(obj, "limits", keys, err, err_size) != 0) return -1;
    ms_queue_limits *l = &p->limits;
    struct {
        const char *key;
        int32_t *i32;
        int64_t *i64;
    } f[] = {{"max_pending_requests", &l->max_pending_requests, NULL},
             {"max_pending_image_tokens", NULL, &l->max_pending_image_tokens},
             {"max_pending_prompt_tokens", NULL, &l->max_pending_prompt_tokens},
             {"max_images_per_request", &l->max_images_per_request, NULL},
             {"max_request_tokens", &l->max_request_tokens, NULL},
             {"max_actor_image_tokens", NULL, &l->max_actor_image_tokens},
             {"max_actor_prompt_tokens", NULL, &l->max_actor_prompt_tokens}};
    for (size_t i = 0; i < MS_ARRAY_LEN(f); i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, f[i].key);
        if (!it) continue;
        char kp[96];
        snprintf(kp, sizeof(kp), "limits.%s", f[i].key);
        if (f[i].i32) {
            if (s_get_int32(it, kp, f[i].i32, err, err_size) != 0) return -1;
        } else {
            /* 2^53: the largest integer a JSON double carries exactly. */
            if (s_get_int(it, kp, (int64_t)1 << 53, f[i].i64, err, err_size) != 0) return -1;
        }
    }
    return 0;
}

static int s_read_curve(const cJSON *obj, ms_curve k, ms_profile_curve *c, char *err,
                        size_t err_size) {
    static const char *const keys[] = {"unit", "at", "base_ms", "per_unit_ms", "points", NULL};
    char path[96], kp[128];
    snprintf(path, sizeof(path), "measured.curves.%s", s_curve_names[k]);
    if (s_get_object(obj, path, err, err_size) != 0) return -1;
    if (s_check_keys(obj, path, keys, err, err_size) != 0) return -1;
    const cJSON *it;
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "unit"))) {
        char unit[MS_PROFILE_NAME_MAX];
        snprintf(kp, sizeof(kp), "%s.unit", path);
        if (s_get_string(it, kp, unit, sizeof(unit), err, err_size) != 0) return -1;
        if (strcmp(unit, s_curve_units[k]) != 0)
            return ms_errf(err, err_size, "%s: \"%s\" is not \"%s\"", kp, unit,
                           s_curve_units[k]);
    }
    struct {
        const char *key;
        double *dst;
    } nums[] = {{"at", &c->at}, {"base_ms", &c->base_ms}, {"per_unit_ms", &c->per_unit_ms}};
    for (size_t i = 0; i < MS_ARRAY_LEN(nums); i++) {
        if (!(it = cJSON_GetObjectItemCaseSensitive(obj, nums[i].key))) continue;
        snprintf(kp, sizeof(kp), "%s.%s", path, nums[i].key);
        if (s_get_number(it, kp, nums[i].dst, err, err_size) != 0) return -1;
    }
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "points"))) {
        snprintf(kp, sizeof(kp), "%s.points", path);
        if (!cJSON_IsArray(it)) return ms_errf(err, err_size, "%s: must be an array", kp);
        int n = cJSON_GetArraySize(it);
        if (n > MS_PROFILE_MAX_POINTS)
            return ms_errf(err, err_size, "%s: %d points, at most %d", kp, n,
                           MS_PROFILE_MAX_POINTS);
        int i = 0;
        for (const cJSON *pt = it->child; pt; pt = pt->next, i++) {
            char pp[160];
            snprintf(pp, sizeof(pp), "%s[%d]", kp, i);
            if (!cJSON_IsArray(pt) || cJSON_GetArraySize(pt) != 2)
                return ms_errf(err, err_size, "%s: must be an array [x, ms]", pp);
            if (s_get_number(pt->child, pp, &c->points[i].x, err, err_size) != 0 ||
                s_get_number(pt->child->next, pp, &c->points[i].ms, err, err_size) != 0)
                return -1;
        }
        c->n_points = n;
    }
    return 0;
}

static int s_read_slo_check(const cJSON *obj, ms_stage st, ms_profile_slo_check *c, char *err,
                            size_t err_size) {
    static const char *const keys[] = {"budget_ms", "batch_ms", "met", NULL};
    char path[96], kp[128];
    snprintf(path, sizeof(path), "measured.slo_check.%s", ms_stage_name(st));
    if (s_get_object(obj, path, err, err_size) != 0) return -1;
    if (s_check_keys(obj, path, keys, err, err_size) != 0) return -1;
    const cJSON *it;
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "budget_ms"))) {
        snprintf(kp, sizeof(kp), "%s.budget_ms", path);
        if (s_get_number(it, kp, &c->budget_ms, err, err_size) != 0) return -1;
    }
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "batch_ms"))) {
        snprintf(kp, sizeof(kp), "%s.batch_ms", path);
        if (s_get_number(it, kp, &c->batch_ms, err, err_size) != 0) return -1;
    }
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "met"))) {
        if (!cJSON_IsBool(it)) return ms_errf(err, err_size, "%s.met: must be true or false", path);
        c->met = cJSON_IsTrue(it);
    }
    return 0;
}

static int s_read_measured(const cJSON *obj, ms_profile *p, char *err, size_t err_size) {
    static const char *const keys[] = {"backend",      "threads",
                                       "n_ctx",        "image_size",
                                       "image_tokens", "feature_bytes_per_image",
                                       "kv_bytes_per_token", "ref_mpixels",
                                       "utilization",  "slo_check",
                                       "curves",       NULL};
    if (s_get_object(obj, "measured", err, err_size) != 0) return -1;
    if (s_check_keys(obj, "measured", keys, err, err_size) != 0) return -1;
    ms_profile_measured *m = &p->measured;
    memset(m, 0, sizeof(*m));
    m->present = true;
    const cJSON *it;
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "backend")) &&
        s_get_string(it, "measured.backend", m->backend, sizeof(m->backend), err, err_size) != 0)
        return -1;
    struct {
        const char *key;
        int32_t *i32;
        int64_t *i64;
        double *dbl;
    } f[] = {{"threads", &m->threads, NULL, NULL},
             {"n_ctx", &m->n_ctx, NULL, NULL},
             {"image_size", &m->image_size, NULL, NULL},
             {"image_tokens", &m->image_tokens, NULL, NULL},
             {"feature_bytes_per_image", NULL, &m->feature_bytes_per_image, NULL},
             {"kv_bytes_per_token", NULL, &m->kv_bytes_per_token, NULL},
             {"ref_mpixels", NULL, NULL, &m->ref_mpixels},
             {"utilization", NULL, NULL, &m->utilization}};
    for (size_t i = 0; i < MS_ARRAY_LEN(f); i++) {
        if (!(it = cJSON_GetObjectItemCaseSensitive(obj, f[i].key))) continue;
        char kp[96];
        snprintf(kp, sizeof(kp), "measured.%s", f[i].key);
        if (f[i].i32) {
            if (s_get_int32(it, kp, f[i].i32, err, err_size) != 0) return -1;
        } else if (f[i].i64) {
            if (s_get_int(it, kp, (int64_t)1 << 53, f[i].i64, err, err_size) != 0) return -1;
        } else if (s_get_number(it, kp, f[i].dbl, err, err_size) != 0) {
            return -1;
        }
    }
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "slo_check"))) {
        if (s_get_object(it, "measured.slo_check", err, err_size) != 0) return -1;
        if (s_check_keys(it, "measured.slo_check", s_stage_keys, err, err_size) != 0) return -1;
        for (int s = 0; s < MS_STAGE_COUNT; s++) {
            const cJSON *o = cJSON_GetObjectItemCaseSensitive(it, ms_stage_name((ms_stage)s));
            if (o && s_read_slo_check(o, (ms_stage)s, &m->slo_check[s], err, err_size) != 0)
                return -1;
        }
    }
    if ((it = cJSON_GetObjectItemCaseSensitive(obj, "curves"))) {
        static const char *ckeys[MS_CURVE_COUNT + 1];
        for (int k = 0; k < MS_CURVE_COUNT; k++) ckeys[k] = s_curve_names[k];
        ckeys[MS_CURVE_COUNT] = NULL;
        if (s_get_object(it, "measured.curves", err, err_size) != 0) return -1;
        if (s_check_keys(it, "measured.curves", ckeys, err, err_size) != 0) return -1;
        for (int k = 0; k < MS_CURVE_COUNT; k++) {
            const cJSON *o = cJSON_GetObjectItemCaseSensitive(it, s_curve_names[k]);
            if (o && s_read_curve(o, (ms_curve)k, &m->curve[k], err, err_size) != 0) return -1;
        }
    }
    return 0;
}

/* Line and column (1-based) of byte offset off in text. */
static void s_line_col(const char *text, size_t off, int *line, int *col) {
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

int ms_profile_parse(const char *json, size_t len, ms_profile *out, char *err, size_t err_size) {
    assert(json || len == 0);
    assert(out);
    ms_profile p;
    ms_profile_default(&p);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
    if (!root) {
        size_t off = (end && end >= json && end <= json + len) ? (size_t)(end - json) : 0;
        int line, col;
        s_line_col(json, off, &line, &col);
        return ms_errf(err, err_size, "invalid JSON at line %d column %d", line, col);
    }
    int rc = -1;
    if (end) {
        for (const char *c = end; c < json + len; c++) {
            if (*c == '\0' && c == json + len - 1) break; /* a counted terminator */
            if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r') {
                int line, col;
                s_line_col(json, (size_t)(c - json), &line, &col);
                ms_errf(err, err_size,
                        "trailing characters after the JSON object at line %d "
                        "column %d",
                        line, col);
                goto out;
            }
        }
    }
    if (!cJSON_IsObject(root)) {
        ms_errf(err, err_size, "the profile must be a JSON object");
        goto out;
    }
    static const char *const keys[] = {"version", "model",  "hardware", "slo",     "slo_classes",
                                       "stages",  "limits", "measured", NULL};
    if (s_check_keys(root, "", keys, err, err_size) != 0) goto out;
    const cJSON *it;
    if ((it = cJSON_GetObjectItemCaseSensitive(root, "version"))) {
        if (s_get_int32(it, "version", &p.version, err, err_size) != 0) goto out;
        if (p.version != MS_PROFILE_VERSION) {
            ms_errf(err, err_size, "version: %d is not supported (expected %d)", p.version,
                    MS_PROFILE_VERSION);
            goto out;
        }
    }
    if ((it = cJSON_GetObjectItemCaseSensitive(root, "model")) &&
        s_get_string(it, "model", p.model, sizeof(p.model), err, err_size) != 0)
        goto out;
    if ((it = cJSON_GetObjectItemCaseSensitive(root, "hardware")) &&
        s_get_string(it, "hardware", p.hardware, sizeof(p.hardware), err, err_size) != 0)
        goto out;
    if ((it = cJSON_GetObjectItemCaseSensitive(root, "slo")) &&
        s_read_slo(it, &p, err, err_size) != 0)
        goto out;
    if ((it = cJSON_GetObjectItemCaseSensitive(root, "slo_classes")) &&
        s_read_classes(it, &p, err, err_size) != 0)
        goto out;
    if ((it = cJSON_GetObjectItemCaseSensitive(root, "stages")) &&
        s_read_stages(it, &p, err, err_size) != 0)
        goto out;
    if ((it = cJSON_GetObjectItemCaseSensitive(root, "limits")) &&
        s_read_limits(it, &p, err, err_size) != 0)
        goto out;
    if ((it = cJSON_GetObjectItemCaseSensitive(root, "measured")) &&
        s_read_measured(it, &p, err, err_size) != 0)
        goto out;
    if (ms_profile_validate(&p, err, err_size) != 0) goto out;
    *out = p;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int ms_profile_load(const char *path, ms_profile *out, bool *used_defaults, char *err,
                    size_t err_size) {
    assert(path && out);
    if (used_defaults) *used_defaults = false;
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT) {
        ms_warn("profile %s not found: using the built-in defaults", path);
        ms_profile_default(out);
        if (used_defaults) *used_defaults = true;
        return 0;
    }
    char rerr[MS_ERR_SIZE];
    size_t len = 0;
    uint8_t *buf = ms_read_file(path, MS_PROFILE_MAX_BYTES, &len, rerr, sizeof(rerr));
    if (!buf) return ms_errf(err, err_size, "profile %s: %s", path, rerr);
    char perr[MS_ERR_SIZE];
    int rc = ms_profile_parse((const char *)buf, len, out, perr, sizeof(perr));
    free(buf);
    if (rc != 0) return ms_errf(err, err_size, "profile %s: %s", path, perr);
    return 0;
}

/* ---- writing ------------------------------------------------------------- */

static void s_write_measured(cJSON *root, const ms_profile_measured *m) {
    cJSON *o = cJSON_AddObjectToObject(root, "measured");
    cJSON_AddStringToObject(o, "backend", m->backend);
    cJSON_AddNumberToObject(o, "threads", m->threads);
    cJSON_AddNumberToObject(o, "n_ctx", m->n_ctx);
    cJSON_AddNumberToObject(o, "image_size", m->image_size);
    cJSON_AddNumberToObject(o, "image_tokens", m->image_tokens);
    cJSON_AddNumberToObject(o, "feature_bytes_per_image", (double)m->feature_bytes_per_image);
    cJSON_AddNumberToObject(o, "kv_bytes_per_token", (double)m->kv_bytes_per_token);
    cJSON_AddNumberToObject(o, "ref_mpixels", m->ref_mpixels);
    cJSON_AddNumberToObject(o, "utilization", m->utilization);
    cJSON *chk = cJSON_AddObjectToObject(o, "slo_check");
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        cJSON *c = cJSON_AddObjectToObject(chk, ms_stage_name((ms_stage)s));
        cJSON_AddNumberToObject(c, "budget_ms", m->slo_check[s].budget_ms);
        cJSON_AddNumberToObject(c, "batch_ms", m->slo_check[s].batch_ms);
        cJSON_AddBoolToObject(c, "met", m->slo_check[s].met);
    }
    cJSON *curves = cJSON_AddObjectToObject(o, "curves");
    for (int k = 0; k < MS_CURVE_COUNT; k++) {
        const ms_profile_curve *c = &m->curve[k];
        if (c->n_points == 0) continue; /* not measured */
        cJSON *co = cJSON_AddObjectToObject(curves, s_curve_names[k]);
        cJSON_AddStringToObject(co, "unit", s_curve_units[k]);
        cJSON_AddNumberToObject(co, "at", c->at);
        cJSON_AddNumberToObject(co, "base_ms", c->base_ms);
        cJSON_AddNumberToObject(co, "per_unit_ms", c->per_unit_ms);
        cJSON *pts = cJSON_AddArrayToObject(co, "points");
        for (int i = 0; i < c->n_points; i++) {
            cJSON *pt = cJSON_CreateArray();
            cJSON_AddItemToArray(pt, cJSON_CreateNumber(c->points[i].x));
            cJSON_AddItemToArray(pt, cJSON_CreateNumber(c->points[i].ms));
            cJSON_AddItemToArray(pts, pt);
        }
    }
}

char *ms_profile_to_json(const ms_profile *p, char *err, size_t err_size) {
    assert(p);
    if (ms_profile_validate(p, err, err_size) != 0) return NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "version", p->version);
    cJSON_AddStringToObject(root, "model", p->model);
    cJSON_AddStringToObject(root, "hardware", p->hardware);
    cJSON *slo = cJSON_AddObjectToObject(root, "slo");
    cJSON_AddNumberToObject(slo, "ttft_ms", p->ttft_ms);
    cJSON_AddNumberToObject(slo, "tbt_ms", p->tbt_ms);
    cJSON *classes = cJSON_AddArrayToObject(root, "slo_classes");
    for (int i = 0; i < p->n_classes; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "name", p->classes[i].name);
        cJSON_AddNumberToObject(c, "ttft_ms", p->classes[i].ttft_ms);
        cJSON_AddNumberToObject(c, "tbt_ms", p->classes[i].tbt_ms);
        cJSON_AddItemToArray(classes, c);
    }
    cJSON *stages = cJSON_AddObjectToObject(root, "stages");
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        const ms_stage_profile *sp = &p->stage[s];
        cJSON *o = cJSON_AddObjectToObject(stages, ms_stage_name((ms_stage)s));
        cJSON_AddNumberToObject(o, "max_batch", (double)sp->max_batch);
        cJSON_AddNumberToObject(o, "base_ms", sp->base_ms);
        cJSON_AddNumberToObject(o, "per_unit_ms", sp->per_unit_ms);
        cJSON_AddNumberToObject(o, "slo_share", sp->slo_share);
        cJSON_AddNumberToObject(o, "capacity_per_s", sp->capacity_per_s);
    }
    const ms_queue_limits *l = &p->limits;
    cJSON *lim = cJSON_AddObjectToObject(root, "limits");
    cJSON_AddNumberToObject(lim, "max_pending_requests", l->max_pending_requests);
    cJSON_AddNumberToObject(lim, "max_pending_image_tokens", (double)l->max_pending_image_tokens);
    cJSON_AddNumberToObject(lim, "max_pending_prompt_tokens", (double)l->max_pending_prompt_tokens);
    cJSON_AddNumberToObject(lim, "max_images_per_request", l->max_images_per_request);
    cJSON_AddNumberToObject(lim, "max_request_tokens", l->max_request_tokens);
    cJSON_AddNumberToObject(lim, "max_actor_image_tokens", (double)l->max_actor_image_tokens);
    cJSON_AddNumberToObject(lim, "max_actor_prompt_tokens", (double)l->max_actor_prompt_tokens);
    if (p->measured.present) s_write_measured(root, &p->measured);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) {
        ms_errf(err, err_size, "profile: out of memory while writing JSON");
        return NULL;
    }
    /* Hand back memory the caller frees with free(), with a final newline. */
    size_t n = strlen(text);
    char *outp = ms_xmalloc(n + 2);
    memcpy(outp, text, n);
    outp[n] = '\n';
    outp[n + 1] = '\0';
    cJSON_free(text);
    return outp;
}

/* ---- model ----------------------------------------------------------------- */

double ms_profile_latency_ms(const ms_profile *p, ms_stage stage, int64_t units) {
    assert(p);
    assert((int)stage >= 0 && stage < MS_STAGE_COUNT);
    if (units <= 0) return 0.0;
    const ms_stage_profile *sp = &p->stage[stage];
    return sp->base_ms + sp->per_unit_ms * (double)units;
}

int ms_profile_slo_class(const ms_profile *p, const char *name, int32_t *ttft_ms, int32_t *tbt_ms) {
    assert(p && ttft_ms && tbt_ms);
    if (!name || name[0] == '\0') {
        *ttft_ms = p->ttft_ms;
        *tbt_ms = p->tbt_ms;
        return 0;
    }
    for (int i = 0; i < p->n_classes; i++) {
        if (strcmp(p->classes[i].name, name) == 0) {
            *ttft_ms = p->classes[i].ttft_ms;
            *tbt_ms = p->classes[i].tbt_ms;
            return 0;
        }
    }
    return -1;
}
