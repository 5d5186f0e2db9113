/*
 * probe.c - finding one name without listing its whole directory.
 *
 * A lookup in a directory never listed used to list that directory, flat:
 * `cat /mnt/bucket/file` on a fresh mount of a bucket of a million keys
 * listed 20 pages before the first byte.  Now it asks S3 about that one name, as s3fs and mountpoint-s3 do, but with
 * LISTs, whose ETag and LastModified are the ones a later listing compares
 * with (a HEAD's LastModified has whole seconds only, and a listing would
 * take the entry for a new version and drop its cached contents):
 *
 *   1. LIST prefix "name/", max-keys 1: any key means a directory (which
 *      wins over a file of the same name, as in a listing);
 *   2. else LIST prefix "name", max-keys 1: the first key is "name" itself
 *      if that object exists (every other key with that prefix sorts after).
 *
 * The key found is applied to the index as a listing of the parent that saw
 * it would apply it (meta_listing_add_page), and the listing is abandoned:
 * nothing is swept, the parent is not marked listed.  Its x-amz-meta-*
 * attributes are fetched as for a listed entry (fs_lookup).  The answer,
 * "found" or "not there", is trusted for list_ttl, like a listing, and kept
 * in memory in a small table that forgets on collisions.
 *
 * A directory listed before, longer than list_ttl ago, is listed again, as
 * it always was: this mount's own removals drop a name from the index before
 * the S3 delete that follows (rename, unlink), and a probe of that name in
 * between would bring it back, trusted for list_ttl, where a listing's next
 * pass sweeps it; in a directory in use (listed, and renamed in) that window
 * is met often enough to matter (the TSan stress test saw a renamed-away
 * name come back).  A probe is for the first touch of a directory.
 *
 * The parent is listed instead when
 *   - more than FS_PROBES_PER_DIR of its names were probed within list_ttl:
 *     one listing is then cheaper than two requests a name;
 *   - the probe and the index disagree in a way only a listing settles: the
 *     index holds an entry (not created here) S3 no longer has, or a
 *     directory where S3 has a file, or the key found is not usable as a
 *     name or was removed here meanwhile.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "ops.h"

#define FS_PROBE_SLOTS    256
#define FS_PROBES_PER_DIR 32

struct fs_probe_slot {
	char *path;
	int64_t at;      /* when `path` was probed (0: never) */
	int64_t kids_at; /* start of the window kids counts in */
	unsigned kids;   /* names probed in directory `path` since kids_at */
};

struct fs_probes {
	pthread_mutex_t lock;
	struct fs_probe_slot slot[FS_PROBE_SLOTS];
};

int fs_probes_init(struct fs_ctx *ctx)
{
	ctx->probes = calloc(1, sizeof(*ctx->probes));
	if (!ctx->probes)
		return -ENOMEM;
	pthread_mutex_init(&ctx->probes->lock, NULL);
	return 0;
}

void fs_probes_free(struct fs_ctx *ctx)
{
	if (!ctx->probes)
		return;
	for (size_t i = 0; i < FS_PROBE_SLOTS; i++)
		free(ctx->probes->slot[i].path);
	pthread_mutex_destroy(&ctx->probes->lock);
	free(ctx->probes);
	ctx->probes = NULL;
}

/* The slot of `path` (FNV-1a); if another path holds it, NULL or, with
 * `take`, the slot emptied for `path` (NULL without memory).  Called with
 * the lock held. */
static struct fs_probe_slot *probe_slot(struct fs_probes *p, const char *path, bool take)
{
	uint64_t h = 14695981039346656037ULL;
	struct fs_probe_slot *s;

	for (const unsigned char *c = (const unsigned char *)path; *c; c++)
		h = (h ^ *c) * 1099511628211ULL;
	s = &p->slot[h % FS_PROBE_SLOTS];
	if (s->path && strcmp(s->path, path) == 0)
		return s;
	if (!take)
		return NULL;
	char *copy = strdup(path);
	if (!copy)
		return NULL;
	free(s->path);
	*s = (struct fs_probe_slot){.path = copy};
	return s;
}

/* Whether `path` was probed less than list_ttl ago. */
static bool probe_fresh(struct fs_ctx *ctx, const char *path, int64_t now)
{
	struct fs_probes *p = ctx->probes;
	struct fs_probe_slot *s;
	bool fresh = false;

	pthread_mutex_lock(&p->lock);
	s = probe_slot(p, path, false);
	if (s && s->at && now - s->at < ctx->list_ttl_ns)
		fresh = true;
	pthread_mutex_unlock(&p->lock);
	return fresh;
}

static void probe_done(struct fs_ctx *ctx, const char *path, int64_t at)
{
	struct fs_probes *p = ctx->probes;
	struct fs_probe_slot *s;

	pthread_mutex_lock(&p->lock);
	s = probe_slot(p, path, true);
	if (s && at > s->at)
		s->at = at;
	pthread_mutex_unlock(&p->lock);
}

/* Counts one more probe in `dir`; false once it had FS_PROBES_PER_DIR of
 * them within list_ttl (the caller lists `dir` instead). */
static bool probe_allowed(struct fs_ctx *ctx, const char *dir, int64_t now)
{
	struct fs_probes *p = ctx->probes;
	struct fs_probe_slot *s;
	bool ok = true;

	pthread_mutex_lock(&p->lock);
	s = probe_slot(p, dir, true);
	if (s) {
		if (!s->kids_at || now - s->kids_at >= ctx->list_ttl_ns) {
			s->kids_at = now;
			s->kids = 0;
		}
		ok = ++s->kids <= FS_PROBES_PER_DIR;
	}
	pthread_mutex_unlock(&p->lock);
	return ok;
}

