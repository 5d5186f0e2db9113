/*
 * meta.h - the persistent index of the bucket's metadata (SQLite, WAL).
 *
 * Everything fs/ needs to answer getattr and readdir without the network,
 * refreshed from LIST and HEAD results that fs/ fetches through s3/ and feeds
 * in through the neutral structs below (meta/ does no network I/O and does
 * not know s3.h).  It also holds the journal of uploads not yet confirmed.
 *
 * Invariants
 *  - Every function returning int returns 0 (or a count) on success and a
 *    negative errno on failure: -ENOENT absent, -EINVAL malformed input,
 *    -ENOMEM, -EIO / -ENOSPC / -EROFS for storage errors (SQLite errors are
 *    mapped to errno in one place and logged).
 *  - Paths are absolute and normalised: "/" is the root, "/a/b" a child of
 *    "/a"; no trailing '/', no empty, "." or ".." component.  The parent of
 *    "/a" is "/".  Any other path is refused with -EINVAL.
 *  - The root always exists and is a directory; it has no row of its own
 *    (meta_lookup("/") synthesises it, meta_count_entries() excludes it).
 *  - A row is either a file or a directory; a key that is both a file "a" and
 *    a prefix "a/..." is shown as the directory "a", the file is hidden and
 *    logged once (the rule holds whatever order the pages arrive in).
 *  - HEAD-derived fields (head_etag, mode, uid, gid, mtime/ctime/atime,
 *    symlink target, xattr) belong to one version of the object: a listing
 *    that shows a different ETag, LastModified or size clears them, an
 *    unchanged one keeps them (a stored LastModified of 0 means "not known",
 *    as after an upload, whose answer carries none: a listing with the same
 *    ETag and size then counts as unchanged and its LastModified is adopted), and meta_set_head() only stores them while
 *    the entry's ETag is still the one the HEAD saw.
 *  - A `local` entry was created or changed by this mount and is not yet
 *    confirmed by S3: listings never delete it nor overwrite its attributes,
 *    and the directories above it survive a listing that no longer shows them.
 *  - Every change is one SQLite transaction; WAL with synchronous=FULL, so a
 *    committed change (in particular a journal row) survives a crash or power
 *    loss, and readers see either the state before or after a change.  A
 *    listing is applied one page per transaction: a concurrent reader may see
 *    some pages new and some old, never half a page.
 *  - A `meta` handle is thread-safe.  Point reads and readdir run
 *    concurrently on a small pool of read-only connections; changes are
 *    serialised on one writer connection.  Memory is bounded: each
 *    connection's page cache is capped (see meta_options), independent of the
 *    number of entries.
 *
 * Ownership: inputs are borrowed for the duration of the call.  Output
 * structs filled by meta_lookup() own their strings and are released with
 * meta_entry_clear().  Structs passed to callbacks (readdir, journal list,
 * change reports) are owned by meta and valid only during the call.
 * Callbacks run without any meta lock held except where stated.
 */
#ifndef BUCKETFS_META_H
#define BUCKETFS_META_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define META_WARN_UNUSED __attribute__((warn_unused_result))

/* The longest path component the index accepts (NAME_MAX). */
#define META_NAME_MAX 255

/* The version of the schema this code writes (PRAGMA user_version). */
#define META_SCHEMA_VERSION 1

/* ---------------------------------------------------------------- open */

/* Same levels and signature as s3_log_fn, so fs/ can pass one logger to both. */
enum meta_log_level {
	META_LOG_ERR = 0,
	META_LOG_WARNING = 1,
	META_LOG_INFO = 2,
	META_LOG_DEBUG = 3
};
typedef void (*meta_log_fn)(int level, const char *fmt, va_list ap);

typedef struct meta_options {
	meta_log_fn log;     /* NULL: silence */
	int log_level;       /* messages above this level are not formatted */
	int n_readers;       /* read connections; 0: 4 */
	int cache_kib;       /* page cache per connection in KiB; 0: 1024 (writer: 4x) */
	int busy_timeout_ms; /* 0: 10000 */
} meta_options;

typedef struct meta meta;

/*
 * Opens the index at `path`, creating it (mode 0600; the caller creates the
 * directory, 0700) with the current schema if it does not exist.
 * `bucket_prefix` is "" or "some/prefix/" (ending in '/'): keys are mapped
 * to paths below it.  An existing index must have been created for the same
 * prefix (-EINVAL otherwise) and a schema version this code knows (-EPROTO
 * for a newer one).  `opts` may be NULL.  On success *out is the handle.
 */
