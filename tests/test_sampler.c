/* test_sampler.c — the sampler chain, its RNG hand-off and the stop matcher. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ms_common.h"
#include "sampler.h"

static ms_sampling_params s_params(float temp, int top_k, float top_p, float min_p, uint64_t seed) {
    ms_sampling_params p;
    ms_sampling_params_default(&p);
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    return p;
}

/* Draws n tokens from logits and counts them into counts[n_vocab]. */
static void s_histogram(const ms_sampling_params *p, const float *logits, int n_vocab, int n,
                        int *counts) {
    ms_sampler s;
    cr_assert_eq(ms_sampler_init(&s, p, n_vocab), 0);
    memset(counts, 0, (size_t)n_vocab * sizeof(int));
    for (int i = 0; i < n; i++) {
        int32_t t = ms_sampler_sample(&s, logits);
        cr_assert(t >= 0 && t < n_vocab, "token %d out of range", t);
        counts[t]++;
    }
    ms_sampler_fini(&s);
}

/* Pseudo-random logits in [-scale, scale] from a seed (deterministic). */
static void s_fill_logits(float *logits, int n, uint64_t seed, float scale) {
    uint64_t x = seed;
    for (int i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        logits[i] = scale * (2.0f * (float)((x >> 40) & 0xFFFFFF) / (float)0xFFFFFF - 1.0f);
    }
}

/* ---- parameters ----------------------------------------------------------- */

Test(sampler, defaults_validate, .timeout = 10) {
    ms_sampling_params p;
    ms_sampling_params_default(&p);
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_sampling_params_validate(&p, err, sizeof(err)), 0);
    cr_assert_eq(p.temperature, 0.0f);
    cr_assert_eq(p.top_k, 0);
    cr_assert_eq(p.top_p, 1.0f);
    cr_assert_eq(p.min_p, 0.0f);
    cr_assert_eq(p.max_tokens, MS_DEFAULT_MAX_TOKENS);
    cr_assert_eq(p.n_stop, 0);
}

/* Expects validation of p to fail with a message containing word. */
static void s_expect_invalid(const ms_sampling_params *p, const char *word) {
    char err[MS_ERR_SIZE] = "";
    cr_assert_eq(ms_sampling_params_validate(p, err, sizeof(err)), -1, "accepted (%s)", word);
    cr_assert(strstr(err, word) != NULL, "message '%s' does not name '%s'", err, word);
    ms_sampler s;
    cr_assert_eq(ms_sampler_init(&s, p, 16), -1, "sampler init accepted (%s)", word);
}

Test(sampler, validation_names_the_parameter, .timeout = 10) {
    ms_sampling_params p;
#define S_CASE(stmt, word)                                                                         \
    do {                                                                                           \
        ms_sampling_params_default(&p);                                                            \
        stmt;                                                                                      \
        s_expect_invalid(&p, word);                                                                \
    } while (0)
    S_CASE(p.temperature = -0.5f, "temperature");
    S_CASE(p.temperature = NAN, "temperature");
    S_CASE(p.temperature = INFINITY, "temperature");
    S_CASE(p.top_k = -1, "top_k");
    S_CASE(p.top_p = 0.0f, "top_p");
    S_CASE(p.top_p = 1.5f, "top_p");
    S_CASE(p.top_p = NAN, "top_p");
    S_CASE(p.min_p = -0.1f, "min_p");
    S_CASE(p.min_p = 1.01f, "min_p");
    S_CASE(p.min_p = NAN, "min_p");
    S_CASE(p.max_tokens = 0, "max_tokens");
    S_CASE(p.max_tokens = MS_MAX_GEN_TOKENS + 1, "max_tokens");
    S_CASE(p.n_stop = MS_MAX_STOP_STRINGS + 1, "stop");
    S_CASE(p.n_stop = -1, "stop");
    S_CASE((p.n_stop = 1, p.stop[0][0] = '\0'), "empty");
    S_CASE((p.n_stop = 1, memset(p.stop[0], 'x', MS_MAX_STOP_LEN)), "too long");
#undef S_CASE
    /* boundaries that are fine */
    char err[MS_ERR_SIZE];
    ms_sampling_params_default(&p);
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    p.max_tokens = MS_MAX_GEN_TOKENS;
    p.n_stop = MS_MAX_STOP_STRINGS;
    for (int i = 0; i < MS_MAX_STOP_STRINGS; i++) {
        memset(p.stop[i], 'a' + i, MS_MAX_STOP_LEN - 1);
        p.stop[i][MS_MAX_STOP_LEN - 1] = '\0';
    }
    cr_assert_eq(ms_sampling_params_validate(&p, err, sizeof(err)), 0, "%s", err);
}

