/*
 * test_meta.c - unit tests of meta/, the SQLite index.
 *
 * Each test is one scenario against a fresh index in a temporary directory;
 * the plain sqlite3 API checks what other tools see (the CloudFiles view,
 * integrity after a crash).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "internal.h" /* the tests peek at the tombs table */
#include "meta.h"

/* Sanitizers multiply time and memory: the scale test relaxes its bounds. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

static int failures;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: %s: CHECK(%s) failed\n", __FILE__, __LINE__,       \
			        __func__, #cond);                                                  \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

#define CHECK_INT(a, b)                                                                            \
	do {                                                                                       \
		long long a_ = (a), b_ = (b);                                                      \
		if (a_ != b_) {                                                                    \
			fprintf(stderr, "%s:%d: %s: %s == %lld, expected %s == %lld\n", __FILE__,  \
			        __LINE__, __func__, #a, a_, #b, b_);                               \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

#define CHECK_STR(a, b)                                                                            \
	do {                                                                                       \
		const char *a_ = (a), *b_ = (b);                                                   \
		if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                           \
			fprintf(stderr, "%s:%d: %s: %s == \"%s\", expected \"%s\"\n", __FILE__,    \
			        __LINE__, __func__, #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)");   \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

/* Setup that must work for the test to mean anything. */
#define MUST(expr)                                                                                 \
	do {                                                                                       \
		int r_ = (expr);                                                                   \
		if (r_ < 0) {                                                                      \
			fprintf(stderr, "%s:%d: %s: %s = %d (%s)\n", __FILE__, __LINE__, __func__, \
			        #expr, r_, strerror(-r_));                                         \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

static char tmpdir[] = "/tmp/test_meta.XXXXXX";

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- logging */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_hidden, log_skipped, log_errors;

static void test_log(int level, const char *fmt, va_list ap)
{
	char buf[2048];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	pthread_mutex_lock(&log_lock);
	if (strstr(buf, "both a file and a directory"))
		log_hidden++;
	if (strstr(buf, "not a usable path name"))
		log_skipped++;
	if (level == META_LOG_ERR) {
		log_errors++;
		fprintf(stderr, "log: %s\n", buf);
	}
	pthread_mutex_unlock(&log_lock);
}

static const meta_options test_opts = {.log = test_log, .log_level = META_LOG_DEBUG};

static char *db_path(const char *name)
{
	static char buf[512];

	snprintf(buf, sizeof(buf), "%s/%s", tmpdir, name);
	return buf;
}

static meta *open_db(const char *name, const char *prefix)
{
	meta *m;

	MUST(meta_open(db_path(name), prefix, &test_opts, &m));
	return m;
}

/* ---------------------------------------------------------------- listing helpers */

#define LM0 1700000000123000000LL

static meta_object obj(const char *key, uint64_t size, const char *etag)
{
	return (meta_object){.key = key, .size = size, .etag = etag, .last_modified_ns = LM0};
}

struct changes {
	char paths[64][128];
	enum meta_change what[64];
	int n;
};

static void on_change(void *ctx, const char *path, enum meta_change what)
{
	struct changes *c = ctx;

	if (c->n < 64) {
		snprintf(c->paths[c->n], sizeof(c->paths[0]), "%s", path);
		c->what[c->n++] = what;
	}
}

static enum meta_change change_of(const struct changes *c, const char *path)
{
	for (int i = 0; i < c->n; i++)
		if (strcmp(c->paths[i], path) == 0)
			return c->what[i];
	return 0;
}

/* Applies one listing of `dir` from one page of objects and prefixes. */
static int list1(meta *m, const char *dir, unsigned flags, const meta_object *o, size_t n,
                 const char *const *pre, size_t npre, struct changes *ch)
{
	meta_listing *l;

	MUST(meta_listing_begin(m, dir, flags, ch ? on_change : NULL, ch, &l));
	MUST(meta_listing_add_page(l, o, n, pre, npre));
	return meta_listing_commit(l);
}

static bool exists(meta *m, const char *path)
{
	meta_entry e;
	int r = meta_lookup(m, path, &e);

	meta_entry_clear(&e);
	return r == 0;
}

struct names {
	char buf[4096];
	int n;
	int stop_after;
};

static int collect_names(void *ctx, const meta_entry *e)
{
	struct names *nm = ctx;
	size_t len = strlen(nm->buf);

	snprintf(nm->buf + len, sizeof(nm->buf) - len, "%s%s%s", len ? " " : "", e->name,
	         e->is_dir ? "/" : "");
	nm->n++;
	return nm->stop_after && nm->n >= nm->stop_after ? 7 : 0;
}

static const char *names_of(meta *m, const char *dir)
{
	static struct names nm;

	memset(&nm, 0, sizeof(nm));
	if (meta_readdir(m, dir, NULL, collect_names, &nm) != 0)
		return "(error)";
	return nm.buf;
}

/* ---------------------------------------------------------------- keys */

static void test_key_mapping_accepts_names_and_refuses_the_rest(void)
{
	static const struct {
		const char *prefix, *key, *path;
		bool marker;
	} good[] = {
	        {"", "a", "/a", false},
	        {"", "a/b/c.txt", "/a/b/c.txt", false},
	        {"", "a/", "/a", true},
	        {"", "a/b/", "/a/b", true},
	        {"", "...", "/...", false},
	        {"", ".hidden/a.", "/.hidden/a.", false},
	        {"", "sp ace/\xc3\xbc", "/sp ace/\xc3\xbc", false},
	        {"p/", "p/a", "/a", false},
	        {"p/", "p/", "/", true},
	        {"p/q/", "p/q/x/y/", "/x/y", true},
	};
	static const struct {
		const char *prefix, *key;
	} bad[] = {
	        {"", ""},      {"", "/"},      {"", "/a"},       {"", "a//b"},   {"", "a//"},
	        {"", "//"},    {"", "."},      {"", ".."},       {"", "./a"},    {"", "../a"},
	        {"", "a/./b"}, {"", "a/../b"}, {"", "a/."},      {"", "a/.."},   {"", "a/../"},
	        {"", "./"},    {"p/", "q/a"},  {"p/", "p"},      {"p/", "p//x"}, {"p/", "p//"},
	        {"p/", "P/a"}, {"p/", ""},     {"p/", "p/../x"}, {"p/", "p/."},
	};
	char out[600];
	bool marker;
	char longname[300];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		int n = meta_key_to_path(good[i].prefix, good[i].key, strlen(good[i].key), out,
		                         sizeof(out), &marker);
		char *back;

		CHECK_INT(n, strlen(good[i].path));
		CHECK_STR(out, good[i].path);
		CHECK_INT(marker, good[i].marker);
		back = meta_path_to_key(good[i].prefix, good[i].path, good[i].marker);
		CHECK_STR(back, good[i].key);
		free(back);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int n = meta_key_to_path(bad[i].prefix, bad[i].key, strlen(bad[i].key), out,
		                         sizeof(out), &marker);
		if (n != -EINVAL)
			fprintf(stderr, "bad key \"%s\" (prefix \"%s\") gave %d\n", bad[i].key,
			        bad[i].prefix, n);
		CHECK_INT(n, -EINVAL);
	}
	/* An embedded NUL: the key is a byte string with a length. */
	CHECK_INT(meta_key_to_path("", "a\0b", 3, out, sizeof(out), &marker), -EINVAL);
	/* NAME_MAX: 255 bytes is a name, 256 is not. */
	memset(longname, 'x', 255);
	longname[255] = '\0';
	CHECK_INT(meta_key_to_path("", longname, 255, out, sizeof(out), &marker), 256);
	longname[255] = 'x';
	longname[256] = '\0';
	CHECK_INT(meta_key_to_path("", longname, 256, out, sizeof(out), &marker), -EINVAL);
	memcpy(longname, "d/", 2); /* "d/" and 254 bytes */
	CHECK_INT(meta_key_to_path("", longname, 256, out, sizeof(out), &marker), 257);
	/* The output buffer: key_len + 2 always suffices, less may not. */
	CHECK_INT(meta_key_to_path("", "abc", 3, out, 5, &marker), 4);
	CHECK_INT(meta_key_to_path("", "abc", 3, out, 4, &marker), -ERANGE);
	CHECK(meta_path_to_key("", "/", false) == NULL);
	CHECK(meta_path_to_key("", "a", false) == NULL);
	CHECK(meta_path_to_key("", "/a//b", false) == NULL);
}

/* Random keys: whatever comes in, a path comes out only if it is a clean
 * path that maps back to the same key. */
static void test_key_mapping_random_bytes_round_trip_or_are_refused(void)
{
	static const char alphabet[] = "ab./\0\xff";
	const char *prefixes[] = {"", "p/"};
	unsigned seed = 12345;
	int accepted = 0;

	for (int iter = 0; iter < 200000; iter++) {
		const char *prefix = prefixes[iter & 1];
		char key[16], out[32];
		size_t len, plen = strlen(prefix);
		bool marker;
		int n;

		len = rand_r(&seed) % 10;
		memcpy(key, prefix, plen);
		for (size_t i = 0; i < len; i++)
			key[plen + i] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
		len += plen;
		n = meta_key_to_path(prefix, key, len, out, sizeof(out), &marker);
		if (n < 0) {
			CHECK(n == -EINVAL);
			continue;
		}
		accepted++;
		CHECK(out[0] == '/');
		CHECK((size_t)n == strlen(out));
		CHECK(strstr(out, "//") == NULL);
		CHECK(strstr(out, "/./") == NULL && strstr(out, "/../") == NULL);
		CHECK(n == 1 || out[n - 1] != '/');
		{
			char *back = meta_path_to_key(prefix, out, marker);

			CHECK(back && strlen(back) == len && memcmp(back, key, len) == 0);
			free(back);
		}
	}
	CHECK(accepted > 1000);
}

/* ---------------------------------------------------------------- listings */

static void test_recursive_listing_builds_the_tree_with_implicit_dirs(void)
{
	meta *m = open_db("tree.db", "");
	meta_object page1[] = {
	        obj("deep/er/est/file", 1, "\"e1\""),
	        obj("docs/a.txt", 10, "\"e2\""),
	        obj("docs/b.txt", 20, "\"e3\""),
	};
	meta_object page2[] = {
	        obj("docs/sub/c.txt", 30, "\"e4\""),    obj("photos/", 0, "\"d41d\""),
	        obj("photos/2020/x.jpg", 40, "\"e5\""), obj("top.txt", 50, "\"e6\""),
	        obj("bad//key", 1, "\"e7\""),
	};
	meta_listing *l;
	meta_entry e;
	int64_t t0 = 0, t;

	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &l));
	MUST(meta_listing_add_page(l, page1, 3, NULL, 0));
	MUST(meta_listing_add_page(l, page2, 5, NULL, 0));
	CHECK_INT(meta_listing_commit(l), 8);

	CHECK_STR(names_of(m, "/"), "deep/ docs/ photos/ top.txt");
	CHECK_STR(names_of(m, "/docs"), "a.txt b.txt sub/");
	CHECK_STR(names_of(m, "/deep/er"), "est/");
	CHECK_STR(names_of(m, "/nowhere"), "");
	/* deep, er, est, file, docs, a, b, sub, c, photos, 2020, x, top */
	CHECK_INT(meta_count_entries(m), 13);

	CHECK_INT(meta_lookup(m, "/docs", &e), 0);
	CHECK(e.is_dir && !e.dir_marker && e.etag == NULL);
	meta_entry_clear(&e);
	CHECK_INT(meta_lookup(m, "/photos", &e), 0);
	CHECK(e.is_dir && e.dir_marker);
	CHECK_STR(e.etag, "\"d41d\"");
	meta_entry_clear(&e);
	CHECK_INT(meta_lookup(m, "/top.txt", &e), 0);
	CHECK(!e.is_dir && !e.local && e.size == 50 && e.last_modified_ns == LM0);
	CHECK_STR(e.name, "top.txt");
	CHECK_STR(e.etag, "\"e6\"");
	CHECK(e.head_etag == NULL && e.has == 0);
	meta_entry_clear(&e);
	CHECK_INT(meta_lookup(m, "/", &e), 0);
	CHECK(e.is_dir);
	meta_entry_clear(&e);
	CHECK_INT(meta_lookup(m, "/docs/zz", &e), -ENOENT);
	CHECK_INT(meta_lookup(m, "/bad", &e), -ENOENT);
	CHECK_INT(meta_lookup(m, "docs", &e), -EINVAL);
	CHECK_INT(meta_lookup(m, "/docs/", &e), -EINVAL);
	CHECK_INT(log_skipped >= 1, 1);

	/* The recursive listing of "/" covers every directory below. */
	t = 0;
	MUST(meta_dir_listed_at(m, "/", &t0));
	CHECK(t0 > 0);
	MUST(meta_dir_listed_at(m, "/docs/sub", &t));
	CHECK_INT(t, t0);
	meta_close(m);
}

