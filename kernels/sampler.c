/* sampler.c — the token sampler and the stop-string matcher (see sampler.h).
 *
 * The chain works on two scratch arrays: probs[i] holds exp(logit_i - max)
 * (unnormalised, temperature 1, NaN/-inf → 0) and idx[0..n_cand) the ids still
 * in the running. Top-k partitions idx so the k best come first; top-p finds
 * the smallest best-first set whose mass reaches top_p (sorting, on a large
 * set, only the ids of the one logit-histogram bucket where the cumulative
 * mass crosses top_p; top-k uses the same histogram); min-p drops ids
 * below min_p * p_max; temperature re-weights the survivors from the logits
 * and one uniform draw picks among them. Candidate order is a total order
 * (probability descending, id ascending), so every step is deterministic.
 *
 * RNG: splitmix64. The state is a 64-bit counter advanced by the golden gamma
 * once per ms_sampler_sample call; the draw is the finalised counter. One
 * uint64 is the whole state, which is what the P→D handoff carries.
 */
#include "sampler.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

#define S_GOLDEN_GAMMA    0x9E3779B97F4A7C15ull
#define S_SORT_DIRECT     1024  /* top-k/top-p on more candidates go through the histogram */
#define S_N_BUCKETS       1024  /* histogram buckets (the last takes everything below) */
#define S_BUCKETS_PER_NAT 32.0f /* buckets per unit of logit (covers 32 below the max) */
#define S_INSERTION_SORT  16    /* below this many elements, insertion sort */

/* ---- parameters ----------------------------------------------------------- */

void ms_sampling_params_default(ms_sampling_params *p) {
    memset(p, 0, sizeof(*p));
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->seed = 0;
    p->max_tokens = MS_DEFAULT_MAX_TOKENS;
    p->n_stop = 0;
}

int ms_sampling_params_validate(const ms_sampling_params *p, char *err, size_t err_size) {
    if (isnan(p->temperature) || isinf(p->temperature) || p->temperature < 0.0f)
        return ms_errf(err, err_size, "temperature %g is invalid (must be a finite number >= 0)",
                       (double)p->temperature);
    if (p->top_k < 0)
        return ms_errf(err, err_size, "top_k %d is invalid (must be >= 0; 0 turns it off)",
                       p->top_k);
    if (isnan(p->top_p) || p->top_p <= 0.0f || p->top_p > 1.0f)
        return ms_errf(err, err_size, "top_p %g is invalid (must be in (0, 1]; 1 turns it off)",
                       (double)p->top_p);
    if (isnan(p->min_p) || p->min_p < 0.0f || p->min_p > 1.0f)
        return ms_errf(err, err_size, "min_p %g is invalid (must be in [0, 1]; 0 turns it off)",
                       (double)p->min_p);
    if (p->max_tokens < 1 || p->max_tokens > MS_MAX_GEN_TOKENS)
        return ms_errf(err, err_size, "max_tokens %d is invalid (must be in [1, %d])",
                       p->max_tokens, MS_MAX_GEN_TOKENS);
    if (p->n_stop < 0 || p->n_stop > MS_MAX_STOP_STRINGS)
        return ms_errf(err, err_size, "%d stop strings given, at most %d are allowed", p->n_stop,
                       MS_MAX_STOP_STRINGS);
    for (int i = 0; i < p->n_stop; i++) {
        size_t n = strnlen(p->stop[i], MS_MAX_STOP_LEN);
        if (n == 0) return ms_errf(err, err_size, "stop string %d is empty", i);
        if (n == MS_MAX_STOP_LEN)
            return ms_errf(err, err_size, "stop string %d is too long (at most %d bytes)", i,
                           MS_MAX_STOP_LEN - 1);
    }
    return 0;
}

/* ---- RNG ------------------------------------------------------------------ */

static uint64_t s_splitmix64_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Advances the state and returns a uniform double in [0, 1). */
static double s_next_uniform(ms_sampler *s) {
    s->rng += S_GOLDEN_GAMMA;
    return (double)(s_splitmix64_mix(s->rng) >> 11) * 0x1.0p-53;
}

/* ---- candidate ordering --------------------------------------------------- */

/* True if id a ranks before id b: higher probability, then lower id. */
static inline bool s_before(const float *probs, int32_t a, int32_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
}

static inline void s_swap(int32_t *x, int i, int j) {
    int32_t t = x[i];
    x[i] = x[j];
    x[j] = t;
}

