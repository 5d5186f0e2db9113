/*
 * options.c - the command line of bucketfs.
 *
 * One table, fs_opts[], describes every -o option of our own: where it lands
 * in struct fs_config (offsetof), its type and bounds, its default as shown
 * by --help and one line of help.  Parsing, validation and the usage text
 * all come from it, so an option cannot be parsed without being documented.
 *
 * libfuse's fuse_opt_parse() splits the command line (-o lists, escaped
 * commas, "--") and hands every option to fs_opt_proc().  The values are not
 * converted with fuse_opt's "%u"-style templates: those use sscanf, which
 * takes "uid=-1x" as 4294967295; ours are parsed strictly and a bad one is
 * refused with a line naming the option and the value.
 *
 * Names follow s3fs-fuse where it has one, so that an fstab line can be
 * swapped between the two; note that s3fs's `endpoint` is the *region* and
 * `url` the endpoint URL.
 */
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <libxml/parser.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"

#define FS_KIB ((uint64_t)1 << 10)
#define FS_MIB ((uint64_t)1 << 20)
#define FS_GIB ((uint64_t)1 << 30)
#define FS_TIB ((uint64_t)1 << 40)

/* Defaults, shared by fs_config_init() and the usage text. */
#define FS_DEF_CONNECT_TIMEOUT   10
#define FS_DEF_READWRITE_TIMEOUT 60
#define FS_DEF_RETRIES           5
#define FS_DEF_RETRY_MAX_SECONDS 120
#define FS_DEF_MULTIPART_MIB     64
#define FS_DEF_PARALLEL_COUNT    8
#define FS_DEF_UMASK             022
#define FS_DEF_MP_UMASK          022
#define FS_DEF_CACHE_SIZE        FS_GIB
#define FS_DEF_BLOCK_SIZE        FS_MIB
#define FS_DEF_PREFETCH          64
#define FS_DEF_PREFETCH_PARALLEL 4
#define FS_DEF_LIST_TTL          60
#define FS_DEF_SMALL_FILE_SIZE   FS_MIB
#define FS_DEF_MAX_DIRTY         FS_GIB
#define FS_DEF_MAX_THREADS       10

/* S3 refuses parts below 5 MiB (but the last) and above 5 GiB. */
#define FS_MULTIPART_MIN_MIB 5
#define FS_MULTIPART_MAX_MIB 5120

enum fs_opt_type {
	FS_OPT_FLAG,      /* bool set to true */
	FS_OPT_FUSE_FLAG, /* bool set to true, and passed on to FUSE */
	FS_OPT_STR,       /* char *, not empty */
	FS_OPT_PATH,      /* char *, made absolute against the cwd */
	FS_OPT_URL,       /* char *, http:// or https:// */
	FS_OPT_UINT,      /* unsigned in [min, max] */
	FS_OPT_ID,        /* uid_t or gid_t */
	FS_OPT_MODE,      /* mode_t, octal, at most 0777 */
	FS_OPT_SIZE,      /* uint64_t bytes, K/M/G/T suffixes, in [min, max] */
	FS_OPT_MIB,       /* uint64_t bytes, given in MiB, [min, max] in MiB */
	FS_OPT_LEVEL,     /* int FS_LOG_* */
	FS_OPT_SSE,       /* use_sse[=TYPE[:ARG]] */
	FS_OPT_NOOP,      /* an s3fs option that means nothing here: warn */
};

enum fs_opt_group {
	FS_GROUP_S3,
	FS_GROUP_CREDS,
	FS_GROUP_ATTR,
	FS_GROUP_CACHE,
	FS_GROUP_LOG,
	FS_GROUP_FUSE,
	FS_GROUP__COUNT
};

static const char *const fs_group_title[FS_GROUP__COUNT] = {
        "S3 connection",   "Credentials",       "Attributes",
        "Cache and index", "Logging and stats", "FUSE",
};

struct fs_opt {
	const char *name;
	enum fs_opt_type type;
	enum fs_opt_group group;
	size_t off;     /* of the field in struct fs_config */
	size_t set_off; /* of a bool set when the option is given; 0: none
	                   (offset 0 is `bucket`, never a bool) */
	uint64_t min, max;
	const char *arg; /* metavariable in --help; NULL for a flag */
	const char *def; /* default in --help; NULL: none to show */
	const char *help;
};

#define FS_OFF(f) offsetof(struct fs_config, f)

