/* trace.c — trace parsing, slicing, schedule and request shapes (trace.h). */
#include "trace.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "ms_common.h"
#include "sampler.h" /* MS_MAX_GEN_TOKENS */

#define S_CHUNK       (256u << 10) /* bytes read from a (gzip) file at once */
#define S_NS_PER_S    1000000000LL
#define S_SEC_PER_DAY 86400LL

/* ---- timestamps ----------------------------------------------------------------- */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t s_days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const int64_t yoe = y - era * 400;
    const int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void s_civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const int64_t doe = z - era * 146097;
    const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static bool s_is_leap(int64_t y) {
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int s_days_in_month(int64_t y, int m) {
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && s_is_leap(y) ? 29 : dim[m - 1];
}

/* Exactly n decimal digits at s into *v; false otherwise. */
static bool s_digits(const char *s, int n, int *v) {
    int x = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        x = x * 10 + (s[i] - '0');
    }
    *v = x;
    return true;
}

int ms_trace_parse_time(const char *s, size_t len, int64_t *t_ns, char *err, size_t err_size) {
    int y, mo, d, h, mi, se;
    if (len < 19) return ms_errf(err, err_size, "too short for YYYY-MM-DDThh:mm:ss");
    if (!s_digits(s, 4, &y) || s[4] != '-' || !s_digits(s + 5, 2, &mo) || s[7] != '-' ||
        !s_digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != ' ') || !s_digits(s + 11, 2, &h) ||
        s[13] != ':' || !s_digits(s + 14, 2, &mi) || s[16] != ':' || !s_digits(s + 17, 2, &se))
        return ms_errf(err, err_size, "not of the form YYYY-MM-DDThh:mm:ss");
    if (y < MS_TRACE_MIN_YEAR || y > MS_TRACE_MAX_YEAR)
        return ms_errf(err, err_size, "year %d outside %d..%d", y, MS_TRACE_MIN_YEAR,
                       MS_TRACE_MAX_YEAR);
    if (mo < 1 || mo > 12) return ms_errf(err, err_size, "month %d", mo);
    if (d < 1 || d > s_days_in_month(y, mo))
        return ms_errf(err, err_size, "day %d does not exist in %04d-%02d", d, y, mo);
    if (h > 23 || mi > 59 || se > 59)
        return ms_errf(err, err_size, "time %02d:%02d:%02d out of range", h, mi, se);
    size_t i = 19;
    int64_t frac = 0;
    if (i < len && s[i] == '.') {
        int nd = 0;
        for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++, nd++) {
            if (nd == 9) return ms_errf(err, err_size, "more than 9 fraction digits");
            frac = frac * 10 + (s[i] - '0');
        }
        if (nd == 0) return ms_errf(err, err_size, "no digits after '.'");
        for (; nd < 9; nd++)
            frac *= 10;
    }
    int64_t offset_s = 0;
    if (i < len) {
        if (s[i] == 'Z' && i + 1 == len) {
            i++;
        } else if ((s[i] == '+' || s[i] == '-') && len - i == 6 && s[i + 3] == ':') {
            int oh, om;
            if (!s_digits(s + i + 1, 2, &oh) || !s_digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
                return ms_errf(err, err_size, "bad zone offset '%.*s'", (int)(len - i), s + i);
            offset_s = (s[i] == '-' ? -1 : 1) * (oh * 3600LL + om * 60LL);
            i = len;
        } else {
            return ms_errf(err, err_size,
                           "unexpected '%.*s' after the time (only a fraction, "
                           "'Z' or a ±hh:mm zone may follow)",
                           (int)(len - i), s + i);
        }
    }
    const int64_t secs =
        s_days_from_civil(y, mo, d) * S_SEC_PER_DAY + h * 3600LL + mi * 60LL + se - offset_s;
    *t_ns = secs * S_NS_PER_S + frac;
    return 0;
}

void ms_trace_format_time(int64_t t_ns, char *buf, size_t size) {
    int64_t secs = t_ns / S_NS_PER_S, ns = t_ns % S_NS_PER_S;
    if (ns < 0) {
        ns += S_NS_PER_S;
        secs--;
    }
    int64_t days = secs / S_SEC_PER_DAY, sod = secs % S_SEC_PER_DAY;
    if (sod < 0) {
        sod += S_SEC_PER_DAY;
        days--;
    }
    int64_t y;
    int m, d;
    s_civil_from_days(days, &y, &m, &d);
    snprintf(buf, size, "%04lld-%02d-%02dT%02d:%02d:%02d.%03dZ", (long long)y, m, d,
             (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60), (int)(ns / 1000000));
}

