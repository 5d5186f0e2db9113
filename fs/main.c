/*
 * main.c - bucketfs's main: parse -> check -> connect -> open index and cache
 * -> mount -> detach -> loop, unwinding each step on failure.
 *
 * Daemon mode forks first, before any thread exists, and the parent waits on
 * a pipe until the child has mounted (exit 0) or failed (the child's one-line
 * reason on stderr, exit 1), so `mount` returns only once the tree is usable.
 *
 * `bucketfs stats MOUNTPOINT` prints the request and cache counters of a
 * running mount, read through a virtual extended attribute of its root.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "fs.h"
#include "ops.h"

static int report_fd = -1; /* daemon mode: the pipe to the waiting parent */

/* A mount-time failure: one line to the user (stderr, or the parent through
 * the pipe) and to the log. */
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fs_log(FS_LOG_ERR, "%s", msg);
	if (report_fd >= 0) {
		dprintf(report_fd, "bucketfs: %s\n", msg);
		close(report_fd);
		report_fd = -1;
	} else {
		fprintf(stderr, "bucketfs: %s\n", msg);
	}
}

static int stats_command(int argc, char **argv)
{
	char buf[65536];
	ssize_t n;

	if (argc != 3) {
		fprintf(stderr, "usage: bucketfs stats MOUNTPOINT\n");
		return 2;
	}
	n = getxattr(argv[2], FS_STATS_XATTR, buf, sizeof(buf) - 1);
	if (n < 0) {
		if (errno == ENODATA || errno == ENOTSUP)
			fprintf(stderr, "bucketfs: %s is not a bucketfs mount point\n", argv[2]);
		else
			fprintf(stderr, "bucketfs: %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	buf[n] = '\0';
	fputs(buf, stdout);
	return 0;
}

/* Daemon mode: fork now; the parent relays the child's verdict and exits. */
static void daemonize_early(void)
{
	int fds[2];
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) < 0) {
		perror("bucketfs: pipe");
		exit(1);
	}
	pid = fork();
	if (pid < 0) {
		perror("bucketfs: fork");
		exit(1);
	}
	if (pid > 0) {
		char buf[2048];
		ssize_t n, len = 0;

		close(fds[1]);
		while ((n = read(fds[0], buf + len, sizeof(buf) - 1 - (size_t)len)) > 0)
			len += n;
		buf[len > 0 ? len : 0] = '\0';
		if (strcmp(buf, "OK") == 0)
			_exit(0);
		if (len > 0)
			fputs(buf, stderr);
		else
			fprintf(stderr, "bucketfs: the daemon exited before the mount was ready\n");
		int status;
		waitpid(pid, &status, 0);
		_exit(1);
	}
	close(fds[0]);
	report_fd = fds[1];
	setsid();
}

/* The child is mounted: release the parent, leave the terminal. */
static void detach(void)
{
	int nul;

	if (report_fd < 0)
		return;
	if (write(report_fd, "OK", 2) != 2)
		fs_log(FS_LOG_WARNING, "could not tell the parent process the mount is ready");
	close(report_fd);
	report_fd = -1;
	if (chdir("/") < 0)
		fs_log(FS_LOG_WARNING, "chdir /: %s", strerror(errno));
	nul = open("/dev/null", O_RDWR);
	if (nul >= 0) {
		dup2(nul, 0);
		dup2(nul, 1);
		dup2(nul, 2);
		if (nul > 2)
			close(nul);
	}
}

/* Checks that the bucket exists and the credentials work, with one LIST,
 * and turns what went wrong into one line. */
static int probe_bucket(s3_client *s3, const struct fs_config *cfg)
{
	s3_list_params p = {.prefix = cfg->prefix, .max_keys = 1};
	s3_list_page page;
	s3_error err;
	char desc[512];
	int r;

	r = s3_list_objects(s3, &p, &page, &err);
	if (!r) {
		s3_list_page_free(&page);
		return 0;
	}
	s3_error_format(&err, desc, sizeof(desc));
	const char *ep = cfg->url ? cfg->url : "the AWS endpoint";
	switch (-r) {
	case ENOENT:
		fail("bucket '%s' does not exist at %s (%s)", cfg->bucket, ep, desc);
		break;
	case EACCES:
		fail("access denied to bucket '%s' (credentials from %s): %s", cfg->bucket,
		     s3_client_cred_source(s3), desc);
		break;
	case EPERM:
		fail("the credentials from %s were refused: %s", s3_client_cred_source(s3), desc);
		break;
	case ECONNREFUSED:
	case EHOSTUNREACH:
	case ETIMEDOUT:
	case ENETUNREACH:
		fail("cannot reach %s: %s", ep, desc);
		break;
	case EPROTO:
		fail("TLS connection to %s failed (use ca_bundle= for a private CA): %s", ep, desc);
		break;
	default:
		fail("cannot list bucket '%s' at %s: %s", cfg->bucket, ep, desc);
	}
	return -1;
}

