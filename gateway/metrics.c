/* metrics.c — Prometheus text exposition (metrics.h). */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

/* One label-value tuple of a family. */
typedef struct s_series {
    char values[MS_METRICS_MAX_LABELS][MS_METRICS_MAX_LABEL_VALUE + 1]; /* label values */
    double value;                                                       /* counter / gauge value */
    uint64_t *bucket; /* histogram: n_bounds + 1 per-bucket (not cumulative) counts, last = +Inf */
    double sum;       /* histogram: sum of observations */
    uint64_t count;   /* histogram: observations */
} s_series;

struct ms_metric {
    ms_metrics *owner;                  /* registry (its lock) */
    char name[MS_METRICS_MAX_NAME + 1]; /* metric name */
    char *help;                         /* help text, owned */
    ms_metric_type type;                /* counter | gauge | histogram */
    int n_labels;                       /* label names */
    char labels[MS_METRICS_MAX_LABELS][MS_METRICS_MAX_NAME + 1];
    double *bounds;    /* histogram bucket upper bounds */
    size_t n_bounds;   /* finite bounds (+Inf implicit) */
    s_series **series; /* n_series of them */
    size_t n_series;
    uint64_t dropped; /* updates lost because the family had MS_METRICS_MAX_SERIES series */
};

struct ms_metrics {
    pthread_mutex_t mu;                      /* guards every family and series */
    ms_metric *fam[MS_METRICS_MAX_FAMILIES]; /* registered families, in order */
    size_t n_fam;
};

