/*
 * write.c - open files and write-back: staging, the upload pool, the journal.
 *
 * Every open file has one struct fs_file, found by path in a hash table and
 * shared by its handles.  It holds the staged copy (cache_stage_open: the
 * file's full contents on local disk) once the file is first changed, and it
 * stays in the table after its last handle is closed until its data is in
 * S3, so that getattr, readdir and a new open see the writer's version.
 *
 * Life of a change (see README "Writes and durability"):
 *   write/truncate  the staged file is changed; version++; the index entry is
 *                   marked local (size, mtime) at the first change
 *   flush/fsync     fdatasync of the staged file, then a journal row
 *                   (state WB_J_STAGED: path, staged key, size), then the
 *                   upload: one PUT below multipart_size, else a multipart
 *                   upload (row -> WB_J_MULTIPART with the upload id) whose
 *                   parts unchanged since the object was read are copied
 *                   server-side; on success the index entry's local flag
 *                   is cleared and the row removed, in one commit
 *                   (meta_upload_done)
 *   release         when the last handle is gone and the data is uploaded,
 *                   the staged file becomes cached content (stage_commit)
 * A failed upload keeps its row and staged data; the retry thread uploads it
 * again with bounded backoff.  At mount, rows left by a crash are resumed.
 *
 * Close semantics: flush of a file up to async_close_max, while uploads
 * succeed, returns once the data is fsync'ed and journaled and leaves the
 * upload to the pool (so cp -r and tar x upload many files at once); fsync
 * waits for it.  Larger files, and every file while uploads fail, upload in
 * flush, whose failure close reports as EIO.
 *
 * Locks: wb->lock (table, queue, refs) may be taken before f->lock, never
 * after.  No lock but f->lock is held across network I/O, and f->lock only
 * while staging (the file's own download); uploads run with f->uploading
 * set instead, which changes to the file wait for.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "attr.h"
#include "fs.h"
#include "ops.h"

#define WB_BUCKETS     512
#define WB_MIB         (UINT64_C(1) << 20)
#define WB_PART_MIN    (5 * WB_MIB)
#define WB_COPY_MAX    (UINT64_C(5) << 30) /* largest single CopyObject */
#define WB_MAX_PARTS   10000
#define WB_BACKOFF_MAX 60 /* seconds between retries of a failed upload, at most */

/* Journal row states (meta stores them, we define them). */
enum wb_jstate {
	WB_J_STAGED = 1,    /* staged file fsync'ed, upload not confirmed */
	WB_J_MULTIPART = 2, /* a multipart upload (upload_id) is in progress */
};

struct fs_file {
	struct fs_file *next; /* hash chain; under wb->lock */
	bool in_table;        /* under wb->lock */
	unsigned refs;        /* table, handles, queue, callers; under wb->lock */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	char *path, *key;       /* change on rename */
	unsigned gen;           /* bumped when key or content version changes */
	char etag[S3_ETAG_MAX]; /* the version in S3, "" if none */
	uint64_t base_size;     /* its size */
	uint64_t size;
	int64_t mtime_ns;
	bool mtime_set;
	int fd; /* the staged file, -1 until the first change */
	unsigned handles;
	uint64_t version;   /* changes made */
	uint64_t uploaded;  /* the version S3 has */
	uint64_t journaled; /* the version the journal row was written for */
	bool uploading, queued, held, unlinked;
	int err; /* of the last upload */
	int64_t jid;
	int64_t retry_at_ns;
	int backoff_s;
	/* clean[i]: chunk i (multipart_size bytes) is unchanged since the
	 * version `etag` was staged; NULL: none is known clean. */
	uint8_t *clean;
	size_t nchunks;
	uint64_t since_throttle;
	meta_entry *gone; /* the index entry as it was when unlinked */
	/* The kernel may cache pages of a version f no longer names
	 * (wb_refresh_version): the next open must not keep them. */
	bool kernel_stale;
};

struct wb_qnode {
	struct fs_file *f;
	struct wb_qnode *next;
};

struct fs_wb {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct fs_file *table[WB_BUCKETS];
	struct wb_qnode *qhead, *qtail;
	pthread_t *workers;
	int nworkers;
	pthread_t retrier;
	bool retrier_started;
	bool stopping;
	int active;        /* uploads running in the pool */
	bool healthy;      /* the last upload succeeded */
	bool no_part_copy; /* the server refused UploadPartCopy: upload every part */
	pthread_mutex_t rename_lock;
	/* The files a rename holds, each with a reference: from
	 * fs_wb_rename_begin to fs_wb_rename_end, under rename_lock. */
	struct fs_file **renaming;
	size_t n_renaming;
	struct fs_handle *handles; /* open handles; under lock */
};

struct fs_handle {
	struct fs_handle *prev, *next; /* in wb->handles; under wb->lock */
	struct fs_file *f;
	bool writable;
	pthread_mutex_t lock; /* the reader serves one thread at a time */
	cache_reader *reader;
	unsigned reader_gen;
};

static struct fs_ctx *wb_ctx(void)
{
	return fuse_get_context()->private_data;
}

static unsigned wb_hash(const char *s)
{
	unsigned h = 5381;

	while (*s)
		h = h * 33 + (unsigned char)*s++;
	return h % WB_BUCKETS;
}

/* ---------------------------------------------------------------- table */

static struct fs_file *wb_find_locked(struct fs_wb *wb, const char *path)
{
	for (struct fs_file *f = wb->table[wb_hash(path)]; f; f = f->next)
		if (strcmp(f->path, path) == 0)
			return f;
	return NULL;
}

static void wb_table_remove_locked(struct fs_wb *wb, struct fs_file *f)
{
	struct fs_file **pp = &wb->table[wb_hash(f->path)];

	for (; *pp; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			f->next = NULL;
			f->in_table = false;
			f->refs--;
			return;
		}
	}
}

static void wb_table_add_locked(struct fs_wb *wb, struct fs_file *f)
{
	unsigned h = wb_hash(f->path);

	f->next = wb->table[h];
	wb->table[h] = f;
	f->in_table = true;
	f->refs++;
}

static void wb_file_free(struct fs_file *f)
{
	if (f->fd >= 0)
		close(f->fd);
	pthread_mutex_destroy(&f->lock);
	pthread_cond_destroy(&f->cond);
	if (f->gone) {
		meta_entry_clear(f->gone);
		free(f->gone);
	}
	free(f->clean);
	free(f->path);
	free(f->key);
	free(f);
}

static struct fs_file *wb_file_new(struct fs_ctx *ctx, const char *path, const char *etag,
                                   uint64_t size)
{
	struct fs_file *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->path = strdup(path);
	f->key = fs_key_of(ctx, path, false);
	f->fd = -1;
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	if (!f->path || !f->key) {
		wb_file_free(f);
		return NULL;
	}
	snprintf(f->etag, sizeof(f->etag), "%s", etag ? etag : "");
	f->size = f->base_size = size;
	return f;
}

static void wb_put(struct fs_ctx *ctx, struct fs_file *f)
{
	bool last;

	pthread_mutex_lock(&ctx->wb->lock);
	last = --f->refs == 0;
	pthread_mutex_unlock(&ctx->wb->lock);
	if (last)
		wb_file_free(f);
}

/* The file at `path` with a reference, or NULL. */
static struct fs_file *wb_get(struct fs_ctx *ctx, const char *path)
{
	struct fs_file *f;

	pthread_mutex_lock(&ctx->wb->lock);
	f = wb_find_locked(ctx->wb, path);
	if (f)
		f->refs++;
	pthread_mutex_unlock(&ctx->wb->lock);
	return f;
}

/* Inserts f unless the path has a file already; returns the one in the
 * table, referenced (f is freed if it lost). */
static struct fs_file *wb_insert(struct fs_ctx *ctx, struct fs_file *f)
{
	struct fs_file *old;

	pthread_mutex_lock(&ctx->wb->lock);
	old = wb_find_locked(ctx->wb, f->path);
	if (old) {
		old->refs++;
	} else {
		wb_table_add_locked(ctx->wb, f);
		f->refs++;
	}
	pthread_mutex_unlock(&ctx->wb->lock);
	if (old)
		wb_file_free(f);
	return old ? old : f;
}

/* The file's data differs from S3's: an upload is owed. */
static bool wb_dirty(const struct fs_file *f)
{
	return !f->unlinked && f->version != f->uploaded;
}

/*
 * Drops f from the table once nothing needs it there: no handle, no upload
 * owed or running.  Its staged file then becomes cached content.
 */
static void wb_retire(struct fs_ctx *ctx, struct fs_file *f)
{
	pthread_mutex_lock(&ctx->wb->lock);
	pthread_mutex_lock(&f->lock);
	if (f->in_table && !f->handles && !f->uploading && !f->queued && !f->held && !wb_dirty(f)) {
		if (f->fd >= 0) {
			close(f->fd);
			f->fd = -1;
			/* Committed before the row leaves the table: a new open
			 * of the path, which cannot start until then, finds the
			 * cached content.  Done after, it could open this staged
			 * file as its own (cache_stage_open reuses a staged file)
			 * and write into what the commit turns into the cached
			 * content of the uploaded version.  Its bytes are on
			 * disk: nothing changed since the upload, which syncs
			 * the staged data first (wb_upload: "the journal row
			 * must never point at data that is not on disk"), or
			 * since the fill, which cache_stage_open syncs. */
			if (!f->unlinked && f->etag[0]) {
				int r = cache_stage_commit(ctx->cache, f->key, f->etag, f->size,
				                           true);
				if (r)
					fs_log(FS_LOG_WARNING,
					       "keeping the uploaded %s as cached content: %s",
					       f->key, strerror(-r));
			}
		}
		wb_table_remove_locked(ctx->wb, f);
	}
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_unlock(&ctx->wb->lock);
}

