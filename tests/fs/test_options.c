/*
 * test_options.c - the command line (fs/options.c) and the logger (fs/log.c):
 * defaults, every option into its field, s3fs-style fstab lines, the
 * BUCKET[:/PREFIX] forms, one-line errors for bad values, --help listing
 * every option, the mount-point checks, log redaction and reopening.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"

#include "../check.h"

static char tmpdir[] = "/tmp/bucketfs-test-options-XXXXXX";
static char mnt[4096]; /* an empty directory */

/* The whole of a file, NUL-terminated (static buffer). */
static const char *slurp(const char *path)
{
	static char buf[1 << 16];
	ssize_t n = -1;
	int fd = open(path, O_RDONLY);

	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
	}
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

/* Runs fs_options_parse() on `tail` (NULL-terminated; argv[0] is added),
 * with stdout and stderr captured into *out and *err (malloc'd). */
static int run_parse(char **tail, struct fs_config *cfg, struct fuse_args *fa, char **out,
                     char **err)
{
	char *argv[64], path_out[4200], path_err[4200];
	int argc = 0, saved_out, saved_err, fd_out, fd_err, r;

	argv[argc++] = (char *)"bucketfs";
	while (argc < 63 && (argv[argc] = *tail++))
		argc++;
	argv[argc] = NULL;

	snprintf(path_out, sizeof(path_out), "%s/stdout", tmpdir);
	snprintf(path_err, sizeof(path_err), "%s/stderr", tmpdir);
	fflush(stdout);
	fflush(stderr);
	saved_out = dup(1);
	saved_err = dup(2);
	fd_out = open(path_out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	fd_err = open(path_err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	dup2(fd_out, 1);
	dup2(fd_err, 2);
	r = fs_options_parse(argc, argv, cfg, fa);
	fflush(stdout);
	fflush(stderr);
	dup2(saved_out, 1);
	dup2(saved_err, 2);
	close(saved_out);
	close(saved_err);
	close(fd_out);
	close(fd_err);
	*out = strdup(slurp(path_out));
	*err = strdup(slurp(path_err));
	return r;
}

/* The variable arguments up to NULL, into tail[]. */
static void collect(char **tail, size_t n, const char *first, va_list ap)
{
	size_t i = 0;

	tail[i++] = (char *)first;
	while (first && i < n - 1 && (tail[i] = va_arg(ap, char *)))
		i++;
	tail[i] = NULL;
}

/* Parses and expects success with nothing on stderr. */
__attribute__((sentinel)) static int parse_ok(struct fs_config *cfg, struct fuse_args *fa,
                                              const char *first, ...)
{
	char *tail[64], *out, *err;
	va_list ap;
	int r;

	va_start(ap, first);
	collect(tail, 64, first, ap);
	va_end(ap);
	r = run_parse(tail, cfg, fa, &out, &err);
	if (r != 0 || err[0]) {
		fprintf(stderr, "parse of '%s ...' returned %d, stderr: %s\n", first, r, err);
		failures++;
	}
	free(out);
	free(err);
	return r;
}

/* Parses and expects failure; returns what was printed on stderr. */
__attribute__((sentinel)) static char *parse_err(const char *first, ...)
{
	struct fs_config cfg;
	struct fuse_args fa;
	char *tail[64], *out, *err;
	va_list ap;
	int r;

	va_start(ap, first);
	collect(tail, 64, first, ap);
	va_end(ap);
	r = run_parse(tail, &cfg, &fa, &out, &err);
	if (r != -1) {
		fprintf(stderr, "parse of '%s ...' returned %d, not -1\n", first, r);
		failures++;
	}
	/* On failure nothing is left to free: both outputs are zeroed. */
	CHECK(cfg.bucket == NULL && cfg.cache_dir == NULL);
	CHECK(fa.argv == NULL && fa.argc == 0);
	free(out);
	return err;
}

/* Parses and expects failure with exactly `want` (one line) on stderr. */
#define CHECK_ERROR(want, ...)                                                                     \
	do {                                                                                       \
		char *err_ = parse_err(__VA_ARGS__, (char *)NULL);                                 \
		CHECK_STR(err_, want "\n");                                                        \
		free(err_);                                                                        \
	} while (0)

/* The -o options handed on to FUSE, joined with ',' (static buffer). */
static const char *fuse_opts(const struct fuse_args *fa)
{
	static char buf[4096];

	buf[0] = '\0';
	for (int i = 1; i < fa->argc; i++) {
		if (!strcmp(fa->argv[i], "-o"))
			continue;
		if (buf[0])
			strcat(buf, ",");
		strcat(buf, strncmp(fa->argv[i], "-o", 2) ? fa->argv[i] : fa->argv[i] + 2);
	}
	return buf;
}

/* Whether `opt` is one of the comma-separated items of the FUSE options. */
static int has_fuse_opt(const struct fuse_args *fa, const char *opt)
{
	const char *s = fuse_opts(fa);
	size_t n = strlen(opt);

	for (const char *p = s; (p = strstr(p, opt)); p++) {
		if ((p == s || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
			return 1;
	}
	return 0;
}

static void release(struct fs_config *cfg, struct fuse_args *fa)
{
	fs_config_free(cfg);
	fuse_opt_free_args(fa);
}

/* ---------------------------------------------------------------- tests */

static void test_defaults(void)
{
	struct fs_config cfg;
	struct fuse_args fa;
	char want[4200];

	setenv("XDG_CACHE_HOME", "/xdg/cache", 1);
	if (parse_ok(&cfg, &fa, "mybucket", mnt, NULL))
		return;
	CHECK_STR(cfg.bucket, "mybucket");
	CHECK_STR(cfg.prefix, "");
	CHECK_STR(cfg.mountpoint, mnt);
	CHECK(cfg.url == NULL && cfg.region == NULL && !cfg.path_style);
	CHECK(cfg.ca_bundle == NULL && cfg.passwd_file == NULL && cfg.profile == NULL);
	CHECK(cfg.connect_timeout == 10 && cfg.readwrite_timeout == 60);
	CHECK(cfg.retries == 5 && cfg.retry_max_seconds == 120);
	CHECK(cfg.multipart_size == 64 << 20 && cfg.parallel_count == 8);
	CHECK(cfg.sse == S3_SSE_NONE && !cfg.sse_kms_key_id && !cfg.sse_c_key_file);
	CHECK(cfg.uid == getuid() && cfg.gid == getgid());
	CHECK(!cfg.uid_set && !cfg.gid_set && !cfg.umask_set);
	CHECK(cfg.umask == 022 && cfg.mp_umask == 022 && !cfg.ro);
	if (geteuid() == 0) {
		CHECK_STR(cfg.cache_dir, "/var/cache/bucketfs");
	} else {
		CHECK_STR(cfg.cache_dir, "/xdg/cache/bucketfs");
	}
	CHECK(cfg.cache_size == 1ULL << 30 && cfg.block_size == 1 << 20);
	CHECK(cfg.prefetch == 64 && cfg.prefetch_parallel == 4);
	CHECK(cfg.list_ttl == 60 && cfg.small_file_size == 1 << 20);
	CHECK(cfg.max_dirty == 1ULL << 30);
	CHECK(cfg.async_close_max == 1 << 20 && !cfg.sync_upload);
	CHECK(cfg.log_level == FS_LOG_WARNING && !cfg.log_level_set && !cfg.logfile);
	CHECK(cfg.stats_interval == 0);
	CHECK(!cfg.foreground && !cfg.debug && !cfg.single_thread && !cfg.clone_fd);
	CHECK(cfg.max_threads == 10);
	CHECK(!cfg.allow_other && !cfg.default_permissions && !cfg.nonempty);
	/* What FUSE gets: argv[0] and options, never the mount point. */
	CHECK_STR(fa.argv[0], "bucketfs");
	CHECK_STR(fuse_opts(&fa), "subtype=bucketfs,fsname=mybucket");
	release(&cfg, &fa);

	if (geteuid() != 0) {
		unsetenv("XDG_CACHE_HOME");
		setenv("HOME", "/home/someone", 1);
		if (parse_ok(&cfg, &fa, "b", mnt, NULL))
			return;
		CHECK_STR(cfg.cache_dir, "/home/someone/.cache/bucketfs");
		release(&cfg, &fa);
	}

	/* A relative mount point is made absolute and resolved. */
	if (chdir(tmpdir) == 0 && parse_ok(&cfg, &fa, "b", "./mnt/", NULL) == 0) {
		CHECK_STR(cfg.mountpoint, mnt);
		release(&cfg, &fa);
	}
	snprintf(want, sizeof(want), "%s/absent", tmpdir);
	if (parse_ok(&cfg, &fa, "b", "absent", NULL) == 0) {
		CHECK_STR(cfg.mountpoint, want);
		release(&cfg, &fa);
	}
	CHECK(chdir("/") == 0);
}

static void test_every_option(void)
{
	struct fs_config cfg;
	struct fuse_args fa;
	s3_config s3;

	if (parse_ok(&cfg, &fa, "bkt:/data/set", mnt, "-f", "-s", "-o",
	             "url=https://minio.example:9000,region=eu-west-3,use_path_request_style,"
	             "ca_bundle=/etc/ca.pem,connect_timeout=3,readwrite_timeout=30,retries=2,"
	             "retry_max_seconds=40,multipart_size=16,parallel_count=3,"
	             "use_sse=kmsid:arn:aws:kms:key/1",
	             "-o",
	             "passwd_file=/etc/pw,profile=backup,uid=1234,gid=567,umask=0077,mp_umask=027,"
	             "ro,cache_dir=/var/tmp/c,cache_size=8M,block_size=256K,prefetch=0,"
	             "prefetch_parallel=2,list_ttl=0,small_file_size=64KiB,max_dirty=2G,"
	             "async_close_max=0,sync_upload",
	             "-o",
	             "dbglevel=info,logfile=/var/log/b.log,stats_interval=300,allow_other,"
	             "nonempty,max_threads=20,clone_fd,kernel_cache,max_read=131072",
	             NULL))
		return;
	CHECK_STR(cfg.bucket, "bkt");
	CHECK_STR(cfg.prefix, "data/set/");
	CHECK_STR(cfg.url, "https://minio.example:9000");
	CHECK_STR(cfg.region, "eu-west-3");
	CHECK(cfg.path_style);
	CHECK_STR(cfg.ca_bundle, "/etc/ca.pem");
	CHECK(cfg.connect_timeout == 3 && cfg.readwrite_timeout == 30);
	CHECK(cfg.retries == 2 && cfg.retry_max_seconds == 40);
	CHECK(cfg.multipart_size == 16 << 20 && cfg.parallel_count == 3);
	CHECK(cfg.sse == S3_SSE_KMS);
	CHECK_STR(cfg.sse_kms_key_id, "arn:aws:kms:key/1");
	CHECK_STR(cfg.passwd_file, "/etc/pw");
	CHECK_STR(cfg.profile, "backup");
	CHECK(cfg.uid == 1234 && cfg.gid == 567 && cfg.uid_set && cfg.gid_set);
	CHECK(cfg.umask == 077 && cfg.umask_set && cfg.mp_umask == 027);
	CHECK(cfg.ro);
	CHECK_STR(cfg.cache_dir, "/var/tmp/c");
	CHECK(cfg.cache_size == 8 << 20 && cfg.block_size == 256 << 10);
	CHECK(cfg.prefetch == 0 && cfg.prefetch_parallel == 2);
	CHECK(cfg.list_ttl == 0 && cfg.small_file_size == 64 << 10);
	CHECK(cfg.max_dirty == 2ULL << 30);
	CHECK(cfg.async_close_max == 0 && cfg.sync_upload);
	CHECK(cfg.log_level == FS_LOG_INFO && cfg.log_level_set);
	CHECK_STR(cfg.logfile, "/var/log/b.log");
	CHECK(cfg.stats_interval == 300);
	CHECK(cfg.foreground && cfg.single_thread && !cfg.debug);
	CHECK(cfg.allow_other && cfg.default_permissions && cfg.nonempty);
	CHECK(cfg.max_threads == 20 && cfg.clone_fd);
	CHECK(has_fuse_opt(&fa, "ro") && has_fuse_opt(&fa, "allow_other"));
	CHECK(has_fuse_opt(&fa, "default_permissions"));
	CHECK(has_fuse_opt(&fa, "kernel_cache") && has_fuse_opt(&fa, "max_read=131072"));
	CHECK(has_fuse_opt(&fa, "fsname=bkt:/data/set"));
	CHECK(!has_fuse_opt(&fa, "uid=1234") && !has_fuse_opt(&fa, "nonempty"));
	CHECK(!has_fuse_opt(&fa, "clone_fd") && !has_fuse_opt(&fa, "max_threads=20"));

	fs_config_to_s3(&cfg, &s3);
	CHECK(s3.endpoint == cfg.url && s3.region == cfg.region && s3.bucket == cfg.bucket);
	CHECK(s3.path_style && s3.ca_bundle == cfg.ca_bundle);
	CHECK(s3.connect_timeout_s == 3 && s3.readwrite_timeout_s == 30 && s3.retries == 2);
	CHECK(s3.retry_max_seconds == 40.0);
	CHECK(s3.passwd_file == cfg.passwd_file && s3.profile == cfg.profile);
	CHECK(s3.sse == S3_SSE_KMS && s3.sse_kms_key_id == cfg.sse_kms_key_id);
	CHECK(s3.log == fs_log_va && s3.log_level == FS_LOG_INFO);
	release(&cfg, &fa);

	/* -d: debug, foreground, debug log level, and libfuse's trace. */
	if (parse_ok(&cfg, &fa, "b", mnt, "-d", NULL) == 0) {
		CHECK(cfg.debug && cfg.foreground && cfg.log_level == FS_LOG_DEBUG);
		CHECK(has_fuse_opt(&fa, "-d"));
		release(&cfg, &fa);
	}
	if (parse_ok(&cfg, &fa, "b", mnt, "-o", "debug,dbglevel=err", NULL) == 0) {
		CHECK(cfg.debug && cfg.foreground && cfg.log_level == FS_LOG_ERR);
		release(&cfg, &fa);
	}
	/* s3fs's endpoint= is the region; use_cache= the cache dir;
	 * stat_cache_expire= the listing TTL; paths become absolute. */
	if (chdir(tmpdir) == 0 &&
	    parse_ok(&cfg, &fa, "b", mnt, "-oendpoint=ap-northeast-3,use_cache=c,passwd_file=pw",
	             "-ostat_cache_expire=900,fsname=mine,subtype=other", NULL) == 0) {
		char want[4200];

		CHECK_STR(cfg.region, "ap-northeast-3");
		CHECK(cfg.url == NULL);
		snprintf(want, sizeof(want), "%s/c", tmpdir);
		CHECK_STR(cfg.cache_dir, want);
		snprintf(want, sizeof(want), "%s/pw", tmpdir);
		CHECK_STR(cfg.passwd_file, want);
		CHECK(cfg.list_ttl == 900);
		CHECK_STR(fuse_opts(&fa), "fsname=mine,subtype=other");
		release(&cfg, &fa);
	}
	CHECK(chdir("/") == 0);
}

static void test_sse_forms(void)
{
	static const struct {
		const char *opt;
		enum s3_sse_type sse;
		const char *kms, *keyfile;
	} cases[] = {
	        {"use_sse", S3_SSE_S3, NULL, NULL},
	        {"use_sse=1", S3_SSE_S3, NULL, NULL},
	        {"use_sse=kmsid", S3_SSE_KMS, NULL, NULL},
	        {"use_sse=k", S3_SSE_KMS, NULL, NULL},
	        {"use_sse=k:abc", S3_SSE_KMS, "abc", NULL},
	        {"use_sse=custom:/k/key", S3_SSE_C, NULL, "/k/key"},
	        {"use_sse=c:/k/key", S3_SSE_C, NULL, "/k/key"},
	        {"use_sse=custom,load_sse_c=/k/other", S3_SSE_C, NULL, "/k/other"},
	};
	struct fs_config cfg;
	struct fuse_args fa;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (parse_ok(&cfg, &fa, "b", mnt, "-o", cases[i].opt, NULL))
			continue;
		CHECK(cfg.sse == cases[i].sse);
		CHECK((!cases[i].kms && !cfg.sse_kms_key_id) ||
		      (cases[i].kms && cfg.sse_kms_key_id &&
		       !strcmp(cases[i].kms, cfg.sse_kms_key_id)));
		CHECK((!cases[i].keyfile && !cfg.sse_c_key_file) ||
		      (cases[i].keyfile && cfg.sse_c_key_file &&
		       !strcmp(cases[i].keyfile, cfg.sse_c_key_file)));
		release(&cfg, &fa);
	}
	CHECK_ERROR("bucketfs: invalid value 'aes' for option 'use_sse' (expected 1, "
	            "kmsid[:KEYID] or custom[:KEYFILE])",
	            "b", mnt, "-o", "use_sse=aes");
	CHECK_ERROR("bucketfs: use_sse=custom needs a key file (use_sse=custom:FILE or "
	            "load_sse_c=FILE)",
	            "b", mnt, "-o", "use_sse=custom");
}

/* A line as an s3fs user has it in /etc/fstab, through mount.fuse3. */
static void test_s3fs_fstab_line(void)
{
	struct fs_config cfg;
	struct fuse_args fa;

	if (parse_ok(&cfg, &fa, "mybucket", mnt, "-o",
	             "_netdev,allow_other,url=http://127.0.0.1:9000,use_path_request_style,"
	             "uid=1000,gid=1000,umask=022,nofail,rw",
	             NULL))
		return;
	CHECK_STR(cfg.url, "http://127.0.0.1:9000");
	CHECK(cfg.path_style && cfg.uid == 1000 && cfg.gid == 1000 && cfg.umask == 022);
	CHECK(cfg.allow_other && cfg.default_permissions);
	CHECK_STR(fuse_opts(&fa), "allow_other,default_permissions,subtype=bucketfs,"
	                          "fsname=mybucket");
	release(&cfg, &fa);

	/* Everything mount(8), fstab and systemd may add is accepted. */
	if (parse_ok(&cfg, &fa, "mybucket", mnt, "-o",
	             "defaults,rw,dev,suid,exec,auto,nouser,noauto,user,users,"
	             "x-systemd.automount,x-systemd.idle-timeout=60,comment=systemd.x,relatime",
	             "-o", "noatime,nosuid,nodev", NULL) == 0) {
		CHECK_STR(fuse_opts(&fa), "noatime,nosuid,nodev,subtype=bucketfs,fsname=mybucket");
		release(&cfg, &fa);
	}

	/* s3fs options without a meaning here mount, with a warning each. */
	{
		char *tail[] = {(char *)"mybucket", mnt, (char *)"-o",
		                (char *)"iam_role=auto,sigv4", NULL};
		char *out, *err;

		CHECK(run_parse(tail, &cfg, &fa, &out, &err) == 0);
		CHECK_STR(err, "bucketfs: warning: s3fs option 'iam_role' is ignored (the instance "
		               "role is used when nothing else is found)\n"
		               "bucketfs: warning: s3fs option 'sigv4' is ignored (requests are "
		               "always signed with SigV4)\n");
		free(out);
		free(err);
		release(&cfg, &fa);
	}
}

static void test_bucket_prefix_forms(void)
{
	static const struct {
		const char *src, *bucket, *prefix, *fsname;
	} cases[] = {
	        {"b", "b", "", "fsname=b"},
	        {"b:", "b", "", "fsname=b"},
	        {"b:/", "b", "", "fsname=b"},
	        {"b:/a", "b", "a/", "fsname=b:/a"},
	        {"b:/a/b", "b", "a/b/", "fsname=b:/a/b"},
	        {"b:/a/b/", "b", "a/b/", "fsname=b:/a/b"},
	        {"b:a/b", "b", "a/b/", "fsname=b:/a/b"},
	        {"my.bucket-1:/with space,comma", "my.bucket-1", "with space,comma/",
	         "fsname=my.bucket-1:/with space\\,comma"},
	};
	struct fs_config cfg;
	struct fuse_args fa;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (parse_ok(&cfg, &fa, cases[i].src, mnt, NULL))
			continue;
		CHECK_STR(cfg.bucket, cases[i].bucket);
		CHECK_STR(cfg.prefix, cases[i].prefix);
		CHECK_STR(fa.argv[fa.argc - 1], cases[i].fsname);
		release(&cfg, &fa);
	}
	CHECK_ERROR("bucketfs: invalid bucket in ':/a' (expected BUCKET[:/PREFIX])", ":/a", mnt);
	CHECK_ERROR("bucketfs: invalid bucket in 'a/b' (expected BUCKET[:/PREFIX])", "a/b", mnt);
	CHECK_ERROR("bucketfs: invalid prefix in 'b:/a//c' (empty, '.' or '..' component)",
	            "b:/a//c", mnt);
	CHECK_ERROR("bucketfs: invalid prefix in 'b:/a/../c' (empty, '.' or '..' component)",
	            "b:/a/../c", mnt);
	CHECK_ERROR("bucketfs: invalid prefix in 'b://' (empty, '.' or '..' component)", "b://",
	            mnt);
}

static void test_bad_values(void)
{
	CHECK_ERROR("bucketfs: invalid value 'abc' for option 'cache_size' (expected a size of "
	            "at least 1M, like 512M or 2G)",
	            "b", mnt, "-o", "cache_size=abc");
	CHECK_ERROR("bucketfs: invalid value '1X' for option 'cache_size' (expected a size of "
	            "at least 1M, like 512M or 2G)",
	            "b", mnt, "-o", "cache_size=1X");
	CHECK_ERROR("bucketfs: invalid value '-1x' for option 'uid' (expected a numeric id from "
	            "0 to 4294967294)",
	            "b", mnt, "-o", "uid=-1x");
	CHECK_ERROR("bucketfs: invalid value '-1' for option 'gid' (expected a numeric id from "
	            "0 to 4294967294)",
	            "b", mnt, "-o", "gid=-1");
	CHECK_ERROR("bucketfs: invalid value '-5' for option 'list_ttl' (expected a whole number "
	            "from 0 to 2147483647)",
	            "b", mnt, "-o", "list_ttl=-5");
	CHECK_ERROR("bucketfs: invalid value '4' for option 'multipart_size' (expected MiB from "
	            "5 to 5120)",
	            "b", mnt, "-o", "multipart_size=4");
	CHECK_ERROR("bucketfs: invalid value '0' for option 'parallel_count' (expected a whole "
	            "number from 1 to 100)",
	            "b", mnt, "-o", "parallel_count=0");
	CHECK_ERROR("bucketfs: invalid value '99999999999999999999' for option 'retries' "
	            "(expected a whole number from 0 to 100)",
	            "b", mnt, "-o", "retries=99999999999999999999");
	CHECK_ERROR("bucketfs: invalid value '5000' for option 'block_size' (expected a size "
	            "from 4K to 64M in multiples of 4K, like 512K or 4M)",
	            "b", mnt, "-o", "block_size=5000");
	CHECK_ERROR("bucketfs: invalid value '0888' for option 'umask' (expected an octal mask "
	            "like 022 or 0077)",
	            "b", mnt, "-o", "umask=0888");
	CHECK_ERROR("bucketfs: invalid value 'loud' for option 'dbglevel' (expected err, warn, "
	            "info or debug)",
	            "b", mnt, "-o", "dbglevel=loud");
	CHECK_ERROR("bucketfs: invalid value 'minio:9000' for option 'url' (expected "
	            "http://HOST[:PORT] or https://HOST[:PORT])",
	            "b", mnt, "-o", "url=minio:9000");
	CHECK_ERROR("bucketfs: option 'cache_dir' needs a value (cache_dir=DIR)", "b", mnt, "-o",
	            "cache_dir=");
	CHECK_ERROR("bucketfs: option 'region' needs a value (region=REGION)", "b", mnt, "-o",
	            "region");
	CHECK_ERROR("bucketfs: option 'allow_other' takes no value", "b", mnt, "-o",
	            "allow_other=1");
	CHECK_ERROR("bucketfs: unknown option 'xyz' (see bucketfs --help)", "b", mnt, "-o",
	            "allow_other,xyz");
	CHECK_ERROR("bucketfs: unknown option '-x' (see bucketfs --help)", "b", mnt, "-x");
	CHECK_ERROR("bucketfs: unexpected argument 'extra'", "b", mnt, "extra");
	CHECK_ERROR("bucketfs: missing MOUNTPOINT (usage: bucketfs BUCKET[:/PREFIX] MOUNTPOINT "
	            "[-o OPTION,...]; see bucketfs --help)",
	            "b");
	CHECK_ERROR("bucketfs: missing BUCKET and MOUNTPOINT (usage: bucketfs BUCKET[:/PREFIX] "
	            "MOUNTPOINT [-o OPTION,...]; see bucketfs --help)",
	            "-f");
}

/* Every field of struct fs_config that an option sets is named by --help,
 * with its default. */
static void test_help_lists_every_option(void)
{
	static const char *const names[] = {
	        "url=",
	        "region=",
	        "endpoint=",
	        "use_path_request_style",
	        "ca_bundle=",
	        "connect_timeout=",
	        "readwrite_timeout=",
	        "retries=",
	        "retry_max_seconds=",
	        "multipart_size=",
	        "parallel_count=",
	        "use_sse[=",
	        "load_sse_c=",
	        "passwd_file=",
	        "profile=",
	        "uid=",
	        "gid=",
	        "umask=",
	        "mp_umask=",
	        "-o ro ",
	        "cache_dir=",
	        "use_cache=",
	        "cache_size=",
	        "block_size=",
	        "prefetch=",
	        "prefetch_parallel=",
	        "list_ttl=",
	        "stat_cache_expire=",
	        "small_file_size=",
	        "max_dirty=",
	        "async_close_max=",
	        "sync_upload",
	        "dbglevel=",
	        "logfile=",
	        "stats_interval=",
	        "-f ",
	        "-d, -o debug",
	        "-s ",
	        "allow_other",
	        "default_permissions",
	        "nonempty",
	        "max_threads=",
	        "clone_fd",
	        "fsname=",
	        "subtype=",
	        "bucketfs stats MOUNTPOINT",
	        "(default: 1G)",
	        "(default: 64)",
	        "(default: 60)",
	};
	struct fs_config cfg;
	struct fuse_args fa;
	char *out, *err;
	int r;

	/* Through fs_options_parse(), as `bucketfs --help` runs it. */
	r = run_parse((char *[]){(char *)"--help", NULL}, &cfg, &fa, &out, &err);
	CHECK_STR(err, "");
	CHECK(r == 1);
	CHECK(fa.argv == NULL && cfg.bucket == NULL);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!strstr(out, names[i])) {
			fprintf(stderr, "--help does not mention '%s'\n", names[i]);
			failures++;
		}
	}
	/* No line is wider than 100 columns. */
	for (char *line = out, *nl; (nl = strchr(line, '\n')); line = nl + 1)
		CHECK(nl - line <= 100);
	free(out);
	free(err);

	r = run_parse((char *[]){(char *)"-V", NULL}, &cfg, &fa, &out, &err);
	CHECK_STR(err, "");
	free(err);
	CHECK(r == 1);
	CHECK(!strncmp(out, "bucketfs " BUCKETFS_VERSION "\n", strlen(BUCKETFS_VERSION) + 10));
	CHECK(strstr(out, "\nlibfuse 3.") && strstr(out, "\nlibcurl ") &&
	      strstr(out, "\nSQLite 3."));
	CHECK(strstr(out, "\nlibxml2 2."));
	free(out);
}

