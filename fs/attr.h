/*
 * attr.h - parsing and formatting of s3fs-compatible x-amz-meta-* values.
 *
 * s3fs-fuse writes x-amz-meta-mode (decimal st_mode, type bits included),
 * x-amz-meta-uid, x-amz-meta-gid and x-amz-meta-mtime / -ctime / -atime
 * (decimal seconds since the epoch); rclone writes x-amz-meta-mtime with a
 * fraction.  Parsers accept surrounding blanks and nothing else; every
 * function returns 0 or -EINVAL and leaves *out untouched on error.
 */
#ifndef BUCKETFS_FS_ATTR_H
#define BUCKETFS_FS_ATTR_H

#include <stddef.h>
#include <stdint.h>

/* A mode without type bits is a regular file; types other than file,
 * directory and symlink are refused. */
int fs_parse_mode(const char *s, uint32_t *out);
/* 0 .. 2^32-2 */
int fs_parse_id(const char *s, uint32_t *out);
/* "1700000000", "1700000000.25", "-5" -> nanoseconds since the epoch */
int fs_parse_time(const char *s, int64_t *ns_out);
/* The inverse of fs_parse_time: "1700000000" or "1700000000.25". */
void fs_format_time(int64_t ns, char *buf, size_t len);

/*
 * Extended attributes as s3fs-fuse stores them in x-amz-meta-xattr:
 *   urlencode({"user.a":"<base64 value>","user.b":"<base64 value>"})
 * (JSON-like: names are not escaped, so a name holding '"', ',' or ':'
 * cannot be stored; s3fs has the same limit).  An fs_xattrs owns its names
 * and values.
 */
struct fs_xattr {
	char *name;
	unsigned char *value;
	size_t len;
};

struct fs_xattrs {
	struct fs_xattr *v;
	size_t n;
};

/* Decodes `len` bytes of a header value; malformed pairs are skipped, as
 * s3fs does.  0 or -ENOMEM. */
int fs_xattrs_parse(const char *enc, size_t len, struct fs_xattrs *out);
/* Encodes *x; *out is malloc'd, NULL when x holds nothing.  0 or -ENOMEM. */
int fs_xattrs_format(const struct fs_xattrs *x, char **out);
struct fs_xattr *fs_xattrs_find(const struct fs_xattrs *x, const char *name);
/* Adds or replaces name (value copied).  0 or -ENOMEM. */
int fs_xattrs_set(struct fs_xattrs *x, const char *name, const void *value, size_t len);
/* 0, or -ENODATA when absent. */
int fs_xattrs_remove(struct fs_xattrs *x, const char *name);
void fs_xattrs_clear(struct fs_xattrs *x);

/*
 * The entries of `child`'s parent directory changed (a name was created,
 * removed or renamed): the parent's mtime and ctime become now.  Kept in the
 * index, not written to S3 (README "POSIX behaviour"); the mount's root is
 * left as it is.  Never fails: a directory that vanished meanwhile is fine.
 */
struct fs_ctx;
void fs_dir_touch(struct fs_ctx *ctx, const char *child);

#endif