/* A full cache disk: clean cached content gives its space, worth one more
 * try. */
static bool wb_room(struct fs_ctx *ctx, int r, uint64_t bytes)
{
	return (r == -ENOSPC || r == -EDQUOT) && cache_make_room(ctx->cache, bytes) == 0;
}

/* ---------------------------------------------------------------- index */

/* Writes size and mtime of f into its index entry, marked local (S3 has
 * not seen this version).  A lazy commit (meta_upsert_lazy): what must
 * survive a power failure is the journal row, committed durably after it
 * at close, and the upload's own commits.  f->lock held. */
static int wb_index_update(struct fs_ctx *ctx, struct fs_file *f)
{
	meta_entry e;
	int r;

	if (f->unlinked)
		return 0;
	r = meta_lookup(ctx->meta, f->path, &e);
	if (r)
		return r;
	fs_entry_complete(ctx, &e);
	e.size = f->size;
	if (f->mtime_set)
		e.mtime_ns = e.ctime_ns = f->mtime_ns;
	e.local = true;
	r = meta_upsert_lazy(ctx->meta, f->path, &e);
	if (wb_room(ctx, r, 0))
		r = meta_upsert_lazy(ctx->meta, f->path, &e);
	meta_entry_clear(&e);
	if (r)
		fs_log(FS_LOG_WARNING, "updating the index for %s: %s", f->path, strerror(-r));
	return r;
}

void fs_wb_overlay(struct fs_ctx *ctx, const char *path, meta_entry *e)
{
	struct fs_file *f;

	if (!ctx->wb)
		return;
	f = wb_get(ctx, path);
	if (!f) {
		/* e was read while a change here was pending (local) and its
		 * file has left the table since: uploaded and retired, and the
		 * index has its size and times now, which e, read before, may
		 * not (the index takes the size at the first change only).
		 * Answering with e would tell the kernel a stale size - 0 for
		 * a file just created - and a reader would see it truncated. */
		meta_entry n;
		if (!e->local || meta_lookup(ctx->meta, path, &n) != 0)
			return;
		if (!n.is_dir) {
			/* The entry as it is now, under the caller's name. */
			char *name = n.name;
			n.name = e->name;
			e->name = name;
			meta_entry_clear(e);
			*e = n;
		} else {
			meta_entry_clear(&n);
		}
		return;
	}
	pthread_mutex_lock(&f->lock);
	e->size = f->size;
	if (f->mtime_set) {
		e->mtime_ns = e->ctime_ns = f->mtime_ns;
		e->has |= META_HAS_MTIME | META_HAS_CTIME;
	}
	pthread_mutex_unlock(&f->lock);
	wb_put(ctx, f);
}

/* ---------------------------------------------------------------- staging */

/*
 * The version f was opened on is gone from S3 (a fetch pinned to its ETag
 * got 412): if the index knows a newer one that S3 has confirmed - this
 * mount's own upload of the file by a handle that closed just before f was
 * made from the index, or a listing - f takes it.  Only before f is staged:
 * nothing of the old version has been changed yet, so nothing is lost or
 * mixed.  Returns true when f now names another version.  f->lock held.
 */
static bool wb_refresh_version(struct fs_ctx *ctx, struct fs_file *f)
{
	meta_entry e;
	bool changed = false;

	if (f->fd >= 0 || f->unlinked || meta_lookup(ctx->meta, f->path, &e))
		return false;
	if (!e.is_dir && !e.local && e.etag && strcmp(e.etag, f->etag) != 0) {
		fs_log(FS_LOG_INFO, "%s: version %s is gone, %s is current: using it", f->path,
		       f->etag, e.etag);
		snprintf(f->etag, sizeof(f->etag), "%s", e.etag);
		f->size = f->base_size = e.size;
		f->gen++; /* readers reopen on the new version */
		f->kernel_stale = true;
		changed = true;
	}
	meta_entry_clear(&e);
	return changed;
}

/* Makes sure f has its staged copy.  f->lock held. */
static int wb_stage(struct fs_ctx *ctx, struct fs_file *f, bool empty)
{
	int fd, r;

	if (f->fd >= 0)
		return 0;
	/* A truncation to zero needs none of the old bytes: no download. */
	r = cache_stage_open(ctx->cache, f->key, empty || !f->etag[0] ? NULL : f->etag,
	                     empty ? 0 : f->size, &fd);
	if (r == -ESTALE && wb_refresh_version(ctx, f))
		r = cache_stage_open(ctx->cache, f->key, f->etag, f->size, &fd);
	if (r) {
		fs_log(FS_LOG_WARNING, "staging %s: %s", f->path, strerror(-r));
		return r == -ESTALE ? -EIO : r;
	}
	f->fd = fd;
	free(f->clean);
	f->clean = NULL;
	f->nchunks = 0;
	if (!empty && f->etag[0] && f->size >= ctx->multipart_size) {
		f->nchunks = (size_t)((f->size + ctx->multipart_size - 1) / ctx->multipart_size);
		f->clean = malloc(f->nchunks);
		if (f->clean)
			memset(f->clean, 1, f->nchunks);
		else
			f->nchunks = 0;
	}
	return 0;
}

static void wb_mark_dirty_range(struct fs_ctx *ctx, struct fs_file *f, uint64_t off, uint64_t len)
{
	if (!f->clean)
		return;
	uint64_t first = off / ctx->multipart_size;
	uint64_t last = len ? (off + len - 1) / ctx->multipart_size : first;
	for (uint64_t i = first; i <= last && i < f->nchunks; i++)
		f->clean[i] = 0;
}

/* Waits until f may be changed (no upload reading it, no rename moving it).
 * f->lock held. */
static void wb_wait_quiet(struct fs_file *f)
{
	while (f->uploading || f->held)
		pthread_cond_wait(&f->cond, &f->lock);
}

/* A change was made: bump the version, stamp mtime, tell the index the
 * first time.  f->lock held. */
static void wb_changed(struct fs_ctx *ctx, struct fs_file *f)
{
	bool first = !wb_dirty(f);

	f->version++;
	f->gen++;
	f->mtime_ns = fs_now_ns();
	f->mtime_set = true;
	if (first)
		(void)wb_index_update(ctx, f);
}

/* ---------------------------------------------------------------- upload */

struct wb_mpu {
	struct fs_ctx *ctx;
	const char *key, *upload_id, *copy_src; /* copy_src: key of the old version */
	int fd;
	uint64_t size, part_size;
	const uint8_t *copy; /* copy[i]: part i is copied from copy_src */
	s3_part *parts;
	int nparts;
	pthread_mutex_t lock;
	int next;
	int err;
	bool err_copy; /* the first failure was an UploadPartCopy */
	s3_error s3err;
};

static void *wb_mpu_worker(void *arg)
{
	struct wb_mpu *m = arg;

	for (;;) {
		int i;
		s3_error err;
		int r;

		pthread_mutex_lock(&m->lock);
		i = m->err ? m->nparts : m->next++;
		pthread_mutex_unlock(&m->lock);
		if (i >= m->nparts)
			break;
		uint64_t off = (uint64_t)i * m->part_size;
		uint64_t len = m->size - off < m->part_size ? m->size - off : m->part_size;
		m->parts[i].number = i + 1;
		if (m->copy && m->copy[i])
			r = s3_mpu_upload_part_copy(m->ctx->s3, m->key, m->upload_id, i + 1,
			                            m->copy_src, off, len, m->parts[i].etag, &err);
		else
			r = s3_mpu_upload_part(m->ctx->s3, m->key, m->upload_id, i + 1, m->fd, off,
			                       len, m->parts[i].etag, &err);
		if (r) {
			pthread_mutex_lock(&m->lock);
			if (!m->err) {
				m->err = r;
				m->err_copy = m->copy && m->copy[i];
				m->s3err = err;
			}
			pthread_mutex_unlock(&m->lock);
		}
	}
	return NULL;
}

/* The part size for `size` bytes: multipart_size, grown (in whole
 * multiples, so the clean map still lines up) to stay within 10,000 parts. */
static uint64_t wb_part_size(struct fs_ctx *ctx, uint64_t size)
{
	uint64_t ps = ctx->multipart_size < WB_PART_MIN ? WB_PART_MIN : ctx->multipart_size;

	while ((size + ps - 1) / ps > WB_MAX_PARTS)
		ps += ctx->multipart_size;
	return ps;
}

/*
 * A multipart upload of `size` bytes of fd to key, or, for parts marked in
 * copy[], UploadPartCopy from copy_src.  on_create (may be NULL) hears the
 * upload id before any part is sent (the journal records it).
 */
