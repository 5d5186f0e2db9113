/*
 * listing.c - applying a LIST of a directory to the index.
 *
 * Every listing gets a generation number; every row a page shows (and every
 * directory above one) is stamped with it, so the rows of the listed scope
 * still carrying an older number at commit are exactly the ones that
 * vanished, found by one range scan with no per-listing memory.  Stamps only
 * ever grow (max()), so of two overlapping listings the newer one's marks
 * stay and neither deletes what the other has seen.
 *
 * A row this mount deletes or renames away leaves nothing to compare with,
 * so while listings are running the removal leaves a tombstone (path, a
 * fresh generation) in the writer connection's TEMP table `tombs`.  A
 * listing begun before it skips every key at or below a tombstoned name: it
 * may have read the bucket before the removal.  One begun after it applies
 * them (the object exists again).  Tombstones are pruned when the oldest
 * running listing ends, and none are kept while no listing runs.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* A file that met a directory an older listing had seen: the directory
 * wins if this listing shows it too, which only commit can know. */
struct meta_cand {
	char *path;
	uint64_t size;
	char *etag;
	int64_t last_modified_ns;
};

struct meta_listing {
	meta *m;
	char *dir;
	size_t dir_len;
	bool recursive;
	uint64_t gen;
	struct meta_listing *prev, *next; /* meta's running listings */
	uint64_t tomb_seq;                /* m->tomb_seq when last_parent was checked */
	meta_change_fn on_change;
	void *ctx;

	struct meta_changes changes;
	struct meta_cand *cands;
	size_t n_cands, cap_cands;

	/* The deepest directory whose chain up to the root this listing has
	 * already stamped: keys arrive sorted, so most share it. */
	char *last_parent;
	bool own_marker; /* "dir/" itself was in a page */
	int64_t keys;

	char *buf;
	size_t buf_size;
};

/* What a listing needs to know of an existing row. */
struct meta_row {
	bool found, is_dir, local;
	uint64_t gen;
	bool same; /* etag, last_modified and size as given */
};

/* ---------------------------------------------------------------- changes */

int meta_changes_add(struct meta_changes *c, char *path, enum meta_change what)
{
	if (!path)
		return -ENOMEM;
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 16;
		struct meta_change_rec *v = realloc(c->v, cap * sizeof(*v));

		if (!v) {
			free(path);
			return -ENOMEM;
		}
		c->v = v;
		c->cap = cap;
	}
	c->v[c->n].path = path;
	c->v[c->n].what = what;
	c->n++;
	return 0;
}

void meta_changes_truncate(struct meta_changes *c, size_t n)
{
	while (c->n > n)
		free(c->v[--c->n].path);
}

void meta_changes_free(struct meta_changes *c)
{
	meta_changes_truncate(c, 0);
	free(c->v);
	memset(c, 0, sizeof(*c));
}

/* Tells the caller, after the commit and with no lock held. */
static void meta_changes_flush(struct meta_listing *l)
{
	for (size_t i = 0; i < l->changes.n && l->on_change; i++)
		l->on_change(l->ctx, l->changes.v[i].path, l->changes.v[i].what);
	meta_changes_truncate(&l->changes, 0);
}

static int meta_change(struct meta_listing *l, const char *path, enum meta_change what)
{
	if (!l->on_change)
		return 0;
	return meta_changes_add(&l->changes, strdup(path), what);
}

/* ---------------------------------------------------------------- rows */

static int meta_wstep(meta *m, sqlite3_stmt *st, const char *what)
{
	int rc = sqlite3_step(st);

	meta_stmt_done(st);
	return rc == SQLITE_DONE ? 0 : meta_sqlite_err(m, &m->writer, rc, what);
}

static int meta_get(meta *m, const char *path, const char *etag, int64_t lm, uint64_t size,
                    struct meta_row *r)
{
	sqlite3_stmt *st = meta_stmt(m, &m->writer, MS_LIST_GET);
	int rc;

	memset(r, 0, sizeof(*r));
	if (!st)
		return -EIO;
	meta_bind_path(st, 1, path);
	if (etag)
		sqlite3_bind_text(st, 3, etag, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, lm);
	sqlite3_bind_int64(st, 5, (int64_t)size);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		r->found = true;
		r->is_dir = sqlite3_column_int(st, 0);
		r->local = sqlite3_column_int(st, 1);
		r->gen = sqlite3_column_int64(st, 2);
		r->same = sqlite3_column_int(st, 3);
	}
	meta_stmt_done(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return meta_sqlite_err(m, &m->writer, rc, "listing lookup");
	return 0;
}