static void test_one_level_listings_use_prefixes_and_own_marker(void)
{
	meta *m = open_db("level.db", "pre/");
	meta_object root[] = {obj("pre/", 0, "\"r\""), obj("pre/top.txt", 5, "\"t\"")};
	const char *root_pre[] = {"pre/docs/", "pre/photos/"};
	meta_object docs[] = {obj("pre/docs/", 0, "\"m\""), obj("pre/docs/a.txt", 1, "\"a\"")};
	const char *docs_pre[] = {"pre/docs/sub/"};
	meta_entry e;
	int64_t t;

	CHECK_INT(list1(m, "/", 0, root, 2, root_pre, 2, NULL), 4);
	CHECK_STR(names_of(m, "/"), "docs/ photos/ top.txt");
	CHECK_INT(meta_lookup(m, "/docs", &e), 0);
	CHECK(e.is_dir && !e.dir_marker); /* a common prefix does not say */
	meta_entry_clear(&e);
	MUST(meta_dir_listed_at(m, "/docs", &t));
	CHECK_INT(t, 0); /* a one-level listing of "/" covers only "/" */
	MUST(meta_dir_listed_at(m, "/", &t));
	CHECK(t > 0);

	CHECK_INT(list1(m, "/docs", 0, docs, 2, docs_pre, 1, NULL), 3);
	CHECK_STR(names_of(m, "/docs"), "a.txt sub/");
	CHECK_INT(meta_lookup(m, "/docs", &e), 0);
	CHECK(e.is_dir && e.dir_marker); /* its own "docs/" was listed */
	CHECK_STR(e.etag, "\"m\"");
	meta_entry_clear(&e);
	MUST(meta_dir_listed_at(m, "/docs", &t));
	CHECK(t > 0);
	MUST(meta_dir_listed_at(m, "/docs/sub", &t));
	CHECK_INT(t, 0);

	/* Relisted without its marker: the directory is implicit now. */
	CHECK_INT(list1(m, "/docs", 0, docs + 1, 1, docs_pre, 1, NULL), 2);
	CHECK_INT(meta_lookup(m, "/docs", &e), 0);
	CHECK(e.is_dir && !e.dir_marker && e.etag == NULL);
	meta_entry_clear(&e);
	CHECK(exists(m, "/docs/sub"));

	/* "/photos" vanished from a one-level listing of "/": with its
	 * subtree, which that listing never covered. */
	CHECK_INT(list1(m, "/", 0, root, 2, root_pre, 1, NULL), 3);
	CHECK(!exists(m, "/photos"));
	CHECK(exists(m, "/docs/sub"));
	CHECK_INT(list1(m, "/", 0, root, 2, NULL, 0, NULL), 2);
	CHECK(!exists(m, "/docs"));
	CHECK(!exists(m, "/docs/a.txt"));
	CHECK(!exists(m, "/docs/sub"));
	CHECK_INT(meta_count_entries(m), 1);
	meta_close(m);
}

