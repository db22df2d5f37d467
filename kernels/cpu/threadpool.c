/* threadpool.c — see threadpool.h.
 *
 * Hand-off protocol. `next` packs (generation << 32 | next task index) in one
 * 64-bit atomic. The caller writes the job (fn, ctx, n_tasks) into slot
 * generation % 2, then publishes it by storing (generation, 0) into `next`.
 * A thread claims task i by a compare-and-swap (g, i) -> (g, i + 1), which
 * succeeds only while job g is still the current one, and counts every
 * finished task in `n_done`. The caller runs tasks too and returns as soon as
 * n_done == n_tasks: it never waits for a worker that has not claimed a task,
 * so a worker that is slow to wake (an oversubscribed machine) costs nothing.
 * A late worker reads the slot of a finished job, sees no task left (or its
 * CAS fails because the generation moved on) and goes back to waiting; the
 * slot it reads is only rewritten two jobs later, after the generation has
 * changed, so a successful claim always matches the fields read before it.
 *
 * Sleeping: idle workers spin for MS_THREADPOOL_SPIN_NS, then wait on cv_job.
 * The sequentially consistent order of "publish / read n_sleeping" on the
 * caller's side and "n_sleeping++ / read next" on the worker's rules out a
 * lost wake-up. The caller waiting for the last tasks spins the same way and
 * then sleeps on cv_done (the worker finishing the last task signals it).
 */
#include "threadpool.h"
#include "ms_common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct s_worker_arg {
    struct ms_threadpool *pool;
    int id; /* 1..n_threads-1 */
} s_worker_arg;

typedef struct s_job {
    _Atomic(ms_threadpool_fn) fn;
    _Atomic(void *) ctx;
    atomic_int n_tasks;
} s_job;

struct ms_threadpool {
    int n_threads;          /* caller included */
    pthread_t *threads;     /* n_threads - 1 workers */
    s_worker_arg *args;     /* one per worker */
    pthread_mutex_t mu;     /* guards the sleeps below */
    pthread_cond_t cv_job;  /* idle workers sleep here */
    pthread_cond_t cv_done; /* the caller sleeps here */
    atomic_int n_sleeping;  /* workers in cv_job */
    atomic_bool caller_waiting; /* caller in cv_done */
    atomic_bool stop;       /* set by destroy */
    uint32_t generation;    /* current job's generation (caller only) */
    s_job jobs[2];          /* job g lives in jobs[g % 2] */
    atomic_uint_least64_t next; /* generation << 32 | next task index */
    atomic_int n_done;      /* tasks of the current job finished */
};

