/*
 * ops.c - the FUSE operations of bucketfs.
 *
 * Which libfuse API, and why: the high-level, path-based one
 * (struct fuse_operations).  S3 addresses objects by key, which is a path;
 * the index is keyed by (parent, name), which is a path; so a path-based API
 * maps one to one onto both, with no inode table of our own to keep
 * consistent with the bucket.  What the low-level API would add (inode
 * numbers stable across renames, forget) matters little for a bucket, where
 * a rename is a copy anyway.  readdir passes FUSE_FILL_DIR_PLUS attributes,
 * so `ls -l`, `find` and `rsync` need no getattr round trip per entry.
 *
 * Listing strategy (see README "How bucketfs lists"): a directory that is not
 * fresh is listed with ListObjectsV2 *without* a delimiter, which covers every
 * subdirectory at 1,000 keys a request, so a whole-tree walk costs
 * ceil(keys / 1000) LISTs.  So that the first `ls` of a huge bucket still
 * answers quickly, a flat listing gives up after `list_flat_pages` pages and
 * the directory is listed one level (with delimiter "/") instead; its
 * subdirectories then get their own flat listings when visited.  A lookup of
 * one name in a directory not listed asks for that name alone (probe.c).
 *
 * Metadata strategy: a listing carries size, ETag and LastModified but not the
 * x-amz-meta-* attributes.  Those are fetched once per object version, in
 * parallel for a whole directory at readdir time, and stored in the index
 * (meta_set_head): a HEAD, or, for objects up to small_file_size, a GET that
 * brings the content into the cache as well.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "attr.h"
#include "fs.h"
#include "ops.h"

#define FS_BLKSIZE 131072

static struct fs_ctx *fs_ctx_get(void)
{
	return fuse_get_context()->private_data;
}

int64_t fs_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void fs_parent_of(const char *path, char *out)
{
	const char *slash = strrchr(path, '/');
	size_t n = slash && slash != path ? (size_t)(slash - path) : 1;

	memcpy(out, path, n);
	out[n] = '\0';
}

/* The S3 key of `path` ("" maps the root to the bucket prefix). */
char *fs_key_of(struct fs_ctx *ctx, const char *path, bool dir_marker)
{
	if (strcmp(path, "/") == 0)
		return strdup(ctx->prefix);
	return meta_path_to_key(ctx->prefix, path, dir_marker);
}

/* ---------------------------------------------------------------- listing */

void fs_on_listing_change(void *arg, const char *path, enum meta_change what)
{
	struct fs_ctx *ctx = arg;
	char *key = fs_key_of(ctx, path, false);

	(void)what;
	if (key) {
		cache_invalidate(ctx->cache, key);
		free(key);
	}
}

static int list_pages(struct fs_ctx *ctx, meta_listing *l, const char *prefix,
                      const char *delimiter, int max_pages, bool *complete)
{
	char *token = NULL;
	int pages = 0, r = 0;

	*complete = false;
	for (;;) {
		s3_list_params p = {
		        .prefix = prefix, .delimiter = delimiter, .continuation_token = token};
		s3_list_page page;
		s3_error err;
		meta_object *objs;

		r = s3_list_objects(ctx->s3, &p, &page, &err);
		if (r) {
			char desc[300];
			s3_error_format(&err, desc, sizeof(desc));
			fs_log(FS_LOG_WARNING, "listing %s failed: %s", *prefix ? prefix : "/",
			       desc);
			break;
		}
		objs = calloc(page.n_objects ? page.n_objects : 1, sizeof(*objs));
		if (!objs) {
			s3_list_page_free(&page);
			r = -ENOMEM;
			break;
		}
		for (size_t i = 0; i < page.n_objects; i++) {
			s3_object *o = &page.objects[i];
			objs[i] = (meta_object){.key = o->key,
			                        .size = o->size,
			                        .etag = o->etag,
			                        .last_modified_ns = o->last_modified_ns,
			                        .owner_id = o->owner_id,
			                        .owner_name = o->owner_name};
		}
		r = meta_listing_add_page(l, objs, page.n_objects,
		                          (const char *const *)page.prefixes, page.n_prefixes);
		free(objs);
		pages++;
		free(token);
		token = NULL;
		if (!r && page.truncated && page.next_token)
			token = strdup(page.next_token);
		bool truncated = page.truncated;
		s3_list_page_free(&page);
		if (r)
			break;
		if (!truncated) {
			*complete = true;
			break;
		}
		if (!token) {
			r = -EPROTO; /* truncated, but no way to go on */
			break;
		}
		if (max_pages > 0 && pages >= max_pages)
			break;
	}
	free(token);
	return r;
}

/* Lists `dir` from S3 into the index. */
static int list_dir(struct fs_ctx *ctx, const char *dir)
{
	meta_listing *l = NULL;
	char *prefix = strcmp(dir, "/") == 0 ? strdup(ctx->prefix) : fs_key_of(ctx, dir, true);
	bool complete = false;
	int r;

	if (!prefix)
		return -ENOMEM;
	r = meta_listing_begin(ctx->meta, dir, META_LIST_RECURSIVE, fs_on_listing_change, ctx, &l);
	if (!r)
		r = list_pages(ctx, l, prefix, NULL, ctx->list_flat_pages, &complete);
	if (!r && complete) {
		r = meta_listing_commit(l);
		l = NULL;
	} else if (!r) {
		/* Too big to list flat right now: list this level only. */
		meta_listing_abort(l);
		l = NULL;
		fs_log(FS_LOG_INFO, "%s holds more than %d000 keys: listing it one level at a time",
		       dir, ctx->list_flat_pages);
		r = meta_listing_begin(ctx->meta, dir, 0, fs_on_listing_change, ctx, &l);
		if (!r)
			r = list_pages(ctx, l, prefix, "/", 0, &complete);
		if (!r) {
			r = meta_listing_commit(l);
			l = NULL;
		}
	}
	if (l)
		meta_listing_abort(l);
	if (r == 0 && strcmp(dir, "/") != 0) {
		/* Nothing in S3 at or below dir/: it no longer exists, unless it
		 * holds entries not yet uploaded. */
		meta_entry e = {0};
		if (meta_lookup(ctx->meta, dir, &e) == 0 && !e.local) {
			int d = meta_delete(ctx->meta, dir);
			if (d == 0)
				r = -ENOENT;
		}
		meta_entry_clear(&e);
	}
	free(prefix);
	return r < 0 ? r : 0;
}

