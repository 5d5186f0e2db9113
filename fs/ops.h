/*
 * ops.h - the FUSE operations of bucketfs and the state they share.
 *
 * main.c builds one struct fs_ctx (S3 client, index, content cache and the
 * settings the operations need) and hands it to fuse_new() as private data;
 * every handler reaches it through fuse_get_context().
 */
#ifndef BUCKETFS_FS_OPS_H
#define BUCKETFS_FS_OPS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <fuse.h>

#include "cache.h"
#include "meta.h"
#include "s3.h"

/* The name of the virtual extended attribute of the mount's root that
 * `bucketfs stats MOUNTPOINT` reads.  It is never listed and never stored. */
#define FS_STATS_XATTR "user.bucketfs.stats"

struct fs_ctx {
	s3_client *s3;
	meta *meta;
	cache *cache;
	char *prefix; /* "" or "some/prefix/" */

	uid_t uid; /* owner of objects without x-amz-meta-uid */
	gid_t gid;
	mode_t file_mode;         /* permission bits of files without x-amz-meta-mode */
	mode_t dir_mode;          /* ... of directories */
	int64_t list_ttl_ns;      /* how long a directory listing is trusted */
	uint64_t small_file_size; /* fetch metadata of objects up to this size
	                             with a GET (content cached) instead of HEAD */
	int head_parallel;        /* HEAD/GET requests in flight for one readdir */
	int list_flat_pages;      /* pages of a flat listing before a directory is
	                        listed one level at a time instead */
	bool ro;

	/* Write-back (write.c) */
	uint64_t multipart_size;  /* one PUT below, multipart at or above */
	int parallel_count;       /* parts in flight per multipart upload */
	uint64_t max_dirty;       /* writers wait while staged data exceeds it */
	uint64_t async_close_max; /* files up to this size upload after close */
	int upload_threads;       /* background upload pool */
	int unmount_wait_s;       /* destroy waits this long for uploads */
	struct fs_wb *wb;         /* open files, upload pool, journal; owned */

	pthread_mutex_t list_lock; /* one listing at a time */
	struct fs_probes *probes;  /* names looked up alone (probe.c); owned */
};

/* The operations table; main.c passes it to fuse_new(). */
extern const struct fuse_operations fs_operations;

/* The text `bucketfs stats` prints: one "name value" pair a line. */
char *fs_stats_text(struct fs_ctx *ctx);

/* The content cache's fetch callback: a ranged GET pinned to the ETag. */
int fs_fetch(void *ctx, const char *key, const char *etag, uint64_t off, uint64_t len, int fd,
             uint64_t fd_off, cache_progress *progress);

/* Drops a result on purpose (a best-effort cleanup already logged, or one
 * whose failure changes nothing); a (void) cast does not silence
 * warn_unused_result. */
#define FS_IGNORE(call)                                                                            \
	do {                                                                                       \
		if (call) {                                                                        \
		}                                                                                  \
	} while (0)

/* ---------------------------------------------------------------- shared
 * Helpers of ops.c used by write.c and dirops.c. */

int64_t fs_now_ns(void);
/* "/a/b" -> "/a"; "/a" -> "/".  out holds strlen(path) + 1 bytes. */
void fs_parent_of(const char *path, char *out);
/* The last component of path (points into it). */
const char *fs_base_of(const char *path);
/* The S3 key of `path`; the root is the bucket prefix.  malloc'd. */
char *fs_key_of(struct fs_ctx *ctx, const char *path, bool dir_marker);
/* Makes sure the index holds a listing of `dir` younger than list_ttl. */
int fs_ensure_listed(struct fs_ctx *ctx, const char *dir);
/* A listing's callback: drops the cached contents of a changed entry. */
void fs_on_listing_change(void *arg, const char *path, enum meta_change what);

/* ---------------------------------------------------------------- probe.c */

int fs_probes_init(struct fs_ctx *ctx);
void fs_probes_free(struct fs_ctx *ctx); /* idempotent */
/* Makes the index as fresh as list_ttl asks for `path` (in directory
 * `parent`): trusts a fresh listing of the parent or an earlier probe of
 * `path`, else asks S3 about `path` alone, or lists the parent when that
 * cannot settle it.  0 (the index has the answer), 1 when a probe filled
 * *out with the entry (read back from the index, or what S3 said when the
 * index could not store it: a full disk; meta_entry_clear it), or a
 * negative errno. */
int fs_find(struct fs_ctx *ctx, const char *parent, const char *path, meta_entry *out);

/* Finds `path` in a fresh listing of its parent (or a fresh probe of it
 * alone, probe.c), with its x-amz-meta-*
 * attributes (fetched if needed); fills *e (meta_entry_clear it). */