static int wb_multipart(struct fs_ctx *ctx, const char *key, int fd, uint64_t size,
                        const s3_put_opts *o, const uint8_t *clean, size_t nclean,
                        const char *copy_src, uint64_t copy_src_size,
                        void (*on_create)(void *arg, const char *upload_id), void *arg,
                        char etag_out[S3_ETAG_MAX], bool *copy_refused)
{
	struct wb_mpu m = {.ctx = ctx, .key = key, .fd = fd, .size = size, .copy_src = copy_src};
	char *upload_id = NULL;
	uint8_t *copy = NULL;
	pthread_t th[100];
	int nth = 0, ncopy = 0, r;
	s3_error err;

	m.part_size = wb_part_size(ctx, size);
	m.nparts = (int)((size + m.part_size - 1) / m.part_size);
	if (m.nparts == 0)
		m.nparts = 1;
	m.parts = calloc((size_t)m.nparts, sizeof(*m.parts));
	if (!m.parts)
		return -ENOMEM;
	if (copy_src) {
		/* A part is copied when every chunk it covers is unchanged and
		 * the old object holds all of it. */
		uint64_t per = m.part_size / ctx->multipart_size;
		copy = calloc((size_t)m.nparts, 1);
		for (int i = 0; copy && i < m.nparts; i++) {
			uint64_t off = (uint64_t)i * m.part_size;
			uint64_t len = size - off < m.part_size ? size - off : m.part_size;
			bool ok = off + len <= copy_src_size;
			for (uint64_t c = i * per; ok && c < (uint64_t)(i + 1) * per &&
			                           c * ctx->multipart_size < off + len;
			     c++)
				ok = clean ? (c < nclean && clean[c]) : true;
			copy[i] = ok;
			ncopy += ok;
		}
		m.copy = copy;
	}
	r = s3_mpu_create(ctx->s3, key, o, &upload_id, &err);
	if (r) {
		fs_log_s3(FS_LOG_WARNING, "starting the multipart upload of", key, &err);
		free(m.parts);
		free(copy);
		return r;
	}
	if (on_create)
		on_create(arg, upload_id);
	m.upload_id = upload_id;
	if (ncopy)
		fs_log(FS_LOG_INFO, "%s: %d of %d parts copied server-side", key, ncopy, m.nparts);
	pthread_mutex_init(&m.lock, NULL);
	int want = ctx->parallel_count < 100 ? ctx->parallel_count : 100;
	if (want > m.nparts)
		want = m.nparts;
	for (int i = 1; i < want; i++)
		if (pthread_create(&th[nth], NULL, wb_mpu_worker, &m) == 0)
			nth++;
	wb_mpu_worker(&m);
	for (int i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&m.lock);
	r = m.err;
	if (r && m.err_copy && (r == -EOPNOTSUPP || r == -EINVAL || r == -ENOSYS) && copy_refused)
		*copy_refused = true; /* the caller can send the bytes instead */
	else if (r)
		fs_log_s3(FS_LOG_WARNING, "uploading a part of", key, &m.s3err);
	if (!r) {
		r = s3_mpu_complete(ctx->s3, key, upload_id, m.parts, (size_t)m.nparts, etag_out,
		                    &err);
		if (r)
			fs_log_s3(FS_LOG_WARNING, "completing the multipart upload of", key, &err);
	}
	/* A failed abort leaves parts for the bucket's lifecycle rules to clean
	 * up (some servers have no AbortMultipartUpload); the upload's own
	 * result stands. */
	if (r && s3_mpu_abort(ctx->s3, key, upload_id, &err))
		fs_log_s3(FS_LOG_WARNING, "aborting the multipart upload of", key, &err);
	free(upload_id);
	free(m.parts);
	free(copy);
	return r;
}

int fs_copy_object(struct fs_ctx *ctx, const char *from_key, const char *to_key, uint64_t size,
                   enum s3_metadata_directive d, const s3_put_opts *o, char etag_out[S3_ETAG_MAX])
{
	s3_head h = {0};
	s3_error err;
	int r;

	if (size <= WB_COPY_MAX) {
		r = s3_copy_object(ctx->s3, from_key, to_key, d, o, etag_out, &err);
		if (r)
			fs_log_s3(FS_LOG_WARNING, "copying", from_key, &err);
		return r;
	}
	/* Over 5 GiB CopyObject is refused: UploadPartCopy every part.  A
	 * multipart upload takes its metadata at creation, so COPY means
	 * reading the source's first. */
	s3_put_opts po = {0};
	if (d == S3_META_COPY) {
		r = s3_head_object(ctx->s3, from_key, &h, &err);
		if (r) {
			fs_log_s3(FS_LOG_WARNING, "reading the metadata of", from_key, &err);
			return r;
		}
		po.meta = &h.meta;
		po.content_type = h.content_type;
		o = &po;
	}
	r = wb_multipart(ctx, to_key, -1, size, o, NULL, 0, from_key, size, NULL, NULL, etag_out,
	                 NULL);
	s3_head_clear(&h);
	return r;
}

struct wb_jctx {
	struct fs_ctx *ctx;
	meta_journal_entry *j;
};

static void wb_journal_mpu(void *arg, const char *upload_id)
{
	struct wb_jctx *jc = arg;

	jc->j->state = WB_J_MULTIPART;
	jc->j->upload_id = upload_id;
	if (meta_journal_update(jc->ctx->meta, jc->j))
		fs_log(FS_LOG_WARNING, "journal: cannot record the upload id of %s", jc->j->path);
	jc->j->upload_id = NULL;
}

/*
 * Uploads f's current version unless S3 has it; waits for an upload already
 * running.  Returns 0 or a negative errno (the upload failed after the S3
 * layer's retries; the data stays staged and journaled, and the retry
 * thread will try again).
 */
static int wb_upload(struct fs_ctx *ctx, struct fs_file *f)
{
	meta_journal_entry j = {0};
	s3_meta sm = {0};
	meta_entry e = {0};
	char etag[S3_ETAG_MAX] = "", base[S3_ETAG_MAX];
	char *path = NULL, *key = NULL;
	uint8_t *clean = NULL;
	size_t nchunks = 0;
	uint64_t v, size, base_size;
	int64_t jid;
	bool journaled;
	int fd, r;
	s3_error err;

	pthread_mutex_lock(&f->lock);
	wb_wait_quiet(f);
	if (!wb_dirty(f)) {
		pthread_mutex_unlock(&f->lock);
		return 0;
	}
	if (f->fd < 0) {
		/* Dirty but never staged cannot happen; refuse loudly. */
		pthread_mutex_unlock(&f->lock);
		fs_log(FS_LOG_ERR, "%s: changed but nothing staged", f->path);
		return -EIO;
	}
	/* The upload's x-amz-meta-* come from the index: bring it up to this
	 * version's size and mtime (only the first change wrote them). */
	(void)wb_index_update(ctx, f);
	f->uploading = true;
	v = f->version;
	size = f->size;
	fd = f->fd;
	jid = f->jid;
	journaled = f->journaled == v && jid;
	base_size = f->base_size;
	snprintf(base, sizeof(base), "%s", f->etag);
	path = strdup(f->path);
	key = strdup(f->key);
	if (f->clean && (clean = malloc(f->nchunks)) != NULL) {
		memcpy(clean, f->clean, f->nchunks);
		nchunks = f->nchunks;
	}
	pthread_mutex_unlock(&f->lock);

	r = path && key ? 0 : -ENOMEM;
	/* The journal row must never point at data that is not on disk. */
	if (!r && !journaled) {
		if (fdatasync(fd) < 0)
			r = -errno;
		j = (meta_journal_entry){.id = jid,
		                         .path = path,
		                         .staged_file = key,
		                         .size = size,
		                         .state = WB_J_STAGED,
		                         .created_ns = fs_now_ns()};
		if (!r)
			r = jid ? meta_journal_update(ctx->meta, &j)
			        : meta_journal_add(ctx->meta, &j, &jid);
		if (wb_room(ctx, r, 0))
			r = jid ? meta_journal_update(ctx->meta, &j)
			        : meta_journal_add(ctx->meta, &j, &jid);
		if (r)
			fs_log(FS_LOG_ERR, "journal: cannot record %s: %s", path, strerror(-r));
	}
	j = (meta_journal_entry){.id = jid,
	                         .path = path,
	                         .staged_file = key,
	                         .size = size,
	                         .state = WB_J_STAGED,
	                         .created_ns = fs_now_ns()};
	if (!r) {
		r = meta_lookup(ctx->meta, path, &e);
		if (r == -ENOENT) {
			/* Resumed after a crash with no row: defaults. */
			memset(&e, 0, sizeof(e));
			r = 0;
		}
		fs_entry_complete(ctx, &e);
		if (!r)
			r = fs_entry_to_s3meta(&e, &sm);
	}
	if (!r) {
		s3_put_opts o = {.meta = &sm};
		if (size < ctx->multipart_size) {
			r = s3_put_object_fd(ctx->s3, key, fd, 0, size, &o, etag, &err);
			if (r)
				fs_log_s3(FS_LOG_WARNING, "uploading", path, &err);
		} else {
			struct wb_jctx jc = {ctx, &j};
			bool copy = base[0] && base_size && clean &&
			            !__atomic_load_n(&ctx->wb->no_part_copy, __ATOMIC_RELAXED);
			bool refused = false;
			r = wb_multipart(ctx, key, fd, size, &o, clean, nchunks, copy ? key : NULL,
			                 base_size, wb_journal_mpu, &jc, etag, &refused);
			if (r && refused) {
				/* The server has no UploadPartCopy (s3rver: 501): send
				 * every part, now and for the rest of this mount. */
				if (!__atomic_exchange_n(&ctx->wb->no_part_copy, true,
				                         __ATOMIC_RELAXED))
					fs_log(FS_LOG_WARNING,
					       "the server refused UploadPartCopy (%s); "
					       "uploading whole files from now on",
					       strerror(-r));
				r = wb_multipart(ctx, key, fd, size, &o, NULL, 0, NULL, 0,
				                 wb_journal_mpu, &jc, etag, NULL);
			}
			if (r && jid) {
				j.state = WB_J_STAGED; /* the upload was aborted */
				FS_IGNORE(meta_journal_update(ctx->meta, &j));
			}
		}
	}
	if (!r) {
		/* A PUT does not say its LastModified: 0 ("unknown") lets the next
		 * listing adopt the listed one for this ETag and size instead of
		 * taking the object for a new version (and dropping its HEAD
		 * fields and cached content). */
		bool found;
		int c = meta_upload_done(ctx->meta, path, etag, size, jid, &found);
		if (c)
			fs_log(FS_LOG_WARNING,
			       "index: %s uploaded but not recorded, its journal row kept: %s",
			       path, strerror(-c));
		/* Whatever we cached for the key is an older version. */
		cache_invalidate(ctx->cache, key);
		fs_log(FS_LOG_DEBUG, "uploaded %s (%" PRIu64 " bytes)", path, size);
	}

	pthread_mutex_lock(&f->lock);
	f->uploading = false;
	if (!r) {
		f->uploaded = v;
		f->jid = 0;
		f->journaled = 0;
		f->err = 0;
		f->backoff_s = 0;
		snprintf(f->etag, sizeof(f->etag), "%s", etag);
		f->base_size = size;
		f->gen++;
		if (f->clean)
			memset(f->clean, 1, f->nchunks);
	} else {
		f->jid = jid;
		f->journaled = jid ? v : 0;
		f->err = r;
		f->backoff_s = f->backoff_s ? f->backoff_s * 2 : 2;
		if (f->backoff_s > WB_BACKOFF_MAX)
			f->backoff_s = WB_BACKOFF_MAX;
		f->retry_at_ns = fs_now_ns() + (int64_t)f->backoff_s * 1000000000;
		fs_log(FS_LOG_ERR, "upload of %s failed (%s); kept on disk, retrying in %d s", path,
		       strerror(-r), f->backoff_s);
	}
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_lock(&ctx->wb->lock);
	ctx->wb->healthy = r == 0;
	pthread_mutex_unlock(&ctx->wb->lock);

	meta_entry_clear(&e);
	s3_meta_clear(&sm);
	free(clean);
	free(path);
	free(key);
	return r;
}

