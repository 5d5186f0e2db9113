/*
 * meta.c - opening the index (schema, pragmas, connections), the statement
 * table, the read pool, the writer lock, and the read side: lookup, readdir,
 * counts and listing times.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* ---------------------------------------------------------------- schema */

/*
 * entries is clustered on (parent, name) (WITHOUT ROWID), so a readdir is one
 * contiguous range and a lookup one b-tree descent.  HEAD-derived numbers are
 * NULL when the object had no such header.  The partial index finds the few
 * local entries without scanning a subtree.
 */
static const char meta_schema_v1[] =
        "CREATE TABLE settings(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
        "CREATE TABLE entries("
        " parent TEXT NOT NULL, name TEXT NOT NULL,"
        " is_dir INTEGER NOT NULL DEFAULT 0, dir_marker INTEGER NOT NULL DEFAULT 0,"
        " local INTEGER NOT NULL DEFAULT 0,"
        " size INTEGER NOT NULL DEFAULT 0, etag TEXT,"
        " last_modified_ns INTEGER NOT NULL DEFAULT 0,"
        " owner_id TEXT, owner_name TEXT, permissions TEXT,"
        " head_etag TEXT, mode INTEGER, uid INTEGER, gid INTEGER,"
        " mtime_ns INTEGER, ctime_ns INTEGER, atime_ns INTEGER,"
        " symlink TEXT, xattr BLOB,"
        " list_gen INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY(parent, name)) WITHOUT ROWID;"
        "CREATE INDEX entries_local ON entries(parent) WHERE local != 0;"
        "CREATE TABLE dirs(path TEXT PRIMARY KEY, listed_at_ns INTEGER NOT NULL,"
        " recursive INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
        /* AUTOINCREMENT: an id is never reused, so a stale reference to a
	 * finished upload can never name a newer one. */
        "CREATE TABLE journal(id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL,"
        " staged_file TEXT, size INTEGER NOT NULL DEFAULT 0, state INTEGER NOT NULL DEFAULT 0,"
        " upload_id TEXT, parts TEXT, created_ns INTEGER NOT NULL);"
        /* The attribute names of the classic DynamoDB CloudFiles table. */
        "CREATE VIEW CloudFiles AS SELECT"
        " owner_id AS userId,"
        " name AS fileName,"
        " CASE parent WHEN '/' THEN '/' || name ELSE parent || '/' || name END AS path,"
        " strftime('%Y-%m-%dT%H:%M:%S', last_modified_ns / 1000000000, 'unixepoch')"
        "  || printf('.%03dZ', (last_modified_ns / 1000000) % 1000) AS lastUpdated,"
        " coalesce(owner_name, owner_id) AS owner,"
        " CASE WHEN permissions IS NOT NULL THEN permissions"
        "  WHEN mode IS NULL THEN NULL ELSE"
        "  (CASE WHEN is_dir OR (mode & 61440) = 16384 THEN 'd'"
        "   WHEN (mode & 61440) = 40960 THEN 'l' ELSE '-' END)"
        "  || (CASE WHEN mode & 256 THEN 'r' ELSE '-' END)"
        "  || (CASE WHEN mode & 128 THEN 'w' ELSE '-' END)"
        "  || (CASE WHEN mode & 64 THEN 'x' ELSE '-' END)"
        "  || (CASE WHEN mode & 32 THEN 'r' ELSE '-' END)"
        "  || (CASE WHEN mode & 16 THEN 'w' ELSE '-' END)"
        "  || (CASE WHEN mode & 8 THEN 'x' ELSE '-' END)"
        "  || (CASE WHEN mode & 4 THEN 'r' ELSE '-' END)"
        "  || (CASE WHEN mode & 2 THEN 'w' ELSE '-' END)"
        "  || (CASE WHEN mode & 1 THEN 'x' ELSE '-' END)"
        " END AS permissions"
        " FROM entries;";

#define SCOPE "(parent = ?1 OR (parent >= ?2 AND parent < ?3))"

