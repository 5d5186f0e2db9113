/*
 * reader.c - cache_reader: per-open-file sequential detection and read-ahead
 * on a pool of worker threads.
 *
 * A reader only queues tasks (runs of blocks); the workers reserve the
 * missing blocks of a run like demand reads do and fetch them with one
 * request, so a demand read of a block being prefetched waits for that fetch
 * (and is woken as soon as that block is in) instead of starting another.  A task holds
 * its reader through r->queued / r->inflight; cache_reader_close() unqueues
 * what has not started and waits for the rest, so no worker touches a freed
 * reader.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The first read-ahead window, in blocks; it doubles with every request. */
#define CACHE_WIN_START 4
/* The most one read-ahead request fetches. */
#define CACHE_RUN_MAX (16ULL << 20)

static void *cache_worker(void *arg)
{
	cache *c = arg;

	pthread_mutex_lock(&c->lock);
	while (!c->stopping) {
		struct cache_task *t;
		struct cache_obj *o;
		cache_reader *r;

		if (cache_list_empty(&c->queue)) {
			pthread_cond_wait(&c->pool_cond, &c->lock);
			continue;
		}
		t = cache_container_of(c->queue.next, struct cache_task, link);
		cache_list_del(&t->link);
		r = t->r;
		r->queued--;
		r->inflight++;
		/* Prefetch serves the reader's etag only; it never discards
		 * what another etag cached. */
		o = cache_obj_get_prefetch(c, r->key, r->etag, r->size);
		pthread_mutex_unlock(&c->lock);
		if (o) {
			int rc = cache_fetch_run(c, o, t->idx, t->n, true);

			if (rc < 0)
				cache_log(c, CACHE_LOG_DEBUG, "cache: prefetch of %s failed: %s",
				          r->key, strerror(-rc));
		}
		pthread_mutex_lock(&c->lock);
		if (o)
			cache_obj_put(c, o);
		r->inflight--;
		pthread_cond_broadcast(&c->cond);
		free(t);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

int cache_pool_start(cache *c)
{
	if (c->cfg.no_prefetch)
		return 0;
	c->threads = calloc(c->cfg.prefetch_threads, sizeof(*c->threads));
	if (!c->threads)
		return -ENOMEM;
	for (unsigned i = 0; i < c->cfg.prefetch_threads; i++) {
		int rc = pthread_create(&c->threads[i], NULL, cache_worker, c);

		if (rc) {
			cache_pool_stop(c);
			return -rc;
		}
		c->nthreads++;
	}
	return 0;
}

void cache_pool_stop(cache *c)
{
	pthread_mutex_lock(&c->lock);
	c->stopping = true;
	pthread_cond_broadcast(&c->pool_cond);
	pthread_mutex_unlock(&c->lock);
	for (unsigned i = 0; i < c->nthreads; i++)
		pthread_join(c->threads[i], NULL);
	free(c->threads);
	c->threads = NULL;
	c->nthreads = 0;
	/* Readers were all closed, so nothing is queued; be safe anyway. */
	while (!cache_list_empty(&c->queue)) {
		struct cache_task *t = cache_container_of(c->queue.next, struct cache_task, link);

		cache_list_del(&t->link);
		free(t);
	}
}

/* Called by the read path with c->lock held, before the read is served, so
 * the prefetches run alongside it.  Keeps r->obj, a reference that keeps the
 * object's file open between reads. */
void cache_reader_schedule(cache_reader *r, struct cache_obj *o, uint64_t off, size_t len)
{
	cache *c = r->c;
	uint64_t bs = c->bs, nb = cache_nblocks(r->size, bs), last, slack;
	unsigned max, run_max;
	bool seq;

	if (r->obj != o) {
		if (r->obj)
			cache_obj_put(c, r->obj);
		o->refs++; /* the caller holds one, so the file is open */
		r->obj = o;
	}

	/* Continuing the reads so far, allowing for the kernel's read-ahead
	 * requests to arrive out of order (several in flight, parallel FUSE
	 * threads): within a block, or four of the largest reads, of where
	 * they ended. */
	if (len > r->max_len)
		r->max_len = len;
	slack = 4 * (uint64_t)r->max_len > bs ? 4 * (uint64_t)r->max_len : bs;
	seq = r->has_prev && off + slack >= r->next_off && off <= r->next_off + slack;
	r->run = seq ? r->run + 1 : 0;
	if (!seq) {
		r->pf_next = 0;
		r->win = 0;
	}
	r->has_prev = true;
	if (!seq || off + len > r->next_off)
		r->next_off = off + len;
	if (c->nthreads == 0 || r->run < 2 || r->closing)
		return;

	/* The window: up to prefetch_window blocks, and no more than a
	 * quarter of the cap, so read-ahead does not evict what the reader is
	 * about to read. */
	max = c->cfg.prefetch_window;
	if (max > c->cfg.size / 4 / bs)
		max = (unsigned)(c->cfg.size / 4 / bs);
	if (max == 0)
		max = 1;
	if (r->win == 0)
		r->win = max < CACHE_WIN_START ? max : CACHE_WIN_START;
	run_max = (unsigned)(CACHE_RUN_MAX / bs);
	if (run_max == 0)
		run_max = 1;

	last = (off + len - 1) / bs;
	if (r->pf_next <= last)
		r->pf_next = last + 1;
	for (;;) {
		uint64_t to = last + 1 + r->win, want;
		unsigned n, threshold = (r->win + 1) / 2;
		struct cache_task *t;

		if (to > nb)
			to = nb;
		/* Present or being fetched: nothing to ask for. */
		while (r->pf_next < to && cache_blk_lookup(c, o, r->pf_next))
			r->pf_next++;
		if (r->pf_next >= to || r->queued + r->inflight >= c->cfg.prefetch_parallel)
			break;
		want = to - r->pf_next;
		if (threshold > run_max)
			threshold = run_max;
		/* Fewer, larger requests: wait until a good part of the window
		 * is not requested, unless that is the end of the object. */
		if (want < threshold && to < nb)
			break;
		n = want < run_max ? (unsigned)want : run_max;
		t = calloc(1, sizeof(*t));
		if (!t)
			break;
		t->r = r;
		t->idx = r->pf_next;
		t->n = n;
		cache_list_add_tail(&c->queue, &t->link);
		r->queued++;
		r->pf_next += n;
		if (r->win < max)
			r->win = r->win * 2 < max ? r->win * 2 : max;
		pthread_cond_signal(&c->pool_cond);
	}
}

/* Called by the read path with c->lock held when block idx, which the read
 * needs now, is missing: if one of r's queued read-ahead runs covers it (no
 * worker has taken it up yet), the reader fetches that run itself rather
 * than fetching the block alone and the run's other blocks later.  Drops
 * c->lock meanwhile. */
void cache_reader_take_run(cache_reader *r, struct cache_obj *o, uint64_t idx)
{
	cache *c = r->c;
	struct cache_list *l;

	for (l = c->queue.next; l != &c->queue; l = l->next) {
		struct cache_task *t = cache_container_of(l, struct cache_task, link);
		int rc;

		if (t->r != r || idx < t->idx || idx >= t->idx + t->n)
			continue;
		cache_list_del(&t->link);
		r->queued--;
		r->inflight++;
		pthread_mutex_unlock(&c->lock);
		rc = cache_fetch_run(c, o, idx, (unsigned)(t->idx + t->n - idx), true);
		if (rc < 0)
			cache_log(c, CACHE_LOG_DEBUG, "cache: read-ahead of %s failed: %s", r->key,
			          strerror(-rc));
		pthread_mutex_lock(&c->lock);
		r->inflight--;
		pthread_cond_broadcast(&c->cond);
		free(t);
		return;
	}
}

cache_reader *cache_reader_open(cache *c, const char *key, const char *etag, uint64_t size)
{
	cache_reader *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->c = c;
	r->size = size;
	r->key = strdup(key);
	r->etag = strdup(etag);
	if (!r->key || !r->etag) {
		free(r->key);
		free(r->etag);
		free(r);
		return NULL;
	}
	return r;
}

ssize_t cache_reader_read(cache_reader *r, uint64_t off, size_t len, void *buf)
{
	return cache_read_common(r->c, r, r->key, r->etag, r->size, off, len, buf);
}

void cache_reader_close(cache_reader *r)
{
	cache *c;
	struct cache_list *l, *next;

	if (!r)
		return;
	c = r->c;
	pthread_mutex_lock(&c->lock);
	r->closing = true;
	for (l = c->queue.next; l != &c->queue; l = next) {
		struct cache_task *t = cache_container_of(l, struct cache_task, link);

		next = l->next;
		if (t->r == r) {
			cache_list_del(&t->link);
			free(t);
			r->queued--;
		}
	}
	/* A fetch cannot be interrupted; it ends, bounded by the callback's
	 * own timeouts. */
	while (r->inflight > 0)
		pthread_cond_wait(&c->cond, &c->lock);
	if (r->obj)
		cache_obj_put(c, r->obj);
	pthread_mutex_unlock(&c->lock);
	free(r->key);
	free(r->etag);
	free(r);
}
