/*
 * dirops.c - operations on names and attributes: mknod, mkdir, unlink,
 * rmdir, symlink, rename, chmod, chown, utimens and the user.* extended
 * attributes.  Each one is done in S3 before it returns (these are
 * synchronous in every file system tool's expectations: mkdir -p, mv, chmod
 * report failures), then recorded in the index.
 *
 * Attributes travel as s3fs writes them (see attr.h); an object's attributes
 * change by a copy onto itself with REPLACE, which keeps the content type
 * and any x-amz-meta-* header another tool put there.  A file whose data is
 * not uploaded yet only changes in the index: its upload carries them.
 *
 * Hard links cannot exist in S3: link() is EPERM.  The parent directory's
 * mtime/ctime change on create/unlink/rename in the index only (writing them
 * to S3 would cost one more copy per change, as s3fs does only with
 * update_parent_dir_stat); they reach S3 with the directory's next
 * attribute change (chmod, chown, utimens, xattr).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "attr.h"
#include "fs.h"
#include "ops.h"

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static struct fs_ctx *dir_ctx(void)
{
	return fuse_get_context()->private_data;
}

/* A new entry's attributes: the caller's uid/gid, now. */
static void dir_new_entry(meta_entry *e, mode_t mode, bool is_dir)
{
	struct fuse_context *fc = fuse_get_context();
	int64_t now = fs_now_ns();

	memset(e, 0, sizeof(*e));
	e->is_dir = is_dir;
	e->dir_marker = is_dir;
	e->has = META_HAS_MODE | META_HAS_UID | META_HAS_GID | META_HAS_MTIME | META_HAS_CTIME |
	         META_HAS_ATIME;
	e->mode = (uint32_t)mode;
	e->uid = fc->uid;
	e->gid = fc->gid;
	e->mtime_ns = e->ctime_ns = e->atime_ns = now;
	e->last_modified_ns = now;
}

void fs_dir_touch(struct fs_ctx *ctx, const char *child)
{
	size_t len = strlen(child);
	char parent[len + 1];
	meta_entry e;
	int r;

	fs_parent_of(child, parent);
	if (strcmp(parent, "/") == 0)
		return;
	/* Its attributes from S3 first (a HEAD, once per version of its
	 * marker): a HEAD later would replace the times set here. */
	if (fs_lookup(ctx, parent, &e) == 0)
		meta_entry_clear(&e);
	r = meta_set_dir_times(ctx->meta, parent, fs_now_ns());
	if (r && r != -ENOENT)
		fs_log(FS_LOG_DEBUG, "%s: could not update its mtime: %s", parent, strerror(-r));
}

/* The parent of path exists and is a directory; path itself does not
 * exist (-EEXIST). */
static int dir_check_new(struct fs_ctx *ctx, const char *path)
{
	size_t len = strlen(path);
	char parent[len + 1];
	meta_entry e;
	int r;

	if (ctx->ro)
		return -EROFS;
	fs_parent_of(path, parent);
	r = fs_lookup(ctx, parent, &e);
	if (r)
		return r;
	bool isdir = e.is_dir;
	meta_entry_clear(&e);
	if (!isdir)
		return -ENOTDIR;
	r = fs_lookup(ctx, path, &e);
	if (r == 0) {
		meta_entry_clear(&e);
		return -EEXIST;
	}
	return r == -ENOENT ? 0 : r;
}

/* PUTs a small object (content `body`) for entry e at path and records it. */
static int dir_put_entry(struct fs_ctx *ctx, const char *path, meta_entry *e, const char *body,
                         size_t len)
{
	char *key = fs_key_of(ctx, path, e->is_dir);
	char etag[S3_ETAG_MAX];
	s3_meta sm = {0};
	s3_error err;
	int r;

	if (!key)
		return -ENOMEM;
	r = fs_entry_to_s3meta(e, &sm);
	if (!r) {
		s3_put_opts o = {.meta = &sm};
		r = s3_put_object_buf(ctx->s3, key, body, len, &o, etag, &err);
		if (r)
			fs_log_s3(FS_LOG_WARNING, "creating", path, &err);
	}
	if (!r) {
		e->etag = etag;
		e->head_etag = etag;
		e->size = len;
		e->last_modified_ns = 0; /* unknown: the next listing brings it */
		r = meta_upsert(ctx->meta, path, e);
		e->etag = e->head_etag = NULL;
	}
	s3_meta_clear(&sm);
	free(key);
	return r;
}