/* INSERT (new) or UPDATE_LISTED (new version): the same bindings. */
static int meta_put(struct meta_listing *l, enum meta_stmt_id id, const char *path, bool is_dir,
                    bool marker, uint64_t size, const char *etag, int64_t lm, const char *owner_id,
                    const char *owner_name)
{
	sqlite3_stmt *st = meta_stmt(l->m, &l->m->writer, id);

	if (!st)
		return -EIO;
	meta_bind_path(st, 1, path);
	sqlite3_bind_int(st, 3, is_dir);
	sqlite3_bind_int(st, 4, marker);
	sqlite3_bind_int64(st, 5, (int64_t)size);
	if (etag)
		sqlite3_bind_text(st, 6, etag, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, lm);
	if (owner_id)
		sqlite3_bind_text(st, 8, owner_id, -1, SQLITE_STATIC);
	if (owner_name)
		sqlite3_bind_text(st, 9, owner_name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 10, (int64_t)l->gen);
	return meta_wstep(l->m, st, "listing write");
}

static int meta_touch(struct meta_listing *l, const char *path, const char *owner_id,
                      const char *owner_name)
{
	sqlite3_stmt *st = meta_stmt(l->m, &l->m->writer, MS_TOUCH);

	if (!st)
		return -EIO;
	meta_bind_path(st, 1, path);
	sqlite3_bind_int64(st, 3, (int64_t)l->gen);
	if (owner_id)
		sqlite3_bind_text(st, 4, owner_id, -1, SQLITE_STATIC);
	if (owner_name)
		sqlite3_bind_text(st, 5, owner_name, -1, SQLITE_STATIC);
	return meta_wstep(l->m, st, "listing touch");
}

static int meta_touch_dir(struct meta_listing *l, const char *path, bool marker)
{
	sqlite3_stmt *st = meta_stmt(l->m, &l->m->writer, MS_TOUCH_DIR);

	if (!st)
		return -EIO;
	meta_bind_path(st, 1, path);
	sqlite3_bind_int64(st, 3, (int64_t)l->gen);
	sqlite3_bind_int(st, 4, marker);
	return meta_wstep(l->m, st, "listing touch");
}

/*
 * An entry this mount uploaded is stored with LastModified 0 ("unknown": a
 * PUT or a copy does not return it).  When the listing shows the ETag and
 * size it stored, the object is the version it uploaded: take the listed
 * LastModified and keep the HEAD-derived fields (they were uploaded with
 * it) and, in fs/, the cached content.  *adopted tells whether it was.
 * Rare (once per uploaded version): the statement is prepared on demand.
 */
static int meta_adopt(struct meta_listing *l, const char *path, bool is_dir, const char *etag,
                      int64_t lm, uint64_t size, const char *owner_id, const char *owner_name,
                      bool *adopted)
{
	static const char sql[] =
	        "UPDATE entries SET last_modified_ns = ?3, list_gen = max(list_gen, ?4),"
	        " owner_id = coalesce(?5, owner_id), owner_name = coalesce(?6, owner_name)"
	        " WHERE parent = ?1 AND name = ?2 AND local = 0 AND is_dir = ?7"
	        " AND coalesce(last_modified_ns, 0) = 0 AND etag = ?8 AND size = ?9";
	sqlite3 *db = l->m->writer.db;
	sqlite3_stmt *st = NULL;
	int rc;

	*adopted = false;
	if (!etag || !lm)
		return 0;
	rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return meta_sqlite_err(l->m, &l->m->writer, rc, "listing adopt");
	meta_bind_path(st, 1, path);
	sqlite3_bind_int64(st, 3, lm);
	sqlite3_bind_int64(st, 4, (int64_t)l->gen);
	if (owner_id)
		sqlite3_bind_text(st, 5, owner_id, -1, SQLITE_STATIC);
	if (owner_name)
		sqlite3_bind_text(st, 6, owner_name, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 7, is_dir);
	sqlite3_bind_text(st, 8, etag, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 9, (int64_t)size);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return meta_sqlite_err(l->m, &l->m->writer, rc, "listing adopt");
	*adopted = sqlite3_changes(db) > 0;
	return 0;
}