static void test_relisting_keeps_head_data_of_unchanged_entries_only(void)
{
	meta *m = open_db("relist.db", "");
	meta_object first[] = {
	        obj("a", 1, "\"a1\""),      obj("b", 2, "\"b1\""), obj("c", 3, "\"c1\""),
	        obj("gone/x", 4, "\"x1\""), obj("t", 5, "\"t1\""),
	};
	meta_object second[] = {
	        obj("a", 1, "\"a1\""), /* unchanged */
	        obj("b", 2, "\"b2\""), /* new ETag */
	        obj("d", 4, "\"d1\""), /* new */
	        obj("t", 5, "\"t1\""), /* same ETag, new LastModified */
	};
	meta_head h = {.has = META_HAS_MODE | META_HAS_UID | META_HAS_MTIME,
	               .mode = 0100640,
	               .uid = 1000,
	               .mtime_ns = 1600000000500000000LL,
	               .xattr = (const unsigned char *)"{\"k\":\"dg==\"}",
	               .xattr_len = 12};
	meta_entry e, local = {.local = true, .size = 7, .has = META_HAS_MODE, .mode = 0100600};
	struct changes ch = {0};

	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, first, 5, NULL, 0, NULL), 5);
	for (const char *const *p = (const char *const[]){"/a", "/b", "/c", "/t", NULL}; *p; p++) {
		char etag[8];

		snprintf(etag, sizeof(etag), "\"%s1\"", *p + 1);
		CHECK_INT(meta_set_head(m, *p, etag, &h), 0);
	}
	CHECK_INT(meta_set_symlink(m, "/a", "\"a1\"", "target"), 0);
	CHECK_INT(meta_set_head(m, "/a", "\"old\"", &h), -ESTALE);
	CHECK_INT(meta_set_head(m, "/zz", "\"a1\"", &h), -ENOENT);
	/* Created here, not uploaded yet: no listing shows them. */
	CHECK_INT(meta_upsert(m, "/e", &local), 0);
	CHECK_INT(meta_upsert(m, "/gone/local.txt", &local), 0);
	CHECK_INT(meta_upsert(m, "/nodir/x", &local), -ENOENT);
	CHECK_INT(meta_upsert(m, "/a/x", &local), -ENOTDIR);

	second[3].last_modified_ns = LM0 + 1000000;
	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, second, 4, NULL, 0, &ch), 4);

	CHECK_INT(meta_lookup(m, "/a", &e), 0);
	CHECK_STR(e.head_etag, "\"a1\"");
	CHECK_INT(e.has, META_HAS_MODE | META_HAS_UID | META_HAS_MTIME);
	CHECK_INT(e.mode, 0100640);
	CHECK_INT(e.uid, 1000);
	CHECK_INT(e.mtime_ns, 1600000000500000000LL);
	CHECK_STR(e.symlink, "target");
	CHECK(e.xattr_len == 12 && e.xattr && memcmp(e.xattr, "{\"k\":\"dg==\"}", 12) == 0);
	meta_entry_clear(&e);

	CHECK_INT(meta_lookup(m, "/b", &e), 0);
	CHECK_STR(e.etag, "\"b2\"");
	CHECK(e.head_etag == NULL && e.has == 0 && e.xattr == NULL && e.symlink == NULL);
	meta_entry_clear(&e);
	CHECK_INT(meta_lookup(m, "/t", &e), 0);
	CHECK(e.head_etag == NULL && e.has == 0);
	meta_entry_clear(&e);

	CHECK(!exists(m, "/c"));
	CHECK(exists(m, "/d"));
	CHECK_INT(meta_lookup(m, "/e", &e), 0);
	CHECK(e.local && e.size == 7);
	meta_entry_clear(&e);
	/* "/gone/x" vanished, but "/gone" holds a local file. */
	CHECK(!exists(m, "/gone/x"));
	CHECK(exists(m, "/gone"));
	CHECK(exists(m, "/gone/local.txt"));

	CHECK_INT(change_of(&ch, "/b"), META_CHANGED);
	CHECK_INT(change_of(&ch, "/t"), META_CHANGED);
	CHECK_INT(change_of(&ch, "/c"), META_VANISHED);
	CHECK_INT(change_of(&ch, "/gone/x"), META_VANISHED);
	CHECK_INT(change_of(&ch, "/a"), 0);
	CHECK_INT(change_of(&ch, "/d"), 0);
	CHECK_INT(change_of(&ch, "/gone"), 0);
	CHECK_INT(ch.n, 4);

	/* The upload lands: the metadata sent with it is the new version's. */
	CHECK_INT(meta_clear_local(m, "/e", "\"e1\"", 7, LM0), 0);
	CHECK_INT(meta_lookup(m, "/e", &e), 0);
	CHECK(!e.local && e.size == 7 && (e.has & META_HAS_MODE) && e.mode == 0100600);
	CHECK_STR(e.etag, "\"e1\"");
	CHECK_STR(e.head_etag, "\"e1\"");
	meta_entry_clear(&e);
	CHECK_INT(meta_clear_local(m, "/zz", "\"x\"", 1, 0), -ENOENT);
	/* No longer local and not listed: the next listing drops it. */
	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, second, 4, NULL, 0, NULL), 4);
	CHECK(!exists(m, "/e"));
	CHECK(exists(m, "/gone/local.txt"));
	meta_close(m);
}

/* An entry uploaded by this mount is stored with LastModified 0 (a PUT does
 * not return it): a listing showing its ETag and size adopts the listed
 * LastModified and keeps its attributes; any other difference is a new
 * version. */
/* A listing that read the bucket before this mount changed an entry must
 * not put the older version back (a rename over a file, racing a relisting). */
static void test_a_listing_older_than_a_local_change_leaves_it(void)
{
	meta *m = open_db("race.db", "");
	meta_object old_page[] = {obj("f", 10, "\"old\"")};
	meta_entry up = {.local = true, .size = 20, .has = META_HAS_MTIME, .mtime_ns = LM0};
	meta_listing *l;
	meta_entry e;

	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, old_page, 1, NULL, 0, NULL), 1);
	/* A relisting begins and reads the old version ... */
	CHECK_INT(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &l), 0);
	/* ... meanwhile this mount replaces the file and S3 confirms it ... */
	CHECK_INT(meta_upsert(m, "/f", &up), 0);
	CHECK_INT(meta_clear_local(m, "/f", "\"new\"", 20, 0), 0);
	/* ... then the listing's page (the old version) arrives and commits. */
	CHECK_INT(meta_listing_add_page(l, old_page, 1, NULL, 0), 0);
	CHECK_INT(meta_listing_commit(l), 1);
	CHECK_INT(meta_lookup(m, "/f", &e), 0);
	CHECK_STR(e.etag, "\"new\"");
	CHECK(e.size == 20);
	meta_entry_clear(&e);
	/* A listing begun after the change takes what S3 shows, as ever. */
	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, old_page, 1, NULL, 0, NULL), 1);
	CHECK_INT(meta_lookup(m, "/f", &e), 0);
	CHECK_STR(e.etag, "\"old\"");
	meta_entry_clear(&e);
	meta_close(m);
}

