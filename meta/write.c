/*
 * write.c - changes that do not come from a listing: HEAD results, local
 * creations, deletions and renames, and the upload journal.  Each function
 * is one writer transaction.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Steps a writer statement that returns no row; resets it. */
static int meta_run(meta *m, sqlite3_stmt *st, const char *what)
{
	int rc = sqlite3_step(st);

	meta_stmt_done(st);
	return rc == SQLITE_DONE ? 0 : meta_sqlite_err(m, &m->writer, rc, what);
}

/* Finishes a transaction: commit on success, else roll back. */
static int meta_end(meta *m, int err)
{
	if (err) {
		meta_write_rollback(m);
		return err;
	}
	return meta_write_commit(m);
}

struct meta_kind {
	bool found, is_dir;
};

static int meta_kind(meta *m, const char *path, struct meta_kind *k)
{
	sqlite3_stmt *st;
	int rc;

	memset(k, 0, sizeof(*k));
	if (path[1] == '\0') {
		k->found = k->is_dir = true;
		return 0;
	}
	st = meta_stmt(m, &m->writer, MS_LIST_GET);
	if (!st)
		return -EIO;
	meta_bind_path(st, 1, path);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		k->found = true;
		k->is_dir = sqlite3_column_int(st, 0);
	}
	meta_stmt_done(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0
	                                             : meta_sqlite_err(m, &m->writer, rc, "kind");
}

/* The parent of a non-root path must be an existing directory. */
static int meta_parent_ok(meta *m, const char *path)
{
	struct meta_kind k;
	size_t plen;
	const char *name;
	char *parent;
	int err;

	meta_path_split(path, &plen, &name);
	parent = strndup(path, plen);
	if (!parent)
		return -ENOMEM;
	err = meta_kind(m, parent, &k);
	free(parent);
	if (err)
		return err;
	return !k.found ? -ENOENT : !k.is_dir ? -ENOTDIR : 0;
}

static bool meta_path_ok(const char *path)
{
	return meta_path_valid(path) && path[1] != '\0';
}

/* ---------------------------------------------------------------- HEAD */

/* -ESTALE or -ENOENT, for a conditional update that matched no row. */
static int meta_why_unchanged(meta *m, const char *path)
{
	struct meta_kind k;
	int err = meta_kind(m, path, &k);

	return err ? err : k.found ? -ESTALE : -ENOENT;
}

static void meta_bind_opt(sqlite3_stmt *st, int i, bool has, int64_t v)
{
	if (has)
		sqlite3_bind_int64(st, i, v);
}

int meta_set_head(meta *m, const char *path, const char *etag, const meta_head *h)
{
	sqlite3_stmt *st;
	int err;

	if (!meta_path_ok(path) || !etag || !h)
		return -EINVAL;
	err = meta_write_begin_lazy(m);
	if (err)
		return err;
	st = meta_stmt(m, &m->writer, MS_SET_HEAD);
	if (!st)
		return meta_end(m, -EIO);
	meta_bind_path(st, 1, path);
	sqlite3_bind_text(st, 3, etag, -1, SQLITE_STATIC);
	meta_bind_opt(st, 4, h->has & META_HAS_MODE, h->mode);
	meta_bind_opt(st, 5, h->has & META_HAS_UID, h->uid);
	meta_bind_opt(st, 6, h->has & META_HAS_GID, h->gid);
	meta_bind_opt(st, 7, h->has & META_HAS_MTIME, h->mtime_ns);
	meta_bind_opt(st, 8, h->has & META_HAS_CTIME, h->ctime_ns);
	meta_bind_opt(st, 9, h->has & META_HAS_ATIME, h->atime_ns);
	if (h->xattr)
		sqlite3_bind_blob(st, 10, h->xattr, h->xattr_len, SQLITE_STATIC);
	err = meta_run(m, st, "set head");
	if (!err && sqlite3_changes(m->writer.db) == 0)
		err = meta_why_unchanged(m, path);
	return meta_end(m, err);
}