static const struct fs_opt fs_opts[] = {
        /* S3 connection */
        {"url", FS_OPT_URL, FS_GROUP_S3, FS_OFF(url), 0, 0, 0, "URL",
         "https://s3.REGION.amazonaws.com", "endpoint URL, e.g. http://127.0.0.1:9000"},
        {"region", FS_OPT_STR, FS_GROUP_S3, FS_OFF(region), 0, 0, 0, "REGION",
         "the profile's, $AWS_REGION, EC2's, else us-east-1", "region to sign requests for"},
        {"endpoint", FS_OPT_STR, FS_GROUP_S3, FS_OFF(region), 0, 0, 0, "REGION", NULL,
         "same as region= (s3fs's name: the region, not the URL)"},
        {"use_path_request_style", FS_OPT_FLAG, FS_GROUP_S3, FS_OFF(path_style), 0, 0, 0, NULL,
         "off", "address http://host/bucket/key instead of http://bucket.host/key"},
        {"ca_bundle", FS_OPT_PATH, FS_GROUP_S3, FS_OFF(ca_bundle), 0, 0, 0, "FILE", "the system's",
         "CA certificates to verify TLS with (always verified)"},
        {"connect_timeout", FS_OPT_UINT, FS_GROUP_S3, FS_OFF(connect_timeout), 0, 1, 3600,
         "SECONDS", "10", "give up connecting after this long"},
        {"readwrite_timeout", FS_OPT_UINT, FS_GROUP_S3, FS_OFF(readwrite_timeout), 0, 1, 86400,
         "SECONDS", "60", "abort a transfer that made no progress for this long"},
        {"retries", FS_OPT_UINT, FS_GROUP_S3, FS_OFF(retries), 0, 0, 100, "N", "5",
         "retries of a failed request (5xx, SlowDown, network errors)"},
        {"retry_max_seconds", FS_OPT_UINT, FS_GROUP_S3, FS_OFF(retry_max_seconds), 0, 0, 86400,
         "SECONDS", "120", "total time a request may spend retrying"},
        {"multipart_size", FS_OPT_MIB, FS_GROUP_S3, FS_OFF(multipart_size), 0, FS_MULTIPART_MIN_MIB,
         FS_MULTIPART_MAX_MIB, "MiB", "64",
         "multipart part size, 5 to 5120; smaller files are one PUT"},
        {"parallel_count", FS_OPT_UINT, FS_GROUP_S3, FS_OFF(parallel_count), 0, 1, 100, "N", "8",
         "parts of one upload in flight at once"},
        {"use_sse", FS_OPT_SSE, FS_GROUP_S3, FS_OFF(sse), 0, 0, 0, "[TYPE]", "off",
         "SSE-S3, or =kmsid[:KEYID] (SSE-KMS), =custom[:FILE] (SSE-C)"},
        {"load_sse_c", FS_OPT_PATH, FS_GROUP_S3, FS_OFF(sse_c_key_file), 0, 0, 0, "FILE", "none",
         "SSE-C key file for use_sse=custom (32 bytes, raw or base64)"},

        /* Credentials */
        {"passwd_file", FS_OPT_PATH, FS_GROUP_CREDS, FS_OFF(passwd_file), 0, 0, 0, "FILE", "none",
         "ACCESS_KEY:SECRET_KEY file, tried first; must be private"},
        {"profile", FS_OPT_STR, FS_GROUP_CREDS, FS_OFF(profile), 0, 0, 0, "NAME",
         "$AWS_PROFILE, else default", "profile in ~/.aws/credentials and ~/.aws/config"},

        /* Attributes */
        {"uid", FS_OPT_ID, FS_GROUP_ATTR, FS_OFF(uid), FS_OFF(uid_set), 0, 0, "N", "the caller's",
         "owner of files without x-amz-meta-uid"},
        {"gid", FS_OPT_ID, FS_GROUP_ATTR, FS_OFF(gid), FS_OFF(gid_set), 0, 0, "N", "the caller's",
         "group of files without x-amz-meta-gid"},
        {"umask", FS_OPT_MODE, FS_GROUP_ATTR, FS_OFF(umask), FS_OFF(umask_set), 0, 0, "OCTAL",
         "022", "mode of files and dirs without x-amz-meta-mode is 0777 & ~umask"},
        {"mp_umask", FS_OPT_MODE, FS_GROUP_ATTR, FS_OFF(mp_umask), 0, 0, 0, "OCTAL", "022",
         "mode of the mount point is 0777 & ~mp_umask"},
        {"ro", FS_OPT_FUSE_FLAG, FS_GROUP_ATTR, FS_OFF(ro), 0, 0, 0, NULL, "off",
         "read-only mount: nothing is ever written to the bucket"},

        /* Cache and index */
        {"cache_dir", FS_OPT_PATH, FS_GROUP_CACHE, FS_OFF(cache_dir), 0, 0, 0, "DIR",
         "/var/cache/bucketfs, or ~/.cache/bucketfs if not root",
         "where the index and the content cache live (kept across mounts)"},
        {"use_cache", FS_OPT_PATH, FS_GROUP_CACHE, FS_OFF(cache_dir), 0, 0, 0, "DIR", NULL,
         "same as cache_dir= (s3fs's name)"},
        {"cache_size", FS_OPT_SIZE, FS_GROUP_CACHE, FS_OFF(cache_size), 0, FS_MIB, UINT64_MAX / 2,
         "SIZE", "1G", "hard cap on cached file contents; least recently used goes first"},
        {"block_size", FS_OPT_SIZE, FS_GROUP_CACHE, FS_OFF(block_size), 0, 4 * FS_KIB, 64 * FS_MIB,
         "SIZE", "1M", "unit of fetching and eviction (a multiple of 4K)"},
        {"prefetch", FS_OPT_UINT, FS_GROUP_CACHE, FS_OFF(prefetch), 0, 0, 1024, "BLOCKS", "64",
         "blocks fetched ahead of a sequential reader; 0: no read-ahead"},
        {"prefetch_parallel", FS_OPT_UINT, FS_GROUP_CACHE, FS_OFF(prefetch_parallel), 0, 1, 64, "N",
         "4", "read-ahead requests in flight per reader"},
        {"list_ttl", FS_OPT_UINT, FS_GROUP_CACHE, FS_OFF(list_ttl), 0, 0, INT32_MAX, "SECONDS",
         "60", "a directory listing is trusted this long, then relisted"},
        {"stat_cache_expire", FS_OPT_UINT, FS_GROUP_CACHE, FS_OFF(list_ttl), 0, 0, INT32_MAX,
         "SECONDS", NULL, "same as list_ttl= (s3fs's closest option)"},
        {"small_file_size", FS_OPT_SIZE, FS_GROUP_CACHE, FS_OFF(small_file_size), 0, 0, 5 * FS_GIB,
         "SIZE", "1M", "objects this small are fetched by one GET, not a HEAD; 0: never"},
        {"max_dirty", FS_OPT_SIZE, FS_GROUP_CACHE, FS_OFF(max_dirty), 0, FS_MIB, UINT64_MAX / 2,
         "SIZE", "1G", "written data staged but not yet uploaded; writers wait beyond it"},
        {"async_close_max", FS_OPT_SIZE, FS_GROUP_CACHE, FS_OFF(async_close_max), 0, 0, 5 * FS_GIB,
         "SIZE", "1M", "smaller files upload after close returns; 0: every close waits"},
        {"sync_upload", FS_OPT_FLAG, FS_GROUP_CACHE, FS_OFF(sync_upload), 0, 0, 0, NULL, "off",
         "every close waits for its upload (async_close_max=0)"},

        /* Logging and stats */
        {"dbglevel", FS_OPT_LEVEL, FS_GROUP_LOG, FS_OFF(log_level), FS_OFF(log_level_set), 0, 0,
         "LEVEL", "warn (debug with -d)", "err, warn, info or debug (s3fs's crit, dbg too)"},
        {"logfile", FS_OPT_PATH, FS_GROUP_LOG, FS_OFF(logfile), 0, 0, 0, "FILE",
         "stderr with -f, else syslog", "log to FILE (mode 0600, reopened on SIGHUP)"},
        {"stats_interval", FS_OPT_UINT, FS_GROUP_LOG, FS_OFF(stats_interval), 0, 0, INT32_MAX,
         "SECONDS", "0", "log request and cache counters this often; 0: only at unmount"},

        /* FUSE */
        {"allow_other", FS_OPT_FUSE_FLAG, FS_GROUP_FUSE, FS_OFF(allow_other), 0, 0, 0, NULL, "off",
         "let other users in; implies default_permissions"},
        {"default_permissions", FS_OPT_FUSE_FLAG, FS_GROUP_FUSE, FS_OFF(default_permissions), 0, 0,
         0, NULL, "off", "the kernel checks access against mode, uid and gid"},
        {"nonempty", FS_OPT_FLAG, FS_GROUP_FUSE, FS_OFF(nonempty), 0, 0, 0, NULL, "off",
         "mount over a non-empty directory (hiding its contents)"},
        {"max_threads", FS_OPT_UINT, FS_GROUP_FUSE, FS_OFF(max_threads), 0, 1, 1000, "N", "10",
         "FUSE worker threads at most"},
        {"clone_fd", FS_OPT_FLAG, FS_GROUP_FUSE, FS_OFF(clone_fd), 0, 0, 0, NULL, "off",
         "one /dev/fuse descriptor per worker thread"},

        /* s3fs options that have no meaning here: accepted so an s3fs fstab
	 * line mounts, with a warning. */
        {"iam_role", FS_OPT_NOOP, FS_GROUP_CREDS, 0, 0, 0, 0, "[auto]", NULL,
         "ignored: the instance role is used when nothing else is found"},
        {"sigv4", FS_OPT_NOOP, FS_GROUP_S3, 0, 0, 0, 0, NULL, NULL,
         "ignored: requests are always signed with SigV4"},
        {"compat_dir", FS_OPT_NOOP, FS_GROUP_CACHE, 0, 0, 0, 0, NULL, NULL,
         "ignored: directories without a dir/ object are always shown"},
        {"complement_stat", FS_OPT_NOOP, FS_GROUP_ATTR, 0, 0, 0, 0, NULL, NULL,
         "ignored: objects without attributes get uid, gid and umask"},
        {"enable_noobj_cache", FS_OPT_NOOP, FS_GROUP_CACHE, 0, 0, 0, 0, NULL, NULL,
         "ignored: absent names are answered from the index"},
        {"del_cache", FS_OPT_NOOP, FS_GROUP_CACHE, 0, 0, 0, 0, NULL, NULL,
         "ignored: the cache is kept across mounts and validated by ETag"},
};