static void meta_log_hidden(meta *m, const char *path)
{
	meta_log_once(m, META_LOG_WARNING, path,
	              "both a file and a directory in the bucket; showing the directory");
}

/*
 * A directory seen in this listing: as its "dir/" marker (marker, with the
 * marker's version), as a common prefix, or as the parent of a key.
 * `authoritative`: the listing shows whether a marker exists (a recursive
 * listing, whose sorted keys put "a/" before everything below it; or the
 * listed directory itself), so a first sighting without marker means none.
 */
static int meta_apply_dir(struct meta_listing *l, const char *path, bool marker, bool authoritative,
                          const char *etag, int64_t lm, uint64_t size)
{
	struct meta_row r;
	int err;

	if (!marker) {
		etag = NULL;
		lm = 0;
		size = 0;
	}
	err = meta_get(l->m, path, etag, lm, size, &r);
	if (err)
		return err;
	if (!r.found)
		return meta_put(l, MS_INSERT, path, true, marker, size, etag, lm, NULL, NULL);
	if (r.gen > l->gen)
		return 0; /* changed after this listing began */
	if (r.local)
		return meta_touch(l, path, NULL, NULL);
	if (!r.is_dir) {
		/* The directory wins over a file of the same name. */
		if (r.gen >= l->gen)
			meta_log_hidden(l->m, path);
		err = meta_put(l, MS_UPDATE_LISTED, path, true, marker, size, etag, lm, NULL, NULL);
		return err ? err : meta_change(l, path, META_CHANGED);
	}
	if (!authoritative || (!marker && r.gen >= l->gen))
		return meta_touch(l, path, NULL, NULL);
	if (r.same)
		return meta_touch_dir(l, path, marker);
	if (marker) {
		bool adopted;
		err = meta_adopt(l, path, true, etag, lm, size, NULL, NULL, &adopted);
		if (err || adopted)
			return err ? err : meta_touch_dir(l, path, marker);
	}
	err = meta_put(l, MS_UPDATE_LISTED, path, true, marker, size, etag, lm, NULL, NULL);
	return err ? err : meta_change(l, path, META_CHANGED);
}

static int meta_add_cand(struct meta_listing *l, const char *path, const meta_object *o)
{
	struct meta_cand *c;

	if (l->n_cands == l->cap_cands) {
		size_t cap = l->cap_cands ? l->cap_cands * 2 : 8;

		c = realloc(l->cands, cap * sizeof(*c));
		if (!c)
			return -ENOMEM;
		l->cands = c;
		l->cap_cands = cap;
	}
	c = &l->cands[l->n_cands];
	memset(c, 0, sizeof(*c));
	c->path = strdup(path);
	c->etag = o->etag ? strdup(o->etag) : NULL;
	if (!c->path || (o->etag && !c->etag)) {
		free(c->path);
		free(c->etag);
		return -ENOMEM;
	}
	c->size = o->size;
	c->last_modified_ns = o->last_modified_ns;
	l->n_cands++;
	return 0;
}

static void meta_cands_truncate(struct meta_listing *l, size_t n)
{
	while (l->n_cands > n) {
		struct meta_cand *c = &l->cands[--l->n_cands];

		free(c->path);
		free(c->etag);
	}
}

static int meta_apply_file(struct meta_listing *l, const char *path, const meta_object *o)
{
	struct meta_row r;
	int err;

	err = meta_get(l->m, path, o->etag, o->last_modified_ns, o->size, &r);
	if (err)
		return err;
	if (!r.found)
		return meta_put(l, MS_INSERT, path, false, false, o->size, o->etag,
		                o->last_modified_ns, o->owner_id, o->owner_name);
	/* Changed after this listing began (by this mount, or seen by a newer
	 * listing): what this listing shows may be older, leave it. */
	if (r.gen > l->gen)
		return 0;
	if (r.local)
		return meta_touch(l, path, NULL, NULL);
	if (r.is_dir) {
		if (r.gen >= l->gen) {
			meta_log_hidden(l->m, path);
			return 0;
		}
		return meta_add_cand(l, path, o);
	}
	if (r.same)
		return meta_touch(l, path, o->owner_id, o->owner_name);
	bool adopted;
	err = meta_adopt(l, path, false, o->etag, o->last_modified_ns, o->size, o->owner_id,
	                 o->owner_name, &adopted);
	if (err || adopted)
		return err;
	err = meta_put(l, MS_UPDATE_LISTED, path, false, false, o->size, o->etag,
	               o->last_modified_ns, o->owner_id, o->owner_name);
	return err ? err : meta_change(l, path, META_CHANGED);
}