const char *ms_trace_format_name(ms_trace_format f) {
    return f == MS_TRACE_LLM2023 ? "2023" : "2025";
}

/* ---- the line parser ------------------------------------------------------------ */

typedef struct s_parser {
    ms_trace *t;
    const char *name;                /* file name for messages */
    size_t cap;                      /* rows allocated in t->rows */
    int64_t line;                    /* lines completed so far */
    bool have_header;                /* the header line was read */
    int64_t blank;                   /* first blank line not yet followed by a row; 0: none */
    bool sorted;                     /* rows so far are in time order */
    char buf[MS_TRACE_MAX_LINE + 1]; /* the line being assembled (+1: a trailing '\r') */
    size_t n;                        /* bytes in buf */
} s_parser;

static void s_parser_init(s_parser *p, ms_trace *t, const char *name) {
    memset(t, 0, sizeof *t);
    memset(p, 0, sizeof *p);
    p->t = t;
    p->name = name ? name : "trace";
    p->sorted = true;
}

/* Decimal digits only, 0..max. */
static int s_count(const s_parser *p, const char *what, const char *s, size_t n, int64_t max,
                   int32_t *out, char *err, size_t err_size) {
    if (n == 0)
        return ms_errf(err, err_size, "%s:%lld: %s is empty", p->name, (long long)p->line, what);
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return ms_errf(err, err_size, "%s:%lld: %s '%.*s' is not a count (digits only)",
                           p->name, (long long)p->line, what, (int)n, s);
        v = v * 10 + (s[i] - '0');
        if (v > max)
            return ms_errf(err, err_size, "%s:%lld: %s '%.*s' is larger than %lld", p->name,
                           (long long)p->line, what, (int)n, s, (long long)max);
    }
    *out = (int32_t)v;
    return 0;
}

static int s_header(s_parser *p, const char *s, size_t n, char *err, size_t err_size) {
    if (n >= 3 && (unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBB &&
        (unsigned char)s[2] == 0xBF) { /* UTF-8 byte order mark */
        s += 3;
        n -= 3;
    }
    if (n == strlen(MS_TRACE_HEADER_2025) && memcmp(s, MS_TRACE_HEADER_2025, n) == 0) {
        p->t->format = MS_TRACE_LMM2025;
    } else if (n == strlen(MS_TRACE_HEADER_2023) && memcmp(s, MS_TRACE_HEADER_2023, n) == 0) {
        p->t->format = MS_TRACE_LLM2023;
    } else {
        return ms_errf(err, err_size,
                       "%s:%lld: unknown header '%.*s' (expected '" MS_TRACE_HEADER_2025
                       "' or '" MS_TRACE_HEADER_2023 "')",
                       p->name, (long long)p->line, (int)MS_MIN(n, 80), s);
    }
    p->have_header = true;
    return 0;
}

static int s_row(s_parser *p, const char *s, size_t n, char *err, size_t err_size) {
    const bool v2025 = p->t->format == MS_TRACE_LMM2025;
    const int want = v2025 ? 4 : 3;
    const char *f[5];
    size_t fl[5];
    int nf = 0;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == ',') {
            if (nf < 5) {
                f[nf] = s + start;
                fl[nf] = i - start;
            }
            nf++;
            start = i + 1;
        }
    }
    if (nf != want)
        return ms_errf(err, err_size, "%s:%lld: %d fields, the %s format has %d (%s)", p->name,
                       (long long)p->line, nf, ms_trace_format_name(p->t->format), want,
                       v2025 ? MS_TRACE_HEADER_2025 : MS_TRACE_HEADER_2023);
    if (p->t->n_rows >= MS_TRACE_MAX_ROWS)
        return ms_errf(err, err_size, "%s:%lld: more than %u rows", p->name, (long long)p->line,
                       MS_TRACE_MAX_ROWS);
    ms_trace_row r = {.line = (int32_t)MS_MIN(p->line, (int64_t)INT32_MAX)};
    char why[MS_ERR_SIZE];
    if (ms_trace_parse_time(f[0], fl[0], &r.t_ns, why, sizeof why) != 0)
        return ms_errf(err, err_size, "%s:%lld: TIMESTAMP '%.*s': %s", p->name, (long long)p->line,
                       (int)fl[0], f[0], why);
    int k = 1;
    if (v2025 &&
        s_count(p, "NumImages", f[k], fl[k], MS_TRACE_MAX_IMAGES, &r.n_images, err, err_size) != 0)
        return -1;
    k += v2025;
    if (s_count(p, "ContextTokens", f[k], fl[k], MS_TRACE_MAX_COUNT, &r.context_tokens, err,
                err_size) != 0 ||
        s_count(p, "GeneratedTokens", f[k + 1], fl[k + 1], MS_TRACE_MAX_COUNT, &r.generated_tokens,
                err, err_size) != 0)
        return -1;
    if (p->t->n_rows == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 1024;
        p->t->rows = ms_xrealloc(p->t->rows, p->cap * sizeof *p->t->rows);
    }
    if (p->t->n_rows > 0 && r.t_ns < p->t->rows[p->t->n_rows - 1].t_ns) {
        p->t->n_reordered++;
        p->sorted = false;
    }
    p->t->rows[p->t->n_rows++] = r;
    return 0;
}