/* Options libfuse understands (checked against libfuse 3.14's fuse_new()),
 * passed on untouched.  A trailing '=' means "takes a value". */
static const char *const fs_fuse_opts[] = {
        "allow_root",
        "fsname=",
        "subtype=",
        "max_read=",
        "blkdev",
        "blksize=",
        "auto_unmount",
        "kernel_cache",
        "auto_cache",
        "noauto_cache",
        "entry_timeout=",
        "attr_timeout=",
        "ac_attr_timeout=",
        "negative_timeout=",
        "noforget",
        "remember=",
        "no_rofd_flush",
        "nosuid",
        "nodev",
        "noexec",
        "async",
        "sync",
        "dirsync",
        "atime",
        "noatime",
        "context=",
        "fscontext=",
        "defcontext=",
        "rootcontext=",
};

/*
 * Generic options that mount(8), fstab and systemd hand to every file system,
 * accepted and ignored (as sshfs and s3fs do).  dev, suid and exec are among
 * them on purpose: a bucketfs mount stays nosuid,nodev whatever the fstab
 * "defaults" expand to.  A trailing '*' is a prefix.
 */
static const char *const fs_ignored_opts[] = {
        "rw",       "dev",        "suid",     "exec",       "auto",        "noauto",
        "user",     "nouser",     "users",    "owner",      "group",       "defaults",
        "_netdev",  "nofail",     "relatime", "norelatime", "strictatime", "nostrictatime",
        "lazytime", "nolazytime", "x-*",      "comment=*",
};

enum {
	FS_KEY_HELP,
	FS_KEY_VERSION,
	FS_KEY_FOREGROUND,
	FS_KEY_DEBUG,
	FS_KEY_SINGLE_THREAD,
};

static const struct fuse_opt fs_fuse_opt_table[] = {
        FUSE_OPT_KEY("-h", FS_KEY_HELP),
        FUSE_OPT_KEY("--help", FS_KEY_HELP),
        FUSE_OPT_KEY("-V", FS_KEY_VERSION),
        FUSE_OPT_KEY("--version", FS_KEY_VERSION),
        FUSE_OPT_KEY("-f", FS_KEY_FOREGROUND),
        FUSE_OPT_KEY("-d", FS_KEY_DEBUG),
        FUSE_OPT_KEY("debug", FS_KEY_DEBUG),
        FUSE_OPT_KEY("-s", FS_KEY_SINGLE_THREAD),
        FUSE_OPT_END,
};

/* State of one parse; fuse_opt_parse()'s `data`. */
struct fs_parse {
	struct fs_config *cfg;
	int n_positional;
	bool help, version;
	bool fsname_given, subtype_given;
};

/* ---------------------------------------------------------------- config */