/* ---------------------------------------------------------------- tombstones */

int meta_tomb_add(meta *m, const char *path)
{
	sqlite3_stmt *st;
	uint64_t gen;
	int err;

	if (!m->active_head)
		return 0; /* no listing can have read it before */
	gen = ++m->gen;
	err = meta_gen_save(m, gen);
	if (err)
		return err;
	st = meta_stmt(m, &m->writer, MS_TOMB_ADD);
	if (!st)
		return -EIO;
	meta_bind_path(st, 1, path);
	sqlite3_bind_int64(st, 3, (int64_t)gen);
	err = meta_wstep(m, st, "tombstone");
	if (!err) {
		m->tombs = true;
		m->tomb_seq++;
	}
	return err;
}

/* 1 if this mount removed `path` after this listing began, else 0. */
static int meta_tombed(struct meta_listing *l, const char *path)
{
	sqlite3_stmt *st;
	int rc;

	if (!l->m->tombs || path[1] == '\0')
		return 0;
	st = meta_stmt(l->m, &l->m->writer, MS_TOMB_GET);
	if (!st)
		return -EIO;
	meta_bind_path(st, 1, path);
	sqlite3_bind_int64(st, 3, (int64_t)l->gen);
	rc = sqlite3_step(st);
	meta_stmt_done(st);
	if (rc == SQLITE_ROW)
		return 1;
	return rc == SQLITE_DONE ? 0 : meta_sqlite_err(l->m, &l->m->writer, rc, "tombstone");
}

/* 1 if `path` or a directory above it is tombstoned for this listing. */
static int meta_tombed_chain(struct meta_listing *l, const char *path)
{
	char *p;
	size_t len;
	int err = 0;

	if (!l->m->tombs)
		return 0;
	p = strdup(path);
	if (!p)
		return -ENOMEM;
	for (len = strlen(p); !err && len > 1;) {
		p[len] = '\0';
		err = meta_tombed(l, p);
		while (p[len - 1] != '/')
			len--;
		len = len > 1 ? len - 1 : 1;
	}
	free(p);
	return err;
}

/* With the writer lock: a name removed since the listing last looked may
 * be one of the directories it remembers stamping. */
static void meta_tombs_seen(struct meta_listing *l)
{
	if (l->tomb_seq == l->m->tomb_seq)
		return;
	free(l->last_parent);
	l->last_parent = NULL;
	l->tomb_seq = l->m->tomb_seq;
}

/* Takes a listing out of the running ones; drops the tombstones no running
 * listing needs any more (those not newer than the oldest one left). */
static void meta_listing_retire(meta_listing *l)
{
	meta *m = l->m;
	sqlite3_stmt *st;
	bool prune;

	pthread_mutex_lock(&m->wlock);
	if (l->prev)
		l->prev->next = l->next;
	else
		m->active_head = l->next;
	if (l->next)
		l->next->prev = l->prev;
	else
		m->active_tail = l->prev;
	prune = m->tombs;
	/* Every later listing is newer than every tombstone: none matters
	 * now, even if the prune below fails. */
	if (!m->active_head)
		m->tombs = false;
	pthread_mutex_unlock(&m->wlock);
	if (!prune || meta_write_begin(m) != 0)
		return;
	st = meta_stmt(m, &m->writer, MS_TOMB_PRUNE);
	if (!st) {
		meta_write_rollback(m);
		return;
	}
	sqlite3_bind_int64(st, 1, m->active_head ? (int64_t)m->active_head->gen : INT64_MAX);
	if (meta_wstep(m, st, "prune tombstones") != 0)
		meta_write_rollback(m);
	else if (meta_write_commit(m) != 0)
		meta_log(m, META_LOG_DEBUG, "meta: tombstones kept until the next prune");
}

/* Whether a is p or an ancestor of p. */
static bool meta_is_ancestor(const char *a, size_t alen, const char *p)
{
	if (alen == 1)
		return true;
	return strncmp(a, p, alen) == 0 && (p[alen] == '/' || p[alen] == '\0');
}

