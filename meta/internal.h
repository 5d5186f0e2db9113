/*
 * internal.h - what the files of meta/ share: the handle, connections and
 * their prepared statements, and small helpers.  Not for use outside meta/.
 */
#ifndef BUCKETFS_META_INTERNAL_H
#define BUCKETFS_META_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>

#include "meta.h"

#define META_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* The columns of an entry as meta_row_to_entry() reads them, in order. */
#define META_ENTRY_COLS                                                                            \
	"name, is_dir, dir_marker, local, size, etag, last_modified_ns, owner_id, owner_name, "    \
	"permissions, head_etag, mode, uid, gid, mtime_ns, ctime_ns, atime_ns, symlink, "          \
	"xattr, list_gen"

/*
 * Every statement meta runs, prepared at most once per connection and reused.
 * Statements are reset (and their bindings cleared) by meta_stmt_done().
 */
enum meta_stmt_id {
	/* reads (any connection) */
	MS_LOOKUP,
	MS_READDIR,
	MS_READDIR_AFTER,
	MS_COUNT,
	MS_DIR_LISTED,
	MS_JOURNAL_LIST,
	/* writes (writer connection) */
	MS_BEGIN,
	MS_COMMIT,
	MS_ROLLBACK,
	MS_SYNC_NORMAL,
	MS_SYNC_FULL,
	MS_LIST_GET,
	MS_INSERT,
	MS_UPDATE_LISTED,
	MS_TOUCH,
	MS_TOUCH_DIR,
	MS_SWEEP_SELECT,
	MS_SWEEP_DELETE,
	MS_SWEEP_SELECT_CHILDREN,
	MS_SWEEP_DELETE_CHILDREN,
	MS_LOCAL_PARENTS,
	MS_DIRS_UPSERT,
	MS_DIRS_DELETE,
	MS_GEN_SAVE,
	MS_SET_HEAD,
	MS_SET_SYMLINK,
	MS_HAS_CHILD,
	MS_DELETE,
	MS_UPSERT,
	MS_CLEAR_LOCAL,
	MS_RENAME_ONE,
	MS_RENAME_SUBTREE,
	MS_RENAME_DIRS_ONE,
	MS_RENAME_DIRS_SUBTREE,
	MS_JOURNAL_ADD,
	MS_JOURNAL_UPDATE,
	MS_JOURNAL_REMOVE,
	MS_TOMB_ADD,
	MS_TOMB_GET,
	MS_TOMB_PRUNE,
	MS__COUNT
};

struct meta_conn {
	sqlite3 *db;
	sqlite3_stmt *stmt[MS__COUNT];
};

/* A set of strings already logged, so each bad key is logged once. */
struct meta_seen {
	char **slots;
	size_t cap, n;
	bool full; /* stopped remembering; said so once */
};

/* Directories whose listing time meta_dir_listed_at() keeps in memory. */
#define META_LISTED_SLOTS 512

struct meta {
	char *prefix;
	meta_log_fn log;
	int log_level;

	pthread_mutex_t wlock; /* the writer connection and next_gen */
	struct meta_conn writer;
	bool lazy;    /* the writer is at synchronous=NORMAL (meta_write_lock) */
	uint64_t gen; /* the newest listing generation handed out */
	/* Listings begun and not yet committed or aborted, oldest first
	 * (generations are handed out in order).  Under wlock. */
	struct meta_listing *active_head, *active_tail;
	/* Tombstones (the writer connection's TEMP table `tombs`): names this
	 * mount deleted or renamed away while a listing was running, with the
	 * generation of the removal.  tombs: the table may have rows;
	 * tomb_seq: bumped by every one added.  Under wlock. */
	bool tombs;
	uint64_t tomb_seq;

	pthread_mutex_t rlock; /* the read pool */
	pthread_cond_t rcond;
	struct meta_conn *readers;
	int n_readers;
	int *free_readers; /* a stack of indexes into readers */
	int n_free;

