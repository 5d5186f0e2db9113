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

	uid_t uid;           /* owner of objects without x-amz-meta-uid */
	gid_t gid;
	mode_t file_mode;    /* permission bits of files without x-amz-meta-mode */
	mode_t dir_mode;     /* ... of directories */
	int64_t list_ttl_ns; /* how long a directory listing is trusted */
	uint64_t small_file_size; /* fetch metadata of objects up to this size
	                             with a GET (content cached) instead of HEAD */
	int head_parallel;   /* HEAD/GET requests in flight for one readdir */
	int list_flat_pages; /* pages of a flat listing before a directory is
	                        listed one level at a time instead */
	bool ro;

	pthread_mutex_t list_lock; /* one listing at a time */
};

/* The operations table; main.c passes it to fuse_new(). */
extern const struct fuse_operations fs_operations;

/* The text `bucketfs stats` prints: one "name value" pair a line. */
char *fs_stats_text(struct fs_ctx *ctx);

/* The content cache's fetch callback: a ranged GET pinned to the ETag. */
int fs_fetch(void *ctx, const char *key, const char *etag, uint64_t off, uint64_t len, int fd,
             uint64_t fd_off);

#endif