ms_metrics *ms_metrics_new(void) {
    ms_metrics *m = ms_xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

static void s_family_free(ms_metric *f) {
    for (size_t i = 0; i < f->n_series; i++) {
        free(f->series[i]->bucket);
        free(f->series[i]);
    }
    free(f->series);
    free(f->bounds);
    free(f->help);
    free(f);
}

void ms_metrics_destroy(ms_metrics **self_p) {
    if (!self_p || !*self_p) return;
    ms_metrics *m = *self_p;
    for (size_t i = 0; i < m->n_fam; i++)
        s_family_free(m->fam[i]);
    pthread_mutex_destroy(&m->mu);
    free(m);
    *self_p = NULL;
}

/* ---- definition checks ------------------------------------------------------------ */
static bool s_name_ok(const char *s, bool colon) {
    size_t n = strlen(s);
    if (n == 0 || n > MS_METRICS_MAX_NAME) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alpha =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return true;
}

static ms_metric *s_register(ms_metrics *m, ms_metric_type type, const char *name, const char *help,
                             const char *labels, const double *bounds, size_t n_bounds, char *err,
                             size_t err_size) {
    if (!name || !s_name_ok(name, true)) {
        ms_errf(err, err_size, "invalid metric name '%s'", name ? name : "(null)");
        return NULL;
    }
    if (help && strlen(help) > MS_METRICS_MAX_HELP) {
        ms_errf(err, err_size, "help of '%s' is longer than %d bytes", name, MS_METRICS_MAX_HELP);
        return NULL;
    }
    ms_metric *f = ms_xcalloc(1, sizeof *f);
    f->owner = m;
    f->type = type;
    snprintf(f->name, sizeof f->name, "%s", name);
    f->help = ms_xstrdup(help ? help : "");
    for (const char *p = labels; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (f->n_labels == MS_METRICS_MAX_LABELS || n == 0 || n > MS_METRICS_MAX_NAME) {
            ms_errf(err, err_size, "bad label list '%s' of '%s' (at most %d names)", labels, name,
                    MS_METRICS_MAX_LABELS);
            goto fail;
        }
        char *l = f->labels[f->n_labels++];
        memcpy(l, p, n);
        l[n] = 0;
        if (!s_name_ok(l, false) || strcmp(l, "le") == 0 || strncmp(l, "__", 2) == 0) {
            ms_errf(err, err_size, "invalid label name '%s' of '%s'", l, name);
            goto fail;
        }
        for (int j = 0; j + 1 < f->n_labels; j++)
            if (strcmp(f->labels[j], l) == 0) {
                ms_errf(err, err_size, "label '%s' given twice for '%s'", l, name);
                goto fail;
            }
        p = comma ? comma + 1 : p + n;
    }
    if (type == MS_METRIC_HISTOGRAM) {
        if (!bounds || n_bounds == 0 || n_bounds > MS_METRICS_MAX_BUCKETS) {
            ms_errf(err, err_size, "histogram '%s' needs 1..%d bucket bounds", name,
                    MS_METRICS_MAX_BUCKETS);
            goto fail;
        }
        for (size_t i = 0; i < n_bounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
                ms_errf(err, err_size, "bucket bounds of '%s' must be finite and increasing", name);
                goto fail;
            }
        f->bounds = ms_xmalloc(n_bounds * sizeof *f->bounds);
        memcpy(f->bounds, bounds, n_bounds * sizeof *f->bounds);
        f->n_bounds = n_bounds;
    }
    pthread_mutex_lock(&m->mu);
    bool dup = false;
    for (size_t i = 0; i < m->n_fam; i++)
        dup = dup || strcmp(m->fam[i]->name, name) == 0;
    if (dup || m->n_fam == MS_METRICS_MAX_FAMILIES) {
        pthread_mutex_unlock(&m->mu);
        ms_errf(err, err_size, dup ? "metric '%s' registered twice" : "too many metrics at '%s'",
                name);
        goto fail;
    }
    m->fam[m->n_fam++] = f;
    pthread_mutex_unlock(&m->mu);
    return f;
fail:
    s_family_free(f);
    return NULL;
}

ms_metric *ms_metrics_counter(ms_metrics *m, const char *name, const char *help, const char *labels,
                              char *err, size_t err_size) {
    return s_register(m, MS_METRIC_COUNTER, name, help, labels, NULL, 0, err, err_size);
}

ms_metric *ms_metrics_gauge(ms_metrics *m, const char *name, const char *help, const char *labels,
                            char *err, size_t err_size) {
    return s_register(m, MS_METRIC_GAUGE, name, help, labels, NULL, 0, err, err_size);
}

ms_metric *ms_metrics_histogram(ms_metrics *m, const char *name, const char *help,
                                const char *labels, const double *bounds, size_t n_bounds,
                                char *err, size_t err_size) {
    return s_register(m, MS_METRIC_HISTOGRAM, name, help, labels, bounds, n_bounds, err, err_size);
}

/* ---- updates ------------------------------------------------------------------------ */
/* The series of f for values (created if create), or NULL. Lock held. */
static s_series *s_series_get(ms_metric *f, const char *const *values, bool create) {
    char want[MS_METRICS_MAX_LABELS][MS_METRICS_MAX_LABEL_VALUE + 1];
    for (int i = 0; i < f->n_labels; i++)
        snprintf(want[i], sizeof want[i], "%s", values && values[i] ? values[i] : "");
    for (size_t s = 0; s < f->n_series; s++) {
        int i = 0;
        while (i < f->n_labels && strcmp(f->series[s]->values[i], want[i]) == 0)
            i++;
        if (i == f->n_labels) return f->series[s];
    }
    if (!create) return NULL;
    if (f->n_series == MS_METRICS_MAX_SERIES) {
        f->dropped++;
        return NULL;
    }
    s_series *s = ms_xcalloc(1, sizeof *s);
    memcpy(s->values, want, sizeof want);
    if (f->type == MS_METRIC_HISTOGRAM) s->bucket = ms_xcalloc(f->n_bounds + 1, sizeof *s->bucket);
    f->series = ms_xrealloc(f->series, (f->n_series + 1) * sizeof *f->series);
    f->series[f->n_series++] = s;
    return s;
}

void ms_metric_add(ms_metric *f, const char *const *values, double v) {
    if (!f || isnan(v) || f->type == MS_METRIC_HISTOGRAM) return;
    if (f->type == MS_METRIC_COUNTER && v < 0) return;
    pthread_mutex_lock(&f->owner->mu);
    s_series *s = s_series_get(f, values, true);
    if (s) s->value += v;
    pthread_mutex_unlock(&f->owner->mu);
}

void ms_metric_set(ms_metric *f, const char *const *values, double v) {
    if (!f || isnan(v) || f->type != MS_METRIC_GAUGE) return;
    pthread_mutex_lock(&f->owner->mu);
    s_series *s = s_series_get(f, values, true);
    if (s) s->value = v;
    pthread_mutex_unlock(&f->owner->mu);
}

void ms_metric_observe(ms_metric *f, const char *const *values, double v) {
    if (!f || isnan(v) || f->type != MS_METRIC_HISTOGRAM) return;
    /* first bound >= v (binary search), n_bounds for +Inf */
    size_t lo = 0, hi = f->n_bounds;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (f->bounds[mid] >= v)
            hi = mid;
        else
            lo = mid + 1;
    }
    pthread_mutex_lock(&f->owner->mu);
    s_series *s = s_series_get(f, values, true);
    if (s) {
        s->bucket[lo]++;
        s->sum += v;
        s->count++;
    }
    pthread_mutex_unlock(&f->owner->mu);
}

double ms_metric_value(ms_metric *f, const char *const *values) {
    if (!f) return 0;
    pthread_mutex_lock(&f->owner->mu);
    s_series *s = s_series_get(f, values, false);
    double v = !s ? 0 : f->type == MS_METRIC_HISTOGRAM ? (double)s->count : s->value;
    pthread_mutex_unlock(&f->owner->mu);
    return v;
}

uint64_t ms_metric_dropped(ms_metric *f) {
    pthread_mutex_lock(&f->owner->mu);
    uint64_t d = f->dropped;
    pthread_mutex_unlock(&f->owner->mu);
    return d;
}

