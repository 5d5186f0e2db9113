/*
 * cache.h - file contents on local disk.
 *
 * The cache keeps ranges of S3 objects in local files so that reads cost no
 * requests the second time, and stages files being written until they are
 * uploaded.  It does no network I/O itself: every byte it does not have comes
 * from the caller's fetch callback (a ranged GET with If-Match in bucketfs).
 *
 * Invariants
 *  - An object is identified by (key, etag, size).  Content is only ever
 *    served for the etag it was fetched with: reading a key with another etag
 *    or size first discards everything cached for the key.
 *  - A block is recorded as present in the index only after its data has
 *    been written and fdatasync'ed; it is forgotten in the index before its
 *    data is punched out.  A block of a read-ahead run is served (from the
 *    page cache) as soon as its bytes are written, and stays pinned until it
 *    is synced and recorded; if that sync fails, the object's content is
 *    dropped.  After a crash (kill -9, power loss) the
 *    cache may forget blocks but never serves bytes that were not fetched for
 *    that etag: at open, data the index does not know is punched out.
 *  - `size` in cache_config is a hard cap on the disk space of cached (clean)
 *    content: a block is reserved against the cap, evicting the least recently
 *    used unpinned blocks of any object, before its data is written.  Blocks
 *    being read or fetched are pinned.  When nothing can be evicted the read is
 *    streamed: fetched into memory, served, and not cached.  The charge is
 *    conservative: each block costs its length rounded up to 4 KiB, and each
 *    object file with 4 or more blocks one 4 KiB extent-tree block per 128
 *    blocks (ext4/XFS keep a few extents in the inode, the rest in tree
 *    blocks), so st_blocks * 512 of the object files never exceeds the cap.
 *    The index database and directories are not counted.
 *  - The disk is a second, lower cap when it is fuller than the cap assumes
 *    (the cap bigger than the disk, or staged files, the metadata index or
 *    anything else on the same file system taking space): before a block is
 *    reserved, least recently used blocks are evicted until the file system
 *    (statvfs f_bavail) has room for it, for the blocks being fetched, and a
 *    reserve of max(1% of the file system, 2 MiB), so the cache shrinks
 *    before the disk fills and the index and staged writes can still grow.
 *    When nothing is left to evict the read is streamed.
 *  - A full disk (ENOSPC or EDQUOT writing a fetched block, syncing it, or
 *    recording it in the index) never fails a read: the partial block is
 *    punched out, clean blocks are evicted to make room on the disk, the
 *    block is tried once more, and if it still does not fit the read is
 *    streamed.  Staging (cache_stage_open's fill, cache_stage_commit) also
 *    evicts and retries once before it fails with -ENOSPC.
 *  - At most one fetch of a given block is in flight: concurrent readers of a
 *    missing block wait for the one fetch.  No cache-wide lock is held while
 *    the fetch callback runs.
 *  - Staged (dirty) files are outside the cap and never evicted; only
 *    cache_stage_commit() or cache_stage_discard() remove them.  They survive
 *    crashes and remounts.
 *  - All functions are thread-safe, a cache_reader's included (FUSE may issue
 *    reads of one handle in parallel).
 *
 * Layout of cache_config.dir (created 0700, files 0600):
 *   index.db                SQLite (WAL): objects, present blocks with their
 *                           LRU stamps, staged files
 *   lock                    flock'ed while open: one process per cache dir
 *   objects/XX/HASH-ID      one sparse file per object: the object's bytes at
 *                           their own offsets; HASH is the SHA-256 of the key
 *                           in hex, XX its first two digits, ID the object's
 *                           row in the index (a new etag gets a new file).
 *                           Evicted blocks are punched out with
 *                           fallocate(FALLOC_FL_PUNCH_HOLE), so the file
 *                           system must support it (ext4, XFS, btrfs, tmpfs).
 *   staging/HASH            one file per staged key: its full contents
 *
 * Granularity: the unit of fetching and eviction is one block (block_size,
 * default 1 MiB, aligned to block boundaries, the last one shorter).  A random
 * 4 KiB read fetches the whole block around it; streamed reads (no room in the
 * cache) fetch only the bytes asked for.
 *
 * Read-ahead: a cache_reader watches its reads.  After two reads that each
 * continue the ones before (start within a block, or four times the largest
 * read, of where they ended: the kernel's requests arrive somewhat out of
 * order) it keeps a window of blocks ahead of the
 * reader fetched or being fetched.  The window starts at 4 blocks and doubles
 * with every request up to `prefetch_window` blocks (and at most a quarter of
 * the cap).  Missing blocks are fetched in runs: one request (one ranged GET)
 * for up to 16 MiB of contiguous missing blocks, at most `prefetch_parallel`
 * requests per reader in flight, on a pool of `prefetch_threads` worker
 * threads.  A request is issued once half the window (or 16 MiB) is not
 * requested yet.  Each block of a run is served as soon as its bytes are in
 * (see cache_fetch_progress), so a reader waiting for the first block of a
 * run does not wait for the whole run.  A read elsewhere stops read-ahead
 * until the pattern is sequential again; random reads fetch only the block
 * around each read.  Prefetch never discards content of another etag and
 * never streams; closing a reader drops its queued prefetches and waits for
 * the ones already fetching.
 *
 * Ownership: strings and buffers passed in are borrowed for the call; a
 * cache_reader keeps its own copies.
 */