/*
 * Stamps every directory from `parent` (plen bytes of a path) up to the
 * root, creating the missing ones: keys imply their directories.  Below the
 * listed directory a recursive listing is authoritative about markers;
 * above it nothing is.  1 (nothing done) if one of them is tombstoned.
 */
static int meta_ensure_parents(struct meta_listing *l, const char *parent, size_t plen)
{
	char *p;
	size_t len;
	int err = 0;

	if (plen == 1)
		return 0;
	if (l->last_parent && meta_is_ancestor(parent, plen, l->last_parent))
		return 0;
	p = strndup(parent, plen);
	if (!p)
		return -ENOMEM;
	/* Below a name removed since this listing began: skip the key. */
	for (len = plen; l->m->tombs && len > 1;) {
		p[len] = '\0';
		if (l->last_parent && meta_is_ancestor(p, len, l->last_parent))
			break;
		err = meta_tombed(l, p);
		if (err) {
			free(p);
			return err;
		}
		while (p[len - 1] != '/')
			len--;
		len = len > 1 ? len - 1 : 1;
	}
	memcpy(p, parent, plen);
	p[plen] = '\0';
	for (len = plen; len > 1;) {
		bool below = len > l->dir_len && (l->dir_len == 1 || p[l->dir_len] == '/');

		p[len] = '\0';
		if (l->last_parent && meta_is_ancestor(p, len, l->last_parent))
			break;
		err = meta_apply_dir(l, p, false, below && l->recursive, NULL, 0, 0);
		if (err)
			break;
		while (p[len - 1] != '/')
			len--;
		len = len > 1 ? len - 1 : 1;
	}
	if (err) {
		free(p);
		return err;
	}
	/* Stamped up to the root: remember the deepest one. */
	memcpy(p, parent, plen);
	p[plen] = '\0';
	free(l->last_parent);
	l->last_parent = p;
	return 0;
}

/* ---------------------------------------------------------------- pages */

int meta_listing_begin(meta *m, const char *dir, unsigned flags, meta_change_fn on_change,
                       void *ctx, meta_listing **out)
{
	meta_listing *l;

	*out = NULL;
	if (!meta_path_valid(dir))
		return -EINVAL;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->dir = strdup(dir);
	if (!l->dir) {
		free(l);
		return -ENOMEM;
	}
	l->m = m;
	l->dir_len = strlen(dir);
	l->recursive = flags & META_LIST_RECURSIVE;
	l->on_change = on_change;
	l->ctx = ctx;
	pthread_mutex_lock(&m->wlock);
	l->gen = ++m->gen;
	l->tomb_seq = m->tomb_seq;
	l->prev = m->active_tail;
	if (m->active_tail)
		m->active_tail->next = l;
	else
		m->active_head = l;
	m->active_tail = l;
	pthread_mutex_unlock(&m->wlock);
	*out = l;
	return 0;
}

/* Maps a key into l->buf; returns the path length, 0 to skip the key. */
static int meta_map_key(struct meta_listing *l, const char *key, bool *marker)
{
	size_t klen = strlen(key);
	int n;

	if (l->buf_size < klen + 2) {
		char *b = realloc(l->buf, klen + 2);

		if (!b)
			return -ENOMEM;
		l->buf = b;
		l->buf_size = klen + 2;
	}
	n = meta_key_to_path(l->m->prefix, key, klen, l->buf, l->buf_size, marker);
	if (n < 0) {
		meta_log_once(l->m, META_LOG_WARNING, key, "not a usable path name; skipped");
		return 0;
	}
	if ((size_t)n == l->dir_len && memcmp(l->buf, l->dir, n) == 0)
		return n; /* the listed directory's own marker */
	if (!meta_is_ancestor(l->dir, l->dir_len, l->buf)) {
		meta_log_once(l->m, META_LOG_DEBUG, key, "outside the listed directory; skipped");
		return 0;
	}
	return n;
}