/* One complete line (without its '\n'). */
static int s_line(s_parser *p, const char *s, size_t n, char *err, size_t err_size) {
    p->line++;
    if (n > 0 && s[n - 1] == '\r') n--;
    if (n > MS_TRACE_MAX_LINE)
        return ms_errf(err, err_size, "%s:%lld: line longer than %d bytes", p->name,
                       (long long)p->line, MS_TRACE_MAX_LINE);
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return ms_errf(err, err_size, "%s:%lld: control byte 0x%02x at column %zu", p->name,
                           (long long)p->line, c, i + 1);
    }
    if (!p->have_header) return s_header(p, s, n, err, err_size);
    if (n == 0) {
        if (p->blank == 0) p->blank = p->line;
        return 0;
    }
    if (p->blank)
        return ms_errf(err, err_size, "%s:%lld: blank line between rows", p->name,
                       (long long)p->blank);
    return s_row(p, s, n, err, err_size);
}

static int s_feed(s_parser *p, const char *data, size_t len, char *err, size_t err_size) {
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        const size_t take = nl ? (size_t)(nl - data) : len;
        if (p->n + take > MS_TRACE_MAX_LINE + 1) /* +1: room for a '\r' */
            return ms_errf(err, err_size, "%s:%lld: line longer than %d bytes", p->name,
                           (long long)p->line + 1, MS_TRACE_MAX_LINE);
        memcpy(p->buf + p->n, data, take);
        p->n += take;
        if (!nl) break;
        if (s_line(p, p->buf, p->n, err, err_size) != 0) return -1;
        p->n = 0;
        data += take + 1;
        len -= take + 1;
    }
    return 0;
}

static int s_cmp_row(const void *a, const void *b) {
    const ms_trace_row *x = a, *y = b;
    if (x->t_ns != y->t_ns) return x->t_ns < y->t_ns ? -1 : 1;
    return (x->line > y->line) - (x->line < y->line); /* stable: file order */
}

static int s_finish(s_parser *p, char *err, size_t err_size) {
    if (p->n > 0) { /* a last line without '\n' */
        if (s_line(p, p->buf, p->n, err, err_size) != 0) return -1;
        p->n = 0;
    }
    if (!p->have_header) return ms_errf(err, err_size, "%s: empty (no header line)", p->name);
    if (p->t->n_rows == 0) return ms_errf(err, err_size, "%s: no rows after the header", p->name);
    if (!p->sorted) qsort(p->t->rows, p->t->n_rows, sizeof *p->t->rows, s_cmp_row);
    return 0;
}

int ms_trace_parse(ms_trace *t, const char *text, size_t len, const char *name, char *err,
                   size_t err_size) {
    s_parser p;
    s_parser_init(&p, t, name);
    if (s_feed(&p, text, len, err, err_size) != 0 || s_finish(&p, err, err_size) != 0) {
        ms_trace_fini(t);
        return -1;
    }
    return 0;
}

int ms_trace_load(ms_trace *t, const char *path, char *err, size_t err_size) {
    memset(t, 0, sizeof *t);
    gzFile f = gzopen(path, "rb");
    if (!f)
        return ms_errf(err, err_size, "%s: cannot open: %s", path,
                       errno ? strerror(errno) : "out of memory");
    gzbuffer(f, S_CHUNK);
    s_parser p;
    s_parser_init(&p, t, path);
    char *chunk = ms_xmalloc(S_CHUNK);
    int rc = 0;
    for (;;) {
        const int got = gzread(f, chunk, S_CHUNK);
        int zerr = Z_OK;
        const char *msg = gzerror(f, &zerr);
        if (got < 0 || (zerr != Z_OK && zerr != Z_STREAM_END)) {
            rc = ms_errf(err, err_size, "%s: cannot read: %s%s", path,
                         zerr == Z_ERRNO ? strerror(errno) : msg,
                         zerr == Z_BUF_ERROR || zerr == Z_DATA_ERROR
                             ? " (a truncated or corrupt gzip file)"
                             : "");
            break;
        }
        if (got == 0) break;
        if (s_feed(&p, chunk, (size_t)got, err, err_size) != 0) {
            rc = -1;
            break;
        }
    }
    free(chunk);
    gzclose(f);
    if (rc == 0) rc = s_finish(&p, err, err_size);
    if (rc != 0) ms_trace_fini(t);
    return rc;
}