int meta_set_symlink(meta *m, const char *path, const char *etag, const char *target)
{
	sqlite3_stmt *st;
	int err;

	if (!meta_path_ok(path) || !etag || !target)
		return -EINVAL;
	err = meta_write_begin_lazy(m);
	if (err)
		return err;
	st = meta_stmt(m, &m->writer, MS_SET_SYMLINK);
	if (!st)
		return meta_end(m, -EIO);
	meta_bind_path(st, 1, path);
	sqlite3_bind_text(st, 3, etag, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, target, -1, SQLITE_STATIC);
	err = meta_run(m, st, "set symlink");
	if (!err && sqlite3_changes(m->writer.db) == 0)
		err = meta_why_unchanged(m, path);
	return meta_end(m, err);
}

/* ---------------------------------------------------------------- local changes */

static void meta_bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (s)
		sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

static int meta_upsert_row(meta *m, const char *path, const meta_entry *e)
{
	sqlite3_stmt *st = meta_stmt(m, &m->writer, MS_UPSERT);

	if (!st)
		return -EIO;
	meta_bind_path(st, 1, path);
	sqlite3_bind_int(st, 3, e->is_dir);
	sqlite3_bind_int(st, 4, e->dir_marker);
	sqlite3_bind_int(st, 5, e->local);
	sqlite3_bind_int64(st, 6, (int64_t)e->size);
	meta_bind_text(st, 7, e->etag);
	sqlite3_bind_int64(st, 8, e->last_modified_ns);
	meta_bind_text(st, 9, e->owner_id);
	meta_bind_text(st, 10, e->owner_name);
	meta_bind_text(st, 11, e->permissions);
	meta_bind_text(st, 12, e->head_etag);
	meta_bind_opt(st, 13, e->has & META_HAS_MODE, e->mode);
	meta_bind_opt(st, 14, e->has & META_HAS_UID, e->uid);
	meta_bind_opt(st, 15, e->has & META_HAS_GID, e->gid);
	meta_bind_opt(st, 16, e->has & META_HAS_MTIME, e->mtime_ns);
	meta_bind_opt(st, 17, e->has & META_HAS_CTIME, e->ctime_ns);
	meta_bind_opt(st, 18, e->has & META_HAS_ATIME, e->atime_ns);
	meta_bind_text(st, 19, e->symlink);
	if (e->xattr)
		sqlite3_bind_blob(st, 20, e->xattr, e->xattr_len, SQLITE_STATIC);
	/* A generation of its own, newer than any listing already running:
	 * such a listing neither sweeps away nor overwrites what was just
	 * learnt (it may have read the bucket before this change). */
	uint64_t gen = ++m->gen;
	int err = meta_gen_save(m, gen);
	if (err)
		return err;
	sqlite3_bind_int64(st, 21, (int64_t)gen);
	return meta_run(m, st, "upsert");
}

static int meta_upsert_as(meta *m, const char *path, const meta_entry *e, bool lazy)
{
	struct meta_kind k;
	int err;

	if (!meta_path_ok(path) || !e)
		return -EINVAL;
	err = lazy ? meta_write_begin_lazy(m) : meta_write_begin(m);
	if (err)
		return err;
	err = meta_parent_ok(m, path);
	if (!err)
		err = meta_kind(m, path, &k);
	if (!err && k.found && k.is_dir != e->is_dir)
		err = k.is_dir ? -EISDIR : -ENOTDIR;
	if (!err)
		err = meta_upsert_row(m, path, e);
	return meta_end(m, err);
}

int meta_upsert(meta *m, const char *path, const meta_entry *e)
{
	return meta_upsert_as(m, path, e, false);
}

int meta_upsert_lazy(meta *m, const char *path, const meta_entry *e)
{
	return meta_upsert_as(m, path, e, true);
}

static int meta_forget_listing(meta *m, const char *path)
{
	sqlite3_stmt *st = meta_stmt(m, &m->writer, MS_DIRS_DELETE);

	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
	return meta_run(m, st, "forget listing");
}

static int meta_delete_row(meta *m, const char *path)
{
	sqlite3_stmt *st = meta_stmt(m, &m->writer, MS_DELETE);
	int err;

	if (!st)
		return -EIO;
	meta_bind_path(st, 1, path);
	err = meta_run(m, st, "delete");
	/* A listing already running must not bring it back. */
	return err ? err : meta_tomb_add(m, path);
}