int fs_lookup(struct fs_ctx *ctx, const char *path, meta_entry *e);
void fs_fill_stat(struct fs_ctx *ctx, const meta_entry *e, struct stat *st);
/* Makes every attribute of *e explicit (the mount's defaults for the ones
 * the object lacks), so it can be written out as x-amz-meta-*. */
void fs_entry_complete(struct fs_ctx *ctx, meta_entry *e);
/* The s3fs headers of *e (complete it first): mode, uid, gid, mtime, ctime,
 * atime, xattr.  Adds to *m (existing items of those names are replaced). */
int fs_entry_to_s3meta(const meta_entry *e, s3_meta *m);
/* Logs a failed S3 call: "what path: HTTP 404 ..." */
void fs_log_s3(int level, const char *what, const char *path, const s3_error *err);

/* ---------------------------------------------------------------- write.c
 * Open files and write-back.  Every open file (read or write) has one
 * struct fs_file, shared by its handles and found by path; it outlives its
 * handles while its data is not yet uploaded. */

int fs_wb_start(struct fs_ctx *ctx); /* before mounting: resume the journal */
void fs_wb_stop(struct fs_ctx *ctx); /* waits (bounded) and frees; idempotent */
/* Corrects size and times of *e when `path` is open or not yet uploaded. */
void fs_wb_overlay(struct fs_ctx *ctx, const char *path, meta_entry *e);
/* Forgets the pending data of `path` (unlink): open handles keep the data,
 * nothing is uploaded. */
void fs_wb_unlink(struct fs_ctx *ctx, const char *path);
/* rename: moves the state of `from` (and of every open file below it for a
 * directory) to `to`.  *dirty_out: `from` is a file whose new contents are
 * not uploaded yet (the caller need not copy the old object).  Holds every
 * upload of those files back until fs_wb_rename_end(). */
int fs_wb_rename_begin(struct fs_ctx *ctx, const char *from, bool *dirty_out);
void fs_wb_rename_end(struct fs_ctx *ctx, const char *from, const char *to, bool done);
/* Applies an attribute change to a file whose data is not uploaded yet:
 * calls fn (which updates the index) with uploads of `path` held back and
 * returns 1; 0 when `path` has no pending data (the caller rewrites the
 * object's metadata in S3), or a negative errno. */
int fs_wb_setattr(struct fs_ctx *ctx, const char *path, int (*fn)(void *arg), void *arg);
/* libfuse hides an open file that is unlinked or replaced by renaming it
 * to .fuse_hidden*: the object is deleted and the open file lives on under
 * the hidden name, in memory only. */
int fs_wb_hide(struct fs_ctx *ctx, const char *from, const char *to);
/* stat of such a hidden file (0, or -ENOENT if path is none); `forget`
 * drops it (its unlink). */
int fs_wb_hidden_stat(struct fs_ctx *ctx, const char *path, struct stat *st, bool forget);
int fs_wb_truncate_path(struct fs_ctx *ctx, const char *path, off_t size);
/* Server-side copy of a whole object, multipart (UploadPartCopy) above
 * 5 GiB. */
int fs_copy_object(struct fs_ctx *ctx, const char *from_key, const char *to_key, uint64_t size,
                   enum s3_metadata_directive d, const s3_put_opts *o, char etag_out[S3_ETAG_MAX]);

int fs_open(const char *path, struct fuse_file_info *fi);
int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi);
int fs_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi);
int fs_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi);
int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi);
int fs_flush(const char *path, struct fuse_file_info *fi);
int fs_fsync(const char *path, int datasync, struct fuse_file_info *fi);
int fs_release(const char *path, struct fuse_file_info *fi);
/* getattr through an open handle (the file may be unlinked). */
int fs_fgetattr(struct fs_ctx *ctx, struct fuse_file_info *fi, struct stat *st);

/* ---------------------------------------------------------------- dirops.c */

int fs_mknod(const char *path, mode_t mode, dev_t rdev);
int fs_mkdir(const char *path, mode_t mode);
int fs_unlink(const char *path);
int fs_rmdir(const char *path);
int fs_symlink(const char *target, const char *path);
int fs_rename(const char *from, const char *to, unsigned int flags);
int fs_link(const char *from, const char *to);
int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi);
int fs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi);
int fs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi);
int fs_setxattr(const char *path, const char *name, const char *value, size_t size, int flags);
int fs_getxattr(const char *path, const char *name, char *value, size_t size);
int fs_listxattr(const char *path, char *list, size_t size);
int fs_removexattr(const char *path, const char *name);

#endif
