/*
 * db.c - the cache's index in SQLite: which objects (key, etag, size) have a
 * file, which of their blocks are present, the blocks' LRU stamps, and the
 * staged files.  WAL with synchronous=NORMAL: a committed row survives a
 * crash of the process; a power loss may lose the last rows, which only
 * makes the cache forget blocks (their data is punched at the next open).
 *
 * Every function here is called with c->lock held.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static const char cache_schema[] =
        "PRAGMA journal_mode=WAL;"
        "PRAGMA synchronous=NORMAL;"
        "CREATE TABLE IF NOT EXISTS settings(name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        /* AUTOINCREMENT: ids, and so file names, are never reused. */
        "CREATE TABLE IF NOT EXISTS objects(id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " key TEXT NOT NULL UNIQUE, etag TEXT NOT NULL, size INTEGER NOT NULL);"
        "CREATE TABLE IF NOT EXISTS blocks(obj INTEGER NOT NULL, idx INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, PRIMARY KEY(obj, idx)) WITHOUT ROWID;"
        "CREATE TABLE IF NOT EXISTS staged(key TEXT PRIMARY KEY, file TEXT NOT NULL);";

/* -ENOSPC for a full disk (the callers then free space and retry), else
 * -EIO. */
static int cache_db_errno(cache *c, int rc)
{
	int sys = sqlite3_system_errno(c->db);

	if ((rc & 0xff) == SQLITE_FULL || sys == ENOSPC || sys == EDQUOT)
		return -ENOSPC;
	return -EIO;
}

int cache_db_exec(cache *c, const char *sql)
{
	char *msg = NULL;
	int rc = sqlite3_exec(c->db, sql, NULL, NULL, &msg);

	if (rc != SQLITE_OK) {
		cache_log(c, CACHE_LOG_ERR, "cache: index: %s", msg ? msg : "error");
		sqlite3_free(msg);
		return cache_db_errno(c, rc);
	}
	return 0;
}

/* Binds by `fmt` ('i' int64, 't' text), steps once, resets. */
static int cache_db_run(cache *c, sqlite3_stmt *st, const char *fmt, ...)
{
	va_list ap;
	int i = 1, rc;

	sqlite3_reset(st);
	va_start(ap, fmt);
	for (; *fmt; fmt++, i++) {
		if (*fmt == 'i')
			sqlite3_bind_int64(st, i, va_arg(ap, int64_t));
		else
			sqlite3_bind_text(st, i, va_arg(ap, const char *), -1, SQLITE_STATIC);
	}
	va_end(ap);
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
		int err = cache_db_errno(c, rc);

		cache_log(c, CACHE_LOG_ERR, "cache: index: %s", sqlite3_errmsg(c->db));
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
		return err;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return 0;
}

static int cache_db_prepare(cache *c, sqlite3_stmt **st, const char *sql)
{
	if (sqlite3_prepare_v2(c->db, sql, -1, st, NULL) != SQLITE_OK) {
		cache_log(c, CACHE_LOG_ERR, "cache: index: %s", sqlite3_errmsg(c->db));
		return -EIO;
	}
	return 0;
}