int meta_open(const char *path, const char *bucket_prefix, const meta_options *opts,
              meta **out) META_WARN_UNUSED;

/* Closes every connection (checkpointing the WAL) and frees the handle.
 * No other call on `m` may be running or follow.  NULL is a no-op. */
void meta_close(meta *m);

/* ---------------------------------------------------------------- keys */

/*
 * Maps an object key to a path below the mount.  `key` is `key_len` bytes,
 * not necessarily NUL-terminated; `prefix` is the bucket prefix as given to
 * meta_open().  Writes the NUL-terminated path into out (out_size bytes; a
 * size of key_len + 2 always suffices) and returns its length, setting
 * *dir_marker when the key ends in '/' (a directory object; the path has no
 * trailing '/').  The prefix's own marker ("prefix/" itself) is the root.
 *
 * Returns -EINVAL for a key that cannot be a name: not below `prefix`, empty
 * after it, an empty component ("a//b", a leading '/'), a "." or ".."
 * component, a component longer than META_NAME_MAX bytes, or a NUL byte; and
 * -ERANGE if out is too small.  Pure: no state, no logging, any bytes in.
 */
int meta_key_to_path(const char *prefix, const char *key, size_t key_len, char *out,
                     size_t out_size, bool *dir_marker) META_WARN_UNUSED;

/* The inverse: the key of `path` below `prefix`, with a trailing '/' when
 * `dir_marker`.  Returns a malloc'd string, or NULL on ENOMEM / bad path. */
char *meta_path_to_key(const char *prefix, const char *path, bool dir_marker);

/* ---------------------------------------------------------------- entries */

/* Which of the optional HEAD-derived numbers are known. */
enum meta_has {
	META_HAS_MODE = 1 << 0,
	META_HAS_UID = 1 << 1,
	META_HAS_GID = 1 << 2,
	META_HAS_MTIME = 1 << 3,
	META_HAS_CTIME = 1 << 4,
	META_HAS_ATIME = 1 << 5,
};

typedef struct meta_entry {
	char *name; /* the last component; "/" for the root */
	bool is_dir;
	bool dir_marker; /* an explicit "dir/" object exists (as far as known) */
	bool local;      /* created/changed here, not yet confirmed by S3 */

	/* From LIST (or from the upload that created it). */
	uint64_t size;
	char *etag; /* quotes included; NULL for an implicit directory */
	int64_t last_modified_ns;
	char *owner_id;    /* NULL unless listed with fetch-owner */
	char *owner_name;  /* NULL if unknown */
	char *permissions; /* ACL text if fetched, else NULL */

	/* From HEAD (x-amz-meta-*), or set locally.  head_etag is the ETag the
	 * HEAD saw: NULL means no HEAD was done for the current version.  Each
	 * number is meaningful only when its META_HAS_* bit is set (the object
	 * had that header); otherwise fs/ applies the mount's defaults. */
	char *head_etag;
	unsigned has;  /* enum meta_has bits */
	uint32_t mode; /* st_mode, type bits included */
	uint32_t uid, gid;
	int64_t mtime_ns, ctime_ns, atime_ns;
	char *symlink;        /* target, NULL unless known */
	unsigned char *xattr; /* s3fs x-amz-meta-xattr value, NULL if none */
	size_t xattr_len;

	uint64_t list_gen; /* the last listing that saw it (internal use, tests) */
} meta_entry;

/* Frees the strings of an entry filled by meta_lookup() and zeroes it. */
void meta_entry_clear(meta_entry *e);

/* Fills *out (owned by the caller, meta_entry_clear() it) with the entry at
 * `path`; -ENOENT if there is none.  The root always exists. */
int meta_lookup(meta *m, const char *path, meta_entry *out) META_WARN_UNUSED;

/*
 * Calls fn for each entry directly inside `dir`, in byte order of name,
 * starting after the name `after` (NULL: from the first), as one range scan
 * on one read snapshot.  The entry is valid during the call only, and fn must
 * not call back into meta (it holds a read connection).  A nonzero return
 * from fn stops the scan and is returned.  An absent or empty directory
 * gives no calls; meta_lookup() tells them apart.
 */
typedef int (*meta_readdir_fn)(void *ctx, const meta_entry *e);
int meta_readdir(meta *m, const char *dir, const char *after, meta_readdir_fn fn,
                 void *ctx) META_WARN_UNUSED;