/* Makes sure the index holds a listing of `dir` younger than list_ttl.
 * When S3 cannot be reached, an older listing is served (logged). */
int fs_ensure_listed(struct fs_ctx *ctx, const char *dir)
{
	int64_t at = 0;
	int r;

	r = meta_dir_listed_at(ctx->meta, dir, &at);
	if (r == 0 && at && fs_now_ns() - at < ctx->list_ttl_ns)
		return 0;
	pthread_mutex_lock(&ctx->list_lock);
	/* Another thread may have listed it while we waited. */
	r = meta_dir_listed_at(ctx->meta, dir, &at);
	if (r == 0 && at && fs_now_ns() - at < ctx->list_ttl_ns) {
		pthread_mutex_unlock(&ctx->list_lock);
		return 0;
	}
	r = list_dir(ctx, dir);
	pthread_mutex_unlock(&ctx->list_lock);
	if (r && r != -ENOENT && at) {
		fs_log(FS_LOG_WARNING, "serving the older listing of %s", dir);
		return 0;
	}
	return r;
}

/* ---------------------------------------------------------------- HEAD */

static void head_from_meta(const s3_meta *m, meta_head *h)
{
	const char *v;

	memset(h, 0, sizeof(*h));
	if ((v = s3_meta_get(m, "mode")) && fs_parse_mode(v, &h->mode) == 0)
		h->has |= META_HAS_MODE;
	if ((v = s3_meta_get(m, "uid")) && fs_parse_id(v, &h->uid) == 0)
		h->has |= META_HAS_UID;
	if ((v = s3_meta_get(m, "gid")) && fs_parse_id(v, &h->gid) == 0)
		h->has |= META_HAS_GID;
	if ((v = s3_meta_get(m, "mtime")) && fs_parse_time(v, &h->mtime_ns) == 0)
		h->has |= META_HAS_MTIME;
	if ((v = s3_meta_get(m, "ctime")) && fs_parse_time(v, &h->ctime_ns) == 0)
		h->has |= META_HAS_CTIME;
	if ((v = s3_meta_get(m, "atime")) && fs_parse_time(v, &h->atime_ns) == 0)
		h->has |= META_HAS_ATIME;
	if ((v = s3_meta_get(m, "xattr"))) {
		h->xattr = (const unsigned char *)v;
		h->xattr_len = strlen(v);
	}
}

struct small_body {
	char *buf;
	size_t len, cap;
};

static int small_sink(void *arg, uint64_t offset, const void *data, size_t len)
{
	struct small_body *b = arg;

	if (offset + len > b->cap)
		return -EOVERFLOW;
	memcpy(b->buf + offset, data, len);
	if (offset + len > b->len)
		b->len = (size_t)(offset + len);
	return 0;
}

/* Fetches the x-amz-meta-* attributes of entry `e` at `path` and stores them
 * in the index; also fills `e`'s fields so the caller can answer at once. */
static int fetch_head(struct fs_ctx *ctx, const char *path, meta_entry *e)
{
	char *key = fs_key_of(ctx, path, e->is_dir);
	struct small_body body = {0};
	s3_head h = {0};
	s3_error err;
	meta_head mh;
	int r;

	if (!key)
		return -ENOMEM;
	if (!e->is_dir && e->size <= ctx->small_file_size) {
		/* One GET brings the attributes and the content. */
		body.cap = (size_t)e->size;
		body.buf = malloc(body.cap ? body.cap : 1);
		if (!body.buf) {
			free(key);
			return -ENOMEM;
		}
		s3_get_params gp = {0};
		r = s3_get_object(ctx->s3, key, &gp, small_sink, &body, &h, &err);
	} else {
		r = s3_head_object(ctx->s3, key, &h, &err);
	}
	if (r) {
		char desc[300];
		s3_error_format(&err, desc, sizeof(desc));
		fs_log(r == -ENOENT ? FS_LOG_INFO : FS_LOG_WARNING, "attributes of %s: %s", path,
		       desc);
		goto out;
	}
	head_from_meta(&h.meta, &mh);
	if (e->etag && strcmp(h.etag, e->etag) != 0 && h.size == e->size && !e->local &&
	    h.last_modified_ns / 1000000000 == e->last_modified_ns / 1000000000) {
		/* The same version under another ETag spelling: Swift lists the
		 * MD5 of a server-side copied multipart object but answers HEAD
		 * and GET with "...-N".  Reads are pinned to the ETag GET
		 * honours, so the index takes the HEAD's. */
		meta_entry fixed = *e;
		fixed.etag = h.etag;
		fixed.head_etag = NULL;
		if (meta_upsert(ctx->meta, path, &fixed) == 0) {
			fs_log(FS_LOG_DEBUG, "%s: listed ETag %s, HEAD says %s: using the latter",
			       path, e->etag, h.etag);
			free(e->etag);
			e->etag = strdup(h.etag);
		}
	}
	if (e->etag && strcmp(h.etag, e->etag) != 0) {
		/* Changed since it was listed: answer with what we saw, store
		 * nothing; the next listing will catch up. */
		fs_log(FS_LOG_DEBUG, "%s changed since listed (%s -> %s)", path, e->etag, h.etag);
	} else {
		int s = meta_set_head(ctx->meta, path, h.etag, &mh);
		if (s && s != -ESTALE && s != -ENOENT)
			fs_log(FS_LOG_WARNING, "storing attributes of %s: %s", path, strerror(-s));
		if (body.buf && h.size == body.len) {
			if ((mh.has & META_HAS_MODE) && S_ISLNK(mh.mode)) {
				char *target = strndup(body.buf, body.len);
				if (target &&
				    meta_set_symlink(ctx->meta, path, h.etag, target) == 0) {
					free(e->symlink);
					e->symlink = target;
					target = NULL;
				}
				free(target);
			}
			if (cache_put(ctx->cache, key, h.etag, h.size, 0, body.buf, body.len))
				fs_log(FS_LOG_DEBUG, "caching %s failed", path);
		}
	}
	e->has = mh.has;
	e->mode = mh.mode;
	e->uid = mh.uid;
	e->gid = mh.gid;
	e->mtime_ns = mh.mtime_ns;
	e->ctime_ns = mh.ctime_ns;
	e->atime_ns = mh.atime_ns;
	free(e->head_etag);
	e->head_etag = strdup(h.etag);
out:
	s3_head_clear(&h);
	free(body.buf);
	free(key);
	return r;
}