static int meta_apply_key(struct meta_listing *l, const char *key, const meta_object *o)
{
	const char *name;
	size_t plen;
	bool marker;
	int n, err;

	n = meta_map_key(l, key, &marker);
	if (n <= 0)
		return n;
	meta_tombs_seen(l);
	err = meta_tombed(l, l->buf);
	if (err)
		return err < 0 ? err : 0;
	if ((size_t)n == l->dir_len && strcmp(l->buf, l->dir) == 0) {
		/* "dir/" itself: the root has no row; a file key equal to the
		 * directory cannot come from listing "dir/". */
		if (!marker || n == 1 || !o)
			return 0;
		l->own_marker = true;
		err = meta_ensure_parents(l, l->buf, n);
		if (!err)
			err = meta_apply_dir(l, l->buf, true, true, o->etag, o->last_modified_ns,
			                     o->size);
		return err < 0 ? err : 0;
	}
	meta_path_split(l->buf, &plen, &name);
	err = meta_ensure_parents(l, l->buf, plen);
	if (err)
		return err < 0 ? err : 0;
	if (!o) /* a common prefix: one level listings do not say if "a/" exists */
		return meta_apply_dir(l, l->buf, false, false, NULL, 0, 0);
	if (marker)
		return meta_apply_dir(l, l->buf, true, l->recursive, o->etag, o->last_modified_ns,
		                      o->size);
	return meta_apply_file(l, l->buf, o);
}

int meta_gen_save(meta *m, uint64_t gen)
{
	sqlite3_stmt *st = meta_stmt(m, &m->writer, MS_GEN_SAVE);

	if (!st)
		return -EIO;
	/* Saved with the first row stamped, so a crash can never hand the
	 * same number to the next mount's listing. */
	sqlite3_bind_int64(st, 1, (int64_t)gen);
	return meta_wstep(m, st, "save generation");
}

int meta_listing_add_page(meta_listing *l, const meta_object *objects, size_t n_objects,
                          const char *const *prefixes, size_t n_prefixes)
{
	size_t n_cands = l->n_cands;
	bool own_marker = l->own_marker;
	int err;

	err = meta_write_begin(l->m);
	if (err)
		return err;
	err = meta_gen_save(l->m, l->gen);
	for (size_t i = 0; !err && i < n_objects; i++)
		if (objects[i].key)
			err = meta_apply_key(l, objects[i].key, &objects[i]);
	for (size_t i = 0; !err && i < n_prefixes; i++)
		if (prefixes[i])
			err = meta_apply_key(l, prefixes[i], NULL);
	if (!err)
		err = meta_write_commit(l->m);
	else
		meta_write_rollback(l->m);
	if (err) {
		/* Nothing of this page happened: forget what it noted. */
		meta_cands_truncate(l, n_cands);
		meta_changes_truncate(&l->changes, 0);
		l->own_marker = own_marker;
		free(l->last_parent);
		l->last_parent = NULL;
		return err;
	}
	l->keys += n_objects + n_prefixes;
	meta_changes_flush(l);
	return 0;
}

/* ---------------------------------------------------------------- commit */

struct meta_paths {
	char **v;
	bool *is_dir;
	size_t n, cap;
};

static void meta_paths_free(struct meta_paths *p)
{
	for (size_t i = 0; i < p->n; i++)
		free(p->v[i]);
	free(p->v);
	free(p->is_dir);
	memset(p, 0, sizeof(*p));
}

/* Collects (parent, name[, is_dir]) rows of a statement as paths. */
static int meta_collect(meta *m, sqlite3_stmt *st, bool parent_only, struct meta_paths *out)
{
	int rc, err = 0;

	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *parent = (const char *)sqlite3_column_text(st, 0);
		size_t plen = sqlite3_column_bytes(st, 0);
		char *path;

		if (out->n == out->cap) {
			size_t cap = out->cap ? out->cap * 2 : 64;
			char **v = realloc(out->v, cap * sizeof(*v));
			bool *d = v ? realloc(out->is_dir, cap * sizeof(*d)) : NULL;

			if (v)
				out->v = v;
			if (!d) {
				err = -ENOMEM;
				break;
			}
			out->is_dir = d;
			out->cap = cap;
		}
		if (parent_only)
			path = strndup(parent, plen);
		else
			path = meta_path_join(parent, plen,
			                      (const char *)sqlite3_column_text(st, 1),
			                      sqlite3_column_bytes(st, 1));
		if (!path) {
			err = -ENOMEM;
			break;
		}
		out->is_dir[out->n] = parent_only || sqlite3_column_int(st, 2);
		out->v[out->n++] = path;
	}
	if (!err && rc != SQLITE_DONE)
		err = meta_sqlite_err(m, &m->writer, rc, "collect");
	meta_stmt_done(st);
	return err;
}