Test(sampler, init_rejects_empty_vocab, .timeout = 10) {
    ms_sampling_params p = s_params(0.0f, 0, 1.0f, 0.0f, 1);
    ms_sampler s;
    cr_assert_eq(ms_sampler_init(&s, &p, 0), -1);
}

/* ---- greedy --------------------------------------------------------------- */

Test(sampler, greedy_argmax_and_ties, .timeout = 10) {
    ms_sampling_params p = s_params(0.0f, 0, 1.0f, 0.0f, 7);
    ms_sampler s;
    cr_assert_eq(ms_sampler_init(&s, &p, 6), 0);
    float a[6] = {0.1f, 2.0f, -1.0f, 3.5f, 3.4f, 0.0f};
    cr_assert_eq(ms_sampler_sample(&s, a), 3);
    float ties[6] = {1.0f, 4.0f, 2.0f, 4.0f, 4.0f, -3.0f};
    cr_assert_eq(ms_sampler_sample(&s, ties), 1);
    float nan_first[6] = {NAN, -INFINITY, -5.0f, NAN, -5.0f, -6.0f};
    cr_assert_eq(ms_sampler_sample(&s, nan_first), 2);
    float all_inf[6] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    cr_assert_eq(ms_sampler_sample(&s, all_inf), 0);
    /* logits are not modified */
    cr_assert_eq(a[3], 3.5f);
    ms_sampler_fini(&s);
}

Test(sampler, top_k_1_is_greedy, .timeout = 30) {
    enum { N = 5000 };
    static float logits[N];
    for (int trial = 0; trial < 20; trial++) {
        s_fill_logits(logits, N, 100 + (uint64_t)trial, 8.0f);
        if (trial % 3 == 0) logits[N - 1] = logits[0] = 9.0f; /* a tie: lowest id wins */
        ms_sampling_params g = s_params(0.0f, 0, 1.0f, 0.0f, 1);
        ms_sampling_params k1 = s_params(1.5f, 1, 1.0f, 0.0f, (uint64_t)trial);
        ms_sampler sg, sk;
        cr_assert_eq(ms_sampler_init(&sg, &g, N), 0);
        cr_assert_eq(ms_sampler_init(&sk, &k1, N), 0);
        int32_t a = ms_sampler_sample(&sg, logits), b = ms_sampler_sample(&sk, logits);
        cr_assert_eq(a, b, "trial %d: greedy %d, top-k 1 %d", trial, a, b);
        if (trial % 3 == 0) cr_assert_eq(a, 0);
        ms_sampler_fini(&sg);
        ms_sampler_fini(&sk);
    }
}

/* ---- seeded draws --------------------------------------------------------- */