#ifndef BUCKETFS_CACHE_H
#define BUCKETFS_CACHE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CACHE_WARN_UNUSED __attribute__((warn_unused_result))

/*
 * Fetches [off, off + len) of object `key` as it is with `etag` and writes
 * exactly those bytes to `fd` at `fd_off` (pwrite; the fd's offset is not
 * used).  Returns 0 once all `len` bytes are written, else a negative errno:
 * -ESTALE when the object no longer has that etag.  Called from reader
 * threads and from the prefetch pool, possibly many at once; no cache lock
 * is held.
 *
 * `progress` (NULL for some calls) lets a long fetch hand over what it has:
 * the callback may call cache_fetch_progress(progress, done) whenever the
 * first `done` bytes of the range are written, in increasing order; the
 * cache then serves the whole blocks among them while the rest streams in.
 * A negative return of cache_fetch_progress() must abort the fetch, which
 * then returns that error.
 */
typedef struct cache_progress cache_progress;
typedef int (*cache_fetch_fn)(void *ctx, const char *key, const char *etag, uint64_t off,
                              uint64_t len, int fd, uint64_t fd_off, cache_progress *progress);
int cache_fetch_progress(cache_progress *progress, uint64_t done) CACHE_WARN_UNUSED;

enum cache_log_level { CACHE_LOG_ERR = 0, CACHE_LOG_WARNING, CACHE_LOG_INFO, CACHE_LOG_DEBUG };
typedef void (*cache_log_fn)(int level, const char *fmt, va_list ap);

typedef struct cache_config {
	const char *dir;            /* required; created if missing */
	uint64_t size;              /* cap on cached bytes; 0: 1 GiB */
	uint32_t block_size;        /* multiple of 4096; 0: 1 MiB.  Changing it
	                               between mounts empties the cache (staged
	                               files are kept). */
	unsigned prefetch_window;   /* largest read-ahead in blocks; 0: 64 */
	unsigned prefetch_parallel; /* requests in flight per reader; 0: 4 */
	unsigned prefetch_threads;  /* worker pool; 0: 4 */
	bool no_prefetch;           /* no read-ahead, no worker threads */
	bool no_sync;               /* skip fdatasync before recording a block:
	                               still safe against kill -9 (the page cache
	                               survives), not against power loss */
	cache_fetch_fn fetch;       /* required */
	void *fetch_ctx;
	cache_log_fn log; /* NULL: silence */
} cache_config;

typedef struct cache cache;
typedef struct cache_reader cache_reader;

/* Opens (creating if needed) the cache in cfg->dir, loads the index, and
 * reconciles it with the files: data not in the index is punched out, files
 * not in the index are removed, and the content is evicted down to the cap.
 * Returns 0 or -errno (-EBUSY: another process has the dir open,
 * -EOPNOTSUPP: the file system cannot punch holes). */
int cache_open(const cache_config *cfg, cache **out) CACHE_WARN_UNUSED;

/* Stops the prefetch pool and saves the LRU order.  Every cache_reader must
 * have been closed. */
void cache_close(cache *c);

/* Reads up to `len` bytes at `off` of the object (key, etag, size), fetching
 * the missing blocks.  Returns the number of bytes read (short only at the
 * end of the object, 0 at or past it) or a negative errno from the fetch
 * callback or local I/O; nothing of a failed fetch is cached.  A full disk
 * is not an error: the bytes are streamed. */
ssize_t cache_read(cache *c, const char *key, const char *etag, uint64_t size, uint64_t off,
                   size_t len, void *buf) CACHE_WARN_UNUSED;