int fs_mknod(const char *path, mode_t mode, dev_t rdev)
{
	struct fs_ctx *ctx = dir_ctx();
	meta_entry e;
	int r;

	(void)rdev;
	/* FIFOs, sockets and devices cannot live in a bucket. */
	if (!S_ISREG(mode))
		return -EPERM;
	r = dir_check_new(ctx, path);
	if (r)
		return r;
	dir_new_entry(&e, S_IFREG | (mode & 07777), false);
	r = dir_put_entry(ctx, path, &e, "", 0);
	if (!r)
		fs_dir_touch(ctx, path);
	return r;
}

int fs_mkdir(const char *path, mode_t mode)
{
	struct fs_ctx *ctx = dir_ctx();
	meta_entry e;
	int r;

	r = dir_check_new(ctx, path);
	if (r)
		return r;
	dir_new_entry(&e, S_IFDIR | (mode & 07777), true);
	r = dir_put_entry(ctx, path, &e, "", 0);
	if (!r) {
		/* Nothing below a new directory: it is listed as of now. */
		meta_listing *l;
		if (meta_listing_begin(ctx->meta, path, META_LIST_RECURSIVE, NULL, NULL, &l) == 0 &&
		    meta_listing_commit(l) < 0)
			fs_log(FS_LOG_DEBUG, "%s: could not mark it listed", path);
		fs_dir_touch(ctx, path);
	}
	return r;
}

int fs_symlink(const char *target, const char *path)
{
	struct fs_ctx *ctx = dir_ctx();
	meta_entry e;
	int r;

	r = dir_check_new(ctx, path);
	if (r)
		return r;
	dir_new_entry(&e, S_IFLNK | 0777, false);
	e.symlink = (char *)target;
	r = dir_put_entry(ctx, path, &e, target, strlen(target));
	e.symlink = NULL;
	if (!r)
		fs_dir_touch(ctx, path);
	return r;
}

int fs_link(const char *from, const char *to)
{
	(void)from;
	(void)to;
	/* An object has one key: there is no second name for it. */
	return -EPERM;
}

/* Looks up path and checks its type: want_dir 1 a directory, 0 not one. */
static int dir_lookup_type(struct fs_ctx *ctx, const char *path, int want_dir, meta_entry *e)
{
	int r = fs_lookup(ctx, path, e);

	if (r)
		return r;
	if (want_dir == 1 && !e->is_dir) {
		meta_entry_clear(e);
		return -ENOTDIR;
	}
	if (want_dir == 0 && e->is_dir) {
		meta_entry_clear(e);
		return -EISDIR;
	}
	return 0;
}

static int dir_delete_key(struct fs_ctx *ctx, const char *path, bool marker)
{
	char *key = fs_key_of(ctx, path, marker);
	s3_error err;
	int r;

	if (!key)
		return -ENOMEM;
	r = s3_delete_object(ctx->s3, key, &err);
	if (r)
		fs_log_s3(FS_LOG_WARNING, "deleting", path, &err);
	else if (!marker)
		cache_invalidate(ctx->cache, key);
	free(key);
	return r;
}

int fs_unlink(const char *path)
{
	struct fs_ctx *ctx = dir_ctx();
	meta_entry e;
	int r;

	if (ctx->ro)
		return -EROFS;
	if (strncmp(fs_base_of(path), ".fuse_hidden", 12) == 0 &&
	    fs_wb_hidden_stat(ctx, path, NULL, true) == 0)
		return 0;
	r = dir_lookup_type(ctx, path, 0, &e);
	if (r)
		return r;
	meta_entry_clear(&e);
	/* First stop any upload of it, so nothing brings it back. */
	fs_wb_unlink(ctx, path);
	r = dir_delete_key(ctx, path, false);
	if (r)
		return r;
	r = meta_delete(ctx->meta, path);
	fs_dir_touch(ctx, path);
	return r == -ENOENT ? 0 : r;
}

