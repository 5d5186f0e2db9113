/*
 * cache.c - the core of cache/: objects and blocks in memory, the cap and
 * LRU eviction, the read path (hit, deduplicated fetch, streaming), put,
 * invalidate, open and close.
 *
 * The in-memory state mirrors the index (db.c) and is authoritative while
 * the cache is open; the index is written through on every change of which
 * blocks are present, and the LRU stamps are saved in batches.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "internal.h"

/* Entries per bucket of the object and block hash tables before they double:
 * chains of 1-2 entries, half the table memory of a load of 1 (at 100,000
 * cached objects, 1 MiB less). */
#define CACHE_TAB_LOAD 2

/* Disk space kept free on the cache's file system: 1% of it, at least this. */
#define CACHE_DISK_RESERVE_MIN (2ULL << 20)

void cache_log(cache *c, int level, const char *fmt, ...)
{
	va_list ap;

	if (!c->cfg.log)
		return;
	va_start(ap, fmt);
	c->cfg.log(level, fmt, ap);
	va_end(ap);
}

/* ---------------------------------------------------------------- helpers */

uint64_t cache_nblocks(uint64_t size, uint64_t bs)
{
	return size / bs + (size % bs != 0);
}

uint64_t cache_blk_len(const struct cache_obj *o, uint64_t bs, uint64_t idx)
{
	uint64_t start = idx * bs;

	if (start >= o->size)
		return 0;
	return o->size - start < bs ? o->size - start : bs;
}

static uint64_t cache_round_up(uint64_t n)
{
	return (n + CACHE_FS_BLOCK - 1) / CACHE_FS_BLOCK * CACHE_FS_BLOCK;
}

/* Per cached small object the cache keeps one cache_obj (64 bytes plus key
 * and ETag) and one of these in memory; see test_memory_per_cached_small_object. */
_Static_assert(sizeof(void *) != 8 || sizeof(struct cache_blk) == 56, "struct cache_blk grew");

/* What a block costs against the cap: its length rounded up to 4 KiB. */
uint64_t cache_blk_charge(cache *c, const struct cache_blk *b)
{
	return cache_round_up(cache_blk_len(b->obj, c->bs, b->idx));
}

/* Extent-tree allowance for a file with nblk cached blocks: ext4 keeps four
 * extents in the inode and about 340 per 4 KiB tree block; 128 per block
 * leaves room for blocks that the allocator split. */
uint64_t cache_meta_for(uint64_t nblk)
{
	if (nblk < 4)
		return 0;
	return CACHE_FS_BLOCK * (1 + (nblk - 4) / 128);
}

void cache_key_hash(const char *key, char hex[65])
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	static const char digits[] = "0123456789abcdef";

	SHA256((const unsigned char *)key, strlen(key), md);
	for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
		hex[2 * i] = digits[md[i] >> 4];
		hex[2 * i + 1] = digits[md[i] & 15];
	}
	hex[64] = '\0';
}

static uint64_t cache_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

static uint64_t cache_str_hash(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
	return cache_mix(h);
}

static uint64_t cache_blk_hash(const struct cache_obj *o, uint64_t idx)
{
	return cache_mix((uint64_t)(uintptr_t)o * 0x9e3779b97f4a7c15ULL + idx);
}

int cache_punch(cache *c, int fd, uint64_t off, uint64_t len)
{
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
	              (off_t)cache_round_up(len)) < 0) {
		int err = errno;

		cache_log(c, CACHE_LOG_ERR, "cache: punching a hole: %s", strerror(err));
		return -err;
	}
	return 0;
}

/* ---------------------------------------------------------------- objects */

struct cache_obj *cache_obj_lookup(cache *c, const char *key)
{
	struct cache_obj *o = c->obj_tab[cache_str_hash(key) & (c->obj_nb - 1)];

	while (o && strcmp(o->key, key) != 0)
		o = o->hnext;
	return o;
}

static void cache_obj_tab_grow(cache *c)
{
	size_t nb = c->obj_nb * 2;
	struct cache_obj **tab = calloc(nb, sizeof(*tab));

	if (!tab)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < c->obj_nb; i++) {
		struct cache_obj *o, *next;

		for (o = c->obj_tab[i]; o; o = next) {
			size_t h = cache_str_hash(o->key) & (nb - 1);

			next = o->hnext;
			o->hnext = tab[h];
			tab[h] = o;
		}
	}
	free(c->obj_tab);
	c->obj_tab = tab;
	c->obj_nb = nb;
}

static void cache_obj_unhash(cache *c, struct cache_obj *o)
{
	struct cache_obj **pp = &c->obj_tab[cache_str_hash(o->key) & (c->obj_nb - 1)];

	while (*pp && *pp != o)
		pp = &(*pp)->hnext;
	if (*pp) {
		*pp = o->hnext;
		c->obj_n--;
	}
	o->hnext = NULL;
}

bool cache_obj_path(cache *c, const char *key, int64_t id, char *path)
{
	char hex[65];
	int n;

	cache_key_hash(key, hex);
	n = snprintf(path, PATH_MAX, "%s/%.2s/%s-%lld", c->objdir, hex, hex, (long long)id);
	if (n < 0 || n >= PATH_MAX) {
		errno = ENAMETOOLONG;
		return false;
	}
	return true;
}

/* Creates the directory of a path made by cache_obj_path. */
int cache_obj_mkdir(char *path)
{
	char *slash = strrchr(path, '/');
	int rc = 0;

	*slash = '\0';
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		rc = -errno;
	*slash = '/';
	return rc;
}

/* A new in-memory object, hashed, with no reference and no open file.
 * NULL with errno on failure. */