void fs_config_init(struct fs_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->connect_timeout = FS_DEF_CONNECT_TIMEOUT;
	cfg->readwrite_timeout = FS_DEF_READWRITE_TIMEOUT;
	cfg->retries = FS_DEF_RETRIES;
	cfg->retry_max_seconds = FS_DEF_RETRY_MAX_SECONDS;
	cfg->multipart_size = FS_DEF_MULTIPART_MIB * FS_MIB;
	cfg->parallel_count = FS_DEF_PARALLEL_COUNT;
	cfg->sse = S3_SSE_NONE;
	cfg->uid = getuid();
	cfg->gid = getgid();
	cfg->umask = FS_DEF_UMASK;
	cfg->mp_umask = FS_DEF_MP_UMASK;
	cfg->cache_size = FS_DEF_CACHE_SIZE;
	cfg->block_size = FS_DEF_BLOCK_SIZE;
	cfg->prefetch = FS_DEF_PREFETCH;
	cfg->prefetch_parallel = FS_DEF_PREFETCH_PARALLEL;
	cfg->list_ttl = FS_DEF_LIST_TTL;
	cfg->small_file_size = FS_DEF_SMALL_FILE_SIZE;
	cfg->max_dirty = FS_DEF_MAX_DIRTY;
	cfg->async_close_max = FS_MIB;
	cfg->log_level = FS_LOG_WARNING;
	cfg->max_threads = FS_DEF_MAX_THREADS;
}

void fs_config_free(struct fs_config *cfg)
{
	free(cfg->bucket);
	free(cfg->prefix);
	free(cfg->mountpoint);
	free(cfg->url);
	free(cfg->region);
	free(cfg->ca_bundle);
	free(cfg->sse_kms_key_id);
	free(cfg->sse_c_key_file);
	free(cfg->passwd_file);
	free(cfg->profile);
	free(cfg->cache_dir);
	free(cfg->logfile);
	memset(cfg, 0, sizeof(*cfg));
}

void fs_config_to_s3(const struct fs_config *cfg, s3_config *out)
{
	memset(out, 0, sizeof(*out));
	out->endpoint = cfg->url;
	out->region = cfg->region;
	out->bucket = cfg->bucket;
	out->path_style = cfg->path_style;
	out->ca_bundle = cfg->ca_bundle;
	out->connect_timeout_s = cfg->connect_timeout;
	out->readwrite_timeout_s = cfg->readwrite_timeout;
	out->retries = (int)cfg->retries;
	out->retry_max_seconds = cfg->retry_max_seconds;
	out->passwd_file = cfg->passwd_file;
	out->profile = cfg->profile;
	out->sse = cfg->sse;
	out->sse_kms_key_id = cfg->sse_kms_key_id;
	out->sse_c_key_file = cfg->sse_c_key_file;
	out->log = fs_log_va;
	out->log_level = cfg->log_level;
}

/* ---------------------------------------------------------------- values */

static void fs_err_oom(void)
{
	fprintf(stderr, "bucketfs: out of memory\n");
}

static void fs_bad_value(const char *name, const char *value, const char *expected)
{
	fprintf(stderr, "bucketfs: invalid value '%s' for option '%s' (%s)\n", value, name,
	        expected);
}

/* "1G", "512M", "4K" when exact, else bytes. */
static void fs_format_size(uint64_t v, char *buf, size_t len)
{
	static const char units[] = "KMGT";
	int u = -1;

	while (v && v % 1024 == 0 && u < 3) {
		v /= 1024;
		u++;
	}
	if (u < 0)
		snprintf(buf, len, "%llu", (unsigned long long)v);
	else
		snprintf(buf, len, "%llu%c", (unsigned long long)v, units[u]);
}

/* Decimal digits only: no sign, no blanks, no base prefixes. */
static int fs_parse_u64(const char *s, const char **end, uint64_t *out)
{
	uint64_t v = 0;

	if (*s < '0' || *s > '9')
		return -1;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return -1;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*end = s;
	*out = v;
	return 0;
}