struct dir_count {
	int n;
};

static int dir_count_one(void *arg, const meta_entry *e)
{
	(void)e;
	((struct dir_count *)arg)->n++;
	return 1; /* one is enough */
}

static int dir_is_empty(struct fs_ctx *ctx, const char *path)
{
	struct dir_count c = {0};
	int r = fs_ensure_listed(ctx, path);

	if (r && r != -ENOENT)
		return r;
	r = meta_readdir(ctx->meta, path, NULL, dir_count_one, &c);
	if (r < 0)
		return r;
	return c.n ? -ENOTEMPTY : 0;
}

int fs_rmdir(const char *path)
{
	struct fs_ctx *ctx = dir_ctx();
	meta_entry e;
	int r;

	if (ctx->ro)
		return -EROFS;
	if (strcmp(path, "/") == 0)
		return -EBUSY;
	r = dir_lookup_type(ctx, path, 1, &e);
	if (r)
		return r;
	meta_entry_clear(&e);
	r = dir_is_empty(ctx, path);
	if (r)
		return r;
	r = dir_delete_key(ctx, path, true);
	if (r)
		return r;
	r = meta_delete(ctx->meta, path);
	fs_dir_touch(ctx, path);
	return r == -ENOENT ? 0 : r;
}

/* ---------------------------------------------------------------- rename */

struct dir_obj {
	char *path; /* below the renamed directory, full */
	uint64_t size;
	bool marker; /* a directory marker object */
	bool local;  /* not in S3 yet: moves with its staged data */
	bool in_s3;  /* an object exists at its key (an older version if local) */
};

struct dir_objs {
	struct dir_obj *v;
	size_t n, cap;
	const char *dir;
	int err;
};

struct dir_walk {
	struct dir_objs *objs;
	char **subdirs;
	size_t nsub, capsub;
	const char *dir;
};

static char *dir_child(const char *dir, const char *name)
{
	char *p;

	if (asprintf(&p, "%s%s%s", dir, strcmp(dir, "/") == 0 ? "" : "/", name) < 0)
		return NULL;
	return p;
}

static int dir_obj_add(struct dir_objs *o, char *path, uint64_t size, bool marker, bool local,
                       bool in_s3)
{
	if (o->n == o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 64;
		struct dir_obj *v = realloc(o->v, cap * sizeof(*v));
		if (!v) {
			free(path);
			return -ENOMEM;
		}
		o->v = v;
		o->cap = cap;
	}
	o->v[o->n++] = (struct dir_obj){path, size, marker, local, in_s3};
	return 0;
}

static int dir_walk_one(void *arg, const meta_entry *e)
{
	struct dir_walk *w = arg;
	char *p = dir_child(w->dir, e->name);

	if (!p)
		return -ENOMEM;
	if (e->is_dir) {
		if (w->nsub == w->capsub) {
			size_t cap = w->capsub ? w->capsub * 2 : 16;
			char **v = realloc(w->subdirs, cap * sizeof(*v));
			if (!v) {
				free(p);
				return -ENOMEM;
			}
			w->subdirs = v;
			w->capsub = cap;
		}
		w->subdirs[w->nsub++] = strdup(p);
		if (!e->dir_marker) {
			free(p);
			return 0;
		}
	}
	return dir_obj_add(w->objs, p, e->size, e->is_dir, e->local, e->etag != NULL);
}

/* Every object at or below dir, from a fresh listing of each level. */
static int dir_collect(struct fs_ctx *ctx, const char *dir, struct dir_objs *objs)
{
	struct dir_walk w = {.objs = objs, .dir = dir};
	int r;

	r = fs_ensure_listed(ctx, dir);
	if (r)
		return r;
	r = meta_readdir(ctx->meta, dir, NULL, dir_walk_one, &w);
	for (size_t i = 0; i < w.nsub; i++) {
		if (!r && w.subdirs[i])
			r = dir_collect(ctx, w.subdirs[i], objs);
		free(w.subdirs[i]);
	}
	free(w.subdirs);
	return r;
}

struct dir_copy {
	struct fs_ctx *ctx;
	struct dir_objs *objs;
	size_t from_len;
	const char *to;
	pthread_mutex_t lock;
	size_t next;
	int err;
};