/* cache_dir/BUCKET-HASH: one directory per endpoint + bucket + prefix. */
static char *instance_dir(const struct fs_config *cfg)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char *id = NULL, *dir = NULL, hex[17];

	if (asprintf(&id, "%s\n%s\n%s", cfg->url ? cfg->url : "aws", cfg->bucket, cfg->prefix) < 0)
		return NULL;
	EVP_Digest(id, strlen(id), md, &mdlen, EVP_sha256(), NULL);
	free(id);
	for (int i = 0; i < 8; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	if (asprintf(&dir, "%s/%s-%s", cfg->cache_dir, cfg->bucket, hex) < 0)
		return NULL;
	return dir;
}

static int mkdir_p(const char *path, mode_t mode)
{
	char *p = strdup(path);
	int r = 0;

	if (!p)
		return -ENOMEM;
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, mode) < 0 && errno != EEXIST)
			r = -errno;
		*s = '/';
		if (r)
			break;
	}
	if (!r && mkdir(p, mode) < 0 && errno != EEXIST)
		r = -errno;
	free(p);
	return r;
}

static void log_stats(struct fs_ctx *ctx, const char *when)
{
	char *text = fs_stats_text(ctx);

	if (!text)
		return;
	for (char *s = text; *s; s++)
		if (*s == '\n')
			*s = s[1] ? ',' : '\0';
	fs_log(FS_LOG_INFO, "stats %s: %s", when, text);
	free(text);
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fs_config cfg;
	struct fs_ctx ctx = {0};
	struct fuse *fuse = NULL;
	s3_config s3cfg;
	char errbuf[1024], *inst = NULL, *index_path = NULL, *content_dir = NULL;
	bool mounted = false;
	int r, ret = 1;

	if (argc >= 2 && strcmp(argv[1], "stats") == 0)
		return stats_command(argc, argv);
	/* Few malloc arenas: the FUSE, HEAD, prefetch and upload threads
	 * would otherwise each keep freed memory in an arena of their own. */
	mallopt(M_ARENA_MAX, 4);

	fs_config_init(&cfg);
	r = fs_options_parse(argc, argv, &cfg, &args);
	if (r)
		return r > 0 ? 0 : 1;
	if (fs_check_mountpoint(&cfg))
		goto out;
	/* Before the fork, so that a log file that cannot be opened is one line
	 * on stderr (fs_log_init's), and the daemon inherits the open log. */
	if (fs_log_init(&cfg))
		goto out;
	if (!cfg.foreground)
		daemonize_early();
	umask(077);

	/* mount(8) runs its helpers without HOME (nor PATH): find ~/.aws and
	 * ~/.passwd-s3fs the way aws-cli does, through the password database. */
	if (!getenv("HOME")) {
		struct passwd *pw = getpwuid(getuid());

		if (pw && pw->pw_dir && *pw->pw_dir)
			setenv("HOME", pw->pw_dir, 0);
	}

	fs_config_to_s3(&cfg, &s3cfg);
	ctx.s3 = s3_client_new(&s3cfg, errbuf, sizeof(errbuf));
	if (!ctx.s3) {
		fail("%s", errbuf);
		goto out;
	}
	if (probe_bucket(ctx.s3, &cfg))
		goto out;

	inst = instance_dir(&cfg);
	if (!inst || asprintf(&index_path, "%s/index.db", inst) < 0 ||
	    asprintf(&content_dir, "%s/content", inst) < 0) {
		fail("out of memory");
		goto out;
	}
	r = mkdir_p(inst, 0700);
	if (r) {
		fail("cannot create the cache directory %s: %s", inst, strerror(-r));
		goto out;
	}
	meta_options mo = {.log = fs_log_va, .log_level = cfg.log_level};
	r = meta_open(index_path, cfg.prefix, &mo, &ctx.meta);
	if (r) {
		fail("cannot open the index %s: %s", index_path, strerror(-r));
		goto out;
	}
	ctx.prefix = cfg.prefix;
	ctx.uid = cfg.uid;
	ctx.gid = cfg.gid;
	ctx.file_mode = 0666 & ~cfg.umask;
	ctx.dir_mode = 0777 & ~cfg.umask;
	ctx.list_ttl_ns = (int64_t)cfg.list_ttl * 1000000000;
	ctx.small_file_size = cfg.small_file_size;
	ctx.head_parallel = 16;
	ctx.list_flat_pages = 20;
	ctx.ro = cfg.ro;
	ctx.multipart_size = cfg.multipart_size;
	ctx.parallel_count = (int)cfg.parallel_count;
	ctx.max_dirty = cfg.max_dirty;
	ctx.async_close_max = cfg.sync_upload ? 0 : cfg.async_close_max;
	ctx.upload_threads = 16;
	ctx.unmount_wait_s = 60;
	pthread_mutex_init(&ctx.list_lock, NULL);
	if (fs_probes_init(&ctx)) {
		fail("out of memory");
		goto out;
	}

	cache_config cc = {
	        .dir = content_dir,
	        .size = cfg.cache_size,
	        .block_size = (uint32_t)cfg.block_size,
	        .prefetch_window = cfg.prefetch,
	        .prefetch_parallel = cfg.prefetch_parallel,
	        .no_prefetch = cfg.prefetch == 0,
	        .fetch = fs_fetch,
	        .fetch_ctx = &ctx,
	        .log = fs_log_va,
	};
	r = cache_open(&cc, &ctx.cache);
	if (r) {
		fail("cannot open the cache in %s: %s", content_dir, strerror(-r));
		goto out;
	}

	/* Before serving: uploads a crash left in the journal are resumed. */
	r = fs_wb_start(&ctx);
	if (r) {
		fail("cannot start the upload threads: %s", strerror(-r));
		goto out;
	}
	fuse = fuse_new(&args, &fs_operations, sizeof(fs_operations), &ctx);
	if (!fuse) {
		fail("cannot set up FUSE (bad FUSE option?)");
		goto out;
	}
	if (fuse_mount(fuse, cfg.mountpoint) != 0) {
		fail("cannot mount on %s (is /dev/fuse usable, is fuse3 installed?)",
		     cfg.mountpoint);
		goto out;
	}
	mounted = true;
	if (fuse_set_signal_handlers(fuse_get_session(fuse)) != 0) {
		fail("cannot install signal handlers");
		goto out;
	}
	fs_log_handle_sighup();
	fs_log(FS_LOG_INFO, "mounted %s%s%s on %s (credentials from %s, cache %s)", cfg.bucket,
	       *cfg.prefix ? ":/" : "", cfg.prefix, cfg.mountpoint, s3_client_cred_source(ctx.s3),
	       inst);
	detach();

	fs_readahead_arm(cfg.mountpoint);
	r = cfg.single_thread ? fuse_loop(fuse) : fuse_loop_mt(fuse, cfg.clone_fd);
	if (r != 0)
		fs_log(FS_LOG_ERR, "the FUSE loop ended with error %d", r);
	else
		ret = 0;
	fuse_remove_signal_handlers(fuse_get_session(fuse));
	log_stats(&ctx, "at unmount");
out:
	if (mounted)
		fuse_unmount(fuse);
	if (fuse)
		fuse_destroy(fuse);
	fs_wb_stop(&ctx); /* if FUSE never called destroy */
	fs_readahead_disarm();
	if (ctx.cache)
		cache_close(ctx.cache);
	if (ctx.meta)
		meta_close(ctx.meta);
	if (ctx.s3)
		s3_client_free(ctx.s3);
	fs_probes_free(&ctx);
	if (ctx.prefix)
		pthread_mutex_destroy(&ctx.list_lock);
	free(inst);
	free(index_path);
	free(content_dir);
	fuse_opt_free_args(&args);
	if (report_fd >= 0) {
		dprintf(report_fd, "bucketfs: failed before the mount was ready (see the log)\n");
		close(report_fd);
	}
	fs_log_close();
	fs_config_free(&cfg);
	return ret;
}