Test(sampler, seeded_draws_reproduce, .timeout = 30) {
    enum { N = 300, DRAWS = 200 };
    static float logits[N];
    s_fill_logits(logits, N, 5, 3.0f);
    ms_sampling_params p = s_params(0.9f, 40, 0.95f, 0.02f, 1234);
    int32_t first[DRAWS], second[DRAWS];
    ms_sampler s;
    for (int run = 0; run < 2; run++) {
        cr_assert_eq(ms_sampler_init(&s, &p, N), 0);
        for (int i = 0; i < DRAWS; i++)
            (run ? second : first)[i] = ms_sampler_sample(&s, logits);
        ms_sampler_fini(&s);
    }
    cr_assert_eq(memcmp(first, second, sizeof(first)), 0);
    /* another seed gives another sequence */
    p.seed = 1235;
    cr_assert_eq(ms_sampler_init(&s, &p, N), 0);
    int same = 0;
    for (int i = 0; i < DRAWS; i++)
        same += ms_sampler_sample(&s, logits) == first[i];
    ms_sampler_fini(&s);
    cr_assert_lt(same, DRAWS / 2, "seed 1235 repeats %d of %d draws of seed 1234", same, DRAWS);
}

/* Chi-square of counts against softmax(logits / temp), over the ids with
 * expected count >= 5 (the rest pooled). */
static double s_chi_square(const float *logits, int n, float temp, const int *counts, int draws,
                           int *dof) {
    double max = -INFINITY, z = 0.0;
    for (int i = 0; i < n; i++)
        max = fmax(max, logits[i]);
    for (int i = 0; i < n; i++)
        z += exp((logits[i] - max) / temp);
    double chi = 0.0, pool_e = 0.0, pool_o = 0.0;
    *dof = -1;
    for (int i = 0; i < n; i++) {
        double e = draws * exp((logits[i] - max) / temp) / z;
        if (e < 5.0) {
            pool_e += e;
            pool_o += counts[i];
            continue;
        }
        chi += (counts[i] - e) * (counts[i] - e) / e;
        (*dof)++;
    }
    if (pool_e > 0.0) {
        chi += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
        (*dof)++;
    }
    return chi;
}

Test(sampler, distribution_matches_softmax, .timeout = 60) {
    enum { N = 12, DRAWS = 60000 };
    float logits[N] = {1.0f, 0.5f, 2.0f, -1.0f, 0.0f, 1.5f, -0.5f, 0.25f, 1.2f, -2.0f, 0.8f, 0.1f};
    int counts[N];
    const float temps[] = {1.0f, 0.7f, 2.0f};
    for (size_t t = 0; t < MS_ARRAY_LEN(temps); t++) {
        ms_sampling_params p = s_params(temps[t], 0, 1.0f, 0.0f, 42 + t);
        s_histogram(&p, logits, N, DRAWS, counts);
        int dof;
        double chi = s_chi_square(logits, N, temps[t], counts, DRAWS, &dof);
        /* dof ~ 11: the 99.99th percentile is ~ 40; a broken sampler is far beyond */
        cr_assert_lt(chi, 45.0, "temp %g: chi-square %.1f with %d dof", (double)temps[t], chi, dof);
    }
}

Test(sampler, top_k_keeps_the_k_best, .timeout = 30) {
    enum { N = 50, DRAWS = 20000 };
    float logits[N];
    for (int i = 0; i < N; i++)
        logits[i] = (float)((i * 37) % N) * 0.05f; /* a permutation */
    int counts[N];
    ms_sampling_params p = s_params(5.0f, 5, 1.0f, 0.0f, 3);
    s_histogram(&p, logits, N, DRAWS, counts);
    /* the 5 best are the ids whose (i*37)%50 is 45..49 */
    int seen = 0;
    for (int i = 0; i < N; i++) {
        bool best = (i * 37) % N >= N - 5;
        if (best) {
            cr_assert_gt(counts[i], DRAWS / 10, "top-5 id %d drawn only %d times", i, counts[i]);
            seen++;
        } else {
            cr_assert_eq(counts[i], 0, "id %d outside the top 5 was drawn", i);
        }
    }
    cr_assert_eq(seen, 5);
}