static void *dir_copy_worker(void *arg)
{
	struct dir_copy *c = arg;

	for (;;) {
		pthread_mutex_lock(&c->lock);
		size_t i = c->err ? c->objs->n : c->next++;
		pthread_mutex_unlock(&c->lock);
		if (i >= c->objs->n)
			break;
		struct dir_obj *o = &c->objs->v[i];
		if (o->local)
			continue;
		char *np = NULL, *fk = NULL, *tk = NULL;
		char etag[S3_ETAG_MAX];
		int r = -ENOMEM;
		if (asprintf(&np, "%s%s", c->to, o->path + c->from_len) >= 0) {
			fk = fs_key_of(c->ctx, o->path, o->marker);
			tk = fs_key_of(c->ctx, np, o->marker);
			if (fk && tk)
				r = fs_copy_object(c->ctx, fk, tk, o->size, S3_META_COPY, NULL,
				                   etag);
		}
		free(np);
		free(fk);
		free(tk);
		if (r) {
			pthread_mutex_lock(&c->lock);
			if (!c->err)
				c->err = r;
			pthread_mutex_unlock(&c->lock);
		}
	}
	return NULL;
}

static int dir_copy_all(struct fs_ctx *ctx, struct dir_objs *objs, const char *from, const char *to)
{
	struct dir_copy c = {.ctx = ctx, .objs = objs, .from_len = strlen(from), .to = to};
	pthread_t th[32];
	int nth = 0;
	int want = ctx->parallel_count < 32 ? ctx->parallel_count : 32;

	pthread_mutex_init(&c.lock, NULL);
	for (int i = 1; i < want && (size_t)i < objs->n; i++)
		if (pthread_create(&th[nth], NULL, dir_copy_worker, &c) == 0)
			nth++;
	dir_copy_worker(&c);
	for (int i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&c.lock);
	return c.err;
}

static int dir_delete_all(struct fs_ctx *ctx, struct dir_objs *objs)
{
	char **keys = calloc(objs->n ? objs->n : 1, sizeof(*keys));
	size_t n = 0;
	s3_error err;
	int r = 0;

	if (!keys)
		return -ENOMEM;
	for (size_t i = 0; i < objs->n; i++) {
		/* A local entry's new data moves with it, but the version S3
		 * had under the old name must go too. */
		if (objs->v[i].local && !objs->v[i].in_s3)
			continue;
		keys[n] = fs_key_of(ctx, objs->v[i].path, objs->v[i].marker);
		if (keys[n]) {
			if (!objs->v[i].marker)
				cache_invalidate(ctx->cache, keys[n]);
			n++;
		}
	}
	if (n) {
		r = s3_delete_objects(ctx->s3, (const char *const *)keys, n, &err);
		if (r)
			fs_log_s3(FS_LOG_WARNING, "deleting the old keys of", objs->dir, &err);
	}
	for (size_t i = 0; i < n; i++)
		free(keys[i]);
	free(keys);
	return r;
}

static void dir_objs_free(struct dir_objs *o)
{
	for (size_t i = 0; i < o->n; i++)
		free(o->v[i].path);
	free(o->v);
}

static int dir_rename_file(struct fs_ctx *ctx, const char *from, const char *to, bool to_exists)
{
	char *fk = fs_key_of(ctx, from, false), *tk = fs_key_of(ctx, to, false);
	char etag[S3_ETAG_MAX] = "";
	bool dirty = false;
	meta_entry fe;
	int r;

	if (!fk || !tk) {
		free(fk);
		free(tk);
		return -ENOMEM;
	}
	fs_wb_rename_begin(ctx, from, &dirty);
	/* Uploads of it are held now: what the index says stays true. */
	r = meta_lookup(ctx->meta, from, &fe);
	if (r) {
		fs_wb_rename_end(ctx, from, to, false);
		free(fk);
		free(tk);
		return r;
	}
	if (to_exists)
		fs_wb_unlink(ctx, to);
	/* A file whose new contents are still staged moves with them; its
	 * upload goes to the new key.  Otherwise S3 copies it. */
	bool copied = !dirty && !fe.local && fe.etag;
	if (copied)
		r = fs_copy_object(ctx, fk, tk, fe.size, S3_META_COPY, NULL, etag);
	if (!r)
		r = meta_rename(ctx->meta, from, to, !copied);
	if (!r && copied && etag[0] && meta_clear_local(ctx->meta, to, etag, fe.size, 0))
		fs_log(FS_LOG_DEBUG, "%s: could not record the copy's ETag", to);
	fs_wb_rename_end(ctx, from, to, r == 0);
	if (!r && fe.etag) {
		s3_error err;
		cache_invalidate(ctx->cache, fk);
		if (s3_delete_object(ctx->s3, fk, &err))
			fs_log_s3(FS_LOG_WARNING, "deleting the old name", from, &err);
	}
	meta_entry_clear(&fe);
	free(fk);
	free(tk);
	return r;
}

