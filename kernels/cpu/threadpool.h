/* threadpool.h — a persistent pthread pool for the CPU backend.
 *
 * n threads in all: the caller of ms_threadpool_run is thread 0 and n-1
 * workers wait between jobs, first spinning briefly (so the back-to-back small
 * ops of a decode step do not pay a futex wake each) and then sleeping on a
 * condition variable. A job is n_tasks calls fn(ctx, task, thread) handed out
 * dynamically; which thread runs which task varies from run to run, so a task
 * must compute the same result whichever thread runs it (use `thread` only to
 * pick a per-thread scratch buffer). ms_threadpool_run blocks until every task
 * has returned. One job at a time: run must not be called concurrently on one
 * pool, nor from inside a task.
 */
#ifndef MS_THREADPOOL_H
#define MS_THREADPOOL_H

#define MS_THREADPOOL_MAX_THREADS 256   /* upper bound on n_threads */
#define MS_THREADPOOL_SPIN_NS     200000 /* how long an idle worker spins before sleeping */

typedef struct ms_threadpool ms_threadpool;

/* Task body: task in [0, n_tasks), thread in [0, n_threads). */
typedef void (*ms_threadpool_fn)(void *ctx, int task, int thread);

/* Starts n_threads-1 workers (n_threads is clamped to [1, MS_THREADPOOL_MAX_THREADS]).
 * Returns NULL if a thread cannot be created. */
ms_threadpool *ms_threadpool_new(int n_threads);
/* Stops and joins the workers, frees the pool, sets *p_p to NULL. NULL-safe. */
void ms_threadpool_destroy(ms_threadpool **p_p);
/* Threads in the pool, the caller included. */
int ms_threadpool_n_threads(const ms_threadpool *p);
/* Runs fn(ctx, t, thread) for t in [0, n_tasks) and returns when all are done.
 * n_tasks <= 0 does nothing; with one task or one thread it runs on the caller. */
void ms_threadpool_run(ms_threadpool *p, int n_tasks, ms_threadpool_fn fn, void *ctx);

#endif
