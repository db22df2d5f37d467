/* metrics.h — Prometheus metrics in the text exposition format (version
 * 0.0.4, what /metrics serves): counters, gauges and histograms with fixed
 * buckets, each family optionally labelled. Thread-safe: any thread may
 * update any metric while another renders.
 *
 *   ms_metrics *m = ms_metrics_new();
 *   ms_metric *ttft = ms_metrics_histogram(m, "modserve:time_to_first_token_seconds",
 *                                          "Time to first token.", NULL, bounds, n, err, n_err);
 *   ms_metric *stage = ms_metrics_histogram(m, "modserve:stage_latency_seconds", "...",
 *                                           "stage,modality", bounds, n, err, n_err);
 *   ms_metric_observe(ttft, NULL, 0.12);
 *   ms_metric_observe(stage, (const char *[]){"encode", "image"}, 0.04);
 *   char *text; size_t len; ms_metrics_render(m, &text, &len); ... free(text);
 *   ms_metrics_destroy(&m);
 *
 * A family is registered once (its name, help, type, label names and, for a
 * histogram, bucket upper bounds); each distinct tuple of label values is a
 * series, created on first use. Families render in registration order, series
 * in creation order; a labelled family with no series yet renders only its
 * # HELP / # TYPE lines (valid exposition). Label values are escaped (\\, \",
 * \n); a family holds at most MS_METRICS_MAX_SERIES series — updates for new
 * label values beyond that are dropped and counted in the family's
 * `dropped` count (ms_metric_dropped), so a bug that labels by request id
 * cannot eat the process's memory.
 */
#ifndef MS_METRICS_H
#define MS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define MS_METRICS_MAX_FAMILIES    96  /* families of one registry */
#define MS_METRICS_MAX_LABELS      4   /* label names of one family */
#define MS_METRICS_MAX_SERIES      256 /* label-value tuples of one family */
#define MS_METRICS_MAX_BUCKETS     40 /* finite bucket bounds of one histogram (+Inf is implicit) */
#define MS_METRICS_MAX_NAME        128 /* bytes of a metric or label name */
#define MS_METRICS_MAX_LABEL_VALUE 128 /* bytes of a label value (longer values are cut) */
#define MS_METRICS_MAX_HELP        512 /* bytes of a help text */

typedef enum ms_metric_type {
    MS_METRIC_COUNTER = 0, /* monotonic; ms_metric_add with v >= 0 */
    MS_METRIC_GAUGE,       /* ms_metric_set / ms_metric_add */
    MS_METRIC_HISTOGRAM,   /* ms_metric_observe */
} ms_metric_type;

typedef struct ms_metrics ms_metrics; /* a registry of families */
typedef struct ms_metric ms_metric;   /* one family; owned by its registry */

ms_metrics *ms_metrics_new(void);
/* Frees the registry and every family in it; NULL-safe; sets *self_p NULL. */
void ms_metrics_destroy(ms_metrics **self_p);

/* Registers a family. name: [a-zA-Z_:][a-zA-Z0-9_:]*, unique in m; help:
 * any text (escaped on output); labels: NULL / "" for none, else label names
 * joined by ',' ("stage,modality"; each [a-zA-Z_][a-zA-Z0-9_]*, not "le",
 * not starting with "__"). Histograms: bounds strictly increasing finite
 * numbers, 1..MS_METRICS_MAX_BUCKETS of them (+Inf is added). Returns the
 * family (owned by m, valid until ms_metrics_destroy), or NULL + err for an
 * invalid definition (a programmer error the caller reports at start-up). */
ms_metric *ms_metrics_counter(ms_metrics *m, const char *name, const char *help, const char *labels,
                              char *err, size_t err_size);
ms_metric *ms_metrics_gauge(ms_metrics *m, const char *name, const char *help, const char *labels,
                            char *err, size_t err_size);
ms_metric *ms_metrics_histogram(ms_metrics *m, const char *name, const char *help,
                                const char *labels, const double *bounds, size_t n_bounds,
                                char *err, size_t err_size);

/* Updates the series of f with the label values `values` (exactly as many
 * as f has label names; NULL for a family without labels). NaN values are
 * ignored, and so is a negative add to a counter.
 *   add:     counter or gauge += v
 *   set:     gauge = v
 *   observe: histogram: the bucket counts of every bound >= v, sum += v, count += 1 */
void ms_metric_add(ms_metric *f, const char *const *values, double v);
void ms_metric_set(ms_metric *f, const char *const *values, double v);
void ms_metric_observe(ms_metric *f, const char *const *values, double v);

/* Current value of a counter / gauge series, or a histogram's count; 0 for a
 * series that does not exist yet. For tests and for the gateway's own use. */
double ms_metric_value(ms_metric *f, const char *const *values);
/* Updates dropped because the family was full. */
uint64_t ms_metric_dropped(ms_metric *f);

/* Renders every family into a new malloc'd, NUL-terminated buffer *out of
 * *len bytes (the caller frees it). Returns 0 (it cannot fail short of
 * running out of memory, which aborts). */
int ms_metrics_render(ms_metrics *m, char **out, size_t *len);

/* Writes the shortest text that reads back as v ("0.25", "1e-06", "+Inf",
 * "-Inf", "NaN") into buf of size n (>= 32); returns buf. */
const char *ms_metrics_format_double(double v, char *buf, size_t n);

#endif