static int dir_rename_dir(struct fs_ctx *ctx, const char *from, const char *to,
                          const meta_entry *fe, bool to_exists)
{
	struct dir_objs objs = {.dir = from};
	bool dirty;
	int r;

	/* Uploads below `from` are held first, so that which entries are
	 * local (they move with their staged data) and which are in S3 (they
	 * are copied) cannot change between the walk and the move. */
	fs_wb_rename_begin(ctx, from, &dirty);
	/* The whole subtree, fresh, before anything moves. */
	r = dir_collect(ctx, from, &objs);
	if (!r && fe->dir_marker) {
		char *p = strdup(from);
		r = p ? dir_obj_add(&objs, p, 0, true, false, true) : -ENOMEM;
	}
	if (r) {
		fs_wb_rename_end(ctx, from, to, false);
		dir_objs_free(&objs);
		return r;
	}
	r = dir_copy_all(ctx, &objs, from, to);
	if (!r)
		r = meta_rename(ctx->meta, from, to, false);
	fs_wb_rename_end(ctx, from, to, r == 0);
	if (!r) {
		(void)dir_delete_all(ctx, &objs);
		if (to_exists && !fe->dir_marker) {
			/* The replaced empty directory's marker would now be a
			 * directory object of the new tree: nothing to do. */
		}
	}
	dir_objs_free(&objs);
	return r;
}

/* The names libfuse gives a hidden file: ".fuse_hidden" and 16 hex digits. */
static bool dir_is_fuse_hidden(const char *name)
{
	if (strncmp(name, ".fuse_hidden", 12) != 0 || strlen(name) != 28)
		return false;
	for (const char *p = name + 12; *p; p++)
		if (!isxdigit((unsigned char)*p))
			return false;
	return true;
}

int fs_rename(const char *from, const char *to, unsigned int flags)
{
	struct fs_ctx *ctx = dir_ctx();
	size_t flen = strlen(from), tlen = strlen(to);
	char tparent[tlen + 1];
	meta_entry fe, te, pe;
	bool to_exists = false;
	int r;

	if (ctx->ro)
		return -EROFS;
	if (flags & RENAME_EXCHANGE)
		return -EINVAL; /* two objects cannot swap atomically in S3 */
	if (flags & ~(unsigned)RENAME_NOREPLACE)
		return -EINVAL;
	if (strcmp(from, to) == 0)
		return 0;
	if (dir_is_fuse_hidden(fs_base_of(to))) {
		/* libfuse hides an open file being unlinked (or replaced):
		 * delete it here, keep it in memory there.  libfuse's idea of
		 * "open" can lag behind ours (close(2) returns before the
		 * release arrives): a file whose last handle is gone is
		 * deleted all the same, since libfuse, having hidden it, will
		 * never unlink the hidden name. */
		r = fs_wb_hide(ctx, from, to);
		if (r == -ENOENT && meta_lookup(ctx->meta, from, &fe) == 0) {
			if (!fe.is_dir) {
				fs_wb_unlink(ctx, from);
				r = 0;
			}
			meta_entry_clear(&fe);
		}
		if (r == 0) {
			r = dir_delete_key(ctx, from, false);
			int d = meta_delete(ctx->meta, from);
			fs_dir_touch(ctx, from);
			return r ? r : (d == -ENOENT ? 0 : d);
		}
	}
	if (strcmp(from, "/") == 0 ||
	    (tlen > flen && strncmp(to, from, flen) == 0 && to[flen] == '/'))
		return -EINVAL;
	r = fs_lookup(ctx, from, &fe);
	if (r)
		return r;
	fs_parent_of(to, tparent);
	r = fs_lookup(ctx, tparent, &pe);
	if (!r) {
		if (!pe.is_dir)
			r = -ENOTDIR;
		meta_entry_clear(&pe);
	}
	if (!r) {
		r = fs_lookup(ctx, to, &te);
		if (r == 0) {
			to_exists = true;
			if (flags & RENAME_NOREPLACE)
				r = -EEXIST;
			else if (fe.is_dir && !te.is_dir)
				r = -ENOTDIR;
			else if (!fe.is_dir && te.is_dir)
				r = -EISDIR;
			else if (te.is_dir)
				r = dir_is_empty(ctx, to);
			meta_entry_clear(&te);
		} else if (r == -ENOENT) {
			r = 0;
		}
	}
	if (!r)
		r = fe.is_dir ? dir_rename_dir(ctx, from, to, &fe, to_exists)
		              : dir_rename_file(ctx, from, to, to_exists);
	if (!r) {
		char fparent[flen + 1];
		fs_parent_of(from, fparent);
		fs_dir_touch(ctx, from);
		if (strcmp(fparent, tparent) != 0)
			fs_dir_touch(ctx, to);
	}
	meta_entry_clear(&fe);
	return r;
}