static const char *const meta_sql[MS__COUNT] = {
        [MS_LOOKUP] = "SELECT " META_ENTRY_COLS " FROM entries WHERE parent = ?1 AND name = ?2",
        [MS_READDIR] = "SELECT " META_ENTRY_COLS " FROM entries WHERE parent = ?1 ORDER BY name",
        [MS_READDIR_AFTER] = "SELECT " META_ENTRY_COLS
                             " FROM entries WHERE parent = ?1 AND name > ?2 ORDER BY name",
        [MS_COUNT] = "SELECT count(*) FROM entries",
        [MS_DIR_LISTED] = "SELECT listed_at_ns, recursive FROM dirs WHERE path = ?1",
        [MS_JOURNAL_LIST] = "SELECT id, path, staged_file, size, state, upload_id, parts,"
                            " created_ns FROM journal ORDER BY id",
        [MS_BEGIN] = "BEGIN IMMEDIATE",
        [MS_COMMIT] = "COMMIT",
        [MS_ROLLBACK] = "ROLLBACK",
        [MS_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
        [MS_SYNC_FULL] = "PRAGMA synchronous = FULL",
        /* The version comparison is done here: `IS` also matches NULLs. */
        [MS_LIST_GET] = "SELECT is_dir, local, list_gen,"
                        " (etag IS ?3 AND last_modified_ns = ?4 AND size = ?5)"
                        " FROM entries WHERE parent = ?1 AND name = ?2",
        [MS_INSERT] = "INSERT INTO entries(parent, name, is_dir, dir_marker, size, etag,"
                      " last_modified_ns, owner_id, owner_name, list_gen)"
                      " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        /* A new version: the HEAD-derived fields belonged to the old one. */
        [MS_UPDATE_LISTED] = "UPDATE entries SET is_dir = ?3, dir_marker = ?4, size = ?5,"
                             " etag = ?6, last_modified_ns = ?7, owner_id = ?8, owner_name = ?9,"
                             " list_gen = max(list_gen, ?10), permissions = NULL,"
                             " head_etag = NULL, mode = NULL, uid = NULL, gid = NULL,"
                             " mtime_ns = NULL, ctime_ns = NULL, atime_ns = NULL,"
                             " symlink = NULL, xattr = NULL"
                             " WHERE parent = ?1 AND name = ?2",
        /* max(): of two overlapping listings, the newer one's mark stays. */
        [MS_TOUCH] = "UPDATE entries SET list_gen = max(list_gen, ?3),"
                     " owner_id = coalesce(?4, owner_id), owner_name = coalesce(?5, owner_name)"
                     " WHERE parent = ?1 AND name = ?2",
        [MS_TOUCH_DIR] = "UPDATE entries SET list_gen = max(list_gen, ?3), dir_marker = ?4"
                         " WHERE parent = ?1 AND name = ?2",
        [MS_SWEEP_SELECT] = "SELECT parent, name, is_dir FROM entries WHERE " SCOPE
                            " AND list_gen < ?4 AND local = 0",
        [MS_SWEEP_DELETE] = "DELETE FROM entries WHERE " SCOPE " AND list_gen < ?4 AND local = 0",
        [MS_SWEEP_SELECT_CHILDREN] = "SELECT parent, name, is_dir FROM entries WHERE parent = ?1"
                                     " AND list_gen < ?2 AND local = 0",
        [MS_SWEEP_DELETE_CHILDREN] = "DELETE FROM entries WHERE parent = ?1 AND list_gen < ?2"
                                     " AND local = 0",
        [MS_LOCAL_PARENTS] = "SELECT DISTINCT parent FROM entries INDEXED BY entries_local"
                             " WHERE local != 0 AND " SCOPE,
        [MS_DIRS_UPSERT] = "INSERT INTO dirs(path, listed_at_ns, recursive) VALUES(?1, ?2, ?3)"
                           " ON CONFLICT(path) DO UPDATE SET listed_at_ns = excluded.listed_at_ns,"
                           " recursive = excluded.recursive",
        [MS_DIRS_DELETE] = "DELETE FROM dirs WHERE path = ?1",
        [MS_GEN_SAVE] = "INSERT INTO settings(key, value) VALUES('list_gen', ?1)"
                        " ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
        [MS_SET_HEAD] = "UPDATE entries SET head_etag = ?3, mode = ?4, uid = ?5, gid = ?6,"
                        " mtime_ns = ?7, ctime_ns = ?8, atime_ns = ?9, xattr = ?10"
                        " WHERE parent = ?1 AND name = ?2 AND etag = ?3 AND local = 0",
        [MS_SET_SYMLINK] = "UPDATE entries SET symlink = ?4"
                           " WHERE parent = ?1 AND name = ?2 AND etag = ?3 AND local = 0",
        [MS_HAS_CHILD] = "SELECT 1 FROM entries WHERE parent = ?1 LIMIT 1",
        [MS_DELETE] = "DELETE FROM entries WHERE parent = ?1 AND name = ?2",
        [MS_UPSERT] = "INSERT INTO entries(parent, name, is_dir, dir_marker, local, size, etag,"
                      " last_modified_ns, owner_id, owner_name, permissions, head_etag, mode, uid,"
                      " gid, mtime_ns, ctime_ns, atime_ns, symlink, xattr, list_gen)"
                      " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,"
                      " ?16, ?17, ?18, ?19, ?20, ?21)"
                      " ON CONFLICT(parent, name) DO UPDATE SET is_dir = excluded.is_dir,"
                      " dir_marker = excluded.dir_marker, local = excluded.local,"
                      " size = excluded.size, etag = excluded.etag,"
                      " last_modified_ns = excluded.last_modified_ns, owner_id = excluded.owner_id,"
                      " owner_name = excluded.owner_name, permissions = excluded.permissions,"
                      " head_etag = excluded.head_etag, mode = excluded.mode, uid = excluded.uid,"
                      " gid = excluded.gid, mtime_ns = excluded.mtime_ns,"
                      " ctime_ns = excluded.ctime_ns, atime_ns = excluded.atime_ns,"
                      " symlink = excluded.symlink, xattr = excluded.xattr,"
                      " list_gen = max(list_gen, excluded.list_gen)",
        [MS_CLEAR_LOCAL] = "UPDATE entries SET local = 0, etag = ?3, head_etag = ?3, size = ?4,"
                           " last_modified_ns = ?5, list_gen = max(list_gen, ?6)"
                           " WHERE parent = ?1 AND name = ?2",
        /* A fresh generation, as for any local change: a listing already
         * running neither sweeps nor overwrites the moved rows. */
        [MS_RENAME_ONE] = "UPDATE entries SET parent = ?3, name = ?4, local = (local OR ?5),"
                          " list_gen = max(list_gen, ?6) WHERE parent = ?1 AND name = ?2",
        /* Byte offsets: substr() on TEXT counts characters. */
        [MS_RENAME_SUBTREE] = "UPDATE entries SET"
                              " parent = ?4 || CAST(substr(CAST(parent AS BLOB), ?5) AS TEXT),"
                              " local = (local OR ?6), list_gen = max(list_gen, ?7)"
                              " WHERE " SCOPE,
        [MS_RENAME_DIRS_ONE] = "UPDATE dirs SET path = ?2 WHERE path = ?1",
        [MS_RENAME_DIRS_SUBTREE] = "UPDATE dirs SET"
                                   " path = ?3 || CAST(substr(CAST(path AS BLOB), ?4) AS TEXT)"
                                   " WHERE path >= ?1 AND path < ?2",
        [MS_JOURNAL_ADD] = "INSERT INTO journal(path, staged_file, size, state, upload_id, parts,"
                           " created_ns) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        [MS_JOURNAL_UPDATE] = "UPDATE journal SET path = ?2, staged_file = ?3, size = ?4,"
                              " state = ?5, upload_id = ?6, parts = ?7 WHERE id = ?1",
        [MS_JOURNAL_REMOVE] = "DELETE FROM journal WHERE id = ?1",
        [MS_TOMB_ADD] = "INSERT INTO tombs(parent, name, gen) VALUES(?1, ?2, ?3)"
                        " ON CONFLICT(parent, name) DO UPDATE SET gen = excluded.gen",
        [MS_TOMB_GET] = "SELECT 1 FROM tombs WHERE parent = ?1 AND name = ?2 AND gen > ?3",
        [MS_TOMB_PRUNE] = "DELETE FROM tombs WHERE gen <= ?1",
};

/* ---------------------------------------------------------------- logging */

static void meta_vlog(meta *m, int level, const char *fmt, va_list ap)
{
	if (m->log && level <= m->log_level)
		m->log(level, fmt, ap);
}

void meta_log(meta *m, int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	meta_vlog(m, level, fmt, ap);
	va_end(ap);
}

int meta_sqlite_err(meta *m, struct meta_conn *c, int rc, const char *what)
{
	int err;

	switch (rc & 0xff) {
	case SQLITE_NOMEM:
		err = ENOMEM;
		break;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		err = EBUSY;
		break;
	case SQLITE_FULL:
		err = ENOSPC;
		break;
	case SQLITE_READONLY:
		err = EROFS;
		break;
	case SQLITE_PERM:
	case SQLITE_AUTH:
		err = EACCES;
		break;
	case SQLITE_CANTOPEN:
		err = EACCES;
		break;
	case SQLITE_CONSTRAINT:
		err = EEXIST;
		break;
	default:
		/* CORRUPT, NOTADB, IOERR, PROTOCOL, ...: the storage failed us. */
		err = EIO;
		break;
	}
	meta_log(m, META_LOG_ERR, "meta: %s: %s (sqlite %d)", what,
	         c && c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc), rc);
	return -err;
}