int meta_delete(meta *m, const char *path)
{
	struct meta_kind k;
	bool busy = false;
	int err;

	if (!meta_path_ok(path))
		return -EINVAL;
	err = meta_write_begin(m);
	if (err)
		return err;
	err = meta_kind(m, path, &k);
	if (!err && !k.found)
		err = -ENOENT;
	if (!err && k.is_dir)
		err = meta_has_child(m, path, &busy);
	if (!err && busy)
		err = -ENOTEMPTY;
	if (!err)
		err = meta_delete_row(m, path);
	if (!err && k.is_dir)
		err = meta_forget_listing(m, path);
	return meta_end(m, err);
}

/* Checks what rename(from, to) may do and clears an existing `to`. */
static int meta_rename_target(meta *m, const char *from, const char *to, bool *src_dir)
{
	struct meta_kind src, dst;
	bool busy = false;
	int err;

	err = meta_kind(m, from, &src);
	if (!err && !src.found)
		err = -ENOENT;
	if (!err)
		err = meta_parent_ok(m, to);
	if (!err)
		err = meta_kind(m, to, &dst);
	if (err)
		return err;
	*src_dir = src.is_dir;
	if (!dst.found)
		return 0;
	if (src.is_dir && !dst.is_dir)
		return -ENOTDIR;
	if (!src.is_dir && dst.is_dir)
		return -EISDIR;
	if (dst.is_dir)
		err = meta_has_child(m, to, &busy);
	if (!err && busy)
		err = -ENOTEMPTY;
	if (!err)
		err = meta_delete_row(m, to);
	if (!err && dst.is_dir)
		err = meta_forget_listing(m, to);
	return err;
}

static int meta_rename_subtree(meta *m, const char *from, const char *to, bool mark_local,
                               uint64_t gen)
{
	size_t n = strlen(from);
	char *lo = malloc(n + 2), *hi = malloc(n + 2);
	sqlite3_stmt *st;
	int err = -ENOMEM;

	if (!lo || !hi)
		goto out;
	err = -EIO;
	st = meta_stmt(m, &m->writer, MS_RENAME_SUBTREE);
	if (!st)
		goto out;
	meta_bind_scope(st, 1, from, lo, hi);
	sqlite3_bind_text(st, 4, to, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, n + 1);
	sqlite3_bind_int(st, 6, mark_local);
	sqlite3_bind_int64(st, 7, (int64_t)gen);
	err = meta_run(m, st, "rename subtree");
	if (err)
		goto out;
	err = -EIO;
	st = meta_stmt(m, &m->writer, MS_RENAME_DIRS_ONE);
	if (!st)
		goto out;
	sqlite3_bind_text(st, 1, from, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, to, -1, SQLITE_STATIC);
	err = meta_run(m, st, "rename listing");
	if (err)
		goto out;
	err = -EIO;
	st = meta_stmt(m, &m->writer, MS_RENAME_DIRS_SUBTREE);
	if (!st)
		goto out;
	sqlite3_bind_text(st, 1, lo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, hi, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, to, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, n + 1);
	err = meta_run(m, st, "rename listings");
out:
	free(lo);
	free(hi);
	return err;
}

int meta_rename(meta *m, const char *from, const char *to, bool mark_local)
{
	size_t flen, tplen;
	const char *tname;
	sqlite3_stmt *st;
	bool is_dir = false;
	int err;

	if (!meta_path_ok(from) || !meta_path_ok(to))
		return -EINVAL;
	flen = strlen(from);
	if (strncmp(from, to, flen) == 0 && to[flen] == '/')
		return -EINVAL; /* into itself */
	err = meta_write_begin(m);
	if (err)
		return err;
	if (strcmp(from, to) == 0) {
		struct meta_kind k;

		err = meta_kind(m, from, &k);
		return meta_end(m, err ? err : k.found ? 0 : -ENOENT);
	}
	err = meta_rename_target(m, from, to, &is_dir);
	if (err)
		return meta_end(m, err);
	st = meta_stmt(m, &m->writer, MS_RENAME_ONE);
	if (!st)
		return meta_end(m, -EIO);
	meta_path_split(to, &tplen, &tname);
	meta_bind_path(st, 1, from);
	sqlite3_bind_text(st, 3, to, tplen, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, tname, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 5, mark_local);
	/* Newer than any listing already running, as in meta_upsert_row(). */
	uint64_t gen = ++m->gen;
	sqlite3_bind_int64(st, 6, (int64_t)gen);
	err = meta_gen_save(m, gen);
	if (!err)
		err = meta_run(m, st, "rename");
	if (!err && is_dir)
		err = meta_rename_subtree(m, from, to, mark_local, gen);
	/* The source name (and, for a listing, all below it) is gone. */
	if (!err)
		err = meta_tomb_add(m, from);
	return meta_end(m, err);
}