/* ---------------------------------------------------------------- attributes */

struct dir_setattr {
	struct fs_ctx *ctx;
	const char *path;
	meta_entry *e;
};

static int dir_index_only(void *arg)
{
	struct dir_setattr *a = arg;

	a->e->local = true;
	return meta_upsert(a->ctx->meta, a->path, a->e);
}

/*
 * Writes the attributes of e (complete, changed by the caller) to path: in
 * the index only for a file not uploaded yet, else by rewriting the object's
 * metadata in S3 (a self-copy with REPLACE; a PUT of the marker for a
 * directory that has none).
 */
static int dir_apply_attrs(struct fs_ctx *ctx, const char *path, meta_entry *e)
{
	struct dir_setattr a = {ctx, path, e};
	char etag[S3_ETAG_MAX] = "";
	s3_head h = {0};
	s3_error err;
	char *key;
	int r;

	if (strcmp(path, "/") == 0)
		return 0; /* the root has no object of its own to carry them */
	if (!e->is_dir) {
		r = fs_wb_setattr(ctx, path, dir_index_only, &a);
		if (r)
			return r < 0 ? r : 0;
		/* No data pending: e was read before, maybe while an upload was
		 * finishing; what S3 has now is in the index. */
		meta_entry cur;
		r = meta_lookup(ctx->meta, path, &cur);
		if (r)
			return r;
		free(e->etag);
		e->etag = cur.etag;
		cur.etag = NULL;
		e->size = cur.size;
		e->local = cur.local;
		meta_entry_clear(&cur);
		if (e->local) /* not in S3 and not staged: the index is all */
			return dir_index_only(&a);
	}
	key = fs_key_of(ctx, path, e->is_dir);
	if (!key)
		return -ENOMEM;
	if (e->is_dir && !e->dir_marker) {
		free(key);
		e->dir_marker = true;
		return dir_put_entry(ctx, path, e, "", 0);
	}
	r = s3_head_object(ctx->s3, key, &h, &err);
	if (r)
		fs_log_s3(FS_LOG_WARNING, "reading the metadata of", path, &err);
	if (!r) {
		if (!e->xattr)
			FS_IGNORE(s3_meta_set(&h.meta, "xattr", "")); /* removed below */
		r = fs_entry_to_s3meta(e, &h.meta);
	}
	if (!r && !e->xattr) {
		/* s3_meta has no delete: rebuild without the xattr item. */
		s3_meta m = {0};
		for (size_t i = 0; !r && i < h.meta.n; i++)
			if (strcmp(h.meta.items[i].name, "xattr") != 0)
				r = s3_meta_set(&m, h.meta.items[i].name, h.meta.items[i].value);
		s3_meta_clear(&h.meta);
		h.meta = m;
	}
	if (!r) {
		s3_put_opts o = {.meta = &h.meta, .content_type = h.content_type};
		r = fs_copy_object(ctx, key, key, h.size, S3_META_REPLACE, &o, etag);
	}
	if (!r) {
		char *old_etag = e->etag, *old_head = e->head_etag;
		e->etag = etag;
		e->head_etag = etag;
		e->local = false;
		e->last_modified_ns = 0; /* the copy's; the next listing brings it */
		r = meta_upsert(ctx->meta, path, e);
		e->etag = old_etag;
		e->head_etag = old_head;
	}
	s3_head_clear(&h);
	free(key);
	return r;
}