static int fs_parse_uint_range(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	const char *end;
	uint64_t v;

	if (fs_parse_u64(s, &end, &v) < 0 || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* N, NK, NKB, NKiB (K, M, G, T, any case): binary multiples. */
static int fs_parse_size(const char *s, uint64_t *out)
{
	const char *end;
	uint64_t v, mult = 1;

	if (fs_parse_u64(s, &end, &v) < 0)
		return -1;
	switch (*end) {
	case 'k':
	case 'K':
		mult = FS_KIB;
		break;
	case 'm':
	case 'M':
		mult = FS_MIB;
		break;
	case 'g':
	case 'G':
		mult = FS_GIB;
		break;
	case 't':
	case 'T':
		mult = FS_TIB;
		break;
	case '\0':
		break;
	default:
		return -1;
	}
	if (mult > 1) {
		end++;
		if (strcasecmp(end, "") && strcasecmp(end, "b") && strcasecmp(end, "ib"))
			return -1;
	} else if (*end) {
		return -1;
	}
	if (v > UINT64_MAX / mult)
		return -1;
	*out = v * mult;
	return 0;
}

static int fs_parse_level(const char *s, int *out)
{
	static const struct {
		const char *name;
		int level;
	} names[] = {
	        {"crit", FS_LOG_ERR},  {"critical", FS_LOG_ERR}, {"err", FS_LOG_ERR},
	        {"error", FS_LOG_ERR}, {"warn", FS_LOG_WARNING}, {"warning", FS_LOG_WARNING},
	        {"info", FS_LOG_INFO}, {"dbg", FS_LOG_DEBUG},    {"debug", FS_LOG_DEBUG},
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!strcasecmp(s, names[i].name)) {
			*out = names[i].level;
			return 0;
		}
	}
	return -1;
}

/* An absolute version of `path`, not resolved: the file need not exist yet,
 * and the daemon runs with "/" as its working directory. */
static char *fs_absolute(const char *path)
{
	char *cwd, *abs;

	if (path[0] == '/')
		return strdup(path);
	cwd = get_current_dir_name();
	if (!cwd)
		return NULL;
	if (asprintf(&abs, "%s%s%s", cwd, strcmp(cwd, "/") ? "/" : "", path) < 0)
		abs = NULL;
	free(cwd);
	return abs;
}

/* Replaces the string at *field with a copy of `value` (absolute if asked). */
static int fs_set_string(char **field, const char *value, bool absolute)
{
	char *copy = absolute ? fs_absolute(value) : strdup(value);

	if (!copy) {
		fs_err_oom();
		return -1;
	}
	free(*field);
	*field = copy;
	return 0;
}

/*
 * s3fs's forms: use_sse, use_sse=1 (SSE-S3); use_sse=kmsid or k (SSE-KMS with
 * the default key), kmsid:KEYID or k:KEYID; use_sse=custom or c (SSE-C with
 * the key in load_sse_c=), custom:FILE or c:FILE.
 */
static int fs_parse_sse(struct fs_config *cfg, const char *value)
{
	const char *colon, *arg = NULL;
	size_t len;

	if (!value || !strcmp(value, "1")) {
		cfg->sse = S3_SSE_S3;
		return 0;
	}
	colon = strchr(value, ':');
	len = colon ? (size_t)(colon - value) : strlen(value);
	if (colon)
		arg = colon + 1;
	if ((len == 5 && !strncmp(value, "kmsid", 5)) || (len == 1 && value[0] == 'k')) {
		if (arg && !*arg)
			goto bad;
		cfg->sse = S3_SSE_KMS;
		if (arg)
			return fs_set_string(&cfg->sse_kms_key_id, arg, false);
		return 0;
	}
	if ((len == 6 && !strncmp(value, "custom", 6)) || (len == 1 && value[0] == 'c')) {
		if (arg && !*arg)
			goto bad;
		cfg->sse = S3_SSE_C;
		if (arg)
			return fs_set_string(&cfg->sse_c_key_file, arg, true);
		return 0;
	}
bad:
	fs_bad_value("use_sse", value, "expected 1, kmsid[:KEYID] or custom[:KEYFILE]");
	return -1;
}

/* Applies one option of fs_opts[]; `value` is NULL for "name" without '='.
 * Returns 0 (consumed), 1 (consumed, and also for FUSE) or -1. */
static int fs_apply(struct fs_config *cfg, const struct fs_opt *o, const char *value)
{
	char *field = (char *)cfg + o->off;
	char expected[128], lo[32], hi[32];
	uint64_t v;
	int r = 0;

	if (o->type == FS_OPT_FLAG || o->type == FS_OPT_FUSE_FLAG) {
		if (value) {
			fprintf(stderr, "bucketfs: option '%s' takes no value\n", o->name);
			return -1;
		}
	} else if (o->type != FS_OPT_SSE && o->type != FS_OPT_NOOP && (!value || !*value)) {
		fprintf(stderr, "bucketfs: option '%s' needs a value (%s=%s)\n", o->name, o->name,
		        o->arg);
		return -1;
	}

	switch (o->type) {
	case FS_OPT_FLAG:
		*(bool *)field = true;
		break;
	case FS_OPT_FUSE_FLAG:
		*(bool *)field = true;
		r = 1;
		break;
	case FS_OPT_STR:
		if (fs_set_string((char **)field, value, false) < 0)
			return -1;
		break;
	case FS_OPT_PATH:
		if (fs_set_string((char **)field, value, true) < 0)
			return -1;
		break;
	case FS_OPT_URL:
		if (strncasecmp(value, "http://", 7) && strncasecmp(value, "https://", 8)) {
			fs_bad_value(o->name, value,
			             "expected http://HOST[:PORT] or https://HOST[:PORT]");
			return -1;
		}
		if (fs_set_string((char **)field, value, false) < 0)
			return -1;
		break;
	case FS_OPT_UINT:
		if (fs_parse_uint_range(value, o->min, o->max, &v) < 0) {
			snprintf(expected, sizeof(expected),
			         "expected a whole number from %llu to %llu",
			         (unsigned long long)o->min, (unsigned long long)o->max);
			fs_bad_value(o->name, value, expected);
			return -1;
		}
		*(unsigned *)field = (unsigned)v;
		break;
	case FS_OPT_ID:
		/* (uid_t)-1 means "no change" to chown(): never a valid owner. */
		if (fs_parse_uint_range(value, 0, UINT32_MAX - 1, &v) < 0) {
			fs_bad_value(o->name, value, "expected a numeric id from 0 to 4294967294");
			return -1;
		}
		if (o->off == FS_OFF(uid))
			*(uid_t *)field = (uid_t)v;
		else
			*(gid_t *)field = (gid_t)v;
		break;
	case FS_OPT_MODE: {
		char *end;

		errno = 0;
		v = strtoul(value, &end, 8);
		if (value[0] < '0' || value[0] > '7' || *end || errno || v > 0777) {
			fs_bad_value(o->name, value, "expected an octal mask like 022 or 0077");
			return -1;
		}
		*(mode_t *)field = (mode_t)v;
		break;
	}
	case FS_OPT_SIZE:
		if (fs_parse_size(value, &v) < 0 || v < o->min || v > o->max ||
		    (o->off == FS_OFF(block_size) && v % (4 * FS_KIB))) {
			fs_format_size(o->min, lo, sizeof(lo));
			fs_format_size(o->max, hi, sizeof(hi));
			if (o->max >= UINT64_MAX / 2)
				snprintf(expected, sizeof(expected),
				         "expected a size of at least %s, like 512M or 2G", lo);
			else
				snprintf(expected, sizeof(expected),
				         "expected a size from %s to %s%s, like 512K or 4M", lo, hi,
				         o->off == FS_OFF(block_size) ? " in multiples of 4K" : "");
			fs_bad_value(o->name, value, expected);
			return -1;
		}
		*(uint64_t *)field = v;
		break;
	case FS_OPT_MIB:
		if (fs_parse_uint_range(value, o->min, o->max, &v) < 0) {
			snprintf(expected, sizeof(expected), "expected MiB from %llu to %llu",
			         (unsigned long long)o->min, (unsigned long long)o->max);
			fs_bad_value(o->name, value, expected);
			return -1;
		}
		*(uint64_t *)field = v * FS_MIB;
		break;
	case FS_OPT_LEVEL:
		if (fs_parse_level(value, (int *)field) < 0) {
			fs_bad_value(o->name, value, "expected err, warn, info or debug");
			return -1;
		}
		break;
	case FS_OPT_SSE:
		if (fs_parse_sse(cfg, value) < 0)
			return -1;
		break;
	case FS_OPT_NOOP:
		fprintf(stderr, "bucketfs: warning: s3fs option '%s' is ignored (%s)\n", o->name,
		        o->help + strlen("ignored: "));
		break;
	}
	if (o->set_off)
		*(bool *)((char *)cfg + o->set_off) = true;
	return r;
}

/* ---------------------------------------------------------------- parsing */

static bool fs_in_list(const char *const *list, size_t n, const char *opt)
{
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(list[i]);

		if (list[i][len - 1] == '*' || list[i][len - 1] == '=') {
			size_t plen = list[i][len - 1] == '*' ? len - 1 : len;

			if (!strncmp(opt, list[i], plen))
				return true;
		} else if (!strcmp(opt, list[i])) {
			return true;
		}
	}
	return false;
}