/* Makes f's data safe without uploading it: fsync'ed and journaled, so the
 * upload can happen after close returned. */
static int wb_journal_now(struct fs_ctx *ctx, struct fs_file *f)
{
	meta_journal_entry j;
	int64_t jid;
	int r = 0;

	pthread_mutex_lock(&f->lock);
	wb_wait_quiet(f);
	if (!wb_dirty(f) || (f->jid && f->journaled == f->version)) {
		pthread_mutex_unlock(&f->lock);
		return 0;
	}
	if (f->fd < 0 || fdatasync(f->fd) < 0)
		r = f->fd < 0 ? -EIO : -errno;
	/* Size and mtime as of this close, for the next mount's listing too:
	 * a lazy commit (wb_index_update), before the journal row, whose
	 * durable commit then covers it - one fsync per close, not two. */
	if (!r)
		(void)wb_index_update(ctx, f);
	jid = f->jid;
	j = (meta_journal_entry){.id = jid,
	                         .path = f->path,
	                         .staged_file = f->key,
	                         .size = f->size,
	                         .state = WB_J_STAGED,
	                         .created_ns = fs_now_ns()};
	if (!r)
		r = jid ? meta_journal_update(ctx->meta, &j)
		        : meta_journal_add(ctx->meta, &j, &jid);
	if (wb_room(ctx, r, 0))
		r = jid ? meta_journal_update(ctx->meta, &j)
		        : meta_journal_add(ctx->meta, &j, &jid);
	if (!r) {
		f->jid = jid;
		f->journaled = f->version;
	} else {
		fs_log(FS_LOG_ERR, "journal: cannot record %s: %s", f->path, strerror(-r));
	}
	pthread_mutex_unlock(&f->lock);
	return r;
}

/* Hands f to the upload pool (it takes a reference). */
static void wb_enqueue(struct fs_ctx *ctx, struct fs_file *f)
{
	struct wb_qnode *n = malloc(sizeof(*n));
	struct fs_wb *wb = ctx->wb;

	pthread_mutex_lock(&wb->lock);
	pthread_mutex_lock(&f->lock);
	if (f->queued || !n || wb->stopping) {
		pthread_mutex_unlock(&f->lock);
		pthread_mutex_unlock(&wb->lock);
		free(n);
		return;
	}
	f->queued = true;
	pthread_mutex_unlock(&f->lock);
	f->refs++;
	n->f = f;
	n->next = NULL;
	if (wb->qtail)
		wb->qtail->next = n;
	else
		wb->qhead = n;
	wb->qtail = n;
	pthread_cond_broadcast(&wb->cond);
	pthread_mutex_unlock(&wb->lock);
}

static void *wb_worker(void *arg)
{
	struct fs_ctx *ctx = arg;
	struct fs_wb *wb = ctx->wb;

	pthread_mutex_lock(&wb->lock);
	for (;;) {
		while (!wb->qhead && !wb->stopping)
			pthread_cond_wait(&wb->cond, &wb->lock);
		if (!wb->qhead)
			break;
		struct wb_qnode *n = wb->qhead;
		wb->qhead = n->next;
		if (!wb->qhead)
			wb->qtail = NULL;
		wb->active++;
		pthread_mutex_unlock(&wb->lock);

		struct fs_file *f = n->f;
		free(n);
		pthread_mutex_lock(&f->lock);
		f->queued = false;
		pthread_mutex_unlock(&f->lock);
		(void)wb_upload(ctx, f);
		wb_retire(ctx, f);
		wb_put(ctx, f);

		pthread_mutex_lock(&wb->lock);
		wb->active--;
		pthread_cond_broadcast(&wb->cond);
	}
	pthread_mutex_unlock(&wb->lock);
	return NULL;
}

/* Every second: files whose upload failed and whose backoff has passed go
 * back to the pool. */
static void *wb_retrier(void *arg)
{
	struct fs_ctx *ctx = arg;
	struct fs_wb *wb = ctx->wb;

	pthread_mutex_lock(&wb->lock);
	while (!wb->stopping) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&wb->cond, &wb->lock, &ts);
		if (wb->stopping)
			break;
		struct fs_file *due[64];
		int n = 0;
		int64_t now = fs_now_ns();
		for (int b = 0; b < WB_BUCKETS && n < 64; b++) {
			for (struct fs_file *f = wb->table[b]; f && n < 64; f = f->next) {
				pthread_mutex_lock(&f->lock);
				bool go = f->err && wb_dirty(f) && !f->uploading && !f->queued &&
				          !f->held && f->retry_at_ns <= now;
				pthread_mutex_unlock(&f->lock);
				if (go) {
					f->refs++;
					due[n++] = f;
				}
			}
		}
		pthread_mutex_unlock(&wb->lock);
		for (int i = 0; i < n; i++) {
			fs_log(FS_LOG_INFO, "retrying the upload of %s", due[i]->path);
			wb_enqueue(ctx, due[i]);
			wb_put(ctx, due[i]);
		}
		pthread_mutex_lock(&wb->lock);
	}
	pthread_mutex_unlock(&wb->lock);
	return NULL;
}

/* Writers wait while staged data exceeds max_dirty and uploads are under
 * way that will bring it down (waiting with none would never end). */