/* Looks up path with its attributes made explicit, for a change. */
static int dir_attr_lookup(struct fs_ctx *ctx, const char *path, meta_entry *e)
{
	int r;

	if (ctx->ro)
		return -EROFS;
	r = fs_lookup(ctx, path, e);
	if (r)
		return r;
	if (!e->is_dir)
		fs_wb_overlay(ctx, path, e);
	/* fs_lookup's HEAD fills the numbers, not the xattr: ask the index. */
	if (!e->xattr && e->head_etag) {
		meta_entry x;
		if (meta_lookup(ctx->meta, path, &x) == 0) {
			e->xattr = x.xattr;
			e->xattr_len = x.xattr_len;
			x.xattr = NULL;
			meta_entry_clear(&x);
		}
	}
	fs_entry_complete(ctx, e);
	return 0;
}

int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = dir_ctx();
	meta_entry e;
	int r;

	(void)fi;
	r = dir_attr_lookup(ctx, path, &e);
	if (r)
		return r;
	e.mode = (e.mode & S_IFMT) | (mode & 07777);
	e.ctime_ns = fs_now_ns();
	r = dir_apply_attrs(ctx, path, &e);
	meta_entry_clear(&e);
	return r;
}

int fs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = dir_ctx();
	meta_entry e;
	int r;

	(void)fi;
	r = dir_attr_lookup(ctx, path, &e);
	if (r)
		return r;
	if (uid != (uid_t)-1)
		e.uid = uid;
	if (gid != (gid_t)-1)
		e.gid = gid;
	e.ctime_ns = fs_now_ns();
	r = dir_apply_attrs(ctx, path, &e);
	meta_entry_clear(&e);
	return r;
}

static int64_t dir_ts(const struct timespec *ts, int64_t now, int64_t keep)
{
	if (ts->tv_nsec == UTIME_NOW)
		return now;
	if (ts->tv_nsec == UTIME_OMIT)
		return keep;
	return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

int fs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = dir_ctx();
	int64_t now = fs_now_ns();
	meta_entry e;
	int r;

	(void)fi;
	r = dir_attr_lookup(ctx, path, &e);
	if (r)
		return r;
	if (tv) {
		e.atime_ns = dir_ts(&tv[0], now, e.atime_ns);
		e.mtime_ns = dir_ts(&tv[1], now, e.mtime_ns);
	} else {
		e.atime_ns = e.mtime_ns = now;
	}
	e.ctime_ns = now;
	r = dir_apply_attrs(ctx, path, &e);
	meta_entry_clear(&e);
	return r;
}

/* ---------------------------------------------------------------- xattrs */

static bool dir_xattr_ok(const char *name)
{
	return strncmp(name, "user.", 5) == 0 && name[5] && !strpbrk(name, "\",:{}");
}

static int dir_xattrs_of(const meta_entry *e, struct fs_xattrs *x)
{
	memset(x, 0, sizeof(*x));
	if (!e->xattr || !e->xattr_len)
		return 0;
	return fs_xattrs_parse((const char *)e->xattr, e->xattr_len, x);
}

/* Replaces e's xattr with x's encoding and writes the attributes out. */
static int dir_store_xattrs(struct fs_ctx *ctx, const char *path, meta_entry *e,
                            const struct fs_xattrs *x)
{
	char *enc = NULL;
	int r = fs_xattrs_format(x, &enc);

	if (r)
		return r;
	free(e->xattr);
	e->xattr = (unsigned char *)enc;
	e->xattr_len = enc ? strlen(enc) : 0;
	e->ctime_ns = fs_now_ns();
	return dir_apply_attrs(ctx, path, e);
}