static int meta_dirs_delete(meta *m, const char *path)
{
	sqlite3_stmt *st = meta_stmt(m, &m->writer, MS_DIRS_DELETE);

	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
	return meta_wstep(m, st, "forget listing");
}

/* Reports and forgets (dirs rows) the collected vanished rows. */
static int meta_vanished(meta *m, struct meta_paths *p, struct meta_changes *changes)
{
	int err = 0;

	for (size_t i = 0; !err && i < p->n; i++) {
		if (p->is_dir[i])
			err = meta_dirs_delete(m, p->v[i]);
		if (!err && changes)
			err = meta_changes_add(changes, strdup(p->v[i]), META_VANISHED);
	}
	return err;
}

int meta_delete_subtree(meta *m, const char *dir, struct meta_changes *changes)
{
	size_t n = strlen(dir) + 2;
	char *lo = malloc(n), *hi = malloc(n);
	struct meta_paths p = {0};
	sqlite3_stmt *st;
	int err = -ENOMEM;

	if (!lo || !hi)
		goto out;
	err = -EIO;
	st = meta_stmt(m, &m->writer, MS_SWEEP_SELECT);
	if (!st)
		goto out;
	meta_bind_scope(st, 1, dir, lo, hi);
	sqlite3_bind_int64(st, 4, INT64_MAX);
	err = meta_collect(m, st, false, &p);
	if (!err)
		err = meta_vanished(m, &p, changes);
	if (err)
		goto out;
	err = -EIO;
	st = meta_stmt(m, &m->writer, MS_SWEEP_DELETE);
	if (!st)
		goto out;
	meta_bind_scope(st, 1, dir, lo, hi);
	sqlite3_bind_int64(st, 4, INT64_MAX);
	err = meta_wstep(m, st, "delete subtree");
out:
	meta_paths_free(&p);
	free(lo);
	free(hi);
	return err;
}