struct cache_obj *cache_obj_new(cache *c, const char *key, const char *etag, uint64_t size,
                                int64_t id, bool create_file)
{
	size_t klen = strlen(key), elen = strlen(etag), h;
	struct cache_obj *o;

	if (klen > UINT16_MAX) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	o = malloc(offsetof(struct cache_obj, key) + klen + 1 + elen + 1);
	if (!o)
		return NULL;
	if (create_file) {
		char path[PATH_MAX];
		int fd = -1, rc = 0;

		if (!cache_obj_path(c, key, id, path))
			rc = -errno;
		if (!rc)
			rc = cache_obj_mkdir(path);
		/* O_TRUNC: a file left over by a crash must not lend its bytes. */
		if (!rc && (fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
			rc = -errno;
		if (rc) {
			free(o);
			errno = -rc;
			return NULL;
		}
		close(fd);
	}
	memset(o, 0, sizeof(*o));
	o->fd = -1;
	o->id = id;
	o->size = size;
	o->klen = (uint16_t)klen;
	cache_list_init(&o->blocks);
	memcpy(o->key, key, klen + 1);
	memcpy(o->key + klen + 1, etag, elen + 1);
	if (c->obj_n >= CACHE_TAB_LOAD * c->obj_nb)
		cache_obj_tab_grow(c);
	h = cache_str_hash(key) & (c->obj_nb - 1);
	o->hnext = c->obj_tab[h];
	c->obj_tab[h] = o;
	c->obj_n++;
	return o;
}

/* Removes o's file (its path derived again). */
static void cache_obj_unlink(cache *c, const struct cache_obj *o)
{
	char path[PATH_MAX];

	if (cache_obj_path(c, o->key, o->id, path))
		unlink(path);
}

/* Opens o's file; -errno on failure, logged unless `quiet` (the file of a
 * dropped object is gone already). */
static int cache_obj_open(cache *c, const struct cache_obj *o, bool quiet)
{
	char path[PATH_MAX];
	int fd;

	if (!cache_obj_path(c, o->key, o->id, path))
		return -errno;
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;

		if (!quiet)
			cache_log(c, CACHE_LOG_ERR, "cache: open %s: %s", path, strerror(err));
		return -err;
	}
	return fd;
}

/* Takes a reference; the first one opens the file. */
static int cache_obj_ref(cache *c, struct cache_obj *o)
{
	if (o->refs == 0 && o->fd < 0) {
		int fd = cache_obj_open(c, o, false);

		if (fd < 0)
			return fd;
		o->fd = fd;
	}
	o->refs++;
	return 0;
}

/* Records a new object.  With create_file, its (empty) file is created and
 * it comes with one reference; without, it has no reference and no file yet,
 * for the caller to rename one into place. */
int cache_obj_create(cache *c, const char *key, const char *etag, uint64_t size, bool create_file,
                     struct cache_obj **out)
{
	struct cache_obj *o;
	int64_t id;
	int rc;

	rc = cache_db_insert_obj(c, key, etag, size, &id);
	if (rc)
		return rc;
	o = cache_obj_new(c, key, etag, size, id, create_file);
	if (!o) {
		rc = -errno;
		goto fail;
	}
	if (create_file) {
		rc = cache_obj_ref(c, o);
		if (rc) {
			cache_obj_unhash(c, o);
			cache_obj_unlink(c, o);
			free(o);
			goto fail;
		}
	}
	*out = o;
	return 0;
fail:
	if (cache_db_delete_obj(c, id))
		cache_log(c, CACHE_LOG_WARNING, "cache: could not forget object %lld",
		          (long long)id);
	return rc;
}

/* Frees an object that has no blocks and no references; a live one is
 * forgotten by the index and its file removed. */
void cache_obj_free(cache *c, struct cache_obj *o)
{
	if (!o->dead) {
		cache_obj_unhash(c, o);
		if (cache_db_delete_obj(c, o->id))
			cache_log(c, CACHE_LOG_WARNING, "cache: could not forget %s", o->key);
		cache_obj_unlink(c, o);
	}
	if (o->fd >= 0)
		close(o->fd);
	c->cur_bytes -= o->meta_charge;
	free(o);
}

void cache_obj_put(cache *c, struct cache_obj *o)
{
	if (--o->refs > 0)
		return;
	if (o->dead || o->nblk == 0) {
		cache_obj_free(c, o);
		return;
	}
	/* Closed so that a large cache does not hold one descriptor per object. */
	if (o->fd >= 0)
		close(o->fd);
	o->fd = -1;
}

static void cache_blk_free(cache *c, struct cache_blk *b);

/* Discards an object's content: readers holding it finish their blocks, the
 * rest goes now. */
void cache_obj_drop(cache *c, struct cache_obj *o)
{
	struct cache_list *l, *next;

	cache_obj_unhash(c, o);
	o->dead = true;
	if (cache_db_delete_obj(c, o->id))
		cache_log(c, CACHE_LOG_WARNING, "cache: could not forget %s", o->key);
	cache_obj_unlink(c, o);
	for (l = o->blocks.next; l != &o->blocks; l = next) {
		struct cache_blk *b = cache_container_of(l, struct cache_blk, olink);

		next = l->next;
		if (b->state == BLK_PRESENT && b->pins == 0)
			cache_blk_free(c, b);
	}
	if (o->refs == 0)
		cache_obj_free(c, o);
}

enum cache_get_mode {
	CACHE_GET_READ,     /* create; another etag is discarded */
	CACHE_GET_PREFETCH, /* create; another etag is an error (ESTALE) */
	CACHE_GET_EXISTING, /* no create; another etag is an error (ENOENT) */
};

/* The object (key, etag, size) with a reference, or NULL with errno. */
static struct cache_obj *cache_obj_get(cache *c, const char *key, const char *etag, uint64_t size,
                                       enum cache_get_mode mode)
{
	struct cache_obj *o = cache_obj_lookup(c, key);
	int rc;

	if (o && (strcmp(cache_obj_etag(o), etag) != 0 || o->size != size)) {
		if (mode != CACHE_GET_READ) {
			errno = mode == CACHE_GET_PREFETCH ? ESTALE : ENOENT;
			return NULL;
		}
		cache_obj_drop(c, o);
		o = NULL;
	}
	if (o) {
		rc = cache_obj_ref(c, o);
		if (rc) {
			errno = -rc;
			return NULL;
		}
		return o;
	}
	if (mode == CACHE_GET_EXISTING) {
		errno = ENOENT;
		return NULL;
	}
	rc = cache_obj_create(c, key, etag, size, true, &o);
	if (rc) {
		errno = -rc;
		return NULL;
	}
	return o;
}

/* ---------------------------------------------------------------- blocks */

struct cache_blk *cache_blk_lookup(cache *c, const struct cache_obj *o, uint64_t idx)
{
	struct cache_blk *b = c->blk_tab[cache_blk_hash(o, idx) & (c->blk_nb - 1)];

	while (b && (b->obj != o || b->idx != idx))
		b = b->hnext;
	return b;
}

static void cache_blk_tab_grow(cache *c)
{
	size_t nb = c->blk_nb * 2;
	struct cache_blk **tab = calloc(nb, sizeof(*tab));

	if (!tab)
		return;
	for (size_t i = 0; i < c->blk_nb; i++) {
		struct cache_blk *b, *next;

		for (b = c->blk_tab[i]; b; b = next) {
			size_t h = cache_blk_hash(b->obj, b->idx) & (nb - 1);

			next = b->hnext;
			b->hnext = tab[h];
			tab[h] = b;
		}
	}
	free(c->blk_tab);
	c->blk_tab = tab;
	c->blk_nb = nb;
}

static void cache_blk_unhash(cache *c, struct cache_blk *b)
{
	struct cache_blk **pp = &c->blk_tab[cache_blk_hash(b->obj, b->idx) & (c->blk_nb - 1)];

	while (*pp && *pp != b)
		pp = &(*pp)->hnext;
	if (*pp) {
		*pp = b->hnext;
		c->blk_n--;
	}
	b->hnext = NULL;
}

/* A new block of o, hashed; its charge (cache_blk_charge) is counted in
 * c->cur_bytes by the caller; no pin, not in the LRU.  NULL with errno:
 * ENOMEM, or EFBIG for a block index beyond 2^32. */
struct cache_blk *cache_blk_add(cache *c, struct cache_obj *o, uint64_t idx,
                                enum cache_blk_state state)
{
	struct cache_blk *b;
	size_t h;

	if (idx > UINT32_MAX) {
		errno = EFBIG;
		return NULL;
	}
	b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->obj = o;
	b->idx = (uint32_t)idx;
	b->state = state;
	cache_list_init(&b->lru);
	cache_list_add_tail(&o->blocks, &b->olink);
	o->nblk++;
	if (c->blk_n >= CACHE_TAB_LOAD * c->blk_nb)
		cache_blk_tab_grow(c);
	h = cache_blk_hash(o, idx) & (c->blk_nb - 1);
	b->hnext = c->blk_tab[h];
	c->blk_tab[h] = b;
	c->blk_n++;
	return b;
}

/* Takes b out of every structure and returns its charge; the memory is the
 * caller's to free. */
static void cache_blk_detach(cache *c, struct cache_blk *b)
{
	cache_blk_unhash(c, b);
	cache_list_del(&b->lru);
	cache_list_del(&b->olink);
	b->obj->nblk--;
	c->cur_bytes -= cache_blk_charge(c, b);
}

/* Forgets an unpinned block without touching its data or its row. */
void cache_blk_discard(cache *c, struct cache_blk *b)
{
	cache_blk_detach(c, b);
	free(b);
}

/* Punches out a present, unpinned block whose row is gone (forgotten by
 * the caller, or its object is dead) and frees it. */
static void cache_blk_release(cache *c, struct cache_blk *b)
{
	struct cache_obj *o = b->obj;
	int fd = o->fd;

	if (fd < 0)
		fd = cache_obj_open(c, o, true);
	if (fd >= 0) {
		/* On failure the charge is still released: the cap may then be
		 * exceeded on disk until the object goes, which is logged. */
		(void)cache_punch(c, fd, b->idx * c->bs, c->bs);
		if (fd != o->fd)
			close(fd);
	}
	cache_blk_detach(c, b);
	free(b);
}

/* Removes a present, unpinned block of a dead object (its rows and its file
 * name are gone already). */
static void cache_blk_free(cache *c, struct cache_blk *b)
{
	cache_blk_release(c, b);
}

/* Stamps b as most recently used, to be saved with the next batch. */
void cache_blk_touch(cache *c, struct cache_blk *b)
{
	++c->seq;
	if (b->obj->dead)
		return;
	c->touched[c->ntouched].obj = b->obj->id;
	c->touched[c->ntouched].idx = b->idx;
	c->touched[c->ntouched].seq = c->seq;
	if (++c->ntouched >= CACHE_TOUCHED_MAX)
		cache_db_save_touched(c);
}

void cache_blk_unpin(cache *c, struct cache_blk *b)
{
	struct cache_obj *o = b->obj;

	if (--b->pins > 0)
		return;
	if (b->state == BLK_FAILED) {
		free(b);
		return;
	}
	if (o->dead) {
		cache_blk_free(c, b);
		return;
	}
	cache_blk_touch(c, b);
	cache_list_add(&c->lru, &b->lru);
}

/* Evicts the least recently used unpinned block: forgotten first, then
 * punched, so a crash in between leaves unrecorded data, which the next open
 * punches.  If the index cannot forget it (a full disk), the data must stay
 * while the row does: the whole object goes instead, its file unlinked, so
 * that the next open forgets the rows whose file is gone.  False when the LRU
 * is empty. */
static bool cache_evict_one(cache *c)
{
	struct cache_blk *b;
	struct cache_obj *o;
	uint64_t before = c->cur_bytes;

	if (cache_list_empty(&c->lru))
		return false;
	b = cache_container_of(c->lru.prev, struct cache_blk, lru);
	o = b->obj;
	if (cache_db_delete_blk(c, o->id, b->idx)) {
		cache_log(c, CACHE_LOG_WARNING,
		          "cache: could not forget a block of %s; dropping the object", o->key);
		cache_obj_drop(c, o); /* frees b, maybe o */
	} else {
		cache_blk_release(c, b);
		if (o->nblk == 0 && o->refs == 0)
			cache_obj_free(c, o);
	}
	c->st.evicted_bytes += before - c->cur_bytes;
	return true;
}

/* Free bytes on the cache's file system, or UINT64_MAX when unknown. */
static uint64_t cache_disk_avail(cache *c)
{
	struct statvfs sv;

	if (!c->reserve || statvfs(c->dir, &sv) < 0)
		return UINT64_MAX;
	return (uint64_t)sv.f_bavail * sv.f_frsize;
}

/* Evicts least recently used blocks until `need` more bytes fit under the
 * cap and on the disk: the disk keeps c->reserve free beyond the blocks
 * being fetched and `need`.  False when the unpinned blocks do not suffice. */
bool cache_evict_until(cache *c, uint64_t need)
{
	while (c->cur_bytes + need > c->cfg.size)
		if (!cache_evict_one(c))
			return false;
	if (!c->reserve)
		return true;
	for (;;) {
		uint64_t avail = cache_disk_avail(c);

		if (avail == UINT64_MAX || avail >= c->fetching_bytes + need + c->reserve)
			return true;
		if (!cache_evict_one(c))
			return false;
	}
}

/* See cache_make_room(); c->lock held. */
int cache_make_room_locked(cache *c, uint64_t bytes)
{
	uint64_t avail = cache_disk_avail(c), freed = 0;

	/* At least `bytes` of content even when statvfs shows room (a quota,
	 * or space taken meanwhile), then on to the reserve. */
	while (freed < bytes || avail < bytes + c->reserve) {
		uint64_t before = c->cur_bytes;

		if (!cache_evict_one(c))
			break;
		freed += before - c->cur_bytes;
		avail = cache_disk_avail(c);
	}
	return freed >= bytes && avail >= bytes ? 0 : -ENOSPC;
}

int cache_make_room(cache *c, uint64_t bytes)
{
	int rc;

	pthread_mutex_lock(&c->lock);
	rc = cache_make_room_locked(c, bytes);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

enum cache_acq {
	CACHE_ACQ_HIT = 1, /* present, pinned */
	CACHE_ACQ_FETCH,   /* reserved and pinned: the caller fills it */
	CACHE_ACQ_NOROOM,  /* everything evictable is gone: stream */
	CACHE_ACQ_BUSY,    /* present or fetching, and the caller won't wait */
};

/* Pins block idx of o, reserving it if absent.  With `wait`, a block being
 * fetched by someone else is waited for; its failure is returned as a
 * negative errno.  Called and returns with c->lock held. */
static int cache_blk_acquire(cache *c, struct cache_obj *o, uint64_t idx, bool wait,
                             struct cache_blk **out)
{
	struct cache_blk *b = cache_blk_lookup(c, o, idx);
	uint64_t data, meta, extra;

	if (b) {
		if (b->state == BLK_PRESENT && wait) {
			b->pins++;
			cache_list_del(&b->lru);
			*out = b;
			return CACHE_ACQ_HIT;
		}
		if (!wait)
			return CACHE_ACQ_BUSY;
		b->pins++;
		while (b->state == BLK_FETCHING)
			pthread_cond_wait(&c->cond, &c->lock);
		if (b->state == BLK_PRESENT) {
			*out = b;
			return CACHE_ACQ_HIT;
		}
		{
			int err = b->err;

			cache_blk_unpin(c, b);
			return err;
		}
	}

	data = cache_round_up(cache_blk_len(o, c->bs, idx));
	meta = cache_meta_for(o->nblk + 1);
	extra = meta > o->meta_charge ? meta - o->meta_charge : 0;
	if (data + extra > c->cfg.size || !cache_evict_until(c, data + extra))
		return CACHE_ACQ_NOROOM;
	b = cache_blk_add(c, o, idx, BLK_FETCHING);
	if (!b)
		return errno == EFBIG ? CACHE_ACQ_NOROOM : -ENOMEM;
	o->meta_charge += extra;
	c->cur_bytes += data + extra;
	c->fetching_bytes += data;
	b->pins = 1;
	*out = b;
	return CACHE_ACQ_FETCH;
}

/* Writes the block's bytes into o's file (from `data`, or else the fetch
 * callback) and syncs them.  Called without c->lock. */
static int cache_blk_write(cache *c, struct cache_obj *o, uint64_t off, uint64_t len,
                           const void *data)
{
	int rc = 0;

	if (data) {
		const char *p = data;
		uint64_t done = 0;

		while (done < len) {
			ssize_t n = pwrite(o->fd, p + done, len - done, (off_t)(off + done));

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				rc = n < 0 ? -errno : -EIO;
				break;
			}
			done += (uint64_t)n;
		}
	} else {
		rc = c->cfg.fetch(c->cfg.fetch_ctx, o->key, cache_obj_etag(o), off, len, o->fd, off,
		                  NULL);
		if (rc > 0)
			rc = -EIO; /* not part of the contract */
	}
	if (!rc && !c->cfg.no_sync && fdatasync(o->fd) < 0)
		rc = -errno;
	return rc;
}

/* Fills a reserved block (from `data`, or else the fetch callback), syncs
 * it, records it and wakes its waiters.  Called without c->lock; b stays
 * pinned either way.  A full disk (writing the data, or recording it) makes
 * room by evicting and tries once more; if that fails too, the block fails
 * with -ENOSPC, which readers answer by streaming.  Returns 0 or -errno (b
 * is then BLK_FAILED). */
static int cache_blk_fill(cache *c, struct cache_blk *b, const void *data)
{
	struct cache_obj *o = b->obj;
	uint64_t off = b->idx * c->bs, len = cache_blk_len(o, c->bs, b->idx);
	int rc;

	for (int attempt = 0;; attempt++) {
		bool retry;

		rc = cache_blk_write(c, o, off, len, data);
		if (!cache_nospace(rc) || attempt > 0)
			break;
		pthread_mutex_lock(&c->lock);
		/* What was written must not count as present, and its space
		 * is needed. */
		(void)cache_punch(c, o->fd, off, c->bs);
		retry = cache_make_room_locked(c, cache_round_up(len)) == 0;
		pthread_mutex_unlock(&c->lock);
		if (!retry)
			break;
		cache_log(c, CACHE_LOG_INFO, "cache: disk full; evicted to fit a block of %s",
		          o->key);
	}

	pthread_mutex_lock(&c->lock);
	c->fetching_bytes -= cache_blk_charge(c, b);
	if (!rc && !o->dead) {
		int r = cache_db_insert_blk(c, o->id, b->idx, c->seq + 1);

		if (cache_nospace(r) && cache_make_room_locked(c, 0) == 0)
			r = cache_db_insert_blk(c, o->id, b->idx, c->seq + 1);
		if (cache_nospace(r)) {
			/* Not recorded, and the disk is full: give the
			 * space back rather than keep unrecorded data. */
			rc = r;
		} else if (r) {
			cache_log(c, CACHE_LOG_WARNING,
			          "cache: could not record a block of %s; it will be refetched "
			          "after a restart",
			          o->key);
		}
	}
	if (rc) {
		/* Under the lock, so no new fetch of this block can start
		 * writing before the partial data is gone. */
		(void)cache_punch(c, o->fd, off, c->bs);
		cache_blk_detach(c, b);
		b->state = BLK_FAILED;
		b->err = rc;
		if (cache_nospace(rc))
			cache_log(c, CACHE_LOG_INFO,
			          "cache: disk full; a block of %s is not cached", o->key);
		else
			c->st.fetch_errors += !data;
	} else {
		b->state = BLK_PRESENT;
		if (!data)
			c->st.miss_bytes += len;
	}
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

static int cache_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO; /* a present block is never short */
		done += (size_t)n;
	}
	return 0;
}