static void test_listing_adopts_last_modified_of_an_uploaded_entry(void)
{
	meta *m = open_db("adopt.db", "");
	char d0[] = "\"d0\"";
	meta_entry e;
	meta_entry up = {.local = true,
	                 .size = 3,
	                 .has = META_HAS_MODE | META_HAS_MTIME,
	                 .mode = 0100600,
	                 .mtime_ns = 1500000000000000000LL};
	meta_entry dir = {.is_dir = true,
	                  .dir_marker = true,
	                  .etag = d0,
	                  .head_etag = d0,
	                  .has = META_HAS_MODE,
	                  .mode = 040700};
	meta_object page[] = {
	        obj("d/", 0, "\"d0\""),
	        obj("u", 3, "\"u1\""),
	        obj("v", 4, "\"v1\""),
	        obj("w", 5, "\"w1\""),
	};
	struct changes ch = {0};

	for (const char *const *p = (const char *const[]){"/u", "/v", "/w", NULL}; *p; p++) {
		char etag[8];

		snprintf(etag, sizeof(etag), "\"%s1\"", *p + 1);
		CHECK_INT(meta_upsert(m, *p, &up), 0);
		CHECK_INT(meta_clear_local(m, *p, etag, *p[0] == 'v' ? 99 : 3, 0), 0);
	}
	CHECK_INT(meta_upsert(m, "/d", &dir), 0);
	CHECK_INT(meta_clear_local(m, "/w", "\"w0\"", 5, 0), 0); /* another ETag */
	page[1].last_modified_ns = LM0 + 5;
	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, page, 4, NULL, 0, &ch), 4);

	/* Same ETag and size: the uploaded version, attributes kept. */
	CHECK_INT(meta_lookup(m, "/u", &e), 0);
	CHECK(e.last_modified_ns == LM0 + 5);
	CHECK_STR(e.head_etag, "\"u1\"");
	CHECK(e.has == (META_HAS_MODE | META_HAS_MTIME) && e.mode == 0100600 &&
	      e.mtime_ns == 1500000000000000000LL);
	meta_entry_clear(&e);
	CHECK_INT(meta_lookup(m, "/d", &e), 0);
	CHECK(e.is_dir && e.dir_marker && e.last_modified_ns == LM0);
	CHECK(e.has == META_HAS_MODE && e.mode == 040700);
	meta_entry_clear(&e);
	CHECK_INT(change_of(&ch, "/u"), 0);
	CHECK_INT(change_of(&ch, "/d"), 0);
	/* Another size or ETag: a new version, as for any entry. */
	CHECK_INT(meta_lookup(m, "/v", &e), 0);
	CHECK(e.size == 4 && e.last_modified_ns == LM0 && e.has == 0 && !e.head_etag);
	meta_entry_clear(&e);
	CHECK_INT(meta_lookup(m, "/w", &e), 0);
	CHECK(e.last_modified_ns == LM0 && e.has == 0 && !e.head_etag);
	CHECK_STR(e.etag, "\"w1\"");
	meta_entry_clear(&e);
	CHECK_INT(change_of(&ch, "/v"), META_CHANGED);
	CHECK_INT(change_of(&ch, "/w"), META_CHANGED);
	CHECK_INT(ch.n, 2);

	/* Once adopted, a later LastModified is a new version again. */
	memset(&ch, 0, sizeof(ch));
	page[1].last_modified_ns = LM0 + 6;
	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, page, 4, NULL, 0, &ch), 4);
	CHECK_INT(change_of(&ch, "/u"), META_CHANGED);
	CHECK_INT(ch.n, 1);
	meta_close(m);
}

static void test_a_directory_hides_a_file_of_the_same_name(void)
{
	meta *m = open_db("conflict.db", "");
	meta_object file = obj("x", 5, "\"f\""), child = obj("x/y", 6, "\"c\"");
	meta_object both[] = {file, child};
	struct changes ch = {0};
	meta_listing *l;
	meta_entry e;
	int hidden0 = log_hidden;

	/* One page, sorted: "x" before "x/y". */
	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, both, 2, NULL, 0, NULL), 2);
	CHECK_INT(meta_lookup(m, "/x", &e), 0);
	CHECK(e.is_dir && e.etag == NULL && e.size == 0);
	meta_entry_clear(&e);
	CHECK(exists(m, "/x/y"));
	CHECK_INT(log_hidden, hidden0 + 1);

	/* Again, in two pages and in the other order: the same result, and
	 * the file is logged only once per mount. */
	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &l));
	MUST(meta_listing_add_page(l, &child, 1, NULL, 0));
	MUST(meta_listing_add_page(l, &file, 1, NULL, 0));
	CHECK_INT(meta_listing_commit(l), 2);
	CHECK_INT(meta_lookup(m, "/x", &e), 0);
	CHECK(e.is_dir);
	meta_entry_clear(&e);
	CHECK(exists(m, "/x/y"));
	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &l));
	MUST(meta_listing_add_page(l, &file, 1, NULL, 0));
	MUST(meta_listing_add_page(l, &child, 1, NULL, 0));
	CHECK_INT(meta_listing_commit(l), 2);
	CHECK_INT(meta_lookup(m, "/x", &e), 0);
	CHECK(e.is_dir);
	meta_entry_clear(&e);
	CHECK_INT(log_hidden, hidden0 + 1);

	/* One level deep the common prefix "x/" makes the same decision. */
	{
		const char *pre[] = {"x/"};

		CHECK_INT(list1(m, "/", 0, &file, 1, pre, 1, NULL), 2);
		CHECK_INT(meta_lookup(m, "/x", &e), 0);
		CHECK(e.is_dir);
		meta_entry_clear(&e);
		CHECK(exists(m, "/x/y"));
	}

	/* The directory's keys are gone: the file shows. */
	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, &file, 1, NULL, 0, &ch), 1);
	CHECK_INT(meta_lookup(m, "/x", &e), 0);
	CHECK(!e.is_dir && e.size == 5);
	CHECK_STR(e.etag, "\"f\"");
	meta_entry_clear(&e);
	CHECK(!exists(m, "/x/y"));
	CHECK_INT(change_of(&ch, "/x"), META_CHANGED);
	CHECK_INT(change_of(&ch, "/x/y"), META_VANISHED);

	/* And back: a file replaced by a directory. */
	ch.n = 0;
	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, &child, 1, NULL, 0, &ch), 1);
	CHECK_INT(meta_lookup(m, "/x", &e), 0);
	CHECK(e.is_dir);
	meta_entry_clear(&e);
	CHECK_INT(change_of(&ch, "/x"), META_CHANGED);
	meta_close(m);
}

/* ---------------------------------------------------------------- local changes */

static void test_local_changes_delete_and_rename(void)
{
	meta *m = open_db("local.db", "");
	meta_object o[] = {obj("d/a", 1, "\"1\""), obj("d/s/b", 2, "\"2\""), obj("f", 3, "\"3\"")};
	const char *d1[] = {"d/s/"};
	meta_entry dir = {.is_dir = true, .local = true}, e;
	struct names nm = {.stop_after = 1};
	int64_t t;

	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, o, 3, NULL, 0, NULL), 3);
	CHECK_INT(list1(m, "/d", 0, o, 1, d1, 1, NULL), 2);
	CHECK_INT(meta_delete(m, "/d"), -ENOTEMPTY);
	CHECK_INT(meta_delete(m, "/nope"), -ENOENT);
	CHECK_INT(meta_delete(m, "/"), -EINVAL);
	CHECK_INT(meta_upsert(m, "/f", &dir), -ENOTDIR);

	/* A whole subtree, with its listing times. */
	CHECK_INT(meta_rename(m, "/d", "/d/in", false), -EINVAL);
	CHECK_INT(meta_rename(m, "/d", "/e", true), 0);
	CHECK(!exists(m, "/d") && !exists(m, "/d/a") && !exists(m, "/d/s/b"));
	CHECK_STR(names_of(m, "/e"), "a s/");
	CHECK_STR(names_of(m, "/e/s"), "b");
	CHECK_INT(meta_lookup(m, "/e/s/b", &e), 0);
	CHECK(e.local && e.size == 2);
	CHECK_STR(e.etag, "\"2\"");
	meta_entry_clear(&e);
	MUST(meta_dir_listed_at(m, "/e", &t));
	CHECK(t > 0);

	/* POSIX rules for an existing target. */
	CHECK_INT(meta_upsert(m, "/g", &dir), 0);
	CHECK_INT(meta_rename(m, "/e", "/f", false), -ENOTDIR);
	CHECK_INT(meta_rename(m, "/f", "/e", false), -EISDIR);
	CHECK_INT(meta_rename(m, "/g", "/e", false), -ENOTEMPTY);
	CHECK_INT(meta_rename(m, "/e", "/g", false), 0);   /* onto an empty dir */
	CHECK_INT(meta_rename(m, "/g/a", "/f", false), 0); /* onto a file */
	CHECK_INT(meta_lookup(m, "/f", &e), 0);
	CHECK(e.size == 1);
	meta_entry_clear(&e);
	CHECK_INT(meta_rename(m, "/nope", "/x", false), -ENOENT);
	CHECK_INT(meta_rename(m, "/f", "/nodir/x", false), -ENOENT);
	CHECK_INT(meta_rename(m, "/f", "/f", false), 0);
	CHECK_STR(names_of(m, "/"), "f g/");

	/* Multibyte names: the subtree rewrite counts bytes. */
	CHECK_INT(meta_rename(m, "/g", "/\xc3\xa9t\xc3\xa9", false), 0);
	CHECK(exists(m, "/\xc3\xa9t\xc3\xa9/s/b"));
	CHECK_INT(meta_rename(m, "/\xc3\xa9t\xc3\xa9", "/h", false), 0);
	CHECK(exists(m, "/h/s/b"));

	CHECK_INT(meta_delete(m, "/h/s/b"), 0);
	CHECK_INT(meta_delete(m, "/h/s"), 0);
	CHECK_STR(names_of(m, "/h"), "");

	/* readdir stops when asked, and resumes after a name. */
	CHECK_INT(meta_readdir(m, "/", NULL, collect_names, &nm), 7);
	CHECK_STR(nm.buf, "f");
	memset(&nm, 0, sizeof(nm));
	CHECK_INT(meta_readdir(m, "/", "f", collect_names, &nm), 0);
	CHECK_STR(nm.buf, "h/");
	meta_close(m);
}

