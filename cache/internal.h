/*
 * internal.h - interfaces between the files of cache/.  Not part of the
 * public API: nothing outside cache/ includes it.
 *
 *   cache.c   open/close, objects, blocks, the cap and eviction, reads, put
 *   db.c      the SQLite index: schema, statements, load and reconcile
 *   reader.c  cache_reader and the prefetch worker pool
 *   stage.c   write staging
 *
 * Locking: one mutex, c->lock, guards every in-memory structure below and
 * the database connection.  It is never held across a fetch callback, a
 * fdatasync or a copy of block data; it is held across small local file
 * system calls that must not interleave with a fetch of the same range
 * (punching a hole, creating or renaming a file).  c->cond is broadcast
 * whenever a block leaves BLK_FETCHING, a prefetch ends or a staging fill
 * ends.
 *
 * Lifetimes: an object is kept alive by its references (every caller that
 * works on it holds one, and every pin of one of its blocks implies one) and
 * by its blocks.  A block is kept alive by its pins or, when present and
 * unpinned, by the LRU list.
 */
#ifndef BUCKETFS_CACHE_INTERNAL_H
#define BUCKETFS_CACHE_INTERNAL_H

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>

#include "cache.h"

#define CACHE_FS_BLOCK 4096ULL

/* Circular doubly-linked intrusive list; an unlinked node points to itself. */
struct cache_list {
	struct cache_list *prev, *next;
};

#define cache_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static inline void cache_list_init(struct cache_list *l)
{
	l->prev = l->next = l;
}

static inline bool cache_list_empty(const struct cache_list *l)
{
	return l->next == l;
}

/* Inserts n after head: at the front. */
static inline void cache_list_add(struct cache_list *head, struct cache_list *n)
{
	n->next = head->next;
	n->prev = head;
	head->next->prev = n;
	head->next = n;
}

static inline void cache_list_add_tail(struct cache_list *head, struct cache_list *n)
{
	cache_list_add(head->prev, n);
}

static inline void cache_list_del(struct cache_list *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	cache_list_init(n);
}

enum cache_blk_state {
	BLK_FETCHING, /* reserved, the fetcher holds a pin */
	BLK_PRESENT,  /* data written, synced and (unless obj->dead) recorded */
	BLK_FAILED,   /* fetch failed; unhashed, freed by the last unpin */
};

struct cache_obj;

/* One block in memory, 56 bytes: a cache of many small objects holds one of
 * these, and one cache_obj, per object.  Its charge (its length rounded up
 * to 4 KiB) is derived, not stored: cache_blk_charge().  Its LRU stamp is
 * not kept either: the LRU list is the order, and the stamps to save wait in
 * c->touched. */
struct cache_blk {
	struct cache_blk *hnext; /* chain in c->blk_tab */
	struct cache_obj *obj;
	union {
		struct cache_list lru; /* in c->lru iff present, unpinned, !obj->dead */
		int err;               /* BLK_FAILED (out of every list): the error */
	};
	struct cache_list olink; /* in obj->blocks */
	uint32_t idx;            /* < 2^32: 5 TiB objects in 4 KiB blocks fit */
	unsigned pins : 30;
	unsigned state : 2; /* enum cache_blk_state */
};

/* One object in memory, in one allocation: key and etag are stored inline
 * (key, NUL, etag, NUL) and the file's path is derived from the key's hash
 * and the id when needed (cache_obj_path), not kept. */
struct cache_obj {
	struct cache_obj *hnext; /* chain in c->obj_tab, unless dead */
	struct cache_list blocks;
	uint64_t size;
	int64_t id;           /* row in the index */
	uint64_t meta_charge; /* extent-tree allowance, only grows */
	uint32_t nblk;        /* blocks in `blocks` */
	int fd;
	int refs;
	uint16_t klen; /* strlen(key); S3 keys are at most 1024 bytes */
	bool dead;     /* dropped: unhashed, no rows, file unlinked */
	char key[];    /* key, then etag: cache_obj_etag() */
};

static inline const char *cache_obj_etag(const struct cache_obj *o)
{
	return o->key + o->klen + 1;
}

struct cache_reader {
	cache *c;
	char *key;
	char *etag;
	uint64_t size;
	struct cache_obj *obj; /* a reference that keeps the file open, or NULL */
	bool has_prev;
	uint64_t next_off;         /* where the reads so far end */
	size_t max_len;            /* the largest read */
	unsigned run;              /* reads in a row that continued the previous */
	uint64_t pf_next;          /* first block not yet requested by prefetch */
	unsigned win;              /* read-ahead window in blocks; 0: not sequential */
	unsigned queued, inflight; /* prefetch tasks */
	bool closing;
};

/* An LRU stamp to save: (object row, block, stamp).  A block touched twice
 * has two entries, saved in order; an entry whose row is gone updates
 * nothing. */
struct cache_touch {
	int64_t obj;
	uint64_t idx;
	uint64_t seq;
};

/* How many LRU stamps may wait in memory before they are saved. */
#define CACHE_TOUCHED_MAX 4096

struct cache_task {
	struct cache_list link; /* in c->queue */
	cache_reader *r;
	uint64_t idx; /* first block of the run */
	unsigned n;   /* blocks */
};