/* Median of idx[lo], idx[mid], idx[hi] under s_before, moved to idx[hi]. */
static void s_median_to_end(const float *probs, int32_t *idx, int lo, int hi) {
    int mid = lo + (hi - lo) / 2;
    if (s_before(probs, idx[mid], idx[lo])) s_swap(idx, mid, lo);
    if (s_before(probs, idx[hi], idx[lo])) s_swap(idx, hi, lo);
    if (s_before(probs, idx[hi], idx[mid])) s_swap(idx, hi, mid);
    /* now idx[lo] <= idx[mid] <= idx[hi] in rank order; the median goes last */
    s_swap(idx, mid, hi);
}

/* Lomuto partition of idx[lo..hi] around the pivot idx[hi]; returns its place. */
static int s_partition(const float *probs, int32_t *idx, int lo, int hi) {
    s_median_to_end(probs, idx, lo, hi);
    int32_t pivot = idx[hi];
    int store = lo;
    for (int i = lo; i < hi; i++)
        if (s_before(probs, idx[i], pivot)) s_swap(idx, i, store++);
    s_swap(idx, store, hi);
    return store;
}

/* Rearranges idx[0..n) so its first m entries are the m best (in any order). */
static void s_select_top(const float *probs, int32_t *idx, int n, int m) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int p = s_partition(probs, idx, lo, hi);
        if (p == m || p == m - 1) return;
        if (p < m)
            lo = p + 1;
        else
            hi = p - 1;
    }
}

static void s_insertion_sort(const float *probs, int32_t *idx, int lo, int hi) {
    for (int i = lo + 1; i <= hi; i++) {
        int32_t v = idx[i];
        int j = i - 1;
        while (j >= lo && s_before(probs, v, idx[j])) {
            idx[j + 1] = idx[j];
            j--;
        }
        idx[j + 1] = v;
    }
}

/* Sorts idx[lo..hi] best first (quicksort, recursing on the smaller side). */
static void s_sort(const float *probs, int32_t *idx, int lo, int hi) {
    while (hi - lo + 1 > S_INSERTION_SORT) {
        int p = s_partition(probs, idx, lo, hi);
        if (p - lo < hi - p) {
            s_sort(probs, idx, lo, p - 1);
            lo = p + 1;
        } else {
            s_sort(probs, idx, p + 1, hi);
            hi = p - 1;
        }
    }
    s_insertion_sort(probs, idx, lo, hi);
}

/* ---- sampler -------------------------------------------------------------- */

int ms_sampler_init(ms_sampler *s, const ms_sampling_params *p, int n_vocab) {
    memset(s, 0, sizeof(*s));
    if (n_vocab <= 0 || ms_sampling_params_validate(p, NULL, 0) != 0) return -1;
    s->p = *p;
    s->rng = p->seed;
    s->n_vocab = n_vocab;
    s->probs = ms_xmalloc((size_t)n_vocab * sizeof(float));
    s->idx = ms_xmalloc((size_t)n_vocab * sizeof(int32_t));
    return 0;
}

void ms_sampler_fini(ms_sampler *s) {
    free(s->probs);
    free(s->idx);
    memset(s, 0, sizeof(*s));
}

uint64_t ms_sampler_state(const ms_sampler *s) {
    return s->rng;
}

void ms_sampler_set_state(ms_sampler *s, uint64_t state) {
    s->rng = state;
}

/* Argmax, ties to the lowest id; NaN never wins. Token 0 if all are NaN. */
static int32_t s_argmax(const float *logits, int n) {
    int32_t best = 0;
    float best_v = -INFINITY;
    bool found = false;
    for (int i = 0; i < n; i++) {
        float v = logits[i];
        if (isnan(v)) continue;
        if (!found || v > best_v) {
            best = i;
            best_v = v;
            found = true;
        }
    }
    return best;
}

/* Bucket of a token for top-p's pre-selection: its logit's distance below
 * the maximum in steps of 1/S_BUCKETS_PER_NAT (monotonic in probability). */
static inline int s_bucket(const float *logits, float max, int32_t id) {
    float d = max - logits[id];
    return d < (float)S_N_BUCKETS / S_BUCKETS_PER_NAT ? (int)(d * S_BUCKETS_PER_NAT)
                                                      : S_N_BUCKETS - 1;
}

/* Moves the k best of idx[0..n) (0 < k < n) to its front. A large set goes
 * through a histogram of the logits first, so that only the bucket where the
 * count crosses k needs a selection. */