static bool needs_head(const meta_entry *e)
{
	if (e->local)
		return false;
	if (e->is_dir && !e->dir_marker)
		return false; /* an implicit directory has no object to ask */
	if (!e->etag)
		return false;
	return !e->head_etag || strcmp(e->head_etag, e->etag) != 0;
}

/* ---------------------------------------------------------------- attributes */

static void ts_from_ns(struct timespec *ts, int64_t ns)
{
	ts->tv_sec = (time_t)(ns / 1000000000);
	ts->tv_nsec = (long)(ns % 1000000000);
	if (ts->tv_nsec < 0) {
		ts->tv_nsec += 1000000000;
		ts->tv_sec--;
	}
}

void fs_fill_stat(struct fs_ctx *ctx, const meta_entry *e, struct stat *st)
{
	int64_t mtime;

	memset(st, 0, sizeof(*st));
	if (e->is_dir) {
		st->st_mode =
		        S_IFDIR | ((e->has & META_HAS_MODE) ? (e->mode & 07777) : ctx->dir_mode);
		st->st_nlink = 2;
		st->st_size = 4096;
	} else {
		mode_t type = (e->has & META_HAS_MODE) && S_ISLNK(e->mode) ? S_IFLNK : S_IFREG;
		st->st_mode =
		        type | ((e->has & META_HAS_MODE) ? (e->mode & 07777) : ctx->file_mode);
		st->st_nlink = 1;
		st->st_size = (off_t)e->size;
	}
	st->st_uid = (e->has & META_HAS_UID) ? e->uid : ctx->uid;
	st->st_gid = (e->has & META_HAS_GID) ? e->gid : ctx->gid;
	mtime = (e->has & META_HAS_MTIME) ? e->mtime_ns : e->last_modified_ns;
	ts_from_ns(&st->st_mtim, mtime);
	ts_from_ns(&st->st_ctim, (e->has & META_HAS_CTIME) ? e->ctime_ns : mtime);
	ts_from_ns(&st->st_atim, (e->has & META_HAS_ATIME) ? e->atime_ns : mtime);
	st->st_blksize = FS_BLKSIZE;
	st->st_blocks = (blkcnt_t)((e->size + 511) / 512);
}

/* Finds `path` in a fresh listing of its parent (or a fresh probe of it
 * alone), with its attributes. */
int fs_lookup(struct fs_ctx *ctx, const char *path, meta_entry *e)
{
	size_t len = strlen(path);
	char parent[len + 1];
	int r = 0;

	memset(e, 0, sizeof(*e));
	if (len > 1 && path[len - 1] == '/')
		return -ENOENT;
	/* A component longer than NAME_MAX can be no key's: say so, as
	 * POSIX does, before the index refuses it as malformed. */
	for (const char *c = path; *c;) {
		const char *end = strchrnul(++c, '/');
		if (end - c > META_NAME_MAX)
			return -ENAMETOOLONG;
		c = end;
	}
	if (strcmp(path, "/") != 0) {
		fs_parent_of(path, parent);
		r = fs_find(ctx, parent, path, e);
		if (r < 0)
			return r;
	}
	if (r != 1) {
		r = meta_lookup(ctx->meta, path, e);
		if (r)
			return r;
	}
	if (needs_head(e)) {
		r = fetch_head(ctx, path, e);
		if (r == -ENOENT) {
			meta_entry_clear(e);
			return -ENOENT;
		}
		/* Other failures: answer with the defaults, try again later. */
	}
	return 0;
}

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = fs_ctx_get();
	meta_entry e;
	int r;

	fs_readahead_apply();
	/* With a handle, answer from the open file: it may be unlinked, and
	 * its size is the writer's, not yet the index's. */
	if (fi)
		return fs_fgetattr(ctx, fi, st);
	if (strncmp(fs_base_of(path), ".fuse_hidden", 12) == 0 &&
	    fs_wb_hidden_stat(ctx, path, st, false) == 0)
		return 0;
	r = fs_lookup(ctx, path, &e);
	if (r)
		return r;
	if (!e.is_dir)
		fs_wb_overlay(ctx, path, &e);
	fs_fill_stat(ctx, &e, st);
	meta_entry_clear(&e);
	return 0;
}