static void test_allow_other_implies_default_permissions(void)
{
	struct fs_config cfg;
	struct fuse_args fa;

	if (parse_ok(&cfg, &fa, "b", mnt, "-o", "allow_other", NULL))
		return;
	CHECK(cfg.allow_other && cfg.default_permissions);
	CHECK(has_fuse_opt(&fa, "allow_other") && has_fuse_opt(&fa, "default_permissions"));
	release(&cfg, &fa);

	/* Given both, default_permissions is passed once. */
	if (parse_ok(&cfg, &fa, "b", mnt, "-o", "default_permissions,allow_other", NULL))
		return;
	CHECK_STR(fuse_opts(&fa), "default_permissions,allow_other,subtype=bucketfs,fsname=b");
	release(&cfg, &fa);
}

/* fs_check_mountpoint() with stderr captured; returns the message. */
static char *check_mp(const char *path, bool nonempty, int *r)
{
	struct fs_config cfg;
	char errpath[4200];
	int saved = dup(2), fd;

	fs_config_init(&cfg);
	cfg.mountpoint = (char *)path;
	cfg.nonempty = nonempty;
	snprintf(errpath, sizeof(errpath), "%s/stderr", tmpdir);
	fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	fflush(stderr);
	dup2(fd, 2);
	*r = fs_check_mountpoint(&cfg);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	close(fd);
	return strdup(slurp(errpath));
}