static void wb_throttle(struct fs_ctx *ctx)
{
	struct fs_wb *wb = ctx->wb;
	bool logged = false;

	for (;;) {
		if (cache_dirty_bytes(ctx->cache) <= ctx->max_dirty)
			return;
		pthread_mutex_lock(&wb->lock);
		bool busy = wb->active || wb->qhead;
		pthread_mutex_unlock(&wb->lock);
		if (!busy)
			return;
		if (!logged) {
			fs_log(FS_LOG_INFO, "more than max_dirty staged: writers wait for uploads");
			logged = true;
		}
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

/* ---------------------------------------------------------------- handles */

static struct fs_handle *wb_handle(struct fuse_file_info *fi)
{
	return (struct fs_handle *)(uintptr_t)fi->fh;
}

static int wb_handle_new(struct fs_ctx *ctx, struct fs_file *f, struct fuse_file_info *fi)
{
	struct fs_handle *h = calloc(1, sizeof(*h));

	if (!h)
		return -ENOMEM;
	h->f = f;
	h->writable = (fi->flags & O_ACCMODE) != O_RDONLY;
	pthread_mutex_init(&h->lock, NULL);
	pthread_mutex_lock(&f->lock);
	f->handles++;
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_lock(&ctx->wb->lock);
	h->next = ctx->wb->handles;
	if (h->next)
		h->next->prev = h;
	ctx->wb->handles = h;
	pthread_mutex_unlock(&ctx->wb->lock);
	fi->fh = (uint64_t)(uintptr_t)h;
	return 0;
}

/* Truncates f to size.  f->lock held. */
static int wb_truncate_locked(struct fs_ctx *ctx, struct fs_file *f, uint64_t size)
{
	int r;

	wb_wait_quiet(f);
	r = wb_stage(ctx, f, size == 0);
	if (r)
		return r;
	if (ftruncate(f->fd, (off_t)size) < 0)
		return -errno;
	if (size < f->size)
		wb_mark_dirty_range(ctx, f, size, f->size - size);
	else
		wb_mark_dirty_range(ctx, f, f->size, size - f->size);
	f->size = size;
	wb_changed(ctx, f);
	return 0;
}

/* The file of `path` for an open, made from the index when not open yet
 * (*existed: it was open, or still owed an upload). */
static int wb_open_file(struct fs_ctx *ctx, const char *path, struct fs_file **out, bool *existed)
{
	struct fs_file *f = wb_get(ctx, path);
	meta_entry e;
	int r;

	*existed = f != NULL;
	if (f) {
		*out = f;
		return 0;
	}
	r = fs_lookup(ctx, path, &e);
	if (r)
		return r;
	if (e.is_dir) {
		meta_entry_clear(&e);
		return -EISDIR;
	}
	f = wb_file_new(ctx, path, e.etag, e.size);
	meta_entry_clear(&e);
	if (!f)
		return -ENOMEM;
	*out = wb_insert(ctx, f);
	return 0;
}

/*
 * Gives fi a handle of f (the caller's reference passes to it).  f was found
 * in the table, but may have been retired since (no handle, nothing owed:
 * out of the table, its staged file committed): a handle on it then would
 * stage a file of its own beside the next open's.  -EAGAIN then, with the
 * handle released: the caller opens again.
 */
static int wb_attach(struct fs_ctx *ctx, struct fs_file *f, struct fuse_file_info *fi)
{
	int r = wb_handle_new(ctx, f, fi);
	bool live;

	if (r) {
		wb_put(ctx, f);
		return r;
	}
	/* Retiring takes both locks and checks the handles: from here on it
	 * leaves f alone, so in_table stays as it is now. */
	pthread_mutex_lock(&ctx->wb->lock);
	live = f->in_table;
	pthread_mutex_unlock(&ctx->wb->lock);
	if (live)
		return 0;
	fs_release(NULL, fi);
	return -EAGAIN;
}

/*
 * An open of a file that was already open here (or still owed an upload)
 * keeps the kernel's cached pages: they hold what was written through this
 * mount (FUSE writes go through the page cache) of the version f names.
 * Dropping them would also race with a write in flight on another handle:
 * the kernel copies a write into its page before the daemon has it, and a
 * page dropped then and read again in between holds the old bytes until the
 * next invalidation - a writer would read back what it did not write
 * (tests/test_stress.py).  Only pages of a version f no longer names go.
 */
static void wb_keep_cache(struct fs_file *f, struct fuse_file_info *fi)
{
	pthread_mutex_lock(&f->lock);
	if (f->kernel_stale)
		f->kernel_stale = false; /* this open drops them */
	else
		fi->keep_cache = 1;
	pthread_mutex_unlock(&f->lock);
}

/* wb_open_file and wb_attach: a handle of the file of `path` in fi. */
static int wb_open_handle(struct fs_ctx *ctx, const char *path, struct fuse_file_info *fi,
                          struct fs_file **out)
{
	bool existed;
	int r;

	do {
		r = wb_open_file(ctx, path, out, &existed);
		if (!r)
			r = wb_attach(ctx, *out, fi);
	} while (r == -EAGAIN);
	if (!r && existed)
		wb_keep_cache(*out, fi);
	return r;
}

int fs_open(const char *path, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = wb_ctx();
	bool wr = (fi->flags & O_ACCMODE) != O_RDONLY;
	struct fs_file *f;
	int r;

	if (ctx->ro && (wr || (fi->flags & O_TRUNC)))
		return -EROFS;
	r = wb_open_handle(ctx, path, fi, &f);
	if (r)
		return r;
	if (wr && (fi->flags & O_TRUNC)) {
		pthread_mutex_lock(&f->lock);
		/* Even an empty file: O_TRUNC updates mtime and ctime. */
		r = wb_truncate_locked(ctx, f, 0);
		pthread_mutex_unlock(&f->lock);
		if (r) {
			fs_release(path, fi);
			return r;
		}
	}
	return 0;
}

int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = wb_ctx();
	struct fuse_context *fc = fuse_get_context();
	size_t len = strlen(path);
	char parent[len + 1];
	meta_entry pe, e = {0};
	struct fs_file *f;
	int64_t now = fs_now_ns();
	int r;

	if (ctx->ro)
		return -EROFS;
	if (!S_ISREG(mode) && (mode & S_IFMT))
		return -EPERM;
	fs_parent_of(path, parent);
	r = fs_lookup(ctx, parent, &pe);
	if (r)
		return r;
	bool isdir = pe.is_dir;
	meta_entry_clear(&pe);
	if (!isdir)
		return -ENOTDIR;
	f = wb_get(ctx, path);
	if (f) {
		/* Raced with another create or still uploading: open that one
		 * (or, if it was retired meanwhile, what it left). */
		r = wb_attach(ctx, f, fi);
		if (!r)
			wb_keep_cache(f, fi);
		return r == -EAGAIN ? wb_open_handle(ctx, path, fi, &f) : r;
	}
	e.is_dir = false;
	e.local = true;
	e.has = META_HAS_MODE | META_HAS_UID | META_HAS_GID | META_HAS_MTIME | META_HAS_CTIME |
	        META_HAS_ATIME;
	e.mode = S_IFREG | (mode & 07777);
	e.uid = fc->uid;
	e.gid = fc->gid;
	e.mtime_ns = e.ctime_ns = e.atime_ns = now;
	e.last_modified_ns = now;
	/* Lazy: nothing is promised before close, whose journal row is
	 * committed durably after it (and so makes it durable too). */
	r = meta_upsert_lazy(ctx->meta, path, &e);
	if (wb_room(ctx, r, 0))
		r = meta_upsert_lazy(ctx->meta, path, &e);
	if (r)
		return r;
	f = wb_file_new(ctx, path, NULL, 0);
	if (!f)
		return -ENOMEM;
	r = wb_stage(ctx, f, true);
	if (!r && ftruncate(f->fd, 0) < 0)
		r = -errno;
	if (r) {
		wb_file_free(f);
		FS_IGNORE(meta_delete(ctx->meta, path));
		return r;
	}
	/* An empty file is a change too: it must reach S3. */
	f->version = 1;
	f->mtime_ns = now;
	f->mtime_set = true;
	f = wb_insert(ctx, f);
	r = wb_handle_new(ctx, f, fi);
	if (r)
		wb_put(ctx, f);
	fs_dir_touch(ctx, path);
	return r;
}

/* One read through handle h: from the staged copy, else from the version
 * f names (-ESTALE when S3 no longer has it). */
static ssize_t wb_read(struct fs_ctx *ctx, struct fs_handle *h, char *buf, size_t size, off_t off)
{
	struct fs_file *f = h->f;
	ssize_t n;

	pthread_mutex_lock(&f->lock);
	if (f->fd >= 0) {
		/* Staged: the writer's bytes.  pread under the lock so that a
		 * concurrent truncate cannot tear the answer. */
		uint64_t end = f->size;
		if ((uint64_t)off >= end)
			n = 0;
		else {
			if ((uint64_t)off + size > end)
				size = (size_t)(end - (uint64_t)off);
			n = pread(f->fd, buf, size, off);
			if (n < 0)
				n = -errno;
		}
		pthread_mutex_unlock(&f->lock);
		return (int)n;
	}
	char etag[S3_ETAG_MAX], *key = strdup(f->key);
	uint64_t fsize = f->size;
	unsigned gen = f->gen;
	snprintf(etag, sizeof(etag), "%s", f->etag);
	pthread_mutex_unlock(&f->lock);
	if (!key)
		return -ENOMEM;
	if (!etag[0]) {
		free(key);
		return 0;
	}
	pthread_mutex_lock(&h->lock);
	if (h->reader && h->reader_gen != gen) {
		cache_reader_close(h->reader);
		h->reader = NULL;
	}
	if (!h->reader) {
		h->reader = cache_reader_open(ctx->cache, key, etag, fsize);
		h->reader_gen = gen;
	}
	n = h->reader ? cache_reader_read(h->reader, (uint64_t)off, size, buf) : -ENOMEM;
	pthread_mutex_unlock(&h->lock);
	free(key);
	return n;
}

int fs_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = wb_ctx();
	struct fs_handle *h = wb_handle(fi);
	ssize_t n = wb_read(ctx, h, buf, size, off);

	if (n == -ESTALE) {
		/* The version is gone: read the one the index knows now, if
		 * it knows a newer one (see wb_refresh_version). */
		pthread_mutex_lock(&h->f->lock);
		bool newer = wb_refresh_version(ctx, h->f);
		pthread_mutex_unlock(&h->f->lock);
		if (newer)
			n = wb_read(ctx, h, buf, size, off);
	}
	if (n == -ESTALE) {
		fs_log(FS_LOG_WARNING, "%s changed in the bucket while open; reopen it",
		       path ? path : "(unlinked)");
		return -EIO;
	}
	return (int)n;
}

