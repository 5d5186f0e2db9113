/*
 * fs.h - the internal header of fs/, the FUSE driver of bucketfs.
 *
 * Declares the configuration (one struct holding every setting, filled from
 * the command line by options.c), the logger (log.c) and the FUSE operations.
 *
 * Invariants
 *  - A struct fs_config is filled only by fs_config_init() (defaults) and
 *    fs_options_parse(); after a successful parse every field is valid: paths
 *    are absolute (the daemon chdirs to "/"), the prefix is "" or ends in '/',
 *    numbers are within the bounds documented in `bucketfs --help`.
 *  - The config owns its strings; fs_config_free() releases them and leaves a
 *    zeroed struct that may be freed again.
 *  - Option-parsing and mount-point errors are written to stderr as one line
 *    starting "bucketfs: "; nothing else in this header prints to stderr
 *    except through the logger.
 *  - The logger is thread-safe and async-signal-safe to *request* a reopen
 *    from (fs_log_reopen()); it never writes a secret that it recognises
 *    (see fs_log()).
 */
#ifndef BUCKETFS_FS_H
#define BUCKETFS_FS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <fuse.h>

#include "s3.h"

/* ---------------------------------------------------------------- config */

/* Log levels: the same numbers as s3.h, meta.h and cache.h use. */
enum fs_log_level {
	FS_LOG_ERR = S3_LOG_ERR,
	FS_LOG_WARNING = S3_LOG_WARNING,
	FS_LOG_INFO = S3_LOG_INFO,
	FS_LOG_DEBUG = S3_LOG_DEBUG,
};

struct fs_config {
	/* BUCKET[:/PREFIX] MOUNTPOINT */
	char *bucket;
	char *prefix;     /* "" or "a/b/": always ends in '/' when not empty */
	char *mountpoint; /* absolute; realpath()'d when it exists, else as given
	                     made absolute ("/dev/fd/N" from mount.fuse3's
	                     drop_privileges is kept as is) */

	/* S3 connection */
	char *url;                  /* url=; NULL: AWS for the region */
	char *region;               /* region= or s3fs's endpoint=; NULL: the chain's */
	bool path_style;            /* use_path_request_style */
	char *ca_bundle;            /* NULL: the system's */
	unsigned connect_timeout;   /* seconds, default 10 */
	unsigned readwrite_timeout; /* seconds, default 60 */
	unsigned retries;           /* default 5 */
	unsigned retry_max_seconds; /* default 120 */
	uint64_t multipart_size;    /* bytes (the option is in MiB), default 64 MiB */
	unsigned parallel_count;    /* parts in flight per upload, default 8 */
	enum s3_sse_type sse;       /* use_sse */
	char *sse_kms_key_id;       /* use_sse=kmsid:ID, may be NULL */
	char *sse_c_key_file;       /* use_sse=custom:FILE or load_sse_c=FILE */

	/* Credentials */
	char *passwd_file;
	char *profile;

	/* Attributes.  The *_set flags say the option was given, so the driver
	 * can tell a forced owner/mode from a default for objects that carry
	 * no x-amz-meta-* attributes. */
	uid_t uid; /* default: the caller's */
	gid_t gid;
	mode_t umask;    /* default 022 */
	mode_t mp_umask; /* mode of the mount point (root dir), default 022 */
	bool uid_set, gid_set, umask_set;
	bool ro;

	/* Cache and index */
	char *cache_dir;            /* default: see fs_options_usage() */
	uint64_t cache_size;        /* bytes, default 1 GiB */
	uint64_t block_size;        /* bytes, default 1 MiB */
	unsigned prefetch;          /* blocks ahead, default 8; 0: no read-ahead */
	unsigned prefetch_parallel; /* default 4 */
	unsigned list_ttl;          /* seconds, default 60 */
	uint64_t small_file_size;   /* bytes, default 1 MiB; 0: always HEAD */
	uint64_t max_dirty;         /* bytes, default 1 GiB */
	uint64_t async_close_max;   /* bytes, default 1 MiB: smaller files upload
	                               after close returns (journaled first) */
	bool sync_upload;           /* every close waits for its upload */

	/* Logging and stats */
	int log_level; /* FS_LOG_*, default FS_LOG_WARNING (-d: debug) */
	bool log_level_set;
	char *logfile;           /* NULL: stderr with -f, else syslog */
	unsigned stats_interval; /* seconds between stats log lines; 0: only at unmount */

	/* FUSE and process */
	bool foreground;    /* -f */
	bool debug;         /* -d or -o debug: also FUSE's request trace; implies -f */
	bool single_thread; /* -s */
	bool clone_fd;
	unsigned max_threads; /* default 10 */
	bool allow_other;     /* implies default_permissions */
	bool default_permissions;
	bool nonempty;
};