struct cache_stage {
	struct cache_list link;
	char *key;
	char *path;
	bool filling;
};

struct cache {
	cache_config cfg; /* cfg.dir points to dir */
	char *dir;
	char *objdir;
	char *stagedir;
	int lockfd;
	uint64_t bs;

	pthread_mutex_t lock;
	pthread_cond_t cond;

	sqlite3 *db;
	sqlite3_stmt *st_ins_obj, *st_del_obj, *st_del_obj_blocks, *st_ins_blk, *st_del_blk,
	        *st_upd_seq, *st_ins_stage, *st_del_stage;

	struct cache_obj **obj_tab;
	size_t obj_nb, obj_n;
	struct cache_blk **blk_tab;
	size_t blk_nb, blk_n;

	struct cache_list lru;       /* front: most recent */
	struct cache_touch *touched; /* LRU stamps not yet saved, in order */
	size_t ntouched;
	uint64_t seq;

	uint64_t cur_bytes;
	uint64_t fetching_bytes; /* charge of BLK_FETCHING blocks: reserved, not
	                            yet (all) on disk */
	uint64_t reserve;        /* disk space kept free; 0: no statvfs */
	cache_stats st;

	/* prefetch pool */
	pthread_t *threads;
	unsigned nthreads;
	pthread_cond_t pool_cond;
	struct cache_list queue;
	bool stopping;

	struct cache_list stages;
};

/* cache.c */
void cache_log(cache *c, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
uint64_t cache_blk_len(const struct cache_obj *o, uint64_t bs, uint64_t idx);
uint64_t cache_nblocks(uint64_t size, uint64_t bs);
uint64_t cache_meta_for(uint64_t nblk);
void cache_key_hash(const char *key, char hex[65]);
/* The path of object `id` of `key`'s file into path[PATH_MAX]; false (with
 * ENAMETOOLONG) if it does not fit. */
bool cache_obj_path(cache *c, const char *key, int64_t id, char *path);
/* Creates the fan-out directory of such a path; 0 or -errno. */
int cache_obj_mkdir(char *path);
uint64_t cache_blk_charge(cache *c, const struct cache_blk *b);
struct cache_obj *cache_obj_lookup(cache *c, const char *key);
struct cache_obj *cache_obj_new(cache *c, const char *key, const char *etag, uint64_t size,
                                int64_t id, bool create_file);
int cache_obj_create(cache *c, const char *key, const char *etag, uint64_t size, bool create_file,
                     struct cache_obj **out);
void cache_obj_drop(cache *c, struct cache_obj *o);
void cache_obj_put(cache *c, struct cache_obj *o);
void cache_obj_free(cache *c, struct cache_obj *o);
struct cache_obj *cache_obj_get_existing(cache *c, const char *key, const char *etag,
                                         uint64_t size);
struct cache_obj *cache_obj_get_prefetch(cache *c, const char *key, const char *etag,
                                         uint64_t size);
struct cache_blk *cache_blk_pin_present(cache *c, struct cache_obj *o, uint64_t idx);
ssize_t cache_read_common(cache *c, cache_reader *r, const char *key, const char *etag,
                          uint64_t size, uint64_t off, size_t len, void *buf);
struct cache_blk *cache_blk_lookup(cache *c, const struct cache_obj *o, uint64_t idx);
struct cache_blk *cache_blk_add(cache *c, struct cache_obj *o, uint64_t idx,
                                enum cache_blk_state state);
void cache_blk_discard(cache *c, struct cache_blk *b);
void cache_blk_touch(cache *c, struct cache_blk *b);
void cache_blk_unpin(cache *c, struct cache_blk *b);
int cache_punch(cache *c, int fd, uint64_t off, uint64_t len);
bool cache_evict_until(cache *c, uint64_t need);
int cache_make_room_locked(cache *c, uint64_t bytes);

/* An error that means the cache's disk (or quota) is full. */
static inline bool cache_nospace(int rc)
{
	return rc == -ENOSPC || rc == -EDQUOT;
}
int cache_fetch_run(cache *c, struct cache_obj *o, uint64_t idx, unsigned n, bool prefetch);

/* db.c */
int cache_db_open(cache *c);
void cache_db_close(cache *c);
int cache_db_exec(cache *c, const char *sql);
int cache_db_insert_obj(cache *c, const char *key, const char *etag, uint64_t size, int64_t *id);
int cache_db_delete_obj(cache *c, int64_t id);
int cache_db_insert_blk(cache *c, int64_t obj, uint64_t idx, uint64_t seq);
int cache_db_delete_blk(cache *c, int64_t obj, uint64_t idx);
int cache_db_insert_stage(cache *c, const char *key, const char *file);
int cache_db_delete_stage(cache *c, const char *key);
void cache_db_save_touched(cache *c);
int cache_db_load(cache *c);

/* reader.c */
int cache_pool_start(cache *c);
void cache_reader_schedule(cache_reader *r, struct cache_obj *o, uint64_t off, size_t len);
void cache_reader_take_run(cache_reader *r, struct cache_obj *o, uint64_t idx);
void cache_pool_stop(cache *c);

/* stage.c */
int cache_stage_load(cache *c);
void cache_stage_free_all(cache *c);

#endif