static int fs_option(struct fs_parse *p, const char *arg)
{
	const char *eq = strchr(arg, '=');
	size_t len = eq ? (size_t)(eq - arg) : strlen(arg);

	if (arg[0] == '-') {
		fprintf(stderr, "bucketfs: unknown option '%s' (see bucketfs --help)\n", arg);
		return -1;
	}
	for (size_t i = 0; i < sizeof(fs_opts) / sizeof(fs_opts[0]); i++) {
		if (strlen(fs_opts[i].name) == len && !strncmp(arg, fs_opts[i].name, len))
			return fs_apply(p->cfg, &fs_opts[i], eq ? eq + 1 : NULL);
	}
	if (fs_in_list(fs_fuse_opts, sizeof(fs_fuse_opts) / sizeof(fs_fuse_opts[0]), arg)) {
		if (!strncmp(arg, "fsname=", 7))
			p->fsname_given = true;
		if (!strncmp(arg, "subtype=", 8))
			p->subtype_given = true;
		return 1;
	}
	if (fs_in_list(fs_ignored_opts, sizeof(fs_ignored_opts) / sizeof(fs_ignored_opts[0]), arg))
		return 0;
	fprintf(stderr, "bucketfs: unknown option '%s' (see bucketfs --help)\n", arg);
	return -1;
}

/*
 * BUCKET, BUCKET:, BUCKET:/ -> prefix ""; BUCKET:/a/b and BUCKET:/a/b/ ->
 * "a/b/".  A prefix with an empty, "." or ".." component is refused: keys
 * below it could not be shown as paths anyway.
 */
static int fs_parse_source(struct fs_config *cfg, const char *src)
{
	const char *colon = strchr(src, ':');
	size_t blen = colon ? (size_t)(colon - src) : strlen(src);
	const char *pfx = colon ? colon + 1 : "";
	const char *c;
	size_t plen;

	if (blen == 0 || memchr(src, '/', blen)) {
		fprintf(stderr, "bucketfs: invalid bucket in '%s' (expected BUCKET[:/PREFIX])\n",
		        src);
		return -1;
	}
	if (*pfx == '/')
		pfx++;
	plen = strlen(pfx);
	/* "a/" is "a"; but "/" (from "b://") is an empty component. */
	if (plen > 1 && pfx[plen - 1] == '/')
		plen--;
	for (c = pfx; c < pfx + plen;) {
		const char *slash = memchr(c, '/', (size_t)(pfx + plen - c));
		size_t clen = slash ? (size_t)(slash - c) : (size_t)(pfx + plen - c);

		if (clen == 0 || (clen == 1 && c[0] == '.') ||
		    (clen == 2 && c[0] == '.' && c[1] == '.')) {
			fprintf(stderr,
			        "bucketfs: invalid prefix in '%s' (empty, '.' or '..' component)\n",
			        src);
			return -1;
		}
		c += clen + 1;
	}
	free(cfg->bucket);
	free(cfg->prefix);
	cfg->bucket = strndup(src, blen);
	if (asprintf(&cfg->prefix, "%.*s%s", (int)plen, pfx, plen ? "/" : "") < 0)
		cfg->prefix = NULL;
	if (!cfg->bucket || !cfg->prefix) {
		fs_err_oom();
		return -1;
	}
	return 0;
}

/* Absolute and resolved when it exists; the checks come later, in
 * fs_check_mountpoint(), so that their messages name what is wrong. */
static int fs_set_mountpoint(struct fs_config *cfg, const char *mp)
{
	char *abs;

	/* mount.fuse3 -o drop_privileges mounts itself and hands us the fd. */
	if (!strncmp(mp, "/dev/fd/", 8))
		abs = strdup(mp);
	else
		abs = realpath(mp, NULL);
	if (!abs)
		abs = fs_absolute(mp);
	if (!abs) {
		fs_err_oom();
		return -1;
	}
	free(cfg->mountpoint);
	cfg->mountpoint = abs;
	return 0;
}

static int fs_opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct fs_parse *p = data;

	(void)outargs;
	switch (key) {
	case FS_KEY_HELP:
		p->help = true;
		return 0;
	case FS_KEY_VERSION:
		p->version = true;
		return 0;
	case FS_KEY_FOREGROUND:
		p->cfg->foreground = true;
		return 0;
	case FS_KEY_DEBUG:
		/* Kept: libfuse traces every request with it. */
		p->cfg->debug = true;
		return 1;
	case FS_KEY_SINGLE_THREAD:
		p->cfg->single_thread = true;
		return 0;
	case FUSE_OPT_KEY_NONOPT:
		switch (p->n_positional++) {
		case 0:
			return fs_parse_source(p->cfg, arg) < 0 ? -1 : 0;
		case 1:
			return fs_set_mountpoint(p->cfg, arg) < 0 ? -1 : 0;
		default:
			fprintf(stderr, "bucketfs: unexpected argument '%s'\n", arg);
			return -1;
		}
	case FUSE_OPT_KEY_OPT:
		return fs_option(p, arg);
	}
	return -1;
}