static void s_top_k(const float *logits, float max, const float *probs, int32_t *idx, int n,
                    int k) {
    if (n <= S_SORT_DIRECT) {
        s_select_top(probs, idx, n, k);
        return;
    }
    int count[S_N_BUCKETS] = {0};
    for (int i = 0; i < n; i++)
        count[s_bucket(logits, max, idx[i])]++;
    int cross = S_N_BUCKETS - 1, before = 0;
    for (int b = 0; b < S_N_BUCKETS; b++) {
        if (before + count[b] >= k) {
            cross = b;
            break;
        }
        before += count[b];
    }
    int a = 0;
    for (int i = 0; i < n; i++)
        if (s_bucket(logits, max, idx[i]) < cross) s_swap(idx, i, a++);
    int m = a;
    for (int i = a; i < n; i++)
        if (s_bucket(logits, max, idx[i]) == cross) s_swap(idx, i, m++);
    /* a == before < k <= m */
    if (k - a < m - a) s_select_top(probs, idx + a, m - a, k - a);
}

/* Keeps the smallest set of best ids whose mass reaches top_p of the total
 * (the nucleus: every id ranked before the one where the cumulative mass, in
 * rank order, first reaches the target, and that one); moves it to the front
 * of idx and returns its size (>= 1). A small set is sorted whole. A large
 * one goes through a histogram of the logits: buckets wholly before the
 * crossing are kept as they are, and only the crossing bucket is sorted
 * (exact: buckets are ordered by probability). */
static int s_top_p(const float *logits, float max, const float *probs, int32_t *idx, int n,
                   float top_p) {
    double total = 0.0;
    for (int i = 0; i < n; i++)
        total += probs[idx[i]];
    double target = (double)top_p * total;
    int start = 0, m = n; /* idx[start..m) still to be sorted and cut */
    double cum = 0.0;     /* mass of idx[0..start) */
    if (n > S_SORT_DIRECT) {
        double mass[S_N_BUCKETS] = {0};
        for (int i = 0; i < n; i++)
            mass[s_bucket(logits, max, idx[i])] += probs[idx[i]];
        int cross = S_N_BUCKETS - 1;
        double before = 0.0;
        for (int b = 0; b < S_N_BUCKETS; b++) {
            if (before + mass[b] >= target) {
                cross = b;
                break;
            }
            before += mass[b];
        }
        /* partition: buckets before the crossing, then the crossing bucket */
        int a = 0;
        for (int i = 0; i < n; i++)
            if (s_bucket(logits, max, idx[i]) < cross) s_swap(idx, i, a++);
        m = a;
        for (int i = a; i < n; i++)
            if (s_bucket(logits, max, idx[i]) == cross) s_swap(idx, i, m++);
        start = a;
        cum = 0.0;
        for (int i = 0; i < a; i++)
            cum += probs[idx[i]];
        if (start == m) return MS_MAX(start, 1); /* rounding left the crossing bucket empty */
    }
    s_sort(probs, idx, start, m - 1);
    for (int i = start; i < m; i++) {
        cum += probs[idx[i]];
        if (cum >= target) return i + 1;
    }
    return m; /* rounding: the whole selection */
}

/* Keeps ids with prob >= min_p * p_max (order kept); returns the count (>= 1). */
static int s_min_p(const float *probs, int32_t *idx, int n, float min_p) {
    float p_max = 0.0f;
    for (int i = 0; i < n; i++)
        p_max = fmaxf(p_max, probs[idx[i]]);
    float bar = min_p * p_max;
    int kept = 0;
    for (int i = 0; i < n; i++)
        if (probs[idx[i]] >= bar) idx[kept++] = idx[i];
    return kept > 0 ? kept : 1;
}