static inline void s_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claims and runs tasks of generation g until none is left; returns tasks run. */
static void s_do_tasks(ms_threadpool *p, uint32_t g, int thread) {
    const s_job *j = &p->jobs[g & 1];
    const ms_threadpool_fn fn = atomic_load_explicit(&j->fn, memory_order_relaxed);
    void *ctx = atomic_load_explicit(&j->ctx, memory_order_relaxed);
    const int n_tasks = atomic_load_explicit(&j->n_tasks, memory_order_relaxed);
    uint64_t cur = atomic_load_explicit(&p->next, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(cur >> 32) != g || (int)(uint32_t)cur >= n_tasks) return;
        if (!atomic_compare_exchange_weak_explicit(&p->next, &cur, cur + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        fn(ctx, (int)(uint32_t)cur, thread);
        const int done = atomic_fetch_add_explicit(&p->n_done, 1, memory_order_acq_rel) + 1;
        if (done == n_tasks && atomic_load(&p->caller_waiting)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
        cur = atomic_load_explicit(&p->next, memory_order_acquire);
    }
}

/* Waits until the published generation differs from seen (or stop); returns it. */
static uint32_t s_wait_job(ms_threadpool *p, uint32_t seen) {
    int64_t t0 = 0;
    for (int i = 0;; i++) {
        uint32_t g = (uint32_t)(atomic_load_explicit(&p->next, memory_order_acquire) >> 32);
        if (g != seen || atomic_load_explicit(&p->stop, memory_order_relaxed)) return g;
        if ((i & 255) == 255) {
            int64_t now = ms_now_ns();
            if (t0 == 0) t0 = now;
            else if (now - t0 > MS_THREADPOOL_SPIN_NS) break;
        }
        s_pause();
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->n_sleeping, 1);
    uint32_t g;
    while ((g = (uint32_t)(atomic_load(&p->next) >> 32)) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->cv_job, &p->mu);
    atomic_fetch_sub(&p->n_sleeping, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *s_worker(void *arg) {
    s_worker_arg *wa = arg;
    ms_threadpool *p = wa->pool;
    uint32_t seen = 0;
    for (;;) {
        seen = s_wait_job(p, seen);
        if (atomic_load(&p->stop)) break;
        s_do_tasks(p, seen, wa->id);
    }
    return NULL;
}

ms_threadpool *ms_threadpool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > MS_THREADPOOL_MAX_THREADS) n_threads = MS_THREADPOOL_MAX_THREADS;
    ms_threadpool *p = ms_xcalloc(1, sizeof *p);
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_job, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->n_sleeping, 0);
    atomic_init(&p->caller_waiting, false);
    atomic_init(&p->stop, false);
    atomic_init(&p->next, 0);
    atomic_init(&p->n_done, 0);
    for (int i = 0; i < 2; i++) {
        atomic_init(&p->jobs[i].fn, NULL);
        atomic_init(&p->jobs[i].ctx, NULL);
        atomic_init(&p->jobs[i].n_tasks, 0);
    }
    int nw = n_threads - 1;
    p->threads = ms_xcalloc((size_t)(nw > 0 ? nw : 1), sizeof *p->threads);
    p->args = ms_xcalloc((size_t)(nw > 0 ? nw : 1), sizeof *p->args);
    for (int i = 0; i < nw; i++) {
        p->args[i].pool = p;
        p->args[i].id = i + 1;
        if (pthread_create(&p->threads[i], NULL, s_worker, &p->args[i]) != 0) {
            p->n_threads = i + 1; /* destroy joins the i workers that started */
            ms_threadpool_destroy(&p);
            return NULL;
        }
    }
    return p;
}

void ms_threadpool_destroy(ms_threadpool **p_p) {
    if (!p_p || !*p_p) return;
    ms_threadpool *p = *p_p;
    *p_p = NULL;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv_job);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads - 1; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->cv_job);
    pthread_cond_destroy(&p->cv_done);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p->args);
    free(p);
}

int ms_threadpool_n_threads(const ms_threadpool *p) { return p->n_threads; }

void ms_threadpool_run(ms_threadpool *p, int n_tasks, ms_threadpool_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (n_tasks == 1 || p->n_threads == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    const uint32_t g = ++p->generation;
    s_job *j = &p->jobs[g & 1];
    atomic_store_explicit(&j->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&j->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&j->n_tasks, n_tasks, memory_order_relaxed);
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    atomic_store(&p->next, (uint64_t)g << 32); /* seq_cst: publishes the job */
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_job);
        pthread_mutex_unlock(&p->mu);
    }
    s_do_tasks(p, g, 0);
    /* wait for tasks still running on workers: spin, then sleep */
    int64_t t0 = 0;
    for (int i = 0;; i++) {
        if (atomic_load_explicit(&p->n_done, memory_order_acquire) == n_tasks) return;
        if ((i & 255) == 255) {
            int64_t now = ms_now_ns();
            if (t0 == 0) t0 = now;
            else if (now - t0 > MS_THREADPOOL_SPIN_NS) break;
        }
        s_pause();
    }
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->caller_waiting, true);
    while (atomic_load(&p->n_done) != n_tasks) pthread_cond_wait(&p->cv_done, &p->mu);
    atomic_store(&p->caller_waiting, false);
    pthread_mutex_unlock(&p->mu);
}