/* ---------------------------------------------------------------- statements */

sqlite3_stmt *meta_stmt(meta *m, struct meta_conn *c, enum meta_stmt_id id)
{
	int rc;

	if (c->stmt[id])
		return c->stmt[id];
	rc = sqlite3_prepare_v3(c->db, meta_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &c->stmt[id],
	                        NULL);
	if (rc != SQLITE_OK) {
		meta_sqlite_err(m, c, rc, meta_sql[id]);
		c->stmt[id] = NULL;
	}
	return c->stmt[id];
}

void meta_stmt_done(sqlite3_stmt *st)
{
	if (!st)
		return;
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

/* ---------------------------------------------------------------- paths */

bool meta_path_valid(const char *path)
{
	const char *p, *c;

	if (!path || path[0] != '/')
		return false;
	if (path[1] == '\0')
		return true;
	for (p = path + 1;; p = c + 1) {
		size_t n;

		c = strchrnul(p, '/');
		n = c - p;
		if (n == 0 || n > META_NAME_MAX)
			return false;
		if (p[0] == '.' && (n == 1 || (n == 2 && p[1] == '.')))
			return false;
		if (*c == '\0')
			return true;
	}
}

void meta_path_split(const char *path, size_t *plen, const char **name)
{
	const char *slash = strrchr(path, '/');

	*plen = slash == path ? 1 : (size_t)(slash - path);
	*name = slash + 1;
}

void meta_bind_path(sqlite3_stmt *st, int i, const char *path)
{
	size_t plen;
	const char *name;

	meta_path_split(path, &plen, &name);
	sqlite3_bind_text(st, i, path, plen, SQLITE_STATIC);
	sqlite3_bind_text(st, i + 1, name, -1, SQLITE_STATIC);
}

void meta_bind_scope(sqlite3_stmt *st, int i, const char *dir, char *lo, char *hi)
{
	size_t n = strlen(dir);

	/* Descendants of "/a" have parents in ["/a/", "/a0"): '0' follows '/'.
	 * Every parent starts with '/', so the root's range is ["/", "0"). */
	if (n == 1) {
		strcpy(lo, "/");
		strcpy(hi, "0");
	} else {
		memcpy(lo, dir, n);
		memcpy(hi, dir, n);
		lo[n] = '/';
		hi[n] = '0';
		lo[n + 1] = hi[n + 1] = '\0';
	}
	sqlite3_bind_text(st, i, dir, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i + 1, lo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i + 2, hi, -1, SQLITE_STATIC);
}

char *meta_path_join(const char *parent, size_t plen, const char *name, size_t nlen)
{
	bool root = plen == 1 && parent[0] == '/';
	size_t len = (root ? 0 : plen) + 1 + nlen;
	char *s = malloc(len + 1);

	if (!s)
		return NULL;
	if (!root)
		memcpy(s, parent, plen);
	s[root ? 0 : plen] = '/';
	memcpy(s + len - nlen, name, nlen);
	s[len] = '\0';
	return s;
}

int64_t meta_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---------------------------------------------------------------- entries */

static char *meta_col_strdup(sqlite3_stmt *st, int col, bool copy, int *err)
{
	const unsigned char *s = sqlite3_column_text(st, col);
	char *d;

	if (!s)
		return NULL;
	if (!copy)
		return (char *)s; /* borrowed until the next step */
	d = strdup((const char *)s);
	if (!d)
		*err = -ENOMEM;
	return d;
}

int meta_row_to_entry(sqlite3_stmt *st, int col, meta_entry *e, bool copy)
{
	static const unsigned has_bits[] = {META_HAS_MODE,  META_HAS_UID,   META_HAS_GID,
	                                    META_HAS_MTIME, META_HAS_CTIME, META_HAS_ATIME};
	int err = 0;
	int c = col;

	memset(e, 0, sizeof(*e));
	e->name = meta_col_strdup(st, c++, copy, &err);
	e->is_dir = sqlite3_column_int(st, c++);
	e->dir_marker = sqlite3_column_int(st, c++);
	e->local = sqlite3_column_int(st, c++);
	e->size = sqlite3_column_int64(st, c++);
	e->etag = meta_col_strdup(st, c++, copy, &err);
	e->last_modified_ns = sqlite3_column_int64(st, c++);
	e->owner_id = meta_col_strdup(st, c++, copy, &err);
	e->owner_name = meta_col_strdup(st, c++, copy, &err);
	e->permissions = meta_col_strdup(st, c++, copy, &err);
	e->head_etag = meta_col_strdup(st, c++, copy, &err);
	for (size_t i = 0; i < 6; i++, c++) {
		int64_t v = sqlite3_column_int64(st, c);

		if (sqlite3_column_type(st, c) == SQLITE_NULL)
			continue;
		e->has |= has_bits[i];
		switch (i) {
		case 0:
			e->mode = v;
			break;
		case 1:
			e->uid = v;
			break;
		case 2:
			e->gid = v;
			break;
		case 3:
			e->mtime_ns = v;
			break;
		case 4:
			e->ctime_ns = v;
			break;
		default:
			e->atime_ns = v;
			break;
		}
	}
	e->symlink = meta_col_strdup(st, c++, copy, &err);
	if (sqlite3_column_type(st, c) != SQLITE_NULL) {
		const void *b = sqlite3_column_blob(st, c);
		size_t n = sqlite3_column_bytes(st, c);

		e->xattr_len = n;
		if (!copy) {
			e->xattr = (unsigned char *)b;
		} else {
			/* One extra byte so an empty value is still non-NULL. */
			e->xattr = malloc(n + 1);
			if (e->xattr)
				memcpy(e->xattr, b, n);
			else
				err = -ENOMEM;
		}
	}
	c++;
	e->list_gen = sqlite3_column_int64(st, c++);
	if (err && copy)
		meta_entry_clear(e);
	return err;
}

void meta_entry_clear(meta_entry *e)
{
	if (!e)
		return;
	free(e->name);
	free(e->etag);
	free(e->owner_id);
	free(e->owner_name);
	free(e->permissions);
	free(e->head_etag);
	free(e->symlink);
	free(e->xattr);
	memset(e, 0, sizeof(*e));
}

/* ---------------------------------------------------------------- connections */

static void meta_conn_close(struct meta_conn *c)
{
	for (int i = 0; i < MS__COUNT; i++) {
		sqlite3_finalize(c->stmt[i]);
		c->stmt[i] = NULL;
	}
	sqlite3_close_v2(c->db);
	c->db = NULL;
}

static int meta_exec(meta *m, struct meta_conn *c, const char *sql)
{
	int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : meta_sqlite_err(m, c, rc, sql);
}

static int meta_conn_open(meta *m, struct meta_conn *c, const char *path, bool writer,
                          const meta_options *o)
{
	int flags = SQLITE_OPEN_NOMUTEX |
	            (writer ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY);
	char sql[256];
	int rc, err;

	/* NOMUTEX: a connection is only ever used by the one thread that holds
	 * it (the writer lock or a pool slot), so SQLite's own mutex is waste. */
	rc = sqlite3_open_v2(path, &c->db, flags, NULL);
	if (rc != SQLITE_OK) {
		err = meta_sqlite_err(m, c, rc, path);
		meta_conn_close(c);
		return err;
	}
	sqlite3_extended_result_codes(c->db, 1);
	sqlite3_busy_timeout(c->db, o->busy_timeout_ms);
	/*
	 * synchronous=FULL: a commit is on disk before it returns, so a journal
	 * row survives power loss.  The page cache is the only memory that grows
	 * with the index; capping it per connection bounds the daemon's RSS.
	 * No mmap: it would count pages of the file into RSS.
	 */
	snprintf(sql, sizeof(sql),
	         "PRAGMA synchronous = FULL; PRAGMA cache_size = -%d; PRAGMA mmap_size = 0;"
	         "PRAGMA temp_store = FILE; PRAGMA foreign_keys = OFF;",
	         writer ? o->cache_kib * 2 : o->cache_kib);
	err = meta_exec(m, c, sql);
	if (err)
		meta_conn_close(c);
	return err;
}

static int meta_user_version(meta *m, struct meta_conn *c, int *v)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &st, NULL);

	if (rc != SQLITE_OK)
		return meta_sqlite_err(m, c, rc, "user_version");
	rc = sqlite3_step(st);
	*v = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : meta_sqlite_err(m, c, rc, "user_version");
}