static int meta_clear_local_row(meta *m, const char *path, const char *etag, uint64_t size,
                                int64_t last_modified_ns)
{
	sqlite3_stmt *st = meta_stmt(m, &m->writer, MS_CLEAR_LOCAL);
	int err;

	if (!st)
		return -EIO;
	meta_bind_path(st, 1, path);
	sqlite3_bind_text(st, 3, etag, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, (int64_t)size);
	sqlite3_bind_int64(st, 5, last_modified_ns);
	/* Newer than any listing already running, as in meta_upsert_row(). */
	uint64_t gen = ++m->gen;
	sqlite3_bind_int64(st, 6, (int64_t)gen);
	err = meta_gen_save(m, gen);
	if (!err)
		err = meta_run(m, st, "clear local");
	if (!err && sqlite3_changes(m->writer.db) == 0)
		err = -ENOENT;
	return err;
}

static int meta_journal_remove_row(meta *m, int64_t id)
{
	sqlite3_stmt *st = meta_stmt(m, &m->writer, MS_JOURNAL_REMOVE);
	int err;

	if (!st)
		return -EIO;
	sqlite3_bind_int64(st, 1, id);
	err = meta_run(m, st, "journal remove");
	if (!err && sqlite3_changes(m->writer.db) == 0)
		err = -ENOENT;
	return err;
}

int meta_clear_local(meta *m, const char *path, const char *etag, uint64_t size,
                     int64_t last_modified_ns)
{
	int err;

	if (!meta_path_ok(path) || !etag)
		return -EINVAL;
	err = meta_write_begin(m);
	if (err)
		return err;
	return meta_end(m, meta_clear_local_row(m, path, etag, size, last_modified_ns));
}

int meta_upload_done(meta *m, const char *path, const char *etag, uint64_t size, int64_t journal_id,
                     bool *entry_found)
{
	int err, c;

	*entry_found = false;
	if (!meta_path_ok(path) || !etag)
		return -EINVAL;
	err = meta_write_begin(m);
	if (err)
		return err;
	c = meta_clear_local_row(m, path, etag, size, 0);
	if (c && c != -ENOENT)
		return meta_end(m, c);
	*entry_found = c == 0;
	if (journal_id)
		err = meta_journal_remove_row(m, journal_id);
	return meta_end(m, err);
}

/*
 * A directory's entries changed: its mtime and ctime become `ns`.  An atime
 * not known so far keeps the value it showed (the old mtime).  The row's
 * other fields, and whether a listing counts it as changed, stay as they are:
 * the times live in the index until the directory's object is rewritten.
 * One statement, prepared here: it is not on a hot path.
 */