/* ---------------------------------------------------------------- attributes out */

void fs_entry_complete(struct fs_ctx *ctx, meta_entry *e)
{
	int64_t mtime;

	if (!(e->has & META_HAS_MODE))
		e->mode = e->is_dir ? (S_IFDIR | ctx->dir_mode) : (S_IFREG | ctx->file_mode);
	if (e->is_dir)
		e->mode = S_IFDIR | (e->mode & 07777);
	if (!(e->has & META_HAS_UID))
		e->uid = ctx->uid;
	if (!(e->has & META_HAS_GID))
		e->gid = ctx->gid;
	mtime = (e->has & META_HAS_MTIME) ? e->mtime_ns : e->last_modified_ns;
	if (!mtime)
		mtime = fs_now_ns();
	e->mtime_ns = mtime;
	if (!(e->has & META_HAS_CTIME))
		e->ctime_ns = mtime;
	if (!(e->has & META_HAS_ATIME))
		e->atime_ns = mtime;
	e->has |= META_HAS_MODE | META_HAS_UID | META_HAS_GID | META_HAS_MTIME | META_HAS_CTIME |
	          META_HAS_ATIME;
}

int fs_entry_to_s3meta(const meta_entry *e, s3_meta *m)
{
	char buf[40];
	int r;

	snprintf(buf, sizeof(buf), "%u", (unsigned)e->mode);
	r = s3_meta_set(m, "mode", buf);
	snprintf(buf, sizeof(buf), "%u", (unsigned)e->uid);
	r = r ? r : s3_meta_set(m, "uid", buf);
	snprintf(buf, sizeof(buf), "%u", (unsigned)e->gid);
	r = r ? r : s3_meta_set(m, "gid", buf);
	fs_format_time(e->mtime_ns, buf, sizeof(buf));
	r = r ? r : s3_meta_set(m, "mtime", buf);
	fs_format_time(e->ctime_ns, buf, sizeof(buf));
	r = r ? r : s3_meta_set(m, "ctime", buf);
	fs_format_time(e->atime_ns, buf, sizeof(buf));
	r = r ? r : s3_meta_set(m, "atime", buf);
	if (!r && e->xattr && e->xattr_len) {
		char *v = strndup((const char *)e->xattr, e->xattr_len);
		r = v ? s3_meta_set(m, "xattr", v) : -ENOMEM;
		free(v);
	}
	return r;
}

void fs_log_s3(int level, const char *what, const char *path, const s3_error *err)
{
	char desc[300];

	s3_error_format(err, desc, sizeof(desc));
	fs_log(level, "%s %s: %s", what, path, desc);
}

const char *fs_base_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

/* ---------------------------------------------------------------- readdir */

struct dir_list {
	meta_entry *v;
	size_t n, cap;
	char *dir;
	int next; /* next entry for the HEAD workers */
	pthread_mutex_t lock;
	struct fs_ctx *ctx;
	bool ahead; /* the walk-ahead thread's: skip what others fetch */
};

/*
 * Walk-ahead.  A recursive walk (ls -lR, find, du, rsync) reads a directory,
 * then its subdirectories one after the other, and each readdir fetches the
 * missing attributes of its own entries; alone, that leaves the server idle
 * while the walker moves on.  So when a readdir looks like the next step of
 * a depth-first walk (its parent is the previous directory read or one of
 * its ancestors), one background thread fetches the missing attributes of
 * the next WALK_AHEAD siblings, head_parallel at a time (listing those
 * never listed first).  It never goes further than WALK_AHEAD directories
 * past the walker, and an attribute fetch in flight is never made twice: a
 * readdir that needs it waits for it.
 */
#define WALK_AHEAD 8

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond; /* work for the thread; a fetch in flight ended */
	struct fs_ctx *ctx;
	pthread_t thread;
	bool running, stop;
	char *last_dir; /* the directory read last */
	char *parent;   /* the walk: children of parent, in name order */
	char *ahead;    /* the last child handed to the thread */
	int budget;     /* children the thread may still prefetch */
	char **inflight;
	size_t n_inflight, cap_inflight;
} walk = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static bool walk_inflight_locked(const char *path)
{
	for (size_t i = 0; i < walk.n_inflight; i++)
		if (strcmp(walk.inflight[i], path) == 0)
			return true;
	return false;
}

/* Claims the fetch of path's attributes.  false: another thread has it in
 * flight; with `wait`, returns only once that fetch ended. */
static bool head_claim(const char *path, bool wait)
{
	bool mine = false;

	pthread_mutex_lock(&walk.lock);
	if (walk_inflight_locked(path)) {
		while (wait && walk_inflight_locked(path))
			pthread_cond_wait(&walk.cond, &walk.lock);
	} else {
		char *copy = strdup(path);
		if (walk.n_inflight == walk.cap_inflight) {
			size_t cap = walk.cap_inflight ? walk.cap_inflight * 2 : 32;
			char **v = realloc(walk.inflight, cap * sizeof(*v));
			if (v) {
				walk.inflight = v;
				walk.cap_inflight = cap;
			}
		}
		/* Out of memory: fetch unclaimed (at worst twice). */
		if (copy && walk.n_inflight < walk.cap_inflight)
			walk.inflight[walk.n_inflight++] = copy;
		else
			free(copy);
		mine = true;
	}
	pthread_mutex_unlock(&walk.lock);
	return mine;
}