/* Reads a settings value; *out is NULL when absent. */
static int meta_setting(meta *m, struct meta_conn *c, const char *key, char **out)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(c->db, "SELECT value FROM settings WHERE key = ?1", -1, &st,
	                            NULL);
	int err = 0;

	*out = NULL;
	if (rc != SQLITE_OK)
		return meta_sqlite_err(m, c, rc, "settings");
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const unsigned char *v = sqlite3_column_text(st, 0);

		*out = strdup(v ? (const char *)v : "");
		if (!*out)
			err = -ENOMEM;
	} else if (rc != SQLITE_DONE) {
		err = meta_sqlite_err(m, c, rc, "settings");
	}
	sqlite3_finalize(st);
	return err;
}

/*
 * Creates the schema on a new file, or checks an existing one.  A future
 * version adds its migrations here, each in the same transaction as its
 * user_version bump.
 */
static int meta_schema(meta *m, const char *prefix)
{
	struct meta_conn *c = &m->writer;
	char *saved = NULL, *gen = NULL;
	char *sql;
	int v, err;

	err = meta_exec(m, c, "BEGIN IMMEDIATE");
	if (err)
		return err;
	err = meta_user_version(m, c, &v);
	if (err)
		goto fail;
	if (v == 0) {
		sql = sqlite3_mprintf("%s INSERT INTO settings VALUES('prefix', %Q);"
		                      "INSERT INTO settings VALUES('list_gen', 0);"
		                      "PRAGMA user_version = %d;",
		                      meta_schema_v1, prefix, META_SCHEMA_VERSION);
		if (!sql) {
			err = -ENOMEM;
			goto fail;
		}
		err = meta_exec(m, c, sql);
		sqlite3_free(sql);
		if (err)
			goto fail;
	} else if (v > META_SCHEMA_VERSION) {
		meta_log(m, META_LOG_ERR, "meta: index schema %d is newer than this bucketfs (%d)",
		         v, META_SCHEMA_VERSION);
		err = -EPROTO;
		goto fail;
	}
	err = meta_setting(m, c, "prefix", &saved);
	if (!err && (!saved || strcmp(saved, prefix) != 0)) {
		meta_log(m, META_LOG_ERR, "meta: index was made for prefix \"%s\", not \"%s\"",
		         saved ? saved : "(none)", prefix);
		err = -EINVAL;
	}
	if (!err)
		err = meta_setting(m, c, "list_gen", &gen);
	if (err)
		goto fail;
	m->gen = gen ? strtoull(gen, NULL, 10) : 0;
	free(saved);
	free(gen);
	return meta_exec(m, c, "COMMIT");
fail:
	free(saved);
	free(gen);
	sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
	return err;
}