void ms_trace_fini(ms_trace *t) {
    if (!t) return;
    free(t->rows);
    memset(t, 0, sizeof *t);
}

/* ---- slicing ------------------------------------------------------------------- */

/* First index in rows[lo, hi) with t_ns >= v (hi if none). */
static size_t s_lower_bound(const ms_trace_row *rows, size_t lo, size_t hi, int64_t v) {
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (rows[mid].t_ns < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int ms_trace_window_apply(const ms_trace *t, const ms_trace_window *w, size_t *first, size_t *n,
                          char *err, size_t err_size) {
    *first = 0;
    *n = 0;
    if (!t->n_rows) return ms_errf(err, err_size, "the trace has no rows");
    char a[MS_TRACE_TIME_MAX], b[MS_TRACE_TIME_MAX];
    size_t begin;
    if (w->has_start) {
        begin = s_lower_bound(t->rows, 0, t->n_rows, w->start_ns);
        if (begin == t->n_rows) {
            ms_trace_format_time(w->start_ns, a, sizeof a);
            ms_trace_format_time(t->rows[t->n_rows - 1].t_ns, b, sizeof b);
            return ms_errf(err, err_size, "start %s is after the last arrival (%s)", a, b);
        }
    } else {
        if (w->row_begin < 0 || (uint64_t)w->row_begin >= t->n_rows)
            return ms_errf(err, err_size, "first row %lld is outside the trace (rows 0..%zu)",
                           (long long)w->row_begin, t->n_rows - 1);
        begin = (size_t)w->row_begin;
    }
    size_t end = t->n_rows;
    if (w->row_end > 0) {
        if ((uint64_t)w->row_end <= begin)
            return ms_errf(err, err_size, "no rows: the range ends at row %lld, before row %zu",
                           (long long)w->row_end, begin);
        end = MS_MIN(end, (size_t)w->row_end);
    }
    if (w->duration_s > 0) {
        const double lim = (double)t->rows[begin].t_ns + w->duration_s * (double)S_NS_PER_S;
        const int64_t limit = lim >= (double)INT64_MAX ? INT64_MAX : (int64_t)ceil(lim);
        end = s_lower_bound(t->rows, begin, end, limit);
    }
    *first = begin;
    *n = end - begin;
    return 0;
}

int ms_trace_parse_rows(const char *s, int64_t *a, int64_t *b, char *err, size_t err_size) {
    const char *colon = s ? strchr(s, ':') : NULL;
    if (!colon) return ms_errf(err, err_size, "rows '%s': expected A:B, A: or :B", s ? s : "");
    long long v[2] = {0, 0};
    const char *part[2] = {s, colon + 1};
    const size_t plen[2] = {(size_t)(colon - s), strlen(colon + 1)};
    if (plen[0] == 0 && plen[1] == 0)
        return ms_errf(err, err_size, "rows '%s': expected A:B, A: or :B", s);
    for (int i = 0; i < 2; i++) {
        if (plen[i] == 0) continue;
        for (size_t k = 0; k < plen[i]; k++)
            if (part[i][k] < '0' || part[i][k] > '9')
                return ms_errf(err, err_size, "rows '%s': '%.*s' is not a row number", s,
                               (int)plen[i], part[i]);
        if (plen[i] > 15) return ms_errf(err, err_size, "rows '%s': row number too large", s);
        v[i] = strtoll(part[i], NULL, 10);
    }
    if (plen[1] > 0 && v[1] <= v[0])
        return ms_errf(err, err_size, "rows '%s': the end must be after the start", s);
    *a = v[0];
    *b = plen[1] > 0 ? v[1] : 0;
    return 0;
}

int ms_trace_parse_start(const ms_trace *t, const char *s, int64_t *start_ns, char *err,
                         size_t err_size) {
    if (!s || !*s) return ms_errf(err, err_size, "empty start");
    char why[MS_ERR_SIZE];
    if (strlen(s) >= 19 && ms_trace_parse_time(s, strlen(s), start_ns, why, sizeof why) == 0)
        return 0;
    const char *p = s + (*s == '+');
    char *end = NULL;
    errno = 0;
    const double v = strtod(p, &end);
    if (end == p || errno || !isfinite(v) || v < 0 || (*end && strcmp(end, "s") != 0) ||
        !(*p >= '0' && *p <= '9'))
        return ms_errf(err, err_size,
                       "start '%s': neither a timestamp (YYYY-MM-DDThh:mm:ss[.fff][Z]) nor "
                       "seconds after the first arrival",
                       s);
    if (!t->n_rows) return ms_errf(err, err_size, "the trace has no rows");
    if (v > 1e9) return ms_errf(err, err_size, "start '%s': too far", s);
    *start_ns = t->rows[0].t_ns + (int64_t)llround(v * (double)S_NS_PER_S);
    return 0;
}

/* ---- schedule ------------------------------------------------------------------- */

int64_t ms_trace_offset_ns(int64_t t_first_ns, int64_t t_ns, double time_scale, double rate) {
    const double off = (double)(t_ns - t_first_ns) * time_scale / rate;
    if (off >= 9e18) return INT64_MAX;
    if (off <= -9e18) return INT64_MIN;
    return llround(off);
}

int ms_trace_check_scale(double time_scale, double rate, char *err, size_t err_size) {
    if (!(time_scale >= MS_TRACE_MIN_SCALE && time_scale <= MS_TRACE_MAX_SCALE))
        return ms_errf(err, err_size, "time scale %g outside %g..%g", time_scale,
                       MS_TRACE_MIN_SCALE, MS_TRACE_MAX_SCALE);
    if (!(rate >= MS_TRACE_MIN_SCALE && rate <= MS_TRACE_MAX_SCALE))
        return ms_errf(err, err_size, "rate %g outside %g..%g", rate, MS_TRACE_MIN_SCALE,
                       MS_TRACE_MAX_SCALE);
    return 0;
}

/* ---- request shapes --------------------------------------------------------------- */

void ms_trace_shape_row(const ms_trace_row *r, const ms_trace_shape_opts *o, ms_trace_shape *out) {
    memset(out, 0, sizeof *out);
    const int64_t nit = o->n_image_tokens > 0 ? o->n_image_tokens : 0;
    const int64_t ctx_limit = o->max_context > 0 ? o->max_context : INT32_MAX;
    /* the smallest prompt that keeps the row's modality */
    const bool want_images = r->n_images > 0 && nit > 0 && o->max_images > 0;
    const int64_t min_prompt = want_images && nit + 1 <= ctx_limit ? nit + 1 : 1;

    int64_t gen = MS_MAX(1, (int64_t)r->generated_tokens);
    if (o->max_gen > 0) gen = MS_MIN(gen, (int64_t)o->max_gen);
    gen = MS_MIN(gen, (int64_t)MS_MAX_GEN_TOKENS);
    if (o->n_ctx > 0) gen = MS_MAX(1, MS_MIN(gen, (int64_t)o->n_ctx - min_prompt));

    int64_t budget = MS_MIN((int64_t)r->context_tokens, ctx_limit);
    if (o->n_ctx > 0) budget = MS_MIN(budget, (int64_t)o->n_ctx - gen);
    budget = MS_MAX(budget, 1);

    /* NumImages, as many as the context limits hold beside one text token */
    int64_t images = want_images ? MS_MIN((int64_t)r->n_images, (int64_t)o->max_images) : 0;
    const int64_t room = MS_MIN(ctx_limit, o->n_ctx > 0 ? (int64_t)o->n_ctx - gen : INT32_MAX);
    if (images > 0) images = MS_MAX(0, MS_MIN(images, (room - 1) / nit));
    const int64_t image_tokens = images * nit;
    const int64_t text = MS_MAX(1, budget - image_tokens);

    out->n_images = (int)images;
    out->image_tokens = (int)image_tokens;
    out->text_tokens = (int)text;
    out->prompt_tokens = (int)(text + image_tokens);
    out->max_tokens = (int)gen;
    if (images < r->n_images) out->clamped |= MS_TRACE_CLAMP_IMAGES;
    if (out->prompt_tokens != r->context_tokens) out->clamped |= MS_TRACE_CLAMP_CONTEXT;
    if (out->max_tokens != r->generated_tokens) out->clamped |= MS_TRACE_CLAMP_GEN;
}