static char *fs_default_cache_dir(void)
{
	const char *xdg = getenv("XDG_CACHE_HOME");
	const char *home = getenv("HOME");
	char *dir;

	if (geteuid() == 0)
		return strdup("/var/cache/bucketfs");
	if (xdg && xdg[0] == '/') /* XDG: a relative value is to be ignored */
		return asprintf(&dir, "%s/bucketfs", xdg) < 0 ? NULL : dir;
	if (!home || home[0] != '/')
		home = "/tmp";
	return asprintf(&dir, "%s/.cache/bucketfs", home) < 0 ? NULL : dir;
}

/* "-o OPT", with OPT's commas escaped for fuse_opt. */
static int fs_add_fuse_opt(struct fuse_args *args, const char *name, const char *value)
{
	char *opt = NULL, *raw;
	int r;

	if (asprintf(&raw, "%s%s", name, value ? value : "") < 0)
		return -1;
	r = fuse_opt_add_opt_escaped(&opt, raw);
	free(raw);
	if (r == 0)
		r = fuse_opt_add_arg(args, "-o");
	if (r == 0)
		r = fuse_opt_add_arg(args, opt);
	free(opt);
	return r;
}

/* What the command line implies once all of it is known. */
static int fs_finish(struct fs_parse *p, struct fuse_args *args)
{
	struct fs_config *cfg = p->cfg;
	char *fsname;
	int r;

	if (p->n_positional < 2) {
		fprintf(stderr,
		        "bucketfs: missing %s (usage: bucketfs BUCKET[:/PREFIX] MOUNTPOINT "
		        "[-o OPTION,...]; see bucketfs --help)\n",
		        p->n_positional ? "MOUNTPOINT" : "BUCKET and MOUNTPOINT");
		return -1;
	}
	if (cfg->sse == S3_SSE_C && !cfg->sse_c_key_file) {
		fprintf(stderr, "bucketfs: use_sse=custom needs a key file "
		                "(use_sse=custom:FILE or load_sse_c=FILE)\n");
		return -1;
	}
	if (cfg->debug) {
		cfg->foreground = true;
		if (!cfg->log_level_set)
			cfg->log_level = FS_LOG_DEBUG;
	}
	if (!cfg->cache_dir) {
		cfg->cache_dir = fs_default_cache_dir();
		if (!cfg->cache_dir)
			goto oom;
	}

	/* With allow_other every user reaches the files; without
	 * default_permissions the kernel would not check their modes, and
	 * anyone could read anything the mount can. */
	if (cfg->allow_other && !cfg->default_permissions) {
		cfg->default_permissions = true;
		if (fs_add_fuse_opt(args, "default_permissions", NULL) < 0)
			goto oom;
	}
	if (!p->subtype_given && fs_add_fuse_opt(args, "subtype=bucketfs", NULL) < 0)
		goto oom;
	if (!p->fsname_given) {
		if (cfg->prefix[0])
			r = asprintf(&fsname, "%s:/%.*s", cfg->bucket, (int)strlen(cfg->prefix) - 1,
			             cfg->prefix);
		else
			r = asprintf(&fsname, "%s", cfg->bucket);
		if (r < 0)
			goto oom;
		r = fs_add_fuse_opt(args, "fsname=", fsname);
		free(fsname);
		if (r < 0)
			goto oom;
	}
	return 0;
oom:
	fs_err_oom();
	return -1;
}

int fs_options_parse(int argc, char **argv, struct fs_config *cfg, struct fuse_args *out_fuse_args)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fs_parse p = {.cfg = cfg};
	int r;

	fs_config_init(cfg);
	memset(out_fuse_args, 0, sizeof(*out_fuse_args));

	/* fuse_opt_parse() frees what it built when it fails. */
	if (fuse_opt_parse(&args, &p, fs_fuse_opt_table, fs_opt_proc) < 0) {
		fs_config_free(cfg);
		return -1;
	}
	if (p.help || p.version) {
		if (p.help)
			fs_options_usage(stdout);
		else
			fs_options_version(stdout);
		fflush(stdout);
		r = 1;
	} else {
		r = fs_finish(&p, &args);
	}
	if (r != 0) {
		fuse_opt_free_args(&args);
		fs_config_free(cfg);
		return r;
	}
	*out_fuse_args = args;
	return 0;
}

/* ---------------------------------------------------------------- help */

#define FS_USAGE_WIDTH 100
#define FS_USAGE_COL   36 /* where the explanations start */

/* "    -o name=ARG    help (default: X)", the default on a line of its own
 * when the line would get too wide. */
static void fs_usage_line(FILE *out, const char *opt, const char *help, const char *def)
{
	int col;

	if (strlen(opt) > FS_USAGE_COL - 6)
		col = fprintf(out, "    %s\n%*s%s", opt, FS_USAGE_COL, "", help) - 5 -
		      (int)strlen(opt);
	else
		col = fprintf(out, "    %-*s  %s", FS_USAGE_COL - 6, opt, help);
	if (def && col + (int)strlen(def) + 12 > FS_USAGE_WIDTH)
		fprintf(out, "\n%*s(default: %s)", FS_USAGE_COL, "", def);
	else if (def)
		fprintf(out, " (default: %s)", def);
	fputc('\n', out);
}