static bool meta_prefix_valid(const char *prefix)
{
	size_t n;

	if (!prefix)
		return false;
	n = strlen(prefix);
	return n == 0 || (prefix[n - 1] == '/' && prefix[0] != '/');
}

/* SQLite's default autocheckpoint threshold (WAL frames), which a WAL hook
 * replaces: meta_wal_hook() does its work. */
#define META_AUTOCHECKPOINT 1000

/* Runs after each commit of the writer connection, once the commit is
 * visible to readers and the write lock is released: bumps commit_gen
 * (meta_dir_listed_at()'s answers read before are stale) and checkpoints as
 * the default autocheckpoint would. */
static int meta_wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
	meta *m = arg;

	__atomic_add_fetch(&m->commit_gen, 1, __ATOMIC_ACQ_REL);
	if (frames >= META_AUTOCHECKPOINT)
		(void)sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	return SQLITE_OK;
}

int meta_open(const char *path, const char *bucket_prefix, const meta_options *opts, meta **out)
{
	meta_options o = {0};
	meta *m;
	int fd, err;

	*out = NULL;
	if (!path || !meta_prefix_valid(bucket_prefix))
		return -EINVAL;
	/* Connections are handed between threads (NOMUTEX, one user at a
	 * time), which a single-threaded SQLite build does not allow. */
	if (!sqlite3_threadsafe())
		return -ENOTSUP;
	if (opts)
		o = *opts;
	if (o.n_readers <= 0)
		o.n_readers = 4;
	if (o.cache_kib <= 0)
		o.cache_kib = 1024;
	if (o.busy_timeout_ms <= 0)
		o.busy_timeout_ms = 10000;

	/* SQLite would create the file 0644; the index lists the bucket, and
	 * the -wal and -shm files inherit the database file's mode. */
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	close(fd);

	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->log = o.log;
	m->log_level = o.log_level;
	pthread_mutex_init(&m->wlock, NULL);
	pthread_mutex_init(&m->rlock, NULL);
	pthread_cond_init(&m->rcond, NULL);
	pthread_mutex_init(&m->seen_lock, NULL);
	pthread_mutex_init(&m->listed_lock, NULL);
	m->prefix = strdup(bucket_prefix);
	m->readers = calloc(o.n_readers, sizeof(*m->readers));
	m->free_readers = calloc(o.n_readers, sizeof(*m->free_readers));
	if (!m->prefix || !m->readers || !m->free_readers) {
		err = -ENOMEM;
		goto fail;
	}

	err = meta_conn_open(m, &m->writer, path, true, &o);
	if (err)
		goto fail;
	/* WAL: readers never block the writer nor each other.  After a big
	 * listing, a checkpoint shrinks the WAL file back to 16 MiB. */
	err = meta_exec(m, &m->writer,
	                "PRAGMA journal_mode = WAL; PRAGMA journal_size_limit = 16777216;");
	if (!err)
		sqlite3_wal_hook(m->writer.db, meta_wal_hook, m);
	if (!err)
		err = meta_schema(m, bucket_prefix);
	/* Tombstones only matter to listings of this handle: a TEMP table of
	 * the writer connection, empty at every open (see listing.c). */
	if (!err)
		err = meta_exec(m, &m->writer,
		                "CREATE TEMP TABLE tombs(parent TEXT NOT NULL, name TEXT NOT NULL,"
		                " gen INTEGER NOT NULL, PRIMARY KEY(parent, name)) WITHOUT ROWID;");
	if (err)
		goto fail;
	for (int i = 0; i < o.n_readers; i++) {
		err = meta_conn_open(m, &m->readers[i], path, false, &o);
		if (err)
			goto fail;
		m->n_readers++;
		m->free_readers[m->n_free++] = i;
	}
	*out = m;
	return 0;
fail:
	meta_close(m);
	return err;
}