/* ---------------------------------------------------------------- tombstones */

/* A number from the writer connection, by a caller that holds it. */
static int64_t writer_int(meta *m, const char *sql)
{
	sqlite3_stmt *st = NULL;
	int64_t n = -1;

	if (sqlite3_prepare_v2(m->writer.db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return n;
}

/* A count from the writer connection (it alone sees the TEMP tombs table). */
static int64_t count_sql(meta *m, const char *sql)
{
	int64_t n;

	pthread_mutex_lock(&m->wlock);
	n = writer_int(m, sql);
	pthread_mutex_unlock(&m->wlock);
	return n;
}

#define TOMBS(m) count_sql(m, "SELECT count(*) FROM tombs")

static void test_a_listing_older_than_a_removal_does_not_bring_the_name_back(void)
{
	meta *m = open_db("tomb.db", "");
	meta_object o[] = {obj("f", 1, "\"f\""), obj("g", 2, "\"g\""), obj("k", 3, "\"k\"")};
	meta_listing *old, *young;
	meta_entry e;

	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, o, 3, NULL, 0, NULL), 3);
	/* Nothing is kept while no listing runs. */
	CHECK_INT(meta_delete(m, "/k"), 0);
	CHECK_INT(TOMBS(m), 0);

	/* A listing begins and reads f and g ... */
	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &old));
	/* ... meanwhile this mount deletes f and renames g away ... */
	CHECK_INT(meta_delete(m, "/f"), 0);
	CHECK_INT(meta_rename(m, "/g", "/h", false), 0);
	CHECK_INT(TOMBS(m), 2);
	/* ... then its page arrives: neither name comes back. */
	CHECK_INT(meta_listing_add_page(old, o, 2, NULL, 0), 0);
	CHECK(!exists(m, "/f") && !exists(m, "/g"));
	CHECK_STR(names_of(m, "/"), "h");
	/* Nor does commit sweep h, which the page could not show: the
	 * rename gave it a generation newer than the listing's. */
	CHECK_INT(meta_listing_commit(old), 2);
	CHECK(!exists(m, "/f") && !exists(m, "/g"));
	CHECK_STR(names_of(m, "/"), "h");
	CHECK_INT(TOMBS(m), 0);

	/* A listing begun after the removal shows the object exists again
	 * (another client made it): it comes back, even while an older
	 * listing still runs. */
	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &old));
	CHECK_INT(meta_delete(m, "/h"), 0);
	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &young));
	CHECK_INT(meta_listing_add_page(young, o, 3, NULL, 0), 0);
	CHECK(exists(m, "/f"));
	CHECK_INT(meta_listing_add_page(old, o, 3, NULL, 0), 0);
	CHECK(exists(m, "/f") && exists(m, "/g") && exists(m, "/k"));
	CHECK(!exists(m, "/h")); /* old's key would be "h": tombstoned */
	CHECK_INT(TOMBS(m), 1);
	/* The oldest listing ends: tombstones older than the next one go. */
	CHECK_INT(meta_listing_commit(old), 3);
	CHECK_INT(TOMBS(m), 0);
	CHECK_INT(meta_listing_commit(young), 3);
	CHECK_INT(meta_lookup(m, "/f", &e), 0);
	CHECK_STR(e.etag, "\"f\"");
	meta_entry_clear(&e);

	/* An aborted listing prunes too; and a reopened index has none. */
	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &old));
	CHECK_INT(meta_delete(m, "/f"), 0);
	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &young));
	CHECK_INT(meta_delete(m, "/k"), 0);
	CHECK_INT(TOMBS(m), 2);
	meta_listing_abort(old);
	CHECK_INT(TOMBS(m), 1); /* k's: newer than young */
	/* Tombstones belong to the handle: another one starts with none. */
	meta *m2 = open_db("tomb.db", "");
	CHECK_INT(TOMBS(m2), 0);
	CHECK(!exists(m2, "/f") && !exists(m2, "/k"));
	meta_close(m2);
	meta_listing_abort(young);
	CHECK_INT(TOMBS(m), 0);
	meta_close(m);
}

static void test_an_older_listing_does_not_bring_back_a_removed_directory(void)
{
	meta *m = open_db("tombdir.db", "");
	meta_object o[] = {obj("d/a", 1, "\"1\""), obj("d/s/b", 2, "\"2\""),
	                   obj("d/s/new", 3, "\"3\""), obj("e/x", 4, "\"4\""),
	                   obj("p/a", 5, "\"5\"")};
	meta_object first[] = {o[0], o[1], o[3]};
	meta_object late[] = {obj("p/b", 6, "\"6\"")};
	const char *sub[] = {"d/s/"};
	meta_listing *rec, *flat;

	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, first, 3, NULL, 0, NULL), 3);
	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &rec));
	MUST(meta_listing_begin(m, "/d", 0, NULL, NULL, &flat));
	/* A directory renamed away (its subtree with it) and one deleted. */
	CHECK_INT(meta_rename(m, "/d", "/n", true), 0);
	CHECK_INT(meta_delete(m, "/e/x"), 0);
	CHECK_INT(meta_delete(m, "/e"), 0);
	/* The recursive page shows the old tree, and d/s/new, a key the
	 * index never had: nothing below the removed names comes back. */
	CHECK_INT(meta_listing_add_page(rec, o, 4, NULL, 0), 0);
	CHECK(!exists(m, "/d") && !exists(m, "/d/a") && !exists(m, "/d/s"));
	CHECK(!exists(m, "/d/s/new") && !exists(m, "/e") && !exists(m, "/e/x"));
	CHECK_STR(names_of(m, "/n/s"), "b");
	CHECK_INT(meta_listing_commit(rec), 4);
	CHECK_STR(names_of(m, "/"), "n/");
	/* The one level listing of the old directory: no rows, and the
	 * directory is not remembered as listed. */
	CHECK_INT(meta_listing_add_page(flat, o, 1, sub, 1), 0);
	CHECK_INT(meta_listing_commit(flat), 2);
	CHECK(!exists(m, "/d") && !exists(m, "/d/a") && !exists(m, "/d/s"));
	CHECK_INT(count_sql(m, "SELECT count(*) FROM dirs WHERE path = '/d'"), 0);
	CHECK_INT(TOMBS(m), 0);

	/* A directory a listing stamped on an earlier page, renamed away
	 * before the next page: the listing's memory of it is dropped. */
	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &rec));
	CHECK_INT(meta_listing_add_page(rec, o + 4, 1, NULL, 0), 0);
	CHECK(exists(m, "/p/a"));
	CHECK_INT(meta_rename(m, "/p", "/q", true), 0);
	CHECK_INT(meta_listing_add_page(rec, late, 1, NULL, 0), 0);
	CHECK(!exists(m, "/p") && !exists(m, "/p/b"));
	CHECK_STR(names_of(m, "/q"), "a");
	CHECK_INT(meta_listing_commit(rec), 2);
	CHECK(!exists(m, "/p"));
	CHECK_INT(TOMBS(m), 0);
	meta_close(m);
}