int fs_setxattr(const char *path, const char *name, const char *value, size_t size, int flags)
{
	struct fs_ctx *ctx = dir_ctx();
	struct fs_xattrs x;
	meta_entry e;
	int r;

	if (strcmp(name, FS_STATS_XATTR) == 0 && strcmp(path, "/") == 0)
		return -EPERM;
	if (!dir_xattr_ok(name))
		return -ENOTSUP;
	r = dir_attr_lookup(ctx, path, &e);
	if (r)
		return r;
	r = dir_xattrs_of(&e, &x);
	if (!r && (flags & XATTR_CREATE) && fs_xattrs_find(&x, name))
		r = -EEXIST;
	if (!r && (flags & XATTR_REPLACE) && !fs_xattrs_find(&x, name))
		r = -ENODATA;
	if (!r)
		r = fs_xattrs_set(&x, name, value, size);
	if (!r)
		r = dir_store_xattrs(ctx, path, &e, &x);
	fs_xattrs_clear(&x);
	meta_entry_clear(&e);
	return r;
}

int fs_removexattr(const char *path, const char *name)
{
	struct fs_ctx *ctx = dir_ctx();
	struct fs_xattrs x;
	meta_entry e;
	int r;

	if (!dir_xattr_ok(name))
		return -ENODATA;
	r = dir_attr_lookup(ctx, path, &e);
	if (r)
		return r;
	r = dir_xattrs_of(&e, &x);
	if (!r)
		r = fs_xattrs_remove(&x, name);
	if (!r)
		r = dir_store_xattrs(ctx, path, &e, &x);
	fs_xattrs_clear(&x);
	meta_entry_clear(&e);
	return r;
}

/* The entry's stored xattrs, fresh from the index after fs_lookup. */
static int dir_read_xattrs(struct fs_ctx *ctx, const char *path, struct fs_xattrs *x)
{
	meta_entry e, s;
	int r = fs_lookup(ctx, path, &e);

	if (r)
		return r;
	meta_entry_clear(&e);
	if (strcmp(path, "/") == 0 || meta_lookup(ctx->meta, path, &s)) {
		memset(x, 0, sizeof(*x));
		return 0;
	}
	r = dir_xattrs_of(&s, x);
	meta_entry_clear(&s);
	return r;
}

int fs_getxattr(const char *path, const char *name, char *value, size_t size)
{
	struct fs_ctx *ctx = dir_ctx();
	struct fs_xattrs x;
	struct fs_xattr *a;
	int r;

	if (strcmp(path, "/") == 0 && strcmp(name, FS_STATS_XATTR) == 0) {
		char *text = fs_stats_text(ctx);
		size_t len;
		if (!text)
			return -ENOMEM;
		len = strlen(text);
		if (size && len > size) {
			free(text);
			return -ERANGE;
		}
		if (size)
			memcpy(value, text, len);
		free(text);
		return (int)len;
	}
	if (strncmp(name, "user.", 5) != 0)
		return -ENODATA;
	r = dir_read_xattrs(ctx, path, &x);
	if (r)
		return r;
	a = fs_xattrs_find(&x, name);
	if (!a)
		r = -ENODATA;
	else if (size && a->len > size)
		r = -ERANGE;
	else {
		if (size && a->len)
			memcpy(value, a->value, a->len);
		r = (int)a->len;
	}
	fs_xattrs_clear(&x);
	return r;
}

int fs_listxattr(const char *path, char *list, size_t size)
{
	struct fs_ctx *ctx = dir_ctx();
	struct fs_xattrs x;
	size_t need = 0;
	int r;

	r = dir_read_xattrs(ctx, path, &x);
	if (r)
		return r;
	for (size_t i = 0; i < x.n; i++)
		need += strlen(x.v[i].name) + 1;
	if (size && need > size) {
		r = -ERANGE;
	} else {
		if (size) {
			char *p = list;
			for (size_t i = 0; i < x.n; i++) {
				size_t l = strlen(x.v[i].name) + 1;
				memcpy(p, x.v[i].name, l);
				p += l;
			}
		}
		r = (int)need;
	}
	fs_xattrs_clear(&x);
	return r;
}