void meta_close(meta *m)
{
	if (!m)
		return;
	for (int i = 0; i < m->n_readers; i++)
		meta_conn_close(&m->readers[i]);
	/* The last connection to close checkpoints the WAL into the file. */
	if (m->writer.db)
		meta_conn_close(&m->writer);
	free(m->readers);
	free(m->free_readers);
	free(m->prefix);
	meta_seen_free(&m->seen);
	pthread_mutex_destroy(&m->wlock);
	pthread_mutex_destroy(&m->rlock);
	pthread_cond_destroy(&m->rcond);
	pthread_mutex_destroy(&m->seen_lock);
	for (size_t i = 0; i < META_LISTED_SLOTS; i++)
		free(m->listed[i].path);
	pthread_mutex_destroy(&m->listed_lock);
	free(m);
}

/* ---------------------------------------------------------------- the pool */

struct meta_conn *meta_reader_get(meta *m)
{
	struct meta_conn *c;

	pthread_mutex_lock(&m->rlock);
	while (m->n_free == 0)
		pthread_cond_wait(&m->rcond, &m->rlock);
	c = &m->readers[m->free_readers[--m->n_free]];
	pthread_mutex_unlock(&m->rlock);
	return c;
}

void meta_reader_put(meta *m, struct meta_conn *c)
{
	pthread_mutex_lock(&m->rlock);
	m->free_readers[m->n_free++] = c - m->readers;
	pthread_cond_signal(&m->rcond);
	pthread_mutex_unlock(&m->rlock);
}