/* The number of entries (rows; the root not included), or a negative errno. */
int64_t meta_count_entries(meta *m);

/* ---------------------------------------------------------------- listings */

/* One object of a ListObjectsV2 page.  Strings are borrowed; owner_* may be
 * NULL (listed without fetch-owner). */
typedef struct meta_object {
	const char *key; /* the full key, bucket prefix included */
	uint64_t size;
	const char *etag;
	int64_t last_modified_ns;
	const char *owner_id;
	const char *owner_name;
} meta_object;

/* What a listing did to an entry that fs/ may have cached content or
 * attributes for. */
enum meta_change {
	META_CHANGED = 1, /* ETag, LastModified, size or type differ */
	META_VANISHED,    /* deleted from the index */
};

/* Called after the transaction that made the change has committed, with no
 * meta lock held (it may call meta). */
typedef void (*meta_change_fn)(void *ctx, const char *path, enum meta_change what);

enum meta_list_flags {
	/* One ListObjectsV2 without delimiter covering every subdirectory; else
	 * one level (delimiter "/": objects and common prefixes). */
	META_LIST_RECURSIVE = 1 << 0,
};

typedef struct meta_listing meta_listing;

/*
 * Starts applying a listing of directory `dir` (the S3 prefix that fs/ lists
 * is the key of `dir` with a trailing '/', or the bucket prefix for the
 * root).  `on_change` (may be NULL) hears of entries that changed or vanished.
 * Several listings may run at once (of different or nested directories).
 */
int meta_listing_begin(meta *m, const char *dir, unsigned flags, meta_change_fn on_change,
                       void *ctx, meta_listing **out) META_WARN_UNUSED;

/*
 * Applies one page in one transaction: objects and common prefixes (full
 * keys ending in '/'; NULL/0 for none).  Keys that cannot be names or lie
 * outside `dir` are skipped and logged once.  A new or changed object is
 * written with its LIST fields; a changed one loses its HEAD-derived fields;
 * every directory above a key (up to `dir`) is created if missing (a tree
 * uploaded without directory objects).  On failure the page is rolled back
 * and the listing stays usable (retry the page) or may be aborted.
 */
int meta_listing_add_page(meta_listing *l, const meta_object *objects, size_t n_objects,
                          const char *const *prefixes, size_t n_prefixes) META_WARN_UNUSED;

/*
 * Finishes the listing in one transaction: entries below `dir` (its children,
 * or its whole subtree if recursive) that no page showed are deleted, except
 * `local` ones and the directories above those; file/directory conflicts are
 * settled; `dir` is marked listed now.  Returns the number of keys the pages
 * held (0 with no `dir/` marker and nothing below: the directory does not
 * exist in S3, fs/ decides what to do) or a negative errno.  Frees `l` in
 * every case.
 */
int meta_listing_commit(meta_listing *l) META_WARN_UNUSED;

/* Forgets a listing without deleting anything (pages already applied stay).
 * Frees `l`; NULL is a no-op. */
void meta_listing_abort(meta_listing *l);

/*
 * When `dir` was last listed completely: the newest of its own listing and
 * the recursive listings of its ancestors, in ns since the epoch; 0 if never.
 * fs/ compares it with list_ttl.
 */
int meta_dir_listed_at(meta *m, const char *dir, int64_t *listed_at_ns) META_WARN_UNUSED;

/* ---------------------------------------------------------------- HEAD */

/* HEAD-derived fields, as fs/ parsed them from x-amz-meta-*. */
typedef struct meta_head {
	unsigned has; /* enum meta_has bits; the others' values are ignored */
	uint32_t mode, uid, gid;
	int64_t mtime_ns, ctime_ns, atime_ns;
	const unsigned char *xattr; /* NULL: none */
	size_t xattr_len;
} meta_head;

/*
 * Stores a HEAD result for `path` if its entry's ETag still equals `etag`
 * and the entry is not local; replaces all HEAD-derived fields but the
 * symlink target.  -ENOENT if there is no entry, -ESTALE if the ETag
 * differs (a listing has seen a newer version: the result is dropped).
 * Committed without waiting for the disk (a power failure may lose it and
 * cost a refetch, never a durable commit made before or after it).
 */
int meta_set_head(meta *m, const char *path, const char *etag,
                  const meta_head *head) META_WARN_UNUSED;

/* Stores the target of a symlink read with a GET, under the same condition
 * as meta_set_head(). */