/* Inserts content obtained elsewhere (a whole small object from a GET): the
 * blocks that [off, off + len) covers completely (the last block of the
 * object may end at `size`) and that are not yet cached.  Blocks that find
 * no room under the cap or on the disk are skipped.  Returns 0 or -errno. */
int cache_put(cache *c, const char *key, const char *etag, uint64_t size, uint64_t off,
              const void *data, size_t len) CACHE_WARN_UNUSED;

/* Frees disk space for a writer outside the cache that got ENOSPC or EDQUOT
 * on the cache's file system (a staged write, the metadata index): evicts
 * least recently used clean blocks, regardless of the cap, at least `bytes`
 * of them (statvfs does not see quotas), and more until the file system has
 * `bytes` plus the reserve free or nothing more can go.  Staged files and
 * blocks in use are never evicted.  Returns 0 when it evicted `bytes` and
 * the file system shows them free (worth retrying the write), -ENOSPC when
 * not.  With bytes == 0 it only restores the reserve, and returns 0. */
int cache_make_room(cache *c, uint64_t bytes) CACHE_WARN_UNUSED;

/* Drops everything cached for `key` (not its staged file).  Readers in the
 * middle of a block finish it; their next read fetches again. */
void cache_invalidate(cache *c, const char *key);

/* A per-open-file reader with read-ahead; see "Read-ahead" above.  NULL on
 * ENOMEM. */
cache_reader *cache_reader_open(cache *c, const char *key, const char *etag, uint64_t size);
ssize_t cache_reader_read(cache_reader *r, uint64_t off, size_t len, void *buf) CACHE_WARN_UNUSED;
/* Drops queued prefetches, waits for running ones, frees the reader. */
void cache_reader_close(cache_reader *r);

/*
 * Write staging.  A staged file holds the full contents of `key` as the
 * writer sees them; it is the writer's until committed (after a successful
 * upload) or discarded.
 *
 * cache_stage_open: returns in *fd_out a new O_RDWR descriptor (the caller
 * closes it) onto the key's staged file.  If the key has a staged file
 * already (from this mount or an earlier one), that file is used as is.
 * Else one is created: with etag == NULL empty and then extended to `size`
 * (zeros), else filled with the object (key, etag, size) from cached blocks
 * and, for the rest, the fetch callback (fetched bytes are not added to the
 * cache).  Concurrent opens of one key wait for one fill.
 *
 * cache_stage_commit: the staged file, truncated to `size`, becomes the
 * cached content of (key, etag, size) (a rename, no copy); what was cached
 * for the key before is dropped, and LRU blocks are evicted if the cap is
 * exceeded.  The caller must have closed, or must no longer write through,
 * every descriptor of the staged file.  -ENOENT when nothing is staged.
 * The file's bytes were on disk already; they now count against the cap, so
 * the cap holds again once the eviction that follows is done.  Its data is
 * fdatasync'ed first unless `data_on_disk` says the caller synced every
 * byte since the last change (as the writer does before each upload).
 *
 * cache_stage_discard: removes the staged file.  -ENOENT when none.
 *
 * cache_stage_keys: the keys with a staged file (say, to resume uploads after
 * a crash); *keys is a malloc'd array of malloc'd strings.
 *
 * cache_dirty_bytes: disk space of all staged files (st_blocks * 512), to
 * throttle writers.
 */
int cache_stage_open(cache *c, const char *key, const char *etag, uint64_t size,
                     int *fd_out) CACHE_WARN_UNUSED;
int cache_stage_commit(cache *c, const char *key, const char *etag, uint64_t size,
                       bool data_on_disk) CACHE_WARN_UNUSED;
int cache_stage_discard(cache *c, const char *key) CACHE_WARN_UNUSED;
int cache_stage_keys(cache *c, char ***keys, size_t *n) CACHE_WARN_UNUSED;
uint64_t cache_dirty_bytes(cache *c);

typedef struct cache_stats {
	uint64_t hit_bytes;      /* served from cached blocks */
	uint64_t miss_bytes;     /* fetched: whole blocks, and streamed bytes */
	uint64_t stream_bytes;   /* of miss_bytes: fetched without caching */
	uint64_t evicted_bytes;  /* charge of blocks evicted to make room */
	uint64_t current_bytes;  /* charged against the cap now */
	uint64_t cap_bytes;      /* the cap */
	uint64_t prefetch_count; /* blocks fetched by read-ahead */
	uint64_t fetch_errors;   /* fetch callbacks that failed */
	uint64_t dirty_bytes;    /* cache_dirty_bytes() */
} cache_stats;

void cache_get_stats(cache *c, cache_stats *out);

#endif