static int64_t cache_db_setting(cache *c, const char *name)
{
	sqlite3_stmt *st;
	int64_t v = -1;

	if (cache_db_prepare(c, &st, "SELECT value FROM settings WHERE name = ?"))
		return -1;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

int cache_db_open(cache *c)
{
	char *path, sql[160];
	int rc;

	if (asprintf(&path, "%s/index.db", c->dir) < 0)
		return -ENOMEM;
	/* SQLite would create it 0644; its -wal and -shm files copy its mode. */
	rc = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (rc < 0) {
		rc = -errno;
		free(path);
		return rc;
	}
	close(rc);
	rc = sqlite3_open_v2(path, &c->db,
	                     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	                     NULL);
	free(path);
	if (rc != SQLITE_OK) {
		cache_log(c, CACHE_LOG_ERR, "cache: index: %s",
		          c->db ? sqlite3_errmsg(c->db) : "out of memory");
		return -EIO;
	}
	sqlite3_busy_timeout(c->db, 5000);
	rc = cache_db_exec(c, cache_schema);
	if (rc)
		return rc;

	/* Block numbers mean nothing under another block size. */
	if (cache_db_setting(c, "block_size") != (int64_t)c->bs) {
		snprintf(sql, sizeof(sql),
		         "BEGIN; DELETE FROM blocks; DELETE FROM objects;"
		         " INSERT OR REPLACE INTO settings VALUES('block_size', %llu); COMMIT;",
		         (unsigned long long)c->bs);
		rc = cache_db_exec(c, sql);
		if (rc)
			return rc;
	}

	/* OR REPLACE: a row left by an object whose forgetting failed (a full
	 * disk) must not block the key; its block rows are orphans, dropped at
	 * the next open, and its file is gone. */
	rc = cache_db_prepare(c, &c->st_ins_obj,
	                      "INSERT OR REPLACE INTO objects(key, etag, size) VALUES(?, ?, ?)");
	if (!rc)
		rc = cache_db_prepare(c, &c->st_del_obj, "DELETE FROM objects WHERE id = ?");
	if (!rc)
		rc = cache_db_prepare(c, &c->st_del_obj_blocks, "DELETE FROM blocks WHERE obj = ?");
	if (!rc)
		rc = cache_db_prepare(
		        c, &c->st_ins_blk,
		        "INSERT OR REPLACE INTO blocks(obj, idx, seq) VALUES(?, ?, ?)");
	if (!rc)
		rc = cache_db_prepare(c, &c->st_del_blk,
		                      "DELETE FROM blocks WHERE obj = ? AND idx = ?");
	if (!rc)
		rc = cache_db_prepare(c, &c->st_upd_seq,
		                      "UPDATE blocks SET seq = ? WHERE obj = ? AND idx = ?");
	if (!rc)
		rc = cache_db_prepare(c, &c->st_ins_stage,
		                      "INSERT OR REPLACE INTO staged(key, file) VALUES(?, ?)");
	if (!rc)
		rc = cache_db_prepare(c, &c->st_del_stage, "DELETE FROM staged WHERE key = ?");
	return rc;
}

void cache_db_close(cache *c)
{
	sqlite3_stmt **sts[] = {&c->st_ins_obj,   &c->st_del_obj,  &c->st_del_obj_blocks,
	                        &c->st_ins_blk,   &c->st_del_blk,  &c->st_upd_seq,
	                        &c->st_ins_stage, &c->st_del_stage};

	for (size_t i = 0; i < sizeof(sts) / sizeof(sts[0]); i++) {
		sqlite3_finalize(*sts[i]);
		*sts[i] = NULL;
	}
	if (c->db)
		sqlite3_close(c->db);
	c->db = NULL;
}

int cache_db_insert_obj(cache *c, const char *key, const char *etag, uint64_t size, int64_t *id)
{
	int rc = cache_db_run(c, c->st_ins_obj, "tti", key, etag, (int64_t)size);

	if (!rc)
		*id = sqlite3_last_insert_rowid(c->db);
	return rc;
}

int cache_db_delete_obj(cache *c, int64_t id)
{
	int rc = cache_db_run(c, c->st_del_obj_blocks, "i", id);

	if (!rc)
		rc = cache_db_run(c, c->st_del_obj, "i", id);
	return rc;
}

int cache_db_insert_blk(cache *c, int64_t obj, uint64_t idx, uint64_t seq)
{
	return cache_db_run(c, c->st_ins_blk, "iii", obj, (int64_t)idx, (int64_t)seq);
}

int cache_db_delete_blk(cache *c, int64_t obj, uint64_t idx)
{
	return cache_db_run(c, c->st_del_blk, "ii", obj, (int64_t)idx);
}

int cache_db_insert_stage(cache *c, const char *key, const char *file)
{
	return cache_db_run(c, c->st_ins_stage, "tt", key, file);
}

int cache_db_delete_stage(cache *c, const char *key)
{
	return cache_db_run(c, c->st_del_stage, "t", key);
}

/* Saves the LRU stamps of the blocks used since the last save, in one
 * transaction.  Losing them (a crash) only makes the LRU order older. */
void cache_db_save_touched(cache *c)
{
	bool ok = cache_db_exec(c, "BEGIN") == 0;

	for (size_t i = 0; ok && i < c->ntouched; i++)
		ok = cache_db_run(c, c->st_upd_seq, "iii", (int64_t)c->touched[i].seq,
		                  c->touched[i].obj, (int64_t)c->touched[i].idx) == 0;
	c->ntouched = 0;
	if (ok)
		ok = cache_db_exec(c, "COMMIT") == 0;
	if (!ok) {
		cache_db_exec(c, "ROLLBACK");
		cache_log(c, CACHE_LOG_WARNING, "cache: could not save the LRU order");
	}
}

/* ---------------------------------------------------------------- load */

static int cache_obj_cmp_id(const void *a, const void *b)
{
	int64_t x = (*(struct cache_obj *const *)a)->id, y = (*(struct cache_obj *const *)b)->id;

	return x < y ? -1 : x > y;
}

/* The live objects sorted by id, to resolve rows and file names. */
static struct cache_obj **cache_objs_by_id(cache *c, size_t *n)
{
	struct cache_obj **v = malloc((c->obj_n ? c->obj_n : 1) * sizeof(*v));
	size_t k = 0;

	if (!v)
		return NULL;
	for (size_t i = 0; i < c->obj_nb; i++)
		for (struct cache_obj *o = c->obj_tab[i]; o; o = o->hnext)
			v[k++] = o;
	qsort(v, k, sizeof(*v), cache_obj_cmp_id);
	*n = k;
	return v;
}

static struct cache_obj *cache_objs_find(struct cache_obj **v, size_t n, int64_t id)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (v[mid]->id == id)
			return v[mid];
		if (v[mid]->id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static int cache_load_objects(cache *c)
{
	sqlite3_stmt *st;
	int rc, step;

	rc = cache_db_prepare(c, &st, "SELECT id, key, etag, size FROM objects");
	if (rc)
		return rc;
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		const char *key = (const char *)sqlite3_column_text(st, 1);
		const char *etag = (const char *)sqlite3_column_text(st, 2);

		if (!key || !etag)
			continue;
		if (!cache_obj_new(c, key, etag, (uint64_t)sqlite3_column_int64(st, 3),
		                   sqlite3_column_int64(st, 0), false)) {
			rc = -errno;
			break;
		}
	}
	if (!rc && step != SQLITE_DONE)
		rc = -EIO;
	sqlite3_finalize(st);
	return rc;
}

/* Present blocks, oldest first, so that each goes to the LRU's front. */
static int cache_load_blocks(cache *c, struct cache_obj **v, size_t n)
{
	sqlite3_stmt *st;
	int rc, step;

	rc = cache_db_prepare(c, &st, "SELECT obj, idx, seq FROM blocks ORDER BY seq");
	if (rc)
		return rc;
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		struct cache_obj *o = cache_objs_find(v, n, sqlite3_column_int64(st, 0));
		uint64_t idx = (uint64_t)sqlite3_column_int64(st, 1), len, seq;
		struct cache_blk *b;

		if (!o)
			continue; /* orphan row: dropped below */
		len = cache_blk_len(o, c->bs, idx);
		if (len == 0 || cache_blk_lookup(c, o, idx))
			continue;
		b = cache_blk_add(c, o, idx, BLK_PRESENT);
		if (!b) {
			if (errno == EFBIG)
				continue; /* not a block this cache makes: dropped */
			rc = -ENOMEM;
			break;
		}
		c->cur_bytes += cache_blk_charge(c, b);
		seq = (uint64_t)sqlite3_column_int64(st, 2);
		if (seq > c->seq)
			c->seq = seq;
		cache_list_add(&c->lru, &b->lru);
	}
	if (!rc && step != SQLITE_DONE)
		rc = -EIO;
	sqlite3_finalize(st);
	if (!rc)
		rc = cache_db_exec(c,
		                   "DELETE FROM blocks WHERE obj NOT IN (SELECT id FROM objects)");
	return rc;
}