int fs_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = wb_ctx();
	struct fs_file *f = wb_handle(fi)->f;
	ssize_t n = 0;
	int r;
	bool room_tried = false;

	(void)path;
	if (ctx->ro)
		return -EROFS;
	pthread_mutex_lock(&f->lock);
	wb_wait_quiet(f);
	r = wb_stage(ctx, f, false);
	for (size_t done = 0; !r && done < size; done += (size_t)n) {
		n = pwrite(f->fd, buf + done, size - done, off + (off_t)done);
		if (n < 0)
			r = -errno;
		if (n < 0 && !room_tried && wb_room(ctx, r, size - done)) {
			room_tried = true;
			r = 0;
			n = 0;
		}
	}
	if (!r) {
		wb_mark_dirty_range(ctx, f, (uint64_t)off, size);
		if ((uint64_t)off + size > f->size)
			f->size = (uint64_t)off + size;
		wb_changed(ctx, f);
	}
	f->since_throttle += size;
	bool check = f->since_throttle >= 4 * WB_MIB;
	if (check)
		f->since_throttle = 0;
	pthread_mutex_unlock(&f->lock);
	if (check)
		wb_throttle(ctx);
	return r ? r : (int)size;
}

int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = wb_ctx();
	struct fs_file *f;
	int r;

	if (ctx->ro)
		return -EROFS;
	if (size < 0)
		return -EINVAL;
	if (!fi)
		return fs_wb_truncate_path(ctx, path, size);
	f = wb_handle(fi)->f;
	pthread_mutex_lock(&f->lock);
	r = wb_truncate_locked(ctx, f, (uint64_t)size);
	pthread_mutex_unlock(&f->lock);
	return r;
}

int fs_wb_truncate_path(struct fs_ctx *ctx, const char *path, off_t size)
{
	struct fuse_file_info fi = {.flags = O_WRONLY};
	struct fs_file *f;
	int r;

	r = wb_open_handle(ctx, path, &fi, &f);
	if (r)
		return r;
	pthread_mutex_lock(&f->lock);
	r = wb_truncate_locked(ctx, f, (uint64_t)size);
	pthread_mutex_unlock(&f->lock);
	/* truncate(2) has no close to report a failure to: upload now. */
	if (!r && wb_upload(ctx, f))
		r = -EIO;
	fs_release(path, &fi);
	return r;
}

int fs_flush(const char *path, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = wb_ctx();
	struct fs_file *f = wb_handle(fi)->f;
	bool dirty, async;
	int r;

	(void)path;
	pthread_mutex_lock(&f->lock);
	dirty = wb_dirty(f);
	async = f->size <= ctx->async_close_max && ctx->async_close_max > 0;
	pthread_mutex_unlock(&f->lock);
	if (!dirty)
		return 0;
	pthread_mutex_lock(&ctx->wb->lock);
	if (!ctx->wb->healthy)
		async = false; /* uploads fail: let the caller know at close */
	pthread_mutex_unlock(&ctx->wb->lock);
	if (async) {
		r = wb_journal_now(ctx, f);
		if (!r) {
			wb_enqueue(ctx, f);
			return 0;
		}
		/* Not journaled: fall back to uploading now. */
	}
	r = wb_upload(ctx, f);
	/* A full cache disk is the caller's ENOSPC, as for write. */
	return r == -ENOSPC || r == -EDQUOT ? r : r ? -EIO : 0;
}

int fs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = wb_ctx();
	struct fs_file *f = wb_handle(fi)->f;

	(void)path;
	(void)datasync;
	/* Waits for a background upload of this file, then uploads what is
	 * left: fsync returns once S3 has every byte written before it. */
	return wb_upload(ctx, f) ? -EIO : 0;
}

int fs_release(const char *path, struct fuse_file_info *fi)
{
	struct fs_ctx *ctx = wb_ctx();
	struct fs_handle *h = wb_handle(fi);
	struct fs_file *f = h->f;

	(void)path;
	pthread_mutex_lock(&ctx->wb->lock);
	if (h->prev)
		h->prev->next = h->next;
	else
		ctx->wb->handles = h->next;
	if (h->next)
		h->next->prev = h->prev;
	pthread_mutex_unlock(&ctx->wb->lock);
	if (h->reader)
		cache_reader_close(h->reader);
	pthread_mutex_destroy(&h->lock);
	free(h);
	pthread_mutex_lock(&f->lock);
	f->handles--;
	bool owed = f->handles == 0 && wb_dirty(f) && !f->uploading && !f->queued && !f->err;
	pthread_mutex_unlock(&f->lock);
	/* Normally flush has uploaded or queued it; a file whose flush was not
	 * called (or failed to journal) goes to the pool now. */
	if (owed && wb_journal_now(ctx, f) == 0)
		wb_enqueue(ctx, f);
	wb_retire(ctx, f);
	wb_put(ctx, f);
	return 0;
}

int fs_fgetattr(struct fs_ctx *ctx, struct fuse_file_info *fi, struct stat *st)
{
	struct fs_file *f = wb_handle(fi)->f;
	meta_entry e;
	char *path;
	int r;

	pthread_mutex_lock(&f->lock);
	path = f->unlinked ? NULL : strdup(f->path);
	uint32_t gmode = 0, guid = 0, ggid = 0;
	unsigned ghas = 0;
	if (f->gone) {
		ghas = f->gone->has;
		gmode = f->gone->mode;
		guid = f->gone->uid;
		ggid = f->gone->gid;
	}
	pthread_mutex_unlock(&f->lock);
	if (path && meta_lookup(ctx->meta, path, &e) == 0) {
		free(path);
	} else {
		free(path);
		memset(&e, 0, sizeof(e));
		e.last_modified_ns = fs_now_ns();
		e.has = ghas & (META_HAS_MODE | META_HAS_UID | META_HAS_GID);
		e.mode = gmode;
		e.uid = guid;
		e.gid = ggid;
	}
	pthread_mutex_lock(&f->lock);
	e.size = f->size;
	if (f->mtime_set) {
		e.mtime_ns = e.ctime_ns = f->mtime_ns;
		e.has |= META_HAS_MTIME | META_HAS_CTIME;
	}
	bool unlinked = f->unlinked;
	pthread_mutex_unlock(&f->lock);
	r = 0;
	e.is_dir = false;
	fs_fill_stat(ctx, &e, st);
	if (unlinked)
		st->st_nlink = 0;
	meta_entry_clear(&e);
	return r;
}

/* ---------------------------------------------------------------- namespace hooks */

void fs_wb_unlink(struct fs_ctx *ctx, const char *path)
{
	struct fs_file *f = wb_get(ctx, path);
	int r;

	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	wb_wait_quiet(f);
	/* An open handle keeps reading and writing the data after the name
	 * is gone: make sure it has its own copy before the object goes. */
	if (f->handles && f->fd < 0 && f->etag[0]) {
		r = wb_stage(ctx, f, false);
		if (r)
			fs_log(FS_LOG_WARNING, "%s: unlinked while open, contents lost: %s", path,
			       strerror(-r));
	}
	if (f->jid && meta_journal_remove(ctx->meta, f->jid))
		fs_log(FS_LOG_WARNING, "journal: cannot remove the row of %s", path);
	f->jid = 0;
	/* The staged file leaves the cache; our descriptor keeps its data. */
	if (f->fd >= 0 && cache_stage_discard(ctx->cache, f->key))
		fs_log(FS_LOG_DEBUG, "%s: no staged file to discard", path);
	f->unlinked = true;
	f->gen++;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_lock(&ctx->wb->lock);
	if (f->in_table)
		wb_table_remove_locked(ctx->wb, f);
	pthread_mutex_unlock(&ctx->wb->lock);
	wb_put(ctx, f);
}

int fs_wb_hide(struct fs_ctx *ctx, const char *from, const char *to)
{
	struct fs_file *f = wb_get(ctx, from);
	char *np = strdup(to);

	meta_entry *gone = calloc(1, sizeof(*gone));

	if (!f || !np || !gone) {
		free(np);
		free(gone);
		if (f)
			wb_put(ctx, f);
		return f ? -ENOMEM : -ENOENT;
	}
	/* fstat on it keeps answering with its mode and owner. */
	if (meta_lookup(ctx->meta, from, gone) == 0) {
		pthread_mutex_lock(&f->lock);
		if (!f->gone) {
			f->gone = gone;
			gone = NULL;
		}
		pthread_mutex_unlock(&f->lock);
	}
	if (gone) {
		meta_entry_clear(gone);
		free(gone);
	}
	fs_wb_unlink(ctx, from);
	pthread_mutex_lock(&ctx->wb->lock);
	pthread_mutex_lock(&f->lock);
	free(f->path);
	f->path = np;
	bool open = f->handles > 0;
	pthread_mutex_unlock(&f->lock);
	/* Back in the table under the hidden name, for getattr and the
	 * unlink that libfuse sends after the last release (none comes if
	 * the last release has already been). */
	if (!f->in_table && open && !wb_find_locked(ctx->wb, np))
		wb_table_add_locked(ctx->wb, f);
	pthread_mutex_unlock(&ctx->wb->lock);
	wb_put(ctx, f);
	return 0;
}

int fs_wb_hidden_stat(struct fs_ctx *ctx, const char *path, struct stat *st, bool forget)
{
	struct fs_file *f = wb_get(ctx, path);
	meta_entry e = {0};
	bool hidden;

	if (!f)
		return -ENOENT;
	pthread_mutex_lock(&f->lock);
	hidden = f->unlinked;
	if (f->gone) {
		e.has = f->gone->has;
		e.mode = f->gone->mode;
		e.uid = f->gone->uid;
		e.gid = f->gone->gid;
	}
	e.size = f->size;
	e.last_modified_ns = f->mtime_set ? f->mtime_ns : fs_now_ns();
	pthread_mutex_unlock(&f->lock);
	if (hidden && st) {
		fs_fill_stat(ctx, &e, st);
		st->st_nlink = 0;
	}
	if (hidden && forget) {
		pthread_mutex_lock(&ctx->wb->lock);
		if (f->in_table)
			wb_table_remove_locked(ctx->wb, f);
		pthread_mutex_unlock(&ctx->wb->lock);
	}
	wb_put(ctx, f);
	return hidden ? 0 : -ENOENT;
}