/* ---------------------------------------------------------------- the writer */

static int meta_step_once(meta *m, enum meta_stmt_id id)
{
	sqlite3_stmt *st = meta_stmt(m, &m->writer, id);
	int rc;

	if (!st)
		return -EIO;
	rc = sqlite3_step(st);
	meta_stmt_done(st);
	return rc == SQLITE_DONE ? 0 : meta_sqlite_err(m, &m->writer, rc, meta_sql[id]);
}

/*
 * A transaction that only records what S3 says (an object's attributes, a
 * symlink's target) may be lazy: committed without waiting for the disk -
 * synchronous NORMAL for it alone, which saves a cold walk one fsync per
 * object, each under the writer lock.  Losing it at a power failure costs a
 * refetch.  What a FULL commit made durable stays so: the WAL is appended
 * in order and each FULL commit syncs all of it, so a power failure can only
 * take the last lazy commits.  SQLite refuses to change the level inside a
 * transaction: it is set before BEGIN and put back after the end; if that
 * fails, the next durable transaction sets it first, or is refused.
 */
static int meta_write_lock(meta *m, bool lazy)
{
	int err = 0;

	pthread_mutex_lock(&m->wlock);
	if (lazy) {
		if (meta_step_once(m, MS_SYNC_NORMAL) == 0)
			m->lazy = true;
	} else if (m->lazy) {
		err = meta_step_once(m, MS_SYNC_FULL);
		if (!err)
			m->lazy = false;
	}
	/* IMMEDIATE: take the write lock now, not on the first write, so a
	 * transaction never fails half-way with SQLITE_BUSY. */
	if (!err)
		err = meta_step_once(m, MS_BEGIN);
	if (err)
		pthread_mutex_unlock(&m->wlock);
	return err;
}

int meta_write_begin(meta *m)
{
	return meta_write_lock(m, false);
}

int meta_write_begin_lazy(meta *m)
{
	return meta_write_lock(m, true);
}

/* Ends a transaction's hold of the writer: FULL again after a lazy one. */
static void meta_write_unlock(meta *m)
{
	if (m->lazy && meta_step_once(m, MS_SYNC_FULL) == 0)
		m->lazy = false;
	pthread_mutex_unlock(&m->wlock);
}

int meta_write_commit(meta *m)
{
	int err = meta_step_once(m, MS_COMMIT);

	if (err)
		sqlite3_exec(m->writer.db, "ROLLBACK", NULL, NULL, NULL);
	meta_write_unlock(m);
	return err;
}

void meta_write_rollback(meta *m)
{
	if (!sqlite3_get_autocommit(m->writer.db))
		(void)meta_step_once(m, MS_ROLLBACK);
	meta_write_unlock(m);
}

/* ---------------------------------------------------------------- reads */