/* No room in the cache (or on its disk): fetch just the bytes asked for
 * into memory. */
static int cache_stream(cache *c, const char *key, const char *etag, uint64_t off, size_t len,
                        void *buf)
{
	int fd = memfd_create("bucketfs-stream", MFD_CLOEXEC);
	int rc;

	if (fd < 0)
		return -errno;
	rc = c->cfg.fetch(c->cfg.fetch_ctx, key, etag, off, len, fd, 0, NULL);
	if (rc > 0)
		rc = -EIO;
	if (!rc)
		rc = cache_pread_full(fd, buf, len, 0);
	close(fd);
	pthread_mutex_lock(&c->lock);
	if (rc) {
		c->st.fetch_errors++;
	} else {
		c->st.miss_bytes += len;
		c->st.stream_bytes += len;
	}
	pthread_mutex_unlock(&c->lock);
	return rc;
}

/* Serves [off, off + len), which lies within block idx of o. */
static int cache_read_block(cache *c, struct cache_obj *o, uint64_t idx, uint64_t off, size_t len,
                            void *buf)
{
	struct cache_blk *b = NULL;
	int rc;

	pthread_mutex_lock(&c->lock);
	rc = cache_blk_acquire(c, o, idx, true, &b);
	if (rc == CACHE_ACQ_HIT)
		c->st.hit_bytes += len;
	pthread_mutex_unlock(&c->lock);
	/* No room, or the disk filled up under the fetch (ours or the one we
	 * waited for): serve the read without caching. */
	if (rc == CACHE_ACQ_NOROOM || cache_nospace(rc))
		return cache_stream(c, o->key, cache_obj_etag(o), off, len, buf);
	if (rc < 0)
		return rc;
	if (rc == CACHE_ACQ_FETCH)
		rc = cache_blk_fill(c, b, NULL);
	else
		rc = 0;
	if (!rc)
		rc = cache_pread_full(o->fd, buf, len, off);
	pthread_mutex_lock(&c->lock);
	cache_blk_unpin(c, b);
	pthread_mutex_unlock(&c->lock);
	if (cache_nospace(rc))
		return cache_stream(c, o->key, cache_obj_etag(o), off, len, buf);
	return rc;
}