/* ---------------------------------------------------------------- persistence */

static int count_journal(void *ctx, const meta_journal_entry *j)
{
	int *n = ctx;

	(*n)++;
	if (j->id == 2) {
		CHECK_STR(j->path, "/big.bin");
		CHECK_STR(j->upload_id, "UP-1");
		CHECK_STR(j->parts, "1:\"p1\"");
		CHECK_INT(j->state, 3);
		CHECK_INT(j->size, 1 << 30);
		CHECK_INT(j->created_ns, 42);
	}
	return 0;
}

/* What S3 says of an object, and local changes nothing promised to keep
 * yet, are committed without an fsync (synchronous NORMAL for that
 * transaction alone); the journal and the rest stay FULL. */
static void test_attributes_commit_lazily_and_the_rest_durably(void)
{
	meta_object o[] = {obj("a", 1, "\"a\""), obj("l", 6, "\"l\"")};
	meta_head h = {.has = META_HAS_MODE | META_HAS_UID, .mode = 0100640, .uid = 7};
	meta_journal_entry j = {.path = "/new", .staged_file = "/cache/new", .size = 1};
	meta_entry local = {.local = true, .size = 1, .has = META_HAS_MODE, .mode = 0100600};
	meta *m = open_db("lazy.db", "");
	int64_t id;
	meta_entry e;

	CHECK_INT(count_sql(m, "PRAGMA synchronous"), 2); /* FULL */
	/* Inside a lazy transaction the level is NORMAL (1). */
	CHECK_INT(meta_write_begin_lazy(m), 0);
	CHECK_INT(writer_int(m, "PRAGMA synchronous"), 1);
	CHECK_INT(meta_write_commit(m), 0);
	CHECK_INT(meta_write_begin(m), 0);
	CHECK_INT(writer_int(m, "PRAGMA synchronous"), 2);
	meta_write_rollback(m);
	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, o, 2, NULL, 0, NULL), 2);
	CHECK_INT(count_sql(m, "PRAGMA synchronous"), 2);
	CHECK_INT(meta_set_head(m, "/a", "\"a\"", &h), 0);
	CHECK_INT(count_sql(m, "PRAGMA synchronous"), 2);          /* put back */
	CHECK_INT(meta_set_head(m, "/a", "\"old\"", &h), -ESTALE); /* rolled back */
	CHECK_INT(count_sql(m, "PRAGMA synchronous"), 2);
	CHECK_INT(meta_set_symlink(m, "/l", "\"l\"", "target"), 0);
	CHECK_INT(count_sql(m, "PRAGMA synchronous"), 2);
	CHECK_INT(meta_upsert_lazy(m, "/new", &local), 0);
	CHECK_INT(count_sql(m, "PRAGMA synchronous"), 2);
	CHECK_INT(meta_upsert_lazy(m, "/a/x", &local), -ENOTDIR); /* rolled back */
	CHECK_INT(count_sql(m, "PRAGMA synchronous"), 2);
	CHECK_INT(meta_journal_add(m, &j, &id), 0);
	/* A lazy commit is a commit: readers see it, and so does the next
	 * open (a crash of the process loses nothing, only a power failure
	 * may). */
	CHECK_INT(meta_lookup(m, "/a", &e), 0);
	CHECK_INT(e.uid, 7);
	meta_entry_clear(&e);
	meta_close(m);
	m = open_db("lazy.db", "");
	CHECK_INT(meta_lookup(m, "/a", &e), 0);
	CHECK_INT(e.mode, 0100640);
	meta_entry_clear(&e);
	CHECK_INT(meta_lookup(m, "/l", &e), 0);
	CHECK(e.symlink && strcmp(e.symlink, "target") == 0);
	meta_entry_clear(&e);
	CHECK_INT(meta_lookup(m, "/new", &e), 0);
	CHECK(e.local && e.size == 1);
	meta_entry_clear(&e);
	meta_close(m);
}

static int count_commit(void *arg)
{
	(*(int *)arg)++;
	return 0;
}

/* An upload's result (the entry no longer local, the journal row gone) is
 * one transaction: one durable commit, and both or neither. */
static void test_an_upload_is_recorded_in_one_commit(void)
{
	meta_journal_entry j = {.path = "/f", .staged_file = "/cache/f", .size = 3};
	meta_entry local = {.local = true, .size = 3, .has = META_HAS_MODE, .mode = 0100600};
	meta *m = open_db("done.db", "");
	int64_t id, id2;
	int commits = 0, n = 0;
	bool found = true;
	meta_entry e;

	CHECK_INT(meta_upsert(m, "/f", &local), 0);
	CHECK_INT(meta_journal_add(m, &j, &id), 0);
	j.path = "/gone";
	CHECK_INT(meta_journal_add(m, &j, &id2), 0);
	pthread_mutex_lock(&m->wlock);
	sqlite3_commit_hook(m->writer.db, count_commit, &commits);
	pthread_mutex_unlock(&m->wlock);
	/* A row that is not there: nothing changes. */
	CHECK_INT(meta_upload_done(m, "/f", "\"f1\"", 3, 999, &found), -ENOENT);
	CHECK_INT(commits, 0);
	CHECK_INT(meta_lookup(m, "/f", &e), 0);
	CHECK(e.local && !e.etag);
	meta_entry_clear(&e);
	CHECK_INT(meta_upload_done(m, "/f", "\"f1\"", 3, id, &found), 0);
	CHECK_INT(commits, 1);
	CHECK(found);
	CHECK_INT(meta_lookup(m, "/f", &e), 0);
	CHECK(!e.local && e.size == 3 && e.mode == 0100600);
	CHECK_STR(e.etag, "\"f1\"");
	meta_entry_clear(&e);
	/* The file was removed while it uploaded: its row goes all the same. */
	CHECK_INT(meta_upload_done(m, "/gone", "\"g\"", 3, id2, &found), 0);
	CHECK(!found && !exists(m, "/gone"));
	CHECK_INT(commits, 2);
	pthread_mutex_lock(&m->wlock);
	sqlite3_commit_hook(m->writer.db, NULL, NULL);
	pthread_mutex_unlock(&m->wlock);
	CHECK_INT(meta_journal_list(m, count_journal, &n), 0);
	CHECK_INT(n, 0);
	meta_close(m);
}

/* What fs/probe.c relies on: a page applied to a listing that is then
 * abandoned stays (the entry, and the directories above it), nothing is
 * swept and the directory is not marked listed. */
static void test_an_abandoned_listing_keeps_its_pages_and_sweeps_nothing(void)
{
	meta_object before[] = {obj("a", 1, "\"a\""), obj("b", 2, "\"b\"")};
	meta_object probe[] = {obj("d/e/f", 3, "\"f\"")};
	meta *m = open_db("probe.db", "");
	meta_listing *l;
	int64_t at = -1;

	CHECK_INT(list1(m, "/", 0, before, 2, NULL, 0, NULL), 2);
	CHECK_INT(writer_int(m, "DELETE FROM dirs"), -1); /* no row: not listed */
	CHECK_INT(meta_listing_begin(m, "/", 0, NULL, NULL, &l), 0);
	CHECK_INT(meta_listing_add_page(l, probe, 1, NULL, 0), 0);
	meta_listing_abort(l);
	CHECK(exists(m, "/a") && exists(m, "/b"));
	CHECK(exists(m, "/d") && exists(m, "/d/e") && exists(m, "/d/e/f"));
	MUST(meta_dir_listed_at(m, "/", &at));
	CHECK_INT(at, 0);
	MUST(meta_dir_listed_at(m, "/d", &at));
	CHECK_INT(at, 0);
	meta_close(m);
}