int32_t ms_sampler_sample(ms_sampler *s, const float *logits) {
    assert(s->probs && s->idx);
    int n = s->n_vocab;
    const ms_sampling_params *p = &s->p;
    double u = s_next_uniform(s); /* one step per call, whatever the path */
    if (p->temperature <= 0.0f) return s_argmax(logits, n);

    float max = -INFINITY;
    for (int i = 0; i < n; i++)
        if (logits[i] > max) max = logits[i]; /* NaN compares false */
    if (max == -INFINITY) return s_argmax(logits, n);

    int n_cand = 0;
    for (int i = 0; i < n; i++) {
        float l = logits[i];
        float e = isnan(l) ? 0.0f : expf(l - max);
        s->probs[i] = e;
        if (e > 0.0f) s->idx[n_cand++] = i; /* zero mass can never be drawn */
    }
    /* n_cand >= 1: the maximum has exp(0) = 1 */

    if (p->top_k > 0 && p->top_k < n_cand) {
        s_top_k(logits, max, s->probs, s->idx, n_cand, p->top_k);
        n_cand = p->top_k;
    }
    if (p->top_p < 1.0f && n_cand > 1)
        n_cand = s_top_p(logits, max, s->probs, s->idx, n_cand, p->top_p);
    if (p->min_p > 0.0f && n_cand > 1) n_cand = s_min_p(s->probs, s->idx, n_cand, p->min_p);
    if (n_cand == 1) return s->idx[0];

    /* temperature: weights exp((l - max) / T) over the survivors */
    double inv_t = 1.0 / (double)p->temperature;
    double total = 0.0;
    for (int i = 0; i < n_cand; i++) {
        int32_t id = s->idx[i];
        float w = (float)exp(((double)logits[id] - (double)max) * inv_t);
        s->probs[id] = w;
        total += w;
    }
    if (!(total > 0.0)) { /* every weight underflowed: the best survivor */
        int32_t best = s->idx[0];
        for (int i = 1; i < n_cand; i++)
            if (logits[s->idx[i]] > logits[best] ||
                (logits[s->idx[i]] == logits[best] && s->idx[i] < best))
                best = s->idx[i];
        return best;
    }
    double target = u * total, cum = 0.0;
    for (int i = 0; i < n_cand; i++) {
        cum += s->probs[s->idx[i]];
        if (target < cum) return s->idx[i];
    }
    /* rounding at the top end: the last candidate with mass */
    for (int i = n_cand - 1; i >= 0; i--)
        if (s->probs[s->idx[i]] > 0.0f) return s->idx[i];
    return s->idx[0];
}

/* ---- stop strings --------------------------------------------------------- */

void ms_stop_init(ms_stop_matcher *m, const ms_sampling_params *p) {
    memset(m, 0, sizeof(*m));
    m->p = p;
}

/* Earliest position in buf[0..n) where a stop string begins, or -1. */
static int s_find_stop(const ms_stop_matcher *m, const char *buf, int n) {
    int best = -1;
    for (int k = 0; k < m->p->n_stop; k++) {
        const char *stop = m->p->stop[k];
        int sl = (int)strnlen(stop, MS_MAX_STOP_LEN);
        if (sl == 0 || sl > n) continue;
        int limit = best >= 0 ? best : n - sl; /* only an earlier match matters */
        for (int i = 0; i <= limit && i <= n - sl; i++) {
            if (buf[i] == stop[0] && memcmp(buf + i, stop, (size_t)sl) == 0) {
                best = i;
                break;
            }
        }
    }
    return best;
}

/* Length of the longest suffix of buf[0..n) that is a proper prefix of a stop string. */
static int s_partial_suffix(const ms_stop_matcher *m, const char *buf, int n) {
    int best = 0;
    for (int k = 0; k < m->p->n_stop; k++) {
        const char *stop = m->p->stop[k];
        int sl = (int)strnlen(stop, MS_MAX_STOP_LEN);
        for (int l = MS_MIN(sl - 1, n); l > best; l--) {
            if (memcmp(buf + n - l, stop, (size_t)l) == 0) {
                best = l;
                break;
            }
        }
    }
    return best;
}

bool ms_stop_push(ms_stop_matcher *m, const char *text, int len, char *out, int cap, int *out_len) {
    assert(len >= 0 && m->n_held >= 0 && m->n_held < MS_MAX_STOP_LEN);
    int n = m->n_held + len;
    assert(cap > n); /* documented: cap >= len + MS_MAX_STOP_LEN */
    memcpy(out, m->held, (size_t)m->n_held);
    if (len > 0) memcpy(out + m->n_held, text, (size_t)len);
    m->n_held = 0;

    int at = m->p ? s_find_stop(m, out, n) : -1;
    if (at >= 0) {
        out[at] = '\0';
        *out_len = at;
        return true;
    }
    int keep = m->p ? s_partial_suffix(m, out, n) : 0;
    memcpy(m->held, out + n - keep, (size_t)keep);
    m->n_held = keep;
    out[n - keep] = '\0';
    *out_len = n - keep;
    return false;
}

int ms_stop_flush(ms_stop_matcher *m, char *out, int cap) {
    assert(cap > 0);
    int n = MS_MIN(m->n_held, cap - 1);
    memcpy(out, m->held, (size_t)n);
    out[n] = '\0';
    m->n_held = 0;
    return n;
}