	pthread_mutex_t seen_lock;
	struct meta_seen seen;

	/* meta_dir_listed_at()'s answers, valid while commit_gen is what it
	 * was when they were read.  commit_gen: bumped once each commit of the
	 * writer is visible to readers (its WAL hook, meta.c). */
	uint64_t commit_gen;
	pthread_mutex_t listed_lock;
	struct meta_listed_slot {
		char *path;
		int64_t best;
		uint64_t gen;
	} listed[META_LISTED_SLOTS];
};

/* FNV-1a of a string (key.c). */
uint64_t meta_hash(const char *s);

void meta_log(meta *m, int level, const char *fmt, ...) META_PRINTF(3, 4);
/* Logs `what` once per distinct `what` for the lifetime of the handle. */
void meta_log_once(meta *m, int level, const char *what, const char *reason);
void meta_seen_free(struct meta_seen *s);

/* The one place a SQLite result code becomes an errno (negative); logs. */
int meta_sqlite_err(meta *m, struct meta_conn *c, int rc, const char *what);

sqlite3_stmt *meta_stmt(meta *m, struct meta_conn *c, enum meta_stmt_id id);
/* Saves the generation counter inside the current write transaction. */
int meta_gen_save(meta *m, uint64_t gen);
void meta_stmt_done(sqlite3_stmt *st);

struct meta_conn *meta_reader_get(meta *m);
void meta_reader_put(meta *m, struct meta_conn *c);

/* Writer transactions: lock + BEGIN IMMEDIATE / COMMIT + unlock. */
int meta_write_begin(meta *m) META_WARN_UNUSED;
int meta_write_begin_lazy(meta *m) META_WARN_UNUSED;
int meta_write_commit(meta *m) META_WARN_UNUSED;
void meta_write_rollback(meta *m);

/* Paths. */
bool meta_path_valid(const char *path);
/* Splits a valid non-root path into parent (length *plen, not terminated)
 * and name (terminated, inside path). */
void meta_path_split(const char *path, size_t *plen, const char **name);
/* Binds (parent, name) of a valid non-root path at columns i, i+1. */
void meta_bind_path(sqlite3_stmt *st, int i, const char *path);
/* Binds the subtree range of dir below: ?i = dir, ?i+1 = lo, ?i+2 = hi; the
 * strings live in buf (at least strlen(dir) + 2 bytes, twice). */
void meta_bind_scope(sqlite3_stmt *st, int i, const char *dir, char *lo, char *hi);
/* parent + "/" + name as a new string ("/" + name under the root). */
char *meta_path_join(const char *parent, size_t plen, const char *name, size_t nlen);

int meta_row_to_entry(sqlite3_stmt *st, int col, meta_entry *e, bool copy);
int64_t meta_now_ns(void);

/* Deletes the non-local entries of dir's subtree (and their dirs rows),
 * reporting each through the listing's change list when `changes` is set.
 * Used by listings (vanished directories) and by conflicts. */
struct meta_changes;
int meta_delete_subtree(meta *m, const char *dir, struct meta_changes *changes) META_WARN_UNUSED;

/* Records that this mount removed `path` (inside a writer transaction),
 * if a listing that may have read it before is running. */
int meta_tomb_add(meta *m, const char *path) META_WARN_UNUSED;

/* Whether directory `dir` has any entry (writer connection). */
int meta_has_child(meta *m, const char *dir, bool *yes) META_WARN_UNUSED;

struct meta_change_rec {
	char *path;
	enum meta_change what;
};

struct meta_changes {
	struct meta_change_rec *v;
	size_t n, cap;
};

int meta_changes_add(struct meta_changes *c, char *path, enum meta_change what) META_WARN_UNUSED;
void meta_changes_truncate(struct meta_changes *c, size_t n);
void meta_changes_free(struct meta_changes *c);

#endif