/* Fills *cfg with the defaults (strings NULL; cache_dir is defaulted by
 * fs_options_parse() once it knows none was given). */
void fs_config_init(struct fs_config *cfg);

/* Frees the strings of *cfg and zeroes it; safe to call twice. */
void fs_config_free(struct fs_config *cfg);

/*
 * Parses `bucketfs BUCKET[:/PREFIX] MOUNTPOINT [-f] [-d] [-s] [-o OPT,...]`.
 *
 * Our own -o options are consumed into *cfg; the ones libfuse understands
 * (allow_other, default_permissions, fsname, subtype, max_read, ro, ...) are
 * passed on in *out_fuse_args, which holds argv[0] and -o options only (no
 * mount point), ready for fuse_new().  fsname=BUCKET[:/PREFIX] and
 * subtype=bucketfs are added unless given; default_permissions is added with
 * allow_other.  Generic mount(8)/fstab options (rw, dev, suid, exec, auto,
 * noauto, user, nouser, users, defaults, _netdev, nofail, x-*, comment=*)
 * are accepted and ignored.
 *
 * Returns 0: *cfg and *out_fuse_args are the caller's, to be released with
 * fs_config_free() and fuse_opt_free_args().  1: --help or --version was
 * printed to stdout (exit 0).  -1: a one-line error was printed to stderr
 * (exit 1).  On 1 and -1 both outputs are already released (zeroed).
 */
int fs_options_parse(int argc, char **argv, struct fs_config *cfg, struct fuse_args *out_fuse_args);

/* Every option with its default and one line of explanation. */
void fs_options_usage(FILE *out);

/* "bucketfs VERSION" and the versions of the libraries it runs with. */
void fs_options_version(FILE *out);

/*
 * Mount-time checks of cfg->mountpoint: it exists, is a directory, and is
 * empty unless `nonempty`.  Returns 0, or -1 after printing one line, e.g.
 * "bucketfs: mount point /mnt/x does not exist".
 */
int fs_check_mountpoint(const struct fs_config *cfg);

/* Fills an s3_config from cfg.  Strings are borrowed from cfg, which must
 * outlive the s3 client created from it; log is fs_log_va. */
void fs_config_to_s3(const struct fs_config *cfg, s3_config *out);

/* ---------------------------------------------------------------- logging */

/*
 * Chooses the destination and level from cfg: logfile= if given (opened
 * O_APPEND, created 0600), else stderr when in the foreground (-f or -d),
 * else syslog (ident "bucketfs", LOG_PID, facility LOG_DAEMON).  Before
 * fs_log_init() messages go to stderr at level warning.  Returns 0, or -1
 * after printing one line (the log file cannot be opened).
 */
int fs_log_init(const struct fs_config *cfg);

/* Closes the log file / syslog and goes back to stderr. */
void fs_log_close(void);

/*
 * Asks for the log file to be reopened (after logrotate renamed it): only
 * sets a flag, so it may be called from a signal handler; the next message
 * reopens the file by name before it is written.
 */
void fs_log_reopen(void);

/* Installs a SIGHUP handler that calls fs_log_reopen().  libfuse's
 * fuse_set_signal_handlers() makes SIGHUP end the session, so call this
 * after it.  Returns 0 or -errno. */
int fs_log_handle_sighup(void);

/* The mount's kernel read-ahead (fs/readahead.c): fs_readahead_arm() once
 * mounted, with the mount point; fs_readahead_apply() in every getattr (the
 * first one after INIT raises it to 1 MiB, as root; later ones return at
 * once); fs_readahead_disarm() at exit. */
void fs_readahead_arm(const char *mountpoint);
void fs_readahead_apply(void);
void fs_readahead_disarm(void);

/*
 * Logs one message at `level` (FS_LOG_*) if the level is enabled.  To a file
 * or stderr: "2026-11-24 09:26:47.123 warn: message", one line (embedded
 * newlines become spaces, so a key cannot forge log lines).  Defensively,
 * the values after "Authorization:", "X-Amz-Security-Token",
 * "x-amz-server-side-encryption-customer-key:", "Signature=" and
 * "aws_secret_access_key" become "[redacted]".
 */
void fs_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The same with a va_list: the s3_log_fn / meta_log_fn / cache_log_fn. */
void fs_log_va(int level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* True when messages at `level` would be written (to skip costly formatting). */
bool fs_log_enabled(int level);

/* ================================================================
 * FUSE operations (fs/ops*.c): declarations added by the lead below.
 * ================================================================ */

#endif