static bool wb_below(const char *path, const char *dir, size_t dlen)
{
	return strncmp(path, dir, dlen) == 0 && (path[dlen] == '\0' || path[dlen] == '/');
}

int fs_wb_rename_begin(struct fs_ctx *ctx, const char *from, bool *dirty_out)
{
	struct fs_wb *wb = ctx->wb;
	size_t flen = strlen(from);
	struct fs_file **v = NULL;
	size_t n = 0, cap = 0;

	*dirty_out = false;
	pthread_mutex_lock(&wb->rename_lock);
	pthread_mutex_lock(&wb->lock);
	for (int b = 0; b < WB_BUCKETS; b++) {
		for (struct fs_file *f = wb->table[b]; f; f = f->next) {
			if (!wb_below(f->path, from, flen))
				continue;
			if (n == cap) {
				cap = cap ? cap * 2 : 16;
				struct fs_file **nv = realloc(v, cap * sizeof(*nv));
				if (!nv)
					break;
				v = nv;
			}
			f->refs++;
			v[n++] = f;
		}
	}
	pthread_mutex_unlock(&wb->lock);
	/* Each may leave the table before it is held (its upload ended, no
	 * handle: retired); it is held all the same, and fs_wb_rename_end lets
	 * it go by this list, not by the table - an upload of it queued
	 * before it was retired would otherwise wait for it forever. */
	for (size_t i = 0; i < n; i++) {
		struct fs_file *f = v[i];
		pthread_mutex_lock(&f->lock);
		wb_wait_quiet(f);
		f->held = true;
		if (strcmp(f->path, from) == 0 && wb_dirty(f))
			*dirty_out = true;
		pthread_mutex_unlock(&f->lock);
	}
	wb->renaming = v;
	wb->n_renaming = n;
	return 0;
}

/* Moves f's staged copy under its new key.  f->lock held, f held. */
static int wb_move_stage(struct fs_ctx *ctx, struct fs_file *f, const char *old_key)
{
	int nfd, r;

	r = cache_stage_open(ctx->cache, f->key, NULL, 0, &nfd);
	if (r)
		return r;
	if (ftruncate(nfd, 0) < 0)
		r = -errno;
	for (off_t off = 0; !r && (uint64_t)off < f->size;) {
		char buf[1 << 16];
		ssize_t n = pread(f->fd, buf, sizeof(buf), off);
		if (n <= 0) {
			r = n < 0 ? -errno : -EIO;
			break;
		}
		if (pwrite(nfd, buf, (size_t)n, off) != n)
			r = -EIO;
		off += n;
	}
	if (!r && ftruncate(nfd, (off_t)f->size) < 0)
		r = -errno;
	if (!r && fdatasync(nfd) < 0)
		r = -errno;
	if (r) {
		close(nfd);
		FS_IGNORE(cache_stage_discard(ctx->cache, f->key));
		return r;
	}
	close(f->fd);
	f->fd = nfd;
	FS_IGNORE(cache_stage_discard(ctx->cache, old_key));
	return 0;
}

void fs_wb_rename_end(struct fs_ctx *ctx, const char *from, const char *to, bool done)
{
	struct fs_wb *wb = ctx->wb;
	size_t flen = strlen(from);
	struct fs_file **v = wb->renaming;
	size_t n = wb->n_renaming;

	wb->renaming = NULL;
	wb->n_renaming = 0;
	pthread_mutex_lock(&wb->lock);
	for (size_t i = 0; i < n; i++) {
		struct fs_file *f = v[i];
		char *np = NULL, *nk = NULL;

		pthread_mutex_lock(&f->lock);
		/* Retired meanwhile (out of the table): nothing to move. */
		if (done && f->in_table && wb_below(f->path, from, flen) &&
		    asprintf(&np, "%s%s", to, f->path + flen) < 0)
			np = NULL; /* asprintf leaves it undefined */
		if (np && (nk = fs_key_of(ctx, np, false)) != NULL) {
			char *ok = f->key;
			f->key = nk;
			if (f->unlinked) {
				/* Hidden (unlinked while open) in a renamed
				 * directory: its data lives in f->fd only. */
			} else if (f->fd >= 0 && wb_dirty(f) && wb_move_stage(ctx, f, ok)) {
				fs_log(FS_LOG_ERR, "%s: cannot move the staged data to %s", f->path,
				       np);
			} else if (f->fd >= 0 && !wb_dirty(f)) {
				/* Clean: the staged copy is just a cache of the old key. */
				close(f->fd);
				f->fd = -1;
				FS_IGNORE(cache_stage_discard(ctx->cache, ok));
			}
			free(ok);
			/* Out under the old name, in under the new (our own
			 * reference keeps f alive in between). */
			wb_table_remove_locked(wb, f);
			free(f->path);
			f->path = np;
			np = NULL;
			wb_table_add_locked(wb, f);
			/* The old object is gone: no server-side part copies from it.
			 * A clean file's copy has the same contents (its ETag may
			 * differ; reads ask the index again). */
			if (wb_dirty(f)) {
				f->etag[0] = '\0';
				free(f->clean);
				f->clean = NULL;
			} else {
				meta_entry e;
				if (meta_lookup(ctx->meta, f->path, &e) == 0) {
					snprintf(f->etag, sizeof(f->etag), "%s",
					         e.etag ? e.etag : "");
					meta_entry_clear(&e);
				}
			}
			f->gen++;
			if (f->jid) {
				meta_journal_entry j = {.id = f->jid,
				                        .path = f->path,
				                        .staged_file = f->key,
				                        .size = f->size,
				                        .state = WB_J_STAGED,
				                        .created_ns = fs_now_ns()};
				if (meta_journal_update(ctx->meta, &j))
					fs_log(FS_LOG_WARNING, "journal: cannot move %s", f->path);
			}
		}
		free(np);
		f->held = false;
		pthread_cond_broadcast(&f->cond);
		pthread_mutex_unlock(&f->lock);
	}
	pthread_mutex_unlock(&wb->lock);
	for (size_t i = 0; i < n; i++)
		wb_put(ctx, v[i]);
	free(v);
	pthread_mutex_unlock(&wb->rename_lock);
}

int fs_wb_setattr(struct fs_ctx *ctx, const char *path, int (*fn)(void *arg), void *arg)
{
	struct fs_file *f = wb_get(ctx, path);
	int r = 0;

	if (!f)
		return 0;
	pthread_mutex_lock(&f->lock);
	wb_wait_quiet(f);
	/* From now on the index has the times (utimens may have set them);
	 * only a later write stamps f's mtime again. */
	f->mtime_set = false;
	if (wb_dirty(f)) {
		r = fn(arg);
		if (!r) {
			/* The next upload carries the new headers; the index
			 * holds the times now (utimens may have set them). */
			f->version++;
			r = 1;
		}
	}
	pthread_mutex_unlock(&f->lock);
	wb_put(ctx, f);
	return r;
}

/* ---------------------------------------------------------------- start, stop */

struct wb_row {
	int64_t id;
	char *path, *key, *upload_id;
};

struct wb_rows {
	struct wb_row *v;
	size_t n, cap;
};

static int wb_collect_row(void *arg, const meta_journal_entry *j)
{
	struct wb_rows *rows = arg;

	if (rows->n == rows->cap) {
		size_t cap = rows->cap ? rows->cap * 2 : 16;
		struct wb_row *v = realloc(rows->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		rows->v = v;
		rows->cap = cap;
	}
	struct wb_row *r = &rows->v[rows->n];
	r->id = j->id;
	r->path = strdup(j->path ? j->path : "");
	r->key = strdup(j->staged_file ? j->staged_file : "");
	r->upload_id = j->upload_id ? strdup(j->upload_id) : NULL;
	if (!r->path || !r->key) {
		free(r->path);
		free(r->key);
		free(r->upload_id);
		return -ENOMEM;
	}
	rows->n++;
	return 0;
}

static bool wb_has_key(char **keys, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(keys[i], key) == 0)
			return true;
	return false;
}

/* Aborts the multipart uploads a crash left: those of journaled keys (this
 * mount's own, about to be uploaded again). */
static void wb_abort_stale(struct fs_ctx *ctx, struct wb_rows *rows)
{
	s3_mpu_list l = {0};
	s3_error err;
	int aborted = 0;

	if (!rows->n)
		return;
	if (s3_mpu_list_uploads(ctx->s3, ctx->prefix, &l, &err)) {
		fs_log_s3(FS_LOG_WARNING, "listing multipart uploads under",
		          *ctx->prefix ? ctx->prefix : "/", &err);
		return;
	}
	for (size_t i = 0; i < l.n; i++) {
		bool ours = false;
		for (size_t k = 0; k < rows->n && !ours; k++)
			ours = strcmp(rows->v[k].key, l.uploads[i].key) == 0 ||
			       (rows->v[k].upload_id &&
			        strcmp(rows->v[k].upload_id, l.uploads[i].upload_id) == 0);
		if (!ours)
			continue;
		if (s3_mpu_abort(ctx->s3, l.uploads[i].key, l.uploads[i].upload_id, &err))
			fs_log_s3(FS_LOG_WARNING, "aborting a stale multipart upload of",
			          l.uploads[i].key, &err);
		else
			aborted++;
	}
	if (aborted)
		fs_log(FS_LOG_INFO, "aborted %d multipart upload(s) left by a crash", aborted);
	s3_mpu_list_free(&l);
}