static void test_index_survives_close_and_reopen(void)
{
	meta_object o[] = {obj("a", 1, "\"a\""), obj("b/c", 2, "\"c\"")};
	meta_head h = {.has = META_HAS_GID, .gid = 77};
	meta_journal_entry j = {.path = "/small", .staged_file = "/cache/1", .size = 10};
	meta_journal_entry big = {.path = "/big.bin", .size = 1 << 30, .created_ns = 42};
	struct stat st;
	int64_t id1, id2, t1, t2;
	meta_entry e;
	meta *m = open_db("persist.db", "pre/");
	int n = 0;

	(void)o;
	{
		meta_object po[] = {obj("pre/a", 1, "\"a\""), obj("pre/b/c", 2, "\"c\"")};

		CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, po, 2, NULL, 0, NULL), 2);
	}
	CHECK_INT(meta_set_head(m, "/a", "\"a\"", &h), 0);
	CHECK_INT(meta_journal_add(m, &j, &id1), 0);
	CHECK_INT(meta_journal_add(m, &big, &id2), 0);
	CHECK_INT(id2, id1 + 1);
	big.id = id2;
	big.state = 3;
	big.upload_id = "UP-1";
	big.parts = "1:\"p1\"";
	CHECK_INT(meta_journal_update(m, &big), 0);
	big.id = 999;
	CHECK_INT(meta_journal_update(m, &big), -ENOENT);
	MUST(meta_dir_listed_at(m, "/b", &t1));
	CHECK_INT(stat(db_path("persist.db"), &st), 0);
	CHECK_INT(st.st_mode & 0777, 0600);
	CHECK_INT(stat(db_path("persist.db-wal"), &st), 0);
	CHECK_INT(st.st_mode & 0777, 0600);
	meta_close(m);

	CHECK_INT(meta_open(db_path("persist.db"), "other/", &test_opts, &m), -EINVAL);
	log_errors--; /* that refusal is logged as an error, rightly */
	CHECK_INT(meta_open(db_path("persist.db"), "/bad", &test_opts, &m), -EINVAL);
	m = open_db("persist.db", "pre/");
	CHECK_INT(meta_lookup(m, "/a", &e), 0);
	CHECK(e.has == META_HAS_GID && e.gid == 77);
	CHECK_STR(e.head_etag, "\"a\"");
	meta_entry_clear(&e);
	CHECK(exists(m, "/b/c"));
	MUST(meta_dir_listed_at(m, "/b", &t2));
	CHECK_INT(t2, t1);
	CHECK_INT(meta_journal_list(m, count_journal, &n), 0);
	CHECK_INT(n, 2);
	CHECK_INT(meta_journal_remove(m, id1), 0);
	CHECK_INT(meta_journal_remove(m, id1), -ENOENT);
	n = 0;
	CHECK_INT(meta_journal_list(m, count_journal, &n), 0);
	CHECK_INT(n, 1);
	/* Generations continue where they were: a relisting after the
	 * reopen still finds what vanished. */
	{
		meta_object po[] = {obj("pre/a", 1, "\"a\"")};

		CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, po, 1, NULL, 0, NULL), 1);
	}
	CHECK(!exists(m, "/b/c") && !exists(m, "/b"));
	CHECK_INT(meta_count_entries(m), 1);
	meta_close(m);
}

/* What `sqlite3 INDEX 'SELECT * FROM CloudFiles'` shows. */
static void test_cloudfiles_view_answers_like_the_dynamodb_table(void)
{
	meta *m = open_db("cloud.db", "");
	meta_object o[] = {obj("docs/", 0, "\"d\""), obj("docs/a.txt", 10, "\"a\"")};
	meta_head fh = {.has = META_HAS_MODE, .mode = 0100644};
	meta_head dh = {.has = META_HAS_MODE, .mode = 040755};
	sqlite3 *db;
	sqlite3_stmt *st;
	int rows = 0;

	o[1].owner_id = "79a59df900b949e55d96a1e698fbaced";
	o[1].owner_name = "alice";
	CHECK_INT(list1(m, "/", META_LIST_RECURSIVE, o, 2, NULL, 0, NULL), 2);
	CHECK_INT(meta_set_head(m, "/docs/a.txt", "\"a\"", &fh), 0);
	CHECK_INT(meta_set_head(m, "/docs", "\"d\"", &dh), 0);
	meta_close(m);

	CHECK_INT(sqlite3_open_v2(db_path("cloud.db"), &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	CHECK_INT(
	        sqlite3_prepare_v2(db,
	                           "SELECT userId, fileName, path, lastUpdated, owner, permissions"
	                           " FROM CloudFiles ORDER BY path",
	                           -1, &st, NULL),
	        SQLITE_OK);
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *col[6];

		for (int i = 0; i < 6; i++)
			col[i] = (const char *)sqlite3_column_text(st, i);
		if (rows == 0) {
			CHECK(col[0] == NULL);
			CHECK_STR(col[1], "docs");
			CHECK_STR(col[2], "/docs");
			CHECK_STR(col[5], "drwxr-xr-x");
		} else {
			CHECK_STR(col[0], "79a59df900b949e55d96a1e698fbaced");
			CHECK_STR(col[1], "a.txt");
			CHECK_STR(col[2], "/docs/a.txt");
			CHECK_STR(col[3], "2023-11-14T22:13:20.123Z");
			CHECK_STR(col[4], "alice");
			CHECK_STR(col[5], "-rw-r--r--");
		}
		rows++;
	}
	CHECK_INT(rows, 2);
	sqlite3_finalize(st);
	CHECK_INT(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	CHECK_INT(sqlite3_column_int(st, 0), META_SCHEMA_VERSION);
	sqlite3_finalize(st);
	sqlite3_close(db);
}

/* ---------------------------------------------------------------- scale */

#define BIG_DIRS  1000
#define BIG_FILES 100

/* Lists BIG_DIRS x BIG_FILES keys recursively, 1000 keys a page. */
static void list_big(meta *m, const char *etag)
{
	static char keys[1000][32];
	meta_object page[1000];
	meta_listing *l;
	size_t n = 0;

	MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &l));
	for (int d = 0; d < BIG_DIRS; d++) {
		for (int f = 0; f < BIG_FILES; f++) {
			snprintf(keys[n], sizeof(keys[n]), "dir%04d/file%05d", d, f);
			page[n] = obj(keys[n], d * 1000 + f, etag);
			if (++n == 1000) {
				MUST(meta_listing_add_page(l, page, n, NULL, 0));
				n = 0;
			}
		}
	}
	if (n)
		MUST(meta_listing_add_page(l, page, n, NULL, 0));
	MUST(meta_listing_commit(l));
}

static int count_entry(void *ctx, const meta_entry *e)
{
	(*(int *)ctx)++;
	return 0;
}

static void test_100k_entries_list_and_read_fast(void)
{
	meta *m = open_db("big.db", "");
	double t0, t_list, t_relist, t_readdir, t_lookup;
	struct rusage ru;
	char path[64];
	meta_entry e;
	int n;

	t0 = now_s();
	list_big(m, "\"v1\"");
	t_list = now_s() - t0;
	CHECK_INT(meta_count_entries(m), BIG_DIRS * (BIG_FILES + 1));

	t0 = now_s();
	list_big(m, "\"v1\"");
	t_relist = now_s() - t0;
	CHECK_INT(meta_count_entries(m), BIG_DIRS * (BIG_FILES + 1));

	t0 = now_s();
	for (int i = 0; i < 1000; i++) {
		n = 0;
		snprintf(path, sizeof(path), "/dir%04d", i);
		CHECK_INT(meta_readdir(m, path, NULL, count_entry, &n), 0);
		CHECK_INT(n, BIG_FILES);
	}
	t_readdir = (now_s() - t0) / 1000;

	t0 = now_s();
	for (int i = 0; i < 100000; i++) {
		snprintf(path, sizeof(path), "/dir%04d/file%05d", (i * 7919) % BIG_DIRS,
		         i % BIG_FILES);
		CHECK_INT(meta_lookup(m, path, &e), 0);
		meta_entry_clear(&e);
	}
	t_lookup = (now_s() - t0) / 100000;
	getrusage(RUSAGE_SELF, &ru);
	printf("100k entries: list %.2f s, unchanged relist %.2f s, readdir(100) %.1f us, "
	       "lookup %.1f us, max RSS %ld MiB%s\n",
	       t_list, t_relist, t_readdir * 1e6, t_lookup * 1e6, ru.ru_maxrss / 1024,
	       SANITIZED ? " (sanitized build)" : "");
	CHECK(t_list < (SANITIZED ? 60 : 10));
	CHECK(t_readdir < (SANITIZED ? 0.01 : 0.002));
	if (!SANITIZED)
		CHECK(ru.ru_maxrss < 64 * 1024);
	meta_close(m);
}