int meta_set_dir_times(meta *m, const char *path, int64_t ns)
{
	static const char sql[] =
	        "UPDATE entries SET atime_ns = coalesce(atime_ns, mtime_ns, last_modified_ns),"
	        " mtime_ns = ?3, ctime_ns = ?3 WHERE parent = ?1 AND name = ?2 AND is_dir = 1";
	sqlite3_stmt *st = NULL;
	int err, rc;

	if (meta_path_valid(path) && path[1] == '\0')
		return 0; /* the root has no row to keep them */
	if (!meta_path_ok(path))
		return -EINVAL;
	err = meta_write_begin_lazy(m);
	if (err)
		return err;
	rc = sqlite3_prepare_v2(m->writer.db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return meta_end(m, meta_sqlite_err(m, &m->writer, rc, "dir times"));
	meta_bind_path(st, 1, path);
	sqlite3_bind_int64(st, 3, ns);
	rc = sqlite3_step(st);
	err = rc == SQLITE_DONE ? 0 : meta_sqlite_err(m, &m->writer, rc, "dir times");
	if (!err && sqlite3_changes(m->writer.db) == 0)
		err = -ENOENT;
	sqlite3_finalize(st);
	return meta_end(m, err);
}

/* ---------------------------------------------------------------- journal */

static void meta_bind_journal(sqlite3_stmt *st, const meta_journal_entry *j)
{
	sqlite3_bind_text(st, 2, j->path, -1, SQLITE_STATIC);
	meta_bind_text(st, 3, j->staged_file);
	sqlite3_bind_int64(st, 4, (int64_t)j->size);
	sqlite3_bind_int(st, 5, j->state);
	meta_bind_text(st, 6, j->upload_id);
	meta_bind_text(st, 7, j->parts);
}

int meta_journal_add(meta *m, const meta_journal_entry *j, int64_t *id)
{
	sqlite3_stmt *st;
	int err;

	if (!j || !j->path)
		return -EINVAL;
	err = meta_write_begin(m);
	if (err)
		return err;
	st = meta_stmt(m, &m->writer, MS_JOURNAL_ADD);
	if (!st)
		return meta_end(m, -EIO);
	/* ADD numbers its parameters from 1; UPDATE's ?1 is the id. */
	sqlite3_bind_text(st, 1, j->path, -1, SQLITE_STATIC);
	meta_bind_text(st, 2, j->staged_file);
	sqlite3_bind_int64(st, 3, (int64_t)j->size);
	sqlite3_bind_int(st, 4, j->state);
	meta_bind_text(st, 5, j->upload_id);
	meta_bind_text(st, 6, j->parts);
	sqlite3_bind_int64(st, 7, j->created_ns ? j->created_ns : meta_now_ns());
	err = meta_run(m, st, "journal add");
	int64_t rowid = err ? 0 : sqlite3_last_insert_rowid(m->writer.db);
	/* The id is the caller's only once the row is committed. */
	err = meta_end(m, err);
	if (!err && id)
		*id = rowid;
	return err;
}

int meta_journal_update(meta *m, const meta_journal_entry *j)
{
	sqlite3_stmt *st;
	int err;

	if (!j || !j->path)
		return -EINVAL;
	err = meta_write_begin(m);
	if (err)
		return err;
	st = meta_stmt(m, &m->writer, MS_JOURNAL_UPDATE);
	if (!st)
		return meta_end(m, -EIO);
	sqlite3_bind_int64(st, 1, j->id);
	meta_bind_journal(st, j);
	err = meta_run(m, st, "journal update");
	if (!err && sqlite3_changes(m->writer.db) == 0)
		err = -ENOENT;
	return meta_end(m, err);
}

int meta_journal_remove(meta *m, int64_t id)
{
	int err = meta_write_begin(m);

	if (err)
		return err;
	return meta_end(m, meta_journal_remove_row(m, id));
}

int meta_journal_list(meta *m, meta_journal_fn fn, void *ctx)
{
	struct meta_conn *c = meta_reader_get(m);
	sqlite3_stmt *st = meta_stmt(m, c, MS_JOURNAL_LIST);
	int rc = SQLITE_DONE, ret = 0;

	while (st && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		meta_journal_entry j = {
		        .id = sqlite3_column_int64(st, 0),
		        .path = (const char *)sqlite3_column_text(st, 1),
		        .staged_file = (const char *)sqlite3_column_text(st, 2),
		        .size = sqlite3_column_int64(st, 3),
		        .state = sqlite3_column_int(st, 4),
		        .upload_id = (const char *)sqlite3_column_text(st, 5),
		        .parts = (const char *)sqlite3_column_text(st, 6),
		        .created_ns = sqlite3_column_int64(st, 7),
		};

		ret = fn(ctx, &j);
		if (ret)
			break;
	}
	if (!st)
		ret = -EIO;
	else if (!ret && rc != SQLITE_DONE)
		ret = meta_sqlite_err(m, c, rc, "journal list");
	meta_stmt_done(st);
	meta_reader_put(m, c);
	return ret;
}