/* Punches every byte of o's file that no recorded block covers: data a
 * crash left behind between writing and recording, or between forgetting
 * and punching.  False when the file is gone. */
static bool cache_reconcile_file(cache *c, struct cache_obj *o)
{
	char path[PATH_MAX];
	off_t pos = 0;
	int fd;

	if (!cache_obj_path(c, o->key, o->id, path))
		return false;
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return false;
	for (;;) {
		off_t data = lseek(fd, pos, SEEK_DATA), hole;

		if (data < 0)
			break; /* ENXIO: no more data */
		hole = lseek(fd, data, SEEK_HOLE);
		if (hole <= data)
			break;
		for (uint64_t idx = (uint64_t)data / c->bs; idx * c->bs < (uint64_t)hole; idx++)
			if (!cache_blk_lookup(c, o, idx))
				(void)cache_punch(c, fd, idx * c->bs, c->bs);
		pos = hole;
	}
	close(fd);
	return true;
}

/* Removes the files of objects/ that belong to no live object. */
static void cache_sweep_objdir(cache *c, struct cache_obj **v, size_t n)
{
	DIR *top = opendir(c->objdir);
	struct dirent *de;

	if (!top)
		return;
	while ((de = readdir(top))) {
		char *sub;
		DIR *d;
		struct dirent *fe;

		if (de->d_name[0] == '.')
			continue;
		if (asprintf(&sub, "%s/%s", c->objdir, de->d_name) < 0)
			break;
		d = opendir(sub);
		while (d && (fe = readdir(d))) {
			const char *dash = strrchr(fe->d_name, '-');
			struct cache_obj *o = NULL;
			char *path, want[PATH_MAX];

			if (!strcmp(fe->d_name, ".") || !strcmp(fe->d_name, ".."))
				continue;
			if (dash)
				o = cache_objs_find(v, n, strtoll(dash + 1, NULL, 10));
			if (asprintf(&path, "%s/%s", sub, fe->d_name) < 0)
				break;
			if (!o || !cache_obj_path(c, o->key, o->id, want) ||
			    strcmp(want, path) != 0) {
				cache_log(c, CACHE_LOG_INFO, "cache: removing stray %s", path);
				unlink(path);
			}
			free(path);
		}
		if (d)
			closedir(d);
		free(sub);
	}
	closedir(top);
}

int cache_db_load(cache *c)
{
	struct cache_obj **v;
	size_t n;
	int rc;

	rc = cache_load_objects(c);
	if (rc)
		return rc;
	v = cache_objs_by_id(c, &n);
	if (!v)
		return -ENOMEM;
	rc = cache_load_blocks(c, v, n);
	if (rc)
		goto out;

	for (size_t i = 0; i < n; i++) {
		struct cache_obj *o = v[i];

		if (!cache_reconcile_file(c, o)) {
			/* The file is gone, and with it the content. */
			while (!cache_list_empty(&o->blocks))
				cache_blk_discard(c, cache_container_of(o->blocks.next,
				                                        struct cache_blk, olink));
		}
		if (o->nblk == 0) {
			cache_obj_free(c, o);
			continue;
		}
		o->meta_charge = cache_meta_for(o->nblk);
		c->cur_bytes += o->meta_charge;
	}
	free(v);
	v = cache_objs_by_id(c, &n);
	if (!v)
		return -ENOMEM;
	cache_sweep_objdir(c, v, n);
out:
	free(v);
	return rc;
}