/* Words after `lead`, wrapped at FS_USAGE_WIDTH, but skip1 and skip2. */
static void fs_usage_words(FILE *out, const char *lead, const char *const *words, size_t n,
                           const char *skip1, const char *skip2)
{
	int col = fprintf(out, "    %s", lead);

	for (size_t i = 0; i < n; i++) {
		int len = (int)strlen(words[i]) + 1;

		if (!strcmp(words[i], skip1) || !strcmp(words[i], skip2))
			continue;
		if (col + len > FS_USAGE_WIDTH)
			col = fprintf(out, "\n%*s", FS_USAGE_COL - 1, "") - 1;
		col += fprintf(out, " %s", words[i]);
	}
	fputc('\n', out);
}

void fs_options_usage(FILE *out)
{
	char opt[80];

	fprintf(out,
	        "usage: bucketfs BUCKET[:/PREFIX] MOUNTPOINT [-f] [-d] [-s] [-o "
	        "OPTION[,OPTION...]]\n"
	        "       bucketfs stats MOUNTPOINT\n"
	        "       bucketfs --help | --version\n"
	        "\n"
	        "Mounts the S3 bucket BUCKET, or the keys below PREFIX in it, on MOUNTPOINT.\n"
	        "Unmount with: umount MOUNTPOINT, or fusermount3 -u MOUNTPOINT.\n"
	        "\"bucketfs stats MOUNTPOINT\" prints the request and cache counters of a mount.\n"
	        "\n"
	        "Credentials, first found wins: passwd_file=; AWS_ACCESS_KEY_ID,\n"
	        "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; the profile in ~/.aws/credentials\n"
	        "and ~/.aws/config; ~/.passwd-s3fs, /etc/passwd-s3fs; ECS container\n"
	        "credentials; the EC2 instance role (IMDSv2).\n");

	for (int g = 0; g < FS_GROUP__COUNT; g++) {
		fprintf(out, "\n%s:\n", fs_group_title[g]);
		if (g == FS_GROUP_FUSE) {
			fs_usage_line(out, "-f", "stay in the foreground, log to stderr", NULL);
			fs_usage_line(out, "-d, -o debug",
			              "debug log and FUSE request trace; implies -f", NULL);
			fs_usage_line(out, "-s", "single-threaded FUSE loop", NULL);
		}
		for (size_t i = 0; i < sizeof(fs_opts) / sizeof(fs_opts[0]); i++) {
			const struct fs_opt *o = &fs_opts[i];

			if (o->group != (enum fs_opt_group)g)
				continue;
			if (!o->arg)
				snprintf(opt, sizeof(opt), "-o %s", o->name);
			else if (o->arg[0] == '[')
				snprintf(opt, sizeof(opt), "-o %s[=%s", o->name, o->arg + 1);
			else
				snprintf(opt, sizeof(opt), "-o %s=%s", o->name, o->arg);
			if (o->off == FS_OFF(cache_dir) && o->def) {
				/* The default depends on who runs us: show theirs. */
				char *dir = fs_default_cache_dir();

				fs_usage_line(out, opt, o->help, dir ? dir : o->def);
				free(dir);
			} else {
				fs_usage_line(out, opt, o->help, o->def);
			}
		}
		if (g == FS_GROUP_FUSE) {
			fs_usage_line(out, "-o fsname=NAME", "source shown by mount",
			              "BUCKET[:/PREFIX]");
			fs_usage_line(out, "-o subtype=NAME", "type shown by mount is fuse.NAME",
			              "bucketfs");
			fs_usage_words(out, "passed on to FUSE as well:", fs_fuse_opts,
			               sizeof(fs_fuse_opts) / sizeof(fs_fuse_opts[0]),
			               "fsname=", "subtype=");
			fs_usage_words(out, "accepted and ignored (fstab, mount):", fs_ignored_opts,
			               sizeof(fs_ignored_opts) / sizeof(fs_ignored_opts[0]), "",
			               "");
			fprintf(out, "%*s(dev and suid are ignored: a mount stays nosuid,nodev)\n",
			        FS_USAGE_COL, "");
		}
	}
	fprintf(out, "\nSIZE is bytes or a number with K, M, G or T (binary multiples).\n"
	             "See bucketfs(1).\n");
}

void fs_options_version(FILE *out)
{
	const curl_version_info_data *curl = curl_version_info(CURLVERSION_NOW);
	int xml = atoi(xmlParserVersion);

	fprintf(out, "bucketfs %s\n", BUCKETFS_VERSION);
	fprintf(out, "libfuse %s\n", fuse_pkgversion());
	fprintf(out, "libcurl %s\n", curl->version);
	fprintf(out, "%s\n", OpenSSL_version(OPENSSL_VERSION));
	fprintf(out, "SQLite %s\n", sqlite3_libversion());
	fprintf(out, "libxml2 %d.%d.%d\n", xml / 10000, xml / 100 % 100, xml % 100);
}

/* ---------------------------------------------------------------- mount point */

int fs_check_mountpoint(const struct fs_config *cfg)
{
	const char *mp = cfg->mountpoint;
	struct dirent *de;
	struct stat st;
	DIR *dir;

	if (!strncmp(mp, "/dev/fd/", 8))
		return 0;
	if (stat(mp, &st) < 0) {
		if (errno == ENOENT)
			fprintf(stderr, "bucketfs: mount point %s does not exist\n", mp);
		else if (errno == ENOTCONN)
			fprintf(stderr,
			        "bucketfs: mount point %s: %s (a dead mount? try fusermount3 -u "
			        "%s)\n",
			        mp, strerror(errno), mp);
		else
			fprintf(stderr, "bucketfs: mount point %s: %s\n", mp, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "bucketfs: mount point %s is not a directory\n", mp);
		return -1;
	}
	if (cfg->nonempty)
		return 0;
	dir = opendir(mp);
	if (!dir) {
		fprintf(stderr, "bucketfs: mount point %s: %s\n", mp, strerror(errno));
		return -1;
	}
	while ((de = readdir(dir))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			closedir(dir);
			fprintf(stderr,
			        "bucketfs: mount point %s is not empty (use -o nonempty to mount "
			        "over it)\n",
			        mp);
			return -1;
		}
	}
	closedir(dir);
	return 0;
}
