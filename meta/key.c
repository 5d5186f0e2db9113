/*
 * key.c - object keys to paths and back, and the memory of keys already
 * logged as unusable (so a bad key costs one log line per mount, not one per
 * listing).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Remembering every bad key of a hostile bucket would be unbounded memory. */
#define META_SEEN_MAX 65536

int meta_key_to_path(const char *prefix, const char *key, size_t key_len, char *out,
                     size_t out_size, bool *dir_marker)
{
	size_t plen = prefix ? strlen(prefix) : 0;
	const char *p, *end;
	size_t n, len;

	*dir_marker = false;
	if (!key || key_len < plen || (plen && memcmp(key, prefix, plen) != 0))
		return -EINVAL;
	if (memchr(key, '\0', key_len))
		return -EINVAL;
	p = key + plen;
	n = key_len - plen;
	if (n == 0) {
		/* The prefix itself: with a prefix, its "dir/" marker is the
		 * root; the empty key of a bucket is no name at all. */
		if (plen == 0)
			return -EINVAL;
		*dir_marker = true;
		if (out_size < 2)
			return -ERANGE;
		strcpy(out, "/");
		return 1;
	}
	if (p[n - 1] == '/') {
		*dir_marker = true;
		n--;
		if (n == 0)
			return -EINVAL; /* "prefix//": an empty component */
	}
	end = p + n;
	for (const char *c = p; c <= end;) {
		const char *s = memchr(c, '/', end - c);
		size_t clen;

		if (!s)
			s = end;
		clen = s - c;
		if (clen == 0 || clen > META_NAME_MAX)
			return -EINVAL;
		if (c[0] == '.' && (clen == 1 || (clen == 2 && c[1] == '.')))
			return -EINVAL;
		c = s + 1;
	}
	len = n + 1;
	if (out_size < len + 1)
		return -ERANGE;
	out[0] = '/';
	memcpy(out + 1, p, n);
	out[len] = '\0';
	return len;
}

char *meta_path_to_key(const char *prefix, const char *path, bool dir_marker)
{
	size_t plen, n;
	char *key;

	if (!prefix || !meta_path_valid(path))
		return NULL;
	plen = strlen(prefix);
	n = strlen(path + 1);
	if (n == 0 && plen == 0)
		return NULL; /* the bucket's root has no key */
	key = malloc(plen + n + 2);
	if (!key)
		return NULL;
	memcpy(key, prefix, plen);
	memcpy(key + plen, path + 1, n);
	/* The root below a prefix is "prefix/" already. */
	if (dir_marker && n)
		key[plen + n++] = '/';
	key[plen + n] = '\0';
	return key;
}

/* ---------------------------------------------------------------- log once */

uint64_t meta_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

/* Inserts s (copied); returns 1 if new, 0 if present, -ENOMEM. */
static int meta_seen_add(struct meta_seen *set, const char *s)
{
	size_t i;

	if (set->n * 2 >= set->cap) {
		size_t cap = set->cap ? set->cap * 2 : 64;
		char **slots = calloc(cap, sizeof(*slots));

		if (!slots)
			return -ENOMEM;
		for (size_t j = 0; j < set->cap; j++) {
			if (!set->slots[j])
				continue;
			for (i = meta_hash(set->slots[j]) & (cap - 1); slots[i];
			     i = (i + 1) & (cap - 1))
				;
			slots[i] = set->slots[j];
		}
		free(set->slots);
		set->slots = slots;
		set->cap = cap;
	}
	for (i = meta_hash(s) & (set->cap - 1); set->slots[i]; i = (i + 1) & (set->cap - 1))
		if (strcmp(set->slots[i], s) == 0)
			return 0;
	set->slots[i] = strdup(s);
	if (!set->slots[i])
		return -ENOMEM;
	set->n++;
	return 1;
}

void meta_seen_free(struct meta_seen *set)
{
	for (size_t i = 0; i < set->cap; i++)
		free(set->slots[i]);
	free(set->slots);
	memset(set, 0, sizeof(*set));
}

void meta_log_once(meta *m, int level, const char *what, const char *reason)
{
	int r;

	if (!m->log || level > m->log_level)
		return;
	pthread_mutex_lock(&m->seen_lock);
	if (m->seen.n >= META_SEEN_MAX) {
		r = m->seen.full ? 0 : 2;
		m->seen.full = true;
	} else {
		r = meta_seen_add(&m->seen, what);
	}
	pthread_mutex_unlock(&m->seen_lock);
	if (r == 2) {
		meta_log(m, level, "meta: too many skipped keys; no longer logging them");
	} else if (r != 0) {
		/* Also on ENOMEM: better twice than never.  A key may hold any
		 * byte; none may forge a log line. */
		char *safe = strdup(what);

		for (char *p = safe; p && *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				*p = '?';
		meta_log(m, level, "meta: %s: %s", safe ? safe : "(key)", reason);
		free(safe);
	}
}