/* Puts a file left staged by the last mount back in the table, to upload. */
static int wb_resume(struct fs_ctx *ctx, const char *path, const char *key, int64_t jid)
{
	struct fs_file *f;
	meta_entry e;
	struct stat sb;
	int fd, r;

	r = cache_stage_open(ctx->cache, key, NULL, 0, &fd);
	if (r)
		return r;
	if (fstat(fd, &sb) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	f = wb_file_new(ctx, path, NULL, (uint64_t)sb.st_size);
	if (!f) {
		close(fd);
		return -ENOMEM;
	}
	if (strcmp(f->key, key) != 0) {
		fs_log(FS_LOG_ERR, "journal: %s is not the key of %s; skipped", key, path);
		close(fd);
		wb_file_free(f);
		return -EINVAL;
	}
	f->fd = fd;
	f->version = 1;
	f->jid = jid;
	f->journaled = jid ? 1 : 0;
	/* The index must show the staged version until it is uploaded. */
	if (meta_lookup(ctx->meta, path, &e) == 0) {
		if (e.size != f->size || !e.local) {
			e.size = f->size;
			e.local = true;
			FS_IGNORE(meta_upsert(ctx->meta, path, &e));
		}
		meta_entry_clear(&e);
	}
	f = wb_insert(ctx, f);
	wb_enqueue(ctx, f);
	wb_put(ctx, f);
	return 0;
}

static void wb_recover(struct fs_ctx *ctx)
{
	struct wb_rows rows = {0};
	char **keys = NULL;
	size_t nkeys = 0;
	int resumed = 0;

	if (meta_journal_list(ctx->meta, wb_collect_row, &rows))
		fs_log(FS_LOG_ERR, "journal: cannot read it");
	if (cache_stage_keys(ctx->cache, &keys, &nkeys))
		fs_log(FS_LOG_ERR, "cannot list the staged files");
	wb_abort_stale(ctx, &rows);
	for (size_t i = 0; i < rows.n; i++) {
		struct wb_row *row = &rows.v[i];
		if (!wb_has_key(keys, nkeys, row->key)) {
			fs_log(FS_LOG_ERR,
			       "journal: the staged data of %s is gone; dropping the row",
			       row->path);
			FS_IGNORE(meta_journal_remove(ctx->meta, row->id));
			continue;
		}
		if (wb_resume(ctx, row->path, row->key, row->id) == 0)
			resumed++;
	}
	/* Staged files without a row: changed but not closed when the last
	 * mount ended.  Keep what the index still calls local; drop the rest
	 * (leftovers of uploaded files). */
	for (size_t i = 0; i < nkeys; i++) {
		bool journaled = false;
		for (size_t k = 0; k < rows.n && !journaled; k++)
			journaled = strcmp(rows.v[k].key, keys[i]) == 0;
		if (journaled)
			continue;
		size_t klen = strlen(keys[i]);
		char *path = malloc(klen + 2);
		bool marker = false, keep = false;
		meta_entry e;
		if (path &&
		    meta_key_to_path(ctx->prefix, keys[i], klen, path, klen + 2, &marker) >= 0 &&
		    !marker && meta_lookup(ctx->meta, path, &e) == 0) {
			keep = e.local && !e.is_dir;
			meta_entry_clear(&e);
		}
		if (keep && wb_resume(ctx, path, keys[i], 0) == 0) {
			resumed++;
		} else if (!keep) {
			FS_IGNORE(cache_stage_discard(ctx->cache, keys[i]));
		}
		free(path);
	}
	if (resumed)
		fs_log(FS_LOG_INFO, "resuming %d upload(s) left by the last mount", resumed);
	for (size_t i = 0; i < rows.n; i++) {
		free(rows.v[i].path);
		free(rows.v[i].key);
		free(rows.v[i].upload_id);
	}
	free(rows.v);
	for (size_t i = 0; i < nkeys; i++)
		free(keys[i]);
	free(keys);
}

int fs_wb_start(struct fs_ctx *ctx)
{
	struct fs_wb *wb = calloc(1, sizeof(*wb));
	int n = ctx->upload_threads > 0 ? ctx->upload_threads : 16;

	if (!wb)
		return -ENOMEM;
	pthread_mutex_init(&wb->lock, NULL);
	pthread_cond_init(&wb->cond, NULL);
	pthread_mutex_init(&wb->rename_lock, NULL);
	wb->healthy = true;
	wb->workers = calloc((size_t)n, sizeof(*wb->workers));
	ctx->wb = wb;
	if (!wb->workers) {
		fs_wb_stop(ctx);
		return -ENOMEM;
	}
	for (int i = 0; i < n; i++)
		if (pthread_create(&wb->workers[wb->nworkers], NULL, wb_worker, ctx) == 0)
			wb->nworkers++;
	if (pthread_create(&wb->retrier, NULL, wb_retrier, ctx) == 0)
		wb->retrier_started = true;
	if (!wb->nworkers || !wb->retrier_started) {
		fs_wb_stop(ctx);
		return -EAGAIN;
	}
	if (!ctx->ro)
		wb_recover(ctx);
	return 0;
}

/* Uploads owed (dirty or running); with retry_now, failed ones retry at
 * once.  *no_room: how many of them failed again for want of local disk
 * space since they were last told to retry, and wait for nothing. */
static int wb_pending(struct fs_wb *wb, bool retry_now, int *no_room)
{
	int n = 0;

	*no_room = 0;

	pthread_mutex_lock(&wb->lock);
	for (int b = 0; b < WB_BUCKETS; b++) {
		for (struct fs_file *f = wb->table[b]; f; f = f->next) {
			pthread_mutex_lock(&f->lock);
			if (wb_dirty(f) || f->uploading) {
				n++;
				if (retry_now)
					f->retry_at_ns = 0;
				else if (!f->uploading && !f->queued && f->retry_at_ns &&
				         (f->err == -ENOSPC || f->err == -EDQUOT))
					(*no_room)++;
			}
			pthread_mutex_unlock(&f->lock);
		}
	}
	pthread_mutex_unlock(&wb->lock);
	return n;
}

void fs_wb_stop(struct fs_ctx *ctx)
{
	struct fs_wb *wb = ctx->wb;
	int64_t deadline;
	int n, no_room;

	if (!wb)
		return;
	n = wb_pending(wb, true, &no_room);
	if (n && wb->nworkers) {
		fs_log(FS_LOG_INFO, "unmount: waiting up to %d s for %d upload(s)",
		       ctx->unmount_wait_s, n);
		deadline = fs_now_ns() + (int64_t)ctx->unmount_wait_s * 1000000000;
		/* Not for uploads that failed again for want of space in the
		 * cache directory: waiting does not make room. */
		while ((n = wb_pending(wb, false, &no_room)) > no_room && fs_now_ns() < deadline) {
			struct timespec ts = {0, 100 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		if (n && n == no_room)
			fs_log(FS_LOG_WARNING,
			       "unmount: %d upload(s) failed again for want of space in the cache "
			       "directory; what was journaled resumes at the next mount",
			       n);
		else if (n)
			fs_log(FS_LOG_WARNING,
			       "unmount: %d upload(s) not done; they stay journaled and resume at "
			       "the next mount",
			       n);
		else
			fs_log(FS_LOG_INFO, "unmount: every upload is done");
	}
	pthread_mutex_lock(&wb->lock);
	wb->stopping = true;
	pthread_cond_broadcast(&wb->cond);
	pthread_mutex_unlock(&wb->lock);
	for (int i = 0; i < wb->nworkers; i++)
		pthread_join(wb->workers[i], NULL);
	if (wb->retrier_started)
		pthread_join(wb->retrier, NULL);
	/* Handles whose release never came: the kernel drops a RELEASE still
	 * queued when the connection ends at unmount.  No FUSE call runs any
	 * more; what they wrote was journaled at flush. */
	n = 0;
	while (wb->handles) {
		struct fs_handle *h = wb->handles;
		struct fs_file *f = h->f;

		wb->handles = h->next;
		if (h->reader)
			cache_reader_close(h->reader);
		pthread_mutex_destroy(&h->lock);
		free(h);
		f->handles--;
		if (--f->refs == 0)
			wb_file_free(f);
		n++;
	}
	if (n)
		fs_log(FS_LOG_INFO, "unmount: %d handle(s) never released", n);
	while (wb->qhead) {
		struct wb_qnode *q = wb->qhead;
		wb->qhead = q->next;
		q->f->refs--;
		if (!q->f->refs)
			wb_file_free(q->f);
		free(q);
	}
	for (int b = 0; b < WB_BUCKETS; b++) {
		while (wb->table[b]) {
			struct fs_file *f = wb->table[b];
			wb->table[b] = f->next;
			if (--f->refs == 0)
				wb_file_free(f);
		}
	}
	free(wb->workers);
	pthread_mutex_destroy(&wb->rename_lock);
	pthread_cond_destroy(&wb->cond);
	pthread_mutex_destroy(&wb->lock);
	free(wb);
	ctx->wb = NULL;
}