/* ---- rendering ------------------------------------------------------------------------ */
typedef struct s_buf {
    char *p;
    size_t len, cap;
} s_buf;

static void s_put(s_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = MS_MAX(b->cap * 2, b->len + n + 1);
        b->p = ms_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void s_puts(s_buf *b, const char *s) {
    s_put(b, s, strlen(s));
}

/* Text with \\ and \n escaped, and \" too for label values. */
static void s_put_escaped(s_buf *b, const char *s, bool quote) {
    for (; *s; s++) {
        if (*s == '\\')
            s_puts(b, "\\\\");
        else if (*s == '\n')
            s_puts(b, "\\n");
        else if (quote && *s == '"')
            s_puts(b, "\\\"");
        else
            s_put(b, s, 1);
    }
}

const char *ms_metrics_format_double(double v, char *buf, size_t n) {
    if (isnan(v))
        snprintf(buf, n, "NaN");
    else if (isinf(v))
        snprintf(buf, n, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, n, "%.0f", v); /* integers without an exponent: "10", not "1e+01" */
    else {
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, n, "%.*g", prec, v);
            if (strtod(buf, NULL) == v) break;
        }
    }
    return buf;
}

/* {a="x",b="y"[,le="..."]} or nothing when there are no labels at all. */
static void s_put_labels(s_buf *b, const ms_metric *f, const s_series *s, const char *le) {
    if (f->n_labels == 0 && !le) return;
    s_puts(b, "{");
    for (int i = 0; i < f->n_labels; i++) {
        if (i) s_puts(b, ",");
        s_puts(b, f->labels[i]);
        s_puts(b, "=\"");
        s_put_escaped(b, s->values[i], true);
        s_puts(b, "\"");
    }
    if (le) {
        if (f->n_labels) s_puts(b, ",");
        s_puts(b, "le=\"");
        s_puts(b, le);
        s_puts(b, "\"");
    }
    s_puts(b, "}");
}

static void s_put_sample(s_buf *b, const ms_metric *f, const char *suffix, const s_series *s,
                         const char *le, double v) {
    char num[48];
    s_puts(b, f->name);
    s_puts(b, suffix);
    s_put_labels(b, f, s, le);
    s_puts(b, " ");
    s_puts(b, ms_metrics_format_double(v, num, sizeof num));
    s_puts(b, "\n");
}

static void s_render_family(s_buf *b, const ms_metric *f) {
    static const char *const type_name[] = {"counter", "gauge", "histogram"};
    s_puts(b, "# HELP ");
    s_puts(b, f->name);
    s_puts(b, " ");
    s_put_escaped(b, f->help, false);
    s_puts(b, "\n# TYPE ");
    s_puts(b, f->name);
    s_puts(b, " ");
    s_puts(b, type_name[f->type]);
    s_puts(b, "\n");
    if (f->type != MS_METRIC_HISTOGRAM && f->n_labels == 0 && f->n_series == 0) {
        s_put_sample(b, f, "", NULL, NULL, 0); /* an unlabelled metric always has its sample */
        return;
    }
    for (size_t i = 0; i < f->n_series; i++) {
        const s_series *s = f->series[i];
        if (f->type != MS_METRIC_HISTOGRAM) {
            s_put_sample(b, f, "", s, NULL, s->value);
            continue;
        }
        uint64_t cum = 0;
        char le[48];
        for (size_t k = 0; k < f->n_bounds; k++) {
            cum += s->bucket[k];
            s_put_sample(b, f, "_bucket", s, ms_metrics_format_double(f->bounds[k], le, sizeof le),
                         (double)cum);
        }
        cum += s->bucket[f->n_bounds];
        s_put_sample(b, f, "_bucket", s, "+Inf", (double)cum);
        s_put_sample(b, f, "_sum", s, NULL, s->sum);
        s_put_sample(b, f, "_count", s, NULL, (double)s->count);
    }
    if (f->type == MS_METRIC_HISTOGRAM && f->n_labels == 0 && f->n_series == 0) {
        /* an unlabelled histogram with no observation yet: all zero */
        s_series zero;
        memset(&zero, 0, sizeof zero);
        char le[48];
        for (size_t k = 0; k < f->n_bounds; k++)
            s_put_sample(b, f, "_bucket", &zero,
                         ms_metrics_format_double(f->bounds[k], le, sizeof le), 0);
        s_put_sample(b, f, "_bucket", &zero, "+Inf", 0);
        s_put_sample(b, f, "_sum", &zero, NULL, 0);
        s_put_sample(b, f, "_count", &zero, NULL, 0);
    }
}

int ms_metrics_render(ms_metrics *m, char **out, size_t *len) {
    s_buf b = {0};
    s_put(&b, "", 0);
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->n_fam; i++)
        s_render_family(&b, m->fam[i]);
    pthread_mutex_unlock(&m->mu);
    *out = b.p;
    *len = b.len;
    return 0;
}