/* One LIST of `prefix` for its first key (page->n_objects is 0 or 1). */
static int probe_list(struct fs_ctx *ctx, const char *path, const char *prefix, s3_list_page *page)
{
	s3_list_params lp = {.prefix = prefix, .max_keys = 1};
	s3_error err;
	int r;

	r = s3_list_objects(ctx->s3, &lp, page, &err);
	if (r)
		fs_log_s3(FS_LOG_WARNING, "looking up", path, &err);
	return r;
}

/* Asks S3 about `path` alone and applies the answer to the index: 0 done
 * (the index is now as fresh as a listing for `path`, which holds no entry
 * there), 1 list the parent instead, 2 the entry is in *out (as the index
 * now holds it, or, if the index could not store it, as S3 said), or a
 * negative errno (S3 not reachable). */
static int probe(struct fs_ctx *ctx, const char *parent, const char *path, int64_t now,
                 meta_entry *out)
{
	char *dkey = fs_key_of(ctx, path, true), *fkey = fs_key_of(ctx, path, false);
	s3_list_page dpage = {0}, fpage = {0};
	const s3_object *o = NULL;
	meta_listing *l = NULL;
	meta_entry e = {0};
	bool is_dir = false;
	int r, found;

	if (!dkey || !fkey) {
		r = -ENOMEM;
		goto out;
	}
	/* Begun before the requests: a removal here while they run leaves a
	 * tombstone this listing honours. */
	r = meta_listing_begin(ctx->meta, parent, 0, fs_on_listing_change, ctx, &l);
	if (r)
		goto out;
	r = probe_list(ctx, path, dkey, &dpage);
	if (r)
		goto out;
	if (dpage.n_objects > 0) {
		o = &dpage.objects[0];
		is_dir = true;
	} else {
		r = probe_list(ctx, path, fkey, &fpage);
		if (r)
			goto out;
		if (fpage.n_objects > 0 && strcmp(fpage.objects[0].key, fkey) == 0)
			o = &fpage.objects[0];
	}
	if (o) {
		meta_object mo = {.key = o->key,
		                  .size = o->size,
		                  .etag = o->etag,
		                  .last_modified_ns = o->last_modified_ns,
		                  .owner_id = o->owner_id,
		                  .owner_name = o->owner_name};
		r = meta_listing_add_page(l, &mo, 1, NULL, 0);
		if (r) {
			/* The index cannot take it (its disk is full, say): answer
			 * with what S3 said, stored nowhere, asked again next time. */
			fs_log(FS_LOG_WARNING, "%s: not stored in the index (%s)", path,
			       strerror(-r));
			memset(out, 0, sizeof(*out));
			out->is_dir = is_dir;
			out->dir_marker = is_dir && strcmp(o->key, dkey) == 0;
			out->size = is_dir ? 0 : o->size;
			out->last_modified_ns =
			        out->dir_marker || !is_dir ? o->last_modified_ns : 0;
			out->etag = out->dir_marker || !is_dir ? strdup(o->etag) : NULL;
			out->name = strdup(fs_base_of(path));
			r = 2;
			if (!out->name || (!out->etag && (out->dir_marker || !is_dir))) {
				meta_entry_clear(out);
				r = -ENOMEM;
			}
			goto out;
		}
	}
	meta_listing_abort(l);
	l = NULL;

	found = meta_lookup(ctx->meta, path, &e);
	if (found != 0 && found != -ENOENT) {
		r = found;
		goto out;
	}
	if (o && (found != 0 || e.is_dir != is_dir))
		r = 1; /* not applied as found (see the top of this file) */
	else if (!o && found == 0 && !e.local)
		r = 1; /* gone from S3 */
	if (r) {
		fs_log(FS_LOG_DEBUG, "%s: the index and S3 disagree, listing %s", path, parent);
		goto out;
	}
	probe_done(ctx, path, now);
	if (found == 0) {
		*out = e; /* the caller's now */
		memset(&e, 0, sizeof(e));
		r = 2;
	}
out:
	meta_listing_abort(l);
	meta_entry_clear(&e);
	s3_list_page_free(&dpage);
	s3_list_page_free(&fpage);
	free(dkey);
	free(fkey);
	return r;
}

int fs_find(struct fs_ctx *ctx, const char *parent, const char *path, meta_entry *out)
{
	int64_t at = 0, now = fs_now_ns();
	int r;

	r = meta_dir_listed_at(ctx->meta, parent, &at);
	if (r == 0 && at && now - at < ctx->list_ttl_ns)
		return 0;
	if (r == 0 && !at && probe_fresh(ctx, path, now))
		return 0;
	if (r == 0 && !at && probe_allowed(ctx, parent, now)) {
		r = probe(ctx, parent, path, now, out);
		if (r == 0)
			return 0;
		if (r == 2)
			return 1;
		if (r < 0) {
			/* S3 not reachable (or refusing): an older listing, or the
			 * index's entry, is still the best answer there is. */
			meta_entry e = {0};
			bool known = at || meta_lookup(ctx->meta, path, &e) == 0;

			meta_entry_clear(&e);
			if (!known || r == -ENOMEM)
				return r;
			fs_log(FS_LOG_WARNING, "serving the indexed entry of %s", path);
			return 0;
		}
	}
	return fs_ensure_listed(ctx, parent);
}