int meta_lookup(meta *m, const char *path, meta_entry *out)
{
	struct meta_conn *c;
	sqlite3_stmt *st;
	int rc, err;

	memset(out, 0, sizeof(*out));
	if (!meta_path_valid(path))
		return -EINVAL;
	if (path[1] == '\0') {
		out->name = strdup("/");
		out->is_dir = true;
		return out->name ? 0 : -ENOMEM;
	}
	c = meta_reader_get(m);
	st = meta_stmt(m, c, MS_LOOKUP);
	if (!st) {
		meta_reader_put(m, c);
		return -EIO;
	}
	meta_bind_path(st, 1, path);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		err = meta_row_to_entry(st, 0, out, true);
	else if (rc == SQLITE_DONE)
		err = -ENOENT;
	else
		err = meta_sqlite_err(m, c, rc, "lookup");
	meta_stmt_done(st);
	meta_reader_put(m, c);
	return err;
}

int meta_readdir(meta *m, const char *dir, const char *after, meta_readdir_fn fn, void *ctx)
{
	struct meta_conn *c;
	sqlite3_stmt *st;
	int rc, ret = 0;

	if (!meta_path_valid(dir))
		return -EINVAL;
	c = meta_reader_get(m);
	st = meta_stmt(m, c, after ? MS_READDIR_AFTER : MS_READDIR);
	if (!st) {
		meta_reader_put(m, c);
		return -EIO;
	}
	sqlite3_bind_text(st, 1, dir, -1, SQLITE_STATIC);
	if (after)
		sqlite3_bind_text(st, 2, after, -1, SQLITE_STATIC);
	/* Borrowed strings: no allocation per entry, valid until the next
	 * step, which is after fn returns. */
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		meta_entry e;

		(void)meta_row_to_entry(st, 0, &e, false);
		ret = fn(ctx, &e);
		if (ret)
			break;
	}
	if (!ret && rc != SQLITE_DONE)
		ret = meta_sqlite_err(m, c, rc, "readdir");
	meta_stmt_done(st);
	meta_reader_put(m, c);
	return ret;
}

int64_t meta_count_entries(meta *m)
{
	struct meta_conn *c = meta_reader_get(m);
	sqlite3_stmt *st = meta_stmt(m, c, MS_COUNT);
	int64_t n;
	int rc;

	if (!st) {
		meta_reader_put(m, c);
		return -EIO;
	}
	rc = sqlite3_step(st);
	n = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : meta_sqlite_err(m, c, rc, "count");
	meta_stmt_done(st);
	meta_reader_put(m, c);
	return n;
}

int meta_dir_listed_at(meta *m, const char *dir, int64_t *listed_at_ns)
{
	struct meta_listed_slot *slot;
	struct meta_conn *c;
	sqlite3_stmt *st;
	uint64_t gen;
	size_t len;
	int64_t best = 0;
	int err = 0;

	*listed_at_ns = 0;
	if (!meta_path_valid(dir))
		return -EINVAL;
	/* Every lookup asks this of its parent: answer from memory while no
	 * commit happened since it was read (gen, read before the queries, so
	 * a commit during them leaves the answer stale, not wrong). */
	gen = __atomic_load_n(&m->commit_gen, __ATOMIC_ACQUIRE);
	slot = &m->listed[meta_hash(dir) % META_LISTED_SLOTS];
	pthread_mutex_lock(&m->listed_lock);
	if (slot->path && slot->gen == gen && strcmp(slot->path, dir) == 0) {
		*listed_at_ns = slot->best;
		pthread_mutex_unlock(&m->listed_lock);
		return 0;
	}
	pthread_mutex_unlock(&m->listed_lock);
	c = meta_reader_get(m);
	st = meta_stmt(m, c, MS_DIR_LISTED);
	if (!st) {
		meta_reader_put(m, c);
		return -EIO;
	}
	/* The directory itself, then each ancestor whose listing was
	 * recursive: "/a/b", "/a", "/".  Depth is small; one point read each. */
	len = strlen(dir);
	for (bool self = true;; self = false) {
		int rc;

		sqlite3_bind_text(st, 1, dir, len, SQLITE_STATIC);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			int64_t t = sqlite3_column_int64(st, 0);

			if ((self || sqlite3_column_int(st, 1)) && t > best)
				best = t;
		} else if (rc != SQLITE_DONE) {
			err = meta_sqlite_err(m, c, rc, "dir_listed_at");
		}
		meta_stmt_done(st);
		if (err || len == 1)
			break;
		while (len > 1 && dir[len - 1] != '/')
			len--;
		if (len > 1)
			len--; /* "/a/b" -> "/a"; "/a" -> "/" */
	}
	meta_reader_put(m, c);
	*listed_at_ns = best;
	if (!err) {
		pthread_mutex_lock(&m->listed_lock);
		if (!slot->path || strcmp(slot->path, dir) != 0) {
			free(slot->path);
			slot->path = strdup(dir);
		}
		slot->best = best;
		slot->gen = gen;
		pthread_mutex_unlock(&m->listed_lock);
	}
	return err;
}