/* A run: contiguous blocks of one object fetched with one request.  The
 * fetcher holds a pin on each block until it is recorded or failed.  A block
 * goes through three steps: written (its bytes are in the file: it becomes
 * BLK_PRESENT and its waiters are woken, but it stays pinned), recorded
 * (synced and in the index: unpinned, in the LRU), or failed. */
struct cache_progress {
	cache *c;
	struct cache_obj *o;
	struct cache_blk **blk; /* the run's blocks, consecutive indexes */
	unsigned n;
	unsigned ready; /* blocks written: [0, ready) are BLK_PRESENT */
	unsigned done;  /* blocks recorded and unpinned */
	int err;        /* a failed sync: the object was dropped */
	bool prefetch;
};

/* Blocks [p->ready, k) are written: serve them. */
static void cache_run_ready(struct cache_progress *p, unsigned k)
{
	cache *c = p->c;

	if (k <= p->ready)
		return;
	pthread_mutex_lock(&c->lock);
	for (; p->ready < k; p->ready++) {
		struct cache_blk *b = p->blk[p->ready];

		c->fetching_bytes -= cache_blk_charge(c, b);
		b->state = BLK_PRESENT;
		c->st.miss_bytes += cache_blk_len(p->o, c->bs, b->idx);
		if (p->prefetch)
			c->st.prefetch_count++;
	}
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

/* Syncs and records the written blocks [p->done, p->ready) and unpins them.
 * If the sync fails, the data may not reach the disk, yet readers may have
 * pinned the blocks: the whole object is dropped (its file unlinked; readers
 * in the middle of a block finish it from the page cache, later ones fetch
 * again into a new file) rather than punched under them.  A row that cannot
 * be written leaves its block unrecorded: fetched again after a restart. */
static void cache_run_record(struct cache_progress *p)
{
	cache *c = p->c;
	struct cache_obj *o = p->o;

	if (p->done >= p->ready)
		return;
	if (!p->err && !c->cfg.no_sync && fdatasync(o->fd) < 0)
		p->err = -errno;
	pthread_mutex_lock(&c->lock);
	if (p->err && !o->dead) {
		cache_log(c, CACHE_LOG_WARNING,
		          "cache: syncing %s: %s; dropping its cached content", o->key,
		          strerror(-p->err));
		cache_obj_drop(c, o);
	}
	for (; p->done < p->ready; p->done++) {
		struct cache_blk *b = p->blk[p->done];

		if (!o->dead) {
			int r = cache_db_insert_blk(c, o->id, b->idx, c->seq + 1);

			if (cache_nospace(r) && cache_make_room_locked(c, 0) == 0)
				r = cache_db_insert_blk(c, o->id, b->idx, c->seq + 1);
			if (r)
				cache_log(c, CACHE_LOG_WARNING,
				          "cache: could not record a block of %s (%s); it will be "
				          "refetched after a restart",
				          o->key, strerror(-r));
		}
		cache_blk_unpin(c, b);
	}
	pthread_mutex_unlock(&c->lock);
}

/* Fails the blocks of a run not written: their data is punched out (under
 * the lock, so no new fetch of them starts writing first) and their waiters
 * get rc. */
static void cache_run_fail(struct cache_progress *p, int rc)
{
	cache *c = p->c;
	struct cache_obj *o = p->o;

	if (p->ready >= p->n)
		return;
	pthread_mutex_lock(&c->lock);
	(void)cache_punch(c, o->fd, p->blk[p->ready]->idx * c->bs,
	                  (uint64_t)(p->n - p->ready) * c->bs);
	for (unsigned i = p->ready; i < p->n; i++) {
		struct cache_blk *b = p->blk[i];

		c->fetching_bytes -= cache_blk_charge(c, b);
		cache_blk_detach(c, b);
		b->state = BLK_FAILED;
		b->err = rc;
		cache_blk_unpin(c, b);
	}
	p->ready = p->done = p->n;
	if (cache_nospace(rc)) {
		(void)cache_make_room_locked(c, 0);
		cache_log(c, CACHE_LOG_INFO, "cache: disk full; blocks of %s are not cached",
		          o->key);
	} else {
		c->st.fetch_errors++;
	}
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

/* Written blocks synced and recorded at a time: fewer syncs. */
#define CACHE_RECORD_BATCH 8

int cache_fetch_progress(cache_progress *p, uint64_t done)
{
	cache *c = p->c;
	uint64_t first = p->blk[0]->idx, end = first * c->bs + done, k;

	if (end >= p->o->size)
		k = p->n;
	else
		k = end / c->bs - first;
	if (k > p->n)
		k = p->n;
	cache_run_ready(p, (unsigned)k);
	if (p->ready - p->done >= CACHE_RECORD_BATCH)
		cache_run_record(p);
	return p->err;
}

/* Fetches the missing blocks among [idx, idx + n) of o: each stretch of
 * contiguous missing blocks with one request, skipping blocks present or
 * being fetched.  Stops where a block finds no room (prefetch never
 * streams).  Returns 0 or the first error; o is referenced by the caller. */
int cache_fetch_run(cache *c, struct cache_obj *o, uint64_t idx, unsigned n, bool prefetch)
{
	uint64_t end = idx + n, nb = cache_nblocks(o->size, c->bs);
	struct cache_blk **blk;
	int rc = 0;

	if (end > nb)
		end = nb;
	if (idx >= end)
		return 0;
	blk = calloc(end - idx, sizeof(*blk));
	if (!blk)
		return -ENOMEM;
	while (idx < end) {
		struct cache_progress p = {.c = c, .o = o, .blk = blk, .prefetch = prefetch};
		uint64_t off, len;
		int acq = 0;

		pthread_mutex_lock(&c->lock);
		while (idx < end && cache_blk_lookup(c, o, idx))
			idx++;
		while (idx + p.n < end) {
			struct cache_blk *b = NULL;

			acq = cache_blk_acquire(c, o, idx + p.n, false, &b);
			if (acq != CACHE_ACQ_FETCH)
				break;
			blk[p.n++] = b;
		}
		pthread_mutex_unlock(&c->lock);
		if (p.n == 0)
			break; /* the end, no room, or ENOMEM */
		off = idx * c->bs;
		len = (idx + p.n) * c->bs < o->size ? p.n * c->bs : o->size - off;
		rc = c->cfg.fetch(c->cfg.fetch_ctx, o->key, cache_obj_etag(o), off, len, o->fd, off,
		                  &p);
		if (rc > 0)
			rc = -EIO; /* not part of the contract */
		if (!rc)
			cache_run_ready(&p, p.n);
		/* What was written is kept, even when the rest failed. */
		cache_run_record(&p);
		if (!rc)
			rc = p.err;
		if (rc)
			cache_run_fail(&p, rc);
		idx += p.n;
		if (rc || acq == CACHE_ACQ_NOROOM || acq < 0)
			break;
	}
	free(blk);
	return rc;
}

/* Pins block idx of o if it is present, without waiting or fetching. */
struct cache_blk *cache_blk_pin_present(cache *c, struct cache_obj *o, uint64_t idx)
{
	struct cache_blk *b = cache_blk_lookup(c, o, idx);

	if (!b || b->state != BLK_PRESENT)
		return NULL;
	b->pins++;
	cache_list_del(&b->lru);
	return b;
}

struct cache_obj *cache_obj_get_existing(cache *c, const char *key, const char *etag, uint64_t size)
{
	return cache_obj_get(c, key, etag, size, CACHE_GET_EXISTING);
}

struct cache_obj *cache_obj_get_prefetch(cache *c, const char *key, const char *etag, uint64_t size)
{
	return cache_obj_get(c, key, etag, size, CACHE_GET_PREFETCH);
}

/* ---------------------------------------------------------------- API */

ssize_t cache_read_common(cache *c, cache_reader *r, const char *key, const char *etag,
                          uint64_t size, uint64_t off, size_t len, void *buf)
{
	struct cache_obj *o;
	size_t done = 0;
	int rc = 0;

	if (off >= size || len == 0)
		return 0;
	if (len > size - off)
		len = size - off;
	if (len > SSIZE_MAX)
		len = SSIZE_MAX;

	pthread_mutex_lock(&c->lock);
	o = cache_obj_get(c, key, etag, size, CACHE_GET_READ);
	rc = o ? 0 : -errno;
	if (cache_nospace(rc) && cache_make_room_locked(c, 0) == 0) {
		o = cache_obj_get(c, key, etag, size, CACHE_GET_READ);
		rc = o ? 0 : -errno;
	}
	if (!o) {
		pthread_mutex_unlock(&c->lock);
		/* The index (or the object's file) cannot be written: the
		 * disk is full and nothing is left to evict. */
		if (cache_nospace(rc))
			rc = cache_stream(c, key, etag, off, len, buf);
		return rc ? rc : (ssize_t)len;
	}
	if (r)
		cache_reader_schedule(r, o, off, len);
	pthread_mutex_unlock(&c->lock);

	while (done < len) {
		uint64_t pos = off + done, idx = pos / c->bs;
		uint64_t part = (idx + 1) * c->bs - pos;

		if (part > len - done)
			part = len - done;
		if (r) {
			pthread_mutex_lock(&c->lock);
			if (r->queued && !r->closing && !cache_blk_lookup(c, o, idx))
				cache_reader_take_run(r, o, idx);
			pthread_mutex_unlock(&c->lock);
		}
		rc = cache_read_block(c, o, idx, pos, (size_t)part, (char *)buf + done);
		if (rc)
			break;
		done += part;
	}

	pthread_mutex_lock(&c->lock);
	cache_obj_put(c, o);
	pthread_mutex_unlock(&c->lock);
	/* All or nothing: FUSE takes a short read for the end of the file. */
	return rc ? rc : (ssize_t)done;
}

ssize_t cache_read(cache *c, const char *key, const char *etag, uint64_t size, uint64_t off,
                   size_t len, void *buf)
{
	return cache_read_common(c, NULL, key, etag, size, off, len, buf);
}

int cache_put(cache *c, const char *key, const char *etag, uint64_t size, uint64_t off,
              const void *data, size_t len)
{
	struct cache_obj *o;
	uint64_t end = off + len, idx;
	int rc = 0;

	if (end > size)
		end = size;
	pthread_mutex_lock(&c->lock);
	o = cache_obj_get(c, key, etag, size, CACHE_GET_READ);
	if (!o) {
		rc = -errno;
		pthread_mutex_unlock(&c->lock);
		return cache_nospace(rc) ? 0 : rc; /* no room: nothing stored */
	}
	for (idx = (off + c->bs - 1) / c->bs; idx * c->bs < end; idx++) {
		uint64_t start = idx * c->bs, blen = cache_blk_len(o, c->bs, idx);
		struct cache_blk *b = NULL;

		if (start + blen > end)
			break;
		rc = cache_blk_acquire(c, o, idx, false, &b);
		if (rc < 0)
			break;
		rc = 0;
		if (!b)
			continue; /* cached already, or no room */
		pthread_mutex_unlock(&c->lock);
		rc = cache_blk_fill(c, b, (const char *)data + (start - off));
		pthread_mutex_lock(&c->lock);
		cache_blk_unpin(c, b);
		if (cache_nospace(rc)) {
			rc = 0; /* no room on the disk: the rest is skipped */
			break;
		}
		if (rc)
			break;
	}
	cache_obj_put(c, o);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

void cache_invalidate(cache *c, const char *key)
{
	struct cache_obj *o;

	pthread_mutex_lock(&c->lock);
	o = cache_obj_lookup(c, key);
	if (o)
		cache_obj_drop(c, o);
	pthread_mutex_unlock(&c->lock);
}

void cache_get_stats(cache *c, cache_stats *out)
{
	uint64_t dirty = cache_dirty_bytes(c);

	pthread_mutex_lock(&c->lock);
	*out = c->st;
	out->current_bytes = c->cur_bytes;
	out->cap_bytes = c->cfg.size;
	pthread_mutex_unlock(&c->lock);
	out->dirty_bytes = dirty;
}

/* ---------------------------------------------------------------- open/close */

static int cache_mkdir(const char *path)
{
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Punching is what keeps the cap honest; refuse a file system without it. */
static int cache_probe_punch(cache *c)
{
	char *path;
	int fd, rc = 0;
	static const char zero[4096];

	if (asprintf(&path, "%s/.probe", c->objdir) < 0)
		return -ENOMEM;
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		goto out;
	}
	if (pwrite(fd, zero, sizeof(zero), 0) != (ssize_t)sizeof(zero))
		rc = -EIO;
	else if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, sizeof(zero)) < 0)
		rc = -errno;
	close(fd);
	unlink(path);
out:
	free(path);
	return rc;
}

static void cache_destroy(cache *c)
{
	if (c->obj_tab) {
		for (size_t i = 0; i < c->obj_nb; i++) {
			struct cache_obj *o, *next;

			for (o = c->obj_tab[i]; o; o = next) {
				struct cache_list *l, *ln;

				next = o->hnext;
				for (l = o->blocks.next; l != &o->blocks; l = ln) {
					ln = l->next;
					free(cache_container_of(l, struct cache_blk, olink));
				}
				if (o->fd >= 0)
					close(o->fd);
				free(o);
			}
		}
	}
	cache_stage_free_all(c);
	cache_db_close(c);
	free(c->obj_tab);
	free(c->blk_tab);
	free(c->touched);
	pthread_cond_destroy(&c->pool_cond);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
	if (c->lockfd >= 0)
		close(c->lockfd);
	free(c->dir);
	free(c->objdir);
	free(c->stagedir);
	free(c);
}

int cache_open(const cache_config *cfg, cache **out)
{
	cache *c;
	char *lockpath = NULL;
	int rc;

	if (!cfg || !cfg->dir || !cfg->fetch || cfg->block_size % CACHE_FS_BLOCK)
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->cfg = *cfg;
	c->lockfd = -1;
	if (!c->cfg.size)
		c->cfg.size = 1ULL << 30;
	if (!c->cfg.block_size)
		c->cfg.block_size = 1U << 20;
	if (!c->cfg.prefetch_window)
		c->cfg.prefetch_window = 64;
	if (!c->cfg.prefetch_parallel)
		c->cfg.prefetch_parallel = 4;
	if (!c->cfg.prefetch_threads)
		c->cfg.prefetch_threads = 4;
	c->bs = c->cfg.block_size;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	pthread_cond_init(&c->pool_cond, NULL);
	cache_list_init(&c->lru);
	cache_list_init(&c->queue);
	cache_list_init(&c->stages);
	c->obj_nb = c->blk_nb = 64;
	c->obj_tab = calloc(c->obj_nb, sizeof(*c->obj_tab));
	c->touched = calloc(CACHE_TOUCHED_MAX, sizeof(*c->touched));
	c->blk_tab = calloc(c->blk_nb, sizeof(*c->blk_tab));
	c->dir = strdup(cfg->dir);
	if (!c->obj_tab || !c->blk_tab || !c->touched || !c->dir ||
	    asprintf(&c->objdir, "%s/objects", cfg->dir) < 0 ||
	    asprintf(&c->stagedir, "%s/staging", cfg->dir) < 0 ||
	    asprintf(&lockpath, "%s/lock", cfg->dir) < 0) {
		rc = -ENOMEM;
		goto fail;
	}
	c->cfg.dir = c->dir;
	rc = cache_mkdir(c->dir);
	if (!rc)
		rc = cache_mkdir(c->objdir);
	if (!rc)
		rc = cache_mkdir(c->stagedir);
	if (rc)
		goto fail;

	c->lockfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (c->lockfd < 0) {
		rc = -errno;
		goto fail;
	}
	if (flock(c->lockfd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		goto fail;
	}
	rc = cache_probe_punch(c);
	if (rc)
		goto fail;
	{
		struct statvfs sv;

		if (statvfs(c->dir, &sv) == 0 && sv.f_frsize) {
			uint64_t total = (uint64_t)sv.f_blocks * sv.f_frsize;

			c->reserve = total / 100 > CACHE_DISK_RESERVE_MIN ? total / 100
			                                                  : CACHE_DISK_RESERVE_MIN;
		}
	}
	rc = cache_db_open(c);
	if (rc)
		goto fail;
	pthread_mutex_lock(&c->lock);
	rc = cache_db_load(c);
	if (!rc)
		rc = cache_stage_load(c);
	if (!rc)
		cache_evict_until(c, 0);
	pthread_mutex_unlock(&c->lock);
	if (rc)
		goto fail;
	rc = cache_pool_start(c);
	if (rc)
		goto fail;
	free(lockpath);
	*out = c;
	return 0;
fail:
	free(lockpath);
	cache_destroy(c);
	return rc;
}

void cache_close(cache *c)
{
	if (!c)
		return;
	cache_pool_stop(c);
	pthread_mutex_lock(&c->lock);
	cache_db_save_touched(c);
	pthread_mutex_unlock(&c->lock);
	cache_destroy(c);
}