static void test_mountpoint_checks(void)
{
	char path[4200], want[8600], file[4200], *msg;
	int r, fd;

	msg = check_mp(mnt, false, &r);
	CHECK(r == 0);
	CHECK_STR(msg, "");
	free(msg);

	snprintf(path, sizeof(path), "%s/missing", tmpdir);
	msg = check_mp(path, false, &r);
	CHECK(r == -1);
	snprintf(want, sizeof(want), "bucketfs: mount point %s does not exist\n", path);
	CHECK_STR(msg, want);
	free(msg);

	snprintf(path, sizeof(path), "%s/file", tmpdir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	close(fd);
	msg = check_mp(path, false, &r);
	CHECK(r == -1);
	snprintf(want, sizeof(want), "bucketfs: mount point %s is not a directory\n", path);
	CHECK_STR(msg, want);
	free(msg);

	snprintf(path, sizeof(path), "%s/full", tmpdir);
	snprintf(file, sizeof(file), "%s/full/.hidden", tmpdir);
	CHECK(mkdir(path, 0700) == 0);
	fd = open(file, O_WRONLY | O_CREAT, 0600);
	close(fd);
	msg = check_mp(path, false, &r);
	CHECK(r == -1);
	snprintf(want, sizeof(want),
	         "bucketfs: mount point %s is not empty (use -o nonempty to mount over it)\n",
	         path);
	CHECK_STR(msg, want);
	free(msg);

	msg = check_mp(path, true, &r);
	CHECK(r == 0);
	CHECK_STR(msg, "");
	free(msg);
	unlink(file);
	rmdir(path);

	/* mount.fuse3 -o drop_privileges passes the /dev/fuse descriptor. */
	msg = check_mp("/dev/fd/3", false, &r);
	CHECK(r == 0);
	free(msg);
}

static void test_log_redaction(void)
{
	struct fs_config cfg;
	char path[4200];
	const char *log;

	fs_config_init(&cfg);
	snprintf(path, sizeof(path), "%s/redact.log", tmpdir);
	cfg.logfile = path;
	CHECK(fs_log_init(&cfg) == 0);
	fs_log(FS_LOG_ERR, "> Authorization: AWS4-HMAC-SHA256 Credential=AKIAX/20130524/"
	                   "us-east-1/s3/aws4_request, SignedHeaders=host, Signature=deadbeef\r\n"
	                   "> Host: b.s3.amazonaws.com");
	fs_log(FS_LOG_WARNING, "GET /k?X-Amz-Signature=cafe01&X-Amz-Security-Token=TOKSECRET&a=b");
	fs_log(FS_LOG_WARNING, "x-amz-security-token:  TOKEN2 next");
	fs_log(FS_LOG_WARNING, "x-amz-server-side-encryption-customer-key: S2V5S2V5 "
	                       "x-amz-server-side-encryption-customer-key-MD5: bWQ1");
	fs_log(FS_LOG_WARNING, "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG");
	fs_log(FS_LOG_WARNING, "missing X-Amz-Security-Token header");
	fs_log(FS_LOG_WARNING, "key with\na newline");
	fs_log(FS_LOG_INFO, "info is below the default level");
	fs_log_close();

	log = slurp(path);
	CHECK(!strstr(log, "deadbeef") && !strstr(log, "AKIAX") && !strstr(log, "cafe01"));
	CHECK(!strstr(log, "TOKSECRET") && !strstr(log, "TOKEN2") && !strstr(log, "S2V5S2V5"));
	CHECK(!strstr(log, "wJalrXUtnFEMI"));
	CHECK(strstr(log, " err: > Authorization: [redacted]  > Host: b.s3.amazonaws.com\n"));
	CHECK(strstr(log, "X-Amz-Signature=[redacted]&X-Amz-Security-Token=[redacted]&a=b\n"));
	CHECK(strstr(log, "x-amz-security-token:  [redacted] next\n"));
	CHECK(strstr(log, "customer-key: [redacted] x-amz-server-side-encryption-customer-key-MD5:"
	                  " bWQ1\n"));
	CHECK(strstr(log, "aws_secret_access_key = [redacted]\n"));
	CHECK(strstr(log, " warn: missing X-Amz-Security-Token header\n"));
	CHECK(strstr(log, " warn: key with a newline\n"));
	CHECK(!strstr(log, "info is below"));
	CHECK(strstr(log, "bucketfs[") != NULL);
	/* Seven messages, seven lines. */
	{
		int lines = 0;

		for (const char *p = log; (p = strchr(p, '\n')); p++)
			lines++;
		CHECK(lines == 7);
	}
}

static void test_log_reopen(void)
{
	struct fs_config cfg;
	char path[4200], rotated[4200];
	struct stat st;
	const char *log;

	fs_config_init(&cfg);
	snprintf(path, sizeof(path), "%s/b.log", tmpdir);
	snprintf(rotated, sizeof(rotated), "%s/b.log.1", tmpdir);
	cfg.logfile = path;
	cfg.log_level = FS_LOG_DEBUG;
	CHECK(fs_log_init(&cfg) == 0);
	CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
	CHECK(fs_log_enabled(FS_LOG_DEBUG));
	fs_log(FS_LOG_DEBUG, "line %d", 1);
	CHECK(rename(path, rotated) == 0);
	fs_log(FS_LOG_INFO, "line %d", 2); /* still the open (renamed) file */
	fs_log_reopen();
	fs_log(FS_LOG_INFO, "line %d", 3);

	log = slurp(rotated);
	CHECK(strstr(log, " debug: line 1\n") && strstr(log, " info: line 2\n"));
	CHECK(!strstr(log, "line 3"));
	log = slurp(path);
	CHECK(strstr(log, " info: line 3\n") && !strstr(log, "line 2"));

	/* The same through SIGHUP, as logrotate's postrotate sends it. */
	CHECK(fs_log_handle_sighup() == 0);
	CHECK(rename(path, rotated) == 0);
	CHECK(raise(SIGHUP) == 0);
	fs_log(FS_LOG_ERR, "line %d", 4);
	log = slurp(path);
	CHECK(strstr(log, " err: line 4\n") && !strstr(log, "line 3"));
	fs_log_close();
	signal(SIGHUP, SIG_DFL);

	/* A log file that cannot be opened is a one-line error. */
	cfg.logfile = (char *)"/nonexistent-dir/b.log";
	{
		char errpath[4200];
		int saved = dup(2), fd, r;

		snprintf(errpath, sizeof(errpath), "%s/stderr", tmpdir);
		fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		fflush(stderr);
		dup2(fd, 2);
		r = fs_log_init(&cfg);
		fflush(stderr);
		dup2(saved, 2);
		close(saved);
		close(fd);
		CHECK(r == -1);
		CHECK_STR(slurp(errpath), "bucketfs: cannot open log file /nonexistent-dir/b.log: "
		                          "No such file or directory\n");
	}
}

static void cleanup(void)
{
	char cmd[4200];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
}

int main(int argc, char **argv)
{
	/* For test_manpage.py: the usage text, to compare with bucketfs.1. */
	if (argc > 1 && !strcmp(argv[1], "--usage")) {
		fs_options_usage(stdout);
		return 0;
	}
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(mnt, sizeof(mnt), "%s/mnt", tmpdir);
	if (mkdir(mnt, 0700) < 0) {
		perror("mkdir");
		return 1;
	}

	test_defaults();
	test_every_option();
	test_sse_forms();
	test_s3fs_fstab_line();
	test_bucket_prefix_forms();
	test_bad_values();
	test_help_lists_every_option();
	test_allow_other_implies_default_permissions();
	test_mountpoint_checks();
	test_log_redaction();
	test_log_reopen();

	cleanup();
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("all options and log tests passed\n");
	return 0;
}
