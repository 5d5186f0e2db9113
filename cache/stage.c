/*
 * stage.c - write staging: one full local copy per key being written, kept
 * outside the cap and the LRU until the upload is confirmed (commit) or
 * abandoned (discard).
 *
 * A staged file is recorded in the index before it is created, so a file in
 * staging/ without a row can only be a leftover of a crash during
 * cache_stage_open (never data a writer was told is written) and is removed
 * at open.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static struct cache_stage *cache_stage_find(cache *c, const char *key)
{
	for (struct cache_list *l = c->stages.next; l != &c->stages; l = l->next) {
		struct cache_stage *e = cache_container_of(l, struct cache_stage, link);

		if (!strcmp(e->key, key))
			return e;
	}
	return NULL;
}

static void cache_stage_free(struct cache_stage *e)
{
	free(e->key);
	free(e->path);
	free(e);
}

static struct cache_stage *cache_stage_new(cache *c, const char *key, const char *file)
{
	struct cache_stage *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	e->key = strdup(key);
	if (!e->key || asprintf(&e->path, "%s/%s", c->stagedir, file) < 0) {
		e->path = NULL;
		cache_stage_free(e);
		return NULL;
	}
	cache_list_add_tail(&c->stages, &e->link);
	return e;
}

void cache_stage_free_all(cache *c)
{
	while (!cache_list_empty(&c->stages)) {
		struct cache_stage *e =
		        cache_container_of(c->stages.next, struct cache_stage, link);

		cache_list_del(&e->link);
		cache_stage_free(e);
	}
}

int cache_stage_load(cache *c)
{
	sqlite3_stmt *st;
	DIR *d;
	struct dirent *de;
	int rc = 0;

	if (sqlite3_prepare_v2(c->db, "SELECT key, file FROM staged", -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *key = (const char *)sqlite3_column_text(st, 0);
		const char *file = (const char *)sqlite3_column_text(st, 1);

		if (!key || !file || strchr(file, '/'))
			continue;
		if (!cache_stage_new(c, key, file)) {
			rc = -ENOMEM;
			break;
		}
	}
	sqlite3_finalize(st);
	if (rc)
		return rc;

	/* A row whose file is gone was being committed (its data uploaded). */
	for (struct cache_list *l = c->stages.next, *next; l != &c->stages; l = next) {
		struct cache_stage *e = cache_container_of(l, struct cache_stage, link);
		struct stat sb;

		next = l->next;
		if (stat(e->path, &sb) == 0)
			continue;
		if (cache_db_delete_stage(c, e->key))
			return -EIO;
		cache_list_del(&e->link);
		cache_stage_free(e);
	}

	d = opendir(c->stagedir);
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		bool known = false;
		char *path;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (asprintf(&path, "%s/%s", c->stagedir, de->d_name) < 0)
			break;
		for (struct cache_list *l = c->stages.next; l != &c->stages && !known; l = l->next)
			known = !strcmp(cache_container_of(l, struct cache_stage, link)->path,
			                path);
		if (!known)
			unlink(path);
		free(path);
	}
	closedir(d);
	return 0;
}