/* ---------------------------------------------------------------- threads */

struct reader_arg {
	meta *m;
	atomic_bool *stop;
	unsigned seed;
	long ops, errors;
};

static void *reader_main(void *p)
{
	struct reader_arg *a = p;

	while (!atomic_load(a->stop)) {
		char path[64];
		meta_entry e;
		int r, n = 0;

		snprintf(path, sizeof(path), "/dir%04d/file%05d", rand_r(&a->seed) % 200,
		         rand_r(&a->seed) % BIG_FILES);
		r = meta_lookup(a->m, path, &e);
		meta_entry_clear(&e);
		if (r != 0 && r != -ENOENT)
			a->errors++;
		snprintf(path, sizeof(path), "/dir%04d", rand_r(&a->seed) % 200);
		if (meta_readdir(a->m, path, NULL, count_entry, &n) != 0)
			a->errors++;
		if (n != 0 && n != BIG_FILES && n != BIG_FILES - 1)
			a->errors++;
		a->ops += 2;
	}
	return NULL;
}

static void test_lookups_from_8_threads_during_listings(void)
{
	meta *m = open_db("threads.db", "");
	struct reader_arg args[8];
	pthread_t th[8];
	atomic_bool stop = false;
	long ops = 0, errors = 0;

	for (int i = 0; i < 8; i++) {
		args[i] = (struct reader_arg){.m = m, .stop = &stop, .seed = i + 1};
		CHECK_INT(pthread_create(&th[i], NULL, reader_main, &args[i]), 0);
	}
	for (int round = 0; round < 6; round++) {
		static char keys[BIG_FILES][32];
		meta_object page[BIG_FILES];
		meta_listing *l;
		char etag[16];

		/* 200 directories of 100 files, every other round one file
		 * fewer per directory and a new ETag for all. */
		snprintf(etag, sizeof(etag), "\"r%d\"", round);
		MUST(meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &l));
		for (int d = 0; d < 200; d++) {
			int n = 0;

			for (int f = 0; f < BIG_FILES; f++) {
				if ((round & 1) && f == 50)
					continue;
				snprintf(keys[n], sizeof(keys[n]), "dir%04d/file%05d", d, f);
				page[n] = obj(keys[n], f, etag);
				n++;
			}
			MUST(meta_listing_add_page(l, page, n, NULL, 0));
		}
		MUST(meta_listing_commit(l));
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		ops += args[i].ops;
		errors += args[i].errors;
	}
	printf("concurrent: %ld reads by 8 threads during 6 listings, %ld errors\n", ops, errors);
	CHECK(ops > 0);
	CHECK_INT(errors, 0);
	/* The last round (5) left one file out of each directory. */
	CHECK_INT(meta_count_entries(m), 200 * (BIG_FILES - 1) + 200);
	meta_close(m);
}

/* ---------------------------------------------------------------- crashes */

/* The child: journal rows and listing pages as fast as it can, announcing
 * each journal row on the pipe once meta_journal_add() has returned. */
static void crash_child(const char *path, int fd, int round)
{
	meta_options o = {0};
	meta *m;

	if (meta_open(path, "", &o, &m) != 0)
		_exit(2);
	for (int i = 0;; i++) {
		char jp[64], keys[50][32];
		meta_journal_entry j = {.path = jp, .staged_file = "/staged", .size = i};
		meta_object page[50];
		meta_listing *l;
		int64_t id;

		snprintf(jp, sizeof(jp), "/r%d/j%d", round, i);
		if (meta_journal_add(m, &j, &id) != 0)
			_exit(3);
		if (write(fd, &id, sizeof(id)) != sizeof(id))
			_exit(4);
		if (meta_listing_begin(m, "/", META_LIST_RECURSIVE, NULL, NULL, &l) != 0)
			_exit(5);
		for (int k = 0; k < 50; k++) {
			snprintf(keys[k], sizeof(keys[k]), "d%d/f%d", k % 5, (i + k) % 97);
			page[k] = obj(keys[k], k, "\"x\"");
		}
		if (meta_listing_add_page(l, page, 50, NULL, 0) != 0)
			_exit(6);
		if (meta_listing_commit(l) < 0)
			_exit(7);
	}
}

struct id_set {
	int64_t ids[100000];
	int n, found;
};

static int mark_ids(void *ctx, const meta_journal_entry *j)
{
	struct id_set *s = ctx;

	for (int i = 0; i < s->n; i++)
		if (s->ids[i] == j->id)
			s->found++;
	return 0;
}

static void test_kill_9_loses_no_committed_journal_row(void)
{
	static struct id_set acked;
	const char *path = db_path("crash.db");

	for (int round = 0; round < 3; round++) {
		int fds[2], status;
		double t0;
		pid_t pid;
		ssize_t r;
		int64_t id;
		sqlite3 *db;
		sqlite3_stmt *st;
		meta *m;

		acked.n = acked.found = 0;
		CHECK_INT(pipe(fds), 0);
		pid = fork();
		if (pid == 0) {
			close(fds[0]);
			crash_child(path, fds[1], round);
		}
		close(fds[1]);
		/* Let it run a while, at a different length each round. */
		t0 = now_s();
		while (now_s() - t0 < 0.3 + 0.2 * round &&
		       (r = read(fds[0], &id, sizeof(id))) == sizeof(id))
			if (acked.n < 100000)
				acked.ids[acked.n++] = id;
		kill(pid, SIGKILL);
		while ((r = read(fds[0], &id, sizeof(id))) == sizeof(id))
			if (acked.n < 100000)
				acked.ids[acked.n++] = id;
		close(fds[0]);
		waitpid(pid, &status, 0);
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
		CHECK(acked.n > 0);

		/* A plain connection first: what recovery finds on disk. */
		CHECK_INT(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
		CHECK_INT(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL),
		          SQLITE_OK);
		CHECK_INT(sqlite3_step(st), SQLITE_ROW);
		CHECK_STR((const char *)sqlite3_column_text(st, 0), "ok");
		sqlite3_finalize(st);
		sqlite3_close(db);

		m = open_db("crash.db", "");
		CHECK_INT(meta_journal_list(m, mark_ids, &acked), 0);
		printf("kill -9 round %d: %d journal rows acknowledged, %d found\n", round, acked.n,
		       acked.found);
		CHECK_INT(acked.found, acked.n);
		meta_close(m);
	}
}

/* ---------------------------------------------------------------- main */

static void remove_tmpdir(void)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
}

int main(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	chmod(tmpdir, 0700);
	setvbuf(stdout, NULL, _IOLBF, 0);

	test_key_mapping_accepts_names_and_refuses_the_rest();
	test_key_mapping_random_bytes_round_trip_or_are_refused();
	test_recursive_listing_builds_the_tree_with_implicit_dirs();
	test_one_level_listings_use_prefixes_and_own_marker();
	test_relisting_keeps_head_data_of_unchanged_entries_only();
	test_listing_adopts_last_modified_of_an_uploaded_entry();
	test_a_listing_older_than_a_local_change_leaves_it();
	test_a_directory_hides_a_file_of_the_same_name();
	test_local_changes_delete_and_rename();
	test_a_listing_older_than_a_removal_does_not_bring_the_name_back();
	test_an_older_listing_does_not_bring_back_a_removed_directory();
	test_index_survives_close_and_reopen();
	test_attributes_commit_lazily_and_the_rest_durably();
	test_an_upload_is_recorded_in_one_commit();
	test_an_abandoned_listing_keeps_its_pages_and_sweeps_nothing();
	test_cloudfiles_view_answers_like_the_dynamodb_table();
	test_100k_entries_list_and_read_fast();
	test_lookups_from_8_threads_during_listings();
	test_kill_9_loses_no_committed_journal_row();

	CHECK_INT(log_errors, 0);
	remove_tmpdir();
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("all meta tests passed\n");
	return 0;
}