int meta_has_child(meta *m, const char *dir, bool *yes)
{
	sqlite3_stmt *st = meta_stmt(m, &m->writer, MS_HAS_CHILD);
	int rc;

	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, dir, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	*yes = rc == SQLITE_ROW;
	meta_stmt_done(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0
	                                             : meta_sqlite_err(m, &m->writer, rc, "child");
}

/* A file hidden by a directory that this listing did not show after all:
 * the directory is gone and the file is what exists now. */
static int meta_settle_cand(struct meta_listing *l, struct meta_cand *c)
{
	struct meta_row r;
	bool busy;
	int err;

	err = meta_get(l->m, c->path, NULL, 0, 0, &r);
	if (err || !r.found || r.local || !r.is_dir)
		return err;
	if (r.gen >= l->gen) {
		meta_log_hidden(l->m, c->path);
		return 0;
	}
	err = meta_delete_subtree(l->m, c->path, l->on_change ? &l->changes : NULL);
	if (!err)
		err = meta_has_child(l->m, c->path, &busy);
	if (err)
		return err;
	if (busy) {
		/* Local entries below keep the directory. */
		meta_log_hidden(l->m, c->path);
		return meta_touch(l, c->path, NULL, NULL);
	}
	err = meta_dirs_delete(l->m, c->path);
	if (!err)
		err = meta_put(l, MS_UPDATE_LISTED, c->path, false, false, c->size, c->etag,
		               c->last_modified_ns, NULL, NULL);
	return err ? err : meta_change(l, c->path, META_CHANGED);
}

/* Stamps the directories above local entries so the sweep keeps them. */
static int meta_keep_local_parents(struct meta_listing *l, char *lo, char *hi)
{
	sqlite3_stmt *st = meta_stmt(l->m, &l->m->writer, MS_LOCAL_PARENTS);
	struct meta_paths p = {0};
	int err;

	if (!st)
		return -EIO;
	meta_bind_scope(st, 1, l->dir, lo, hi);
	err = meta_collect(l->m, st, true, &p);
	for (size_t i = 0; !err && i < p.n; i++)
		err = meta_ensure_parents(l, p.v[i], strlen(p.v[i]));
	meta_paths_free(&p);
	return err < 0 ? err : 0;
}

static int meta_sweep(struct meta_listing *l, char *lo, char *hi)
{
	struct meta_changes *ch = l->on_change ? &l->changes : NULL;
	enum meta_stmt_id sel = l->recursive ? MS_SWEEP_SELECT : MS_SWEEP_SELECT_CHILDREN;
	enum meta_stmt_id del = l->recursive ? MS_SWEEP_DELETE : MS_SWEEP_DELETE_CHILDREN;
	struct meta_paths p = {0};
	sqlite3_stmt *st;
	int err;

	for (int pass = 0; pass < 2; pass++) {
		st = meta_stmt(l->m, &l->m->writer, pass ? del : sel);
		if (!st) {
			meta_paths_free(&p);
			return -EIO;
		}
		if (l->recursive) {
			meta_bind_scope(st, 1, l->dir, lo, hi);
			sqlite3_bind_int64(st, 4, (int64_t)l->gen);
		} else {
			sqlite3_bind_text(st, 1, l->dir, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 2, (int64_t)l->gen);
		}
		err = pass ? meta_wstep(l->m, st, "sweep") : meta_collect(l->m, st, false, &p);
		if (err)
			break;
	}
	if (!err)
		err = meta_vanished(l->m, &p, ch);
	/* One level deep, a vanished directory takes its subtree along. */
	for (size_t i = 0; !err && !l->recursive && i < p.n; i++)
		if (p.is_dir[i])
			err = meta_delete_subtree(l->m, p.v[i], ch);
	meta_paths_free(&p);
	return err;
}

/* No "dir/" in the pages: the listed directory has no marker (any more). */
static int meta_settle_own_marker(struct meta_listing *l)
{
	struct meta_row r;
	int err;

	if (l->own_marker || l->dir_len == 1 || l->keys == 0)
		return 0;
	err = meta_get(l->m, l->dir, NULL, 0, 0, &r);
	if (err || !r.found || r.local || !r.is_dir)
		return err;
	if (r.same)
		return meta_touch_dir(l, l->dir, false);
	err = meta_put(l, MS_UPDATE_LISTED, l->dir, true, false, 0, NULL, 0, NULL, NULL);
	return err ? err : meta_change(l, l->dir, META_CHANGED);
}

static int meta_mark_listed(struct meta_listing *l)
{
	sqlite3_stmt *st;
	int err;

	/* Not a directory removed since: it would seem listed (and empty). */
	err = meta_tombed_chain(l, l->dir);
	if (err)
		return err < 0 ? err : 0;
	st = meta_stmt(l->m, &l->m->writer, MS_DIRS_UPSERT);
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, l->dir, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, meta_now_ns());
	sqlite3_bind_int(st, 3, l->recursive);
	return meta_wstep(l->m, st, "mark listed");
}

static void meta_listing_free(meta_listing *l)
{
	meta_listing_retire(l);
	meta_cands_truncate(l, 0);
	free(l->cands);
	meta_changes_free(&l->changes);
	free(l->last_parent);
	free(l->buf);
	free(l->dir);
	free(l);
}

int meta_listing_commit(meta_listing *l)
{
	char *lo = malloc(l->dir_len + 2), *hi = malloc(l->dir_len + 2);
	int err;

	if (!lo || !hi) {
		err = -ENOMEM;
		goto out;
	}
	err = meta_write_begin(l->m);
	if (err)
		goto out;
	meta_changes_truncate(&l->changes, 0);
	meta_tombs_seen(l);
	err = meta_gen_save(l->m, l->gen);
	for (size_t i = 0; !err && i < l->n_cands; i++)
		err = meta_settle_cand(l, &l->cands[i]);
	if (!err)
		err = meta_settle_own_marker(l);
	if (!err)
		err = meta_keep_local_parents(l, lo, hi);
	if (!err)
		err = meta_sweep(l, lo, hi);
	if (!err)
		err = meta_mark_listed(l);
	if (!err)
		err = meta_write_commit(l->m);
	else
		meta_write_rollback(l->m);
	if (err)
		meta_changes_truncate(&l->changes, 0);
	else
		meta_changes_flush(l);
out:
	free(lo);
	free(hi);
	if (!err)
		err = l->keys > INT32_MAX ? INT32_MAX : (int)l->keys;
	meta_listing_free(l);
	return err;
}

void meta_listing_abort(meta_listing *l)
{
	if (l)
		meta_listing_free(l);
}