static void head_release(const char *path)
{
	pthread_mutex_lock(&walk.lock);
	for (size_t i = 0; i < walk.n_inflight; i++) {
		if (strcmp(walk.inflight[i], path) == 0) {
			free(walk.inflight[i]);
			walk.inflight[i] = walk.inflight[--walk.n_inflight];
			break;
		}
	}
	pthread_cond_broadcast(&walk.cond);
	pthread_mutex_unlock(&walk.lock);
}

/* Takes the attributes another thread stored for `path` into *e. */
static void head_refresh(struct fs_ctx *ctx, const char *path, meta_entry *e)
{
	meta_entry f;

	if (meta_lookup(ctx->meta, path, &f) != 0)
		return;
	if (f.etag && e->etag && strcmp(f.etag, e->etag) == 0 && !needs_head(&f)) {
		e->has = f.has;
		e->mode = f.mode;
		e->uid = f.uid;
		e->gid = f.gid;
		e->mtime_ns = f.mtime_ns;
		e->ctime_ns = f.ctime_ns;
		e->atime_ns = f.atime_ns;
		free(e->head_etag);
		e->head_etag = f.head_etag;
		f.head_etag = NULL;
	}
	meta_entry_clear(&f);
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static int collect_entry(void *arg, const meta_entry *e)
{
	struct dir_list *dl = arg;
	meta_entry *c;

	if (dl->n == dl->cap) {
		size_t cap = dl->cap ? dl->cap * 2 : 64;
		meta_entry *v = realloc(dl->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		dl->v = v;
		dl->cap = cap;
	}
	c = &dl->v[dl->n];
	*c = *e;
	/* Only what fill_stat and needs_head read; no xattrs. */
	c->name = strdup(e->name);
	c->etag = dup_or_null(e->etag);
	c->head_etag = dup_or_null(e->head_etag);
	c->owner_id = c->owner_name = c->permissions = NULL;
	c->symlink = NULL;
	c->xattr = NULL;
	c->xattr_len = 0;
	if (!c->name) {
		free(c->etag);
		free(c->head_etag);
		return -ENOMEM;
	}
	dl->n++;
	return 0;
}

static char *child_path(const char *dir, const char *name)
{
	char *p;

	if (asprintf(&p, "%s%s%s", dir, strcmp(dir, "/") == 0 ? "" : "/", name) < 0)
		return NULL;
	return p;
}

static void *head_worker(void *arg)
{
	struct dir_list *dl = arg;

	for (;;) {
		size_t i;

		pthread_mutex_lock(&dl->lock);
		while ((size_t)dl->next < dl->n && !needs_head(&dl->v[dl->next]))
			dl->next++;
		i = (size_t)dl->next++;
		pthread_mutex_unlock(&dl->lock);
		if (i >= dl->n)
			break;
		char *p = child_path(dl->dir, dl->v[i].name);
		if (!p)
			continue;
		if (!head_claim(p, !dl->ahead)) {
			/* Fetched by another thread meanwhile (the walk-ahead
			 * skips it: its owner stores it). */
			if (!dl->ahead)
				head_refresh(dl->ctx, p, &dl->v[i]);
			free(p);
			continue;
		}
		/* Stored by another fetch since this list was read? */
		head_refresh(dl->ctx, p, &dl->v[i]);
		if (needs_head(&dl->v[i]))
			(void)fetch_head(dl->ctx, p, &dl->v[i]);
		head_release(p);
		free(p);
	}
	return NULL;
}

/* HEADs (or small GETs) for every entry that lacks its attributes, with up to
 * head_parallel requests in flight. */
static void fetch_heads(struct fs_ctx *ctx, struct dir_list *dl)
{
	size_t missing = 0;
	pthread_t th[64];
	int nth = 0;

	for (size_t i = 0; i < dl->n; i++)
		missing += needs_head(&dl->v[i]);
	if (!missing)
		return;
	int want = ctx->head_parallel < 64 ? ctx->head_parallel : 64;
	if ((size_t)want > missing)
		want = (int)missing;
	for (int i = 1; i < want; i++)
		if (pthread_create(&th[nth], NULL, head_worker, dl) == 0)
			nth++;
	head_worker(dl);
	for (int i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
}

static void dir_list_free(struct dir_list *dl)
{
	for (size_t i = 0; i < dl->n; i++)
		meta_entry_clear(&dl->v[i]);
	free(dl->v);
	dl->v = NULL;
	dl->n = dl->cap = 0;
}

/* The walk-ahead thread's work on one sibling directory. */
static void walk_prefetch_dir(struct fs_ctx *ctx, const char *dir)
{
	struct dir_list dl = {.ctx = ctx, .dir = (char *)dir, .ahead = true};
	int64_t at = 0;

	/* Usually listed already, by a flat listing of an ancestor.  Never
	 * listed (a bucket too big to list flat): listed here, ahead of the
	 * walker.  Listed but expired: left to the walker, which relists it
	 * when it gets there (listing it now could make it list twice). */
	if (meta_dir_listed_at(ctx->meta, dir, &at) != 0)
		return;
	if (at && fs_now_ns() - at >= ctx->list_ttl_ns)
		return;
	if (!at && fs_ensure_listed(ctx, dir) != 0)
		return;
	pthread_mutex_init(&dl.lock, NULL);
	if (meta_readdir(ctx->meta, dir, NULL, collect_entry, &dl) == 0)
		fetch_heads(ctx, &dl);
	dir_list_free(&dl);
	pthread_mutex_destroy(&dl.lock);
}

static int first_subdir(void *arg, const meta_entry *e)
{
	char **name = arg;

	if (!e->is_dir)
		return 0;
	*name = strdup(e->name);
	return *name ? 1 : -ENOMEM;
}

static bool same_str(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

static void *walk_thread(void *arg)
{
	struct fs_ctx *ctx = arg;

	pthread_mutex_lock(&walk.lock);
	while (!walk.stop) {
		if (!walk.parent || walk.budget <= 0) {
			pthread_cond_wait(&walk.cond, &walk.lock);
			continue;
		}
		char *parent = strdup(walk.parent);
		char *after = walk.ahead ? strdup(walk.ahead) : NULL;
		char *name = NULL, *dir = NULL;
		bool oom = !parent || (walk.ahead && !after);
		pthread_mutex_unlock(&walk.lock);
		int r = oom ? -ENOMEM : meta_readdir(ctx->meta, parent, after, first_subdir, &name);
		pthread_mutex_lock(&walk.lock);
		if (same_str(walk.parent, parent) && same_str(walk.ahead, after)) {
			if (r < 0 || !name) {
				walk.budget = 0; /* no sibling left, or no way on */
			} else {
				free(walk.ahead);
				walk.ahead = strdup(name);
				walk.budget--;
				dir = child_path(parent, name);
			}
		}
		pthread_mutex_unlock(&walk.lock);
		if (dir)
			walk_prefetch_dir(ctx, dir);
		free(dir);
		free(name);
		free(parent);
		free(after);
		pthread_mutex_lock(&walk.lock);
	}
	pthread_mutex_unlock(&walk.lock);
	return NULL;
}

static void set_str(char **slot, const char *s)
{
	free(*slot);
	*slot = s ? strdup(s) : NULL;
}

/* Tells the walk-ahead that `path` is being read. */
static void walk_note_readdir(struct fs_ctx *ctx, const char *path)
{
	size_t len = strlen(path);
	char parent[len + 1];
	const char *name = fs_base_of(path);

	pthread_mutex_lock(&walk.lock);
	if (walk.stop) {
		pthread_mutex_unlock(&walk.lock);
		return;
	}
	if (strcmp(path, "/") != 0) {
		fs_parent_of(path, parent);
		size_t plen = strlen(parent);
		/* A step of a depth-first walk: the parent is the directory
		 * read last or one of its ancestors. */
		bool step = walk.last_dir &&
		            (plen == 1 ||
		             (strncmp(walk.last_dir, parent, plen) == 0 &&
		              (walk.last_dir[plen] == '/' || walk.last_dir[plen] == '\0')));
		if (walk.parent && strcmp(walk.parent, parent) == 0) {
			if (!walk.ahead || strcmp(name, walk.ahead) > 0) {
				set_str(&walk.ahead, name); /* the walker overtook it */
				walk.budget = WALK_AHEAD;
			} else if (walk.budget < WALK_AHEAD) {
				walk.budget++;
			}
		} else if (step) {
			set_str(&walk.parent, parent);
			set_str(&walk.ahead, name);
			walk.budget = WALK_AHEAD;
		}
	}
	set_str(&walk.last_dir, path);
	if (walk.parent && walk.budget > 0 && !walk.running) {
		walk.ctx = ctx;
		walk.running = pthread_create(&walk.thread, NULL, walk_thread, ctx) == 0;
	}
	pthread_cond_broadcast(&walk.cond);
	pthread_mutex_unlock(&walk.lock);
}

/* Unmount: stops the walk-ahead thread (a fetch in flight completes). */
static void walk_stop(void)
{
	bool running;

	pthread_mutex_lock(&walk.lock);
	walk.stop = true;
	running = walk.running;
	pthread_cond_broadcast(&walk.cond);
	pthread_mutex_unlock(&walk.lock);
	if (running)
		pthread_join(walk.thread, NULL);
	pthread_mutex_lock(&walk.lock);
	walk.running = false;
	set_str(&walk.last_dir, NULL);
	set_str(&walk.parent, NULL);
	set_str(&walk.ahead, NULL);
	if (walk.n_inflight == 0) { /* no FUSE request runs at unmount */
		free(walk.inflight);
		walk.inflight = NULL;
		walk.cap_inflight = 0;
	}
	pthread_mutex_unlock(&walk.lock);
}

/* With nullpath_ok, readdir gets no path: opendir keeps it in the handle. */
static int fs_opendir(const char *path, struct fuse_file_info *fi)
{
	char *copy = strdup(path);

	if (!copy)
		return -ENOMEM;
	fi->fh = (uint64_t)(uintptr_t)copy;
	return 0;
}

static int fs_releasedir(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	free((char *)(uintptr_t)fi->fh);
	return 0;
}

static int fs_readdir(const char *path_arg, void *buf, fuse_fill_dir_t filler, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	struct fs_ctx *ctx = fs_ctx_get();
	const char *path = path_arg ? path_arg : (const char *)(uintptr_t)fi->fh;
	struct dir_list dl = {.ctx = ctx, .dir = (char *)path};
	meta_entry self;
	struct stat st;
	int r;

	(void)off;
	(void)fi;
	r = fs_lookup(ctx, path, &self);
	if (r)
		return r;
	if (!self.is_dir) {
		meta_entry_clear(&self);
		return -ENOTDIR;
	}
	r = fs_ensure_listed(ctx, path);
	if (r) {
		meta_entry_clear(&self);
		return r;
	}
	walk_note_readdir(ctx, path);
	pthread_mutex_init(&dl.lock, NULL);
	r = meta_readdir(ctx->meta, path, NULL, collect_entry, &dl);
	if (!r && (flags & FUSE_READDIR_PLUS))
		fetch_heads(ctx, &dl);
	if (!r) {
		fs_fill_stat(ctx, &self, &st);
		filler(buf, ".", &st, 0, FUSE_FILL_DIR_PLUS);
		filler(buf, "..", NULL, 0, 0);
		for (size_t i = 0; i < dl.n; i++) {
			bool known = !needs_head(&dl.v[i]);
			if (!dl.v[i].is_dir) {
				char *p = child_path(path, dl.v[i].name);
				if (p)
					fs_wb_overlay(ctx, p, &dl.v[i]);
				free(p);
			}
			fs_fill_stat(ctx, &dl.v[i], &st);
			if (filler(buf, dl.v[i].name, &st, 0, known ? FUSE_FILL_DIR_PLUS : 0))
				break;
		}
	}
	dir_list_free(&dl);
	pthread_mutex_destroy(&dl.lock);
	meta_entry_clear(&self);
	return r;
}

static int fs_readlink(const char *path, char *buf, size_t size)
{
	struct fs_ctx *ctx = fs_ctx_get();
	meta_entry e;
	int r;

	r = fs_lookup(ctx, path, &e);
	if (r)
		return r;
	if (e.is_dir || !(e.has & META_HAS_MODE) || !S_ISLNK(e.mode)) {
		meta_entry_clear(&e);
		return -EINVAL;
	}
	if (!e.symlink) {
		/* A large "symlink" (over small_file_size): read it now. */
		char *key = fs_key_of(ctx, path, false);
		char target[PATH_MAX];
		size_t got = 0;
		s3_error err;
		s3_get_params gp = {.if_match = e.etag};
		r = key ? s3_get_object_buf(ctx->s3, key, &gp, target, sizeof(target) - 1, &got,
		                            NULL, &err)
		        : -ENOMEM;
		free(key);
		if (r) {
			meta_entry_clear(&e);
			return r == -EOVERFLOW ? -ENAMETOOLONG : r;
		}
		target[got] = '\0';
		e.symlink = strdup(target);
		if (e.symlink && meta_set_symlink(ctx->meta, path, e.etag, e.symlink))
			fs_log(FS_LOG_DEBUG, "could not store the target of %s", path);
	}
	snprintf(buf, size, "%s", e.symlink ? e.symlink : "");
	meta_entry_clear(&e);
	return 0;
}

static int fs_statfs(const char *path, struct statvfs *sv)
{
	(void)path;
	memset(sv, 0, sizeof(*sv));
	/* A bucket has no size limit; report plenty, as s3fs does. */
	sv->f_bsize = FS_BLKSIZE;
	sv->f_frsize = FS_BLKSIZE;
	sv->f_blocks = (fsblkcnt_t)1 << 32;
	sv->f_bfree = sv->f_blocks;
	sv->f_bavail = sv->f_blocks;
	sv->f_files = (fsfilcnt_t)1 << 32;
	sv->f_ffree = sv->f_files;
	sv->f_favail = sv->f_files;
	sv->f_namemax = META_NAME_MAX;
	return 0;
}

static int fs_access(const char *path, int mask)
{
	struct fs_ctx *ctx = fs_ctx_get();
	struct fuse_context *fc = fuse_get_context();
	struct stat st;
	meta_entry e;
	int r;

	r = fs_lookup(ctx, path, &e);
	if (r)
		return r;
	fs_fill_stat(ctx, &e, &st);
	meta_entry_clear(&e);
	if ((mask & W_OK) && ctx->ro)
		return -EROFS;
	if (mask == F_OK || fc->uid == 0) {
		if ((mask & X_OK) && !S_ISDIR(st.st_mode) && !(st.st_mode & 0111))
			return -EACCES;
		return 0;
	}
	mode_t bits = st.st_mode & 07;
	if (fc->uid == st.st_uid)
		bits = (st.st_mode >> 6) & 07;
	else if (fc->gid == st.st_gid)
		bits = (st.st_mode >> 3) & 07;
	if (((mask & R_OK) && !(bits & 4)) || ((mask & W_OK) && !(bits & 2)) ||
	    ((mask & X_OK) && !(bits & 1)))
		return -EACCES;
	return 0;
}

/* ---------------------------------------------------------------- xattrs */

char *fs_stats_text(struct fs_ctx *ctx)
{
	s3_stats s;
	cache_stats c;
	char *out = NULL;
	int64_t entries = meta_count_entries(ctx->meta);

	s3_client_stats(ctx->s3, &s);
	cache_get_stats(ctx->cache, &c);
	if (asprintf(&out,
	             "requests_list %" PRIu64 "\nrequests_head %" PRIu64 "\nrequests_get %" PRIu64
	             "\nrequests_put %" PRIu64 "\nrequests_copy %" PRIu64
	             "\nrequests_delete %" PRIu64 "\nrequests_multipart %" PRIu64
	             "\nrequests_other %" PRIu64 "\nretries %" PRIu64 "\nerrors %" PRIu64
	             "\nbytes_down %" PRIu64 "\nbytes_up %" PRIu64 "\ncache_hit_bytes %" PRIu64
	             "\ncache_miss_bytes %" PRIu64 "\ncache_stream_bytes %" PRIu64
	             "\ncache_evicted_bytes %" PRIu64 "\ncache_bytes %" PRIu64
	             "\ncache_cap_bytes %" PRIu64 "\ncache_prefetch_blocks %" PRIu64
	             "\ncache_dirty_bytes %" PRIu64 "\nindex_entries %" PRId64 "\n",
	             s.requests[S3_REQ_LIST], s.requests[S3_REQ_HEAD], s.requests[S3_REQ_GET],
	             s.requests[S3_REQ_PUT], s.requests[S3_REQ_COPY], s.requests[S3_REQ_DELETE],
	             s.requests[S3_REQ_MULTIPART], s.requests[S3_REQ_OTHER], s.retries, s.errors,
	             s.bytes_down, s.bytes_up, c.hit_bytes, c.miss_bytes, c.stream_bytes,
	             c.evicted_bytes, c.current_bytes, c.cap_bytes, c.prefetch_count, c.dirty_bytes,
	             entries) < 0)
		return NULL;
	return out;
}

/* ---------------------------------------------------------------- fetch */

struct fetch_sink {
	int fd;
	uint64_t fd_base, obj_base, len;
	uint64_t got; /* bytes [0, got) of the range are written */
	cache_progress *progress;
};

/* Writes a GET body into the cache's file and tells the cache how far it
 * got, so that it serves each block of a long read-ahead as it arrives. */
static int fetch_sink_write(void *arg, uint64_t offset, const void *data, size_t len)
{
	struct fetch_sink *f = arg;
	uint64_t rel = offset - f->obj_base;
	const char *p = data;

	if (rel + len > f->len)
		return -EOVERFLOW;
	if (rel + len <= f->got)
		return 0; /* delivered again after a retry: written already */
	if (rel < f->got) {
		p += f->got - rel;
		len -= (size_t)(f->got - rel);
		rel = f->got;
	}
	if (rel != f->got)
		return -EIO; /* a gap: the body is not what was asked for */
	while (len) {
		ssize_t n = pwrite(f->fd, p, len, (off_t)(f->fd_base + rel));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
		rel += (uint64_t)n;
	}
	f->got = rel;
	return f->progress ? cache_fetch_progress(f->progress, f->got) : 0;
}

int fs_fetch(void *arg, const char *key, const char *etag, uint64_t off, uint64_t len, int fd,
             uint64_t fd_off, cache_progress *progress)
{
	struct fs_ctx *ctx = arg;
	s3_get_params gp = {.offset = off, .length = len, .if_match = etag && *etag ? etag : NULL};
	struct fetch_sink sink = {
	        .fd = fd, .fd_base = fd_off, .obj_base = off, .len = len, .progress = progress};
	s3_error err;
	int r;

	if (!len)
		return 0;
	r = s3_get_object(ctx->s3, key, &gp, fetch_sink_write, &sink, NULL, &err);
	if (r) {
		char desc[300];
		s3_error_format(&err, desc, sizeof(desc));
		fs_log(r == -ESTALE ? FS_LOG_INFO : FS_LOG_WARNING, "reading %s: %s", key, desc);
		return r;
	}
	return sink.got == len ? 0 : -EIO;
}

/* ---------------------------------------------------------------- init */

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	/* The kernel's cached pages of a file are dropped at an open that does
	 * not keep them (auto_cache below: size or mtime changed since the
	 * last open; see wb_keep_cache in write.c), not at every attribute
	 * refresh that shows a new mtime (auto_inval_data, libfuse's default):
	 * that drop races with a write in flight on another handle of the
	 * file - the kernel has copied the write into its page, the daemon
	 * does not have it yet, a read fetches the page again with the old
	 * bytes and the writer reads back what it did not write.  A handle
	 * reads one version of a file (its ETag), so attribute changes seen
	 * while it is open need not drop anything. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	cfg->use_ino = 0;
	/* An open file that is unlinked is renamed by libfuse to .fuse_hidden*
	 * (hard_remove would make fstat and ftruncate on it fail); fs_rename
	 * turns that rename into a delete in S3 and keeps the file in memory.
	 * Handle operations need no path: they get NULL. */
	cfg->hard_remove = 0;
	cfg->nullpath_ok = 1;
	/* The index answers quickly; keep the kernel's attribute cache short so
	 * that a relisting after list_ttl shows through. */
	cfg->entry_timeout = 1.0;
	cfg->attr_timeout = 1.0;
	cfg->negative_timeout = 0.0;
	/* Keep cached pages across opens unless size or mtime changed. */
	cfg->auto_cache = 1;
	return fuse_get_context()->private_data;
}

static void fs_destroy(void *private_data)
{
	/* Unmount: wait (bounded) for uploads; what remains stays journaled. */
	walk_stop();
	fs_wb_stop(private_data);
}

const struct fuse_operations fs_operations = {
        .init = fs_init,
        .destroy = fs_destroy,
        .getattr = fs_getattr,
        .opendir = fs_opendir,
        .readdir = fs_readdir,
        .releasedir = fs_releasedir,
        .open = fs_open,
        .create = fs_create,
        .read = fs_read,
        .write = fs_write,
        .truncate = fs_truncate,
        .flush = fs_flush,
        .fsync = fs_fsync,
        .release = fs_release,
        .mknod = fs_mknod,
        .mkdir = fs_mkdir,
        .unlink = fs_unlink,
        .rmdir = fs_rmdir,
        .symlink = fs_symlink,
        .readlink = fs_readlink,
        .rename = fs_rename,
        .link = fs_link,
        .chmod = fs_chmod,
        .chown = fs_chown,
        .utimens = fs_utimens,
        .statfs = fs_statfs,
        .access = fs_access,
        .setxattr = fs_setxattr,
        .getxattr = fs_getxattr,
        .listxattr = fs_listxattr,
        .removexattr = fs_removexattr,
};