int meta_set_symlink(meta *m, const char *path, const char *etag,
                     const char *target) META_WARN_UNUSED;

/* ---------------------------------------------------------------- local changes */

/*
 * Inserts or replaces the entry at `path` with the fields of `e` (its name
 * and list_gen are ignored).  The parent directory must exist (-ENOENT, or
 * -ENOTDIR if it is a file).  Replacing a directory by a file or back is
 * refused with -EISDIR / -ENOTDIR.  Use e->local = true for anything S3 has
 * not confirmed yet.
 */
int meta_upsert(meta *m, const char *path, const meta_entry *e) META_WARN_UNUSED;

/* The same, committed without waiting for the disk, like meta_set_head():
 * for a change nothing has promised to keep yet (a file created or written
 * and not closed), or one that a durable commit made right after covers
 * (the WAL is synced in order: a power failure can only lose lazy commits
 * made after the last durable one). */
int meta_upsert_lazy(meta *m, const char *path, const meta_entry *e) META_WARN_UNUSED;

/* Deletes the entry at `path`: -ENOENT if absent, -ENOTEMPTY for a directory
 * with entries, -EINVAL for the root. */
int meta_delete(meta *m, const char *path) META_WARN_UNUSED;

/*
 * Renames `from` to `to`, a whole subtree for a directory, in one
 * transaction; with POSIX rename semantics for an existing `to` (a file is
 * replaced, an empty directory replaced by a directory; -EISDIR, -ENOTDIR,
 * -ENOTEMPTY otherwise).  The parent of `to` must exist.  Moved entries
 * keep their attributes and listing times; `mark_local` sets their local
 * flag (the copies are not in S3 yet).  -EINVAL when `to` is below `from`.
 */
int meta_rename(meta *m, const char *from, const char *to, bool mark_local) META_WARN_UNUSED;

/*
 * Records that S3 has confirmed the upload of `path`: clears the local flag
 * and stores the new etag, size and LastModified.  The HEAD-derived fields
 * the entry holds were uploaded with it, so they now belong to `etag`.
 */
int meta_clear_local(meta *m, const char *path, const char *etag, uint64_t size,
                     int64_t last_modified_ns) META_WARN_UNUSED;

/*
 * An upload of `path` finished: meta_clear_local() with LastModified 0 (a
 * PUT does not say it; the next listing adopts the listed one) and the
 * removal of journal row `journal_id` (0: none) in one transaction, one
 * durable commit instead of two.  *entry_found is false when the entry is gone (removed
 * meanwhile); the row is removed all the same.  -ENOENT only when the row
 * is absent; on any error nothing changed.
 */
int meta_upload_done(meta *m, const char *path, const char *etag, uint64_t size, int64_t journal_id,
                     bool *entry_found) META_WARN_UNUSED;

/*
 * Sets the mtime and ctime of the directory at `path` to `ns` (its entries
 * changed), in the index only; the root (no row) is left as it is.
 * -ENOENT if there is no such directory.  Committed lazily (see
 * meta_upsert_lazy()).
 */
int meta_set_dir_times(meta *m, const char *path, int64_t ns) META_WARN_UNUSED;

/* ---------------------------------------------------------------- journal */

/* One upload not yet confirmed by S3.  `state` and the encoding of `parts`
 * belong to fs/; meta only stores them. */
typedef struct meta_journal_entry {
	int64_t id; /* assigned by meta_journal_add() */
	const char *path;
	const char *staged_file; /* the staged data in cache/ */
	uint64_t size;
	int state;
	const char *upload_id; /* multipart upload id, NULL before/without one */
	const char *parts;     /* completed parts, NULL if none */
	int64_t created_ns;
} meta_journal_entry;

/* Adds a row durably (it is on disk when this returns) and sets *id. */
int meta_journal_add(meta *m, const meta_journal_entry *j, int64_t *id) META_WARN_UNUSED;

/* Replaces every field of row j->id but created_ns; -ENOENT if absent. */
int meta_journal_update(meta *m, const meta_journal_entry *j) META_WARN_UNUSED;

/* Deletes row `id`; -ENOENT if absent. */
int meta_journal_remove(meta *m, int64_t id) META_WARN_UNUSED;

/* Calls fn for every row in id order (oldest first).  The same rules as
 * meta_readdir()'s callback apply. */
typedef int (*meta_journal_fn)(void *ctx, const meta_journal_entry *j);
int meta_journal_list(meta *m, meta_journal_fn fn, void *ctx) META_WARN_UNUSED;

#endif