Test(sampler, top_p_cuts_the_tail, .timeout = 30) {
    enum { N = 6, DRAWS = 20000 };
    /* probabilities 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125 */
    float logits[N];
    const double pr[N] = {0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125};
    const int order[N] = {3, 0, 5, 1, 4, 2}; /* ids by rank */
    for (int r = 0; r < N; r++)
        logits[order[r]] = (float)log(pr[r]);
    int counts[N];
    /* 0.5 + 0.25 = 0.75 >= 0.7: the two best only */
    ms_sampling_params p = s_params(1.0f, 0, 0.7f, 0.0f, 9);
    s_histogram(&p, logits, N, DRAWS, counts);
    for (int r = 0; r < N; r++) {
        if (r < 2)
            cr_assert_gt(counts[order[r]], DRAWS / 5, "rank %d starved", r);
        else
            cr_assert_eq(counts[order[r]], 0, "rank %d drawn with top_p 0.7", r);
    }
    /* within the nucleus, renormalised: 2/3 vs 1/3 */
    double frac = (double)counts[order[0]] / DRAWS;
    cr_assert(fabs(frac - 2.0 / 3.0) < 0.02, "best share %.3f, expected 0.667", frac);
    /* exactly at a boundary the crossing token is kept: 0.75 → two tokens */
    p = s_params(1.0f, 0, 0.75f, 0.0f, 9);
    s_histogram(&p, logits, N, DRAWS, counts);
    cr_assert_eq(counts[order[2]], 0);
    /* a tiny top_p keeps at least one token: always the best */
    p = s_params(1.0f, 0, 1e-6f, 0.0f, 9);
    s_histogram(&p, logits, N, 500, counts);
    cr_assert_eq(counts[order[0]], 500);
}

Test(sampler, top_p_on_a_large_vocab, .timeout = 60) {
    /* flat logits over 4000 ids: the nucleus needs more than the sorted prefix */
    enum { N = 4000, DRAWS = 4000 };
    static float logits[N];
    static int counts[N];
    for (int i = 0; i < N; i++)
        logits[i] = (i % 2) ? 0.0f : -0.01f;
    ms_sampling_params p = s_params(1.0f, 0, 0.9f, 0.0f, 77);
    s_histogram(&p, logits, N, DRAWS, counts);
    /* the 2000 odd ids hold ~50.1% of the mass: 0.9 needs ~1600 even ids as well;
     * the lowest even ids come first among equals, so the highest even ids are cut */
    int high_even = 0, odd = 0;
    for (int i = 0; i < N; i++) {
        if (i % 2)
            odd += counts[i];
        else if (i >= 3400)
            high_even += counts[i];
    }
    cr_assert_eq(high_even, 0, "even ids >= 3400 were drawn %d times", high_even);
    cr_assert_gt(odd, DRAWS / 2, "odd ids drawn %d of %d", odd, DRAWS);
}