static int cache_copy_range(int from, int to, uint64_t off, uint64_t len)
{
	char buf[65536];

	while (len > 0) {
		size_t want = len < sizeof(buf) ? (size_t)len : sizeof(buf);
		ssize_t n = pread(from, buf, want, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		for (ssize_t done = 0; done < n;) {
			ssize_t w = pwrite(to, buf + done, (size_t)(n - done), (off_t)(off + done));

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				return w < 0 ? -errno : -EIO;
			done += w;
		}
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	return 0;
}

/* Copies the object into fd: cached blocks locally, the rest through the
 * fetch callback (not added to the cache: the copy is about to diverge). */
static int cache_stage_fill(cache *c, const char *key, const char *etag, uint64_t size, int fd)
{
	struct cache_obj *o;
	uint64_t nb = cache_nblocks(size, c->bs);
	int rc = 0;

	pthread_mutex_lock(&c->lock);
	o = cache_obj_get_existing(c, key, etag, size);
	pthread_mutex_unlock(&c->lock);

	for (uint64_t idx = 0; idx < nb && !rc; idx++) {
		uint64_t off = idx * c->bs, len = size - off < c->bs ? size - off : c->bs;
		struct cache_blk *b = NULL;

		if (o) {
			pthread_mutex_lock(&c->lock);
			b = cache_blk_pin_present(c, o, idx);
			if (b)
				c->st.hit_bytes += len;
			pthread_mutex_unlock(&c->lock);
		}
		if (b) {
			rc = cache_copy_range(o->fd, fd, off, len);
			pthread_mutex_lock(&c->lock);
			/* b is pinned: the room is made elsewhere. */
			if (cache_nospace(rc) && cache_make_room_locked(c, len) == 0) {
				pthread_mutex_unlock(&c->lock);
				rc = cache_copy_range(o->fd, fd, off, len);
				pthread_mutex_lock(&c->lock);
			}
			cache_blk_unpin(c, b);
			pthread_mutex_unlock(&c->lock);
		} else {
			rc = c->cfg.fetch(c->cfg.fetch_ctx, key, etag, off, len, fd, off, NULL);
			if (rc > 0)
				rc = -EIO;
			if (cache_nospace(rc) && cache_make_room(c, len) == 0) {
				/* Cached blocks gave their space: once more. */
				rc = c->cfg.fetch(c->cfg.fetch_ctx, key, etag, off, len, fd, off,
				                  NULL);
				if (rc > 0)
					rc = -EIO;
			}
			pthread_mutex_lock(&c->lock);
			if (rc)
				c->st.fetch_errors++;
			else
				c->st.miss_bytes += len;
			pthread_mutex_unlock(&c->lock);
		}
	}
	if (o) {
		pthread_mutex_lock(&c->lock);
		cache_obj_put(c, o);
		pthread_mutex_unlock(&c->lock);
	}
	return rc;
}

int cache_stage_open(cache *c, const char *key, const char *etag, uint64_t size, int *fd_out)
{
	struct cache_stage *e;
	char hex[65];
	int fd = -1, rc;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		e = cache_stage_find(c, key);
		if (!e || !e->filling)
			break;
		pthread_cond_wait(&c->cond, &c->lock);
	}
	if (e) {
		fd = open(e->path, O_RDWR | O_CLOEXEC);
		rc = fd < 0 ? -errno : 0;
		pthread_mutex_unlock(&c->lock);
		if (!rc)
			*fd_out = fd;
		return rc;
	}
	cache_key_hash(key, hex);
	e = cache_stage_new(c, key, hex);
	if (!e) {
		pthread_mutex_unlock(&c->lock);
		return -ENOMEM;
	}
	e->filling = true;
	rc = cache_db_insert_stage(c, key, hex);
	if (cache_nospace(rc) && cache_make_room_locked(c, 0) == 0)
		rc = cache_db_insert_stage(c, key, hex);
	pthread_mutex_unlock(&c->lock);
	if (rc)
		goto fail;

	fd = open(e->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		goto fail;
	}
	if (etag)
		rc = cache_stage_fill(c, key, etag, size, fd);
	if (!rc && ftruncate(fd, (off_t)size) < 0)
		rc = -errno;
	/* A fill must be on disk before the writer's first change: a crash
	 * leaves the staged file to be resumed (the index calls it local), and
	 * holes where the object's bytes were would be uploaded as zeros.  An
	 * empty or zero-extended file holds nothing to keep: what is written
	 * into it is synced when it is closed. */
	if (!rc && etag && !c->cfg.no_sync && fdatasync(fd) < 0)
		rc = -errno;
	if (rc)
		goto fail;

	pthread_mutex_lock(&c->lock);
	e->filling = false;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	*fd_out = fd;
	return 0;

fail:
	if (fd >= 0)
		close(fd);
	pthread_mutex_lock(&c->lock);
	unlink(e->path);
	if (cache_db_delete_stage(c, key))
		cache_log(c, CACHE_LOG_WARNING, "cache: could not forget staged %s", key);
	cache_list_del(&e->link);
	cache_stage_free(e);
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

/* Records the renamed file's blocks as present, most recent first in the
 * LRU, and drops the staging row: one transaction. */
static int cache_stage_adopt(cache *c, struct cache_obj *o, const char *key)
{
	uint64_t nb = cache_nblocks(o->size, c->bs), idx;
	int rc = cache_db_exec(c, "BEGIN");

	for (idx = 0; idx < nb && !rc; idx++)
		rc = cache_db_insert_blk(c, o->id, idx, c->seq + 1 + idx);
	if (!rc)
		rc = cache_db_delete_stage(c, key);
	if (!rc)
		rc = cache_db_exec(c, "COMMIT");
	if (rc) {
		cache_db_exec(c, "ROLLBACK");
		return rc;
	}
	for (idx = 0; idx < nb; idx++) {
		struct cache_blk *b = cache_blk_add(c, o, idx, BLK_PRESENT);

		if (!b) {
			/* Recorded already: correct data, only not charged
			 * until the next open. */
			cache_log(c, CACHE_LOG_ERR, "cache: out of memory adopting %s", key);
			break;
		}
		c->cur_bytes += cache_blk_charge(c, b);
		++c->seq; /* the stamp recorded above */
		cache_list_add(&c->lru, &b->lru);
	}
	o->meta_charge = cache_meta_for(o->nblk);
	c->cur_bytes += o->meta_charge;
	return 0;
}

int cache_stage_commit(cache *c, const char *key, const char *etag, uint64_t size,
                       bool data_on_disk)
{
	struct cache_stage *e;
	struct cache_obj *o;
	char path[PATH_MAX];
	int fd, rc;

	pthread_mutex_lock(&c->lock);
	e = cache_stage_find(c, key);
	rc = !e ? -ENOENT : e->filling ? -EBUSY : 0;
	if (!rc)
		e->filling = true; /* keeps opens and discards away meanwhile */
	pthread_mutex_unlock(&c->lock);
	if (rc)
		return rc;

	fd = open(e->path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		rc = -errno;
	if (!rc && ftruncate(fd, (off_t)size) < 0)
		rc = -errno;
	/* Recorded blocks must be on disk first, as for fetched ones (a
	 * needless fdatasync is not free: it flushes the disk's cache). */
	if (!rc && !data_on_disk && !c->cfg.no_sync && fdatasync(fd) < 0)
		rc = -errno;
	if (fd >= 0)
		close(fd);

	pthread_mutex_lock(&c->lock);
	if (rc)
		goto out;
	o = cache_obj_lookup(c, key);
	if (o)
		cache_obj_drop(c, o);
	rc = cache_obj_create(c, key, etag, size, false, &o);
	if (cache_nospace(rc) && cache_make_room_locked(c, 0) == 0)
		rc = cache_obj_create(c, key, etag, size, false, &o);
	if (rc)
		goto out;
	if (!cache_obj_path(c, key, o->id, path)) {
		rc = -errno;
		cache_obj_free(c, o);
		goto out;
	}
	/* The fan-out directory may not exist yet. */
	rc = cache_obj_mkdir(path);
	if (rc)
		cache_log(c, CACHE_LOG_WARNING, "cache: mkdir for %s: %s", path, strerror(-rc));
	if (rename(e->path, path) < 0) {
		rc = -errno;
		cache_obj_free(c, o);
		goto out;
	}
	o->refs = 1;
	o->fd = open(path, O_RDWR | O_CLOEXEC);
	rc = o->fd < 0 ? -errno : cache_stage_adopt(c, o, key);
	if (cache_nospace(rc) && cache_make_room_locked(c, 0) == 0)
		rc = cache_stage_adopt(c, o, key);
	if (rc) {
		/* Back to staging, so nothing the writer wrote is lost. */
		if (rename(path, e->path) < 0)
			cache_log(c, CACHE_LOG_ERR, "cache: staged %s lost: %s", key,
			          strerror(errno));
		o->refs = 0;
		cache_obj_free(c, o);
		goto out;
	}
	cache_list_del(&e->link);
	cache_stage_free(e);
	e = NULL;
	cache_obj_put(c, o);
	cache_evict_until(c, 0);
out:
	if (e)
		e->filling = false;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

int cache_stage_discard(cache *c, const char *key)
{
	struct cache_stage *e;
	int rc = 0;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		e = cache_stage_find(c, key);
		if (!e || !e->filling)
			break;
		pthread_cond_wait(&c->cond, &c->lock);
	}
	if (!e) {
		rc = -ENOENT;
	} else {
		rc = cache_db_delete_stage(c, key);
		if (!rc) {
			unlink(e->path);
			cache_list_del(&e->link);
			cache_stage_free(e);
		}
	}
	pthread_mutex_unlock(&c->lock);
	return rc;
}

int cache_stage_keys(cache *c, char ***keys, size_t *n)
{
	size_t k = 0, cap = 0;
	char **v = NULL;
	int rc = 0;

	pthread_mutex_lock(&c->lock);
	for (struct cache_list *l = c->stages.next; l != &c->stages; l = l->next)
		cap++;
	v = calloc(cap + 1, sizeof(*v));
	for (struct cache_list *l = c->stages.next; v && l != &c->stages; l = l->next) {
		v[k] = strdup(cache_container_of(l, struct cache_stage, link)->key);
		if (!v[k]) {
			rc = -ENOMEM;
			break;
		}
		k++;
	}
	pthread_mutex_unlock(&c->lock);
	if (!v || rc) {
		for (size_t i = 0; v && i < k; i++)
			free(v[i]);
		free(v);
		return -ENOMEM;
	}
	*keys = v;
	*n = k;
	return 0;
}

uint64_t cache_dirty_bytes(cache *c)
{
	uint64_t total = 0;

	pthread_mutex_lock(&c->lock);
	for (struct cache_list *l = c->stages.next; l != &c->stages; l = l->next) {
		struct stat sb;

		if (stat(cache_container_of(l, struct cache_stage, link)->path, &sb) == 0)
			total += (uint64_t)sb.st_blocks * 512;
	}
	pthread_mutex_unlock(&c->lock);
	return total;
}