/* Reference nucleus: ids sorted by logit (desc, id asc), prefix reaching top_p. */
static const float *s_ref_logits;
static int s_cmp_desc(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (s_ref_logits[x] != s_ref_logits[y]) return s_ref_logits[x] > s_ref_logits[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

Test(sampler, top_p_histogram_path_matches_a_full_sort, .timeout = 60) {
    enum { N = 20000, DRAWS = 3000 };
    static float logits[N];
    static int32_t order[N];
    static int counts[N];
    static bool in_nucleus[N];
    const float top_ps[] = {0.5f, 0.9f, 0.99f};
    for (size_t t = 0; t < MS_ARRAY_LEN(top_ps); t++) {
        s_fill_logits(logits, N, 31 + t, 6.0f + 4.0f * (float)t);
        s_ref_logits = logits;
        double max = -INFINITY, total = 0.0;
        for (int i = 0; i < N; i++) {
            order[i] = i;
            max = fmax(max, logits[i]);
        }
        for (int i = 0; i < N; i++)
            total += exp(logits[i] - max);
        qsort(order, N, sizeof(int32_t), s_cmp_desc);
        memset(in_nucleus, 0, sizeof(in_nucleus));
        double cum = 0.0;
        int size = 0;
        for (int i = 0; i < N; i++) {
            in_nucleus[order[i]] = true;
            size++;
            cum += exp(logits[order[i]] - max);
            if (cum >= top_ps[t] * total) break;
        }
        ms_sampling_params p = s_params(1.0f, 0, top_ps[t], 0.0f, 8);
        s_histogram(&p, logits, N, DRAWS, counts);
        int outside = 0;
        for (int i = 0; i < N; i++)
            if (!in_nucleus[i]) outside += counts[i];
        cr_assert_eq(outside, 0, "top_p %g: %d draws outside the %d-token nucleus",
                     (double)top_ps[t], outside, size);
        /* the ranks just inside the cut are reachable: mass there is not dropped */
        int tail = 0;
        for (int i = size / 2; i < size; i++)
            tail += counts[order[i]];
        cr_assert_gt(tail, 0, "top_p %g: the lower half of the nucleus never drawn",
                     (double)top_ps[t]);
    }
}

Test(sampler, top_k_histogram_path_matches_a_full_sort, .timeout = 60) {
    enum { N = 20000, DRAWS = 3000 };
    static float logits[N];
    static int32_t order[N];
    static int counts[N];
    const int ks[] = {1, 7, 300, 5000};
    for (size_t t = 0; t < MS_ARRAY_LEN(ks); t++) {
        s_fill_logits(logits, N, 57 + t, 3.0f);
        for (int i = 0; i < N; i += 97)
            logits[i] = logits[i / 2]; /* some ties */
        s_ref_logits = logits;
        for (int i = 0; i < N; i++)
            order[i] = i;
        qsort(order, N, sizeof(int32_t), s_cmp_desc);
        ms_sampling_params p =
            s_params(50.0f, ks[t], 1.0f, 0.0f, 4); /* nearly uniform in the set */
        s_histogram(&p, logits, N, DRAWS, counts);
        int inside = 0, last_half = 0;
        for (int r = 0; r < ks[t]; r++) {
            inside += counts[order[r]];
            if (r >= ks[t] / 2) last_half += counts[order[r]];
        }
        cr_assert_eq(inside, DRAWS, "top_k %d: %d of %d draws outside the reference set", ks[t],
                     DRAWS - inside, DRAWS);
        cr_assert_gt(last_half, 0, "top_k %d: the lower half of the set never drawn", ks[t]);
        if (ks[t] == 1) cr_assert_eq(counts[order[0]], DRAWS);
    }
}

Test(sampler, min_p_drops_the_unlikely, .timeout = 30) {
    enum { N = 5, DRAWS = 20000 };
    /* relative to the best: 1, 0.5, 0.2, 0.09, 0.01 */
    float logits[N] = {logf(0.2f), logf(0.01f), logf(1.0f), logf(0.09f), logf(0.5f)};
    int counts[N];
    ms_sampling_params p = s_params(1.0f, 0, 1.0f, 0.1f, 11);
    s_histogram(&p, logits, N, DRAWS, counts);
    cr_assert_gt(counts[2], 0);
    cr_assert_gt(counts[4], 0);
    cr_assert_gt(counts[0], 0);
    cr_assert_eq(counts[3], 0, "p = 0.09 p_max drawn with min_p 0.1");
    cr_assert_eq(counts[1], 0, "p = 0.01 p_max drawn with min_p 0.1");
    /* min_p 1 keeps the best only */
    p = s_params(3.0f, 0, 1.0f, 1.0f, 11);
    s_histogram(&p, logits, N, 1000, counts);
    cr_assert_eq(counts[2], 1000);
}

Test(sampler, filters_use_temperature_one_probabilities, .timeout = 30) {
    /* a high temperature flattens the draw, but top-p decided on the T=1 probs */
    enum { N = 6, DRAWS = 20000 };
    const double pr[N] = {0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125};
    float logits[N];
    for (int i = 0; i < N; i++)
        logits[i] = (float)log(pr[i]);
    int counts[N];
    ms_sampling_params p = s_params(100.0f, 0, 0.7f, 0.0f, 5);
    s_histogram(&p, logits, N, DRAWS, counts);
    cr_assert_eq(counts[2] + counts[3] + counts[4] + counts[5], 0);
    double frac = (double)counts[0] / DRAWS; /* nearly 1/2 at T = 100 */
    cr_assert(fabs(frac - 0.5) < 0.02, "best share %.3f at T=100", frac);
}

/* ---- state hand-off ------------------------------------------------------- */

Test(sampler, state_restore_continues_the_same_draws, .timeout = 30) {
    enum { N = 1000, FIRST = 37, REST = 100 };
    static float logits[N];
    s_fill_logits(logits, N, 99, 4.0f);
    ms_sampling_params p = s_params(1.1f, 50, 0.9f, 0.0f, 2024);
    ms_sampler a, b;
    cr_assert_eq(ms_sampler_init(&a, &p, N), 0);
    int32_t whole[FIRST + REST];
    for (int i = 0; i < FIRST + REST; i++)
        whole[i] = ms_sampler_sample(&a, logits);
    ms_sampler_fini(&a);

    /* "prefill actor": FIRST draws, then export the state */
    cr_assert_eq(ms_sampler_init(&a, &p, N), 0);
    for (int i = 0; i < FIRST; i++)
        cr_assert_eq(ms_sampler_sample(&a, logits), whole[i]);
    uint64_t st = ms_sampler_state(&a);
    ms_sampler_fini(&a);
    /* "decode actor": a fresh sampler, state imported */
    cr_assert_eq(ms_sampler_init(&b, &p, N), 0);
    ms_sampler_set_state(&b, st);
    for (int i = FIRST; i < FIRST + REST; i++)
        cr_assert_eq(ms_sampler_sample(&b, logits), whole[i], "draw %d differs after hand-off", i);
    ms_sampler_fini(&b);
}

Test(sampler, greedy_calls_advance_the_state, .timeout = 10) {
    ms_sampling_params g = s_params(0.0f, 0, 1.0f, 0.0f, 5);
    ms_sampling_params t = s_params(1.0f, 0, 1.0f, 0.0f, 5);
    ms_sampler a, b;
    cr_assert_eq(ms_sampler_init(&a, &g, 4), 0);
    cr_assert_eq(ms_sampler_init(&b, &t, 4), 0);
    float logits[4] = {0.0f, 0.1f, 0.2f, 0.3f};
    for (int i = 0; i < 10; i++) {
        ms_sampler_sample(&a, logits);
        ms_sampler_sample(&b, logits);
    }
    cr_assert_eq(ms_sampler_state(&a), ms_sampler_state(&b));
    cr_assert_neq(ms_sampler_state(&a), 5u);
    ms_sampler_fini(&a);
    ms_sampler_fini(&b);
}

/* ---- stop strings --------------------------------------------------------- */

/* Streams text in pieces of the given sizes (cycled) through a matcher;
 * returns what reached the client and whether a stop fired. */
static bool s_stream(const ms_sampling_params *p, const char *text, const int *sizes, int n_sizes,
                     char *got, int got_cap) {
    ms_stop_matcher m;
    ms_stop_init(&m, p);
    int n = (int)strlen(text), pos = 0, k = 0, got_len = 0;
    char out[512];
    bool stopped = false;
    while (pos < n && !stopped) {
        int len = MS_MIN(sizes[k++ % n_sizes], n - pos);
        int out_len = -1;
        stopped = ms_stop_push(&m, text + pos, len, out, (int)sizeof(out), &out_len);
        cr_assert_eq((int)strlen(out), out_len);
        cr_assert_lt(got_len + out_len, got_cap);
        memcpy(got + got_len, out, (size_t)out_len);
        got_len += out_len;
        pos += len;
    }
    if (!stopped) got_len += ms_stop_flush(&m, got + got_len, got_cap - got_len);
    got[got_len] = '\0';
    return stopped;
}

Test(stop, split_across_deltas, .timeout = 10) {
    ms_sampling_params p;
    ms_sampling_params_default(&p);
    p.n_stop = 2;
    strcpy(p.stop[0], "</answer>");
    strcpy(p.stop[1], "\nUSER:");
    const char *text = "The cat sat.</ans wer> no</answer> hidden";
    const int split_sets[][4] = {{1, 1, 1, 1}, {2, 3, 5, 7}, {13, 1, 4, 2}, {100, 1, 1, 1}};
    for (size_t s = 0; s < MS_ARRAY_LEN(split_sets); s++) {
        char got[256];
        bool stopped = s_stream(&p, text, split_sets[s], 4, got, sizeof(got));
        cr_assert(stopped, "split set %zu: no stop", s);
        cr_assert_str_eq(got, "The cat sat.</ans wer> no", "split set %zu", s);
    }
    const char *text2 = "line one\nUSE\nUSER: next";
    const int ones[1] = {1};
    char got[256];
    cr_assert(s_stream(&p, text2, ones, 1, got, sizeof(got)));
    cr_assert_str_eq(got, "line one\nUSE");
}

Test(stop, partial_match_released_at_the_end, .timeout = 10) {
    ms_sampling_params p;
    ms_sampling_params_default(&p);
    p.n_stop = 1;
    strcpy(p.stop[0], "STOP");
    ms_stop_matcher m;
    ms_stop_init(&m, &p);
    char out[256];
    int n = -1;
    cr_assert_not(ms_stop_push(&m, "abcST", 5, out, sizeof(out), &n));
    cr_assert_str_eq(out, "abc"); /* "ST" held back */
    cr_assert_eq(n, 3);
    cr_assert_not(ms_stop_push(&m, "O", 1, out, sizeof(out), &n));
    cr_assert_eq(n, 0);
    cr_assert_not(ms_stop_push(&m, "x", 1, out, sizeof(out), &n));
    cr_assert_str_eq(out, "STOx"); /* not a stop after all */
    cr_assert_not(ms_stop_push(&m, "S", 1, out, sizeof(out), &n));
    cr_assert_eq(ms_stop_flush(&m, out, sizeof(out)), 1);
    cr_assert_str_eq(out, "S");
}

Test(stop, earliest_of_several, .timeout = 10) {
    ms_sampling_params p;
    ms_sampling_params_default(&p);
    p.n_stop = 3;
    strcpy(p.stop[0], "world");
    strcpy(p.stop[1], "lo w");
    strcpy(p.stop[2], "o");
    char out[256];
    int n;
    ms_stop_matcher m;
    ms_stop_init(&m, &p);
    cr_assert(ms_stop_push(&m, "hello world", 11, out, sizeof(out), &n));
    cr_assert_str_eq(out, "hel"); /* "lo w" at 3 comes before "o" at 4 */
    p.n_stop = 1;
    ms_stop_init(&m, &p);
    cr_assert(ms_stop_push(&m, "hello world", 11, out, sizeof(out), &n));
    cr_assert_str_eq(out, "hello ");
    cr_assert_eq(n, 6);
}

Test(stop, no_stops_passes_through, .timeout = 10) {
    ms_sampling_params p;
    ms_sampling_params_default(&p);
    ms_stop_matcher m;
    ms_stop_init(&m, &p);
    char out[256];
    int n;
    cr_assert_not(ms_stop_push(&m, "anything </s>", 13, out, sizeof(out), &n));
    cr_assert_str_eq(out, "anything </s>");
    cr_assert_eq(ms_stop_flush(&m, out, sizeof(out)), 0);
    cr_assert_not(ms_stop_push(&m, "", 0, out, sizeof(out), &n));
    cr_assert_eq(n, 0);
}

Test(stop, overlapping_prefix_holds_longest, .timeout = 10) {
    /* "aab": after "aa" both "a" and "aa" are prefixes; "aaab" must stop at index 1 */
    ms_sampling_params p;
    ms_sampling_params_default(&p);
    p.n_stop = 1;
    strcpy(p.stop[0], "aab");
    const int ones[1] = {1};
    char got[64];
    cr_assert(s_stream(&p, "xaaab tail", ones, 1, got, sizeof(got)));
    cr_assert_str_eq(got, "xa");
}
